"""Issue 15's proof over real sockets: two or three ``twistd -n smpprelay`` processes on one
real Redis (Debian's ``redis-server`` on a free port) act as one relay.

They share one operator (the scripted SMSC in the test process), and smpplib apps bind to
every instance at once:

- the flood cut falls at exactly the 51st message to one number, whichever instances the 90
  concurrent submits went through;
- the same message sent to two instances at the same moment is accepted exactly once;
- the parts of one message sent through three instances reach the operator once, whole;
- a receipt arriving on the instance without the app's receiver crosses to the one with it;
- an instance killed with SIGKILL mid-stream loses nothing it acknowledged (its messages'
  receipts reach the app through the survivor);
- Redis stopped and started again mid-stream loses nothing acknowledged (submits during the
  outage are refused ESME_RMSGQFUL, never accepted unchecked).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import task

from smpprelay import pdu
from smpprelay.pdu import Status
from tests.fakes.redis_server import RedisServer
from tests.integration.apps import http_get_at, message
from tests.integration.conftest import Esme, Harness
from tests.integration.scripted import (
    RelayProcess,
    Tags,
    relay_settings,
    scripted_smsc,
)

REFUSED = 0x45  # the flood and dedup rules' default status
TAGS = Tags(rb"scale-[a-z0-9-]+")
marker_of, at_operator, accepted = TAGS.of, TAGS.at_operator, TAGS.accepted


def cluster_settings(smsc_port: int, redis: RedisServer) -> dict[str, Any]:
    """One instance's configuration: the shared operator and the shared Redis."""
    return relay_settings(
        smsc_port,
        store={"backend": "redis", "url": redis.url, "reply_timeout": 1.0},
        upstream={"window": 100},
    )


@asynccontextmanager
async def cluster(
    tmp_path: Path, smsc_port: int, redis: RedisServer, count: int
) -> AsyncIterator[list[RelayProcess]]:
    """``count`` relay processes on one Redis, each in its own directory."""
    async with AsyncExitStack() as stack:
        relays = []
        for n in range(count):
            workdir = tmp_path / f"relay{n}"
            workdir.mkdir()
            relay = RelayProcess(workdir, cluster_settings(smsc_port, redis))
            relays.append(await stack.enter_async_context(relay))
        for relay in relays:
            await ready(relay)
        yield relays


async def ready(relay: RelayProcess, timeout: float = 15.0) -> None:
    """Wait until /readyz says ready: bound upstream, and Redis answering with its secret."""
    deadline = time.monotonic() + timeout
    while (await http_get_at(relay.metrics_port, "/readyz"))[0] != 200:
        assert time.monotonic() < deadline, f"not ready within {timeout} s:\n{relay.log}"
        await pause()


def tagged(tag: str, destination: str, **fields: Any) -> dict[str, Any]:
    return message(f"scale-{tag}".encode(), destination=destination, **fields)


def statuses(results: Iterable[tuple[Any, Any | None]]) -> Counter[int | None]:
    return Counter(resp.status if resp is not None else None for _, resp in results)


async def bound_apps(harness: Harness, relays: list[RelayProcess], kind: str) -> list[Esme]:
    apps = []
    for relay in relays:
        app = harness.esme_at(relay.smpp_port)
        await app.bind(kind, "app1")
        apps.append(app)
    return apps


async def pause(seconds: float = 0.05) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_the_flood_cut_falls_at_the_51st_across_three_instances(
    harness: Harness, tmp_path: Path, redis_server: RedisServer
) -> None:
    smsc, port = await scripted_smsc(harness)
    async with cluster(tmp_path, port, redis_server, 3) as relays:
        apps = await bound_apps(harness, relays, "transmitter")
        streams = [
            [tagged(f"f{n}-{i}", "79990000051") for i in range(30)] for n in range(len(apps))
        ]
        from twisted.internet.defer import gatherResults

        results = await gatherResults(
            [app.submit_many(stream, window=10) for app, stream in zip(apps, streams, strict=True)]
        )
        everything = [pair for result in results for pair in result]
        counted = statuses(everything)
        assert counted == {Status.ESME_ROK: 50, REFUSED: 40}, counted
        # Each instance took part, and the operator got exactly the 50.
        assert all(statuses(result)[Status.ESME_ROK] > 0 for result in results)
        assert sum(at_operator(smsc).values()) == 50


@pytest_twisted.ensureDeferred
async def test_a_duplicate_sent_to_two_instances_at_once_is_accepted_once(
    harness: Harness, tmp_path: Path, redis_server: RedisServer
) -> None:
    smsc, port = await scripted_smsc(harness)
    async with cluster(tmp_path, port, redis_server, 2) as relays:
        apps = await bound_apps(harness, relays, "transmitter")
        # The same 40 messages, in the same order, through both instances at once.
        stream = [tagged(f"d{i}", f"7999100{i:04d}") for i in range(40)]
        from twisted.internet.defer import gatherResults

        first, second = await gatherResults([app.submit_many(stream, window=5) for app in apps])
        # One copy of each is accepted; the other is refused as the duplicate it is, or, while
        # the first is still with the operator, answered ESME_RMSGQFUL (in flight: retry).
        retry = []
        for (request, one), (_, other) in zip(first, second, strict=True):
            assert one is not None
            assert other is not None
            pair = sorted((one.status, other.status))
            assert pair in ([Status.ESME_ROK, REFUSED], [Status.ESME_ROK, Status.ESME_RMSGQFUL])
            if pair[1] == Status.ESME_RMSGQFUL:
                retry.append(stream[first.index((request, one))])
        if retry:
            again = await apps[1].submit_many(retry, window=5)
            assert statuses(again) == {REFUSED: len(retry)}, "a retry of one in flight passed"
        assert at_operator(smsc) == Counter({f"scale-d{i}".encode(): 1 for i in range(40)})


@pytest_twisted.ensureDeferred
async def test_parts_spread_over_instances_are_released_once(
    harness: Harness, tmp_path: Path, redis_server: RedisServer
) -> None:
    smsc, port = await scripted_smsc(harness)
    async with cluster(tmp_path, port, redis_server, 3) as relays:
        apps = await bound_apps(harness, relays, "transmitter")
        for n in range(10):
            udh = bytes((5, 0, 3, n, 3, 0))
            for seq, app in zip((1, 2, 3), apps[n % 3 :] + apps[: n % 3], strict=True):
                header = udh[:-1] + bytes((seq,))
                resp = await app.submit(
                    **message(
                        header + f"scale-c{n}-p{seq}".encode(),
                        destination=f"7999200{n:04d}",
                        esm_class=0x40,
                    )
                )
                assert resp.status == Status.ESME_ROK, (n, seq)
        counted = at_operator(smsc)
        assert counted == Counter(
            {f"scale-c{n}-p{seq}".encode(): 1 for n in range(10) for seq in (1, 2, 3)}
        )
        # Whole messages: each one's parts went back to back.
        order = [marker_of(pdu.read_short_message(f).short_message) for f in smsc.submitted]
        for n in range(10):
            at = order.index(f"scale-c{n}-p1".encode())
            assert order[at : at + 3] == [f"scale-c{n}-p{seq}".encode() for seq in (1, 2, 3)]


@pytest_twisted.ensureDeferred
async def test_a_receipt_crosses_to_the_instance_holding_the_receiver(
    harness: Harness, tmp_path: Path, redis_server: RedisServer
) -> None:
    _, port = await scripted_smsc(harness)
    async with cluster(tmp_path, port, redis_server, 2) as relays:
        sender = harness.esme_at(relays[0].smpp_port)
        await sender.bind("transmitter", "app1")
        receiver = harness.esme_at(relays[1].smpp_port)
        await receiver.bind("receiver", "app1")
        stream = [tagged(f"r{i}", f"7999300{i:04d}", registered_delivery=1) for i in range(20)]
        results = await sender.submit_many(stream, window=10)
        ids = set(accepted(results).values())
        assert len(ids) == 20

        def all_in() -> bool:
            return ids <= {d.receipted_message_id for d in receiver.deliveries}

        await receiver.read_until(all_in, timeout=15)
        got = Counter(d.receipted_message_id for d in receiver.deliveries)
        assert set(got) == ids
        assert set(got.values()) == {1}, got  # each exactly once


@pytest_twisted.ensureDeferred
async def test_an_instance_killed_mid_stream_loses_nothing_acknowledged(
    harness: Harness, tmp_path: Path, redis_server: RedisServer
) -> None:
    smsc, port = await scripted_smsc(harness)
    smsc.hold_receipts = True
    async with cluster(tmp_path, port, redis_server, 2) as relays:
        doomed, survivor = relays
        assert doomed.process is not None
        pid = doomed.process.pid
        victim = harness.esme_at(doomed.smpp_port)
        await victim.bind("transceiver", "app1")
        steady = harness.esme_at(survivor.smpp_port)
        await steady.bind("transceiver", "app1")
        plan = [tagged(f"k{i}", f"79994{i:06d}", registered_delivery=1) for i in range(600)]

        def kill_midway(answered: int) -> None:
            if answered == 300:
                os.kill(pid, signal.SIGKILL)

        from twisted.internet.defer import gatherResults

        killed, kept = await gatherResults(
            [
                victim.submit_many(plan[:400], 20, timeout=30.0, on_answer=kill_midway),
                steady.submit_many(plan[400:], 20, timeout=30.0),
            ]
        )
        await doomed.kill()
        acknowledged = accepted(killed) | accepted(kept)
        assert 300 <= len(accepted(killed)) < 400
        assert statuses(kept) == {Status.ESME_ROK: 200}
        counted = at_operator(smsc)
        missing = [tag for tag in acknowledged if counted[tag] != 1]
        assert missing == [], missing
        # Every receipt goes to the survivor's session (once the operator has seen the dead
        # one's connection close: the scripted operator does not send a receipt again); each
        # acknowledged message's receipt reaches the app there, by the id it was given.
        await survivor.wait_for(lambda: len(smsc.bound) == 1, 10.0, "the dead session gone")
        smsc.release_receipts()
        due = set(acknowledged.values())
        try:
            await steady.read_until(
                lambda: due <= {d.receipted_message_id for d in steady.deliveries}, timeout=20
            )
        except TimeoutError:
            got = {d.receipted_message_id for d in steady.deliveries}
            absent = due - got
            raise AssertionError(
                f"{len(absent)} of {len(due)} receipts missing, e.g. {sorted(absent)[:5]}; "
                f"{len(smsc.answers)} deliveries answered at the operator: "
                f"{Counter(status for _, status in smsc.answers)}\n{survivor.log[-3000:]}"
            ) from None


@pytest_twisted.ensureDeferred
async def test_redis_stopped_and_started_mid_stream_loses_nothing_acknowledged(
    harness: Harness, tmp_path: Path, redis_server: RedisServer
) -> None:
    smsc, port = await scripted_smsc(harness)
    smsc.hold_receipts = True
    async with cluster(tmp_path, port, redis_server, 2) as relays:
        apps = await bound_apps(harness, relays, "transceiver")
        plan = [tagged(f"o{i}", f"79995{i:06d}", registered_delivery=1) for i in range(400)]
        halves = [plan[:200], plan[200:]]
        outage: dict[str, float] = {}

        def stop_redis(answered: int) -> None:
            if answered == 60:
                outage["from"] = time.monotonic()
                redis_server.stop()

        from twisted.internet.defer import gatherResults

        results = await gatherResults(
            [
                apps[0].submit_many(halves[0], 10, timeout=30.0, on_answer=stop_redis),
                apps[1].submit_many(halves[1], 10, timeout=30.0),
            ]
        )
        redis_server.start()
        everything = [pair for result in results for pair in result]
        counted = statuses(everything)
        # Refused while Redis was away (the app retries ESME_RMSGQFUL), never accepted unchecked.
        assert set(counted) <= {Status.ESME_ROK, Status.ESME_RMSGQFUL}, counted
        assert counted[Status.ESME_RMSGQFUL] > 0, "the outage was not seen"
        # The app retries what was refused once Redis is back.
        retry = [
            request_fields
            for request_fields, (_, resp) in zip(plan, everything, strict=True)
            if resp is not None and resp.status != Status.ESME_ROK
        ]
        deadline = time.monotonic() + 20
        while not all(r.process is not None for r in relays):
            await pause()
        retried: list[tuple[Any, Any | None]] = []
        while retry:
            assert time.monotonic() < deadline, "Redis did not come back for the relays"
            attempt = await apps[0].submit_many(retry, 10, timeout=10.0)
            retried += [pair for pair in attempt if pair[1] is not None]
            # Refused as a duplicate: the operator took it before the outage cut its answer
            # short (its route could not be written, the app was told ESME_RMSGQFUL).
            retry = [
                fields
                for fields, (_, resp) in zip(retry, attempt, strict=True)
                if resp is None or resp.status not in (Status.ESME_ROK, REFUSED)
            ]
            if retry:
                await pause(0.3)
        acknowledged = accepted(everything) | accepted(retried)
        in_doubt = {
            marker_of(request.short_message)
            for request, resp in retried
            if resp is not None and resp.status == REFUSED
        }
        assert len(acknowledged) + len(in_doubt) == 400
        counted_at_operator = at_operator(smsc)
        wrong = {tag: counted_at_operator[tag] for tag in set(acknowledged) | in_doubt}
        assert {tag: n for tag, n in wrong.items() if n != 1} == {}, (
            dict(statuses(everything)),
            dict(statuses(retried)),
            {t for t in in_doubt},
        )
        smsc.release_receipts()
        due = set(acknowledged.values())
        both = apps[0].deliveries, apps[1].deliveries

        def all_receipts() -> bool:
            return due <= {d.receipted_message_id for got in both for d in got}

        await gatherResults(
            [app.read_until(all_receipts, timeout=20) for app in apps], consumeErrors=True
        ).addErrback(lambda _: None)
        assert all_receipts(), len(due - {d.receipted_message_id for g in both for d in g})
