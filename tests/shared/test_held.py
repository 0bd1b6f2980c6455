"""query_sm, cancel_sm and replace_sm of a part held in Redis, through another instance than
the one that held it: two relays (each its link, shared concat rule, store and Operations) on
one real redis-server, the operator a FakePool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from prometheus_client import CollectorRegistry
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater

from smpprelay import pdu
from smpprelay.config import ConcatRule, EncodingRule
from smpprelay.filters.encoding import EncodingFilter
from smpprelay.metrics import Metrics
from smpprelay.operations import Operations
from smpprelay.pdu import CommandId, Status
from smpprelay.relay import Relay
from smpprelay.shared.chain import SharedChain
from smpprelay.shared.concat import PART_COST, SharedConcat
from smpprelay.shared.held import HeldRef
from smpprelay.store.memory import MemoryStore
from smpprelay.store.redis_link import RedisLink
from smpprelay.store.tables import ReceiptRoutes
from tests.fakes import FakePool, FakeReceiver, make_router, submit_sm
from tests.fakes.redis_server import RedisServer
from tests.fakes.redis_server import link_ready as ready
from tests.test_queries import SOURCE, cancel, query, replace, status_of

PREFIX = "h:"
UDH1 = bytes((5, 0, 3, 0x42, 2, 1))


def part(sequence: int, text: bytes, total: int = 2) -> bytes:
    return submit_sm(
        sequence, esm_class=0x40, short_message=bytes((5, 0, 3, 0x42, total, sequence)) + text
    )


class Instance:
    """One relay: its own link to Redis, rules, store, router and operations."""

    def __init__(self, url: str, **rule: Any) -> None:
        self.link = RedisLink(url, reactor, reply_timeout=1.0, probe_interval=0.1)
        self.metrics = Metrics(CollectorRegistry())
        self.pool = FakePool()
        self.receivers = {name: FakeReceiver(name, auto_answer=True) for name in ("app", "other")}
        self.store = MemoryStore(ReceiptRoutes(ttl=3600.0, max_entries=100), final_grace=600.0)
        self.router = make_router(
            reactor, self.metrics, lambda account: [self.receivers[account]], store=self.store
        )
        encoding = EncodingFilter(EncodingRule(), False, self.metrics)
        encoding.glues_parts = True
        self.concat = SharedConcat(
            self.link,
            PREFIX,
            ConcatRule(window=30.0, **rule),
            self.metrics,
            encoding.transcode_glued,
        )
        self.chain = SharedChain(encoding, self.concat, None, self.metrics)
        self.relay = Relay(self.pool, self.router, self.metrics, reactor, self.chain)
        self.operations = Operations(self.relay, self.router, self.metrics, reactor)

    async def submit(self, frame: bytes, account: str = "app") -> bytes:
        answer: bytes = await self.relay.submit(account, frame)
        return answer

    async def operate(self, frame: bytes, account: str = "app") -> bytes:
        command = pdu.header(frame)[1]
        answer: bytes = await self.operations.handle(command, account, frame, False)
        return answer


Make = Callable[..., Any]


@pytest_twisted.async_yield_fixture()
async def two(redis_server: RedisServer) -> AsyncIterator[Make]:
    started: list[Instance] = []

    async def make(**rule: Any) -> tuple[Instance, Instance]:
        pair = Instance(redis_server.url, **rule), Instance(redis_server.url, **rule)
        for instance in pair:
            instance.link.start()
            started.append(instance)
            await ready(instance.link)
        return pair

    yield make
    for instance in started:
        await instance.link.stop()


async def held_first_part(a: Instance, text: bytes = b"first half ") -> bytes:
    answer = await a.submit(part(1, text))
    assert status_of(answer) == Status.ESME_ROK
    assert a.pool.frames == []
    return pdu.message_id_of(answer)


@ensureDeferred
async def test_a_part_held_through_one_instance_is_en_route_on_another(two: Make) -> None:
    a, b = await two()
    app_id = await held_first_part(a)
    answer = await b.operate(query(app_id))
    assert pdu.header(answer)[1:3] == (CommandId.query_sm_resp, Status.ESME_ROK)
    assert pdu.read_query_sm_resp(answer) == pdu.QuerySmResp(app_id, b"", 1, 0)
    # Another account's id is as unknown as any; a different source is refused.
    assert status_of(await b.operate(query(app_id), "other")) == Status.ESME_RINVMSGID
    assert status_of(await b.operate(query(app_id, source=b"Other"))) == Status.ESME_RINVSRCADR
    assert status_of(await b.operate(query(b"R-NONE"))) == Status.ESME_RINVMSGID
    assert a.pool.frames == b.pool.frames == []


@ensureDeferred
async def test_a_held_message_cancelled_through_another_instance_is_dropped(two: Make) -> None:
    a, b = await two()
    app_id = await held_first_part(a)
    answer = await b.operate(cancel(app_id))
    assert pdu.header(answer)[1:3] == (CommandId.cancel_sm_resp, Status.ESME_ROK)
    [receipt] = b.receivers["app"].frames  # sent by the instance that cancelled it
    fields = pdu.read_short_message(receipt)
    assert fields.tlv(pdu.Tag.receipted_message_id) == app_id + b"\0"
    assert b"stat:DELETED" in fields.short_message
    # Closed: its other part is refused on either instance, and the id is unknown now.
    assert status_of(await a.submit(part(2, b"second half"))) == 0x45
    assert status_of(await b.operate(query(app_id))) == Status.ESME_RINVMSGID
    assert status_of(await a.operate(cancel(app_id))) == Status.ESME_RINVMSGID
    assert a.pool.batches == b.pool.batches == []
    # Nothing of it is left in Redis: no index entry, no held bytes.
    assert await a.link.call("KEYS", f"{PREFIX}c:id:*") == []
    assert int(await a.link.call("GET", f"{PREFIX}c:held") or 0) == 0


@ensureDeferred
async def test_a_held_part_replaced_through_another_instance_goes_with_its_new_text(
    two: Make,
) -> None:
    a, b = await two()
    app_id = await held_first_part(a)
    held = int(await a.link.call("GET", f"{PREFIX}c:held"))
    answer = await b.operate(replace(app_id, UDH1 + b"THE FIRST HALF, LONGER"))
    assert pdu.header(answer)[1:3] == (CommandId.replace_sm_resp, Status.ESME_ROK)
    # The held bytes follow the new frame's length.
    assert int(await a.link.call("GET", f"{PREFIX}c:held")) == held + 11
    # Refused by the encoding rule (not GSM), or moved to another place: the text stays.
    assert status_of(await b.operate(replace(app_id, UDH1 + b"\x80 not GSM"))) == 0x45
    moved = bytes((5, 0, 3, 0x42, 2, 2)) + b"second place"
    assert status_of(await a.operate(replace(app_id, moved))) == Status.ESME_RREPLACEFAIL
    assert status_of(await a.operate(replace(app_id, UDH1 + b"x"), "other")) == (
        Status.ESME_RINVMSGID
    )
    # Completed through the first instance: the glued message has the replaced text.
    sent = a.relay.submit("app", part(2, b"second half"))
    waited = 0.0
    while not a.pool.batches:
        await deferLater(reactor, 0.01)
        waited += 0.01
        assert waited < 5
    [batch] = a.pool.batches
    assert pdu.read_short_message(batch[0]).short_message == UDH1 + b"THE FIRST HALF, LONGER"
    assert pdu.read_short_message(batch[1]).short_message.endswith(b"second half")
    # The operator has it now: still en route, too late to cancel or replace.
    assert pdu.read_query_sm_resp(await b.operate(query(app_id))).message_state == 1
    assert status_of(await b.operate(cancel(app_id))) == Status.ESME_RCANCELFAIL
    assert status_of(await b.operate(replace(app_id, UDH1 + b"x"))) == Status.ESME_RREPLACEFAIL
    a.pool.batch_answers[0].callback(
        [pdu.submit_sm_resp(1, 0, b"OPX"), pdu.submit_sm_resp(2, 0, b"OPY")]
    )
    assert status_of(await sent) == Status.ESME_ROK


@ensureDeferred
async def test_a_replacement_past_the_held_bytes_cap_is_refused(two: Make) -> None:
    frame = part(1, b"first half ")
    a, b = await two(max_held_bytes=len(frame) + PART_COST + 5)
    app_id = await held_first_part(a)
    longer = await b.operate(replace(app_id, UDH1 + b"first half, and more"))
    assert status_of(longer) == Status.ESME_RMSGQFUL
    shorter = await b.operate(replace(app_id, UDH1 + b"first"))
    assert status_of(shorter) == Status.ESME_ROK


@ensureDeferred
async def test_what_changed_since_the_lookup_is_seen_by_the_action(two: Make) -> None:
    """The rule is asked again by id: a part no longer held is not cancelled nor replaced."""
    a, b = await two()
    app_id = await held_first_part(a)
    found = await b.concat.find_held_part("app", app_id)
    assert isinstance(found, HeldRef)
    assert (found.sequence, found.with_operator, found.part.fields.source_addr) == (
        1,
        False,
        SOURCE,
    )
    assert (await a.concat.cancel_held_part(found, reactor.seconds())) is not None
    assert await b.concat.cancel_held_part(found, reactor.seconds()) is None
    assert await b.concat.replace_held_part(found, found.part) == Status.ESME_RINVMSGID


@ensureDeferred
async def test_redis_down_answers_without_touching_the_operator(
    two: Make, redis_server: RedisServer
) -> None:
    a, b = await two()
    app_id = await held_first_part(a)
    redis_server.stop(kill=True)
    waited = 0.0
    while b.link.writable:
        await deferLater(reactor, 0.02)
        waited += 0.02
        assert waited < 5
    assert status_of(await b.operate(query(app_id))) == Status.ESME_RSYSERR
    assert b.pool.frames == []
