"""The concatenation rule across instances: parts are assembled in Redis.

API (implemented by the concat work; the shared chain calls it):

``SharedConcat(link, prefix, config: ConcatRule, metrics, transcode, max_tlvs)``

- ``check(message, now) -> Deferred[Verdict]`` for a part (``message.concat`` set, its
  ``app_message_id`` issued): ``Verdict("hold")`` once the part is in Redis (the relay then
  answers ESME_ROK with ``message.app_message_id`` at once: the part is as durable as Redis);
  ``accept(glued)`` when this part completed the message (exactly one instance ever gets it;
  ``glued.parts`` are the parts in sequence order, read from their frames, each with its
  ``app_message_id`` and ``receipt_as``); ``reject(...)`` or ``Verdict("replay", message_id=...)``
  with the reasons of `smpprelay.filters.concat.ConcatFilter`.
- ``parts_settled(message, now, outcome) -> None``: "accepted" or "refused" close the message;
  "retry" puts its held parts back so the app's retry of the completing part completes it again.
- ``expire(now) -> Deferred[list[Dropped]]``: the messages whose window ended, each claimed by
  exactly one instance (whose relay sends their parts' EXPIRED receipts).
- ``find_held_part``, ``cancel_held_part``, ``replace_held_part``
  (`smpprelay.shared.held.HeldParts`): query_sm, cancel_sm and replace_sm of a held part, by
  the id its app was given, through whichever instance it was held.

The rule is `ConcatFilter`'s (its docstring is the spec), each decision one Lua script
(`smpprelay.shared.concat_scripts`, where the keys are described): two instances given the last
two parts of a message at the same moment are ordered by Redis, so one holds its part and the
other gets every part and the glued message. A Redis that cannot be reached fails `check` with
`RedisUnavailable` (the relay answers ``ESME_RMSGQFUL``: nothing is held unchecked).

Differences from the in-process rule: a message whose instance died while the operator had it
(nobody tells its fate) is given up by the expiry two windows after its first part, so its held
parts still get receipts; the held-bytes caps count a part as its frame plus `PART_COST`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.config import ConcatRule
from smpprelay.filters.base import Dropped, PartsOutcome
from smpprelay.message import ACCEPT, Message, Verdict, accept, glue, read_message, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import DecodeError, Status
from smpprelay.shared.concat_scripts import CANCEL, CHECK, EXPIRE, FIND, REPLACE, SETTLE
from smpprelay.shared.held import HeldRef
from smpprelay.store.redis_link import RedisLink

HOLD = Verdict("hold")
# What a held part costs Redis beyond its frame: hash fields for its id and arrival, index
# entries (an estimate; the caps are for a runaway app, not for accounting).
PART_COST = 256
# Messages one expiry claims at most (it runs about once a second on every instance).
EXPIRE_BATCH = 1000
# Outcomes that could not be written (Redis down), kept to be sent again by the next expiry.
MAX_UNSETTLED = 10_000


class SharedConcat:
    """Holds the parts of a concatenated message in Redis until it is whole, within its window;
    the instance whose part completes it is the one that sends it."""

    name: ClassVar[str] = "concat"
    holds_parts: ClassVar[bool] = True
    log = Logger()

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        config: ConcatRule,
        metrics: Metrics,
        transcode: Callable[[Message], Message] | None = None,
        max_tlvs: int = pdu.DEFAULT_MAX_TLVS,
    ) -> None:
        self.link = link
        self.prefix = prefix
        self.metrics = metrics
        self.transcode = transcode
        self.max_tlvs = max_tlvs
        self._open_key = f"{prefix}c:open"
        self._held_key = f"{prefix}c:held"
        self._held_by_account = f"{prefix}c:held:a"
        self._counters: dict[tuple[str, str], Any] = {}
        self._accepted = 0  # counted in a plain int, added to the metric by `flush_counts`
        self._unsettled: list[tuple[Message, float, PartsOutcome]] = []
        # Outcomes Redis did not take when they happened (counted once each, however often they
        # are sent again): `smpprelay_shared_outcomes_unsent_total{rule="concat"}`.
        self.settles_lost = 0
        # Read from Redis by each expiry, shown by the gauges (a scrape cannot wait for Redis).
        self.open_count = 0
        self.held_bytes = 0
        metrics.concat_open.set_function(lambda: self.open_count)
        metrics.concat_held_bytes.set_function(lambda: self.held_bytes)
        self.reconfigure(config)
        # Scripts loaded whenever Redis comes (back) up: else the first burst after a restart
        # sends every script whole, once per submit in flight (each EVALSHA fails NOSCRIPT).
        link.on_change.append(self._load_scripts)
        self._load_scripts(link.writable)

    def _load_scripts(self, up: bool) -> None:
        if up:
            for script in (CHECK, SETTLE, EXPIRE, FIND, CANCEL, REPLACE):
                self.link.call("SCRIPT", "LOAD", script.source).addErrback(_ignore)

    def reconfigure(self, config: ConcatRule) -> None:
        """Take a reloaded rule's values; the open messages stay, judged by them from now."""
        self.config = config
        self._window = int(config.window * 1000)
        self._malformed = reject(config.status, "malformed")
        self._rejects = {
            b"late": reject(config.status, "late"),
            b"duplicate_part": reject(config.status, "duplicate_part"),
            b"reference_reused": reject(config.status, "reference_reused"),
            b"full": reject(Status.ESME_RMSGQFUL, "full"),
        }

    # --- a part -----------------------------------------------------------------------------

    def check(self, message: Message, now: float) -> Deferred[Verdict]:
        """Hold a part, glue the part that completes its message, or reject a bad part; fails
        with `RedisUnavailable` when Redis cannot decide."""
        concat = message.concat
        if concat is None:
            return succeed(ACCEPT)
        reference, total, sequence, _ = concat
        if total < 2 or sequence < 1 or sequence > total:
            return succeed(self._count(self._malformed))
        prefix = self.prefix
        member = self._member(message, reference)
        account = message.account
        window = self._window
        now_ms = int(now * 1000)
        keys = (
            f"{prefix}c:m:{member}",
            f"{prefix}c:x:{member}:{total}",
            self._open_key,
            f"{prefix}c:o:{account.encode().hex()}",
            self._held_key,
            self._held_by_account,
            self._id_key(message.app_message_id),
        )
        config = self.config
        args = (
            member,
            total,
            sequence,
            now_ms,
            window,
            3 * window,
            config.max_open,
            config.max_open_per_account,
            config.max_held_bytes,
            config.max_held_bytes_per_account,
            account,
            message.frame,
            message.app_message_id,
            _meta(now_ms, message),
            len(message.frame) + PART_COST,
        )
        return self.link.run(CHECK, keys, args).addCallback(self._decided, message, now)

    def _decided(self, reply: list[Any], message: Message, now: float) -> Verdict:
        action = reply[0]
        if action == b"hold":
            return self._count(HOLD)
        if action == b"replay":
            return self._count(Verdict("replay", reason="held_part_resent", message_id=reply[1]))
        if action == b"reject":
            return self._count(self._rejects[reply[1]])
        concat = message.concat
        assert concat is not None
        try:
            held = {s: part for s, _, part in _parts(message.account, reply[1:], self.max_tlvs)}
        except DecodeError as error:
            # Each was read by a relay before it was held; one with a lower max_tlvs cannot.
            self.log.warn(
                "{account}: a held part cannot be read again ({error}); message refused",
                account=message.account,
                error=str(error),
            )
            self.parts_settled(message, now, "refused")
            return self._count(reject(Status.ESME_RSYSERR, "unreadable_part"))
        held[concat.sequence] = message
        parts = tuple(held[number] for number in range(1, concat.total + 1))
        self._accepted += 1
        return accept(glue(message, parts, [part.content for part in parts], self.transcode))

    def _count(self, verdict: Verdict) -> Verdict:
        key = (verdict.action, verdict.reason)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.filter_decisions.labels("concat", *key)
        child.inc()
        return verdict

    def flush_counts(self) -> None:
        """Add the accepts counted since the last flush to the decisions metric."""
        accepted, self._accepted = self._accepted, 0
        if accepted:
            self.metrics.filter_decisions.labels("concat", "accept", "").inc(accepted)

    @staticmethod
    def _member(message: Message, reference: int) -> str:
        """The message's name in Redis: (account, source, destination, reference), unambiguous."""
        fields = message.fields
        return (
            f"{message.account.encode().hex()}:{fields.source_addr.hex()}:"
            f"{fields.destination_addr.hex()}:{reference}"
        )

    def _id_key(self, app_id: bytes) -> bytes:
        """The index from a part's relay id to its message (see `concat_scripts`)."""
        return b"%sc:id:%s" % (self.prefix.encode(), app_id)

    # --- query_sm, cancel_sm, replace_sm of a held part (smpprelay.shared.held) -------------

    def find_held_part(self, account: str, app_id: bytes) -> Deferred[HeldRef | None]:
        """The part ``account`` was given ``app_id`` for, while Redis holds it (any instance
        may have held it); fails with `RedisUnavailable`."""
        args = (self.prefix, app_id, account.encode().hex())
        return self.link.run(FIND, (), args).addCallback(self._found, account, app_id)

    def _found(self, reply: list[Any], account: str, app_id: bytes) -> HeldRef | None:
        if not reply:
            return None
        sequence, frame, meta, first, with_operator = reply
        try:
            _, part = _part(account, frame, app_id, meta, self.max_tlvs)
        except DecodeError as error:
            # Read by a relay before it was held; one with a lower max_tlvs cannot.
            self.log.warn(
                "{account}: held part {id} cannot be read again ({error}); taken as unknown",
                account=account,
                id=app_id.decode("latin-1"),
                error=str(error),
            )
            return None
        return HeldRef(part, int(sequence), int(first) / 1000, with_operator == 1)

    def cancel_held_part(self, held: HeldRef, now: float) -> Deferred[Dropped | None]:
        """Drop the open message of ``held`` (closed, so its later parts are refused) and return
        its held parts; None when it is no longer held or the operator has it now."""
        part = held.part
        account = part.account
        args = (self.prefix, part.app_message_id, account.encode().hex(), int(now * 1000))
        return self.link.run(CANCEL, (), (*args, self._window)).addCallback(
            self._cancelled, account
        )

    def _cancelled(self, reply: list[Any], account: str) -> Dropped | None:
        if reply[0] != b"cancelled":
            return None
        _, first, fields = reply
        try:
            parts = _parts(account, fields, self.max_tlvs)
        except DecodeError as error:
            self.log.warn(
                "{account}: a cancelled message's part cannot be read ({error}); its parts "
                "get no receipt",
                account=account,
                error=str(error),
            )
            parts = []
        parts.sort(key=lambda each: (each[1], each[0]))  # in the order they arrived
        return Dropped(account, int(first) / 1000, [each for _, _, each in parts], "cancelled")

    def replace_held_part(self, held: HeldRef, part: Message) -> Deferred[int]:
        """Put ``part``'s frame in place of ``held``'s, within the held-bytes caps: the status to
        answer (`smpprelay.shared.held.HeldParts`); fails with `RedisUnavailable`."""
        config = self.config
        args = (
            self.prefix,
            part.app_message_id,
            part.account.encode().hex(),
            part.frame,
            config.max_held_bytes,
            config.max_held_bytes_per_account,
        )
        return self.link.run(REPLACE, (), args).addCallback(_REPLACED.__getitem__)

    # --- a glued message's fate -------------------------------------------------------------

    def parts_settled(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        """What became of a glued message this rule passed on: close it, or keep its held parts
        for the app's retry of the completing part (``retry``). Not written (Redis down): sent
        again by the next `expire`, since until then the message stays with the operator."""
        self._settle(message, now, outcome).addErrback(
            self._not_settled, message, now, outcome, True
        )

    def _settle(self, message: Message, now: float, outcome: PartsOutcome) -> Deferred[Any]:
        concat = message.concat
        if concat is None:
            return succeed(0)
        args = (
            self.prefix,
            self._member(message, concat.reference),
            concat.sequence,
            message.app_message_id,
            outcome,
            int(now * 1000),
            self._window,
            3 * self._window,
        )
        return self.link.run(SETTLE, (), args)

    def _not_settled(
        self, reason: Failure, message: Message, now: float, outcome: PartsOutcome, first: bool
    ) -> None:
        if first:
            self.settles_lost += 1
        self.log.warn(
            "{account}: a glued message's outcome ({outcome}) not written to redis ({why}); "
            "retried",
            account=message.account,
            outcome=outcome,
            why=reason.getErrorMessage(),
        )
        if len(self._unsettled) < MAX_UNSETTLED:
            self._unsettled.append((message, now, outcome))

    # --- expiry -----------------------------------------------------------------------------

    def expire(self, now: float) -> Deferred[list[Dropped]]:
        """Claim the messages whose window ended (each goes to exactly one instance) and return
        them with their held parts, so that their receipts are sent. Run about once a second;
        fails with `RedisUnavailable` when Redis cannot be reached (the next run claims them)."""
        unsettled, self._unsettled = self._unsettled, []
        for message, settled_at, outcome in unsettled:
            self._settle(message, settled_at, outcome).addErrback(
                self._not_settled, message, settled_at, outcome, False
            )
        self.flush_counts()
        self.link.call("ZCARD", self._open_key).addCallbacks(self._opened, _ignore)
        self.link.call("GET", self._held_key).addCallbacks(self._held, _ignore)
        args = (self.prefix, int(now * 1000), self._window, EXPIRE_BATCH)
        return self.link.run(EXPIRE, (), args).addCallback(self._expired)

    def _opened(self, count: int) -> None:
        self.open_count = count

    def _held(self, value: bytes | None) -> None:
        self.held_bytes = int(value or 0)

    def _expired(self, reply: list[list[Any]]) -> list[Dropped]:
        dropped: list[Dropped] = []
        for raw_account, first, fields in reply:
            account = raw_account.decode()
            try:
                parts = _parts(account, fields, self.max_tlvs)
            except DecodeError as error:
                self.log.warn(
                    "{account}: an expired message's part cannot be read ({error}); its "
                    "parts get no receipt",
                    account=account,
                    error=str(error),
                )
                continue
            # In the order they arrived (as `ConcatFilter` gives them), by sequence within a ms.
            parts.sort(key=lambda held: (held[1], held[0]))
            arrived = [part for _, _, part in parts]
            dropped.append(Dropped(account, int(first) / 1000, arrived, "expired"))
        return dropped


def _meta(now_ms: int, message: Message) -> bytes:
    """What a held part keeps besides its frame and id: arrival, app_iso, receipt_as."""
    return b"%d:%d:%s" % (now_ms, message.app_iso, message.receipt_as)


def _parts(account: str, flat: Sequence[Any], max_tlvs: int) -> list[tuple[int, int, Message]]:
    """Held parts from a script's reply (sequence, frame, id, meta, ...), read again: each as
    (sequence, arrival in ms, part)."""
    parts = []
    for index in range(0, len(flat), 4):
        sequence, frame, app_id, meta = flat[index : index + 4]
        arrived, part = _part(account, frame, app_id, meta, max_tlvs)
        parts.append((int(sequence), arrived, part))
    return parts


def _part(
    account: str, frame: bytes, app_id: bytes, meta: bytes, max_tlvs: int
) -> tuple[int, Message]:
    """A held part read again from its frame and `_meta`: (arrival in ms, part)."""
    arrived, iso, receipt_as = meta.split(b":", 2)
    part = read_message(account, frame, iso == b"1", max_tlvs)
    part.app_message_id = app_id
    part.receipt_as = receipt_as
    return int(arrived), part


# REPLACE's replies, as the status replace_sm is answered.
_REPLACED = {
    b"replaced": Status.ESME_ROK,
    b"full": Status.ESME_RMSGQFUL,
    b"with_operator": Status.ESME_RREPLACEFAIL,
    b"gone": Status.ESME_RINVMSGID,
}


def _ignore(reason: Failure) -> None:
    """A gauge's reading or a script's loading that failed: what depends on Redis fails too,
    and says why (the link logs the outage)."""
