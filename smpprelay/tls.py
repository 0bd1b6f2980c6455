"""TLS for both sides: the apps' listener and our connection to the operator (TLS 1.2 or later).

Certificates and keys are read once, when the service is built (before the reactor serves
anything); a file that cannot be read or parsed is a configuration error naming its key.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity.exceptions import VerificationError
from twisted.internet.endpoints import HostnameEndpoint, SSL4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)

from smpprelay.config import Config, ConfigError, ListenTlsConfig, UpstreamConfig

MINIMUM = TLSVersion.TLSv1_2


class TlsFileError(Exception):
    """A certificate, key or CA file is unusable; ``key`` is its configuration key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise TlsFileError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _certificates(path: str, key: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_read(path, key))
    except ValueError as exc:
        raise TlsFileError(key, f"no usable PEM certificate in {path}: {exc}") from None


def _public(key: Any) -> bytes:
    return key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificate_and_key(cert_path: str, key_path: str, cert_key: str, key_key: str) -> Any:
    """A certificate chain and its private key, checked to belong together."""
    chain = _certificates(cert_path, cert_key)
    try:
        private_key = serialization.load_pem_private_key(_read(key_path, key_key), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsFileError(key_key, f"no usable PEM private key in {key_path}: {exc}") from None
    if _public(private_key.public_key()) != _public(chain[0].public_key()):
        raise TlsFileError(key_key, f"does not match the certificate in {cert_path}")
    # cryptography objects: pyOpenSSL deprecates its own X509 here.
    return {"privateKey": private_key, "certificate": chain[0], "extraCertChain": chain[1:]}


def _trust(path: str, key: str) -> Any:
    certs = _certificates(path, key)
    return trustRootFromCertificates(
        [Certificate(crypto.X509.from_cryptography(cert)) for cert in certs]
    )


def server_options(tls: ListenTlsConfig) -> CertificateOptions:
    """The server side of the apps' TLS listener: its certificate chain, TLS 1.2+, and with
    ``client_ca`` a certificate that CA signed required of every app (mutual TLS)."""
    own = _certificate_and_key(tls.cert, tls.key, "listen.tls.cert", "listen.tls.key")
    if tls.client_ca is None:
        return CertificateOptions(raiseMinimumTo=MINIMUM, **own)
    return CertificateOptions(
        raiseMinimumTo=MINIMUM,
        # A trust root makes Twisted require and verify the peer's certificate.
        trustRoot=_trust(tls.client_ca, "listen.tls.client_ca"),
        **own,
    )


def client_options(upstream: UpstreamConfig) -> Any:
    """What we offer the operator: TLS 1.2+, its certificate checked against ``tls_ca`` (or
    the system's trusted CAs) and ``host``, unless ``tls_verify`` is false; and our own
    certificate when ``tls_cert`` and ``tls_key`` are given."""
    own: dict[str, Any] = {}
    if upstream.tls_cert is not None and upstream.tls_key is not None:
        own = _certificate_and_key(
            upstream.tls_cert, upstream.tls_key, "upstream.tls_cert", "upstream.tls_key"
        )
    if not upstream.tls_verify:
        return CertificateOptions(raiseMinimumTo=MINIMUM, **own)
    trust = None if upstream.tls_ca is None else _trust(upstream.tls_ca, "upstream.tls_ca")
    # Our certificate goes in as options rather than as clientCertificate, which would hand
    # pyOpenSSL the X509 objects it deprecates.
    return optionsForClientTLS(
        upstream.host, trustRoot=trust, extraCertificateOptions={"raiseMinimumTo": MINIMUM, **own}
    )


def expires(cert_path: str, key: str) -> float:
    """When the certificate (the first in the file) expires, as Unix time."""
    return _certificates(cert_path, key)[0].not_valid_after_utc.timestamp()


def tls_problem(error: BaseException | None) -> str | None:
    """What went wrong, when ``error`` (a connection's end) is a failed TLS handshake or
    session: OpenSSL's reasons, such as "peer did not return a certificate", or the host name
    the operator's certificate does not match; else None."""
    if isinstance(error, VerificationError):
        return "certificate not for this host: " + ", ".join(
            str(mismatch) for mismatch in error.errors
        )
    if not isinstance(error, SSL.Error):
        return None
    reasons = [
        str(item[-1]) for item in (error.args[0] if error.args else []) if isinstance(item, tuple)
    ]
    return ", ".join(reason for reason in reasons if reason) or str(error) or "TLS error"


def server_endpoint(reactor: Any, host: str, tls: ListenTlsConfig) -> IStreamServerEndpoint:
    """The apps' TLS listening endpoint."""
    return SSL4ServerEndpoint(reactor, tls.port, server_options(tls), interface=host)


def client_endpoint(
    reactor: Any, upstream: UpstreamConfig, options: Any, timeout: float = 10
) -> IStreamClientEndpoint:
    """A TLS connection to the operator (``options`` from `client_options`, built once)."""
    tcp = HostnameEndpoint(reactor, upstream.host, upstream.port, timeout=timeout)
    return wrapClientTLS(options, tcp)


def check_files(config: Config, source: str) -> None:
    """Load every TLS file ``config`` names; a problem is a one-line ConfigError."""
    try:
        if config.listen.tls is not None:
            server_options(config.listen.tls)
        if config.upstream is not None and config.upstream.tls:
            client_options(config.upstream)
    except TlsFileError as error:
        raise ConfigError(f"{source}: {error}") from None
