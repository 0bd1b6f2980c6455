"""The twistd plugins as operators run them: ``twistd -n smpprelay`` in a subprocess.

The repo root goes on PYTHONPATH so twistd finds ``twisted/plugins`` and ``smpprelay`` (an
editable PEP 660 install would not expose the plugin; see design.md). Every subprocess runs
with a timeout and is killed in a ``finally``, so nothing can hang the suite.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import smpplib.client
import smpplib.consts
import yaml

from tests.certs import make_certs

from .apps import app_context, old_tls, plain_bind
from .conftest import free_port
from .twistd import (
    TWISTD,
    running,
    stop,
    submit_and_get_receipt,
    twistd_args,
    twistd_env,
    wait_until_accepting,
    wait_until_ready,
)


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
    with running(twistd_args("smpprelay", "--config", str(config)), tmp_path) as (process, log):
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
        env=twistd_env(),
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
        twistd_args("smpprelay", "--config", str(config)),
        capture_output=True,
        env=twistd_env(),
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
    args = twistd_args("smpprelay-simulator", "--port", str(port))
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
    args = twistd_args(
        "smpprelay-simulator", "--port", str(port), "--tls-cert", certs.cert, "--tls-key", certs.key
    )
    with running(args, tmp_path) as (process, log):
        wait_until_accepting(port, process, log)

        resp, receipt = submit_and_get_receipt(port, "anyone", "anything", app_context(certs.ca))
        assert resp.status == smpplib.consts.SMPP_ESME_ROK
        assert receipt.receipted_message_id == resp.message_id
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            answer = plain_bind(sock)
        # At most a TLS alert record (content type 21), never an SMPP bind_resp.
        assert answer == b"" or answer[0] == 21
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert "PROTOCOL_VERSION" in old_tls(sock).upper()
        text = stop(process, log)
    assert f"simulated SMSC (TLS) listening on 127.0.0.1:{port}" in text
    assert "Traceback" not in text
