"""Bad input from an app, end to end through one app session: the exact answer, whether the
session stays open, and what reached the operator (nothing, for a rejection).

The session, connection, relay, rules and router are the real ones (reliability.md section 5,
groups F, V and E); only the upstream pool is a fake that records what it is given.
"""

from __future__ import annotations

import struct

import pytest
from twisted.internet.task import Clock

from smpprelay import pdu
from smpprelay.auth import make_portal
from smpprelay.config import Account, DedupRule, FiltersConfig, FloodRule
from smpprelay.downstream import DownstreamSession, SessionRegistry
from smpprelay.filters import build_chain
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status
from smpprelay.relay import Relay
from smpprelay.router import Router
from smpprelay.store.memory import HeldDeliveries, ReceiptRoutes
from tests.support import app_connection, frames_of, submit_sm
from tests.test_relay import FakePool

MAX_PDU = 70_000
SEQ = 9


class Relayed:
    """A bound transceiver (or, with ``bind=False``, a fresh connection) in front of the real
    relay and rules; the operator is a FakePool."""

    def __init__(
        self, bind: bool = True, max_pdu: int = MAX_PDU, metrics: Metrics | None = None
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000.0)
        self.metrics = metrics if metrics is not None else Metrics()
        self.pool = FakePool()
        registry = SessionRegistry(self.metrics)
        router = Router(
            self.clock,
            self.metrics,
            ReceiptRoutes(3600.0, 100),
            HeldDeliveries(3600.0, 100),
            {},
            registry.receivers,
            5.0,
        )
        # The default rules, with small tables: their size is not what is tested here.
        rules = FiltersConfig(dedup=DedupRule(max_entries=1000), flood=FloodRule(max_entries=1000))
        chain = build_chain(rules, False, self.metrics)
        relay = Relay(self.pool, router, self.metrics, self.clock, chain)  # type: ignore[arg-type]
        clients = {"app": Account(system_id="app", password="pw")}
        self.session = DownstreamSession(
            make_portal(clients), registry, relay.submit, self.clock, self.metrics, 10.0, 100
        )
        self.connection, self.transport = app_connection(
            self.session, self.clock, self.metrics, max_pdu=max_pdu, pdu_read=10.0
        )
        if bind:
            self.connection.dataReceived(pdu.bind_request("transceiver", 1, "app", "pw"))
            assert pdu.header(self.written())[2] == Status.ESME_ROK

    def written(self) -> bytes:
        data = bytes(self.transport.value())
        self.transport.clear()
        return data

    @property
    def open(self) -> bool:
        return not self.transport.disconnecting


def refused(status: int, sequence: int = SEQ) -> bytes:
    """A body-less submit_sm_resp, packed by hand."""
    return struct.pack("!IIII", 16, 0x80000004, status, sequence)


def fixed_length(frame: bytes) -> bytes:
    """The frame with command_length made right again after a hand edit."""
    return struct.pack("!I", len(frame)) + frame[4:]


def sm_length_says(declared: int, actual: bytes) -> bytes:
    """A submit whose sm_length byte says ``declared`` though ``actual`` follows."""
    frame = submit_sm(SEQ, short_message=actual)
    at = frame.rindex(bytes((len(actual),)) + actual)
    return frame[:at] + bytes((declared,)) + frame[at + 1 :]


def payload_running_past_the_end() -> bytes:
    frame = submit_sm(SEQ, short_message=b"", tlvs=((0x0424, b"abc"),))
    return frame[:-5] + b"\x01\x00abc"  # the TLV says 256 octets, 3 follow


SAR = ((0x020C, b"\x00\x01"), (0x020E, b"\x02"), (0x020F, b"\x01"))

# (case, the app's submit_sm, the status it is answered)
REFUSED = [
    # V: every mandatory field against its size and meaning
    ("V1 sm_length 255", submit_sm(SEQ, short_message=b"a" * 255), Status.ESME_RINVMSGLEN),
    ("V2 sm_length short of the text", sm_length_says(10, b"x" * 12), Status.ESME_RINVOPTPARSTREAM),
    ("V1b sm_length past the PDU", sm_length_says(200, b"hello"), Status.ESME_RINVMSGLEN),
    (
        "V3 short_message and message_payload",
        submit_sm(SEQ, tlvs=((0x0424, b"more"),)),
        Status.ESME_RINVPARLEN,
    ),
    ("V4 TLV past the PDU", payload_running_past_the_end(), Status.ESME_RINVOPTPARSTREAM),
    (
        "V5 sar_msg_ref_num of 1 octet",
        submit_sm(SEQ, tlvs=((0x020C, b"\x01"), *SAR[1:])),
        Status.ESME_RINVPARLEN,
    ),
    ("V6 sar set incomplete", submit_sm(SEQ, tlvs=SAR[1:]), Status.ESME_RMISSINGOPTPARAM),
    (
        "V5b source_port of 3 octets",
        submit_sm(SEQ, tlvs=((0x020A, b"\x00\x00\x01"),)),
        Status.ESME_RINVPARLEN,
    ),
    ("V8 empty destination", submit_sm(SEQ, destination_addr=b""), Status.ESME_RINVDSTADR),
    (
        "V8 letters to TON 1",
        submit_sm(SEQ, destination_addr=b"4477O0900123"),
        Status.ESME_RINVDSTADR,
    ),
    ("V8 destination of 21", submit_sm(SEQ, destination_addr=b"1" * 21), Status.ESME_RINVDSTADR),
    ("V9 source of 21", submit_sm(SEQ, source_addr=b"1" * 21), Status.ESME_RINVSRCADR),
    ("V9 alphanumeric of 12", submit_sm(SEQ, source_addr=b"MyBrandIsLng"), Status.ESME_RINVSRCADR),
    (
        "V9 control octet in source",
        submit_sm(SEQ, source_ton=0, source_addr=b"ab\x07"),
        Status.ESME_RINVSRCADR,
    ),
    ("source TON 7", submit_sm(SEQ, source_ton=7), Status.ESME_RINVSRCTON),
    ("source NPI 2", submit_sm(SEQ, source_npi=2), Status.ESME_RINVSRCNPI),
    ("destination TON 9", submit_sm(SEQ, dest_ton=9), Status.ESME_RINVDSTTON),
    ("destination NPI 5", submit_sm(SEQ, dest_npi=5), Status.ESME_RINVDSTNPI),
    ("V10 esm_class receipt", submit_sm(SEQ, esm_class=0x04), Status.ESME_RINVESMCLASS),
    ("V10 esm_class notification", submit_sm(SEQ, esm_class=0x20), Status.ESME_RINVESMCLASS),
    (
        "V11 registered_delivery 3",
        submit_sm(SEQ, registered_delivery=0x03),
        Status.ESME_RINVREGDLVFLG,
    ),
    ("V11 reserved bits", submit_sm(SEQ, registered_delivery=0x21), Status.ESME_RINVREGDLVFLG),
    (
        "V12 schedule of 10",
        submit_sm(SEQ, schedule_delivery_time=b"2401011200"),
        Status.ESME_RINVSCHED,
    ),
    (
        "V12 schedule month 13",
        submit_sm(SEQ, schedule_delivery_time=b"241301120000004+"),
        Status.ESME_RINVSCHED,
    ),
    (
        "V12 schedule too long",
        submit_sm(SEQ, schedule_delivery_time=b"2401011200000040+"),
        Status.ESME_RINVSCHED,
    ),
    (
        "V12 validity bad p",
        submit_sm(SEQ, validity_period=b"240101120000000X"),
        Status.ESME_RINVEXPIRY,
    ),
    (
        "V12 validity quarter 49",
        submit_sm(SEQ, validity_period=b"240101120000049+"),
        Status.ESME_RINVEXPIRY,
    ),
    ("V13 service_type of 7", submit_sm(SEQ, service_type=b"ABCDEFG"), Status.ESME_RINVSERTYP),
    ("V13 service_type not text", submit_sm(SEQ, service_type=b"\x01"), Status.ESME_RINVSERTYP),
    ("V14 priority_flag 9", submit_sm(SEQ, priority_flag=9), Status.ESME_RINVPRTFLG),
    ("replace_if_present 2", submit_sm(SEQ, replace_if_present=2), Status.ESME_RINVREPFLAG),
    # F: framing is intact but the body is not
    (
        "F9 3 stray octets",
        fixed_length(submit_sm(SEQ) + b"\x00\x01\x02"),
        Status.ESME_RINVOPTPARSTREAM,
    ),
    (
        "F10 source without NUL",
        pdu.build(CommandId.submit_sm, SEQ, b"\0\x05\x00MyBrand"),
        Status.ESME_RINVSRCADR,
    ),
    (
        "F10 fields cut short",
        pdu.build(CommandId.submit_sm, SEQ, b"\0\x05\x00A\0\x01\x01447\0\x00"),
        Status.ESME_RINVCMDLEN,
    ),
    # E: encoding (the rule's own tests are in tests/filters/test_encoding.py)
    (
        "E1 odd UCS-2",
        submit_sm(SEQ, data_coding=8, short_message=b"\x00a\x00b\x00"),
        Status.ESME_RINVMSGLEN,
    ),
    ("E2 GSM octet 0x80", submit_sm(SEQ, short_message=b"ab\x80"), Status.ESME_RSUBMITFAIL),
    ("E3 GSM dangling escape", submit_sm(SEQ, short_message=b"ab\x1b"), Status.ESME_RSUBMITFAIL),
    ("E5 data_coding 5", submit_sm(SEQ, data_coding=5), Status.ESME_RSUBMITFAIL),
    ("E5 data_coding 0xC0", submit_sm(SEQ, data_coding=0xC0), Status.ESME_RSUBMITFAIL),
    (
        "E6 UDH longer than the text",
        submit_sm(SEQ, esm_class=0x40, short_message=b"\x20" + b"a" * 9),
        Status.ESME_RINVMSGLEN,
    ),
    (
        "E7 lone surrogate",
        submit_sm(SEQ, data_coding=8, short_message=b"\xd8\x00\x00a"),
        Status.ESME_RSUBMITFAIL,
    ),
]


@pytest.mark.parametrize(("frame", "status"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_bad_submit_is_refused_with_its_status_and_nothing_goes_upstream(
    frame: bytes, status: int
) -> None:
    h = Relayed()
    h.connection.dataReceived(frame)
    assert h.written() == refused(status)
    assert h.open
    assert h.pool.frames == []
    # The session still works.
    h.connection.dataReceived(submit_sm(SEQ + 1))
    assert len(h.pool.frames) == 1


# (case, the app's submit_sm, what the operator must receive: None means the same bytes)
ACCEPTED = [
    ("V7 vendor TLV", submit_sm(SEQ, tlvs=((0x1403, b"0123456789"),)), None),
    ("unknown standard-range TLV", submit_sm(SEQ, tlvs=((0x0777, b"\x01\x02\x03"),)), None),
    (
        "message_payload alone",
        submit_sm(SEQ, short_message=b"", tlvs=((0x0424, b"x" * 300),)),
        None,
    ),
    ("empty source", submit_sm(SEQ, source_ton=0, source_npi=0, source_addr=b""), None),
    ("international with +", submit_sm(SEQ, destination_addr=b"+447700900123"), None),
    (
        "absolute times",
        submit_sm(
            SEQ, schedule_delivery_time=b"991231235959948-", validity_period=b"000229000000000+"
        ),
        None,
    ),
    ("relative validity", submit_sm(SEQ, validity_period=b"000001000000000R"), None),
    (
        "esm_class store-and-forward, manual ack, UDHI and reply path",
        submit_sm(SEQ, esm_class=0xD3, short_message=b"\x00hello"),
        None,
    ),
    (
        "registered_delivery on failure, SME acks, intermediate",
        submit_sm(SEQ, registered_delivery=0x1E),
        None,
    ),
    ("priority 3, replace 1", submit_sm(SEQ, priority_flag=3, replace_if_present=1), None),
    ("alert_on_message_delivery (empty)", submit_sm(SEQ, tlvs=((0x130C, b""),)), None),
    (
        "E4 Latin-1 under 3 goes out as 8-bit 4",
        submit_sm(SEQ, data_coding=3, short_message="café".encode("latin-1")),
        submit_sm(SEQ, data_coding=4, short_message="café".encode("latin-1")),
    ),
]


@pytest.mark.parametrize(
    ("frame", "upstream"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_valid_submit_reaches_the_operator_byte_for_byte(
    frame: bytes, upstream: bytes | None
) -> None:
    h = Relayed()
    h.connection.dataReceived(frame)
    assert h.written() == b""
    assert h.pool.frames == [upstream if upstream is not None else frame]
    h.pool.answers[0].callback(pdu.submit_sm_resp(77, Status.ESME_ROK, b"OP1"))
    assert h.written() == pdu.submit_sm_resp(SEQ, Status.ESME_ROK, b"OP1")
    assert h.open


# --- framing through the whole stack ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "nack_sequence", "reason"),
    [
        (bytes.fromhex("00000008 00000015 00000000 00000001"), 1, "too_short"),
        (bytes.fromhex("7fffffff 00000004 00000000 0000002a") + b"\xff" * 65536, 42, "too_long"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", int.from_bytes(b".1\r\n", "big"), "too_long"),
        # a TLS ClientHello: its first four octets 16 03 01 02 read as a length of 369 M
        (bytes.fromhex("160301020001000001fc0303") + b"\x00" * 32, 0, "too_long"),
    ],
    ids=["F1 length 8", "F2 length 2^31 and junk", "F3 HTTP", "F3 TLS"],
)
def test_bad_length_is_nacked_and_closed_before_anything_is_relayed(
    data: bytes, nack_sequence: int, reason: str
) -> None:
    h = Relayed()
    h.connection.dataReceived(submit_sm(SEQ)[:3])  # what came first in the same stream
    h.connection.dataReceived(submit_sm(SEQ)[3:] + data)
    # The whole PDU before the bad length is still relayed; then the nack, and the close.
    assert frames_of(h.written()) == [pdu.generic_nack(nack_sequence, Status.ESME_RINVCMDLEN)]
    assert not h.open
    assert len(h.pool.frames) == 1
    assert h.connection._framer.buffered == 0
    sample = h.metrics.registry.get_sample_value(
        "smpprelay_framing_errors_total", {"side": "downstream", "reason": reason}
    )
    assert sample == 1


def test_split_into_single_bytes_then_three_in_one_write() -> None:
    """F6: one submit a byte at a time, then three in one write: four relayed, four answered."""
    h = Relayed()
    first = submit_sm(1, short_message=b"one")
    for i in range(len(first)):
        h.connection.dataReceived(first[i : i + 1])
    h.connection.dataReceived(b"".join(submit_sm(n, short_message=b"%d" % n) for n in (2, 3, 4)))
    assert len(h.pool.frames) == 4
    for n, answer in enumerate(h.pool.answers, 1):
        answer.callback(pdu.submit_sm_resp(0, Status.ESME_ROK, b"M%d" % n))
    assert frames_of(h.written()) == [
        pdu.submit_sm_resp(n, Status.ESME_ROK, b"M%d" % n) for n in (1, 2, 3, 4)
    ]
    assert h.open
