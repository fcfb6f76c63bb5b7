"""Who is calling: a gRPC call's TLS context and metadata -> a Kafka-style principal.

`Authenticator.identify` is the pure part (no I/O but a bounded cache): it reads, in order,
  1. the broker token (x-semel-broker-id / x-semel-broker-token): an HMAC of the cluster's
     metadata Raft secret, which every node holds; proves "broker N" -> `User:broker-N`;
  2. a user and password (x-semel-user / x-semel-password), refused on a plaintext port,
     checked against the SCRAM credential in the metadata image (`semel.scram`) -> `User:<name>`;
  3. the mTLS peer certificate's common name -> `User:<CN>`;
  4. else `User:ANONYMOUS`.
A password check costs one PBKDF2 (thousands of HMAC rounds): `identify` answers a cache hit
at once and otherwise returns a `PasswordCheck` that the shell runs off the event loop
(`check_password`); successes are remembered in a bounded LRU keyed by the user, the stored
key (a changed or deleted credential misses) and an HMAC of the password under a per-process
random key (the cache never holds a password or a fast unsalted hash of one).

`Principal.mechanism` says how the name was proven: an authorizer (ACLs, a later step) uses
`principal` ("User:alice") and `host`; `is_broker` decides the broker-only services.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from semel import limits, scram, tls

from semel.scram import ANONYMOUS, BROKER_NAME


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    name: str
    mechanism: str  # "broker-token" | "password" | "scram" (Kafka SASL) | "mtls" | "anonymous"
    host: str = ""  # the caller's IP ("" unknown)

    @property
    def principal(self) -> str:
        return f"User:{self.name}"

    @property
    def authenticated(self) -> bool:
        return self.mechanism != "anonymous"


@dataclasses.dataclass(frozen=True, slots=True)
class AuthFailure:
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class PasswordCheck:
    """A password to verify off the loop (`Authenticator.check_password`)."""

    name: str
    password: str
    credentials: tuple[scram.ScramCredential, ...]
    host: str


def peer_host(peer: str) -> str:
    """gRPC's `context.peer()` ("ipv4:10.0.0.1:5555", "ipv6:[::1]:5555") -> the IP."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""


def _first(values: Iterable[bytes] | None) -> str:
    for value in values or ():
        return value.decode("utf-8", "replace")
    return ""


class Authenticator:
    def __init__(self, users: Callable[[str], Sequence[scram.ScramCredential]], broker_key: bytes | None,
                 cache_entries: int = limits.AUTH_CACHE_ENTRIES) -> None:
        self._users = users
        self._broker_key = broker_key
        self._cache: collections.OrderedDict[tuple[str, bytes, bytes], None] = collections.OrderedDict()
        self._cache_entries = cache_entries
        self._cache_key = os.urandom(32)

    def identify(self, auth_context: Mapping[str, Iterable[bytes]], metadata: Sequence[tuple[str, str | bytes]],
                 peer: str) -> Principal | AuthFailure | PasswordCheck:
        host = peer_host(peer)
        secure = _first(auth_context.get("transport_security_type")) == "ssl"
        headers: dict[str, str] = {}
        for key, value in metadata:
            if key in (tls.USER_HEADER, tls.PASSWORD_HEADER, tls.BROKER_ID_HEADER, tls.BROKER_TOKEN_HEADER):
                headers[key] = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if tls.BROKER_TOKEN_HEADER in headers or tls.BROKER_ID_HEADER in headers:
            return self._broker(headers, secure, host)
        if tls.PASSWORD_HEADER in headers or tls.USER_HEADER in headers:
            return self._password(headers, secure, host)
        cn = _first(auth_context.get("x509_common_name"))
        if secure and cn:
            return Principal(cn, "mtls", host)
        return Principal(ANONYMOUS, "anonymous", host)

    def _broker(self, headers: dict[str, str], secure: bool, host: str) -> Principal | AuthFailure:
        if not secure:
            return AuthFailure("broker credentials are accepted only over TLS")
        broker_id, token = headers.get(tls.BROKER_ID_HEADER, ""), headers.get(tls.BROKER_TOKEN_HEADER, "")
        if self._broker_key is None or not broker_id.isdigit() or len(broker_id) > 10 or not hmac.compare_digest(
                token.encode(), tls.broker_token(self._broker_key, int(broker_id)).encode()):
            return AuthFailure("broker credentials refused (not derived from this cluster's secret)")
        return Principal(f"broker-{int(broker_id)}", "broker-token", host)

    def _password(self, headers: dict[str, str], secure: bool, host: str) -> Principal | AuthFailure | PasswordCheck:
        if not secure:
            return AuthFailure("password credentials are refused on a plaintext connection: connect with TLS")
        name, password = headers.get(tls.USER_HEADER, ""), headers.get(tls.PASSWORD_HEADER, "")
        if not name or not password:
            return AuthFailure(f"send both {tls.USER_HEADER} and {tls.PASSWORD_HEADER}")
        credentials = tuple(self._users(name))
        if not credentials:
            return AuthFailure(f"authentication failed for user {name!r}")
        if any(self._cache_hit(name, c, password) for c in credentials):
            return Principal(name, "password", host)
        return PasswordCheck(name, password, credentials, host)

    def check_user_password(self, name: str, password: str, host: str) -> Principal | AuthFailure | PasswordCheck:
        """A name and password proven by a TLS connection's own means (SASL PLAIN on the Kafka
        listener): as `identify` with the password headers over TLS."""
        return self._password({tls.USER_HEADER: name, tls.PASSWORD_HEADER: password}, True, host)

    def check_password(self, check: PasswordCheck) -> Principal | AuthFailure:
        """The PBKDF2 part (blocking: run it off the event loop). Thread-safe enough: the
        cache is an OrderedDict touched by single operations only."""
        for c in check.credentials:
            if scram.verify_password(c, check.password):
                self._remember(check.name, c, check.password)
                return Principal(check.name, "password", check.host)
        return AuthFailure(f"authentication failed for user {check.name!r}")

    def _key(self, name: str, c: scram.ScramCredential, password: str) -> tuple[str, bytes, bytes]:
        return name, c.stored_key, hmac.new(self._cache_key, password.encode(), hashlib.sha256).digest()

    def _cache_hit(self, name: str, c: scram.ScramCredential, password: str) -> bool:
        key = self._key(name, c, password)
        if key in self._cache:
            try:
                self._cache.move_to_end(key)
            except KeyError:  # evicted meanwhile by another thread
                pass
            return True
        return False

    def _remember(self, name: str, c: scram.ScramCredential, password: str) -> None:
        self._cache[self._key(name, c, password)] = None
        while len(self._cache) > self._cache_entries:
            try:
                self._cache.popitem(last=False)
            except KeyError:
                break

    @property
    def cached(self) -> int:
        return len(self._cache)


def is_broker(p: Principal, broker_principals: frozenset[str]) -> bool:
    """May `p` call the broker-only services (Replication, Controller, TxnMarkers)? A broker
    proven by the cluster secret; an mTLS certificate named `broker-N` (user names of that
    form are reserved, so a password cannot claim one); or a principal the operator listed."""
    if p.mechanism == "broker-token":
        return True
    if p.mechanism == "mtls" and BROKER_NAME.fullmatch(p.name):
        return True
    return p.authenticated and p.principal in broker_principals
