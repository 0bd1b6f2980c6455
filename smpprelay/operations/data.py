"""data_sm from an app: carried as a submit_sm is (`Relay.submit`), answered with data_sm_resp.

The rules read it as they read a submit_sm (`smpprelay.message.read_message`: its text is its
``message_payload``, its parts are named by UDH or the sar_* TLVs); the app's own bytes go to
the operator (new sequence number; transcoded by the encoding rule if they must be, still a
data_sm), and the operator's ``data_sm_resp`` comes back as it was sent, its TLVs included. The
route for its receipt is written before the app hears ESME_ROK, as for a submit_sm. An answer
the relay makes itself (a rule's refusal, a held part, the operator unreachable) is made a
``data_sm_resp`` with the same status and id.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from smpprelay import pdu
from smpprelay.pdu import CommandId, Status
from smpprelay.relay import Relay


def as_data_sm_resp(resp: bytes) -> bytes:
    """The answer to a data_sm: the operator's data_sm_resp as it is, or the relay's
    submit_sm_resp (or the operator's generic_nack) as a data_sm_resp."""
    _, command_id, status, _ = pdu.header(resp)
    if command_id == CommandId.data_sm_resp:
        return resp
    message_id = pdu.message_id_of(resp) if status == Status.ESME_ROK else b""
    return pdu.data_sm_resp(0, status, message_id)


class DataSmOperation:
    """Carries an app's data_sm through the rules to the operator."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def handle(self, account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
        """The data_sm_resp for ``frame`` (never fails)."""
        return self.relay.submit(account, frame, app_iso).addCallback(as_data_sm_resp)
