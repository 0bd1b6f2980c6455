"""The upstream pool: which bound session carries the next submit, and who waits for room.

`UpstreamPool` hands each submit to a bound session with room in its window, round robin; when
none has room, the submit waits in a bounded queue for at most ``queue_timeout`` seconds and
fails with `QueueFull` after that. The relay depends on this alone, not on how sessions bind.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics


class QueueFull(Exception):
    """No upstream session could take the submit in time, or the waiting queue is full."""


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
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.window = window
        self.queue_timeout = queue_timeout
        self.queue_max = queue_max
        self.transmitters: list[SmppConnection] = []
        self.receivers: list[SmppConnection] = []
        self._next = 0
        # A waiting entry is one submit (bytes) or the parts of one message (a tuple), which
        # must go out together on one session.
        self._queue: deque[tuple[float, bytes | tuple[bytes, ...], Deferred[Any]]] = deque()
        self._timer: IDelayedCall | None = None

    @property
    def bound(self) -> int:
        """Sessions bound now (transmitting or receiving)."""
        return len(self.transmitters) + len(self.receivers)

    def add(self, connection: SmppConnection, transmits: bool, receives: bool) -> None:
        """A session finished binding."""
        if transmits:
            self.transmitters.append(connection)
            self._drain()
        elif receives:
            self.receivers.append(connection)

    def remove(self, connection: SmppConnection) -> None:
        """A session is gone."""
        for sessions in (self.transmitters, self.receivers):
            if connection in sessions:
                sessions.remove(connection)

    def submit(self, frame: bytes) -> Deferred[bytes]:
        """Send a submit_sm upstream; fires with the operator's answer frame."""
        connection = self._with_room()
        if connection is not None and not self._queue:
            return self._send(connection, frame)
        return self._wait(frame)

    def submit_all(self, frames: list[bytes]) -> Deferred[list[bytes | Failure]]:
        """Send the parts of one message back to back on one session.

        Fires with each part's answer frame, or the failure that stands for it, in order.
        The parts may take the session a few requests past its window: the operator wants
        them together, and they are few.
        """
        connection = self._with_room()
        if connection is not None and not self._queue:
            return self._send_all(connection, tuple(frames))
        return self._wait(tuple(frames)).addErrback(lambda reason: [reason] * len(frames))

    def _send_all(
        self, connection: SmppConnection, frames: tuple[bytes, ...]
    ) -> Deferred[list[bytes | Failure]]:
        sent = [self._send(connection, frame) for frame in frames]
        gathered: Deferred[list[tuple[bool, Any]]] = DeferredList(sent, consumeErrors=True)
        return gathered.addCallback(lambda results: [result for _, result in results])

    def _wait(self, item: bytes | tuple[bytes, ...]) -> Deferred[Any]:
        if len(self._queue) >= self.queue_max:
            return fail(QueueFull(f"{self.queue_max} submits already wait for upstream"))
        waiting: Deferred[Any] = Deferred()
        self._queue.append((self.clock.seconds() + self.queue_timeout, item, waiting))
        self.metrics.upstream_queue.set(len(self._queue))
        if self._timer is None:
            self._timer = self.clock.callLater(self.queue_timeout, self._expire)
        return waiting

    def _with_room(self) -> SmppConnection | None:
        sessions = self.transmitters
        count = len(sessions)
        for i in range(count):
            index = (self._next + i) % count
            connection = sessions[index]
            if connection.in_flight < self.window and not connection.closed:
                self._next = index + 1
                return connection
        return None

    def _send(self, connection: SmppConnection, frame: bytes) -> Deferred[bytes]:
        clock = self.clock
        sent = clock.seconds()

        def freed(result: Any) -> Any:
            if isinstance(result, bytes):
                self.metrics.upstream_round_trip.observe(clock.seconds() - sent)
            if self._queue:
                self._drain()
            return result

        return connection.send_request(frame).addBoth(freed)

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            connection = self._with_room()
            if connection is None:
                break
            _, item, waiting = queue.popleft()
            if isinstance(item, tuple):
                self._send_all(connection, item).chainDeferred(waiting)
            else:
                self._send(connection, item).chainDeferred(waiting)
        self.metrics.upstream_queue.set(len(queue))

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        queue = self._queue
        while queue:
            deadline, _, waiting = queue[0]
            if deadline > now:
                self._timer = self.clock.callLater(deadline - now, self._expire)
                break
            queue.popleft()
            waiting.errback(QueueFull(f"no upstream session free within {self.queue_timeout} s"))
        self.metrics.upstream_queue.set(len(queue))

    def stop(self) -> None:
        """Fail whatever still waits (on shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        while self._queue:
            self._queue.popleft()[2].errback(QueueFull("relay stopping"))
