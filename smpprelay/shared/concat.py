"""The concatenation rule across instances: parts are assembled in Redis.

API (implemented by the concat work; the shared chain calls it):

``SharedConcat(link, prefix, config: ConcatRule, metrics, transcode, max_tlvs)``

- ``check(message, now) -> Deferred[Verdict]`` for a part (``message.concat`` set, its
  ``app_message_id`` issued): ``Verdict("hold")`` once the part is in Redis (the relay then
  answers ESME_ROK with ``message.app_message_id`` at once: the part is as durable as Redis);
  ``accept(glued)`` when this part completed the message (exactly one instance ever gets it;
  ``glued.parts`` are the parts in sequence order, read from their frames, each with its
  ``app_message_id`` and ``receipt_as``); ``reject(...)`` or ``Verdict("replay", message_id=...)``
  with the reasons of `smpprelay.filters.concat.ConcatFilter`.
- ``parts_settled(message, now, outcome) -> None``: "accepted" or "refused" close the message;
  "retry" puts its held parts back so the app's retry of the completing part completes it again.
- ``expire(now) -> Deferred[list[Dropped]]``: the messages whose window ended, each claimed by
  exactly one instance (whose relay sends their parts' EXPIRED receipts).
"""
