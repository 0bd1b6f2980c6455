"""Several upstreams for `smpprelay.routing` tests: each a real `UpstreamPool` whose bound
sessions are `Wire`s the test plays the operator on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from smpprelay.config import UpstreamConfig
from smpprelay.metrics import Metrics
from smpprelay.pool import UpstreamPool
from smpprelay.routing import Member, UpstreamSet
from smpprelay.upstream import UpstreamService
from tests.fakes.operator import Wire


class Operators:
    """An `UpstreamSet` over named upstreams; ``bind(name)`` gives one a bound session."""

    def __init__(
        self,
        *upstreams: dict[str, Any],
        choose: Callable[[], float] = lambda: 0.0,
        window: int = 10,
    ) -> None:
        self.clock = Clock()
        self.metrics = Metrics(CollectorRegistry())
        self.wires: dict[str, list[Wire]] = {}
        members = []
        for settings in upstreams:
            config = UpstreamConfig(host="smsc", system_id="relay", password="pw", **settings)
            pool = UpstreamPool(self.clock, self.metrics, window, 5.0, 100, 60.0)
            members.append(Member(config, UpstreamService(pool, [])))
            self.wires[config.name] = []
        self.set = UpstreamSet(members, self.metrics, choose)

    def bind(self, name: str) -> Wire:
        wire = Wire(self.clock, self.metrics)
        self.set.by_name[name].pool.add(wire.connection, transmits=True, receives=True)
        self.wires[name].append(wire)
        return wire

    def unbind(self, name: str) -> None:
        for wire in self.wires.pop(name):
            self.set.by_name[name].pool.remove(wire.connection)
        self.wires[name] = []

    def sent(self, name: str) -> list[bytes]:
        """What each session of ``name`` was sent since the last look."""
        return [frame for wire in self.wires[name] for frame in wire.take()]

    def failovers(self, source: str, target: str) -> float:
        labels = {"from": source, "to": target}
        value = self.metrics.registry.get_sample_value("smpprelay_upstream_failovers_total", labels)
        return value or 0.0
