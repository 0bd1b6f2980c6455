"""The upstream pool: round robin over bound sessions, windows, and the waiting queue.

Each session is a bound `SmppConnection` over a `StringTransport`; the test plays the operator
by reading what was written and answering it.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionLost
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.metrics import Metrics
from smpprelay.pool import QueueFull
from tests.fakes import captured_logs, failure_of, result_of, submit_sm
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


# --- long messages keep the window (fault 2) -----------------------------------------------


def _texts(frames: list[bytes]) -> list[bytes]:
    return [pdu.read_short_message(f).short_message for f in frames]


def _parts(count: int) -> list[bytes]:
    return [submit_sm(short_message=b"part%d" % (i + 1)) for i in range(count)]


def test_pool_parts_wait_for_room_on_their_own_session_in_order() -> None:
    """window=2 on two sessions, one slot busy on each: of a 2-part message, part 1 goes on
    the session it started on and part 2 waits there (not on the other session's free slot,
    not past the window) until an answer frees room; a single submit meanwhile goes elsewhere."""
    pool, clock, metrics = make_pool(window=2)
    a, b = Wire(clock, metrics), Wire(clock, metrics)
    pool.add(a.connection, transmits=True, receives=True, name="a")
    pool.add(b.connection, transmits=True, receives=True, name="b")
    pool.submit(submit_sm(short_message=b"s1"), "app1")
    pool.submit(submit_sm(short_message=b"s2"), "app1")
    (single_a,) = a.take()
    (_single_b,) = b.take()
    answers = pool.submit_all(_parts(2), "app1")
    (part1,) = a.take()  # the window's one free slot
    assert _texts([part1]) == [b"part1"]
    assert a.connection.in_flight == 2
    pool.submit(submit_sm(short_message=b"s3"), "app1")
    assert a.take() == []  # a session with parts waiting takes nothing else
    assert _texts(b.take()) == [b"s3"]

    a.answer(single_a, b"S1")

    (part2,) = a.take()
    assert _texts([part2]) == [b"part2"]
    assert not answers.called
    a.answer(part1, b"P1")
    a.answer(part2, b"P2")
    results = result_of(answers)
    assert [pdu.message_id_of(r) for r in results if isinstance(r, bytes)] == [b"P1", b"P2"]


def test_pool_parts_beyond_the_window_wait_for_the_answers_to_the_first() -> None:
    """3 parts against a window of 2: two go at once, the third when the first is answered;
    every part is answered, in order, on the one session."""
    pool, clock, metrics = make_pool(window=2)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    answers = pool.submit_all(_parts(3), "app1")
    part1, part2 = wire.take()
    assert wire.take() == []
    wire.answer(part1, b"P1")
    (part3,) = wire.take()
    wire.answer(part2, b"P2")
    wire.answer(part3, b"P3")
    results = result_of(answers)
    assert [pdu.message_id_of(r) for r in results if isinstance(r, bytes)] == [b"P1", b"P2", b"P3"]


def test_pool_parts_not_sent_within_parts_within_fail_unsent() -> None:
    """A part still without room ``parts_within`` seconds after the first part went is not
    sent (the operator would not assemble it) and fails with QueueFull; the timer is gone."""
    pool, clock, metrics = make_pool(window=2, parts_within=10.0)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    pool.submit(submit_sm(short_message=b"busy"), "app1")
    wire.take()
    answers = pool.submit_all(_parts(2), "app1")
    (part1,) = wire.take()
    clock.advance(9.9)
    assert not answers.called
    clock.advance(0.1)
    assert wire.take() == []
    wire.answer(part1, b"P1")
    first, second = result_of(answers)
    assert isinstance(first, bytes)
    assert pdu.message_id_of(first) == b"P1"
    assert isinstance(second, Failure)
    assert second.check(QueueFull)
    assert wire.take() == []  # the freed slot does not send the given-up part
    pool.stop()
    assert [c for c in clock.getDelayedCalls() if "_too_late" in repr(c)] == []


def test_pool_message_with_no_room_in_time_is_refused_whole() -> None:
    """A long message that finds no session with room within queue_timeout: every part
    fails with QueueFull and none was sent."""
    pool, clock, metrics = make_pool(window=2, queue_timeout=5.0)
    answers = pool.submit_all(_parts(2), "app1")
    clock.advance(5.0)
    results = result_of(answers)
    assert all(isinstance(r, Failure) and r.check(QueueFull) for r in results)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    assert wire.take() == []


def test_pool_parts_of_a_session_that_is_lost_fail() -> None:
    """Parts waiting on a session that goes away fail (never sent on another session)."""
    pool, clock, metrics = make_pool(window=2)
    a, b = Wire(clock, metrics), Wire(clock, metrics)
    pool.add(a.connection, transmits=True, receives=True, name="a")
    busy = pool.submit(submit_sm(short_message=b"busy"), "app1")
    answers = pool.submit_all(_parts(2), "app1")
    assert len(a.take()) == 2  # busy and part 1; part 2 waits on a
    pool.add(b.connection, transmits=True, receives=True, name="b")
    pool.remove(a.connection)
    a.connection.connectionLost(Failure(ConnectionLost("gone")))
    assert failure_of(busy).check(ConnectionLost)
    results = result_of(answers)
    assert all(isinstance(r, Failure) and r.check(ConnectionLost) for r in results)
    assert b.take() == []


# --- each account waits in its own line (fault 9) ------------------------------------------


def test_pool_serves_waiting_accounts_in_turn() -> None:
    """A flooding account waits behind itself: as room frees, lines are served in turn."""
    pool, clock, metrics = make_pool(window=1)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    pool.submit(submit_sm(short_message=b"first"), "A")
    for i in range(4):
        pool.submit(submit_sm(short_message=b"A%d" % i), "A")
    for i in range(2):
        pool.submit(submit_sm(short_message=b"B%d" % i), "B")
    order = []
    for _ in range(7):
        (sent,) = wire.take()
        order += _texts([sent])
        wire.answer(sent, b"X")
    assert order == [b"first", b"A0", b"B0", b"A1", b"B1", b"A2", b"A3"]
    assert metrics.registry.get_sample_value("smpprelay_upstream_queue") == 0.0


def test_pool_full_queue_pushes_out_the_flooders_newest_for_another_account() -> None:
    """queue_max=4 full of A's submits: B still gets in (A's newest fails at once) and goes
    out within queue_timeout; A's own fifth is refused at once."""
    pool, clock, metrics = make_pool(window=1, queue_max=4, queue_timeout=5.0)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    pool.submit(submit_sm(short_message=b"busy"), "A")
    flood = [pool.submit(submit_sm(short_message=b"A%d" % i), "A") for i in range(4)]
    assert failure_of(pool.submit(submit_sm(short_message=b"A4"), "A")).check(QueueFull)
    b = pool.submit(submit_sm(short_message=b"B"), "B")
    assert failure_of(flood[3]).check(QueueFull)
    assert not any(d.called for d in flood[:3])
    clock.advance(1.0)
    (busy,) = wire.take()
    wire.answer(busy, b"X")
    (a0,) = wire.take()
    wire.answer(a0, b"X")
    (sent,) = wire.take()
    assert _texts([sent]) == [b"B"]
    wire.answer(sent, b"BB")
    assert pdu.message_id_of(result_of(b)) == b"BB"


def test_pool_queue_timeout_applies_to_every_line() -> None:
    """Waiting submits of several accounts each fail queue_timeout after they came."""
    pool, clock, _ = make_pool(queue_timeout=5.0)
    a = pool.submit(submit_sm(), "A")
    clock.advance(2.0)
    b = pool.submit(submit_sm(), "B")
    clock.advance(3.0)
    assert failure_of(a).check(QueueFull)
    assert not b.called
    clock.advance(2.0)
    assert failure_of(b).check(QueueFull)
    assert clock.getDelayedCalls() == []


# --- backing off a throttling operator (fault 15) ------------------------------------------


def _effective(metrics: Metrics, session: str = "0") -> float | None:
    return metrics.registry.get_sample_value(
        "smpprelay_upstream_window_effective", {"session": session}
    )


def test_pool_backs_off_a_throttling_session_and_recovers() -> None:
    """window=4: throttle answers halve the session's window down to one, then pause it
    (0.1 s, then 0.2 s) between single probes; OK answers give one request back each, up to
    the full window; a log line at each end, a counter and a gauge."""
    pool, clock, metrics = make_pool(window=4, queue_timeout=60.0)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    with captured_logs() as events:
        answers = [pool.submit(submit_sm(short_message=b"%d" % i), "A") for i in range(30)]
        first = wire.take()
        assert len(first) == 4
        wire.refuse(first[0])
        assert _effective(metrics) == 2.0
        for frame in first[1:]:
            wire.refuse(frame)
        assert wire.take() == []  # 2 → 1 → paused: nothing more went
        assert _effective(metrics) == 0.0
        clock.advance(0.1)
        (probe,) = wire.take()
        wire.refuse(probe)
        clock.advance(0.1)
        assert wire.take() == []  # the pause doubled
        clock.advance(0.1)
        (probe,) = wire.take()
        wire.answer(probe, b"OK")
        assert _effective(metrics) == 2.0
        sent = wire.take()
        assert len(sent) == 2
        for frame in sent:
            wire.answer(frame, b"OK")
        assert _effective(metrics) == 4.0
        assert len(wire.take()) == 4
    messages = [formatEvent(e) for e in events]
    assert "upstream 0: the operator throttles; backing off" in messages
    assert "upstream 0: back to its full window" in messages
    assert (
        metrics.registry.get_sample_value("smpprelay_upstream_backoffs_total", {"session": "0"})
        == 1.0
    )
    pool.stop()
    assert [c for c in clock.getDelayedCalls() if "_resume" in repr(c)] == []
    # 12 went upstream (4 + 2 probes + 2 + 4); the 18 still waiting fail on stop
    assert all(failure_of(d).check(QueueFull) for d in answers[12:])


def test_pool_stop_cancels_a_pause() -> None:
    """A session paused by throttling leaves no delayed call after stop."""
    pool, clock, metrics = make_pool(window=1)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    pool.submit(submit_sm(), "A")
    (frame,) = wire.take()
    wire.refuse(frame)
    assert any("_resume" in repr(c) for c in clock.getDelayedCalls())
    pool.stop()
    assert not any("_resume" in repr(c) for c in clock.getDelayedCalls())


@pytest.mark.logs_errors
def test_a_bug_in_one_waiting_submits_answer_costs_that_submit_alone() -> None:
    """Plain callbacks, not Deferreds: one that raises as the queue times out is logged and the
    next waiting submit still gets its answer (a Deferred's errback never raised)."""
    pool, clock, _ = make_pool(window=1, queue_timeout=5.0)
    calls: list[str] = []

    def bad(result: bytes | Failure) -> None:
        calls.append("bad")
        raise RuntimeError("a bug in the answer")

    def good(result: bytes | Failure) -> None:
        assert isinstance(result, Failure)
        assert result.check(QueueFull)
        calls.append("good")

    pool.submit_cb(submit_sm(), "a", bad)  # no session: both wait
    pool.submit_cb(submit_sm(), "a", good)
    with captured_logs(lambda event: "log_failure" in event) as logged:
        clock.advance(6)
    assert calls == ["bad", "good"]
    assert len(logged) == 1
