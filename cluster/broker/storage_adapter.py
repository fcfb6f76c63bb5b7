"""The broker's view of one partition replica's storage: one narrow interface over the real engine.

`ReplicaStore` is everything the replica manager, the fetch path and replication need from
storage. `PartitionStoreAdapter` maps it onto `semel.storage.partition.PartitionStore` (the log
with producer state, aborted-transaction index and leader-epoch cache); `open_replica_store`
opens one. A read returns the batch headers the log decoded (and CRC-checked) while reading, so
the fetch path never decodes a header a second time.
"""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path
from typing import Protocol

from semel.cluster.broker.log_dir_health import LogDirHealth
from semel.cluster.metadata import state as md
from semel.storage.kv import KvStore, partition_key
from semel.storage.log import ReadResult
from semel.storage.log_policy import LogConfig
from semel.storage.partition import AppendResult, MarkerResult, PartitionStore


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
    def append_as_leader(self, encoded: bytes, leader_epoch: int, now_ms: int) -> AppendResult: ...
    def append_as_follower(self, raw: bytes, now_ms: int) -> None: ...
    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
                      leader_epoch: int, now_ms: int) -> MarkerResult: ...
    def truncate_to(self, offset: int) -> None: ...
    def read(self, offset: int, max_bytes: int, max_offset: int | None, max_batches: int | None = None) -> ReadResult:
        """Whole batches from the one holding `offset`: at most `max_bytes` and `max_batches` (but at
        least one), none at or past `max_offset`; with their headers, in order (`ReadResult.headers`)."""
        ...
    def end_offset_for_epoch(self, leader_epoch: int) -> tuple[int, int]: ...
    def last_batch_epoch(self) -> int: ...
    def offset_for_timestamp(self, timestamp_ms: int) -> int | None: ...
    def aborted_in_range(self, start: int, end: int) -> list[AbortedRange]: ...
    def apply_retention(self, now_ms: int) -> int: ...
    def expire_producers(self, now_ms: int, monotonic_ms: int) -> None: ...
    def tracked_producers(self) -> int: ...
    def set_log_config(self, *, segment_bytes: int, segment_ms: int, retention_bytes: int, retention_ms: int) -> None: ...
    def reset_to(self, offset: int) -> None: ...
    def close(self) -> None: ...


class PartitionStoreAdapter:
    """`ReplicaStore` over `semel.storage.partition.PartitionStore` (the real storage)."""

    def __init__(self, store: PartitionStore, health: LogDirHealth | None = None) -> None:
        self.store = store
        self.log = store.log
        self.health = health if health is not None else LogDirHealth(store.log.directory.parent)

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

    def append_as_leader(self, encoded: bytes, leader_epoch: int, now_ms: int) -> AppendResult:
        (result,) = self.health.guard(lambda: self.store.append_as_leader([encoded], leader_epoch, now_ms))
        return result

    def append_as_follower(self, raw: bytes, now_ms: int) -> None:
        self.health.guard(lambda: self.store.append_as_follower(raw, now_ms))

    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
                      leader_epoch: int, now_ms: int) -> MarkerResult:
        return self.health.guard(lambda: self.store.append_marker(
            producer_id, producer_epoch, commit=commit, coordinator_epoch=coordinator_epoch,
            leader_epoch=leader_epoch, now_ms=now_ms))

    def truncate_to(self, offset: int) -> None:
        self.store.truncate_to(offset)

    def read(self, offset: int, max_bytes: int, max_offset: int | None, max_batches: int | None = None) -> ReadResult:
        try:
            return self.log.read(offset, max_bytes, max_offset, max_batches)
        except OSError as exc:
            if exc.errno == errno.EIO:  # the disk failed under a read: the directory goes offline too
                self.health.on_error(exc)
            raise

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

    def expire_producers(self, now_ms: int, monotonic_ms: int) -> None:
        self.store.expire_producers(now_ms, monotonic_ms)

    def tracked_producers(self) -> int:
        """Producer ids whose state this replica keeps (bounded by `limits.MAX_PRODUCERS_PER_PARTITION`)."""
        return len(self.store.producer_state)

    def set_log_config(self, *, segment_bytes: int, segment_ms: int, retention_bytes: int, retention_ms: int) -> None:
        """A topic config altered live: the next roll and retention check follow it."""
        config = dataclasses.replace(self.store.config, segment_bytes=segment_bytes, segment_ms=segment_ms,
                                     retention_bytes=retention_bytes, retention_ms=retention_ms)
        self.store.config = config
        self.log.config = config

    def reset_to(self, offset: int) -> None:
        """A follower entirely behind the leader's log start: drop everything, continue at `offset`."""
        self.store.truncate_fully_and_start_at(offset)  # the producer state starts empty; every snapshot goes

    def close(self) -> None:
        self.store.close()


def open_replica_store(directory: Path, topic: md.Topic, partition: int, *, kv: KvStore, fsync: bool = False,
                       now_ms: int = 0, health: LogDirHealth | None = None) -> ReplicaStore:
    """The storage of one hosted replica (`kv`: the broker's RocksDB, which holds producer snapshots)."""
    c = topic.config
    config = LogConfig(segment_bytes=c.segment_bytes, segment_ms=c.segment_ms, retention_bytes=c.retention_bytes,
                       retention_ms=c.retention_ms)
    if fsync:  # else the storage default (docs/storage.md)
        config = dataclasses.replace(config, flush_policy="always")
    # The topic id keeps a re-created topic from inheriting a deleted one's producer snapshots.
    key = partition_key(f"{topic.name}.{topic.topic_id[:12]}", partition)
    return PartitionStoreAdapter(PartitionStore.open(directory, config, kv, key, now_ms), health)
