"""query_sm, cancel_sm and replace_sm from an app (issue 13).

The id the app names is looked up for the account that sent the request, in this order:

1. a part the concat rule still holds (a relay-issued id): the relay answers for it, as the
   operator would for a message en route: query_sm ``ENROUTE``; cancel_sm drops the held message
   (its held parts' receipts say ``DELETED``); replace_sm puts the new text in the held part
   (through the encoding rule), and the message is judged as a whole when it completes. The
   rule is asked through `smpprelay.shared.held.HeldParts`: in one process or, with the redis
   store, in Redis (a part held through any instance);
2. the routes whose app was given that id (a part the operator has, a submit_multi's messages):
   the request goes to the operator once per message (query_sm: the first only);
3. the route keyed by that id, when the app was given the operator's own id.

Anything else (another account's id, an unknown or expired one, an empty one) is answered
``ESME_RINVMSGID`` and never reaches the operator. A request to the operator is rewritten with
the operator's exact id (the one it gave) and its answer with the app's id; the other fields,
``source_addr`` among them, go as the app sent them, and the operator checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.filters.base import Dropped
from smpprelay.filters.concat import ConcatFilter
from smpprelay.filters.encoding import EncodingFilter
from smpprelay.message import Message, read_message
from smpprelay.pdu import CommandId, DecodeError, Status, Tag
from smpprelay.pool import QueueFull
from smpprelay.receipts import delivery_receipt
from smpprelay.relay import Relay
from smpprelay.router import Router
from smpprelay.routing import UpstreamSet
from smpprelay.shared.chain import SharedChain
from smpprelay.shared.concat import SharedConcat
from smpprelay.shared.held import HeldParts, HeldRef, LocalHeld
from smpprelay.store import HeldPart, Mapped, StoreUnavailable

R = TypeVar("R")

ENROUTE = pdu.MESSAGE_STATES["ENROUTE"]
# registered_delivery bits asking for an SMSC receipt (3.4 section 5.2.17).
_RECEIPT_BITS = 0x03

# What an id names for an account: a held part, the operator's messages, or nothing.
Target = HeldRef | list[Mapped] | None


def _no_answer(reason: Failure) -> int:
    """The status the relay answers when the operator did not (a full queue, no answer)."""
    return Status.ESME_RMSGQFUL if reason.check(QueueFull) else Status.ESME_RSYSERR


def _status(outcome: bytes | int) -> int:
    return outcome if isinstance(outcome, int) else pdu.header(outcome)[2]


def _source_differs(asked: bytes, held: bytes) -> bool:
    # An empty source_addr in the request is not checked (apps that never set it still work).
    return bool(asked) and asked != held


class Queries:
    """The use cases of query_sm, cancel_sm and replace_sm; `handlers` for `Operations`."""

    log = Logger()

    def __init__(self, relay: Relay, router: Router, clock: IReactorTime) -> None:
        self.relay = relay
        self.router = router
        self.clock = clock

    @property
    def handlers(self) -> dict[int, Callable[[str, bytes, bool], Deferred[bytes]]]:
        """command_id -> handler, for `Operations.handlers`."""
        return {
            CommandId.query_sm: self.query,
            CommandId.cancel_sm: self.cancel,
            CommandId.replace_sm: self.replace,
        }

    # --- finding the message ----------------------------------------------------------------

    def _rule(self, kind: type[R]) -> R | None:
        chain = self.relay.chain
        if chain is None:
            return None
        return next((rule for rule in chain.filters if isinstance(rule, kind)), None)

    def _held_parts(self) -> HeldParts | None:
        """The concat rule's held parts: in Redis with a shared chain, else in this process."""
        chain = self.relay.chain
        if isinstance(chain, SharedChain):
            return chain.concat if isinstance(chain.concat, SharedConcat) else None
        rule = self._rule(ConcatFilter)
        return None if rule is None else LocalHeld(rule)

    def _find(self, account: str, app_id: bytes) -> Deferred[Target]:
        """What ``app_id`` names for ``account`` (see the module docstring)."""
        if not app_id:
            return succeed(None)
        store = self.relay.store
        now = self.clock.seconds()

        def by_app_id(found: list[Mapped]) -> Target | Deferred[Target]:
            if found:
                # Another account's relay id is as unknown as any: no lookup by operator id.
                return [mapped for mapped in found if mapped.route.account == account] or None
            return self._by_operator_id(app_id, account, self._upstreams(), now)

        def not_held(held: HeldRef | None) -> Target | Deferred[Target]:
            if held is not None:
                return held
            return store.find_app_id(app_id, now).addCallback(by_app_id)

        held_parts = self._held_parts()
        if held_parts is None:
            return store.find_app_id(app_id, now).addCallback(by_app_id)
        return held_parts.find_held_part(account, app_id).addCallback(not_held)

    def _upstreams(self) -> list[str]:
        pool = self.relay.pool
        if isinstance(pool, UpstreamSet) and len(pool.members) > 1:
            return [member.name for member in pool.members]
        return [self.router.upstream]

    def _by_operator_id(
        self, app_id: bytes, account: str, names: list[str], now: float
    ) -> Deferred[Target]:
        """The app was given the operator's own id (not a relay-issued one): its route under
        each upstream in turn, the first that is the account's (two operators may have
        issued the same id, to two accounts)."""
        name = names[0]
        key = self.router.key_of(app_id, name)

        def by_key(route: Any) -> Target | Deferred[Target]:
            if route is not None and route.account == account and route.app_message_id is None:
                return [Mapped(name, route.operator_id or key, route)]
            if len(names) > 1:
                return self._by_operator_id(app_id, account, names[1:], now)
            return None

        return self.relay.store.find_route(name, key, now).addCallback(by_key)

    def _answer(
        self,
        command: int,
        account: str,
        frame: bytes,
        read: Callable[[bytes], Any],
        local: Callable[[Any, HeldRef], bytes | Deferred[bytes]],
        upstream: Callable[[Any, list[Mapped]], Deferred[bytes]],
    ) -> Deferred[bytes]:
        """Read the request, find its message, answer locally or from the operator."""
        try:
            request = read(frame)
        except DecodeError as error:
            return succeed(pdu.response(command, 0, error.status))

        def found(target: Target) -> bytes | Deferred[bytes]:
            if target is None:
                self.log.info(
                    "{account}: {command} for unknown message {id}: ESME_RINVMSGID",
                    account=account,
                    command=pdu.command_name(command),
                    id=request.message_id.decode("latin-1"),
                )
                return pdu.response(command, 0, Status.ESME_RINVMSGID)
            if isinstance(target, HeldRef):
                return local(request, target)
            return upstream(request, target)

        def lookup_failed(reason: Failure) -> bytes:
            reason.trap(StoreUnavailable)
            self.log.warn(
                "{account}: {command} for {id} not looked up ({why}): ESME_RSYSERR",
                account=account,
                command=pdu.command_name(command),
                id=request.message_id.decode("latin-1"),
                why=reason.getErrorMessage(),
            )
            return pdu.response(command, 0, Status.ESME_RSYSERR)

        return self._find(account, request.message_id).addCallbacks(found, lookup_failed)

    def _send(self, frame: bytes, account: str, upstream: str) -> Deferred[bytes | int]:
        """One request to the operator that issued the id (``upstream``); fires with its
        answer, or the status standing for none (never fails)."""
        pool = self.relay.pool
        sent: Deferred[Any] = (
            pool.submit_to(upstream, frame, account)
            if isinstance(pool, UpstreamSet)
            else pool.submit(frame, account)
        )
        return sent.addErrback(_no_answer)

    # --- query_sm ---------------------------------------------------------------------------

    def query(self, account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
        """A query_sm: the first message the id names (one id, one state)."""
        return self._answer(
            CommandId.query_sm,
            account,
            frame,
            pdu.read_query_sm,
            self._query_held,
            lambda request, found: self._query_upstream(request, found[0], account),
        )

    def _query_held(self, request: pdu.QuerySm, held: HeldRef) -> bytes:
        if _source_differs(request.source_addr, held.part.fields.source_addr):
            return pdu.query_sm_resp(0, Status.ESME_RINVSRCADR)
        answer = pdu.QuerySmResp(request.message_id, b"", ENROUTE, 0)
        return pdu.query_sm_resp(0, Status.ESME_ROK, answer)

    def _query_upstream(
        self, request: pdu.QuerySm, mapped: Mapped, account: str
    ) -> Deferred[bytes]:
        app_id = request.message_id
        upstream = pdu.query_sm(0, request._replace(message_id=mapped.message_id.encode("latin-1")))

        def answered(outcome: bytes | int) -> bytes:
            status = _status(outcome)
            if status != Status.ESME_ROK or isinstance(outcome, int):
                return pdu.query_sm_resp(0, status)
            try:
                resp = pdu.read_query_sm_resp(outcome)
            except DecodeError as error:
                self.log.warn("the operator's query_sm_resp is unreadable ({e})", e=str(error))
                return pdu.query_sm_resp(0, Status.ESME_RQUERYFAIL)
            return pdu.query_sm_resp(0, Status.ESME_ROK, resp._replace(message_id=app_id))

        return self._send(upstream, account, mapped.upstream).addCallback(answered)

    # --- cancel_sm --------------------------------------------------------------------------

    def cancel(self, account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
        """A cancel_sm: every message the id names (a submit_multi's too)."""
        return self._answer(
            CommandId.cancel_sm,
            account,
            frame,
            pdu.read_cancel_sm,
            lambda request, held: self._cancel_held(request, held, account),
            lambda request, found: self._every(
                CommandId.cancel_sm, pdu.cancel_sm, request, found, account
            ),
        )

    def _cancel_held(
        self, request: pdu.CancelSm, held: HeldRef, account: str
    ) -> bytes | Deferred[bytes]:
        fields = held.part.fields

        def answer(status: int) -> bytes:
            return pdu.response(CommandId.cancel_sm, 0, status)

        if _source_differs(request.source_addr, fields.source_addr) or _source_differs(
            request.destination_addr, fields.destination_addr
        ):
            return answer(Status.ESME_RINVSRCADR)
        if held.with_operator:
            # Its parts are on their way to the operator: too late to drop them here.
            return answer(Status.ESME_RCANCELFAIL)
        held_parts = self._held_parts()
        assert held_parts is not None  # it holds the part
        now = self.clock.seconds()

        def cancelled(dropped: Dropped | None) -> bytes:
            if dropped is None:
                # Completed (the operator has it) or expired since it was found.
                self.log.info(
                    "{account}: held message {id} moved on before its cancel: ESME_RCANCELFAIL",
                    account=account,
                    id=request.message_id.decode("latin-1"),
                )
                return answer(Status.ESME_RCANCELFAIL)
            for gone in dropped.arrived:
                if gone.app_message_id and gone.fields.registered_delivery & _RECEIPT_BITS:
                    receipt = delivery_receipt(
                        gone.fields, gone.app_message_id, "DELETED", now, now
                    )
                    self.router.deliver("receipt", account, receipt)
            self.relay.store.parts_done([gone.app_message_id for gone in dropped.arrived])
            self.log.info(
                "{account}: held concatenated message cancelled; {n} held parts dropped",
                account=account,
                n=len(dropped.arrived),
            )
            return answer(Status.ESME_ROK)

        def failed(reason: Failure) -> bytes:
            reason.trap(StoreUnavailable)
            self.log.warn(
                "{account}: cancel of held message {id} not decided ({why}): ESME_RSYSERR",
                account=account,
                id=request.message_id.decode("latin-1"),
                why=reason.getErrorMessage(),
            )
            return answer(Status.ESME_RSYSERR)

        return held_parts.cancel_held_part(held, now).addCallbacks(cancelled, failed)

    def _every(
        self,
        command: int,
        make: Callable[[int, Any], bytes],
        request: Any,
        found: list[Mapped],
        account: str,
    ) -> Deferred[bytes]:
        """Send ``request`` for each message found; ESME_ROK if the operator took every one,
        else the first refusal's status."""
        sends = [
            self._send(
                make(0, request._replace(message_id=mapped.message_id.encode("latin-1"))),
                account,
                mapped.upstream,
            )
            for mapped in found
        ]

        def answered(outcomes: list[bytes | int]) -> bytes:
            statuses = [_status(outcome) for outcome in outcomes]
            refused = [status for status in statuses if status != Status.ESME_ROK]
            return pdu.response(command, 0, refused[0] if refused else Status.ESME_ROK)

        return gatherResults(sends).addCallback(answered)

    # --- replace_sm -------------------------------------------------------------------------

    def replace(self, account: str, frame: bytes, app_iso: bool) -> Deferred[bytes]:
        """A replace_sm: every message the id names; a held part's text is replaced here."""
        return self._answer(
            CommandId.replace_sm,
            account,
            frame,
            pdu.read_replace_sm,
            lambda request, held: self._replace_held(request, held, account, app_iso),
            lambda request, found: self._every(
                CommandId.replace_sm, pdu.replace_sm, request, found, account
            ),
        )

    def _replace_held(
        self, request: pdu.ReplaceSm, held: HeldRef, account: str, app_iso: bool
    ) -> bytes | Deferred[bytes]:
        slim = held.part

        def refuse(status: int) -> bytes:
            return pdu.response(CommandId.replace_sm, 0, status)

        if _source_differs(request.source_addr, slim.fields.source_addr):
            return refuse(Status.ESME_RINVSRCADR)
        if held.with_operator:
            return refuse(Status.ESME_RREPLACEFAIL)
        store = self.relay.store
        if not store.writable:
            return refuse(Status.ESME_RMSGQFUL)
        old = read_message(account, slim.frame, slim.app_iso, self.relay.max_tlvs)
        old.app_message_id = slim.app_message_id
        try:
            part = self._replaced(request, old, app_iso)
        except DecodeError as error:
            return refuse(error.status)
        held_parts = self._held_parts()
        assert held_parts is not None  # it holds the part
        now = self.clock.seconds()
        record = HeldPart(old.app_message_id, account, part.frame, old.app_iso, held.first, now)

        def replaced(status: int) -> bytes | Deferred[bytes]:
            if status != Status.ESME_ROK:
                self.log.info(
                    "{account}: replace_sm of held part {id} not done: {status}",
                    account=account,
                    id=request.message_id.decode("latin-1"),
                    status=pdu.status_name(status),
                )
                return refuse(status)
            return store.replace_part(record).addCallbacks(
                lambda _: refuse(Status.ESME_ROK), not_stored
            )

        def not_stored(reason: Failure) -> Deferred[bytes]:
            reason.trap(StoreUnavailable)
            # The store keeps the old text: so does the rule, unless the message moved on.
            undone = held_parts.replace_held_part(held, old)

            def answer(outcome: int | Failure) -> bytes:
                if isinstance(outcome, Failure):
                    self.log.warn(
                        "{account}: held part {id} keeps its new text in the rule but not in "
                        "the store ({why})",
                        account=account,
                        id=request.message_id.decode("latin-1"),
                        why=outcome.getErrorMessage(),
                    )
                return refuse(Status.ESME_RMSGQFUL)

            return undone.addBoth(answer)

        def not_replaced(reason: Failure) -> bytes:
            reason.trap(StoreUnavailable)  # Redis did not answer: the old text may stay
            self.log.warn(
                "{account}: replace_sm of held part {id} not decided ({why}): ESME_RMSGQFUL",
                account=account,
                id=request.message_id.decode("latin-1"),
                why=reason.getErrorMessage(),
            )
            return refuse(Status.ESME_RMSGQFUL)

        return held_parts.replace_held_part(held, part).addCallbacks(replaced, not_replaced)

    def _replaced(self, request: pdu.ReplaceSm, old: Message, app_iso: bool) -> Message:
        """The held part ``old`` with the request's text and settings, through the encoding
        rule (the text read as the app's session reads it). Raises `DecodeError` with the
        status to answer."""
        fields = old.fields
        text = request.text
        if old.uses_payload:
            tlvs = tuple(
                (tag, text if tag == Tag.message_payload else value) for tag, value in fields.tlvs
            )
            fields = fields._replace(tlvs=tlvs)
        elif len(text) > pdu.MAX_SHORT_MESSAGE:
            raise DecodeError(Status.ESME_RINVMSGLEN, "new text longer than a short_message")
        else:
            fields = fields._replace(short_message=text)
        fields = fields._replace(
            schedule_delivery_time=request.schedule_delivery_time or fields.schedule_delivery_time,
            validity_period=request.validity_period or fields.validity_period,
            registered_delivery=request.registered_delivery,
            sm_default_msg_id=request.sm_default_msg_id,
        )
        frame = pdu.encode_short_message(CommandId.submit_sm, pdu.sequence_of(old.frame), fields)
        part = read_message(old.account, frame, app_iso, self.relay.max_tlvs)
        if old.concat is None or part.concat is None or part.concat[:3] != old.concat[:3]:
            # The new text must keep the part's place in its message (its UDH, if it has one).
            raise DecodeError(Status.ESME_RREPLACEFAIL, "the new text changes the part's header")
        encoding = self._rule(EncodingFilter)
        if encoding is not None:
            verdict = encoding.check(part, self.clock.seconds())
            if verdict.action == "reject":
                raise DecodeError(verdict.status, f"encoding rule: {verdict.reason}")
            if verdict.message is not None:
                part = verdict.message
        part.app_message_id = old.app_message_id
        part.app_iso = old.app_iso  # the frame is in the operator's convention from here
        return part
