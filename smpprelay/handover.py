"""Held receipts and MO handed over between relay instances (``store: {backend: redis}``).

A receipt or MO that no receiver on this instance takes is held in Redis (`Router` ->
``store.hold_delivery`` -> `RedisDeliveries.hold`; the operator hears ``ESME_ROK`` only once
Redis has it). Every instance runs a `Handover`: it reads the held deliveries of the accounts
it has a receiver with room for and delivers them through the router's own send path, so an
app bound on instance B gets what arrived on instance A, and one bound nowhere gets it when it
binds, on whichever instance.

Why polling and not a blocking read: the relay has one pipelined connection to Redis
(`RedisLink`); an ``XREADGROUP BLOCK`` would stall every submit queued behind it, and a second
connection would need its own outage handling. A poll every ``poll`` seconds (0.1 by default)
over the accounts with room costs a few commands a second, sent together (one round trip), and
delays a handed-over delivery by at most ``poll``.

Exactly once: an entry is read by one instance, stays pending on it while its app is asked, and
is removed once the app answered ``ESME_ROK`` (or refused for good). A failed delivery is left
pending and becomes claimable after the router's retry interval; one pending on an instance
that died is claimed after ``claim_idle`` (it must exceed the apps' response timeout, or an
app slow to answer would be asked twice). A second delivery happens only when an instance dies
between the app's answer and the removal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from smpprelay.access import Access
from smpprelay.config import Config
from smpprelay.metrics import Metrics
from smpprelay.registry import Registry
from smpprelay.router import Router
from smpprelay.store.redis import RedisStore
from smpprelay.store.redis_deliveries import Entry, RedisDeliveries
from smpprelay.store.redis_lockouts import RedisLockouts
from smpprelay.store.tables import Held


class Handover:
    """Reads this instance's share of the held deliveries from Redis and delivers them."""

    log = Logger()

    def __init__(
        self,
        router: Router,
        deliveries: RedisDeliveries,
        accounts: Callable[[], Iterable[str]],
        clock: IReactorTime,
        metrics: Metrics,
        *,
        poll: float = 0.1,
        claim_every: float = 1.0,
        claim_idle: float = 60.0,
        sweep_every: float = 5.0,
    ) -> None:
        self.router = router
        self.deliveries = deliveries
        self.accounts = accounts  # every account configured (their streams are swept)
        self.clock = clock
        self.metrics = metrics
        self.poll = poll
        self.claim_every = claim_every
        self.claim_idle = claim_idle
        self.sweep_every = sweep_every
        self._loops: list[LoopingCall] = []
        self._busy: set[str] = set()  # "read", "claim" in flight: their next tick waits
        self._soon: IDelayedCall | None = None
        self._failing = False  # logged once per spell of failed reads
        router.shared = self

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling, claiming and sweeping."""
        for every, job in (
            (self.poll, self._read),
            (self.claim_every, self._claim),
            (self.sweep_every, self._sweep),
        ):
            loop = LoopingCall(job)
            loop.clock = self.clock
            loop.start(every, now=False)
            self._loops.append(loop)

    def stop(self) -> None:
        """Stop reading; what is in flight stays pending in Redis (claimed by another
        instance after ``claim_idle`` if this one never answers for it)."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None

    def wake(self, account: str = "") -> None:
        """Read at once (a receiver bound, or something was just held)."""
        if self._loops and (self._soon is None or not self._soon.active()):
            self._soon = self.clock.callLater(0, self._read)

    # --- the router's side (`smpprelay.router.SharedHeld`) -----------------------------------

    def back(self, item: Held) -> None:
        """Delivery failed: claimable again after the router's retry interval."""
        self.deliveries.back(item, self.router.retry, self.claim_idle)

    def held(self, item: Held) -> None:
        """Just held in Redis: count it, and read soon (a receiver here may have room by now)."""
        self.metrics.held.labels(item.account).set(self.deliveries.count(item.account))
        self.wake()

    # --- reading ----------------------------------------------------------------------------

    def _rooms(self) -> dict[str, int]:
        rooms = {}
        for account in self.accounts():
            room = self.router.room(account)
            if room > 0:
                rooms[account] = room
        return rooms

    def _read(self) -> Deferred[None] | None:
        return self._fetch("read", lambda account, room: self.deliveries.read(account, room))

    def _claim(self) -> Deferred[None] | None:
        return self._fetch(
            "claim", lambda account, room: self.deliveries.claim(account, self.claim_idle, room)
        )

    def _fetch(
        self, job: str, fetch: Callable[[str, int], Deferred[list[Entry]]]
    ) -> Deferred[None] | None:
        if job in self._busy or not self.deliveries.link.writable:
            return None
        rooms = self._rooms()
        if not rooms:
            return None
        self._busy.add(job)
        # Sent together: one round trip on the pipelined connection.
        reads = [fetch(account, room) for account, room in rooms.items()]

        def got(batches: list[list[Entry]]) -> None:
            self._busy.discard(job)
            self._failing = False
            full = False
            for (_account, room), entries in zip(rooms.items(), batches, strict=True):
                full = full or len(entries) >= room
                for entry in entries:
                    self._take(entry)
            if full:
                self.wake()  # more may wait: drain without waiting for the next tick

        def failed(reason: Failure) -> None:
            self._busy.discard(job)
            if not self._failing:
                self._failing = True
                self.log.warn(
                    "held deliveries: reading from redis failed ({why}); retrying",
                    why=_first_error(reason),
                )

        return gatherResults(reads, consumeErrors=True).addCallbacks(got, failed)

    def _take(self, entry: Entry) -> None:
        item = entry.item
        if item.expires <= self.clock.seconds():
            self._expired(item.kind, item.account, item.attempts)
            self.deliveries.done(item)
            return
        outcome = "delivered" if entry.origin == self.deliveries.instance else "handed_over"
        if self.router.deliver_held(item, outcome) is None:
            # No receiver here any more: claimable by any instance at once.
            self.deliveries.back(item, 0.0, self.claim_idle)

    # --- expiry and the gauge ---------------------------------------------------------------

    def _sweep(self) -> Deferred[None] | None:
        if not self.deliveries.link.writable:
            return None
        accounts = list(self.accounts())
        sweeps = [self.deliveries.sweep(account) for account in accounts]

        def swept(results: list[list[tuple[str, int]]]) -> Deferred[dict[str, int]]:
            for account, gone in zip(accounts, results, strict=True):
                for kind, attempts in gone:
                    self._expired(kind, account, attempts)
            return self.deliveries.measure(accounts)

        def measured(lengths: dict[str, int]) -> None:
            for account in accounts:
                self.metrics.held.labels(account).set(lengths.get(account, 0))

        def failed(reason: Failure) -> None:
            self.log.info("held deliveries: sweep failed ({why})", why=_first_error(reason))

        done: Deferred[Any] = gatherResults(sweeps, consumeErrors=True)
        return done.addCallback(swept).addCallback(measured).addErrback(failed)

    def _expired(self, kind: str, account: str, attempts: int) -> None:
        self.log.warn(
            "{kind} for {account} expired after {attempts} attempts",
            kind=kind,
            account=account,
            attempts=attempts,
        )
        self.metrics.deliveries.labels(kind, "expired").inc()


def _first_error(reason: Failure) -> str:
    # gatherResults wraps the first failure in a FirstError.
    value = reason.value
    inner = getattr(value, "subFailure", None)
    return (inner if isinstance(inner, Failure) else reason).getErrorMessage()


class HandoverService(Service):
    """Runs `Handover` while the relay runs (with ``store: {backend: redis}``)."""

    def __init__(self, handover: Handover) -> None:
        self.handover = handover

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.handover.start()

    @override
    def stopService(self) -> None:
        self.handover.stop()
        super().stopService()  # type: ignore[no-untyped-call]


def share_through_redis(
    store: RedisStore,
    router: Router,
    registry: Registry[Any],
    access: Access,
    config: Config,
    clock: IReactorTime,
    metrics: Metrics,
) -> HandoverService:
    """Wire what several instances share besides the store: held deliveries go to whichever
    instance has a receiver for them, and failed binds count on every instance."""
    configured = {client.system_id for client in config.clients}
    handover = Handover(
        router,
        store.deliveries,
        lambda: configured.union(registry.accounts()),
        clock,
        metrics,
        # Longer than an app may take to answer: a slow app must not get a delivery twice.
        claim_idle=max(60.0, 2 * config.limits.response),
    )
    registry.on_receiver_bound.append(handover.wake)
    access.share(RedisLockouts(store.link, store.prefix))
    return HandoverService(handover)
