"""The Broker servicer in one process over a real ReplicaManager and partition store, no gRPC transport:
acks=all waiting and timeouts, min ISR, the in-flight bound, long-poll without busy loops, and
ISR shrink driven by the replica manager's injected clock (no sleeping out the lag time)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from semel import limits
from semel.clock import wall_clock_ms
from semel.cluster.broker.auto_create import AutoCreateSettings, AutoCreator
from semel.cluster.broker.metrics import BrokerMetrics
from semel.cluster.broker.process import BrokerConfig
from semel.cluster.broker.replica_limit import PartitionReplicaLimit
from semel.cluster.broker.replica_manager import ReplicaManager
from semel.cluster.broker.replication import IsrMaintainer, LeaderReplicationService
from semel.cluster.broker.server import BrokerService, effective_timeout_ms
from semel.limits import ADMIN_TIMEOUT_MS_DEFAULT
from semel.cluster.broker.storage_adapter import open_replica_store
from semel.client.records import encode_record
from semel.cluster.metadata import state as md
from semel.storage.kv import KvStore
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb
from semel.v1 import replication_pb2 as rpb

from tests.cluster.fake_time import FakeClock, run_ready


def image(isr=(1, 2), min_isr=2, version=1) -> md.MetadataImage:
    brokers = {b: md.BrokerRegistration(b, f"inc{b}", "127.0.0.1", 9000 + b, None, b, False, 1) for b in (1, 2)}
    part = md.PartitionState("t", 0, (1, 2), tuple(isr), 1, 0, version)
    topic = md.Topic("t", "00112233445566778899", False, 2, md.TopicConfig(min_insync_replicas=min_isr), (part,))
    # producer ids below 1000 were allocated (a produce with an id never allocated is refused)
    return md.MetadataImage(version=version, brokers=brokers, topics={"t": topic}, next_producer_id=1000)


class FakeQuorum:
    def __init__(self, img: md.MetadataImage) -> None:
        self.img = img

    def image(self) -> md.MetadataImage:
        return self.img

    def active_controller(self) -> None:
        return None


class FakeBroker:
    """Broker 1 over the real partition store (producer state, markers, the aborted index), with
    its own RocksDB; `close()` closes both."""

    def __init__(self, tmp_path, img: md.MetadataImage, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig(broker_id=1, max_inflight_produce=4)
        self.quorum = FakeQuorum(img)
        self.clock = FakeClock()
        self.metrics = BrokerMetrics()
        self.auto_create = AutoCreator(self, AutoCreateSettings())  # type: ignore[arg-type]  # off, as by default
        self.partition_replica_limit = PartitionReplicaLimit.of(self.config.max_partition_replicas_per_broker)
        self.kv = KvStore.open(tmp_path / "kv")
        self.rm = ReplicaManager(1, tmp_path, 10_000, lambda d, t, p: open_replica_store(d, t, p, kv=self.kv),
                                 clock=self.clock)
        self.rm.broker_epoch = 1
        self.rm.reconcile(img)

    def close(self) -> None:
        self.rm.close()
        self.kv.close()

    def set_image(self, img: md.MetadataImage) -> None:
        self.quorum.img = img
        self.rm.reconcile(img)


def batch(value: bytes = b"v") -> pb.RecordBatch:
    ts = wall_clock_ms()
    return pb.RecordBatch(last_offset_delta=0, record_count=1, producer_id=-1, producer_epoch=-1, base_sequence=-1,
                          base_timestamp_ms=ts, max_timestamp_ms=ts, records=encode_record(0, 0, None, value))


def _value(b: pb.RecordBatch) -> bytes:
    """The value of a one-record batch."""
    (record,) = pb.Records.FromString(b.records).records
    return record.value


def produce_req(acks=bpb.ACKS_ALL, timeout_ms=2000) -> bpb.ProduceRequest:
    return bpb.ProduceRequest(acks=acks, timeout_ms=timeout_ms, partitions=[
        bpb.PartitionProduceData(topic="t", partition=0, batch=batch())])


@pytest.fixture
def broker(tmp_path):
    b = FakeBroker(tmp_path, image())
    yield b
    b.close()


def run(coro):
    return asyncio.run(coro)


def test_acks_all_times_out_as_unknown_when_the_follower_never_fetches(broker):
    svc = BrokerService(broker)
    r = run(svc.Produce(produce_req(timeout_ms=100), None)).results[0]
    assert r.error_code == pb.REQUEST_TIMED_OUT and "unknown" in r.error_message
    assert r.base_offset == 0  # it was appended: the outcome really is unknown
    assert len(broker.rm.get("t", 0).pending) == 0  # the waiter was removed


def test_acks_all_completes_when_the_follower_reaches_it(broker):
    async def scenario():
        svc = BrokerService(broker)
        task = asyncio.ensure_future(svc.Produce(produce_req(), None))
        await run_ready()
        assert not task.done()
        broker.rm.get("t", 0).on_follower_fetch(2, 1, broker.clock.monotonic_ms())
        return (await task).results[0]
    r = run(scenario())
    assert r.error_code == pb.NONE and (r.base_offset, r.last_offset) == (0, 0)


def test_min_isr_rejects_before_append_and_acks_1_still_works(broker):
    broker.set_image(image(isr=(1,), version=2))
    svc = BrokerService(broker)
    r = run(svc.Produce(produce_req(), None)).results[0]
    assert r.error_code == pb.NOT_ENOUGH_REPLICAS
    assert broker.rm.get("t", 0).log_end_offset == 0
    r = run(svc.Produce(produce_req(acks=bpb.ACKS_LEADER), None)).results[0]
    assert r.error_code == pb.NONE


def test_inflight_bound_and_bad_requests(broker):
    svc = BrokerService(broker)
    svc.inflight_produce = broker.config.max_inflight_produce
    r = run(svc.Produce(produce_req(), None)).results[0]
    assert r.error_code == pb.RESOURCE_EXHAUSTED
    svc.inflight_produce = 0
    svc.inflight_by_peer[""] = limits.MAX_INFLIGHT_PRODUCE_PER_CONNECTION
    assert run(svc.Produce(produce_req(), None)).results[0].error_code == pb.RESOURCE_EXHAUSTED
    svc.inflight_by_peer.clear()
    twice = produce_req(acks=bpb.ACKS_LEADER)
    twice.partitions.append(twice.partitions[0])
    codes = [x.error_code for x in run(svc.Produce(twice, None)).results]
    assert codes == [pb.NONE, pb.INVALID_REQUEST]
    missing = bpb.ProduceRequest(acks=bpb.ACKS_LEADER, partitions=[bpb.PartitionProduceData(topic="t", partition=0)])
    assert run(svc.Produce(missing, None)).results[0].error_code == pb.INVALID_REQUEST


def test_long_poll_wakes_on_hw_advance_without_busy_looping(broker):
    broker.set_image(image(isr=(1,), min_isr=1, version=2))  # HW follows the leader's LEO
    svc = BrokerService(broker)
    calls = 0
    inner = svc._fetch_once

    def counting(*args):
        nonlocal calls
        calls += 1
        return inner(*args)

    svc._fetch_once = counting  # type: ignore[method-assign]
    req = bpb.FetchRequest(partitions=[bpb.FetchPartition(topic="t", partition=0, fetch_offset=0,
                                                          current_leader_epoch=-1)],
                           max_wait_ms=5000, min_bytes=1)

    async def woken_by_data():
        task = asyncio.ensure_future(svc.Fetch(req, None))
        await run_ready()
        assert not task.done()  # parked on the partition
        await svc.Produce(produce_req(acks=bpb.ACKS_LEADER), None)
        await run_ready()
        assert task.done()  # woken by the append, not by its 5 s deadline
        return task.result()

    resp = run(woken_by_data())
    assert [b.base_offset for b in resp.results[0].batches] == [0]
    assert calls <= 3
    calls = 0
    req.partitions[0].fetch_offset = 1
    req.max_wait_ms = 200

    async def expires_empty():
        task = asyncio.ensure_future(svc.Fetch(req, None))
        await run_ready()
        assert not task.done()  # nothing to read: it waits out its max_wait_ms ...
        return await asyncio.wait_for(task, 5)

    resp = run(expires_empty())
    assert not resp.results[0].batches  # ... and then answers, empty
    assert calls <= 2  # parked, not polled


def test_a_follower_that_stops_fetching_leaves_the_isr_once_the_injected_clock_passes_the_lag_time(broker):
    """replica.lag.time.max.ms (10 s here) on the clock the replica manager was given: the
    append path, the leader side of replication and the ISR maintainer's own loop all read it,
    so moving it by hand drives the shrink, and a read of the host's clock anywhere on that
    path would show up as a wrong (or missing) ISR change."""
    clock = broker.clock
    p = broker.rm.get("t", 0)
    submitted: list[md.AlterPartition] = []
    proposed = asyncio.Event()

    async def submit(cmd: md.AlterPartition) -> None:
        submitted.append(cmd)
        proposed.set()

    def follower_fetch(offset: int) -> rpb.ReplicaFetchRequest:
        return rpb.ReplicaFetchRequest(replica_id=2, max_wait_ms=0, partitions=[rpb.ReplicaFetchPartition(
            topic="t", partition=0, fetch_offset=offset, current_leader_epoch=0, last_fetched_epoch=0)])

    async def scenario() -> None:
        svc = BrokerService(broker)
        replication = LeaderReplicationService(broker.rm, max_fetch_bytes=1 << 20)
        isr = IsrMaintainer(broker.rm, submit, interval_ms=1)
        assert (await svc.Produce(produce_req(acks=bpb.ACKS_LEADER), None)).results[0].error_code == pb.NONE
        (caught_up,) = (await replication.handle(follower_fetch(1))).results
        assert not caught_up.records and caught_up.high_watermark == 1  # at the log end: the HW moved
        clock.advance(5_000)
        await svc.Produce(produce_req(acks=bpb.ACKS_LEADER), None)  # follower caught up until this append
        assert p.progress.followers[2].last_caught_up_ms == clock.monotonic_ms()
        clock.advance(10_000)  # exactly the lag time since: still in
        isr.check(clock.monotonic_ms())
        assert submitted == [] and p.isr == (1, 2)
        clock.advance(1)
        isr.start()  # its loop reads the replica manager's clock
        try:
            await asyncio.wait_for(proposed.wait(), 5)
        finally:
            await isr.stop()
        (cmd,) = submitted
        assert (cmd.topic, cmd.partition, cmd.new_isr) == ("t", 0, (1,))
        assert p.progress.proposed_isr == frozenset({1})

    run(scenario())


def test_replicas_of_topics_deleted_while_down_are_removed(broker, tmp_path):
    logs = tmp_path / "logs"
    kept = broker.rm.get("t", 0).directory
    (logs / "gone-0.aaaaaaaaaaaa").mkdir()  # topic deleted while the broker was down
    (logs / "t-0.ffffffffffff").mkdir()  # same name, older incarnation of the topic
    (logs / "t-7.001122334455").mkdir()  # a partition this broker does not host
    (logs / "unrelated").mkdir()
    removed = broker.rm.remove_stale_dirs(broker.quorum.image())
    assert sorted(removed) == ["gone-0.aaaaaaaaaaaa", "t-0.ffffffffffff", "t-7.001122334455"]
    assert kept.exists() and (logs / "unrelated").exists()


def test_a_broker_not_yet_registered_does_not_call_a_partition_unknown(tmp_path):
    """Before its registration commits (a restart replaying a stale image) or while fenced, the
    broker's image is not authoritative: a partition it does not host is "not here, retry"
    (NOT_LEADER_OR_FOLLOWER), never UNKNOWN_TOPIC_OR_PARTITION, which callers may take as final
    (the coordinator's marker channel did: docs/chaos.md, finding 6)."""
    b = FakeBroker(tmp_path, md.MetadataImage(version=0, brokers={}, topics={}))  # nothing replayed yet
    try:
        assert not b.rm.active
        svc = BrokerService(b)
        r = run(svc.Produce(produce_req(acks=bpb.ACKS_LEADER), None)).results[0]
        assert r.error_code == pb.NOT_LEADER_OR_FOLLOWER and "not serving yet" in r.error_message
        b.set_image(image())  # registered and caught up: the image is the truth again
        assert b.rm.active
        missing = bpb.ProduceRequest(acks=bpb.ACKS_LEADER, partitions=[
            bpb.PartitionProduceData(topic="nope", partition=0, batch=batch())])
        assert run(svc.Produce(missing, None)).results[0].error_code == pb.UNKNOWN_TOPIC_OR_PARTITION
    finally:
        b.close()


def test_role_listeners_see_every_role_change(broker):
    from semel.cluster.broker.replica_manager import Role

    seen = []
    broker.rm.add_role_listener(lambda p, role, epoch: seen.append((p.key, role, epoch)))
    moved = image(version=2)
    part = dataclasses.replace(moved.topics["t"].partitions[0], leader=2, leader_epoch=1)
    topic = dataclasses.replace(moved.topics["t"], partitions=(part,))
    broker.set_image(dataclasses.replace(moved, topics={"t": topic}))
    assert seen == [(("t", 0), Role.FOLLOWER, 1)]


def real_store_broker(tmp_path, img: md.MetadataImage):
    """A FakeBroker with the default broker config, as idempotence and transactions need. A
    generator: close it to close the broker."""
    b = FakeBroker(tmp_path, img, BrokerConfig(broker_id=1))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def txn_broker(tmp_path):
    """A broker leading t-0 alone (ISR {1}) over the real partition store."""
    yield from real_store_broker(tmp_path, image(isr=(1,), min_isr=1))


@pytest.fixture
def idempotent_broker(tmp_path):
    """A broker leading t-0 with ISR {1, 2} (min ISR 2) over the real partition store: the
    follower (2) never fetches unless a test says so."""
    yield from real_store_broker(tmp_path, image())


async def until(cond, steps_max: int = 100) -> None:
    """Let the loop run other tasks until `cond()` holds (no timed sleep; bounded)."""
    for _ in range(steps_max):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not reached in {steps_max} loop steps")


def idempotent_req(producer_id: int, seq: int, value: bytes, timeout_ms: int) -> bpb.ProduceRequest:
    rb = batch(value)
    rb.producer_id, rb.producer_epoch, rb.base_sequence = producer_id, 0, seq
    return bpb.ProduceRequest(acks=bpb.ACKS_ALL, timeout_ms=timeout_ms, partitions=[
        bpb.PartitionProduceData(topic="t", partition=0, batch=rb)])


def test_a_retry_deduplicated_behind_newer_waiters_is_answered(idempotent_broker):
    """Issue 20, item 6 (first finding): the followers do not fetch; producer A's acks=all
    batch times out (outcome unknown), producer B appends behind it and waits, and A resends
    the same batch as docs/protocol.md says. The leader deduplicates it and waits for the HW
    to pass A's *original* offset, below B's waiter: that wait must be parked in place (it
    tripped "acks added out of offset order", and the RPC failed with gRPC UNKNOWN), answered
    with the original offsets once the HW passes them, and leave B's wait alone."""
    b = idempotent_broker
    svc = BrokerService(b)
    p = b.rm.get("t", 0)

    async def scenario():
        first = (await svc.Produce(idempotent_req(7, 0, b"a", timeout_ms=1), None)).results[0]
        assert first.error_code == pb.REQUEST_TIMED_OUT and first.base_offset == 0
        other = asyncio.ensure_future(svc.Produce(idempotent_req(8, 0, b"b", timeout_ms=60_000), None))
        await until(lambda: len(p.pending) == 1)  # B appended (offset 1) and parked its waiter
        retry = asyncio.ensure_future(svc.Produce(idempotent_req(7, 0, b"a", timeout_ms=60_000), None))
        await until(lambda: len(p.pending) == 2 or retry.done())
        assert not retry.done(), retry.result()
        assert p.log_end_offset == 2  # the retry appended nothing
        p.on_follower_fetch(2, 1, b.clock.monotonic_ms())  # the follower has A's batch only: HW 1
        a = (await retry).results[0]
        assert not other.done()
        p.on_follower_fetch(2, 2, b.clock.monotonic_ms())
        return a, (await other).results[0]

    a, other = run(scenario())
    assert a.error_code == pb.NONE and a.duplicate and (a.base_offset, a.last_offset) == (0, 0)
    assert other.error_code == pb.NONE and (other.base_offset, other.last_offset) == (1, 1)
    assert len(p.pending) == 0


def test_a_retry_of_a_batch_below_the_hw_is_answered_at_once(idempotent_broker):
    """The same retry once the HW already passed the original batch: answered at once with
    the original offsets, while a newer waiter still waits."""
    b = idempotent_broker
    svc = BrokerService(b)
    p = b.rm.get("t", 0)

    async def scenario():
        first = (await svc.Produce(idempotent_req(7, 0, b"a", timeout_ms=1), None)).results[0]
        assert first.error_code == pb.REQUEST_TIMED_OUT
        other = asyncio.ensure_future(svc.Produce(idempotent_req(8, 0, b"b", timeout_ms=60_000), None))
        await until(lambda: len(p.pending) == 1)
        p.on_follower_fetch(2, 1, b.clock.monotonic_ms())  # HW 1: past A's batch, not B's
        a = (await svc.Produce(idempotent_req(7, 0, b"a", timeout_ms=60_000), None)).results[0]
        assert not other.done() and len(p.pending) == 1
        other.cancel()
        return a

    a = run(scenario())
    assert a.error_code == pb.NONE and a.duplicate and (a.base_offset, a.last_offset) == (0, 0)


def test_read_committed_stops_at_the_lso_and_drops_aborted_data_and_markers(txn_broker):
    b = txn_broker
    svc = BrokerService(b)

    def produce(rb):
        req = bpb.ProduceRequest(acks=bpb.ACKS_LEADER, partitions=[
            bpb.PartitionProduceData(topic="t", partition=0, batch=rb)])
        r = run(svc.Produce(req, None)).results[0]
        assert r.error_code == pb.NONE, r
        return r.base_offset

    def fetch(isolation):
        req = bpb.FetchRequest(isolation_level=isolation, partitions=[
            bpb.FetchPartition(topic="t", partition=0, fetch_offset=0, current_leader_epoch=-1)])
        return run(svc.Fetch(req, None)).results[0]

    produce(batch(b"plain"))                                   # 0
    txn = batch(b"txn")
    txn.producer_id, txn.producer_epoch, txn.base_sequence, txn.attributes = 9, 0, 0, 0x10
    assert produce(txn) == 1                                   # 1, open transaction
    produce(batch(b"after"))                                   # 2
    rc = fetch(bpb.READ_COMMITTED)
    assert rc.last_stable_offset == 1 and [x.base_offset for x in rc.batches] == [0]
    assert len(fetch(bpb.READ_UNCOMMITTED).batches) == 3
    p = b.rm.get("t", 0)
    marker = p.append_marker(9, 0, commit=False, coordinator_epoch=0, now=wall_clock_ms())  # 3: ABORT
    assert marker.error_code == pb.NONE and marker.base_offset == 3
    rc = fetch(bpb.READ_COMMITTED)
    assert rc.last_stable_offset == rc.high_watermark == 4
    assert [_value(x) for x in rc.batches] == [b"plain", b"after"]  # aborted data and the marker dropped
    assert rc.next_fetch_offset == 4


def test_read_committed_filters_aborts_per_producer_and_asks_only_for_the_chunk_read(txn_broker):
    """Aborted batches are dropped by producer (a committed transaction interleaved with an
    aborted one stays), and the fetch asks storage for the aborts overlapping the batches it
    read, not everything up to the LSO (chaos finding 8: a read from offset 0 of a log with
    thousands of aborts stalled the leader's event loop for seconds)."""
    b = txn_broker
    svc = BrokerService(b)
    seqs: dict[int, int] = {}

    def produce(value, pid=-1):
        rb = batch(value)
        if pid >= 0:
            rb.producer_id, rb.producer_epoch, rb.attributes = pid, 0, 0x10
            rb.base_sequence = seqs.get(pid, 0)
            seqs[pid] = rb.base_sequence + 1
        req = bpb.ProduceRequest(acks=bpb.ACKS_LEADER, partitions=[
            bpb.PartitionProduceData(topic="t", partition=0, batch=rb)])
        assert run(svc.Produce(req, None)).results[0].error_code == pb.NONE

    produce(b"plain-0")                    # 0
    produce(b"aborted-1", pid=9)           # 1
    produce(b"committed-2", pid=10)        # 2
    produce(b"aborted-3", pid=9)           # 3
    p = b.rm.get("t", 0)
    assert p.append_marker(9, 0, commit=False, coordinator_epoch=0, now=wall_clock_ms()).base_offset == 4
    assert p.append_marker(10, 0, commit=True, coordinator_epoch=0, now=wall_clock_ms()).base_offset == 5
    produce(b"plain-6")                    # 6
    asked = []
    real = p.store.aborted_in_range
    p.store.aborted_in_range = lambda start, end: asked.append((start, end)) or real(start, end)

    def fetch(offset, max_bytes=0):
        req = bpb.FetchRequest(isolation_level=bpb.READ_COMMITTED, partitions=[
            bpb.FetchPartition(topic="t", partition=0, fetch_offset=offset, max_bytes=max_bytes)])
        return run(svc.Fetch(req, None)).results[0]

    everything = fetch(0)
    assert [_value(x) for x in everything.batches] == [b"plain-0", b"committed-2", b"plain-6"]
    assert everything.last_stable_offset == 7 and asked == [(0, 7)]
    asked.clear()
    first = fetch(0, max_bytes=1)  # one batch: the aborts of [0, 1) only
    assert [_value(x) for x in first.batches] == [b"plain-0"] and asked == [(0, 1)]
    asked.clear()
    second = fetch(1, max_bytes=1)
    assert second.batches == [] and second.next_fetch_offset == 2 and asked == [(1, 2)]


def test_a_timeout_of_zero_or_below_is_the_default_and_a_large_one_is_capped():
    """Produce and CreateTopics/DeleteTopics read `timeout_ms` alike: a negative value was a 1 ms
    wait for the admin calls (a create then answered "timed out" while it committed)."""
    for unset in (0, -1, -(2**31)):
        assert effective_timeout_ms(unset, ADMIN_TIMEOUT_MS_DEFAULT) == ADMIN_TIMEOUT_MS_DEFAULT == 5_000
        assert effective_timeout_ms(unset, 30_000) == 30_000
    assert effective_timeout_ms(1, ADMIN_TIMEOUT_MS_DEFAULT) == 1
    assert effective_timeout_ms(2**31 - 1, 30_000) == limits.MAX_PRODUCE_TIMEOUT_MS == 300_000
