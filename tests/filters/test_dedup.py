"""The duplicate rule: what is identical, the window's edges, in-flight reservations, bounds."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from prometheus_client import CollectorRegistry

from smpprelay.config import DedupRule
from smpprelay.filters.dedup import DedupFilter
from smpprelay.message import ACCEPT, Message, Verdict, read_message, reject
from smpprelay.metrics import Metrics
from smpprelay.store.windows import DedupWindow
from tests.fakes import submit_sm

DUPLICATE = reject(0x45, "duplicate")
IN_FLIGHT = reject(0x45, "in_flight")
TEXT = b"Your code is 4711. Do not share it with anyone."


def make(account: str = "app1", **fields: Any) -> Message:
    """A submit as the rules see it, read back from its frame."""
    fields.setdefault("short_message", TEXT)
    fields.setdefault("destination_addr", b"79161234567")
    return read_message(account, submit_sm(7, **fields))


def glued(reference: int, text: bytes) -> Message:
    """A two-part message as the concat rule hands it on: its parts and the glued content."""
    half = len(text) // 2
    parts = tuple(
        make(
            esm_class=0x40,
            short_message=bytes((5, 0, 3, reference, 2, sequence)) + chunk,
        )
        for sequence, chunk in ((1, text[:half]), (2, text[half:]))
    )
    return attrs.evolve(parts[-1], content=text, parts=parts)


# Every test runs with the entries in the dict tier, and again with each entry moved at once
# into the compact records: the rule must behave the same whichever tier holds its state.
_TIER: dict[str, int] = {}


@pytest.fixture(autouse=True, params=[1 << 18, 0], ids=["dict-tier", "records"])
def _tier(request: pytest.FixtureRequest) -> None:
    _TIER["fast_entries"] = request.param


class Rule:
    """A dedup rule on its own metrics registry."""

    def __init__(self, **config: Any) -> None:
        self.registry = CollectorRegistry()
        config.setdefault("fast_entries", _TIER["fast_entries"])
        self.filter = DedupFilter(DedupRule(**config), Metrics(self.registry))

    def accepted(self, message: Message, now: float, message_id: bytes = b"op-1") -> None:
        """``message`` passes at ``now`` and the operator accepts it at once."""
        assert self.filter.check(message, now) == ACCEPT
        self.filter.settle(message, now, message_id)

    def gauge(self) -> float | None:
        return self.registry.get_sample_value("smpprelay_dedup_entries")


# --- the window's edges ---------------------------------------------------------------------


def test_duplicate_just_inside_the_window_is_rejected() -> None:
    """An identical message 59.9 s after the accepted one is a duplicate."""
    rule = Rule()
    rule.accepted(make(), 100.0)
    assert rule.filter.check(make(), 159.9) == DUPLICATE


def test_duplicate_just_after_the_window_is_accepted() -> None:
    """An identical message 60.1 s after the accepted one is sent."""
    rule = Rule()
    rule.accepted(make(), 100.0)
    assert rule.filter.check(make(), 160.1) == ACCEPT


def test_duplicate_at_exactly_the_window_is_accepted() -> None:
    """The window is strict: 60 s after, the message is no longer a duplicate."""
    rule = Rule()
    rule.accepted(make(), 100.0)
    assert rule.filter.check(make(), 159.999) == DUPLICATE
    assert rule.filter.check(make(), 160.0) == ACCEPT


def test_fractional_window() -> None:
    """The window may be fractional."""
    rule = Rule(window=0.5)
    rule.accepted(make(), 10.0)
    assert rule.filter.check(make(), 10.25) == DUPLICATE
    assert rule.filter.check(make(), 10.5) == ACCEPT


def test_window_runs_from_the_operators_acceptance() -> None:
    """The window starts when the operator accepted, not when the message passed the rule."""
    rule = Rule()
    message = make()
    assert rule.filter.check(message, 0.0) == ACCEPT
    rule.filter.settle(message, 5.0, b"op-1")
    assert rule.filter.check(make(), 64.9) == DUPLICATE
    assert rule.filter.check(make(), 65.0) == ACCEPT


def test_rejected_duplicates_do_not_extend_the_window() -> None:
    """Repeating a duplicate does not move the window: it ends 60 s after the acceptance."""
    rule = Rule()
    rule.accepted(make(), 0.0)
    for tenth in range(1, 600):
        assert rule.filter.check(make(), tenth / 10) == DUPLICATE
    assert rule.filter.check(make(), 60.0) == ACCEPT


# --- only accepted messages count -----------------------------------------------------------


def test_identical_message_in_flight_is_rejected() -> None:
    """While the first is on its way to the operator, an identical one is not sent as well."""
    rule = Rule()
    assert rule.filter.check(make(), 0.0) == ACCEPT
    assert rule.filter.check(make(), 0.5) == IN_FLIGHT
    assert rule.filter.check(make(), 120.0) == IN_FLIGHT


def test_retry_after_a_temporary_failure_is_accepted() -> None:
    """A message the operator did not accept (settle None) does not enter the window."""
    rule = Rule()
    first = make()
    assert rule.filter.check(first, 0.0) == ACCEPT
    rule.filter.settle(first, 1.0, None)
    retry = make()
    assert rule.filter.check(retry, 3.0) == ACCEPT
    rule.filter.settle(retry, 3.1, b"op-1")
    assert rule.filter.check(make(), 4.0) == DUPLICATE


def test_duplicate_is_not_reserved() -> None:
    """A rejected duplicate leaves no reservation behind: only the accepted entry remains."""
    rule = Rule()
    rule.accepted(make(), 0.0)
    assert rule.filter.check(make(), 1.0) == DUPLICATE
    assert len(rule.filter) == 1
    assert rule.filter.check(make(), 61.0) == ACCEPT


# --- replay ---------------------------------------------------------------------------------


def test_replay_answers_the_operators_id() -> None:
    """With action replay, a duplicate is answered with the id the original was given."""
    rule = Rule(action="replay")
    rule.accepted(make(), 0.0, b"0A1B2C")
    assert rule.filter.check(make(), 30.0) == Verdict("replay", message_id=b"0A1B2C")
    assert rule.filter.check(make(), 60.0) == ACCEPT


def test_replay_answers_the_relays_id_when_the_app_was_given_one() -> None:
    """A glued message is known to the app by the relay's id: that is the one replayed."""
    rule = Rule(action="replay")
    message = glued(0x42, TEXT)
    assert rule.filter.check(message, 0.0) == ACCEPT
    message.app_message_id = b"relay-9"
    rule.filter.settle(message, 0.0, b"relay-9")
    again = glued(0x43, TEXT)
    assert rule.filter.check(again, 10.0) == Verdict("replay", message_id=b"relay-9")


def test_replay_prefers_the_app_id_over_the_operators() -> None:
    """When settle gets the operator's id but the app was given another, the app's is kept."""
    rule = Rule(action="replay")
    message = make()
    assert rule.filter.check(message, 0.0) == ACCEPT
    message.app_message_id = b"app-id"
    rule.filter.settle(message, 0.0, b"operator-id")
    assert rule.filter.check(make(), 1.0) == Verdict("replay", message_id=b"app-id")


def test_replay_after_expiry_answers_the_new_id() -> None:
    """Expiry forgets the original's id with it: the next copy is sent and its id replayed."""
    rule = Rule(action="replay")
    rule.accepted(make(), 0.0, b"first")
    assert rule.filter.forget(60.0) == 1
    assert len(rule.filter) == 0
    rule.accepted(make(), 61.0, b"second")
    assert rule.filter.check(make(), 62.0) == Verdict("replay", message_id=b"second")


def test_replay_still_rejects_while_in_flight() -> None:
    """With no id yet, an identical message in flight is rejected even in replay mode."""
    rule = Rule(action="replay", status=0x401)
    assert rule.filter.check(make(), 0.0) == ACCEPT
    assert rule.filter.check(make(), 0.1) == reject(0x401, "in_flight")


def test_configured_status_is_answered() -> None:
    """The status answered for a duplicate is configuration."""
    rule = Rule(status=0x400)
    rule.accepted(make(), 0.0)
    assert rule.filter.check(make(), 1.0) == reject(0x400, "duplicate")


# --- what counts as identical ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"source_addr": b"OtherBrand"},
        {"destination_addr": b"79161234568"},
        {"data_coding": 4},
        {"short_message": TEXT + b"!"},
        {"short_message": TEXT[:-1]},
    ],
    ids=["source", "destination", "data_coding", "longer-content", "shorter-content"],
)
def test_a_different_field_is_not_a_duplicate(change: dict[str, Any]) -> None:
    """Source, destination, data_coding and content each make a message different."""
    rule = Rule()
    rule.accepted(make(), 0.0)
    assert rule.filter.check(make(**change), 1.0) == ACCEPT


def test_other_fields_do_not_count() -> None:
    """Fields outside the key (sequence, registered_delivery, TON/NPI) do not hide a duplicate."""
    rule = Rule()
    rule.accepted(make(), 0.0)
    other = read_message(
        "app1",
        submit_sm(
            99,
            short_message=TEXT,
            destination_addr=b"79161234567",
            registered_delivery=0,
            dest_ton=0,
            source_ton=1,
        ),
    )
    assert rule.filter.check(other, 1.0) == DUPLICATE


def test_fields_are_kept_apart_in_the_key() -> None:
    """Moving octets from the source to the destination makes another message."""
    rule = Rule()
    rule.accepted(make(source_addr=b"123", destination_addr=b"45"), 0.0)
    assert rule.filter.check(make(source_addr=b"12", destination_addr=b"345"), 1.0) == ACCEPT


def test_glued_messages_compare_by_content_not_reference() -> None:
    """Two concatenated messages with the same glued text but other references are identical."""
    rule = Rule()
    rule.accepted(glued(0x42, TEXT), 0.0)
    assert rule.filter.check(glued(0x43, TEXT), 1.0) == DUPLICATE
    assert rule.filter.check(glued(0x42, TEXT + b"."), 1.0) == ACCEPT


def test_key_does_not_grow_with_the_text() -> None:
    """Every message is remembered by a digest of the same small size."""
    rule = Rule()
    short, long = make(short_message=b"a"), make(data_coding=4, short_message=bytes(254))
    assert len(rule.filter.key(short)) == len(rule.filter.key(long)) == 12


# --- scope ----------------------------------------------------------------------------------


def test_upstream_scope_is_shared_by_every_app() -> None:
    """By default one window covers all apps: another app's identical message is a duplicate."""
    rule = Rule()
    rule.accepted(make("app1"), 0.0)
    assert rule.filter.check(make("app2"), 1.0) == DUPLICATE


def test_client_scope_keeps_apps_apart() -> None:
    """With scope client, each app account has its own window."""
    rule = Rule(scope="client")
    rule.accepted(make("app1"), 0.0)
    assert rule.filter.check(make("app2"), 1.0) == ACCEPT
    assert rule.filter.check(make("app1"), 1.0) == DUPLICATE


# --- bounds and expiry ----------------------------------------------------------------------


def test_max_entries_evicts_the_oldest() -> None:
    """Past max_entries the oldest accepted message is forgotten, and the eviction counted."""
    rule = Rule(max_entries=2)
    rule.accepted(make(short_message=b"a"), 0.0)
    rule.accepted(make(short_message=b"b"), 1.0)
    rule.accepted(make(short_message=b"c"), 2.0)
    assert len(rule.filter) == 2
    assert rule.filter.window.evicted == 1
    assert rule.filter.check(make(short_message=b"b"), 3.0) == DUPLICATE
    assert rule.filter.check(make(short_message=b"c"), 3.0) == DUPLICATE
    assert rule.filter.check(make(short_message=b"a"), 3.0) == ACCEPT


def test_expire_forgets_messages_whose_window_ended() -> None:
    """expire() drops what is older than the window, keeps the rest, and sets the gauge."""
    rule = Rule()
    for second in range(3):
        rule.accepted(make(short_message=b"%d" % second), float(second))
    assert rule.filter.forget(60.5) == 1
    assert len(rule.filter) == 2
    assert rule.gauge() == 2
    assert rule.filter.check(make(short_message=b"1"), 60.5) == DUPLICATE
    assert rule.filter.forget(62.0) == 2
    assert len(rule.filter) == 0
    assert rule.gauge() == 0
    assert rule.filter.check(make(short_message=b"1"), 62.0) == ACCEPT


def test_expire_keeps_messages_in_flight() -> None:
    """A message in flight is not expired; releasing it leaves nothing behind."""
    rule = Rule()
    message = make()
    assert rule.filter.check(message, 0.0) == ACCEPT
    rule.filter.expire(1000.0)
    assert len(rule.filter) == 1
    assert rule.filter.check(make(), 1000.0) == IN_FLIGHT
    rule.filter.settle(message, 1000.0, None)
    assert len(rule.filter) == 0


def test_an_expired_entry_is_replaced_by_the_next_acceptance() -> None:
    """After the window, the identical message is accepted and starts a new window."""
    rule = Rule()
    rule.accepted(make(), 0.0)
    rule.accepted(make(), 70.0)
    assert len(rule.filter) == 1
    assert rule.filter.check(make(), 129.9) == DUPLICATE
    assert rule.filter.forget(130.0) == 1
    assert len(rule.filter) == 0


def test_a_repeated_acceptance_moves_the_entry_to_the_back() -> None:
    """The store stays in acceptance order, so expiry never stops at a renewed entry."""
    window = DedupWindow(60.0, 10)
    renewed, other = b"renewed-key!", b"other-key!!!"
    window.accept(renewed, 0.0, b"")
    window.accept(other, 1.0, b"")
    window.accept(renewed, 2.0, b"")
    assert window.expire(61.5) == 1
    assert window.claim(renewed, 61.5) == b""  # still accepted: a duplicate
    assert window.claim(other, 61.5) is True  # forgotten: reserved anew


def test_max_entries_counts_messages_in_flight() -> None:
    """A message in flight takes a place: reserving past the bound evicts the oldest entry."""
    rule = Rule(max_entries=2)
    rule.accepted(make(short_message=b"a"), 0.0)
    in_flight = make(short_message=b"b")
    assert rule.filter.check(in_flight, 1.0) == ACCEPT
    assert rule.filter.check(make(short_message=b"c"), 2.0) == ACCEPT
    assert len(rule.filter) == 2
    assert rule.filter.window.evicted == 1
    assert rule.filter.check(make(short_message=b"b"), 3.0) == IN_FLIGHT
    rule.filter.settle(in_flight, 3.0, b"op-b")
    assert rule.filter.check(make(short_message=b"b"), 4.0) == DUPLICATE
    assert rule.filter.check(make(short_message=b"a"), 4.0) == ACCEPT


def test_settling_twice_or_unknown_messages_changes_nothing() -> None:
    """A release of a message the rule did not let through (or settled already) is ignored."""
    rule = Rule()
    message = make()
    rule.accepted(message, 0.0)
    rule.filter.settle(message, 1.0, None)  # already settled: does not release the entry
    rule.filter.settle(make(), 2.0, None)  # never checked: nothing to release
    assert rule.filter.check(make(), 59.9) == DUPLICATE
    assert rule.filter.check(make(), 60.0) == ACCEPT


def test_a_message_accepted_after_its_release_is_recorded() -> None:
    """Fault 4: released when the operator did not answer in time, then accepted by its late
    answer: from then on an identical message is a duplicate."""
    rule = Rule()
    message = make()
    assert rule.filter.check(message, 0.0) == ACCEPT
    rule.filter.settle(message, 30.0, None)  # the timeout: released, a retry may go
    rule.filter.settle(message, 31.0, b"LATE")  # the late ESME_ROK
    assert rule.filter.check(make(), 90.9) == DUPLICATE
    assert rule.filter.check(make(), 91.0) == ACCEPT


def test_a_renewed_reservation_does_not_hold_up_expiry() -> None:
    """An expired key reserved again goes to the back, behind entries that expire sooner."""
    rule = Rule()
    rule.accepted(make(short_message=b"a"), 0.0)
    rule.accepted(make(short_message=b"b"), 30.0)
    assert rule.filter.check(make(short_message=b"a"), 70.0) == ACCEPT  # in flight now
    assert rule.filter.forget(95.0) == 1  # b
    assert len(rule.filter) == 1
    assert rule.filter.check(make(short_message=b"a"), 95.0) == IN_FLIGHT
