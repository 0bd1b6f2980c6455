"""What every backend of `smpprelay.store.Store` must do, run against each (memory, sqlite,
redis); the durability tests run for the durable ones.

Redis differs in two ways the tests allow for: `RedisStore.load` puts nothing back (everything
stays in Redis), so what a reopened store holds is read with its asynchronous ``loaded``; and
its `stats` are read from Redis every few seconds, so the tests read them fresh (`stats_of`).
Redis removes routes by their real TTL, not at ``map_max`` nor at an ``expire(now)`` with a
made-up ``now``: those two row counts are not asserted for it (a find still honours ``now``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from smpprelay.store import (
    DEFAULT_UPSTREAM,
    HeldPart,
    Mapped,
    Store,
    StoreStats,
    StoreUnavailable,
    WindowEntry,
)
from smpprelay.store.memory import MemoryStore
from smpprelay.store.redis import RedisStore
from smpprelay.store.redis_link import RedisLink
from smpprelay.store.sqlite import SqliteStore
from smpprelay.store.tables import Held, ReceiptRoutes, Route
from smpprelay.store.window_segments import section

TTL = 100.0
GRACE = 5.0
Make = Callable[..., Store]


@pytest_twisted.async_yield_fixture(params=["memory", "sqlite", "redis"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """Makes a store of the parametrized kind; the same file each time for sqlite and the same
    Redis server for redis (so a second store is the first reopened); closes them all at the
    end."""
    from twisted.internet import reactor

    made: list[Store] = []
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""

    def factory(map_max: int = 1000, max_size: int | None = None) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(ReceiptRoutes(TTL, map_max), GRACE)
        elif request.param == "redis":
            link = RedisLink(url, reactor, reply_timeout=2.0, probe_interval=0.05)
            store = RedisStore(link, reactor, "test:", route_ttl=TTL, final_grace=GRACE)
        else:
            store = SqliteStore(
                str(tmp_path / "store.db"),
                reactor,
                route_ttl=TTL,
                final_grace=GRACE,
                map_max=map_max,
                max_size=max_size,
            )
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


async def started(store: Store) -> Store:
    """``store`` loaded and started, and (a remote one) answering."""
    from twisted.internet import reactor

    store.load()
    store.start()
    for _ in range(250):
        if store.writable:
            break
        await deferLater(reactor, 0.02)
    assert store.writable, store.problem
    return store


async def stats_of(store: Store) -> StoreStats:
    """The store's numbers, read fresh from a remote store."""
    if isinstance(store, RedisStore):
        return await store.refresh()
    return store.stats()


@pytest_twisted.ensureDeferred
async def test_a_route_is_found_and_a_new_one_replaces_it(make: Make) -> None:
    store = await started(make())
    await store.add_route(DEFAULT_UPSTREAM, "abc", "alice", None, 10.0)
    assert await store.find_route(DEFAULT_UPSTREAM, "abc", 11.0) == Route("alice", None, 110.0)
    await store.add_route(DEFAULT_UPSTREAM, "abc", "bob", b"app-1", 20.0)
    assert await store.find_route(DEFAULT_UPSTREAM, "abc", 21.0) == Route("bob", b"app-1", 120.0)
    assert await store.find_route(DEFAULT_UPSTREAM, "unknown", 21.0) is None
    assert (await stats_of(store)).routes == 1


@pytest_twisted.ensureDeferred
async def test_routes_are_keyed_per_upstream(make: Make) -> None:
    store = await started(make())
    await store.add_route("east", "1", "alice", None, 0.0)
    await store.add_route("west", "1", "bob", None, 0.0)
    assert await store.find_route("east", "1", 1.0) == Route("alice", None, TTL)
    assert await store.find_route("west", "1", 1.0) == Route("bob", None, TTL)
    assert await store.find_route(DEFAULT_UPSTREAM, "1", 1.0) is None
    assert await store.find_route("north", "1", 1.0) is None


@pytest_twisted.ensureDeferred
async def test_a_route_expires_after_its_ttl(make: Make) -> None:
    store = await started(make())
    await store.add_route(DEFAULT_UPSTREAM, "a", "alice", None, 0.0)
    await store.add_route(DEFAULT_UPSTREAM, "b", "alice", None, 50.0)
    assert await store.find_route(DEFAULT_UPSTREAM, "a", TTL - 0.5) is not None
    assert await store.find_route(DEFAULT_UPSTREAM, "a", TTL) is None  # gone at its expiry
    store.expire(TTL + 1)
    # A find after expire() runs after it (sqlite: the same or a later batch).
    assert await store.find_route(DEFAULT_UPSTREAM, "b", TTL + 1) is not None
    if not isinstance(store, RedisStore):  # Redis expires by the real clock
        assert (await stats_of(store)).routes == 1


@pytest_twisted.ensureDeferred
async def test_a_final_receipt_shortens_a_route_to_the_grace_period(make: Make) -> None:
    store = await started(make())
    await store.add_route(DEFAULT_UPSTREAM, "a", "alice", None, 0.0)
    await store.add_route(DEFAULT_UPSTREAM, "b", "alice", None, 0.0)
    store.route_final(DEFAULT_UPSTREAM, "a", 10.0)
    store.route_final(DEFAULT_UPSTREAM, "b", TTL - 1)  # the grace would outlive it: unchanged
    store.route_final(DEFAULT_UPSTREAM, "unknown", 10.0)  # no route: nothing happens
    assert await store.find_route(DEFAULT_UPSTREAM, "a", 14.0) == Route("alice", None, 15.0)
    assert await store.find_route(DEFAULT_UPSTREAM, "a", 15.0) is None
    assert await store.find_route(DEFAULT_UPSTREAM, "b", 50.0) == Route("alice", None, TTL)


@pytest_twisted.ensureDeferred
async def test_routes_past_map_max_give_way_oldest_first(make: Make) -> None:
    """The interface's promise: after an ``expire``, no more than ``map_max`` routes are held,
    the ones that would have expired first went, and ``evicted`` counts them (memory evicts at
    the add already, sqlite at the expire)."""
    store = await started(make(map_max=5))
    if isinstance(store, RedisStore):
        pytest.skip(
            "Redis removes routes by TTL; map_max does not apply (maxmemory-policy "
            "noeviction makes a full Redis refuse writes instead)"
        )
    for n in range(8):
        await store.add_route(DEFAULT_UPSTREAM, f"id{n}", "alice", None, float(n))
    store.expire(0.0)  # nothing has expired
    found = [await store.find_route(DEFAULT_UPSTREAM, f"id{n}", 0.0) for n in range(8)]
    assert [route is not None for route in found] == [False] * 3 + [True] * 5
    stats = await stats_of(store)
    assert (stats.routes, stats.evicted) == (5, 3)


@pytest_twisted.ensureDeferred
async def test_the_other_calls_succeed_and_stats_count_routes(make: Make) -> None:
    store = await started(make())
    item = Held("receipt", "alice", b"frame", 1e12)
    await store.hold_delivery(item)
    store.delivered(item)
    await store.hold_part(HeldPart(b"p1", "alice", b"frame", False, 1.0, 1.0))
    store.parts_done([b"p1"])
    await store.save_windows([WindowEntry("dedup", b"k" * 12, 1.0, 1e12, 0, b"m1")])
    await store.save_windows(section("flood", 30.0, [b"447700900123"], [1.0], [2]))
    await store.add_route(DEFAULT_UPSTREAM, "a", "alice", None, 0.0)
    stats = await stats_of(store)
    assert (stats.routes, stats.evicted) == (1, 0)
    assert store.writable
    assert store.problem == ""
    assert len(store.secret) >= 16


# --- add_route_cb: the route write without a Deferred -----------------------------------------


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``check`` on the real reactor until it holds."""
    from twisted.internet import reactor

    for _ in range(int(within / 0.01)):
        if check():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError(f"not within {within:.0f} s")


def readable_elsewhere(store: Store, message_id: str) -> bool | None:
    """Whether another reader sees the route now (None: a remote store, not readable without
    waiting: the test reads it through a second store afterwards)."""
    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM routes WHERE message_id = ?", (message_id,)
            ).fetchone()
        return bool(row[0])
    if isinstance(store, MemoryStore):
        return store.routes.get(message_id, 1.0) is not None
    return None


@pytest_twisted.ensureDeferred
async def test_add_route_cb_reports_once_another_connection_can_read_the_route(
    make: Make,
) -> None:
    store = await started(make())
    reported: list[tuple[Exception | None, bool | None]] = []

    def done(error: Exception | None) -> None:
        # Read at the very moment the store reports: the row must be there for others already.
        reported.append((error, readable_elsewhere(store, "cb1")))

    store.add_route_cb(DEFAULT_UPSTREAM, "cb1", "alice", b"A1", 0.0, "Cb1", done)
    await until(lambda: bool(reported))
    assert reported[0][0] is None
    assert reported[0][1] is not False
    if isinstance(store, RedisStore):  # another connection, after Redis answered the write
        other = await started(make())
        assert await other.find_route(DEFAULT_UPSTREAM, "cb1", 1.0) == Route(
            "alice", b"A1", TTL, "Cb1"
        )
    assert await store.find_route(DEFAULT_UPSTREAM, "cb1", 1.0) == Route("alice", b"A1", TTL, "Cb1")
    assert await store.find_app_id(b"A1", 1.0) == [
        Mapped(DEFAULT_UPSTREAM, "Cb1", Route("alice", b"A1", TTL, "Cb1"))
    ]
    from twisted.internet import reactor

    await deferLater(reactor, 0.05)
    assert len(reported) == 1  # once


@pytest_twisted.ensureDeferred
async def test_add_route_cb_reports_in_call_order_with_add_route(make: Make) -> None:
    store = await started(make())
    order: list[int] = []

    def report(n: int) -> Callable[[Exception | None], None]:
        def done(error: Exception | None) -> None:
            assert error is None
            order.append(n)

        return done

    for n in range(200):
        if n % 10 == 5:  # the Deferred form, queued among them, keeps its place
            added = store.add_route(DEFAULT_UPSTREAM, f"o{n}", "alice", None, 0.0)
            added.addCallback(report(n))
        else:
            store.add_route_cb(DEFAULT_UPSTREAM, f"o{n}", "alice", None, 0.0, None, report(n))
    await until(lambda: len(order) == 200)
    assert order == list(range(200))
    assert (await stats_of(store)).routes == 200


@pytest_twisted.ensureDeferred
async def test_add_route_cb_reports_a_write_failure(
    make: Make, request: pytest.FixtureRequest
) -> None:
    store = await started(make(max_size=160 * 1024))
    if isinstance(store, MemoryStore):
        pytest.skip("memory cannot fail to write")
    reported: list[tuple[str, Exception | None]] = []

    def add(message_id: str) -> Deferred[Exception | None]:
        reported_now: Deferred[Exception | None] = Deferred()

        def done(error: Exception | None) -> None:
            reported.append((message_id, error))
            reported_now.callback(error)

        store.add_route_cb(DEFAULT_UPSTREAM, message_id, "alice", b"x" * 1000, 0.0, None, done)
        return reported_now

    if isinstance(store, RedisStore):
        # Killed: the write (sent, or refused once the link knows) is reported failed.
        request.getfixturevalue("redis_server").stop(kill=True)
        add("lost")
    else:
        # Past max_size the commit fails ("database or disk is full") and is rolled back.
        for n in range(1000):
            if await add(f"fill{n}") is not None:
                break
    await until(lambda: bool(reported) and reported[-1][1] is not None)
    failed, error = reported[-1]
    assert isinstance(error, StoreUnavailable)
    assert all(error is None for _, error in reported[:-1])
    await until(lambda: not store.writable)
    if isinstance(store, SqliteStore):
        assert await store.find_route(DEFAULT_UPSTREAM, failed, 0.0) is None  # rolled back
        assert readable_elsewhere(store, failed) is False
    # Known not to write: reported at once, before the call returns.
    reported.clear()
    add("refused")
    assert len(reported) == 1
    assert isinstance(reported[0][1], StoreUnavailable)


@pytest.mark.logs_errors  # the raising callback is logged, as it must be
@pytest_twisted.ensureDeferred
async def test_add_route_cb_one_hop_to_the_reactor_per_batch(
    make: Make, logged_errors: list[Any]
) -> None:
    """sqlite: the writer's batch comes back with one callFromThread, which calls every
    ``done`` in call order; one that raises is logged and the others still hear."""
    store = make()
    if not isinstance(store, SqliteStore):
        pytest.skip("the writer thread is sqlite's")
    real = store.reactor
    hops: list[Any] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def callFromThread(self, f: Any, *args: Any) -> None:
            hops.append(f)
            real.callFromThread(f, *args)

    store.reactor = Counting()
    store.load()
    order: list[int] = []

    def report(n: int) -> Callable[[Exception | None], None]:
        def done(error: Exception | None) -> None:
            assert error is None
            order.append(n)
            if n == 3:
                raise RuntimeError("a caller's bug")

        return done

    # Queued before the writer starts: it takes them all in its first batch.
    for n in range(50):
        store.add_route_cb(DEFAULT_UPSTREAM, f"b{n}", "alice", None, 0.0, None, report(n))
    store.start()
    await until(lambda: len(order) == 50)
    assert order == list(range(50))
    assert len(hops) == 1
    assert [event["log_failure"].value.args for event in logged_errors] == [("a caller's bug",)]
    stats = store.stats()
    assert (stats.commits, stats.writes, stats.routes) == (1, 50, 50)


# --- the id map of query_sm, cancel_sm, replace_sm ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_route_keeps_the_operators_exact_id(make: Make) -> None:
    store = await started(make())
    await store.add_route(DEFAULT_UPSTREAM, "ABC", "alice", None, 0.0, "0abc")
    await store.add_route(DEFAULT_UPSTREAM, "DEF", "alice", None, 0.0)
    assert await store.find_route(DEFAULT_UPSTREAM, "ABC", 1.0) == Route("alice", None, TTL, "0abc")
    assert (await store.find_route(DEFAULT_UPSTREAM, "DEF", 1.0)) == Route("alice", None, TTL)


@pytest_twisted.ensureDeferred
async def test_routes_are_found_by_the_id_their_app_was_given(make: Make) -> None:
    """Several routes may share an app id (a submit_multi's messages): all live ones, oldest
    first, with the operator's exact id; a route replaced under another app id leaves it."""
    store = await started(make())
    await store.add_route(DEFAULT_UPSTREAM, "OP1", "alice", b"R1", 0.0)
    await store.add_route("east", "OP2", "alice", b"R1", 1.0, "op2")
    await store.add_route(DEFAULT_UPSTREAM, "OP3", "bob", b"R2", 2.0)
    await store.add_route(DEFAULT_UPSTREAM, "OP4", "alice", None, 3.0)
    assert await store.find_app_id(b"R1", 5.0) == [
        Mapped(DEFAULT_UPSTREAM, "OP1", Route("alice", b"R1", TTL)),
        Mapped("east", "op2", Route("alice", b"R1", TTL + 1, "op2")),
    ]
    assert await store.find_app_id(b"R1", TTL + 0.5) == [
        Mapped("east", "op2", Route("alice", b"R1", TTL + 1, "op2"))
    ]
    assert await store.find_app_id(b"OP4", 5.0) == []  # by app id only
    assert await store.find_app_id(b"unknown", 5.0) == []
    await store.add_route(DEFAULT_UPSTREAM, "OP3", "bob", b"R3", 4.0)
    assert await store.find_app_id(b"R2", 5.0) == []
    store.expire(TTL + 2)  # the older routes go, and with them their app ids
    assert await store.find_app_id(b"R3", TTL + 3) == [
        Mapped(DEFAULT_UPSTREAM, "OP3", Route("bob", b"R3", TTL + 4))
    ]


@pytest_twisted.ensureDeferred
async def test_a_held_part_replaced_is_loaded_with_its_new_frame(make: Make) -> None:
    store = await started(make())
    part = HeldPart(b"p1", "alice", b"old", False, 1.0, 1.0)
    await store.hold_part(part)
    await store.replace_part(HeldPart(b"p1", "alice", b"new", False, 1.0, 2.0))
    assert (await stats_of(store)).parts == (1 if store.durable else 0)
    if not store.durable:
        return
    await store.close()
    again = make()
    if isinstance(again, RedisStore):
        await started(again)
        loaded = await again.loaded()
    else:
        loaded = again.load()
    assert [(p.app_message_id, p.frame) for p in loaded.parts] == [(b"p1", b"new")]


# --- durable backends ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_what_was_written_is_loaded_after_a_restart(make: Make) -> None:
    store = await started(make())
    if not store.durable:
        pytest.skip("not a durable backend")
    if isinstance(store, RedisStore):
        pytest.skip(
            "nothing is loaded from Redis (it stays there): tests/store/test_redis_store.py"
        )
    now = 1_000.0
    held = [Held("receipt", "alice", b"r%d" % n, now + 100 + n) for n in range(3)]
    expired = Held("mo", "bob", b"old", now - 1)
    for item in [held[0], expired, held[1], held[2]]:
        await store.hold_delivery(item)
    store.delivered(held[1])
    parts = [
        HeldPart(b"p%d" % n, "alice", b"f%d" % n, n == 1, 1.0, 1.0 + n, b"M%d" % n if n else b"")
        for n in range(3)
    ]
    for part in parts:
        await store.hold_part(part)
    store.parts_done([parts[0].app_message_id])
    await store.save_windows(
        [
            WindowEntry("flood", b"447700900123", now - 5, now + 60, 3),
            WindowEntry("dedup", b"d" * 12, now - 2, now + 60, 0, b"m1"),
            WindowEntry("dedup", b"e" * 12, now - 100, now - 1, 0, b"m2"),  # expired
        ]
    )
    await store.save_windows([WindowEntry("flood", b"447700900123", now - 1, now + 60, 4)])
    # Packed, as the relay hands them (smpprelay.store.window_segments).
    await store.save_windows(section("dedup", 61.5, [b"f" * 12], [now - 1.5], None, [b"m3"], 12))
    await store.add_route(DEFAULT_UPSTREAM, "op1", "alice", b"app1", now)
    await store.add_route("east", "op2", "bob", None, now)
    secret = store.secret
    await store.close()

    again = make()
    assert again.secret == secret
    loaded = again.load(now) if isinstance(again, SqliteStore) else again.load()
    assert [(d.key, d.frame) for d in loaded.deliveries] == [
        (held[0].key, b"r0"),
        (held[2].key, b"r2"),
    ]
    assert loaded.deliveries[0] == held[0]
    assert loaded.parts == parts[1:]
    assert loaded.windows == [
        WindowEntry("dedup", b"d" * 12, now - 2, now + 60, 0, b"m1"),
        WindowEntry("dedup", b"f" * 12, now - 1.5, now + 60, 0, b"m3"),
        WindowEntry("flood", b"447700900123", now - 1, now + 60, 4),
    ]
    assert loaded.routes == 2
    again.start()
    assert await again.find_route(DEFAULT_UPSTREAM, "op1", now) == Route(
        "alice", b"app1", now + TTL
    )
    assert await again.find_route("east", "op2", now) == Route("bob", None, now + TTL)
    fresh = Held("mo", "carol", b"new", now + 100)
    await again.hold_delivery(fresh)
    assert fresh.key > max(item.key for item in held)  # keys go on from the file's
    stats = again.stats()
    # Window entries are kept per write-behind: the flood key's older streak and the ended
    # dedup entry stay in their segment until it expires (the load skipped both).
    assert (stats.routes, stats.deliveries, stats.parts, stats.windows) == (2, 4, 2, 5)
    assert stats.size_bytes > 0


@pytest_twisted.ensureDeferred
async def test_a_store_that_was_never_started_closes(make: Make) -> None:
    store = make()
    await store.close()
    if isinstance(store, SqliteStore):
        assert os.path.exists(store.path)
