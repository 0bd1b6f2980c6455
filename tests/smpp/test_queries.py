"""query_sm, cancel_sm, replace_sm and query_sm_resp: read back what was written, and each
malformed field answered with the status the spec names."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from smpprelay import pdu
from smpprelay.pdu import CommandId, DecodeError, Status, Tag

QUERY = pdu.QuerySm(b"ABC123", 5, 0, b"MyBrand")
CANCEL = pdu.CancelSm(b"", b"ABC123", 5, 0, b"MyBrand", 1, 1, b"447700900123")
REPLACE = pdu.ReplaceSm(b"ABC123", 5, 0, b"MyBrand", b"", b"000001000000000R", 1, 0, b"new text")
ANSWER = pdu.QuerySmResp(b"ABC123", b"250102153000000+", 2, 0)


def body(command_id: int, data: bytes) -> bytes:
    return pdu.build(command_id, 7, data)


def test_query_sm_round_trip_is_the_spec_layout() -> None:
    frame = pdu.query_sm(7, QUERY)
    assert frame == body(CommandId.query_sm, b"ABC123\0\x05\x00MyBrand\0")
    assert pdu.read_query_sm(frame) == QUERY


def test_query_sm_resp_round_trip_and_error_without_body() -> None:
    frame = pdu.query_sm_resp(3, Status.ESME_ROK, ANSWER)
    assert pdu.header(frame) == (len(frame), CommandId.query_sm_resp, 0, 3)
    assert frame[16:] == b"ABC123\x00250102153000000+\x00\x02\x00"
    assert pdu.read_query_sm_resp(frame) == ANSWER
    assert pdu.query_sm_resp(3, Status.ESME_RINVMSGID) == struct.pack(
        "!IIII", 16, CommandId.query_sm_resp, 0x0C, 3
    )


def test_cancel_sm_round_trip_is_the_spec_layout() -> None:
    frame = pdu.cancel_sm(7, CANCEL)
    assert frame == body(CommandId.cancel_sm, b"\0ABC123\0\x05\x00MyBrand\0\x01\x01447700900123\0")
    assert pdu.read_cancel_sm(frame) == CANCEL


def test_replace_sm_round_trip_is_the_spec_layout() -> None:
    frame = pdu.replace_sm(7, REPLACE)
    assert frame == body(
        CommandId.replace_sm,
        b"ABC123\0\x05\x00MyBrand\0\x00000001000000000R\0\x01\x00\x08new text",
    )
    assert pdu.read_replace_sm(frame) == REPLACE
    assert pdu.read_replace_sm(frame).text == b"new text"


def test_replace_sm_text_may_come_in_message_payload() -> None:
    request = REPLACE._replace(short_message=b"", tlvs=((Tag.message_payload, b"x" * 300),))
    assert pdu.read_replace_sm(pdu.replace_sm(1, request)).text == b"x" * 300


@pytest.mark.parametrize(
    ("frame", "status"),
    [
        (body(CommandId.query_sm, b"A" * 65 + b"\0\x05\x00X\0"), Status.ESME_RINVMSGID),
        (body(CommandId.query_sm, b"ABC"), Status.ESME_RINVMSGID),
        (body(CommandId.query_sm, b"ABC\0\x05"), Status.ESME_RINVCMDLEN),
        (body(CommandId.query_sm, b"ABC\0\x05\x00" + b"1" * 21 + b"\0"), Status.ESME_RINVSRCADR),
        (body(CommandId.query_sm, b"ABC\0\x05\x00X\0\x00"), Status.ESME_RINVOPTPARSTREAM),
    ],
    ids=["id-too-long", "id-cut-off", "no-npi", "source-too-long", "bad-tlv"],
)
def test_malformed_query_sm(frame: bytes, status: int) -> None:
    with pytest.raises(DecodeError) as error:
        pdu.read_query_sm(frame)
    assert error.value.status == status


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"1234567\0", Status.ESME_RINVSERTYP),
        (b"\0ABC\0\x05\x00X\0\x01\x01" + b"9" * 21 + b"\0", Status.ESME_RINVDSTADR),
        (b"\0ABC\0\x05\x00X\0\x01", Status.ESME_RINVCMDLEN),
    ],
    ids=["service-type", "destination", "cut-off"],
)
def test_malformed_cancel_sm(data: bytes, status: int) -> None:
    with pytest.raises(DecodeError) as error:
        pdu.read_cancel_sm(body(CommandId.cancel_sm, data))
    assert error.value.status == status


def _replace(**fields: Any) -> bytes:
    return pdu.replace_sm(1, REPLACE._replace(**fields))


@pytest.mark.parametrize(
    ("frame", "status"),
    [
        (_replace(schedule_delivery_time=b"tomorrow"), Status.ESME_RINVSCHED),
        (_replace(validity_period=b"1"), Status.ESME_RINVEXPIRY),
        (_replace(registered_delivery=3), Status.ESME_RINVREGDLVFLG),
        (_replace(short_message=b"x" * 255), Status.ESME_RINVMSGLEN),
        (_replace()[:-2], Status.ESME_RINVMSGLEN),
        (_replace(tlvs=((Tag.message_payload, b"both"),)), Status.ESME_RINVPARLEN),
    ],
    ids=["schedule", "validity", "registered-delivery", "too-long", "cut-off", "payload-too"],
)
def test_malformed_replace_sm(frame: bytes, status: int) -> None:
    with pytest.raises(DecodeError) as error:
        pdu.read_replace_sm(frame)
    assert error.value.status == status
