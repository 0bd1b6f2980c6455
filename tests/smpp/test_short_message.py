"""Tests for smpprelay.smpp.short_message: reading and writing submit_sm/deliver_sm bodies."""

from __future__ import annotations

import struct

import pytest
from smpp.pdu import operations, pdu_types

from smpprelay.smpp import short_message
from smpprelay.smpp.binds import encode
from smpprelay.smpp.constants import CommandId, Status, Tag
from smpprelay.smpp.framing import DecodeError, build
from smpprelay.smpp.short_message import (
    DEFAULT_MAX_TLVS,
    ShortMessage,
    encode_short_message,
    read_short_message,
)
from tests.fakes import submit_sm

VENDOR_TAG = 0x1403


def _tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("!HH", tag, len(value)) + value


def _append(frame: bytes, extra: bytes) -> bytes:
    """The frame with ``extra`` appended to its body and command_length fixed up."""
    body = frame[16:] + extra
    return struct.pack("!I", 16 + len(body)) + frame[4:16] + body


def _library_submit_sm(sequence: int = 7, **tlvs: int) -> bytes:
    """A submit_sm encoded by smpp.pdu (an independent encoder)."""
    udh = bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x01])
    submit = operations.SubmitSM(
        seqNum=sequence,
        service_type=b"CMT",
        source_addr_ton=pdu_types.AddrTon.ALPHANUMERIC,
        source_addr_npi=pdu_types.AddrNpi.UNKNOWN,
        source_addr=b"MyBrand",
        dest_addr_ton=pdu_types.AddrTon.INTERNATIONAL,
        dest_addr_npi=pdu_types.AddrNpi.ISDN,
        destination_addr=b"447700900123",
        esm_class=pdu_types.EsmClass(
            pdu_types.EsmClassMode.DEFAULT,
            pdu_types.EsmClassType.DEFAULT,
            [pdu_types.EsmClassGsmFeatures.UDHI_INDICATOR_SET],
        ),
        protocol_id=0,
        priority_flag=pdu_types.PriorityFlag.LEVEL_1,
        schedule_delivery_time=None,
        validity_period=None,
        registered_delivery=pdu_types.RegisteredDelivery(
            pdu_types.RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED
        ),
        replace_if_present_flag=pdu_types.ReplaceIfPresentFlag.DO_NOT_REPLACE,
        data_coding=pdu_types.DataCoding(
            pdu_types.DataCodingScheme.DEFAULT, pdu_types.DataCodingDefault.UCS2
        ),
        sm_default_msg_id=0,
        short_message=udh + b"hello",
        **tlvs,
    )
    return encode(submit)


def test_read_short_message_from_library_encoded_submit_sm() -> None:
    """Every field of a submit_sm encoded by smpp.pdu is read back with its wire value."""
    message = read_short_message(
        _library_submit_sm(sar_msg_ref_num=0x2A, sar_total_segments=2, sar_segment_seqnum=1)
    )
    assert message == ShortMessage(
        service_type=b"CMT",
        source_ton=5,
        source_npi=0,
        source_addr=b"MyBrand",
        dest_ton=1,
        dest_npi=1,
        destination_addr=b"447700900123",
        esm_class=0x40,
        protocol_id=0,
        priority_flag=1,
        schedule_delivery_time=b"",
        validity_period=b"",
        registered_delivery=1,
        replace_if_present=0,
        data_coding=8,
        sm_default_msg_id=0,
        short_message=bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x01]) + b"hello",
        tlvs=(
            (Tag.sar_msg_ref_num, b"\x00\x2a"),
            (Tag.sar_total_segments, b"\x02"),
            (Tag.sar_segment_seqnum, b"\x01"),
        ),
    )


def test_read_short_message_keeps_vendor_and_sar_tlvs_in_order() -> None:
    """A vendor TLV between SAR TLVs survives, in the order it was sent."""
    tlvs = [
        (Tag.sar_msg_ref_num, b"\x12\x34"),
        (VENDOR_TAG, b"vendor\x00data"),
        (Tag.sar_total_segments, b"\x03"),
        (Tag.sar_segment_seqnum, b"\x02"),
        (0x1400, b""),
    ]
    frame = _append(_library_submit_sm(), b"".join(_tlv(t, v) for t, v in tlvs))
    message = read_short_message(frame)
    assert message.tlvs == tuple(tlvs)
    assert message.tlv(VENDOR_TAG) == b"vendor\x00data"
    assert message.tlv(Tag.message_payload) is None


@pytest.mark.parametrize("command_id", [CommandId.submit_sm, CommandId.deliver_sm])
def test_encode_short_message_round_trips_bytes(command_id: CommandId) -> None:
    """read_short_message then encode_short_message gives back the same bytes."""
    body = _library_submit_sm(sar_msg_ref_num=9, sar_total_segments=2, sar_segment_seqnum=2)[16:]
    body += _tlv(VENDOR_TAG, b"\x01\x02\x03") + _tlv(Tag.message_payload, b"")
    frame = build(command_id, 0x7FFFFFFF, body)
    message = read_short_message(frame)
    assert encode_short_message(command_id, 0x7FFFFFFF, message) == frame


def test_round_trip_with_times_and_all_fields_set() -> None:
    """Non-empty time strings, a service_type and a 254-byte text round-trip too."""
    frame = submit_sm(
        sequence=5,
        service_type=b"WAP",
        schedule_delivery_time=b"250101120000000+",
        validity_period=b"000001000000000R",
        esm_class=0x03,
        protocol_id=0x7F,
        priority_flag=3,
        replace_if_present=1,
        data_coding=0xF5,
        sm_default_msg_id=7,
        short_message=bytes(range(254)),
    )
    message = read_short_message(frame)
    assert message.schedule_delivery_time == b"250101120000000+"
    assert message.validity_period == b"000001000000000R"
    assert message.short_message == bytes(range(254))
    assert encode_short_message(CommandId.submit_sm, 5, message) == frame


def test_text_falls_back_to_message_payload() -> None:
    """With an empty short_message, text is the message_payload TLV."""
    frame = submit_sm(short_message=b"", tlvs=((Tag.message_payload, b"long text"),))
    assert read_short_message(frame).text == b"long text"
    assert read_short_message(submit_sm(short_message=b"short")).text == b"short"


def test_source_addr_without_nul_is_invalid_source() -> None:
    """A source_addr that runs to the end of the PDU without a NUL is ESME_RINVSRCADR."""
    frame = build(CommandId.submit_sm, 1, b"\x00" + b"\x01\x01" + b"447700900123")
    with pytest.raises(DecodeError) as info:
        read_short_message(frame)
    assert info.value.status == 0x0A


def test_source_addr_longer_than_20_is_invalid_source() -> None:
    """21 address characters plus the NUL exceed the 21-octet field: ESME_RINVSRCADR."""
    with pytest.raises(DecodeError) as info:
        read_short_message(submit_sm(source_addr=b"1" * 21))
    assert info.value.status == Status.ESME_RINVSRCADR
    assert read_short_message(submit_sm(source_addr=b"1" * 20)).source_addr == b"1" * 20


def test_destination_without_nul_is_invalid_destination() -> None:
    """A destination_addr with no NUL is ESME_RINVDSTADR (0x0B)."""
    frame = submit_sm()
    cut = frame.index(b"447700900123") + len(b"447700900123")
    with pytest.raises(DecodeError) as info:
        read_short_message(_append(frame[:16], frame[16:cut]))
    assert info.value.status == Status.ESME_RINVDSTADR


def test_sm_length_past_the_end_is_invalid_message_length() -> None:
    """sm_length larger than what is left of the PDU is ESME_RINVMSGLEN (0x01)."""
    frame = submit_sm(short_message=b"hello")
    truncated = _append(frame[:16], frame[16:-2])  # command_length agrees, text is short
    with pytest.raises(DecodeError) as info:
        read_short_message(truncated)
    assert info.value.status == 0x01


def test_tlv_length_past_the_end_is_invalid_tlv_stream() -> None:
    """A TLV whose length runs past the PDU is ESME_RINVOPTPARSTREAM (0xC0)."""
    frame = _append(submit_sm(), struct.pack("!HH", VENDOR_TAG, 10) + b"abc")
    with pytest.raises(DecodeError) as info:
        read_short_message(frame)
    assert info.value.status == 0xC0


def test_stray_bytes_after_mandatory_fields_are_invalid_tlv_stream() -> None:
    """Three stray bytes after short_message (a truncated TLV header) are 0xC0."""
    with pytest.raises(DecodeError) as info:
        read_short_message(_append(submit_sm(), b"\x00\x1e\x00"))
    assert info.value.status == Status.ESME_RINVOPTPARSTREAM


@pytest.mark.parametrize(
    ("keep", "status"),
    [
        # Nothing after the header: no service_type terminator either.
        (0, Status.ESME_RINVSERTYP),
        # Ends right after destination_addr's NUL: esm_class is missing.
        (1 + 2 + 8 + 2 + 13, Status.ESME_RINVCMDLEN),
        # Ends inside the registered_delivery..sm_length group.
        (1 + 2 + 8 + 2 + 13 + 3 + 1 + 1 + 2, Status.ESME_RINVCMDLEN),
    ],
)
def test_truncated_mandatory_fields(keep: int, status: Status) -> None:
    """A body cut inside the mandatory fields raises DecodeError with a defined status."""
    frame = submit_sm()  # service_type "", source "MyBrand", destination "447700900123"
    with pytest.raises(DecodeError) as info:
        read_short_message(build(CommandId.submit_sm, 1, frame[16 : 16 + keep]))
    assert info.value.status == status


class _CountingHead:
    """Stands in for TLV_HEAD and counts the TLV headers the reader unpacks."""

    def __init__(self) -> None:
        self.walked = 0

    def unpack_from(self, frame: bytes, pos: int) -> tuple[int, int]:
        self.walked += 1
        tag, length = struct.unpack_from("!HH", frame, pos)
        return tag, length


def test_17000_empty_vendor_tlvs_stop_the_reader_at_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit with 17,000 empty vendor TLVs is ESME_RINVOPTPARSTREAM after 64 headers read,
    not 17,000 (before: all 17,000 read, then walked again by every lookup)."""
    head = _CountingHead()
    monkeypatch.setattr(short_message, "TLV_HEAD", head)
    frame = _append(submit_sm(), _tlv(VENDOR_TAG, b"") * 17_000)
    with pytest.raises(DecodeError) as info:
        read_short_message(frame)
    assert info.value.status == Status.ESME_RINVOPTPARSTREAM
    assert "more than 64 TLVs" in str(info.value)
    assert head.walked == DEFAULT_MAX_TLVS == 64


def test_the_tlv_cap_counts_tlvs_not_bytes() -> None:
    """Exactly max_tlvs TLVs are read, kept in order; one more is refused."""
    tlvs = b"".join(_tlv(VENDOR_TAG + i, bytes((i,))) for i in range(4))
    message = read_short_message(_append(submit_sm(), tlvs), max_tlvs=4)
    assert message.tlvs == tuple((VENDOR_TAG + i, bytes((i,))) for i in range(4))
    with pytest.raises(DecodeError) as info:
        read_short_message(_append(submit_sm(), tlvs), max_tlvs=3)
    assert info.value.status == Status.ESME_RINVOPTPARSTREAM
    assert len(read_short_message(_append(submit_sm(), tlvs * 16)).tlvs) == 64
