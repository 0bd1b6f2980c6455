"""The families kept in plain numbers (smpprelay.collectors.PlainCounters, PlainHistogram)
export exactly the samples a prometheus_client Counter or Histogram fed the same updates
would: names, labels, types, help, buckets, sums, counts and ``_created``."""

from __future__ import annotations

import random
from collections.abc import Iterator

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from smpprelay.collectors import PlainCounters, PlainHistogram
from smpprelay.metrics import LATENCY_BUCKETS, Metrics
from smpprelay.pdu import Status

Samples = list[tuple[str, str, str, tuple[tuple[str, str], ...], float]]


def samples(registry: CollectorRegistry, created: bool = True) -> Samples:
    """Every sample as (family, type, sample name, labels, value); ``_created`` values (the
    clock) as 0, or left out with ``created`` False."""
    return [
        (
            family.name,
            family.type,
            sample.name,
            tuple(sorted(sample.labels.items())),
            0.0 if sample.name.endswith("_created") else sample.value,
        )
        for family in registry.collect()
        for sample in family.samples
        if created or not sample.name.endswith("_created")
    ]


def observations(count: int) -> list[float]:
    rnd = random.Random(7)
    edges = [*LATENCY_BUCKETS, 0.0, -0.001, 31.0, 1e9]  # exactly on a bound, below, above all
    return [rnd.choice(edges) if rnd.random() < 0.3 else rnd.random() * 12 for _ in range(count)]


def test_a_plain_histogram_exports_a_histograms_buckets_sum_and_count() -> None:
    plain_registry, registry = CollectorRegistry(), CollectorRegistry()
    plain = PlainHistogram("x_seconds", "Help.", ["account"], buckets=LATENCY_BUCKETS)
    plain_registry.register(plain)
    reference = Histogram(
        "x_seconds", "Help.", ["account"], buckets=LATENCY_BUCKETS, registry=registry
    )
    bare = PlainHistogram("y_seconds", "Bare.", buckets=LATENCY_BUCKETS)
    plain_registry.register(bare)
    bare_reference = Histogram("y_seconds", "Bare.", buckets=LATENCY_BUCKETS, registry=registry)
    values = observations(3000)
    for i, value in enumerate(values):
        account = "ab"[i % 2]
        plain.labels(account).observe(value)
        reference.labels(account).observe(value)
        bare.observe(value)
        bare_reference.observe(value)

    assert samples(plain_registry) == samples(registry)
    sample = plain_registry.get_sample_value
    assert sample("y_seconds_count") == 3000
    assert sample("y_seconds_sum") == pytest.approx(sum(values))
    at_most_10ms = sum(1 for value in values if value <= 0.01)
    assert sample("y_seconds_bucket", {"le": "0.01"}) == at_most_10ms
    assert sample("y_seconds_bucket", {"le": "+Inf"}) == 3000
    assert generate_latest(plain_registry).count(b"\n") == generate_latest(registry).count(b"\n")


def test_plain_counters_export_a_counters_samples_and_refuse_to_go_down() -> None:
    plain_registry, registry = CollectorRegistry(), CollectorRegistry()
    plain = PlainCounters("x_total", "Help.", ["kind", "result"])
    plain_registry.register(plain)
    reference = Counter("x_total", "Help.", ["kind", "result"], registry=registry)
    bare = PlainCounters("y", "Bare.")
    plain_registry.register(bare)
    Counter("y", "Bare.", registry=registry)  # exists at 0 from the start, as the plain one
    plain.labels("mo", "held")  # a series that exists at 0
    reference.labels("mo", "held")
    for i in range(1000):
        kind, amount = ("receipt", "mo")[i % 2], i % 3
        plain.labels(kind, "delivered").inc(amount)
        reference.labels(kind, "delivered").inc(amount)

    assert samples(plain_registry) == samples(registry)
    assert plain_registry.get_sample_value("x_total", {"kind": "mo", "result": "delivered"}) == (
        sum(i % 3 for i in range(1, 1000, 2))
    )
    assert plain_registry.get_sample_value("y_total") == 0
    with pytest.raises(ValueError, match="non-negative"):
        plain.labels("mo", "held").inc(-1)
    with pytest.raises(ValueError, match="label values"):
        plain.labels("mo")


def test_created_series_follow_prometheus_clients_switch() -> None:
    plain_registry, registry = CollectorRegistry(), CollectorRegistry()
    plain_registry.register(PlainCounters("x", "Help."))
    plain_registry.register(PlainHistogram("h", "Help.", buckets=(1.0,)))
    Counter("x", "Help.", registry=registry)
    Histogram("h", "Help.", buckets=(1.0,), registry=registry)
    prometheus_client.metrics.disable_created_metrics()
    try:
        assert samples(plain_registry) == samples(registry)
        assert not any(name.endswith("_created") for _, _, name, _, _ in samples(registry))
    finally:
        prometheus_client.metrics.enable_created_metrics()
    assert samples(plain_registry) == samples(registry)


def _relay_traffic(metrics: Metrics) -> Iterator[float]:
    """Submits, operator answers and deliveries as the relay counts them; yields latencies."""
    statuses = [Status.ESME_ROK, Status.ESME_RTHROTTLED, 0x400, 0x1234]
    for i, seconds in enumerate(observations(2000)):
        account = ("app1", "app2")[i % 2]
        status = statuses[i % len(statuses)]
        metrics.count_submit(account, status, seconds)
        metrics.count_upstream_submit(status, ("default", "big")[i % 3 == 0])
        metrics.upstream_round_trip.observe(seconds)
        metrics.upstream_routed.labels("big").inc()
        metrics.deliveries_received.labels("receipt").inc()
        metrics.deliveries.labels("receipt", "delivered").inc()
        metrics.deliver_latency.labels(account).observe(seconds)
        yield seconds


def test_the_relays_hot_families_keep_every_count() -> None:
    """Counts a test could not pass if the plain numbers were lost or mislabelled."""
    metrics = Metrics(CollectorRegistry(), vendor_statuses=[0x400])
    latencies = list(_relay_traffic(metrics))
    sample = metrics.registry.get_sample_value
    # 2,000 submits: statuses cycle by 4 and accounts by 2, so app1 gets ROK and 0x400.
    assert sample("smpprelay_submits_total", {"account": "app1", "status": "ESME_ROK"}) == 500
    assert sample("smpprelay_submits_total", {"account": "app1", "status": "0x00000400"}) == 500
    assert sample("smpprelay_submits_total", {"account": "app2", "status": "other"}) == 500
    assert sample("smpprelay_submits_total", {"account": "app2", "status": "ESME_RTHROTTLED"}) == (
        500
    )
    assert sample("smpprelay_submits_total", {"account": "app1", "status": "other"}) is None
    app1 = latencies[::2]
    labels = {"account": "app1"}
    assert sample("smpprelay_submit_latency_seconds_count", labels) == 1000
    assert sample("smpprelay_submit_latency_seconds_sum", labels) == pytest.approx(sum(app1))
    assert sample("smpprelay_submit_latency_seconds_bucket", {**labels, "le": "0.0005"}) == (
        sum(1 for value in app1 if value <= 0.0005)
    )
    assert sample("smpprelay_submit_latency_seconds_bucket", {**labels, "le": "30.0"}) == (
        sum(1 for value in app1 if value <= 30.0)
    )
    assert sample("smpprelay_upstream_throttled_total") == 500
    throttled = sum(1 for i in range(2000) if i % 4 == 1 and i % 3 != 0)
    assert sample(
        "smpprelay_upstream_submits_total", {"upstream": "default", "status": "ESME_RTHROTTLED"}
    ) == (throttled)
    assert sample("smpprelay_upstream_round_trip_seconds_count") == 2000
    assert sample("smpprelay_upstream_round_trip_seconds_sum") == pytest.approx(sum(latencies))
    assert sample("smpprelay_upstream_routed_total", {"upstream": "big"}) == 2000
    assert sample("smpprelay_deliveries_received_total", {"kind": "receipt"}) == 2000
    assert sample("smpprelay_deliveries_received_total", {"kind": "mo"}) == 0  # from the start
    assert sample("smpprelay_deliveries_total", {"kind": "receipt", "result": "delivered"}) == (
        2000
    )
    assert sample("smpprelay_deliver_latency_seconds_count", {"account": "app2"}) == 1000


def test_the_relays_families_have_the_types_and_series_of_counters_and_histograms() -> None:
    """The scrape names each family's type and help as the Counter or Histogram did, with a
    ``_created`` per series; text and OpenMetrics expositions both render."""
    metrics = Metrics(CollectorRegistry())
    list(_relay_traffic(metrics))
    families = {family.name: family for family in metrics.registry.collect()}
    for name in (
        "smpprelay_submits",
        "smpprelay_upstream_submits",
        "smpprelay_upstream_throttled",
        "smpprelay_upstream_routed",
        "smpprelay_deliveries_received",
        "smpprelay_deliveries",
    ):
        family = families[name]
        assert family.type == "counter"
        names = {sample.name for sample in family.samples}
        assert names == {name + "_total", name + "_created"}
    for name in (
        "smpprelay_submit_latency_seconds",
        "smpprelay_deliver_latency_seconds",
        "smpprelay_upstream_round_trip_seconds",
    ):
        family = families[name]
        assert family.type == "histogram"
        buckets = [s for s in family.samples if s.name == name + "_bucket"]
        series = {
            tuple(sorted(s.labels.items())) for s in family.samples if s.name.endswith("_sum")
        }
        assert len(buckets) == (len(LATENCY_BUCKETS) + 1) * len(series)
    assert families["smpprelay_submits"].documentation == (
        "submit_sm from apps, by account and the status they were answered."
    )
    text = generate_latest(metrics.registry)
    assert b'smpprelay_submit_latency_seconds_bucket{account="app1",le="+Inf"} 1000.0' in text
    assert b"# TYPE smpprelay_upstream_round_trip_seconds histogram" in text
    assert b"# TYPE smpprelay_deliveries_total counter" in text
    assert b"smpprelay_upstream_throttled_total 500.0" in text
    assert b"# EOF" in openmetrics_latest(metrics.registry)
