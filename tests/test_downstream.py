"""DownstreamSession behind an SmppConnection: binds, session states, submit relay, unbind."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from smpprelay import pdu
from smpprelay.auth import make_portal
from smpprelay.config import Account
from smpprelay.downstream import DownstreamSession, SessionRegistry, State
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status
from tests.fakes import (
    PASSWORD,
    FakeSubmit,
    app_connection,
    captured_logs,
    frames_of,
    resp_header,
    submit_frame,
)

SESSION_INIT = 5.0
INACTIVITY = 300.0


class Harness:
    """One app connection: transport, connection, session and its collaborators."""

    def __init__(
        self,
        clients: tuple[Account, ...] = (Account(system_id="app", password=PASSWORD),),
        window: int = 10,
        host: str = "127.0.0.1",
    ) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.registry = SessionRegistry(self.metrics)
        self.receiver_hooks: list[str] = []
        self.registry.on_receiver_bound.append(self.receiver_hooks.append)
        self.submit = FakeSubmit()
        self.session = DownstreamSession(
            make_portal({c.system_id: c for c in clients}),
            self.registry,
            self.submit,
            self.clock,
            self.metrics,
            SESSION_INIT,
            window,
            inactivity=INACTIVITY,
        )
        self.connection, self.transport = app_connection(
            self.session, self.clock, self.metrics, host
        )

    def send(self, frame: bytes) -> None:
        self.connection.dataReceived(frame)

    def written(self) -> bytes:
        """Everything written since the last call."""
        data = bytes(self.transport.value())
        self.transport.clear()
        return data

    def frames(self) -> list[bytes]:
        """The PDUs written since the last call, split on command_length."""
        return frames_of(self.written())

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def bind(self, kind: str = "transmitter", sequence: int = 1) -> None:
        self.send(pdu.bind_request(kind, sequence, "app", PASSWORD))
        assert pdu.header(self.written())[2] == Status.ESME_ROK


def submit_resp(sequence: int, message_id: bytes) -> bytes:
    body = message_id + b"\0"
    return struct.pack("!IIII", 16 + len(body), 0x80000004, 0, sequence) + body


def _bind_ok_bytes(command_id: int, sequence: int) -> bytes:
    body = b"smpprelay\0" + b"\x02\x10\x00\x01\x34"
    return struct.pack("!IIII", 16 + len(body), command_id, 0, sequence) + body


# --- bind ------------------------------------------------------------------------------------


def test_bind_transmitter_ok() -> None:
    """bind_transmitter with the right credentials is answered OK with our system_id."""
    h = Harness()
    h.send(pdu.bind_request("transmitter", 7, "app", PASSWORD))
    assert h.written() == _bind_ok_bytes(0x80000002, 7)
    assert not h.closing
    assert h.session.state is State.BOUND_TX
    assert h.registry.receivers("app") == []
    assert h.receiver_hooks == []
    assert h.sample("smpprelay_bound_sessions", account="app", bind_type="transmitter") == 1
    assert h.sample("smpprelay_bind_attempts_total", result="ok") == 1


def test_bind_receiver_ok() -> None:
    """bind_receiver is answered OK, listed as a receiver, and the router is told."""
    h = Harness()
    h.send(pdu.bind_request("receiver", 3, "app", PASSWORD))
    assert h.written() == _bind_ok_bytes(0x80000001, 3)
    assert not h.closing
    assert h.registry.receivers("app") == [h.session]
    assert h.receiver_hooks == ["app"]
    assert h.sample("smpprelay_bound_sessions", account="app", bind_type="receiver") == 1
    assert h.sample("smpprelay_bound_sessions", account="app", bind_type="transmitter") is None


def test_bind_transceiver_ok() -> None:
    """bind_transceiver is answered OK, listed as a receiver, and the router is told."""
    h = Harness()
    h.send(pdu.bind_request("transceiver", 9, "app", PASSWORD))
    assert h.written() == _bind_ok_bytes(0x80000009, 9)
    assert not h.closing
    assert h.registry.receivers("app") == [h.session]
    assert h.receiver_hooks == ["app"]
    assert h.sample("smpprelay_bound_sessions", account="app", bind_type="transceiver") == 1


def test_bound_gauge_drops_when_the_connection_is_lost() -> None:
    """A bound session that disconnects leaves the registry and the gauge."""
    h = Harness()
    h.bind("transceiver")
    h.connection.connectionLost()
    assert h.registry.receivers("app") == []
    assert h.sample("smpprelay_bound_sessions", account="app", bind_type="transceiver") == 0


def _assert_bind_refused(h: Harness, command_id: int, sequence: int) -> None:
    assert h.written() == resp_header(command_id, 0x0D, sequence)
    assert h.closing
    assert h.registry.receivers("app") == []
    assert h.session.account == ""


def test_bind_wrong_password_refused_without_logging_it() -> None:
    """A wrong password gets ESME_RBINDFAIL, no body, a close, and is never logged."""
    h = Harness()
    with captured_logs() as events:
        h.send(pdu.bind_request("transceiver", 4, "app", "wr0ngPw!"))
    _assert_bind_refused(h, 0x80000009, 4)
    assert h.sample("smpprelay_bind_attempts_total", result="credentials") == 1
    assert events, "the refusal should be logged"
    for event in events:
        text = formatEvent(event) + repr(event)
        assert "wr0ngPw!" not in text
        assert PASSWORD not in text


def test_bind_unknown_system_id_refused_like_a_wrong_password() -> None:
    """An unknown system_id gets the same ESME_RBINDFAIL answer and a close."""
    h = Harness()
    with captured_logs() as events:
        h.send(pdu.bind_request("transmitter", 5, "nobody", PASSWORD))
    _assert_bind_refused(h, 0x80000002, 5)
    assert h.sample("smpprelay_bind_attempts_total", result="credentials") == 1
    for event in events:
        assert PASSWORD not in formatEvent(event) + repr(event)


def test_bind_from_address_not_allowed_refused() -> None:
    """Right credentials from outside allowed_ips get ESME_RBINDFAIL and a close."""
    client = Account(system_id="app", password=PASSWORD, allowed_ips=("10.0.0.0/8",))
    h = Harness(clients=(client,), host="127.0.0.1")
    h.send(pdu.bind_request("transmitter", 6, "app", PASSWORD))
    _assert_bind_refused(h, 0x80000002, 6)
    assert h.sample("smpprelay_bind_attempts_total", result="address_not_allowed") == 1


def test_bind_from_allowed_network_ok() -> None:
    """A peer inside allowed_ips binds."""
    client = Account(system_id="app", password=PASSWORD, allowed_ips=("10.0.0.0/8",))
    h = Harness(clients=(client,), host="10.1.2.3")
    h.send(pdu.bind_request("transmitter", 6, "app", PASSWORD))
    assert h.written() == _bind_ok_bytes(0x80000002, 6)
    assert not h.closing


def test_malformed_bind_refused() -> None:
    """A bind whose body cannot be decoded gets ESME_RBINDFAIL and a close."""
    h = Harness()
    h.send(pdu.build(CommandId.bind_transmitter, 8, b"app"))
    _assert_bind_refused(h, 0x80000002, 8)
    assert h.sample("smpprelay_bind_attempts_total", result="malformed") == 1


# --- session_init --------------------------------------------------------------------------


def test_no_bind_within_session_init_closes() -> None:
    """A connection that never binds is closed when session_init runs out."""
    h = Harness()
    h.clock.advance(SESSION_INIT - 0.01)
    assert not h.closing
    h.clock.advance(0.01)
    assert h.closing
    assert h.written() == b""
    assert (
        h.sample("smpprelay_session_timeouts_total", side="downstream", timer="session_init") == 1
    )


def test_enquire_link_before_bind_does_not_extend_session_init() -> None:
    """enquire_link before a bind is answered OK but the session_init timer keeps running."""
    h = Harness()
    h.clock.advance(SESSION_INIT - 1)
    h.send(pdu.build(CommandId.enquire_link, 11))
    assert h.written() == resp_header(0x80000015, 0, 11)
    assert not h.closing
    h.clock.advance(1)
    assert h.closing


def test_bind_cancels_session_init() -> None:
    """After a successful bind the session_init timer no longer fires."""
    h = Harness()
    h.clock.advance(SESSION_INIT - 1)
    h.bind()
    # What is left is the inactivity timer, due INACTIVITY after the bind.
    assert [call.getTime() for call in h.clock.getDelayedCalls()] == [SESSION_INIT - 1 + INACTIVITY]
    h.clock.advance(SESSION_INIT * 10)
    assert not h.closing


# --- session states --------------------------------------------------------------------------


def test_submit_before_bind_rejected_and_closed() -> None:
    """submit_sm in OPEN gets ESME_RINVBNDSTS, a close, and never reaches the relay."""
    h = Harness()
    h.send(submit_frame(2))
    assert h.written() == resp_header(0x80000004, 0x04, 2)
    assert h.closing
    assert h.submit.calls == []


def test_submit_on_receiver_rejected_session_kept() -> None:
    """submit_sm on a receiver bind gets ESME_RINVBNDSTS and the session stays."""
    h = Harness()
    h.bind("receiver")
    h.send(submit_frame(2))
    assert h.written() == resp_header(0x80000004, 0x04, 2)
    assert not h.closing
    assert h.submit.calls == []
    assert h.session.state is State.BOUND_RX


def test_second_bind_rejected_already_bound() -> None:
    """A second bind on a bound session gets ESME_RALYBND; the first bind still works."""
    h = Harness()
    h.bind("transmitter")
    h.send(pdu.bind_request("transceiver", 2, "app", PASSWORD))
    assert h.written() == resp_header(0x80000009, 0x05, 2)
    assert not h.closing
    assert h.session.state is State.BOUND_TX
    h.send(submit_frame(3))
    assert len(h.submit.calls) == 1


def test_unknown_command_generic_nack_session_kept() -> None:
    """An unknown command_id gets generic_nack ESME_RINVCMDID with its sequence; session kept."""
    h = Harness()
    h.bind()
    h.send(pdu.build(0x00000077, 42))
    assert h.written() == resp_header(0x80000000, 0x03, 42)
    assert not h.closing


def test_unknown_command_before_bind_closes() -> None:
    """An unknown command_id before a bind is nacked and the connection closed."""
    h = Harness()
    h.send(pdu.build(0x00000077, 42))
    assert h.written() == resp_header(0x80000000, 0x03, 42)
    assert h.closing


def test_unknown_command_ids_share_one_metric_label() -> None:
    """Whatever ids an app invents, requests or responses, the series stay bounded: all
    unknown ids count under the label "other"."""
    h = Harness()
    h.bind("transceiver")
    for command_id in range(0x1000, 0x1200):  # none of them an SMPP 3.4 command
        h.send(pdu.build(command_id, command_id))  # unknown requests: nacked, session kept
        h.send(pdu.build(command_id | 0x80000000, command_id))  # unknown responses: dropped
    assert not h.closing
    families = {family.name: family for family in h.metrics.registry.collect()}
    rejected = families["smpprelay_rejected_requests"].samples
    unexpected = families["smpprelay_unexpected_pdus"].samples
    assert {s.labels["command"] for s in rejected if s.name.endswith("_total")} == {"other"}
    assert {s.labels["command"] for s in unexpected if s.name.endswith("_total")} == {"other"}
    assert [s.value for s in rejected if s.name.endswith("_total")] == [512.0]


def test_responses_to_nothing_are_not_answered() -> None:
    """A deliver_sm_resp or generic_nack answering nothing in flight gets no answer at all."""
    h = Harness()
    h.bind("transceiver")
    h.send(pdu.build(CommandId.deliver_sm_resp, 5, b"\0"))
    h.send(pdu.generic_nack(6, Status.ESME_RINVCMDID))
    assert h.written() == b""
    assert not h.closing
    assert (
        h.sample("smpprelay_unexpected_pdus_total", side="downstream", command="deliver_sm_resp")
        == 1
    )
    assert (
        h.sample("smpprelay_unexpected_pdus_total", side="downstream", command="generic_nack") == 1
    )


# --- submit relay ----------------------------------------------------------------------------


def test_submit_relayed_unchanged_and_answered_with_app_sequence() -> None:
    """The app's bytes reach the relay as they are; the answer carries the app's sequence."""
    h = Harness()
    h.bind()
    frame = submit_frame(77, b"relay me")
    h.send(frame)
    assert h.submit.calls == [("app", frame)]
    assert h.written() == b""
    h.clock.advance(0.25)
    h.submit.answer(0, b"OP-1")
    assert h.written() == submit_resp(77, b"OP-1")
    assert not h.closing
    assert h.sample("smpprelay_submits_total", account="app", status="ESME_ROK") == 1
    assert h.sample("smpprelay_submit_latency_seconds_sum", account="app") == 0.25


def test_submit_error_status_passed_through() -> None:
    """The relay's error answer reaches the app with its status and the app's sequence."""
    h = Harness()
    h.bind()
    h.send(submit_frame(12))
    h.submit.pending[0].callback(pdu.submit_sm_resp(0, 0x45))
    assert h.written() == resp_header(0x80000004, 0x45, 12)
    assert h.sample("smpprelay_submits_total", account="app", status="ESME_RSUBMITFAIL") == 1


@pytest.mark.logs_errors
def test_a_relay_failure_is_answered_rsyserr_and_logged() -> None:
    """Only a bug makes the relay fail a submit: the app still gets ESME_RSYSERR under its
    sequence, the answer is counted, the failure logged, and the window is free again."""
    h = Harness(window=1)
    h.bind()
    h.send(submit_frame(21))
    with captured_logs() as events:
        h.submit.pending[0].errback(RuntimeError("a bug"))
    assert h.written() == resp_header(0x80000004, Status.ESME_RSYSERR, 21)
    assert h.sample("smpprelay_submits_total", account="app", status="ESME_RSYSERR") == 1
    assert any(formatEvent(e) == "relaying a submit failed" for e in events)
    h.send(submit_frame(22))
    assert h.written() == b""
    assert len(h.submit.calls) == 2


def test_submits_answered_out_of_order_keep_their_sequences() -> None:
    """Two submits answered in reverse order each get their own sequence number."""
    h = Harness()
    h.bind()
    h.send(submit_frame(10, b"first"))
    h.send(submit_frame(11, b"second"))
    assert [frame for _, frame in h.submit.calls] == [
        submit_frame(10, b"first"),
        submit_frame(11, b"second"),
    ]
    h.submit.answer(1, b"B")
    h.submit.answer(0, b"A")
    assert h.frames() == [submit_resp(11, b"B"), submit_resp(10, b"A")]
    assert h.sample("smpprelay_submits_total", account="app", status="ESME_ROK") == 2


def test_window_full_throttles_immediately() -> None:
    """With window=2 a third concurrent submit gets ESME_RTHROTTLED at once."""
    h = Harness(window=2)
    h.bind()
    h.send(submit_frame(1))
    h.send(submit_frame(2))
    assert h.written() == b""
    h.send(submit_frame(3))
    assert h.written() == resp_header(0x80000004, 0x58, 3)
    assert len(h.submit.calls) == 2
    assert not h.closing
    assert h.sample("smpprelay_submits_total", account="app", status="ESME_RTHROTTLED") == 1
    # Once one is answered there is room again.
    h.submit.answer(0, b"X")
    h.written()
    h.send(submit_frame(4))
    assert h.written() == b""
    assert len(h.submit.calls) == 3


# --- unbind and shutdown ---------------------------------------------------------------------


def test_unbind_waits_for_in_flight_submits() -> None:
    """unbind_resp is written only after both in-flight submit_sm_resp, then the close."""
    h = Harness()
    h.bind()
    h.send(submit_frame(20))
    h.send(submit_frame(21))
    h.send(pdu.build(CommandId.unbind, 22))
    assert h.transport.value() == b""
    assert not h.closing
    assert h.sample("smpprelay_bound_sessions", account="app", bind_type="transmitter") == 0
    h.submit.answer(1, b"M21")
    assert not h.closing
    h.submit.answer(0, b"M20")
    assert h.frames() == [
        submit_resp(21, b"M21"),
        submit_resp(20, b"M20"),
        resp_header(0x80000006, 0, 22),
    ]
    assert h.closing


def test_submit_while_unbinding_rejected() -> None:
    """A submit after the app's unbind is answered ESME_RINVBNDSTS and not relayed."""
    h = Harness()
    h.bind()
    h.send(submit_frame(20))
    h.send(pdu.build(CommandId.unbind, 21))
    h.send(submit_frame(22))
    assert h.written() == resp_header(0x80000004, 0x04, 22)
    assert len(h.submit.calls) == 1


def test_unbind_with_nothing_in_flight_answers_at_once() -> None:
    """unbind with no submit in flight is answered OK at once and the connection closed."""
    h = Harness()
    h.bind()
    h.send(pdu.build(CommandId.unbind, 3))
    assert h.written() == resp_header(0x80000006, 0, 3)
    assert h.closing


def test_shutdown_waits_for_in_flight_then_unbinds() -> None:
    """shutdown() on a bound session answers the in-flight submit, then sends unbind."""
    h = Harness()
    h.bind()
    h.send(submit_frame(30))
    done: list[Any] = []
    h.session.shutdown().addBoth(done.append)
    assert h.written() == b""
    assert h.registry.receivers("app") == []
    h.submit.answer(0, b"M30")
    frames = h.frames()
    assert frames[0] == submit_resp(30, b"M30")
    assert len(frames) == 2
    _, command_id, status, unbind_sequence = pdu.header(frames[1])
    assert (command_id, status, len(frames[1])) == (CommandId.unbind, 0, 16)
    assert done == []
    assert not h.closing
    h.send(pdu.build(CommandId.unbind_resp, unbind_sequence))
    assert h.closing
    assert done == [None]


def test_shutdown_unbound_session_closes() -> None:
    """shutdown() before a bind just closes the connection."""
    h = Harness()
    done: list[Any] = []
    h.session.shutdown().addBoth(done.append)
    assert done == [None]
    assert h.closing
    assert h.written() == b""


# --- requests valid in their state that the relay does not carry (F8) ------------------------


@pytest.mark.parametrize(
    ("kind", "command_id", "answer"),
    [
        ("transmitter", CommandId.query_sm, resp_header(0x80000000, 0x03, 8)),
        ("transceiver", CommandId.replace_sm, resp_header(0x80000000, 0x03, 8)),
        ("transmitter", CommandId.cancel_sm, resp_header(0x80000000, 0x03, 8)),
        ("transceiver", CommandId.submit_multi, resp_header(0x80000000, 0x03, 8)),
        ("receiver", CommandId.data_sm, resp_header(0x80000000, 0x03, 8)),
        ("transmitter", CommandId.data_sm, resp_header(0x80000000, 0x03, 8)),
        # out of its state (3.4 table 2-1): the state error, not "unsupported"
        ("receiver", CommandId.query_sm, resp_header(0x80000003, 0x04, 8)),
        ("receiver", CommandId.cancel_sm, resp_header(0x80000008, 0x04, 8)),
        ("transceiver", CommandId.deliver_sm, resp_header(0x80000005, 0x04, 8)),
    ],
)
def test_requests_not_relayed_are_answered_and_the_session_kept(
    kind: str, command_id: int, answer: bytes
) -> None:
    """Never silence: each gets one answer at once; nothing reaches the relay; session kept."""
    h = Harness()
    h.bind(kind)
    h.send(pdu.build(command_id, 8, b"\0" * 20))
    assert h.written() == answer
    assert not h.closing
    assert h.submit.calls == []
    h.send(pdu.build(CommandId.enquire_link, 9))
    assert h.written() == resp_header(0x80000015, 0, 9)


@pytest.mark.parametrize("sequence", [0, 0x7FFFFFFF, 0xFFFFFFFF])
def test_request_with_odd_status_or_sequence_is_processed_and_echoed(sequence: int) -> None:
    """F12: a request with a non-zero command_status or an out-of-range sequence still works."""
    h = Harness()
    h.bind()
    frame = submit_frame(sequence)
    odd = frame[:8] + b"\x00\x00\x00\x45" + frame[12:]
    h.send(odd)
    assert h.submit.calls == [("app", odd)]
    h.submit.answer(0, b"M")
    assert h.written() == submit_resp(sequence, b"M")
    h.send(pdu.build(CommandId.enquire_link, sequence, status=0x08))
    assert h.written() == resp_header(0x80000015, 0, sequence)


# --- inactivity (S6) ----------------------------------------------------------------------------


def test_idle_bound_session_is_unbound_by_the_relay() -> None:
    """Nothing from the app for `inactivity` seconds: we send unbind, close on its answer."""
    h = Harness()
    h.bind("transceiver")
    h.clock.advance(INACTIVITY - 1)
    h.send(pdu.build(CommandId.enquire_link, 2))  # any PDU counts as activity
    h.written()
    h.clock.advance(INACTIVITY - 0.01)
    assert h.written() == b""
    h.clock.advance(0.01)
    (unbind,) = h.frames()
    _, command_id, status, sequence = pdu.header(unbind)
    assert (command_id, status, len(unbind)) == (CommandId.unbind, 0, 16)
    assert h.session.state is State.UNBINDING
    assert h.registry.receivers("app") == []
    assert not h.closing
    # A submit now is refused for the state and not relayed.
    h.send(submit_frame(3))
    assert h.written() == resp_header(0x80000004, 0x04, 3)
    h.send(pdu.build(CommandId.unbind_resp, sequence))
    assert h.closing
    assert h.submit.calls == []
    assert h.sample("smpprelay_session_timeouts_total", side="downstream", timer="inactivity") == 1


def test_idle_session_unbound_even_if_the_app_never_answers_unbind() -> None:
    """The unbind is a request like any other: unanswered, the response timer closes the link."""
    h = Harness()
    h.bind()
    h.clock.advance(INACTIVITY)
    assert pdu.header(h.written())[1] == CommandId.unbind
    h.clock.advance(30.0)
    assert h.closing


def test_idle_session_waits_for_its_in_flight_submit_before_unbinding() -> None:
    """A submit still waiting for the operator is answered before our unbind."""
    h = Harness()
    h.bind()
    h.send(submit_frame(4))
    h.clock.advance(INACTIVITY)
    assert h.written() == b""
    h.submit.answer(0, b"M4")
    frames = h.frames()
    assert frames[0] == submit_resp(4, b"M4")
    assert pdu.header(frames[1])[1] == CommandId.unbind


# --- a receiver that stops reading ------------------------------------------------------------


def test_paused_receiver_takes_no_deliveries_until_it_reads_again() -> None:
    """A full write buffer pauses the session: no deliver_sm; on resume the router is told."""
    h = Harness()
    h.bind("receiver")
    h.receiver_hooks.clear()
    assert h.session.can_deliver
    h.connection.pauseProducing()
    assert not h.session.can_deliver
    assert h.transport.producerState == "paused"  # and the app's requests are not read
    h.connection.resumeProducing()
    assert h.session.can_deliver
    assert h.receiver_hooks == ["app"]


def test_resumed_transmitter_does_not_wake_the_router() -> None:
    """Only a receiving bind has deliveries waiting for it."""
    h = Harness()
    h.bind("transmitter")
    h.connection.pauseProducing()
    h.connection.resumeProducing()
    assert h.receiver_hooks == []


# --- Faults issue, item 10: deaf receivers ---------------------------------------------------


def test_session_goes_deaf_on_a_timeout_and_back_on_an_answer() -> None:
    """DownstreamSession: a deliver_sm left unanswered for limits.response makes it deaf
    (can_deliver False, counted), an answer to the next one makes it a receiver again."""
    s = Harness()
    s.bind("transceiver")
    session = s.session
    assert session.can_deliver
    timed_out: list[object] = []
    session.deliver(pdu.build(CommandId.deliver_sm, 0, b"\0" * 20)).addErrback(timed_out.append)
    s.clock.advance(30)
    assert len(timed_out) == 1
    assert session.deaf
    assert not session.can_deliver
    assert session.can_probe
    name = "smpprelay_session_timeouts_total"
    assert s.sample(name, side="downstream", timer="deliver_sm") == 1
    result: list[bytes] = []
    session.deliver(pdu.build(CommandId.deliver_sm, 0, b"\0" * 20)).addCallback(result.append)
    assert not session.can_probe
    s.connection.dataReceived(pdu.response(CommandId.deliver_sm, 2, 0, b"\0"))
    assert len(result) == 1
    assert not session.deaf
    assert session.can_deliver


# --- Faults issue, item 6: a stopping relay keeps delivering until its unbind goes out -------


def test_receiver_keeps_taking_deliveries_while_the_stop_drains() -> None:
    """A transceiver the relay unbinds stays a receiver while its submits drain (it left the
    registry at once, so a receipt then was answered OK and dropped), and stops being one
    when the relay's unbind goes out."""
    h = Harness()
    h.bind("transceiver")
    h.send(submit_frame(30))
    h.session.shutdown()
    assert h.registry.receivers("app") == [h.session]
    assert h.session.can_deliver
    h.session.deliver(pdu.build(CommandId.deliver_sm, 0, b"\0" * 20))
    assert [pdu.header(f)[1] for f in h.frames()] == [CommandId.deliver_sm]
    h.submit.answer(0, b"M30")
    assert [pdu.header(f)[1] for f in h.frames()] == [CommandId.submit_sm_resp, CommandId.unbind]
    assert h.registry.receivers("app") == []
    assert not h.session.receives
