"""RedisDeliveries against a real redis-server: hold sets the key and fires once Redis has it,
read/done remove exactly that entry, unreadable entries are dropped, sweep removes the expired."""

from __future__ import annotations

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater

from smpprelay.store.redis_deliveries import RedisDeliveries, pack_id, unpack_id
from smpprelay.store.redis_link import RedisLink, RedisUnavailable
from smpprelay.store.tables import Held
from tests.fakes.redis_server import RedisServer
from tests.fakes.redis_server import link_ready as _ready


def test_entry_ids_pack_into_ints() -> None:
    for entry_id in ("0-1", "1796309153753-0", "1796309153753-4294967295"):
        assert unpack_id(pack_id(entry_id)) == entry_id
    assert pack_id(b"5-0") < pack_id(b"5-1") < pack_id(b"6-0")


@ensureDeferred
async def test_hold_read_done_sweep(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, reactor, reply_timeout=1.0, probe_interval=0.1)
    link.start()
    deliveries = RedisDeliveries(link, "t:", reactor, instance="me")
    try:
        await _ready(link)
        now = reactor.seconds()
        kept = Held("mo", "app", b"\x00frame\xff", now + 600)
        stale = Held("receipt", "app", b"old", now - 1)
        await deliveries.hold(stale)
        await deliveries.hold(kept)
        assert kept.key > stale.key > 0
        assert deliveries.pending() == 2
        # Something not ours in the stream: removed when read, never retried forever.
        await link.call("XADD", "t:q:app", "*", "junk", "1")
        gone = await deliveries.sweep("app")
        assert gone == [("receipt", 0)]  # the stale one only; the young one stops the sweep
        entries = await deliveries.read("app", 10)
        assert [(e.item.kind, e.item.frame, e.item.key, e.origin) for e in entries] == [
            ("mo", b"\x00frame\xff", kept.key, "me")
        ]
        assert await deliveries.read("app", 10) == []  # read by this consumer already
        deliveries.done(entries[0].item)
        await deferLater(reactor, 0.1)
        assert await link.call("XLEN", "t:q:app") == 0
        assert (await deliveries.measure(["app"]))["app"] == 0

        redis_server.stop(kill=True)
        for _ in range(100):
            if not link.writable:
                break
            await deferLater(reactor, 0.02)
        with pytest.raises(RedisUnavailable):
            await deliveries.hold(Held("mo", "app", b"x", now + 600))
    finally:
        await link.stop()
