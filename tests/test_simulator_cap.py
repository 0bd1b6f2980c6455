"""The simulated SMSC told to cap its rate (``simulator.throughput``, ``--throughput``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from smpprelay import pdu
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status
from smpprelay.simulator import Simulator, SimulatorFactory
from tests.fakes import frames_of, submit_sm

OK, THROTTLED = Status.ESME_ROK, Status.ESME_RTHROTTLED


class Transmitter:
    """A transmitter bound to the simulator over a `StringTransport`."""

    def __init__(self, simulator: Simulator) -> None:
        factory = SimulatorFactory(simulator, Metrics(CollectorRegistry()))
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)  # type: ignore[no-untyped-call]
        self.protocol.dataReceived(pdu.bind_request("transmitter", 1, "relay", "pw"))
        self.transport.clear()
        self.sequence = 1

    def send(self, count: int = 1) -> None:
        for _ in range(count):
            self.sequence += 1
            self.protocol.dataReceived(submit_sm(sequence=self.sequence))

    def statuses(self) -> list[int]:
        """The statuses of the answers since the last call."""
        frames = frames_of(self.transport.value())
        self.transport.clear()
        return [pdu.header(frame)[2] for frame in frames]


def test_the_simulator_throttles_past_its_cap_in_any_second() -> None:
    """throughput 3: of 5 submits at once three are accepted, two answered ESME_RTHROTTLED;
    0.5 s later still throttled (the same second); 1 s after the first ones, three more go."""
    clock = Clock()
    simulator = Simulator(clock, throughput=3.0)
    app = Transmitter(simulator)
    app.send(5)
    assert app.statuses() == [OK, OK, OK, THROTTLED, THROTTLED]
    clock.advance(0.5)
    app.send()
    assert app.statuses() == [THROTTLED]
    clock.advance(0.5)
    app.send(4)
    assert app.statuses() == [OK, OK, OK, THROTTLED]
    assert simulator.throttled == 4
    assert [r.at for r in simulator.received] == [0.0] * 3 + [1.0] * 3


def test_without_a_cap_the_simulator_accepts_everything() -> None:
    app = Transmitter(Simulator(Clock()))
    app.send(50)
    assert set(app.statuses()) == {OK}
