"""`FilterChain`: accepts decided by action, replacements passed on, held messages given up."""

from __future__ import annotations

from typing import ClassVar

import attrs
from prometheus_client import CollectorRegistry

from smpprelay.config import ConcatRule, DedupRule
from smpprelay.filters.base import FilterChain
from smpprelay.filters.concat import ConcatFilter
from smpprelay.filters.dedup import DedupFilter
from smpprelay.message import ACCEPT, Message, Verdict, accept, read_message, reject
from smpprelay.metrics import Metrics
from tests.fakes import submit_sm
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
