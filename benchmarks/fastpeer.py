"""The C peers of ``../shared/tools/fastpeer.c``: build them, start the SMSC, run load clients.

``fastpeer smsc PORT`` is an operator SMSC and ``fastpeer load PORT N WINDOW SYSTEM_ID PASSWORD
[FIRST]`` a windowed load client (one bind_transceiver, N submits without registered_delivery,
message k = FIRST + i to its own number with its own text) that prints ``RATE <msgs/s> P50 <ms>
P99 <ms> OK <n> ERR <n>``. Both do millions of round trips per second, so whatever sits between
them is the only bottleneck. Shared by ``relay_bench.py --peer c`` and ``cluster_bench.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "tools" / "fastpeer.c"
HOST = "127.0.0.1"


def missing() -> str:
    """Why the C peers cannot be built here ("" when they can)."""
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    if not SOURCE.exists():
        return f"{SOURCE} does not exist"
    return ""


def build(directory: Path) -> Path:
    """Compile fastpeer (``gcc -O2``) into ``directory``; the executable's path."""
    binary = directory / "fastpeer"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def pin(pid: int, cpu: int) -> None:
    """Run process ``pid`` on ``cpu`` only (-1: leave it alone)."""
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {cpu})


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, deadline: float = 20) -> None:
    """Wait until something accepts on ``port``; raise if ``process`` exits or time runs out."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on {port}")


# Load clients number their messages from an offset no earlier client in this process used, so
# that the relay's dedup and flood windows refuse none of them.
_first = itertools.count(0, 10_000_000)


def next_first(count: int) -> int:
    """A fresh message-number offset for ``count`` messages (at most 10 million)."""
    if count > 10_000_000:
        raise ValueError("at most 10,000,000 messages per load client")
    return next(_first)


@dataclass(frozen=True)
class LoadLine:
    """What one C load client printed (``RATE .. P50 .. P99 .. OK .. ERR ..``)."""

    rate: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    text: str
    exit_code: int

    @classmethod
    def parse(cls, text: str, exit_code: int) -> LoadLine:
        """Read the client's output; zeros (and the text) when it printed no RATE line."""
        fields = text.split()
        if len(fields) < 10 or fields[0] != "RATE":
            return cls(0.0, float("nan"), float("nan"), 0, 0, text, exit_code)
        return cls(
            float(fields[1]),
            float(fields[3]),
            float(fields[5]),
            int(fields[7]),
            int(fields[9]),
            text,
            exit_code,
        )


def start_load(
    binary: Path, port: int, count: int, window: int, account: str, password: str, first: int
) -> subprocess.Popen[bytes]:
    """Start one C load client (its output on a pipe); see `finish_load`."""
    command = [str(binary), "load", str(port), str(count), str(window), account, password]
    return subprocess.Popen([*command, str(first)], stdout=subprocess.PIPE)


def finish_load(client: subprocess.Popen[bytes], timeout: float = 300) -> LoadLine:
    """Wait for a client `start_load` started and read its line."""
    out, _ = client.communicate(timeout=timeout)
    return LoadLine.parse(out.decode().strip(), client.returncode)


def run_loads(
    binary: Path,
    ports: Iterable[int],
    count: int,
    window: int,
    account: str,
    password: str,
    cpu: int = -1,
) -> tuple[list[LoadLine], float]:
    """One C load client per port, all at once, each with fresh message numbers; their lines
    and the wall seconds from the first start to the last exit. ``cpu``: pin them there."""
    began = time.monotonic()
    clients = []
    for port in ports:
        client = start_load(binary, port, count, window, account, password, next_first(count))
        pin(client.pid, cpu)
        clients.append(client)
    lines = [finish_load(client) for client in clients]
    return lines, time.monotonic() - began
