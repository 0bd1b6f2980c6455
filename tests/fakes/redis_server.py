"""A real Redis for the tests: Debian's ``redis-server`` on a free loopback port, in a temporary
directory, with the append-only file fsynced on every write (what the README asks operators
to run), started, stopped, killed and started again by the tests.

`.ci/run` installs the package. Where it is missing the tests that need it are skipped with a
clear reason, except under CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from smpprelay.store.redis_link import RedisLink

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def need_redis() -> None:
    """Skip the calling test when redis-server is missing (fail under CI)."""
    if os.path.exists(REDIS_SERVER):
        return
    if os.environ.get("CI"):
        pytest.fail("redis-server is missing: .ci/run should have installed it")
    pytest.skip("redis-server is not installed (apt-get install redis-server)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process the test owns; `url` is what a relay is given."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        fsync: str = "always",
        password: str | None = None,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.fsync = fsync
        self.password = password  # required of clients (``--requirepass``) when given
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        secret = f":{self.password}@" if self.password else ""
        return f"redis://{secret}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port and files) and wait until it answers."""
        need_redis()
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as link:
                    link.sendall(b"PING\r\n")
                    if link.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # up either way
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self, kill: bool = False) -> None:
        """Stop it (SIGTERM: it writes what it has), or kill it (SIGKILL)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        process.wait(timeout=10)

    def command(self, *args: str) -> bytes:
        """Run one command with redis-cli-like simplicity (inline protocol), for assertions."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as link:
            payload = b"*%d\r\n" % len(args) + b"".join(
                b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
            )
            link.sendall(payload)
            return link.recv(1 << 20)


async def until(condition: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Let the reactor run until ``condition()`` holds; fail after ``within`` seconds."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what or 'condition'} not met within {within} s"
        await deferLater(reactor, 0.02)


async def link_ready(link: RedisLink, within: float = 5.0) -> None:
    """Wait until ``link`` has a connection that answers."""
    await until(lambda: link.writable and link._connection() is not None, within, "redis link up")


async def drained(link: RedisLink) -> None:
    """Wait until what ``link`` sent so far has run in Redis: a PING comes back after every
    command sent before it. Twice, because a script Redis did not know is sent again (whole)
    when its NOSCRIPT reply arrives, which is before the first PING's answer."""
    await link.call("PING")
    await link.call("PING")
