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
    assert code == 0, log


@pytest_twisted.ensureDeferred
async def test_long_message_with_more_parts_than_the_window_goes_whole_in_turn(
    harness: Harness, tmp_path: Path
) -> None:
    """5 parts against an operator window of 4 (which throttles a fifth request in flight):
    four go, the fifth waits for an answer; all five reach the operator in order on one
    connection, none is throttled, and the completing part is answered ESME_ROK."""
    smsc, port = await scripted_smsc(harness)
    smsc.window = WINDOW
    smsc.hold = True
    settings = relay_settings(port, upstream={"window": WINDOW})
    async with RelayProcess(tmp_path, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        total = WINDOW + 1
        texts = [_udh(0x43, total, n) + b"part %d" % n for n in range(1, total + 1)]
        for text in texts[:-1]:
            answer = await app.submit(**message(text, esm_class=0x40))
            assert answer.status == Status.ESME_ROK  # held by the relay, answered at once
        last = await app.send(**message(texts[-1], esm_class=0x40))
        await relay.wait_for(lambda: len(smsc.held) == WINDOW, what="the window full")
        assert smsc.answer_held() == WINDOW
        await relay.wait_for(lambda: len(smsc.held) == 1, what="the fifth part")
        assert smsc.answer_held() == 1
        await app.read_until(lambda: any(r.sequence == last.sequence for r in app.responses))
        (verdict,) = [r for r in app.responses if r.sequence == last.sequence]
        assert verdict.status == Status.ESME_ROK
        assert smsc.throttled == 0
        relayed = [pdu.read_short_message(frame).short_message for frame in smsc.submitted]
        assert relayed == texts
        assert len(smsc.connections) == 1
        await app.close()
        code, log = await relay.stop()
    assert code == 0, log
