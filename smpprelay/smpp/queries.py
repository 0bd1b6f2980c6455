"""query_sm, cancel_sm and replace_sm (SMPP 3.4 sections 4.8 to 4.10): read and written.

The relay rewrites each of these requests (the app's message id becomes the operator's) and the
query_sm_resp back (the operator's id becomes the app's), so every field is read, not just the
id. A field too long or cut off raises `DecodeError` with the status the spec names for it
(a message id: ``ESME_RINVMSGID``). Optional parameters after the mandatory fields are kept as
sent (3.4 defines none for these requests; a replace_sm may carry ``message_payload`` as 5.0
allows).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from smpprelay.smpp.constants import CommandId, Status, Tag
from smpprelay.smpp.framing import HEADER_LEN, TLV_HEAD, DecodeError, build, response
from smpprelay.smpp.short_message import DEFAULT_MAX_TLVS, _read_tlvs
from smpprelay.smpp.validation import MAX_SHORT_MESSAGE, time_ok

__all__ = [
    "CancelSm",
    "QuerySm",
    "QuerySmResp",
    "ReplaceSm",
    "cancel_sm",
    "query_sm",
    "query_sm_resp",
    "read_cancel_sm",
    "read_query_sm",
    "read_query_sm_resp",
    "read_replace_sm",
    "replace_sm",
]

# C-octet string sizes, the NUL included (3.4 sections 4.8.1 to 4.10.1).
_MESSAGE_ID: Final = 65
_ADDRESS: Final = 21
_SERVICE_TYPE: Final = 6
_TIME: Final = 17

Tlvs = tuple[tuple[int, bytes], ...]


class QuerySm(NamedTuple):
    """The fields of a query_sm (3.4 section 4.8.1)."""

    message_id: bytes
    source_ton: int
    source_npi: int
    source_addr: bytes
    tlvs: Tlvs = ()


class QuerySmResp(NamedTuple):
    """The fields of a query_sm_resp (3.4 section 4.8.2): ``final_date`` empty while the
    message is not final, ``message_state`` as in section 5.2.28."""

    message_id: bytes
    final_date: bytes
    message_state: int
    error_code: int
    tlvs: Tlvs = ()


class CancelSm(NamedTuple):
    """The fields of a cancel_sm (3.4 section 4.9.1)."""

    service_type: bytes
    message_id: bytes
    source_ton: int
    source_npi: int
    source_addr: bytes
    dest_ton: int
    dest_npi: int
    destination_addr: bytes
    tlvs: Tlvs = ()


class ReplaceSm(NamedTuple):
    """The fields of a replace_sm (3.4 section 4.10.1). An empty ``schedule_delivery_time`` or
    ``validity_period`` keeps the message's own."""

    message_id: bytes
    source_ton: int
    source_npi: int
    source_addr: bytes
    schedule_delivery_time: bytes
    validity_period: bytes
    registered_delivery: int
    sm_default_msg_id: int
    short_message: bytes
    tlvs: Tlvs = ()

    @property
    def text(self) -> bytes:
        """The new text: short_message, or message_payload when that carries it."""
        if self.short_message:
            return self.short_message
        for tag, value in self.tlvs:
            if tag == Tag.message_payload:
                return value
        return b""


class _Reader:
    """Walks a PDU body field by field; every miss is a `DecodeError` with its status."""

    __slots__ = ("frame", "pos")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.pos = HEADER_LEN

    def cstr(self, size: int, status: int, name: str) -> bytes:
        end = self.frame.find(b"\0", self.pos, self.pos + size)
        if end < 0:
            raise DecodeError(status, f"{name} too long or cut off")
        value = self.frame[self.pos : end]
        self.pos = end + 1
        return value

    def octet(self) -> int:
        if self.pos >= len(self.frame):
            raise DecodeError(Status.ESME_RINVCMDLEN, "mandatory fields run past the PDU")
        self.pos += 1
        return self.frame[self.pos - 1]

    def octets(self, count: int) -> bytes:
        if self.pos + count > len(self.frame):
            raise DecodeError(Status.ESME_RINVMSGLEN, "sm_length runs past the PDU")
        self.pos += count
        return self.frame[self.pos - count : self.pos]

    def tlvs(self, max_tlvs: int) -> Tlvs:
        if self.pos >= len(self.frame):
            return ()
        return _read_tlvs(self.frame, self.pos, max_tlvs)


def _address(reader: _Reader) -> tuple[int, int, bytes]:
    ton, npi = reader.octet(), reader.octet()
    return ton, npi, reader.cstr(_ADDRESS, Status.ESME_RINVSRCADR, "source_addr")


def _message_id(reader: _Reader) -> bytes:
    return reader.cstr(_MESSAGE_ID, Status.ESME_RINVMSGID, "message_id")


def _cstr(value: bytes) -> bytes:
    return value + b"\0"


def _tlv_bytes(tlvs: Tlvs) -> bytes:
    return b"".join(TLV_HEAD.pack(tag, len(value)) + value for tag, value in tlvs)


# --- query_sm -------------------------------------------------------------------------------


def read_query_sm(frame: bytes, max_tlvs: int = DEFAULT_MAX_TLVS) -> QuerySm:
    """Read a query_sm. Raises `DecodeError`."""
    reader = _Reader(frame)
    message_id = _message_id(reader)
    ton, npi, source = _address(reader)
    return QuerySm(message_id, ton, npi, source, reader.tlvs(max_tlvs))


def query_sm(sequence: int, request: QuerySm) -> bytes:
    """A query_sm from its fields."""
    body = b"".join(
        (
            _cstr(request.message_id),
            bytes((request.source_ton, request.source_npi)),
            _cstr(request.source_addr),
            _tlv_bytes(request.tlvs),
        )
    )
    return build(CommandId.query_sm, sequence, body)


def read_query_sm_resp(frame: bytes, max_tlvs: int = DEFAULT_MAX_TLVS) -> QuerySmResp:
    """Read a query_sm_resp with a body (an error response has none). Raises `DecodeError`."""
    reader = _Reader(frame)
    message_id = _message_id(reader)
    final_date = reader.cstr(_TIME, Status.ESME_RINVCMDLEN, "final_date")
    state, error = reader.octet(), reader.octet()
    return QuerySmResp(message_id, final_date, state, error, reader.tlvs(max_tlvs))


def query_sm_resp(sequence: int, status: int, answer: QuerySmResp | None = None) -> bytes:
    """A query_sm_resp: its fields with ESME_ROK, no body with an error (3.4 section 4.4.2)."""
    if status != Status.ESME_ROK or answer is None:
        return response(CommandId.query_sm, sequence, status)
    body = b"".join(
        (
            _cstr(answer.message_id),
            _cstr(answer.final_date),
            bytes((answer.message_state, answer.error_code)),
            _tlv_bytes(answer.tlvs),
        )
    )
    return response(CommandId.query_sm, sequence, status, body)


# --- cancel_sm ------------------------------------------------------------------------------


def read_cancel_sm(frame: bytes, max_tlvs: int = DEFAULT_MAX_TLVS) -> CancelSm:
    """Read a cancel_sm. Raises `DecodeError`."""
    reader = _Reader(frame)
    service_type = reader.cstr(_SERVICE_TYPE, Status.ESME_RINVSERTYP, "service_type")
    message_id = _message_id(reader)
    ton, npi, source = _address(reader)
    d_ton, d_npi = reader.octet(), reader.octet()
    dest = reader.cstr(_ADDRESS, Status.ESME_RINVDSTADR, "destination_addr")
    return CancelSm(
        service_type, message_id, ton, npi, source, d_ton, d_npi, dest, reader.tlvs(max_tlvs)
    )


def cancel_sm(sequence: int, request: CancelSm) -> bytes:
    """A cancel_sm from its fields."""
    body = b"".join(
        (
            _cstr(request.service_type),
            _cstr(request.message_id),
            bytes((request.source_ton, request.source_npi)),
            _cstr(request.source_addr),
            bytes((request.dest_ton, request.dest_npi)),
            _cstr(request.destination_addr),
            _tlv_bytes(request.tlvs),
        )
    )
    return build(CommandId.cancel_sm, sequence, body)


# --- replace_sm -----------------------------------------------------------------------------


def read_replace_sm(frame: bytes, max_tlvs: int = DEFAULT_MAX_TLVS) -> ReplaceSm:
    """Read a replace_sm and check its times, registered_delivery and length. Raises
    `DecodeError`."""
    reader = _Reader(frame)
    message_id = _message_id(reader)
    ton, npi, source = _address(reader)
    schedule = reader.cstr(_TIME, Status.ESME_RINVSCHED, "schedule_delivery_time")
    if not time_ok(schedule):
        raise DecodeError(Status.ESME_RINVSCHED, "schedule_delivery_time not YYMMDDhhmmsstnnp")
    validity = reader.cstr(_TIME, Status.ESME_RINVEXPIRY, "validity_period")
    if not time_ok(validity):
        raise DecodeError(Status.ESME_RINVEXPIRY, "validity_period not YYMMDDhhmmsstnnp")
    regd, default_id, length = reader.octet(), reader.octet(), reader.octet()
    if regd & 0x03 == 0x03 or regd & 0xE0:
        raise DecodeError(Status.ESME_RINVREGDLVFLG, f"registered_delivery 0x{regd:02X}")
    if length > MAX_SHORT_MESSAGE:
        raise DecodeError(Status.ESME_RINVMSGLEN, "sm_length above 254")
    text = reader.octets(length)
    tlvs = reader.tlvs(max_tlvs)
    if text and any(tag == Tag.message_payload for tag, _ in tlvs):
        raise DecodeError(Status.ESME_RINVPARLEN, "message_payload with a short_message")
    return ReplaceSm(message_id, ton, npi, source, schedule, validity, regd, default_id, text, tlvs)


def replace_sm(sequence: int, request: ReplaceSm) -> bytes:
    """A replace_sm from its fields."""
    body = b"".join(
        (
            _cstr(request.message_id),
            bytes((request.source_ton, request.source_npi)),
            _cstr(request.source_addr),
            _cstr(request.schedule_delivery_time),
            _cstr(request.validity_period),
            bytes(
                (
                    request.registered_delivery,
                    request.sm_default_msg_id,
                    len(request.short_message),
                )
            ),
            request.short_message,
            _tlv_bytes(request.tlvs),
        )
    )
    return build(CommandId.replace_sm, sequence, body)
