"""Tests for smpprelay.config: YAML loading, defaults and validation messages."""

import pathlib
from typing import Any

import attrs
import pytest
import yaml

from smpprelay import tap
from smpprelay.config import (
    Account,
    ConcatRule,
    Config,
    ConfigError,
    DedupRule,
    EncodingRule,
    FiltersConfig,
    FloodRule,
    Invalid,
    LimitsConfig,
    ListenConfig,
    ListenTlsConfig,
    MetricsConfig,
    ReceiptsConfig,
    SecurityConfig,
    SimulatorConfig,
    StoreConfig,
    UpstreamConfig,
    default_config,
    load_config,
    parse_config,
)
from smpprelay.passwd import make_hash

EXAMPLE = pathlib.Path(__file__).parent.parent / "etc" / "smpprelay.yaml"


def _minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"clients": [{"system_id": "app1", "password": "pw"}]}
    data.update(extra)
    return data


def _upstream(**extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"host": "smsc", "system_id": "relay", "password": "pw"}
    section.update(extra)
    return section


def _error(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "x.yaml")
    return str(info.value)


def _write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "relay.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_example_file_loads() -> None:
    """etc/smpprelay.yaml loads and carries its non-default values."""
    config = load_config(str(EXAMPLE))
    assert [c.system_id for c in config.clients] == ["app1", "app2"]
    assert config.clients[0].mo_prefixes == ("7900",)
    assert config.clients[0].allowed_ips == ("0.0.0.0/0", "::/0")
    assert config.clients[1].allowed_ips == ("10.20.0.0/16", "192.0.2.15/32", "2001:db8::/32")
    assert config.upstream is not None
    assert config.upstream.host == "smpp.example.net"
    assert config.upstream.system_id == "relay"
    assert config.upstream.interface_version == 0x34
    assert config.simulator.receipt_delay == 0.5
    assert config.limits == LimitsConfig()
    assert config.receipts == ReceiptsConfig()
    assert config.store == StoreConfig()
    assert config.filters == FiltersConfig()


def test_example_file_lists_every_key() -> None:
    """etc/smpprelay.yaml documents every key of every section."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for section, cls in [
        ("listen", ListenConfig),
        ("metrics", MetricsConfig),
        ("upstream", UpstreamConfig),
        ("limits", LimitsConfig),
        ("security", SecurityConfig),
        ("receipts", ReceiptsConfig),
        ("store", StoreConfig),
        ("simulator", SimulatorConfig),
    ]:
        assert set(data[section]) == {f.name for f in attrs.fields(cls)}, section
    assert set(data["listen"]["tls"]) == {f.name for f in attrs.fields(ListenTlsConfig)}
    client_keys = {key for client in data["clients"] for key in client}
    assert client_keys == {f.name for f in attrs.fields(Account)}
    for rule, cls in [
        ("encoding", EncodingRule),
        ("concat", ConcatRule),
        ("dedup", DedupRule),
        ("flood", FloodRule),
    ]:
        assert set(data["filters"][rule]) == {f.name for f in attrs.fields(cls)}, rule


def test_default_config() -> None:
    """default_config() is all defaults with the simulator and one local demo account."""
    config = default_config()
    assert config.upstream is None
    assert config.clients == (
        Account(system_id="demo", password="demo", allowed_ips=("127.0.0.0/8", "::1/128")),
    )
    assert config.listen == ListenConfig(host="127.0.0.1", port=2775)
    assert config.metrics.port == 9775
    assert config.limits.max_pdu == 70_000
    assert config.receipts.map_ttl == 172_800
    assert config.simulator == SimulatorConfig(receipt_delay=0.0, stat="DELIVRD")
    assert config.filters == FiltersConfig()
    hash(config)  # frozen and hashable


def test_minimal_file_gets_defaults_and_simulator(tmp_path: pathlib.Path) -> None:
    """A file with only clients gets every default and upstream=None."""
    path = _write(tmp_path, "clients:\n  - {system_id: a, password: b}\n")
    config = load_config(path)
    assert config.upstream is None
    assert config.clients == (Account(system_id="a", password="b"),)
    assert config.clients[0].allowed_ips == ("0.0.0.0/0", "::/0")
    assert config == Config(clients=config.clients)


def test_upstream_defaults() -> None:
    """An upstream with only the required keys gets the documented defaults."""
    up = parse_config(_minimal(upstream=_upstream())).upstream
    assert up is not None
    assert up == UpstreamConfig(host="smsc", system_id="relay", password="pw")
    assert (up.port, up.bind, up.binds, up.window) == (2775, "transceiver", 1, 10)
    assert (up.enquire_link, up.reconnect_initial, up.reconnect_max) == (30.0, 1.0, 60.0)


def test_missing_file(tmp_path: pathlib.Path) -> None:
    """A missing file is a one-line ConfigError naming it."""
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        load_config(path)


def test_not_utf8(tmp_path: pathlib.Path) -> None:
    """A file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
    path = tmp_path / "relay.yaml"
    path.write_bytes(b"clients: \xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(str(path))


def test_yaml_syntax_error(tmp_path: pathlib.Path) -> None:
    """A YAML syntax error names the file and the line, on one line."""
    path = _write(tmp_path, "listen:\n  host: [127.0.0.1\n  port: 2775\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at line ")
    assert "\n" not in message


def test_empty_file_is_empty_mapping(tmp_path: pathlib.Path) -> None:
    """An empty file reads as {} and so fails only for the missing clients."""
    path = _write(tmp_path, "# nothing here\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: clients: at least one account is required"


def test_clients_empty_list() -> None:
    """An empty clients list is refused."""
    assert _error({"clients": []}) == "x.yaml: clients: at least one account is required"


def test_top_level_not_mapping() -> None:
    """The document must be a mapping."""
    assert _error(["a"]) == "x.yaml: expected a mapping, got a list"


def test_clients_must_be_list_of_mappings() -> None:
    """clients must be a list, and each item a mapping."""
    assert _error({"clients": {"a": 1}}) == "x.yaml: clients: expected a list, got a mapping"
    assert _error({"clients": ["app1"]}) == "x.yaml: clients[0]: expected a mapping, got 'app1'"


def test_unknown_key_top_level() -> None:
    """An unknown top-level key is named."""
    assert _error(_minimal(upstreamz={})) == "x.yaml: upstreamz: unknown key"


def test_unknown_key_nested() -> None:
    """An unknown nested key is named with its dotted path."""
    data = _minimal(upstream=_upstream(widnow=5))
    assert _error(data) == "x.yaml: upstream.widnow: unknown key"
    data = {"clients": [{"system_id": "a", "password": "b", "pasword": "c"}]}
    assert _error(data) == "x.yaml: clients[0].pasword: unknown key"


def test_filters_defaults_are_the_operators_values() -> None:
    """Every rule is on by default with the operator's values and ESME_RSUBMITFAIL."""
    filters = parse_config(_minimal()).filters
    assert (filters.dedup.window, filters.dedup.action, filters.dedup.status) == (
        60,
        "reject",
        0x45,
    )
    assert (filters.flood.max_messages, filters.flood.gap) == (50, 30)
    assert filters.concat.window == 60
    assert all(r.enabled for r in (filters.encoding, filters.concat, filters.dedup, filters.flood))


def test_filters_are_validated() -> None:
    """The filters section is checked like every other section."""
    config = parse_config(_minimal(filters={"dedup": {"window": 0.5, "action": "replay"}}))
    assert config.filters.dedup.window == 0.5
    assert config.filters.dedup.action == "replay"
    assert _error(_minimal(filters={"dedup": {"action": "drop"}})) == (
        "x.yaml: filters.dedup.action: expected one of reject, replay, got 'drop'"
    )
    assert _error(_minimal(filters={"flood": {"gap": 0}})).startswith("x.yaml: filters.flood.gap")
    assert _error(_minimal(filters={"anything": 1})) == "x.yaml: filters.anything: unknown key"
    assert _error(_minimal(filters=[1])) == "x.yaml: filters: expected a mapping, got a list"


def test_missing_required() -> None:
    """A missing required key is named."""
    data = {"clients": [{"system_id": "a", "password": "b"}, {"system_id": "c"}]}
    assert _error(data) == "x.yaml: clients[1].password: missing (or give password_hash)"
    data = _minimal(upstream={"host": "smsc", "password": "pw"})
    assert _error(data) == "x.yaml: upstream.system_id: missing"


def test_bool_is_not_an_int() -> None:
    """YAML yes/true is refused where an integer or number is expected."""
    message = _error(_minimal(upstream=_upstream(window=True)))
    assert message == "x.yaml: upstream.window: expected an integer, got a boolean (true)"
    message = _error(_minimal(limits={"response": False}))
    assert message == "x.yaml: limits.response: expected a number, got a boolean (false)"


def test_float_is_not_an_int() -> None:
    """Fractional values are refused for integer keys, as are strings."""
    message = _error(_minimal(upstream=_upstream(binds=2.5)))
    assert message == "x.yaml: upstream.binds: expected an integer, got 2.5"
    message = _error(_minimal(upstream=_upstream(window="ten")))
    assert message == "x.yaml: upstream.window: expected an integer, got 'ten'"


def test_int_is_not_a_string(tmp_path: pathlib.Path) -> None:
    """An unquoted numeric password is refused with a hint to quote it (and not echoed)."""
    path = _write(tmp_path, "clients:\n  - system_id: app1\n    password: 1234\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: clients[0].password: expected a string, got an integer (put it in quotes)"
    )


def test_fractional_durations_accepted(tmp_path: pathlib.Path) -> None:
    """Durations take fractional and integer values, stored as floats."""
    text = (
        "clients: [{system_id: a, password: b}]\n"
        "upstream: {host: h, system_id: s, password: p, enquire_link: 0.5, reconnect_initial: 2}\n"
        "limits: {session_init: 0.25}\n"
        "simulator: {receipt_delay: 0}\n"
    )
    config = load_config(_write(tmp_path, text))
    assert config.upstream is not None
    assert config.upstream.enquire_link == 0.5
    assert config.upstream.reconnect_initial == 2.0
    assert isinstance(config.upstream.reconnect_initial, float)
    assert config.limits.session_init == 0.25
    assert config.simulator.receipt_delay == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_minimal(upstream=_upstream(binds=0)), "upstream.binds: must be between 1 and 64, got 0"),
        (
            _minimal(upstream=_upstream(binds=65)),
            "upstream.binds: must be between 1 and 64, got 65",
        ),
        (_minimal(upstream=_upstream(enquire_link=0)), "upstream.enquire_link: must be greater"),
        (
            _minimal(upstream=_upstream(addr_ton=256)),
            "upstream.addr_ton: must be between 0 and 255",
        ),
        (_minimal(limits={"max_pdu": 1023}), "limits.max_pdu: must be between 1024 and 16777216"),
        (_minimal(limits={"window": 0}), "limits.window: must be at least 1, got 0"),
        (_minimal(receipts={"retry": -1}), "receipts.retry: must be greater than 0, got -1.0"),
        (_minimal(simulator={"receipt_delay": -0.5}), "simulator.receipt_delay: must be at least"),
        (_minimal(listen={"port": 70000}), "listen.port: must be between 0 and 65535"),
        (_minimal(limits={"response": float("inf")}), "limits.response: expected a finite number"),
        (
            _minimal(upstream=_upstream(reconnect_initial=10, reconnect_max=5)),
            "upstream.reconnect_max: must be at least reconnect_initial (10.0), got 5.0",
        ),
        (
            _minimal(upstream=_upstream(tls=True, tls_cert="c.pem")),
            "upstream.tls_key: missing (tls_cert and tls_key come together)",
        ),
        (
            _minimal(upstream=_upstream(tls=True, tls_key="k.pem")),
            "upstream.tls_cert: missing (tls_cert and tls_key come together)",
        ),
        (
            _minimal(upstream=_upstream(tls_cert="c.pem", tls_key="k.pem")),
            "upstream.tls_cert: needs upstream.tls: true",
        ),
    ],
)
def test_ranges(data: dict[str, Any], message: str) -> None:
    """Out-of-range numbers name the key and the allowed range."""
    assert _error(data).startswith(f"x.yaml: {message}")


@pytest.mark.parametrize(
    ("client", "message"),
    [
        ({"system_id": "", "password": "b"}, "clients[0].system_id: must not be empty"),
        (
            {"system_id": "a" * 16, "password": "b"},
            "clients[0].system_id: must be 1 to 15 characters long, got 16",
        ),
        (
            {"system_id": "a", "password": "123456789"},
            "clients[0].password: must be 1 to 8 characters long, got 9",
        ),
        ({"system_id": "a", "password": "pä"}, "clients[0].password: must be printable ASCII"),
    ],
)
def test_string_limits(client: dict[str, Any], message: str) -> None:
    """SMPP strings respect their length limits and ASCII."""
    assert _error({"clients": [client]}).startswith(f"x.yaml: {message}")


def test_literal_choices() -> None:
    """bind and stat accept only their listed values."""
    message = _error(_minimal(upstream=_upstream(bind="receiver")))
    assert message == (
        "x.yaml: upstream.bind: expected one of transceiver, transmitter_receiver, got 'receiver'"
    )
    assert "simulator.stat: expected one of DELIVRD" in _error(_minimal(simulator={"stat": "OK"}))
    config = parse_config(_minimal(upstream=_upstream(bind="transmitter_receiver")))
    assert config.upstream is not None
    assert config.upstream.bind == "transmitter_receiver"


def test_duplicate_system_id() -> None:
    """A second client with the same system_id is refused."""
    data = {
        "clients": [
            {"system_id": "app1", "password": "a"},
            {"system_id": "app1", "password": "b"},
        ]
    }
    assert _error(data) == "x.yaml: clients[1].system_id: duplicate 'app1'"


def test_duplicate_mo_prefix() -> None:
    """The same MO prefix claimed by two clients is refused."""
    data = {
        "clients": [
            {"system_id": "app1", "password": "a", "mo_prefixes": ["7900"]},
            {"system_id": "app2", "password": "b", "mo_prefixes": ["7901", "7900"]},
        ]
    }
    assert _error(data) == (
        "x.yaml: clients[1].mo_prefixes[1]: '7900' is already claimed by 'app1'"
    )


def test_bad_mo_prefix() -> None:
    """MO prefixes are digits with an optional leading '+'."""
    data: dict[str, Any]
    data = {"clients": [{"system_id": "a", "password": "b", "mo_prefixes": ["+79", "79x"]}]}
    assert _error(data).startswith("x.yaml: clients[0].mo_prefixes[1]: expected digits")
    data = {"clients": [{"system_id": "a", "password": "b", "mo_prefixes": [7900]}]}
    assert "mo_prefixes[0]: expected a string, got 7900 (put it in quotes)" in _error(data)


def test_allowed_ips_normalised() -> None:
    """allowed_ips entries are stored as normalised networks."""
    data = {"clients": [{"system_id": "a", "password": "b", "allowed_ips": ["10.1.2.3/8", "::1"]}]}
    assert parse_config(data).clients[0].allowed_ips == ("10.0.0.0/8", "::1/128")


def test_bad_cidr() -> None:
    """An allowed_ips entry that is not a network is refused."""
    data = {
        "clients": [
            {"system_id": "a", "password": "b"},
            {"system_id": "c", "password": "d", "allowed_ips": ["10.0.0.0/33"]},
        ]
    }
    assert _error(data) == (
        "x.yaml: clients[1].allowed_ips[0]: not an IP address or CIDR network: '10.0.0.0/33'"
    )


def test_error_is_one_line_with_file_and_key(tmp_path: pathlib.Path) -> None:
    """str(err) is a single line holding the file name and the dotted key."""
    text = "clients: [{system_id: a, password: b}]\nupstream:\n  host: h\n  window: ten\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: upstream.")
    assert "relay.yaml" in message


def test_null_section_means_defaults() -> None:
    """A section left empty (null) gets its defaults; a null upstream means the simulator."""
    config = parse_config(_minimal(limits=None, upstream=None))
    assert config.limits == LimitsConfig()
    assert config.upstream is None


def test_empty_list_item() -> None:
    """A bare "-" in clients is refused rather than read as an empty account."""
    assert _error({"clients": [None]}) == "x.yaml: clients[0]: empty list item"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_minimal(listen={"port": None}), "listen.port: null (no plain port) needs listen.tls"),
        (_minimal(listen={"tls": {"cert": "c.pem"}}), "listen.tls.key: missing"),
        (_minimal(listen={"tls": {"cert": "", "key": "k"}}), "listen.tls.cert: must not be empty"),
        (
            {
                "clients": [
                    {"system_id": "a", "password": "b", "password_hash": make_hash("b", n=16)}
                ]
            },
            "clients[0].password: give password or password_hash, not both",
        ),
        (
            {"clients": [{"system_id": "a", "password_hash": "secret"}]},
            "clients[0].password_hash: expected scrypt$<n>$<r>$<p>$<salt>$<key>",
        ),
        (
            {"clients": [{"system_id": "a", "password": "b", "max_binds": 0}]},
            "clients[0].max_binds: must be at least 1, got 0",
        ),
        (
            {"clients": [{"system_id": "a", "password": "b", "throughput": 0}]},
            "clients[0].throughput: must be greater than 0, got 0.0",
        ),
        (_minimal(security={"bind_failures": 0}), "security.bind_failures: must be at least 1"),
        (_minimal(security={"lockout": 0}), "security.lockout: must be greater than 0"),
        (_minimal(security={"max_connections": -1}), "security.max_connections: must be at least"),
        (_minimal(security={"ban": 1}), "security.ban: unknown key"),
        (
            _minimal(security={"max_password_checks": 0}),
            "security.max_password_checks: must be at least 1",
        ),
        (
            _minimal(security={"max_password_checks_per_address": "2"}),
            "security.max_password_checks_per_address: expected",
        ),
        (
            _minimal(upstream=_upstream(tls="yes")),
            "upstream.tls: expected true or false, got 'yes'",
        ),
    ],
)
def test_security_keys_validated(data: dict[str, Any], message: str) -> None:
    """The access and TLS keys are checked like every other, naming file and key."""
    assert _error(data).startswith(f"x.yaml: {message}")


def test_security_defaults_and_hash_accepted() -> None:
    """Defaults are the documented ones; a smpprelay-passwd hash is a valid password_hash."""
    hashed = make_hash("pw", n=16)
    config = parse_config({"clients": [{"system_id": "a", "password_hash": hashed}]})
    assert config.clients[0].password_hash == hashed
    assert config.clients[0].password is None
    assert config.security == SecurityConfig(
        bind_failures=5,
        bind_failure_window=60.0,
        lockout=300.0,
        max_connections=1000,
        max_connections_per_address=50,
        max_password_checks=64,
        max_password_checks_per_address=2,
    )
    assert (config.listen.port, config.listen.tls) == (2775, None)


def test_unreadable_tls_files_stop_the_start(tmp_path: pathlib.Path) -> None:
    """twistd smpprelay with a certificate it cannot read exits with one line naming the key."""
    missing = tmp_path / "nope.pem"
    path = _write(
        tmp_path,
        "clients: [{system_id: a, password: b}]\n"
        f"listen: {{tls: {{cert: {missing}, key: {missing}}}}}\n",
    )
    options = tap.Options()  # type: ignore[no-untyped-call]
    with pytest.raises(SystemExit) as info:
        options.parseOptions(["--config", path])  # type: ignore[no-untyped-call]
    assert str(info.value) == (
        f"smpprelay: {path}: listen.tls.cert: cannot read {missing}: No such file or directory"
    )


def _upstream_config(**extra: Any) -> UpstreamConfig:
    return UpstreamConfig(**_upstream(**extra))


def _account(**extra: Any) -> Account:
    return Account(**{"system_id": "a", "password": "b", **extra})


# Built in code, not from YAML: the objects check themselves, and say which field is wrong.
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ListenTlsConfig(cert="", key="k"), "cert: must not be empty"),
        (
            lambda: ListenTlsConfig(port=70000, cert="c", key="k"),
            "port: must be between 0 and 65535, got 70000",
        ),
        (lambda: ListenConfig(port=-1), "port: must be between 0 and 65535, got -1"),
        (lambda: ListenConfig(port=None), "port: null (no plain port) needs listen.tls"),
        (lambda: MetricsConfig(port=65536), "port: must be between 0 and 65535, got 65536"),
        (lambda: Account(system_id="", password="b"), "system_id: must not be empty"),
        (lambda: _account(password="pä"), "password: must be printable ASCII"),
        (lambda: Account(system_id="a"), "password: missing (or give password_hash)"),
        (
            lambda: _account(password_hash=make_hash("b", n=16)),
            "password: give password or password_hash, not both",
        ),
        (
            lambda: Account(system_id="a", password_hash="secret"),
            "password_hash: expected scrypt$<n>$<r>$<p>$<salt>$<key>",
        ),
        (lambda: _account(mo_prefixes=("79", "7x")), "mo_prefixes[1]: expected digits"),
        (
            lambda: _account(allowed_ips=("10.0.0.0/33",)),
            "allowed_ips[0]: not an IP address or CIDR network: '10.0.0.0/33'",
        ),
        (lambda: _account(max_binds=0), "max_binds: must be at least 1, got 0"),
        (lambda: _account(throughput=0.0), "throughput: must be greater than 0, got 0.0"),
        (lambda: _account(burst=0), "burst: must be at least 1, got 0"),
        (lambda: _upstream_config(window=0), "window: must be between 1 and 10000, got 0"),
        (lambda: _upstream_config(host=""), "host: must not be empty"),
        (lambda: _upstream_config(system_id="r" * 16), "system_id: must be at most 15 characters"),
        (
            lambda: _upstream_config(bind="receiver"),
            "bind: expected one of transceiver, transmitter_receiver, got 'receiver'",
        ),
        (
            lambda: _upstream_config(enquire_link=float("nan")),
            "enquire_link: expected a finite number, got nan",
        ),
        (
            lambda: _upstream_config(reconnect_initial=10.0, reconnect_max=5.0),
            "reconnect_max: must be at least reconnect_initial (10.0), got 5.0",
        ),
        (
            lambda: _upstream_config(tls=True, tls_cert="c.pem"),
            "tls_key: missing (tls_cert and tls_key come together)",
        ),
        (
            lambda: _upstream_config(tls_cert="c.pem", tls_key="k.pem"),
            "tls_cert: needs upstream.tls: true",
        ),
        (lambda: LimitsConfig(max_pdu=1023), "max_pdu: must be between 1024 and 16777216"),
        (lambda: LimitsConfig(inactivity=0.0), "inactivity: must be greater than 0"),
        (lambda: SecurityConfig(max_connections=0), "max_connections: must be at least 1"),
        (lambda: ReceiptsConfig(retry=-1.0), "retry: must be greater than 0, got -1.0"),
        (lambda: SimulatorConfig(receipt_delay=-5), "receipt_delay: must be at least 0, got -5"),
        (
            lambda: SimulatorConfig(stat="BOGUS"),  # type: ignore[arg-type]
            "stat: expected one of DELIVRD, EXPIRED",
        ),
        (lambda: EncodingRule(allow=(0, 256)), "allow[1]: must be between 0 and 255, got 256"),
        (lambda: ConcatRule(window=0.0), "window: must be greater than 0"),
        (lambda: ConcatRule(status=-1), "status: must be between 0 and 4294967295, got -1"),
        (
            lambda: DedupRule(action="drop"),  # type: ignore[arg-type]
            "action: expected one of reject, replay, got 'drop'",
        ),
        (
            lambda: DedupRule(scope="everyone"),  # type: ignore[arg-type]
            "scope: expected one of upstream, client, got 'everyone'",
        ),
        (lambda: FloodRule(max_messages=0), "max_messages: must be at least 1, got 0"),
        (lambda: FloodRule(fast_entries=-1), "fast_entries: must be at least 0, got -1"),
        (
            lambda: Config(clients=(_account(), _account(password="c"))),
            "clients[1].system_id: duplicate 'a'",
        ),
        (
            lambda: Config(
                clients=(
                    _account(mo_prefixes=("7900",)),
                    _account(system_id="b", mo_prefixes=("7900",)),
                )
            ),
            "clients[1].mo_prefixes[0]: '7900' is already claimed by 'a'",
        ),
    ],
)
def test_built_in_code_with_a_bad_value(build: Any, message: str) -> None:
    """Every config class refuses a bad value however it is built, naming the field."""
    with pytest.raises(Invalid) as info:
        build()
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)


def test_the_built_in_configurations_are_valid() -> None:
    """The defaults of every class, default_config() and the example file's sections build."""
    default_config()
    Config()
    config = load_config(str(EXAMPLE))
    for made in [config, *config.clients, config.upstream, config.listen.tls, config.filters]:
        assert made is not None
        assert attrs.evolve(made) == made  # built again from its own values, checked again


def test_allowed_ips_normalised_when_built_in_code() -> None:
    """An Account made in code stores its networks as the YAML walker does."""
    assert _account(allowed_ips=("10.1.2.3/8", "::1")).allowed_ips == ("10.0.0.0/8", "::1/128")


# --- secrets are never echoed (Faults issue, item 14) ---------------------------------------

_SECRET_CASES = [
    ("password", 73190482, "expected a string, got an integer (put it in quotes)"),
    ("password", 7319.5, "expected a string, got a number (put it in quotes)"),
    ("password", "pässwörd", "must be printable ASCII (an SMPP C-Octet String), got a string"),
    ("password", "Zq9\tX", "must be printable ASCII (an SMPP C-Octet String), got a string"),
    ("password", "Zq9Xw7Vb44", "must be 1 to 8 characters long, got 10"),
    ("password_hash", 73190482, "expected a string, got an integer (put it in quotes)"),
    ("password_hash", "scrypt$hunter2$x", "expected scrypt$<n>$<r>$<p>$<salt>$<key>"),
    ("password_hash", "scrypt$16$8$1$Zq9Xw7Vb$Zq9Xw7Vb", "scrypt hash: salt or key too short"),
]


def _secret_text(value: object) -> list[str]:
    # The value as YAML wrote it and as Python would print it.
    return [str(value), repr(value)]


@pytest.mark.parametrize(("key", "value", "problem"), _SECRET_CASES)
def test_client_secret_never_echoed(key: str, value: object, problem: str) -> None:
    """A bad password or password_hash is described by type or length, never shown."""
    message = _error({"clients": [{"system_id": "app1", key: value}]})
    assert message.startswith(f"x.yaml: clients[0].{key}: {problem}")
    for shown in _secret_text(value):
        assert shown not in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (73190482, "expected a string, got an integer (put it in quotes)"),
        ("pässwörd", "must be printable ASCII (an SMPP C-Octet String), got a string of 8"),
        ("Zq9Xw7Vb44", "must be at most 8 characters long, got 10"),
    ],
)
def test_upstream_password_never_echoed(value: object, problem: str) -> None:
    """The operator password is a secret too."""
    message = _error(_minimal(upstream=_upstream(password=value)))
    assert message.startswith(f"x.yaml: upstream.password: {problem}")
    for shown in _secret_text(value):
        assert shown not in message


def test_secret_date_never_echoed(tmp_path: pathlib.Path) -> None:
    """An unquoted date-like password (YAML reads a date) is named by its type only."""
    path = _write(tmp_path, "clients:\n  - system_id: app1\n    password: 2024-01-02\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).endswith("expected a string, got a date (put it in quotes)")
    assert "2024" not in str(info.value)


def test_secret_never_echoed_when_built_in_code() -> None:
    """Config objects made in code refuse a secret without showing it either."""
    with pytest.raises(Invalid) as info:
        Account(system_id="app1", password="pässwörd")
    assert "pässwörd" not in str(info.value)
    assert str(info.value) == (
        "password: must be printable ASCII (an SMPP C-Octet String), got a string of 8 characters"
    )
    with pytest.raises(Invalid) as info:
        UpstreamConfig(host="h", system_id="s", password="sécret")
    assert "sécret" not in str(info.value)


def test_secret_fields_are_marked() -> None:
    """Every password-like field is marked secret (a new one must be marked too)."""
    marked = {
        (cls.__name__, field.name)
        for cls in (Account, UpstreamConfig)
        for field in attrs.fields(cls)
        if field.metadata.get("secret")
    }
    assert marked == {
        ("Account", "password"),
        ("Account", "password_hash"),
        ("UpstreamConfig", "password"),
    }


# --- the operator's rate cap (upstream.throughput, upstream.burst, simulator.throughput) --------


def test_rate_cap_defaults_to_none_and_burst_to_a_tenth_of_a_second() -> None:
    assert parse_config(_minimal(upstream=_upstream())).upstream == UpstreamConfig(
        **_upstream(), throughput=None, burst=None
    )
    capped = parse_config(_minimal(upstream=_upstream(throughput=20))).upstream
    assert capped is not None
    assert (capped.throughput, capped.burst, capped.burst_size) == (20, None, 2)
    slow = UpstreamConfig(**_upstream(throughput=0.5))
    assert slow.burst_size == 1
    assert UpstreamConfig(**_upstream(throughput=20, burst=50)).burst_size == 50


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"throughput": 0}, "x.yaml: upstream.throughput: must be greater than 0, got 0.0"),
        ({"throughput": -3}, "x.yaml: upstream.throughput: must be greater than 0, got -3.0"),
        ({"throughput": 5, "burst": 0}, "x.yaml: upstream.burst: must be at least 1, got 0"),
        ({"throughput": 5, "burst": 2.5}, "x.yaml: upstream.burst: "),
        ({"burst": 5}, "x.yaml: upstream.burst: needs upstream.throughput"),
    ],
)
def test_rate_cap_is_validated(section: dict[str, Any], message: str) -> None:
    assert _error(_minimal(upstream=_upstream(**section))).startswith(message)


def test_simulator_throughput_is_validated() -> None:
    config = parse_config(_minimal(simulator={"throughput": 20}))
    assert config.simulator.throughput == 20
    assert _error(_minimal(simulator={"throughput": 0})).startswith(
        "x.yaml: simulator.throughput: must be greater than 0"
    )
