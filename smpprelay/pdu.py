"""SMPP 3.4 on the wire, without Twisted.

The relay forwards the peers' own bytes, so this module is mostly about *reading*: splitting a
byte stream into frames (with the length guard applied before anything is buffered), reading
the header, and reading the few body fields the relay needs straight from the bytes with
``struct``. ``smpp.pdu`` decodes the rare PDUs whose every field matters (binds) and builds the
ones the relay or the simulator makes from scratch; it is too slow (about 30 us a decode) and
too lossy (vendor TLVs, vendor statuses) for the hot path.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from enum import IntEnum
from io import BytesIO
from typing import Final, NamedTuple

import attrs
from smpp.pdu import constants as smpp_constants
from smpp.pdu import operations, pdu_types
from smpp.pdu.error import PDUParseError
from smpp.pdu.pdu_encoding import PDUEncoder

HEADER: Final = struct.Struct("!IIII")
HEADER_LEN: Final = 16
_U32: Final = struct.Struct("!I")
_TLV_HEAD: Final = struct.Struct("!HH")
RESPONSE_BIT: Final = 0x80000000
MAX_SEQUENCE: Final = 0x7FFFFFFF


class CommandId(IntEnum):
    """command_id values of SMPP 3.4 (spec 5.1.2.1)."""

    generic_nack = 0x80000000
    bind_receiver = 0x00000001
    bind_receiver_resp = 0x80000001
    bind_transmitter = 0x00000002
    bind_transmitter_resp = 0x80000002
    query_sm = 0x00000003
    query_sm_resp = 0x80000003
    submit_sm = 0x00000004
    submit_sm_resp = 0x80000004
    deliver_sm = 0x00000005
    deliver_sm_resp = 0x80000005
    unbind = 0x00000006
    unbind_resp = 0x80000006
    replace_sm = 0x00000007
    replace_sm_resp = 0x80000007
    cancel_sm = 0x00000008
    cancel_sm_resp = 0x80000008
    bind_transceiver = 0x00000009
    bind_transceiver_resp = 0x80000009
    outbind = 0x0000000B
    enquire_link = 0x00000015
    enquire_link_resp = 0x80000015
    submit_multi = 0x00000021
    submit_multi_resp = 0x80000021
    alert_notification = 0x00000102
    data_sm = 0x00000103
    data_sm_resp = 0x80000103


class Status(IntEnum):
    """The command_status values the relay itself answers (spec 5.1.3)."""

    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RINVPRTFLG = 0x06
    ESME_RINVREGDLVFLG = 0x07
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RMSGQFUL = 0x14
    ESME_RINVSERTYP = 0x15
    ESME_RINVESMCLASS = 0x43
    ESME_RSUBMITFAIL = 0x45
    ESME_RINVSRCTON = 0x48
    ESME_RINVSRCNPI = 0x49
    ESME_RINVDSTTON = 0x50
    ESME_RINVDSTNPI = 0x51
    ESME_RINVREPFLAG = 0x54
    ESME_RTHROTTLED = 0x58
    ESME_RINVSCHED = 0x61
    ESME_RINVEXPIRY = 0x62
    ESME_RX_T_APPN = 0x64
    ESME_RX_P_APPN = 0x65
    ESME_RX_R_APPN = 0x66
    ESME_RINVOPTPARSTREAM = 0xC0
    ESME_RINVPARLEN = 0xC2
    ESME_RMISSINGOPTPARAM = 0xC3
    ESME_RUNKNOWNERR = 0xFF


class Tag(IntEnum):
    """TLV tags the relay reads."""

    receipted_message_id = 0x001E
    sar_msg_ref_num = 0x020C
    sar_total_segments = 0x020E
    sar_segment_seqnum = 0x020F
    sc_interface_version = 0x0210
    message_payload = 0x0424
    message_state = 0x0427


BIND_KINDS: Final = {
    CommandId.bind_transmitter: "transmitter",
    CommandId.bind_receiver: "receiver",
    CommandId.bind_transceiver: "transceiver",
}

# esm_class message-type bits that mark a deliver_sm as a receipt or an acknowledgement about
# an earlier submit (SMSC receipt 0x04, SME ack 0x08, intermediate notification 0x20): all of
# them carry the id of that submit and go back to whoever sent it, as Kannel does.
RECEIPT_ESM_BITS: Final = 0x04 | 0x08 | 0x20

_STATUS_NAMES: Final[dict[int, str]] = {
    code: info["name"] for code, info in smpp_constants.command_status_value_map.items()
}


def status_name(code: int) -> str:
    """The spec name of a command_status (ESME_RTHROTTLED), or its hex value if it has none."""
    return _STATUS_NAMES.get(code) or f"0x{code:08X}"


def command_name(code: int) -> str:
    """The spec name of a command_id, or its hex value if it is not a 3.4 command."""
    try:
        return CommandId(code).name
    except ValueError:
        return f"0x{code:08X}"


def command_label(code: int) -> str:
    """A command_id as a metric label: its spec name, or "other" for every id not in 3.4.

    A peer chooses the ids it sends; one label for all unknown ones keeps the number of
    series bounded whatever it sends (logs keep the hex value).
    """
    try:
        return CommandId(code).name
    except ValueError:
        return "other"


class FramingError(Exception):
    """The stream cannot be split into PDUs any more: the connection must be closed."""

    def __init__(
        self, reason: str, length: int, sequence: int, frames: list[bytes] | None = None
    ) -> None:
        super().__init__(f"{reason}: command_length {length}")
        self.reason = reason
        self.length = length
        self.sequence = sequence
        # Whole PDUs that came before the bad length in the same read: still to be answered.
        self.frames = frames or []


class DecodeError(Exception):
    """A well-framed PDU whose body is wrong; ``status`` is the answer the spec asks for."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class Framer:
    """Splits a byte stream on ``command_length``.

    The length is checked as soon as its four bytes are in, so a hostile length never makes us
    buffer more than one read's worth of bytes.
    """

    __slots__ = ("_buffer", "max_pdu")

    def __init__(self, max_pdu: int) -> None:
        self.max_pdu = max_pdu
        self._buffer = b""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete PDU held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete frame. Raises `FramingError` on a bad length."""
        buf = self._buffer + data if self._buffer else data
        end = len(buf)
        pos = 0
        frames: list[bytes] = []
        while end - pos >= 4:
            (length,) = _U32.unpack_from(buf, pos)
            if length < HEADER_LEN or length > self.max_pdu:
                sequence = _U32.unpack_from(buf, pos + 12)[0] if end - pos >= 16 else 0
                self._buffer = b""
                raise FramingError(
                    "too_short" if length < HEADER_LEN else "too_long", length, sequence, frames
                )
            if end - pos < length:
                break
            frames.append(buf[pos : pos + length])
            pos += length
        self._buffer = buf[pos:] if pos else buf
        return frames

    def pending_sequence(self) -> int:
        """The sequence_number of the incomplete PDU held back, or 0 before its header is in."""
        buf = self._buffer
        return sequence_of(buf) if len(buf) >= HEADER_LEN else 0


def header(frame: bytes) -> tuple[int, int, int, int]:
    """(command_length, command_id, command_status, sequence_number)."""
    return HEADER.unpack_from(frame, 0)


def sequence_of(frame: bytes) -> int:
    """The sequence_number of a frame."""
    return _U32.unpack_from(frame, 12)[0]  # type: ignore[no-any-return]


def with_sequence(frame: bytes, sequence: int) -> bytes:
    """The same PDU under another sequence_number: how the relay forwards a peer's bytes."""
    return frame[:12] + _U32.pack(sequence) + frame[16:]


def build(command_id: int, sequence: int, body: bytes = b"", status: int = 0) -> bytes:
    """A PDU from its parts."""
    return HEADER.pack(HEADER_LEN + len(body), command_id, status, sequence) + body


def response(command_id: int, sequence: int, status: int = 0, body: bytes = b"") -> bytes:
    """The response to a request with this command_id and sequence_number.

    The spec says a response with a non-zero status carries no body (3.4 section 4.4.2).
    """
    return build(command_id | RESPONSE_BIT, sequence, body if status == 0 else b"", status)


def generic_nack(sequence: int, status: int) -> bytes:
    """A generic_nack (spec 4.3)."""
    return build(CommandId.generic_nack, sequence, b"", status)


def submit_sm_resp(sequence: int, status: int, message_id: bytes = b"") -> bytes:
    """A submit_sm_resp; the message_id is only sent with ESME_ROK."""
    return response(CommandId.submit_sm, sequence, status, message_id + b"\0")


def message_id_of(resp: bytes) -> bytes:
    """The message_id of a submit_sm_resp ("" for a body-less error response)."""
    end = resp.find(b"\0", HEADER_LEN)
    return resp[HEADER_LEN:end] if end >= 0 else resp[HEADER_LEN:]


class ShortMessage(NamedTuple):
    """The fields of a submit_sm or deliver_sm (both share one body layout), read from its bytes.

    ``tlvs`` keeps every optional parameter in order, unknown vendor ones included, as
    (tag, value) pairs; nothing is decoded further than the relay needs. A NamedTuple because
    one is built for every submit and it costs a quarter of a frozen attrs class.
    """

    service_type: bytes
    source_ton: int
    source_npi: int
    source_addr: bytes
    dest_ton: int
    dest_npi: int
    destination_addr: bytes
    esm_class: int
    protocol_id: int
    priority_flag: int
    schedule_delivery_time: bytes
    validity_period: bytes
    registered_delivery: int
    replace_if_present: int
    data_coding: int
    sm_default_msg_id: int
    short_message: bytes
    tlvs: tuple[tuple[int, bytes], ...]

    def tlv(self, tag: int) -> bytes | None:
        """The value of the first TLV with this tag."""
        for t, value in self.tlvs:
            if t == tag:
                return value
        return None

    @property
    def text(self) -> bytes:
        """The message octets: short_message, or message_payload when that carries them."""
        if self.short_message:
            return self.short_message
        return self.tlv(Tag.message_payload) or b""


BLANK_MESSAGE: Final = ShortMessage(
    b"", 0, 0, b"", 0, 0, b"", 0, 0, 0, b"", b"", 0, 0, 0, 0, b"", ()
)
"""Every field empty or zero: build a message with ``BLANK_MESSAGE._replace(...)``."""


def read_short_message(frame: bytes) -> ShortMessage:
    """Read a submit_sm or deliver_sm body. Raises `DecodeError` with the status to answer.

    Every submit goes through here, so the C-octet strings are found inline: each ``find`` is
    bounded by the field's maximum size, the NUL included (3.4 section 4.1).
    """
    find = frame.find
    try:
        end = find(b"\0", 16, 22)
        if end < 0:
            raise DecodeError(Status.ESME_RINVSERTYP, "service_type too long or cut off")
        service_type = frame[16:end]
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
        esm, pid, prio = frame[end + 1], frame[end + 2], frame[end + 3]
        p = end + 4
        end = find(b"\0", p, p + 17)
        if end < 0:
            raise DecodeError(Status.ESME_RINVSCHED, "schedule_delivery_time too long or cut off")
        sched = frame[p:end]
        p = end + 1
        end = find(b"\0", p, p + 17)
        if end < 0:
            raise DecodeError(Status.ESME_RINVEXPIRY, "validity_period too long or cut off")
        valid = frame[p:end]
        p = end + 1
        regd, repl, dc, sm_id, sm_len = frame[p : p + 5]
    except (IndexError, ValueError):
        raise DecodeError(Status.ESME_RINVCMDLEN, "mandatory fields run past the PDU") from None
    p += 5
    limit = len(frame)
    if p + sm_len > limit:
        raise DecodeError(Status.ESME_RINVMSGLEN, "sm_length runs past the PDU")
    p_end = p + sm_len
    tlvs = tuple(_read_tlvs(frame, p_end)) if p_end < limit else ()
    return ShortMessage(
        service_type,
        s_ton,
        s_npi,
        source,
        d_ton,
        d_npi,
        dest,
        esm,
        pid,
        prio,
        sched,
        valid,
        regd,
        repl,
        dc,
        sm_id,
        frame[p:p_end],
        tlvs,
    )


def _read_tlvs(frame: bytes, pos: int) -> Iterator[tuple[int, bytes]]:
    limit = len(frame)
    while pos < limit:
        if limit - pos < 4:
            raise DecodeError(Status.ESME_RINVOPTPARSTREAM, "truncated TLV header")
        tag, length = _TLV_HEAD.unpack_from(frame, pos)
        pos += 4
        if pos + length > limit:
            raise DecodeError(Status.ESME_RINVOPTPARSTREAM, "TLV runs past the PDU")
        yield tag, frame[pos : pos + length]
        pos += length


# --- what a submit_sm's fields may hold (3.4 sections 5.2 and 5.3) -----------------------------

# TON values whose addresses are digits (international, national, subscriber, abbreviated).
_NUMERIC_TON: Final = frozenset((1, 2, 4, 6))
_ALPHANUMERIC_TON: Final = 5
_NPI: Final = frozenset((0, 1, 3, 4, 6, 8, 9, 10, 14, 18))
# esm_class bits 5-2 in a submit_sm: default, ESME delivery ack, manual/user ack (0x04, 0x20:
# receipts and notifications, only ever travel SMSC to ESME).
_SUBMIT_MESSAGE_TYPES: Final = frozenset((0x00, 0x08, 0x10))
_PRINTABLE: Final = re.compile(rb"[\x20-\x7e]*")
_DIGITS: Final = re.compile(rb"\+?[0-9]+")
_ABSOLUTE_TIME: Final = re.compile(
    rb"[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]"
    rb"[0-9](0[0-9]|[1-3][0-9]|4[0-8])[+-]"
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


def _time_ok(value: bytes) -> bool:
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
    if not _time_ok(m.schedule_delivery_time):
        raise DecodeError(Status.ESME_RINVSCHED, "schedule_delivery_time not YYMMDDhhmmsstnnp")
    if not _time_ok(m.validity_period):
        raise DecodeError(Status.ESME_RINVEXPIRY, "validity_period not YYMMDDhhmmsstnnp")
    regd = m.registered_delivery
    if regd & 0x03 == 0x03 or regd & 0xE0:
        raise DecodeError(Status.ESME_RINVREGDLVFLG, f"registered_delivery 0x{regd:02X}")
    if m.replace_if_present > 1:
        raise DecodeError(Status.ESME_RINVREPFLAG, f"replace_if_present {m.replace_if_present}")
    if len(m.short_message) > MAX_SHORT_MESSAGE:
        raise DecodeError(Status.ESME_RINVMSGLEN, "sm_length above 254")
    for tag, value in m.tlvs:
        size = TLV_LENGTHS.get(tag)
        if size is not None and not size[0] <= len(value) <= size[1]:
            raise DecodeError(Status.ESME_RINVPARLEN, f"TLV 0x{tag:04X} of length {len(value)}")
        if tag == Tag.message_payload and m.short_message:
            # 3.4 section 5.3.2.32: with message_payload, sm_length must be 0.
            raise DecodeError(Status.ESME_RINVPARLEN, "message_payload with a short_message")


_RECEIPT_ID: Final = re.compile(rb"\bid:(\S+)", re.IGNORECASE)


def receipt_id(message: ShortMessage) -> bytes | None:
    """The id a receipt is about: ``receipted_message_id`` first, else the text's ``id:``."""
    tlv = message.tlv(Tag.receipted_message_id)
    if tlv:
        return tlv.rstrip(b"\0")
    match = _RECEIPT_ID.search(message.text)
    return match.group(1) if match else None


def normalise_message_id(message_id: bytes) -> str:
    """The form under which message ids are compared.

    SMSCs differ in case and leading zeros between submit_sm_resp and the receipt (Jasmin and
    Kannel both had to learn this); neither changes which message is meant.
    """
    return message_id.decode("latin-1").strip().upper().lstrip("0") or "0"


# --- PDUs decoded or built with smpp.pdu (rare, so its cost does not matter) ----------------


@attrs.frozen
class BindRequest:
    """A bind_transmitter / bind_receiver / bind_transceiver as the relay needs it."""

    kind: str  # "transmitter", "receiver" or "transceiver"
    system_id: str
    password: str
    system_type: str
    interface_version: int


def _wire_status(error: PDUParseError) -> int:
    name = getattr(error.status, "name", "ESME_RSYSERR")
    return int(smpp_constants.command_status_name_map.get(name, Status.ESME_RSYSERR))


def decode(frame: bytes) -> operations.PDU:
    """Decode one whole frame with smpp.pdu. Raises `DecodeError` with the status to answer."""
    try:
        # A fresh encoder each time: PDUEncoder keeps state between calls (deps.md P2).
        return PDUEncoder().decode(BytesIO(frame))
    except PDUParseError as error:
        raise DecodeError(_wire_status(error), str(error)) from None
    except Exception as error:  # smpp.pdu raises KeyError and others on some inputs (P4)
        raise DecodeError(Status.ESME_RSYSERR, f"{type(error).__name__}: {error}") from None


def encode(pdu: operations.PDU) -> bytes:
    """Encode a PDU built with smpp.pdu."""
    return PDUEncoder().encode(pdu)  # type: ignore[no-any-return]


def _text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value or "")


def read_bind(frame: bytes) -> BindRequest:
    """Decode a bind request. Raises `DecodeError` (RINVSYSID, RINVPASWD, ...) when malformed."""
    pdu = decode(frame)
    command_id = header(frame)[1]
    params = pdu.params
    return BindRequest(
        kind=BIND_KINDS[CommandId(command_id)],
        system_id=_text(params.get("system_id")),
        password=_text(params.get("password")),
        system_type=_text(params.get("system_type")),
        interface_version=int(params.get("interface_version") or 0),
    )


_BIND_OPERATIONS: Final = {
    "transmitter": (operations.BindTransmitter, operations.BindTransmitterResp),
    "receiver": (operations.BindReceiver, operations.BindReceiverResp),
    "transceiver": (operations.BindTransceiver, operations.BindTransceiverResp),
}


def bind_request(
    kind: str,
    sequence: int,
    system_id: str,
    password: str,
    system_type: str = "",
    interface_version: int = 0x34,
    addr_ton: int = 0,
    addr_npi: int = 0,
    address_range: str = "",
) -> bytes:
    """A bind request of the given kind ("transmitter", "receiver", "transceiver")."""
    request_class = _BIND_OPERATIONS[kind][0]
    pdu = request_class(
        seqNum=sequence,
        system_id=system_id.encode(),
        password=password.encode(),
        system_type=system_type.encode(),
        interface_version=interface_version,
        addr_ton=_enum_for(pdu_types.AddrTon, smpp_constants.addr_ton_value_map, addr_ton),
        addr_npi=_enum_for(pdu_types.AddrNpi, smpp_constants.addr_npi_value_map, addr_npi),
        address_range=address_range.encode(),
    )
    return encode(pdu)


def _enum_for(enum: type, value_map: dict[int, str], value: int) -> object:
    # smpp.pdu enums are auto-numbered; their wire values live in the constants maps (P6).
    return getattr(enum, value_map[value].upper())


def bind_response(kind: str, sequence: int, status: int, system_id: str) -> bytes:
    """The response to a bind; with ESME_ROK it carries our system_id and interface version."""
    command_id = {v: k for k, v in BIND_KINDS.items()}[kind]
    if status != Status.ESME_ROK:
        return response(command_id, sequence, status)
    body = system_id.encode() + b"\0" + _TLV_HEAD.pack(Tag.sc_interface_version, 1) + b"\x34"
    return response(command_id, sequence, status, body)


def encode_short_message(command_id: int, sequence: int, message: ShortMessage) -> bytes:
    """A submit_sm or deliver_sm from its fields (the inverse of `read_short_message`)."""
    m = message
    body = b"".join(
        [
            m.service_type + b"\0",
            bytes((m.source_ton, m.source_npi)),
            m.source_addr + b"\0",
            bytes((m.dest_ton, m.dest_npi)),
            m.destination_addr + b"\0",
            bytes((m.esm_class, m.protocol_id, m.priority_flag)),
            m.schedule_delivery_time + b"\0",
            m.validity_period + b"\0",
            bytes(
                (
                    m.registered_delivery,
                    m.replace_if_present,
                    m.data_coding,
                    m.sm_default_msg_id,
                    len(m.short_message),
                )
            ),
            m.short_message,
            *(_TLV_HEAD.pack(tag, len(value)) + value for tag, value in m.tlvs),
        ]
    )
    return build(command_id, sequence, body)


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


MESSAGE_STATES: Final = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}


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
