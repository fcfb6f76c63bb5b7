"""Producer / Consumer / Admin against in-process fake brokers (real gRPC, no processes)."""

from __future__ import annotations

import threading

import pytest
from semel.client import Admin, Consumer, Producer
from semel.client import errors as client_errors
from semel.v1 import common_pb2


def test_produce_consume_round_trip(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("events", 3)
    with Producer(bootstrap, linger_ms=1) as producer:
        futures = [producer.send("events", b"v%d" % i, key=b"k%d" % (i % 5), headers=[("h", "x" if i % 2 else b"x")])
                   for i in range(200)]
        producer.flush(timeout_s=10)
        metas = [f.result(0) for f in futures]
    # Same key, same partition; offsets per partition are dense and in send order.
    by_partition: dict[int, list[int]] = {}
    for i, meta in enumerate(metas):
        by_partition.setdefault(meta.partition, []).append(meta.offset)
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([("events", p) for p in range(3)])
        got = []
        while len(got) < 200:
            batch = consumer.poll(timeout_ms=2000)
            assert batch, "no records within the poll timeout"
            got.extend(batch)
    assert sorted(r.value for r in got) == sorted(b"v%d" % i for i in range(200))
    assert all(r.headers == (("h", b"x"),) for r in got)
    for r in got:
        assert r.partition == metas[int(r.value[1:])].partition
        assert r.offset == metas[int(r.value[1:])].offset


def test_retriable_errors_are_retried_in_order_and_refresh_metadata(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 1)
    state.fail_next_produce("t", 0, common_pb2.NOT_ENOUGH_REPLICAS, common_pb2.NOT_LEADER_OR_FOLLOWER)
    refreshes_before = state.metadata_requests
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=5, batch_bytes=200) as producer:
        futures = [producer.send("t", b"r%03d" % i, partition=0) for i in range(30)]
        producer.flush(timeout_s=10)
        metrics = producer.metrics()
    assert [f.result(0).offset for f in futures] == list(range(30))
    assert [r.value for r in state.records("t", 0)] == [b"r%03d" % i for i in range(30)]
    assert state.metadata_requests > refreshes_before + 1
    assert metrics["batch_retries"] == 2 and metrics["records_acked"] == 30 and metrics["records_failed"] == 0
    assert metrics["batches_sent"] == metrics["batches_acked"] + 2
    assert metrics["buffered_bytes"] == 0 and metrics["in_flight_batches"] == 0


def test_leader_move_is_followed(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=5) as producer:
        producer.send("t", b"a").result(5)
        with state.lock:
            state.leaders[("t", 0)] = 3 if state.leaders[("t", 0)] != 3 else 2
        assert producer.send("t", b"b").result(5).offset == 1
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([("t", 0)])
        assert [r.value for r in consumer.poll(2000)] == [b"a", b"b"]


def test_fatal_error_fails_the_future_without_retry(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 1)
    state.fail_next_produce("t", 0, common_pb2.RECORD_BATCH_TOO_LARGE)
    with Producer(bootstrap, linger_ms=0) as producer:
        future = producer.send("t", b"x")
        with pytest.raises(client_errors.RecordBatchTooLargeError):
            future.result(5)
        assert producer.send("t", b"y").result(5).offset == 0


def test_delivery_timeout_when_retries_never_succeed(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 1)
    state.fail_next_produce("t", 0, *[common_pb2.NOT_ENOUGH_REPLICAS] * 1000)
    errors = []
    done = threading.Event()
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=5, retry_backoff_max_ms=20, delivery_timeout_ms=300) as producer:
        future = producer.send("t", b"x", callback=lambda meta, err: (errors.append(err), done.set()))
        with pytest.raises(client_errors.DeliveryTimeoutError) as info:
            future.result(5)
    assert done.wait(5)
    assert isinstance(errors[0], client_errors.DeliveryTimeoutError)
    assert isinstance(info.value.__cause__, client_errors.RetriableError)


def test_unknown_topic_raises_after_max_block(fake_cluster):
    _state, _brokers, bootstrap = fake_cluster
    with Producer(bootstrap, max_block_ms=200, retry_backoff_ms=10) as producer:
        with pytest.raises(client_errors.UnknownTopicOrPartitionError):
            producer.send("missing", b"x")


def test_buffer_full_raises_after_max_block(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 1)
    state.fail_next_produce("t", 0, *[common_pb2.NOT_ENOUGH_REPLICAS] * 1000)
    with Producer(bootstrap, linger_ms=0, buffer_bytes=4096, max_block_ms=100, retry_backoff_ms=50,
                  delivery_timeout_ms=60_000) as producer:
        with pytest.raises(client_errors.BufferFullError):
            for _ in range(100):
                producer.send("t", b"x" * 1000)
        producer.close(timeout_s=0.2)


def test_consumer_seek_latest_and_out_of_range_reset(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0) as producer:
        for i in range(10):
            producer.send("t", b"%d" % i)
        producer.flush(5)
    with Consumer(bootstrap) as consumer:  # auto_offset_reset=latest
        consumer.assign([("t", 0)])
        assert consumer.position("t", 0) == 10
        consumer.seek("t", 0, 7)
        assert [r.value for r in consumer.poll(2000)] == [b"7", b"8", b"9"]
        consumer.seek("t", 0, 500)  # out of range -> reset to latest
        assert consumer.poll(200) == []
        assert consumer.position("t", 0) == 10
        consumer.seek_to_beginning()
        assert len(consumer.poll(2000)) == 10
    with Consumer(bootstrap, auto_offset_reset="none") as consumer:
        consumer.assign([("t", 0)])
        consumer.seek("t", 0, 500)
        with pytest.raises(client_errors.OffsetOutOfRangeError):
            consumer.poll(1000)


def test_max_poll_records_buffers_the_rest(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=50) as producer:
        for i in range(25):
            producer.send("t", b"%d" % i)
    with Consumer(bootstrap, auto_offset_reset="earliest", max_poll_records=10) as consumer:
        consumer.assign([("t", 0)])
        sizes = [len(consumer.poll(2000)) for _ in range(3)]
        assert sizes == [10, 10, 5]
        assert consumer.position("t", 0) == 25


def test_admin_topics_and_cluster(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    with Admin(bootstrap) as admin:
        admin.create_topic("a", partitions=2)
        with pytest.raises(client_errors.TopicAlreadyExistsError) as info:
            admin.create_topic("a", partitions=2)
        assert "already exists" in str(info.value)
        with pytest.raises(client_errors.InvalidTopicNameError):
            admin.create_topic("__bad")
        assert admin.list_topics() == ["a"]
        [desc] = admin.describe_topics(["a"])
        assert [p.partition for p in desc.partitions] == [0, 1]
        cluster = admin.describe_cluster()
        assert [b.broker_id for b in cluster.brokers] == [1, 2, 3]
        admin.delete_topic("a")
        assert admin.list_topics() == []
        with pytest.raises(client_errors.UnknownTopicOrPartitionError):
            admin.describe_topics(["a"])


def test_unreachable_bootstrap_is_a_readable_error():
    with Admin("127.0.0.1:1", request_timeout_ms=300) as admin:
        with pytest.raises(client_errors.BrokerUnreachableError) as info:
            admin.list_topics()
    assert "127.0.0.1:1" in str(info.value)


def test_bootstrap_parsing(monkeypatch):
    from semel.client.metadata import parse_bootstrap

    assert parse_bootstrap("a:1, b:2") == ["a:1", "b:2"]
    monkeypatch.setenv("SEMEL_BOOTSTRAP", "h:9092")
    assert parse_bootstrap(None) == ["h:9092"]
    monkeypatch.delenv("SEMEL_BOOTSTRAP")
    with pytest.raises(client_errors.ConfigError):
        parse_bootstrap(None)
    with pytest.raises(client_errors.ConfigError):
        parse_bootstrap("nohostport")


def test_a_keyless_record_that_does_not_fit_the_sticky_batch_goes_to_the_next_partition(fake_cluster):
    """As Kafka's KIP-794: when the sticky batch is full for a record, that record starts the
    next partition's batch. It used to open a batch of its own on the full partition, which
    was sent alone once linger_ms passed (a quarter of a transactional bench's batches held
    one record) or was later topped up with records sent much later. So every batch holds
    records sent one after another."""
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("t", 3)
    # max_in_flight 5: 10 batches over 3 partitions never fill a partition's in-flight slots, so
    # adaptive stickiness (which leaves a partition with no free slot) never moves a record; with
    # the plain producer's default of 1 it did whenever the fake broker answered late (a loaded
    # machine), and a batch could then hold one record
    with Producer(bootstrap, linger_ms=30_000, batch_bytes=2000, max_in_flight=5) as producer:
        futures = [producer.send("t", b"%03d" % i + b"." * 297) for i in range(60)]
        producer.flush(timeout_s=10)
    assert all(f.result(0) for f in futures)
    batches = []
    for p in range(3):
        for batch in state.logs[("t", p)]:
            records = common_pb2.Records()
            records.ParseFromString(batch.records)
            batches.append([int(r.value[:3]) for r in records.records])
    assert sorted(i for b in batches for i in b) == list(range(60))
    for indexes in batches:
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), f"batch of non-consecutive records {indexes}"
    sizes = sorted(len(b) for b in batches)
    assert sizes[0] >= 2 and sizes[-2] == sizes[-1], f"batch sizes {sizes}"


def _append_garbage_batch(state, topic: str, partition: int, payload: bytes = b"\xff\xfe not records \x00") -> int:
    """A batch written at the storage level (the broker now refuses such a produce): its
    records do not decode. Returns its offset."""
    with state.lock:
        offset = state.end_offset((topic, partition))
        state.logs[(topic, partition)].append(common_pb2.RecordBatch(
            base_offset=offset, last_offset_delta=0, record_count=1, producer_id=-1, producer_epoch=-1,
            base_sequence=-1, leader_epoch=1, records=payload))
    return offset


def test_a_corrupt_batch_raises_a_clear_error_after_the_records_before_it(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    state.create_topic("p", 1)
    with Producer(bootstrap, linger_ms=0) as producer:
        producer.send("p", b"before", partition=0).result(10)
        bad = _append_garbage_batch(state, "p", 0)
        producer.send("p", b"after", partition=0).result(10)
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([("p", 0)])
        got = []
        with pytest.raises(client_errors.CorruptRecordError) as raised:
            for _ in range(20):
                got.extend(r.value for r in consumer.poll(timeout_ms=2000))
        assert got == [b"before"]
        err = raised.value
        assert (err.topic, err.partition, err.offset, err.next_offset) == ("p", 0, bad, bad + 1)
        assert f"p-0 at offset {bad}" in str(err)
        with pytest.raises(client_errors.CorruptRecordError):  # until the application seeks past it
            consumer.poll(timeout_ms=2000)
        consumer.seek("p", 0, err.next_offset)
        assert [r.value for r in consumer.poll(timeout_ms=2000)] == [b"after"]
