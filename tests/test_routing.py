"""Several upstreams (`smpprelay.routing`): prefix and account routing, weights, failover and
return, answers tagged with their upstream, long messages kept on one upstream, and receipts
with colliding ids from two operators each routed back to the right app."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock

from smpprelay import pdu
from smpprelay.config import ConfigError, UpstreamConfig, parse_config
from smpprelay.connection import ResponseTimeout
from smpprelay.operations import Operations
from smpprelay.pdu import CommandId, Status
from smpprelay.relay import Relay
from smpprelay.routing import Carried, NoRoute, carrier, destination_of
from tests.fakes import FakeReceiver, failure_of, make_router, receipt, result_of, submit_sm
from tests.fakes.upstreams import Operators


def to(destination: bytes, **fields: Any) -> bytes:
    return submit_sm(destination_addr=destination, **fields)


def test_destination_is_read_from_the_frame() -> None:
    assert destination_of(to(b"+79001234567")) == (b"+79001234567", False)
    assert destination_of(to(b"4471", esm_class=0x40)) == (b"4471", True)
    assert destination_of(b"\0" * 16) == (b"", False)


def test_the_longest_matching_prefix_wins_and_empty_prefixes_come_last() -> None:
    ops = Operators(
        {"name": "ru", "prefixes": ("79",)},
        {"name": "ru-mts", "prefixes": ("+7910",)},
        {"name": "any"},
    )
    for name in ("ru", "ru-mts", "any"):
        ops.bind(name)
    for destination in (b"79001234567", b"+79101234567", b"4471234567"):
        ops.set.submit(to(destination), "app")
    assert [pdu.read_short_message(f).destination_addr for f in ops.sent("ru")] == [b"79001234567"]
    assert [pdu.read_short_message(f).destination_addr for f in ops.sent("ru-mts")] == [
        b"+79101234567"
    ]
    assert [pdu.read_short_message(f).destination_addr for f in ops.sent("any")] == [b"4471234567"]


def test_accounts_pick_their_upstream_and_a_submit_nobody_takes_has_no_route() -> None:
    ops = Operators({"name": "a", "accounts": ("app1",)}, {"name": "b", "accounts": ("app2",)})
    ops.bind("a")
    ops.bind("b")
    ops.set.submit(to(b"100"), "app1")
    ops.set.submit(to(b"200"), "app2")
    assert len(ops.sent("a")) == len(ops.sent("b")) == 1
    failure_of(ops.set.submit(to(b"300"), "app3")).trap(NoRoute)


def test_no_route_is_answered_invalid_destination() -> None:
    ops = Operators({"name": "a", "prefixes": ("7",)}, {"name": "b", "prefixes": ("8",)})
    clock = Clock()
    relay = Relay(ops.set, make_router(clock, ops.metrics), ops.metrics, clock)
    resp = result_of(relay.submit("app", to(b"4471234567")))
    assert pdu.header(resp)[2] == Status.ESME_RINVDSTADR


def test_equal_candidates_share_by_weight() -> None:
    ops = Operators(
        {"name": "big", "weight": 3}, {"name": "small", "weight": 1}, choose=random.Random(7).random
    )
    ops.bind("big")
    ops.bind("small")
    for i in range(400):
        ops.set.submit(to(b"79001234567"), "app")
        for wire in ops.wires["big"] + ops.wires["small"]:
            for frame in wire.take():
                wire.answer(frame, b"%d" % i)
    big = ops.metrics.registry.get_sample_value(
        "smpprelay_upstream_routed_total", {"upstream": "big"}
    )
    assert big is not None
    assert 270 <= big <= 330


def test_failover_when_the_preferred_upstream_is_down_and_return_when_it_is_back() -> None:
    ops = Operators({"name": "main", "prefixes": ("79",)}, {"name": "backup"})
    ops.bind("main")
    ops.bind("backup")
    ops.set.submit(to(b"79001"), "app")
    assert (len(ops.sent("main")), len(ops.sent("backup"))) == (1, 0)

    ops.unbind("main")
    ops.set.submit(to(b"79002"), "app")
    assert len(ops.sent("backup")) == 1
    assert ops.failovers("main", "backup") == 1

    ops.bind("main")
    ops.set.submit(to(b"79003"), "app")
    assert (len(ops.sent("main")), len(ops.sent("backup"))) == (1, 0)
    assert ops.failovers("main", "backup") == 1


def test_a_full_preferred_upstream_passes_the_submit_to_one_with_room() -> None:
    ops = Operators({"name": "main", "prefixes": ("79",)}, {"name": "backup"}, window=1)
    ops.bind("main")
    ops.bind("backup")
    ops.set.submit(to(b"79001"), "app")
    ops.set.submit(to(b"79002"), "app")
    assert (len(ops.sent("main")), len(ops.sent("backup"))) == (1, 1)
    assert ops.failovers("main", "backup") == 0  # full is not down


def test_with_nothing_bound_the_submit_waits_for_the_preferred_upstream() -> None:
    ops = Operators({"name": "main", "prefixes": ("79",)}, {"name": "backup"})
    waiting = ops.set.submit(to(b"79001"), "app")
    wire = ops.bind("main")
    (frame,) = wire.take()
    wire.answer(frame, b"M1")
    assert carrier(result_of(waiting)) == "main"


def test_answers_and_late_answers_name_their_upstream() -> None:
    ops = Operators({"name": "a", "prefixes": ("1",)}, {"name": "b"})
    wire_a, wire_b = ops.bind("a"), ops.bind("b")
    first = ops.set.submit(to(b"100"), "app")
    second = ops.set.submit(to(b"200"), "app")
    (frame_a,) = wire_a.take()
    wire_a.answer(frame_a, b"X1")
    answer = result_of(first)
    assert isinstance(answer, Carried)
    assert carrier(answer) == "a"
    assert pdu.message_id_of(answer) == b"X1"

    ops.clock.advance(30.0)  # b's response timeout
    timeout = failure_of(second)
    assert isinstance(timeout.value, ResponseTimeout)
    late: list[bytes] = []
    timeout.value.on_late(late.append)
    (frame_b,) = wire_b.take()
    wire_b.answer(frame_b, b"X2")
    assert [carrier(resp) for resp in late] == ["b"]


def test_a_single_upstream_tags_nothing() -> None:
    ops = Operators({"name": "only"})
    wire = ops.bind("only")
    sent = ops.set.submit(to(b"1"), "app")
    (frame,) = wire.take()
    wire.answer(frame, b"1")
    assert carrier(result_of(sent)) is None


def test_parts_of_a_long_message_go_to_one_upstream_whatever_the_weights() -> None:
    draws = iter([0.1, 0.9] * 10)
    ops = Operators({"name": "a"}, {"name": "b"}, choose=lambda: next(draws))
    ops.bind("a")
    ops.bind("b")
    for part in range(1, 4):
        udh = bytes([5, 0, 3, 42, 3, part])
        ops.set.submit(to(b"79001234567", esm_class=0x40, short_message=udh + b"x"), "app")
    assert sorted([len(ops.sent("a")), len(ops.sent("b"))]) == [0, 3]


def test_glued_parts_go_to_one_session_in_order() -> None:
    ops = Operators({"name": "a", "prefixes": ("7",)}, {"name": "b"})
    ops.bind("a")
    ops.bind("b")
    parts = [to(b"79001", short_message=b"part%d" % i) for i in range(3)]
    done = ops.set.submit_all(parts, "app")
    (wire,) = ops.wires["a"]
    frames = wire.take()
    assert [pdu.read_short_message(f).short_message for f in frames] == [
        b"part0",
        b"part1",
        b"part2",
    ]
    for i, frame in enumerate(frames):
        wire.answer(frame, b"P%d" % i)
    assert [carrier(r) for r in result_of(done)] == ["a", "a", "a"]
    assert ops.sent("b") == []


def test_colliding_ids_from_two_operators_reach_the_right_app() -> None:
    """Both operators answer U00000001; each receipt comes back on its own upstream."""
    ops = Operators({"name": "a", "accounts": ("app1",)}, {"name": "b", "accounts": ("app2",)})
    receivers = {"app1": FakeReceiver("app1", auto_answer=True)}
    receivers["app2"] = FakeReceiver("app2", auto_answer=True)
    clock = Clock()
    router = make_router(clock, ops.metrics, lambda account: [receivers[account]])
    relay = Relay(ops.set, router, ops.metrics, clock)
    answers = [relay.submit("app1", to(b"100")), relay.submit("app2", to(b"200"))]
    for name in ("a", "b"):
        ops.bind(name)
    # Bound after the submits were queued: the answers come from each upstream's session.
    for name in ("a", "b"):
        (wire,) = ops.wires[name]
        (frame,) = wire.take()
        wire.answer(frame, b"U00000001")
    assert [pdu.message_id_of(result_of(a)) for a in answers] == [b"U00000001"] * 2

    assert result_of(router.route(receipt(b"U00000001"), upstream="b")) == Status.ESME_ROK
    assert (len(receivers["app1"].frames), len(receivers["app2"].frames)) == (0, 1)
    assert result_of(router.route(receipt(b"U00000001"), upstream="a")) == Status.ESME_ROK
    assert (len(receivers["app1"].frames), len(receivers["app2"].frames)) == (1, 1)


# --- config ------------------------------------------------------------------------------

_UP = {"host": "h", "system_id": "relay", "password": "pw"}
_CLIENTS = [{"system_id": "app1", "password": "x"}]


def test_upstream_stays_valid_as_one_upstream_named_default() -> None:
    config = parse_config({"clients": _CLIENTS, "upstream": _UP})
    assert [u.name for u in config.operators] == ["default"]
    assert parse_config({"clients": _CLIENTS}).operators == ()


def test_upstreams_are_read_with_their_routing_keys() -> None:
    upstreams = [
        {**_UP, "name": "main", "prefixes": ["+7900"], "accounts": ["app1"], "weight": 3},
        {**_UP, "name": "backup"},
    ]
    config = parse_config({"clients": _CLIENTS, "upstreams": upstreams})
    main, backup = config.operators
    assert (main.name, main.prefixes, main.accounts, main.weight) == (
        "main",
        ("+7900",),
        ("app1",),
        3,
    )
    assert (backup.prefixes, backup.accounts, backup.weight) == ((), (), 1)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"upstream": _UP, "upstreams": [_UP]}, "upstreams: give upstream or upstreams, not both"),
        ({"upstreams": [_UP, _UP]}, "upstreams[1].name: duplicate 'default'"),
        ({"upstreams": [{**_UP, "accounts": ["nobody"]}]}, "upstreams[0].accounts[0]: no client"),
        ({"upstreams": [{**_UP, "name": "a b"}]}, "upstreams[0].name: expected 1-32"),
        ({"upstreams": [{**_UP, "prefixes": ["7x"]}]}, "upstreams[0].prefixes[0]: expected digits"),
        ({"upstreams": [{**_UP, "weight": 0}]}, "upstreams[0].weight"),
    ],
)
def test_bad_upstreams_are_named(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"clients": _CLIENTS, **data}, "x.yaml")
    assert str(error.value).startswith(f"x.yaml: {problem}"), str(error.value)


def test_query_sm_goes_to_the_operator_that_issued_the_id() -> None:
    """Both operators issued U00000001 (to two apps): each app's query_sm reaches its own."""
    ops = Operators({"name": "a", "accounts": ("app1",)}, {"name": "b", "accounts": ("app2",)})
    wires = {name: ops.bind(name) for name in ("a", "b")}
    clock = Clock()
    router = make_router(clock, ops.metrics)
    relay = Relay(ops.set, router, ops.metrics, clock)
    operations = Operations(relay, router, ops.metrics, clock)
    for account, name in (("app1", "a"), ("app2", "b")):
        answer = relay.submit(account, to(b"100"))
        (frame,) = wires[name].take()
        wires[name].answer(frame, b"U00000001")
        result_of(answer)
    for account, name in (("app2", "b"), ("app1", "a")):
        query = pdu.query_sm(1, pdu.QuerySm(b"U00000001", 5, 0, b"MyBrand"))
        operations.handle(CommandId.query_sm, account, query, False)
        (sent,) = ops.sent(name)
        assert pdu.header(sent)[1] == CommandId.query_sm
        assert pdu.read_query_sm(sent).message_id == b"U00000001"
        assert ops.sent("a" if name == "b" else "b") == []


def test_the_queue_gauge_counts_every_upstream() -> None:
    ops = Operators({"name": "a"}, {"name": "b"}, window=1)
    ops.bind("a")
    ops.bind("b")
    for _ in range(4):
        ops.set.submit(to(b"1"), "app")
    assert ops.metrics.registry.get_sample_value("smpprelay_upstream_queue") == 2.0


def test_a_single_upstream_with_prefixes_takes_only_those() -> None:
    ops = Operators({"name": "only", "prefixes": ("79",), "accounts": ("app",)})
    ops.bind("only")
    ops.set.submit(to(b"79001"), "app")
    assert len(ops.sent("only")) == 1
    failure_of(ops.set.submit(to(b"4471"), "app")).trap(NoRoute)
    failure_of(ops.set.submit(to(b"79001"), "other")).trap(NoRoute)


def test_a_reload_changes_routes_live_and_names_what_needs_a_restart() -> None:
    """`reroute`: prefixes, accounts and weight apply to the next submit with every session
    kept; an upstream added, removed or with other settings changed is named, and runs on."""
    ops = Operators({"name": "a", "prefixes": ("79",)}, {"name": "b"})
    wires = {name: ops.bind(name) for name in ("a", "b")}
    ops.set.submit(to(b"79001234567"), "app")
    assert len(ops.sent("a")) == 1

    def upstream(name: str, host: str = "smsc", prefixes: tuple[str, ...] = ()) -> UpstreamConfig:
        return UpstreamConfig(
            name=name, host=host, system_id="relay", password="pw", prefixes=prefixes
        )

    later = ops.set.reroute([upstream("a"), upstream("b", prefixes=("79",)), upstream("c")])
    assert later == ["c"]
    ops.set.submit(to(b"79001234567"), "app")
    assert len(ops.sent("b")) == 1  # b now owns 79; a serves the rest
    assert not wires["a"].connection.closed
    assert ops.set.reroute([upstream("a", host="other")]) == ["b", "a"]
    # Not applied: b keeps its reloaded routes, a its settings.
    assert ops.set.by_name["a"].config.host == "smsc"
    assert ops.set.by_name["b"].config.prefixes == ("79",)
