"""The one SMPP connection both sides use.

It frames the stream, numbers and times the requests it sends, answers ``enquire_link`` itself,
keeps its own link alive, and hands every other inbound request to an injected handler.
It is never subclassed per side: downstream and upstream differ only in their handler.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from smpprelay import pdu
from smpprelay.liveness import Liveness
from smpprelay.metrics import Metrics, Side
from smpprelay.pdu import CommandId, FramingError, Status
from smpprelay.wire import CORK, Outcome, ResponseTimeout, firing

# Where the layers above have always found them (`smpprelay.wire` holds them).
__all__ = ["LATE_MAX", "LATE_MEMORY", "Outcome", "ResponseTimeout", "SmppConnection", "firing"]

_CONNECTION_LOST = Failure(ConnectionLost())
_MAX_SEQUENCE = pdu.MAX_SEQUENCE
_pack_u32 = struct.Struct(">I").pack
_unpack_header = pdu.HEADER.unpack_from
_RESPONSE_BIT = pdu.RESPONSE_BIT
_ENQUIRE_LINK = int(CommandId.enquire_link)  # an IntEnum member's lookup costs more, per PDU


# How long, in response timeouts, a request that timed out is remembered so that its late
# answer still reaches whoever sent it, and at most how many are remembered per connection.
LATE_MEMORY = 10
LATE_MAX = 10_000


class RequestHandler(TypingProtocol):
    """What a connection calls for the events it does not handle itself."""

    def connection_made(self, connection: SmppConnection) -> None: ...

    def request_received(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None: ...

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None: ...


@implementer(IPushProducer, IHandshakeListener)
class SmppConnection(Liveness, Protocol):
    """An SMPP session over one transport.

    ``send_request_cb`` calls its `Outcome` with the response frame (a ``generic_nack``
    answering the same sequence number counts as the response) or with the failure of
    `ResponseTimeout` or the connection's loss; ``send_request`` is the same as a Deferred.
    Every request sent gets exactly one outcome. (The submit path takes the callback form: a
    Deferred per submit costs more than the rest of the hop's bookkeeping.)

    Keepalive and inactivity are `smpprelay.liveness.Liveness`'s.

    The connection is the producer of its own transport's writes: when the peer stops reading
    and the write buffer fills, the transport pauses it, and it stops reading the peer's
    requests (whose answers would only pile up) and reports `paused` so nothing else is sent
    to it; ``when_resumed`` is called once the buffer has drained.
    """

    log = Logger()

    def __init__(
        self,
        handler: RequestHandler,
        clock: IReactorTime,
        metrics: Metrics,
        *,
        side: Side,
        max_pdu: int,
        response_timeout: float,
        pdu_read: float | None = None,
    ) -> None:
        self.handler = handler
        self.clock = clock
        self.metrics = metrics
        self.side = side
        self._pdus_in = metrics.pdu_table(side, "in")  # counted in place per PDU
        self._pdus_out = metrics.pdu_table(side, "out")
        self.response_timeout = response_timeout
        self.enquire_link_interval: float | None = None
        self.peer = "?"
        self.closed = False
        self._framer = pdu.Framer(max_pdu)
        # Insertion order is deadline order (one timeout for every request), so expiring
        # requests only ever looks at the front of this dict and one timer suffices.
        self._pending: dict[int, tuple[float, Outcome]] = {}
        self._timer: IDelayedCall | None = None
        # Requests that timed out, by sequence: (until when, their ResponseTimeout), in order
        # of expiry; trimmed when one is added, so no timer is needed.
        self._late: dict[int, tuple[float, ResponseTimeout]] = {}
        self._keepalive: IDelayedCall | None = None
        self._last_sequence = 0
        # A PDU must be whole within pdu_read seconds of its first byte (absolute, so a peer
        # trickling one byte at a time cannot stretch it).
        self.pdu_read = pdu_read
        self._pdu_deadline: float | None = None
        self._read_timer: IDelayedCall | None = None
        # Inactivity: when nothing is read for `_inactivity` seconds, `_on_idle` is called.
        self._inactivity: float | None = None
        self._on_idle: Callable[[], None] | None = None
        self._idle_timer: IDelayedCall | None = None
        self._last_read = 0.0
        self.paused = False
        self._paused_at = 0.0
        self._producing = False
        self.when_resumed: Callable[[], None] | None = None
        self._held: list[bytes] = []  # written while a read is handled (`smpprelay.wire.Cork`)

    # --- Twisted hooks ------------------------------------------------------------------

    @override
    def connectionMade(self) -> None:
        address = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        # TLS holds what is written before its handshake ends and pauses the producer
        # meanwhile: pausing our reads then would stall the handshake itself. Over TLS the
        # connection becomes the producer once the handshake is done (handshakeCompleted).
        if not ISSLTransport.providedBy(self.transport):
            self._produce()
        self.handler.connection_made(self)

    def handshakeCompleted(self) -> None:
        """TLS only: the handshake is done; from now on back-pressure works as over TCP."""
        if not self.closed:
            self._produce()

    def _produce(self) -> None:
        self._producing = True
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return  # after a framing error or a close nothing more is read, let alone buffered
        cork = CORK
        cork.depth += 1
        try:
            self._read(data)
        finally:
            cork.depth -= 1
            if not cork.depth and cork.dirty:
                cork.flush()

    def _read(self, data: bytes) -> None:
        if self._inactivity is not None:
            self._last_read = self.clock.seconds()
        framer = self._framer
        try:
            frames = framer.feed(data)
        except FramingError as error:
            for frame in error.frames:
                if not self.closed:
                    self._dispatch(frame)
            self._framing_error(error.reason, str(error), error.sequence)
            return
        if self.pdu_read is not None:
            if not framer.buffered:
                self._pdu_deadline = None
            elif frames or self._pdu_deadline is None:
                # The bytes held back start a new PDU: its clock starts now.
                self._pdu_deadline = self.clock.seconds() + self.pdu_read
                if self._read_timer is None:
                    self._read_timer = self.clock.callLater(self.pdu_read, self._read_expired)
        for frame in frames:
            if self.closed:
                return
            self._dispatch(frame)

    def _framing_error(self, reason: str, detail: str, sequence: int) -> None:
        self.log.warn(
            "{side} {peer}: framing error ({error}); closing",
            side=self.side,
            peer=self.peer,
            error=detail,
        )
        self.metrics.framing_errors.labels(self.side, reason).inc()
        self.send(pdu.generic_nack(sequence, Status.ESME_RINVCMDLEN))
        self.close()

    def _read_expired(self) -> None:
        self._read_timer = None
        deadline = self._pdu_deadline
        if self.closed or deadline is None or self.paused:
            return  # paused: we stopped reading, not the peer; resumeProducing re-arms it
        now = self.clock.seconds()
        if deadline > now:
            self._read_timer = self.clock.callLater(deadline - now, self._read_expired)
            return
        self._framing_error(
            "read_timeout",
            f"PDU not whole {self.pdu_read} s after its first byte",
            self._framer.pending_sequence(),
        )

    # --- IPushProducer: the transport's write buffer is full, or has drained ------------------

    def pauseProducing(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self._paused_at = self.clock.seconds()
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            # While paused we read nothing, so the peer's PDU could not arrive whole and its
            # requests sat unread: neither clock may count that time against the peer.
            now = self.clock.seconds()
            if self._pdu_deadline is not None:
                self._pdu_deadline += now - self._paused_at
                if self._read_timer is None:
                    delay = self._pdu_deadline - now
                    self._read_timer = self.clock.callLater(delay, self._read_expired)
            if self._inactivity is not None:
                self._last_read = max(self._last_read, now)
                if self._idle_timer is None:
                    self._idle_timer = self.clock.callLater(self._inactivity, self._idle_check)
            self.transport.resumeProducing()  # type: ignore[union-attr]
            if self.when_resumed is not None:
                self.when_resumed()

    def stopProducing(self) -> None:
        self.paused = False

    @override
    def connectionLost(self, reason: Failure = _CONNECTION_LOST) -> None:
        self.closed = True
        for call in (self._timer, self._keepalive, self._read_timer, self._idle_timer):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._keepalive = self._read_timer = self._idle_timer = None
        self._late.clear()  # the peer cannot answer them on another connection
        pending, self._pending = self._pending, {}
        for _, outcome in pending.values():
            self._tell(outcome, reason)
        self.handler.connection_lost(self, reason)

    # --- sending ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    def send(self, frame: bytes) -> None:
        """Write a PDU as it is (responses, or requests whose answer nobody waits for)."""
        if not self.closed:
            counts = self._pdus_out
            key = frame[4:8]
            n = counts.get(key)
            if n is None:
                self.metrics.count_pdu(self.side, "out", frame)
            else:
                counts[key] = n + 1
            if CORK.depth:  # held while a read is handled (`smpprelay.wire.Cork`)
                held = self._held
                if not held:
                    CORK.dirty.append(self)
                held.append(frame)
            else:
                self.transport.write(frame)  # type: ignore[union-attr]

    def send_request(self, frame: bytes) -> Deferred[bytes]:
        """Send a request under a fresh sequence number; the Deferred fires with the answer."""
        deferred: Deferred[bytes] = Deferred()
        self.send_request_cb(frame, firing(deferred))
        return deferred

    def send_request_cb(self, frame: bytes, outcome: Outcome) -> None:
        """Send a request under a fresh sequence number; ``outcome`` gets the answer (or the
        failure standing for it), exactly once, and never before this returns unless the
        connection is closed already."""
        if self.closed:
            outcome(Failure(ConnectionLost("connection closed")))
            return
        pending = self._pending
        late = self._late
        # `_next_sequence` and `with_sequence` inline for the common case (the next number is
        # free): this runs once per relayed submit.
        sequence = self._last_sequence + 1
        if sequence > _MAX_SEQUENCE or sequence in pending or (late and sequence in late):
            sequence = self._next_sequence()
        else:
            self._last_sequence = sequence
        pending[sequence] = (self.clock.seconds() + self.response_timeout, outcome)
        if self._timer is None:
            self._timer = self.clock.callLater(self.response_timeout, self._expire)
        self.send(frame[:12] + _pack_u32(sequence) + frame[16:])

    def flush(self) -> None:
        """Hand the transport what was held back while a read was handled."""
        held = self._held
        if held:
            self._held = []
            if len(held) == 1:
                self.transport.write(held[0])  # type: ignore[union-attr]
            else:
                self.transport.writeSequence(held)  # type: ignore[union-attr]

    def respond(self, command_id: int, sequence: int, status: int, body: bytes = b"") -> None:
        """Answer a request."""
        self.send(pdu.response(command_id, sequence, status, body))

    def unbind(self) -> Deferred[None]:
        """Send unbind, wait for its answer (or the response timer), then close."""
        finished: Deferred[None] = Deferred()

        def close(_: object) -> None:
            self.close()
            finished.callback(None)

        self.send_request(pdu.build(CommandId.unbind, 0)).addBoth(close)
        return finished

    def drain(self) -> Deferred[None]:
        """Stop sending requests of our own and fire once every request in flight has its
        outcome (the peer's answer, the response timer, or the connection's loss).

        For a peer that unbound us: reading goes on meanwhile, so the answers it still sends
        reach their callers instead of being thrown away (the callers would retry a message
        the peer accepted). Nothing new is sent, so the requests in flight now are all there
        is to wait for, and the response timer bounds the wait.
        """
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        self.enquire_link_interval = None  # an enquire_link answered now does not re-arm
        done: Deferred[None] = Deferred()
        pending = self._pending
        left = len(pending)
        if not left:
            done.callback(None)
            return done

        def counted(outcome: Outcome) -> Outcome:
            # The caller hears its outcome first, then the drain counts it.
            def tell(result: bytes | Failure) -> None:
                nonlocal left
                try:
                    outcome(result)
                finally:
                    left -= 1
                    if not left:
                        done.callback(None)

            return tell

        # Replacing a key's value keeps its place: the deadline order stays.
        for sequence, (deadline, outcome) in list(pending.items()):
            pending[sequence] = (deadline, counted(outcome))
        return done

    def close(self) -> None:
        """Close after what was written has been sent."""
        if not self.closed:
            self.flush()  # what was written before the close goes before it
            self.closed = True
            # A registered producer would keep the connection open (Twisted waits for it).
            if self._producing:
                self._producing = False
                self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection now: the peer is gone or the stream is lost."""
        self.closed = True
        self._held = []  # an abort throws away what is unsent anyway
        self.transport.abortConnection()  # type: ignore[union-attr]

    # --- internals ----------------------------------------------------------------------

    def _next_sequence(self) -> int:
        sequence = self._last_sequence
        late = self._late
        while True:
            sequence = sequence + 1 if sequence < pdu.MAX_SEQUENCE else 1
            # A sequence whose late answer may still come is not reused.
            if sequence not in self._pending and (not late or sequence not in late):
                self._last_sequence = sequence
                return sequence

    def _dispatch(self, frame: bytes) -> None:
        _, command_id, _, sequence = _unpack_header(frame, 0)
        counts = self._pdus_in  # `Metrics.pdu_table`
        key = frame[4:8]
        n = counts.get(key)
        if n is None:
            self.metrics.count_pdu(self.side, "in", frame)
        else:
            counts[key] = n + 1
        if command_id & _RESPONSE_BIT:
            entry = self._pending.pop(sequence, None)
            if entry is not None:
                try:  # `_tell`, inline: this is every answer's path
                    entry[1](frame)
                except Exception:
                    self._outcome_failed()
            elif self._late and sequence in self._late:
                self._late_answer(sequence, frame)
            else:
                self._unexpected(command_id, sequence)
            return
        if command_id == _ENQUIRE_LINK:
            self.respond(CommandId.enquire_link, sequence, Status.ESME_ROK)
            return
        try:
            self.handler.request_received(self, command_id, sequence, frame)
        except Exception:
            # A bug must cost one answer, not the session: every request gets one reply.
            self.log.failure(
                "{side} {peer}: handling {command} failed",
                side=self.side,
                peer=self.peer,
                command=pdu.command_name(command_id),
            )
            self.send(pdu.generic_nack(sequence, Status.ESME_RSYSERR))

    def _tell(self, outcome: Outcome, result: bytes | Failure) -> None:
        """Give a request its outcome; a bug in whoever waits costs that request, not the
        session (a Deferred would have caught it the same way)."""
        try:
            outcome(result)
        except Exception:
            self._outcome_failed()

    def _outcome_failed(self) -> None:
        self.log.failure(
            "{side} {peer}: handling the outcome of a request failed",
            side=self.side,
            peer=self.peer,
        )

    def _unexpected(self, command_id: int, sequence: int) -> None:
        # Never answer a response or a generic_nack: that is how nack loops start.
        name = pdu.command_name(command_id)
        self.log.info(
            "{side} {peer}: dropped {command} seq {sequence} that answers nothing in flight",
            side=self.side,
            peer=self.peer,
            command=name,
            sequence=sequence,
        )
        self.metrics.unexpected_pdus.labels(self.side, pdu.command_label(command_id)).inc()

    def _late_answer(self, sequence: int, frame: bytes) -> None:
        """A response to a request that timed out: to whoever asked for it, and counted."""
        _, error = self._late.pop(sequence)
        status = pdu.header(frame)[2]
        self.metrics.late_answers.labels(self.side, self.metrics.status_label(status)).inc()
        self.log.info(
            "{side} {peer}: late answer {status} to seq {sequence}, after its response timeout",
            side=self.side,
            peer=self.peer,
            status=pdu.status_name(status),
            sequence=sequence,
        )
        if error.late is not None:
            error.late(frame)

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        late = self._late
        while self._pending:
            sequence, (deadline, outcome) = next(iter(self._pending.items()))
            if deadline > now:
                self._timer = self.clock.callLater(deadline - now, self._expire)
                break
            del self._pending[sequence]
            error = ResponseTimeout(f"no answer within {self.response_timeout} s")
            late[sequence] = (now + LATE_MEMORY * self.response_timeout, error)
            self._tell(outcome, Failure(error))
        # Forget what can no longer be answered, or the oldest past LATE_MAX.
        while late:
            sequence, (until, _) = next(iter(late.items()))
            if until > now and len(late) <= LATE_MAX:
                break
            del late[sequence]
