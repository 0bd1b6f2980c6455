"""A relay built with the redis store (`smpprelay.service.build`) on a real redis-server: a
reload (SIGHUP) reaches the shared rules, and the outcomes they could not write to Redis are
exported at scrape time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from prometheus_client import CollectorRegistry
from pytest_twisted import ensureDeferred
from twisted.internet import reactor

from smpprelay.config import load_config
from smpprelay.message import ACCEPT, Message, read_message
from smpprelay.metrics import Metrics
from smpprelay.reload import Reloader
from smpprelay.service import RelayService, build
from smpprelay.shared.chain import SharedChain
from smpprelay.shared.concat import SharedConcat
from smpprelay.store.redis import RedisStore
from smpprelay.store.redis_link import RedisUnavailable
from tests.fakes import submit_sm
from tests.fakes.redis_server import RedisServer, drained
from tests.fakes.redis_server import until as _until

UNSENT = "smpprelay_shared_outcomes_unsent_total"


def settings(url: str, flood: int, window: float) -> dict[str, Any]:
    return {
        "clients": [{"system_id": "app1", "password": "pw"}],
        "store": {"backend": "redis", "url": url, "key_prefix": "live:"},
        "filters": {
            "flood": {"max_messages": flood, "gap": 30},
            "dedup": {"window": 60},
            "concat": {"window": window},
        },
    }


class Built:
    """A relay built (not started) on the redis store, with its link to Redis up."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.path = tmp_path / "relay.yaml"
        self.url = url
        self.write(flood=2, window=10.0)
        config = load_config(str(self.path))
        self.service: RelayService = build(config, reactor)
        store = self.service.relay.store
        assert isinstance(store, RedisStore)
        self.store = store
        chain = self.service.live.chain
        assert isinstance(chain, SharedChain)
        self.chain = chain
        self.reloader = Reloader(str(self.path), config, self.service.live, self.service.metrics)

    def write(self, flood: int, window: float) -> None:
        self.path.write_text(yaml.safe_dump(settings(self.url, flood, window)))

    def sample(self, name: str, **labels: str) -> float | None:
        return self.service.metrics.registry.get_sample_value(name, labels)

    async def claim(self, text: bytes) -> Any:
        windows = self.chain.windows
        assert windows is not None
        message = read_message("app1", submit_sm(1, short_message=text))
        verdict = await windows.claim(message, reactor.seconds())
        return verdict, message


@pytest_twisted.async_yield_fixture()
async def built(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Built]:
    made = Built(tmp_path, redis_server.url)
    made.store.start()
    await _until(lambda: made.store.writable and bool(made.store.secret))
    yield made
    await made.store.close()


def part(ref: int, seq: int) -> Message:
    body = bytes([5, 0, 3, ref, 2, seq]) + b"part%d" % seq
    message = read_message("app1", submit_sm(2, esm_class=0x40, short_message=body))
    message.app_message_id = b"L%d-%d" % (ref, seq)
    return message


@ensureDeferred
async def test_a_reload_in_redis_mode_reaches_the_shared_windows_and_concat(
    built: Built,
) -> None:
    concat = built.chain.concat
    assert isinstance(concat, SharedConcat)
    windows = built.chain.windows
    assert windows is not None
    now = reactor.seconds()
    first, message = await built.claim(b"one")
    assert first is ACCEPT
    windows.settle(message, now, b"OP-1")
    await drained(windows.link)  # the settle is written before the PINGs' answers

    built.write(flood=1, window=1.0)
    assert built.reloader.reload()

    refused, _ = await built.claim(b"two")
    assert refused.reason == "flood"  # the new max_messages (1), not the start's 2
    assert (await concat.check(part(7, 1), now)).action == "hold"
    late = await concat.check(part(7, 2), now + 2.0)
    assert late.reason == "late"  # the new window (1 s), not the start's 10 s


@ensureDeferred
async def test_outcomes_redis_did_not_take_are_counted_once_per_rule(
    built: Built, redis_server: RedisServer
) -> None:
    assert built.sample(UNSENT, rule="dedup_flood") == 0
    assert built.sample(UNSENT, rule="concat") == 0
    concat = built.chain.concat
    assert isinstance(concat, SharedConcat)
    windows = built.chain.windows
    assert windows is not None
    now = reactor.seconds()
    assert (await concat.check(part(9, 1), now)).action == "hold"
    glued = await concat.check(part(9, 2), now)
    assert glued.message is not None
    verdict, message = await built.claim(b"lost")
    assert verdict is ACCEPT

    redis_server.stop(kill=True)
    windows.settle(message, now, b"OP-LOST")
    concat.parts_settled(glued.message, now, "accepted")
    await _until(lambda: built.sample(UNSENT, rule="dedup_flood") == 1)
    await _until(lambda: built.sample(UNSENT, rule="concat") == 1)
    # Sent again by the next expiry, lost again: still one outcome, not two.
    with pytest.raises(RedisUnavailable):
        await concat.expire(now)  # Redis is down: the expiry fails too
    assert built.sample(UNSENT, rule="concat") == 1


def test_handed_over_deliveries_exist_at_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for kind in ("receipt", "mo"):
        labels = {"kind": kind, "result": "handed_over"}
        assert registry.get_sample_value("smpprelay_deliveries_total", labels) == 0
