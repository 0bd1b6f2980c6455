"""The simulated SMSC's messages, by id: their state, and query_sm, cancel_sm and replace_sm.

A message is ``ENROUTE`` from its submit until ``receipt_delay`` seconds later, when it becomes
final with the configured ``stat`` (``DELIVRD`` by default) and its receipt, if it asked for
one, goes out. Until then cancel_sm deletes it (state ``DELETED``, no receipt) and replace_sm
changes its text (the receipt quotes the new one); once final, both are refused
(``ESME_RCANCELFAIL``, ``ESME_RREPLACEFAIL``). An id this system_id did not submit, or one
forgotten (the newest ``keep`` are kept), is ``ESME_RINVMSGID``; a ``source_addr`` given and
not the message's is ``ESME_RINVSRCADR``. query_sm_resp carries ``final_date`` (empty while
en route), ``message_state`` (3.4 section 5.2.28) and ``error_code`` 0.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from smpprelay import pdu
from smpprelay.pdu import CommandId, DecodeError, ShortMessage, Status
from smpprelay.receipts import delivery_receipt

QUERIES = frozenset((CommandId.query_sm, CommandId.cancel_sm, CommandId.replace_sm))

# (system_id, a deliver_sm): how a receipt leaves.
Send = Callable[[str, bytes], None]
# (the message, its id, the stat it ended with, submitted, done): its receipt.
MakeReceipt = Callable[[ShortMessage, bytes, str, float, float], bytes]


@attrs.define
class Tracked:
    """One accepted message."""

    system_id: str
    message: ShortMessage
    submitted: float
    receipt: bool  # a receipt is due when it becomes final
    stat: str  # what it becomes
    state: str = "ENROUTE"
    final: float = 0.0
    call: IDelayedCall | None = None


def receipt_due(registered_delivery: int, stat: str) -> bool:
    """Whether a message asking ``registered_delivery`` gets a receipt saying ``stat``: always
    (1), or only on failure (2)."""
    wanted = registered_delivery & 0x03
    return wanted == 1 or (wanted == 2 and stat != "DELIVRD")


class MessageStates:
    """The newest ``keep`` messages by id, each becoming final ``delay`` seconds after its
    submit."""

    def __init__(
        self,
        clock: IReactorTime,
        send: Send,
        keep: int = 10_000,
        make_receipt: MakeReceipt = delivery_receipt,
    ) -> None:
        self.clock = clock
        self.send = send
        self.make_receipt = make_receipt
        self.keep = keep
        self.messages: OrderedDict[bytes, Tracked] = OrderedDict()

    def track(
        self,
        system_id: str,
        message_id: bytes,
        message: ShortMessage,
        receipt: bool,
        delay: float,
        stat: str,
    ) -> None:
        """A message accepted now: final (``stat``) after ``delay`` seconds, at once for 0."""
        tracked = Tracked(system_id, message, self.clock.seconds(), receipt, stat)
        self.messages[message_id] = tracked
        if len(self.messages) > self.keep:
            # Forgotten (queries say ESME_RINVMSGID), but its receipt still goes when due.
            self.messages.popitem(last=False)
        if delay > 0:
            tracked.call = self.clock.callLater(delay, self._finish, message_id, tracked)
        else:
            self._finish(message_id, tracked)

    def _finish(self, message_id: bytes, tracked: Tracked) -> None:
        tracked.call = None
        stat = tracked.state = tracked.stat
        tracked.final = self.clock.seconds()
        if tracked.receipt:
            receipt = self.make_receipt(
                tracked.message, message_id, stat, tracked.submitted, tracked.final
            )
            if receipt:  # an empty one: a simulator that sends none (the benchmark's)
                self.send(tracked.system_id, receipt)

    def answer(self, system_id: str, command_id: int, frame: bytes) -> bytes:
        """The response (sequence number 0) to a query_sm, cancel_sm or replace_sm."""
        try:
            if command_id == CommandId.query_sm:
                return self._query(system_id, pdu.read_query_sm(frame))
            if command_id == CommandId.cancel_sm:
                return self._cancel(system_id, pdu.read_cancel_sm(frame))
            return self._replace(system_id, pdu.read_replace_sm(frame))
        except DecodeError as error:
            return pdu.response(command_id, 0, error.status)

    def _find(self, system_id: str, message_id: bytes, source: bytes) -> Tracked | int:
        tracked = self.messages.get(message_id)
        if tracked is None or tracked.system_id != system_id:
            return Status.ESME_RINVMSGID
        if source and source != tracked.message.source_addr:
            return Status.ESME_RINVSRCADR
        return tracked

    def _query(self, system_id: str, request: pdu.QuerySm) -> bytes:
        found = self._find(system_id, request.message_id, request.source_addr)
        if isinstance(found, int):
            return pdu.query_sm_resp(0, found)
        final = b""
        if found.call is None:
            final = time.strftime("%y%m%d%H%M%S", time.gmtime(found.final)).encode() + b"000+"
        state = pdu.MESSAGE_STATES.get(found.state, pdu.MESSAGE_STATES["UNKNOWN"])
        answer = pdu.QuerySmResp(request.message_id, final, state, 0)
        return pdu.query_sm_resp(0, Status.ESME_ROK, answer)

    def _cancel(self, system_id: str, request: pdu.CancelSm) -> bytes:
        found = self._find(system_id, request.message_id, request.source_addr)
        if isinstance(found, int):
            return pdu.response(CommandId.cancel_sm, 0, found)
        if found.call is None:
            return pdu.response(CommandId.cancel_sm, 0, Status.ESME_RCANCELFAIL)
        found.call.cancel()
        found.call = None
        found.state = "DELETED"
        found.final = self.clock.seconds()
        return pdu.response(CommandId.cancel_sm, 0, Status.ESME_ROK)

    def _replace(self, system_id: str, request: pdu.ReplaceSm) -> bytes:
        found = self._find(system_id, request.message_id, request.source_addr)
        if isinstance(found, int):
            return pdu.response(CommandId.replace_sm, 0, found)
        if found.call is None:
            return pdu.response(CommandId.replace_sm, 0, Status.ESME_RREPLACEFAIL)
        found.message = found.message._replace(
            short_message=request.short_message,
            registered_delivery=request.registered_delivery,
        )
        found.receipt = receipt_due(request.registered_delivery, found.stat)
        return pdu.response(CommandId.replace_sm, 0, Status.ESME_ROK)
