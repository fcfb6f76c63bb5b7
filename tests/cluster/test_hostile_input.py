"""Issue 16, item 6: hostile or buggy input from a client cannot break a guarantee.

Against the in-process Broker/Admin servicers over a real ReplicaManager (built as in
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

from tests.cluster.test_broker_service_inprocess import (
    FakeBroker,
    batch,
    image,
    real_store_broker,
)


@pytest.fixture
def broker(tmp_path):
    """Leads t-0 with ISR {1, 2} (the in-process tests' plain broker)."""
    b = FakeBroker(tmp_path, image())
    yield b
    b.close()


@pytest.fixture
def txn_broker(tmp_path):
    """Leads t-0 alone (ISR {1}), with producer state and markers."""
    yield from real_store_broker(tmp_path, image(isr=(1,), min_isr=1))


@pytest.fixture
def idempotent_broker(tmp_path):
    """Leads t-0 with ISR {1, 2} (min ISR 2): the follower never fetches."""
    yield from real_store_broker(tmp_path, image())


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


# --- coordinator epochs ---------------------------------------------------------------------------

STATE = internal_topics.TRANSACTION_STATE_TOPIC
STATE_EPOCH = 3  # the leader epoch of the one __transaction_state partition: the real coordinator epoch


def image_with_state_topic(state_leader: int = 2):
    import dataclasses

    from semel.cluster.metadata import state as md

    base = image(isr=(1,), min_isr=1)
    part = md.PartitionState(STATE, 0, (state_leader,), (state_leader,), state_leader, STATE_EPOCH, 1)
    topic = md.Topic(STATE, "99887766554433221100", True, 1, md.TopicConfig(min_insync_replicas=1), (part,))
    return dataclasses.replace(base, topics={**base.topics, STATE: topic})


@pytest.fixture
def marker_broker(tmp_path):
    yield from real_store_broker(tmp_path, image_with_state_topic())


def open_transaction(b) -> None:
    txn = batch(b"txn")
    txn.producer_id, txn.producer_epoch, txn.base_sequence, txn.attributes = 9, 0, 0, 0x10
    assert produce(BrokerService(b), txn).error_code == pb.NONE


def write_marker(b, coordinator_epoch: int, commit: bool = False, tid: str = "tx") -> int:
    from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
    from semel.cluster.broker.txn_service import TxnMarkersService
    from semel.v1 import txn_pb2 as tpb

    svc = TxnMarkersService(b, TxnCoordinatorShell(b))
    req = tpb.WriteTxnMarkersRequest(markers=[tpb.TxnMarker(
        producer_id=9, producer_epoch=0, type=pb.COMMIT if commit else pb.ABORT, coordinator_epoch=coordinator_epoch,
        transactional_id=tid, partitions=[tpb.TopicPartition(topic="t", partition=0)])])
    return run(svc.WriteTxnMarkers(req, None)).markers[0].partitions[0].error_code


def test_a_marker_with_a_coordinator_epoch_the_metadata_never_saw_is_refused(marker_broker):
    """The issue: one WriteTxnMarkers with coordinator_epoch 2147483647 raised the partition's
    coordinator epoch for the producer, so every real marker was fenced and the coordinator
    unloaded its partition. Now the partition refuses it and the real marker still lands."""
    open_transaction(marker_broker)
    end = marker_broker.rm.get("t", 0).log_end_offset
    assert write_marker(marker_broker, 2_147_483_647, commit=True) == pb.UNKNOWN_LEADER_EPOCH
    assert write_marker(marker_broker, STATE_EPOCH + 1, commit=True) == pb.UNKNOWN_LEADER_EPOCH
    assert write_marker(marker_broker, STATE_EPOCH, tid="") == pb.INVALID_REQUEST  # no transactional id
    assert marker_broker.rm.get("t", 0).log_end_offset == end  # nothing written
    assert write_marker(marker_broker, STATE_EPOCH) == pb.NONE  # the real coordinator's marker


def test_an_admin_abort_cannot_raise_the_coordinator_epoch(marker_broker):
    from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
    from semel.cluster.broker.txn_service import TransactionsService
    from semel.v1 import txn_pb2 as tpb

    open_transaction(marker_broker)
    svc = TransactionsService(marker_broker, TxnCoordinatorShell(marker_broker))
    req = tpb.AbortTransactionRequest(topic="t", partition=0, producer_id=9, producer_epoch=0,
                                      coordinator_epoch=2_147_483_647)
    r = run(svc.AbortTransaction(req, None))
    assert r.error_code == pb.INVALID_REQUEST
    assert write_marker(marker_broker, STATE_EPOCH) == pb.NONE  # the real coordinator is not fenced


def test_a_fence_answer_is_believed_only_when_the_quorum_says_the_coordinator_moved(tmp_path):
    """Defence in depth: a TRANSACTION_COORDINATOR_FENCED answer to a marker unloads the
    coordinator's partition only if a synced image no longer names this broker its leader at
    the marker's epoch; otherwise the marker is retried and the partition stays loaded."""
    from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
    from semel.coordinator.txn_markers import MarkerSend
    from semel.coordinator.txn_state import MarkerRequest, TopicPartition

    class Synced:
        async def sync(self) -> bool:
            return True

    for state_leader, believed in ((1, False), (2, True)):
        gen = real_store_broker(tmp_path / str(state_leader), image_with_state_topic(state_leader))
        b = next(gen)
        try:
            shell = TxnCoordinatorShell(b)
            shell._quorum_read = Synced()  # type: ignore[assignment]
            assert shell._core() is not None
            tp = TopicPartition("t", 0)
            send = MarkerSend(1, 1, (MarkerRequest("tx", tp, True, 9, 0, STATE_EPOCH),))
            out = run(shell._confirmed_fences(send, {(9, tp): pb.TRANSACTION_COORDINATOR_FENCED}))
            expected = pb.TRANSACTION_COORDINATOR_FENCED if believed else pb.UNKNOWN_LEADER_EPOCH
            assert out == {(9, tp): expected}
            assert shell.forged_fences == (0 if believed else 1)
        finally:
            gen.close()


def test_unknown_enum_values_and_overlong_lists_in_txn_and_group_rpcs_are_invalid_request(marker_broker):
    """ListTransactions with an unknown state answered gRPC UNKNOWN (a ValueError traceback);
    the other lists were cut at their bound or their enums ignored."""
    from semel.cluster.broker.coordinator_lookup import find_coordinator
    from semel.cluster.broker.group_service import GroupsService
    from semel.cluster.broker.server import ReplicationService
    from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
    from semel.cluster.broker.txn_service import TransactionsService
    from semel.v1 import group_pb2 as gpb
    from semel.v1 import replication_pb2 as rpb
    from semel.v1 import txn_pb2 as tpb

    txns = TransactionsService(marker_broker, TxnCoordinatorShell(marker_broker))
    listed = run(txns.ListTransactions(tpb.ListTransactionsRequest(state_filters=[2, 99]), None))
    assert listed.error_code == pb.INVALID_REQUEST and "99" in listed.error_message
    described = run(txns.DescribeTransactions(tpb.DescribeTransactionsRequest(
        transactional_ids=[f"t{i}" for i in range(limits.MAX_LISTED_TRANSACTIONS + 1)]), None))
    assert {d.error_code for d in described.transactions} == {pb.INVALID_REQUEST}
    found = find_coordinator(marker_broker.quorum.image(), "k", 5, metadata_current=True)  # type: ignore[arg-type]
    assert found.error_code == pb.INVALID_REQUEST
    assert write_marker_of_type(marker_broker, 7) == pb.INVALID_REQUEST  # neither COMMIT nor ABORT

    groups = GroupsService(None)  # type: ignore[arg-type]  # every refusal below comes before the coordinator
    assert run(groups.ListGroups(gpb.ListGroupsRequest(states=[1, 42]), None)).error_code == pb.INVALID_REQUEST
    many = run(groups.DescribeGroups(gpb.DescribeGroupsRequest(
        group_ids=[f"g{i}" for i in range(limits.MAX_GROUPS_PER_REQUEST + 1)]), None))
    assert len(many.groups) == limits.MAX_GROUPS_PER_REQUEST + 1
    assert {g.error_code for g in many.groups} == {pb.INVALID_REQUEST}
    reset = run(groups.ResetOffsets(gpb.ResetOffsetsRequest(group_id="g", partitions=[
        gpb.ResetPartition(topic="t", partition=0)] * (limits.MAX_PARTITIONS_PER_REQUEST + 1)), None))
    assert reset.error_code == pb.INVALID_REQUEST
    fetched = run(groups.OffsetFetch(gpb.OffsetFetchRequest(group_id="g", topics=[gpb.TopicPartitions(
        topic="t", partitions=list(range(limits.MAX_PARTITIONS_PER_REQUEST + 1)))]), None))
    assert fetched.error_code == pb.INVALID_REQUEST and not fetched.offsets  # was one answer per partition, unbounded
    epochs = run(ReplicationService(marker_broker).OffsetForLeaderEpoch(rpb.OffsetForLeaderEpochRequest(partitions=[
        rpb.EpochQuery(topic="t", partition=0)] * (limits.MAX_PARTITIONS_PER_REQUEST + 1)), None))
    assert [r.error_code for r in epochs.results] == [pb.INVALID_REQUEST]


def write_marker_of_type(b, marker_type: int) -> int:
    from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
    from semel.cluster.broker.txn_service import TxnMarkersService
    from semel.v1 import txn_pb2 as tpb

    req = tpb.WriteTxnMarkersRequest(markers=[tpb.TxnMarker(
        producer_id=9, producer_epoch=0, type=marker_type, coordinator_epoch=STATE_EPOCH, transactional_id="tx",
        partitions=[tpb.TopicPartition(topic="t", partition=0)])])
    return run(TxnMarkersService(b, TxnCoordinatorShell(b)).WriteTxnMarkers(req, None)).markers[0].partitions[0].error_code


# --- proto3 zero-value traps in the transaction RPCs -------------------------------------------------

def test_txn_rpcs_with_an_unset_producer_id_or_epoch_are_invalid_request_never_producer_0(marker_broker):
    """Each transaction RPC that names a producer, sent by a client that left producer_id or
    producer_epoch unset (proto3 would read 0: a real producer's identity), is refused with a
    message naming the field, before any coordinator or partition state is touched."""
    from semel.cluster.broker.group_service import GroupsService
    from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
    from semel.cluster.broker.txn_service import TransactionsService, TxnMarkersService
    from semel.v1 import group_pb2 as gpb
    from semel.v1 import txn_pb2 as tpb

    shell = TxnCoordinatorShell(marker_broker)
    txns, markers = TransactionsService(marker_broker, shell), TxnMarkersService(marker_broker, shell)
    groups = GroupsService(None)  # type: ignore[arg-type]  # the refusal comes before the coordinator
    tp = [tpb.TopicPartition(topic="t", partition=0)]
    calls = {
        "InitProducerId": (txns.InitProducerId, tpb.InitProducerIdRequest(transactional_id="tx",
                                                                          transaction_timeout_ms=1000)),
        "AddPartitionsToTxn": (txns.AddPartitionsToTxn, tpb.AddPartitionsToTxnRequest(transactional_id="tx",
                                                                                      partitions=tp)),
        "AddOffsetsToTxn": (txns.AddOffsetsToTxn, tpb.AddOffsetsToTxnRequest(transactional_id="tx", group_id="g")),
        "EndTxn": (txns.EndTxn, tpb.EndTxnRequest(transactional_id="tx", commit=True)),
        "AbortTransaction": (txns.AbortTransaction, tpb.AbortTransactionRequest(topic="t", partition=0)),
        "VerifyTransaction": (markers.VerifyTransaction, tpb.VerifyTransactionRequest(transactional_id="tx",
                                                                                     partitions=tp)),
        "TxnOffsetCommit": (groups.TxnOffsetCommit, gpb.TxnOffsetCommitRequest(transactional_id="tx", group_id="g",
                                                                              member_epoch=-1)),
    }
    for name, (rpc, request) in calls.items():
        for unset in ("producer_id", "producer_epoch"):
            req = type(request)()
            req.CopyFrom(request)
            req.producer_id, req.producer_epoch = 0, 0  # producer 0, epoch 0: what proto3 made of nothing
            if name == "AbortTransaction":
                req.coordinator_epoch = 0
            req.ClearField(unset)
            r = run(rpc(req, None))
            assert r.error_code == pb.INVALID_REQUEST and unset in r.error_message, (name, unset, r)
    abort = tpb.AbortTransactionRequest(topic="t", partition=0, producer_id=9, producer_epoch=0)
    r = run(txns.AbortTransaction(abort, None))
    assert r.error_code == pb.INVALID_REQUEST and "coordinator_epoch" in r.error_message
    # an idempotent producer (no transactional id) sends neither: it gets a fresh id, not a refusal
    assert run(txns.InitProducerId(tpb.InitProducerIdRequest(), None)).error_code != pb.INVALID_REQUEST


def test_a_marker_with_an_unset_producer_id_is_refused(marker_broker):
    open_transaction(marker_broker)
    end = marker_broker.rm.get("t", 0).log_end_offset
    from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
    from semel.cluster.broker.txn_service import TxnMarkersService
    from semel.v1 import txn_pb2 as tpb

    for unset in ("producer_id", "producer_epoch"):
        marker = tpb.TxnMarker(producer_id=9, producer_epoch=0, type=pb.ABORT, coordinator_epoch=STATE_EPOCH,
                               transactional_id="tx", partitions=[tpb.TopicPartition(topic="t", partition=0)])
        marker.ClearField(unset)
        svc = TxnMarkersService(marker_broker, TxnCoordinatorShell(marker_broker))
        out = run(svc.WriteTxnMarkers(tpb.WriteTxnMarkersRequest(markers=[marker]), None))
        assert out.markers[0].partitions[0].error_code == pb.INVALID_REQUEST
    assert marker_broker.rm.get("t", 0).log_end_offset == end
