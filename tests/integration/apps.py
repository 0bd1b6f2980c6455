"""What an app (or an HTTP client) does against a relay on real sockets, shared by the
integration tests: smpplib message fields, a TLS context, a plain bind and an old-TLS hello on a
raw socket, and a GET on the metrics listener."""

from __future__ import annotations

import socket
import ssl
import warnings
from typing import Any

import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone

from smpprelay import pdu
from smpprelay.service import RelayService

from .conftest import port_of

INTL, ISDN, ALNUM = (
    smpplib.consts.SMPP_TON_INTL,
    smpplib.consts.SMPP_NPI_ISDN,
    smpplib.consts.SMPP_TON_ALNUM,
)


def message(text: bytes, destination: str = "79991234567", **fields: Any) -> dict[str, Any]:
    """The fields of a submit_sm as smpplib's send_message takes them."""
    base: dict[str, Any] = {
        "source_addr_ton": ALNUM,
        "source_addr_npi": 0,
        "source_addr": "SHOP",
        "dest_addr_ton": INTL,
        "dest_addr_npi": ISDN,
        "destination_addr": destination,
        "data_coding": 0,
        "short_message": text,
    }
    base.update(fields)
    return base


def app_context(ca: str) -> ssl.SSLContext:
    """What a careful app uses: the relay's CA, TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # smpplib passes no server_hostname; the chain is checked
    return context


def plain_bind(sock: socket.socket) -> bytes:
    sock.sendall(pdu.bind_request("transceiver", 1, "app1", "secret1"))
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def old_tls(sock: socket.socket) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.wrap_socket(sock).close()
    except ssl.SSLError as error:
        return str(error)
    return "handshake succeeded"


class _Body(Protocol):
    """Collects a response body. (readBody warns under filterwarnings=error: the transport
    Agent hands the body protocol has no abortConnection.)"""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


async def http_get(service: RelayService, path: str) -> tuple[int, bytes]:
    """GET ``path`` from the relay's metrics listener; returns (status code, body)."""
    return await http_get_at(port_of(service.metrics_listener), path)


async def http_get_at(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from 127.0.0.1:``port`` (a relay's metrics listener, in this process or
    not); returns (status code, body)."""
    from twisted.internet import reactor

    url = f"http://127.0.0.1:{port}{path}".encode()
    response = await Agent(reactor).request(b"GET", url)
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done))
    return response.code, await done
