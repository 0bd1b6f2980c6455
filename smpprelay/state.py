"""The store as a service: opened and loaded while the relay is built, started first, closed last.

`open_store` runs in ``makeService``, before the reactor runs and before any listener opens:
a store that cannot be opened (corrupt, unreadable, its directory missing) stops the start with
one line naming the file and what is wrong, and exit status 1; nothing is emptied or
overwritten. `StoreService` starts the store's writer when the relay starts (after twistd has
forked), and at the stop writes what is pending (`flush`, the rules' windows) and closes it
after everything else has stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from typing_extensions import override

from smpprelay.collectors import RedisReading, StoreReading
from smpprelay.config import Config
from smpprelay.metrics import Metrics
from smpprelay.store import Store, StoreCorrupt
from smpprelay.store.memory import MemoryStore
from smpprelay.store.tables import ReceiptRoutes

log = Logger()


class StoreFailed(SystemExit):
    """The store cannot be opened: twistd prints this one line and exits with status 1."""


def open_store(config: Config, reactor: Any) -> Store:
    """The store ``config.store`` names, opened (and checked, for a file)."""
    settings = config.store
    receipts = config.receipts
    map_max = settings.map_max(receipts)
    if settings.backend == "memory":
        return MemoryStore(ReceiptRoutes(receipts.map_ttl, map_max), receipts.final_grace)
    if settings.backend == "redis":
        from smpprelay.store.redis import RedisStore
        from smpprelay.store.redis_link import RedisLink

        # No I/O here (twistd has not forked yet): the link connects at `StoreService` start.
        link = RedisLink(settings.url, reactor, reply_timeout=settings.reply_timeout)
        return RedisStore(
            link,
            reactor,
            settings.key_prefix,
            route_ttl=receipts.map_ttl,
            final_grace=receipts.final_grace,
        )
    from smpprelay.store.sqlite import SqliteStore

    try:
        return SqliteStore(
            os.path.abspath(settings.path),
            reactor,
            sync=settings.sync,
            route_ttl=receipts.map_ttl,
            final_grace=receipts.final_grace,
            map_max=map_max,
            max_size=settings.max_size,
        )
    except StoreCorrupt as error:
        raise StoreFailed(f"smpprelay: store: {error}") from None


def store_reading(store: Store) -> Callable[[], StoreReading]:
    """What the metrics read from ``store`` at each scrape."""

    def read() -> StoreReading:
        stats = store.stats()
        rows = {
            "routes": stats.routes,
            "deliveries": stats.deliveries,
            "parts": stats.parts,
            "windows": stats.windows,
        }
        return StoreReading(store.writable, rows, stats.size_bytes, stats.commits, stats.writes)

    return read


def redis_reading(store: Store) -> Callable[[], RedisReading] | None:
    """What the metrics read from ``store``'s link to Redis at each scrape (None: no Redis)."""
    from smpprelay.store.redis import RedisStore
    from smpprelay.store.redis_link import RTT_BUCKETS

    if not isinstance(store, RedisStore):
        return None
    link = store.link

    def read() -> RedisReading:
        stats = link.stats
        return RedisReading(
            link.writable,
            stats.calls,
            stats.errors,
            stats.rtt_sum,
            RTT_BUCKETS,
            list(stats.rtt_buckets),
        )

    return read


class StoreService(Service):
    """Starts the store with the relay; at the stop writes what is pending and closes it."""

    def __init__(self, store: Store, flush: Callable[[], None], metrics: Metrics) -> None:
        self.store = store
        self.flush = flush  # writes the rules' windows behind one last time
        metrics.watch_store(store_reading(store))
        redis = redis_reading(store)
        if redis is not None:
            metrics.watch_redis(redis)

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.store.start()

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.flush()
        return self.store.close()
