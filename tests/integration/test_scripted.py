"""The fault harness itself: a relay subprocess in front of a scripted operator."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from smpprelay.pdu import Status
from tests.integration.apps import message
from tests.integration.conftest import Harness
from tests.integration.scripted import RelayProcess, relay_settings, scripted_smsc


@pytest_twisted.ensureDeferred
async def test_scripted_operator_answers_as_told_through_a_twistd_relay(
    harness: Harness, tmp_path: Path
) -> None:
    """The operator's scripted status reaches the app through the relay subprocess; held
    submits are answered when the test says; a SIGTERM stops the relay."""
    smsc, port = await scripted_smsc(harness)
    smsc.statuses.append(Status.ESME_RTHROTTLED)
    async with RelayProcess(tmp_path, relay_settings(port)) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        throttled = await app.submit(**message(b"first"))
        assert throttled.status == Status.ESME_RTHROTTLED
        smsc.hold = True
        request = await app.send(**message(b"second"))
        await relay.wait_for(lambda: len(smsc.held) == 1)
        assert smsc.answer_held() == 1
        await app.read_until(lambda: any(r.sequence == request.sequence for r in app.responses))
        (answer,) = [r for r in app.responses if r.sequence == request.sequence]
        assert answer.status == Status.ESME_ROK
        assert len(smsc.submitted) == 2
        await app.close()
        code, log = await relay.stop()
    assert "Server Shut Down." in log, log
    assert code == 0, log
