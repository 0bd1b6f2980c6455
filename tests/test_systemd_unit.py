"""etc/smpprelay.service: systemd accepts it, its command line is one twistd parses, and it gives
the relay's graceful stop more time than the relay takes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smpprelay.config import LimitsConfig

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "etc" / "smpprelay.service"
EXAMPLE_CONFIG = ROOT / "etc" / "smpprelay.yaml"
# Where the unit assumes the relay is installed (a virtual environment at /opt/smpprelay).
INSTALLED_TWISTD = "/opt/smpprelay/bin/twistd"
VENV_TWISTD = Path(sys.executable).parent / "twistd"


def _service_settings() -> dict[str, list[str]]:
    """The [Service] section's keys, each with its values in order (systemd allows repeats)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _seconds(span: str) -> float:
    """A systemd time span of the simple forms we use ("45", "45s", "1min 30s")."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0}
    total = 0.0
    for part in span.split():
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", part)
        assert match is not None, f"cannot read time span {span!r}"
        assert match[2] in units, f"unit {match[2]!r} in time span {span!r}"
        total += float(match[1]) * units[match[2]]
    return total


def verify_unit(template: Path, unit_name: str, tmp_path: Path) -> None:
    """Run `systemd-analyze verify` on ``template`` copied to ``tmp_path`` as ``unit_name``,
    with this venv's real twistd for the /opt/smpprelay one (verify insists the binary exists),
    and fail on anything it says of our unit: unknown keys and bad values are only warnings,
    exiting 0. Skipped where systemd-analyze is not installed."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = template.read_text()
    assert INSTALLED_TWISTD in text
    assert VENV_TWISTD.exists(), VENV_TWISTD
    unit = tmp_path / unit_name
    unit.write_text(text.replace(INSTALLED_TWISTD, str(VENV_TWISTD)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Lines about other units (the host's own, pulled in by After=) are not ours to judge.
    ours = [line for line in output.splitlines() if "smpprelay" in line]
    assert ours == [], output


def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing wrong with the unit (`verify_unit`)."""
    verify_unit(UNIT, "smpprelay.service", tmp_path)


def test_unit_runs_twistd_in_the_foreground_without_a_pidfile_and_with_the_config() -> None:
    """-n and --pidfile= are twistd's options (before the plugin name); --config is the
    plugin's (after it). twistd itself parses the line: its --help for it exits 0."""
    [exec_start] = _service_settings()["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == INSTALLED_TWISTD
    assert argv[1:] == [
        "-n",
        "--pidfile=",
        "smpprelay",
        "--config",
        "/etc/smpprelay/smpprelay.yaml",
    ]
    # The same twistd options and plugin, asking the plugin for its usage: an option in the
    # wrong place would be refused here with status 1.
    result = subprocess.run(
        [str(VENV_TWISTD), *argv[1:4], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--config" in result.stdout


def test_timeout_stop_sec_exceeds_the_relay_shutdown_timeout() -> None:
    """systemd SIGKILLs a stop that outlasts TimeoutStopSec: it must exceed the relay's own
    bound on a stop (limits.shutdown_timeout), the default's and the example config's, so a
    graceful stop is never cut short. The default is read from the code: the two cannot drift
    apart unnoticed."""
    settings = _service_settings()
    [timeout] = settings["TimeoutStopSec"]
    stop = _seconds(timeout)
    assert stop > LimitsConfig().shutdown_timeout
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert stop > float(example["limits"]["shutdown_timeout"])
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["Restart"] == ["on-failure"]
    # systemctl reload: SIGHUP, which re-reads the configuration (smpprelay.reload).
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_the_state_directory_is_the_only_writable_path_and_the_store_lives_there() -> None:
    """The store's default path is relative to the working directory: the working directory is
    the state directory systemd creates (owned by the service's user) and makes writable under
    ProtectSystem=strict; nothing else is made writable."""
    settings = _service_settings()
    [state] = settings["StateDirectory"]
    assert settings["WorkingDirectory"] == [f"/var/lib/{state}"]
    assert settings["ProtectSystem"] == ["strict"]
    for key in ("ReadWritePaths", "ReadWriteDirectories"):
        assert key not in settings
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[key] == ["yes"], key
    assert settings["User"] != ["root"]
    store = yaml.safe_load(EXAMPLE_CONFIG.read_text()).get("store") or {}
    path = str(store.get("path", "smpprelay.db"))
    assert not path.startswith("/") or path.startswith(f"/var/lib/{state}/"), path
