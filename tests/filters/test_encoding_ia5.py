"""The encoding rule and data_coding 1 (IA5/ASCII): accepted and transcoded like ISO text."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from smpprelay import pdu
from smpprelay.config import EncodingRule, FiltersConfig
from smpprelay.filters import build_chain
from smpprelay.filters.base import FilterChain
from smpprelay.filters.encoding import EncodingFilter, gsm_encode
from smpprelay.message import ACCEPT, Message, read_message
from smpprelay.metrics import Metrics
from tests.fakes import submit_sm
from tests.filters.test_encoding import VENDOR, Rule, passed_on

SEQUENCE = 0x1234
RSUBMITFAIL = 0x45
# Every printable ASCII character but the backtick, which GSM 03.38 lacks.
PRINTABLE_GSM = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x60)


def make(**fields: Any) -> Message:
    """A data_coding 1 submit as the rules see it."""
    return read_message("app1", submit_sm(SEQUENCE, data_coding=1, **fields))


def udh(reference: int, total: int, sequence: int) -> bytes:
    return bytes((5, 0, 3, reference, total, sequence))


def part(total: int, sequence: int, text: bytes, reference: int = 0x42) -> Message:
    """Part ``sequence`` of ``total`` of a dc 1 message, with a relay id as the relay gives."""
    message = make(esm_class=0x40, short_message=udh(reference, total, sequence) + text)
    message.app_message_id = b"R%d" % sequence
    return message


class Chain:
    """The real encoding and concat rules, built as the relay builds them."""

    def __init__(self, upstream_iso: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.chain: FilterChain = build_chain(FiltersConfig(), upstream_iso, Metrics(self.registry))

    def send(self, *parts: Message) -> Message:
        """Check every part; all but the last are held, the last is glued and passed on."""
        for held in parts[:-1]:
            assert self.chain.check(held, 0.0).action == "hold"
        verdict = self.chain.check(parts[-1], 0.0)
        assert verdict.action == "accept", verdict
        assert verdict.message is not None
        return verdict.message

    def billed(self, data_coding: int) -> float:
        value = self.registry.get_sample_value(
            "smpprelay_parts_billed_total", {"data_coding": str(data_coding)}
        )
        return 0.0 if value is None else value


# --- a single message -----------------------------------------------------------------------


def test_plain_ascii_becomes_gsm_under_0() -> None:
    """What node-smpp sends for "Hello world": GSM under 0, every other byte kept."""
    message = make(short_message=b"Hello world", tlvs=(VENDOR,))
    out = passed_on(Rule().filter.check(message, 0.0), message)
    assert out.frame == submit_sm(
        SEQUENCE, data_coding=0, short_message=b"Hello world", tlvs=(VENDOR,)
    )
    assert (out.data_coding, out.content) == (0, b"Hello world")


def test_every_printable_character_but_the_backtick_has_a_gsm_form() -> None:
    """'@', '$', '_' move to their GSM octets; '[', '{', '~' ... become escapes."""
    text = PRINTABLE_GSM.encode("ascii")
    out = passed_on(Rule().filter.check(make(short_message=text), 0.0), make(short_message=text))
    assert out.data_coding == 0
    assert out.content == gsm_encode(PRINTABLE_GSM)
    assert out.content != text


@pytest.mark.parametrize("text", [b"say `hi`", b"tab\there", b"bell\x07", b"del\x7f", b"nul\x00"])
def test_a_character_without_a_gsm_form_goes_as_the_same_octets_under_4(text: bytes) -> None:
    """As standard ISO-8859-1 (3) goes: the operator's 8-bit, lossless and no longer."""
    message = make(short_message=text)
    out = passed_on(Rule().filter.check(message, 0.0), message)
    assert out.frame == submit_sm(SEQUENCE, data_coding=4, short_message=text)


@pytest.mark.parametrize("text", [b"caf\xe9", b"\x80", b"ok\xff"])
def test_an_octet_above_0x7f_is_invalid_content(text: bytes) -> None:
    verdict = Rule().filter.check(make(short_message=text), 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == (
        "reject",
        RSUBMITFAIL,
        "invalid_ia5",
    )
    assert Rule(status=0x61).filter.check(make(short_message=text), 0.0).status == 0x61


def test_escapes_that_no_longer_fit_go_under_4() -> None:
    """254 octets of '[' would be 508 GSM octets: too long for short_message, so 4 (same)."""
    out = passed_on(Rule().filter.check(make(short_message=b"[" * 254), 0.0), make())
    assert (out.data_coding, out.content) == (4, b"[" * 254)
    fits = passed_on(Rule().filter.check(make(short_message=b"[" * 127), 0.0), make())
    assert (fits.data_coding, fits.content) == (0, b"\x1b<" * 127)


def test_payload_is_transcoded_in_place() -> None:
    payload = (pdu.Tag.message_payload, b"x" * 300)
    message = make(short_message=b"", tlvs=(payload,))
    out = passed_on(Rule().filter.check(message, 0.0), message)
    assert out.fields.tlv(pdu.Tag.message_payload) == b"x" * 300
    assert out.data_coding == 0


def test_an_iso_upstream_gets_the_same_octets_under_0() -> None:
    """The operator reads 0 as Latin-1 there, and ASCII is Latin-1: nothing to convert."""
    rule = Rule(upstream_iso=True)
    out = passed_on(rule.filter.check(make(short_message=b"a[b"), 0.0), make())
    assert (out.data_coding, out.content) == (0, b"a[b")
    tick = passed_on(rule.filter.check(make(short_message=b"a`b"), 0.0), make())
    assert (tick.data_coding, tick.content) == (4, b"a`b")


def test_allow_keeps_an_operator_that_takes_1_as_it_is() -> None:
    message = make(short_message=b"as is")
    assert Rule(allow=(1,)).filter.check(message, 0.0) == ACCEPT


def test_billed_as_the_coding_it_goes_under() -> None:
    """161 ASCII characters with GSM forms: 2 parts under 0; 141 with a backtick: 2 under 4.
    data_coding 1 itself never appears as a label."""
    rule = Rule()
    for text in (b"a" * 161, b"`" * 141, b"hi"):
        out = passed_on(rule.filter.check(make(short_message=text), 0.0), make())
        rule.filter.settle(out, 1.0, b"op")
    assert (rule.billed(0), rule.billed(4), rule.billed(1)) == (3, 2, 0)


# --- concatenated ---------------------------------------------------------------------------


def test_parts_are_glued_and_go_under_gsm_together() -> None:
    chain = Chain()
    glued = chain.send(part(2, 1, b"a" * 153), part(2, 2, b"b[c"))
    assert [p.data_coding for p in glued.parts] == [0, 0]
    assert [p.frame for p in glued.parts] == [
        submit_sm(SEQUENCE, esm_class=0x40, short_message=udh(0x42, 2, 1) + b"a" * 153),
        submit_sm(SEQUENCE, esm_class=0x40, short_message=udh(0x42, 2, 2) + b"b\x1b<c"),
    ]
    assert glued.content == b"a" * 153 + b"b\x1b<c"
    assert (glued.data_coding, glued.frame) == (0, glued.parts[1].frame)
    assert [p.app_message_id for p in glued.parts] == [b"R1", b"R2"]
    chain.chain.settle(glued, 1.0, b"op")
    assert (chain.billed(0), chain.billed(4)) == (2, 0)


def test_a_backtick_in_one_part_sends_every_part_under_4() -> None:
    """Judged as one text: no part goes as GSM when another cannot."""
    chain = Chain()
    glued = chain.send(part(3, 2, b"`quoted`"), part(3, 1, b"plain"), part(3, 3, b"end"))
    assert [p.data_coding for p in glued.parts] == [4, 4, 4]
    assert [pdu.read_short_message(p.frame).text[6:] for p in glued.parts] == [
        b"plain",
        b"`quoted`",
        b"end",
    ]
    assert glued.content == b"plain`quoted`end"
    assert glued.frame == glued.parts[2].frame  # part 3 completed the message
    chain.chain.settle(glued, 1.0, b"op")
    assert (chain.billed(0), chain.billed(4)) == (0, 3)


def test_a_part_whose_escapes_would_not_fit_sends_every_part_under_4() -> None:
    """153 septets of part 1 fit; 150 '[' in part 2 would be 300: all under 4, same octets."""
    chain = Chain()
    glued = chain.send(part(2, 1, b"a" * 100), part(2, 2, b"[" * 130))
    assert [p.data_coding for p in glued.parts] == [4, 4]
    assert glued.content == b"a" * 100 + b"[" * 130


def test_an_invalid_part_is_refused_before_it_is_held() -> None:
    chain = Chain()
    verdict = chain.chain.check(part(2, 1, b"caf\xe9"), 0.0)
    assert (verdict.action, verdict.reason) == ("reject", "invalid_ia5")


def test_without_the_concat_rule_each_part_is_transcoded_alone() -> None:
    registry = CollectorRegistry()
    filters = FiltersConfig(concat=FiltersConfig().concat.__class__(enabled=False))
    chain = build_chain(filters, False, Metrics(registry))
    message = part(2, 1, b"x`")
    out = passed_on(chain.check(message, 0.0), message)
    assert out.data_coding == 4
    other = part(2, 2, b"plain")
    assert passed_on(chain.check(other, 0.0), other).data_coding == 0


def test_the_rule_alone_holds_no_part_back() -> None:
    """An encoding rule no concat rule follows transcodes a part at once."""
    rule = EncodingFilter(EncodingRule(), False, Metrics(CollectorRegistry()))
    message = part(2, 1, b"plain")
    assert passed_on(rule.check(message, 0.0), message).data_coding == 0
