"""submit_multi: one submit_sm per SME address, each through every rule, and one answer.

Each address is its own message for the rules (two numbers are two flood entries, a number
listed twice is a duplicate), for the store and for the operator, which never sees the
submit_multi (it does not implement it): `Relay.submit` carries each one exactly as it carries
an app's submit_sm. The app gets one ``submit_multi_resp``: the relay's id, which every
address's receipt is rewritten to, and ``unsuccess_sme`` with each address the rules, the store
or the operator refused, under the status a submit_sm to it alone would have been answered.

- A distribution list (``dest_flag`` 2) is one of those: the relay keeps no lists, so its name
  is unknown, ``ESME_RINVDLNAME``; the addresses beside it still go.
- ``number_of_dests`` 0 or above 254 refuses the whole PDU, ``ESME_RINVNUMDESTS``; so does a
  ``dest_flag`` neither 1 nor 2 (``ESME_RINVDESTFLAG``: nothing after it can be read).
- When every address failed nothing was sent, and the status says so: the one status they all
  share (``ESME_RTHROTTLED`` or ``ESME_RMSGQFUL``: the app retries the whole), else
  ``ESME_RSUBMITFAIL`` (3.4 table 5-2: "submit_sm or submit_multi failed"). The body still
  lists each address, with no message id (there is no message to name).
- A concatenated submit_multi works part by part: each address's part is held or glued by the
  concat rule as a submit_sm's part would be, and answered with the multi's id.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.pdu import DEST_LIST, CommandId, DecodeError, Status, SubmitMulti, Unsuccess
from smpprelay.relay import Relay


def _status(resp: bytes) -> int:
    return pdu.header(resp)[2]


class SubmitMultiOperation:
    """Fans a submit_multi out to `Relay.submit`, one submit_sm per address."""

    log = Logger()

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def handle(self, account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
        """The submit_multi_resp for ``frame`` (never fails)."""
        try:
            multi = pdu.read_submit_multi(frame)
        except DecodeError as error:
            self.log.info(
                "{account}: submit_multi refused ({error}), answered {status}",
                account=account,
                error=str(error),
                status=pdu.status_name(error.status),
            )
            return succeed(pdu.response(CommandId.submit_multi, 0, error.status))
        multi_id = self.relay.ids.issue()
        outcomes: list[Deferred[int]] = []
        for destination in multi.destinations:
            if destination.flag == DEST_LIST:
                outcomes.append(succeed(int(Status.ESME_RINVDLNAME)))
                continue
            # Sent at once, each in turn through the rules: the pool queues past its window.
            sent = self.relay.submit(
                account, multi.submit_sm(destination), app_iso, app_id=multi_id
            )
            outcomes.append(sent.addCallbacks(_status, self._failed, errbackArgs=(account,)))
        return gatherResults(outcomes).addCallback(_answer, multi, multi_id)

    def _failed(self, reason: Failure, account: str) -> int:
        # Relay.submit never fails; if a bug makes it, this address is refused, not the rest.
        self.log.failure("{account}: an address of a submit_multi failed", reason, account=account)
        return int(Status.ESME_RSYSERR)


def _answer(statuses: list[int], multi: SubmitMulti, multi_id: bytes) -> bytes:
    unsuccess = [
        Unsuccess(destination.ton, destination.npi, destination.address, status)
        for destination, status in zip(multi.destinations, statuses, strict=True)
        if status != Status.ESME_ROK
    ]
    if len(unsuccess) < len(statuses):
        return pdu.submit_multi_resp(0, Status.ESME_ROK, multi_id, unsuccess)
    shared = set(statuses)
    status = shared.pop() if len(shared) == 1 else Status.ESME_RSUBMITFAIL
    return pdu.submit_multi_resp(0, status, b"", unsuccess)
