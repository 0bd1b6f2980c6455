"""One connection to Redis, shared by everything in this relay process (`store: {backend: redis}`).

Why one connection and not a pool: Redis answers in order on a connection, so every command
sent while others are in flight is pipelined for free (txredisapi keeps the queue of waiting
Deferreds); the submits of a busy second share a few TCP segments instead of a round trip each.

txredisapi (the Twisted-native client Jasmin uses) keeps the connection up and reconnects with
backoff. What it does not do is fail fast: a command sent while it is disconnected waits for the
next connection. The relay must answer at once instead (``ESME_RMSGQFUL`` to a submit,
``ESME_RX_T_APPN`` to a delivery), so every call here checks that a connection is up and fails
with `RedisUnavailable` (a `StoreUnavailable`) otherwise, and every reply has a timeout
(``reply_timeout``). A probe (``PING``, once a second) notices an outage nobody is sending into
and the end of one: `writable` and `problem` say which; recovery needs nobody.

Scripts (`Script`) are sent by digest (``EVALSHA``); a server that does not know one (restarted,
failed over, ``SCRIPT FLUSH``) is sent the whole script once (``EVAL``), which also loads it.

Round trips are timed and errors counted in plain numbers (`LinkStats`) that a collector reads at
scrape time: a locked Prometheus call per command would cost more than the command's parsing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import txredisapi  # type: ignore[import-untyped]
from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.redis_url import RedisURL, parse_url
from smpprelay.store import StoreUnavailable

__all__ = ["LinkStats", "RedisLink", "RedisURL", "RedisUnavailable", "Script", "parse_url"]

# Round-trip buckets (seconds) for smpprelay_redis_round_trip_seconds.
RTT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

RedisArg = bytes | str | int | float

# The longest wait between two attempts to reconnect, in seconds.
RECONNECT_MAX_DELAY = 2.0


class RedisUnavailable(StoreUnavailable):
    """Redis cannot be reached or did not answer: nothing that depends on it is acknowledged."""


class Script:
    """A Lua script run by digest (``EVALSHA``), sent whole once when Redis does not know it."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8]}>"


@attrs.define
class LinkStats:
    """Round trips and errors since start, as plain numbers (read at scrape time)."""

    calls: int = 0
    errors: int = 0  # replies that were errors, timeouts, or calls refused while down
    rtt_sum: float = 0.0
    rtt_buckets: list[int] = attrs.field(factory=lambda: [0] * len(RTT_BUCKETS))


class RedisLink:
    """The relay's connection to Redis: fail-fast calls, scripts by digest, an outage probe."""

    log = Logger()

    def __init__(
        self,
        url: str,
        clock: IReactorTime,
        reply_timeout: float = 2.0,
        probe_interval: float = 1.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.url = parse_url(url)
        self.clock = clock
        self.reply_timeout = reply_timeout
        self.probe_interval = probe_interval
        self.connect_timeout = connect_timeout
        self.stats = LinkStats()
        self._handler: Any = None
        self._probe: LoopingCall | None = None
        self._problem = "not connected yet"
        # Told when the link goes down or comes back (True: up again).
        self.on_change: list[Callable[[bool], None]] = []

    # --- state ------------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """True while Redis answers."""
        return not self._problem

    @property
    def problem(self) -> str:
        """Why Redis cannot be used ("" while it can)."""
        return self._problem

    def _connection(self) -> Any | None:
        """A ready connection, or None (txredisapi keeps ready ones in its factory's pool)."""
        if self._handler is None:
            return None
        pool = self._handler._factory.pool
        return pool[0] if pool else None

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting) and start the probe."""
        url = self.url
        context = ssl.optionsForClientTLS(url.host) if url.tls else False
        self._handler = txredisapi.lazyConnection(
            url.host,
            url.port,
            dbid=url.db or None,
            reconnect=True,
            charset=None,  # bytes in, bytes out: ids and frames are octets
            password=url.password,
            username=url.username,
            ssl_context_factory=context,
            connectTimeout=self.connect_timeout,
            replyTimeout=self.reply_timeout,
            convertNumbers=False,
        )
        # txredisapi backs off up to 10 s between attempts; an outage's end should be noticed
        # within a couple of seconds (read at each retry, so setting it now is enough).
        factory = self._handler._factory
        factory.initialDelay = min(factory.initialDelay, RECONNECT_MAX_DELAY)
        factory.maxDelay = RECONNECT_MAX_DELAY
        self._probe = LoopingCall(self._ping)
        self._probe.clock = self.clock
        self._probe.start(self.probe_interval, now=False)

    def stop(self) -> Deferred[None]:
        """Stop the probe and close the connection; fires when it is closed."""
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        self._probe = None
        handler, self._handler = self._handler, None
        if handler is None:
            return Deferred.fromCoroutine(_nothing())
        closed: Deferred[None] = handler._factory.disconnect()
        return closed.addCallback(lambda _: None)

    def _ping(self) -> None:
        def answered(_: object) -> None:
            self._set_problem("")

        def failed(reason: Failure) -> None:
            if self._problem and reason.check(RedisUnavailable):
                return  # refused because already down: keep the reason it went down for
            self._set_problem(reason.getErrorMessage() or repr(reason.value))

        self.call("PING").addCallbacks(answered, failed)

    def _set_problem(self, problem: str) -> None:
        was = self._problem
        if problem == was:
            return
        self._problem = problem
        if problem and not was:
            self.log.warn("redis {host}:{port}: cannot be used ({why})", why=problem, **self._at())
        elif not problem:
            self.log.info("redis {host}:{port}: answering", **self._at())
        if bool(problem) != bool(was):
            for listener in list(self.on_change):
                listener(not problem)

    def _at(self) -> dict[str, object]:
        return {"host": self.url.host, "port": self.url.port}

    # --- commands ---------------------------------------------------------------------------

    def call(self, *args: RedisArg) -> Deferred[Any]:
        """Send one command; fires with its reply (bytes, int, list, None) or fails with
        `RedisUnavailable` (down, timed out, or an error reply)."""
        stats = self.stats
        stats.calls += 1
        connection = self._connection()
        if connection is None:
            stats.errors += 1
            problem = self._problem or "not connected"
            return fail(RedisUnavailable(f"redis: {problem}"))
        sent = self.clock.seconds()
        done: Deferred[Any] = connection.execute_command(*args)
        return done.addCallbacks(self._replied, self._failed, callbackArgs=(sent,))

    def run(
        self, script: Script, keys: Sequence[RedisArg], args: Sequence[RedisArg]
    ) -> Deferred[Any]:
        """Run ``script`` atomically with ``keys`` and ``args``; as `call`."""

        def unknown(reason: Failure) -> Deferred[Any] | Failure:
            if "NOSCRIPT" in reason.getErrorMessage():
                return self.call("EVAL", script.source, len(keys), *keys, *args)
            return reason

        return self.call("EVALSHA", script.sha, len(keys), *keys, *args).addErrback(unknown)

    def _replied(self, reply: Any, sent: float) -> Any:
        rtt = self.clock.seconds() - sent
        stats = self.stats
        stats.rtt_sum += rtt
        buckets = stats.rtt_buckets
        for index, bound in enumerate(RTT_BUCKETS):
            if rtt <= bound:
                buckets[index] += 1
                break
        if isinstance(reply, txredisapi.ResponseError):
            # txredisapi hands error replies back as values: a script's error, say.
            stats.errors += 1
            raise RedisUnavailable(f"redis: {reply}")
        return reply

    def _failed(self, reason: Failure) -> Failure:
        self.stats.errors += 1
        if reason.check(RedisUnavailable):
            return reason
        why = reason.getErrorMessage() or repr(reason.value)
        if not reason.check(txredisapi.ResponseError):
            # No answer (timeout, connection lost): Redis cannot be counted on until a probe
            # hears from it again.
            self._set_problem(why)
        return Failure(RedisUnavailable(f"redis: {why}"))


async def _nothing() -> None:
    return None
