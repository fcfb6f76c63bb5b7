"""Cluster management on real broker processes, through the CLI (issue 18): add partitions and
produce to a new one; describe and alter a topic's config, with the brokers applying it live
(retention at once, not at the next housekeeping round; min ISR on the next produce).

Real broker processes (tests/cluster/broker_harness.py), the `semel` CLI as a subprocess and
the real client `Producer`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from semel.client import Admin, Producer
from semel.v1 import common_pb2

from tests.cluster import broker_harness as h

SEMEL = [sys.executable, "-m", "semel.cli"]
# Retention runs on its own only this rarely here, so a log start that moves proves the altered
# config was applied when it arrived.
HOUSEKEEPING_MS = 3_600_000


def cli(c: h.Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SEMEL_BOOTSTRAP=",".join(b.address for b in c.brokers.values()))
    return subprocess.run([*SEMEL, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def cluster(tmp_path):
    c = h.Cluster(tmp_path, 3, internal_partitions=1, retention_check_interval_ms=HOUSEKEEPING_MS)
    try:
        c.start_all()
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def create(c: h.Cluster, name: str, partitions: int, rf: int, configs: dict[str, str] | None = None) -> None:
    """Created once every broker is unfenced (right after start some may still be fenced)."""
    c.wait_for(lambda: c.create_topic(name, partitions, rf, configs=configs).error_code in (
        common_pb2.NONE, common_pb2.TOPIC_ALREADY_EXISTS), 30, interval_s=0.2, what=f"topic {name} created")


def bootstrap(c: h.Cluster) -> str:
    return ",".join(b.address for b in c.brokers.values())


@pytest.mark.slow
def test_add_partitions_then_produce_to_the_new_one_and_refuse_shrinking(cluster):
    c = cluster
    create(c, "grow", 2, 2)
    out = cli(c, "topic", "add-partitions", "grow", "--count", "4")
    assert out.returncode == 0, out.stderr
    assert "now has 4 partitions" in out.stdout
    md = c.wait_for(lambda: (m := c.metadata(topics=["grow"])).topics[0].partitions and
                    len(m.topics[0].partitions) == 4 and all(p.leader_id > 0 for p in m.topics[0].partitions) and m,
                    30, what="4 led partitions")
    assert all(len(p.replicas) == 2 for p in md.topics[0].partitions)

    shrink = cli(c, "topic", "add-partitions", "grow", "--count", "3")
    assert shrink.returncode == 1 and "Traceback" not in shrink.stderr
    assert "has 4 partitions" in shrink.stderr and "larger" in shrink.stderr, shrink.stderr
    same = cli(c, "topic", "add-partitions", "grow", "--count", "4")
    assert same.returncode == 1 and "has 4 partitions" in same.stderr
    missing = cli(c, "topic", "add-partitions", "nope", "--count", "4")
    assert missing.returncode == 1 and "nope" in missing.stderr

    with Producer(bootstrap(c), acks="all", enable_idempotence=True) as producer:
        acked = [producer.send("grow", f"new-{i}".encode(), partition=3).result(timeout=60) for i in range(5)]
    assert [m.partition for m in acked] == [3] * 5 and [m.offset for m in acked] == list(range(5))
    leader = c.leader_of("grow", 3)
    assert [v for _, v in h.read_all(c.broker_stub(leader), "grow", 3)] == [f"new-{i}".encode() for i in range(5)]


def _log_start(c: h.Cluster, topic: str) -> int:
    with Admin(bootstrap(c)) as admin:
        return admin.describe_topics([topic])[0].partitions[0].log_start_offset


@pytest.mark.slow
def test_describe_and_alter_config_with_kafka_names_applied_live(cluster):
    c = cluster
    create(c, "cfg", 1, 3, {"segment_bytes": "1024"})
    described = cli(c, "topic", "describe-config", "cfg", "--json")
    assert described.returncode == 0, described.stderr
    config = json.loads(described.stdout)
    assert config["segment_bytes"] == "1024" and config["retention_bytes"] == "-1"
    assert config["min_insync_replicas"] == "2"
    table = cli(c, "topic", "describe-config", "cfg").stdout
    assert "retention.bytes" in table and "segment.bytes" in table

    # enough data for a few 1 KiB segments
    with Producer(bootstrap(c), acks="all", enable_idempotence=True) as producer:
        for i in range(40):
            producer.send("cfg", (b"%03d" % i) * 60, partition=0).result(timeout=60)
    assert _log_start(c, "cfg") == 0

    bad = cli(c, "topic", "alter-config", "cfg", "--set", "retention.bites=10")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "retention.bites" in bad.stderr and "retention.bytes" in bad.stderr and "min.insync.replicas" in bad.stderr
    too_big = cli(c, "topic", "alter-config", "cfg", "--set", "min.insync.replicas=4")
    assert too_big.returncode == 1 and "min_insync_replicas" in too_big.stderr and "1..3" in too_big.stderr

    # retention: applied when the new config arrives (housekeeping would run only in an hour)
    out = cli(c, "topic", "alter-config", "cfg", "--set", "retention.bytes=2048")
    assert out.returncode == 0, out.stderr
    c.wait_for(lambda: _log_start(c, "cfg") > 0, 30, interval_s=0.2, what="the leader's log start to move")
    assert json.loads(cli(c, "topic", "describe-config", "cfg", "--json").stdout)["retention_bytes"] == "2048"

    # min ISR: 3 of 3, then one broker stops: acks=all produce is refused at once
    assert cli(c, "topic", "alter-config", "cfg", "--set", "min_insync_replicas=3").returncode == 0
    leader = c.leader_of("cfg", 0)
    follower = next(i for i in c.brokers if i != leader)
    c.terminate(follower, timeout_s=30)
    c.wait_for(lambda: len(c.partition_meta("cfg", 0, via=leader).isr) == 2, 30, what="the ISR to shrink")
    pid = h.init_producer_id(c.channel(leader))
    r = h.produce(c.broker_stub(leader), "cfg", 0, h.make_batch([b"x"], producer_id=pid, producer_epoch=0,
                                                                  base_sequence=0))
    assert r.error_code == common_pb2.NOT_ENOUGH_REPLICAS, r
    # back to the default (2 for RF 3): the same produce succeeds
    reset = cli(c, "topic", "alter-config", "cfg", "--delete", "min.insync.replicas")
    assert reset.returncode == 0, reset.stderr
    c.wait_for(lambda: h.produce(c.broker_stub(leader), "cfg", 0, h.make_batch(
        [b"x"], producer_id=pid, producer_epoch=0, base_sequence=0)).error_code == common_pb2.NONE,
        30, interval_s=0.2, what="acks=all produce with min ISR 2")
