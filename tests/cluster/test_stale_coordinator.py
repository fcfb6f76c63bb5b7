"""Stale coordinators (issue 20, item 6): a broker whose image is stale (cut off from the
metadata quorum, or just resumed from a pause) still believes it coordinates a transactional
id at an old epoch. It must not refuse a healthy producer with a fatal code read from its
stale memory: it confirms its epoch by a quorum read first, else answers NOT_COORDINATOR.

The real `TxnCoordinatorShell` and `TxnCoordinator` core in one event loop; the metadata
quorum is a fake whose barrier the test completes (or fails), so nothing sleeps."""

from __future__ import annotations

import asyncio
import types

import pytest
from semel.cluster.broker.metadata_freshness import HeartbeatLease, QuorumRead
from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
from semel.cluster.metadata import state as md
from semel.coordinator.txn_coordinator import Reply, TxnCoordinator
from semel.coordinator.txn_state import (
    BumpReason,
    TopicPartition,
    TransactionMetadata,
    TxnResult,
    TxnState,
)
from semel.internal_topics import TRANSACTION_STATE_TOPIC
from semel.v1 import common_pb2 as pb

ME, OTHER, BROKER_EPOCH = 1, 2, 7
EPOCH = 4  # the coordinator epoch this broker loaded partition 0 at
TID, PID = "tid", 9
TP = TopicPartition("t", 0)


def image(leader: int = ME, leader_epoch: int = EPOCH, fenced: bool = False) -> md.MetadataImage:
    brokers = {b: md.BrokerRegistration(b, f"inc{b}", "127.0.0.1", 9000 + b, None, BROKER_EPOCH,
                                        fenced and b == ME, 1) for b in (ME, OTHER)}
    part = md.PartitionState(TRANSACTION_STATE_TOPIC, 0, (ME, OTHER), (ME, OTHER), leader, leader_epoch, 1)
    topic = md.Topic(TRANSACTION_STATE_TOPIC, "0123456789abcdef0123", True, 1, md.TopicConfig(), (part,))
    return md.MetadataImage(version=1, brokers=brokers, topics={TRANSACTION_STATE_TOPIC: topic})


class FakeQuorum:
    """`image()` is what the broker applied; a barrier completes when the test says, and then
    the image is whatever the quorum had committed (`committed`)."""

    def __init__(self) -> None:
        self.img = image()
        self.committed: md.MetadataImage | None = None  # applied with the next barrier
        self.connected = True
        self.barriers: list[asyncio.Future[md.Result]] = []

    def image(self) -> md.MetadataImage:
        return self.img

    def has_quorum(self) -> bool:
        return self.connected

    async def submit(self, command: md.Command, timeout_s: float | None = None) -> md.Result:
        assert isinstance(command, md.Barrier)
        fut: asyncio.Future[md.Result] = asyncio.get_running_loop().create_future()
        self.barriers.append(fut)
        result = await fut
        if self.committed is not None:
            self.img = self.committed
        return result


def loaded_shell(quorum: FakeQuorum) -> TxnCoordinatorShell:
    """The shell with partition 0 loaded at EPOCH: TID runs (PID, 974) with t-0 in its transaction."""
    broker = types.SimpleNamespace(config=types.SimpleNamespace(broker_id=ME), quorum=quorum,
                                   rm=types.SimpleNamespace(broker_epoch=BROKER_EPOCH))
    shell = TxnCoordinatorShell(broker)  # type: ignore[arg-type]
    shell.core = TxnCoordinator(1, lambda: None)
    meta = TransactionMetadata(TID, PID, 974, PID, 973, 60_000, TxnState.ONGOING, (TP,), 1_000, 1_000,
                               BumpReason.END_TXN)
    shell.core.loaded(0, EPOCH, [meta])
    return shell


async def until(cond, steps_max: int = 100) -> None:
    for _ in range(steps_max):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not reached in {steps_max} loop steps")


def verify(shell: TxnCoordinatorShell, quorum: FakeQuorum, epoch: int, barrier_ok: bool = True,
           partitions=(TP,)):
    """Ask the shell; complete the barrier it submits (if any) with `barrier_ok`."""
    async def scenario():
        before = len(quorum.barriers)
        task = asyncio.ensure_future(shell.verify(TID, PID, epoch, list(partitions)))
        await until(lambda: task.done() or len(quorum.barriers) > before)
        if not task.done():
            quorum.barriers[-1].set_result(md.OK if barrier_ok else md.Result(pb.REQUEST_TIMED_OUT))
        return await task

    return asyncio.run(scenario())


def test_a_stale_coordinator_does_not_refuse_a_newer_epoch():
    """The finding: "epoch 975 ... is newer than the coordinator's 974" from a broker whose
    partition already led elsewhere at a newer epoch. Its quorum read shows the move."""
    quorum = FakeQuorum()
    shell = loaded_shell(quorum)
    quorum.committed = image(leader=OTHER, leader_epoch=EPOCH + 1)
    result = verify(shell, quorum, 975)
    assert result.error == pb.NOT_COORDINATOR and "stale" in result.message
    assert len(quorum.barriers) == 1


@pytest.mark.parametrize("how", ["no quorum", "barrier failed", "fenced", "newer epoch, same leader"])
def test_no_confirmation_no_refusal(how):
    quorum = FakeQuorum()
    shell = loaded_shell(quorum)
    ok = True
    if how == "no quorum":
        quorum.connected = False  # cut off from the majority: answered at once, no barrier sent
    elif how == "barrier failed":
        ok = False
    elif how == "fenced":
        quorum.committed = image(fenced=True)
    else:
        quorum.committed = image(leader_epoch=EPOCH + 1)  # lost and won it back: the core is not that epoch's
    for epoch, partitions in ((975, (TP,)), (974, (TopicPartition("t", 1),))):  # newer epoch; not in the txn
        result = verify(shell, quorum, epoch, barrier_ok=ok, partitions=partitions)
        assert result.error == pb.NOT_COORDINATOR, (how, result)
    assert len(quorum.barriers) == (0 if how == "no quorum" else 2)


def test_a_confirmed_coordinator_still_refuses():
    """The fatal answers stay when they are true: a quorum read confirms the epoch."""
    quorum = FakeQuorum()
    shell = loaded_shell(quorum)
    newer = verify(shell, quorum, 975)
    assert newer.error == pb.INVALID_PRODUCER_EPOCH and "newer than the coordinator's 974" in newer.message
    outside = verify(shell, quorum, 974, partitions=(TopicPartition("t", 1),))
    assert outside.error == pb.NONE and dict(outside.partitions) == {TopicPartition("t", 1): pb.INVALID_TXN_STATE}


def test_a_healthy_verification_pays_no_quorum_read():
    quorum = FakeQuorum()
    shell = loaded_shell(quorum)
    result = verify(shell, quorum, 974)
    assert result.error == pb.NONE and dict(result.partitions) == {TP: pb.NONE}
    assert quorum.barriers == []


def test_coordinator_requests_refused_from_memory_are_confirmed_too():
    """EndTxn, AddPartitions, InitProducerId answers pass through `authoritative`: a fatal one
    from a coordinator that cannot confirm its epoch becomes NOT_COORDINATOR; others pass."""
    quorum = FakeQuorum()
    shell = loaded_shell(quorum)
    quorum.committed = image(leader=OTHER, leader_epoch=EPOCH + 1)

    async def scenario():
        fatal = Reply(5, TxnResult(pb.PRODUCER_FENCED, "fenced"))
        task = asyncio.ensure_future(shell.authoritative(TID, fatal))
        await until(lambda: len(quorum.barriers) == 1)
        quorum.barriers[0].set_result(md.OK)
        retriable = Reply(6, TxnResult(pb.CONCURRENT_TRANSACTIONS, "busy"))
        return await task, await shell.authoritative(TID, retriable)

    fatal, retriable = asyncio.run(scenario())
    assert fatal.request_id == 5 and fatal.result.error == pb.NOT_COORDINATOR and fatal.completed is None
    assert retriable.result.error == pb.CONCURRENT_TRANSACTIONS and len(quorum.barriers) == 1


# --- the pieces -----------------------------------------------------------------------------------


def test_quorum_reads_share_barriers_but_never_one_submitted_before_the_call():
    quorum = FakeQuorum()
    reads = QuorumRead(quorum, timeout_ms=1000)  # type: ignore[arg-type]

    async def scenario():
        first = [asyncio.ensure_future(reads.sync()) for _ in range(3)]
        await until(lambda: len(quorum.barriers) == 1)
        later = [asyncio.ensure_future(reads.sync()) for _ in range(3)]  # arrive while it is in flight
        await asyncio.sleep(0)
        assert len(quorum.barriers) == 1  # bounded: one in flight, the later callers queue for the next
        quorum.barriers[0].set_result(md.OK)
        assert await asyncio.gather(*first) == [True] * 3
        await until(lambda: len(quorum.barriers) == 2)
        assert not any(t.done() for t in later)  # the first barrier cannot vouch for them
        quorum.barriers[1].set_result(md.Result(pb.REQUEST_TIMED_OUT))
        assert await asyncio.gather(*later) == [False] * 3

    asyncio.run(scenario())
    assert reads.barriers == 2


def test_heartbeat_lease():
    lease = HeartbeatLease(lease_ms=1000)
    assert not lease.current(0)  # never acknowledged
    lease.on_answer(100, pb.NONE, fenced=True)
    assert not lease.current(150)  # registered, but fenced: a resumed broker hears this first
    lease.on_answer(200, pb.NONE, fenced=False)
    assert lease.current(1199) and not lease.current(1200)  # counted from the send
    lease.on_answer(150, pb.NONE, fenced=False)  # an older heartbeat answered late
    assert not lease.current(1200)
    lease.on_answer(300, pb.STALE_BROKER_EPOCH, fenced=True)
    assert not lease.current(301)


def test_find_coordinator_follows_the_lease():
    from semel.cluster.broker.txn_service import TransactionsService
    from semel.v1 import txn_pb2

    quorum = FakeQuorum()
    current = True
    broker = types.SimpleNamespace(quorum=quorum, metadata_current=lambda: current)
    svc = TransactionsService(broker, None)  # type: ignore[arg-type]
    req = txn_pb2.FindCoordinatorRequest(key=TID, key_type=txn_pb2.TRANSACTION)
    assert asyncio.run(svc.FindCoordinator(req, None)).broker_id == ME
    current = False  # isolated: the heartbeats stopped being acknowledged
    r = asyncio.run(svc.FindCoordinator(req, None))
    assert r.error_code == pb.COORDINATOR_NOT_AVAILABLE and r.broker_id == -1
