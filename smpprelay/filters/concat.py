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
or completed: closed messages are remembered for one more window); another part in a place
already taken (``duplicate_part``, also once its message is complete; a held part sent again
byte for byte is answered with the id it was given, ``replay``: the app never read that
answer); a reference reused while its message is open with a different total
(``reference_reused``). A part that would open a message past
``max_open`` open messages in total, or ``max_open_per_account`` for its account, is answered
``ESME_RMSGQFUL`` (``full``), a status apps retry.

A glued message stays open while the operator has it: the relay tells the rule its fate
(`parts_settled`). Accepted (or refused for good, or refused by a later rule): the message
closes. Not accepted for a reason the app retries (``ESME_RTHROTTLED``, ``ESME_RSYSERR``,
``ESME_RMSGQFUL``): the held parts stay held until the window ends and the completing part is
let go, so the app's retry of the part that got the error completes the message again and every
part goes to the operator once more (a part the operator took the first time too: it needs all
of them to assemble the message). A held part sent again meanwhile is answered ``ESME_ROK``
with the id it was given (``replay``), since it is still held.

Memory: a held part keeps its frame (what goes upstream) and the fields its receipt needs, not
the decoded content (read again from the frame when the message is glued) nor the TLVs. Held
frames are counted: a part that would take them past ``max_held_bytes`` or its account past
``max_held_bytes_per_account`` is answered ``ESME_RMSGQFUL`` (``full``).

`expire` (run about once a second) drops the messages whose window has ended and returns them
(`Dropped`), so the relay can send their held parts' receipts; `drop_all` does so for every
open message when the relay stops. Open messages are kept in a dict keyed by
(account, source, destination, reference): with a fixed window the order of first parts is
the order of expiry, so expiry scans from the front and stops at the first message still open
(a message whose window ended while the operator has it stays until its fate is known).

Across a restart: every held part is in the store before its ``ESME_ROK``; `restore_part`
puts each back at start (outside the caps: they were accepted once), and `release_part`
undoes a hold whose write failed, so the app's retry (it is answered ``ESME_RMSGQFUL``) is held
again. Restored messages may come out of first-part order; the next `expire` sorts them first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import ClassVar

import attrs

from smpprelay.config import ConcatRule
from smpprelay.filters.base import Dropped, PartsOutcome
from smpprelay.message import ACCEPT, Message, Verdict, accept, glue, read_message, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.store import WindowEntry

HOLD = Verdict("hold")

# (account, source, destination, reference): at most one open message each.
OpenKey = tuple[str, bytes, bytes, int]
# (account, source, destination, reference, total): a message that has closed.
ClosedKey = tuple[str, bytes, bytes, int, int]

# What a held part costs beyond its frame once slimmed (`_slim`): the Message, its fields, the
# dict slot: about 1.1 KB, measured with tracemalloc (tests/filters/test_concat.py).
PART_OVERHEAD = 1536
# The octets of a held part's text its receipt quotes (`smpprelay.receipts.delivery_receipt`).
_RECEIPT_SAMPLE = 20


class OpenConcat:
    """A concatenated message whose parts are not all in: its held parts and first part's time."""

    __slots__ = (
        "account",
        "closed_key",
        "first",
        "glued",
        "held_bytes",
        "key",
        "received",
        "retrying",
        "total",
    )

    def __init__(self, key: OpenKey, closed_key: ClosedKey, first: float) -> None:
        self.key = key
        self.closed_key = closed_key
        self.account = key[0]
        self.total = closed_key[4]
        self.first = first  # when its first part arrived
        self.received: dict[int, Message] = {}  # sequence -> part, in the order they arrived
        self.held_bytes = 0  # what its held parts count against max_held_bytes
        # The glued message while the operator has it (its fate not known yet), else None.
        self.glued: Message | None = None
        # True once a glued send failed for a reason the app retries: parts sent again are
        # answered as held, not refused as duplicates.
        self.retrying = False

    def __repr__(self) -> str:
        return (
            f"<OpenConcat {self.account} ref {self.key[3]}: "
            f"{len(self.received)}/{self.total} parts, first at {self.first}>"
        )


class ConcatFilter:
    """Holds the parts of a concatenated message until it is whole, within its window."""

    name: ClassVar[str] = "concat"
    # A single message's fate does not concern this rule; a glued one's comes to
    # `parts_settled` (called for the rules that hold parts), so `settle` is never called.
    settles: ClassVar[bool] = False
    holds_parts: ClassVar[bool] = True
    passes_plain: ClassVar[bool] = True  # `check` accepts a message with no concat as it is

    def __init__(
        self,
        config: ConcatRule,
        metrics: Metrics,
        transcode: Callable[[Message], Message] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        # The encoding rule's `transcode_glued`: parts it judges only as a whole (IA5) are
        # transcoded here, when glued, so that this rule keeps (and `parts_settled` is given)
        # the message that goes upstream.
        self.transcode = transcode
        self.window = config.window
        self.max_open = config.max_open
        self.max_open_per_account = config.max_open_per_account
        # Closed messages are remembered as long as they can still have stragglers; bounded
        # like the open ones, the oldest forgotten first.
        self.max_closed = config.max_open
        self.max_held_bytes = config.max_held_bytes
        self.max_held_bytes_per_account = config.max_held_bytes_per_account
        self._open: dict[OpenKey, OpenConcat] = {}  # in order of first parts
        self._per_account: dict[str, int] = {}  # open messages per account
        self.held_bytes = 0  # held parts' frames and overhead, in total
        self._bytes_per_account: dict[str, int] = {}
        # Messages given up outside `expire` (a retryable failure after their window ended),
        # handed back by the next `expire` so that their held parts get receipts.
        self._given_up: list[Dropped] = []
        # A closed (completed or expired) message -> its first part's time.
        self._closed: OrderedDict[ClosedKey, float] = OrderedDict()
        self._malformed = reject(config.status, "malformed")
        self._late = reject(config.status, "late")
        self._duplicate = reject(config.status, "duplicate_part")
        self._reused = reject(config.status, "reference_reused")
        self._full = reject(Status.ESME_RMSGQFUL, "full")
        # A restored message opened out of first-part order: `expire` sorts before it scans.
        self._unordered = False
        # Read when scraped: exact, and nothing to do per part.
        metrics.concat_open.set_function(self._open.__len__)
        metrics.concat_held_bytes.set_function(lambda: self.held_bytes)

    def reconfigure(self, config: ConcatRule) -> None:
        """Take a reloaded rule's values; the open messages stay, judged by them from now."""
        self.config = config
        self.window = config.window
        self.max_open = self.max_closed = config.max_open
        self.max_open_per_account = config.max_open_per_account
        self.max_held_bytes = config.max_held_bytes
        self.max_held_bytes_per_account = config.max_held_bytes_per_account
        self._malformed = reject(config.status, "malformed")
        self._late = reject(config.status, "late")
        self._duplicate = reject(config.status, "duplicate_part")
        self._reused = reject(config.status, "reference_reused")

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
                held = received[sequence]
                if entry.glued is None and (
                    entry.retrying or held.frame[16:] == message.frame[16:]
                ):
                    # Still held (after a failed send, or sent again by an app that never read
                    # its answer, say across a restart): answered as it was the first time.
                    return Verdict(
                        "replay", reason="held_part_resent", message_id=held.app_message_id
                    )
                return self._duplicate
            if len(received) + 1 < total:
                return self._hold(entry, sequence, message)
            received[sequence] = message
            parts = tuple(received[number] for number in range(1, total + 1))
            # Held parts keep no content (`_slim`): read it again from their frames.
            contents = [
                part.content
                if part is message
                else read_message(part.account, part.frame, part.app_iso).content
                for part in parts
            ]
            glued = glue(message, parts, contents, self.transcode)
            entry.glued = glued  # open until the operator's answer (`parts_settled`)
            return accept(glued)
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
        if self._no_room(account, message):
            return self._full
        entry = OpenConcat(key, closed_key, now)
        self._open[key] = entry
        self._per_account[account] = count + 1
        return self._hold(entry, sequence, message)

    def _no_room(self, account: str, message: Message) -> bool:
        """True when holding ``message`` would pass a held-bytes cap."""
        size = len(message.frame) + PART_OVERHEAD
        return (
            self.held_bytes + size > self.max_held_bytes
            or self._bytes_per_account.get(account, 0) + size > self.max_held_bytes_per_account
        )

    def _hold(self, entry: OpenConcat, sequence: int, message: Message) -> Verdict:
        """Hold a part of an open message, if the held-bytes caps allow."""
        account = entry.account
        if entry.received and self._no_room(account, message):
            return self._full
        size = len(message.frame) + PART_OVERHEAD
        entry.received[sequence] = _slim(message)
        entry.held_bytes += size
        self.held_bytes += size
        per_account = self._bytes_per_account
        per_account[account] = per_account.get(account, 0) + size
        return HOLD

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """Never called (``settles`` is False): a glued message's fate comes to `parts_settled`."""

    def window_segment(self) -> bytes:
        """Nothing: this rule's state is its held parts, each written before its answer."""
        return b""

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        """Nothing to put back: this rule keeps no window."""
        return 0

    def restore_part(self, part: Message, first: float) -> None:
        """Put back a part held before a restart, into its open message (opened with ``first``
        as its first part's time if it is not open yet). Counted in the held bytes but not
        capped: it was accepted once. Raises `ValueError` for a part that cannot be held (no
        valid header, its sequence held already, another total under its reference)."""
        concat = part.concat
        if concat is None:
            raise ValueError("not a concatenated part")
        reference, total, sequence, _ = concat
        if total < 2 or sequence < 1 or sequence > total:
            raise ValueError(f"malformed part: {sequence} of {total}")
        fields = part.fields
        key = (part.account, fields.source_addr, fields.destination_addr, reference)
        entry = self._open.get(key)
        if entry is None:
            entry = OpenConcat(key, (*key, total), first)
            opened = self._open
            if opened and first < next(reversed(opened.values())).first:
                self._unordered = True
            opened[key] = entry
            account = key[0]
            self._per_account[account] = self._per_account.get(account, 0) + 1
        elif entry.total != total:
            raise ValueError(f"reference {reference} held with {entry.total} parts, not {total}")
        elif sequence in entry.received:
            raise ValueError(f"part {sequence} of reference {reference} held twice")
        elif first < entry.first:
            entry.first = first  # the window runs from the earliest part
            self._unordered = True
        # Held like any part; all ``total`` restored (never written so) just expire.
        size = len(part.frame) + PART_OVERHEAD
        entry.received[sequence] = _slim(part)
        entry.held_bytes += size
        self.held_bytes += size
        per_account = self._bytes_per_account
        per_account[entry.account] = per_account.get(entry.account, 0) + size

    def release_part(self, part: Message) -> None:
        """Undo the hold the last `check` made for ``part`` (its write failed): the part goes,
        and a message left with no part is forgotten, not closed, so the retry opens it anew.
        Nothing happens if ``part`` (by its ``app_message_id``) is not held."""
        concat = part.concat
        if concat is None:
            return
        fields = part.fields
        key = (part.account, fields.source_addr, fields.destination_addr, concat.reference)
        entry = self._open.get(key)
        if entry is None or entry.total != concat.total:
            return
        held = entry.received.get(concat.sequence)
        if held is None or held.app_message_id != part.app_message_id:
            return  # held under another id: not this check's hold
        del entry.received[concat.sequence]
        size = len(held.frame) + PART_OVERHEAD
        entry.held_bytes -= size
        self.held_bytes -= size
        account = entry.account
        left = self._bytes_per_account[account] - size
        if left:
            self._bytes_per_account[account] = left
        else:
            del self._bytes_per_account[account]
        if entry.received or entry.glued is not None:
            return
        del self._open[key]
        count = self._per_account[account] - 1
        if count:
            self._per_account[account] = count
        else:
            del self._per_account[account]

    def parts_settled(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        """What became of a glued message this rule passed on: close it, or keep its held parts
        for the app's retry of the completing part (``retry``, within its window)."""
        concat = message.concat
        if concat is None:
            return
        fields = message.fields
        key = (message.account, fields.source_addr, fields.destination_addr, concat.reference)
        entry = self._open.get(key)
        if entry is None or entry.glued is not message:
            return  # not one this rule has open (dropped at shutdown)
        entry.glued = None
        if outcome == "retry":
            # The completing part was never held (nor counted): it goes, so its retry completes
            # the message again.
            del entry.received[concat.sequence]
            if now <= entry.first + self.window:
                entry.retrying = True
                return
            # Its window ended while the operator had it: no retry can complete it, and its
            # held parts were answered ESME_ROK, so they get receipts (the next `expire`).
            self._given_up.append(
                Dropped(entry.account, entry.first, list(entry.received.values()), "expired")
            )
        self._close(entry)

    # --- query_sm, cancel_sm, replace_sm of a held part (smpprelay.operations.queries) ----

    def find_held(self, account: str, app_id: bytes) -> tuple[OpenConcat, int, Message] | None:
        """The open message, sequence and part ``account`` was given ``app_id`` for. A scan of
        the open messages: these requests are rare, and an index would cost every part."""
        for entry in self._open.values():
            if entry.account == account:
                for sequence, part in entry.received.items():
                    if part.app_message_id == app_id:
                        return entry, sequence, part
        return None

    def cancel_held(self, entry: OpenConcat) -> Dropped:
        """Drop an open message (cancel_sm); closed, so its later parts are refused."""
        self._close(entry)
        return Dropped(entry.account, entry.first, list(entry.received.values()), "cancelled")

    def replace_held(self, entry: OpenConcat, sequence: int, part: Message) -> bool:
        """Hold ``part`` (a new frame for the same id: replace_sm) in place of the part held at
        ``sequence``; False when the held-bytes caps leave no room for it."""
        account = entry.account
        delta = len(part.frame) - len(entry.received[sequence].frame)
        per_account = self._bytes_per_account
        if delta > 0 and (
            self.held_bytes + delta > self.max_held_bytes
            or per_account.get(account, 0) + delta > self.max_held_bytes_per_account
        ):
            return False
        entry.received[sequence] = _slim(part)
        entry.held_bytes += delta
        self.held_bytes += delta
        per_account[account] = per_account.get(account, 0) + delta
        return True

    def expire(self, now: float) -> list[Dropped]:
        """Drop and return the messages whose window has ended. Run about once a second."""
        window = self.window
        if self._unordered:
            self._sort_open()
        ended: list[OpenConcat] = []
        for entry in self._open.values():
            if now <= entry.first + window:
                break  # first parts are in order: every later message is still open
            if entry.glued is None:
                ended.append(entry)
            # else: the operator has it; `parts_settled` closes it
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
        given_up, self._given_up = self._given_up, []
        return given_up + [
            Dropped(entry.account, entry.first, list(entry.received.values()), "expired")
            for entry in ended
        ]

    def _sort_open(self) -> None:
        """Put the open messages back in first-part order (after restores out of order)."""
        ordered = sorted(self._open.items(), key=lambda item: item[1].first)
        # In place: the open-messages gauge reads this dict's length.
        self._open.clear()
        self._open.update(ordered)
        self._unordered = False

    def drop_all(self) -> list[Dropped]:
        """Drop and return every open message (at shutdown).

        A glued message the operator has is dropped without its parts: the operator's answer,
        not the relay stopping, decides what became of them.
        """
        given_up, self._given_up = self._given_up, []
        dropped = given_up + [
            Dropped(entry.account, entry.first, list(entry.received.values()), "shutdown")
            for entry in self._open.values()
            if entry.glued is None
        ]
        self._open.clear()
        self._per_account.clear()
        self._bytes_per_account.clear()
        self.held_bytes = 0
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
        if entry.held_bytes:
            self.held_bytes -= entry.held_bytes
            left = self._bytes_per_account[account] - entry.held_bytes
            if left:
                self._bytes_per_account[account] = left
            else:
                del self._bytes_per_account[account]
            entry.held_bytes = 0
        closed = self._closed
        closed[entry.closed_key] = entry.first
        if len(closed) > self.max_closed:
            closed.popitem(last=False)


def _slim(part: Message) -> Message:
    """What a held part must keep: its frame (sent upstream), the fields its receipt and the
    rules read, not its TLVs (a message_payload is a second copy of the frame's text) nor its
    content (a third: read again from the frame when the message is glued)."""
    fields = part.fields
    sample = fields.text[:_RECEIPT_SAMPLE]
    return attrs.evolve(part, fields=fields._replace(short_message=sample, tlvs=()), content=b"")
