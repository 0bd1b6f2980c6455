"""Bind requests and responses, decoded and built with ``smpp.pdu``.

The only place that decodes or encodes with ``smpp.pdu``: binds are rare, so its cost (about
30 us a decode) does not matter, and every field of a bind does. It is too slow and too lossy
(vendor TLVs, vendor statuses) for the hot path, which reads bytes itself.
"""

from __future__ import annotations

from io import BytesIO
from typing import Final

import attrs
from smpp.pdu import constants as smpp_constants
from smpp.pdu import operations, pdu_types
from smpp.pdu.error import PDUParseError
from smpp.pdu.pdu_encoding import PDUEncoder

from smpprelay.smpp.constants import BIND_KINDS, BindKind, CommandId, Status, Tag
from smpprelay.smpp.framing import TLV_HEAD, DecodeError, header, response

__all__ = ["BindRequest", "bind_request", "bind_response", "decode", "encode", "read_bind"]


@attrs.frozen
class BindRequest:
    """A bind_transmitter / bind_receiver / bind_transceiver as the relay needs it."""

    kind: BindKind
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


_BIND_COMMANDS: Final[dict[str, CommandId]] = {kind: cmd for cmd, kind in BIND_KINDS.items()}


def bind_response(kind: str, sequence: int, status: int, system_id: str) -> bytes:
    """The response to a bind; with ESME_ROK it carries our system_id and interface version."""
    command_id = _BIND_COMMANDS[kind]
    if status != Status.ESME_ROK:
        return response(command_id, sequence, status)
    body = system_id.encode() + b"\0" + TLV_HEAD.pack(Tag.sc_interface_version, 1) + b"\x34"
    return response(command_id, sequence, status, body)
