"""`read_submit` (one regex reads and checks the mandatory fields) against what it replaces on
the relay's path: `read_message` then `check_submit`. Same fields, or the same status and
detail for a bad submit, whatever the input."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smpprelay import pdu
from smpprelay.message import Message, read_message, read_submit
from smpprelay.pdu import BLANK_MESSAGE, CommandId, DecodeError

_GOOD_TIMES = [b"", b"261203171500000+", b"261203171500048-", b"000000000100000R"]
_BAD_TIMES = [b"261203171500049+", b"000000000100001R", b"261303171500000+", b"2612031715000000"]
_byte = st.integers(0, 255)
_tlv = st.tuples(
    st.sampled_from([0x0424, 0x020C, 0x020E, 0x020F, 0x0005, 0x1403, 0x130C]),
    st.binary(max_size=4),
)
# Each field: (values check_submit takes, values it may refuse or that do not read).
_FIELDS: dict[str, tuple[list[Any], list[Any]]] = {
    "service_type": ([b"", b"CMT", b"ABCDE"], [b"ABCDEF", b"C\x01T", b"\x7f"]),
    "source_ton": ([0, 1, 2, 3, 4, 5, 6], [7, 255]),
    "source_npi": ([0, 1, 9, 18], [2, 255]),
    "source_addr": (
        [b"", b"BENCH", b"ABCDEFGHIJK", b"447700900123", b"+4477", b"9" * 20],
        [b"ABCDEFGHIJKL", b"a\x7fb", b"9" * 21, b"+", b"44+7", b" \x1f"],
    ),
    "dest_ton": ([0, 1, 3, 5, 6], [7, 255]),
    "dest_npi": ([0, 1, 14], [15, 255]),
    "destination_addr": ([b"447700900123", b"+4477", b"Shop", b"a b~"], [b"", b"4a", b"9" * 21]),
    "esm_class": ([0, 0x08, 0x10, 0x40, 0x83], [0x04, 0x20, 0x3C]),
    "priority_flag": ([0, 1, 3], [4, 255]),
    "schedule_delivery_time": (_GOOD_TIMES, _BAD_TIMES),
    "validity_period": (_GOOD_TIMES, _BAD_TIMES),
    "registered_delivery": ([0, 1, 2, 0x10, 0x1C], [3, 0x20, 0xFF]),
    "replace_if_present": ([0, 1], [2]),
    "short_message": (
        [b"", b"hello", b"\x05\x00\x03\x01\x02\x01hi", b"x" * 254],
        [b"x" * 255, b"\x05\x00\x03", b"\x09\x00"],
    ),
}


@st.composite
def _submit(draw: st.DrawFn) -> bytes:
    """A submit with none, one or two bad fields, maybe some TLVs, maybe cut short."""
    bad = draw(st.sets(st.sampled_from([*_FIELDS, "cut"]), max_size=2))
    values = {
        name: draw(st.sampled_from(bad_values if name in bad else good))
        for name, (good, bad_values) in _FIELDS.items()
    }
    fields = BLANK_MESSAGE._replace(
        **values,
        protocol_id=draw(_byte),
        data_coding=draw(_byte),
        tlvs=tuple(draw(st.lists(_tlv, max_size=3))),
    )
    frame = pdu.encode_short_message(CommandId.submit_sm, 1, fields)
    if "cut" in bad:
        frame = frame[: draw(st.integers(16, len(frame) - 1))]
    return frame


def _outcome(read: object, frame: bytes) -> tuple[object, ...]:
    assert callable(read)
    try:
        message: Message = read("app", frame, False, 2)
    except DecodeError as error:
        return ("refused", error.status, str(error))
    return (message.fields, message.udh, message.content, message.concat)


def _slow(account: str, frame: bytes, app_iso: bool, max_tlvs: int) -> Message:
    message = read_message(account, frame, app_iso, max_tlvs)
    pdu.check_submit(message.fields)
    return message


@settings(max_examples=1000, deadline=None)
@given(_submit())
def test_read_submit_answers_as_read_message_then_check_submit(frame: bytes) -> None:
    assert _outcome(read_submit, frame) == _outcome(_slow, frame)


def test_a_good_submit_is_read_in_one_pass() -> None:
    fields = BLANK_MESSAGE._replace(
        source_ton=5,
        source_addr=b"BENCH",
        dest_ton=1,
        dest_npi=1,
        destination_addr=b"447700900123",
        registered_delivery=1,
        schedule_delivery_time=b"261203171500000+",
        short_message=b"hello",
        tlvs=((0x020C, b"\x00\x01"),),
    )
    frame = pdu.encode_short_message(CommandId.submit_sm, 1, fields)
    assert pdu.read_checked_submit(frame, 64) == fields
    # One bad field and the caller goes the slow way, for the status to answer.
    assert pdu.read_checked_submit(frame.replace(b"BENCH", b"BENC\x7f"), 64) is None
    bad_time = frame.replace(b"261203171500000+", b"261203171500049+")
    assert pdu.read_checked_submit(bad_time, 64) is None
