"""What the relay's paths share (`smpprelay.relay`): the upstream it needs, the ids it issues
for held parts, and how an upstream outcome reads as a status."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.message import Message
from smpprelay.pdu import CommandId, Status
from smpprelay.pool import QueueFull
from smpprelay.routing import NoRoute

# registered_delivery bits asking for something that comes back as a deliver_sm about this
# message: an SMSC receipt (bits 1-0), SME acknowledgements (bits 3-2), intermediate (bit 4).
WANTS_RECEIPT = 0x1F

# What the operator (or the relay, for it) answers when a submit may go through if sent
# again: apps retry these, so a glued message refused with one keeps its held parts.
RETRYABLE = frozenset((Status.ESME_RTHROTTLED, Status.ESME_RSYSERR, Status.ESME_RMSGQFUL))

# The operator's answers that accept a message with its id: a data_sm is carried as a submit is.
ACCEPTING = frozenset((CommandId.submit_sm_resp, CommandId.data_sm_resp))


class Upstream(Protocol):
    """What the relay needs of the operator side (`smpprelay.upstream.UpstreamPool`)."""

    def submit(self, frame: bytes, account: str = "") -> Deferred[bytes]:
        """Send one submit_sm; fires with the operator's answer, fails when there is none."""
        ...

    def submit_cb(
        self, frame: bytes, account: str, outcome: Callable[[bytes | Failure], None]
    ) -> None:
        """`submit` for the hot path: ``outcome`` gets the answer or the failure, once."""
        ...

    def submit_all(self, frames: list[bytes], account: str = "") -> Deferred[list[bytes | Failure]]:
        """Send ``frames`` in order on one session, within its window and the operator's
        assembly limit; fires with each one's outcome (all refused if they cannot fit)."""
        ...


class MessageIds:
    """Ids the relay gives apps for parts it holds: unique across restarts (random prefix)."""

    def __init__(self) -> None:
        self._prefix = b"R" + os.urandom(4).hex().upper().encode()
        self._counter = itertools.count(1)

    def issue(self) -> bytes:
        """A fresh message id."""
        return b"%s%08X" % (self._prefix, next(self._counter))


def wants_receipt(message: Message) -> bool:
    """True when the app asked for a receipt (or another deliver_sm) about ``message``."""
    return bool(message.fields.registered_delivery & WANTS_RECEIPT)


def held_parts(message: Message) -> list[Message]:
    """The parts of a glued message answered when they were held: all but the completing one."""
    return [part for part in message.parts if part.app_message_id != message.app_message_id]


def status_of(answer: bytes | Failure) -> int:
    """The status an upstream outcome stands for: the operator's, or the relay's own."""
    if isinstance(answer, Failure):
        if answer.check(NoRoute):
            return Status.ESME_RINVDSTADR  # no configured upstream takes it
        return Status.ESME_RMSGQFUL if answer.check(QueueFull) else Status.ESME_RSYSERR
    return pdu.header(answer)[2]
