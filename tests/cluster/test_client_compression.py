"""`Producer(compression_type=...)` against three real broker processes (with Kafka listeners):
each codec produced over gRPC reads back over gRPC (read_uncommitted and read_committed) and over
Kafka (confluent-kafka: the stored batches are served as the gRPC client sent them); an
idempotent retry of a compressed batch is deduplicated; an aborted compressed transaction is
invisible to read_committed; hostile compressed batches are refused with the right code."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaError, TopicPartition
from semel.client import Consumer, Producer
from semel.client import errors as client_errors
from semel.client.records import ConsumerRecord
from semel.clock import wall_clock_ms
from semel.storage.kafka_records import KafkaRecord, encode_compressed_batch, encode_records
from semel.v1 import broker_pb2, broker_pb2_grpc, txn_pb2, txn_pb2_grpc
from semel.v1 import common_pb2 as pb

pytestmark = [pytest.mark.slow]

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
DEADLINE_S = 120.0


def _value(i: int) -> bytes:
    return (b"record-%05d " % i) * 40  # compressible, about 0.5 KiB


def _read_grpc(cluster, topic: str, n: int, isolation: str = "read_uncommitted") -> list[ConsumerRecord]:
    got: list[ConsumerRecord] = []
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest", isolation_level=isolation) as consumer:
        consumer.assign([(topic, 0)])
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < n and time.monotonic() < deadline:
            got.extend(consumer.poll(2000))
        got.extend(consumer.poll(500))  # anything beyond n would be a duplicate
    return got


def _read_kafka(cluster, topic: str, n: int, **conf: object) -> list[tuple[int, bytes | None, bytes | None]]:
    consumer = CKConsumer({"bootstrap.servers": cluster.kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
                           "enable.auto.commit": False, **conf})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[tuple[int, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(got) < n and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=1.0):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                got.append((m.offset(), m.key(), m.value()))
        for m in consumer.consume(num_messages=1000, timeout=1.0):
            if m.error() is None:
                got.append((m.offset(), m.key(), m.value()))
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("codec", CODECS)
def test_each_codec_produced_over_grpc_reads_back_over_grpc_and_kafka(kafka_cluster, codec):
    topic = f"comp-{codec}"
    kafka_cluster.create_topic(topic, partitions=1, replication_factor=3)
    n = 300
    with Producer(kafka_cluster.bootstrap, compression_type=codec, linger_ms=5) as producer:
        futures = [producer.send(topic, _value(i), key=b"k%d" % i, partition=0, headers=[("h", b"%d" % i)])
                   for i in range(n)]
        producer.flush(timeout_s=60)
        offsets = [f.result(0).offset for f in futures]
        assert producer.metrics()["batches_sent"] < n  # records went in shared (compressed) batches
    assert offsets == list(range(n))
    for isolation in ("read_uncommitted", "read_committed"):
        got = _read_grpc(kafka_cluster, topic, n, isolation)
        assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
            (i, b"k%d" % i, _value(i), (("h", b"%d" % i),)) for i in range(n)]
    kafka = _read_kafka(kafka_cluster, topic, n)
    assert kafka == [(i, b"k%d" % i, _value(i)) for i in range(n)]
    stored = _stored_log_bytes(kafka_cluster, topic)  # on the leader: compressed as sent, or not
    raw = sum(len(_value(i)) for i in range(n))
    assert stored > raw if codec == "none" else stored < raw / 4, (codec, stored, raw)


def _stored_log_bytes(cluster, topic: str) -> int:
    leader = cluster.leader_of(topic, 0, timeout_s=30)
    dirs = [d for d in (cluster.dir / f"broker-{leader}").rglob(f"{topic}-0.*") if d.is_dir()]
    assert dirs, f"no partition directory for {topic}-0 on broker {leader}"
    return sum(f.stat().st_size for d in dirs for f in d.glob("*.log"))


def test_a_compressed_aborted_transaction_is_invisible_to_read_committed(kafka_cluster):
    topic = "comp-txn"
    kafka_cluster.create_topic(topic, partitions=1, replication_factor=3)
    with Producer(kafka_cluster.bootstrap, transactional_id=f"comp-{uuid.uuid4().hex}",
                  compression_type="zstd") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(50):
            producer.send(topic, b"aborted-%d" % i, partition=0)
        producer.flush(timeout_s=60)
        producer.abort_transaction()
        producer.begin_transaction()
        for i in range(30):
            producer.send(topic, b"committed-%d" % i, partition=0)
        producer.commit_transaction()
    committed = _read_grpc(kafka_cluster, topic, 30, "read_committed")
    assert [r.value for r in committed] == [b"committed-%d" % i for i in range(30)]
    everything = _read_grpc(kafka_cluster, topic, 80)
    assert [r.value for r in everything] == [b"aborted-%d" % i for i in range(50)] + [
        b"committed-%d" % i for i in range(30)]
    kafka = _read_kafka(kafka_cluster, topic, 30, **{"isolation.level": "read_committed"})
    assert [v for _, _, v in kafka] == [b"committed-%d" % i for i in range(30)]


def _leader_stub(cluster, topic: str) -> tuple[broker_pb2_grpc.BrokerStub, grpc.Channel]:
    channel = grpc.insecure_channel(cluster.address(cluster.leader_of(topic, 0, timeout_s=30)))
    return broker_pb2_grpc.BrokerStub(channel), channel


def _produce(stub: broker_pb2_grpc.BrokerStub, topic: str, data: bytes) -> broker_pb2.PartitionProduceResult:
    resp = stub.Produce(broker_pb2.ProduceRequest(acks=broker_pb2.ACKS_ALL, timeout_ms=10_000, partitions=[
        broker_pb2.PartitionProduceData(topic=topic, partition=0, kafka_batch=data)]), timeout=30)
    return resp.results[0]


def _batch(values: list[bytes], codec: int, pid: int = -1, seq: int = -1, count: int | None = None) -> bytes:
    ts = wall_clock_ms()
    records = encode_records(KafkaRecord(i, 0, None, v) for i, v in enumerate(values))
    return encode_compressed_batch(records, codec=codec, record_count=count or len(values), base_timestamp_ms=ts,
                                   max_timestamp_ms=ts, producer_id=pid, producer_epoch=0 if pid >= 0 else -1,
                                   base_sequence=seq)


def test_an_idempotent_retry_of_a_compressed_batch_is_deduplicated_and_hostile_batches_refused(kafka_cluster):
    topic = "comp-raw"
    kafka_cluster.create_topic(topic, partitions=1, replication_factor=3)
    stub, channel = _leader_stub(kafka_cluster, topic)
    try:
        init = txn_pb2_grpc.TransactionsStub(channel).InitProducerId(
            txn_pb2.InitProducerIdRequest(producer_id=-1, producer_epoch=-1), timeout=30)
        assert init.error_code == pb.NONE, init.error_message
        data = _batch([b"a", b"b", b"c"], 4, pid=init.producer_id, seq=0)
        first = _produce(stub, topic, data)
        assert (first.error_code, first.base_offset, first.duplicate) == (pb.NONE, 0, False), first.error_message
        retry = _produce(stub, topic, data)  # as after a lost acknowledgement
        assert (retry.error_code, retry.base_offset, retry.duplicate) == (pb.NONE, 0, True), retry.error_message

        bad_crc = bytearray(_batch([b"x"], 3))
        bad_crc[-1] ^= 0xFF
        lying = _batch([b"x", b"y"], 1, count=3)
        for hostile, code in ((bytes(bad_crc), pb.CORRUPT_MESSAGE), (lying, pb.CORRUPT_MESSAGE),
                              (b"\x00" * 20, pb.CORRUPT_MESSAGE)):
            r = _produce(stub, topic, hostile)
            assert r.error_code == code and r.error_message, (r.error_code, r.error_message)
    finally:
        channel.close()
    got = _read_grpc(kafka_cluster, topic, 3)
    assert [(r.offset, r.value) for r in got] == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_an_unknown_compression_type_is_a_config_error():
    with pytest.raises(client_errors.ConfigError, match="compression_type must be one of none, gzip"):
        Producer("127.0.0.1:1", compression_type="brotli")


def test_semel_produce_compression_flag(kafka_cluster):
    import os
    import subprocess
    import sys

    topic = "comp-cli"
    kafka_cluster.create_topic(topic, partitions=1, replication_factor=3)
    lines = b"".join(b"k%d:line %d %s\n" % (i, i, b"z" * 500) for i in range(200))
    env = dict(os.environ, SEMEL_BOOTSTRAP=kafka_cluster.bootstrap)
    done = subprocess.run([sys.executable, "-m", "semel.cli", "produce", topic, "--key-separator", ":",
                           "--partition", "0", "--compression", "lz4"], input=lines, capture_output=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = _read_grpc(kafka_cluster, topic, 200)
    assert [(r.key, r.value) for r in got] == [(b"k%d" % i, b"line %d %s" % (i, b"z" * 500)) for i in range(200)]
    assert _stored_log_bytes(kafka_cluster, topic) < 200 * 500 / 4
    bad = subprocess.run([sys.executable, "-m", "semel.cli", "produce", topic, "--compression", "brotli"],
                         input=b"", capture_output=True, env=env, timeout=60)
    assert bad.returncode == 2 and b"--compression" in bad.stderr
