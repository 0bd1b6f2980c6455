"""The duplicate rule: a message identical to one accepted less than ``window`` s ago is not sent.

Identical means the same source, destination, data_coding and content (for a concatenated
message the glued content; its reference does not count), and with ``scope: client`` the same
app account; with ``scope: upstream`` (the default) every app shares one window, because the
operator counts per account and all apps share ours. A message is remembered by a 12-byte
BLAKE2b digest of those fields (a 20-byte record in `DedupWindow` with its time), so memory
does not grow with the text.

Only messages the operator accepted enter the window, from the moment it accepted them: a
message that passes is first reserved as in flight, and an identical one arriving meanwhile is
rejected (``in_flight``, even with ``action: replay``, since there is no id to replay yet);
``settle`` then records it, or releases it so that a retry after a temporary failure goes
through. The key of a message in flight is kept with the message (by identity) until it is
settled, so a message is hashed once.
"""

from __future__ import annotations

import struct
from hashlib import blake2b
from typing import ClassVar

from twisted.logger import Logger

from smpprelay.config import DedupRule
from smpprelay.message import ACCEPT, Message, Verdict, reject
from smpprelay.metrics import Metrics
from smpprelay.store.windows import DEDUP_KEY_SIZE, DedupWindow

KEY_SIZE = DEDUP_KEY_SIZE
# Lengths of the account, source and destination, and the data_coding; the content comes last,
# so its length needs no prefix.
_HEAD = struct.Struct(">HHHB")


class DedupFilter:
    """Rejects (or replays) a message identical to one accepted less than ``window`` s ago."""

    name: ClassVar[str] = "dedup"
    log = Logger()

    def __init__(self, config: DedupRule, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.replay = config.action == "replay"
        self.per_client = config.scope == "client"
        self.window = DedupWindow(config.window, config.max_entries, keep_ids=self.replay)
        self._hasher = blake2b(digest_size=KEY_SIZE)  # copied per key: cheaper than a new one
        self._keys: dict[Message, bytes] = {}  # messages in flight (by identity) -> their keys
        self._duplicate = reject(config.status, "duplicate")
        self._in_flight = reject(config.status, "in_flight")
        self._evictions_logged = 0

    def __len__(self) -> int:
        return len(self.window)

    def key(self, message: Message) -> bytes:
        """The digest that identical messages share."""
        fields = message.fields
        source = fields.source_addr
        destination = fields.destination_addr
        account = message.account.encode() if self.per_client else b""
        head = _HEAD.pack(len(account), len(source), len(destination), fields.data_coding)
        hasher = self._hasher.copy()
        hasher.update(b"".join((head, account, source, destination, message.content)))
        return hasher.digest()

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
            return  # not one this rule let through, or already settled
        if message_id is None:
            self.window.release(key)
        else:
            # The app knows the message by the relay's id when it was given one.
            self.window.accept(key, now, message.app_message_id or message_id)

    def expire(self, now: float) -> int:
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
        return removed
