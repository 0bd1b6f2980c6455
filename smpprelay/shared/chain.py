"""The operator's rules for several instances: a verdict that comes back as a Deferred.

The order is `smpprelay.filters.build_chain`'s: encoding (stateless, checked here, in this
process, by `EncodingFilter`), concat (`SharedConcat`: parts are assembled in Redis, and the
glued message goes on from the one instance whose part completed it, its IA5 parts
transcoded as one text), then dedup and flood together (`SharedWindows`: one script).

`SharedChain` answers the relay as `smpprelay.filters.base.FilterChain` does, but for
``check`` (and ``expire``), which return Deferreds; what the in-process chain keeps for a
restart (windows, held parts) is in Redis already, so those calls have nothing to do. A check
that Redis cannot answer fails with `smpprelay.store.redis_link.RedisUnavailable`: the relay
answers ESME_RMSGQFUL and nothing is accepted unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.config import ConcatRule, Config, FiltersConfig
from smpprelay.filters.base import Dropped, Filter, PartsOutcome, log_rejection
from smpprelay.filters.encoding import EncodingFilter
from smpprelay.message import ACCEPT, Message, Verdict, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.shared.concat import SharedConcat
from smpprelay.shared.windows import DEFAULT_CLAIM_TTL, SharedWindows
from smpprelay.store import WindowEntry
from smpprelay.store.redis import RedisStore


class Concat(Protocol):
    """What the chain calls of `smpprelay.shared.concat.SharedConcat`."""

    def check(self, message: Message, now: float) -> Deferred[Verdict]: ...

    def parts_settled(self, message: Message, now: float, outcome: PartsOutcome) -> None: ...

    def expire(self, now: float) -> Deferred[list[Dropped]]: ...

    def reconfigure(self, config: ConcatRule) -> None: ...


class SharedChain:
    """Encoding here, then concat and dedup+flood in Redis; ``check`` answers a Deferred."""

    log = Logger()

    def __init__(
        self,
        encoding: EncodingFilter | None,
        concat: Concat | None,
        windows: SharedWindows | None,
        metrics: Metrics,
    ) -> None:
        self.encoding = encoding
        self.concat = concat
        self.windows = windows
        self.metrics = metrics
        # The rules that run in this process, for a reload's `reconfigure` and the queries.
        self.filters: list[Filter] = [encoding] if encoding is not None else []
        self.holds_parts = concat is not None
        self._encoding_accepts = 0
        self._counters: dict[tuple[str, str, str], object] = {}

    @property
    def answering(self) -> bool:
        """False while Redis is known not to answer (a verdict may still come from a local
        rule meanwhile: an encoding rejection)."""
        return self.windows is None or self.windows.link.writable

    # --- the verdict ------------------------------------------------------------------------

    def check(self, message: Message, now: float) -> Deferred[Verdict]:
        """The chain's verdict; as `FilterChain.check`, a replacement travels in
        ``verdict.message``. Fails with `RedisUnavailable` when Redis cannot decide."""
        passed_on = ACCEPT
        encoding = self.encoding
        if encoding is not None:
            try:
                verdict = encoding.check(message, now)
            except Exception:
                self.log.failure("rule encoding failed; rejecting")
                verdict = reject(Status.ESME_RSYSERR, "rule_error")
            if verdict.action != "accept":
                self._rejected("encoding", message, verdict)
                return succeed(verdict)
            self._encoding_accepts += 1
            if verdict.message is not None:
                message, passed_on = verdict.message, verdict
        if message.concat is not None and self.concat is not None:
            return self.concat.check(message, now).addCallback(self._after_concat, now)
        if self.windows is None:
            return succeed(passed_on)
        return self.windows.claim(message, now).addCallback(self._claimed, message, passed_on)

    def _after_concat(self, verdict: Verdict, now: float) -> Verdict | Deferred[Verdict]:
        if verdict.action != "accept":
            return verdict  # hold, or the concat rule's own rejection or replay (it counts them)
        glued = verdict.message
        if glued is None or self.windows is None:
            return verdict
        claimed = self.windows.claim(glued, now)
        return claimed.addCallbacks(
            self._glued_claimed,
            self._glued_unchecked,
            callbackArgs=(glued, verdict, now),
            errbackArgs=(glued, now),
        )

    def _glued_claimed(
        self, verdict: Verdict, glued: Message, passed_on: Verdict, now: float
    ) -> Verdict:
        if verdict is ACCEPT:
            return passed_on
        assert self.concat is not None
        # A replay answers for a message the operator took; a refusal is final.
        outcome: PartsOutcome = "accepted" if verdict.action == "replay" else "refused"
        self.concat.parts_settled(glued, now, outcome)
        return self._claimed(verdict, glued, passed_on)

    def _glued_unchecked(self, reason: Failure, glued: Message, now: float) -> Failure:
        # The app's retry of the completing part must complete the message again.
        assert self.concat is not None
        self.concat.parts_settled(glued, now, "retry")
        return reason

    def _claimed(self, verdict: Verdict, message: Message, passed_on: Verdict) -> Verdict:
        if verdict is ACCEPT:
            return passed_on
        if verdict.action == "reject":
            rule = "flood" if verdict.reason == "flood" else "dedup"
            self._log_rejection(rule, message, verdict)
        if passed_on is not ACCEPT:
            return verdict._replace(message=message)
        return verdict

    def _rejected(self, rule: str, message: Message, verdict: Verdict) -> None:
        self._count(rule, verdict.action, verdict.reason)
        if verdict.action == "reject":
            self._log_rejection(rule, message, verdict)

    def _log_rejection(self, name: str, message: Message, verdict: Verdict) -> None:
        log_rejection(self.log, name, message, verdict)

    def reconfigure(self, filters: FiltersConfig) -> None:
        """Give each rule its reloaded values (a reload, `smpprelay.reload`). Which rules run
        is decided at start: a rule enabled or disabled by the reload stays as it was."""
        if self.encoding is not None:
            self.encoding.reconfigure(filters.encoding)
        if self.concat is not None:
            self.concat.reconfigure(filters.concat)
        windows = self.windows
        if windows is not None:
            windows.reconfigure(
                filters.dedup if windows.dedup is not None else None,
                filters.flood if windows.flood is not None else None,
            )

    # --- what became of a message -----------------------------------------------------------

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """The operator accepted ``message`` under ``message_id``, or (None) did not."""
        if self.encoding is not None:
            try:
                self.encoding.settle(message, now, message_id)
            except Exception:
                self.log.failure("rule encoding failed to settle")
        if self.windows is not None:
            self.windows.settle(message, now, message_id)

    def settle_parts(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        """What became of a glued message (after `settle`): its parts leave Redis or stay."""
        if self.concat is not None:
            try:
                self.concat.parts_settled(message, now, outcome)
            except Exception:
                self.log.failure("rule concat failed to settle parts")

    def expire(self, now: float) -> Deferred[list[Dropped]]:
        """The concatenated messages whose window ended, each given to one instance only."""
        if self.concat is None:
            return succeed([])
        return self.concat.expire(now)

    def drop_all(self) -> list[Dropped]:
        """Nothing: held parts stay in Redis for the other instances (or the next start)."""
        return []

    def window_segment(self) -> bytes:
        """Nothing to write behind: the windows are in Redis."""
        return b""

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        """Nothing to put back: the windows are in Redis."""
        return 0

    def restore_part(self, part: Message, first: float) -> None:
        """Nothing to put back: held parts are in Redis."""

    def release_part(self, part: Message) -> None:
        """Nothing to undo: a part is held once Redis has it, and only then answered."""

    def flush_counts(self) -> None:
        """Add the decisions counted since the last flush to the decisions metric."""
        accepts, self._encoding_accepts = self._encoding_accepts, 0
        if accepts:
            self._count("encoding", "accept", "", accepts)
        if self.windows is not None:
            self.windows.flush_counts()

    def count_unchecked(self) -> None:
        """A submit Redis could not decide (answered ESME_RMSGQFUL by the relay)."""
        self._count("shared", "reject", "redis_unavailable")

    def _count(self, rule: str, action: str, reason: str, amount: int = 1) -> None:
        key = (rule, action, reason)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.filter_decisions.labels(*key)
        child.inc(amount)  # type: ignore[attr-defined]


def build_shared_chain(
    config: Config, upstream_iso: bool, metrics: Metrics, store: RedisStore
) -> SharedChain:
    """The enabled rules for several instances on one Redis, in `build_chain`'s order, on the
    Redis store's link and key prefix (``store.link``, ``store.prefix``).

    The dedup digest is keyed with ``store.secret``, read when first needed (the store may
    learn it from Redis when it opens). A message in flight counts in the dedup and flood
    windows, should its instance never say what became of it, for twice the longest an
    upstream may queue it and wait for its answer (`SharedWindows`'s ``claim_ttl``).
    """
    link, prefix = store.link, store.prefix
    filters = config.filters
    claim_ttl = max(
        (2 * (each.queue_timeout + each.response_timeout) for each in config.operators),
        default=DEFAULT_CLAIM_TTL,  # the built-in simulated SMSC answers at once
    )
    encoding = None
    if filters.encoding.enabled:
        encoding = EncodingFilter(filters.encoding, upstream_iso, metrics)
    concat: SharedConcat | None = None
    if filters.concat.enabled:
        transcode = None
        if encoding is not None:
            # IA5 parts are transcoded as one text when glued, as in one process.
            encoding.glues_parts = True
            transcode = encoding.transcode_glued
        concat = SharedConcat(
            link, prefix, filters.concat, metrics, transcode, config.limits.max_tlvs
        )
    windows = None
    dedup = filters.dedup if filters.dedup.enabled else None
    flood = filters.flood if filters.flood.enabled else None
    if dedup is not None or flood is not None:
        windows = SharedWindows(
            link, prefix, dedup, flood, metrics, lambda: store.secret, claim_ttl
        )
    metrics.watch_unsent(lambda: _unsent(concat, windows))
    return SharedChain(encoding, concat, windows, metrics)


def _unsent(concat: SharedConcat | None, windows: SharedWindows | None) -> dict[str, int]:
    """Outcomes each running shared rule could not write to Redis, for the scrape."""
    unsent = {}
    if windows is not None:
        unsent["dedup_flood"] = windows.settles_lost
    if concat is not None:
        unsent["concat"] = concat.settles_lost
    return unsent
