"""A store whose writes wait for the test: `ManualStore`.

It keeps routes in a real `MemoryStore` and records what the relay asks it to keep, but every
asynchronous write returns a Deferred that fires only when the test says (`commit`, or `fail`
as a full disk would), so a test can see that no acknowledgement leaves before its write.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail

from smpprelay.store import HeldPart, Loaded, RouteDone, StoreUnavailable, WindowEntry
from smpprelay.store.memory import MemoryStore
from smpprelay.store.tables import Held, ReceiptRoutes
from smpprelay.store.window_segments import unpack


class ManualStore(MemoryStore):
    """A durable-looking store whose writes are committed or failed by the test."""

    def __init__(self, durable: bool = True, loaded: Loaded | None = None) -> None:
        super().__init__(ReceiptRoutes(ttl=3600.0, max_entries=1000), final_grace=600.0)
        self.durable = durable
        self.loaded = loaded if loaded is not None else Loaded()
        self.pending: list[tuple[Deferred[None], object]] = []  # (write, what it writes)
        self.deliveries: dict[int, Held] = {}
        self.parts: dict[bytes, HeldPart] = {}
        self.windows: list[WindowEntry] = []
        self.finals: list[str] = []
        self._writable = True
        self._problem = ""
        self._keys = 0

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def problem(self) -> str:
        return self._problem

    def break_down(self, problem: str = "database or disk is full") -> None:
        """The store cannot write from now on (until `recover`)."""
        self._writable, self._problem = False, problem

    def recover(self) -> None:
        self._writable, self._problem = True, ""

    def load(self) -> Loaded:
        return self.loaded

    def _write(self, what: object) -> Deferred[None]:
        if not self._writable:
            return fail(StoreUnavailable(self._problem))
        write: Deferred[None] = Deferred()
        self.pending.append((write, what))
        return write

    def commit(self) -> int:
        """Every pending write is durable now; return how many."""
        pending, self.pending = self.pending, []
        for write, what in pending:
            if isinstance(what, tuple) and what[0] == "route":
                _, upstream, message_id, account, app_id, now, exact = what
                super().add_route(upstream, message_id, account, app_id, now, exact)
            write.callback(None)
        return len(pending)

    def fail(self, problem: str = "database or disk is full") -> int:
        """Every pending write failed (and the store cannot write any more)."""
        self.break_down(problem)
        pending, self.pending = self.pending, []
        for write, what in pending:
            if isinstance(what, Held):
                self.deliveries.pop(what.key, None)
            elif isinstance(what, HeldPart):
                self.parts.pop(what.app_message_id, None)
            write.errback(StoreUnavailable(problem))
        return len(pending)

    def add_route(
        self,
        upstream: str,
        message_id: str,
        account: str,
        app_message_id: bytes | None,
        now: float,
        operator_id: str | None = None,
    ) -> Deferred[None]:
        return self._write(
            ("route", upstream, message_id, account, app_message_id, now, operator_id)
        )

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
        """`add_route`, reporting to ``done`` when the test commits or fails the write."""
        written = self.add_route(upstream, message_id, account, app_message_id, now, operator_id)
        written.addCallbacks(lambda _: done(None), lambda reason: done(reason.value))

    def route_final(self, upstream: str, message_id: str, now: float) -> None:
        self.finals.append(message_id)
        super().route_final(upstream, message_id, now)

    def hold_delivery(self, item: Held) -> Deferred[None]:
        if self._writable:
            self._keys += 1
            item.key = self._keys
            self.deliveries[item.key] = item
        return self._write(item)

    def delivered(self, item: Held) -> None:
        self.deliveries.pop(item.key, None)

    def hold_part(self, part: HeldPart) -> Deferred[None]:
        if self._writable:
            self.parts[part.app_message_id] = part
        return self._write(part)

    def replace_part(self, part: HeldPart) -> Deferred[None]:
        if self._writable and part.app_message_id in self.parts:
            self.parts[part.app_message_id] = part
        return self._write(("replace", part))

    def parts_done(self, app_message_ids: Sequence[bytes]) -> None:
        for app_id in app_message_ids:
            self.parts.pop(app_id, None)

    def save_windows(self, entries: Sequence[WindowEntry] | bytes) -> Deferred[None]:
        # The relay hands them packed: kept as tuples, as the tests read them.
        unpacked = unpack(entries) if isinstance(entries, bytes) else list(entries)
        written = self._write(unpacked)
        written.addCallback(lambda _: self.windows.extend(unpacked))
        return written
