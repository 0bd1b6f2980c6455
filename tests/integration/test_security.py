"""Security over real sockets: TLS both ways (A9), password hashes end to end.

The certificates are made for each test session (tests/certs.py): a CA and a server
certificate for 127.0.0.1 signed by it.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
import smpplib.exceptions
from twisted.internet.threads import deferToThread

from smpprelay import auth, passwd, pdu
from smpprelay.config import ListenTlsConfig
from smpprelay.passwd import make_hash
from smpprelay.service import Listener, RelayService
from smpprelay.simulator import Simulator
from smpprelay.tls import server_endpoint
from tests.certs import Certs, make_certs

from .apps import app_context, message, old_tls, plain_bind
from .conftest import Harness, port_of, wait_for


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


async def tls_simulator(harness: Harness, certs: Certs) -> tuple[Listener, Simulator]:
    """A stand-alone simulated SMSC that speaks SMPP over TLS only."""
    tls = ListenTlsConfig(port=0, cert=certs.cert, key=certs.key)
    return await harness.simulator(server_endpoint(harness.reactor, "127.0.0.1", tls))


def pdus_read(simulator: Listener) -> float:
    """PDUs (a bind, with its password, first of all) the simulated SMSC has read, any kind."""
    metrics = simulator.factory.metrics  # type: ignore[attr-defined]
    read: float = sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "smpprelay_pdus"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["direction"] == "in"
    )
    return read


def tls_failures(service: RelayService, side: str) -> float:
    """TLS handshakes the relay saw fail on ``side``."""
    value = service.metrics.registry.get_sample_value(
        "smpprelay_tls_failures_total", {"side": side}
    )
    return value or 0.0


def tls_reconnects(service: RelayService) -> float:
    """How often the relay's upstream session 0 failed its TLS handshake."""
    value = service.metrics.registry.get_sample_value(
        "smpprelay_upstream_reconnects_total", {"session": "0", "reason": "tls"}
    )
    return value or 0.0


def failed_attempts(service: RelayService) -> float:
    """How often the relay's upstream session 0 failed to come up."""
    return sum(
        service.metrics.registry.get_sample_value(
            "smpprelay_upstream_reconnects_total", {"session": "0", "reason": reason}
        )
        or 0
        for reason in ("connect", "tls", "bind_timeout", "bind_refused", "lost")
    )


async def refused_by_tls(service: RelayService, simulator: Listener, sim: Simulator) -> None:
    """The relay's upstream failed its TLS handshake at least twice and is retrying: never
    bound, and no PDU at all (so not the bind with our password) reached the operator."""
    await wait_for(lambda: failed_attempts(service) >= 2)
    assert service.upstream.pool.bound == 0
    assert pdus_read(simulator) == 0
    assert list(sim.received) == []
    assert tls_failures(service, "upstream") >= 2
    assert tls_reconnects(service) >= 2


def tls_upstream(listener: Listener, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port_of(listener),
        "system_id": "relay",
        "password": "pw",
        "tls": True,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.1,
    }
    section.update(extra)
    return section


@pytest_twisted.ensureDeferred
async def test_app_over_tls_to_operator_over_tls(harness: Harness, certs: Certs) -> None:
    """An app binds to the relay's TLS-only listener and submits; the relay carries it to
    the operator over TLS (certificate checked against tls_ca and 127.0.0.1) and the app gets
    the operator's answer."""
    sim_listener, sim = await tls_simulator(harness, certs)
    service = await harness.relay(
        listen={"host": "127.0.0.1", "port": None, "tls": {"port": 0, **_pem(certs)}},
        upstream=tls_upstream(sim_listener, tls_ca=certs.ca),
    )
    assert service.listener is service.tls_listener
    app = harness.esme(service, app_context(certs.ca))
    bound = await app.bind("transceiver", "app1")
    assert bound.status == pdu.Status.ESME_ROK
    resp = await app.submit(**message(b"over TLS"))
    assert resp.status == pdu.Status.ESME_ROK
    assert [r.message_id for r in sim.received] == [resp.message_id]
    assert sim.received[0].message.short_message == b"over TLS"
    assert isinstance(app.client._socket, ssl.SSLSocket)
    assert app.client._socket.version() in ("TLSv1.2", "TLSv1.3")


def _pem(certs: Certs) -> dict[str, str]:
    return {"cert": certs.cert, "key": certs.key}


def _talk(port: int, speak: Callable[[socket.socket], Any]) -> Any:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return speak(sock)


@pytest_twisted.ensureDeferred
async def test_tls_port_refuses_plain_smpp_andold_tls(harness: Harness, certs: Certs) -> None:
    """A9: plain SMPP to the TLS port and a TLS 1.1 client are closed without an SMPP
    answer and reach nothing; a TLS 1.2+ client on the same port binds."""
    service = await harness.relay(listen={"host": "127.0.0.1", "tls": {"port": 0, **_pem(certs)}})
    assert service.tls_listener is not None
    assert service.tls_listener is not service.listener
    port = port_of(service.tls_listener)
    answer = await deferToThread(_talk, port, plain_bind)
    # At most a TLS alert record (content type 21), never an SMPP bind_resp.
    assert answer == b"" or answer[0] == 21
    old = await deferToThread(_talk, port, old_tls)
    assert "PROTOCOL_VERSION" in old.upper()
    await wait_for(lambda: tls_failures(service, "downstream") == 2)
    app = harness.esme(service, app_context(certs.ca))
    app.client.port = port
    assert (await app.bind("transmitter", "app1")).status == pdu.Status.ESME_ROK
    # A refused bind over TLS is closed like one over TCP.
    wrong = harness.esme(service, app_context(certs.ca))
    wrong.client.port = port
    with pytest.raises(smpplib.exceptions.PDUError) as refused:
        await wrong.bind("transmitter", "app1", "wrong")
    assert refused.value.args[1] == pdu.Status.ESME_RBINDFAIL
    assert await wrong.at_eof()
    assert (
        service.metrics.registry.get_sample_value("smpprelay_bind_attempts_total", {"result": "ok"})
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_upstream_certificate_is_verified(harness: Harness, certs: Certs) -> None:
    """Against a CA that did not sign the operator's certificate the relay never binds and
    keeps retrying: no PDU at all, so not the bind with our password, reaches the operator.
    With tls_verify false it binds (and the operator reads that bind)."""
    sim_listener, sim = await tls_simulator(harness, certs)
    service = await harness.relay(
        bound=0, upstream=tls_upstream(sim_listener, tls_ca=certs.other_ca)
    )
    await refused_by_tls(service, sim_listener, sim)
    insecure = await harness.relay(upstream=tls_upstream(sim_listener, tls_verify=False))
    assert insecure.upstream.pool.bound == 1
    assert pdus_read(sim_listener) >= 1  # the probe sees a bind when one arrives


def _chain_only(port: int, ca: str) -> str:
    # What the operator's certificate is worth with the host name left out of the check.
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        return str(tls.version())


@pytest_twisted.ensureDeferred
async def test_upstream_host_name_is_verified(harness: Harness, certs: Certs) -> None:
    """An operator certificate from the trusted CA (a valid chain) but for another host name
    than upstream.host means no bind: nothing, so not our password, reaches the operator, and
    the relay keeps retrying."""
    tls = ListenTlsConfig(port=0, cert=certs.wrong_name_cert, key=certs.wrong_name_key)
    sim_listener, sim = await harness.simulator(server_endpoint(harness.reactor, "127.0.0.1", tls))
    port = port_of(sim_listener)
    assert await deferToThread(_chain_only, port, certs.ca) in ("TLSv1.2", "TLSv1.3")
    service = await harness.relay(bound=0, upstream=tls_upstream(sim_listener, tls_ca=certs.ca))
    await refused_by_tls(service, sim_listener, sim)


def _bind_over_tls(context: ssl.SSLContext) -> Callable[[socket.socket], bytes | str]:
    """Send a bind over TLS with ``context``; what came back, or the error."""

    def speak(sock: socket.socket) -> bytes | str:
        try:
            with context.wrap_socket(sock) as tls:
                tls.sendall(pdu.bind_request("transceiver", 1, "app1", "secret1"))
                return tls.recv(4096)
        except (ssl.SSLError, OSError) as error:
            return str(error)

    return speak


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """An app with a client certificate."""
    context = app_context(ca)
    context.load_cert_chain(cert, key)
    return context


@pytest_twisted.ensureDeferred
async def test_mutual_tls_on_the_apps_listener(harness: Harness, certs: Certs) -> None:
    """With listen.tls.client_ca, an app without a certificate, or with one another CA
    signed, never gets to SMPP (no bind is even read); one the CA signed binds."""
    tls = {"port": 0, **_pem(certs), "client_ca": certs.ca}
    service = await harness.relay(listen={"host": "127.0.0.1", "tls": tls})
    port = port_of(service.tls_listener)  # type: ignore[arg-type]
    for context in (
        app_context(certs.ca),
        client_context(certs.ca, certs.stranger_cert, certs.stranger_key),
    ):
        answer = await deferToThread(_talk, port, _bind_over_tls(context))
        assert isinstance(answer, str) or answer == b"", answer  # an alert or EOF, no bind_resp
    await wait_for(lambda: tls_failures(service, "downstream") == 2)  # logged and counted
    app = harness.esme(service, client_context(certs.ca, certs.client_cert, certs.client_key))
    app.client.port = port
    assert (await app.bind("transceiver", "app1")).status == pdu.Status.ESME_ROK
    attempts = {
        sample.labels["result"]: sample.value
        for family in service.metrics.registry.collect()
        if family.name == "smpprelay_bind_attempts"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value
    }
    assert attempts == {"ok": 1.0}


@pytest_twisted.ensureDeferred
async def test_relay_presents_its_certificate_to_an_operator_that_asks(
    harness: Harness, certs: Certs
) -> None:
    """An operator requiring client certificates reads nothing from a relay without one
    (which keeps retrying), and binds the relay that has upstream.tls_cert and tls_key."""
    tls = ListenTlsConfig(port=0, cert=certs.cert, key=certs.key, client_ca=certs.ca)
    sim_listener, sim = await harness.simulator(server_endpoint(harness.reactor, "127.0.0.1", tls))
    without = await harness.relay(bound=0, upstream=tls_upstream(sim_listener, tls_ca=certs.ca))
    await refused_by_tls(without, sim_listener, sim)  # the operator's alert is a TLS failure
    upstream = tls_upstream(
        sim_listener, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key
    )
    with_cert = await harness.relay(upstream=upstream)
    assert with_cert.upstream.pool.bound == 1
    expiry = with_cert.metrics.registry.get_sample_value(
        "smpprelay_tls_certificate_expiry_timestamp_seconds", {"certificate": "upstream"}
    )
    assert expiry is not None
    assert time.time() < expiry < time.time() + 2 * 86400  # the test certificate: one day
    app = harness.esme(with_cert)
    assert (await app.bind("transceiver", "app1")).status == pdu.Status.ESME_ROK
    resp = await app.submit(**message(b"mutual TLS"))
    assert resp.status == pdu.Status.ESME_ROK
    assert [r.message_id for r in sim.received] == [resp.message_id]


@pytest_twisted.ensureDeferred
async def test_hashed_password_end_to_end_verified_off_the_reactor(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An account with a password_hash binds and submits; the hash is checked in a thread
    other than the reactor's; a wrong password is refused with the uniform status."""
    threads: list[int] = []
    real_verify = passwd.verify_password

    def verify(hashed: str, password: bytes) -> bool:
        threads.append(threading.get_ident())
        return real_verify(hashed, password)

    monkeypatch.setattr(auth, "verify_password", verify)
    clients = [{"system_id": "app1", "password_hash": make_hash("secret1", n=1024)}]
    service = await harness.relay(clients=clients)
    app = harness.esme(service)
    assert (await app.bind("transmitter", "app1")).status == pdu.Status.ESME_ROK
    resp = await app.submit(**message(b"hashed"))
    assert resp.status == pdu.Status.ESME_ROK
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    wrong = harness.esme(service)
    with pytest.raises(smpplib.exceptions.PDUError) as refused:
        await wrong.bind("transmitter", "app1", "secret2")
    assert refused.value.args[1] == pdu.Status.ESME_RBINDFAIL
    assert await wrong.at_eof()
    assert len(threads) == 2
