"""The operator's rate cap: the pool paced by a `Pace` (token bucket, AIMD on throttling).

Each session is a bound `SmppConnection` over a `StringTransport` (`Wire`) and time is a
`Clock`; the test plays the operator, answering what was written when it likes.
"""

from __future__ import annotations

import itertools
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.metrics import Metrics
from smpprelay.pace import Pace
from smpprelay.pool import QueueFull, UpstreamPool
from tests.fakes import captured_logs, failure_of, result_of, submit_sm
from tests.fakes.operator import Wire

PACE = "smpprelay_upstream_pace"
DECREASES = "smpprelay_upstream_pace_decreases_total"


def paced(
    throughput: float,
    burst: int,
    window: int = 100,
    queue_timeout: float = 60.0,
    queue_max: int = 1000,
    sessions: int = 1,
) -> tuple[UpstreamPool, Clock, Metrics, list[Wire]]:
    """A pool capped at ``throughput``/s with ``sessions`` bound sessions named 0, 1, ..."""
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    pace = Pace(clock, throughput, burst, metrics.upstream_pace, metrics.upstream_pace_decreases)
    pool = UpstreamPool(clock, metrics, window, queue_timeout, queue_max, 60.0, pace)
    wires = [Wire(clock, metrics) for _ in range(sessions)]
    for index, wire in enumerate(wires):
        pool.add(wire.connection, transmits=True, receives=True, name=str(index))
    return pool, clock, metrics, wires


def _sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def _texts(frames: list[bytes]) -> list[bytes]:
    return [pdu.read_short_message(f).short_message for f in frames]


def _run(clock: Clock, wires: list[Wire], seconds: float, step: float = 0.01) -> list[float]:
    """Let ``seconds`` pass in ``step``s, answering every submit OK as it comes; returns the
    time each was sent."""
    times: list[float] = []
    for _ in range(round(seconds / step)):
        for wire in wires:
            for frame in wire.take():
                times.append(clock.seconds())
                wire.answer(frame, b"OK")
        clock.advance(step)
    return times


def _most_in_one_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1.0 - 1e-9) for start in times)


def _pace_timers(clock: Clock) -> list[Any]:
    return [call for call in clock.getDelayedCalls() if "_woken" in repr(call)]


def test_pace_never_sends_faster_than_the_cap_over_any_second() -> None:
    """100 submits at once over two sessions, 20/s with a burst of 2: all go, round robin,
    the last at (100 - 2) / 20 = 4.9 s, never more than 20 + 2 in any one second."""
    pool, clock, _, wires = paced(20.0, 2, sessions=2)
    answers = [pool.submit(submit_sm(short_message=b"%d" % i), "A") for i in range(100)]
    times = _run(clock, wires, 6.0)
    assert len(times) == 100
    assert all(pdu.message_id_of(result_of(d)) == b"OK" for d in answers)
    assert 4.88 <= max(times) <= 4.92
    assert _most_in_one_second(times) <= 22
    assert _pace_timers(clock) == []  # nothing waits: no wake-up either


def test_pace_lets_a_burst_go_after_a_quiet_spell_then_paces() -> None:
    """After 10 s idle, ``burst`` (5) go at once; the sixth 0.1 s later at 10/s."""
    pool, clock, _, (wire,) = paced(10.0, 5)
    clock.advance(10.0)
    for i in range(7):
        pool.submit(submit_sm(short_message=b"%d" % i), "A")
    assert len(wire.take()) == 5
    clock.advance(0.099)
    assert wire.take() == []
    clock.advance(0.001)
    assert _texts(wire.take()) == [b"5"]
    clock.advance(0.1)
    assert _texts(wire.take()) == [b"6"]


def test_pace_a_submit_that_finds_no_token_in_queue_timeout_fails() -> None:
    """1/s, queue_timeout 4.5 s: of 10 at once, five go (t = 0..4), five fail QueueFull (the
    relay answers ESME_RMSGQFUL) at 4.5 s, and no timer is left."""
    pool, clock, metrics, (wire,) = paced(1.0, 1, queue_timeout=4.5)
    answers = [pool.submit(submit_sm(), "A") for _ in range(10)]
    times = _run(clock, [wire], 6.0, step=0.5)
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(failure_of(d).check(QueueFull) for d in answers[5:])
    assert _sample(metrics, "smpprelay_upstream_queue") == 0.0
    assert _pace_timers(clock) == []


def test_pace_queue_max_still_refuses_at_once() -> None:
    pool, _, _, _ = paced(1.0, 1, queue_max=2)
    pool.submit(submit_sm(), "A")  # took the token
    waiting = [pool.submit(submit_sm(), "A") for _ in range(2)]
    assert failure_of(pool.submit(submit_sm(), "A")).check(QueueFull)
    assert not any(d.called for d in waiting)


def test_pace_halves_on_throttling_once_per_round_and_climbs_back() -> None:
    """20/s: a throttle answer halves the pace to 10/s; more throttle answers to submits sent
    before that decrease change nothing; it climbs 1/s (5% of the cap) a second; a throttle
    to a submit sent after the decrease halves again; never below 1/s; back at the cap later,
    with a log line at each end and a counter."""
    pool, clock, metrics, (wire,) = paced(20.0, 4, window=100)
    assert _sample(metrics, PACE) == 20.0
    with captured_logs() as events:
        for _ in range(4):
            pool.submit(submit_sm(), "A")
        sent = wire.take()
        clock.advance(0.5)
        for frame in sent:
            wire.refuse(frame)
        assert _sample(metrics, PACE) == 10.0
        assert _sample(metrics, DECREASES) == 1.0
        clock.advance(1.0)
        assert _sample(metrics, PACE) == 11.0
        pool.submit(submit_sm(), "A")
        (late,) = wire.take()
        wire.refuse(late)  # sent after the decrease: this one counts
        assert _sample(metrics, PACE) == 5.5
        assert _sample(metrics, DECREASES) == 2.0
        clock.advance(10.0)
        assert _sample(metrics, PACE) == 15.5
        clock.advance(4.5)
        assert _sample(metrics, PACE) == 20.0
        pool.submit(submit_sm(), "A")  # the bucket notices it is back at the cap
    messages = [formatEvent(e) for e in events]
    assert "upstream: the operator throttles; pace down from 20/s" in messages
    assert "upstream: back to the operator's cap of 20.0/s" in messages
    # The session's own window back-off saw the same answers, as without a cap.
    backoffs = {"session": "0"}
    assert metrics.registry.get_sample_value("smpprelay_upstream_backoffs_total", backoffs) == 1


def test_pace_never_drops_below_the_floor() -> None:
    """Throttled round after round, the pace halves down to 1/s and no further (or to the cap
    when that is lower)."""
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    pace = Pace(clock, 20.0, 1, metrics.upstream_pace, metrics.upstream_pace_decreases)
    for _ in range(8):
        clock.advance(0.001)
        pace.throttled(clock.seconds())
    assert pace.now() == 1.0
    assert _sample(metrics, DECREASES) == 8.0
    slow = Pace(clock, 0.5, 1, metrics.upstream_pace, metrics.upstream_pace_decreases)
    slow.throttled(clock.seconds() + 1)
    assert slow.now() == 0.5


def test_pace_after_a_throttle_sends_at_the_lower_pace() -> None:
    """Halved to 5/s, the waiting submits go 0.2 s apart (the saved tokens are dropped)."""
    pool, clock, _, (wire,) = paced(10.0, 5, window=1000)
    pool.submit(submit_sm(short_message=b"x"), "A")
    (first,) = wire.take()
    clock.advance(0.01)
    wire.refuse(first)
    for i in range(5):
        pool.submit(submit_sm(short_message=b"%d" % i), "A")
    times = _run(clock, [wire], 1.2, step=0.01)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 5
    assert all(0.18 <= gap <= 0.2 + 0.011 for gap in gaps)


def test_pace_a_long_message_takes_its_tokens_together_on_one_session() -> None:
    """2/s, burst 2, two sessions: a 3-part message waits for a full bucket, then all its
    parts go back to back on one session; its debt (one token) holds the next single for
    1 s (from -1 to 1 at 2/s)."""
    pool, clock, _, (a, b) = paced(2.0, 2, sessions=2)
    pool.submit(submit_sm(short_message=b"single"), "A")
    assert _texts(a.take()) == [b"single"]
    parts = [submit_sm(short_message=b"part%d" % i) for i in (1, 2, 3)]
    message = pool.submit_all(parts, "A")
    after = pool.submit(submit_sm(short_message=b"after"), "B")
    assert a.take() == b.take() == []
    clock.advance(0.499)
    assert a.take() == b.take() == []
    clock.advance(0.001)  # one token became two
    on_a, on_b = a.take(), b.take()
    wire, frames = (a, on_a) if on_a else (b, on_b)
    assert on_a == [] or on_b == []
    assert _texts(frames) == [b"part1", b"part2", b"part3"]
    for frame in frames:
        wire.answer(frame, b"P")
    assert [pdu.message_id_of(r) for r in result_of(message) if isinstance(r, bytes)] == [b"P"] * 3
    clock.advance(0.99)
    assert a.take() == b.take() == []
    clock.advance(0.01)
    assert _texts(a.take() + b.take()) == [b"after"]
    assert not after.called


def test_pace_serves_waiting_accounts_in_turn() -> None:
    """1/s: A floods 5, then B sends 2; under the cap they still go A, B, A, B, A, ..."""
    pool, clock, _, (wire,) = paced(1.0, 1)
    for i in range(5):
        pool.submit(submit_sm(short_message=b"A%d" % i), "A")
    for i in range(2):
        pool.submit(submit_sm(short_message=b"B%d" % i), "B")
    order: list[bytes] = []
    for _ in range(7):
        for frame in wire.take():
            order += _texts([frame])
            wire.answer(frame, b"OK")
        clock.advance(1.0)
    assert order == [b"A0", b"A1", b"B0", b"A2", b"B1", b"A3", b"A4"]


def test_pace_stop_leaves_no_delayed_call() -> None:
    """Submits waiting for a token: stop fails them and cancels the wake-up."""
    pool, clock, _, (wire,) = paced(1.0, 1, queue_timeout=5.0)
    pool.submit(submit_sm(), "A")
    waiting = pool.submit(submit_sm(), "A")
    (sent,) = wire.take()
    wire.answer(sent, b"OK")
    assert len(_pace_timers(clock)) == 1
    pool.stop()
    assert failure_of(waiting).check(QueueFull)
    # (the connection's own response timer for the answered submit is its business)
    assert [c for c in clock.getDelayedCalls() if "SmppConnection" not in repr(c)] == []
    assert wire.take() == []


def test_without_a_cap_the_pool_has_no_pace_and_the_gauge_reads_zero() -> None:
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    pool = UpstreamPool(clock, metrics, 10, 5.0, 100)
    assert pool.pace is None
    assert _sample(metrics, PACE) == 0.0
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=True)
    for _ in range(10):
        pool.submit(submit_sm(), "A")
    assert len(wire.take()) == 10


def test_pace_failure_of_a_message_still_fires_with_every_part() -> None:
    """A long message that waits past queue_timeout for its tokens fails whole."""
    pool, clock, _, (wire,) = paced(1.0, 1, queue_timeout=1.5)
    pool.submit(submit_sm(), "A")
    wire.take()
    big = pool.submit_all([submit_sm(), submit_sm()], "A")
    clock.advance(0.5)
    clock.advance(0.5)  # a full bucket (1): the message takes 2 and goes into debt
    assert len(wire.take()) == 2
    assert not big.called
    late = pool.submit_all([submit_sm(), submit_sm()], "A")
    clock.advance(1.5)  # back from -1 to 1 needs 2 s: the queue gives up at 1.5
    results = result_of(late)
    assert all(isinstance(r, Failure) and r.check(QueueFull) for r in results)
