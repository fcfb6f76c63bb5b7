"""The partition-replica limit against real brokers: a topic creation or growth that would put
more replicas on a broker than --max-partition-replicas-per-broker is refused with
POLICY_VIOLATION, nothing is created, and the message says the limit and how to raise it; the
default comes from the process's open-file limit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from semel import limits
from semel.client import Admin
from semel.client.errors import PolicyViolationError  # type: ignore[attr-defined]
from semel.v1 import admin_pb2, common_pb2

from tests.cluster import broker_harness as h

LIMIT = 10  # partition replicas per broker; the internal topics (1 partition each, RF 3) hold 2


@pytest.fixture
def cluster(tmp_path):
    c = h.Cluster(tmp_path, 3, internal_partitions=1, max_partition_replicas_per_broker=LIMIT)
    try:
        c.start_all()
        # the controller creates the internal topics once the brokers are unfenced: the counts
        # below include their 2 replicas per broker, so wait for them (CI created "over" before)
        internal = ["__consumer_offsets", "__transaction_state"]
        c.wait_for(lambda: {t.name for t in c.metadata(topics=internal).topics if t.partitions
                            and t.partitions[0].leader_id > 0} == set(internal),
                   timeout_s=120, interval_s=0.2, what="the internal topics")
        yield c
    finally:
        c.close()


def create(cluster, name: str, partitions: int) -> admin_pb2.TopicResult:
    """CreateTopics RF 3, asked again while a broker is briefly fenced (a loaded machine can miss
    a 1 s session): INVALID_REPLICATION_FACTOR is checked before the replica limit."""
    result = None

    def answered() -> bool:
        nonlocal result
        result = cluster.create_topic(name, partitions=partitions, rf=3, timeout_ms=30_000)
        return result.error_code != common_pb2.INVALID_REPLICATION_FACTOR

    cluster.wait_for(answered, timeout_s=120, interval_s=0.5, what=f"{name}: all brokers unfenced")
    return result


def test_creations_beyond_the_limit_are_refused_with_the_limit_named(cluster):
    # RF 3 on 3 brokers: every partition puts one replica on each broker
    assert create(cluster, "fits", 6).error_code == common_pb2.NONE
    refused = create(cluster, "over", 4)
    assert refused.error_code == common_pb2.POLICY_VIOLATION, refused
    assert f"limit of {LIMIT}" in refused.error_message and "--max-partition-replicas-per-broker" in refused.error_message
    names = [t.name for t in cluster.metadata().topics]
    assert "over" not in names and "fits" in names

    bootstrap = cluster.brokers[1].address
    with Admin(bootstrap) as admin:
        with pytest.raises(PolicyViolationError) as info:  # fatal: refused at once, not retried
            admin.create_partitions("fits", 9, timeout_ms=30_000)
        assert f"limit of {LIMIT}" in str(info.value)
        assert len(admin.metadata(["fits"]).topics["fits"]) == 6
        # up to the limit is fine: 2 internal + 8 = 10 replicas on each broker
        admin.create_partitions("fits", 8, timeout_ms=30_000)
        assert len(admin.metadata(["fits"]).topics["fits"]) == 8
        # and the dry run answers the same
        stub = cluster.admin_stub(2)
        dry = stub.CreateTopics(admin_pb2.CreateTopicsRequest(topics=[admin_pb2.NewTopic(
            name="dry", partitions=1, replication_factor=1)], validate_only=True, timeout_ms=10_000), timeout=20)
        assert dry.results[0].error_code == common_pb2.POLICY_VIOLATION, dry


def test_the_default_limit_comes_from_the_open_file_limit():
    """A broker process with RLIMIT_NOFILE n allows (n - FDS_RESERVED) // FDS_PER_PARTITION_REPLICA."""
    nofile = limits.FDS_RESERVED + 400 * limits.FDS_PER_PARTITION_REPLICA
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1])); from semel.cluster.broker.replica_limit import PartitionReplicaLimit; "
            "l = PartitionReplicaLimit.of(0); print(l.replicas, l.nofile); print(l.explain(2, 401))" % nofile)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == f"400 {nofile}"
    assert f"RLIMIT_NOFILE {nofile}" in out[1] and "ulimit -n" in out[1] and "broker 2 would host 401" in out[1]
    assert limits.partition_replicas_per_broker_for(100) == limits.MIN_PARTITION_REPLICAS_PER_BROKER
