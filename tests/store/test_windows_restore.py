"""Putting the windows back at start: `DedupWindow.restore`, `FloodStreaks.restore` and the
accessors write-behind reads (`DedupWindow.accepted_at`, `FloodStreaks.streak`), in both tiers."""

from __future__ import annotations

from hashlib import blake2b

import pytest

from smpprelay.store.streaks import FloodStreaks
from smpprelay.store.windows import DEDUP_KEY_SIZE, DedupWindow

# Each test runs with the entries in the dict tier, and again with them in the records.
TIERS = pytest.mark.parametrize("young_max", [1 << 18, 0], ids=["dict-tier", "records"])


def key(n: int) -> bytes:
    return blake2b(b"%d" % n, digest_size=DEDUP_KEY_SIZE).digest()


@TIERS
def test_restored_dedup_entries_are_found_until_their_window_ends(young_max: int) -> None:
    """A restored key is a duplicate (with its id) within its window, and expires with it."""
    window = DedupWindow(60.0, 1000, keep_ids=True, young_max=young_max)
    window.restore(key(1), 10.0, b"id-1")
    window.restore(key(2), 20.0, b"id-2")
    assert window.accepted_at(key(1)) == 10.0
    assert window.accepted_at(key(3)) is None
    assert window.claim(key(1), 69.9) == b"id-1"
    assert window.claim(key(2), 69.9) == b"id-2"
    assert window.expire(70.0) == 1  # key 1's window ended; key 2's goes on
    assert window.claim(key(1), 70.0) is True
    assert window.claim(key(2), 79.9) == b"id-2"


@TIERS
def test_a_key_restored_twice_keeps_its_newest_acceptance(young_max: int) -> None:
    window = DedupWindow(60.0, 1000, keep_ids=True, young_max=young_max)
    window.restore(key(1), 10.0, b"old")
    window.restore(key(1), 30.0, b"new")
    assert len(window) == 1
    assert window.accepted_at(key(1)) == 30.0
    assert window.claim(key(1), 80.0) == b"new"


@TIERS
def test_restoring_past_max_entries_evicts_the_oldest(young_max: int) -> None:
    window = DedupWindow(60.0, 3, young_max=young_max)
    for n in range(5):
        window.restore(key(n), float(n), b"")
    assert len(window) == 3
    assert window.evicted == 2
    assert window.accepted_at(key(0)) is None
    assert window.accepted_at(key(4)) == 4.0


@TIERS
def test_restoring_out_of_order_is_refused(young_max: int) -> None:
    """Both tiers rely on acceptance order: an entry older than the newest one is refused."""
    window = DedupWindow(60.0, 1000, young_max=young_max)
    window.restore(key(1), 20.0, b"")
    with pytest.raises(ValueError, match="oldest first"):
        window.restore(key(2), 10.0, b"")
    streaks = FloodStreaks(30.0, 1000, young_max)
    streaks.restore(b"111", 20.0, 3)
    with pytest.raises(ValueError, match="oldest first"):
        streaks.restore(b"222", 10.0, 3)


@TIERS
def test_a_restored_streak_continues(young_max: int) -> None:
    """The next message within the gap follows the restored streak; after the gap, a new one."""
    streaks = FloodStreaks(30.0, 1000, young_max)
    streaks.restore(b"111", 100.0, 4)
    assert streaks.streak(b"111") == (100.0, 4)
    assert streaks.streak(b"222") is None
    assert streaks.count(b"111", 129.9) == 4
    assert streaks.count(b"111", 130.0) == 0
    assert streaks.claim(b"111", 110.0, 5)
    streaks.accept(b"111", 110.0)
    assert streaks.streak(b"111") == (110.0, 5)
    assert not streaks.claim(b"111", 111.0, 5)


@TIERS
def test_a_streak_restored_twice_keeps_the_newest(young_max: int) -> None:
    streaks = FloodStreaks(30.0, 1000, young_max)
    streaks.restore(b"111", 100.0, 4)
    streaks.restore(b"111", 101.0, 7)
    assert len(streaks) == 1
    assert streaks.streak(b"111") == (101.0, 7)
    assert streaks.expire(131.0) == 1
    assert streaks.streak(b"111") is None


@TIERS
def test_restoring_streaks_past_max_entries_evicts_the_oldest(young_max: int) -> None:
    streaks = FloodStreaks(30.0, 2, young_max)
    for n in range(4):
        streaks.restore(b"%d" % n, float(n), n + 1)
    assert len(streaks) == 2
    assert streaks.evicted == 2
    assert streaks.streak(b"0") is None
    assert streaks.streak(b"3") == (3.0, 4)
