"""The idempotent producer's sequence bookkeeping (pure: no I/O, no clock, no lock of its own).

Theory of operation
-------------------
An idempotent producer owns a `(producer_id, producer_epoch)` identity (InitProducerId) and
numbers the records it sends to each partition: a batch gets `base_sequence = next_seq[tp]`
when it is *closed for sending* (first drained), and `next_seq[tp] += record_count` (wrapping
at 2^31). A retried batch keeps its identity and sequence, so the partition leader recognises
a retry after a lost acknowledgement (one of its last 5 batches) and answers the original
offsets instead of appending twice.

At most 5 batches per partition are in flight (the broker retains 5). When batch N fails
retriably, the later in-flight batches N+1.. come back OUT_OF_ORDER_SEQUENCE (N is missing)
or with the same retriable error: they are re-queued *in sequence order* and a partition
whose queue head is a retry sends one batch at a time until its retries are through
(`ordered_retry_pending`), so records keep their order across retries.

`classify(batch, code)` decides what a per-partition produce error means here:

* RETRY     retriable error, or OUT_OF_ORDER_SEQUENCE / UNKNOWN_PRODUCER_ID while an earlier
            batch of the partition is not acknowledged yet (in flight or being retried: the gap
            is ours, not the broker's; UNKNOWN_PRODUCER_ID is what a partition without state of
            the producer answers when a pipelined later batch overtakes the first one);
* DUPLICATE DUPLICATE_SEQUENCE_NUMBER: the batch is older than the broker's window, i.e. it
            *was* written; success with unknown offsets;
* BUMP      OUT_OF_ORDER_SEQUENCE with no earlier batch pending, or UNKNOWN_PRODUCER_ID: the
            partition lost our state (truncation, expiry). KIP-360: get a new epoch for the
            same producer id and restart every partition's sequences at 0;
* FAIL      anything else (fatal for the batch; INVALID_PRODUCER_EPOCH / PRODUCER_FENCED
            are fatal for the producer).

Epoch bump (`begin_bump` ... `complete_bump`): no batch is drained while a bump is pending;
once nothing is in flight the shell asks InitProducerId(current id, epoch) and calls
`complete_bump(new identity, queued_batches)`, which resets every sequence to 0 and drops
the old sequence of every queued batch. A queued batch that may already have been written
(`outcome_unknown`) cannot be re-sent under a new sequence without risking a duplicate: it is
returned to be failed with `OutcomeUnknownError` instead. A batch that fails for good while
holding a sequence leaves a gap that later batches cannot cross, so it requests a bump too.

Invariants: every sequenced batch of the current epoch has
`base_sequence < next_seq[tp]` (mod 2^31); `acked_seq[tp]` (last sequence acknowledged in this
epoch, -1 none) only grows within an epoch; no batch is drained while `bump_reason` is set.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import Protocol, TypeVar

from semel.invariant import invariant
from semel.sentinels import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE
from semel.v1 import common_pb2

SEQUENCE_MODULUS = 1 << 31
MAX_IN_FLIGHT_IDEMPOTENT = 5   # the broker keeps the last 5 batches per producer (limits.PRODUCER_BATCHES_RETAINED)



@dataclasses.dataclass(frozen=True, slots=True)
class ProducerIdentity:
    producer_id: int
    producer_epoch: int


class SequencedBatch(Protocol):
    """What this module needs of a producer batch (client_accumulator.ProducerBatch)."""

    topic: str
    partition: int
    record_count: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    outcome_unknown: bool


_Batch = TypeVar("_Batch", bound=SequencedBatch)


class Verdict(enum.Enum):
    RETRY = "retry"
    DUPLICATE = "duplicate"
    BUMP = "bump"
    FAIL = "fail"


class IdempotenceState:
    """Sequences per partition under one producer identity (see the module docstring)."""

    def __init__(self, transactional: bool = False) -> None:
        self.transactional = transactional
        self.identity: ProducerIdentity | None = None
        self.bump_reason: str | None = None   # set: drain nothing; get a new epoch once idle
        self._next_seq: dict[tuple[str, int], int] = {}
        self._acked_seq: dict[tuple[str, int], int] = {}
        # sequences of batches in flight or queued for retry, per partition (lowest first)
        self._pending: dict[tuple[str, int], list[int]] = {}

    # --- identity -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Batches may be drained: an identity and no bump pending."""
        return self.identity is not None and self.bump_reason is None

    def set_identity(self, identity: ProducerIdentity) -> None:
        """A new identity (InitProducerId, a bump, or KIP-890's EndTxn): sequences restart at 0."""
        invariant(identity.producer_id >= 0 and identity.producer_epoch >= 0, f"bad identity {identity}")
        self.identity = identity
        self._next_seq.clear()
        self._acked_seq.clear()
        self._pending.clear()

    def begin_bump(self, reason: str) -> None:
        if self.bump_reason is None:
            self.bump_reason = reason

    def complete_bump(self, identity: ProducerIdentity, queued: Iterable[_Batch]) -> list[_Batch]:
        """The new epoch is in hand. Resets sequences and un-sequences the queued batches;
        returns those that may have been written already (to be failed as outcome unknown)."""
        self.set_identity(identity)
        self.bump_reason = None
        unknown = []
        for batch in queued:
            if batch.base_sequence == NO_SEQUENCE:
                continue
            if batch.outcome_unknown:
                unknown.append(batch)
            batch.producer_id, batch.producer_epoch, batch.base_sequence = NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE
        return unknown

    # --- sending ----------------------------------------------------------------------
    def assign(self, batch: SequencedBatch) -> None:
        """Gives a batch being drained its identity and sequence (kept by retries)."""
        identity = self.identity
        invariant(identity is not None and self.bump_reason is None, "assign() while not ready")
        assert identity is not None
        if batch.base_sequence != NO_SEQUENCE:
            invariant(batch.producer_epoch == identity.producer_epoch, "a retry of another epoch was drained")
            return
        tp = (batch.topic, batch.partition)
        seq = self._next_seq.get(tp, 0)
        batch.producer_id, batch.producer_epoch, batch.base_sequence = (
            identity.producer_id, identity.producer_epoch, seq)
        self._next_seq[tp] = (seq + batch.record_count) % SEQUENCE_MODULUS
        pending = self._pending.setdefault(tp, [])
        pending.append(seq)

    def current(self, batch: SequencedBatch) -> bool:
        """The batch's sequence belongs to the current identity (not a pre-bump leftover)."""
        identity = self.identity
        return (identity is not None and batch.base_sequence != NO_SEQUENCE
                and batch.producer_id == identity.producer_id and batch.producer_epoch == identity.producer_epoch)

    def first_pending(self, tp: tuple[str, int]) -> int | None:
        pending = self._pending.get(tp)
        return pending[0] if pending else None

    # --- outcomes ---------------------------------------------------------------------
    def on_acked(self, batch: SequencedBatch) -> None:
        if not self.current(batch):
            return
        tp = (batch.topic, batch.partition)
        last = (batch.base_sequence + batch.record_count - 1) % SEQUENCE_MODULUS
        self._acked_seq[tp] = last
        self._forget(tp, batch.base_sequence)

    def on_failed(self, batch: SequencedBatch, reason: str) -> None:
        """The batch failed for good while holding a sequence: its gap needs a new epoch
        (transactional producers abort instead; their next epoch comes from EndTxn)."""
        if not self.current(batch):
            return
        self._forget((batch.topic, batch.partition), batch.base_sequence)
        if not self.transactional:
            self.begin_bump(reason)

    def _forget(self, tp: tuple[str, int], seq: int) -> None:
        pending = self._pending.get(tp)
        if pending and seq in pending:
            pending.remove(seq)

    def classify(self, batch: SequencedBatch, code: common_pb2.ErrorCode, retriable: bool) -> Verdict:
        if code == common_pb2.DUPLICATE_SEQUENCE_NUMBER:
            return Verdict.DUPLICATE
        sequence_gap = code in (common_pb2.OUT_OF_ORDER_SEQUENCE, common_pb2.UNKNOWN_PRODUCER_ID)
        if sequence_gap and self.current(batch) and self._earlier_unacknowledged(batch):
            return Verdict.RETRY
        if code == common_pb2.OUT_OF_ORDER_SEQUENCE and self.current(batch):
            return Verdict.FAIL if self.transactional else Verdict.BUMP
        if code == common_pb2.UNKNOWN_PRODUCER_ID:
            return Verdict.FAIL if self.transactional else Verdict.BUMP
        return Verdict.RETRY if retriable else Verdict.FAIL

    def _earlier_unacknowledged(self, batch: SequencedBatch) -> bool:
        """An earlier batch of this partition (same epoch) is in flight or being retried."""
        first = self.first_pending((batch.topic, batch.partition))
        return first is not None and first != batch.base_sequence

    def check_invariants(self) -> None:
        for tp, pending in self._pending.items():
            invariant(len(pending) == len(set(pending)), f"{tp}: a sequence is pending twice")
