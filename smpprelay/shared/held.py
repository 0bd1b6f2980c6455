"""query_sm, cancel_sm and replace_sm of a held part: what either concat rule answers.

A part the concat rule holds is known to its app by the relay id it was answered with
(``app_message_id``). `smpprelay.operations.queries` finds it, drops its message or replaces
its text through `HeldParts`, which both rules answer with Deferreds: `SharedConcat` (the
parts are in Redis, possibly held through another instance) itself, `ConcatFilter` (in this
process) through `LocalHeld`. Each call names the part by its account and id again, so what
changed between the lookup and the action (the message completed, expired, was cancelled)
is seen, never acted on blindly.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from twisted.internet.defer import Deferred, succeed

from smpprelay.filters.base import Dropped
from smpprelay.filters.concat import ConcatFilter, OpenConcat
from smpprelay.message import Message
from smpprelay.pdu import Status


class HeldRef(NamedTuple):
    """A held part as its rule has it: the part (frame, fields, ``app_message_id``,
    ``app_iso``), its place in its message, when the message's first part came, and whether
    the operator has the message now (then it can no longer be cancelled nor replaced)."""

    part: Message
    sequence: int
    first: float
    with_operator: bool


class HeldParts(Protocol):
    """The held parts of the concat rule, for query_sm, cancel_sm and replace_sm."""

    def find_held_part(self, account: str, app_id: bytes) -> Deferred[HeldRef | None]:
        """The part ``account`` was given ``app_id`` for, while it is held (None otherwise:
        another account's id is as unknown as any)."""
        ...

    def cancel_held_part(self, held: HeldRef, now: float) -> Deferred[Dropped | None]:
        """Drop the message ``held`` is a part of (closed: its later parts are refused) and
        return its held parts; None when it is no longer held, or the operator has it."""
        ...

    def replace_held_part(self, held: HeldRef, part: Message) -> Deferred[int]:
        """Hold ``part`` (same id, new frame) in place of ``held``: ESME_ROK; ESME_RMSGQFUL
        when the held-bytes caps leave no room; ESME_RREPLACEFAIL when the operator has its
        message now; ESME_RINVMSGID when it is no longer held."""
        ...


class LocalHeld:
    """`HeldParts` of the in-process rule (answers at once)."""

    def __init__(self, rule: ConcatFilter) -> None:
        self.rule = rule

    def find_held_part(self, account: str, app_id: bytes) -> Deferred[HeldRef | None]:
        found = self.rule.find_held(account, app_id)
        if found is None:
            return succeed(None)
        entry, sequence, part = found
        return succeed(HeldRef(part, sequence, entry.first, entry.glued is not None))

    def cancel_held_part(self, held: HeldRef, now: float) -> Deferred[Dropped | None]:
        found = self._again(held.part)
        if found is None or found[0].glued is not None:
            return succeed(None)
        return succeed(self.rule.cancel_held(found[0]))

    def replace_held_part(self, held: HeldRef, part: Message) -> Deferred[int]:
        found = self._again(part)
        if found is None:
            return succeed(Status.ESME_RINVMSGID)
        entry, sequence, _ = found
        if entry.glued is not None:
            return succeed(Status.ESME_RREPLACEFAIL)
        if not self.rule.replace_held(entry, sequence, part):
            return succeed(Status.ESME_RMSGQFUL)
        return succeed(Status.ESME_ROK)

    def _again(self, part: Message) -> tuple[OpenConcat, int, Message] | None:
        app_id = part.app_message_id
        return self.rule.find_held(part.account, app_id) if app_id else None
