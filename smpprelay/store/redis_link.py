"""One connection to Redis, shared by everything in this relay process (`store: {backend: redis}`).

Why one connection and not a pool: Redis answers in order on a connection, so every command
sent while others are in flight is pipelined for free (`RespProtocol` keeps the queue of waiting
Deferreds); the submits of a busy second share a few TCP segments instead of a round trip each.

The protocol is our own (`smpprelay.store.resp`, RESP2 parsed by ``hiredis``): txredisapi's
Python command building and reply parsing cost the relay about three times the CPU per submit
of the memory store. Twisted's `ClientService` keeps the connection up and reconnects with
backoff (at most `RECONNECT_MAX_DELAY` apart); each new connection is authenticated and its
database selected before any call uses it.

A call never waits for a connection: the relay must answer at once instead (``ESME_RMSGQFUL``
to a submit, ``ESME_RX_T_APPN`` to a delivery), so every call checks that a connection is up
and fails with `RedisUnavailable` (a `StoreUnavailable`) otherwise, and every reply has a
timeout (``reply_timeout``) after which the connection is dropped. A probe (``PING``, once a
second) notices an outage nobody is sending into and the end of one: `writable` and `problem`
say which; recovery needs nobody.

Scripts (`Script`) are sent by digest (``EVALSHA``); a server that does not know one (restarted,
failed over, ``SCRIPT FLUSH``) is sent the whole script once (``EVAL``), which also loads it.

Round trips are timed and errors counted in plain numbers (`LinkStats`) that a collector reads at
scrape time: a locked Prometheus call per command would cost more than the command's parsing.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.redis_url import RedisURL, parse_url
from smpprelay.store import StoreUnavailable
from smpprelay.store.resp import RedisArg, ReplyError, RespProtocol

__all__ = ["LinkStats", "RedisLink", "RedisURL", "RedisUnavailable", "Script", "parse_url"]

# Round-trip buckets (seconds) for smpprelay_redis_round_trip_seconds.
RTT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# The longest wait between two attempts to reconnect, in seconds: an outage's end should be
# noticed within a couple of seconds. Part of it is random so that the relays sharing a Redis
# do not all reconnect in the same instant.
RECONNECT_MAX_DELAY = 2.0
_RECONNECT_JITTER = 0.2

# hiredis returns a status reply (``+OK``) as bytes, like a bulk string: commands that answer
# with a status have the usual words decoded, so that the link's callers keep seeing "OK" (a
# str) from these and bytes from everything else (a GET of a value b"OK" stays bytes).
_STATUS_COMMANDS = frozenset({"AUTH", "FLUSHALL", "FLUSHDB", "PING", "SELECT", "SET", "XGROUP"})
_STATUS_WORDS = {b"OK": "OK", b"PONG": "PONG"}


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
        self._service: ClientService | None = None
        # The connection calls go to: up, authenticated and on its database.
        self._protocol: RespProtocol | None = None
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

    def _connection(self) -> RespProtocol | None:
        """The connection that calls go to, or None while there is none ready."""
        return self._protocol

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting) and start the probe."""
        factory = Factory.forProtocol(self._build)
        factory.noisy = False  # no "Starting factory" line per attempt during an outage
        self._service = ClientService(
            self._endpoint(),
            factory,
            retryPolicy=backoffPolicy(
                initialDelay=0.1,
                maxDelay=RECONNECT_MAX_DELAY - _RECONNECT_JITTER,
                jitter=lambda: random.random() * _RECONNECT_JITTER,
            ),
            clock=self.clock,
        )
        self._service.startService()
        self._probe = LoopingCall(self._ping)
        self._probe.clock = self.clock
        self._probe.start(self.probe_interval, now=False)

    def _endpoint(self) -> IStreamClientEndpoint:
        reactor: Any = self.clock
        if not IReactorTCP.providedBy(reactor):
            # A bare clock (tests of the timing alone): the connection needs a real reactor.
            from twisted.internet import reactor as default

            reactor = default
        url = self.url
        endpoint = HostnameEndpoint(reactor, url.host, url.port, timeout=self.connect_timeout)
        if url.tls:
            secured: IStreamClientEndpoint = wrapClientTLS(optionsForClientTLS(url.host), endpoint)
            return secured
        return endpoint

    def _build(self) -> RespProtocol:
        return RespProtocol(self.clock, self.reply_timeout, made=self._made, lost=self._lost)

    def stop(self) -> Deferred[None]:
        """Stop the probe and close the connection; fires when it is closed."""
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        self._probe = None
        service, self._service = self._service, None
        self._protocol = None
        if service is None:
            return succeed(None)
        closed: Deferred[None] = service.stopService()
        return closed.addCallback(lambda _: None)

    def _made(self, protocol: RespProtocol) -> None:
        """A new connection: authenticate and select the database, then let calls use it."""
        url = self.url
        steps: list[Deferred[Any]] = []
        if url.password is not None:
            who = (url.username,) if url.username else ()
            steps.append(protocol.execute(("AUTH", *who, url.password)))
        if url.db:
            steps.append(protocol.execute(("SELECT", url.db)))

        def ready(_: object) -> None:
            if protocol.usable and self._service is not None:
                self._protocol = protocol

        def refused(reason: Failure) -> None:
            error = reason.value
            # The first step that failed says why (AUTH refused, no such database).
            why = (error.subFailure if isinstance(error, FirstError) else reason).getErrorMessage()
            if protocol.usable:
                self._set_problem(f"redis: {why}")
                assert protocol.transport is not None
                protocol.transport.loseConnection()  # ClientService tries again later

        gatherResults(steps, consumeErrors=True).addCallbacks(ready, refused)

    def _lost(self, protocol: RespProtocol, reason: Failure) -> None:
        """A connection was lost or abandoned: no call goes to it; Redis is down until the
        probe hears from it on the next connection."""
        if protocol is not self._protocol:
            return  # not (or no longer) the one in use: a refused handshake, or stopped
        self._protocol = None
        self._set_problem(f"redis: {reason.getErrorMessage() or repr(reason.value)}")

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
        """Send one command; fires with its reply (bytes, int, list, None; "OK" as str) or
        fails with `RedisUnavailable` (down, timed out, or an error reply)."""
        stats = self.stats
        stats.calls += 1
        protocol = self._protocol
        if protocol is None:
            stats.errors += 1
            problem = self._problem or "not connected"
            return fail(RedisUnavailable(f"redis: {problem}"))
        sent = self.clock.seconds()
        done = protocol.execute(args).addCallbacks(
            self._replied, self._failed, callbackArgs=(sent,), errbackArgs=(sent,)
        )
        if args[0] in _STATUS_COMMANDS:
            done.addCallback(_status)
        return done

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
        self._timed(sent)
        return reply

    def _timed(self, sent: float) -> None:
        rtt = self.clock.seconds() - sent
        stats = self.stats
        stats.rtt_sum += rtt
        buckets = stats.rtt_buckets
        for index, bound in enumerate(RTT_BUCKETS):
            if rtt <= bound:
                buckets[index] += 1
                break

    def _failed(self, reason: Failure, sent: float) -> Failure:
        self.stats.errors += 1
        why = reason.getErrorMessage() or repr(reason.value)
        if reason.check(ReplyError):
            # Redis answered (a script's error, say): the connection is fine.
            self._timed(sent)
        else:
            # No answer (timeout, connection lost): Redis cannot be counted on until a probe
            # hears from it again.
            self._set_problem(f"redis: {why}")
        return Failure(RedisUnavailable(f"redis: {why}"))


def _status(reply: Any) -> Any:
    if reply.__class__ is bytes:
        return _STATUS_WORDS.get(reply, reply)
    return reply
