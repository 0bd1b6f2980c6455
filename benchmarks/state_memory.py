"""Memory of the duplicate and flood rules' state with many live entries.

Run ``python benchmarks/state_memory.py [--entries N]`` (N = 1,000,000 by default). Each
measurement runs in a fresh child process (this file under ``--kind``), which reads its
resident set size (``VmRSS`` in /proc/self/status, after ``gc.collect()``) before and after:

- ``dedup``: N distinct accepted messages in a `DedupFilter` (11-digit numbers, 60-160
  characters of text), all inside the window;
- ``flood``: N distinct destination numbers with a live streak in a `FloodFilter`;
- ``churn``: the two filled in one process, then N more of each while ``expire`` runs as the
  relay's sweep would, so the live count stays at N: a dict never shrinks its table, so this
  is the steady state under load;
- ``routes``: N receipt routes (operator message ids of 16 hex digits, ten accounts, every
  tenth with an id of the relay's own as concatenated parts have), the router's map whose
  size ``receipts.map_max`` bounds;
- ``churn`` again with glibc's own mmap threshold, for comparison: the others fix it at
  128 KiB as ``twistd smpprelay`` does at start (`smpprelay.malloc`), since by default glibc
  keeps the large blocks a dict frees when it grows on its heap rather than returning them.

Every message goes through ``check`` and ``settle`` as in the relay; the messages themselves
are dropped at once, so what stays is the rules' state (plus the interpreter's baseline,
which ``before`` shows). It prints a table and one JSON line last. Target (from the issue):
under 300 MB resident for 1 M live entries of each kind.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from smpprelay.config import DedupRule, FloodRule  # noqa: E402
from smpprelay.filters.dedup import DedupFilter  # noqa: E402
from smpprelay.filters.flood import FloodFilter  # noqa: E402
from smpprelay.malloc import fix_mmap_threshold  # noqa: E402
from smpprelay.message import ACCEPT, Message  # noqa: E402
from smpprelay.metrics import Metrics  # noqa: E402
from smpprelay.pdu import BLANK_MESSAGE  # noqa: E402
from smpprelay.store.tables import ReceiptRoutes  # noqa: E402

TARGET_MB = 300.0
START = 1_700_000_000.0  # a realistic clock value: the accept times are full-size floats
TEXT = b"Your order 1234 has shipped and will arrive tomorrow between 9:00 and 13:00. " * 3
FIELDS = BLANK_MESSAGE._replace(
    source_ton=5,
    source_addr=b"MyShop",
    dest_ton=1,
    dest_npi=1,
    registered_delivery=1,
)


def rss_bytes() -> int:
    """This process's resident set size after a full collection."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def message(index: int, destination_base: int) -> Message:
    """A distinct submit: its own 11-digit number and 60-160 characters of text."""
    length = 60 + index % 101
    text = (b"%d " % index + TEXT)[:length]
    # encode() makes an exactly sized bytes object, as slicing a received frame does.
    destination = f"{destination_base + index:011d}".encode()
    fields = FIELDS._replace(destination_addr=destination, short_message=text)
    return Message("app1", b"", fields, b"", text, None)


def fill(
    rule: DedupFilter | FloodFilter, count: int, first: int, start: float, spread: float
) -> float:
    """Pass ``count`` messages through check and settle, ``spread`` s apart; return s/message."""
    base = 79_000_000_000 if isinstance(rule, FloodFilter) else 79_100_000_000
    check, settle = rule.check, rule.settle
    began = time.perf_counter()
    for index in range(first, first + count):
        now = start + index * spread
        sample = message(index, base)
        if check(sample, now) is not ACCEPT:
            raise RuntimeError(f"{rule.name} rejected message {index}")
        settle(sample, now, b"%016X" % index)
    return (time.perf_counter() - began) / count


def routes_child(entries: int) -> dict[str, Any]:
    """N live receipt routes, as the router keeps them."""
    routes = ReceiptRoutes(ttl=172_800.0, max_entries=entries)
    before = rss_bytes()
    began = time.perf_counter()
    for index in range(entries):
        app_id = b"R0123ABCD%08X" % index if index % 10 == 0 else None
        routes.add("%016X" % (0xA000000000000000 + index), f"app{index % 10}", START, app_id)
    seconds = time.perf_counter() - began
    after = rss_bytes()
    if len(routes) != entries:
        raise RuntimeError(f"{len(routes)} routes, not {entries}")
    return {
        "kind": "routes",
        "entries": entries,
        "before_mb": before / 1e6,
        "after_mb": after / 1e6,
        "bytes_per_entry": (after - before) / entries,
        "us_per_message": {"routes": seconds / entries * 1e6},
    }


def child(kind: str, entries: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    if kind == "routes":
        return routes_child(entries)
    metrics = Metrics()
    window = 60.0
    # All N accepted inside one window (dedup) or gap (flood): every entry is live at the end.
    spread = (window / 2) / entries
    rules: list[DedupFilter | FloodFilter] = []
    if kind in ("dedup", "both", "churn"):
        rules.append(DedupFilter(DedupRule(window=window), metrics))
    if kind in ("flood", "both", "churn"):
        rules.append(FloodFilter(FloodRule(gap=window), metrics))
    before = rss_bytes()
    per_message = {rule.name: fill(rule, entries, 0, START, spread) for rule in rules}
    for rule in rules:
        rule.expire(START + window / 2)
        if len(rule) != entries:
            raise RuntimeError(f"{rule.name} holds {len(rule)} entries, not {entries}")
    after = rss_bytes()
    result: dict[str, Any] = {
        "kind": kind,
        "entries": entries,
        "before_mb": before / 1e6,
        "after_mb": after / 1e6,
        "bytes_per_entry": (after - before) / entries / len(rules),
        "us_per_message": {name: seconds * 1e6 for name, seconds in per_message.items()},
    }
    if kind == "churn":
        # N more of each, expiring as the relay's sweep does (here every 1% of N), at a time
        # that keeps the newest N live (they span half a window).
        step = max(1, entries // 100)
        done = entries
        while done < 2 * entries:
            batch = min(step, 2 * entries - done)
            for rule in rules:
                fill(rule, batch, done, START, spread)
                rule.expire(START + (done + batch - 0.5) * spread + window / 2)
            done += batch
        live = [len(rule) for rule in rules]
        churned = rss_bytes()
        result["live_after_churn"] = live
        result["churn_after_mb"] = churned / 1e6
        result["churn_bytes_per_entry"] = (churned - before) / sum(live)
    return result


def run_child(kind: str, entries: int, glibc_default: bool = False) -> dict[str, Any]:
    """``child`` in a fresh interpreter, so that no measurement inherits another's memory."""
    command = [sys.executable, str(Path(__file__).resolve()), "--kind", kind]
    command += ["--entries", str(entries), *(["--glibc-default"] if glibc_default else [])]
    output = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="live entries per kind")
    parser.add_argument(
        "--kind", choices=("dedup", "flood", "both", "churn", "routes"), help="(child)"
    )
    parser.add_argument("--glibc-default", action="store_true", help="(child)")
    args = parser.parse_args(argv)
    if args.entries < 1:
        parser.error("--entries must be at least 1")
    if args.kind:
        if not args.glibc_default:
            fix_mmap_threshold()  # as `twistd smpprelay` does at start
        print(json.dumps(child(args.kind, args.entries)), flush=True)
        return 0

    n = args.entries
    print(f"state memory: {n:,} live entries per kind, each run in a fresh process", flush=True)
    dedup, flood = run_child("dedup", n), run_child("flood", n)
    both = run_child("churn", n)  # both kinds filled, then churned
    default = run_child("churn", n, glibc_default=True)
    routes = run_child("routes", n)
    print(f"\n{'run':<38}{'before MB':>10}{'after MB':>10}{'bytes/entry':>13}")
    rows = [
        ("dedup alone, filled", dedup, "after_mb", "bytes_per_entry"),
        ("flood alone, filled", flood, "after_mb", "bytes_per_entry"),
        ("both, filled", both, "after_mb", "bytes_per_entry"),
        ("both, steady state (churned)", both, "churn_after_mb", "churn_bytes_per_entry"),
        ("both, filled, glibc's own threshold", default, "after_mb", "bytes_per_entry"),
        ("both, steady, glibc's own threshold", default, "churn_after_mb", "churn_bytes_per_entry"),
    ]
    for label, result, mb, per_entry in rows:
        print(
            f"{label:<38}{result['before_mb']:>10.1f}{result[mb]:>10.1f}{result[per_entry]:>13.0f}"
        )
    print(
        f"{'receipt routes (receipts.map_max)':<38}{routes['before_mb']:>10.1f}"
        f"{routes['after_mb']:>10.1f}{routes['bytes_per_entry']:>13.0f}"
    )
    dedup_us, flood_us = dedup["us_per_message"]["dedup"], flood["us_per_message"]["flood"]
    print(
        "check + settle per message (building the message included): "
        f"dedup {dedup_us:.1f} us, flood {flood_us:.1f} us"
    )
    scaled = n / 1_000_000
    print(f"\ntarget: under {TARGET_MB:.0f} MB resident for 1 M live entries of each kind")
    if scaled != 1:
        print(f"  (measured with {n:,} entries: the figures below are scaled to 1 M)")
    for label, result, mb, _ in rows:
        at_1m = result["before_mb"] + (result[mb] - result["before_mb"]) / scaled
        verdict = "info" if result is default else "PASS" if at_1m < TARGET_MB else "MISS"
        print(f"  [{verdict}] {label}: {at_1m:.1f} MB")
    summary = {
        "entries": n,
        "baseline_mb": round(both["before_mb"], 1),
        "dedup_bytes_per_entry": round(dedup["bytes_per_entry"], 1),
        "flood_bytes_per_entry": round(flood["bytes_per_entry"], 1),
        "dedup_mb": round(dedup["after_mb"], 1),
        "flood_mb": round(flood["after_mb"], 1),
        "both_mb": round(both["after_mb"], 1),
        "both_steady_mb": round(both["churn_after_mb"], 1),
        "both_steady_bytes_per_entry": round(both["churn_bytes_per_entry"], 1),
        "both_mb_glibc_default": round(default["after_mb"], 1),
        "both_steady_mb_glibc_default": round(default["churn_after_mb"], 1),
        "dedup_us_per_message": round(dedup_us, 2),
        "flood_us_per_message": round(flood_us, 2),
        "target_mb": TARGET_MB,
        "route_bytes": round(routes["bytes_per_entry"], 1),
        "routes_mb": round(routes["after_mb"], 1),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
