"""TLS credentials and the call-metadata names of Semel's authentication, shared by the
client, the CLI and the broker (its server port and its channels to other brokers).

gRPC in Python offers two client-certificate modes on a server port: none (no client
certificate is asked for) and required (the handshake fails without one signed by the CA);
grpcio has no "requested but optional" mode, so `--tls-client-auth` takes none|required.

Authentication travels in call metadata, only over TLS (gRPC itself sends call credentials
only on secure channels, and the broker refuses them on a plaintext port):
  x-semel-user / x-semel-password        a user's name and password (checked against the
                                          SCRAM credential stored in the metadata quorum)
  x-semel-broker-id / x-semel-broker-token  a broker proving it is broker N to another broker
                                          (HMAC of the shared broker secret; `broker_token`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

USER_HEADER = "x-semel-user"
PASSWORD_HEADER = "x-semel-password"
BROKER_ID_HEADER = "x-semel-broker-id"
BROKER_TOKEN_HEADER = "x-semel-broker-token"
CLIENT_AUTH_MODES = ("none", "required")
BROKER_TOKEN_CONTEXT = b"semel-broker-token\0"


class TlsConfigError(ValueError):
    """TLS files that do not fit together or cannot be read."""


@dataclasses.dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the CA that signs the peer's certificate, and our own certificate + key."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def check(self, need_cert: bool = False) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise TlsConfigError("TLS: a certificate needs its key and a key its certificate "
                                 f"(cert {self.cert_file!r}, key {self.key_file!r})")
        if need_cert and not self.cert_file:
            raise TlsConfigError("TLS: the server needs --tls-cert and --tls-key")
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path and not Path(path).is_file():
                raise TlsConfigError(f"TLS: cannot read {path}")

    def _read(self, path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None


def channel_credentials(files: TlsFiles, call_metadata: Sequence[tuple[str, str]] = ()) -> grpc.ChannelCredentials:
    """TLS to a broker (CA = `files.ca_file`, else the system roots), with our certificate
    when `files` has one (mTLS), plus `call_metadata` sent on every call (credentials)."""
    files.check()
    creds = grpc.ssl_channel_credentials(files._read(files.ca_file), files._read(files.key_file),
                                         files._read(files.cert_file))
    if not call_metadata:
        return creds
    return grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(_StaticMetadata(call_metadata)))


def server_credentials(files: TlsFiles, client_auth: str) -> grpc.ServerCredentials:
    """A broker port's TLS: its certificate; with client_auth "required", only clients with a
    certificate signed by `files.ca_file` get through the handshake."""
    files.check(need_cert=True)
    if client_auth not in CLIENT_AUTH_MODES:
        raise TlsConfigError(f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, got {client_auth!r}")
    if client_auth == "required" and not files.ca_file:
        raise TlsConfigError("--tls-client-auth required needs --tls-ca (the CA client certificates must chain to)")
    key, cert = files._read(files.key_file), files._read(files.cert_file)
    assert key is not None and cert is not None  # check(need_cert=True)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=files._read(files.ca_file),
                                       require_client_auth=client_auth == "required")


def server_ssl_context(files: TlsFiles, client_auth: str) -> ssl.SSLContext:
    """The same TLS as `server_credentials`, for a port served by Python's `ssl` (the broker's
    Prometheus endpoint): its certificate, TLS 1.2 or later; with client_auth "required" the
    handshake fails without a client certificate signed by `files.ca_file`."""
    files.check(need_cert=True)
    if client_auth not in CLIENT_AUTH_MODES:
        raise TlsConfigError(f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, got {client_auth!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file)
    if client_auth == "required":
        if not files.ca_file:
            raise TlsConfigError("--tls-client-auth required needs --tls-ca (the CA client certificates must chain to)")
        context.load_verify_locations(files.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """The same TLS as `channel_credentials`, for a connection made with Python's `ssl` (the
    internal replication transport): the server's certificate checked against `files.ca_file`
    (else the system roots) and the dialled host, TLS 1.2 or later, our certificate when
    `files` has one (mTLS)."""
    files.check()
    context = ssl.create_default_context(cafile=files.ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert_file:
        context.load_cert_chain(files.cert_file, files.key_file)
    return context


def certificate_name(ssl_object: Any) -> str:
    """The common name of a connection's verified peer certificate ("" without one)."""
    cert: Any = ssl_object.getpeercert() if isinstance(ssl_object, (ssl.SSLObject, ssl.SSLSocket)) else None
    for rdn in (cert or {}).get("subject", ()):  # ((("commonName", "alice"),), ...)
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return ""


def broker_token(secret: bytes, broker_id: int) -> str:
    """What broker `broker_id` sends to prove it knows the cluster's broker secret."""
    return hmac.new(secret, BROKER_TOKEN_CONTEXT + str(broker_id).encode(), hashlib.sha256).hexdigest()


class _StaticMetadata(grpc.AuthMetadataPlugin):
    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = tuple(pairs)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._pairs, None)
