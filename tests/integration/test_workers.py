"""``twistd -n smpprelay --workers 2``: two relay processes on one app port, each with its own
simulated SMSC and metrics port; binds land on both; a killed worker is restarted; SIGTERM
stops everything with status 0 and leaves no process behind; a parent killed outright takes
its workers with it.

The workers share a real Redis (the `redis_server` fixture), as `workers:` requires: what they
share through it is tested in tests/integration/test_scale_out.py; this tests the processes and
the port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import smpplib.client
import smpplib.consts
import yaml

from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import CLIENTS, PASSWORDS
from tests.integration.twistd import twistd_args, twistd_env, wait_until_ready

DEADLINE = 15.0


def _free_pair() -> tuple[int, int]:
    """A free port for SMPP and a free base port whose next port is free too (metrics)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            base = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        with socket.socket() as smpp:
            smpp.bind(("127.0.0.1", 0))
            port = smpp.getsockname()[1]
        if port not in (base, base + 1):
            return port, base
    raise AssertionError("no free ports")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(each) for each in text.split()]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def _wait(condition: Any, what: str, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {DEADLINE} s:\n{log.read_text()}")
        time.sleep(0.05)


def _bound(metrics_port: int) -> float:
    """Sessions bound now on the worker serving ``metrics_port``."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    found = re.findall(r"^smpprelay_bound_sessions\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return sum(float(each) for each in found)


@contextmanager
def _workers(
    tmp_path: Path,
    redis: RedisServer,
    ports: tuple[int, int] | None = None,
    ready: bool = True,
) -> Iterator[tuple[subprocess.Popen[bytes], Path, int, int]]:
    port, metrics = ports or _free_pair()
    settings = {
        "listen": {"host": "127.0.0.1", "port": port},
        "metrics": {"host": "127.0.0.1", "port": metrics},
        "clients": [dict(each, allowed_ips=["127.0.0.0/8"]) for each in CLIENTS],
        "store": {"backend": "redis", "url": redis.url},
        "limits": {"shutdown_timeout": 3},
    }
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(settings))
    log = tmp_path / "twistd.log"
    env = twistd_env()
    args = twistd_args("smpprelay", "--config", str(config), "--workers", "2")
    with log.open("wb") as out:
        parent = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        if ready:
            wait_until_ready(metrics, log)
            wait_until_ready(metrics + 1, log)
        yield parent, log, port, metrics
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=DEADLINE)


def _bind(port: int, system_id: str) -> Any:
    client = smpplib.client.Client("127.0.0.1", port, allow_unknown_opt_params=True, timeout=5)
    client.connect()
    client.bind_transceiver(system_id=system_id, password=PASSWORDS[system_id])
    return client


def _submit(client: Any, text: str) -> Any:
    answers: list[Any] = []
    client.set_message_sent_handler(lambda pdu, **_: answers.append(pdu))
    client.send_message(
        source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
        source_addr="SHOP",
        dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
        dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
        destination_addr="79991234567",
        short_message=text.encode(),  # each its own: the same text twice is a duplicate
    )
    while not answers:
        client.read_once()
    return answers[0]


def test_two_workers_share_the_port_serve_binds_and_stop_cleanly_on_sigterm(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Apps keep binding until both workers hold a bind (the kernel hands each connection to
    whichever worker accepts first); each worker relays a submit to its own simulated SMSC;
    SIGTERM stops both workers gracefully and the parent exits 0, leaving no process."""
    with _workers(tmp_path, redis_server) as (parent, log, port, metrics):
        workers = _children(parent.pid)
        assert len(workers) == 2, log.read_text()
        clients: list[Any] = []
        try:
            for n in range(20):
                clients.append(_bind(port, CLIENTS[n % 2]["system_id"]))
                _wait(lambda: sum(_bound(m) for m in (metrics, metrics + 1)) == len(clients),
                      "the bind counted", log)  # fmt: skip
                if _bound(metrics) and _bound(metrics + 1):
                    break
            assert _bound(metrics) >= 1, log.read_text()
            assert _bound(metrics + 1) >= 1, log.read_text()
            for n, client in enumerate(clients):
                assert _submit(client, f"hello from app number {n}").status == 0
            # SIGHUP to the parent: every worker re-reads the file (README "Live reload").
            parent.send_signal(signal.SIGHUP)
            _wait(lambda: log.read_text().count("reloaded ") == 2, "both workers reloaded", log)
            for client in clients:
                client.unbind()
        finally:
            for client in clients:
                client.disconnect()
        parent.send_signal(signal.SIGTERM)
        code = parent.wait(timeout=DEADLINE)
        text = log.read_text()
        assert code == 0, text
        assert not [pid for pid in workers if _alive(pid)], text
    assert text.rstrip().endswith("Server Shut Down."), text
    for index in (0, 1):
        assert f"[worker {index}: smpprelay.service#info] stopped cleanly" in text
        assert f"workers: worker {index} stopped (exit status 0" in text
    assert "Traceback" not in text


def test_a_killed_worker_is_restarted_and_a_killed_parent_takes_its_workers_along(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGKILL of a worker: the parent starts another one (counted in its metrics) on the
    same port while the other keeps serving. SIGKILL of the parent: each worker sees its
    lifeline close and stops by itself, so no orphan keeps the port."""
    with _workers(tmp_path, redis_server) as (parent, log, port, metrics):
        first, second = _children(parent.pid)  # in the order started: worker 0, worker 1
        os.kill(first, signal.SIGKILL)
        _wait(lambda: len(_children(parent.pid)) == 2 and first not in _children(parent.pid),
              "a new worker", log)  # fmt: skip
        assert second in _children(parent.pid)  # the other one served on, untouched
        wait_until_ready(metrics, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as page:
            assert 'smpprelay_worker_restarts{worker="0"} 1.0' in page.read().decode()
        client = _bind(port, "app1")
        try:
            assert _submit(client, "hello after a restart").status == 0
        finally:
            client.disconnect()
        workers = _children(parent.pid)
        parent.kill()
        parent.wait(timeout=DEADLINE)
        _wait(lambda: not any(_alive(pid) for pid in workers), "workers gone", log)
        text = log.read_text()
    assert "workers: worker 0 exited (exit status None, signal 9)" in text
    assert text.count("the parent process is gone; stopping") == 2, text
    with socket.socket() as probe:  # nobody holds the port any more
        probe.bind(("127.0.0.1", port))


def test_a_worker_that_cannot_start_makes_the_parent_give_up_with_status_1(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Worker 1's metrics port is taken: it exits at each start; after five quick exits in a
    row (backoff 0.5, 1, 2, 4 s) the parent stops worker 0 gracefully and exits 1 (so
    systemd's Restart=on-failure and StartLimitBurst see a failure, not a clean stop)."""
    port, metrics = _free_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics + 1))
        taken.listen(1)
        with _workers(tmp_path, redis_server, (port, metrics), ready=False) as (parent, log, _, _):
            code = parent.wait(timeout=DEADLINE + 10)
            text = log.read_text()
    assert code == 1, text
    assert text.count("[worker 1: twisted.scripts._twistd_unix.UnixAppLogger#info] twistd") == 5
    assert "worker 1 exited 5 times in a row" in text
    assert "giving up" in text
    assert "[worker 0: smpprelay.service#info] stopped cleanly" in text
    assert "workers: worker 0 stopped (exit status 0" in text
