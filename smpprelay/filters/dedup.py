"""The duplicate rule: a message identical to one accepted less than ``window`` s ago is not sent.

Identical means the same source, destination, data_coding and content (for a concatenated
message the glued content; its reference does not count), and with ``scope: client`` the same
app account; with ``scope: upstream`` (the default) every app shares one window, because the
operator counts per account and all apps share ours. A message is remembered by a 12-byte
key: the interpreter's 64-bit hash of those fields (SipHash, keyed afresh in every process, so
nobody outside can aim for a collision) and the content's length. That is a 20-byte record in
`DedupWindow` with its time, so memory does not grow with the text, and it costs a fifth of a
BLAKE2b digest. Two different messages share a key about once in 10^13 lookups at a million
live entries. Such a key means nothing to the next process, so a window written to a durable
store is keyed instead by a 64-bit BLAKE2b digest keyed with the store's ``secret`` (the same
across restarts, never known outside): stable between processes, and still out of reach of
anyone aiming for a collision, at about 0.6 us more per message.

Only messages the operator accepted enter the window, from the moment it accepted them: a
message that passes is first reserved as in flight, and an identical one arriving meanwhile is
rejected (``in_flight``, even with ``action: replay``, since there is no id to replay yet);
``settle`` then records it, or releases it so that a retry after a temporary failure goes
through. The key of a message in flight is kept with the message (by identity) until it is
settled, so a message is hashed once. A message released because the operator did not answer
in time and then accepted by its late answer is settled again with its id and recorded then.

Write-behind: every acceptance also notes its key, id and time (two dict stores per accepted
message); `window_segment`, called ten times a second, packs the noted keys with the time the
window holds for them into one section (`smpprelay.store.window_segments`), and
`restore_windows` puts entries loaded at start back into the window.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Sequence
from typing import ClassVar

from twisted.logger import Logger

from smpprelay.config import DedupRule
from smpprelay.filters.base import HoldsNothing, bound_uncollected
from smpprelay.message import ACCEPT, Message, Verdict, reject
from smpprelay.metrics import Metrics
from smpprelay.store import WindowEntry, window_segments
from smpprelay.store.windows import DEDUP_KEY_SIZE, DedupWindow

KEY_SIZE = DEDUP_KEY_SIZE
_KEY = struct.Struct("<qI")  # hash of the fields, length of the content
_LENGTH = struct.Struct("<I")  # the content's length, after a keyed digest
# The lengths of the account, source and destination, then data_coding: what comes after them
# in the digest's input is unambiguous ("ab", "c" differs from "a", "bc").
_LENGTHS = struct.Struct("<HHHB")
_DIGEST_SIZE = DEDUP_KEY_SIZE - _LENGTH.size
# Accepted keys noted for `window_segment` and not collected yet, at most: a relay that does
# not write its windows behind (or stalls) must not grow this without end. The oldest go.
UNCOLLECTED_MAX = 1 << 17


def _digest_key(secret: bytes) -> bytes:
    """A BLAKE2b key (at most 64 bytes) standing for ``secret``."""
    if len(secret) <= hashlib.blake2b.MAX_KEY_SIZE:
        return secret
    return hashlib.blake2b(secret, digest_size=hashlib.blake2b.MAX_KEY_SIZE).digest()


def keyed_digest(secret: bytes) -> hashlib.blake2b:
    """A BLAKE2b keyed with ``secret``, ready for `stable_key` (copied per message)."""
    return hashlib.blake2b(digest_size=_DIGEST_SIZE, key=_digest_key(secret))


def stable_key(keyed: hashlib.blake2b, per_client: bool, message: Message) -> bytes:
    """The key identical messages share, the same in every process that holds the secret
    ``keyed`` stands for (`keyed_digest`): the dedup rule's key with a durable store, and the
    shared rule's in Redis (`smpprelay.shared.windows`)."""
    fields = message.fields
    content = message.content
    account = message.account.encode() if per_client else b""
    source, destination = fields.source_addr, fields.destination_addr
    digest = keyed.copy()
    # Fed piece by piece: the same digest as of the pieces joined, without copying them.
    update = digest.update
    update(_LENGTHS.pack(len(account), len(source), len(destination), fields.data_coding))
    update(account)
    update(source)
    update(destination)
    update(content)
    return digest.digest() + _LENGTH.pack(len(content))


class DedupFilter(HoldsNothing):
    """Rejects (or replays) a message identical to one accepted less than ``window`` s ago."""

    name: ClassVar[str] = "dedup"
    settles: ClassVar[bool] = True
    log = Logger()

    def __init__(
        self,
        config: DedupRule,
        metrics: Metrics,
        secret: bytes | None = None,
        write_behind: bool = True,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.replay = config.action == "replay"
        self.per_client = config.scope == "client"
        self.window = DedupWindow(
            config.window, config.max_entries, keep_ids=self.replay, young_max=config.fast_entries
        )
        self._keys: dict[Message, bytes] = {}  # messages in flight (by identity) -> their keys
        self._duplicate = reject(config.status, "duplicate")
        self._in_flight = reject(config.status, "in_flight")
        self._evictions_logged = 0
        # Keyed and ready: a copy per message skips absorbing the key's block again.
        self._keyed = keyed_digest(secret or b"")
        if secret is not None:
            # Chosen once here, not tested per message.
            self.key = functools.partial(stable_key, self._keyed, self.per_client)  # type: ignore[method-assign]
        # Accepted since the last `window_segment`: key -> the id the app was given, and ->
        # when (noted only when a durable store collects them). Two dicts in step, not one of
        # (time, id) pairs: a tuple per accepted message is one more object for the garbage
        # collector to count (measured: it cost more than the second dict's store).
        self.write_behind = write_behind
        self._uncollected: dict[bytes, bytes] = {}
        self._uncollected_at: dict[bytes, float] = {}
        self._uncollected_dropped = 0

    def __len__(self) -> int:
        return len(self.window)

    def reconfigure(self, config: DedupRule) -> None:
        """Take a reloaded rule's window length and status; the window's entries stay.

        Entries keep their acceptance time, so the new length applies to each of them from
        now on. ``action``, ``scope`` and the sizes need a restart (`smpprelay.reload`).
        """
        self.config = config
        self.window.window = self.window.horizon = config.window
        self._duplicate = reject(config.status, "duplicate")
        self._in_flight = reject(config.status, "in_flight")

    def key(self, message: Message) -> bytes:
        """The key that identical messages share, from the interpreter's hash (this process
        only); a rule given a secret uses `stable_key` instead."""
        fields = message.fields
        content = message.content
        account = message.account if self.per_client else ""
        # A tuple keeps the fields apart: ("ab", "c") and ("a", "bc") hash differently.
        fields_hash = hash(
            (account, fields.source_addr, fields.destination_addr, fields.data_coding, content)
        )
        return _KEY.pack(fields_hash, len(content))

    def check(self, message: Message, now: float) -> Verdict:
        """Reject (or replay) a duplicate; otherwise reserve the message as in flight."""
        key = self.key(message)
        found = self.window.claim(key, now)
        if found is True:
            self._keys[message] = key
            return ACCEPT
        if found is False:
            return self._in_flight
        if self.replay:
            return Verdict("replay", message_id=found)
        return self._duplicate

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """Record an accepted message from ``now`` on, or release one that did not get through."""
        key = self._keys.pop(message, None)
        if key is None:
            if message_id is None:
                return  # not one this rule let through, or already released
            # Accepted after it was released: the operator answered after its timeout, and
            # a retry of it must be answered as a duplicate.
            key = self.key(message)
        if message_id is None:
            self.window.release(key)
        else:
            # The app knows the message by the relay's id when it was given one.
            message_id = message.app_message_id or message_id
            self.window.accept(key, now, message_id)
            if self.write_behind:
                self._uncollected[key] = message_id
                self._uncollected_at[key] = now

    def window_segment(self) -> bytes:
        """The messages accepted since the last call, packed to be written behind (one
        `window_segments.section`; b"" when there are none)."""
        noted, self._uncollected = self._uncollected, {}
        noted_at, self._uncollected_at = self._uncollected_at, {}
        if not noted:
            return b""
        # As noted when accepted: one evicted since is written anyway (the next start is then
        # stricter about it for the rest of its window). Made with C-speed bulk operations,
        # no Python object per entry (a WindowEntry each cost 0.16 us).
        return window_segments.section(
            "dedup", self.window.window, noted, noted_at.values(), None, noted.values(), KEY_SIZE
        )

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        """Put back the dedup entries still live at ``now`` (by the window they were written
        with and by this one); return how many. Once, at start, before any traffic."""
        span = self.window.window
        live = sorted(
            (
                entry
                for entry in entries
                if entry.rule == self.name
                and len(entry.key) == KEY_SIZE
                and now < entry.expires
                and now - entry.at < span
            ),
            key=lambda entry: entry.at,  # the window keeps acceptance order (stable: ties stay)
        )
        restore = self.window.restore
        for entry in live:
            restore(entry.key, entry.at, entry.message_id or b"")
        self.metrics.dedup_entries.set(len(self.window))
        return len(live)

    def forget(self, now: float) -> int:
        """Forget the messages whose window has ended; return how many. Run about once a second."""
        window = self.window
        removed = window.expire(now)
        self.metrics.dedup_entries.set(len(window))
        if window.evicted > self._evictions_logged:
            self.log.warn(
                "dedup: {n} messages forgotten before their window ended "
                "(dedup.max_entries {max} reached)",
                n=window.evicted - self._evictions_logged,
                max=window.max_entries,
            )
            self._evictions_logged = window.evicted
        self._uncollected_dropped = bound_uncollected(
            self._uncollected,
            UNCOLLECTED_MAX,
            self._uncollected_at,
            self.log,
            "dedup: accepted messages",
            self._uncollected_dropped,
        )
        return removed
