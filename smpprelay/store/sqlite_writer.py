"""The sqlite store's writer thread: takes what is queued, writes it in one transaction, reads.

No Twisted here: what each call waits on (a Deferred, or an `add_route_cb` callback) rides along
as an opaque object, and each batch's outcome goes back through ``done`` (the store hops to the
reactor thread with it).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from smpprelay.store import HeldPart, Mapped, StoreUnavailable
from smpprelay.store.tables import Route
from smpprelay.store.window_segments import pack, summary

# What a call asks of the writer; writes run in this order within a batch (see sqlite.py).
ADD, FINAL, HOLD, DELIVERED, PART, DONE, WINDOWS, EXPIRE, PROBE, FIND = range(10)
FIND_APP, REPART = 10, 11  # routes by app id; a held part's new frame (after PART, before DONE)
ASYNC_WRITES = (ADD, HOLD, PART, REPART, WINDOWS)
LOOKUPS = (FIND, FIND_APP)
FORGETTING = (FINAL, DELIVERED, DONE)  # kept and retried when a batch fails

# (kind, payload, what waits for it or None)
Op = tuple[int, Any, Any]


@attrs.define(slots=True)
class Batch:
    """One batch's outcome, for the reactor thread."""

    results: list[tuple[Any, object]]  # (what waits, its result or a StoreUnavailable), in order
    ok: bool  # the store can write (after this batch)
    problem: str
    probed: bool  # the batch carried a probe
    last: bool  # the writer has stopped and closed its connection


class Writer:
    """Runs in its own thread (`run`); `put` and `stop` are called from the reactor thread."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        counts: dict[str, int],
        map_max: int,
        expire_batch: int,
        retry_max: int,
        done: Callable[[Batch], None],
    ) -> None:
        self._connect = connect
        self.counts = counts  # rows per table, updated from each commit's row counts
        self.map_max = map_max
        self.expire_batch = expire_batch
        self.retry_max = retry_max
        self._done = done
        self.commits = 0
        self.writes = 0
        self.evicted = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Op] = deque()
        self._idle = False
        self._stopping = False
        self._ok = True
        self._problem = ""
        self._retry: list[Op] = []
        self._retry_rows = 0
        self._ids: dict[str, int] = {}  # upstream and account names -> their number
        self._names: dict[int, str] = {}
        self._rows_max = _ROWS_MAX  # routes per INSERT, as this sqlite allows (`_open`)

    def put(self, op: Op) -> None:
        """Queue ``op`` (reactor thread): an append, and a wake-up only if the writer sleeps.

        Once per route, so no lock for the append (a deque's is atomic): the writer says it is
        idle before it looks at the queue, so an op appended after its look finds it idle and
        wakes it (the lock then waits until it sleeps)."""
        self._queue.append(op)
        if self._idle:
            with self._lock:
                if self._idle:
                    self._idle = False
                    self._wake.notify()

    def stop(self) -> None:
        """Write what is queued, then stop and close the connection."""
        with self._lock:
            self._stopping = True
            self._wake.notify()

    def run(self) -> None:
        """The thread's loop: it never dies before `stop`, whatever happens (the store's close
        waits for its last batch)."""
        conn: sqlite3.Connection | None = None
        while True:
            queue = self._queue
            with self._lock:
                while True:
                    self._idle = True  # before the look: see `put`
                    if queue or self._stopping:
                        break
                    self._wake.wait()
                self._idle = False
                last = self._stopping
            # What `put` appends meanwhile waits for the next batch.
            batch = [queue.popleft() for _ in range(len(queue))]
            if last and self._retry and not self._ok:
                batch.append((PROBE, None, None))  # one last try for what is kept
            try:
                if conn is None:  # at the first batch, or again after it could not open
                    conn = self._open()
                outcome = self._run_batch(conn, batch)
            except Exception as error:  # the file could not be opened, or a bug
                self._ok, self._problem = False, _problem(error)
                failure = StoreUnavailable(self._problem)
                outcome = Batch(
                    [(op[2], failure) for op in batch if op[2] is not None],
                    False,
                    self._problem,
                    any(op[0] == PROBE for op in batch),
                    False,
                )
            if last:
                if conn is not None:
                    conn.close()
                outcome.last = True
            self._done(outcome)
            if last:
                return

    def _open(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            self._ids = dict(conn.execute("SELECT name, id FROM names"))
        except BaseException:
            conn.close()
            raise
        self._names = {number: name for name, number in self._ids.items()}
        # sqlite before 3.32 takes 999 parameters in a statement (since then 32,766).
        most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _ROUTE_WIDTH
        self._rows_max = max(_ROWS_STEP, min(_ROWS_MAX, most // _ROWS_STEP * _ROWS_STEP))
        return conn

    # --- one batch --------------------------------------------------------------------------

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Op]) -> Batch:
        by_kind: defaultdict[int, list[Op]] = defaultdict(list)
        for op in batch:
            by_kind[op[0]].append(op)
        probed = PROBE in by_kind
        writes = any(kind not in LOOKUPS for kind in by_kind) or bool(self._retry)
        if writes and (self._ok or probed):
            for op in self._retry:
                by_kind[op[0]].insert(0, op)
            self._retry, self._retry_rows = [], 0
            problem = self._transaction(conn, by_kind)
            self._ok, self._problem = problem is None, problem or ""
        written: object = None
        if not self._ok:
            written = StoreUnavailable(self._problem)
            self._keep([op for kind in FORGETTING for op in by_kind.get(kind, ())])
        found = {id(d): self._find(conn, *args) for _, args, d in by_kind.get(FIND, ())}
        for _, args, d in by_kind.get(FIND_APP, ()):
            found[id(d)] = self._find_app(conn, *args)
        # In the order the calls were made (what waits on a write, or on a lookup).
        results: list[tuple[Any, object]] = [
            (op[2], found[id(op[2])] if op[0] in LOOKUPS else written)
            for op in batch
            if op[2] is not None and (op[0] in ASYNC_WRITES or op[0] in LOOKUPS)
        ]
        return Batch(results, self._ok, self._problem, probed, False)

    def _keep(self, ops: list[Op]) -> None:
        for op in ops:
            rows = len(op[1]) if op[0] == DONE else 1
            if self._retry_rows + rows > self.retry_max:
                self.dropped += rows
            else:
                self._retry.append(op)
                self._retry_rows += rows

    def _transaction(self, conn: sqlite3.Connection, by_kind: dict[int, list[Op]]) -> str | None:
        """Run the batch's writes in one transaction; None, or what went wrong."""
        added: list[str] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            deltas, written, evicted = self._apply(conn, by_kind, added)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as error:
            self._rollback(conn, added)
            return _problem(error)
        except Exception as error:  # a bug: fail the batch rather than the thread
            self._rollback(conn, added)
            return f"{type(error).__name__}: {error}"
        for table, delta in deltas.items():
            self.counts[table] += delta
        self.commits += 1
        self.writes += written
        self.evicted += evicted
        return None

    def _rollback(self, conn: sqlite3.Connection, added: list[str]) -> None:
        for name in added:
            self._names.pop(self._ids.pop(name, 0), None)
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # sqlite may have rolled back already (a full disk does)

    def _id(self, conn: sqlite3.Connection, name: str, added: list[str]) -> int:
        number = self._ids.get(name)
        if number is None:
            cursor = conn.execute("INSERT INTO names (name) VALUES (?)", (name,))
            number = self._ids[name] = int(cursor.lastrowid or 0)
            self._names[number] = name
            added.append(name)
        return number

    def _apply(
        self, conn: sqlite3.Connection, by_kind: dict[int, list[Op]], added: list[str]
    ) -> tuple[dict[str, int], int, int]:
        deltas = {"routes": 0, "deliveries": 0, "parts": 0, "windows": 0}
        written = 0
        if ops := by_kind.get(ADD):
            ids = self._ids
            rows = [
                (
                    ids.get(up) or self._id(conn, up, added),
                    mid,
                    ids.get(acc) or self._id(conn, acc, added),
                    app,
                    exp,
                    exact,
                )
                for up, mid, acc, app, exp, exact in (op[1] for op in ops)
            ]
            new = self._upsert(conn, _ROUTES_INSERT, _ROUTES_UPDATE, rows)
            deltas["routes"] += new
            written += len(rows)
        if ops := by_kind.get(FINAL):
            rows2 = [
                (until, self._ids[up], mid)
                for up, mid, until in (op[1] for op in ops)
                if up in self._ids
            ]
            conn.executemany(
                "UPDATE routes SET expires = min(expires, ?) WHERE upstream = ? AND message_id = ?",
                rows2,
            )
            written += len(rows2)
        if ops := by_kind.get(HOLD):
            cursor = conn.executemany(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?)", [op[1] for op in ops]
            )
            deltas["deliveries"] += cursor.rowcount
            written += cursor.rowcount
        if ops := by_kind.get(DELIVERED):
            cursor = conn.executemany(
                "DELETE FROM deliveries WHERE key = ?", [(op[1],) for op in ops]
            )
            deltas["deliveries"] -= cursor.rowcount
            written += cursor.rowcount
        if ops := by_kind.get(PART):
            parts: list[HeldPart] = [op[1] for op in ops]
            cursor = conn.executemany(
                "INSERT OR IGNORE INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.app_message_id,
                        p.account,
                        p.frame,
                        p.app_iso,
                        p.first,
                        p.arrived,
                        p.receipt_as,
                    )
                    for p in parts
                ],
            )
            deltas["parts"] += cursor.rowcount
            written += cursor.rowcount
        if ops := by_kind.get(REPART):
            cursor = conn.executemany(
                "UPDATE parts SET frame = ? WHERE app_message_id = ?", [op[1] for op in ops]
            )
            written += cursor.rowcount
        if ops := by_kind.get(DONE):
            cursor = conn.executemany(
                "DELETE FROM parts WHERE app_message_id = ?",
                [(app_id,) for op in ops for app_id in op[1]],
            )
            deltas["parts"] -= cursor.rowcount
            written += cursor.rowcount
        if ops := by_kind.get(WINDOWS):
            # One row per write-behind (smpprelay.store.window_segments): routes committed in
            # the same transaction do not wait behind thousands of index inserts.
            # The relay hands them packed already; tuples (tests, tools) are packed here.
            blobs = [op[1] if isinstance(op[1], bytes) else pack(op[1]) for op in ops]
            segments = []
            for blob in blobs:
                entries, expires = summary(blob)
                segments.append((expires, entries, blob))
            conn.executemany(
                "INSERT INTO windows (expires, entries, data) VALUES (?, ?, ?)", segments
            )
            count = sum(entries for _, entries, _ in segments)
            deltas["windows"] += count
            written += count
        evicted = 0
        if ops := by_kind.get(EXPIRE):
            removed, evicted = self._expire(conn, max(op[1] for op in ops), deltas)
            written += removed
        if PROBE in by_kind:
            # Needs pages the file does not have free when it is full (an update in place
            # would succeed on a full disk and say nothing).
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', zeroblob(16384))")
            conn.execute("DELETE FROM meta WHERE name = 'probe'")
        return deltas, written, evicted

    def _upsert(self, conn: sqlite3.Connection, insert: str, update: str, rows: list[Any]) -> int:
        """Insert ``rows`` (``insert`` ends at ``VALUES``), replacing the keys already there;
        how many were new.

        Inserting first and updating only when some key was there keeps the row counts exact
        (an upsert or a REPLACE counts one change either way) at no cost in the usual case.
        """
        new = _insert_many(conn, insert, rows, self._rows_max)
        if new < len(rows):
            conn.executemany(update, rows)  # in call order: a key's last write wins
        return new

    def _expire(
        self, conn: sqlite3.Connection, now: float, deltas: dict[str, int]
    ) -> tuple[int, int]:
        limit = self.expire_batch
        removed = 0
        cursor = conn.execute(
            "DELETE FROM routes WHERE (upstream, message_id) IN (SELECT upstream, message_id"
            " FROM routes WHERE expires <= ? ORDER BY expires LIMIT ?)",
            (now, limit),
        )
        deltas["routes"] -= cursor.rowcount
        removed += cursor.rowcount
        cursor = conn.execute(
            "DELETE FROM deliveries WHERE key IN (SELECT key FROM deliveries"
            " WHERE expires <= ? LIMIT ?)",
            (now, limit),
        )
        deltas["deliveries"] -= cursor.rowcount
        removed += cursor.rowcount
        ended = conn.execute(
            "SELECT id, entries FROM windows WHERE expires <= ? LIMIT ?", (now, limit)
        ).fetchall()
        if ended:
            conn.executemany("DELETE FROM windows WHERE id = ?", [(id_,) for id_, _ in ended])
            entries = sum(count for _, count in ended)
            deltas["windows"] -= entries
            removed += entries
        # The oldest routes (soonest to expire) give way past map_max.
        excess = self.counts["routes"] + deltas["routes"] - self.map_max
        evicted = 0
        if excess > 0:
            cursor = conn.execute(
                "DELETE FROM routes WHERE (upstream, message_id) IN (SELECT upstream, message_id"
                " FROM routes ORDER BY expires LIMIT ?)",
                (min(excess, limit),),
            )
            evicted = cursor.rowcount
            deltas["routes"] -= evicted
            removed += evicted
        return removed, evicted

    def _find(self, conn: sqlite3.Connection, upstream: str, message_id: str, now: float) -> object:
        number = self._ids.get(upstream)
        if number is None:
            return None
        try:
            row = conn.execute(
                "SELECT account, app_message_id, expires, operator_id FROM routes"
                " WHERE upstream = ? AND message_id = ?",
                (number, message_id),
            ).fetchone()
        except sqlite3.Error as error:
            return StoreUnavailable(_problem(error))
        if row is None or row[2] <= now:
            return None
        account = self._names.get(row[0])
        return None if account is None else Route(account, row[1], row[2], row[3])

    def _find_app(self, conn: sqlite3.Connection, app_id: bytes, now: float) -> object:
        try:
            rows = conn.execute(
                "SELECT upstream, message_id, account, app_message_id, expires, operator_id"
                " FROM routes WHERE app_message_id = ? AND expires > ? ORDER BY expires",
                (app_id, now),
            ).fetchall()
        except sqlite3.Error as error:
            return StoreUnavailable(_problem(error))
        names = self._names
        return [
            Mapped(names[up], exact or mid, Route(names[acc], app, exp, exact))
            for up, mid, acc, app, exp, exact in rows
            if up in names and acc in names
        ]


_ROUTES_INSERT = (
    "INSERT OR IGNORE INTO routes (upstream, message_id, account, app_message_id, expires,"
    " operator_id) VALUES "
)
_ROUTES_UPDATE = (
    "UPDATE routes SET account = ?3, app_message_id = ?4, expires = ?5, operator_id = ?6"
    " WHERE upstream = ?1 AND message_id = ?2"
)

# Rows per multi-row INSERT: a batch's rows go in statements of _ROWS_MAX and one of the rest,
# padded to a multiple of _ROWS_STEP, so that a batch of routes is one statement (one sqlite
# step, one GIL hand-off) and its statements are few (32 sizes of the 128 that Python's sqlite3
# keeps prepared per connection). 512 routes are 3,072 parameters.
_ROUTE_WIDTH = 6
_ROWS_STEP = 16
_ROWS_MAX = 512


@functools.cache
def _values(insert: str, width: int, rows: int) -> str:
    """``insert`` with ``rows`` groups of ``width`` parameters."""
    group = "(" + ", ".join("?" * width) + ")"
    return insert + ", ".join([group] * rows)


def _insert_one(conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> int:
    """Insert ``rows`` in call order in one statement (``insert`` ends at ``VALUES`` and
    ignores a key that is there; sqlite must take their parameters); how many were inserted.

    One statement runs one sqlite step, where ``executemany`` runs one per row, each binding
    its row and dropping and taking back the GIL (which the reactor thread then waits for):
    measured with ``sync: full`` and 40 routes a commit, 3.8 instead of 5.0 us of CPU a route.
    The padding repeats the last row, just written (or found): it is ignored, counts nothing."""
    count = len(rows)
    size = -(-count // _ROWS_STEP) * _ROWS_STEP
    params = [value for row in rows for value in row]
    if size > count:
        params += list(rows[-1]) * (size - count)
    return int(conn.execute(_values(insert, len(rows[0]), size), params).rowcount)


def _insert_many(
    conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]], most: int
) -> int:
    """`_insert_one` for any number of ``rows``: in statements of ``most`` and the rest."""
    new = 0
    for at in range(0, len(rows), most):
        new += _insert_one(conn, insert, rows[at : at + most])
    return new


def _problem(error: BaseException) -> str:
    """What went wrong, in a few words (sqlite's own: "database or disk is full", ...)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__
