"""The rules' window entries as the sqlite store keeps them: one blob per write-behind.

A write-behind carries every dedup and flood entry of the last second (two per accepted message
at full load: tens of thousands). As rows, each would cost an index insert in the writer's
transaction, and the receipt routes committed with them would wait behind them (measured: p99
added at 2,000 submits/s went from 1.4 ms with the rules off to 45 ms with them on). Packed into
one blob they are one row, which expires whole once its last entry has; at start the segments are
read oldest first and a flood key's later streak replaces its earlier one (the rules sort what
they restore). No Twisted here.

A blob is a run of records of two kinds, told apart by their first byte:

- an entry (byte 0 dedup, 1 flood: the rule), ``_HEAD`` then its key and id: what `pack` makes
  of `WindowEntry` tuples (the only kind before sections; such blobs still load);
- a section (byte ``SECTION``): many entries of one rule that all expire ``span`` after their
  ``at``, as columns (`section`). A rule makes one per write-behind from what it noted, with
  C-speed bulk operations (join, array) instead of a Python object per entry: the relay's
  thread spends about a tenth of what the tuples cost.

Records concatenate: blobs joined are one blob of all their entries, in order.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Collection, Iterable, Iterator, Sequence

from smpprelay.store import WindowEntry, WindowRule

# rule, key length, at, expires, streak, message id length (NO_ID: none); then key, id.
_HEAD = struct.Struct("<BHddIB")
_RULES: tuple[WindowRule, WindowRule] = ("dedup", "flood")
_RULE_NUMBER = {"dedup": 0, "flood": 1}
NO_ID = 255

# SECTION, rule, key size (0: keys of any length, then a column of their lengths), widths
# (WIDE_KEYS: key lengths are H, else B; WIDE_IDS: id lengths are H, else B), entries, bytes
# after this head, span, the latest ``at``; then the columns: key lengths (unless the key size),
# keys, at (d), streaks (I), id lengths (all ones: no id), ids.
SECTION = 2
_SECTION = struct.Struct("<BBHBIIdd")
WIDE_KEYS = 1
WIDE_IDS = 2
# The columns are written little-endian, as the heads are (a file may move between machines).
_SWAP = sys.byteorder != "little"


def pack(entries: Sequence[WindowEntry]) -> bytes:
    """``entries`` as one blob (one record each)."""
    out: list[bytes] = []
    append = out.append
    head = _HEAD.pack
    numbers = _RULE_NUMBER
    for rule, key, at, expires, streak, message_id in entries:
        if message_id is None:
            append(head(numbers[rule], len(key), at, expires, streak, NO_ID))
            append(key)
        else:
            append(head(numbers[rule], len(key), at, expires, streak, len(message_id)))
            append(key)
            append(message_id)
    return b"".join(out)


def _lengths(items: Iterable[bytes]) -> tuple[bytes | array[int], bool]:
    """The lengths of ``items`` as a column: a byte each while they fit below 255 (the no-id
    mark), else two; and whether two."""
    try:
        lengths = bytes(map(len, items))  # C speed; a length past 255 raises
        if b"\xff" not in lengths:
            return lengths, False
    except ValueError:
        pass
    return array("H", map(len, items)), True


def section(
    rule: WindowRule,
    span: float,
    keys: Collection[bytes],
    ats: Collection[float],
    streaks: Iterable[int] | None = None,
    message_ids: Collection[bytes] | None = None,
    key_size: int = 0,
) -> bytes:
    """One section of ``rule``'s entries: ``keys`` in order, each accepted at its ``ats`` and
    expiring ``span`` later, with its streak (0 when None) and message id (None when None).
    Empty when ``keys`` is. ``key_size``: the caller's promise that every key has that size
    (no length column then; keys whose total does not fit get one anyway)."""
    count = len(keys)
    if not count:
        return b""
    joined = b"".join(keys)
    widths = 0
    columns: list[bytes | array[int] | array[float]] = []
    if not key_size or len(joined) != key_size * count:
        key_size = 0
        key_lengths, wide = _lengths(keys)
        columns.append(key_lengths)
        widths |= WIDE_KEYS if wide else 0
    times = array("d", ats)
    if len(times) != count:
        raise ValueError("a window section needs one time per key")
    columns += [joined, times]
    columns.append(bytes(4 * count) if streaks is None else array("I", streaks))
    if message_ids is None:
        columns.append(b"\xff" * count)
    else:
        id_lengths, wide = _lengths(message_ids)
        columns += [id_lengths, b"".join(message_ids)]
        widths |= WIDE_IDS if wide else 0
    if _SWAP:
        for column in columns:
            if isinstance(column, array):
                column.byteswap()
    size = sum(
        len(column) * (column.itemsize if isinstance(column, array) else 1) for column in columns
    )
    rule_number = _RULE_NUMBER[rule]
    head = _SECTION.pack(SECTION, rule_number, key_size, widths, count, size, span, max(ats))
    return b"".join([head, *columns])


def _column(kind: str, data: memoryview) -> array:  # type: ignore[type-arg]
    column = array(kind)
    column.frombytes(data)
    if _SWAP:
        column.byteswap()
    return column


def _unpack_section(blob: bytes, at_byte: int) -> list[WindowEntry]:
    """The entries of the section at ``at_byte``."""
    if at_byte + _SECTION.size > len(blob):
        raise ValueError("a window segment ends inside an entry")
    _, number, key_size, widths, count, size, span, _ = _SECTION.unpack_from(blob, at_byte)
    start = at_byte + _SECTION.size
    end = start + size
    if end > len(blob):
        raise ValueError("a window segment ends inside an entry")
    view = memoryview(blob)
    if key_size:
        key_lengths: Sequence[int] = [key_size] * count
        cut = start
    else:
        kind = "H" if widths & WIDE_KEYS else "B"
        cut = start + count * (2 if kind == "H" else 1)
        key_lengths = _column(kind, view[start:cut])
    keys_end = cut + sum(key_lengths)
    times_end = keys_end + 8 * count
    times = _column("d", view[keys_end:times_end])
    streaks_end = times_end + 4 * count
    streaks = _column("I", view[times_end:streaks_end])
    id_kind = "H" if widths & WIDE_IDS else "B"
    no_id = 0xFFFF if widths & WIDE_IDS else 0xFF
    ids_start = streaks_end + count * (2 if widths & WIDE_IDS else 1)
    id_lengths = _column(id_kind, view[streaks_end:ids_start])
    if len(key_lengths) != count or len(id_lengths) != count or ids_start > end:
        raise ValueError("a window segment ends inside an entry")
    rule = _RULES[number]
    entries: list[WindowEntry] = []
    append = entries.append
    key_at = cut
    id_at = ids_start
    for index in range(count):
        key_length = key_lengths[index]
        key = blob[key_at : key_at + key_length]
        key_at += key_length
        message_id = None
        id_length = id_lengths[index]
        if id_length != no_id:
            message_id = blob[id_at : id_at + id_length]
            id_at += id_length
        at = times[index]
        append(WindowEntry(rule, key, at, at + span, streaks[index], message_id))
    if id_at != end:
        raise ValueError("a window segment ends inside an entry")
    return entries


def _records(blob: bytes) -> Iterator[tuple[int, int, int, float]]:
    """Each record's (start, end, entries, latest expiry), in order."""
    at_byte = 0
    end = len(blob)
    head_size = _HEAD.size
    section_size = _SECTION.size
    while at_byte < end:
        if blob[at_byte] == SECTION:
            if at_byte + section_size > end:
                raise ValueError("a window segment ends inside an entry")
            _, _, _, _, count, size, span, latest = _SECTION.unpack_from(blob, at_byte)
            record_end = at_byte + section_size + size
            expires = latest + span
        else:
            if at_byte + head_size > end:
                raise ValueError("a window segment ends inside an entry")
            _, key_length, _, expires, _, id_length = _HEAD.unpack_from(blob, at_byte)
            record_end = at_byte + head_size + key_length + (0 if id_length == NO_ID else id_length)
            count = 1
        if record_end > end:
            raise ValueError("a window segment ends inside an entry")
        yield at_byte, record_end, count, expires
        at_byte = record_end


def unpack(blob: bytes) -> list[WindowEntry]:
    """The entries of one blob, in the order they were packed."""
    entries: list[WindowEntry] = []
    unpack_head = _HEAD.unpack_from
    size = _HEAD.size
    at_byte = 0
    end = len(blob)
    while at_byte < end:
        if blob[at_byte] == SECTION:
            entries.extend(_unpack_section(blob, at_byte))
            section_size = _SECTION.unpack_from(blob, at_byte)[5]
            at_byte += _SECTION.size + section_size
            continue
        if at_byte + size > end:
            raise ValueError("a window segment ends inside an entry")
        rule, key_length, at, expires, streak, id_length = unpack_head(blob, at_byte)
        at_byte += size
        key = blob[at_byte : at_byte + key_length]
        at_byte += key_length
        message_id = None
        if id_length != NO_ID:
            message_id = blob[at_byte : at_byte + id_length]
            at_byte += id_length
        entries.append(WindowEntry(_RULES[rule], key, at, expires, streak, message_id))
    if at_byte != end:
        raise ValueError("a window segment ends inside an entry")
    return entries


def summary(blob: bytes) -> tuple[int, float]:
    """How many entries ``blob`` holds and when its last one expires (0 when it holds none),
    without reading the entries of its sections."""
    count = 0
    expires = 0.0
    for _, _, entries, record_expires in _records(blob):
        count += entries
        expires = max(expires, record_expires)
    return count, expires


def newest(blob: bytes, limit: int) -> bytes:
    """``blob`` without its oldest entries past ``limit``."""
    records = list(_records(blob))
    excess = sum(record[2] for record in records) - limit
    if excess <= 0:
        return blob
    for start, end, count, _ in records:
        if count <= excess:
            excess -= count
            continue
        if not excess:
            return blob[start:]
        # The oldest record kept only in part (a section: a record is one entry): its newest
        # entries as a section again, which takes ids and keys of any length as the first did.
        _, rule, key_size, _, _, _, span, _ = _SECTION.unpack_from(blob, start)
        kept = _unpack_section(blob, start)[excess:]
        ids = [entry.message_id for entry in kept if entry.message_id is not None]
        return (
            section(
                _RULES[rule],
                span,
                [entry.key for entry in kept],
                [entry.at for entry in kept],
                [entry.streak for entry in kept],
                ids if len(ids) == len(kept) else None,
                key_size,
            )
            + blob[end:]
        )
    return b""


def live(blobs: Iterable[bytes], now: float) -> list[WindowEntry]:
    """The entries of ``blobs`` (oldest first) still live at ``now``, a key's latest only, in
    order of ``at``."""
    latest: dict[tuple[str, bytes], WindowEntry] = {}
    for blob in blobs:
        for entry in unpack(blob):
            latest[entry.rule, entry.key] = entry
    entries = [entry for entry in latest.values() if entry.expires > now]
    entries.sort(key=lambda entry: entry.at)
    return entries
