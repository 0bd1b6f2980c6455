"""The redis store against a real redis-server: what several instances share (routes, the
secret), an outage (fail fast, say why, recover by itself, nothing acknowledged lost), and its
metrics. The interface every backend keeps is tests/store/test_store_interface.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.task import deferLater

from smpprelay.config import parse_config
from smpprelay.metrics import Metrics
from smpprelay.state import StoreService, open_store
from smpprelay.store import DEFAULT_UPSTREAM, HeldPart, Mapped, StoreUnavailable
from smpprelay.store.redis import RedisStore, parse_part, parse_route, part_value, route_value
from smpprelay.store.redis_link import RedisLink
from smpprelay.store.tables import Held, Route
from tests.fakes.redis_server import RedisServer

TTL = 3600.0
GRACE = 5.0
Make = Callable[[], RedisStore]


@pytest_twisted.async_yield_fixture
async def make(redis_server: RedisServer) -> AsyncIterator[Make]:
    """Makes RedisStores on the test's redis-server (each its own connection, like separate
    relay instances); closes them all at the end."""
    made: list[RedisStore] = []

    def factory() -> RedisStore:
        link = RedisLink(redis_server.url, reactor, reply_timeout=1.0, probe_interval=0.05)
        store = RedisStore(link, reactor, "t:", route_ttl=TTL, final_grace=GRACE)
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


async def until(check: Callable[[], bool], within: float = 15.0) -> None:
    """Poll ``check`` on the real reactor until it holds (a failed assertion after ``within``)."""
    for _ in range(int(within / 0.02)):
        if check():
            return
        await deferLater(reactor, 0.02)
    raise AssertionError(f"not within {within:.0f} s")


async def started(store: RedisStore) -> RedisStore:
    store.start()
    await until(lambda: store.writable)
    return store


def test_values_pack_and_unpack_exactly() -> None:
    for route in (
        Route("alice", None, 1_733_000_000.123456),
        Route("bob", b"", 1.5, ""),
        Route("carol", b"id:with\x00odd\xffbytes", 2e9, "op:1"),
    ):
        assert parse_route(route_value(route.expires, route)) == route
    part = HeldPart(b"p\x00", "alice", b"\x00frame\xff", True, 0.1, 1_733_000_000.7, b"M")
    assert parse_part(b"p\x00", part_value(part)) == part


@pytest_twisted.ensureDeferred
async def test_not_writable_until_the_shared_secret_is_loaded(make: Make) -> None:
    store = make()
    assert not store.writable
    assert store.secret == b""
    assert store.load().routes == 0  # no I/O before the reactor runs: nothing to put back
    await started(store)
    assert len(store.secret) == 32
    assert store.problem == ""


@pytest_twisted.ensureDeferred
async def test_two_instances_share_routes_and_the_secret(make: Make) -> None:
    first, second = await started(make()), await started(make())
    assert first.secret == second.secret
    await first.add_route(DEFAULT_UPSTREAM, "op1", "alice", b"R1", 10.0)
    await second.add_route("east", "op2", "alice", b"R1", 11.0, "OP2")
    assert await second.find_route(DEFAULT_UPSTREAM, "op1", 12.0) == Route(
        "alice", b"R1", 10.0 + TTL
    )
    assert await first.find_app_id(b"R1", 12.0) == [
        Mapped(DEFAULT_UPSTREAM, "op1", Route("alice", b"R1", 10.0 + TTL)),
        Mapped("east", "OP2", Route("alice", b"R1", 11.0 + TTL, "OP2")),
    ]
    second.route_final(DEFAULT_UPSTREAM, "op1", 20.0)
    await until(lambda: first.link.writable)
    assert await second.find_route(DEFAULT_UPSTREAM, "op1", 21.0) == Route(
        "alice", b"R1", 20.0 + GRACE
    )
    assert (await first.refresh()).routes == 2


@pytest_twisted.ensureDeferred
async def test_keys_carry_the_prefix_and_ttls(make: Make, redis_server: RedisServer) -> None:
    store = await started(make())
    await store.add_route(DEFAULT_UPSTREAM, "op1", "alice", b"R1", 0.0)
    ttl = int(redis_server.command("PTTL", "t:r:default:op1").strip(b":\r\n"))
    assert TTL * 1000 - 5000 < ttl <= TTL * 1000
    assert int(redis_server.command("PTTL", "t:a:R1").strip(b":\r\n")) > 0
    assert redis_server.command("PTTL", "t:secret") == b":-1\r\n"  # kept for good
    store.route_final(DEFAULT_UPSTREAM, "op1", 0.0)
    await store.find_route(DEFAULT_UPSTREAM, "op1", 0.0)  # after the cut, on one connection
    assert int(redis_server.command("PTTL", "t:r:default:op1").strip(b":\r\n")) <= GRACE * 1000


@pytest_twisted.ensureDeferred
async def test_held_deliveries_and_parts_are_kept_until_done(
    make: Make, redis_server: RedisServer
) -> None:
    store = await started(make())
    items = [Held("receipt", "alice", b"r%d" % n, 1e12) for n in range(3)]
    for item in items:
        await store.hold_delivery(item)
    assert [item.key > 0 for item in items] == [True] * 3
    assert items[0].key < items[1].key < items[2].key
    store.delivered(items[1])
    part = HeldPart(b"p1", "alice", b"frame", False, 1.0, 1.0)
    await store.hold_part(part)
    await store.hold_part(HeldPart(b"p2", "alice", b"frame2", False, 1.0, 2.0))
    store.parts_done([b"p2"])
    stats = await store.refresh()
    assert (stats.deliveries, stats.parts) == (2, 1)
    assert stats.size_bytes > 0
    assert redis_server.command("XLEN", "t:q:alice") == b":2\r\n"
    assert (await store.loaded()).parts == [part]


@pytest.mark.logs_errors
@pytest_twisted.ensureDeferred
async def test_an_outage_fails_fast_and_recovery_needs_nobody(
    make: Make, redis_server: RedisServer
) -> None:
    first, second = await started(make()), await started(make())
    secret = first.secret
    await first.add_route(DEFAULT_UPSTREAM, "before", "alice", b"A1", 0.0)
    part = HeldPart(b"p1", "alice", b"frame", False, 1.0, 1.0)
    await first.hold_part(part)

    redis_server.stop(kill=True)
    await until(lambda: not first.writable and not second.writable, within=5)
    problem = first.problem
    assert problem.startswith("redis: ")
    await deferLater(reactor, 0.3)  # several probes later: the same reason, not a longer one
    assert first.problem == problem
    started_at = reactor.seconds()
    with pytest.raises(StoreUnavailable):
        await first.add_route(DEFAULT_UPSTREAM, "during", "alice", None, 0.0)
    with pytest.raises(StoreUnavailable):
        await second.find_route(DEFAULT_UPSTREAM, "before", 0.0)
    with pytest.raises(StoreUnavailable):
        await second.hold_delivery(Held("mo", "bob", b"mo", 1e12))
    assert reactor.seconds() - started_at < 0.5  # refused at once, not after a reconnect
    first.route_final(DEFAULT_UPSTREAM, "before", 0.0)  # fire-and-forget: logged, not raised
    assert first.route_finals_failed == 1

    redis_server.start()
    await until(lambda: first.writable and second.writable)
    assert (first.secret, second.secret) == (secret, secret)
    # appendfsync always: what Redis acknowledged before the kill is there after it.
    assert await second.find_route(DEFAULT_UPSTREAM, "before", 1.0) == Route("alice", b"A1", TTL)
    assert [m.message_id for m in await second.find_app_id(b"A1", 1.0)] == ["before"]
    assert (await second.loaded()).parts == [part]
    errors = first.link.stats.errors
    await first.add_route(DEFAULT_UPSTREAM, "after", "alice", b"A2", 2.0)
    assert await first.find_app_id(b"A2", 2.0) != []
    assert first.link.stats.errors == errors  # scripts loaded again at recovery: no NOSCRIPT


@pytest_twisted.ensureDeferred
async def test_a_new_instance_after_a_restart_has_the_same_secret(
    make: Make, redis_server: RedisServer
) -> None:
    secret = (await started(make())).secret
    redis_server.stop()
    redis_server.start()
    assert (await started(make())).secret == secret


@pytest_twisted.ensureDeferred
async def test_open_store_and_metrics(redis_server: RedisServer) -> None:
    config = parse_config(
        {
            "clients": [{"system_id": "app1", "password": "pw"}],
            "store": {"backend": "redis", "url": redis_server.url, "key_prefix": "cfg:"},
            "receipts": {"map_ttl": 600, "final_grace": 30},
        }
    )
    store = open_store(config, reactor)
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.route_ttl, store.final_grace) == ("cfg:", 600.0, 30.0)
    metrics = Metrics(CollectorRegistry())
    service = StoreService(store, lambda: None, metrics)
    registry = metrics.registry
    assert registry.get_sample_value("smpprelay_redis_up") == 0
    service.startService()
    try:
        await until(lambda: store.writable)
        await store.add_route(DEFAULT_UPSTREAM, "x", "alice", None, 0.0)
        assert registry.get_sample_value("smpprelay_redis_up") == 1
        count = registry.get_sample_value("smpprelay_redis_round_trip_seconds_count")
        assert count is not None
        assert count >= 2
        assert (
            registry.get_sample_value("smpprelay_redis_round_trip_seconds_bucket", {"le": "+Inf"})
            == count
        )
        assert registry.get_sample_value("smpprelay_redis_errors_total") is not None
        assert registry.get_sample_value("smpprelay_store_writable") == 1
        redis_server.stop(kill=True)
        await until(lambda: not store.writable, within=5)
        with pytest.raises(StoreUnavailable):
            await store.add_route(DEFAULT_UPSTREAM, "y", "alice", None, 0.0)
        assert registry.get_sample_value("smpprelay_redis_up") == 0
        errors = registry.get_sample_value("smpprelay_redis_errors_total")
        assert errors is not None
        assert errors >= 1
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stats_are_refreshed_off_the_hot_path(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, reactor, reply_timeout=1.0, probe_interval=0.05)
    store = RedisStore(link, reactor, "s:", route_ttl=TTL, stats_interval=0.05, count_interval=0.2)
    try:
        await started(store)
        await store.add_route(DEFAULT_UPSTREAM, "a", "alice", None, 0.0)
        await store.hold_part(HeldPart(b"p1", "alice", b"frame", False, 1.0, 1.0))
        await until(lambda: (store.stats().routes, store.stats().parts) == (1, 1), within=5)
        assert store.stats().size_bytes > 0
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_many_routes_are_estimated_from_a_sample(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SCAN_CALLS calls the count is their share of keys times DBSIZE: bounded work."""
    from twisted.internet.defer import gatherResults

    import smpprelay.store.redis as module

    store = await started(make())
    adds = [store.add_route(DEFAULT_UPSTREAM, f"m{n}", "alice", None, 0.0) for n in range(300)]
    adds += [store.hold_part(HeldPart(b"p%d" % n, "a", b"f", False, 1.0, 1.0)) for n in range(3)]
    await gatherResults(adds)
    assert (await store.loaded()).routes == 300  # small: counted exactly
    monkeypatch.setattr(module, "SCAN_COUNT", 10)
    monkeypatch.setattr(module, "SCAN_CALLS", 3)
    calls = store.link.stats.calls
    estimate = (await store.refresh()).routes
    assert store.link.stats.calls - calls <= 3 + 1 + 2  # SCANs, DBSIZE, HLEN and INFO
    assert 280 <= estimate <= 302  # 300 of the 302 keys are routes (a sample of ~30)
