"""The compact tables behind the dedup and flood rules, at sizes where they have many buckets."""

from __future__ import annotations

import gc
import struct
from hashlib import blake2b

import pytest

from smpprelay.store.streaks import FloodStreaks
from smpprelay.store.windows import COMPACT_AT, DEDUP_KEY_SIZE, DedupWindow

BIG = 1_000_000  # max_entries: 2^16 buckets, so that keys spread over many of them


def key(n: int) -> bytes:
    return blake2b(b"%d" % n, digest_size=DEDUP_KEY_SIZE).digest()


def test_a_key_spanning_two_records_is_not_found() -> None:
    """A key whose bytes occur across a record boundary is no match: only record starts count."""
    window = DedupWindow(60.0, 10, young_max=0)  # one bucket: records lie side by side
    first, second = key(1), key(2)
    window.accept(first, 5.0, b"")
    window.accept(second, 5.0, b"")
    straddling = struct.pack("<d", 5.0) + second[:4]  # the first's time, then the second's key
    assert len(straddling) == DEDUP_KEY_SIZE
    assert window.claim(straddling, 6.0) is True
    assert window.claim(second, 6.0) == b""


def test_expiry_is_exact_across_many_buckets() -> None:
    """Every entry goes exactly when its window ends, whichever bucket it is in."""
    window = DedupWindow(60.0, BIG, young_max=0)
    for n in range(5000):
        window.accept(key(n), n / 100, b"")  # 0.00 .. 49.99
    assert window.expire(60.0 + 10.0 - 0.005) == 1000  # 0.00 .. 9.99 are 60 s old
    assert len(window) == 4000
    assert window.claim(key(999), 70.0) is True  # forgotten: reserved anew
    assert window.claim(key(1000), 70.0) is True  # accepted at 10.00: exactly 60 s old at 70.0
    assert window.claim(key(1001), 70.0) == b""  # accepted at 10.01: still a duplicate
    assert window.expire(200.0) == 3999  # key(1000)'s old record went when it was reserved anew
    assert len(window) == 2  # the two new reservations, in flight


def test_a_reservation_never_holds_up_expiry() -> None:
    """A message in flight is kept apart: records accepted after it still expire on time."""
    window = DedupWindow(60.0, 10, young_max=0)  # one bucket, so the order is known
    in_flight, accepted = key(1), key(2)
    assert window.claim(in_flight, 0.0) is True
    window.accept(accepted, 1.0, b"")
    assert len(window) == 2
    assert window.expire(100.0) == 1
    assert window.claim(in_flight, 100.0) is False  # still in flight
    window.release(in_flight)
    assert len(window) == 0


def test_the_due_queue_is_compacted_and_stays_right() -> None:
    """Past COMPACT_AT consumed items the queue drops its front; expiry keeps working."""
    window = DedupWindow(1.0, BIG, young_max=0)
    total = COMPACT_AT + 10
    for n in range(total):
        window.accept(key(n), n * 1e-5, b"")
    assert window.expire(1.0 + (COMPACT_AT - 0.5) * 1e-5) == COMPACT_AT
    assert len(window._due) == 10
    assert window.expire(10.0) == 10
    assert len(window) == 0


@pytest.mark.parametrize("young_max", [0, 1000], ids=["records only", "both tiers"])
def test_the_bound_holds_with_many_buckets(young_max: int) -> None:
    """max_entries (both tiers) is never exceeded, every eviction is counted, and the oldest
    entries go first, wherever they are."""
    window = DedupWindow(60.0, 5000, young_max=young_max)
    for n in range(8000):
        window.accept(key(n), n / 1000, b"")
        assert len(window) <= 5000
    assert window.evicted == 3000
    assert len(window._young) <= young_max
    assert all(window.claim(key(n), 9.0) == b"" for n in range(3000, 8000))
    assert window.claim(key(2999), 9.0) is True


def test_replay_ids_go_with_their_records() -> None:
    """With ids kept, an expired or evicted record leaves no id behind."""
    window = DedupWindow(60.0, 2, keep_ids=True, young_max=0)
    for n in range(3):
        window.accept(key(n), float(n), b"id-%d" % n)
    assert window.claim(key(2), 3.0) == b"id-2"
    assert window._ids is not None
    assert set(window._ids.values()) == {b"id-1", b"id-2"}
    window.expire(100.0)
    assert window._ids == {}


def test_flood_streaks_across_many_buckets() -> None:
    """Streaks are kept per number, expire exactly at the gap, and move back when renewed."""
    streaks = FloodStreaks(30.0, BIG, young_max=0)
    numbers = [b"79%09d" % n for n in range(3000)]
    for second in range(3):
        for number in numbers:
            assert streaks.claim(number, float(second), 50)
            streaks.accept(number, float(second))
    assert all(streaks.count(number, 2.5) == 3 for number in numbers)
    assert streaks.expire(31.999) == 0
    assert streaks.expire(32.0) == 3000
    assert len(streaks) == 0
    assert streaks.count(numbers[0], 32.0) == 0


# --- the dict tier in front of the records ---------------------------------------------------


def test_the_oldest_entries_move_to_the_records_and_stay_found() -> None:
    """Past young_max the oldest move into the records; every entry is found and expires on
    time in whichever tier it is."""
    window = DedupWindow(60.0, BIG, young_max=100)
    for n in range(1000):
        window.accept(key(n), n / 100, b"")  # 0.00 .. 9.99
    assert len(window._young) == 100
    assert window._count == 900
    assert next(iter(window._young)) == key(900)  # the dict tier holds the newest
    assert window.expire(60.0 + 9.5 - 0.005) == 950  # all the records, half the dict tier
    assert len(window) == 50
    assert window.claim(key(949), 69.49) is True  # expired: reserved anew
    assert window.claim(key(950), 69.49) == b""  # accepted at 9.50: a duplicate
    assert window.claim(key(3), 69.49) is True  # expired from the records
    assert window.expire(200.0) == 50
    assert len(window) == 2  # the two reservations


def test_a_duplicate_is_found_in_either_tier() -> None:
    window = DedupWindow(60.0, BIG, keep_ids=True, young_max=1)
    window.accept(key(1), 0.0, b"first")
    window.accept(key(2), 1.0, b"second")  # key(1) moves to the records
    assert window._count == 1
    assert list(window._young) == [key(2)]
    assert window.claim(key(1), 59.9) == b"first"
    assert window.claim(key(2), 59.9) == b"second"
    assert window.claim(key(1), 60.0) is True  # its window ended: reserved, its id forgotten
    assert window._ids == {key(2): b"second"}


def test_a_flood_streak_continues_across_the_tiers() -> None:
    """A streak that moved into the records goes on from there and comes back to the dict."""
    streaks = FloodStreaks(30.0, BIG, young_max=2)
    first, second, third = b"79000000001", b"79000000002", b"79000000003"
    for when, number in enumerate((first, first, second, third)):
        assert streaks.claim(number, float(when), 50)
        streaks.accept(number, float(when))
    assert streaks._count == 1  # first's streak (length 2) moved into the records
    assert streaks.count(first, 4.0) == 2
    assert streaks.claim(first, 4.0, 50)
    streaks.accept(first, 4.0)
    assert streaks.count(first, 4.5) == 3
    assert list(streaks._young) == [third, first]  # second moved out in turn
    assert streaks.count(second, 4.5) == 1
    assert streaks.count(second, 32.0) == 0  # gap of 30 s: over
    assert streaks.expire(34.0) == 3
    assert len(streaks) == 0


def test_eviction_skips_renewed_records() -> None:
    """A record renewed since its acceptance was queued is not taken for the oldest."""
    streaks = FloodStreaks(30.0, 3, young_max=0)
    first, second, third, fourth = (b"7900000000%d" % n for n in range(1, 5))
    for when, number in enumerate((first, second, first, third)):
        streaks.accept(number, float(when))
    assert streaks.evicted == 0
    streaks.accept(fourth, 4.0)  # one too many: second (at 1.0) is the oldest, not first
    assert streaks.evicted == 1
    assert streaks.count(second, 4.0) == 0
    assert streaks.count(first, 4.0) == 2
    assert streaks.count(third, 4.0) == streaks.count(fourth, 4.0) == 1


def test_the_dict_tier_is_never_tracked_by_the_garbage_collector() -> None:
    """A dict holding only bytes, floats and complex numbers is untracked: with 2^18 tuples in
    it the relay's collections cost about 3 us per message."""
    window = DedupWindow(60.0, BIG)
    streaks = FloodStreaks(30.0, BIG)
    for n in range(1000):
        window.accept(key(n), n / 100, b"")
        streaks.accept(b"79%09d" % n, n / 100)
    assert len(window._young) == len(streaks._young) == 1000
    assert not gc.is_tracked(window._young)
    assert not gc.is_tracked(streaks._young)


def test_the_newest_acceptance_is_kept_when_messages_in_flight_fill_the_bound() -> None:
    """Messages in flight alone at max_entries: the one just accepted is still remembered
    (the bound is exceeded by that one entry), so its duplicate is refused."""
    for young_max in (0, 5):
        window = DedupWindow(60.0, 2, young_max=young_max)
        assert all(window.claim(key(n), 0.0) is True for n in range(3))
        window.accept(key(0), 1.0, b"")
        assert window.claim(key(0), 2.0) == b""
        streaks = FloodStreaks(30.0, 2, young_max=young_max)
        numbers = [b"7900000000%d" % n for n in range(3)]
        assert all(streaks.claim(number, 0.0, 50) for number in numbers)
        streaks.accept(numbers[0], 1.0)
        assert streaks.count(numbers[0], 2.0) == 1  # its streak goes on


def test_a_bound_under_fast_entries_evicts_through_the_records() -> None:
    """max_entries below young_max, with messages in flight: entries still leave the dict
    tier in batches and are evicted from the records, oldest first (taking them one by one
    from the dict's front would walk its deleted slots on every acceptance)."""
    window = DedupWindow(60.0, 1000, young_max=1 << 18)
    assert all(window.claim(key(-n), 0.0) is True for n in range(1, 11))  # 10 in flight
    used_records = False
    for n in range(5000):
        assert window.claim(key(n), n / 1000) is True
        window.accept(key(n), n / 1000, b"")
        used_records = used_records or window._count > 0
        assert len(window) <= 1000
    assert used_records
    assert window.evicted == 5000 + 10 - 1000
    assert all(window.claim(key(n), 5.0) == b"" for n in range(4010, 5000))
    assert window.claim(key(4009), 5.0) is True
