"""Certificates made at test time (nothing committed that expires): a CA and a server
certificate it signs for 127.0.0.1 and localhost (and one for another host name), a client
certificate it signs and one another CA signs (for mutual TLS), written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@attrs.frozen
class Certs:
    """Paths of the PEM files."""

    ca: str  # the CA certificate that signed `cert`
    cert: str  # the server certificate (127.0.0.1, localhost)
    key: str  # its private key
    other_ca: str  # a CA that signed nothing here
    wrong_name_cert: str  # signed by `ca` for smsc.example.net only: a valid chain, wrong host
    wrong_name_key: str
    client_cert: str  # a client certificate (CN app1) signed by `ca`
    client_key: str
    stranger_cert: str  # a client certificate signed by `other_ca`
    stranger_key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _server(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    names: list[x509.GeneralName],
    cert_path: str,
    key_path: str,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
) -> None:
    """Write a server (or client) certificate, followed by its CA's, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pathlib.Path(cert_path).write_bytes(_pem(cert) + _pem(ca_cert))
    pathlib.Path(key_path).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_certs(directory: pathlib.Path) -> Certs:
    """Write a CA, server certificates and keys, and an unrelated CA into ``directory``."""
    ca_key, ca_cert = _ca("smpprelay test CA")
    other_key, other_cert = _ca("some other CA")
    paths = Certs(
        ca=str(directory / "ca.pem"),
        cert=str(directory / "server.crt"),
        key=str(directory / "server.key"),
        other_ca=str(directory / "other-ca.pem"),
        wrong_name_cert=str(directory / "wrong-name.crt"),
        wrong_name_key=str(directory / "wrong-name.key"),
        client_cert=str(directory / "client.crt"),
        client_key=str(directory / "client.key"),
        stranger_cert=str(directory / "stranger.crt"),
        stranger_key=str(directory / "stranger.key"),
    )
    pathlib.Path(paths.ca).write_bytes(_pem(ca_cert))
    pathlib.Path(paths.other_ca).write_bytes(_pem(other_cert))
    loopback = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    _server(ca_key, ca_cert, "127.0.0.1", loopback, paths.cert, paths.key)
    elsewhere: list[x509.GeneralName] = [x509.DNSName("smsc.example.net")]
    _server(
        ca_key, ca_cert, "smsc.example.net", elsewhere, paths.wrong_name_cert, paths.wrong_name_key
    )
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    app: list[x509.GeneralName] = [x509.DNSName("app1.example.net")]
    _server(ca_key, ca_cert, "app1", app, paths.client_cert, paths.client_key, client)
    _server(other_key, other_cert, "app1", app, paths.stranger_cert, paths.stranger_key, client)
    return paths
