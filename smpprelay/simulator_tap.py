"""``twistd smpprelay-simulator``: the built-in simulated SMSC on its own, as a sandbox."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from smpprelay.config import Simulator as SimulatorConfig

_STATS = ("DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD")


class Options(usage.Options):
    """Command-line options of ``twistd smpprelay-simulator``."""

    optParameters = [
        ["host", None, "127.0.0.1", "Address to listen on."],
        ["port", "p", 2776, "TCP port to listen on.", int],
        ["receipt-delay", None, 0.0, "Seconds before a delivery receipt is sent.", float],
        ["stat", None, "DELIVRD", "stat: of the receipts (" + ", ".join(_STATS) + ")."],
    ]

    def postOptions(self) -> None:
        if self["stat"] not in _STATS:
            raise usage.UsageError(f"--stat must be one of {', '.join(_STATS)}")
        if self["receipt-delay"] < 0:
            raise usage.UsageError("--receipt-delay must be 0 or more")
        SimulatorConfig(receipt_delay=self["receipt-delay"], stat=self["stat"])


def makeService(options: Options) -> IService:
    """The simulator listening where the options say."""
    from twisted.internet import reactor

    from smpprelay.metrics import Metrics
    from smpprelay.service import Listener, tcp_server
    from smpprelay.simulator import Simulator, SimulatorFactory

    simulator = Simulator(reactor, options["receipt-delay"], options["stat"])
    return Listener(
        "simulated SMSC",
        tcp_server(reactor, options["host"], options["port"]),
        SimulatorFactory(simulator, Metrics()),
    )
