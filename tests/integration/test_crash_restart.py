"""Issue 12's proof over real sockets: `twistd -n smpprelay` on the sqlite store (``sync: full``)
killed with SIGKILL in the middle of traffic, or left with a store that cannot write, loses
nothing it acknowledged.

An smpplib app sends a few thousand submits asking for receipts, some of them concatenated,
while the scripted operator accepts them and holds its receipts back. The relay is killed with
SIGKILL mid-stream and started again on the same store file; then the operator sends every
receipt. Counted by content at the operator and by the id the app was given: nothing the app
got ``ESME_ROK`` for is missing or doubled, and every such message's receipt comes back.

The figures (`Figures`) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

from smpprelay.pdu import Status
from tests.integration.apps import http_get_at, message
from tests.integration.conftest import Esme, Harness
from tests.integration.scripted import (
    RelayProcess,
    ScriptedSmsc,
    Tags,
    is_receipt,
    relay_settings,
    scripted_smsc,
)

RSUBMITFAIL = 0x45  # filters.dedup.status (the default)
SINGLES = 1600
CONCATS = 100  # messages of PARTS parts each: 1600 + 400 = 2000 submits
PARTS = 4
KILL_AFTER = 1000  # answers the app has read when the relay is killed
WINDOW = 50  # the app's unanswered submits at most (the relay allows limits.window: 100)
TAGS = Tags(rb"crash-[a-z0-9-]+")
marker_of, at_operator, accepted = TAGS.of, TAGS.at_operator, TAGS.accepted
MO_TEXT = b"mo-held-across-the-crash"
APP2_NUMBER = b"791100001"  # app2 owns the MO numbers starting 7911


def store_settings(smsc_port: int, path: Path) -> dict[str, Any]:
    """The relay on the sqlite store at ``path``, fsynced before every acknowledgement; the
    operator's window wide enough that the app's stream is not throttled by it."""
    return relay_settings(
        smsc_port,
        store={"backend": "sqlite", "path": str(path), "sync": "full"},
        upstream={"window": 100},
    )


def single(tag: str, destination: str) -> dict[str, Any]:
    """One message asking for a receipt; ``tag`` makes it unique and findable at the operator.
    A destination of its own each: the flood rule (50 to one number) must not refuse any."""
    return message(f"crash-{tag}".encode(), destination=destination, registered_delivery=1)


def part(tag: str, destination: str, reference: int, seq: int, total: int) -> dict[str, Any]:
    """Part ``seq`` of ``total`` (8-bit UDH reference ``reference``), asking for a receipt."""
    udh = bytes((5, 0, 3, reference % 256, total, seq))
    text = f"crash-{tag}-p{seq}".encode()
    return message(udh + text, destination=destination, esm_class=0x40, registered_delivery=1)


def receipted(app: Esme) -> set[bytes]:
    """The ids the app's receipts were for."""
    return {d.receipted_message_id for d in app.deliveries if d.receipted_message_id}


def tags_of(n: int) -> list[bytes]:
    """The tags of the stream's concatenated message ``n``, its parts in order."""
    return [f"crash-c{n}-p{seq}".encode() for seq in range(1, PARTS + 1)]


async def pause(seconds: float = 0.05) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    code, body = await http_get_at(port, "/readyz")
    answer: dict[str, Any] = json.loads(body)
    return code, answer


async def ready_becomes(relay: RelayProcess, ready: bool, timeout: float) -> dict[str, Any]:
    """Poll /readyz until its verdict is ``ready``; returns its last answer."""
    last: dict[str, Any] = {}

    async def check() -> None:
        nonlocal last
        code, last = await readyz(relay.metrics_port)
        assert (code == 200) == last["ready"]

    await check()
    deadline = time.monotonic() + timeout
    while last["ready"] is not ready:
        assert time.monotonic() < deadline, f"/readyz still {last} after {timeout} s:\n{relay.log}"
        await pause()
        await check()
    return last


async def store_rows(port: int) -> dict[str, float]:
    """smpprelay_store_rows by kind, scraped from the relay's /metrics."""
    code, body = await http_get_at(port, "/metrics")
    assert code == 200
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "smpprelay_store_rows"
        for sample in family.samples
    }


async def windows_written(relay: RelayProcess, since: float) -> None:
    """Wait until the rules' windows are in the store (they are written behind, at most a
    second late) and more than that second has passed since ``since``."""
    deadline = time.monotonic() + 5.0
    while (await store_rows(relay.metrics_port)).get("windows", 0) < 1 or (
        time.monotonic() - since <= 1.0
    ):
        assert time.monotonic() < deadline, f"no window entry stored:\n{relay.log}"
        await pause()


async def mo_answered(relay: RelayProcess, smsc: ScriptedSmsc, count: int) -> list[int]:
    """Wait until the operator's MO deliver_sm has had ``count`` answers; returns them."""

    def answers() -> list[int]:
        return [status for frame, status in smsc.answers if not is_receipt(frame)]

    await relay.wait_for(lambda: len(answers()) >= count, 10.0, "the MO answered")
    return answers()


@attrs.define
class Figures:
    """What the crash test counted, printed at its end."""

    sent: int = 0
    acknowledged: int = 0
    unique_at_operator: int = 0
    duplicates_at_operator: int = 0
    receipts_due: int = 0
    receipts_delivered: int = 0
    held_mo_delivered: int = 0
    parts_completed: int = 0
    in_doubt: int = 0  # messages whose completing part was in flight at the kill
    in_doubt_acknowledged: int = 0  # their parts answered ESME_ROK (receipts not routable)
    held_resent_answered: int = 0
    lost: int = 0
    duplicates_refused_after_restart: int = 0
    seconds: float = 0.0


@pytest_twisted.ensureDeferred
async def test_kill_9_mid_traffic_loses_nothing_acknowledged(
    harness: Harness, tmp_path: Path
) -> None:
    """SIGKILL after 1,000 of 2,000 answers, restart on the same store, the rest of the stream
    sent, then every receipt:

    - every message answered ESME_ROK reached the operator exactly once (by content);
    - every receipt for them reached the app, by the id the app was given (the operator's, or
      the relay's own for a concatenated part);
    - an MO held for app2 (no bind) before the kill is delivered when app2 binds after it;
    - a message whose first parts were answered ESME_ROK before the kill completes with the
      rest sent after it, and reaches the operator whole;
    - a message accepted more than a second before the kill is a duplicate after it.
    """
    began = time.monotonic()
    figures = Figures()
    smsc, port = await scripted_smsc(harness)
    smsc.hold_receipts = True
    settings = store_settings(port, tmp_path / "relay.db")
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    held_parts = [part("held", "79990000001", 7, seq, 3) for seq in (1, 2, 3)]
    duplicate = single("dedup", "79990000002")
    plan: list[dict[str, Any]] = []
    concat_of: dict[bytes, int] = {}  # a part's tag -> its message's number
    for n in range(CONCATS):
        plan += [single(f"s{n}-{i}", f"7998{n:03d}{i:04d}") for i in range(SINGLES // CONCATS)]
        for seq in range(1, PARTS + 1):
            plan.append(part(f"c{n}", f"7997{n:07d}", n, seq, PARTS))
            concat_of[f"crash-c{n}-p{seq}".encode()] = n
    acknowledged: dict[bytes, bytes] = {}

    async with RelayProcess(before, settings) as relay:
        assert relay.process is not None
        pid = relay.process.pid
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        # app2 has no bind: its MO is held, and stored before the operator hears ESME_ROK.
        smsc.send_mo("relay", b"79991234567", APP2_NUMBER, MO_TEXT)
        assert await mo_answered(relay, smsc, 1) == [Status.ESME_ROK]
        # Two parts of three, each held and answered ESME_ROK with the relay's own id.
        for fields in held_parts[:2]:
            resp = await app.submit(**fields)
            assert resp.status == Status.ESME_ROK
            acknowledged[marker_of(fields["short_message"])] = resp.message_id
        resp = await app.submit(**duplicate)
        assert resp.status == Status.ESME_ROK
        acknowledged[b"crash-dedup"] = resp.message_id
        dedup_accepted = time.monotonic()
        await windows_written(relay, dedup_accepted)

        def kill_midway(answered: int) -> None:
            if answered == KILL_AFTER:
                os.kill(pid, signal.SIGKILL)

        results = await app.submit_many(plan, WINDOW, timeout=40.0, on_answer=kill_midway)
        await relay.kill()
    answered = [resp for _, resp in results if resp is not None]
    assert KILL_AFTER <= len(answered) < len(plan), "the kill did not come mid-stream"
    assert len(plan) - len(answered) >= 1
    # The dedup window is written behind, at most a second late: it was older than that.
    assert time.monotonic() - dedup_accepted > 1.0
    acknowledged.update(accepted(results))
    assert smsc.held == []

    async with RelayProcess(after, settings) as relay:
        receiver = harness.esme_at(relay.smpp_port)
        await receiver.bind("receiver", "app2")
        await receiver.read_until(lambda: len(receiver.deliveries) >= 1, timeout=10)
        mo = [d.short_message for d in receiver.deliveries]
        assert mo == [MO_TEXT]
        figures.held_mo_delivered = len(mo)

        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        last = await app.submit(**held_parts[2])
        assert last.status == Status.ESME_ROK, "a message held across the kill did not complete"
        acknowledged[b"crash-held-p3"] = last.message_id
        again = await app.submit(**duplicate)
        assert again.status == RSUBMITFAIL, "a message accepted before the kill was sent again"
        figures.duplicates_refused_after_restart = 1

        # The app sends again what it was not told ESME_ROK for, of every concatenated message
        # it began: its parts held before the kill complete with them. A message the operator
        # already has whole is left alone: its completing part was in flight at the kill, so
        # the relay never heard the operator's answers (the receipts of its parts cannot be
        # routed; no relay can know what a killed process never received).
        have = at_operator(smsc)
        begun = {
            concat_of[tag] for r, _ in results if (tag := marker_of(r.short_message)) in concat_of
        }
        in_doubt = {
            n
            for n in begun
            if all(have[tag] for tag in tags_of(n))
            and not all(t in acknowledged for t in tags_of(n))
        }
        held_at_kill = [
            tag
            for n in begun - in_doubt
            if not all(t in acknowledged for t in tags_of(n))
            for tag in tags_of(n)
            if tag in acknowledged
        ]
        retry = [
            fields
            for fields in plan[: len(results)]
            if (tag := marker_of(fields["short_message"])) in concat_of
            and concat_of[tag] in begun - in_doubt
            and tag not in acknowledged
        ]
        # Then the rest of the stream, never sent before the kill (it completes the message the
        # kill interrupted).
        rest = plan[len(results) :]
        retried = await app.submit_many(retry + rest, WINDOW, timeout=30.0)
        # A part the relay held (and stored) before the kill but whose ESME_ROK the app never
        # read is, sent again byte for byte, answered ESME_ROK with the id it was given then
        # (the held part is still held once): every retry and the rest are accepted.
        unanswered = {marker_of(r.short_message) for r, resp in results if resp is None}
        statuses = Counter(resp.status if resp is not None else None for _, resp in retried)
        assert statuses == {Status.ESME_ROK: len(retried)}, statuses
        assert len(retried) == len(retry) + len(rest)
        acknowledged.update(accepted(retried))
        figures.held_resent_answered = len(
            {marker_of(request.short_message) for request, _ in retried} & unanswered
        )

        # Now the operator sends every receipt it owes (for each submit it accepted).
        smsc.release_receipts()
        due = {
            message_id
            for tag, message_id in acknowledged.items()
            if tag not in concat_of or concat_of[tag] not in in_doubt
        }
        await app.read_until(
            lambda: len(app.deliveries) >= len(due) and due <= receipted(app), timeout=30
        )
        figures.receipts_due = len(due)
        figures.receipts_delivered = len(due & receipted(app))
        await app.close()
        await receiver.close()

    counts = at_operator(smsc)
    doubled = {tag: counts[tag] for tag in acknowledged if counts[tag] != 1}
    assert doubled == {}, "acknowledged messages not at the operator exactly once"
    # Every part held at the kill (the three-part message's two, the stream's interrupted
    # messages' acknowledged ones) reached the operator once, with the rest of its message.
    completed = [b"crash-held-p1", b"crash-held-p2", *held_at_kill]
    assert all(counts[tag] == 1 for tag in completed)
    # Every message begun before the kill and not in doubt is whole at the operator, once,
    # the parts sent again among them (they were held, so they went with it once).
    assert all(counts[tag] == 1 for n in begun - in_doubt for tag in tags_of(n))
    figures.parts_completed = len(completed)
    # The stream, the held message's three parts, the duplicate twice, the parts sent again.
    figures.sent = len(results) + 3 + 2 + len(retried)
    figures.acknowledged = len(acknowledged)
    figures.unique_at_operator = len(counts)
    figures.duplicates_at_operator = sum(counts.values()) - len(counts)
    figures.in_doubt = len(in_doubt)
    figures.in_doubt_acknowledged = len(acknowledged) - len(due)
    figures.lost = len(due - receipted(app)) + sum(1 for tag in acknowledged if not counts[tag])
    figures.seconds = round(time.monotonic() - began, 1)
    print(f"\ncrash test: {figures}")
    assert figures.lost == 0


@pytest_twisted.ensureDeferred
async def test_a_store_that_cannot_write_refuses_and_recovers_by_itself(
    harness: Harness, tmp_path: Path
) -> None:
    """The store on a small tmpfs that a file then fills: the relay stops acknowledging
    (submits ESME_RMSGQFUL, the operator's MO ESME_RX_T_APPN, /readyz not ready with the
    reason) and sends nothing to the operator it could not route back; the file removed, it
    recovers by itself. A SIGKILL and a restart later, every message it answered ESME_ROK gets
    its receipt: nothing acknowledged went unstored."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        await _fill_and_recover(harness, tmp_path, mount)
    finally:
        # The relay is gone by now (RelayProcess kills it), so nothing holds the mount.
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30, check=True)


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until its file system is full (to the last byte); returns the
    bytes written."""
    written = 0
    with path.open("wb", buffering=0) as out:
        for size in (64 * 1024, 4096, 1):
            try:
                while True:
                    written += out.write(bytes(size)) or 0
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    return written


async def _fill_and_recover(harness: Harness, tmp_path: Path, mount: Path) -> None:
    smsc, port = await scripted_smsc(harness)
    smsc.hold_receipts = True
    settings = store_settings(port, mount / "relay.db")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    acknowledged: dict[bytes, bytes] = {}
    counter = iter(range(1_000_000))

    def batch(size: int) -> list[dict[str, Any]]:
        return [single(f"f{n}", f"7996{n:07d}") for n in (next(counter) for _ in range(size))]

    async with RelayProcess(first, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        results = await app.submit_many(batch(200), WINDOW)
        assert all(r is not None and r.status == Status.ESME_ROK for _, r in results)
        acknowledged.update(accepted(results))
        assert (await ready_becomes(relay, True, 5.0))["ready"]

        filler = mount / "filler"
        _fill(filler)
        # Until a write fails, what is answered ESME_ROK was written (the file may still have
        # room inside it); then every submit is refused, with a status apps retry.
        refused = 0
        filled = time.monotonic()
        deadline = time.monotonic() + 20
        while not refused:
            assert time.monotonic() < deadline, f"the full store was never noticed:\n{relay.log}"
            results = await app.submit_many(batch(20), 20)
            acknowledged.update(accepted(results))
            statuses = {r.status for _, r in results if r is not None}
            assert statuses <= {Status.ESME_ROK, Status.ESME_RMSGQFUL}, statuses
            refused = sum(1 for _, r in results if r and r.status == Status.ESME_RMSGQFUL)
        verdict = await ready_becomes(relay, False, 5.0)
        assert verdict["reason"], verdict
        reached = len(smsc.submitted)
        results = await app.submit_many(batch(20), 20)
        assert [r.status for _, r in results if r] == [Status.ESME_RMSGQFUL] * 20
        assert len(smsc.submitted) == reached, "sent to the operator with no route stored"
        # The operator's MO for app2 (no bind: it must be stored to be held) is refused with a
        # status the operator retries.
        smsc.send_mo("relay", b"79991234567", APP2_NUMBER, MO_TEXT)
        assert await mo_answered(relay, smsc, 1) == [Status.ESME_RX_T_APPN]

        noticed = time.monotonic() - filled
        filler.unlink()
        unlinked = time.monotonic()
        await ready_becomes(relay, True, 15.0)
        recovered = time.monotonic() - unlinked
        results = await app.submit_many(batch(20), 20)
        assert [r.status for _, r in results if r] == [Status.ESME_ROK] * 20
        acknowledged.update(accepted(results))
        smsc.send_mo("relay", b"79991234567", APP2_NUMBER, MO_TEXT)  # the operator retries
        assert await mo_answered(relay, smsc, 2) == [Status.ESME_RX_T_APPN, Status.ESME_ROK]
        await relay.kill()
    # One line when the outage starts and one when it ends, not one per refused message.
    log = relay.log
    assert log.count("cannot write (") == 1, log
    assert log.count("writing again") == 1, log

    async with RelayProcess(second, settings) as relay:
        receiver = harness.esme_at(relay.smpp_port)
        await receiver.bind("receiver", "app2")
        await receiver.read_until(lambda: len(receiver.deliveries) >= 1, timeout=10)
        assert [d.short_message for d in receiver.deliveries] == [MO_TEXT]
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transceiver", "app1")
        smsc.release_receipts()
        due = set(acknowledged.values())
        await app.read_until(
            lambda: len(app.deliveries) >= len(due) and due <= receipted(app), timeout=20
        )
        await app.close()
        await receiver.close()
    counts = at_operator(smsc)
    assert {tag: counts[tag] for tag in acknowledged if counts[tag] != 1} == {}
    mo = [hex(status) for frame, status in smsc.answers if not is_receipt(frame)]
    print(
        f"\nfull store: acknowledged {len(acknowledged)}, receipts {len(due & receipted(app))}"
        f" of {len(due)}, at the operator {sum(counts.values())} ({len(counts)} unique),"
        f" refused {refused} + 20 while full, noticed in {noticed:.2f} s, ready again"
        f" {recovered:.2f} s after the filler went; MO answered {mo}"
    )


@pytest_twisted.ensureDeferred
async def test_sigterm_keeps_what_is_held_for_the_next_start(
    harness: Harness, tmp_path: Path
) -> None:
    """A graceful stop (SIGTERM) exits 0 with receipts and MO held for absent apps and two
    parts of a long message still in the store; the next start delivers the receipts and the
    MO once their apps bind, and the message completes with its last part."""
    smsc, port = await scripted_smsc(harness)
    settings = store_settings(port, tmp_path / "relay.db")
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    parts = [part("term", "79990000003", 9, seq, 3) for seq in (1, 2, 3)]
    singles = [single(f"term-s{n}", f"7999000010{n}") for n in range(5)]
    ids: dict[bytes, bytes] = {}

    async with RelayProcess(before, settings) as relay:
        app = harness.esme_at(relay.smpp_port)
        await app.bind("transmitter", "app1")  # no receiving bind: its receipts are held
        for fields in [*singles, *parts[:2]]:
            resp = await app.submit(**fields)
            assert resp.status == Status.ESME_ROK
            ids[marker_of(fields["short_message"])] = resp.message_id
        smsc.send_mo("relay", b"79991234567", APP2_NUMBER, MO_TEXT)
        # Every single's receipt and the MO were answered ESME_ROK: held, in the store.
        await relay.wait_for(
            lambda: len(smsc.answers) == len(singles) + 1, 10.0, "the deliveries answered"
        )
        assert {status for _, status in smsc.answers} == {Status.ESME_ROK}
        await app.close()
        status, log = await relay.stop()
    assert status == 0, log
    assert "stay in the store for the next start" in log
    assert "lost" not in log

    async with RelayProcess(after, settings) as relay:
        restored = re.search(r"(\d+) held deliveries, (\d+) held parts", relay.log)
        assert restored is not None, relay.log
        assert restored.groups() == (str(len(singles) + 1), "2")  # the receipts and the MO
        app2 = harness.esme_at(relay.smpp_port)
        await app2.bind("receiver", "app2")
        await app2.read_until(lambda: len(app2.deliveries) >= 1, timeout=10)
        assert [d.short_message for d in app2.deliveries] == [MO_TEXT]
        app1 = harness.esme_at(relay.smpp_port)
        await app1.bind("transceiver", "app1")
        last = await app1.submit(**parts[2])
        assert last.status == Status.ESME_ROK
        await app1.read_until(lambda: len(receipted(app1)) >= len(singles), timeout=10)
        assert receipted(app1) >= {ids[marker_of(s["short_message"])] for s in singles}
        await app1.close()
        await app2.close()
    counts = at_operator(smsc)
    assert all(counts[marker_of(fields["short_message"])] == 1 for fields in [*singles, *parts])
