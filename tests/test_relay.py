"""`Relay`: an app's submit_sm to the operator, and the operator's answer back to the app.

The pool is a fake whose answers the test gives; the router is the real one, so the receipt
routes the relay writes can be read back.
"""

from __future__ import annotations

import struct

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.connection import ResponseTimeout
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status
from smpprelay.pool import QueueFull
from smpprelay.relay import Relay
from smpprelay.store.memory import MemoryStore
from smpprelay.store.tables import ReceiptRoutes
from tests.fakes import FakePool, Relayed, captured_logs, make_router, result_of, submit_sm

ACCOUNT = "acme"


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.metrics = Metrics(CollectorRegistry())
        self.pool = FakePool()
        self.store = MemoryStore(ReceiptRoutes(ttl=3600.0, max_entries=100), final_grace=600.0)
        self.router = make_router(self.clock, self.metrics, store=self.store)
        self.relay = Relay(self.pool, self.router, self.metrics)

    def route_of(self, message_id: bytes) -> str | None:
        route = self.store.routes.get(pdu.normalise_message_id(message_id), self.clock.seconds())
        return None if route is None else route.account

    def upstream_submits(self, status: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "smpprelay_upstream_submits_total", {"upstream": "default", "status": status}
        )


def bare_submit_sm_resp(status: int) -> bytes:
    """A body-less submit_sm_resp with sequence 0, spelled out byte by byte."""
    return struct.pack("!IIII", 16, 0x80000004, status, 0)


def test_submit_reaches_the_pool_byte_for_byte() -> None:
    """The app's submit_sm, vendor TLV 0x1403 included, goes to the pool unchanged."""
    h = Harness()
    frame = submit_sm(sequence=31, tlvs=((0x1403, b"\x01vendor"), (0x0204, b"\x00\x07")))
    assert b"\x14\x03\x00\x07\x01vendor" in frame
    h.relay.submit(ACCOUNT, frame)
    assert h.pool.frames == [frame]


def test_operator_ok_comes_back_unchanged() -> None:
    """The operator's submit_sm_resp with ESME_ROK and its message_id reaches the app as is."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm(registered_delivery=0))
    resp = pdu.submit_sm_resp(5, Status.ESME_ROK, b"0a1B2c")
    assert not answer.called
    h.pool.answers[0].callback(resp)
    assert result_of(answer) == resp
    assert h.upstream_submits("ESME_ROK") == 1.0


def test_operator_vendor_status_comes_back_unchanged() -> None:
    """A vendor command_status (0x400) with no body reaches the app as the operator sent it."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm(registered_delivery=1))
    resp = struct.pack("!IIII", 16, 0x80000004, 0x400, 5)
    h.pool.answers[0].callback(resp)
    assert result_of(answer) == resp
    assert len(h.store.routes) == 0
    assert h.upstream_submits("other") == 1.0  # not in upstream.vendor_statuses: bucketed


@pytest.mark.parametrize("registered_delivery", [0x01, 0x02, 0x10])
def test_receipt_route_is_written_before_the_app_hears_ok(registered_delivery: int) -> None:
    """With a receipt asked for, the message id routes to the account before the app's OK."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm(registered_delivery=registered_delivery))
    seen_by_app: list[str | None] = []

    def app_hears(resp: bytes) -> bytes:
        seen_by_app.append(h.route_of(b"0A1B2C"))
        return resp

    answer.addCallback(app_hears)
    h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"0a1B2c"))
    assert seen_by_app == [ACCOUNT]
    assert len(h.store.routes) == 1


def test_a_route_without_a_receipt_request_too() -> None:
    """registered_delivery=0: the OK comes back, and the route is stored all the same (it is
    the id map query_sm, cancel_sm and replace_sm read)."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm(registered_delivery=0))
    h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"77"))
    assert pdu.message_id_of(result_of(answer)) == b"77"
    assert len(h.store.routes) == 1
    assert h.route_of(b"77") is not None


def test_refused_submit_stores_no_route() -> None:
    """A refusal (ESME_RTHROTTLED) with a receipt asked for stores no route."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm(registered_delivery=1))
    h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_RTHROTTLED))
    assert result_of(answer) == struct.pack("!IIII", 16, 0x80000004, 0x58, 5)
    assert len(h.store.routes) == 0


def test_generic_nack_becomes_a_submit_sm_resp_with_its_status() -> None:
    """A generic_nack from the operator reaches the app as a submit_sm_resp with that status."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm())
    h.pool.answers[0].callback(pdu.generic_nack(5, Status.ESME_RINVCMDLEN))
    assert result_of(answer) == bare_submit_sm_resp(0x02)
    assert len(h.store.routes) == 0


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (QueueFull("no room"), 0x14),
        (ResponseTimeout("no answer"), 0x08),
        (ConnectionLost("gone"), 0x08),
        (RuntimeError("unexpected"), 0x08),
    ],
)
def test_upstream_failures_become_a_status_never_a_failure(error: Exception, status: int) -> None:
    """QueueFull gives ESME_RMSGQFUL; a timeout or a lost connection gives ESME_RSYSERR."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm(registered_delivery=1))
    h.pool.answers[0].errback(Failure(error))
    assert result_of(answer) == bare_submit_sm_resp(status)
    assert len(h.store.routes) == 0


def test_failure_already_known_when_submitting_is_answered_too() -> None:
    """A pool that fails at once (queue full) still yields a submit_sm_resp."""
    h = Harness()

    class FullPool(FakePool):
        def submit(self, frame: bytes, account: str = "") -> Deferred[bytes]:
            failed: Deferred[bytes] = Deferred()
            failed.errback(QueueFull("full"))
            return failed

    relay = Relay(FullPool(), h.router, h.metrics)
    assert result_of(relay.submit(ACCOUNT, submit_sm())) == bare_submit_sm_resp(0x14)


def _with_length(frame: bytes) -> bytes:
    """The frame with its command_length made right again."""
    return struct.pack("!I", len(frame)) + frame[4:]


def _long_sm_length() -> bytes:
    frame = submit_sm(sequence=9, short_message=b"hello")
    at = frame.index(b"\x05hello")
    return frame[:at] + b"\xc8" + frame[at + 1 :]  # sm_length 200, five octets follow


@pytest.mark.parametrize(
    ("frame", "status"),
    [
        # service_type "", ton, npi, then a source_addr that is never terminated
        (pdu.build(CommandId.submit_sm, 9, b"\0\x05\x00MyBrand"), Status.ESME_RINVSRCADR),
        (_long_sm_length(), Status.ESME_RINVMSGLEN),
        # a TLV header cut short after the mandatory fields
        (_with_length(submit_sm(sequence=9) + b"\x14"), Status.ESME_RINVOPTPARSTREAM),
    ],
)
def test_unreadable_submit_is_answered_and_not_relayed(frame: bytes, status: int) -> None:
    """A submit_sm whose body cannot be read gets the DecodeError status; nothing goes upstream."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, frame)
    assert result_of(answer) == bare_submit_sm_resp(status)
    assert h.pool.frames == []


def test_a_submit_with_17000_empty_vendor_tlvs_is_refused_logged_and_counted() -> None:
    """Past limits.max_tlvs (64 by default) the app gets ESME_RINVOPTPARSTREAM, nothing goes
    upstream, the refusal is logged and counted by status; the session carries on."""
    h = Relayed()
    frame = submit_sm(7, tlvs=((0x1403, b""),) * 17_000)
    assert len(frame) < 70_000
    with captured_logs() as events:
        h.connection.dataReceived(frame)
    assert h.written() == pdu.submit_sm_resp(7, Status.ESME_RINVOPTPARSTREAM)
    assert h.pool.frames == []
    assert any("more than 64 TLVs" in str(event.get("error")) for event in events)
    counted = h.metrics.registry.get_sample_value(
        "smpprelay_submits_total", {"account": "app", "status": "ESME_RINVOPTPARSTREAM"}
    )
    assert counted == 1.0
    h.connection.dataReceived(submit_sm(8, tlvs=((0x1403, b""),) * 64))
    assert len(h.pool.frames) == 1


def test_the_relay_takes_its_tlv_cap_from_limits() -> None:
    """Relay(max_tlvs=2): a submit with 3 TLVs is refused, one with 2 goes upstream."""
    h = Harness()
    relay = Relay(h.pool, h.router, h.metrics, max_tlvs=2)
    refused = relay.submit(ACCOUNT, submit_sm(tlvs=((0x1403, b""),) * 3))
    assert pdu.header(result_of(refused))[2] == Status.ESME_RINVOPTPARSTREAM
    relay.submit(ACCOUNT, submit_sm(tlvs=((0x1403, b""),) * 2))
    assert len(h.pool.frames) == 1


@pytest.mark.logs_errors
def test_a_bug_in_the_apps_answer_does_not_answer_it_twice() -> None:
    """The route is stored at once (memory store) and the answer raises: the app is answered
    once, and the exception does not escape into the store's callback."""
    harness = Harness()
    calls: list[bytes | Failure] = []

    def outcome(result: bytes | Failure) -> None:
        calls.append(result)
        raise RuntimeError("a bug on the answer's way to the app")

    harness.relay.submit_cb(ACCOUNT, submit_sm(registered_delivery=1), False, outcome)
    harness.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"abc"))
    assert len(calls) == 1
    assert isinstance(calls[0], bytes)
    assert pdu.header(calls[0])[2] == Status.ESME_ROK
