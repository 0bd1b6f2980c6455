"""Who may connect and how fast they may submit: connection caps, lock-outs, throughput.

`Access` is shared by every app listener (plain and TLS). It counts open connections in total
and per address, and those not bound yet apart, caps the password-hash checks in flight (all
with `Slots`), locks an address out after ``security.bind_failures`` failed binds (or
connections that never bound) within ``security.bind_failure_window`` seconds, and keeps one
token bucket per account with a ``throughput``. It never touches a socket: the session asks and
acts on the answer.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.config import Account, SecurityConfig
from smpprelay.metrics import Metrics

# Addresses with recent failures remembered at most; past it the stalest are forgotten first.
MAX_TRACKED_ADDRESSES = 100_000
# The refusal reason for each full `Slots` cap of the open connections.
_CONNECTION_CAPS = {"total": "max_connections", "per_address": "max_connections_per_address"}
_UNBOUND_CAP = "max_unbound_connections"
# Counted with the refusals: an idle connection not kept, so that a newer one is.
_PUSHED_OUT = "unbound_pushed_out"
_LOCKED_OUT = "locked_out"
# Failed binds that count toward an address's lock-out (not max_binds: a legitimate app
# reconnecting before its old sessions are gone must not lock itself out).
# An app that hangs up before its password was checked counts too ("abandoned"); a bind
# refused because too many hash checks are in flight ("busy") does not.
LOCKOUT_REASONS = frozenset({"credentials", "address_not_allowed", "malformed", "abandoned"})


T = TypeVar("T")


class SharedLockouts(Protocol):
    """Failed binds counted where every relay instance sees them
    (`smpprelay.store.redis_lockouts.RedisLockouts`)."""

    def failed(self, host: str, window: float, limit: int, lockout: float) -> Deferred[float]:
        """Count a failure; fires with the seconds ``host`` is locked out for (0: not)."""
        ...

    def locked_for(self, host: str) -> Deferred[float]:
        """Seconds ``host`` stays locked out (0: not)."""
        ...


def unmapped(host: str) -> str:
    """``host``, with an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, how a ``::`` listener
    sees an IPv4 peer) written as the IPv4 address it is; anything else as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host


def address_allowed(peer: IAddress | None, allowed: tuple[str, ...]) -> bool:
    """True when the peer's IP address is inside one of the ``allowed`` networks (an
    IPv4-mapped address matches as its IPv4 address, and as itself)."""
    host = getattr(peer, "host", None)
    if host is None:
        return False
    try:
        forms = {ipaddress.ip_address(host), ipaddress.ip_address(unmapped(host))}
    except ValueError:
        return False
    networks = [ipaddress.ip_network(net) for net in allowed]
    return any(address in net for address in forms for net in networks)


def _no_room_made(host: str) -> bool:
    return False


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; one submit takes one token."""

    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock.seconds()

    def take_rate(self, rate: float, burst: int) -> None:
        """Change the rate from now on (tokens saved so far count at the old one)."""
        now = self.clock.seconds()
        self._tokens = min(burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self.rate = rate
        self.burst = burst

    def take(self) -> bool:
        """Take a token if there is one; False means over the rate."""
        # Written out, not shared with `take_rate`: this runs once per submit.
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Slots:
    """Things in use at once (open connections; password checks waiting for a thread or
    running), capped in all and per address."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.in_flight = 0
        self._by_host: Counter[str] = Counter()

    def full(self, host: str) -> str | None:
        """Which cap stops one more from ``host``: "total", "per_address", or None."""
        if self.in_flight >= self.total:
            return "total"
        if self._by_host[host] >= self.per_address:
            return "per_address"
        return None

    def take(self, host: str) -> bool:
        """Take a slot for ``host``; False (and nothing taken) when a cap is reached."""
        if self.full(host) is not None:
            return False
        self.in_flight += 1
        self._by_host[host] += 1
        return True

    def busiest(self) -> str | None:
        """The address holding the most slots (of equals, the one that took its first
        earliest)."""
        return max(self._by_host, key=self._by_host.__getitem__, default=None)

    def give_back(self, host: str) -> None:
        """What `take` allowed is over."""
        self.in_flight -= 1
        self._by_host[host] -= 1
        if self._by_host[host] <= 0:
            del self._by_host[host]


class Access:
    """Connection admission, bind-failure lock-outs and per-account submit rates."""

    log = Logger()

    def __init__(
        self,
        security: SecurityConfig,
        clients: Iterable[Account],
        clock: IReactorTime,
        metrics: Metrics,
    ) -> None:
        self.security = security
        self.clock = clock
        self.metrics = metrics
        # Every reason's series exists from the start at 0, so increase() sees the first one.
        for reason in (_LOCKED_OUT, *_CONNECTION_CAPS.values(), _UNBOUND_CAP, _PUSHED_OUT):
            metrics.connections_refused.labels(reason)
        self._connections = Slots(security.max_connections, security.max_connections_per_address)
        # Connections not bound yet, apart: they cost an attacker nothing, so they get a
        # smaller cap, and at it the newest pushes out an idle one (see `admit`).
        unbound = security.max_unbound_connections
        self._unbound = Slots(unbound, unbound)
        # Taken before a hash check is handed to the thread pool, given back when the pool is
        # done with it: the pool's queue never holds more than max_password_checks.
        self.password_checks = Slots(
            security.max_password_checks, security.max_password_checks_per_address
        )
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        # Fires when the oldest lock-out ends, so the gauge counts only lock-outs in force.
        self._expiry: IDelayedCall | None = None
        self._buckets: dict[str, TokenBucket] = {}
        self._set_rates(clients)
        self._shared: SharedLockouts | None = None  # several instances: counted in Redis too
        self._shared_failing = False  # logged once per spell

    def share(self, lockouts: SharedLockouts) -> None:
        """Count failed binds in ``lockouts`` too, and refuse addresses locked out there."""
        self._shared = lockouts

    def reconfigure(self, security: SecurityConfig, clients: Iterable[Account]) -> None:
        """Take reloaded caps, lock-out settings and throughputs.

        Connections, checks in flight, failures and lock-outs counted so far stay (a lowered
        cap refuses only what comes next); an account's bucket keeps its saved-up tokens.
        """
        self.security = security
        self._connections.total = security.max_connections
        self._connections.per_address = security.max_connections_per_address
        unbound = security.max_unbound_connections
        self._unbound.total = self._unbound.per_address = unbound
        self.password_checks.total = security.max_password_checks
        self.password_checks.per_address = security.max_password_checks_per_address
        self._set_rates(clients)

    def _set_rates(self, clients: Iterable[Account]) -> None:
        buckets = {}
        for c in clients:
            if c.throughput is None:
                continue
            burst = c.burst or max(1, math.ceil(c.throughput))
            bucket = self._buckets.get(c.system_id)
            if bucket is None:
                bucket = TokenBucket(c.throughput, burst, self.clock)
            else:
                bucket.take_rate(c.throughput, burst)
            buckets[c.system_id] = bucket
        self._buckets = buckets

    # --- connections ------------------------------------------------------------------------

    def admit(self, host: str, push_out: Callable[[str], bool] = _no_room_made) -> bool:
        """A connection from ``host`` was accepted: True to keep it, False to drop it now.

        A kept connection counts as unbound until `left_unbound` (it bound, or went), and must
        be given back with `closed`. With the unbound ones at their cap, ``push_out(host)`` is
        asked to drop an idle one (preferably from the address holding the most): an app
        binds within a round trip of connecting, an idle flood does not, so the flood loses
        its own connections rather than keep the app out. False from it: refused.
        """
        reason = _LOCKED_OUT if self.locked(host) else None
        if reason is None and self._unbound.full(host) is not None:
            # First, so that the connection pushed out also frees its place under the caps.
            busiest = self._unbound.busiest()
            if busiest is None or not push_out(busiest):
                reason = _UNBOUND_CAP
            else:
                self.metrics.connections_refused.labels(_PUSHED_OUT).inc()
        reason = reason or self._refusal(host)
        if reason is not None:
            self.log.info("connection from {host} refused: {reason}", host=host, reason=reason)
            self.metrics.connections_refused.labels(reason).inc()
            return False
        self._connections.take(host)
        self._unbound.take(host)
        return True

    def left_unbound(self, host: str) -> None:
        """A connection `admit` kept bound, or went before it did."""
        self._unbound.give_back(host)

    def _refusal(self, host: str) -> str | None:
        if self.locked(host):
            return _LOCKED_OUT
        full = self._connections.full(host)
        return None if full is None else _CONNECTION_CAPS[full]

    def closed(self, host: str) -> None:
        """A connection `admit` kept is gone."""
        self._connections.give_back(host)

    # --- lock-outs --------------------------------------------------------------------------

    def locked(self, host: str) -> bool:
        """True while ``host`` is locked out."""
        until = self._locked_until.get(host)
        if until is None:
            return False
        return self.clock.seconds() < until

    def bind_failed(self, host: str) -> bool:
        """A bind from ``host`` failed; the last failure allowed locks the address out.

        True when this failure locked it out (its connections not yet bound should go). A
        failure while the address is locked out (a check begun before) is not counted again.
        """
        if self.locked(host):
            return False
        now = self.clock.seconds()
        window = self.security.bind_failure_window
        times = self._failures.pop(host, None) or deque()
        self._failures[host] = times  # re-inserted: the dict stays in order of last failure
        times.append(now)
        while times and times[0] <= now - window:
            times.popleft()
        locked = len(times) >= self.security.bind_failures
        if locked:
            del self._failures[host]
            self._locked_until.pop(host, None)
            self._locked_until[host] = now + self.security.lockout
            self.metrics.bind_lockouts.inc()
            self.log.warn(
                "{host} locked out for {s} s after {n} failed binds within {w} s",
                host=host,
                s=self.security.lockout,
                n=len(times),
                w=window,
            )
        self._forget_stale()
        if self._shared is not None:
            security = self.security
            self._shared.failed(
                host, window, security.bind_failures, security.lockout
            ).addCallbacks(self._lock_shared, self._shared_failed, callbackArgs=(host,))
        return locked

    def checked(self, host: str, login: Deferred[T]) -> Deferred[T]:
        """``login``'s result, once ``host``'s shared lock-out is known too (looked up while the
        password is checked, so it adds no wait): `locked` answers for every instance then.
        Redis down: the local count alone decides (an outage must not lock everyone out)."""
        shared = self._shared
        if shared is None:
            return login
        looked = shared.locked_for(host).addCallbacks(
            self._lock_shared, self._shared_failed, callbackArgs=(host,)
        )
        return Deferred.fromCoroutine(_after(looked, login))

    def _lock_shared(self, seconds: float, host: str) -> None:
        self._shared_failing = False
        if seconds <= 0 or self.locked(host):
            return
        self._locked_until[host] = self.clock.seconds() + seconds
        self._failures.pop(host, None)
        self.log.warn(
            "{host} locked out for {s:.0f} s (failed binds counted over every instance)",
            host=host,
            s=seconds,
        )
        self._expire_lockouts()

    def _shared_failed(self, reason: Failure) -> None:
        if not self._shared_failing:
            self._shared_failing = True
            self.log.warn(
                "shared lock-outs unavailable ({why}); counting failed binds here only",
                why=reason.getErrorMessage(),
            )

    def _forget_stale(self) -> None:
        # Both dicts are in time order (of the last failure; of locking, with one duration).
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        self._expire_lockouts()

    def _expire_lockouts(self) -> None:
        # Drop the lock-outs that ended, set the gauge, and wake up when the next one ends.
        now = self.clock.seconds()
        while self._locked_until:
            host, until = next(iter(self._locked_until.items()))
            if until > now:
                break
            del self._locked_until[host]
        self.metrics.locked_addresses.set(len(self._locked_until))
        timer = self._expiry if self._expiry is not None and self._expiry.active() else None
        first = next(iter(self._locked_until.values()), None)
        if timer is not None and (first is None or timer.getTime() != first):
            timer.cancel()
            timer = None
        if timer is None and first is not None:
            timer = self.clock.callLater(first - now, self._expire_lockouts)
        self._expiry = timer

    # --- throughput -------------------------------------------------------------------------

    def may_submit(self, account: str) -> bool:
        """Take one submit from ``account``'s throughput; False means answer ESME_RTHROTTLED."""
        bucket = self._buckets.get(account)
        return bucket is None or bucket.take()


async def _after(first: Deferred[None], then: Deferred[T]) -> T:
    # ``first`` never fails (its errback logs); ``then`` keeps its own failure.
    await first
    return await then


class OpenAccess:
    """The `Access` of a session given none (tests): every connection admitted, no address
    locked out, no account over a rate."""

    def admit(self, host: str, push_out: Callable[[str], bool] = _no_room_made) -> bool:
        return True

    def left_unbound(self, host: str) -> None:
        pass

    def closed(self, host: str) -> None:
        pass

    def locked(self, host: str) -> bool:
        return False

    def bind_failed(self, host: str) -> bool:
        return False

    def checked(self, host: str, login: Deferred[T]) -> Deferred[T]:
        return login

    def may_submit(self, account: str) -> bool:
        return True


OPEN_ACCESS = OpenAccess()
