"""The sqlite store on real files and a real writer thread: group commit, durability before a
Deferred fires, files it refuses, and writes that fail for real (a full file, a full filesystem,
an I/O error) and recover."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import LogEvent

from smpprelay.store import (
    DEFAULT_UPSTREAM,
    HeldPart,
    Mapped,
    StoreCorrupt,
    StoreUnavailable,
    WindowEntry,
)
from smpprelay.store import sqlite_file as sf
from smpprelay.store.sqlite import SqliteStore
from smpprelay.store.tables import Held, Route
from tests.fakes import captured_logs, failure_of

NOW = 1_000.0


def reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def make(path: Path, **options: Any) -> SqliteStore:
    settings: dict[str, Any] = {"route_ttl": 100.0, "final_grace": 5.0, "map_max": 10_000}
    settings.update(options)
    return SqliteStore(str(path), reactor(), **settings)


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    """What another connection (another process, say) sees in the file."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def state_becomes(store: SqliteStore, writable: bool) -> Deferred[str]:
    """Fires with the problem when the store's state next becomes ``writable`` (10 s at most)."""
    d: Deferred[str] = Deferred()

    def listener(ok: bool, problem: str) -> None:
        if ok == writable and not d.called:
            store.on_state_change.remove(listener)
            d.callback(problem)

    store.on_state_change.append(listener)
    return d.addTimeout(10, reactor())


def store_lines() -> Any:
    return captured_logs(lambda event: "SqliteStore" in event.get("log_namespace", ""))


async def fill_until_it_fails(store: SqliteStore, limit: int = 20_000) -> StoreUnavailable:
    """Add routes with 1 kB app ids until a write fails; the failure."""
    for n in range(limit):
        try:
            await store.add_route(DEFAULT_UPSTREAM, f"fill{n}", "alice", b"x" * 1000, NOW)
        except StoreUnavailable as error:
            return error
    raise AssertionError(f"{limit} routes written without a failure")


async def fails_then_recovers(store: SqliteStore, events: list[LogEvent], fix: Any) -> str:
    """The shared part of the failure tests: the store has just failed to write."""
    assert not store.writable
    problem = store.problem
    assert problem
    # Asynchronous writes now fail at once; reads still work.
    failure_of(store.add_route(DEFAULT_UPSTREAM, "late", "bob", None, NOW)).trap(StoreUnavailable)
    assert await store.find_route(DEFAULT_UPSTREAM, "kept", NOW) is not None
    assert any(call.func == store._probe for call in reactor().getDelayedCalls())
    store.route_final(DEFAULT_UPSTREAM, "kept", NOW)  # kept and retried after recovery
    assert len(events) == 1  # one line for the failure, however many writes failed
    recovered = state_becomes(store, True)
    fix()
    assert await recovered == ""
    assert store.writable
    assert store.problem == ""
    assert len(events) == 2
    await store.add_route(DEFAULT_UPSTREAM, "after", "bob", None, NOW)
    route = await store.find_route(DEFAULT_UPSTREAM, "kept", NOW)
    assert route is not None
    assert route.expires == NOW + 5.0  # the route_final made while failing was written
    return problem


# --- group commit and durability ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_calls_made_in_one_turn_share_few_commits(tmp_path: Path) -> None:
    store = make(tmp_path / "s.db")
    store.start()
    await gatherResults(
        [store.add_route(DEFAULT_UPSTREAM, f"id{n}", "alice", None, NOW) for n in range(1000)]
    )
    stats = store.stats()
    assert stats.writes == 1000
    assert stats.commits <= 10  # the first call may wake the writer before the rest are queued
    assert stats.routes == 1000
    await store.close()


@pytest_twisted.ensureDeferred
async def test_one_batch_of_routes_in_multi_row_inserts_keeps_the_last_write(
    tmp_path: Path,
) -> None:
    """301 routes in one batch (queued before the writer starts) go in multi-row INSERTs
    (512 rows at most, the last padded with its last row); a key written twice in the batch
    ends with its last write, and counts once."""
    path = tmp_path / "s.db"
    store = make(path)
    store.load()
    added = [
        store.add_route(DEFAULT_UPSTREAM, f"id{n}", "alice", b"A%d" % n, NOW) for n in range(300)
    ]
    added.append(store.add_route(DEFAULT_UPSTREAM, "id7", "bob", None, NOW + 1, "ID7"))
    store.start()
    await gatherResults(added)
    stats = store.stats()
    assert (stats.commits, stats.writes, stats.routes) == (1, 301, 300)
    assert rows(path, "SELECT count(*) FROM routes") == [(300,)]
    assert await store.find_route(DEFAULT_UPSTREAM, "id7", NOW) == Route(
        "bob", None, NOW + 101, "ID7"
    )
    assert await store.find_route(DEFAULT_UPSTREAM, "id299", NOW) == Route(
        "alice", b"A299", NOW + 100
    )
    await store.close()


async def names_known(path: Path) -> None:
    """A store file that has numbered "alice" and "bob" already, and one route "id0"."""
    store = make(path)
    store.start()
    await store.add_route(DEFAULT_UPSTREAM, "id0", "alice", None, NOW)
    await store.add_route(DEFAULT_UPSTREAM, "seed", "bob", None, NOW)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_of_routes_is_one_insert_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of routes is one multi-row INSERT between BEGIN and COMMIT (few sqlite steps:
    each drops the GIL and takes it back from the reactor thread), durable once answered."""
    path = tmp_path / "s.db"
    await names_known(path)
    statements: list[str] = []
    connect = sf.connect

    def traced(*args: Any) -> sqlite3.Connection:
        conn = connect(*args)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sf, "connect", traced)
    store = make(path)
    store.load()
    added = [
        store.add_route(DEFAULT_UPSTREAM, f"new{n}", "alice", b"A%d" % n, NOW, None)
        for n in range(21)
    ]
    store.start()
    await gatherResults(added)
    writes = [sql for sql in statements if not sql.startswith(("PRAGMA", "SELECT"))]
    assert [sql.split(" (")[0] for sql in writes] == [
        "BEGIN IMMEDIATE",
        "INSERT OR IGNORE INTO routes",
        "COMMIT",
    ]
    assert rows(path, "SELECT count(*) FROM routes WHERE message_id LIKE 'new%'") == [(21,)]
    stats = store.stats()
    assert (stats.commits, stats.writes, stats.routes) == (1, 21, 23)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_routes_go_in_as_many_statements_as_sqlite_takes_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sqlite's old limit of 999 parameters, 301 routes take two INSERTs (160 rows, and
    141 padded to 144), the same as in one."""
    statements: list[str] = []
    connect = sf.connect

    def limited(*args: Any) -> sqlite3.Connection:
        conn = connect(*args)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sf, "connect", limited)
    path = tmp_path / "s.db"
    store = make(path)
    store.load()
    added = [store.add_route(DEFAULT_UPSTREAM, f"id{n}", "alice", None, NOW) for n in range(300)]
    added.append(store.add_route(DEFAULT_UPSTREAM, "id7", "bob", None, NOW + 1, "ID7"))
    store.start()
    await gatherResults(added)
    inserts = [sql for sql in statements if sql.startswith("INSERT OR IGNORE INTO routes")]
    assert [sql.count("),") + 1 for sql in inserts] == [160, 144]
    stats = store.stats()
    assert (stats.commits, stats.writes, stats.routes) == (1, 301, 300)
    assert await store.find_route(DEFAULT_UPSTREAM, "id7", NOW) == Route(
        "bob", None, NOW + 101, "ID7"
    )
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_of_routes_updates_the_keys_already_there(tmp_path: Path) -> None:
    """A key there before the batch, and one written twice in it: the last write wins (in the
    same transaction), each key counts once."""
    path = tmp_path / "s.db"
    await names_known(path)
    store = make(path)
    store.load()
    added = [
        store.add_route(DEFAULT_UPSTREAM, f"id{n}", "alice", b"A%d" % n, NOW) for n in range(40)
    ]
    added.append(store.add_route(DEFAULT_UPSTREAM, "id7", "bob", None, NOW + 1, "ID7"))
    store.start()
    await gatherResults(added)
    stats = store.stats()
    assert (stats.commits, stats.writes, stats.routes) == (1, 41, 41)
    assert await store.find_route(DEFAULT_UPSTREAM, "id0", NOW) == Route("alice", b"A0", NOW + 100)
    assert await store.find_route(DEFAULT_UPSTREAM, "id7", NOW) == Route(
        "bob", None, NOW + 101, "ID7"
    )
    await store.close()
    assert rows(path, "SELECT count(*) FROM routes") == [(41,)]


@pytest_twisted.ensureDeferred
async def test_each_deferred_fires_only_once_its_write_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = make(path)
    store.start()
    seen: list[list[tuple[Any, ...]]] = []

    def look(query: str) -> Any:
        return lambda _: seen.append(rows(path, query))

    item = Held("mo", "alice", b"frame", NOW + 100)
    writes = [
        store.add_route(DEFAULT_UPSTREAM, "op1", "alice", None, NOW).addCallback(
            look("SELECT message_id FROM routes")
        ),
        store.hold_delivery(item).addCallback(look("SELECT frame FROM deliveries")),
        store.hold_part(HeldPart(b"p1", "alice", b"f", False, NOW, NOW)).addCallback(
            look("SELECT app_message_id FROM parts")
        ),
        store.save_windows([WindowEntry("dedup", b"k" * 12, NOW, NOW + 60, 0, b"m")]).addCallback(
            look("SELECT entries FROM windows")
        ),
    ]
    await gatherResults(writes)
    assert seen == [[("op1",)], [(b"frame",)], [(b"p1",)], [(1,)]]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_close_writes_what_is_queued_and_leaves_no_delayed_call(tmp_path: Path) -> None:
    store = make(tmp_path / "s.db")
    store.start()
    writes = [store.add_route(DEFAULT_UPSTREAM, f"id{n}", "alice", None, NOW) for n in range(50)]
    item = Held("mo", "alice", b"frame", NOW + 100)
    await store.hold_delivery(item)
    store.delivered(item)
    await store.close()
    await gatherResults(writes)
    assert rows(tmp_path / "s.db", "SELECT count(*) FROM routes") == [(50,)]
    assert rows(tmp_path / "s.db", "SELECT count(*) FROM deliveries") == [(0,)]
    assert not any(getattr(c.func, "__self__", None) is store for c in reactor().getDelayedCalls())
    failure_of(store.add_route(DEFAULT_UPSTREAM, "x", "a", None, NOW)).trap(StoreUnavailable)


@pytest_twisted.ensureDeferred
async def test_expiry_goes_in_small_batches(tmp_path: Path) -> None:
    store = make(tmp_path / "s.db", expire_batch=10)
    store.start()
    for n in range(25):
        await store.add_route(DEFAULT_UPSTREAM, f"id{n}", "alice", None, NOW)
    await store.hold_delivery(Held("mo", "alice", b"f", NOW + 1))
    await store.save_windows([WindowEntry("flood", b"447700900123", NOW, NOW + 1, 2)])
    left = []
    for _ in range(3):
        store.expire(NOW + 200)
        await store.find_route(DEFAULT_UPSTREAM, "id0", NOW)  # runs after the expiry
        left.append(store.stats().routes)
    assert left == [15, 5, 0]
    stats = store.stats()
    assert (stats.deliveries, stats.windows, stats.evicted) == (0, 0, 0)
    await store.close()


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sync_sets_the_pragma(tmp_path: Path, sync: sf.Sync) -> None:
    conn = sf.connect(str(tmp_path / "s.db"), sync, None)
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == {"full": 2, "normal": 1}[sync]
    conn.close()
    store = make(tmp_path / "t.db", sync=sync)
    assert store._conn is not None
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == {"full": 2, "normal": 1}[sync]
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()  # never started: closes at once


# --- files it refuses ---------------------------------------------------------------------


def a_store_file(path: Path, routes: int = 3000) -> None:
    """A store with some routes, closed and checkpointed (all in one file)."""
    make(path).close()
    conn = sf.connect(str(path), "full", None)
    conn.executemany(
        "INSERT INTO routes VALUES (1, ?, 1, NULL, 5.0, NULL)",
        [(f"{n:016x}",) for n in range(routes)],
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def truncated(path: Path) -> None:
    a_store_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 // 4096 * 4096])


def newer_schema(path: Path) -> None:
    a_store_file(path, routes=1)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = 99 WHERE name = 'version'")
    conn.commit()
    conn.close()


def foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (n INTEGER)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("spoil", "what"),
    [
        (random_bytes, "not a sqlite database"),
        (truncated, "malformed"),
        (newer_schema, "schema version 99 is newer"),
        (foreign_database, "not a smpprelay store"),
    ],
)
def test_a_file_it_cannot_use_is_refused_and_left_alone(
    tmp_path: Path, spoil: Any, what: str
) -> None:
    path = tmp_path / "s.db"
    spoil(path)
    before = path.read_bytes()
    with pytest.raises(StoreCorrupt) as raised:
        make(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert what in message
    assert "\n" not in message
    assert path.read_bytes() == before


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "s.db"
    with pytest.raises(StoreCorrupt, match=r"directory .*nowhere does not exist"):
        make(path)
    assert not path.parent.exists()


def test_the_secret_is_kept_in_the_file(tmp_path: Path) -> None:
    first = make(tmp_path / "s.db")
    first.close()
    second = make(tmp_path / "s.db")
    second.close()
    assert first.secret == second.secret
    assert first.secret != make(tmp_path / "other.db").secret


# --- writes that fail, and recover --------------------------------------------------------


@pytest.mark.logs_errors
@pytest_twisted.ensureDeferred
async def test_a_full_file_fails_writes_until_there_is_room(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = make(path, max_size=160 * 1024, probe_interval=0.05)
    store.start()
    calls: list[tuple[bool, str]] = []
    store.on_state_change.append(lambda ok, problem: calls.append((ok, problem)))
    await store.add_route(DEFAULT_UPSTREAM, "kept", "alice", None, NOW)
    with store_lines() as events:
        error = await fill_until_it_fails(store)
        assert str(error) == "database or disk is full"
        assert store.problem == "database or disk is full"

        def make_room() -> None:
            conn = sqlite3.connect(path)
            conn.execute("DELETE FROM routes WHERE message_id LIKE 'fill%'")
            conn.commit()
            conn.close()

        await fails_then_recovers(store, events, make_room)
    assert calls == [(False, "database or disk is full"), (True, "")]
    await store.close()


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.logs_errors
@pytest_twisted.ensureDeferred
async def test_a_full_filesystem_fails_writes_until_space_is_freed(
    small_filesystem: Path,
) -> None:
    store = make(small_filesystem / "s.db", probe_interval=0.05)
    store.start()
    await store.add_route(DEFAULT_UPSTREAM, "kept", "alice", None, NOW)
    filler = small_filesystem / "filler"
    with open(filler, "wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass  # the filesystem is full
    with store_lines() as events:
        error = await fill_until_it_fails(store)
        assert str(error) == store.problem
        assert "full" in store.problem
        await fails_then_recovers(store, events, filler.unlink)
    await store.close()


@pytest.mark.logs_errors
@pytest_twisted.ensureDeferred
async def test_an_io_error_fails_writes_until_it_clears(tmp_path: Path) -> None:
    """Files made immutable (chattr +i) fail every write through the open descriptors with
    EPERM, which sqlite reports as an I/O error. (A read-only fault of an open connection could
    not be made for real: remounting read-only is refused while files are open for writing,
    and sqlite goes on writing a renamed file in WAL mode.)"""
    path = tmp_path / "s.db"
    store = make(path, probe_interval=0.05)
    store.start()
    await store.add_route(DEFAULT_UPSTREAM, "kept", "alice", None, NOW)
    files = [str(path), f"{path}-wal"]
    done = subprocess.run(["chattr", "+i", *files], capture_output=True)
    if done.returncode != 0:
        await store.close()
        pytest.skip(f"chattr +i not possible here: {done.stderr.decode().strip()}")
    try:
        with store_lines() as events:
            error = await fill_until_it_fails(store, limit=10)
            assert str(error) == "disk I/O error"

            def clear() -> None:
                subprocess.run(["chattr", "-i", *files], check=True)

            await fails_then_recovers(store, events, clear)
    finally:
        subprocess.run(["chattr", "-i", *files], check=False)
    await store.close()


@pytest.mark.logs_errors
@pytest_twisted.ensureDeferred
async def test_close_while_failing_cancels_the_probe(tmp_path: Path) -> None:
    store = make(tmp_path / "s.db", max_size=160 * 1024, probe_interval=30)
    store.start()
    await fill_until_it_fails(store)
    assert any(call.func == store._probe for call in reactor().getDelayedCalls())
    await store.close()
    assert not any(call.func == store._probe for call in reactor().getDelayedCalls())


@pytest.mark.logs_errors
@pytest_twisted.ensureDeferred
async def test_a_writer_that_cannot_open_the_file_fails_calls_and_still_closes(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    store = make(directory / "s.db", probe_interval=30)
    shutil.rmtree(directory)  # after the check at open, before the writer's own connection
    store.start()
    with store_lines() as events:
        failed = store.find_route(DEFAULT_UPSTREAM, "x", NOW)
        with pytest.raises(StoreUnavailable, match="unable to open database file"):
            await failed
    assert not store.writable
    assert len(events) == 1
    await store.close()
    assert not any(call.func == store._probe for call in reactor().getDelayedCalls())


@pytest_twisted.ensureDeferred
async def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """A file of the previous release (no operator_id, no app id index) keeps its routes and
    gains both at open."""
    path = tmp_path / "store.db"
    make(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX routes_app")
    conn.execute("ALTER TABLE routes DROP COLUMN operator_id")
    conn.execute("INSERT INTO names VALUES (1, 'default'), (2, 'alice')")
    conn.execute("INSERT INTO routes VALUES (1, 'OLD', 2, X'5231', 500.0)")
    conn.execute("UPDATE meta SET value = 1 WHERE name = 'version'")
    conn.commit()
    conn.close()
    store = make(path)
    store.load(0.0)
    store.start()
    try:
        assert rows(path, "SELECT value FROM meta WHERE name = 'version'") == [(2,)]
        assert await store.find_app_id(b"R1", 1.0) == [
            Mapped("default", "OLD", Route("alice", b"R1", 500.0))
        ]
        await store.add_route("default", "NEW", "alice", None, 1.0, "new")
        assert await store.find_route("default", "NEW", 2.0) == Route("alice", None, 101.0, "new")
    finally:
        await store.close()


def test_nulls_and_blobs_are_bound_without_a_lookup_for_an_adapter() -> None:
    """The store registers identity adapters for None and bytes (sqlite_file): without one,
    Python's sqlite3 fails two attribute lookups per NULL or blob bound; with them the values
    are stored as before."""
    for kind in (type(None), bytes):
        assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters
    conn = sqlite3.connect(":memory:")
    assert conn.execute("SELECT typeof(?), typeof(?), ?", (None, b"ab", b"ab")).fetchone() == (
        "null",
        "blob",
        b"ab",
    )
    conn.close()
