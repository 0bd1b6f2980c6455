"""`FilterChain`: accepts decided by action, replacements passed on, held messages given up."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import attrs
import pytest
from prometheus_client import CollectorRegistry

from smpprelay.config import ConcatRule, DedupRule
from smpprelay.filters.base import FilterChain
from smpprelay.filters.concat import ConcatFilter
from smpprelay.filters.dedup import DedupFilter
from smpprelay.message import ACCEPT, Message, Verdict, accept, read_message, reject
from smpprelay.metrics import Metrics
from tests.fakes import captured_logs, is_error, submit_sm
from tests.fakes.rules import ScriptedRule


class Rule(ScriptedRule):
    """A scripted rule that neither settles nor holds parts."""

    settles: ClassVar[bool] = False
    holds_parts: ClassVar[bool] = False

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        raise AssertionError("settles is False")


def message(text: bytes = b"hello") -> Message:
    return read_message("app1", submit_sm(1, short_message=text))


def part(reference: int) -> Message:
    """The first of two parts."""
    udh = bytes((5, 0, 3, reference, 2, 1))
    return read_message("app1", submit_sm(1, esm_class=0x40, short_message=udh + b"part"))


def test_an_equal_accept_verdict_is_an_accept() -> None:
    """D3: a rule accepting with Verdict("accept") (not the ACCEPT object) must not make the
    chain release dedup's reservation and let a duplicate through."""
    metrics = Metrics(CollectorRegistry())
    dedup = DedupFilter(DedupRule(), metrics)
    chain = FilterChain([dedup, Rule(lambda m: Verdict("accept"))], metrics)
    first = message()
    assert chain.check(first, 0.0).action == "accept"
    chain.settle(first, 0.0, b"OP1")
    assert len(dedup) == 1
    assert chain.check(message(), 1.0) == reject(0x45, "duplicate")
    assert len(dedup) == 1


def test_a_plain_accept_is_the_accept_constant() -> None:
    """Nothing replaced: the chain answers with ACCEPT itself, nothing allocated."""
    metrics = Metrics(CollectorRegistry())
    chain = FilterChain([Rule(lambda m: ACCEPT), Rule(lambda m: ACCEPT)], metrics)
    assert chain.check(message(), 0.0) is ACCEPT


def test_a_replacement_goes_to_the_next_rules_and_back_to_the_caller() -> None:
    """A rule's replacement is what later rules check and what the chain's verdict carries;
    the message checked first is left as it was."""
    metrics = Metrics(CollectorRegistry())
    original = message(b"before")
    replaced = attrs.evolve(original, content=b"after")
    later = Rule(lambda m: ACCEPT)
    chain = FilterChain([Rule(lambda m: accept(replaced)), later], metrics)
    verdict = chain.check(original, 0.0)
    assert verdict.action == "accept"
    assert verdict.message is replaced
    assert later.checked == [replaced]
    assert original.content == b"before"


def test_a_rejection_after_a_replacement_carries_the_replacement() -> None:
    """The relay needs the glued message even when a later rule refuses it (its held parts'
    receipts)."""
    metrics = Metrics(CollectorRegistry())
    replaced = attrs.evolve(message(), content=b"glued")
    chain = FilterChain(
        [Rule(lambda m: accept(replaced)), Rule(lambda m: reject(0x45, "flood"))], metrics
    )
    verdict = chain.check(message(), 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == ("reject", 0x45, "flood")
    assert verdict.message is replaced


def test_expire_and_drop_all_collect_what_the_rules_give_up() -> None:
    """The chain hands back the held messages of every rule, and declares that it holds."""
    metrics = Metrics(CollectorRegistry())
    concat = ConcatFilter(ConcatRule(window=10.0), metrics)
    chain = FilterChain([Rule(lambda m: ACCEPT), concat], metrics)
    assert chain.holds_parts
    assert not FilterChain([Rule(lambda m: ACCEPT)], metrics).holds_parts
    first = part(1)
    assert chain.check(first, 0.0).action == "hold"
    assert chain.expire(5.0) == []
    [dropped] = chain.expire(10.5)
    assert (dropped.account, dropped.reason) == ("app1", "expired")
    assert [held.frame for held in dropped.arrived] == [first.frame]
    second = part(2)
    assert chain.check(second, 20.0).action == "hold"
    assert [([p.frame for p in held.arrived], held.reason) for held in chain.drop_all()] == [
        ([second.frame], "shutdown")
    ]
    assert len(concat) == 0


class Plain(ScriptedRule):
    """A rule that accepts every unconcatenated message unseen (as the concat rule does)."""

    name: ClassVar[str] = "plain"
    settles: ClassVar[bool] = False
    holds_parts: ClassVar[bool] = False
    passes_plain: ClassVar[bool] = True


class Settling(ScriptedRule):
    """A rule that settles (and may fail to) but holds no parts."""

    name: ClassVar[str] = "settling"
    holds_parts: ClassVar[bool] = False

    def __init__(self, decide: Callable[[Message], Verdict], fails: bool = False) -> None:
        super().__init__(decide)
        self.fails = fails

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        super().settle(message, now, message_id)
        if self.fails:
            raise RuntimeError("settle bug")


def decisions(metrics: Metrics, rule: str, action: str, reason: str = "") -> float:
    labels = {"filter": rule, "action": action, "reason": reason}
    value = metrics.registry.get_sample_value("smpprelay_filter_decisions_total", labels)
    return value or 0.0


def test_a_rule_that_passes_plain_messages_is_not_called_for_one_but_counted() -> None:
    """passes_plain: a plain message skips the rule (still counted as its accept); a part
    does not; a later rejection counts the skipped rule's accept too."""
    metrics = Metrics(CollectorRegistry())
    plain = Plain(lambda m: ACCEPT)
    verdicts = [ACCEPT, reject(0x45, "flood")]
    chain = FilterChain([plain, Rule(lambda m: verdicts.pop(0))], metrics)
    assert chain.check(message(), 0.0) is ACCEPT
    assert plain.checked == []
    assert chain.check(message(), 0.0).reason == "flood"
    assert plain.checked == []
    chain.flush_counts()
    assert decisions(metrics, "plain", "accept") == 2
    verdicts.append(ACCEPT)
    first = part(1)
    assert chain.check(first, 0.0) is ACCEPT
    assert plain.checked == [first]


@pytest.mark.logs_errors
def test_a_failing_rule_rejects_and_the_rules_before_it_release() -> None:
    """A rule that raises in check: ESME_RSYSERR (rule_error), logged, and the rules before it
    are told the message did not get through."""
    metrics = Metrics(CollectorRegistry())
    earlier = Settling(lambda m: ACCEPT)

    def broken(m: Message) -> Verdict:
        raise RuntimeError("check bug")

    chain = FilterChain([earlier, Rule(broken)], metrics)
    checked = message()
    with captured_logs(is_error) as failures:
        verdict = chain.check(checked, 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == ("reject", 0x08, "rule_error")
    assert earlier.settled == [(checked, None)]
    assert decisions(metrics, "scripted", "reject", "rule_error") == 1
    assert [(str(event["log_failure"].value), event["rule"]) for event in failures] == [
        ("check bug", "scripted")
    ]


@pytest.mark.logs_errors
def test_a_failing_rule_after_a_replacement_rejects_with_the_replacement() -> None:
    """The slow path too: a replacement, then a rule that raises."""
    metrics = Metrics(CollectorRegistry())
    replaced = attrs.evolve(message(), content=b"glued")

    def broken(m: Message) -> Verdict:
        raise RuntimeError("check bug")

    chain = FilterChain([Rule(lambda m: accept(replaced)), Rule(broken)], metrics)
    with captured_logs(is_error) as failures:
        verdict = chain.check(message(), 0.0)
    assert (verdict.action, verdict.reason, verdict.message) == ("reject", "rule_error", replaced)
    assert len(failures) == 1


@pytest.mark.logs_errors
def test_a_rule_failing_to_settle_is_logged_and_the_next_ones_still_settle() -> None:
    metrics = Metrics(CollectorRegistry())
    rules = [Settling(lambda m: ACCEPT, fails=index == 1) for index in range(3)]
    chain = FilterChain(list(rules), metrics)
    settled = message()
    assert chain.check(settled, 0.0) is ACCEPT
    with captured_logs(is_error) as failures:
        chain.settle(settled, 1.0, b"OP1")
    assert [rule.settled for rule in rules] == [[(settled, b"OP1")]] * 3
    assert [(str(event["log_failure"].value), event["rule"]) for event in failures] == [
        ("settle bug", "settling")
    ]
