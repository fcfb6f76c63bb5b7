"""Issue 16, item 6, against three real broker processes over gRPC: what a hostile client did
with nothing but the .proto files is refused with a clear code, and the guarantees hold."""

from __future__ import annotations

import time

import pytest
from semel import internal_topics
from semel.client import Consumer, Producer
from semel.v1 import admin_pb2, broker_pb2, common_pb2, txn_pb2, txn_pb2_grpc

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # three broker processes


@pytest.fixture
def cluster(tmp_path):
    c = h.Cluster(tmp_path, 3, internal_partitions=1)
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())  # pytest shows captured output only when the test failed
        c.close()


def produce(c: h.Cluster, topic: str, batch: common_pb2.RecordBatch, transactional_id: str = ""):
    leader = c.leader_of(topic) if topic not in internal_topics.INTERNAL_TOPICS else c.any_alive()
    resp = c.broker_stub(leader).Produce(broker_pb2.ProduceRequest(
        acks=broker_pb2.ACKS_ALL, timeout_ms=5000, transactional_id=transactional_id,
        partitions=[broker_pb2.PartitionProduceData(topic=topic, partition=0, batch=batch)]), timeout=10)
    return resp.results[0]


def test_hostile_input_is_refused_and_a_forged_marker_cannot_disable_the_coordinator(cluster):
    c = cluster
    assert c.create_topic("h", partitions=1, rf=3).error_code == common_pb2.NONE
    c.wait_for(lambda: c.partition_meta("h").leader_id >= 0, what="a leader of h")
    assert produce(c, "h", h.make_batch([b"first"])).error_code == common_pb2.NONE

    unset = h.make_batch([b"x"])
    for name in ("producer_id", "producer_epoch", "base_sequence"):
        unset.ClearField(name)  # a client in another language that never sets them
    assert produce(c, "h", unset).error_code == common_pb2.INVALID_REQUEST
    garbage = h.make_batch([b"x"])
    garbage.records = b"\xff\xfe not records"
    assert produce(c, "h", garbage).error_code == common_pb2.CORRUPT_MESSAGE
    absurd = h.make_batch([b"x"])
    absurd.record_count, absurd.last_offset_delta = 2_147_483_647, 2_147_483_646
    assert produce(c, "h", absurd).error_code == common_pb2.CORRUPT_MESSAGE
    stranger = h.make_batch([b"x"], producer_id=999_999, producer_epoch=0, base_sequence=0)
    assert produce(c, "h", stranger).error_code == common_pb2.INVALID_PRODUCER_ID_MAPPING
    for topic in internal_topics.INTERNAL_TOPICS:
        assert produce(c, topic, h.make_batch([b"x"])).error_code == common_pb2.INVALID_TOPIC_NAME
    deleted = c.admin_stub(c.any_alive()).DeleteTopics(admin_pb2.DeleteTopicsRequest(
        names=list(internal_topics.INTERNAL_TOPICS)), timeout=10)
    assert {r.error_code for r in deleted.results} == {common_pb2.INVALID_TOPIC_NAME}
    assert all(t.error_code == common_pb2.NONE for t in c.metadata(topics=list(internal_topics.INTERNAL_TOPICS)).topics)
    assert h.fetch(c.broker_stub(c.leader_of("h")), "h", 0, 0).high_watermark == 1  # nothing else stored

    txns = txn_pb2_grpc.TransactionsStub(c.channel(c.any_alive()))
    listed = txns.ListTransactions(txn_pb2.ListTransactionsRequest(state_filters=[99]), timeout=10)
    assert listed.error_code == common_pb2.INVALID_REQUEST  # was gRPC UNKNOWN with a ValueError traceback

    # A transaction is open in h-0; a client forges its COMMIT marker with the largest epoch.
    bootstrap = c.brokers[c.any_alive()].address
    with Producer(bootstrap, transactional_id="victim", linger_ms=0) as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send("h", b"in-txn-1", partition=0).result(10)
        leader = c.leader_of("h")
        described = txn_pb2_grpc.TransactionsStub(c.channel(leader)).DescribeProducers(
            txn_pb2.DescribeProducersRequest(topic="h", partition=0), timeout=10)
        (victim,) = [p for p in described.producers if p.current_txn_start_offset >= 0]
        forged = txn_pb2_grpc.TxnMarkersStub(c.channel(leader)).WriteTxnMarkers(txn_pb2.WriteTxnMarkersRequest(
            markers=[txn_pb2.TxnMarker(producer_id=victim.producer_id, producer_epoch=victim.producer_epoch,
                                       type=common_pb2.COMMIT, coordinator_epoch=2_147_483_647,
                                       transactional_id="victim",
                                       partitions=[txn_pb2.TopicPartition(topic="h", partition=0)])]), timeout=15)
        assert forged.markers[0].partitions[0].error_code == common_pb2.UNKNOWN_LEADER_EPOCH
        producer.commit_transaction()  # the real coordinator's markers are not fenced
        producer.begin_transaction()  # and it still coordinates: the next transaction works
        producer.send("h", b"in-txn-2", partition=0).result(10)
        producer.commit_transaction()
    with Consumer(bootstrap, auto_offset_reset="earliest", isolation_level="read_committed") as consumer:
        consumer.assign([("h", 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 15
        while len(got) < 3 and time.monotonic() < deadline:
            got.extend(r.value for r in consumer.poll(timeout_ms=1000))
    assert got == [b"first", b"in-txn-1", b"in-txn-2"]
