"""How ``twistd smpprelay`` ends on SIGTERM: 0 after a clean stop, bounded when an app stalls."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest_twisted

from tests.integration.conftest import Harness
from tests.integration.scripted import RelayProcess, relay_settings, scripted_smsc


@pytest_twisted.ensureDeferred
async def test_an_app_that_ignores_unbind_cannot_hold_the_stop_past_shutdown_timeout(
    harness: Harness, tmp_path: Path
) -> None:
    """A bound app that never reads (so never answers our unbind) would hold the stop for
    limits.response (30 s here); limits.shutdown_timeout (1 s) bounds it: the relay cuts the
    app off, unbinds upstream, and keeps SIGTERM as its exit status because the stop was not
    clean."""
    _, port = await scripted_smsc(harness)
    settings = relay_settings(port, limits={"response": 30, "shutdown_timeout": 1})
    async with RelayProcess(tmp_path, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        began = time.monotonic()
        code, log = await relay.stop(timeout=10)
        took = time.monotonic() - began
    assert code == -signal.SIGTERM, log
    assert 0.5 <= took < 10, log  # the apps get two thirds of the second, upstream the rest
    assert "still open after limits.shutdown_timeout" in log
    assert "stopped cleanly" not in log
    assert log.rstrip().endswith("Server Shut Down."), log
