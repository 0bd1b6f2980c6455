"""The concatenation rule: holding and gluing parts, the window's edge, bad headers, bounds."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from smpprelay.config import ConcatRule
from smpprelay.filters.concat import PART_OVERHEAD, ConcatFilter
from smpprelay.message import ACCEPT, Message, Verdict, read_message, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status, Tag
from tests.fakes import submit_sm

HOLD = Verdict("hold")
MALFORMED = reject(0x45, "malformed")
LATE = reject(0x45, "late")
DUPLICATE = reject(0x45, "duplicate_part")
REUSED = reject(0x45, "reference_reused")
FULL = reject(Status.ESME_RMSGQFUL, "full")

SAR_MSG_REF_NUM = 0x020C
SAR_TOTAL_SEGMENTS = 0x020E
SAR_SEGMENT_SEQNUM = 0x020F


def udh8(
    ref: int, total: int, seq: int, text: bytes = b"", account: str = "app1", **fields: Any
) -> Message:
    """A part with a UDH concatenation IE 0x00 (8-bit reference)."""
    body = bytes([5, 0, 3, ref, total, seq]) + (text or b"part%d" % seq)
    frame = submit_sm(3, esm_class=0x40, short_message=body, **fields)
    return read_message(account, frame)


def udh16(
    ref: int, total: int, seq: int, text: bytes = b"", account: str = "app1", **fields: Any
) -> Message:
    """A part with a UDH concatenation IE 0x08 (16-bit reference)."""
    body = bytes([6, 8, 4, ref >> 8, ref & 0xFF, total, seq]) + (text or b"part%d" % seq)
    frame = submit_sm(3, esm_class=0x40, short_message=body, **fields)
    return read_message(account, frame)


def sar(
    ref: int, total: int, seq: int, text: bytes = b"", account: str = "app1", **fields: Any
) -> Message:
    """A part carried by the sar_* TLVs, without a UDH."""
    tlvs = (
        (SAR_MSG_REF_NUM, ref.to_bytes(2, "big")),
        (SAR_TOTAL_SEGMENTS, bytes([total])),
        (SAR_SEGMENT_SEQNUM, bytes([seq])),
    )
    frame = submit_sm(3, short_message=text or b"part%d" % seq, tlvs=tlvs, **fields)
    return read_message(account, frame)


def whole(verdict: Verdict) -> Message:
    """The glued message an accept of a completing part passes on."""
    assert verdict.action == "accept"
    assert verdict.message is not None
    return verdict.message


def glue(rule: ConcatFilter, part: Message, now: float) -> Message:
    """The glued message ``part`` completes, which the operator then accepts."""
    glued = whole(rule.check(part, now))
    rule.parts_settled(glued, now, "accepted")
    return glued


def frames(parts: Sequence[Message]) -> list[bytes]:
    """What goes upstream for ``parts`` (held parts are kept slimmed, not as checked)."""
    return [part.frame for part in parts]


class Rule:
    """A concat rule on its own metrics registry."""

    def __init__(self, **config: Any) -> None:
        self.registry = CollectorRegistry()
        self.filter = ConcatFilter(ConcatRule(**config), Metrics(self.registry))

    def gauge(self) -> float | None:
        return self.registry.get_sample_value("smpprelay_concat_open_messages")


# --- gluing -----------------------------------------------------------------------------------


def test_udh8_parts_in_order_glue_into_the_last() -> None:
    """Parts 1 and 2 are held; part 3 becomes the glued message with every part in order."""
    rule = Rule().filter
    one = udh8(7, 3, 1, b"Hello, ")
    two = udh8(7, 3, 2, b"wide ")
    three = udh8(7, 3, 3, b"world")
    assert rule.check(one, 0.0) == HOLD
    assert rule.check(two, 1.0) == HOLD
    assert rule.open_count == 1
    glued = glue(rule, three, 2.0)
    assert frames(glued.parts) == frames((one, two, three))
    assert glued.content == b"Hello, wide world"
    assert one.parts == ()
    assert one.content == b"Hello, "
    assert rule.open_count == 0
    assert len(rule) == 0


def test_udh8_parts_out_of_order_glue_in_sequence_order() -> None:
    """Parts arriving 3, 1, 2: the completing part 2 carries parts 1, 2, 3 and their text."""
    rule = Rule().filter
    three = udh8(7, 3, 3, b"world")
    one = udh8(7, 3, 1, b"Hello, ")
    two = udh8(7, 3, 2, b"wide ")
    assert rule.check(three, 0.0) == HOLD
    assert rule.check(one, 0.5) == HOLD
    glued = glue(rule, two, 1.0)
    assert frames(glued.parts) == frames((one, two, three))
    assert glued.content == b"Hello, wide world"
    assert rule.open_count == 0


def test_udh16_parts_glue() -> None:
    """A 16-bit reference (IE 0x08) is recognised and its parts glued, out of order."""
    rule = Rule().filter
    two = udh16(0xBEEF, 2, 2, b"there")
    one = udh16(0xBEEF, 2, 1, b"hello ")
    assert two.concat is not None
    assert two.concat.reference == 0xBEEF
    assert rule.check(two, 10.0) == HOLD
    glued = glue(rule, one, 11.0)
    assert frames(glued.parts) == frames((one, two))
    assert glued.content == b"hello there"


def test_sar_parts_glue() -> None:
    """Parts carried by the sar_* TLVs are held and glued like UDH parts."""
    rule = Rule().filter
    one = sar(0x1234, 2, 1, b"abc")
    two = sar(0x1234, 2, 2, b"def")
    assert rule.check(one, 0.0) == HOLD
    glued = glue(rule, two, 0.0)
    assert frames(glued.parts) == frames((one, two))
    assert glued.content == b"abcdef"


def test_ucs2_parts_glue_on_code_units() -> None:
    """UCS-2 parts split on whole code units join into the whole UTF-16BE text."""
    rule = Rule().filter
    text = "Привет, 世界 😀".encode("utf-16-be")
    one = udh8(1, 2, 1, text[:8], data_coding=8)
    two = udh8(1, 2, 2, text[8:], data_coding=8)
    assert rule.check(one, 0.0) == HOLD
    glued = glue(rule, two, 0.0)
    assert glued.content.decode("utf-16-be") == "Привет, 世界 😀"


def test_udh8_and_sar_with_the_same_reference_are_the_same_message() -> None:
    """The scheme is not part of the identity: (account, source, destination, ref, total) is."""
    rule = Rule().filter
    assert rule.check(udh8(9, 2, 1), 0.0) == HOLD
    last = sar(9, 2, 2)
    glued = glue(rule, last, 0.0)
    assert len(glued.parts) == 2


def test_two_accounts_same_reference_complete_independently() -> None:
    """Two accounts using one reference at once each get their own message."""
    rule = Rule().filter
    a1 = udh8(5, 2, 1, b"A1", account="alpha")
    b1 = udh8(5, 2, 1, b"B1", account="beta")
    b2 = udh8(5, 2, 2, b"B2", account="beta")
    a2 = udh8(5, 2, 2, b"A2", account="alpha")
    assert rule.check(a1, 0.0) == HOLD
    assert rule.check(b1, 0.0) == HOLD
    assert rule.open_count == 2
    glued = glue(rule, b2, 1.0)
    assert frames(glued.parts) == frames((b1, b2))
    assert glued.content == b"B1B2"
    assert rule.open_count == 1
    glued = glue(rule, a2, 1.0)
    assert frames(glued.parts) == frames((a1, a2))
    assert glued.content == b"A1A2"


def test_two_sources_or_destinations_same_reference_complete_independently() -> None:
    """Another source or destination with the same reference is another message."""
    rule = Rule().filter
    x1 = udh8(5, 2, 1, b"X1", source_addr=b"BrandX")
    y1 = udh8(5, 2, 1, b"Y1", source_addr=b"BrandY")
    z1 = udh8(5, 2, 1, b"Z1", destination_addr=b"447700900999")
    assert [rule.check(part, 0.0) for part in (x1, y1, z1)] == [HOLD, HOLD, HOLD]
    assert rule.open_count == 3
    y2 = udh8(5, 2, 2, b"Y2", source_addr=b"BrandY")
    glued = glue(rule, y2, 1.0)
    assert frames(glued.parts) == frames((y1, y2))
    assert glued.content == b"Y1Y2"
    z2 = udh8(5, 2, 2, b"Z2", destination_addr=b"447700900999")
    glued = glue(rule, z2, 1.0)
    assert frames(glued.parts) == frames((z1, z2))
    assert rule.open_count == 1


def test_same_reference_different_totals_in_two_accounts_is_no_reuse() -> None:
    """A reference open with total 3 in one account does not block total 2 in another."""
    rule = Rule().filter
    assert rule.check(udh8(5, 3, 1, account="alpha"), 0.0) == HOLD
    assert rule.check(udh8(5, 2, 1, account="beta"), 0.0) == HOLD


# --- the window -------------------------------------------------------------------------------


def test_part_at_the_windows_edge_is_accepted() -> None:
    """A part exactly ``window`` seconds after the first part still completes the message."""
    rule = Rule(window=60.0).filter
    assert rule.check(udh8(1, 2, 1), 100.0) == HOLD
    last = udh8(1, 2, 2)
    glued = glue(rule, last, 160.0)
    assert len(glued.parts) == 2


def test_part_just_past_the_window_is_late() -> None:
    """A part 0.001 s past the window is rejected and the message stays open for expiry."""
    rule = Rule(window=60.0).filter
    assert rule.check(udh8(1, 2, 1), 100.0) == HOLD
    assert rule.check(udh8(1, 2, 2), 160.001) == LATE
    assert rule.open_count == 1
    [ended] = rule.expire(160.001)
    assert ended.reason == "expired"


def test_fractional_window_edge() -> None:
    """A fractional window: the edge is accepted, a millisecond past it is late."""
    rule = Rule(window=0.5).filter
    assert rule.check(udh8(1, 2, 1), 10.25) == HOLD
    glue(rule, udh8(1, 2, 2), 10.75)
    assert rule.check(udh8(2, 2, 1), 20.25) == HOLD
    assert rule.check(udh8(2, 2, 2), 20.751) == LATE


def test_expire_returns_held_parts_after_the_window() -> None:
    """At the window's edge nothing expires; just past it the held parts come back."""
    rule = Rule(window=60.0).filter
    three = udh8(4, 3, 3)
    one = udh8(4, 3, 1)
    assert rule.check(three, 0.0) == HOLD
    assert rule.check(one, 5.0) == HOLD
    assert rule.check(udh8(8, 2, 1), 30.0) == HOLD  # a later message, still open after
    assert rule.expire(60.0) == []
    assert rule.open_count == 2
    [ended] = rule.expire(60.001)
    assert ended.account == "app1"
    assert ended.first == 0.0
    assert frames(ended.arrived) == frames([three, one])  # arrival order
    assert ended.reason == "expired"
    assert rule.open_count == 1
    [later] = rule.expire(90.5)
    assert later.first == 30.0
    assert rule.open_count == 0
    assert rule.expire(1000.0) == []


def test_late_straggler_after_expire_is_late_not_a_new_message() -> None:
    """After expire dropped a message, its missing part is still rejected late."""
    rule = Rule(window=60.0).filter
    assert rule.check(udh8(1, 3, 1), 0.0) == HOLD
    assert rule.check(udh8(1, 3, 2), 1.0) == HOLD
    assert len(rule.expire(61.0)) == 1
    assert rule.open_count == 0
    assert rule.check(udh8(1, 3, 3), 61.5) == LATE
    assert rule.check(udh8(1, 3, 1), 119.0) == LATE  # a resend of a part is late too
    assert rule.open_count == 0


def test_expired_key_is_forgotten_after_one_more_window() -> None:
    """Once a second window has passed, the same header opens a new message."""
    rule = Rule(window=60.0).filter
    assert rule.check(udh8(1, 2, 1), 0.0) == HOLD
    assert len(rule.expire(60.5)) == 1
    assert rule.check(udh8(1, 2, 2), 120.0) == LATE  # two windows after the first part
    rule.expire(120.001)
    assert rule.check(udh8(1, 2, 2), 120.001) == HOLD
    assert rule.open_count == 1


def test_stale_memory_is_ignored_even_before_expire_prunes_it() -> None:
    """Memory past its second window does not reject a new message, pruned or not."""
    rule = Rule(window=10.0).filter
    assert rule.check(udh8(1, 2, 1), 0.0) == HOLD
    assert len(rule.expire(10.5)) == 1
    assert rule.check(udh8(1, 2, 1), 20.5) == HOLD  # no expire since 10.5


def test_completed_message_stragglers_are_duplicate_then_late() -> None:
    """A part of a completed message resent within its window is a duplicate, after it late."""
    rule = Rule(window=60.0).filter
    assert rule.check(udh8(3, 2, 1), 0.0) == HOLD
    glue(rule, udh8(3, 2, 2), 1.0)
    assert rule.check(udh8(3, 2, 2), 60.0) == DUPLICATE
    assert rule.check(udh8(3, 2, 1), 60.001) == LATE
    assert rule.open_count == 0


def test_late_part_of_an_open_message_before_expire_ran() -> None:
    """A part past the window is late even while expire has not yet dropped its message."""
    rule = Rule(window=60.0).filter
    assert rule.check(udh8(1, 3, 1), 0.0) == HOLD
    assert rule.check(udh8(1, 3, 2), 75.0) == LATE
    assert rule.check(udh8(1, 3, 3), 76.0) == LATE
    assert [len(ended.arrived) for ended in rule.expire(77.0)] == [1]


# --- bad parts --------------------------------------------------------------------------------


def test_duplicate_part_is_rejected() -> None:
    """The same sequence twice while the message is open is rejected; the first copy is kept."""
    rule = Rule().filter
    first = udh8(2, 3, 2, b"one")
    assert rule.check(first, 0.0) == HOLD
    assert rule.check(udh8(2, 3, 2, b"two"), 1.0) == DUPLICATE
    assert rule.check(udh8(2, 3, 1), 2.0) == HOLD
    last = udh8(2, 3, 3)
    glued = glue(rule, last, 3.0)
    assert glued.parts[1].frame == first.frame


def test_malformed_headers_are_rejected() -> None:
    """Total 0 or 1, sequence 0 and sequence above total are malformed, in every scheme."""
    rule = Rule().filter
    for build in (udh8, udh16, sar):
        for total, seq in ((0, 0), (0, 1), (1, 1), (3, 0), (3, 4), (2, 255)):
            assert rule.check(build(1, total, seq), 0.0) == MALFORMED, (build, total, seq)
    assert rule.open_count == 0


def test_malformed_status_is_configurable() -> None:
    """The rejection status comes from the config."""
    rule = Rule(status=0x58).filter
    assert rule.check(udh8(1, 1, 1), 0.0) == reject(0x58, "malformed")


def test_highest_sequence_and_total_are_well_formed() -> None:
    """Sequence equal to total (255 of 255) is a good part."""
    rule = Rule().filter
    assert rule.check(udh8(1, 255, 255), 0.0) == HOLD


def test_reference_reused_with_a_different_total() -> None:
    """A reference open with total 3 and reused with total 2 is rejected; the first goes on."""
    rule = Rule().filter
    assert rule.check(udh8(6, 3, 1), 0.0) == HOLD
    assert rule.check(udh8(6, 2, 2), 1.0) == REUSED
    assert rule.check(udh8(6, 2, 1), 1.0) == REUSED
    assert rule.check(udh8(6, 3, 2), 2.0) == HOLD
    glue(rule, udh8(6, 3, 3), 3.0)


def test_reference_with_a_new_total_after_its_message_closed_opens_a_message() -> None:
    """Once the message is complete, the reference may carry a message of another total."""
    rule = Rule().filter
    assert rule.check(udh8(6, 2, 1), 0.0) == HOLD
    glue(rule, udh8(6, 2, 2), 0.0)
    assert rule.check(udh8(6, 3, 1), 1.0) == HOLD
    assert rule.open_count == 1


# --- bounds -----------------------------------------------------------------------------------


def test_max_open_rejects_a_new_message_with_msgqful() -> None:
    """Past ``max_open``, a new message gets 0x14; parts of open ones still go in."""
    rule = Rule(max_open=2).filter
    assert rule.check(udh8(1, 2, 1, account="a"), 0.0) == HOLD
    assert rule.check(udh8(2, 2, 1, account="b"), 0.0) == HOLD
    verdict = rule.check(udh8(3, 2, 1, account="c"), 0.0)
    assert verdict == FULL
    assert verdict.status == 0x14
    last = udh8(1, 2, 2, account="a")
    glue(rule, last, 1.0)  # an open message is not a new one
    assert rule.check(udh8(3, 2, 1, account="c"), 1.0) == HOLD  # room again


def test_max_open_per_account() -> None:
    """Past ``max_open_per_account``, that account is full; another account is not."""
    rule = Rule(max_open_per_account=2).filter
    assert rule.check(udh8(1, 3, 1, account="a"), 0.0) == HOLD
    assert rule.check(udh8(2, 3, 1, account="a"), 0.0) == HOLD
    assert rule.check(udh8(3, 3, 1, account="a"), 0.0) == FULL
    assert rule.check(udh8(3, 3, 1, account="b"), 0.0) == HOLD
    assert rule.check(udh8(1, 3, 2, account="a"), 0.0) == HOLD  # still open: accepted
    rule.expire(61.0)
    assert rule.check(udh8(3, 3, 1, account="a"), 61.0) == HOLD  # the expired ones freed it


def test_full_rejection_is_not_remembered() -> None:
    """A part refused for room opens the message once there is room again."""
    rule = Rule(max_open=1).filter
    assert rule.check(udh8(1, 2, 1), 0.0) == HOLD
    assert rule.check(udh8(2, 2, 1), 0.0) == FULL
    glue(rule, udh8(1, 2, 2), 0.0)
    assert rule.check(udh8(2, 2, 1), 0.5) == HOLD


# --- the rest of the interface ----------------------------------------------------------------


def test_plain_message_is_accepted_without_state() -> None:
    """A message without a concatenation header passes and leaves nothing behind."""
    rule = Rule()
    plain = read_message("app1", submit_sm(1, short_message=b"hello"))
    assert plain.concat is None
    assert rule.filter.check(plain, 0.0) is ACCEPT
    assert plain.parts == ()
    assert rule.filter.open_count == 0
    assert rule.filter.expire(1e9) == []
    assert rule.gauge() == 0.0


def test_udh_without_a_concat_ie_is_no_part() -> None:
    """A UDH carrying only a port IE (0x05) is a plain message."""
    rule = Rule().filter
    body = bytes([6, 5, 4, 0x0B, 0x84, 0x23, 0xF0]) + b"wap"
    message = read_message("app1", submit_sm(1, esm_class=0x40, short_message=body))
    assert rule.check(message, 0.0) is ACCEPT
    assert rule.open_count == 0


def test_concat_open_gauge() -> None:
    """The gauge counts open messages as they open, complete and expire."""
    rule = Rule(window=10.0)
    assert rule.filter.check(udh8(1, 2, 1), 0.0) == HOLD
    assert rule.filter.check(udh8(2, 3, 1), 1.0) == HOLD
    assert rule.filter.check(udh8(2, 3, 2), 1.0) == HOLD
    assert rule.gauge() == 2.0
    glue(rule.filter, udh8(1, 2, 2), 2.0)
    assert rule.gauge() == 1.0
    rule.filter.expire(11.5)
    assert rule.gauge() == 0.0


def test_drop_all_returns_every_open_message() -> None:
    """At shutdown every open message comes back with its parts, reason "shutdown"."""
    rule = Rule()
    one = udh8(1, 2, 1, account="a")
    two = udh8(2, 3, 1, account="b")
    three = udh8(2, 3, 3, account="b")
    for part in (one, two, three):
        assert rule.filter.check(part, 0.0) == HOLD
    dropped = rule.filter.drop_all()
    assert [(held.account, frames(held.arrived), held.reason) for held in dropped] == [
        ("a", frames([one]), "shutdown"),
        ("b", frames([two, three]), "shutdown"),
    ]
    assert rule.filter.open_count == 0
    assert rule.gauge() == 0.0
    assert rule.filter.expire(1e9) == []


def test_settle_changes_nothing() -> None:
    """``settle`` after a glued message (accepted or not) leaves the state as it was."""
    rule = Rule().filter
    assert rule.check(udh8(1, 2, 1), 0.0) == HOLD
    last = udh8(1, 2, 2)
    glued = glue(rule, last, 0.0)
    rule.settle(glued, 0.0, None)
    rule.settle(glued, 0.0, b"id")
    assert rule.open_count == 0
    assert rule.check(udh8(1, 2, 2), 1.0) == DUPLICATE


def test_closed_memory_is_bounded() -> None:
    """Remembered closed messages are bounded by ``max_open``: the oldest is forgotten."""
    rule = Rule(max_open=2).filter
    for ref in (1, 2, 3):
        assert rule.check(udh8(ref, 2, 1), 0.0) == HOLD
        glue(rule, udh8(ref, 2, 2), 0.0)
    assert rule.check(udh8(2, 2, 1), 1.0) == DUPLICATE
    assert rule.check(udh8(3, 2, 1), 1.0) == DUPLICATE
    assert rule.check(udh8(1, 2, 1), 1.0) == HOLD  # forgotten: a new message


# --- a glued message the operator did not take ------------------------------------------------


def test_a_retry_outcome_keeps_held_parts_and_lets_the_completing_part_go() -> None:
    """Fault 1: after ``retry`` the message is open again with its held parts; the completing
    part sent again completes it, and a held part sent again is answered with its id."""
    rule = Rule().filter
    one = udh8(9, 3, 1)
    one.app_message_id = b"R1"
    assert rule.check(one, 0.0) == HOLD
    assert rule.check(udh8(9, 3, 3), 1.0) == HOLD
    glued = whole(rule.check(udh8(9, 3, 2), 2.0))
    assert rule.check(udh8(9, 3, 1), 2.5) == DUPLICATE  # the operator has it now
    rule.parts_settled(glued, 3.0, "retry")
    assert rule.open_count == 1
    assert rule.check(udh8(9, 3, 1), 4.0) == Verdict(
        "replay", reason="held_part_resent", message_id=b"R1"
    )
    again = glue(rule, udh8(9, 3, 2, b"part2"), 5.0)
    assert frames(again.parts) == frames([one, udh8(9, 3, 2), udh8(9, 3, 3)])
    assert again.content == b"part1part2part3"
    assert rule.open_count == 0
    assert rule.check(udh8(9, 3, 2), 6.0) == DUPLICATE  # closed once accepted


def test_a_refused_outcome_closes_the_message() -> None:
    """Refused for good: closed as if accepted; its parts are stragglers."""
    rule = Rule().filter
    assert rule.check(udh8(4, 2, 1), 0.0) == HOLD
    rule.parts_settled(whole(rule.check(udh8(4, 2, 2), 0.0)), 1.0, "refused")
    assert rule.open_count == 0
    assert rule.check(udh8(4, 2, 2), 2.0) == DUPLICATE


def test_a_message_with_the_operator_does_not_expire_until_settled() -> None:
    """Its window ends while the operator has it: `expire` leaves it (and the messages after
    it still expire); a retry outcome then hands its held parts to the next `expire`."""
    rule = Rule(window=10.0).filter
    assert rule.check(udh8(1, 2, 1), 0.0) == HOLD
    glued = whole(rule.check(udh8(1, 2, 2), 1.0))
    assert rule.check(udh8(2, 2, 1), 2.0) == HOLD
    [later] = rule.expire(20.0)
    assert later.first == 2.0
    assert rule.open_count == 1
    rule.parts_settled(glued, 21.0, "retry")
    assert rule.open_count == 0
    [given_up] = rule.expire(22.0)
    assert (given_up.first, given_up.reason, len(given_up.arrived)) == (0.0, "expired", 1)
    assert rule.expire(23.0) == []


# --- held bytes ------------------------------------------------------------------------------


def payload_part(ref: int, seq: int, size: int, account: str = "app1") -> Message:
    """A part of 3 whose text travels in a message_payload of ``size`` octets."""
    payload = bytes([5, 0, 3, ref, 3, seq]) + b"a" * size
    tlvs = ((Tag.message_payload, payload),)
    return read_message(account, submit_sm(3, esm_class=0x40, short_message=b"", tlvs=tlvs))


def test_held_bytes_are_capped_per_account_and_in_total() -> None:
    """Fault 8: a part that would take the held frames past a cap gets ESME_RMSGQFUL (full);
    the gauge shows the bytes held, and they come back when the message goes."""
    size = len(payload_part(1, 1, 10_000).frame) + PART_OVERHEAD
    rule = Rule(max_held_bytes=6 * size, max_held_bytes_per_account=2 * size)
    concat = rule.filter
    assert concat.check(payload_part(1, 1, 10_000), 0.0) == HOLD
    assert concat.check(payload_part(1, 2, 10_000), 0.0) == HOLD
    assert concat.check(payload_part(2, 1, 10_000), 0.0) == FULL  # app1 at its cap
    assert concat.check(payload_part(1, 3, 10_000), 0.0).action == "accept"  # completing: let in
    assert rule.registry.get_sample_value("smpprelay_concat_held_bytes") == 2 * size
    for account in ("b", "c"):
        assert concat.check(payload_part(1, 1, 10_000, account), 0.0) == HOLD
        assert concat.check(payload_part(1, 2, 10_000, account), 0.0) == HOLD
    assert concat.check(payload_part(1, 1, 10_000, "d"), 0.0) == FULL  # 6 held in all
    assert concat.held_bytes == 6 * size  # the first message is still with the operator
    dropped = concat.expire(61.0)
    assert len(dropped) == 2
    assert concat.held_bytes == 2 * size
    assert concat.drop_all() == []  # the one the operator has is not given up
    assert rule.registry.get_sample_value("smpprelay_concat_held_bytes") == 0


def test_a_held_part_keeps_one_copy_of_its_text() -> None:
    """Fault 8: a held part with a 60 KB message_payload costs its frame and PART_OVERHEAD at
    most (it cost about twice its frame again in copies: the TLV and the content), and the
    glued message still carries every part's content and receipt fields."""
    count = 20
    parts = [payload_part(ref, 1, 60_000) for ref in range(count)]
    frame_size = len(parts[0].frame)
    rule = Rule().filter
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for held in parts:
            assert rule.check(held, 0.0) == HOLD
        del held
        gc.collect()
        per_part = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert per_part < PART_OVERHEAD, per_part  # the frames existed before: only the rest counts
    assert frame_size > 60_000
    kept = rule._open[next(iter(rule._open))].received[1]
    assert kept.content == b""
    assert kept.fields.tlvs == ()
    assert kept.fields.text == parts[0].fields.text[:20]  # what its receipt quotes
    assert rule.check(payload_part(0, 2, 10), 1.0) == HOLD
    glued = whole(rule.check(payload_part(0, 3, 10), 1.0))
    assert len(glued.content) == 60_020


def test_a_held_part_sent_again_byte_for_byte_gets_its_id_again() -> None:
    """An app that never read a held part's answer (its connection dropped, the relay
    restarted) sends it again: it is answered with the id it was given, not refused, and
    the message still glues it once."""
    rule = Rule().filter
    first = udh8(2, 3, 1, b"one")
    first.app_message_id = b"R1"
    assert rule.check(first, 0.0) == HOLD
    again = udh8(2, 3, 1, b"one")
    again.app_message_id = b"R2"
    verdict = rule.check(again, 1.0)
    assert verdict.action == "replay"
    assert verdict.message_id == b"R1"
    assert rule.check(udh8(2, 3, 2), 2.0) == HOLD
    glued = glue(rule, udh8(2, 3, 3), 3.0)
    assert [part.app_message_id for part in glued.parts[:1]] == [b"R1"]
