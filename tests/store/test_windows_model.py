"""Model-based tests of the dedup and flood windows: whatever ``young_max`` is, so whichever
tier an entry is in, every answer equals that of a reference model written with plain dicts.

The programs use six keys, so keys repeat, and time steps that land exactly on the end of a
window. ``max_entries`` never evicts (six keys hold at most twelve entries): one bucket, two,
or 2^16 of them, so that keys share buckets whatever the hash seed.

One difference is allowed, and shown on its own by the last test: when a bucket takes a
record from the dict tier, it drops the records at its front whose window had already ended
(``RecordTable._prune`` from ``_migrate``). No answer of ``claim`` or ``count`` changes (an
ended entry counts for nothing), but ``len`` and ``expire``'s count leave it out before
``expire`` runs. The property tests accept exactly that: only an acceptance may drop entries,
only ended ones, and after ``expire`` the two agree again.
"""

from __future__ import annotations

from itertools import product
from typing import NamedTuple

from hypothesis import example, given, settings
from hypothesis import strategies as st

from smpprelay.store.streaks import FloodStreaks
from smpprelay.store.windows import DEDUP_KEY_SIZE, DedupWindow

WINDOW = 10.0  # the dedup window and the flood gap
# Multiples of 0.5, so every sum and difference of times is exact, and mostly of 2.5, so that
# ``now - t == WINDOW`` happens often (10.0 at once, 5.0 twice, 9.5 + 0.5...).
STEPS = (0.0, 0.0, 0.5, 2.5, 2.5, 5.0, 9.5, 10.0, 12.5)
YOUNG_MAX = (0, 1, 2, 3, 5, 8)  # 8 holds all six keys: the dict tier alone, for comparison
# 1 bucket, 2 buckets, 2^16 buckets. None is ever reached: six keys make at most twelve
# entries (six streaks, and six numbers with messages in flight).
MAX_ENTRIES = (12, 16, 1_000_000)
# The example count is the Hypothesis profile's (tests/conftest.py).
SETTINGS = settings(derandomize=True, database=None, deadline=None)

# Keys of identical bytes, and one that a record of the second key spells from its middle into
# its time: a multiple of 0.5 under 16 (and 0, 20, 24...) packs as six zero bytes, then two
# others. A lookup must pass over such a match, which is not at a record's start.
HALF = DEDUP_KEY_SIZE // 2
DEDUP_KEYS = tuple(bytes([n]) * DEDUP_KEY_SIZE for n in range(5))
DEDUP_KEYS += (DEDUP_KEYS[1][HALF:] + bytes(HALF),)
NUMBERS = tuple(b"790000000%02d" % n for n in range(6))


class Op(NamedTuple):
    """One step of a program: move time on by ``step``, then do ``name``.

    ``key`` indexes the key pool, or the keys in flight for ``accept_claimed``; ``limit`` is
    the flood claim's limit.
    """

    name: str
    step: float
    key: int
    limit: int


def ops(names: tuple[str, ...], limits: tuple[int, ...] = (1,)) -> st.SearchStrategy[list[Op]]:
    """Programs of these operations; each step is one draw among all the combinations (drawing
    the fields one by one made generation most of the run time). Listed twice, the first key
    comes up often enough for short programs to repeat it."""
    combinations = product(names, STEPS, (0, *range(6)), limits)
    op = st.sampled_from([Op(*combination) for combination in combinations])
    # Hypothesis keeps most lists short: half the programs are long enough for every key to
    # go through both tiers and expire several times.
    return st.lists(op, min_size=1, max_size=20) | st.lists(op, min_size=50, max_size=200)


# --- the reference models ----------------------------------------------------------------------


class DedupModel:
    """DedupWindow with plain dicts: accepted keys with their time and id, keys in flight."""

    def __init__(self, window: float, keep_ids: bool) -> None:
        self.window = window
        self.keep_ids = keep_ids
        self.accepted: dict[bytes, tuple[float, bytes]] = {}
        self.pending: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.accepted) + len(self.pending)

    def claim(self, key: bytes, now: float) -> bool | bytes:
        if key in self.accepted:
            accepted, message_id = self.accepted[key]
            if now - accepted < self.window:
                return message_id if self.keep_ids else b""
            del self.accepted[key]
        if key in self.pending:
            return False
        self.pending.add(key)
        return True

    def accept(self, key: bytes, now: float, message_id: bytes) -> None:
        if key in self.pending:
            self.pending.remove(key)
        else:
            self.accepted.pop(key, None)
        self.accepted[key] = (now, message_id)

    def release(self, key: bytes) -> None:
        self.pending.discard(key)

    def ended(self, now: float) -> list[bytes]:
        return [key for key, (t, _) in self.accepted.items() if now - t >= self.window]

    def expire(self, now: float) -> int:
        ended = self.ended(now)
        for key in ended:
            del self.accepted[key]
        return len(ended)


class FloodModel:
    """FloodStreaks with plain dicts: each key's streak (last, length), messages in flight."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.streaks: dict[bytes, tuple[float, int]] = {}
        self.pending: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.streaks) + len(self.pending)

    def _streak(self, key: bytes, now: float) -> int:
        if key in self.streaks:
            last, length = self.streaks[key]
            if now - last < self.gap:
                return length
        return 0

    def count(self, key: bytes, now: float) -> int:
        return self.pending.get(key, 0) + self._streak(key, now)

    def claim(self, key: bytes, now: float, limit: int) -> bool:
        if self.count(key, now) >= limit:
            return False
        self.pending[key] = self.pending.get(key, 0) + 1
        return True

    def release(self, key: bytes) -> None:
        if key in self.pending:
            self.pending[key] -= 1
            if not self.pending[key]:
                del self.pending[key]

    def accept(self, key: bytes, now: float) -> None:
        self.release(key)
        self.streaks[key] = (now, self._streak(key, now) + 1)

    def ended(self, now: float) -> list[bytes]:
        return [key for key, (last, _) in self.streaks.items() if now - last >= self.gap]

    def expire(self, now: float) -> int:
        ended = self.ended(now)
        for key in ended:
            del self.streaks[key]
        return len(ended)


# --- comparing them --------------------------------------------------------------------------


class Dropped:
    """How many ended entries the table has dropped ahead of the model's ``expire``."""

    def __init__(self) -> None:
        self.count = 0

    def check(self, real: int, model: DedupModel | FloodModel, now: float, accepting: bool) -> None:
        """``real`` (the table's len) may lack only ended entries, and only an acceptance (which
        moves an entry into the records) may drop more of them."""
        dropped = len(model) - real
        assert 0 <= dropped <= len(model.ended(now)), (real, len(model))
        assert accepting or dropped <= self.count, "entries dropped by something else"
        self.count = dropped

    def check_expire(self, removed: int, expected: int, real: int, model_len: int) -> None:
        """``expire`` removes what the model removes but the entries already dropped."""
        assert removed == expected - self.count
        assert real == model_len
        self.count = 0


@SETTINGS
@given(
    young_max=st.sampled_from(YOUNG_MAX),
    max_entries=st.sampled_from(MAX_ENTRIES),
    keep_ids=st.booleans(),
    program=ops(("claim", "accept", "accept_claimed", "release", "expire")),
)
@example(  # a record's window ends exactly at 10.0: a duplicate at 9.5, reserved anew at 10.0
    young_max=0,
    max_entries=12,
    keep_ids=True,
    program=[Op("accept", 0.0, 1, 1), Op("claim", 9.5, 1, 1), Op("claim", 0.5, 1, 1)],
)
@example(  # key 1's record at 0.5 spells key 5 from its 7th byte: no match, key 5 is reserved
    young_max=0,
    max_entries=12,
    keep_ids=False,
    program=[Op("accept", 0.5, 1, 1), Op("claim", 0.0, 5, 1), Op("claim", 0.0, 1, 1)],
)
def test_dedup_window_behaves_as_its_model(
    young_max: int, max_entries: int, keep_ids: bool, program: list[Op]
) -> None:
    """Every claim (reserved, in flight, or a duplicate with its id), acceptance with or without
    a claim, release, expiry and len of a DedupWindow matches the model, in either tier."""
    window = DedupWindow(WINDOW, max_entries, keep_ids=keep_ids, young_max=young_max)
    model = DedupModel(WINDOW, keep_ids)
    dropped = Dropped()
    now = 0.0
    for number, op in enumerate(program):
        now += op.step
        key = DEDUP_KEYS[op.key]
        if op.name == "claim":
            assert window.claim(key, now) == model.claim(key, now)
        elif op.name in ("accept", "accept_claimed"):
            if op.name == "accept_claimed":  # the normal path: a key in flight
                if not model.pending:
                    continue
                key = sorted(model.pending)[op.key % len(model.pending)]
            message_id = b"id-%d" % number
            window.accept(key, now, message_id)
            model.accept(key, now, message_id)
        elif op.name == "release":
            window.release(key)
            model.release(key)
        else:
            expected = model.expire(now)
            dropped.check_expire(window.expire(now), expected, len(window), len(model))
        dropped.check(len(window), model, now, accepting=op.name.startswith("accept"))
        if keep_ids:  # no id outlives its entry, and every live entry keeps its own
            assert window._ids is not None
            live = set(model.accepted) - set(model.ended(now))
            assert live <= set(window._ids) <= set(model.accepted)
    assert window.evicted == 0
    assert window.expire(now + WINDOW) == len(model.accepted) - dropped.count
    assert len(window) == len(model.pending)
    assert not window._ids


@SETTINGS
@given(
    young_max=st.sampled_from(YOUNG_MAX),
    max_entries=st.sampled_from(MAX_ENTRIES),
    program=ops(("claim", "accept", "accept_claimed", "release", "expire", "count"), (1, 2, 3, 4)),
)
@example(  # a streak in the records ends exactly at 10.0: counted at 9.5, not at 10.0, and an
    # acceptance at 10.0 starts a new one
    young_max=0,
    max_entries=12,
    program=[
        Op("accept", 0.0, 0, 1),
        Op("count", 9.5, 0, 1),
        Op("count", 0.5, 0, 1),
        Op("accept", 0.0, 0, 1),
        Op("claim", 0.0, 0, 2),
        Op("claim", 0.0, 0, 2),
    ],
)
def test_flood_streaks_behave_as_their_model(
    young_max: int, max_entries: int, program: list[Op]
) -> None:
    """Every count, claim under a limit, acceptance with or without a claim, release, expiry
    and len of FloodStreaks matches the model, in either tier."""
    streaks = FloodStreaks(WINDOW, max_entries, young_max=young_max)
    model = FloodModel(WINDOW)
    dropped = Dropped()
    now = 0.0
    for op in program:
        now += op.step
        key = NUMBERS[op.key]
        if op.name == "claim":
            assert streaks.claim(key, now, op.limit) == model.claim(key, now, op.limit)
        elif op.name == "count":
            assert streaks.count(key, now) == model.count(key, now)
        elif op.name in ("accept", "accept_claimed"):
            if op.name == "accept_claimed":  # the normal path: a key with a message in flight
                if not model.pending:
                    continue
                key = sorted(model.pending)[op.key % len(model.pending)]
            streaks.accept(key, now)
            model.accept(key, now)
        elif op.name == "release":
            streaks.release(key)
            model.release(key)
        else:
            expected = model.expire(now)
            dropped.check_expire(streaks.expire(now), expected, len(streaks), len(model))
        dropped.check(len(streaks), model, now, accepting=op.name.startswith("accept"))
    assert streaks.evicted == 0
    assert all(streaks.count(key, now) == model.count(key, now) for key in NUMBERS)
    assert streaks.expire(now + WINDOW) == len(model.streaks) - dropped.count
    assert len(streaks) == len(model.pending)


# --- the one difference, on purpose -------------------------------------------------------------


def test_an_ended_entry_may_go_when_its_bucket_takes_a_record() -> None:
    """A bucket that takes a record drops the ended records at its front at once (their memory
    comes back without waiting for the sweep): ``len`` leaves them out from then on, and
    ``expire`` counts only what it removes itself. No answer changes."""
    window = DedupWindow(WINDOW, 12, young_max=0)  # one bucket: both records share it
    window.accept(DEDUP_KEYS[0], 0.0, b"")
    window.accept(DEDUP_KEYS[1], 10.0, b"")  # the first's window ended: pruned as this moves in
    assert len(window) == 1
    assert window.expire(10.0) == 0
    assert window.claim(DEDUP_KEYS[0], 10.0) is True
    streaks = FloodStreaks(WINDOW, 12, young_max=0)
    streaks.accept(NUMBERS[0], 0.0)
    streaks.accept(NUMBERS[1], 10.0)
    assert len(streaks) == 1
    assert streaks.expire(10.0) == 0
    assert streaks.count(NUMBERS[0], 10.0) == 0
