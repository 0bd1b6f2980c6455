"""The twistd plugins as operators run them: ``twistd -n smpprelay`` in a subprocess.

The repo root goes on PYTHONPATH so twistd finds ``twisted/plugins`` and ``smpprelay`` (an
editable PEP 660 install would not expose the plugin; see design.md). Every subprocess runs
with a timeout and is killed in a ``finally``, so nothing can hang the suite.
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
import yaml

from tests.certs import make_certs

from .conftest import free_port
from .test_security import _old_tls, _plain_bind, app_context

TWISTD = Path(sys.executable).parent / "twistd"
REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _twistd(*args: str) -> list[str]:
    return [str(TWISTD), "-n", "--pidfile=", "--logfile=-", *args]


@contextmanager
def running(args: list[str], workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Start ``args`` with its output in a log file; kill it afterwards if still running."""
    log = workdir / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=workdir
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

    After a complete shutdown twistd re-raises the signal on itself so its parent sees how it
    ended (``twisted.application.app._exitWithSignal``): a clean exit after SIGTERM is status
    -SIGTERM (what systemd counts as success), not 0. "Server Shut Down." is logged only once
    every service has stopped.
    """
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=STOP_DEADLINE)
    text = log.read_text()
    assert code in (0, -signal.SIGTERM), text
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


def test_twistd_smpprelay_relays_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """twistd -n smpprelay --config F serves a submit and its receipt, then exits 0 on TERM."""
    smpp_port, metrics_port = free_port(), free_port()
    config = tmp_path / "relay.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": smpp_port},
                "metrics": {"host": "127.0.0.1", "port": metrics_port},
                "clients": [{"system_id": "app1", "password": "secret1"}],
            }
        )
    )
    with running(_twistd("smpprelay", "--config", str(config)), tmp_path) as (process, log):
        wait_until_accepting(smpp_port, process, log)
        wait_until_ready(metrics_port, log)

        resp, receipt = submit_and_get_receipt(smpp_port, "app1", "secret1")

        assert resp.status == smpplib.consts.SMPP_ESME_ROK
        assert resp.message_id
        assert receipt.receipted_message_id == resp.message_id
        text = stop(process, log)
    assert "Traceback" not in text
    assert "Unhandled Error" not in text


def test_twistd_smpprelay_help_lists_config(tmp_path: Path) -> None:
    """twistd smpprelay --help exits 0 and documents --config."""
    result = subprocess.run(
        [str(TWISTD), "smpprelay", "--help"],
        capture_output=True,
        env=_env(),
        cwd=tmp_path,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert b"--config" in result.stdout


def test_twistd_smpprelay_bad_config_one_line_error(tmp_path: Path) -> None:
    """An unknown key: non-zero exit, one stderr line naming the file and the key, no trace."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": free_port()},
                "clients": [{"system_id": "app1", "password": "secret1"}],
                "surprise_key": 1,
            }
        )
    )
    result = subprocess.run(
        _twistd("smpprelay", "--config", str(config)),
        capture_output=True,
        env=_env(),
        cwd=tmp_path,
        timeout=30,
        check=False,
    )

    stderr = result.stderr.decode()
    assert result.returncode != 0
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert str(config) in lines[0]
    assert "surprise_key" in lines[0]
    assert "unknown key" in lines[0]
    assert "Traceback" not in stderr + result.stdout.decode()


def test_twistd_simulator_accepts_a_bind(tmp_path: Path) -> None:
    """twistd -n smpprelay-simulator --port N listens and takes a smpplib bind and submit."""
    port = free_port()
    args = _twistd("smpprelay-simulator", "--port", str(port))
    with running(args, tmp_path) as (process, log):
        wait_until_accepting(port, process, log)

        resp, receipt = submit_and_get_receipt(port, "anyone", "anything")

        assert resp.status == smpplib.consts.SMPP_ESME_ROK
        assert receipt.receipted_message_id == resp.message_id
        text = stop(process, log)
    assert "Traceback" not in text


def test_twistd_simulator_over_tls(tmp_path: Path) -> None:
    """With --tls-cert and --tls-key the simulator speaks SMPP over TLS 1.2+ only on --port:
    a smpplib app checking the certificate binds, submits and gets its receipt; plain SMPP
    and TLS 1.1 get no SMPP answer."""
    certs = make_certs(tmp_path)
    port = free_port()
    args = _twistd(
        "smpprelay-simulator", "--port", str(port), "--tls-cert", certs.cert, "--tls-key", certs.key
    )
    with running(args, tmp_path) as (process, log):
        wait_until_accepting(port, process, log)

        resp, receipt = submit_and_get_receipt(port, "anyone", "anything", app_context(certs.ca))
        assert resp.status == smpplib.consts.SMPP_ESME_ROK
        assert receipt.receipted_message_id == resp.message_id
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            answer = _plain_bind(sock)
        # At most a TLS alert record (content type 21), never an SMPP bind_resp.
        assert answer == b"" or answer[0] == 21
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert "PROTOCOL_VERSION" in _old_tls(sock).upper()
        text = stop(process, log)
    assert f"simulated SMSC (TLS) listening on 127.0.0.1:{port}" in text
    assert "Traceback" not in text
