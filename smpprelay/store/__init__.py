"""The state the relay keeps for what it answered, behind one interface: `Store`.

Three backends are meant to fit it: ``memory`` (`smpprelay.store.memory`: fastest, lost on
restart), ``sqlite`` (`smpprelay.store.sqlite`: the default, one file, survives a restart,
kill -9 and, with ``sync: full``, a power cut) and later ``redis`` (several relay instances
share one store). What a store keeps, and when it must have it:

========================  ===========================================  ==========================
state                     written                                      call
========================  ===========================================  ==========================
receipt route (id map)    before the app gets ``ESME_ROK``             `Store.add_route_cb`
held receipt / MO         before the operator's ``deliver_sm`` is      `Store.hold_delivery`
                          answered ``ESME_ROK``
held concatenated part    before the part's ``ESME_ROK``               `Store.hold_part`
dedup and flood windows   write-behind, at most one second late        `Store.save_windows`
========================  ===========================================  ==========================

A route is written for every message the operator accepted (receipt asked for or not): it is
also the id map query_sm, cancel_sm and replace_sm read (`smpprelay.operations.queries`). It is
keyed by the operator's id, normalised; it keeps the operator's exact id when that differs
(``operator_id``) and the id the app was given when that is not the operator's
(``app_message_id``, a relay-issued id), by which `find_app_id` finds it (several routes for one
app id: a submit_multi's messages share the relay's id).

**Asynchronous** (a remote store must answer them; each returns a `Deferred` that fires once the
write is durable, or fails with `StoreUnavailable`, and the acknowledgement that depends on it
is sent only then): `add_route` (and `add_route_cb`, the same write reporting to a callback: no
`Deferred` per route on the relay's hot path), `find_route`, `find_app_id`, `hold_delivery`,
`hold_part`, `replace_part`, `save_windows`, `close`.

**Synchronous** (only this instance needs them, or they may be lost at a crash without breaking a
promise): `start`, `load` (once, at start, before the app listener opens: what the last run left),
`route_final`, `delivered`, `parts_done` (forgetting is fire-and-forget: a crash before it is
written means at most one delivery again, never a loss), `expire` (removes expired rows in
small batches, off the reactor), `stats`.

A store that cannot write says so in `writable` and `problem`; the relay then refuses what would
need a write (``ESME_RMSGQFUL`` to apps, ``ESME_RX_T_APPN`` to the operator) until it can again.
``secret`` keys the dedup rule's digest: the same across restarts for a durable store (so a
window loaded from the last run still matches), fresh per process for the memory one.

The in-memory tables (`smpprelay.store.tables`, `smpprelay.store.windows`) import no Twisted;
the backends use Twisted's `Deferred` and the reactor's threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Protocol

import attrs
from twisted.internet.defer import Deferred

from smpprelay.store.tables import DeliveryKind, Held, Route

__all__ = [
    "DeliveryKind",
    "Held",
    "HeldPart",
    "Loaded",
    "Mapped",
    "Route",
    "RouteDone",
    "Store",
    "StoreCorrupt",
    "StoreStats",
    "StoreUnavailable",
    "WindowEntry",
    "WindowRule",
]

WindowRule = Literal["dedup", "flood"]

# What `Store.add_route_cb` calls once the route is durable (None) or could not be written (the
# error, a `StoreUnavailable`). It may be called before add_route_cb returns (a memory store, or
# one that knows already that it cannot write), and must not raise.
RouteDone = Callable[[Exception | None], None]

# The upstream a route belongs to while there is only one (operator ids are per upstream).
DEFAULT_UPSTREAM = "default"


class StoreUnavailable(Exception):
    """The store could not write: nothing that depends on the write may be acknowledged."""


class StoreCorrupt(Exception):
    """The store's file cannot be used (unreadable, not a database, damaged): the relay does not
    start on it. The message names the file and what is wrong, in one line."""


@attrs.frozen(slots=True)
class HeldPart:
    """A concatenated part answered ``ESME_ROK`` and held until its message is whole."""

    app_message_id: bytes  # the relay-issued id the app was given for it (unique)
    account: str
    frame: bytes  # the app's submit_sm, as it goes to the operator
    app_iso: bool  # the app's session is ISO (its text is read as ISO-8859-1)
    first: float  # when its message's first part arrived (its window runs from there)
    arrived: float  # when this part arrived
    # The id its receipts go home under when it is not ``app_message_id`` (a submit_multi's).
    receipt_as: bytes = b""


class WindowEntry(NamedTuple):
    """One entry of the dedup or flood rule's window, as written behind and loaded at start.

    dedup: ``key`` the message's 12-byte digest key, ``at`` when the operator accepted it,
    ``message_id`` the id the app was given (replayed to a duplicate), ``streak`` 0.
    flood: ``key`` the rule's key (the number, or account NUL number), ``at`` the streak's last
    accepted message, ``streak`` the streak's length, ``message_id`` None.

    A tuple, not an attrs class: the rules make one per accepted message each second, and a
    frozen attrs object costs ten times as much to make.
    """

    rule: WindowRule
    key: bytes
    at: float
    expires: float
    streak: int = 0
    message_id: bytes | None = None


class Mapped(NamedTuple):
    """A route found by the id its app was given (`Store.find_app_id`)."""

    upstream: str
    message_id: str  # the operator's id, exactly as it gave it
    route: Route


@attrs.frozen(slots=True)
class Loaded:
    """What a store holds at start, to be put back before any app binds."""

    deliveries: Sequence[Held] = ()  # oldest first; each with its ``key``
    parts: Sequence[HeldPart] = ()  # in the order they arrived
    windows: Sequence[WindowEntry] = ()  # oldest first
    routes: int = 0  # receipt routes pending (they stay in the store)


@attrs.frozen(slots=True)
class StoreStats:
    """Rows per kind and the size on disk, for the metrics (read at scrape time)."""

    routes: int
    deliveries: int
    parts: int
    windows: int
    size_bytes: int
    commits: int  # transactions committed since start
    writes: int  # rows written (or removed) in them: writes / commits is the group size
    evicted: int  # routes removed at map_max before they expired


class Store(Protocol):
    """The relay's state; see the package docstring for what each call promises."""

    durable: bool  # keeps what it is given across a restart
    secret: bytes  # keys the dedup digest (stable across restarts when durable)

    @property
    def writable(self) -> bool:
        """False while writes fail (disk full, read-only, I/O error)."""
        ...

    @property
    def problem(self) -> str:
        """Why the store cannot write ("" while it can)."""
        ...

    def start(self) -> None:
        """Start writing (a writer thread, a connection): at service start, after twistd forks."""
        ...

    def load(self) -> Loaded:
        """What the last run left (called once, at start, before the reactor runs)."""
        ...

    def add_route(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None = None,
    ) -> Deferred[None]:
        """Route receipts for operator ``message_id`` (normalised) on ``upstream``;
        ``operator_id`` is the operator's id as it gave it, when not ``message_id``."""
        ...

    def add_route_cb(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None,
        done: RouteDone,
    ) -> None:
        """`add_route`, reporting to ``done``: ``done(None)`` once the route is durable,
        ``done(StoreUnavailable(...))`` when it is not (calls made in one order report in it)."""
        ...

    def find_route(self, upstream: str, message_id: str, now: float) -> Deferred[Route | None]:
        """The route for ``message_id`` on ``upstream``, if known and not expired."""
        ...

    def find_app_id(self, app_message_id: bytes, now: float) -> Deferred[list[Mapped]]:
        """Every live route whose app was given ``app_message_id`` (not the operator's id),
        oldest first."""
        ...

    def route_final(self, upstream: str, message_id: str, now: float) -> None:
        """A final receipt came for ``message_id``: keep its route only a grace period more."""
        ...

    def hold_delivery(self, item: Held) -> Deferred[None]:
        """Keep a receipt or MO for an app that cannot take it now; sets ``item.key``."""
        ...

    def delivered(self, item: Held) -> None:
        """``item`` reached its app (or expired): forget it."""
        ...

    def hold_part(self, part: HeldPart) -> Deferred[None]:
        """Keep a concatenated part answered ``ESME_ROK``."""
        ...

    def replace_part(self, part: HeldPart) -> Deferred[None]:
        """A held part's frame changed (replace_sm): keep the new one (by ``app_message_id``)."""
        ...

    def parts_done(self, app_message_ids: Sequence[bytes]) -> None:
        """These parts went to the operator or were given up: forget them."""
        ...

    def save_windows(self, entries: Sequence[WindowEntry] | bytes) -> Deferred[None]:
        """Write the rules' newest window entries (replacing a flood key's older streak), as
        tuples or packed (`smpprelay.store.window_segments`: what the relay hands)."""
        ...

    def expire(self, now: float) -> None:
        """Remove what has expired (and routes past ``map_max``), in small batches."""
        ...

    def stats(self) -> StoreStats:
        """Rows per kind and size, for the metrics."""
        ...

    def close(self) -> Deferred[None]:
        """Write what is pending and close; fires when done (at the end of the stop)."""
        ...
