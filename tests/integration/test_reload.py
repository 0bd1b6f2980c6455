"""Live reload over real sockets: `twistd -n smpprelay` is sent SIGHUP several times while an
app submits at a steady rate; an added account binds, a lowered flood limit applies, a broken
file changes nothing and is logged once, and no submit fails and no bind drops meanwhile."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest_twisted
import yaml
from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from smpprelay.pdu import Status
from tests.integration.apps import message
from tests.integration.conftest import CLIENTS, Esme, Harness
from tests.integration.scripted import RelayProcess, relay_settings, scripted_smsc

RSUBMITFAIL = 0x45
APP3 = {"system_id": "app3", "password": "secret3"}


class Steady:
    """An app submitting one message every 10 ms, each to a number of its own (so no rule has a
    say), from creation until `stop`; each answer's status kept in order."""

    def __init__(self, app: Esme, text: bytes) -> None:
        self.app = app
        self.text = text
        self.statuses: list[int] = []
        self.running = True
        self.done = ensureDeferred(self._run())

    async def _run(self) -> None:
        from twisted.internet import reactor

        n = 0
        while self.running:
            n += 1
            answer = await self.app.submit(**message(b"%s %d" % (self.text, n), f"7998{n:07d}"))
            self.statuses.append(answer.status)
            await task.deferLater(reactor, 0.01, lambda: None)

    async def stop(self) -> list[int]:
        """Stop after the submit in flight; the statuses of all."""
        self.running = False
        await self.done
        return self.statuses


@pytest_twisted.ensureDeferred
async def test_reloads_under_steady_traffic(harness: Harness, tmp_path: Path) -> None:

    _, port = await scripted_smsc(harness)
    settings = relay_settings(port, filters={"flood": {"max_messages": 50}})
    config = tmp_path / "relay.yaml"
    async with RelayProcess(tmp_path, settings) as relay:
        assert relay.process is not None
        steady = harness.esme_at(relay.smpp_port)
        await steady.bind("transceiver", "app1")
        traffic = Steady(steady, b"tick")

        async def reload(data: Any, logged: str, count: int) -> None:
            config.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
            relay.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            await relay.wait_for(lambda: relay.log.count(logged) >= count, 10.0, logged)

        # 1. An account added: it binds.
        added = dict(settings, clients=[*CLIENTS, APP3])
        await reload(added, "reloaded ", 1)
        app3 = harness.esme_at(relay.smpp_port)
        await app3.bind("transceiver", "app3", "secret3")
        for i in range(3):
            answer = await app3.submit(**message(b"before %d" % i, "79990000001"))
            assert answer.status == Status.ESME_ROK, relay.log

        # 2. The flood limit lowered: the third message to a number is refused from now on.
        lowered = dict(added, filters={"flood": {"max_messages": 2}})
        await reload(lowered, "reloaded ", 2)
        answers = [
            (await app3.submit(**message(b"after %d" % i, "79990000002"))).status for i in range(3)
        ]
        assert answers == [Status.ESME_ROK, Status.ESME_ROK, RSUBMITFAIL]

        # 3. A broken file: nothing changes, one line names the file.
        await reload("clients: [\n  - {system_id: app1", "reload failed", 1)
        answers = [
            (await app3.submit(**message(b"broken %d" % i, "79990000003"))).status for i in range(3)
        ]
        assert answers == [Status.ESME_ROK, Status.ESME_ROK, RSUBMITFAIL]
        failed = [line for line in relay.log.splitlines() if "reload failed" in line]
        assert len(failed) == 1
        assert str(config) in failed[0]

        # 4. The file fixed again, with app3 gone: its bind is unbound, app1's stays.
        await reload(lowered | {"clients": CLIENTS}, "reloaded ", 3)
        await app3.answer_unbind()
        await relay.wait_for(lambda: len(traffic.statuses) >= 20, 10.0, "20 steady submits")
        assert set(await traffic.stop()) == {Status.ESME_ROK}
        ok = await steady.submit(**message(b"still bound", "79998888888"))
        assert ok.status == Status.ESME_ROK
        await steady.close()
        code, log = await relay.stop()
        assert code == 0, log
        assert log.count("app1 bound as") == 1


@pytest_twisted.ensureDeferred
async def test_an_upstreams_route_changes_under_steady_traffic(
    harness: Harness, tmp_path: Path
) -> None:
    """Two operators; the steady traffic's numbers move from one to the other by a reload of
    their prefixes: no submit fails, no upstream session or app bind is dropped."""

    first, first_port = await scripted_smsc(harness)
    second, second_port = await scripted_smsc(harness)

    def operators(first_prefixes: list[str], second_prefixes: list[str]) -> list[dict[str, Any]]:
        base = {"host": "127.0.0.1", "system_id": "relay", "password": "pw"}
        return [
            {"name": "first", "port": first_port, "prefixes": first_prefixes, **base},
            {"name": "second", "port": second_port, "prefixes": second_prefixes, **base},
        ]

    settings = relay_settings(first_port)
    del settings["upstream"]
    settings["upstreams"] = operators(["7998"], [])
    config = tmp_path / "relay.yaml"
    async with RelayProcess(tmp_path, settings, bound=2) as relay:
        assert relay.process is not None
        steady = harness.esme_at(relay.smpp_port)
        await steady.bind("transceiver", "app1")
        traffic = Steady(steady, b"route")
        await relay.wait_for(lambda: len(first.submitted) >= 10, 10.0, "traffic on first")
        assert second.submitted == []
        config.write_text(yaml.safe_dump(dict(settings, upstreams=operators([], ["7998"]))))
        relay.process.send_signal(signal.SIGHUP)
        await relay.wait_for(lambda: relay.log.count("reloaded ") >= 1, 10.0, "the reload")
        await relay.wait_for(lambda: len(second.submitted) >= 10, 10.0, "traffic on second")
        moved = len(first.submitted)
        await relay.wait_for(lambda: len(second.submitted) >= 20, 10.0, "more on second")
        assert set(await traffic.stop()) == {Status.ESME_ROK}
        assert len(first.submitted) == moved  # nothing more went to the first
        assert "restart is needed" not in relay.log
        await steady.close()
        code, log = await relay.stop()
        assert code == 0, log
        assert log.count("app1 bound as") == 1
        assert len(first.connections) == 1
        assert len(second.connections) == 1


@pytest_twisted.ensureDeferred
async def test_upstreams_added_and_removed_by_a_reload_under_steady_traffic(
    harness: Harness, tmp_path: Path
) -> None:
    """An operator added by a reload binds and takes its numbers; the one removed is drained and
    unbound; no submit fails meanwhile and the app's bind stays."""

    first, first_port = await scripted_smsc(harness)
    second, second_port = await scripted_smsc(harness)
    base = {"host": "127.0.0.1", "system_id": "relay", "password": "pw"}
    one = {"name": "first", "port": first_port, **base}
    two = {"name": "second", "port": second_port, "prefixes": ["7998"], **base}
    settings = relay_settings(first_port)
    del settings["upstream"]
    settings["upstreams"] = [one]
    config = tmp_path / "relay.yaml"
    async with RelayProcess(tmp_path, settings) as relay:
        assert relay.process is not None
        steady = harness.esme_at(relay.smpp_port)
        await steady.bind("transceiver", "app1")
        traffic = Steady(steady, b"op")
        await relay.wait_for(lambda: len(first.submitted) >= 10, 10.0, "traffic on first")
        config.write_text(yaml.safe_dump(dict(settings, upstreams=[one, two])))
        relay.process.send_signal(signal.SIGHUP)
        await relay.wait_for(lambda: len(second.submitted) >= 10, 10.0, "traffic on second")
        config.write_text(yaml.safe_dump(dict(settings, upstreams=[two])))
        relay.process.send_signal(signal.SIGHUP)
        await relay.wait_for(
            lambda: "upstream first (removed by a reload): drained and unbound" in relay.log,
            10.0,
            "first unbound",
        )
        assert first.bound == []
        after = len(second.submitted)
        await relay.wait_for(lambda: len(second.submitted) >= after + 10, 10.0, "more on second")
        assert set(await traffic.stop()) == {Status.ESME_ROK}
        assert "restart is needed" not in relay.log
        await steady.close()
        code, log = await relay.stop()
        assert code == 0, log
        assert log.count("app1 bound as") == 1
