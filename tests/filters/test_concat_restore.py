"""The concatenation rule across a restart: held parts put back (`restore_part`), and a hold
undone when the store could not keep it (`release_part`)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from smpprelay.config import ConcatRule, FiltersConfig
from smpprelay.filters import build_chain
from smpprelay.filters.base import Dropped
from smpprelay.filters.concat import PART_OVERHEAD, ConcatFilter
from smpprelay.message import Message, Verdict, read_message
from smpprelay.metrics import Metrics
from tests.fakes import submit_sm
from tests.filters.test_concat import DUPLICATE, FULL, HOLD, frames, glue, udh8


def fresh(**config: Any) -> ConcatFilter:
    return ConcatFilter(ConcatRule(**config), Metrics(CollectorRegistry()))


def loaded(part: Message, app_message_id: bytes) -> Message:
    """``part`` as the relay reads it back from the store: from its frame, with its id."""
    again = read_message(part.account, part.frame, part.app_iso)
    again.app_message_id = app_message_id
    return again


def with_id(part: Message, app_message_id: bytes) -> Message:
    part.app_message_id = app_message_id
    return part


def size(*parts: Message) -> int:
    return sum(len(part.frame) + PART_OVERHEAD for part in parts)


# --- restore_part -----------------------------------------------------------------------------


def test_restored_parts_are_glued_in_order_by_the_completing_part() -> None:
    """Parts held before the restart, put back into a fresh rule; the last part glues them."""
    one, two, three = (udh8(7, 3, seq, b"<%d>" % seq) for seq in (1, 2, 3))
    rule = fresh()
    rule.restore_part(loaded(two, b"id-2"), 100.0)
    rule.restore_part(loaded(one, b"id-1"), 100.0)
    assert rule.open_count == 1
    assert rule.held_bytes == size(one, two)
    glued = glue(rule, three, 110.0)
    assert frames(glued.parts) == frames((one, two, three))
    assert [part.app_message_id for part in glued.parts[:2]] == [b"id-1", b"id-2"]
    assert glued.content == b"<1><2><3>"
    assert rule.open_count == 0
    assert rule.held_bytes == 0
    assert rule._per_account == {}
    assert rule._bytes_per_account == {}
    # Remembered as complete: a straggler is a duplicate.
    assert rule.check(udh8(7, 3, 1, b"<1>"), 111.0) == DUPLICATE


def test_restored_parts_are_not_capped() -> None:
    """They were accepted once: the caps apply to new parts only."""
    rule = fresh(max_open=1, max_open_per_account=1, max_held_bytes=1)
    rule.restore_part(loaded(udh8(1, 2, 1), b"a"), 0.0)
    rule.restore_part(loaded(udh8(2, 2, 1), b"b"), 0.0)
    assert rule.open_count == 2
    assert rule.check(udh8(3, 2, 1), 1.0) == FULL


def test_a_restored_message_past_its_window_expires_with_its_parts() -> None:
    rule = fresh(window=60.0)
    one, two = udh8(7, 3, 1), udh8(7, 3, 2)
    rule.restore_part(loaded(one, b"id-1"), 100.0)
    rule.restore_part(loaded(two, b"id-2"), 100.0)
    assert rule.expire(160.0) == []
    (dropped,) = rule.expire(160.1)
    assert isinstance(dropped, Dropped)
    assert (dropped.account, dropped.first, dropped.reason) == ("app1", 100.0, "expired")
    assert [part.app_message_id for part in dropped.arrived] == [b"id-1", b"id-2"]
    assert rule.held_bytes == 0
    assert rule.open_count == 0


def test_messages_restored_out_of_first_part_order_still_expire() -> None:
    """A message opened later with an earlier first part cannot hide an ended one from expiry."""
    rule = fresh(window=60.0)
    rule.restore_part(loaded(udh8(1, 2, 1), b"late"), 200.0)
    rule.restore_part(loaded(udh8(2, 2, 1), b"early"), 100.0)
    (dropped,) = rule.expire(161.0)
    assert [part.app_message_id for part in dropped.arrived] == [b"early"]
    assert rule.open_count == 1
    (dropped,) = rule.expire(261.0)
    assert [part.app_message_id for part in dropped.arrived] == [b"late"]


def test_an_earlier_first_moves_the_message_window() -> None:
    rule = fresh(window=60.0)
    rule.restore_part(loaded(udh8(1, 3, 2), b"b"), 100.0)
    rule.restore_part(loaded(udh8(1, 3, 1), b"a"), 90.0)
    assert len(rule.expire(150.1)) == 1


def test_parts_that_cannot_be_held_again_are_refused() -> None:
    rule = fresh()
    plain = read_message("app1", submit_sm(1, short_message=b"not a part"))
    with pytest.raises(ValueError, match="not a concatenated part"):
        rule.restore_part(plain, 0.0)
    with pytest.raises(ValueError, match="malformed"):
        rule.restore_part(loaded(udh8(1, 2, 3), b"x"), 0.0)
    rule.restore_part(loaded(udh8(1, 2, 1), b"x"), 0.0)
    with pytest.raises(ValueError, match="held twice"):
        rule.restore_part(loaded(udh8(1, 2, 1), b"y"), 0.0)
    with pytest.raises(ValueError, match="not 3"):
        rule.restore_part(loaded(udh8(1, 3, 2), b"z"), 0.0)
    assert rule.held_bytes == size(udh8(1, 2, 1))


def test_the_chain_restores_into_the_concat_rule() -> None:
    chain = build_chain(FiltersConfig(), False, Metrics(CollectorRegistry()))
    one = udh8(9, 2, 1)
    chain.restore_part(loaded(one, b"id-1"), 5.0)
    two = with_id(udh8(9, 2, 2), b"id-2")
    verdict = chain.check(two, 6.0)
    assert verdict.action == "accept"
    assert verdict.message is not None
    assert frames(verdict.message.parts) == frames((one, two))


# --- release_part -----------------------------------------------------------------------------


def test_a_released_part_is_held_again_on_its_retry() -> None:
    """The store could not keep part 2: its retry is held again, not a duplicate part."""
    rule = fresh()
    one = with_id(udh8(7, 3, 1), b"id-1")
    two = with_id(udh8(7, 3, 2), b"id-2")
    assert rule.check(one, 0.0) == HOLD
    assert rule.check(two, 1.0) == HOLD
    rule.release_part(two)
    assert rule.held_bytes == size(one)
    assert rule.open_count == 1
    retry = with_id(udh8(7, 3, 2), b"id-2b")
    assert rule.check(retry, 2.0) == HOLD
    glued = glue(rule, with_id(udh8(7, 3, 3), b"id-3"), 3.0)
    assert [part.app_message_id for part in glued.parts] == [b"id-1", b"id-2b", b"id-3"]
    assert rule.held_bytes == 0
    assert rule._per_account == {}
    assert rule._bytes_per_account == {}


def test_releasing_the_only_part_forgets_the_message() -> None:
    """Not remembered as closed: the retry opens the message anew, and it completes."""
    rule = fresh(max_open=1)
    one = with_id(udh8(7, 2, 1), b"id-1")
    assert rule.check(one, 0.0) == HOLD
    rule.release_part(one)
    assert rule.open_count == 0
    assert rule.held_bytes == 0
    assert rule._per_account == {}
    assert rule._bytes_per_account == {}
    assert rule._closed == {}
    assert rule.check(with_id(udh8(7, 2, 1), b"id-1b"), 30.0) == HOLD  # max_open 1: room again
    glued = glue(rule, with_id(udh8(7, 2, 2), b"id-2"), 31.0)
    assert len(glued.parts) == 2
    # The window runs from the retry, not from the released part.
    assert rule.expire(89.0) == []


def test_release_leaves_other_holds_alone() -> None:
    """A part held under another id (or not held at all) is not this check's hold."""
    rule = fresh()
    one = with_id(udh8(7, 3, 1), b"id-1")
    assert rule.check(one, 0.0) == HOLD
    rule.release_part(with_id(udh8(7, 3, 1), b"other"))
    rule.release_part(with_id(udh8(7, 3, 2), b"id-2"))  # never held
    rule.release_part(with_id(udh8(7, 4, 1), b"id-1"))  # another total
    rule.release_part(with_id(udh8(8, 3, 1), b"id-1"))  # another message
    assert rule.held_bytes == size(one)
    assert rule.open_count == 1


def test_the_chain_releases_through_the_concat_rule() -> None:
    chain = build_chain(FiltersConfig(), False, Metrics(CollectorRegistry()))
    one = with_id(udh8(3, 2, 1), b"id-1")
    assert chain.check(one, 0.0) == Verdict("hold")
    chain.release_part(one)
    assert chain.check(with_id(udh8(3, 2, 1), b"id-1b"), 1.0) == Verdict("hold")
