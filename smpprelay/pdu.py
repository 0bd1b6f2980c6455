"""SMPP 3.4 on the wire, without Twisted: one import surface for `smpprelay.smpp` and receipts.

The code lives in `smpprelay.smpp` (``constants``, ``framing``, ``short_message``,
``validation``, ``binds``) and `smpprelay.receipts`; this module re-exports the same objects, so
``pdu.X`` costs one module attribute lookup, as before the split. New code may import from
`smpprelay.smpp.*` and `smpprelay.receipts` directly.
"""

from __future__ import annotations

from smpprelay.receipts import (
    MessageIdFormat,
    delivery_receipt,
    id_bases,
    normalise_message_id,
    receipt_id,
    receipt_is_final,
    replace_receipt_id,
)
from smpprelay.smpp.binds import (
    BindRequest,
    bind_request,
    bind_response,
    decode,
    encode,
    read_bind,
)
from smpprelay.smpp.constants import (
    BIND_KINDS,
    MAX_SEQUENCE,
    MESSAGE_STATES,
    RECEIPT_ESM_BITS,
    RESPONSE_BIT,
    SPEC_STATUSES,
    BindKind,
    CommandId,
    Status,
    Tag,
    command_label,
    command_name,
    status_label,
    status_name,
)
from smpprelay.smpp.framing import (
    HEADER,
    HEADER_LEN,
    TLV_HEAD,
    DecodeError,
    Framer,
    FramingError,
    build,
    generic_nack,
    header,
    message_id_of,
    response,
    sequence_of,
    submit_sm_resp,
    with_sequence,
)
from smpprelay.smpp.short_message import (
    BLANK_MESSAGE,
    DEFAULT_MAX_TLVS,
    ShortMessage,
    encode_short_message,
    read_short_message,
)
from smpprelay.smpp.validation import MAX_SHORT_MESSAGE, TLV_LENGTHS, check_submit

__all__ = [
    "BIND_KINDS",
    "BLANK_MESSAGE",
    "DEFAULT_MAX_TLVS",
    "HEADER",
    "HEADER_LEN",
    "MAX_SEQUENCE",
    "MAX_SHORT_MESSAGE",
    "MESSAGE_STATES",
    "RECEIPT_ESM_BITS",
    "RESPONSE_BIT",
    "SPEC_STATUSES",
    "TLV_HEAD",
    "TLV_LENGTHS",
    "BindKind",
    "BindRequest",
    "CommandId",
    "DecodeError",
    "Framer",
    "FramingError",
    "MessageIdFormat",
    "ShortMessage",
    "Status",
    "Tag",
    "bind_request",
    "bind_response",
    "build",
    "check_submit",
    "command_label",
    "command_name",
    "decode",
    "delivery_receipt",
    "encode",
    "encode_short_message",
    "generic_nack",
    "header",
    "id_bases",
    "message_id_of",
    "normalise_message_id",
    "read_bind",
    "read_short_message",
    "receipt_id",
    "receipt_is_final",
    "replace_receipt_id",
    "response",
    "sequence_of",
    "status_label",
    "status_name",
    "submit_sm_resp",
    "with_sequence",
]
