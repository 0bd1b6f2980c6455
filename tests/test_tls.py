"""TLS files are checked when the service is built: each problem names its key."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from smpprelay.config import ListenTlsConfig, UpstreamConfig
from smpprelay.tls import TlsFileError, client_options, server_options, tls_problem
from tests.certs import make_certs


def test_files_that_fit_load(tmp_path: pathlib.Path) -> None:
    """A certificate with its chain and the matching key load; so do CA files and a client
    certificate with its key."""
    certs = make_certs(tmp_path)
    server_options(ListenTlsConfig(cert=certs.cert, key=certs.key))
    server_options(ListenTlsConfig(cert=certs.cert, key=certs.key, client_ca=certs.ca))
    client_options(UpstreamConfig(host="127.0.0.1", system_id="r", password="p", tls_ca=certs.ca))
    for verify in (True, False):
        client_options(
            UpstreamConfig(
                host="127.0.0.1",
                system_id="r",
                password="p",
                tls=True,
                tls_ca=certs.ca,
                tls_verify=verify,
                tls_cert=certs.client_cert,
                tls_key=certs.client_key,
            )
        )


@pytest.mark.parametrize(
    ("which", "key", "problem"),
    [
        ("missing cert", "listen.tls.cert", "cannot read"),
        ("key as cert", "listen.tls.cert", "no usable PEM certificate"),
        ("cert as key", "listen.tls.key", "no usable PEM private key"),
        ("other key", "listen.tls.key", "does not match the certificate"),
        ("missing client ca", "listen.tls.client_ca", "cannot read"),
        ("key as client ca", "listen.tls.client_ca", "no usable PEM certificate"),
        ("missing ca", "upstream.tls_ca", "cannot read"),
        ("key as ca", "upstream.tls_ca", "no usable PEM certificate"),
        ("missing client cert", "upstream.tls_cert", "cannot read"),
        ("other client key", "upstream.tls_key", "does not match the certificate"),
    ],
)
def test_unusable_files_name_their_key(
    tmp_path: pathlib.Path, which: str, key: str, problem: str
) -> None:
    """A missing or wrong file, or a key that is not the certificate's, is a TlsFileError."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    certs, other = make_certs(tmp_path / "a"), make_certs(tmp_path / "b")
    missing = str(tmp_path / "missing.pem")
    listen: dict[str, Any] = {"cert": certs.cert, "key": certs.key}
    upstream: dict[str, Any] = {"host": "h", "system_id": "r", "password": "p", "tls": True}
    changes: dict[str, dict[str, str]] = {
        "missing cert": {"cert": missing},
        "key as cert": {"cert": certs.key},
        "cert as key": {"cert": certs.cert, "key": certs.cert},
        "other key": {"key": other.key},
        "missing client ca": {"client_ca": missing},
        "key as client ca": {"client_ca": certs.key},
        "missing ca": {"tls_ca": missing},
        "key as ca": {"tls_ca": certs.key},
        "missing client cert": {"tls_cert": missing, "tls_key": certs.client_key},
        "other client key": {"tls_cert": certs.client_cert, "tls_key": other.client_key},
    }
    if key.startswith("listen"):
        with pytest.raises(TlsFileError) as info:
            server_options(ListenTlsConfig(**{**listen, **changes[which]}))
    else:
        with pytest.raises(TlsFileError) as info:
            client_options(UpstreamConfig(**{**upstream, **changes[which]}))
    assert info.value.key == key
    assert problem in info.value.problem


def test_a_failed_handshake_is_told_apart_and_described() -> None:
    """OpenSSL's reasons and a host-name mismatch are TLS problems; anything else is not."""
    from OpenSSL import SSL
    from service_identity.exceptions import DNSMismatch, VerificationError
    from service_identity.hazmat import DNS_ID
    from twisted.internet.error import ConnectionDone

    refused = SSL.Error([("SSL routines", "", "peer did not return a certificate")])
    assert tls_problem(refused) == "peer did not return a certificate"
    wrong_host = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("smsc.example.net"))])
    assert str(tls_problem(wrong_host)).startswith("certificate not for this host")
    assert tls_problem(SSL.Error()) == "TLS error"
    assert tls_problem(ConnectionDone()) is None
    assert tls_problem(None) is None
