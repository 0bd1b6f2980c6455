"""Relay benchmark: windowed clients -> relay -> simulated SMSC, all on 127.0.0.1.

Run ``python benchmarks/relay_bench.py [--quick] [--profile]``. It starts three child
processes (this same file under ``--role``): the simulated SMSC, the relay, and a raw
forwarder that only splits the stream on ``command_length`` and copies frames both ways.
The relay and the forwarder are pinned to one core (``--relay-cpu``); the simulator and the
load client in this process share the other (``--load-cpu``).

Phases, each bounded in count and in time:

1. throughput: ``--count`` submits with ``--window`` requests in flight per client, through
   the relay, through the forwarder and straight to the simulator (the client and simulator's
   own ceiling);
2. latency: ``--rate`` submits/s for ``--seconds`` seconds, paced, straight to the simulator,
   through the relay and through the forwarder; the latency the relay adds is its percentile
   minus the direct one.

``--rules`` says which relay runs: ``on`` (the operator's four rules at their defaults, as
shipped), ``off`` (every rule disabled) or ``both`` (default: two relay children, the rate of
each and their ratio; the latency phase uses the one with the rules on). The dedup and flood
windows keep their newest ``fast_entries`` (2^18) entries in a dict and the rest in compact
records; ``--fast-entries N`` below ``--count`` measures the rules with most of their state in
the records, as at more than 2^18 live entries. So that the rules
reject nothing, every submit is distinct: its own 11-digit destination number, so no two are
identical within the dedup window and no number gets more than one. The frames are encoded
before the run; only their sequence numbers are patched as they are sent.

``--store`` says where the relay keeps its state: ``memory``, ``sqlite`` (a file in a temporary
directory under ``--store-dir``, removed afterwards; ``--sync full`` by default, as shipped) or
``both`` (default: the relay with the rules on runs once with each store, the rate of each and
their ratio; with ``--rules both`` the relay with the rules off uses the memory store, so the
rules on/off ratio is the rules' cost alone). Every submit asks for a receipt
(``registered_delivery`` 1; ``--registered-delivery 0`` for none), so the relay writes its
receipt route to the store before it answers ``ESME_ROK``: that write is the store's real cost.
All paths and both rule settings get the same frames. The simulated SMSC here sends no receipts
back, so the receipt side (looking a route up, cutting it back, holding the receipt for an app
bound as a transmitter) is not measured, and nothing but the routes grows. For the sqlite relay
the benchmark reads the store's commits and writes from the relay's metrics port around each
phase and prints the writes per commit (the group commit's size) and commits per second.

It prints a table, the targets met or missed, and one JSON line last. A missed target is a
measurement, not a failure: the exit code is 0 unless something broke. ``--profile`` runs the
relay child under cProfile and prints its top functions by own time (numbers are then slower).

``--peer c`` drives the relay with the C peers of ``../shared/tools/fastpeer.c`` instead (built
with ``gcc -O2`` in a temporary directory; without gcc or the file it says so and exits 0): the
C SMSC and the C windowed load client (``--window``, 100) each do millions of round trips per
second, so the relay is the only bottleneck. For the raw forwarder and each relay (rules on and
off, per ``--rules``, each with each store of ``--store``) it sends ``--count`` submits (after a
warm-up) and prints the rate, the relay's (or forwarder's) CPU per answered submit from /proc
over the load, and its ratio to the forwarder's. ``--runs N`` starts fresh children N times and
prints every run's lines and the medians. The C client's submits ask for no receipt
(registered_delivery 0), so the store keeps no routes for them. Without ``--peer c`` the mode
never runs (``--quick`` stays the Python peers' smoke run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IConnector
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

REPO = Path(__file__).resolve().parent.parent
for _directory in (REPO, REPO / "benchmarks"):  # smpprelay, and fastpeer next to this file
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

import fastpeer  # noqa: E402

from smpprelay import pdu  # noqa: E402
from smpprelay.pdu import BLANK_MESSAGE, CommandId  # noqa: E402

HOST = "127.0.0.1"
ACCOUNT = "bench"
PASSWORD = "bench"
TEXT = (b"relay benchmark " * 10)[:160]
FIRST_NUMBER = 79_000_000_000  # destinations are FIRST_NUMBER, FIRST_NUMBER + 1, ...

# Targets from the issue: one relay process on one core, window 100.
TARGET_RATE = 20_000.0
TARGET_RATIO = 0.5
TARGET_P99_ADDED_MS = 2.0
TARGET_RULES_RATIO = 0.8  # rules on >= 80 % of rules off
TARGET_STORE_RATIO = 0.85  # rules on: the sqlite store (sync full) >= 85 % of the memory store
RULES_OFF = {
    "encoding": {"enabled": False},
    "concat": {"enabled": False},
    "dedup": {"enabled": False},
    "flood": {"enabled": False},
}

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
IDLE_TIMEOUT = 10.0  # a phase with no answer for this long is abandoned
DRAIN_TIMEOUT = 5.0
_LOST = Failure(ConnectionDone())
# The relay's store metrics the benchmark reads: (sample name, key).
_STORE_METRICS = (
    ("smpprelay_store_commits_total", "commits"),
    ("smpprelay_store_writes_total", "writes"),
    ('smpprelay_store_rows{kind="routes"}', "routes"),
    ("smpprelay_store_writable", "writable"),
)


# --- the load client (plain sockets, in this process) ---------------------------------------


def submit_template(destination: bytes = b"447700900123", registered_delivery: int = 1) -> bytes:
    """One 160-character GSM submit_sm asking for a receipt (``registered_delivery`` 1: the
    relay stores its receipt route before answering); its sequence is patched per send."""
    message = BLANK_MESSAGE._replace(
        source_ton=5,
        source_addr=b"BENCH",
        dest_ton=1,
        dest_npi=1,
        destination_addr=destination,
        registered_delivery=registered_delivery,
        short_message=TEXT,
    )
    return pdu.encode_short_message(CommandId.submit_sm, 0, message)


def distinct_submits(count: int, registered_delivery: int = 1) -> list[bytes]:
    """``count`` submits, each to its own 11-digit number (sequence 0, patched per send)."""
    marker = b"%011d" % FIRST_NUMBER
    template = submit_template(marker, registered_delivery)
    at = template.index(marker)  # a fixed-size number: the frame's length does not change
    head, tail = template[:at], template[at + len(marker) :]
    return [head + b"%011d" % (FIRST_NUMBER + index) + tail for index in range(count)]


class Frames:
    """A cursor over pre-encoded submits; each load path takes its own (no frame twice)."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.position = 0
        self.wrapped = False  # more submits were sent than there are frames: some repeated

    def take(self) -> bytes:
        frames = self.frames
        position = self.position
        if position == len(frames):
            position = 0
            self.wrapped = True
        self.position = position + 1
        return frames[position]


class LoadError(Exception):
    """The load client could not do its job (refused bind, connection lost, no answers)."""


class ClientConnection:
    """One bound transmitter with its requests in flight and their send times."""

    def __init__(self, port: int, frames: Frames) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=IDLE_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = frames
        self.framer = pdu.Framer(1 << 20)
        self.sent: dict[int, int] = {}  # sequence -> perf_counter_ns at send
        self.next_sequence = 2
        self.closed = False

    def _request(self, frame: bytes) -> bytes:
        """Send one request and wait for the frame that answers it."""
        sequence = pdu.sequence_of(frame)
        self.sock.sendall(frame)
        deadline = time.monotonic() + IDLE_TIMEOUT
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                raise LoadError("connection closed while waiting for an answer")
            for answer in self.framer.feed(data):
                _, command_id, _, seq = pdu.header(answer)
                if command_id & pdu.RESPONSE_BIT and seq == sequence:
                    return answer
                self.answer_request(answer)
        raise LoadError("no answer within the idle timeout")

    def bind(self) -> None:
        answer = self._request(pdu.bind_request("transmitter", 1, ACCOUNT, PASSWORD))
        _, command_id, status, _ = pdu.header(answer)
        if command_id != CommandId.bind_transmitter_resp or status != 0:
            raise LoadError(f"bind refused: {pdu.command_name(command_id)} status {status:#x}")

    def send(self, count: int) -> None:
        """Send ``count`` submits in one write."""
        frames = []
        sequence = self.next_sequence
        take = self.frames.take
        for _ in range(count):
            frames.append(pdu.with_sequence(take(), sequence))
            sequence += 1
        now = time.perf_counter_ns()
        sent = self.sent
        for seq in range(self.next_sequence, sequence):
            sent[seq] = now
        self.next_sequence = sequence
        self.sock.sendall(b"".join(frames))

    def answer_request(self, frame: bytes) -> None:
        """Answer a request the peer sent us (enquire_link, a stray deliver_sm)."""
        _, command_id, _, sequence = pdu.header(frame)
        if command_id & pdu.RESPONSE_BIT:
            return
        if command_id == CommandId.enquire_link:
            self.sock.sendall(pdu.response(command_id, sequence))
        elif command_id == CommandId.deliver_sm:
            self.sock.sendall(pdu.response(command_id, sequence, 0, b"\0"))
        else:
            self.sock.sendall(pdu.generic_nack(sequence, pdu.Status.ESME_RINVCMDID))

    def close(self) -> None:
        """Unbind (waiting briefly for the answer) and close; never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.settimeout(DRAIN_TIMEOUT)
            self._request(pdu.build(CommandId.unbind, 1))
        except (OSError, LoadError):
            pass
        finally:
            self.sock.close()


@dataclass
class LoadResult:
    """What one phase measured."""

    answered: int = 0
    errors: int = 0  # answers other than ESME_ROK, generic_nack included
    elapsed: float = 0.0  # first send to last answer
    latencies_ns: list[int] = field(default_factory=list)
    timed_out: bool = False
    cpu: dict[str, float] = field(default_factory=dict)  # process -> share of one core
    wall: float = 0.0  # the whole phase, bind to unbind: what ``cpu`` is a share of

    def cpu_us_per_submit(self, process: str) -> float:
        """CPU time ``process`` spent per answered submit, in microseconds."""
        if not self.answered:
            return float("nan")
        return self.cpu.get(process, 0.0) * self.wall / self.answered * 1e6

    @property
    def rate(self) -> float:
        return self.answered / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the latencies (nearest rank), in milliseconds."""
        values = self.latencies_ns  # sorted by run_load
        if not values:
            return float("nan")
        index = min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))
        return values[index] / 1e6


def run_load(
    port: int,
    frames: Frames,
    *,
    count: int,
    window: int,
    clients: int,
    max_seconds: float,
    rate: float | None = None,
) -> LoadResult:
    """Send ``count`` submits over ``clients`` connections and time every answer.

    Without ``rate`` each connection keeps ``window`` submits in flight (maximum throughput);
    with it, submits go out at ``rate`` per second in total, never more than ``window`` in
    flight on a connection. Stops after ``count`` answers or ``max_seconds``, whichever first.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the client's own collections would show up as latency on every path
    try:
        return _run_load(port, frames, count, window, clients, max_seconds, rate)
    finally:
        if gc_was_enabled:
            gc.enable()


def _run_load(
    port: int,
    frames: Frames,
    count: int,
    window: int,
    clients: int,
    max_seconds: float,
    rate: float | None,
) -> LoadResult:
    connections: list[ClientConnection] = []
    selector = selectors.DefaultSelector()
    result = LoadResult()
    latencies = result.latencies_ns
    to_send = count
    try:
        for _ in range(clients):
            connection = ClientConnection(port, frames)
            connections.append(connection)
            connection.bind()
            connection.sock.setblocking(True)
            selector.register(connection.sock, selectors.EVENT_READ, connection)
        start = time.perf_counter()
        hard_stop = start + max_seconds
        last_answer = last_activity = start
        sent_total = 0
        if rate is None:
            for connection in connections:
                n = min(window, to_send - sent_total)
                if n > 0:
                    connection.send(n)
                    sent_total += n
        turn = 0
        while result.answered + result.errors < sent_total or sent_total < to_send:
            now = time.perf_counter()
            if now >= hard_stop:
                result.timed_out = sent_total < to_send
                break
            timeout = min(IDLE_TIMEOUT, hard_stop - now)
            if rate is not None and sent_total < to_send:
                due = min(to_send, int((now - start) * rate) + 1) - sent_total
                full = False
                while due > 0:
                    if all(len(c.sent) >= window for c in connections):
                        full = True  # the next send waits for an answer, not for the clock
                        break
                    connection = connections[turn % clients]
                    turn += 1
                    n = min(due, window - len(connection.sent))
                    if n > 0:
                        connection.send(n)
                        sent_total += n
                        due -= n
                        last_activity = now
                if sent_total < to_send and not full:
                    next_due = start + sent_total / rate
                    timeout = max(0.0, min(timeout, next_due - time.perf_counter()))
            events = selector.select(timeout)
            if not events:
                waiting = any(c.sent for c in connections)
                if waiting and time.perf_counter() - last_activity >= IDLE_TIMEOUT:
                    raise LoadError(f"no answer for {IDLE_TIMEOUT:.0f} s")
                continue
            for key, _ in events:
                connection = cast(ClientConnection, key.data)
                data = connection.sock.recv(262144)
                if not data:
                    raise LoadError("the peer closed the connection")
                answered_now = 0
                stamp = time.perf_counter_ns()
                sent = connection.sent
                for frame in connection.framer.feed(data):
                    _, command_id, status, sequence = pdu.HEADER.unpack_from(frame, 0)
                    if command_id & pdu.RESPONSE_BIT:
                        started = sent.pop(sequence, None)
                        if started is None:
                            continue
                        answered_now += 1
                        if status == 0 and command_id == CommandId.submit_sm_resp:
                            result.answered += 1
                            latencies.append(stamp - started)
                        else:
                            result.errors += 1
                    else:
                        connection.answer_request(frame)
                if answered_now:
                    last_answer = last_activity = time.perf_counter()
                    if rate is None and sent_total < to_send:
                        n = min(answered_now, to_send - sent_total)
                        connection.send(n)
                        sent_total += n
        result.elapsed = last_answer - start
        _drain(connections, selector)
    finally:
        selector.close()
        for connection in connections:
            connection.close()
    latencies.sort()
    return result


def _drain(connections: list[ClientConnection], selector: selectors.BaseSelector) -> None:
    """Wait briefly for answers still in flight so the unbind that follows is clean."""
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    while any(c.sent for c in connections) and time.perf_counter() < deadline:
        for key, _ in selector.select(deadline - time.perf_counter()):
            connection = cast(ClientConnection, key.data)
            data = connection.sock.recv(262144)
            if not data:
                return
            for frame in connection.framer.feed(data):
                if pdu.header(frame)[1] & pdu.RESPONSE_BIT:
                    connection.sent.pop(pdu.sequence_of(frame), None)


# --- child processes ------------------------------------------------------------------------


def _cpu_ticks(pid: int) -> float:
    """utime + stime of a process in seconds (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


class Child:
    """One child process running a role of this file; stopped for sure by `stop`."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by children())
        path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args, "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.port = 0
        self.metrics_port = 0  # the relay's (0: none)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> int:
        """Wait for the child's ``READY <port> [<metrics port>]`` line; return the port."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = _select([stdout], deadline - time.monotonic())
            if not ready:
                break
            line = stdout.readline()
            if not line:
                break
            if line.startswith(b"READY "):
                ports = line.split()[1:]
                self.port = int(ports[0])
                self.metrics_port = int(ports[1]) if len(ports) > 1 else 0
                return self.port
        raise RuntimeError(f"{self.name} did not start: {line!r}\n{self.stderr_text()}")

    def cpu_seconds(self) -> float:
        return _cpu_ticks(self.pid)

    def store_counters(self) -> dict[str, float]:
        """The relay's store metrics now (commits, writes, routes, writable); {} if unread."""
        if not self.metrics_port:
            return {}
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        counters = {}
        for line in text.splitlines():
            for name, key in _STORE_METRICS:
                if line.startswith(name + " "):
                    counters[key] = float(line.split()[-1])
        return counters

    def max_rss_mb(self) -> float:
        """The peak resident set size so far (VmHWM), in MiB."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stderr_text(self, limit: int = 4000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-limit:]

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; its exit code."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode


def _select(readers: list[IO[bytes]], timeout: float) -> tuple[list[Any], list[Any], list[Any]]:
    return select.select(readers, [], [], max(0.0, timeout))


@contextmanager
def children() -> Iterator[list[Child]]:
    """Every child started inside is stopped on the way out, whatever happened."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            try:
                child.stop()
            finally:
                child.stderr.close()


# --- roles run in the children --------------------------------------------------------------


def _pin(cpu: int) -> None:
    """Run this process on ``cpu`` only (-1: leave it alone)."""
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _affinity(pid: int) -> str:
    try:
        return ",".join(map(str, sorted(os.sched_getaffinity(pid))))
    except (AttributeError, OSError):
        return "?"


def _run_child(args: argparse.Namespace) -> None:
    """Run one role on the default reactor until SIGTERM (or until the parent is gone)."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.task import LoopingCall
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    reactor = cast(Any, global_reactor)
    _pin(args.cpu)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    ready: Callable[[], object]  # what follows READY: falsy until then
    if args.role == "simulator":
        ready = _start_simulator(reactor)
    elif args.role == "relay":
        ready = _start_relay(reactor, args)
    else:
        ready = _start_forwarder(reactor, args.upstream_port)

    def orphaned() -> None:
        if os.getppid() != args.parent:  # the benchmark is gone: so are we
            reactor.stop()

    def announce() -> None:
        port = ready()
        if port:
            announcer.stop()
            sys.stdout.write(f"READY {port}\n")
            sys.stdout.flush()

    LoopingCall(orphaned).start(1.0)
    announcer = LoopingCall(announce)
    announcer.start(0.02)
    profiler = None
    if args.profile_out:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    reactor.run()
    if profiler is not None:
        import pstats

        profiler.disable()
        with open(args.profile_out, "w") as out:
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            out.write("relay functions by cumulative time:\n")
            stats.sort_stats("cumulative").print_stats(r"smpprelay[/\\]", 15)


def _listening_port(port: Any) -> int:
    return int(port.getHost().port)


def _start_simulator(reactor: Any) -> Callable[[], int]:
    from smpprelay.metrics import Metrics
    from smpprelay.pdu import ShortMessage
    from smpprelay.simulator import Simulator, SimulatorFactory

    class NoReceipts(Simulator):
        """Answers every submit but sends no receipt: only the relay's route write is measured
        (and the direct and forwarder paths do no receipt work the relay path does not)."""

        def receipt(self, message: ShortMessage, message_id: bytes, submitted: float) -> bytes:
            return b""

        def send_to(self, system_id: str, frame: bytes) -> None:
            pass

    factory = SimulatorFactory(NoReceipts(reactor), Metrics())
    port = reactor.listenTCP(0, factory, interface=HOST)
    return lambda: _listening_port(port)


def _start_relay(reactor: Any, args: argparse.Namespace) -> Callable[[], str]:
    from smpprelay.config import parse_config
    from smpprelay.gc_tuning import tune_collector
    from smpprelay.malloc import fix_mmap_threshold
    from smpprelay.service import build

    config = parse_config(
        {
            "listen": {"host": HOST, "port": 0},
            "metrics": {"host": HOST, "port": 0},
            "clients": [
                {"system_id": ACCOUNT, "password": PASSWORD, "allowed_ips": ["127.0.0.0/8"]}
            ],
            "upstream": {
                "host": HOST,
                "port": args.upstream_port,
                "system_id": "relay",
                "password": "relay",
                "window": args.upstream_window,
                "binds": args.binds,
            },
            "limits": {"window": args.window},
            "store": {
                "backend": args.store_backend,
                "path": args.store_path or "unused.db",
                "sync": args.sync,
            },
            **({"filters": RULES_OFF} if args.rules_off else _fast_entries(args)),
        },
        "benchmark",
    )
    fix_mmap_threshold()  # as `twistd smpprelay` does at start
    service = build(config, reactor)
    service.startService()
    reactor.callWhenRunning(tune_collector)  # as `twistd smpprelay` does once running
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    def ready() -> str:
        if not service.ready()[0] or service.upstream.pool.bound < args.binds:
            return ""
        assert service.listener.port is not None
        assert service.metrics_listener.port is not None
        # The metrics port too: the benchmark reads the store's commits and writes there.
        return (
            f"{_listening_port(service.listener.port)} "
            f"{_listening_port(service.metrics_listener.port)}"
        )

    return ready


class _Half(Protocol):
    """One side of the raw forwarder: splits what it reads into frames, writes them across."""

    def __init__(self) -> None:
        self.framer = pdu.Framer(1 << 20)
        self.other: _Half | None = None
        self.waiting: list[bytes] = []  # frames read before the other side was connected

    def dataReceived(self, data: bytes) -> None:
        frames = self.framer.feed(data)
        other = self.other
        if other is None or other.transport is None:
            self.waiting.extend(frames)
            return
        write = other.transport.write
        for frame in frames:
            write(frame)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        other, self.other = self.other, None
        if other is not None:
            other.other = None
            if other.transport is not None:
                other.transport.loseConnection()


class _Inbound(_Half):
    """The client's side: opens the connection to the simulator as soon as it is accepted."""

    reactor: Any = None
    upstream_port = 0

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.reactor.connectTCP(HOST, self.upstream_port, _OutboundFactory(self))


class _Outbound(_Half):
    """The simulator's side: sends what the client wrote before it was connected."""

    def connectionMade(self) -> None:
        inbound = self.other
        assert inbound is not None
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        for frame in inbound.waiting:
            self.transport.write(frame)
        inbound.waiting.clear()


class _OutboundFactory(ClientFactory):
    noisy = False

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def buildProtocol(self, addr: IAddress | None) -> _Outbound:
        outbound = _Outbound()
        outbound.other, self.inbound.other = self.inbound, outbound
        return outbound

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if self.inbound.transport is not None:
            self.inbound.transport.loseConnection()


def _start_forwarder(reactor: Any, upstream_port: int) -> Callable[[], int]:
    _Inbound.reactor = reactor
    _Inbound.upstream_port = upstream_port
    factory = Factory.forProtocol(_Inbound)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface=HOST)
    return lambda: _listening_port(port)


# --- the benchmark --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput, latency and memory of the relay against a raw forwarder."
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 20,000 submits, 3 s of paced load"
    )
    parser.add_argument(
        "--count", type=int, help="submits per throughput run (200,000; 20,000 with --quick)"
    )
    parser.add_argument(
        "--seconds", type=float, help="length of each paced latency run (10; 3 with --quick)"
    )
    parser.add_argument("--rate", type=float, default=2000.0, help="paced rate, submits/s")
    parser.add_argument("--window", type=int, default=100, help="requests in flight per client")
    parser.add_argument("--clients", type=int, default=1, help="client connections")
    parser.add_argument("--binds", type=int, default=1, help="relay's upstream binds")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="time cap on each throughput run"
    )
    parser.add_argument("--relay-cpu", type=int, default=1, help="core of relay and forwarder")
    parser.add_argument("--load-cpu", type=int, default=0, help="core of client and simulator")
    parser.add_argument(
        "--rules",
        choices=("on", "off", "both"),
        default="both",
        help="relay with the four operator rules at their defaults, with none, or both (default)",
    )
    parser.add_argument(
        "--fast-entries",
        type=int,
        default=None,
        help="relay with the rules on: filters.dedup/flood.fast_entries (default: as shipped, "
        "2^18; a value under --count puts the rules' state in the compact records)",
    )
    parser.add_argument(
        "--store",
        choices=("memory", "sqlite", "both"),
        default="both",
        help="the relay's store: memory, sqlite (in a temporary directory) or both (default: "
        "the relay with the rules on runs with each, and their ratio)",
    )
    parser.add_argument(
        "--sync",
        choices=("full", "normal"),
        default="full",
        help="store.sync of the sqlite store (default full, as shipped)",
    )
    parser.add_argument(
        "--store-dir",
        default=None,
        help="where the sqlite store's temporary directory is made (default: the system's "
        "temporary directory; on tmpfs, sync full costs nothing and measures nothing)",
    )
    parser.add_argument(
        "--registered-delivery",
        type=int,
        choices=(0, 1),
        default=1,
        help="the submits' registered_delivery (default 1: the relay stores a receipt route "
        "for each; 0: no receipt, nothing stored)",
    )
    parser.add_argument(
        "--peer",
        choices=("python", "c"),
        default="python",
        help="load client and SMSC: this file's Python peers (default) or the C peers of "
        "../shared/tools/fastpeer.c (CPU per submit of relay and forwarder, and their ratio)",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="--peer c: repeat this many times, print medians"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the relay under cProfile and print its top 25 functions by own time",
    )
    hidden = argparse.SUPPRESS
    parser.add_argument("--role", choices=("simulator", "relay", "forwarder"), help=hidden)
    parser.add_argument("--cpu", type=int, default=-1, help=hidden)
    parser.add_argument("--parent", type=int, default=0, help=hidden)
    parser.add_argument("--upstream-port", type=int, default=0, help=hidden)
    parser.add_argument("--upstream-window", type=int, default=100, help=hidden)
    parser.add_argument("--profile-out", default="", help=hidden)
    parser.add_argument("--rules-off", action="store_true", help=hidden)
    parser.add_argument("--store-backend", default="memory", help=hidden)
    parser.add_argument("--store-path", default="", help=hidden)
    args = parser.parse_args(argv)
    if args.count is None:
        args.count = 20_000 if args.quick else 200_000
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    for name in ("count", "window", "clients", "binds", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.runs > 1 and args.peer != "c":
        parser.error("--runs is for --peer c")
    if args.rate <= 0 or args.seconds <= 0 or args.max_seconds <= 0:
        parser.error("--rate, --seconds and --max-seconds must be positive")
    return args


def _measure(
    port: int,
    frames: Frames,
    watched: dict[str, Child],
    *,
    count: int,
    window: int,
    clients: int,
    max_seconds: float,
    rate: float | None = None,
) -> LoadResult:
    before = {name: child.cpu_seconds() for name, child in watched.items()}
    before_self = _self_cpu()
    started = time.monotonic()
    result = run_load(
        port,
        frames,
        count=count,
        window=window,
        clients=clients,
        max_seconds=max_seconds,
        rate=rate,
    )
    wall = time.monotonic() - started
    result.cpu = {
        name: (child.cpu_seconds() - before[name]) / wall for name, child in watched.items()
    }
    result.cpu["client"] = (_self_cpu() - before_self) / wall
    result.wall = wall
    return result


def _ms(value: float) -> str:
    return f"{value:8.3f}" if value == value else "     n/a"


def _row(label: str, result: LoadResult, hop: str) -> str:
    timed_out = " (time cap hit)" if result.timed_out else ""
    return (
        f"{label:<26}{result.answered:>9,}{result.errors:>7,}{result.rate:>11,.0f}"
        f"{_ms(result.percentile_ms(50))}{_ms(result.percentile_ms(99))}"
        f"{_ms(result.percentile_ms(99.9))}"
        f"{result.cpu.get(hop, 0.0):>7.0%}{result.cpu.get('simulator', 0.0):>7.0%}"
        f"{result.cpu.get('client', 0.0):>7.0%}{timed_out}"
    )


def _header() -> str:
    return (
        f"{'run':<26}{'answered':>9}{'errors':>7}{'submits/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p99.9':>8}"
        f"{'hop':>7}{'sim':>7}{'client':>7}"
    )


def _fast_entries(args: argparse.Namespace) -> dict[str, Any]:
    """The relay's filters config for ``--fast-entries`` (nothing: as shipped)."""
    if args.fast_entries is None:
        return {}
    tier = {"fast_entries": args.fast_entries}
    return {"filters": {"dedup": tier, "flood": tier}}


def _relays(rules: str, store: str) -> list[tuple[str, str, bool, str]]:
    """The relay children to run: (process name, row label, rules off, store backend).

    ``relay``: the first rule setting (on, unless only off) with the first store (memory, unless
    only sqlite); ``relay-sqlite``: the same rules with the sqlite store (``--store both``);
    ``relay-off``: the rules off with the first store (``--rules both``).
    """
    stores = ["memory", "sqlite"] if store == "both" else [store]
    first = "off" if rules == "off" else "on"
    relays = [("relay", f"relay, rules {first}, {stores[0]}", first == "off", stores[0])]
    if store == "both":
        relays.append(("relay-sqlite", f"relay, rules {first}, sqlite", first == "off", "sqlite"))
    if rules == "both":
        relays.append(("relay-off", f"relay, rules off, {stores[0]}", True, stores[0]))
    return relays


def _filesystem(path: str) -> str:
    """The type of the filesystem ``path`` is on (Linux /proc/mounts), or "?"."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    real = os.path.realpath(path)
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


@dataclass
class StoreDelta:
    """What a relay's store did during one phase (from its metrics)."""

    commits: float = 0.0
    writes: float = 0.0
    routes: float = float("nan")  # routes in the store at the end of the phase
    seconds: float = 0.0
    writable: bool = True

    @property
    def writes_per_commit(self) -> float:
        return self.writes / self.commits if self.commits else float("nan")

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds if self.seconds else float("nan")


def _store_delta(before: dict[str, float], after: dict[str, float], seconds: float) -> StoreDelta:
    return StoreDelta(
        commits=after.get("commits", 0.0) - before.get("commits", 0.0),
        writes=after.get("writes", 0.0) - before.get("writes", 0.0),
        routes=after.get("routes", float("nan")),
        seconds=seconds,
        writable=after.get("writable", 1.0) == 1.0 and before.get("writable", 1.0) == 1.0,
    )


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pinned = args.relay_cpu in cpus and args.load_cpu in cpus and args.relay_cpu != args.load_cpu
    relay_cpu, load_cpu = (args.relay_cpu, args.load_cpu) if pinned else (-1, -1)
    window, clients = args.window, args.clients
    warmup = max(1000, min(10_000, args.count // 10))
    paced_count = max(1, round(args.rate * args.seconds))
    # Enough distinct submits that no relay ever sees one twice (its warm-up, throughput and
    # paced runs together).
    encoding_started = time.perf_counter()
    submits = distinct_submits(warmup + args.count + paced_count, args.registered_delivery)
    encoding_seconds = time.perf_counter() - encoding_started
    relays = _relays(args.rules, args.store)
    # backend -> the relay child with the first rule setting and that store
    store_relay = {backend: name for name, _, _, backend in relays if name != "relay-off"}
    profile_out = ""
    load_before = os.getloadavg()[0]
    print(
        f"relay benchmark: {args.count:,} submits per throughput run, window {window} x "
        f"{clients} client(s), {args.rate:,.0f}/s paced for {args.seconds:g} s, "
        f"{args.binds} upstream bind(s), rules {args.rules}"
        + ("" if args.fast_entries is None else f" (fast_entries {args.fast_entries:,})")
        + f", store {args.store}"
        + (f" (sqlite sync {args.sync})" if "sqlite" in store_relay else "")
        + f", registered_delivery {args.registered_delivery}; "
        + (
            f"relay/forwarder on cpu {relay_cpu}, client/simulator on cpu {load_cpu}"
            if pinned
            else "not pinned (needs two usable cores)"
        )
        + f"; load average {load_before:.2f}; {len(submits):,} distinct submits encoded "
        f"in {encoding_seconds:.1f} s",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory() as scratch,
        tempfile.TemporaryDirectory(prefix="relay-bench-store-", dir=args.store_dir) as stores,
        children() as started,
    ):
        store_fs = _filesystem(stores)
        if "sqlite" in store_relay:
            print(f"sqlite store in {stores} ({store_fs}), removed afterwards", flush=True)
            if store_fs in ("tmpfs", "ramfs"):
                print("note: the store is in memory (tmpfs): sync full costs nothing here")
        if args.profile:
            profile_out = os.path.join(scratch, "relay.prof.txt")
        simulator = Child("simulator", ["--role", "simulator", "--cpu", str(load_cpu)])
        started.append(simulator)
        sim_port = simulator.wait_ready()
        relay_children: dict[str, Child] = {}
        for name, _, rules_off, backend in relays:
            child = Child(
                name,
                [
                    "--role",
                    "relay",
                    "--cpu",
                    str(relay_cpu),
                    "--upstream-port",
                    str(sim_port),
                    "--upstream-window",
                    str(window * clients),
                    "--window",
                    str(window),
                    "--binds",
                    str(args.binds),
                    *(["--rules-off"] if rules_off else []),
                    "--store-backend",
                    backend,
                    "--store-path",
                    os.path.join(stores, f"{name}.db") if backend == "sqlite" else "",
                    "--sync",
                    args.sync,
                    *(
                        ["--fast-entries", str(args.fast_entries)]
                        if args.fast_entries is not None and not rules_off
                        else []
                    ),
                    # Only the first relay is profiled: it is the one the latency phase uses.
                    *(["--profile-out", profile_out] if profile_out and not relay_children else []),
                ],
            )
            started.append(child)
            relay_children[name] = child
        forwarder = Child(
            "forwarder",
            ["--role", "forwarder", "--cpu", str(relay_cpu), "--upstream-port", str(sim_port)],
        )
        started.append(forwarder)
        relay_ports = {name: child.wait_ready() for name, child in relay_children.items()}
        forwarder_port = forwarder.wait_ready()
        _pin(load_cpu)  # only now: the children would inherit it before pinning themselves
        print(
            "cpus: "
            + ", ".join(f"{name} {_affinity(child.pid)}" for name, child in relay_children.items())
            + f", forwarder {_affinity(forwarder.pid)}, "
            f"simulator {_affinity(simulator.pid)}, client {_affinity(0)}",
            flush=True,
        )
        # name -> (row label, port, processes watched, its own cursor over the submits)
        paths: dict[str, tuple[str, int, dict[str, Child], Frames]] = {}
        for name, label, _, _ in relays:
            watched = {name: relay_children[name], "simulator": simulator}
            paths[name] = (label, relay_ports[name], watched, Frames(submits))
        paths["forwarder"] = (
            "forwarder",
            forwarder_port,
            {"forwarder": forwarder, "simulator": simulator},
            Frames(submits),
        )
        paths["direct"] = ("direct", sim_port, {"simulator": simulator}, Frames(submits))
        for _, port, watched, frames in paths.values():
            _measure(
                port,
                frames,
                watched,
                count=warmup,
                window=window,
                clients=clients,
                max_seconds=10,
            )

        print("\nmaximum throughput (hop = relay or forwarder CPU, one core = 100%)")
        print(_header())
        throughput: dict[str, LoadResult] = {}
        # (phase, relay) -> what its store did
        store_deltas: dict[tuple[str, str], StoreDelta] = {}
        for name, (label, port, watched, frames) in paths.items():
            relay_child = relay_children.get(name)
            counters = relay_child.store_counters() if relay_child else {}
            throughput[name] = _measure(
                port,
                frames,
                watched,
                count=args.count,
                window=window,
                clients=clients,
                max_seconds=args.max_seconds,
            )
            if relay_child:
                seconds = throughput[name].elapsed
                after = relay_child.store_counters()
                store_deltas["max", name] = _store_delta(counters, after, seconds)
            print(_row(label, throughput[name], name), flush=True)

        print(f"\npaced at {args.rate:,.0f} submits/s for {args.seconds:g} s")
        print(_header())
        paced: dict[str, LoadResult] = {}
        paced_paths = [
            "direct",
            *(store_relay[b] for b in ("memory", "sqlite") if b in store_relay),
        ]
        for name in [*paced_paths, "forwarder"]:
            label, port, watched, frames = paths[name]
            relay_child = relay_children.get(name)
            counters = relay_child.store_counters() if relay_child else {}
            paced[name] = _measure(
                port,
                frames,
                watched,
                count=paced_count,
                window=window,
                clients=clients,
                max_seconds=args.seconds + 30,
                rate=args.rate,
            )
            if relay_child:
                after = relay_child.store_counters()
                store_deltas["paced", name] = _store_delta(counters, after, paced[name].elapsed)
            print(_row(label, paced[name], name), flush=True)
        relay_rss = {name: child.max_rss_mb() for name, child in relay_children.items()}
        forwarder_rss = forwarder.max_rss_mb()
        relay_exits = {name: child.stop() for name, child in relay_children.items()}
        profile_text = ""
        if profile_out and os.path.exists(profile_out):
            profile_text = Path(profile_out).read_text()
        relay_errors = {name: child.stderr_text() for name, child in relay_children.items()}
        repeated = [paths[name][0] for name in relay_children if paths[name][3].wrapped]

    relay_rate = throughput["relay"].rate
    forwarder_rate = throughput["forwarder"].rate
    ratio = relay_rate / forwarder_rate if forwarder_rate else 0.0
    rules_on_rate = rules_off_rate = rules_ratio = None
    if args.rules == "both":
        rules_on_rate, rules_off_rate = relay_rate, throughput["relay-off"].rate
        rules_ratio = rules_on_rate / rules_off_rate if rules_off_rate else 0.0
    elif args.rules == "on":
        rules_on_rate = relay_rate
    else:
        rules_off_rate = relay_rate
    direct = paced["direct"]
    added50 = paced["relay"].percentile_ms(50) - direct.percentile_ms(50)
    added99 = paced["relay"].percentile_ms(99) - direct.percentile_ms(99)
    fwd_added99 = paced["forwarder"].percentile_ms(99) - direct.percentile_ms(99)
    relay_label = paths["relay"][0]
    print(
        f"\nlatency added by the {relay_label} at {args.rate:,.0f}/s: p50 {added50:.3f} ms, "
        f"p99 {added99:.3f} ms (forwarder p99 adds {fwd_added99:.3f} ms)"
    )
    store_rates = {backend: throughput[name].rate for backend, name in store_relay.items()}
    store_added99 = {
        backend: paced[name].percentile_ms(99) - direct.percentile_ms(99)
        for backend, name in store_relay.items()
    }
    store_ratio = None
    if "memory" in store_rates and "sqlite" in store_rates:
        memory_rate, sqlite_rate = store_rates["memory"], store_rates["sqlite"]
        store_ratio = sqlite_rate / memory_rate if memory_rate else 0.0
        print(
            f"store, rules {'off' if args.rules == 'off' else 'on'}: sqlite (sync {args.sync}) / "
            f"memory: {sqlite_rate:,.0f} / {memory_rate:,.0f} submits/s = {store_ratio:.2f}; "
            f"p99 added at {args.rate:,.0f}/s: sqlite {store_added99['sqlite']:.3f} ms, memory "
            f"{store_added99['memory']:.3f} ms"
        )
    sqlite_max = sqlite_paced = None
    if "sqlite" in store_relay:
        sqlite_max = store_deltas.get(("max", store_relay["sqlite"]))
        sqlite_paced = store_deltas.get(("paced", store_relay["sqlite"]))
        for phase, delta in (("maximum throughput", sqlite_max), ("paced", sqlite_paced)):
            if delta is None or not delta.commits:
                print(f"sqlite store, {phase}: no commits read from its metrics")
                continue
            print(
                f"sqlite store, {phase}: {delta.writes:,.0f} writes in {delta.commits:,.0f} "
                f"commits = {delta.writes_per_commit:.1f} writes per commit, "
                f"{delta.commits_per_s:,.0f} commits/s; {delta.routes:,.0f} routes stored"
                + ("" if delta.writable else "; THE STORE COULD NOT WRITE")
            )
    relay_us = throughput["relay"].cpu_us_per_submit("relay")
    forwarder_us = throughput["forwarder"].cpu_us_per_submit("forwarder")
    relay_off_us = (
        throughput["relay-off"].cpu_us_per_submit("relay-off") if args.rules == "both" else None
    )
    print(
        f"CPU per submit at maximum throughput: {relay_label} {relay_us:.1f} us, "
        + (f"relay, rules off {relay_off_us:.1f} us, " if relay_off_us is not None else "")
        + f"forwarder {forwarder_us:.1f} us, simulator "
        f"{throughput['direct'].cpu_us_per_submit('simulator'):.1f} us"
    )
    if rules_ratio is not None:
        print(
            f"rules on / rules off: {rules_on_rate:,.0f} / {rules_off_rate:,.0f} submits/s "
            f"= {rules_ratio:.2f}"
        )
    print(
        "relay max RSS "
        + ", ".join(f"{paths[name][0]} {rss:.1f} MiB" for name, rss in relay_rss.items())
        + f" (forwarder {forwarder_rss:.1f} MiB)"
    )
    if repeated:
        print(f"note: {', '.join(repeated)} saw some submits twice; the rules may refuse those")
    load_after = os.getloadavg()[0]
    if load_before > 0.5:
        print(
            f"note: the load average was {load_before:.2f} before the run: other processes "
            "share these cores and the numbers are noisy"
        )
    for name, exit_code in relay_exits.items():
        if exit_code not in (0, None):
            print(f"{name} exited with {exit_code}:\n{relay_errors[name]}")
        elif relay_errors[name].strip():
            print(f"{name} stderr (warnings):\n{relay_errors[name]}")

    targets = [
        (f"relay >= {TARGET_RATE:,.0f} submits/s", relay_rate >= TARGET_RATE, f"{relay_rate:,.0f}"),
        (
            f"relay >= {TARGET_RATIO:.0%} of forwarder",
            ratio >= TARGET_RATIO,
            f"{ratio:.2f}",
        ),
        (
            f"p99 added at {args.rate:,.0f}/s < {TARGET_P99_ADDED_MS:g} ms",
            added99 < TARGET_P99_ADDED_MS,
            f"{added99:.3f} ms",
        ),
    ]
    if store_ratio is not None:
        targets.append(
            (
                f"sqlite (sync {args.sync}) >= {TARGET_STORE_RATIO:.0%} of memory",
                store_ratio >= TARGET_STORE_RATIO,
                f"{store_ratio:.2f}",
            )
        )
    if "sqlite" in store_relay and store_relay["sqlite"] != "relay":
        targets.append(
            (
                f"sqlite p99 added at {args.rate:,.0f}/s < {TARGET_P99_ADDED_MS:g} ms",
                store_added99["sqlite"] < TARGET_P99_ADDED_MS,
                f"{store_added99['sqlite']:.3f} ms",
            )
        )
    if rules_ratio is not None:
        targets.append(
            (
                f"rules on >= {TARGET_RULES_RATIO:.0%} of rules off",
                rules_ratio >= TARGET_RULES_RATIO,
                f"{rules_ratio:.2f}",
            )
        )
    print(f"\ntargets (one relay process on one core, window 100; the relay: {relay_label}):")
    for label, met, value in targets:
        print(f"  [{'PASS' if met else 'MISS'}] {label}: {value}")
    if args.profile:
        note = "cProfile slows the relay: the rates above are not comparable"
        print(f"\n{relay_label} profile, top 25 by own time ({note}):\n{profile_text}")

    errors = sum(r.errors for r in (*throughput.values(), *paced.values()))
    return {
        "rules": args.rules,
        "fast_entries": args.fast_entries,
        "store": args.store,
        "sync": args.sync if "sqlite" in store_relay else None,
        "store_filesystem": store_fs if "sqlite" in store_relay else None,
        "registered_delivery": args.registered_delivery,
        "memory_submits_per_s": _round(store_rates.get("memory"), 1),
        "sqlite_submits_per_s": _round(store_rates.get("sqlite"), 1),
        "store_ratio": _round(store_ratio, 3),
        "memory_p99_added_ms": _round(store_added99.get("memory"), 3),
        "sqlite_p99_added_ms": _round(store_added99.get("sqlite"), 3),
        "sqlite_writes_per_commit": _round(
            None if sqlite_max is None else sqlite_max.writes_per_commit, 2
        ),
        "sqlite_commits_per_s": _round(None if sqlite_max is None else sqlite_max.commits_per_s, 1),
        "sqlite_paced_writes_per_commit": _round(
            None if sqlite_paced is None else sqlite_paced.writes_per_commit, 2
        ),
        "sqlite_paced_commits_per_s": _round(
            None if sqlite_paced is None else sqlite_paced.commits_per_s, 1
        ),
        "sqlite_routes_stored": _round(None if sqlite_paced is None else sqlite_paced.routes, 0),
        "sqlite_store_writable": None if sqlite_paced is None else sqlite_paced.writable,
        "relay_submits_per_s": round(relay_rate, 1),
        "forwarder_submits_per_s": round(forwarder_rate, 1),
        "ratio": round(ratio, 3),
        "rules_on_submits_per_s": _round(rules_on_rate, 1),
        "rules_off_submits_per_s": _round(rules_off_rate, 1),
        "rules_ratio": _round(rules_ratio, 3),
        "p50_added_ms_at_2000": round(added50, 3),
        "p99_added_ms_at_2000": round(added99, 3),
        "relay_max_rss_mb": round(relay_rss["relay"], 1),
        "relay_rules_off_max_rss_mb": _round(relay_rss.get("relay-off"), 1),
        "direct_submits_per_s": round(throughput["direct"].rate, 1),
        "relay_p50_ms_at_max": round(throughput["relay"].percentile_ms(50), 3),
        "relay_p99_ms_at_max": round(throughput["relay"].percentile_ms(99), 3),
        "forwarder_p99_ms_at_max": round(throughput["forwarder"].percentile_ms(99), 3),
        "relay_cpu_at_max": round(throughput["relay"].cpu.get("relay", 0.0), 3),
        "relay_cpu_us_per_submit": round(relay_us, 2),
        "relay_rules_off_cpu_us_per_submit": _round(relay_off_us, 2),
        "forwarder_cpu_us_per_submit": round(forwarder_us, 2),
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(load_after, 2),
        "paced_rate": args.rate,
        "window": window,
        "clients": clients,
        "count": args.count,
        "errors": errors,
        "profiled": bool(args.profile),
        "targets_met": {label: met for label, met, _ in targets},
    }


# --- the C peers (--peer c) ------------------------------------------------------------------


@dataclass
class CRow:
    """One path of one run with the C peers: its load client's line and the hop's CPU."""

    path: str  # "forwarder", or the relay's label
    line: fastpeer.LoadLine
    cpu_seconds: float  # of the relay or forwarder process, over the load

    @property
    def us_per_submit(self) -> float:
        """CPU of the hop per answered submit, in microseconds."""
        return self.cpu_seconds / self.line.ok * 1e6 if self.line.ok else float("nan")


def _c_paths(rules: str, store: str) -> list[tuple[str, bool, str]]:
    """The relays ``--peer c`` measures: (label, rules off, store backend), every rule setting
    of ``rules`` with every store of ``store``."""
    settings = {"on": [False], "off": [True], "both": [True, False]}[rules]
    backends = ["memory", "sqlite"] if store == "both" else [store]
    return [
        (f"relay, rules {'off' if off else 'on'}, {backend}", off, backend)
        for off in settings
        for backend in backends
    ]


def _c_run(
    args: argparse.Namespace, binary: Path, stores: str, relay_cpu: int, load_cpu: int
) -> list[CRow]:
    """One run: a fresh C SMSC, forwarder and relays; a warm-up and a measured load each."""
    warmup = max(1000, min(10_000, args.count // 10))
    rows: list[CRow] = []
    with children() as started:
        smsc_port = _free_port()
        smsc = subprocess.Popen(
            [str(binary), "smsc", str(smsc_port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        try:
            fastpeer.pin(smsc.pid, load_cpu)
            fastpeer.wait_port(smsc_port, smsc, "fastpeer smsc")
            hops: list[tuple[str, Child]] = []
            forwarder = Child(
                "forwarder",
                ["--role", "forwarder", "--cpu", str(relay_cpu), "--upstream-port", str(smsc_port)],
            )
            started.append(forwarder)
            hops.append(("forwarder", forwarder))
            for index, (label, rules_off, backend) in enumerate(_c_paths(args.rules, args.store)):
                path = os.path.join(stores, f"run-{time.monotonic_ns()}-{index}.db")
                relay = Child(
                    f"relay{index}",
                    [
                        "--role", "relay", "--cpu", str(relay_cpu),
                        "--upstream-port", str(smsc_port),
                        "--upstream-window", str(args.window), "--window", str(args.window),
                        "--binds", str(args.binds), *(["--rules-off"] if rules_off else []),
                        "--store-backend", backend,
                        "--store-path", path if backend == "sqlite" else "",
                        "--sync", args.sync,
                    ],
                )  # fmt: skip
                started.append(relay)
                hops.append((label, relay))
            ports = {label: child.wait_ready() for label, child in hops}
            for label, child in hops:
                port = ports[label]
                _c_load(binary, port, warmup, args.window, load_cpu, 60)  # warm-up
                before = child.cpu_seconds()
                line = _c_load(binary, port, args.count, args.window, load_cpu, args.max_seconds)
                rows.append(CRow(label, line, child.cpu_seconds() - before))
                if line.exit_code != 0 or line.errors:
                    print(f"  {label}: load client exit {line.exit_code}: {line.text!r}")
        finally:
            smsc.send_signal(signal.SIGTERM)
            try:
                smsc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                smsc.kill()
                smsc.wait()
    return rows


def _c_load(
    binary: Path, port: int, count: int, window: int, cpu: int, max_seconds: float
) -> fastpeer.LoadLine:
    """One C load client of ``count`` fresh submits to ``port``, pinned to ``cpu``; its line."""
    first = fastpeer.next_first(count)
    client = fastpeer.start_load(binary, port, count, window, ACCOUNT, PASSWORD, first)
    fastpeer.pin(client.pid, cpu)
    return fastpeer.finish_load(client, timeout=max_seconds + 60)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _c_line(row: CRow, forwarder_us: float) -> str:
    ratio = row.us_per_submit / forwarder_us if forwarder_us > 0 else float("nan")
    return (
        f"{row.path:<28}{row.line.rate:>11,.0f}{row.line.p50_ms:>8.2f}{row.line.p99_ms:>8.2f}"
        f"{row.line.ok:>10,}{row.line.errors:>7,}{row.us_per_submit:>10.1f}{ratio:>8.1f}"
    )


def benchmark_c(args: argparse.Namespace) -> dict[str, Any]:
    """``--peer c``: the forwarder's and each relay's CPU per submit under the C peers."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pinned = args.relay_cpu in cpus and args.load_cpu in cpus and args.relay_cpu != args.load_cpu
    relay_cpu, load_cpu = (args.relay_cpu, args.load_cpu) if pinned else (-1, -1)
    load_before = os.getloadavg()[0]
    print(
        f"relay benchmark, C peers: {args.count:,} submits per path, window {args.window}, "
        f"{args.runs} run(s), rules {args.rules}, store {args.store}"
        + (f" (sqlite sync {args.sync})" if args.store != "memory" else "")
        + ", registered_delivery 0 (the C client asks for no receipts); "
        + (
            f"relay/forwarder on cpu {relay_cpu}, C peers on cpu {load_cpu}"
            if pinned
            else "not pinned (needs two usable cores)"
        )
        + f"; load average {load_before:.2f}",
        flush=True,
    )
    header = (
        f"{'path':<28}{'submits/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'answered':>10}{'errors':>7}"
        f"{'us/sub':>10}{'x fwd':>8}"
    )
    runs: list[list[CRow]] = []
    with (
        tempfile.TemporaryDirectory(prefix="relay-bench-c-") as scratch,
        tempfile.TemporaryDirectory(prefix="relay-bench-store-", dir=args.store_dir) as stores,
    ):
        binary = fastpeer.build(Path(scratch))
        store_fs = _filesystem(stores)
        if args.store != "memory":
            print(f"sqlite stores in {stores} ({store_fs}), removed afterwards", flush=True)
        _pin(load_cpu)  # this process and so every C peer it starts: the relays pin themselves
        for number in range(1, args.runs + 1):
            rows = _c_run(args, binary, stores, relay_cpu, load_cpu)
            runs.append(rows)
            forwarder_us = rows[0].us_per_submit
            print(f"\nrun {number} (us/sub: CPU of the hop per answered submit)\n{header}")
            for row in rows:
                print(_c_line(row, forwarder_us), flush=True)
    medians: dict[str, dict[str, float]] = {}
    for index, row in enumerate(runs[0]):
        at = [rows[index] for rows in runs]
        ratios = [r.us_per_submit / rows[0].us_per_submit for r, rows in zip(at, runs, strict=True)]
        medians[row.path] = {
            "submits_per_s": statistics.median(r.line.rate for r in at),
            "us_per_submit": statistics.median(r.us_per_submit for r in at),
            "ratio_to_forwarder": statistics.median(ratios),
        }
    print(f"\nmedians of {args.runs} run(s) (x fwd: median of each run's ratio)")
    print(f"{'path':<28}{'submits/s':>11}{'us/sub':>10}{'x fwd':>8}")
    for path, values in medians.items():
        print(
            f"{path:<28}{values['submits_per_s']:>11,.0f}{values['us_per_submit']:>10.1f}"
            f"{values['ratio_to_forwarder']:>8.1f}"
        )
    load_after = os.getloadavg()[0]
    if load_before > 0.5:
        print(
            f"note: the load average was {load_before:.2f} before the run: other processes "
            "share these cores and the numbers are noisy"
        )
    return {
        "peer": "c",
        "count": args.count,
        "window": args.window,
        "runs": args.runs,
        "rules": args.rules,
        "store": args.store,
        "sync": args.sync if args.store != "memory" else None,
        "registered_delivery": 0,
        "pinned": pinned,
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(load_after, 2),
        "errors": sum(row.line.errors for rows in runs for row in rows),
        "medians": {
            path: {key: _round(value, 2) for key, value in values.items()}
            for path, values in medians.items()
        },
        "runs_us_per_submit": [
            {row.path: _round(row.us_per_submit, 2) for row in rows} for rows in runs
        ],
    }


def _round(value: float | None, digits: int) -> float | None:
    """``value`` rounded; None for None and NaN (JSON has no NaN)."""
    return None if value is None or value != value else round(value, digits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        _run_child(args)
        return 0
    # A plain SIGTERM must still run the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.peer == "c":
        why = fastpeer.missing()
        if why:
            print(f"relay benchmark --peer c: {why}: the C peers cannot be built; skipped")
            return 0
        summary = benchmark_c(args)
    else:
        summary = benchmark(args)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
