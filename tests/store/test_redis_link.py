"""The Redis link against a real redis-server: replies, scripts by digest, fail-fast outages and
automatic recovery."""

from __future__ import annotations

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater

from smpprelay.redis_url import parse_url
from smpprelay.store.redis_link import RedisLink, RedisUnavailable, Script
from tests.fakes.redis_server import RedisServer
from tests.fakes.redis_server import link_ready as _ready


async def _down(link: RedisLink, within: float = 5.0) -> None:
    waited = 0.0
    while link.writable:
        await deferLater(reactor, 0.02)
        waited += 0.02
        assert waited < within


def test_url() -> None:
    url = parse_url("rediss://u:p%40ss@redis.example:6380/3")
    assert (url.host, url.port, url.db, url.tls, url.username, url.password) == (
        "redis.example", 6380, 3, True, "u", "p@ss"
    )  # fmt: skip
    assert parse_url("redis://127.0.0.1").port == 6379
    for bad in ("http://x", "redis://", "redis://h/x", "redis://h:port"):
        with pytest.raises(ValueError, match="redis"):
            parse_url(bad)


@ensureDeferred
async def test_calls_scripts_and_outage(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, reactor, reply_timeout=1.0, probe_interval=0.1)
    link.start()
    try:
        await _ready(link)
        assert await link.call("SET", "k", b"\x00\xff") == "OK"  # status replies come as str
        assert await link.call("GET", "k") == b"\x00\xff"
        script = Script("echo", "return {KEYS[1], ARGV[1]}")
        # Not loaded yet: sent whole once, then by digest.
        assert await link.run(script, ["a"], [b"b"]) == [b"a", b"b"]
        assert await link.run(script, ["c"], [b"d"]) == [b"c", b"d"]
        with pytest.raises(RedisUnavailable):
            await link.run(Script("bad", "return redis.call('NOPE')"), [], [])
        assert link.writable  # an error reply is not an outage

        redis_server.stop(kill=True)
        await _down(link)
        assert "redis" in link.problem or link.problem
        with pytest.raises(RedisUnavailable):
            await link.call("GET", "k")  # at once, not after a reconnect

        redis_server.start()
        await _ready(link, within=15)
        assert await link.call("GET", "k") == b"\x00\xff"  # appendfsync always kept it
        assert link.stats.calls > 5
        assert link.stats.errors >= 2
    finally:
        await link.stop()
