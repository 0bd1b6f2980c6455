"""Small helpers shared by the unit tests.

- `short_message` / `submit_sm` / `deliver_sm`: PDUs built from `pdu.ShortMessage` fields with
  `pdu.encode_short_message`, so a test names only the fields it cares about.
- `frames_of`: split bytes written to a `StringTransport` back into frames.
- `result_of` / `failure_of`: the outcome of a Deferred that has already fired.
- `app_connection`: an app session's SMPP connection on a `StringTransport` from an address.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.connection import RequestHandler, SmppConnection
from smpprelay.metrics import Metrics

T = TypeVar("T")

DEFAULT_MESSAGE = pdu.ShortMessage(
    service_type=b"",
    source_ton=5,
    source_npi=0,
    source_addr=b"MyBrand",
    dest_ton=1,
    dest_npi=1,
    destination_addr=b"447700900123",
    esm_class=0,
    protocol_id=0,
    priority_flag=0,
    schedule_delivery_time=b"",
    validity_period=b"",
    registered_delivery=1,
    replace_if_present=0,
    data_coding=0,
    sm_default_msg_id=0,
    short_message=b"hello",
    tlvs=(),
)


def short_message(**fields: Any) -> pdu.ShortMessage:
    """`DEFAULT_MESSAGE` with some fields replaced."""
    return DEFAULT_MESSAGE._replace(**fields)


def submit_sm(sequence: int = 1, **fields: Any) -> bytes:
    """A submit_sm frame; ``fields`` override `DEFAULT_MESSAGE`."""
    return pdu.encode_short_message(pdu.CommandId.submit_sm, sequence, short_message(**fields))


def deliver_sm(sequence: int = 1, **fields: Any) -> bytes:
    """A deliver_sm frame; ``fields`` override `DEFAULT_MESSAGE`."""
    return pdu.encode_short_message(pdu.CommandId.deliver_sm, sequence, short_message(**fields))


def frames_of(data: bytes) -> list[bytes]:
    """The PDUs in ``data`` (for example ``transport.value()``); fails on a partial one."""
    framer = pdu.Framer(max_pdu=1 << 20)
    frames = framer.feed(data)
    assert framer.buffered == 0, "trailing partial PDU"
    return frames


def result_of(deferred: Deferred[T]) -> T:
    """The result of a Deferred that has already succeeded."""
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    assert not isinstance(outcome[0], Failure), f"Deferred failed: {outcome[0]}"
    return outcome[0]  # type: ignore[no-any-return]


def failure_of(deferred: Deferred[Any]) -> Failure:
    """The Failure of a Deferred that has already failed (consumed, so it is not logged)."""
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    assert isinstance(outcome[0], Failure), f"Deferred succeeded with {outcome[0]!r}"
    return outcome[0]


def app_connection(
    session: RequestHandler,
    clock: IReactorTime,
    metrics: Metrics,
    host: str = "127.0.0.1",
    max_pdu: int = 70_000,
    pdu_read: float | None = None,
) -> tuple[SmppConnection, StringTransport]:
    """An app's connection to ``session``, made on a StringTransport from ``host``."""
    connection = SmppConnection(
        session,
        clock,
        metrics,
        side="downstream",
        max_pdu=max_pdu,
        response_timeout=30.0,
        pdu_read=pdu_read,
    )
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    connection.makeConnection(transport)  # type: ignore[no-untyped-call]
    return connection, transport
