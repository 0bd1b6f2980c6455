"""The duplicate and flood rules' state: two small in-memory maps that expire and stay bounded.

Each keeps its entries in a plain dict in the order they were last accepted (for dedup, the
order they were reserved in, a few seconds at most earlier), so the oldest are at the front and
expiring or evicting only ever looks there. ``max_entries`` bounds each map
(messages in flight included): past it, the oldest entries are evicted and counted in
``evicted``.

Memory is what these maps are for, so an entry is as small as CPython allows: the key is one
bytes object, the value one number (a float; for a flood streak a complex number carrying the
last accepted time and the streak's length), no tuple, no per-entry object of our own.
``benchmarks/state_memory.py`` measures what an entry costs.

A dict never shrinks its table when entries are deleted: the deleted slots at the front are
skipped in C by every new iteration until the dict next grows. Looking at the front once per
message would therefore cost more and more; eviction is done in batches and expiry once per
sweep, so the cost stays small per message.
"""

from __future__ import annotations

import math
from itertools import islice

# When full, evict this fraction of ``max_entries`` at once (at least one entry), so that the
# front of the dict is looked at once per batch rather than once per message.
EVICT_FRACTION = 256

# The value of a dedup key whose message is on its way to the operator. It never expires, and
# since every entry behind it in the dict was accepted later, it never holds up expiry for
# longer than the message takes to be answered.
IN_FLIGHT = math.inf


class DedupWindow:
    """Message keys -> when the operator accepted them, or `IN_FLIGHT`.

    ``keep_ids`` also keeps the id each accepted message was given (for ``action: replay``).
    """

    def __init__(self, window: float, max_entries: int, keep_ids: bool = False) -> None:
        self.window = window
        self.max_entries = max_entries
        self.evicted = 0
        self._batch = max(1, max_entries // EVICT_FRACTION)
        self._entries: dict[bytes, float] = {}
        self._ids: dict[bytes, bytes] | None = {} if keep_ids else None

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, key: bytes, now: float) -> bool | bytes:
        """Reserve ``key`` for a message on its way to the operator, if nothing holds it.

        True: reserved. False: a message with this key is in flight. Bytes: a message with this
        key was accepted less than ``window`` s ago, under this id (``b""`` if ids are not kept).
        """
        entries = self._entries
        at = entries.get(key)
        if at is not None:
            if at == IN_FLIGHT:
                return False
            if now - at < self.window:
                ids = self._ids
                return ids.get(key, b"") if ids is not None else b""
            self._forget(key)  # expired: reserved anew at the back
        entries[key] = IN_FLIGHT
        if len(entries) > self.max_entries:
            self._evict()
        return True

    def release(self, key: bytes) -> None:
        """The message reserved under ``key`` did not get through."""
        if self._entries.get(key) == IN_FLIGHT:
            del self._entries[key]

    def accept(self, key: bytes, now: float, message_id: bytes) -> None:
        """The operator accepted the message with this key at ``now``."""
        entries = self._entries
        if entries.get(key) != IN_FLIGHT:
            # Not reserved (evicted meanwhile, or accepted before): to the back, so that the
            # front stays the oldest.
            entries.pop(key, None)
        # A reservation is turned into the acceptance where it stands: the dict is then in the
        # order the messages were reserved, which is their order of acceptance give or take
        # the time they were in flight. Moving it would leave a deleted slot behind per message
        # and make the dict's table twice as large.
        entries[key] = now
        if self._ids is not None:
            self._ids[key] = message_id
        if len(entries) > self.max_entries:
            self._evict()

    def expire(self, now: float) -> int:
        """Forget every accepted message older than the window; return how many."""
        window = self.window
        entries = self._entries
        dead = []
        for key, at in entries.items():
            if now - at < window:  # IN_FLIGHT included
                break
            dead.append(key)
        for key in dead:
            del entries[key]
        if self._ids is not None:
            ids = self._ids
            for key in dead:
                ids.pop(key, None)
        return len(dead)

    def _forget(self, key: bytes) -> None:
        del self._entries[key]
        if self._ids is not None:
            self._ids.pop(key, None)

    def _evict(self) -> None:
        excess = len(self._entries) - self.max_entries
        oldest = list(islice(self._entries, max(excess, self._batch)))
        for key in oldest:
            self._forget(key)
        self.evicted += len(oldest)


class FloodStreaks:
    """Per key (a destination number): the current streak of accepted messages to it.

    A streak is stored as ``complex(time of the last accepted message, its length)``: one
    32-byte object, where a tuple of a float and an int would take three. Messages in flight
    are counted per key apart from the streaks, in a map the relay's own limits on requests in
    flight keep small.
    """

    def __init__(self, gap: float, max_entries: int) -> None:
        self.gap = gap
        self.max_entries = max_entries
        self.evicted = 0
        self._batch = max(1, max_entries // EVICT_FRACTION)
        self._streaks: dict[bytes, complex] = {}
        self._pending: dict[bytes, int] = {}

    def __len__(self) -> int:
        """Streaks and numbers with messages in flight (a number with both counts twice)."""
        return len(self._streaks) + len(self._pending)

    def count(self, key: bytes, now: float) -> int:
        """How many messages a new one at ``now`` would follow in its streak, in flight included."""
        count = self._pending.get(key, 0) if self._pending else 0
        streak = self._streaks.get(key)
        if streak is not None and now - streak.real < self.gap:
            count += int(streak.imag)
        return count

    def claim(self, key: bytes, now: float, limit: int) -> bool:
        """Count a message at ``now`` in flight, if fewer than ``limit`` precede it; True if so."""
        pending = self._pending
        in_flight = pending.get(key, 0)
        count = in_flight
        streak = self._streaks.get(key)
        if streak is not None and now - streak.real < self.gap:
            count += int(streak.imag)
        if count >= limit:
            return False
        pending[key] = in_flight + 1
        return True

    def release(self, key: bytes) -> None:
        """A message reserved under this key did not get through."""
        pending = self._pending
        count = pending.pop(key, 0)
        if count > 1:
            pending[key] = count - 1

    def accept(self, key: bytes, now: float) -> None:
        """The operator accepted a message to this key at ``now``."""
        pending = self._pending
        count = pending.pop(key, 0)
        if count > 1:
            pending[key] = count - 1
        streaks = self._streaks
        streak = streaks.pop(key, None)  # moves it to the back: the front stays the oldest
        if streak is not None and now - streak.real < self.gap:
            streaks[key] = complex(now, streak.imag + 1)
        else:
            streaks[key] = complex(now, 1)
        if len(streaks) + len(pending) > self.max_entries:
            self._evict()

    def expire(self, now: float) -> int:
        """Forget every streak whose last message is ``gap`` or more ago; return how many."""
        gap = self.gap
        dead = []
        for key, streak in self._streaks.items():
            if now - streak.real < gap:
                break
            dead.append(key)
        streaks = self._streaks
        for key in dead:
            del streaks[key]
        return len(dead)

    def _evict(self) -> None:
        streaks = self._streaks
        excess = len(streaks) + len(self._pending) - self.max_entries
        oldest = list(islice(streaks, max(excess, self._batch)))
        for key in oldest:
            del streaks[key]
        self.evicted += len(oldest)
