"""A workaround for a gap in Twisted's `ClientService`, used by `smpprelay.upstream` only.

`UpstreamSession` binds in ClientService's ``prepareConnection``. When that fails (the bind is
refused or unanswered), ClientService counts a failed attempt and moves to ``Waiting``, but the
connection stays open: ClientService forgets it, its protocol proxy does not. The proxy still
reports the connection's loss when it comes, and ``Waiting`` (like ``Connecting`` and
``Stopped``) has no ``_clientDisconnected`` transition, so Automat raises ``NoTransition``
(logged as an Unhandled Error). Once a newer connection is up, that late loss would also end the
newer one in ClientService's books. See ``attemptConnection`` and the transition table in
``twisted/application/_client_service.py``.

`_SessionEndpoint` puts each connection behind `_ForgetUnboundLoss`, which lets only the loss of
the bound connection reach ClientService; the loss of any other reaches the connection alone.
The regression tests that pin this are in tests/test_upstream.py:
``test_refused_bind_then_operator_close_reconnects_without_error`` and
``test_late_loss_of_a_refused_connection_leaves_the_newer_bind_alone``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from smpprelay.connection import SmppConnection


class GuardedSession(Protocol):
    """What the guard needs from the session whose connections it stands in front of."""

    @property
    def session_name(self) -> str:
        """Names the session in log prefixes."""

    @property
    def connecting(self) -> SmppConnection | None:
        """The connection whose ``connectionMade`` ran last (the handler records it)."""

    @property
    def prepared(self) -> SmppConnection | None:
        """The connection ClientService holds as connected: the one that bound."""

    def connect_failed(self, reason: Failure) -> None:
        """A connection attempt failed before any connection existed."""


@implementer(IProtocol, ILoggingContext, IHandshakeListener)
class _ForgetUnboundLoss:
    """Stands between the transport and ClientService's protocol proxy: the loss of a
    connection that never bound reaches that connection, not ClientService."""

    def __init__(self, proxy: IProtocol, session: GuardedSession) -> None:
        self.proxy = proxy
        self._session = session
        self._connection: SmppConnection | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self.proxy.makeConnection(transport)
        # The proxy hides the real protocol (only ClientService's private ``_protocol`` holds
        # it), so it is learnt from the session: the call above ran its connectionMade, which
        # told the session through its handler, synchronously.
        self._connection = self._session.connecting

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
        if connection is None or connection is self._session.prepared:
            self.proxy.connectionLost(reason)
        else:
            connection.connectionLost(reason)


@implementer(IProtocolFactory)
class _ForgetUnboundLossFactory:
    """Wraps ClientService's factory: each protocol it builds sits behind `_ForgetUnboundLoss`."""

    def __init__(self, factory: IProtocolFactory, session: GuardedSession) -> None:
        self._factory = factory
        self._session = session

    def buildProtocol(self, addr: IAddress) -> _ForgetUnboundLoss | None:
        proxy = self._factory.buildProtocol(addr)
        return None if proxy is None else _ForgetUnboundLoss(proxy, self._session)

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()


@implementer(IStreamClientEndpoint)
class SessionEndpoint:
    """The endpoint ClientService connects through.

    It reports failed connection attempts (ClientService does not) and puts each connection
    behind `_ForgetUnboundLoss`, handing ClientService its own proxy back.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, session: GuardedSession) -> None:
        self._endpoint = endpoint
        self._session = session

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(reason: Failure) -> Failure:
            self._session.connect_failed(reason)
            return reason

        def unwrap(guard: IProtocol) -> IProtocol:
            assert isinstance(guard, _ForgetUnboundLoss)
            return guard.proxy

        connecting: Deferred[IProtocol] = self._endpoint.connect(
            _ForgetUnboundLossFactory(factory, self._session)
        )
        return connecting.addCallback(unwrap).addErrback(failed)
