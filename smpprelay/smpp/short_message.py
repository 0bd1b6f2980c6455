"""The body of a submit_sm or deliver_sm, read from its bytes and written back.

Every submit is read here, so the reader finds its fields with inline ``find`` calls instead of
a general decoder; optional parameters, unknown vendor ones included, are kept as sent.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from smpprelay.smpp.constants import Status, Tag
from smpprelay.smpp.framing import TLV_HEAD, DecodeError, build

__all__ = [
    "BLANK_MESSAGE",
    "DEFAULT_MAX_TLVS",
    "ShortMessage",
    "encode_short_message",
    "read_short_message",
]


# TLVs one PDU may carry (limits.max_tlvs). Real submits carry a handful; without a cap, 17,000
# empty vendor TLVs in one 70 kB submit cost ~1,000 times a normal one to read and look up.
DEFAULT_MAX_TLVS: Final = 64


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


def read_short_message(frame: bytes, max_tlvs: int = DEFAULT_MAX_TLVS) -> ShortMessage:
    """Read a submit_sm or deliver_sm body. Raises `DecodeError` with the status to answer.

    Every submit goes through here, so the C-octet strings are found inline: each ``find`` is
    bounded by the field's maximum size, the NUL included (3.4 section 4.1). More than
    ``max_tlvs`` TLVs is ESME_RINVOPTPARSTREAM, and the reader stops at the first one past it,
    so what a PDU costs to read (and every later walk of its TLVs) is bounded.
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
    tlvs = _read_tlvs(frame, p_end, max_tlvs) if p_end < limit else ()
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


def _read_tlvs(frame: bytes, pos: int, max_tlvs: int) -> tuple[tuple[int, bytes], ...]:
    limit = len(frame)
    tlvs: list[tuple[int, bytes]] = []
    unpack = TLV_HEAD.unpack_from
    while pos < limit:
        if len(tlvs) == max_tlvs:
            raise DecodeError(Status.ESME_RINVOPTPARSTREAM, f"more than {max_tlvs} TLVs")
        if limit - pos < 4:
            raise DecodeError(Status.ESME_RINVOPTPARSTREAM, "truncated TLV header")
        tag, length = unpack(frame, pos)
        pos += 4
        if pos + length > limit:
            raise DecodeError(Status.ESME_RINVOPTPARSTREAM, "TLV runs past the PDU")
        tlvs.append((tag, frame[pos : pos + length]))
        pos += length
    return tuple(tlvs)


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
            *(TLV_HEAD.pack(tag, len(value)) + value for tag, value in m.tlvs),
        ]
    )
    return build(command_id, sequence, body)
