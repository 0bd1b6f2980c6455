"""TLS files are checked when the service is built: each problem names its key."""

from __future__ import annotations

import pathlib

import pytest

from smpprelay.config import ListenTls, Upstream
from smpprelay.tls import TlsFileError, client_options, server_options
from tests.certs import make_certs


def test_files_that_fit_load(tmp_path: pathlib.Path) -> None:
    """A certificate with its chain and the matching key load; so does a CA file."""
    certs = make_certs(tmp_path)
    server_options(ListenTls(cert=certs.cert, key=certs.key))
    client_options(Upstream(host="127.0.0.1", system_id="r", password="p", tls_ca=certs.ca))


@pytest.mark.parametrize(
    ("which", "key", "problem"),
    [
        ("missing cert", "listen.tls.cert", "cannot read"),
        ("key as cert", "listen.tls.cert", "no usable PEM certificate"),
        ("cert as key", "listen.tls.key", "no usable PEM private key"),
        ("other key", "listen.tls.key", "does not match the certificate"),
        ("missing ca", "upstream.tls_ca", "cannot read"),
        ("key as ca", "upstream.tls_ca", "no usable PEM certificate"),
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
    cert, private, ca = {
        "missing cert": (missing, certs.key, certs.ca),
        "key as cert": (certs.key, certs.key, certs.ca),
        "cert as key": (certs.cert, certs.cert, certs.ca),
        "other key": (certs.cert, other.key, certs.ca),
        "missing ca": (certs.cert, certs.key, missing),
        "key as ca": (certs.cert, certs.key, certs.key),
    }[which]
    load = (
        (lambda: server_options(ListenTls(cert=cert, key=private)))
        if key.startswith("listen")
        else (lambda: client_options(Upstream(host="h", system_id="r", password="p", tls_ca=ca)))
    )
    with pytest.raises(TlsFileError) as info:
        load()
    assert info.value.key == key
    assert problem in info.value.problem
