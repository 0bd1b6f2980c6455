"""listen.proxy_protocol: the PROXY v1/v2 header's source address is the app's for allowed_ips,
lock-outs and logs; a connection without a valid header is closed, logged and counted.

Real sessions (`DownstreamFactory` as service.py builds it, `Access`, portal) behind
`ProxyWrappingFactory`, on a StringTransport whose own peer is the balancer's address.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent

from smpprelay import pdu
from smpprelay.access import Access
from smpprelay.auth import make_portal
from smpprelay.config import Account, ConfigError, SecurityConfig, load_config
from smpprelay.connection import SmppConnection
from smpprelay.downstream import DownstreamFactory, DownstreamSession, SessionRegistry
from smpprelay.metrics import Metrics
from smpprelay.proxy_protocol import ProxyEndpoint, ProxyWrappingFactory
from tests.fakes import PASSWORD, FakeSubmit, captured_logs, resp_header

BIND_TRX_RESP = 0x80000009
BALANCER = "192.0.2.1"  # the address TCP shows: HAProxy's
APP = Account(system_id="app", password=PASSWORD, allowed_ips=("192.0.2.0/24",))
ALLOWED = "192.0.2.50"  # an app inside APP's allowed_ips
OUTSIDE = "198.51.100.7"  # an app outside them
TIMEOUT = 10.0


def v1(source: str, port: int = 41000) -> bytes:
    return f"PROXY TCP4 {source} 10.0.0.5 {port} 2775\r\n".encode()


def v2(source: str, port: int = 41000) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("10.0.0.5")
    body = addresses + struct.pack("!HH", port, 2775)
    # signature, version 2 + PROXY, TCP over IPv4, length
    return b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(body)) + body


HEADERS = [pytest.param(v1, id="v1"), pytest.param(v2, id="v2")]


class Relay:
    """The app side of a relay whose listener speaks the PROXY protocol."""

    def __init__(self, security: SecurityConfig | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics()
        self.registry = SessionRegistry(self.metrics)
        self.access = Access(security or SecurityConfig(), (APP,), self.clock, self.metrics)
        self.portal = make_portal({"app": APP}, None, self.access.password_checks)
        self.sessions: list[DownstreamSession] = []
        inner = DownstreamFactory(self._session, self._connection)
        self.factory = ProxyWrappingFactory(inner, self.metrics, self.clock, TIMEOUT)

    def _session(self) -> DownstreamSession:
        session = DownstreamSession(
            self.portal, self.registry, FakeSubmit(), self.clock, self.metrics, 10.0, 10,
            access=self.access,
        )  # fmt: skip
        self.sessions.append(session)
        return session

    def _connection(self, session: DownstreamSession) -> SmppConnection:
        return SmppConnection(
            session,
            self.clock,
            self.metrics,
            side="downstream",
            max_pdu=70_000,
            response_timeout=30.0,
        )

    def connect(self) -> StringTransport:
        """A connection from the balancer; nothing sent yet."""
        peer = IPv4Address("TCP", BALANCER, 50000)
        protocol = self.factory.buildProtocol(peer)
        assert protocol is not None
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        self.protocol = protocol
        return transport

    def send(self, transport: StringTransport, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        written = bytes(transport.value())
        transport.clear()
        return written

    def refused(self) -> float | None:
        labels = {"reason": "proxy_header"}
        return self.metrics.registry.get_sample_value("smpprelay_connections_refused_total", labels)


def bind(password: str = PASSWORD) -> bytes:
    return pdu.bind_request("transceiver", 1, "app", password)


def bound(answer: bytes) -> bool:
    """The answer is a bind_transceiver_resp with ESME_ROK."""
    return len(answer) >= 16 and struct.unpack("!II", answer[4:12]) == (BIND_TRX_RESP, 0)


@pytest.mark.parametrize("header", HEADERS)
def test_bind_is_checked_against_the_headers_address(header: object) -> None:
    """The balancer is inside allowed_ips, the app in the header is not: refused; and back."""
    make = header  # v1 or v2
    relay = Relay()
    transport = relay.connect()
    with captured_logs() as events:
        answer = relay.send(transport, make(OUTSIDE) + bind())  # type: ignore[operator]
    assert answer == resp_header(BIND_TRX_RESP, 0x0D, 1)  # ESME_RBINDFAIL
    assert transport.disconnecting
    lines = [formatEvent(e) for e in events]
    assert any(f"bind refused from {OUTSIDE}:41000" in line for line in lines), lines
    assert not any(BALANCER in line for line in lines), lines
    assert relay.sessions[0].host == OUTSIDE

    allowed = relay.connect()
    answer = relay.send(allowed, make(ALLOWED) + bind())  # type: ignore[operator]
    assert bound(answer), answer.hex()
    assert relay.refused() == 0


def test_header_and_bind_may_arrive_byte_by_byte() -> None:
    relay = Relay()
    transport = relay.connect()
    data = v2(ALLOWED) + bind()
    answer = b"".join(relay.send(transport, data[i : i + 1]) for i in range(len(data)))
    assert bound(answer), answer.hex()
    assert relay.sessions[0].host == ALLOWED


def test_v1_header_unknown_keeps_the_balancers_address() -> None:
    """A v1 "PROXY UNKNOWN" header (the source is not known): the TCP peer stays."""
    relay = Relay()
    transport = relay.connect()
    assert bound(relay.send(transport, b"PROXY UNKNOWN ::1 ::1 1 2\r\n" + bind()))
    assert relay.sessions[0].host == BALANCER


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bind(), id="no-header"),
        pytest.param(b"\r\n\r\n\x00X", id="v2-signature-broken"),
        pytest.param(b"GET / HTTP/1.0\r\n", id="http"),
        pytest.param(b"PROXY TCP4 not-an-address 10.0.0.5 1 2\r\n" + bind(), id="bad-v1"),
        pytest.param(b"PROXY " + b"9" * 120, id="v1-too-long"),
        pytest.param(v2(ALLOWED)[:12] + b"\x31" + v2(ALLOWED)[13:] + bind(), id="bad-v2-version"),
    ],
)
def test_without_a_valid_header_the_connection_is_closed_logged_and_counted(data: bytes) -> None:
    relay = Relay()
    transport = relay.connect()
    with captured_logs() as events:
        assert relay.send(transport, data) == b""  # nothing answered
    assert transport.disconnected  # aborted
    assert relay.sessions == [] or relay.sessions[0].state.name == "OPEN"
    assert relay.refused() == 1
    lines = [formatEvent(e) for e in events]
    assert any(f"{BALANCER}:50000" in line and "PROXY header" in line for line in lines), lines
    assert relay.registry.bound_count("app") == 0
    relay.protocol.connectionLost(
        connectionDone
    )  # the loss of a connection never made inside: no error


def test_a_silent_connection_is_closed_after_the_timeout() -> None:
    relay = Relay()
    transport = relay.connect()
    relay.send(transport, b"PROXY TCP4 ")  # a header begun, never finished
    relay.clock.advance(TIMEOUT - 0.1)
    assert not transport.disconnected
    relay.clock.advance(0.1)
    assert transport.disconnected
    assert relay.refused() == 1
    relay.protocol.connectionLost(connectionDone)
    assert relay.clock.getDelayedCalls() == []  # no session_init timer: no session began


def test_lockouts_go_to_the_app_not_the_balancer() -> None:
    """One app guessing passwords through the balancer locks out itself, not the others."""
    relay = Relay(SecurityConfig(bind_failures=2))
    for _ in range(2):
        transport = relay.connect()
        answer = relay.send(transport, v1(ALLOWED) + bind("wrong"))
        assert answer == resp_header(BIND_TRX_RESP, 0x0D, 1)  # ESME_RBINDFAIL
        relay.protocol.connectionLost(connectionDone)
    assert relay.access.locked(ALLOWED)
    assert not relay.access.locked(BALANCER)
    other = relay.connect()
    assert bound(relay.send(other, v1("192.0.2.51") + bind()))


def test_config_key_defaults_off_and_is_validated(tmp_path: Path) -> None:
    base = "clients: [{system_id: app, password: pw}]\n"
    default = tmp_path / "default.yaml"
    default.write_text(base)
    assert load_config(str(default)).listen.proxy_protocol is False
    on = tmp_path / "on.yaml"
    on.write_text(base + "listen: {proxy_protocol: true}\n")
    assert load_config(str(on)).listen.proxy_protocol is True
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "listen: {proxy_protocol: maybe}\n")
    with pytest.raises(ConfigError, match=r"listen\.proxy_protocol"):
        load_config(str(bad))


def test_endpoint_wraps_what_it_listens_with() -> None:
    """TLS, when asked, is inside the PROXY wrapper: the header comes before the handshake."""
    from twisted.internet.ssl import CertificateOptions
    from twisted.protocols.tls import TLSMemoryBIOFactory

    seen = []

    class Inner:
        def listen(self, factory: object) -> None:
            seen.append(factory)

    relay = Relay()
    ProxyEndpoint(Inner(), relay.metrics, relay.clock, TIMEOUT, CertificateOptions()).listen(  # type: ignore[arg-type]
        relay.factory.wrappedFactory
    )
    (wrapping,) = seen
    assert isinstance(wrapping, ProxyWrappingFactory)
    assert isinstance(wrapping.wrappedFactory, TLSMemoryBIOFactory)
    assert ipaddress.ip_address(ALLOWED) in ipaddress.ip_network(APP.allowed_ips[0])


def test_the_scale_out_examples_agree_on_the_header() -> None:
    """HAProxy sends PROXY v2 to every relay, and the relays' config expects it: one side
    alone either closes every connection or reads the header as a broken PDU."""
    etc = Path(__file__).parent.parent / "etc"
    servers = [
        line.split("#", 1)[0].split()
        for line in (etc / "haproxy.cfg").read_text().splitlines()
        if line.strip().startswith("server ")
    ]
    assert servers
    assert all("send-proxy-v2" in words for words in servers), servers
    # The check goes to the metrics port (no PROXY header there): "port" keeps it plain.
    assert all("port" in words for words in servers), servers
    assert load_config(str(etc / "smpprelay-redis.yaml")).listen.proxy_protocol is True
    assert load_config(str(etc / "smpprelay.yaml")).listen.proxy_protocol is False
