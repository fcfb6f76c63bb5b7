"""The transaction coordinator of one broker as a pure core: requests, ticks and write
outcomes in, actions out. The broker shell performs the actions and reports back.

Theory of operation
-------------------
The broker leads some partitions of `__transaction_state`; for each it runs one
`TransactionStateMachine` (created by `loaded` after `txn_log.load_partition`). A request
is routed to the machine of `coordinator_partition(transactional_id, partition_count)`
(NOT_COORDINATOR when this broker does not lead it, COORDINATOR_LOAD_IN_PROGRESS while it
loads). The machine's decision becomes either a `Reply` at once, or an `AppendRecords`
action: the shell appends `batch` to the state partition as leader with acks=all *at
`coordinator_epoch`* and reports `write_committed` (the offset is below the high watermark:
the reply goes out now and memory changes), `write_failed` (surely not written: e.g.
refused before the append, or truncated away), or `write_timed_out` (unknown: the client
gets REQUEST_TIMED_OUT now, the id stays blocked until the shell learns the outcome or the
partition is unloaded). After a Prepare* record commits, the transaction's markers join
the marker channel; `tick` sends them (`MarkerSend` actions, to the current leader of each
partition) and `marker_response` digests the answers; once all are written, the
Complete* record is appended. AddPartitions/AddOffsets of an id whose previous transaction
is still completing (Prepare*: markers being written) wait in the core for its Complete*
record (at most `completing_wait_ms`, then CONCURRENT_TRANSACTIONS) instead of bouncing off
at once: the producer starts its next transaction as soon as the coordinator can take it,
not at its next retry. `tick` also aborts timed-out transactions and removes
expired ids, every `scan_interval_ms`. Unloading (leadership moved, or a marker was refused
with TRANSACTION_COORDINATOR_FENCED) drops the machine, its writes and its markers; every
parked request is answered NOT_COORDINATOR. One write per transition, one transition per id
at a time (the machine blocks the id while its write is pending).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

from semel import limits
from semel.coordinator.txn_log import encode_records
from semel.coordinator.txn_markers import (
    LeaderLookup,
    MarkerChannelConfig,
    MarkerSend,
    TxnMarkerChannel,
)
from semel.coordinator.txn_state import (
    PREPARED,
    NextAdd,
    PendingTransition,
    ProducerIdSource,
    TransactionMetadata,
    TransactionStateMachine,
    TransitionKind,
    TxnConfig,
    TxnResult,
    TxnState,
    TxnVersion,
    VerifyResult,
    offsets_partition,
)
from semel.internal_topics import coordinator_partition
from semel.invariant import invariant
from semel.topic_partition import TopicPartition
from semel.v1.common_pb2 import ErrorCode


@dataclasses.dataclass(frozen=True, slots=True)
class AppendRecords:
    """Append `batch` (base offset 0, stamp it) to `__transaction_state` partition
    `partition` as its leader at leader epoch `coordinator_epoch`, acks=all; then report
    `write_committed` / `write_failed` / `write_timed_out` with `write_id`."""

    partition: int
    coordinator_epoch: int
    write_id: int
    batch: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """The answer to request `request_id`: `result.error`, and once a write committed,
    `completed` carries the identity to answer (see `txn_wire`)."""

    request_id: int
    result: TxnResult
    completed: PendingTransition | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionFenced:
    """A newer coordinator owns `partition`: this broker unloaded it (stop writing to it)."""

    partition: int


Action: TypeAlias = "AppendRecords | Reply | MarkerSend | PartitionFenced"


@dataclasses.dataclass(slots=True)
class _Write:
    write_id: int
    partition: int
    pending: PendingTransition
    result: TxnResult
    request_id: int | None  # None: nobody waits (coordinator-driven), or already answered
    outcome_unknown: bool = False  # write_timed_out: requests do not wait for it


@dataclasses.dataclass(frozen=True, slots=True)
class _Waiting:
    """A request that found its id's previous transaction completing, or a state write of the
    id in flight; `retry(now_ms)` runs it again once that record is written (or failed); it
    may wait again, up to `deadline_ms`."""

    request_id: int
    deadline_ms: int
    retry: Callable[[int], list[Action]]
    add: NextAdd | None = None  # an AddPartitions: may start its transaction in the Complete* write


@dataclasses.dataclass(slots=True)
class TxnOutcomeCounts:
    """Transitions whose state record committed, counted for metrics (monotonic)."""

    commits: int = 0
    aborts: int = 0
    timeouts: int = 0  # TIMEOUT_ABORT: the coordinator aborted a transaction open past its timeout
    fenced: int = 0  # FENCE_ABORT: InitProducerId fenced the producer of an open transaction

    def record(self, pending: PendingTransition) -> None:
        after = pending.after
        if pending.kind is TransitionKind.COMPLETE and after is not None:
            self.commits += after.state is TxnState.COMPLETE_COMMIT
            self.aborts += after.state is TxnState.COMPLETE_ABORT
        self.timeouts += pending.kind is TransitionKind.TIMEOUT_ABORT
        self.fenced += pending.kind is TransitionKind.FENCE_ABORT


class TxnCoordinator:
    def __init__(
        self,
        partition_count: int,
        allocate_producer_id: ProducerIdSource,
        config: TxnConfig | None = None,
        channel_config: MarkerChannelConfig | None = None,
        scan_interval_ms: int = limits.TRANSACTION_ABORT_SCAN_INTERVAL_MS,
        completing_wait_ms: int = limits.TXN_COMPLETING_WAIT_MS,
    ) -> None:
        invariant(partition_count >= 1, "partition_count must be >= 1")
        invariant(completing_wait_ms >= 0, "completing_wait_ms must be >= 0")
        self.partition_count = partition_count
        self.config = config or TxnConfig()
        self.channel = TxnMarkerChannel(channel_config)
        self.scan_interval_ms = scan_interval_ms
        self._allocate = allocate_producer_id
        self._machines: dict[int, TransactionStateMachine] = {}
        self._loading: set[int] = set()
        self._writes: dict[int, _Write] = {}
        self._write_of_tid: dict[str, int] = {}
        self._write_ids = itertools.count(1)
        self._last_scan_ms: int | None = None
        self.completing_wait_ms = completing_wait_ms
        # Invariant: every waiting request's id is in a loaded partition, and their number is
        # at most limits.MAX_WAITING_TXN_REQUESTS (`_waiting_count`).
        self._waiting: dict[str, list[_Waiting]] = {}
        self._waiting_count = 0
        self.outcomes = TxnOutcomeCounts()

    # --- partition lifecycle -------------------------------------------------------------------

    def partition_of(self, transactional_id: str) -> int:
        return int(coordinator_partition(transactional_id, self.partition_count))

    def machine(self, partition: int) -> TransactionStateMachine | None:
        return self._machines.get(partition)

    def loaded_partitions(self) -> list[int]:
        return sorted(self._machines)

    def begin_loading(self, partition: int) -> list[Action]:
        """This broker became leader of `partition`: requests wait (LOAD_IN_PROGRESS)."""
        actions = self.unload(partition)
        self._loading.add(partition)
        return actions

    def loaded(
        self, partition: int, coordinator_epoch: int, metadata: Iterable[TransactionMetadata]
    ) -> list[Action]:
        """`txn_log.load_partition` finished: serve the partition at `coordinator_epoch`."""
        actions = self.unload(partition)  # replies to requests parked on an older load, if any
        machine = TransactionStateMachine(partition, coordinator_epoch, self._allocate, self.config, metadata)
        for tid in machine.snapshot():
            invariant(self.partition_of(tid) == partition, f"{tid!r} does not belong to partition {partition}")
        self._machines[partition] = machine
        for tid in machine.prepared():
            self.channel.add(machine.marker_plan(tid))  # markers of a failed-over decision, again
        return actions

    def unload(self, partition: int) -> list[Action]:
        """Leadership of `partition` moved: forget it; parked requests get NOT_COORDINATOR."""
        self._loading.discard(partition)
        machine = self._machines.pop(partition, None)
        actions: list[Action] = []
        for write in [w for w in self._writes.values() if w.partition == partition]:
            del self._writes[write.write_id]
            del self._write_of_tid[write.pending.transactional_id]
            if write.request_id is not None:
                actions.append(_reply(write.request_id, ErrorCode.NOT_COORDINATOR, "the coordinator moved"))
        if machine is not None:
            for tid in machine.snapshot():
                self.channel.remove(tid)
        for tid in [t for t in self._waiting if self.partition_of(t) == partition]:
            for waiting in self._pop_waiting(tid):
                actions.append(_reply(waiting.request_id, ErrorCode.NOT_COORDINATOR, "the coordinator moved"))
        return actions

    # --- requests --------------------------------------------------------------------------------

    def init_producer_id(
        self, request_id: int, transactional_id: str, timeout_ms: int, now_ms: int,
        producer_id: int = -1, producer_epoch: int = -1, txn_version: TxnVersion = TxnVersion.V2,
    ) -> list[Action]:
        """`txn_version`: V1 for a classic Kafka client (the Kafka listener), V2 over gRPC."""
        machine, refusal = self._route(transactional_id)
        if machine is None:
            return [Reply(request_id, refusal)]
        result = machine.init_producer_id(transactional_id, timeout_ms, now_ms, producer_id, producer_epoch,
                                          txn_version)
        return self._submit(machine, result, request_id, now_ms)

    def add_partitions(
        self, request_id: int, transactional_id: str, producer_id: int, producer_epoch: int,
        partitions: Iterable[TopicPartition], now_ms: int, deadline_ms: int | None = None,
    ) -> list[Action]:
        """`deadline_ms`: how long the request may wait for a completing previous transaction
        (None: `completing_wait_ms` from now)."""
        machine, refusal = self._route(transactional_id)
        if machine is None:
            return [Reply(request_id, refusal)]
        partitions = tuple(partitions)
        result = machine.add_partitions(transactional_id, producer_id, producer_epoch, partitions, now_ms)
        deadline = now_ms + self.completing_wait_ms if deadline_ms is None else deadline_ms
        if self._may_wait(machine, transactional_id, result, now_ms, deadline):
            return self._wait(transactional_id, _Waiting(request_id, deadline, lambda now: self.add_partitions(
                request_id, transactional_id, producer_id, producer_epoch, partitions, now, deadline),
                NextAdd(producer_id, producer_epoch, partitions)))
        return self._submit(machine, result, request_id, now_ms)

    def add_offsets(
        self, request_id: int, transactional_id: str, producer_id: int, producer_epoch: int,
        group_id: str, offsets_partition_count: int, now_ms: int, deadline_ms: int | None = None,
    ) -> list[Action]:
        machine, refusal = self._route(transactional_id)
        if machine is None:
            return [Reply(request_id, refusal)]
        result = machine.add_offsets(
            transactional_id, producer_id, producer_epoch, group_id, offsets_partition_count, now_ms
        )
        deadline = now_ms + self.completing_wait_ms if deadline_ms is None else deadline_ms
        if self._may_wait(machine, transactional_id, result, now_ms, deadline):
            return self._wait(transactional_id, _Waiting(request_id, deadline, lambda now: self.add_offsets(
                request_id, transactional_id, producer_id, producer_epoch, group_id, offsets_partition_count, now,
                deadline), NextAdd(producer_id, producer_epoch, (offsets_partition(group_id, offsets_partition_count),))))
        return self._submit(machine, result, request_id, now_ms)

    def end_txn(
        self, request_id: int, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool, now_ms: int
    ) -> list[Action]:
        machine, refusal = self._route(transactional_id)
        if machine is None:
            return [Reply(request_id, refusal)]
        result = machine.end_txn(transactional_id, producer_id, producer_epoch, commit, now_ms)
        return self._submit(machine, result, request_id, now_ms)

    def verify(
        self, transactional_id: str, producer_id: int, producer_epoch: int, partitions: Iterable[TopicPartition]
    ) -> VerifyResult:
        machine, refusal = self._route(transactional_id)
        if machine is None:
            return VerifyResult(refusal.error, refusal.message)
        return machine.verify(transactional_id, producer_id, producer_epoch, partitions)

    def describe(self, transactional_id: str) -> tuple[ErrorCode, TransactionMetadata | None]:
        machine, refusal = self._route(transactional_id)
        if machine is None:
            return refusal.error, None
        meta = machine.metadata(transactional_id)
        return (ErrorCode.NONE if meta is not None else ErrorCode.TRANSACTIONAL_ID_NOT_FOUND), meta

    def list_transactions(
        self, now_ms: int, states: Iterable[TxnState] = (), producer_ids: Iterable[int] = (),
        min_duration_ms: int = 0, limit: int = limits.MAX_LISTED_TRANSACTIONS,
    ) -> tuple[ErrorCode, list[TransactionMetadata], bool]:
        """(error, listing, truncated) over every loaded partition; LOAD_IN_PROGRESS while any loads."""
        if self._loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, [], False
        states, producer_ids = tuple(states), tuple(producer_ids)
        out: list[TransactionMetadata] = []
        for partition in sorted(self._machines):
            found, truncated = self._machines[partition].list_transactions(
                now_ms, states, producer_ids, min_duration_ms, limit - len(out)
            )
            out.extend(found)
            if truncated:
                return ErrorCode.NONE, out, True
        return ErrorCode.NONE, out, False

    # --- write outcomes -------------------------------------------------------------------------

    def write_committed(self, write_id: int, now_ms: int) -> list[Action]:
        write = self._pop_write(write_id)
        if write is None:
            return []  # the partition was unloaded meanwhile
        machine = self._machines[write.partition]
        machine.complete(write.pending)
        self.outcomes.record(write.pending)
        actions: list[Action] = []
        if write.request_id is not None:
            actions.append(Reply(write.request_id, write.result, write.pending))
        after = write.pending.after
        if after is not None and after.state in PREPARED:
            self.channel.add(machine.marker_plan(after.transactional_id))  # full: tick re-adds it
        return actions + self._resume(write.pending.transactional_id, now_ms)

    def write_failed(self, write_id: int, error: ErrorCode, now_ms: int) -> list[Action]:
        """The record was surely not written (`error`: what the append answered). The requests
        that waited for this write run again, each on its own (a failed Complete* write: they
        find the transaction still completing and wait on)."""
        write = self._pop_write(write_id)
        if write is None:
            return []
        self._machines[write.partition].abandon(write.pending)
        actions: list[Action] = []
        if write.request_id is not None:
            code = (ErrorCode.NOT_COORDINATOR if error == ErrorCode.NOT_LEADER_OR_FOLLOWER
                    else ErrorCode.COORDINATOR_NOT_AVAILABLE)
            actions.append(_reply(write.request_id, code, f"the state write failed ({ErrorCode.Name(error)})"))
        return actions + self._resume(write.pending.transactional_id, now_ms, combine=False)

    def write_timed_out(self, write_id: int) -> list[Action]:
        """The outcome is unknown: answer REQUEST_TIMED_OUT now; the id stays blocked until
        `write_committed` / `write_failed` or the partition is unloaded."""
        write = self._writes.get(write_id)
        if write is None:
            return []
        write.outcome_unknown = True
        if write.request_id is None:
            return []
        request_id, write.request_id = write.request_id, None
        return [_reply(request_id, ErrorCode.REQUEST_TIMED_OUT, "the state write's outcome is unknown; retry")]

    # --- time and markers ---------------------------------------------------------------------------

    def tick(self, now_ms: int, leader_of: LeaderLookup, monotonic_ms: int) -> list[Action]:
        """`now_ms`: the wall clock; `monotonic_ms`: this process's monotonic clock, which
        paces the scans and bounds transaction timeouts from below (`open_ms`)."""
        actions: list[Action] = []
        for machine in self._machines.values():
            machine.observe_monotonic(monotonic_ms)
        if self._last_scan_ms is None or monotonic_ms - self._last_scan_ms >= self.scan_interval_ms:
            self._last_scan_ms = monotonic_ms
            actions += self._scan(now_ms, monotonic_ms)
        for machine in self._machines.values():
            for tid in machine.prepared():
                if tid not in self.channel and tid not in self._write_of_tid:
                    if not self.channel.add(machine.marker_plan(tid)):
                        break  # the channel is full; the next tick tries again
        actions += self.channel.poll(monotonic_ms, leader_of)
        actions += self._expire_waiting(now_ms)
        return actions

    def marker_response(
        self, send: MarkerSend, results: Mapping[tuple[int, TopicPartition], ErrorCode], now_ms: int,
        monotonic_ms: int,
    ) -> list[Action]:
        """`monotonic_ms` paces marker retries (a wall-clock step back must not hold them)."""
        progress = self.channel.on_response(send, results, monotonic_ms)
        actions: list[Action] = []
        for tid in progress.completed:
            machine = self._machines.get(self.partition_of(tid))
            if machine is not None and tid not in self._write_of_tid:
                result = machine.complete_markers(tid, now_ms, self._waiting_add(machine, tid))
                actions += self._submit(machine, result, None, now_ms)
        for partition in sorted({self.partition_of(tid) for tid in progress.fenced}):
            actions += self.unload(partition)
            actions.append(PartitionFenced(partition))
        return actions

    def marker_failure(self, send: MarkerSend, now_ms: int, monotonic_ms: int) -> list[Action]:
        return self.marker_response(send, {}, now_ms, monotonic_ms)

    # --- helpers ------------------------------------------------------------------------------------

    def _route(self, transactional_id: str) -> tuple[TransactionStateMachine | None, TxnResult]:
        partition = self.partition_of(transactional_id)
        machine = self._machines.get(partition)
        if machine is not None:
            return machine, TxnResult()
        if partition in self._loading:
            return None, TxnResult(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, f"partition {partition} is loading")
        return None, TxnResult(ErrorCode.NOT_COORDINATOR, f"this broker does not coordinate partition {partition}")

    def _submit(
        self, machine: TransactionStateMachine, result: TxnResult, request_id: int | None, now_ms: int
    ) -> list[Action]:
        pending = result.pending
        if pending is None:
            return [Reply(request_id, result)] if request_id is not None else []
        write = _Write(next(self._write_ids), machine.partition, pending, result, request_id)
        self._writes[write.write_id] = write
        self._write_of_tid[pending.transactional_id] = write.write_id
        batch = encode_records([(pending.transactional_id, pending.after)], now_ms)
        return [AppendRecords(machine.partition, machine.coordinator_epoch, write.write_id, batch)]

    def _scan(self, now_ms: int, monotonic_ms: int) -> list[Action]:
        actions: list[Action] = []
        for machine in self._machines.values():
            for tid in machine.expired(now_ms, monotonic_ms):
                if tid not in self._write_of_tid:
                    actions += self._submit(machine, machine.abort_timed_out(tid, now_ms, monotonic_ms), None, now_ms)
            for tid in machine.expired_ids(now_ms):
                if tid not in self._write_of_tid:
                    actions += self._submit(machine, machine.remove_expired(tid, now_ms), None, now_ms)
        return actions

    def _may_wait(
        self, machine: TransactionStateMachine, transactional_id: str, result: TxnResult, now_ms: int, deadline_ms: int
    ) -> bool:
        """CONCURRENT_TRANSACTIONS only because the previous transaction is completing or a
        state write of the id is in flight (e.g. another AddPartitions of the transaction), and
        time and room to wait for that record."""
        if result.error != ErrorCode.CONCURRENT_TRANSACTIONS or result.pending is not None or now_ms >= deadline_ms:
            return False
        meta = machine.metadata(transactional_id)
        write_id = self._write_of_tid.get(transactional_id)
        writing = write_id is not None and not self._writes[write_id].outcome_unknown
        return (meta is not None and (meta.state in PREPARED or writing)
                and self._waiting_count < limits.MAX_WAITING_TXN_REQUESTS)

    def _wait(self, transactional_id: str, waiting: _Waiting) -> list[Action]:
        self._waiting.setdefault(transactional_id, []).append(waiting)
        self._waiting_count += 1
        return []

    def _waiting_add(self, machine: TransactionStateMachine, transactional_id: str) -> NextAdd | None:
        """The partitions that the id's waiting AddPartitions of its current identity ask for, as
        one add (None: none waits). The Complete* write then starts their transaction; when they
        resume they find their partitions added and answer at once. (Only the current identity
        can wait: an id's identity does not change while it is prepared. The filter keeps it so.)"""
        meta = machine.metadata(transactional_id)
        if meta is None:
            return None
        identity = (meta.producer_id, meta.producer_epoch)
        partitions = {tp for w in self._waiting.get(transactional_id, ())
                      if w.add is not None and (w.add.producer_id, w.add.producer_epoch) == identity
                      for tp in w.add.partitions}
        return NextAdd(*identity, tuple(sorted(partitions))) if partitions else None

    def _pop_waiting(self, transactional_id: str) -> list[_Waiting]:
        found = self._waiting.pop(transactional_id, [])
        self._waiting_count -= len(found)
        return found

    def _resume(self, transactional_id: str, now_ms: int, combine: bool = True) -> list[Action]:
        """A write of the id committed (or failed): its waiting requests run again, in arrival
        order. With `combine`, when several AddPartitions wait, one write first adds all their
        partitions; they stay waiting for it and then answer at once, without a write each."""
        machine = self._machines.get(self.partition_of(transactional_id))
        if combine and machine is not None and transactional_id not in self._write_of_tid:
            add = self._waiting_add(machine, transactional_id)
            meta = machine.metadata(transactional_id)
            if add is not None and meta is not None and meta.state not in PREPARED:
                result = machine.add_partitions(transactional_id, add.producer_id, add.producer_epoch,
                                                add.partitions, now_ms)
                if result.pending is not None:
                    return self._submit(machine, result, None, now_ms)
        actions: list[Action] = []
        for waiting in self._pop_waiting(transactional_id):
            actions += waiting.retry(now_ms)
        return actions

    def _expire_waiting(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        for tid in [t for t, ws in self._waiting.items() if any(w.deadline_ms <= now_ms for w in ws)]:
            waiting = self._pop_waiting(tid)
            for w in waiting:
                if w.deadline_ms <= now_ms:
                    actions.append(_reply(w.request_id, ErrorCode.CONCURRENT_TRANSACTIONS,
                                          "the previous transaction is still completing (markers being written)"))
                else:
                    self._wait(tid, w)
        return actions

    def _pop_write(self, write_id: int) -> _Write | None:
        write = self._writes.pop(write_id, None)
        if write is not None:
            del self._write_of_tid[write.pending.transactional_id]
        return write


def _reply(request_id: int, error: ErrorCode, message: str) -> Reply:
    return Reply(request_id, TxnResult(error, message))
