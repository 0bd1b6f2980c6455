"""The operator's rate cap over real sockets: smpplib apps, an in-process relay with
``upstream.throughput``, and a stand-alone simulated SMSC that records when each submit came."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from smpprelay.pdu import Status
from smpprelay.simulator import Simulator
from tests.integration.apps import message
from tests.integration.conftest import Harness


def _upstream(port: int, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "system_id": "relay",
        "password": "pw",
        "window": 50,
    }
    section.update(extra)
    return section


def _messages(count: int, first: int = 0) -> list[dict[str, Any]]:
    # Each to its own number, so the dedup and flood rules pass them all.
    return [message(b"paced %d" % i, f"7999{i:07d}") for i in range(first, first + count)]


def _most_in_one_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


@pytest_twisted.ensureDeferred
async def test_sixty_at_once_through_a_cap_of_twenty_a_second(harness: Harness) -> None:
    """60 submits sent at once (smpplib, window 60) through ``throughput: 20``: every one is
    answered ESME_ROK, and the operator saw them over more than 2 s, never more than
    20 + burst (2, the default: a tenth of a second's worth) in any one second."""
    listener, simulator = await harness.simulator()
    assert listener.port is not None
    port = listener.port.getHost().port  # type: ignore[attr-defined]
    relay = await harness.relay(upstream=_upstream(port, throughput=20))
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    results = await app.submit_many(_messages(60), window=60, timeout=20.0)
    assert [getattr(answer, "status", None) for _, answer in results] == [Status.ESME_ROK] * 60
    times = [received.at for received in simulator.received]
    assert len(times) == 60
    assert max(times) - min(times) >= 2.0
    assert _most_in_one_second(times) <= 20 + 2
    assert relay.metrics.registry.get_sample_value("smpprelay_upstream_pace") == 20.0


@pytest_twisted.ensureDeferred
async def test_an_operator_that_throttles_is_met_with_a_lower_pace(harness: Harness) -> None:
    """The relay's cap (40/s) is above the operator's real one (the simulator accepts 10 in
    any second): its ESME_RTHROTTLED halves the relay's pace, which the metrics show, and an
    app that sends again what was throttled (as apps do with 0x58) gets all 40 through, each
    once, with fewer refusals than messages."""
    listener, simulator = await harness.simulator()
    simulator.throughput = 10.0
    assert listener.port is not None
    port = listener.port.getHost().port  # type: ignore[attr-defined]
    relay = await harness.relay(upstream=_upstream(port, throughput=40))
    app = harness.esme(relay)
    await app.bind("transceiver", "app1")
    pending = _messages(40)
    refused = 0
    for _ in range(20):
        results = await app.submit_many(pending, window=40, timeout=20.0)
        statuses = [getattr(answer, "status", None) for _, answer in results]
        assert set(statuses) <= {Status.ESME_ROK, Status.ESME_RTHROTTLED}
        again = [
            fields
            for fields, status in zip(pending, statuses, strict=True)
            if status == Status.ESME_RTHROTTLED
        ]
        refused += len(again)
        pending = again
        if not pending:
            break
    assert pending == []
    _check_delivered_once(simulator, 40)
    registry = relay.metrics.registry
    decreases = registry.get_sample_value("smpprelay_upstream_pace_decreases_total")
    assert decreases is not None
    assert decreases >= 1
    pace = registry.get_sample_value("smpprelay_upstream_pace")
    assert pace is not None
    assert pace < 40
    assert refused == simulator.throttled
    assert refused < 40


def _check_delivered_once(simulator: Simulator, count: int) -> None:
    texts = [received.message.short_message for received in simulator.received]
    assert sorted(texts) == sorted(b"paced %d" % i for i in range(count))
