"""Read the relay's YAML configuration into frozen attrs objects, validating every key.

The validation is a small walker driven by the attrs field types and a ``_Rule`` kept in
each field's metadata, so adding a setting means adding one annotated field.
"""

import ipaddress
import math
import re
import types
from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args, get_origin

import attrs
import yaml
from attrs import AttrsInstance

from smpprelay.passwd import parse_hash

BindMode = Literal["transceiver", "transmitter_receiver"]
ReceiptStat = Literal["DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD"]


class ConfigError(Exception):
    """A configuration problem; str() is one line: ``<file>: <dotted.key>: <problem>``."""


class _Invalid(Exception):
    """Raised inside the walker, which does not know the file name; parse_config adds it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


def _mo_prefix(text: str) -> str:
    if not re.fullmatch(r"\+?[0-9]+", text):
        raise ValueError(f"expected digits with an optional leading '+', got {text!r}")
    return text


def _scrypt_hash(text: str) -> str:
    parse_hash(text)
    return text


def _network(text: str) -> str:
    try:
        # Normalised so "10.1.2.3/8" and "10.0.0.0/8" compare equal downstream.
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"not an IP address or CIDR network: {text!r}") from None


@attrs.frozen
class _Rule:
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    min_len: int = 0
    max_len: int | None = None
    # SMPP C-Octet Strings are ASCII and NUL-terminated, and the length limits are in octets.
    smpp: bool = False
    item: Callable[[str], str] | None = None


_NO_RULE = _Rule()


def _rule(**kwargs: Any) -> dict[str, _Rule]:
    return {"rule": _Rule(**kwargs)}


@attrs.frozen(kw_only=True)
class ListenTlsConfig:
    """A TLS (1.2 or later) listener for apps, beside or instead of the plain port."""

    port: int = attrs.field(default=3550, metadata=_rule(ge=0, le=65535))
    cert: str = attrs.field(metadata=_rule(min_len=1))  # PEM file: the certificate (and chain)
    key: str = attrs.field(metadata=_rule(min_len=1))  # PEM file: its private key
    # PEM CA certificate(s): apps must present a certificate one of them signed (mutual TLS).
    client_ca: str | None = attrs.field(default=None, metadata=_rule(min_len=1))


@attrs.frozen(kw_only=True)
class ListenConfig:
    """Where applications bind to us; ``port: null`` with ``tls`` means TLS only."""

    host: str = "127.0.0.1"
    port: int | None = attrs.field(default=2775, metadata=_rule(ge=0, le=65535))
    tls: ListenTlsConfig | None = None


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """Where the Prometheus metrics endpoint listens."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=9775, metadata=_rule(ge=0, le=65535))


@attrs.frozen(kw_only=True)
class Account:
    """An application account allowed to bind to the relay."""

    system_id: str = attrs.field(metadata=_rule(min_len=1, max_len=15, smpp=True))
    # Exactly one of the two: a plain password, or (preferred) a smpprelay-passwd hash.
    password: str | None = attrs.field(
        default=None, metadata=_rule(min_len=1, max_len=8, smpp=True)
    )
    password_hash: str | None = attrs.field(default=None, metadata=_rule(item=_scrypt_hash))
    mo_prefixes: tuple[str, ...] = attrs.field(default=(), metadata=_rule(item=_mo_prefix))
    allowed_ips: tuple[str, ...] = attrs.field(
        default=("0.0.0.0/0", "::/0"), metadata=_rule(item=_network)
    )
    max_binds: int | None = attrs.field(default=None, metadata=_rule(ge=1))  # None: no limit
    # Submits per second over all the account's binds (token bucket), None: no limit.
    throughput: float | None = attrs.field(default=None, metadata=_rule(gt=0))
    burst: int | None = attrs.field(default=None, metadata=_rule(ge=1))  # None: max(1, throughput)


@attrs.frozen(kw_only=True)
class UpstreamConfig:
    """The operator's SMSC that the relay binds to."""

    host: str = attrs.field(metadata=_rule(min_len=1))
    port: int = attrs.field(default=2775, metadata=_rule(ge=1, le=65535))
    system_id: str = attrs.field(metadata=_rule(max_len=15, smpp=True))
    password: str = attrs.field(metadata=_rule(max_len=8, smpp=True))
    system_type: str = attrs.field(default="", metadata=_rule(max_len=12, smpp=True))
    bind: BindMode = "transceiver"
    binds: int = attrs.field(default=1, metadata=_rule(ge=1, le=64))
    window: int = attrs.field(default=10, metadata=_rule(ge=1, le=10_000))
    enquire_link: float = attrs.field(default=30.0, metadata=_rule(gt=0))
    response_timeout: float = attrs.field(default=30.0, metadata=_rule(gt=0))
    queue_timeout: float = attrs.field(default=10.0, metadata=_rule(gt=0))
    queue_max: int = attrs.field(default=10_000, metadata=_rule(ge=1))
    reconnect_initial: float = attrs.field(default=1.0, metadata=_rule(gt=0))
    reconnect_max: float = attrs.field(default=60.0, metadata=_rule(gt=0))
    interface_version: int = attrs.field(default=0x34, metadata=_rule(ge=0, le=255))
    addr_ton: int = attrs.field(default=0, metadata=_rule(ge=0, le=255))
    addr_npi: int = attrs.field(default=0, metadata=_rule(ge=0, le=255))
    address_range: str = attrs.field(default="", metadata=_rule(max_len=40, smpp=True))
    tls: bool = False
    tls_ca: str | None = attrs.field(default=None, metadata=_rule(min_len=1))  # None: system CAs
    tls_verify: bool = True
    # Our client certificate (and chain) and its key, for an operator that asks for one.
    tls_cert: str | None = attrs.field(default=None, metadata=_rule(min_len=1))
    tls_key: str | None = attrs.field(default=None, metadata=_rule(min_len=1))


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """Protections for the relay's own listener and app sessions."""

    max_pdu: int = attrs.field(default=70_000, metadata=_rule(ge=1024, le=16_777_216))
    session_init: float = attrs.field(default=10.0, metadata=_rule(gt=0))
    response: float = attrs.field(default=30.0, metadata=_rule(gt=0))
    window: int = attrs.field(default=100, metadata=_rule(ge=1))
    # A PDU must arrive whole within this many seconds of its first byte (absolute, not per byte).
    pdu_read: float = attrs.field(default=10.0, metadata=_rule(gt=0))
    # A bound app session with no PDU from the app for this long is unbound by the relay.
    inactivity: float = attrs.field(default=300.0, metadata=_rule(gt=0))


@attrs.frozen(kw_only=True)
class SecurityConfig:
    """Brute-force lock-outs and connection caps for the app listener(s)."""

    bind_failures: int = attrs.field(default=5, metadata=_rule(ge=1))
    bind_failure_window: float = attrs.field(default=60.0, metadata=_rule(gt=0))
    lockout: float = attrs.field(default=300.0, metadata=_rule(gt=0))
    max_connections: int = attrs.field(default=1000, metadata=_rule(ge=1))
    max_connections_per_address: int = attrs.field(default=50, metadata=_rule(ge=1))
    # Password-hash checks queued or running at once, in all and from one address; a bind
    # past either is refused at once, without hashing (and without counting as a failure).
    max_password_checks: int = attrs.field(default=64, metadata=_rule(ge=1))
    max_password_checks_per_address: int = attrs.field(default=2, metadata=_rule(ge=1))


@attrs.frozen(kw_only=True)
class ReceiptsConfig:
    """How delivery receipts and MO messages are routed back and held for apps."""

    map_ttl: float = attrs.field(default=172_800.0, metadata=_rule(gt=0))
    map_max: int = attrs.field(default=1_000_000, metadata=_rule(ge=1))
    hold_ttl: float = attrs.field(default=86_400.0, metadata=_rule(gt=0))
    hold_max: int = attrs.field(default=100_000, metadata=_rule(ge=1))
    retry: float = attrs.field(default=5.0, metadata=_rule(gt=0))


@attrs.frozen(kw_only=True)
class SimulatorConfig:
    """Behaviour of the built-in simulated SMSC used when no upstream is configured."""

    receipt_delay: float = attrs.field(default=0.0, metadata=_rule(ge=0))
    stat: ReceiptStat = "DELIVRD"


DedupAction = Literal["reject", "replay"]
RuleScope = Literal["upstream", "client"]


@attrs.frozen(kw_only=True)
class EncodingRule:
    """Content must be valid for its data_coding; conventions are transcoded losslessly."""

    enabled: bool = True
    # data_coding values passed through untouched (binary, pictograms, ...): none by default.
    allow: tuple[int, ...] = attrs.field(default=(), metadata=_rule(ge=0, le=255))
    status: int = attrs.field(default=0x45, metadata=_rule(ge=0, le=0xFFFFFFFF))


@attrs.frozen(kw_only=True)
class ConcatRule:
    """Every part of a concatenated message must arrive within ``window`` seconds."""

    enabled: bool = True
    window: float = attrs.field(default=60.0, metadata=_rule(gt=0))
    status: int = attrs.field(default=0x45, metadata=_rule(ge=0, le=0xFFFFFFFF))
    max_open: int = attrs.field(default=100_000, metadata=_rule(ge=1))
    max_open_per_account: int = attrs.field(default=10_000, metadata=_rule(ge=1))


@attrs.frozen(kw_only=True)
class DedupRule:
    """An identical message within ``window`` seconds of an accepted one is not sent."""

    enabled: bool = True
    window: float = attrs.field(default=60.0, metadata=_rule(gt=0))
    action: DedupAction = "reject"
    status: int = attrs.field(default=0x45, metadata=_rule(ge=0, le=0xFFFFFFFF))
    scope: RuleScope = "upstream"
    max_entries: int = attrs.field(default=2_000_000, metadata=_rule(ge=1))
    # The newest entries kept in a dict (fast, ~120-175 B each) before the oldest move into
    # compact records (~46 B each, slower to reach); see smpprelay/store/windows.py.
    fast_entries: int = attrs.field(default=1 << 18, metadata=_rule(ge=0))


@attrs.frozen(kw_only=True)
class FloodRule:
    """At most ``max_messages`` to one number, each less than ``gap`` s after the last."""

    enabled: bool = True
    max_messages: int = attrs.field(default=50, metadata=_rule(ge=1))
    gap: float = attrs.field(default=30.0, metadata=_rule(gt=0))
    status: int = attrs.field(default=0x45, metadata=_rule(ge=0, le=0xFFFFFFFF))
    scope: RuleScope = "upstream"
    max_entries: int = attrs.field(default=2_000_000, metadata=_rule(ge=1))
    # The newest entries kept in a dict (fast, ~120-175 B each) before the oldest move into
    # compact records (~46 B each, slower to reach); see smpprelay/store/windows.py.
    fast_entries: int = attrs.field(default=1 << 18, metadata=_rule(ge=0))


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
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    security: SecurityConfig = SecurityConfig()
    receipts: ReceiptsConfig = ReceiptsConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    filters: FiltersConfig = FiltersConfig()


_A = TypeVar("_A", bound=AttrsInstance)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: object) -> str:
    # Spelled as the user wrote it in YAML, not as Python sees it.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_number(value: float, rule: _Rule, path: str) -> None:
    if rule.gt is not None and not value > rule.gt:
        raise _Invalid(path, f"must be greater than {rule.gt}, got {value}")
    low = rule.ge is not None and value < rule.ge
    high = rule.le is not None and value > rule.le
    if rule.ge is not None and rule.le is not None and (low or high):
        raise _Invalid(path, f"must be between {rule.ge} and {rule.le}, got {value}")
    if low:
        raise _Invalid(path, f"must be at least {rule.ge}, got {value}")
    if high:
        raise _Invalid(path, f"must be at most {rule.le}, got {value}")


def _check_text(value: str, rule: _Rule, path: str) -> None:
    if rule.smpp and not (value.isascii() and value.isprintable()):
        raise _Invalid(path, f"must be printable ASCII (an SMPP C-Octet String), got {value!r}")
    if rule.max_len is not None and len(value) > rule.max_len:
        span = f"{rule.min_len} to {rule.max_len}" if rule.min_len else f"at most {rule.max_len}"
        raise _Invalid(path, f"must be {span} characters long, got {len(value)}")
    if len(value) < rule.min_len:
        raise _Invalid(path, "must not be empty")


def _value(tp: Any, data: object, path: str, rule: _Rule) -> object:
    origin = get_origin(tp)
    if origin is types.UnionType:  # only "X | None" is used
        if data is None:
            return None
        (inner,) = [arg for arg in get_args(tp) if arg is not type(None)]
        return _value(inner, data, path, rule)
    if attrs.has(tp):
        # An empty section ("limits:" with nothing under it) means all defaults.
        return _build(tp, {} if data is None else data, path)
    if origin is tuple:
        if not isinstance(data, list):
            raise _Invalid(path, f"expected a list, got {_show(data)}")
        items = []
        for i, raw in enumerate(data):
            if raw is None:  # a bare "-": not an all-defaults mapping
                raise _Invalid(f"{path}[{i}]", "empty list item")
            item_type = get_args(tp)[0]
            # A range given for a list of numbers applies to each number.
            item_rule = rule if item_type in (int, float) else _NO_RULE
            item = _value(item_type, raw, f"{path}[{i}]", item_rule)
            if rule.item is not None and isinstance(item, str):
                try:
                    item = rule.item(item)
                except ValueError as exc:
                    raise _Invalid(f"{path}[{i}]", str(exc)) from None
            items.append(item)
        return tuple(items)
    if origin is Literal:
        if not isinstance(data, str) or data not in get_args(tp):
            raise _Invalid(path, f"expected one of {', '.join(get_args(tp))}, got {_show(data)}")
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise _Invalid(path, f"expected true or false, got {_show(data)}")
        return data
    if tp is str:
        if not isinstance(data, str):
            # YAML turns unquoted 1234, 0079, yes or 2024-01-01 into non-strings.
            hint = "" if data is None or isinstance(data, list | dict) else " (put it in quotes)"
            raise _Invalid(path, f"expected a string, got {_show(data)}{hint}")
        _check_text(data, rule, path)
        if rule.item is not None:  # a single string with a format of its own (password_hash)
            try:
                return rule.item(data)
            except ValueError as exc:
                raise _Invalid(path, str(exc)) from None
        return data
    if tp is int:
        # bool is an int subclass, and YAML reads "yes" as True.
        if isinstance(data, bool) or not isinstance(data, int):
            raise _Invalid(path, f"expected an integer, got {_show(data)}")
        _check_number(data, rule, path)
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise _Invalid(path, f"expected a number, got {_show(data)}")
        number = float(data)
        if not math.isfinite(number):
            raise _Invalid(path, f"expected a finite number, got {_show(data)}")
        _check_number(number, rule, path)
        return number
    raise TypeError(f"config walker cannot read a {tp!r} field at {path}")


def _build(cls: type[_A], data: object, path: str) -> _A:
    if not isinstance(data, dict):
        raise _Invalid(path, f"expected a mapping, got {_show(data)}")
    fields = attrs.fields(cls)
    names = {field.name for field in fields}
    for key in data:
        if key not in names:
            raise _Invalid(_join(path, key), "unknown key")
    kwargs: dict[str, object] = {}
    for field in fields:
        where = _join(path, field.name)
        if field.name in data:
            rule = field.metadata.get("rule", _NO_RULE)
            kwargs[field.name] = _value(field.type, data[field.name], where, rule)
        elif field.default is attrs.NOTHING:
            raise _Invalid(where, "missing")
    return cls(**kwargs)


def _cross_check(config: Config) -> None:
    if not config.clients:
        raise _Invalid("clients", "at least one account is required")
    accounts: set[str] = set()
    prefix_owner: dict[str, str] = {}
    for i, client in enumerate(config.clients):
        if client.system_id in accounts:
            raise _Invalid(f"clients[{i}].system_id", f"duplicate {client.system_id!r}")
        accounts.add(client.system_id)
        for j, prefix in enumerate(client.mo_prefixes):
            owner = prefix_owner.setdefault(prefix, client.system_id)
            if owner != client.system_id:
                where = f"clients[{i}].mo_prefixes[{j}]"
                raise _Invalid(where, f"{prefix!r} is already claimed by {owner!r}")
    for i, client in enumerate(config.clients):
        if (client.password is None) == (client.password_hash is None):
            problem = (
                "missing (or give password_hash)"
                if client.password is None
                else "give password or password_hash, not both"
            )
            raise _Invalid(f"clients[{i}].password", problem)
    if config.listen.port is None and config.listen.tls is None:
        raise _Invalid("listen.port", "null (no plain port) needs listen.tls")
    up = config.upstream
    if up is not None and up.reconnect_max < up.reconnect_initial:
        raise _Invalid(
            "upstream.reconnect_max",
            f"must be at least reconnect_initial ({up.reconnect_initial}), got {up.reconnect_max}",
        )
    if up is not None and (up.tls_cert is None) != (up.tls_key is None):
        missing = "upstream.tls_key" if up.tls_key is None else "upstream.tls_cert"
        raise _Invalid(missing, "missing (tls_cert and tls_key come together)")
    if up is not None and up.tls_cert is not None and not up.tls:
        raise _Invalid("upstream.tls_cert", "needs upstream.tls: true")


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate already-parsed YAML data; raise ConfigError naming ``source`` and the key."""
    try:
        config = _build(Config, data, "")
        _cross_check(config)
    except _Invalid as exc:
        where = f"{exc.path}: " if exc.path else ""
        raise ConfigError(f"{source}: {where}{exc.problem}") from None
    return config


def _yaml_problem(exc: Exception) -> str:
    problem = (isinstance(exc, yaml.MarkedYAMLError) and exc.problem) or str(exc)
    text = " ".join(str(problem).split())  # PyYAML messages span lines; ours must not
    mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"invalid YAML: {text}"


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
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    return parse_config({} if data is None else data, path)


def default_config() -> Config:
    """The configuration used without --config: simulated SMSC, one local "demo" account."""
    return Config(
        clients=(
            Account(system_id="demo", password="demo", allowed_ips=("127.0.0.0/8", "::1/128")),
        )
    )
