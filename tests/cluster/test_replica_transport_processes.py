"""The internal replication transport (`--replication-transport tcp`,
cluster/broker/replica_transport.py) between real broker processes: the replication tests of
test_broker_processes.py run on it (acks=all, failover, divergence, ISR shrink and expand),
with TLS and authentication a client is refused, and a hostile peer's frames (oversize,
truncated, garbage) cost it only its own connection."""

from __future__ import annotations

import asyncio
import re
import socket
import struct

import pytest

from semel import frames
from semel.cluster.broker.replica_transport import ReplicaTransportDialer, ReplicaTransportRefused
from semel.v1 import common_pb2, replication_pb2 as rpb

from tests.cluster import broker_harness as h
from tests.cluster import test_broker_processes as tbp

pytestmark = pytest.mark.slow

TCP = dict(tbp.FLAGS, replication_transport="tcp")
START_S = 180.0  # generous: three brokers starting on a shared, busy CI machine
LISTENING = re.compile(r"replication transport listening on [^:]+:(\d+)")


@pytest.fixture
def tcp_cluster(tmp_path):
    c = h.Cluster(tmp_path, 3, **TCP)
    try:
        c.start_all(timeout_s=START_S)
        yield c
    finally:
        print(c.dump_logs())
        c.close()


def replication_port(c: h.Cluster, broker_id: int) -> int:
    found = c.wait_for(lambda: LISTENING.search(c.log_tail(broker_id, 400)), what=f"broker {broker_id}'s transport")
    return int(found.group(1))


def full_isr(c: h.Cluster, topic: str) -> int:
    """The leader of `topic`-0 once its ISR is full (a loaded machine can fence a broker for a
    moment at start: acks=all would then be refused, which is not what these tests are about)."""
    def ready() -> int | None:
        leader = c.leader_of(topic)
        return leader if len(c.partition_meta(topic, via=leader).isr) == 3 else None
    return c.wait_for(ready, timeout_s=120, what=f"{topic}-0 with a full ISR")


def fetching_over_transport(c: h.Cluster, follower: int, leader: int) -> bool:
    return f"replica fetch from broker {leader} over the replication transport" in c.log_tail(follower, 400)


def test_acked_writes_survive_leader_kill_on_the_transport(tcp_cluster):
    c = tcp_cluster
    tbp.ok(c.create_topic("warm", partitions=1, rf=3))
    leader = c.leader_of("warm")
    tbp.produce_values(c, "warm", [b"x"])
    for follower in (i for i in c.brokers if i != leader):
        c.wait_for(lambda f=follower: fetching_over_transport(c, f, leader), what=f"broker {follower} on the transport")
    tbp.test_acked_writes_survive_leader_kill_and_replicas_converge(c, False)


def test_divergent_follower_truncates_on_the_transport(tcp_cluster):
    tbp.test_divergent_follower_truncates_after_leader_change(tcp_cluster)


def test_lagging_follower_leaves_isr_and_rejoins_on_the_transport(tmp_path, monkeypatch):
    monkeypatch.setattr(tbp, "FLAGS", TCP)
    tbp.test_lagging_follower_leaves_isr_and_rejoins(tmp_path)


# --- security: TLS and the broker-only rule, as on the gRPC port ------------------------------


def refused(address: str, dialer: ReplicaTransportDialer) -> str:
    async def attempt() -> str:
        try:
            stream = await dialer.open(address)
        except (ReplicaTransportRefused, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        stream.cancel()
        return ""
    return asyncio.run(attempt())


def test_tls_and_authentication_only_brokers_may_replicate(tmp_path):
    import ssl

    from semel import tls
    from semel.cluster.tooling import certs

    c, d, admin = h.secure_cluster(tmp_path, 3, "admin-secret", replication_transport="tcp")
    try:
        c.start_all(timeout_s=START_S)
        tbp.ok(c.create_topic("sec", partitions=1, rf=3))
        leader = full_isr(c, "sec")
        acked = tbp.produce_values(c, "sec", [b"a", b"b", b"c"])
        for follower in (i for i in c.brokers if i != leader):
            c.wait_for(lambda f=follower: fetching_over_transport(c, f, leader), what=f"broker {follower} on the transport")
        tbp.wait_converged(c, "sec", list(c.brokers))
        assert h.read_all(c.broker_stub(leader), "sec") == acked
        assert "(TLS)" in c.log_tail(leader, 400)
        address = f"127.0.0.1:{replication_port(c, leader)}"
        ca = tls.TlsFiles(ca_file=str(d / "ca.crt"))
        client_tls = tls.client_ssl_context(ca)
        # A client with the CA but no credentials, a user with a valid password (a super user,
        # not a broker), a user certificate, and a broker token made with another secret.
        anonymous = refused(address, ReplicaTransportDialer(client_tls, []))
        assert "CLUSTER_AUTHORIZATION_FAILED" in anonymous and "authentication required" in anonymous
        user = [(tls.USER_HEADER, "admin"), (tls.PASSWORD_HEADER, "admin-secret")]
        assert "brokers only" in refused(address, ReplicaTransportDialer(client_tls, user))
        certs.create_leaf(d, "alice", server=False)
        alice = tls.client_ssl_context(tls.TlsFiles(str(d / "ca.crt"), str(d / "alice.crt"), str(d / "alice.key")))
        # This port asks for no client certificate (--tls-client-auth none, as its gRPC port):
        # a user's certificate proves nothing here, so alice is anonymous, and refused.
        assert "authentication required" in refused(address, ReplicaTransportDialer(alice, []))
        forged = [(tls.BROKER_ID_HEADER, "2"), (tls.BROKER_TOKEN_HEADER, tls.broker_token(b"not the secret", 2))]
        assert "broker credentials refused" in refused(address, ReplicaTransportDialer(client_tls, forged))
        # Plaintext to the TLS port: no welcome, whatever it sends.
        assert refused(address, ReplicaTransportDialer(None, forged))
        # A certificate from another CA does not pass the handshake.
        certs.create_ca(tmp_path / "other")
        certs.create_leaf(tmp_path / "other", "broker-2")
        wrong_ca = ssl.create_default_context()
        wrong_ca.check_hostname, wrong_ca.verify_mode = False, ssl.CERT_NONE
        assert refused(address, ReplicaTransportDialer(wrong_ca, forged))
        # The brokers' own replication carried on through all that.
        more = tbp.produce_values(c, "sec", [b"d"])
        tbp.wait_converged(c, "sec", list(c.brokers))
        assert h.read_all(c.broker_stub(leader), "sec") == acked + more
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


# --- a hostile peer ----------------------------------------------------------------------------


def send_raw(port: int, data: bytes, close_write: bool = True) -> bytes:
    """What the broker answers to `data` before it closes the connection (b"": nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def after_welcome(port: int, data: bytes, close_write: bool = True) -> bytes:
    """As `send_raw`, but `data` goes after a hello and its welcome (security is off)."""
    welcome = frames.encode(rpb.ReplicaTransportWelcome(error_code=common_pb2.NONE).SerializeToString())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(frames.encode(rpb.ReplicaTransportHello().SerializeToString()))
        got = b""
        while len(got) < len(welcome) and (chunk := s.recv(len(welcome) - len(got))):
            got += chunk
        assert got == welcome
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_oversize_truncated_and_garbage_frames_cost_only_their_connection(tcp_cluster):
    c = tcp_cluster
    tbp.ok(c.create_topic("hostile", partitions=1, rf=3))
    leader = full_isr(c, "hostile")
    acked = tbp.produce_values(c, "hostile", [b"before"])
    port = replication_port(c, leader)
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)  # never says hello
    try:
        # A length over the bound: closed before anything is read or allocated.
        assert send_raw(port, struct.pack(">I", 0xFFFF_FFFF), close_write=False) == b""
        assert after_welcome(port, struct.pack(">I", 1 << 30), close_write=False) == b""
        # Truncated: a header alone, a body cut short.
        assert send_raw(port, b"\x00\x00") == b""
        assert send_raw(port, struct.pack(">I", 100) + b"x" * 10) == b""
        assert after_welcome(port, struct.pack(">I", 100) + b"x" * 10) == b""
        # Garbage: not a hello, and after the welcome not a fetch request.
        garbage = frames.encode(b"\x07" * 16)
        assert send_raw(port, garbage, close_write=False) == b""
        assert after_welcome(port, garbage, close_write=False) == b""
        # The broker still replicates and answers while all that happens.
        more = tbp.produce_values(c, "hostile", [b"after"])
        tbp.wait_converged(c, "hostile", list(c.brokers))
        assert h.read_all(c.broker_stub(leader), "hostile") == acked + more
        assert c.brokers[leader].alive
        log = c.log_tail(leader, 400)
        assert "over the bound" in log and "ended inside a frame" in log and "not the expected message" in log
        # The silent connection is closed once the hello is overdue (REPLICATION_HELLO_TIMEOUT_MS).
        silent.settimeout(60)
        assert silent.recv(1) == b""
    finally:
        silent.close()


def test_replicates_on_uvloop_brokers(tmp_path):
    """uvloop's transports are not asyncio.Transport subclasses: the transport must not care."""
    pytest.importorskip("uvloop")
    c = h.Cluster(tmp_path, 3, event_loop="uvloop", **TCP)
    try:
        c.start_all(timeout_s=START_S)
        tbp.ok(c.create_topic("uv", partitions=1, rf=3))
        leader = full_isr(c, "uv")
        acked = tbp.produce_values(c, "uv", [b"a", b"b"])
        for follower in (i for i in c.brokers if i != leader):
            c.wait_for(lambda f=follower: fetching_over_transport(c, f, leader), what=f"broker {follower} on the transport")
            assert "event loop: uvloop.Loop" in c.log_tail(follower, 400)
        tbp.wait_converged(c, "uv", list(c.brokers))
        assert h.read_all(c.broker_stub(leader), "uv") == acked
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()
