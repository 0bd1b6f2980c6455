"""The router with a store: nothing is acknowledged to the operator before it is stored.

`ManualStore` holds each write until the test commits or fails it, so the order "stored, then
answered" is what the assertions read.
"""

from __future__ import annotations

from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.router import Router
from smpprelay.simulator import Simulator
from smpprelay.store import Route, StoreUnavailable
from smpprelay.store.tables import Held, HeldDeliveries
from tests.fakes import SUBMITTED, FakeReceiver, captured_logs, make_router, mo, outcome, receipt
from tests.fakes.store import ManualStore

ACCOUNT = "app"


class Harness:
    def __init__(self, store: ManualStore | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.metrics = Metrics()
        self.store = store if store is not None else ManualStore()
        self.receivers: dict[str, list[FakeReceiver]] = {}
        self.held = HeldDeliveries(ttl=600.0, max_entries=100)
        self.router: Router = make_router(
            self.clock,
            self.metrics,
            lambda account: self.receivers.get(account, []),
            {"7900": ACCOUNT},
            held=self.held,
            store=self.store,
        )

    def receiver(self) -> FakeReceiver:
        receiver = FakeReceiver(ACCOUNT)
        self.receivers.setdefault(ACCOUNT, []).append(receiver)
        return receiver

    def routed(self, message_id: bytes) -> None:
        self.router.remember(message_id, ACCOUNT)
        assert self.store.commit() == 1

    def deliveries(self, kind: str, result: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "smpprelay_deliveries_total", {"kind": kind, "result": result}
        )


def final_receipt(message_id: bytes, stat: str) -> bytes:
    return Simulator(Clock(), stat=stat).receipt(SUBMITTED, message_id, 0.0)


def test_remember_fires_once_the_route_is_stored() -> None:
    h = Harness()
    stored = outcome(h.router.remember(b"OP1", ACCOUNT))
    assert stored == []
    assert h.store.routes.get("OP1", h.clock.seconds()) is None
    h.store.commit()
    assert stored == [None]
    assert h.store.routes.get("OP1", h.clock.seconds()) is not None


def test_remember_fails_when_the_store_cannot_write() -> None:
    h = Harness()
    stored = outcome(h.router.remember(b"OP1", ACCOUNT))
    h.store.fail()
    assert len(stored) == 1
    assert stored[0].check(StoreUnavailable)


def test_a_held_receipt_is_acknowledged_only_once_stored() -> None:
    """No receiver: the operator's deliver_sm is answered ESME_ROK after the store has it."""
    h = Harness()
    h.routed(b"OP1")
    answer = outcome(h.router.route(receipt(b"OP1")))
    assert answer == []
    assert len(h.held) == 0
    h.store.commit()
    assert answer == [Status.ESME_ROK]
    assert len(h.held) == 1
    assert list(h.store.deliveries) == [h.held.take(ACCOUNT).key]  # type: ignore[union-attr]


def test_a_mo_the_store_cannot_keep_is_left_with_the_operator() -> None:
    """The write fails: the operator is answered ESME_RX_T_APPN (it sends it again later),
    nothing is held, and the failure is counted."""
    h = Harness()
    answer = outcome(h.router.route(mo(b"790012345")))
    h.store.fail()
    assert answer == [Status.ESME_RX_T_APPN]
    assert len(h.held) == 0
    assert h.deliveries("mo", "store_unavailable") == 1


def test_while_the_store_cannot_write_deliveries_for_absent_apps_are_refused_at_once() -> None:
    h = Harness()
    h.routed(b"OP1")
    h.store.break_down()
    assert outcome(h.router.route(receipt(b"OP1"))) == [Status.ESME_RX_T_APPN]
    assert h.store.pending == []
    # An app that is bound takes it directly: no write is needed for that.
    app = h.receiver()
    answer = outcome(h.router.route(receipt(b"OP1")))
    app.answer(0)
    assert answer == [Status.ESME_ROK]


def test_a_delivered_held_item_leaves_the_store() -> None:
    h = Harness()
    h.routed(b"OP1")
    outcome(h.router.route(receipt(b"OP1")))
    h.store.commit()
    assert len(h.store.deliveries) == 1
    app = h.receiver()
    h.router.receiver_bound(ACCOUNT)
    assert len(app.frames) == 1
    assert len(h.store.deliveries) == 1  # not before the app answered
    app.answer(0)
    assert h.store.deliveries == {}


def test_a_held_item_that_fails_again_is_not_written_twice() -> None:
    h = Harness()
    h.routed(b"OP1")
    outcome(h.router.route(receipt(b"OP1")))
    h.store.commit()
    app = h.receiver()
    h.router.receiver_bound(ACCOUNT)
    app.answer(0, Status.ESME_RX_T_APPN)
    assert h.store.pending == []
    assert len(h.held) == 1
    assert len(h.store.deliveries) == 1


def test_deliveries_kept_by_the_store_are_delivered_after_a_restart() -> None:
    """`restore` holds what the last run left, oldest first, and delivers it on bind."""
    h = Harness()
    items = [Held("receipt", ACCOUNT, b"frame%d" % n, 5000.0, key=n + 1) for n in range(3)]
    assert h.router.restore(items) == 3
    app = h.receiver()
    h.router.receiver_bound(ACCOUNT)
    assert app.frames == [b"frame0", b"frame1", b"frame2"]
    for index in range(3):
        app.answer(index)
    assert h.held.count(ACCOUNT) == 0


def test_a_final_receipt_cuts_its_route_back() -> None:
    h = Harness()
    h.routed(b"OP1")
    h.routed(b"OP2")
    app = h.receiver()
    outcome(h.router.route(final_receipt(b"OP1", "DELIVRD")))
    outcome(h.router.route(final_receipt(b"OP2", "ACCEPTD")))  # not final
    assert h.store.finals == []  # not before the relay has it
    app.answer(0)
    app.answer(1)
    assert h.store.finals == ["OP1"]
    route = h.store.routes.get("OP1", h.clock.seconds())
    assert isinstance(route, Route)
    assert route.expires == h.clock.seconds() + 600.0


def test_a_lookup_that_fails_leaves_the_receipt_with_the_operator() -> None:
    h = Harness()
    h.store.find_route = lambda *args: fail(StoreUnavailable("disk I/O error"))  # type: ignore[method-assign]
    with captured_logs() as events:
        assert outcome(h.router.route(receipt(b"OP1"))) == [Status.ESME_RX_T_APPN]
    assert any("lookup failed" in formatEvent(event) for event in events)
    assert h.deliveries("receipt", "unmatched") == 0


def test_at_stop_a_durable_store_keeps_the_held_deliveries() -> None:
    h = Harness()
    outcome(h.router.route(mo(b"790012345")))
    h.store.commit()
    with captured_logs() as events:
        h.router.stop()
    assert h.deliveries("mo", "lost_at_stop") == 0
    assert len(h.store.deliveries) == 1
    assert any("stay in the store" in formatEvent(event) for event in events)


def test_while_stopping_a_durable_store_still_holds() -> None:
    """With the memory store a delivery arriving during the stop is refused (it would be
    lost); a durable one keeps it for the next start."""
    h = Harness()
    h.router.stopping()
    answer = outcome(h.router.route(mo(b"790012345")))
    h.store.commit()
    assert answer == [Status.ESME_ROK]
    memory = Harness(ManualStore(durable=False))
    memory.router.stopping()
    assert outcome(memory.router.route(mo(b"790012345"))) == [Status.ESME_RX_T_APPN]
