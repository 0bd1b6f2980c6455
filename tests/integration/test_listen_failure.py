"""``twistd -n smpprelay`` whose port another process holds, or whose store is unusable: it must
not start without them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

TWISTD = Path(sys.executable).parent / "twistd"
REPO = Path(__file__).resolve().parents[2]


def _twistd(workdir: Path, sections: dict[str, Any]) -> tuple[int, str]:
    """Run ``twistd -n smpprelay`` on ``sections`` until it exits: its status and output."""
    config = workdir / "smpprelay.yaml"
    config.write_text(yaml.safe_dump(sections))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "smpprelay", "--config", str(config)],
        capture_output=True,
        env=env,
        cwd=workdir,
        timeout=30,
    )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


def _held_port() -> socket.socket:
    """A socket listening on 127.0.0.1 on a port of the kernel's choosing, kept open."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    return held


@pytest.mark.parametrize("taken", ["listen", "metrics"])
def test_twistd_exits_1_with_one_line_when_its_port_is_taken(tmp_path: Path, taken: str) -> None:
    """With the SMPP (or the metrics) port held by another socket, twistd smpprelay exits at
    once with status 1 and a line naming the listener, the address and the reason, before
    it ever binds to the operator."""
    with _held_port() as held:
        port = held.getsockname()[1]
        sections: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "clients": [{"system_id": "app1", "password": "secret1"}],
        }
        sections[taken]["port"] = port
        status, output = _twistd(tmp_path, sections)
    name = "SMPP" if taken == "listen" else "metrics"
    assert status == 1, output
    # twistd -n logs what reaches stderr to its log, here stdout: the line is there once.
    errors = [line for line in output.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(errors) == 1, output
    assert f"smpprelay: {name}: " in errors[0]
    assert "Address already in use" in errors[0]
    assert "Traceback" not in output
    # Nothing reached the operator (here the built-in simulated SMSC): no bind was made.
    assert "bound" not in output


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is no database, just text that fills a page. " * 200, "not a sqlite database"),
        (b"SQLite format 3\0" + b"\xff" * 4000, ""),  # a header, then garbage
    ],
    ids=["text", "damaged"],
)
def test_twistd_exits_1_with_one_line_when_its_store_is_unusable(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """A store file that is not a usable database stops the start with one line naming the
    file, status 1, before any listener opens; the file is left exactly as it was."""
    store = tmp_path / "relay.db"
    store.write_bytes(content)
    sections: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "clients": [{"system_id": "app1", "password": "secret1"}],
        "store": {"backend": "sqlite", "path": str(store)},
    }
    status, output = _twistd(tmp_path, sections)
    assert status == 1, output
    errors = [line for line in output.splitlines() if str(store) in line]
    assert len(errors) == 1, output
    assert errors[0].startswith("smpprelay: store: ")
    assert problem in errors[0]
    assert "Traceback" not in output
    assert "listening" not in output.lower()
    assert "bound" not in output
    assert store.read_bytes() == content
