"""What the router needs of the sessions it delivers to and of the shared store of held
deliveries (the protocols only: the router, the sessions and the handover implement or use them)."""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from smpprelay.store.tables import Held

__all__ = ["Receiver", "SharedHeld"]


class Receiver(Protocol):
    """A bound app session that can take deliver_sm."""

    account: str

    @property
    def can_deliver(self) -> bool:
        """Takes a fresh deliver_sm now (room in its window, and it answers)."""
        ...

    @property
    def can_probe(self) -> bool:
        """Deaf (a deliver_sm timed out), nothing in flight: may take one held delivery."""
        ...

    @property
    def unanswered(self) -> int: ...

    def deliver(self, frame: bytes) -> Deferred[bytes]: ...


class SharedHeld(Protocol):
    """Held deliveries kept where every instance sees them (`smpprelay.handover`)."""

    def back(self, item: Held) -> None:
        """``item``'s delivery failed: deliver it again later, on whichever instance."""
        ...

    def held(self, item: Held) -> None:
        """``item`` was just held (the store has it)."""
        ...
