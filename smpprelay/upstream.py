"""The relay's own binds to the operator.

One `ClientService` per session: it connects, binds in ``prepareConnection``, reconnects with
capped exponential back-off and jitter, and is told to unbind cleanly on shutdown. The
`UpstreamPool` hands each submit to a bound session with room in its window; when none has
room, the submit waits in a bounded queue for at most ``queue_timeout`` seconds.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smpprelay import pdu
from smpprelay.config import UpstreamConfig
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status
from smpprelay.tls import tls_problem


class QueueFull(Exception):
    """No upstream session could take the submit in time, or the waiting queue is full."""


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
    """Handles what the operator sends us on one session: receipts, MO, unbind."""

    log = Logger()

    def __init__(self, route: Callable[[bytes], Deferred[int]]) -> None:
        self._route = route

    def connection_made(self, connection: SmppConnection) -> None:
        pass

    def request_received(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        if command_id == CommandId.deliver_sm:

            def answer(status: int) -> None:
                connection.respond(CommandId.deliver_sm, sequence, status, b"\0")

            def failed(reason: Failure) -> None:
                self.log.failure("routing a deliver_sm failed", reason)
                connection.respond(CommandId.deliver_sm, sequence, Status.ESME_RX_T_APPN)

            self._route(frame).addCallbacks(answer, failed)
        elif command_id == CommandId.unbind:
            self.log.info(
                "operator {peer} unbinds; answering and reconnecting", peer=connection.peer
            )
            connection.respond(CommandId.unbind, sequence, Status.ESME_ROK)
            connection.close()
        elif command_id in (CommandId.alert_notification, CommandId.outbind):
            pass  # no response exists for these
        else:
            connection.send(pdu.generic_nack(sequence, Status.ESME_RINVCMDID))

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
        pass


class UpstreamPool:
    """Bound upstream sessions and the submits waiting for room in one of their windows."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        window: int,
        queue_timeout: float,
        queue_max: int,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.window = window
        self.queue_timeout = queue_timeout
        self.queue_max = queue_max
        self.transmitters: list[SmppConnection] = []
        self.receivers: list[SmppConnection] = []
        self._next = 0
        # A waiting entry is one submit (bytes) or the parts of one message (a tuple), which
        # must go out together on one session.
        self._queue: deque[tuple[float, bytes | tuple[bytes, ...], Deferred[Any]]] = deque()
        self._timer: IDelayedCall | None = None

    @property
    def bound(self) -> int:
        """Sessions bound now (transmitting or receiving)."""
        return len(self.transmitters) + len(self.receivers)

    def add(self, connection: SmppConnection, transmits: bool, receives: bool) -> None:
        """A session finished binding."""
        if transmits:
            self.transmitters.append(connection)
            self._drain()
        elif receives:
            self.receivers.append(connection)

    def remove(self, connection: SmppConnection) -> None:
        """A session is gone."""
        for sessions in (self.transmitters, self.receivers):
            if connection in sessions:
                sessions.remove(connection)

    def submit(self, frame: bytes) -> Deferred[bytes]:
        """Send a submit_sm upstream; fires with the operator's answer frame."""
        connection = self._with_room()
        if connection is not None and not self._queue:
            return self._send(connection, frame)
        return self._wait(frame)

    def submit_all(self, frames: list[bytes]) -> Deferred[list[bytes | Failure]]:
        """Send the parts of one message back to back on one session.

        Fires with each part's answer frame, or the failure that stands for it, in order.
        The parts may take the session a few requests past its window: the operator wants
        them together, and they are few.
        """
        connection = self._with_room()
        if connection is not None and not self._queue:
            return self._send_all(connection, tuple(frames))
        return self._wait(tuple(frames)).addErrback(lambda reason: [reason] * len(frames))

    def _send_all(
        self, connection: SmppConnection, frames: tuple[bytes, ...]
    ) -> Deferred[list[bytes | Failure]]:
        sent = [self._send(connection, frame) for frame in frames]
        gathered: Deferred[list[tuple[bool, Any]]] = DeferredList(sent, consumeErrors=True)
        return gathered.addCallback(lambda results: [result for _, result in results])

    def _wait(self, item: bytes | tuple[bytes, ...]) -> Deferred[Any]:
        if len(self._queue) >= self.queue_max:
            return fail(QueueFull(f"{self.queue_max} submits already wait for upstream"))
        waiting: Deferred[Any] = Deferred()
        self._queue.append((self.clock.seconds() + self.queue_timeout, item, waiting))
        self.metrics.upstream_queue.set(len(self._queue))
        if self._timer is None:
            self._timer = self.clock.callLater(self.queue_timeout, self._expire)
        return waiting

    def _with_room(self) -> SmppConnection | None:
        sessions = self.transmitters
        count = len(sessions)
        for i in range(count):
            index = (self._next + i) % count
            connection = sessions[index]
            if connection.in_flight < self.window and not connection.closed:
                self._next = index + 1
                return connection
        return None

    def _send(self, connection: SmppConnection, frame: bytes) -> Deferred[bytes]:
        clock = self.clock
        sent = clock.seconds()

        def freed(result: Any) -> Any:
            if isinstance(result, bytes):
                self.metrics.upstream_round_trip.observe(clock.seconds() - sent)
            if self._queue:
                self._drain()
            return result

        return connection.send_request(frame).addBoth(freed)

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            connection = self._with_room()
            if connection is None:
                break
            _, item, waiting = queue.popleft()
            if isinstance(item, tuple):
                self._send_all(connection, item).chainDeferred(waiting)
            else:
                self._send(connection, item).chainDeferred(waiting)
        self.metrics.upstream_queue.set(len(queue))

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        queue = self._queue
        while queue:
            deadline, _, waiting = queue[0]
            if deadline > now:
                self._timer = self.clock.callLater(deadline - now, self._expire)
                break
            queue.popleft()
            waiting.errback(QueueFull(f"no upstream session free within {self.queue_timeout} s"))
        self.metrics.upstream_queue.set(len(queue))

    def stop(self) -> None:
        """Fail whatever still waits (on shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        while self._queue:
            self._queue.popleft()[2].errback(QueueFull("relay stopping"))


@implementer(IProtocol, ILoggingContext, IHandshakeListener)
class _BoundLossOnly:
    """Stands between the transport and ClientService's protocol proxy.

    ClientService counts a connection whose ``prepareConnection`` (our bind) failed as a failed
    attempt and forgets it, but its proxy still reports that connection's loss when it comes:
    in Waiting, Connecting or Stopped that raises automat's ``NoTransition`` (logged as an
    Unhandled Error), and once a newer connection is up it would wrongly end that one in
    ClientService's books. So only the loss of the bound connection reaches ClientService;
    the loss of any other reaches the connection alone.
    """

    def __init__(self, proxy: IProtocol, session: UpstreamSession) -> None:
        self.proxy = proxy
        self._session = session
        self._connection: SmppConnection | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self.proxy.makeConnection(transport)
        self._connection = self._session._connecting  # set by the handler just now

    def connectionMade(self) -> None:
        pass  # the proxy's makeConnection made the connection

    def handshakeCompleted(self) -> None:
        if self._connection is not None:  # over TLS (upstream.tls)
            self._connection.handshakeCompleted()

    def logPrefix(self) -> str:
        return f"upstream {self._session.session_name}"

    def dataReceived(self, data: bytes) -> None:
        self.proxy.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        connection = self._connection
        if connection is None or connection is self._session._prepared:
            self.proxy.connectionLost(reason)
        else:
            connection.connectionLost(reason)


@implementer(IProtocolFactory)
class _BoundLossOnlyFactory:
    """Wraps ClientService's factory: each protocol it builds sits behind `_BoundLossOnly`."""

    def __init__(self, factory: IProtocolFactory, session: UpstreamSession) -> None:
        self._factory = factory
        self._session = session

    def buildProtocol(self, addr: IAddress) -> _BoundLossOnly | None:
        proxy = self._factory.buildProtocol(addr)
        return None if proxy is None else _BoundLossOnly(proxy, self._session)

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()


class _SessionEndpoint:
    """The endpoint ClientService connects through.

    It reports failed connection attempts (ClientService does not) and puts each connection
    behind `_BoundLossOnly`, handing ClientService its own proxy back.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, session: UpstreamSession) -> None:
        self._endpoint = endpoint
        self._session = session

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(reason: Failure) -> Failure:
            self._session._connect_failed(reason)
            return reason

        def unwrap(guard: IProtocol) -> IProtocol:
            assert isinstance(guard, _BoundLossOnly)
            return guard.proxy

        connecting: Deferred[IProtocol] = self._endpoint.connect(
            _BoundLossOnlyFactory(factory, self._session)
        )
        return connecting.addCallback(unwrap).addErrback(failed)


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
        self._connecting: SmppConnection | None = None
        # The connection ClientService holds as connected (it bound); `unbind` keeps it.
        self._prepared: SmppConnection | None = None
        outer = self

        class _Handler(UpstreamHandler):
            def connection_made(self, connection: SmppConnection) -> None:
                outer._connecting = connection

            def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
                outer._lost(connection, reason)

        handler = _Handler(route)
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
            _SessionEndpoint(endpoint, self),  # type: ignore[arg-type]
            factory,
            retryPolicy=backoff(config.reconnect_initial, config.reconnect_max, jitter),
            clock=clock,
            prepareConnection=lambda protocol: Deferred.fromCoroutine(self._bind(protocol)),
        )
        self._set_state("connecting")
        metrics.upstream_window_size.labels(name).set(config.window)
        for reason in ("connect", "tls", "bind_timeout", "bind_refused", "lost"):
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

    def _connect_failed(self, reason: Failure) -> None:
        self.log.warn(
            "upstream {name}: connection failed ({why})",
            name=self.session_name,
            why=reason.getErrorMessage(),
        )
        self.metrics.upstream_reconnects.labels(self.session_name, "connect").inc()

    async def _bind(self, protocol: IProtocol) -> None:
        # ClientService hands us a proxy of the protocol; the handler saw the real one.
        connection = self._connecting
        assert connection is not None
        c = self.config
        request = pdu.bind_request(
            self.kind,
            1,  # replaced by send_request
            c.system_id,
            c.password,
            c.system_type,
            c.interface_version,
            c.addr_ton,
            c.addr_npi,
            c.address_range,
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
        self.connection = self._prepared = connection
        connection.start_keepalive(c.enquire_link)
        self._set_state("bound")
        self.pool.add(
            connection,
            transmits=self.kind in ("transmitter", "transceiver"),
            receives=self.kind in ("receiver", "transceiver"),
        )

    def _lost(self, connection: SmppConnection, reason: Failure) -> None:
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
) -> UpstreamService:
    """The sessions the config asks for: ``binds`` transceivers, or as many TX+RX pairs."""
    pool = UpstreamPool(clock, metrics, config.window, config.queue_timeout, config.queue_max)
    kinds = ["transceiver"] if config.bind == "transceiver" else ["transmitter", "receiver"]
    sessions = [
        UpstreamSession(
            f"{index}-{kind[:2]}x" if len(kinds) > 1 else str(index),
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
