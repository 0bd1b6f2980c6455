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


# One route as stored: complex(expires, account number), or with the id the app was given
# when it is not the operator's, (that complex, app id). A complex number is 32 bytes and never
# tracked by the garbage collector; a `Route` object and its float took 80 (README "Receipts
# and MO" has the bytes per route, measured by benchmarks/state_memory.py).
_Stored = complex | tuple[complex, bytes]


class ReceiptRoutes:
    """Operator message id (normalised) -> `Route`, oldest first, bounded and expiring.

    Every entry lives equally long, so insertion order is expiry order and expiring only ever
    looks at the front.
    """

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._routes: OrderedDict[str, _Stored] = OrderedDict()
        self._accounts: list[str] = []  # account number -> name
        self._numbers: dict[str, int] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._routes)

    def add(self, message_id: str, account: str, now: float, app_id: bytes | None = None) -> bool:
        """Remember where the receipt for ``message_id`` goes.

        Returns True when that took the place of the oldest route (``max_entries`` reached).
        """
        number = self._numbers.get(account)
        if number is None:
            number = self._numbers[account] = len(self._accounts)
            self._accounts.append(account)
        stored = complex(now + self.ttl, number)
        routes = self._routes
        routes.pop(message_id, None)
        routes[message_id] = stored if app_id is None else (stored, app_id)
        if len(routes) > self.max_entries:
            routes.popitem(last=False)
            self.evicted += 1
            return True
        return False

    def get(self, message_id: str, now: float) -> Route | None:
        """The route for ``message_id``, if it is known and has not expired."""
        stored = self._routes.get(message_id)
        if stored is None:
            return None
        when, app_id = (stored, None) if isinstance(stored, complex) else stored
        if when.real <= now:
            return None
        return Route(self._accounts[int(when.imag)], app_id, when.real)

    def cut_back(self, message_id: str, expires: float) -> None:
        """Let the route for ``message_id`` end at ``expires`` if that is sooner.

        It moves to the back, out of expiry order: `expire` removes it once the routes before
        it are gone, and `get` treats it as gone from ``expires`` on.
        """
        stored = self._routes.get(message_id)
        if stored is None:
            return
        when, app_id = (stored, None) if isinstance(stored, complex) else stored
        if expires >= when.real:
            return
        shorter = complex(expires, when.imag)
        del self._routes[message_id]
        self._routes[message_id] = shorter if app_id is None else (shorter, app_id)

    def expire(self, now: float) -> int:
        """Forget every expired route; return how many."""
        routes = self._routes
        dropped = 0
        while routes:
            first = next(iter(routes.values()))
            expires = first.real if isinstance(first, complex) else first[0].real
            if expires > now:
                break
            routes.popitem(last=False)
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
