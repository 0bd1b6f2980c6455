"""Deliveries during a graceful stop, over real sockets: `twistd -n smpprelay` in front of a
scripted operator, an smpplib app bound as a transceiver."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from smpprelay.pdu import Status
from tests.integration.apps import message
from tests.integration.conftest import Harness
from tests.integration.scripted import RelayProcess, relay_settings, scripted_smsc


@pytest_twisted.ensureDeferred
async def test_an_mo_arriving_while_the_stop_drains_reaches_the_still_bound_app(
    harness: Harness, tmp_path: Path
) -> None:
    """SIGTERM while the app's submit waits for the operator: the stop waits for it. An MO the
    operator sends meanwhile reaches the app (before: answered OK to the operator and held in
    memory for an app that was leaving, so lost at exit); then the held submit is answered,
    the app is unbound and the relay exits 0."""
    smsc, port = await scripted_smsc(harness)
    smsc.hold = True
    async with RelayProcess(tmp_path, relay_settings(port)) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        request = await app.send(**message(b"in flight at the stop"))
        await relay.wait_for(lambda: len(smsc.held) == 1, what="the submit at the operator")
        relay.terminate()
        await relay.wait_for(lambda: "unbinding the bound ones" in relay.log, what="stopping")
        smsc.send_mo("relay", b"79990000001", b"79001234", b"MO during the stop")
        await app.read_until(lambda: len(app.deliveries) == 1)
        assert app.deliveries[0].short_message == b"MO during the stop"
        assert smsc.answer_held() == 1
        await app.read_until(lambda: any(r.sequence == request.sequence for r in app.responses))
        (answer,) = [r for r in app.responses if r.sequence == request.sequence]
        assert answer.status == Status.ESME_ROK
        await app.answer_unbind()
        code, log = await relay.stop()
    assert code == 0, log
    assert "lost_at_stop" not in log
