"""Every Prometheus metric of the relay, on a registry that is passed in (never the global one).

Labels are accounts, sessions, commands, status names and reasons, never phone numbers or
message ids, so the number of series stays bounded. Hot-path children are cached because
``labels()`` costs about four times what ``inc()`` on a cached child does. The families a
relayed submit or delivery updates keep plain numbers, exported at scrape time with the samples
a prometheus_client Counter or Histogram would have (`PlainCounter`, `PlainCounters`,
`PlainHistogram`): no lock is taken per submit.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource

from smpprelay import __version__
from smpprelay.collectors import (
    PlainCount,
    PlainCounter,
    PlainCounters,
    PlainHistogram,
    PlainObservations,
    RedisCollector,
    RedisReading,
    StoreCollector,
    StoreReading,
    UnsentCollector,
)
from smpprelay.pdu import Status, command_label
from smpprelay.pdu_counts import PduCounter
from smpprelay.smpp.constants import status_label

# Which connections a PDU count is about: the apps' (downstream), ours to the operator
# (upstream), or the built-in simulated SMSC's.
Side = Literal["downstream", "upstream", "simulator"]
Direction = Literal["in", "out"]

# SMPP latencies run from a fraction of a millisecond (loopback) to the 30 s response timer.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
LATENCY_BOUNDS = (*LATENCY_BUCKETS, float("inf"))  # a PlainHistogram's bounds for them


class Metrics:
    """The relay's metric families and cached children for the hot path."""

    def __init__(
        self, registry: CollectorRegistry | None = None, vendor_statuses: Iterable[int] = ()
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # Statuses outside SMPP 3.4 that get a label of their own (upstream.vendor_statuses);
        # every other one is labelled "other" (`status_label`).
        self.vendor_statuses = frozenset(vendor_statuses)
        r = self.registry
        self.build_info = Gauge(
            "smpprelay_build_info", "Version of the running relay.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.start_time = Gauge(
            "smpprelay_start_time_seconds", "When the relay started (unix time).", registry=r
        )
        self.start_time.set(time.time())
        # Configuration reloads (SIGHUP, smpprelay.reload); both results exist from the start.
        self.config_reloads = Counter(
            "smpprelay_config_reloads_total",
            "Configuration reloads (SIGHUP), by result (ok, failed).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):
            self.config_reloads.labels(result)
        self.config_last_reload = Gauge(
            "smpprelay_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (unix time; start counts).",
            registry=r,
        )
        self.config_last_reload.set(time.time())
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        ProcessCollector(registry=r)
        # downstream
        self.bound_sessions = Gauge(
            "smpprelay_bound_sessions",
            "App sessions bound now, by account and bind type.",
            ["account", "bind_type"],
            registry=r,
        )
        self.bind_attempts = Counter(
            "smpprelay_bind_attempts_total",
            "Bind requests from apps, by result.",
            ["result"],
            registry=r,
        )
        self.bind_lockouts = Counter(
            "smpprelay_bind_lockouts_total",
            "Addresses locked out after too many failed binds.",
            registry=r,
        )
        self.locked_addresses = Gauge(
            "smpprelay_locked_addresses", "Addresses locked out now.", registry=r
        )
        self.connections_refused = Counter(
            "smpprelay_connections_refused_total",
            "App connections dropped at accept, by reason.",
            ["reason"],
            registry=r,
        )
        self.submits = PlainCounters(
            "smpprelay_submits_total",
            "submit_sm from apps, by account and the status they were answered.",
            ["account", "status"],
        )
        r.register(self.submits)
        self._pdus = PduCounter(
            "smpprelay_pdus",
            "PDUs read (in) and written (out), by side, direction and command "
            "(commands not in SMPP 3.4 count as other).",
            ["side", "direction", "command"],
        )
        r.register(self._pdus)
        # side -> direction -> the frame's raw command_id bytes -> PDUs: the hot path counts
        # without building a key tuple or decoding the id; `PduCounter` folds these into the
        # same series at scrape time.
        self._pdu_tables = self._pdus.tables
        self.submit_latency = PlainHistogram(
            "smpprelay_submit_latency_seconds",
            "From an app's submit_sm in to its submit_sm_resp out.",
            ["account"],
            buckets=LATENCY_BUCKETS,
        )
        r.register(self.submit_latency)
        self.deliver_latency = PlainHistogram(
            "smpprelay_deliver_latency_seconds",
            "From a deliver_sm (receipt or MO) out to an app to its deliver_sm_resp, by account.",
            ["account"],
            buckets=LATENCY_BUCKETS,
        )
        r.register(self.deliver_latency)
        self.certificate_expiry = Gauge(
            "smpprelay_tls_certificate_expiry_timestamp_seconds",
            "When a certificate the relay presents expires (Unix time): the apps' listener's "
            "(listen) and ours to the operator (upstream).",
            ["certificate"],
            registry=r,
        )
        self.tls_failures = Counter(
            "smpprelay_tls_failures_total",
            "TLS handshakes or sessions that failed (the connection is closed), by side.",
            ["side"],
            registry=r,
        )
        for side in ("downstream", "upstream"):
            self.tls_failures.labels(side)
        self.framing_errors = Counter(
            "smpprelay_framing_errors_total",
            "Streams that could not be split into PDUs (the connection is closed).",
            ["side", "reason"],
            registry=r,
        )
        self.unexpected_pdus = Counter(
            "smpprelay_unexpected_pdus_total",
            "PDUs dropped without an answer: responses to nothing, generic_nacks, late answers.",
            ["side", "command"],
            registry=r,
        )
        self.rejected_requests = Counter(
            "smpprelay_rejected_requests_total",
            "Requests answered with an error before reaching the relay, by command and status.",
            ["side", "command", "status"],
            registry=r,
        )
        self.operations = Counter(
            "smpprelay_operations_total",
            "query_sm, cancel_sm, replace_sm, submit_multi and data_sm from apps, by account, "
            "command and the status they were answered with.",
            ["account", "command", "status"],
            registry=r,
        )
        self.session_timeouts = Counter(
            "smpprelay_session_timeouts_total",
            "Sessions closed by a timer, by timer.",
            ["side", "timer"],
            registry=r,
        )
        # rules
        self.filter_decisions = Counter(
            "smpprelay_filter_decisions_total",
            "Decisions of the operator rules, by rule, action and reason.",
            ["filter", "action", "reason"],
            registry=r,
        )
        # Counted for every accepted submit: plain integers (see PlainCounter).
        self.parts_billed = PlainCounter(
            "smpprelay_parts_billed",
            "SMS parts the operator will bill for the submits relayed, by data_coding.",
            ["data_coding"],
            lambda data_coding: [str(data_coding)],
        )
        r.register(self.parts_billed)
        self.concat_open = Gauge(
            "smpprelay_concat_open_messages",
            "Concatenated messages waiting for their remaining parts.",
            registry=r,
        )
        self.dedup_entries = Gauge(
            "smpprelay_dedup_entries", "Messages remembered by the duplicate rule.", registry=r
        )
        self.flood_entries = Gauge(
            "smpprelay_flood_entries", "Destinations tracked by the flood rule.", registry=r
        )
        # upstream
        self.upstream_sessions = Gauge(
            "smpprelay_upstream_sessions",
            "Upstream sessions by state (connecting, bound).",
            ["session", "state"],
            registry=r,
        )
        self.upstream_submits = PlainCounters(
            "smpprelay_upstream_submits_total",
            "submit_sm sent to the operators, by upstream and the status it answered.",
            ["upstream", "status"],
        )
        r.register(self.upstream_submits)
        self.upstream_throttled = PlainCounters(
            "smpprelay_upstream_throttled_total",
            "submit_sm the operator answered ESME_RTHROTTLED.",
        )
        r.register(self.upstream_throttled)
        self.upstream_round_trip = PlainHistogram(
            "smpprelay_upstream_round_trip_seconds",
            "From a submit_sm sent to the operator to its answer.",
            buckets=LATENCY_BUCKETS,
        )
        r.register(self.upstream_round_trip)
        self.upstream_window_in_use = Gauge(
            "smpprelay_upstream_window_in_use",
            "Requests in flight on each upstream session (read when scraped).",
            ["session"],
            registry=r,
        )
        self.upstream_window_size = Gauge(
            "smpprelay_upstream_window_size",
            "Requests each upstream session may have in flight (upstream.window).",
            ["session"],
            registry=r,
        )
        self.upstream_reconnects = Counter(
            "smpprelay_upstream_reconnects_total",
            "Upstream connection or bind attempts that failed, by reason.",
            ["session", "reason"],
            registry=r,
        )
        # Several upstreams (smpprelay.routing): which one each submit went to, and failovers.
        self.upstream_routed = PlainCounters(
            "smpprelay_upstream_routed_total",
            "Submits handed to each upstream (before its answer).",
            ["upstream"],
        )
        r.register(self.upstream_routed)
        self.upstream_failovers = Counter(
            "smpprelay_upstream_failovers_total",
            "Submits sent to a later candidate because the preferred upstream had no bound "
            "session.",
            ["from", "to"],
            registry=r,
        )
        self.upstream_queue = Gauge(
            "smpprelay_upstream_queue",
            "Submits waiting for an upstream session with room in its window.",
            registry=r,
        )
        # receipts and MO
        self.deliveries_received = PlainCounters(
            "smpprelay_deliveries_received_total",
            "deliver_sm from the operator, by kind (receipt, mo, unknown when unreadable).",
            ["kind"],
        )
        r.register(self.deliveries_received)
        self.deliveries = PlainCounters(
            "smpprelay_deliveries_total",
            "Receipts and MO from the operator, by kind and what became of them.",
            ["kind", "result"],
        )
        r.register(self.deliveries)
        self.held = Gauge(
            "smpprelay_held_deliveries",
            "Receipts and MO waiting for an app to bind a receiver or to accept them.",
            ["account"],
            registry=r,
        )
        self.receipt_routes = Gauge(
            "smpprelay_receipt_routes",
            "Operator message ids remembered to route their receipts.",
            registry=r,
        )
        self.receipt_routes_evicted = Counter(
            "smpprelay_receipt_routes_evicted",
            "Receipt routes dropped, oldest first, because receipts.map_max were held: their "
            "receipts will count as unmatched.",
            registry=r,
        )
        # Series that alerts and dashboards watch for increases exist from the start at 0,
        # so the first failure is an increase and not a series appearing out of nowhere.
        for kind in ("receipt", "mo"):
            self.deliveries_received.labels(kind)
            for result in (
                "delivered",
                "held",
                "refused",
                "expired",
                "store_full",
                "store_unavailable",
                "handed_over",  # to the instance with a receiver (smpprelay.handover)
            ):
                self.deliveries.labels(kind, result)
        self.deliveries.labels("receipt", "unmatched")
        self.deliveries.labels("mo", "unroutable")
        self.session_timeouts.labels("upstream", "enquire_link")
        self._submit_children: dict[tuple[str, int], tuple[PlainCount, PlainObservations]] = {}
        self._upstream_children: dict[tuple[str, int], PlainCount] = {}
        # The pool's back-off from an operator that throttles (smpprelay.pool).
        self.upstream_window_effective = Gauge(
            "smpprelay_upstream_window_effective",
            "Requests each upstream session may have in flight now: upstream.window, less while "
            "the operator throttles it (halved per throttle answer, 0 while paused).",
            ["session"],
            registry=r,
        )
        self.upstream_backoffs = Counter(
            "smpprelay_upstream_backoffs",
            "Times an upstream session started backing off because the operator answered "
            "ESME_RTHROTTLED or ESME_RMSGQFUL.",
            ["session"],
            registry=r,
        )
        # The operator's rate cap (smpprelay.pace), when upstream.throughput is set.
        self.upstream_pace = Gauge(
            "smpprelay_upstream_pace",
            "Submits per second the relay may send upstream now, over all sessions: "
            "upstream.throughput, less while the operator throttles (0: no cap configured).",
            registry=r,
        )
        self.upstream_pace_decreases = Counter(
            "smpprelay_upstream_pace_decreases",
            "Times the operator's ESME_RTHROTTLED halved the upstream pace.",
            registry=r,
        )
        self.session_timeouts.labels("downstream", "deliver_sm")
        for kind in ("receipt", "mo"):
            self.deliveries.labels(kind, "retry_later")
            self.deliveries.labels(kind, "lost_at_stop")

        self.concat_held_bytes = Gauge(
            "smpprelay_concat_held_bytes",
            "Bytes of the concatenated parts held until their message is whole "
            "(filters.concat.max_held_bytes caps them).",
            registry=r,
        )
        self.late_answers = Counter(
            "smpprelay_late_answers",
            "Responses that came after their request's response timeout (the request was "
            "already answered as failed), by side and status.",
            ["side", "status"],
            registry=r,
        )
        self.late_answers.labels("upstream", "ESME_ROK")  # watched for increases: exists at 0

    def watch_store(self, read: Callable[[], StoreReading]) -> None:
        """Export the store's state from ``read``, called at each scrape."""
        self.registry.register(StoreCollector(read))

    def watch_redis(self, read: Callable[[], RedisReading]) -> None:
        """Export the Redis link's round trips, errors and health from ``read``, per scrape."""
        self.registry.register(RedisCollector(read))

    def watch_unsent(self, read: Callable[[], dict[str, int]]) -> None:
        """Export the outcomes the shared rules could not write to Redis (rule -> count, from
        ``read`` at each scrape)."""
        self.registry.register(UnsentCollector(read))

    def status_label(self, status: int) -> str:
        """``status`` as a label of the metrics labelled by status: bounded in number."""
        return status_label(status, self.vendor_statuses)

    def count_submit(self, account: str, status: int, seconds: float) -> None:
        """An app's submit_sm was answered with ``status`` after ``seconds``."""
        children = self._submit_children
        pair = children.get((account, status))
        if pair is None:
            pair = (
                self.submits.labels(account, self.status_label(status)),
                self.submit_latency.labels(account),
            )
            # Cached under the status only while the cache is small: the operator picks the
            # statuses, and one entry per value it sends would grow without bound.
            if len(children) < _CACHE_MAX:
                children[(account, status)] = pair
        count, latency = pair
        count.value += 1  # plain numbers, exported at scrape time (PlainCounters)
        latency.buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        latency.sum += seconds

    def count_operation(self, account: str, command_id: int, status: int) -> None:
        """An app's query_sm, cancel_sm, replace_sm, submit_multi or data_sm was answered."""
        self.operations.labels(account, command_label(command_id), self.status_label(status)).inc()

    def count_upstream_submit(self, status: int, upstream: str = "default") -> None:
        """The operator ``upstream`` answered a submit_sm with ``status``."""
        children = self._upstream_children
        key = (upstream, status)
        child = children.get(key)
        if child is None:
            child = self.upstream_submits.labels(upstream, self.status_label(status))
            if len(children) < _CACHE_MAX:
                children[key] = child
        child.value += 1
        if status == _THROTTLED:
            self.upstream_throttled.inc()

    def pdu_table(self, side: Side, direction: Direction) -> dict[bytes, int]:
        """The counts `count_pdu` keeps for ``side`` and ``direction``, by the frame's
        command_id bytes: a connection may add 1 to a key already there itself (once per PDU,
        no call), and calls `count_pdu` for a key that is not."""
        return self._pdu_tables[side][direction]

    def count_pdu(self, side: Side, direction: Direction, frame: bytes) -> None:
        """A PDU went ``direction`` ("in" or "out") on a connection of ``side``."""
        counts = self._pdu_tables[side][direction]
        key = frame[4:8]
        n = counts.get(key)
        if n is None:
            self._pdus.first(counts, side, direction, key)
        else:
            counts[key] = n + 1


# Cached label children per (account, status) or status; past this, lookups go to `labels`.
_CACHE_MAX = 4096
# An IntEnum member's lookup costs four times a global int's; this one is read per submit.
_THROTTLED = int(Status.ESME_RTHROTTLED)


def metrics_resource(metrics: Metrics, ready: Callable[[], tuple[bool, str]]) -> Resource:
    """The HTTP tree: ``/metrics`` and ``/healthz``, ``/readyz``."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    root.putChild(b"healthz", _Health(lambda: (True, "alive")))
    root.putChild(b"readyz", _Health(ready))
    return root


class _Health(Resource):
    isLeaf = True

    def __init__(self, check: Callable[[], tuple[bool, str]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._check = check

    def render_GET(self, request: Any) -> bytes:
        ok, why = self._check()
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"ready": ok, "reason": why}).encode()
