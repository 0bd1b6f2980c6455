"""The encoding rule: validation per data_coding, lossless transcoding, billed parts."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from smpprelay import pdu
from smpprelay.config import EncodingRule
from smpprelay.filters.encoding import (
    EncodingFilter,
    NotRepresentable,
    billed_parts,
    encode_for_operator,
    gsm_decode,
    gsm_encode,
)
from smpprelay.message import ACCEPT, Concat, Message, Verdict, read_message
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status, Tag
from tests.fakes import submit_sm

RSUBMITFAIL = 0x45
SEQUENCE = 0x1234
UDH8 = bytes((5, 0, 3, 0x42, 2, 1))  # 8-bit reference 0x42, part 1 of 2
VENDOR = (0x1403, b"\xaa\xbb")  # a vendor TLV that must survive a rewrite
USER_REF = (0x0204, b"\x00\x07")  # user_message_reference

ALL_EXTENSION = "€ [ ] ~ ^ { } \\ |"
ALL_EXTENSION_GSM = b"\x1be \x1b< \x1b> \x1b= \x1b\x14 \x1b( \x1b) \x1b/ \x1b@"


def make(app_iso: bool = False, **fields: Any) -> Message:
    """A submit as the rules see it, read back from its frame."""
    return read_message("app1", submit_sm(SEQUENCE, **fields), app_iso)


def expected_frame(**fields: Any) -> bytes:
    """The frame the rule should produce: the same submit with ``fields`` replaced."""
    return submit_sm(SEQUENCE, **fields)


class Rule:
    """An encoding rule on its own metrics registry."""

    def __init__(self, upstream_iso: bool = False, **config: Any) -> None:
        self.registry = CollectorRegistry()
        self.filter = EncodingFilter(EncodingRule(**config), upstream_iso, Metrics(self.registry))

    def billed(self, data_coding: int) -> float:
        value = self.registry.get_sample_value(
            "smpprelay_parts_billed_total", {"data_coding": str(data_coding)}
        )
        return 0.0 if value is None else value


def passed_on(verdict: Verdict, message: Message) -> Message:
    """The message an accepting rule passes on: its replacement, or ``message`` itself."""
    assert verdict.action == "accept"
    return message if verdict.message is None else verdict.message


def assert_untouched(message: Message, frame: bytes) -> None:
    """The message still carries exactly the frame the app sent."""
    assert message.frame == frame
    assert pdu.read_short_message(message.frame) == message.fields


# --- valid content passes unchanged ---------------------------------------------------------


def test_gsm_with_every_extension_character_passes_unchanged() -> None:
    """Standard app, standard upstream: GSM with € [ ] ~ ^ { } \\ | and @ é goes as sent."""
    text = ALL_EXTENSION + " @é"
    data = gsm_encode(text)
    assert data == ALL_EXTENSION_GSM + b" \x00\x05"
    message = make(short_message=data)
    frame = message.frame
    assert Rule().filter.check(message, 0.0) == ACCEPT
    assert message.frame is frame
    assert gsm_decode(message.content) == text


@pytest.mark.parametrize(
    "text",
    ["Привет, мир", "你好世界", "smile 😀 ok", "€ [x] é"],
    ids=["cyrillic", "chinese", "emoji", "latin"],
)
def test_ucs2_passes_unchanged(text: str) -> None:
    """Valid UTF-16BE under data_coding 8, surrogate pairs included, goes as sent."""
    message = make(data_coding=8, short_message=text.encode("utf-16-be"))
    frame = message.frame
    assert Rule().filter.check(message, 0.0) == ACCEPT
    assert_untouched(message, frame)


def test_ucs2_passes_unchanged_to_an_iso_upstream() -> None:
    """data_coding 8 means the same to both conventions."""
    message = make(data_coding=8, short_message="Ж😀".encode("utf-16-be"))
    frame = message.frame
    assert Rule(upstream_iso=True).filter.check(message, 0.0) == ACCEPT
    assert_untouched(message, frame)


def test_octets_pass_unchanged() -> None:
    """data_coding 4 (8-bit text or binary) is not looked into."""
    message = make(data_coding=4, short_message=bytes(range(256))[:140])
    frame = message.frame
    assert Rule().filter.check(message, 0.0) == ACCEPT
    assert_untouched(message, frame)


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"caf\xe9", b"abc\x80", b"trailing \x1b", b"\x1b", b"\x1bA is no extension", b"\x1b\x1b("],
    ids=["latin1-e-acute", "0x80", "dangling-escape", "lone-escape", "escape-A", "escape-escape"],
)
def test_invalid_gsm_is_rejected(data: bytes) -> None:
    """An octet above 0x7F, a dangling escape or an escape to no extension character."""
    verdict = Rule().filter.check(make(short_message=data), 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == ("reject", 0x45, "invalid_gsm")


def test_invalid_gsm_is_rejected_before_transcoding_for_an_iso_upstream() -> None:
    """A standard app's broken GSM is not turned into Latin-1 for an ISO upstream."""
    message = make(short_message=b"ok \x1b")
    frame = message.frame
    verdict = Rule(upstream_iso=True).filter.check(message, 0.0)
    assert (verdict.status, verdict.reason) == (0x45, "invalid_gsm")
    assert message.frame == frame


def test_odd_ucs2_is_rejected_with_invalid_message_length() -> None:
    """Odd-length UCS-2 answers ESME_RINVMSGLEN (0x01), not the policy status."""
    verdict = Rule().filter.check(make(data_coding=8, short_message=b"\x00A\x00"), 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == ("reject", 0x01, "odd_ucs2")
    assert verdict.status == Status.ESME_RINVMSGLEN


@pytest.mark.parametrize(
    "data",
    [
        "ab".encode("utf-16-be") + b"\xd8\x3d",  # high surrogate at the end
        b"\xde\x00" + "ab".encode("utf-16-be"),  # low surrogate first
        b"\xd8\x3d\x00a",  # high surrogate followed by a plain character
        b"\xd8\x3d\xd8\x3d\xde\x00",  # two highs, one low
    ],
    ids=["high-at-end", "lone-low", "high-then-plain", "high-high-low"],
)
def test_unpaired_surrogate_is_rejected(data: bytes) -> None:
    """UCS-2 with an unpaired surrogate is invalid."""
    verdict = Rule().filter.check(make(data_coding=8, short_message=data), 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == ("reject", 0x45, "invalid_ucs2")


def test_surrogate_byte_at_an_odd_offset_is_no_surrogate() -> None:
    """0xD8 as a low byte (U+00D8 'Ø') is a plain character."""
    message = make(data_coding=8, short_message="ØÜ".encode("utf-16-be"))
    assert message.content == b"\x00\xd8\x00\xdc"
    assert Rule().filter.check(message, 0.0) == ACCEPT


@pytest.mark.parametrize("data_coding", [2, 5, 9, 0xC0, 0xF1])
def test_other_data_codings_are_rejected(data_coding: int) -> None:
    """Any data_coding but 0, 1, 3, 4 and 8 is refused by default."""
    verdict = Rule().filter.check(make(data_coding=data_coding), 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == (
        "reject",
        0x45,
        "unsupported_coding",
    )


def test_allowed_data_coding_passes_through_untouched() -> None:
    """A data_coding listed in allow goes as sent, whatever its octets."""
    message = make(data_coding=5, short_message=b"\xff\x1b\xd8")
    frame = message.frame
    rule = Rule(allow=(5,)).filter
    assert rule.check(message, 0.0) == ACCEPT
    assert_untouched(message, frame)
    assert rule.check(make(data_coding=9), 0.0).reason == "unsupported_coding"


def test_configured_status_is_answered() -> None:
    """The policy status is configuration; odd UCS-2 stays ESME_RINVMSGLEN."""
    rule = Rule(status=0x58).filter
    assert rule.check(make(short_message=b"\x80"), 0.0).status == 0x58
    assert rule.check(make(data_coding=7), 0.0).status == 0x58
    assert rule.check(make(data_coding=8, short_message=b"\xdc\x00"), 0.0).status == 0x58
    assert rule.check(make(data_coding=8, short_message=b"\x00"), 0.0).status == 0x01


def test_a_character_no_coding_carries_is_not_representable() -> None:
    """A lone surrogate cannot go as GSM, Latin-1 or UTF-16: an error, never a '?'."""
    for upstream_iso in (False, True):
        with pytest.raises(NotRepresentable):
            encode_for_operator("a\ud800b", upstream_iso)


# --- transcoding ----------------------------------------------------------------------------


def test_standard_latin1_becomes_the_operators_8bit_with_the_same_octets() -> None:
    """data_coding 3 → 4, octets and every other field unchanged."""
    text = "café ¾ ç".encode("latin-1")
    fields: dict[str, Any] = {"short_message": text, "tlvs": (VENDOR, USER_REF)}
    message = make(data_coding=3, **fields)
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.frame == expected_frame(data_coding=4, **fields)
    assert message.fields.data_coding == 4
    assert message.content == text
    assert pdu.sequence_of(message.frame) == SEQUENCE


def test_iso_app_latin1_becomes_gsm() -> None:
    """ISO app, standard upstream: Latin-1 "café" under 0 → GSM "café" under 0."""
    message = make(app_iso=True, short_message="café".encode("latin-1"), tlvs=(VENDOR,))
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.content == b"caf\x05"
    assert message.frame == expected_frame(short_message=b"caf\x05", tlvs=(VENDOR,))
    assert pdu.read_short_message(message.frame) == message.fields


def test_iso_app_latin1_with_extension_characters_becomes_gsm_escapes() -> None:
    """[ ] ~ ^ { } \\ | exist in Latin-1 and in GSM's extension table (two octets each)."""
    text = "[ ] ~ ^ { } \\ | @"
    message = make(app_iso=True, short_message=text.encode("latin-1"))
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.fields.data_coding == 0
    assert message.content == ALL_EXTENSION_GSM[3:] + b" \x00"
    assert gsm_decode(message.content) == text


@pytest.mark.parametrize("text", ["¾ of a cake", "façade", "escape \x1b char"])
def test_iso_app_latin1_outside_gsm_becomes_ucs2(text: str) -> None:
    """ISO app: '¾', 'ç' (GSM has only 'Ç') or an ESC character → UCS-2, never a '?'."""
    message = make(app_iso=True, short_message=text.encode("latin-1"))
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.fields.data_coding == 8
    assert message.content == text.encode("utf-16-be")
    assert message.frame == expected_frame(data_coding=8, short_message=text.encode("utf-16-be"))


def test_gsm_to_an_iso_upstream_becomes_latin1_under_0() -> None:
    """Standard app, ISO upstream: GSM "é [x] @" → Latin-1 0xE9 ... under 0."""
    message = make(short_message=gsm_encode("é [x] @"), tlvs=(USER_REF,))
    message = passed_on(Rule(upstream_iso=True).filter.check(message, 0.0), message)
    assert message.content == b"\xe9 [x] @"
    assert message.frame == expected_frame(short_message=b"\xe9 [x] @", tlvs=(USER_REF,))


@pytest.mark.parametrize("text", ["€ [x]", "ΔΦΓ"], ids=["euro", "greek"])
def test_gsm_outside_latin1_to_an_iso_upstream_becomes_ucs2(text: str) -> None:
    """'€' and GSM's Greek capitals are not in Latin-1: the whole text goes as UCS-2."""
    message = make(short_message=gsm_encode(text))
    message = passed_on(Rule(upstream_iso=True).filter.check(message, 0.0), message)
    assert message.fields.data_coding == 8
    assert message.content == text.encode("utf-16-be")
    assert message.frame == expected_frame(data_coding=8, short_message=text.encode("utf-16-be"))


def test_iso_app_to_an_iso_upstream_is_unchanged() -> None:
    """Both read 0 as Latin-1: "façade ¾" goes as sent."""
    message = make(app_iso=True, short_message="façade ¾".encode("latin-1"))
    frame = message.frame
    assert Rule(upstream_iso=True).filter.check(message, 0.0) == ACCEPT
    assert_untouched(message, frame)


def test_latin1_to_gsm_and_back_round_trips() -> None:
    """ISO app → GSM, then GSM → ISO upstream gives back the app's octets."""
    original = "Ærøskøbing {x} ÄÖÑÜ§¿ £$¥".encode("latin-1")
    there = make(app_iso=True, short_message=original)
    there = passed_on(Rule().filter.check(there, 0.0), there)
    assert there.fields.data_coding == 0
    back = make(short_message=there.content)
    back = passed_on(Rule(upstream_iso=True).filter.check(back, 0.0), back)
    assert (back.fields.data_coding, back.content) == (0, original)


# --- UDH, concatenation and length limits ---------------------------------------------------


def test_udh_is_kept_when_a_part_is_transcoded() -> None:
    """An ISO app's part: the UDH goes in front of the new user data, esm_class unchanged."""
    message = make(app_iso=True, esm_class=0x40, short_message=UDH8 + "café".encode("latin-1"))
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.udh == UDH8
    assert message.content == b"caf\x05"
    assert message.concat == Concat(0x42, 2, 1, "udh8")
    assert message.frame == expected_frame(esm_class=0x40, short_message=UDH8 + b"caf\x05")


def test_udh_is_kept_when_a_part_becomes_ucs2() -> None:
    """A part with '¾' becomes UCS-2 behind the same UDH."""
    message = make(app_iso=True, esm_class=0x40, short_message=UDH8 + b"\xbe")
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.frame == expected_frame(
        esm_class=0x40, data_coding=8, short_message=UDH8 + b"\x00\xbe"
    )


@pytest.mark.parametrize(("chars", "verdict"), [(67, "accept"), (68, "reject")])
def test_ucs2_part_must_fit_140_octets_with_its_udh(chars: int, verdict: str) -> None:
    """6 + 2*67 = 140 octets fit in one segment; 6 + 2*68 = 142 do not."""
    latin1 = b"\xbe" * chars
    message = make(app_iso=True, esm_class=0x40, short_message=UDH8 + latin1)
    frame = message.frame
    result = Rule().filter.check(message, 0.0)
    assert result.action == verdict
    if verdict == "reject":
        assert (result.status, result.reason) == (0x45, "too_long")
        assert message.frame == frame
    else:
        assert len(passed_on(result, message).fields.short_message) == 140


@pytest.mark.parametrize(("chars", "verdict"), [(66, "accept"), (67, "reject")])
def test_ucs2_part_must_fit_140_octets_with_a_16bit_reference_udh(chars: int, verdict: str) -> None:
    """7 + 2*66 = 139 octets fit; 7 + 2*67 = 141 do not."""
    udh16 = bytes((6, 8, 4, 0x12, 0x34, 2, 1))
    message = make(app_iso=True, esm_class=0x40, short_message=udh16 + b"\xbe" * chars)
    assert message.concat == Concat(0x1234, 2, 1, "udh16")
    assert Rule().filter.check(message, 0.0).action == verdict


@pytest.mark.parametrize(
    ("plain", "verdict"), [(151, "accept"), (152, "reject")], ids=["153-septets", "154-septets"]
)
def test_gsm_part_must_fit_153_septets_behind_a_6_octet_udh(plain: int, verdict: str) -> None:
    """A 6-octet UDH takes 7 septets: 151 + '[' (2) = 153 fit, 152 + '[' = 154 do not."""
    latin1 = b"a" * plain + b"["
    message = make(app_iso=True, esm_class=0x40, short_message=UDH8 + latin1)
    result = Rule().filter.check(message, 0.0)
    assert result.action == verdict
    assert result.reason == ("too_long" if verdict == "reject" else "")


def test_gsm_part_of_full_length_is_not_refused_when_no_longer() -> None:
    """153 Latin-1 letters behind the UDH become 153 septets: same length, accepted."""
    message = make(app_iso=True, esm_class=0x40, short_message=UDH8 + b"e" * 153)
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.content == b"e" * 153


def test_a_part_not_made_longer_is_not_judged_too_long() -> None:
    """Only transcoding that lengthens is checked: the app's own 160-septet part after a
    6-octet UDH (too long already) becomes Latin-1 for an ISO upstream, unrefused here."""
    message = make(esm_class=0x40, short_message=UDH8 + b"a" * 160)
    message = passed_on(Rule(upstream_iso=True).filter.check(message, 0.0), message)
    assert message.fields.short_message == UDH8 + b"a" * 160


@pytest.mark.parametrize(("chars", "verdict"), [(70, "accept"), (71, "reject")])
def test_sar_part_must_fit_140_octets(chars: int, verdict: str) -> None:
    """A part marked by sar_* TLVs (no UDH) holds 70 UCS-2 characters."""
    sar = (
        (Tag.sar_msg_ref_num, b"\x00\x07"),
        (Tag.sar_total_segments, b"\x02"),
        (Tag.sar_segment_seqnum, b"\x01"),
    )
    message = make(app_iso=True, short_message=b"\xbe" * chars, tlvs=sar)
    assert message.concat == Concat(7, 2, 1, "sar")
    assert Rule().filter.check(message, 0.0).action == verdict
    if verdict == "accept":
        assert message.fields.tlvs == sar


@pytest.mark.parametrize(("chars", "verdict"), [(127, "accept"), (128, "reject")])
def test_single_message_must_fit_254_octets(chars: int, verdict: str) -> None:
    """Outside a concatenated message short_message holds 254 octets: 127 UCS-2 characters."""
    message = make(app_iso=True, short_message=b"\xbe" * chars)
    result = Rule().filter.check(message, 0.0)
    assert result.action == verdict
    if verdict == "reject":
        assert (result.status, result.reason) == (0x45, "too_long")


def test_gsm_escapes_can_make_a_single_message_too_long() -> None:
    """128 '[' become 256 GSM octets (and UCS-2 would be as long): too_long."""
    verdict = Rule().filter.check(make(app_iso=True, short_message=b"[" * 128), 0.0)
    assert (verdict.status, verdict.reason) == (0x45, "too_long")
    assert Rule().filter.check(make(app_iso=True, short_message=b"[" * 127), 0.0).action == "accept"


# --- message_payload ------------------------------------------------------------------------


def payload_message(app_iso: bool, data: bytes, data_coding: int = 0) -> Message:
    """A submit whose text travels in message_payload between two other TLVs."""
    tlvs = (VENDOR, (Tag.message_payload, data), USER_REF)
    message = make(app_iso=app_iso, short_message=b"", data_coding=data_coding, tlvs=tlvs)
    assert message.uses_payload
    return message


def test_payload_is_transcoded_in_place() -> None:
    """ISO app "café" in message_payload → GSM in the same TLV; the other TLVs stay put."""
    message = payload_message(True, "café".encode("latin-1"))
    message = passed_on(Rule().filter.check(message, 0.0), message)
    tlvs = (VENDOR, (Tag.message_payload, b"caf\x05"), USER_REF)
    assert message.frame == expected_frame(short_message=b"", tlvs=tlvs)
    assert message.content == b"caf\x05"


def test_long_payload_becomes_ucs2_past_254_octets() -> None:
    """message_payload is not bound by short_message's 254 octets: 200 '¾' → 400 octets."""
    message = payload_message(True, b"\xbe" * 200)
    message = passed_on(Rule().filter.check(message, 0.0), message)
    assert message.fields.data_coding == 8
    assert message.fields.tlv(Tag.message_payload) == "¾".encode("utf-16-be") * 200


def test_payload_to_an_iso_upstream_becomes_latin1() -> None:
    """Standard app's GSM payload "é{}" → Latin-1 for an ISO upstream."""
    message = payload_message(False, gsm_encode("é{}"))
    message = passed_on(Rule(upstream_iso=True).filter.check(message, 0.0), message)
    assert message.fields.tlv(Tag.message_payload) == b"\xe9{}"
    assert message.fields.tlvs[0] == VENDOR
    assert message.fields.tlvs[2] == USER_REF


def test_payload_udh_is_kept_when_transcoded() -> None:
    """A part whose UDH and text travel in message_payload: the UDH stays in front."""
    tlvs = ((Tag.message_payload, UDH8 + b"\xbe"), VENDOR)
    message = make(app_iso=True, esm_class=0x40, short_message=b"", tlvs=tlvs)
    assert message.udh == UDH8
    message = passed_on(Rule().filter.check(message, 0.0), message)
    new_tlvs = ((Tag.message_payload, UDH8 + b"\x00\xbe"), VENDOR)
    assert message.frame == expected_frame(
        esm_class=0x40, data_coding=8, short_message=b"", tlvs=new_tlvs
    )


@pytest.mark.parametrize(
    ("data", "data_coding", "status", "reason"),
    [
        (b"abc\x1b", 0, 0x45, "invalid_gsm"),
        (b"ab\xff", 0, 0x45, "invalid_gsm"),
        (b"\x00a\x00", 8, 0x01, "odd_ucs2"),
        (b"\x00a\xdc\x00", 8, 0x45, "invalid_ucs2"),
    ],
)
def test_payload_is_validated_like_short_message(
    data: bytes, data_coding: int, status: int, reason: str
) -> None:
    """The same checks apply to a message_payload TLV."""
    verdict = Rule().filter.check(payload_message(False, data, data_coding), 0.0)
    assert (verdict.action, verdict.status, verdict.reason) == ("reject", status, reason)


# --- billed parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("septets", "parts"), [(0, 1), (1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3)]
)
def test_gsm_parts(septets: int, parts: int) -> None:
    """GSM: 160 septets in one SMS, else 153 per part."""
    assert billed_parts(0, b"a" * septets) == parts


@pytest.mark.parametrize(("euros", "parts"), [(80, 1), (81, 2)])
def test_gsm_escape_counts_as_two_septets(euros: int, parts: int) -> None:
    """80 '€' are 160 septets (one SMS); 81 are 162 (two)."""
    assert billed_parts(0, gsm_encode("€" * euros)) == parts


def test_gsm_escape_is_not_split_across_parts() -> None:
    """152 + '€' + 152 septets = 306, but '€' cannot straddle parts 1 and 2: three parts."""
    assert billed_parts(0, gsm_encode("a" * 152 + "€" + "a" * 152)) == 3
    assert billed_parts(0, gsm_encode("a" * 151 + "€" + "a" * 153)) == 2


@pytest.mark.parametrize(("units", "parts"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_parts(units: int, parts: int) -> None:
    """UCS-2: 70 code units in one SMS, else 67 per part."""
    assert billed_parts(8, "Ж".encode("utf-16-be") * units) == parts


def test_ucs2_surrogate_pair_counts_two_units_and_is_not_split() -> None:
    """An emoji is two code units; a pair at units 67-68 moves whole to the next part."""
    assert billed_parts(8, "😀".encode("utf-16-be") * 35) == 1
    assert billed_parts(8, "😀".encode("utf-16-be") * 36) == 2
    assert billed_parts(8, ("a" * 66 + "😀" + "a" * 66).encode("utf-16-be")) == 3
    assert billed_parts(8, ("a" * 65 + "😀" + "a" * 67).encode("utf-16-be")) == 2


@pytest.mark.parametrize(("octets", "parts"), [(140, 1), (141, 2), (268, 2), (269, 3)])
def test_8bit_parts(octets: int, parts: int) -> None:
    """8-bit: 140 octets in one SMS, else 134 per part."""
    assert billed_parts(4, b"\xff" * octets) == parts


def test_latin1_under_0_is_billed_as_the_gsm_the_operator_sends() -> None:
    """For an ISO upstream: 80 '[' are 160 septets; 'ç' (not in GSM) makes it UCS-2."""
    assert billed_parts(0, b"[" * 80, latin1=True) == 1
    assert billed_parts(0, b"[" * 81, latin1=True) == 2
    assert billed_parts(0, b"\xe7" * 70, latin1=True) == 1
    assert billed_parts(0, b"\xe7" * 71, latin1=True) == 2


def test_settle_counts_billed_parts_of_an_accepted_message() -> None:
    """161 GSM septets accepted: two parts under data_coding 0."""
    rule = Rule()
    message = make(short_message=b"a" * 161)
    assert rule.filter.check(message, 0.0) == ACCEPT
    rule.filter.settle(message, 1.0, b"op-1")
    assert rule.billed(0) == 2


@pytest.mark.parametrize("upstream_iso", [False, True])
@pytest.mark.parametrize(
    ("data_coding", "content"),
    [
        (0, b"a" * 160),
        (0, b"a" * 161),
        (0, b"\x1be" * 80),
        (0, b"a" * 159 + b"\x1be"),
        (0, b"[" * 80),
        (0, b"[" * 81),
        (8, b"\x04\x16" * 70),
        (8, b"\x04\x16" * 71),
        (4, b"\xff" * 140),
        (4, b"\xff" * 141),
    ],
)
def test_settle_bills_as_billed_parts_at_the_edges_of_one_sms(
    upstream_iso: bool, data_coding: int, content: bytes
) -> None:
    """settle's shortcut for one SMS agrees with `billed_parts` on either side of its bound."""
    rule = Rule(upstream_iso)
    message = make(data_coding=data_coding, short_message=content)
    rule.filter.settle(message, 1.0, b"op-1")
    assert rule.billed(data_coding) == billed_parts(data_coding, content, latin1=upstream_iso)


def test_settle_counts_nothing_for_a_message_not_accepted() -> None:
    """No message id: the operator did not take it, nothing is billed."""
    rule = Rule()
    message = make(short_message=b"a" * 161)
    rule.filter.settle(message, 1.0, None)
    assert rule.billed(0) == 0


def test_settle_counts_under_the_data_coding_sent() -> None:
    """An ISO app's '¾' went as UCS-2: billed under 8, not 0."""
    rule = Rule()
    message = make(app_iso=True, short_message=b"\xbe" * 71)
    message = passed_on(rule.filter.check(message, 0.0), message)
    rule.filter.settle(message, 1.0, b"op-1")
    assert (rule.billed(0), rule.billed(8)) == (0, 2)


def test_settle_counts_a_part_once() -> None:
    """A part of a concatenated message is one SMS, whatever its length."""
    rule = Rule()
    message = make(esm_class=0x40, short_message=UDH8 + b"a" * 153)
    rule.filter.settle(message, 1.0, b"op-1")
    assert rule.billed(0) == 1


def test_settle_counts_an_iso_part_once() -> None:
    """ISO upstream: a 153-character Latin-1 part with 'ç' would be 3 SMS alone; it is one."""
    rule = Rule(upstream_iso=True)
    message = make(app_iso=True, esm_class=0x40, short_message=UDH8 + b"\xe7" * 153)
    assert billed_parts(0, message.content, latin1=True) == 3
    assert rule.filter.check(message, 0.0) == ACCEPT
    rule.filter.settle(message, 1.0, b"op-1")
    assert rule.billed(0) == 1


def test_settle_counts_each_part_of_a_glued_message() -> None:
    """A glued message of three parts is three SMS."""
    rule = Rule()
    parts = tuple(
        make(esm_class=0x40, short_message=bytes((5, 0, 3, 9, 3, n)) + b"part") for n in (1, 2, 3)
    )
    glued = make(esm_class=0x40, short_message=bytes((5, 0, 3, 9, 3, 3)) + b"part")
    glued.parts = parts
    glued.content = b"part" * 3
    rule.filter.settle(glued, 1.0, b"R1")
    assert rule.billed(0) == 3


def test_settle_for_an_iso_upstream_counts_latin1_as_gsm_septets() -> None:
    """ISO upstream: 81 '€' went as UCS-2 (2 parts under 8); 81 '{' as Latin-1 under 0 are
    162 GSM septets on the air (2 parts under 0)."""
    rule = Rule(upstream_iso=True)
    message = make(short_message=gsm_encode("€" * 81))
    message = passed_on(rule.filter.check(message, 0.0), message)
    rule.filter.settle(message, 1.0, b"op-1")
    assert rule.billed(8) == 2
    plain = make(short_message=gsm_encode("{" * 81))
    plain = passed_on(rule.filter.check(plain, 0.0), plain)
    assert plain.content == b"{" * 81
    rule.filter.settle(plain, 1.0, b"op-2")
    assert rule.billed(0) == 2
