"""ACLs on the Kafka-protocol listener with real Kafka clients (confluent-kafka = librdkafka,
kafka-python) against a real broker process with TLS, SASL users and --authorizer on: `bob`,
without ACLs, is refused produce, consume, group, transaction and admin operations with the
error Kafka would give (TOPIC_/GROUP_/CLUSTER_/TRANSACTIONAL_ID_AUTHORIZATION_FAILED) surfaced
by the client; after `semel acl add` (or Admin.create_acls) the same client succeeds. Metadata
hides the topics bob may not DESCRIBE; a transactional producer needs WRITE on its id."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from semel.client import Acl, Admin
from semel.cluster.tooling.ports import free_ports

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # a broker process

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
BOB_PASSWORD = "bob-" + secrets.token_hex(8)
BOB = "User:bob"
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def kafka_acl(tmp_path_factory):
    """One broker: TLS, --authentication required, --authorizer on, a Kafka listener; the super
    user admin (bootstrap file) and bob (no ACLs)."""
    (kafka_port,) = free_ports(1)
    c, d, admin = h.secure_cluster(tmp_path_factory.mktemp("kafka-acl"), 1, ADMIN_PASSWORD, authorizer="on",
                                   kafka_listen=f"127.0.0.1:{kafka_port}")
    try:
        c.start_all()
        with Admin(c.brokers[1].address, security=admin) as a:
            a.upsert_user("bob", BOB_PASSWORD)
        yield c, d, admin, f"127.0.0.1:{kafka_port}"
    finally:
        print(c.dump_logs())
        c.close()


def conf(d, bootstrap: str, user: str = "bob", password: str = BOB_PASSWORD) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": user, "sasl.password": password, "ssl.ca.location": str(d / "ca.crt")}


@pytest.fixture
def bob(kafka_acl):
    """(admin Admin, grant(...), bob's librdkafka settings, admin's, a fresh topic name); bob's
    ACLs are dropped before and after."""
    c, d, admin, bootstrap = kafka_acl
    topic = f"bob-{uuid.uuid4().hex[:8]}"
    with Admin(c.brokers[1].address, security=admin) as a:
        a.delete_acls([Acl(principal=BOB)])
        a.create_topic(topic, partitions=1, replication_factor=1)

        def grant(*checks: tuple[str, str, str], pattern: str = "LITERAL") -> None:
            a.create_acls([Acl(BOB, "*", op, "ALLOW", rtype, name, pattern) for rtype, name, op in checks])

        try:
            yield a, grant, conf(d, bootstrap), conf(d, bootstrap, "admin", ADMIN_PASSWORD), topic, \
                c.brokers[1].address
        finally:
            a.delete_acls([Acl(principal=BOB)])


def _deliveries(settings: dict, topic: str, n: int, **extra) -> tuple[list[KafkaError], list[KafkaError]]:
    """(delivery errors, client errors) of producing n records."""
    delivery: list[KafkaError] = []
    client: list[KafkaError] = []
    p = CKProducer({**settings, "acks": "all", "message.timeout.ms": 20000, "error_cb": client.append, **extra})
    for i in range(n):
        p.produce(topic, b"v%d" % i, on_delivery=lambda err, _m: err and delivery.append(err))
    p.flush(DEADLINE_S)
    return delivery, client


def _consume(settings: dict, n: int, *, assign: list[TopicPartition] | None = None, subscribe: str = "",
             group: str = "", deadline_s: float = DEADLINE_S,
             until: int | None = None) -> tuple[list[bytes], list[KafkaError]]:
    """(values, errors) until n values, an error of code `until` or the deadline."""
    consumer = CKConsumer({**settings, "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
                           "auto.offset.reset": "earliest", "enable.partition.eof": False,
                           "enable.auto.commit": False})
    if assign is not None:
        consumer.assign(assign)
    else:
        consumer.subscribe([subscribe])
    values: list[bytes] = []
    errors: list[KafkaError] = []
    deadline = time.monotonic() + deadline_s
    try:
        while len(values) < n and time.monotonic() < deadline and not any(e.code() == until for e in errors):
            for m in consumer.consume(num_messages=100, timeout=0.5):
                if m.error() is not None:
                    errors.append(m.error())
                else:
                    values.append(m.value())
        if values and not errors and assign is None:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return values, errors


def test_produce_needs_write_and_idempotence_needs_write_somewhere(bob):
    a, grant, settings, admin_settings, topic, _grpc = bob
    # no ACL: an idempotent producer's InitProducerId is refused (IDEMPOTENT_WRITE or WRITE on any topic)
    delivery, client = _deliveries(settings, topic, 1, **{"enable.idempotence": True})
    codes = {e.code() for e in delivery + client}
    assert KafkaError.CLUSTER_AUTHORIZATION_FAILED in codes or KafkaError.TOPIC_AUTHORIZATION_FAILED in codes, \
        [str(e) for e in delivery + client]
    # DESCRIBE only: Metadata answers, Produce itself is refused per partition
    grant(("TOPIC", topic, "DESCRIBE"))
    delivery, _ = _deliveries(settings, topic, 3, **{"enable.idempotence": False})
    assert len(delivery) == 3 and {e.code() for e in delivery} == {KafkaError.TOPIC_AUTHORIZATION_FAILED}, \
        [str(e) for e in delivery]
    grant(("TOPIC", topic, "WRITE"))  # enough for an idempotent producer too (KIP-679)
    delivery, client = _deliveries(settings, topic, 20, **{"enable.idempotence": True})
    assert not delivery and not [e for e in client if e.fatal()], [str(e) for e in delivery + client]


def test_consume_needs_read_on_the_topic_and_the_group(bob):
    a, grant, settings, admin_settings, topic, grpc_address = bob
    delivery, _ = _deliveries(admin_settings, topic, 10)
    assert not delivery
    grant(("TOPIC", topic, "DESCRIBE"))
    values, errors = _consume(settings, 10, assign=[TopicPartition(topic, 0, 0)],
                              until=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    assert not values and KafkaError.TOPIC_AUTHORIZATION_FAILED in {e.code() for e in errors}, \
        [str(e) for e in errors]
    grant(("TOPIC", topic, "READ"))
    # an assign()ing consumer needs no group ACL to read (librdkafka still reports its group's
    # FindCoordinator refusal, GROUP_AUTHORIZATION_FAILED, as Kafka would make it)
    values, errors = _consume(settings, 10, assign=[TopicPartition(topic, 0, 0)])
    assert len(values) == 10 and {e.code() for e in errors} <= {KafkaError.GROUP_AUTHORIZATION_FAILED}, \
        [str(e) for e in errors]
    group = f"g-{topic}"
    values, errors = _consume(settings, 10, subscribe=topic, group=group, until=KafkaError.GROUP_AUTHORIZATION_FAILED)
    assert not values and KafkaError.GROUP_AUTHORIZATION_FAILED in {e.code() for e in errors}, \
        [str(e) for e in errors]
    # the grant through the CLI, as an operator would
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMEL_")}
    env.update(SEMEL_BOOTSTRAP=grpc_address, SEMEL_USER="admin", SEMEL_PASSWORD=ADMIN_PASSWORD,
               SEMEL_TLS_CA=settings["ssl.ca.location"])
    r = subprocess.run([sys.executable, "-m", "semel.cli", "acl", "add", "--allow", BOB, "--operation", "read",
                        "--group", group], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    values, errors = _consume(settings, 10, subscribe=topic, group=group)
    assert len(values) == 10 and not errors, [str(e) for e in errors]
    # the commit went through: the group's committed offset is 10
    consumer = CKConsumer({**settings, "group.id": group})
    try:
        (committed,) = consumer.committed([TopicPartition(topic, 0)], timeout=DEADLINE_S)
    finally:
        consumer.close()
    assert committed.offset == 10


def test_metadata_hides_topics_bob_may_not_describe(bob):
    a, grant, settings, admin_settings, topic, _grpc = bob
    client = AdminClient(settings)
    listed = client.list_topics(timeout=DEADLINE_S)
    assert topic not in listed.topics and "__consumer_offsets" not in listed.topics
    named = client.list_topics(topic=topic, timeout=DEADLINE_S)
    assert named.topics[topic].error is not None
    assert named.topics[topic].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    grant(("TOPIC", topic[:4], "DESCRIBE"), pattern="PREFIXED")
    listed = client.list_topics(timeout=DEADLINE_S)
    assert topic in listed.topics and all(name.startswith(topic[:4]) for name in listed.topics), list(listed.topics)
    # kafka-python reports the refusal of a named topic too
    from kafka import KafkaProducer
    from kafka.errors import TopicAuthorizationFailedError

    producer = KafkaProducer(bootstrap_servers=settings["bootstrap.servers"], security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="bob",
                             sasl_plain_password=BOB_PASSWORD, ssl_cafile=settings["ssl.ca.location"],
                             max_block_ms=20000)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("secret-topic", b"x").get(timeout=DEADLINE_S)
    finally:
        producer.close()


def test_a_transactional_producer_needs_write_on_its_transactional_id(bob):
    a, grant, settings, admin_settings, topic, _grpc = bob
    tid = f"tx-{topic}"
    grant(("TOPIC", topic, "WRITE"))
    p = CKProducer({**settings, "transactional.id": tid, "acks": "all"})
    with pytest.raises(KafkaException) as refused:
        p.init_transactions(DEADLINE_S)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, refused.value
    grant(("TRANSACTIONAL_ID", tid, "WRITE"))
    p = CKProducer({**settings, "transactional.id": tid, "acks": "all"})
    p.init_transactions(DEADLINE_S)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, b"committed-%d" % i)
    p.commit_transaction(DEADLINE_S)
    values, errors = _consume({**admin_settings, "isolation.level": "read_committed"}, 5,
                              assign=[TopicPartition(topic, 0, 0)], until=-1)
    assert sorted(values) == [b"committed-%d" % i for i in range(5)] and not errors


def test_admin_operations_need_their_acls(bob):
    a, grant, settings, admin_settings, topic, _grpc = bob
    client = AdminClient(settings)
    new = f"{topic}-new"

    def error_of(future) -> int:
        try:
            future.result(timeout=DEADLINE_S)
        except KafkaException as exc:
            return exc.args[0].code()
        return KafkaError.NO_ERROR

    (created,) = client.create_topics([NewTopic(new, 1, 1)], operation_timeout=30).values()
    assert error_of(created) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    (deleted,) = client.delete_topics([topic], operation_timeout=30).values()
    assert error_of(deleted) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    (described,) = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    assert error_of(described) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    group = f"g-{topic}"  # a group bob may not DESCRIBE: listed to admin, left out for bob
    committer = CKConsumer({**admin_settings, "group.id": group, "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        committer.close()

    def groups_listed(settings_: dict) -> set[str]:
        lister = AdminClient(settings_)  # kept alive until the answer (a collected client cancels it)
        result = lister.list_consumer_groups().result(timeout=DEADLINE_S)
        assert not result.errors, result.errors  # filtered, never refused
        return {g.group_id for g in result.valid}

    assert group in groups_listed(admin_settings) and group not in groups_listed(settings)
    (gone,) = client.delete_consumer_groups([group]).values()
    assert error_of(gone) == KafkaError.GROUP_AUTHORIZATION_FAILED
    grant(("GROUP", group, "DESCRIBE"))
    assert group in groups_listed(settings)
    grant(("TOPIC", new, "CREATE"), ("TOPIC", topic, "DELETE"), ("TOPIC", topic, "DESCRIBE_CONFIGS"))
    (created,) = client.create_topics([NewTopic(new, 1, 1)], operation_timeout=30).values()
    assert error_of(created) == KafkaError.NO_ERROR
    (described,) = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    assert error_of(described) == KafkaError.NO_ERROR
    (deleted,) = client.delete_topics([topic], operation_timeout=30).values()
    assert error_of(deleted) == KafkaError.NO_ERROR
    a.delete_topic(new)


def test_a_kip848_consumer_needs_read_on_its_group(bob):
    """ConsumerGroupHeartbeat (librdkafka group.protocol=consumer): with DESCRIBE on the group
    FindCoordinator answers, the heartbeat itself needs READ."""
    a, grant, settings, admin_settings, topic, _grpc = bob
    delivery, _ = _deliveries(admin_settings, topic, 5)
    assert not delivery
    group = f"g848-{topic}"
    grant(("TOPIC", topic, "READ"), ("GROUP", group, "DESCRIBE"))
    kip848 = {**settings, "group.protocol": "consumer"}
    values, errors = _consume(kip848, 5, subscribe=topic, group=group, until=KafkaError._FATAL)
    # librdkafka makes it the consumer's fatal error, naming the broker's code
    assert not values and any(e.code() == KafkaError._FATAL and "Group authorization failed" in e.str()
                              for e in errors), [str(e) for e in errors]
    grant(("GROUP", group, "READ"))
    values, errors = _consume(kip848, 5, subscribe=topic, group=group)
    assert len(values) == 5, [str(e) for e in errors]
