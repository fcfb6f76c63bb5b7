"""One partition replica's storage: the log, its producer state, aborted index and epoch cache.

`PartitionStore` is the shell around the pure `ProducerStateManager`:

* leader: `append_as_leader(batches, leader_epoch, now_ms)` validates each produced batch
  against the producer state, stamps offsets on the accepted ones (`with_offsets`), appends
  them, then applies them to the producer state. A retry of a retained batch is answered
  with its original offsets and appends nothing.
* follower: `append_as_follower(raw, now_ms)` appends the leader's bytes verbatim and applies
  every batch (no validation: the leader already decided).
* coordinator markers: `append_marker(...)` writes a COMMIT/ABORT control batch; on both
  paths an ABORT that closes a transaction adds an `AbortedTxn` to the log's aborted index.

Write order and crash safety: the log append comes first, the producer state and the
aborted index follow. A crash in between loses nothing: on open the producer state is
rebuilt from the newest snapshot at or below the log end plus a replay of the log after it,
and the aborted index after the snapshot is rebuilt from the replayed markers. Snapshots are only an optimisation: a corrupt or missing one means a longer
replay. Snapshots are taken when a segment rolls, every `snapshot_interval_bytes` of
appends and on a clean close; those above the log end (a crash lost the log tail) or above
a truncation point are deleted. Before a snapshot is stored the log and aborted index are
fsynced (unless the flush policy is "never"), so after a power loss every snapshot still
found covers only data and aborts that survived.

The snapshot at a segment roll is captured at once and stored by a job on the disk
executor that runs after the log's roll job (semel.storage.disk_executor), only if the log's
recovery point reached its offset; a truncation or close cancels it like the one below.

With the `interval` flush policy the snapshot taken every `snapshot_interval_bytes` does
not wait for that fsync on the appending thread (a broker's event loop; measured: an inline
fdatasync there stalled all three brokers of a loaded cluster for 200-500 ms when the disk
was busy). The state is captured at once, the fsync runs on the background-sync thread, and
that thread stores the snapshot after it, unless a truncation or close came first (a
generation number, under `_snapshot_lock`, tells). At most one is pending per partition.

Invariant: `producer_state.end_offset == log.log_end_offset` between calls.

Not thread-safe: one caller at a time (the broker's event loop); the one exception is the
pending snapshot's store above.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from semel import limits
from semel.invariant import invariant, not_none
from semel.sentinels import NO_OFFSET
from semel.storage.aborted_txns import AbortedTxn
from semel.storage.batch import (
    HEADER_BYTES,
    BatchHeader,
    CorruptBatchError,
    Marker,
    decode_header,
    decode_marker,
    encode_marker,
    iter_batches,
    with_offsets,
)
from semel.storage.errors import error_code_of
from semel.storage.kv import KvStore, ProducerSnapshotStore
from semel.storage.log import PartitionLog
from semel.storage.log_policy import LogConfig
from semel.storage.producer_state import (
    CompletedTxn,
    Outcome,
    ProducerStateConfig,
    ProducerStateManager,
    SnapshotError,
)
from semel.v1.common_pb2 import ErrorCode

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class AppendResult:
    """The outcome of one produced batch."""

    error: ErrorCode = ErrorCode.NONE
    first_offset: int = NO_OFFSET
    last_offset: int = NO_OFFSET
    duplicate: bool = False  # a retry: nothing appended, the offsets are the original ones
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE


@dataclasses.dataclass(frozen=True, slots=True)
class MarkerResult:
    error: ErrorCode = ErrorCode.NONE
    offset: int = NO_OFFSET  # where the marker was written
    completed: CompletedTxn | None = None  # the transaction it closed, if any
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE


def _restamped(h: BatchHeader, base_offset: int, leader_epoch: int) -> BatchHeader:
    """`h` with new offsets (dataclasses.replace costs several times more on the hot path)."""
    return BatchHeader(
        base_offset,
        h.last_offset_delta,
        leader_epoch,
        h.producer_id,
        h.producer_epoch,
        h.base_sequence,
        h.record_count,
        h.attributes,
        h.base_timestamp_ms,
        h.max_timestamp_ms,
        h.size_bytes,
        h.magic,
    )


class PartitionStore:
    """The storage of one partition replica (see the module docstring)."""

    def __init__(
        self,
        log: PartitionLog,
        snapshots: ProducerSnapshotStore,
        producer_config: ProducerStateConfig,
        config: LogConfig,
        snapshot_interval_bytes: int,
    ) -> None:
        self.log = log
        self.snapshots = snapshots
        self.producer_config = producer_config
        self.config = config
        self.snapshot_interval_bytes = snapshot_interval_bytes
        self.producer_state = ProducerStateManager(producer_config, end_offset=log.log_start_offset)
        self._bytes_since_snapshot = 0
        self._active_segment_base = log.segment_base_offsets[-1]
        self._closed = False
        self._snapshot_lock = threading.Lock()
        self._snapshot_generation = 0  # bumped by what makes a pending snapshot wrong (truncation, close)
        self._snapshot_pending = False

    @classmethod
    def open(
        cls,
        directory: str | Path,
        config: LogConfig,
        kv: KvStore,
        partition: bytes,
        now_ms: int,
        *,
        producer_config: ProducerStateConfig | None = None,
        snapshot_interval_bytes: int = limits.PRODUCER_SNAPSHOT_INTERVAL_BYTES_DEFAULT,
    ) -> PartitionStore:
        """Open (recovering) the log at `directory`; `partition` is its key in `kv`
        (`semel.storage.kv.partition_key(topic, index)`)."""
        log = PartitionLog.open(directory, config, now_ms)
        try:
            store = cls(
                log,
                ProducerSnapshotStore(kv, partition),
                producer_config or ProducerStateConfig(),
                config,
                snapshot_interval_bytes,
            )
            store.snapshots.delete_above(log.log_end_offset)  # a crash lost the log tail they covered
            store._rebuild_producer_state()
        except BaseException:
            log.close()
            raise
        return store

    # --- queries --------------------------------------------------------------------------

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    def first_unstable_offset(self) -> int | None:
        """First offset of the oldest open transaction; the LSO is min(this, HW)."""
        return self.producer_state.first_unstable_offset()

    # --- leader -------------------------------------------------------------------------------

    def append_as_leader(self, batches: Sequence[bytes], leader_epoch: int, now_ms: int) -> list[AppendResult]:
        """Validate, stamp offsets on, append and apply produced batches; one result each.

        Batches are appended in groups, one log append each: a group ends before a batch
        whose producer is already in it (it must be validated against the state the group
        leaves behind) and before a batch of a new producer (its room in the bounded table
        is checked against the state the group leaves behind)."""
        self._check_open()
        results: list[AppendResult | None] = [None] * len(batches)
        group: list[tuple[int, bytes, BatchHeader]] = []  # (index, stamped bytes, header)
        group_producers: set[int] = set()
        for index, raw in enumerate(batches):
            header, problem = self._decode_produced(raw)
            if problem is not None:
                results[index] = problem
                continue
            header = not_none(header, "a produced batch without a problem has a header")
            pid = header.producer_id
            is_new = pid >= 0 and pid not in self.producer_state
            if group and (is_new or pid in group_producers):
                self._append_group(group, now_ms, results)
                group, group_producers = [], set()
            decision = self.producer_state.validate(header, now_ms)
            if decision.outcome is Outcome.REJECT:
                results[index] = AppendResult(decision.error, message=decision.message)
            elif decision.outcome is Outcome.DUPLICATE:
                results[index] = AppendResult(
                    first_offset=decision.first_offset, last_offset=decision.last_offset, duplicate=True
                )
            else:
                base = self._next_offset(group)
                stamped = with_offsets(raw, base, leader_epoch)
                group.append((index, stamped, _restamped(header, base, leader_epoch)))
                if pid >= 0:
                    group_producers.add(pid)
        if group:
            self._append_group(group, now_ms, results)
        return [r if r is not None else AppendResult(ErrorCode.UNKNOWN_SERVER_ERROR) for r in results]

    def _decode_produced(self, raw: bytes) -> tuple[BatchHeader | None, AppendResult | None]:
        if len(raw) > self.config.max_batch_bytes:
            return None, AppendResult(ErrorCode.RECORD_BATCH_TOO_LARGE, message=f"{len(raw)} bytes")
        try:
            header = decode_header(raw)  # the client's CRC: with_offsets re-stamps it
        except CorruptBatchError as exc:
            return None, AppendResult(ErrorCode.CORRUPT_MESSAGE, message=str(exc))
        if header.size_bytes != len(raw):
            return None, AppendResult(ErrorCode.INVALID_RECORD, message="one batch per element")
        return header, None

    def _next_offset(self, group: list[tuple[int, bytes, BatchHeader]]) -> int:
        return group[-1][2].next_offset if group else self.log.log_end_offset

    def _append_group(
        self, group: list[tuple[int, bytes, BatchHeader]], now_ms: int, results: list[AppendResult | None]
    ) -> None:
        try:
            self._append_to_log(b"".join(stamped for _, stamped, _ in group), now_ms)
        except (CorruptBatchError, ValueError) as exc:  # refused before anything was written
            for index, _, _ in group:
                results[index] = AppendResult(error_code_of(exc), message=str(exc))
            return
        for index, stamped, header in group:
            self._apply(header, memoryview(stamped)[HEADER_BYTES:])
            results[index] = AppendResult(first_offset=header.base_offset, last_offset=header.last_offset)
        self._after_append(sum(len(stamped) for _, stamped, _ in group))

    # --- follower ---------------------------------------------------------------------------

    def append_as_follower(self, raw: bytes, now_ms: int) -> BatchHeader:
        """Append the leader's bytes verbatim and apply every batch; returns the last header."""
        self._check_open()
        last = self._append_to_log(raw, now_ms)
        for header, payload in iter_batches(raw, verify_crc=False):  # the log just checked them
            self._apply(header, payload)
        self._after_append(len(raw))
        return last

    # --- markers (leader) -----------------------------------------------------------------------

    def append_marker(
        self,
        producer_id: int,
        producer_epoch: int,
        *,
        commit: bool,
        coordinator_epoch: int,
        leader_epoch: int,
        now_ms: int,
    ) -> MarkerResult:
        """Write a COMMIT/ABORT marker for a producer's transaction (from the coordinator)."""
        self._check_open()
        marker = Marker(commit, coordinator_epoch)
        decision = self.producer_state.validate_marker(producer_id, producer_epoch, marker)
        if not decision.ok:
            return MarkerResult(decision.error, message=decision.message)
        offset = self.log.log_end_offset
        encoded = encode_marker(
            producer_id, producer_epoch, marker, base_offset=offset, leader_epoch=leader_epoch, now_ms=now_ms
        )
        self._append_to_log(encoded, now_ms)
        completed = self._apply(decode_header(encoded, verify_crc=False), memoryview(encoded)[HEADER_BYTES:])
        self._after_append(len(encoded))
        return MarkerResult(offset=offset, completed=completed)

    # --- shared append/apply path -----------------------------------------------------------------

    def _append_to_log(self, data: bytes, now_ms: int) -> BatchHeader:
        """Append to the log; if the append rolled a segment, snapshot the producer state at
        the new segment's base (the log writes a whole append into the new segment, so the
        state, not yet updated with `data`, covers exactly the batches below that base)."""
        last = self.log.append(data, now_ms)
        active_base = self.log.segment_base_offsets[-1]
        if active_base != self._active_segment_base:
            self._active_segment_base = active_base
            if active_base == self.producer_state.end_offset:
                self._snapshot_after_roll()
        return last

    def _apply(self, header: BatchHeader, payload: bytes | memoryview) -> CompletedTxn | None:
        """Apply one stored batch (its header, and its payload, read only for a marker) to the producer state."""
        marker = decode_marker(payload, header.magic) if header.is_control else None
        completed = self.producer_state.apply(header, marker)
        if completed is not None and completed.aborted:
            self._record_abort(completed)
        return completed

    def _record_abort(self, completed: CompletedTxn) -> None:
        unstable = self.producer_state.first_unstable_offset()
        lso = unstable if unstable is not None else completed.last_offset + 1
        self.log.aborted_txns.add(
            AbortedTxn(completed.producer_id, completed.first_offset, completed.last_offset, lso)
        )

    def _after_append(self, appended_bytes: int) -> None:
        invariant(
            self.producer_state.end_offset == self.log.log_end_offset,
            f"producer state at {self.producer_state.end_offset} != log end {self.log.log_end_offset}",
        )
        self._bytes_since_snapshot += appended_bytes
        if self._bytes_since_snapshot >= self.snapshot_interval_bytes:
            self._snapshot_soon()

    # --- snapshots, truncation, retention -----------------------------------------------------

    def take_snapshot(self) -> int:
        """Store the producer state at the log end (at segment roll, every N bytes, on close).

        Unless the flush policy is "never", the log and its aborted index are fsynced first:
        a snapshot that survives a power loss then never covers an abort the index lost
        (the replay after it could not bring that abort back)."""
        if self.config.flush_policy != "never":
            self.log.flush()
        offset = self.producer_state.end_offset
        self.snapshots.put(offset, self.producer_state.snapshot())
        self.snapshots.retain_newest(limits.PRODUCER_SNAPSHOTS_RETAINED)
        self._bytes_since_snapshot = 0
        return offset

    def _snapshot_soon(self) -> None:
        """The every-N-bytes snapshot; see the module docstring for why and how it waits for
        its fsync off the appending thread."""
        if self.config.flush_policy != "interval":  # "always" has synced already; "never" does not sync
            self.take_snapshot()
            return
        if self._snapshot_pending:
            return  # the byte count keeps growing: the first append after it is stored asks again
        offset = self.producer_state.end_offset
        data = self.producer_state.snapshot()
        generation = self._snapshot_generation

        def store(synced: bool) -> None:  # on the background-sync thread
            try:
                with self._snapshot_lock:
                    if synced and generation == self._snapshot_generation:
                        self.snapshots.put(offset, data)
                        self.snapshots.retain_newest(limits.PRODUCER_SNAPSHOTS_RETAINED)
            finally:
                self._snapshot_pending = False

        self._snapshot_pending = True
        if self.log.flush_soon(store):
            self._bytes_since_snapshot = 0
        else:  # the sync queue is full: back pressure, as the log's own syncs
            self._snapshot_pending = False
            self.take_snapshot()

    def _snapshot_after_roll(self) -> None:
        """The roll snapshot, stored on the disk executor after the log's roll job: only once the
        recovery point reached its offset (every batch below is durable; a cancelled roll job
        never moves it) and the aborted index is synced. The appending thread only captures the
        state. Flush policy "never" syncs nothing and stores it at once."""
        if self.config.flush_policy == "never":
            self.take_snapshot()
            return
        offset = self.producer_state.end_offset
        data = self.producer_state.snapshot()
        generation = self._snapshot_generation

        def store() -> None:  # on a disk thread
            self.log.sync_aborted_index()
            with self._snapshot_lock:
                if generation == self._snapshot_generation and self.log.recovery_point >= offset:
                    self.snapshots.put(offset, data)
                    self.snapshots.retain_newest(limits.PRODUCER_SNAPSHOTS_RETAINED)

        if self.log.run_after_rolls(store, f"producer snapshot at {offset} of {self.log.directory}"):
            self._bytes_since_snapshot = 0
        else:  # the disk executor is full: back pressure
            self.take_snapshot()

    def _cancel_pending_snapshot(self) -> None:
        """A snapshot captured before now must not be stored after now (waits for one being
        stored at this moment; that takes a RocksDB put)."""
        with self._snapshot_lock:
            self._snapshot_generation += 1

    def truncate_to(self, offset: int) -> None:
        """Drop every record at or after `offset` (a follower's divergent tail) and rebuild the
        producer state: newest snapshot at or below the new log end + replay after it."""
        self._check_open()
        self._cancel_pending_snapshot()
        self.log.truncate_to(offset)
        self.snapshots.delete_above(self.log.log_end_offset)
        self._rebuild_producer_state()

    def _rebuild_producer_state(self) -> None:
        end = self.log.log_end_offset
        start = self.log.log_start_offset
        state = self._newest_good_snapshot(end)
        self.producer_state = state
        replay_from = max(state.end_offset, start)
        # Aborts after the snapshot are rebuilt from their markers: after a power loss the
        # index file may miss any of them (page-cache writeback has no order), not just the last.
        self.log.aborted_txns.truncate_to(replay_from)
        if replay_from < end:
            # Batches below the log start are gone (retention): apply() accepts the gap.
            for header in self.log.iter_headers(replay_from, end):
                self._apply(header, self._control_payload(header) if header.is_control else b"")
        else:
            state.end_offset = end  # nothing stored after the snapshot (or an empty log at its start)
        invariant(state.end_offset == end, f"replay ended at {state.end_offset}, log end is {end}")
        self._bytes_since_snapshot = 0
        self._active_segment_base = self.log.segment_base_offsets[-1]

    def _newest_good_snapshot(self, end: int) -> ProducerStateManager:
        found = self.snapshots.newest_at_or_below(end)
        while found is not None:
            offset, data = found
            try:
                state = ProducerStateManager.from_snapshot(data, self.producer_config)
                if state.end_offset == offset:
                    return state
            except SnapshotError:
                pass
            self.snapshots.delete(offset)  # corrupt or misfiled: fall back to an older one
            found = self.snapshots.older_than(offset)
        # No snapshot: replay everything stored (from the batch holding the log start, which
        # may begin below it after a delete-records).
        return ProducerStateManager(self.producer_config, end_offset=0)

    def _control_payload(self, header: BatchHeader) -> bytes:
        data = self.log.read(header.base_offset, header.size_bytes, max_offset=header.next_offset).data
        return bytes(data[HEADER_BYTES : header.size_bytes])

    def apply_retention(self, now_ms: int) -> int:
        """Delete old segments; snapshots below the newest one at or below the log start go."""
        self._check_open()
        log_start = self.log.apply_retention(now_ms)
        self._prune_snapshots_below(log_start)
        return log_start

    def advance_log_start(self, offset: int) -> None:
        self._check_open()
        self.log.advance_log_start(offset)
        self._prune_snapshots_below(self.log.log_start_offset)

    def _prune_snapshots_below(self, log_start: int) -> None:
        floor = self.snapshots.newest_at_or_below(log_start)
        if floor is not None:
            self.snapshots.delete_below(floor[0])

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Forget every batch and continue at `offset` (a follower far behind the leader's log
        start): the producer state starts empty there and every snapshot goes."""
        self._check_open()
        self._cancel_pending_snapshot()
        self.log.truncate_fully_and_start_at(offset)
        self.snapshots.delete_all()
        self._rebuild_producer_state()

    def expire_producers(self, now_ms: int, monotonic_ms: int) -> list[int]:
        return self.producer_state.expire(now_ms, monotonic_ms)

    # --- lifecycle ------------------------------------------------------------------------------

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        """Clean close: snapshot the producer state, close the log (the kv store is shared
        by every partition of the broker and stays open)."""
        if self._closed:
            return
        self._closed = True
        self._cancel_pending_snapshot()  # the close snapshot below covers more
        try:
            self.take_snapshot()
        except Exception:  # a missing snapshot only means a longer replay at the next open
            _log.warning("%s: no producer-state snapshot at close", self.log.directory, exc_info=True)
        finally:
            self.log.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("partition store is closed")
