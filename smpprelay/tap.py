"""``twistd smpprelay``: options and the service maker."""

from __future__ import annotations

import gc
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from smpprelay.config import Config, ConfigError, default_config, load_config


class Options(usage.Options):
    """Command-line options of ``twistd smpprelay``."""

    optParameters = [
        ["config", "c", None, "YAML configuration file (default: built-in demo settings)."],
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


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the relay for the parsed options, on the global reactor unless given another."""
    if reactor is None:
        from twisted.internet import reactor

    from smpprelay.exit_status import exit_zero_after_a_clean_stop
    from smpprelay.malloc import fix_mmap_threshold
    from smpprelay.reload import Reloader, ReloadService
    from smpprelay.service import build

    # Before anything large is allocated: the rules' windows churn big tables all day.
    fix_mmap_threshold()
    service = build(options.relay_config, reactor)
    # SIGHUP re-reads --config (README "Live reload").
    reloader = Reloader(options["config"], options.relay_config, service.live, service.metrics)
    ReloadService(reloader, reactor).setServiceParent(service)  # type: ignore[no-untyped-call]
    # Once running, everything built so far lives as long as the process: moving it out of
    # the collector's reach keeps full collections short (p99 at full load: ~20 ms -> ~5 ms).
    # Process-wide, so here and not in a service that tests start in-process.
    reactor.callWhenRunning(gc.freeze)
    exit_zero_after_a_clean_stop(reactor, lambda: service.stopped_cleanly)
    return service


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it with: twistd -n smpprelay [--config FILE]")
