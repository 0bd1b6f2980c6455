"""Running ``twistd`` in a subprocess for the integration tests: its command line and
environment, waiting (bounded) for it to accept or be ready, stopping it, and one submit with
its receipt over smpplib.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import smpplib.client
import smpplib.consts

TWISTD = Path(sys.executable).parent / "twistd"
REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0


def twistd_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def twistd_args(*args: str) -> list[str]:
    return [str(TWISTD), "-n", "--pidfile=", "--logfile=-", *args]


@contextmanager
def running(args: list[str], workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Start ``args`` with its output in a log file; kill it afterwards if still running."""
    log = workdir / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=twistd_env(), cwd=workdir
        )
        try:
            yield process, log
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_DEADLINE)


def wait_until_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until 127.0.0.1:``port`` accepts connections; fail if the process dies first."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} not accepting:\n{log.read_text()}") from None
            time.sleep(0.05)


def wait_until_ready(metrics_port: int, log: Path) -> None:
    """Poll /readyz until it answers 200 (upstream bound, listener open)."""
    url = f"http://127.0.0.1:{metrics_port}/readyz"
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz never answered 200:\n{log.read_text()}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], log: Path) -> str:
    """SIGTERM the process; assert a clean shutdown in time; return its log.

    A clean stop exits 0 (twistd would re-raise the signal; `smpprelay.tap` tells it not to
    once everything stopped in time). "Server Shut Down." is logged only once every service
    has stopped.
    """
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=STOP_DEADLINE)
    text = log.read_text()
    assert code == 0, text
    assert text.rstrip().endswith("Server Shut Down."), text
    return text


def submit_and_get_receipt(
    port: int, system_id: str, password: str, ssl_context: ssl.SSLContext | None = None
) -> tuple[Any, Any]:
    """Bind a smpplib transceiver (over TLS with ``ssl_context``), submit asking for a receipt,
    return (resp, receipt)."""
    client = smpplib.client.Client(
        "127.0.0.1", port, allow_unknown_opt_params=True, timeout=5, ssl_context=ssl_context
    )
    responses: list[Any] = []
    deliveries: list[Any] = []
    client.set_message_sent_handler(lambda pdu, **_: responses.append(pdu))
    client.set_message_received_handler(lambda pdu, **_: deliveries.append(pdu))
    client.connect()
    try:
        client.bind_transceiver(system_id=system_id, password=password)
        client.send_message(
            source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
            source_addr="SHOP",
            dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
            dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
            destination_addr="79991234567",
            short_message=b"hello from twistd test",
            registered_delivery=1,
        )
        deadline = time.monotonic() + 5
        while not (responses and deliveries):
            assert time.monotonic() < deadline, "no answer or receipt within 5 s"
            client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return responses[0], deliveries[0]
