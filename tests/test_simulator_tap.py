"""``twistd smpprelay-simulator`` options: the simulator's settings, --tls-cert and --tls-key."""

from __future__ import annotations

import pathlib

import pytest
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.python import usage

from smpprelay import simulator_tap
from smpprelay.config import SimulatorConfig
from smpprelay.service import Listener
from smpprelay.simulator import SimulatorFactory
from tests.certs import make_certs


def parse(*args: str) -> simulator_tap.Options:
    options = simulator_tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(list(args))  # type: ignore[no-untyped-call]
    return options


def test_without_a_certificate_it_listens_on_plain_tcp() -> None:
    options = parse("--port", "2999")
    assert options.tls is None
    service = simulator_tap.makeService(options)
    assert isinstance(service, Listener)
    assert isinstance(service.endpoint, TCP4ServerEndpoint)


def test_with_certificate_and_key_it_listens_with_tls_on_port(tmp_path: pathlib.Path) -> None:
    certs = make_certs(tmp_path)
    options = parse("--port", "2999", "--tls-cert", certs.cert, "--tls-key", certs.key)
    assert options.tls is not None
    assert (options.tls.port, options.tls.cert, options.tls.key) == (2999, certs.cert, certs.key)
    service = simulator_tap.makeService(options)
    assert isinstance(service, Listener)
    assert isinstance(service.endpoint, SSL4ServerEndpoint)
    assert service.endpoint._port == 2999


def test_a_client_ca_asks_for_client_certificates(tmp_path: pathlib.Path) -> None:
    certs = make_certs(tmp_path)
    options = parse("--tls-cert", certs.cert, "--tls-key", certs.key, "--tls-client-ca", certs.ca)
    assert options.tls is not None
    assert options.tls.client_ca == certs.ca
    with pytest.raises(usage.UsageError, match="--tls-client-ca needs --tls-cert and --tls-key"):
        parse("--tls-client-ca", certs.ca)
    with pytest.raises(SystemExit, match="--tls-client-ca: cannot read"):
        parse(
            "--tls-cert",
            certs.cert,
            "--tls-key",
            certs.key,
            "--tls-client-ca",
            str(tmp_path / "missing.pem"),
        )


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_certificate_and_key_go_together(tmp_path: pathlib.Path, given: str) -> None:
    certs = make_certs(tmp_path)
    with pytest.raises(usage.UsageError, match="--tls-cert and --tls-key go together"):
        parse(given, certs.cert)


@pytest.mark.parametrize(
    ("which", "option", "problem"),
    [
        ("missing cert", "--tls-cert", "cannot read"),
        ("key as cert", "--tls-cert", "no usable PEM certificate"),
        ("cert as key", "--tls-key", "no usable PEM private key"),
        ("other key", "--tls-key", "does not match the certificate"),
    ],
)
def test_unusable_files_stop_with_one_line_naming_the_option(
    tmp_path: pathlib.Path, which: str, option: str, problem: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    certs, other = make_certs(tmp_path / "a"), make_certs(tmp_path / "b")
    cert, key = {
        "missing cert": (str(tmp_path / "missing.pem"), certs.key),
        "key as cert": (certs.key, certs.key),
        "cert as key": (certs.cert, certs.cert),
        "other key": (certs.cert, other.key),
    }[which]
    with pytest.raises(SystemExit) as stopped:
        parse("--tls-cert", cert, "--tls-key", key)
    message = str(stopped.value.code)
    assert message.startswith(f"smpprelay-simulator: {option}: {problem}")
    assert "\n" not in message


def test_the_simulator_started_is_the_one_the_options_checked() -> None:
    options = parse("--receipt-delay", "0.5", "--stat", "UNDELIV")
    assert options.simulator == SimulatorConfig(receipt_delay=0.5, stat="UNDELIV")
    service = simulator_tap.makeService(options)
    assert isinstance(service, Listener)
    assert isinstance(service.factory, SimulatorFactory)
    simulator = service.factory.simulator
    assert (simulator.receipt_delay, simulator.stat) == (0.5, "UNDELIV")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stat", "BOGUS"], "--stat must be one of DELIVRD, EXPIRED, DELETED, UNDELIV"),
        (["--receipt-delay", "-5"], "--receipt-delay must be 0 or more"),
        (["--receipt-delay", "nan"], "--receipt-delay must be 0 or more"),
    ],
)
def test_bad_simulator_settings_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_a_tls_port_out_of_range_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    certs = make_certs(tmp_path)
    with pytest.raises(usage.UsageError, match="--port: must be between 0 and 65535, got 70000"):
        parse("--port", "70000", "--tls-cert", certs.cert, "--tls-key", certs.key)


def test_throughput_caps_the_simulator() -> None:
    options = parse("--throughput", "20")
    assert options.simulator == SimulatorConfig(throughput=20.0)
    service = simulator_tap.makeService(options)
    assert isinstance(service, Listener)
    assert isinstance(service.factory, SimulatorFactory)
    assert service.factory.simulator.throughput == 20.0
    assert parse().simulator.throughput is None


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_throughput_not_above_zero_is_a_usage_error(value: str) -> None:
    with pytest.raises(usage.UsageError, match="--throughput must be greater than 0"):
        parse("--throughput", value)
