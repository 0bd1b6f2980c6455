"""The Grafana dashboard: every panel follows the Job picker, and every metric is on it."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from smpprelay.metrics import Metrics
from tests.integration.observability import dashboard, dashboard_queries, metric_names

# Exported but not drawn, and why.
NOT_DRAWN = {
    "process_start_time_seconds": "uptime comes from smpprelay_start_time_seconds",
    "process_virtual_memory_bytes": "resident memory is the one that matters",
}
_SELECTOR = re.compile(r"\b((?:smpprelay|process)_[a-z_]+|up)\b(\{[^{}]*\})?")


def _exported() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
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
