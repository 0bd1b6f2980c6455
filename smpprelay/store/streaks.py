"""The flood rule's state: `FloodStreaks`, the current streak per number, on the same two-tier
table as the dedup window (`smpprelay.store.windows`, whose docstring explains the tiers)."""

from __future__ import annotations

from struct import Struct
from typing import Any

from smpprelay.store.windows import RECORD, YOUNG_MAX, RecordTable, unpack_time

_FLOOD_KEY = Struct("<q")  # hash(destination)
_FLOOD_TAIL = Struct("<dI")  # last accepted, length of the streak
_unpack_streak = _FLOOD_TAIL.unpack_from
_pack_flood_key = _FLOOD_KEY.pack


class FloodStreaks(RecordTable):
    """Per key (a destination number): the current streak of accepted messages to it.

    A record's key is the 8 bytes of ``hash(key)``: two numbers share a streak in the records
    only if their 64-bit hashes are equal (about one chance in 10^13 per lookup among a
    million live numbers); the dict tier keys by the number itself. Messages in flight are
    counted per key apart from the streaks, in a dict that the relay's own limits on requests
    in flight keep small.
    """

    def __init__(self, gap: float, max_entries: int, young_max: int = YOUNG_MAX) -> None:
        super().__init__(gap, max_entries, _FLOOD_KEY.size, young_max)
        self.gap = gap
        self._pending: dict[bytes, int] = {}
        # The dict tier: number -> complex(last accepted, length of the streak). A complex,
        # not a tuple: it is one object the garbage collector never tracks, where a dict of
        # 2^18 tuples made its collections cost about 3 us per message in the relay.
        self._young: dict[bytes, complex] = {}

    def __len__(self) -> int:
        """Streaks and numbers with messages in flight (a number with both counts twice)."""
        return self._count + len(self._young) + len(self._pending)

    def _accepted_at(self, value: Any) -> float:
        return value.real  # type: ignore[no-any-return]

    def _migrate(self, moving: list[tuple[bytes, Any]]) -> None:
        buckets, mask, horizon = self._buckets, self._mask, self.horizon
        due, due_buckets = self._due, self._due_buckets
        for key, streak in moving:
            code = hash(key)
            index = code & mask
            bucket = buckets[index]
            last = streak.real
            if bucket and last - unpack_time(bucket, _FLOOD_KEY.size)[0] >= horizon:
                self._prune(bucket, last)
            bucket += _pack_flood_key(code) + _FLOOD_TAIL.pack(last, int(streak.imag))
            due.append(last)
            due_buckets.append(index)
        self._count += len(moving)

    def count(self, key: bytes, now: float) -> int:
        """How many messages a new one at ``now`` would follow in its streak, in flight included."""
        pending = self._pending
        count = pending.get(key, 0) if pending else 0
        streak = self._young.get(key)
        if streak is not None:
            if now - streak.real < self.gap:
                count += int(streak.imag)
        elif self._count:
            bucket, at = self._streak_record(key)
            if at >= 0:
                last, length = _unpack_streak(bucket, at + _FLOOD_KEY.size)
                if now - last < self.gap:
                    count += length
        return count

    def _streak_record(self, key: bytes) -> tuple[bytearray, int]:
        """The bucket for ``key`` and the offset of its record there (-1: none)."""
        code = hash(key)
        bucket = self._buckets[code & self._mask]
        record_key = _pack_flood_key(code)
        at = bucket.find(record_key)
        if at > 0 and at % RECORD:
            at = self._find(bucket, record_key)
        return bucket, at

    def claim(self, key: bytes, now: float, limit: int) -> bool:
        """Count a message at ``now`` in flight, if fewer than ``limit`` precede it; True if so."""
        if self.count(key, now) >= limit:
            return False
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        return True

    def release(self, key: bytes) -> None:
        """A message reserved under this key did not get through."""
        pending = self._pending
        count = pending.pop(key, 0)
        if count > 1:
            pending[key] = count - 1

    def accept(self, key: bytes, now: float) -> int:
        """The operator accepted a message to this key at ``now``; return its streak's length."""
        pending = self._pending
        count = pending.pop(key, 0)
        if count > 1:
            pending[key] = count - 1
        young = self._young
        length = 1
        streak = young.pop(key, None)  # popped and put back: to the back, the front the oldest
        if streak is not None:
            if now - streak.real < self.gap:
                length = int(streak.imag) + 1
        elif self._count:
            bucket, at = self._streak_record(key)
            if at >= 0:
                last, previous = _unpack_streak(bucket, at + _FLOOD_KEY.size)
                if now - last < self.gap:
                    length = previous + 1
                del bucket[at : at + RECORD]  # the streak moves to the dict tier
                self._count -= 1
        young[key] = complex(now, length)
        if (
            len(young) > self.young_max
            or self._count + len(young) + len(pending) > self.max_entries
        ):
            self._settle_young(len(pending), keep=1)
        return length

    def streak(self, key: bytes) -> tuple[float, int] | None:
        """``key``'s streak: its last accepted message and its length, if it is remembered (it
        may have ended since; `expire` has not dropped it yet)."""
        streak = self._young.get(key)
        if streak is not None:
            return streak.real, int(streak.imag)
        if not self._count:
            return None
        bucket, at = self._streak_record(key)
        if at < 0:
            return None
        last, length = _unpack_streak(bucket, at + _FLOOD_KEY.size)
        return last, length

    def restore(self, key: bytes, last: float, length: int) -> None:
        """Put back a streak loaded from the store (streaks oldest first, before any traffic: one
        older than the newest raises `ValueError`); the next message within ``gap`` of ``last``
        continues it. A full table evicts its oldest streaks, as for an acceptance."""
        self._check_order(last)
        young = self._young
        if young.pop(key, None) is None and self._count:
            bucket, at = self._streak_record(key)
            if at >= 0:
                del bucket[at : at + RECORD]
                self._count -= 1
        young[key] = complex(last, length)
        if (
            len(young) > self.young_max
            or self._count + len(young) + len(self._pending) > self.max_entries
        ):
            self._settle_young(len(self._pending), keep=1)
