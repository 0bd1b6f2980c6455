"""The relay end to end over real sockets: smpplib apps, the relay, a simulated SMSC."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
from prometheus_client.parser import text_string_to_metric_families

from smpprelay.service import RelayService

from .apps import ALNUM, INTL, ISDN, http_get, message
from .conftest import Harness, free_port, port_of, simulator_of, wait_for


def without_sequence(frame: bytes) -> bytes:
    """A PDU with its sequence_number blanked: the one header field the relay rewrites."""
    return frame[:12] + b"\0\0\0\0" + frame[16:]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the Prometheus sample ``name`` whose labels include ``labels``."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest_twisted.ensureDeferred
async def test_submit_relayed_unchanged_and_receipt_routed_back(
    relay: RelayService, harness: Harness
) -> None:
    """A transceiver's submit reaches the SMSC as sent; its id and receipt come back."""
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    request = await app.send(**message(b"Your code is 1234", registered_delivery=1))
    await app.read_until(lambda: len(app.responses) == 1)
    resp = app.responses[0]

    assert resp.status == smpplib.consts.SMPP_ESME_ROK
    received = simulator.received[-1]
    assert resp.message_id == received.message_id
    got = received.message
    assert (got.source_ton, got.source_npi, got.source_addr) == (ALNUM, 0, b"SHOP")
    assert (got.dest_ton, got.dest_npi, got.destination_addr) == (INTL, ISDN, b"79991234567")
    assert (got.data_coding, got.registered_delivery) == (0, 1)
    assert got.short_message == b"Your code is 1234"
    assert without_sequence(received.frame) == without_sequence(request.generate())

    await app.read_until(lambda: len(app.deliveries) == 1)
    receipt = app.deliveries[0]
    assert receipt.esm_class & 0x04
    assert receipt.receipted_message_id == received.message_id
    assert receipt.short_message.startswith(b"id:" + received.message_id + b" ")
    assert receipt.destination_addr == b"SHOP"


@pytest_twisted.ensureDeferred
async def test_each_account_gets_only_its_own_receipts(
    relay: RelayService, harness: Harness
) -> None:
    """Receipts go to the account that submitted the message, never to another."""
    app1, app2 = harness.esme(relay), harness.esme(relay)
    await app1.bind("transceiver", "app1")
    await app2.bind("transceiver", "app2")
    ids1 = {
        (await app1.submit(**message(b"one %d" % i, registered_delivery=1))).message_id
        for i in range(2)
    }
    resp2 = await app2.submit(**message(b"two", registered_delivery=1))
    assert all(r.status == 0 for r in app1.responses + app2.responses)

    await app1.read_until(lambda: len(app1.deliveries) == 2)
    await app2.read_until(lambda: len(app2.deliveries) == 1)

    assert {d.receipted_message_id for d in app1.deliveries} == ids1
    assert [d.receipted_message_id for d in app2.deliveries] == [resp2.message_id]
    assert len(relay.router.held) == 0


@pytest_twisted.ensureDeferred
async def test_receipt_for_transmitter_held_until_receiver_binds(
    relay: RelayService, harness: Harness
) -> None:
    """A receipt for a transmitter-only account waits, then goes to its new receiver bind."""
    transmitter = harness.esme(relay)
    await transmitter.bind("transmitter", "app1")
    resp = await transmitter.submit(**message(b"held", registered_delivery=1))
    assert resp.status == 0

    await wait_for(lambda: relay.router.held.count("app1") == 1)
    assert transmitter.deliveries == []

    receiver = harness.esme(relay)
    await receiver.bind("receiver", "app1")
    await receiver.read_until(lambda: len(receiver.deliveries) == 1)

    assert receiver.deliveries[0].receipted_message_id == resp.message_id
    await wait_for(lambda: relay.router.held.count("app1") == 0)


@pytest_twisted.ensureDeferred
async def test_mo_reaches_only_the_account_owning_the_prefix(
    relay: RelayService, harness: Harness
) -> None:
    """An MO to 790012345 goes to app1 (prefix 7900); app2 gets only the one for 7911."""
    app1, app2 = harness.esme(relay), harness.esme(relay)
    await app1.bind("transceiver", "app1")
    await app2.bind("transceiver", "app2")
    simulator = simulator_of(relay)

    simulator.send_mo("smpprelay", b"79991234567", b"790012345", b"hi")
    simulator.send_mo("smpprelay", b"79991234567", b"791100000", b"for app2")
    await app1.read_until(lambda: len(app1.deliveries) == 1)
    await app2.read_until(lambda: len(app2.deliveries) == 1)

    mo = app1.deliveries[0]
    assert (mo.source_addr, mo.destination_addr, mo.short_message) == (
        b"79991234567",
        b"790012345",
        b"hi",
    )
    assert mo.esm_class == 0
    # Both were relayed in order: app2's first delivery being its own proves it missed app1's.
    assert app2.deliveries[0].destination_addr == b"791100000"
    assert app2.deliveries[0].short_message == b"for app2"


@pytest_twisted.ensureDeferred
async def test_wrong_password_bind_fails_and_connection_closes(
    relay: RelayService, harness: Harness
) -> None:
    """A bind with a wrong password is answered ESME_RBINDFAIL (0x0D) and the socket closed."""
    app = harness.esme(relay)
    with pytest.raises(smpplib.exceptions.PDUError) as refused:
        await app.bind("transceiver", "app1", password="wrong")

    assert refused.value.args[1] == 0x0D
    assert await app.at_eof()
    assert relay.registry.receivers("app1") == []


@pytest_twisted.ensureDeferred
async def test_long_text_split_by_smpplib_every_part_relayed(
    relay: RelayService, harness: Harness
) -> None:
    """Each UDH part of a long message smpplib split itself is relayed and answered."""
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    parts, coding, esm_class = smpplib.gsm.make_parts("Long message from smpplib. " * 15)
    assert len(parts) == 3
    assert esm_class == smpplib.consts.SMPP_GSMFEAT_UDHI

    for part in parts:
        await app.send(**message(part, data_coding=coding, esm_class=esm_class))
    await app.read_until(lambda: len(app.responses) == len(parts))

    assert [r.status for r in app.responses] == [0] * len(parts)
    relayed = list(simulator.received)[-len(parts) :]
    assert [r.message.short_message for r in relayed] == parts
    assert {r.message.esm_class for r in relayed} == {esm_class}


@pytest_twisted.ensureDeferred
async def test_metrics_and_readiness_over_http(relay: RelayService, harness: Harness) -> None:
    """/metrics counts app1's submits and shows the upstream bound; /readyz answers 200."""
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    for i in range(2):
        assert (await app.submit(**message(b"m%d" % i))).status == 0

    code, body = await http_get(relay, "/metrics")
    assert code == 200
    text = body.decode()
    assert sample(text, "smpprelay_submits_total", account="app1", status="ESME_ROK") == 2.0
    assert sample(text, "smpprelay_upstream_sessions", state="bound") == 1.0
    assert sample(text, "smpprelay_submits_total", account="app2", status="ESME_ROK") is None

    code, body = await http_get(relay, "/readyz")
    assert code == 200
    assert json.loads(body) == {"ready": True, "reason": "ok"}


@pytest_twisted.ensureDeferred
async def test_explicit_upstream_with_separate_tx_and_rx_binds(harness: Harness) -> None:
    """With upstream bound as transmitter+receiver, the receipt still arrives (via the RX)."""
    listener, simulator = await harness.simulator()
    relay = await harness.relay(
        bound=2,
        upstream={
            "host": "127.0.0.1",
            "port": port_of(listener),
            "system_id": "relay",
            "password": "pw",
            "bind": "transmitter_receiver",
        },
    )
    assert relay.simulator is None
    assert len(relay.upstream.pool.transmitters) == len(relay.upstream.pool.receivers) == 1
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")

    resp = await app.submit(**message(b"via tx", registered_delivery=1))
    await app.read_until(lambda: len(app.deliveries) == 1)

    assert resp.status == 0
    assert simulator.received[-1].system_id == "relay"
    assert resp.message_id == simulator.received[-1].message_id
    assert app.deliveries[0].receipted_message_id == resp.message_id


@pytest_twisted.ensureDeferred
async def test_unreachable_upstream_answers_msgqful_after_queue_timeout(
    harness: Harness,
) -> None:
    """With no upstream reachable, a submit gets 0x14 once queue_timeout has passed (exactly
    when is unit-tested on a Clock in test_upstream; a wall clock here would only flake)."""
    relay = await harness.relay(
        bound=0,
        upstream={
            "host": "127.0.0.1",
            "port": free_port(),
            "system_id": "relay",
            "password": "pw",
            "queue_timeout": 0.5,
        },
    )
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")

    resp = await app.submit(**message(b"nowhere to go"))

    assert resp.status == smpplib.consts.SMPP_ESME_RMSGQFUL == 0x14
    assert relay.upstream.pool.bound == 0
    code, _ = await http_get(relay, "/readyz")
    assert code == 503
