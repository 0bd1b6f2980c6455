"""The filter interface and the chain that runs the rules in order.

``check`` is synchronous: every rule's state lives in the in-memory store, and a Deferred per
rule per submit would cost more than the rules themselves. ``settle`` tells each rule that
let a message through what became of it, because only messages the operator accepted may
enter the dedup and flood windows (a retry after a temporary failure is no duplicate).
``expire`` and ``drop_all`` hand back the held parts a rule gives up, so that the relay can
send their receipts: the parts were answered ESME_ROK when they were held.

A restart keeps the rules' state through the store (`smpprelay.store`): `window_segment` hands
the dedup and flood windows' new entries, packed, to be written behind (ten times a second), and
`restore_windows` puts them back at start; `restore_part` puts back a held part at start, and
`release_part` undoes a hold whose write to the store failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

from twisted.logger import Logger

from smpprelay.message import ACCEPT, Message, Verdict, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.store import WindowEntry


class Dropped(NamedTuple):
    """A concatenated message given up before it was whole, and the parts held for it."""

    account: str
    first: float  # when its first part arrived
    arrived: list[Message]  # the held parts, in the order they arrived (not by sequence)
    reason: Literal["expired", "shutdown", "cancelled"]


# What became of a glued message (`Filter.parts_settled`): the operator took every part
# (or a later rule replayed it as a duplicate of one it took); it did not, for a reason the app
# retries (back-pressure, no answer); or the message is refused for good.
PartsOutcome = Literal["accepted", "retry", "refused"]


class Filter(Protocol):
    """One operator rule."""

    name: ClassVar[str]  # config key and metrics label
    # False: the rule's state does not depend on the operator's answer, so `settle` is never
    # called (one call less per submit).
    settles: ClassVar[bool]
    # True: the rule may answer ``hold`` for a concatenated part, so the relay gives each part
    # its own id (`Message.app_message_id`) before the rules see it.
    holds_parts: ClassVar[bool]
    # Optional, False if absent: ``passes_plain`` True says `check` answers `ACCEPT` for every
    # message whose ``concat`` is None, so the chain does not call it for one.

    def check(self, message: Message, now: float) -> Verdict:
        """Decide about ``message``; a rule that accepts may reserve state for it.

        A rule never changes ``message``: it accepts with `ACCEPT` (nothing changed, the cheap
        path) or with ``accept(replacement)``, which the next rules and the relay then get.
        """
        ...

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """The operator accepted ``message`` under ``message_id``, or (None) did not.

        ``message`` is the one the chain finally passed on, every replacement made. When the
        operator's answer came after the relay gave up waiting, ``settle(..., None)`` is
        followed by ``settle(..., message_id)``: it did accept the message after all.
        """
        ...

    def parts_settled(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        """What became of ``message``, a glued message this rule passed on (only rules that
        hold parts are told)."""
        ...

    def expire(self, now: float) -> Sequence[Dropped]:
        """Forget state whose window has ended; return the held messages given up."""
        ...

    def drop_all(self) -> Sequence[Dropped]:
        """Give up every held message (the relay is stopping) and return them."""
        ...

    def window_segment(self) -> bytes:
        """The window entries accepted or changed since the last call, packed to be written
        behind (`smpprelay.store.window_segments`; b"" when there are none)."""
        ...

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        """Put back the entries of ``entries`` for this rule (``rule`` its name) still live at
        ``now``; return how many. Once, at start, before any traffic."""
        ...

    def restore_part(self, part: Message, first: float) -> None:
        """Put back a part held before a restart (its message's first part came at ``first``).
        Only called on rules that hold parts."""
        ...

    def release_part(self, part: Message) -> None:
        """Undo the hold that the last `check` made for ``part`` (the store could not keep it).
        Only called on rules that hold parts."""
        ...


def bound_uncollected(
    uncollected: dict[bytes, Any],
    limit: int,
    in_step: dict[bytes, Any],
    log: Logger,
    what: str,
    dropped: int,
) -> int:
    """Drop the oldest entries a rule noted for write-behind past ``limit`` (nobody collects
    them: the relay calls `FilterChain.window_segment` ten times a second with a durable
    store), from ``uncollected`` and from ``in_step``, the dict kept in step with it; say so;
    return how many were dropped in all."""
    excess = len(uncollected) - limit
    if excess <= 0:
        return dropped
    for key in list(islice(uncollected, excess)):
        del uncollected[key]
        del in_step[key]
    dropped += excess
    log.warn(
        "{what}: {n} not written behind ({total} so far): window_segment is not called "
        "often enough",
        what=what,
        n=excess,
        total=dropped,
    )
    return dropped


class HoldsNothing:
    """For a rule that holds no message: nothing to give up, and expiry only forgets."""

    holds_parts: ClassVar[bool] = False

    def forget(self, now: float) -> int:
        """Forget the state whose window has ended; return how many entries went."""
        return 0

    def expire(self, now: float) -> Sequence[Dropped]:
        """Forget what has ended (see `forget`); no held message is ever given up."""
        self.forget(now)
        return ()

    def drop_all(self) -> Sequence[Dropped]:
        """Nothing to give up: this rule holds no message."""
        return ()

    def parts_settled(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        """Never called: this rule holds no parts."""

    def window_segment(self) -> bytes:
        """Nothing to write behind, unless the rule keeps a window (it packs its own)."""
        return b""

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        """Nothing to put back, unless the rule keeps a window."""
        return 0

    def restore_part(self, part: Message, first: float) -> None:
        """Never called: this rule holds no parts."""

    def release_part(self, part: Message) -> None:
        """Never called: this rule holds no parts."""


class FilterChain:
    """Runs the rules in order; the first one that does not accept decides."""

    log = Logger()

    def __init__(self, filters: list[Filter], metrics: Metrics) -> None:
        self.filters = filters
        self.metrics = metrics
        self._counters: dict[tuple[str, str, str], object] = {}
        # Accepts are the common case: counted as plain integers and added to Prometheus by
        # flush_counts() (every second), which saves a locked increment per rule per submit.
        # A message every rule accepted is counted once, in ``_passed``, for all of them.
        self._accepted = dict.fromkeys((rule.name for rule in filters), 0)
        self._passed = 0
        self._checks = tuple(rule.check for rule in filters)
        # Most submits are plain (unconcatenated): the rules that accept every plain message
        # without looking at it (`Filter.passes_plain`) are not called for one.
        self._plain_checks = tuple(
            rule.check for rule in filters if not getattr(rule, "passes_plain", False)
        )
        # Rules whose state does not depend on the operator's answer are not told it.
        self._settled = [rule for rule in filters if rule.settles]
        self._settles = tuple(rule.settle for rule in self._settled)
        self.holds_parts = any(rule.holds_parts for rule in filters)
        self._holders = [rule for rule in filters if rule.holds_parts]

    def check(self, message: Message, now: float) -> Verdict:
        """The chain's verdict. A rule that raises fails closed with ESME_RSYSERR.

        When a rule replaced the message, the verdict (of whatever action) carries the
        replacement in ``message``: the glued message whose held parts a rejection concerns too.
        Rules that reserve state by the message's identity (dedup) come after the rules that
        replace it (`smpprelay.filters.build_chain`), so they see, and settle, the same object.
        """
        # The common case, every rule accepting as it is, in a loop with no index and no
        # try per rule (an exception costs nothing until one is raised).
        check = None
        try:
            for check in self._plain_checks if message.concat is None else self._checks:
                verdict = check(message, now)
                if verdict is not ACCEPT:
                    break
            else:
                self._passed += 1
                return ACCEPT
        except Exception:
            index = self._checks.index(check)  # bound methods compare by rule and function
            self.log.failure("rule {rule} failed; rejecting", rule=self.filters[index].name)
            verdict = reject(Status.ESME_RSYSERR, "rule_error")
        else:
            index = self._checks.index(check)
        return self._decide(message, now, index, verdict)

    def _decide(self, message: Message, now: float, index: int, verdict: Verdict) -> Verdict:
        """The chain's verdict from rule ``index`` on, that rule having answered ``verdict``
        and every rule before it accepted ``message`` as it is."""
        passed_on = ACCEPT
        checks = self._checks
        while True:
            # The identity test is the fast path; the action decides, so an equal
            # Verdict("accept") is an accept too.
            if verdict is ACCEPT or verdict.action == "accept":
                if verdict.message is not None:
                    message = verdict.message
                    passed_on = verdict
                index += 1
                if index == len(checks):
                    break
                try:
                    verdict = checks[index](message, now)
                except Exception:
                    self.log.failure("rule {rule} failed; rejecting", rule=self.filters[index].name)
                    verdict = reject(Status.ESME_RSYSERR, "rule_error")
                continue
            rule = self.filters[index]
            self._count(rule.name, verdict)
            if verdict.action == "reject":
                self._log_rejection(rule.name, message, verdict)
            # The rules before this one accepted a message that goes no further: count those
            # accepts, and release the state they reserved for it.
            accepted = self._accepted
            for earlier in self.filters[:index]:
                accepted[earlier.name] += 1
                if earlier.settles:
                    earlier.settle(message, now, None)
                if earlier.holds_parts and message.parts:
                    # A replay answers for a message the operator took; a refusal is final.
                    outcome: PartsOutcome = "accepted" if verdict.action == "replay" else "refused"
                    earlier.parts_settled(message, now, outcome)
            if passed_on is not ACCEPT:
                return verdict._replace(message=message)
            return verdict
        self._passed += 1
        return passed_on

    def expire(self, now: float) -> list[Dropped]:
        """Expire every rule's old state; return the held messages given up."""
        dropped: list[Dropped] = []
        for rule in self.filters:
            dropped.extend(rule.expire(now))
        return dropped

    def drop_all(self) -> list[Dropped]:
        """Give up every held message (the relay is stopping) and return them."""
        dropped: list[Dropped] = []
        for rule in self.filters:
            dropped.extend(rule.drop_all())
        return dropped

    def window_segment(self) -> bytes:
        """Every rule's window entries accepted or changed since the last call, packed to be
        written behind (`smpprelay.store.Store.save_windows`); call ten times a second."""
        # A window changes only when a message settles. Packed records concatenate.
        return b"".join([rule.window_segment() for rule in self._settled])

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        """Put back the windows loaded at start (`smpprelay.store.Loaded.windows`), before any
        traffic; each rule takes its own entries still live at ``now``. Returns how many."""
        return sum(rule.restore_windows(entries, now) for rule in self.filters)

    def restore_part(self, part: Message, first: float) -> None:
        """Put back a held part loaded at start (`smpprelay.store.HeldPart`, read again and
        given its ``app_message_id``), in the order they arrived, before any traffic. Raises
        `ValueError` for a part no rule can hold again; its receipt is then the caller's."""
        for rule in self._holders:
            rule.restore_part(part, first)

    def release_part(self, part: Message) -> None:
        """Undo the hold that the last `check` made for ``part`` (its verdict was ``hold``, and
        the store could not keep it, so the app is answered ESME_RMSGQFUL and sends it again)."""
        for rule in self._holders:
            try:
                rule.release_part(part)
            except Exception:
                self.log.failure("rule {rule} failed to release a part", rule=rule.name)

    def flush_counts(self) -> None:
        """Add the accepts counted since the last flush to the decisions metric."""
        passed, self._passed = self._passed, 0
        for name, count in self._accepted.items():
            if count + passed:
                self._count(name, ACCEPT, count + passed)
                self._accepted[name] = 0

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """Tell every rule what became of a message the chain accepted."""
        # One try for the common case; a rule that raises is logged and the rest still told.
        settle = None
        try:
            for settle in self._settles:
                settle(message, now, message_id)
        except Exception:
            failed = self._settles.index(settle)
            self.log.failure("rule {rule} failed to settle", rule=self._settled[failed].name)
            for index in range(failed + 1, len(self._settles)):
                try:
                    self._settles[index](message, now, message_id)
                except Exception:
                    self.log.failure("rule {rule} failed to settle", rule=self._settled[index].name)

    def settle_parts(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        """Tell the rules that hold parts what became of a glued message (after `settle`)."""
        for rule in self._holders:
            try:
                rule.parts_settled(message, now, outcome)
            except Exception:
                self.log.failure("rule {rule} failed to settle parts", rule=rule.name)

    def _count(self, name: str, verdict: Verdict, amount: int = 1) -> None:
        key = (name, verdict.action, verdict.reason)
        child = self._counters.get(key)
        if child is None:
            child = self.metrics.filter_decisions.labels(*key)
            self._counters[key] = child
        child.inc(amount)  # type: ignore[attr-defined]

    def _log_rejection(self, name: str, message: Message, verdict: Verdict) -> None:
        log_rejection(self.log, name, message, verdict)


def log_rejection(log: Logger, name: str, message: Message, verdict: Verdict) -> None:
    """The one line a rule's rejection of a submit gets (in one process or across instances)."""
    # Ids and lengths only: the message text never reaches the log.
    log.info(
        "{rule} rejected a submit from {account} to {destination} "
        "({reason}, {length} octets, dc {dc}): {status}",
        rule=name,
        account=message.account,
        destination=message.destination.decode("latin-1"),
        reason=verdict.reason,
        length=len(message.content),
        dc=message.data_coding,
        status=f"0x{verdict.status:02X}",
    )
