"""Issue 16, item 6: hostile or buggy input from a client cannot break a guarantee.

Against the in-process Broker/Admin servicers over a real ReplicaManager (the fixtures of
test_broker_service_inprocess): each test sends what a hostile client sent in the issue and
checks the clear refusal, and that nothing was written."""

from __future__ import annotations

import asyncio

import pytest
from semel import internal_topics, limits
from semel.client.records import encode_record
from semel.cluster.broker.server import AdminService, BrokerService
from semel.v1 import admin_pb2 as apb
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb

from tests.cluster.test_broker_service_inprocess import (  # noqa: F401 (fixtures)
    batch,
    broker,
    idempotent_broker,
    real_store_broker,
    txn_broker,
)


def run(coro):
    return asyncio.run(coro)


def produce(svc: BrokerService, b: pb.RecordBatch, topic: str = "t", transactional_id: str = "") -> bpb.PartitionProduceResult:
    req = bpb.ProduceRequest(acks=bpb.ACKS_LEADER, timeout_ms=1000, transactional_id=transactional_id,
                             partitions=[bpb.PartitionProduceData(topic=topic, partition=0, batch=b)])
    return run(svc.Produce(req, None)).results[0]


def records(*values: bytes) -> bytes:
    return b"".join(encode_record(i, 0, None, v) for i, v in enumerate(values))


def with_count(b: pb.RecordBatch, count: int) -> pb.RecordBatch:
    b.record_count, b.last_offset_delta = count, count - 1
    return b


# --- poison pills --------------------------------------------------------------------------------

def test_a_batch_whose_records_do_not_decode_to_its_count_is_refused_and_not_stored(txn_broker):
    svc = BrokerService(txn_broker)
    cases = {
        "random bytes": (b"\xff\xfe\x00garbage\x13\x37", 1),
        "empty payload": (b"", 1),
        "absurd count": (records(b"one"), 2_147_483_647),
        "count above the records": (records(b"one"), 2),
        "count below the records": (records(b"one", b"two"), 1),
    }
    for name, (payload, count) in cases.items():
        b = with_count(batch(), count)
        b.records = payload
        r = produce(svc, b)
        assert r.error_code == pb.CORRUPT_MESSAGE, (name, r)
    assert txn_broker.rm.get("t", 0).log_end_offset == 0  # nothing stored, the HW never jumped
    good = with_count(batch(), 2)
    good.records = records(b"a", b"b")
    r = produce(svc, good)
    assert r.error_code == pb.NONE and (r.base_offset, r.last_offset) == (0, 1)


def test_a_compressed_batch_is_refused_since_no_codec_exists(txn_broker):
    b = batch()
    b.attributes = 1  # the low 3 bits: a compression codec
    r = produce(BrokerService(txn_broker), b)
    assert r.error_code == pb.INVALID_RECORD and "compression" in r.error_message


# --- internal topics ----------------------------------------------------------------------------

@pytest.mark.parametrize("topic", internal_topics.INTERNAL_TOPICS)
def test_clients_cannot_produce_to_internal_topics(broker, topic):
    r = produce(BrokerService(broker), batch(), topic=topic)
    assert r.error_code == pb.INVALID_TOPIC_NAME and "internal topic" in r.error_message


def test_clients_cannot_delete_or_create_internal_topics(broker):
    admin = AdminService(broker)
    resp = run(admin.DeleteTopics(apb.DeleteTopicsRequest(names=list(internal_topics.INTERNAL_TOPICS)), None))
    assert [(r.name, r.error_code) for r in resp.results] == [
        (t, pb.INVALID_TOPIC_NAME) for t in internal_topics.INTERNAL_TOPICS]
    resp = run(admin.CreateTopics(apb.CreateTopicsRequest(topics=[
        apb.NewTopic(name=t, partitions=1, replication_factor=1) for t in internal_topics.INTERNAL_TOPICS]), None))
    assert {r.error_code for r in resp.results} == {pb.INVALID_TOPIC_NAME}


# --- proto3 zero-value traps --------------------------------------------------------------------

@pytest.mark.parametrize("unset", ["producer_id", "producer_epoch", "base_sequence"])
def test_an_unset_producer_field_is_invalid_request_never_producer_0(idempotent_broker, unset):
    svc = BrokerService(idempotent_broker)
    b = batch()
    b.producer_id, b.producer_epoch, b.base_sequence = 0, 0, 0
    b.ClearField(unset)
    r = produce(svc, b)
    assert r.error_code == pb.INVALID_REQUEST and unset in r.error_message
    assert idempotent_broker.rm.get("t", 0).log_end_offset == 0


def test_a_batch_without_producer_fields_on_the_wire_is_not_deduplicated_as_producer_0(idempotent_broker):
    """The issue's finding: two different batches with the fields left unset were producer 0,
    sequence 0, and the second was answered duplicate=true and never stored."""
    svc = BrokerService(idempotent_broker)
    for value in (b"first", b"second"):
        b = batch(value)
        for name in ("producer_id", "producer_epoch", "base_sequence"):
            b.ClearField(name)
        r = produce(svc, b)
        assert r.error_code == pb.INVALID_REQUEST and not r.duplicate


def test_a_non_transactional_batch_in_a_transactional_request_is_refused(txn_broker):
    r = produce(BrokerService(txn_broker), batch(), transactional_id="tx-1")
    assert r.error_code == pb.INVALID_REQUEST and "transactional" in r.error_message
    assert txn_broker.rm.get("t", 0).log_end_offset == 0


def test_replication_factor_0_is_refused_and_unset_is_the_default(broker):
    admin = AdminService(broker)
    resp = run(admin.CreateTopics(apb.CreateTopicsRequest(validate_only=True, topics=[
        apb.NewTopic(name="zero", partitions=1, replication_factor=0),
        apb.NewTopic(name="negative", partitions=1, replication_factor=-1),
        apb.NewTopic(name="default", partitions=1)]), None))
    codes = {r.name: r.error_code for r in resp.results}
    assert codes == {"zero": pb.INVALID_REPLICATION_FACTOR, "negative": pb.INVALID_REPLICATION_FACTOR,
                     "default": pb.NONE}


# --- producer ids -------------------------------------------------------------------------------

def test_a_producer_id_the_quorum_never_allocated_is_refused(idempotent_broker):
    """The image's allocated ids are [0, next_producer_id) = [0, 1000): 999999 never was."""
    svc = BrokerService(idempotent_broker)
    b = batch()
    b.producer_id, b.producer_epoch, b.base_sequence = 999_999, 0, 0
    r = produce(svc, b)
    assert r.error_code == pb.INVALID_PRODUCER_ID_MAPPING and "999999" in r.error_message
    assert idempotent_broker.rm.get("t", 0).log_end_offset == 0
    b.producer_id = 999  # allocated
    assert produce(svc, b).error_code == pb.NONE


# --- counts and enums ---------------------------------------------------------------------------

def test_admin_lists_above_the_bound_are_refused_not_cut(broker):
    admin = AdminService(broker)
    n = limits.MAX_TOPICS_PER_ADMIN_REQUEST + 1
    resp = run(admin.CreateTopics(apb.CreateTopicsRequest(validate_only=True, topics=[
        apb.NewTopic(name=f"t{i}", partitions=1) for i in range(n)]), None))
    assert len(resp.results) == n and {r.error_code for r in resp.results} == {pb.INVALID_REQUEST}
    assert str(limits.MAX_TOPICS_PER_ADMIN_REQUEST) in resp.results[0].error_message
    resp = run(admin.DeleteTopics(apb.DeleteTopicsRequest(names=[f"t{i}" for i in range(n)]), None))
    assert len(resp.results) == n and {r.error_code for r in resp.results} == {pb.INVALID_REQUEST}


def test_list_offsets_and_fetch_refuse_unknown_isolation_levels_and_too_many_partitions(broker):
    svc = BrokerService(broker)
    resp = run(svc.ListOffsets(bpb.ListOffsetsRequest(isolation_level=7, partitions=[
        bpb.ListOffsetsPartition(topic="t", partition=0, timestamp_ms=-1)]), None))
    assert resp.results[0].error_code == pb.INVALID_REQUEST
    resp = run(svc.ListOffsets(bpb.ListOffsetsRequest(partitions=[
        bpb.ListOffsetsPartition(topic="t", partition=0, timestamp_ms=-1)] * (limits.MAX_PARTITIONS_PER_REQUEST + 1)),
        None))
    assert [r.error_code for r in resp.results] == [pb.INVALID_REQUEST]
    fetched = run(svc.Fetch(bpb.FetchRequest(isolation_level=9, partitions=[
        bpb.FetchPartition(topic="t", partition=0, fetch_offset=0)]), None))
    assert fetched.results[0].error_code == pb.INVALID_REQUEST
