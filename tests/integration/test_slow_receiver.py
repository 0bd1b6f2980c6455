"""A receiving app that stops reading does not make the relay's memory grow without bound.

The app is a raw socket (so nothing reads behind the test's back) bound as a transceiver with a
small receive buffer. The simulated SMSC then sends the relay thousands of MO for it. The
relay's window for the app is set far above that number, so only back-pressure can stop the
flood: once the relay's write buffer for the app fills, its connection is paused, further MO
wait with the held deliveries, and the write buffer stays near Twisted's 64 KiB threshold.
When the app reads again, every MO arrives exactly once.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from smpprelay import pdu
from smpprelay.connection import SmppConnection
from smpprelay.pdu import CommandId, Status
from smpprelay.service import RelayService

from .conftest import PASSWORDS, Harness, port_of, simulator_of, wait_for

COUNT = 20_000
# ~100 octets of text: about 2.6 MB of deliver_sm in all, far more than the kernel's buffers
# on the loopback once both ends' buffers are shrunk.
PADDING = b"x" * 90
# Twisted pauses the producer once 64 KiB wait; one write beyond that is all that may follow.
WRITE_BUFFER_BOUND = 256 * 1024


def text_of(index: int) -> bytes:
    return b"mo %05d " % index + PADDING


class RawApp:
    """An app on a blocking socket; its calls run in a reactor worker thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so the advertised window stays small and the relay's writes back up.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5)
        self.port = port
        self.framer = pdu.Framer(max_pdu=70_000)
        self.received: list[bytes] = []

    def _frames(self) -> list[bytes]:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the relay closed the connection")
        return self.framer.feed(data)

    def bind(self) -> Deferred[int]:
        def run() -> int:
            self.sock.connect(("127.0.0.1", self.port))
            self.sock.sendall(pdu.bind_request("transceiver", 1, "app1", PASSWORDS["app1"]))
            while True:
                for frame in self._frames():
                    _, command_id, status, _ = pdu.header(frame)
                    if command_id == CommandId.bind_transceiver_resp:
                        return status

        return deferToThread(run)

    def read_all(self, count: int, timeout: float = 20.0) -> Deferred[None]:
        """Read deliver_sm, answering each ESME_ROK, until ``count`` have arrived."""

        def run() -> None:
            deadline = time.monotonic() + timeout
            while len(self.received) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self.received)} of {count} deliveries arrived")
                answers = []
                for frame in self._frames():
                    _, command_id, _, sequence = pdu.header(frame)
                    if command_id == CommandId.deliver_sm:
                        self.received.append(pdu.read_short_message(frame).short_message)
                        answers.append(
                            pdu.response(CommandId.deliver_sm, sequence, Status.ESME_ROK, b"\0")
                        )
                self.sock.sendall(b"".join(answers))

        return deferToThread(run)

    def close(self) -> None:
        self.sock.close()


def write_buffer(connection: SmppConnection) -> int:
    """Bytes the relay's transport holds for the app, not yet taken by the kernel."""
    transport: Any = connection.transport
    held: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return held


@pytest_twisted.ensureDeferred
async def test_receiver_that_stops_reading_is_paused_and_gets_everything_when_it_reads(
    harness: Harness,
) -> None:
    relay: RelayService = await harness.relay(limits={"window": COUNT * 2})
    registry = relay.metrics.registry
    app = RawApp(port_of(relay.listener))
    try:
        assert await app.bind() == Status.ESME_ROK
        await wait_for(lambda: len(relay.registry.receivers("app1")) == 1)
        session = relay.registry.receivers("app1")[0]
        connection = session.connection
        assert connection is not None
        # A fixed, small send buffer on the relay's side of the socket: without it the kernel's
        # autotuning may absorb megabytes before the relay's own buffer ever fills.
        handle: Any = connection.transport.getHandle()  # type: ignore[union-attr]
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)

        # The app reads nothing from here on.
        simulator = simulator_of(relay)
        for index in range(COUNT):
            simulator.send_mo("smpprelay", b"79991234567", b"790012345", text_of(index))

        def all_routed() -> bool:
            routed = registry.get_sample_value(
                "smpprelay_deliveries_received_total", {"kind": "mo"}
            )
            return routed == COUNT

        peak = 0

        def routed_and_sampled() -> bool:
            nonlocal peak
            peak = max(peak, write_buffer(connection))
            return all_routed()

        await wait_for(routed_and_sampled, timeout=15)

        # The relay's own buffer for the app stayed bounded the whole time.
        peak = max(peak, write_buffer(connection))
        assert peak < WRITE_BUFFER_BOUND, peak
        # It stopped writing to the app: the connection is paused and the rest is held.
        assert connection.paused
        assert not session.can_deliver
        held = relay.router.held.count("app1")
        in_flight = connection.in_flight
        assert held > COUNT // 2, (held, in_flight)
        assert registry.get_sample_value("smpprelay_held_deliveries", {"account": "app1"}) == held
        # Nothing lost: every MO is either written to the app (awaiting its answer) or held.
        assert held + in_flight == COUNT
        # And it stays so while the app keeps not reading: the reactor turns, nothing moves.
        for _ in range(20):
            await task.deferLater(harness.reactor, 0, lambda: None)
        assert write_buffer(connection) < WRITE_BUFFER_BOUND
        assert connection.paused
        assert relay.router.held.count("app1") == held

        # The app reads again: everything held arrives, each MO exactly once.
        await app.read_all(COUNT)
        assert len(app.received) == COUNT
        assert sorted(app.received) == [text_of(index) for index in range(COUNT)]
        await wait_for(lambda: relay.router.held.count("app1") == 0)
        delivered = {"kind": "mo", "result": "delivered"}
        await wait_for(
            lambda: registry.get_sample_value("smpprelay_deliveries_total", delivered) == COUNT
        )
        assert registry.get_sample_value("smpprelay_held_deliveries", {"account": "app1"}) == 0
        assert not connection.paused
    finally:
        app.close()
