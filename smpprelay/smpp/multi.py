"""submit_multi (SMPP 3.4 section 4.5): its destinations read, one submit_sm made per address,
and the submit_multi_resp written.

The relay carries a submit_multi as one submit_sm per SME address: the fields before the
destinations and the bytes after them (esm_class to the last TLV) are the same for every
address, so each submit_sm is those bytes around one destination, as the app sent them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

from smpprelay.smpp.constants import CommandId, Status
from smpprelay.smpp.framing import HEADER_LEN, DecodeError, build

__all__ = [
    "DEST_LIST",
    "DEST_SME",
    "MAX_DESTS",
    "Destination",
    "SubmitMulti",
    "Unsuccess",
    "read_submit_multi",
    "submit_multi_resp",
]

DEST_SME: Final = 1  # dest_flag: an SME address (ton, npi, address)
DEST_LIST: Final = 2  # dest_flag: the name of a distribution list kept by the SMSC
MAX_DESTS: Final = 254  # 3.4 section 4.5.1: at most 254 dest_address structures
_U32: Final = struct.Struct("!I")


class Destination(NamedTuple):
    """One dest_address of a submit_multi: ``flag`` 1 with its ton, npi and address, or
    ``flag`` 2 with the list's name in ``address`` (ton and npi 0)."""

    flag: int
    ton: int
    npi: int
    address: bytes


class Unsuccess(NamedTuple):
    """One unsuccess_sme of a submit_multi_resp (3.4 section 4.5.2)."""

    ton: int
    npi: int
    address: bytes
    status: int


class SubmitMulti(NamedTuple):
    """A submit_multi split where its destinations are: ``head`` is the body before
    number_of_dests (service_type and source), ``tail`` the body after the last destination."""

    head: bytes
    destinations: tuple[Destination, ...]
    tail: bytes

    def submit_sm(self, destination: Destination, sequence: int = 0) -> bytes:
        """The submit_sm for one SME address: the app's fields around that destination."""
        addressed = bytes((destination.ton, destination.npi)) + destination.address + b"\0"
        return build(CommandId.submit_sm, sequence, self.head + addressed + self.tail)


def _c_string(frame: bytes, pos: int, size: int, status: int, name: str) -> tuple[bytes, int]:
    """The C-octet string at ``pos`` of at most ``size`` octets with its NUL; the next pos."""
    end = frame.find(b"\0", pos, pos + size)
    if end < 0:
        raise DecodeError(status, f"{name} too long or cut off")
    return frame[pos:end], end + 1


def read_submit_multi(frame: bytes) -> SubmitMulti:
    """Split a submit_multi at its destinations. Raises `DecodeError` with the status to
    answer: ESME_RINVNUMDESTS for none or more than 254, ESME_RINVDESTFLAG for a dest_flag
    neither 1 nor 2 (the structures after it cannot be read). The fields after the
    destinations are read later, in each submit_sm, by the same reader as any submit."""
    try:
        _, pos = _c_string(frame, HEADER_LEN, 6, Status.ESME_RINVSERTYP, "service_type")
        _, pos = _c_string(frame, pos + 2, 21, Status.ESME_RINVSRCADR, "source_addr")
        head_end = pos
        count = frame[pos]
        pos += 1
        if not 1 <= count <= MAX_DESTS:
            raise DecodeError(Status.ESME_RINVNUMDESTS, f"number_of_dests {count}")
        destinations = []
        for _ in range(count):
            flag = frame[pos]
            if flag == DEST_SME:
                ton, npi = frame[pos + 1], frame[pos + 2]
                address, pos = _c_string(
                    frame, pos + 3, 21, Status.ESME_RINVDSTADR, "destination_addr"
                )
                destinations.append(Destination(flag, ton, npi, address))
            elif flag == DEST_LIST:
                name, pos = _c_string(frame, pos + 1, 21, Status.ESME_RINVDLNAME, "dl_name")
                destinations.append(Destination(flag, 0, 0, name))
            else:
                raise DecodeError(Status.ESME_RINVDESTFLAG, f"dest_flag {flag}")
    except IndexError:
        raise DecodeError(Status.ESME_RINVCMDLEN, "mandatory fields run past the PDU") from None
    return SubmitMulti(frame[HEADER_LEN:head_end], tuple(destinations), frame[pos:])


def submit_multi_resp(
    sequence: int, status: int, message_id: bytes, unsuccess: Sequence[Unsuccess] = ()
) -> bytes:
    """A submit_multi_resp with its body: message_id, no_unsuccess and each unsuccess_sme
    (dest_addr_ton, dest_addr_npi, destination_addr, error_status_code).

    The relay sends the body with a non-zero status too (when every address failed): it is
    where the app reads why each one did, and an app that skips the body of an error
    response still reads the status.
    """
    body = b"".join(
        [
            message_id + b"\0",
            bytes((len(unsuccess),)),
            *(
                bytes((sme.ton, sme.npi)) + sme.address + b"\0" + _U32.pack(sme.status)
                for sme in unsuccess
            ),
        ]
    )
    return build(CommandId.submit_multi_resp, sequence, body, status)
