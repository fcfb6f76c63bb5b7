"""A development certificate authority: `semel cert create-ca` / `semel cert create`.

Everything is made with `cryptography` (no openssl shell-outs): an EC P-256 CA, and leaf
certificates signed by it for brokers (server + client use: a broker is a TLS server to its
clients and a TLS client of its peers) and for users (client use). Every leaf carries SANs:
gRPC checks the dialled host against them (the CN counts only when there is no SAN), so a
broker certificate names 127.0.0.1, localhost and every advertised host.

Files: `<name>.crt` (PEM certificate) and `<name>.key` (PEM PKCS#8 key, mode 0600) in one
directory, `ca.crt` / `ca.key` for the CA. Keep `ca.key` off the brokers; for production use
your own PKI (docs: deploy/README.md, "Security").
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "ca"
CA_COMMON_NAME = "semel-dev-ca"
CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 825          # the longest validity browsers accept; the CA signs anew on rotation
CLOCK_SKEW_MINUTES = 5         # not_valid_before is back-dated by this much
LOOPBACK_SANS = ("127.0.0.1", "localhost")


@dataclasses.dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    key: Path


def ca_files(directory: str | Path) -> CertFiles:
    d = Path(directory)
    return CertFiles(d / f"{CA_NAME}.crt", d / f"{CA_NAME}.key")


def leaf_files(directory: str | Path, name: str) -> CertFiles:
    if not name or "/" in name or name.startswith(".") or name == CA_NAME or "\0" in name:
        raise ValueError(f"bad certificate name {name!r}")
    d = Path(directory)
    return CertFiles(d / f"{name}.crt", d / f"{name}.key")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(directory: str | Path, common_name: str = CA_COMMON_NAME, days: int = CA_VALID_DAYS) -> CertFiles:
    """A self-signed CA in DIRECTORY/ca.crt + ca.key (the directory is created)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=CLOCK_SKEW_MINUTES))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    files = ca_files(d)
    _write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def create_leaf(directory: str | Path, name: str, *, common_name: str | None = None,
                hosts: Sequence[str] = LOOPBACK_SANS, server: bool = True, client: bool = True,
                ca_directory: str | Path | None = None, days: int = LEAF_VALID_DAYS) -> CertFiles:
    """DIRECTORY/NAME.crt + NAME.key signed by the CA in `ca_directory` (default DIRECTORY).

    The CN (default NAME) is the principal an mTLS peer gets (`User:<CN>`); `hosts` become
    SANs (IP addresses or DNS names) that gRPC checks when this certificate serves."""
    ca = ca_files(ca_directory if ca_directory is not None else directory)
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key}: not an EC key made by `semel cert create-ca`")
    out = leaf_files(directory, name)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if not usages:
        raise ValueError("a certificate needs server or client use")
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=CLOCK_SKEW_MINUTES))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(out.key, _key_pem(key))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def common_name(cert_file: str | Path) -> str:
    """The CN of a PEM certificate ("" if it has none)."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()
