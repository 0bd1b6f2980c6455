"""The whole service tree `build` makes, on a fake reactor: no socket, no wall clock.

`MemoryReactorClock` records every listen and connect; `ConnectionCompleter` joins the relay's
upstream to its built-in simulated SMSC and an app to the relay, and `IOPump`s carry the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.application.internet import TimerService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import ConnectionCompleter, FakeTransport, IOPump, connect

from smpprelay import pdu
from smpprelay.config import Config, StoreConfig, default_config
from smpprelay.pdu import CommandId, Status
from smpprelay.service import ListenFailed, RelayService, build
from tests.fakes import captured_logs, is_error, submit_sm

SMPP_PORT = 2775
assert default_config().listen.port == SMPP_PORT
METRICS_PORT = default_config().metrics.port
# The memory store: the sqlite one writes in a thread, which a fake reactor never runs.
IN_MEMORY = attrs.evolve(default_config(), store=StoreConfig(backend="memory"))


class App(Protocol):
    """A minimal app: records every PDU the relay sends and answers its requests."""

    def __init__(self, events: list[str], answers_unbind: bool = True) -> None:
        self.events = events
        self.answers_unbind = answers_unbind
        self.framer = pdu.Framer(max_pdu=1 << 16)
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            self.received.append(frame)
            _, command_id, _, sequence = pdu.header(frame)
            if command_id == CommandId.unbind:
                self.events.append("app asked to unbind")
                if self.answers_unbind:
                    self.transport.write(pdu.response(command_id, sequence, Status.ESME_ROK))  # type: ignore[union-attr]
            elif command_id == CommandId.deliver_sm:
                self.events.append("app got a deliver_sm")
                self.transport.write(pdu.response(command_id, sequence, Status.ESME_ROK))  # type: ignore[union-attr]

    def send(self, frame: bytes) -> None:
        self.transport.write(frame)  # type: ignore[union-attr]

    def answers(self, command_id: int) -> list[bytes]:
        return [frame for frame in self.received if pdu.header(frame)[1] == command_id]


class Tree:
    """A relay built on a `MemoryReactorClock`, with the pumps of its connections."""

    def __init__(self, config: Config = IN_MEMORY) -> None:
        self.reactor = MemoryReactorClock()
        self.service: RelayService = build(config, self.reactor)
        self.completer = ConnectionCompleter(self.reactor)
        self.pumps: list[IOPump] = []
        self.events: list[str] = []

    def connect_pending(self) -> None:
        """Complete every connection attempt made so far."""
        while (pump := self.completer.succeedOnce()) is not None:
            self.pumps.append(pump)

    def turn(self, seconds: float = 0.0) -> None:
        """Move the clock and carry every byte both ways until nothing moves."""
        self.reactor.advance(seconds)
        self.connect_pending()
        for _ in range(20):
            if not any([pump.pump() for pump in self.pumps]):
                break

    def app(self, answers_unbind: bool = True) -> App:
        """An app connected to the relay's SMPP port from loopback (the demo account's net)."""
        app = App(self.events, answers_unbind)
        loopback = IPv4Address("TCP", "127.0.0.1", 40000)
        here = IPv4Address("TCP", "127.0.0.1", SMPP_PORT)
        (factory,) = [args[1] for args in self.reactor.tcpServers if args[0] == SMPP_PORT]
        relay_side = factory.buildProtocol(loopback)
        self.pumps.append(
            connect(
                relay_side,
                FakeTransport(relay_side, isServer=True, hostAddress=here, peerAddress=loopback),
                app,
                FakeTransport(app, isServer=False, hostAddress=loopback, peerAddress=here),
                clock=self.reactor,
            )
        )
        self.turn()
        return app

    def spy(self, name: str, owner: Any, method: str) -> None:
        """Record in ``events`` when ``owner.method`` is called."""
        original: Callable[..., Any] = getattr(owner, method)

        def recorded(*args: Any) -> Any:
            self.events.append(name)
            return original(*args)

        setattr(owner, method, recorded)

    def stop(self) -> float:
        """Stop the relay, carrying bytes and moving the clock; return how long it took."""
        began = self.reactor.seconds()
        stopped: Deferred[None] = self.service.stopService()
        for _ in range(1000):
            if stopped.called:
                break
            self.turn(0.1)
        assert stopped.called, "stopService did not finish"
        return self.reactor.seconds() - began


def test_whole_tree_relays_a_submit_and_its_receipt_and_stops_with_no_delayed_call() -> None:
    """build() on a fake reactor: the upstream binds to the simulated SMSC, an app binds and
    submits, the receipt comes back; stopService leaves no delayed call on that reactor, and
    stopping follows the documented order: listeners, held parts, apps unbound, upstream."""
    tree = Tree()
    service = tree.service
    service.startService()
    tree.turn()
    assert service.upstream.pool.bound == 1
    assert service.ready() == (True, "ok")
    # Every timer runs on the injected reactor (none went to the global one).
    timers = [child for child in service if isinstance(child, TimerService)]
    assert len(timers) == 3  # routes and held deliveries, the rules, the store
    assert all(timer.clock is tree.reactor for timer in timers)

    app = tree.app()
    app.send(pdu.bind_request("transceiver", 1, "demo", "demo"))
    tree.turn()
    (bound,) = app.answers(CommandId.bind_transceiver_resp)
    assert pdu.header(bound)[2] == Status.ESME_ROK
    app.send(submit_sm(2, registered_delivery=1))
    tree.turn()
    (answer,) = app.answers(CommandId.submit_sm_resp)
    assert pdu.header(answer)[2] == Status.ESME_ROK
    message_id = pdu.message_id_of(answer)
    tree.turn(1.0)
    (receipt,) = app.answers(CommandId.deliver_sm)
    assert pdu.receipt_id(pdu.read_short_message(receipt)) == message_id
    tree.events.clear()

    for listener in service.app_listeners:
        tree.spy("stop listening", listener, "stopService")
    tree.spy("answer held parts", service.relay, "drop_held")
    tree.spy("unbind apps", service.registry, "shutdown")
    tree.spy("stop upstream", service.upstream, "stopService")
    tree.stop()
    assert tree.events == [
        "stop listening",
        "answer held parts",
        "unbind apps",
        "app asked to unbind",
        "stop upstream",
    ]
    assert service.upstream.pool.bound == 0
    assert tree.reactor.getDelayedCalls() == []


def test_a_part_held_at_shutdown_gets_its_receipt_before_the_app_is_unbound() -> None:
    """The first part of a two-part message, answered ESME_ROK and held when the relay stops,
    is not lost without a word: its app gets an UNDELIV receipt under the id it was given,
    and only then is asked to unbind; nothing of it reaches the operator."""
    tree = Tree()
    service = tree.service
    service.startService()
    tree.turn()
    app = tree.app()
    app.send(pdu.bind_request("transceiver", 1, "demo", "demo"))
    tree.turn()
    first_half = b"\x05\x00\x03\x2a\x02\x01" + b"first half"
    app.send(submit_sm(2, esm_class=0x40, short_message=first_half, registered_delivery=1))
    tree.turn()
    (answer,) = app.answers(CommandId.submit_sm_resp)
    assert pdu.header(answer)[2] == Status.ESME_ROK
    held_id = pdu.message_id_of(answer)
    assert held_id.startswith(b"R")  # the relay's own id: the part is held, not sent
    tree.stop()
    (receipt,) = app.answers(CommandId.deliver_sm)
    fields = pdu.read_short_message(receipt)
    assert pdu.receipt_id(fields) == held_id
    assert b"stat:UNDELIV" in fields.text
    assert tree.events == ["app got a deliver_sm", "app asked to unbind"]
    sent = [
        sample.value
        for family in service.metrics.registry.collect()
        if family.name == "smpprelay_upstream_submits"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
    assert sum(sent) == 0
    assert tree.reactor.getDelayedCalls() == []


def test_an_app_that_ignores_our_unbind_holds_the_stop_no_longer_than_shutdown_timeout() -> None:
    """An app that never answers the relay's unbind would hold the stop for limits.response
    (30 s); the whole stop is bounded by limits.shutdown_timeout (15 s here): the app is cut off,
    upstream still unbinds, the stop is marked not clean (twistd then keeps its signal exit
    status) and no delayed call is left."""
    limits = attrs.evolve(IN_MEMORY.limits, shutdown_timeout=15.0)
    tree = Tree(attrs.evolve(IN_MEMORY, limits=limits))
    service = tree.service
    service.startService()
    tree.turn()
    app = tree.app(answers_unbind=False)
    app.send(pdu.bind_request("transceiver", 1, "demo", "demo"))
    tree.turn()
    took = tree.stop()
    timeout = service.config.limits.shutdown_timeout
    assert timeout < service.config.limits.response
    # The apps get all but the last third (5 s at most); upstream unbinds in what is left.
    assert timeout - 5 <= took <= timeout
    assert "app asked to unbind" in tree.events
    assert service.stopped_cleanly is False
    assert service.upstream.pool.bound == 0
    assert tree.reactor.getDelayedCalls() == []


def test_a_stop_where_every_app_unbinds_is_clean() -> None:
    """The counterpart: with an app that answers, the stop is clean (twistd exits 0)."""
    tree = Tree()
    tree.service.startService()
    tree.turn()
    app = tree.app()
    app.send(pdu.bind_request("transceiver", 1, "demo", "demo"))
    tree.turn()
    assert tree.stop() < 1
    assert tree.service.stopped_cleanly is True


@pytest.mark.logs_errors
def test_a_stage_that_fails_is_logged_and_the_stop_goes_on() -> None:
    """Unbinding the apps fails outright: the failure is logged, not swallowed, and the rest
    still stops (upstream unbinds, no delayed call is left)."""
    tree = Tree()
    service = tree.service
    service.startService()
    tree.turn()
    service.registry.shutdown = lambda: fail(RuntimeError("apps would not go"))  # type: ignore[method-assign]
    with captured_logs(is_error) as errors:
        tree.stop()
    assert [event["log_format"] for event in errors] == ["stopping: a stage failed"]
    assert service.upstream.pool.bound == 0
    assert tree.reactor.getDelayedCalls() == []


class Taken(MemoryReactorClock):
    """A reactor on which some TCP ports are held by another process."""

    def __init__(self, *taken: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.taken = taken

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("port", "name"), [(SMPP_PORT, "SMPP"), (METRICS_PORT, "metrics")], ids=["smpp", "metrics"]
)
def test_a_port_that_is_taken_stops_the_start(port: int, name: str) -> None:
    """A listener that cannot listen stops the start with one line naming the listener, the
    address and the reason (a SystemExit: twistd prints it and exits 1); nothing is left
    trying to reach the operator."""
    reactor = Taken(port)
    service = build(IN_MEMORY, reactor)
    with pytest.raises(ListenFailed) as raised:
        service.privilegedStartService()  # type: ignore[no-untyped-call]
    line = str(raised.value.code)
    assert line.startswith(f"smpprelay: {name}: ")
    assert f"127.0.0.1:{port}" in line
    assert "Address already in use" in line
    assert "\n" not in line
    assert reactor.tcpClients == []
