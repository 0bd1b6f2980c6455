"""Prometheus collectors the relay's metrics are read through at scrape time: plain integer
counters for the hot path (`PlainCounter`), the store's state (`StoreCollector`), the link
to Redis (`RedisCollector`) and what the shared rules could not write to it
(`UnsentCollector`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "PlainCounter",
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
