"""The rules' faults over real sockets: `twistd -n smpprelay` in front of a scripted operator,
smpplib apps in front of it (fault 1: a long message whose completing part meets a retryable
failure; fault 4: the operator's late ESME_ROK)."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from smpprelay.pdu import Status
from tests.integration.apps import message
from tests.integration.conftest import Harness
from tests.integration.scripted import RelayProcess, relay_settings, scripted_smsc

RSUBMITFAIL = 0x45


def part(seq: int, text: bytes) -> dict[str, object]:
    """Part ``seq`` of a 2-part message (UDH reference 0x5A), asking for a receipt."""
    udh = bytes((5, 0, 3, 0x5A, 2, seq))
    return message(udh + text, esm_class=0x40, registered_delivery=1)


def body_of(frame: bytes) -> bytes:
    """A submit_sm without its header: what identifies a part whatever its sequence number."""
    return frame[16:]


@pytest_twisted.ensureDeferred
async def test_throttled_completing_part_retried_reaches_the_operator_whole_once(
    harness: Harness, tmp_path: Path
) -> None:
    """The operator answers the batch of the completing part ESME_RTHROTTLED; the app retries
    that part: the operator then gets every part exactly once more, the app ESME_ROK, and each
    part's receipt comes back under the id the app was given for it."""
    smsc, port = await scripted_smsc(harness)
    async with RelayProcess(tmp_path, relay_settings(port)) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        first = await app.submit(**part(1, b"Hello, "))
        assert first.status == Status.ESME_ROK
        smsc.statuses.extend([Status.ESME_RTHROTTLED, Status.ESME_RTHROTTLED])
        refused = await app.submit(**part(2, b"world"))
        assert refused.status == Status.ESME_RTHROTTLED
        assert len(smsc.submitted) == 2
        retried = await app.submit(**part(2, b"world"))
        assert retried.status == Status.ESME_ROK
        assert len(smsc.submitted) == 4
        assert [body_of(f) for f in smsc.submitted[2:]] == [body_of(f) for f in smsc.submitted[:2]]
        await app.read_until(lambda: len(app.deliveries) == 2)
        receipted = sorted(d.receipted_message_id for d in app.deliveries)
        assert receipted == sorted([first.message_id, retried.message_id])
        assert all(b"stat:DELIVRD" in d.short_message for d in app.deliveries)
        # Whole and accepted: the part again is a duplicate, not sent.
        again = await app.submit(**part(2, b"world"))
        assert again.status == RSUBMITFAIL
        assert len(smsc.submitted) == 4
        await app.close()


@pytest_twisted.ensureDeferred
async def test_late_ok_after_the_response_timeout_routes_the_receipt_and_blocks_a_resend(
    harness: Harness, tmp_path: Path
) -> None:
    """The operator answers after the relay's response timeout: the app was told
    ESME_RSYSERR, then gets the message's receipt; its retry is answered as a duplicate and
    not sent again."""
    smsc, port = await scripted_smsc(harness)
    settings = relay_settings(port, upstream={"response_timeout": 0.5})
    async with RelayProcess(tmp_path, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        smsc.hold = True
        timed_out = await app.submit(**message(b"late one", registered_delivery=1))
        assert timed_out.status == Status.ESME_RSYSERR
        smsc.hold = False
        assert smsc.answer_held() == 1
        await app.read_until(lambda: len(app.deliveries) == 1)
        [receipt] = app.deliveries
        assert b"stat:DELIVRD" in receipt.short_message
        retry = await app.submit(**message(b"late one", registered_delivery=1))
        assert retry.status == RSUBMITFAIL
        assert len(smsc.submitted) == 1
        await app.close()
        _, log = await relay.stop()
    assert "late answer ESME_ROK" in log, log
