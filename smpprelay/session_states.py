"""The app session's states (SMPP 3.4 section 2.3) and which requests each one takes.

Apart from `smpprelay.downstream` so the state machine's tables read as one table; nothing here
does anything.
"""

from enum import Enum

from smpprelay.pdu import CommandId


class State(Enum):
    """SMPP session states (3.4 section 2.3), plus UNBINDING while in-flight submits drain."""

    OPEN = "open"
    BINDING = "binding"
    BOUND_TX = "transmitter"
    BOUND_RX = "receiver"
    BOUND_TRX = "transceiver"
    UNBINDING = "unbinding"
    CLOSED = "closed"

    # Members are singletons compared by identity, so identity hashing is enough; Enum's own
    # __hash__ is Python code, and the session tests its state against these sets per request.
    __hash__ = object.__hash__


BOUND = frozenset({State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX})
UNBOUND = frozenset({State.OPEN, State.BINDING})
NONE: frozenset[State] = frozenset()
TRANSMITTING = frozenset({State.BOUND_TX, State.BOUND_TRX})
STATE_OF_KIND = {
    "transmitter": State.BOUND_TX,
    "receiver": State.BOUND_RX,
    "transceiver": State.BOUND_TRX,
}
# Requests an app may send that the relay answers but does not carry (3.4 table 2-1).
ANSWERED_WITH_RESP = frozenset(
    {
        CommandId.submit_sm,
        CommandId.query_sm,
        CommandId.replace_sm,
        CommandId.cancel_sm,
        CommandId.submit_multi,
        CommandId.data_sm,
        CommandId.deliver_sm,
        CommandId.unbind,
    }
)

# The other operations an app may send, and the states they are valid in (3.4 table 2-1): the
# session hands them to `smpprelay.operations`. Out of their states they get ESME_RINVBNDSTS
# like any other request.
OPERATIONS: dict[int, frozenset[State]] = {
    CommandId.query_sm: TRANSMITTING,
    CommandId.replace_sm: TRANSMITTING,
    CommandId.cancel_sm: TRANSMITTING,
    CommandId.submit_multi: TRANSMITTING,
    CommandId.data_sm: BOUND,
}
