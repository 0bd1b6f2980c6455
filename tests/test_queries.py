"""query_sm, cancel_sm and replace_sm through the real app session, relay and rules; the
operator is a FakePool, time a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from smpprelay import pdu
from smpprelay.auth import make_portal
from smpprelay.config import Account, DedupRule, FiltersConfig, FloodRule
from smpprelay.connection import SmppConnection
from smpprelay.downstream import DownstreamSession, SessionRegistry
from smpprelay.filters import build_chain
from smpprelay.metrics import Metrics
from smpprelay.operations import Operations
from smpprelay.pdu import CommandId, Status
from smpprelay.relay import Relay
from smpprelay.store.tables import ReceiptRoutes
from tests.fakes import FakePool, app_connection, make_router, submit_sm, take_frames

SOURCE = b"MyBrand"  # tests.fakes.DEFAULT_MESSAGE's


class App:
    """One bound transceiver of ``account``."""

    def __init__(self, h: Harness, account: str) -> None:
        self.connection: SmppConnection
        self.transport: StringTransport
        session = DownstreamSession(
            h.portal,
            h.registry,
            h.relay.submit,
            h.clock,
            h.metrics,
            10.0,
            100,
            operate=h.operations.handle,
        )
        self.connection, self.transport = app_connection(session, h.clock, h.metrics)
        self.connection.dataReceived(pdu.bind_request("transceiver", 1, account, "pw"))
        assert pdu.header(take_frames(self.transport)[0])[2] == Status.ESME_ROK

    def send(self, frame: bytes) -> list[bytes]:
        """Send ``frame``; what the relay wrote back at once."""
        self.connection.dataReceived(frame)
        return take_frames(self.transport)

    def frames(self) -> list[bytes]:
        return take_frames(self.transport)


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000.0)
        self.metrics = Metrics()
        self.pool = FakePool()
        self.registry = SessionRegistry(self.metrics)
        # Routes live 100 s here: an expired one is seen well within the session's inactivity.
        routes = ReceiptRoutes(ttl=100.0, max_entries=100)
        self.router = make_router(self.clock, self.metrics, self.registry.receivers, routes=routes)
        rules = FiltersConfig(dedup=DedupRule(max_entries=1000), flood=FloodRule(max_entries=1000))
        self.chain = build_chain(rules, False, self.metrics)
        self.relay = Relay(self.pool, self.router, self.metrics, self.clock, self.chain)
        self.operations = Operations(self.relay, self.router, self.metrics, self.clock)
        clients = {name: Account(system_id=name, password="pw") for name in ("app", "other")}
        self.portal = make_portal(clients)
        self.app = App(self, "app")
        self.other = App(self, "other")

    def accepted(
        self, text: bytes = b"hello", operator_id: bytes = b"OP1", **fields: object
    ) -> bytes:
        """A submit from ``app`` the operator accepts under ``operator_id``; the app's id."""
        sequence = len(self.pool.frames) + 10
        self.app.send(submit_sm(sequence, short_message=text, **fields))
        self.pool.answers[-1].callback(pdu.submit_sm_resp(3, Status.ESME_ROK, operator_id))
        [resp] = self.app.frames()
        assert pdu.header(resp)[2] == Status.ESME_ROK
        return pdu.message_id_of(resp)


def query(message_id: bytes, sequence: int = 77, source: bytes = SOURCE) -> bytes:
    return pdu.query_sm(sequence, pdu.QuerySm(message_id, 5, 0, source))


def cancel(message_id: bytes, sequence: int = 78) -> bytes:
    return pdu.cancel_sm(sequence, pdu.CancelSm(b"", message_id, 5, 0, SOURCE, 1, 1, b""))


def replace(message_id: bytes, text: bytes, sequence: int = 79) -> bytes:
    return pdu.replace_sm(sequence, pdu.ReplaceSm(message_id, 5, 0, SOURCE, b"", b"", 1, 0, text))


def part(sequence: int, text: bytes, total: int = 2, reference: int = 0x42) -> bytes:
    udh = bytes((5, 0, 3, reference, total, sequence))
    return submit_sm(sequence, esm_class=0x40, short_message=udh + text)


def status_of(frame: bytes) -> int:
    return pdu.header(frame)[2]


# --- relayed to the operator -------------------------------------------------------------------


def test_query_goes_upstream_with_the_operators_exact_id_and_comes_back() -> None:
    """The operator gave "0ab1" (its key is normalised): the query names it exactly, and
    the answer comes back on the app's sequence number."""
    h = Harness()
    app_id = h.accepted(operator_id=b"0ab1")
    assert h.app.send(query(app_id, sequence=77)) == []
    assert pdu.read_query_sm(h.pool.frames[-1]) == pdu.QuerySm(b"0ab1", 5, 0, SOURCE)
    answer = pdu.QuerySmResp(b"0ab1", b"", 1, 0)
    h.pool.answers[-1].callback(pdu.query_sm_resp(9, Status.ESME_ROK, answer))
    [resp] = h.app.frames()
    assert pdu.header(resp)[1:] == (CommandId.query_sm_resp, 0, 77)
    assert pdu.read_query_sm_resp(resp) == pdu.QuerySmResp(b"0ab1", b"", 1, 0)


def test_a_message_without_a_receipt_is_found_too() -> None:
    h = Harness()
    app_id = h.accepted(registered_delivery=0)
    h.app.send(query(app_id))
    assert pdu.read_query_sm(h.pool.frames[-1]).message_id == b"OP1"


def test_the_operators_refusal_and_silence_reach_the_app() -> None:
    h = Harness()
    app_id = h.accepted()
    h.app.send(cancel(app_id))
    assert pdu.read_cancel_sm(h.pool.frames[-1]).message_id == b"OP1"
    h.pool.answers[-1].callback(pdu.response(CommandId.cancel_sm, 9, Status.ESME_RCANCELFAIL))
    [resp] = h.app.frames()
    assert pdu.header(resp)[1:] == (CommandId.cancel_sm_resp, Status.ESME_RCANCELFAIL, 78)
    h.app.send(query(app_id))
    h.pool.answers[-1].callback(pdu.generic_nack(9, Status.ESME_RINVCMDID))
    assert pdu.header(h.app.frames()[0])[1:] == (CommandId.query_sm_resp, 0x03, 77)


def test_replace_goes_upstream_with_the_new_text() -> None:
    h = Harness()
    app_id = h.accepted()
    h.app.send(replace(app_id, b"new text"))
    sent = pdu.read_replace_sm(h.pool.frames[-1])
    assert (sent.message_id, sent.short_message) == (b"OP1", b"new text")
    h.pool.answers[-1].callback(pdu.response(CommandId.replace_sm, 9, Status.ESME_ROK))
    assert pdu.header(h.app.frames()[0])[1:] == (CommandId.replace_sm_resp, 0, 79)


def test_every_message_under_one_relay_id_is_cancelled_and_the_first_queried() -> None:
    """A submit_multi's messages share the relay's id."""
    h = Harness()
    for operator_id in (b"OPA", b"OPB"):
        h.router.remember(operator_id, "app", b"M1")
    h.app.send(cancel(b"M1"))
    assert [pdu.read_cancel_sm(f).message_id for f in h.pool.frames] == [b"OPA", b"OPB"]
    h.pool.answers[0].callback(pdu.response(CommandId.cancel_sm, 1, Status.ESME_ROK))
    assert h.app.frames() == []  # both answers first
    h.pool.answers[1].callback(pdu.response(CommandId.cancel_sm, 2, Status.ESME_RCANCELFAIL))
    assert status_of(h.app.frames()[0]) == Status.ESME_RCANCELFAIL
    h.app.send(query(b"M1"))
    assert pdu.read_query_sm(h.pool.frames[-1]).message_id == b"OPA"
    h.pool.answers[-1].callback(
        pdu.query_sm_resp(3, Status.ESME_ROK, pdu.QuerySmResp(b"OPA", b"", 4, 0))
    )
    assert pdu.read_query_sm_resp(h.app.frames()[0]).message_id == b"M1"


# --- refused without reaching the operator ---------------------------------------------------


def test_another_accounts_unknown_expired_or_empty_id_is_invalid() -> None:
    h = Harness()
    app_id = h.accepted()
    sent = len(h.pool.frames)
    for frame in (query(app_id), cancel(app_id), replace(app_id, b"x")):
        [resp] = h.other.send(frame)
        assert status_of(resp) == Status.ESME_RINVMSGID
    assert status_of(h.app.send(query(b"NOPE"))[0]) == Status.ESME_RINVMSGID
    assert status_of(h.app.send(cancel(b""))[0]) == Status.ESME_RINVMSGID
    h.clock.advance(101.0)  # past the route's ttl
    assert status_of(h.app.send(query(app_id))[0]) == Status.ESME_RINVMSGID
    assert len(h.pool.frames) == sent


def test_a_malformed_request_gets_its_status() -> None:
    h = Harness()
    [resp] = h.app.send(query(b"A" * 70))
    assert pdu.header(resp)[1:3] == (CommandId.query_sm_resp, Status.ESME_RINVMSGID)
    bad = pdu.build(CommandId.replace_sm, 5, replace(b"X", b"t")[16:-1])  # sm_length 1, no text
    assert status_of(h.app.send(bad)[0]) == Status.ESME_RINVMSGLEN


# --- a part the relay holds --------------------------------------------------------------------


def held_part(h: Harness) -> bytes:
    [resp] = h.app.send(part(1, b"first half "))
    assert status_of(resp) == Status.ESME_ROK
    app_id = pdu.message_id_of(resp)
    assert app_id.startswith(b"R")
    assert h.pool.frames == []
    return app_id


def test_a_held_part_is_en_route_answered_by_the_relay() -> None:
    h = Harness()
    app_id = held_part(h)
    [resp] = h.app.send(query(app_id))
    assert pdu.header(resp)[1:] == (CommandId.query_sm_resp, 0, 77)
    assert pdu.read_query_sm_resp(resp) == pdu.QuerySmResp(app_id, b"", 1, 0)
    assert status_of(h.other.send(query(app_id))[0]) == Status.ESME_RINVMSGID
    assert status_of(h.app.send(query(app_id, source=b"Other"))[0]) == Status.ESME_RINVSRCADR
    assert h.pool.frames == []
    assert h.pool.batches == []


def test_a_cancelled_held_message_is_dropped_with_a_deleted_receipt() -> None:
    h = Harness()
    app_id = held_part(h)
    receipt, resp = h.app.send(cancel(app_id))  # the receipt is routed first
    assert pdu.header(resp)[1:] == (CommandId.cancel_sm_resp, 0, 78)
    fields = pdu.read_short_message(receipt)
    assert fields.tlv(pdu.Tag.receipted_message_id) == app_id + b"\0"
    assert b"stat:DELETED" in fields.short_message
    # Its other part can no longer complete it, and nothing went to the operator.
    [late] = h.app.send(part(2, b"second half"))
    assert status_of(late) == 0x45
    assert h.pool.batches == []
    assert status_of(h.app.send(query(app_id))[0]) == Status.ESME_RINVMSGID


def test_a_replaced_held_part_goes_with_its_new_text_once_whole() -> None:
    h = Harness()
    app_id = held_part(h)
    udh = bytes((5, 0, 3, 0x42, 2, 1))
    [resp] = h.app.send(replace(app_id, udh + b"FIRST HALF "))
    assert pdu.header(resp)[1:] == (CommandId.replace_sm_resp, 0, 79)
    h.app.send(part(2, b"second half"))
    [batch] = h.pool.batches
    assert pdu.read_short_message(batch[0]).short_message == udh + b"FIRST HALF "
    assert pdu.read_short_message(batch[1]).short_message.endswith(b"second half")


def test_a_replacement_the_encoding_rule_refuses_or_that_moves_the_part_is_refused() -> None:
    h = Harness()
    app_id = held_part(h)
    udh = bytes((5, 0, 3, 0x42, 2, 1))
    [resp] = h.app.send(replace(app_id, udh + b"\x80 not GSM"))
    assert status_of(resp) == 0x45  # the encoding rule's status
    [resp] = h.app.send(replace(app_id, bytes((5, 0, 3, 0x42, 2, 2)) + b"second place"))
    assert status_of(resp) == Status.ESME_RREPLACEFAIL
    [resp] = h.app.send(replace(app_id, b"no header any more"))
    assert status_of(resp) == Status.ESME_RINVMSGLEN  # its first octet is read as the UDH's
    h.app.send(part(2, b"second half"))
    [batch] = h.pool.batches
    assert pdu.read_short_message(batch[0]).short_message == udh + b"first half "


def test_a_part_the_operator_took_is_queried_under_its_operator_id() -> None:
    h = Harness()
    first = held_part(h)
    [] = h.app.send(part(2, b"second half"))
    h.pool.batch_answers[0].callback(
        [pdu.submit_sm_resp(1, 0, b"OPX"), pdu.submit_sm_resp(2, 0, b"OPY")]
    )
    [resp] = h.app.frames()
    last = pdu.message_id_of(resp)
    h.app.send(query(first))
    assert pdu.read_query_sm(h.pool.frames[-1]).message_id == b"OPX"
    h.pool.answers[-1].callback(
        pdu.query_sm_resp(3, 0, pdu.QuerySmResp(b"OPX", b"250101000000000+", 2, 0))
    )
    assert pdu.read_query_sm_resp(h.app.frames()[0]) == pdu.QuerySmResp(
        first, b"250101000000000+", 2, 0
    )
    h.app.send(cancel(last))
    assert pdu.read_cancel_sm(h.pool.frames[-1]).message_id == b"OPY"
