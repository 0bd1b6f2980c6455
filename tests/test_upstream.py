"""The relay's binds to the operator: `UpstreamSession`, `UpstreamService` (the pool alone is in
test_pool.py).

Every session runs on the real `ClientService` over a fake endpoint: each connection gets a
`StringTransport` whose loss reaches the protocol on the next turn of the `Clock`, once, as a
reactor's does. The test plays the operator by reading what was written and answering it.
"""

from __future__ import annotations

import random
import struct

import pytest
from twisted.internet.error import ConnectionDone

from smpprelay import pdu
from smpprelay.connection import ResponseTimeout
from smpprelay.pdu import CommandId, Status
from smpprelay.upstream import backoff
from tests.fakes import failure_of, result_of, submit_sm
from tests.fakes.operator import (
    Upstreams,
    bound,
)

# --- backoff ---------------------------------------------------------------------------------


def test_backoff_starts_at_initial_doubles_and_stops_at_the_cap() -> None:
    """With no jitter the n-th retry in a row waits initial * 2**(n-1), never above the cap."""
    policy = backoff(1.0, 60.0, jitter=lambda: 0.0)
    assert [policy(n) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert policy(10_000) == 60.0


def test_backoff_jitter_takes_at_most_half_the_delay() -> None:
    """The largest jitter halves the delay; random jitter stays within [delay/2, delay]."""
    assert backoff(1.0, 60.0, jitter=lambda: 1.0)(3) == 2.0
    assert backoff(1.0, 60.0, jitter=lambda: 0.5)(3) == 3.0
    policy = backoff(0.5, 30.0, jitter=random.Random(7).random)
    for attempt in range(1, 12):
        full = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert full / 2 <= policy(attempt) <= full


# --- binding ---------------------------------------------------------------------------------


def test_bind_transceiver_carries_the_configured_credentials() -> None:
    """The first PDU is bind_transceiver with system_id, password, system_type, version 0x34."""
    up = Upstreams(system_type="VMA")
    up.start()
    body = b"relay\0pw\0VMA\0" + bytes((0x34, 0, 0)) + b"\0"
    expected = struct.pack("!IIII", 16 + len(body), 0x09, 0, 1) + body
    assert up.endpoint.last.frames() == [expected]
    bind = pdu.read_bind(expected)
    assert (bind.kind, bind.system_id, bind.password, bind.system_type) == (
        "transceiver",
        "relay",
        "pw",
        "VMA",
    )


def test_session_joins_the_pool_only_once_bound() -> None:
    """Until bind_transceiver_resp OK the session is "connecting" and not in the pool."""
    up = Upstreams()
    up.start()
    transport = up.endpoint.last
    assert up.pool.transmitters == []
    assert up.state() == {"connecting": 1.0, "bound": 0.0}

    transport.answer_bind()

    assert len(up.pool.transmitters) == 1
    assert up.pool.transmitters[0].closed is False
    assert up.pool.receivers == []
    assert up.state() == {"connecting": 0.0, "bound": 1.0}
    assert up.endpoint.attempts == [0.0]


def test_enquire_link_runs_every_interval_from_the_bind_on() -> None:
    """enquire_link goes out ``enquire_link`` seconds after the bind, then every interval."""
    up = Upstreams(enquire_link=10.0, response_timeout=8.0)
    up.start()
    transport = up.endpoint.last
    transport.take()  # the bind
    up.clock.advance(5.0)  # the operator takes its time to bind us
    assert transport.frames() == []
    transport.send(pdu.bind_response("transceiver", 1, Status.ESME_ROK, "SMSC"))

    up.clock.advance(9.999)
    assert transport.frames() == []
    up.clock.advance(0.001)  # t = 15: bound at 5 + 10
    (probe,) = transport.take()
    assert probe == pdu.build(CommandId.enquire_link, pdu.sequence_of(probe))
    transport.send(pdu.response(CommandId.enquire_link, pdu.sequence_of(probe)))

    up.clock.advance(9.999)
    assert transport.frames() == []
    up.clock.advance(0.001)  # t = 25
    (second,) = transport.take()
    assert pdu.header(second)[1] == CommandId.enquire_link
    assert pdu.sequence_of(second) != pdu.sequence_of(probe)


def test_bind_refused_closes_and_retries_with_growing_backoff() -> None:
    """Each refused bind closes its connection; retries come after 1, 2, 4, 8, 8 seconds."""
    up = Upstreams(reconnect_initial=1.0, reconnect_max=8.0)
    up.start()
    for delay in (1.0, 2.0, 4.0, 8.0, 8.0):
        transport = up.endpoint.last
        transport.answer_bind(Status.ESME_RINVPASWD)
        assert transport.disconnecting
        assert up.pool.transmitters == []
        up.clock.advance(0)  # the connection's loss arrives
        assert up.pending_reconnects() == 1
        attempts = len(up.endpoint.attempts)
        up.clock.advance(delay - 0.001)
        assert len(up.endpoint.attempts) == attempts
        up.clock.advance(0.001)
        assert len(up.endpoint.attempts) == attempts + 1
    assert up.endpoint.attempts == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0, 23.0])
    assert up.reconnects("bind_refused") == 5.0
    assert up.state() == {"connecting": 1.0, "bound": 0.0}


def test_refused_bind_then_operator_close_reconnects_without_error() -> None:
    """Regression: the loss of a connection whose bind was refused raised NoTransition."""
    up = Upstreams()
    up.start()
    refused = up.endpoint.last
    refused.hold_loss = True
    refused.answer_bind(Status.ESME_RINVPASWD)
    refused.peer_closes()  # the operator hangs up after refusing, as most do
    refused.deliver_loss()  # ClientService is Waiting here: no transition for a disconnect

    assert up.reconnects("bind_refused") == 1.0
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 1.0]
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1
    assert up.state() == {"connecting": 0.0, "bound": 1.0}


def test_late_loss_of_a_refused_connection_leaves_the_newer_bind_alone() -> None:
    """A refused connection that closes only after the retry bound must not end the new bind."""
    up = Upstreams()
    up.start()
    refused = up.endpoint.last
    refused.hold_loss = True  # the operator does not read: our close does not complete yet
    refused.answer_bind(Status.ESME_RINVPASWD)
    up.clock.advance(1.0)
    up.endpoint.last.answer_bind()
    (connection,) = up.pool.transmitters

    refused.deliver_loss()

    assert up.pool.transmitters == [connection]
    assert up.state() == {"connecting": 0.0, "bound": 1.0}
    assert up.pending_reconnects() == 0
    up.clock.advance(5.0)
    assert up.endpoint.attempts == [0.0, 1.0]
    # ClientService still knows the bound connection: losing it reconnects.
    up.endpoint.last.peer_closes()
    up.clock.advance(0)
    assert up.pool.transmitters == []
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 1.0, 7.0]


def test_unanswered_bind_aborts_the_connection_and_retries() -> None:
    """No bind answer within response_timeout: the connection is aborted, then a retry."""
    up = Upstreams(response_timeout=3.0)
    up.start()
    silent = up.endpoint.last
    up.clock.advance(2.999)
    assert not silent.disconnecting
    up.clock.advance(0.001)
    assert silent.aborted
    assert up.reconnects("bind_timeout") == 1.0
    up.clock.advance(0)
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 4.0]
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1


def test_failed_connection_attempts_back_off_and_are_counted() -> None:
    """A refused TCP connection counts reason="connect" and is retried after 1, 2, 4 s."""
    up = Upstreams()
    up.endpoint.refuse = True
    up.start()
    up.clock.pump([0.5] * 14)  # t = 7
    assert up.endpoint.attempts == [0.0, 1.0, 3.0, 7.0]
    assert up.reconnects("connect") == 4.0
    up.endpoint.refuse = False
    up.clock.advance(8.0)
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1


def test_unanswered_enquire_link_aborts_and_reconnects() -> None:
    """enquire_link unanswered for response_timeout: abort, leave the pool, reconnect."""
    up, transport = bound(enquire_link=10.0, response_timeout=3.0)
    up.clock.advance(10.0)
    (probe,) = transport.take()
    assert pdu.header(probe)[1] == CommandId.enquire_link
    up.clock.advance(2.999)
    assert not transport.aborted
    assert len(up.pool.transmitters) == 1
    up.clock.advance(0.001)
    assert transport.aborted
    up.clock.advance(0)
    assert up.pool.transmitters == []
    assert up.state() == {"connecting": 1.0, "bound": 0.0}
    assert up.reconnects("lost") == 1.0
    assert up.sample("smpprelay_session_timeouts_total", side="upstream", timer="enquire_link")
    up.clock.advance(0.999)
    assert up.endpoint.attempts == [0.0]
    up.clock.advance(0.001)
    assert up.endpoint.attempts == [0.0, 14.0]
    up.endpoint.last.answer_bind()
    assert len(up.pool.transmitters) == 1


def test_operator_unbind_is_answered_and_the_session_rebinds() -> None:
    """The operator's unbind gets unbind_resp; with nothing in flight the connection closes
    at once, and the session rebinds."""
    up, transport = bound()
    transport.send(pdu.build(CommandId.unbind, 77))
    assert transport.take() == [pdu.build(CommandId.unbind_resp, 77)]
    assert transport.disconnecting
    assert not transport.aborted
    waiting = up.pool.submit(submit_sm())  # the closing session takes no more submits
    assert transport.frames() == []
    up.clock.advance(0)
    assert up.pool.transmitters == []
    assert up.state() == {"connecting": 1.0, "bound": 0.0}
    assert (up.reconnects("unbind"), up.reconnects("lost")) == (1.0, 0.0)
    up.clock.advance(1.0)
    assert up.endpoint.attempts == [0.0, 1.0]
    up.endpoint.last.answer_bind()
    assert up.state() == {"connecting": 0.0, "bound": 1.0}
    (sent,) = up.endpoint.last.frames()
    assert pdu.header(sent)[1] == CommandId.submit_sm
    assert not waiting.called


def test_operator_unbind_lets_the_submits_in_flight_get_the_operators_answers() -> None:
    """20 submits in flight, then unbind: unbind_resp at once, the session leaves the pool,
    and the operator's 20 answers still reach their callers; the connection closes after the
    last one (before the fix all 20 failed with the connection's loss)."""
    up, transport = bound(window=20, enquire_link=1.0, response_timeout=30.0)
    answers = [up.pool.submit(submit_sm()) for _ in range(20)]
    requests = transport.take()
    assert len(requests) == 20

    transport.send(pdu.build(CommandId.unbind, 5))
    assert transport.take() == [pdu.build(CommandId.unbind_resp, 5)]
    assert up.pool.transmitters == []
    assert up.state() == {"connecting": 1.0, "bound": 0.0}
    later = up.pool.submit(submit_sm())  # waits for the next bind, not this connection
    up.clock.advance(5.0)  # draining: no enquire_link of ours, and still open
    assert transport.take() == []
    assert not transport.disconnecting

    resps = [
        pdu.submit_sm_resp(pdu.sequence_of(request), Status.ESME_ROK, b"id%d" % i)
        for i, request in enumerate(requests)
    ]
    for resp in resps[:-1]:
        transport.send(resp)
    assert not transport.disconnecting
    transport.send(resps[-1])
    assert [result_of(answer) for answer in answers] == resps
    assert transport.disconnecting
    assert not transport.aborted
    up.clock.advance(0)
    assert (up.reconnects("unbind"), up.reconnects("lost")) == (1.0, 0.0)
    assert up.pending_reconnects() == 1
    up.clock.advance(1.0)
    up.endpoint.last.answer_bind()
    (sent,) = up.endpoint.last.take()
    assert pdu.header(sent)[1] == CommandId.submit_sm
    assert not later.called


def test_operator_unbind_with_answers_never_sent_closes_within_the_response_timeout() -> None:
    """An operator that unbinds and then answers nothing: each submit fails at its response
    timer, the connection closes then, and no timer of the drain is left behind."""
    up, transport = bound(response_timeout=3.0)
    answer = up.pool.submit(submit_sm())
    transport.take()
    up.clock.advance(1.0)
    transport.send(pdu.build(CommandId.unbind, 5))
    transport.take()
    up.clock.advance(1.999)
    assert not transport.disconnecting
    up.clock.advance(0.001)  # the submit's response timer
    assert failure_of(answer).check(ResponseTimeout)
    assert transport.disconnecting
    up.clock.advance(0)
    assert up.pending_reconnects() == 1
    assert len(up.clock.getDelayedCalls()) == 1  # the reconnect only


def test_operator_unbind_then_close_ends_the_drain() -> None:
    """The operator closes after its unbind: the submits in flight fail with the loss (they
    were not answered) and the drain's timer goes with the connection."""
    up, transport = bound(response_timeout=30.0)
    answer = up.pool.submit(submit_sm())
    transport.take()
    transport.send(pdu.build(CommandId.unbind, 5))
    transport.peer_closes()
    up.clock.advance(0)
    assert failure_of(answer).check(ConnectionDone)
    assert up.pending_reconnects() == 1
    assert len(up.clock.getDelayedCalls()) == 1


def test_deliver_sm_after_an_operator_unbind_is_routed_and_holds_the_close() -> None:
    """A receipt sent after the unbind is still routed; the connection stays open until its
    deliver_sm_resp is written, so the operator does not send it again."""
    up, transport = bound()
    up.hold_routes = True
    answer = up.pool.submit(submit_sm())
    (request,) = transport.take()
    transport.send(pdu.build(CommandId.deliver_sm, 8, b"receipt"))
    transport.send(pdu.build(CommandId.unbind, 9))
    assert transport.take() == [pdu.build(CommandId.unbind_resp, 9)]
    transport.send(pdu.build(CommandId.deliver_sm, 10, b"after"))
    assert up.routed == [
        pdu.build(CommandId.deliver_sm, 8, b"receipt"),
        pdu.build(CommandId.deliver_sm, 10, b"after"),
    ]
    transport.send(pdu.submit_sm_resp(pdu.sequence_of(request), Status.ESME_ROK, b"x"))
    result_of(answer)
    assert not transport.disconnecting  # two deliver_sm still being routed
    up.held_routes[0].callback(Status.ESME_ROK)
    assert not transport.disconnecting
    up.held_routes[1].callback(Status.ESME_ROK)
    assert transport.take() == [
        pdu.build(CommandId.deliver_sm_resp, 8, b"\0"),
        pdu.build(CommandId.deliver_sm_resp, 10, b"\0"),
    ]
    assert transport.disconnecting


def test_deliver_sm_from_the_operator_is_routed_and_answered() -> None:
    """A deliver_sm goes to the router; the operator gets deliver_sm_resp with its status."""
    up, transport = bound()
    receipt = pdu.build(CommandId.deliver_sm, 9, b"body")
    transport.send(receipt)
    assert up.routed == [receipt]
    assert transport.take() == [pdu.build(CommandId.deliver_sm_resp, 9, b"\0")]


# --- shutdown --------------------------------------------------------------------------------


def test_stop_unbinds_every_session_and_leaves_no_timers() -> None:
    """stopService sends unbind on each bound session and fires once both are answered."""
    up = Upstreams(binds=2)
    up.start()
    first, second = up.endpoint.transports
    first.answer_bind()
    second.answer_bind()
    assert len(up.pool.transmitters) == 2

    stopped = up.service.stopService()
    unbinds = [first.take(), second.take()]
    for (unbind,) in unbinds:
        assert unbind == pdu.build(CommandId.unbind, pdu.sequence_of(unbind))
    assert not stopped.called

    first.send(pdu.build(CommandId.unbind_resp, pdu.sequence_of(unbinds[0][0])))
    up.clock.advance(0)
    assert not stopped.called
    second.send(pdu.build(CommandId.unbind_resp, pdu.sequence_of(unbinds[1][0])))
    up.clock.advance(0)

    result_of(stopped)
    assert first.disconnecting
    assert second.disconnecting
    assert up.clock.getDelayedCalls() == []
    assert up.endpoint.attempts == [0.0, 0.0]


def test_a_session_that_unbound_does_not_reconnect_while_stopping() -> None:
    """One session's unbind answered, the other's slow: the first must not bind again."""
    up = Upstreams(binds=2, response_timeout=10.0)
    up.start()
    first, second = up.endpoint.transports
    first.answer_bind()
    second.answer_bind()

    stopped = up.service.stopService()
    ((unbind,),) = [first.take()]
    first.send(pdu.build(CommandId.unbind_resp, pdu.sequence_of(unbind)))
    up.clock.advance(5.0)  # the second unbind is still unanswered

    assert up.endpoint.attempts == [0.0, 0.0]
    assert not stopped.called
    up.clock.advance(5.0)  # the second unbind times out: closed anyway
    up.clock.advance(0)
    result_of(stopped)
    assert up.clock.getDelayedCalls() == []
    assert up.endpoint.attempts == [0.0, 0.0]


def test_stop_while_binding_drops_the_connection_quietly() -> None:
    """Stopping before the bind is answered aborts the connection without an error."""
    up = Upstreams()
    up.start()
    transport = up.endpoint.last
    stopped = up.service.stopService()
    assert transport.aborted
    up.clock.advance(0)
    result_of(stopped)
    assert up.clock.getDelayedCalls() == []
    assert up.endpoint.attempts == [0.0]


def test_stop_while_waiting_to_retry_cancels_the_retry() -> None:
    """Stopping between attempts cancels the scheduled retry."""
    up = Upstreams()
    up.start()
    up.endpoint.last.answer_bind(Status.ESME_RBINDFAIL)
    up.clock.advance(0)
    assert up.pending_reconnects() == 1
    stopped = up.service.stopService()
    result_of(stopped)
    assert up.clock.getDelayedCalls() == []


# --- the pool --------------------------------------------------------------------------------


def test_bound_session_carries_pool_submits_end_to_end() -> None:
    """Through a real session: a pool submit reaches the operator; its answer comes back."""
    up, transport = bound()
    answer = up.pool.submit(submit_sm(registered_delivery=1))
    (sent,) = transport.take()
    assert pdu.header(sent)[1] == CommandId.submit_sm
    resp = pdu.submit_sm_resp(pdu.sequence_of(sent), Status.ESME_ROK, b"abc123")
    transport.send(resp)
    assert result_of(answer) == resp
