"""`Relay` with a rule chain: rejections, replays, held parts and glued messages.

The rules here are scripted fakes, so these tests pin the relay's side of the contract
(design.md, acknowledgement contract) independently of the real rules.
"""

from __future__ import annotations

import attrs
import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.config import ConcatRule, DedupRule
from smpprelay.connection import ResponseTimeout
from smpprelay.filters.base import Filter, FilterChain
from smpprelay.filters.concat import ConcatFilter
from smpprelay.filters.dedup import DedupFilter
from smpprelay.message import ACCEPT, Message, Verdict, accept, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status, Tag
from smpprelay.pool import QueueFull
from smpprelay.relay import Relay
from smpprelay.store.memory import MemoryStore
from smpprelay.store.tables import ReceiptRoutes
from tests.fakes import FakePool, FakeReceiver, make_router, result_of, submit_sm
from tests.fakes.rules import ScriptedRule

ACCOUNT = "acme"


class Harness:
    def __init__(self, *rules: Filter, metrics: Metrics | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.metrics = metrics if metrics is not None else Metrics(CollectorRegistry())
        self.pool = FakePool()
        self.receiver = FakeReceiver(ACCOUNT, auto_answer=True)
        self.store = MemoryStore(ReceiptRoutes(ttl=3600.0, max_entries=100), final_grace=600.0)
        self.router = make_router(
            self.clock, self.metrics, lambda account: [self.receiver], store=self.store
        )
        self.chain = FilterChain(list(rules), self.metrics)
        self.relay = Relay(self.pool, self.router, self.metrics, self.clock, self.chain)

    def route(self, operator_id: bytes) -> tuple[str, bytes | None] | None:
        route = self.store.routes.get(pdu.normalise_message_id(operator_id), self.clock.seconds())
        return None if route is None else (route.account, route.app_message_id)


def ok(message_id: bytes) -> bytes:
    return pdu.submit_sm_resp(9, Status.ESME_ROK, message_id)


def part(seq: int, total: int = 2, receipt: int = 1) -> bytes:
    udh = bytes((5, 0, 3, 0x42, total, seq))
    return submit_sm(
        seq, esm_class=0x40, short_message=udh + b"part %d" % seq, registered_delivery=receipt
    )


def test_a_rejection_is_answered_with_its_status_and_nothing_goes_upstream() -> None:
    """A rule's reject verdict is the app's answer; the operator sees nothing."""
    h = Harness(ScriptedRule(lambda m: reject(0x45, "duplicate")))
    answer = result_of(h.relay.submit(ACCOUNT, submit_sm()))
    assert pdu.header(answer)[2] == 0x45
    assert h.pool.frames == []
    assert h.pool.batches == []
    sample = h.metrics.registry.get_sample_value(
        "smpprelay_filter_decisions_total",
        {"filter": "scripted", "action": "reject", "reason": "duplicate"},
    )
    assert sample == 1


def test_a_replay_answers_ok_with_the_original_id_and_sends_nothing() -> None:
    """dedup's replay: ESME_ROK with the id the first copy got; no second copy upstream."""
    h = Harness(ScriptedRule(lambda m: Verdict("replay", message_id=b"FIRST1")))
    answer = result_of(h.relay.submit(ACCOUNT, submit_sm()))
    assert answer == pdu.submit_sm_resp(0, Status.ESME_ROK, b"FIRST1")
    assert h.pool.frames == []


def test_accepted_message_is_settled_with_the_operators_id() -> None:
    """Only the operator's acceptance enters the rules' windows (settle with its id)."""
    rule = ScriptedRule(lambda m: ACCEPT)
    h = Harness(rule)
    answer = h.relay.submit(ACCOUNT, submit_sm())
    assert rule.settled == []  # nothing is settled before the operator answered
    h.pool.answers[0].callback(ok(b"OP1"))
    assert result_of(answer) == ok(b"OP1")
    assert [mid for _, mid in rule.settled] == [b"OP1"]


def test_an_operator_refusal_or_outage_settles_with_none() -> None:
    """A refused or unanswered submit leaves no trace in the windows: a retry is no duplicate."""
    rule = ScriptedRule(lambda m: ACCEPT)
    h = Harness(rule)
    refused = h.relay.submit(ACCOUNT, submit_sm())
    h.pool.answers[0].callback(pdu.submit_sm_resp(9, Status.ESME_RTHROTTLED))
    assert pdu.header(result_of(refused))[2] == Status.ESME_RTHROTTLED
    queued = h.relay.submit(ACCOUNT, submit_sm())
    h.pool.answers[1].errback(QueueFull("no session"))
    assert pdu.header(result_of(queued))[2] == Status.ESME_RMSGQFUL
    assert [mid for _, mid in rule.settled] == [None, None]


def test_a_later_rejection_releases_what_earlier_rules_reserved() -> None:
    """When flood rejects, dedup (earlier) is told the message went nowhere."""
    first = ScriptedRule(lambda m: ACCEPT)
    second = ScriptedRule(lambda m: reject(0x45, "flood"))
    h = Harness(first, second)
    result_of(h.relay.submit(ACCOUNT, submit_sm()))
    assert [mid for _, mid in first.settled] == [None]
    assert second.settled == []


@pytest.mark.logs_errors  # the rule's bug is logged, as it must be
def test_a_rule_that_raises_fails_closed() -> None:
    """A bug in a rule costs that submit ESME_RSYSERR, never a silent pass."""

    def broken(message: Message) -> Verdict:
        raise RuntimeError("bug")

    h = Harness(ScriptedRule(broken))
    answer = result_of(h.relay.submit(ACCOUNT, submit_sm()))
    assert pdu.header(answer)[2] == Status.ESME_RSYSERR
    assert h.pool.frames == []


def glue_on_second_part() -> ScriptedRule:
    """Holds the first part; the second completes the message (as the concat rule does)."""
    held: list[Message] = []

    def decide(message: Message) -> Verdict:
        if not held:
            held.append(message)
            return Verdict("hold")
        return accept(
            attrs.evolve(
                message, parts=(held[0], message), content=held[0].content + message.content
            )
        )

    return ScriptedRule(decide)


def test_held_part_is_answered_ok_at_once_with_a_relay_id() -> None:
    """An earlier part gets ESME_ROK at once, under an id the relay issued."""
    h = Harness(glue_on_second_part())
    answer = result_of(h.relay.submit(ACCOUNT, part(1)))
    _, _, status, _ = pdu.header(answer)
    assert status == Status.ESME_ROK
    assert pdu.message_id_of(answer).startswith(b"R")
    assert h.pool.frames == []
    assert h.pool.batches == []


def test_glued_message_goes_upstream_whole_and_receipts_map_to_the_apps_ids() -> None:
    """All parts go out together; each part's receipt is routed under the app's id."""
    rule = glue_on_second_part()
    h = Harness(rule)
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    assert h.pool.batches == [[part(1), part(2)]]
    h.pool.batch_answers[0].callback([ok(b"OPA"), ok(b"OPB")])
    answer = result_of(last)
    assert pdu.header(answer)[2] == Status.ESME_ROK
    last_id = pdu.message_id_of(answer)
    assert last_id.startswith(b"R")
    assert last_id != first_id
    assert h.route(b"OPA") == (ACCOUNT, first_id)
    assert h.route(b"OPB") == (ACCOUNT, last_id)
    assert [mid for _, mid in rule.settled] == [last_id]


def test_receipt_for_a_part_reaches_the_app_under_its_own_id() -> None:
    """The operator's receipt for a part is rewritten to the id the app was given."""
    h = Harness(glue_on_second_part())
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    h.pool.batch_answers[0].callback([ok(b"OPA"), ok(b"OPB")])
    result_of(last)
    receipt = pdu.delivery_receipt(pdu.read_short_message(part(1)), b"OPA", "DELIVRD", 0, 0)
    assert result_of(h.router.route(receipt)) == Status.ESME_ROK
    delivered = pdu.read_short_message(h.receiver.frames[-1])
    assert delivered.tlv(Tag.receipted_message_id) == first_id + b"\0"
    assert b"id:" + first_id in delivered.short_message
    assert b"OPA" not in h.receiver.frames[-1]


def test_operator_refusing_a_part_fails_the_last_answer_and_sends_rejectd() -> None:
    """A part the operator refused: the last part's answer carries the refusal and the
    earlier part, already answered OK, gets a REJECTD receipt under its app id."""
    rule = glue_on_second_part()
    h = Harness(rule)
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    h.pool.batch_answers[0].callback([pdu.submit_sm_resp(9, 0x0B), ok(b"OPB")])
    assert pdu.header(result_of(last))[2] == 0x0B
    receipt = pdu.read_short_message(h.receiver.frames[-1])
    assert receipt.tlv(Tag.receipted_message_id) == first_id + b"\0"
    assert b"stat:REJECTD" in receipt.short_message
    assert [mid for _, mid in rule.settled] == [None]


def test_glued_message_rejected_by_a_later_rule_sends_rejectd_for_held_parts() -> None:
    """dedup or flood refusing the whole: held parts that asked get REJECTD receipts."""
    h = Harness(
        glue_on_second_part(), ScriptedRule(lambda m: reject(0x45, "flood") if m.parts else ACCEPT)
    )
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    assert pdu.header(result_of(h.relay.submit(ACCOUNT, part(2))))[2] == 0x45
    assert h.pool.batches == []
    receipt = pdu.read_short_message(h.receiver.frames[-1])
    assert receipt.tlv(Tag.receipted_message_id) == first_id + b"\0"
    assert b"stat:REJECTD" in receipt.short_message


def test_held_parts_without_receipt_request_get_no_receipt() -> None:
    """Only parts that asked for a receipt get one when the message is refused."""
    h = Harness(
        glue_on_second_part(), ScriptedRule(lambda m: reject(0x45, "flood") if m.parts else ACCEPT)
    )
    result_of(h.relay.submit(ACCOUNT, part(1, receipt=0)))
    result_of(h.relay.submit(ACCOUNT, part(2, receipt=0)))
    assert h.receiver.frames == []


def test_without_rules_the_relay_sends_the_apps_bytes() -> None:
    """An empty chain (every rule disabled) relays as before, byte for byte."""
    h = Harness()
    answer = h.relay.submit(ACCOUNT, submit_sm())
    assert h.pool.frames == [submit_sm()]
    h.pool.answers[0].callback(ok(b"X"))
    assert result_of(answer) == ok(b"X")


def test_completing_part_first_in_sequence_still_answers_for_the_whole() -> None:
    """Parts 2 then 1: the part answering now sits first in sequence; the refused held part
    (last by sequence) gets its REJECTD receipt and the answer carries the refusal."""
    held: list[Message] = []

    def decide(message: Message) -> Verdict:
        if not held:
            held.append(message)
            return Verdict("hold")
        return accept(attrs.evolve(message, parts=(message, held[0])))

    h = Harness(ScriptedRule(decide))
    held_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(2))))
    last = h.relay.submit(ACCOUNT, part(1))
    h.pool.batch_answers[0].callback([ok(b"OPA"), pdu.submit_sm_resp(9, 0x0B)])
    assert pdu.header(result_of(last))[2] == 0x0B
    receipt = pdu.read_short_message(h.receiver.frames[-1])
    assert receipt.tlv(Tag.receipted_message_id) == held_id + b"\0"
    assert b"stat:REJECTD" in receipt.short_message


def test_accept_decisions_are_counted_by_the_sweep() -> None:
    """Accepts are added to smpprelay_filter_decisions_total once a second, not per submit."""
    h = Harness(ScriptedRule(lambda m: ACCEPT))
    h.relay.submit(ACCOUNT, submit_sm())
    labels = {"filter": "scripted", "action": "accept", "reason": ""}
    name = "smpprelay_filter_decisions_total"
    assert h.metrics.registry.get_sample_value(name, labels) is None
    h.relay.sweep()
    assert h.metrics.registry.get_sample_value(name, labels) == 1


def concat_harness() -> tuple[Harness, ConcatFilter]:
    """The real concat rule in the chain."""
    metrics = Metrics(CollectorRegistry())
    concat = ConcatFilter(ConcatRule(), metrics)
    return Harness(concat, metrics=metrics), concat


def test_drop_held_sends_undeliv_receipts_under_the_apps_ids() -> None:
    """The relay stopping: held parts, answered OK, get UNDELIV receipts under the ids the app
    was given; a part that asked for none gets none; nothing stays held."""
    h, concat = concat_harness()
    asked = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1, total=3))))
    result_of(h.relay.submit(ACCOUNT, part(2, total=3, receipt=0)))
    other = submit_sm(
        1, esm_class=0x40, short_message=bytes((5, 0, 3, 0x43, 2, 2)) + b"x", registered_delivery=1
    )
    other_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, other)))
    assert h.receiver.frames == []
    assert h.relay.drop_held() == 3
    receipts = [pdu.read_short_message(frame) for frame in h.receiver.frames]
    assert [receipt.tlv(Tag.receipted_message_id) for receipt in receipts] == [
        asked + b"\0",
        other_id + b"\0",
    ]
    assert all(b"stat:UNDELIV" in receipt.short_message for receipt in receipts)
    assert len(concat) == 0
    assert h.chain.drop_all() == []
    assert h.pool.frames == []
    assert h.pool.batches == []


def test_drop_held_without_rules_drops_nothing() -> None:
    """No rule chain, nothing held."""
    h = Harness()
    assert h.relay.drop_held() == 0


def test_sweep_sends_expired_receipts_for_an_incomplete_message() -> None:
    """A message still incomplete after its window: its held parts get EXPIRED receipts."""
    h, concat = concat_harness()
    held = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    h.clock.advance(61.0)
    h.relay.sweep()
    [receipt] = [pdu.read_short_message(frame) for frame in h.receiver.frames]
    assert receipt.tlv(Tag.receipted_message_id) == held + b"\0"
    assert b"stat:EXPIRED" in receipt.short_message
    assert len(concat) == 0


def test_a_part_gets_no_relay_id_when_no_rule_holds_parts() -> None:
    """Concat disabled: a part goes to the operator on its own, under the operator's id, and
    dedup replays that id (not one the app never saw)."""
    metrics = Metrics(CollectorRegistry())
    h = Harness(DedupFilter(DedupRule(action="replay"), metrics), metrics=metrics)
    sent = h.relay.submit(ACCOUNT, part(1))
    h.pool.answers[0].callback(ok(b"OP1"))
    assert result_of(sent) == ok(b"OP1")
    again = result_of(h.relay.submit(ACCOUNT, part(1)))
    assert again == pdu.submit_sm_resp(0, Status.ESME_ROK, b"OP1")


# --- a glued message the operator did not take, and late answers -----------------------------


def rules_harness(window: float = 60.0) -> tuple[Harness, ConcatFilter]:
    """The real concat and dedup rules in the chain."""
    metrics = Metrics(CollectorRegistry())
    concat = ConcatFilter(ConcatRule(window=window), metrics)
    dedup = DedupFilter(DedupRule(), metrics)
    return Harness(concat, dedup, metrics=metrics), concat


def status_of(answer: bytes) -> int:
    return pdu.header(answer)[2]


def throttled() -> bytes:
    return pdu.submit_sm_resp(9, Status.ESME_RTHROTTLED)


def test_a_throttled_completing_part_is_sent_whole_again_on_its_retry() -> None:
    """Fault 1: the batch of a completing part answered ESME_RTHROTTLED: the app gets it, the
    held part gets no receipt, and the app's retry of that part sends every part again."""
    h, concat = rules_harness()
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    h.pool.batch_answers[0].callback([throttled(), throttled()])
    assert status_of(result_of(last)) == Status.ESME_RTHROTTLED
    assert h.receiver.frames == []  # still held: no REJECTD
    assert len(concat) == 1
    retry = h.relay.submit(ACCOUNT, part(2))
    assert h.pool.batches == [[part(1), part(2)], [part(1), part(2)]]
    h.pool.batch_answers[1].callback([ok(b"OPA"), ok(b"OPB")])
    answer = result_of(retry)
    assert status_of(answer) == Status.ESME_ROK
    assert h.route(b"OPA") == (ACCOUNT, first_id)
    assert h.route(b"OPB") == (ACCOUNT, pdu.message_id_of(answer))
    assert len(concat) == 0
    # Whole and accepted: now a part again is a duplicate.
    assert status_of(result_of(h.relay.submit(ACCOUNT, part(2)))) == 0x45


def test_every_retryable_status_keeps_the_held_parts() -> None:
    """ESME_RSYSERR (upstream dropped, no answer) and ESME_RMSGQFUL (no session) too."""
    for outcome in (Failure(ConnectionLost()), Failure(QueueFull("no session"))):
        h, _ = rules_harness()
        result_of(h.relay.submit(ACCOUNT, part(1)))
        last = h.relay.submit(ACCOUNT, part(2))
        h.pool.batch_answers[0].callback([outcome, outcome])
        assert status_of(result_of(last)) in (Status.ESME_RSYSERR, Status.ESME_RMSGQFUL)
        h.relay.submit(ACCOUNT, part(2))
        assert len(h.pool.batches) == 2, outcome


def test_a_partly_accepted_message_is_sent_whole_on_retry() -> None:
    """The operator took part 1 and throttled part 2: the app's retry of part 2 sends both
    (the operator needs every part to assemble; part 1 is billed twice)."""
    h, _ = rules_harness()
    result_of(h.relay.submit(ACCOUNT, part(1)))
    last = h.relay.submit(ACCOUNT, part(2))
    h.pool.batch_answers[0].callback([ok(b"OPA"), throttled()])
    assert status_of(result_of(last)) == Status.ESME_RTHROTTLED
    retry = h.relay.submit(ACCOUNT, part(2))
    assert h.pool.batches[1] == [part(1), part(2)]
    h.pool.batch_answers[1].callback([ok(b"OPA2"), ok(b"OPB2")])
    assert status_of(result_of(retry)) == Status.ESME_ROK


def test_a_held_part_sent_again_while_held_is_answered_with_its_id() -> None:
    """After a retryable failure the held part is still held: an app resending it gets
    ESME_ROK with the id it was given, and nothing goes upstream for it."""
    h, _ = rules_harness()
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    h.pool.batch_answers[0].callback([throttled(), throttled()])
    result_of(last)
    again = result_of(h.relay.submit(ACCOUNT, part(1)))
    assert again == pdu.submit_sm_resp(0, Status.ESME_ROK, first_id)
    assert len(h.pool.batches) == 1


def test_a_final_refusal_beside_a_throttled_part_is_final() -> None:
    """One part refused for good (0x0B): no retry can complete the message, so the app gets
    that status, not the retryable one, and the held part its REJECTD receipt."""
    h, concat = rules_harness()
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    h.pool.batch_answers[0].callback([pdu.submit_sm_resp(9, 0x0B), throttled()])
    assert status_of(result_of(last)) == 0x0B
    receipt = pdu.read_short_message(h.receiver.frames[-1])
    assert receipt.tlv(Tag.receipted_message_id) == first_id + b"\0"
    assert b"stat:REJECTD" in receipt.short_message
    assert len(concat) == 0


def test_window_ending_while_the_operator_has_it_then_throttled_gives_expired() -> None:
    """The window ended while the batch was out and it comes back throttled: no retry can be
    in time, so the held part gets its EXPIRED receipt at the next sweep (once)."""
    h, concat = rules_harness(window=10.0)
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    h.clock.advance(11.0)
    h.relay.sweep()  # the message is with the operator: not expired
    assert h.receiver.frames == []
    h.pool.batch_answers[0].callback([throttled(), throttled()])
    assert status_of(result_of(last)) == Status.ESME_RTHROTTLED
    h.relay.sweep()
    [receipt] = [pdu.read_short_message(frame) for frame in h.receiver.frames]
    assert receipt.tlv(Tag.receipted_message_id) == first_id + b"\0"
    assert b"stat:EXPIRED" in receipt.short_message
    h.relay.sweep()
    assert len(h.receiver.frames) == 1
    assert len(concat) == 0


def test_a_late_ok_routes_the_receipt_and_makes_a_retry_a_duplicate() -> None:
    """Fault 4: the app got ESME_RSYSERR at the timeout; the operator's late ESME_ROK writes
    the receipt route and enters the dedup window, so a retry is not sent twice."""
    h, _ = rules_harness()
    sent = h.relay.submit(ACCOUNT, submit_sm())
    timeout = ResponseTimeout("no answer")
    h.pool.answers[0].errback(timeout)
    assert status_of(result_of(sent)) == Status.ESME_RSYSERR
    assert timeout.late is not None
    timeout.late(ok(b"LATE1"))
    assert h.route(b"LATE1") == (ACCOUNT, None)
    assert status_of(result_of(h.relay.submit(ACCOUNT, submit_sm()))) == 0x45
    assert len(h.pool.frames) == 1
    counted = h.metrics.registry.get_sample_value(
        "smpprelay_upstream_submits_total", {"upstream": "default", "status": "ESME_ROK"}
    )
    assert counted == 1


def test_a_late_refusal_changes_nothing() -> None:
    """A late error answer: no route, and a retry goes through."""
    h, _ = rules_harness()
    sent = h.relay.submit(ACCOUNT, submit_sm())
    timeout = ResponseTimeout("no answer")
    h.pool.answers[0].errback(timeout)
    assert timeout.late is not None
    timeout.late(throttled())
    assert status_of(result_of(sent)) == Status.ESME_RSYSERR
    h.relay.submit(ACCOUNT, submit_sm())
    assert len(h.pool.frames) == 2


def test_a_late_ok_for_a_part_routes_its_receipt_under_the_apps_id() -> None:
    """A part that timed out in a glued batch and is accepted late: its receipt is routed."""
    h, _ = rules_harness()
    first_id = pdu.message_id_of(result_of(h.relay.submit(ACCOUNT, part(1))))
    last = h.relay.submit(ACCOUNT, part(2))
    timeout = ResponseTimeout("no answer")
    h.pool.batch_answers[0].callback([Failure(timeout), ok(b"OPB")])
    assert status_of(result_of(last)) == Status.ESME_RSYSERR
    assert timeout.late is not None
    timeout.late(ok(b"OPA"))
    assert h.route(b"OPA") == (ACCOUNT, first_id)
