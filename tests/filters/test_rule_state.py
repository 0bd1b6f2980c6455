"""The dedup and flood windows across a restart: written behind (`window_segment`), put back
(`restore_windows`), and the dedup key that means the same in every process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from smpprelay.config import DedupRule, FiltersConfig, FloodRule
from smpprelay.filters import build_chain, dedup
from smpprelay.filters.dedup import DedupFilter
from smpprelay.filters.flood import FloodFilter
from smpprelay.message import ACCEPT, Message, Verdict, read_message, reject
from smpprelay.metrics import Metrics
from smpprelay.store import WindowEntry
from tests.fakes import captured_logs, submit_sm
from tests.fakes.rules import written_behind

DUPLICATE = reject(0x45, "duplicate")
FLOOD = reject(0x45, "flood")
SECRET = b"0123456789abcdef0123456789abcdef"
NUMBER = b"79161234567"
ROOT = Path(__file__).resolve().parents[2]


def make(
    text: bytes = b"Your code is 4711.",
    destination: bytes = NUMBER,
    account: str = "app1",
    source: bytes = b"Bank",
) -> Message:
    frame = submit_sm(7, short_message=text, destination_addr=destination, source_addr=source)
    return read_message(account, frame)


def dedup_rule(secret: bytes | None = SECRET, fast_entries: int = 1 << 18, **config: Any) -> Any:
    return DedupFilter(
        DedupRule(fast_entries=fast_entries, **config), Metrics(CollectorRegistry()), secret
    )


def flood_rule(fast_entries: int = 1 << 18, **config: Any) -> FloodFilter:
    return FloodFilter(FloodRule(fast_entries=fast_entries, **config), Metrics(CollectorRegistry()))


def accepted(rule: DedupFilter | FloodFilter, message: Message, now: float, op: bytes) -> None:
    assert rule.check(message, now) == ACCEPT
    rule.settle(message, now, op)


TIERS = pytest.mark.parametrize("fast_entries", [1 << 18, 0], ids=["dict-tier", "records"])


# --- dedup ------------------------------------------------------------------------------------


@TIERS
def test_a_restored_dedup_window_rejects_the_duplicate(fast_entries: int) -> None:
    """Written behind by one rule, put back into a fresh one with the same secret: duplicate."""
    first = dedup_rule(fast_entries=fast_entries)
    message = make()
    accepted(first, message, 100.0, b"op-1")
    entries = written_behind(first)
    assert entries == [WindowEntry("dedup", first.key(message), 100.0, 160.0, message_id=b"op-1")]
    second = dedup_rule(fast_entries=fast_entries)
    assert second.restore_windows(entries, 101.0) == 1
    assert second.check(make(), 159.9) == DUPLICATE
    assert second.check(make(), 160.0) == ACCEPT


@TIERS
def test_a_restored_window_replays_the_id_the_app_was_given(fast_entries: int) -> None:
    first = dedup_rule(fast_entries=fast_entries, action="replay")
    message = make()
    message.app_message_id = b"relay-7"
    accepted(first, message, 100.0, b"op-1")
    second = dedup_rule(fast_entries=fast_entries, action="replay")
    assert second.restore_windows(written_behind(first), 101.0) == 1
    assert second.check(make(), 120.0) == Verdict("replay", message_id=b"relay-7")


def test_another_secret_does_not_match() -> None:
    first = dedup_rule()
    accepted(first, make(), 100.0, b"op-1")
    other = dedup_rule(secret=b"another secret")
    assert other.restore_windows(written_behind(first), 101.0) == 1
    assert other.check(make(), 102.0) == ACCEPT


def test_expired_entries_and_other_rules_entries_are_skipped() -> None:
    key = dedup_rule().key(make())
    entries = [
        WindowEntry("dedup", key, 10.0, 70.0, message_id=b"old"),  # ended at 70
        WindowEntry("flood", NUMBER, 60.0, 90.0, streak=3),
        WindowEntry("dedup", b"short", 60.0, 120.0, message_id=b"bad"),  # not a dedup key
    ]
    rule = dedup_rule()
    assert rule.restore_windows(entries, 70.0) == 0
    assert len(rule) == 0
    # Written with a longer window than this rule's: this one decides.
    long = [WindowEntry("dedup", key, 10.0, 1000.0, message_id=b"x")]
    assert rule.restore_windows(long, 70.0) == 0


def test_restore_takes_entries_in_any_order() -> None:
    rule = dedup_rule()
    keys = [rule.key(make(b"m%d" % n)) for n in range(3)]
    entries = [
        WindowEntry("dedup", k, at, at + 60.0, message_id=b"")
        for k, at in zip(keys, (30.0, 10.0, 20.0), strict=True)
    ]
    assert rule.restore_windows(entries, 50.0) == 3
    assert rule.forget(70.0) == 1  # the one at 10.0 goes first
    assert rule.check(make(b"m1"), 71.0) == ACCEPT
    assert rule.check(make(b"m0"), 71.0) == DUPLICATE


def test_entries_are_drained() -> None:
    """Each call gives only what was accepted since the last; released messages never."""
    rule = dedup_rule()
    accepted(rule, make(b"one"), 1.0, b"op-1")
    assert len(written_behind(rule)) == 1
    assert written_behind(rule) == []
    released = make(b"two")
    assert rule.check(released, 2.0) == ACCEPT
    rule.settle(released, 2.0, None)
    accepted(rule, make(b"three"), 3.0, b"op-3")
    assert [entry.at for entry in written_behind(rule)] == [3.0]


def test_uncollected_entries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody calling `window_segment` costs at most ``UNCOLLECTED_MAX`` keys: the oldest go."""
    monkeypatch.setattr(dedup, "UNCOLLECTED_MAX", 2)
    rule = dedup_rule()
    for n in range(4):
        accepted(rule, make(b"m%d" % n), float(n), b"op")
    with captured_logs(lambda event: True) as events:
        rule.forget(4.0)
    assert any("not written behind" in event.get("log_format", "") for event in events)
    assert [entry.at for entry in written_behind(rule)] == [2.0, 3.0]


def test_the_keyed_digest_keeps_fields_apart() -> None:
    """Length-prefixed fields: moving a byte from one field to the next changes the key."""
    rule = dedup_rule(scope="client")
    base = rule.key(make(b"c", destination=b"123", source=b"ab"))
    assert rule.key(make(b"c", destination=b"123", source=b"ab")) == base
    assert rule.key(make(b"c", destination=b"b123", source=b"a")) != base
    assert rule.key(make(b"3c", destination=b"12", source=b"ab")) != base
    assert rule.key(make(b"c", destination=b"123", source=b"ab", account="app2")) != base
    assert len(base) == dedup.KEY_SIZE
    assert base[-4:] == (1).to_bytes(4, "little")  # the content's length, as without a secret
    # Under scope: upstream the account does not count.
    upstream = dedup_rule()
    assert upstream.key(make(account="a")) == upstream.key(make(account="b"))


def test_without_a_secret_the_key_is_the_interpreters_hash() -> None:
    message = make()
    plain = dedup_rule(secret=None)
    assert plain.key(message) == dedup._KEY.pack(
        hash(("", b"Bank", NUMBER, 0, message.content)), len(message.content)
    )
    assert dedup_rule().key(message) != plain.key(message)


def test_a_long_secret_is_digested_down() -> None:
    assert dedup_rule(secret=b"s" * 100).key(make()) != dedup_rule(secret=b"s" * 64).key(make())


_KEY_IN_A_PROCESS = """
from prometheus_client import CollectorRegistry
from smpprelay.config import DedupRule
from smpprelay.filters.dedup import DedupFilter
from smpprelay.message import read_message
from smpprelay.metrics import Metrics
from tests.fakes import submit_sm

frame = submit_sm(7, short_message=b"Hello", destination_addr=b"79161234567", source_addr=b"Bank")
message = read_message("app1", frame)
for secret in (b"0123456789abcdef0123456789abcdef", None):
    rule = DedupFilter(DedupRule(scope="client"), Metrics(CollectorRegistry()), secret)
    print(rule.key(message).hex())
"""


def key_in_a_process(hash_seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _KEY_IN_A_PROCESS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.split()


def test_the_keyed_digest_is_the_same_in_another_process() -> None:
    """Two processes with different hash seeds: the keyed keys agree (and match this one's),
    the interpreter's hash does not."""
    first, second = key_in_a_process("1"), key_in_a_process("2")
    here = dedup_rule(scope="client").key(make(b"Hello"))
    assert first[0] == second[0] == here.hex()
    assert first[1] != second[1]


# --- flood ------------------------------------------------------------------------------------


@TIERS
def test_a_restored_streak_continues(fast_entries: int) -> None:
    """A streak of 50 put back: the next message within the gap is refused; after it, a new one."""
    first = flood_rule(fast_entries)
    for n in range(50):
        accepted(first, make(), 100.0 + n / 10, b"op")
    assert first.check(make(), 105.0) == FLOOD
    entries = written_behind(first)
    assert entries == [WindowEntry("flood", NUMBER, 104.9, 134.9, streak=50)]
    second = flood_rule(fast_entries)
    assert second.restore_windows(entries, 110.0) == 1
    assert second.check(make(), 134.8) == FLOOD
    assert second.check(make(), 134.9) == ACCEPT


def test_flood_entries_are_drained_and_keyed_per_account_under_scope_client() -> None:
    rule = flood_rule(scope="client")
    accepted(rule, make(account="app1"), 1.0, b"op")
    accepted(rule, make(account="app1"), 2.0, b"op")
    assert written_behind(rule) == [WindowEntry("flood", b"app1\0" + NUMBER, 2.0, 32.0, streak=2)]
    assert written_behind(rule) == []
    accepted(rule, make(account="app2"), 3.0, b"op")
    assert [entry.key for entry in written_behind(rule)] == [b"app2\0" + NUMBER]


def test_ended_streaks_are_skipped() -> None:
    entries = [
        WindowEntry("flood", b"1", 10.0, 40.0, streak=5),  # gap over at 40
        WindowEntry("flood", b"2", 20.0, 50.0, streak=5),
        WindowEntry("dedup", bytes(12), 20.0, 80.0, message_id=b"x"),
    ]
    rule = flood_rule(max_messages=5)
    assert rule.restore_windows(entries, 40.0) == 1
    assert rule.check(make(destination=b"1"), 41.0) == ACCEPT
    assert rule.check(make(destination=b"2"), 41.0) == FLOOD


# --- the chain --------------------------------------------------------------------------------


def test_the_chain_writes_behind_and_restores_every_rule() -> None:
    config = FiltersConfig()
    metrics = Metrics(CollectorRegistry())
    chain = build_chain(config, False, metrics, SECRET)
    message = make()
    assert chain.check(message, 10.0) == ACCEPT
    chain.settle(message, 10.0, b"op-1")
    entries = written_behind(chain)
    assert sorted(entry.rule for entry in entries) == ["dedup", "flood"]
    assert written_behind(chain) == []
    fresh = build_chain(config, False, Metrics(CollectorRegistry()), SECRET)
    assert fresh.restore_windows(entries, 11.0) == 2
    assert fresh.check(make(), 12.0) == DUPLICATE


# --- a property: decisions survive a round trip -----------------------------------------------

Step = tuple[int, int, float, bool, bool]  # text, number, seconds later, operator accepts, collect

steps = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(0, 1),
        # Mostly close together, so that streaks reach the limit; now and then at the edges.
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 0.5, 1.0, 29.9, 30.0, 59.9, 60.0]),
        st.sampled_from([True, True, True, False]),  # the operator mostly accepts
        st.booleans(),
    ),
    max_size=40,
)


def run(rules: tuple[DedupFilter, FloodFilter], step: Step, now: float, n: int) -> list[Verdict]:
    text, number, _, takes, _ = step
    message = make(b"text %d" % text, destination=b"7916%d" % number)
    verdicts = []
    for rule in rules:
        verdict = rule.check(message, now)
        verdicts.append(verdict)
        if verdict == ACCEPT:
            rule.settle(message, now, b"op-%d" % n if takes else None)
    return verdicts


@given(
    before=steps,
    after=steps,
    fast_entries=st.sampled_from([1 << 18, 0]),
)
def test_decisions_survive_a_round_trip(
    before: list[Step], after: list[Step], fast_entries: int
) -> None:
    """Accept a random sequence, write behind (at random moments), put back into fresh rules:
    the fresh rules decide every later message as the original ones do."""

    def fresh() -> tuple[DedupFilter, FloodFilter]:
        return (
            # Small tables: a table of the default size takes milliseconds to build.
            dedup_rule(fast_entries=fast_entries, action="replay", max_entries=1000),
            flood_rule(fast_entries, max_messages=2, max_entries=1000),
        )

    original = fresh()
    store: dict[tuple[str, bytes], WindowEntry] = {}  # a store keeps each key's newest entry

    def collect() -> None:
        for rule in original:
            for entry in written_behind(rule):
                store[entry.rule, entry.key] = entry

    now = 1000.0
    for n, step in enumerate(before):
        now += step[2]
        run(original, step, now, n)
        if step[4]:
            collect()
    collect()
    restored = fresh()
    rows = sorted(store.values(), key=lambda entry: entry.at)
    for rule in restored:
        rule.restore_windows(rows, now)
    for n, step in enumerate(after, start=len(before)):
        now += step[2]
        assert run(restored, step, now, n) == run(original, step, now, n)
