"""The relay's upkeep between submits: the rules' once-a-second expiry, the windows written
behind, what the store kept put back at start, held parts given up at the stop, and the
receipts of held parts that will never reach the operator (`Relay` inherits it)."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.filters.base import Dropped, FilterChain
from smpprelay.message import Message, read_message
from smpprelay.pdu import DecodeError
from smpprelay.receipts import delivery_receipt
from smpprelay.relaying import wants_receipt
from smpprelay.router import Router
from smpprelay.shared.chain import SharedChain
from smpprelay.store import Loaded, Store, StoreUnavailable, window_segments

Chain = FilterChain | SharedChain

# Why a concatenated message was given up (`Dropped.reason`), as the log line says it.
_DROPPED_BECAUSE = {"expired": "incomplete after its window", "shutdown": "relay stopping"}

# Window entries kept for the next write-behind while the store cannot write; past this the
# oldest are dropped (the windows themselves are in memory: only a restart would forget them).
MAX_PENDING_WINDOWS = 1_000_000


class RelayUpkeep:
    """What `Relay` does besides carrying submits (it sets these attributes)."""

    log: Logger
    chain: Chain | None
    store: Store
    router: Router
    clock: IReactorTime
    max_tlvs: int
    _pending_windows: bytes  # packed entries a failed write left for the next

    def _receipts(self, parts: Sequence[Message], stat: str) -> None:
        """Tell the app about held parts that will never reach the operator."""
        now = self.clock.seconds()
        for part in parts:
            app_id = part.app_id
            if app_id and wants_receipt(part):
                receipt = delivery_receipt(part.fields, app_id, stat, now, now)
                self.router.deliver("receipt", part.account, receipt)

    def _parts_done(self, parts: Sequence[Message]) -> None:
        """Held parts that went to the operator or were given up leave the store."""
        ids = [part.app_message_id for part in parts if part.app_message_id is not None]
        if ids:
            self.store.parts_done(ids)

    def sweep(self) -> None:
        """Expire the rules' old state (held parts whose window ended get EXPIRED receipts).
        Runs about once a second."""
        if self.chain is None:
            return
        self.chain.flush_counts()
        dropped = self.chain.expire(self.clock.seconds())
        if isinstance(dropped, Deferred):
            # The shared chain's: Redis hands each message given up to one instance.
            dropped.addCallbacks(self._give_up, self._not_expired, callbackArgs=("EXPIRED",))
        else:
            self._give_up(dropped, "EXPIRED")

    def _not_expired(self, reason: Failure) -> None:
        """Redis could not expire held parts now: the next sweep tries again."""
        reason.trap(StoreUnavailable)

    def write_behind(self) -> None:
        """Write the entries the rules' windows took since the last time. Runs ten times a
        second with a durable store: a restart forgets at most the last tenth of a second
        (and what the write itself had not committed)."""
        if self.chain is None or not self.store.durable:
            return
        # Packed: a failed write's entries and the new ones are one blob, joined.
        packed = self._pending_windows + self.chain.window_segment()
        self._pending_windows = b""
        if not packed:
            return

        def failed(reason: Failure) -> None:
            reason.trap(StoreUnavailable)
            # Kept for the next write; the newest win when there are too many.
            self._pending_windows = window_segments.newest(
                packed + self._pending_windows, MAX_PENDING_WINDOWS
            )

        self.store.save_windows(packed).addErrback(failed)

    def restore(self, loaded: Loaded, now: float) -> tuple[int, int]:
        """Put back the rules' windows and held parts the store kept (at start, before any
        app binds); return (window entries, parts) restored."""
        if self.chain is None or not (loaded.windows or loaded.parts):
            return 0, 0
        windows = self.chain.restore_windows(loaded.windows, now)
        parts = 0
        for held in sorted(loaded.parts, key=lambda part: part.arrived):
            try:
                part = read_message(held.account, held.frame, held.app_iso, self.max_tlvs)
            except DecodeError as error:  # stored by this relay after it read it: not expected
                self.log.warn("a stored part is unreadable ({error}); dropped", error=str(error))
                self.store.parts_done([held.app_message_id])
                continue
            part.app_message_id = held.app_message_id
            part.receipt_as = held.receipt_as
            try:
                self.chain.restore_part(part, held.first)
            except ValueError as error:
                # It cannot be held again (its message was reopened with another total, say):
                # given up as a message that ends now, with its receipt.
                self.log.warn("a stored part cannot be held again ({error})", error=str(error))
                self._give_up([Dropped(part.account, held.first, [part], "expired")], "EXPIRED")
                continue
            parts += 1
        return windows, parts

    def drop_held(self) -> int:
        """Give up every held part (the relay is stopping); return how many.

        With a durable store the parts stay there for the next start, which completes their
        messages (or expires them) as if the relay had not stopped. With the memory store they
        will never reach the operator: those that asked for a receipt get one with
        ``stat:UNDELIV`` (not EXPIRED: their window did not end).
        """
        if self.chain is None:
            return 0
        if self.store.durable:
            self.write_behind()
            return 0
        return self._give_up(self.chain.drop_all(), "UNDELIV")

    def _give_up(self, dropped: Sequence[Dropped], stat: str) -> int:
        """Log each message given up and send its held parts' receipts; return the parts."""
        parts = 0
        for held in dropped:
            self.log.info(
                "{account}: concatenated message {why}; {n} held parts dropped",
                account=held.account,
                why=_DROPPED_BECAUSE[held.reason],
                n=len(held.arrived),
            )
            self._receipts(held.arrived, stat)
            self._parts_done(held.arrived)
            parts += len(held.arrived)
        return parts
