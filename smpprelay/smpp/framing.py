"""Frames and headers: splitting a byte stream into PDUs, and reading and writing the header.

The relay forwards the peers' own bytes, so it mostly reads: the length guard is applied before
anything is buffered, and a forwarded PDU only changes its sequence_number. The few PDUs the
relay answers with itself (responses, ``generic_nack``) are built here from their header.
"""

from __future__ import annotations

import struct
from typing import Final

from smpprelay.smpp.constants import RESPONSE_BIT, CommandId

__all__ = [
    "HEADER",
    "HEADER_LEN",
    "TLV_HEAD",
    "DecodeError",
    "Framer",
    "FramingError",
    "build",
    "generic_nack",
    "header",
    "message_id_of",
    "response",
    "sequence_of",
    "submit_sm_resp",
    "with_sequence",
]

HEADER: Final = struct.Struct("!IIII")
HEADER_LEN: Final = 16
TLV_HEAD: Final = struct.Struct("!HH")
"""The tag and length that start every optional parameter (TLV)."""
_U32: Final = struct.Struct("!I")


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
