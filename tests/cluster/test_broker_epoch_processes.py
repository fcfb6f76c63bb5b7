"""Issue 16, item 4 (the part that needs no TLS), on real broker processes: replica fetches and
broker heartbeats are checked against the broker epoch in the metadata image.

The issue's finding: a forged ReplicaFetch stream (the broker epoch was never checked) advanced a
follower's position, so the high watermark moved, and an acks=all write was acknowledged while the
real follower never had it. A forged heartbeat with a stale epoch must not keep a frozen broker
unfenced either. (A forger that knows the current epoch is the authentication's to stop.)"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import grpc
import pytest
from semel.v1 import admin_pb2 as apb
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb
from semel.v1 import controller_pb2 as cpb
from semel.v1 import controller_pb2_grpc as cgrpc
from semel.v1 import replication_pb2 as rpb
from semel.v1 import replication_pb2_grpc as rgrpc

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # three broker processes


@contextlib.contextmanager
def frozen(c: h.Cluster, broker_id: int):
    proc = c.brokers[broker_id].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def broker_epochs(c: h.Cluster, via: int | None = None) -> dict[int, apb.BrokerDescription]:
    described = c.admin_stub(via or c.any_alive()).DescribeCluster(apb.DescribeClusterRequest(), timeout=10)
    return {b.broker_id: b for b in described.brokers}


def forged_fetch(c: h.Cluster, leader: int, replica_id: int, broker_epoch: int, topic: str, fetch_offset: int,
                 leader_epoch: int) -> list[rpb.ReplicaFetchPartitionResult]:
    request = rpb.ReplicaFetchRequest(replica_id=replica_id, broker_epoch=broker_epoch, max_wait_ms=0, partitions=[
        rpb.ReplicaFetchPartition(topic=topic, partition=0, fetch_offset=fetch_offset,
                                  current_leader_epoch=leader_epoch, last_fetched_epoch=leader_epoch)])
    call = rgrpc.ReplicationStub(c.channel(leader)).ReplicaFetch(iter([request]), timeout=10)
    return [r for resp in call for r in resp.results]


def high_watermark(c: h.Cluster, leader: int, topic: str) -> int:
    return h.fetch(c.broker_stub(leader), topic, 0, 0).high_watermark


@pytest.fixture
def patient_cluster(tmp_path):
    """Frozen followers stay in the ISR and unfenced for the whole test."""
    c = h.Cluster(tmp_path, 3, internal_partitions=1, session_timeout_ms=60_000, replica_lag_time_max_ms=60_000,
                  disconnect_grace_ms=60_000)  # no fence on peers' unreachable reports either
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())
        c.close()


def test_a_forged_replica_fetch_with_a_wrong_epoch_or_from_a_non_replica_moves_nothing(patient_cluster):
    c = patient_cluster
    assert c.create_topic("r", partitions=1, rf=3).error_code == pb.NONE
    leader = c.leader_of("r")
    meta = c.partition_meta("r", via=leader)
    follower = next(b for b in meta.replicas if b != leader)
    stub = c.broker_stub(leader)
    assert h.produce(stub, "r", 0, h.make_batch([b"replicated"])).error_code == pb.NONE  # everyone has offset 0
    epoch = broker_epochs(c)[follower].broker_epoch

    with frozen(c, follower):
        written = h.produce(stub, "r", 0, h.make_batch([b"only-on-the-leader-and-one"]), acks=bpb.ACKS_LEADER)
        assert written.error_code == pb.NONE and written.base_offset == 1
        assert high_watermark(c, leader, "r") == 1  # the frozen follower holds it back
        for wrong in (epoch - 1, epoch + 1, 2**63 - 1, -1):
            results = forged_fetch(c, leader, follower, wrong, "r", 2, meta.leader_epoch)
            assert [(r.topic, r.error_code, r.records) for r in results] == [("r", pb.STALE_BROKER_EPOCH, b"")], wrong
            assert high_watermark(c, leader, "r") == 1, f"a forged fetch at epoch {wrong} moved the high watermark"
        acked = h.produce(stub, "r", 0, h.make_batch([b"acks-all"]), timeout_ms=1500)
        assert acked.error_code == pb.REQUEST_TIMED_OUT  # never acknowledged without the real follower

    c.wait_for(lambda: high_watermark(c, leader, "r") == 3, timeout_s=30, what="the thawed follower catching up")

    # A broker that is not a replica of the partition, even at its real epoch, cannot follow it.
    assert c.create_topic("r2", partitions=1, rf=2).error_code == pb.NONE
    leader2 = c.leader_of("r2")
    meta2 = c.partition_meta("r2", via=leader2)
    stranger = next(b for b in c.brokers if b not in meta2.replicas)
    results = forged_fetch(c, leader2, stranger, broker_epochs(c)[stranger].broker_epoch, "r2", 0, meta2.leader_epoch)
    assert [r.error_code for r in results] == [pb.REPLICA_NOT_AVAILABLE]
    assert h.produce(c.broker_stub(leader2), "r2", 0, h.make_batch([b"x"])).error_code == pb.NONE  # real followers fine


def test_forged_heartbeats_with_a_stale_epoch_do_not_keep_a_frozen_broker_unfenced(tmp_path):
    c = h.Cluster(tmp_path, 3, internal_partitions=1)
    try:
        c.start_all()
        described = c.admin_stub(c.any_alive()).DescribeCluster(apb.DescribeClusterRequest(), timeout=10)
        controller = described.controller_id
        victim = next(b for b in c.brokers if b != controller)
        epoch = broker_epochs(c)[victim].broker_epoch
        c.wait_for(lambda: not broker_epochs(c)[victim].fenced, what="the victim unfenced")
        heartbeats = cgrpc.ControllerStub(c.channel(controller))
        with frozen(c, victim):
            deadline = time.monotonic() + 30
            fenced = False
            while not fenced and time.monotonic() < deadline:
                for stale in (epoch - 1, epoch + 1):
                    reply = heartbeats.BrokerHeartbeat(cpb.BrokerHeartbeatRequest(
                        broker_id=victim, broker_epoch=stale, metadata_version=2**62), timeout=5)
                    assert reply.error_code == pb.STALE_BROKER_EPOCH and reply.fenced
                with contextlib.suppress(grpc.RpcError):
                    fenced = broker_epochs(c, via=controller)[victim].fenced  # the victim cannot answer
                time.sleep(0.1)  # heartbeat pacing, as a real forger would send them
            assert fenced, "forged heartbeats kept the frozen broker unfenced"
        c.wait_for(lambda: not broker_epochs(c)[victim].fenced, timeout_s=30, what="the thawed broker unfenced again")
    finally:
        print(c.dump_logs())
        c.close()
