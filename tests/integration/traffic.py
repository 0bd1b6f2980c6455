"""Traffic that moves every metric family: both accounts submit, the rules refuse some, the
operator throttles one, receipts come back (delivered to app1, held for app2), an MO is
delivered, a receipt matches nothing, a bind is refused, the upstream link is lost once, and
apps misbehave on raw sockets (a submit before binding, an unknown command, a header too
short, an answer to nothing).

Used by the observability tests, which check that the dashboard and the alerts only use names
the relay exports after carrying it, and by the test that runs a real Prometheus against it.
"""

from __future__ import annotations

import socket
import struct

import smpplib.gsm
from twisted.internet.threads import deferToThread

from smpprelay import pdu
from smpprelay.pdu import Status
from smpprelay.service import RelayService

from .apps import message
from .conftest import Esme, Harness, port_of, simulator_of, wait_for

# Never to appear in a log line (tests/integration/test_observability.py checks).
SECRET_TEXT = b"zebra-quartz-velvet"


def _exchange(port: int, *frames: bytes) -> None:
    """Blocking: send each frame and read what comes back (until the relay answers or hangs
    up), on one fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for frame in frames:
            sock.sendall(frame)
            sock.recv(4096)


def _misbehave(port: int) -> None:
    submit = pdu.encode_short_message(pdu.CommandId.submit_sm, 2, pdu.BLANK_MESSAGE)
    _exchange(port, submit)  # before any bind: ESME_RINVBNDSTS, closed
    _exchange(port, struct.pack(">IIII", 16, 0x00000999, 0, 3))  # unknown: generic_nack
    _exchange(port, struct.pack(">IIII", 8, 4, 0, 4))  # shorter than a header: closed
    bind = pdu.bind_request("transmitter", 5, "app2", "secret2")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(bind)
        sock.recv(4096)
        sock.sendall(pdu.submit_sm_resp(77, Status.ESME_ROK, b"nothing"))  # answers nothing
        # Another account's (here: nobody's) message: ESME_RINVMSGID, in the operations count.
        sock.sendall(pdu.query_sm(8, pdu.QuerySm(b"NOBODYS", 0, 0, b"")))
        sock.recv(4096)
        sock.sendall(struct.pack(">IIII", 16, 0x00000006, 0, 6))  # unbind
        sock.recv(4096)


class Traffic:
    """app1 binds a transceiver and app2 a transmitter (so app2's receipts are held)."""

    def __init__(self, harness: Harness, relay: RelayService) -> None:
        self.harness = harness
        self.relay = relay
        self.simulator = simulator_of(relay)
        self.app1: Esme = harness.esme(relay)
        self.app2: Esme = harness.esme(relay)
        self.rounds = 0

    async def start(self) -> None:
        """Bind both apps, and let one bind with a wrong password fail."""
        await self.app1.bind("transceiver", "app1")
        await self.app2.bind("transmitter", "app2")
        intruder = self.harness.esme(self.relay)
        try:
            await intruder.bind("transmitter", "app1", password="not-the-password")
        except Exception:
            pass  # ESME_RBINDFAIL, as expected: counted in smpprelay_bind_attempts_total
        else:
            raise AssertionError("a wrong password was accepted")

    async def round(self) -> None:
        """One round of every kind of traffic; each round's texts are new (no duplicates)."""
        self.rounds += 1
        n = self.rounds
        app1, app2, sim = self.app1, self.app2, self.simulator
        delivered = len(app1.deliveries)
        for i in range(3):
            text = b"%s %d-%d" % (SECRET_TEXT, n, i)
            resp = await app1.submit(**message(text, registered_delivery=1))
            assert resp.status == Status.ESME_ROK
        duplicate = await app1.submit(
            **message(b"%s %d-0" % (SECRET_TEXT, n), registered_delivery=1)
        )
        assert duplicate.status == Status.ESME_RSUBMITFAIL
        bad_gsm = await app1.submit(**message(b"\x80\x81 %d" % n))
        assert bad_gsm.status != Status.ESME_ROK
        held = await app2.submit(**message(b"for app2 %d" % n, registered_delivery=1))
        assert held.status == Status.ESME_ROK
        # The first part of a long message whose other parts never come: one open message.
        parts, coding, esm_class = smpplib.gsm.make_parts(f"{n} never completed. " * 15)
        first = await app1.submit(**message(parts[0], data_coding=coding, esm_class=esm_class))
        assert first.status == Status.ESME_ROK
        sim.submit_status = Status.ESME_RTHROTTLED
        try:
            throttled = await app1.submit(**message(b"throttled %d" % n))
        finally:
            sim.submit_status = Status.ESME_ROK
        assert throttled.status == Status.ESME_RTHROTTLED
        sim.send_mo("smpprelay", b"79991234567", b"790012345", b"mo %d" % n)
        unknown = sim.receipt(pdu.BLANK_MESSAGE, b"NOSUCHID%d" % n, 0.0)
        sim.send_to("smpprelay", unknown)
        # Three receipts and the MO reach app1.
        await app1.read_until(lambda: len(app1.deliveries) >= delivered + 4)

    async def misbehave(self) -> None:
        """Apps that break the protocol on raw sockets, each answered and counted."""
        await deferToThread(_misbehave, port_of(self.relay.listener))
        registry = self.relay.metrics.registry
        await wait_for(
            lambda: (
                registry.get_sample_value(
                    "smpprelay_unexpected_pdus_total",
                    {"side": "downstream", "command": "submit_sm_resp"},
                )
                == 1
            )
        )

    async def lose_upstream(self) -> None:
        """Drop the upstream link once and wait until the relay has bound again."""
        session = self.relay.upstream.sessions[0]
        assert session.connection is not None
        session.connection.abort()
        await wait_for(lambda: self.relay.upstream.pool.bound == 0)
        await wait_for(lambda: self.relay.upstream.pool.bound >= 1, timeout=10.0)
