"""The operator's side of the upstream tests: a `StringTransport` per connection whose loss
reaches the protocol on the next turn of the `Clock`, once, as a reactor's does; an
`IStreamClientEndpoint` that records every attempt; and a bound `SmppConnection` for the pool.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from smpprelay import pdu
from smpprelay.config import UpstreamConfig
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status
from smpprelay.pool import UpstreamPool
from smpprelay.upstream import UpstreamHandler, UpstreamService, build_upstream
from tests.fakes import frames_of

OPERATOR = IPv4Address("TCP", "127.0.0.1", 2775)
RECONNECTS = "smpprelay_upstream_reconnects_total"
SESSIONS = "smpprelay_upstream_sessions"


class OperatorTransport(StringTransport):
    """One TCP connection as the operator sees it.

    Closing it (either side) delivers ``connectionLost`` on the next turn of the clock, once;
    with ``hold_loss`` the loss waits until the test calls `deliver_loss` (a peer that does
    not read, so the close never completes).
    """

    def __init__(self, clock: Clock, protocol: IProtocol) -> None:
        super().__init__(peerAddress=OPERATOR)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.protocol = protocol
        self.hold_loss = False
        self.aborted = False
        self.lost = False
        self._reason: Failure | None = None

    def loseConnection(self) -> None:
        super().loseConnection()  # type: ignore[no-untyped-call]
        self._lose(ConnectionDone())

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True
        self._lose(ConnectionAborted())

    def peer_closes(self) -> None:
        """The operator closes the connection."""
        self._lose(ConnectionDone())

    def deliver_loss(self) -> None:
        """Deliver a held loss now."""
        assert self._reason is not None
        assert not self.lost
        self.lost = True
        self.protocol.connectionLost(self._reason)

    def _lose(self, reason: Exception) -> None:
        if self._reason is not None:
            return
        self._reason = Failure(reason)
        if not self.hold_loss:
            self.clock.callLater(0, self.deliver_loss)

    def frames(self) -> list[bytes]:
        """The PDUs written to the operator since the last `take`."""
        return frames_of(self.value())  # type: ignore[no-untyped-call]

    def take(self) -> list[bytes]:
        """The PDUs written since the last `take`, forgetting them."""
        frames = self.frames()
        self.clear()  # type: ignore[no-untyped-call]
        return frames

    def send(self, frame: bytes) -> None:
        """The operator sends a PDU."""
        self.protocol.dataReceived(frame)

    def answer_bind(self, status: int = Status.ESME_ROK) -> None:
        """Answer the bind request written on this connection."""
        (request,) = self.take()
        _, command_id, _, sequence = pdu.header(request)
        kind = pdu.BIND_KINDS[CommandId(command_id)]
        self.send(pdu.bind_response(kind, sequence, status, "SMSC"))


@implementer(IStreamClientEndpoint)
class OperatorEndpoint:
    """A client endpoint that records every connection attempt; ``refuse`` makes them fail."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.refuse = False
        self.attempts: list[float] = []
        self.transports: list[OperatorTransport] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts.append(self.clock.seconds())
        if self.refuse:
            return fail(ConnectionRefusedError("operator down"))
        protocol = factory.buildProtocol(OPERATOR)
        assert protocol is not None
        transport = OperatorTransport(self.clock, protocol)
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return succeed(protocol)

    @property
    def last(self) -> OperatorTransport:
        return self.transports[-1]


class Upstreams:
    """An `UpstreamService` built from config, on a clock, connected to `OperatorEndpoint`."""

    def __init__(self, **overrides: Any) -> None:
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 2775,
            "system_id": "relay",
            "password": "pw",
            "enquire_link": 10.0,
            "response_timeout": 3.0,
            "reconnect_initial": 1.0,
            "reconnect_max": 8.0,
        }
        fields.update(overrides)
        self.clock = Clock()
        self.metrics = Metrics(CollectorRegistry())
        self.endpoint = OperatorEndpoint(self.clock)
        self.routed: list[bytes] = []
        # While ``hold_routes``, routing a deliver_sm waits in ``held_routes`` for the test.
        self.hold_routes = False
        self.held_routes: list[Deferred[int]] = []
        self.service: UpstreamService = build_upstream(
            UpstreamConfig(**fields),
            lambda: self.endpoint,
            self._route,
            self.clock,
            self.metrics,
            70_000,
            jitter=lambda: 0.0,
        )
        self.pool = self.service.pool

    def _route(self, frame: bytes) -> Deferred[int]:
        self.routed.append(frame)
        if self.hold_routes:
            held: Deferred[int] = Deferred()
            self.held_routes.append(held)
            return held
        return succeed(Status.ESME_ROK)

    def start(self) -> None:
        self.service.startService()  # type: ignore[no-untyped-call]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def state(self, session: str = "0") -> dict[str, float | None]:
        return {
            state: self.sample(SESSIONS, session=session, state=state)
            for state in ("connecting", "bound")
        }

    def reconnects(self, reason: str, session: str = "0") -> float | None:
        return self.sample(RECONNECTS, session=session, reason=reason)

    def pending_reconnects(self) -> int:
        return sum("_reconnect" in repr(call) for call in self.clock.getDelayedCalls())


def bound(**overrides: Any) -> tuple[Upstreams, OperatorTransport]:
    """A started service whose one session has bound."""
    up = Upstreams(**overrides)
    up.start()
    transport = up.endpoint.last
    transport.answer_bind()
    assert len(up.pool.transmitters) == 1
    return up, transport


class Wire:
    """A bound `SmppConnection` over a `StringTransport`, for pool tests."""

    def __init__(self, clock: Clock, metrics: Metrics) -> None:
        self.transport = StringTransport(peerAddress=OPERATOR)
        self.connection = SmppConnection(
            UpstreamHandler(lambda frame: succeed(0)),
            clock,
            metrics,
            side="upstream",
            max_pdu=70_000,
            response_timeout=30.0,
        )
        self.connection.makeConnection(self.transport)  # type: ignore[no-untyped-call]

    def take(self) -> list[bytes]:
        frames = frames_of(self.transport.value())
        self.transport.clear()
        return frames

    def answer(self, request: bytes, message_id: bytes) -> None:
        self.connection.dataReceived(
            pdu.submit_sm_resp(pdu.sequence_of(request), Status.ESME_ROK, message_id)
        )

    def refuse(self, request: bytes, status: int = Status.ESME_RTHROTTLED) -> None:
        """Answer ``request`` with an error status (no message id)."""
        self.connection.dataReceived(pdu.submit_sm_resp(pdu.sequence_of(request), status))


def make_pool(
    window: int = 2, queue_timeout: float = 5.0, queue_max: int = 100, parts_within: float = 60.0
) -> tuple[UpstreamPool, Clock, Metrics]:
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    pool = UpstreamPool(clock, metrics, window, queue_timeout, queue_max, parts_within)
    return pool, clock, metrics
