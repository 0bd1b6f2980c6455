"""Fault scenarios over real sockets: `twistd -n smpprelay` as a subprocess, and a scripted
operator in the test's own reactor that answers, withholds answers, throttles or unbinds as the
test says.

    smsc = await scripted_smsc(harness)              # listening on 127.0.0.1, port 0
    async with RelayProcess(tmp_path, upstream_to(smsc)) as relay:
        app = harness.esme_on(relay.smpp_port)      # a smplib app, as in the other tests
        ...
        code, log = await relay.stop()              # SIGTERM, then the exit status and the log

Nothing here blocks the reactor: the relay's log is polled with ``deferLater``, so the scripted
operator keeps serving while the relay starts and stops.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from twisted.internet import task
from twisted.internet.interfaces import IAddress, IReactorTime
from typing_extensions import override

from smpprelay import pdu
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.service import Listener, tcp_server
from smpprelay.simulator import SimulatedSession, Simulator, SimulatorFactory
from tests.integration.conftest import CLIENTS, port_of
from tests.integration.twistd import twistd_args, twistd_env

START_DEADLINE = 15.0
STOP_DEADLINE = 15.0
# What `ScriptedSmsc.answers` records for a deliver_sm that got no answer.
NO_ANSWER = -1
_LISTENING = re.compile(r"(SMPP|metrics) listening on 127\.0\.0\.1:(\d+)")


class ScriptedSmsc(Simulator):
    """The simulated SMSC with a script.

    - ``statuses``: the next submits are answered with these statuses, in order (no message
      id, nothing delivered); once it is empty, submits are accepted as the simulator does.
    - ``hold``: while True, submits are kept unanswered in ``held`` until `answer_held`.
    - ``submitted``: every submit_sm frame that arrived, in order, whatever its answer.
    - ``connections``: every bound connection the relay made, in order.
    - ``window``: when set, a submit that arrives while that many are held unanswered on its
      connection is answered ``ESME_RTHROTTLED`` at once (an operator enforcing its window);
      ``throttled`` counts them.
    - ``hold_receipts``: while True, delivery receipts are kept in ``held_receipts`` instead of
      being sent (an operator whose receipts come late) until `release_receipts`; MO still goes.
    - ``answers``: every deliver_sm sent to the relay and how it was answered (its status, or
      ``NO_ANSWER`` when the connection or the response timer ended it first), in order.
    """

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__(clock)
        self.statuses: deque[int] = deque()
        self.hold = False
        self.held: list[tuple[SmppConnection, int, bytes]] = []
        self.submitted: list[bytes] = []
        self.connections: list[SmppConnection] = []
        self.window: int | None = None
        self.throttled = 0
        self.hold_receipts = False
        self.held_receipts: list[tuple[str, bytes]] = []
        self.answers: list[tuple[bytes, int]] = []

    @override
    def send_to(self, system_id: str, frame: bytes) -> None:
        """As the simulator's, but receipts can be held back and each answer is recorded."""
        if self.hold_receipts and is_receipt(frame):
            self.held_receipts.append((system_id, frame))
            return
        for session in self._receivers.get(system_id, ()):
            connection = session.connection
            if connection is not None and not connection.closed:
                answer = connection.send_request(frame)
                answer.addCallbacks(
                    lambda resp: self.answers.append((frame, pdu.header(resp)[2])),
                    lambda _: self.answers.append((frame, NO_ANSWER)),
                )
                return
        super().send_to(system_id, frame)  # no receiving bind: kept until one binds

    def release_receipts(self) -> int:
        """Send every held receipt (receipts are no longer held); returns how many."""
        self.hold_receipts = False
        held, self.held_receipts = self.held_receipts, []
        for system_id, frame in held:
            self.send_to(system_id, frame)
        return len(held)

    def answer_of(self, frame: bytes) -> list[int]:
        """How each sending of the deliver_sm ``frame`` was answered so far, in order."""
        return [status for sent, status in self.answers if sent == frame]

    def answer_held(self, status: int = Status.ESME_ROK) -> int:
        """Answer every held submit on its own connection (accepted with an id, or ``status``);
        returns how many were answered (a closed connection's are skipped)."""
        held, self.held = self.held, []
        answered = 0
        for connection, sequence, frame in held:
            if connection.closed:
                continue
            answered += 1
            if status == Status.ESME_ROK:
                _accept(self, connection, sequence, frame)
            else:
                connection.send(pdu.submit_sm_resp(sequence, status))
        return answered

    @property
    def bound(self) -> list[SmppConnection]:
        """The relay's connections still open."""
        return [connection for connection in self.connections if not connection.closed]


class _ScriptedSession(SimulatedSession):
    simulator: ScriptedSmsc

    @override
    def connection_made(self, connection: SmppConnection) -> None:
        super().connection_made(connection)
        self.simulator.connections.append(connection)

    @override
    def _submit(self, connection: SmppConnection, sequence: int, frame: bytes) -> None:
        smsc = self.simulator
        smsc.submitted.append(frame)
        window = smsc.window
        if window is not None and sum(c is connection for c, _, _ in smsc.held) >= window:
            smsc.throttled += 1
            connection.send(pdu.submit_sm_resp(sequence, Status.ESME_RTHROTTLED))
        elif smsc.hold:
            smsc.held.append((connection, sequence, frame))
        elif smsc.statuses:
            connection.send(pdu.submit_sm_resp(sequence, smsc.statuses.popleft()))
        else:
            super()._submit(connection, sequence, frame)


def is_receipt(frame: bytes) -> bool:
    """A deliver_sm carrying a delivery receipt (esm_class says so), not an MO."""
    return bool(pdu.read_short_message(frame).esm_class & pdu.RECEIPT_ESM_BITS)


def _accept(smsc: ScriptedSmsc, connection: SmppConnection, sequence: int, frame: bytes) -> None:
    """Accept a held submit exactly as the simulator accepts one (id, receipt if asked)."""
    session = connection.handler
    assert isinstance(session, _ScriptedSession)
    SimulatedSession._submit(session, connection, sequence, frame)


class _ScriptedFactory(SimulatorFactory):
    simulator: ScriptedSmsc

    @override
    def buildProtocol(self, addr: IAddress | None) -> SmppConnection:
        connection = super().buildProtocol(addr)
        connection.handler = _ScriptedSession(self.simulator)
        return connection


async def scripted_smsc(harness: Any) -> tuple[ScriptedSmsc, int]:
    """A scripted operator listening on 127.0.0.1 (port 0), stopped with the harness; returns
    it and its port."""
    smsc = ScriptedSmsc(harness.reactor)
    listener = Listener(
        "scripted SMSC",
        tcp_server(harness.reactor, "127.0.0.1", 0),
        _ScriptedFactory(smsc, Metrics()),
    )
    harness.listeners.append(listener)
    listener.startService()
    assert listener.listening is not None
    await listener.listening
    return smsc, port_of(listener)


def relay_settings(smsc_port: int, **sections: Any) -> dict[str, Any]:
    """A relay configuration for app1/app2 whose operator is the scripted SMSC on ``smsc_port``;
    ``sections`` are added or replace whole sections (``upstream`` is merged)."""
    upstream = {"host": "127.0.0.1", "port": smsc_port, "system_id": "relay", "password": "pw"}
    upstream.update(sections.pop("upstream", {}))
    settings: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "clients": CLIENTS,
        "upstream": upstream,
    }
    settings.update(sections)
    return settings


class RelayProcess:
    """``twistd -n smpprelay`` with a given configuration, in a subprocess, its log in a file.

    ``async with`` starts it and waits for its ports and its first upstream bind; leaving the
    block kills it if it is still running (a test that wants a clean stop calls `stop`).
    """

    def __init__(self, workdir: Path, settings: dict[str, Any], bound: int = 1) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.workdir = workdir
        self.settings = settings
        self.bound = bound
        self.log_path = workdir / "relay.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.smpp_port = 0
        self.metrics_port = 0
        self.terminated = False

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def __aenter__(self) -> RelayProcess:
        config = self.workdir / "relay.yaml"
        config.write_text(yaml.safe_dump(self.settings))
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                twistd_args("smpprelay", "--config", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=twistd_env(),
                cwd=self.workdir,
            )
        ports: dict[str, int] = {}

        def started() -> bool:
            ports.update((name, int(port)) for name, port in _LISTENING.findall(self.log))
            bound = self.log.count("bound as ")
            return len(ports) == 2 and bound >= self.bound

        await self.wait_for(started, START_DEADLINE, "relay did not start")
        self.smpp_port, self.metrics_port = ports["SMPP"], ports["metrics"]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            await self.wait_for(lambda: self.process is None or self.process.poll() is not None)

    async def wait_for(self, condition: Any, timeout: float = 5.0, what: str = "") -> None:
        """Let the reactor run until ``condition()`` holds; fail with the relay's log."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process is not None
            if self.process.poll() is not None and not condition():
                raise AssertionError(f"relay exited {self.process.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or 'condition'} within {timeout} s:\n{self.log}")
            await task.deferLater(self.reactor, 0.02, lambda: None)

    async def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed, nothing unbound); wait until it is gone."""
        assert self.process is not None
        process = self.process
        process.kill()
        deadline = time.monotonic() + STOP_DEADLINE
        while process.poll() is None:
            assert time.monotonic() < deadline, "relay survived SIGKILL"
            await task.deferLater(self.reactor, 0.02, lambda: None)
        assert process.returncode == -signal.SIGKILL, self.log

    def terminate(self) -> None:
        """Send SIGTERM, once (a second one only makes twistd log an error)."""
        assert self.process is not None
        if not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    async def stop(self, timeout: float = STOP_DEADLINE) -> tuple[int, str]:
        """SIGTERM (unless `terminate` sent it); wait for the exit; return status and log."""
        assert self.process is not None
        process = self.process
        self.terminate()
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            assert time.monotonic() < deadline, f"relay did not stop in {timeout} s:\n{self.log}"
            await task.deferLater(self.reactor, 0.02, lambda: None)
        return process.returncode, self.log


class Tags:
    """Test messages told apart by a tag in their text (``pattern``), whatever the relay did to
    their header: how often each reached the operator, which ones an app had accepted."""

    def __init__(self, pattern: bytes) -> None:
        self.pattern = re.compile(pattern)

    def of(self, short_message: bytes) -> bytes:
        """The tag ``short_message`` carries."""
        found = self.pattern.search(short_message)
        assert found is not None, short_message
        return found[0]

    def at_operator(self, smsc: ScriptedSmsc) -> Counter[bytes]:
        """How many times each tagged message reached the operator."""
        return Counter(
            self.of(pdu.read_short_message(frame).short_message) for frame in smsc.submitted
        )

    def accepted(self, results: Iterable[tuple[Any, Any | None]]) -> dict[bytes, bytes]:
        """Tag -> the message id the app was given, for each submit answered ESME_ROK."""
        return {
            self.of(request.short_message): resp.message_id
            for request, resp in results
            if resp is not None and resp.status == Status.ESME_ROK
        }
