"""The dedup and flood rules across instances: one Lua script decides both, atomically.

API (the shared chain calls it):

``SharedWindows(link, prefix, dedup: DedupRule | None, flood: FloodRule | None, metrics, secret)``

- ``claim(message, now) -> Deferred[Verdict]``: ACCEPT (the message is reserved in flight in both
  windows), or the dedup rule's ``duplicate`` / ``in_flight`` / replay, or the flood rule's
  ``flood``; one script, one round trip.
- ``settle(message, now, message_id) -> None``: accepted (recorded, from ``now``) or released.

The rules are those of `smpprelay.filters.dedup` and `smpprelay.filters.flood`, word for word;
only where their state lives differs, and one answer: a message identical to one still in
flight is answered ``ESME_RMSGQFUL`` (retry later), not the dedup status, since across instances
"in flight" may also be a claim whose reply an outage lost. Because one script reads and
reserves both windows, Redis runs it whole before the next instance's, so two instances can
never both take the 51st message to a number or both pass one duplicate. Every instance's
submits share the link's one connection, so concurrent claims are pipelined.

Keys (``{prefix}w:``, binary after that):

- ``w:d:<digest>``: a message accepted, ``"<ms>:<id>"``, expiring ``dedup.window`` after it;
- ``w:i:<digest>``: a message in flight, the claim's token, expiring after ``claim_ttl``;
- ``w:f:<number>``: the streak, ``"<last ms>:<length>"``, expiring ``flood.gap`` after its last;
- ``w:g:<number>``: the messages in flight to it, a ZSET of claim tokens scored by when they
  were claimed; a claim older than ``claim_ttl`` no longer counts (its instance died between
  claim and settle), so a reservation never leaks.

The digest is the dedup rule's keyed BLAKE2b (`smpprelay.filters.dedup.stable_key`) with the
store's secret, so every instance keys a message alike. Times go to Lua as integer
milliseconds in strings: Lua numbers are doubles and a script's numbers are truncated.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.config import DedupRule, FloodRule
from smpprelay.filters.dedup import keyed_digest, stable_key
from smpprelay.message import ACCEPT, Message, Verdict, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.store.redis_link import RedisLink, RedisUnavailable, Script

# Reply codes of CLAIM.
_ACCEPTED, _IN_FLIGHT, _DUPLICATE, _FLOOD = 0, 1, 2, 3
# ARGV[1], a bit per rule: which keys come in KEYS.
_DEDUP, _FLOOD_BIT = 1, 2

# KEYS: [dedup done, dedup in flight] if the dedup bit, then [streak, in flight] if flood.
# ARGV[1]: "mode now claim_ttl window gap max_messages cutoff token", times in ms; cutoff: the
# claim time at or before which a claim no longer counts (now - claim_ttl). One packed
# argument, not eight: the client's encoding of each argument costs more than Lua's parse.
CLAIM = Script(
    "windows_claim",
    """
local mode, now_ms, ttl_ms, window, gap, limit, cutoff, token = string.match(ARGV[1],
  '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%-?%d+) (%S+)$')
mode = tonumber(mode)
local now = tonumber(now_ms)
local k = 1
if mode % 2 == 1 then
  local done = redis.call('GET', KEYS[1])
  if done then
    local sep = string.find(done, ':', 1, true)
    if now - tonumber(string.sub(done, 1, sep - 1)) < tonumber(window) then
      return {2, string.sub(done, sep + 1)}
    end
  end
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return {1}
  end
  k = 3
end
if mode >= 2 then
  local pending = KEYS[k + 1]
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', cutoff)
  local count = redis.call('ZCARD', pending)
  local streak = redis.call('GET', KEYS[k])
  if streak then
    local sep = string.find(streak, ':', 1, true)
    if now - tonumber(string.sub(streak, 1, sep - 1)) < tonumber(gap) then
      count = count + tonumber(string.sub(streak, sep + 1))
    end
  end
  if count >= tonumber(limit) then
    return {3}
  end
  redis.call('ZADD', pending, now_ms, token)
  redis.call('PEXPIRE', pending, ttl_ms)
end
if mode % 2 == 1 then
  redis.call('SET', KEYS[2], token, 'PX', ttl_ms)
end
return {0}
""",
)

# KEYS as CLAIM's. ARGV[1]: "mode now window gap accepted token" (times in ms, accepted 1 or
# 0); ARGV[2]: the id to record (octets, apart).
SETTLE = Script(
    "windows_settle",
    """
local mode, now, window, gap, accepted, token = string.match(ARGV[1],
  '^(%d+) (%d+) (%d+) (%d+) ([01]) (%S+)$')
mode = tonumber(mode)
accepted = accepted == '1'
local k = 1
if mode % 2 == 1 then
  if redis.call('GET', KEYS[2]) == token then
    redis.call('DEL', KEYS[2])
  end
  if accepted then
    redis.call('SET', KEYS[1], now .. ':' .. ARGV[2], 'PX', window)
  end
  k = 3
end
if mode >= 2 then
  redis.call('ZREM', KEYS[k + 1], token)
  if accepted then
    local length = 1
    local streak = redis.call('GET', KEYS[k])
    if streak then
      local sep = string.find(streak, ':', 1, true)
      if tonumber(now) - tonumber(string.sub(streak, 1, sep - 1)) < tonumber(gap) then
        length = tonumber(string.sub(streak, sep + 1)) + 1
      end
    end
    redis.call('SET', KEYS[k], now .. ':' .. string.format('%d', length), 'PX', gap)
  end
end
return 0
""",
)

# A claim never settled (its instance died, or the settle was lost in an outage) stops
# counting after this long by default: twice the longest an upstream answer can take.
DEFAULT_CLAIM_TTL = 120.0


# Outcomes kept for Redis's return at most (each expires in Redis after claim_ttl anyway).
MAX_UNSENT = 100_000


def _ms(seconds: float) -> bytes:
    return b"%d" % round(seconds * 1000)


class SharedWindows:
    """The dedup and flood rules, decided together in Redis for every instance at once."""

    log = Logger()

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        dedup: DedupRule | None,
        flood: FloodRule | None,
        metrics: Metrics,
        secret: bytes | Callable[[], bytes],
        claim_ttl: float = DEFAULT_CLAIM_TTL,
    ) -> None:
        if dedup is None and flood is None:
            raise ValueError("SharedWindows needs the dedup rule, the flood rule or both")
        self.link = link
        self.metrics = metrics
        self.claim_ttl = claim_ttl
        self._prefix = prefix.encode()
        # Read when a message is first keyed: the store may learn its secret when it opens.
        self._secret = secret
        self._keyed: tuple[bytes, hashlib.blake2b] | None = None
        self._mode = (_DEDUP if dedup else 0) | (_FLOOD_BIT if flood else 0)
        self._claim_ttl_ms = round(claim_ttl * 1000)
        # Read once: a change of scope or action means other keys and replies (a restart).
        self._replay = dedup is not None and dedup.action == "replay"
        self._dedup_client = dedup is not None and dedup.scope == "client"
        self._flood_client = flood is not None and flood.scope == "client"
        self.reconfigure(dedup, flood)
        # Claims in flight (by the message's identity) -> their keys and token.
        self._claims: dict[Message, tuple[list[bytes], bytes]] = {}
        self._tokens = itertools.count(1)
        self._token_prefix = os.urandom(6).hex().encode()
        # Decisions counted as plain integers, added to the metric by `flush_counts`.
        self._counts: dict[tuple[str, str, str], int] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}
        self.settles_lost = 0
        self._settle_problem = False
        # Outcomes Redis did not take (an outage), sent again before anything else once it
        # answers: a release of a claim whose reply was lost (the claim may have been made, and
        # would refuse the app's retry as in flight until it expired), an acceptance whose
        # record was lost (a retry of it must be a duplicate). Settling is idempotent (by token).
        self._unsent: list[tuple[list[bytes], tuple[bytes, bytes]]] = []
        link.on_change.append(self._link_changed)

    def reconfigure(self, dedup: DedupRule | None, flood: FloodRule | None) -> None:
        """Take a reloaded rule's window, gap, max_messages and status (which rules are on, the
        scopes and the action need a restart)."""
        self.dedup, self.flood = dedup, flood
        if dedup is not None:
            self._duplicate = reject(dedup.status, "duplicate")
            # Not the rule's final status: across instances "in flight" may be a claim whose
            # instance lost Redis's reply (released once Redis answers it again) or died (it
            # expires after claim_ttl). The app's retry then passes, or, once the first copy
            # is settled, is refused as the duplicate it is.
            self._in_flight = reject(Status.ESME_RMSGQFUL, "in_flight")
            self._window_ms = _ms(dedup.window)
        else:
            self._window_ms = b"0"
        if flood is not None:
            self._flood = reject(flood.status, "flood")
            self._gap_ms = _ms(flood.gap)
            self._max = b"%d" % flood.max_messages
        else:
            self._gap_ms, self._max = b"0", b"0"
        # The scripts' arguments that only a reload changes, formatted once.
        self._limits = b"%d %s %s %s" % (
            self._claim_ttl_ms,
            self._window_ms,
            self._gap_ms,
            self._max,
        )
        self._limits_settle = b"%s %s" % (self._window_ms, self._gap_ms)

    # --- keys -------------------------------------------------------------------------------

    def _digest(self, message: Message) -> bytes:
        secret = self._secret if isinstance(self._secret, bytes) else self._secret()
        if not secret:
            # The Redis store learns the shared secret from Redis: until then no instance
            # could key a message as the others do.
            raise RedisUnavailable("redis: the shared secret is not known yet")
        keyed = self._keyed
        if keyed is None or keyed[0] != secret:
            keyed = self._keyed = (secret, keyed_digest(secret))
        return stable_key(keyed[1], self._dedup_client, message)

    def keys(self, message: Message) -> list[bytes]:
        """The Redis keys ``message`` is decided by (see the module docstring)."""
        prefix = self._prefix
        keys = []
        if self._mode & _DEDUP:
            digest = self._digest(message)
            keys += [prefix + b"w:d:" + digest, prefix + b"w:i:" + digest]
        if self._mode & _FLOOD_BIT:
            number = message.fields.destination_addr
            if self._flood_client:
                number = message.account.encode() + b"\0" + number
            keys += [prefix + b"w:f:" + number, prefix + b"w:g:" + number]
        return keys

    # --- the rules --------------------------------------------------------------------------

    def claim(self, message: Message, now: float) -> Deferred[Verdict]:
        """Decide dedup and flood for ``message`` at ``now``; reserve it in flight if it
        passes. Fails with `RedisUnavailable` when Redis cannot decide."""
        try:
            keys = self.keys(message)
        except RedisUnavailable:
            return fail()
        if self._unsent:
            self._send_unsent()  # ahead of this claim on the one connection: Redis runs them first
        token = b"%s:%d" % (self._token_prefix, next(self._tokens))
        now_ms = round(now * 1000)
        args = (
            b"%d %d %s %d %s"
            % (self._mode, now_ms, self._limits, now_ms - self._claim_ttl_ms, token),
        )
        decided = self.link.run(CLAIM, keys, args)
        return decided.addCallbacks(
            self._decided,
            self._not_decided,
            callbackArgs=(message, keys, token),
            errbackArgs=(keys, token, now_ms),
        )

    def _not_decided(
        self, reason: Failure, keys: list[bytes], token: bytes, now_ms: int
    ) -> Failure:
        """No reply: Redis may have made the claim all the same. Release it once it answers."""
        params = b"%d %d %s 0 %s" % (self._mode, now_ms, self._limits_settle, token)
        self._keep_unsent(keys, (params, b""))
        return reason

    def _keep_unsent(self, keys: list[bytes], args: tuple[bytes, bytes]) -> None:
        if len(self._unsent) >= MAX_UNSENT:
            del self._unsent[: len(self._unsent) - MAX_UNSENT + 1]  # the oldest expire anyway
        self._unsent.append((keys, args))

    def _link_changed(self, up: bool) -> None:
        if up and self._unsent:
            self._send_unsent()

    def _send_unsent(self) -> None:
        unsent, self._unsent = self._unsent, []
        for keys, args in unsent:
            # Counted in ``settles_lost`` when first lost, not again per attempt.
            self.link.run(SETTLE, keys, args).addCallbacks(
                self._settled, self._not_settled, errbackArgs=(keys, args, False)
            )

    def _decided(self, reply: Any, message: Message, keys: list[bytes], token: bytes) -> Verdict:
        code = reply[0] if isinstance(reply, list) and reply else None
        dedup_on = bool(self._mode & _DEDUP)
        if code == _ACCEPTED:
            self._claims[message] = (keys, token)
            if dedup_on:
                self._note("dedup", "accept", "")
            if self._mode & _FLOOD_BIT:
                self._note("flood", "accept", "")
            return ACCEPT
        if code == _FLOOD:
            if dedup_on:
                self._note("dedup", "accept", "")  # it passed dedup; flood stopped it
            self._note("flood", "reject", "flood")
            return self._flood
        if code == _IN_FLIGHT:
            self._note("dedup", "reject", "in_flight")
            return self._in_flight
        if code == _DUPLICATE and len(reply) == 2:
            if self._replay:
                self._note("dedup", "replay", "")
                found = reply[1]
                return Verdict("replay", message_id=found if isinstance(found, bytes) else b"")
            self._note("dedup", "reject", "duplicate")
            return self._duplicate
        raise RedisUnavailable(f"redis: unexpected reply to {CLAIM.name}: {reply!r}")

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """Record an accepted message from ``now`` (dedup: its id; flood: its streak grows), or
        release one the operator did not take. Sent without waiting for the reply; a failure
        is logged (once per outage) and counted in ``settles_lost``: the claim then expires
        by itself after ``claim_ttl``."""
        claimed = self._claims.pop(message, None)
        if claimed is None:
            if message_id is None:
                return  # not one this rule let through, or already released
            # Accepted after it was released (the operator answered late): recorded all the
            # same, so that a retry of it is a duplicate and the streak counts it.
            claimed = (self.keys(message), b"")
        keys, token = claimed
        if message_id is None:
            accepted, recorded = b"0", b""
        else:
            # The app knows the message by the relay's id when it was given one.
            accepted, recorded = b"1", message.app_message_id or message_id
        params = b"%d %d %s %s %s" % (
            self._mode,
            round(now * 1000),
            self._limits_settle,
            accepted,
            token or b"-",  # never a claim's token: nothing in flight to take back
        )
        args = (params, recorded)
        self.link.run(SETTLE, keys, args).addCallbacks(
            self._settled, self._not_settled, errbackArgs=(keys, args)
        )

    def _settled(self, _: object) -> None:
        if self._settle_problem:
            self._settle_problem = False
            self.log.info("dedup/flood: settling in Redis again")

    def _not_settled(
        self, reason: Failure, keys: list[bytes], args: tuple[bytes, bytes], first: bool = True
    ) -> None:
        if first:
            self.settles_lost += 1
        self._keep_unsent(keys, args)
        if not self._settle_problem:
            self._settle_problem = True
            self.log.warn(
                "dedup/flood: a message's outcome could not be written to Redis ({why}); "
                "written once Redis answers again",
                why=reason.getErrorMessage(),
            )

    def release_all(self) -> int:
        """Forget the claims this instance holds without settling them (they expire in Redis);
        return how many."""
        count = len(self._claims)
        self._claims.clear()
        return count

    # --- metrics ----------------------------------------------------------------------------

    def _note(self, rule: str, action: str, reason: str) -> None:
        key = (rule, action, reason)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1

    def flush_counts(self) -> None:
        """Add the decisions counted since the last flush to
        ``smpprelay_filter_decisions_total`` (a locked increment per submit would cost more)."""
        counts, self._counts = self._counts, {}
        for key, count in counts.items():
            child = self._counters.get(key)
            if child is None:
                child = self._counters[key] = self.metrics.filter_decisions.labels(*key)
            child.inc(count)

    @property
    def unsettled(self) -> int:
        """Claims this instance made and has not settled yet."""
        return len(self._claims)


__all__ = ["CLAIM", "SETTLE", "SharedWindows"]
