"""The broker's view of one partition replica's storage: one narrow interface, two backends.

`ReplicaStore` is everything the replica manager, the fetch path and replication need from
storage. `PartitionStoreAdapter` maps it onto `semel.storage.partition.PartitionStore` (the
real log with producer state, aborted index and leader-epoch cache). `FileReplicaStore` is a
small single-file log used only while that module is not available in the tree, so the broker
can run end to end on its own; it keeps the same on-disk batch format (storage/batch.py) and
rebuilds its in-memory index and epoch cache by scanning the file on open (a torn tail from a
crash is cut at the last whole, CRC-valid batch).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from semel.storage.batch import (
    BatchHeader,
    CorruptBatchError,
    decode_header,
    with_offsets,
)
from semel.v1 import common_pb2 as pb

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class LeaderAppendOutcome:
    error_code: pb.ErrorCode
    message: str = ""
    base_offset: int = -1
    last_offset: int = -1
    duplicate: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class AbortedRange:
    producer_id: int
    first_offset: int
    last_offset: int


class ReplicaStore(Protocol):
    @property
    def log_start_offset(self) -> int: ...
    @property
    def log_end_offset(self) -> int: ...
    def first_unstable_offset(self) -> int | None: ...
    def assign_epoch(self, leader_epoch: int, start_offset: int) -> None: ...
    def append_as_leader(self, encoded: bytes, leader_epoch: int, now_ms: int) -> LeaderAppendOutcome: ...
    def append_as_follower(self, raw: bytes, now_ms: int) -> None: ...
    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
                      leader_epoch: int, now_ms: int) -> LeaderAppendOutcome: ...
    def truncate_to(self, offset: int) -> None: ...
    def read(self, offset: int, max_bytes: int, max_offset: int | None, max_batches: int | None = None) -> bytes:
        """Whole batches from the one holding `offset`: at most `max_bytes` and `max_batches` (but at
        least one), none at or past `max_offset`."""
        ...
    def end_offset_for_epoch(self, leader_epoch: int) -> tuple[int, int]: ...
    def last_batch_epoch(self) -> int: ...
    def offset_for_timestamp(self, timestamp_ms: int) -> int | None: ...
    def aborted_in_range(self, start: int, end: int) -> list[AbortedRange]: ...
    def apply_retention(self, now_ms: int) -> int: ...
    def expire_producers(self, now_ms: int) -> None: ...
    def reset_to(self, offset: int) -> None: ...
    def close(self) -> None: ...


def iter_batches(data: bytes, verify_crc: bool = False) -> Iterator[tuple[BatchHeader, int]]:
    """(header, position) of each whole batch in `data`."""
    pos = 0
    while pos < len(data):
        h = decode_header(data, pos, verify_crc=verify_crc)
        yield h, pos
        pos += h.size_bytes


class EpochCache:
    """Leader epoch -> start offset (KIP-101), in memory; rebuilt from batch headers."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, int]] = []  # (epoch, start_offset), both increasing

    def assign(self, epoch: int, start_offset: int) -> None:
        if self.entries and epoch <= self.entries[-1][0]:
            return
        if self.entries and start_offset < self.entries[-1][1]:
            start_offset = self.entries[-1][1]
        self.entries.append((epoch, start_offset))

    def latest_epoch(self) -> int:
        return self.entries[-1][0] if self.entries else -1

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(largest known epoch <= `epoch`, the offset where it ended); (-1, -1) when empty or
        `epoch` is above every known one (semel.storage.epoch_cache rules)."""
        idx = bisect.bisect_right([e for e, _ in self.entries], epoch) - 1
        if epoch < 0 or not self.entries or epoch > self.entries[-1][0]:
            return (-1, -1)
        if idx < 0:  # below every known epoch: it ended where our first epoch starts (Kafka)
            return (epoch, self.entries[0][1])
        if idx == len(self.entries) - 1:
            return (self.entries[idx][0], log_end_offset)
        return (self.entries[idx][0], self.entries[idx + 1][1])


class FileReplicaStore:
    """Stopgap log: one append-only file + in-memory index. See the module docstring."""

    FILE = "log.bin"

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        self.directory = directory
        self.path = directory / self.FILE
        self.fsync = fsync
        self._positions: list[int] = []  # file position of each batch
        self._bases: list[int] = []  # base offset of each batch
        self._headers: list[BatchHeader] = []
        self.epochs = EpochCache()
        self._start = 0
        self._end = 0
        self._recover()
        self._f = open(self.path, "ab")

    def _recover(self) -> None:
        data = self.path.read_bytes() if self.path.exists() else b""
        pos = 0
        while pos < len(data):
            try:
                h = decode_header(data, pos, verify_crc=True)
            except CorruptBatchError:
                log.warning("%s: cutting torn tail at %d of %d bytes", self.path, pos, len(data))
                break
            self._add(h, pos)
            pos += h.size_bytes
        if pos < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(pos)
        self._size = pos

    def _add(self, h: BatchHeader, pos: int) -> None:
        if not self._headers:
            self._start = h.base_offset
        self._positions.append(pos)
        self._bases.append(h.base_offset)
        self._headers.append(h)
        self.epochs.assign(h.leader_epoch, h.base_offset)
        self._end = h.next_offset

    @property
    def log_start_offset(self) -> int:
        return self._start

    @property
    def log_end_offset(self) -> int:
        return self._end

    def first_unstable_offset(self) -> int | None:
        return None  # transactions come with a later issue; the real store tracks open ones

    def assign_epoch(self, leader_epoch: int, start_offset: int) -> None:
        self.epochs.assign(leader_epoch, start_offset)

    def _write(self, raw: bytes) -> None:
        headers = []
        pos = 0
        expected = self._end
        while pos < len(raw):
            h = decode_header(raw, pos, verify_crc=True)
            if h.base_offset != expected:
                raise ValueError(f"batch at offset {h.base_offset}, expected {expected}")
            headers.append((h, self._size + pos))
            expected = h.next_offset
            pos += h.size_bytes
        self._f.write(raw)
        self._f.flush()
        if self.fsync:
            os.fdatasync(self._f.fileno())
        for h, p in headers:
            self._add(h, p)
        self._size += len(raw)

    def append_as_leader(self, encoded: bytes, leader_epoch: int, now_ms: int) -> LeaderAppendOutcome:
        base = self._end
        stamped = with_offsets(encoded, base, leader_epoch)
        self._write(stamped)
        h = self._headers[-1]
        return LeaderAppendOutcome(pb.NONE, "", h.base_offset, h.last_offset, False)

    def append_as_follower(self, raw: bytes, now_ms: int) -> None:
        self._write(raw)

    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
                      leader_epoch: int, now_ms: int) -> LeaderAppendOutcome:
        return LeaderAppendOutcome(pb.UNKNOWN_SERVER_ERROR, "the stopgap file store has no transactions")

    def truncate_to(self, offset: int) -> None:
        if offset >= self._end:
            self.epochs.entries = [(e, s) for e, s in self.epochs.entries if s < offset or s == self._start]
            return
        idx = bisect.bisect_left(self._bases, offset)
        # Drop every batch whose last offset >= offset; keep whole batches only.
        while idx > 0 and self._headers[idx - 1].last_offset >= offset:
            idx -= 1
        pos = self._positions[idx] if idx < len(self._positions) else self._size
        self._f.close()
        with open(self.path, "r+b") as f:
            f.truncate(pos)
        self._f = open(self.path, "ab")
        del self._positions[idx:], self._bases[idx:], self._headers[idx:]
        self._size = pos
        self._end = self._headers[-1].next_offset if self._headers else self._start
        self.epochs.entries = [(e, s) for e, s in self.epochs.entries if s < self._end or not self._headers]
        if not self._headers:
            self.epochs.entries = []

    def read(self, offset: int, max_bytes: int, max_offset: int | None, max_batches: int | None = None) -> bytes:
        if offset < self._start or offset > self._end:
            raise IndexError(offset)
        idx = bisect.bisect_right(self._bases, offset) - 1
        if idx < 0:
            idx = 0
        if idx < len(self._headers) and self._headers[idx].last_offset < offset:
            idx += 1
        first = idx
        total = 0
        last = idx
        while last < len(self._headers):
            h = self._headers[last]
            if max_offset is not None and h.next_offset > max_offset:
                break
            if last > first and total + h.size_bytes > max_bytes:
                break
            if last > first and max_batches is not None and last - first >= max_batches:
                break
            total += h.size_bytes
            last += 1
        if last == first:
            return b""
        start = self._positions[first]
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(total)

    def end_offset_for_epoch(self, leader_epoch: int) -> tuple[int, int]:
        return self.epochs.end_offset_for(leader_epoch, self._end)

    def last_batch_epoch(self) -> int:
        return self._headers[-1].leader_epoch if self._headers else -1

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        for h in self._headers:
            if h.max_timestamp_ms >= timestamp_ms:
                return h.base_offset
        return None

    def aborted_in_range(self, start: int, end: int) -> list[AbortedRange]:
        return []

    def apply_retention(self, now_ms: int) -> int:
        return self._start  # the stopgap log keeps everything

    def expire_producers(self, now_ms: int) -> None:
        pass

    def reset_to(self, offset: int) -> None:
        self.truncate_to(self._start)
        self._f.close()
        with open(self.path, "r+b") as f:
            f.truncate(0)
        self._f = open(self.path, "ab")
        self._positions, self._bases, self._headers = [], [], []
        self.epochs.entries = []
        self._size = 0
        self._start = self._end = offset

    def close(self) -> None:
        self._f.close()


class PartitionStoreAdapter:
    """`ReplicaStore` over `semel.storage.partition.PartitionStore` (the real storage)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.log = store.log

    @property
    def log_start_offset(self) -> int:
        return int(self.log.log_start_offset)

    @property
    def log_end_offset(self) -> int:
        return int(self.log.log_end_offset)

    def first_unstable_offset(self) -> int | None:
        return self.store.first_unstable_offset()

    def assign_epoch(self, leader_epoch: int, start_offset: int) -> None:
        cache = self.log.epoch_cache
        if cache.latest_epoch < leader_epoch:
            cache.assign(leader_epoch, start_offset)

    def append_as_leader(self, encoded: bytes, leader_epoch: int, now_ms: int) -> LeaderAppendOutcome:
        (result,) = self.store.append_as_leader([encoded], leader_epoch, now_ms)
        return LeaderAppendOutcome(result.error, result.message, result.first_offset, result.last_offset,
                                   result.duplicate)

    def append_as_follower(self, raw: bytes, now_ms: int) -> None:
        self.store.append_as_follower(raw, now_ms)

    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
                      leader_epoch: int, now_ms: int) -> LeaderAppendOutcome:
        r = self.store.append_marker(producer_id, producer_epoch, commit=commit, coordinator_epoch=coordinator_epoch,
                                     leader_epoch=leader_epoch, now_ms=now_ms)
        return LeaderAppendOutcome(r.error, r.message, r.offset, r.offset, False)

    def truncate_to(self, offset: int) -> None:
        self.store.truncate_to(offset)

    def read(self, offset: int, max_bytes: int, max_offset: int | None, max_batches: int | None = None) -> bytes:
        return bytes(self.log.read(offset, max_bytes, max_offset, max_batches).data)

    def end_offset_for_epoch(self, leader_epoch: int) -> tuple[int, int]:
        epoch, end = self.log.epoch_cache.end_offset_for(leader_epoch)
        return (int(epoch), int(end))

    def last_batch_epoch(self) -> int:
        """The epoch of the last stored batch (not the latest cache entry, which may be an epoch
        this replica led without appending: the new leader may never have heard of it)."""
        if self.log_end_offset <= self.log_start_offset:
            return -1
        return int(self.log.epoch_cache.epoch_for_offset(self.log_end_offset - 1))

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        return self.log.offset_for_timestamp(timestamp_ms)

    def aborted_in_range(self, start: int, end: int) -> list[AbortedRange]:
        return [AbortedRange(a.producer_id, a.first_offset, a.last_offset)
                for a in self.log.aborted_txns.in_range(start, end)]

    def apply_retention(self, now_ms: int) -> int:
        return int(self.store.apply_retention(now_ms))

    def expire_producers(self, now_ms: int) -> None:
        self.store.expire_producers(now_ms)

    def reset_to(self, offset: int) -> None:
        """A follower entirely behind the leader's log start: drop everything, continue at `offset`."""
        self.store.truncate_fully_and_start_at(offset)  # the producer state starts empty; every snapshot goes

    def close(self) -> None:
        self.store.close()


def real_storage_available() -> bool:
    if os.environ.get("SEMEL_BROKER_STORE", "") == "file":
        return False
    try:
        import semel.storage.kv  # noqa: F401
        import semel.storage.partition  # noqa: F401
    except ImportError:
        return False
    return True


def open_replica_store(directory: Path, topic: Any, partition: int, *, fsync: bool = False,
                       kv: Any = None, now_ms: int = 0) -> ReplicaStore:
    """The storage of one hosted replica: PartitionStore when available (kv = the broker's
    KvStore), else the stopgap file log."""
    if kv is None:
        return FileReplicaStore(directory, fsync=fsync)
    from semel.storage.kv import partition_key
    from semel.storage.log_policy import LogConfig
    from semel.storage.partition import PartitionStore

    c = topic.config
    config = LogConfig(segment_bytes=c.segment_bytes, segment_ms=c.segment_ms, retention_bytes=c.retention_bytes,
                       retention_ms=c.retention_ms)
    if fsync:  # else the storage default (docs/storage.md)
        config = dataclasses.replace(config, flush_policy="always")
    # The topic id keeps a re-created topic from inheriting a deleted one's producer snapshots.
    key = partition_key(f"{topic.name}.{topic.topic_id[:12]}", partition)
    return PartitionStoreAdapter(PartitionStore.open(directory, config, kv, key, now_ms))
