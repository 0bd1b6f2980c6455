"""smpplib taught the PDUs it lacks, for the end-to-end tests of issue 13's operations.

smpplib has query_sm and data_sm; cancel_sm, replace_sm (SMPP 3.4 sections 4.9, 4.10) and
submit_multi (4.5) are added to its command table here, written from the spec, not from the
relay's codec, so that the tests talk to the relay through a peer we did not write.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest
import smpplib.command
import smpplib.consts
import smpplib.smpp
from smpplib.command import Command, Param
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from .apps import ALNUM
from .conftest import Esme

# The source address the tests' messages carry.
SOURCE = {"source_addr_ton": ALNUM, "source_addr_npi": 0, "source_addr": "SHOP"}


class CancelSM(Command):  # type: ignore[misc]
    """cancel_sm, SMPP 3.4 section 4.9.1."""

    params = {
        "service_type": Param(type=str, max=6),
        "message_id": Param(type=str, max=65),
        "source_addr_ton": Param(type=int, size=1),
        "source_addr_npi": Param(type=int, size=1),
        "source_addr": Param(type=str, max=21),
        "dest_addr_ton": Param(type=int, size=1),
        "dest_addr_npi": Param(type=int, size=1),
        "destination_addr": Param(type=str, max=21),
    }
    params_order = (
        "service_type",
        "message_id",
        "source_addr_ton",
        "source_addr_npi",
        "source_addr",
        "dest_addr_ton",
        "dest_addr_npi",
        "destination_addr",
    )

    def __init__(self, command: str, **kwargs: Any) -> None:
        super().__init__(command, **kwargs)
        self._set_vars(**(dict.fromkeys(self.params)))


class ReplaceSM(Command):  # type: ignore[misc]
    """replace_sm, SMPP 3.4 section 4.10.1."""

    params = {
        "message_id": Param(type=str, max=65),
        "source_addr_ton": Param(type=int, size=1),
        "source_addr_npi": Param(type=int, size=1),
        "source_addr": Param(type=str, max=21),
        "schedule_delivery_time": Param(type=str, max=17),
        "validity_period": Param(type=str, max=17),
        "registered_delivery": Param(type=int, size=1),
        "sm_default_msg_id": Param(type=int, size=1),
        "sm_length": Param(type=int, size=1),
        "short_message": Param(type=smpplib.command.ostr, max=254, len_field="sm_length"),
    }
    params_order = (
        "message_id",
        "source_addr_ton",
        "source_addr_npi",
        "source_addr",
        "schedule_delivery_time",
        "validity_period",
        "registered_delivery",
        "sm_default_msg_id",
        "sm_length",
        "short_message",
    )

    def __init__(self, command: str, **kwargs: Any) -> None:
        super().__init__(command, **kwargs)
        self._set_vars(**(dict.fromkeys(self.params)))

    def prep(self) -> None:
        """sm_length is the length of short_message (smpplib fills it in for submit_sm)."""
        self.sm_length = len(self.short_message or b"")


class HeaderOnlyResp(Command):  # type: ignore[misc]
    """cancel_sm_resp and replace_sm_resp: a header, no body (3.4 sections 4.9.2, 4.10.2)."""

    params: dict[str, Any] = {}
    params_order = ()

    def __init__(self, command: str, **kwargs: Any) -> None:
        super().__init__(command, need_sequence=False, **kwargs)


class SubmitMulti(Command):  # type: ignore[misc]
    """submit_multi (3.4 section 4.5.1): ``dests`` is a list of (ton, npi, address) for SME
    addresses (dest_flag 1) or a str for a distribution list name (dest_flag 2)."""

    params: dict[str, Any] = {}
    params_order = ()
    # None until given (smpplib's _set_vars only fills attributes that are None).
    service_type = source_addr_ton = source_addr_npi = source_addr = None
    esm_class = registered_delivery = data_coding = None

    def generate_params(self) -> bytes:
        def c(text: str | bytes) -> bytes:
            return (text.encode() if isinstance(text, str) else text) + b"\0"

        dests = b""
        for entry in self.dests:
            if isinstance(entry, str):
                dests += b"\x02" + c(entry)
            else:
                ton, npi, address = entry
                dests += bytes((1, ton, npi)) + c(address)
        body: bytes = (
            c(self.service_type or "")
            + bytes((self.source_addr_ton or 0, self.source_addr_npi or 0))
            + c(self.source_addr or "")
            + bytes((len(self.dests),))
            + dests
            + bytes((self.esm_class or 0, 0, 0))
            + c("")
            + c("")
            + bytes((self.registered_delivery or 0, 0, self.data_coding or 0, 0))
            + bytes((len(self.short_message),))
            + self.short_message
        )
        return body


class SubmitMultiResp(Command):  # type: ignore[misc]
    """submit_multi_resp (3.4 section 4.5.2): message_id, no_unsuccess, unsuccess_sme."""

    params: dict[str, Any] = {}
    params_order = ()

    def parse_params(self, data: bytes) -> None:
        end = data.index(b"\0")
        self.message_id = data[:end]
        count = data[end + 1]
        pos = end + 2
        self.unsuccess_sme = []
        for _ in range(count):
            ton, npi = data[pos], data[pos + 1]
            stop = data.index(b"\0", pos + 2)
            (error,) = struct.unpack_from(">L", data, stop + 1)
            self.unsuccess_sme.append((ton, npi, data[pos + 2 : stop], error))
            pos = stop + 5


ADDED = {
    "cancel_sm": CancelSM,
    "cancel_sm_resp": HeaderOnlyResp,
    "replace_sm": ReplaceSM,
    "replace_sm_resp": HeaderOnlyResp,
    "submit_multi": SubmitMulti,
    "submit_multi_resp": SubmitMultiResp,
}


def teach(monkeypatch: pytest.MonkeyPatch) -> None:
    """smpplib's command table with the PDUs above; query_sm, cancel_sm and replace_sm on a
    transceiver too (3.4 table 2-1 allows it; smpplib's state table lists transmitters only),
    submit_multi wherever submit_sm goes."""
    factory = smpplib.command.factory

    def extended(command_name: str, **kwargs: Any) -> Any:
        if command_name in ADDED:
            return ADDED[command_name](command_name, **kwargs)
        return factory(command_name, **kwargs)

    monkeypatch.setattr(smpplib.command, "factory", extended)
    states = dict(smpplib.consts.COMMAND_STATES)
    for name in ("query_sm", "cancel_sm", "replace_sm"):
        states[name] = (*states[name], smpplib.consts.SMPP_CLIENT_STATE_BOUND_TRX)
        states[f"{name}_resp"] = states[name]
    states["submit_multi"] = states["submit_sm"]
    states["submit_multi_resp"] = states["submit_sm_resp"]
    monkeypatch.setattr(smpplib.consts, "COMMAND_STATES", states)


def exchange(esme: Esme, name: str, **fields: Any) -> Deferred[Any]:
    """Send request ``name`` and read (answering deliver_sm) until its response comes."""

    def run() -> Any:
        client = esme.client
        request = smpplib.smpp.make_pdu(name, client=client, **fields)
        client.send_pdu(request)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = client.read_pdu()
            if got.command == "deliver_sm":
                client._message_received(got)
            elif got.sequence == request.sequence:
                return got
        raise TimeoutError(f"no {name}_resp")

    return deferToThread(run)
