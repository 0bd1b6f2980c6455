"""Concatenated parts assembled in a real Redis by two instances (two links, two rules): held,
glued exactly once, the in-process rule's rejections, retries, expiry claimed once, outages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, gatherResults
from twisted.internet.task import deferLater

from smpprelay.config import ConcatRule
from smpprelay.filters.base import Dropped
from smpprelay.message import Message, Verdict, read_message, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.shared.concat import SharedConcat
from smpprelay.shared.concat_scripts import CANCEL, CHECK, EXPIRE, FIND, REPLACE, SETTLE
from smpprelay.store.redis_link import RedisLink, RedisUnavailable
from tests.fakes import submit_sm
from tests.fakes.redis_server import RedisServer, drained

HOLD = Verdict("hold")
LATE = reject(0x45, "late")
DUPLICATE = reject(0x45, "duplicate_part")
REUSED = reject(0x45, "reference_reused")
FULL = reject(Status.ESME_RMSGQFUL, "full")
T0 = 1_700_000_000.0  # the rules' clock is given, not read: any epoch will do
WINDOW = 10.0

_ids = iter(range(1, 1 << 30))


def part(
    ref: int, total: int, seq: int, text: bytes = b"", account: str = "app1", **fields: Any
) -> Message:
    """A part (UDH IE 0x00) with a fresh relay id, as the relay issues before the rules."""
    body = bytes([5, 0, 3, ref, total, seq]) + (text or b"part%d" % seq)
    frame = submit_sm(3, esm_class=0x40, short_message=body, **fields)
    message = read_message(account, frame)
    message.app_message_id = b"R%06d" % next(_ids)
    return message


class Instance:
    """One relay instance's view: its own link and rule, its own metrics."""

    def __init__(self, url: str, **config: Any) -> None:
        self.link = RedisLink(url, reactor, reply_timeout=1.0, probe_interval=0.1)
        self.registry = CollectorRegistry()
        rule = ConcatRule(window=WINDOW, **config)
        self.rule = SharedConcat(self.link, "t:", rule, Metrics(self.registry))

    async def ready(self, within: float = 5.0) -> None:
        waited = 0.0
        while not self.link.writable or self.link._connection() is None:
            await deferLater(reactor, 0.02)
            waited += 0.02
            assert waited < within, self.link.problem

    async def check(self, message: Message, now: float = T0) -> Verdict:
        return await self.rule.check(message, now)

    async def settle(self, message: Message, now: float, outcome: Any) -> None:
        """`parts_settled`, then a PING on the same connection: Redis answers in order, so the
        outcome is written when the PING is answered."""
        self.rule.parts_settled(message, now, outcome)
        await drained(self.link)

    def decisions(self, action: str, reason: str) -> float:
        value = self.registry.get_sample_value(
            "smpprelay_filter_decisions_total",
            {"filter": "concat", "action": action, "reason": reason},
        )
        return value or 0.0


@pytest_twisted.async_yield_fixture()
async def two(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    started: list[Instance] = []

    async def make(**config: Any) -> tuple[Instance, Instance]:
        pair = Instance(redis_server.url, **config), Instance(redis_server.url, **config)
        for instance in pair:
            instance.link.start()
            started.append(instance)
            await instance.ready()
        return pair

    yield make
    for instance in started:
        await instance.link.stop()


@ensureDeferred
async def test_parts_spread_over_two_instances_are_glued_once(two: Any) -> None:
    a, b = await two()
    first, second, third = part(7, 3, 1, b"Hello "), part(7, 3, 2, b"big "), part(7, 3, 3, b"world")
    assert await a.check(third) == HOLD  # parts come in any order
    assert await b.check(first, T0 + 1) == HOLD
    verdict = await a.check(second, T0 + 2)
    assert verdict.action == "accept"
    assert verdict.message is not None
    glued = verdict.message
    assert glued.content == b"Hello big world"
    assert [p.concat.sequence for p in glued.parts if p.concat] == [1, 2, 3]
    assert [p.app_message_id for p in glued.parts] == [
        first.app_message_id, second.app_message_id, third.app_message_id
    ]  # fmt: skip
    assert glued.app_message_id == second.app_message_id  # the completing part's id
    assert [p.frame for p in glued.parts] == [first.frame, second.frame, third.frame]
    assert a.decisions("hold", "") == 1
    assert b.decisions("hold", "") == 1
    a.rule.flush_counts()
    assert a.decisions("accept", "") == 1

    # With the operator: closed to its parts (nothing is glued twice) ...
    assert await b.check(part(7, 3, 1, b"Hello "), T0 + 3) == DUPLICATE
    await a.settle(glued, T0 + 3, "accepted")
    # ... and once closed, a straggler within the window is a duplicate, then late, then new.
    assert await b.check(part(7, 3, 3, b"world"), T0 + 4) == DUPLICATE
    assert await b.check(part(7, 3, 3, b"world"), T0 + WINDOW + 1) == LATE
    assert await b.check(part(7, 3, 3, b"world"), T0 + 2 * WINDOW + 1) == HOLD


@ensureDeferred
async def test_last_two_parts_at_once_on_two_instances(two: Any) -> None:
    a, b = await two()
    for ref in range(40):
        one, other = part(ref, 2, 1), part(ref, 2, 2)
        results = await gatherResults([a.rule.check(one, T0), b.rule.check(other, T0)])
        actions = sorted(verdict.action for verdict in results)
        assert actions == ["accept", "hold"], (ref, results)
        [glued] = [verdict.message for verdict in results if verdict.message is not None]
        assert [p.app_message_id for p in glued.parts] == [one.app_message_id, other.app_message_id]


@ensureDeferred
async def test_late_part(two: Any) -> None:
    a, b = await two()
    assert await a.check(part(9, 2, 1)) == HOLD
    assert await b.check(part(9, 2, 2), T0 + WINDOW + 0.001) == LATE
    assert b.decisions("reject", "late") == 1


@ensureDeferred
async def test_duplicate_part_and_byte_identical_resend(two: Any) -> None:
    a, b = await two()
    held = part(3, 3, 1, b"first")
    assert await a.check(held) == HOLD
    # Sent again byte for byte (its answer was lost): the id it was given, on any instance.
    again = part(3, 3, 1, b"first")
    verdict = await b.check(again, T0 + 1)
    assert verdict == Verdict("replay", reason="held_part_resent", message_id=held.app_message_id)
    # Another part in the same place is refused.
    assert await b.check(part(3, 3, 1, b"other"), T0 + 1) == DUPLICATE
    assert b.decisions("replay", "held_part_resent") == 1
    assert b.decisions("reject", "duplicate_part") == 1


@ensureDeferred
async def test_reference_reused_with_another_total(two: Any) -> None:
    a, b = await two()
    assert await a.check(part(5, 3, 1)) == HOLD
    assert await b.check(part(5, 2, 2), T0 + 1) == REUSED
    # Another account, source or destination is another message.
    assert await b.check(part(5, 2, 2, account="app2"), T0 + 1) == HOLD
    assert await b.check(part(5, 2, 2, destination_addr=b"4477"), T0 + 1) == HOLD


@ensureDeferred
async def test_full(two: Any) -> None:
    a, b = await two(max_open=3, max_open_per_account=2, max_held_bytes_per_account=100_000)
    assert await a.check(part(1, 2, 1)) == HOLD
    assert await b.check(part(2, 2, 1)) == HOLD
    assert await a.check(part(3, 2, 1)) == FULL  # app1 has two open, counted across instances
    assert await b.check(part(3, 2, 1, account="app2")) == HOLD
    assert await a.check(part(4, 2, 1, account="app3")) == FULL  # three open in all
    assert a.decisions("reject", "full") == 2

    # Held bytes: a part past the account's cap is refused too.
    c, d = await two(max_held_bytes_per_account=1000)
    big = b"x" * 140
    assert await c.check(part(1, 4, 1, big, account="big")) == HOLD
    assert await d.check(part(1, 4, 2, big, account="big")) == HOLD
    assert await c.check(part(1, 4, 3, big, account="big")) == FULL


@ensureDeferred
async def test_retry_then_the_resent_completing_part_completes_again(two: Any) -> None:
    a, b = await two()
    first, second = part(11, 3, 1), part(11, 3, 2)
    assert await a.check(first) == HOLD
    assert await b.check(second) == HOLD
    completing = part(11, 3, 3)
    verdict = await a.check(completing, T0 + 1)
    assert verdict.message is not None
    await a.settle(verdict.message, T0 + 2, "retry")  # the operator said ESME_RTHROTTLED
    # Held parts sent again meanwhile are still held: answered with their ids.
    resent = await b.check(part(11, 3, 1), T0 + 3)
    assert resent.action == "replay"
    assert resent.message_id == first.app_message_id
    # The app's retry of the completing part (a new relay id) completes it again, on B.
    retry = part(11, 3, 3)
    again = await b.check(retry, T0 + 3)
    assert again.action == "accept"
    assert again.message is not None
    assert [p.app_message_id for p in again.message.parts] == [
        first.app_message_id, second.app_message_id, retry.app_message_id
    ]  # fmt: skip
    # The first glued message's fate is no longer the message's: it stays with the operator.
    await a.settle(verdict.message, T0 + 4, "accepted")
    assert await a.check(part(11, 3, 3), T0 + 4) == DUPLICATE
    await b.settle(again.message, T0 + 4, "retry")  # the second send's fate counts
    third = await a.check(part(11, 3, 3), T0 + 5)
    assert third.action == "accept"
    assert third.message is not None
    await a.settle(third.message, T0 + 5, "refused")
    assert await b.check(part(11, 3, 2), T0 + 6) == DUPLICATE  # closed
    assert await b.check(part(11, 3, 2), T0 + WINDOW + 1) == LATE


@ensureDeferred
async def test_expire_on_two_instances_claims_each_message_once(two: Any) -> None:
    a, b = await two()
    held: dict[bytes, list[bytes]] = {}
    for ref in range(30):
        parts = [part(ref, 3, 2), part(ref, 3, 1)]
        for number, one in enumerate(parts):
            assert await (a if ref % 2 else b).check(one, T0 + ref * 0.01 + number) == HOLD
        held[bytes([ref])] = [one.app_message_id for one in parts]
    # Not yet: every window is still open.
    assert await a.rule.expire(T0 + 1) == []
    later = T0 + WINDOW + 1
    results = await DeferredList(
        [a.rule.expire(later), b.rule.expire(later)], fireOnOneErrback=True
    )
    dropped: list[Dropped] = [one for _, found in results for one in found]
    assert len(dropped) == 30
    seen = {}
    for message in dropped:
        assert message.account == "app1"
        assert message.reason == "expired"
        info = message.arrived[0].concat
        assert info is not None
        assert message.first == pytest.approx(T0 + info.reference * 0.01, abs=0.002)
        seen[bytes([info.reference])] = [p.app_message_id for p in message.arrived]
    assert seen == held  # each message once, its parts in the order they arrived
    assert await a.rule.expire(later + 1) == []
    assert await b.rule.expire(later + 1) == []
    assert a.rule.open_count == 0
    assert a.rule.held_bytes == 0


@ensureDeferred
async def test_a_message_left_with_the_operator_by_a_dead_instance_expires(two: Any) -> None:
    a, b = await two()
    first = part(20, 2, 1)
    assert await a.check(first) == HOLD
    verdict = await b.check(part(20, 2, 2), T0 + 1)
    assert verdict.action == "accept"
    # B dies before the operator answers: nobody says what became of the message.
    assert await a.rule.expire(T0 + WINDOW + 1) == []  # the operator may still have it
    [dropped] = await a.rule.expire(T0 + 2 * WINDOW + 1)
    assert [p.app_message_id for p in dropped.arrived] == [first.app_message_id]


@ensureDeferred
async def test_redis_down_fails_the_check(two: Any, redis_server: RedisServer) -> None:
    a, _ = await two()
    redis_server.stop(kill=True)
    waited = 0.0
    while a.link.writable:
        await deferLater(reactor, 0.02)
        waited += 0.02
        assert waited < 5
    with pytest.raises(RedisUnavailable):
        await a.check(part(1, 2, 1))
    with pytest.raises(RedisUnavailable):
        await a.rule.expire(T0)


@ensureDeferred
async def test_malformed_header_is_refused_without_redis() -> None:
    rule = SharedConcat(
        RedisLink("redis://127.0.0.1:1", reactor), "t:", ConcatRule(), Metrics(CollectorRegistry())
    )
    for total, seq in ((1, 1), (0, 0), (3, 0), (3, 4)):
        verdict = await rule.check(part(1, total, seq), T0)
        assert verdict == reject(0x45, "malformed")
    single = read_message("app1", submit_sm(1))
    assert (await rule.check(single, T0)).action == "accept"


@ensureDeferred
async def test_retry_after_the_window_gives_the_message_up(two: Any) -> None:
    a, b = await two()
    first = part(30, 2, 1)
    assert await a.check(first) == HOLD
    verdict = await b.check(part(30, 2, 2), T0 + 1)
    assert verdict.message is not None
    await b.settle(verdict.message, T0 + WINDOW + 1, "retry")  # its window ended meanwhile
    [dropped] = await a.rule.expire(T0 + WINDOW + 1)
    assert [p.app_message_id for p in dropped.arrived] == [first.app_message_id]


@ensureDeferred
async def test_every_key_has_a_ttl(two: Any, redis_server: RedisServer) -> None:
    a, b = await two()
    assert await a.check(part(40, 3, 1)) == HOLD
    verdict = await b.check(part(41, 2, 1))
    assert verdict == HOLD
    glued = (await a.check(part(41, 2, 2))).message
    assert glued is not None
    await a.settle(glued, T0 + 1, "accepted")
    keys = await a.link.call("KEYS", "t:*")
    assert len(keys) >= 6  # a message, a closed marker, the indexes, the held counters
    for key in keys:
        ttl = await a.link.call("PTTL", key)
        assert 0 < ttl <= 3 * WINDOW * 1000, key


@ensureDeferred
async def test_an_outcome_not_written_is_written_by_the_next_expiry(
    two: Any, redis_server: RedisServer
) -> None:
    a, b = await two()
    assert await a.check(part(50, 2, 1)) == HOLD
    glued = (await b.check(part(50, 2, 2))).message
    assert glued is not None
    redis_server.stop(kill=True)
    waited = 0.0
    while b.link.writable:
        await deferLater(reactor, 0.02)
        waited += 0.02
        assert waited < 5
    b.rule.parts_settled(glued, T0 + 1, "accepted")  # cannot be written now
    redis_server.start()
    await b.ready(within=15)
    await a.ready(within=15)
    assert await b.rule.expire(T0 + 2) == []  # sends the outcome again first
    await b.link.call("PING")
    # Closed: not given up as a message left with the operator by a dead instance.
    assert await a.rule.expire(T0 + 2 * WINDOW + 1) == []
    assert await a.link.call("EXISTS", "t:c:open") == 0


@ensureDeferred
async def test_scripts_are_loaded_when_redis_comes_up(two: Any, redis_server: RedisServer) -> None:
    a, _ = await two()
    shas = [script.sha for script in (CHECK, SETTLE, EXPIRE, FIND, CANCEL, REPLACE)]
    assert await a.link.call("SCRIPT", "EXISTS", *shas) == [1] * 6
    await a.link.call("SCRIPT", "FLUSH")
    redis_server.stop(kill=True)
    waited = 0.0
    while a.link.writable:
        await deferLater(reactor, 0.02)
        waited += 0.02
        assert waited < 5
    redis_server.start()
    await a.ready(within=15)
    await a.link.call("PING")
    assert await a.link.call("SCRIPT", "EXISTS", *shas) == [1] * 6
