"""The concatenation rule: every part of a message must arrive within ``window`` seconds.

A concatenated message is (account, source, destination, reference, total), its parts
recognised by ``message.concat`` (UDH IE 0x00 or 0x08, or the sar_* TLVs; `read_message` parses
them, this rule validates them). Parts may arrive in any order. Each part but the last is held
(``Verdict("hold")``: the relay answers it with the id it gave the part before the rules saw
it, ``app_message_id``); the part that completes the message is accepted with a replacement,
the glued message: the completing part carrying every part in sequence order in ``parts`` and
their joined content, which goes on to the next rules.

Rejected: a malformed header (total 0 or 1, sequence 0 or above total); a part more than
``window`` seconds after its message's first part (``late``, also once the message has expired
or completed: closed messages are remembered for one more window); a part sent twice
(``duplicate_part``, also once its message is complete); a reference reused while its message
is open with a different total (``reference_reused``). A part that would open a message past
``max_open`` open messages in total, or ``max_open_per_account`` for its account, is answered
``ESME_RMSGQFUL`` (``full``), a status apps retry.

`expire` (run about once a second) drops the messages whose window has ended and returns them
(`Dropped`), so the relay can send their held parts' receipts; `drop_all` does so for every
open message when the relay stops. Open messages are kept in a dict keyed by
(account, source, destination, reference): with a fixed window the order of first parts is
the order of expiry, so expiry scans from the front and stops at the first message still open.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import attrs

from smpprelay.config import ConcatRule
from smpprelay.filters.base import Dropped
from smpprelay.message import ACCEPT, Message, Verdict, accept, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status

HOLD = Verdict("hold")

# (account, source, destination, reference): at most one open message each.
OpenKey = tuple[str, bytes, bytes, int]
# (account, source, destination, reference, total): a message that has closed.
ClosedKey = tuple[str, bytes, bytes, int, int]


class OpenConcat:
    """A concatenated message whose parts are not all in: its held parts and first part's time."""

    __slots__ = ("account", "closed_key", "first", "key", "received", "total")

    def __init__(self, key: OpenKey, closed_key: ClosedKey, first: float) -> None:
        self.key = key
        self.closed_key = closed_key
        self.account = key[0]
        self.total = closed_key[4]
        self.first = first  # when its first part arrived
        self.received: dict[int, Message] = {}  # sequence -> part, in the order they arrived

    def __repr__(self) -> str:
        return (
            f"<OpenConcat {self.account} ref {self.key[3]}: "
            f"{len(self.received)}/{self.total} parts, first at {self.first}>"
        )


class ConcatFilter:
    """Holds the parts of a concatenated message until it is whole, within its window."""

    name: ClassVar[str] = "concat"
    settles: ClassVar[bool] = False  # a glued message's fate does not change the window
    holds_parts: ClassVar[bool] = True

    def __init__(self, config: ConcatRule, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.window = config.window
        self.max_open = config.max_open
        self.max_open_per_account = config.max_open_per_account
        # Closed messages are remembered as long as they can still have stragglers; bounded
        # like the open ones, the oldest forgotten first.
        self.max_closed = config.max_open
        self._open: dict[OpenKey, OpenConcat] = {}  # in order of first parts
        self._per_account: dict[str, int] = {}  # open messages per account
        # A closed (completed or expired) message -> its first part's time.
        self._closed: OrderedDict[ClosedKey, float] = OrderedDict()
        self._malformed = reject(config.status, "malformed")
        self._late = reject(config.status, "late")
        self._duplicate = reject(config.status, "duplicate_part")
        self._reused = reject(config.status, "reference_reused")
        self._full = reject(Status.ESME_RMSGQFUL, "full")
        # Read when scraped: exact, and nothing to do per part.
        metrics.concat_open.set_function(self._open.__len__)

    @property
    def open_count(self) -> int:
        """Messages waiting for parts."""
        return len(self._open)

    def __len__(self) -> int:
        return len(self._open)

    def check(self, message: Message, now: float) -> Verdict:
        """Hold a part, glue the part that completes its message, or reject a bad part."""
        concat = message.concat
        if concat is None:
            return ACCEPT
        reference, total, sequence, _ = concat
        if total < 2 or sequence < 1 or sequence > total:
            return self._malformed
        fields = message.fields
        key = (message.account, fields.source_addr, fields.destination_addr, reference)
        entry = self._open.get(key)
        if entry is not None and entry.total == total:
            if now > entry.first + self.window:
                return self._late  # its window has ended; expire has not dropped it yet
            received = entry.received
            if sequence in received:
                return self._duplicate
            received[sequence] = message
            if len(received) < total:
                return HOLD
            self._close(entry)
            parts = tuple(received[number] for number in range(1, total + 1))
            content = b"".join([part.content for part in parts])
            return accept(attrs.evolve(message, parts=parts, content=content))
        # No open message with this total: a straggler of a closed one, a new message, or a
        # reference reused while another message holds it.
        closed_key = (*key, total)
        first = self._closed.get(closed_key)
        if first is not None:
            window = self.window
            if now <= first + window:
                return self._duplicate  # its message is already complete
            if now <= first + 2 * window:
                return self._late
            del self._closed[closed_key]  # past its memory: this is a new message
        if entry is not None:
            return self._reused
        account = key[0]
        count = self._per_account.get(account, 0)
        if count >= self.max_open_per_account or len(self._open) >= self.max_open:
            return self._full
        entry = OpenConcat(key, closed_key, now)
        entry.received[sequence] = message
        self._open[key] = entry
        self._per_account[account] = count + 1
        return HOLD

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """Nothing to do: a glued message's fate does not change the window."""

    def expire(self, now: float) -> list[Dropped]:
        """Drop and return the messages whose window has ended. Run about once a second."""
        window = self.window
        ended: list[OpenConcat] = []
        for entry in self._open.values():
            if now <= entry.first + window:
                break  # first parts are in order: every later message is still open
            ended.append(entry)
        for entry in ended:
            self._close(entry)
        # Forget closed messages that can no longer have stragglers.
        closed = self._closed
        horizon = 2 * window
        while closed:
            key = next(iter(closed))
            if now <= closed[key] + horizon:
                break
            closed.popitem(last=False)
        return [
            Dropped(entry.account, entry.first, list(entry.received.values()), "expired")
            for entry in ended
        ]

    def drop_all(self) -> list[Dropped]:
        """Drop and return every open message (at shutdown)."""
        dropped = [
            Dropped(entry.account, entry.first, list(entry.received.values()), "shutdown")
            for entry in self._open.values()
        ]
        self._open.clear()
        self._per_account.clear()
        return dropped

    def _close(self, entry: OpenConcat) -> None:
        """Remove an open message and remember it for stragglers."""
        key = entry.key
        del self._open[key]
        account = entry.account
        count = self._per_account[account] - 1
        if count:
            self._per_account[account] = count
        else:
            del self._per_account[account]
        closed = self._closed
        closed[entry.closed_key] = entry.first
        if len(closed) > self.max_closed:
            closed.popitem(last=False)
