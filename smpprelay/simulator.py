"""A built-in SMSC: the relay's upstream when no operator is configured, and a sandbox for apps.

It accepts binds, answers every submit_sm with a unique message id and, when the submit asks
for one, sends a standard delivery receipt (SMPP 3.4 appendix B text plus the
``receipted_message_id`` and ``message_state`` TLVs) to a receiving bind of the same system_id.
A few switches (``submit_status``, ``answer_submits``, ``bind_status``) let tests make it
misbehave the way real SMSCs sometimes do. With a ``throughput`` it caps the rate as operators
do: a submit past that many in the last second is answered ESME_RTHROTTLED.
"""

from __future__ import annotations

import os
from collections import deque

import attrs
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from smpprelay import pdu
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, DecodeError, ShortMessage, Status
from smpprelay.receipts import delivery_receipt

_HELD_MAX = 100_000


@attrs.define
class Received:
    """A submit_sm the simulator accepted, as it arrived."""

    system_id: str
    message_id: bytes
    frame: bytes
    message: ShortMessage
    at: float = 0.0  # when it arrived (the simulator's clock)


class Simulator:
    """The SMSC's state, shared by every connection to it."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        receipt_delay: float = 0.0,
        stat: str = "DELIVRD",
        accounts: dict[str, str] | None = None,
        keep: int = 10_000,
        throughput: float | None = None,
    ) -> None:
        self.clock = clock
        self.receipt_delay = receipt_delay
        self.stat = stat
        self.accounts = accounts  # None: any system_id and password bind
        self.submit_status = Status.ESME_ROK
        self.answer_submits = True
        self.bind_status = Status.ESME_ROK
        self.received: deque[Received] = deque(maxlen=keep)
        self.submits = 0
        # At most this many submits accepted in any one second (None: no cap), as a
        # sliding window: the strictest way an operator counts.
        self.throughput = throughput
        self.throttled = 0  # submits answered ESME_RTHROTTLED
        self._accepted: deque[float] = deque()  # when each of the last second's went
        self._prefix = os.urandom(3).hex().upper()
        self._receivers: dict[str, list[SimulatedSession]] = {}
        self._held: dict[str, deque[bytes]] = {}

    def next_message_id(self) -> bytes:
        """A fresh message id, unique across restarts thanks to a random prefix."""
        self.submits += 1
        return b"%s%08X" % (self._prefix.encode(), self.submits)

    def over_cap(self) -> bool:
        """Whether a submit now would go past ``throughput`` (if not, it is counted)."""
        if self.throughput is None:
            return False
        now = self.clock.seconds()
        accepted = self._accepted
        while accepted and accepted[0] <= now - 1.0:
            accepted.popleft()
        if len(accepted) >= max(1, int(self.throughput)):
            self.throttled += 1
            return True
        accepted.append(now)
        return False

    def receiver_bound(self, session: SimulatedSession) -> None:
        """A receiving bind came up: it gets what waited for its system_id."""
        self._receivers.setdefault(session.system_id, []).append(session)
        held = self._held.pop(session.system_id, deque())
        while held:
            self.send_to(session.system_id, held.popleft())

    def receiver_gone(self, session: SimulatedSession) -> None:
        """A receiving bind went away."""
        sessions = self._receivers.get(session.system_id, [])
        if session in sessions:
            sessions.remove(session)

    def send_to(self, system_id: str, frame: bytes) -> None:
        """Send a deliver_sm to a receiving bind of ``system_id``, or keep it until one binds."""
        for session in self._receivers.get(system_id, ()):
            if session.connection is not None and not session.connection.closed:
                session.connection.send_request(frame).addErrback(self._delivery_failed)
                return
        held = self._held.setdefault(system_id, deque(maxlen=_HELD_MAX))
        held.append(frame)

    def _delivery_failed(self, reason: Failure) -> None:
        self.log.info(
            "simulator: deliver_sm not acknowledged ({why})", why=reason.getErrorMessage()
        )

    def receipt(self, message: ShortMessage, message_id: bytes, submitted: float) -> bytes:
        """The delivery receipt for ``message`` (3.4 appendix B, with its TLVs)."""
        return delivery_receipt(message, message_id, self.stat, submitted, self.clock.seconds())

    def send_mo(self, system_id: str, source: bytes, destination: bytes, text: bytes) -> None:
        """Inject a mobile-originated message for ``system_id`` (GSM default alphabet)."""
        mo = ShortMessage(
            b"", 1, 1, source, 1, 1, destination, 0, 0, 0, b"", b"", 0, 0, 0, 0, text, ()
        )
        self.send_to(system_id, pdu.encode_short_message(CommandId.deliver_sm, 0, mo))


class SimulatedSession:
    """The request handler of one connection to the simulator."""

    log = Logger()

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.system_id = ""
        self.kind = ""
        self.connection: SmppConnection | None = None

    def connection_made(self, connection: SmppConnection) -> None:
        self.connection = connection

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
        self.simulator.receiver_gone(self)

    def request_received(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        sim = self.simulator
        if command_id == CommandId.submit_sm and self.kind in ("transmitter", "transceiver"):
            self._submit(connection, sequence, frame)
        elif command_id in pdu.BIND_KINDS and not self.kind:
            self._bind(connection, command_id, sequence, frame)
        elif command_id == CommandId.unbind and self.kind:
            connection.respond(CommandId.unbind, sequence, Status.ESME_ROK)
            connection.close()
            sim.receiver_gone(self)
        elif command_id in (CommandId.submit_sm, CommandId.unbind, *pdu.BIND_KINDS):
            connection.respond(
                command_id,
                sequence,
                Status.ESME_RALYBND if command_id in pdu.BIND_KINDS else Status.ESME_RINVBNDSTS,
            )
        else:
            connection.send(pdu.generic_nack(sequence, Status.ESME_RINVCMDID))

    def _bind(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        sim = self.simulator
        kind = pdu.BIND_KINDS[CommandId(command_id)]
        try:
            request = pdu.read_bind(frame)
        except DecodeError as error:
            connection.send(pdu.bind_response(kind, sequence, error.status, "SIMSMSC"))
            return
        status = sim.bind_status
        if sim.accounts is not None and sim.accounts.get(request.system_id) != request.password:
            status = Status.ESME_RBINDFAIL
        connection.send(pdu.bind_response(kind, sequence, status, "SIMSMSC"))
        if status != Status.ESME_ROK:
            connection.close()
            return
        self.system_id, self.kind = request.system_id, kind
        if kind in ("receiver", "transceiver"):
            sim.receiver_bound(self)

    def _submit(self, connection: SmppConnection, sequence: int, frame: bytes) -> None:
        sim = self.simulator
        try:
            message = pdu.read_short_message(frame)
        except DecodeError as error:
            connection.send(pdu.submit_sm_resp(sequence, error.status))
            return
        if not sim.answer_submits:
            return
        if sim.submit_status != Status.ESME_ROK:
            connection.send(pdu.submit_sm_resp(sequence, sim.submit_status))
            return
        if sim.over_cap():
            connection.send(pdu.submit_sm_resp(sequence, Status.ESME_RTHROTTLED))
            return
        message_id = sim.next_message_id()
        sim.received.append(
            Received(self.system_id, message_id, frame, message, sim.clock.seconds())
        )
        connection.send(pdu.submit_sm_resp(sequence, Status.ESME_ROK, message_id))
        if message.registered_delivery & 0x03 in (1, 2) and (
            sim.stat != "DELIVRD" or message.registered_delivery & 0x03 == 1
        ):
            receipt = sim.receipt(message, message_id, sim.clock.seconds())
            if sim.receipt_delay > 0:
                sim.clock.callLater(sim.receipt_delay, sim.send_to, self.system_id, receipt)
            else:
                sim.send_to(self.system_id, receipt)


class SimulatorFactory(Factory):
    """Listening factory for the simulator."""

    noisy = False

    def __init__(self, simulator: Simulator, metrics: Metrics, max_pdu: int = 70_000) -> None:
        self.simulator = simulator
        self.metrics = metrics
        self.max_pdu = max_pdu

    @override
    def buildProtocol(self, addr: IAddress | None) -> SmppConnection:
        return SmppConnection(
            SimulatedSession(self.simulator),
            self.simulator.clock,
            self.metrics,
            side="simulator",
            max_pdu=self.max_pdu,
            response_timeout=30.0,
        )
