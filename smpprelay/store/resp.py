"""RESP2, the Redis protocol, on one Twisted connection: commands out, replies matched in order.

Redis answers the commands of a connection in the order they were sent, so a reply needs no
id: it completes the oldest waiting Deferred (a deque). Replies are parsed by ``hiredis`` (the
Redis project's C parser); commands are encoded by its ``pack_command`` (C as well). Both were
most of the relay's CPU per submit in Python (txredisapi) under load.

Writes are not gathered here: `transport.write` only appends to the transport's buffer, which
Twisted sends at the reactor's next write pass, so every command issued in one reactor turn
already leaves in one ``send``.

A reply that does not come within ``reply_timeout`` means the connection can no longer be
trusted: replies are matched by order only, so once one is missing (or late) nothing after it
can be matched safely. The connection is then aborted and every waiting Deferred fails. One
timer serves all commands: it is armed for the oldest command's deadline and, when it fires
early because that command was answered, re-armed for the next oldest, so a reply costs no
timer work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = ["RedisArg", "ReplyError", "RespProtocol"]

RedisArg = bytes | str | int | float

# An error reply (``-ERR ...``): Redis answered, so the connection is fine.
ReplyError = hiredis.ReplyError

# What hiredis's reader returns while a reply is incomplete (no RESP2 reply is this object).
_MORE = object()


def _ignore(protocol: RespProtocol) -> None:
    return None


def _ignore_lost(protocol: RespProtocol, reason: Failure) -> None:
    return None


class RespProtocol(Protocol):
    """One connection to Redis. `execute` sends a command and returns a Deferred that fires
    with its reply (bytes, int, None, a list) or fails with `ReplyError`, `TimeoutError` or
    the reason the connection was lost.

    ``made`` is told when the connection is up, ``lost`` once when it is lost or abandoned
    (before the waiting Deferreds fail, so that their errbacks already see the link down).
    """

    def __init__(
        self,
        clock: IReactorTime,
        reply_timeout: float,
        made: Callable[[RespProtocol], None] = _ignore,
        lost: Callable[[RespProtocol, Failure], None] = _ignore_lost,
    ) -> None:
        self.clock = clock
        self.reply_timeout = reply_timeout
        self._made = made
        self._lost_callback = lost
        self._reader = hiredis.Reader(notEnoughData=_MORE)
        # (Deferred, deadline) per command sent and not answered yet, oldest first.
        self._waiting: deque[tuple[Deferred[Any], float]] = deque()
        self._timer: IDelayedCall | None = None
        self._lost: Failure | None = None

    @property
    def usable(self) -> bool:
        """True until the connection is lost or abandoned."""
        return self._lost is None and self.transport is not None

    def connectionMade(self) -> None:
        self._made(self)

    def execute(self, args: Sequence[RedisArg]) -> Deferred[Any]:
        """Send one command (its name and arguments)."""
        if self._lost is not None:
            return fail(self._lost)
        assert self.transport is not None
        # hiredis's stub types the tuple as one item long; any number of arguments is fine.
        self.transport.write(hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]
        done: Deferred[Any] = Deferred()
        self._waiting.append((done, self.clock.seconds() + self.reply_timeout))
        if self._timer is None:
            self._timer = self.clock.callLater(self.reply_timeout, self._check)
        return done

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while self._lost is None:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as error:
                self._abandon(ConnectionLost(f"not RESP: {error}"))
                return
            if reply is _MORE:
                return
            if not waiting:
                self._abandon(ConnectionLost("a reply to no command"))
                return
            done = waiting.popleft()[0]
            if reply.__class__ is ReplyError:
                done.errback(reply)
            else:
                done.callback(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost is None:
            self._gone(reason)

    def _check(self) -> None:
        """The timer: time the oldest command out, or wait for its deadline."""
        self._timer = None
        if not self._waiting or self._lost is not None:
            return
        deadline = self._waiting[0][1]
        now = self.clock.seconds()
        if now >= deadline:
            self._abandon(TimeoutError(f"no reply within {self.reply_timeout:g} s"))
        else:
            self._timer = self.clock.callLater(deadline - now, self._check)

    def _abandon(self, error: Exception) -> None:
        """Give the connection up: fail what waits and drop it at once (no flush)."""
        self._gone(Failure(error))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _gone(self, reason: Failure) -> None:
        self._lost = reason
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._lost_callback(self, reason)
        waiting, self._waiting = self._waiting, deque()
        for done, _ in waiting:
            done.errback(reason)
