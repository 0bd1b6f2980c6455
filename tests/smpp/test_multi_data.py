"""The submit_multi and data_sm wire code (smpprelay.smpp.multi, smpprelay.smpp.data),
checked against PDUs packed by hand from SMPP 3.4 sections 4.5 and 4.7."""

from __future__ import annotations

import struct

import pytest

from smpprelay.smpp.constants import CommandId, Status, Tag
from smpprelay.smpp.data import encode_data_sm, encode_like, read_data_sm
from smpprelay.smpp.framing import DecodeError
from smpprelay.smpp.multi import Destination, Unsuccess, read_submit_multi, submit_multi_resp
from smpprelay.smpp.short_message import read_short_message

HEAD = b"CMT\0" + b"\x05\x00SHOP\0"
TAIL = b"\x40\x00\x01" + b"\0\0" + b"\x01\x00\x08\x00" + b"\x02hi" + b"\x02\x04\x00\x02\x00\x01"


def frame(command_id: int, body: bytes, sequence: int = 3) -> bytes:
    return struct.pack("!IIII", 16 + len(body), command_id, 0, sequence) + body


def test_a_submit_multi_is_split_at_its_destinations_and_each_submit_sm_keeps_the_rest() -> None:
    dests = b"\x01\x01\x01447700900001\0" + b"\x02staff\0"
    multi = read_submit_multi(frame(CommandId.submit_multi, HEAD + b"\x02" + dests + TAIL))
    assert multi.destinations == (
        Destination(1, 1, 1, b"447700900001"),
        Destination(2, 0, 0, b"staff"),
    )
    submit = multi.submit_sm(multi.destinations[0], 9)
    assert submit == frame(CommandId.submit_sm, HEAD + b"\x01\x01447700900001\0" + TAIL, 9)
    fields = read_short_message(submit)
    assert (fields.esm_class, fields.data_coding, fields.short_message) == (0x40, 8, b"hi")
    assert fields.tlvs == ((0x0204, b"\x00\x01"),)


@pytest.mark.parametrize(
    ("dests", "status"),
    [
        (b"\x00", Status.ESME_RINVNUMDESTS),
        (b"\xff" + b"\x01\x01\x011\0" * 255, Status.ESME_RINVNUMDESTS),
        (b"\x01\x03x\0", Status.ESME_RINVDESTFLAG),
        (b"\x01\x01\x01\x01" + b"1" * 21 + b"\0", Status.ESME_RINVDSTADR),
        (b"\x01\x02" + b"n" * 21 + b"\0", Status.ESME_RINVDLNAME),
        (b"\x01\x01\x01", Status.ESME_RINVCMDLEN),
    ],
)
def test_a_bad_destination_list_refuses_the_pdu(dests: bytes, status: int) -> None:
    with pytest.raises(DecodeError) as raised:
        read_submit_multi(frame(CommandId.submit_multi, HEAD + dests))
    assert raised.value.status == status


def test_submit_multi_resp_lists_each_unsuccess_sme() -> None:
    resp = submit_multi_resp(
        4, 0, b"R1", [Unsuccess(1, 1, b"4477", 0x0B), Unsuccess(0, 0, b"l", 0x34)]
    )
    body = b"R1\0" + b"\x02" + b"\x01\x014477\0" + b"\0\0\0\x0b" + b"\0\0l\0" + b"\0\0\0\x34"
    assert resp == struct.pack("!IIII", 16 + len(body), CommandId.submit_multi_resp, 0, 4) + body


def test_a_data_sm_reads_as_a_submit_and_writes_back_the_same_bytes() -> None:
    body = (
        b"\0"
        + b"\x05\x00SHOP\0"
        + b"\x01\x01447700900001\0"
        + b"\x00\x01\x00"
        + struct.pack("!HH", Tag.message_payload, 5)
        + b"hello"
    )
    data = frame(CommandId.data_sm, body)
    fields = read_data_sm(data)
    assert (fields.source_addr, fields.destination_addr, fields.registered_delivery) == (
        b"SHOP",
        b"447700900001",
        1,
    )
    assert fields.text == b"hello"
    assert encode_data_sm(3, fields) == data
    assert encode_like(data, fields) == data
    with pytest.raises(DecodeError):
        read_data_sm(frame(CommandId.data_sm, body[:12]))
