"""The gRPC edge: protobuf <-> cores, list/describe views, offset-reset resolution."""

from __future__ import annotations

from semel.coordinator.group_state import HeartbeatResponse
from semel.coordinator.group_wire import (
    PartitionFacts,
    commit_request_from_proto,
    commit_response_to_proto,
    describe_group,
    fetch_partitions_from_proto,
    fetch_result_to_proto,
    heartbeat_request_from_proto,
    heartbeat_response_to_proto,
    list_groups,
    resolve_reset,
    txn_commit_request_from_proto,
)
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2
from semel.v1 import group_pb2 as pb

E = common_pb2.ErrorCode
T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_heartbeat_presence_of_subscription_and_owned():
    bare = heartbeat_request_from_proto(pb.ConsumerGroupHeartbeatRequest(group_id="g", member_id="m", member_epoch=3))
    assert bare.subscribed_topics is None and bare.owned is None
    full = pb.ConsumerGroupHeartbeatRequest(group_id="g", member_epoch=0, rebalance_timeout_ms=9, client_id="c")
    full.subscription.SetInParent()  # present but empty: subscribed to nothing
    full.owned.partitions.add(topic="t", partitions=[1, 0])
    req = heartbeat_request_from_proto(pb.ConsumerGroupHeartbeatRequest.FromString(full.SerializeToString()))
    assert req.subscribed_topics == () and req.owned == {T0, T1}
    assert (req.rebalance_timeout_ms, req.client_id, req.member_id) == (9, "c", "")


def test_heartbeat_response():
    msg = heartbeat_response_to_proto(HeartbeatResponse(E.NONE, "", "m", 4, 100, frozenset({T1, T0})))
    assert msg.member_epoch == 4 and msg.HasField("assignment")
    assert [(p.topic, list(p.partitions)) for p in msg.assignment.partitions] == [("t", [0, 1])]
    err = heartbeat_response_to_proto(HeartbeatResponse(E.FENCED_MEMBER_EPOCH, "x", "m"))
    assert err.error_code == E.FENCED_MEMBER_EPOCH and not err.HasField("assignment")


def test_commit_and_fetch_through_protos(driver):
    d = driver()
    a = d.join("g")
    msg = pb.OffsetCommitRequest(group_id="g", member_id=a.member_id, member_epoch=a.member_epoch)
    msg.topics.add(topic="t").partitions.add(partition=0, committed_offset=5, committed_leader_epoch=2, metadata="m")
    msg.topics[0].partitions.add(partition=1, committed_offset=-3)
    decision = d._complete(d.shard.offsets.prepare_commit(commit_request_from_proto(msg), d.shard.groups, 7))
    resp = commit_response_to_proto(decision)
    assert resp.error_code == E.NONE
    assert [(p.partition, p.error_code) for p in resp.topics[0].partitions] == [(0, E.NONE), (1, E.INVALID_REQUEST)]
    fetch = pb.OffsetFetchRequest(group_id="g", require_stable=True)
    fetch.topics.add(topic="t", partitions=[0, 1])
    parts = fetch_partitions_from_proto(fetch)
    out = fetch_result_to_proto(d.fetch("g", parts, True))
    assert [(o.partition, o.committed_offset, o.committed_leader_epoch, o.metadata) for o in out.offsets] == [
        (0, 5, 2, "m"), (1, -1, -1, "")]
    assert fetch_partitions_from_proto(pb.OffsetFetchRequest(group_id="g")) is None


def test_txn_commit_from_proto():
    msg = pb.TxnOffsetCommitRequest(transactional_id="tx", producer_id=4, producer_epoch=2, group_id="g",
                                    member_id="m", member_epoch=3)
    msg.topics.add(topic="t").partitions.add(partition=1, committed_offset=9)
    req = txn_commit_request_from_proto(msg)
    assert (req.transactional_id, req.producer_id, req.producer_epoch, req.member_epoch) == ("tx", 4, 2, 3)
    assert req.offsets[0].committed_offset == 9 and req.offsets[0].partition == 1


def test_list_and_describe(driver):
    d = driver()
    a = d.join("g", member_id="a")
    d.commit("g", {("t", 0): 4}, "a", a.member_epoch)
    d.commit("simple", {("t", 1): 2})
    d.txn_commit("simple", {("t", 0): 9}, producer_id=3)
    listed = {(g.group_id, g.state, g.member_count) for g in list_groups(d.shard)}
    assert listed == {("g", pb.GROUP_STATE_STABLE, 1), ("simple", pb.GROUP_STATE_EMPTY, 0)}
    assert [g.group_id for g in list_groups(d.shard, frozenset({pb.GROUP_STATE_EMPTY}))] == ["simple"]
    g = describe_group(d.shard, "g", include_offsets=True, last_stable_offsets={T0: 10})
    assert g.error_code == E.NONE and g.group_epoch == 1 and g.assignment_epoch == 1
    (m,) = g.members
    assert m.member_id == "a" and m.state == pb.MEMBER_STATE_STABLE and list(m.subscribed_topics) == ["t"]
    assert [(o.partition, o.committed_offset, o.lag) for o in g.offsets] == [(0, 4, 6)]
    s = describe_group(d.shard, "simple", include_offsets=True)
    assert s.state == pb.GROUP_STATE_EMPTY and not s.members
    assert [(o.partition, o.committed_offset, o.pending_transactional, o.lag) for o in s.offsets] == [
        (0, -1, True, -1), (1, 2, False, -1)]
    missing = describe_group(d.shard, "nope")
    assert missing.error_code == E.GROUP_ID_NOT_FOUND and missing.state == pb.GROUP_STATE_DEAD


def test_resolve_reset():
    facts = PartitionFacts(log_start_offset=10, last_stable_offset=50, offset_for_timestamp=30)
    assert resolve_reset(pb.OFFSET_RESET_TO_OFFSET, 20, -1, facts) == (E.NONE, 20)
    assert resolve_reset(pb.OFFSET_RESET_TO_OFFSET, 99, -1, facts) == (E.NONE, 50)
    assert resolve_reset(pb.OFFSET_RESET_TO_OFFSET, -1, -1, facts)[0] == E.INVALID_REQUEST
    assert resolve_reset(pb.OFFSET_RESET_TO_EARLIEST, 0, 40, facts) == (E.NONE, 10)
    assert resolve_reset(pb.OFFSET_RESET_TO_LATEST, 0, 40, facts) == (E.NONE, 50)
    assert resolve_reset(pb.OFFSET_RESET_TO_TIMESTAMP, 123, 40, facts) == (E.NONE, 30)
    assert resolve_reset(pb.OFFSET_RESET_TO_TIMESTAMP, 123, 40, PartitionFacts(10, 50)) == (E.NONE, 50)
    assert resolve_reset(pb.OFFSET_RESET_SHIFT_BY, -5, 40, facts) == (E.NONE, 35)
    assert resolve_reset(pb.OFFSET_RESET_SHIFT_BY, -100, 40, facts) == (E.NONE, 10)
    assert resolve_reset(pb.OFFSET_RESET_SHIFT_BY, 3, -1, facts) == (E.NONE, 13)
    assert resolve_reset(pb.OFFSET_RESET_TO_LATEST, 0, 40, None)[0] == E.UNKNOWN_TOPIC_OR_PARTITION
    assert resolve_reset(77, 0, 40, facts)[0] == E.INVALID_REQUEST
