"""A receipt route evicted at ``receipts.map_max`` is counted and logged, not only unmatched.

The store evicts (the memory one as it adds, the sqlite one as it expires); the router counts
what the store evicted at its next sweep (`Router.expire`).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from smpprelay.metrics import Metrics
from smpprelay.router import Router
from smpprelay.store.memory import MemoryStore
from smpprelay.store.tables import HeldDeliveries, ReceiptRoutes

MAP_MAX = 3


def router(clock: Clock, metrics: Metrics) -> Router:
    store = MemoryStore(ReceiptRoutes(ttl=600, max_entries=MAP_MAX), final_grace=60)
    held = HeldDeliveries(60, 10)
    return Router(clock, metrics, store, held, {}, lambda account: [], 1.0, map_max=MAP_MAX)


def evicted(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("smpprelay_receipt_routes_evicted_total")


def test_evicted_routes_are_counted_and_logged_once_per_spell() -> None:
    """Past map_max each new route evicts the oldest: the counter says how many, and one
    warning says that it started; once the map has room again, the next spell warns again."""
    clock, metrics = Clock(), Metrics()
    relay_router = router(clock, metrics)
    assert evicted(metrics) == 0  # exported from the start
    with capturedLogs() as events:
        for number in range(MAP_MAX + 4):
            relay_router.remember(b"OP%d" % number, "app")
        relay_router.expire()
    assert evicted(metrics) == 4
    warnings = [event for event in events if event["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    assert "receipts.map_max" in warnings[0]["log_format"]
    # The routes expire; the next eviction is a new spell and is told again.
    clock.advance(601)
    relay_router.store.expire(clock.seconds())
    relay_router.expire()
    with capturedLogs() as events:
        for number in range(MAP_MAX + 1):
            relay_router.remember(b"NEW%d" % number, "app")
        relay_router.expire()
    assert evicted(metrics) == 5
    assert [event["log_level"] for event in events] == [LogLevel.warn]
