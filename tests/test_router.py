"""Router: receipts by message id, MO by prefix, held deliveries and their retries."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from smpprelay import pdu, router
from smpprelay.connection import ResponseTimeout
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status, Tag
from smpprelay.store.tables import HeldDeliveries, ReceiptRoutes
from tests.fakes import FakeReceiver, captured_logs, make_router, mo, outcome, receipt

RETRY = 30.0
HOLD_TTL = 600.0
MAP_TTL = 3600.0


class Harness:
    def __init__(
        self,
        mo_prefixes: dict[str, str] | None = None,
        hold_max: int = 100,
        map_max: int = 1000,
        **options: Any,
    ) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.receivers: dict[str, list[FakeReceiver]] = {}
        self.routes = ReceiptRoutes(MAP_TTL, map_max)
        self.held = HeldDeliveries(HOLD_TTL, hold_max)
        self.router = make_router(
            self.clock,
            self.metrics,
            lambda account: self.receivers.get(account, []),
            mo_prefixes,
            self.routes,
            self.held,
            RETRY,
            **options,
        )

    def receiver(self, account: str = "app", window: int = 10) -> FakeReceiver:
        receiver = FakeReceiver(account, window)
        self.receivers.setdefault(account, []).append(receiver)
        return receiver

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def deliveries(self, kind: str, result: str) -> float | None:
        return self.sample("smpprelay_deliveries_total", kind=kind, result=result)


def receipt_without_tlv(text_id: bytes) -> bytes:
    message = pdu.read_short_message(receipt(text_id))
    stripped = message._replace(
        tlvs=tuple(t for t in message.tlvs if t[0] != Tag.receipted_message_id)
    )
    return pdu.encode_short_message(CommandId.deliver_sm, 0, stripped)


# --- receipts --------------------------------------------------------------------------------


def test_receipt_routed_by_receipted_message_id() -> None:
    """A receipt goes to its account; the operator hears ESME_ROK only after the app's resp."""
    h = Harness()
    app = h.receiver("app")
    other = h.receiver("other")
    h.router.remember(b"ABC123", "app")
    frame = receipt(b"ABC123")
    result = outcome(h.router.route(frame))
    assert app.frames == [frame]
    assert other.frames == []
    assert result == []
    app.answer(0)
    assert result == [Status.ESME_ROK]
    assert h.deliveries("receipt", "delivered") == 1
    assert len(h.held) == 0


def test_receipt_matched_by_text_id_ignoring_case_and_zeros() -> None:
    """A receipt without the TLV is matched by its text ``id:``, case and leading zeros aside."""
    h = Harness()
    app = h.receiver()
    h.router.remember(b"00abc123", "app")
    frame = receipt_without_tlv(b"Abc123")
    assert pdu.read_short_message(frame).tlv(Tag.receipted_message_id) is None
    result = outcome(h.router.route(frame))
    assert app.frames == [frame]
    app.answer(0)
    assert result == [Status.ESME_ROK]
    assert h.deliveries("receipt", "delivered") == 1


def test_unknown_receipt_answered_after_second_look() -> None:
    """An unknown id is answered ESME_ROK only after UNMATCHED_RETRY, counted unmatched."""
    h = Harness()
    app = h.receiver()
    result = outcome(h.router.route(receipt(b"NOPE")))
    h.clock.advance(router.UNMATCHED_RETRY - 0.001)
    assert result == []
    h.clock.advance(0.001)
    assert result == [Status.ESME_ROK]
    assert app.frames == []
    assert h.deliveries("receipt", "unmatched") == 1
    assert h.clock.getDelayedCalls() == []


def test_receipt_without_any_id_is_unmatched_at_once() -> None:
    """A receipt with neither the TLV nor ``id:`` cannot match later: answered at once."""
    h = Harness()
    message = pdu.read_short_message(receipt_without_tlv(b"X"))._replace(
        short_message=b"stat:DELIVRD"
    )
    frame = pdu.encode_short_message(CommandId.deliver_sm, 0, message)
    assert outcome(h.router.route(frame)) == [Status.ESME_ROK]
    assert h.deliveries("receipt", "unmatched") == 1


@pytest.mark.parametrize(
    ("form", "resp_id", "receipt_id"),
    [
        ("decimal", b"A0000001", b"2684354561"),
        ("decimal", b"a0000001", b"02684354561"),
        ("hex", b"2684354561", b"a0000001"),
        ("as-is", b"00A0000001", b"a0000001"),
    ],
)
def test_receipt_matched_across_hex_and_decimal_by_message_id_format(
    form: str, resp_id: bytes, receipt_id: bytes
) -> None:
    """With upstream.message_id_format, a receipt quoting the id in the other base (decimal
    2684354561 for A0000001) finds its route, by the TLV and by the text alike."""
    for frame in (receipt(receipt_id), receipt_without_tlv(receipt_id)):
        h = Harness(message_id_format=form)
        app = h.receiver()
        h.router.remember(resp_id, "app")
        result = outcome(h.router.route(frame))
        assert app.frames == [frame]
        app.answer(0)
        assert result == [Status.ESME_ROK]
        assert h.deliveries("receipt", "unmatched") == 0


def test_decimal_receipt_for_a_hex_id_is_unmatched_as_is() -> None:
    """Without the format (as-is, the default) the decimal quote does not match: unmatched."""
    h = Harness()
    h.receiver()
    h.router.remember(b"A0000001", "app")
    result = outcome(h.router.route(receipt(b"2684354561")))
    h.clock.advance(router.UNMATCHED_RETRY)
    assert result == [Status.ESME_ROK]
    assert h.deliveries("receipt", "unmatched") == 1


def test_an_id_that_is_no_number_in_the_base_still_matches_as_is() -> None:
    """message_id_format: decimal, but the operator sent a UUID-like id: compared as it is."""
    h = Harness(message_id_format="decimal")
    app = h.receiver()
    h.router.remember(b"abc-123", "app")
    outcome(h.router.route(receipt(b"ABC-123")))
    assert len(app.frames) == 1


def test_second_look_waits_the_configured_time() -> None:
    """receipts.second_look: a receipt 3 s ahead of its submit_sm_resp is still delivered
    with second_look 5 s (with the old fixed 1 s it was unmatched)."""
    h = Harness(second_look=5.0)
    app = h.receiver()
    frame = receipt(b"LATE1")
    result = outcome(h.router.route(frame))
    h.clock.advance(3.0)
    h.router.remember(b"LATE1", "app")
    h.clock.advance(1.999)
    assert app.frames == []
    h.clock.advance(0.001)
    assert app.frames == [frame]
    app.answer(0)
    assert result == [Status.ESME_ROK]
    assert h.deliveries("receipt", "unmatched") == 0


def test_second_look_zero_answers_an_unknown_receipt_at_once() -> None:
    """receipts.second_look: 0 turns the second look off: unmatched at once, no timer."""
    h = Harness(second_look=0.0)
    assert outcome(h.router.route(receipt(b"NOPE"))) == [Status.ESME_ROK]
    assert h.deliveries("receipt", "unmatched") == 1
    assert h.clock.getDelayedCalls() == []


def test_receipt_before_its_submit_resp_matches_on_second_look() -> None:
    """A route remembered within UNMATCHED_RETRY of the receipt still gets it delivered."""
    h = Harness()
    app = h.receiver()
    frame = receipt(b"RACE1")
    result = outcome(h.router.route(frame))
    h.clock.advance(router.UNMATCHED_RETRY / 2)
    h.router.remember(b"RACE1", "app")
    assert app.frames == []
    h.clock.advance(router.UNMATCHED_RETRY / 2)
    assert app.frames == [frame]
    assert result == []
    app.answer(0)
    assert result == [Status.ESME_ROK]
    assert h.deliveries("receipt", "unmatched") == 0
    assert h.deliveries("receipt", "delivered") == 1


def test_receipt_rewritten_to_app_message_id() -> None:
    """With app_message_id, the delivered receipt carries that id in the TLV and the text."""
    h = Harness()
    app = h.receiver()
    h.router.remember(b"OPID1", "app", b"APPID9")
    outcome(h.router.route(receipt(b"OPID1")))
    assert app.frames == [receipt(b"APPID9")]
    delivered = pdu.read_short_message(app.frames[0])
    assert delivered.tlv(Tag.receipted_message_id) == b"APPID9\0"
    assert delivered.short_message.startswith(b"id:APPID9 sub:001")
    assert b"OPID1" not in app.frames[0]


# --- held deliveries -------------------------------------------------------------------------


def test_receipt_held_without_receiver_then_delivered_on_bind() -> None:
    """With no receiving bind a receipt is held, acknowledged, and delivered when one binds."""
    h = Harness()
    h.router.remember(b"M1", "app")
    frame = receipt(b"M1")
    assert outcome(h.router.route(frame)) == [Status.ESME_ROK]
    assert h.sample("smpprelay_held_deliveries", account="app") == 1
    assert h.deliveries("receipt", "held") == 1
    app = h.receiver()
    h.router.receiver_bound("app")
    assert app.frames == [frame]
    assert h.sample("smpprelay_held_deliveries", account="app") == 0
    app.answer(0)
    assert h.deliveries("receipt", "delivered") == 1
    assert len(h.held) == 0


def test_receiver_without_room_means_held() -> None:
    """A receiver whose window is full does not get the delivery; it is held."""
    h = Harness()
    app = h.receiver()
    app.bound = False
    h.router.remember(b"M1", "app")
    assert outcome(h.router.route(receipt(b"M1"))) == [Status.ESME_ROK]
    assert app.frames == []
    assert h.held.count("app") == 1


def test_held_deliveries_flow_as_the_window_frees() -> None:
    """Held deliveries go out one by one as the app answers, oldest first."""
    h = Harness()
    h.router.remember(b"M1", "app")
    h.router.remember(b"M2", "app")
    outcome(h.router.route(receipt(b"M1")))
    outcome(h.router.route(receipt(b"M2")))
    app = h.receiver(window=1)
    h.router.receiver_bound("app")
    assert app.frames == [receipt(b"M1")]
    assert h.sample("smpprelay_held_deliveries", account="app") == 1
    app.answer(0)
    assert app.frames == [receipt(b"M1"), receipt(b"M2")]
    assert h.sample("smpprelay_held_deliveries", account="app") == 0
    app.answer(1)
    assert h.deliveries("receipt", "delivered") == 2


def test_app_temporary_refusal_held_and_retried() -> None:
    """ESME_RX_T_APPN from the app: held, operator answered OK, retried after ``retry``."""
    h = Harness()
    app = h.receiver()
    h.router.remember(b"M1", "app")
    frame = receipt(b"M1")
    result = outcome(h.router.route(frame))
    app.answer(0, Status.ESME_RX_T_APPN)
    assert result == [Status.ESME_ROK]
    assert h.held.count("app") == 1
    assert h.sample("smpprelay_held_deliveries", account="app") == 1
    h.clock.advance(RETRY - 0.01)
    assert len(app.frames) == 1
    h.clock.advance(0.01)
    assert app.frames == [frame, frame]
    app.answer(1)
    assert h.held.count("app") == 0
    assert h.deliveries("receipt", "delivered") == 1


def test_deliver_timeout_held_and_retried() -> None:
    """A deliver_sm that is not answered (errback) is held and retried after ``retry``."""
    h = Harness()
    app = h.receiver()
    h.router.remember(b"M1", "app")
    result = outcome(h.router.route(receipt(b"M1")))
    app.pending[0].errback(ResponseTimeout("no answer"))
    assert result == [Status.ESME_ROK]
    assert h.held.count("app") == 1
    h.clock.advance(RETRY)
    assert len(app.frames) == 2
    app.answer(1)
    assert h.deliveries("receipt", "delivered") == 1
    assert h.clock.getDelayedCalls() == []


def test_app_permanent_refusal_goes_upstream() -> None:
    """ESME_RX_P_APPN from the app is the operator's answer; nothing is held or retried."""
    h = Harness()
    app = h.receiver()
    h.router.remember(b"M1", "app")
    result = outcome(h.router.route(receipt(b"M1")))
    app.answer(0, Status.ESME_RX_P_APPN)
    assert result == [Status.ESME_RX_P_APPN]
    assert len(h.held) == 0
    assert h.deliveries("receipt", "refused") == 1
    h.clock.advance(RETRY * 2)
    assert len(app.frames) == 1


def test_hold_store_full_asks_operator_to_retry() -> None:
    """When nothing more can be held, the operator gets ESME_RX_T_APPN."""
    h = Harness(hold_max=1)
    h.router.remember(b"M1", "app")
    h.router.remember(b"M2", "app")
    assert outcome(h.router.route(receipt(b"M1"))) == [Status.ESME_ROK]
    assert outcome(h.router.route(receipt(b"M2"))) == [Status.ESME_RX_T_APPN]
    assert h.deliveries("receipt", "store_full") == 1
    assert len(h.held) == 1


# --- expiry ----------------------------------------------------------------------------------


def test_held_delivery_expires_after_hold_ttl() -> None:
    """expire() drops a held delivery at hold_ttl and counts it expired."""
    h = Harness()
    h.router.remember(b"M1", "app")
    outcome(h.router.route(receipt(b"M1")))
    h.clock.advance(HOLD_TTL - 1)
    h.router.expire()
    assert h.held.count("app") == 1
    h.clock.advance(1)
    h.router.expire()
    assert len(h.held) == 0
    assert h.deliveries("receipt", "expired") == 1
    assert h.sample("smpprelay_held_deliveries", account="app") == 0
    app = h.receiver()
    h.router.receiver_bound("app")
    assert app.frames == []


def test_routes_forgotten_after_map_ttl() -> None:
    """A route past map_ttl no longer matches and the store's expire forgets it."""
    h = Harness()
    app = h.receiver()
    h.router.remember(b"OLD", "app")
    h.clock.advance(MAP_TTL - 1)
    h.router.remember(b"NEW", "app")
    h.router.store.expire(h.clock.seconds())
    assert len(h.routes) == 2
    h.clock.advance(1)
    h.router.store.expire(h.clock.seconds())
    assert len(h.routes) == 1
    h.router.expire()  # the gauge follows at the router's sweep
    assert h.sample("smpprelay_receipt_routes") == 1
    result = outcome(h.router.route(receipt(b"OLD")))
    h.clock.advance(router.UNMATCHED_RETRY)
    assert result == [Status.ESME_ROK]
    assert app.frames == []
    assert h.deliveries("receipt", "unmatched") == 1


def test_route_map_evicts_oldest_when_full() -> None:
    """ReceiptRoutes keeps max_entries routes, dropping the oldest."""
    h = Harness(map_max=2)
    app = h.receiver()
    for message_id in (b"A", b"B", b"C"):
        h.router.remember(message_id, "app")
    assert len(h.routes) == 2
    assert h.routes.evicted == 1
    lost = outcome(h.router.route(receipt(b"A")))
    h.clock.advance(router.UNMATCHED_RETRY)
    assert lost == [Status.ESME_ROK]
    assert app.frames == []
    outcome(h.router.route(receipt(b"B")))
    outcome(h.router.route(receipt(b"C")))
    assert app.frames == [receipt(b"B"), receipt(b"C")]


# --- MO --------------------------------------------------------------------------------------


def test_mo_routed_by_longest_prefix() -> None:
    """An MO goes to the account with the longest matching mo_prefix; '+' is ignored."""
    h = Harness(mo_prefixes={"7900": "short", "79001": "long"})
    short = h.receiver("short")
    long = h.receiver("long")
    to_long = mo(b"+790012345")
    to_short = mo(b"79009999")
    outcome(h.router.route(to_long))
    outcome(h.router.route(to_short))
    assert long.frames == [to_long]
    assert short.frames == [to_short]
    long.answer(0)
    assert h.deliveries("mo", "delivered") == 1


def test_mo_without_matching_prefix_rejected() -> None:
    """An MO no prefix matches gets ESME_RX_R_APPN and is counted unroutable."""
    h = Harness(mo_prefixes={"7900": "short"})
    short = h.receiver("short")
    assert outcome(h.router.route(mo(b"4412345"))) == [Status.ESME_RX_R_APPN]
    assert short.frames == []
    assert h.deliveries("mo", "unroutable") == 1
    assert len(h.held) == 0


def test_mo_held_without_receiver() -> None:
    """An MO for an account with no receiving bind is held like a receipt."""
    h = Harness(mo_prefixes={"7900": "short"})
    assert outcome(h.router.route(mo(b"790011"))) == [Status.ESME_ROK]
    assert h.sample("smpprelay_held_deliveries", account="short") == 1
    assert h.deliveries("mo", "held") == 1


def test_malformed_deliver_sm_answered_with_its_status() -> None:
    """A deliver_sm whose body runs past the PDU gets the decode status, nothing delivered."""
    h = Harness(mo_prefixes={"7900": "short"})
    short = h.receiver("short")
    frame = pdu.build(CommandId.deliver_sm, 0, b"\0\1\1123")
    assert outcome(h.router.route(frame)) == [Status.ESME_RINVSRCADR]
    assert short.frames == []
    assert h.deliveries("unknown", "malformed") == 1


# --- Faults issue, item 10: a deaf receiver holds up nobody ---------------------------------


def test_fresh_delivery_prefers_the_receiver_that_answers() -> None:
    """Of two receivers, the one with fewer unanswered deliveries gets the next one, and a
    deaf one (a deliver_sm timed out) gets no fresh delivery at all."""
    h = Harness(mo_prefixes={"7900": "app"})
    deaf = h.receiver("app")
    good = h.receiver("app")
    first = outcome(h.router.route(mo(b"79001")))
    assert len(deaf.frames) == 1  # both idle: the first one listed
    second = outcome(h.router.route(mo(b"79002")))
    assert len(good.frames) == 1  # fewer unanswered
    good.answer(0)
    assert second == [Status.ESME_ROK]
    deaf.time_out(0)
    assert first == [Status.ESME_ROK]  # held, to be retried
    results = [outcome(h.router.route(mo(b"7900" + bytes([48 + i])))) for i in range(5)]
    assert len(deaf.frames) == 1
    for i in range(1, 6):
        good.answer(i)
    assert results == [[Status.ESME_ROK]] * 5
    assert h.deliveries("mo", "delivered") == 6


def test_only_deaf_receivers_means_held_at_once() -> None:
    """When the account's only receiver is deaf, a receipt is held and the operator answered
    ESME_ROK at once (it waited limits.response on each before); one held delivery probes the
    deaf app at the retry, and when it answers the rest follow."""
    h = Harness()
    app = h.receiver("app")
    h.router.remember(b"M0", "app")
    first = outcome(h.router.route(receipt(b"M0")))
    app.time_out(0)
    assert first == [Status.ESME_ROK]
    for i in range(1, 4):
        h.router.remember(b"M%d" % i, "app")
    answers = [outcome(h.router.route(receipt(b"M%d" % i))) for i in range(1, 4)]
    assert answers == [[Status.ESME_ROK]] * 3  # answered now, not after a timeout each
    assert len(app.frames) == 1
    assert len(h.held) == 4
    h.clock.advance(RETRY)
    assert len(app.frames) == 2  # one probe, not four
    app.answer(1)
    assert len(app.frames) == 5  # it answers: the other three follow at once
    app.answer(2)
    app.answer(3)
    app.answer(4)
    assert len(h.held) == 0
    assert h.deliveries("receipt", "delivered") == 4


# --- Faults issue, item 6: nothing new held while stopping, held ones counted lost ---------


def test_while_stopping_unreceived_deliveries_are_refused_for_later() -> None:
    """Once the relay stops, a receipt no receiver takes is answered ESME_RX_T_APPN (it was
    ESME_ROK and held, then lost); one a receiver takes is still delivered."""
    h = Harness()
    h.router.remember(b"A1", "app")
    h.router.remember(b"A2", "app")
    h.router.stopping()
    assert outcome(h.router.route(receipt(b"A1"))) == [Status.ESME_RX_T_APPN]
    assert len(h.held) == 0
    assert h.deliveries("receipt", "retry_later") == 1
    app = h.receiver("app")
    result = outcome(h.router.route(receipt(b"A2")))
    app.answer(0, Status.ESME_RX_T_APPN)
    assert result == [Status.ESME_RX_T_APPN]  # the app asked for later: so does the operator
    assert len(h.held) == 0


def test_held_deliveries_lost_at_stop_are_logged_and_counted() -> None:
    """What is held at the stop was answered ESME_ROK earlier: each is counted and logged."""
    h = Harness(mo_prefixes={"7900": "app"})
    h.router.remember(b"B1", "app")
    outcome(h.router.route(receipt(b"B1")))
    outcome(h.router.route(mo(b"79001")))
    outcome(h.router.route(mo(b"79002")))
    with captured_logs() as events:
        h.router.stop()
    assert h.deliveries("receipt", "lost_at_stop") == 1
    assert h.deliveries("mo", "lost_at_stop") == 2
    assert h.sample("smpprelay_held_deliveries", account="app") == 0
    lines = [formatEvent(e) for e in events if "lost" in formatEvent(e)]
    assert len(lines) == 2
    assert not h.clock.getDelayedCalls()
