"""Logs: structured twisted.logger events, one JSON object per line under twistd's
``--logger smpprelay.logs.json_observer``, and never a password or a message's text."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from zope.interface import provider

from smpprelay.logs import event_as_json

from .conftest import CLIENTS, Harness, free_port, relay_config
from .traffic import SECRET_TEXT, Traffic
from .twistd import STOP_DEADLINE, running, submit_and_get_receipt, twistd_args, wait_until_ready


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    """Every event logged at INFO or above while the test runs."""
    seen: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.info:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_no_password_or_message_text_in_logs_at_info(
    harness: Harness, events: list[LogEvent]
) -> None:
    """Binds (one with a wrong password), submits, refusals, receipts and MO: no event, text
    or field, carries a password or the text of a message."""
    relay = await harness.relay()
    traffic = Traffic(harness, relay)
    await traffic.start()
    await traffic.round()
    await traffic.lose_upstream()

    lines = [event_as_json(event) for event in events]
    secrets = [c["password"] for c in CLIENTS] + ["not-the-password", "pw", "sim"]
    text = SECRET_TEXT.decode()
    for line in lines:
        assert text not in line, line
        assert "never completed" not in line, line
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("time", "namespace"):
                assert value not in secrets, line
        for secret in secrets[:3]:
            assert secret not in line, line
    records = [json.loads(line) for line in lines]
    binds = [r for r in records if r.get("account") == "app1" and "bound as" in r["message"]]
    assert binds, lines
    assert binds[0]["peer"].startswith("127.0.0.1:")
    assert any("dedup rejected" in r["message"] and r["account"] == "app1" for r in records)
    assert any(r.get("reason") == "credentials" for r in records)


def test_twistd_logger_option_writes_one_json_object_per_line(tmp_path: Path) -> None:
    """``twistd --logger smpprelay.logs.json_observer smpprelay``: every line is JSON."""
    smpp_port, metrics_port = free_port(), free_port()
    config = tmp_path / "relay.yaml"
    loopback = "127.0.0.1"
    listen, metrics = (
        {"host": loopback, "port": smpp_port},
        {"host": loopback, "port": metrics_port},
    )
    config.write_text(yaml.safe_dump(relay_config(listen=listen, metrics=metrics)))
    args = twistd_args(
        "--logger", "smpprelay.logs.json_observer", "smpprelay", "--config", str(config)
    )
    with running(args, tmp_path) as (process, log):
        wait_until_ready(metrics_port, log)
        resp, _receipt = submit_and_get_receipt(smpp_port, "app1", "secret1")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=STOP_DEADLINE)
    assert resp.status == 0
    text = log.read_text()
    records: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    assert any(r.get("account") == "app1" and "bound as" in r["message"] for r in records)
    assert records[-1]["message"] == "Server Shut Down."
    assert "secret1" not in text
    assert "hello from twistd test" not in text
