"""Tests for smpprelay.connection.SmppConnection over a StringTransport and a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from smpprelay import connection as connection_module
from smpprelay import pdu
from smpprelay.connection import LATE_MEMORY, ResponseTimeout, SmppConnection
from smpprelay.metrics import Metrics, Side
from smpprelay.pdu import CommandId, Status
from tests.fakes import failure_of, frames_of, result_of, submit_sm

TIMEOUT = 10.0
SIDE: Side = "downstream"


class RecordingHandler:
    """A RequestHandler that records every call; ``error`` makes request_received raise."""

    def __init__(self) -> None:
        self.made: list[SmppConnection] = []
        self.requests: list[tuple[int, int, bytes]] = []
        self.lost: list[Failure] = []
        self.error: Exception | None = None

    def connection_made(self, connection: SmppConnection) -> None:
        self.made.append(connection)

    def request_received(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        self.requests.append((command_id, sequence, frame))
        if self.error is not None:
            raise self.error

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
        self.lost.append(reason)


class Harness:
    """One connection wired to a StringTransport, a Clock, a handler and fresh metrics."""

    def __init__(
        self, response_timeout: float = TIMEOUT, max_pdu: int = 4096, pdu_read: float | None = None
    ) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.handler = RecordingHandler()
        self.transport = StringTransport()
        self.connection = SmppConnection(
            self.handler,
            self.clock,
            self.metrics,
            side=SIDE,
            max_pdu=max_pdu,
            response_timeout=response_timeout,
            pdu_read=pdu_read,
        )
        self.connection.makeConnection(self.transport)  # type: ignore[no-untyped-call]

    def written(self) -> list[bytes]:
        """The frames written since the last call."""
        frames = frames_of(self.transport.value())
        self.transport.clear()
        return frames

    def sample(self, name: str, **labels: str) -> float:
        """A metric value (0 when the series does not exist yet)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_connection_made_reaches_handler_with_peer(h: Harness) -> None:
    """connectionMade tells the handler and records the peer address."""
    assert h.handler.made == [h.connection]
    assert h.connection.peer == "192.168.1.1:54321"


# --- inbound requests ---------------------------------------------------------------------


def test_enquire_link_answered_without_handler(h: Harness) -> None:
    """enquire_link gets enquire_link_resp OK with its own sequence; the handler sees nothing."""
    h.connection.dataReceived(pdu.build(CommandId.enquire_link, 77))
    assert h.written() == [pdu.build(CommandId.enquire_link_resp, 77, status=Status.ESME_ROK)]
    assert h.handler.requests == []


def test_request_handed_to_handler(h: Harness) -> None:
    """Any other request goes to the handler with command_id, sequence and its bytes."""
    frame = submit_sm(sequence=9)
    h.connection.dataReceived(frame)
    assert h.handler.requests == [(CommandId.submit_sm, 9, frame)]
    assert h.transport.value() == b""


def test_requests_split_and_batched_reach_handler_in_order(h: Harness) -> None:
    """One PDU in 1-byte writes then three in one write: four requests, in order."""
    first = submit_sm(sequence=1)
    for i in range(len(first)):
        h.connection.dataReceived(first[i : i + 1])
    batch = [submit_sm(sequence=n, short_message=b"m%d" % n) for n in (2, 3, 4)]
    h.connection.dataReceived(b"".join(batch))
    assert h.handler.requests == [
        (CommandId.submit_sm, s, f) for s, f in enumerate([first, *batch], 1)
    ]


@pytest.mark.logs_errors  # the handler's bug is logged, as it must be
def test_handler_error_gets_generic_nack_and_connection_stays(h: Harness) -> None:
    """A handler that raises costs that request a generic_nack ESME_RSYSERR, not the session."""
    h.handler.error = RuntimeError("bug")
    h.connection.dataReceived(submit_sm(sequence=5))
    assert h.written() == [pdu.generic_nack(5, Status.ESME_RSYSERR)]
    assert not h.transport.disconnecting
    assert not h.connection.closed
    h.connection.dataReceived(pdu.build(CommandId.enquire_link, 6))
    assert h.written() == [pdu.build(CommandId.enquire_link_resp, 6)]


# --- send_request -------------------------------------------------------------------------


def test_send_request_uses_fresh_sequences(h: Harness) -> None:
    """Each request is written under the next sequence number, the rest of it unchanged."""
    frame = submit_sm(sequence=0)
    h.connection.send_request(frame)
    h.connection.send_request(frame)
    assert h.written() == [pdu.with_sequence(frame, 1), pdu.with_sequence(frame, 2)]
    assert h.connection.in_flight == 2


def test_response_fires_matching_deferred(h: Harness) -> None:
    """A response fires the Deferred of the request with its sequence, and only that one."""
    first = h.connection.send_request(submit_sm())
    second = h.connection.send_request(submit_sm())
    h.written()
    response = pdu.submit_sm_resp(2, Status.ESME_ROK, b"op-2")
    h.connection.dataReceived(response)
    assert result_of(second) == response
    assert not first.called
    assert h.connection.in_flight == 1
    assert h.transport.value() == b""  # responses are never answered
    assert h.handler.requests == []


def test_generic_nack_answers_the_request(h: Harness) -> None:
    """A generic_nack with the request's sequence is its response."""
    deferred = h.connection.send_request(submit_sm())
    nack = pdu.generic_nack(1, Status.ESME_RINVCMDID)
    h.connection.dataReceived(nack)
    assert result_of(deferred) == nack
    assert h.connection.in_flight == 0


def test_response_to_unknown_sequence_is_dropped_and_counted(h: Harness) -> None:
    """A response or generic_nack answering nothing is not answered, and is counted."""
    deferred = h.connection.send_request(submit_sm())
    h.written()
    h.connection.dataReceived(pdu.response(CommandId.deliver_sm, 999))
    h.connection.dataReceived(pdu.generic_nack(998, Status.ESME_RINVCMDLEN))
    assert h.transport.value() == b""
    assert not deferred.called
    assert not h.transport.disconnecting
    assert h.handler.requests == []
    name = "smpprelay_unexpected_pdus_total"
    assert h.sample(name, side=SIDE, command="deliver_sm_resp") == 1
    assert h.sample(name, side=SIDE, command="generic_nack") == 1


def test_late_response_goes_to_whoever_asked_and_is_counted(h: Harness) -> None:
    """An answer after the request timed out reaches the `on_late` callback the failure
    carries, is counted as late (not as unexpected), and nothing is written back."""
    request = h.connection.send_request(submit_sm())
    h.clock.advance(TIMEOUT)
    late: list[bytes] = []
    failure = failure_of(request)
    assert isinstance(failure.value, ResponseTimeout)
    failure.value.on_late(late.append)
    h.written()
    answer = pdu.submit_sm_resp(1, 0, b"late")
    h.connection.dataReceived(answer)
    assert late == [answer]
    assert h.transport.value() == b""
    assert h.sample("smpprelay_late_answers_total", side=SIDE, status="ESME_ROK") == 1
    assert h.sample("smpprelay_unexpected_pdus_total", side=SIDE, command="submit_sm_resp") == 0
    # Once: the same answer again answers nothing.
    h.connection.dataReceived(answer)
    assert late == [answer]
    assert h.sample("smpprelay_unexpected_pdus_total", side=SIDE, command="submit_sm_resp") == 1


def test_late_response_nobody_asked_for_is_counted(h: Harness) -> None:
    """A late answer with no `on_late` subscriber is still counted as late, and dropped."""
    request = h.connection.send_request(submit_sm())
    h.clock.advance(TIMEOUT)
    failure_of(request).trap(ResponseTimeout)
    h.connection.dataReceived(pdu.submit_sm_resp(1, Status.ESME_RTHROTTLED))
    assert h.sample("smpprelay_late_answers_total", side=SIDE, status="ESME_RTHROTTLED") == 1
    assert h.transport.value() != b""  # only the request was written


def test_late_memory_ends_and_is_bounded(h: Harness) -> None:
    """A timed-out request is remembered LATE_MEMORY response timeouts (then an answer is
    unexpected), at most LATE_MAX of them, and not at all once the connection is gone."""
    first = h.connection.send_request(submit_sm())
    h.clock.advance(TIMEOUT)
    failure_of(first).trap(ResponseTimeout)
    # Trimmed when the next one times out, past its memory.
    second = h.connection.send_request(submit_sm())
    h.clock.advance(LATE_MEMORY * TIMEOUT)
    failure_of(second).trap(ResponseTimeout)
    h.connection.dataReceived(pdu.submit_sm_resp(1, 0, b"too late"))
    assert h.sample("smpprelay_unexpected_pdus_total", side=SIDE, command="submit_sm_resp") == 1
    h.connection.dataReceived(pdu.submit_sm_resp(2, 0, b"late"))
    assert h.sample("smpprelay_late_answers_total", side=SIDE, status="ESME_ROK") == 1
    assert len(h.connection._late) == 0
    h.connection.connectionLost(Failure(ConnectionDone()))
    assert h.connection._late == {}


def test_late_memory_keeps_at_most_late_max(monkeypatch: pytest.MonkeyPatch, h: Harness) -> None:
    """Past LATE_MAX remembered requests the oldest is forgotten first."""
    monkeypatch.setattr(connection_module, "LATE_MAX", 2)
    requests = [h.connection.send_request(submit_sm()) for _ in range(3)]
    h.clock.advance(TIMEOUT)
    for request in requests:
        failure_of(request).trap(ResponseTimeout)
    assert list(h.connection._late) == [2, 3]


def test_a_sequence_whose_late_answer_may_come_is_not_reused(h: Harness) -> None:
    """Sequence numbers wrap: one still remembered as timed out is skipped."""
    h.connection._last_sequence = pdu.MAX_SEQUENCE - 1
    old = h.connection.send_request(submit_sm())  # MAX_SEQUENCE
    h.clock.advance(TIMEOUT)
    failure_of(old).trap(ResponseTimeout)
    h.connection._last_sequence = pdu.MAX_SEQUENCE - 1
    h.written()
    h.connection.send_request(submit_sm())
    assert pdu.sequence_of(h.written()[0]) == 1


# --- response timer ---------------------------------------------------------------------


def test_response_timeout_fires_at_deadline(h: Harness) -> None:
    """Unanswered at response_timeout - 1 ms; ResponseTimeout at response_timeout."""
    deferred = h.connection.send_request(submit_sm())
    h.clock.advance(TIMEOUT - 0.001)
    assert not deferred.called
    h.clock.advance(0.001)
    failure_of(deferred).trap(ResponseTimeout)
    assert h.connection.in_flight == 0
    assert h.clock.getDelayedCalls() == []


def test_requests_time_out_at_their_own_deadlines(h: Harness) -> None:
    """Requests sent at 0, 3 and 7 s time out at 10, 13 and 17 s with one timer."""
    a = h.connection.send_request(submit_sm())
    h.clock.advance(3)
    b = h.connection.send_request(submit_sm())
    h.clock.advance(4)
    c = h.connection.send_request(submit_sm())
    assert len(h.clock.getDelayedCalls()) == 1
    h.clock.advance(3 - 0.001)  # 9.999
    assert not a.called
    h.clock.advance(0.001)  # 10
    failure_of(a).trap(ResponseTimeout)
    assert not b.called
    h.clock.advance(3 - 0.001)  # 12.999
    assert not b.called
    h.clock.advance(0.001)  # 13
    failure_of(b).trap(ResponseTimeout)
    assert not c.called
    h.clock.advance(4 - 0.001)  # 16.999
    assert not c.called
    h.clock.advance(0.001)  # 17
    failure_of(c).trap(ResponseTimeout)
    assert h.clock.getDelayedCalls() == []


def test_answered_request_does_not_time_out_others_early(h: Harness) -> None:
    """When the oldest request is answered, the next one still gets its full time."""
    a = h.connection.send_request(submit_sm())
    h.clock.advance(2)
    b = h.connection.send_request(submit_sm())
    h.connection.dataReceived(pdu.submit_sm_resp(1, 0, b"x"))
    result_of(a)
    h.clock.advance(TIMEOUT - 2)  # 10: a's old deadline
    assert not b.called
    h.clock.advance(2)  # 12
    failure_of(b).trap(ResponseTimeout)


def test_timer_restarts_after_queue_empties(h: Harness) -> None:
    """A request sent after the timer has gone idle still times out on time."""
    a = h.connection.send_request(submit_sm())
    h.connection.dataReceived(pdu.submit_sm_resp(1, 0, b"x"))
    result_of(a)
    h.clock.advance(TIMEOUT)  # the first timer fires with nothing pending
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(5)
    b = h.connection.send_request(submit_sm())
    h.clock.advance(TIMEOUT - 0.001)
    assert not b.called
    h.clock.advance(0.001)
    failure_of(b).trap(ResponseTimeout)


# --- sequence numbers ----------------------------------------------------------------------


def test_sequence_wraps_and_skips_numbers_in_flight(h: Harness) -> None:
    """After 0x7FFFFFFF comes 1, but numbers still awaiting an answer are skipped."""
    one = h.connection.send_request(submit_sm())
    two = h.connection.send_request(submit_sm())
    h.written()
    h.connection._last_sequence = pdu.MAX_SEQUENCE - 1  # jump ahead; 2**31 requests is too slow
    top = h.connection.send_request(submit_sm())
    wrapped = h.connection.send_request(submit_sm())
    assert [pdu.sequence_of(f) for f in h.written()] == [pdu.MAX_SEQUENCE, 3]
    response = pdu.submit_sm_resp(3, 0, b"three")
    h.connection.dataReceived(response)
    assert result_of(wrapped) == response
    assert [d.called for d in (one, two, top)] == [False, False, False]


# --- framing errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason", "sequence"),
    [
        (bytes.fromhex("00000008 00000015 00000000 00000001"), "too_short", 1),
        (b"\x00\x00\x00\x08", "too_short", 0),
        (bytes.fromhex("7fffffff 00000004 00000000 0000002a") + b"x" * 100, "too_long", 42),
        (b"GET / HTTP/1.1\r\n\r\n", "too_long", int.from_bytes(b".1\r\n", "big")),
    ],
)
def test_framing_error_nacks_closes_and_counts(
    h: Harness, data: bytes, reason: str, sequence: int
) -> None:
    """A bad command_length: generic_nack ESME_RINVCMDLEN, connection closed, metric +1."""
    h.connection.dataReceived(data)
    assert h.written() == [pdu.generic_nack(sequence, Status.ESME_RINVCMDLEN)]
    assert h.transport.disconnecting
    assert h.connection.closed
    assert h.handler.requests == []
    assert h.sample("smpprelay_framing_errors_total", side=SIDE, reason=reason) == 1
    # Whatever follows is neither answered nor handed on.
    h.connection.dataReceived(pdu.build(CommandId.enquire_link, 2) + submit_sm(3))
    assert h.transport.value() == b""
    assert h.handler.requests == []


def test_framing_error_uses_max_pdu() -> None:
    """The cap is the connection's max_pdu: a PDU one byte over it is too long."""
    h = Harness(max_pdu=64)
    ok = pdu.build(CommandId.submit_sm, 1, b"x" * 48)
    h.connection.dataReceived(ok)
    assert h.handler.requests == [(CommandId.submit_sm, 1, ok)]
    h.connection.dataReceived(pdu.build(CommandId.submit_sm, 2, b"x" * 49))
    assert h.written() == [pdu.generic_nack(2, Status.ESME_RINVCMDLEN)]
    assert h.sample("smpprelay_framing_errors_total", side=SIDE, reason="too_long") == 1


# --- connection loss ------------------------------------------------------------------------


def test_connection_lost_fails_pending_and_cancels_timers(h: Harness) -> None:
    """Every pending request fails with the reason, timers stop, the handler is told."""
    h.connection.start_keepalive(30)
    a = h.connection.send_request(submit_sm())
    b = h.connection.send_request(submit_sm())
    assert len(h.clock.getDelayedCalls()) == 2
    reason = Failure(ConnectionDone())
    h.connection.connectionLost(reason)
    failure_of(a).trap(ConnectionDone)
    failure_of(b).trap(ConnectionDone)
    assert h.clock.getDelayedCalls() == []
    assert h.handler.lost == [reason]
    assert h.connection.in_flight == 0


def test_send_request_after_loss_fails_at_once(h: Harness) -> None:
    """A request on a lost connection fails immediately and writes nothing."""
    h.connection.connectionLost(Failure(ConnectionDone()))
    deferred = h.connection.send_request(submit_sm())
    failure_of(deferred).trap(ConnectionLost)
    assert h.transport.value() == b""
    assert h.clock.getDelayedCalls() == []


# --- keepalive ------------------------------------------------------------------------------


def test_keepalive_sends_enquire_link_every_interval(h: Harness) -> None:
    """enquire_link goes out every interval while the peer answers."""
    h.connection.start_keepalive(30)
    h.clock.advance(30 - 0.001)
    assert h.written() == []
    h.clock.advance(0.001)
    assert h.written() == [pdu.build(CommandId.enquire_link, 1)]
    h.connection.dataReceived(pdu.build(CommandId.enquire_link_resp, 1))
    h.clock.advance(30)
    assert h.written() == [pdu.build(CommandId.enquire_link, 2)]
    h.connection.dataReceived(pdu.build(CommandId.enquire_link_resp, 2))
    h.clock.advance(30)
    assert h.written() == [pdu.build(CommandId.enquire_link, 3)]
    assert not h.transport.disconnecting


def test_unanswered_enquire_link_aborts_connection(h: Harness) -> None:
    """An enquire_link left unanswered for response_timeout aborts the link and is counted."""
    h.connection.start_keepalive(30)
    h.clock.advance(30)
    h.connection.dataReceived(pdu.build(CommandId.enquire_link_resp, 1))
    h.clock.advance(30)
    assert h.written() == [
        pdu.build(CommandId.enquire_link, 1),
        pdu.build(CommandId.enquire_link, 2),
    ]
    h.clock.advance(TIMEOUT - 0.001)
    assert not h.transport.disconnected
    h.clock.advance(0.001)
    assert h.transport.disconnected  # StringTransport.abortConnection sets it
    assert h.connection.closed
    name = "smpprelay_session_timeouts_total"
    assert h.sample(name, side=SIDE, timer="enquire_link") == 1
    assert h.clock.getDelayedCalls() == []
    assert h.written() == []


def test_keepalive_stops_on_connection_lost(h: Harness) -> None:
    """After the connection is lost no further enquire_link is written."""
    h.connection.start_keepalive(30)
    h.connection.connectionLost(Failure(ConnectionDone()))
    h.clock.advance(120)
    assert h.transport.value() == b""


# --- unbind -----------------------------------------------------------------------------


def test_unbind_closes_after_unbind_resp(h: Harness) -> None:
    """unbind() sends unbind, stays open until unbind_resp, then closes."""
    finished = h.connection.unbind()
    assert h.written() == [pdu.build(CommandId.unbind, 1)]
    assert not h.transport.disconnecting
    assert not finished.called
    h.connection.dataReceived(pdu.build(CommandId.unbind_resp, 1))
    assert h.transport.disconnecting
    assert result_of(finished) is None
    h.connection.connectionLost(Failure(ConnectionDone()))  # what the transport does next
    assert h.clock.getDelayedCalls() == []


def test_unbind_closes_when_unanswered(h: Harness) -> None:
    """An unanswered unbind closes the connection at the response timeout."""
    finished = h.connection.unbind()
    h.clock.advance(TIMEOUT - 0.001)
    assert not h.transport.disconnecting
    h.clock.advance(0.001)
    assert h.transport.disconnecting
    assert result_of(finished) is None


# --- the PDU read deadline (absolute from a PDU's first byte) --------------------------------

PDU_READ = 10.0


@pytest.mark.parametrize(
    ("sent", "sequence"),
    [
        (b"\x00\x00", 0),  # not even a whole command_length
        (pdu.build(CommandId.submit_sm, 77, b"x" * 84)[:40], 77),  # header in, body cut short
    ],
)
def test_pdu_not_whole_within_pdu_read_is_nacked_and_closed(sent: bytes, sequence: int) -> None:
    """A PDU started and left unfinished: generic_nack ESME_RINVCMDLEN at the deadline, closed."""
    h = Harness(pdu_read=PDU_READ)
    h.connection.dataReceived(sent)
    h.clock.advance(PDU_READ - 0.01)
    assert h.transport.value() == b""
    assert not h.transport.disconnecting
    h.clock.advance(0.01)
    assert h.written() == [pdu.generic_nack(sequence, Status.ESME_RINVCMDLEN)]
    assert h.transport.disconnecting
    assert h.handler.requests == []
    assert h.sample("smpprelay_framing_errors_total", side=SIDE, reason="read_timeout") == 1


def test_pdu_read_deadline_is_not_extended_by_a_trickle() -> None:
    """Slowloris: one byte every 2 s; closed 10 s after the first byte, not 10 s after the last."""
    h = Harness(pdu_read=PDU_READ)
    frame = pdu.build(CommandId.enquire_link, 5, b"x" * 84)
    for byte in range(5):
        h.connection.dataReceived(frame[byte : byte + 1])
        h.clock.advance(2.0)
    assert h.written() == [pdu.generic_nack(0, Status.ESME_RINVCMDLEN)]
    assert h.transport.disconnecting
    assert h.clock.getDelayedCalls() == []


def test_pdu_read_clock_restarts_for_each_pdu() -> None:
    """PDUs that each arrive whole in time never trip the deadline, however long the session."""
    h = Harness(pdu_read=PDU_READ)
    link = pdu.build(CommandId.enquire_link, 1)
    h.connection.dataReceived(link[:8])
    for _ in range(5):
        # Each read finishes one PDU and starts the next, which takes 9 s to complete.
        h.clock.advance(9.0)
        h.connection.dataReceived(link[8:] + link[:8])
    h.clock.advance(9.0)
    h.connection.dataReceived(link[8:])
    assert len(h.written()) == 6
    assert not h.transport.disconnecting
    assert h.sample("smpprelay_framing_errors_total", side=SIDE, reason="read_timeout") == 0
    # With nothing held back no read timer is left behind.
    h.clock.advance(PDU_READ * 3)
    assert not h.transport.disconnecting


def test_nothing_is_read_after_a_framing_error(h: Harness) -> None:
    """After a bad length the rest of the stream (1 MiB of junk) is neither buffered nor counted."""
    h.connection.dataReceived(bytes.fromhex("7fffffff 00000004 00000000 00000001"))
    h.written()
    for _ in range(16):
        h.connection.dataReceived(b"\x00\x00\x01\x00" * 16384)
    assert h.connection._framer.buffered == 0
    assert h.transport.value() == b""
    assert h.sample("smpprelay_framing_errors_total", side=SIDE, reason="too_long") == 1


# --- inactivity -------------------------------------------------------------------------------


def test_inactivity_calls_back_once_after_silence(h: Harness) -> None:
    """on_idle runs once nothing was read for the whole period; any read pushes it back."""
    idle: list[float] = []
    h.connection.start_inactivity(30.0, lambda: idle.append(h.clock.seconds()))
    h.clock.advance(20.0)
    h.connection.dataReceived(pdu.build(CommandId.enquire_link, 1))
    h.clock.advance(29.0)
    assert idle == []
    h.clock.advance(1.0)
    assert idle == [50.0]
    h.clock.advance(300.0)
    assert idle == [50.0]


# --- back-pressure: a peer that stops reading -----------------------------------------------


def test_connection_is_the_streaming_producer_of_its_transport(h: Harness) -> None:
    """Paused by a full write buffer, it stops reading; resumed, it reads and says so."""
    resumed: list[bool] = []
    h.connection.when_resumed = lambda: resumed.append(True)
    assert h.transport.producer is h.connection
    assert h.transport.streaming
    h.transport.producer.pauseProducing()
    assert h.connection.paused
    assert h.transport.producerState == "paused"
    h.transport.producer.resumeProducing()
    assert not h.connection.paused
    assert h.transport.producerState == "producing"
    assert resumed == [True]


def test_close_unregisters_the_producer_so_the_close_completes(h: Harness) -> None:
    """A paused producer left registered would hold the connection open (Twisted waits for it)."""
    h.connection.pauseProducing()
    h.connection.close()
    assert h.transport.producer is None
    assert h.transport.disconnecting


def test_time_paused_by_our_back_pressure_is_not_held_against_the_peer() -> None:
    """While we stop reading (the peer's receive side is full), the PDU read deadline and the
    inactivity clock stand still: a half-read PDU completes after the pause, and no unbind."""
    h = Harness(pdu_read=PDU_READ)
    idle: list[float] = []
    h.connection.start_inactivity(30.0, lambda: idle.append(h.clock.seconds()))
    link = pdu.build(CommandId.enquire_link, 7)
    h.connection.dataReceived(link[:10])  # a PDU started at 0 s
    h.clock.advance(4.0)
    h.connection.pauseProducing()  # our writes back up: we stop reading at 4 s
    h.clock.advance(100.0)
    assert not h.transport.disconnecting
    assert idle == []
    h.connection.resumeProducing()  # 104 s: 6 s of the PDU's 10 s are left
    h.clock.advance(5.9)
    h.connection.dataReceived(link[10:])
    [answer] = h.written()
    assert pdu.header(answer)[1:] == (CommandId.enquire_link_resp, Status.ESME_ROK, 7)
    assert h.sample("smpprelay_framing_errors_total", side=SIDE, reason="read_timeout") == 0
    # A second pause with a PDU pending: after resuming, its remaining time still runs out.
    h.connection.dataReceived(link[:10])  # 109.9 s
    h.connection.pauseProducing()
    h.clock.advance(50.0)
    h.connection.resumeProducing()  # 159.9 s: 10 s left
    h.clock.advance(9.9)
    assert not h.transport.disconnecting
    h.clock.advance(0.2)
    assert h.transport.disconnecting
    assert h.sample("smpprelay_framing_errors_total", side=SIDE, reason="read_timeout") == 1
    assert idle == []
