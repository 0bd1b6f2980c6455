"""App sessions: apps bind to us exactly as they would to their operator's SMSC.

`DownstreamSession` is the request handler of one app connection: the session state machine,
the hand-over of each submit to the relay and the delivery of receipts and MO. Its bind (through
a ``twisted.cred`` portal) is `smpprelay.binding`'s, its deliveries `smpprelay.receiving`'s.
`SessionRegistry` (`smpprelay.registry`) knows who is bound.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from smpprelay import pdu
from smpprelay.access import OPEN_ACCESS, Access, OpenAccess, unmapped
from smpprelay.binding import Binding
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status
from smpprelay.receiving import Receiving
from smpprelay.registry import Registry
from smpprelay.session_states import ANSWERED_WITH_RESP, BOUND, NONE, OPERATIONS, TRANSMITTING
from smpprelay.session_states import State as State
from smpprelay.tls import tls_problem

# (account, the app's submit_sm, whether the app bound with system_type "ISO")
Submitter = Callable[[str, bytes, bool], Deferred[bytes]]
# The same with a callback for the answer instead of a Deferred (`Relay.submit_cb`): the hot
# path. It is given the answer (or, through a bug only, a failure) exactly once.
SubmitterCb = Callable[[str, bytes, bool, Callable[[bytes | Failure], None]], None]
# (command_id, account, the app's request, ISO): its response, whatever its sequence number
# (`smpprelay.operations.Operations.handle`): query_sm, cancel_sm, replace_sm, submit_multi,
# data_sm.
Operator = Callable[[int, str, bytes, bool], Deferred[bytes]]


# Per submit, as plain values: an IntEnum member is a class attribute lookup each time, and
# `pdu.header` / `pdu.with_sequence` unpack or call more than the answer needs.
_SUBMIT_SM = int(CommandId.submit_sm)
_U32 = struct.Struct("!I")
_unpack_u32 = _U32.unpack_from
_pack_u32 = _U32.pack


def _not_carried(command_id: int, account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
    """Without operations (tests of the submit path alone): generic_nack ESME_RINVCMDID."""
    return succeed(pdu.generic_nack(0, Status.ESME_RINVCMDID))


class DownstreamSession(Binding, Receiving):
    """The handler of one app connection."""

    log = Logger()

    def __init__(
        self,
        portal: Portal,
        registry: SessionRegistry,
        relay_submit: Submitter,
        clock: IReactorTime,
        metrics: Metrics,
        session_init: float,
        window: int,
        inactivity: float = 300.0,
        access: Access | OpenAccess = OPEN_ACCESS,
        operate: Operator = _not_carried,
        relay_submit_cb: SubmitterCb | None = None,
    ) -> None:
        self.portal = portal
        self._operate = operate
        self.access = access
        self.host = ""
        self._admitted = False
        # Holds one of security.max_unbound_connections from accept until the bind succeeds.
        self._holds_unbound = False
        self.registry = registry
        # The relay's entry point: one submit in, one submit_sm_resp out.
        self._relay_submit = relay_submit
        # Its callback form, when there is one (the relay's): taken instead, no Deferred.
        self._relay_submit_cb = relay_submit_cb
        self.clock = clock
        self.metrics = metrics
        self.session_init = session_init
        self.window = window
        self.inactivity = inactivity
        self.state = State.OPEN
        self.account = ""
        self.bind_kind = ""
        # An app that binds with system_type "ISO" sends Latin-1 under data_coding 0.
        self.app_iso = False
        self.connection: SmppConnection | None = None
        self._peer_address: IAddress | None = None
        self._in_flight = 0
        self._unbind_sequence: int | None = None
        self._init_timer: IDelayedCall | None = None
        self._drained: list[Deferred[None]] = []
        self._receives_while_unbinding = False
        self.deaf = False
        # Set once the connection is gone: a password check still waiting for a thread is skipped.
        self._abandoned = threading.Event()

    @property
    def idle(self) -> bool:
        """Connected, not bound and not binding: the connection a newer one may push out."""
        # Not one already dropped whose loss the transport has yet to report.
        return self.state is State.OPEN and self._admitted and not self._abandoned.is_set()

    def _receiver_ready(self) -> None:
        self.registry.receiver_ready(self.account)

    # --- RequestHandler -------------------------------------------------------------------

    def connection_made(self, connection: SmppConnection) -> None:
        self.connection = connection
        transport = connection.transport
        assert transport is not None  # called from the connection's connectionMade
        self._peer_address = transport.getPeer()
        # A "::" listener sees IPv4 apps as ::ffff:a.b.c.d: keyed, capped, locked out and
        # logged as the IPv4 address they are.
        self.host = unmapped(str(getattr(self._peer_address, "host", "")))
        connection.peer = f"{self.host}:{getattr(self._peer_address, 'port', '?')}"
        if not self.access.admit(self.host, self.registry.push_out_idle):
            # Locked out or over a connection cap: dropped before a byte is read.
            self.state = State.CLOSED
            connection.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._admitted = True
        self._holds_unbound = True
        self.registry.connected(self)
        self._init_timer = self.clock.callLater(self.session_init, self._init_expired)

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
        problem = tls_problem(reason.value)
        if problem is not None:
            # A handshake that failed (no client certificate, plain SMPP or old TLS on the TLS
            # port): the app never got to SMPP, so this line and the metric are all it leaves.
            self.log.info(
                "TLS with {peer} failed: {problem}", peer=connection.peer, problem=problem
            )
            self.metrics.tls_failures.labels("downstream").inc()
        self._abandoned.set()
        if self._init_timer is not None and self._init_timer.active():
            self._init_timer.cancel()
        self._leave_unbound()
        if self._admitted:
            self._admitted = False
            self.access.closed(self.host)
        was_bound = self.state in BOUND or self.state is State.UNBINDING
        self.state = State.CLOSED
        self.registry.disconnected(self)
        if was_bound:
            self.registry.unbound(self)
            self.log.info(
                "{account} ({kind}) from {peer} disconnected",
                account=self.account,
                kind=self.bind_kind,
                peer=connection.peer,
            )
        self._notify_drained()

    def request_received(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        if command_id != _SUBMIT_SM or self.state not in TRANSMITTING:
            self._request(connection, command_id, sequence, frame)
            return
        # A submit_sm, handled here rather than in a method of its own: once per relayed submit.
        clock = self.clock
        started = clock.seconds()
        account = self.account
        metrics = self.metrics
        # A full window, or (taking a token only when the window has room) over the rate.
        if self._in_flight >= self.window or not self.access.may_submit(account):
            metrics.count_submit(account, Status.ESME_RTHROTTLED, 0.0)
            connection.send(pdu.submit_sm_resp(sequence, Status.ESME_RTHROTTLED))
            return
        self._in_flight += 1

        # A closure: cheaper to make and call than a slotted record's __call__ or a partial of
        # a bound method (measured on 3.11).
        def answer(resp: bytes | Failure) -> None:
            if isinstance(resp, Failure):
                # The relay never fails; if a bug makes it, the app still gets an answer.
                self.log.failure("relaying a submit failed", resp)
                resp = pdu.submit_sm_resp(sequence, Status.ESME_RSYSERR)
            in_flight = self._in_flight - 1
            self._in_flight = in_flight
            # command_status, and the answer under the app's sequence_number (`pdu.header`
            # and `pdu.with_sequence`, inline).
            metrics.count_submit(account, _unpack_u32(resp, 8)[0], clock.seconds() - started)
            connection.send(resp[:12] + _pack_u32(sequence) + resp[16:])
            if in_flight == 0 and self._drained:
                self._notify_drained()

        submit_cb = self._relay_submit_cb
        if submit_cb is not None:
            submit_cb(account, frame, self.app_iso, answer)
        else:
            self._relay_submit(account, frame, self.app_iso).addBoth(answer)

    def _request(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        # Every request but a submit_sm in a transmitting state.
        state = self.state
        if command_id in pdu.BIND_KINDS:
            if state is State.OPEN:
                self._bind(connection, command_id, sequence, frame)
            else:
                self._reject(connection, command_id, sequence, Status.ESME_RALYBND)
        elif command_id == CommandId.unbind and state in BOUND:
            self._unbind(connection, sequence)
        elif state in OPERATIONS.get(command_id, NONE):
            self._operation(connection, command_id, sequence, frame)
        elif command_id in ANSWERED_WITH_RESP:
            # Out of its state (3.4 table 2-1); before a bind, nothing is read and we hang up.
            self._reject(connection, command_id, sequence, Status.ESME_RINVBNDSTS)
            if state in (State.OPEN, State.BINDING):
                connection.close()
        else:
            self._nack_unsupported(connection, command_id, sequence)
            if state in (State.OPEN, State.BINDING):
                connection.close()

    def _nack_unsupported(self, connection: SmppConnection, command_id: int, sequence: int) -> None:
        self.metrics.rejected_requests.labels(
            "downstream", pdu.command_label(command_id), "ESME_RINVCMDID"
        ).inc()
        connection.send(pdu.generic_nack(sequence, Status.ESME_RINVCMDID))

    def _reject(
        self, connection: SmppConnection, command_id: int, sequence: int, status: int
    ) -> None:
        self.log.info(
            "{peer}: {command} in state {state} answered {status}",
            peer=connection.peer,
            command=pdu.command_name(command_id),
            state=self.state.value,
            status=pdu.status_name(status),
        )
        self.metrics.rejected_requests.labels(
            "downstream", pdu.command_label(command_id), pdu.status_name(status)
        ).inc()
        connection.respond(command_id, sequence, status)

    def _idle(self) -> None:
        # Nothing from the app for `inactivity` seconds: unbind it (after any in-flight answer).
        if self.connection is None or self.state not in BOUND:
            return
        self.log.info(
            "{account} ({kind}) from {peer}: nothing received for {s} s; unbinding",
            account=self.account,
            kind=self.bind_kind,
            peer=self.connection.peer,
            s=self.inactivity,
        )
        self.metrics.session_timeouts.labels("downstream", "inactivity").inc()
        self.shutdown()

    def _resumed(self) -> None:
        # The app reads again: what waited for its receiving bind can flow.
        if self.receives:
            self.registry.receiver_ready(self.account)

    # --- submit and unbind ------------------------------------------------------------------

    def _operation(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        """query_sm, cancel_sm, replace_sm, submit_multi, data_sm: within the window (and, for
        those that send messages, the account's throughput) as a submit is."""
        account = self.account
        sends = command_id in (CommandId.submit_multi, CommandId.data_sm)
        if self._in_flight >= self.window or (sends and not self.access.may_submit(account)):
            # An error response carries no body (3.4 §4.4.2), whichever the command.
            connection.send(pdu.response(command_id, sequence, Status.ESME_RTHROTTLED))
            return
        self._in_flight += 1

        def answer(resp: bytes) -> None:
            self._in_flight -= 1
            self.metrics.count_operation(account, command_id, pdu.header(resp)[2])
            connection.send(pdu.with_sequence(resp, sequence))
            if self._in_flight == 0:
                self._notify_drained()

        def failed(reason: Failure) -> None:
            self.log.failure(
                "an app's {command} failed", reason, command=pdu.command_label(command_id)
            )
            answer(pdu.generic_nack(sequence, Status.ESME_RSYSERR))

        self._operate(command_id, account, frame, self.app_iso).addCallbacks(answer, failed)

    def _unbind(self, connection: SmppConnection, sequence: int) -> None:
        self.state = State.UNBINDING
        self.registry.unbound(self)

        def finish(_: object) -> None:
            connection.respond(CommandId.unbind, sequence, Status.ESME_ROK)
            connection.close()

        self._when_drained().addCallback(finish)

    def _when_drained(self) -> Deferred[None]:
        if self._in_flight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        return waiter

    def _notify_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            waiter.callback(None)

    def shutdown(self) -> Deferred[None]:
        """On relay shutdown: answer what is in flight, then unbind the app and close."""
        connection = self.connection
        if connection is None or connection.closed:
            return succeed(None)
        if self.state not in BOUND:
            connection.close()
            return succeed(None)
        # Still a receiver while its submits drain: a receipt arriving meanwhile reaches the
        # app. Once our unbind is out the app may take no more (3.4 section 2.3).
        self._receives_while_unbinding = self.receives
        self.state = State.UNBINDING

        def unbind(_: object) -> Deferred[None]:
            self._receives_while_unbinding = False
            self.registry.unbound(self)
            return connection.unbind()

        return self._when_drained().addCallback(unbind)


class DownstreamFactory(Factory):
    """Builds one `SmppConnection` + `DownstreamSession` per accepted app connection."""

    noisy = False

    def __init__(
        self,
        make_session: Callable[[], DownstreamSession],
        make_connection: Callable[[DownstreamSession], SmppConnection],
    ) -> None:
        self._make_session = make_session
        self._make_connection = make_connection

    @override
    def buildProtocol(self, addr: IAddress | None) -> SmppConnection:
        return self._make_connection(self._make_session())


class SessionRegistry(Registry[DownstreamSession]):
    """The registry of the relay's app sessions (see `smpprelay.registry.Registry`)."""
