"""The duplicate rule: a message identical to one accepted less than ``window`` s ago is not sent.

Identical means the same source, destination, data_coding and content (for a concatenated
message the glued content; its reference does not count), and with ``scope: client`` the same
app account; with ``scope: upstream`` (the default) every app shares one window, because the
operator counts per account and all apps share ours. A message is remembered by a 12-byte
key: the interpreter's 64-bit hash of those fields (SipHash, keyed afresh in every process, so
nobody outside can aim for a collision) and the content's length. That is a 20-byte record in
`DedupWindow` with its time, so memory does not grow with the text, and it costs a fifth of a
BLAKE2b digest. Two different messages share a key about once in 10^13 lookups at a million
live entries. The key lives as long as the process, like the in-memory window it indexes; a
store shared between processes will need a digest that does not change between them.

Only messages the operator accepted enter the window, from the moment it accepted them: a
message that passes is first reserved as in flight, and an identical one arriving meanwhile is
rejected (``in_flight``, even with ``action: replay``, since there is no id to replay yet);
``settle`` then records it, or releases it so that a retry after a temporary failure goes
through. The key of a message in flight is kept with the message (by identity) until it is
settled, so a message is hashed once. A message released because the operator did not answer
in time and then accepted by its late answer is settled again with its id and recorded then.
"""

from __future__ import annotations

import struct
from typing import ClassVar

from twisted.logger import Logger

from smpprelay.config import DedupRule
from smpprelay.filters.base import HoldsNothing
from smpprelay.message import ACCEPT, Message, Verdict, reject
from smpprelay.metrics import Metrics
from smpprelay.store.windows import DEDUP_KEY_SIZE, DedupWindow

KEY_SIZE = DEDUP_KEY_SIZE
_KEY = struct.Struct("<qI")  # hash of the fields, length of the content


class DedupFilter(HoldsNothing):
    """Rejects (or replays) a message identical to one accepted less than ``window`` s ago."""

    name: ClassVar[str] = "dedup"
    settles: ClassVar[bool] = True
    log = Logger()

    def __init__(self, config: DedupRule, metrics: Metrics) -> None:
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

    def __len__(self) -> int:
        return len(self.window)

    def key(self, message: Message) -> bytes:
        """The key that identical messages share."""
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
            self.window.accept(key, now, message.app_message_id or message_id)

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
        return removed
