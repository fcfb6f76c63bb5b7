"""Transactions survive failures (real processes, kill -9): the coordinator killed after the
prepare but before every marker is written, and a partition leader killed while its marker
is being written. Both must end with the transaction committed everywhere.

To hold a marker back deterministically the data topic has min_insync_replicas=3 and one of
the partition's replicas is down: the marker answers NOT_ENOUGH_REPLICAS (retried forever by
the coordinator) until that replica is back. 4 brokers, 3 metadata voters (broker 4 is an
observer), so two brokers may be down at once without losing the metadata quorum.
"""

from __future__ import annotations

import signal
import time

import pytest
from semel.internal_topics import coordinator_partition
from semel.v1 import txn_pb2
from semel.v1.common_pb2 import ErrorCode

from tests.cluster import broker_harness as h
from tests.cluster import txn_stubs as ts

pytestmark = pytest.mark.slow
OBSERVER = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = h.Cluster(tmp_path_factory.mktemp("txnfo"), 4, voters=3, internal_partitions=4)
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())
        c.close()


def topic_layout(c, topic: str) -> dict[int, tuple[int, tuple[int, ...]]]:
    """partition -> (leader, replicas)"""
    md = c.metadata(topics=[topic]).topics[0]
    return {p.partition: (p.leader_id, tuple(p.replicas)) for p in md.partitions}


def held_back_topic(c, topic: str) -> dict[int, tuple[int, tuple[int, ...]]]:
    """4 partitions, RF 3, min ISR 3 (a marker waits for every replica); -> topic_layout."""
    assert c.create_topic(topic, partitions=4, rf=3, configs={"min_insync_replicas": "3"}).error_code == 0
    for p in range(4):
        c.leader_of(topic, p)
    return topic_layout(c, topic)


def tid_coordinated_by(c, broker: int, prefix: str) -> str | None:
    # The controller creates the internal topic once brokers have registered: on a loaded machine
    # the answering broker may not have it yet, so wait for its partitions.
    state = c.wait_for(lambda: (t := c.metadata(topics=["__transaction_state"]).topics[0]).partitions and t,
                       what="__transaction_state partitions in metadata")
    leaders = {p.partition: p.leader_id for p in state.partitions}
    for i in range(500):
        tid = f"{prefix}-{i}"
        if leaders[coordinator_partition(tid, len(leaders))] == broker:
            return tid
    return None


def wait_fenced_out(c, topic: str, partition: int, broker: int) -> None:
    c.wait_for(lambda: broker not in c.partition_meta(topic, partition, via=c.leader_of(topic, partition)).isr,
               what=f"broker {broker} out of the ISR of {topic}-{partition}")


def idempotent_pid(c, broker: int) -> int:
    r = ts.txn_stub(c, broker).InitProducerId(txn_pb2.InitProducerIdRequest(), timeout=10)
    assert r.error_code == ErrorCode.NONE, r
    return r.producer_id


def restart(c, *ids: int) -> None:
    for i in ids:
        c.start(i)
    c.wait_ready(list(ids))


def test_coordinator_killed_between_prepare_and_markers(cluster):
    c = cluster
    topic = "fo-coordinator"
    layout = held_back_topic(c, topic)
    # held back: a partition with the observer among its replicas (not leading); the
    # coordinator is the one broker that is not one of its replicas
    plan = None
    for p, (leader, replicas) in layout.items():
        if OBSERVER in replicas and leader != OBSERVER:
            (coordinator,) = set(c.brokers) - set(replicas)
            tid = tid_coordinated_by(c, coordinator, "fo-c")
            other = next((q for q, (_, r) in layout.items() if OBSERVER not in r), None)
            if tid is not None and other is not None:
                plan = (p, coordinator, tid, other)
                break
    if plan is None:
        pytest.skip(f"no usable layout in {layout}")
    held, coordinator, tid, other = plan
    producer = ts.TxnProducer(c, tid).init()
    producer.send(topic, held, [b"held"])
    producer.send(topic, other, [b"other"])
    c.kill(OBSERVER)
    wait_fenced_out(c, topic, held, OBSERVER)
    producer.commit()  # PrepareCommit is durable; the marker of `held` cannot be written yet
    c.wait_for(lambda: ts.read(c, topic, other)[0] == [b"other"], what="the other partition's marker")
    time.sleep(0.3)
    assert ts.read(c, topic, held)[0] == []
    assert ts.describe(c, tid).state == txn_pb2.PREPARE_COMMIT
    before_restart = idempotent_pid(c, coordinator)
    c.kill(coordinator)
    t0 = time.monotonic()
    c.wait_for(lambda: ts.find_coordinator(c, tid) != coordinator and ts.describe(c, tid).state
               == txn_pb2.PREPARE_COMMIT, what="a new coordinator loaded the prepared transaction")
    took_load = time.monotonic() - t0
    restart(c, OBSERVER)  # the held partition can take its marker again
    c.wait_for(lambda: ts.read(c, topic, held)[0] == [b"held"], timeout_s=30, what="the held marker written")
    took_visible = time.monotonic() - t0
    restart(c, coordinator)
    c.wait_for(lambda: ts.describe(c, tid).state == txn_pb2.COMPLETE_COMMIT, timeout_s=30,
               what="the transaction completes")
    assert ts.read(c, topic, other)[0] == [b"other"]
    assert idempotent_pid(c, coordinator) > before_restart  # producer ids are never reused after a restart
    # the producer goes on with the identity EndTxn answered
    producer.send(topic, held, [b"next"])
    producer.commit()
    c.wait_for(lambda: ts.read(c, topic, held)[0] == [b"held", b"next"], timeout_s=30, what="next transaction")
    print(f"\nTXN FAILOVER: new coordinator serving the prepared transaction {took_load * 1000:.0f} ms after "
          f"kill -9; held marker visible {took_visible:.2f} s after (includes restarting the held replica)")


def test_partition_leader_killed_while_its_marker_is_written(cluster):
    c = cluster
    topic = "fo-leader"
    layout = held_back_topic(c, topic)
    plan = None
    for p, (leader, replicas) in layout.items():
        if OBSERVER in replicas and leader != OBSERVER:
            for coordinator in sorted(set(c.brokers) - {leader, OBSERVER}):
                tid = tid_coordinated_by(c, coordinator, "fo-l")
                if tid is not None:
                    plan = (p, leader, tid)
                    break
        if plan:
            break
    if plan is None:
        pytest.skip(f"no usable layout in {layout}")
    held, leader, tid = plan
    producer = ts.TxnProducer(c, tid).init()
    producer.send(topic, held, [b"v1", b"v2"])
    c.kill(OBSERVER)
    wait_fenced_out(c, topic, held, OBSERVER)
    producer.commit()  # the marker is refused (ISR too small) and retried by the coordinator
    time.sleep(0.3)
    assert ts.read(c, topic, held)[0] == []
    c.kill(leader)  # the partition leader dies while its marker is pending
    c.wait_for(lambda: c.leader_of(topic, held) != leader, what="a new partition leader")
    restart(c, leader, OBSERVER)
    c.wait_for(lambda: ts.read(c, topic, held)[0] == [b"v1", b"v2"], timeout_s=30,
               what="the marker written on the new leader")
    c.wait_for(lambda: ts.describe(c, tid).state == txn_pb2.COMPLETE_COMMIT, timeout_s=30,
               what="the transaction completes")
    assert ts.read(c, topic, held, committed=False)[0] == [b"v1", b"v2"]


def test_a_paused_partition_leader_does_not_hold_the_next_transaction(cluster):
    """Issue 20 (CONCURRENT_TRANSACTIONS for 8-12 s under faults). The leader of a partition
    in the transaction is paused (SIGSTOP) just before EndTxn; the coordinator's state
    partition does not live on it, so PrepareCommit commits and the marker goes to the paused
    leader, where the RPC hangs. The controller fences the paused broker and moves the
    partition within about a session timeout. The marker must follow the new leader then,
    not wait for the hanging RPC's timeout (15 s): the next transaction's AddPartitions, which
    waits for the Complete* record (and answers CONCURRENT_TRANSACTIONS every 500 ms while it
    cannot), succeeds a few seconds after the pause, long before that timeout."""
    c = cluster
    topic = "fo-paused"
    assert c.create_topic(topic, partitions=4, rf=3).error_code == 0
    for p in range(4):
        c.leader_of(topic, p)
    layout = topic_layout(c, topic)
    state = topic_layout(c, "__transaction_state")
    asked = c.any_alive()  # the harness's helpers ask this broker: it must not be the paused one
    plan = None
    for p, (leader, _) in layout.items():
        if leader in (asked, OBSERVER, -1):
            continue
        for coordinator in sorted(set(c.brokers) - {leader}):
            tid = tid_coordinated_by(c, coordinator, "fo-p")
            if tid is None or leader in state[coordinator_partition(tid, len(state))][1]:
                continue
            other = next((q for q, (lead, _) in layout.items() if lead not in (leader, -1)), None)
            if other is not None:
                plan = (p, leader, tid, other)
                break
        if plan:
            break
    if plan is None:
        pytest.skip(f"no usable layout in {layout} / {state}")
    held, leader, tid, other = plan
    producer = ts.TxnProducer(c, tid).init()
    producer.send(topic, held, [b"v1"])
    c.brokers[leader].proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        producer.commit()  # PrepareCommit committed; the marker to the paused leader hangs
        producer.add((topic, other))  # the next transaction: waits for the Complete* record
        took = time.monotonic() - t0
    finally:
        c.brokers[leader].proc.send_signal(signal.SIGCONT)
    print(f"\nPAUSED LEADER: the next transaction's AddPartitions succeeded {took:.2f} s after the pause")
    assert took < 10, f"{took:.1f} s: the marker waited for the paused leader"
    c.wait_for(lambda: ts.read(c, topic, held)[0] == [b"v1"], timeout_s=30, what="the marker on the new leader")
