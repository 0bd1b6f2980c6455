"""``twistd smpprelay-simulator``: the built-in simulated SMSC on its own, as a sandbox."""

from __future__ import annotations

from typing import get_args

from twisted.application.service import IService
from twisted.python import usage

from smpprelay.config import Invalid, ListenTlsConfig, ReceiptStat, SimulatorConfig

# The relay's TLS helper names the configuration keys; here they are options.
_TLS_OPTIONS = {
    "listen.tls.cert": "--tls-cert",
    "listen.tls.key": "--tls-key",
    "listen.tls.client_ca": "--tls-client-ca",
}
_STATS: tuple[str, ...] = get_args(ReceiptStat)
# What the simulator's own checks refuse, said as the options that carry the values.
_REFUSED = {
    "stat": f"--stat must be one of {', '.join(_STATS)}",
    "receipt_delay": "--receipt-delay must be 0 or more",
    "throughput": "--throughput must be greater than 0",
}
_LISTEN_OPTIONS = {
    "port": "--port",
    "cert": "--tls-cert",
    "key": "--tls-key",
    "client_ca": "--tls-client-ca",
}


class Options(usage.Options):
    """Command-line options of ``twistd smpprelay-simulator``."""

    optParameters = [
        ["host", None, "127.0.0.1", "Address to listen on."],
        ["port", "p", 2776, "TCP port to listen on (TLS with --tls-cert and --tls-key).", int],
        ["tls-cert", None, None, "PEM certificate (and chain): listen with TLS 1.2+ only."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        [
            "tls-client-ca",
            None,
            None,
            "PEM CA certificate(s): require a client certificate they signed (mutual TLS).",
        ],
        ["receipt-delay", None, 0.0, "Seconds before a delivery receipt is sent.", float],
        ["stat", None, "DELIVRD", "stat: of the receipts (" + ", ".join(_STATS) + ")."],
        [
            "throughput",
            None,
            None,
            "Submits accepted per second (any one-second window); past that ESME_RTHROTTLED.",
            float,
        ],
    ]

    def postOptions(self) -> None:
        try:
            self.simulator = SimulatorConfig(
                receipt_delay=self["receipt-delay"],
                stat=self["stat"],
                throughput=self["throughput"],
            )
        except Invalid as error:
            raise usage.UsageError(_REFUSED[error.key]) from None
        self.tls: ListenTlsConfig | None = None
        if (self["tls-cert"] is None) != (self["tls-key"] is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["tls-client-ca"] is not None and self["tls-cert"] is None:
            raise usage.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        if self["tls-cert"] is not None:
            try:
                self.tls = ListenTlsConfig(
                    port=self["port"],
                    cert=self["tls-cert"],
                    key=self["tls-key"],
                    client_ca=self["tls-client-ca"],
                )
            except Invalid as error:
                option = _LISTEN_OPTIONS[error.key]
                raise usage.UsageError(f"{option}: {error.problem}") from None
            # The files are read now, so an unusable one stops the start with one line (as
            # the relay's do; UsageError would print the whole --help first).
            from smpprelay.tls import TlsFileError, server_options

            try:
                server_options(self.tls)
            except TlsFileError as error:
                option = _TLS_OPTIONS.get(error.key, error.key)
                raise SystemExit(f"smpprelay-simulator: {option}: {error.problem}") from None


def makeService(options: Options) -> IService:
    """The simulator listening where the options say (over TLS 1.2+ with a certificate)."""
    from twisted.internet import reactor

    from smpprelay.exit_status import exit_zero_after_a_clean_stop
    from smpprelay.metrics import Metrics
    from smpprelay.service import Listener, tcp_server
    from smpprelay.simulator import Simulator, SimulatorFactory
    from smpprelay.tls import server_endpoint

    settings = options.simulator
    simulator = Simulator(
        reactor, settings.receipt_delay, settings.stat, throughput=settings.throughput
    )
    if options.tls is not None:
        endpoint = server_endpoint(reactor, options["host"], options.tls)
        name = "simulated SMSC (TLS)"
    else:
        endpoint = tcp_server(reactor, options["host"], options["port"])
        name = "simulated SMSC"
    exit_zero_after_a_clean_stop(reactor, lambda: True)  # closing its port is the whole stop
    return Listener(name, endpoint, SimulatorFactory(simulator, Metrics()))
