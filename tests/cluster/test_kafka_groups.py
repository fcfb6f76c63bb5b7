"""Kafka consumer groups (the classic protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup)
and the group/cluster admin APIs, with real clients (confluent-kafka = librdkafka,
kafka-python) against real broker processes."""

from __future__ import annotations

import io
import shutil
import socket
import struct
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaException
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import AdminClient, NewTopic
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i16, i32
from semel.cluster.kafka.codec import build

from .harness import Cluster

pytestmark = [pytest.mark.slow]

DEADLINE_S = 180.0
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest",
              "enable.auto.commit": False}


def _create(bootstrap: str, name: str, partitions: int, rf: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, rf)], operation_timeout=30).values():
        future.result(timeout=60)


def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = CKProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    errors: list[object] = []
    for i in range(n):
        producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i,
                         on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0
    assert errors == []


class GroupMember:
    """A subscribed librdkafka consumer that commits synchronously after each batch it returns
    and when its partitions are revoked, so what it returned is committed before anyone else
    can own the partition."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.got: list[bytes] = []
        self.assignments: list[list[int]] = []
        self.commit_errors: list[str] = []
        self.c = CKConsumer({"bootstrap.servers": bootstrap, "group.id": group, **FAST_GROUP})
        self.c.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, _c: object, parts: list) -> None:
        self.assignments.append(sorted(p.partition for p in parts))

    def _revoked(self, _c: object, _parts: list) -> None:
        self._commit()

    def _commit(self) -> None:
        try:
            self.c.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != -168:  # _NO_OFFSET: nothing consumed since the last commit
                self.commit_errors.append(str(exc))

    def poll(self, timeout_s: float = 0.5) -> int:
        batch = [m for m in self.c.consume(num_messages=500, timeout=timeout_s) if m.error() is None]
        self.got += [m.key() for m in batch]
        if batch:
            self._commit()
        return len(batch)

    def close(self) -> None:
        self.c.close()  # LeaveGroup


def _until(condition, members: list[GroupMember], what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for m in members:
            m.poll(0.2)


def test_two_members_share_10000_records_and_the_survivor_takes_over_after_a_leave(kafka_cluster):
    """Produced idempotently; each record is returned exactly once across the group, the
    committed offsets carrying over through both rebalances (join, then leave)."""
    bootstrap = kafka_cluster.kafka_bootstrap
    topic, n = "group-10k", 10_000
    _create(bootstrap, topic, 4, 3)
    _produce(bootstrap, topic, n)
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = GroupMember(bootstrap, group, topic)
    _until(lambda: a.assignments and a.assignments[-1] == [0, 1, 2, 3], [a], "a alone owning every partition")
    b = GroupMember(bootstrap, group, topic)
    # both members own two partitions each after the second join (range assignor)
    _until(lambda: bool(b.assignments and b.assignments[-1] and a.assignments[-1]
                        and len(a.assignments[-1]) == 2), [a, b], "the rebalance after b joined")
    assert sorted(a.assignments[-1] + b.assignments[-1]) == [0, 1, 2, 3]
    _until(lambda: len(a.got) > 0 and len(b.got) > 0 and len(a.got) + len(b.got) >= n // 2, [a, b],
           "both members consuming")
    a.close()
    _until(lambda: len(a.got) + len(b.got) >= n, [b], "b reading the rest")
    for _ in range(6):  # anything more would be a duplicate
        b.poll(0.5)
    b.close()
    keys = a.got + b.got
    assert a.commit_errors == [] and b.commit_errors == []
    assert len(keys) == n and set(keys) == {b"k%d" % i for i in range(n)}
    assert b.assignments[-1] == [0, 1, 2, 3]


def test_a_group_consumer_resumes_from_the_committed_offsets_after_a_restart(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    topic = "group-resume"
    _create(bootstrap, topic, 2, 3)
    _produce(bootstrap, topic, 200)
    group = f"r-{uuid.uuid4().hex[:8]}"
    first = GroupMember(bootstrap, group, topic)
    _until(lambda: len(first.got) >= 50, [first], "the first consumer reading")
    first.close()
    second = GroupMember(bootstrap, group, topic)
    _until(lambda: len(first.got) + len(second.got) >= 200, [second], "the restarted consumer reading the rest")
    for _ in range(4):
        second.poll(0.5)
    second.close()
    assert sorted(first.got + second.got) == sorted(b"k%d" % i for i in range(200))  # nothing read twice


def test_kafka_python_group_consumer_joins_commits_and_resumes(kafka_cluster):
    from kafka import KafkaConsumer

    bootstrap = kafka_cluster.kafka_bootstrap
    topic = "kp-group-topic"
    _create(bootstrap, topic, 2, 1)
    _produce(bootstrap, topic, 100)
    group = f"kp-{uuid.uuid4().hex[:8]}"

    def consumer() -> KafkaConsumer:
        return KafkaConsumer(topic, bootstrap_servers=bootstrap.split(","), group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
                             heartbeat_interval_ms=500, consumer_timeout_ms=1000)

    first = consumer()
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < 40 and time.monotonic() < deadline:
        for records in first.poll(timeout_ms=500, max_records=40 - len(got)).values():
            got += [r.key for r in records]
    first.commit()
    assert first.assignment() and len(first.assignment()) == 2
    first.close()
    second = consumer()
    rest: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) + len(rest) < 100 and time.monotonic() < deadline:
        for records in second.poll(timeout_ms=500).values():
            rest += [r.key for r in records]
    second.close()
    assert sorted(got + rest) == sorted(b"k%d" % i for i in range(100))


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat_consumes_in_a_group(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "kcat-group", 2, 1)
    _produce(bootstrap, "kcat-group", 20)
    out = subprocess.run(["kcat", "-b", bootstrap, "-G", f"kc-{uuid.uuid4().hex[:8]}", "-o", "beginning", "-e",
                          "-f", "%k\n", "-X", "enable.partition.eof=true", "kcat-group"],
                         capture_output=True, text=True, timeout=120)
    assert sorted(out.stdout.split()) == sorted("k%d" % i for i in range(20)), out.stderr


def test_confluent_admin_lists_describes_and_deletes_consumer_groups(kafka_cluster):
    from confluent_kafka import ConsumerGroupState, TopicPartition

    bootstrap = kafka_cluster.kafka_bootstrap
    topic = "admin-groups"
    _create(bootstrap, topic, 2, 3)
    _produce(bootstrap, topic, 20)
    group = f"adm-{uuid.uuid4().hex[:8]}"
    member = GroupMember(bootstrap, group, topic)
    _until(lambda: len(member.got) >= 20, [member], "the member reading everything")
    admin = AdminClient({"bootstrap.servers": bootstrap})

    listed = admin.list_consumer_groups(request_timeout=30).result(timeout=60)
    mine = [g for g in listed.valid if g.group_id == group]
    assert len(mine) == 1 and mine[0].state == ConsumerGroupState.STABLE and not mine[0].is_simple_consumer_group
    (desc,) = [f.result(timeout=60) for f in admin.describe_consumer_groups([group], request_timeout=30).values()]
    assert desc.state == ConsumerGroupState.STABLE and desc.partition_assignor == "range"
    assert len(desc.members) == 1
    assert sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions) == [0, 1]

    with pytest.raises(KafkaException) as refused:  # a group with members is not deleted
        for f in admin.delete_consumer_groups([group], request_timeout=30).values():
            f.result(timeout=60)
    assert refused.value.args[0].code() == 68  # NON_EMPTY_GROUP
    member.close()
    for f in admin.delete_consumer_groups([group], request_timeout=30).values():
        f.result(timeout=60)
    listed = admin.list_consumer_groups(request_timeout=30).result(timeout=60)
    assert group not in {g.group_id for g in listed.valid}
    fresh = CKConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    committed = fresh.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=30)
    fresh.close()
    assert [tp.offset for tp in committed] == [-1001, -1001]  # the committed offsets went with the group


def test_confluent_admin_describes_topic_configs_and_the_cluster(kafka_cluster):
    from confluent_kafka.admin import ConfigResource, ConfigSource, ResourceType

    bootstrap = kafka_cluster.kafka_bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic("cfg-topic", 1, 3, config={"retention.ms": "123456", "min.insync.replicas": "1"})
    for f in admin.create_topics([topic], operation_timeout=30).values():
        f.result(timeout=60)
    (configs,) = [f.result(timeout=60) for f in
                  admin.describe_configs([ConfigResource(ResourceType.TOPIC, "cfg-topic")]).values()]
    assert configs["retention.ms"].value == "123456"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["min.insync.replicas"].value == "1"
    assert configs["cleanup.policy"].value == "delete"
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert {"retention.bytes", "segment.ms", "unclean.leader.election.enable"} <= set(configs)
    with pytest.raises(KafkaException):
        for f in admin.describe_configs([ConfigResource(ResourceType.TOPIC, "no-such-topic")]).values():
            f.result(timeout=60)

    cluster = admin.describe_cluster(request_timeout=30).result(timeout=60)
    ports = sorted(int(a.rsplit(":", 1)[1]) for a in bootstrap.split(","))
    assert sorted(n.port for n in cluster.nodes) == ports
    assert cluster.cluster_id and cluster.controller is not None


# --- the flexible versions, spoken directly (librdkafka and kafka-python negotiate older ones) -----
class Raw:
    """One Kafka connection speaking kio-encoded requests."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.correlation_id = 0

    def call(self, key: int, version: int, values: dict) -> object:
        self.correlation_id += 1
        cls = load_request_schema(key, version)
        out = io.BytesIO()
        header = cls.__header_schema__
        fields = {"request_api_key": i16(key), "request_api_version": i16(version),
                  "correlation_id": i32(self.correlation_id)}
        if "client_id" in header.__dataclass_fields__:
            fields["client_id"] = "raw-test"
        entity_writer(header)(out, header(**fields))
        entity_writer(cls)(out, build(cls, values))
        self.sock.sendall(struct.pack(">i", out.tell()) + out.getvalue())
        size = struct.unpack(">i", self._read(4))[0]
        frame = self._read(size)
        rcls = load_response_schema(key, version)
        _header, used = entity_reader(rcls.__header_schema__)(frame, 0)
        body, _ = entity_reader(rcls)(frame, used)
        return body

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "closed by the broker"
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def test_the_flexible_classic_group_versions_and_offset_for_leader_epoch(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "raw-groups", 1, 3)
    _produce(bootstrap, "raw-groups", 10)
    group = f"raw-{uuid.uuid4().hex[:8]}"
    first = Raw(bootstrap.split(",")[0])
    found = first.call(10, 3, {"key": group, "key_type": 0})
    assert found.error_code == ErrorCode.none
    first.close()
    c = Raw(f"{found.host}:{found.port}")
    join = {"group_id": group, "session_timeout": 10_000, "rebalance_timeout": 10_000, "member_id": "",
            "protocol_type": "consumer", "protocols": [{"name": "range", "metadata": b"meta"}], "reason": None}
    required = c.call(11, 9, join)
    assert required.error_code == ErrorCode.member_id_required and required.member_id
    joined = c.call(11, 9, {**join, "member_id": required.member_id})
    assert joined.error_code == ErrorCode.none and joined.generation_id == 1
    assert joined.leader == required.member_id and joined.protocol_name == "range" and joined.protocol_type == "consumer"
    assert [(m.member_id, m.metadata) for m in joined.members] == [(required.member_id, b"meta")]
    synced = c.call(14, 5, {"group_id": group, "generation_id": 1, "member_id": required.member_id,
                            "protocol_type": "consumer", "protocol_name": "range",
                            "assignments": [{"member_id": required.member_id, "assignment": b"mine"}]})
    assert synced.error_code == ErrorCode.none and synced.assignment == b"mine"
    assert c.call(12, 4, {"group_id": group, "generation_id": 1, "member_id": required.member_id}).error_code == ErrorCode.none
    assert c.call(12, 4, {"group_id": group, "generation_id": 0, "member_id": required.member_id}).error_code \
        == ErrorCode.illegal_generation
    commit = {"group_id": group, "generation_id_or_member_epoch": 0, "member_id": required.member_id,
              "retention_time": -1, "topics": [{"name": "raw-groups", "partitions": [
                  {"partition_index": 0, "committed_offset": 5, "committed_metadata": ""}]}]}
    stale = c.call(8, 8, commit)
    assert stale.topics[0].partitions[0].error_code == ErrorCode.illegal_generation
    ok = c.call(8, 8, {**commit, "generation_id_or_member_epoch": 1})
    assert ok.topics[0].partitions[0].error_code == ErrorCode.none
    simple = c.call(8, 8, {**commit, "generation_id_or_member_epoch": -1, "member_id": ""})
    assert simple.topics[0].partitions[0].error_code == ErrorCode.unknown_member_id  # the group has a member
    left = c.call(13, 5, {"group_id": group, "members": [{"member_id": required.member_id, "reason": "done"}]})
    assert left.error_code == ErrorCode.none and left.members[0].error_code == ErrorCode.none
    assert c.call(12, 4, {"group_id": group, "generation_id": 1, "member_id": required.member_id}).error_code \
        == ErrorCode.unknown_member_id
    c.close()

    md_conn = Raw(bootstrap.split(",")[0])
    md = md_conn.call(3, 12, {"topics": [{"name": "raw-groups", "topic_id": "00000000-0000-0000-0000-000000000000"}],
                              "allow_auto_topic_creation": False, "include_topic_authorized_operations": False})
    md_conn.close()
    part = md.topics[0].partitions[0]
    leader = next(b for b in md.brokers if b.node_id == part.leader_id)
    conn = Raw(f"{leader.host}:{leader.port}")
    asked = {"replica_id": -2, "topics": [{"topic": "raw-groups", "partitions": [
        {"partition": 0, "current_leader_epoch": part.leader_epoch, "leader_epoch": part.leader_epoch}]}]}
    answer = conn.call(23, 4, asked).topics[0].partitions[0]
    assert (answer.error_code, answer.leader_epoch, answer.end_offset) == (ErrorCode.none, part.leader_epoch, 10)
    stale_epoch = dict(asked, topics=[{"topic": "raw-groups", "partitions": [
        {"partition": 0, "current_leader_epoch": part.leader_epoch + 1, "leader_epoch": 0}]}])
    assert conn.call(23, 4, stale_epoch).topics[0].partitions[0].error_code == ErrorCode.unknown_leader_epoch
    conn.close()


def test_classic_members_rejoin_on_the_new_coordinator_after_the_old_one_is_killed(tmp_path):
    """Classic group state is not persisted: when the coordinator dies (SIGKILL), the members
    find the new one, rejoin, and carry on from the committed offsets; every record is read,
    and a record is read twice only if its commit failed while the coordinator was down."""
    n = 2000
    with Cluster(tmp_path, brokers=3, kafka=True) as cluster:
        bootstrap = cluster.kafka_bootstrap
        _create(bootstrap, "fo-group", 2, 3)
        _produce(bootstrap, "fo-group", n)
        group = f"fo-{uuid.uuid4().hex[:8]}"
        raw = Raw(bootstrap.split(",")[0])
        coordinator = raw.call(10, 3, {"key": group, "key_type": 0}).node_id
        raw.close()
        a = GroupMember(bootstrap, group, "fo-group")
        b = GroupMember(bootstrap, group, "fo-group")
        _until(lambda: bool(a.assignments and b.assignments and len(a.assignments[-1]) == 1
                            and len(b.assignments[-1]) == 1), [a, b], "one partition each")
        _until(lambda: len(a.got) + len(b.got) >= n // 4, [a, b], "a quarter read")
        rounds = (len(a.assignments), len(b.assignments))
        cluster.kill(coordinator)
        _until(lambda: len(a.assignments) > rounds[0] and len(b.assignments) > rounds[1]
               and len(a.assignments[-1]) == 1 and len(b.assignments[-1]) == 1, [a, b],
               "both members rejoined on the new coordinator")
        _until(lambda: len(set(a.got + b.got)) >= n, [a, b], "every record read")
        for _ in range(4):
            a.poll(0.5)
            b.poll(0.5)
        a.close()
        b.close()
        keys = a.got + b.got
        assert set(keys) == {b"k%d" % i for i in range(n)}
        duplicates = len(keys) - len(set(keys))
        assert duplicates == 0 or a.commit_errors or b.commit_errors, "read twice although every commit succeeded"


def test_a_kip848_consumer_group_protocol_member_reads_commits_and_is_described(kafka_cluster):
    """librdkafka with group.protocol=consumer: ConsumerGroupHeartbeat onto Semel's server-side
    assignment; two members split the partitions, and ConsumerGroupDescribe shows them."""
    bootstrap = kafka_cluster.kafka_bootstrap
    topic = "kip848"
    _create(bootstrap, topic, 4, 3)
    _produce(bootstrap, topic, 400)
    group = f"k848-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer",
            "auto.offset.reset": "earliest", "enable.auto.commit": False}
    members = [CKConsumer(conf), CKConsumer(conf)]
    for m in members:
        m.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and not (len(got) >= 400 and all(len(m.assignment()) == 2 for m in members)):
        for m in members:
            batch = [x for x in m.consume(num_messages=500, timeout=0.3) if x.error() is None]
            got += [x.key() for x in batch]
            if batch:
                m.commit(asynchronous=False)
    assert sorted(len(m.assignment()) for m in members) == [2, 2]
    assert sorted({tp.partition for m in members for tp in m.assignment()}) == [0, 1, 2, 3]
    assert set(got) == {b"k%d" % i for i in range(400)}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (desc,) = [f.result(timeout=60) for f in admin.describe_consumer_groups([group], request_timeout=30).values()]
    assert len(desc.members) == 2
    assert sorted(tp.partition for mm in desc.members for tp in mm.assignment.topic_partitions) == [0, 1, 2, 3]
    for m in members:
        m.close()
    fresh = CKConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    from confluent_kafka import TopicPartition

    committed = fresh.committed([TopicPartition(topic, p) for p in range(4)], timeout=30)
    fresh.close()
    assert sum(tp.offset for tp in committed) == 400  # every record's offset committed by its member


def test_a_group_is_either_classic_or_kip848(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "either-or", 1, 1)
    group = f"eo-{uuid.uuid4().hex[:8]}"
    first = Raw(bootstrap.split(",")[0])
    found = first.call(10, 3, {"key": group, "key_type": 0})
    first.close()
    c = Raw(f"{found.host}:{found.port}")
    join = {"group_id": group, "session_timeout": 10_000, "rebalance_timeout": 10_000, "member_id": "",
            "protocol_type": "consumer", "protocols": [{"name": "range", "metadata": b""}]}
    member_id = c.call(11, 5, join).member_id
    assert c.call(11, 5, {**join, "member_id": member_id}).error_code == ErrorCode.none
    heartbeat = {"group_id": group, "member_id": uuid.uuid4().hex, "member_epoch": 0, "rebalance_timeout": 10_000,
                 "subscribed_topic_names": ["either-or"], "topic_partitions": []}
    assert c.call(68, 0, heartbeat).error_code == ErrorCode.invalid_request  # the group is classic
    assert c.call(13, 1, {"group_id": group, "member_id": member_id}).error_code == ErrorCode.none
    joined = c.call(68, 0, heartbeat)  # empty now: a KIP-848 member may join
    assert joined.error_code == ErrorCode.none and joined.member_epoch > 0
    assert c.call(11, 5, join).error_code == ErrorCode.inconsistent_group_protocol
    assert c.call(68, 0, {**heartbeat, "member_epoch": -1}).error_code == ErrorCode.none
    c.close()
