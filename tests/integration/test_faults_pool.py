"""The upstream pool's faults over real sockets: a `twistd -n smpprelay` in front of a
scripted operator that enforces its window."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from smpprelay import pdu
from smpprelay.pdu import Status
from tests.integration.apps import message
from tests.integration.conftest import Harness
from tests.integration.scripted import RelayProcess, relay_settings, scripted_smsc

WINDOW = 4


def _udh(reference: int, total: int, number: int) -> bytes:
    return bytes((5, 0, 3, reference, total, number))


@pytest_twisted.ensureDeferred
async def test_long_message_parts_keep_the_operator_window(
    harness: Harness, tmp_path: Path
) -> None:
    """Operator window 4, two submits held in flight, then a 4-part message: two parts go
    into the room left, the other two wait for answers; all four reach the operator in order
    on one connection, none is throttled, and the app's last part is answered ESME_ROK."""
    smsc, port = await scripted_smsc(harness)
    smsc.window = WINDOW
    smsc.hold = True
    settings = relay_settings(port, upstream={"window": WINDOW})
    async with RelayProcess(tmp_path, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        for text in (b"single one", b"single two"):
            await app.send(**message(text))
        await relay.wait_for(lambda: len(smsc.held) == 2)
        parts = [
            message(_udh(0x42, WINDOW, n) + b"part %d" % n, esm_class=0x40)
            for n in range(1, WINDOW + 1)
        ]
        for part in parts[:-1]:
            answer = await app.submit(**part)
            assert answer.status == Status.ESME_ROK  # held by the relay, answered at once
        last = await app.send(**parts[-1])
        await relay.wait_for(lambda: len(smsc.held) == WINDOW, what="the window full")
        assert smsc.answer_held() == WINDOW  # the two singles and parts 1-2
        await relay.wait_for(lambda: len(smsc.held) == 2, what="parts 3 and 4")
        assert smsc.answer_held() == 2
        await app.read_until(lambda: any(r.sequence == last.sequence for r in app.responses))
        (verdict,) = [r for r in app.responses if r.sequence == last.sequence]
        assert verdict.status == Status.ESME_ROK
        assert smsc.throttled == 0
        relayed = [pdu.read_short_message(frame).short_message for frame in smsc.submitted]
        assert relayed[2:] == [_udh(0x42, WINDOW, n) + b"part %d" % n for n in range(1, 5)]
        assert len(smsc.connections) == 1
        await app.close()
        code, log = await relay.stop()
    assert code in (0, -15), log


@pytest_twisted.ensureDeferred
async def test_long_message_with_more_parts_than_the_window_is_refused_whole(
    harness: Harness, tmp_path: Path
) -> None:
    """5 parts against upstream.window 4: no part reaches the operator, the completing part
    is answered ESME_RMSGQFUL (apps retry it) and each held part gets a REJECTD receipt."""
    smsc, port = await scripted_smsc(harness)
    settings = relay_settings(port, upstream={"window": WINDOW})
    async with RelayProcess(tmp_path, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        total = WINDOW + 1
        for n in range(1, total + 1):
            text = _udh(0x43, total, n) + b"part %d" % n
            await app.send(**message(text, esm_class=0x40, registered_delivery=1))
        await app.read_until(lambda: len(app.responses) == total and len(app.deliveries) == 4)
        assert [r.status for r in app.responses] == [Status.ESME_ROK] * 4 + [Status.ESME_RMSGQFUL]
        assert sorted(d.receipted_message_id for d in app.deliveries) == sorted(
            r.message_id for r in app.responses[:4]
        )
        assert all(b"stat:REJECTD" in d.short_message for d in app.deliveries)
        assert smsc.submitted == []
        assert "a message of 5 parts is refused whole" in relay.log
        await app.close()
        code, log = await relay.stop()
    assert code in (0, -15), log
