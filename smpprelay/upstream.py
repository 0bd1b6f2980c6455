"""The relay's own binds to the operator.

One `ClientService` per session: it connects, binds in ``prepareConnection``, reconnects with
capped exponential back-off and jitter, and is told to unbind cleanly on shutdown. A bound
session joins the `UpstreamPool` (`smpprelay.pool`), which hands it submits. ClientService
needs a guard around each connection, see `smpprelay._clientservice_fix`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from smpprelay import pdu
from smpprelay._clientservice_fix import SessionEndpoint
from smpprelay.config import UpstreamConfig
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pace import Pace
from smpprelay.pdu import CommandId, Status
from smpprelay.pool import UpstreamPool
from smpprelay.tls import tls_problem


class BindRefused(Exception):
    """The operator answered our bind with an error."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {pdu.status_name(status)}")
        self.status = status


def backoff(
    initial: float, cap: float, jitter: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """Exponential back-off, doubled each failure, never above ``cap`` seconds.

    ``attempt`` counts failures in a row from 1, as ClientService does: the first retry waits
    ``initial`` seconds. The jitter takes up to half of the delay away, so a fleet of relays
    that lost the operator at the same moment does not come back at the same moment.
    """

    def policy(attempt: int) -> float:
        delay = min(cap, initial * 2.0 ** min(max(attempt - 1, 0), 32))
        return delay * (1.0 - 0.5 * jitter())

    return policy


class UpstreamHandler:
    """Handles what the operator sends us on one session: receipts, MO (as deliver_sm or
    data_sm), unbind.

    An operator's ``unbind`` is answered at once, and the connection leaves the pool (no new
    submits go to it), but it is not closed yet: the operator may still answer the submits in
    flight, and those answers are read and delivered as usual (Kannel keeps reading after an
    unbind for the same reason: an answer thrown away makes the app retry a message the
    operator accepted, so it is sent twice). deliver_sm is still routed meanwhile. The
    connection closes once nothing is in flight either way, or when the operator closes it,
    and in any case within the response timeout.
    """

    log = Logger()

    def __init__(self, route: Callable[[bytes], Deferred[int]]) -> None:
        self._route = route
        # deliver_sm still being routed, per connection: an unbound connection waits for
        # them, or their answers would be lost and the operator would send them again.
        self._routing: dict[SmppConnection, set[Deferred[None]]] = {}
        # Connections the operator unbound, each with the timer that bounds its drain.
        self._draining: dict[SmppConnection, IDelayedCall] = {}

    def connection_made(self, connection: SmppConnection) -> None:
        pass

    def withdraw(self, connection: SmppConnection) -> None:
        """The operator unbound ``connection``: it takes no new requests from now on."""

    def draining(self, connection: SmppConnection) -> bool:
        """Whether the operator unbound ``connection`` and it is finishing what is in flight."""
        return connection in self._draining

    def request_received(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        if command_id == CommandId.deliver_sm:
            self._deliver(connection, sequence, frame)
        elif command_id == CommandId.data_sm:
            self._deliver_data_sm(connection, sequence, frame)
        elif command_id == CommandId.unbind:
            connection.respond(CommandId.unbind, sequence, Status.ESME_ROK)
            if not self.draining(connection):
                self._drain(connection)
        elif command_id in (CommandId.alert_notification, CommandId.outbind):
            pass  # no response exists for these
        else:
            connection.send(pdu.generic_nack(sequence, Status.ESME_RINVCMDID))

    def _deliver_data_sm(self, connection: SmppConnection, sequence: int, frame: bytes) -> None:
        """An MO or receipt the operator sends as a data_sm: routed as the deliver_sm that
        carries it to the app (`pdu.deliver_sm_from_data_sm`), answered with a data_sm_resp."""
        try:
            deliver_sm = pdu.deliver_sm_from_data_sm(frame)
        except pdu.DecodeError as error:
            self.log.warn("upstream data_sm unreadable ({error})", error=str(error))
            connection.respond(CommandId.data_sm, sequence, error.status)
            return
        self._deliver(connection, sequence, deliver_sm, CommandId.data_sm)

    def _deliver(
        self,
        connection: SmppConnection,
        sequence: int,
        frame: bytes,
        command_id: int = CommandId.deliver_sm,
    ) -> None:
        def answer(status: int) -> None:
            connection.respond(command_id, sequence, status, b"\0")

        def failed(reason: Failure) -> None:
            self.log.failure("routing a deliver_sm failed", reason)
            connection.respond(command_id, sequence, Status.ESME_RX_T_APPN)

        routed = self._route(frame).addCallbacks(answer, failed)
        if routed.called:
            return
        routing = self._routing.setdefault(connection, set())
        routing.add(routed)

        def done(_: None) -> None:
            routing.discard(routed)
            if self.draining(connection):
                self._settle(connection)

        routed.addCallback(done)

    def _drain(self, connection: SmppConnection) -> None:
        self.log.info(
            "operator {peer} unbinds; answered, finishing {count} requests in flight, then"
            " reconnecting",
            peer=connection.peer,
            count=connection.in_flight,
        )
        self.withdraw(connection)
        self._draining[connection] = connection.clock.callLater(
            connection.response_timeout, self._drained, connection
        )
        connection.drain().addCallback(lambda _: self._settle(connection))

    def _settle(self, connection: SmppConnection) -> None:
        # Nothing new is sent on a draining connection, so once its requests and the
        # deliver_sm being routed are done, nothing more can be owed either way.
        if connection.in_flight == 0 and not self._routing.get(connection):
            self._drained(connection)

    def _drained(self, connection: SmppConnection) -> None:
        deadline = self._draining.pop(connection, None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        connection.close()

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
        self._routing.pop(connection, None)
        deadline = self._draining.pop(connection, None)
        if deadline is not None and deadline.active():
            deadline.cancel()


class _SessionHandler(UpstreamHandler):
    """`UpstreamHandler` that also tells its session when a connection starts and ends."""

    def __init__(self, session: UpstreamSession, route: Callable[[bytes], Deferred[int]]) -> None:
        super().__init__(route)
        self._session = session

    def connection_made(self, connection: SmppConnection) -> None:
        self._session.connecting = connection

    def withdraw(self, connection: SmppConnection) -> None:
        self._session.withdraw(connection)

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
        super().connection_lost(connection, reason)
        self._session.lost(connection, reason)


class UpstreamSession(ClientService):
    """One bind to the operator, kept up for as long as the service runs."""

    log = Logger()

    def __init__(
        self,
        name: str,
        kind: str,
        endpoint: IStreamClientEndpoint,
        config: UpstreamConfig,
        pool: UpstreamPool,
        route: Callable[[bytes], Deferred[int]],
        clock: IReactorTime,
        metrics: Metrics,
        max_pdu: int,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.session_name = name
        self.kind = kind
        self.config = config
        self.pool = pool
        self.metrics = metrics
        self.connection: SmppConnection | None = None
        # The newest connection (its connectionMade ran last): the one being bound.
        self.connecting: SmppConnection | None = None
        # The connection ClientService holds as connected (it bound); `unbind` keeps it.
        self.prepared: SmppConnection | None = None
        handler = _SessionHandler(self, route)
        factory: Factory = Factory.forProtocol(
            lambda: SmppConnection(
                handler,
                clock,
                metrics,
                side="upstream",
                max_pdu=max_pdu,
                response_timeout=config.response_timeout,
            )
        )
        factory.noisy = False
        super().__init__(
            SessionEndpoint(endpoint, self),
            factory,
            retryPolicy=backoff(config.reconnect_initial, config.reconnect_max, jitter),
            clock=clock,
            prepareConnection=lambda protocol: Deferred.fromCoroutine(self._bind(protocol)),
        )
        self._set_state("connecting")
        metrics.upstream_window_size.labels(name).set(config.window)
        for reason in ("connect", "tls", "bind_timeout", "bind_refused", "lost", "unbind"):
            metrics.upstream_reconnects.labels(name, reason)
        metrics.upstream_window_in_use.labels(name).set_function(self._in_flight)

    def _in_flight(self) -> float:
        connection = self.connection
        return 0.0 if connection is None else float(connection.in_flight)

    def _set_state(self, state: str) -> None:
        for known in ("connecting", "bound"):
            self.metrics.upstream_sessions.labels(self.session_name, known).set(
                1 if known == state else 0
            )

    def connect_failed(self, reason: Failure) -> None:
        """A connection attempt failed before there was a connection to bind."""
        self.log.warn(
            "upstream {name}: connection failed ({why})",
            name=self.session_name,
            why=reason.getErrorMessage(),
        )
        self.metrics.upstream_reconnects.labels(self.session_name, "connect").inc()

    async def _bind(self, protocol: IProtocol) -> None:
        # ClientService hands us a proxy of the protocol; the handler saw the real one.
        connection = self.connecting
        assert connection is not None
        config = self.config
        request = pdu.bind_request(
            self.kind,
            1,  # replaced by send_request
            config.system_id,
            config.password,
            config.system_type,
            config.interface_version,
            config.addr_ton,
            config.addr_npi,
            config.address_range,
        )
        try:
            resp = await connection.send_request(request)
        except Exception as error:
            problem = tls_problem(error)
            if problem is not None:
                # The operator's certificate did not check out, or it refused ours: the bind
                # (and our password) never left this process.
                self.metrics.upstream_reconnects.labels(self.session_name, "tls").inc()
                self.metrics.tls_failures.labels("upstream").inc()
                self.log.warn(
                    "upstream {name}: TLS failed ({e})", name=self.session_name, e=problem
                )
            else:
                self.metrics.upstream_reconnects.labels(self.session_name, "bind_timeout").inc()
                self.log.warn(
                    "upstream {name}: no bind answer ({e})", name=self.session_name, e=error
                )
            if not connection.closed:  # ClientService leaves a connection it failed to prepare open
                connection.abort()
            raise
        status = pdu.header(resp)[2]
        if status != Status.ESME_ROK:
            self.metrics.upstream_reconnects.labels(self.session_name, "bind_refused").inc()
            self.log.warn(
                "upstream {name}: bind refused with {status}",
                name=self.session_name,
                status=pdu.status_name(status),
            )
            connection.close()
            raise BindRefused(status)
        self.log.info(
            "upstream {name}: bound as {kind} to {peer}",
            name=self.session_name,
            kind=self.kind,
            peer=connection.peer,
        )
        self.connection = self.prepared = connection
        connection.start_keepalive(config.enquire_link)
        self._set_state("bound")
        self.pool.add(
            connection,
            transmits=self.kind in ("transmitter", "transceiver"),
            receives=self.kind in ("receiver", "transceiver"),
            name=self.session_name,
        )

    def withdraw(self, connection: SmppConnection) -> None:
        """The operator unbound ``connection``: out of the pool now, while it drains.

        The close that follows is not a lost link (counted as reason "unbind" instead);
        ClientService reconnects once the connection is gone, as after any loss.
        """
        if connection is self.connection:
            self.connection = None
            self.pool.remove(connection)
            self.metrics.upstream_reconnects.labels(self.session_name, "unbind").inc()
            self._set_state("connecting")

    def lost(self, connection: SmppConnection, reason: Failure) -> None:
        """``connection`` is gone (bound or not)."""
        if connection is self.connection:
            self.connection = None
            self.pool.remove(connection)
            self.log.warn(
                "upstream {name}: connection lost ({why})",
                name=self.session_name,
                why=reason.getErrorMessage(),
            )
            self.metrics.upstream_reconnects.labels(self.session_name, "lost").inc()
            if tls_problem(reason.value) is not None:
                self.metrics.tls_failures.labels("upstream").inc()
            self._set_state("connecting")

    def unbind(self) -> Deferred[None]:
        """Unbind cleanly if bound (on shutdown); fires once the session is closed."""
        connection = self.connection
        if connection is None or connection.closed:
            return succeed(None)
        # Forgotten first, so the close that follows is not reported as a lost link.
        self.connection = None
        self.pool.remove(connection)
        self._set_state("connecting")
        return connection.unbind()

    @override
    def stopService(self) -> Deferred[None]:
        # Unbind first, so the operator sees a clean unbind rather than a dropped socket, and
        # stop reconnecting as soon as that is done, not once every session has unbound.
        def stop(_: object) -> Deferred[None]:
            return ClientService.stopService(self)

        return self.unbind().addCallback(stop)


class UpstreamService(MultiService):
    """Every upstream session and their pool."""

    def __init__(self, pool: UpstreamPool, sessions: list[UpstreamSession]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.pool = pool
        self.sessions = sessions
        for session in sessions:
            session.setServiceParent(self)  # type: ignore[no-untyped-call]

    @override
    def stopService(self) -> Deferred[None]:
        self.pool.stop()
        # Each session unbinds, then stops (UpstreamSession.stopService).
        return super().stopService()  # type: ignore[no-any-return, no-untyped-call]


def build_upstream(
    config: UpstreamConfig,
    endpoint: Callable[[], IStreamClientEndpoint],
    route: Callable[[bytes], Deferred[int]],
    clock: IReactorTime,
    metrics: Metrics,
    max_pdu: int,
    jitter: Callable[[], float] = random.random,
    parts_within: float = 60.0,
) -> UpstreamService:
    """The sessions the config asks for: ``binds`` transceivers, or as many TX+RX pairs.

    ``parts_within``: the operator's limit on a long message's parts (the concat rule's window).
    Sessions of an upstream not named "default" are named "<upstream>/<n>" in the metrics.
    """
    prefix = "" if config.name == "default" else f"{config.name}/"
    pace = None
    if config.throughput is not None:
        pace = Pace(
            clock,
            config.throughput,
            config.burst_size,
            metrics.upstream_pace,
            metrics.upstream_pace_decreases,
        )
    pool = UpstreamPool(
        clock, metrics, config.window, config.queue_timeout, config.queue_max, parts_within, pace
    )
    kinds = ["transceiver"] if config.bind == "transceiver" else ["transmitter", "receiver"]
    sessions = [
        UpstreamSession(
            prefix + (f"{index}-{kind[:2]}x" if len(kinds) > 1 else str(index)),
            kind,
            endpoint(),
            config,
            pool,
            route,
            clock,
            metrics,
            max_pdu,
            jitter,
        )
        for index in range(config.binds)
        for kind in kinds
    ]
    return UpstreamService(pool, sessions)
