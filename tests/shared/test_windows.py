"""`SharedWindows` against a real redis-server: two links stand for two relay instances."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from smpprelay.config import DedupRule, FloodRule
from smpprelay.message import ACCEPT, Message, Verdict, read_message
from smpprelay.metrics import Metrics
from smpprelay.shared.windows import SharedWindows
from smpprelay.store.redis_link import RedisLink, RedisUnavailable
from tests.fakes import submit_sm
from tests.fakes.redis_server import RedisServer, drained
from tests.fakes.redis_server import link_ready as ready
from tests.fakes.redis_server import until as _until

SECRET = b"s" * 16
PREFIX = "smpprelay:"


def message(text: bytes = b"hello", to: bytes = b"447700900001", account: str = "acme") -> Message:
    return read_message(account, submit_sm(short_message=text, destination_addr=to))


class Instances:
    """Two relay instances' links and windows on one Redis."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.links: list[RedisLink] = []
        self.metrics = Metrics(CollectorRegistry())

    async def link(self) -> RedisLink:
        link = RedisLink(self.server.url, reactor, reply_timeout=1.0, probe_interval=0.1)
        link.start()
        self.links.append(link)
        await ready(link)
        return link

    async def windows(self, count: int = 2, **options: Any) -> list[SharedWindows]:
        dedup = options.pop("dedup", DedupRule(window=60.0))
        flood = options.pop("flood", FloodRule(max_messages=50, gap=30.0))
        return [
            SharedWindows(await self.link(), PREFIX, dedup, flood, self.metrics, SECRET, **options)
            for _ in range(count)
        ]

    async def close(self) -> None:
        for link in self.links:
            await link.stop()


@pytest_twisted.async_yield_fixture()
async def instances(redis_server: RedisServer) -> AsyncIterator[Instances]:
    made = Instances(redis_server)
    yield made
    await made.close()


def decisions(metrics: Metrics, rule: str, action: str, reason: str) -> float:
    labels = {"filter": rule, "action": action, "reason": reason}
    return metrics.registry.get_sample_value("smpprelay_filter_decisions_total", labels) or 0.0


async def settled(windows: SharedWindows) -> None:
    """Settles are not waited for: wait until Redis has run them."""
    await drained(windows.link)


@ensureDeferred
async def test_two_instances_accept_exactly_max_messages_to_one_number(
    instances: Instances,
) -> None:
    a, b = await instances.windows()
    now = reactor.seconds()
    accepted: list[Message] = []
    verdicts: list[Verdict] = []

    def decided(verdict: Verdict, windows: SharedWindows, sent: Message, n: int) -> None:
        verdicts.append(verdict)
        if verdict is ACCEPT:
            accepted.append(sent)
            windows.settle(sent, now, b"op%d" % n)

    claims: list[Deferred[Any]] = []
    for n in range(200):
        windows = (a, b)[n % 2]
        sent = message(b"text %d" % n)
        claims.append(windows.claim(sent, now).addCallback(decided, windows, sent, n))
    await DeferredList(claims, fireOnOneErrback=True, consumeErrors=True)
    assert len(accepted) == 50
    assert sorted(v.reason for v in verdicts if v is not ACCEPT) == ["flood"] * 150
    await settled(a)
    await settled(b)
    streak = await a.link.call("GET", b"smpprelay:w:f:447700900001")
    assert streak.endswith(b":50")
    # Settled: the streak holds 50, nothing is in flight, and the 201st is still cut off.
    assert await a.link.call("ZCARD", b"smpprelay:w:g:447700900001") == 0
    assert (await b.claim(message(b"one more"), now + 1)).reason == "flood"
    # A gap with nothing accepted ends the streak.
    assert await b.claim(message(b"later"), now + 31) is ACCEPT
    a.flush_counts()
    b.flush_counts()
    assert decisions(instances.metrics, "flood", "accept", "") == 51
    assert decisions(instances.metrics, "flood", "reject", "flood") == 151
    assert decisions(instances.metrics, "dedup", "accept", "") == 202


@ensureDeferred
async def test_one_message_on_both_instances_at_once_is_accepted_once(
    instances: Instances,
) -> None:
    a, b = await instances.windows()
    now = reactor.seconds()
    for round_ in range(20):
        text = b"same %d" % round_
        first, second = a.claim(message(text), now), b.claim(message(text), now)
        verdicts = [await first, await second]
        assert [v is ACCEPT for v in verdicts].count(True) == 1
        assert [v.reason for v in verdicts if v is not ACCEPT] == ["in_flight"]


@ensureDeferred
async def test_replay_answers_the_first_id_and_release_lets_a_retry_through(
    instances: Instances,
) -> None:
    a, b = await instances.windows(dedup=DedupRule(window=60.0, action="replay"))
    now = reactor.seconds()
    first = message(b"pay 10")
    assert await a.claim(first, now) is ACCEPT
    a.settle(first, now, b"OP-1")
    await settled(a)
    replay = await b.claim(message(b"pay 10"), now + 1)
    assert (replay.action, replay.message_id) == ("replay", b"OP-1")

    # Released (the operator refused it for now): the retry goes through, on either instance.
    retry = message(b"pay 20")
    assert await b.claim(retry, now) is ACCEPT
    b.settle(retry, now, None)
    await settled(b)
    again = message(b"pay 20")
    assert await a.claim(again, now + 1) is ACCEPT
    # The window ends 60 s after the acceptance.
    assert await b.claim(message(b"pay 10"), now + 60) is ACCEPT


@ensureDeferred
async def test_a_late_acceptance_after_release_is_recorded(instances: Instances) -> None:
    [a] = await instances.windows(1)
    now = reactor.seconds()
    sent = message(b"late")
    assert await a.claim(sent, now) is ACCEPT
    a.settle(sent, now, None)  # the operator's answer timed out
    a.settle(sent, now + 5, b"OP-9")  # and came after all
    await settled(a)
    assert (await a.claim(message(b"late"), now + 6)).reason == "duplicate"
    streak = await a.link.call("GET", b"smpprelay:w:f:447700900001")
    assert streak.endswith(b":1")


@ensureDeferred
async def test_scope_client_keeps_accounts_apart(instances: Instances) -> None:
    [a] = await instances.windows(
        1,
        dedup=DedupRule(scope="client"),
        flood=FloodRule(max_messages=1, scope="client"),
    )
    now = reactor.seconds()
    assert await a.claim(message(account="one"), now) is ACCEPT
    assert await a.claim(message(account="two"), now) is ACCEPT
    assert (await a.claim(message(b"other", account="one"), now)).reason == "flood"


@ensureDeferred
async def test_keys_carry_their_windows_as_ttls(instances: Instances) -> None:
    [a] = await instances.windows(1, claim_ttl=20.0)
    now = reactor.seconds()
    sent = message(b"ttl")
    keys = a.keys(sent)
    assert all(key.startswith(b"smpprelay:w:") for key in keys)
    done, in_flight, streak, pending = keys
    assert await a.claim(sent, now) is ACCEPT
    assert 0 < await a.link.call("PTTL", in_flight) <= 20_000
    assert 0 < await a.link.call("PTTL", pending) <= 20_000
    a.settle(sent, now, b"OP-2")
    await settled(a)
    assert 0 < await a.link.call("PTTL", done) <= 60_000
    assert 0 < await a.link.call("PTTL", streak) <= 30_000
    assert await a.link.call("EXISTS", in_flight) == 0


@ensureDeferred
async def test_a_claim_never_settled_expires(instances: Instances) -> None:
    """An instance dies between claim and settle: its reservations stop counting."""
    dead, alive = await instances.windows(claim_ttl=0.3, flood=FloodRule(max_messages=1, gap=30.0))
    now = reactor.seconds()
    assert await dead.claim(message(b"orphan"), now) is ACCEPT
    assert (await alive.claim(message(b"orphan"), now)).reason == "in_flight"
    assert (await alive.claim(message(b"other"), now)).reason == "flood"
    await deferLater(reactor, 0.4)
    later = reactor.seconds()
    assert await alive.claim(message(b"orphan"), later) is ACCEPT
    alive.settle(message(b"x"), later, None)  # not one it claimed: nothing happens
    assert alive.unsettled == 1


@ensureDeferred
async def test_redis_down_fails_the_claim_and_a_lost_settle_is_counted(
    instances: Instances, redis_server: RedisServer
) -> None:
    [a] = await instances.windows(1)
    now = reactor.seconds()
    sent = message(b"outage")
    assert await a.claim(sent, now) is ACCEPT
    redis_server.stop(kill=True)
    a.settle(sent, now, b"OP-3")
    with pytest.raises(RedisUnavailable):
        await a.claim(message(b"next"), now)
    await _until(lambda: a.settles_lost == 1)


@pytest_twisted.ensureDeferred
async def test_outcomes_lost_in_an_outage_are_written_when_redis_answers_again(
    instances: Instances, redis_server: RedisServer
) -> None:
    """A claim Redis made but whose reply never came (Redis paused past the reply timeout) is
    released before the next claim, so the app's retry is not refused as in flight; an
    acceptance whose record was lost is written then, so a retry of it is a duplicate."""
    [a] = await instances.windows(1)
    now = reactor.seconds()
    taken = message(b"taken before the outage")
    assert await a.claim(taken, now) is ACCEPT
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        a.settle(taken, now, b"OP-TAKEN")  # sent, not answered
        retried = message(b"claimed, reply lost")
        with pytest.raises(RedisUnavailable):
            await a.claim(retried, now)  # Redis has it queued: it runs the claim on SIGCONT
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await _until(lambda: a.link.writable)
    assert await a.claim(retried, now) is ACCEPT  # not "in_flight": the lost claim was released
    verdict = await a.claim(message(b"taken before the outage"), now)
    assert verdict.reason == "duplicate"  # the lost acceptance was written


@ensureDeferred
async def test_no_claim_before_the_shared_secret_is_known(instances: Instances) -> None:
    link = await instances.link()
    secret = b""
    windows = SharedWindows(link, PREFIX, DedupRule(), None, instances.metrics, lambda: secret)
    with pytest.raises(RedisUnavailable):
        await windows.claim(message(), reactor.seconds())
    secret = SECRET  # read when the next message is keyed
    assert await windows.claim(message(), reactor.seconds()) is ACCEPT


@ensureDeferred
async def test_reconfigure_takes_a_new_limit(instances: Instances) -> None:
    [a] = await instances.windows(1, flood=FloodRule(max_messages=5))
    now = reactor.seconds()
    assert await a.claim(message(b"1"), now) is ACCEPT
    a.reconfigure(a.dedup, FloodRule(max_messages=1, status=0x58))
    refused = await a.claim(message(b"2"), now)
    assert (refused.reason, refused.status) == ("flood", 0x58)
