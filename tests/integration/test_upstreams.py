"""Several upstreams over real sockets: two stand-alone simulated SMSCs behind one in-process
relay, smpplib apps in front. Prefix and account routing, weights, failover when one operator
goes away and return when it is back, two operators answering the same message id each
routed back to the right app, and a concatenated message's parts on one session in order."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest_twisted

from smpprelay.config import ListenTlsConfig
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.service import Listener, RelayService, tcp_server
from smpprelay.simulator import Simulator, SimulatorFactory
from smpprelay.tls import server_endpoint
from tests.certs import make_certs
from tests.integration.apps import message
from tests.integration.conftest import Esme, Harness, free_port, port_of, wait_for


def _upstream(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "system_id": "relay",
        "password": "pw",
        "reconnect_initial": 0.1,
        "reconnect_max": 0.2,
        **extra,
    }


async def _operator(harness: Harness, port: int, simulator: Simulator | None = None) -> Simulator:
    """A simulated SMSC listening on ``port`` (the same one again after it went away)."""
    simulator = simulator or Simulator(harness.reactor)
    endpoint = tcp_server(harness.reactor, "127.0.0.1", port)
    listener = Listener(f"operator:{port}", endpoint, SimulatorFactory(simulator, Metrics()))
    harness.listeners.append(listener)
    listener.startService()
    assert listener.listening is not None
    await listener.listening
    return simulator


async def _app(harness: Harness, relay: RelayService, account: str) -> Esme:
    app = harness.esme(relay)
    await app.bind("transceiver", account)
    return app


def _destinations(simulator: Simulator) -> list[str]:
    return [received.message.destination_addr.decode() for received in simulator.received]


def _bound(relay: RelayService, name: str) -> int:
    return relay.upstream.by_name[name].pool.bound


@pytest_twisted.ensureDeferred
async def test_prefix_routing_failover_and_return(harness: Harness) -> None:
    """+7900 goes to "ru", the rest to "rest"; with "ru" gone its traffic goes to "rest" at
    once (counted as a failover), and back to "ru" once it is bound again."""
    ports = free_port(), free_port()
    ru = await _operator(harness, ports[0])
    rest = await _operator(harness, ports[1])
    upstreams = [_upstream("ru", ports[0], prefixes=["7900"]), _upstream("rest", ports[1])]
    relay = await harness.relay(bound=2, upstreams=upstreams)
    app = await _app(harness, relay, "app1")

    for destination in ("79001112233", "4471234567"):
        assert (await app.submit(**message(b"hi", destination))).status == Status.ESME_ROK
    assert _destinations(ru) == ["79001112233"]
    assert _destinations(rest) == ["4471234567"]

    # "ru" goes away: its listener closes, then its link drops.
    ru_listener = next(each for each in harness.listeners if each.label == f"operator:{ports[0]}")
    await ru_listener.stopService()
    for session in relay.upstream.by_name["ru"].service.sessions:
        assert session.connection is not None
        session.connection.abort()
    await wait_for(lambda: _bound(relay, "ru") == 0)
    assert relay.ready() == (True, "ok")  # "rest" still carries traffic
    assert (await app.submit(**message(b"hi", "79002223344"))).status == Status.ESME_ROK
    assert _destinations(rest)[-1] == "79002223344"
    failovers = {"from": "ru", "to": "rest"}
    registry = relay.metrics.registry
    assert registry.get_sample_value("smpprelay_upstream_failovers_total", failovers) == 1

    # Back again on the same port: its traffic returns.
    await _operator(harness, ports[0], ru)
    await wait_for(lambda: _bound(relay, "ru") == 1, timeout=10.0)
    assert (await app.submit(**message(b"hi", "79003334455"))).status == Status.ESME_ROK
    assert _destinations(ru) == ["79001112233", "79003334455"]
    assert registry.get_sample_value("smpprelay_upstream_failovers_total", failovers) == 1


@pytest_twisted.ensureDeferred
async def test_account_routing_and_colliding_ids_reach_the_right_app(harness: Harness) -> None:
    """app1's traffic goes to operator a, app2's to b; both operators answer the same message
    id, and each receipt comes back to the app whose message it was."""
    ports = free_port(), free_port()
    a = await _operator(harness, ports[0])
    b = await _operator(harness, ports[1])
    for simulator in (a, b):
        simulator._prefix = "SAME00"  # two operators issuing the same ids
    upstreams = [
        _upstream("a", ports[0], accounts=["app1"]),
        _upstream("b", ports[1], accounts=["app2"]),
    ]
    relay = await harness.relay(bound=2, upstreams=upstreams)
    app1 = await _app(harness, relay, "app1")
    app2 = await _app(harness, relay, "app2")

    first = await app1.submit(**message(b"one", "4470000001", registered_delivery=1))
    second = await app2.submit(**message(b"two", "4470000002", registered_delivery=1))
    assert first.message_id == second.message_id == b"SAME0000000001"
    assert _destinations(a) == ["4470000001"]
    assert _destinations(b) == ["4470000002"]

    await app1.read_until(lambda: len(app1.deliveries) == 1)
    await app2.read_until(lambda: len(app2.deliveries) == 1)
    assert app1.deliveries[0].destination_addr == b"SHOP"
    assert b"id:SAME0000000001" in app1.deliveries[0].short_message
    assert b"id:SAME0000000001" in app2.deliveries[0].short_message
    assert app1.deliveries[0].source_addr == b"4470000001"
    assert app2.deliveries[0].source_addr == b"4470000002"


@pytest_twisted.ensureDeferred
async def test_weights_share_the_traffic_and_long_messages_stay_on_one_session(
    harness: Harness,
) -> None:
    """weight 3 against 1: about three in four submits go to the first; a concatenated
    message's parts all go to one operator, in order."""
    ports = free_port(), free_port()
    heavy = await _operator(harness, ports[0])
    light = await _operator(harness, ports[1])
    # Windows wide enough for all 80: a full window would pass submits to the other one.
    upstreams = [
        _upstream("heavy", ports[0], weight=3, window=100),
        _upstream("light", ports[1], window=100),
    ]
    relay = await harness.relay(bound=2, upstreams=upstreams)
    app = await _app(harness, relay, "app1")

    # Each to its own number: the flood rule allows 50 in a row to one.
    results = await app.submit_many([message(b"hi", f"44712345{i:02d}") for i in range(80)])
    assert [getattr(answer, "status", None) for _, answer in results] == [Status.ESME_ROK] * 80
    assert len(heavy.received) + len(light.received) == 80
    assert 45 <= len(heavy.received) <= 75  # 60 expected

    before = len(heavy.received), len(light.received)
    for part in (1, 2, 3):
        udh = bytes([5, 0, 3, 0x42, 3, part])
        answer = await app.submit(**message(udh + b"part %d" % part, "4479999999", esm_class=0x40))
        assert answer.status == Status.ESME_ROK
    parts = [
        list(simulator.received)[count:]
        for simulator, count in zip((heavy, light), before, strict=True)
    ]
    carried = [each for each in parts if each]
    assert len(carried) == 1
    assert [r.message.short_message[6:] for r in carried[0]] == [b"part 1", b"part 2", b"part 3"]


@pytest_twisted.ensureDeferred
async def test_each_upstream_has_its_own_tls(harness: Harness, tmp_path: pathlib.Path) -> None:
    """One operator over TLS with a client certificate, one in the clear: both bind, and the
    certificate's expiry is a series of that upstream's own."""
    certs = make_certs(tmp_path)
    tls = ListenTlsConfig(port=0, cert=certs.cert, key=certs.key, client_ca=certs.ca)
    secure, _ = await harness.simulator(server_endpoint(harness.reactor, "127.0.0.1", tls))
    plain_port = free_port()
    await _operator(harness, plain_port)
    secured = {"tls": True, "tls_ca": certs.ca, "tls_cert": certs.client_cert}
    upstreams = [
        _upstream("secure", port_of(secure), **secured, tls_key=certs.client_key),
        _upstream("plain", plain_port),
    ]
    relay = await harness.relay(bound=2, upstreams=upstreams)
    assert (_bound(relay, "secure"), _bound(relay, "plain")) == (1, 1)
    expiry = relay.metrics.registry.get_sample_value(
        "smpprelay_tls_certificate_expiry_timestamp_seconds", {"certificate": "upstream/secure"}
    )
    assert expiry is not None
