"""The upstream pool: round robin over bound sessions, windows, and the waiting queue.

Each session is a bound `SmppConnection` over a `StringTransport`; the test plays the operator
by reading what was written and answering it.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.pool import QueueFull
from tests.fakes import failure_of, result_of, submit_sm
from tests.fakes.operator import Wire, make_pool


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
