"""The relay with a store: every ESME_ROK waits for what it promises to be stored.

`ManualStore` holds each write until the test commits or fails it.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from smpprelay import pdu, relay_upkeep
from smpprelay.config import ConcatRule, FiltersConfig
from smpprelay.filters import build_chain
from smpprelay.filters.base import FilterChain
from smpprelay.filters.concat import ConcatFilter
from smpprelay.message import read_message
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.relay import Relay
from smpprelay.store import HeldPart, Loaded, RouteDone
from tests.fakes import FakePool, FakeReceiver, captured_logs, make_router, outcome, submit_sm
from tests.fakes.rules import written_behind
from tests.fakes.store import ManualStore

ACCOUNT = "acme"


class Harness:
    def __init__(self, concat: bool = False, store: ManualStore | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.metrics = Metrics(CollectorRegistry())
        self.pool = FakePool()
        self.store = store if store is not None else ManualStore()
        self.receiver = FakeReceiver(ACCOUNT, auto_answer=True)
        self.router = make_router(
            self.clock, self.metrics, lambda account: [self.receiver], store=self.store
        )
        rules = [ConcatFilter(ConcatRule(), self.metrics)] if concat else []
        self.chain = FilterChain(list(rules), self.metrics)
        self.relay = Relay(self.pool, self.router, self.metrics, self.clock, self.chain)


def part(seq: int, total: int = 2, receipt: int = 1, reference: int = 0x42) -> bytes:
    udh = bytes((5, 0, 3, reference, total, seq))
    return submit_sm(
        seq, esm_class=0x40, short_message=udh + b"part %d" % seq, registered_delivery=receipt
    )


def test_the_app_hears_ok_only_once_the_route_is_stored() -> None:
    h = Harness()
    answer = outcome(h.relay.submit(ACCOUNT, submit_sm(registered_delivery=1)))
    h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"OP1"))
    assert answer == []  # the operator answered; the route is not stored yet
    h.store.commit()
    assert pdu.header(answer[0])[2] == Status.ESME_ROK
    assert pdu.message_id_of(answer[0]) == b"OP1"


def test_a_submit_without_receipt_is_mapped_before_its_ok_too() -> None:
    """The route is the id map of query_sm, cancel_sm and replace_sm: written for every
    message the operator accepted, before the app hears ESME_ROK."""
    h = Harness()
    answer = outcome(h.relay.submit(ACCOUNT, submit_sm(registered_delivery=0)))
    h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"OP1"))
    assert answer == []
    assert h.store.commit() == 1
    assert pdu.header(answer[0])[2] == Status.ESME_ROK


def test_a_route_the_store_cannot_keep_means_no_ok() -> None:
    """The operator took it, but its receipt could not be routed: the app hears
    ESME_RMSGQFUL, never ESME_ROK, and a log line names the operator's id."""
    h = Harness()
    answer = outcome(h.relay.submit(ACCOUNT, submit_sm(registered_delivery=1)))
    h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"OP1"))
    with captured_logs() as events:
        h.store.fail()
    assert pdu.header(answer[0])[2] == Status.ESME_RMSGQFUL
    assert any("OP1" in formatEvent(event) for event in events)


def test_a_route_refused_at_once_is_answered_at_once() -> None:
    """The store stopped writing while the submit was out: its route is refused before the
    write is queued (`Store.add_route_cb` reports at once), and the app hears ESME_RMSGQFUL
    in the same turn."""
    h = Harness()
    answer = outcome(h.relay.submit(ACCOUNT, submit_sm(registered_delivery=1)))
    h.store.break_down()
    with captured_logs() as events:
        h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"OP1"))
    assert pdu.header(answer[0])[2] == Status.ESME_RMSGQFUL
    assert h.store.pending == []
    assert any("OP1" in formatEvent(event) for event in events)


class BuggyStore(ManualStore):
    """Reports a route write with an error that is not an outage (a bug)."""

    def __init__(self, at_once: bool) -> None:
        super().__init__()
        self.at_once = at_once

    def add_route_cb(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None,
        done: RouteDone,
    ) -> None:
        if self.at_once:
            done(RuntimeError("a bug"))
        else:
            super().add_route_cb(
                upstream, message_id, account, app_message_id, now, operator_id, done
            )


def test_a_route_write_failing_with_a_bug_fails_the_submit() -> None:
    """Not an outage: the submit's Deferred fails with the error (as it did when the route
    write was a Deferred), whether the store reports at once or later."""
    for at_once in (True, False):
        h = Harness(store=BuggyStore(at_once))
        answer = outcome(h.relay.submit(ACCOUNT, submit_sm(registered_delivery=1)))
        h.pool.answers[0].callback(pdu.submit_sm_resp(5, Status.ESME_ROK, b"OP1"))
        if not at_once:
            assert answer == []
            pending, h.store.pending = h.store.pending, []
            pending[0][0].errback(RuntimeError("a bug"))
        [failed] = answer
        assert isinstance(failed, Failure)
        assert failed.check(RuntimeError)


def test_while_the_store_cannot_write_submits_are_refused_unsent() -> None:
    h = Harness()
    h.store.break_down()
    answer = outcome(h.relay.submit(ACCOUNT, submit_sm(registered_delivery=0)))
    assert pdu.header(answer[0])[2] == Status.ESME_RMSGQFUL
    assert h.pool.frames == []
    h.store.recover()
    outcome(h.relay.submit(ACCOUNT, submit_sm(registered_delivery=0)))
    assert len(h.pool.frames) == 1


def test_a_held_part_is_answered_once_the_store_has_it() -> None:
    h = Harness(concat=True)
    answer = outcome(h.relay.submit(ACCOUNT, part(1)))
    assert answer == []
    assert len(h.store.parts) == 1
    h.store.commit()
    held_id = pdu.message_id_of(answer[0])
    assert pdu.header(answer[0])[2] == Status.ESME_ROK
    [stored] = h.store.parts.values()
    assert stored.app_message_id == held_id
    assert stored.frame == part(1)


def test_a_part_the_store_cannot_keep_is_refused_and_can_be_sent_again() -> None:
    h = Harness(concat=True)
    answer = outcome(h.relay.submit(ACCOUNT, part(1)))
    h.store.fail()
    assert pdu.header(answer[0])[2] == Status.ESME_RMSGQFUL
    h.store.recover()
    again = outcome(h.relay.submit(ACCOUNT, part(1)))  # held anew, not a duplicate part
    h.store.commit()
    assert pdu.header(again[0])[2] == Status.ESME_ROK


def test_parts_leave_the_store_once_their_message_went_through() -> None:
    h = Harness(concat=True)
    outcome(h.relay.submit(ACCOUNT, part(1)))
    h.store.commit()
    answer = outcome(h.relay.submit(ACCOUNT, part(2)))
    assert len(h.pool.batches) == 1
    h.pool.batch_answers[0].callback(
        [
            pdu.submit_sm_resp(1, Status.ESME_ROK, b"OP1"),
            pdu.submit_sm_resp(2, Status.ESME_ROK, b"OP2"),
        ]
    )
    assert h.store.parts == {}
    assert answer == []  # both routes wait for their write
    h.store.commit()
    assert pdu.header(answer[0])[2] == Status.ESME_ROK


def test_expired_parts_leave_the_store_with_their_receipts() -> None:
    h = Harness(concat=True)
    outcome(h.relay.submit(ACCOUNT, part(1)))
    h.store.commit()
    h.clock.advance(61)
    h.relay.sweep()
    assert h.store.parts == {}
    assert b"stat:EXPIRED" in h.receiver.frames[0]


def test_at_stop_a_durable_store_keeps_the_held_parts() -> None:
    h = Harness(concat=True)
    outcome(h.relay.submit(ACCOUNT, part(1)))
    h.store.commit()
    assert h.relay.drop_held() == 0
    assert len(h.store.parts) == 1
    assert h.receiver.frames == []  # no UNDELIV receipt: the next start completes it


def test_parts_kept_by_the_store_complete_after_a_restart() -> None:
    """The parts the last run held are put back; the part that completes the message sends
    them all, in order, and leaves the store empty."""
    first = Harness(concat=True)
    outcome(first.relay.submit(ACCOUNT, part(1, total=3)))
    outcome(first.relay.submit(ACCOUNT, part(2, total=3)))
    first.store.commit()
    kept = list(first.store.parts.values())
    store = ManualStore(loaded=Loaded(parts=kept))
    store.parts = {held.app_message_id: held for held in kept}
    h = Harness(concat=True, store=store)
    h.clock.advance(30)
    assert h.relay.restore(store.load(), h.clock.seconds()) == (0, 2)
    answer = outcome(h.relay.submit(ACCOUNT, part(3, total=3)))
    assert h.pool.batches == [[part(1, total=3), part(2, total=3), part(3, total=3)]]
    h.pool.batch_answers[0].callback(
        [pdu.submit_sm_resp(n, Status.ESME_ROK, b"OP%d" % n) for n in (1, 2, 3)]
    )
    h.store.commit()
    assert pdu.header(answer[0])[2] == Status.ESME_ROK
    assert h.store.parts == {}
    assert isinstance(kept[0], HeldPart)


def test_a_stored_part_that_cannot_be_held_again_is_given_up_with_its_receipt() -> None:
    """Two stored parts claim the same place of one message: the second is given up, with an
    EXPIRED receipt under its id, and leaves the store."""
    first = Harness(concat=True)
    outcome(first.relay.submit(ACCOUNT, part(1, total=3)))
    first.store.commit()
    [kept] = first.store.parts.values()
    twin = HeldPart(b"RTWIN", kept.account, kept.frame, kept.app_iso, kept.first, kept.arrived + 1)
    store = ManualStore(loaded=Loaded(parts=[kept, twin]))
    store.parts = {kept.app_message_id: kept, twin.app_message_id: twin}
    h = Harness(concat=True, store=store)
    assert h.relay.restore(store.load(), h.clock.seconds()) == (0, 1)
    assert list(store.parts) == [kept.app_message_id]
    [receipt] = h.receiver.frames
    assert b"id:RTWIN" in receipt
    assert b"stat:EXPIRED" in receipt


def test_with_the_memory_store_the_rules_note_nothing_to_write_behind() -> None:
    """Nobody collects window entries from a memory store: the rules must not pile them up."""
    metrics = Metrics(CollectorRegistry())
    memory_chain = build_chain(FiltersConfig(), False, metrics)
    durable_chain = build_chain(FiltersConfig(), False, Metrics(CollectorRegistry()), b"k" * 16)
    for chain in (memory_chain, durable_chain):
        message = read_message(ACCOUNT, submit_sm(registered_delivery=0))
        assert chain.check(message, 1000.0).action == "accept"
        chain.settle(message, 1000.0, b"OP1")
    assert written_behind(memory_chain) == []
    assert sorted(entry.rule for entry in written_behind(durable_chain)) == ["dedup", "flood"]


def test_a_held_part_of_a_submit_multi_keeps_its_receipt_id_across_a_restart() -> None:
    """A part held for one address of a submit_multi goes home under the multi's id, also
    when the relay restarted in between."""
    first = Harness(concat=True)
    outcome(first.relay.submit(ACCOUNT, part(1), app_id=b"MULTI1"))
    first.store.commit()
    [kept] = first.store.parts.values()
    assert kept.receipt_as == b"MULTI1"
    store = ManualStore(loaded=Loaded(parts=[kept]))
    store.parts = {kept.app_message_id: kept}
    h = Harness(concat=True, store=store)
    assert h.relay.restore(store.load(), h.clock.seconds()) == (0, 1)
    answer = outcome(h.relay.submit(ACCOUNT, part(2), app_id=b"MULTI1"))
    h.pool.batch_answers[0].callback(
        [pdu.submit_sm_resp(n, Status.ESME_ROK, b"OP%d" % n) for n in (1, 2)]
    )
    h.store.commit()
    assert pdu.header(answer[0])[2] == Status.ESME_ROK
    for operator_id in (b"OP1", b"OP2"):
        route = h.store.routes.get(operator_id.decode(), h.clock.seconds())
        assert route is not None
        assert route.app_message_id == b"MULTI1"


def test_window_segments_a_failed_write_behind_kept_go_with_the_next_newest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write-behind the store refused is kept for the next, at most MAX_PENDING_WINDOWS
    entries: the newest."""
    monkeypatch.setattr(relay_upkeep, "MAX_PENDING_WINDOWS", 3)
    h = Harness()
    chain = build_chain(FiltersConfig(), False, Metrics(CollectorRegistry()), b"k" * 16)
    h.relay.chain = chain

    def accepted(destination: bytes, now: float) -> None:
        message = read_message(ACCOUNT, submit_sm(destination_addr=destination))
        assert chain.check(message, now).action == "accept"
        chain.settle(message, now, b"OP" + destination)

    h.store.break_down()
    accepted(b"447700900001", 1000.0)
    h.relay.write_behind()
    accepted(b"447700900002", 1001.0)
    h.relay.write_behind()
    h.store.recover()
    h.relay.write_behind()
    h.store.commit()
    windows = h.store.windows
    assert [(entry.rule, entry.at, entry.streak) for entry in windows] == [
        ("flood", 1000.0, 1),  # the first message's dedup entry, the oldest, went
        ("dedup", 1001.0, 0),
        ("flood", 1001.0, 1),
    ]
    assert (windows[0].key, windows[2].key) == (b"447700900001", b"447700900002")
    assert windows[1].message_id == b"OP447700900002"
    h.relay.write_behind()
    assert h.store.pending == []  # nothing left to write
