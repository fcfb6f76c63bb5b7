"""SCRAM credentials (RFC 5802; SHA-256 and SHA-512 per RFC 7677 / Kafka's KIP-84).

A user's password is never stored: per mechanism the metadata quorum keeps the salt, the
iteration count, StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey =
HMAC(SaltedPassword, "Server Key"), SaltedPassword = PBKDF2-HMAC-H(password, salt, i). That is
what Kafka stores too, so its SASL/SCRAM exchange can later run against the same users. A
password sent over TLS is checked by recomputing StoredKey (`verify_password`).

The password is used as its UTF-8 bytes (no SASLprep normalisation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re

MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
ITERATIONS_MIN = 4096       # Kafka's minimum and default
ITERATIONS_MAX = 16384      # Kafka's maximum
ITERATIONS_DEFAULT = 8192
SALT_BYTES = 24
PASSWORD_BYTES_MAX = 1024
ANONYMOUS = "ANONYMOUS"                    # the principal name of an unauthenticated caller
BROKER_NAME = re.compile(r"broker-[0-9]{1,10}")  # certificate names that identify brokers
USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,128}")


def user_name_problem(name: str) -> str:
    """"" if `name` may be a user's name, else why not. Names that would pose as a broker
    (`broker-N`) or as the anonymous principal are reserved."""
    if not USER_NAME.fullmatch(name):
        return "user names are 1-128 characters of A-Z a-z 0-9 . _ @ -"
    if BROKER_NAME.fullmatch(name) or name == ANONYMOUS:
        return f"user name {name!r} is reserved (broker-N and ANONYMOUS name brokers and unauthenticated callers)"
    return ""


@dataclasses.dataclass(frozen=True, slots=True)
class ScramCredential:
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def check_credential(c: ScramCredential) -> str:
    """"" if `c` is well-formed, else why not (for the quorum to refuse it)."""
    algo = MECHANISMS.get(c.mechanism)
    if algo is None:
        return f"unknown mechanism {c.mechanism!r} (known: {', '.join(MECHANISMS)})"
    if not ITERATIONS_MIN <= c.iterations <= ITERATIONS_MAX:
        return f"iterations must be in [{ITERATIONS_MIN}, {ITERATIONS_MAX}], got {c.iterations}"
    if len(c.salt) < 16:
        return "salt must be at least 16 bytes"
    size = hashlib.new(algo).digest_size
    if len(c.stored_key) != size or len(c.server_key) != size:
        return f"{c.mechanism} keys must be {size} bytes"
    return ""


def _salted(algo: str, password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(algo, password.encode(), salt, iterations)


def make_credential(password: str, mechanism: str = "SCRAM-SHA-256", iterations: int = ITERATIONS_DEFAULT,
                    salt: bytes | None = None) -> ScramCredential:
    algo = MECHANISMS[mechanism]
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    salted = _salted(algo, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", algo).digest()
    return ScramCredential(mechanism, salt, iterations, hashlib.new(algo, client_key).digest(),
                           hmac.new(salted, b"Server Key", algo).digest())


def verify_password(c: ScramCredential, password: str) -> bool:
    """True iff `password` derives `c.stored_key` (constant-time compare)."""
    algo = MECHANISMS.get(c.mechanism)
    if algo is None or len(password.encode()) > PASSWORD_BYTES_MAX:
        return False
    client_key = hmac.new(_salted(algo, password, c.salt, c.iterations), b"Client Key", algo).digest()
    return hmac.compare_digest(hashlib.new(algo, client_key).digest(), c.stored_key)
