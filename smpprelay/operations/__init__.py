"""The operations an app may send besides submit_sm: query_sm, cancel_sm, replace_sm,
submit_multi and data_sm (issue 13).

`Operations.handle` is what an app session calls for each (`smpprelay.downstream.Operator`):
it answers with the response PDU (its sequence number is the session's to set) and never
fails. Each operation lives in a module of its own:

- `queries` — query_sm, cancel_sm, replace_sm: the app's id mapped to the operator's (only
  the account that sent the message may name it), or answered by the relay for a part it holds;
- `multi` — submit_multi: one submit_sm per address through the rules, one answer;
- `data` — data_sm from an app, carried like submit_sm.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from smpprelay import pdu
from smpprelay.metrics import Metrics
from smpprelay.operations.data import DataSmOperation
from smpprelay.operations.multi import SubmitMultiOperation
from smpprelay.operations.queries import Queries
from smpprelay.pdu import CommandId, Status
from smpprelay.relay import Relay
from smpprelay.router import Router

# (account, the app's request, ISO) -> its response
Handler = Callable[[str, bytes, bool], Deferred[bytes]]


def not_carried(account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
    """An operation this relay does not carry: generic_nack ESME_RINVCMDID."""
    return succeed(pdu.generic_nack(0, Status.ESME_RINVCMDID))


class Operations:
    """Dispatches an app's operation to its module; the modules reach the relay's parts here."""

    def __init__(self, relay: Relay, router: Router, metrics: Metrics, clock: IReactorTime) -> None:
        self.relay = relay  # its pool, store and rules too: relay.pool, relay.store, relay.chain
        self.router = router
        self.metrics = metrics
        self.clock = clock
        queries = Queries(relay, router, clock)
        # One line per operation: each module puts its own handler here.
        self.handlers: dict[int, Handler] = {
            CommandId.query_sm: queries.query,
            CommandId.cancel_sm: queries.cancel,
            CommandId.replace_sm: queries.replace,
            CommandId.submit_multi: SubmitMultiOperation(relay).handle,
            CommandId.data_sm: DataSmOperation(relay).handle,
        }

    def handle(self, command_id: int, account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
        """The response to ``frame`` (never fails)."""
        handler = self.handlers.get(command_id, not_carried)
        return handler(account, frame, app_iso)
