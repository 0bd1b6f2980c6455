"""A real Prometheus (Debian's ``prometheus`` package) scrapes a relay carrying traffic and
evaluates every dashboard query and every alert rule through its HTTP API.

Skipped only when the ``prometheus`` binary is not installed; CI installs it (.ci/run).
The server is the test's own: a free loopback port, its own TSDB in a temporary directory,
a 1 s scrape and evaluation interval, and it is stopped when the test ends.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from twisted.internet import task
from twisted.internet.threads import deferToThread

from tests.observability import ALERTS, alert_rules, dashboard_queries, grafana_to_promql

from .conftest import Harness, free_port, port_of
from .traffic import Traffic

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (apt-get install prometheus)"
)

# Panels whose queries must return series once the relay has carried traffic.
MUST_HAVE_SERIES = (
    "Traffic in/out per account",
    "Answers to apps by status",
    "Operator answers by status",
    "Submit latency per account",
    "Operator round trip",
    "Upstream window use",
    "Upstream session state",
)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, why: Callable[[], str]
) -> None:
    """Await ``check()`` every 0.2 s until it holds; fail with ``why()`` after ``timeout``."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not await check():
        if reactor.seconds() > deadline:
            raise AssertionError(why())
        await task.deferLater(reactor, 0.2, lambda: None)


class Prometheus:
    """A Prometheus server process scraping one target every second."""

    def __init__(self, directory: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "smpprelay", "static_configs": [{"targets": [target]}]}
            ],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        assert PROMETHEUS is not None
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    async def get(self, path: str) -> Any:
        """GET an API path; the parsed JSON answer (an HTTP error raises)."""
        return await deferToThread(self._get, path)

    async def query(self, expr: str) -> dict[str, Any]:
        """Evaluate ``expr`` now; the API's whole answer (status, data or error)."""

        def run() -> dict[str, Any]:
            try:
                answer: dict[str, Any] = self._get(
                    "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                )
            except urllib.error.HTTPError as error:
                answer = json.loads(error.read())
            return answer

        return await deferToThread(run)

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until the server answers /-/ready."""

        def probe() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        async def check() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log.read_text()}")
            return bool(await deferToThread(probe))

        await eventually(check, timeout, lambda: f"not ready:\n{self.log.read_text()}")

    async def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns no series."""
        answer = await self.query(expr)
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest_twisted.async_yield_fixture()
async def prometheus_of_relay(
    harness: Harness, tmp_path: Path
) -> AsyncIterator[tuple[Prometheus, Traffic]]:
    relay = await harness.relay()
    server = Prometheus(tmp_path, f"127.0.0.1:{port_of(relay.metrics_listener)}")
    try:
        await server.ready()
        traffic = Traffic(harness, relay)
        await traffic.start()
        await traffic.misbehave()
        yield server, traffic
    finally:
        server.stop()


async def scraped(server: Prometheus, traffic: Traffic) -> None:
    """Wait until Prometheus holds the relay's current count of app1's accepted submits."""
    registry = traffic.relay.metrics.registry
    labels = {"account": "app1", "status": "ESME_ROK"}
    expected = registry.get_sample_value("smpprelay_submits_total", labels)
    expr = 'smpprelay_submits_total{account="app1",status="ESME_ROK"}'
    seen: list[float | None] = [None]

    async def check() -> bool:
        seen[0] = await server.value(expr)
        return seen[0] == expected

    await eventually(check, 15.0, lambda: f"prometheus has {seen[0]}, the relay {expected}")


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_prometheus_evaluates_every_dashboard_query_and_alert_rule(
    prometheus_of_relay: tuple[Prometheus, Traffic],
) -> None:
    """Every query parses and runs; the traffic, status, latency and window panels return
    series; every alert rule loads and evaluates without error."""
    server, traffic = prometheus_of_relay
    # Three scrapes with traffic between them: every rate() has samples that increase.
    for _ in range(3):
        await traffic.round()
        await scraped(server, traffic)

    empty = []
    for title, expr in dashboard_queries():
        if title.startswith("$"):
            continue  # a variable's selector: checked through label_values below
        answer = await server.query(grafana_to_promql(expr))
        assert answer["status"] == "success", (title, expr, answer)
        series = answer["data"]["result"]
        if title in MUST_HAVE_SERIES and not series:
            empty.append((title, expr))
        if "latency" in title.lower() and series:
            assert any(math.isfinite(float(s["value"][1])) for s in series), (title, series)
    assert empty == []

    accounts = await server.get("/api/v1/label/account/values")
    assert {"app1", "app2"} <= set(accounts["data"])

    for rule in alert_rules():
        answer = await server.query(rule["expr"])
        assert answer["status"] == "success", (rule["alert"], answer)

    # Prometheus loaded the rules file itself and evaluates every rule without error.
    loaded: list[dict[str, Any]] = []

    async def evaluated() -> bool:
        answer = await server.get("/api/v1/rules")
        loaded[:] = [r for group in answer["data"]["groups"] for r in group["rules"]]
        assert all(r["health"] != "err" for r in loaded), loaded
        return bool(loaded) and all(r["health"] == "ok" for r in loaded)

    await eventually(evaluated, 10.0, lambda: f"rules not all evaluated: {loaded}")
    assert {r["name"] for r in loaded} == {r["alert"] for r in alert_rules()}


@pytest.mark.skipif(PROMTOOL is None, reason="no promtool")
def test_promtool_accepts_the_alert_rules_and_the_example_config() -> None:
    """``promtool check rules`` and ``check config`` pass on the files in etc/."""
    assert PROMTOOL is not None
    for args in (["check", "rules", str(ALERTS)], ["check", "config", "prometheus.yml"]):
        done = subprocess.run(
            [PROMTOOL, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
