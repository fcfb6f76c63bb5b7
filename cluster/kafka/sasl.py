"""SASL on the Kafka listener, the server side: PLAIN (RFC 4616) and SCRAM-SHA-256/512
(RFC 5802, RFC 7677, Kafka's KIP-84), against the same users as the gRPC API (the SCRAM
credentials stored in the metadata quorum; `semel.scram`). A pure core: no I/O, no clock.

One `Exchange` per SaslHandshake: `step(client_bytes)` returns the bytes to send back and,
once the client is proven, the `Principal`; a refusal raises `SaslFailure` (the listener
answers SASL_AUTHENTICATION_FAILED and closes the connection, so each connection gets one
try). What the core never does: accept an authzid other than the user (Kafka refuses it too),
SCRAM extensions or channel binding (`n,,` only), a message longer than
`limits.MAX_KAFKA_SASL_MESSAGE_BYTES`, a password or proof compared other than in constant
time. PLAIN hands the password to `Authenticator` (one PBKDF2, off the event loop, cached like
a gRPC password) through `PasswordCheck`; SCRAM needs no PBKDF2 on the server at all.

Unknown users run SCRAM to the end against a fake credential derived from a per-process key
(RFC 5802 section 9 / Kafka do the same), so the answer does not tell which users exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence

from semel import limits, scram
from semel.cluster.broker.principal import AuthFailure, Authenticator, PasswordCheck, Principal

PLAIN = "PLAIN"
SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_512 = "SCRAM-SHA-512"
NONCE_BYTES = 24
_FAKE_KEY = secrets.token_bytes(32)


class SaslFailure(Exception):
    """The client is not authenticated; the message goes back to it (no secrets in it)."""


def mechanisms(tls_on: bool) -> tuple[str, ...]:
    """The mechanisms this listener offers: PLAIN only over TLS (it carries the password)."""
    return (SCRAM_SHA_256, SCRAM_SHA_512, PLAIN) if tls_on else (SCRAM_SHA_256, SCRAM_SHA_512)


class Exchange:
    """One SASL exchange of one connection (after SaslHandshake picked `mechanism`)."""

    def __init__(self, mechanism: str, authenticator: Authenticator,
                 users: Callable[[str], Sequence[scram.ScramCredential]], host: str) -> None:
        self.mechanism = mechanism
        self.authenticator = authenticator
        self.users = users
        self.host = host
        self._scram: _ScramServer | None = None
        self.finished = False

    def step(self, data: bytes) -> tuple[bytes, Principal | PasswordCheck | None]:
        """(bytes for the client, the principal when proven / a password to check / None: more
        round trips). Raises SaslFailure."""
        if self.finished:
            raise SaslFailure("the SASL exchange is already complete")
        if len(data) > limits.MAX_KAFKA_SASL_MESSAGE_BYTES:
            raise SaslFailure(f"SASL message of {len(data)} bytes (at most {limits.MAX_KAFKA_SASL_MESSAGE_BYTES})")
        if self.mechanism == PLAIN:
            self.finished = True
            return b"", self._plain(data)
        if self._scram is None:
            self._scram = _ScramServer(self.mechanism, self.users)
            return self._scram.first(data), None
        self.finished = True
        reply, name = self._scram.final(data)
        return reply, Principal(name, "scram", self.host)

    def _plain(self, data: bytes) -> Principal | PasswordCheck:
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise SaslFailure("PLAIN: expected authzid NUL user NUL password")
        try:
            authzid, name, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError as exc:
            raise SaslFailure("PLAIN: not UTF-8") from exc
        if authzid and authzid != name:
            raise SaslFailure("PLAIN: an authorization id other than the user is not supported")
        if not name or not password:
            raise SaslFailure("PLAIN: empty user or password")
        found = self.authenticator.check_user_password(name, password, self.host)
        if isinstance(found, AuthFailure):
            raise SaslFailure(found.message)
        return found


def check_password(authenticator: Authenticator, check: PasswordCheck) -> Principal:
    """The blocking PBKDF2 part of PLAIN (run it off the loop); raises SaslFailure."""
    found = authenticator.check_password(check)
    if isinstance(found, AuthFailure):
        raise SaslFailure(found.message)
    return found


def _attributes(message: str) -> list[tuple[str, str]]:
    out = []
    for part in message.split(","):
        key, eq, value = part.partition("=")
        if len(key) != 1 or not eq:
            raise SaslFailure("SCRAM: malformed message")
        out.append((key, value))
    return out


def _unescape_name(name: str) -> str:
    # RFC 5802: "," and "=" in a user name travel as =2C and =3D; any other "=" is invalid
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise SaslFailure("SCRAM: malformed user name")
    return name.replace("=2C", ",").replace("=3D", "=")


class _ScramServer:
    def __init__(self, mechanism: str, users: Callable[[str], Sequence[scram.ScramCredential]]) -> None:
        self.mechanism = mechanism
        self.algo = scram.MECHANISMS[mechanism]
        self.users = users
        self.name = ""
        self.credential: scram.ScramCredential | None = None
        self.nonce = ""
        self.client_nonce = ""
        self.first_bare = ""
        self.server_first = ""

    def first(self, data: bytes) -> bytes:
        try:
            message = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SaslFailure("SCRAM: not UTF-8") from exc
        if not message.startswith("n,"):
            raise SaslFailure("SCRAM: channel binding is not supported (gs2 header must be 'n,,')")
        authzid, sep, bare = message[2:].partition(",")
        if not sep:
            raise SaslFailure("SCRAM: malformed client-first message")
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise SaslFailure("SCRAM: client-first must start with n=<user>,r=<nonce>")
        if any(k == "m" for k, _ in attrs):
            raise SaslFailure("SCRAM: mandatory extensions are not supported")
        name = _unescape_name(attrs[0][1])
        if authzid and _unescape_name(authzid.removeprefix("a=")) != name:
            raise SaslFailure("SCRAM: an authorization id other than the user is not supported")
        client_nonce = attrs[1][1]
        if not name or not client_nonce.isprintable() or "," in client_nonce:
            raise SaslFailure("SCRAM: bad user or nonce")
        self.name = name
        self.credential = next((c for c in self.users(name) if c.mechanism == self.mechanism), None)
        salt, iterations = ((self.credential.salt, self.credential.iterations) if self.credential is not None
                            else (hmac.new(_FAKE_KEY, name.encode(), "sha256").digest()[:scram.SALT_BYTES],
                                  scram.ITERATIONS_DEFAULT))
        self.client_nonce = client_nonce
        self.nonce = client_nonce + secrets.token_hex(NONCE_BYTES)  # printable, no "," (RFC 5802)
        self.first_bare = bare
        self.server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        return self.server_first.encode()

    def final(self, data: bytes) -> tuple[bytes, str]:
        try:
            message = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SaslFailure("SCRAM: not UTF-8") from exc
        without_proof, sep, proof_attr = message.rpartition(",p=")
        if not sep:
            raise SaslFailure("SCRAM: client-final has no proof")
        attrs = dict(_attributes(without_proof))
        if attrs.get("c") not in ("biws", "eSws"):  # base64 of "n,," / "y,,"
            raise SaslFailure("SCRAM: channel binding is not supported")
        # RFC 5802: the client echoes the server's nonce. librdkafka before 2.6.1 (kcat in Debian
        # 12 has 2.0.2) sends its own nonce once more in front of it (librdkafka#4895); Kafka 3.x
        # accepts that too. The proof below covers whatever the client sent, so it must still
        # know the password and answer this exchange's nonce.
        echoed = attrs.get("r", "").encode()
        if not (hmac.compare_digest(echoed, self.nonce.encode())
                or hmac.compare_digest(echoed, (self.client_nonce + self.nonce).encode())):
            raise SaslFailure("SCRAM: nonce mismatch")
        try:
            proof = base64.b64decode(proof_attr, validate=True)
        except ValueError as exc:
            raise SaslFailure("SCRAM: proof is not base64") from exc
        c = self.credential
        failed = SaslFailure(f"authentication failed for user {self.name!r}")
        if c is None:
            raise failed
        auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(c.stored_key, auth_message, self.algo).digest()
        if len(proof) != len(signature):
            raise failed
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.new(self.algo, client_key).digest(), c.stored_key):
            raise failed
        server_signature = hmac.new(c.server_key, auth_message, self.algo).digest()
        return f"v={base64.b64encode(server_signature).decode()}".encode(), self.name
