"""smpprelay-send: its options, how it splits text, and its exit status against a fake relay.

The fake relay sits on a StringTransport and answers through a Clock, so every wait (the
receipt, the countdown, the timeout) is the test's to advance; nothing sleeps.
"""

from __future__ import annotations

import io
from collections import deque
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from smpprelay import pdu, send
from smpprelay.connection import SmppConnection
from smpprelay.filters.encoding import gsm_encode
from smpprelay.pdu import CommandId, Status

# --- options --------------------------------------------------------------------------------


def test_defaults_aim_at_the_demo_relay() -> None:
    options = send.parse_args(["--to", "447700900123", "hello"])
    assert (options.host, options.port, options.system_id, options.password) == (
        "127.0.0.1",
        2775,
        "demo",
        "demo",
    )
    assert (options.to, options.source, options.coding, options.receipt) == (
        "447700900123",
        "",
        "gsm",
        True,
    )
    assert (options.timeout, options.tls, options.text) == (30.0, False, "hello")


def test_every_option() -> None:
    options = send.parse_args(
        [
            *("--host", "relay.example", "--port", "3550", "--system-id", "app1"),
            *("--password", "pw", "--to", "1", "--from", "Shop", "--coding", "ucs2"),
            *("--no-receipt", "--timeout", "5", "--tls", "--tls-ca", "ca.pem", "hi"),
        ]
    )
    assert (options.host, options.port, options.system_id, options.password) == (
        "relay.example",
        3550,
        "app1",
        "pw",
    )
    assert (options.source, options.coding, options.receipt, options.timeout) == (
        "Shop",
        "ucs2",
        False,
        5.0,
    )
    assert (options.tls, options.tls_ca) == (True, "ca.pem")


@pytest.mark.parametrize(
    "argv",
    [
        ["hello"],
        ["--to", "1"],
        ["--to", "1", "--coding", "utf8", "hi"],
        ["--to", "1", "--timeout", "0", "hi"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        send.parse_args(argv)
    assert exited.value.code == 2
    assert "smpprelay-send: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("", (0, 0, b"")), ("+447700900123", (1, 1, b"447700900123")), ("Shop", (5, 0, b"Shop"))],
)
def test_addresses(typed: str, expected: tuple[int, int, bytes]) -> None:
    assert send.address(typed) == expected


# --- encoding and splitting -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "text", "data_coding", "octets"),
    [
        ("gsm", "@£ [x]", 0, gsm_encode("@£ [x]")),
        ("ascii", "a`b", 1, b"a`b"),
        ("latin1", "café", 3, "café".encode("latin-1")),
        ("ucs2", "Жж", 8, "Жж".encode("utf-16-be")),
    ],
)
def test_one_sms_is_sent_as_it_is(coding: str, text: str, data_coding: int, octets: bytes) -> None:
    assert send.encode_parts(text, coding, 7) == (data_coding, 0, [octets])


def test_long_gsm_text_is_split_in_153_septets_behind_a_udh() -> None:
    data_coding, esm_class, parts = send.encode_parts("a" * 161, "gsm", 0x42)
    assert (data_coding, esm_class) == (0, 0x40)
    assert parts == [
        bytes((5, 0, 3, 0x42, 2, 1)) + b"a" * 153,
        bytes((5, 0, 3, 0x42, 2, 2)) + b"a" * 8,
    ]
    assert send.encode_parts("a" * 160, "gsm", 1)[2] == [b"a" * 160]


def test_an_escape_stays_with_its_character() -> None:
    """'€' (0x1B 0x65) would straddle parts 1 and 2 after 152 septets: it moves to part 2."""
    _, _, parts = send.encode_parts("a" * 152 + "€" + "a" * 10, "gsm", 1)
    assert parts[0][6:] == b"a" * 152
    assert parts[1][6:] == b"\x1be" + b"a" * 10


def test_a_surrogate_pair_stays_in_one_part() -> None:
    text = "a" * 66 + "😀" + "a" * 10  # the pair would take units 67 and 68
    _, _, parts = send.encode_parts(text, "ucs2", 1)
    assert parts[0][6:] == ("a" * 66).encode("utf-16-be")
    assert parts[1][6:].decode("utf-16-be") == "😀" + "a" * 10


def test_ascii_and_latin1_split_at_134_octets() -> None:
    for coding, data_coding in (("ascii", 1), ("latin1", 3)):
        dc, esm_class, parts = send.encode_parts("b" * 141, coding, 1)
        assert (dc, esm_class, [len(p) for p in parts]) == (data_coding, 0x40, [140, 13])


@pytest.mark.parametrize(("coding", "text"), [("gsm", "☃"), ("ascii", "é"), ("latin1", "€")])
def test_a_character_the_coding_cannot_carry_is_refused(coding: str, text: str) -> None:
    with pytest.raises(ValueError, match=f"--coding {coding} cannot carry"):
        send.encode_parts(text, coding, 1)


def test_more_than_255_parts_is_refused() -> None:
    with pytest.raises(ValueError, match="256 parts"):
        send.encode_parts("a" * 153 * 256, "gsm", 1)


# --- against a fake relay -------------------------------------------------------------------


class _Wire(StringTransport):
    """A transport whose writes reach the fake relay."""

    def __init__(self, relay: FakeRelay) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.relay = relay
        self.framer = pdu.Framer(1 << 20)

    def write(self, data: bytes) -> None:
        super().write(data)  # type: ignore[no-untyped-call]
        for frame in self.framer.feed(data):
            self.relay.received(frame)

    def writeSequence(self, data: list[bytes]) -> None:
        # A connection writes what one read made in one call (`smpprelay.wire.Cork`).
        self.write(b"".join(data))


class FakeRelay:
    """Answers binds, submits (each a new id, with a receipt of ``stat`` unless None) and
    unbinds, one reactor turn later; records the requests and the answers it got."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.bind_status = Status.ESME_ROK
        self.submit_statuses: deque[int] = deque()
        self.stat: str | None = "DELIVRD"
        self.requests: list[bytes] = []
        self.answers: list[bytes] = []
        self.connection: SmppConnection | None = None
        self.submits = 0

    def connect(self, connection: SmppConnection) -> Deferred[SmppConnection]:
        self.connection = connection
        connection.makeConnection(_Wire(self))  # type: ignore[no-untyped-call]
        return succeed(connection)

    def later(self, frame: bytes) -> None:
        def deliver() -> None:
            if self.connection is not None and not self.connection.closed:
                self.connection.dataReceived(frame)

        self.clock.callLater(0, deliver)

    def received(self, frame: bytes) -> None:
        _, command_id, _, sequence = pdu.header(frame)
        if command_id & pdu.RESPONSE_BIT:
            self.answers.append(frame)
            return
        self.requests.append(frame)
        if command_id == CommandId.bind_transceiver:
            self.later(pdu.bind_response("transceiver", sequence, self.bind_status, "relay"))
        elif command_id == CommandId.submit_sm:
            status = self.submit_statuses.popleft() if self.submit_statuses else 0
            if status:
                self.later(pdu.submit_sm_resp(sequence, status))
                return
            self.submits += 1
            message_id = b"ID%d" % self.submits
            self.later(pdu.submit_sm_resp(sequence, 0, message_id))
            fields = pdu.read_short_message(frame)
            if self.stat is not None and fields.registered_delivery:
                self.later(self.receipt(fields, message_id, self.stat))
        elif command_id == CommandId.unbind:
            self.later(pdu.response(CommandId.unbind, sequence))

    def receipt(self, fields: pdu.ShortMessage, message_id: bytes, stat: str) -> bytes:
        body = pdu.delivery_receipt(fields, message_id, stat, 0.0, 0.0)
        return pdu.with_sequence(body, 900 + self.submits)

    def commands(self) -> list[str]:
        return [pdu.command_name(pdu.header(frame)[1]) for frame in self.requests]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Run:
    """One `send.send` against a fake relay on a Clock."""

    def __init__(self, *argv: str, out: io.StringIO | None = None) -> None:
        self.clock = Clock()
        self.relay = FakeRelay(self.clock)
        self.options = send.parse_args(
            [*argv, "--to", "447700900123"] if "--to" not in argv else list(argv)
        )
        self.out = out or io.StringIO()
        self.outcome: list[Any] = []

    def start(self) -> Run:
        coroutine = send.send(self.clock, self.options, self.relay.connect, self.out)
        ensureDeferred(coroutine).addBoth(self.outcome.append)
        return self

    def advance(self, seconds: float = 0.0, turns: int = 10) -> None:
        for _ in range(turns):
            self.clock.advance(0)
        if seconds:
            self.clock.advance(seconds)
            for _ in range(turns):
                self.clock.advance(0)

    @property
    def code(self) -> int:
        assert self.outcome, "send has not finished"
        assert isinstance(self.outcome[0], int), self.outcome[0]
        return self.outcome[0]

    @property
    def error(self) -> str:
        assert self.outcome, "send has not finished"
        assert isinstance(self.outcome[0], Failure), self.outcome
        assert self.outcome[0].check(send.SendError)
        return str(self.outcome[0].value)


def test_a_delivered_receipt_exits_0() -> None:
    run = Run("hello").start()
    run.advance()
    assert run.code == send.DELIVERED
    assert run.relay.commands() == ["bind_transceiver", "submit_sm", "unbind"]
    submit = pdu.read_short_message(run.relay.requests[1])
    assert (submit.destination_addr, submit.dest_ton, submit.registered_delivery) == (
        b"447700900123",
        1,
        1,
    )
    assert (submit.data_coding, submit.short_message) == (0, b"hello")
    # the receipt was answered deliver_sm_resp ESME_ROK
    assert [pdu.header(a)[1:3] for a in run.relay.answers] == [
        (CommandId.deliver_sm | pdu.RESPONSE_BIT, 0)
    ]
    out = run.out.getvalue()
    assert "submit_sm_resp: ESME_ROK, message id ID1" in out
    assert "receipt for ID1: DELIVRD" in out


def test_the_bind_carries_the_account() -> None:
    run = Run("--system-id", "app1", "--password", "pw", "hi").start()
    run.advance()
    bind = pdu.read_bind(run.relay.requests[0])
    assert (bind.kind, bind.system_id, bind.password) == ("transceiver", "app1", "pw")


@pytest.mark.parametrize("stat", ["UNDELIV", "EXPIRED", "REJECTD"])
def test_another_final_stat_exits_1(stat: str) -> None:
    run = Run("hello")
    run.relay.stat = stat
    run.start().advance()
    assert run.code == send.NOT_DELIVERED
    assert f"receipt for ID1: {stat}" in run.out.getvalue()
    assert run.relay.commands()[-1] == "unbind"


def test_a_refused_submit_exits_1_with_its_status_name() -> None:
    run = Run("hello")
    run.relay.submit_statuses.append(Status.ESME_RSUBMITFAIL)
    run.start().advance()
    assert run.code == send.NOT_DELIVERED
    assert "submit_sm_resp: ESME_RSUBMITFAIL" in run.out.getvalue()
    assert run.relay.commands() == ["bind_transceiver", "submit_sm", "unbind"]


def test_a_refused_bind_is_a_failure() -> None:
    run = Run("hello")
    run.relay.bind_status = Status.ESME_RINVPASWD
    run.start().advance()
    assert run.error == "bind refused by 127.0.0.1:2775: ESME_RINVPASWD"
    assert run.relay.commands() == ["bind_transceiver"]


def test_no_connection_is_a_failure() -> None:
    clock = Clock()
    options = send.parse_args(["--to", "1", "hi"])
    outcome: list[Any] = []

    def refuse(connection: SmppConnection) -> Deferred[SmppConnection]:
        return fail(ConnectionRefusedError("111: Connection refused"))

    ensureDeferred(send.send(clock, options, refuse, io.StringIO())).addBoth(outcome.append)
    assert isinstance(outcome[0], Failure)
    assert str(outcome[0].value).startswith("cannot connect to 127.0.0.1:2775: ")


def test_no_receipt_in_time_is_a_failure_after_a_countdown() -> None:
    run = Run("hello", "--timeout", "30")
    run.relay.stat = None
    run.start().advance()
    for _ in range(29):
        run.advance(1)
    assert not run.outcome
    run.advance(1)
    assert run.error == "no receipt within 30 s"
    lines = run.out.getvalue().splitlines()
    assert [line for line in lines if line.startswith("waiting")] == [
        "waiting for the receipt: 30 s left",
        "waiting for the receipt: 20 s left",
        "waiting for the receipt: 10 s left",
    ]


def test_the_countdown_is_updated_in_place_on_a_terminal() -> None:
    run = Run("hello", "--timeout", "3", out=Tty())
    run.relay.stat = None
    run.start().advance()
    run.advance(1)
    run.advance(1)
    run.advance(1)
    written = run.out.getvalue()
    assert "\rwaiting for the receipt:   3 s \x1b[K" in written
    assert "\rwaiting for the receipt:   1 s \x1b[K" in written
    assert written.endswith("\r\x1b[K")  # the countdown is wiped before the one-line error
    assert run.error == "no receipt within 3 s"


def test_a_late_receipt_within_the_timeout_is_delivered() -> None:
    run = Run("hello")
    run.relay.stat = None
    run.start().advance(12)
    submit = pdu.read_short_message(run.relay.requests[1])
    run.relay.later(run.relay.receipt(submit, b"OTHER", "UNDELIV"))  # not ours: ignored
    run.relay.later(run.relay.receipt(submit, b"ID1", "DELIVRD"))
    run.advance()
    assert run.code == send.DELIVERED


def test_enquire_link_is_answered_while_waiting() -> None:
    run = Run("hello")
    run.relay.stat = None
    run.start().advance(5)
    run.relay.later(pdu.build(CommandId.enquire_link, 77))
    run.advance()
    assert pdu.header(run.relay.answers[-1])[1:] == (CommandId.enquire_link_resp, 0, 77)


def test_the_relay_going_away_while_waiting_is_a_failure() -> None:
    run = Run("hello")
    run.relay.stat = None
    run.start().advance(5)
    assert run.relay.connection is not None
    run.relay.connection.connectionLost(Failure(ConnectionRefusedError()))
    run.advance()
    assert run.error == "the relay closed the connection before the receipt came"


def test_no_receipt_asked_exits_0_on_esme_rok() -> None:
    run = Run("hello", "--no-receipt").start()
    run.advance()
    assert run.code == send.DELIVERED
    assert pdu.read_short_message(run.relay.requests[1]).registered_delivery == 0
    assert run.relay.commands() == ["bind_transceiver", "submit_sm", "unbind"]


def test_every_part_of_a_long_message_must_be_delivered() -> None:
    run = Run("a" * 200).start()
    run.advance()
    assert run.code == send.DELIVERED
    assert run.relay.commands() == ["bind_transceiver", "submit_sm", "submit_sm", "unbind"]
    out = run.out.getvalue()
    assert "part 1/2 submit_sm_resp: ESME_ROK, message id ID1" in out
    assert "receipt for ID2: DELIVRD" in out


def test_a_long_message_with_one_part_undelivered_exits_1() -> None:
    run = Run("a" * 200)
    run.relay.stat = None
    run.start().advance()
    parts = [pdu.read_short_message(frame) for frame in run.relay.requests[1:]]
    run.relay.later(run.relay.receipt(parts[0], b"ID1", "DELIVRD"))
    run.advance()
    assert not run.outcome  # part 2's receipt is still due
    run.relay.later(run.relay.receipt(parts[1], b"ID2", "UNDELIV"))
    run.advance()
    assert run.code == send.NOT_DELIVERED


def test_a_text_the_coding_cannot_carry_is_a_failure_before_connecting() -> None:
    run = Run("☃", "--coding", "latin1").start()
    assert run.error == "the text has a character --coding latin1 cannot carry"
    assert run.relay.connection is None
