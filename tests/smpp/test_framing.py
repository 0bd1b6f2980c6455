"""Tests for smpprelay.smpp.framing: splitting a stream into PDUs, headers, responses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpprelay.smpp.constants import MAX_SEQUENCE, CommandId, Status
from smpprelay.smpp.framing import (
    Framer,
    FramingError,
    build,
    generic_nack,
    message_id_of,
    sequence_of,
    submit_sm_resp,
    with_sequence,
)
from tests.fakes import deliver_sm, submit_sm

MAX_PDU = 4096


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
    frames = [submit_sm(sequence=1), build(CommandId.enquire_link, 2), deliver_sm(3)]
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
    frame = build(CommandId.submit_sm, 1, b"x" * 84)
    assert Framer(100).feed(frame) == [frame]
    with pytest.raises(FramingError, match="too_long"):
        Framer(99).feed(frame)


_PDU = st.builds(
    lambda command_id, sequence, body: build(command_id, sequence, body),
    st.sampled_from(list(CommandId)),
    st.integers(1, MAX_SEQUENCE),
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


def test_with_sequence_changes_only_the_sequence() -> None:
    """with_sequence rewrites bytes 12-15 and nothing else."""
    frame = submit_sm(sequence=1, short_message=b"same")
    moved = with_sequence(frame, 0x01020304)
    assert moved[:12] == frame[:12]
    assert moved[12:16] == b"\x01\x02\x03\x04"
    assert moved[16:] == frame[16:]
    assert sequence_of(moved) == 0x01020304


def test_submit_sm_resp_ok_and_error() -> None:
    """OK carries the message_id and its NUL; an error response has no body."""
    assert submit_sm_resp(7, 0, b"abc") == bytes.fromhex("0000001480000004000000000000000761626300")
    error = submit_sm_resp(7, Status.ESME_RTHROTTLED, b"abc")
    assert error == struct.pack("!IIII", 16, CommandId.submit_sm_resp, 0x58, 7)
    assert message_id_of(error) == b""
    assert message_id_of(submit_sm_resp(7, 0, b"abc")) == b"abc"


def test_generic_nack_bytes() -> None:
    """generic_nack is a bare header with the status and the sequence."""
    assert generic_nack(42, Status.ESME_RINVCMDID) == bytes.fromhex(
        "00000010 80000000 00000003 0000002a"
    )
