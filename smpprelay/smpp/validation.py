"""What a submit_sm's fields may hold (3.4 sections 5.2 and 5.3): the relay's own policy.

`check_submit` and its tables are the README's "Bad input" table in code: each refusal names
the status an app gets back. Keep the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from smpprelay.smpp.constants import Status, Tag
from smpprelay.smpp.framing import DecodeError
from smpprelay.smpp.short_message import ShortMessage, _read_tlvs

__all__ = [
    "MAX_SHORT_MESSAGE",
    "TLV_LENGTHS",
    "check_submit",
    "check_tlvs",
    "read_checked_submit",
    "time_ok",
]

# TON values whose addresses are digits (international, national, subscriber, abbreviated).
_NUMERIC_TON: Final = frozenset((1, 2, 4, 6))
_ALPHANUMERIC_TON: Final = 5
_NPI: Final = frozenset((0, 1, 3, 4, 6, 8, 9, 10, 14, 18))
# esm_class bits 5-2 in a submit_sm: default, ESME delivery ack, manual/user ack (0x04, 0x20:
# receipts and notifications, only ever travel SMSC to ESME).
_SUBMIT_MESSAGE_TYPES: Final = frozenset((0x00, 0x08, 0x10))
_PRINTABLE: Final = re.compile(rb"[\x20-\x7e]*")
_DIGITS: Final = re.compile(rb"\+?[0-9]+")
# No capturing groups: `_CHECKED` takes these patterns into its own.
_ABSOLUTE_TIME: Final = re.compile(
    rb"[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])(?:[01][0-9]|2[0-3])[0-5][0-9]"
    rb"[0-5][0-9][0-9](?:0[0-9]|[1-3][0-9]|4[0-8])[+-]"
)
_RELATIVE_TIME: Final = re.compile(rb"[0-9]{12}000R")
MAX_SHORT_MESSAGE: Final = 254

# Standard TLVs an app may put in a submit_sm, with their (min, max) value lengths (3.4
# section 5.3.2). Tags not listed (vendor 0x1400-0x3FFF and any other) are passed through.
TLV_LENGTHS: Final[dict[int, tuple[int, int]]] = {
    0x0005: (1, 1),  # dest_addr_subunit
    0x0006: (1, 1),  # dest_network_type
    0x0007: (1, 1),  # dest_bearer_type
    0x0008: (2, 2),  # dest_telematics_id
    0x000D: (1, 1),  # source_addr_subunit
    0x000E: (1, 1),  # source_network_type
    0x000F: (1, 1),  # source_bearer_type
    0x0010: (1, 1),  # source_telematics_id
    0x0017: (4, 4),  # qos_time_to_live
    0x0019: (1, 1),  # payload_type
    0x0030: (1, 1),  # ms_msg_wait_facilities
    0x0201: (1, 1),  # privacy_indicator
    0x0202: (2, 23),  # source_subaddress
    0x0203: (2, 23),  # dest_subaddress
    0x0204: (2, 2),  # user_message_reference
    0x0205: (1, 1),  # user_response_code
    0x020A: (2, 2),  # source_port
    0x020B: (2, 2),  # destination_port
    0x020C: (2, 2),  # sar_msg_ref_num
    0x020D: (1, 1),  # language_indicator
    0x020E: (1, 1),  # sar_total_segments
    0x020F: (1, 1),  # sar_segment_seqnum
    0x0302: (1, 1),  # callback_num_pres_ind
    0x0303: (0, 65),  # callback_num_atag
    0x0304: (1, 1),  # number_of_messages
    0x0381: (4, 19),  # callback_num
    0x1201: (1, 1),  # display_time
    0x1203: (2, 2),  # sms_signal
    0x1204: (1, 1),  # ms_validity
    0x130C: (0, 0),  # alert_on_message_delivery
    0x1380: (1, 1),  # its_reply_type
    0x1383: (2, 2),  # its_session_info
    0x0501: (1, 1),  # ussd_service_op
}


def _address_status(ton: int, npi: int, addr: bytes, source: bool) -> int:
    """The status a source or destination address earns (ESME_ROK when it is fine)."""
    if ton > 6:
        return Status.ESME_RINVSRCTON if source else Status.ESME_RINVDSTTON
    if npi not in _NPI:
        return Status.ESME_RINVSRCNPI if source else Status.ESME_RINVDSTNPI
    invalid = Status.ESME_RINVSRCADR if source else Status.ESME_RINVDSTADR
    if not addr:
        # An empty source asks the SMSC for its default; a message needs somewhere to go.
        return Status.ESME_ROK if source else invalid
    if ton in _NUMERIC_TON:
        return Status.ESME_ROK if _DIGITS.fullmatch(addr) else invalid
    if _PRINTABLE.fullmatch(addr) is None:
        return invalid
    if ton == _ALPHANUMERIC_TON and len(addr) > 11:  # what a handset can show (23.040)
        return invalid
    return Status.ESME_ROK


def time_ok(value: bytes) -> bool:
    """An empty time, or an absolute or relative one (3.4 section 7.1.1)."""
    return not value or bool(_ABSOLUTE_TIME.fullmatch(value) or _RELATIVE_TIME.fullmatch(value))


def check_submit(m: ShortMessage) -> None:
    """Check every mandatory field of a submit_sm, and the TLVs the spec sizes, for its size and
    meaning. Raises `DecodeError` with the specific status; unknown TLVs are never refused."""
    if _PRINTABLE.fullmatch(m.service_type) is None:
        raise DecodeError(Status.ESME_RINVSERTYP, "service_type not printable ASCII")
    status = _address_status(m.source_ton, m.source_npi, m.source_addr, True)
    if status:
        raise DecodeError(status, "source address does not fit its TON/NPI")
    status = _address_status(m.dest_ton, m.dest_npi, m.destination_addr, False)
    if status:
        raise DecodeError(status, "destination address empty or does not fit its TON/NPI")
    if m.esm_class & 0x3C not in _SUBMIT_MESSAGE_TYPES:
        raise DecodeError(Status.ESME_RINVESMCLASS, f"esm_class 0x{m.esm_class:02X} in a submit")
    if m.priority_flag > 3:
        raise DecodeError(Status.ESME_RINVPRTFLG, f"priority_flag {m.priority_flag}")
    if not time_ok(m.schedule_delivery_time):
        raise DecodeError(Status.ESME_RINVSCHED, "schedule_delivery_time not YYMMDDhhmmsstnnp")
    if not time_ok(m.validity_period):
        raise DecodeError(Status.ESME_RINVEXPIRY, "validity_period not YYMMDDhhmmsstnnp")
    regd = m.registered_delivery
    if regd & 0x03 == 0x03 or regd & 0xE0:
        raise DecodeError(Status.ESME_RINVREGDLVFLG, f"registered_delivery 0x{regd:02X}")
    if m.replace_if_present > 1:
        raise DecodeError(Status.ESME_RINVREPFLAG, f"replace_if_present {m.replace_if_present}")
    if len(m.short_message) > MAX_SHORT_MESSAGE:
        raise DecodeError(Status.ESME_RINVMSGLEN, "sm_length above 254")
    check_tlvs(m)


def check_tlvs(m: ShortMessage) -> None:
    """The TLV half of `check_submit`: the lengths the spec gives, and message_payload alone."""
    for tag, value in m.tlvs:
        size = TLV_LENGTHS.get(tag)
        if size is not None and not size[0] <= len(value) <= size[1]:
            raise DecodeError(Status.ESME_RINVPARLEN, f"TLV 0x{tag:04X} of length {len(value)}")
        if tag == Tag.message_payload and m.short_message:
            # 3.4 section 5.3.2.32: with message_payload, sm_length must be 0.
            raise DecodeError(Status.ESME_RINVPARLEN, "message_payload with a short_message")


# --- every submit: read and checked in one regex --------------------------------------------
#
# `read_checked_submit` reads a submit's mandatory fields and runs every check of
# `check_submit` on them in one match of `_CHECKED`, built from the same tables. It only ever
# accepts what reading and `check_submit` accept; anything else (a bad field, a truncated PDU)
# goes the slow way, which finds the exact status and detail to answer and log.


def _byte_class(allowed: Callable[[int], bool]) -> bytes:
    """A regex class of the single bytes ``allowed(byte)`` is true for."""
    return b"[" + b"".join(re.escape(bytes((v,))) for v in range(256) if allowed(v)) + b"]"


def _address(numeric: bytes, alphanumeric: bytes, other: bytes) -> bytes:
    # TON and NPI (any TON up to 6 is numeric, alphanumeric or other), then the address, at
    # most 20 octets before its NUL; the look-aheads are `_address_status`'s rules per TON.
    npi = _byte_class(lambda v: v in _NPI)
    numeric_ton = _byte_class(lambda v: v in _NUMERIC_TON)
    other_ton = _byte_class(lambda v: v <= 6 and v not in _NUMERIC_TON and v != _ALPHANUMERIC_TON)
    return (
        rb"(?:(?=" + numeric_ton + npi + numeric + rb"\x00)"
        rb"|(?=" + re.escape(bytes((_ALPHANUMERIC_TON,))) + npi + alphanumeric + rb"\x00)"
        rb"|(?=" + other_ton + npi + other + rb"\x00))..([^\x00]{0,20})\x00"
    )


_TIME: Final = rb"((?:" + _ABSOLUTE_TIME.pattern + rb"|" + _RELATIVE_TIME.pattern + rb")?)\x00"
_CHECKED: Final = re.compile(
    rb"([\x20-\x7e]{0,5})\x00"  # service_type
    + _address(rb"(?:\+?[0-9]+)?", rb"[\x20-\x7e]{0,11}", rb"[\x20-\x7e]*")  # source
    + _address(rb"\+?[0-9]+", rb"[\x20-\x7e]{1,11}", rb"[\x20-\x7e]+")  # destination
    + _byte_class(lambda v: v & 0x3C in _SUBMIT_MESSAGE_TYPES)  # esm_class
    + rb".[\x00-\x03]"  # protocol_id, priority_flag
    + _TIME  # schedule_delivery_time
    + _TIME  # validity_period
    + _byte_class(lambda v: not (v & 0x03 == 0x03 or v & 0xE0))  # registered_delivery
    + rb"[\x00\x01].."  # replace_if_present, data_coding, sm_default_msg_id
    + _byte_class(lambda v: v <= MAX_SHORT_MESSAGE),  # sm_length
    re.DOTALL,
)
_match_checked = _CHECKED.match
_new_message = tuple.__new__


def read_checked_submit(frame: bytes, max_tlvs: int) -> ShortMessage | None:
    """A submit_sm's fields when its mandatory ones pass `check_submit`, in one pass; None
    when one does not, or the PDU is cut short (read and check it the slow way for the status
    to answer). Raises `DecodeError` for its TLVs as `read_short_message` does; they are not
    checked (`check_tlvs`)."""
    m = _match_checked(frame, 16)
    if m is None:
        return None
    service_type, source, dest, sched, valid = m.groups()
    # Where each address's TON, and esm_class, sit; sm_length is the match's last octet.
    s = 17 + len(service_type)
    d = s + 3 + len(source)
    e = d + 3 + len(dest)
    p = m.end()
    p_end = p + frame[p - 1]
    limit = len(frame)
    if p_end > limit:
        return None
    # Indexing, and tuple.__new__ (what ShortMessage() calls after a Python-level frame), halve
    # the cost of taking the octets out: this runs for every submit.
    return _new_message(
        ShortMessage,
        (
            service_type,
            frame[s],
            frame[s + 1],
            source,
            frame[d],
            frame[d + 1],
            dest,
            frame[e],
            frame[e + 1],
            frame[e + 2],
            sched,
            valid,
            frame[p - 5],
            frame[p - 4],
            frame[p - 3],
            frame[p - 2],
            frame[p:p_end],
            _read_tlvs(frame, p_end, max_tlvs) if p_end < limit else (),
        ),
    )
