"""The one way to write to a partition as its leader: append with the required acks.

Every writer on a broker goes through here: client produce (`server.py`), transaction
markers (`txn_service.py`), the transaction coordinator's state log
(`txn_coordinator_shell.py`) and the group coordinator's offsets log (`group_service.py`).

Theory of operation (Kafka's `ReplicaManager.appendRecords` + `DelayedProduce`, in small):

1. `start_append(p, write, policy)`: synchronous, so the caller's own checks and the append
   happen in one event-loop step (KIP-890 verification guards rely on that).
   * acks=all precondition: an ISR below `min_insync_replicas` refuses with
     NOT_ENOUGH_REPLICAS, and a full table of HW waiters with RESOURCE_EXHAUSTED; both before
     the append, so the refusal is *definite*: nothing was written.
   * `write()` appends (the caller's closure: `append_as_leader` or `append_marker`). Its
     `PartitionError` becomes its code (NOT_LEADER_OR_FOLLOWER, the producer-state codes, ...);
     an `OSError`/`ValueError` becomes STORAGE_ERROR. Nothing was written in either case.
   * Answers the `WriteResult` at once when no wait is needed; else a `PendingAck` holding
     the result (offsets) and a waiter for the HW to pass the batch.
2. `await pending.wait(timeout_ms)` / `await wait_all(pendings, timeout_ms)` map the wait's end:
   * HW passed: NONE, or (Kafka's rule, with `policy.min_isr_after_hw`)
     NOT_ENOUGH_REPLICAS_AFTER_APPEND when the ISR is by then below the minimum;
   * leadership lost while waiting: the waiter's NOT_LEADER_OR_FOLLOWER (outcome unknown);
   * deadline: REQUEST_TIMED_OUT (outcome unknown: the batch is in the leader's log and may
     still commit); the waiter is forgotten unless the caller keeps waiting.
   Every answer after the append keeps the batch's offsets.

Which writer uses which `AckPolicy` is written once, below, with the reason for each
difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

from semel.cluster.broker.log_dir_health import LogDirOfflineError
from semel.cluster.broker.replica_manager import Partition, PartitionError, WriteResult
from semel.invariant import invariant
from semel.v1 import common_pb2 as pb

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class AckPolicy:
    """What "written" means for one kind of write."""

    acks_all: bool
    """Check the ISR against `min_insync_replicas` before the append (and wait, see below)."""
    await_hw: bool
    """With `acks_all`: park a waiter until the HW passes the batch. False when the caller
    learns the commit another way (the group coordinator's tail reads up to the HW)."""
    min_isr_after_hw: bool
    """Once the HW passed: answer NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank below the
    minimum meanwhile (the client learns its data sits on fewer replicas than it asked for)."""


# Client produce, acks=all: Kafka's full rule.
PRODUCE_ACKS_ALL = AckPolicy(acks_all=True, await_hw=True, min_isr_after_hw=True)
# Client produce, acks=1 / acks=0: answered once in the leader's log.
PRODUCE_ACKS_LEADER = AckPolicy(acks_all=False, await_hw=False, min_isr_after_hw=False)
# A COMMIT/ABORT marker: committed once the HW passes it, whatever the ISR did meanwhile. The
# coordinator retries any other answer, and the marker is already in the log: a retry would
# only append it again (the marker's effect does not depend on how many replicas hold it).
TXN_MARKER = AckPolicy(acks_all=True, await_hw=True, min_isr_after_hw=False)
# A transaction-state record: committed once the HW passes it. The coordinator must then
# apply it (`write_committed`): the record is in the log and a reload replays it, so
# answering "failed" would let the in-memory state disagree with the log.
TXN_STATE = AckPolicy(acks_all=True, await_hw=True, min_isr_after_hw=False)
# A group-coordinator record: the ISR is checked before the append so a refused write wrote
# nothing; its commit is seen by the partition's tail (which reads up to the HW and also
# replays markers and other writers' records), so no waiter is parked here.
GROUP_LOG = AckPolicy(acks_all=True, await_hw=False, min_isr_after_hw=False)


@dataclasses.dataclass(slots=True)
class PendingAck:
    """An appended batch waiting for the HW to pass it (see the module docstring)."""

    partition: Partition
    result: WriteResult  # the append's answer: offsets, duplicate flag
    future: asyncio.Future[None]  # done once the HW passed the batch, or failed (leadership lost)
    policy: AckPolicy

    async def wait(self, timeout_ms: int | None, *, forget_on_timeout: bool = True) -> WriteResult:
        """Wait up to `timeout_ms` (None: until the HW passes or leadership is lost). With
        `forget_on_timeout=False` the waiter stays parked, so the caller may wait again."""
        await asyncio.wait([self.future], timeout=None if timeout_ms is None else timeout_ms / 1000)
        return self.outcome(timeout_ms, forget_on_timeout=forget_on_timeout)

    def outcome(self, timeout_ms: int | None, *, forget_on_timeout: bool = True) -> WriteResult:
        """The answer now: a waiter not done yet has timed out (`timeout_ms` is for the message)."""
        fut = self.future
        if not fut.done():
            if forget_on_timeout:
                fut.cancel()
                self.partition.pending.remove(fut)
            return self._failed(pb.REQUEST_TIMED_OUT, f"not replicated to the ISR within {timeout_ms} ms; "
                                "outcome unknown (may still commit)")
        invariant(not fut.cancelled(), "only a timed-out waiter is cancelled, and it is not waited on again")
        exc = fut.exception()
        if isinstance(exc, PartitionError):
            return self._failed(exc.code, exc.message)
        if exc is not None:
            return self._failed(pb.UNKNOWN_SERVER_ERROR, f"{exc!r}; outcome unknown")
        if self.policy.min_isr_after_hw:
            code, message = self.partition.ack_outcome()
            if code != pb.NONE:
                return self._failed(code, message)
        return self.result

    def _failed(self, code: pb.ErrorCode, message: str) -> WriteResult:
        return dataclasses.replace(self.result, error_code=code, message=message)


def start_append(p: Partition, write: Callable[[], WriteResult], policy: AckPolicy) -> WriteResult | PendingAck:
    """Check the acks precondition, run `write` (the append), and park an HW waiter if the
    policy waits. Synchronous: no other task runs between the checks and the append."""
    if policy.acks_all:
        if len(p.isr) < p.min_insync_replicas:
            return WriteResult(pb.NOT_ENOUGH_REPLICAS, f"ISR {list(p.isr)} has {len(p.isr)} < min_insync_replicas="
                                f"{p.min_insync_replicas}; nothing was written")
        if policy.await_hw and p.pending.full():
            return WriteResult(pb.RESOURCE_EXHAUSTED, f"{len(p.pending)} acks=all writes already waiting on "
                                f"{p.topic}-{p.partition}; nothing was written")
    try:
        result = write()
    except PartitionError as exc:
        return WriteResult(exc.code, exc.message)
    except LogDirOfflineError as exc:  # refused before writing: said once by LogDirHealth, not per request
        return WriteResult(pb.STORAGE_ERROR, f"{p.topic}-{p.partition} on broker {p.broker_id}: {exc}")
    except (OSError, ValueError) as exc:
        log.exception("append to %s-%d failed", p.topic, p.partition)
        return WriteResult(pb.STORAGE_ERROR, f"append to {p.topic}-{p.partition} failed on broker "
                            f"{p.broker_id}: {exc}")
    if result.error_code != pb.NONE or not (policy.acks_all and policy.await_hw):
        return result
    # cannot raise: the waiters were counted above and nothing ran since
    return PendingAck(p, result, p.wait_for_hw(result.last_offset + 1), policy)


def append_unwaited(p: Partition, write: Callable[[], WriteResult], policy: AckPolicy) -> WriteResult:
    """`start_append` for a policy that parks no HW waiter: the answer is final at once."""
    invariant(not (policy.acks_all and policy.await_hw), "this policy waits for the HW")
    out = start_append(p, write, policy)
    if not isinstance(out, WriteResult):  # (invariant() cannot narrow the type for mypy)
        raise AssertionError("no waiter was parked")
    return out


async def wait_all(pending: Sequence[PendingAck], timeout_ms: int) -> list[WriteResult]:
    """Wait for several appends under one deadline (a request's partitions), in order."""
    if pending:
        await asyncio.wait([a.future for a in pending], timeout=timeout_ms / 1000)
    return [a.outcome(timeout_ms) for a in pending]


async def append(p: Partition, write: Callable[[], WriteResult], policy: AckPolicy,
                 timeout_ms: int) -> WriteResult:
    """`start_append` and, if it parked a waiter, `wait` for it: one write, one answer."""
    out = start_append(p, write, policy)
    return out if isinstance(out, WriteResult) else await out.wait(timeout_ms)
