"""Where receipts and MO from the operator go.

A receipt goes to the account that submitted the message it is about (the route is written
before that account got its ``ESME_ROK``); an MO goes to the account whose ``mo_prefixes``
match its destination. Either is delivered to a receiving bind of that account that answers
(the one with the fewest deliveries unanswered; not one that let a deliver_sm time out) and the
app's ``deliver_sm_resp`` is awaited. With no such bind, or when the app answers
``ESME_RX_T_APPN`` or not at all, it is held and delivered later; the operator is answered
``ESME_ROK`` once the relay has it one way or the other: a held delivery is written to the
store first, and when the store cannot write the operator is answered ``ESME_RX_T_APPN`` (it
sends it again later). A durable store keeps held deliveries across a restart (`restore`); with
the memory store, nothing new is held while the relay stops (it would be lost).

Routes live in the store: written before the app hears ``ESME_ROK`` (`remember` fires once the
write is durable), looked up when a receipt arrives, and cut back to ``receipts.final_grace``
after a final receipt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.metrics import Metrics
from smpprelay.pdu import DecodeError, Status
from smpprelay.receipts import (
    MessageIdFormat,
    id_bases,
    normalise_message_id,
    receipt_id,
    receipt_is_final,
    replace_receipt_id,
)
from smpprelay.receivers import Receiver, SharedHeld
from smpprelay.store import DEFAULT_UPSTREAM, Route, RouteDone, Store, StoreUnavailable
from smpprelay.store.tables import DeliveryKind, Held, HeldDeliveries

# A receipt can overtake its own submit_sm_resp when the operator sends them on different
# binds (deps.md P14); one second look after this long catches that race
# (receipts.second_look, this by default).
UNMATCHED_RETRY = 1.0


class Router:
    """Receipt routes, MO routes and held deliveries."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        store: Store,
        held: HeldDeliveries,
        mo_prefixes: dict[str, str],
        receivers: Callable[[str], Sequence[Receiver]],
        retry: float,
        *,
        second_look: float = UNMATCHED_RETRY,
        message_id_format: MessageIdFormat = "as-is",
        map_max: int = 0,
        upstream: str = DEFAULT_UPSTREAM,
        id_formats: Mapping[str, MessageIdFormat] | None = None,
    ) -> None:
        self.clock = clock
        # 0: an unknown receipt id is unmatched at once.
        self.second_look = second_look
        # The bases the operator writes ids in: its submit_sm_resp's, its receipts'.
        self._resp_base, self._receipt_base = id_bases(message_id_format)
        self.metrics = metrics
        self.store = store
        # The upstream whose ids the routes are keyed by when none is named (the only one).
        self.upstream = upstream
        # Several upstreams: each writes its ids its own way (upstreams[].message_id_format).
        self._bases = {name: id_bases(f) for name, f in (id_formats or {}).items()}
        self.map_max = map_max  # receipts.map_max, for the eviction warning
        self._evicted_seen = store.stats().evicted
        self.held = held
        # Longest prefix first, so "79001" wins over "7900".
        self._mo_prefixes = sorted(mo_prefixes.items(), key=lambda kv: -len(kv[0]))
        self._receivers = receivers
        self.retry = retry
        self._retry_call: IDelayedCall | None = None
        self._second_looks: dict[IDelayedCall, Callable[[], None]] = {}
        self._evicting = False  # routes are being evicted at map_max (logged once per spell)
        self._stopping = False  # the relay stops: nothing new is held
        # Several instances (store: redis): held deliveries live in the store only, and every
        # instance with a receiver reads them from there (`smpprelay.handover`).
        self.shared: SharedHeld | None = None

    def reconfigure_mo_prefixes(self, mo_prefixes: dict[str, str]) -> None:
        """Route the next MO by ``mo_prefixes`` (prefix -> account), longest first."""
        self._mo_prefixes = sorted(mo_prefixes.items(), key=lambda kv: -len(kv[0]))

    # --- routes ---------------------------------------------------------------------------

    def remember(
        self,
        message_id: bytes,
        account: str,
        app_message_id: bytes | None = None,
        upstream: str | None = None,
    ) -> Deferred[None]:
        """Route receipts for operator ``message_id`` to ``account``; fires once it is stored
        (fails with `StoreUnavailable` when it could not be). The route is also the id map of
        query_sm, cancel_sm and replace_sm: it keeps the operator's exact id when its key is
        not that id. ``upstream``: the one that answered with this id (None: the only one).
        The Deferred form of `remember_cb`."""
        stored: Deferred[None] = Deferred()

        def done(error: Exception | None) -> None:
            if error is None:
                stored.callback(None)
            else:
                stored.errback(error)

        self.remember_cb(message_id, account, app_message_id, upstream, done)
        return stored

    def remember_cb(
        self,
        message_id: bytes,
        account: str,
        app_message_id: bytes | None,
        upstream: str | None,
        done: RouteDone,
    ) -> None:
        """`remember`, reporting to ``done`` (`Store.add_route_cb`): ``done(None)`` once the
        route is stored, ``done(error)`` when not; maybe before this returns. No Deferred: the
        relay's submit path takes this one."""
        upstream = upstream or self.upstream
        bases = self._bases.get(upstream)  # `key_of`, inline: once per submit
        key = normalise_message_id(message_id, self._resp_base if bases is None else bases[0])
        exact = message_id.decode("latin-1")
        self.store.add_route_cb(
            upstream,
            key,
            account,
            app_message_id,
            self.clock.seconds(),
            None if exact == key else exact,
            done,
        )

    def key_of(self, message_id: bytes, upstream: str | None = None) -> str:
        """The key under which the route for operator ``message_id`` is stored."""
        bases = self._bases.get(upstream or self.upstream)
        return normalise_message_id(message_id, self._resp_base if bases is None else bases[0])

    def _count_evictions(self, routes: int, evicted: int) -> None:
        """Routes gave way at map_max since the last look: count them, say so when it starts."""
        new = evicted - self._evicted_seen
        self._evicted_seen = evicted
        if new > 0:
            self.metrics.receipt_routes_evicted.inc(new)
            if not self._evicting:
                self._evicting = True
                self.log.warn(
                    "receipt routes full ({max} held): the oldest are being dropped, and their "
                    "receipts will count as unmatched; raise receipts.map_max",
                    max=self.map_max,
                )
        elif self._evicting and routes < self.map_max:
            self._evicting = False  # room again: the next eviction is news

    def mo_account(self, destination: bytes) -> str | None:
        """The account whose mo_prefixes match ``destination`` best."""
        number = destination.decode("latin-1").lstrip("+")
        for prefix, account in self._mo_prefixes:
            if number.startswith(prefix):
                return account
        return None

    # --- from the operator ----------------------------------------------------------------

    def route(self, frame: bytes, upstream: str | None = None) -> Deferred[int]:
        """Take a deliver_sm from the operator; fires with the status to answer it.

        ``upstream``: the one it arrived on, whose ids a receipt quotes (None: the only one).
        """
        try:
            message = pdu.read_short_message(frame)
        except DecodeError as error:
            self.log.warn("upstream deliver_sm unreadable ({error})", error=str(error))
            self.metrics.deliveries_received.labels("unknown").inc()
            self.metrics.deliveries.labels("unknown", "malformed").inc()
            return succeed(error.status)
        if message.esm_class & pdu.RECEIPT_ESM_BITS:
            self.metrics.deliveries_received.labels("receipt").inc()
            return self._route_receipt(frame, message, False, upstream or self.upstream)
        self.metrics.deliveries_received.labels("mo").inc()
        account = self.mo_account(message.destination_addr)
        if account is None:
            self.log.warn(
                "MO to {destination} matches no account's mo_prefixes; rejected",
                destination=message.destination_addr.decode("latin-1"),
            )
            self.metrics.deliveries.labels("mo", "unroutable").inc()
            return succeed(Status.ESME_RX_R_APPN)
        return self._deliver("mo", account, frame)

    def _route_receipt(
        self, frame: bytes, message: pdu.ShortMessage, retried: bool, upstream: str
    ) -> Deferred[int]:
        message_id = receipt_id(message)
        if message_id is None:
            return self._routed(frame, message, None, None, retried, "", upstream)
        bases = self._bases.get(upstream)
        key = normalise_message_id(message_id, self._receipt_base if bases is None else bases[1])
        found = self.store.find_route(upstream, key, self.clock.seconds())

        def lookup_failed(reason: Failure) -> int:
            # Not "unknown": the route may well be there. The operator sends it again.
            self.log.warn("receipt route lookup failed ({why})", why=reason.getErrorMessage())
            self.metrics.deliveries.labels("receipt", "store_unavailable").inc()
            return Status.ESME_RX_T_APPN

        return found.addCallbacks(
            lambda route: self._routed(frame, message, message_id, route, retried, key, upstream),
            lookup_failed,
        )

    def _routed(
        self,
        frame: bytes,
        message: pdu.ShortMessage,
        message_id: bytes | None,
        route: Route | None,
        retried: bool,
        key: str = "",
        upstream: str = DEFAULT_UPSTREAM,
    ) -> Deferred[int]:
        if route is None:
            if message_id is not None and not retried and self.second_look > 0:
                later: Deferred[int] = Deferred()

                def look_again() -> None:
                    self._second_looks.pop(call, None)
                    self._route_receipt(frame, message, True, upstream).chainDeferred(later)

                call = self.clock.callLater(self.second_look, look_again)
                self._second_looks[call] = look_again
                return later
            self.log.info(
                "receipt for unknown message id {message_id}",
                message_id=message_id.decode("latin-1") if message_id is not None else None,
            )
            self.metrics.deliveries.labels("receipt", "unmatched").inc()
            return succeed(Status.ESME_ROK)
        if route.app_message_id is not None and message_id is not None:
            frame = replace_receipt_id(frame, message, message_id, route.app_message_id)
        delivered = self._deliver("receipt", route.account, frame)
        if receipt_is_final(message):

            def cut_back(status: int) -> int:
                # Only once the relay has the receipt: answered otherwise, the operator
                # sends it again and the route must still be there.
                if status == Status.ESME_ROK:
                    self.store.route_final(upstream, key, self.clock.seconds())
                return status

            delivered.addCallback(cut_back)
        return delivered

    # --- to the apps ----------------------------------------------------------------------

    def deliver(self, kind: DeliveryKind, account: str, frame: bytes) -> Deferred[int]:
        """Deliver a deliver_sm the relay made itself (a receipt for a held part)."""
        return self._deliver(kind, account, frame)

    def _deliver(self, kind: DeliveryKind, account: str, frame: bytes) -> Deferred[int]:
        item = Held(kind, account, frame, self.clock.seconds() + self.held.ttl)
        receiver = self._receiver_with_room(account)
        if receiver is None:
            return self._hold(item, fresh=True)
        return self._send(receiver, item, fresh=True)

    def _receiver_with_room(self, account: str, probe: bool = False) -> Receiver | None:
        # The one with the fewest unanswered: an app that answers takes the traffic, one
        # that is slow or deaf is not waited on. ``probe`` (held deliveries only, whose
        # operator was answered): with none, a deaf one gets one, to learn if it answers.
        best = None
        deaf = None
        for receiver in self._receivers(account):
            if receiver.can_deliver:
                if best is None or receiver.unanswered < best.unanswered:
                    best = receiver
            elif probe and deaf is None and receiver.can_probe:
                deaf = receiver
        return best if best is not None else deaf

    def room(self, account: str) -> int:
        """How many more deliveries ``account``'s receivers here take now."""
        return sum(
            max(1, getattr(r, "window", 1) - r.unanswered)
            for r in self._receivers(account)
            if r.can_deliver
        )

    def deliver_held(self, item: Held, outcome: str = "delivered") -> Deferred[int] | None:
        """Send a held ``item`` (read from the shared store) to a receiver here; None when
        none takes it now. ``outcome``: what a delivery counts as ("handed_over")."""
        receiver = self._receiver_with_room(item.account, probe=True)
        return None if receiver is None else self._send(receiver, item, outcome=outcome)

    def _send(
        self, receiver: Receiver, item: Held, fresh: bool = False, outcome: str = "delivered"
    ) -> Deferred[int]:
        item.attempts += 1
        sent = self.clock.seconds()

        def answered(resp: bytes) -> int | Deferred[int]:
            self.metrics.deliver_latency.labels(item.account).observe(self.clock.seconds() - sent)
            status = pdu.header(resp)[2]
            if status == Status.ESME_ROK:
                self.metrics.deliveries.labels(item.kind, outcome).inc()
                if item.key:
                    self.store.delivered(item)
                self.flush(item.account)
                return Status.ESME_ROK
            if status == Status.ESME_RX_T_APPN:
                return self._hold(item, refused=True, fresh=fresh)
            # A permanent refusal is the app's answer to give: pass it to the operator.
            self.log.info(
                "{account} refused a {kind} with {status}",
                account=item.account,
                kind=item.kind,
                status=pdu.status_name(status),
            )
            self.metrics.deliveries.labels(item.kind, "refused").inc()
            if item.key:
                self.store.delivered(item)  # the app's answer is final: nothing to redeliver
            return int(status)

        def failed(reason: Failure) -> Deferred[int]:
            self.log.info(
                "{kind} to {account} not acknowledged ({why}); holding it",
                kind=item.kind,
                account=item.account,
                why=reason.getErrorMessage(),
            )
            return self._hold(item, refused=True, fresh=fresh)

        return receiver.deliver(item.frame).addCallbacks(answered, failed)

    def _hold(self, item: Held, refused: bool = False, fresh: bool = False) -> Deferred[int]:
        """Hold ``item`` for later; fires with the status for the operator (ESME_ROK once the
        store has it)."""
        if item.key and self.shared is not None:
            self.shared.back(item)  # stays in the shared store, read again later
            return succeed(Status.ESME_ROK)
        if item.key:
            # Already in the store (a held delivery that failed again): back in the queue.
            self.held.hold(item, force=True)
            self._held_changed(item, refused)
            return succeed(Status.ESME_ROK)
        if fresh and self._stopping and not self.store.durable:
            # Held now it would be lost at the stop, after the operator heard ESME_ROK.
            self.log.info(
                "{kind} for {account} arrived while stopping with no receiver to take it; "
                "asking the operator to retry later",
                kind=item.kind,
                account=item.account,
            )
            self.metrics.deliveries.labels(item.kind, "retry_later").inc()
            return succeed(Status.ESME_RX_T_APPN)
        if self.held.full:
            self.log.warn("held deliveries full; asking the operator to retry later")
            self.metrics.deliveries.labels(item.kind, "store_full").inc()
            return succeed(Status.ESME_RX_T_APPN)
        if not self.store.writable:
            return succeed(self._not_stored(item))

        def stored(_: None) -> int:
            self.metrics.deliveries.labels(item.kind, "held").inc()
            if self.shared is not None:
                self.shared.held(item)  # read from the store by an instance with a receiver
                return Status.ESME_ROK
            # Past held.full by at most the writes in flight: each was checked before it.
            self.held.hold(item, force=True)
            self._held_changed(item, refused)
            return Status.ESME_ROK

        def not_stored(reason: Failure) -> int:
            reason.trap(StoreUnavailable)
            return self._not_stored(item)

        return self.store.hold_delivery(item).addCallbacks(stored, not_stored)

    def _not_stored(self, item: Held) -> int:
        """The store cannot keep ``item``: the operator keeps it and sends it again later."""
        self.metrics.deliveries.labels(item.kind, "store_unavailable").inc()
        item.key = 0
        return Status.ESME_RX_T_APPN

    def _held_changed(self, item: Held, refused: bool) -> None:
        self.metrics.held.labels(item.account).set(self.held.count(item.account))
        if refused:
            self._schedule_retry()

    def restore(self, deliveries: Iterable[Held]) -> int:
        """Hold again what the store kept from the last run (at start); return how many."""
        count = 0
        for item in deliveries:
            self.held.hold(item, force=True)
            self.metrics.held.labels(item.account).set(self.held.count(item.account))
            count += 1
        if count:
            self._schedule_retry()
        return count

    def flush(self, account: str) -> None:
        """Deliver what waits for ``account`` while one of its receivers has room."""
        while self.held.count(account):
            receiver = self._receiver_with_room(account, probe=True)
            if receiver is None:
                break
            item = self.held.take(account)
            assert item is not None
            self.metrics.held.labels(account).set(self.held.count(account))
            self._send(receiver, item)

    def receiver_bound(self, account: str) -> None:
        """An app bound a receiver: hand it what was held for it."""
        self.flush(account)

    def _schedule_retry(self) -> None:
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self.clock.callLater(self.retry, self._retry_all)

    def _retry_all(self) -> None:
        self._retry_call = None
        for account in self.held.accounts():
            self.flush(account)

    def expire(self) -> None:
        """Drop held deliveries past their deadline and routes past theirs (runs periodically)."""
        now = self.clock.seconds()
        for item in self.held.expire(now):
            self.log.warn(
                "{kind} for {account} expired after {attempts} attempts",
                kind=item.kind,
                account=item.account,
                attempts=item.attempts,
            )
            self.metrics.deliveries.labels(item.kind, "expired").inc()
            self.metrics.held.labels(item.account).set(self.held.count(item.account))
            if item.key:
                self.store.delivered(item)
        stats = self.store.stats()
        self.metrics.receipt_routes.set(stats.routes)
        self._count_evictions(stats.routes, stats.evicted)

    def stopping(self) -> None:
        """The relay starts to stop: deliveries no receiver takes are not held from now on."""
        self._stopping = True

    def stop(self) -> None:
        """Cancel the pending retry, and count what is held as lost (on shutdown)."""
        self._stopping = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        # Receipts waiting for their second look get it now, so each is still answered.
        for call, look_again in list(self._second_looks.items()):
            call.cancel()
            look_again()
        if self.store.durable:
            self._kept_at_stop()
        else:
            self._lost_at_stop()

    def _kept_at_stop(self) -> None:
        # Every held delivery is in the store (it was written before the operator heard
        # ESME_ROK): the next start delivers it.
        for account in self.held.accounts():
            count = self.held.count(account)
            while self.held.take(account) is not None:
                pass
            self.metrics.held.labels(account).set(0)
            self.log.info(
                "stopping: {count} held deliveries for {account} stay in the store for the "
                "next start",
                count=count,
                account=account,
            )

    def _lost_at_stop(self) -> None:
        # Held deliveries were answered ESME_ROK to the operator and live in memory only:
        # the stop loses them. Say so, per account and kind, so they can be chased.
        for account in self.held.accounts():
            lost: dict[DeliveryKind, int] = {}
            while (item := self.held.take(account)) is not None:
                lost[item.kind] = lost.get(item.kind, 0) + 1
            self.metrics.held.labels(account).set(0)
            for kind, count in lost.items():
                self.log.warn(
                    "stopping: {count} held {kind} deliveries for {account} are lost "
                    "(answered ESME_ROK to the operator, never delivered)",
                    count=count,
                    kind=kind,
                    account=account,
                )
                self.metrics.deliveries.labels(kind, "lost_at_stop").inc(count)
