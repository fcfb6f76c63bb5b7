"""Transactions end to end on real broker processes (raw gRPC stubs, `txn_stubs.TxnProducer`):
atomic visibility across partitions and topics, aborted data never visible to read_committed,
the LSO stopping at the first open transaction, zombie fencing, timeouts, idempotent producer
ids, admin tooling (describe producers, find-hanging, abort). Failover tests (coordinator /
partition leader killed while markers are written) are in test_txn_failover.py.
"""

from __future__ import annotations

import time

import pytest
from semel.v1 import broker_pb2, txn_pb2
from semel.v1.common_pb2 import ErrorCode

from tests.cluster import broker_harness as h
from tests.cluster import txn_stubs as ts

FLAGS = dict(internal_partitions=2, txn_abort_scan_interval_ms=200)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = h.Cluster(tmp_path_factory.mktemp("txn"), 3, **FLAGS)
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())
        c.close()


def created(c, name: str, partitions: int = 1) -> str:
    return c.created(name, partitions)


def test_commit_is_atomic_across_partitions_and_topics(cluster):
    c = cluster
    a, b = created(c, "atomic-a", 2), created(c, "atomic-b")
    p = ts.TxnProducer(c, "atomic").init()
    p.send(a, 0, [b"a0"])
    p.send(a, 1, [b"a1"])
    p.send(b, 0, [b"b0", b"b0'"])
    # open: nothing visible to read_committed, everything to read_uncommitted
    assert ts.read(c, a, 0)[0] == [] and ts.read(c, b, 0)[0] == []
    assert ts.read(c, b, 0, committed=False)[0] == [b"b0", b"b0'"]
    pid, epoch = p.pid, p.epoch
    p.commit()
    assert (p.pid, p.epoch) == (pid, epoch + 1)  # KIP-890: every transaction end bumps the epoch
    c.wait_for(lambda: ts.read(c, a, 0)[0] == [b"a0"] and ts.read(c, a, 1)[0] == [b"a1"]
               and ts.read(c, b, 0)[0] == [b"b0", b"b0'"], what="committed data visible")
    # the next transaction of the same producer works with the bumped epoch
    p.send(b, 0, [b"b1"])
    p.commit()
    c.wait_for(lambda: ts.read(c, b, 0)[0] == [b"b0", b"b0'", b"b1"], what="second commit visible")


def test_aborted_data_never_visible_to_read_committed(cluster):
    c = cluster
    t = created(c, "aborts")
    p = ts.TxnProducer(c, "aborter").init()
    p.send(t, 0, [b"gone-1", b"gone-2"])
    p.abort()
    p.send(t, 0, [b"kept"])
    p.commit()
    c.wait_for(lambda: ts.read(c, t)[0] == [b"kept"], what="the committed value after the aborted ones")
    assert ts.read(c, t, committed=False)[0] == [b"gone-1", b"gone-2", b"kept"]
    hw = ts.list_offset(c, t, committed=False)
    c.wait_for(lambda: ts.list_offset(c, t) == hw, what="LSO reaches the HW once everything is decided")
    # a read_committed reader starting in the middle of the aborted batch skips it too
    stub = c.broker_stub(c.leader_of(t))
    r = h.fetch(stub, t, 0, 1, isolation=broker_pb2.READ_COMMITTED)
    assert [b.base_offset for b in r.batches] == [3]
    assert r.next_fetch_offset == hw


def test_lso_stops_at_first_open_transaction(cluster):
    c = cluster
    t = created(c, "lso")
    plain = h.produce(c.broker_stub(c.leader_of(t)), t, 0, h.make_batch([b"plain-0"]))
    assert plain.error_code == ErrorCode.NONE
    first, second = ts.TxnProducer(c, "lso-1").init(), ts.TxnProducer(c, "lso-2").init()
    r1 = first.send(t, 0, [b"t1"])
    second.send(t, 0, [b"t2"])
    h.produce(c.broker_stub(c.leader_of(t)), t, 0, h.make_batch([b"plain-1"]))
    assert ts.list_offset(c, t) == r1.base_offset  # pinned by the first open transaction
    assert ts.read(c, t) == ([b"plain-0"], r1.base_offset)
    hw = ts.list_offset(c, t, committed=False)
    second.commit()
    c.wait_for(lambda: ts.list_offset(c, t, committed=False) == hw + 1, what="the second transaction's marker")
    assert ts.list_offset(c, t) == r1.base_offset  # still pinned: the first one is open
    first.abort()
    c.wait_for(lambda: ts.read(c, t)[0] == [b"plain-0", b"t2", b"plain-1"], what="LSO moves past both")


def test_zombie_is_fenced(cluster):
    c = cluster
    t = created(c, "zombie")
    old = ts.TxnProducer(c, "zombie").init()
    old.send(t, 0, [b"from-zombie"])
    new = ts.TxnProducer(c, "zombie").init()  # fences `old` and aborts its open transaction
    assert new.pid == old.pid and new.epoch > old.epoch
    with pytest.raises(ts.TxnError) as sent:
        old.send(t, 0, [b"late"], add=False)
    assert sent.value.code in (ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH)
    end = old.end_raw(True)
    assert end.error_code in (ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH), end
    old.added.clear()
    with pytest.raises(ts.TxnError) as added:
        old.add((t, 0))
    assert added.value.code in (ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH)
    new.send(t, 0, [b"from-new"])
    new.commit()
    c.wait_for(lambda: ts.read(c, t)[0] == [b"from-new"], what="only the new producer's data")


def test_write_outside_the_transaction_is_refused(cluster):
    """KIP-890: a transactional write to a partition not added to the transaction cannot open
    a (hanging) transaction there."""
    c = cluster
    t = created(c, "unverified")
    p = ts.TxnProducer(c, "unverified").init()
    p.send(t, 0, [b"ok"])  # starts the transaction (partition 0 added)
    other = created(c, "unverified-other")
    with pytest.raises(ts.TxnError) as refused:
        p.send(other, 0, [b"not added"], add=False)
    assert refused.value.code == ErrorCode.INVALID_TXN_STATE
    p.commit()
    assert ts.list_offset(c, other) == ts.list_offset(c, other, committed=False) == 0


def test_transaction_timeout_aborts_and_fences(cluster):
    c = cluster
    t = created(c, "timeout")
    p = ts.TxnProducer(c, "slowpoke", timeout_ms=500).init()
    p.send(t, 0, [b"too slow"])
    c.wait_for(lambda: ts.list_offset(c, t) == ts.list_offset(c, t, committed=False), timeout_s=10,
               what="the timed-out transaction is aborted (LSO = HW)")
    assert ts.read(c, t)[0] == []
    end = p.end_raw(True)
    assert end.error_code == ErrorCode.TRANSACTION_TIMED_OUT, end
    with pytest.raises(ts.TxnError) as sent:
        p.send(t, 0, [b"after"], add=False)
    assert sent.value.code in (ErrorCode.INVALID_PRODUCER_EPOCH, ErrorCode.PRODUCER_FENCED,
                               ErrorCode.TRANSACTION_TIMED_OUT)
    d = ts.describe(c, "slowpoke")
    assert d.state == txn_pb2.COMPLETE_ABORT and d.last_bump_reason == txn_pb2.BUMP_TIMEOUT


def test_idempotent_producer_ids_are_unique(cluster):
    c = cluster
    seen = set()
    for broker in c.brokers:
        for _ in range(3):
            r = ts.txn_stub(c, broker).InitProducerId(txn_pb2.InitProducerIdRequest(), timeout=10)
            assert r.error_code == ErrorCode.NONE, r
            assert r.producer_epoch == 0
            seen.add(r.producer_id)
    assert len(seen) == 3 * len(c.brokers)


def test_describe_and_list_transactions(cluster, capsys):
    import json

    from semel.cli import main as cli

    c = cluster
    t = created(c, "describe")
    p = ts.TxnProducer(c, "described").init()
    p.send(t, 0, [b"x"])
    d = ts.describe(c, "described")
    assert d.state == txn_pb2.ONGOING and d.producer_id == p.pid
    assert [(x.topic, x.partition) for x in d.partitions] == [(t, 0)]
    coordinator = ts.find_coordinator(c, "described")
    listed = ts.txn_stub(c, coordinator).ListTransactions(
        txn_pb2.ListTransactionsRequest(state_filters=[txn_pb2.ONGOING]), timeout=5)
    assert "described" in [x.transactional_id for x in listed.transactions]
    producers = ts.txn_stub(c, c.leader_of(t)).DescribeProducers(
        txn_pb2.DescribeProducersRequest(topic=t, partition=0), timeout=5)
    assert producers.error_code == ErrorCode.NONE
    (mine,) = [x for x in producers.producers if x.producer_id == p.pid]
    assert mine.current_txn_start_offset == 0 and mine.producer_epoch == p.epoch
    bootstrap = ",".join(b.address for b in c.brokers.values())
    capsys.readouterr()
    assert cli.main(["txn", "list", "-b", bootstrap, "--state", "ONGOING", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["transactions"]
    assert {"transactional_id": "described", "producer_id": p.pid, "state": "ONGOING",
            "coordinator": coordinator} in rows
    assert cli.main(["txn", "describe", "described", "-b", bootstrap, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["state"] == "ONGOING" and described["partitions"] == [f"{t}-0"]
    assert described["transaction_version"] == "TRANSACTION_VERSION_2"  # a gRPC client's id
    assert cli.main(["txn", "describe", "described", "-b", bootstrap]) == 0
    text = capsys.readouterr().out
    assert "state: ONGOING" in text and "Z, " in text and " s ago)" in text  # the start time, readable
    # a transaction the coordinator runs is not hanging, and abort refuses to tear it
    assert cli.main(["txn", "find-hanging", "-b", bootstrap, "--topic", t, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hanging"] == []
    assert cli.main(["txn", "abort", "-b", bootstrap, "--topic", t, "--partition", "0",
                     "--producer-id", str(p.pid)]) == 1
    assert "still running" in capsys.readouterr().err
    p.commit()
    group = ts.txn_stub(c, 1).FindCoordinator(txn_pb2.FindCoordinatorRequest(key="g", key_type=txn_pb2.GROUP),
                                              timeout=5)
    offsets = c.metadata(topics=["__consumer_offsets"]).topics[0]
    assert group.error_code == ErrorCode.NONE
    assert group.broker_id == offsets.partitions[group.coordinator_partition].leader_id


def test_hanging_transaction_found_and_aborted_by_the_tool(cluster, capsys):
    """The coordinators lose their state (every broker's `__transaction_state` replicas and
    views wiped while the cluster is down: the disaster an unclean election can cause) while a
    transaction is open: it hangs, pinning the LSO. `semel txn find-hanging` finds it and
    `semel txn abort` ends it; the LSO moves on. (It restarts the whole cluster.)"""
    import json
    import shutil

    from semel.cli import main as cli

    c = cluster
    t = created(c, "hanging")
    p = ts.TxnProducer(c, "hanger").init()
    r = p.send(t, 0, [b"stuck"])
    h.produce(c.broker_stub(c.leader_of(t)), t, 0, h.make_batch([b"after"]))
    assert ts.list_offset(c, t) == r.base_offset
    for i, b in c.brokers.items():
        c.kill(i)
    for b in c.brokers.values():
        for d in (b.data_dir / "logs").glob("__transaction_state-*"):
            shutil.rmtree(d)
        shutil.rmtree(b.data_dir / "kv", ignore_errors=True)  # views (and producer snapshots: replayed)
    c.start_all()
    t0 = time.monotonic()
    assert ts.describe(c, "hanger").error_code == ErrorCode.TRANSACTIONAL_ID_NOT_FOUND
    assert ts.list_offset(c, t) == r.base_offset  # still pinned: nobody will ever end it
    bootstrap = ",".join(b.address for b in c.brokers.values())
    capsys.readouterr()
    assert cli.main(["txn", "find-hanging", "-b", bootstrap, "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)["hanging"]
    assert (found["topic"], found["partition"], found["producer_id"]) == (t, 0, p.pid)
    assert found["reason"] == "unknown-to-coordinator" and found["start_offset"] == r.base_offset
    assert cli.main(["producers", "describe", t, "-b", bootstrap, "--json"]) == 0
    producers = json.loads(capsys.readouterr().out)["producers"]
    assert any(x["producer_id"] == p.pid and x["current_txn_start_offset"] == r.base_offset for x in producers)
    assert cli.main(["txn", "abort", "-b", bootstrap, "--topic", t, "--partition", "0",
                     "--producer-id", str(p.pid)]) == 0
    c.wait_for(lambda: ts.list_offset(c, t) == ts.list_offset(c, t, committed=False), what="LSO moves on")
    assert ts.read(c, t)[0] == [b"after"]
    took = time.monotonic() - t0
    capsys.readouterr()
    assert cli.main(["txn", "find-hanging", "-b", bootstrap, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hanging"] == []
    with capsys.disabled():
        print(f"\nHANGING: found and aborted {took:.2f} s after the restart")


def test_pipelined_first_writes_share_one_verification(cluster):
    """Two produce requests of a producer's first writes to a partition in flight at once
    (seq 0 and seq 5): both wait for one verification; neither voids the other."""
    c = cluster
    t = created(c, "pipelined")
    leader = c.leader_of(t)
    # a coordinator on another broker: the verification is a remote call the second request overlaps.
    # With 2 state partitions both may be led by `leader` for a while (after the earlier tests'
    # restarts, until the preferred-leader rebalance), so wait for one that is not.
    tid = c.wait_for(lambda: next((f"pipelined-{i}" for i in range(20)
                                   if ts.find_coordinator(c, f"pipelined-{i}") != leader), None),
                     timeout_s=60, what="a transactional id coordinated away from the partition leader")
    p = ts.TxnProducer(c, tid).init()
    for _ in range(3):
        p.add((t, 0))
        stub = c.broker_stub(c.leader_of(t))
        futures = []
        for seq in (0, 5):
            batch = ts.txn_batch([b"v%d" % (seq + i) for i in range(5)], p.pid, p.epoch, seq)
            futures.append(stub.Produce.future(broker_pb2.ProduceRequest(
                acks=broker_pb2.ACKS_ALL, timeout_ms=5000, transactional_id=p.tid,
                partitions=[broker_pb2.PartitionProduceData(topic=t, partition=0, batch=batch)]), timeout=10))
        codes = [ErrorCode.Name(f.result().results[0].error_code) for f in futures]
        assert codes == ["NONE", "NONE"]
        p.commit()
    c.wait_for(lambda: len(ts.read(c, t)[0]) == 30, what="every pipelined write committed")


def test_next_transaction_added_while_the_previous_markers_are_written(cluster):
    """AddPartitionsToTxn sent right after EndTxn answered (new epoch) waits at the
    coordinator until the previous transaction's markers and Complete* record are written,
    and answers NONE at the first try instead of CONCURRENT_TRANSACTIONS. Commits and aborts
    alternate: read_committed sees exactly the committed transactions' records."""
    c = cluster
    t = created(c, "next-txn", 2)
    p = ts.TxnProducer(c, "next-txn").init()
    expected: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(6):
        # both partitions: their markers go to the partition leaders (at least one remote write)
        values = {part: [b"%d-%d" % (i, part)] for part in (0, 1)}
        for part in (0, 1):
            p.send(t, part, values[part])
        commit = i % 2 == 0
        p.end(commit)
        if commit:
            for part in (0, 1):
                expected[part] += values[part]
        stub = ts.txn_stub(c, ts.find_coordinator(c, p.tid))
        r = stub.AddPartitionsToTxn(txn_pb2.AddPartitionsToTxnRequest(
            transactional_id=p.tid, producer_id=p.pid, producer_epoch=p.epoch,
            partitions=[txn_pb2.TopicPartition(topic=t, partition=part) for part in (0, 1)]), timeout=10)
        assert ErrorCode.Name(r.error_code) == "NONE", r
        p.added.update({(t, 0), (t, 1)})
    p.commit()
    c.wait_for(lambda: all(ts.read(c, t, part)[0] == expected[part] for part in (0, 1)),
               what="exactly the committed transactions visible")


def test_first_transactional_init_on_a_fresh_coordinator_needs_no_retry(tmp_path):
    """A coordinator that has handed out no producer id yet has no id block: InitProducerId waits
    for one (as the idempotent InitProducerId does) instead of answering COORDINATOR_NOT_AVAILABLE
    to the first transactional producer of every fresh or restarted broker."""
    c = h.Cluster(tmp_path / "fresh", 3, **FLAGS)
    try:
        c.start_all()
        tid = "first-of-its-coordinator"
        while True:  # only the coordinator's own start-up is waited for: found and loaded
            coordinator = ts.find_coordinator(c, tid)
            r = ts.txn_stub(c, coordinator).InitProducerId(txn_pb2.InitProducerIdRequest(
                transactional_id=tid, transaction_timeout_ms=60_000, producer_id=-1, producer_epoch=-1), timeout=15)
            if r.error_code not in (ErrorCode.NOT_COORDINATOR, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS):
                break
            time.sleep(0.05)
        assert r.error_code == ErrorCode.NONE, r
        assert r.producer_id >= 0 and r.producer_epoch == 0
    finally:
        c.close()
