"""Moving replicas and leaders on real broker processes, through the CLI (issue 18):
`semel partition reassign` under a steady idempotent producer (nothing lost or duplicated),
`semel cluster decommission` (every replica leaves the broker, the data stays readable), and
`semel leader elect` restoring preferred leaders after a restart.

Real broker processes (tests/cluster/broker_harness.py), the `semel` CLI as a subprocess, and
the real client `Producer`.
"""

from __future__ import annotations

import time

import pytest
from semel.client import Producer

from tests.cluster import broker_harness as h
from tests.cluster.test_ops_processes import bootstrap, cli, create
from tests.cluster.test_rolling_restart import SteadyProducer


def replicas_of(c: h.Cluster, topic: str, partition: int = 0) -> tuple[int, ...]:
    return tuple(c.partition_meta(topic, partition).replicas)


def stored_values(c: h.Cluster, topic: str, partition: int) -> list[bytes]:
    leader = c.leader_of(topic, partition)
    return [v for _, v in h.read_all(c.broker_stub(leader), topic, partition)]


def replica_dirs(c: h.Cluster, broker_id: int, topic: str) -> list[str]:
    logs = c.brokers[broker_id].data_dir
    return sorted(str(p.name) for p in logs.rglob(f"{topic}-*") if p.is_dir())


@pytest.mark.slow
def test_reassign_from_1_2_to_2_3_under_a_steady_producer_loses_nothing(tmp_path):
    c = h.Cluster(tmp_path, 3, internal_partitions=1, reassignment_throttle_bytes_per_s=200_000)
    steady = None
    try:
        c.start_all()
        create(c, "moving", 1, 2)
        if replicas_of(c, "moving") != (1, 2):  # start from {1, 2}: itself a reassignment
            out = cli(c, "partition", "reassign", "moving", "0", "--replicas", "1,2")
            assert out.returncode == 0, out.stdout + out.stderr
        assert replicas_of(c, "moving") == (1, 2)
        steady = SteadyProducer(bootstrap(c), "moving", 1)
        steady.thread.start()
        c.wait_for(lambda: steady.check() >= 100, 60, what="100 acks before the move")

        out = cli(c, "partition", "reassign", "moving", "0", "--replicas", "2,3")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "moving-0 -> 2,3: done" in out.stdout
        c.wait_for(lambda n=len(steady.acked): len(steady.acked) >= n + 50, 60, what="50 acks after the move")
        steady.stop.set()
        steady.thread.join(120)
        steady.producer.close()
        assert not steady.failed, steady.failed[:3]

        p = c.partition_meta("moving", 0)
        assert tuple(p.replicas) == (2, 3) and p.leader_id in (2, 3) and sorted(p.isr) == [2, 3]
        values = stored_values(c, "moving", 0)
        assert len(values) == len(set(values)), "a value stored twice"
        assert values == [v for *_, v in steady.acked]  # every ack, in order, nothing else
        # broker 1 dropped its replica (files included); broker 3 holds a full copy
        c.wait_for(lambda: not replica_dirs(c, 1, "moving"), 30, interval_s=0.2, what="broker 1 to delete its replica")
        c.terminate(2, timeout_s=30)  # broker 3 must now lead with every record
        c.wait_for(lambda: c.partition_meta("moving", 0, via=3).leader_id == 3, 30, what="broker 3 leading")
        assert stored_values(c, "moving", 0) == values
        # refusals name the problem and exit 1
        bad = cli(c, "partition", "reassign", "moving", "0", "--replicas", "3,9", "--wait-timeout-s", "5")
        assert bad.returncode == 1 and "no broker 9" in bad.stderr, bad.stderr
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        if steady is not None:
            steady.stop.set()
        c.close()


@pytest.mark.slow
def test_decommission_moves_every_replica_off_the_broker(tmp_path):
    c = h.Cluster(tmp_path, 4, voters=3, internal_partitions=1)
    try:
        c.start_all()
        create(c, "drain", 4, 2)
        with Producer(bootstrap(c), acks="all", enable_idempotence=True) as producer:
            for i in range(40):
                producer.send("drain", f"d{i}".encode(), partition=i % 4)
            producer.flush(60)
        before = {p: stored_values(c, "drain", p) for p in range(4)}
        assert all(len(v) == 10 for v in before.values())
        hosted = [p.partition for p in c.metadata(topics=["drain"]).topics[0].partitions if 4 in p.replicas]
        assert hosted, "broker 4 holds no replica of the topic; nothing to drain"

        out = cli(c, "cluster", "decommission", "4")
        assert out.returncode == 0, out.stdout + out.stderr
        md = c.metadata()
        assert not [(t.name, p.partition) for t in md.topics for p in t.partitions if 4 in p.replicas]
        assert all(len(p.replicas) == 2 for p in md.topics[0].partitions if md.topics[0].name == "drain")
        c.terminate(4, timeout_s=30)
        assert {p: stored_values(c, "drain", p) for p in range(4)} == before
        again = cli(c, "cluster", "decommission", "4")
        assert again.returncode == 0 and "holds no replicas" in again.stdout
        unknown = cli(c, "cluster", "decommission", "7")
        assert unknown.returncode == 1 and "no broker 7" in unknown.stderr
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


@pytest.mark.slow
def test_leader_elect_restores_preferred_leaders_after_a_restart(tmp_path):
    # automatic rebalancing only past 100% imbalance: never, so only `leader elect` moves leaders back
    c = h.Cluster(tmp_path, 3, internal_partitions=1, leader_imbalance_percent=100)
    try:
        c.start_all()
        create(c, "elect", 3, 3)
        md = c.wait_for(lambda: (m := c.metadata(topics=["elect"])) and all(
            p.leader_id == p.replicas[0] for p in m.topics[0].partitions) and m, 30, what="preferred leaders")
        victim = md.topics[0].partitions[0].replicas[0]
        c.terminate(victim, timeout_s=30)
        c.start(victim)
        c.wait_ready([victim], 60)

        def displaced() -> bool:
            parts = c.metadata(topics=["elect"]).topics[0].partitions
            return all(len(p.isr) == 3 for p in parts) and any(p.leader_id != p.replicas[0] for p in parts)

        c.wait_for(displaced, 60, what=f"broker {victim} back in every ISR, not leading")
        out = cli(c, "leader", "elect", "elect")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"leader {victim}" in out.stdout
        parts = c.metadata(topics=["elect"]).topics[0].partitions
        assert all(p.leader_id == p.replicas[0] for p in parts), parts
        again = cli(c, "leader", "elect")
        assert again.returncode == 0 and "preferred replica" in again.stdout
        missing = cli(c, "leader", "elect", "nope")
        assert missing.returncode == 1 and "nope" in missing.stdout + missing.stderr
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


@pytest.mark.slow
def test_automatic_rebalancing_returns_leadership_to_the_restarted_broker(tmp_path):
    """Kafka's auto.leader.rebalance.enable (the default here): once the restarted preferred
    leader is back in the ISR and settled, the controller moves leadership back unasked."""
    c = h.Cluster(tmp_path, 3, internal_partitions=1)
    try:
        c.start_all()
        create(c, "auto", 3, 3)
        md = c.wait_for(lambda: (m := c.metadata(topics=["auto"])) and all(
            p.leader_id == p.replicas[0] for p in m.topics[0].partitions) and m, 30, what="preferred leaders")
        victim = md.topics[0].partitions[0].replicas[0]
        c.terminate(victim, timeout_s=30)
        assert all(p.leader_id != victim for p in c.metadata(topics=["auto"]).topics[0].partitions)
        c.start(victim)
        c.wait_ready([victim], 60)
        c.wait_for(lambda: all(p.leader_id == p.replicas[0] for p in c.metadata(topics=["auto"]).topics[0].partitions),
                   90, interval_s=0.5, what=f"leadership back on broker {victim} without `leader elect`")
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


THROTTLE_BYTES_PER_S = 1_000_000


@pytest.mark.slow
def test_reassignment_copy_is_throttled(tmp_path):
    """The new replica catches up at most --reassignment-throttle-bytes-per-s (after the bucket's
    first second): 4 MB at 1 MB/s cannot complete in under ~2.5 s, however fast loopback is.
    Producers to the partition are not throttled; their latency meanwhile is printed."""
    c = h.Cluster(tmp_path, 3, internal_partitions=1, reassignment_throttle_bytes_per_s=THROTTLE_BYTES_PER_S)
    try:
        c.start_all()
        create(c, "heavy", 1, 2)
        old = replicas_of(c, "heavy")
        spare = next(b for b in c.brokers if b not in old)
        payload = b"x" * 10_000
        with Producer(bootstrap(c), acks="all", linger_ms=20) as producer:
            for _ in range(400):
                producer.send("heavy", payload, partition=0)
            producer.flush(120)
            t0 = time.monotonic()
            out = cli(c, "partition", "reassign", "heavy", "0", "--replicas", f"{old[0]},{spare}", "--no-wait")
            assert out.returncode == 0, out.stdout + out.stderr
            latencies_ms = []
            while replicas_of(c, "heavy") != (old[0], spare):
                s = time.monotonic()
                producer.send("heavy", b"during", partition=0).result(timeout=60)
                latencies_ms.append((time.monotonic() - s) * 1000)
                assert time.monotonic() - t0 < 120, "the reassignment did not complete in 120 s"
            took_s = time.monotonic() - t0
        size = 400 * len(payload)
        floor_s = (size - THROTTLE_BYTES_PER_S) / THROTTLE_BYTES_PER_S * 0.6
        latencies_ms.sort()
        print(f"THROTTLED REASSIGNMENT: {size / 1e6:.1f} MB at {THROTTLE_BYTES_PER_S / 1e6:.1f} MB/s took "
              f"{took_s:.1f} s (floor {floor_s:.1f} s); {len(latencies_ms)} acks=all produces meanwhile, "
              f"median {latencies_ms[len(latencies_ms) // 2]:.0f} ms, max {latencies_ms[-1]:.0f} ms")
        assert took_s >= floor_s
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()
