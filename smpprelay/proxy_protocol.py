"""The PROXY protocol (v1 and v2) on the app listeners, for relays behind a load balancer.

With ``listen.proxy_protocol: true`` every app connection must start with a PROXY header (what
HAProxy sends with ``send-proxy`` / ``send-proxy-v2``); the app's address in it is what the
relay then sees as the peer (``transport.getPeer()``): allowed_ips, the per-address caps, the
bind lock-outs and the log lines all use it instead of the balancer's.

Twisted's ``twisted.protocols.haproxy`` parses the header, but its wrapper connects the SMPP
protocol as soon as TCP connects, before the header has arrived, so a protocol that reads its
peer in ``connectionMade`` (ours do, to admit or refuse the connection) would get the
balancer's address.  `ProxyHeaderProtocol` holds the SMPP protocol back until the header is
read, and closes a connection whose header is missing, invalid or late (the spec: a receiver
must not guess), with a log line and ``smpprelay_connections_refused_total{reason=
"proxy_header"}``.

Only a trusted balancer may send the header: anyone who can reach a PROXY port can claim any
address, so that port must be firewalled to the balancers.
"""

import ipaddress
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from smpprelay.metrics import Metrics

PROXY_HEADER = "proxy_header"  # the connections_refused reason

# A v2 header's fixed part (signature, version/command, family, length) is 16 bytes: fewer
# than that only tell it is one if they begin its signature.  A v1 header begins "PROXY ".
_V2_FIXED = 16
_V1_START = V1Parser.PROXYSTR + b" "


def _is_ip(address: object) -> bool:
    try:
        ipaddress.ip_address(str(getattr(address, "host", "")))
    except ValueError:
        return False
    return True


class ProxyHeaderProtocol(HAProxyProtocolWrapper):
    """Reads the PROXY header, then connects the wrapped (SMPP or TLS) protocol to itself."""

    factory: "ProxyWrappingFactory"
    log = Logger()

    def __init__(self, factory: "ProxyWrappingFactory", wrappedProtocol: IProtocol):
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._head = b""
        self._connected_inside = False
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection without its last step: the wrapped protocol is
        # connected in `_header_read`, once getPeer() answers the header's address.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        self._timer = self.factory.clock.callLater(
            self.factory.timeout, self._refuse, f"no PROXY header within {self.factory.timeout} s"
        )

    def dataReceived(self, data: bytes) -> None:
        if self._connected_inside:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.transport is None or self.disconnecting:
            return  # refused already: what still arrives is not read
        parser = self._parser
        if parser is None:
            self._head += data
            head = self._head
            if head.startswith(_V1_START):
                self._parser = parser = V1Parser()
            elif (
                len(head) >= _V2_FIXED and head[:12] == V2Parser.PREFIX and head[12] & 0xF0 == 0x20
            ):
                self._parser = parser = V2Parser()
            elif len(head) < _V2_FIXED and (
                _V1_START.startswith(head) or V2Parser.PREFIX.startswith(head[:12])
            ):
                return  # a header's first bytes: which one is not known yet
            else:
                self._refuse("no PROXY header")
                return
            data, self._head = head, b""
        try:
            info, remaining = parser.feed(data)
        except InvalidProxyHeader:
            self._refuse("invalid PROXY header")
            return
        if info is None:
            return  # the rest of the header is still on its way
        if info.source is not None and not _is_ip(info.source):
            # Twisted's v1 parser takes any word as the address; allowed_ips could not.
            self._refuse("invalid PROXY header")
            return
        self._proxyInfo = info
        self._header_read(remaining or b"")

    def _header_read(self, remaining: bytes) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._connected_inside = True
        # The wrapper is the wrapped protocol's transport (it provides what TCP provides).
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if remaining and not self.disconnecting:
            self.wrappedProtocol.dataReceived(remaining)

    def _refuse(self, why: str) -> None:
        assert self.transport is not None  # connected: makeConnection ran
        peer = self.transport.getPeer()
        self.log.info(
            "{peer}: {why}; closing (listen.proxy_protocol is on)",
            peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
            why=why,
        )
        self.factory.metrics.connections_refused.labels(PROXY_HEADER).inc()
        self.disconnecting = True
        # Nothing to flush: nothing was written, and the wrapped protocol never saw it.
        cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._connected_inside:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        else:
            # The SMPP protocol was never connected: it has no connection to lose.
            self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]


class ProxyWrappingFactory(HAProxyWrappingFactory):
    """Builds a `ProxyHeaderProtocol` around each of the wrapped factory's protocols."""

    protocol = ProxyHeaderProtocol  # type: ignore[assignment]
    noisy = False  # service.py logs the listener; no "Starting factory" line per port

    def __init__(
        self, wrapped: IProtocolFactory, metrics: Metrics, clock: IReactorTime, timeout: float
    ):
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.metrics = metrics
        self.clock = clock
        self.timeout = timeout
        # The series exists from the start at 0, so increase() sees the first refusal.
        metrics.connections_refused.labels(PROXY_HEADER)


@implementer(IStreamServerEndpoint)
class ProxyEndpoint:
    """Listens on ``inner`` (a plain TCP endpoint) for connections that start with a PROXY
    header; with ``tls_options``, TLS follows the header (HAProxy in TCP mode passes the app's
    TLS through, after its own plain-text header)."""

    def __init__(
        self,
        inner: IStreamServerEndpoint,
        metrics: Metrics,
        clock: IReactorTime,
        timeout: float,
        tls_options: Any = None,
    ):
        self.inner = inner
        self.metrics = metrics
        self.clock = clock
        self.timeout = timeout
        self.tls_options = tls_options

    def listen(self, protocolFactory: IProtocolFactory) -> "Deferred[IListeningPort]":
        factory = protocolFactory
        if self.tls_options is not None:
            factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
        wrapping = ProxyWrappingFactory(factory, self.metrics, self.clock, self.timeout)
        return self.inner.listen(wrapping)
