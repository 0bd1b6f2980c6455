"""The relay's hot path stays free of Deferreds (issue 16).

A Deferred per request cost more than the rest of a hop's bookkeeping, so a relayed submit
goes from the app's connection through the rules, the pool and the operator's connection and
back with plain callbacks. This guards it from sliding back: the whole path runs on real
objects (app session, relay with all four rules, memory store, upstream set, pool, operator
connection) over StringTransports, and every `Deferred` made meanwhile is recorded.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from smpprelay import pdu
from smpprelay.auth import make_portal
from smpprelay.config import Account, FiltersConfig, UpstreamConfig
from smpprelay.connection import SmppConnection
from smpprelay.downstream import DownstreamSession, SessionRegistry
from smpprelay.filters import build_chain
from smpprelay.pdu import CommandId, Status
from smpprelay.relay import Relay
from smpprelay.routing import Member, UpstreamSet
from tests.fakes import app_connection, make_router, submit_sm, take_frames
from tests.fakes.operator import OperatorTransport, bound


def _made_by() -> tuple[str, str]:
    """Where the Deferred being made was asked for: the first frame outside Twisted."""
    frame = sys._getframe(2)
    while frame.f_back is not None and "twisted" in frame.f_code.co_filename.split(os.sep):
        frame = frame.f_back
    path = frame.f_code.co_filename
    parts = path.split(os.sep)
    for root in ("smpprelay", "tests"):
        if root in parts:
            path = "/".join(parts[len(parts) - parts[::-1].index(root) - 1 :])
            break
    return path, frame.f_code.co_name


def _relay() -> tuple[SmppConnection, StringTransport, OperatorTransport]:
    """A bound app in front of the relay with every rule on, the memory store and one bound
    operator session: (the app's connection, its transport, the operator's transport)."""
    up, operator = bound()
    clock, metrics = up.clock, up.metrics
    config = UpstreamConfig(host="127.0.0.1", port=2775, system_id="relay", password="pw")
    upstreams = UpstreamSet([Member(config, up.service)], metrics)
    registry = SessionRegistry(metrics)
    router = make_router(clock, metrics, registry.receivers)
    chain = build_chain(FiltersConfig(), False, metrics)
    assert len(chain.filters) == 4  # encoding, concat, dedup, flood: every rule on
    relay = Relay(upstreams, router, metrics, clock, chain)
    session = DownstreamSession(
        make_portal({"app": Account(system_id="app", password="pw")}),
        registry,
        relay.submit,
        clock,
        metrics,
        10.0,
        100,
        relay_submit_cb=relay.submit_cb,
    )
    app, transport = app_connection(session, clock, metrics)
    app.dataReceived(pdu.bind_request("transceiver", 1, "app", "pw"))
    assert pdu.header(take_frames(transport)[0])[2] == Status.ESME_ROK
    return app, transport, operator


def test_a_relayed_submit_makes_no_deferred(monkeypatch: pytest.MonkeyPatch) -> None:
    app, transport, operator = _relay()
    made: list[tuple[str, str]] = []
    original = Deferred.__init__

    def counted(self: Deferred[Any], *args: Any, **kwargs: Any) -> None:
        made.append(_made_by())
        original(self, *args, **kwargs)

    monkeypatch.setattr(Deferred, "__init__", counted)
    app.dataReceived(submit_sm(sequence=7, short_message=b"hello", registered_delivery=1))
    (sent,) = operator.take()
    operator.send(pdu.submit_sm_resp(pdu.sequence_of(sent), Status.ESME_ROK, b"OP1"))
    monkeypatch.undo()

    (answer,) = take_frames(transport)
    assert pdu.header(answer)[1:] == (CommandId.submit_sm_resp, Status.ESME_ROK, 7)
    assert pdu.message_id_of(answer) == b"OP1"
    # Not even the route write (`Store.add_route_cb`): none at all.
    assert made == []


def test_a_read_of_several_pdus_makes_one_write_each_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three submits read at once go to the operator in one call into its transport, and its
    three answers read at once reach the app in one call: not a write per PDU."""
    app, transport, operator = _relay()
    calls: list[tuple[str, int]] = []
    for name, wire in (("operator", operator), ("app", transport)):
        write, write_sequence = wire.write, wire.writeSequence

        def one(data: bytes, name: str = name, write: Any = write) -> None:
            calls.append((name, 1))
            write(data)

        def several(data: list[bytes], name: str = name, write: Any = write_sequence) -> None:
            calls.append((name, len(data)))
            write(data)

        monkeypatch.setattr(wire, "write", one)
        monkeypatch.setattr(wire, "writeSequence", several)

    app.dataReceived(
        b"".join(submit_sm(sequence=10 + i, short_message=b"m%d" % i) for i in range(3))
    )
    assert calls == [("operator", 3)]
    sent = operator.take()
    assert len(sent) == 3
    operator.send(
        b"".join(
            pdu.submit_sm_resp(pdu.sequence_of(frame), Status.ESME_ROK, b"OP%d" % i)
            for i, frame in enumerate(sent)
        )
    )
    assert calls == [("operator", 3), ("app", 3)]
    answers = take_frames(transport)
    assert [pdu.header(answer)[3] for answer in answers] == [10, 11, 12]
    assert [pdu.message_id_of(answer) for answer in answers] == [b"OP0", b"OP1", b"OP2"]
