"""Held receipts and MO in Redis, and their handover between instances.

API (implemented by the handover work; `smpprelay.store.redis.RedisStore` delegates to it):

``RedisDeliveries(link, prefix, clock)``

- ``hold(item: Held) -> Deferred[None]``: keep ``item`` for its account, durably, where every
  instance sees it (sets ``item.key``); fires once Redis has it.
- ``done(item: Held) -> None``: ``item`` reached its app (or expired): forget it.
"""
