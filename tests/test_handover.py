"""Held receipts and MO handed over between two instances through a real redis-server: held on
one, delivered on the other where the app is bound, exactly once; held while bound nowhere;
redelivered after a temporary refusal; claimed from an instance that died; expired."""

from __future__ import annotations

from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from smpprelay.handover import Handover
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.store.memory import MemoryStore
from smpprelay.store.redis_deliveries import RedisDeliveries
from smpprelay.store.redis_link import RedisLink
from smpprelay.store.tables import Held, HeldDeliveries, ReceiptRoutes
from tests.fakes import FakeReceiver, make_router, mo
from tests.fakes.redis_server import RedisServer, until

PREFIX = "t:"


class SharedStore(MemoryStore):
    """The store's held deliveries in Redis (as `RedisStore` delegates them), the rest in memory."""

    durable = True

    def __init__(self, deliveries: RedisDeliveries) -> None:
        super().__init__(ReceiptRoutes(3600.0, 100), 60.0)
        self.deliveries = deliveries

    def hold_delivery(self, item: Held) -> Deferred[None]:
        return self.deliveries.hold(item)

    def delivered(self, item: Held) -> None:
        self.deliveries.done(item)


class Instance:
    """One relay instance: its link, held deliveries, router with fake receivers, handover."""

    def __init__(
        self, server: RedisServer, name: str, claim_idle: float = 5.0, held_ttl: float = 600.0
    ) -> None:
        self.name = name
        self.link = RedisLink(server.url, reactor, reply_timeout=1.0, probe_interval=0.1)
        self.deliveries = RedisDeliveries(self.link, PREFIX, reactor, instance=name)
        self.metrics = Metrics()
        self.receivers: list[FakeReceiver] = []
        self.router = make_router(
            reactor,
            self.metrics,
            lambda account: [r for r in self.receivers if r.account == account],
            held=HeldDeliveries(held_ttl, 100),
            retry=0.2,
            store=SharedStore(self.deliveries),
        )
        self.handover = Handover(
            self.router,
            self.deliveries,
            lambda: ["app"],
            reactor,
            self.metrics,
            poll=0.05,
            claim_every=0.1,
            claim_idle=claim_idle,
            sweep_every=0.1,
        )

    async def start(self) -> None:
        self.link.start()
        await until(lambda: self.link.writable and self.link._connection() is not None)
        self.handover.start()

    async def stop(self) -> None:
        self.handover.stop()
        await self.link.stop()

    def bind(self) -> FakeReceiver:
        receiver = FakeReceiver("app")
        self.receivers.append(receiver)
        self.router.receiver_bound("app")
        return receiver

    def count(self, result: str, kind: str = "mo") -> float:
        value = self.metrics.registry.get_sample_value(
            "smpprelay_deliveries_total", {"kind": kind, "result": result}
        )
        return value or 0.0


async def settle(seconds: float = 0.3) -> None:
    await deferLater(reactor, seconds)


def stream_length(server: RedisServer) -> int:
    reply = server.command("XLEN", f"{PREFIX}q:app")  # raw RESP: b":N\r\n"
    return int(reply[1:].split(b"\r\n")[0])


@ensureDeferred
async def test_held_on_a_delivered_on_b_exactly_once(redis_server: RedisServer) -> None:
    """Arrived on A (app bound only on B): held in Redis, then delivered by B, once."""
    a, b = Instance(redis_server, "A"), Instance(redis_server, "B")
    await a.start()
    await b.start()
    try:
        app = b.bind()
        frame = mo(b"7900")
        status = await a.router.deliver("mo", "app", frame)
        assert status == Status.ESME_ROK  # answered once Redis had it
        assert a.count("held") == 1
        await until(lambda: len(app.frames) == 1)
        assert app.frames == [frame]
        app.answer(0)
        await until(lambda: stream_length(redis_server) == 0)
        await settle()
        assert app.frames == [frame]  # not again
        assert b.count("handed_over") == 1
        assert a.count("delivered") == b.count("delivered") == 0
    finally:
        await a.stop()
        await b.stop()


@ensureDeferred
async def test_held_while_bound_nowhere_then_delivered_on_bind(redis_server: RedisServer) -> None:
    """Nobody bound: kept in Redis; an app binding on either instance gets it."""
    a, b = Instance(redis_server, "A"), Instance(redis_server, "B")
    await a.start()
    await b.start()
    try:
        frames = [mo(b"7901"), mo(b"7902")]
        for frame in frames:
            assert await b.router.deliver("mo", "app", frame) == Status.ESME_ROK
        await settle()
        assert stream_length(redis_server) == 2  # held, durably, by nobody
        app = a.bind()
        await until(lambda: len(app.frames) == 2)
        assert app.frames == frames  # oldest first
        app.answer(0)
        app.answer(1)
        await until(lambda: stream_length(redis_server) == 0)
        assert a.count("handed_over") == 2
    finally:
        await a.stop()
        await b.stop()


@ensureDeferred
async def test_temporary_refusal_redelivered(redis_server: RedisServer) -> None:
    """ESME_RX_T_APPN: the entry stays in Redis and is delivered again after the retry."""
    a = Instance(redis_server, "A")
    await a.start()
    try:
        frame = mo(b"7903")
        assert await a.router.deliver("mo", "app", frame) == Status.ESME_ROK
        app = a.bind()
        await until(lambda: len(app.frames) == 1)
        app.answer(0, Status.ESME_RX_T_APPN)
        await settle(0.1)
        assert len(app.frames) == 1  # not at once: after the retry interval
        await until(lambda: len(app.frames) == 2)
        assert app.frames == [frame, frame]
        app.answer(1)
        await until(lambda: stream_length(redis_server) == 0)
        assert a.count("delivered") == 1
    finally:
        await a.stop()


@ensureDeferred
async def test_pending_on_dead_instance_claimed(redis_server: RedisServer) -> None:
    """A read the entry and died before its app answered: B claims it after claim_idle."""
    a = Instance(redis_server, "A", claim_idle=0.5)
    b = Instance(redis_server, "B", claim_idle=0.5)
    await a.start()
    await b.start()
    try:
        frame = mo(b"7904")
        dead_app = a.bind()
        assert await b.router.deliver("mo", "app", frame) == Status.ESME_ROK
        await until(lambda: len(dead_app.frames) == 1)
        await a.stop()  # A dies: its entry is pending on it, unanswered
        app = b.bind()
        await until(lambda: len(app.frames) == 1)
        assert app.frames == [frame]
        app.answer(0)
        await until(lambda: stream_length(redis_server) == 0)
        pending = redis_server.command("XPENDING", f"{PREFIX}q:app", "relay")
        assert pending.startswith(b"*4\r\n:0\r\n")  # nothing pending on anyone
    finally:
        await b.stop()


@ensureDeferred
async def test_expired_entries_removed_and_counted(redis_server: RedisServer) -> None:
    """Held past held.ttl with nobody bound: removed from Redis, logged and counted once."""
    a = Instance(redis_server, "A", held_ttl=0.2)
    b = Instance(redis_server, "B", held_ttl=0.2)
    await a.start()
    await b.start()
    try:
        assert await a.router.deliver("mo", "app", mo(b"7905")) == Status.ESME_ROK
        await until(lambda: stream_length(redis_server) == 0)
        await settle()
        assert a.count("expired") + b.count("expired") == 1
    finally:
        await a.stop()
        await b.stop()
