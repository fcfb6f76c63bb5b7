"""SASL and TLS on the Kafka listener with real clients (confluent-kafka = librdkafka,
kafka-python, kcat) against a real broker process with --authentication required: SCRAM-SHA-256,
SCRAM-SHA-512 and PLAIN over TLS produce and consume as users of the gRPC API; a wrong password
is refused (an authentication error at the client, no traceback in the broker's log); a client
that has not authenticated cannot produce or fetch."""

from __future__ import annotations

import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka import Producer as CKProducer
from semel.client import Acl, Admin, ClientSecurity
from semel.cluster.tooling import certs
from semel.cluster.tooling.ports import free_ports

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # a broker process

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
ALICE_PASSWORD = "alice-" + secrets.token_hex(8)
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory):
    """One broker: TLS, --authentication required, a Kafka listener; users admin (bootstrap
    file, SCRAM-SHA-256) and alice (SCRAM-SHA-256 and -512, made over gRPC); topic `t`."""
    (kafka_port,) = free_ports(1)
    c, d, admin = h.secure_cluster(tmp_path_factory.mktemp("kafka-secure"), 1, ADMIN_PASSWORD,
                                   kafka_listen=f"127.0.0.1:{kafka_port}")
    certs.create_leaf(d, "carol", hosts=(), server=False)
    try:
        c.start_all()
        with Admin(c.brokers[1].address, security=admin) as a:
            a.create_topic("t", partitions=1, replication_factor=1)
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                a.upsert_user("alice", ALICE_PASSWORD, mechanism=mechanism)
        yield c, d, f"127.0.0.1:{kafka_port}"
    finally:
        print(c.dump_logs())
        c.close()


def conf(d, bootstrap: str, mechanism: str, user: str = "alice", password: str = ALICE_PASSWORD) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password, "ssl.ca.location": str(d / "ca.crt")}


def produce_and_consume(base: dict, n: int) -> list[bytes]:
    tag = uuid.uuid4().hex[:8]
    errors: list[object] = []
    p = CKProducer({**base, "enable.idempotence": True, "acks": "all"})
    for i in range(n):
        p.produce("t", f"{tag}-{i}".encode(), on_delivery=lambda err, _m: err and errors.append(err))
    assert p.flush(DEADLINE_S) == 0 and not errors, errors
    consumer = CKConsumer({**base, "group.id": f"g-{tag}", "enable.auto.commit": False,
                           "enable.partition.eof": False})
    consumer.assign([TopicPartition("t", 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while sum(v.startswith(tag.encode()) for v in got) < n and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=500, timeout=1.0):
                assert m.error() is None, m.error()
                got.append(m.value())
    finally:
        consumer.close()
    return [v for v in got if v.startswith(tag.encode())]


@pytest.mark.parametrize("mechanism,user,password", [
    ("SCRAM-SHA-256", "alice", ALICE_PASSWORD),
    ("SCRAM-SHA-512", "alice", ALICE_PASSWORD),
    ("PLAIN", "alice", ALICE_PASSWORD),
    ("SCRAM-SHA-256", "admin", ADMIN_PASSWORD),  # the bootstrap-file user
])
def test_confluent_kafka_produces_and_consumes_over_sasl_ssl(secure_kafka, mechanism, user, password):
    c, d, bootstrap = secure_kafka
    values = produce_and_consume(conf(d, bootstrap, mechanism, user, password), 50)
    assert sorted(values) == sorted(set(values)) and len(values) == 50
    assert f"authenticated User:{user} (SASL {mechanism})" in c.log_tail(1, 400)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_kafka_python_produces_and_consumes_over_sasl_ssl(secure_kafka, mechanism):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition

    c, d, bootstrap = secure_kafka
    common = dict(bootstrap_servers=bootstrap, security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                  sasl_plain_username="alice", sasl_plain_password=ALICE_PASSWORD, ssl_cafile=str(d / "ca.crt"))
    tag = uuid.uuid4().hex[:8].encode()
    producer = KafkaProducer(acks="all", **common)
    try:
        for i in range(20):
            producer.send("t", tag + b"-%d" % i).get(timeout=DEADLINE_S)
    finally:
        producer.close()
    consumer = KafkaConsumer(enable_auto_commit=False, consumer_timeout_ms=2000, **common)
    consumer.assign([KTopicPartition("t", 0)])
    consumer.seek_to_beginning()
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(got) < 20 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                got += [m.value for m in batch if m.value.startswith(tag)]
    finally:
        consumer.close()
    assert sorted(got) == sorted(tag + b"-%d" % i for i in range(20))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_a_wrong_password_is_an_authentication_error_and_no_traceback(secure_kafka, mechanism):
    c, d, bootstrap = secure_kafka
    errors: list[KafkaError] = []
    p = CKProducer({**conf(d, bootstrap, mechanism, password="not-" + ALICE_PASSWORD),
                    "error_cb": errors.append, "message.timeout.ms": 5000})
    p.produce("t", b"never")
    deadline = time.monotonic() + DEADLINE_S
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) and time.monotonic() < deadline:
        p.poll(0.5)
    p.purge()
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    log = c.log_tail(1, 2000)
    assert "SASL authentication failed" in log and "Traceback" not in log


def test_kafka_python_reports_a_wrong_scram_password(secure_kafka, caplog):
    """kafka-python logs the broker's SASL_AUTHENTICATION_FAILED and its message, then gives up
    bootstrapping (it raises a timeout, not the authentication error itself)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KPError

    c, d, bootstrap = secure_kafka
    with caplog.at_level("DEBUG", logger="kafka"), pytest.raises(KPError):
        KafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_plain_username="alice", sasl_plain_password="wrong", ssl_cafile=str(d / "ca.crt"),
                      max_block_ms=5_000)
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "SaslAuthenticationFailedError" in said and "authentication failed for user 'alice'" in said, said[-2000:]


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "connection closed"
        out += chunk
    return out


def _read_frame(s: socket.socket) -> bytes:
    return _recv_exactly(s, struct.unpack(">i", _recv_exactly(s, 4))[0])


def _frame(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"raw"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(header) + len(body)) + header + body


def test_an_unauthenticated_connection_cannot_produce_or_fetch(secure_kafka):
    """Over TLS but without SASL: ApiVersions is answered, Metadata/Produce/Fetch close the
    connection; confluent-kafka without credentials gets no record through."""
    c, d, bootstrap = secure_kafka
    host, port = bootstrap.split(":")
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    for api_key, version in ((3, 1), (0, 3), (1, 4)):  # Metadata v1, Produce v3, Fetch v4
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(_frame(18, 0, 1, b""))  # ApiVersions v0: served before authentication
            assert struct.unpack_from(">i", _read_frame(s))[0] == 1
            s.sendall(_frame(api_key, version, 2, b"\xff\xff\xff\xff"))
            assert s.recv(4) == b"", f"api {api_key} answered before authentication"  # closed
    assert "before SASL authentication" in c.log_tail(1, 400)
    errors: list[KafkaError] = []
    p = CKProducer({"bootstrap.servers": bootstrap, "security.protocol": "SSL", "ssl.ca.location": str(d / "ca.crt"),
                    "message.timeout.ms": 4000, "error_cb": errors.append})
    outcome: list[object] = []
    p.produce("t", b"anonymous", on_delivery=lambda err, m: outcome.append(err))
    p.flush(DEADLINE_S)
    assert len(outcome) == 1 and outcome[0] is not None  # not delivered
    consumer = CKConsumer({"bootstrap.servers": bootstrap, "security.protocol": "SSL",
                           "ssl.ca.location": str(d / "ca.crt"), "group.id": "anon"})
    consumer.assign([TopicPartition("t", 0, 0)])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            m = consumer.poll(0.5)
            assert m is None or m.error() is not None, "an unauthenticated consumer fetched a record"
    finally:
        consumer.close()


def test_a_client_certificate_is_the_principal_without_sasl(secure_kafka):
    """mTLS: a certificate signed by the cluster CA authenticates as User:<CN> (carol)."""
    c, d, bootstrap = secure_kafka
    base = {"bootstrap.servers": bootstrap, "security.protocol": "SSL", "ssl.ca.location": str(d / "ca.crt"),
            "ssl.certificate.location": str(d / "carol.crt"), "ssl.key.location": str(d / "carol.key")}
    values = produce_and_consume(base, 10)
    assert len(values) == 10


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat_produces_and_consumes_over_sasl_ssl(secure_kafka):
    c, d, bootstrap = secure_kafka
    tag = uuid.uuid4().hex[:8]
    flags = ["-b", bootstrap, "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-256",
             "-X", "sasl.username=alice", "-X", f"sasl.password={ALICE_PASSWORD}",
             "-X", f"ssl.ca.location={d / 'ca.crt'}"]
    subprocess.run(["kcat", *flags, "-P", "-t", "t"], input=f"{tag}-1\n{tag}-2\n", text=True, check=True,
                   timeout=DEADLINE_S)
    out = subprocess.run(["kcat", *flags, "-C", "-t", "t", "-o", "beginning", "-e", "-q"], text=True,
                         capture_output=True, check=True, timeout=DEADLINE_S).stdout
    assert [line for line in out.splitlines() if line.startswith(tag)] == [f"{tag}-1", f"{tag}-2"]




def test_a_refused_exchange_is_answered_with_sasl_authentication_failed_then_closed(secure_kafka):
    """On the wire: SaslHandshake v1, then SaslAuthenticate v0 with a wrong PLAIN password gets
    error 58 and its message, then the connection closes (one try per connection)."""
    c, d, bootstrap = secure_kafka
    host, port = bootstrap.split(":")
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        mechanism = b"PLAIN"
        s.sendall(_frame(17, 1, 1, struct.pack(">h", len(mechanism)) + mechanism))
        answer = _read_frame(s)
        assert struct.unpack_from(">ih", answer) == (1, 0)
        token = b"\0alice\0wrong"
        s.sendall(_frame(36, 0, 2, struct.pack(">i", len(token)) + token))
        answer = _read_frame(s)
        correlation_id, error = struct.unpack_from(">ih", answer)
        assert (correlation_id, error) == (2, 58) and b"authentication failed for user 'alice'" in answer
        assert s.recv(4) == b""


def test_cluster_up_secure_serves_kafka_with_sasl_ssl_and_writes_the_client_settings(tmp_path):
    """`semel cluster up --secure --kafka-base-port K`: the Kafka port speaks TLS + SASL and
    DATA_DIR/kafka-client.properties is all a librdkafka client needs (confluent-kafka, kcat -F)."""
    import signal

    from tests.cluster.test_cli_cluster_up import _free_block, _start_cluster_up

    base = _free_block(1)
    (kafka_port,) = free_ports(1)
    proc, lines = _start_cluster_up(tmp_path, 1, base, "--secure", "--kafka-base-port", str(kafka_port))
    try:
        assert any(line.startswith("cluster ready") for line in lines), "".join(lines)
        props = tmp_path / "kafka-client.properties"
        assert any(str(props) in line for line in lines), "".join(lines)
        assert props.stat().st_mode & 0o077 == 0
        settings = dict(line.split("=", 1) for line in props.read_text().splitlines())
        assert settings["security.protocol"] == "SASL_SSL" and settings["bootstrap.servers"].endswith(str(kafka_port))
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(settings)
        for future in admin.create_topics([NewTopic("t", 1, 1)], operation_timeout=30).values():
            future.result(timeout=DEADLINE_S)
        values = produce_and_consume(settings, 10)
        assert len(values) == 10
        # --secure turns the authorizer on for the Kafka port too: carol, no super user, sees no
        # topic until an ACL lets her
        import shlex

        env = dict(line.removeprefix("export ").split("=", 1) for line in
                   (tmp_path / "admin.env").read_text().splitlines())
        env = {k: shlex.split(v)[0] for k, v in env.items()}
        admin_security = ClientSecurity(tls_ca=env["SEMEL_TLS_CA"], username=env["SEMEL_USER"],
                                        password=env["SEMEL_PASSWORD"])
        with Admin(env["SEMEL_BOOTSTRAP"].split(",")[0], security=admin_security) as a:
            a.upsert_user("carol", "carol-pw")
            carol = {**settings, "sasl.username": "carol", "sasl.password": "carol-pw"}
            carol_admin = AdminClient(carol)
            meta = carol_admin.list_topics(topic="t", timeout=DEADLINE_S)
            assert meta.topics["t"].error is not None
            assert meta.topics["t"].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
            a.create_acls([Acl("User:carol", "*", "DESCRIBE", "ALLOW", "TOPIC", "t", "LITERAL")])
            meta = carol_admin.list_topics(topic="t", timeout=DEADLINE_S)
            assert meta.topics["t"].error is None and len(meta.topics["t"].partitions) == 1
        if shutil.which("kcat"):
            out = subprocess.run(["kcat", "-F", str(props), "-C", "-t", "t", "-o", "beginning", "-e", "-q"],
                                 text=True, capture_output=True, timeout=DEADLINE_S)
            assert out.returncode == 0 and sorted(out.stdout.splitlines()) == sorted(v.decode() for v in values), \
                out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_handshake_v0_bare_tokens_and_an_unknown_mechanism_on_the_wire(secure_kafka):
    """GSSAPI is not offered (UNSUPPORTED_SASL_MECHANISM with the list, the connection stays);
    SaslHandshake v0 then PLAIN as a bare token (no Kafka header) authenticates, after which
    Metadata is answered."""
    c, d, bootstrap = secure_kafka
    host, port = bootstrap.split(":")
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(_frame(17, 1, 1, struct.pack(">h", 6) + b"GSSAPI"))
        answer = _read_frame(s)
        assert struct.unpack_from(">ih", answer) == (1, 33)
        assert b"SCRAM-SHA-256" in answer and b"SCRAM-SHA-512" in answer and b"PLAIN" in answer
        s.sendall(_frame(17, 0, 2, struct.pack(">h", 5) + b"PLAIN"))
        assert struct.unpack_from(">ih", _read_frame(s)) == (2, 0)
        token = b"\0alice\0" + ALICE_PASSWORD.encode()
        s.sendall(struct.pack(">i", len(token)) + token)
        assert _recv_exactly(s, 4) == b"\x00\x00\x00\x00"  # PLAIN's empty server token: success
        s.sendall(_frame(3, 1, 3, b"\xff\xff\xff\xff"))  # Metadata v1, all topics
        answer = _read_frame(s)
        assert struct.unpack_from(">i", answer)[0] == 3 and b"t" in answer
