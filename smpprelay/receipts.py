"""Delivery receipts: which submit one is about, rewriting its id, making one.

Shared by the router (routes an operator's receipt back under the app's id), the relay (makes
receipts for parts it answered itself) and the simulator (makes an SMSC's receipts).
"""

from __future__ import annotations

import re
import time
from typing import Final, Literal

from smpprelay.smpp.constants import MESSAGE_STATES, CommandId, Tag
from smpprelay.smpp.framing import header
from smpprelay.smpp.short_message import BLANK_MESSAGE, ShortMessage, encode_short_message

__all__ = [
    "MessageIdFormat",
    "delivery_receipt",
    "id_bases",
    "normalise_message_id",
    "receipt_id",
    "receipt_is_final",
    "replace_receipt_id",
]

# How an operator's receipts quote a message id, relative to the message_id of its
# submit_sm_resp (upstream.message_id_format): the same way (as-is), in hexadecimal where the
# submit_sm_resp gave it in decimal (hex), or in decimal where it gave it in hexadecimal
# (decimal: "id:2684354561" in the receipt for "A0000001"). Kannel's msg-id-type says the same.
MessageIdFormat = Literal["as-is", "hex", "decimal"]
Base = Literal[10, 16]

_BASES: Final[dict[MessageIdFormat, tuple[Base | None, Base | None]]] = {
    "as-is": (None, None),
    "hex": (10, 16),
    "decimal": (16, 10),
}

_RECEIPT_ID: Final = re.compile(rb"\bid:(\S+)", re.IGNORECASE)
_RECEIPT_STAT: Final = re.compile(rb"\bstat:(\S+)", re.IGNORECASE)
# The states after which no other receipt is due (3.4 Appendix B and message_state 5.2.28).
_FINAL_STATS: Final = frozenset((b"DELIVRD", b"UNDELIV", b"EXPIRED", b"REJECTD", b"DELETED"))
_FINAL_STATES: Final = frozenset(MESSAGE_STATES[stat.decode()] for stat in _FINAL_STATS)


def receipt_id(message: ShortMessage) -> bytes | None:
    """The id a receipt is about: ``receipted_message_id`` first, else the text's ``id:``."""
    tlv = message.tlv(Tag.receipted_message_id)
    if tlv:
        return tlv.rstrip(b"\0")
    match = _RECEIPT_ID.search(message.text)
    return match.group(1) if match else None


def receipt_is_final(message: ShortMessage) -> bool:
    """True for a receipt that says the message is done (delivered, or never will be):
    the ``message_state`` TLV first, else the text's ``stat:``."""
    state = message.tlv(Tag.message_state)
    if state:
        return state[0] in _FINAL_STATES
    match = _RECEIPT_STAT.search(message.text)
    return match is not None and match.group(1).upper() in _FINAL_STATS


def id_bases(form: MessageIdFormat) -> tuple[Base | None, Base | None]:
    """The bases the ids are written in under ``form``: (submit_sm_resp's, receipts')."""
    return _BASES[form]


def normalise_message_id(message_id: bytes, base: Base | None = None) -> str:
    """The form under which message ids are compared.

    SMSCs differ in case and leading zeros between submit_sm_resp and the receipt (Jasmin and
    Kannel both had to learn this); neither changes which message is meant. With a ``base``,
    an id that is a number in that base is compared as that number (in decimal), so the same
    id quoted in hex on one side and in decimal on the other meets; an id that is not such a
    number is compared as it is.
    """
    text = message_id.decode("latin-1").strip()
    if base is not None and text.isascii() and text.isalnum():
        try:
            return str(int(text, base))
        except ValueError:
            pass  # not a number in that base: compare it as it is
    return text.upper().lstrip("0") or "0"


def replace_receipt_id(frame: bytes, message: ShortMessage, old_id: bytes, new_id: bytes) -> bytes:
    """The receipt ``frame`` about ``new_id`` instead of ``old_id``.

    The id is in two places, the ``receipted_message_id`` TLV and the text's ``id:`` field;
    both are rewritten, every other byte stays as the operator sent it.
    """
    old_text = b"id:" + old_id
    new_text = b"id:" + new_id

    def swap(text: bytes) -> bytes:
        return _RECEIPT_ID.sub(
            lambda m: new_text if m.group(0).lower() == old_text.lower() else m.group(0), text, 1
        )

    tlvs = tuple(
        (tag, new_id + b"\0")
        if tag == Tag.receipted_message_id
        else (tag, swap(value))
        if tag == Tag.message_payload
        else (tag, value)
        for tag, value in message.tlvs
    )
    rewritten = message._replace(short_message=swap(message.short_message), tlvs=tlvs)
    _, command_id, _, sequence = header(frame)
    return encode_short_message(command_id, sequence, rewritten)


def delivery_receipt(
    message: ShortMessage, message_id: bytes, stat: str, submitted: float, done: float
) -> bytes:
    """A delivery receipt about ``message`` (3.4 appendix B text plus its TLVs).

    It goes from the message's destination back to its source, as an SMSC sends it.
    """
    stamp = time.strftime("%y%m%d%H%M", time.gmtime(submitted)).encode()
    finished = time.strftime("%y%m%d%H%M", time.gmtime(done)).encode()
    # Only text codings are quoted back; binary or UCS-2 would make the text unreadable.
    sample = message.text[:20] if message.data_coding in (0, 1, 3) else b""
    text = b"id:%s sub:001 dlvrd:%s submit date:%s done date:%s stat:%s err:000 text:%s" % (
        message_id,
        b"001" if stat == "DELIVRD" else b"000",
        stamp,
        finished,
        stat.encode(),
        sample,
    )
    receipt = BLANK_MESSAGE._replace(
        source_ton=message.dest_ton,
        source_npi=message.dest_npi,
        source_addr=message.destination_addr,
        dest_ton=message.source_ton,
        dest_npi=message.source_npi,
        destination_addr=message.source_addr,
        esm_class=0x04,
        short_message=text,
        tlvs=(
            (Tag.receipted_message_id, message_id + b"\0"),
            (Tag.message_state, bytes((MESSAGE_STATES.get(stat, 7),))),
        ),
    )
    return encode_short_message(CommandId.deliver_sm, 1, receipt)
