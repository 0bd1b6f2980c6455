"""The operator's rules, one module each, run in order by `smpprelay.filters.base.FilterChain`."""

from __future__ import annotations

from smpprelay.config import FiltersConfig
from smpprelay.filters.base import Filter, FilterChain
from smpprelay.filters.concat import ConcatFilter
from smpprelay.filters.dedup import DedupFilter
from smpprelay.filters.encoding import EncodingFilter
from smpprelay.filters.flood import FloodFilter
from smpprelay.metrics import Metrics


def build_chain(
    config: FiltersConfig, upstream_iso: bool, metrics: Metrics, secret: bytes | None = None
) -> FilterChain:
    """The enabled rules in the operator's order: encoding, concat, dedup, flood.

    ``secret`` (`smpprelay.store.Store.secret`) keys the dedup rule's digest, so that its window
    means the same to the next process; without it the rule keys by the interpreter's hash.
    """
    rules: list[Filter] = []
    if config.encoding.enabled:
        rules.append(EncodingFilter(config.encoding, upstream_iso, metrics))
    if config.concat.enabled:
        rules.append(ConcatFilter(config.concat, metrics))
    if config.dedup.enabled:
        rules.append(DedupFilter(config.dedup, metrics, secret))
    if config.flood.enabled:
        rules.append(FloodFilter(config.flood, metrics))
    return FilterChain(rules, metrics)
