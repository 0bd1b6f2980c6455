"""submit_multi through the real session, relay, rules and router (StringTransport, Clock).

The PDUs are packed here by hand from SMPP 3.4 section 4.5, not with the relay's codec.
"""

from __future__ import annotations

import struct

from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.pdu import CommandId, Status

from .fakes import Relayed, frames_of, receipt

SME, LIST = 1, 2
A, B, C = b"447700900001", b"447700900002", b"447700900003"


def dest(address: bytes, ton: int = 1, npi: int = 1) -> bytes:
    """An SME dest_address: dest_flag 1, ton, npi, destination_addr."""
    return bytes((SME, ton, npi)) + address + b"\0"


def dl(name: bytes) -> bytes:
    """A distribution list dest_address: dest_flag 2, dl_name."""
    return bytes((LIST,)) + name + b"\0"


def multi(
    sequence: int,
    dests: list[bytes],
    text: bytes = b"hello all",
    registered_delivery: int = 1,
    esm_class: int = 0,
    count: int | None = None,
) -> bytes:
    """A submit_multi from SHOP (alphanumeric) with ``dests`` (3.4 section 4.5.1)."""
    body = (
        b"\0"  # service_type
        + bytes((5, 0))
        + b"SHOP\0"
        + bytes((len(dests) if count is None else count,))
        + b"".join(dests)
        + bytes((esm_class, 0, 0))  # esm_class, protocol_id, priority_flag
        + b"\0\0"  # schedule_delivery_time, validity_period
        + bytes((registered_delivery, 0, 0, 0, len(text)))
        + text
    )
    return struct.pack("!IIII", 16 + len(body), CommandId.submit_multi, 0, sequence) + body


def read_resp(frame: bytes) -> tuple[int, int, bytes, list[tuple[int, int, bytes, int]]]:
    """(status, sequence, message_id, unsuccess_sme) of a submit_multi_resp (4.5.2)."""
    _, command_id, status, sequence = struct.unpack_from("!IIII", frame)
    assert command_id == CommandId.submit_multi_resp
    if len(frame) == 16:
        return status, sequence, b"", []
    end = frame.index(b"\0", 16)
    message_id = frame[16:end]
    count = frame[end + 1]
    pos = end + 2
    unsuccess = []
    for _ in range(count):
        ton, npi = frame[pos], frame[pos + 1]
        stop = frame.index(b"\0", pos + 2)
        (error,) = struct.unpack_from("!I", frame, stop + 1)
        unsuccess.append((ton, npi, frame[pos + 2 : stop], error))
        pos = stop + 5
    assert pos == len(frame)
    return status, sequence, message_id, unsuccess


def accept(app: Relayed, index: int, message_id: bytes) -> None:
    app.pool.answers[index].callback(pdu.submit_sm_resp(0, Status.ESME_ROK, message_id))


def test_each_address_is_its_own_submit_sm_and_a_list_is_refused_with_invdlname() -> None:
    """Two addresses and a list: two submit_sm upstream (the app's fields, each with its own
    destination); one answer with the relay's id and the list in unsuccess_sme."""
    app = Relayed()
    app.connection.dataReceived(multi(7, [dest(A), dl(b"friends"), dest(B, 2, 1)]))
    assert [pdu.read_short_message(f).destination_addr for f in app.pool.frames] == [A, B]
    first, second = (pdu.read_short_message(f) for f in app.pool.frames)
    assert (first.dest_ton, first.dest_npi, second.dest_ton, second.dest_npi) == (1, 1, 2, 1)
    assert first._replace(dest_ton=2, destination_addr=B) == second
    assert (first.source_addr, first.short_message, first.registered_delivery) == (
        b"SHOP",
        b"hello all",
        1,
    )
    assert app.written() == b""  # nothing until every address is answered

    accept(app, 0, b"OP1")
    accept(app, 1, b"OP2")
    status, sequence, message_id, unsuccess = read_resp(app.written())
    assert (status, sequence) == (Status.ESME_ROK, 7)
    assert message_id.startswith(b"R")
    assert message_id not in (b"OP1", b"OP2")
    assert unsuccess == [(0, 0, b"friends", Status.ESME_RINVDLNAME)]


def test_receipts_of_every_address_come_home_under_the_multi_id() -> None:
    """The operator's receipts for each fanned-out message carry the id the app was given."""
    app = Relayed()
    app.connection.dataReceived(multi(1, [dest(A), dest(B)]))
    accept(app, 0, b"OP1")
    accept(app, 1, b"OP2")
    _, _, multi_id, _ = read_resp(app.written())

    app.router.route(receipt(b"OP2"))
    app.router.route(receipt(b"OP1"))
    delivered = frames_of(app.written())
    assert len(delivered) == 2
    for frame in delivered:
        message = pdu.read_short_message(frame)
        assert message.tlv(pdu.Tag.receipted_message_id) == multi_id + b"\0"
        assert message.short_message.startswith(b"id:" + multi_id + b" ")


def test_the_rules_and_the_operator_refusals_are_listed_with_their_status() -> None:
    """A bad address (the relay's check), an address listed twice (dedup: each number is its
    own message for the rules) and one the operator refuses; the fourth goes through."""
    app = Relayed()
    app.connection.dataReceived(multi(3, [dest(A), dest(b"12ab"), dest(A), dest(B), dest(C)]))
    # The bad one never reaches the operator; the second A waits for the first (in flight).
    assert len(app.pool.frames) == 3
    accept(app, 0, b"OP1")
    app.pool.answers[1].callback(pdu.submit_sm_resp(0, Status.ESME_RINVDSTADR))
    accept(app, 2, b"OP3")
    status, _, message_id, unsuccess = read_resp(app.written())
    assert status == Status.ESME_ROK
    assert message_id
    assert unsuccess == [
        (1, 1, b"12ab", Status.ESME_RINVDSTADR),
        (1, 1, A, 0x45),  # the dedup rule's status
        (1, 1, B, Status.ESME_RINVDSTADR),
    ]


def test_two_numbers_are_two_messages_for_the_rules() -> None:
    """After a multi to A and B, the same text to A alone is a duplicate; to C it is not."""
    app = Relayed()
    app.connection.dataReceived(multi(1, [dest(A), dest(B)], text=b"once"))
    accept(app, 0, b"OP1")
    accept(app, 1, b"OP2")
    app.written()
    app.connection.dataReceived(multi(2, [dest(A), dest(C)], text=b"once"))
    assert len(app.pool.frames) == 3
    accept(app, 2, b"OP3")
    _, _, _, unsuccess = read_resp(app.written())
    assert unsuccess == [(1, 1, A, 0x45)]


def test_every_address_refused_with_one_status_answers_that_status() -> None:
    """Nothing sent: the status all share (the app retries a throttled multi whole)."""
    app = Relayed()
    app.connection.dataReceived(multi(4, [dest(A), dest(B)]))
    for answer in app.pool.answers:
        answer.callback(pdu.submit_sm_resp(0, Status.ESME_RTHROTTLED))
    status, sequence, message_id, unsuccess = read_resp(app.written())
    assert (status, sequence, message_id) == (Status.ESME_RTHROTTLED, 4, b"")
    assert unsuccess == [(1, 1, A, Status.ESME_RTHROTTLED), (1, 1, B, Status.ESME_RTHROTTLED)]


def test_every_address_refused_for_different_reasons_answers_submitfail() -> None:
    app = Relayed()
    app.connection.dataReceived(multi(5, [dest(A), dl(b"staff")]))
    app.pool.answers[0].errback(Failure(ConnectionError("operator gone")))
    status, _, message_id, unsuccess = read_resp(app.written())
    assert (status, message_id) == (Status.ESME_RSUBMITFAIL, b"")
    assert unsuccess == [
        (1, 1, A, Status.ESME_RSYSERR),
        (0, 0, b"staff", Status.ESME_RINVDLNAME),
    ]


def test_no_destination_too_many_or_a_bad_flag_refuse_the_whole_pdu() -> None:
    """number_of_dests 0 or 255: ESME_RINVNUMDESTS; dest_flag 3: ESME_RINVDESTFLAG; no body,
    nothing sent."""
    app = Relayed()
    app.connection.dataReceived(multi(1, []))
    app.connection.dataReceived(multi(2, [dest(A)] * 255))
    app.connection.dataReceived(multi(3, [b"\x03" + A + b"\0"]))
    # Says 2, carries 1: esm_class (0) stands where the second dest_flag should.
    app.connection.dataReceived(multi(4, [dest(A)], count=2))
    cut = b"\0\x05\x00SHOP\0\x01\x01\x01"  # ends inside the first dest_address
    app.connection.dataReceived(pdu.build(CommandId.submit_multi, 5, cut))
    assert app.pool.frames == []
    assert frames_of(app.written()) == [
        pdu.build(CommandId.submit_multi_resp, 1, status=Status.ESME_RINVNUMDESTS),
        pdu.build(CommandId.submit_multi_resp, 2, status=Status.ESME_RINVNUMDESTS),
        pdu.build(CommandId.submit_multi_resp, 3, status=Status.ESME_RINVDESTFLAG),
        pdu.build(CommandId.submit_multi_resp, 4, status=Status.ESME_RINVDESTFLAG),
        pdu.build(CommandId.submit_multi_resp, 5, status=Status.ESME_RINVCMDLEN),
    ]


def test_254_addresses_are_carried() -> None:
    app = Relayed()
    addresses = [b"4477009%05d" % i for i in range(254)]
    app.connection.dataReceived(multi(1, [dest(a) for a in addresses], registered_delivery=0))
    assert len(app.pool.frames) == 254
    for index in range(254):
        accept(app, index, b"OP%d" % index)
    status, _, _, unsuccess = read_resp(app.written())
    assert (status, unsuccess) == (Status.ESME_ROK, [])


def udh_part(reference: int, total: int, sequence: int, text: bytes) -> bytes:
    return bytes((5, 0, 3, reference, total, sequence)) + text


def test_a_concatenated_multi_goes_part_by_part_and_receipts_carry_each_parts_id() -> None:
    """Part 1 to A and B is held for each (answered with a relay id); part 2 completes both
    messages, each sent whole; each part's receipt comes home under its own multi's id."""
    app = Relayed()
    app.connection.dataReceived(
        multi(1, [dest(A), dest(B)], udh_part(9, 2, 1, b"first half "), esm_class=0x40)
    )
    assert app.pool.frames == []
    first_status, _, first_id, first_unsuccess = read_resp(app.written())
    assert (first_status, first_unsuccess) == (Status.ESME_ROK, [])

    app.connection.dataReceived(
        multi(2, [dest(A), dest(B)], udh_part(9, 2, 2, b"second half"), esm_class=0x40)
    )
    assert [[pdu.read_short_message(f).destination_addr for f in b] for b in app.pool.batches] == [
        [A, A],
        [B, B],
    ]
    for index, batch in enumerate(app.pool.batch_answers):
        batch.callback(
            [pdu.submit_sm_resp(0, Status.ESME_ROK, b"OP%d-%d" % (index, part)) for part in (1, 2)]
        )
    second_status, _, second_id, _ = read_resp(app.written())
    assert second_status == Status.ESME_ROK
    assert second_id != first_id

    for op_id in (b"OP0-1", b"OP0-2", b"OP1-1", b"OP1-2"):
        app.router.route(receipt(op_id))
    ids = [
        pdu.read_short_message(f).tlv(pdu.Tag.receipted_message_id)
        for f in frames_of(app.written())
    ]
    assert ids == [first_id + b"\0", second_id + b"\0"] * 2
