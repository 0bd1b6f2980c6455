"""The dedup and flood rules across instances: one Lua script decides both, atomically.

API (implemented by the windows work; the shared chain calls it):

``SharedWindows(link, prefix, dedup: DedupRule | None, flood: FloodRule | None, metrics, secret)``

- ``claim(message, now) -> Deferred[Verdict]``: ACCEPT (the message is reserved in flight in both
  windows), or the dedup rule's ``duplicate`` / ``in_flight`` / replay, or the flood rule's
  ``flood``; one script, one round trip.
- ``settle(message, now, message_id) -> None``: accepted (recorded, from ``now``) or released.
"""
