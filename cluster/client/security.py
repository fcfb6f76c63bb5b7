"""How the client reaches brokers securely: TLS (a CA file, optionally a client certificate
and key for mTLS) and a user name + password for brokers with `--authentication required`.

    from semel.client import Producer, ClientSecurity
    sec = ClientSecurity(tls_ca="ca.crt", username="alice", password="...")
    Producer("broker-1:9092", security=sec)

Left out (None), every client reads the environment, as the CLI does: SEMEL_TLS_CA,
SEMEL_TLS_CERT, SEMEL_TLS_KEY, SEMEL_USER, SEMEL_PASSWORD (`semel cluster up --secure` writes
them to DATA_DIR/admin.env). A password is sent only over TLS: a password without TLS is a
ConfigError here, and gRPC itself never sends call credentials on a plaintext channel.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from semel import tls
from semel.client.errors import ConfigError

TLS_CA_ENV = "SEMEL_TLS_CA"
TLS_CERT_ENV = "SEMEL_TLS_CERT"
TLS_KEY_ENV = "SEMEL_TLS_KEY"
USER_ENV = "SEMEL_USER"
PASSWORD_ENV = "SEMEL_PASSWORD"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientSecurity:
    tls_ca: str = ""        # PEM CA that signed the brokers' certificates ("" + TLS: the system roots)
    tls_cert: str = ""      # PEM client certificate (mTLS; its CN is the principal)
    tls_key: str = ""
    tls: bool = False       # TLS even without any file (system roots, no client certificate)
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)

    @property
    def tls_on(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_cert or self.tls_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSecurity:
        env = os.environ if environ is None else environ
        return cls(tls_ca=env.get(TLS_CA_ENV, ""), tls_cert=env.get(TLS_CERT_ENV, ""),
                   tls_key=env.get(TLS_KEY_ENV, ""), username=env.get(USER_ENV, ""),
                   password=env.get(PASSWORD_ENV, ""))

    def open_channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        """The client's channel to one broker. The password rides in call metadata added by a
        client interceptor: gRPC's call-credentials plugin runs on one of its own threads and
        cost ~0.45 ms per call here (tests/cluster/measure_tls_cost.py); `channel_credentials`
        already refused a password without TLS."""
        credentials = self.tls_credentials()
        if credentials is None:
            return grpc.insecure_channel(address, options=options)
        channel = grpc.secure_channel(address, credentials, options=options)
        if not self.password:
            return channel
        return grpc.intercept_channel(channel, _CallMetadata(((tls.USER_HEADER, self.username),
                                                              (tls.PASSWORD_HEADER, self.password))))

    def tls_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials without call credentials (None: plaintext); checks like
        `channel_credentials`."""
        self._check()
        if not self.tls_on:
            return None
        try:
            return tls.channel_credentials(tls.TlsFiles(self.tls_ca, self.tls_cert, self.tls_key))
        except (tls.TlsConfigError, OSError) as exc:
            raise ConfigError(str(exc)) from exc

    def _check(self) -> None:
        if bool(self.username) != bool(self.password):
            raise ConfigError(f"give both a user and a password ({USER_ENV} / {PASSWORD_ENV}) or neither")
        if self.password and not self.tls_on:
            raise ConfigError("refusing to send a password without TLS: set a CA file "
                              f"(--tls-ca / {TLS_CA_ENV}) for the brokers' certificates")

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None: plaintext. Raises ConfigError for settings that do not fit together. With a
        password: TLS + call credentials (for a raw channel; gRPC never sends them in plaintext)."""
        self._check()
        if not self.tls_on:
            return None
        metadata = ((tls.USER_HEADER, self.username), (tls.PASSWORD_HEADER, self.password)) if self.password else ()
        try:
            return tls.channel_credentials(tls.TlsFiles(self.tls_ca, self.tls_cert, self.tls_key), metadata)
        except (tls.TlsConfigError, OSError) as exc:
            raise ConfigError(str(exc)) from exc


class _CallMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata (user and password) to every call of a TLS channel."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = pairs

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(details.method, details.timeout, (*(details.metadata or ()), *self._pairs),
                        details.credentials, getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                  "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


def resolve(security: ClientSecurity | None) -> ClientSecurity:
    return ClientSecurity.from_env() if security is None else security
