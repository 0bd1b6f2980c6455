"""The Grafana dashboard and the alert rules: every panel follows the Job picker, every metric
is on it, and the PromQL reader that checks their names against what the relay exports."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from smpprelay.metrics import Metrics
from smpprelay.state import store_reading
from smpprelay.store.memory import MemoryStore
from smpprelay.store.tables import ReceiptRoutes
from tests.observability import dashboard, dashboard_queries, metric_names, unknown_names

# Exported but not drawn, and why.
NOT_DRAWN = {
    "process_start_time_seconds": "uptime comes from smpprelay_start_time_seconds",
    "process_virtual_memory_bytes": "resident memory is the one that matters",
}
_SELECTOR = re.compile(r"\b((?:smpprelay|process)_[a-z_]+|up)\b(\{[^{}]*\})?")


def _exported() -> set[str]:
    registry = CollectorRegistry()
    # The store's families come from its collector, registered when the relay is built.
    store = MemoryStore(ReceiptRoutes(ttl=60.0, max_entries=10), final_grace=1.0)
    Metrics(registry).watch_store(store_reading(store))
    return {family.name for family in registry.collect()}


def _family(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", name)


def test_every_selector_follows_the_job_picker() -> None:
    """With several relays (or other jobs) in one Prometheus, picking a job filters every
    panel and the account list."""
    missing = []
    for title, expr in dashboard_queries():
        if title == "$job":
            continue  # the picker's own list: every job
        for match in _SELECTOR.finditer(expr):
            if 'job=~"$job"' not in (match.group(2) or ""):
                missing.append((title, match.group(0)))
    assert missing == []


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """A metric added to the relay must get a panel, or a reason here why not."""
    drawn = {_family(name) for _, expr in dashboard_queries() for name in metric_names(expr)}
    undrawn = {name for name in _exported() if _family(name) not in drawn}
    assert undrawn == set(NOT_DRAWN)


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        for y in range(grid["y"], grid["y"] + grid["h"]):
            for x in range(grid["x"], grid["x"] + grid["w"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]
        assert grid["x"] + grid["w"] <= 24


def test_metric_names_are_read_out_of_promql() -> None:
    """Functions, labels, ranges, grouping, strings and numbers are not taken for names."""
    expr = (
        "histogram_quantile(0.99, sum by (le, account) (rate(smpprelay_submit_latency_seconds_"
        'bucket{account=~"$account", status!="x"}[$__rate_interval]))) / on (instance) '
        "group_left sum without (session) (smpprelay_upstream_window_size) > 1e3 "
        "and time() - process_start_time_seconds offset 5m"
    )
    assert metric_names(expr) == {
        "smpprelay_submit_latency_seconds_bucket",
        "smpprelay_upstream_window_size",
        "process_start_time_seconds",
    }


def test_a_renamed_metric_is_reported() -> None:
    """The check fails for a query whose metric the relay does not export (a rename)."""
    exported = {"smpprelay_submits_total", "smpprelay_upstream_queue"}
    queries = [
        ("ok", "sum(rate(smpprelay_submits_total[1m]))"),
        ("renamed", "sum(rate(smpprelay_submit_total[1m])) + smpprelay_upstream_queue"),
        ("prometheus", 'up{job="smpprelay"} == 0'),
    ]
    assert unknown_names(queries, exported) == {
        "renamed: sum(rate(smpprelay_submit_total[1m])) + smpprelay_upstream_queue": {
            "smpprelay_submit_total"
        }
    }


def test_dashboard_has_datasource_and_account_variables_on_every_panel() -> None:
    """Importable into Grafana 10+: a Prometheus data-source variable used by every panel, an
    account variable used by the per-account queries, and the panels the operators need."""
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["account"]["type"] == "query"
    assert variables["account"]["includeAll"] is True
    assert board["schemaVersion"] >= 36
    panels = [p for p in board["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in panels).lower()
    for needed in (
        "traffic in/out per account",
        "answers to apps by status",
        "operator answers by status",
        "rule rejections by rule",
        "submit latency",
        "window use",
        "session state",
        "held per account",
        "unmatched",
        "reconnects",
    ):
        assert needed in titles
    assert any('account=~"$account"' in expr for _, expr in dashboard_queries())
