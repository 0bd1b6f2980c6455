"""The memory backend: every piece of state in this process only, lost at a restart.

Fastest, and right for tests and for an operator who accepts the loss (README "State"). Routes
live in a `ReceiptRoutes` table bounded by ``receipts.map_max``; held deliveries, held parts and
the rules' windows live only where the router and the rules keep them, so the calls that would
write them elsewhere succeed at once and keep nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed

from smpprelay.store import (
    DEFAULT_UPSTREAM,
    HeldPart,
    Loaded,
    Mapped,
    RouteDone,
    StoreStats,
    WindowEntry,
)
from smpprelay.store.tables import Held, ReceiptRoutes, Route


class MemoryStore:
    """`smpprelay.store.Store` in memory: bounded, expiring, not durable."""

    durable = False

    def __init__(self, routes: ReceiptRoutes, final_grace: float) -> None:
        self.routes = routes
        self.final_grace = final_grace
        # The dedup digest's key: no window outlives the process, so a fresh one each time.
        self.secret = os.urandom(16)
        self._upstreams: dict[str, str] = {}  # upstream -> the prefix its ids carry here
        self._prefixes: dict[str, str] = {}  # and back

    @property
    def writable(self) -> bool:
        """Memory always takes a write."""
        return True

    @property
    def problem(self) -> str:
        """Never a problem writing to memory."""
        return ""

    def start(self) -> None:
        """Nothing to start."""

    def load(self) -> Loaded:
        """Nothing survives a restart in memory."""
        return Loaded()

    def _key(self, upstream: str, message_id: str) -> str:
        # One upstream (the usual case) keys by the id alone: no cost per route.
        if upstream == "default":
            return message_id
        prefix = self._upstreams.get(upstream)
        if prefix is None:
            prefix = self._upstreams[upstream] = f"{len(self._upstreams) + 1}\0"
            self._prefixes[prefix] = upstream
        return prefix + message_id

    def _unkey(self, key: str) -> tuple[str, str]:
        """(upstream, message id) of a key."""
        prefix, nul, rest = key.partition("\0")
        if nul and prefix + nul in self._prefixes:
            return self._prefixes[prefix + nul], rest
        return DEFAULT_UPSTREAM, key

    def add_route(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None = None,
    ) -> Deferred[None]:
        """Route receipts for ``message_id``; the oldest route gives way at ``map_max``."""
        key = self._key(upstream, message_id)
        self.routes.add(key, account, now, app_message_id, operator_id)
        return succeed(None)

    def add_route_cb(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None,
        done: RouteDone,
    ) -> None:
        """`add_route`; ``done(None)`` at once (memory holds it as soon as it is added)."""
        self.routes.add(self._key(upstream, message_id), account, now, app_message_id, operator_id)
        done(None)

    def find_route(self, upstream: str, message_id: str, now: float) -> Deferred[Route | None]:
        """The route, if known and not expired."""
        return succeed(self.routes.get(self._key(upstream, message_id), now))

    def find_app_id(self, app_message_id: bytes, now: float) -> Deferred[list[Mapped]]:
        """The live routes whose app was given ``app_message_id``."""
        found = []
        for key, route in self.routes.find_app(app_message_id, now):
            upstream, message_id = self._unkey(key)
            found.append(Mapped(upstream, route.operator_id or message_id, route))
        return succeed(found)

    def route_final(self, upstream: str, message_id: str, now: float) -> None:
        """Keep the route ``final_grace`` seconds more (a late duplicate receipt still routes)."""
        self.routes.cut_back(self._key(upstream, message_id), now + self.final_grace)

    def hold_delivery(self, item: Held) -> Deferred[None]:
        """The router's own table is the only copy."""
        return succeed(None)

    def delivered(self, item: Held) -> None:
        """Nothing kept here."""

    def hold_part(self, part: HeldPart) -> Deferred[None]:
        """The concat rule's own table is the only copy."""
        return succeed(None)

    def replace_part(self, part: HeldPart) -> Deferred[None]:
        """The concat rule's own table is the only copy."""
        return succeed(None)

    def parts_done(self, app_message_ids: Sequence[bytes]) -> None:
        """Nothing kept here."""

    def save_windows(self, entries: Sequence[WindowEntry] | bytes) -> Deferred[None]:
        """The rules' own tables are the only copy."""
        return succeed(None)

    def expire(self, now: float) -> None:
        """Forget expired routes."""
        self.routes.expire(now)

    def stats(self) -> StoreStats:
        """Routes held; nothing on disk."""
        return StoreStats(
            routes=len(self.routes),
            deliveries=0,
            parts=0,
            windows=0,
            size_bytes=0,
            commits=0,
            writes=0,
            evicted=self.routes.evicted,
        )

    def close(self) -> Deferred[None]:
        """Nothing to write."""
        return succeed(None)
