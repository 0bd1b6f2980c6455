"""What `smpprelay.connection.SmppConnection` shares with the layers above it and across
connections: the outcome of a request (`Outcome`, `firing`, `ResponseTimeout`) and the cork
that gathers the writes of one read (`Cork`), and `tell`, which gives an outcome without
letting a bug in it reach the next one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure


class ResponseTimeout(TimeoutError):
    """The peer did not answer a request within the response timer.

    The peer may still answer (the request is remembered for ``LATE_MEMORY`` response
    timeouts): whoever handles this failure can ask for that late answer with `on_late`.
    Made only when a request times out, so the normal path allocates nothing for it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.late: Callable[[bytes], None] | None = None

    def on_late(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback`` with the response frame if the peer answers after all."""
        self.late = callback


# Told the outcome of a request sent with `SmppConnection.send_request_cb`: the response frame,
# or the failure (`ResponseTimeout`, the connection's loss) that stands for it.
Outcome = Callable[[bytes | Failure], None]


def firing(deferred: Deferred[bytes]) -> Outcome:
    """An `Outcome` that fires ``deferred``: the Deferred forms wrap the callback ones."""

    def fire(result: bytes | Failure) -> None:
        if isinstance(result, Failure):
            deferred.errback(result)
        else:
            deferred.callback(result)

    return fire


# Where `tell` logs; the hot path's callers that inline it log the same line here.
tell_log = Logger()
TELL_FAILED = "handling the outcome of a request failed"


def tell(outcome: Outcome, result: bytes | Failure) -> None:
    """Give a request its outcome; a bug in whoever waits is logged and costs that request
    alone, as a Deferred would have contained it (the caller goes on with the others)."""
    try:
        outcome(result)
    except Exception:
        tell_log.failure(TELL_FAILED)


class Flushable(Protocol):
    """A connection that holds writes while the cork is on."""

    def flush(self) -> None: ...


class Cork:
    """Writes held while a connection handles what it read, one ``writeSequence`` each after.

    A read batch of a hundred submits makes a hundred writes on the operator's connection
    (and the operator's answers as many on the app's): gathered, each connection written to
    gets one call into the transport per read instead of one per PDU. Process-wide, not per
    connection, because what one connection reads is mostly written on another.
    """

    __slots__ = ("depth", "dirty")

    log = Logger()

    def __init__(self) -> None:
        self.depth = 0  # reads being handled (nested when a test feeds one from another)
        self.dirty: list[Flushable] = []  # connections holding writes, in first-write order

    def held(self, work: Callable[[], None]) -> None:
        """Run ``work`` with the writes it causes held, and write them at its end (one call per
        connection): for what answers many requests at once outside a connection's read, such
        as a store's batch of committed routes."""
        self.depth += 1
        try:
            work()
        finally:
            self.depth -= 1
            if not self.depth and self.dirty:
                self.flush()

    def flush(self) -> None:
        """The read is handled: every connection written to meanwhile writes what it held."""
        dirty, self.dirty = self.dirty, []
        for connection in dirty:
            # One failing must not leave the others holding (they would never write again).
            try:
                connection.flush()
            except Exception:
                self.log.failure("writing what a connection held failed")


CORK = Cork()
