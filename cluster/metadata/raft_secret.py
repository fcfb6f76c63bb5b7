"""The metadata Raft port's shared secret: where it comes from and when it is required.

pysyncobj speaks pickle on its Raft port: without a password every frame goes straight into
`pickle.loads`, so anyone who reaches the port runs code on the node (and can read the log as a
`readonly` peer, or vote and append as a member). With pysyncobj's `password` every frame is a
Fernet token (AES-128-CBC + HMAC-SHA256, key = PBKDF2 of the password) whose HMAC is checked
before anything is unpickled; a frame that fails it closes the connection.

Where the secret comes from (never a command-line value: `ps` shows argv to every user):
  * `--raft-secret-file PATH` (JSON `raft_secret_file`): the file's bytes, surrounding
    whitespace stripped. The broker warns when others may read it or the group may write it.
  * else the environment variable `SEMEL_RAFT_SECRET` (the secret itself): for a Kubernetes
    `secretKeyRef` or a compose `environment` entry. Both set is a configuration error.
Every node of a cluster (voters and observers) needs the same secret; a node without it (or
with another) never completes a connection to one that has it.

When it is required: a voter whose Raft address is not loopback refuses to start without a
secret (`require_secret`). Loopback-only clusters may run without one, but `semel cluster up`
and the test harness generate one per cluster anyway (`local_cluster.ensure_raft_secret_file`).

Pure apart from reading the file; no pysyncobj.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from pathlib import Path

SECRET_ENV = "SEMEL_RAFT_SECRET"
MIN_SECRET_BYTES = 16  # pysyncobj stretches it with a fixed salt: a short one is guessable offline


class RaftSecretError(ValueError):
    """The secret is missing where required, unreadable, or too short (one-line message)."""


def is_loopback(raft_address: str) -> bool:
    """`127.x.y.z:P`, `[::1]:P`/`::1:P` or `localhost:P`. Any other name counts as not loopback:
    what it resolves to can change, so it is never trusted to be private."""
    host = raft_address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secret(secret: bytes, source: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise RaftSecretError(f"metadata Raft secret from {source} is {len(secret)} bytes; "
                              f"at least {MIN_SECRET_BYTES} are required")
    return secret


def read_secret_file(path: str | Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RaftSecretError(f"cannot read the metadata Raft secret file {path}: {exc.strerror or exc}") from exc
    return check_secret(data.strip(), str(path))


def file_is_private(path: str | Path) -> bool:
    """Nothing for others, at most read for the group (a Kubernetes Secret volume with
    `defaultMode: 0400` becomes 0440 under the pod's fsGroup). The broker warns, never refuses."""
    return stat.S_IMODE(os.stat(path).st_mode) & 0o037 == 0


def load_secret(secret_file: str, environ: Mapping[str, str]) -> bytes | None:
    """The configured secret, or None when neither source is set."""
    from_env = environ.get(SECRET_ENV)
    if secret_file and from_env is not None:
        raise RaftSecretError(f"both --raft-secret-file and {SECRET_ENV} are set; give the metadata Raft secret once")
    if secret_file:
        return read_secret_file(secret_file)
    if from_env is not None:
        return check_secret(from_env.strip().encode(), f"${SECRET_ENV}")
    return None


def require_secret(raft_address: str | None, is_voter: bool, secret: bytes | None) -> None:
    """A voter listening on a non-loopback address must have a secret."""
    if is_voter and raft_address is not None and secret is None and not is_loopback(raft_address):
        raise RaftSecretError(f"metadata Raft address {raft_address} is not loopback and no secret is configured "
                              f"(--raft-secret-file or {SECRET_ENV}): refusing to start a voter whose Raft "
                              "port would accept pickled frames from anyone")
