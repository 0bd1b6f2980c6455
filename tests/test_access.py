"""Access (reliability.md section 5.3): lock-outs, connection caps, max_binds, throughput and
password hashes, through real sessions that share one clock, registry and `Access`.

Every test checks the exact answer, whether the connection stays open, and what reached the
relay (``submit.calls``): nothing, for a refusal.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from smpprelay import auth, passwd, pdu
from smpprelay.access import Access, TokenBucket
from smpprelay.auth import make_portal
from smpprelay.config import Account, SecurityConfig
from smpprelay.downstream import DownstreamSession, SessionRegistry
from smpprelay.metrics import Metrics
from smpprelay.passwd import make_hash
from tests.fakes import PASSWORD, FakeSubmit, app_connection, resp_header, submit_frame

BIND_TRX_RESP = 0x80000009
SUBMIT_RESP = 0x80000004
OK_BIND = pdu.bind_response("transceiver", 1, pdu.Status.ESME_ROK, "smpprelay")
APP = Account(system_id="app", password=PASSWORD)


class App:
    """One app connection to the shared relay side."""

    def __init__(self, relay: Relay, host: str) -> None:
        self.session = DownstreamSession(
            relay.portal,
            relay.registry,
            relay.submit,
            relay.clock,
            relay.metrics,
            10.0,
            10,
            access=relay.access,
        )
        self.connection, self.transport = app_connection(
            self.session, relay.clock, relay.metrics, host
        )

    def send(self, frame: bytes) -> bytes:
        """Send a PDU; returns what the relay wrote since the last call."""
        if not self.transport.disconnecting:
            self.connection.dataReceived(frame)
        data = bytes(self.transport.value())
        self.transport.clear()
        return data

    def bind(self, system_id: str = "app", password: str = PASSWORD) -> bytes:
        return self.send(pdu.bind_request("transceiver", 1, system_id, password))

    @property
    def open(self) -> bool:
        # Closed (disconnecting) or aborted (disconnected) both end it.
        return not (self.transport.disconnecting or self.transport.disconnected)

    def close(self) -> None:
        self.connection.connectionLost()


class Relay:
    """The app side of one relay: clock, metrics, registry, portal and `Access`."""

    def __init__(
        self,
        clients: tuple[Account, ...] = (APP,),
        security: SecurityConfig | None = None,
        off_thread: Callable[[Callable[[], bool]], Deferred[bool]] | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics()
        self.registry = SessionRegistry(self.metrics)
        self.submit = FakeSubmit()
        self.access = Access(security or SecurityConfig(), clients, self.clock, self.metrics)
        self.portal = make_portal(
            {c.system_id: c for c in clients}, off_thread, self.access.password_checks
        )

    def connect(self, host: str = "10.0.0.1") -> App:
        return App(self, host)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def _refused_bind(app: App, **credentials: str) -> None:
    assert app.bind(**credentials) == resp_header(BIND_TRX_RESP, 0x0D, 1)
    assert not app.open


def _dropped_at_accept(app: App) -> None:
    assert app.transport.disconnected  # aborted, not a clean close
    assert app.bind() == b""  # nothing is read or answered


# --- A5: lock-out after repeated failures --------------------------------------------------


def test_five_failures_lock_the_address_out_and_only_it() -> None:
    """5 failed binds within a minute: that address is dropped at accept for 300 s, while
    another address binds; afterwards it binds again."""
    relay = Relay()
    for attempt in range(5):
        relay.clock.advance(10)
        _refused_bind(relay.connect(), password="wrong" if attempt % 2 else "")
    assert relay.sample("smpprelay_bind_lockouts_total") == 1
    assert relay.sample("smpprelay_locked_addresses") == 1
    locked = relay.connect()
    _dropped_at_accept(locked)
    # The right password does not help while locked; nothing reaches the relay.
    assert relay.sample("smpprelay_connections_refused_total", reason="locked_out") == 1
    other = relay.connect("10.0.0.2")
    assert other.bind() == OK_BIND
    assert other.send(submit_frame(2)) == b""
    assert len(relay.submit.calls) == 1
    relay.clock.advance(299)
    _dropped_at_accept(relay.connect())
    relay.clock.advance(1)
    again = relay.connect()
    assert again.bind() == OK_BIND
    assert again.open
    assert relay.sample("smpprelay_locked_addresses") == 0
    assert relay.sample("smpprelay_bind_attempts_total", result="credentials") == 5


@pytest.mark.parametrize(
    ("gaps", "locked"),
    [
        ([0, 1, 1, 1, 1], True),  # five within a minute
        ([0, 1, 1, 1, 58], False),  # the fifth comes 61 s after the first
        ([0, 15, 15, 15, 14.9], True),  # 59.9 s from the first to the fifth
    ],
)
def test_failures_count_within_the_window(gaps: list[float], locked: bool) -> None:
    """Only failures within bind_failure_window of each other add up to a lock-out."""
    relay = Relay()
    for gap in gaps:
        relay.clock.advance(gap)
        _refused_bind(relay.connect(), password="wrong")
    app = relay.connect()
    if locked:
        _dropped_at_accept(app)
    else:
        assert app.bind() == OK_BIND


@pytest.mark.parametrize(
    ("client", "bind", "counts"),
    [
        (APP, {"system_id": "nobody"}, True),
        (APP, {"password": "wrong"}, True),
        (Account(system_id="app", password=PASSWORD, allowed_ips=("192.0.2.0/24",)), {}, True),
        (Account(system_id="app", password=PASSWORD, max_binds=1), {}, False),
    ],
)
def test_which_failures_count(client: Account, bind: dict[str, str], counts: bool) -> None:
    """Unknown ids, wrong passwords and disallowed addresses count toward a lock-out;
    max_binds refusals (a legitimate app reconnecting too early) do not."""
    relay = Relay((client,), SecurityConfig(bind_failures=2))
    if client.max_binds is not None:
        assert relay.connect("10.9.9.9").bind() == OK_BIND
    for _ in range(2):
        _refused_bind(relay.connect(), **bind)
    assert relay.sample("smpprelay_bind_lockouts_total") == (1 if counts else 0)
    assert relay.access.locked("10.0.0.1") is counts


def test_malformed_bind_counts() -> None:
    """An undecodable bind is a failure that counts too."""
    relay = Relay(security=SecurityConfig(bind_failures=1))
    app = relay.connect()
    assert app.send(pdu.build(pdu.CommandId.bind_transceiver, 1, b"app")) == resp_header(
        BIND_TRX_RESP, 0x0D, 1
    )
    assert not app.open
    _dropped_at_accept(relay.connect())


# --- A8: connection caps -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("security", "hosts", "reason"),
    [
        (
            SecurityConfig(max_connections=2),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            "max_connections",
        ),
        (
            SecurityConfig(max_connections_per_address=2),
            ["10.0.0.1", "10.0.0.1", "10.0.0.1"],
            "max_connections_per_address",
        ),
    ],
)
def test_connection_caps(security: SecurityConfig, hosts: list[str], reason: str) -> None:
    """One connection over a cap is dropped at once; the established ones keep working, and
    a closed one makes room."""
    relay = Relay(security=security)
    first, second = relay.connect(hosts[0]), relay.connect(hosts[1])
    assert first.bind() == OK_BIND
    extra = relay.connect(hosts[2])
    _dropped_at_accept(extra)
    assert relay.sample("smpprelay_connections_refused_total", reason=reason) == 1
    assert first.send(submit_frame(2)) == b""
    assert second.bind() == OK_BIND
    assert [account for account, _ in relay.submit.calls] == ["app"]
    extra.close()  # a dropped connection gives nothing back: it never counted
    second.close()
    third = relay.connect(hosts[2])
    assert third.bind() == OK_BIND
    assert first.open
    assert third.open


def test_per_address_cap_leaves_other_addresses_alone() -> None:
    """A full address does not stop another one."""
    relay = Relay(security=SecurityConfig(max_connections_per_address=1))
    assert relay.connect("10.0.0.1").bind() == OK_BIND
    _dropped_at_accept(relay.connect("10.0.0.1"))
    assert relay.connect("10.0.0.2").bind() == OK_BIND


# --- A7: max_binds -------------------------------------------------------------------------


def test_max_binds() -> None:
    """max_binds=2: a third bind gets ESME_RBINDFAIL and a close, the first two keep
    working, and after one unbinds a new bind is accepted."""
    relay = Relay((Account(system_id="app", password=PASSWORD, max_binds=2),))
    first, second = relay.connect(), relay.connect()
    assert first.bind() == OK_BIND
    assert second.bind() == OK_BIND
    _refused_bind(relay.connect())
    assert relay.sample("smpprelay_bind_attempts_total", result="max_binds") == 1
    assert first.send(submit_frame(5)) == b""
    assert second.send(submit_frame(6)) == b""
    assert len(relay.submit.calls) == 2
    relay.submit.answer(0, b"M5")
    first.transport.clear()
    assert first.send(pdu.build(pdu.CommandId.unbind, 7)) == resp_header(0x80000006, 0, 7)
    assert not first.open
    assert relay.connect().bind() == OK_BIND


# --- throughput ----------------------------------------------------------------------------


def test_throughput_token_bucket_shared_by_the_accounts_binds() -> None:
    """throughput=2, burst=3 over two binds: 3 submits pass at once, the 4th gets
    ESME_RTHROTTLED (not relayed, session kept); half a second buys one more. Another
    account is not affected."""
    limited = Account(system_id="app", password=PASSWORD, throughput=2, burst=3)
    other = Account(system_id="other", password=PASSWORD)
    relay = Relay((limited, other))
    first, second, free = relay.connect(), relay.connect(), relay.connect("10.0.0.2")
    for app, system_id in ((first, "app"), (second, "app"), (free, "other")):
        assert app.bind(system_id=system_id) == OK_BIND
    assert [first.send(submit_frame(s)) for s in (2, 3)] == [b"", b""]
    assert second.send(submit_frame(4)) == b""
    assert second.send(submit_frame(5)) == resp_header(SUBMIT_RESP, 0x58, 5)
    assert first.send(submit_frame(6)) == resp_header(SUBMIT_RESP, 0x58, 6)
    assert first.open
    assert second.open
    assert len(relay.submit.calls) == 3
    for sequence in range(10, 20):
        assert free.send(submit_frame(sequence)) == b""
    relay.clock.advance(0.5)
    assert first.send(submit_frame(7)) == b""
    assert first.send(submit_frame(8)) == resp_header(SUBMIT_RESP, 0x58, 8)
    assert [account for account, _ in relay.submit.calls] == ["app"] * 3 + ["other"] * 10 + ["app"]
    assert relay.sample("smpprelay_submits_total", account="app", status="ESME_RTHROTTLED") == 3


@pytest.mark.parametrize(
    ("rate", "burst", "steps", "expected"),
    [
        (1.0, 1, [0, 0, 1, 0.5, 0.5], [True, False, True, False, True]),
        (10.0, 2, [0, 0, 0, 0.1, 10], [True, True, False, True, True]),
        (0.5, 1, [0, 1, 1], [True, False, True]),
    ],
)
def test_token_bucket(rate: float, burst: int, steps: list[float], expected: list[bool]) -> None:
    """A token every 1/rate seconds, at most ``burst`` saved up."""
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock)
    taken = []
    for step in steps:
        clock.advance(step)
        taken.append(bucket.take())
    assert taken == expected


# --- password hashes -----------------------------------------------------------------------


class OffThread:
    """Stands in for the thread pool: holds each check until the test runs it."""

    def __init__(self) -> None:
        self.checks: list[tuple[Callable[[], bool], Deferred[bool]]] = []

    def __call__(self, check: Callable[[], bool]) -> Deferred[bool]:
        deferred: Deferred[bool] = Deferred()
        self.checks.append((check, deferred))
        return deferred

    def run_all(self) -> None:
        checks, self.checks = self.checks, []
        for check, deferred in checks:
            try:
                result = check()
            except Exception:
                deferred.errback()
            else:
                deferred.callback(result)


class StartedAtOnce(OffThread):
    """A pool with a free thread: each check runs as it is handed over (before the app can
    hang up); its result comes back when the test calls `run_all`."""

    def __call__(self, check: Callable[[], bool]) -> Deferred[bool]:
        result = check()
        return super().__call__(lambda: result)


HASHED = Account(system_id="app", password_hash=make_hash(PASSWORD, n=16))


@pytest.mark.parametrize(
    ("system_id", "password", "answer"),
    [
        ("app", PASSWORD, OK_BIND),
        ("app", "wrong", resp_header(BIND_TRX_RESP, 0x0D, 1)),
        ("nobody", PASSWORD, resp_header(BIND_TRX_RESP, 0x0D, 1)),
    ],
)
def test_hashed_password_checked_off_the_reactor(
    system_id: str, password: str, answer: bytes
) -> None:
    """A hashed account's bind is answered only once the hash check (handed to the thread
    pool) is done; an unknown system_id goes through the same kind of check (a decoy)."""
    pool = OffThread()
    relay = Relay((HASHED,), off_thread=pool)
    app = relay.connect()
    assert app.bind(system_id, password) == b""
    assert app.open
    assert len(pool.checks) == 1
    pool.run_all()
    assert bytes(app.transport.value()) == answer
    assert app.open is (answer == OK_BIND)


def test_plain_and_hashed_accounts_side_by_side() -> None:
    """A plain-password account binds without the pool; a hashed one through it."""
    pool = OffThread()
    relay = Relay((HASHED, Account(system_id="plain", password="pw")), off_thread=pool)
    assert relay.connect().bind("plain", "pw") == OK_BIND
    assert pool.checks == []
    _refused_bind(relay.connect(), system_id="plain", password="PW")
    assert pool.checks == []


def test_hashes_need_a_thread_pool() -> None:
    """Building the portal for hashed accounts without a pool fails: never on the reactor."""
    with pytest.raises(ValueError, match="thread pool"):
        make_portal({"app": HASHED})


def test_connection_lost_while_the_hash_is_checked() -> None:
    """If the app goes away during the check, nothing is written and nothing breaks."""
    pool = OffThread()
    relay = Relay((HASHED,), off_thread=pool)
    app = relay.connect()
    app.bind()
    app.close()
    pool.run_all()
    assert app.transport.value() == b""
    assert relay.registry.bound_count("app") == 0


def test_locked_addresses_gauge_counts_only_lockouts_in_force() -> None:
    """The gauge drops when a lock-out ends, with no reconnect or failure to notice it; two
    lock-outs end one after the other."""
    relay = Relay(security=SecurityConfig(bind_failures=1, lockout=100))
    _refused_bind(relay.connect("10.0.0.1"), password="wrong")
    relay.clock.advance(40)
    _refused_bind(relay.connect("10.0.0.2"), password="wrong")
    assert relay.sample("smpprelay_locked_addresses") == 2
    relay.clock.advance(59.9)
    assert relay.sample("smpprelay_locked_addresses") == 2
    relay.clock.advance(0.1)
    assert relay.sample("smpprelay_locked_addresses") == 1
    assert not relay.access.locked("10.0.0.1")
    assert relay.access.locked("10.0.0.2")
    relay.clock.advance(40)
    assert relay.sample("smpprelay_locked_addresses") == 0
    assert relay.clock.getDelayedCalls() == []


# --- lock-outs reach connections opened before them ----------------------------------------


def test_lockout_drops_that_addresses_unbound_connections() -> None:
    """The failure that locks an address out aborts its other connections that have not
    bound (they could bind or guess on); its bound sessions and other addresses carry on."""
    relay = Relay(security=SecurityConfig(bind_failures=2))
    idle, bound = relay.connect(), relay.connect()
    elsewhere = relay.connect("10.0.0.2")
    assert bound.bind() == OK_BIND
    _refused_bind(relay.connect(), password="wrong")
    assert not idle.transport.disconnected  # one failure: nothing happens yet
    _refused_bind(relay.connect(), password="wrong")
    assert idle.transport.disconnected  # aborted, without an answer
    assert idle.bind() == b""
    assert bound.open
    assert not elsewhere.transport.disconnecting
    assert bound.send(submit_frame(2)) == b""
    assert elsewhere.bind() == OK_BIND
    assert [account for account, _ in relay.submit.calls] == ["app"]


def test_connection_opened_before_the_lockout_cannot_bind() -> None:
    """A connection accepted before its address was locked out gets ESME_RBINDFAIL and a close
    for a bind with the right password, which does not prolong the lock-out."""
    relay = Relay(security=SecurityConfig(bind_failures=2))
    early = relay.connect()
    for _ in range(2):
        relay.access.bind_failed("10.0.0.1")  # failures seen elsewhere: early is not dropped
    assert early.open
    _refused_bind(early)
    assert relay.sample("smpprelay_bind_attempts_total", result="locked_out") == 1
    assert relay.sample("smpprelay_bind_lockouts_total") == 1
    assert relay.registry.bound_count("app") == 0
    relay.clock.advance(300)
    assert relay.connect().bind() == OK_BIND


def test_lockout_while_the_hash_is_checked() -> None:
    """Locked out while a bind's hash is being checked: even the right password is refused
    when the check comes back."""
    pool = OffThread()
    relay = Relay((HASHED,), SecurityConfig(bind_failures=1), off_thread=pool)
    app = relay.connect()
    assert app.bind() == b""
    relay.access.bind_failed("10.0.0.1")
    pool.run_all()
    assert bytes(app.transport.value()) == resp_header(BIND_TRX_RESP, 0x0D, 1)
    assert not app.open
    assert relay.registry.bound_count("app") == 0
    assert relay.sample("smpprelay_bind_attempts_total", result="locked_out") == 1


# --- password checks: counted however the app leaves, capped, skipped when nobody waits -----


def test_hangup_before_the_answer_still_counts() -> None:
    """An app that sends a wrong password and hangs up before the hash check comes back is
    counted like one that waits for its answer: two such binds lock the address out."""
    pool = StartedAtOnce()
    relay = Relay((HASHED,), SecurityConfig(bind_failures=2), off_thread=pool)
    for _ in range(2):
        app = relay.connect()
        assert app.bind(password="wrong") == b""
        app.close()
    pool.run_all()
    assert relay.sample("smpprelay_bind_attempts_total", result="credentials") == 2
    assert relay.access.locked("10.0.0.1")
    _dropped_at_accept(relay.connect())


def test_right_password_then_hangup_does_not_count() -> None:
    """An app with the right password that hangs up once its check has started is not a
    failure."""
    pool = StartedAtOnce()
    relay = Relay((HASHED,), SecurityConfig(bind_failures=1), off_thread=pool)
    app = relay.connect()
    app.bind()
    app.close()
    pool.run_all()
    assert not relay.access.locked("10.0.0.1")
    assert relay.sample("smpprelay_bind_attempts_total", result="ok") is None


def test_check_skipped_when_the_app_hung_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check still waiting for a thread when its app hangs up costs no scrypt and counts as
    an abandoned bind (toward the lock-out); the waiting app beside it is checked and bound."""
    verified: list[bytes] = []
    real_verify = passwd.verify_password

    def verify(hashed: str, password: bytes) -> bool:
        verified.append(password)
        return real_verify(hashed, password)

    monkeypatch.setattr(auth, "verify_password", verify)
    pool = OffThread()
    relay = Relay((HASHED,), SecurityConfig(bind_failures=1), off_thread=pool)
    gone, waiting = relay.connect("10.0.0.1"), relay.connect("10.0.0.2")
    gone.bind(password="guess")
    waiting.bind()
    gone.close()
    pool.run_all()
    assert verified == [PASSWORD.encode()]
    assert bytes(waiting.transport.value()) == OK_BIND
    assert relay.sample("smpprelay_bind_attempts_total", result="abandoned") == 1
    assert relay.access.locked("10.0.0.1")
    assert relay.access.password_checks.in_flight == 0


def test_password_checks_capped_per_address_and_in_all() -> None:
    """Past max_password_checks_per_address (2) checks from one address, or
    max_password_checks (3) in all, a bind gets ESME_RBINDFAIL and a close at once, with no
    check queued and no lock-out counted; when checks finish, binds are checked again."""
    pool = OffThread()
    security = SecurityConfig(
        bind_failures=1, max_password_checks=3, max_password_checks_per_address=2
    )
    relay = Relay((HASHED,), security, off_thread=pool)
    first, second = relay.connect("10.0.0.1"), relay.connect("10.0.0.1")
    assert first.bind() == b""
    assert second.bind(system_id="nobody") == b""  # an unknown id takes a slot too (decoy)
    _refused_bind(relay.connect("10.0.0.1"))
    other = relay.connect("10.0.0.2")
    assert other.bind() == b""
    _refused_bind(relay.connect("10.0.0.3"))
    assert len(pool.checks) == 3
    assert relay.sample("smpprelay_bind_attempts_total", result="busy") == 2
    assert not relay.access.locked("10.0.0.1")
    assert not relay.access.locked("10.0.0.3")
    pool.run_all()
    assert bytes(first.transport.value()) == OK_BIND
    assert bytes(other.transport.value()) == OK_BIND
    assert relay.access.locked("10.0.0.1")  # the unknown id was a real failure
    assert relay.access.password_checks.in_flight == 0
    later = relay.connect("10.0.0.3")
    assert later.bind() == b""
    assert len(pool.checks) == 1


# --- Faults issue, item 7: connection slots without a password ------------------------------


def test_idle_connections_from_many_addresses_do_not_keep_an_app_out() -> None:
    """1,000 connections that never bind, from 20 addresses, used to keep the app's binds out
    (all 49 dropped at accept); now each new connection pushes out an idle one and the app's
    49 binds all succeed."""
    relay = Relay()
    flood = [relay.connect(f"10.66.0.{i % 20}") for i in range(1000)]
    assert sum(1 for app in flood if app.open) == 100  # security.max_unbound_connections
    apps = []
    for _ in range(49):  # an app binds as soon as it has connected
        app = relay.connect("10.0.0.1")
        apps.append(app)
        assert app.bind() == OK_BIND
    assert all(app.open for app in apps)
    assert relay.registry.bound_count("app") == 49
    # One idle connection made room; each bound app gave its unbound place back at once.
    assert sum(1 for app in flood if app.open) == 99
    pushed = relay.sample("smpprelay_connections_refused_total", reason="unbound_pushed_out")
    assert pushed == 900 + 1


def test_push_out_takes_the_busiest_address_first() -> None:
    """At the cap, the oldest idle connection of the address holding the most unbound ones
    goes; a lone idle connection elsewhere stays, and bound sessions never count."""
    relay = Relay(security=SecurityConfig(max_unbound_connections=4))
    bound = relay.connect("10.0.0.9")
    assert bound.bind() == OK_BIND
    lone = relay.connect("10.0.0.2")
    crowd = [relay.connect("10.0.0.1") for _ in range(3)]
    newcomer = relay.connect("10.0.0.3")
    assert [newcomer.open, lone.open, bound.open] == [True, True, True]
    assert [app.open for app in crowd] == [False, True, True]
    assert newcomer.bind() == OK_BIND


def test_unbound_cap_refuses_when_no_connection_is_idle() -> None:
    """Connections in the middle of a bind are not pushed out: past the cap a new one is
    refused at accept, with its own reason."""
    checks: list[Callable[[], bool]] = []

    def later(check: Callable[[], bool]) -> Deferred[bool]:
        checks.append(check)
        return Deferred()

    hashed = Account(system_id="app", password_hash=make_hash(PASSWORD, n=16))
    security = SecurityConfig(max_unbound_connections=2, max_password_checks_per_address=5)
    relay = Relay((hashed,), security=security, off_thread=later)
    binding = [relay.connect(), relay.connect()]
    for app in binding:
        assert app.bind() == b""  # the hash check is under way
    _dropped_at_accept(relay.connect("10.0.0.5"))
    refused = relay.sample("smpprelay_connections_refused_total", reason="max_unbound_connections")
    assert refused == 1
    assert all(app.open for app in binding)


def test_connections_that_never_bind_count_toward_the_lockout() -> None:
    """Five connections from one address that sit out limits.session_init lock it out, like
    five failed binds; another address is not affected."""
    relay = Relay()
    idle = [relay.connect("10.0.0.7") for _ in range(5)]
    relay.clock.advance(10)
    assert not any(app.open for app in idle)
    assert relay.sample("smpprelay_bind_lockouts_total") == 1
    _dropped_at_accept(relay.connect("10.0.0.7"))
    assert relay.connect("10.0.0.8").bind() == OK_BIND


# --- Faults issue, item 13: IPv4 apps on a "::" listener -------------------------------------


def test_ipv4_mapped_peer_matches_ipv4_allowed_ips() -> None:
    """An IPv4 app seen as ::ffff:10.20.0.5 binds to an account allowed 10.20.0.0/16 (it was
    refused ESME_RBINDFAIL, address_not_allowed)."""
    client = Account(system_id="app", password=PASSWORD, allowed_ips=("10.20.0.0/16",))
    relay = Relay((client,))
    app = relay.connect("::ffff:10.20.0.5")
    assert app.bind() == OK_BIND
    assert app.session.host == "10.20.0.5"
    assert app.connection.peer == "10.20.0.5:40000"
    assert relay.sample("smpprelay_bind_attempts_total", result="address_not_allowed") is None


def test_ipv4_mapped_peer_keyed_as_its_ipv4_address() -> None:
    """Caps and lock-outs key a mapped peer by its IPv4 address: the same app over either
    form shares one per-address cap and one lock-out."""
    relay = Relay(security=SecurityConfig(max_connections_per_address=2))
    first = relay.connect("::ffff:10.0.0.1")
    second = relay.connect("10.0.0.1")
    _dropped_at_accept(relay.connect("::ffff:10.0.0.1"))
    first.close()
    second.close()
    for _ in range(5):
        app = relay.connect("::ffff:10.0.0.1")
        _refused_bind(app, password="wrong")
        app.close()
    _dropped_at_accept(relay.connect("10.0.0.1"))
    assert relay.access.locked("10.0.0.1")


def test_mapped_network_in_allowed_ips_still_matches() -> None:
    """An allowed_ips entry written in the mapped form keeps matching."""
    client = Account(system_id="app", password=PASSWORD, allowed_ips=("::ffff:10.0.0.0/104",))
    relay = Relay((client,))
    assert relay.connect("::ffff:10.1.2.3").bind() == OK_BIND
    assert relay.connect("::1").bind() != OK_BIND
