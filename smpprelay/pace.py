"""The operator's rate cap: how many submits a second the relay may send over all sessions.

`Pace` is a token bucket whose rate is the pace allowed now. It starts at the configured cap
(``upstream.throughput``) with ``burst`` tokens saved up at most. Each submit takes one token
and a long message takes one per part, all at once.

- **A message with more parts than ``burst``** goes when the bucket is full and leaves it in
  debt. Its parts then stay back to back, and the debt slows what follows, so the average
  stays at the pace. Over any T seconds the relay sends at most
  ``max(burst, parts) + pace · T``.
- **ESME_RTHROTTLED** from the operator halves the pace (multiplicative decrease), but never
  below `FLOOR`, and empties the saved tokens. It halves once per round, not once per answer:
  a throttle answer to a submit sent before the last decrease describes the pace before it.
  Without this, one throttled window of ten would take the pace down 2^10.
- **Climbing back** is additive: `CLIMB` of the cap per second, so a halving is undone in
  10 s. The climb is worked out from the clock when needed, so no timer runs for it.

`Pace` owns at most one delayed call: the wake-up for whoever waits for a token. There is none
while nothing waits, and `stop` cancels it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

# The pace never drops below this many submits a second (or the cap, if that is lower): a
# pace near 0 would hold every queued submit until queue_timeout refused it.
FLOOR: Final = 1.0
# The share of the cap regained each second after a decrease. 5% brings a halved pace back in
# 10 s. The window back-off (smpprelay.pool) gives its slots back faster, one per OK answer,
# so after a throttle it is the pace that paces. An operator whose real limit is below the
# configured cap then sees one throttled round every few seconds (a sawtooth), not a flood.
CLIMB: Final = 0.05
# Float dust: tokens computed at the exact instant they are due may come out a hair under.
_EPSILON: Final = 1e-9


class Pace:
    """A token bucket at the operator's cap, halved on throttling and climbing back (AIMD)."""

    log = Logger()

    def __init__(
        self, clock: IReactorTime, cap: float, burst: int, gauge: Any, decreases: Any
    ) -> None:
        self.clock = clock
        self.cap = cap
        self.burst = burst
        self.floor = min(FLOOR, cap)
        self.climb = cap * CLIMB
        self._decreases = decreases
        now = clock.seconds()
        self._tokens = float(burst)
        self._last = now  # when _tokens was worked out
        # The pace is min(cap, _base + climb · (t - _since)); _since is the last decrease.
        self._base = cap
        self._since = now
        self._full = True  # at the cap (for the log line when it gets back there)
        self._decreased = float("-inf")  # when the pace was last halved
        self._timer: IDelayedCall | None = None
        gauge.set_function(self.now)

    def now(self) -> float:
        """The submits per second allowed now."""
        return self._at(self.clock.seconds())

    def _at(self, when: float) -> float:
        if self._full:
            return self.cap
        return min(self.cap, self._base + self.climb * (when - self._since))

    def _refill(self, now: float) -> None:
        """Add the tokens earned since ``_last``: the integral of the pace over that time."""
        last = self._last
        if now <= last:
            return
        self._last = now
        if self._full:
            earned = self.cap * (now - last)
        else:
            # The pace climbs linearly until it reaches the cap at `top`, then stays there.
            top = self._since + (self.cap - self._base) / self.climb
            ramp_end = min(now, top)
            earned = 0.0
            if ramp_end > last:
                earned = (self._at(last) + self._at(ramp_end)) / 2 * (ramp_end - last)
            if now >= top:
                earned += self.cap * (now - max(last, top))
                self._full = True
                self.log.info("upstream: back to the operator's cap of {cap}/s", cap=self.cap)
        self._tokens = min(float(self.burst), self._tokens + earned)

    def take(self, need: int) -> bool:
        """Take ``need`` tokens (one per part) if they are there; False means wait.

        A message of more parts than ``burst`` needs a full bucket and leaves it in debt.
        """
        self._refill(self.clock.seconds())
        if self._tokens + _EPSILON >= min(need, self.burst):
            self._tokens -= need
            return True
        return False

    def wake(self, need: int, then: Callable[[], object]) -> None:
        """Call ``then`` once ``need`` tokens could be there (unless a wake-up is due already)."""
        if self._timer is not None:
            return
        now = self.clock.seconds()
        self._refill(now)
        missing = min(need, self.burst) - self._tokens
        # At the pace of now: it only climbs until the next decrease, so this is never early
        # by more than a decrease makes it (and then `take` says no and we wait again).
        delay = max(0.0, missing / self._at(now))
        self._timer = self.clock.callLater(delay, self._woken, then)

    def _woken(self, then: Callable[[], object]) -> None:
        self._timer = None
        then()

    def throttled(self, sent: float) -> None:
        """The operator answered ESME_RTHROTTLED to a submit sent at ``sent``."""
        if sent <= self._decreased:
            return  # sent at the pace before the last decrease: that pace was halved already
        now = self.clock.seconds()
        self._refill(now)
        pace = self._at(now)
        if self._full:
            self.log.warn(
                "upstream: the operator throttles; pace down from {pace:.4g}/s", pace=pace
            )
        self._base = max(self.floor, pace / 2)
        self._since = self._decreased = now
        self._full = self._base >= self.cap
        self._tokens = min(self._tokens, 0.0)  # no saved-up burst right after a throttle
        self._decreases.inc()

    def stop(self) -> None:
        """Cancel the wake-up, if one is due."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
