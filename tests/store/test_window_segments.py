"""Window entries packed into one blob per write-behind, and read back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smpprelay.store import WindowEntry
from smpprelay.store.window_segments import live, pack, unpack

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
