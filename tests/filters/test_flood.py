"""The flood rule: the streak's length and gap edges, in-flight counting, scope, bounds."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from prometheus_client import CollectorRegistry

from smpprelay.config import FloodRule
from smpprelay.filters.flood import FloodFilter
from smpprelay.message import ACCEPT, Message, read_message, reject
from smpprelay.metrics import Metrics
from tests.fakes import submit_sm

FLOOD = reject(0x45, "flood")
NUMBER = b"79161234567"


def make(account: str = "app1", destination: bytes = NUMBER, text: bytes = b"hi") -> Message:
    """A submit to ``destination`` as the rules see it."""
    return read_message(account, submit_sm(7, destination_addr=destination, short_message=text))


# Every test runs with the entries in the dict tier, and again with each entry moved at once
# into the compact records: the rule must behave the same whichever tier holds its state.
_TIER: dict[str, int] = {}


@pytest.fixture(autouse=True, params=[1 << 18, 0], ids=["dict-tier", "records"])
def _tier(request: pytest.FixtureRequest) -> None:
    _TIER["fast_entries"] = request.param


class Rule:
    """A flood rule on its own metrics registry."""

    def __init__(self, **config: Any) -> None:
        self.registry = CollectorRegistry()
        config.setdefault("fast_entries", _TIER["fast_entries"])
        self.filter = FloodFilter(FloodRule(**config), Metrics(self.registry))

    def check(self, now: float, **message: Any) -> bool:
        """Submit at ``now``; if it passes, the operator accepts it at once. True if it passed."""
        candidate = make(**message)
        verdict = self.filter.check(candidate, now)
        if verdict == ACCEPT:
            self.filter.settle(candidate, now, b"op")
            return True
        assert verdict == FLOOD
        return False

    def streak(self, times: list[float], **message: Any) -> None:
        """Messages at ``times``, every one of them accepted."""
        for now in times:
            assert self.check(now, **message), f"rejected at {now}"

    def gauge(self) -> float | None:
        return self.registry.get_sample_value("smpprelay_flood_entries")


# --- the streak's length --------------------------------------------------------------------


def test_fiftieth_accepted_fifty_first_rejected() -> None:
    """Fifty messages 1 s apart pass; the 51st within 30 s of the 50th is rejected."""
    rule = Rule()
    rule.streak([float(second) for second in range(49)])
    assert rule.check(49.0)  # the 50th
    assert not rule.check(49.5)  # the 51st
    assert not rule.check(78.999)


def test_rejection_answers_the_configured_status() -> None:
    """The status is configuration, the reason is flood."""
    rule = Rule(max_messages=1, status=0x401)
    rule.streak([0.0])
    assert rule.filter.check(make(), 1.0) == reject(0x401, "flood")


def test_gap_just_under_the_limit_continues_the_streak() -> None:
    """Messages 29.999 s apart are one streak: the 51st is rejected."""
    rule = Rule()
    rule.streak([index * 29.999 for index in range(50)])
    assert not rule.check(50 * 29.999)


def test_gap_of_exactly_the_limit_starts_over() -> None:
    """After exactly 30 s with nothing accepted the streak starts over: 50 more pass."""
    rule = Rule()
    rule.streak([float(second) for second in range(50)])
    assert not rule.check(78.999)
    rule.streak([79.0 + second for second in range(50)])
    assert not rule.check(128.5)


def test_fractional_gap_and_small_maximum() -> None:
    """The gap may be fractional; with max_messages 2 the third in the streak is rejected."""
    rule = Rule(max_messages=2, gap=0.5)
    rule.streak([0.0, 0.25])
    assert not rule.check(0.5)
    assert not rule.check(0.7)
    assert rule.check(0.75)  # 0.5 s after the last accepted one


def test_rejected_attempts_do_not_extend_the_block() -> None:
    """Retrying every 0.1 s for 40 s: rejected until 30 s after the last accepted message."""
    rule = Rule()
    rule.streak([index * 0.25 for index in range(50)])  # the last one at 12.25
    passed_at = None
    for tenth in range(1, 401):
        now = 12.25 + tenth / 10
        if rule.check(now):
            passed_at = now
            break
    assert passed_at == 42.25


def test_messages_to_other_numbers_count_apart() -> None:
    """A full streak to one number does not hold back another."""
    rule = Rule()
    rule.streak([float(second) for second in range(50)])
    assert not rule.check(50.0)
    assert rule.check(50.0, destination=b"79161234568")


def test_a_glued_message_counts_once() -> None:
    """A concatenated message passes as one message, whatever its number of parts."""
    rule = Rule(max_messages=2)
    parts = tuple(make(text=b"part %d" % index) for index in range(3))
    whole = attrs.evolve(parts[-1], content=b"part 0part 1part 2", parts=parts)
    assert rule.filter.check(whole, 0.0) == ACCEPT
    rule.filter.settle(whole, 0.0, b"relay-1")
    assert rule.check(1.0)
    assert not rule.check(2.0)


# --- in flight ------------------------------------------------------------------------------


def test_concurrent_submits_cannot_all_pass() -> None:
    """Sixty submits in flight to one number at once: fifty pass, ten are rejected."""
    rule = Rule()
    verdicts = [rule.filter.check(make(text=b"%d" % index), 0.0) for index in range(60)]
    assert verdicts == [ACCEPT] * 50 + [FLOOD] * 10


def test_retry_after_a_temporary_failure_is_accepted() -> None:
    """A message the operator did not accept (settle None) frees its place in the streak."""
    rule = Rule()
    rule.streak([float(second) for second in range(49)])
    last = make()
    assert rule.filter.check(last, 49.0) == ACCEPT
    assert rule.filter.check(make(), 49.1) == FLOOD  # the 50th is still in flight
    rule.filter.settle(last, 50.0, None)
    assert rule.check(50.5)
    assert not rule.check(50.6)


def test_message_settled_after_the_gap_starts_a_new_streak() -> None:
    """A message accepted 30 s or more after the previous acceptance starts over at one."""
    rule = Rule(max_messages=2)
    rule.streak([0.0, 1.0])
    late = make()
    assert rule.filter.check(late, 31.0) == ACCEPT
    rule.filter.settle(late, 31.5, b"op")
    assert rule.check(32.0)
    assert not rule.check(33.0)


def test_in_flight_messages_are_not_expired() -> None:
    """A message in flight keeps its place through expire(); releasing it frees it."""
    rule = Rule(max_messages=1)
    message = make()
    assert rule.filter.check(message, 0.0) == ACCEPT
    rule.filter.expire(1000.0)
    assert len(rule.filter) == 1
    assert rule.filter.check(make(), 1000.0) == FLOOD
    rule.filter.settle(message, 1000.0, None)
    assert len(rule.filter) == 0


# --- scope ----------------------------------------------------------------------------------


def test_upstream_scope_counts_every_app_together() -> None:
    """By default the count per number covers all apps."""
    rule = Rule(max_messages=2)
    assert rule.check(0.0, account="app1")
    assert rule.check(1.0, account="app2")
    assert not rule.check(2.0, account="app3")


def test_client_scope_counts_each_app_apart() -> None:
    """With scope client, each app account has its own streak per number."""
    rule = Rule(max_messages=2, scope="client")
    rule.streak([0.0, 1.0], account="app1")
    assert not rule.check(2.0, account="app1")
    assert rule.check(2.0, account="app2")


@pytest.mark.parametrize("scope", ["upstream", "client"])
def test_check_and_settle_keep_the_streak_under_key(scope: str) -> None:
    """check and settle (which write `key` out) reserve, count and release under `key`."""
    rule = Rule(max_messages=5, scope=scope)
    accepted, released = make(account="app1"), make(account="app1")
    key = rule.filter.key(accepted)
    assert rule.filter.check(accepted, 0.0) == ACCEPT
    assert rule.filter.check(released, 0.0) == ACCEPT
    assert rule.filter.streaks.count(key, 0.0) == 2  # both in flight under key
    rule.filter.settle(accepted, 1.0, b"op")
    rule.filter.settle(released, 1.0, None)
    assert rule.filter.streaks.streak(key) == (1.0, 1)
    assert rule.filter.streaks.count(key, 1.0) == 1  # nothing left in flight


# --- bounds and expiry ----------------------------------------------------------------------


def test_max_entries_evicts_the_oldest_streak() -> None:
    """Past max_entries the number with the oldest acceptance is forgotten and counted."""
    rule = Rule(max_messages=1, max_entries=2)
    for second, number in enumerate((b"100", b"200", b"300")):
        assert rule.check(float(second), destination=number)
    assert len(rule.filter) == 2
    assert rule.filter.streaks.evicted == 1
    assert not rule.check(3.0, destination=b"200")
    assert not rule.check(3.0, destination=b"300")
    assert rule.check(3.0, destination=b"100")


def test_a_new_acceptance_makes_a_streak_the_newest() -> None:
    """Eviction goes by the last acceptance, not the first."""
    rule = Rule(max_messages=5, max_entries=2)
    assert rule.check(0.0, destination=b"100")
    assert rule.check(1.0, destination=b"200")
    assert rule.check(2.0, destination=b"100")
    assert rule.check(3.0, destination=b"300")  # evicts 200, whose last message is oldest
    assert rule.filter.streaks.count(b"100", 3.0) == 2
    assert rule.filter.streaks.count(b"200", 3.0) == 0


def test_expire_forgets_streaks_that_ended() -> None:
    """expire() drops streaks with nothing accepted for 30 s, keeps the rest, sets the gauge."""
    rule = Rule()
    assert rule.check(0.0, destination=b"100")
    assert rule.check(10.0, destination=b"200")
    assert rule.check(20.0, destination=b"100")
    assert rule.filter.forget(39.999) == 0
    assert rule.gauge() == 2
    assert rule.filter.forget(40.0) == 1  # 200
    assert len(rule.filter) == 1
    assert rule.gauge() == 1
    assert rule.filter.forget(50.0) == 1  # 100, last accepted at 20
    assert len(rule.filter) == 0
    assert rule.gauge() == 0


def test_expire_keeps_live_streaks() -> None:
    """A streak whose last acceptance is less than the gap ago survives expire()."""
    rule = Rule(max_messages=1)
    assert rule.check(0.0, destination=b"100")
    assert rule.check(6.0, destination=b"200")
    assert rule.filter.forget(30.5) == 1
    assert len(rule.filter) == 1
    assert not rule.check(30.5, destination=b"200", text=b"again")
    assert rule.check(30.5, destination=b"100", text=b"again")
