"""The use case: an app's submit_sm goes to the operator and the operator's answer comes back.

The app's bytes travel upstream unchanged but for the sequence number; the operator's
``submit_sm_resp`` travels back the same way, its ``command_status`` and ``message_id`` as
the operator sent them. Every submit gets exactly one answer: the operator's, or one the
relay makes when the operator cannot be reached or does not answer in time.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.connection import ResponseTimeout
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, DecodeError, Status
from smpprelay.router import Router
from smpprelay.upstream import QueueFull, UpstreamPool

# registered_delivery bits asking for something that comes back as a deliver_sm about this
# message: an SMSC receipt (bits 1-0), SME acknowledgements (bits 3-2), intermediate (bit 4).
_WANTS_RECEIPT = 0x1F


class Relay:
    """Carries submits upstream and routes what comes back."""

    log = Logger()

    def __init__(self, pool: UpstreamPool, router: Router, metrics: Metrics) -> None:
        self.pool = pool
        self.router = router
        self.metrics = metrics

    def submit(self, account: str, frame: bytes) -> Deferred[bytes]:
        """Relay one submit_sm; fires with the submit_sm_resp to give the app (never fails)."""
        try:
            message = pdu.read_short_message(frame)
        except DecodeError as error:
            self.log.info(
                "{account}: submit_sm unreadable ({error}), answered {status}",
                account=account,
                error=str(error),
                status=pdu.status_name(error.status),
            )
            return succeed(pdu.submit_sm_resp(0, error.status))
        wants_receipt = bool(message.registered_delivery & _WANTS_RECEIPT)

        def answered(resp: bytes) -> bytes:
            _, command_id, status, _ = pdu.header(resp)
            self.metrics.count_upstream_submit(status)
            if command_id != CommandId.submit_sm_resp:
                # A generic_nack answers for the submit: the app gets its status.
                return pdu.submit_sm_resp(0, status)
            if status == Status.ESME_ROK and wants_receipt:
                # Written before the app hears ESME_ROK, so its receipt always has a route.
                self.router.remember(pdu.message_id_of(resp), account)
            return resp

        def failed(reason: Failure) -> bytes:
            if reason.check(QueueFull):
                status = Status.ESME_RMSGQFUL
            else:
                status = Status.ESME_RSYSERR
                if not reason.check(ResponseTimeout):
                    self.log.info("submit lost upstream: {why}", why=reason.getErrorMessage())
            self.log.info(
                "{account}: submit answered {status} ({why})",
                account=account,
                status=pdu.status_name(status),
                why=reason.getErrorMessage(),
            )
            return pdu.submit_sm_resp(0, status)

        return self.pool.submit(frame).addCallbacks(answered, failed)
