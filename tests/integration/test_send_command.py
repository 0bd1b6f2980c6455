"""``smpprelay-send`` as an operator runs it: the console script in a subprocess, against a relay
with its built-in simulator, over a real socket."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from smpprelay.service import RelayService

from .conftest import Harness, free_port, port_of, simulator_of
from .twistd import REPO, twistd_env

SCRIPT = "smpprelay-send"


def console_script() -> list[str]:
    """The command line of the console script: the one pip installed next to this Python, or,
    where this checkout is not the one installed, what pip writes for the entry point that
    setup.cfg declares (``module:function`` called, its return value the exit status)."""
    installed = Path(sys.executable).parent / SCRIPT
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    entries = dict(
        line.split(" = ")
        for line in config["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    module, function = entries[SCRIPT].split(":")
    if installed.exists():
        return [sys.executable, str(installed)]
    wrapper = f"import sys; from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", wrapper]


async def run(*args: str) -> tuple[int, str, str]:
    """Run the command to its end without blocking the reactor: (status, stdout, stderr)."""
    command = console_script()
    out, err, code = await getProcessOutputAndValue(
        command[0], [*command[1:], *args], env=twistd_env(), path=str(REPO)
    )
    return code, out.decode(), err.decode()


def account(relay: RelayService, *more: str) -> list[str]:
    return [
        "--port",
        str(port_of(relay.listener)),
        "--system-id",
        "app1",
        "--password",
        "secret1",
        *more,
    ]


@pytest_twisted.ensureDeferred
async def test_a_delivered_message_exits_0(relay: RelayService) -> None:
    code, out, err = await run(*account(relay, "--to", "447700900123", "--timeout", "10", "Hello"))
    assert (code, err) == (0, ""), out
    assert "submit_sm_resp: ESME_ROK, message id " in out
    assert out.rstrip().endswith(": DELIVRD")
    [received] = simulator_of(relay).received
    assert received.message.short_message == b"Hello"


@pytest_twisted.ensureDeferred
async def test_ascii_is_sent_as_dc_1_and_reaches_the_operator_as_gsm(relay: RelayService) -> None:
    code, out, _ = await run(*account(relay, "--to", "1", "--coding", "ascii", "a[b"))
    assert code == 0, out
    [received] = simulator_of(relay).received
    assert (received.message.data_coding, received.message.short_message) == (0, b"a\x1b<b")


@pytest_twisted.ensureDeferred
async def test_an_undelivered_receipt_exits_1(harness: Harness) -> None:
    relay = await harness.relay(simulator={"stat": "UNDELIV"})
    code, out, err = await run(*account(relay, "--to", "447700900123", "--timeout", "10", "Hi"))
    assert (code, err) == (1, ""), out
    assert out.rstrip().endswith(": UNDELIV")


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_exits_2_with_one_line(relay: RelayService) -> None:
    port = str(port_of(relay.listener))
    code, out, err = await run(
        "--port", port, "--system-id", "app1", "--password", "wrong", "--to", "1", "x"
    )
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("smpprelay-send: bind refused by 127.0.0.1:")
    assert "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_no_relay_exits_2_with_one_line() -> None:
    code, out, err = await run("--port", str(free_port()), "--to", "1", "x")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith("smpprelay-send: cannot connect to 127.0.0.1:")
