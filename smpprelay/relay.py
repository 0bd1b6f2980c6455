"""The use case: an app's submit_sm passes the operator's rules, goes to the operator, and the
operator's answer comes back.

The app's bytes travel upstream unchanged but for the sequence number (and, when the encoding
rule must transcode, the text and its data_coding); the operator's ``submit_sm_resp`` travels
back the same way, its ``command_status`` and ``message_id`` as the operator sent them. Every
submit gets exactly one answer: the operator's, a rule's, or one the relay makes when the
operator cannot be reached or does not answer in time.

Concatenated parts are the exception to "the operator's answer" (design.md, acknowledgement
contract): earlier parts are held and answered ``ESME_ROK`` at once with relay-issued ids;
the part that completes the message carries the verdict of the whole, whose parts then go to
the operator back to back on one session. Their receipts are rewritten to the app's ids. A
held part that never reaches the operator (its message refused, incomplete after its window,
or still open when the relay stops with the memory store) gets a receipt saying so, if it asked
for one.

What an ``ESME_ROK`` promises is in the store before it is sent: a submit's receipt route
(`Router.remember`) and a held part (`Store.hold_part`). While the store cannot write, submits
are answered ``ESME_RMSGQFUL`` (apps retry it) without reaching the rules or the operator. The
rules' windows are written behind, about once a second (`sweep`), and put back at start with
the held parts (`restore`).
"""

from __future__ import annotations

import functools
from typing import TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.connection import Outcome, ResponseTimeout, firing
from smpprelay.message import Message, Verdict, read_submit
from smpprelay.metrics import Metrics
from smpprelay.pdu import DecodeError, Status
from smpprelay.relay_upkeep import Chain, RelayUpkeep
from smpprelay.relaying import (
    ACCEPTING,
    RETRYABLE,
    MessageIds,
    Upstream,
    held_parts,
    status_of,
)
from smpprelay.router import Router
from smpprelay.routing import carrier
from smpprelay.shared.chain import SharedChain
from smpprelay.store import HeldPart, Store, StoreUnavailable
from smpprelay.wire import TELL_FAILED, tell, tell_log

T = TypeVar("T")

_unpack_header = pdu.HEADER.unpack_from


class Relay(RelayUpkeep):
    """Carries submits through the rules to the operator and answers the app."""

    log = Logger()

    def __init__(
        self,
        pool: Upstream,
        router: Router,
        metrics: Metrics,
        clock: IReactorTime | None = None,
        chain: Chain | None = None,
        max_tlvs: int = pdu.DEFAULT_MAX_TLVS,
        store: Store | None = None,
    ) -> None:
        self.pool = pool
        self.store = store if store is not None else router.store
        self.max_tlvs = max_tlvs  # limits.max_tlvs
        self.router = router
        self.metrics = metrics
        self.clock = clock if clock is not None else router.clock
        # The shared chain (scale-out on Redis) decides by Deferred; it may run no local rule.
        self.shared = chain if isinstance(chain, SharedChain) else None
        self.chain = chain if self.shared is not None or (chain and chain.filters) else None
        self._unchecked = 0  # submits the shared rules could not decide, this outage
        self.ids = MessageIds()
        self._pending_windows = b""  # packed (smpprelay.store.window_segments)

    def submit(
        self, account: str, frame: bytes, app_iso: bool = False, *, app_id: bytes = b""
    ) -> Deferred[bytes]:
        """Relay one submit_sm; fires with the submit_sm_resp to give the app (never fails).

        The Deferred form of `submit_cb`, for the rare paths (operations) and tests.
        """
        deferred: Deferred[bytes] = Deferred()
        self.submit_cb(account, frame, app_iso, firing(deferred), app_id=app_id)
        return deferred

    def submit_cb(
        self, account: str, frame: bytes, app_iso: bool, outcome: Outcome, *, app_id: bytes = b""
    ) -> None:
        """Relay one submit_sm; ``outcome`` gets the submit_sm_resp to give the app, once.

        The hot path: a single submit makes no Deferred on its way (but for the store's route
        write). ``outcome`` gets a failure only through a bug (the app is answered all the same).

        The answer's sequence number is the caller's to set. A data_sm goes the same way: the
        operator's data_sm_resp is passed back, the relay's own answers are submit_sm_resp
        (`smpprelay.operations.data` makes them data_sm_resp). ``app_id``: the id the app was
        given for this message instead of the operator's (a submit_multi's, for each address):
        its receipts are rewritten to it.
        """
        try:
            message = read_submit(account, frame, app_iso, self.max_tlvs)
            message.receipt_as = app_id
        except DecodeError as error:
            self.log.info(
                "{account}: submit_sm unreadable ({error}), answered {status}",
                account=account,
                error=str(error),
                status=pdu.status_name(error.status),
            )
            outcome(pdu.submit_sm_resp(0, error.status))
            return
        if not self.store.writable:
            # Its ESME_ROK would promise what the store cannot keep; the store logs the
            # outage once, the answer is counted with the other submits.
            outcome(pdu.submit_sm_resp(0, Status.ESME_RMSGQFUL))
            return
        chain = self.chain
        if chain is None:  # `_send_one`, inline
            self.pool.submit_cb(message.frame, account, _Submit(self, message, None, outcome))
            return
        if message.concat is not None and chain.holds_parts:
            # Issued before any rule sees the part (nothing holds it yet): a held part is
            # answered with this id, and its receipts are rewritten to it.
            message.app_message_id = self.ids.issue()
        if isinstance(chain, SharedChain):
            self._check_shared(message, chain).addBoth(outcome)
            return
        self._dispatch(message, chain.check(message, self.clock.seconds()), chain, outcome)

    def _dispatch(self, message: Message, verdict: Verdict, chain: Chain, outcome: Outcome) -> None:
        """Act on the rules' verdict (the same for the in-process and the shared chain)."""
        if verdict.message is not None:
            message = verdict.message  # transcoded or glued by a rule
        action = verdict.action
        if action == "accept":
            if message.parts:
                self._send_glued(message, chain).addBoth(outcome)
            else:
                self._send_one(message, chain, outcome)
            return
        if action == "hold":
            self._hold_part(message, chain).addBoth(outcome)
            return
        if action == "replay":
            outcome(pdu.submit_sm_resp(0, Status.ESME_ROK, verdict.message_id))
            return
        if message.parts:
            # A whole message refused: its held parts were answered OK, so their receipts say so.
            self._receipts(held_parts(message), "REJECTD")
        outcome(pdu.submit_sm_resp(0, verdict.status))

    def _check_shared(self, message: Message, shared: SharedChain) -> Deferred[bytes]:
        """The rules decided in Redis, for every instance at once (`smpprelay.shared`)."""

        def decided(verdict: Verdict) -> bytes | Deferred[bytes]:
            if self._unchecked and shared.answering:
                self._unchecked = 0
                self.log.info("the shared rules answer again")
            if verdict.action == "hold":
                # The part is in Redis already (as durable as what it holds): answered now.
                return pdu.submit_sm_resp(0, Status.ESME_ROK, message.app_message_id)
            dispatched: Deferred[bytes] = Deferred()
            self._dispatch(message, verdict, shared, firing(dispatched))
            return dispatched

        def unchecked(reason: Failure) -> bytes:
            # Never accepted unchecked: the app retries ESME_RMSGQFUL. Logged once an outage.
            shared.count_unchecked()
            if not self._unchecked:
                self.log.warn(
                    "the shared rules cannot decide ({why}): submits answered ESME_RMSGQFUL",
                    why=reason.getErrorMessage(),
                )
            self._unchecked += 1
            if not reason.check(StoreUnavailable):
                self.log.failure("the shared rules failed", reason)
            return pdu.submit_sm_resp(0, Status.ESME_RMSGQFUL)

        return shared.check(message, self.clock.seconds()).addCallbacks(decided, unchecked)

    # --- one message, one submit ------------------------------------------------------------

    def _send_one(self, message: Message, chain: Chain | None, outcome: Outcome) -> None:
        self.pool.submit_cb(message.frame, message.account, _Submit(self, message, chain, outcome))

    def _answered(self, submit: _Submit, resp: bytes) -> bytes | None:
        """The operator's answer to `_send_one`'s submit: what to give the app, or None when
        the store's callback (`_Submit.stored`) gives it."""
        _, command_id, status, _ = _unpack_header(resp, 0)
        # Plain bytes come from the only upstream (a `Carried` names one of several).
        upstream = None if type(resp) is bytes else carrier(resp)
        self.metrics.count_upstream_submit(status, upstream or self.router.upstream)
        message_id = pdu.message_id_of(resp) if status == Status.ESME_ROK else None
        message = submit.message
        chain = submit.chain
        if chain is not None:
            chain.settle(message, self.clock.seconds(), message_id)
        if command_id not in ACCEPTING:
            # A generic_nack answers for the submit: the app gets its status.
            return pdu.submit_sm_resp(0, status)
        if message_id is None:
            return resp
        # Stored before the app hears ESME_ROK, so its receipt always has a route (and
        # query_sm, cancel_sm, replace_sm find the message: every one gets a route): answered
        # from the store's callback, at once when the store answers at once (memory), and
        # ESME_RMSGQFUL if it could not be stored; no Deferred either way.
        submit.resp = resp
        account = message.account
        try:
            self.router.remember_cb(message_id, account, message.app_id, upstream, submit.stored)
        except Exception:
            if not submit.given:
                raise  # not answered yet: the caller answers the app with the failure
            self.log.failure("{account}: the route write failed after it answered", account=account)
        return None

    def _failed(self, message: Message, chain: Chain | None, reason: Failure) -> bytes:
        """No answer from the operator for `_send_one`'s submit: what to give the app."""
        if chain is not None:
            chain.settle(message, self.clock.seconds(), None)
        if isinstance(reason.value, ResponseTimeout):
            # The app is told ESME_RSYSERR now; should the operator answer after all,
            # the message was delivered: its receipt and the rules must know.
            reason.value.on_late(functools.partial(self._late_answer, message, chain))
        status = status_of(reason)
        self.log.info(
            "{account}: submit answered {status} ({why})",
            account=message.account,
            status=pdu.status_name(status),
            why=reason.getErrorMessage(),
        )
        return pdu.submit_sm_resp(0, status)

    def _after(self, stored: Deferred[None], resp: bytes, account: str) -> Deferred[bytes]:
        """``resp`` once ``stored`` is, else ESME_RMSGQFUL (no closure: once per submit)."""
        return stored.addCallbacks(
            _answer, self._not_stored, callbackArgs=(resp,), errbackArgs=(resp, account)
        )

    def _not_stored(self, reason: Failure, resp: bytes, account: str) -> bytes:
        """The operator has the message, and the rules counted it: a retry is a duplicate
        (with ``dedup.action: replay`` it gets this id back), but its receipt has no route."""
        reason.trap(StoreUnavailable)
        self.log.warn(
            "{account}: the operator accepted message {id} but its receipt route could "
            "not be stored ({why}); answered ESME_RMSGQFUL",
            account=account,
            id=pdu.message_id_of(resp).decode("latin-1"),
            why=reason.getErrorMessage(),
        )
        return pdu.submit_sm_resp(0, Status.ESME_RMSGQFUL)

    def _hold_part(self, message: Message, chain: Chain) -> Deferred[bytes]:
        """Answer a held part ESME_ROK with its relay id once the store has it."""
        app_id = message.app_message_id
        assert app_id is not None
        now = self.clock.seconds()
        part = HeldPart(
            app_id, message.account, message.frame, message.app_iso, now, now, message.receipt_as
        )

        def not_stored(reason: Failure) -> bytes:
            reason.trap(StoreUnavailable)
            chain.release_part(message)  # the app's retry of it is held anew
            return pdu.submit_sm_resp(0, Status.ESME_RMSGQFUL)

        return self.store.hold_part(part).addCallbacks(
            lambda _: pdu.submit_sm_resp(0, Status.ESME_ROK, app_id), not_stored
        )

    def _remembered(self, stored: Deferred[None], account: str) -> None:
        """A route written where nobody waits for it (a late answer): log if it failed."""

        def failed(reason: Failure) -> None:
            self.log.warn(
                "{account}: a late answer's receipt route could not be stored ({why})",
                account=account,
                why=reason.getErrorMessage(),
            )

        stored.addErrback(failed)

    def _late_answer(self, message: Message, chain: Chain | None, resp: bytes) -> None:
        """The operator answered ``message`` after the app got ESME_RSYSERR for it.

        Accepted: its receipt still reaches the app (the route is written), and the rules
        record it as accepted (a retry is a duplicate; it counts toward floods and billing).
        """
        _, command_id, status, _ = pdu.header(resp)
        self.metrics.count_upstream_submit(status, carrier(resp) or self.router.upstream)
        if status != Status.ESME_ROK or command_id not in ACCEPTING:
            return
        message_id = pdu.message_id_of(resp)
        stored = self.router.remember(message_id, message.account, message.app_id, carrier(resp))
        self._remembered(stored, message.account)
        if chain is not None:
            chain.settle(message, self.clock.seconds(), message_id)

    # --- a glued concatenated message -------------------------------------------------------

    def _send_glued(self, message: Message, chain: Chain) -> Deferred[bytes]:
        """Send every part in order on one session; the last part's answer is the verdict.

        Refused whole (no part sent, each failed with `QueueFull`) when the parts cannot all
        fit in the session's window within the operator's assembly limit.
        """
        parts = message.parts
        account = message.account

        def answered(results: list[bytes | Failure]) -> bytes | Deferred[bytes]:
            statuses = [status_of(result) for result in results]
            routes: list[Deferred[None]] = []
            for part, result, status in zip(parts, results, statuses, strict=True):
                if isinstance(result, bytes):
                    upstream = carrier(result)
                    self.metrics.count_upstream_submit(status, upstream or self.router.upstream)
                    if status == Status.ESME_ROK:
                        message_id = pdu.message_id_of(result)
                        routes.append(
                            self.router.remember(message_id, account, part.app_id, upstream)
                        )
                elif isinstance(result.value, ResponseTimeout):
                    result.value.on_late(functools.partial(self._late_part, part))
            refused = [status for status in statuses if status != Status.ESME_ROK]
            now = self.clock.seconds()
            if not refused:
                chain.settle(message, now, message.app_message_id)
                chain.settle_parts(message, now, "accepted")
                self._parts_done(held_parts(message))
                resp = pdu.submit_sm_resp(0, Status.ESME_ROK, message.app_message_id)
                if not routes:
                    return resp
                stored = gatherResults(routes, consumeErrors=True).addCallback(lambda _: None)
                return self._after(stored.addErrback(_first_error), resp, account)
            for route in routes:
                self._remembered(route, account)
            chain.settle(message, now, None)
            # Parts arrive in any order: the one answering now shares the message's id,
            # wherever it sits in sequence.
            completing = message.app_message_id
            [own] = [
                status
                for part, status in zip(parts, statuses, strict=True)
                if part.app_message_id == completing
            ]
            final = [status for status in refused if status not in RETRYABLE]
            self.log.info(
                "{account}: the operator refused {n} of {total} parts ({status}){then}",
                account=account,
                n=len(refused),
                total=len(parts),
                status=pdu.status_name(refused[0]),
                then="" if final else "; held for a retry of the completing part",
            )
            if not final:
                # Only back-pressure or no answer: the held parts stay held (their receipts
                # come when the message goes through or its window ends), and the app's retry
                # of the completing part sends every part again.
                chain.settle_parts(message, now, "retry")
                return pdu.submit_sm_resp(0, own if own != Status.ESME_ROK else refused[0])
            chain.settle_parts(message, now, "refused")
            self._parts_done(held_parts(message))
            failed_parts = [
                part
                for part, status in zip(parts, statuses, strict=True)
                if status != Status.ESME_ROK and part.app_message_id != completing
            ]
            self._receipts(failed_parts, "REJECTD")
            # Refused for good: the answer must not invite a retry that can never complete.
            fatal = own != Status.ESME_ROK and own not in RETRYABLE
            return pdu.submit_sm_resp(0, own if fatal else final[0])

        frames = [part.frame for part in parts]
        return self.pool.submit_all(frames, account).addCallback(answered)

    def _late_part(self, part: Message, resp: bytes) -> None:
        """The operator accepted a part of a glued message after its timeout: the part's
        receipt reaches the app under the id the app was given for it."""
        _, command_id, status, _ = pdu.header(resp)
        self.metrics.count_upstream_submit(status, carrier(resp) or self.router.upstream)
        accepted = status == Status.ESME_ROK and command_id in ACCEPTING
        if accepted:
            message_id = pdu.message_id_of(resp)
            stored = self.router.remember(message_id, part.account, part.app_id, carrier(resp))
            self._remembered(stored, part.account)


class _Submit:
    """One submit on its way to the operator and back (`Relay._send_one`).

    Called with the pool's outcome; `stored` is the store's callback for its route. One object
    per submit where closures made a function and a cell per variable they shared: on the hot
    path each of those is allocated, and tracked by the garbage collector, every time.
    """

    __slots__ = ("chain", "given", "message", "outcome", "relay", "resp")

    def __init__(
        self, relay: Relay, message: Message, chain: Chain | None, outcome: Outcome
    ) -> None:
        self.relay = relay
        self.message = message
        self.chain = chain
        self.outcome = outcome
        self.resp = b""  # the operator's answer, once it is being stored
        self.given = False  # the app has its answer (from `stored`)

    def __call__(self, result: bytes | Failure) -> None:
        # What a Deferred chain did for free: a bug below still answers the app (through
        # ``outcome``'s failure path) instead of leaving it waiting.
        answer: bytes | Failure | None
        try:
            if isinstance(result, Failure):
                answer = self.relay._failed(self.message, self.chain, result)
            else:
                answer = self.relay._answered(self, result)
        except Exception:
            answer = Failure()
        if answer is not None:
            tell(self.outcome, answer)  # once: a bug in it must not answer the app twice

    def stored(self, error: Exception | None) -> None:
        """The store wrote the route (``error`` None) or could not (`RouteDone`)."""
        self.given = True
        answer: bytes | Failure
        if error is None:
            answer = self.resp
        elif isinstance(error, StoreUnavailable):
            answer = self.relay._not_stored(Failure(error), self.resp, self.message.account)
        else:  # a bug, not an outage: fails the submit as a failed Deferred would
            answer = Failure(error)
        # A store's callback must not raise (`RouteDone`): a bug in the answer stays here
        # (`tell`, inline).
        try:
            self.outcome(answer)
        except Exception:
            tell_log.failure(TELL_FAILED)


def _answer(_: None, resp: bytes) -> bytes:
    return resp


def _first_error(reason: Failure) -> Failure:
    """The error of the first failed Deferred in a gatherResults."""
    if isinstance(reason.value, FirstError):
        return reason.value.subFailure
    return reason
