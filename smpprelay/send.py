"""``smpprelay-send``: bind to a relay, send one message, wait for its delivery receipt.

The first thing to run after a deploy: it binds as a transceiver, submits the text (split into
concatenated parts with a UDH when it does not fit one SMS), prints each ``submit_sm_resp``,
counts down while it waits for the receipts of every part, prints their ``stat``, unbinds and
exits 0 only when every part was delivered (``--no-receipt``: when every part was accepted).
1 is a refusal or another final stat, 2 a timeout or a connection or bind failure; a failure is
one line on stderr, never a traceback.

It speaks SMPP through the relay's own wire code (`smpprelay.pdu`) and `SmppConnection`, which
answers ``enquire_link`` and numbers and times the requests.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Final, TextIO

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.connection import ResponseTimeout, SmppConnection
from smpprelay.filters.encoding import NotRepresentable, gsm_encode
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, Status, Tag

PROG: Final = "smpprelay-send"
DELIVERED: Final = 0
NOT_DELIVERED: Final = 1  # refused, or a final stat other than DELIVRD
FAILED: Final = 2  # no receipt in time, no connection, no bind

# --coding -> data_coding: the SMPP standard's, which the relay transcodes to the operator's.
CODINGS: Final = {"gsm": 0, "ascii": 1, "latin1": 3, "ucs2": 8}
# Units in one SMS and per part of a concatenated one (the UDH takes the rest): GSM septets,
# else octets. IA5 and Latin-1 are counted as octets, what the operator's 8-bit allows.
_LIMITS: Final = {"gsm": (160, 153), "ascii": (140, 134), "latin1": (140, 134), "ucs2": (140, 134)}
_MAX_PARTS: Final = 255
_RESPONSE_TIMEOUT: Final = 10.0  # seconds for the bind, each submit and the unbind
_CONNECT_TIMEOUT: Final = 10.0
_STAT: Final = re.compile(rb"\bstat:(\S+)", re.IGNORECASE)
_STATE_NAMES: Final = {value: name for name, value in pdu.MESSAGE_STATES.items()}
_FINAL: Final = frozenset(("DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN"))


class SendError(Exception):
    """A failure to report on one line and exit 2 (no connection, no bind, no receipt)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` says it all."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Bind to a running smpprelay, send one message and wait for its delivery "
        "receipt. Exit status: 0 delivered (or, with --no-receipt, accepted); 1 refused or "
        "not delivered; 2 no receipt in time, no connection or no bind.",
    )
    parser.add_argument("text", help="the message text")
    parser.add_argument("--to", required=True, help="destination address")
    parser.add_argument("--from", dest="source", default="", help="source address")
    parser.add_argument("--host", default="127.0.0.1", help="relay host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=2775, help="relay SMPP port (default 2775)")
    parser.add_argument("--system-id", default="demo", help="account (default demo)")
    parser.add_argument("--password", default="demo", help="password (default demo)")
    parser.add_argument(
        "--coding",
        choices=sorted(CODINGS),
        default="gsm",
        help="gsm (data_coding 0, default), ascii (1), latin1 (3) or ucs2 (8)",
    )
    parser.add_argument(
        "--receipt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask for a delivery receipt and wait for it (default: yes)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the receipt (default 30)"
    )
    parser.add_argument("--tls", action="store_true", help="SMPP over TLS")
    parser.add_argument(
        "--tls-ca", metavar="PEM", help="CA certificates to trust (default: the system's)"
    )
    options = parser.parse_args(argv)
    if options.timeout <= 0:
        parser.error("--timeout must be positive")
    return options


def encode_parts(text: str, coding: str, reference: int) -> tuple[int, int, list[bytes]]:
    """(data_coding, esm_class, short_message of each part) for ``text`` under ``coding``.

    Past one SMS the text is split into parts behind an 8-bit-reference UDH, never splitting
    a GSM escape or a UTF-16 surrogate pair. Raises `ValueError` for a character the coding
    cannot carry or a text of more than 255 parts.
    """
    data_coding = CODINGS[coding]
    try:
        if coding == "gsm":
            data = gsm_encode(text)
        elif coding == "ucs2":
            data = text.encode("utf-16-be")
        else:
            data = text.encode("ascii" if coding == "ascii" else "latin-1")
    except (NotRepresentable, UnicodeEncodeError):
        raise ValueError(f"the text has a character --coding {coding} cannot carry") from None
    single, per_part = _LIMITS[coding]
    if len(data) <= single:
        return data_coding, 0, [data]
    chunks: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + per_part, len(data))
        if end < len(data):
            if coding == "gsm" and data[end - 1] == 0x1B:
                end -= 1  # the escape goes with the character it escapes
            elif coding == "ucs2" and 0xD8 <= data[end - 2] <= 0xDB:
                end -= 2  # a high surrogate goes with its low one
        chunks.append(data[start:end])
        start = end
    if len(chunks) > _MAX_PARTS:
        raise ValueError(f"the text needs {len(chunks)} parts; at most {_MAX_PARTS} can be sent")
    total = len(chunks)
    parts = [bytes((5, 0, 3, reference, total, n)) + chunk for n, chunk in enumerate(chunks, 1)]
    return data_coding, 0x40, parts


def address(text: str) -> tuple[int, int, bytes]:
    """(TON, NPI, address) for an address as typed: digits (a leading + dropped) are an
    international number, anything else alphanumeric; empty lets the SMSC choose."""
    digits = text.removeprefix("+")
    if not text:
        return 0, 0, b""
    if digits.isdigit() and digits.isascii():
        return 1, 1, digits.encode()
    return 5, 0, text.encode()


def receipt_stat(fields: pdu.ShortMessage) -> str:
    """A receipt's state: the ``stat:`` of its text, else its ``message_state`` TLV."""
    match = _STAT.search(fields.text)
    if match:
        return match.group(1).decode("latin-1").upper()
    state = fields.tlv(Tag.message_state)
    if state:
        return _STATE_NAMES.get(state[0], f"state {state[0]}")
    return "UNKNOWN"


class Client:
    """The handler of the client's `SmppConnection`: answers what the relay sends us and
    collects the receipts."""

    def __init__(self) -> None:
        self.receipts: dict[str, str] = {}  # normalised message id -> its last stat
        self.on_receipt: Callable[[], None] = lambda: None
        self.lost: Deferred[None] = Deferred()

    def connection_made(self, connection: SmppConnection) -> None:
        """Nothing to do until `send` binds."""

    def request_received(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        """Answer a deliver_sm (keeping a receipt's stat) or an unbind; refuse the rest."""
        if command_id == CommandId.deliver_sm:
            connection.respond(command_id, sequence, Status.ESME_ROK, b"\0")
            fields = pdu.read_short_message(frame)
            if fields.esm_class & pdu.RECEIPT_ESM_BITS:
                message_id = pdu.receipt_id(fields)
                if message_id is not None:
                    self.receipts[pdu.normalise_message_id(message_id)] = receipt_stat(fields)
                    self.on_receipt()
        elif command_id == CommandId.unbind:
            connection.respond(command_id, sequence, Status.ESME_ROK)
            connection.close()
        else:
            connection.send(pdu.generic_nack(sequence, Status.ESME_RINVCMDID))

    def connection_lost(self, connection: SmppConnection, reason: Failure) -> None:
        """Whoever waits for the relay learns it is gone."""
        if not self.lost.called:
            self.lost.callback(None)


Connect = Callable[[SmppConnection], "Deferred[SmppConnection]"]


def tcp_connect(reactor: object, options: argparse.Namespace) -> Connect:
    """How `send` connects: TCP (or TLS with ``--tls``) to ``--host``:``--port``."""
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, options.host, options.port, timeout=_CONNECT_TIMEOUT
    )
    if options.tls:
        from twisted.internet import ssl

        trust = None
        if options.tls_ca:
            with open(options.tls_ca, "rb") as pem:
                trust = ssl.Certificate.loadPEM(pem.read())
        tls = ssl.optionsForClientTLS(options.host, trustRoot=trust)
        endpoint = wrapClientTLS(tls, endpoint)

    def connect(connection: SmppConnection) -> Deferred[SmppConnection]:
        connected: Deferred[SmppConnection] = connectProtocol(endpoint, connection)
        return connected

    return connect


class Progress:
    """What the command prints while it waits: a countdown updated in place on a terminal,
    a plain line every ten seconds otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.shown = False

    def line(self, text: str) -> None:
        """A line of its own (after the countdown, if one is showing)."""
        self.clear()
        print(text, file=self.out, flush=True)

    def countdown(self, left: int, waiting: int) -> None:
        """``left`` seconds to go for ``waiting`` receipts."""
        what = "the receipt" if waiting == 1 else f"{waiting} receipts"
        if self.tty:
            self.out.write(f"\rwaiting for {what}: {left:>3} s \x1b[K")
            self.out.flush()
            self.shown = True
        elif left % 10 == 0 or not self.shown:
            print(f"waiting for {what}: {left} s left", file=self.out, flush=True)
            self.shown = True

    def clear(self) -> None:
        """Take the countdown off the terminal's line."""
        if self.tty and self.shown:
            self.out.write("\r\x1b[K")
            self.shown = False


async def send(
    clock: IReactorTime, options: argparse.Namespace, connect: Connect, out: TextIO
) -> int:
    """Bind, submit, wait for the receipts, unbind; the exit status. Raises `SendError`."""
    try:
        data_coding, esm_class, parts = encode_parts(
            options.text, options.coding, int.from_bytes(os.urandom(1), "big")
        )
    except ValueError as error:
        raise SendError(str(error)) from None
    client = Client()
    connection = SmppConnection(
        client,
        clock,
        Metrics(),
        side="upstream",
        max_pdu=70_000,
        response_timeout=_RESPONSE_TIMEOUT,
    )
    where = f"{options.host}:{options.port}"
    try:
        await connect(connection)
    except Exception as error:
        raise SendError(f"cannot connect to {where}: {_reason(error)}") from None
    progress = Progress(out)
    try:
        bind = pdu.bind_request("transceiver", 1, options.system_id, options.password)
        status = await _request(connection, bind, "bind")
        if status != Status.ESME_ROK:
            raise SendError(f"bind refused by {where}: {pdu.status_name(status)}")
        message_ids: list[str] = []
        for number, short_message in enumerate(parts, 1):
            source_ton, source_npi, source_addr = address(options.source)
            dest_ton, dest_npi, destination_addr = address(options.to)
            fields = pdu.BLANK_MESSAGE._replace(
                source_ton=source_ton,
                source_npi=source_npi,
                source_addr=source_addr,
                dest_ton=dest_ton,
                dest_npi=dest_npi,
                destination_addr=destination_addr,
                esm_class=esm_class,
                registered_delivery=1 if options.receipt else 0,
                data_coding=data_coding,
                short_message=short_message,
            )
            frame = pdu.encode_short_message(CommandId.submit_sm, 0, fields)
            label = f"part {number}/{len(parts)} " if len(parts) > 1 else ""
            answer = await _answer(connection, frame, "submit_sm")
            status = pdu.header(answer)[2]
            if status != Status.ESME_ROK:
                progress.line(f"{label}submit_sm_resp: {pdu.status_name(status)}")
                await _unbind(connection)
                return NOT_DELIVERED
            message_id = pdu.message_id_of(answer)
            progress.line(f"{label}submit_sm_resp: ESME_ROK, message id {message_id.decode()}")
            message_ids.append(pdu.normalise_message_id(message_id))
        if not options.receipt:
            await _unbind(connection)
            return DELIVERED
        stats = await _wait_for_receipts(clock, client, message_ids, options.timeout, progress)
        if stats is None:
            raise SendError(f"no receipt within {options.timeout:g} s")
        for receipted, stat in zip(message_ids, stats, strict=True):
            progress.line(f"receipt for {receipted}: {stat}")
        await _unbind(connection)
        return DELIVERED if all(stat == "DELIVRD" for stat in stats) else NOT_DELIVERED
    except BaseException:
        progress.clear()
        if not connection.closed:
            connection.abort()
        raise


async def _wait_for_receipts(
    clock: IReactorTime,
    client: Client,
    message_ids: list[str],
    timeout: float,
    progress: Progress,
) -> list[str] | None:
    """Each message's final stat, or None when one is still missing after ``timeout``."""
    done: Deferred[None] = Deferred()

    def missing() -> list[str]:
        return [i for i in message_ids if client.receipts.get(i) not in _FINAL]

    def finish() -> None:
        if not done.called:
            done.callback(None)

    def check() -> None:
        if not missing():
            finish()

    def lost(_: object) -> None:
        if not done.called:
            done.errback(_lost())

    deadline = clock.seconds() + timeout

    def tick() -> None:
        left = deadline - clock.seconds()
        if left > 0:
            progress.countdown(int(left + 0.999), len(missing()))

    client.on_receipt = check
    client.lost.addCallback(lost)
    check()
    ticker = task.LoopingCall(tick)
    ticker.clock = clock
    expiry = clock.callLater(timeout, finish)
    if not done.called:
        ticker.start(1.0)
    try:
        await done
    finally:
        if ticker.running:
            ticker.stop()
        if expiry.active():
            expiry.cancel()
        progress.clear()
    if missing():
        return None
    return [client.receipts[i] for i in message_ids]


async def _answer(connection: SmppConnection, frame: bytes, what: str) -> bytes:
    """The relay's answer to a request; a lost connection or no answer is a `SendError`."""
    try:
        return await connection.send_request(frame)
    except ResponseTimeout:
        raise SendError(f"no answer to {what} within {_RESPONSE_TIMEOUT:g} s") from None
    except Exception as error:
        raise SendError(f"connection lost during {what}: {_reason(error)}") from None


async def _request(connection: SmppConnection, frame: bytes, what: str) -> int:
    answer = await _answer(connection, frame, what)
    status: int = pdu.header(answer)[2]
    return status


async def _unbind(connection: SmppConnection) -> None:
    if not connection.closed:
        await connection.unbind()


def _lost() -> SendError:
    return SendError("the relay closed the connection before the receipt came")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, run the reactor until done, return the exit status."""
    options = parse_args(argv)
    from twisted.internet import reactor

    result: list[int] = []

    async def run() -> None:
        try:
            result.append(await send(reactor, options, tcp_connect(reactor, options), sys.stdout))
        except SendError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            result.append(FAILED)
        except Exception as error:  # a bug, still one line: the exit status is the contract
            print(f"{PROG}: unexpected {type(error).__name__}: {_reason(error)}", file=sys.stderr)
            result.append(FAILED)

    def stop(_: object) -> None:
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addBoth(stop))
    reactor.run()
    return result[0] if result else FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
