"""The partition leader's KIP-890 check of a produce request (`txn_service.ProduceVerifier`),
driven in one event loop with a fake coordinator whose answers the test releases in any
order: no process, port or sleep."""

from __future__ import annotations

import asyncio
import types

from semel.cluster.replica_manager import PartitionError, Role
from semel.cluster.txn_service import ProduceVerifier
from semel.coordinator.txn_markers import VerificationCache
from semel.coordinator.txn_state import VerifyResult
from semel.storage.batch import ATTR_TRANSACTIONAL
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb

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
    from semel.coordinator.txn_state import TopicPartition

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


def test_a_request_waiting_on_a_shared_verification_keeps_its_own_guard():
    """A: [p0] verifies p0. B: [p0, p1] shares A's p0 and verifies p1. The coordinator
    answers B first, so B waits for A's p0 with p1 verified but not appended. C: [p1]
    arrives then: it must take B's verification of p1, not start a new one that voids B's
    guard (B's first write to p1 would be refused INVALID_TXN_STATE, fatal for the producer)."""
    async def scenario() -> None:
        leader = _Leader()
        verifier = _GatedVerifier(leader)
        a = _produce(verifier, leader, _request(0))
        await _settle()
        b = _produce(verifier, leader, _request(0, 1))
        await _settle()
        assert len(verifier.gates) == 2  # A's p0 and B's p1; B shares A's p0
        verifier.gates[1].set()          # the coordinator answers B's p1 first
        await _settle()
        c = _produce(verifier, leader, _request(1))
        await _settle()
        for gate in verifier.gates:
            gate.set()
        results = await asyncio.wait_for(asyncio.gather(a, b, c), 5)
        assert results == [{0: "NONE"}, {0: "NONE", 1: "NONE"}, {1: "NONE"}]
        assert len(verifier.gates) == 2  # C asked nothing: it shared B's verification

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
