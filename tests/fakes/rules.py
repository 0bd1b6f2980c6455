"""A rule whose verdicts the test scripts, for the chain and relay tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from smpprelay.filters.base import Dropped, PartsOutcome
from smpprelay.message import Message, Verdict
from smpprelay.store import WindowEntry, window_segments


def written_behind(rule: Any) -> list[WindowEntry]:
    """What a rule (or a chain) writes behind now (its `window_segment`), read back."""
    return window_segments.unpack(rule.window_segment())


class ScriptedRule:
    """Answers ``decide(message)``; records what it checked, settled and was told of parts."""

    name: ClassVar[str] = "scripted"
    settles: ClassVar[bool] = True
    holds_parts: ClassVar[bool] = True

    def __init__(self, decide: Callable[[Message], Verdict]) -> None:
        self.decide = decide
        self.checked: list[Message] = []
        self.settled: list[tuple[Message, bytes | None]] = []
        self.parts_outcomes: list[tuple[Message, PartsOutcome]] = []

    def check(self, message: Message, now: float) -> Verdict:
        self.checked.append(message)
        return self.decide(message)

    def settle(self, message: Message, now: float, message_id: bytes | None) -> None:
        self.settled.append((message, message_id))

    def expire(self, now: float) -> Sequence[Dropped]:
        return ()

    def drop_all(self) -> Sequence[Dropped]:
        return ()

    def parts_settled(self, message: Message, now: float, outcome: PartsOutcome) -> None:
        self.parts_outcomes.append((message, outcome))

    def window_segment(self) -> bytes:
        return b""

    def restore_windows(self, entries: Sequence[WindowEntry], now: float) -> int:
        return 0

    def restore_part(self, part: Message, first: float) -> None:
        pass

    def release_part(self, part: Message) -> None:
        pass
