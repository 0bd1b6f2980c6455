"""The operator's rules, one module each, run in order by `smpprelay.filters.base.FilterChain`."""
