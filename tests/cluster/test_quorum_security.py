"""The metadata Raft port is bound to its own address and, with a secret, refuses anyone without it.

Before: pysyncobj bound 0.0.0.0 whatever `--raft` named, and unpickled every frame it was sent
(issue 16: a crafted first frame ran code on a broker). The controls below show the attack on
a voter without a secret, so the tests that show it failing against a voter with one can fail.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from semel.cluster.metadata import raft_secret
from semel.cluster.metadata.quorum import MetadataQuorum, QuorumConfig, VoterSpec
from semel.cluster.metadata.state import RegisterBroker
from semel.cluster.tooling.local_cluster import ensure_raft_secret_file
from tests.cluster.test_quorum_inprocess import free_port, until

SECRET = b"correct horse battery staple, 32b"
WRONG = b"incorrect horse battery staple!!"


def voters_on(host: str, count: int) -> tuple[VoterSpec, ...]:
    return tuple(VoterSpec(i, f"{host}:{free_port()}", f"{host}:{free_port()}") for i in range(1, count + 1))


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def bound_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4 sockets in LISTEN state on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if int(port_hex, 16) == port and state == "0A":  # 0A: TCP_LISTEN
            found.add(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


@pytest.fixture
def quorums():
    started: list[MetadataQuorum] = []

    def start(config: QuorumConfig) -> MetadataQuorum:
        node = MetadataQuorum(config)
        started.append(node)
        return node

    yield start
    for node in started:
        node.close(wait=True)


def test_a_voter_listens_on_its_raft_address_only(tmp_path: Path, quorums) -> None:
    (voter,) = voters_on("127.0.0.1", 1)
    port = int(voter.raft_address.rsplit(":", 1)[1])
    quorums(QuorumConfig(1, voter.raft_address, (voter,), tmp_path / "n1", raft_secret=SECRET))

    async def scenario() -> None:
        await until(lambda: listening("127.0.0.1", port))

    asyncio.run(scenario())
    assert bound_addresses(port) == {"127.0.0.1"}  # pysyncobj's default would be 0.0.0.0
    assert not listening("127.0.0.2", port)  # another loopback address of this host: refused


@pytest.mark.parametrize("third_secret, joins", [(SECRET, True), (WRONG, False), (None, False)],
                         ids=["same-secret", "wrong-secret", "no-secret"])
def test_only_a_voter_with_the_secret_joins_the_quorum(tmp_path: Path, quorums, third_secret, joins) -> None:
    voters = voters_on("127.0.0.1", 3)
    nodes = [quorums(QuorumConfig(v.node_id, v.raft_address, voters, tmp_path / f"n{v.node_id}",
                                  raft_secret=SECRET if v.node_id < 3 else third_secret)) for v in voters]
    observer = quorums(QuorumConfig(4, None, voters, tmp_path / "observer", raft_secret=third_secret))
    third = nodes[2]

    async def scenario() -> None:
        # With the same secret the third voter may win the election too; without, it cannot.
        candidates = nodes if joins else nodes[:2]
        await until(lambda: any(n.is_leader() for n in candidates))
        leader = next(n for n in candidates if n.is_leader())
        # Two of three voters share the secret: they form a quorum and commit, whatever the third does.
        for i in range(20):
            assert (await leader.submit(RegisterBroker(i, f"incarnation-{i}", "h", 9000 + i))).ok
        if joins:
            await until(lambda: all(n.image() == leader.image() for n in [*nodes, observer]))
            assert all(n.is_peer_connected(v.raft_address) for n in nodes for v in voters)
        else:
            # No event says "never": watch for 2 s, in which pysyncobj redials every
            # connection_retry_s (0.1 s); with the same secret the third node joins in ~0.2 s.
            await asyncio.sleep(2.0)
            assert not leader.is_peer_connected(voters[2].raft_address)
            if third_secret is not None:
                assert not third.is_peer_connected(leader.config.raft_address)
            # Without a secret pysyncobj marks its outgoing plain connection connected on TCP
            # connect, before the leader drops it at the first frame it cannot decrypt, so the
            # third's own view flickers; what it can never get is data (checked next).
            assert third.image().version == 0 and observer.image().version == 0
            assert not third.is_leader()
            assert leader.is_leader() and (await leader.submit(RegisterBroker(100, "after", "h", 9100))).ok

    asyncio.run(scenario())


class _TouchOnUnpickle:
    """A pickle that creates `path` when loaded: what a hostile first frame can do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def pickle_frame(payload: object) -> bytes:
    """pysyncobj's wire frame without a password: native int32 length + zlib(pickle)."""
    data = zlib.compress(pickle.dumps(payload))
    return struct.pack("i", len(data)) + data


def send_and_wait_close(address: str, frame: bytes) -> bytes:
    """Send `frame` and read until the node closes the connection (or 5 s pass)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5.0) as s:
        s.sendall(frame)
        received = b""
        try:
            while chunk := s.recv(4096):
                received += chunk
        except TimeoutError:
            pytest.fail("the Raft node kept a connection open after an unauthenticated frame")
        return received


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no-secret-control", "secret"])
def test_a_pickled_frame_runs_only_on_a_voter_without_the_secret(tmp_path: Path, quorums, secret) -> None:
    (voter,) = voters_on("127.0.0.1", 1)
    node = quorums(QuorumConfig(1, voter.raft_address, (voter,), tmp_path / "n1", raft_secret=secret))
    marker = tmp_path / "pwned"

    async def scenario() -> None:
        await until(node.is_leader)
        frame = pickle_frame(_TouchOnUnpickle(marker))
        if secret is None:
            host, port = voter.raft_address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5.0) as s:
                s.sendall(frame)
                await until(marker.exists)  # the control: the frame ran code on the voter
        else:
            answer = await asyncio.to_thread(send_and_wait_close, voter.raft_address, frame)
            assert answer == b""  # closed without a word: the frame failed Fernet's HMAC
            assert not marker.exists()
        # The node is still up and committing.
        assert (await node.submit(RegisterBroker(1, "still-here", "h", 9001))).ok

    asyncio.run(scenario())


def test_a_frame_encrypted_with_another_secret_is_refused(tmp_path: Path, quorums) -> None:
    """The same attack from someone who knows the protocol but not the secret."""
    from pysyncobj.encryptor import getEncryptor

    (voter,) = voters_on("127.0.0.1", 1)
    node = quorums(QuorumConfig(1, voter.raft_address, (voter,), tmp_path / "n1", raft_secret=SECRET))
    marker = tmp_path / "pwned"

    async def scenario() -> None:
        await until(node.is_leader)
        token = getEncryptor(WRONG).encrypt(zlib.compress(pickle.dumps(_TouchOnUnpickle(marker))))
        frame = struct.pack("i", len(token)) + token
        assert await asyncio.to_thread(send_and_wait_close, voter.raft_address, frame) == b""
        assert not marker.exists()
        assert (await node.submit(RegisterBroker(1, "still-here", "h", 9001))).ok

    asyncio.run(scenario())


# --- configuration: where the secret comes from, and when it is required -----------------------

def test_loopback_addresses() -> None:
    for address in ("127.0.0.1:19092", "127.8.9.10:1", "localhost:5", "[::1]:19092", "::1:19092"):
        assert raft_secret.is_loopback(address), address
    for address in ("0.0.0.0:19092", "10.0.0.1:19092", "semel-1.semel.svc:19092", "[::]:1", "localhost.evil:1"):
        assert not raft_secret.is_loopback(address), address


def test_secret_sources(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"  " + SECRET + b"\n")
    assert raft_secret.load_secret(str(path), {}) == SECRET
    assert raft_secret.load_secret("", {raft_secret.SECRET_ENV: SECRET.decode()}) == SECRET
    assert raft_secret.load_secret("", {}) is None
    with pytest.raises(raft_secret.RaftSecretError, match="both"):
        raft_secret.load_secret(str(path), {raft_secret.SECRET_ENV: SECRET.decode()})
    with pytest.raises(raft_secret.RaftSecretError, match="at least 16"):
        raft_secret.load_secret("", {raft_secret.SECRET_ENV: "short"})
    with pytest.raises(raft_secret.RaftSecretError, match="cannot read"):
        raft_secret.load_secret(str(tmp_path / "missing"), {})


def test_only_a_non_loopback_voter_requires_a_secret() -> None:
    raft_secret.require_secret("127.0.0.1:1", True, None)
    raft_secret.require_secret("10.0.0.1:1", False, None)  # an observer binds nothing
    raft_secret.require_secret("10.0.0.1:1", True, SECRET)
    with pytest.raises(raft_secret.RaftSecretError, match="not loopback"):
        raft_secret.require_secret("10.0.0.1:1", True, None)


def test_the_local_cluster_secret_is_private_random_and_kept(tmp_path: Path) -> None:
    path = ensure_raft_secret_file(tmp_path / "cluster")
    assert path.stat().st_mode & 0o777 == 0o600
    first = raft_secret.read_secret_file(path)
    assert ensure_raft_secret_file(tmp_path / "cluster") == path and raft_secret.read_secret_file(path) == first
    assert raft_secret.read_secret_file(ensure_raft_secret_file(tmp_path / "other")) != first
    assert raft_secret.file_is_private(path)


def broker_exit(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semel.cluster.broker", *argv], capture_output=True, text=True,
                          timeout=60, env=env)


def test_a_broker_refuses_a_non_loopback_voter_without_a_secret(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: a broker that went past the check would
    # fail later, at binding, with another message.
    raft = f"192.0.2.1:{free_port()}"
    argv = ["--broker-id", "1", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "b1"),
            "--raft", raft, "--voters", f"1@{raft}@127.0.0.1:1"]
    env = {k: v for k, v in os.environ.items() if k != raft_secret.SECRET_ENV}
    refused = broker_exit(argv, env)
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "is not loopback and no secret is configured" in errors[0], refused.stderr
    assert "Traceback" not in refused.stderr
    secret_file = ensure_raft_secret_file(tmp_path)
    past_the_check = broker_exit([*argv, "--raft-secret-file", str(secret_file)], env)
    assert past_the_check.returncode == 2
    assert "no secret" not in past_the_check.stderr and "192.0.2.1" in past_the_check.stderr
