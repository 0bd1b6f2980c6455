"""Fuzzing an app session (reliability.md L6, in the small): random bytes and mutated PDUs,
split at random points, into a bound and an unbound session of the real relay.

Whatever arrives: no exception escapes and none is logged; every request read before the
connection closed gets exactly one answer (none when it closed first); nothing is answered
that was not asked, except the generic_nack of a framing error, after which the connection is
closed; and the bytes held back never exceed one PDU of the cap.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smpprelay import pdu
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, FramingError, Status
from tests.fakes import Relayed, captured_logs, is_error, short_message

MAX_PDU = 512
METRICS = Metrics()  # one registry for every example: building one per example is wasted time

_byte = st.integers(0, 255)
_sequence = st.one_of(st.integers(0, 20), st.sampled_from([0x7FFFFFFF, 0xFFFFFFFF]))
_address = st.binary(max_size=22) | st.text("0123456789+", max_size=21).map(str.encode)
_tlv = st.tuples(
    st.sampled_from([0x0424, 0x020C, 0x020E, 0x020F, 0x020A, 0x1403, 0x0777, 0x130C]),
    st.binary(max_size=12),
)


@st.composite
def _submit(draw: st.DrawFn) -> bytes:
    fields = short_message(
        service_type=draw(st.sampled_from([b"", b"CMT", b"ABCDEFG"])),
        source_ton=draw(st.sampled_from([0, 1, 5, 7])),
        source_addr=draw(_address),
        dest_ton=draw(st.sampled_from([0, 1, 5])),
        destination_addr=draw(_address),
        esm_class=draw(_byte),
        priority_flag=draw(st.integers(0, 5)),
        registered_delivery=draw(_byte),
        data_coding=draw(st.sampled_from([0, 3, 4, 8, 5])),
        short_message=draw(st.binary(max_size=260)),
        tlvs=tuple(draw(st.lists(_tlv, max_size=4))),
    )
    return pdu.encode_short_message(CommandId.submit_sm, draw(_sequence), fields)


@st.composite
def _header_only(draw: st.DrawFn) -> bytes:
    command_id = draw(st.sampled_from([int(c) for c in CommandId]) | st.integers(0, 0xFFFFFFFF))
    return pdu.build(command_id, draw(_sequence), draw(st.binary(max_size=40)), draw(_byte))


_valid = st.one_of(
    _submit(),
    _header_only(),
    st.builds(
        pdu.bind_request,
        st.sampled_from(["transmitter", "receiver", "transceiver"]),
        st.integers(1, 20),
        st.sampled_from(["app", "nobody", "x" * 15]),
        st.sampled_from(["pw", "wrong"]),
    ),
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(_valid))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(frame) - 1))
        frame[at] = draw(_byte)
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, len(frame)))]
    return bytes(frame)


# A length beyond the cap followed by more junk than the cap: what must never be buffered.
_oversized = st.builds(
    lambda length, junk: length.to_bytes(4, "big") + junk,
    st.integers(MAX_PDU + 1, 0xFFFFFFFF),
    st.binary(min_size=MAX_PDU, max_size=2 * MAX_PDU),
)
_piece = st.one_of(_valid, _valid, _mutated(), st.binary(min_size=1, max_size=64), _oversized)


@st.composite
def _stream(draw: st.DrawFn) -> list[bytes]:
    """Pieces of PDUs (valid, mutated, random) glued and cut again at random points."""
    data = b"".join(draw(st.lists(_piece, min_size=1, max_size=8)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


def _requests_read(data: bytes) -> tuple[list[int], bool]:
    """The sequence numbers of the requests a correct reader finds in ``data``, in order, and
    whether the stream is broken: a bad length, or a PDU left unfinished."""
    framer = pdu.Framer(MAX_PDU)
    try:
        frames = framer.feed(data)
        broken = framer.buffered > 0
    except FramingError as raised:
        frames, broken = raised.frames, True
    requests = [
        pdu.sequence_of(frame) for frame in frames if not pdu.header(frame)[1] & pdu.RESPONSE_BIT
    ]
    return requests, broken


def _run(bound: bool, chunks: list[bytes]) -> None:
    h = Relayed(bind=bound, max_pdu=MAX_PDU, metrics=METRICS)
    with captured_logs(is_error) as failures:
        for chunk in chunks:
            h.connection.dataReceived(chunk)
            assert h.connection._framer.buffered < MAX_PDU
        # The operator answers everything relayed; the PDU read deadline ends any partial PDU.
        for answer in h.pool.answers:
            if not answer.called:
                answer.callback(pdu.submit_sm_resp(0, Status.ESME_ROK, b"OP"))
        h.clock.advance(11.0)
    assert failures == []

    answers = [
        f for f in pdu.Framer(1 << 20).feed(h.written()) if pdu.header(f)[1] & pdu.RESPONSE_BIT
    ]
    requests, broken = _requests_read(b"".join(chunks))
    if broken:
        assert not h.open
    if answers and pdu.header(answers[-1])[1:3] == (CommandId.generic_nack, Status.ESME_RINVCMDLEN):
        # The answer to a broken stream: only ever for one, and always the last word.
        assert broken
        answers.pop()
    asked = Counter(requests)
    answered = Counter(pdu.sequence_of(f) for f in answers)
    # Nothing answered twice or unasked; with the connection open, everything answered.
    assert answered <= asked, (answered, asked)
    if h.open:
        assert answered == asked, (answered, asked)
    # Every submit relayed has been answered: the session holds nothing back.
    assert h.session._in_flight == 0


# The example count is the Hypothesis profile's (tests/conftest.py).
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stream())
def test_fuzz_bound_session(chunks: list[bytes]) -> None:
    _run(True, chunks)


# The example count is the Hypothesis profile's (tests/conftest.py).
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stream())
def test_fuzz_unbound_session(chunks: list[bytes]) -> None:
    _run(False, chunks)


def test_fuzz_checks_can_fail() -> None:
    """The accounting sees requests, a broken stream, and a request answered twice."""
    requests, broken = _requests_read(pdu.build(CommandId.enquire_link, 3) + b"\x00\x00\x00\x01")
    assert (requests, broken) == ([3], True)
    assert _requests_read(pdu.build(CommandId.unbind_resp, 4) + b"\x00") == ([], True)
    assert _requests_read(pdu.build(CommandId.unbind, 5)) == ([5], False)
    assert not Counter([3, 3]) <= Counter(requests)
