"""Failed binds per address counted in Redis, so a brute force spread over several relay
instances is cut off on all of them (`smpprelay.access.Access` asks it; ``store: redis``).

Keys: ``{prefix}l:{host}`` counts failures (``INCR``, expiring ``bind_failure_window`` after
the first: a fixed window, where the in-process count slides), ``{prefix}l:lock:{host}`` is the
lock-out itself (expiring after ``lockout``). One script per failure: atomic, so failures
arriving on two instances at once are both counted and lock the address out once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from smpprelay.store.redis_link import RedisLink, Script

# Returns the lock-out's remaining milliseconds (0: not locked out). A failure while locked out
# is not counted again (as in-process).
_FAILED = Script(
    "bind-failed",
    """
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return left end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return tonumber(ARGV[3])
end
return 0
""",
)


class RedisLockouts:
    """Bind failures and lock-outs per address, shared by every instance through Redis."""

    def __init__(self, link: RedisLink, prefix: str) -> None:
        self.link = link
        self.prefix = prefix

    def _keys(self, host: str) -> list[str]:
        return [f"{self.prefix}l:{host}", f"{self.prefix}l:lock:{host}"]

    def failed(self, host: str, window: float, limit: int, lockout: float) -> Deferred[float]:
        """Count a failed bind from ``host``; fires with the seconds it is locked out for
        (0: not locked out)."""
        args = [int(window * 1000), limit, int(lockout * 1000)]

        def seconds(reply: Any) -> float:
            return max(0, int(reply)) / 1000

        return self.link.run(_FAILED, self._keys(host), args).addCallback(seconds)

    def locked_for(self, host: str) -> Deferred[float]:
        """Seconds ``host`` stays locked out (0: it is not)."""

        def seconds(reply: Any) -> float:
            return max(0, int(reply)) / 1000

        return self.link.call("PTTL", self._keys(host)[1]).addCallback(seconds)
