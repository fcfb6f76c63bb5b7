"""Sequencing the writes of one coordinator partition (pure; the broker shell does the I/O).

The cores prepare decisions; someone has to append them, wait until they are committed,
complete them in log order, answer, and keep requests of one group from overtaking each
other. That is this module, as a step function in the style of etcd's raft `Ready`:

    out = runtime.submit(request_id, group_id, prepare, now_ms, monotonic_ms)   # -> [Append | Reply]
    ... the shell appends each Append to the partition (acks=all, one batch) ...
    runtime.on_appended(token, base_offset)      # the local append gave these offsets
    out = runtime.on_append_failed(token, code, now_ms, monotonic_ms)  # nothing was written
    out = runtime.on_committed(batches, now_ms, monotonic_ms)  # batches the high watermark passed, in order
    out = runtime.unload()                       # leadership lost: NOT_COORDINATOR for all waiting

Two clocks: `now_ms` (wall) is what `prepare` gets, for what is stored (offset-commit
timestamps); `monotonic_ms` restarts member sessions when a group decision completes (a step
of the wall clock must neither expire a live member nor keep a dead one).

Rules it keeps:
* Per group at most one write in flight; later requests of that group wait in FIFO order and
  are *prepared* only when they reach the head (so they see the state after the previous
  write). Different groups proceed in parallel. A request that writes nothing is answered at
  once (it read committed state).
* State changes only when a batch is committed: `on_committed` replays every committed batch
  in log order, ours (completing the decision and answering) and foreign ones (transaction
  markers written by the transaction coordinator) alike.
* Bounded: at most `max_queued` requests wait in the whole partition (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Union

from semel import limits
from semel.coordinator.group_log import CoordinatorShard
from semel.coordinator.group_records import GroupRecord
from semel.coordinator.group_state import GroupDecision, HeartbeatResponse
from semel.coordinator.offsets import CommitDecision
from semel.invariant import invariant
from semel.storage.batch import BatchHeader
from semel.v1 import common_pb2

E = common_pb2.ErrorCode

Decision = Union[GroupDecision, CommitDecision]
Prepare = Callable[[CoordinatorShard, int], Decision]   # (shard, now_ms: the wall clock) -> decision


@dataclasses.dataclass(frozen=True, slots=True)
class Append:
    """Append `records` as one batch (transactional of `producer_id` if >= 0), acks=all."""

    token: int
    records: tuple[GroupRecord, ...]
    producer_id: int = -1
    producer_epoch: int = -1


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """Answer request `request_id`: a HeartbeatResponse / CommitDecision, or just an error code."""

    request_id: int
    result: HeartbeatResponse | CommitDecision | None
    error: common_pb2.ErrorCode = E.NONE


Output = Union[Append, Reply]


@dataclasses.dataclass(slots=True)
class _Waiting:
    request_id: int
    prepare: Prepare


@dataclasses.dataclass(slots=True)
class _InFlight:
    request_id: int
    group_id: str
    decision: Decision
    base_offset: int = -1   # -1 until on_appended


class PartitionRuntime:
    def __init__(self, shard: CoordinatorShard, max_queued: int = limits.MAX_PENDING_ACKS_PER_PARTITION) -> None:
        self.shard = shard
        self.max_queued = max_queued
        self._queues: dict[str, collections.deque[_Waiting]] = {}
        self._in_flight: dict[int, _InFlight] = {}          # token -> write
        self._busy: dict[str, int] = {}                     # group -> token of its write
        self._by_offset: dict[int, int] = {}                # base offset -> token
        self._next_token = 1
        self._queued = 0
        self.unloaded = False

    # --- inputs ---------------------------------------------------------------------------------

    def submit(self, request_id: int, group_id: str, prepare: Prepare, now_ms: int, monotonic_ms: int) -> list[Output]:
        if self.unloaded:
            return [Reply(request_id, None, E.NOT_COORDINATOR)]
        if self._queued >= self.max_queued:
            return [Reply(request_id, None, E.RESOURCE_EXHAUSTED)]
        self._queues.setdefault(group_id, collections.deque()).append(_Waiting(request_id, prepare))
        self._queued += 1
        return self._run(group_id, now_ms, monotonic_ms)

    def on_appended(self, token: int, base_offset: int) -> None:
        write = self._in_flight[token]
        invariant(write.base_offset < 0 and base_offset >= 0, "write appended twice")
        write.base_offset = base_offset
        self._by_offset[base_offset] = token

    def on_append_failed(self, token: int, error: common_pb2.ErrorCode, now_ms: int, monotonic_ms: int) -> list[Output]:
        """The append did not happen (nothing of it is in the log)."""
        write = self._in_flight.pop(token)
        invariant(write.base_offset < 0, "an appended write cannot fail; wait for commit or unload")
        del self._busy[write.group_id]
        return [Reply(write.request_id, None, error), *self._run(write.group_id, now_ms, monotonic_ms)]

    def on_committed(self, batches: Sequence[tuple[BatchHeader, bytes | memoryview]], now_ms: int,
                     monotonic_ms: int) -> list[Output]:
        """Batches that just became committed (below the high watermark), in log order."""
        out: list[Output] = []
        for header, payload in batches:
            token = self._by_offset.pop(header.base_offset, None)
            if token is None:  # not ours: a transaction marker (or a write of a previous leader)
                self.shard.replay_batch(header, payload)
                continue
            write = self._in_flight.pop(token)
            invariant(header.record_count == len(write.decision.records), "committed batch is not our write")
            del self._busy[write.group_id]
            out.append(self._complete(write, monotonic_ms))
            out.extend(self._run(write.group_id, now_ms, monotonic_ms))
        return out

    def unload(self) -> list[Output]:
        """Leadership lost: every waiting or in-flight request gets NOT_COORDINATOR (an
        appended write may still commit; the next leader replays it from the log)."""
        self.unloaded = True
        out: list[Output] = [Reply(w.request_id, None, E.NOT_COORDINATOR) for w in self._in_flight.values()]
        for queue in self._queues.values():
            out.extend(Reply(w.request_id, None, E.NOT_COORDINATOR) for w in queue)
        self._queues.clear()
        self._in_flight.clear()
        self._busy.clear()
        self._by_offset.clear()
        self._queued = 0
        return out

    # --- internals ------------------------------------------------------------------------------

    def _run(self, group_id: str, now_ms: int, monotonic_ms: int) -> list[Output]:
        """Prepare queued requests of `group_id` until one needs a write."""
        out: list[Output] = []
        queue = self._queues.get(group_id)
        while queue and group_id not in self._busy:
            waiting = queue.popleft()
            self._queued -= 1
            decision = waiting.prepare(self.shard, now_ms)
            if not decision.records:
                out.append(self._complete(_InFlight(waiting.request_id, group_id, decision), monotonic_ms))
                continue
            token = self._next_token
            self._next_token += 1
            self._in_flight[token] = _InFlight(waiting.request_id, group_id, decision)
            self._busy[group_id] = token
            producer_id = decision.producer_id if isinstance(decision, CommitDecision) else -1
            producer_epoch = decision.producer_epoch if isinstance(decision, CommitDecision) else -1
            out.append(Append(token, decision.records, producer_id, producer_epoch))
        if queue is not None and not queue:
            del self._queues[group_id]
        return out

    def _complete(self, write: _InFlight, monotonic_ms: int) -> Reply:
        decision = write.decision
        if isinstance(decision, GroupDecision):
            return Reply(write.request_id, self.shard.complete_group(decision, write.base_offset, monotonic_ms),
                         decision.error)
        if decision.records:
            self.shard.complete_commit(decision, write.base_offset)
        return Reply(write.request_id, decision, decision.error)
