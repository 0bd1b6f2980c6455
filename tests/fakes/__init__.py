"""The unit tests' shared doubles and helpers: the one place a test module imports from.

- PDUs: `short_message` / `submit_sm` / `deliver_sm` (built from `pdu.ShortMessage` fields, so
  a test names only the fields it cares about), `submit_frame`, `resp_header`.
- Transports and Deferreds: `frames_of`, `take_written` / `take_frames`, `result_of` /
  `failure_of`, `captured_logs` / `logged_errors`.
- The app's side: `app_connection`, `FakeSubmit`, `Relayed` (a bound app in front of the real
  relay and rules).
- The relay's collaborators: `FakePool` (what `Relay` needs of the upstream pool),
  `FakeReceiver` (a `router.Receiver`), `make_router`.
- The operator's side: `OperatorTransport`, `OperatorEndpoint` (an `IStreamClientEndpoint`),
  `Upstreams` / `bound`, `Wire` / `make_pool`.

Each double records what it is given and hands back Deferreds the test fires.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from smpprelay import pdu
from smpprelay.auth import make_portal
from smpprelay.config import Account, DedupRule, FiltersConfig, FloodRule
from smpprelay.connection import RequestHandler, ResponseTimeout, SmppConnection
from smpprelay.downstream import DownstreamSession, SessionRegistry
from smpprelay.filters import build_chain
from smpprelay.metrics import Metrics
from smpprelay.operations import Operations
from smpprelay.pdu import CommandId, ShortMessage, Status
from smpprelay.receivers import Receiver
from smpprelay.relay import Relay
from smpprelay.router import Router
from smpprelay.simulator import Simulator
from smpprelay.store import Store
from smpprelay.store.memory import MemoryStore
from smpprelay.store.tables import HeldDeliveries, ReceiptRoutes

T = TypeVar("T")

DEFAULT_MESSAGE = pdu.ShortMessage(
    service_type=b"",
    source_ton=5,
    source_npi=0,
    source_addr=b"MyBrand",
    dest_ton=1,
    dest_npi=1,
    destination_addr=b"447700900123",
    esm_class=0,
    protocol_id=0,
    priority_flag=0,
    schedule_delivery_time=b"",
    validity_period=b"",
    registered_delivery=1,
    replace_if_present=0,
    data_coding=0,
    sm_default_msg_id=0,
    short_message=b"hello",
    tlvs=(),
)


def short_message(**fields: Any) -> pdu.ShortMessage:
    """`DEFAULT_MESSAGE` with some fields replaced."""
    return DEFAULT_MESSAGE._replace(**fields)


def submit_sm(sequence: int = 1, **fields: Any) -> bytes:
    """A submit_sm frame; ``fields`` override `DEFAULT_MESSAGE`."""
    return pdu.encode_short_message(pdu.CommandId.submit_sm, sequence, short_message(**fields))


def deliver_sm(sequence: int = 1, **fields: Any) -> bytes:
    """A deliver_sm frame; ``fields`` override `DEFAULT_MESSAGE`."""
    return pdu.encode_short_message(pdu.CommandId.deliver_sm, sequence, short_message(**fields))


def frames_of(data: bytes) -> list[bytes]:
    """The PDUs in ``data`` (for example ``transport.value()``); fails on a partial one."""
    framer = pdu.Framer(max_pdu=1 << 20)
    frames = framer.feed(data)
    assert framer.buffered == 0, "trailing partial PDU"
    return frames


def result_of(deferred: Deferred[T]) -> T:
    """The result of a Deferred that has already succeeded."""
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    assert not isinstance(outcome[0], Failure), f"Deferred failed: {outcome[0]}"
    return outcome[0]  # type: ignore[no-any-return]


def failure_of(deferred: Deferred[Any]) -> Failure:
    """The Failure of a Deferred that has already failed (consumed, so it is not logged)."""
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    assert isinstance(outcome[0], Failure), f"Deferred succeeded with {outcome[0]!r}"
    return outcome[0]


def app_connection(
    session: RequestHandler,
    clock: IReactorTime,
    metrics: Metrics,
    host: str = "127.0.0.1",
    max_pdu: int = 70_000,
    pdu_read: float | None = None,
) -> tuple[SmppConnection, StringTransport]:
    """An app's connection to ``session``, made on a StringTransport from ``host``."""
    connection = SmppConnection(
        session,
        clock,
        metrics,
        side="downstream",
        max_pdu=max_pdu,
        response_timeout=30.0,
        pdu_read=pdu_read,
    )
    address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
    transport = StringTransport(peerAddress=address)
    connection.makeConnection(transport)  # type: ignore[no-untyped-call]
    return connection, transport


def take_written(transport: StringTransport) -> bytes:
    """Everything written to ``transport`` since the last call, forgetting it."""
    data = bytes(transport.value())
    transport.clear()
    return data


def take_frames(transport: StringTransport) -> list[bytes]:
    """The PDUs written to ``transport`` since the last call, forgetting them."""
    return frames_of(take_written(transport))


# --- logs ------------------------------------------------------------------------------------


@contextmanager
def captured_logs(
    keep: Callable[[LogEvent], bool] = lambda event: True,
) -> Iterator[list[LogEvent]]:
    """The events logged while the block runs (those ``keep`` accepts), in order."""
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if keep(event):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def is_error(event: LogEvent) -> bool:
    """An unhandled error, a `log.failure`, or a legacy ``log.err``."""
    return event.get("log_failure") is not None or bool(event.get("isError"))


# --- the app's side --------------------------------------------------------------------------

PASSWORD = "s3cr3tPw"


def resp_header(command_id: int, status: int, sequence: int) -> bytes:
    """A header-only response, packed by hand."""
    return struct.pack("!IIII", 16, command_id, status, sequence)


def submit_frame(sequence: int, text: bytes = b"hello") -> bytes:
    message = ShortMessage(
        b"", 1, 1, b"12345", 1, 1, b"79001234567", 0, 0, 0, b"", b"", 1, 0, 0, 0, text, ()
    )
    return pdu.encode_short_message(CommandId.submit_sm, sequence, message)


class FakeSubmit:
    """The relay's submit callable: records (account, frame) and lets the test answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.pending: list[Deferred[bytes]] = []

    def __call__(self, account: str, frame: bytes, app_iso: bool = False) -> Deferred[bytes]:
        deferred: Deferred[bytes] = Deferred()
        self.calls.append((account, frame))
        self.pending.append(deferred)
        return deferred

    def answer(self, index: int, message_id: bytes, status: int = Status.ESME_ROK) -> None:
        """Answer call ``index`` the way the relay does (sequence 0, operator's bytes)."""
        self.pending[index].callback(pdu.submit_sm_resp(0, status, message_id))


# --- the relay's collaborators ---------------------------------------------------------------


class FakePool:
    """What `Relay` needs of `UpstreamPool`: single submits and batches, answered by Deferreds
    the test fires."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.batches: list[list[bytes]] = []
        self.answers: list[Deferred[bytes]] = []
        self.batch_answers: list[Deferred[list[bytes | Failure]]] = []
        self.accounts: list[str] = []  # the account of each call, in order

    def submit(self, frame: bytes, account: str = "") -> Deferred[bytes]:
        self.frames.append(frame)
        self.accounts.append(account)
        answer: Deferred[bytes] = Deferred()
        self.answers.append(answer)
        return answer

    def submit_cb(
        self, frame: bytes, account: str, outcome: Callable[[bytes | Failure], None]
    ) -> None:
        self.submit(frame, account).addBoth(outcome)

    def submit_all(self, frames: list[bytes], account: str = "") -> Deferred[list[bytes | Failure]]:
        self.batches.append(frames)
        self.accounts.append(account)
        answer: Deferred[list[bytes | Failure]] = Deferred()
        self.batch_answers.append(answer)
        return answer


class FakeReceiver:
    """A bound receiving app session (a `router.Receiver`): records deliver_sm frames; the
    test answers them, or with ``auto_answer`` each is acknowledged at once."""

    def __init__(self, account: str, window: int = 10, auto_answer: bool = False) -> None:
        self.account = account
        self.bound = True
        self.window = window
        self.auto_answer = auto_answer
        self.frames: list[bytes] = []
        self.pending: list[Deferred[bytes]] = []
        # As DownstreamSession: deaf from a timed-out deliver_sm until it answers one.
        self.deaf = False

    @property
    def unanswered(self) -> int:
        return sum(1 for d in self.pending if not d.called)

    @property
    def can_deliver(self) -> bool:
        return self.bound and not self.deaf and self.unanswered < self.window

    @property
    def can_probe(self) -> bool:
        return self.bound and self.deaf and self.unanswered == 0

    def deliver(self, frame: bytes) -> Deferred[bytes]:
        self.frames.append(frame)
        if self.auto_answer:
            return succeed(pdu.response(CommandId.deliver_sm, 1, 0, b"\0"))
        deferred: Deferred[bytes] = Deferred()
        self.pending.append(deferred)
        return deferred

    def answer(self, index: int, status: int = Status.ESME_ROK) -> None:
        self.deaf = False
        self.pending[index].callback(pdu.response(CommandId.deliver_sm, 0, status, b"\0"))

    def time_out(self, index: int) -> None:
        """The response timer of delivery ``index`` ran out: the app is deaf now."""
        self.deaf = True
        self.pending[index].errback(ResponseTimeout("no answer"))


_receiver: Receiver = FakeReceiver("typecheck")  # mypy checks the double against the Protocol


def make_router(
    clock: IReactorTime,
    metrics: Metrics,
    receivers: Callable[[str], Sequence[Receiver]] = lambda account: [],
    mo_prefixes: dict[str, str] | None = None,
    routes: ReceiptRoutes | None = None,
    held: HeldDeliveries | None = None,
    retry: float = 5.0,
    store: Store | None = None,
    **options: Any,
) -> Router:
    """A real `Router` with small in-memory stores unless the test gives its own; ``options``
    are its keyword settings (``second_look``, ``message_id_format``)."""
    if store is None:
        table = routes if routes is not None else ReceiptRoutes(ttl=3600.0, max_entries=100)
        store = MemoryStore(table, final_grace=600.0)
    return Router(
        clock,
        metrics,
        store,
        held if held is not None else HeldDeliveries(ttl=3600.0, max_entries=100),
        mo_prefixes or {},
        receivers,
        retry=retry,
        **options,
    )


class Relayed:
    """A bound transceiver (or, with ``bind=False``, a fresh connection) in front of the real
    relay, rules and operations; the operator is a FakePool."""

    def __init__(
        self, bind: bool = True, max_pdu: int = 70_000, metrics: Metrics | None = None
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000.0)
        self.metrics = metrics if metrics is not None else Metrics()
        self.pool = FakePool()
        registry = SessionRegistry(self.metrics)
        router = make_router(self.clock, self.metrics, registry.receivers)
        # The default rules, with small tables: their size is not what is tested here.
        rules = FiltersConfig(dedup=DedupRule(max_entries=1000), flood=FloodRule(max_entries=1000))
        chain = build_chain(rules, False, self.metrics)
        relay = Relay(self.pool, router, self.metrics, self.clock, chain)
        self.relay, self.router = relay, router
        operations = Operations(relay, router, self.metrics, self.clock)
        clients = {"app": Account(system_id="app", password="pw")}
        self.session = DownstreamSession(
            make_portal(clients),
            registry,
            relay.submit,
            self.clock,
            self.metrics,
            10.0,
            100,
            operate=operations.handle,
            relay_submit_cb=relay.submit_cb,
        )
        self.connection, self.transport = app_connection(
            self.session, self.clock, self.metrics, max_pdu=max_pdu, pdu_read=10.0
        )
        if bind:
            self.connection.dataReceived(pdu.bind_request("transceiver", 1, "app", "pw"))
            assert pdu.header(self.written())[2] == Status.ESME_ROK

    def written(self) -> bytes:
        return take_written(self.transport)

    @property
    def open(self) -> bool:
        return not self.transport.disconnecting


# --- deliveries from the operator ------------------------------------------------------

SUBMITTED = ShortMessage(
    b"", 1, 1, b"12345", 1, 1, b"79001234567", 0, 0, 0, b"", b"", 1, 0, 0, 0, b"hi there", ()
)


def outcome(deferred: Deferred[Any]) -> list[Any]:
    """A list that holds the Deferred's result once it has fired."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    return results


def receipt(message_id: bytes) -> bytes:
    """A receipt as the simulator sends it: TLV receipted_message_id and text ``id:``."""
    return Simulator(Clock()).receipt(SUBMITTED, message_id, 0.0)


def mo(destination: bytes) -> bytes:
    message = ShortMessage(
        b"", 1, 1, b"79991112233", 1, 1, destination, 0, 0, 0, b"", b"", 0, 0, 0, 0, b"hey", ()
    )
    return pdu.encode_short_message(CommandId.deliver_sm, 0, message)
