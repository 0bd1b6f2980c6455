"""Scale-out benchmark: 1, 2 and 3 relay processes on one Redis, driven by the C peers.

Run ``python benchmarks/cluster_bench.py [--quick]``. It builds ``../shared/tools/fastpeer.c``
(``gcc -O2``; without gcc it says so and exits 0), starts Debian's ``redis-server`` on a free
port (``appendonly yes``, ``appendfsync`` as ``--appendfsync``, default ``always`` as the README
asks for the sqlite ``sync: full`` promise), the C SMSC, and then for each instance count N:
N ``twistd -n smpprelay`` processes with ``store: {backend: redis}`` and the operator's four
rules at their defaults, and N C load clients (one per instance, ``--window`` in flight each,
every message distinct so that no rule refuses any). It prints, per N: the aggregate rate, the
CPU each kind of process took per submit (relays together, Redis, the C peers), and the share of
the machine's cores busy.

Two more rows say what Redis costs: one instance on the memory store under the same load (its
CPU per submit against the Redis instance's is what Redis adds on the relay), and the latency
the relay adds at a paced ``--rate`` (2,000/s) with each store, measured by the Python load of
`relay_bench.run_load` straight to the C SMSC and through the relay.

The C peers take little CPU (a few percent of a core at these rates), so on a 2-core machine
the relays and Redis share about two cores: the aggregate stops growing once they are full.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastpeer as fastpeer_peers
import relay_bench

REPO = Path(__file__).resolve().parents[1]
TWISTD = Path(sys.executable).parent / "twistd"
HOST = "127.0.0.1"
ACCOUNT, PASSWORD = "bench", "bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(metrics_port: int, process: subprocess.Popen[bytes], deadline: float = 20) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"relay exited with {process.returncode}")
        with suppress(OSError):
            url = f"http://{HOST}:{metrics_port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError("relay not ready")


@contextmanager
def started(command: list[str], workdir: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, its output in ``workdir/name.log``, stopped (SIGTERM) on the way out."""
    log = (workdir / f"{name}.log").open("wb")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def relay_config(smsc_port: int, store: dict[str, Any], window: int) -> dict[str, Any]:
    return {
        "listen": {"host": HOST, "port": free_port()},
        "metrics": {"host": HOST, "port": free_port()},
        "clients": [{"system_id": ACCOUNT, "password": PASSWORD, "allowed_ips": ["127.0.0.0/8"]}],
        "upstream": {
            "host": HOST,
            "port": smsc_port,
            "system_id": "relay",
            "password": "relay",
            "window": window,
        },
        "limits": {"window": window},
        "store": store,
    }


@contextmanager
def relays(
    workdir: Path, count: int, smsc_port: int, store: dict[str, Any], window: int
) -> Iterator[list[tuple[subprocess.Popen[bytes], dict[str, Any]]]]:
    """``count`` relay processes, ready."""
    with contextlib_stack() as stack:
        running = []
        for n in range(count):
            directory = workdir / f"relay{n}-{time.monotonic_ns()}"
            directory.mkdir()
            config = relay_config(smsc_port, store, window)
            (directory / "relay.yaml").write_text(yaml.safe_dump(config))
            command = [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "smpprelay"]
            process = stack.enter_context(
                started([*command, "--config", "relay.yaml"], directory, "relay")
            )
            running.append((process, config))
        for process, config in running:
            wait_ready(config["metrics"]["port"], process)
        yield running


@contextmanager
def contextlib_stack() -> Iterator[Any]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield stack


def measure(
    binary: Path,
    running: list[tuple[subprocess.Popen[bytes], dict[str, Any]]],
    redis_pid: int | None,
    count: int,
    window: int,
    smsc_pid: int,
) -> dict[str, Any]:
    pids = [process.pid for process, _ in running]
    before = [cpu_seconds(pid) for pid in pids]
    redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
    smsc_before = cpu_seconds(smsc_pid)
    # The C load clients are waited for inside: their CPU lands in this process's children.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ports = [config["listen"]["port"] for _, config in running]
    answers, wall = fastpeer_peers.run_loads(binary, ports, count, window, ACCOUNT, PASSWORD)
    rate = sum(answer.rate for answer in answers)
    lines = [answer.text for answer in answers]
    total = count * len(ports)
    relay_cpu = sum(cpu_seconds(pid) for pid in pids) - sum(before)
    redis_cpu = (cpu_seconds(redis_pid) - redis_before) if redis_pid else 0.0
    smsc_cpu = cpu_seconds(smsc_pid) - smsc_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    ok = sum(answer.ok for answer in answers)
    return {
        "instances": len(ports),
        "rate": round(rate),
        "answered_ok": ok,
        "submits": total,
        "relay_us_per_submit": round(relay_cpu / total * 1e6, 1),
        "redis_us_per_submit": round(redis_cpu / total * 1e6, 1),
        "relay_cores_busy": round(relay_cpu / wall, 2),
        "redis_cores_busy": round(redis_cpu / wall, 2),
        # What the C peers take: the load generator and the SMSC, in cores while it ran.
        "load_clients_cores_busy": round(load_cpu / wall, 2),
        "smsc_cores_busy": round(smsc_cpu / wall, 2),
        "clients": lines,
    }


def latency(port: int, rate: float, seconds: float) -> tuple[float, float]:
    """p50 and p99 (ms) of a paced Python load to ``port``."""
    count = int(rate * seconds)
    frames = relay_bench.Frames(relay_bench.distinct_submits(count))
    result = relay_bench.run_load(
        port, frames, count=count, window=100, clients=1, max_seconds=seconds * 3, rate=rate
    )
    return result.percentile_ms(50), result.percentile_ms(99)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke)")
    parser.add_argument("--count", type=int, default=40_000, help="submits per load client")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--appendfsync", default="always", choices=("always", "everysec"))
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.seconds, args.instances = 3000, 2.0, "1,2"
    why = fastpeer_peers.missing()
    if why:
        print(f"cluster_bench: {why}: the C peers cannot be built; nothing measured")
        return 0
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("cluster_bench: redis-server missing (apt-get install redis-server)")
        return 0
    results: dict[str, Any] = {"cores": os.cpu_count(), "appendfsync": args.appendfsync}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as temp:
        workdir = Path(temp)
        fastpeer = fastpeer_peers.build(workdir)
        smsc_port, redis_port = free_port(), free_port()
        redis_command = [
            redis_server, "--port", str(redis_port), "--bind", HOST, "--dir", temp,
            "--appendonly", "yes", "--appendfsync", args.appendfsync, "--save", "",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        with (
            started([str(fastpeer), "smsc", str(smsc_port)], workdir, "smsc") as smsc,
            started(redis_command, workdir, "redis") as redis,
        ):
            fastpeer_peers.wait_port(smsc_port, smsc, "fastpeer smsc")
            fastpeer_peers.wait_port(redis_port, redis, "redis-server")
            store = {"backend": "redis", "url": f"redis://{HOST}:{redis_port}/0"}
            rows = []
            for count in (int(n) for n in args.instances.split(",")):
                with relays(workdir, count, smsc_port, store, args.window) as running:
                    rows.append(
                        measure(fastpeer, running, redis.pid, args.count, args.window, smsc.pid)
                    )
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "clients"}))
            results["redis"] = rows
            with relays(workdir, 1, smsc_port, {"backend": "memory"}, args.window) as running:
                memory = measure(fastpeer, running, None, args.count, args.window, smsc.pid)
                print(json.dumps({k: v for k, v in memory.items() if k != "clients"}))
                results["memory_one"] = memory
                port = running[0][1]["listen"]["port"]
                direct = latency(smsc_port, args.rate, args.seconds)
                through_memory = latency(port, args.rate, args.seconds)
            with relays(workdir, 1, smsc_port, store, args.window) as running:
                port = running[0][1]["listen"]["port"]
                through_redis = latency(port, args.rate, args.seconds)
    results["latency_ms"] = {
        "rate": args.rate,
        "direct_p50_p99": direct,
        "memory_p50_p99": through_memory,
        "redis_p50_p99": through_redis,
        "redis_adds_p99": round(through_redis[1] - through_memory[1], 3),
    }
    one = results["redis"][0]
    results["redis_adds_relay_us_per_submit"] = round(
        one["relay_us_per_submit"] - memory["relay_us_per_submit"], 1
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
