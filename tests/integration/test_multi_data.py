"""submit_multi and data_sm end to end: smpplib apps, the relay, its built-in simulated SMSC.

smpplib has data_sm but no submit_multi: its two PDUs are added to smpplib's command table
here, written from SMPP 3.4 section 4.5 (not from the relay's codec).
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest
import pytest_twisted
import smpplib.command
import smpplib.consts
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from smpprelay.service import RelayService

from .apps import ALNUM, INTL, ISDN
from .conftest import Esme, Harness, simulator_of


class SubmitMulti(smpplib.command.Command):  # type: ignore[misc]
    """submit_multi (3.4 section 4.5.1): ``dests`` is a list of (ton, npi, address) for SME
    addresses (dest_flag 1) or a str for a distribution list name (dest_flag 2)."""

    params: dict[str, Any] = {}
    params_order = ()
    # None until given (smpplib's _set_vars only fills attributes that are None).
    service_type = source_addr_ton = source_addr_npi = source_addr = None
    esm_class = registered_delivery = data_coding = None

    def generate_params(self) -> bytes:
        def c(text: str | bytes) -> bytes:
            return (text.encode() if isinstance(text, str) else text) + b"\0"

        dests = b""
        for entry in self.dests:
            if isinstance(entry, str):
                dests += b"\x02" + c(entry)
            else:
                ton, npi, address = entry
                dests += bytes((1, ton, npi)) + c(address)
        body: bytes = (
            c(self.service_type or "")
            + bytes((self.source_addr_ton or 0, self.source_addr_npi or 0))
            + c(self.source_addr or "")
            + bytes((len(self.dests),))
            + dests
            + bytes((self.esm_class or 0, 0, 0))
            + c("")
            + c("")
            + bytes((self.registered_delivery or 0, 0, self.data_coding or 0, 0))
            + bytes((len(self.short_message),))
            + self.short_message
        )
        return body


class SubmitMultiResp(smpplib.command.Command):  # type: ignore[misc]
    """submit_multi_resp (3.4 section 4.5.2): message_id, no_unsuccess, unsuccess_sme."""

    params: dict[str, Any] = {}
    params_order = ()

    def parse_params(self, data: bytes) -> None:
        end = data.index(b"\0")
        self.message_id = data[:end]
        count = data[end + 1]
        pos = end + 2
        self.unsuccess_sme = []
        for _ in range(count):
            ton, npi = data[pos], data[pos + 1]
            stop = data.index(b"\0", pos + 2)
            (error,) = struct.unpack_from(">L", data, stop + 1)
            self.unsuccess_sme.append((ton, npi, data[pos + 2 : stop], error))
            pos = stop + 5


@pytest.fixture(autouse=True)
def smpplib_knows_submit_multi(monkeypatch: pytest.MonkeyPatch) -> None:
    original = smpplib.command.factory
    added = {"submit_multi": SubmitMulti, "submit_multi_resp": SubmitMultiResp}

    def factory(name: str, **kwargs: Any) -> Any:
        if name in added:
            return added[name](name, **kwargs)
        return original(name, **kwargs)

    monkeypatch.setattr(smpplib.command, "factory", factory)
    states = dict(smpplib.consts.COMMAND_STATES)
    states["submit_multi"] = states["submit_sm"]
    states["submit_multi_resp"] = states["submit_sm_resp"]
    monkeypatch.setattr(smpplib.consts, "COMMAND_STATES", states)


def exchange(esme: Esme, name: str, **fields: Any) -> Deferred[Any]:
    """Send request ``name`` and read (answering deliver_sm) until its response comes."""

    def run() -> Any:
        client = esme.client
        request = smpplib.smpp.make_pdu(name, client=client, **fields)
        client.send_pdu(request)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = client.read_pdu()
            if got.command == "deliver_sm":
                client._message_received(got)
            elif got.command == f"{name}_resp" and got.sequence == request.sequence:
                return got
        raise TimeoutError(f"no {name}_resp")

    return deferToThread(run)


SOURCE = {"source_addr_ton": ALNUM, "source_addr_npi": 0, "source_addr": "SHOP"}


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
