"""The ``workers: N`` supervisor (smpprelay.workers) on a fake process spawner and a Clock:
starting, restarting with backoff, giving up, stopping; and its small parts (command line,
sockets, log tag, lifeline, options)."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure

from smpprelay import workers
from smpprelay.logs import event_as_json
from smpprelay.tap import Options
from smpprelay.workers import (
    FIRST_DELAY,
    GIVE_UP_AFTER,
    STABLE_AFTER,
    STOP_GRACE,
    Lifeline,
    WorkerSupervisor,
)


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeReactor(Clock):
    """A Clock that records spawned processes, stops and thread hops."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[ProcessProtocol, list[str], dict[int, Any], FakeTransport]] = []
        self.stopped = 0

    def spawnProcess(
        self, proto: ProcessProtocol, path: str, args: list[str], env: Any, childFDs: Any
    ) -> FakeTransport:
        transport = FakeTransport(1000 + len(self.spawned))
        proto.makeConnection(transport)
        self.spawned.append((proto, args, childFDs, transport))
        return transport

    def stop(self) -> None:
        self.stopped += 1

    def callFromThread(self, call: Callable[..., object], *args: object) -> None:
        call(*args)


def end(proto: ProcessProtocol, code: int | None = 0, sig: int | None = None) -> None:
    transport = proto.transport
    assert isinstance(transport, FakeTransport)
    transport.pid = None
    reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code, signal=sig)
    proto.processEnded(Failure(reason))


def make(
    count: int = 2, timeout: float = 3.0
) -> tuple[WorkerSupervisor, FakeReactor, dict[int, Any], list[socket.socket]]:
    reactor = FakeReactor()
    handlers: dict[int, Any] = {}
    sockets = [socket.socket() for _ in range(2 * count)]

    def set_signal(signum: int, handler: Any) -> Any:
        previous = handlers.get(signum)
        handlers[signum] = handler
        return previous

    supervisor = WorkerSupervisor(
        reactor,
        count,
        lambda index, restarts: ["relay", f"--worker={index}", f"--restarts={restarts}"],
        lambda: [
            {workers.PLAIN_FD: sockets[2 * i], workers.TLS_FD: sockets[2 * i + 1]}
            for i in range(count)
        ],
        timeout,
        set_signal,
    )
    supervisor.privilegedStartService()
    supervisor.startService()
    return supervisor, reactor, handlers, sockets


def test_starts_each_worker_on_its_own_sockets_with_a_lifeline_on_stdin() -> None:
    supervisor, reactor, _, sockets = make(count=3)
    assert [args for _, args, _, _ in reactor.spawned] == [
        ["relay", f"--worker={i}", "--restarts=0"] for i in range(3)
    ]
    for i, (_, _, fds, _) in enumerate(reactor.spawned):
        plain, secure = sockets[2 * i].fileno(), sockets[2 * i + 1].fileno()
        assert fds == {0: "w", 1: 1, 2: 2, 3: plain, 4: secure}
    assert sorted(supervisor.children) == [0, 1, 2]
    for each in sockets:
        each.close()


def test_a_worker_that_exits_soon_is_restarted_with_a_growing_delay_and_counted() -> None:
    supervisor, reactor, _, _ = make()
    delays = []
    for attempt in range(1, GIVE_UP_AFTER):
        proto = reactor.spawned[-1][0] if attempt > 1 else reactor.spawned[0][0]
        end(proto, code=1)
        delay = FIRST_DELAY * 2 ** (attempt - 1)
        delays.append(delay)
        reactor.advance(delay - 0.01)
        assert 0 not in supervisor.children  # not yet
        reactor.advance(0.01)
        assert 0 in supervisor.children
        assert reactor.spawned[-1][1] == ["relay", "--worker=0", f"--restarts={attempt}"]
    assert delays == [0.5, 1.0, 2.0, 4.0][: GIVE_UP_AFTER - 1]
    assert supervisor.restarts == [GIVE_UP_AFTER - 1, 0]
    assert not supervisor.gave_up
    assert reactor.stopped == 0


def test_a_worker_that_ran_a_while_is_restarted_at_once_and_its_failures_forgotten() -> None:
    supervisor, reactor, _, _ = make()
    end(reactor.spawned[0][0], code=1)
    reactor.advance(FIRST_DELAY)
    assert supervisor.failures[0] == 1
    # The same sockets: what queued there while it was down waits for the new worker.
    assert reactor.spawned[-1][2] == reactor.spawned[0][2]
    reactor.advance(STABLE_AFTER)
    end(reactor.spawned[-1][0], code=None, sig=signal.SIGKILL)
    assert supervisor.failures[0] == 1
    reactor.advance(0)
    assert 0 in supervisor.children
    assert supervisor.restarts[0] == 2


def test_a_worker_that_keeps_failing_to_start_makes_the_parent_give_up() -> None:
    supervisor, reactor, _, _ = make()
    for _ in range(GIVE_UP_AFTER):
        end(reactor.spawned[-1][0] if supervisor.restarts[0] else reactor.spawned[0][0], code=1)
        reactor.advance(60)
    assert supervisor.gave_up
    assert not supervisor.stopped_cleanly
    assert reactor.stopped == 1
    assert 0 not in supervisor.children
    spawned = len(reactor.spawned)
    reactor.advance(120)
    assert len(reactor.spawned) == spawned  # no restart after giving up


def test_stop_sends_sigterm_to_each_worker_and_waits_for_all_of_them() -> None:
    supervisor, reactor, _, sockets = make()
    stopping = supervisor.stopService()
    assert [t.signals for _, _, _, t in reactor.spawned] == [["TERM"], ["TERM"]]
    # The parent's copies are closed at once: new connections stop queueing.
    assert all(each.fileno() == -1 for each in sockets)
    end(reactor.spawned[0][0])
    assert not stopping.called
    end(reactor.spawned[1][0])
    assert stopping.called
    assert supervisor.stopped_cleanly
    reactor.advance(60)
    assert len(reactor.spawned) == 2  # nothing restarted while stopping


def test_a_worker_that_does_not_stop_in_time_is_killed_and_the_stop_is_not_clean() -> None:
    supervisor, reactor, _, _ = make(timeout=3.0)
    stopping: Deferred[None] = supervisor.stopService()
    end(reactor.spawned[0][0])
    reactor.advance(3.0 + STOP_GRACE - 0.1)
    assert reactor.spawned[1][3].signals == ["TERM"]
    reactor.advance(0.1)
    assert reactor.spawned[1][3].signals == ["TERM", "KILL"]
    end(reactor.spawned[1][0], code=None, sig=signal.SIGKILL)
    assert stopping.called
    assert not supervisor.stopped_cleanly


def test_a_worker_that_stops_with_an_error_makes_the_stop_unclean() -> None:
    supervisor, reactor, _, _ = make()
    stopping = supervisor.stopService()
    end(reactor.spawned[0][0])
    end(reactor.spawned[1][0], code=None, sig=signal.SIGTERM)
    assert stopping.called
    assert not supervisor.stopped_cleanly


def test_sighup_is_forwarded_to_every_worker_and_restored_on_stop() -> None:
    supervisor, reactor, handlers, _ = make()
    handlers[signal.SIGHUP](signal.SIGHUP, None)
    assert [t.signals for _, _, _, t in reactor.spawned] == [["HUP"], ["HUP"]]
    supervisor.stopService()
    assert handlers[signal.SIGHUP] == signal.SIG_DFL


def test_child_command_keeps_the_logger_and_reactor_and_runs_in_the_foreground() -> None:
    argv = [
        "/venv/bin/twistd",
        "--pidfile=/run/x.pid",
        "--logger",
        "smpprelay.logs.json_observer",
        "-r",
        "epoll",
        "--logfile=/var/log/x",
        "smpprelay",
        "--config",
        "relay.yaml",
        "--workers",
        "2",
    ]
    command = workers.child_command(argv, "/etc/relay.yaml", 1, 3)
    assert command[3:] == [
        "-n",
        "--pidfile=",
        "--logfile=-",
        "--logger",
        "smpprelay.logs.json_observer",
        "-r",
        "epoll",
        "smpprelay",
        "--config",
        "/etc/relay.yaml",
        "--worker",
        "1",
        "--worker-restarts",
        "3",
    ]


def test_metrics_port_is_the_base_plus_the_worker_index_and_zero_stays_zero() -> None:
    assert [workers.metrics_port(9775, i) for i in range(3)] == [9775, 9776, 9777]
    assert workers.metrics_port(0, 2) == 0


def test_open_app_sockets_gives_each_worker_its_socket_on_one_port() -> None:
    """SO_REUSEPORT: port 0 becomes one port for all; a taken port is one line."""
    from smpprelay.config import Config, ListenConfig

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    with pytest.raises(SystemExit, match=rf"smpprelay: SMPP: Couldn't listen on 127.0.0.1:{port}"):
        workers.open_app_sockets(Config(listen=ListenConfig(port=port)), 2)
    taken.close()
    opened = workers.open_app_sockets(Config(listen=ListenConfig(port=0)), 3)
    assert [list(each) for each in opened] == [[workers.PLAIN_FD]] * 3
    socks = [each[workers.PLAIN_FD] for each in opened]
    assert len({sock.getsockname() for sock in socks}) == 1
    assert len({sock.fileno() for sock in socks}) == 3
    assert not any(sock.getblocking() for sock in socks)
    # Connections are spread over the sockets (by a hash of the addresses).
    clients = [socket.create_connection(socks[0].getsockname(), timeout=1) for _ in range(30)]
    accepted = []
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(0.2)
        count = 0
        while True:
            try:
                sock.accept()[0].close()
            except TimeoutError:
                break
            count += 1
        accepted.append(count)
    assert sum(accepted) == 30
    assert min(accepted) >= 1, accepted
    for each in clients + socks:
        each.close()


def test_worker_tag_names_the_worker_in_text_and_json_logs() -> None:
    tag = workers.worker_tagger(2)
    event: dict[str, Any] = {
        "log_namespace": "smpprelay.service",
        "log_level": LogLevel.info,
        "log_format": "hello {who}",
        "who": "app",
        "log_time": 0.0,
    }
    tag(event)
    text = formatEventAsClassicLogText(event)
    assert text is not None
    assert "[worker 2: smpprelay.service#info] hello app" in text
    assert '"worker": 2' in event_as_json(event)
    legacy = {"log_system": "-", "log_format": "x", "log_time": 0.0}
    tag(legacy)
    assert legacy["log_system"] == "worker 2: -"


def test_lifeline_stops_the_worker_when_the_parent_is_gone_but_not_at_shutdown() -> None:
    reactor = FakeReactor()
    reactor.addReader = lambda reader: None  # type: ignore[attr-defined]
    reactor.removeReader = lambda reader: None  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger = lambda *args: None  # type: ignore[attr-defined]
    lost: list[bool] = []
    read, write = os.pipe()
    try:
        lifeline = Lifeline(reactor, lambda: lost.append(True), fd=read)
        lifeline.start()
        assert lifeline.doRead() is None  # nothing yet: the parent is there
        os.close(write)
        why = lifeline.doRead()
        assert isinstance(why, ConnectionDone)
        lifeline.connectionLost(Failure(why))
        assert lost == [True]
        lifeline.shutting_down = True
        lifeline.connectionLost(Failure(ConnectionDone()))
        assert lost == [True]
    finally:
        os.close(read)


def parse(*args: str) -> Options:
    options = Options()  # type: ignore[no-untyped-call]
    options.parseOptions(list(args))  # type: ignore[no-untyped-call]
    return options


def test_options_refuse_several_workers_without_redis_and_a_bad_count(tmp_path: Any) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(
        "store: {backend: memory}\n"
        "clients: [{system_id: a, password: b, allowed_ips: [127.0.0.1]}]\n"
    )
    with pytest.raises(SystemExit, match=r"more than one worker needs store\.backend: redis"):
        parse("--config", str(config), "--workers", "2")
    with pytest.raises(SystemExit, match="--workers: 'two' is not a valid count"):
        parse("--config", str(config), "--workers", "two")
    with pytest.raises(SystemExit, match="--workers: '0' is not a valid count"):
        parse("--config", str(config), "--workers", "0")
    options = parse("--config", str(config), "--workers", "1")
    assert options.workers == 1
    assert options.worker is None
    config.write_text(
        "store: {backend: redis}\n"
        "clients: [{system_id: a, password: b, allowed_ips: [127.0.0.1]}]\n"
    )
    options = parse("--config", str(config), "--workers", "2")
    assert options.workers == 2


@pytest_twisted.ensureDeferred
async def test_adopted_sockets_serve_plain_and_tls_connections(tmp_path: Path) -> None:
    """A worker's endpoints on the parent's sockets (here in one process): the plain one
    carries bytes as they are, the TLS one does the handshake with listen.tls's certificate."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.protocols.wire import Echo

    from smpprelay import tls
    from smpprelay.config import Config, ListenConfig, ListenTlsConfig
    from tests.certs import make_certs

    certs = make_certs(tmp_path)
    listen = ListenConfig(port=0, tls=ListenTlsConfig(port=0, cert=certs.cert, key=certs.key))
    [sockets] = workers.open_app_sockets(Config(listen=listen), 1)
    plain, secure = sockets[workers.PLAIN_FD], sockets[workers.TLS_FD]
    options = tls.server_options(listen.tls)  # type: ignore[arg-type]
    ports = [
        await workers.AdoptedEndpoint(reactor, plain.fileno(), socket.AF_INET).listen(
            Factory.forProtocol(Echo)
        ),
        await workers.AdoptedEndpoint(reactor, secure.fileno(), socket.AF_INET, options).listen(
            Factory.forProtocol(Echo)
        ),
    ]

    class Once(Protocol):
        def __init__(self) -> None:
            self.echoed: Deferred[bytes] = Deferred()

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(b"bind")

        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.loseConnection()
            self.echoed.callback(data)

    try:
        to_plain = TCP4ClientEndpoint(reactor, "127.0.0.1", plain.getsockname()[1])
        once = await connectProtocol(to_plain, Once())
        assert await once.echoed == b"bind"
        trust = Certificate.loadPEM(Path(certs.ca).read_bytes())
        to_tls = wrapClientTLS(
            optionsForClientTLS("127.0.0.1", trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", secure.getsockname()[1]),
        )
        once = await connectProtocol(to_tls, Once())
        assert await once.echoed == b"bind"
    finally:
        for port in ports:
            await maybeDeferred(port.stopListening)
        plain.close()
        secure.close()
