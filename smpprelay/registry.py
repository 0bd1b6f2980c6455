"""Who is connected and who is bound: the app sessions by account, and the receiving ones.

`Registry` is generic over the session type so that it needs nothing from
`smpprelay.downstream` (which builds ``SessionRegistry = Registry[DownstreamSession]``): the
router reads its receivers, the session state machine writes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, DeferredList

from smpprelay.metrics import Metrics


class Session(Protocol):
    """What the registry reads of an app session."""

    account: str
    bind_kind: str
    host: str

    @property
    def receives(self) -> bool: ...

    @property
    def idle(self) -> bool:
        """Connected, not bound, and not binding now (so it may be pushed out)."""
        ...

    def drop(self, why: str) -> None: ...

    def shutdown(self) -> Deferred[None]: ...


S = TypeVar("S", bound=Session)


class Registry(Generic[S]):
    """Who is bound: sessions by account, and the receiving ones the router delivers to."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Called with an account whose receiving bind can take deliveries now (it bound, or
        # read again after a pause, or answered again after a timeout): the router's flush.
        self.on_receiver_bound: list[Callable[[str], None]] = []
        # Called once when the relay starts to stop: from then on a delivery that no receiver
        # takes is refused for later, not held (nothing held survives the stop).
        self.on_stopping: list[Callable[[], None]] = []
        self._sessions: dict[str, list[S]] = {}
        # Every admitted connection, oldest first (a dict: ordered, O(1) removal).
        self.connections: dict[S, None] = {}

    def connected(self, session: S) -> None:
        """``session`` was admitted."""
        self.connections[session] = None

    def disconnected(self, session: S) -> None:
        """``session``'s connection is gone."""
        self.connections.pop(session, None)

    def bound(self, session: S) -> None:
        """``session`` finished binding."""
        self._sessions.setdefault(session.account, []).append(session)
        self._gauge(session)
        if session.receives:
            self.receiver_ready(session.account)

    def receiver_ready(self, account: str) -> None:
        """A receiving bind of ``account`` can take deliveries now."""
        for hook in self.on_receiver_bound:
            hook(account)

    def unbound(self, session: S) -> None:
        """``session`` takes nothing more."""
        sessions = self._sessions.get(session.account, [])
        if session in sessions:
            sessions.remove(session)
            self._gauge(session)

    def _gauge(self, session: S) -> None:
        kind = session.bind_kind
        count = sum(1 for s in self._sessions.get(session.account, []) if s.bind_kind == kind)
        self.metrics.bound_sessions.labels(session.account, kind).set(count)

    def bound_count(self, account: str) -> int:
        """How many binds ``account`` has now."""
        return len(self._sessions.get(account, ()))

    def accounts(self) -> list[str]:
        """The accounts with a bind here now."""
        return [account for account, sessions in self._sessions.items() if sessions]

    def bound_sessions(self, account: str) -> list[S]:
        """The sessions bound as ``account`` now."""
        return list(self._sessions.get(account, ()))

    def receivers(self, account: str) -> list[S]:
        """The sessions of ``account`` that take deliver_sm (receiver or transceiver)."""
        return [s for s in self._sessions.get(account, ()) if s.receives]

    def push_out_idle(self, host: str) -> bool:
        """Drop the oldest idle connection from ``host`` (or, with none, from anywhere) to
        make room for a new one; False when no connection is idle."""
        idle = [s for s in self.connections if s.idle]
        victim = next((s for s in idle if s.host == host), idle[0] if idle else None)
        if victim is None:
            return False
        victim.drop("pushed out by a newer connection (security.max_unbound_connections)")
        return True

    def shutdown(self) -> Deferred[Any]:
        """Unbind every app (after its in-flight submits are answered) and close the rest."""
        for hook in self.on_stopping:
            hook()
        return DeferredList([session.shutdown() for session in list(self.connections)])
