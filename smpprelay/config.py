"""The relay's configuration: frozen attrs objects that check themselves, read from YAML.

Each setting's rule is an attrs validator on its field, so an object is valid however it is
made; smpprelay._schema holds the checks and the walker that builds the objects from YAML,
so adding a setting means adding one annotated field.
"""

import ipaddress
import math
import re
from collections.abc import Iterable
from typing import Literal

import attrs
import yaml

from smpprelay._schema import (
    SECRET,
    SchemaError,
    build,
    each,
    number,
    one_of,
    text,
    valid,
    yaml_problem,
)

# Invalid is what a config class raises when built with a bad value: part of this module's API.
from smpprelay._schema import Invalid as Invalid
from smpprelay.passwd import parse_hash
from smpprelay.receipts import MessageIdFormat
from smpprelay.redis_url import parse_url

BindMode = Literal["transceiver", "transmitter_receiver"]
ReceiptStat = Literal["DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD"]
DedupAction = Literal["reject", "replay"]
StoreBackend = Literal["sqlite", "memory", "redis"]
StoreSync = Literal["full", "normal"]
RuleScope = Literal["upstream", "client"]


class ConfigError(Exception):
    """A configuration problem; str() is one line: ``<file>: <dotted.key>: <problem>``."""


def _mo_prefix(value: str) -> None:
    if not re.fullmatch(r"\+?[0-9]+", value):
        raise ValueError(f"expected digits with an optional leading '+', got {value!r}")


def _upstream_name(value: str) -> None:
    # A metric label and a store key: short, and nothing a label or log would mangle.
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", value):
        raise ValueError(f"expected 1-32 letters, digits, '_', '.' or '-', got {value!r}")


def _networks(values: Iterable[str]) -> tuple[str, ...]:
    networks = []
    for i, value in enumerate(values):
        try:
            # Normalised so "10.1.2.3/8" and "10.0.0.0/8" compare equal downstream.
            networks.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            problem = f"not an IP address or CIDR network: {value!r}"
            raise Invalid(f"allowed_ips[{i}]", problem) from None
    return tuple(networks)


_PORT = valid(number(ge=0, le=65535))
_BYTE = valid(number(ge=0, le=255))
_STATUS = valid(number(ge=0, le=0xFFFFFFFF))
_POSITIVE = valid(number(gt=0))  # durations and rates
_AT_LEAST_1 = valid(number(ge=1))  # counts and sizes
_NOT_EMPTY = valid(text(min_len=1))  # file and host names


@attrs.frozen(kw_only=True)
class ListenTlsConfig:
    """A TLS (1.2 or later) listener for apps, beside or instead of the plain port."""

    port: int = attrs.field(default=3550, validator=_PORT)
    cert: str = attrs.field(validator=_NOT_EMPTY)  # PEM file: the certificate (and chain)
    key: str = attrs.field(validator=_NOT_EMPTY)  # PEM file: its private key
    # PEM CA certificate(s): apps must present a certificate one of them signed (mutual TLS).
    client_ca: str | None = attrs.field(default=None, validator=_NOT_EMPTY)


@attrs.frozen(kw_only=True)
class ListenConfig:
    """Where applications bind to us; ``port: null`` with ``tls`` means TLS only."""

    host: str = "127.0.0.1"
    port: int | None = attrs.field(default=2775, validator=_PORT)
    tls: ListenTlsConfig | None = None
    # Connections (plain and TLS) start with a PROXY v1/v2 header from a load balancer, whose
    # source address is then the app's; one without a valid header is closed.  Only for ports
    # that nothing but the balancers can reach: the header is believed as it is.
    proxy_protocol: bool = False

    def __attrs_post_init__(self) -> None:
        if self.port is None and self.tls is None:
            raise Invalid("port", "null (no plain port) needs listen.tls")


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """Where the Prometheus metrics endpoint listens."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=9775, validator=_PORT)


@attrs.frozen(kw_only=True)
class Account:
    """An application account allowed to bind to the relay."""

    system_id: str = attrs.field(validator=valid(text(min_len=1, max_len=15, smpp=True)))
    # Exactly one of the two: a plain password, or (preferred) a smpprelay-passwd hash.
    password: str | None = attrs.field(
        default=None, validator=valid(text(min_len=1, max_len=8, smpp=True)), metadata=SECRET
    )
    password_hash: str | None = attrs.field(
        default=None, validator=valid(parse_hash), metadata=SECRET
    )
    mo_prefixes: tuple[str, ...] = attrs.field(default=(), validator=each(_mo_prefix))
    allowed_ips: tuple[str, ...] = attrs.field(default=("0.0.0.0/0", "::/0"), converter=_networks)
    max_binds: int | None = attrs.field(default=None, validator=_AT_LEAST_1)  # None: no limit
    # Submits per second over all the account's binds (token bucket), None: no limit.
    throughput: float | None = attrs.field(default=None, validator=_POSITIVE)
    burst: int | None = attrs.field(default=None, validator=_AT_LEAST_1)  # None: max(1, throughput)

    def __attrs_post_init__(self) -> None:
        if (self.password is None) == (self.password_hash is None):
            problem = (
                "missing (or give password_hash)"
                if self.password is None
                else "give password or password_hash, not both"
            )
            raise Invalid("password", problem)


@attrs.frozen(kw_only=True)
class UpstreamConfig:
    """The operator's SMSC that the relay binds to."""

    # Names it in metrics and logs; ``upstream:`` (a single one) is "default".
    name: str = attrs.field(default="default", validator=valid(_upstream_name))
    # Destinations it serves (the longest matching prefix wins); (): any.
    prefixes: tuple[str, ...] = attrs.field(default=(), validator=each(_mo_prefix))
    accounts: tuple[str, ...] = ()  # accounts it serves; (): any
    weight: int = attrs.field(default=1, validator=valid(number(ge=1, le=1000)))
    host: str = attrs.field(validator=_NOT_EMPTY)
    port: int = attrs.field(default=2775, validator=valid(number(ge=1, le=65535)))
    system_id: str = attrs.field(validator=valid(text(max_len=15, smpp=True)))
    password: str = attrs.field(validator=valid(text(max_len=8, smpp=True)), metadata=SECRET)
    system_type: str = attrs.field(default="", validator=valid(text(max_len=12, smpp=True)))
    bind: BindMode = attrs.field(default="transceiver", validator=valid(one_of(BindMode)))
    binds: int = attrs.field(default=1, validator=valid(number(ge=1, le=64)))
    window: int = attrs.field(default=10, validator=valid(number(ge=1, le=10_000)))
    enquire_link: float = attrs.field(default=30.0, validator=_POSITIVE)
    response_timeout: float = attrs.field(default=30.0, validator=_POSITIVE)
    queue_timeout: float = attrs.field(default=10.0, validator=_POSITIVE)
    queue_max: int = attrs.field(default=10_000, validator=_AT_LEAST_1)
    # The operator's cap: submits per second over all sessions (smpprelay.pace), None: none.
    throughput: float | None = attrs.field(default=None, validator=_POSITIVE)
    # Submits that may go at once after a quiet spell; None: a tenth of a second's worth.
    burst: int | None = attrs.field(default=None, validator=_AT_LEAST_1)
    reconnect_initial: float = attrs.field(default=1.0, validator=_POSITIVE)
    reconnect_max: float = attrs.field(default=60.0, validator=_POSITIVE)
    interface_version: int = attrs.field(default=0x34, validator=_BYTE)
    addr_ton: int = attrs.field(default=0, validator=_BYTE)
    addr_npi: int = attrs.field(default=0, validator=_BYTE)
    address_range: str = attrs.field(default="", validator=valid(text(max_len=40, smpp=True)))
    tls: bool = False
    tls_ca: str | None = attrs.field(default=None, validator=_NOT_EMPTY)  # None: system CAs
    tls_verify: bool = True
    # Our client certificate (and chain) and its key, for an operator that asks for one.
    tls_cert: str | None = attrs.field(default=None, validator=_NOT_EMPTY)
    tls_key: str | None = attrs.field(default=None, validator=_NOT_EMPTY)
    # Statuses outside SMPP 3.4 that the operator answers and that get a metric label of their
    # own; every other such status is counted under "other" (the app still gets it exactly).
    vendor_statuses: tuple[int, ...] = attrs.field(
        default=(), validator=each(number(ge=0, le=0xFFFFFFFF))
    )
    # How the operator's receipts quote a message id relative to its submit_sm_resp.
    message_id_format: MessageIdFormat = attrs.field(
        default="as-is", validator=valid(one_of(MessageIdFormat))
    )

    def __attrs_post_init__(self) -> None:
        if self.reconnect_max < self.reconnect_initial:
            problem = f"must be at least reconnect_initial ({self.reconnect_initial}), got"
            raise Invalid("reconnect_max", f"{problem} {self.reconnect_max}")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise Invalid(missing, "missing (tls_cert and tls_key come together)")
        if self.tls_cert is not None and not self.tls:
            raise Invalid("tls_cert", "needs upstream.tls: true")
        if self.burst is not None and self.throughput is None:
            raise Invalid("burst", "needs upstream.throughput")

    @property
    def burst_size(self) -> int:
        """The bucket's size: ``burst``, or a tenth of a second at ``throughput`` (at least 1).

        A tenth keeps any one second within 10% of the cap for an operator that counts per
        second, and still lets a late timer (the reactor's) catch up without losing tokens.
        """
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil((self.throughput or 0.0) / 10))


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """Protections for the relay's own listener and app sessions."""

    max_pdu: int = attrs.field(default=70_000, validator=valid(number(ge=1024, le=16_777_216)))
    session_init: float = attrs.field(default=10.0, validator=_POSITIVE)
    response: float = attrs.field(default=30.0, validator=_POSITIVE)
    window: int = attrs.field(default=100, validator=_AT_LEAST_1)
    # A PDU must arrive whole within this many seconds of its first byte (absolute, not per byte).
    pdu_read: float = attrs.field(default=10.0, validator=_POSITIVE)
    # A bound app session with no PDU from the app for this long is unbound by the relay.
    inactivity: float = attrs.field(default=300.0, validator=_POSITIVE)
    # A stop (SIGTERM) lasts at most this long: apps that have not unbound by then are cut off.
    shutdown_timeout: float = attrs.field(default=30.0, validator=_POSITIVE)
    # TLVs one PDU may carry; past this it is answered ESME_RINVOPTPARSTREAM unread.
    max_tlvs: int = attrs.field(default=64, validator=valid(number(ge=1, le=65_535)))


@attrs.frozen(kw_only=True)
class SecurityConfig:
    """Brute-force lock-outs and connection caps for the app listener(s)."""

    bind_failures: int = attrs.field(default=5, validator=_AT_LEAST_1)
    bind_failure_window: float = attrs.field(default=60.0, validator=_POSITIVE)
    lockout: float = attrs.field(default=300.0, validator=_POSITIVE)
    max_connections: int = attrs.field(default=1000, validator=_AT_LEAST_1)
    max_connections_per_address: int = attrs.field(default=50, validator=_AT_LEAST_1)
    # Password-hash checks queued or running at once, in all and from one address; a bind
    # past either is refused at once, without hashing (and without counting as a failure).
    max_password_checks: int = attrs.field(default=64, validator=_AT_LEAST_1)
    max_password_checks_per_address: int = attrs.field(default=2, validator=_AT_LEAST_1)
    # Connections not bound yet, in all (within max_connections); at the cap a new one
    # pushes out the oldest idle one of the address holding the most.
    max_unbound_connections: int = attrs.field(default=100, validator=_AT_LEAST_1)


@attrs.frozen(kw_only=True)
class ReceiptsConfig:
    """How delivery receipts and MO messages are routed back and held for apps."""

    map_ttl: float = attrs.field(default=172_800.0, validator=_POSITIVE)
    # Routes pending at most; unset: MAP_MAX[store.backend]. In memory about 205 bytes each
    # (README "Receipts and MO"); with sqlite they bound the file, not the relay's memory.
    map_max: int | None = attrs.field(default=None, validator=_AT_LEAST_1)
    # After a final receipt (DELIVRD, UNDELIV, EXPIRED, REJECTD, DELETED) a route is kept this
    # long more, for a repeated receipt, instead of the rest of map_ttl.
    final_grace: float = attrs.field(default=3600.0, validator=valid(number(ge=0)))
    hold_ttl: float = attrs.field(default=86_400.0, validator=_POSITIVE)
    hold_max: int = attrs.field(default=100_000, validator=_AT_LEAST_1)
    retry: float = attrs.field(default=5.0, validator=_POSITIVE)
    # A receipt whose id is not known yet gets one second look this many seconds later: it
    # may have overtaken its submit_sm_resp (sent on another bind). 0: no second look.
    second_look: float = attrs.field(default=1.0, validator=valid(number(ge=0, le=3600)))


# receipts.map_max when unset: what fits in memory (~310 MB), or two days at ~115 receipts
# requested a second in a file of ~1.5 GB (README "State").
MAP_MAX: dict[StoreBackend, int] = {"memory": 1_500_000, "sqlite": 20_000_000, "redis": 20_000_000}


def _redis_url(value: str) -> None:
    """A Redis URL that `parse_url` reads (its ValueError names what is wrong)."""
    parse_url(value)


@attrs.frozen(kw_only=True)
class StoreConfig:
    """Where the state the relay answered for is kept (README "State")."""

    backend: StoreBackend = attrs.field(default="sqlite", validator=valid(one_of(StoreBackend)))
    # Relative to the working directory.
    path: str = attrs.field(default="smpprelay.db", validator=_NOT_EMPTY)
    # full: each commit is fsynced before what depends on it is acknowledged (survives a power
    # cut); normal: survives a crash of the relay, not of the machine.
    sync: StoreSync = attrs.field(default="full", validator=valid(one_of(StoreSync)))
    # Bytes the file may take; past it writes fail as on a full disk. Unset: no cap.
    max_size: int | None = attrs.field(default=None, validator=valid(number(ge=65_536)))
    # backend redis: where it is (redis:// or rediss:// for TLS, /db), the prefix of every key
    # this relay writes (several relays may share one Redis), and how long a reply may take
    # before the relay stops counting on Redis (submits then get ESME_RMSGQFUL).
    url: str = attrs.field(default="redis://127.0.0.1:6379/0", validator=valid(_redis_url))
    key_prefix: str = attrs.field(default="smpprelay:", validator=_NOT_EMPTY)
    reply_timeout: float = attrs.field(default=2.0, validator=_POSITIVE)

    def map_max(self, receipts: ReceiptsConfig) -> int:
        """The routes kept at most with this backend."""
        return receipts.map_max if receipts.map_max is not None else MAP_MAX[self.backend]


@attrs.frozen(kw_only=True)
class SimulatorConfig:
    """Behaviour of the built-in simulated SMSC used when no upstream is configured."""

    receipt_delay: float = attrs.field(default=0.0, validator=valid(number(ge=0)))
    stat: ReceiptStat = attrs.field(default="DELIVRD", validator=valid(one_of(ReceiptStat)))
    # Submits per second it accepts (any one-second window); past that ESME_RTHROTTLED.
    throughput: float | None = attrs.field(default=None, validator=_POSITIVE)


@attrs.frozen(kw_only=True)
class EncodingRule:
    """Content must be valid for its data_coding; conventions are transcoded losslessly."""

    enabled: bool = True
    # data_coding values passed through untouched (binary, pictograms, ...): none by default.
    allow: tuple[int, ...] = attrs.field(default=(), validator=each(number(ge=0, le=255)))
    status: int = attrs.field(default=0x45, validator=_STATUS)


@attrs.frozen(kw_only=True)
class ConcatRule:
    """Every part of a concatenated message must arrive within ``window`` seconds."""

    enabled: bool = True
    window: float = attrs.field(default=60.0, validator=_POSITIVE)
    status: int = attrs.field(default=0x45, validator=_STATUS)
    max_open: int = attrs.field(default=100_000, validator=_AT_LEAST_1)
    max_open_per_account: int = attrs.field(default=10_000, validator=_AT_LEAST_1)
    # Bytes of held parts (their frames), in total and per account: a part past either is
    # answered ESME_RMSGQFUL, so a few apps sending 60 KB message_payload parts cannot take
    # the relay's memory.
    max_held_bytes: int = attrs.field(default=64 << 20, validator=_AT_LEAST_1)
    max_held_bytes_per_account: int = attrs.field(default=16 << 20, validator=_AT_LEAST_1)


@attrs.frozen(kw_only=True)
class DedupRule:
    """An identical message within ``window`` seconds of an accepted one is not sent."""

    enabled: bool = True
    window: float = attrs.field(default=60.0, validator=_POSITIVE)
    action: DedupAction = attrs.field(default="reject", validator=valid(one_of(DedupAction)))
    status: int = attrs.field(default=0x45, validator=_STATUS)
    scope: RuleScope = attrs.field(default="upstream", validator=valid(one_of(RuleScope)))
    max_entries: int = attrs.field(default=2_000_000, validator=_AT_LEAST_1)
    # The newest entries kept in a dict (fast, ~120-175 B each) before the oldest move into
    # compact records (~46 B each, slower to reach); see smpprelay/store/windows.py.
    fast_entries: int = attrs.field(default=1 << 18, validator=valid(number(ge=0)))


@attrs.frozen(kw_only=True)
class FloodRule:
    """At most ``max_messages`` to one number, each less than ``gap`` s after the last."""

    enabled: bool = True
    max_messages: int = attrs.field(default=50, validator=_AT_LEAST_1)
    gap: float = attrs.field(default=30.0, validator=_POSITIVE)
    status: int = attrs.field(default=0x45, validator=_STATUS)
    scope: RuleScope = attrs.field(default="upstream", validator=valid(one_of(RuleScope)))
    max_entries: int = attrs.field(default=2_000_000, validator=_AT_LEAST_1)
    # The newest entries kept in a dict (fast, ~120-175 B each) before the oldest move into
    # compact records (~46 B each, slower to reach); see smpprelay/store/windows.py.
    fast_entries: int = attrs.field(default=1 << 18, validator=valid(number(ge=0)))


@attrs.frozen(kw_only=True)
class FiltersConfig:
    """The operator's rules, checked in this order: encoding, concat, dedup, flood."""

    encoding: EncodingRule = EncodingRule()
    concat: ConcatRule = ConcatRule()
    dedup: DedupRule = DedupRule()
    flood: FloodRule = FloodRule()


@attrs.frozen(kw_only=True)
class Config:
    """The whole relay configuration; ``upstream=None`` means the built-in simulated SMSC."""

    listen: ListenConfig = ListenConfig()
    clients: tuple[Account, ...] = ()
    upstream: UpstreamConfig | None = None
    # Several operators (README "Several upstreams"); instead of ``upstream``.
    upstreams: tuple[UpstreamConfig, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    security: SecurityConfig = SecurityConfig()
    receipts: ReceiptsConfig = ReceiptsConfig()
    store: StoreConfig = StoreConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    filters: FiltersConfig = FiltersConfig()
    # Relay processes started by one twistd, sharing the app port and one Redis (README
    # "Scale out"); more than one needs store.backend redis.
    workers: int = attrs.field(default=1, validator=_AT_LEAST_1)

    def __attrs_post_init__(self) -> None:
        if self.workers > 1 and self.store.backend != "redis":
            raise Invalid("workers", "more than one worker needs store.backend: redis")
        accounts: set[str] = set()
        prefix_owner: dict[str, str] = {}
        for i, client in enumerate(self.clients):
            if client.system_id in accounts:
                raise Invalid(f"clients[{i}].system_id", f"duplicate {client.system_id!r}")
            accounts.add(client.system_id)
            for j, prefix in enumerate(client.mo_prefixes):
                owner = prefix_owner.setdefault(prefix, client.system_id)
                if owner != client.system_id:
                    where = f"clients[{i}].mo_prefixes[{j}]"
                    raise Invalid(where, f"{prefix!r} is already claimed by {owner!r}")
        if self.upstream is not None and self.upstreams:
            raise Invalid("upstreams", "give upstream or upstreams, not both")
        names: set[str] = set()
        for i, upstream in enumerate(self.upstreams):
            if upstream.name in names:
                raise Invalid(f"upstreams[{i}].name", f"duplicate {upstream.name!r}")
            names.add(upstream.name)
            for j, account in enumerate(upstream.accounts):
                if self.clients and account not in accounts:
                    raise Invalid(f"upstreams[{i}].accounts[{j}]", f"no client {account!r}")

    @property
    def operators(self) -> tuple[UpstreamConfig, ...]:
        """Every configured upstream (``upstream`` is one named "default"); (): the simulator."""
        if self.upstreams:
            return self.upstreams
        return () if self.upstream is None else (self.upstream,)


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate already-parsed YAML data; raise ConfigError naming ``source`` and the key."""
    try:
        config = build(Config, data, "")
        # A Config made in code may have no accounts (tests, a relay filled in later); a
        # file without any would start a relay no app can bind to.
        if not config.clients:
            raise SchemaError("clients", "at least one account is required")
    except SchemaError as exc:
        where = f"{exc.path}: " if exc.path else ""
        raise ConfigError(f"{source}: {where}{exc.problem}") from None
    return config


def load_config(path: str) -> Config:
    """Read and validate a YAML config file; every problem is a one-line ConfigError."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    # ValueError: safe_load builds dates itself, so "2024-13-45" fails outside YAMLError.
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    return parse_config({} if data is None else data, path)


def default_config() -> Config:
    """The configuration used without --config: simulated SMSC, one local "demo" account."""
    return Config(
        clients=(
            Account(system_id="demo", password="demo", allowed_ips=("127.0.0.0/8", "::1/128")),
        )
    )
