"""The on-disk log of one partition replica: segments, indexes, checkpoints, recovery.

Theory of operation
-------------------
A partition directory holds:

    00000000000000000000.log        whole batches (semel.storage.batch format), append-only
    00000000000000000000.index      sparse offset index of that segment (written at roll/close)
    00000000000000000000.timeindex  time index of that segment (written at roll/close)
    log.checkpoint                  {log_start_offset, recovery_point}, CRC'd, atomic rewrite
    leader-epoch.checkpoint         leader epoch -> start offset, CRC'd, atomic rewrite
    aborted.txnindex                aborted transactions, append-only 36-byte records
    .clean_shutdown                 present only between a clean close() and the next open()
    .lock                           flock'd while a process has the log open

`append` validates every batch of the call (framing, size bound, CRC, offset continuity)
before it writes anything, then hands all of them to the kernel with one write(): when it
returns the bytes are in the page cache and survive a crash of this process. Indexes are
kept in memory and reach their files when a segment is sealed (roll), and at close.

Durability (`flush_policy`): `always` fdatasyncs the segment before append returns;
`interval` (the default) has it synced when `flush_interval_ms` passed since the last one,
on a background thread (semel.storage.background_sync: a broker's event loop never waits for
the disk), and at roll; `never` leaves it to the OS. close() always fsyncs. Why `interval`: replication, not
fsync, is what makes an acknowledged write durable (as in Kafka: a replica that loses an
unflushed tail in a power loss truncates to the leader and fetches it again). `always` would
add ~0.17 ms per append (10x a 16 KiB page-cache write) for protection replication already
gives; `interval` bounds what one machine crash can lose to about `flush_interval_ms` of
writes for one fdatasync per interval, and fsyncs sealed segments so that after a power loss
only the active segment needs distrust. Details: docs/storage.md.

Recovery point: every batch below it is in a sealed segment whose file was synced (by the
policy) and whose index files were written; it moves to the new segment's base at each roll.
`open` scans (CRC + continuity) the segment holding the recovery point and every later one,
cuts a torn or corrupt tail and deletes what follows; with a clean-shutdown marker it scans
nothing. See semel.storage.recovery.

Invariants (checked in tests): segment bases strictly increase and each sealed segment
ends exactly where the next begins; log_start_offset <= log_end_offset and log start never
moves back; the epoch cache has no entry after the LEO; the aborted index has no
entry whose marker (last_offset) is at or after the LEO.

Truncation `truncate_to(offset)` drops the batch that contains `offset` and every later
batch, so the new LEO is `offset` when it is a batch boundary, else the base offset of the
batch that contained it (Kafka does the same: batches are never split).

Thread safety: public methods take one lock; `iter_headers` reads a snapshot of the
segment list and must not race a truncation or retention of the same range.

Off the appending thread (a broker's event loop never waits for the disk; docs/design.md,
"Threads"): a roll only creates the new segment inline; the sealed segment's fdatasync, its
index files, the directory fsync and the checkpoint that moves the recovery point run as a
job on the disk executor (semel.storage.disk_executor), keyed by the log's directory. So does
the file half of retention (checkpoint, then deletion of the segments already cut from the
list). Races, and why each is safe:
  * truncation, reset or close vs a pending roll job: they bump `_generation` under
    `_durable_lock` first; the job renames its index files into place and moves the recovery
    point only under that lock with its generation unchanged, else it drops its temporary
    files (unique names) and does nothing. A truncation therefore waits at most for one
    checkpoint write that is in progress, and the recovery point never rises past a cut.
  * retention vs a pending roll job: both are jobs of the same key, so they run in order:
    the deletion comes after the roll job wrote the sealed segment's files.
  * a crash between a roll and its job: the recovery point has not moved, so recovery
    verifies the sealed segment as it would an active one.
Every checkpoint write holds `_durable_lock`, so a late job never overwrites a newer file
with older values (it writes the current ones).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import struct
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from crc32c import crc32c as _crc32c
from semel import limits
from semel.clock import monotonic_ms
from semel.storage import background_sync, disk_executor
from semel.storage import epoch_cache as ec
from semel.storage.aborted_txns import AbortedTxn, AbortedTxnFile, AbortedTxnIndex
from semel.storage.batch import (
    BODY,
    CRC_FIELD_END,
    HEADER_BYTES,
    KAFKA_MAGIC,
    LENGTH_FIELD_END,
    MAGIC,
    PREFIX,
    BatchHeader,
    CorruptBatchError,
    crc_matches,
    kafka_fields,
)
from semel.storage.checkpoint import (
    CorruptCheckpointError,
    fsync_dir,
    read_json,
    write_json,
)
from semel.storage.epoch_cache import LeaderEpochCache
from semel.storage.errors import (
    BatchTooLargeError,
    CorruptLogError,
    InvalidAppendError,
    LogClosedError,
    OffsetOutOfRange,
)
from semel.storage.log_policy import (
    LogConfig,
    SegmentSummary,
    fsync_due,
    retention_count,
    should_roll,
)
from semel.storage.recovery import first_segment_to_verify
from semel.storage.segment import Frame, LogSegment, parse_segment_name

__all__ = [
    "AbortedTxn",
    "BatchTooLargeError",
    "CorruptBatchError",
    "CorruptLogError",
    "InvalidAppendError",
    "LogClosedError",
    "LogConfig",
    "OffsetOutOfRange",
    "PartitionLog",
    "ReadResult",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "log.checkpoint"
EPOCH_FILE = "leader-epoch.checkpoint"
ABORTED_FILE = "aborted.txnindex"
CLEAN_SHUTDOWN_FILE = ".clean_shutdown"
LOCK_FILE = ".lock"

# The whole 61-byte header in one unpack (field order of semel.storage.batch).
_HEADER = struct.Struct(PREFIX.format + BODY.format.lstrip(">"))


@dataclasses.dataclass(frozen=True, slots=True)
class ReadResult:
    data: bytes  # whole batches, exactly as stored
    first_offset: int  # base offset of the first batch (may be < the requested offset); = requested if empty
    next_offset: int  # offset after the last batch returned; = requested if empty
    headers: tuple[BatchHeader, ...]


def _cache_window() -> int | None:
    """Bytes of the active segment kept in the page cache after a background sync (None: all,
    and a sealed segment is not dropped either)."""
    return limits.PAGE_CACHE_WINDOW_BYTES if limits.PAGE_CACHE_WINDOW_BYTES > 0 else None


@dataclasses.dataclass(slots=True)
class RecoveryStats:
    """What the last `open` read: how many segments it trusted (index files loaded or rebuilt)
    and verified (every batch CRC-checked), the log bytes it scanned doing either, and how
    many indexes it rebuilt by scanning. Reported in the "recovered" log line and by
    `semel bench big-partition`; tests check that recovery reads only the tail."""

    segments: int = 0
    trusted: int = 0
    verified: int = 0
    bytes_scanned: int = 0
    indexes_rebuilt: int = 0
    elapsed_ms: int = 0


class PartitionLog:
    """See the module docstring. Create with `PartitionLog.open`."""

    def __init__(self, directory: Path, config: LogConfig, lock_fd: int) -> None:
        self.directory = directory
        self.config = config
        self._lock_fd = lock_fd
        self._lock = threading.RLock()
        self._segments: list[LogSegment] = []
        self._bases: list[int] = []
        self._log_start_offset = 0
        self._recovery_point = 0
        self._last_fsync_ms = 0
        self._closed = False
        self._sync_files = config.flush_policy != "never"
        # Roll jobs on the disk executor vs truncation/close on the loop (module docstring).
        self._durable_lock = threading.RLock()
        self._generation = 0
        self._epochs_version = 0  # bumped by every leader-epoch checkpoint write asked for (loop only)
        self.epoch_cache = LeaderEpochCache(log_end_offset=lambda: self.log_end_offset)
        self._aborted_file = AbortedTxnFile(directory / ABORTED_FILE, sync=self._sync_files)
        self.aborted_txns = AbortedTxnIndex()
        self.recovery_stats = RecoveryStats()
        # Sealed segments whose index entries are in memory, least recently looked up first;
        # at most limits.LOADED_SEALED_INDEXES_PER_LOG (plus any whose files are not written yet).
        self._loaded_indexes: OrderedDict[int, LogSegment] = OrderedDict()

    # --- opening and recovery -------------------------------------------------------

    @classmethod
    def open(cls, directory: str | Path, config: LogConfig, now_ms: int) -> PartitionLog:
        directory = Path(directory)
        executor = disk_executor.shared()
        if not executor.in_job(directory):
            # An earlier PartitionLog of this directory may still have roll or retention jobs
            # queued (a close does not wait for them); they must not race this recovery.
            executor.wait_idle(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise RuntimeError(f"{directory}: the partition log is open in another process") from None
        plog = cls(directory, config, lock_fd)
        began_ms = monotonic_ms()
        try:
            plog._load(now_ms)
        except BaseException:
            plog._close_files()
            raise
        stats = plog.recovery_stats
        stats.segments = len(plog._segments)
        stats.elapsed_ms = monotonic_ms() - began_ms
        if stats.verified or stats.indexes_rebuilt or stats.segments > 1:
            log.info("%s: recovered %d segment(s) in %d ms: %d trusted, %d verified, %d bytes scanned, "
                     "%d index(es) rebuilt", directory, stats.segments, stats.elapsed_ms, stats.trusted,
                     stats.verified, stats.bytes_scanned, stats.indexes_rebuilt)
        return plog

    def _load(self, now_ms: int) -> None:
        d = self.directory
        clean = (d / CLEAN_SHUTDOWN_FILE).exists()
        for tmp in d.glob("*.tmp"):
            tmp.unlink()
        bases = sorted(b for b in (parse_segment_name(p.name) for p in d.iterdir()) if b is not None)
        checkpoint = self._read_checkpoint()
        if checkpoint is None:
            clean = False
            log_start, recovery_point = (bases[0] if bases else 0), None
        else:
            log_start, recovery_point = checkpoint
        # Segments wholly below the log start: a deletion that a crash interrupted.
        while len(bases) > 1 and bases[1] <= log_start:
            LogSegment.open_for_recovery(d, bases.pop(0), self.config.index_interval_bytes).delete()
        # A brand-new log (a replica just assigned) has nothing to lose: its files are synced by a
        # disk job instead of the opening thread (a broker's loop opens new replicas inline),
        # unless the policy promises every append durable at once.
        empty = not bases and checkpoint is None
        fresh = empty and self.config.flush_policy != "always"
        start_verify = first_segment_to_verify(bases, recovery_point, clean)
        entries = self._open_segments(bases, start_verify, log_start, self._load_epoch_entries())
        self._cut_at_first_gap()
        if not self._segments:
            self._add_segment(LogSegment.create(d, log_start, self.config.index_interval_bytes))
        if self._segments[-1].index.size_bytes:
            self._segments[-1].first_append_ms = now_ms  # the age of a reopened segment counts from now
        self._log_start_offset = max(log_start, self._segments[0].base_offset)
        if self._log_start_offset > self.log_end_offset:
            # The log start ran ahead of the data (everything below it was deleted).
            self._reset_segments(self._log_start_offset)
        self._load_side_indexes(entries, sync=not fresh)
        self._segments[-1].load_entries()  # the active segment's index takes every append
        # Everything is verified (or trusted) now: seal what is sealed, sync, move the recovery point.
        for seg in self._segments[:-1]:
            seg.write_index_files(sync=self._sync_files)
            if seg.entries_loaded:  # verified or rebuilt: its files are written now, it may unload
                self._note_loaded(seg)
        if self._sync_files and not fresh:
            for seg in self._segments[start_verify:]:
                seg.fsync()
        self._recovery_point = self._segments[-1].base_offset
        self._write_checkpoint(sync=not fresh)
        if clean:
            (d / CLEAN_SHUTDOWN_FILE).unlink()
        if fresh:
            self._sync_new_files_soon()
        else:
            fsync_dir(d)  # the marker must be gone for good before anything is appended
            if empty:  # and a new log's own directory entry (found by the power-cut layer)
                fsync_dir(d.parent)
        self._last_fsync_ms = now_ms

    def _sync_new_files_soon(self) -> None:
        """A new log's files and directory entries, synced by a disk job (a crash before it
        leaves an empty or partial directory, which the next open treats as a new log)."""
        d = self.directory

        def sync() -> None:  # the new segment is empty: its data is the flush policy's business
            with self._durable_lock:  # no checkpoint is being replaced meanwhile
                for name in (CHECKPOINT_FILE, EPOCH_FILE):
                    try:
                        f = os.open(d / name, os.O_RDONLY)
                    except FileNotFoundError:
                        continue  # a truncation or close replaced it, synced
                    try:
                        os.fsync(f)
                    finally:
                        os.close(f)
            fsync_dir(d)
            fsync_dir(d.parent)

        what = f"sync the new log {d}"
        fut = disk_executor.shared().submit(d, sync, what)
        if fut is None:
            sync()
        else:
            fut.add_done_callback(disk_executor.log_failure(what))

    def _read_checkpoint(self) -> tuple[int, int] | None:
        """(log_start_offset, recovery_point), or None when missing or damaged (verify everything)."""
        try:
            value = read_json(self.directory / CHECKPOINT_FILE)
            if value is None:
                return None
            return int(value["log_start_offset"]), int(value["recovery_point"])
        except (CorruptCheckpointError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s: log checkpoint unreadable (%s); verifying every segment", self.directory, exc)
            return None

    def _open_segments(self, bases: list[int], start_verify: int, log_start: int, entries: ec.Entries) -> ec.Entries:
        """Open every segment: trust those before `start_verify`, verify the rest and cut at
        the first bad batch. Returns the epoch entries extended by the verified batches."""
        d, interval = self.directory, self.config.index_interval_bytes
        stats = self.recovery_stats

        def on_batch(h: BatchHeader) -> None:
            nonlocal entries
            # Batches wholly below the log start are invisible: their epochs stay forgotten.
            if h.leader_epoch >= 0 and h.next_offset > log_start and (not entries or h.leader_epoch > entries[-1].epoch):
                entries = ec.assign(entries, h.leader_epoch, h.base_offset)

        for i, base in enumerate(bases):
            last = i == len(bases) - 1
            if i < start_verify:
                seg = LogSegment.open_trusted(d, base, interval, lazy=True)
                self._add_segment(seg)
                stats.trusted += 1
                if seg.index_dirty:  # rebuilt by a framing scan
                    stats.indexes_rebuilt += 1
                    stats.bytes_scanned += seg.index.size_bytes
                if not (seg.index_dirty and last):
                    continue
                stats.trusted -= 1
                # The last segment does not match its index files although the shutdown
                # looked clean: verify it like any tail rather than trust it.
                log.warning("%s: index files do not match the log; verifying the tail", seg.log_path)
            else:
                seg = LogSegment.open_for_recovery(d, base, interval)
                self._add_segment(seg)
            result = seg.recover(on_batch)
            stats.verified += 1
            stats.bytes_scanned += result.valid_bytes
            following = None if last else bases[i + 1]
            if result.stop_reason or (following is not None and result.next_offset != following):
                reason = result.stop_reason or f"segment ends at {result.next_offset}, next begins at {following}"
                log.warning("%s: %s; cut the log at offset %d", seg.log_path, reason, result.next_offset)
                for later in reversed(bases[i + 1 :]):
                    LogSegment.open_for_recovery(d, later, interval).delete()
                break
        return entries

    def _load_side_indexes(self, entries: ec.Entries, *, sync: bool = True) -> None:
        """Epoch cache and aborted index, made consistent with the recovered log."""
        # An entry may start exactly at the LEO (a new leader assigns its epoch before writing);
        # entries beyond it describe data this replica lost.
        entries = ec.truncate_from_start(ec.truncate_from_end(entries, self.log_end_offset + 1), self._log_start_offset)
        self.epoch_cache = LeaderEpochCache(entries, log_end_offset=lambda: self.log_end_offset,
                                            store=self._store_epochs_soon)
        self._store_epochs(entries, sync=sync)
        self.aborted_txns = AbortedTxnIndex(
            self._aborted_file.load(), on_add=self._append_aborted, on_rewrite=self._aborted_file.rewrite
        )
        self.aborted_txns.truncate_to(self.log_end_offset)
        self.aborted_txns.truncate_from_start(self._log_start_offset)

    def _cut_at_first_gap(self) -> None:
        """Segments must be contiguous; after a gap (a lost segment file, or a trusted segment
        whose rebuilt index stops at a broken batch) nothing later is reachable consistently:
        cut there, like a corrupt tail, and let replication fetch the rest again."""
        segs = self._segments
        for i in range(len(segs) - 1):
            if segs[i].index.next_offset != segs[i + 1].base_offset:
                log.error(
                    "%s ends at offset %d but the next segment begins at %d; cutting the log there",
                    segs[i].log_path, segs[i].index.next_offset, segs[i + 1].base_offset,
                )
                for seg in reversed(segs[i + 1 :]):
                    seg.delete()
                del segs[i + 1 :]
                del self._bases[i + 1 :]
                segs[i].cut_to_index()
                return

    def _load_epoch_entries(self) -> ec.Entries:
        try:
            value = read_json(self.directory / EPOCH_FILE)
            return ec.entries_from_json(value) if value is not None else ()
        except (CorruptCheckpointError, ValueError, TypeError) as exc:
            # Rebuilt from the batches' leader epochs only for the verified segments; a
            # follower then truncates more than needed at worst, never less.
            log.warning("%s: leader-epoch checkpoint unreadable (%s); starting empty", self.directory, exc)
            return ()

    # --- properties -----------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].index.next_offset

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def size_bytes(self) -> int:
        return sum(s.index.size_bytes for s in self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        return list(self._bases)

    # --- append ---------------------------------------------------------------------

    def append(self, encoded: bytes, now_ms: int) -> BatchHeader:
        """Append whole encoded batches that start at the LEO; returns the last batch's header."""
        with self._lock:
            self._check_open()
            frames, last_header = self._validate(encoded, self.log_end_offset)
            active = self._segments[-1]
            rolled = should_roll(active.index.size_bytes, active.first_append_ms, len(encoded), now_ms, self.config)
            if rolled:
                self._roll(now_ms)
                active = self._segments[-1]
            # New epochs are stored before the data: a full or failing disk that refuses the
            # epoch file has then written no batch (an entry at the LEO alone is a valid state: a
            # new leader's `assign`), and the append fails whole, never half-applied.
            latest_epoch = self.epoch_cache.latest_epoch
            for base, _next, _ts, _size, epoch in frames:
                if epoch > latest_epoch:
                    self.epoch_cache.assign(epoch, base)
                    latest_epoch = epoch
            try:
                active.append(encoded, frames)  # cuts a failed write back to the old size
            except OSError:
                self._forget_epochs_past_end()
                raise
            if active.first_append_ms is None:
                active.first_append_ms = now_ms
            if self._sync_files and fsync_due(
                self.config.flush_policy, self._last_fsync_ms, now_ms, self.config.flush_interval_ms
            ):
                if self.config.flush_policy == "always":
                    active.fsync()
                    if rolled:  # the new segment's name too: without it a power cut loses the file
                        fsync_dir(self.directory)
                else:  # interval: the appending thread (a broker's event loop) does not wait for the disk
                    active.fsync_soon(background_sync.shared(), _cache_window())
                self._last_fsync_ms = now_ms
            return last_header

    def _forget_epochs_past_end(self) -> None:
        """After a failed write: drop epoch entries that start past the LEO (a follower's append
        spanning two new epochs). Best effort: the disk that failed may refuse this too, and
        `open()` drops such entries anyway."""
        entries = self.epoch_cache.entries
        if entries and entries[-1].start_offset > self.log_end_offset:
            try:
                self.epoch_cache.truncate_from_end(self.log_end_offset + 1)
            except OSError as exc:
                log.warning("%s: epoch entries past the log end stay until the next open: %s", self.directory, exc)

    def _validate(self, encoded: bytes, expected_offset: int) -> tuple[list[Frame], BatchHeader]:
        """Frames of the batches in `encoded` and the last header; raises before anything is written.

        The hot path: one struct unpack and one CRC per batch, no per-batch objects beyond a tuple.
        """
        total = len(encoded)
        if total == 0:
            raise InvalidAppendError("nothing to append")
        if total > limits.MAX_APPEND_BYTES:
            raise BatchTooLargeError(f"append of {total} bytes exceeds MAX_APPEND_BYTES {limits.MAX_APPEND_BYTES}")
        max_batch = self.config.max_batch_bytes
        view = memoryview(encoded)
        frames: list[Frame] = []
        pos = 0
        while pos < total:
            if total - pos < HEADER_BYTES:
                raise CorruptBatchError(f"truncated header at byte {pos}: {total - pos} bytes")
            fields = _HEADER.unpack_from(encoded, pos)
            if fields[3] == KAFKA_MAGIC:
                fields = kafka_fields(encoded, pos)
            base, length, crc, magic, _attrs, delta, epoch, _pid, _pepoch, _seq, _count, _base_ts, max_ts = fields
            size = LENGTH_FIELD_END + length
            if size > max_batch:
                raise BatchTooLargeError(f"batch at byte {pos} is {size} bytes; max_batch_bytes is {max_batch}")
            end = pos + size
            if size < HEADER_BYTES or end > total:
                raise CorruptBatchError(f"bad batch length {length} at byte {pos}")
            if magic == MAGIC:
                if _crc32c(view[pos + CRC_FIELD_END : end], _crc32c(view[pos : pos + LENGTH_FIELD_END])) != crc:
                    raise CorruptBatchError(f"CRC mismatch at byte {pos} (base offset {base})")
            elif magic != KAFKA_MAGIC:
                raise CorruptBatchError(f"unknown magic {magic} at byte {pos}")
            elif not crc_matches(view, pos, end, magic, crc):
                raise CorruptBatchError(f"CRC mismatch at byte {pos} (base offset {base})")
            if base != expected_offset:
                raise InvalidAppendError(f"batch at byte {pos} has base offset {base}, log end is {expected_offset}")
            if delta < 0:
                raise InvalidAppendError(f"batch at byte {pos} has last_offset_delta {delta}")
            expected_offset = base + delta + 1
            frames.append((base, expected_offset, max_ts, size, epoch))
            pos = end
        base, length, _crc, magic, attrs, delta, epoch, pid, pepoch, seq, count, base_ts, max_ts = fields
        last = BatchHeader(base, delta, epoch, pid, pepoch, seq, count, attrs, base_ts, max_ts, LENGTH_FIELD_END + length,
                           magic)
        return frames, last

    def _roll(self, now_ms: int) -> None:
        """Seal the active segment and start the next one. Inline only the new file's creation;
        the rest is `_seal_job` on the disk executor (inline when the executor is full)."""
        sealed = self._segments[-1]
        self._add_segment(LogSegment.create(self.directory, self.log_end_offset, self.config.index_interval_bytes))
        self._note_loaded(sealed)  # unloaded once its roll job wrote its index files and others are read
        job = self._seal_job(sealed, self._segments[-1].base_offset)
        fut = disk_executor.shared().submit(self.directory, job, f"roll of {sealed.log_path}")
        if fut is None:
            job()
        else:
            fut.add_done_callback(disk_executor.log_failure(f"roll of {sealed.log_path}"))
        self._last_fsync_ms = now_ms

    def _seal_job(self, sealed: LogSegment, new_base: int) -> Callable[[], None]:
        """Make `sealed` durable, then move the recovery point to `new_base` (disk thread)."""
        generation = self._generation
        sync = self._sync_files
        fd = os.dup(sealed.fileno())  # truncation may close the segment meanwhile
        size = sealed.index.size_bytes

        def seal() -> None:
            try:
                if sync:
                    os.fdatasync(fd)
                    if _cache_window() is not None:  # readers are mostly at the new segment's end
                        _drop_cached(fd, size)
            finally:
                os.close(fd)
            try:
                staged = sealed.stage_index_files(sync=sync)
            except Exception:
                if generation != self._generation:
                    return  # truncated under us: the index read raced the cut; nothing to do
                raise
            with self._durable_lock:
                if generation != self._generation:
                    sealed.discard_staged(staged)
                    return
                sealed.commit_staged(staged)
            if sync:
                fsync_dir(self.directory)
            with self._durable_lock:
                if generation == self._generation:
                    self._recovery_point = max(self._recovery_point, new_base)
                    self._write_checkpoint(sync=sync)

        return seal

    def _invalidate_seal_jobs(self) -> None:
        """Pending roll jobs must not touch files or the recovery point from now on (waits for
        one that is writing the checkpoint at this moment)."""
        with self._durable_lock:
            self._generation += 1

    def run_after_rolls(self, fn: Callable[[], None], what: str) -> bool:
        """`fn()` on the disk executor after every roll job submitted so far (so the recovery
        point covers them unless they were cancelled); False (nothing queued) when full."""
        fut = disk_executor.shared().submit(self.directory, fn, what)
        if fut is None:
            return False
        fut.add_done_callback(disk_executor.log_failure(what))
        return True

    def roll(self, now_ms: int) -> None:
        """Seal the active segment now (tests, admin); a no-op on an empty active segment."""
        with self._lock:
            self._check_open()
            if self._segments[-1].index.size_bytes > 0:
                self._roll(now_ms)

    # --- reads ----------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, max_offset: int | None = None,
             max_batches: int | None = None) -> ReadResult:
        """Whole batches from the one containing `offset`; see the contract in docs/design.md.
        `max_batches` also bounds their number (at least one is returned): reading is per batch."""
        with self._lock:
            self._check_open()
            self._check_offset(offset)
            limit = self.log_end_offset if max_offset is None else min(max_offset, self.log_end_offset)
            parts: list[bytes | memoryview] = []
            headers: list[BatchHeader] = []
            used = 0
            i = bisect_right(self._bases, offset) - 1
            first = True
            while i < len(self._segments):
                seg = self._segments[i]
                i += 1
                if seg.index.next_offset <= offset:
                    continue
                if first:
                    self._lookup_ready(seg)
                    pos, head = seg.locate(offset)
                    expected, first_size = head.base_offset, head.size_bytes
                else:
                    pos, expected, first_size = 0, seg.base_offset, 0
                if expected >= limit:
                    break
                budget = max_bytes - used
                n = min(seg.index.size_bytes - pos, max(budget, first_size if first else 0))
                if n < HEADER_BYTES:
                    break
                chunk = seg.pread(n, pos)
                took, expected = _take_batches(chunk, headers, expected, limit, must_take_one=first, where=(seg, pos),
                                               max_batches=max_batches)
                first = False
                if took == 0:
                    break
                parts.append(chunk if took == len(chunk) else memoryview(chunk)[:took])
                used += took
                if pos + took < seg.index.size_bytes or expected >= limit:
                    break
                if max_batches is not None and len(headers) >= max_batches:
                    break
            if not headers:
                return ReadResult(b"", offset, offset, ())
            data = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
            return ReadResult(bytes(data), headers[0].base_offset, headers[-1].next_offset, tuple(headers))

    def iter_headers(self, start_offset: int, end_offset: int | None = None) -> Iterator[BatchHeader]:
        """CRC-checked headers of the batches from the one containing `start_offset` up to `end_offset`."""
        with self._lock:
            self._check_open()
            self._check_offset(start_offset)
            segments = list(self._segments)
            bases = list(self._bases)
            end = self.log_end_offset if end_offset is None else min(end_offset, self.log_end_offset)
        return self._iter_headers(segments, bases, start_offset, end)

    @staticmethod
    def _iter_headers(segments: list[LogSegment], bases: list[int], start: int, end: int) -> Iterator[BatchHeader]:
        i = bisect_right(bases, start) - 1
        for seg in segments[max(i, 0) :]:
            if seg.index.next_offset <= start:
                continue
            if seg.base_offset >= end:
                return
            if start > seg.base_offset:
                point = seg.index.lookup(start)
                pos, expected = point.position, point.offset
            else:
                pos, expected = 0, seg.base_offset
            for h, _ in seg.iter_batches(pos, expected, verify_crc=True):
                if h.base_offset >= end:
                    return
                if h.next_offset > start:
                    yield h

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """The first offset (>= log start) of the first batch whose max timestamp >= `timestamp_ms`."""
        with self._lock:
            self._check_open()
            start = self._log_start_offset
            for seg in self._segments:
                idx = seg.index
                if idx.next_offset <= start or idx.max_timestamp_ms is None or idx.max_timestamp_ms < timestamp_ms:
                    continue
                self._lookup_ready(seg)
                idx = seg.index
                point = idx.time_lookup(timestamp_ms)
                if point.offset < start:
                    point = idx.lookup(start)
                for h, _ in seg.iter_batches(point.position, point.offset, verify_crc=True):
                    if h.next_offset > start and h.max_timestamp_ms >= timestamp_ms:
                        return max(h.base_offset, start)
                # Not found: the segment's newest timestamps are all below the log start.
            return None

    # --- truncation and retention ----------------------------------------------------

    def truncate_to(self, offset: int) -> None:
        """Drop every batch with last_offset >= `offset` (replica divergence); see the module docstring."""
        with self._lock:
            self._check_open()
            if offset >= self.log_end_offset:
                # Nothing to cut, but an epoch may start at the log end with no data (this replica
                # led it without appending); a follower must forget it, as Kafka's truncateTo does.
                self.epoch_cache.truncate_from_end(self.log_end_offset)
                self._store_epochs(self.epoch_cache.entries)
                return
            if offset < self._log_start_offset:
                raise OffsetOutOfRange(f"truncate_to({offset}) below log start {self._log_start_offset}")
            i = bisect_right(self._bases, offset) - 1
            self._invalidate_seal_jobs()
            # A lower recovery point is always safe, so persist it before touching segments.
            self._recovery_point = min(self._recovery_point, self._bases[i])
            self._write_checkpoint(sync=True)
            dropped = self._segments[i + 1 :]
            for seg in reversed(dropped):
                seg.delete()
            if dropped:
                fsync_dir(self.directory)  # whole segments cut stay gone after a power loss
            del self._segments[i + 1 :]
            del self._bases[i + 1 :]
            new_end = self._segments[i].truncate_to_offset(offset)
            if new_end < self._log_start_offset:
                self._reset_segments(self._log_start_offset)
            self.epoch_cache.truncate_from_end(self.log_end_offset)
            self._store_epochs(self.epoch_cache.entries)  # a cut is persisted before it returns
            self.aborted_txns.truncate_to(self.log_end_offset)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Forget every batch and continue at `offset` (a follower far behind or ahead of the leader)."""
        with self._lock:
            self._check_open()
            self._log_start_offset = offset
            self._reset_segments(offset)
            self.epoch_cache.clear()
            self._store_epochs(self.epoch_cache.entries)
            self.aborted_txns.clear()

    def advance_log_start(self, offset: int) -> None:
        """Delete-records: offsets below `offset` become unreadable; whole segments below it go."""
        with self._lock:
            self._check_open()
            if offset <= self._log_start_offset:
                return
            if offset > self.log_end_offset:
                raise OffsetOutOfRange(f"advance_log_start({offset}) beyond log end {self.log_end_offset}")
            self._log_start_offset = offset
            self._write_checkpoint(sync=True)
            self.epoch_cache.truncate_from_start(offset)
            self.aborted_txns.truncate_from_start(offset)
            self._delete_leading(sum(1 for s in self._segments[:-1] if s.index.next_offset <= offset))

    def apply_retention(self, now_ms: int) -> int:
        """Delete old segments by bytes and time (never the active one); returns the log start."""
        with self._lock:
            self._check_open()
            sealed = [
                SegmentSummary(s.base_offset, s.index.next_offset, s.index.size_bytes, s.index.max_timestamp_ms)
                for s in self._segments[:-1]
            ]
            count = retention_count(sealed, self._segments[-1].index.size_bytes, self._log_start_offset, now_ms, self.config)
            if count:
                new_start = max(self._log_start_offset, self._segments[count].base_offset)
                if new_start != self._log_start_offset:
                    self._log_start_offset = new_start
                    self.epoch_cache.truncate_from_start(new_start)
                    self.aborted_txns.truncate_from_start(new_start)
                self._delete_soon(self._segments[:count])
                del self._segments[:count]
                del self._bases[:count]
            return self._log_start_offset

    def _delete_soon(self, dead: list[LogSegment]) -> None:
        """Persist the log start, then delete `dead` (already cut from the segment list, so no
        read reaches them), on the disk executor. A crash before the checkpoint leaves the
        files and the old log start; after it, `open` deletes what lies below the log start."""
        def delete() -> None:
            with self._durable_lock:
                if not self._closed:  # else close() wrote the checkpoint, with the newest log start
                    self._write_checkpoint(sync=True)  # before any file goes: log start never goes back
            for seg in dead:
                seg.delete()

        what = f"retention of {len(dead)} segment(s) of {self.directory}"
        fut = disk_executor.shared().submit(self.directory, delete, what)
        if fut is None:
            delete()
        else:
            fut.add_done_callback(disk_executor.log_failure(what))

    def _delete_leading(self, count: int) -> None:
        for seg in self._segments[:count]:
            seg.delete()
        del self._segments[:count]
        del self._bases[:count]

    def _reset_segments(self, base_offset: int) -> None:
        self._invalidate_seal_jobs()
        self._recovery_point = min(self._recovery_point, base_offset)
        self._write_checkpoint(sync=True)
        for seg in reversed(self._segments):
            seg.delete()
        self._segments.clear()
        self._bases.clear()
        self._add_segment(LogSegment.create(self.directory, base_offset, self.config.index_interval_bytes))
        self._recovery_point = base_offset
        self._write_checkpoint(sync=True)

    # --- flush and close ---------------------------------------------------------------

    def flush_soon(self, then: Callable[[bool], None]) -> bool:
        """`flush()` on the background-sync thread, which then calls `then(ok)`; False (nothing
        queued, `then` never called) when its queue is full. Earlier segments were synced when
        they rolled (when the log syncs files at all)."""
        with self._lock:
            self._check_open()
            fds = [self._segments[-1].fileno()]
            aborted = self._aborted_file.fileno()
            if aborted is not None:
                fds.append(aborted)
            return background_sync.shared().submit_then(fds, str(self.directory), then)

    def sync_aborted_index(self) -> None:
        """fdatasync the aborted index from any thread (a no-op once closed)."""
        with self._lock:
            current = None if self._closed else self._aborted_file.fileno()
            if current is None:
                return
            fd = os.dup(current)  # close may close the file meanwhile
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def flush(self, now_ms: int | None = None) -> None:
        """fsync the active segment and the aborted index, whatever the policy."""
        with self._lock:
            self._check_open()
            self._segments[-1].fsync()
            self._aborted_file.fsync()
            if now_ms is not None:
                self._last_fsync_ms = now_ms

    def close(self) -> None:
        """Flush everything, write index files and checkpoints, leave the clean-shutdown marker."""
        with self._lock:
            if self._closed:
                return
            self._invalidate_seal_jobs()
            self._store_epochs(self.epoch_cache.entries)  # a pending write of them is skipped from now on
            for seg in self._segments:
                seg.write_index_files(sync=True)
            self._segments[-1].fsync()
            self._aborted_file.fsync()
            self._recovery_point = self.log_end_offset
            self._write_checkpoint(sync=True)
            marker = os.open(self.directory / CLEAN_SHUTDOWN_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(marker)
            fsync_dir(self.directory)
            self._close_files()

    def _close_files(self) -> None:
        self._closed = True
        for seg in self._segments:
            seg.close()
        self._aborted_file.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> PartitionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ----------------------------------------------------------------------

    def _lookup_ready(self, seg: LogSegment) -> None:
        """The index entries of `seg` in memory for a lookup; the least recently looked-up
        sealed segments beyond limits.LOADED_SEALED_INDEXES_PER_LOG keep only their summary
        (reading a 10 GB partition from its start must not pull 10 GB worth of index in)."""
        if seg.load_entries() or seg.base_offset in self._loaded_indexes:
            self._note_loaded(seg)

    def _note_loaded(self, seg: LogSegment) -> None:
        lru = self._loaded_indexes
        lru[seg.base_offset] = seg
        lru.move_to_end(seg.base_offset)
        excess = len(lru) - limits.LOADED_SEALED_INDEXES_PER_LOG
        if excess <= 0:
            return
        active = self._segments[-1] if self._segments else None
        for base in list(lru)[:excess]:
            old = lru[base]
            if old is active:
                del lru[base]  # the active segment keeps its entries anyway
            elif old.fileno() < 0 or old.unload_entries():
                del lru[base]  # deleted, or down to its summary
            # else: its index files are not written yet (a pending roll job); tried again later

    def _add_segment(self, seg: LogSegment) -> None:
        if self._bases and seg.base_offset <= self._bases[-1]:
            raise AssertionError(f"segment {seg.base_offset} after {self._bases[-1]}")
        self._segments.append(seg)
        self._bases.append(seg.base_offset)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self.directory}: log is closed")

    def _check_offset(self, offset: int) -> None:
        if not self._log_start_offset <= offset <= self.log_end_offset:
            raise OffsetOutOfRange(
                f"offset {offset} outside [{self._log_start_offset}, {self.log_end_offset}] of {self.directory}"
            )

    def _write_checkpoint(self, *, sync: bool) -> None:
        with self._durable_lock:  # one writer at a time (the loop, a roll or retention job), current values
            write_json(
                self.directory / CHECKPOINT_FILE,
                {"version": 1, "log_start_offset": self._log_start_offset, "recovery_point": self._recovery_point},
                sync=sync,
            )

    def _store_epochs(self, entries: ec.Entries, *, sync: bool = True) -> None:
        """Write the leader-epoch checkpoint now (open, truncation, close); pending writes of
        older entries are skipped."""
        self._epochs_version += 1
        with self._durable_lock:
            write_json(self.directory / EPOCH_FILE, ec.entries_to_json(entries), sync=sync)

    def _store_epochs_soon(self, entries: ec.Entries) -> None:
        """The cache's store for a new epoch (becoming leader, the first batch of an epoch) and
        retention: written by a job on the disk executor, skipped if a later write was asked
        for. Memory may run ahead of the file until then, which a crash makes harmless: recovery
        verifies every batch at or after the recovery point and rebuilds their epochs, and the
        recovery point passes a batch only through a roll job, which runs after this job (same
        key); entries past the recovered log end are dropped on open."""
        self._epochs_version += 1
        version = self._epochs_version

        def write() -> None:
            with self._durable_lock:
                if version == self._epochs_version:
                    write_json(self.directory / EPOCH_FILE, ec.entries_to_json(entries), sync=True)

        what = f"leader-epoch checkpoint of {self.directory}"
        fut = disk_executor.shared().submit(self.directory, write, what)
        if fut is None:
            write()
        else:
            fut.add_done_callback(disk_executor.log_failure(what))

    def _append_aborted(self, txn: AbortedTxn) -> None:
        self._aborted_file.append(txn)
        if self.config.flush_policy == "always":
            self._aborted_file.fsync()


def _drop_cached(fd: int, length: int) -> None:
    """A synced sealed segment leaves the page cache (advice only: a refusal costs the bound, never data)."""
    try:
        os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        log.debug("posix_fadvise(DONTNEED) refused: %s", exc)


def _take_batches(
    chunk: bytes,
    headers: list[BatchHeader],
    expected: int,
    limit: int,
    *,
    must_take_one: bool,
    where: tuple[LogSegment, int],
    max_batches: int | None = None,
) -> tuple[int, int]:
    """Walk whole batches at the start of `chunk` (CRC-checked) below `limit`; returns (bytes taken, next offset).

    Per batch: one struct unpack, one CRC, one header object (reads of small batches are
    dominated by exactly this loop).
    """
    at = 0
    n = len(chunk)
    view = memoryview(chunk)
    unpack_from = _HEADER.unpack_from
    most = None if max_batches is None else max(max_batches, 1)  # counts `headers` across calls; >= 1
    try:
        while n - at >= HEADER_BYTES:
            if most is not None and len(headers) >= most:
                break
            fields = unpack_from(chunk, at)
            if fields[3] == KAFKA_MAGIC:
                fields = kafka_fields(chunk, at)
            base, length, crc, magic, attrs, delta, epoch, pid, pepoch, seq, count, base_ts, max_ts = fields
            size = LENGTH_FIELD_END + length
            if size < HEADER_BYTES or (magic != MAGIC and magic != KAFKA_MAGIC):
                raise CorruptBatchError(f"bad batch length {length} or magic {magic}")
            if at + size > n:
                if at == 0 and must_take_one:
                    raise CorruptBatchError(f"batch of {size} bytes runs past the segment end")
                break
            if base != expected:
                raise CorruptBatchError(f"base offset {base}, expected {expected}")
            if base >= limit:
                break
            if magic == MAGIC:
                if _crc32c(view[at + CRC_FIELD_END : at + size], _crc32c(view[at : at + LENGTH_FIELD_END])) != crc:
                    raise CorruptBatchError(f"CRC mismatch (base offset {base})")
            elif not crc_matches(view, at, at + size, magic, crc):
                raise CorruptBatchError(f"CRC mismatch (base offset {base})")
            headers.append(BatchHeader(base, delta, epoch, pid, pepoch, seq, count, attrs, base_ts, max_ts, size, magic))
            expected = base + delta + 1
            at += size
    except CorruptBatchError as exc:
        seg, pos = where
        raise CorruptLogError(f"{seg.log_path} position {pos + at}: {exc}") from exc
    finally:
        view.release()
    return at, expected
