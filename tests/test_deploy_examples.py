"""The scale-out examples (etc/haproxy.cfg, etc/docker-compose.yml, etc/smpprelay@.service,
etc/smpprelay-redis.yaml) are accepted by their tools and agree with each other and the relay.

No Docker engine runs here: the compose file is read as YAML and checked for the files it
mounts, the ports it wires and the Redis settings the relay's promises rest on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from smpprelay.config import LimitsConfig, UpstreamConfig, load_config
from smpprelay.redis_url import parse_url
from smpprelay.workers import STOP_GRACE
from tests.test_systemd_unit import verify_unit

ROOT = Path(__file__).parent.parent
ETC = ROOT / "etc"
HAPROXY = ETC / "haproxy.cfg"
COMPOSE = ETC / "docker-compose.yml"
TEMPLATE = ETC / "smpprelay@.service"
RELAY_CONFIG = ETC / "smpprelay-redis.yaml"


def _haproxy_sections() -> dict[str, list[str]]:
    """Each section ("defaults", "backend relays", ...) with its lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in HAPROXY.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    return sections


def _minutes(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match is not None, value
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 0.001}[match[2]]
    return int(match[1]) * scale


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_haproxy_accepts_the_configuration() -> None:
    """`haproxy -c` parses the file; the only warnings allowed are the compose services'
    names, which resolve on the compose network only."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy; .ci/run does)")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    warnings = [line for line in output.splitlines() if "[WARNING]" in line or "[ALERT]" in line]
    assert all("could not resolve address 'relay" in line for line in warnings), output


def test_haproxy_balances_tcp_by_least_connections_and_checks_readyz_on_the_metrics_port() -> None:
    sections = _haproxy_sections()
    defaults = sections["defaults"]
    assert "mode tcp" in defaults
    backend = sections["backend relays"]
    assert "balance leastconn" in backend
    assert "option httpchk GET /readyz" in backend
    assert "http-check expect status 200" in backend
    config = load_config(str(RELAY_CONFIG))
    servers = [line.split() for line in backend if line.startswith("server ")]
    assert len(servers) >= 2
    for server in servers:
        _host, _, port = server[2].rpartition(":")
        assert int(port) == config.listen.port, server
        assert server[server.index("check") + 1 : server.index("check") + 3] == [
            "port",
            str(config.metrics.port),
        ], server
    [frontend] = [name for name in sections if name.startswith("frontend")]
    [bind] = [line for line in sections[frontend] if line.startswith("bind ")]
    assert bind.endswith(f":{config.listen.port}")


def test_haproxy_never_cuts_a_quiet_bind_before_the_relay_would() -> None:
    """Idle timeouts above 3 enquire_link intervals and above the relay's own
    limits.inactivity (the relay decides when a silent app is gone)."""
    timeouts = {
        line.split()[1]: _minutes(line.split()[2])
        for line in _haproxy_sections()["defaults"]
        if line.startswith("timeout ")
    }
    enquire_link = attrs.fields(UpstreamConfig).enquire_link.default
    assert isinstance(enquire_link, float)
    for side in ("client", "server"):
        assert timeouts[side] >= 3 * enquire_link
        assert timeouts[side] > LimitsConfig().inactivity


def test_compose_runs_redis_durably_and_two_relays_behind_haproxy() -> None:
    services = _compose()["services"]
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    assert "--maxmemory-policy noeviction" in command
    backend = _haproxy_sections()["backend relays"]
    names = [line.split()[2].rpartition(":")[0] for line in backend if line.startswith("server ")]
    assert sorted(names) == ["relay1", "relay2"]
    config = load_config(str(RELAY_CONFIG))
    shutdown = LimitsConfig().shutdown_timeout, config.limits.shutdown_timeout
    for name in names:
        relay = services[name]
        assert "redis" in relay["depends_on"]
        grace = relay["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) > max(shutdown)
    # The relays reach Redis by its service name; HAProxy publishes the frontend's port.
    assert parse_url(config.store.url).host == "redis"
    assert config.store.backend == "redis"
    assert config.listen.host == config.metrics.host == "0.0.0.0"
    assert services["haproxy"]["ports"] == [f"{config.listen.port}:{config.listen.port}"]


def test_compose_refers_only_to_files_that_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ETC / source).exists(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: {source}"
        build = service.get("build")
        if build is not None:
            context = ETC / build["context"]
            assert (context / build["dockerfile"]).is_file(), name
            assert (context / "setup.py").is_file(), name
    mounted = {
        volume.split(":")[1]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
    }
    dockerfile = (ETC / "Dockerfile").read_text()
    match = re.search(r'CMD \["--config", "([^"]+)"\]', dockerfile)
    assert match is not None
    assert match[1] in mounted


def test_the_template_passes_systemd_analyze_verify_for_an_instance(tmp_path: Path) -> None:
    """As tests/test_systemd_unit.py does for the single unit, on an instance ("a") of the
    template so that %i is expanded too."""
    verify_unit(TEMPLATE, "smpprelay@a.service", tmp_path)


def test_the_template_runs_one_config_per_instance_and_lets_workers_stop_in_order() -> None:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in TEMPLATE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    [exec_start] = settings["ExecStart"]
    assert exec_start.split()[1:] == [
        "-n",
        "--pidfile=",
        "smpprelay",
        "--config",
        "/etc/smpprelay/%i.yaml",
    ]
    assert settings["WorkingDirectory"] == ["/var/lib/smpprelay/%i"]
    assert settings["StateDirectory"] == ["smpprelay/%i"]
    assert settings["KillMode"] == ["mixed"]
    [stop] = settings["TimeoutStopSec"]
    assert float(stop) > LimitsConfig().shutdown_timeout + STOP_GRACE
