"""Anomalies that fault-injection runs found in Semel, each reproduced deterministically.

duplicate (seed 11, `semel chaos run --seed 11 --duration-s 180 --nemesis all`): 14 values
stored twice, each acknowledged once, e.g. chaos-3 value 3952 at offsets 642 and 644 (acked at
644). Cause: the Python producer is not idempotent (producer_id -1, docs/client.md). An acks=all
produce whose answer is lost (leader change -> NOT_LEADER_OR_FOLLOWER "outcome unknown", a
broken or stalled connection) is retried; the first copy had been appended (and replicated), so
the retry appends a second one. Here the answer is lost deterministically: the client proxy
holds the broker's responses until the record is committed, then the connection is cut.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from semel.chaos.checker import check
from semel.chaos.history import HistoryBuilder
from semel.chaos.wiring import CLIENTS, ChaosCluster, wait_until
from semel.client import Admin, Consumer, Producer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosCluster]:
    cluster = ChaosCluster(tmp_path_factory.mktemp("chaos-regress"), brokers=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def read_all(bootstrap: str, topic: str, partition: int, until_offset: int, timeout_s: float = 20) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, partition)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (not out or out[-1][0] < until_offset):
            out += [(r.offset, r.value) for r in consumer.poll(timeout_ms=300)]
    return out


def test_lost_acknowledgement_does_not_duplicate(chaos_cluster: ChaosCluster) -> None:
    """Found by chaos seed 11 before the producer was idempotent: a retry after a lost
    acknowledgement stored the record twice."""
    c = chaos_cluster
    assert c.api is not None
    c.create_topic("dup", 1, 3)
    leader = wait_leader(c, "dup")
    with Producer(c.bootstrap, acks="all", linger_ms=0, request_timeout_ms=3000, delivery_timeout_ms=30000,
                  retry_backoff_ms=50, enable_idempotence=True) as producer:
        producer.send("dup", b"warm", partition=0).result(20)  # connection and metadata established
        # hold every answer of the leader to the clients (downstream); requests still arrive
        proxy, stream = c.flows(leader, CLIENTS)[0]
        c.api.add_toxic(proxy, "hold-answers", "timeout", stream, {"timeout": 0})
        future = producer.send("dup", b"once", partition=0)
        # the record is appended and committed (the high watermark passes it) while its answer is held
        other = next(s.address for s in c.specs if s.broker_id != leader)  # a real port, no proxy
        assert wait_until(lambda: high_watermark(other, "dup") >= 2, 15)
        c.api.remove_toxic(proxy, "hold-answers")  # closes the connection: the answer is lost
        meta = future.result(30)
    records = read_all(c.direct_bootstrap, "dup", 0, meta.offset)
    copies = [o for o, v in records if v == b"once"]
    history = HistoryBuilder().send(0, "dup-0", 1, meta.offset).poll(
        1, {"dup-0": [(o, 1 if v == b"once" else 0) for o, v in records if v != b"warm"]})
    verdict = check(history.events)
    assert copies == [meta.offset], f"value stored at offsets {copies}, acknowledged at {meta.offset}; " \
                                    f"checker: {sorted(verdict['anomalies'])}"
    assert verdict["valid"]


def high_watermark(address: str, topic: str) -> int:
    with Admin(address, request_timeout_ms=2000) as admin:
        return admin.describe_topics([topic])[0].partitions[0].high_watermark


def wait_leader(c: ChaosCluster, topic: str) -> int:
    leader: list[int] = []

    def found() -> bool:
        with Admin(c.direct_bootstrap, request_timeout_ms=2000) as admin:
            info = admin.metadata([topic]).partition(topic, 0)
        if info is not None and info.leader_id > 0:
            leader[:] = [info.leader_id]
        return bool(leader)

    assert wait_until(found, 20)
    return leader[0]



# outcome mislabelled (found while reproducing the duplicate above): a produce request that reached
# the leader, was appended and committed, and whose connection then closed before the answer
# (gRPC UNAVAILABLE "connection closed") is reported by the client as *not written*
# (`outcome_unknown=False`) when no retry fits in the delivery timeout. cluster/client/__init__.py
# `_on_response` treats every UNAVAILABLE as "never sent"; only a failure to connect is.
# A workload that trusted the flag would record `fail` and the checker would report G1a
# (an aborted read of a value that was in fact committed). The chaos workloads map every
# delivery timeout to `info`, so runs are not affected.
def test_written_record_is_never_reported_as_not_written(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    assert c.api is not None
    c.create_topic("unknown", 1, 3)
    leader = wait_leader(c, "unknown")
    other = next(s.address for s in c.specs if s.broker_id != leader)
    delivery_s = 6.0
    with Producer(c.bootstrap, acks="all", linger_ms=0, request_timeout_ms=30000,
                  delivery_timeout_ms=int(delivery_s * 1000), retry_backoff_ms=2000, retry_backoff_max_ms=2000,
                  ) as producer:
        producer.send("unknown", b"warm", partition=0).result(20)
        proxy, stream = c.flows(leader, CLIENTS)[0]
        c.api.add_toxic(proxy, "hold-answers", "timeout", stream, {"timeout": 0})
        started = time.monotonic()
        future = producer.send("unknown", b"written", partition=0)
        assert wait_until(lambda: high_watermark(other, "unknown") >= 2, delivery_s - 2)  # committed
        time.sleep(max(0.0, started + delivery_s - 1.0 - time.monotonic()))  # no retry fits after this
        c.api.remove_toxic(proxy, "hold-answers")  # the connection closes: the answer is lost
        error = future.exception(30)
    assert error is not None  # it was not retried
    history = HistoryBuilder().send(0, "unknown-0", 1, type="info" if error.outcome_unknown else "fail").poll(
        1, {"unknown-0": [(1, 1)]})
    assert error.outcome_unknown, (f"{type(error).__name__}({error}) says not written, but the high watermark "
                                   f"{high_watermark(other, 'unknown')} covers it; checker on such a history: "
                                   f"{sorted(check(history.events)['anomalies'])}")


# nonmonotonic-poll (seed 23, `semel chaos run --seed 23 --duration-s 150 --nemesis all`): a
# consumer at offset 1105 of chaos-5 next returned offsets 0..499. Broker 2 had been isolated
# from its peers (clients still reached it) while leader of chaos-5; the others moved the
# leadership on, but broker 2's metadata stayed stale (it did not rejoin the metadata quorum for
# ~24 s after the heal), so it still answered metadata with "leader 2" and served fetches with its
# short log (LEO 902). The consumer took that older metadata, fetched 1105 from broker 2, got
# OFFSET_OUT_OF_RANGE and reset to the earliest offset. Kafka prevents this with leader epochs
# (KIP-320): the client ignores metadata with an older leader epoch than it has seen and sends
# `current_leader_epoch` with each fetch (the stale broker then answers FENCED/UNKNOWN_LEADER_EPOCH,
# not OUT_OF_RANGE). Fixed: ClusterView keeps the newer leadership of a partition when an answer
# carries an older leader epoch (same topic id), and the consumer sends the epoch it knows with
# each fetch and list-offsets. Before the fix this failed in most runs (the race needs the stale
# leader's answer to arrive first, which this schedule makes likely but not certain).
def test_stale_leader_does_not_rewind_a_consumer(tmp_path_factory: pytest.TempPathFactory) -> None:
    c = ChaosCluster(tmp_path_factory.mktemp("chaos-stale"), brokers=3)
    c.start()
    try:
        c.create_topic("stale", 1, 3)
        old = wait_leader(c, "stale")
        with Producer(c.bootstrap, acks="all", linger_ms=0) as producer:
            for i in range(10):  # offsets 0..9 on every replica
                producer.send("stale", str(i).encode(), partition=0).result(20)
        peers = [b for b in c.broker_ids if b != old]
        # the leader loses its peers (it keeps its stale metadata), the clients lose it for now
        cut(c, [f for p in peers for f in c.flows(old, p, ("rpc", "raft")) + c.flows(p, old, ("rpc", "raft"))],
            "iso")
        cut(c, c.flows(CLIENTS, old) + c.flows(old, CLIENTS), "old-clients")
        wait_leader_other_than(c, "stale", old, peers[0])
        with Producer(c.bootstrap, acks="all", linger_ms=0) as producer:
            for i in range(10, 40):  # offsets 10..39 only on the new leader and its follower
                producer.send("stale", str(i).encode(), partition=0).result(20)
        with Consumer(c.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=200) as consumer:
            consumer.assign([("stale", 0)])
            seen: list[int] = []
            deadline = time.monotonic() + 20
            while len(seen) < 40 and time.monotonic() < deadline:
                seen += [r.offset for r in consumer.poll(timeout_ms=300)]
            assert seen == list(range(40))
            # now only the stale broker answers the clients
            cut(c, [f for p in peers for f in c.flows(CLIENTS, p) + c.flows(p, CLIENTS)], "peer-clients")
            assert c.api is not None
            for proxy, stream in dict.fromkeys(c.flows(CLIENTS, old) + c.flows(old, CLIENTS)):
                c.api.remove_toxic(proxy, f"old-clients-{stream}")
            later: list[int] = []
            deadline = time.monotonic() + 15  # metadata refreshes back off: give it several rounds
            while time.monotonic() < deadline and not (later and later[0] < 40):
                try:
                    later += [r.offset for r in consumer.poll(timeout_ms=300)]
                except Exception:  # unreachable brokers: fine, as long as it does not rewind
                    pass
            assert later == [] or later[0] >= 40, f"consumer at 40 rewound to {later[:5]}..."
    finally:
        c.stop()


def cut(c: ChaosCluster, flows: list[tuple[str, str]], name: str) -> None:
    assert c.api is not None
    for proxy, stream in dict.fromkeys(flows):
        c.api.add_toxic(proxy, f"{name}-{stream}", "timeout", stream, {"timeout": 0})


def wait_leader_other_than(c: ChaosCluster, topic: str, old: int, ask: int) -> int:
    """The leader as broker `ask` (a real port) sees it, once it is not `old`."""
    found: list[int] = []

    def moved() -> bool:
        with Admin(c.specs[ask - 1].address, request_timeout_ms=2000) as admin:
            info = admin.metadata([topic]).partition(topic, 0)
        if info is not None and info.leader_id > 0 and info.leader_id != old:
            found[:] = [info.leader_id]
        return bool(found)

    assert wait_until(moved, 20), "leadership did not move off the isolated broker"
    return found[0]
