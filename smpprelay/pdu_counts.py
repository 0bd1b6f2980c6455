"""The count of PDUs per side, direction and command (smpprelay_pdus), kept so that counting
one costs a slice and a dict update: `Metrics.count_pdu` runs four times per relayed submit."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from smpprelay.collectors import PlainCounter
from smpprelay.pdu import CommandId, command_label

_COMMANDS = frozenset(CommandId)
_OTHER = -1
_OTHER_KEY = b""  # never a frame's command_id bytes (always 4)


class PduCounter(PlainCounter):
    """`PlainCounter` of the PDUs, counted per side and direction under the frame's raw
    command_id bytes (``tables``, `Metrics.count_pdu`) and exported as (side, direction,
    command_id) keys, in the order each was first counted: the series and their order are those
    of a `PlainCounter` the hot path counted under those keys."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]) -> None:
        super().__init__(name, documentation, labelnames, _labels)
        self.tables: dict[str, dict[str, dict[bytes, int]]] = {
            side: {"in": {}, "out": {}} for side in ("downstream", "upstream", "simulator")
        }
        # (table, raw key, export key) in the order first counted.
        self._order: list[tuple[dict[bytes, int], bytes, tuple[str, str, int]]] = []

    def first(self, counts: dict[bytes, int], side: str, direction: str, raw: bytes) -> None:
        """Count a command_id not yet counted in ``counts`` (or one not in SMPP 3.4)."""
        command_id = int.from_bytes(raw)
        if command_id not in _COMMANDS:
            # One label for all of them keeps the series bounded.
            command_id, raw = _OTHER, _OTHER_KEY
            if raw in counts:
                counts[raw] += 1
                return
        counts[raw] = 1
        self._order.append((counts, raw, (side, direction, command_id)))

    def collect(self) -> Iterator[Metric]:
        # The scrape runs in a thread: the list copy and each read are one step under the GIL.
        family = self._family()
        for counts, raw, key in self._order.copy():
            family.add_metric(self.labels(key), counts[raw])
        yield family


def _labels(key: tuple[str, str, int]) -> list[str]:
    side, direction, command_id = key
    return [side, direction, command_label(command_id)]
