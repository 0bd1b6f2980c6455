"""`Message`: one submit_sm (or data_sm) as the rules see it; `Verdict`: what a rule decided."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import attrs

from smpprelay import pdu
from smpprelay.pdu import DecodeError, ShortMessage, Status, Tag

UDHI = 0x40

# How a part names its message: UDH IE 0x00 (8-bit reference), IE 0x08 (16-bit), or sar_* TLVs.
Scheme = Literal["udh8", "udh16", "sar"]
# What a rule decided; see `Verdict`.
Action = Literal["accept", "reject", "hold", "replay"]


class Concat(NamedTuple):
    """Where a part sits in a concatenated message, as its header says (not yet validated)."""

    reference: int
    total: int
    sequence: int
    scheme: Scheme


@attrs.define(slots=True, eq=False)
class Message:
    """One submit as the rules see it.

    ``frame`` is what goes upstream. ``content`` is the user data without its header. A rule
    never changes a message it is given: the encoding rule's transcoding and the concat rule's
    gluing come back as a replacement in the verdict (`Verdict.message`). A glued message
    carries its parts in ``parts``, in sequence order (not the order they arrived), and their
    joined content.
    """

    account: str
    frame: bytes
    fields: ShortMessage
    udh: bytes
    content: bytes
    concat: Concat | None
    app_iso: bool = False
    parts: tuple[Message, ...] = ()
    # The relay's own id for a part the concat rule may hold, set before any rule sees the part;
    # a glued message shares the id of the part that completed it.
    app_message_id: bytes = b""
    # The id the app was given for this message when it is neither the operator's nor
    # app_message_id: a submit_multi's, shared by every address it was fanned out to.
    receipt_as: bytes = b""

    @property
    def source(self) -> bytes:
        return self.fields.source_addr

    @property
    def destination(self) -> bytes:
        return self.fields.destination_addr

    @property
    def data_coding(self) -> int:
        return self.fields.data_coding

    @property
    def app_id(self) -> bytes | None:
        """The id the app knows this message by, when it is not the operator's: what its
        receipts are rewritten to."""
        return self.receipt_as or self.app_message_id or None

    @property
    def uses_payload(self) -> bool:
        """True when the text travels in message_payload rather than short_message."""
        return not self.fields.short_message and self.fields.tlv(Tag.message_payload) is not None


def read_message(
    account: str, frame: bytes, app_iso: bool = False, max_tlvs: int = pdu.DEFAULT_MAX_TLVS
) -> Message:
    """Read a submit_sm (or a data_sm: its text is its message_payload) for the rules.
    Raises `DecodeError` for a header that lies, or for more than ``max_tlvs`` TLVs."""
    if frame[4:8] == pdu.DATA_SM_ID:
        fields = pdu.read_data_sm(frame, max_tlvs)
    else:
        fields = pdu.read_short_message(frame, max_tlvs)
    return _message(account, frame, fields, app_iso)


def read_submit(
    account: str, frame: bytes, app_iso: bool = False, max_tlvs: int = pdu.DEFAULT_MAX_TLVS
) -> Message:
    """`read_message` and `pdu.check_submit`: what the relay takes from an app. Raises
    `DecodeError` with the status (and detail) those two, one after the other, would."""
    fields = None if frame[4:8] == pdu.DATA_SM_ID else pdu.read_checked_submit(frame, max_tlvs)
    if fields is None:
        # A data_sm, or a field to refuse: the slow way finds which, with its status.
        message = read_message(account, frame, app_iso, max_tlvs)
        pdu.check_submit(message.fields)
        return message
    message = _message(account, frame, fields, app_iso)
    if fields.tlvs:
        pdu.check_tlvs(fields)  # the mandatory fields were checked as they were read
    return message


def _message(account: str, frame: bytes, fields: ShortMessage, app_iso: bool) -> Message:
    data = fields.text
    udh = b""
    concat = None
    if fields.esm_class & UDHI:
        if not data or data[0] + 1 > len(data):
            raise DecodeError(Status.ESME_RINVMSGLEN, "UDH length runs past the message")
        udh = data[: data[0] + 1]
        data = data[data[0] + 1 :]
        concat = _udh_concat(udh)
    if concat is None and fields.tlvs:
        concat = _sar_concat(fields)
    return Message(account, frame, fields, udh, data, concat, app_iso)


def _udh_concat(udh: bytes) -> Concat | None:
    pos, end = 1, len(udh)
    while pos + 2 <= end:
        iei, length = udh[pos], udh[pos + 1]
        body = udh[pos + 2 : pos + 2 + length]
        if len(body) != length:
            raise DecodeError(Status.ESME_RINVMSGLEN, "UDH information element runs past the UDH")
        if iei == 0x00 and length == 3:
            return Concat(body[0], body[1], body[2], "udh8")
        if iei == 0x08 and length == 4:
            return Concat(body[0] << 8 | body[1], body[2], body[3], "udh16")
        pos += 2 + length
    return None


def _sar_concat(fields: ShortMessage) -> Concat | None:
    ref = fields.tlv(Tag.sar_msg_ref_num)
    total = fields.tlv(Tag.sar_total_segments)
    seq = fields.tlv(Tag.sar_segment_seqnum)
    if ref is None and total is None and seq is None:
        return None
    if ref is None or total is None or seq is None:
        raise DecodeError(Status.ESME_RMISSINGOPTPARAM, "sar_* TLVs must come as a set")
    if len(ref) != 2 or len(total) != 1 or len(seq) != 1:
        raise DecodeError(Status.ESME_RINVPARLEN, "sar_* TLV of the wrong length")
    return Concat(ref[0] << 8 | ref[1], total[0], seq[0], "sar")


class Verdict(NamedTuple):
    """A rule's decision about a message.

    ``accept`` lets it go on; ``reject`` answers ``status``; ``hold`` keeps a part until its
    message is whole; ``replay`` answers ESME_ROK with ``message_id`` and sends nothing.
    ``reason`` is for logs and metrics only, never sent. ``message``, on an accept, is the
    replacement the rule made (transcoded, glued) for the next rules and the operator; a rule
    that changes nothing returns `ACCEPT` itself, so the common path allocates nothing.
    """

    action: Action
    status: int = Status.ESME_ROK
    reason: str = ""
    message_id: bytes = b""
    message: Message | None = None


ACCEPT = Verdict("accept")


def accept(replacement: Message) -> Verdict:
    """An acceptance that passes ``replacement`` on in place of the message checked."""
    return Verdict("accept", message=replacement)


def reject(status: int, reason: str) -> Verdict:
    """A rejection answered with ``status``."""
    return Verdict("reject", status, reason)


def glue(
    completing: Message,
    parts: tuple[Message, ...],
    contents: Sequence[bytes],
    transcode: Callable[[Message], Message] | None,
) -> Message:
    """The glued message: ``completing`` (the part that completed it) carrying ``parts`` (in
    sequence order) and their joined ``contents``, transcoded as a whole when the encoding rule
    asks (the concatenation rule's ``transcode``; in one process and across instances)."""
    glued = attrs.evolve(completing, parts=parts, content=b"".join(contents))
    if transcode is not None:
        glued = transcode(glued)
    return glued
