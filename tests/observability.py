"""The dashboard's and the alert rules' queries, and the metric names they use.

A PromQL expression is reduced to its metric names by taking out what is not one: strings
(label values, template variables), label matchers, ranges, grouping clauses, function calls
and keywords. What is left must be a name the relay exports (or Prometheus's own ``up``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "etc" / "grafana" / "smpprelay.json"
ALERTS = ROOT / "etc" / "prometheus" / "alerts.yml"
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_FUNCTION = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(")
_IDENT = re.compile(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRING.sub(" ", expr)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _FUNCTION.sub("(", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in _KEYWORDS}


def _targets(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    found = []
    for panel in panels:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
        found.extend(_targets(panel.get("panels", [])))
    return found


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard as JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every panel query, then (variable name, query) per variable."""
    board = dashboard()
    queries = _targets(board["panels"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            # label_values(metric, label): the metric is the selector inside.
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            queries.append((f"${variable['name']}", inner.group(1) if inner else query))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of every group in the alert rules file."""
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def unknown_names(queries: list[tuple[str, str]], exported: set[str]) -> dict[str, set[str]]:
    """For each query using a name that is not exported: where it is and the names."""
    unknown = {}
    for where, expr in queries:
        missing = metric_names(expr) - exported - PROMETHEUS_OWN
        if missing:
            unknown[f"{where}: {expr}"] = missing
    return unknown


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus can run it: every account and job, a 1 minute rate."""
    return expr.replace("$__rate_interval", "1m").replace("$account", ".*").replace("$job", ".*")
