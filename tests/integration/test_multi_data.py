"""submit_multi and data_sm end to end: smpplib apps, the relay, its built-in simulated SMSC.

smpplib has data_sm but no submit_multi: its two PDUs are added to smpplib's command table
here, written from SMPP 3.4 section 4.5 (not from the relay's codec).
"""

from __future__ import annotations

import pytest
import pytest_twisted
import smpplib.command
import smpplib.consts

from smpprelay.service import RelayService

from .apps import INTL, ISDN
from .conftest import Harness, simulator_of
from .smpplib_more import SOURCE, exchange, teach


@pytest.fixture(autouse=True)
def smpplib_with_the_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    teach(monkeypatch)


@pytest_twisted.ensureDeferred
async def test_submit_multi_fans_out_and_receipts_come_home_under_its_id(
    relay: RelayService, harness: Harness
) -> None:
    """Two numbers and a list: the operator gets two submit_sm; the app one answer, the list in
    unsuccess_sme with ESME_RINVDLNAME, and both receipts under the multi's id."""
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    before = len(simulator.received)
    resp = await exchange(
        app,
        "submit_multi",
        dests=[(INTL, ISDN, "79991230001"), "friends", (INTL, ISDN, "79991230002")],
        short_message=b"to all of you",
        registered_delivery=1,
        **SOURCE,
    )
    assert resp.status == smpplib.consts.SMPP_ESME_ROK
    assert resp.unsuccess_sme == [(0, 0, b"friends", 0x34)]
    sent = list(simulator.received)[before:]
    assert [r.message.destination_addr for r in sent] == [b"79991230001", b"79991230002"]
    assert {r.message.short_message for r in sent} == {b"to all of you"}
    assert resp.message_id not in {r.message_id for r in sent}

    await app.read_until(lambda: len(app.deliveries) == 2)
    assert {d.receipted_message_id for d in app.deliveries} == {resp.message_id}
    assert {d.source_addr for d in app.deliveries} == {b"79991230001", b"79991230002"}


@pytest_twisted.ensureDeferred
async def test_submit_multi_statuses(relay: RelayService, harness: Harness) -> None:
    """A bad number among good ones; only bad ones (one status); none at all."""
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    mixed = await exchange(
        app,
        "submit_multi",
        dests=[(INTL, ISDN, "7999123x"), (INTL, ISDN, "79991230003")],
        short_message=b"mixed",
        **SOURCE,
    )
    assert mixed.status == 0
    assert mixed.unsuccess_sme == [(INTL, ISDN, b"7999123x", 0x0B)]

    bad = await exchange(
        app, "submit_multi", dests=[(INTL, ISDN, "abc"), (INTL, 7, "123")], short_message=b"x"
    )
    assert bad.status == 0x45  # ESME_RSUBMITFAIL: 0x0B and 0x51 differ
    assert bad.message_id == b""
    assert bad.unsuccess_sme == [(INTL, ISDN, b"abc", 0x0B), (INTL, 7, b"123", 0x51)]

    empty = await exchange(app, "submit_multi", dests=[], short_message=b"x", **SOURCE)
    assert empty.status == 0x33  # ESME_RINVNUMDESTS


@pytest_twisted.ensureDeferred
async def test_data_sm_through_and_back_with_its_receipt(
    relay: RelayService, harness: Harness
) -> None:
    """smpplib's data_sm reaches the operator as a data_sm; its data_sm_resp id comes back and
    so does the receipt for it."""
    simulator = simulator_of(relay)
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    resp = await exchange(
        app,
        "data_sm",
        dest_addr_ton=INTL,
        dest_addr_npi=ISDN,
        destination_addr="79991230009",
        esm_class=0,
        registered_delivery=1,
        data_coding=0,
        message_payload=b"carried as data",
        **SOURCE,
    )
    assert resp.status == smpplib.consts.SMPP_ESME_ROK
    received = simulator.received[-1]
    assert resp.message_id == received.message_id
    assert received.frame[4:8] == b"\x00\x00\x01\x03"  # a data_sm upstream too
    assert received.message.text == b"carried as data"

    await app.read_until(lambda: len(app.deliveries) == 1)
    assert app.deliveries[0].receipted_message_id == received.message_id


@pytest_twisted.ensureDeferred
async def test_data_sm_from_the_operator_reaches_the_app(
    relay: RelayService, harness: Harness
) -> None:
    """An MO the operator sends as data_sm reaches the account owning the number as a
    deliver_sm, its text in short_message."""
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    simulator_of(relay).send_mo(
        "smpprelay", b"79991234567", b"790012345", b"reply by data", as_data_sm=True
    )
    await app.read_until(lambda: len(app.deliveries) == 1)
    mo = app.deliveries[0]
    assert (mo.destination_addr, mo.short_message) == (b"790012345", b"reply by data")
