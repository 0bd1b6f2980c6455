"""`Relay` with a `SharedChain` on a real redis-server: the verdict comes back as a Deferred,
and nothing is accepted that Redis did not decide."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import LogLevel

from smpprelay import pdu
from smpprelay.config import ConcatRule, DedupRule, EncodingRule, FloodRule
from smpprelay.filters.base import Dropped, PartsOutcome
from smpprelay.filters.encoding import EncodingFilter
from smpprelay.message import Message, Verdict, accept, read_message
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.relay import Relay
from smpprelay.shared.chain import SharedChain
from smpprelay.shared.windows import SharedWindows
from smpprelay.store.memory import MemoryStore
from smpprelay.store.redis_link import RedisLink
from smpprelay.store.tables import ReceiptRoutes
from tests.fakes import FakePool, FakeReceiver, captured_logs, make_router, submit_sm
from tests.fakes.redis_server import RedisServer, drained
from tests.fakes.redis_server import link_ready as ready

ACCOUNT = "acme"


class FakeConcat:
    """`SharedConcat` as the chain sees it: verdicts the test scripts, outcomes recorded."""

    def __init__(self) -> None:
        self.verdicts: list[Deferred[Verdict]] = []
        self.outcomes: list[PartsOutcome] = []
        self.expired: list[Dropped] = []
        self.configs: list[ConcatRule] = []

    def check(self, message: Message, now: float) -> Deferred[Verdict]:
        return self.verdicts.pop(0)

    def parts_settled(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        self.outcomes.append(outcome)

    def expire(self, now: float) -> Deferred[list[Dropped]]:
        expired, self.expired = self.expired, []
        return succeed(expired)

    def reconfigure(self, config: ConcatRule) -> None:
        self.configs.append(config)


class Harness:
    def __init__(self, link: RedisLink, **rules: Any) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.pool = FakePool()
        self.receiver = FakeReceiver(ACCOUNT, auto_answer=True)
        self.store = MemoryStore(ReceiptRoutes(ttl=3600.0, max_entries=100), final_grace=600.0)
        self.router = make_router(
            reactor, self.metrics, lambda account: [self.receiver], store=self.store
        )
        self.windows = SharedWindows(
            link,
            "smpprelay:",
            rules.get("dedup", DedupRule()),
            rules.get("flood", FloodRule(max_messages=2)),
            self.metrics,
            lambda: self.store.secret,
        )
        self.concat = FakeConcat()
        encoding = EncodingFilter(EncodingRule(), False, self.metrics)
        self.chain = SharedChain(encoding, self.concat, self.windows, self.metrics)
        self.relay = Relay(self.pool, self.router, self.metrics, reactor, self.chain)

    async def submit(self, frame: bytes) -> bytes:
        return await self.relay.submit(ACCOUNT, frame)

    def answer(self, index: int, message_id: bytes) -> None:
        self.pool.answers[index].callback(pdu.submit_sm_resp(9, Status.ESME_ROK, message_id))

    async def settled(self) -> None:
        await drained(self.windows.link)  # after every settle sent before it

    def decisions(self, rule: str, action: str, reason: str) -> float:
        self.chain.flush_counts()
        labels = {"filter": rule, "action": action, "reason": reason}
        value = self.metrics.registry.get_sample_value("smpprelay_filter_decisions_total", labels)
        return value or 0.0


@pytest_twisted.async_yield_fixture()
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    made = RedisLink(redis_server.url, reactor, reply_timeout=1.0, probe_interval=0.1)
    made.start()
    await ready(made)
    yield made
    await made.stop()


def status(answer: bytes) -> int:
    return pdu.header(answer)[2]


async def relayed(h: Harness, frame: bytes, message_id: bytes) -> bytes:
    """Submit ``frame``, let the operator accept it once it arrives, return the app's answer."""
    sent = len(h.pool.answers)
    answered = h.relay.submit(ACCOUNT, frame)
    for _ in range(250):
        if answered.called or len(h.pool.answers) > sent:
            break
        await deferLater(reactor, 0.01)
    if len(h.pool.answers) > sent:
        h.answer(sent, message_id)
    answer: bytes = await answered
    return answer


@ensureDeferred
async def test_accepted_then_duplicate_then_flood(link: RedisLink) -> None:
    h = Harness(link)
    first = await relayed(h, submit_sm(short_message=b"one"), b"OP-1")
    assert status(first) == Status.ESME_ROK
    assert pdu.message_id_of(first) == b"OP-1"
    await h.settled()
    # The same message again: a duplicate, and the operator never sees it.
    again = await h.submit(submit_sm(short_message=b"one"))
    assert status(again) == 0x45
    assert len(h.pool.frames) == 1
    second = await relayed(h, submit_sm(short_message=b"two"), b"OP-2")
    assert status(second) == Status.ESME_ROK
    await h.settled()
    third = await h.submit(submit_sm(short_message=b"three"))
    assert status(third) == 0x45  # the flood rule's status: two to this number already
    assert len(h.pool.frames) == 2
    assert h.decisions("dedup", "reject", "duplicate") == 1
    assert h.decisions("flood", "reject", "flood") == 1
    assert h.decisions("encoding", "accept", "") == 4
    # The receipt route was stored before the app heard ESME_ROK.
    assert h.store.routes.get(pdu.normalise_message_id(b"OP-1"), reactor.seconds()) is not None


@ensureDeferred
async def test_an_encoding_rejection_never_reaches_redis(link: RedisLink) -> None:
    h = Harness(link)
    calls = link.stats.calls
    answer = await h.submit(submit_sm(short_message=b"\x80bad", data_coding=0))
    assert status(answer) != Status.ESME_ROK
    assert link.stats.calls == calls
    assert h.pool.frames == []


@ensureDeferred
async def test_an_upstream_refusal_releases_the_claim(link: RedisLink) -> None:
    h = Harness(link)
    answered = h.relay.submit(ACCOUNT, submit_sm(short_message=b"retry me"))
    while not h.pool.answers:
        await deferLater(reactor, 0.01)
    h.pool.answers[0].callback(pdu.submit_sm_resp(9, Status.ESME_RTHROTTLED))
    assert status(await answered) == Status.ESME_RTHROTTLED
    await h.settled()
    retry = await relayed(h, submit_sm(short_message=b"retry me"), b"OP-7")
    assert status(retry) == Status.ESME_ROK


@pytest.mark.logs_errors
@ensureDeferred
async def test_redis_down_answers_msgqful_and_nothing_goes_upstream(
    link: RedisLink, redis_server: RedisServer
) -> None:
    h = Harness(link)
    redis_server.stop(kill=True)
    with captured_logs(lambda event: event["log_level"] >= LogLevel.warn) as warnings:
        answers = [await h.submit(submit_sm(short_message=b"m%d" % n)) for n in range(3)]
    assert [status(answer) for answer in answers] == [Status.ESME_RMSGQFUL] * 3
    assert h.pool.frames == []
    said = [event for event in warnings if "shared rules cannot decide" in event["log_format"]]
    assert len(said) == 1  # once an outage, not once a submit
    assert h.decisions("shared", "reject", "redis_unavailable") == 3

    redis_server.start()
    await ready(link, within=15)
    back = await relayed(h, submit_sm(short_message=b"m0"), b"OP-3")
    assert status(back) == Status.ESME_ROK


@ensureDeferred
async def test_a_held_part_is_answered_at_once_with_its_own_id(link: RedisLink) -> None:
    h = Harness(link)
    h.concat.verdicts.append(succeed(Verdict("hold")))
    udh = bytes((5, 0, 3, 0x42, 2, 1))
    answer = await h.submit(submit_sm(esm_class=0x40, short_message=udh + b"part 1"))
    assert status(answer) == Status.ESME_ROK
    assert pdu.message_id_of(answer).startswith(b"R")  # the relay's id, issued for the part
    assert h.pool.frames == []
    assert h.store.stats().parts == 0


@ensureDeferred
async def test_a_glued_message_stopped_by_flood_closes_its_parts(link: RedisLink) -> None:
    h = Harness(link, flood=FloodRule(max_messages=1))
    await relayed(h, submit_sm(short_message=b"fill"), b"OP-4")
    await h.settled()
    udh = bytes((5, 0, 3, 0x42, 2, 2))
    frame = submit_sm(esm_class=0x40, short_message=udh + b"part 2")
    h.concat.verdicts.append(succeed(accept(_glued(frame))))
    answer = await h.submit(frame)
    assert status(answer) == 0x45
    assert h.concat.outcomes == ["refused"]
    assert h.pool.batches == []


@ensureDeferred
async def test_a_glued_message_redis_cannot_decide_keeps_its_parts(
    link: RedisLink, redis_server: RedisServer
) -> None:
    h = Harness(link)
    frame = submit_sm(esm_class=0x40, short_message=bytes((5, 0, 3, 0x42, 2, 2)) + b"part 2")
    h.concat.verdicts.append(succeed(accept(_glued(frame))))
    redis_server.stop(kill=True)
    answer = await h.submit(frame)
    assert status(answer) == Status.ESME_RMSGQFUL
    assert h.concat.outcomes == ["retry"]  # the app's retry completes it again


@ensureDeferred
async def test_sweep_gives_up_what_the_shared_concat_expired(link: RedisLink) -> None:
    h = Harness(link)
    udh = bytes((5, 0, 3, 0x42, 2, 1))
    part = _read(submit_sm(esm_class=0x40, short_message=udh + b"part 1"))
    part.app_message_id = b"R1"
    h.concat.expired = [Dropped(ACCOUNT, reactor.seconds(), [part], "expired")]
    h.relay.sweep()
    assert len(h.receiver.frames) == 1  # its EXPIRED receipt
    assert b"stat:EXPIRED" in h.receiver.frames[0]


def _read(frame: bytes) -> Message:
    return read_message(ACCOUNT, frame)


def _glued(frame: bytes) -> Message:
    """A two-part message glued as SharedConcat would hand it on (parts in sequence order)."""
    first = _read(submit_sm(esm_class=0x40, short_message=bytes((5, 0, 3, 0x42, 2, 1)) + b"p1"))
    first.app_message_id = b"R-held"
    last = _read(frame)
    last.app_message_id = b"R-last"
    glued = _read(frame)
    glued.parts = (first, last)
    glued.content = b"p1part 2"
    glued.app_message_id = b"R-last"
    return glued
