"""The one write path (`semel.cluster.broker.write_path`) over a real ReplicaManager, and each
writer that goes through it: produce, transaction markers, the transaction log, the group log.

The broker leads t-0 with replicas {1, 2}; the follower (2) never fetches unless a test says
so (`on_follower_fetch`), so every wait ends exactly when a test makes it end.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from semel import internal_topics
from semel.clock import wall_clock_ms
from semel.cluster.broker import write_path
from semel.cluster.broker.process import BrokerConfig
from semel.cluster.broker.produce_validation import header_from_fields
from semel.cluster.broker.replica_manager import (
    Partition,
    PartitionError,
    WriteResult,
)
from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
from semel.cluster.broker.txn_service import write_marker_and_wait
from semel.coordinator.txn_coordinator import AppendRecords
from semel.storage.batch import encode_batch
from semel.v1 import common_pb2 as pb

from tests.cluster.fake_time import FakeClock
from tests.cluster.test_broker_service_inprocess import (
    FakeBroker,
    FakeQuorum,
    image,
    run,
)

WAITING = [write_path.PRODUCE_ACKS_ALL, write_path.TXN_MARKER, write_path.TXN_STATE]
ACKS_ALL = [*WAITING, write_path.GROUP_LOG]


@pytest.fixture
def broker(tmp_path):
    b = FakeBroker(tmp_path, image())  # ISR {1, 2}, min_insync_replicas 2
    yield b
    b.rm.close()


def header(n: int = 1):
    return header_from_fields(last_offset_delta=n - 1, producer_id=-1, producer_epoch=-1, base_sequence=-1,
                              record_count=n, attributes=0, base_timestamp_ms=wall_clock_ms(), max_timestamp_ms=wall_clock_ms(),
                              records_bytes=3)


def write_to(p: Partition, payload: bytes = b"abc"):
    return lambda: p.append_as_leader(header(), payload, wall_clock_ms())


def shrink_isr(b: FakeBroker, version: int) -> None:
    b.set_image(image(isr=(1,), version=version))  # still min_insync_replicas 2


@pytest.mark.parametrize("policy", ACKS_ALL, ids=repr)
def test_acks_all_refuses_below_min_isr_before_writing(broker, policy):
    shrink_isr(broker, 2)
    p = broker.rm.get("t", 0)
    out = write_path.start_append(p, write_to(p), policy)
    assert isinstance(out, WriteResult) and out.error_code == pb.NOT_ENOUGH_REPLICAS
    assert "nothing was written" in out.message and out.base_offset == -1
    assert p.log_end_offset == 0 and len(p.pending) == 0


def test_acks_leader_appends_whatever_the_isr(broker):
    shrink_isr(broker, 2)
    p = broker.rm.get("t", 0)
    out = write_path.start_append(p, write_to(p), write_path.PRODUCE_ACKS_LEADER)
    assert isinstance(out, WriteResult) and out.error_code == pb.NONE and out.base_offset == 0
    assert len(p.pending) == 0


@pytest.mark.parametrize("policy", WAITING, ids=repr)
def test_a_full_waiter_table_refuses_before_writing(broker, policy):
    p = broker.rm.get("t", 0)

    async def scenario():
        p.pending.max_pending = 1
        first = write_path.start_append(p, write_to(p), policy)
        assert isinstance(first, write_path.PendingAck)
        second = write_path.start_append(p, write_to(p), policy)
        assert isinstance(second, WriteResult) and second.error_code == pb.RESOURCE_EXHAUSTED
        assert p.log_end_offset == 1  # the refused one wrote nothing
        # a write that parks no waiter is not bounded by the table
        unwaited = write_path.append_unwaited(p, write_to(p), write_path.GROUP_LOG)
        assert unwaited.error_code == pb.NONE and unwaited.base_offset == 1

    run(scenario())


def test_append_errors_are_mapped_and_nothing_waits(broker):
    p = broker.rm.get("t", 0)

    def not_leader() -> WriteResult:
        raise PartitionError(pb.NOT_LEADER_OR_FOLLOWER, "moved")

    def disk_full() -> WriteResult:
        raise OSError(28, "No space left on device")

    policy = write_path.PRODUCE_ACKS_ALL
    assert write_path.start_append(p, not_leader, policy) == WriteResult(pb.NOT_LEADER_OR_FOLLOWER, "moved")
    storage = write_path.start_append(p, disk_full, policy)
    assert isinstance(storage, WriteResult) and storage.error_code == pb.STORAGE_ERROR
    assert "No space left" in storage.message
    refused = WriteResult(pb.INVALID_PRODUCER_EPOCH, "old epoch")
    assert write_path.start_append(p, lambda: refused, policy) is refused
    assert len(p.pending) == 0


def test_hw_passing_answers_the_append_with_its_offsets(broker):
    p = broker.rm.get("t", 0)

    async def scenario():
        ack = write_path.start_append(p, write_to(p), write_path.PRODUCE_ACKS_ALL)
        assert isinstance(ack, write_path.PendingAck) and not ack.future.done()
        p.on_follower_fetch(2, 1, p.clock.monotonic_ms())  # the follower has offset 0: HW 1
        return await ack.wait(10_000)

    done = run(scenario())
    assert done.error_code == pb.NONE and (done.base_offset, done.last_offset) == (0, 0)


@pytest.mark.parametrize(("policy", "code"), [(write_path.PRODUCE_ACKS_ALL, pb.NOT_ENOUGH_REPLICAS_AFTER_APPEND),
                                              (write_path.TXN_MARKER, pb.NONE),
                                              (write_path.TXN_STATE, pb.NONE)], ids=repr)
def test_an_isr_that_shrank_below_the_minimum_while_waiting(broker, policy, code):
    """Kafka's rule for client produce; coordinator writes take "the HW passed" as committed."""
    p = broker.rm.get("t", 0)

    async def scenario():
        ack = write_path.start_append(p, write_to(p), policy)
        assert isinstance(ack, write_path.PendingAck)
        shrink_isr(broker, 2)  # the leader alone: the HW reaches its LEO at once
        assert ack.future.done()
        return await ack.wait(10_000)

    out = run(scenario())
    assert out.error_code == code and out.base_offset == 0


def test_timeout_is_outcome_unknown_and_forgets_the_waiter(broker):
    p = broker.rm.get("t", 0)

    async def scenario():
        ack = write_path.start_append(p, write_to(p), write_path.PRODUCE_ACKS_ALL)
        return await ack.wait(0)

    out = run(scenario())
    assert out.error_code == pb.REQUEST_TIMED_OUT and "outcome unknown" in out.message
    assert out.base_offset == 0  # it was appended
    assert len(p.pending) == 0


def test_a_waiter_kept_after_its_timeout_still_learns_the_commit(broker):
    p = broker.rm.get("t", 0)

    async def scenario():
        ack = write_path.start_append(p, write_to(p), write_path.TXN_STATE)
        first = await ack.wait(0, forget_on_timeout=False)
        assert first.error_code == pb.REQUEST_TIMED_OUT and len(p.pending) == 1
        p.on_follower_fetch(2, 1, p.clock.monotonic_ms())
        return await ack.wait(None)

    assert run(scenario()).error_code == pb.NONE


def test_leadership_lost_while_waiting_is_not_leader_with_the_offsets(broker):
    p = broker.rm.get("t", 0)

    async def scenario():
        ack = write_path.start_append(p, write_to(p), write_path.PRODUCE_ACKS_ALL)
        moved = image(version=2)
        part = dataclasses.replace(moved.topics["t"].partitions[0], leader=2, leader_epoch=1)
        broker.set_image(dataclasses.replace(moved, topics={"t": dataclasses.replace(moved.topics["t"],
                                                                                    partitions=(part,))}))
        return await ack.wait(10_000)

    out = run(scenario())
    assert out.error_code == pb.NOT_LEADER_OR_FOLLOWER and "outcome unknown" in out.message
    assert out.base_offset == 0


def test_wait_all_answers_each_write_by_one_deadline(broker):
    p = broker.rm.get("t", 0)

    async def scenario():
        first = write_path.start_append(p, write_to(p), write_path.PRODUCE_ACKS_ALL)
        second = write_path.start_append(p, write_to(p), write_path.PRODUCE_ACKS_ALL)
        p.on_follower_fetch(2, 1, p.clock.monotonic_ms())  # only the first is replicated
        return await write_path.wait_all([first, second], 0)

    first, second = run(scenario())
    assert first.error_code == pb.NONE and first.base_offset == 0
    assert second.error_code == pb.REQUEST_TIMED_OUT and second.base_offset == 1
    assert len(broker.rm.get("t", 0).pending) == 0


# --- the writers ----------------------------------------------------------------------------------


class FakeShell:
    """What `txn_service.append_marker` needs of the coordinator shell."""

    def __init__(self, clock: FakeClock) -> None:
        self.markers: list[tuple[tuple[str, int], int]] = []
        self.clock = clock

    def verification_cache(self, topic: str, partition: int):
        shell = self

        class Cache:
            def on_marker(self, producer_id: int) -> None:
                shell.markers.append(((topic, partition), producer_id))

        return Cache()


@pytest.fixture
def store_broker(tmp_path):
    """`broker` over the real partition store (producer state, markers), as markers need."""
    from semel.cluster.broker.replica_manager import ReplicaManager
    from semel.cluster.broker.storage_adapter import open_replica_store
    from semel.storage.kv import KvStore

    kv = KvStore.open(tmp_path / "kv")
    b = FakeBroker.__new__(FakeBroker)
    b.config = BrokerConfig(broker_id=1)
    b.quorum = FakeQuorum(image())
    b.clock = FakeClock()
    b.rm = ReplicaManager(1, tmp_path, 10_000, lambda d, t, p: open_replica_store(d, t, p, kv=kv), clock=b.clock)
    b.rm.broker_epoch = 1
    b.rm.reconcile(b.quorum.img)
    try:
        yield b
    finally:
        b.rm.close()
        kv.close()


def test_markers_go_through_the_write_path(store_broker):
    broker = store_broker
    p = broker.rm.get("t", 0)
    shell = FakeShell(broker.clock)

    async def scenario():
        task = asyncio.ensure_future(write_marker_and_wait(shell, p, 7, 0, False, 0))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the marker is appended (task's first step)
        assert p.log_end_offset == 1 and shell.markers == [(("t", 0), 7)]
        shrink_isr(broker, 2)  # HW passes; the ISR is below the minimum, still committed
        committed = await task
        refused = await write_marker_and_wait(shell, p, 8, 0, False, 0)  # type: ignore[arg-type]
        return committed, refused

    committed, refused = run(scenario())
    assert committed == (pb.NONE, "")
    assert refused[0] == pb.NOT_ENOUGH_REPLICAS and p.log_end_offset == 1
    assert shell.markers == [(("t", 0), 7)]  # a refused marker does not void verifications
    # the marker's time is the shell's (injected) clock, not the host's
    (marker,) = p.store.read(0, 1 << 20, 1, 10).headers
    assert marker.max_timestamp_ms == broker.clock.wall_clock_ms()


class FakeTxnCore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self.times_ms: list[int] = []  # the now_ms of each call that takes one

    def write_failed(self, write_id: int, error: int, now_ms: int) -> list:
        self.calls.append(("failed", write_id, error))
        self.times_ms.append(now_ms)
        return []

    def write_timed_out(self, write_id: int) -> list:
        self.calls.append(("timed_out", write_id, None))
        return []

    def write_committed(self, write_id: int, now_ms: int) -> list:
        self.calls.append(("committed", write_id, None))
        self.times_ms.append(now_ms)
        return []

    def loaded_partitions(self) -> list:
        return []


@pytest.fixture
def state_broker(tmp_path):
    """The broker leading partition 0 of the transaction log, replicas {1, 2}, min ISR 2."""
    name = internal_topics.TRANSACTION_STATE_TOPIC
    base = image()
    part = dataclasses.replace(base.topics["t"].partitions[0], topic=name)
    topic = dataclasses.replace(base.topics["t"], name=name, internal=True, partitions=(part,))
    b = FakeBroker(tmp_path, dataclasses.replace(base, topics={name: topic}))
    yield b
    b.rm.close()


def test_the_transaction_log_write_reports_each_outcome_to_the_core(state_broker, monkeypatch):
    from semel.cluster.broker import txn_coordinator_shell

    b = state_broker
    p = b.rm.get(internal_topics.TRANSACTION_STATE_TOPIC, 0)
    shell = TxnCoordinatorShell(b)  # type: ignore[arg-type]
    core = shell.core = FakeTxnCore()  # type: ignore[assignment]
    batch = encode_batch(header(), b"abc")
    monkeypatch.setattr(txn_coordinator_shell, "STATE_WRITE_TIMEOUT_MS", 0)

    async def scenario():
        # not replicated in time: unknown, then committed once the follower catches up
        task = asyncio.ensure_future(shell._append(AppendRecords(0, 0, 1, batch)))
        for _ in range(100):  # a few loop steps: the append, then the zero timeout
            if core.calls:
                break
            await asyncio.sleep(0)
        assert core.calls == [("timed_out", 1, None)]
        p.on_follower_fetch(2, 1, p.clock.monotonic_ms())
        await task
        assert core.calls[-1] == ("committed", 1, None)
        # waiter table full: refused before the append, so the write surely failed
        p.pending.max_pending = 0
        await shell._append(AppendRecords(0, 0, 2, batch))
        assert core.calls[-1] == ("failed", 2, pb.RESOURCE_EXHAUSTED) and p.log_end_offset == 1
        p.pending.max_pending = 10
        # below min ISR: refused before the append
        b.set_image(dataclasses.replace(b.quorum.img, version=2, topics={
            n: dataclasses.replace(t, partitions=(dataclasses.replace(t.partitions[0], isr=(1,), partition_epoch=2),))
            for n, t in b.quorum.img.topics.items()}))
        await shell._append(AppendRecords(0, 0, 3, batch))
        assert core.calls[-1] == ("failed", 3, pb.NOT_ENOUGH_REPLICAS) and p.log_end_offset == 1
        # every outcome is told at the broker's (injected) clock's time, not the host's
        assert core.times_ms == [b.clock.wall_clock_ms()] * 3

    run(scenario())

