"""Idempotence and transactions end to end, against real broker processes.

Client side: a stream with 5 batches in flight survives lost acknowledgements (fault proxy on
the leader's answers to the client) and a leader kill: every record acknowledged, stored exactly
once, in send order. Raw gRPC (no client library): a retry of an old batch after every broker
restarted is still deduplicated; a stale epoch is fenced; an out-of-order sequence, a negative
sequence, an unknown producer id and an oversized batch get a clear error and leave the log as
it was. Transactions through the client: commit visible atomically, abort invisible to
read_committed, fencing and timeouts raise their own fatal error types.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from semel import limits
from semel.chaos.wiring import CLIENTS, ChaosCluster, wait_until
from semel.client import Consumer, Producer
from semel.client import errors as client_errors
from semel.client.txn import ProducerFencedError, TransactionTimedOutError
from semel.clock import wall_clock_ms
from semel.v1 import broker_pb2, broker_pb2_grpc, common_pb2, txn_pb2, txn_pb2_grpc

from tests.cluster.harness import Cluster

pytestmark = pytest.mark.slow


def read_values(bootstrap: str, topic: str, partition: int, count: int, isolation: str = "read_uncommitted",
                timeout_s: float = 20) -> list[bytes]:
    out: list[bytes] = []
    with Consumer(bootstrap, auto_offset_reset="earliest", isolation_level=isolation) as consumer:
        consumer.assign([(topic, partition)])
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            out += [r.value for r in consumer.poll(timeout_ms=300)]
        # a little longer: anything beyond `count` would be a duplicate
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            out += [r.value for r in consumer.poll(timeout_ms=100)]
    return out


# --- lost acknowledgements through the fault proxy ---------------------------------------------
@pytest.fixture(scope="module")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosCluster]:
    cluster = ChaosCluster(tmp_path_factory.mktemp("eos-chaos"), brokers=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize("toxic", ["reset_peer", "timeout"])
def test_lost_acknowledgements_leave_every_record_once_in_order(chaos_cluster: ChaosCluster, toxic: str) -> None:
    c = chaos_cluster
    assert c.api is not None
    topic = f"lost-acks-{toxic.replace('_', '-')}"
    c.create_topic(topic, 1, 3)
    with Producer(c.bootstrap, linger_ms=1, batch_bytes=2000, max_in_flight=5, request_timeout_ms=1500,
                  delivery_timeout_ms=60_000, retry_backoff_ms=50) as producer:
        assert producer.idempotent
        producer.send(topic, b"warm", partition=0).result(20)
        leader = _leader(c.direct_bootstrap, topic)
        proxy, stream = c.flows(leader, CLIENTS)[0]
        stop = threading.Event()

        def nemesis() -> None:  # the leader's answers to the client are lost, on and off
            n = 0
            while not stop.is_set():
                name = f"lose-{n}"
                c.api.add_toxic(proxy, name, toxic, stream, {"timeout": 0})  # type: ignore[union-attr]
                stop.wait(0.3)
                c.api.remove_toxic(proxy, name)  # type: ignore[union-attr]
                stop.wait(0.4)
                n += 1

        thread = threading.Thread(target=nemesis, daemon=True)
        thread.start()
        try:
            futures = []
            for i in range(400):
                futures.append(producer.send(topic, b"v%04d" % i, partition=0))
                if i % 20 == 0:
                    time.sleep(0.05)
            offsets = [f.result(60).offset for f in futures]
        finally:
            stop.set()
            thread.join()
            c.heal_network()
        retries = producer.metrics()["batch_retries"]
    values = read_values(c.direct_bootstrap, topic, 0, 401)
    assert values == [b"warm"] + [b"v%04d" % i for i in range(400)], f"{len(values)} values read"
    assert offsets == list(range(1, 401))
    assert retries > 0, "the fault never hit a request"


def _leader(bootstrap: str, topic: str) -> int:
    from semel.client import Admin

    with Admin(bootstrap) as admin:
        info = admin.metadata([topic]).partition(topic, 0)
        assert info is not None and info.leader_id >= 0
        return info.leader_id


# --- real brokers: failover, restarts, raw gRPC cases, transactions --------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("eos"), brokers=3) as c:
        yield c


def test_leader_kill_during_a_stream_of_retries(cluster: Cluster) -> None:
    c = cluster
    c.create_topic("failover", 1, 3)
    with c.producer(linger_ms=1, batch_bytes=2000, max_in_flight=5, request_timeout_ms=3000,
                    delivery_timeout_ms=60_000, retry_backoff_ms=50) as producer:
        futures = [producer.send("failover", b"a%04d" % i, partition=0) for i in range(200)]
        futures[-1].result(30)
        leader = c.leader_of("failover", 0)
        sent = []
        for i in range(600):
            sent.append(producer.send("failover", b"b%04d" % i, partition=0))
            if i == 150:
                c.kill(leader)
            if i % 25 == 0:
                time.sleep(0.02)
        offsets = [f.result(60).offset for f in futures + sent]
    expected = [b"a%04d" % i for i in range(200)] + [b"b%04d" % i for i in range(600)]
    assert read_values(c._live_bootstrap(), "failover", 0, 800) == expected
    assert offsets == list(range(800))
    c.start_broker(leader)
    c.settle()


def _stub(c: Cluster, broker_id: int) -> broker_pb2_grpc.BrokerStub:
    return broker_pb2_grpc.BrokerStub(grpc.insecure_channel(c.address(broker_id)))


def _init_pid(c: Cluster, current: tuple[int, int] = (-1, -1)) -> tuple[int, int]:
    stub = txn_pb2_grpc.TransactionsStub(grpc.insecure_channel(c.address(c.running()[0])))
    r = stub.InitProducerId(txn_pb2.InitProducerIdRequest(producer_id=current[0], producer_epoch=current[1]), timeout=10)
    assert r.error_code == common_pb2.NONE, r.error_message
    return r.producer_id, r.producer_epoch


def _batch(values: list[bytes], pid: int, epoch: int, seq: int) -> common_pb2.RecordBatch:
    records = common_pb2.Records(records=[common_pb2.Record(offset_delta=i, value=v) for i, v in enumerate(values)])
    ts = wall_clock_ms()
    return common_pb2.RecordBatch(last_offset_delta=len(values) - 1, record_count=len(values), producer_id=pid,
                                  producer_epoch=epoch, base_sequence=seq, base_timestamp_ms=ts, max_timestamp_ms=ts,
                                  records=records.SerializeToString())


def _produce(c: Cluster, topic: str, batch: common_pb2.RecordBatch) -> broker_pb2.PartitionProduceResult:
    deadline = time.monotonic() + 30
    while True:
        leader = c.leader_of(topic, 0)
        try:
            r = _stub(c, leader).Produce(broker_pb2.ProduceRequest(acks=broker_pb2.ACKS_ALL, timeout_ms=5000, partitions=[
                broker_pb2.PartitionProduceData(topic=topic, partition=0, batch=batch)]), timeout=10).results[0]
        except grpc.RpcError:
            r = None
        if r is not None and r.error_code not in (common_pb2.NOT_LEADER_OR_FOLLOWER, common_pb2.NOT_ENOUGH_REPLICAS,
                                                  common_pb2.LEADER_NOT_AVAILABLE):
            return r
        assert time.monotonic() < deadline, f"no usable leader for {topic}"
        time.sleep(0.1)


def _end_offset(c: Cluster, topic: str) -> int:
    leader = c.leader_of(topic, 0)
    r = _stub(c, leader).ListOffsets(broker_pb2.ListOffsetsRequest(partitions=[
        broker_pb2.ListOffsetsPartition(topic=topic, partition=0, timestamp_ms=-1)]), timeout=10).results[0]
    assert r.error_code == common_pb2.NONE
    return r.offset


def test_bad_idempotent_input_gets_a_clear_error_and_leaves_the_log_untouched(cluster: Cluster) -> None:
    c = cluster
    c.create_topic("raw-idem", 1, 3)
    pid, epoch = _init_pid(c)
    ok = _produce(c, "raw-idem", _batch([b"a", b"b"], pid, epoch, 0))
    assert ok.error_code == common_pb2.NONE and ok.base_offset == 0
    end = _end_offset(c, "raw-idem")
    cases = {
        "out of order": (_batch([b"x"], pid, epoch, 5), common_pb2.OUT_OF_ORDER_SEQUENCE),
        "negative sequence": (_batch([b"x"], pid, epoch, -3), common_pb2.INVALID_RECORD),
        # allocated (same block) but unknown to the partition
        "unknown producer id": (_batch([b"x"], pid + 1, 0, 4), common_pb2.UNKNOWN_PRODUCER_ID),
        "never allocated": (_batch([b"x"], pid + 777_777, 0, 0), common_pb2.INVALID_PRODUCER_ID_MAPPING),
    }
    for what, (batch, code) in cases.items():
        r = _produce(c, "raw-idem", batch)
        assert r.error_code == code, f"{what}: {common_pb2.ErrorCode.Name(r.error_code)} {r.error_message}"
        assert r.error_message, f"{what}: no message"
    big = _batch([b"x" * (limits.MAX_BATCH_BYTES + 1)], pid, epoch, 2)
    try:
        r = _produce(c, "raw-idem", big)
        assert r.error_code in (common_pb2.RECORD_BATCH_TOO_LARGE, common_pb2.INVALID_RECORD), r.error_message
    except grpc.RpcError as exc:  # above the request limit: refused by the transport
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _end_offset(c, "raw-idem") == end
    # the producer goes on where it was: sequence 2 is still the next one
    assert _produce(c, "raw-idem", _batch([b"c"], pid, epoch, 2)).base_offset == 2


def test_stale_epoch_is_fenced(cluster: Cluster) -> None:
    c = cluster
    c.create_topic("raw-fence", 1, 3)
    pid, epoch = _init_pid(c)
    assert _produce(c, "raw-fence", _batch([b"a"], pid, epoch, 0)).error_code == common_pb2.NONE
    # a newer epoch of the same producer id (a KIP-360 bump) starts at sequence 0 ...
    assert _produce(c, "raw-fence", _batch([b"b"], pid, epoch + 1, 0)).error_code == common_pb2.NONE
    end = _end_offset(c, "raw-fence")
    stale = _produce(c, "raw-fence", _batch([b"zombie"], pid, epoch, 1))  # ... and fences the old one
    assert stale.error_code == common_pb2.INVALID_PRODUCER_EPOCH, stale.error_message
    assert _end_offset(c, "raw-fence") == end


def test_transaction_commit_is_visible_atomically_and_abort_never(cluster: Cluster) -> None:
    c = cluster
    c.create_topic("txn-out", 2, 3)
    with c.producer(transactional_id="eos-commit", linger_ms=1) as producer:
        producer.init_transactions(timeout_s=30)
        producer.begin_transaction()
        for i in range(10):
            producer.send("txn-out", b"c%d" % i, partition=i % 2).result(20)
        # sent and acknowledged but not committed: read_committed sees nothing yet
        assert read_values(c._live_bootstrap(), "txn-out", 0, 1, "read_committed", timeout_s=1) == []
        producer.commit_transaction()
        with producer.transaction():
            producer.send("txn-out", b"aborted", partition=0)
            producer.flush()
            producer.abort_transaction()
            producer.begin_transaction()   # the context manager commits this empty one
        with producer.transaction():
            producer.send("txn-out", b"after", partition=0)
    committed = read_values(c._live_bootstrap(), "txn-out", 0, 6, "read_committed")
    assert committed == [b"c0", b"c2", b"c4", b"c6", b"c8", b"after"]
    assert read_values(c._live_bootstrap(), "txn-out", 1, 5, "read_committed") == [b"c1", b"c3", b"c5", b"c7", b"c9"]
    assert b"aborted" in read_values(c._live_bootstrap(), "txn-out", 0, 7, "read_uncommitted")


def _end_offset_as_reader(bootstrap: str, topic: str, partition: int, isolation: str) -> int:
    with Consumer(bootstrap, auto_offset_reset="latest", isolation_level=isolation) as consumer:
        consumer.assign([(topic, partition)])
        return consumer.position(topic, partition)


def test_a_predicted_partition_the_transaction_does_not_write_is_closed_cleanly(cluster: Cluster) -> None:
    """The first add of the third transaction names both partitions the first two wrote
    (partition prediction); it writes only partition 0. Partition 1 gets a marker that closes
    nothing: no hanging transaction there (LSO = HW), its committed data intact, and the next
    transaction of the producer writes it again."""
    c = cluster
    c.create_topic("txn-predicted", 2, 3)
    with c.producer(transactional_id="eos-predicted", linger_ms=1) as producer:
        producer.init_transactions(timeout_s=30)
        for value in (b"a", b"b"):
            with producer.transaction():
                producer.send("txn-predicted", value + b"0", partition=0).result(20)
                producer.send("txn-predicted", value + b"1", partition=1).result(20)
        with producer.transaction():
            producer.send("txn-predicted", b"c0", partition=0).result(20)
        bootstrap = c._live_bootstrap()
        # a1, b1, their COMMIT markers and the third transaction's marker that closes nothing
        # (markers are written after commit_transaction() returns)
        assert wait_until(lambda: _end_offset_as_reader(bootstrap, "txn-predicted", 1, "read_uncommitted") == 5, timeout_s=20)
        assert _end_offset_as_reader(bootstrap, "txn-predicted", 1, "read_committed") == 5
        with producer.transaction():
            producer.send("txn-predicted", b"d1", partition=1).result(20)
    assert read_values(c._live_bootstrap(), "txn-predicted", 0, 3, "read_committed") == [b"a0", b"b0", b"c0"]
    assert read_values(c._live_bootstrap(), "txn-predicted", 1, 3, "read_committed") == [b"a1", b"b1", b"d1"]


def test_back_to_back_transactions_over_many_partitions(cluster: Cluster) -> None:
    """Short transactions with several batches in flight per partition from each one's start:
    concurrent first writes share the leader's verification (none may void another's:
    INVALID_TXN_STATE) and keep their order (a later one overtaking the first would be
    answered UNKNOWN_PRODUCER_ID; retried, never an abort)."""
    c = cluster
    c.create_topic("txn-loop", 6, 3)
    sent = 0
    with c.producer(transactional_id="eos-loop", linger_ms=2, batch_bytes=4096, max_in_flight=5) as producer:
        producer.init_transactions(timeout_s=30)
        for _ in range(15):
            with producer.transaction():
                end = time.monotonic() + 0.05
                while time.monotonic() < end:
                    producer.send("txn-loop", b"x" * 1000)
                    sent += 1
        assert producer.metrics()["transactions_committed"] == 15
    got = sum(len(read_values(c._live_bootstrap(), "txn-loop", p, 1, "read_committed", timeout_s=3)) for p in range(6))
    assert got == sent


def test_a_second_producer_fences_the_first_with_a_fatal_error(cluster: Cluster) -> None:
    c = cluster
    c.create_topic("txn-fence", 1, 3)
    zombie = c.producer(transactional_id="eos-fence", linger_ms=1)
    zombie.init_transactions(timeout_s=30)
    zombie.begin_transaction()
    zombie.send("txn-fence", b"zombie", partition=0).result(20)
    fresh = c.producer(transactional_id="eos-fence", linger_ms=1)
    fresh.init_transactions(timeout_s=30)  # aborts the zombie's transaction
    with pytest.raises(client_errors.FatalError) as info:
        zombie.commit_transaction(timeout_s=20)
    assert info.value.code in (common_pb2.PRODUCER_FENCED, common_pb2.INVALID_PRODUCER_EPOCH)
    with fresh.transaction():
        fresh.send("txn-fence", b"fresh", partition=0)
    fresh.close()
    zombie.close()
    assert read_values(c._live_bootstrap(), "txn-fence", 0, 1, "read_committed") == [b"fresh"]
    assert ProducerFencedError is client_errors.error_class(common_pb2.PRODUCER_FENCED)


def test_a_timed_out_transaction_raises_timed_out(cluster: Cluster) -> None:
    c = cluster
    c.create_topic("txn-timeout", 1, 3)
    with c.producer(transactional_id="eos-timeout", transaction_timeout_ms=500, linger_ms=1) as producer:
        producer.init_transactions(timeout_s=30)
        producer.begin_transaction()
        producer.send("txn-timeout", b"late", partition=0).result(20)
        def aborted() -> bool:
            coordinator = producer._txn_rpc.coordinator("eos-timeout", txn_pb2.TRANSACTION, int(time.monotonic() * 1000) + 5000)
            stub = txn_pb2_grpc.TransactionsStub(grpc.insecure_channel(coordinator))
            d = stub.DescribeTransactions(txn_pb2.DescribeTransactionsRequest(transactional_ids=["eos-timeout"]),
                                          timeout=5).transactions[0]
            return d.last_bump_reason == txn_pb2.BUMP_TIMEOUT

        assert wait_until(aborted, limits.TRANSACTION_ABORT_SCAN_INTERVAL_MS / 1000 + 10)
        with pytest.raises(TransactionTimedOutError) as info:
            producer.commit_transaction(timeout_s=20)
        assert "timed out" in str(info.value)
    assert read_values(c._live_bootstrap(), "txn-timeout", 0, 1, "read_committed", timeout_s=2) == []


def test_cli_produces_in_transactions_and_consumes_read_committed(cluster: Cluster) -> None:
    import os
    import subprocess
    import sys

    c = cluster
    c.create_topic("cli-txn", 1, 3)
    env = {**os.environ, "SEMEL_BOOTSTRAP": c._live_bootstrap()}
    lines = b"".join(b"line-%d\n" % i for i in range(25))
    produce = subprocess.run([sys.executable, "-m", "semel.cli", "produce", "cli-txn", "--partition", "0",
                              "--transactional-id", "cli-tx", "--txn-lines", "10"],
                             input=lines, capture_output=True, env=env, timeout=120)
    assert produce.returncode == 0, produce.stderr.decode()
    consume = subprocess.run([sys.executable, "-m", "semel.cli", "consume", "cli-txn", "--from-beginning",
                              "--isolation-level", "read_committed", "--max-messages", "25", "--timeout-ms", "10000"],
                             capture_output=True, env=env, timeout=120)
    assert consume.returncode == 0, consume.stderr.decode()
    assert consume.stdout.decode().split() == [f"line-{i}" for i in range(25)]


def test_retry_of_an_old_batch_after_every_broker_restarted_is_deduplicated(cluster: Cluster) -> None:
    """Last in the module: it restarts every broker."""
    c = cluster
    c.create_topic("raw-restart", 1, 3)
    pid, epoch = _init_pid(c)
    first = [_batch([b"r%d" % i], pid, epoch, i) for i in range(4)]
    offsets = [_produce(c, "raw-restart", b).base_offset for b in first]
    assert offsets == [0, 1, 2, 3]
    for broker_id in list(c.broker_ids):
        c.restart(broker_id, kill=True)
    again = _produce(c, "raw-restart", first[2])   # a retry of an old batch, after all restarts
    assert again.error_code == common_pb2.NONE, again.error_message
    assert again.base_offset == 2 and again.duplicate
    assert _end_offset(c, "raw-restart") == 4
    assert _produce(c, "raw-restart", _batch([b"r4"], pid, epoch, 4)).base_offset == 4
