"""Real Kafka clients (confluent-kafka = librdkafka, kafka-python) against the brokers' Kafka
listeners (semel.cluster.kafka), and bad input on that port. Real broker processes."""

from __future__ import annotations

import io
import socket
import struct
import time
import uuid

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.record.memory_records import MemoryRecordsBuilder
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i16, i32
from semel.client import Producer as SemelProducer


pytestmark = [pytest.mark.slow]

DEADLINE_S = 120.0


def _create(bootstrap: str, name: str, partitions: int, rf: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, rf)], operation_timeout=30).values():
        future.result(timeout=60)


def _consume_all(bootstrap: str, topic: str, partitions: int, expected: int, **conf: object) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of every record, read with assign() from offset 0."""
    consumer = CKConsumer({"bootstrap.servers": bootstrap, "group.id": f"unused-{uuid.uuid4().hex}",
                           "enable.auto.commit": False, **conf})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: list[tuple[int, int, bytes, bytes]] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=1.0):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                got.append((m.partition(), m.offset(), m.key(), m.value()))
        # anything beyond `expected` would be a duplicate: poll once more for it
        for m in consumer.consume(num_messages=1000, timeout=1.0):
            if m.error() is None:
                got.append((m.partition(), m.offset(), m.key(), m.value()))
    finally:
        consumer.close()
    return got


def test_confluent_kafka_idempotent_produce_of_10000_records_is_read_exactly_once(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "ck-idem", 3, 3)
    producer = CKProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                           "linger.ms": 5})
    errors: list[object] = []
    n = 10_000
    for i in range(n):
        producer.produce("ck-idem", key=b"k%d" % i, value=b"v%d" % i,
                         on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0
    assert errors == []
    got = _consume_all(bootstrap, "ck-idem", 3, n)
    assert sorted(k for _, _, k, _ in got) == sorted(b"k%d" % i for i in range(n))  # each once
    assert all(v == b"v" + k[1:] for _, _, k, v in got)
    per_partition: dict[int, list[int]] = {}
    for p, offset, _, _ in got:
        per_partition.setdefault(p, []).append(offset)
    assert sorted(per_partition) == [0, 1, 2]
    for offsets in per_partition.values():
        assert offsets == list(range(len(offsets)))  # dense, in order: nothing appended twice


def test_kafka_python_round_trip_with_gzip(kafka_cluster):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KPTopicPartition

    bootstrap = kafka_cluster.kafka_bootstrap.split(",")
    _create(kafka_cluster.kafka_bootstrap, "kp-trip", 2, 3)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip",
                             enable_idempotence=True)
    futures = [producer.send("kp-trip", key=b"k%d" % i, value=b"value-%d" % i * 10, partition=i % 2,
                             headers=[("h", b"%d" % i)]) for i in range(500)]
    producer.flush(60)
    metas = [f.get(timeout=60) for f in futures]
    producer.close()
    assert sorted((m.partition, m.offset) for m in metas) == sorted((p, o) for p in (0, 1) for o in range(250))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([KPTopicPartition("kp-trip", 0), KPTopicPartition("kp-trip", 1)])
    consumer.seek_to_beginning()
    got = {}
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < 500 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            for r in records:
                assert (r.key, r.partition) not in got
                got[(r.key, r.partition)] = (r.value, r.headers)
    consumer.close()
    assert len(got) == 500
    assert got[(b"k7", 1)] == (b"value-7" * 10, [("h", b"7")])


def test_records_produced_over_grpc_are_read_by_a_kafka_client(kafka_cluster):
    """Magic-1 batches (the gRPC path) reach Kafka readers converted (docs/storage.md)."""
    kafka_cluster.create_topic("grpc-to-kafka", partitions=1, replication_factor=3)
    with SemelProducer(kafka_cluster.bootstrap) as producer:
        for i in range(50):
            producer.send("grpc-to-kafka", b"g%d" % i, key=b"k%d" % i, partition=0, headers=[("x", b"y")])
        producer.flush(timeout_s=30)
    got = _consume_all(kafka_cluster.kafka_bootstrap, "grpc-to-kafka", 1, 50)
    assert [(o, k, v) for _, o, k, v in got] == [(i, b"k%d" % i, b"g%d" % i) for i in range(50)]


# --- bad input on the port ---------------------------------------------------------------------


def _connect(kafka_cluster) -> socket.socket:
    host, port = kafka_cluster.kafka_address(1).rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _request(key: int, version: int, body: object, correlation_id: int = 1) -> bytes:
    cls = load_request_schema(key, version)
    out = io.BytesIO()
    header = cls.__header_schema__
    values = {"request_api_key": i16(key), "request_api_version": i16(version), "correlation_id": i32(correlation_id)}
    if "client_id" in header.__dataclass_fields__:
        values["client_id"] = "bad-input-test"
    entity_writer(header)(out, header(**values))
    entity_writer(cls)(out, body)
    return struct.pack(">i", out.tell()) + out.getvalue()


def _read_response(sock: socket.socket, key: int, version: int) -> object:
    size = struct.unpack(">i", _read_exactly(sock, 4))[0]
    frame = _read_exactly(sock, size)
    cls = load_response_schema(key, version)
    header, used = entity_reader(cls.__header_schema__)(frame, 0)
    body, _ = entity_reader(cls)(frame, used)
    return body


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _closed_by_broker(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _api_versions_ok(kafka_cluster) -> bool:
    from kio.schema.api_versions.v3.request import ApiVersionsRequest

    with _connect(kafka_cluster) as sock:
        sock.sendall(_request(18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1")))
        return _read_response(sock, 18, 3).error_code == ErrorCode.none  # type: ignore[attr-defined]


@pytest.mark.parametrize("frame", [
    pytest.param(b"\x00\x00\x00\x10" + b"\xff" * 16, id="garbage"),
    pytest.param(struct.pack(">i", 2**31 - 1) + b"\x00" * 8, id="2-GiB-size"),
    pytest.param(struct.pack(">i", -5), id="negative-size"),
    pytest.param(struct.pack(">ihhi", 8, 999, 0, 1), id="unknown-api-key"),
    pytest.param(struct.pack(">ihhi", 8, 3, 99, 1), id="metadata-v99"),
    pytest.param(struct.pack(">ihhi", 8, 0, 2, 1), id="produce-v2"),
    pytest.param(struct.pack(">ihhih", 10, 3, 12, 1, 40) + b"x", id="truncated-header"),
])
def test_bad_frames_close_the_connection_and_the_broker_stays_up(kafka_cluster, frame):
    with _connect(kafka_cluster) as sock:
        sock.sendall(frame)
        assert _closed_by_broker(sock)
    assert _api_versions_ok(kafka_cluster)


def test_api_versions_beyond_the_served_range_gets_the_v0_error_answer(kafka_cluster):
    with _connect(kafka_cluster) as sock:
        sock.sendall(struct.pack(">ihhih", 10, 18, 99, 42, -1))  # v99, null client id
        answer = _read_response(sock, 18, 0)
    assert answer.error_code == ErrorCode.unsupported_version  # type: ignore[attr-defined]
    assert [(k.api_key, k.min_version, k.max_version) for k in answer.api_keys] == [(18, 0, 4)]  # type: ignore[attr-defined]


def _produce_raw(kafka_cluster, topic: str, batch: bytes) -> object:
    """One Produce v9 (acks=all) of `batch` to partition 0, sent to its leader; its partition answer."""
    from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

    request = ProduceRequest(transactional_id=None, acks=i16(-1), timeout=__import__("datetime").timedelta(seconds=10),
                             topic_data=(TopicProduceData(name=topic, partition_data=(
                                 PartitionProduceData(index=i32(0), records=batch),)),))
    host, port = kafka_cluster.kafka_address(kafka_cluster.leader_of(topic, 0)).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request(0, 9, request))
        answer = _read_response(sock, 0, 9)
    (partition,) = answer.responses[0].partition_responses  # type: ignore[attr-defined]
    return partition


def test_a_producer_id_never_allocated_is_refused(kafka_cluster):
    _create(kafka_cluster.kafka_bootstrap, "forged-pid", 1, 1)
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 16, producer_id=10**12,
                                   producer_epoch=0, base_sequence=0)
    builder.append(timestamp=int(time.time() * 1000), key=b"k", value=b"v", headers=[])
    builder.close()
    answer = _produce_raw(kafka_cluster, "forged-pid", bytes(builder.buffer()))
    assert answer.error_code == ErrorCode.invalid_producer_id_mapping  # type: ignore[attr-defined]


def test_a_batch_with_a_bad_crc_gets_corrupt_message_and_nothing_is_written(kafka_cluster):
    from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

    _create(kafka_cluster.kafka_bootstrap, "bad-crc", 1, 1)
    leader = kafka_cluster.leader_of("bad-crc", 0)
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 16)
    builder.append(timestamp=int(time.time() * 1000), key=b"k", value=b"v", headers=[])
    builder.close()
    batch = bytearray(builder.buffer())
    batch[-1] ^= 0xFF
    request = ProduceRequest(transactional_id=None, acks=i16(-1), timeout=__import__("datetime").timedelta(seconds=10),
                             topic_data=(TopicProduceData(name="bad-crc", partition_data=(
                                 PartitionProduceData(index=i32(0), records=bytes(batch)),)),))
    host, port = kafka_cluster.kafka_address(leader).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request(0, 9, request))
        answer = _read_response(sock, 0, 9)
    (partition,) = answer.responses[0].partition_responses  # type: ignore[attr-defined]
    assert partition.error_code == ErrorCode.corrupt_message
    consumer = CKConsumer({"bootstrap.servers": kafka_cluster.kafka_bootstrap, "group.id": "watermarks"})
    try:
        assert consumer.get_watermark_offsets(TopicPartition("bad-crc", 0), timeout=30) == (0, 0)  # ListOffsets
    finally:
        consumer.close()
    assert _api_versions_ok(kafka_cluster)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_records_produced_by_a_kafka_client_are_read_over_grpc_with_each_codec(kafka_cluster, codec):
    """Magic-2 batches, compressed as librdkafka sent them, reach gRPC readers decoded."""
    topic = f"kafka-to-grpc-{codec}"
    _create(kafka_cluster.kafka_bootstrap, topic, 1, 3)
    producer = CKProducer({"bootstrap.servers": kafka_cluster.kafka_bootstrap, "enable.idempotence": True,
                           "compression.type": codec, "linger.ms": 20})
    for i in range(300):
        producer.produce(topic, key=b"k%d" % i if i % 2 else None, value=b"record %d " % i * 8, partition=0,
                         headers=[("n", b"%d" % i)])
    assert producer.flush(DEADLINE_S) == 0
    records = kafka_cluster.read_all(topic)
    assert [r.offset for r in records] == list(range(300))
    assert [r.value for r in records] == [b"record %d " % i * 8 for i in range(300)]
    assert [r.key for r in records] == [b"k%d" % i if i % 2 else None for i in range(300)]
    assert records[5].headers == (("n", b"5"),)
    assert _first_batch_codec(kafka_cluster, topic) == ["none", "gzip", "snappy", "lz4", "zstd"].index(codec)
    # the Kafka reader gets the stored batches as they were sent, compression included
    got = _consume_all(kafka_cluster.kafka_bootstrap, topic, 1, 300)
    assert [v for _, _, _, v in got] == [b"record %d " % i * 8 for i in range(300)]


def _first_batch_codec(kafka_cluster, topic: str) -> int:
    """The codec bits of the first batch a raw Fetch v12 returns from the leader (as stored)."""
    from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic

    leader = kafka_cluster.leader_of(topic, 0)
    host, port = kafka_cluster.kafka_address(leader).rsplit(":", 1)
    request = FetchRequest(cluster_id=None, replica_id=-1, max_wait=__import__("datetime").timedelta(0), min_bytes=i32(0),
                           max_bytes=i32(1 << 20), isolation_level=0, session_id=i32(0), session_epoch=i32(-1),
                           topics=(FetchTopic(topic=topic, partitions=(FetchPartition(
                               partition=i32(0), current_leader_epoch=i32(-1), fetch_offset=0, last_fetched_epoch=i32(-1),
                               log_start_offset=-1, partition_max_bytes=i32(1 << 20)),)),),
                           forgotten_topics_data=(), rack_id="")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request(1, 12, request))
        answer = _read_response(sock, 1, 12)
    records = answer.responses[0].partitions[0].records  # type: ignore[attr-defined]
    assert records[16] == 2  # magic 2, stored as the client sent it
    return struct.unpack_from(">h", records, 21)[0] & 0x07


def test_confluent_admin_deletes_a_topic(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "to-delete", 1, 1)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert "to-delete" in admin.list_topics(timeout=30).topics
    for future in admin.delete_topics(["to-delete"], operation_timeout=30).values():
        future.result(timeout=60)
    deadline = time.monotonic() + 30
    while "to-delete" in admin.list_topics(timeout=30).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "to-delete" not in admin.list_topics(timeout=30).topics
    with pytest.raises(Exception, match="UNKNOWN_TOPIC_OR_PART"):
        for future in admin.delete_topics(["to-delete"], operation_timeout=30).values():
            future.result(timeout=60)


@pytest.mark.skipif(__import__("shutil").which("kcat") is None, reason="kcat is not installed (Debian package kcat)")
def test_kcat_lists_produces_and_consumes(kafka_cluster):
    import subprocess

    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "kcat-topic", 1, 3)
    listing = subprocess.run(["kcat", "-b", bootstrap, "-L"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "3 brokers:" in listing.stdout and '"kcat-topic"' in listing.stdout
    produced = subprocess.run(["kcat", "-b", bootstrap, "-P", "-t", "kcat-topic", "-p", "0"], input="a\nb\nc\n",
                              capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(["kcat", "-b", bootstrap, "-C", "-t", "kcat-topic", "-p", "0", "-o", "beginning", "-e",
                               "-f", "%o %s\n"], capture_output=True, text=True, timeout=60)
    assert consumed.stdout.splitlines() == ["0 a", "1 b", "2 c"]


def test_an_assign_consumer_commits_and_the_next_one_resumes_from_the_committed_offset(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "commits", 1, 3)
    producer = CKProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(100):
        producer.produce("commits", value=b"%d" % i, partition=0)
    assert producer.flush(DEADLINE_S) == 0
    conf = {"bootstrap.servers": bootstrap, "group.id": "resumers", "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}
    first = CKConsumer(conf)
    first.assign([TopicPartition("commits", 0, 0)])
    seen: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(seen) < 40 and time.monotonic() < deadline:
        seen += [m.value() for m in first.consume(num_messages=40 - len(seen), timeout=1.0) if m.error() is None]
    first.commit(offsets=[TopicPartition("commits", 0, 40)], asynchronous=False)  # OffsetCommit
    (committed,) = first.committed([TopicPartition("commits", 0)], timeout=30)  # OffsetFetch
    assert committed.offset == 40
    first.close()
    second = CKConsumer(conf)
    second.assign([TopicPartition("commits", 0)])  # no offset: start from the group's committed one
    rest: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(rest) < 60 and time.monotonic() < deadline:
        rest += [m.value() for m in second.consume(num_messages=100, timeout=1.0) if m.error() is None]
    second.close()
    assert seen == [b"%d" % i for i in range(40)]
    assert rest == [b"%d" % i for i in range(40, 100)]


def test_kafka_python_commits_and_reads_back_offsets(kafka_cluster):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KPTopicPartition
    from kafka.structs import OffsetAndMetadata

    _create(kafka_cluster.kafka_bootstrap, "kp-commits", 2, 1)
    consumer = KafkaConsumer(bootstrap_servers=kafka_cluster.kafka_bootstrap.split(","), group_id="kp-group",
                             enable_auto_commit=False)
    tp0, tp1 = KPTopicPartition("kp-commits", 0), KPTopicPartition("kp-commits", 1)
    consumer.assign([tp0, tp1])
    consumer.commit({tp0: OffsetAndMetadata(7, "meta", -1), tp1: OffsetAndMetadata(0, "", -1)})
    assert (consumer.committed(tp0), consumer.committed(tp1)) == (7, 0)
    consumer.close()


def test_an_aborted_transaction_is_invisible_to_read_committed_kafka_consumers_only(kafka_cluster):
    """Transactions written over gRPC (markers included) read by librdkafka: read_committed drops
    the aborted one using the aborted-transactions list and the (converted) control batches."""
    kafka_cluster.create_topic("txn-read", partitions=1, replication_factor=3)
    with SemelProducer(kafka_cluster.bootstrap, transactional_id="kafka-reader-tx") as producer:
        producer.init_transactions(timeout_s=60)
        for outcome, prefix in (("commit", b"c"), ("abort", b"a"), ("commit", b"d")):
            producer.begin_transaction()
            for i in range(5):
                producer.send("txn-read", prefix + b"%d" % i, partition=0)
            if outcome == "commit":
                producer.commit_transaction(timeout_s=60)
            else:
                producer.flush(timeout_s=60)
                producer.abort_transaction(timeout_s=60)
    committed = [b"c%d" % i for i in range(5)] + [b"d%d" % i for i in range(5)]
    everything = [b"c%d" % i for i in range(5)] + [b"a%d" % i for i in range(5)] + [b"d%d" % i for i in range(5)]
    read_committed = _consume_all(kafka_cluster.kafka_bootstrap, "txn-read", 1, len(committed),
                                  **{"isolation.level": "read_committed"})
    read_uncommitted = _consume_all(kafka_cluster.kafka_bootstrap, "txn-read", 1, len(everything),
                                    **{"isolation.level": "read_uncommitted"})
    assert [v for _, _, _, v in read_committed] == committed
    assert [v for _, _, _, v in read_uncommitted] == everything
    # offsets skip the three markers: 0-4, marker 5, 6-10 aborted, marker 11, 12-16, marker 17
    assert [o for _, o, _, _ in read_committed] == [*range(0, 5), *range(12, 17)]
