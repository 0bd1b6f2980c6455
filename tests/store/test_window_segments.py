"""Window entries packed into one blob per write-behind, and read back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smpprelay.store import WindowEntry, WindowRule
from smpprelay.store.window_segments import live, newest, pack, section, summary, unpack

ENTRIES = st.lists(
    st.builds(
        WindowEntry,
        st.sampled_from(["dedup", "flood"]),
        st.binary(min_size=1, max_size=300),
        st.floats(0, 1e10),
        st.floats(0, 1e10),
        st.integers(0, 2**32 - 1),
        st.none() | st.binary(max_size=254),
    ),
    max_size=50,
)


@given(ENTRIES)
def test_what_is_packed_unpacks_the_same(entries: list[WindowEntry]) -> None:
    assert unpack(pack(entries)) == entries


def test_a_blob_cut_short_is_refused() -> None:
    blob = pack([WindowEntry("dedup", b"k" * 12, 1.0, 61.0, 0, b"id")])
    with pytest.raises(ValueError, match="inside an entry"):
        unpack(blob[:-1])


def test_live_keeps_a_keys_latest_write_and_drops_the_ended() -> None:
    older = pack(
        [
            WindowEntry("flood", b"79001", 10.0, 40.0, 3),
            WindowEntry("dedup", b"d" * 12, 11.0, 71.0, 0, b"m1"),
            WindowEntry("dedup", b"e" * 12, 5.0, 30.0, 0, b"m0"),  # ended at 30
        ]
    )
    newer = pack([WindowEntry("flood", b"79001", 20.0, 50.0, 4)])
    assert live([older, newer], now=35.0) == [
        WindowEntry("dedup", b"d" * 12, 11.0, 71.0, 0, b"m1"),
        WindowEntry("flood", b"79001", 20.0, 50.0, 4),
    ]


SECTIONS = st.lists(
    st.tuples(
        st.sampled_from(["dedup", "flood"]),
        st.floats(0, 1e6),  # span
        st.lists(
            st.tuples(
                st.binary(min_size=1, max_size=300),
                st.floats(0, 1e10),
                st.integers(0, 2**32 - 1),
                st.binary(max_size=300),
            ),
            max_size=20,
        ),
        st.booleans(),  # with ids (dedup) or streaks (flood)
    ),
    max_size=4,
)


def packed(rule: WindowRule, span: float, rows: list[Any], extra: bool) -> tuple[bytes, list[Any]]:
    """A section of ``rows`` and the entries it must read back as (a key's last row wins
    only in `live`: a section keeps them all)."""
    keys = [key for key, _, _, _ in rows]
    ats = [at for _, at, _, _ in rows]
    streaks = [streak for _, _, streak, _ in rows] if extra else None
    ids = [message_id for _, _, _, message_id in rows] if extra else None
    entries = [
        WindowEntry(rule, key, at, at + span, streak if extra else 0, message_id if extra else None)
        for key, at, streak, message_id in rows
    ]
    return section(rule, span, keys, ats, streaks, ids), entries


@given(SECTIONS, ENTRIES)
def test_sections_and_entries_read_back_in_order_and_concatenate(
    sections: list[Any], old: list[WindowEntry]
) -> None:
    blob = pack(old)
    expected = list(old)
    for rule, span, rows, extra in sections:
        part, entries = packed(rule, span, rows, extra)
        blob += part
        expected += entries
    assert unpack(blob) == expected
    count, expires = summary(blob)
    assert count == len(expected)
    assert expires == max((entry.expires for entry in expected), default=0.0)


@given(SECTIONS, st.integers(0, 100))
def test_newest_keeps_exactly_the_newest_entries(sections: list[Any], limit: int) -> None:
    blob = pack([WindowEntry("flood", b"old", 1.0, 2.0, 1)])
    for rule, span, rows, extra in sections:
        blob += packed(rule, span, rows, extra)[0]
    entries = unpack(blob)
    assert unpack(newest(blob, limit)) == entries[max(0, len(entries) - limit) :]


def test_newest_keeps_long_ids_and_keys_of_a_section_cut_in_part() -> None:
    """Ids of 255 octets and more (the per-entry records' "no id" mark and past a byte) survive
    a section kept only in part: it is written as a section again."""
    ids = [b"i" * 255, b"j" * 300, b"k" * 2]
    keys = [b"a" * 300, b"b" * 12, b"c" * 12]
    blob = section("dedup", 60.0, keys, [1.0, 2.0, 3.0], None, ids)
    assert unpack(newest(blob, 2)) == [
        WindowEntry("dedup", b"b" * 12, 2.0, 62.0, 0, b"j" * 300),
        WindowEntry("dedup", b"c" * 12, 3.0, 63.0, 0, b"k" * 2),
    ]
    streaks = section("flood", 30.0, keys, [1.0, 2.0, 3.0], [4, 5, 6])
    assert unpack(newest(streaks, 1)) == [WindowEntry("flood", b"c" * 12, 3.0, 33.0, 6, None)]


def test_dedup_keys_of_their_fixed_size_are_packed_without_lengths() -> None:
    keys = [b"a" * 12, b"b" * 12]
    fixed = section("dedup", 60.0, keys, [1.0, 2.0], None, [b"m1", b"m2"], key_size=12)
    assert len(fixed) == len(section("dedup", 60.0, keys, [1.0, 2.0], None, [b"m1", b"m2"])) - 2
    # A key of another size after all: packed with lengths, read back the same.
    odd = section("dedup", 60.0, [b"a" * 12, b"b" * 11], [1.0, 2.0], None, [b"m", b"n"], 12)
    assert [entry.key for entry in unpack(odd)] == [b"a" * 12, b"b" * 11]
    assert unpack(fixed) == [
        WindowEntry("dedup", b"a" * 12, 1.0, 61.0, 0, b"m1"),
        WindowEntry("dedup", b"b" * 12, 2.0, 62.0, 0, b"m2"),
    ]


def test_a_section_cut_short_is_refused() -> None:
    blob = section("flood", 30.0, [b"447700900123"], [1.0], [3])
    assert section("flood", 30.0, [], []) == b""
    for cut in (1, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ValueError, match="inside an entry"):
            unpack(blob[:cut])
        with pytest.raises(ValueError, match="inside an entry"):
            summary(blob[:cut])


def test_live_takes_a_sections_streak_over_an_older_entrys() -> None:
    older = pack([WindowEntry("flood", b"79001", 10.0, 40.0, 3)])
    newer = section("flood", 30.0, [b"79001", b"79002"], [20.0, 21.0], [4, 1])
    assert live([older, newer], now=35.0) == [
        WindowEntry("flood", b"79001", 20.0, 50.0, 4),
        WindowEntry("flood", b"79002", 21.0, 51.0, 1),
    ]
