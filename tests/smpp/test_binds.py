"""Tests for smpprelay.smpp.binds: bind requests and responses through smpp.pdu."""

from __future__ import annotations

import struct

import pytest

from smpprelay.smpp.binds import BindRequest, bind_request, bind_response, read_bind
from smpprelay.smpp.constants import BindKind, CommandId, Status
from smpprelay.smpp.framing import DecodeError, build, header


@pytest.mark.parametrize(
    ("kind", "command_id"),
    [
        ("transmitter", CommandId.bind_transmitter),
        ("receiver", CommandId.bind_receiver),
        ("transceiver", CommandId.bind_transceiver),
    ],
)
def test_bind_request_round_trip(kind: BindKind, command_id: CommandId) -> None:
    """bind_request builds what read_bind reads back, under the right command_id."""
    frame = bind_request(kind, 12, "app1", "secret", "VMA", 0x34, 1, 1, "^447")
    assert header(frame) == (len(frame), command_id, 0, 12)
    assert read_bind(frame) == BindRequest(
        kind=kind, system_id="app1", password="secret", system_type="VMA", interface_version=0x34
    )


def test_read_bind_of_hand_built_bytes() -> None:
    """read_bind reads raw bytes the way the spec lays them out."""
    body = b"app2\0pw\0\0" + bytes([0x33, 0, 0]) + b"\0"
    bind = read_bind(build(CommandId.bind_receiver, 1, body))
    assert bind == BindRequest("receiver", "app2", "pw", "", 0x33)


def test_read_bind_rejects_long_system_id() -> None:
    """A system_id of 20 characters (16 octets max with the NUL) is ESME_RINVSYSID."""
    body = b"A" * 20 + b"\0" + b"pw\0" + b"\0" + bytes([0x34, 0, 0]) + b"\0"
    with pytest.raises(DecodeError) as info:
        read_bind(build(CommandId.bind_transceiver, 3, body))
    assert info.value.status == Status.ESME_RINVSYSID


def test_read_bind_rejects_truncated_body() -> None:
    """A bind whose system_id never ends is refused with ESME_RINVMSGLEN, not a crash."""
    with pytest.raises(DecodeError) as info:
        read_bind(build(CommandId.bind_transceiver, 3, b"A" * 10))
    assert info.value.status == Status.ESME_RINVMSGLEN


def test_bind_response_ok_carries_system_id_and_interface_version() -> None:
    """An OK bind response is system_id, NUL, then sc_interface_version 0x34."""
    frame = bind_response("transceiver", 4, Status.ESME_ROK, "relay")
    assert frame == (
        struct.pack("!IIII", 16 + 6 + 5, CommandId.bind_transceiver_resp, 0, 4)
        + b"relay\0"
        + b"\x02\x10\x00\x01\x34"
    )


def test_bind_response_error_is_header_only() -> None:
    """An error bind response has no body at all."""
    frame = bind_response("receiver", 4, Status.ESME_RINVPASWD, "relay")
    assert frame == struct.pack("!IIII", 16, CommandId.bind_receiver_resp, 0x0E, 4)
