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

import dataclasses
import os
from collections.abc import Mapping

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

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None: plaintext. Raises ConfigError for settings that do not fit together."""
        if bool(self.username) != bool(self.password):
            raise ConfigError(f"give both a user and a password ({USER_ENV} / {PASSWORD_ENV}) or neither")
        if self.password and not self.tls_on:
            raise ConfigError("refusing to send a password without TLS: set a CA file "
                              f"(--tls-ca / {TLS_CA_ENV}) for the brokers' certificates")
        if not self.tls_on:
            return None
        metadata = ((tls.USER_HEADER, self.username), (tls.PASSWORD_HEADER, self.password)) if self.password else ()
        try:
            return tls.channel_credentials(tls.TlsFiles(self.tls_ca, self.tls_cert, self.tls_key), metadata)
        except (tls.TlsConfigError, OSError) as exc:
            raise ConfigError(str(exc)) from exc


def resolve(security: ClientSecurity | None) -> ClientSecurity:
    return ClientSecurity.from_env() if security is None else security
