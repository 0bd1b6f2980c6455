"""data_sm (SMPP 3.4 section 4.7): read into the same `ShortMessage` as a submit_sm, written
back, answered, and turned into the deliver_sm an app receives.

A data_sm has the submit_sm's addresses, esm_class, registered_delivery and data_coding and
nothing else mandatory: its text travels in ``message_payload``. Read here, the fields it lacks
are zero or empty, so the rules and the receipts read it as they read a submit_sm.
"""

from __future__ import annotations

from typing import Final

from smpprelay.smpp.constants import CommandId, Status, Tag
from smpprelay.smpp.framing import HEADER_LEN, TLV_HEAD, DecodeError, build, header, response
from smpprelay.smpp.short_message import (
    BLANK_MESSAGE,
    DEFAULT_MAX_TLVS,
    ShortMessage,
    encode_short_message,
)
from smpprelay.smpp.short_message import _read_tlvs as read_tlvs  # the submit's own TLV reader

__all__ = [
    "DATA_SM_ID",
    "data_sm_resp",
    "deliver_sm_from_data_sm",
    "encode_data_sm",
    "encode_like",
    "read_data_sm",
]

DATA_SM_ID: Final = int(CommandId.data_sm).to_bytes(4, "big")
"""A data_sm's command_id as it stands in its header (octets 4 to 8)."""

# What fits in a deliver_sm's short_message (3.4 section 5.2.22).
_MAX_SHORT_MESSAGE: Final = 254


def read_data_sm(frame: bytes, max_tlvs: int = DEFAULT_MAX_TLVS) -> ShortMessage:
    """Read a data_sm body. Raises `DecodeError` with the status to answer."""
    find = frame.find
    try:
        end = find(b"\0", HEADER_LEN, HEADER_LEN + 6)
        if end < 0:
            raise DecodeError(Status.ESME_RINVSERTYP, "service_type too long or cut off")
        service_type = frame[HEADER_LEN:end]
        s_ton, s_npi = frame[end + 1], frame[end + 2]
        p = end + 3
        end = find(b"\0", p, p + 21)
        if end < 0:
            raise DecodeError(Status.ESME_RINVSRCADR, "source_addr too long or cut off")
        source = frame[p:end]
        d_ton, d_npi = frame[end + 1], frame[end + 2]
        p = end + 3
        end = find(b"\0", p, p + 21)
        if end < 0:
            raise DecodeError(Status.ESME_RINVDSTADR, "destination_addr too long or cut off")
        dest = frame[p:end]
        esm, regd, dc = frame[end + 1 : end + 4]
    except (IndexError, ValueError):
        raise DecodeError(Status.ESME_RINVCMDLEN, "mandatory fields run past the PDU") from None
    tlvs = read_tlvs(frame, end + 4, max_tlvs)
    return BLANK_MESSAGE._replace(
        service_type=service_type,
        source_ton=s_ton,
        source_npi=s_npi,
        source_addr=source,
        dest_ton=d_ton,
        dest_npi=d_npi,
        destination_addr=dest,
        esm_class=esm,
        registered_delivery=regd,
        data_coding=dc,
        tlvs=tlvs,
    )


def encode_data_sm(sequence: int, message: ShortMessage) -> bytes:
    """A data_sm from its fields (the inverse of `read_data_sm`); a ``short_message`` is
    carried as ``message_payload``, the one place a data_sm has for text."""
    m = message
    tlvs = m.tlvs
    if m.short_message:
        tlvs = ((Tag.message_payload, m.short_message), *tlvs)
    body = b"".join(
        [
            m.service_type + b"\0",
            bytes((m.source_ton, m.source_npi)),
            m.source_addr + b"\0",
            bytes((m.dest_ton, m.dest_npi)),
            m.destination_addr + b"\0",
            bytes((m.esm_class, m.registered_delivery, m.data_coding)),
            *(TLV_HEAD.pack(tag, len(value)) + value for tag, value in tlvs),
        ]
    )
    return build(CommandId.data_sm, sequence, body)


def encode_like(frame: bytes, message: ShortMessage) -> bytes:
    """``message`` written as the same command as ``frame`` (a submit_sm, deliver_sm or
    data_sm), under its sequence number: how a rule that rewrites a message keeps its kind."""
    _, command_id, _, sequence = header(frame)
    if command_id == CommandId.data_sm:
        return encode_data_sm(sequence, message)
    return encode_short_message(command_id, sequence, message)


def data_sm_resp(sequence: int, status: int, message_id: bytes = b"") -> bytes:
    """A data_sm_resp; the message_id is only sent with ESME_ROK."""
    return response(CommandId.data_sm, sequence, status, message_id + b"\0")


def deliver_sm_from_data_sm(frame: bytes, max_tlvs: int = DEFAULT_MAX_TLVS) -> bytes:
    """The deliver_sm that carries an operator's data_sm to an app (same sequence number).

    Every receiving app reads deliver_sm; not all answer a data_sm (smpplib does not). A
    ``message_payload`` that fits in short_message moves there, where every app reads the
    text; a longer one stays a ``message_payload``, which a deliver_sm may carry (5.3.2.32).
    Every other TLV (``receipted_message_id``, ``message_state``) is kept as sent.
    """
    fields = read_data_sm(frame, max_tlvs)
    payload = fields.tlv(Tag.message_payload)
    if payload is not None and len(payload) <= _MAX_SHORT_MESSAGE:
        rest = tuple((tag, value) for tag, value in fields.tlvs if tag != Tag.message_payload)
        fields = fields._replace(short_message=payload, tlvs=rest)
    return encode_short_message(CommandId.deliver_sm, header(frame)[3], fields)
