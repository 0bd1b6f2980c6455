"""The upstream pool: which bound session carries the next submit, and who waits for room.

`UpstreamPool` hands each submit to a bound session with room in its window, round robin.

- **Waiting.** When no session has room, a submit waits at most ``queue_timeout`` seconds and
  fails with `QueueFull` after that. Each account waits in its own line and the lines are
  served in turn as room frees, so an account that floods waits behind itself. The lines
  together hold at most ``queue_max`` submits; when they are full, a newcomer from an account
  with fewer waiting than the longest line pushes out that line's newest submit (which fails
  with `QueueFull` at once), so the flooding account pays for its flood, not the others.
- **Long messages.** The parts of one message all go on one session (the operator assembles
  per bind), in order, each when that session has room in its window, and all within
  ``parts_within`` seconds of the first (the operator's assembly limit: the concat rule's
  window): parts beyond the window wait for the answers to the earlier ones. A message that
  finds no session with room within ``queue_timeout`` is refused whole before any part is
  sent; parts still without room at the assembly limit are not sent (they fail).
- **Throttling.** A session the operator answers ``ESME_RTHROTTLED`` (or ``ESME_RMSGQFUL``)
  backs off: its effective window halves per such answer, and once it is down to one
  request it pauses for 0.1 s, doubling up to 5 s, between probes; every other answer gives
  one request back, up to ``window`` (additive increase, multiplicative decrease).
- **The operator's rate cap.** With a `Pace` (``upstream.throughput``), a submit also needs a
  token, and a long message one per part, taken together when it starts: what finds none
  waits in the same lines, in the same turns, and the line whose turn it is holds the others
  until its tokens come (so a long message is not starved by single ones). Without one, the
  only cost is an ``is None`` test.

The relay depends on this alone, not on how sessions bind.
"""

from __future__ import annotations

import functools
from collections import deque
from typing import Any, Final, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.connection import Outcome, SmppConnection, firing
from smpprelay.metrics import Metrics
from smpprelay.pace import Pace
from smpprelay.pdu import Status
from smpprelay.wire import TELL_FAILED, tell, tell_log

# The command_status bytes of answers that mean "slow down" (read straight from the header:
# this check runs on every answer).
_BACK_OFF: Final = frozenset(
    status.to_bytes(4, "big") for status in (Status.ESME_RTHROTTLED, Status.ESME_RMSGQFUL)
)
# Of those, the one that is about the rate (the pace); ESME_RMSGQFUL is about what is in flight.
_THROTTLED: Final = Status.ESME_RTHROTTLED.to_bytes(4, "big")
# A session throttled down to one request waits this long before its next probe, doubling
# per throttled probe up to _PAUSE_MAX (reliability.md 2.2: one probe at a time, 100 ms → 5 s).
PAUSE_FIRST: Final = 0.1
PAUSE_MAX: Final = 5.0


class QueueFull(Exception):
    """No upstream session could take the submit in time, or the waiting queue is full."""


class _Lane:
    """One transmitting session as the pool drives it."""

    __slots__ = ("connection", "gauge", "limit", "long", "name", "pause", "timer")

    def __init__(self, connection: SmppConnection, name: str, limit: int, gauge: Any) -> None:
        self.connection = connection
        self.name = name
        # The effective window: `UpstreamPool.window`, less while the operator throttles us,
        # 0 while paused.
        self.limit = limit
        # The long message whose later parts wait for room here (one at most: a session
        # with parts waiting takes nothing else).
        self.long: _Long | None = None
        self.pause = PAUSE_FIRST
        self.timer: IDelayedCall | None = None  # the end of a pause
        self.gauge = gauge


class _Long:
    """The parts of one message and what became of each."""

    __slots__ = ("answered", "deadline", "done", "frames", "results", "sent", "timer")

    def __init__(self, frames: tuple[bytes, ...]) -> None:
        self.frames = frames
        self.results: list[bytes | Failure | None] = [None] * len(frames)
        self.sent = 0
        self.answered = 0
        self.done: Deferred[list[bytes | Failure]] = Deferred()
        self.deadline = 0.0  # set when the first part goes
        self.timer: IDelayedCall | None = None

    def settle(self, result: bytes | Failure, index: int) -> None:
        self.results[index] = result
        self.answered += 1
        if self.answered == len(self.frames):
            self.done.callback(cast(list[bytes | Failure], self.results))

    def abandon(self, reason: Exception) -> None:
        """The parts not sent yet never will be: each fails with ``reason``."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        unsent = range(self.sent, len(self.frames))
        self.sent = len(self.frames)
        for index in unsent:
            self.settle(Failure(reason), index)

    def fail(self, result: bytes | Failure) -> None:
        """It waited for room and never got it: every part fails with the same reason."""
        assert isinstance(result, Failure)
        self.done.callback([result] * len(self.frames))


class _Sent:
    """A request sent on a lane, told its answer: the window's bookkeeping, then the sender
    hears. One object per submit (a closure made a function and a cell per shared variable)."""

    __slots__ = ("lane", "outcome", "pool", "sent")

    def __init__(self, pool: UpstreamPool, lane: _Lane, outcome: Outcome, sent: float) -> None:
        self.pool = pool
        self.lane = lane
        self.outcome = outcome
        self.sent = sent

    def __call__(self, result: bytes | Failure) -> None:
        pool, lane = self.pool, self.lane
        try:
            if isinstance(result, bytes):
                pool._round_trip.observe(pool.clock.seconds() - self.sent)
                status = result[8:12]
                if status in _BACK_OFF:
                    pool._back_off(lane)
                    if pool.pace is not None and status == _THROTTLED:
                        pool.pace.throttled(self.sent)
                elif lane.limit < pool.window:
                    pool._recover(lane)
            if lane.long is not None:
                pool._feed(lane)
            if pool._count:
                pool._drain()
        except Exception:
            # As in a Deferred chain: a bug here becomes the submit's failure, answered.
            result = Failure()
        try:  # `tell`, inline; after the window's bookkeeping, as a Deferred chain would
            self.outcome(result)
        except Exception:
            tell_log.failure(TELL_FAILED)


# A waiting submit: its deadline, the frame (or a long message's parts) and who waits for it
# (a long message's `_Long.fail` when it is one: only a failure is told through the entry).
_Entry = tuple[float, "bytes | _Long", Outcome]


class UpstreamPool:
    """Bound upstream sessions and the submits waiting for room in one of their windows."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        window: int,
        queue_timeout: float,
        queue_max: int,
        parts_within: float = 60.0,
        pace: Pace | None = None,
    ) -> None:
        self.clock = clock
        self.pace = pace  # None: no cap
        self.metrics = metrics
        # The series itself (the family has no labels): observed once per answer.
        self._round_trip = metrics.upstream_round_trip.labels()
        self.window = window
        self.queue_timeout = queue_timeout
        self.queue_max = queue_max
        self.parts_within = parts_within
        self.receivers: list[SmppConnection] = []
        self._lanes: list[_Lane] = []
        self._next = 0
        # One line per account; `_turns` the accounts with something waiting, next served first.
        self._waiting: dict[str, deque[_Entry]] = {}
        self._turns: deque[str] = deque()
        self._count = 0
        self._timer: IDelayedCall | None = None

    @property
    def transmitters(self) -> list[SmppConnection]:
        """The bound sessions that take submits."""
        return [lane.connection for lane in self._lanes]

    @property
    def bound(self) -> int:
        """Sessions bound now (transmitting or receiving)."""
        return len(self._lanes) + len(self.receivers)

    @property
    def queued(self) -> int:
        """Submits waiting for room."""
        return self._count

    @property
    def has_room(self) -> bool:
        """A bound session could take a submit now: room in its window, nothing queued."""
        return not self._count and any(
            lane.connection.in_flight < lane.limit and lane.long is None for lane in self._lanes
        )

    def add(
        self, connection: SmppConnection, transmits: bool, receives: bool, name: str = "0"
    ) -> None:
        """A session (``name`` in the metrics) finished binding."""
        if transmits:
            gauge = self.metrics.upstream_window_effective.labels(name)
            gauge.set(self.window)
            self._lanes.append(_Lane(connection, name, self.window, gauge))
            self._drain()
        elif receives:
            self.receivers.append(connection)

    def remove(self, connection: SmppConnection) -> None:
        """A session is gone."""
        for lane in self._lanes:
            if lane.connection is connection:
                self._lanes.remove(lane)
                self._retire(lane, ConnectionLost("the session carrying the message is gone"))
                break
        if connection in self.receivers:
            self.receivers.remove(connection)

    def _retire(self, lane: _Lane, reason: Exception) -> None:
        if lane.timer is not None and lane.timer.active():
            lane.timer.cancel()
        lane.timer = None
        lane.gauge.set(0)
        long = lane.long
        if long is not None:
            lane.long = None
            long.abandon(reason)

    # --- submitting -------------------------------------------------------------------------

    def submit(self, frame: bytes, account: str = "") -> Deferred[bytes]:
        """Send a submit_sm upstream; fires with the operator's answer frame."""
        deferred: Deferred[bytes] = Deferred()
        self.submit_cb(frame, account, firing(deferred))
        return deferred

    def submit_cb(self, frame: bytes, account: str, outcome: Outcome) -> None:
        """`submit` for the hot path: ``outcome`` gets the operator's answer frame, or the
        failure that stands for it (`QueueFull`, `ResponseTimeout`, the session's loss)."""
        if not self._count:
            lane = self._with_room()
            if lane is not None:
                pace = self.pace
                if pace is None or pace.take(1):
                    sent = _Sent(self, lane, outcome, self.clock.seconds())  # `_send`, inline
                    lane.connection.send_request_cb(frame, sent)
                    return
                self._wait(account, frame, outcome)
                pace.wake(1, self._drain)
                return
        self._wait(account, frame, outcome)

    def submit_all(self, frames: list[bytes], account: str = "") -> Deferred[list[bytes | Failure]]:
        """Send the parts of one message, in order, on one session, within its window.

        Fires with each part's answer frame, or the failure that stands for it, in order.
        """
        count = len(frames)
        long = _Long(tuple(frames))
        pace = self.pace
        if not self._count:
            lane = self._with_room()
            if lane is not None:
                if pace is None or pace.take(count):
                    self._start(lane, long)
                    return long.done
                pace.wake(count, self._drain)
        self._wait(account, long, long.fail)
        return long.done

    def _with_room(self) -> _Lane | None:
        lanes = self._lanes
        count = len(lanes)
        start = self._next
        for i in range(start, start + count):
            lane = lanes[i % count]
            connection = lane.connection
            if connection.in_flight < lane.limit and lane.long is None and not connection.closed:
                self._next = i % count + 1
                return lane
        return None

    def _send(self, lane: _Lane, frame: bytes, outcome: Outcome) -> None:
        lane.connection.send_request_cb(frame, _Sent(self, lane, outcome, self.clock.seconds()))

    # --- long messages ----------------------------------------------------------------------

    def _start(self, lane: _Lane, long: _Long) -> None:
        long.deadline = self.clock.seconds() + self.parts_within
        lane.long = long
        self._feed(lane)

    def _feed(self, lane: _Lane) -> None:
        """Send the waiting parts of the lane's message that its window has room for."""
        long = lane.long
        assert long is not None
        connection = lane.connection
        if connection.closed:
            lane.long = None
            long.abandon(ConnectionLost("the session carrying the message is gone"))
            return
        frames = long.frames
        while long.sent < len(frames) and connection.in_flight < lane.limit:
            index = long.sent
            long.sent += 1
            self._send(lane, frames[index], functools.partial(long.settle, index=index))
        if long.sent == len(frames):
            if lane.long is long:
                lane.long = None
            if long.timer is not None and long.timer.active():
                long.timer.cancel()
            long.timer = None
        elif long.timer is None:
            delay = max(0.0, long.deadline - self.clock.seconds())
            long.timer = self.clock.callLater(delay, self._too_late, lane, long)

    def _too_late(self, lane: _Lane, long: _Long) -> None:
        long.timer = None
        if lane.long is long:
            lane.long = None
        self.log.warn(
            "upstream {session}: {unsent} of {parts} parts of a message found no room within "
            "{within} s of the first (the operator assembles within that); not sent",
            session=lane.name,
            unsent=len(long.frames) - long.sent,
            parts=len(long.frames),
            within=self.parts_within,
        )
        long.abandon(QueueFull(f"no room for every part within {self.parts_within} s"))
        if self._count:
            self._drain()

    # --- throttling -------------------------------------------------------------------------

    def _back_off(self, lane: _Lane) -> None:
        if lane.timer is not None:
            return  # paused: this answers a request sent before the pause
        if lane.limit >= self.window:
            self.log.warn(
                "upstream {session}: the operator throttles; backing off", session=lane.name
            )
            self.metrics.upstream_backoffs.labels(lane.name).inc()
        if lane.limit > 1:
            lane.limit //= 2
        else:
            lane.limit = 0
            lane.timer = self.clock.callLater(lane.pause, self._resume, lane)
            lane.pause = min(lane.pause * 2, PAUSE_MAX)
        lane.gauge.set(lane.limit)

    def _resume(self, lane: _Lane) -> None:
        lane.timer = None
        lane.limit = 1  # one probe
        lane.gauge.set(1)
        if lane.long is not None:
            self._feed(lane)
        if self._count:
            self._drain()

    def _recover(self, lane: _Lane) -> None:
        if lane.timer is not None:
            return  # paused: this answers a request sent before the pause
        lane.pause = PAUSE_FIRST
        lane.limit += 1
        if lane.limit >= self.window:
            lane.limit = self.window
            self.log.info("upstream {session}: back to its full window", session=lane.name)
        lane.gauge.set(lane.limit)

    # --- waiting ----------------------------------------------------------------------------

    def _wait(self, account: str, item: bytes | _Long, waiting: Outcome) -> None:
        if self._count >= self.queue_max and not self._push_out(account):
            tell(waiting, Failure(QueueFull(f"{self.queue_max} submits already wait for upstream")))
            return
        line = self._waiting.get(account)
        if line is None:
            line = self._waiting[account] = deque()
            self._turns.append(account)
        line.append((self.clock.seconds() + self.queue_timeout, item, waiting))
        self._count += 1
        self.metrics.upstream_queue.set(self._count)
        if self._timer is None:
            self._timer = self.clock.callLater(self.queue_timeout, self._expire)

    def _push_out(self, account: str) -> bool:
        """Make room for ``account`` at the expense of the longest line, if it is longer."""
        lines = self._waiting
        own = len(lines.get(account, ()))
        longest = max(lines, key=lambda name: len(lines[name]))
        line = lines[longest]
        if len(line) <= own:
            return False
        _, _, waiting = line.pop()  # its newest: the flood's tail
        self._count -= 1
        if not line:
            self._forget(longest)
        why = f"pushed out of the full queue: {longest} had the most waiting"
        tell(waiting, Failure(QueueFull(why)))
        return True

    def _forget(self, account: str) -> None:
        del self._waiting[account]
        self._turns.remove(account)

    def _drain(self) -> None:
        turns = self._turns
        lines = self._waiting
        pace = self.pace
        while turns:
            lane = self._with_room()
            if lane is None:
                break
            account = turns[0]
            line = lines[account]
            if pace is not None:
                head = line[0][1]
                need = 1 if isinstance(head, bytes) else len(head.frames)
                if not pace.take(need):
                    pace.wake(need, self._drain)
                    break
            _, item, waiting = line.popleft()
            self._count -= 1
            if line:
                turns.rotate(-1)  # the next account's turn
            else:
                turns.popleft()
                del lines[account]
            if isinstance(item, bytes):
                self._send(lane, item, waiting)
            else:
                self._start(lane, item)
        self.metrics.upstream_queue.set(self._count)

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        expired: list[Outcome] = []
        soonest: float | None = None
        for account, line in list(self._waiting.items()):
            # One timeout for all: each line is in deadline order.
            while line and line[0][0] <= now:
                expired.append(line.popleft()[2])
            if not line:
                self._forget(account)
            elif soonest is None or line[0][0] < soonest:
                soonest = line[0][0]
        self._count -= len(expired)
        if soonest is not None:
            self._timer = self.clock.callLater(soonest - now, self._expire)
        elif self.pace is not None:
            self.pace.stop()  # nothing waits for a token any more
        self.metrics.upstream_queue.set(self._count)
        for waiting in expired:
            why = f"no upstream session free within {self.queue_timeout} s"
            tell(waiting, Failure(QueueFull(why)))

    def stop(self) -> None:
        """Fail whatever still waits (on shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.pace is not None:
            self.pace.stop()
        lines = list(self._waiting.values())
        self._waiting.clear()
        self._turns.clear()
        self._count = 0
        self.metrics.upstream_queue.set(0)
        for line in lines:
            for _, _, waiting in line:
                tell(waiting, Failure(QueueFull("relay stopping")))
        for lane in self._lanes:
            if lane.timer is not None and lane.timer.active():
                lane.timer.cancel()
            lane.timer = None
            long = lane.long
            if long is not None:
                lane.long = None
                long.abandon(QueueFull("relay stopping"))
