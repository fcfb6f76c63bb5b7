"""The partition leader's KIP-890 check of a produce request (`txn_service.ProduceVerifier`),
driven in one event loop with a fake coordinator whose answers the test releases in any
order: no process, port or sleep."""

from __future__ import annotations

import asyncio
import types

from semel.cluster.broker.replica_manager import PartitionError, Role
from semel.cluster.broker.txn_service import ProduceVerifier
from semel.coordinator.txn_markers import VerificationCache
from semel.coordinator.txn_state import VerifyResult
from semel.storage.batch import ATTR_TRANSACTIONAL
from semel.topic_partition import TopicPartition
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb

from tests.cluster.fake_time import FakeClock

PID, EPOCH, TID = 7, 3, "t1"


class _ProducerState:
    """Which partitions hold an open transaction of PID (what the append would record)."""

    def __init__(self) -> None:
        self.open = False

    def producer(self, producer_id: int):
        return types.SimpleNamespace(txn_first_offset=0 if self.open else None, producer_epoch=EPOCH)


class _Leader:
    """Leads every partition; each has its own producer state and verification cache."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], _ProducerState] = {}
        self.caches: dict[tuple[str, int], VerificationCache] = {}
        self.rm = self
        self.clock = FakeClock()  # the shell's clock: the verification TTL runs on it

    def get(self, topic: str, partition: int):
        state = self.states.setdefault((topic, partition), _ProducerState())
        return types.SimpleNamespace(role=Role.LEADER, store=types.SimpleNamespace(
            store=types.SimpleNamespace(producer_state=state)))

    def verification_cache(self, topic: str, partition: int) -> VerificationCache:
        return self.caches.setdefault((topic, partition), VerificationCache())


class _GatedVerifier(ProduceVerifier):
    """The coordinator's answers (every partition in the transaction) wait for the test."""

    def __init__(self, leader: _Leader) -> None:
        super().__init__(leader, leader)  # type: ignore[arg-type]
        self.gates: list[asyncio.Event] = []

    async def _ask_coordinator(self, tid, pid, epoch, parts, image):
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return VerifyResult(pb.NONE, "", tuple((tp, pb.NONE) for tp in _tps(parts)))


def _tps(parts):
    return [TopicPartition(t, p) for t, p in parts]


def _request(*partitions: int) -> bpb.ProduceRequest:
    return bpb.ProduceRequest(acks=bpb.ACKS_ALL, transactional_id=TID, partitions=[
        bpb.PartitionProduceData(topic="t", partition=p, batch=pb.RecordBatch(
            attributes=ATTR_TRANSACTIONAL, producer_id=PID, producer_epoch=EPOCH))
        for p in partitions])


def _produce(verifier: _GatedVerifier, leader: _Leader, request: bpb.ProduceRequest):
    """What the broker's Produce does: prepare, then check + append each partition in one step."""
    async def run() -> dict[int, str]:
        check = await verifier.prepare(request, None)  # type: ignore[arg-type]
        codes = {}
        for pd in request.partitions:
            try:
                check(pd)
            except PartitionError as exc:
                codes[pd.partition] = pb.ErrorCode.Name(exc.code)
                continue
            leader.states[(pd.topic, pd.partition)].open = True  # the append opens the transaction here
            codes[pd.partition] = "NONE"
        return codes
    return asyncio.ensure_future(run())


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_overlapping_requests_keep_their_guards_and_their_order():
    """A: [p0] verifies p0. B: [p0, p1] and then C: [p1] arrive while it runs. No request may
    begin a verification that voids the guard of another one about to append (its first write
    would be refused INVALID_TXN_STATE, fatal for the producer), and each partition's writes
    append in arrival order: B waits for A, then verifies p1; C waits for B and needs nothing."""
    async def scenario() -> None:
        leader = _Leader()
        verifier = _GatedVerifier(leader)
        appended: list[str] = []
        tasks = {}
        for name, parts in (("A", (0,)), ("B", (0, 1)), ("C", (1,))):
            tasks[name] = _produce(verifier, leader, _request(*parts))
            tasks[name].add_done_callback(lambda _, n=name: appended.append(n))
            await _settle()
        assert len(verifier.gates) == 1 and appended == []  # only A's p0: B and C wait
        verifier.gates[0].set()
        await _settle()
        assert appended == ["A"] and len(verifier.gates) == 2  # B verifies p1 now (p0 is open)
        verifier.gates[1].set()
        results = await asyncio.wait_for(asyncio.gather(*tasks.values()), 5)
        assert results == [{0: "NONE"}, {0: "NONE", 1: "NONE"}, {1: "NONE"}]
        assert appended == ["A", "B", "C"] and len(verifier.gates) == 2  # C asked nothing

    asyncio.run(scenario())


def test_pipelined_first_writes_share_one_verification():
    async def scenario() -> None:
        leader = _Leader()
        verifier = _GatedVerifier(leader)
        first = _produce(verifier, leader, _request(0))
        await _settle()
        second = _produce(verifier, leader, _request(0))
        await _settle()
        assert len(verifier.gates) == 1
        verifier.gates[0].set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [{0: "NONE"}, {0: "NONE"}]

    asyncio.run(scenario())


def test_a_marker_while_verifying_refuses_the_write():
    """The guard still protects: a marker of the producer between the coordinator's answer
    and the append voids the verification (no hanging transaction)."""
    async def scenario() -> None:
        leader = _Leader()
        verifier = _GatedVerifier(leader)
        first = _produce(verifier, leader, _request(0))
        await _settle()
        leader.verification_cache("t", 0).on_marker(PID)
        verifier.gates[0].set()
        assert await asyncio.wait_for(first, 5) == {0: "INVALID_TXN_STATE"}

    asyncio.run(scenario())


def test_a_later_request_does_not_overtake_one_waiting_for_a_verification():
    """A: [p0 (transaction open here already), p1 (first write: verified)]. B: [p0], sent after
    A, needs no verification; it must still append to p0 after A, or its sequence arrives out
    of order (OUT_OF_ORDER_SEQUENCE: a retry after a backoff, and the commit waits for it)."""
    async def scenario() -> None:
        leader = _Leader()
        verifier = _GatedVerifier(leader)
        leader.get("t", 0)
        leader.states[("t", 0)].open = True
        appended: list[str] = []
        a = _produce(verifier, leader, _request(0, 1))
        a.add_done_callback(lambda _: appended.append("A"))
        await _settle()
        b = _produce(verifier, leader, _request(0))
        b.add_done_callback(lambda _: appended.append("B"))
        await _settle()
        assert appended == [], "B waits for A"
        verifier.gates[0].set()
        assert await asyncio.wait_for(asyncio.gather(a, b), 5) == [{0: "NONE", 1: "NONE"}, {0: "NONE"}]
        assert appended == ["A", "B"]
        assert not verifier._waiting, "nothing left behind"

    asyncio.run(scenario())
