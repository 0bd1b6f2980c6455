"""Live reload: ``SIGHUP`` re-reads the ``--config`` file and applies what can change live.

The new file is loaded and checked in full first (`load_config`, the TLS files, and the
relay's own cross-checks); only a configuration that passes every check is applied, so a
broken file leaves the running one in force. What applies live: the accounts (passwords,
``allowed_ips``, ``max_binds`` at the next bind; ``throughput`` and ``mo_prefixes`` at once),
``security`` and the rules' values (their windows keep their entries, a changed length applies
from then on). With the redis store the shared rules take them too (`SharedChain.reconfigure`);
each instance judges by the values it last loaded, so every instance is sent the SIGHUP. An
account gone from the file has its binds unbound cleanly. The rest (listen, metrics, store,
limits, receipts, simulator, upstream, and the rules' ``enabled``, ``action``, ``scope`` and
sizes) needs a restart: a reload names what changed there and keeps it running.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.cred.portal import Portal
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from smpprelay import tls
from smpprelay.access import Access
from smpprelay.auth import reconfigure_portal
from smpprelay.config import Config, ConfigError, FiltersConfig, load_config
from smpprelay.downstream import SessionRegistry
from smpprelay.filters.base import FilterChain
from smpprelay.filters.concat import ConcatFilter
from smpprelay.filters.dedup import DedupFilter
from smpprelay.filters.encoding import EncodingFilter
from smpprelay.filters.flood import FloodFilter
from smpprelay.metrics import Metrics
from smpprelay.router import Router
from smpprelay.routing import UpstreamSet
from smpprelay.shared.chain import SharedChain

log = Logger()

# Top-level sections a reload applies; every other one (listen, store, ...) is read once at
# start, and of the upstreams only their routes change live.
LIVE_SECTIONS = frozenset({"clients", "security", "filters"})
UPSTREAM_SECTIONS = frozenset({"upstream", "upstreams"})
# Rule settings that decide what a window holds or how it is laid out: a restart.
RULES_AT_START = {
    "encoding": ("enabled",),
    "concat": ("enabled",),
    "dedup": ("enabled", "action", "scope", "max_entries", "fast_entries"),
    "flood": ("enabled", "scope", "max_entries", "fast_entries"),
}


@attrs.frozen
class LiveParts:
    """The running parts a reload reconfigures (made by `smpprelay.service.build`)."""

    access: Access
    portal: Portal
    router: Router
    registry: SessionRegistry
    # In-process rules, or (with the redis store) the rules several instances share.
    chain: FilterChain | SharedChain | None
    # False: the relay started with no password_hash, so it has no thread pool to check one.
    hashes_checkable: bool
    # The upstreams, whose routes (prefixes, accounts, weight) a reload changes live.
    upstreams: UpstreamSet | None = None


def restart_needed(running: Config, new: Config) -> list[str]:
    """The dotted keys whose change ``new`` makes but only a restart applies."""
    keys = [
        field.name
        for field in attrs.fields(type(running))
        if field.name not in LIVE_SECTIONS | UPSTREAM_SECTIONS
        and getattr(running, field.name) != getattr(new, field.name)
    ]
    # Upstreams change live (`UpstreamSet.reconfigure`), but not to or from the built-in
    # simulated SMSC (no upstream configured).
    if bool(running.operators) != bool(new.operators):
        keys.append("upstreams" if new.upstreams or running.upstreams else "upstream")
    for rule, names in RULES_AT_START.items():
        was, now = getattr(running.filters, rule), getattr(new.filters, rule)
        keys += [
            f"filters.{rule}.{name}" for name in names if getattr(was, name) != getattr(now, name)
        ]
    return keys


def reconfigure_rules(chain: FilterChain | SharedChain, filters: FiltersConfig) -> None:
    """Give each running rule its reloaded values (state kept; see each ``reconfigure``)."""
    if isinstance(chain, SharedChain):
        chain.reconfigure(filters)  # the shared windows and concat take them from now
        return
    for rule in chain.filters:
        if isinstance(rule, EncodingFilter):
            rule.reconfigure(filters.encoding)
        elif isinstance(rule, ConcatFilter):
            rule.reconfigure(filters.concat)
        elif isinstance(rule, DedupFilter):
            rule.reconfigure(filters.dedup)
        elif isinstance(rule, FloodFilter):
            rule.reconfigure(filters.flood)


class Reloader:
    """Re-reads the configuration file and applies it to the running relay, or nothing."""

    def __init__(
        self,
        path: str | None,
        config: Config,
        live: LiveParts,
        metrics: Metrics,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.started = config  # what the parts read once at start still run with
        self.config = config  # the configuration in force
        self.live = live
        self.metrics = metrics
        self.wall = wall

    def reload(self) -> bool:
        """Load the file and apply it; False (nothing changed) when it does not load."""
        if self.path is None:
            log.warn("reload: no --config file was given: nothing to re-read")
            return False
        try:
            new = self._load(self.path)
        except ConfigError as error:
            # One line: ConfigError names the file and the key.
            log.error("reload failed, the running configuration stays: {error}", error=error)
            self.metrics.config_reloads.labels("failed").inc()
            return False
        self._apply(new)
        self.metrics.config_reloads.labels("ok").inc()
        self.metrics.config_last_reload.set(self.wall())
        return True

    def _load(self, path: str) -> Config:
        new = load_config(path)
        tls.check_files(new, path)
        if not self.live.hashes_checkable:
            for i, client in enumerate(new.clients):
                if client.password_hash is not None:
                    raise ConfigError(
                        f"{path}: clients[{i}].password_hash: the relay started with plain "
                        "passwords only (no thread pool to check a hash in): restart to use one"
                    )
        return new

    def _apply(self, new: Config) -> None:
        old, live = self.config, self.live
        reconfigure_portal(live.portal, {client.system_id: client for client in new.clients})
        live.access.reconfigure(new.security, new.clients)
        live.router.reconfigure_mo_prefixes(
            {p.lstrip("+"): c.system_id for c in new.clients for p in c.mo_prefixes}
        )
        if live.chain is not None:
            reconfigure_rules(live.chain, new.filters)
        if live.upstreams is not None and new.operators and self.config.operators:
            later = live.upstreams.reconfigure(new.operators)
            if later:
                log.warn(
                    "reload {path}: upstreams {names} need a restart", path=self.path, names=later
                )
        self.config = new
        was = {client.system_id: client for client in old.clients}
        now = {client.system_id: client for client in new.clients}
        added = [name for name in now if name not in was]
        removed = [name for name in was if name not in now]
        changed = [name for name in now if name in was and now[name] != was[name]]
        unbinding = 0
        for account in removed:
            for session in live.registry.bound_sessions(account):
                unbinding += 1
                # The same clean unbind as a stop: in-flight submits answered first.
                session.shutdown().addErrback(_unbind_failed, account)
        log.info(
            "reloaded {path}: accounts added [{added}], removed [{removed}] ({unbinding} "
            "binds unbound), changed [{changed}]",
            path=self.path,
            added=", ".join(added),
            removed=", ".join(removed),
            unbinding=unbinding,
            changed=", ".join(changed),
        )
        later = restart_needed(self.started, new)
        if later:
            log.warn(
                "reload {path}: {keys} changed: a restart is needed for them; "
                "the running values stay",
                path=self.path,
                keys=", ".join(later),
            )


def _unbind_failed(failure: Failure, account: str) -> None:
    log.failure("reload: unbinding removed account {account} failed", failure, account=account)


SetSignal = Callable[[int, Any], Any]


class ReloadService(Service):
    """While running, ``SIGHUP`` makes the reloader reload, on the reactor's thread."""

    def __init__(
        self, reloader: Reloader, reactor: Any, set_signal: SetSignal = signal.signal
    ) -> None:
        self.reloader = reloader
        self.reactor = reactor
        self._set_signal = set_signal
        self._previous: Any = None

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes: hop to the reactor's own turn.
        self.reactor.callFromThread(self.reloader.reload)

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._previous = self._set_signal(signal.SIGHUP, self._hup)

    @override
    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._set_signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
