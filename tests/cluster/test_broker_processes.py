"""Real broker processes on loopback, raw gRPC stubs (no client library).

Covers: produce/fetch/list-offsets and their errors, long-poll, health + reflection, admin,
acks=all writes surviving kill -9 of the leader (same offsets, every replica byte for byte),
divergent follower truncation, min ISR, full-cluster restart, losing the quorum majority,
and the failover time (printed; see the report in docs/design.md).
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from semel.clock import wall_clock_ms
from semel.v1 import broker_pb2, common_pb2, replication_pb2, replication_pb2_grpc

from tests.cluster import broker_harness as h

NONE = common_pb2.NONE
FLAGS = dict(internal_partitions=1)


@pytest.fixture
def cluster(tmp_path):
    c = h.Cluster(tmp_path, 3, **FLAGS)
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())  # pytest shows captured output only when the test failed
        c.close()


def ok(result) -> None:
    assert result.error_code == NONE, f"{common_pb2.ErrorCode.Name(result.error_code)}: {result.error_message}"


def produce_values(c: h.Cluster, topic: str, values: list[bytes], partition: int = 0,
                   acks: int = broker_pb2.ACKS_ALL) -> list[tuple[int, bytes]]:
    retriable = (common_pb2.NOT_LEADER_OR_FOLLOWER, common_pb2.LEADER_NOT_AVAILABLE)
    for _ in range(200):  # a new topic's leader may take a few ms to apply the metadata
        leader = c.leader_of(topic, partition)
        r = h.produce(c.broker_stub(leader), topic, partition, h.make_batch(values), acks=acks)
        if r.error_code not in retriable:
            break
        time.sleep(0.01)
    ok(r)
    return [(r.base_offset + i, v) for i, v in enumerate(values)]


def log_bytes(c: h.Cluster, broker_id: int, topic: str, partition: int = 0) -> bytes:
    dirs = list((c.brokers[broker_id].data_dir / "logs").glob(f"{topic}-{partition}.*"))
    assert len(dirs) == 1, dirs
    return b"".join(p.read_bytes() for p in sorted(dirs[0].glob("*.log")))


def wait_converged(c: h.Cluster, topic: str, ids: list[int], partition: int = 0, timeout_s: float = 15) -> bytes:
    def same():
        data = [log_bytes(c, i, topic, partition) for i in ids]
        return data[0] if all(d == data[0] for d in data) and data[0] else None
    return c.wait_for(same, timeout_s, what=f"replicas {ids} of {topic}-{partition} byte-identical")


# --- basics on one cluster ------------------------------------------------------------------


def test_produce_fetch_list_offsets_and_errors(cluster):
    c = cluster
    ok(c.create_topic("basics", partitions=2, rf=3))
    leader = c.leader_of("basics", 0)
    stub = c.broker_stub(leader)
    follower = next(i for i in c.brokers if i != leader)

    # health + reflection
    hs = health_pb2_grpc.HealthStub(c.channel(leader))
    assert hs.Check(health_pb2.HealthCheckRequest(service="semel.v1.Broker")).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(c.channel(leader))
    [answer] = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"semel.v1.Broker", "semel.v1.Admin", "semel.v1.Replication", "grpc.health.v1.Health"} <= names

    t0 = wall_clock_ms()
    acked = produce_values(c, "basics", [b"a", b"b", b"c"])
    acked += produce_values(c, "basics", [b"d"], acks=broker_pb2.ACKS_LEADER)
    assert [o for o, _ in acked] == [0, 1, 2, 3]
    c.wait_for(lambda: h.fetch(stub, "basics", 0, 0).high_watermark == 4, what="HW 4")
    assert h.read_all(stub, "basics") == acked

    # long-poll: a parked fetch is woken by a produce, not by a timer
    result = {}
    t = threading.Thread(target=lambda: result.update(r=h.fetch(stub, "basics", 0, 4, max_wait_ms=5000, min_bytes=1)))
    started = time.monotonic()
    t.start()
    time.sleep(0.2)
    produce_values(c, "basics", [b"e"])
    t.join(10)
    assert result["r"].batches and result["r"].batches[0].base_offset == 4
    assert time.monotonic() - started < 3
    # a fetch with nothing new waits out max_wait_ms
    started = time.monotonic()
    r = h.fetch(stub, "basics", 0, 5, max_wait_ms=300, min_bytes=1)
    assert not r.batches and 0.25 < time.monotonic() - started < 2

    # list offsets
    lo = stub.ListOffsets(broker_pb2.ListOffsetsRequest(partitions=[
        broker_pb2.ListOffsetsPartition(topic="basics", partition=0, timestamp_ms=-2),
        broker_pb2.ListOffsetsPartition(topic="basics", partition=0, timestamp_ms=-1),
        broker_pb2.ListOffsetsPartition(topic="basics", partition=0, timestamp_ms=t0 - 60_000),
        broker_pb2.ListOffsetsPartition(topic="basics", partition=0, timestamp_ms=t0 + 3_600_000),
    ]))
    assert [x.offset for x in lo.results] == [0, 5, 0, -1]
    # byte-bounded: a tiny max_bytes still returns one whole batch, never more
    small = h.fetch(stub, "basics", 0, 0, max_bytes=1)
    assert [b.base_offset for b in small.batches] == [0] and small.next_fetch_offset == 3

    # errors: clear codes, never a crash
    def produce_err(batch, topic="basics", partition=0, s=stub):
        return h.produce(s, topic, partition, batch).error_code
    bad = h.make_batch([b"x", b"y"])
    bad.last_offset_delta = 5
    assert produce_err(bad) == common_pb2.INVALID_RECORD
    empty = h.make_batch([b"x"])
    empty.record_count = 0
    empty.last_offset_delta = -1
    assert produce_err(empty) == common_pb2.INVALID_RECORD
    attrs = h.make_batch([b"x"])
    attrs.attributes = 0x4000
    assert produce_err(attrs) == common_pb2.INVALID_RECORD
    ts = h.make_batch([b"x"])
    ts.max_timestamp_ms = ts.base_timestamp_ms - 1
    assert produce_err(ts) == common_pb2.INVALID_TIMESTAMP
    assert produce_err(h.make_batch([b"x" * (5 * 1024 * 1024)])) == common_pb2.RECORD_BATCH_TOO_LARGE
    assert produce_err(h.make_batch([b"x"]), topic="nope") == common_pb2.UNKNOWN_TOPIC_OR_PARTITION
    assert produce_err(h.make_batch([b"x"]), partition=7) == common_pb2.UNKNOWN_TOPIC_OR_PARTITION
    assert produce_err(h.make_batch([b"x"]), s=c.broker_stub(follower)) == common_pb2.NOT_LEADER_OR_FOLLOWER
    assert h.fetch(stub, "basics", 0, 999).error_code == common_pb2.OFFSET_OUT_OF_RANGE
    assert h.fetch(stub, "basics", 0, -1).error_code == common_pb2.OFFSET_OUT_OF_RANGE
    assert h.fetch(c.broker_stub(follower), "basics", 0, 0).error_code == common_pb2.NOT_LEADER_OR_FOLLOWER
    stale = stub.Fetch(broker_pb2.FetchRequest(partitions=[broker_pb2.FetchPartition(
        topic="basics", partition=0, fetch_offset=0, current_leader_epoch=99)]))
    assert stale.results[0].error_code == common_pb2.UNKNOWN_LEADER_EPOCH
    with_pid = h.make_batch([b"p"], producer_id=h.init_producer_id(c.channel(leader)), producer_epoch=0,
                            base_sequence=0)
    ok(h.produce(stub, "basics", 0, with_pid))  # producer-id batches flow through producer state
    assert h.produce(stub, "basics", 0, with_pid).duplicate  # the retry is recognised

    # admin
    assert c.create_topic("basics").error_code == common_pb2.TOPIC_ALREADY_EXISTS
    assert c.create_topic("bad name!").error_code == common_pb2.INVALID_TOPIC_NAME
    assert c.create_topic("big", rf=5).error_code == common_pb2.INVALID_REPLICATION_FACTOR
    from semel.v1 import admin_pb2
    desc = c.admin_stub(leader).DescribeTopics(admin_pb2.DescribeTopicsRequest(names=["basics"]))
    p0 = desc.topics[0].partitions[0]
    assert p0.leader_id == leader and p0.high_watermark == 6
    # a non-leader asks the leader for exact offsets
    desc = c.admin_stub(follower).DescribeTopics(admin_pb2.DescribeTopicsRequest(names=["basics"]))
    assert desc.topics[0].partitions[0].high_watermark == 6
    # READ_COMMITTED with no open transaction reads up to the HW
    rc = h.fetch(stub, "basics", 0, 0, isolation=broker_pb2.READ_COMMITTED)
    assert rc.last_stable_offset == rc.high_watermark == 6 and rc.batches
    # a request above the gRPC message bound is refused by the transport, the broker stays up
    with pytest.raises(grpc.RpcError) as too_big:
        h.produce(stub, "basics", 0, h.make_batch([b"x" * (17 * 1024 * 1024)]))
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    cl = c.admin_stub(follower).DescribeCluster(admin_pb2.DescribeClusterRequest())
    assert sorted(b.broker_id for b in cl.brokers) == [1, 2, 3] and cl.quorum_leader and cl.controller_id in (1, 2, 3)
    dr = c.admin_stub(follower).DeleteTopics(admin_pb2.DeleteTopicsRequest(names=["basics", "nope"]))
    assert [r.error_code for r in dr.results] == [NONE, common_pb2.UNKNOWN_TOPIC_OR_PARTITION]
    assert c.metadata(follower, ["basics"]).topics[0].error_code == common_pb2.UNKNOWN_TOPIC_OR_PARTITION


# --- failover -------------------------------------------------------------------------------


def produce_until_ok(c: h.Cluster, topic: str, values: list[bytes], deadline_s: float = 15.0):
    """Retry like a client: refresh the leader on any error; returns (result, leader)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for i, b in c.brokers.items():
            if not b.alive:
                continue
            try:
                pm = c.partition_meta(topic, 0, via=i)
            except grpc.RpcError:
                continue
            if pm.leader_id < 0 or not c.brokers[pm.leader_id].alive:
                continue
            try:
                r = h.produce(c.broker_stub(pm.leader_id), topic, 0, h.make_batch(values), timeout_ms=2000)
            except grpc.RpcError:
                continue
            if r.error_code == NONE:
                return r, pm.leader_id
            break
        time.sleep(0.005)
    raise TimeoutError("no successful produce\n" + c.dump_logs())


def assert_leader_epoch_checks(c: h.Cluster, leader: int, topic: str) -> None:
    """KIP-320 after a leader change: an older epoch is fenced, a newer one unknown, an unset
    one (a client in another language that does not track epochs) is not checked."""
    epoch = c.partition_meta(topic, via=leader).leader_epoch
    assert epoch >= 1
    stub = c.broker_stub(leader)
    codes = {e: h.fetch(stub, topic, 0, 0, leader_epoch=e).error_code for e in (None, -1, epoch, epoch - 1, epoch + 1)}
    assert codes == {None: NONE, -1: NONE, epoch: NONE, epoch - 1: common_pb2.FENCED_LEADER_EPOCH,
                     epoch + 1: common_pb2.UNKNOWN_LEADER_EPOCH}
    listed = stub.ListOffsets(broker_pb2.ListOffsetsRequest(partitions=[
        broker_pb2.ListOffsetsPartition(topic=topic, partition=0, timestamp_ms=-1, current_leader_epoch=e)
        for e in (epoch, epoch - 1)] + [broker_pb2.ListOffsetsPartition(topic=topic, partition=0, timestamp_ms=-1)]),
        timeout=5).results
    assert [r.error_code for r in listed] == [NONE, common_pb2.FENCED_LEADER_EPOCH, NONE]
    # OffsetForLeaderEpoch follows the same rules (-1: not checked); a follower answers NOT_LEADER
    queries = [replication_pb2.EpochQuery(topic=topic, partition=0, current_leader_epoch=e, leader_epoch=epoch)
               for e in (-1, epoch, epoch - 1, epoch + 1)]
    ends = replication_pb2_grpc.ReplicationStub(c.channel(leader)).OffsetForLeaderEpoch(
        replication_pb2.OffsetForLeaderEpochRequest(replica_id=-1, partitions=queries), timeout=5).results
    assert [r.error_code for r in ends] == [NONE, NONE, common_pb2.FENCED_LEADER_EPOCH, common_pb2.UNKNOWN_LEADER_EPOCH]
    assert ends[0].leader_epoch == epoch and ends[0].end_offset == h.read_all(stub, topic)[-1][0] + 1
    follower = next(b for b in c.brokers if b != leader and c.brokers[b].alive)
    other = replication_pb2_grpc.ReplicationStub(c.channel(follower)).OffsetForLeaderEpoch(
        replication_pb2.OffsetForLeaderEpochRequest(replica_id=-1, partitions=queries[:1]), timeout=5).results
    assert other[0].error_code == common_pb2.NOT_LEADER_OR_FOLLOWER


@pytest.mark.slow
@pytest.mark.parametrize("leader_is_controller", [True, False], ids=["leader-is-controller", "leader-not-controller"])
def test_acked_writes_survive_leader_kill_and_replicas_converge(cluster, leader_is_controller):
    c = cluster
    controller = c.wait_for(lambda: controller_id(c) if controller_id(c) > 0 else None, what="a controller")
    topic = next(f"fo{i}" for i in range(10) if ok(c.create_topic(f"fo{i}", partitions=1, rf=3)) is None
                 and (c.leader_of(f"fo{i}") == controller) == leader_is_controller)
    acked = []
    for i in range(20):
        acked += produce_values(c, topic, [b"v%d-%d" % (i, j) for j in range(5)])
    idem = h.make_batch([b"idem-0", b"idem-1"], producer_id=h.init_producer_id(c.channel(c.leader_of(topic))),
                        producer_epoch=0, base_sequence=0)
    first = h.produce(c.broker_stub(c.leader_of(topic)), topic, 0, idem)
    ok(first)
    acked += [(first.base_offset, b"idem-0"), (first.base_offset + 1, b"idem-1")]
    old = c.leader_of(topic)
    killed_at = time.monotonic()
    c.kill(old)
    r, new = produce_until_ok(c, topic, [b"after"])
    failover_s = time.monotonic() - killed_at
    print(f"\nFAILOVER ({'leader was' if leader_is_controller else 'leader was not'} the controller): kill -9 "
          f"of leader {old} -> first acks=all produce ok on {new}: {failover_s * 1000:.0f} ms")
    assert new != old
    assert failover_s < 5.0  # target <= 1 s, checked loosely on a loaded CI machine
    acked.append((r.base_offset, b"after"))
    assert r.base_offset == 102  # nothing acknowledged was lost or duplicated
    # the new leader rebuilt producer state from replicated batches: a retry is deduplicated
    retry = h.produce(c.broker_stub(new), topic, 0, idem)
    ok(retry)
    assert retry.duplicate and (retry.base_offset, retry.last_offset) == (first.base_offset, first.last_offset)
    assert h.read_all(c.broker_stub(new), topic) == acked
    assert_leader_epoch_checks(c, new, topic)
    c.start(old)
    c.wait_ready([old])
    wait_converged(c, topic, list(c.brokers))
    c.wait_for(lambda: len(c.partition_meta(topic).isr) == 3, what="restarted broker back in the ISR")


@pytest.mark.slow
def test_acked_writes_under_load_survive_leader_kill(cluster):
    """Producers keep writing acks=all while the leader is killed: every acknowledged value is
    read back at its acknowledged offset, nothing appears twice, and replicas converge."""
    c = cluster
    ok(c.create_topic("load", partitions=1, rf=3))
    c.leader_of("load")
    acked: dict[bytes, int] = {}
    unknown: set[bytes] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def producer(name: str) -> None:
        n = 0
        leader = None
        while not stop.is_set():
            value = b"%s-%d" % (name.encode(), n)
            n += 1
            try:
                leader = leader or c.leader_of("load")
                r = h.produce(c.broker_stub(leader), "load", 0, h.make_batch([value]), timeout_ms=2000)
            except (grpc.RpcError, TimeoutError):
                r = None
            with lock:
                if r is not None and r.error_code == NONE:
                    acked[value] = r.base_offset
                else:
                    # never re-sent: a failed attempt may still have been written (unknown outcome)
                    unknown.add(value)
                    leader = None
                    time.sleep(0.005)

    threads = [threading.Thread(target=producer, args=(f"p{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.7)
    old = c.leader_of("load")
    c.kill(old)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    new = c.leader_of("load")
    print(f"\nLOAD: {len(acked)} acknowledged, {len(unknown)} unknown outcomes across the kill of leader {old}")
    assert new != old and len(acked) > 20
    log = h.read_all(c.broker_stub(new), "load")
    by_offset = dict(log)
    values = [v for _, v in log]
    assert len(values) == len(set(values)), "a value was written twice"
    lost = {v: o for v, o in acked.items() if by_offset.get(o) != v}
    assert not lost, f"acknowledged writes lost or moved: {sorted(lost.items())[:10]}"
    assert set(values) <= set(acked) | unknown
    c.start(old)
    c.wait_ready([old])
    wait_converged(c, "load", list(c.brokers))


@pytest.mark.slow
def test_divergent_follower_truncates_after_leader_change(cluster):
    c = cluster
    ok(c.create_topic("div", partitions=1, rf=3))
    acked = produce_values(c, "div", [b"a", b"b"])
    old = c.leader_of("div")
    followers = [i for i in c.brokers if i != old]
    acked_all = lambda: c.wait_for(lambda: all(len(log_bytes(c, i, "div")) == len(log_bytes(c, old, "div"))
                                                for i in followers), what="followers caught up")
    acked_all()
    # Followers stop fetching; the leader takes writes only it has (acks=1: unacknowledged by the ISR).
    for i in followers:
        c.brokers[i].proc.send_signal(signal.SIGSTOP)
    try:
        stub = c.broker_stub(old)
        for k in range(3):
            ok(h.produce(stub, "div", 0, h.make_batch([b"lost-%d" % k]), acks=broker_pb2.ACKS_LEADER))
        c.kill(old)
    finally:
        for i in followers:
            c.brokers[i].proc.send_signal(signal.SIGCONT)
    r, new = produce_until_ok(c, "div", [b"new-1", b"new-2"])
    # A fetch response already in a follower's socket buffer may carry lost-0; nothing later.
    assert new in followers and r.base_offset in (2, 3)
    c.start(old)
    c.wait_ready([old])
    data = wait_converged(c, "div", list(c.brokers))
    assert b"lost-1" not in data and b"lost-2" not in data
    final = h.read_all(c.broker_stub(new), "div")
    assert final[:2] == acked and final[-2:] == [(r.base_offset, b"new-1"), (r.base_offset + 1, b"new-2")]
    assert "truncating divergent data" in c.log_tail(old, 200)


@pytest.mark.slow
def test_min_insync_replicas_enforced(cluster):
    c = cluster
    ok(c.create_topic("minisr", partitions=1, rf=3, configs={"min_insync_replicas": "3"}))
    leader = c.leader_of("minisr")
    # a loaded machine can fence a broker for a moment: wait for a full ISR and retry
    c.wait_for(lambda: len(c.partition_meta("minisr", via=leader).isr) == 3
               and h.produce(c.broker_stub(leader), "minisr", 0, h.make_batch([b"ok"])).error_code == NONE,
               what="a first acks=all write with the full ISR")
    first_hw = h.fetch(c.broker_stub(leader), "minisr", 0, 0).high_watermark
    victim = next(i for i in c.brokers if i != leader and not is_quorum_leader(c, i))
    c.kill(victim)
    c.wait_for(lambda: len(c.partition_meta("minisr", via=leader).isr) == 2, what="ISR shrinks to 2")
    r = h.produce(c.broker_stub(leader), "minisr", 0, h.make_batch([b"no"]))
    assert r.error_code == common_pb2.NOT_ENOUGH_REPLICAS, r
    assert h.fetch(c.broker_stub(leader), "minisr", 0, 0).high_watermark == first_hw  # nothing written
    ok(h.produce(c.broker_stub(leader), "minisr", 0, h.make_batch([b"one"]), acks=broker_pb2.ACKS_LEADER))
    c.start(victim)
    c.wait_ready([victim])
    c.wait_for(lambda: len(c.partition_meta("minisr", via=leader).isr) == 3, what="ISR back to 3")
    ok(h.produce(c.broker_stub(leader), "minisr", 0, h.make_batch([b"again"])))


def controller_id(c: h.Cluster) -> int:
    from semel.v1 import admin_pb2
    return c.admin_stub(c.any_alive()).DescribeCluster(admin_pb2.DescribeClusterRequest(), timeout=5).controller_id


def is_quorum_leader(c: h.Cluster, broker_id: int) -> bool:
    return controller_id(c) == broker_id


@pytest.mark.slow
def test_full_restart_keeps_acked_records_and_quorum_loss_is_reported(cluster):
    c = cluster
    ok(c.create_topic("durable", partitions=2, rf=3))
    acked = {0: [], 1: []}
    for i in range(10):
        for p in (0, 1):
            acked[p] += produce_values(c, "durable", [b"%d-%d" % (p, i)], partition=p)
    for i in c.brokers:
        c.kill(i)
    for i in c.brokers:
        c.start(i)
    c.wait_ready(list(c.brokers))
    for p in (0, 1):
        leader = c.leader_of("durable", p)
        c.wait_for(lambda: h.fetch(c.broker_stub(c.leader_of("durable", p)), "durable", p, 0).high_watermark >= 10,
                   what="HW restored")
        assert h.read_all(c.broker_stub(c.leader_of("durable", p)), "durable", p) == acked[p]

    # Lose the majority: metadata changes fail with a clear, retriable error; data stays readable.
    survivor = 1
    c.kill(2)
    c.kill(3)
    started = time.monotonic()
    res = c.create_topic("during-outage", via=survivor, timeout_ms=1500)
    assert res.error_code == common_pb2.METADATA_QUORUM_UNAVAILABLE, res
    assert time.monotonic() - started < 6
    c.start(2)
    c.start(3)
    c.wait_ready([2, 3])
    c.wait_for(lambda: c.create_topic("after-outage", via=survivor).error_code in (NONE, common_pb2.TOPIC_ALREADY_EXISTS),
               what="create topic after the majority returns")
    for p in (0, 1):
        assert h.read_all(c.broker_stub(c.leader_of("durable", p)), "durable", p)[: len(acked[p])] == acked[p]


@pytest.mark.slow
def test_lagging_follower_leaves_isr_and_rejoins(tmp_path):
    # Short lag bound, long session: a paused follower lags without being fenced.
    lag_ms = 1000
    # long session and disconnect grace: only the lag rule (not fencing) may drop the follower
    c = h.Cluster(tmp_path, 3, replica_lag_time_max_ms=lag_ms, session_timeout_ms=10_000,
                  disconnect_grace_ms=5_000, **FLAGS)
    try:
        c.start_all()
        ok(c.create_topic("lag", partitions=1, rf=3))
        produce_values(c, "lag", [b"before"])
        leader = c.leader_of("lag")
        c.wait_for(lambda: len(c.partition_meta("lag", via=leader).isr) == 3, what="full ISR before the pause")
        ctrl = controller_id(c)
        victim = next(i for i in c.brokers if i not in (leader, ctrl))
        c.brokers[victim].proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            # acks=all waits until the lagging follower is dropped from the ISR, then succeeds
            r = h.produce(c.broker_stub(leader), "lag", 0, h.make_batch([b"during"]), timeout_ms=15_000)
            ok(r)
            assert lag_ms / 1000 < time.monotonic() - started < 12
            pm = c.partition_meta("lag", via=leader)
            assert victim not in pm.isr and leader in pm.isr
            assert not next(b for b in c.metadata(leader).brokers if b.broker_id == victim).fenced
        finally:
            c.brokers[victim].proc.send_signal(signal.SIGCONT)
        c.wait_for(lambda: victim in c.partition_meta("lag", via=leader).isr, what="caught-up follower rejoins")
        wait_converged(c, "lag", list(c.brokers))
    finally:
        print(c.dump_logs())
        c.close()


@pytest.mark.slow
def test_paused_zombie_leader_cannot_acknowledge_and_rejoins_as_follower(cluster):
    """SIGSTOP the leader past its session: it is fenced and replaced. A produce queued to it
    is never acknowledged; once resumed it follows the new leader and drops its stale tail."""
    c = cluster
    ok(c.create_topic("zombie", partitions=1, rf=3))
    acked = produce_values(c, "zombie", [b"a", b"b"])
    old = c.leader_of("zombie")
    c.brokers[old].proc.send_signal(signal.SIGSTOP)
    result = {}
    try:
        t = threading.Thread(target=lambda: result.update(r=h.produce(
            c.broker_stub(old), "zombie", 0, h.make_batch([b"zombie"]), timeout_ms=3000)))
        t.start()
        others = [i for i in c.brokers if i != old]
        c.wait_for(lambda: c.partition_meta("zombie", via=others[0]).leader_id in others, timeout_s=15,
                   what="a new leader while the old one is paused")
        r, new = produce_until_ok(c, "zombie", [b"new"])
        acked.append((r.base_offset, b"new"))
    finally:
        c.brokers[old].proc.send_signal(signal.SIGCONT)
    t.join(15)
    assert result["r"].error_code in (common_pb2.NOT_LEADER_OR_FOLLOWER, common_pb2.REQUEST_TIMED_OUT), result["r"]
    data = wait_converged(c, "zombie", list(c.brokers))
    assert b"zombie" not in data
    assert h.read_all(c.broker_stub(c.leader_of("zombie")), "zombie")[: len(acked)] == acked


@pytest.mark.slow
def test_kill_and_restart_cycles_under_load(tmp_path):
    """Brokers are killed (-9) or terminated and restarted at random while three acks=all
    producers write unique values to three partitions: nothing acknowledged is lost or moved,
    nothing is duplicated or invented, and every replica converges byte for byte."""
    import os
    import random

    seed = int(os.environ.get("SEMEL_TEST_SEED", int(time.time()) % 10_000))
    print(f"\nseed {seed} (replay the fault schedule with SEMEL_TEST_SEED={seed})")
    rnd = random.Random(seed)
    c = h.Cluster(tmp_path, 3, **FLAGS)
    partitions = 3
    acked: dict[bytes, tuple[int, int]] = {}
    unknown: set[bytes] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def producer(name: str) -> None:
        n = 0
        leaders: dict[int, int] = {}
        while not stop.is_set():
            p, value = n % partitions, b"%s-%d" % (name.encode(), n)
            n += 1
            try:
                leader = leaders.get(p) or c.leader_of("cycles", p)
                r = h.produce(c.broker_stub(leader), "cycles", p, h.make_batch([value]), timeout_ms=2000)
            except (grpc.RpcError, TimeoutError):
                r = None
            with lock:
                if r is not None and r.error_code == NONE:
                    acked[value] = (p, r.base_offset)
                    leaders[p] = leader
                else:
                    unknown.add(value)
                    leaders.pop(p, None)
                    time.sleep(0.01)

    try:
        c.start_all()
        ok(c.create_topic("cycles", partitions=partitions, rf=3))
        threads = [threading.Thread(target=producer, args=(f"p{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        end = time.monotonic() + 12
        while time.monotonic() < end:
            time.sleep(rnd.uniform(1.0, 2.5))
            victim = rnd.choice(list(c.brokers))
            (c.kill if rnd.random() < 0.7 else c.terminate)(victim)
            time.sleep(rnd.uniform(0.2, 1.0))
            c.start(victim)
            c.wait_ready([victim], 60)
        stop.set()
        for t in threads:
            t.join(30)
        print(f"{len(acked)} acknowledged, {len(unknown)} unknown")
        assert len(acked) > 100
        for p in range(partitions):
            top = max((o for q, o in acked.values() if q == p), default=-1)
            c.wait_for(lambda: h.fetch(c.broker_stub(c.leader_of("cycles", p)), "cycles", p, 0).high_watermark > top,
                       what="HW covers every acknowledged offset")
            log = h.read_all(c.broker_stub(c.leader_of("cycles", p)), "cycles", p)
            values = [v for _, v in log]
            assert len(values) == len(set(values)), "duplicate"
            by_offset = dict(log)
            lost = [(v, o) for v, (q, o) in acked.items() if q == p and by_offset.get(o) != v]
            assert not lost, f"seed {seed}: acknowledged writes lost or moved: {lost[:5]}"
            assert set(values) <= set(acked) | unknown, "a value nobody wrote"
            wait_converged(c, "cycles", list(c.brokers), partition=p, timeout_s=30)
    finally:
        stop.set()
        print(c.dump_logs())
        c.close()


@pytest.mark.slow
def test_a_retry_deduplicated_behind_a_newer_waiter_is_answered(cluster):
    """Issue 20, item 6 (first finding), on real processes: both followers paused (SIGSTOP),
    so nothing commits and the metadata quorum cannot shrink the ISR. Producer A's acks=all
    batch times out (outcome unknown); producer B appends behind it and waits; A resends the
    same batch as docs/protocol.md says. The leader deduplicates it and waits for the HW at
    A's original offset: the retry gets an answer with an error code (it was gRPC UNKNOWN:
    "acks added out of offset order"), and once the followers are back, A's original offsets."""
    from semel.v1 import txn_pb2, txn_pb2_grpc

    c = cluster
    ok(c.create_topic("dedup", partitions=1, rf=3))
    produce_values(c, "dedup", [b"warm"])
    leader = c.leader_of("dedup")
    c.wait_for(lambda: len(c.partition_meta("dedup", via=leader).isr) == 3, what="full ISR before the pause")
    txn = txn_pb2_grpc.TransactionsStub(c.channel(leader))
    pid_a, pid_b = (txn.InitProducerId(txn_pb2.InitProducerIdRequest(), timeout=10).producer_id for _ in range(2))
    stub = c.broker_stub(leader)
    batch_a = h.make_batch([b"a"], producer_id=pid_a, producer_epoch=0, base_sequence=0)
    batch_b = h.make_batch([b"b"], producer_id=pid_b, producer_epoch=0, base_sequence=0)
    followers = [i for i in c.brokers if i != leader]
    answers: dict[str, object] = {}

    def send_b() -> None:
        try:
            answers["b"] = h.produce(stub, "dedup", 0, batch_b, timeout_ms=30_000)
        except grpc.RpcError as exc:
            answers["b"] = exc

    def b_appended() -> bool:
        r = txn.DescribeProducers(txn_pb2.DescribeProducersRequest(topic="dedup", partition=0), timeout=5)
        return any(p.producer_id == pid_b for p in r.producers)

    for i in followers:
        c.brokers[i].proc.send_signal(signal.SIGSTOP)
    b_thread = threading.Thread(target=send_b)
    try:
        first = h.produce(stub, "dedup", 0, batch_a, timeout_ms=1000)
        assert first.error_code == common_pb2.REQUEST_TIMED_OUT and first.base_offset >= 1, first
        b_thread.start()
        c.wait_for(b_appended, what="B's batch appended behind A's")
        # answered while the followers are still paused: the retry waited behind B's waiter
        retry = h.produce(stub, "dedup", 0, batch_a, timeout_ms=1000)  # gRPC UNKNOWN with the bug
        assert retry.error_code == common_pb2.REQUEST_TIMED_OUT and retry.duplicate, retry
        assert (retry.base_offset, retry.last_offset) == (first.base_offset, first.last_offset)
    finally:
        for i in followers:
            c.brokers[i].proc.send_signal(signal.SIGCONT)
    b_thread.join(40)
    assert not isinstance(answers["b"], grpc.RpcError), answers["b"]
    # Once resumed, the metadata quorum may move leadership first (outcome unknown, retriable),
    # or commit the ISR shrink the leader asked for during the pause, so a retry can briefly see
    # NOT_ENOUGH_REPLICAS_AFTER_APPEND until the followers catch up and rejoin (also retriable);
    # else the HW passes A's batch and the retry answers its original offsets.
    retriable = (common_pb2.NOT_ENOUGH_REPLICAS_AFTER_APPEND, common_pb2.NOT_ENOUGH_REPLICAS,
                 common_pb2.REQUEST_TIMED_OUT)
    deadline = time.monotonic() + 60
    while True:
        again = h.produce(stub, "dedup", 0, batch_a, timeout_ms=20_000)
        if again.error_code not in retriable or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert again.error_code in (common_pb2.NONE, common_pb2.NOT_LEADER_OR_FOLLOWER), again
    if again.error_code == common_pb2.NONE:
        assert again.duplicate and again.base_offset == first.base_offset, again
