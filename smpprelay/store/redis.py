"""The redis backend: the relay's state in one Redis that several relay instances share.

What lives where (every key starts with ``store.key_prefix``, "smpprelay:" by default):

- ``{p}secret``: the dedup digest's key, 32 random bytes, set once by whichever instance comes
  first (``SET NX``) and read by every one; never expires. Until an instance has read it, its
  store is not `writable` ("redis: loading the shared secret").
- ``{p}r:{upstream}:{message_id}``: one receipt route, a compact packed value (its expiry,
  account, the id its app was given, the operator's exact id), ``PX`` = ``receipts.map_ttl``;
  a final receipt cuts it back to ``receipts.final_grace``.
- ``{p}a:{app_message_id}``: the routes whose app was given that relay-issued id (a sorted set
  scored by when each was added, oldest first), with the same TTL. Written with its route in one
  script: one round trip per accepted submit.
- ``{p}p:``: held concatenated parts, a hash by ``app_message_id`` (the single-instance
  interface; in scale-out the shared concat rule assembles parts itself).
- ``{p}q:{account}``: held receipts and MO, written by `RedisDeliveries`.

`load` does nothing and returns an empty `Loaded`: it runs before the reactor, so it may do no
network I/O, and nothing needs putting back: routes stay in Redis, held deliveries are handed
over by `RedisDeliveries`, parts are assembled by the shared concat rule and the rules' windows
live in Redis (`save_windows` succeeds at once). The tests read what a store holds with the
asynchronous `loaded`.

What the operator runs Redis with decides what "durable" means: ``appendonly yes`` with
``appendfsync always`` keeps the promise of sqlite's ``sync: full`` (a write is acknowledged
only once it is on disk); ``appendfsync everysec`` loses up to a second at a power cut. Redis
removes routes by TTL, so ``receipts.map_max`` does not apply; ``maxmemory-policy`` must be
``noeviction``: a full Redis then refuses writes and submits get ``ESME_RMSGQFUL`` instead of
acknowledged routes being evicted silently. The scripts read keys they are not given
(`find_app_id` reads the routes its index names): one Redis (with replicas, Sentinel), not a
Redis Cluster.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.store import (
    HeldPart,
    Loaded,
    Mapped,
    RouteDone,
    StoreStats,
    StoreUnavailable,
    WindowEntry,
)
from smpprelay.store.redis_deliveries import RedisDeliveries
from smpprelay.store.redis_link import RedisLink, Script
from smpprelay.store.tables import Held, Route

__all__ = ["RedisStore"]

SECRET_BYTES = 32
# How often the numbers `stats` returns are read from Redis (off the hot path), and how often
# the routes are counted (exactly up to about SCAN_CALLS * SCAN_COUNT keys, else estimated).
STATS_INTERVAL = 10.0
COUNT_INTERVAL = 60.0
SCAN_COUNT = 1000  # keys a SCAN looks at: each call is short for Redis
SCAN_CALLS = 20

# One round trip per accepted submit: the route and, with an app id, its index entry.
ADD_ROUTE = Script(
    "add_route",
    """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if #KEYS > 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
""",
)

# Cut a route back to the grace period, unless it would expire sooner anyway. A route's value
# starts with its expiry (a float as text) and ':'; times stay text (Lua returns integers).
ROUTE_FINAL = Script(
    "route_final",
    """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local colon = string.find(value, ':', 1, true)
if tonumber(ARGV[1]) >= tonumber(string.sub(value, 1, colon - 1)) then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. string.sub(value, colon), 'PX', ARGV[2])
return 1
""",
)

# The routes an app id names, oldest first, with their values (gone ones skipped).
FIND_APP_ID = Script(
    "find_app_id",
    """
local out = {}
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local value = redis.call('GET', key)
  if value then
    out[#out + 1] = key
    out[#out + 1] = value
  end
end
return out
""",
)

# The shared secret: the first instance's wins.
SECRET = Script(
    "secret",
    """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
""",
)

SCRIPTS = (ADD_ROUTE, FIND_APP_ID, SECRET)

_LENGTH = struct.Struct(">I")


def pack(fields: Sequence[bytes]) -> bytes:
    """Length-prefixed fields: any octets, nothing escaped."""
    return b"".join(_LENGTH.pack(len(field)) + field for field in fields)


def unpack(data: bytes) -> list[bytes]:
    """The fields `pack` made."""
    fields = []
    at = 0
    while at < len(data):
        (size,) = _LENGTH.unpack_from(data, at)
        at += 4
        fields.append(data[at : at + size])
        at += size
    return fields


def _optional(value: bytes | None) -> bytes:
    # "" is None, "=..." a value (an empty value too).
    return b"" if value is None else b"=" + value


def _unoptional(field: bytes) -> bytes | None:
    return field[1:] if field else None


def route_value(expires: float, route: Route) -> bytes:
    """A route as stored: its expiry first (Lua reads it), then the packed fields."""
    operator_id = None if route.operator_id is None else route.operator_id.encode()
    fields = (route.account.encode(), _optional(route.app_message_id), _optional(operator_id))
    return repr(expires).encode() + b":" + pack(fields)


def parse_route(value: bytes) -> Route:
    """The `Route` a stored value holds."""
    expires, _, rest = value.partition(b":")
    account, app_id, operator_id = unpack(rest)
    exact = _unoptional(operator_id)
    return Route(
        account.decode(),
        _unoptional(app_id),
        float(expires),
        None if exact is None else exact.decode(),
    )


def part_value(part: HeldPart) -> bytes:
    """A held part, packed."""
    return pack(
        (
            part.account.encode(),
            part.frame,
            b"1" if part.app_iso else b"",
            repr(part.first).encode(),
            repr(part.arrived).encode(),
            part.receipt_as,
        )
    )


def parse_part(app_message_id: bytes, value: bytes) -> HeldPart:
    """The `HeldPart` a packed value holds."""
    account, frame, iso, first, arrived, receipt_as = unpack(value)
    return HeldPart(
        app_message_id,
        account.decode(),
        frame,
        bool(iso),
        float(first),
        float(arrived),
        receipt_as,
    )


class RedisStore:
    """`smpprelay.store.Store` on a shared Redis (see the module docstring for the keys)."""

    log = Logger()
    durable = True

    def __init__(
        self,
        link: RedisLink,
        clock: IReactorTime,
        prefix: str = "smpprelay:",
        route_ttl: float = 172_800.0,
        final_grace: float = 300.0,
        stats_interval: float = STATS_INTERVAL,
        count_interval: float = COUNT_INTERVAL,
    ) -> None:
        self.link = link
        self.clock = clock
        self.prefix = prefix
        self.route_ttl = route_ttl
        self.final_grace = final_grace
        self.stats_interval = stats_interval
        self.count_interval = count_interval
        self._counted_at: float | None = None
        self.deliveries = RedisDeliveries(link, prefix, clock)
        # The dedup digest's key every instance shares; b"" until read from Redis.
        self.secret = b""
        self._loading: Deferred[None] | None = None
        self._retry: Any = None
        self._refresher: LoopingCall | None = None
        self._refreshing = False
        self._stats = StoreStats(0, 0, 0, 0, 0, 0, 0, 0)
        self.route_finals_failed = 0
        link.on_change.append(self._link_changed)

    # --- state ------------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """True while Redis answers and the shared secret is known."""
        return self.link.writable and bool(self.secret)

    @property
    def problem(self) -> str:
        """Why the store cannot be used ("" while it can)."""
        problem = self.link.problem
        if problem:
            return problem if problem.startswith("redis") else f"redis: {problem}"
        return "" if self.secret else "redis: loading the shared secret"

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect; the secret is read as soon as Redis answers, and the stats every so often."""
        self.link.start()
        self._refresher = LoopingCall(self._refresh_soon)
        self._refresher.clock = self.clock
        self._refresher.start(self.stats_interval, now=False)

    def load(self) -> Loaded:
        """Nothing to put back (see the module docstring); no I/O before the reactor runs."""
        return Loaded()

    async def loaded(self) -> Loaded:
        """What Redis holds now that `load` would have put back in a single-process store: the
        held parts (in the order they arrived) and the number of routes."""
        held = await self.link.call("HGETALL", self._key("p:"))
        parts = [parse_part(held[n], held[n + 1]) for n in range(0, len(held), 2)]
        parts.sort(key=lambda part: part.arrived)
        return Loaded(parts=parts, routes=await self._count_routes())

    def close(self) -> Deferred[None]:
        """Stop the stats and close the connection (every write was acknowledged by Redis)."""
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._link_changed in self.link.on_change:
            self.link.on_change.remove(self._link_changed)
        return self.link.stop()

    def _link_changed(self, up: bool) -> None:
        if not up:
            return
        # A Redis that was restarted or failed over knows no script: load them now rather than
        # have the first submits pay a NOSCRIPT error and a second round trip each.
        for script in SCRIPTS:
            self.link.call("SCRIPT", "LOAD", script.source).addErrback(self._not_loaded, script)
        if not self.secret:
            self._load_secret()

    def _not_loaded(self, reason: Failure, script: Script) -> None:
        # Not fatal: `RedisLink.run` sends the whole script when Redis does not know it.
        self.log.warn("redis: script {name} not loaded ({why})", name=script.name, why=reason.value)

    def _load_secret(self) -> None:
        if self._loading is not None or self.secret:
            return

        def got(secret: bytes) -> None:
            self.secret = secret
            self.log.info("redis: the shared secret is loaded")

        def failed(reason: Failure) -> None:
            self.log.warn("redis: cannot load the shared secret ({why})", why=reason.value)
            self._retry = self.clock.callLater(1.0, self._load_secret)

        def finished(result: object) -> None:
            self._loading = None

        loading = self.link.run(SECRET, [self._key("secret")], [os.urandom(SECRET_BYTES)])
        self._loading = loading.addCallbacks(got, failed).addBoth(finished)

    # --- routes -----------------------------------------------------------------------------

    def _key(self, rest: str | bytes) -> bytes:
        tail = rest if isinstance(rest, bytes) else rest.encode()
        return self.prefix.encode() + tail

    def _route_key(self, upstream: str, message_id: str) -> bytes:
        return self._key(f"r:{upstream}:{message_id}")

    def add_route(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None = None,
    ) -> Deferred[None]:
        """Write the route (and its app id's index entry) in one script; fires once Redis has
        both (with ``appendfsync always``: on its disk)."""
        expires = now + self.route_ttl
        value = route_value(expires, Route(account, app_message_id, expires, operator_id))
        keys = [self._route_key(upstream, message_id)]
        args: list[bytes | str | int] = [value, max(1, int(self.route_ttl * 1000))]
        if app_message_id is not None:
            keys.append(self._key(b"a:" + app_message_id))
            args.append(repr(now))
        return self.link.run(ADD_ROUTE, keys, args).addCallback(lambda _: None)

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
        """`add_route`, reporting to ``done`` (the link answers in call order)."""

        def failed(reason: Failure) -> None:
            error = reason.value
            done(error if isinstance(error, Exception) else StoreUnavailable(str(error)))

        written = self.add_route(upstream, message_id, account, app_message_id, now, operator_id)
        written.addCallbacks(lambda _: done(None), failed)

    def find_route(self, upstream: str, message_id: str, now: float) -> Deferred[Route | None]:
        """The route, if Redis has it and it has not expired by ``now``."""

        def found(value: bytes | None) -> Route | None:
            if value is None:
                return None
            route = parse_route(value)
            return route if route.expires > now else None

        return self.link.call("GET", self._route_key(upstream, message_id)).addCallback(found)

    def find_app_id(self, app_message_id: bytes, now: float) -> Deferred[list[Mapped]]:
        """The live routes whose app was given ``app_message_id``, oldest first (a route since
        replaced under another app id is left out)."""
        start = len(self._key("r:"))

        def found(pairs: list[bytes]) -> list[Mapped]:
            mapped = []
            for n in range(0, len(pairs), 2):
                route = parse_route(pairs[n + 1])
                if route.app_message_id != app_message_id or route.expires <= now:
                    continue
                upstream, _, message_id = pairs[n][start:].decode().partition(":")
                mapped.append(Mapped(upstream, route.operator_id or message_id, route))
            return mapped

        index = self._key(b"a:" + app_message_id)
        return self.link.run(FIND_APP_ID, [index], []).addCallback(found)

    def route_final(self, upstream: str, message_id: str, now: float) -> None:
        """Keep the route ``final_grace`` seconds more at most; fire-and-forget (a failure
        leaves it to its own TTL, logged)."""
        args: list[bytes | str | int] = [
            repr(now + self.final_grace),
            max(1, int(self.final_grace * 1000)),
        ]
        # EVAL, not EVALSHA: a NOSCRIPT retry would let a find sent after this one overtake it.
        key = self._route_key(upstream, message_id)
        done = self.link.call("EVAL", ROUTE_FINAL.source, 1, key, *args)
        done.addErrback(self._not_cut_back, message_id)

    def _not_cut_back(self, reason: Failure, message_id: str) -> None:
        self.route_finals_failed += 1
        self.log.warn(
            "redis: route {message_id} not cut back to the grace period ({why}); it expires "
            "with its TTL",
            message_id=message_id,
            why=reason.value,
        )

    # --- held deliveries and parts ----------------------------------------------------------

    def hold_delivery(self, item: Held) -> Deferred[None]:
        """Keep ``item`` where every instance sees it (sets ``item.key``)."""
        return self.deliveries.hold(item)

    def delivered(self, item: Held) -> None:
        """``item`` reached its app (or expired): forget it."""
        self.deliveries.done(item)

    def hold_part(self, part: HeldPart) -> Deferred[None]:
        """Keep a part answered ``ESME_ROK``."""
        key = self._key("p:")
        value = part_value(part)
        return self.link.call("HSET", key, part.app_message_id, value).addCallback(lambda _: None)

    def replace_part(self, part: HeldPart) -> Deferred[None]:
        """Keep a held part's new frame (the same field, overwritten)."""
        return self.hold_part(part)

    def parts_done(self, app_message_ids: Sequence[bytes]) -> None:
        """Forget these parts; fire-and-forget (one left behind is sent at most once more)."""
        if not app_message_ids:
            return
        done = self.link.call("HDEL", self._key("p:"), *app_message_ids)
        done.addErrback(
            lambda reason: self.log.warn("redis: held parts not forgotten ({why})", why=reason)
        )

    def save_windows(self, entries: Sequence[WindowEntry] | bytes) -> Deferred[None]:
        """The shared rules keep their windows in Redis already: nothing to write."""
        return succeed(None)

    # --- upkeep -----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Redis expires keys by their TTL itself: nothing to do here."""

    def stats(self) -> StoreStats:
        """The numbers last read from Redis (every ``stats_interval`` seconds)."""
        return self._stats

    def _refresh_soon(self) -> None:
        if self._refreshing or not self.link.writable:
            return
        self._refreshing = True

        def failed(reason: Failure) -> None:
            self.log.warn("redis: cannot read the store's numbers ({why})", why=reason.value)

        def finished(result: object) -> None:
            self._refreshing = False

        now = self.clock.seconds()
        count = self._counted_at is None or now - self._counted_at >= self.count_interval
        if count:
            self._counted_at = now
        refreshed = Deferred.fromCoroutine(self.refresh(count_routes=count))
        refreshed.addErrback(failed).addBoth(finished)

    async def refresh(self, count_routes: bool = True) -> StoreStats:
        """Read the numbers `stats` returns: held parts, held deliveries (this instance's),
        Redis's ``used_memory`` and, with ``count_routes``, the routes (`_count_routes`)."""
        routes = await self._count_routes() if count_routes else self._stats.routes
        parts = await self.link.call("HLEN", self._key("p:"))
        info = await self.link.call("INFO", "memory")
        used = 0
        for line in bytes(info).splitlines():
            if line.startswith(b"used_memory:"):
                used = int(line.partition(b":")[2])
        link = self.link.stats
        self._stats = StoreStats(
            routes=routes,
            deliveries=self.deliveries.pending(),
            parts=int(parts),
            windows=0,
            size_bytes=used,
            commits=link.calls,
            writes=link.calls,
            evicted=0,
        )
        return self._stats

    async def _count_routes(self) -> int:
        """The routes in Redis: counted exactly by SCAN when the database is small, else
        estimated from a sample of ``SCAN_CALLS`` calls (their share of keys times DBSIZE), so a
        count never costs Redis more than a few thousand keys looked at."""
        prefix = self._key("r:")
        cursor: bytes | int = 0
        routes = seen = 0
        for _ in range(SCAN_CALLS):
            cursor, keys = await self.link.call("SCAN", cursor, "COUNT", SCAN_COUNT)
            seen += len(keys)
            routes += sum(1 for key in keys if key.startswith(prefix))
            if int(cursor) == 0:
                return routes
        total = int(await self.link.call("DBSIZE"))
        return round(total * routes / seen) if seen else 0
