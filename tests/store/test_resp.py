"""The RESP2 protocol and the link over it, on an in-memory transport with a fake clock: replies
matched in order, however the bytes arrive; errors, nils and nesting; a lost or silent
connection fails what waits; AUTH and SELECT before use (and on a real redis-server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hiredis
import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, TimeoutError
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from smpprelay.store.redis_link import RedisLink, RedisUnavailable
from smpprelay.store.resp import RedisArg, ReplyError, RespProtocol
from tests.fakes.redis_server import RedisServer


def _connected(timeout: float = 2.0) -> tuple[RespProtocol, StringTransport, Clock, list[str]]:
    clock = Clock()
    lost: list[str] = []
    protocol = RespProtocol(
        clock, timeout, lost=lambda _, reason: lost.append(reason.getErrorMessage())
    )
    transport = StringTransport()
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return protocol, transport, clock, lost


def _packed(*args: RedisArg) -> bytes:
    """A command as RESP (hiredis's stub types the tuple as one item long)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


def _outcome(done: Deferred[Any]) -> list[object]:
    seen: list[object] = []
    done.addBoth(seen.append)
    return seen


def test_pipelined_replies_complete_commands_in_order() -> None:
    protocol, transport, _, _ = _connected()
    outcomes = [
        _outcome(protocol.execute(("SET", b"k", b"\x00\xff"))),
        _outcome(protocol.execute(("GET", "k"))),
        _outcome(protocol.execute(("INCRBY", "n", 5))),
    ]
    # All three were written before any reply, each encoded as RESP.
    assert transport.value() == b"".join(
        _packed(*command)
        for command in (("SET", b"k", b"\x00\xff"), ("GET", "k"), ("INCRBY", "n", 5))
    )
    protocol.dataReceived(b"+OK\r\n$2\r\n\x00\xff\r\n:5\r\n")
    assert outcomes == [[b"OK"], [b"\x00\xff"], [5]]


def test_partial_reads_wait_for_the_whole_reply() -> None:
    protocol, _, _, _ = _connected()
    first = _outcome(protocol.execute(("LRANGE", "l", 0, -1)))
    second = _outcome(protocol.execute(("GET", "k")))
    wire = b"*2\r\n$5\r\nhello\r\n$0\r\n\r\n$3\r\nend\r\n"
    for index in range(len(wire) - 1):
        protocol.dataReceived(wire[index : index + 1])
        if index < len(wire) - 11:
            assert first == []
    assert first == [[b"hello", b""]]
    assert second == []
    protocol.dataReceived(wire[-1:])
    assert second == [b"end"]


def test_error_nil_and_nested_replies() -> None:
    protocol, transport, _, lost = _connected()
    error = _outcome(protocol.execute(("EVALSHA", "0" * 40, 0)))
    nil = _outcome(protocol.execute(("GET", "nothing")))
    nil_array = _outcome(protocol.execute(("BLPOP", "l", 1)))
    nested = _outcome(protocol.execute(("EVAL", "return {{1, 'a'}, {}}", 0)))
    protocol.dataReceived(b"-NOSCRIPT No matching script\r\n$-1\r\n*-1\r\n")
    protocol.dataReceived(b"*2\r\n*2\r\n:1\r\n$1\r\na\r\n*0\r\n")
    [failure] = error
    assert isinstance(failure, Failure)
    assert failure.check(ReplyError)
    assert "NOSCRIPT" in failure.getErrorMessage()
    assert nil == [None]
    assert nil_array == [None]
    assert nested == [[[1, b"a"], []]]
    # An error reply is an answer: the connection stays.
    assert protocol.usable
    assert not transport.disconnecting
    assert lost == []


def test_lost_connection_fails_every_waiting_command() -> None:
    protocol, _, _, lost = _connected()
    outcomes = [_outcome(protocol.execute(("GET", key))) for key in "abc"]
    protocol.dataReceived(b"$1\r\nA\r\n")
    protocol.connectionLost(Failure(ConnectionLost("reset")))
    assert outcomes[0] == [b"A"]
    for seen in outcomes[1:]:
        [failure] = seen
        assert isinstance(failure, Failure)
        assert failure.check(ConnectionLost)
    assert lost == ["Connection to the other side was lost in a non-clean fashion: reset."]
    late = _outcome(protocol.execute(("GET", "d")))
    assert isinstance(late[0], Failure)
    assert not protocol.usable


def test_reply_timeout_drops_the_connection() -> None:
    protocol, transport, clock, lost = _connected(timeout=2.0)
    first = _outcome(protocol.execute(("GET", "a")))
    clock.advance(1.0)
    second = _outcome(protocol.execute(("GET", "b")))
    clock.advance(0.5)
    protocol.dataReceived(b"$1\r\nA\r\n")
    clock.advance(0.5)  # the first command's deadline: answered, so wait for the second's
    assert first == [b"A"]
    assert second == []
    assert not transport.disconnecting
    clock.advance(0.99)
    assert second == []
    clock.advance(0.01)
    [failure] = second
    assert isinstance(failure, Failure)
    assert failure.check(TimeoutError)
    assert transport.disconnecting
    assert lost
    assert not protocol.usable
    assert clock.getDelayedCalls() == []


def test_garbage_abandons_the_connection() -> None:
    protocol, transport, _, lost = _connected()
    waiting = _outcome(protocol.execute(("PING",)))
    protocol.dataReceived(b"?what\r\n")
    assert isinstance(waiting[0], Failure)
    assert transport.disconnecting
    assert lost


def _wired(url: str) -> tuple[RedisLink, RespProtocol, StringTransport, Clock]:
    clock = Clock()
    link = RedisLink(url, clock, reply_timeout=2.0)
    link._service = object()  # type: ignore[assignment]  # as if started (no reconnects here)
    protocol = link._build()
    transport = StringTransport()
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return link, protocol, transport, clock


def test_link_replies_errors_and_timeout() -> None:
    link, protocol, transport, clock = _wired("redis://127.0.0.1/0")
    assert link._connection() is protocol  # nothing to authenticate or select
    ok = _outcome(link.call("SET", "k", "v"))
    script = _outcome(link.call("EVAL", "return redis.call('NOPE')", 0))
    protocol.dataReceived(b"+OK\r\n-ERR Unknown Redis command called from script\r\n")
    assert ok == ["OK"]  # a status reply comes as str
    assert isinstance(script[0], Failure)
    assert script[0].check(RedisUnavailable)
    assert link._connection() is protocol
    assert link.stats.errors == 1

    waiting = _outcome(link.call("GET", "k"))
    clock.advance(2.0)
    assert isinstance(waiting[0], Failure)
    assert waiting[0].check(RedisUnavailable)
    assert "no reply within 2 s" in link.problem
    assert not link.writable
    assert link._connection() is None
    assert transport.disconnecting
    refused = _outcome(link.call("GET", "k"))  # at once: no connection
    assert isinstance(refused[0], Failure)
    assert refused[0].check(RedisUnavailable)


def test_link_authenticates_and_selects_before_use() -> None:
    link, protocol, transport, _ = _wired("redis://user:s3cret@127.0.0.1/3")
    assert transport.value() == _packed("AUTH", "user", "s3cret") + _packed("SELECT", 3)
    assert link._connection() is None
    protocol.dataReceived(b"+OK\r\n+OK\r\n")
    assert link._connection() is protocol

    link, protocol, transport, _ = _wired("redis://:wrong@127.0.0.1/3")
    assert transport.value().startswith(_packed("AUTH", "wrong"))
    protocol.dataReceived(b"-WRONGPASS invalid username-password pair\r\n-NOAUTH needed\r\n")
    assert link._connection() is None
    assert transport.disconnecting
    assert "WRONGPASS" in link.problem


@ensureDeferred
async def test_auth_and_select_on_redis_server(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    urls = (server.url.replace("/0", "/2"), server.url, f"redis://127.0.0.1:{server.port}/0")
    links = [RedisLink(url, reactor) for url in urls]
    try:
        for link in links:
            link.start()
        for _ in range(250):
            if all(link._connection() for link in links):
                break
            await deferLater(reactor, 0.02)
        on_two, on_zero, without = links
        assert await on_two.call("SET", "k", "two") == "OK"
        assert await on_two.call("GET", "k") == b"two"
        assert await on_zero.call("GET", "k") is None  # another database
        with pytest.raises(RedisUnavailable, match="NOAUTH"):
            await without.call("GET", "k")
    finally:
        for link in links:
            await link.stop()
        server.stop()
