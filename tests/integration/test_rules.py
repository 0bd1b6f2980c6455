"""The operator's rules through the network: smpplib apps, the relay, the simulated SMSC."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import smpplib.gsm

from smpprelay.service import RelayService

from .apps import message
from .conftest import Harness, simulator_of, wait_for

RSUBMITFAIL = 0x45


@pytest_twisted.ensureDeferred
async def test_long_text_arrives_whole_with_each_parts_receipt_under_the_apps_ids(
    relay: RelayService, harness: Harness
) -> None:
    """smpplib splits a long text; the operator gets every part together, and each part's
    receipt comes back under the id the app was given for that part."""
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    parts, coding, esm_class = smpplib.gsm.make_parts("Ceci est un long message. " * 15)
    assert len(parts) == 3
    before = len(simulator.received)
    for part in parts:
        await app.send(
            **message(part, data_coding=coding, esm_class=esm_class, registered_delivery=1)
        )
    await app.read_until(lambda: len(app.responses) == 3 and len(app.deliveries) == 3)

    assert [r.status for r in app.responses] == [0, 0, 0]
    app_ids = [r.message_id for r in app.responses]
    assert len(set(app_ids)) == 3
    assert all(i.startswith(b"R") for i in app_ids)  # relay-issued: parts were held
    relayed = list(simulator.received)[before:]
    assert [r.message.short_message for r in relayed] == parts
    receipted = sorted(d.receipted_message_id for d in app.deliveries)
    assert receipted == sorted(app_ids)
    for delivery in app.deliveries:
        assert b"id:" + delivery.receipted_message_id in delivery.short_message


@pytest_twisted.ensureDeferred
async def test_duplicate_within_the_window_is_rejected_and_not_sent(
    relay: RelayService, harness: Harness
) -> None:
    """The same message twice: the second gets ESME_RSUBMITFAIL and the operator sees one."""
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    before = len(simulator.received)
    first = await app.submit(**message(b"same text"))
    second = await app.submit(**message(b"same text"))
    assert first.status == 0
    assert second.status == RSUBMITFAIL
    assert len(simulator.received) == before + 1


@pytest_twisted.ensureDeferred
async def test_flood_to_one_number_is_rejected_past_the_streak(harness: Harness) -> None:
    """With max_messages 3, the 4th message to one number within the gap is refused."""
    relay = await harness.relay(filters={"flood": {"max_messages": 3, "gap": 30}})
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    answers = [(await app.submit(**message(b"msg %d" % i))).status for i in range(4)]
    assert answers == [0, 0, 0, RSUBMITFAIL]
    other = await app.submit(**message(b"msg x", destination="79990000000"))
    assert other.status == 0


@pytest_twisted.ensureDeferred
async def test_bad_encodings_are_rejected_with_their_status(
    relay: RelayService, harness: Harness
) -> None:
    """Odd-length UCS-2 → ESME_RINVMSGLEN; a GSM octet above 0x7F and an unlisted
    data_coding → ESME_RSUBMITFAIL; nothing reaches the operator."""
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    before = len(simulator.received)
    cases: list[dict[str, Any]] = [
        message(b"\x00A\x00", data_coding=8),
        message(b"caf\xe9", data_coding=0),
        message(b"hello", data_coding=5),
    ]
    statuses = [(await app.submit(**case)).status for case in cases]
    assert statuses == [0x01, RSUBMITFAIL, RSUBMITFAIL]
    assert len(simulator.received) == before


@pytest_twisted.ensureDeferred
async def test_late_part_is_rejected_and_the_held_part_gets_an_expired_receipt(
    harness: Harness,
) -> None:
    """A part later than the window is refused; the held first part's receipt says EXPIRED."""
    from twisted.internet import reactor

    relay = await harness.relay(filters={"concat": {"window": 0.3}})
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    before = len(simulator.received)
    udh = bytes((5, 0, 3, 0x21, 2, 1))
    first = await app.submit(**message(udh + b"first half", esm_class=0x40, registered_delivery=1))
    assert first.status == 0
    # The first part's window started before its answer: once the relay's clock is a window
    # past that answer, the next part is late (and still within the closed message's memory).
    answered = reactor.seconds()
    await wait_for(lambda: reactor.seconds() > answered + 0.3)
    late = await app.submit(
        **message(bytes((5, 0, 3, 0x21, 2, 2)) + b"second half", esm_class=0x40)
    )
    assert late.status == RSUBMITFAIL
    await wait_for(
        lambda: relay.metrics.registry.get_sample_value("smpprelay_concat_open_messages") == 0,
        timeout=3.0,
    )
    await app.read_until(lambda: len(app.deliveries) == 1)
    receipt = app.deliveries[0]
    assert receipt.receipted_message_id == first.message_id
    assert b"stat:EXPIRED" in receipt.short_message
    assert len(simulator.received) == before
