"""Held receipts and MO in Redis, and their handover between instances.

API (implemented by the handover work; `smpprelay.store.redis.RedisStore` delegates to it):

``RedisDeliveries(link, prefix, clock)``

- ``hold(item: Held) -> Deferred[None]``: keep ``item`` for its account, durably, where every
  instance sees it (sets ``item.key``); fires once Redis has it.
- ``done(item: Held) -> None``: ``item`` reached its app (or expired): forget it.
- ``pending() -> int``: items this instance holds and has not seen done (for the stats).

This version only keeps them (one stream per account, ``{prefix}q:{account}``); the handover
between instances replaces it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.store.redis_link import RedisLink
from smpprelay.store.tables import Held

__all__ = ["RedisDeliveries"]

# A stream id "ms-seq" as one positive int: ms above, the sequence in the low bits.
SEQ_BITS = 20


def key_of(stream_id: bytes) -> int:
    """``item.key`` for a stream entry id."""
    ms, _, seq = stream_id.partition(b"-")
    return (int(ms) << SEQ_BITS) | int(seq)


def stream_id(key: int) -> bytes:
    """The stream entry id ``key`` was made from."""
    return b"%d-%d" % (key >> SEQ_BITS, key & ((1 << SEQ_BITS) - 1))


class RedisDeliveries:
    """Held receipts and MO, one Redis stream per account."""

    log = Logger()

    def __init__(self, link: RedisLink, prefix: str, clock: IReactorTime) -> None:
        self.link = link
        self.prefix = prefix
        self.clock = clock
        self._pending = 0

    def _stream(self, account: str) -> bytes:
        return f"{self.prefix}q:{account}".encode()

    def hold(self, item: Held) -> Deferred[None]:
        """Append ``item`` to its account's stream; fires once Redis has it."""

        def added(entry: bytes) -> None:
            item.key = key_of(entry)
            self._pending += 1

        fields = (b"kind", item.kind, b"frame", item.frame, b"expires", repr(item.expires))
        return self.link.call("XADD", self._stream(item.account), b"*", *fields).addCallback(added)

    def done(self, item: Held) -> None:
        """Remove ``item``'s entry (fire-and-forget: left behind, it is delivered again)."""
        if not item.key:
            return
        self._pending = max(0, self._pending - 1)

        def failed(reason: Failure) -> None:
            self.log.warn("redis: held delivery not forgotten ({why})", why=reason.value)

        self.link.call("XDEL", self._stream(item.account), stream_id(item.key)).addErrback(failed)

    def pending(self) -> int:
        """Items held here and not yet done."""
        return self._pending
