"""Lock-outs shared through a real redis-server: failed binds split over two instances lock the
address out on both; with Redis down each instance still counts its own."""

from __future__ import annotations

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.internet.task import deferLater

from smpprelay.access import Access
from smpprelay.config import SecurityConfig
from smpprelay.metrics import Metrics
from smpprelay.store.redis_link import RedisLink
from smpprelay.store.redis_lockouts import RedisLockouts
from tests.fakes.redis_server import RedisServer
from tests.fakes.redis_server import link_ready as _ready

HOST = "203.0.113.7"


def _instance(server: RedisServer) -> tuple[Access, RedisLink]:
    link = RedisLink(server.url, reactor, reply_timeout=1.0, probe_interval=0.1)
    access = Access(
        SecurityConfig(bind_failures=4, bind_failure_window=60.0, lockout=300.0),
        (),
        reactor,
        Metrics(),
    )
    access.share(RedisLockouts(link, "t:"))
    return access, link


@ensureDeferred
async def test_failures_split_over_two_instances_lock_out_on_both(
    redis_server: RedisServer,
) -> None:
    (a, link_a), (b, link_b) = _instance(redis_server), _instance(redis_server)
    link_a.start()
    link_b.start()
    try:
        await _ready(link_a)
        await _ready(link_b)
        assert not a.bind_failed(HOST)
        assert not a.bind_failed(HOST)
        assert not b.bind_failed(HOST)
        await deferLater(reactor, 0.1)  # the counts reached Redis
        assert not a.locked(HOST)
        assert not b.locked(HOST)
        assert await a.checked(HOST, succeed("ok")) == "ok"  # 3 of 4: not locked anywhere
        assert not a.locked(HOST)
        assert not b.bind_failed(HOST)  # the 4th, on B: locally only 2 of 4
        await deferLater(reactor, 0.1)
        assert b.locked(HOST)  # Redis's count locked it
        # A learns it at the next bind from that address, before the password's answer.
        assert not a.locked(HOST)
        assert await a.checked(HOST, succeed("ok")) == "ok"
        assert a.locked(HOST)
        assert not a.admit(HOST)  # and refuses its connections from now on
        # A wrong password stays a wrong password.
        with pytest.raises(ValueError, match="credentials"):
            await a.checked("198.51.100.1", fail(ValueError("credentials")))
        assert not a.locked("198.51.100.1")
    finally:
        await link_a.stop()
        await link_b.stop()


@ensureDeferred
async def test_redis_down_counts_locally(redis_server: RedisServer) -> None:
    (a, link_a) = _instance(redis_server)
    link_a.start()
    try:
        await _ready(link_a)
        redis_server.stop(kill=True)
        for _ in range(100):
            if not link_a.writable:
                break
            await deferLater(reactor, 0.02)
        # The bind's answer still comes, decided by the local count alone (not everyone out).
        assert await a.checked(HOST, succeed("ok")) == "ok"
        assert not a.locked(HOST)
        locked = [a.bind_failed(HOST) for _ in range(4)]
        assert locked == [False, False, False, True]
        assert a.locked(HOST)
    finally:
        await link_a.stop()
