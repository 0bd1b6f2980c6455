"""The duplicate and flood rules' state: two in-memory tables that expire and stay bounded (the
flood one, `FloodStreaks`, is in `smpprelay.store.streaks`; both are built on `RecordTable`).

Each table has two tiers, and a key is in at most one of them:

- **The dict tier** holds the newest acceptances, up to ``young_max`` (``fast_entries`` in the
  configuration, 2^18 by default), in a plain dict in acceptance order: a lookup or an
  acceptance is one dict operation. Its keys and values are bytes, floats and complex numbers,
  so the garbage collector never tracks the dict (a dict of 2^18 tuples made the relay's
  collections cost about 3 us per message). It costs about 180 bytes per entry of resident
  memory.
- **The records** take the oldest entries once the dict tier is full, in batches of 1/256 of
  it. A record is 20 bytes in a ``bytearray`` bucket picked by ``hash(key)``: a fixed-size
  key, the time it was accepted as a double, then 4 bytes that the flood table uses for the
  streak's length and the dedup table's longer key fills. A lookup is one
  ``bytearray.find`` over a bucket of a few records, in C; there is no Python object per
  entry, so a record costs about 46 bytes with its share of its bucket and of the due queue.
  But reaching it takes a dozen interpreted steps where a dict takes one: in the relay, about
  1.5 us more per rule per message.

So a relay whose windows hold up to 2^18 entries each (up to about 4,000 messages a second with
a 60 s window) runs at dict speed, and one that holds more pays per message for the memory it
saves: a million live entries of each kind take under 250 MB instead of 330-415 MB
(``benchmarks/state_memory.py``).

Every entry of the dict tier is newer than every record, and each bucket keeps its records in
the order they were accepted, so expiry only ever looks at the front. Beside the buckets, two
arrays (16 bytes per record) queue when each record was accepted and its bucket, so ``expire``
visits only the buckets whose oldest record ended, and ``max_entries`` (both tiers and the
messages in flight) evicts the oldest records first, then the oldest of the dict tier, each
counted in ``evicted``. Messages still on their way to the operator are kept apart, in a
small dict per table.
"""

from __future__ import annotations

from array import array
from itertools import islice
from struct import Struct
from typing import Any

# The key a dedup record starts with: this many bytes (see DedupFilter.key).
DEDUP_KEY_SIZE = 12
# A record is a key, then when it was accepted (a double), then 4 bytes that the flood table
# uses for the streak's length and the dedup table's longer key fills.
RECORD = 20
_TIME = Struct("<d")
unpack_time = _TIME.unpack_from  # (buffer, offset) -> (time,): shared with streaks.py
_pack_time_into = _TIME.pack_into

# Buckets per table: about one per ``BUCKET_LOAD`` entries at ``max_entries``, so that a
# bucket stays a few records long (a find over it costs no more than a dict lookup).
BUCKET_LOAD = 8
# The queue of due times drops its consumed front once it is this long (and half consumed).
COMPACT_AT = 65536
# Entries kept in the fast dict tier before the oldest move into the compact records.
YOUNG_MAX = 1 << 18


def _bucket_count(max_entries: int) -> int:
    return 1 << max(0, (max_entries // BUCKET_LOAD).bit_length() - 1)


class RecordTable:
    """Fixed-size records in hash-picked ``bytearray`` buckets, oldest first in each bucket.

    ``key_size`` bytes of key start a record; the double after them is the time that
    ``horizon`` seconds later ends the record's life.
    """

    def __init__(
        self, horizon: float, max_entries: int, key_size: int, young_max: int = YOUNG_MAX
    ) -> None:
        self.horizon = horizon
        self.max_entries = max_entries
        self.young_max = min(young_max, max_entries)
        self.evicted = 0
        self._key_size = key_size
        size = _bucket_count(max_entries)
        self._mask = size - 1
        self._buckets = [bytearray() for _ in range(size)]
        self._count = 0
        # When each record was given its time, and its bucket, in that order: expire() looks
        # only at the buckets of records whose life ended, however large the table is. A
        # record removed or moved meanwhile leaves a stale item here, which costs one look.
        self._due = array("d")
        self._due_buckets = array("L")
        self._head = 0

    def __len__(self) -> int:
        return self._count

    def _find(self, bucket: bytearray, key: bytes) -> int:
        """The offset of ``key``'s record in ``bucket``, or -1."""
        at = bucket.find(key)
        # A key's bytes may also occur across two records; only a record's start counts.
        while at > 0 and at % RECORD:
            at = bucket.find(key, at + 1)
        return at

    def _prune(self, bucket: bytearray, now: float) -> int:
        """Drop the records at the front of ``bucket`` whose life ended; return how many."""
        horizon = self.horizon
        offset = self._key_size
        end = 0
        size = len(bucket)
        unpack = _TIME.unpack_from
        while end < size and now - unpack(bucket, end + offset)[0] >= horizon:
            end += RECORD
        if not end:
            return 0
        if self._keeps_beside:
            self._dropped(bucket, end)
        del bucket[:end]
        dead = end // RECORD
        self._count -= dead
        return dead

    # Whether a subclass keeps something beside its records that must go with them.
    _keeps_beside = False

    def _dropped(self, bucket: bytearray, end: int) -> None:
        """The records before ``end`` are about to go (a hook for what is kept beside them)."""

    def _evict(self, count: int) -> None:
        """Drop the ``count`` oldest records (fewer if there are not so many), counted in
        ``evicted``.

        The due queue lists acceptances oldest first: an item whose bucket starts with a record
        of its time is the oldest record left; any other item is stale (its record was
        renewed or removed) and is passed over. Either way the queue's head moves past it.
        """
        due, due_buckets, buckets = self._due, self._due_buckets, self._buckets
        offset = self._key_size
        head, size = self._head, len(due)
        while count > 0 and head < size:
            bucket = buckets[due_buckets[head]]
            if bucket and unpack_time(bucket, offset)[0] == due[head]:
                self._dropped(bucket, RECORD)
                del bucket[:RECORD]
                self._count -= 1
                self.evicted += 1
                count -= 1
            head += 1
        self._head = head

    # The dict tier: key -> what its record would hold, oldest acceptance first. Subclasses
    # give it a value type, say when a value was accepted and how entries become records.
    _young: dict[bytes, Any]

    def _accepted_at(self, value: Any) -> float:
        raise NotImplementedError

    def _migrate(self, moving: list[tuple[bytes, Any]]) -> None:
        """Append these entries, already out of the dict tier and oldest first, to the records.

        Written out per table, with no call per entry: at more than ``young_max`` live
        entries every acceptance passes through here, in batches.
        """
        raise NotImplementedError

    def _settle_young(self, others: int, keep: int = 0) -> None:
        """Move the dict tier's oldest entries into the records when it is over ``young_max``,
        and keep the table (both tiers and ``others``, the messages in flight) within
        ``max_entries``, oldest first. The ``keep`` newest entries of the dict tier stay: an
        acceptance keeps the entry it just made even when messages in flight alone fill the
        bound, which may then be exceeded by that one entry."""
        young = self._young
        over = self._count + len(young) + others - self.max_entries
        # Entries leave through the records, whose eviction follows the due queue: taking
        # them from the dict's front would walk its deleted slots every time.
        need = max(len(young) - self.young_max, min(over - self._count, len(young) - keep))
        if need > 0:
            # A batch per pass: deleted entries leave empty slots at the front of a dict that
            # every new iteration walks again (until the dict is next resized), so taking
            # them one at a time costs about 14 us each at 2^18 entries. A batch of 1/256 of
            # the tier costs about 0.5 ms, once per that many acceptances.
            batch = max(need, min(need + self.young_max // 256, len(young) - keep))
            migrating = list(islice(young.items(), batch))
            for key, _ in migrating:
                del young[key]
            self._migrate(migrating)
            # Moving may have pruned ended records from the front of their buckets.
            over = self._count + len(young) + others - self.max_entries
        if over > 0:
            # The records are older than the dict tier: they go first, but for the newest
            # entry when it is to be kept and has just moved there (young_max 0).
            self._evict(min(over, self._count - max(0, keep - len(young))))

    def _forget(self, key: bytes) -> None:
        """``key`` left the dict tier early (a hook for what is kept beside it)."""

    def _check_order(self, at: float) -> None:
        """Refuse to put back an entry older than the newest one: both tiers and every bucket
        rely on acceptance order (expiry and eviction only look at the front)."""
        young = self._young
        newest = self._accepted_at(next(reversed(young.values()))) if young else None
        if self._due and (newest is None or self._due[-1] > newest):
            newest = self._due[-1]  # the newest record (a stale item is older still)
        if newest is not None and at < newest:
            raise ValueError(f"entry at {at} put back after a newer one ({newest}): oldest first")

    def _expire_young(self, now: float) -> int:
        young = self._young
        horizon = self.horizon
        dead = []
        accepted_at = self._accepted_at
        for key, value in young.items():
            if now - accepted_at(value) < horizon:
                break  # acceptance order: every later entry is younger
            dead.append(key)
        for key in dead:
            del young[key]
            self._forget(key)
        return len(dead)

    def expire(self, now: float) -> int:
        """Drop every entry whose life ended; return how many."""
        return self._expire_records(now) + self._expire_young(now)

    def _expire_records(self, now: float) -> int:
        """Drop every record whose life ended; return how many."""
        due, due_buckets, buckets = self._due, self._due_buckets, self._buckets
        horizon = self.horizon
        offset = self._key_size
        unpack = unpack_time
        head, size = self._head, len(due)
        removed = 0
        # _prune written out: this loop runs once per acceptance, a call would cost a third.
        while head < size and now - due[head] >= horizon:
            bucket = buckets[due_buckets[head]]
            head += 1
            end = 0
            length = len(bucket)
            while end < length and now - unpack(bucket, end + offset)[0] >= horizon:
                end += RECORD
            if end:
                if self._keeps_beside:
                    self._dropped(bucket, end)
                del bucket[:end]
                removed += end // RECORD
        self._count -= removed
        if head >= COMPACT_AT and head * 2 >= size:
            del due[:head]
            del due_buckets[:head]
            head = 0
        self._head = head
        return removed


class DedupWindow(RecordTable):
    """Message keys (``DEDUP_KEY_SIZE`` bytes) -> when the operator accepted them.

    ``keep_ids`` also keeps the id each accepted message was given (for ``action: replay``),
    in a dict beside the table: replay costs that dict's memory on top.
    """

    def __init__(
        self, window: float, max_entries: int, keep_ids: bool = False, young_max: int = YOUNG_MAX
    ) -> None:
        super().__init__(window, max_entries, DEDUP_KEY_SIZE, young_max)
        self.window = window
        self._young: dict[bytes, float] = {}
        self._ids: dict[bytes, bytes] | None = {} if keep_ids else None
        self._keeps_beside = keep_ids
        # Keys of messages on their way to the operator: a small dict that the relay's limits
        # on requests in flight keep small. Only an acceptance writes a record, so a bucket
        # holds accepted messages only, in the order they were accepted.
        self._pending: dict[bytes, None] = {}

    def __len__(self) -> int:
        """Accepted messages remembered, and messages in flight."""
        return self._count + len(self._young) + len(self._pending)

    def _accepted_at(self, value: Any) -> float:
        return value  # type: ignore[no-any-return]

    def _migrate(self, moving: list[tuple[bytes, Any]]) -> None:
        buckets, mask, horizon = self._buckets, self._mask, self.horizon
        due, due_buckets = self._due, self._due_buckets
        for key, accepted in moving:
            index = hash(key) & mask
            bucket = buckets[index]
            if bucket and accepted - unpack_time(bucket, DEDUP_KEY_SIZE)[0] >= horizon:
                self._prune(bucket, accepted)
            bucket += key + _TIME.pack(accepted)
            due.append(accepted)
            due_buckets.append(index)
        self._count += len(moving)

    # claim and accept run for every message: they are written out in full, with no helper
    # calls on the common path (each call would cost about a tenth of the whole).

    def claim(self, key: bytes, now: float) -> bool | bytes:
        """Reserve ``key`` for a message on its way to the operator, if nothing holds it.

        True: reserved. False: a message with this key is in flight. Bytes: a message with this
        key was accepted less than ``window`` s ago, under this id (``b""`` if ids are not kept).
        """
        young = self._young
        accepted = young.get(key)
        if accepted is not None:
            if now - accepted < self.window:
                ids = self._ids
                return ids.get(key, b"") if ids is not None else b""
            del young[key]  # expired: its acceptance will be recorded anew
            self._forget(key)
        elif self._count:
            bucket = self._buckets[hash(key) & self._mask]
            at = bucket.find(key)
            if at > 0 and at % RECORD:
                at = self._find(bucket, key)
            if at >= 0:
                if now - unpack_time(bucket, at + DEDUP_KEY_SIZE)[0] < self.window:
                    ids = self._ids
                    return ids.get(key, b"") if ids is not None else b""
                self._remove(bucket, at)  # expired: its acceptance will be recorded anew
        pending = self._pending
        if key in pending:
            return False
        pending[key] = None
        if self._count + len(young) + len(pending) > self.max_entries:
            self._settle_young(len(pending))
        return True

    def release(self, key: bytes) -> None:
        """The message reserved under ``key`` did not get through."""
        self._pending.pop(key, 0)

    def accept(self, key: bytes, now: float, message_id: bytes) -> None:
        """The operator accepted the message with this key at ``now``."""
        pending = self._pending
        young = self._young
        # Reserved (its value is None: one dict operation to test and remove): claim found no
        # live entry for it, and none can have come since. Otherwise accepted before: the old
        # entry goes, the new one to the back.
        if pending.pop(key, 0) is not None and young.pop(key, None) is None and self._count:
            bucket = self._buckets[hash(key) & self._mask]
            at = self._find(bucket, key)
            if at >= 0:
                self._remove(bucket, at)
        young[key] = now
        if self._ids is not None:
            self._ids[key] = message_id
        if (
            len(young) > self.young_max
            or self._count + len(young) + len(pending) > self.max_entries
        ):
            self._settle_young(len(pending), keep=1)

    def restore(self, key: bytes, at: float, message_id: bytes) -> None:
        """Put back an acceptance loaded from the store (entries oldest first, before any
        traffic: an entry older than the newest one raises `ValueError`). A full table evicts
        its oldest entries, as for an acceptance."""
        self._check_order(at)
        # Nothing is in flight at start, so this is an acceptance at ``at``.
        self.accept(key, at, message_id)

    def accepted_at(self, key: bytes) -> float | None:
        """When the message with this key was accepted, if it is still remembered (its window
        may have ended since; `expire` has not dropped it yet)."""
        accepted = self._young.get(key)
        if accepted is not None or not self._count:
            return accepted
        bucket = self._buckets[hash(key) & self._mask]
        at = self._find(bucket, key)
        return unpack_time(bucket, at + DEDUP_KEY_SIZE)[0] if at >= 0 else None

    def _remove(self, bucket: bytearray, at: int) -> None:
        if self._ids is not None:
            self._ids.pop(bytes(bucket[at : at + DEDUP_KEY_SIZE]), None)
        del bucket[at : at + RECORD]
        self._count -= 1

    def _dropped(self, bucket: bytearray, end: int) -> None:
        ids = self._ids
        if ids is not None:
            for at in range(0, end, RECORD):
                ids.pop(bytes(bucket[at : at + DEDUP_KEY_SIZE]), None)

    def _forget(self, key: bytes) -> None:
        if self._ids is not None:
            self._ids.pop(key, None)
