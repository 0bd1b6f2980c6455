"""Observability: every name the dashboard and the alert rules use is one the relay exports
after carrying traffic, every metric family has a real value, and the health endpoints."""

from __future__ import annotations

import json
import pathlib
import time

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from smpprelay.collectors import RedisCollector, RedisReading
from tests.certs import make_certs
from tests.observability import (
    alert_rules,
    dashboard_queries,
    unknown_names,
)

from .apps import http_get
from .conftest import Harness, free_port, wait_for
from .traffic import Traffic


@pytest_twisted.ensureDeferred
async def test_dashboard_and_alerts_use_only_names_the_relay_exports(
    harness: Harness, tmp_path: pathlib.Path
) -> None:
    """Scrape a relay that carried traffic (and has a TLS listener): every name in every
    dashboard query and alert expression is exported, and every metric family has a real,
    non-trivial value."""
    certs = make_certs(tmp_path)
    tls = {"port": 0, "cert": certs.cert, "key": certs.key}
    relay = await harness.relay(listen={"host": "127.0.0.1", "port": 0, "tls": tls})
    traffic = Traffic(harness, relay)
    await traffic.start()
    await traffic.round()
    await traffic.misbehave()
    await traffic.lose_upstream()
    await traffic.round()
    # A receipt that matches nothing is counted after its one-second second look.
    unmatched = {"kind": "receipt", "result": "unmatched"}
    registry = relay.metrics.registry
    await wait_for(lambda: registry.get_sample_value("smpprelay_deliveries_total", unmatched) == 2)

    code, body = await http_get(relay, "/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    exported = {s.name for f in families.values() for s in f.samples}
    # The Redis families come with store.backend redis only (tests/store/test_redis_store.py).
    redis = RedisCollector(lambda: RedisReading(True, 0, 0, 0.0, (0.1,), [0]))
    exported |= {s.name for f in redis.collect() for s in f.samples}

    queries = dashboard_queries() + [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    assert unknown_names(queries, exported) == {}
    assert len(alert_rules()) >= 8

    def value(name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            s.value
            for f in families.values()
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("smpprelay_bound_sessions", account="app1", bind_type="transceiver") == 1
    assert value("smpprelay_bound_sessions", account="app2", bind_type="transmitter") == 1
    assert value("smpprelay_bind_attempts_total", result="ok") >= 2
    assert value("smpprelay_bind_attempts_total", result="credentials") == 1
    # 16 from the two rounds, and one an app sent before binding.
    assert (
        value("smpprelay_pdus_total", side="downstream", direction="in", command="submit_sm") == 17
    )
    assert (
        value("smpprelay_pdus_total", side="downstream", direction="out", command="deliver_sm") >= 8
    )
    assert value("smpprelay_submits_total", account="app1", status="ESME_ROK") == 8
    assert value("smpprelay_submits_total", account="app1", status="ESME_RSUBMITFAIL") == 4
    assert value("smpprelay_submits_total", account="app2", status="ESME_ROK") == 2
    assert value("smpprelay_submit_latency_seconds_count", account="app1") == 14
    assert value("smpprelay_deliver_latency_seconds_count", account="app1") >= 8
    assert value("smpprelay_filter_decisions_total", filter="dedup", action="reject") == 2
    assert value("smpprelay_filter_decisions_total", filter="encoding", action="reject") == 2
    assert value("smpprelay_concat_open_messages") == 2
    assert value("smpprelay_dedup_entries") > 0
    assert value("smpprelay_flood_entries") > 0
    assert value("smpprelay_parts_billed_total", data_coding="0") > 0
    assert value("smpprelay_upstream_sessions", state="bound") == 1
    assert value("smpprelay_upstream_submits_total", status="ESME_ROK") == 8
    assert value("smpprelay_upstream_throttled_total") == 2
    assert value("smpprelay_upstream_window_size") == 10
    assert "smpprelay_upstream_window_in_use" in exported
    assert value("smpprelay_upstream_round_trip_seconds_count") == 10
    assert value("smpprelay_upstream_reconnects_total", reason="lost") == 1
    assert value("smpprelay_deliveries_received_total", kind="receipt") >= 7
    assert value("smpprelay_deliveries_received_total", kind="mo") == 2
    assert value("smpprelay_deliveries_total", kind="receipt", result="delivered") >= 6
    assert value("smpprelay_deliveries_total", kind="mo", result="delivered") == 2
    assert value("smpprelay_held_deliveries", account="app2") == 2
    assert value("smpprelay_build_info") == 1
    assert value("smpprelay_start_time_seconds") > 1.6e9
    assert value("process_resident_memory_bytes") > 0
    assert value("smpprelay_deliveries_total", kind="receipt", result="unmatched") == 2
    # The apps that misbehaved.
    refused = "smpprelay_rejected_requests_total"
    assert value(refused, command="submit_sm", status="ESME_RINVBNDSTS") == 1
    assert value(refused, command="other", status="ESME_RINVCMDID") == 1
    assert value("smpprelay_framing_errors_total", side="downstream", reason="too_short") == 1
    assert value("smpprelay_unexpected_pdus_total", command="submit_sm_resp") == 1
    assert "smpprelay_connections_refused_total" in exported  # every reason at 0
    assert value("smpprelay_connections_refused_total") == 0
    expiry = value("smpprelay_tls_certificate_expiry_timestamp_seconds", certificate="listen")
    assert time.time() < expiry < time.time() + 2 * 86400  # the test certificate: one day


@pytest_twisted.ensureDeferred
async def test_healthz_alive_and_readyz_says_why_not_ready(harness: Harness) -> None:
    """/healthz answers 200 while the process runs; /readyz 503 with a JSON reason."""
    relay = await harness.relay(
        bound=0,
        upstream={"host": "127.0.0.1", "port": free_port(), "system_id": "r", "password": "p"},
    )
    code, body = await http_get(relay, "/healthz")
    assert (code, json.loads(body)) == (200, {"ready": True, "reason": "alive"})
    code, body = await http_get(relay, "/readyz")
    assert (code, json.loads(body)) == (
        503,
        {"ready": False, "reason": "no upstream session bound"},
    )
