"""The encoding rule: content must be valid for its data_coding; conventions are transcoded.

The operator's convention: data_coding 0 is the GSM 03.38 default alphabet (one septet per
octet, unpacked, 0x1B escapes into the extension table), 4 is 8-bit ISO-8859-1 text or binary,
8 is UCS-2/UTF-16BE. A bind with system_type "ISO" reads 0 as ISO-8859-1: ``message.app_iso``
says an app bound that way, ``upstream_iso`` that our upstream bind does.

Where the app's convention differs from the operator's the text is transcoded without losing
a character: standard Latin-1 (3) becomes the operator's 4 (same octets); Latin-1 under 0 from
an ISO app becomes GSM when every character exists in GSM 03.38, else UCS-2; GSM under 0 from
a standard app to an ISO upstream becomes Latin-1 under 0 when every character exists in
Latin-1, else UCS-2. A character no target can carry is a rejection, never a ``?``.

The common cases (GSM to a standard upstream, UCS-2) are validated with C-level bytes methods
only: ``isascii`` for octets above 0x7F, escapes looked at only when 0x1B is present, and
surrogates decoded only when a high byte 0xD8-0xDF sits at an even offset.

The character tables come from ``gsm0338`` (its codec is strict but drops a lone trailing
escape on decode, so escapes are checked here).
"""

from __future__ import annotations

import codecs
import contextlib
import re
from typing import ClassVar, Final

import attrs

# Imported for its side effect: it registers the "gsm03.38" codec the tables below are read from.
import gsm0338  # type: ignore[import-untyped]  # noqa: F401

from smpprelay import pdu
from smpprelay.config import EncodingRule
from smpprelay.filters.base import HoldsNothing
from smpprelay.message import ACCEPT, Message, Verdict, accept, read_message, reject
from smpprelay.metrics import Metrics
from smpprelay.pdu import Status, Tag

GSM: Final = 0  # GSM 03.38, or ISO-8859-1 on a bind with system_type "ISO"
IA5: Final = 1  # 7-bit ASCII; the operator does not take it
LATIN1: Final = 3  # ISO-8859-1 by the SMPP standard; the operator does not take it
OCTETS: Final = 4  # the operator's 8-bit: ISO-8859-1 text or binary
UCS2: Final = 8

ESC: Final = 0x1B
SHORT_MESSAGE_MAX: Final = 254  # octets in short_message (sm_length is one octet, 255 reserved)
PAYLOAD_MAX: Final = 0xFFFF  # octets in a message_payload TLV
SEGMENT_OCTETS: Final = 140  # user data of one SMS, header included
SEGMENT_SEPTETS: Final = 160


def _gsm_tables() -> tuple[dict[int, str], dict[int, str]]:
    """GSM 03.38 default alphabet and extension table, octet -> character, from gsm0338."""
    basic: dict[int, str] = {}
    extension: dict[int, str] = {}
    for octet in range(0x80):
        if octet == ESC:  # the escape itself is no character
            continue
        basic[octet] = bytes((octet,)).decode("gsm03.38")
        with contextlib.suppress(UnicodeDecodeError):  # no extension character there
            extension[octet] = bytes((ESC, octet)).decode("gsm03.38")
    return basic, extension


_BASIC, _EXTENSION = _gsm_tables()
# An escape that is last or not followed by an extension code (0x1B 0x1B included).
_BAD_ESCAPE: Final = re.compile(
    b"\x1b(?![" + b"".join(re.escape(bytes((code,))) for code in sorted(_EXTENSION)) + b"])"
)
# Octet -> character for the default alphabet; U+FFFE marks an octet that is no character.
_GSM_DECODE: Final = "".join(_BASIC.get(octet, "\ufffe") for octet in range(256))
# Character -> GSM octets, for codecs.charmap_encode (a missing key is an encode error).
_GSM_ENCODE: Final[dict[int, int | bytes]] = {ord(ch): octet for octet, ch in _BASIC.items()}
_GSM_ENCODE.update({ord(ch): bytes((ESC, octet)) for octet, ch in _EXTENSION.items()})
# bytes.translate deletes every octet but a UTF-16 high byte of a surrogate (0xD8-0xDF).
_NOT_SURROGATE: Final = bytes(b for b in range(256) if not 0xD8 <= b <= 0xDF)

# Billing: units in a single SMS, units per part of a concatenated one.
_GSM_PARTS: Final = (160, 153)
_UCS2_PARTS: Final = (70, 67)
_OCTET_PARTS: Final = (140, 134)


class NotRepresentable(ValueError):
    """A character that the target coding cannot carry."""


def gsm_valid(data: bytes) -> bool:
    """True when ``data`` is unpacked GSM 03.38: septets only, every escape complete."""
    if not data.isascii():
        return False
    return ESC not in data or _BAD_ESCAPE.search(data) is None


def ucs2_valid(data: bytes) -> bool:
    """True when ``data`` (of even length) is UTF-16BE with every surrogate paired."""
    if not data[::2].translate(None, _NOT_SURROGATE):
        return True
    try:
        data.decode("utf-16-be")
    except UnicodeDecodeError:
        return False
    return True


def gsm_decode(data: bytes) -> str:
    """The text of valid unpacked GSM 03.38 (see `gsm_valid`)."""
    if ESC not in data:
        return codecs.charmap_decode(data, "strict", _GSM_DECODE)[0]
    chunks = data.split(b"\x1b")
    text = [codecs.charmap_decode(chunks[0], "strict", _GSM_DECODE)[0]]
    for chunk in chunks[1:]:
        text.append(_EXTENSION[chunk[0]])
        text.append(codecs.charmap_decode(chunk[1:], "strict", _GSM_DECODE)[0])
    return "".join(text)


def gsm_encode(text: str) -> bytes:
    """``text`` as unpacked GSM 03.38; raises `NotRepresentable` for a character outside it."""
    try:
        return codecs.charmap_encode(text, "strict", _GSM_ENCODE)[0]
    except UnicodeEncodeError as error:
        raise NotRepresentable(text[error.start]) from None


def encode_for_operator(text: str, upstream_iso: bool) -> tuple[int, bytes]:
    """The data_coding and octets the operator takes ``text`` in, without losing a character.

    Under 0 (GSM, or Latin-1 for an ISO upstream) when every character fits, else UTF-16BE
    under 8. Raises `NotRepresentable` when not even UTF-16 can carry it (a lone surrogate).
    """
    try:
        if upstream_iso:
            return GSM, text.encode("latin-1")
        return GSM, gsm_encode(text)
    except (UnicodeEncodeError, NotRepresentable):
        pass
    try:
        return UCS2, text.encode("utf-16-be")
    except UnicodeEncodeError as error:
        raise NotRepresentable(text[error.start]) from None


# 140 octets are one SMS whatever the coding: 160 GSM septets, 70 UCS-2 units, 140 octets. (Not
# for Latin-1 under 0 to an ISO upstream, which may go out as UCS-2.)
_ONE_SMS_OCTETS = 140


def billed_parts(data_coding: int, content: bytes, *, latin1: bool = False) -> int:
    """How many SMS the operator bills for ``content`` (user data without its header).

    GSM: 160 septets in one SMS, else 153 per part, an escape counting as two septets and
    never split across parts. UCS-2: 70 UTF-16 code units, else 67 per part, a surrogate pair
    never split. Anything else: 140 octets, else 134. ``latin1`` says data_coding 0 holds
    ISO-8859-1 (an ISO upstream bind): the operator sends it as GSM when every character
    exists there, else (assumed) as UCS-2. An empty message is one SMS.
    """
    if data_coding == GSM:
        if latin1:
            text = content.decode("latin-1")
            try:
                content = gsm_encode(text)
            except NotRepresentable:
                return _parts(text.encode("utf-16-be"), 2, _UCS2_PARTS, 0xD8, 0xDB)
        return _parts(content, 1, _GSM_PARTS, ESC, ESC)
    if data_coding == UCS2:
        return _parts(content, 2, _UCS2_PARTS, 0xD8, 0xDB)
    return _parts(content, 1, _OCTET_PARTS, -1, -1)


def _parts(data: bytes, width: int, limits: tuple[int, int], low: int, high: int) -> int:
    """Parts for ``data`` of ``width``-octet units; a unit whose first octet is within
    ``low``..``high`` starts a pair that must not be split (a GSM escape, a high surrogate)."""
    single, per_part = limits
    units = len(data) // width
    if units <= single:
        return 1
    parts = 0
    start = 0
    while units - start > per_part:
        end = start + per_part
        if low <= data[(end - 1) * width] <= high:
            end -= 1  # the pair's first half goes to the next part with its second half
        start = end
        parts += 1
    return parts + 1


class EncodingFilter(HoldsNothing):
    """Rejects content invalid for its data_coding and transcodes between conventions."""

    name: ClassVar[str] = "encoding"
    settles: ClassVar[bool] = True  # bills what the operator accepted

    def __init__(self, config: EncodingRule, upstream_iso: bool, metrics: Metrics) -> None:
        self.config = config
        self.upstream_iso = upstream_iso
        self.metrics = metrics
        self.allow = frozenset(config.allow)
        self.status = config.status
        self._billed = metrics.parts_billed.counts  # data_coding -> parts
        # True when a concat rule glues parts after this rule and calls `transcode_glued`:
        # an IA5 part then waits, validated but untouched, to be transcoded with its siblings.
        self.glues_parts = False

    def reconfigure(self, config: EncodingRule) -> None:
        """Take a reloaded rule's ``allow`` list and status."""
        self.config = config
        self.allow = frozenset(config.allow)
        self.status = config.status

    def check(self, message: Message, now: float) -> Verdict:
        """Accept (with a transcoded replacement where the conventions differ) or reject."""
        dc = message.fields.data_coding
        content = message.content
        if dc == GSM:
            if message.app_iso:
                if self.upstream_iso:
                    return ACCEPT  # Latin-1 under 0 on both sides
                return self._transcode(message, content.decode("latin-1"))
            if not gsm_valid(content):
                return reject(self.status, "invalid_gsm")
            if self.upstream_iso:
                return self._transcode(message, gsm_decode(content))
            return ACCEPT
        if dc == UCS2:
            if len(content) & 1:
                return reject(Status.ESME_RINVMSGLEN, "odd_ucs2")
            if not ucs2_valid(content):
                return reject(self.status, "invalid_ucs2")
            return ACCEPT
        if dc == OCTETS:
            return ACCEPT
        if dc == LATIN1:
            return self._rewrite(message, OCTETS, content)
        if dc in self.allow:
            return ACCEPT  # an operator that takes a coding as it is, IA5 included
        if dc == IA5:
            if not content.isascii():
                return reject(self.status, "invalid_ia5")
            if message.concat is not None and self.glues_parts:
                return ACCEPT  # judged with its siblings once glued (`transcode_glued`)
            dc, data = self._ia5_coding(content, (message,))
            return self._rewrite(message, dc, data)
        return reject(self.status, "unsupported_coding")

    def transcode_glued(self, glued: Message) -> Message:
        """``glued`` with its IA5 parts transcoded as one text (`check` let them through).

        Every IA5 part goes under one data_coding: GSM only when every part's text has a GSM
        form and fits its part, else the same octets under 4. A part of another coding is
        left as `check` passed it.
        """
        parts = glued.parts
        if not any(part.data_coding == IA5 for part in parts) or IA5 in self.allow:
            return glued
        # Held parts are slimmed (no content, a sample of the text): read them again.
        full = [part if part.content else _reread(part) for part in parts]
        ia5 = [part for part in full if part.data_coding == IA5]
        dc, _ = self._ia5_coding(b"".join(part.content for part in ia5), ia5)
        new_parts: list[Message] = []
        contents: list[bytes] = []
        completing = glued
        for held, part in zip(parts, full, strict=True):
            if part.data_coding != IA5:
                new_parts.append(held)
                contents.append(part.content)
                continue
            data = self._ia5_data(dc, part.content)
            rewritten = self._rewrite(part, dc, data).message
            assert rewritten is not None  # _rewrite always accepts with a replacement
            contents.append(data)
            if held is part:
                new_parts.append(rewritten)
            else:  # keep the held part slim: only its frame and data_coding change
                fields = held.fields._replace(data_coding=dc)
                new_parts.append(attrs.evolve(held, frame=rewritten.frame, fields=fields))
            if held.frame == glued.frame:  # the part that completed the message is the glued one
                completing = rewritten
        return attrs.evolve(
            glued,
            frame=completing.frame,
            fields=completing.fields,
            parts=tuple(new_parts),
            content=b"".join(contents),
        )

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        """Count the parts the operator will bill for an accepted message."""
        if message_id is None:
            return
        if message.parts:
            for part in message.parts:
                self._bill(part.data_coding, 1)
        elif message.concat is not None:
            self._bill(message.data_coding, 1)
        else:
            dc = message.fields.data_coding
            size = len(message.content)
            # The common cases, without the call: GSM septets (an escape is two octets of
            # ``content`` already) within one SMS, or 140 octets in any other coding.
            if dc == GSM:
                one = size <= _GSM_PARTS[0] and not self.upstream_iso
            else:
                one = size <= _ONE_SMS_OCTETS
            parts = 1 if one else billed_parts(dc, message.content, latin1=self.upstream_iso)
            billed = self._billed  # `_bill` written out: this runs per accepted submit
            billed[dc] = billed.get(dc, 0) + parts

    # --- transcoding --------------------------------------------------------------------

    def _ia5_coding(
        self, text: bytes, parts: tuple[Message, ...] | list[Message]
    ) -> tuple[int, bytes]:
        """The data_coding (and octets of ``text``) valid ASCII goes out under: GSM when every
        character has a GSM form and each of ``parts`` still fits, else the same octets
        under the operator's 8-bit (4), which never makes a part longer."""
        try:
            data = gsm_encode(text.decode("ascii"))
        except NotRepresentable:
            return OCTETS, text
        if self.upstream_iso:
            return GSM, text  # the operator reads 0 as Latin-1, and ASCII is Latin-1
        if len(data) > len(text):  # escapes: does every part still fit?
            for part in parts:
                longer = gsm_encode(part.content.decode("ascii"))
                if len(longer) > len(part.content) and self._too_long(part, GSM, longer):
                    return OCTETS, text
        return GSM, data

    def _ia5_data(self, dc: int, content: bytes) -> bytes:
        """``content`` (ASCII) under ``dc`` as `_ia5_coding` chose it."""
        if dc == GSM and not self.upstream_iso:
            return gsm_encode(content.decode("ascii"))
        return content

    def _transcode(self, message: Message, text: str) -> Verdict:
        try:
            dc, data = encode_for_operator(text, self.upstream_iso)
        except NotRepresentable:
            return reject(self.status, "not_representable")
        if len(data) > len(message.content) and self._too_long(message, dc, data):
            return reject(self.status, "too_long")
        return self._rewrite(message, dc, data)

    def _too_long(self, message: Message, dc: int, data: bytes) -> bool:
        """True when ``data`` no longer fits where it travels.

        Only called for a longer result, so a dc 0 result here is GSM (Latin-1 is never longer
        than the GSM it came from): one SMS holds 160 septets, the header's octets taking
        ``ceil(8n/7)`` of them.
        """
        header = len(message.udh)
        if message.udh or message.concat is not None:
            if dc == GSM:
                return (header * 8 + 6) // 7 + len(data) > SEGMENT_SEPTETS
            return header + len(data) > SEGMENT_OCTETS
        limit = PAYLOAD_MAX if message.uses_payload else SHORT_MESSAGE_MAX
        return header + len(data) > limit

    def _rewrite(self, message: Message, dc: int, data: bytes) -> Verdict:
        """The submit with new user data and data_coding, every other byte as it was."""
        fields = message.fields
        user_data = message.udh + data
        if message.uses_payload:
            tlvs = list(fields.tlvs)
            for index, (tag, _) in enumerate(tlvs):
                if tag == Tag.message_payload:
                    tlvs[index] = (tag, user_data)
                    break
            new = fields._replace(data_coding=dc, tlvs=tuple(tlvs))
        else:
            new = fields._replace(data_coding=dc, short_message=user_data)
        frame = pdu.encode_like(message.frame, new)  # a data_sm stays a data_sm
        return accept(attrs.evolve(message, frame=frame, fields=new, content=data))

    def _bill(self, dc: int, parts: int) -> None:
        billed = self._billed
        billed[dc] = billed.get(dc, 0) + parts


def _reread(part: Message) -> Message:
    """A held (slimmed) part read again from its frame, with its relay-issued id."""
    again = read_message(part.account, part.frame, part.app_iso)
    again.app_message_id = part.app_message_id
    return again
