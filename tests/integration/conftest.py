"""Fixtures for the integration tests: a real relay on 127.0.0.1 and smpplib apps in threads.

These are the only tests that open real sockets. Everything listens on 127.0.0.1, port 0.
smpplib uses blocking sockets, so each of its calls runs in a reactor worker thread
(``deferToThread``) while the reactor keeps serving the relay in this same process.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest_twisted
import smpplib.client
import smpplib.exceptions
import smpplib.smpp
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.threads import deferToThread

from smpprelay.config import parse_config
from smpprelay.metrics import Metrics
from smpprelay.service import Listener, RelayService, build, tcp_server
from smpprelay.simulator import Simulator, SimulatorFactory

# Two accounts; app1 owns the MO numbers starting 7900, app2 those starting 7911.
CLIENTS: list[dict[str, Any]] = [
    {"system_id": "app1", "password": "secret1", "mo_prefixes": ["7900"]},
    {"system_id": "app2", "password": "secret2", "mo_prefixes": ["7911"]},
]
PASSWORDS = {client["system_id"]: client["password"] for client in CLIENTS}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def relay_config(**sections: Any) -> dict[str, Any]:
    """A relay configuration on 127.0.0.1 port 0 with app1 and app2, plus ``sections``."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "clients": CLIENTS,
        # In-process relays keep their state in memory; the durable store is tested with
        # twistd subprocesses (tests/integration/test_crash_restart.py) and in tests/store.
        "store": {"backend": "memory"},
    }
    data.update(sections)
    return data


def simulator_of(service: RelayService) -> Simulator:
    """The state of the relay's built-in simulated SMSC."""
    assert service.simulator is not None
    simulator: Simulator = service.simulator.factory.simulator  # type: ignore[attr-defined]
    return simulator


def port_of(listener: Listener) -> int:
    """The TCP port a started listener got."""
    assert listener.port is not None
    port: int = listener.port.getHost().port  # type: ignore[attr-defined]
    return port


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the reactor run until ``condition()`` holds; fail after ``timeout`` seconds."""
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, 0.01, lambda: None)


class Esme:
    """A smpplib client (an app we did not write) whose blocking calls run in a thread.

    Never run two calls of one Esme at the same time. ``responses`` collects the
    submit_sm_resp PDUs (error statuses too) and ``deliveries`` the deliver_sm PDUs; smpplib
    answers each deliver_sm with an ESME_ROK deliver_sm_resp itself.
    """

    def __init__(self, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.client = smpplib.client.Client(
            "127.0.0.1", port, allow_unknown_opt_params=True, timeout=5, ssl_context=ssl_context
        )
        self.responses: list[Any] = []
        self.deliveries: list[Any] = []
        self.client.set_message_sent_handler(lambda pdu, **_: self.responses.append(pdu))
        self.client.set_message_received_handler(lambda pdu, **_: self.deliveries.append(pdu))
        # Error statuses go to message_sent_handler like any answer instead of raising.
        self.client.set_error_pdu_handler(lambda pdu: None)

    def bind(self, kind: str, system_id: str, password: str | None = None) -> Deferred[Any]:
        """Connect and bind as ``kind`` (transmitter, receiver or transceiver)."""
        secret = PASSWORDS.get(system_id, "") if password is None else password

        def run() -> Any:
            self.client.connect()
            method = getattr(self.client, f"bind_{kind}")
            return method(system_id=system_id, password=secret)

        return deferToThread(run)

    def send(self, **fields: Any) -> Deferred[Any]:
        """Send a submit_sm without waiting for its answer; fires with the request PDU."""
        return deferToThread(self.client.send_message, **fields)

    def read_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> Deferred[None]:
        """Read PDUs (answering deliver_sm) until ``condition()`` holds; fail after ``timeout``."""

        def run() -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"condition not met within {timeout} s")
                self.client.read_once()

        return deferToThread(run)

    async def submit(self, **fields: Any) -> Any:
        """Send a submit_sm and read until its submit_sm_resp arrives; returns that answer."""
        request = await self.send(**fields)

        def answered() -> bool:
            return any(resp.sequence == request.sequence for resp in self.responses)

        await self.read_until(answered)
        return next(resp for resp in self.responses if resp.sequence == request.sequence)

    def submit_many(
        self,
        messages: Sequence[dict[str, Any]],
        window: int = 50,
        timeout: float = 30.0,
        on_answer: Callable[[int], None] | None = None,
    ) -> Deferred[list[tuple[Any, Any | None]]]:
        """Send ``messages`` in order with at most ``window`` unanswered, reading answers as
        they come, until all are answered or the relay goes away (a crash: what was sent and
        not answered by then stays unanswered). ``on_answer(n)`` runs in the sending thread
        after the n-th answer. Fires with (request, its submit_sm_resp or None) per message
        sent, in order.
        """

        def run() -> list[tuple[Any, Any | None]]:
            deadline = time.monotonic() + timeout
            sent: list[Any] = []
            answers: dict[int, Any] = {}
            seen = len(self.responses)

            def read() -> None:
                nonlocal seen
                self.client.read_once()
                for resp in self.responses[seen:]:
                    answers[resp.sequence] = resp
                    if on_answer is not None:
                        on_answer(len(answers))
                seen = len(self.responses)

            try:
                for fields in messages:
                    while len(sent) - len(answers) >= window:
                        read()
                    sent.append(self.client.send_message(**fields))
                while len(answers) < len(sent):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{len(sent) - len(answers)} unanswered")
                    read()
            except (smpplib.exceptions.ConnectionError, OSError):
                pass  # the relay is gone: the unanswered ones stay unanswered
            return [(request, answers.get(request.sequence)) for request in sent]

        return deferToThread(run)

    def answer_unbind(self, timeout: float = 5.0) -> Deferred[None]:
        """Read until the relay's unbind comes, and answer it (smpplib itself never does)."""

        def run() -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                request = self.client.read_pdu()
                if request.command == "unbind":
                    answer = smpplib.smpp.make_pdu("unbind_resp", client=self.client)
                    answer.sequence = request.sequence
                    self.client.send_pdu(answer)
                    return
            raise TimeoutError(f"no unbind within {timeout} s")

        return deferToThread(run)

    def at_eof(self) -> Deferred[bool]:
        """True when the relay closed the connection (the next read finds end of stream)."""

        def run() -> bool:
            sock = self.client._socket
            assert sock is not None
            try:
                return bool(sock.recv(1) == b"")
            except ConnectionResetError:
                return True

        return deferToThread(run)

    def close(self) -> Deferred[None]:
        """Unbind if bound, then close the socket."""

        def run() -> None:
            if self.client._socket is None:
                return
            try:
                self.client.unbind()
            except Exception:
                pass  # not bound, or the relay already hung up
            finally:
                self.client.disconnect()

        return deferToThread(run)


class Harness:
    """Starts relays, stand-alone simulators and apps, and stops them all afterwards."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.relays: list[RelayService] = []
        self.listeners: list[Listener] = []
        self.esmes: list[Esme] = []

    async def relay(self, bound: int = 1, **sections: Any) -> RelayService:
        """Start a relay for ``relay_config(**sections)``; wait for ``bound`` upstream binds."""
        service = build(parse_config(relay_config(**sections)), self.reactor)
        self.relays.append(service)
        service.startService()
        assert service.listener.listening is not None
        assert service.metrics_listener.listening is not None
        await service.listener.listening
        await service.metrics_listener.listening
        await wait_for(lambda: service.upstream.pool.bound >= bound)
        return service

    async def simulator(
        self, endpoint: IStreamServerEndpoint | None = None
    ) -> tuple[Listener, Simulator]:
        """Start a stand-alone simulated SMSC on 127.0.0.1, port 0 (or on ``endpoint``)."""
        simulator = Simulator(self.reactor)
        endpoint = endpoint or tcp_server(self.reactor, "127.0.0.1", 0)
        listener = Listener("sim", endpoint, SimulatorFactory(simulator, Metrics()))
        self.listeners.append(listener)
        listener.startService()
        assert listener.listening is not None
        await listener.listening
        return listener, simulator

    def esme(self, service: RelayService, ssl_context: ssl.SSLContext | None = None) -> Esme:
        """A new (unconnected) smpplib app aimed at ``service``'s SMPP listener (TLS with
        ``ssl_context``)."""
        return self.esme_at(port_of(service.listener), ssl_context)

    def esme_at(self, port: int, ssl_context: ssl.SSLContext | None = None) -> Esme:
        """A new (unconnected) smpplib app aimed at 127.0.0.1:``port``."""
        esme = Esme(port, ssl_context)
        self.esmes.append(esme)
        return esme

    async def close(self) -> None:
        # Apps first: a relay stopping with a bound app unbinds it and waits for its answer.
        for esme in self.esmes:
            await esme.close()
        for service in reversed(self.relays):
            if service.running:
                await service.stopService()
        for listener in self.listeners:
            if listener.running:
                await listener.stopService()


@pytest_twisted.async_yield_fixture()
async def harness() -> AsyncIterator[Harness]:
    """Relays, simulators and apps for one test, all stopped when it ends."""
    harness = Harness()
    try:
        yield harness
    finally:
        await harness.close()


@pytest_twisted.async_yield_fixture()
async def relay(harness: Harness) -> AsyncIterator[RelayService]:
    """A relay with app1 and app2 and the built-in simulated SMSC, its upstream bound."""
    yield await harness.relay()
