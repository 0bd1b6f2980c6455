"""query_sm, cancel_sm and replace_sm end to end: smpplib apps, the relay, the built-in simulator.

smpplib has query_sm; cancel_sm and replace_sm are added to its command table here, written from
SMPP 3.4 sections 4.9 and 4.10 (not from our codec).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from smpprelay.service import RelayService

from .apps import message
from .conftest import Esme, Harness, simulator_of
from .smpplib_more import SOURCE, exchange, teach


@pytest.fixture(autouse=True)
def smpplib_with_the_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    teach(monkeypatch)


def query(app: Esme, message_id: bytes) -> Deferred[Any]:
    return exchange(app, "query_sm", message_id=message_id.decode(), **SOURCE)


def cancel(app: Esme, message_id: bytes) -> Deferred[Any]:
    return exchange(
        app,
        "cancel_sm",
        service_type="",
        message_id=message_id.decode(),
        dest_addr_ton=0,
        dest_addr_npi=0,
        destination_addr="",
        **SOURCE,
    )


def replace(app: Esme, message_id: bytes, text: bytes) -> Deferred[Any]:
    return exchange(
        app,
        "replace_sm",
        message_id=message_id.decode(),
        schedule_delivery_time="",
        validity_period="",
        registered_delivery=1,
        sm_default_msg_id=0,
        short_message=text,
        **SOURCE,
    )


async def bound(harness: Harness, relay: RelayService, account: str) -> Esme:
    app = harness.esme(relay)
    await app.bind("transceiver", account)
    return app


@pytest_twisted.ensureDeferred
async def test_query_en_route_then_delivered_and_another_account_refused(
    harness: Harness,
) -> None:
    relay = await harness.relay(simulator={"receipt_delay": 1.0})
    simulator = simulator_of(relay)
    app = await bound(harness, relay, "app1")
    other = await bound(harness, relay, "app2")
    resp = await app.submit(**message(b"Your code is 1234", registered_delivery=1))
    message_id = simulator.received[-1].message_id
    assert resp.message_id == message_id

    answer = await query(app, message_id)
    assert answer.status == 0
    assert (answer.message_id, answer.message_state, answer.final_date) == (message_id, 1, b"")

    refused = await query(other, message_id)
    assert (refused.command, refused.status) == ("query_sm_resp", 0x0C)
    assert (await cancel(other, message_id)).status == 0x0C
    assert (await query(app, b"NOSUCHID")).status == 0x0C

    await app.read_until(lambda: len(app.deliveries) == 1)
    answer = await query(app, message_id)
    assert (answer.status, answer.message_state) == (0, 2)  # DELIVERED
    assert len(answer.final_date) == 16
    # Too late to cancel or replace: the operator's own statuses come back.
    assert (await cancel(app, message_id)).status == 0x11
    assert (await replace(app, message_id, b"late")).status == 0x13


@pytest_twisted.ensureDeferred
async def test_cancel_while_en_route_means_no_receipt(harness: Harness) -> None:
    relay = await harness.relay(simulator={"receipt_delay": 1.0})
    simulator = simulator_of(relay)
    app = await bound(harness, relay, "app1")
    await app.submit(**message(b"Cancel me", registered_delivery=1))
    message_id = simulator.received[-1].message_id
    answer = await cancel(app, message_id)
    assert (answer.command, answer.status) == ("cancel_sm_resp", 0)
    state = await query(app, message_id)
    assert (state.status, state.message_state) == (0, 4)  # DELETED
    with pytest.raises(TimeoutError):
        await app.read_until(lambda: len(app.deliveries) == 1, timeout=1.5)


@pytest_twisted.ensureDeferred
async def test_replace_while_en_route_changes_the_text_its_receipt_quotes(
    harness: Harness,
) -> None:
    relay = await harness.relay(simulator={"receipt_delay": 1.0})
    simulator = simulator_of(relay)
    app = await bound(harness, relay, "app1")
    await app.submit(**message(b"Old text", registered_delivery=1))
    message_id = simulator.received[-1].message_id
    answer = await replace(app, message_id, b"New text")
    assert (answer.command, answer.status) == ("replace_sm_resp", 0)
    await app.read_until(lambda: len(app.deliveries) == 1)
    assert b"text:New text" in app.deliveries[0].short_message


@pytest_twisted.ensureDeferred
async def test_a_held_part_is_answered_by_the_relay(harness: Harness) -> None:
    """Part 1 of 2 is held: its relay id is ENROUTE (the operator never hears of it), another
    account cannot name it, and a cancel drops the message with a DELETED receipt."""
    relay = await harness.relay()
    simulator = simulator_of(relay)
    app = await bound(harness, relay, "app1")
    other = await bound(harness, relay, "app2")
    udh = bytes((5, 0, 3, 0x21, 2, 1))
    fields = message(udh + b"first half", esm_class=0x40, registered_delivery=1)
    resp = await app.submit(**fields)
    held_id = resp.message_id
    assert held_id.startswith(b"R")
    before = simulator.submits

    answer = await query(app, held_id)
    assert (answer.status, answer.message_id, answer.message_state) == (0, held_id, 1)
    assert (await query(other, held_id)).status == 0x0C

    udh_replaced = await replace(app, held_id, udh + b"FIRST HALF")
    assert udh_replaced.status == 0
    assert (await cancel(app, held_id)).status == 0
    await app.read_until(lambda: len(app.deliveries) == 1)
    receipt = app.deliveries[0]
    assert receipt.receipted_message_id == held_id
    assert b"stat:DELETED" in receipt.short_message
    assert simulator.submits == before
