"""Regressions found by the gRPC fuzzer (test_grpc_fuzz.py), each the failing example it found,
against three real broker processes (one cluster for the module)."""

from __future__ import annotations

import pytest
from semel import internal_topics, limits
from semel.v1 import admin_pb2 as apb
from semel.v1 import common_pb2 as pb
from semel.v1 import txn_pb2, txn_pb2_grpc

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # three broker processes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = h.Cluster(tmp_path_factory.mktemp("fuzz-regressions"), 3, internal_partitions=2)
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())
        c.close()


def assert_no_traceback(c: h.Cluster) -> None:
    for i, b in c.brokers.items():
        text = (b.data_dir / "broker.log").read_text(errors="replace")
        assert "Traceback" not in text, f"broker {i}:\n{text[-4000:]}"
        assert b.alive, f"broker {i} exited"


def test_describe_topics_naming_one_topic_thousands_of_times(cluster):
    """Fuzzer example: DescribeTopics(names=["__transaction_state"] * 10001) sent the partitions'
    leaders one ListOffsets with 20002 queries; the leader refused it whole (one INVALID_REQUEST
    result) and the describing broker raised IndexError (gRPC UNKNOWN, a traceback), after
    stalling its loop long enough to fence the other brokers."""
    c = cluster
    admin = c.admin_stub(c.any_alive())
    state = internal_topics.TRANSACTION_STATE_TOPIC
    find = txn_pb2.FindCoordinatorRequest(key="any", key_type=txn_pb2.TRANSACTION)  # creates the topic if need be
    c.wait_for(lambda: txn_pb2_grpc.TransactionsStub(c.channel(c.any_alive())).FindCoordinator(find, timeout=10)
               .error_code == pb.NONE, timeout_s=30, what=f"{state} created and led")
    over = admin.DescribeTopics(apb.DescribeTopicsRequest(names=[state] * (limits.MAX_TOPICS_PER_ADMIN_REQUEST + 1)),
                                timeout=30)
    assert len(over.topics) == limits.MAX_TOPICS_PER_ADMIN_REQUEST + 1
    assert {t.error_code for t in over.topics} == {pb.INVALID_REQUEST}
    assert str(limits.MAX_TOPICS_PER_ADMIN_REQUEST) in over.topics[0].error_message
    at_bound = admin.DescribeTopics(apb.DescribeTopicsRequest(names=[state] * limits.MAX_TOPICS_PER_ADMIN_REQUEST),
                                    timeout=30)
    assert {t.error_code for t in at_bound.topics} == {pb.NONE}
    assert_no_traceback(c)


def test_a_reassignment_with_ten_thousand_replicas_does_not_wedge_the_metadata_quorum(cluster):
    """Fuzzer example: ReassignPartitions(reassignments=[{partition: 1, replicas: [-1] * 10001}])
    (a negative int32 is 10 bytes on the wire) made one metadata command above pysyncobj's 64 KiB batch size; pysyncobj sends such an entry
    in chunks and labels the wrong chunk the last, so every follower failed to decode it
    (UnpicklingError, then TypeError, in its tick thread) and metadata stopped replicating. The
    broker now refuses an oversized command before it reaches Raft."""
    c = cluster
    assert c.create_topic("rz", partitions=2, rf=3).error_code == pb.NONE
    admin = c.admin_stub(c.any_alive())
    r = admin.ReassignPartitions(apb.ReassignPartitionsRequest(reassignments=[apb.PartitionReassignment(
        topic="rz", partition=1, replicas=[-1] * (limits.MAX_PARTITIONS_PER_REQUEST + 1))], timeout_ms=5000), timeout=30)
    assert [(p.error_code, "MAX_METADATA_COMMAND_BYTES" in p.error_message or "semel.limits" in p.error_message)
            for p in r.results] == [(pb.INVALID_REQUEST, True)], r
    # the quorum still commits, on every broker
    assert c.create_topic("rz-after", partitions=1, rf=3).error_code == pb.NONE
    for i in c.brokers:
        c.wait_for(lambda i=i: c.partition_meta("rz-after", via=i).leader_id >= 0, what=f"broker {i} sees rz-after")
    assert_no_traceback(c)


def test_elect_leaders_naming_ten_thousand_long_topics(cluster):
    """Fuzzer example: ElectLeaders(topics=["a" * 1000] * 10001) answered one UNKNOWN_TOPIC result
    per name, each repeating the name in its message: 20 MB, above the largest answer gRPC may
    send, so the call failed in gRPC's core with an ExecuteBatchError traceback in the log."""
    c = cluster
    admin = c.admin_stub(c.any_alive())
    r = admin.ElectLeaders(apb.ElectLeadersRequest(topics=["a" * 1000] * (limits.MAX_TOPICS_PER_ADMIN_REQUEST + 1),
                                                   timeout_ms=5000), timeout=30)
    assert [p.error_code for p in r.results] == [pb.INVALID_REQUEST]
    at_bound = admin.ElectLeaders(apb.ElectLeadersRequest(topics=["a" * 1000] * limits.MAX_TOPICS_PER_ADMIN_REQUEST,
                                                          timeout_ms=5000), timeout=30)
    assert [p.error_code for p in at_bound.results] == [pb.UNKNOWN_TOPIC_OR_PARTITION]  # once per distinct name
    assert_no_traceback(c)
