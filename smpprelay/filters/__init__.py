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

    ``secret`` (`smpprelay.store.Store.secret` of a durable store) keys the dedup rule's digest,
    so that its window means the same to the next process, and makes the dedup and flood rules
    note what they accept for `FilterChain.window_segment`; without it (the memory store) the
    dedup rule keys by the interpreter's faster hash and nothing is noted.
    """
    write_behind = secret is not None
    rules: list[Filter] = []
    encoding = None
    if config.encoding.enabled:
        encoding = EncodingFilter(config.encoding, upstream_iso, metrics)
        rules.append(encoding)
    if config.concat.enabled:
        # IA5 parts are transcoded as one text when glued (`EncodingFilter.transcode_glued`).
        transcode = None
        if encoding is not None:
            encoding.glues_parts = True
            transcode = encoding.transcode_glued
        rules.append(ConcatFilter(config.concat, metrics, transcode))
    if config.dedup.enabled:
        rules.append(DedupFilter(config.dedup, metrics, secret, write_behind))
    if config.flood.enabled:
        rules.append(FloodFilter(config.flood, metrics, write_behind))
    return FilterChain(rules, metrics)
