"""The sqlite backend (the default store): one file, written by one thread, in group commits.

The reactor thread only appends each call to a list (waking the writer if it is idle) and, for
the asynchronous calls, hands back a `Deferred`. The writer takes everything queued at that
moment, runs the batch's writes in one transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``; routes in
multi-row INSERTs, the other kinds one ``executemany`` each; a batch of routes alone, the usual
one under load, is one INSERT and a transaction of its own), then its reads, and hands every
result back with one ``reactor.callFromThread``, which fires the Deferreds and calls the
`add_route_cb` callbacks in call order. While a commit (an fsync with ``sync: full``) runs, new
calls gather for the next batch: the busier the relay, the more writes per commit.

Within a batch, writes run kind by kind in a fixed order (routes added, routes cut back, held
deliveries written then forgotten, parts written then forgotten, windows, expiry): a key written
and forgotten in one batch ends forgotten; the order of two calls of different kinds on the same
key otherwise follows that order, not the calls'.

A write that fails (a full disk, ``max_size`` reached, an I/O error, a read-only file) is rolled
back, every Deferred of its batch fails with `StoreUnavailable`, and the store stops writing:
`writable` is False, `problem` says why, one line is logged and ``on_state_change`` listeners are
called. Asynchronous writes then fail at once; forgetting calls are kept for later (up to
`RETRY_MAX`, past which they are dropped and counted); reads still work. Every ``probe_interval``
seconds a probe transaction that needs free pages is tried; once it commits, writing resumes.

The file is checked at open with ``PRAGMA quick_check`` on every table but ``routes``: with
10 M routes (716 MB) a full quick_check took 11 s with a cold page cache (1.4 s warm) on the
benchmark machine, while the count of routes made at open (0.9 s cold) walks that table's pages
anyway and fails on a truncated or damaged file (benchmarks/store_bench.py ``--routes``).

Threads: the constructor opens, checks and reads the file on the calling thread and starts
none (twistd forks after it); `start` starts the one writer thread, which opens its own
connection; `close` lets it write what is queued, close its connection and end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from smpprelay.store import (
    HeldPart,
    Loaded,
    Mapped,
    RouteDone,
    StoreCorrupt,
    StoreStats,
    StoreUnavailable,
    WindowEntry,
)
from smpprelay.store import sqlite_file as sf
from smpprelay.store.sqlite_writer import (
    ADD,
    DELIVERED,
    DONE,
    EXPIRE,
    FINAL,
    FIND,
    FIND_APP,
    HOLD,
    PART,
    PROBE,
    REPART,
    WINDOWS,
    Batch,
    Writer,
)
from smpprelay.store.tables import Held, Route
from smpprelay.wire import CORK

RETRY_MAX = 100_000  # forgetting calls kept while the store cannot write

StateListener = Callable[[bool, str], None]


class SqliteStore:
    """`smpprelay.store.Store` in one sqlite file, durable across restarts and crashes."""

    durable = True
    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        sync: sf.Sync = "full",
        route_ttl: float,
        final_grace: float,
        map_max: int,
        max_size: int | None = None,
        probe_interval: float = 1.0,
        expire_batch: int = 2000,
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.sync = sync
        self.route_ttl = route_ttl
        self.final_grace = final_grace
        self.max_size = max_size
        self.probe_interval = probe_interval
        # Called on the reactor thread with (writable, problem) each time writing stops or
        # resumes: for a metric and the readiness check.
        self.on_state_change: list[StateListener] = []
        conn = sf.open_file(path, sync, max_size)
        try:
            self.secret = sf.read_secret(conn, path)
            counts = sf.count_rows(conn)
            last_key = sf.max_key(conn)
        except sqlite3.Error as error:
            conn.close()
            raise StoreCorrupt(f"{path}: {' '.join(str(error).split())}") from error
        except StoreCorrupt:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn  # the constructor's, until start
        self._next_key = last_key + 1
        self._writer = Writer(
            connect=lambda: sf.connect(path, sync, max_size),
            counts=counts,
            map_max=map_max,
            expire_batch=expire_batch,
            retry_max=RETRY_MAX,
            done=self._call_from_thread,
        )
        self._thread: threading.Thread | None = None
        self._writable = True
        self._problem = ""
        self._probe_call: Any = None
        self._probing = False
        self._closed: Deferred[None] | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """False while writes fail (disk full, ``max_size`` reached, read-only, I/O error)."""
        return self._writable

    @property
    def problem(self) -> str:
        """Why the store cannot write ("" while it can)."""
        return self._problem

    # --- life -------------------------------------------------------------------------------

    def load(self, now: float | None = None) -> Loaded:
        """What the last run left (before `start`); ``now`` is wall time unless given."""
        if self._conn is None:
            raise RuntimeError("load() is for before start()")
        try:
            return sf.load(
                self._conn, time.time() if now is None else now, self._writer.counts["routes"]
            )
        except (sqlite3.Error, ValueError, struct.error) as error:
            raise StoreCorrupt(f"{self.path}: {' '.join(str(error).split())}") from error

    def start(self) -> None:
        """Start the writer thread (at service start: after twistd forks)."""
        if self._thread is not None or self._closed is not None:
            return
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        # A daemon, so a process stopping without close() (a kill) does not wait for it.
        self._thread = threading.Thread(
            target=self._writer.run, name=f"store-writer {self.path}", daemon=True
        )
        self._thread.start()

    def close(self) -> Deferred[None]:
        """Write what is pending, stop the writer and close the file; fires when done."""
        self._cancel_probe()
        if self._closed is not None:
            return _chain(self._closed)
        self._closed = Deferred()
        if self._thread is None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._closed.callback(None)
        else:
            self._writer.stop()
        return _chain(self._closed)

    # --- calls ------------------------------------------------------------------------------

    def add_route(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None = None,
    ) -> Deferred[None]:
        """Route receipts for ``message_id`` on ``upstream`` (a route for the same id replaces
        the older one); fires once written (`add_route_cb` behind a Deferred)."""
        d: Deferred[None] = Deferred()
        self.add_route_cb(
            upstream, message_id, account, app_message_id, now, operator_id, _firing(d)
        )
        return d

    def add_route_cb(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None,
        done: RouteDone,
    ) -> None:
        """`add_route`, reporting to ``done``: the row and ``done`` are queued together, the
        writer commits them with its batch, and the batch's one hop back to the reactor thread
        calls every ``done`` in call order (no Deferred per route). Closed, or known not to
        write: ``done`` is called at once with `StoreUnavailable`."""
        if self._closed is not None:
            done(StoreUnavailable("the store is closed"))
        elif not self._writable:  # no thread hop: the answer is known
            done(StoreUnavailable(self._problem))
        else:
            self._writer.put(
                (
                    ADD,
                    (
                        upstream,
                        message_id,
                        account,
                        app_message_id,
                        now + self.route_ttl,
                        operator_id,
                    ),
                    done,
                )
            )

    def find_route(self, upstream: str, message_id: str, now: float) -> Deferred[Route | None]:
        """The route, if known and not expired (also while the store cannot write)."""
        if self._closed is not None:
            return fail(StoreUnavailable("the store is closed"))
        d: Deferred[Route | None] = Deferred()
        self._writer.put((FIND, (upstream, message_id, now), d))
        return d

    def find_app_id(self, app_message_id: bytes, now: float) -> Deferred[list[Mapped]]:
        """The live routes whose app was given ``app_message_id`` (the partial index)."""
        if self._closed is not None:
            return fail(StoreUnavailable("the store is closed"))
        d: Deferred[list[Mapped]] = Deferred()
        self._writer.put((FIND_APP, (app_message_id, now), d))
        return d

    def route_final(self, upstream: str, message_id: str, now: float) -> None:
        """Keep the route ``final_grace`` seconds more at most."""
        self._forget(FINAL, (upstream, message_id, now + self.final_grace))

    def hold_delivery(self, item: Held) -> Deferred[None]:
        """Write a held receipt or MO; its ``key`` is set at once (a `delivered` may follow
        before the write commits)."""
        if not item.key:
            item.key = self._next_key
            self._next_key += 1
        return self._write(HOLD, (item.key, item.kind, item.account, item.frame, item.expires))

    def delivered(self, item: Held) -> None:
        """Forget a held delivery (it reached its app or expired)."""
        if item.key:
            self._forget(DELIVERED, item.key)

    def hold_part(self, part: HeldPart) -> Deferred[None]:
        """Write a held concatenated part."""
        return self._write(PART, part)

    def replace_part(self, part: HeldPart) -> Deferred[None]:
        """Write a held part's new frame."""
        return self._write(REPART, (part.frame, part.app_message_id))

    def parts_done(self, app_message_ids: Sequence[bytes]) -> None:
        """Forget these parts."""
        if app_message_ids:
            self._forget(DONE, tuple(app_message_ids))

    def save_windows(self, entries: Sequence[WindowEntry] | bytes) -> Deferred[None]:
        """Write the rules' newest window entries (a key's newer entry replaces its older)."""
        if not entries:
            return succeed(None)
        # Tuples are packed by the writer, off the reactor.
        return self._write(WINDOWS, entries if isinstance(entries, bytes) else tuple(entries))

    def expire(self, now: float) -> None:
        """Remove up to ``expire_batch`` expired rows per table, and routes past ``map_max``."""
        if self._writable:  # while it cannot write, the next call after recovery does it
            self._forget(EXPIRE, now)

    def stats(self) -> StoreStats:
        """Rows per kind (kept by the writer, no count per call), size on disk, commits."""
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):  # no -wal file after a clean close
                size += os.stat(self.path + suffix).st_size
        counts = self._writer.counts
        return StoreStats(
            routes=counts["routes"],
            deliveries=counts["deliveries"],
            parts=counts["parts"],
            windows=counts["windows"],
            size_bytes=size,
            commits=self._writer.commits,
            writes=self._writer.writes,
            evicted=self._writer.evicted,
        )

    @property
    def dropped(self) -> int:
        """Forgetting calls dropped while the store could not write (past `RETRY_MAX`)."""
        return self._writer.dropped

    # --- inside -----------------------------------------------------------------------------

    def _write(self, kind: int, payload: Any) -> Deferred[None]:
        if self._closed is not None:
            return fail(StoreUnavailable("the store is closed"))
        if not self._writable:  # no thread hop: the answer is known
            return fail(StoreUnavailable(self._problem))
        d: Deferred[None] = Deferred()
        self._writer.put((kind, payload, d))
        return d

    def _forget(self, kind: int, payload: Any) -> None:
        if self._closed is None:
            self._writer.put((kind, payload, None))

    def _call_from_thread(self, batch: Batch) -> None:
        # The writer thread's one hop back per batch.
        self.reactor.callFromThread(self._batch_done, batch)

    def _batch_done(self, batch: Batch) -> None:
        if batch.probed:
            self._probing = False
        self._set_state(batch.ok, batch.problem)
        if not self._writable and not batch.last:
            self._schedule_probe()  # before the callbacks, which may look at the state
        if batch.results:
            # The answers these results cause leave in one write per connection.
            CORK.held(functools.partial(self._tell, batch.results))
        if batch.last and self._closed is not None:
            if self._thread is not None:
                self._thread.join(5)  # it has closed its connection and is returning
            self._closed.callback(None)

    def _tell(self, results: list[tuple[Any, object]]) -> None:
        """Give each waiter its outcome, in call order."""
        for waiter, outcome in results:
            # The store makes its Deferreds itself (`_write`), so the exact type tells them
            # from an add_route_cb's ``done`` (an isinstance of Deferred, an ABC, costs more).
            if type(waiter) is not Deferred:  # ``done``: None or the error
                try:
                    waiter(outcome)
                except Exception:  # its own bug: the batch's other callers still hear
                    self.log.failure(
                        "store {path}: a route write's callback failed", path=self.path
                    )
            elif isinstance(outcome, Exception):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def _set_state(self, ok: bool, problem: str) -> None:
        if ok == self._writable:
            return
        self._writable, self._problem = ok, "" if ok else problem
        if ok:
            self._cancel_probe()
            self.log.info("store {path}: writing again", path=self.path)
        else:
            self.log.error(
                "store {path}: cannot write ({problem}): refusing what needs a write until it can",
                path=self.path,
                problem=problem,
            )
        for listener in list(self.on_state_change):
            listener(ok, self._problem)

    def _schedule_probe(self) -> None:
        if self._probe_call is None and not self._probing and self._closed is None:
            self._probe_call = self.reactor.callLater(self.probe_interval, self._probe)

    def _probe(self) -> None:
        self._probe_call = None
        self._probing = True
        self._writer.put((PROBE, None, None))

    def _cancel_probe(self) -> None:
        if self._probe_call is not None:
            if self._probe_call.active():
                self._probe_call.cancel()
            self._probe_call = None


def _firing(d: Deferred[None]) -> RouteDone:
    """A `RouteDone` that fires ``d`` (`SqliteStore.add_route`, the Deferred form)."""

    def done(error: Exception | None) -> None:
        if error is None:
            d.callback(None)
        else:
            d.errback(error)

    return done


def _chain(d: Deferred[None]) -> Deferred[None]:
    """A Deferred that fires when ``d`` does, leaving ``d`` for the next caller."""
    out: Deferred[None] = Deferred()

    def fire(result: None) -> None:
        out.callback(result)

    d.addCallback(fire)
    return out
