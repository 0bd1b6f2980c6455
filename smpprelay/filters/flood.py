"""The flood rule: at most ``max_messages`` to one number in a streak.

A streak is a run of accepted messages to one destination, each less than ``gap`` seconds
after the previous accepted one; a message that would make it longer than ``max_messages`` is
rejected, and the streak starts over once ``gap`` seconds pass with nothing accepted. Rejected
attempts do not extend it. A glued concatenated message counts once. The scope is as for the
duplicate rule: one count per number for the whole upstream account (default), or per app
account.

A message that passes is counted as in flight toward its streak until ``settle`` says whether
the operator accepted it, so that many concurrent submits to one number cannot all pass.

Write-behind: an acceptance notes its key, streak and time (two dict stores); `window_segment`,
called ten times a second, packs them into one section (`smpprelay.store.window_segments`),
and `restore_windows` puts streaks loaded at start back, so that a streak goes on across a
restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from twisted.logger import Logger

from smpprelay.config import FloodRule
from smpprelay.filters.base import HoldsNothing, bound_uncollected
from smpprelay.message import ACCEPT, Message, Verdict, reject
from smpprelay.metrics import Metrics
from smpprelay.store import WindowEntry, window_segments
from smpprelay.store.streaks import FloodStreaks

# Keys whose streak changed and that `window_segment` has not collected yet, at most: a relay
# that does not write its windows behind (or stalls) must not grow them without end.
UNCOLLECTED_MAX = 1 << 17


class FloodFilter(HoldsNothing):
    """Rejects a message that would make the streak to its number longer than allowed."""

    name: ClassVar[str] = "flood"
    settles: ClassVar[bool] = True
    log = Logger()

    def __init__(self, config: FloodRule, metrics: Metrics, write_behind: bool = True) -> None:
        self.config = config
        self.metrics = metrics
        self.max_messages = config.max_messages
        self.per_client = config.scope == "client"
        self.streaks = FloodStreaks(config.gap, config.max_entries, config.fast_entries)
        self._flood = reject(config.status, "flood")
        self._evictions_logged = 0
        # Keys whose streak changed since the last `window_segment` -> its length, and -> its
        # last acceptance, in that order (noted only when a durable store collects them). Two
        # dicts in step, as DedupFilter's.
        self.write_behind = write_behind
        self._uncollected: dict[bytes, int] = {}
        self._uncollected_at: dict[bytes, float] = {}
        self._uncollected_dropped = 0

    def __len__(self) -> int:
        return len(self.streaks)

    def reconfigure(self, config: FloodRule) -> None:
        """Take a reloaded rule's ``max_messages``, ``gap`` and status; the streaks stay.

        A streak keeps its last acceptance time, so the new gap applies to it from now on.
        ``scope`` and the sizes need a restart (`smpprelay.reload`).
        """
        self.config = config
        self.max_messages = config.max_messages
        self.streaks.gap = self.streaks.horizon = config.gap
        self._flood = reject(config.status, "flood")

    def key(self, message: Message) -> bytes:
        """The number the streak is counted for (with the app account under ``scope: client``)."""
        destination = message.fields.destination_addr
        if self.per_client:
            return message.account.encode() + b"\0" + destination
        return destination

    def check(self, message: Message, now: float) -> Verdict:
        """Reject a message that would exceed the streak; otherwise count it as in flight."""
        key = message.fields.destination_addr  # `key` written out: this runs per submit
        if self.per_client:
            key = message.account.encode() + b"\0" + key
        if self.streaks.claim(key, now, self.max_messages):
            return ACCEPT
        return self._flood

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """Count an accepted message in its streak at ``now``, or release one that was not."""
        key = message.fields.destination_addr  # `key` written out: this runs per submit
        if self.per_client:
            key = message.account.encode() + b"\0" + key
        if message_id is None:
            self.streaks.release(key)
        else:
            length = self.streaks.accept(key, now)
            if self.write_behind:
                self._uncollected[key] = length
                self._uncollected_at[key] = now

    def window_segment(self) -> bytes:
        """The streaks changed since the last call, as they were noted, packed to be written
        behind (one `window_segments.section`; b"" when there are none)."""
        noted, self._uncollected = self._uncollected, {}
        noted_at, self._uncollected_at = self._uncollected_at, {}
        if not noted:
            return b""
        # As noted when accepted: a streak evicted since is written anyway (it only ever
        # makes the next start stricter for the rest of its gap). Columns made in C (see
        # DedupFilter.window_segment).
        return window_segments.section(
            "flood", self.streaks.gap, noted, noted_at.values(), noted.values()
        )

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        """Put back the streaks still going at ``now`` (by the gap they were written with and by
        this one); return how many. Once, at start, before any traffic."""
        gap = self.streaks.gap
        live = sorted(
            (
                entry
                for entry in entries
                if entry.rule == self.name
                and entry.streak > 0
                and now < entry.expires
                and now - entry.at < gap
            ),
            key=lambda entry: entry.at,  # the table keeps acceptance order (stable: ties stay)
        )
        restore = self.streaks.restore
        for entry in live:
            restore(entry.key, entry.at, entry.streak)
        self.metrics.flood_entries.set(len(self.streaks))
        return len(live)

    def forget(self, now: float) -> int:
        """Forget the streaks that have ended; return how many. Run about once a second."""
        streaks = self.streaks
        removed = streaks.expire(now)
        self.metrics.flood_entries.set(len(streaks))
        if streaks.evicted > self._evictions_logged:
            self.log.warn(
                "flood: {n} streaks forgotten before they ended (flood.max_entries {max} reached)",
                n=streaks.evicted - self._evictions_logged,
                max=streaks.max_entries,
            )
            self._evictions_logged = streaks.evicted
        self._uncollected_dropped = bound_uncollected(
            self._uncollected,
            UNCOLLECTED_MAX,
            self._uncollected_at,
            self.log,
            "flood: streaks",
            self._uncollected_dropped,
        )
        return removed
