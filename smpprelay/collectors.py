"""Prometheus collectors the relay's metrics are read through at scrape time: plain integer
counters for the hot path (`PlainCounter`, and `PlainCounters` and `PlainHistogram` in place of
a prometheus_client Counter or Histogram with the same samples), the store's state
(`StoreCollector`), the link to Redis (`RedisCollector`) and what the shared rules could not
write to it (`UnsentCollector`)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import prometheus_client.metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "PlainCount",
    "PlainCounter",
    "PlainCounters",
    "PlainHistogram",
    "PlainObservations",
    "RedisCollector",
    "RedisReading",
    "StoreCollector",
    "StoreReading",
    "UnsentCollector",
]


class PlainCounter(Collector):
    """A counter family kept in plain integers, per key, and turned into samples when scraped.

    For counts taken on every PDU or submit: a dict increment costs a quarter of a Counter
    child's locked ``inc()``. Only the reactor thread writes ``counts``; the scrape (in a
    thread) reads a copy, and ``dict.copy`` runs under the GIL in one step. ``labels`` turns a
    key into its label values, so the hot path can count under cheap keys (ints, tuples).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        labels: Callable[[Any], list[str]],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.labels = labels
        self.counts: dict[Any, int] = {}

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, count in self.counts.copy().items():
            family.add_metric(self.labels(key), count)
        yield family


def _created() -> bool:
    # prometheus_client's own switch (PROMETHEUS_DISABLE_CREATED_SERIES,
    # disable_created_metrics), so these families export `_created` exactly when its do.
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


_Series = TypeVar("_Series")


class _PlainFamily(Collector, Generic[_Series]):
    """What the plain families share: their series by label values, made by `_new_series`,
    and prometheus_client's ``labels`` (values turned to text, their number checked)."""

    name: str
    labelnames: tuple[str, ...]
    series: dict[tuple[str, ...], _Series]

    def _new_series(self) -> _Series:
        raise NotImplementedError

    def _start_series(self) -> None:
        # A family without labels is its one series, as a prometheus_client metric is.
        self.series = {}
        if not self.labelnames:
            self.series[()] = self._new_series()

    def labels(self, *values: Any) -> _Series:
        series = self.series.get(values)
        if series is None:
            key = tuple(str(value) for value in values)
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values")
            series = self.series.get(key)
            if series is None:
                series = self.series[key] = self._new_series()
        return series


class PlainCount:
    """One series of a `PlainCounters`: ``value`` is a plain number, ``inc`` takes no lock."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class PlainCounters(_PlainFamily[PlainCount]):
    """A Counter family whose series are `PlainCount`s: the same samples (``_total`` and
    ``_created``), names and help as a prometheus_client ``Counter``, and its ``labels`` and
    ``inc`` (no lock: only the reactor thread counts; a scrape reads a copy of the series)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name[:-6] if name.endswith("_total") else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._start_series()

    def _new_series(self) -> PlainCount:
        return PlainCount()

    def inc(self, amount: float = 1) -> None:
        self.series[()].inc(amount)

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "counter")

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "counter")
        created = _created()
        for values, series in self.series.copy().items():
            labels = dict(zip(self.labelnames, values, strict=True))
            family.add_sample(self.name + "_total", labels, series.value)
            if created:
                family.add_sample(self.name + "_created", labels, series.created)
        yield family


class PlainObservations:
    """One series of a `PlainHistogram`: observations counted per bucket (not cumulative; the
    last bucket is +Inf) in a local list, and their sum."""

    __slots__ = ("bounds", "buckets", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is at least ``amount``, as Histogram.observe picks it.
        self.buckets[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class PlainHistogram(_PlainFamily[PlainObservations]):
    """A Histogram family whose series are `PlainObservations`: the samples (``_bucket`` by
    ``le``, ``_count``, ``_sum``, ``_created``), names and help of a prometheus_client
    ``Histogram`` with these buckets, and its ``labels`` and ``observe``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds) or not bounds:
            raise ValueError("Buckets not in sorted order")
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self.les = [floatToGoString(bound) for bound in bounds]
        self._start_series()

    def _new_series(self) -> PlainObservations:
        return PlainObservations(self.bounds)

    def observe(self, amount: float) -> None:
        self.series[()].observe(amount)

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "histogram")

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "histogram")
        name = self.name
        created = _created()
        for values, series in self.series.copy().items():
            labels = dict(zip(self.labelnames, values, strict=True))
            total = 0.0
            for le, count in zip(self.les, list(series.buckets), strict=True):
                total += count
                family.add_sample(name + "_bucket", {**labels, "le": le}, total)
            family.add_sample(name + "_count", labels, total)
            if self.bounds[0] >= 0:
                family.add_sample(name + "_sum", labels, series.sum)
            if created:
                family.add_sample(name + "_created", labels, series.created)
        yield family


class StoreReading(NamedTuple):
    """What the store says about itself at a scrape (`Metrics.watch_store`)."""

    writable: bool
    rows: dict[str, int]  # kind -> rows
    size_bytes: int
    commits: int
    writes: int


class StoreCollector(Collector):
    """The store's health, rows and size, read from it when scraped (nothing per write)."""

    def __init__(self, read: Callable[[], StoreReading]) -> None:
        self.read = read

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on a reading: described when collected

    def collect(self) -> Iterator[Metric]:
        reading = self.read()
        yield GaugeMetricFamily(
            "smpprelay_store_writable",
            "1 while the store takes writes; 0 while it cannot (disk full, read-only, I/O "
            "error): submits are then answered ESME_RMSGQFUL and the operator's deliveries "
            "ESME_RX_T_APPN.",
            value=1 if reading.writable else 0,
        )
        rows = GaugeMetricFamily(
            "smpprelay_store_rows", "Rows in the store, by kind.", labels=["kind"]
        )
        for kind, count in sorted(reading.rows.items()):
            rows.add_metric([kind], count)
        yield rows
        yield GaugeMetricFamily(
            "smpprelay_store_size_bytes",
            "Size of the store on disk (database and its write-ahead log).",
            value=reading.size_bytes,
        )
        yield CounterMetricFamily(
            "smpprelay_store_commits",
            "Transactions the store committed (each acknowledges every write in it).",
            value=reading.commits,
        )
        yield CounterMetricFamily(
            "smpprelay_store_writes",
            "Rows the store wrote or removed; divided by commits, the writes per commit.",
            value=reading.writes,
        )


class RedisReading(NamedTuple):
    """The Redis link's numbers at a scrape (`Metrics.watch_redis`): plain counts it keeps."""

    up: bool
    calls: int
    errors: int
    rtt_sum: float
    bounds: tuple[float, ...]  # the round-trip buckets' upper bounds (seconds)
    buckets: list[int]  # round trips per bucket (not cumulative); slower ones are in +Inf


class RedisCollector(Collector):
    """Round trips, errors and health of the link to Redis, read when scraped."""

    def __init__(self, read: Callable[[], RedisReading]) -> None:
        self.read = read

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        reading = self.read()
        yield GaugeMetricFamily(
            "smpprelay_redis_up",
            "1 while Redis answers this relay; 0 while it cannot be reached or does not answer "
            "in time (submits are then answered ESME_RMSGQFUL).",
            value=1 if reading.up else 0,
        )
        yield CounterMetricFamily(
            "smpprelay_redis_errors",
            "Redis commands that failed: error replies, timeouts, and calls refused at once "
            "while Redis was down.",
            value=reading.errors,
        )
        cumulative = []
        total = 0
        for bound, count in zip(reading.bounds, reading.buckets, strict=True):
            total += count
            cumulative.append((repr(bound), total))
        answered = reading.calls - reading.errors
        cumulative.append(("+Inf", max(total, answered)))
        yield HistogramMetricFamily(
            "smpprelay_redis_round_trip_seconds",
            "Time from sending a command to Redis to its reply (pipelined commands share "
            "their wait).",
            buckets=cumulative,
            sum_value=reading.rtt_sum,
        )


class UnsentCollector(Collector):
    """Outcomes the shared rules could not write to Redis (an outage), by rule, read from the
    rules' own plain counts when scraped: nothing is counted through a metric per outcome."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "smpprelay_shared_outcomes_unsent",
            "Outcomes of submits (accepted, released, a glued message's fate) the shared rules "
            "could not write to Redis when they happened, by rule; each is sent again once "
            "Redis answers (until then a claim may count as in flight).",
            labels=["rule"],
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for rule, count in sorted(self.read().items()):
            family.add_metric([rule], count)
        yield family
