"""A built-in SMSC: the relay's upstream when no operator is configured, and a sandbox for apps.

It accepts binds, answers every submit_sm (and data_sm) with a unique message id and, when the
submit asks for one, sends a standard delivery receipt (SMPP 3.4 appendix B text plus the
``receipted_message_id`` and ``message_state`` TLVs) to a receiving bind of the same system_id.
A few switches (``submit_status``, ``answer_submits``, ``bind_status``) let tests make it
misbehave the way real SMSCs sometimes do. query_sm, cancel_sm and replace_sm are answered from
each message's state (`smpprelay.simulator_states`). With a ``throughput`` it caps the rate as
operators do: a submit past that many in the last second is answered ESME_RTHROTTLED.
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
from smpprelay.simulator_states import QUERIES, MessageStates, receipt_due

_HELD_MAX = 100_000


@attrs.define
class Received:
    """A submit_sm (or data_sm) the simulator accepted, as it arrived."""

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
        # Receipts are made by `receipt` (a subclass may make none) and sent by `send_to`.
        self.states = MessageStates(
            clock,
            self.send_to,
            keep,
            lambda message, message_id, stat, submitted, done: self.receipt(
                message, message_id, submitted
            ),
        )

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

    def send_mo(
        self,
        system_id: str,
        source: bytes,
        destination: bytes,
        text: bytes,
        as_data_sm: bool = False,
    ) -> None:
        """Inject a mobile-originated message for ``system_id`` (GSM default alphabet), as a
        deliver_sm or, ``as_data_sm``, as a data_sm (its text in message_payload)."""
        mo = ShortMessage(
            b"", 1, 1, source, 1, 1, destination, 0, 0, 0, b"", b"", 0, 0, 0, 0, text, ()
        )
        if as_data_sm:
            self.send_to(system_id, pdu.encode_data_sm(0, mo))
        else:
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
        elif command_id == CommandId.data_sm and self.kind in ("transmitter", "transceiver"):
            self._take(connection, sequence, frame, CommandId.data_sm)
        elif command_id in QUERIES and self.kind in ("transmitter", "transceiver"):
            connection.send(
                pdu.with_sequence(sim.states.answer(self.system_id, command_id, frame), sequence)
            )
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
        self._take(connection, sequence, frame, CommandId.submit_sm)

    def _take(
        self, connection: SmppConnection, sequence: int, frame: bytes, command_id: int
    ) -> None:
        """A submit_sm, or a data_sm (answered the same way, with a data_sm_resp)."""
        sim = self.simulator
        read = pdu.read_data_sm if command_id == CommandId.data_sm else pdu.read_short_message
        try:
            message = read(frame)
        except DecodeError as error:
            connection.respond(command_id, sequence, error.status)
            return
        if not sim.answer_submits:
            return
        if sim.submit_status != Status.ESME_ROK:
            connection.respond(command_id, sequence, sim.submit_status)
            return
        if sim.over_cap():
            connection.respond(command_id, sequence, Status.ESME_RTHROTTLED)
            return
        message_id = sim.next_message_id()
        sim.received.append(
            Received(self.system_id, message_id, frame, message, sim.clock.seconds())
        )
        connection.respond(command_id, sequence, Status.ESME_ROK, message_id + b"\0")
        # En route until receipt_delay has passed; then final, and its receipt (if due) goes.
        sim.states.track(
            self.system_id,
            message_id,
            message,
            receipt_due(message.registered_delivery, sim.stat),
            sim.receipt_delay,
            sim.stat,
        )


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
