"""Kafka transactions with real clients (confluent-kafka = librdkafka, kafka-python) against
real broker processes: commits and aborts seen by read_committed and read_uncommitted
consumers, many transactions on one producer epoch (transaction version 1), zombie fencing,
and the admin APIs (ListTransactions, DescribeTransactions, DescribeProducers). The
exactly-once loop with a killed broker is tests/cluster/test_kafka_eos.py."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = [pytest.mark.slow]

DEADLINE_S = 60.0
TXN_TIMEOUT_S = 30.0


def _create(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 3)], operation_timeout=30).values():
        future.result(timeout=60)


def _read(bootstrap: str, topic: str, partitions: int, isolation: str, expected: int) -> list[bytes]:
    """Every value in `topic` from offset 0 under `isolation`: until `expected` were read, then
    until the end offsets (LSO or HW) are reached, so anything beyond `expected` shows up."""
    consumer = CKConsumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                           "enable.auto.commit": False, "isolation.level": isolation,
                           "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while (len(values) < expected or len(at_end) < partitions) and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                if m.error() is None:
                    values.append(m.value())
                    at_end.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    raise AssertionError(m.error())
    finally:
        consumer.close()
    return values


def _describe(admin, transactional_id: str):  # noqa: ANN001, ANN202 (kafka-python's admin client)
    """kafka-python's describe_transactions, again while the answer is retriable (it raises
    NOT_COORDINATOR while the id's coordinator moves, e.g. a broker missed heartbeats under load)."""
    from kafka.errors import KafkaError as KPError

    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return admin.describe_transactions([transactional_id])[transactional_id]
        except KPError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _txn_producer(bootstrap: str, transactional_id: str) -> CKProducer:
    producer = CKProducer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id,
                           "transaction.timeout.ms": 60_000})
    producer.init_transactions(TXN_TIMEOUT_S)
    return producer


def _run_txn(producer: CKProducer, topic: str, values: list[bytes], commit: bool, partitions: int = 2) -> None:
    producer.begin_transaction()
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % partitions)
    # librdkafka purges what it has not sent yet on abort: flush first, so the aborted records are
    # really in the log (and must be filtered by read_committed readers)
    assert producer.flush(TXN_TIMEOUT_S) == 0
    if commit:
        producer.commit_transaction(TXN_TIMEOUT_S)
    else:
        producer.abort_transaction(TXN_TIMEOUT_S)


def test_confluent_kafka_aborted_transaction_is_invisible_to_read_committed_only(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "ck-txn", 2)
    producer = _txn_producer(bootstrap, "ck-txn-1")
    batches = {n: [b"t%d-%d" % (n, i) for i in range(40)] for n in range(5)}
    aborted = {1, 3}
    for n, values in batches.items():
        _run_txn(producer, "ck-txn", values, commit=n not in aborted)
    committed = sorted(v for n, vs in batches.items() if n not in aborted for v in vs)
    everything = sorted(v for vs in batches.values() for v in vs)
    assert sorted(_read(bootstrap, "ck-txn", 2, "read_committed", len(committed))) == committed
    assert sorted(_read(bootstrap, "ck-txn", 2, "read_uncommitted", len(everything))) == everything
    # An open transaction holds read_committed readers at its first offset (the LSO) ...
    producer.begin_transaction()
    producer.produce("ck-txn", value=b"late", partition=0)
    assert producer.flush(TXN_TIMEOUT_S) == 0
    assert sorted(_read(bootstrap, "ck-txn", 2, "read_committed", len(committed))) == committed
    # ... until its commit
    producer.commit_transaction(TXN_TIMEOUT_S)
    assert sorted(_read(bootstrap, "ck-txn", 2, "read_committed", len(committed) + 1)) == sorted(committed + [b"late"])


def test_librdkafka_keeps_one_producer_epoch_across_transactions(kafka_cluster, capsys):
    """Transaction version 1: six transactions, one epoch; the partition's sequences run on."""
    from kafka import TopicPartition as KPTopicPartition
    from kafka.admin import KafkaAdminClient
    from semel.cli import main as cli

    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "ck-epoch", 1)
    producer = _txn_producer(bootstrap, "ck-epoch-1")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        epochs = set()
        for n in range(6):
            _run_txn(producer, "ck-epoch", [b"%d-%d" % (n, i) for i in range(3)], commit=n % 2 == 0, partitions=1)
            epochs.add(_describe(admin, "ck-epoch-1").producer_epoch)
        assert len(epochs) == 1, epochs
        (state,) = admin.describe_producers([KPTopicPartition("ck-epoch", 0)]).values()
        (active,) = state.active_producers
        assert active.producer_epoch in epochs and active.last_sequence == 6 * 3 - 1
        assert active.current_transaction_start_offset == -1
    finally:
        admin.close()
    capsys.readouterr()
    assert cli.main(["txn", "describe", "ck-epoch-1", "-b", kafka_cluster.bootstrap, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["transaction_version"] == "TRANSACTION_VERSION_1" and described["producer_epoch"] in epochs
    assert len(_read(bootstrap, "ck-epoch", 1, "read_committed", 9)) == 9


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "ck-zombie", 2)
    zombie = _txn_producer(bootstrap, "ck-zombie-1")
    _run_txn(zombie, "ck-zombie", [b"z-committed"], commit=True)
    zombie.begin_transaction()
    zombie.produce("ck-zombie", value=b"z-open", partition=0)
    assert zombie.flush(TXN_TIMEOUT_S) == 0
    # the new instance's init fences the zombie and aborts its open transaction
    successor = _txn_producer(bootstrap, "ck-zombie-1")
    _run_txn(successor, "ck-zombie", [b"s-%d" % i for i in range(4)], commit=True)
    with pytest.raises(KafkaException) as raised:
        zombie.produce("ck-zombie", value=b"z-late", partition=1)
        zombie.flush(TXN_TIMEOUT_S)
        zombie.commit_transaction(TXN_TIMEOUT_S)
    error = raised.value.args[0]
    assert error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                             KafkaError.INVALID_PRODUCER_EPOCH), error
    # the successor keeps working after the zombie's attempts
    _run_txn(successor, "ck-zombie", [b"s-after"], commit=True)
    got = _read(bootstrap, "ck-zombie", 2, "read_committed", 6)
    assert sorted(got) == sorted([b"z-committed", b"s-0", b"s-1", b"s-2", b"s-3", b"s-after"])


def test_kafka_python_transactional_producer(kafka_cluster):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KPTopicPartition

    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "kp-txn", 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), transactional_id="kp-txn-1", acks="all",
                             enable_idempotence=True)
    producer.init_transactions()
    for n in range(4):
        producer.begin_transaction()
        for i in range(10):
            producer.send("kp-txn", value=b"p%d-%d" % (n, i), partition=i % 2)
        producer.flush()
        if n == 2:
            producer.abort_transaction()
        else:
            producer.commit_transaction()
    producer.close()
    expected = sorted(b"p%d-%d" % (n, i) for n in (0, 1, 3) for i in range(10))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                             isolation_level="read_committed")
    consumer.assign([KPTopicPartition("kp-txn", 0), KPTopicPartition("kp-txn", 1)])
    consumer.seek_to_beginning()
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < len(expected) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got += [r.value for r in records]
    for records in consumer.poll(timeout_ms=1000).values():  # nothing more may come
        got += [r.value for r in records]
    consumer.close()
    assert sorted(got) == expected
    assert sorted(_read(bootstrap, "kp-txn", 2, "read_committed", len(expected))) == expected


def test_admin_lists_and_describes_an_open_transaction(kafka_cluster):
    from kafka import TopicPartition as KPTopicPartition
    from kafka.admin import KafkaAdminClient

    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "ck-admin", 2)
    producer = _txn_producer(bootstrap, "ck-admin-1")
    producer.begin_transaction()
    producer.produce("ck-admin", value=b"open", partition=1)
    assert producer.flush(TXN_TIMEOUT_S) == 0
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        listed = [t for per_broker in admin.list_transactions().values() for t in per_broker
                  if t.transactional_id == "ck-admin-1"]
        assert len(listed) == 1 and listed[0].state.value == "Ongoing"
        ongoing = admin.list_transactions(state_filters=["Ongoing"])
        assert any(t.transactional_id == "ck-admin-1" for ts in ongoing.values() for t in ts)
        none_empty = admin.list_transactions(state_filters=["CompleteAbort"])
        assert not any(t.transactional_id == "ck-admin-1" for ts in none_empty.values() for t in ts)
        description = _describe(admin, "ck-admin-1")
        assert description.state.value == "Ongoing"
        assert description.producer_id == listed[0].producer_id
        assert description.topic_partitions == {KPTopicPartition("ck-admin", 1)}
        assert description.transaction_start_time_ms > 0
        producers = admin.describe_producers([KPTopicPartition("ck-admin", 1)])
        (state,) = producers.values()
        (active,) = state.active_producers
        assert active.producer_id == description.producer_id and active.current_transaction_start_offset == 0
        producer.commit_transaction(TXN_TIMEOUT_S)
        assert _describe(admin, "ck-admin-1").state.value in (
            "PrepareCommit", "CompleteCommit")
    finally:
        admin.close()


def _produce_raw(kafka_cluster, topic: str, partition: int, batch: bytes, transactional_id: str | None) -> object:
    """One Produce v9 (acks=all) of `batch`, sent to the partition's leader; its partition answer."""
    import datetime
    import socket

    from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
    from kio.static.primitive import i16, i32

    from .test_kafka_clients import _read_response, _request

    request = ProduceRequest(transactional_id=transactional_id, acks=i16(-1), timeout=datetime.timedelta(seconds=10),
                             topic_data=(TopicProduceData(name=topic, partition_data=(
                                 PartitionProduceData(index=i32(partition), records=batch),)),))
    host, port = kafka_cluster.kafka_address(kafka_cluster.leader_of(topic, partition)).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request(0, 9, request))
        answer = _read_response(sock, 0, 9)
    (result,) = answer.responses[0].partition_responses  # type: ignore[attr-defined]
    return result


def test_a_transactional_write_to_a_partition_outside_the_transaction_is_refused(kafka_cluster):
    """KIP-890 verification on the Kafka path: the partition leader asks the coordinator first."""
    from kafka.admin import KafkaAdminClient
    from kafka.record.memory_records import MemoryRecordsBuilder
    from kio.schema.errors import ErrorCode

    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "raw-txn", 2)
    producer = _txn_producer(bootstrap, "raw-txn-1")
    producer.begin_transaction()
    producer.produce("raw-txn", value=b"inside", partition=0)
    assert producer.flush(TXN_TIMEOUT_S) == 0
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        description = _describe(admin, "raw-txn-1")
    finally:
        admin.close()

    def batch(transactional: bool) -> bytes:
        builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 16, transactional=transactional,
                                       producer_id=description.producer_id,
                                       producer_epoch=description.producer_epoch, base_sequence=0)
        builder.append(timestamp=int(time.time() * 1000), key=None, value=b"outside", headers=[])
        builder.close()
        return bytes(builder.buffer())

    refused = _produce_raw(kafka_cluster, "raw-txn", 1, batch(True), "raw-txn-1")
    assert refused.error_code == ErrorCode.invalid_txn_state, refused  # type: ignore[attr-defined]
    no_id = _produce_raw(kafka_cluster, "raw-txn", 1, batch(True), None)
    assert no_id.error_code == ErrorCode.invalid_request, no_id  # type: ignore[attr-defined]
    mixed = _produce_raw(kafka_cluster, "raw-txn", 1, batch(False), "raw-txn-1")
    assert mixed.error_code == ErrorCode.invalid_request, mixed  # type: ignore[attr-defined]
    producer.commit_transaction(TXN_TIMEOUT_S)
    assert _read(bootstrap, "raw-txn", 2, "read_uncommitted", 1) == [b"inside"]  # nothing else was written


def test_send_offsets_to_transaction_from_a_classic_group_member(kafka_cluster):
    """A subscribe()d librdkafka consumer (classic group): the transaction's TxnOffsetCommit
    carries its member id and generation (KIP-447); the offsets become visible on commit only."""
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(bootstrap, "grp-in", 2)
    _create(bootstrap, "grp-out", 2)
    source = CKProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(20):
        source.produce("grp-in", value=b"%d" % i, partition=i % 2)
    assert source.flush(30) == 0
    group = "txn-classic"
    consumer = CKConsumer({"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed",
                           "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe(["grp-in"])
    producer = _txn_producer(bootstrap, "grp-txn-1")
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < 20 and time.monotonic() < deadline:
        messages = [m for m in consumer.consume(num_messages=20, timeout=0.5) if m.error() is None]
        if not messages:
            continue
        producer.begin_transaction()
        for m in messages:
            producer.produce("grp-out", value=m.value(), partition=m.partition())
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                             consumer.consumer_group_metadata(), TXN_TIMEOUT_S)
        producer.commit_transaction(TXN_TIMEOUT_S)
        got += [m.value() for m in messages]
    assert sorted(got) == sorted(b"%d" % i for i in range(20))
    committed = consumer.committed([TopicPartition("grp-in", p) for p in range(2)], timeout=TXN_TIMEOUT_S)
    assert {tp.partition: tp.offset for tp in committed} == {0: 10, 1: 10}
    # an aborted transaction's offsets never become the group's
    metadata = consumer.consumer_group_metadata()
    producer.begin_transaction()
    producer.produce("grp-out", value=b"never", partition=0)
    producer.send_offsets_to_transaction([TopicPartition("grp-in", 0, 3)], metadata, TXN_TIMEOUT_S)
    assert producer.flush(TXN_TIMEOUT_S) == 0
    producer.abort_transaction(TXN_TIMEOUT_S)
    committed = consumer.committed([TopicPartition("grp-in", p) for p in range(2)], timeout=TXN_TIMEOUT_S)
    assert {tp.partition: tp.offset for tp in committed} == {0: 10, 1: 10}
    consumer.close()
    assert sorted(_read(bootstrap, "grp-out", 2, "read_committed", 20)) == sorted(b"%d" % i for i in range(20))
