"""Tests for smpprelay.pdu: framing, reading submit_sm/deliver_sm bytes, receipts, binds."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpp.pdu import operations, pdu_types

from smpprelay import pdu
from smpprelay.pdu import CommandId, DecodeError, Framer, FramingError, Status, Tag
from tests.fakes import deliver_sm, short_message, submit_sm

MAX_PDU = 4096
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
    return pdu.encode(submit)


# --- Framer ---------------------------------------------------------------------------


def test_framer_one_byte_feeds_yield_one_frame_at_the_end() -> None:
    """A PDU fed one byte at a time yields nothing until its last byte, then exactly it."""
    frame = submit_sm(sequence=3)
    framer = Framer(MAX_PDU)
    for i in range(len(frame) - 1):
        assert framer.feed(frame[i : i + 1]) == []
        assert framer.buffered == i + 1
    assert framer.feed(frame[-1:]) == [frame]
    assert framer.buffered == 0


def test_framer_three_pdus_in_one_feed() -> None:
    """Three PDUs in one read come out as three frames, in order."""
    frames = [submit_sm(sequence=1), pdu.build(CommandId.enquire_link, 2), deliver_sm(3)]
    framer = Framer(MAX_PDU)
    assert framer.feed(b"".join(frames)) == frames
    assert framer.buffered == 0


def test_framer_chunk_boundary_inside_length_field() -> None:
    """A read that ends inside command_length is held back until the rest arrives."""
    first, second = submit_sm(sequence=1), submit_sm(sequence=2, short_message=b"xyz")
    stream = first + second
    cut = len(first) + 2  # two bytes of the second PDU's length field
    framer = Framer(MAX_PDU)
    assert framer.feed(stream[:cut]) == [first]
    assert framer.buffered == 2
    assert framer.feed(stream[cut:]) == [second]
    assert framer.buffered == 0


def test_framer_too_short_raised_after_four_bytes() -> None:
    """command_length 8 is refused as soon as the length is in; sequence unknown is 0."""
    framer = Framer(MAX_PDU)
    assert framer.feed(b"\x00\x00\x00") == []
    with pytest.raises(FramingError) as info:
        framer.feed(b"\x08")
    assert info.value.reason == "too_short"
    assert info.value.length == 8
    assert info.value.sequence == 0
    assert framer.buffered == 0


def test_framer_too_short_carries_sequence_when_header_available() -> None:
    """With 16 bytes in, the error carries the offending PDU's sequence_number."""
    framer = Framer(MAX_PDU)
    with pytest.raises(FramingError) as info:
        framer.feed(struct.pack("!IIII", 8, CommandId.enquire_link, 0, 1))
    assert (info.value.reason, info.value.sequence) == ("too_short", 1)


def test_framer_too_long_raised_before_body_is_buffered() -> None:
    """command_length 0x7FFFFFFF is refused on its fourth byte; nothing is kept."""
    framer = Framer(MAX_PDU)
    assert framer.feed(b"\x7f\xff") == []
    assert framer.buffered == 2
    with pytest.raises(FramingError) as info:
        framer.feed(b"\xff\xff")
    assert info.value.reason == "too_long"
    assert info.value.length == 0x7FFFFFFF
    assert info.value.sequence == 0
    assert framer.buffered == 0


def test_framer_too_long_with_full_header_and_junk() -> None:
    """A huge length arriving with its header and junk reports the sequence, buffers nothing."""
    framer = Framer(MAX_PDU)
    header = struct.pack("!IIII", 0x7FFFFFFF, CommandId.submit_sm, 0, 42)
    with pytest.raises(FramingError) as info:
        framer.feed(header + b"\0" * 65536)
    assert (info.value.reason, info.value.sequence) == ("too_long", 42)
    assert framer.buffered == 0


def test_framer_http_request_is_too_long() -> None:
    """An HTTP request line reads as command_length 0x47455420 ("GET "), above any cap."""
    data = b"GET / HTTP/1.1\r\n\r\n"
    framer = Framer(MAX_PDU)
    with pytest.raises(FramingError) as info:
        framer.feed(data)
    assert info.value.reason == "too_long"
    assert info.value.length == 0x47455420
    assert info.value.sequence == struct.unpack("!I", data[12:16])[0]
    assert framer.buffered == 0


def test_framer_max_pdu_is_inclusive() -> None:
    """A PDU of exactly max_pdu bytes passes; one byte more is too long."""
    frame = pdu.build(CommandId.submit_sm, 1, b"x" * 84)
    assert Framer(100).feed(frame) == [frame]
    with pytest.raises(FramingError, match="too_long"):
        Framer(99).feed(frame)


_PDU = st.builds(
    lambda command_id, sequence, body: pdu.build(command_id, sequence, body),
    st.sampled_from(list(CommandId)),
    st.integers(1, pdu.MAX_SEQUENCE),
    st.binary(max_size=80),
)


@settings(database=None, max_examples=200)
@given(frames=st.lists(_PDU, max_size=8), data=st.data())
def test_framer_any_split_yields_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    """However a valid stream is cut into reads, the same frames come out in order."""
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    framer = Framer(MAX_PDU)
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(framer.feed(stream[start:cut]))
        start = cut
    assert out == frames
    assert framer.buffered == 0


# --- read_short_message / encode_short_message ---------------------------------------


def test_read_short_message_from_library_encoded_submit_sm() -> None:
    """Every field of a submit_sm encoded by smpp.pdu is read back with its wire value."""
    message = pdu.read_short_message(
        _library_submit_sm(sar_msg_ref_num=0x2A, sar_total_segments=2, sar_segment_seqnum=1)
    )
    assert message == pdu.ShortMessage(
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
    message = pdu.read_short_message(frame)
    assert message.tlvs == tuple(tlvs)
    assert message.tlv(VENDOR_TAG) == b"vendor\x00data"
    assert message.tlv(Tag.message_payload) is None


@pytest.mark.parametrize("command_id", [CommandId.submit_sm, CommandId.deliver_sm])
def test_encode_short_message_round_trips_bytes(command_id: CommandId) -> None:
    """read_short_message then encode_short_message gives back the same bytes."""
    body = _library_submit_sm(sar_msg_ref_num=9, sar_total_segments=2, sar_segment_seqnum=2)[16:]
    body += _tlv(VENDOR_TAG, b"\x01\x02\x03") + _tlv(Tag.message_payload, b"")
    frame = pdu.build(command_id, 0x7FFFFFFF, body)
    message = pdu.read_short_message(frame)
    assert pdu.encode_short_message(command_id, 0x7FFFFFFF, message) == frame


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
    message = pdu.read_short_message(frame)
    assert message.schedule_delivery_time == b"250101120000000+"
    assert message.validity_period == b"000001000000000R"
    assert message.short_message == bytes(range(254))
    assert pdu.encode_short_message(CommandId.submit_sm, 5, message) == frame


def test_text_falls_back_to_message_payload() -> None:
    """With an empty short_message, text is the message_payload TLV."""
    frame = submit_sm(short_message=b"", tlvs=((Tag.message_payload, b"long text"),))
    assert pdu.read_short_message(frame).text == b"long text"
    assert pdu.read_short_message(submit_sm(short_message=b"short")).text == b"short"


def test_source_addr_without_nul_is_invalid_source() -> None:
    """A source_addr that runs to the end of the PDU without a NUL is ESME_RINVSRCADR."""
    frame = pdu.build(CommandId.submit_sm, 1, b"\x00" + b"\x01\x01" + b"447700900123")
    with pytest.raises(DecodeError) as info:
        pdu.read_short_message(frame)
    assert info.value.status == 0x0A


def test_source_addr_longer_than_20_is_invalid_source() -> None:
    """21 address characters plus the NUL exceed the 21-octet field: ESME_RINVSRCADR."""
    with pytest.raises(DecodeError) as info:
        pdu.read_short_message(submit_sm(source_addr=b"1" * 21))
    assert info.value.status == Status.ESME_RINVSRCADR
    assert pdu.read_short_message(submit_sm(source_addr=b"1" * 20)).source_addr == b"1" * 20


def test_destination_without_nul_is_invalid_destination() -> None:
    """A destination_addr with no NUL is ESME_RINVDSTADR (0x0B)."""
    frame = submit_sm()
    cut = frame.index(b"447700900123") + len(b"447700900123")
    with pytest.raises(DecodeError) as info:
        pdu.read_short_message(_append(frame[:16], frame[16:cut]))
    assert info.value.status == Status.ESME_RINVDSTADR


def test_sm_length_past_the_end_is_invalid_message_length() -> None:
    """sm_length larger than what is left of the PDU is ESME_RINVMSGLEN (0x01)."""
    frame = submit_sm(short_message=b"hello")
    truncated = _append(frame[:16], frame[16:-2])  # command_length agrees, text is short
    with pytest.raises(DecodeError) as info:
        pdu.read_short_message(truncated)
    assert info.value.status == 0x01


def test_tlv_length_past_the_end_is_invalid_tlv_stream() -> None:
    """A TLV whose length runs past the PDU is ESME_RINVOPTPARSTREAM (0xC0)."""
    frame = _append(submit_sm(), struct.pack("!HH", VENDOR_TAG, 10) + b"abc")
    with pytest.raises(DecodeError) as info:
        pdu.read_short_message(frame)
    assert info.value.status == 0xC0


def test_stray_bytes_after_mandatory_fields_are_invalid_tlv_stream() -> None:
    """Three stray bytes after short_message (a truncated TLV header) are 0xC0."""
    with pytest.raises(DecodeError) as info:
        pdu.read_short_message(_append(submit_sm(), b"\x00\x1e\x00"))
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
        pdu.read_short_message(pdu.build(CommandId.submit_sm, 1, frame[16 : 16 + keep]))
    assert info.value.status == status


# --- receipts ---------------------------------------------------------------------------


def test_receipt_id_prefers_the_tlv_and_strips_its_nul() -> None:
    """receipted_message_id wins over the text's id: and loses its NUL."""
    message = short_message(
        esm_class=0x04,
        short_message=b"id:TEXTID sub:001 dlvrd:001 stat:DELIVRD err:000 text:",
        tlvs=((Tag.message_state, b"\x02"), (Tag.receipted_message_id, b"TLVID\x00")),
    )
    assert pdu.receipt_id(message) == b"TLVID"


def test_receipt_id_from_text() -> None:
    """Without the TLV, the id comes from the text's id: field (any case)."""
    message = short_message(
        esm_class=0x04, short_message=b"ID:0a1B2c sub:001 dlvrd:001 stat:DELIVRD err:000"
    )
    assert pdu.receipt_id(message) == b"0a1B2c"
    payload = short_message(short_message=b"", tlvs=((Tag.message_payload, b"id:77 stat:UNDELIV"),))
    assert pdu.receipt_id(payload) == b"77"


def test_receipt_id_none_without_id() -> None:
    """A message with neither the TLV nor an id: field has no receipt id."""
    assert pdu.receipt_id(short_message(short_message=b"stat:DELIVRD err:000")) is None
    assert pdu.receipt_id(short_message(short_message=b"paid:123")) is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"abc123", "ABC123"),
        (b"00ABC123", "ABC123"),
        (b"0000", "0"),
        (b" 0f ", "F"),
        (b"12", "12"),
    ],
)
def test_normalise_message_id(raw: bytes, normal: str) -> None:
    """Case, surrounding spaces and leading zeros do not change which message is meant."""
    assert pdu.normalise_message_id(raw) == normal


def test_normalise_message_id_keeps_inner_zeros() -> None:
    """Zeros that are not leading still tell ids apart."""
    assert pdu.normalise_message_id(b"100") != pdu.normalise_message_id(b"1")


def test_replace_receipt_id_rewrites_tlv_and_text_only() -> None:
    """Both id places change to the new (longer) id; every other field stays as sent."""
    text = b"id:op-7 sub:001 dlvrd:001 submit date:2501011200 stat:DELIVRD err:000 text:id:op-7"
    tlvs = (
        (Tag.message_state, b"\x02"),
        (Tag.receipted_message_id, b"op-7\x00"),
        (VENDOR_TAG, b"\xde\xad"),
    )
    frame = deliver_sm(sequence=99, esm_class=0x04, short_message=text, tlvs=tlvs)
    message = pdu.read_short_message(frame)

    rewritten = pdu.replace_receipt_id(frame, message, b"op-7", b"relay-000123")

    assert pdu.header(rewritten) == (len(rewritten), CommandId.deliver_sm, 0, 99)
    new_text = b"id:relay-000123" + text[len(b"id:op-7") :]  # only the first id: is the id
    expected = message._replace(
        short_message=new_text,
        tlvs=(
            (Tag.message_state, b"\x02"),
            (Tag.receipted_message_id, b"relay-000123\x00"),
            (VENDOR_TAG, b"\xde\xad"),
        ),
    )
    assert pdu.read_short_message(rewritten) == expected
    assert pdu.receipt_id(pdu.read_short_message(rewritten)) == b"relay-000123"


def test_replace_receipt_id_in_message_payload() -> None:
    """A receipt text carried in message_payload is rewritten there."""
    frame = deliver_sm(
        esm_class=0x04,
        short_message=b"",
        tlvs=((Tag.message_payload, b"id:ABC stat:DELIVRD"),),
    )
    rewritten = pdu.replace_receipt_id(frame, pdu.read_short_message(frame), b"abc", b"X1")
    assert pdu.read_short_message(rewritten).tlvs == ((Tag.message_payload, b"id:X1 stat:DELIVRD"),)


def test_replace_receipt_id_leaves_other_ids_alone() -> None:
    """A text whose id: is another id is not touched."""
    frame = deliver_sm(esm_class=0x04, short_message=b"id:OTHER stat:DELIVRD")
    rewritten = pdu.replace_receipt_id(frame, pdu.read_short_message(frame), b"OLD", b"NEW")
    assert rewritten == frame


# --- binds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "command_id"),
    [
        ("transmitter", CommandId.bind_transmitter),
        ("receiver", CommandId.bind_receiver),
        ("transceiver", CommandId.bind_transceiver),
    ],
)
def test_bind_request_round_trip(kind: str, command_id: CommandId) -> None:
    """bind_request builds what read_bind reads back, under the right command_id."""
    frame = pdu.bind_request(kind, 12, "app1", "secret", "VMA", 0x34, 1, 1, "^447")
    assert pdu.header(frame) == (len(frame), command_id, 0, 12)
    assert pdu.read_bind(frame) == pdu.BindRequest(
        kind=kind, system_id="app1", password="secret", system_type="VMA", interface_version=0x34
    )


def test_read_bind_of_hand_built_bytes() -> None:
    """read_bind reads raw bytes the way the spec lays them out."""
    body = b"app2\0pw\0\0" + bytes([0x33, 0, 0]) + b"\0"
    bind = pdu.read_bind(pdu.build(CommandId.bind_receiver, 1, body))
    assert bind == pdu.BindRequest("receiver", "app2", "pw", "", 0x33)


def test_read_bind_rejects_long_system_id() -> None:
    """A system_id of 20 characters (16 octets max with the NUL) is ESME_RINVSYSID."""
    body = b"A" * 20 + b"\0" + b"pw\0" + b"\0" + bytes([0x34, 0, 0]) + b"\0"
    with pytest.raises(DecodeError) as info:
        pdu.read_bind(pdu.build(CommandId.bind_transceiver, 3, body))
    assert info.value.status == Status.ESME_RINVSYSID


def test_read_bind_rejects_truncated_body() -> None:
    """A bind whose system_id never ends is refused with ESME_RINVMSGLEN, not a crash."""
    with pytest.raises(DecodeError) as info:
        pdu.read_bind(pdu.build(CommandId.bind_transceiver, 3, b"A" * 10))
    assert info.value.status == Status.ESME_RINVMSGLEN


def test_bind_response_ok_carries_system_id_and_interface_version() -> None:
    """An OK bind response is system_id, NUL, then sc_interface_version 0x34."""
    frame = pdu.bind_response("transceiver", 4, Status.ESME_ROK, "relay")
    assert frame == (
        struct.pack("!IIII", 16 + 6 + 5, CommandId.bind_transceiver_resp, 0, 4)
        + b"relay\0"
        + b"\x02\x10\x00\x01\x34"
    )


def test_bind_response_error_is_header_only() -> None:
    """An error bind response has no body at all."""
    frame = pdu.bind_response("receiver", 4, Status.ESME_RINVPASWD, "relay")
    assert frame == struct.pack("!IIII", 16, CommandId.bind_receiver_resp, 0x0E, 4)


# --- small helpers ------------------------------------------------------------------------


def test_status_name_known_and_vendor() -> None:
    """Known statuses have their spec name; vendor ones their hex value."""
    assert pdu.status_name(0x58) == "ESME_RTHROTTLED"
    assert pdu.status_name(0) == "ESME_ROK"
    assert pdu.status_name(0x400) == "0x00000400"


def test_command_name_known_and_unknown() -> None:
    """command_name names 3.4 commands and gives others as hex."""
    assert pdu.command_name(0x80000004) == "submit_sm_resp"
    assert pdu.command_name(0x77) == "0x00000077"


def test_with_sequence_changes_only_the_sequence() -> None:
    """with_sequence rewrites bytes 12-15 and nothing else."""
    frame = submit_sm(sequence=1, short_message=b"same")
    moved = pdu.with_sequence(frame, 0x01020304)
    assert moved[:12] == frame[:12]
    assert moved[12:16] == b"\x01\x02\x03\x04"
    assert moved[16:] == frame[16:]
    assert pdu.sequence_of(moved) == 0x01020304


def test_submit_sm_resp_ok_and_error() -> None:
    """OK carries the message_id and its NUL; an error response has no body."""
    assert pdu.submit_sm_resp(7, 0, b"abc") == bytes.fromhex(
        "0000001480000004000000000000000761626300"
    )
    error = pdu.submit_sm_resp(7, Status.ESME_RTHROTTLED, b"abc")
    assert error == struct.pack("!IIII", 16, CommandId.submit_sm_resp, 0x58, 7)
    assert pdu.message_id_of(error) == b""
    assert pdu.message_id_of(pdu.submit_sm_resp(7, 0, b"abc")) == b"abc"


def test_generic_nack_bytes() -> None:
    """generic_nack is a bare header with the status and the sequence."""
    assert pdu.generic_nack(42, Status.ESME_RINVCMDID) == bytes.fromhex(
        "00000010 80000000 00000003 0000002a"
    )
