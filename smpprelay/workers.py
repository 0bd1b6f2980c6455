"""``workers: N``: one twistd starts N relay processes that share the apps' port(s).

How the port is shared: the parent (the twistd started by the operator) opens the listening
sockets itself, before it drops privileges: one socket per worker and port, all bound to the
same port with SO_REUSEPORT. It hands worker i its own socket as file descriptor 3 (plain SMPP)
and 4 (SMPP over TLS); the worker adopts it (``reactor.adoptStreamPort``) instead of listening.
The kernel spreads new connections evenly over the sockets (by a hash of the addresses), so
binds spread evenly over the workers.

Why not one socket shared by all workers (the kernel gives a connection to whichever worker
accepts first): measured here, 20 binds in a row all went to the same worker, which epoll wakes
first each time; SMPP binds live for hours, so an even spread matters more than the idlest
worker taking the next one. Why the parent holds the sockets rather than each worker binding
its own: the socket outlives its worker, so connections that arrive while a worker restarts
wait in its queue for the new worker instead of being reset, and a port below 1024 still works
after ``twistd --uid`` (a worker could not bind it again).

The parent runs no relay: it starts the children, restarts one that exits (with backoff), on
SIGTERM sends SIGTERM to each and waits for their graceful stops, forwards SIGHUP (reload), and
gives up (exit status 1) when a worker keeps failing to start. Each child's stdin is a pipe from
the parent: when the parent vanishes (SIGKILL), the child reads end-of-file and stops itself, so
no worker is left holding the port.

Worker i (counting from 0) serves its metrics and ``/readyz`` on ``metrics.port + i``, so
Prometheus scrapes each worker and a balancer checks each one; worker 0 keeps the configured
port, so a scrape or health check set up for one process still finds a relay there.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from twisted.application.service import Service
from twisted.internet import fdesc
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ProcessDone, ReactorNotRunning
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from smpprelay import tls
from smpprelay.config import Config

log = Logger()

# The descriptors a child finds its listening sockets on (the parent's childFDs say so).
PLAIN_FD = 3
TLS_FD = 4
# The child's stdin: a pipe from the parent, end-of-file once the parent is gone.
LIFELINE_FD = 0
# Restart backoff: 0.5 s, 1 s, 2 s ... at most 30 s. A worker that ran this long before it
# exited was started fine: its exit is a crash, restarted at once, and its failures reset.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 10.0
# This many exits in a row, each within STABLE_AFTER of its start: the worker cannot start
# (a port, a file, Redis refusing it...), and restarting forever would only hide that.
GIVE_UP_AFTER = 5
# After limits.shutdown_timeout and this much more, a child still running is killed.
STOP_GRACE = 5.0

# The twistd options (before the plugin name) a child keeps from the parent's command line.
# The rest do not apply: a child always runs in the foreground, without a pid file, logging to
# the stdout it shares with the parent.
_KEPT_TWISTD_OPTIONS = ("--logger", "--reactor", "-r")


def metrics_port(base: int, index: int) -> int:
    """Worker ``index``'s metrics port: ``base + index``; 0 (any free port) stays 0."""
    return base + index if base else 0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_app_sockets(config: Config, count: int) -> list[dict[int, socket.socket]]:
    """Listen on the apps' port(s) of ``config`` once per worker (SO_REUSEPORT): for each
    worker, its sockets by the descriptor the worker finds them on.

    Raises `SystemExit` (one line, status 1, as a listener of a single relay does) when a port
    cannot be had.
    """
    listen = config.listen
    wanted = {PLAIN_FD: ("SMPP", listen.port)}
    if listen.tls is not None:
        wanted[TLS_FD] = ("SMPP over TLS", listen.tls.port)
    opened: list[dict[int, socket.socket]] = [{} for _ in range(count)]
    for fd, (label, port) in wanted.items():
        if port is None:
            continue
        for each in opened:
            try:
                each[fd] = sock = _listen(listen.host, port)
            except OSError as error:
                for sockets in opened:
                    for made in sockets.values():
                        made.close()
                where = f"{listen.host}:{port}"
                raise SystemExit(
                    f"smpprelay: {label}: Couldn't listen on {where}: {error}."
                ) from None
            # Port 0: the first socket's port is every worker's.
            port = sock.getsockname()[1]
        log.info("{name} listening on {host}:{port}", name=label, host=listen.host, port=port)
    return opened


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        # Twisted's own default backlog.
        sock.listen(50)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """Listens by adopting a listening socket the parent opened (descriptor ``fd``)."""

    def __init__(
        self, reactor: Any, fd: int, family: socket.AddressFamily, tls_options: Any = None
    ):
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.tls_options = tls_options

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        if self.tls_options is not None:
            # What listenSSL does inside: TLS in memory over the plain TCP connection.
            factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
        try:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        except Exception:
            return fail()
        return succeed(port)


def adopted_endpoints(reactor: Any, config: Config) -> dict[str, IStreamServerEndpoint]:
    """A worker's app endpoints, by kind ("plain", "tls"), on the parent's sockets."""
    listen = config.listen
    family = _family(listen.host)
    endpoints: dict[str, IStreamServerEndpoint] = {}
    if listen.port is not None:
        endpoints["plain"] = AdoptedEndpoint(reactor, PLAIN_FD, family)
    if listen.tls is not None:
        options = tls.server_options(listen.tls)
        endpoints["tls"] = AdoptedEndpoint(reactor, TLS_FD, family, options)
    return endpoints


def stop_reactor(reactor: Any) -> None:
    """Stop the reactor unless it is stopping already (a SIGTERM came first)."""
    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()


@implementer(IReadDescriptor)
class Lifeline:
    """A worker's stdin, a pipe from its parent: end-of-file means the parent is gone."""

    def __init__(self, reactor: Any, on_lost: Callable[[], object], fd: int = LIFELINE_FD):
        self.reactor = reactor
        self.fd = fd
        self.on_lost = on_lost
        self.shutting_down = False
        fdesc.setNonBlocking(fd)

    def start(self) -> None:
        self.reactor.addReader(self)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    def _shutting_down(self) -> None:
        self.shutting_down = True

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""  # as good as end-of-file: the parent cannot reach this worker
        if data:
            return None  # the parent never writes: only end-of-file matters
        # The reactor takes an exception instance here (despite the interface), then calls
        # connectionLost with it as a Failure.
        return ConnectionDone()  # type: ignore[return-value]

    def connectionLost(self, reason: Failure) -> None:
        self.reactor.removeReader(self)
        # End-of-file comes as a hang-up (epoll) or an empty read; the reactor also
        # disconnects every reader when it stops, which is no news.
        if not self.shutting_down:
            log.warn("worker: the parent process is gone; stopping")
            self.on_lost()

    def logPrefix(self) -> str:
        return "lifeline"


def worker_tagger(index: int) -> ILogObserver:
    """An observer that, added before twistd's own, tags each event with the worker.

    The text log shows ``[worker 1: namespace#level]``; the JSON log (smpprelay.logs) gains a
    ``worker`` field. Observers see the same event in turn, so the tag set here is there for
    the observers after it.
    """

    @implementer(ILogObserver)
    def tag(event: LogEvent) -> None:
        if "worker" in event:
            return
        event["worker"] = index
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            name = level.name if level is not None else "info"
            system = f"{event.get('log_namespace', '-')}#{name}"
        event["log_system"] = f"worker {index}: {system}"

    return tag  # type: ignore[no-any-return]


def worker_gauge(registry: CollectorRegistry, index: int, restarts: int) -> Gauge:
    """``smpprelay_worker_restarts{worker}``: how often the parent restarted this worker."""
    gauge = Gauge(
        "smpprelay_worker_restarts",
        "Times the workers supervisor restarted this worker (workers: N) before this start.",
        ["worker"],
        registry=registry,
    )
    gauge.labels(str(index)).set(restarts)
    return gauge


def child_command(argv: Sequence[str], config_path: str, index: int, restarts: int) -> list[str]:
    """The command line of worker ``index``: the parent's twistd with the kept options."""
    kept: list[str] = []
    options = list(argv[1:])
    for i, arg in enumerate(options):
        if arg == "smpprelay":
            break
        name = arg.split("=", 1)[0]
        if name in _KEPT_TWISTD_OPTIONS:
            kept.append(arg)
            if "=" not in arg and i + 1 < len(options):
                kept.append(options[i + 1])
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "--logfile=-",
        *kept,
        "smpprelay",
        "--config",
        config_path,
        "--worker",
        str(index),
        "--worker-restarts",
        str(restarts),
    ]


def exit_one_after(reactor: Any, gave_up: Callable[[], bool]) -> None:
    """Under twistd, the parent exits with status 1 once it gave up on a worker.

    twistd has no exit status of its own to set: it returns from the reactor and exits 0 (or
    re-raises the stopping signal). So, at the very end, the process leaves with status 1
    itself, after flushing what the log wrote to stdout and stderr.
    """

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def at_exit() -> None:
        if gave_up():
            atexit.register(leave)

    reactor.addSystemEventTrigger("after", "shutdown", at_exit)


class _Child(ProcessProtocol):
    """One running worker, as the supervisor sees it."""

    def __init__(self, supervisor: WorkerSupervisor, index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()

    @override
    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    @override
    def processEnded(self, reason: Failure) -> None:
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


Spawn = Callable[..., Any]  # the reactor's spawnProcess
SetSignal = Callable[[int, Any], Any]


class WorkerSupervisor(Service):
    """The parent of ``workers: N``: starts, restarts and stops the relay processes.

    ``command(index, restarts)`` is a worker's command line; ``open_sockets()`` opens the
    listening sockets, for each worker its own (descriptor -> socket).
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: Callable[[int, int], list[str]],
        open_sockets: Callable[[], list[dict[int, socket.socket]]],
        stop_timeout: float,
        set_signal: SetSignal = signal.signal,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.command = command
        self.open_sockets = open_sockets
        self.stop_timeout = stop_timeout
        self._set_signal = set_signal
        self._previous_hup: Any = None
        self.sockets: list[dict[int, socket.socket]] = []
        self.children: dict[int, _Child] = {}
        self.restarts = [0] * count
        self.failures = [0] * count
        self.pending: dict[int, IDelayedCall] = {}
        # False once a worker stopped uncleanly or had to be killed.
        self.stopped_cleanly = True
        # True once a worker kept failing to start: the parent stops, exit status 1.
        self.gave_up = False

    @override
    def privilegedStartService(self) -> None:
        # Before twistd drops privileges (--uid): the port may be below 1024.
        self.sockets = self.open_sockets()

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        log.info("workers: starting {n} relay processes", n=self.count)
        for index in range(self.count):
            self.spawn(index)
        self._previous_hup = self._set_signal(signal.SIGHUP, self._hup)

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes: hop to the reactor's own turn.
        self.reactor.callFromThread(self.signal_all, "HUP")

    def spawn(self, index: int) -> None:
        """Start worker ``index`` on its sockets."""
        self.pending.pop(index, None)
        child = _Child(self, index, self.reactor.seconds())
        fds: dict[int, Any] = {LIFELINE_FD: "w", 1: 1, 2: 2}
        fds.update((fd, sock.fileno()) for fd, sock in self.sockets[index].items())
        argv = self.command(index, self.restarts[index])
        self.reactor.spawnProcess(child, argv[0], argv, env=os.environ.copy(), childFDs=fds)
        self.children[index] = child
        log.info("workers: worker {worker} started (pid {pid})", worker=index, pid=child.pid)

    def signal_all(self, name: str) -> None:
        """Send signal ``name`` ("TERM", "HUP", "KILL") to every running worker."""
        for child in list(self.children.values()):
            transport = child.transport
            if transport is not None and transport.pid is not None:
                transport.signalProcess(name)

    def ended(self, child: _Child, reason: Failure) -> None:
        """Worker ``child`` exited: restart it, unless the parent is stopping or gives up."""
        if self.children.get(child.index) is child:
            del self.children[child.index]
        code = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        clean = isinstance(reason.value, ProcessDone)
        if not self.running:
            if not clean:
                self.stopped_cleanly = False
            log.info(
                "workers: worker {worker} stopped (exit status {code}, signal {signal})",
                worker=child.index,
                code=code,
                signal=signum,
            )
            return
        index = child.index
        ran = self.reactor.seconds() - child.started
        self.failures[index] = 1 if ran >= STABLE_AFTER else self.failures[index] + 1
        if self.failures[index] >= GIVE_UP_AFTER:
            self.gave_up = True
            self.stopped_cleanly = False
            log.critical(
                "workers: worker {worker} exited {n} times in a row within {stable} s of its "
                "start (last: exit status {code}, signal {signal}); giving up",
                worker=index,
                n=self.failures[index],
                stable=STABLE_AFTER,
                code=code,
                signal=signum,
            )
            stop_reactor(self.reactor)
            return
        delay = 0.0 if ran >= STABLE_AFTER else FIRST_DELAY * 2 ** (self.failures[index] - 1)
        delay = min(delay, MAX_DELAY)
        self.restarts[index] += 1
        log.warn(
            "workers: worker {worker} exited (exit status {code}, signal {signal}) after "
            "{ran:.1f} s; restart {restarts} in {delay} s",
            worker=index,
            code=code,
            signal=signum,
            ran=ran,
            restarts=self.restarts[index],
            delay=delay,
        )
        self.pending[index] = self.reactor.callLater(delay, self.spawn, index)

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._set_signal(signal.SIGHUP, self._previous_hup or signal.SIG_DFL)
        for timer in self.pending.values():
            if timer.active():
                timer.cancel()
        self.pending.clear()
        # The workers keep their own copies: closing ours lets each socket close when its
        # worker stops listening, so no connection queues for a worker that is gone.
        for sockets in self.sockets:
            for sock in sockets.values():
                sock.close()
        self.sockets.clear()
        waiting = [child.ended for child in self.children.values()]
        if not waiting:
            return succeed(None)
        log.info("workers: stopping {n} workers", n=len(waiting))
        self.signal_all("TERM")
        killer = self.reactor.callLater(self.stop_timeout + STOP_GRACE, self._kill_the_rest)

        async def all_ended() -> None:
            for each in waiting:
                await each
            if killer.active():
                killer.cancel()

        return Deferred.fromCoroutine(all_ended())

    def _kill_the_rest(self) -> None:
        self.stopped_cleanly = False
        log.warn(
            "workers: {n} workers still running {t} s after SIGTERM; killing them",
            n=len(self.children),
            t=self.stop_timeout + STOP_GRACE,
        )
        self.signal_all("KILL")
