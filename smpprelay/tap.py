"""``twistd smpprelay``: options and the service maker."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import IService
from twisted.python import usage

from smpprelay.config import Config, ConfigError, default_config, load_config

if TYPE_CHECKING:
    from smpprelay.service import RelayService


class Options(usage.Options):
    """Command-line options of ``twistd smpprelay``."""

    optParameters = [
        ["config", "c", None, "YAML configuration file (default: built-in demo settings)."],
        ["workers", "w", None, "Relay processes sharing the app port (default: config workers)."],
        # Set by the parent of --workers for its children, not by hand.
        ["worker", None, None, "(internal) run as worker INDEX on the parent's sockets."],
        ["worker-restarts", None, "0", "(internal) times the parent restarted this worker."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        try:
            self.relay_config: Config = load_config(path) if path else default_config()
            # Certificates and keys are read now, so a bad one stops the start the same way.
            from smpprelay.tls import check_files

            check_files(self.relay_config, path or "<default>")
        except ConfigError as error:
            # One line naming the file and the key, a non-zero exit, and no usage dump or
            # traceback: UsageError would print the whole --help first.
            raise SystemExit(f"smpprelay: {error}") from None
        self.workers = self._count("workers", self["workers"], self.relay_config.workers)
        self.worker = None if self["worker"] is None else self._count("worker", self["worker"], 0)
        self.worker_restarts = self._count("worker-restarts", self["worker-restarts"], 0)
        # Workers share the rules' state only through Redis: separate memory or sqlite stores
        # would each count an account apart.
        if self.workers > 1 and self.relay_config.store.backend != "redis":
            raise SystemExit(
                "smpprelay: --workers: more than one worker needs store.backend: redis"
            )

    @staticmethod
    def _count(name: str, given: str | None, default: int) -> int:
        try:
            value = default if given is None else int(given)
        except ValueError:
            value = -1
        if value < (1 if name == "workers" else 0):
            raise SystemExit(f"smpprelay: --{name}: {given!r} is not a valid count")
        return value


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the relay for the parsed options, on the global reactor unless given another."""
    if reactor is None:
        from twisted.internet import reactor

    from smpprelay.exit_status import exit_zero_after_a_clean_stop
    from smpprelay.gc_tuning import tune_collector
    from smpprelay.malloc import fix_mmap_threshold
    from smpprelay.reload import Reloader, ReloadService
    from smpprelay.service import build

    if options.worker is None and options.workers > 1:
        return _supervisor(options, reactor)
    # Before anything large is allocated: the rules' windows churn big tables all day.
    fix_mmap_threshold()
    if options.worker is None:
        service = build(options.relay_config, reactor)
    else:
        service = _worker(options, reactor)
    # SIGHUP re-reads --config (README "Live reload").
    reloader = Reloader(options["config"], options.relay_config, service.live, service.metrics)
    ReloadService(reloader, reactor).setServiceParent(service)  # type: ignore[no-untyped-call]
    # Process-wide, so here and not in a service that tests start in-process.
    reactor.callWhenRunning(tune_collector)
    exit_zero_after_a_clean_stop(reactor, lambda: service.stopped_cleanly)
    return service


def _supervisor(options: Options, reactor: Any) -> IService:
    """The parent of ``--workers N``: no relay of its own, N children (smpprelay.workers)."""
    from smpprelay import workers
    from smpprelay.exit_status import exit_zero_after_a_clean_stop

    config = options.relay_config
    path = os.path.abspath(options["config"]) if options["config"] else ""
    argv = list(sys.argv)
    supervisor = workers.WorkerSupervisor(
        reactor,
        options.workers,
        lambda index, restarts: workers.child_command(argv, path, index, restarts),
        lambda: workers.open_app_sockets(config, options.workers),
        config.limits.shutdown_timeout,
    )
    exit_zero_after_a_clean_stop(reactor, lambda: supervisor.stopped_cleanly)
    workers.exit_one_after(reactor, lambda: supervisor.gave_up)
    return supervisor


def _worker(options: Options, reactor: Any) -> RelayService:
    """Worker ``--worker i`` of a parent: its own metrics port, the parent's app sockets."""
    from twisted.logger import globalLogPublisher

    from smpprelay import workers
    from smpprelay.metrics import Metrics
    from smpprelay.service import build

    index = options.worker
    assert index is not None
    config = options.relay_config
    config = attrs.evolve(
        config,
        workers=1,
        metrics=attrs.evolve(config.metrics, port=workers.metrics_port(config.metrics.port, index)),
    )
    # Before twistd adds its own log observer (after makeService): each line is tagged.
    globalLogPublisher.addObserver(workers.worker_tagger(index))
    statuses = tuple(s for each in config.operators for s in each.vendor_statuses)
    metrics = Metrics(vendor_statuses=statuses)
    workers.worker_gauge(metrics.registry, index, options.worker_restarts)
    endpoints = workers.adopted_endpoints(reactor, config)
    service = build(config, reactor, metrics, app_endpoints=endpoints)
    lifeline = workers.Lifeline(reactor, lambda: workers.stop_reactor(reactor))
    reactor.callWhenRunning(lifeline.start)
    return service


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it with: twistd -n smpprelay [--config FILE]")
