"""How `smpprelay.connection.SmppConnection` tells a live peer from a dead one: its own
``enquire_link`` every so often (keepalive), and nothing read for too long (inactivity).

A mixin, not a layer: the timers are the connection's own and nothing here runs per PDU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.metrics import Metrics, Side
from smpprelay.pdu import CommandId
from smpprelay.wire import ResponseTimeout


class Liveness:
    """Keepalive and inactivity timers of an SMPP connection (`SmppConnection` sets up the
    attributes below and re-arms the idle timer when it resumes reading)."""

    clock: IReactorTime
    metrics: Metrics
    side: Side
    peer: str
    log: Any
    closed: bool
    paused: bool
    enquire_link_interval: float | None
    _keepalive: IDelayedCall | None
    _inactivity: float | None
    _on_idle: Callable[[], None] | None
    _idle_timer: IDelayedCall | None
    _last_read: float

    def send_request(self, frame: bytes) -> Deferred[bytes]:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def start_keepalive(self, interval: float) -> None:
        """Send enquire_link every ``interval`` seconds; one left unanswered kills the link."""
        self.enquire_link_interval = interval
        if self._keepalive is None and not self.closed:
            self._keepalive = self.clock.callLater(interval, self._send_keepalive)

    def start_inactivity(self, seconds: float, on_idle: Callable[[], None]) -> None:
        """Call ``on_idle`` once nothing has been read from the peer for ``seconds``."""
        self._inactivity = seconds
        self._on_idle = on_idle
        self._last_read = self.clock.seconds()
        if self._idle_timer is None and not self.closed:
            self._idle_timer = self.clock.callLater(seconds, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.closed or self._inactivity is None or self._on_idle is None or self.paused:
            return  # paused: the peer's requests wait unread; resumeProducing re-arms it
        due = self._last_read + self._inactivity - self.clock.seconds()
        if due > 0:
            self._idle_timer = self.clock.callLater(due, self._idle_check)
            return
        self._inactivity = None  # once: the handler decides what follows
        self._on_idle()

    def _send_keepalive(self) -> None:
        self._keepalive = None
        if self.closed:
            return

        def answered(_: bytes) -> None:
            if not self.closed and self.enquire_link_interval:
                self._keepalive = self.clock.callLater(
                    self.enquire_link_interval, self._send_keepalive
                )

        def unanswered(reason: Failure) -> None:
            if reason.check(ResponseTimeout):
                self.log.warn(
                    "{side} {peer}: enquire_link unanswered; declaring the link dead",
                    side=self.side,
                    peer=self.peer,
                )
                self.metrics.session_timeouts.labels(self.side, "enquire_link").inc()
                self.abort()

        self.send_request(pdu.build(CommandId.enquire_link, 0)).addCallbacks(answered, unanswered)
