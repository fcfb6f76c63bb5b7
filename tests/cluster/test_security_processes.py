"""Issue 16 items 1-4 against real broker processes: TLS on every listener and between
brokers, password and mTLS authentication, and the broker-only services refused to clients
while the cluster keeps replicating (acks=all over three brokers)."""

from __future__ import annotations

import json
import secrets
import time

import grpc
import pytest
from semel.cli.security_args import bootstrap_users_json
from semel.client import Admin, ClientSecurity, Consumer, Producer
from semel.client.errors import AuthenticationError, AuthorizationError, BrokerUnreachableError
from semel.cluster.tooling import certs
from semel.v1 import (
    broker_pb2,
    controller_pb2,
    controller_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    txn_pb2,
    txn_pb2_grpc,
)

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # broker processes

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)


def make_certs(d, brokers: int) -> None:
    certs.create_ca(d)
    for i in range(1, brokers + 1):
        certs.create_leaf(d, f"broker-{i}")
    certs.create_leaf(d, "alice", hosts=(), server=False)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """Three brokers: TLS only, --authentication required, brokers proven by the Raft secret's
    token, a super user `admin` from a bootstrap users file (SCRAM, no password stored)."""
    root = tmp_path_factory.mktemp("secure")
    d = root / "certs"
    make_certs(d, 3)
    (root / "raft-secret").write_text(secrets.token_urlsafe(32))
    (root / "raft-secret").chmod(0o600)
    (root / "users.json").write_text(json.dumps(bootstrap_users_json("admin", ADMIN_PASSWORD)))
    admin = ClientSecurity(tls_ca=str(d / "ca.crt"), username="admin", password=ADMIN_PASSWORD)
    c = h.Cluster(root, 3, internal_partitions=1, credentials=admin.channel_credentials(),
                  tls_cert=d / "broker-{id}.crt", tls_key=d / "broker-{id}.key", tls_ca=d / "ca.crt",
                  authentication="required", raft_secret_file=root / "raft-secret",
                  bootstrap_users_file=root / "users.json", super_users="User:admin")
    try:
        c.start_all()
        yield c, d, admin
    finally:
        print(c.dump_logs())
        c.close()


def bootstrap(c: h.Cluster) -> str:
    return ",".join(b.address for b in c.brokers.values())


def test_tls_clients_produce_and_consume_through_replicated_partitions(secure):
    c, d, admin = secure
    with Admin(bootstrap(c), security=admin) as a:
        a.create_topic("t", partitions=1, replication_factor=3)
        a.upsert_user("alice", "alice-pw")
    alice = ClientSecurity(tls_ca=str(d / "ca.crt"), username="alice", password="alice-pw")
    with Producer(bootstrap(c), acks="all", security=alice) as p:  # acks=all: both followers fetched over TLS
        for i in range(20):
            p.send("t", f"v{i}".encode(), partition=0)
        p.flush()
    meta = c.partition_meta("t")
    assert sorted(meta.isr) == [1, 2, 3]
    with Consumer(bootstrap(c), auto_offset_reset="earliest", security=alice) as consumer:
        consumer.assign([("t", 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            got += [r.value for r in consumer.poll(timeout_ms=500)]
    assert got == [f"v{i}".encode() for i in range(20)]


def test_a_plaintext_client_to_a_tls_port_fails_cleanly(secure):
    c, _, _ = secure
    started = time.monotonic()
    with pytest.raises(BrokerUnreachableError, match="cannot reach any broker"):
        with Admin(bootstrap(c), security=ClientSecurity(), request_timeout_ms=3000, connect_timeout_ms=2000) as a:
            a.list_topics()
    assert time.monotonic() - started < 20


def test_no_credentials_and_a_wrong_password_are_unauthenticated(secure):
    c, d, _ = secure
    ca = str(d / "ca.crt")
    with pytest.raises(AuthenticationError, match="authentication required"):
        with Admin(bootstrap(c), security=ClientSecurity(tls_ca=ca)) as a:
            a.list_topics()
    with pytest.raises(AuthenticationError, match="authentication failed for user 'admin'"):
        with Admin(bootstrap(c), security=ClientSecurity(tls_ca=ca, username="admin", password="wrong")) as a:
            a.list_topics()
    # health checks stay open for probes
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.secure_channel(c.brokers[1].address, grpc.ssl_channel_credentials(open(ca, "rb").read())) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_the_kubernetes_exec_probe_passes_against_a_tls_broker_with_authentication(secure):
    """deploy/kubernetes/statefulset.yaml's probes, run as written (the port and the CA path
    mapped to this cluster's): TLS to `localhost`, no credentials, exit 0 when SERVING."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    c, d, _ = secure
    manifest = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "statefulset.yaml"
    (container,) = yaml.safe_load(manifest.read_text())["spec"]["template"]["spec"]["containers"]
    port = c.brokers[1].address.rsplit(":", 1)[1]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = container[name]["exec"]["command"]
        assert argv[0] == "python"
        argv = [sys.executable] + [a.replace(":9092", f":{port}").replace("/etc/semel-tls/ca.crt", str(d / "ca.crt"))
                                   for a in argv[1:]]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (name, out.stdout, out.stderr)
        assert out.stdout.strip() == f"localhost:{port}: SERVING"
    # And a probe that does not trust the broker's CA fails (the check is real).
    other = d.parent / "other-ca"
    certs.create_ca(other)
    out = subprocess.run([sys.executable, "-m", "semel.cluster.broker.health_probe", "--address", f"localhost:{port}",
                          "--tls-ca", str(other / "ca.crt"), "--timeout-ms", "3000"], capture_output=True, timeout=120)
    assert out.returncode == 1


def test_user_management_is_for_super_users(secure):
    c, d, admin = secure
    ca = str(d / "ca.crt")
    with Admin(bootstrap(c), security=admin) as a:
        a.upsert_user("bob", "bob-pw")
        assert ("bob", ("SCRAM-SHA-256",)) in a.list_users()
    bob = ClientSecurity(tls_ca=ca, username="bob", password="bob-pw")
    with Admin(bootstrap(c), security=bob) as b:
        b.list_topics()  # authenticated
        with pytest.raises(AuthorizationError, match="super users"):
            b.list_users()
    with Admin(bootstrap(c), security=admin) as a:
        a.delete_user("bob")
        assert "bob" not in [n for n, _ in a.list_users()]
    with pytest.raises(AuthenticationError):
        with Admin(bootstrap(c), security=bob) as b:
            b.list_topics()


def test_a_client_calling_broker_only_services_is_refused_and_replication_goes_on(secure):
    c, d, admin = secure
    with Admin(bootstrap(c), security=admin) as a:
        a.create_topic("internal-calls", partitions=1, replication_factor=3)
    leader = c.leader_of("internal-calls")
    with grpc.secure_channel(c.brokers[leader].address, admin.channel_credentials()) as ch:
        calls = [
            lambda: replication_pb2_grpc.ReplicationStub(ch).OffsetForLeaderEpoch(
                replication_pb2.OffsetForLeaderEpochRequest(), timeout=10),
            lambda: next(iter(replication_pb2_grpc.ReplicationStub(ch).ReplicaFetch(
                iter([replication_pb2.ReplicaFetchRequest(replica_id=2)]), timeout=10))),
            lambda: controller_pb2_grpc.ControllerStub(ch).BrokerHeartbeat(
                controller_pb2.BrokerHeartbeatRequest(broker_id=2, broker_epoch=1), timeout=10),
            lambda: txn_pb2_grpc.TxnMarkersStub(ch).WriteTxnMarkers(txn_pb2.WriteTxnMarkersRequest(), timeout=10),
            lambda: txn_pb2_grpc.TxnMarkersStub(ch).VerifyTransaction(txn_pb2.VerifyTransactionRequest(), timeout=10),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
            assert "is for brokers only; User:admin is not a broker principal" in info.value.details()
    with Producer(bootstrap(c), acks="all", security=admin) as p:
        p.send("internal-calls", b"after", partition=0).result(timeout=30)
    c.wait_for(lambda: sorted(c.partition_meta("internal-calls").isr) == [1, 2, 3], what="full ISR")


def test_a_password_sent_by_hand_to_a_plaintext_port_is_refused(tmp_path):
    """The broker, not only the client, refuses a password on a plaintext listener."""
    c = h.Cluster(tmp_path, 1, internal_partitions=1)
    try:
        c.start_all()
        md = (("x-semel-user", "admin"), ("x-semel-password", "pw"))
        with pytest.raises(grpc.RpcError) as info:
            c.broker_stub(1).Metadata(broker_pb2.MetadataRequest(), metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "plaintext" in info.value.details()
        assert c.broker_stub(1).Metadata(broker_pb2.MetadataRequest(), timeout=10).brokers  # without: served
    finally:
        print(c.dump_logs())
        c.close()


def test_mutual_tls_identities_between_brokers_and_for_clients(tmp_path):
    """--tls-client-auth required, no Raft secret: brokers know each other only by their
    certificates (CN broker-N); a client's principal is its certificate's CN."""
    d = tmp_path / "certs"
    make_certs(d, 2)
    ca = str(d / "ca.crt")
    alice = ClientSecurity(tls_ca=ca, tls_cert=str(d / "alice.crt"), tls_key=str(d / "alice.key"))
    c = h.Cluster(tmp_path, 2, internal_partitions=1, credentials=alice.channel_credentials(),
                  tls_cert=d / "broker-{id}.crt", tls_key=d / "broker-{id}.key", tls_ca=ca,
                  tls_client_auth="required", authentication="required")
    try:
        c.start_all()
        with Admin(bootstrap(c), security=alice) as a:
            a.create_topic("m", partitions=1, replication_factor=2)
        with Producer(bootstrap(c), acks="all", security=alice) as p:  # the follower fetches with mTLS
            p.send("m", b"x", partition=0).result(timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            replication_pb2_grpc.ReplicationStub(c.channel(1)).OffsetForLeaderEpoch(
                replication_pb2.OffsetForLeaderEpochRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "User:alice is not a broker principal" in info.value.details()
        with pytest.raises(BrokerUnreachableError):  # no client certificate: the handshake fails
            with Admin(bootstrap(c), security=ClientSecurity(tls_ca=ca), request_timeout_ms=3000,
                       connect_timeout_ms=2000) as a:
                a.list_topics()
    finally:
        print(c.dump_logs())
        c.close()


def _env_from(path) -> dict[str, str]:
    import shlex

    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = shlex.split(value)[0]
    return out


def test_cluster_up_secure_writes_admin_env_that_the_cli_uses(tmp_path):
    """`semel cluster up --secure`: TLS + authentication; DATA_DIR/admin.env is all the CLI needs,
    and without it the same CLI is refused."""
    import os
    import signal
    import subprocess
    import sys

    from tests.cluster.test_cli_cluster_up import _free_block, _start_cluster_up

    base = _free_block(3)
    proc, lines = _start_cluster_up(tmp_path, 3, base, "--secure")
    try:
        assert any(line.startswith("cluster ready") for line in lines), "".join(lines) + (
            proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else "")
        env_file = tmp_path / "admin.env"
        assert env_file.stat().st_mode & 0o077 == 0
        admin_env = _env_from(env_file)
        assert set(admin_env) == {"SEMEL_BOOTSTRAP", "SEMEL_TLS_CA", "SEMEL_USER", "SEMEL_PASSWORD"}
        assert admin_env["SEMEL_PASSWORD"] not in (tmp_path / "bootstrap-users.json").read_text()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SEMEL_")}

        def semel(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "semel.cli", *args], input=stdin, capture_output=True,
                                  text=True, env={**clean, **env}, timeout=120)

        secure_env = {**admin_env}
        r = semel("topic", "create", "demo", "--partitions", "1", "--replication-factor", "3", env=secure_env)
        assert r.returncode == 0, r.stderr
        r = semel("produce", "demo", env=secure_env, stdin="hello\n")
        assert r.returncode == 0, r.stderr
        r = semel("consume", "demo", "--from-beginning", "--max-messages", "1", env=secure_env)
        assert r.returncode == 0 and "hello" in r.stdout, r.stderr
        r = semel("user", "create", "carol", "--password-stdin", env=secure_env, stdin="carol-pw\n")
        assert r.returncode == 0, r.stderr
        r = semel("user", "list", env=secure_env)
        assert "carol\tSCRAM-SHA-256" in r.stdout, r.stderr
        carol = {**admin_env, "SEMEL_USER": "carol", "SEMEL_PASSWORD": "carol-pw"}
        # --secure turns the authorizer on: carol sees no topic until an ACL lets her DESCRIBE it
        r = semel("topic", "list", env=carol)
        assert r.returncode == 0 and "demo" not in r.stdout, r.stderr
        r = semel("produce", "demo", env=carol, stdin="denied\n")
        assert r.returncode != 0 and "TOPIC_AUTHORIZATION_FAILED" in r.stderr and "User:carol" in r.stderr, r.stderr
        r = semel("acl", "add", "--allow", "User:carol", "--operation", "describe", "--operation", "write",
                  "--topic", "dem", "--prefixed", env=secure_env)
        assert r.returncode == 0 and r.stdout.count("added User:carol") == 2, r.stderr
        r = semel("acl", "list", "--principal", "User:carol", env=secure_env)
        assert "User:carol\tALLOW\tWRITE\tTOPIC\tdem\tprefixed" in r.stdout, r.stdout + r.stderr
        r = semel("produce", "demo", env=carol, stdin="allowed\n")
        assert r.returncode == 0, r.stderr
        r = semel("acl", "add", "--allow", "User:carol", "--operation", "write", "--cluster", env=carol)
        assert r.returncode == 1 and "CLUSTER_AUTHORIZATION_FAILED" in r.stderr, r.stderr
        # flags instead of variables
        pw = tmp_path / "pw"
        pw.write_text("carol-pw\n")
        r = semel("topic", "list", "--bootstrap", admin_env["SEMEL_BOOTSTRAP"], "--tls-ca", admin_env["SEMEL_TLS_CA"],
                  "--user", "carol", "--password-file", str(pw), env={})
        assert r.returncode == 0 and "demo" in r.stdout, r.stderr
        r = semel("acl", "remove", "--principal", "User:carol", "--operation", "write", env=secure_env)
        assert r.returncode == 0 and "removed 1 ACL(s)" in r.stdout, r.stdout + r.stderr
        r = semel("produce", "demo", env=carol, stdin="denied again\n")  # an idempotent producer's id is refused
        assert r.returncode != 0 and "CLUSTER_AUTHORIZATION_FAILED" in r.stderr, r.stderr
        r = semel("user", "delete", "carol", env=secure_env)
        assert r.returncode == 0, r.stderr
        r = semel("topic", "list", env=carol)
        assert r.returncode == 1 and "authentication failed" in r.stderr, r.stderr
        # no credentials: a clear one-line refusal, no traceback
        r = semel("topic", "list", env={"SEMEL_BOOTSTRAP": admin_env["SEMEL_BOOTSTRAP"],
                                        "SEMEL_TLS_CA": admin_env["SEMEL_TLS_CA"]})
        assert r.returncode == 1 and "authentication required" in r.stderr and "Traceback" not in r.stderr
        # a password without TLS is refused by the CLI itself
        r = semel("topic", "list", env={"SEMEL_BOOTSTRAP": admin_env["SEMEL_BOOTSTRAP"], "SEMEL_USER": "admin",
                                        "SEMEL_PASSWORD": admin_env["SEMEL_PASSWORD"]})
        assert r.returncode == 2 and "without TLS" in r.stderr
        # the README's "Running it securely" block as written, then alice works as a group member
        from tests.cluster.test_readme import _block_with

        block = _block_with("sh", "semel user create alice")
        bin_dir = os.path.dirname(sys.executable)
        done = subprocess.run(["bash", "-e", "-c", block], capture_output=True, text=True, timeout=180,
                              env={**clean, **admin_env, "ALICE_PASSWORD": "alice-pw",
                                   "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "User:alice\tALLOW\tREAD\tGROUP\tbilling" in done.stdout, done.stdout
        r = semel("topic", "create", "orders", "--partitions", "1", "--replication-factor", "3", env=secure_env)
        assert r.returncode == 0, r.stderr
        alice = {**admin_env, "SEMEL_USER": "alice", "SEMEL_PASSWORD": "alice-pw"}
        r = semel("produce", "orders", env=alice, stdin="from alice\n")
        assert r.returncode == 0, r.stderr
        r = semel("consume", "orders", "--from-beginning", "--max-messages", "1", "--group", "billing",
                  "--timeout-ms", "30000", env=alice)
        assert r.returncode == 0 and "from alice" in r.stdout, r.stdout + r.stderr
        r = semel("consume", "orders", "--from-beginning", "--max-messages", "1", "--group", "not-hers",
                  "--timeout-ms", "30000", env=alice)
        assert r.returncode == 1 and "GROUP_AUTHORIZATION_FAILED" in r.stderr, r.stdout + r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
