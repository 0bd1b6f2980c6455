"""Python's cyclic garbage collector set for a process that runs the relay.

Two things, both once the reactor runs (`tune_collector`):

- Everything built at start lives as long as the process: `gc.freeze` moves it out of the
  collector's reach, which keeps full collections short (p99 at full load: ~20 ms -> ~5 ms).
- A relayed submit allocates a few dozen tracked objects (its message, records, tuples), nearly
  all freed by their reference counts within the round trip. A young collection only walks the
  objects still alive when it runs, which on the hot path are the submits in flight; at the
  default threshold (700 allocations) it ran every few submits and walked the same in-flight
  state each time. At 20,000 it runs about 30 times less often for the same work each run:
  measured with the C peers, 0.5 to 1.2 us less CPU per submit (``benchmarks/relay_bench.py
  --peer c``). Garbage in cycles (rare here) waits a little longer for its collection.

Process-wide, so called by ``twistd smpprelay`` and the benchmark's relay, not by services that
tests start in-process.
"""

from __future__ import annotations

import gc

# Allocations between young collections, and young (then middle) collections between older
# ones: see the module docstring.
THRESHOLDS = (20_000, 20, 20)


def tune_collector() -> None:
    """Freeze what exists now and set the collector's thresholds (`THRESHOLDS`)."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
