"""Upstream faults over real sockets: a `twistd -n smpprelay` subprocess in front of the
scripted operator, apps on smpplib."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from smpprelay import pdu
from smpprelay.pdu import CommandId, Status
from tests.integration.apps import message
from tests.integration.conftest import Harness
from tests.integration.scripted import RelayProcess, relay_settings, scripted_smsc


@pytest_twisted.ensureDeferred
async def test_operator_unbind_with_20_submits_in_flight_delivers_the_operators_20_answers(
    harness: Harness, tmp_path: Path
) -> None:
    """20 submits held by the operator, which then unbinds and answers all 20 OK: the apps get
    20 ESME_ROK (before the fix: 20 errors, and a retry would send each twice), the operator
    saw each once, and the relay rebinds."""
    smsc, port = await scripted_smsc(harness)
    smsc.hold = True
    settings = relay_settings(port, upstream={"window": 20})
    async with RelayProcess(tmp_path, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        requests = [await app.send(**message(b"m%d" % i)) for i in range(20)]
        await relay.wait_for(lambda: len(smsc.held) == 20, what="20 submits held")

        (operator_side,) = smsc.bound
        unbind_resp = await operator_side.send_request(pdu.build(CommandId.unbind, 0))
        assert pdu.header(unbind_resp)[1:3] == (CommandId.unbind_resp, Status.ESME_ROK)
        assert smsc.answer_held() == 20  # the relay still reads the unbound connection

        sequences = {request.sequence for request in requests}
        await app.read_until(lambda: {r.sequence for r in app.responses} >= sequences)
        statuses = [r.status for r in app.responses if r.sequence in sequences]
        assert statuses == [Status.ESME_ROK] * 20
        assert len(smsc.submitted) == 20
        # Nothing was left in flight: the relay closed the unbound connection and bound again.
        await relay.wait_for(lambda: operator_side.closed, what="unbound connection closed")
        await relay.wait_for(lambda: relay.log.count("bound as ") >= 2, 10.0, "rebind")
        await app.close()
        code, log = await relay.stop()
    assert "Unhandled" not in log, log
    assert code in (0, -15), log
