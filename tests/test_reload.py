"""Live reload (smpprelay.reload): a valid file is applied to the running parts with their
state kept; a file that does not load changes nothing, logs one line and is counted."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from smpprelay import reload as reload_module
from smpprelay.access import Access, TokenBucket
from smpprelay.config import Account, SecurityConfig, load_config
from smpprelay.filters.dedup import DedupFilter
from smpprelay.filters.flood import FloodFilter
from smpprelay.reload import Reloader, ReloadService, restart_needed
from smpprelay.service import RelayService, build

ACCOUNTS = [
    {"system_id": "app1", "password": "secret1", "mo_prefixes": ["7900"]},
    {"system_id": "app2", "password": "secret2", "throughput": 10},
]


def settings(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "clients": ACCOUNTS,
        "store": {"backend": "memory"},
        "filters": {"flood": {"max_messages": 50, "gap": 30}, "dedup": {"window": 60}},
    }
    base.update(sections)
    return base


class Relay:
    """A built (not started) relay, its config file, a reloader and its log lines."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = tmp_path / "relay.yaml"
        self.write(settings())
        self.reactor = MemoryReactorClock()
        config = load_config(str(self.path))
        self.service: RelayService = build(config, self.reactor)
        self.wall = 1000.0
        self.reloader = Reloader(
            str(self.path), config, self.service.live, self.service.metrics, lambda: self.wall
        )
        self.events: list[dict[str, Any]] = []
        monkeypatch.setattr(reload_module, "log", Logger(observer=self.events.append))  # type: ignore[arg-type]

    def write(self, data: object) -> None:
        self.path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.service.metrics.registry.get_sample_value(name, labels)

    def rule(self, kind: type) -> Any:
        chain = self.service.live.chain
        assert chain is not None
        return next(rule for rule in chain.filters if isinstance(rule, kind))

    def checks(self, system_id: str, password: str) -> bool:
        checker = self.service.live.portal.checkers[IUsernamePassword]
        result: list[object] = []
        checker.requestAvatarId(UsernamePassword(system_id.encode(), password.encode())).addBoth(
            result.append
        )
        return isinstance(result[0], bytes)


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Relay:
    return Relay(tmp_path, monkeypatch)


def test_a_valid_file_is_applied(relay: Relay) -> None:
    """Accounts, passwords, throughput, MO prefixes and rule values all change live."""
    accounts = [
        {"system_id": "app1", "password": "newpass", "mo_prefixes": ["7911"]},
        {"system_id": "app2", "password": "secret2", "throughput": 2},
        {"system_id": "app3", "password": "secret3"},
    ]
    relay.write(
        settings(
            clients=accounts,
            filters={"flood": {"max_messages": 3, "gap": 30}, "dedup": {"window": 5}},
        )
    )
    assert relay.reloader.reload()
    assert relay.checks("app1", "newpass")
    assert not relay.checks("app1", "secret1")
    assert relay.checks("app3", "secret3")
    router = relay.service.router
    assert router.mo_account(b"79112") == "app1"
    assert router.mo_account(b"79002") is None
    assert relay.service.live.access._buckets["app2"].rate == 2
    assert relay.rule(FloodFilter).max_messages == 3
    assert relay.rule(DedupFilter).window.window == 5
    assert relay.sample("smpprelay_config_reloads_total", result="ok") == 1
    assert relay.sample("smpprelay_config_reloads_total", result="failed") == 0
    assert relay.sample("smpprelay_config_last_reload_success_timestamp_seconds") == 1000.0
    [line] = [e for e in relay.events if "reloaded" in e["log_format"]]
    assert line["added"] == "app3"
    assert line["changed"] == "app1, app2"


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("clients: [\n  - {system_id: app1", "relay.yaml"),
        (yaml.safe_dump(settings(bogus=1)), "bogus"),
        (
            yaml.safe_dump(
                settings(listen={"tls": {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}})
            ),
            "listen.tls.cert",
        ),
        (
            yaml.safe_dump(
                settings(clients=[{"system_id": "app1", "password_hash": "$scrypt$ln=1$x$y"}])
            ),
            "clients[0].password_hash",
        ),
    ],
    ids=["bad-yaml", "unknown-key", "tls-file", "hash-without-pool"],
)
def test_a_file_that_does_not_load_changes_nothing(relay: Relay, content: str, named: str) -> None:
    before = relay.reloader.config
    relay.write(content)
    assert not relay.reloader.reload()
    assert relay.reloader.config is before
    assert relay.checks("app1", "secret1")
    assert relay.rule(FloodFilter).max_messages == 50
    assert relay.sample("smpprelay_config_reloads_total", result="failed") == 1
    assert relay.sample("smpprelay_config_reloads_total", result="ok") == 0
    [event] = relay.events
    line = str(event["error"])
    assert str(relay.path) in line
    assert named in line
    assert "\n" not in line


def test_windows_keep_their_entries_and_take_the_new_length(relay: Relay) -> None:
    """A dedup entry accepted before the reload is judged by the new window from then on."""
    dedup = relay.rule(DedupFilter)
    key = b"k" * 12
    assert dedup.window.claim(key, 0.0) is True
    dedup.window.accept(key, 0.0, b"id")
    relay.write(
        settings(filters={"flood": {"max_messages": 50, "gap": 30}, "dedup": {"window": 10}})
    )
    assert relay.reloader.reload()
    assert dedup.window.claim(key, 5.0) not in (True, False)  # still a duplicate
    assert dedup.window.expire(9.0) == 0
    assert dedup.window.expire(10.0) == 1  # the new length, not 60 s
    assert dedup.window.claim(key, 10.5) is True


def test_flood_streak_survives_and_takes_the_new_limit(relay: Relay) -> None:
    flood = relay.rule(FloodFilter)
    for _ in range(3):
        assert flood.streaks.claim(b"123", 1.0, flood.max_messages)
        flood.streaks.accept(b"123", 1.0)
    relay.write(
        settings(filters={"flood": {"max_messages": 3, "gap": 30}, "dedup": {"window": 60}})
    )
    assert relay.reloader.reload()
    assert not flood.streaks.claim(b"123", 2.0, flood.max_messages)  # the streak of 3 stayed


class FakeSession:
    """What the registry and the reloader read of a bound session."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.bind_kind = "transceiver"
        self.host = "127.0.0.1"
        self.receives = False
        self.idle = False
        self.shut = False

    def drop(self, why: str) -> None:
        pass

    def shutdown(self) -> Deferred[None]:
        self.shut = True
        return succeed(None)


def test_a_removed_account_has_its_binds_unbound_and_the_others_stay(relay: Relay) -> None:
    registry = relay.service.registry
    sessions = [FakeSession("app1"), FakeSession("app1"), FakeSession("app2")]
    for session in sessions:
        registry.bound(session)  # type: ignore[arg-type]
    relay.write(settings(clients=[ACCOUNTS[1]]))
    assert relay.reloader.reload()
    assert [s.shut for s in sessions] == [True, True, False]
    assert not relay.checks("app1", "secret1")
    [line] = [e for e in relay.events if "reloaded" in e["log_format"]]
    assert (line["removed"], line["unbinding"]) == ("app1", 2)


def test_settings_read_at_start_are_named_and_kept(relay: Relay) -> None:
    relay.write(
        settings(
            listen={"host": "127.0.0.1", "port": 2999},
            filters={"dedup": {"window": 60, "scope": "client"}},
        )
    )
    assert relay.reloader.reload()
    [warning] = [e for e in relay.events if "restart" in e["log_format"]]
    assert warning["keys"] == "listen, filters.dedup.scope"
    assert not relay.rule(DedupFilter).per_client


def test_restart_needed_sees_upstream_changes() -> None:
    old = load_config_from({"clients": ACCOUNTS})
    new = load_config_from(
        {"clients": ACCOUNTS, "upstream": {"host": "h", "system_id": "s", "password": "p"}}
    )
    assert restart_needed(old, new) == ["upstream"]
    assert restart_needed(old, old) == []


def load_config_from(data: dict[str, Any]) -> Any:
    from smpprelay.config import parse_config

    return parse_config(data)


def test_without_a_config_file_there_is_nothing_to_reread(relay: Relay) -> None:
    relay.reloader.path = None
    assert not relay.reloader.reload()
    [event] = relay.events
    assert "nothing to re-read" in event["log_format"]


def test_sighup_reloads_on_the_reactor() -> None:
    """The handler only schedules the reload; the previous handler comes back at stop."""
    installed: dict[int, Any] = {}
    calls: list[object] = []

    def set_signal(signum: int, handler: Any) -> Any:
        previous = installed.get(signum, signal.SIG_DFL)
        installed[signum] = handler
        return previous

    class Reactor:
        def callFromThread(self, f: Any, *args: Any) -> None:
            calls.append(f)

    class FakeReloader:
        def reload(self) -> bool:
            return True

    reloader = FakeReloader()
    service = ReloadService(reloader, Reactor(), set_signal)  # type: ignore[arg-type]
    service.startService()
    installed[signal.SIGHUP](signal.SIGHUP, None)
    assert calls == [reloader.reload]
    service.stopService()
    assert installed[signal.SIGHUP] is signal.SIG_DFL


def test_access_reconfigure_keeps_saved_tokens_and_counts() -> None:
    clock = Clock()
    from smpprelay.metrics import Metrics

    account = Account(system_id="a", password="p", throughput=1.0, burst=5)
    access = Access(SecurityConfig(), [account], clock, Metrics())
    assert [access.may_submit("a") for _ in range(3)] == [True] * 3  # 2 tokens left
    access.reconfigure(
        SecurityConfig(max_connections=7),
        [Account(system_id="a", password="p", throughput=100.0, burst=200)],
    )
    assert access._connections.total == 7
    assert [access.may_submit("a") for _ in range(3)] == [True, True, False]
    clock.advance(0.05)  # 5 tokens at the new rate
    assert [access.may_submit("a") for _ in range(6)] == [True] * 5 + [False]
    access.reconfigure(SecurityConfig(), [])
    assert access.may_submit("a")  # no throughput any more: no limit


def test_token_bucket_take_rate_caps_at_the_new_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(1.0, 10, clock)
    bucket.take_rate(1.0, 2)
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def _operators(**second: Any) -> list[dict[str, Any]]:
    base = {"host": "127.0.0.1", "port": 1, "system_id": "relay", "password": "pw"}
    return [{"name": "main", **base}, {"name": "backup", **base, **second}]


def test_upstreams_reload_live_routes_in_place_and_other_settings_by_replacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prefixes, accounts and weight apply in place (the same sessions); another host replaces
    the upstream's sessions; one added is started, one removed is retired; nothing waits for a
    restart."""
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(settings(upstreams=_operators())))
    config = load_config(str(path))
    service = build(config, MemoryReactorClock())
    reloader = Reloader(str(path), config, service.live, service.metrics)
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(reload_module, "log", Logger(observer=events.append))  # type: ignore[arg-type]
    upstreams = service.upstream
    backup = upstreams.by_name["backup"]
    path.write_text(yaml.safe_dump(settings(upstreams=_operators(prefixes=["7900"], weight=3))))
    assert reloader.reload()
    assert upstreams.by_name["backup"] is backup  # routes changed in place
    assert (backup.config.prefixes, backup.config.weight) == (("7900",), 3)
    path.write_text(yaml.safe_dump(settings(upstreams=_operators(host="10.0.0.9"))))
    assert reloader.reload()
    replaced = upstreams.by_name["backup"]
    assert replaced is not backup
    assert replaced.config.host == "10.0.0.9"
    assert backup.service.parent is None  # retired: drained and unbound
    more = [*_operators(), {**_operators()[0], "name": "third"}]
    path.write_text(yaml.safe_dump(settings(upstreams=more[1:])))
    assert reloader.reload()
    assert [member.name for member in upstreams.members] == ["backup", "third"]
    assert "main" not in upstreams.by_name
    assert not [e for e in events if "restart" in e["log_format"]]
