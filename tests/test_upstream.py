"""The relay's binds to the operator: `UpstreamSession`, `UpstreamPool`, `UpstreamService`.

Every session runs on the real `ClientService` over a fake endpoint: each connection gets a
`StringTransport` whose loss reaches the protocol on the next turn of the `Clock`, once, as a
reactor's does. The test plays the operator by reading what was written and answering it.
"""

from __future__ import annotations

import random
import struct

import pytest
from twisted.internet.error import (
    ConnectionLost,
)
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.pdu import CommandId, Status
from smpprelay.upstream import (
    QueueFull,
    backoff,
)
from tests.fakes import failure_of, result_of, submit_sm
from tests.fakes.operator import (
    Upstreams,
    Wire,
    bound,
    make_pool,
)

# --- backoff ---------------------------------------------------------------------------------


def test_backoff_starts_at_initial_doubles_and_stops_at_the_cap() -> None:
    """With no jitter the n-th retry in a row waits initial * 2**(n-1), never above the cap."""
    policy = backoff(1.0, 60.0, jitter=lambda: 0.0)
    assert [policy(n) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert policy(10_000) == 60.0


def test_backoff_jitter_takes_at_most_half_the_delay() -> None:
    """The largest jitter halves the delay; random jitter stays within [delay/2, delay]."""
    assert backoff(1.0, 60.0, jitter=lambda: 1.0)(3) == 2.0
    assert backoff(1.0, 60.0, jitter=lambda: 0.5)(3) == 3.0
    policy = backoff(0.5, 30.0, jitter=random.Random(7).random)
    for attempt in range(1, 12):
        full = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert full / 2 <= policy(attempt) <= full


# --- binding ---------------------------------------------------------------------------------


def test_bind_transceiver_carries_the_configured_credentials() -> None:
    """The first PDU is bind_transceiver with system_id, password, system_type, version 0x34."""
    up = Upstreams(system_type="VMA")
    up.start()
    body = b"relay\0pw\0VMA\0" + bytes((0x34, 0, 0)) + b"\0"
    expected = struct.pack("!IIII", 16 + len(body), 0x09, 0, 1) + body
    assert up.endpoint.last.frames() == [expected]
    bind = pdu.read_bind(expected)
    assert (bind.kind, bind.system_id, bind.password, bind.system_type) == (
        "transceiver",
        "relay",
        "pw",
        "VMA",
    )


def test_session_joins_the_pool_only_once_bound() -> None:
    """Until bind_transceiver_resp OK the session is "connecting" and not in the pool."""
    up = Upstreams()
    up.start()
    transport = up.endpoint.last
    assert up.pool.transmitters == []
    assert up.state() == {"connecting": 1.0, "bound": 0.0}

    transport.answer_bind()

    assert len(up.pool.transmitters) == 1
    assert up.pool.transmitters[0].closed is False
    assert up.pool.receivers == []
    assert up.state() == {"connecting": 0.0, "bound": 1.0}
    assert up.endpoint.attempts == [0.0]


def test_enquire_link_runs_every_interval_from_the_bind_on() -> None:
    """enquire_link goes out ``enquire_link`` seconds after the bind, then every interval."""
    up = Upstreams(enquire_link=10.0, response_timeout=8.0)
    up.start()
    transport = up.endpoint.last
    transport.take()  # the bind
    up.clock.advance(5.0)  # the operator takes its time to bind us
    assert transport.frames() == []
    transport.send(pdu.bind_response("transceiver", 1, Status.ESME_ROK, "SMSC"))

    up.clock.advance(9.999)
    assert transport.frames() == []
    up.clock.advance(0.001)  # t = 15: bound at 5 + 10
    (probe,) = transport.take()
    assert probe == pdu.build(CommandId.enquire_link, pdu.sequence_of(probe))
    transport.send(pdu.response(CommandId.enquire_link, pdu.sequence_of(probe)))

    up.clock.advance(9.999)
    assert transport.frames() == []
    up.clock.advance(0.001)  # t = 25
    (second,) = transport.take()
    assert pdu.header(second)[1] == CommandId.enquire_link
    assert pdu.sequence_of(second) != pdu.sequence_of(probe)


def test_bind_refused_closes_and_retries_with_growing_backoff() -> None:
    """Each refused bind closes its connection; retries come after 1, 2, 4, 8, 8 seconds."""
    up = Upstreams(reconnect_initial=1.0, reconnect_max=8.0)
    up.start()
    for delay in (1.0, 2.0, 4.0, 8.0, 8.0):
        transport = up.endpoint.last
        transport.answer_bind(Status.ESME_RINVPASWD)
        assert transport.disconnecting
        assert up.pool.transmitters == []
        up.clock.advance(0)  # the connection's loss arrives
        assert up.pending_reconnects() == 1
        attempts = len(up.endpoint.attempts)
        up.clock.advance(delay - 0.001)
        assert len(up.endpoint.attempts) == attempts
        up.clock.advance(0.001)
        assert len(up.endpoint.attempts) == attempts + 1
    assert up.endpoint.attempts == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0, 23.0])
    assert up.reconnects("bind_refused") == 5.0
    assert up.state() == {"connecting": 1.0, "bound": 0.0}


def test_refused_bind_then_operator_close_reconnects_without_error() -> None:
    """Regression: the loss of a connection whose bind was refused raised NoTransition."""
    up = Upstreams()
    up.start()
    refused = up.endpoint.last
    refused.hold_loss = True
    refused.answer_bind(Status.ESME_RINVPASWD)
    refused.peer_closes()  # the operator hangs up after refusing, as most do
    refused.deliver_loss()  # ClientService is Waiting here: no transition for a disconnect

    assert up.reconnects("bind_refused") == 1.0
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 1.0]
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1
    assert up.state() == {"connecting": 0.0, "bound": 1.0}


def test_late_loss_of_a_refused_connection_leaves_the_newer_bind_alone() -> None:
    """A refused connection that closes only after the retry bound must not end the new bind."""
    up = Upstreams()
    up.start()
    refused = up.endpoint.last
    refused.hold_loss = True  # the operator does not read: our close does not complete yet
    refused.answer_bind(Status.ESME_RINVPASWD)
    up.clock.advance(1.0)
    up.endpoint.last.answer_bind()
    (connection,) = up.pool.transmitters

    refused.deliver_loss()

    assert up.pool.transmitters == [connection]
    assert up.state() == {"connecting": 0.0, "bound": 1.0}
    assert up.pending_reconnects() == 0
    up.clock.advance(5.0)
    assert up.endpoint.attempts == [0.0, 1.0]
    # ClientService still knows the bound connection: losing it reconnects.
    up.endpoint.last.peer_closes()
    up.clock.advance(0)
    assert up.pool.transmitters == []
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 1.0, 7.0]


def test_unanswered_bind_aborts_the_connection_and_retries() -> None:
    """No bind answer within response_timeout: the connection is aborted, then a retry."""
    up = Upstreams(response_timeout=3.0)
    up.start()
    silent = up.endpoint.last
    up.clock.advance(2.999)
    assert not silent.disconnecting
    up.clock.advance(0.001)
    assert silent.aborted
    assert up.reconnects("bind_timeout") == 1.0
    up.clock.advance(0)
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 4.0]
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1


def test_failed_connection_attempts_back_off_and_are_counted() -> None:
    """A refused TCP connection counts reason="connect" and is retried after 1, 2, 4 s."""
    up = Upstreams()
    up.endpoint.refuse = True
    up.start()
    up.clock.pump([0.5] * 14)  # t = 7
    assert up.endpoint.attempts == [0.0, 1.0, 3.0, 7.0]
    assert up.reconnects("connect") == 4.0
    up.endpoint.refuse = False
    up.clock.advance(8.0)
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1


def test_unanswered_enquire_link_aborts_and_reconnects() -> None:
    """enquire_link unanswered for response_timeout: abort, leave the pool, reconnect."""
    up, transport = bound(enquire_link=10.0, response_timeout=3.0)
    up.clock.advance(10.0)
    (probe,) = transport.take()
    assert pdu.header(probe)[1] == CommandId.enquire_link
    up.clock.advance(2.999)
    assert not transport.aborted
    assert len(up.pool.transmitters) == 1
    up.clock.advance(0.001)
    assert transport.aborted
    up.clock.advance(0)
    assert up.pool.transmitters == []
    assert up.state() == {"connecting": 1.0, "bound": 0.0}
    assert up.reconnects("lost") == 1.0
    assert up.sample("smpprelay_session_timeouts_total", side="upstream", timer="enquire_link")
    up.clock.advance(0.999)
    assert up.endpoint.attempts == [0.0]
    up.clock.advance(0.001)
    assert up.endpoint.attempts == [0.0, 14.0]
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1


def test_operator_unbind_is_answered_and_the_session_rebinds() -> None:
    """The operator's unbind gets unbind_resp, the connection closes, the session rebinds."""
    up, transport = bound()
    transport.send(pdu.build(CommandId.unbind, 77))
    assert transport.take() == [pdu.build(CommandId.unbind_resp, 77)]
    assert transport.disconnecting
    assert not transport.aborted
    waiting = up.pool.submit(submit_sm())  # the closing session takes no more submits
    assert transport.frames() == []
    up.clock.advance(0)
    assert up.pool.transmitters == []
    assert up.state() == {"connecting": 1.0, "bound": 0.0}
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 1.0]
    up.endpoint.last.answer_bind()
    assert up.state() == {"connecting": 0.0, "bound": 1.0}
    (sent,) = up.endpoint.last.frames()
    assert pdu.header(sent)[1] == CommandId.submit_sm
    assert not waiting.called


def test_deliver_sm_from_the_operator_is_routed_and_answered() -> None:
    """A deliver_sm goes to the router; the operator gets deliver_sm_resp with its status."""
    up, transport = bound()
    receipt = pdu.build(CommandId.deliver_sm, 9, b"body")
    transport.send(receipt)
    assert up.routed == [receipt]
    assert transport.take() == [pdu.build(CommandId.deliver_sm_resp, 9, b"\0")]


# --- shutdown --------------------------------------------------------------------------------


def test_stop_unbinds_every_session_and_leaves_no_timers() -> None:
    """stopService sends unbind on each bound session and fires once both are answered."""
    up = Upstreams(binds=2)
    up.start()
    first, second = up.endpoint.transports
    first.answer_bind()
    second.answer_bind()
    assert len(up.pool.transmitters) == 2

    stopped = up.service.stopService()
    unbinds = [first.take(), second.take()]
    for (unbind,) in unbinds:
        assert unbind == pdu.build(CommandId.unbind, pdu.sequence_of(unbind))
    assert not stopped.called

    first.send(pdu.build(CommandId.unbind_resp, pdu.sequence_of(unbinds[0][0])))
    up.clock.advance(0)
    assert not stopped.called
    second.send(pdu.build(CommandId.unbind_resp, pdu.sequence_of(unbinds[1][0])))
    up.clock.advance(0)

    result_of(stopped)
    assert first.disconnecting
    assert second.disconnecting
    assert up.clock.getDelayedCalls() == []
    assert up.endpoint.attempts == [0.0, 0.0]


def test_a_session_that_unbound_does_not_reconnect_while_stopping() -> None:
    """One session's unbind answered, the other's slow: the first must not bind again."""
    up = Upstreams(binds=2, response_timeout=10.0)
    up.start()
    first, second = up.endpoint.transports
    first.answer_bind()
    second.answer_bind()

    stopped = up.service.stopService()
    ((unbind,),) = [first.take()]
    first.send(pdu.build(CommandId.unbind_resp, pdu.sequence_of(unbind)))
    up.clock.advance(5.0)  # the second unbind is still unanswered

    assert up.endpoint.attempts == [0.0, 0.0]
    assert not stopped.called
    up.clock.advance(5.0)  # the second unbind times out: closed anyway
    up.clock.advance(0)
    result_of(stopped)
    assert up.clock.getDelayedCalls() == []
    assert up.endpoint.attempts == [0.0, 0.0]


def test_stop_while_binding_drops_the_connection_quietly() -> None:
    """Stopping before the bind is answered aborts the connection without an error."""
    up = Upstreams()
    up.start()
    transport = up.endpoint.last
    stopped = up.service.stopService()
    assert transport.aborted
    up.clock.advance(0)
    result_of(stopped)
    assert up.clock.getDelayedCalls() == []
    assert up.endpoint.attempts == [0.0]


def test_stop_while_waiting_to_retry_cancels_the_retry() -> None:
    """Stopping between attempts cancels the scheduled retry."""
    up = Upstreams()
    up.start()
    up.endpoint.last.answer_bind(Status.ESME_RBINDFAIL)
    up.clock.advance(0)
    assert up.pending_reconnects() == 1
    stopped = up.service.stopService()
    result_of(stopped)
    assert up.clock.getDelayedCalls() == []


# --- the pool --------------------------------------------------------------------------------


def test_pool_window_holds_the_third_submit_until_a_response() -> None:
    """window=2: two submits go out, the third waits and goes when a response frees room."""
    pool, clock, metrics = make_pool(window=2)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    answers = [pool.submit(submit_sm(short_message=bytes([65 + i]))) for i in range(3)]
    first, second = wire.take()
    assert metrics.registry.get_sample_value("smpprelay_upstream_queue") == 1.0
    assert not answers[2].called

    wire.answer(first, b"A1")

    assert pdu.message_id_of(result_of(answers[0])) == b"A1"
    (third,) = wire.take()
    assert third[16:] == submit_sm(short_message=b"C")[16:]
    assert metrics.registry.get_sample_value("smpprelay_upstream_queue") == 0.0
    wire.answer(second, b"B2")
    wire.answer(third, b"C3")
    assert [pdu.message_id_of(result_of(d)) for d in answers[1:]] == [b"B2", b"C3"]


def test_pool_forwards_the_frame_under_a_fresh_sequence_only() -> None:
    """The operator receives the submit's bytes unchanged but for the sequence number."""
    pool, clock, metrics = make_pool()
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=False)
    frame = submit_sm(sequence=4242)
    pool.submit(frame)
    (sent,) = wire.take()
    assert sent == pdu.with_sequence(frame, pdu.sequence_of(sent))
    assert pdu.sequence_of(sent) == 1


def test_pool_queue_timeout_fails_the_waiting_submit_exactly_on_time() -> None:
    """A submit waiting for room fails with QueueFull exactly queue_timeout after it came."""
    pool, clock, metrics = make_pool(window=1, queue_timeout=5.0)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=False)
    pool.submit(submit_sm())
    clock.advance(1.0)
    waiting = pool.submit(submit_sm())
    clock.advance(4.5)
    assert not waiting.called
    clock.advance(0.5)  # t = 6: 5 s after it queued
    assert failure_of(waiting).check(QueueFull)
    assert len(wire.take()) == 1  # the one that had room; the failed one never went out
    assert metrics.registry.get_sample_value("smpprelay_upstream_queue") == 0.0


def test_pool_queue_max_fails_at_once() -> None:
    """With queue_max submits already waiting, the next one fails immediately."""
    pool, clock, _ = make_pool(queue_max=2)
    waiting = [pool.submit(submit_sm()), pool.submit(submit_sm())]
    over = pool.submit(submit_sm())
    assert failure_of(over).check(QueueFull)
    assert not any(d.called for d in waiting)
    pool.stop()
    for d in waiting:
        assert failure_of(d).check(QueueFull)
    assert clock.getDelayedCalls() == []


def test_pool_alternates_between_bound_sessions() -> None:
    """Submits go round robin over the bound transmitters."""
    pool, clock, metrics = make_pool(window=10)
    a, b = Wire(clock, metrics), Wire(clock, metrics)
    pool.add(a.connection, transmits=True, receives=True)
    pool.add(b.connection, transmits=True, receives=True)
    for text in (b"1", b"2", b"3", b"4"):
        pool.submit(submit_sm(short_message=text))
    texts_a = [pdu.read_short_message(f).short_message for f in a.take()]
    texts_b = [pdu.read_short_message(f).short_message for f in b.take()]
    assert (texts_a, texts_b) == ([b"1", b"3"], [b"2", b"4"])


def test_pool_skips_a_session_whose_window_is_full() -> None:
    """A full window is passed over for a session with room."""
    pool, clock, metrics = make_pool(window=1)
    a, b = Wire(clock, metrics), Wire(clock, metrics)
    pool.add(a.connection, transmits=True, receives=True)
    pool.add(b.connection, transmits=True, receives=True)
    pool.submit(submit_sm(short_message=b"1"))
    (first,) = a.take()
    a.answer(first, b"X")
    pool.submit(submit_sm(short_message=b"2"))  # b's turn
    pool.submit(submit_sm(short_message=b"3"))  # a has room again
    assert [pdu.read_short_message(f).short_message for f in b.take()] == [b"2"]
    assert [pdu.read_short_message(f).short_message for f in a.take()] == [b"3"]


def test_pool_sends_what_waited_as_soon_as_a_session_binds() -> None:
    """Submits made while nothing is bound go out when a session binds, in order."""
    pool, clock, metrics = make_pool(window=10)
    answers = [pool.submit(submit_sm(short_message=t)) for t in (b"x", b"y")]
    clock.advance(2.0)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    sent = wire.take()
    assert [pdu.read_short_message(f).short_message for f in sent] == [b"x", b"y"]
    clock.advance(10.0)  # past queue_timeout: they left the queue, nothing fails
    assert not any(d.called for d in answers)
    wire.answer(sent[0], b"M1")
    assert pdu.message_id_of(result_of(answers[0])) == b"M1"


def test_pool_receivers_take_no_submits() -> None:
    """A receiver-only session is never given a submit."""
    pool, clock, metrics = make_pool()
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=False, receives=True)
    waiting = pool.submit(submit_sm())
    assert wire.take() == []
    assert pool.bound == 1
    clock.advance(5.0)
    assert failure_of(waiting).check(QueueFull)


def test_pool_submit_fails_when_the_connection_is_lost() -> None:
    """A submit in flight when the connection drops fails with the connection's loss."""
    pool, clock, metrics = make_pool()
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    answer = pool.submit(submit_sm())
    wire.connection.connectionLost(Failure(ConnectionLost("gone")))
    assert failure_of(answer).check(ConnectionLost)


def test_bound_session_carries_pool_submits_end_to_end() -> None:
    """Through a real session: a pool submit reaches the operator; its answer comes back."""
    up, transport = bound()
    answer = up.pool.submit(submit_sm(registered_delivery=1))
    (sent,) = transport.take()
    assert pdu.header(sent)[1] == CommandId.submit_sm
    resp = pdu.submit_sm_resp(pdu.sequence_of(sent), Status.ESME_ROK, b"abc123")
    transport.send(resp)
    assert result_of(answer) == resp
