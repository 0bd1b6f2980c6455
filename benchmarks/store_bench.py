"""The sqlite store: group-commit throughput, and a file with millions of routes.

Run ``python benchmarks/store_bench.py`` (not in CI):

- ``commit`` (the default): N ``add_route`` calls (``--count``, 200,000) kept W outstanding
  (``--window``, 100: as W app sessions waiting on their ``submit_sm_resp``), with ``sync: full``
  then ``normal``: routes/s, commits, writes per commit, and the time from the call to its
  Deferred (the route durable) at p50 and p99.
- ``--routes N`` (e.g. 10,000,000): fills a store with N pending routes in big transactions
  (the store's own schema and insert statement, without its thread), then reports the file's
  size and bytes per route, the time to open it (the check and the count at open) and a full
  ``PRAGMA quick_check``, the process's resident set size after opening and after 10,000
  lookups through the store, and the lookup latency.

Operator message ids are 16 hex digits in a scattered order (as a b-tree sees random ids),
ten accounts, every tenth route with an id of the relay's own. Files go to ``--dir`` (default:
a fresh directory under /work/tmp-bench, removed at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from twisted.internet import defer  # noqa: E402

from smpprelay.store import DEFAULT_UPSTREAM  # noqa: E402
from smpprelay.store import sqlite_file as sf  # noqa: E402
from smpprelay.store.sqlite import SqliteStore  # noqa: E402

NOW = 1_700_000_000.0
TTL = 7 * 86400.0
ACCOUNTS = [f"account{n}" for n in range(10)]


def message_id(n: int) -> str:
    """The n-th operator id: 16 hex digits, scattered (a multiplicative hash of n)."""
    return f"{(n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF:016x}"


def app_id(n: int) -> bytes | None:
    return f"{n:016x}".encode() if n % 10 == 0 else None


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def file_size(path: str) -> int:
    return sum(os.stat(p).st_size for p in (path, path + "-wal") if os.path.exists(p))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_store(path: str, reactor: Any, sync: sf.Sync = "full") -> SqliteStore:
    return SqliteStore(
        path, reactor, sync=sync, route_ttl=TTL, final_grace=3600.0, map_max=100_000_000
    )


async def commit_run(reactor: Any, directory: str, sync: sf.Sync, count: int, window: int) -> Any:
    """``count`` add_route calls, ``window`` outstanding at any time."""
    store = make_store(os.path.join(directory, f"commit-{sync}.db"), reactor, sync)
    store.start()
    latencies: list[float] = []
    done: defer.Deferred[None] = defer.Deferred()
    issued = 0
    finished = 0

    def issue() -> None:
        nonlocal issued
        n = issued
        issued += 1
        started = time.perf_counter()
        d = store.add_route(DEFAULT_UPSTREAM, message_id(n), ACCOUNTS[n % 10], app_id(n), NOW)
        d.addCallback(lambda _: settled(started))

    def settled(started: float) -> None:
        nonlocal finished
        latencies.append(time.perf_counter() - started)
        finished += 1
        if issued < count:
            issue()
        elif finished == count:
            done.callback(None)

    begin = time.perf_counter()
    for _ in range(min(window, count)):
        issue()
    await done
    elapsed = time.perf_counter() - begin
    stats = store.stats()
    await store.close()
    return {
        "sync": sync,
        "routes": count,
        "window": window,
        "routes_per_s": round(count / elapsed),
        "commits": stats.commits,
        "writes_per_commit": round(stats.writes / max(1, stats.commits), 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def fill(path: str, routes: int, chunk: int = 500_000) -> float:
    """Write ``routes`` routes straight into a new store's file; returns the seconds taken."""
    conn = sf.connect(path, "normal", None)
    conn.execute("PRAGMA cache_size = -262144")  # 256 MB while filling, this connection only
    begin = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO names (name) VALUES (?)", (DEFAULT_UPSTREAM,))
    conn.executemany("INSERT INTO names (name) VALUES (?)", [(a,) for a in ACCOUNTS])
    conn.execute("COMMIT")
    ids = dict(conn.execute("SELECT name, id FROM names"))
    upstream = ids[DEFAULT_UPSTREAM]
    accounts = [ids[a] for a in ACCOUNTS]
    for start in range(0, routes, chunk):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR IGNORE INTO routes VALUES (?, ?, ?, ?, ?)",
            (
                (upstream, message_id(n), accounts[n % 10], app_id(n), NOW + TTL + n / 1000)
                for n in range(start, min(routes, start + chunk))
            ),
        )
        conn.execute("COMMIT")
        print(f"  filled {min(routes, start + chunk):,}", file=sys.stderr, flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - begin


async def routes_run(reactor: Any, directory: str, routes: int, lookups: int) -> Any:
    path = os.path.join(directory, "routes.db")
    await make_store(path, reactor).close()  # the schema, as the store makes it
    fill_s = fill(path, routes)
    size = file_size(path)
    begin = time.perf_counter()
    conn = sqlite3.connect(path)
    problems = conn.execute("PRAGMA quick_check").fetchall()
    quick_check_s = time.perf_counter() - begin
    conn.close()
    begin = time.perf_counter()
    store = make_store(path, reactor)
    open_s = time.perf_counter() - begin
    loaded = store.load()
    store.start()
    rss_open = rss_mb()
    rng = random.Random(1)
    latencies: list[float] = []
    found = 0
    for _ in range(lookups):
        n = rng.randrange(routes)
        started = time.perf_counter()
        route = await store.find_route(DEFAULT_UPSTREAM, message_id(n), NOW)
        latencies.append(time.perf_counter() - started)
        found += route is not None
    rss_lookups = rss_mb()
    await store.close()
    return {
        "routes": routes,
        "loaded_routes": loaded.routes,
        "fill_s": round(fill_s, 1),
        "file_mb": round(size / 2**20, 1),
        "bytes_per_route": round(size / routes, 1),
        "quick_check_s": round(quick_check_s, 1),
        "quick_check": problems[0][0],
        "open_s": round(open_s, 2),
        "rss_mb_open": round(rss_open, 1),
        "rss_mb_after_lookups": round(rss_lookups, 1),
        "lookups_found": found,
        "lookup_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "lookup_p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--routes", type=int, default=0, help="fill this many routes instead")
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--dir", default="")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    os.makedirs("/work/tmp-bench", exist_ok=True)
    directory = args.dir or tempfile.mkdtemp(dir="/work/tmp-bench")
    from twisted.internet import reactor, task

    async def run(_: Any) -> None:
        results = []
        if args.routes:
            results.append(await routes_run(reactor, directory, args.routes, args.lookups))
        else:
            for sync in ("full", "normal"):
                results.append(await commit_run(reactor, directory, sync, args.count, args.window))
        for result in results:
            print(json.dumps(result))

    try:
        task.react(lambda r: defer.ensureDeferred(run(r)))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
