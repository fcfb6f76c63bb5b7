"""The classic exactly-once loop with confluent-kafka (librdkafka) over the Kafka listener:
a read_committed consumer (assign(), committing through the transaction), a transactional
producer, `send_offsets_to_transaction`, commit; the transaction coordinator's broker is
killed (SIGKILL) while a transaction is open. Output equals input: no duplicates, no loss.

The open transaction then lives on in the new coordinator, which loads it from
`__transaction_state` with its transaction version (1: the commit must not bump the epoch,
or librdkafka's next transaction would be fenced)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic
from semel.internal_topics import TRANSACTION_STATE_TOPIC, coordinator_partition

from .harness import Cluster

pytestmark = [pytest.mark.slow]

RECORDS = 3000
PARTITIONS = 3
BATCH = 100
LOOP_DEADLINE_S = 60.0  # the whole loop, kill and failover included
CALL_TIMEOUT_S = 30.0
TID = "eos-loop"
GROUP = "eos-loop-group"


def _coordinator_broker(admin: AdminClient, transactional_id: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(TRANSACTION_STATE_TOPIC, timeout=10).topics.get(TRANSACTION_STATE_TOPIC)
        if md is not None and md.partitions:
            leader = md.partitions[coordinator_partition(transactional_id, len(md.partitions))].leader
            if leader >= 0:
                return int(leader)
        time.sleep(0.2)
    raise AssertionError(f"no leader for {TRANSACTION_STATE_TOPIC}")


def _producer(bootstrap: str) -> KafkaProducer:
    producer = KafkaProducer({"bootstrap.servers": bootstrap, "transactional.id": TID, "linger.ms": 5,
                              "transaction.timeout.ms": 60_000})
    producer.init_transactions(CALL_TIMEOUT_S)
    return producer


def _rewind(consumer: Consumer) -> None:
    """Back to the committed offsets (re-assigning drops what was fetched meanwhile)."""
    consumer.unassign()
    committed = consumer.committed([TopicPartition("in", p) for p in range(PARTITIONS)], timeout=CALL_TIMEOUT_S)
    consumer.assign([TopicPartition("in", tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                     for tp in committed])


def test_exactly_once_loop_survives_a_killed_transaction_coordinator(tmp_path):
    with Cluster(tmp_path, brokers=3, kafka=True) as cluster:
        bootstrap = cluster.kafka_bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(t, PARTITIONS, 3) for t in ("in", "out")],
                                          operation_timeout=30).values():
            future.result(timeout=60)
        source = KafkaProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
        for i in range(RECORDS):
            source.produce("in", value=b"%d" % i, partition=i % PARTITIONS)
        assert source.flush(60) == 0
        end_offsets = {p: RECORDS // PARTITIONS + (p < RECORDS % PARTITIONS) for p in range(PARTITIONS)}
        coordinator = _coordinator_broker(admin, TID)

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "isolation.level": "read_committed",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition("in", p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        producer = _producer(bootstrap)
        committed = {p: 0 for p in range(PARTITIONS)}
        processed = aborted = recreated = 0
        errors: list[str] = []
        killed_at_s: float | None = None
        started = time.monotonic()
        while committed != end_offsets:
            assert time.monotonic() - started < LOOP_DEADLINE_S, (
                f"loop did not finish: committed {committed} of {end_offsets}, {processed} processed, "
                f"{aborted} aborted, coordinator killed at {killed_at_s}, errors {errors}\n{cluster.logs()}")
            messages = [m for m in consumer.consume(num_messages=BATCH, timeout=0.5) if m.error() is None]
            if not messages:
                continue
            try:
                producer.begin_transaction()
                for m in messages:
                    producer.produce("out", value=b"out-" + m.value(), partition=m.partition())
                if killed_at_s is None and processed >= RECORDS // 3:
                    assert producer.flush(CALL_TIMEOUT_S) == 0  # the transaction is open on the partitions
                    cluster.kill(coordinator)
                    killed_at_s = time.monotonic() - started
                positions = consumer.position(consumer.assignment())
                producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), CALL_TIMEOUT_S)
                _commit(producer)
            except KafkaException as exc:
                error = exc.args[0]
                errors.append(f"{time.monotonic() - started:.1f} s: {error}")
                if error.fatal():  # fenced (e.g. a timed-out transaction): a new instance takes over
                    producer = _producer(bootstrap)
                    recreated += 1
                else:
                    assert error.txn_requires_abort(), error
                    _abort(producer)
                    aborted += 1
                _rewind(consumer)
                continue
            processed += len(messages)
            committed.update({tp.partition: tp.offset for tp in positions})
        loop_s = time.monotonic() - started
        consumer.close()
        print(f"exactly-once loop: {RECORDS} records in {loop_s:.1f} s, coordinator broker {coordinator} "
              f"killed at {killed_at_s:.1f} s, {aborted} aborted, {recreated} producers recreated, errors: {errors}")
        assert killed_at_s is not None
        # the new coordinator loaded the id as a version-1 one: its commit kept the epoch, so the
        # producer was never fenced (under version 2 its next transaction would have been)
        assert recreated == 0, errors

        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-check", "isolation.level": "read_committed",
                           "enable.auto.commit": False, "enable.partition.eof": True})
        reader.assign([TopicPartition("out", p, 0) for p in range(PARTITIONS)])
        out: list[tuple[int, bytes]] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + 60
        while (len(out) < RECORDS or len(at_end) < PARTITIONS) and time.monotonic() < deadline:
            for m in reader.consume(num_messages=1000, timeout=0.5):
                if m.error() is None:
                    out.append((m.partition(), m.value()))
                    at_end.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
        reader.close()
        assert sorted(v for _, v in out) == sorted(b"out-%d" % i for i in range(RECORDS))  # no loss, no duplicate
        assert all(int(v[4:]) % PARTITIONS == p for p, v in out)
        check = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "isolation.level": "read_committed"})
        offsets = check.committed([TopicPartition("in", p) for p in range(PARTITIONS)], timeout=CALL_TIMEOUT_S)
        check.close()
        assert {tp.partition: tp.offset for tp in offsets} == end_offsets


def _abort(producer: KafkaProducer) -> None:
    """abort_transaction, again while the error is retriable. It waits for every outstanding
    message, and the reports of those that failed count until served: poll first."""
    for _ in range(10):
        producer.poll(0)
        try:
            producer.abort_transaction(CALL_TIMEOUT_S)
            return
        except KafkaException as exc:
            if not exc.args[0].retriable():
                raise
    producer.abort_transaction(CALL_TIMEOUT_S)


def _commit(producer: KafkaProducer) -> None:
    """commit_transaction, again while the error is retriable (librdkafka's documented loop)."""
    for _ in range(10):
        try:
            producer.commit_transaction(CALL_TIMEOUT_S)
            return
        except KafkaException as exc:
            if not exc.args[0].retriable():
                raise
    producer.commit_transaction(CALL_TIMEOUT_S)
