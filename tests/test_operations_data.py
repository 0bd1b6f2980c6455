"""data_sm both ways: from an app through the real session, relay and rules (StringTransport,
Clock); from the operator through an upstream session; and the simulator's answers.

The data_sm PDUs are packed here by hand from SMPP 3.4 section 4.7, not with the relay's codec.
"""

from __future__ import annotations

import struct

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from smpprelay import pdu
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status, Tag
from smpprelay.simulator import SimulatedSession, Simulator

from .fakes import Relayed, frames_of, take_frames
from .fakes.operator import bound

TEXT = b"data all the way"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("!HH", tag, len(value)) + value


def data_sm(
    sequence: int,
    payload: bytes = TEXT,
    registered_delivery: int = 1,
    esm_class: int = 0,
    source: bytes = b"SHOP",
    destination: bytes = b"447700900001",
    extra: bytes = b"",
) -> bytes:
    """A data_sm (4.7.1): service_type, addresses, esm_class, registered_delivery,
    data_coding, then the message_payload TLV."""
    body = (
        b"\0"
        + bytes((5, 0))
        + source
        + b"\0"
        + bytes((1, 1))
        + destination
        + b"\0"
        + bytes((esm_class, registered_delivery, 0))
        + tlv(Tag.message_payload, payload)
        + extra
    )
    return struct.pack("!IIII", 16 + len(body), CommandId.data_sm, 0, sequence) + body


def data_sm_resp(sequence: int, status: int, body: bytes = b"") -> bytes:
    return struct.pack("!IIII", 16 + len(body), CommandId.data_sm_resp, status, sequence) + body


def blank_sequence(frame: bytes) -> bytes:
    return frame[:12] + b"\0\0\0\0" + frame[16:]


# --- from an app -----------------------------------------------------------------------------


def test_an_apps_data_sm_goes_upstream_as_sent_and_the_operators_answer_comes_back() -> None:
    """The app's bytes go up (new sequence); the operator's data_sm_resp, TLVs and all, comes
    back under the app's sequence; its receipt is routed home under the operator's id."""
    app = Relayed()
    request = data_sm(5)
    app.connection.dataReceived(request)
    [sent] = app.pool.frames
    assert blank_sequence(sent) == blank_sequence(request)

    answer = data_sm_resp(0, Status.ESME_ROK, b"OP77\0" + tlv(0x0425, b"\x00"))  # + dpf_result
    app.pool.answers[0].callback(answer)
    assert app.written() == answer[:12] + struct.pack("!I", 5) + answer[16:]

    app.router.route(pdu_receipt(b"OP77"))
    [delivered] = frames_of(app.written())
    assert pdu.read_short_message(delivered).tlv(Tag.receipted_message_id) == b"OP77\0"


def pdu_receipt(message_id: bytes) -> bytes:
    return Simulator(Clock()).receipt(pdu.read_data_sm(data_sm(1)), message_id, 0.0)


def test_the_rules_read_the_payload_and_a_refusal_is_a_data_sm_resp() -> None:
    """The same payload to the same number twice: the dedup rule refuses the second, answered
    data_sm_resp with its status and no body; another payload goes."""
    app = Relayed()
    app.connection.dataReceived(data_sm(1))
    app.pool.answers[0].callback(data_sm_resp(0, Status.ESME_ROK, b"OP1\0"))
    app.written()
    app.connection.dataReceived(data_sm(2))
    app.connection.dataReceived(data_sm(3, payload=b"something else"))
    assert len(app.pool.frames) == 2
    assert app.written() == data_sm_resp(2, 0x45)


def test_an_answer_the_relay_makes_is_a_data_sm_resp() -> None:
    """The operator's generic_nack, or no operator at all: data_sm_resp with that status."""
    app = Relayed()
    app.connection.dataReceived(data_sm(1))
    app.connection.dataReceived(data_sm(2, payload=b"two"))
    app.pool.answers[0].callback(pdu.generic_nack(0, Status.ESME_RTHROTTLED))
    app.pool.answers[1].errback(ConnectionError("gone"))
    assert frames_of(app.written()) == [
        data_sm_resp(1, Status.ESME_RTHROTTLED),
        data_sm_resp(2, Status.ESME_RSYSERR),
    ]


def test_a_concatenated_data_sm_is_held_then_sent_whole() -> None:
    """sar_* TLVs name the parts: the first is held (answered with a relay id), the second
    completes the message and both go upstream as data_sm."""
    app = Relayed()

    def part(sequence: int, seq: int) -> bytes:
        sar = tlv(0x020C, b"\x00\x07") + tlv(0x020E, b"\x02") + tlv(0x020F, bytes((seq,)))
        return data_sm(sequence, payload=b"part %d" % seq, extra=sar)

    app.connection.dataReceived(part(1, 1))
    [held] = frames_of(app.written())
    assert pdu.header(held)[1:3] == (CommandId.data_sm_resp, Status.ESME_ROK)
    app.connection.dataReceived(part(2, 2))
    [batch] = app.pool.batches
    assert [pdu.header(frame)[1] for frame in batch] == [CommandId.data_sm] * 2
    app.pool.batch_answers[0].callback(
        [data_sm_resp(0, Status.ESME_ROK, b"OP%d\0" % n) for n in (1, 2)]
    )
    [done] = frames_of(app.written())
    assert pdu.header(done)[1:] == (CommandId.data_sm_resp, Status.ESME_ROK, 2)


# --- from the operator -----------------------------------------------------------------------


def test_the_operators_data_sm_is_routed_as_a_deliver_sm_and_answered_data_sm_resp() -> None:
    """An MO as data_sm reaches the router as the deliver_sm apps read (the payload in
    short_message); the operator gets data_sm_resp with the routing's status."""
    up, transport = bound()
    mo = data_sm(9, payload=b"hi there", source=b"447700900001", destination=b"7900123")
    transport.send(mo)
    [routed] = up.routed
    message = pdu.read_short_message(routed)
    assert pdu.header(routed)[1] == CommandId.deliver_sm
    assert (message.source_addr, message.destination_addr) == (b"447700900001", b"7900123")
    assert (message.short_message, message.tlvs) == (b"hi there", ())
    assert transport.take() == [data_sm_resp(9, Status.ESME_ROK, b"\0")]


def test_a_long_payload_stays_a_message_payload_and_a_bad_data_sm_is_refused() -> None:
    up, transport = bound()
    long = bytes(300)
    transport.send(data_sm(3, payload=long, extra=tlv(Tag.receipted_message_id, b"X1\0")))
    [routed] = up.routed
    message = pdu.read_short_message(routed)
    assert message.short_message == b""
    assert message.tlvs == ((Tag.message_payload, long), (Tag.receipted_message_id, b"X1\0"))
    transport.send(pdu.build(CommandId.data_sm, 4, b"\0\x01\x01123"))  # cut off
    assert transport.take() == [
        data_sm_resp(3, Status.ESME_ROK, b"\0"),
        data_sm_resp(4, Status.ESME_RINVSRCADR),
    ]


def test_a_receipt_sent_as_data_sm_is_rewritten_to_the_apps_id() -> None:
    """A relay-issued id (a held part's or a multi's) is found by the operator's data_sm
    receipt just as by a deliver_sm one."""
    app = Relayed()
    app.relay.router.remember(b"OP5", "app", b"MULTI1")
    receipt = data_sm(
        1,
        payload=b"id:OP5 sub:001 dlvrd:001 submit date:2401010000 done date:2401010000 "
        b"stat:DELIVRD err:000 text:",
        esm_class=0x04,
        extra=tlv(Tag.receipted_message_id, b"OP5\0"),
    )
    app.router.route(pdu.deliver_sm_from_data_sm(receipt))
    [delivered] = frames_of(app.written())
    message = pdu.read_short_message(delivered)
    assert message.tlv(Tag.receipted_message_id) == b"MULTI1\0"
    assert message.short_message.startswith(b"id:MULTI1 ")


# --- the simulator ---------------------------------------------------------------------------


def test_the_simulator_answers_data_sm_with_an_id_and_a_receipt() -> None:
    clock = Clock()
    simulator = Simulator(clock)
    session = SimulatedSession(simulator)
    connection = SmppConnection(
        session, clock, Metrics(), side="simulator", max_pdu=70_000, response_timeout=30.0
    )
    transport = StringTransport()
    connection.makeConnection(transport)  # type: ignore[no-untyped-call]
    connection.dataReceived(pdu.bind_request("transceiver", 1, "relay", "pw"))
    take_frames(transport)

    connection.dataReceived(data_sm(2))
    resp, receipt = take_frames(transport)
    message_id = simulator.received[-1].message_id
    assert resp == data_sm_resp(2, Status.ESME_ROK, message_id + b"\0")
    fields = pdu.read_short_message(receipt)
    assert fields.tlv(Tag.receipted_message_id) == message_id + b"\0"
    assert fields.short_message.endswith(b"text:" + TEXT[:20])

    connection.dataReceived(data_sm(3, registered_delivery=0))
    [resp] = take_frames(transport)
    assert pdu.header(resp)[1:] == (CommandId.data_sm_resp, Status.ESME_ROK, 3)
