"""Held receipts and MO in Redis, and their handover between instances.

API (`smpprelay.store.redis.RedisStore` delegates to it; `smpprelay.handover` consumes):

``RedisDeliveries(link, prefix, clock, instance=None)``

- ``hold(item: Held) -> Deferred[None]``: keep ``item`` for its account, durably, where every
  instance sees it (sets ``item.key``); fires once Redis has it.
- ``done(item: Held) -> None``: ``item`` reached its app (or expired): forget it.
- ``pending() -> int``: entries held for the accounts this instance knows of (last look).

How: one Redis stream per account, ``{prefix}q:{account}``, with one consumer group (``relay``)
that every instance reads as its own consumer (``instance``, random per process). An entry is
read by one instance (``XREADGROUP >``), stays pending on it while it is delivered, and is
removed (``XACK`` + ``XDEL``) once the app answered. An entry whose delivery failed is left
pending with its idle time set so that it can be claimed again after the retry interval
(`back`); one pending on an instance that died is claimed after ``claim_idle`` (``XAUTOCLAIM``,
`claim`). Why streams and not pub/sub: a stream keeps what nobody reads (the app is bound
nowhere) and says who holds what (the pending list), which is the acknowledgement the handover
needs; pub/sub forgets a message no instance is listening for.

A stream has no TTL (what it holds is kept until delivered); expired entries are removed by
`sweep` (one script per account: atomic, so two instances sweeping never count one twice).
Times go to Redis as integer milliseconds.

``item.key`` is the entry id packed into an int (``ms << 32 | seq``): `Held.key` is an int.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.store.redis_link import RedisLink, Script
from smpprelay.store.tables import DeliveryKind, Held

GROUP = "relay"

# Removes the expired entries at the head of one stream (entries are appended with one TTL, so
# oldest first is close to expiry order; a younger one's deadline stops the sweep). Returns the
# removed entries as {kind, account-free frame-less fields}: kind and attempts, for the log.
_SWEEP = Script(
    "held-sweep",
    """
local now = tonumber(ARGV[1])
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
local gone = {}
for _, entry in ipairs(entries) do
  local id, fields = entry[1], entry[2]
  local expires, kind, attempts = nil, 'receipt', '0'
  for i = 1, #fields, 2 do
    if fields[i] == 'expires' then expires = tonumber(fields[i + 1])
    elseif fields[i] == 'kind' then kind = fields[i + 1]
    elseif fields[i] == 'attempts' then attempts = fields[i + 1] end
  end
  if expires ~= nil and expires > now then break end
  redis.pcall('XACK', KEYS[1], ARGV[3], id)
  redis.call('XDEL', KEYS[1], id)
  table.insert(gone, {kind, attempts})
end
return gone
""",
)


def pack_id(entry_id: bytes | str) -> int:
    """A stream entry id (``ms-seq``) as one int."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms) << 32 | int(seq or 0)


def unpack_id(key: int) -> str:
    """The stream entry id packed by `pack_id`."""
    return f"{key >> 32}-{key & 0xFFFFFFFF}"


class Entry:
    """One held delivery read from a stream: the `Held` to deliver and who took it in."""

    __slots__ = ("item", "origin")

    def __init__(self, item: Held, origin: str) -> None:
        self.item = item
        self.origin = origin


class RedisDeliveries:
    """Held receipts and MO, one Redis stream per account, shared by every instance."""

    log = Logger()

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        clock: IReactorTime,
        instance: str | None = None,
    ) -> None:
        self.link = link
        self.prefix = prefix
        self.clock = clock
        # The consumer name: random per process, so a restarted instance is a new consumer and
        # what its previous life had pending is claimed like a dead instance's.
        self.instance = instance or os.urandom(6).hex()
        self._grouped: set[str] = set()  # accounts whose group this instance made sure of
        self._lengths: dict[str, int] = {}  # entries per account at the last look

    def key(self, account: str) -> str:
        """The stream of ``account``'s held deliveries."""
        return f"{self.prefix}q:{account}"

    # --- the store's side -------------------------------------------------------------------

    def hold(self, item: Held) -> Deferred[None]:
        """Append ``item`` to its account's stream; fires once Redis has it (sets ``item.key``)."""

        def added(entry_id: bytes) -> None:
            item.key = pack_id(entry_id)
            self._lengths[item.account] = self._lengths.get(item.account, 0) + 1

        return self.link.call(
            "XADD",
            self.key(item.account),
            "*",
            "kind",
            item.kind,
            "expires",
            int(item.expires * 1000),
            "attempts",
            item.attempts,
            "origin",
            self.instance,
            "frame",
            item.frame,
        ).addCallback(added)

    def done(self, item: Held) -> None:
        """Forget ``item`` (delivered, refused for good, or expired); fire-and-forget: lost at
        a crash, it is delivered once more, never lost."""
        if not item.key:
            return
        key, entry_id = self.key(item.account), unpack_id(item.key)
        self.link.call("XACK", key, GROUP, entry_id).addErrback(self._not_forgotten, item)
        self.link.call("XDEL", key, entry_id).addErrback(self._not_forgotten, item)
        if self._lengths.get(item.account):
            self._lengths[item.account] -= 1

    def _not_forgotten(self, reason: Failure, item: Held) -> None:
        self.log.warn(
            "held {kind} for {account} delivered but not removed from redis ({why}); it may "
            "be delivered once more",
            kind=item.kind,
            account=item.account,
            why=reason.getErrorMessage(),
        )

    def pending(self) -> int:
        """Entries held for the accounts this instance knows of, at the last look."""
        return sum(self._lengths.values())

    def count(self, account: str) -> int:
        """Entries held for ``account`` at the last look."""
        return self._lengths.get(account, 0)

    # --- the consumer's side ----------------------------------------------------------------

    def back(self, item: Held, after: float, claim_idle: float) -> None:
        """``item``'s delivery failed: leave it pending and make it claimable ``after`` seconds
        from now (its idle time is set to ``claim_idle - after``)."""
        idle = max(0, int((claim_idle - after) * 1000))
        self.link.call(
            "XCLAIM",
            self.key(item.account),
            GROUP,
            self.instance,
            0,
            unpack_id(item.key),
            "IDLE",
            idle,
            "JUSTID",
        ).addErrback(self._not_put_back, item)

    def _not_put_back(self, reason: Failure, item: Held) -> None:
        # Still pending here: claimed after claim_idle instead of the retry interval.
        self.log.info(
            "held {kind} for {account}: retry not scheduled in redis ({why})",
            kind=item.kind,
            account=item.account,
            why=reason.getErrorMessage(),
        )

    def read(self, account: str, count: int) -> Deferred[list[Entry]]:
        """Up to ``count`` entries of ``account`` no instance has read yet, now this one's."""
        key = self.key(account)

        def got(reply: Any) -> list[Entry]:
            if not reply:
                return []
            return self._entries(account, reply[0][1])

        return self._grouped_call(
            account,
            "XREADGROUP",
            "GROUP",
            GROUP,
            self.instance,
            "COUNT",
            count,
            "STREAMS",
            key,
            ">",
        ).addCallback(got)

    def claim(self, account: str, idle: float, count: int) -> Deferred[list[Entry]]:
        """Up to ``count`` entries of ``account`` pending (on any instance) for ``idle``
        seconds or more, now this one's."""
        key = self.key(account)

        def got(reply: Any) -> list[Entry]:
            entries = self._entries(account, reply[1])
            # Entries removed while pending (Redis 7 lists them apart, and drops them from the
            # pending list itself); Redis 6.2 gives them as nil entries (skipped above).
            return entries

        return self._grouped_call(
            account,
            "XAUTOCLAIM",
            key,
            GROUP,
            self.instance,
            int(idle * 1000),
            "0-0",
            "COUNT",
            count,
        ).addCallback(got)

    def _grouped_call(self, account: str, *args: Any) -> Deferred[Any]:
        # Creates the group at the stream's start (id 0) the first time, so nothing held before
        # any instance consumed the account is missed; NOGROUP (Redis lost its data) again.
        key = self.key(account)

        def call(_: object = None) -> Deferred[Any]:
            return self.link.call(*args).addErrback(no_group)

        def no_group(reason: Failure) -> Failure:
            if "NOGROUP" in reason.getErrorMessage():
                self._grouped.discard(account)
            return reason

        if account in self._grouped:
            return call()

        def made(_: object) -> None:
            self._grouped.add(account)

        def exists(reason: Failure) -> Failure | None:
            if "BUSYGROUP" in reason.getErrorMessage():
                self._grouped.add(account)
                return None
            return reason

        created = self.link.call("XGROUP", "CREATE", key, GROUP, "0", "MKSTREAM")
        return created.addCallbacks(made, exists).addCallback(call)

    def _entries(self, account: str, raw: Sequence[Any]) -> list[Entry]:
        entries = []
        for entry in raw:
            if not entry or entry[1] is None:
                continue
            fields = entry[1]
            values = {
                (k.decode() if isinstance(k, bytes) else k): v
                for k, v in zip(fields[::2], fields[1::2], strict=True)
            }
            try:
                kind: DeliveryKind = "mo" if values["kind"] == b"mo" else "receipt"
                item = Held(
                    kind,
                    account,
                    bytes(values["frame"]),
                    int(values["expires"]) / 1000,
                    int(values.get("attempts", 0)),
                    pack_id(entry[0]),
                )
                origin = bytes(values.get("origin", b"")).decode("latin-1")
            except (KeyError, ValueError, TypeError):
                # Not ours (written by hand?): removed, said, never retried forever.
                self.log.warn("held entry {id} for {account} unreadable; removed", id=entry[0],
                              account=account)  # fmt: skip
                key = self.key(account)
                self.link.call("XACK", key, GROUP, entry[0]).addErrback(lambda _: None)
                self.link.call("XDEL", key, entry[0]).addErrback(lambda _: None)
                continue
            entries.append(Entry(item, origin))
        return entries

    def sweep(self, account: str, batch: int = 100) -> Deferred[list[tuple[DeliveryKind, int]]]:
        """Remove ``account``'s expired entries; fires with (kind, attempts) of each."""
        now = int(self.clock.seconds() * 1000)

        def swept(reply: Any) -> list[tuple[DeliveryKind, int]]:
            gone: list[tuple[DeliveryKind, int]] = []
            for kind, attempts in reply or ():
                gone.append(("mo" if kind == b"mo" else "receipt", int(attempts)))
            return gone

        return self.link.run(_SWEEP, [self.key(account)], [now, batch, GROUP]).addCallback(swept)

    def measure(self, accounts: Iterable[str]) -> Deferred[dict[str, int]]:
        """Look up how many entries each of ``accounts`` holds (XLEN, pipelined)."""
        names = list(accounts)

        def got(lengths: list[Any]) -> dict[str, int]:
            for account, length in zip(names, lengths, strict=True):
                self._lengths[account] = int(length)
            return dict(self._lengths)

        looks = [self.link.call("XLEN", self.key(a)) for a in names]
        return gatherResults(looks, consumeErrors=True).addCallback(got)
