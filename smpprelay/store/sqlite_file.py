"""The sqlite store's file: open and check it, create its schema, read what the last run left.

Synchronous and free of Twisted: `smpprelay.store.sqlite` calls it once in its constructor
(before the reactor runs) and again in its writer thread for that thread's own connection.
Nothing here ever deletes, empties or overwrites an existing file: a file that is not a store
this relay can use raises `StoreCorrupt` naming it, and the operator decides.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Literal

from smpprelay.store import HeldPart, Loaded, StoreCorrupt, window_segments
from smpprelay.store.tables import DeliveryKind, Held

SCHEMA_VERSION = 2  # 2: routes.operator_id and the index on routes.app_message_id
HEADER = b"SQLite format 3\x00"

Sync = Literal["full", "normal"]

# Python's sqlite3 binds int, float, str and bytearray as they are, but looks for an adapter for
# anything else, None and bytes included: two attribute lookups that fail and format an
# AttributeError each time, for every NULL and blob bound (two per route: its app id and its
# operator id are mostly NULL). Registered adapters are found first, and these change nothing.
sqlite3.register_adapter(type(None), lambda value: value)
sqlite3.register_adapter(bytes, bytes)

# Routes are the bulk of the file (millions of rows), so they carry numbers for the upstream and
# the account (`names`) rather than their text, and no rowid (the key is the primary key).
SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
    "CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE routes (upstream INTEGER NOT NULL, message_id TEXT NOT NULL,"
    " account INTEGER NOT NULL, app_message_id BLOB, expires REAL NOT NULL,"
    " operator_id TEXT, PRIMARY KEY (upstream, message_id)) WITHOUT ROWID",
    "CREATE INDEX routes_expires ON routes (expires)",
    "CREATE TABLE deliveries (key INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
    " account TEXT NOT NULL, frame BLOB NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX deliveries_expires ON deliveries (expires)",
    # A rowid table: the rowid is the order the parts arrived in.
    "CREATE TABLE parts (app_message_id BLOB NOT NULL UNIQUE, account TEXT NOT NULL,"
    " frame BLOB NOT NULL, app_iso INTEGER NOT NULL, first REAL NOT NULL, arrived REAL NOT NULL,"
    " receipt_as BLOB NOT NULL DEFAULT x'')",
    # One row per write-behind: its entries packed (smpprelay.store.window_segments), expiring
    # with the last of them.
    "CREATE TABLE windows (id INTEGER PRIMARY KEY, expires REAL NOT NULL,"
    " entries INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX windows_expires ON windows (expires)",
)
# From version 1: the operator's exact id (NULL when it is the key), and routes found by the id
# their app was given: a partial index, so only the routes with a relay-issued id pay for it.
UPGRADE = (
    "ALTER TABLE routes ADD COLUMN operator_id TEXT",
    "CREATE INDEX routes_app ON routes (app_message_id) WHERE app_message_id IS NOT NULL",
)
APP_INDEX = UPGRADE[1]
TABLES = frozenset({"meta", "names", "routes", "deliveries", "parts", "windows"})
# Checked in full at open; `routes` is left out because at millions of rows a quick_check of it
# takes tens of seconds (see the module docstring of smpprelay.store.sqlite), and counting it
# at open reads its smallest index anyway.
CHECKED = ("meta", "names", "deliveries", "parts", "windows")


def _corrupt(path: str, what: str) -> StoreCorrupt:
    # One line, whatever sqlite said.
    return StoreCorrupt(f"{path}: {' '.join(what.split())}")


def _check_path(path: str) -> bool:
    """Whether the file exists; raise StoreCorrupt before sqlite touches it if it cannot be
    one of ours (so that sqlite never writes a header into somebody else's file)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _corrupt(path, f"directory {directory} does not exist")
    if not os.path.lexists(path):
        return False
    if not os.path.isfile(path):
        raise _corrupt(path, "not a regular file")
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except OSError as error:
        raise _corrupt(path, f"unreadable ({error.strerror})") from error
    if header and header[:16] != HEADER[: len(header[:16])]:
        raise _corrupt(path, "not a sqlite database")
    if header and len(header) < 100:
        raise _corrupt(path, f"truncated ({len(header)} bytes)")
    return True


def connect(path: str, sync: Sync, max_size: int | None) -> sqlite3.Connection:
    """A connection with the store's settings (each connection needs its own)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute(f"PRAGMA synchronous = {'FULL' if sync == 'full' else 'NORMAL'}")
    if max_size is not None:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        # Past this many pages a write fails as on a full disk (the file never grows beyond).
        conn.execute(f"PRAGMA max_page_count = {max(1, max_size // page_size)}")
    return conn


def open_file(path: str, sync: Sync, max_size: int | None) -> sqlite3.Connection:
    """Open (or create) the store at ``path``, check it, and return a connection to it."""
    existed = _check_path(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise _corrupt(path, str(error)) from error
    try:
        _check(conn, path, existed)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise _corrupt(path, f"cannot use the write-ahead log (journal mode {mode})")
        conn.close()
        conn = connect(path, sync, max_size)
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            _create(conn)
        else:
            _upgrade(conn)
    except sqlite3.Error as error:
        conn.close()
        raise _corrupt(path, str(error)) from error
    except StoreCorrupt:
        conn.close()
        raise
    return conn


def _check(conn: sqlite3.Connection, path: str, existed: bool) -> None:
    """Raise StoreCorrupt unless the file is empty or a store of a version this relay reads."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return
    if "meta" not in tables:
        raise _corrupt(path, "not a smpprelay store (it has no meta table)")
    row = conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
    if row is None or not isinstance(row[0], int):
        raise _corrupt(path, "not a smpprelay store (no schema version)")
    if row[0] > SCHEMA_VERSION:
        raise _corrupt(
            path, f"schema version {row[0]} is newer than this relay's ({SCHEMA_VERSION})"
        )
    if missing := TABLES - tables:
        raise _corrupt(path, f"tables missing: {', '.join(sorted(missing))}")
    for table in CHECKED:
        problems = [r[0] for r in conn.execute(f"PRAGMA quick_check({table})")]
        if problems != ["ok"]:
            raise _corrupt(path, f"damaged: {problems[0]}")


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute(APP_INDEX)
    conn.execute("INSERT INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
    conn.execute("INSERT INTO meta VALUES ('secret', ?)", (os.urandom(16),))
    conn.execute("COMMIT")


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring a version 1 file to this version (in one transaction: all or nothing)."""
    row = conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
    if row is None or row[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    for statement in UPGRADE:
        conn.execute(statement)
    conn.execute("UPDATE meta SET value = ? WHERE name = 'version'", (SCHEMA_VERSION,))
    conn.execute("COMMIT")


def read_secret(conn: sqlite3.Connection, path: str) -> bytes:
    """The dedup digest's key, made once when the file was created."""
    row = conn.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
    if row is None or not isinstance(row[0], bytes) or len(row[0]) != 16:
        raise _corrupt(path, "no secret in meta")
    return row[0]


def count_rows(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per table: once, at open (the writer keeps the counts up to date from there)."""
    counts = {
        table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("routes", "deliveries", "parts")
    }
    # Window entries, not segments: what the rules will have back.
    counts["windows"] = conn.execute("SELECT coalesce(sum(entries), 0) FROM windows").fetchone()[0]
    return counts


def max_key(conn: sqlite3.Connection) -> int:
    """The highest held delivery's key (new keys continue from it)."""
    return int(conn.execute("SELECT coalesce(max(key), 0) FROM deliveries").fetchone()[0])


def load(conn: sqlite3.Connection, now: float, routes: int) -> Loaded:
    """What the last run left: deliveries and windows not yet expired, every held part."""
    deliveries = [
        Held(_kind(kind), account, frame, expires, key=key)
        for key, kind, account, frame, expires in conn.execute(
            "SELECT key, kind, account, frame, expires FROM deliveries"
            " WHERE expires > ? ORDER BY key",
            (now,),
        )
    ]
    parts = [
        HeldPart(app_id, account, frame, bool(iso), first, arrived, receipt_as)
        for app_id, account, frame, iso, first, arrived, receipt_as in conn.execute(
            "SELECT app_message_id, account, frame, app_iso, first, arrived, receipt_as FROM parts"
            " ORDER BY rowid"
        )
    ]
    blobs = conn.execute("SELECT data FROM windows WHERE expires > ? ORDER BY id", (now,))
    windows = window_segments.live((blob for (blob,) in blobs), now)
    return Loaded(deliveries=deliveries, parts=parts, windows=windows, routes=routes)


def _kind(value: str) -> DeliveryKind:
    return "mo" if value == "mo" else "receipt"
