"""Tests for smpprelay.receipts: which submit a receipt is about, rewriting its id, making one."""

from __future__ import annotations

import pytest

from smpprelay.receipts import (
    MessageIdFormat,
    delivery_receipt,
    id_bases,
    normalise_message_id,
    receipt_id,
    replace_receipt_id,
)
from smpprelay.smpp.constants import MESSAGE_STATES, CommandId, Tag
from smpprelay.smpp.framing import header
from smpprelay.smpp.short_message import read_short_message
from tests.fakes import deliver_sm, short_message, submit_sm

VENDOR_TAG = 0x1403


def test_receipt_id_prefers_the_tlv_and_strips_its_nul() -> None:
    """receipted_message_id wins over the text's id: and loses its NUL."""
    message = short_message(
        esm_class=0x04,
        short_message=b"id:TEXTID sub:001 dlvrd:001 stat:DELIVRD err:000 text:",
        tlvs=((Tag.message_state, b"\x02"), (Tag.receipted_message_id, b"TLVID\x00")),
    )
    assert receipt_id(message) == b"TLVID"


def test_receipt_id_from_text() -> None:
    """Without the TLV, the id comes from the text's id: field (any case)."""
    message = short_message(
        esm_class=0x04, short_message=b"ID:0a1B2c sub:001 dlvrd:001 stat:DELIVRD err:000"
    )
    assert receipt_id(message) == b"0a1B2c"
    payload = short_message(short_message=b"", tlvs=((Tag.message_payload, b"id:77 stat:UNDELIV"),))
    assert receipt_id(payload) == b"77"


def test_receipt_id_none_without_id() -> None:
    """A message with neither the TLV nor an id: field has no receipt id."""
    assert receipt_id(short_message(short_message=b"stat:DELIVRD err:000")) is None
    assert receipt_id(short_message(short_message=b"paid:123")) is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"abc123", "ABC123"),
        (b"00ABC123", "ABC123"),
        (b"0000", "0"),
        (b" 0f ", "F"),
        (b"12", "12"),
    ],
)
def test_normalise_message_id(raw: bytes, normal: str) -> None:
    """Case, surrounding spaces and leading zeros do not change which message is meant."""
    assert normalise_message_id(raw) == normal


def test_normalise_message_id_keeps_inner_zeros() -> None:
    """Zeros that are not leading still tell ids apart."""
    assert normalise_message_id(b"100") != normalise_message_id(b"1")


def test_replace_receipt_id_rewrites_tlv_and_text_only() -> None:
    """Both id places change to the new (longer) id; every other field stays as sent."""
    text = b"id:op-7 sub:001 dlvrd:001 submit date:2501011200 stat:DELIVRD err:000 text:id:op-7"
    tlvs = (
        (Tag.message_state, b"\x02"),
        (Tag.receipted_message_id, b"op-7\x00"),
        (VENDOR_TAG, b"\xde\xad"),
    )
    frame = deliver_sm(sequence=99, esm_class=0x04, short_message=text, tlvs=tlvs)
    message = read_short_message(frame)

    rewritten = replace_receipt_id(frame, message, b"op-7", b"relay-000123")

    assert header(rewritten) == (len(rewritten), CommandId.deliver_sm, 0, 99)
    new_text = b"id:relay-000123" + text[len(b"id:op-7") :]  # only the first id: is the id
    expected = message._replace(
        short_message=new_text,
        tlvs=(
            (Tag.message_state, b"\x02"),
            (Tag.receipted_message_id, b"relay-000123\x00"),
            (VENDOR_TAG, b"\xde\xad"),
        ),
    )
    assert read_short_message(rewritten) == expected
    assert receipt_id(read_short_message(rewritten)) == b"relay-000123"


def test_replace_receipt_id_in_message_payload() -> None:
    """A receipt text carried in message_payload is rewritten there."""
    frame = deliver_sm(
        esm_class=0x04,
        short_message=b"",
        tlvs=((Tag.message_payload, b"id:ABC stat:DELIVRD"),),
    )
    rewritten = replace_receipt_id(frame, read_short_message(frame), b"abc", b"X1")
    assert read_short_message(rewritten).tlvs == ((Tag.message_payload, b"id:X1 stat:DELIVRD"),)


def test_replace_receipt_id_leaves_other_ids_alone() -> None:
    """A text whose id: is another id is not touched."""
    frame = deliver_sm(esm_class=0x04, short_message=b"id:OTHER stat:DELIVRD")
    rewritten = replace_receipt_id(frame, read_short_message(frame), b"OLD", b"NEW")
    assert rewritten == frame


def test_delivery_receipt_goes_back_to_the_source_about_the_id() -> None:
    """A made receipt travels destination to source and names the id in its TLVs and text."""
    message = read_short_message(submit_sm(data_coding=0, short_message=b"hello there"))
    frame = delivery_receipt(message, b"R-1", "UNDELIV", 0, 60)
    receipt = read_short_message(frame)
    assert header(frame)[1] == CommandId.deliver_sm
    assert (receipt.source_addr, receipt.destination_addr) == (b"447700900123", b"MyBrand")
    assert receipt.esm_class == 0x04
    assert receipt_id(receipt) == b"R-1"
    assert receipt.tlv(Tag.message_state) == bytes((MESSAGE_STATES["UNDELIV"],))
    assert receipt.short_message == (
        b"id:R-1 sub:001 dlvrd:000 submit date:7001010000 done date:7001010001"
        b" stat:UNDELIV err:000 text:hello there"
    )


@pytest.mark.parametrize(
    ("resp_id", "receipt_id", "form"),
    [
        (b"A0000001", b"2684354561", "decimal"),
        (b"00a0000001", b"2684354561", "decimal"),
        (b"2684354561", b"A0000001", "hex"),
        (b"2684354561", b"a0000001", "hex"),
    ],
)
def test_ids_in_either_base_meet_under_their_format(
    resp_id: bytes, receipt_id: bytes, form: MessageIdFormat
) -> None:
    """upstream.message_id_format: both ids become one number, so hex and decimal meet."""
    resp_base, receipt_base = id_bases(form)
    assert normalise_message_id(resp_id, resp_base) == normalise_message_id(
        receipt_id, receipt_base
    )
    assert normalise_message_id(resp_id) != normalise_message_id(receipt_id)  # as-is: apart


def test_an_id_that_is_no_number_in_its_base_is_compared_as_it_is() -> None:
    """Not a number in the base (a UUID, a sign, a space): the as-is form, never an error."""
    assert normalise_message_id(b"abc-1", 10) == normalise_message_id(b"ABC-1")
    assert normalise_message_id(b"0xyz", 16) == "XYZ"
    assert normalise_message_id(b"-5", 10) == "-5"
    assert normalise_message_id(b"1 2", 10) == "1 2"
    assert id_bases("as-is") == (None, None)
