"""In-memory tables: bounded in size, entries expire; what they hold is lost on restart
(the memory backend keeps everything in them; the sqlite one only a working set)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Literal

import attrs

# What the router carries back to apps: a delivery receipt or a mobile-originated message.
DeliveryKind = Literal["receipt", "mo"]


@attrs.frozen(slots=True)
class Route:
    """Where a receipt for one operator message id goes.

    ``app_message_id`` is set only when the app was given another id than the operator's
    (the receipt must then be rewritten); ``None`` means the ids are the same.
    """

    account: str
    app_message_id: bytes | None
    expires: float
    # The operator's id exactly as it gave it, when that is not its normalised form (the key):
    # what query_sm, cancel_sm and replace_sm must name upstream. None: the key is exact.
    operator_id: str | None = None


# One route as stored: complex(expires, account number), or with the id the app was given
# when it is not the operator's, (that complex, app id), or with the operator's exact id when
# it is not the key, (that complex, app id or None, exact id). A complex number is 32 bytes and
# never tracked by the garbage collector; a `Route` object and its float took 80 (README
# "Receipts and MO" has the bytes per route, measured by benchmarks/state_memory.py).
_Stored = complex | tuple[complex, bytes] | tuple[complex, bytes | None, str]


def _pack(when: complex, app_id: bytes | None, exact: str | None) -> _Stored:
    if exact is not None:
        return (when, app_id, exact)
    return when if app_id is None else (when, app_id)


def _unpack(stored: _Stored) -> tuple[complex, bytes | None, str | None]:
    if isinstance(stored, complex):
        return stored, None, None
    if len(stored) == 2:
        return stored[0], stored[1], None
    return stored


class ReceiptRoutes:
    """Operator message id (normalised) -> `Route`, oldest first, bounded and expiring.

    Every entry lives equally long, so insertion order is expiry order and expiring only ever
    looks at the front. Routes whose app was given another id (a relay-issued one) are also
    found by that id (`find_app`): an index that costs nothing for the others.
    """

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._routes: OrderedDict[str, _Stored] = OrderedDict()
        self._accounts: list[str] = []  # account number -> name
        self._numbers: dict[str, int] = {}
        self._by_app: dict[bytes, list[str]] = {}  # app id -> keys of its routes
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._routes)

    def add(
        self,
        message_id: str,
        account: str,
        now: float,
        app_id: bytes | None = None,
        exact: str | None = None,
    ) -> bool:
        """Remember where the receipt for ``message_id`` goes (``exact``: the operator's id as
        it gave it, when not ``message_id``).

        Returns True when that took the place of the oldest route (``max_entries`` reached).
        """
        number = self._numbers.get(account)
        if number is None:
            number = self._numbers[account] = len(self._accounts)
            self._accounts.append(account)
        stored = _pack(complex(now + self.ttl, number), app_id, exact)
        routes = self._routes
        old = routes.pop(message_id, None)
        if old is not None and not isinstance(old, complex):
            self._unindex(message_id, old)
        routes[message_id] = stored
        if app_id is not None:
            self._by_app.setdefault(app_id, []).append(message_id)
        if len(routes) > self.max_entries:
            self._pop_oldest()
            self.evicted += 1
            return True
        return False

    def _pop_oldest(self) -> None:
        key, stored = self._routes.popitem(last=False)
        if not isinstance(stored, complex):
            self._unindex(key, stored)

    def _unindex(self, key: str, stored: _Stored) -> None:
        app_id = _unpack(stored)[1]
        if app_id is None:
            return
        keys = self._by_app.get(app_id)
        if keys is not None and key in keys:
            keys.remove(key)
            if not keys:
                del self._by_app[app_id]

    def get(self, message_id: str, now: float) -> Route | None:
        """The route for ``message_id``, if it is known and has not expired."""
        stored = self._routes.get(message_id)
        if stored is None:
            return None
        when, app_id, exact = _unpack(stored)
        if when.real <= now:
            return None
        return Route(self._accounts[int(when.imag)], app_id, when.real, exact)

    def find_app(self, app_id: bytes, now: float) -> list[tuple[str, Route]]:
        """(key, route) of every live route whose app was given ``app_id``, oldest first."""
        found = []
        for key in self._by_app.get(app_id, ()):
            route = self.get(key, now)
            if route is not None:
                found.append((key, route))
        return found

    def cut_back(self, message_id: str, expires: float) -> None:
        """Let the route for ``message_id`` end at ``expires`` if that is sooner.

        It moves to the back, out of expiry order: `expire` removes it once the routes before
        it are gone, and `get` treats it as gone from ``expires`` on.
        """
        stored = self._routes.get(message_id)
        if stored is None:
            return
        when, app_id, exact = _unpack(stored)
        if expires >= when.real:
            return
        del self._routes[message_id]
        self._routes[message_id] = _pack(complex(expires, when.imag), app_id, exact)

    def expire(self, now: float) -> int:
        """Forget every expired route; return how many."""
        routes = self._routes
        dropped = 0
        while routes:
            first = next(iter(routes.values()))
            expires = first.real if isinstance(first, complex) else first[0].real
            if expires > now:
                break
            self._pop_oldest()
            dropped += 1
        return dropped


@attrs.define(slots=True)
class Held:
    """One receipt or MO waiting for its app."""

    kind: DeliveryKind
    account: str
    frame: bytes  # the deliver_sm to send the app (its sequence number is replaced on send)
    expires: float
    attempts: int = 0
    # Its row in a durable store once written there (0: not stored, or the memory backend).
    key: int = 0


class HeldDeliveries:
    """Receipts and MO waiting per account; bounded in total, each with a deadline."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._queues: dict[str, deque[Held]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def count(self, account: str) -> int:
        """How many deliveries wait for ``account``."""
        queue = self._queues.get(account)
        return len(queue) if queue else 0

    @property
    def full(self) -> bool:
        """True when nothing more can be held."""
        return self._count >= self.max_entries

    def hold(self, item: Held, force: bool = False) -> bool:
        """Keep ``item``; False when the table is full (``force``: keep it anyway, for what
        is already stored or was checked before its write)."""
        if self.full and not force:
            return False
        self._queues.setdefault(item.account, deque()).append(item)
        self._count += 1
        return True

    def take(self, account: str) -> Held | None:
        """The oldest delivery waiting for ``account``."""
        queue = self._queues.get(account)
        if not queue:
            return None
        self._count -= 1
        item = queue.popleft()
        if not queue:
            del self._queues[account]
        return item

    def accounts(self) -> list[str]:
        """Accounts with something waiting."""
        return list(self._queues)

    def expire(self, now: float) -> Iterator[Held]:
        """Remove and yield every delivery past its deadline."""
        for account in list(self._queues):
            queue = self._queues[account]
            kept = deque(item for item in queue if item.expires > now)
            expired = [item for item in queue if item.expires <= now]
            # Update the store before yielding, so count() is right for whoever iterates.
            self._count -= len(expired)
            if kept:
                self._queues[account] = kept
            else:
                del self._queues[account]
            yield from expired
