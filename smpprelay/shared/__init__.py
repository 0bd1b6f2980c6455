"""The rules' state shared by several relay instances through Redis (`store: {backend: redis}`).

With one process the rules keep their windows in memory (`smpprelay.filters`). With several, a
decision must see every instance's traffic, so it is taken in Redis, atomically, by a Lua script:
`windows` (dedup and flood together, one round trip per submit, pipelined on the one connection),
`concat` (parts assembled in Redis, the whole message released once, to one instance), and
`chain` (the rules in the operator's order, answering with a Deferred verdict).
"""
