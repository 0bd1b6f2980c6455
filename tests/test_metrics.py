"""The metric families added for observability each carry a real value: PDUs by command and
direction, the upstream window in use and its size, the round trip, throttled answers,
deliveries received and the apps' deliver_sm answer latency, and the process collector."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from smpprelay import pdu
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status
from tests.fakes import FakeReceiver, failure_of, make_router, mo, outcome, receipt, submit_sm
from tests.fakes.operator import Wire, bound, make_pool


class RouterHarness:
    """A real router with one receiving app, "app", that owns the MO numbers under 7900."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(CollectorRegistry())
        self.receiver = FakeReceiver("app")
        self.router = make_router(
            self.clock,
            self.metrics,
            lambda account: [self.receiver] if account == "app" else [],
            mo_prefixes={"7900": "app"},
        )

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def test_pdus_counted_by_side_direction_and_command() -> None:
    """Every PDU read or written is counted once; unknown commands share the label "other"."""
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    wire = Wire(clock, metrics)
    wire.connection.send_request(submit_sm())
    (sent,) = wire.take()
    wire.answer(sent, b"X1")
    wire.connection.dataReceived(pdu.build(CommandId.enquire_link, 7))
    wire.connection.dataReceived(pdu.build(0x0000_0777, 8))
    wire.connection.dataReceived(pdu.build(0x0000_0778, 9))

    def count(direction: str, command: str) -> float | None:
        return metrics.registry.get_sample_value(
            "smpprelay_pdus_total", {"side": "upstream", "direction": direction, "command": command}
        )

    assert count("out", "submit_sm") == 1
    assert count("in", "submit_sm_resp") == 1
    assert count("in", "enquire_link") == 1
    assert count("out", "enquire_link_resp") == 1
    assert count("in", "other") == 2
    assert count("out", "generic_nack") == 2


def test_pdu_series_come_out_in_the_order_first_counted() -> None:
    """The counts kept per side and direction export as one family, each series in the order
    it was first counted (unknown commands as one "other" series per side and direction)."""
    metrics = Metrics(CollectorRegistry())
    for side, direction, command_id in [
        ("upstream", "out", CommandId.submit_sm),
        ("downstream", "in", 0x777),
        ("downstream", "in", CommandId.submit_sm),
        ("upstream", "out", CommandId.submit_sm),
        ("downstream", "in", 0x778),
        ("simulator", "in", CommandId.bind_transceiver),
    ]:
        metrics.count_pdu(side, direction, pdu.build(command_id, 1))  # type: ignore[arg-type]
    (family,) = (f for f in metrics.registry.collect() if f.name == "smpprelay_pdus")
    series = [
        (s.labels["side"], s.labels["direction"], s.labels["command"], s.value)
        for s in family.samples
    ]
    assert series == [
        ("upstream", "out", "submit_sm", 2),
        ("downstream", "in", "other", 2),
        ("downstream", "in", "submit_sm", 1),
        ("simulator", "in", "bind_transceiver", 1),
    ]


def test_upstream_window_in_use_follows_the_session_and_size_is_the_config() -> None:
    """window_in_use is read from the bound connection when scraped; window_size is config."""
    up, transport = bound(window=7)

    def sample(name: str) -> float | None:
        return up.sample(name, session="0")

    assert sample("smpprelay_upstream_window_size") == 7
    assert sample("smpprelay_upstream_window_in_use") == 0
    answers = [up.pool.submit(submit_sm(short_message=b"%d" % i)) for i in range(3)]
    sent = transport.take()
    assert sample("smpprelay_upstream_window_in_use") == 3
    transport.send(pdu.submit_sm_resp(pdu.sequence_of(sent[0]), Status.ESME_ROK, b"A"))
    assert sample("smpprelay_upstream_window_in_use") == 2
    assert answers[0].called
    assert not answers[1].called
    transport.peer_closes()
    up.clock.advance(0)
    assert sample("smpprelay_upstream_window_in_use") == 0
    for lost in answers[1:]:
        failure_of(lost)


def test_upstream_round_trip_observed_and_throttled_answers_counted() -> None:
    """Each answered submit is one round-trip observation (Clock time); 0x58 is counted."""
    pool, clock, metrics = make_pool(window=5)
    wire = Wire(clock, metrics)
    pool.add(wire.connection, transmits=True, receives=False)
    pool.submit(submit_sm())
    pool.submit(submit_sm(short_message=b"other"))
    first, second = wire.take()
    clock.advance(0.3)
    wire.answer(first, b"A")
    clock.advance(4.0)
    wire.connection.dataReceived(
        pdu.submit_sm_resp(pdu.sequence_of(second), Status.ESME_RTHROTTLED)
    )
    metrics.count_upstream_submit(Status.ESME_RTHROTTLED)
    metrics.count_upstream_submit(Status.ESME_ROK)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("smpprelay_upstream_round_trip_seconds_count") == 2
    assert sample("smpprelay_upstream_round_trip_seconds_sum") == 4.6
    assert sample("smpprelay_upstream_round_trip_seconds_bucket", le="0.5") == 1
    assert sample("smpprelay_upstream_round_trip_seconds_bucket", le="5.0") == 2
    assert sample("smpprelay_upstream_throttled_total") == 1
    assert (
        sample("smpprelay_upstream_submits_total", upstream="default", status="ESME_RTHROTTLED")
        == 1
    )


def test_deliveries_received_by_kind_and_app_answer_latency_by_account() -> None:
    """Receipts and MO are counted as they arrive; the app's answer time is observed."""
    h = RouterHarness()
    app = h.receiver
    h.router.remember(b"ABC123", "app")
    result = outcome(h.router.route(receipt(b"ABC123")))
    h.clock.advance(0.2)
    app.answer(0)
    outcome(h.router.route(mo(b"79001234567")))
    outcome(h.router.route(mo(b"12345")))  # no account: received, then unroutable
    outcome(h.router.route(b"\0\0\0\x10\0\0\0\x05\0\0\0\0\0\0\0\1"))  # unreadable
    h.clock.advance(1.5)
    app.answer(1)

    assert result == [Status.ESME_ROK]
    assert h.sample("smpprelay_deliveries_received_total", kind="receipt") == 1
    assert h.sample("smpprelay_deliveries_received_total", kind="mo") == 2
    assert h.sample("smpprelay_deliveries_received_total", kind="unknown") == 1
    assert h.sample("smpprelay_deliver_latency_seconds_count", account="app") == 2
    assert h.sample("smpprelay_deliver_latency_seconds_sum", account="app") == 1.7
    assert h.sample("smpprelay_deliver_latency_seconds_bucket", account="app", le="0.25") == 1


def test_build_info_start_time_and_process_collector_on_the_own_registry() -> None:
    """The process collector reports on the relay's registry, not the global one."""
    metrics = Metrics(CollectorRegistry())
    names = {m.name for m in metrics.registry.collect()}
    assert {"smpprelay_build_info", "smpprelay_start_time_seconds"} <= names
    cpu = metrics.registry.get_sample_value("process_cpu_seconds_total")
    assert cpu is not None
    assert cpu > 0


def test_20000_operator_statuses_make_a_bounded_number_of_series() -> None:
    """Every status outside 3.4 and upstream.vendor_statuses is labelled "other" in both
    families labelled by status (before: 20,000 statuses made 40,000 series); the configured
    vendor status keeps its own label."""
    metrics = Metrics(CollectorRegistry(), vendor_statuses=[0x400])
    for status in range(0x1000, 0x1000 + 20_000):
        metrics.count_upstream_submit(status)
        metrics.count_submit("app", status, 0.01)
    for status in (0x400, Status.ESME_RTHROTTLED):
        metrics.count_upstream_submit(status)
        metrics.count_submit("app", status, 0.01)
    series = {
        family.name: {sample.labels.get("status") for sample in family.samples}
        for family in metrics.registry.collect()
        if family.name in ("smpprelay_submits", "smpprelay_upstream_submits")
    }
    assert series == {
        "smpprelay_submits": {"other", "0x00000400", "ESME_RTHROTTLED"},
        "smpprelay_upstream_submits": {"other", "0x00000400", "ESME_RTHROTTLED"},
    }
    sample = metrics.registry.get_sample_value
    assert (
        sample("smpprelay_upstream_submits_total", {"upstream": "default", "status": "other"})
        == 20_000
    )
    assert sample("smpprelay_submits_total", {"account": "app", "status": "other"}) == 20_000
    assert len(metrics._submit_children) <= 4096  # the label cache is bounded too
