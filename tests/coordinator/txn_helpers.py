"""Small drivers for the transaction state machine tests (no I/O, no clock)."""

from __future__ import annotations

import itertools

from semel.coordinator.txn_state import (
    TransactionStateMachine,
    TxnConfig,
    TxnResult,
    TxnVersion,
)
from semel.topic_partition import TopicPartition
from semel.v1.common_pb2 import ErrorCode

COORDINATOR_EPOCH = 7
TIMEOUT_MS = 60_000


class ProducerIds:
    """A fake producer-id block: increasing ids, or None while `exhausted`."""

    def __init__(self, first: int = 1000) -> None:
        self._next = itertools.count(first)
        self.exhausted = False

    def __call__(self) -> int | None:
        return None if self.exhausted else next(self._next)


def machine(ids: ProducerIds | None = None, loaded=(), **config) -> TransactionStateMachine:
    return TransactionStateMachine(0, COORDINATOR_EPOCH, ids or ProducerIds(), TxnConfig(**config), loaded)


def tps(*names: str) -> tuple[TopicPartition, ...]:
    """tps("a0", "b1") -> (TopicPartition("a", 0), TopicPartition("b", 1))."""
    return tuple(TopicPartition(n[:-1], int(n[-1])) for n in names)


def commit(m: TransactionStateMachine, result: TxnResult) -> TxnResult:
    """The log write of `result` succeeded."""
    assert result.pending is not None, f"expected a pending transition, got {result}"
    m.complete(result.pending)
    return result


def init(m: TransactionStateMachine, tid: str = "t", now_ms: int = 0, ident=(-1, -1), timeout_ms: int = TIMEOUT_MS,
         txn_version: TxnVersion = TxnVersion.V2):
    """InitProducerId that needs exactly one write and succeeds: returns (pid, epoch)."""
    r = m.init_producer_id(tid, timeout_ms, now_ms, *ident, txn_version)
    assert r.error == ErrorCode.NONE, r
    commit(m, r)
    return r.pending.answer


def begin(m: TransactionStateMachine, ident, tid: str = "t", parts=tps("a0"), now_ms: int = 0) -> None:
    r = m.add_partitions(tid, *ident, parts, now_ms)
    assert r.error == ErrorCode.NONE, r
    if r.pending is not None:
        commit(m, r)


def end(m: TransactionStateMachine, ident, commit_txn: bool = True, tid: str = "t", now_ms: int = 0):
    """EndTxn that is prepared and durable: returns the next identity."""
    r = m.end_txn(tid, *ident, commit_txn, now_ms)
    assert r.error == ErrorCode.NONE and r.pending is not None, r
    commit(m, r)
    return r.pending.answer


def finish_markers(m: TransactionStateMachine, tid: str = "t", now_ms: int = 0) -> None:
    commit(m, m.complete_markers(tid, now_ms))
