"""The deliver_sm side of an app session: whether it takes deliveries now, and which app
stopped answering them.

A receiver whose deliver_sm went unanswered for ``limits.response`` is *deaf*: it takes no fresh
delivery (the operator would wait on it, and the operator's window to us would fill) until it
answers one again; the router may hand it one held delivery at a time to find out.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.connection import ResponseTimeout, SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.session_states import State


class Receiving:
    """The `smpprelay.router.Receiver` side of `smpprelay.downstream.DownstreamSession`."""

    log = Logger()
    account: str
    host: str
    state: State
    window: int
    metrics: Metrics
    connection: SmppConnection | None
    # A receiving session the relay is unbinding (it stops) keeps taking deliveries until
    # its unbind goes out: receipts arriving during the drain still reach the app.
    _receives_while_unbinding: bool
    # A deliver_sm to this app went unanswered: no fresh delivery until it answers one.
    deaf: bool

    def _receiver_ready(self) -> None:
        """It can take deliveries again (the subclass tells the registry)."""
        raise NotImplementedError

    @property
    def receives(self) -> bool:
        """True for receiver and transceiver binds (also while the relay unbinds them, until
        the unbind is sent)."""
        if self.state is State.UNBINDING:
            return self._receives_while_unbinding
        return self.state in (State.BOUND_RX, State.BOUND_TRX)

    @property
    def _open_to_deliver(self) -> bool:
        # Bound to receive, and the app reading what we write (a paused connection takes
        # nothing more).
        connection = self.connection
        return (
            self.receives
            and connection is not None
            and not connection.closed
            and not connection.paused
        )

    @property
    def unanswered(self) -> int:
        """deliver_sm (and other requests) sent to the app and not answered yet."""
        return 0 if self.connection is None else self.connection.in_flight

    @property
    def can_deliver(self) -> bool:
        """True when a deliver_sm may be sent now: open to deliveries, window not full, and
        not deaf."""
        return self._open_to_deliver and not self.deaf and self.unanswered < self.window

    @property
    def can_probe(self) -> bool:
        """True when this deaf session may be sent one held delivery to learn whether it
        answers again (nothing else in flight to it)."""
        return self._open_to_deliver and self.deaf and self.unanswered == 0

    def deliver(self, frame: bytes) -> Deferred[bytes]:
        """Send a deliver_sm; fires with the app's deliver_sm_resp."""
        assert self.connection is not None

        def answered(resp: bytes) -> bytes:
            if self.deaf:
                self.deaf = False
                self.log.info("{account} from {peer} answers deliver_sm again", **self._who())
                self._receiver_ready()
            return resp

        def unanswered(reason: Failure) -> Failure:
            if reason.check(ResponseTimeout) and not self.deaf:
                self.deaf = True
                self.log.warn(
                    "{account} from {peer} left a deliver_sm unanswered; no more deliveries "
                    "to it until it answers",
                    **self._who(),
                )
                self.metrics.session_timeouts.labels("downstream", "deliver_sm").inc()
            return reason

        return self.connection.send_request(frame).addCallbacks(answered, unanswered)

    def _who(self) -> dict[str, str]:
        peer = self.connection.peer if self.connection is not None else self.host
        return {"account": self.account, "peer": peer}
