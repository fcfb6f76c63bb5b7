"""When to roll a segment, which segments retention deletes, when to fsync: pure decisions.

Each function takes the facts (sizes, timestamps, `now_ms`, the config) and returns a
decision; `PartitionLog` acts on it. Kafka's rules, restated:

* roll before an append when the active segment is non-empty and the append would make it
  exceed `segment_bytes`, or its first append (broker clock; after a restart: the open) is
  `segment_ms` or more in the past;
* retention deletes a prefix of the sealed segments (never the active one): a segment whose
  largest timestamp is more than `retention_ms` old, or while the log without it still holds
  at least `retention_bytes`; a segment wholly below the log start offset is deleted too;
* fsync `always` after every append, `interval` when `flush_interval_ms` passed since the
  last flush, `never` only when the caller asks (`flush()`, segment roll is not enough:
  `never` means no fsync on the append path at all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from semel import limits

FlushPolicy = Literal["never", "interval", "always"]
FLUSH_POLICIES: tuple[str, ...] = ("never", "interval", "always")


@dataclasses.dataclass(frozen=True, slots=True)
class LogConfig:
    segment_bytes: int = limits.SEGMENT_BYTES_DEFAULT
    segment_ms: int = limits.SEGMENT_MS_DEFAULT
    retention_bytes: int = limits.RETENTION_BYTES_DEFAULT  # -1: unlimited
    retention_ms: int = limits.RETENTION_MS_DEFAULT  # -1: unlimited
    index_interval_bytes: int = limits.INDEX_INTERVAL_BYTES_DEFAULT
    flush_policy: FlushPolicy = limits.FLUSH_POLICY_DEFAULT
    flush_interval_ms: int = limits.FLUSH_INTERVAL_MS_DEFAULT
    max_batch_bytes: int = limits.MAX_BATCH_BYTES

    def __post_init__(self) -> None:
        problems = []
        if not limits.MIN_SEGMENT_BYTES <= self.segment_bytes <= limits.MAX_SEGMENT_BYTES:
            problems.append(f"segment_bytes {self.segment_bytes} outside [{limits.MIN_SEGMENT_BYTES}, {limits.MAX_SEGMENT_BYTES}]")
        if self.segment_ms <= 0:
            problems.append(f"segment_ms {self.segment_ms} must be > 0")
        if self.retention_bytes < -1 or self.retention_ms < -1:
            problems.append("retention_bytes and retention_ms must be >= 0 or -1 (unlimited)")
        if not limits.MIN_INDEX_INTERVAL_BYTES <= self.index_interval_bytes <= limits.MAX_INDEX_INTERVAL_BYTES:
            problems.append(f"index_interval_bytes {self.index_interval_bytes} out of range")
        if self.flush_policy not in FLUSH_POLICIES:
            problems.append(f"flush_policy {self.flush_policy!r} not one of {FLUSH_POLICIES}")
        if self.flush_interval_ms <= 0:
            problems.append(f"flush_interval_ms {self.flush_interval_ms} must be > 0")
        if not 0 < self.max_batch_bytes <= limits.MAX_BATCH_BYTES:
            problems.append(f"max_batch_bytes {self.max_batch_bytes} outside (0, {limits.MAX_BATCH_BYTES}]")
        if problems:
            raise ValueError("invalid LogConfig: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentSummary:
    base_offset: int
    next_offset: int
    size_bytes: int
    max_timestamp_ms: int | None  # None: empty segment


def should_roll(
    active_size_bytes: int, active_first_append_ms: int | None, append_bytes: int, now_ms: int, config: LogConfig
) -> bool:
    """Roll before appending `append_bytes` to the active segment?"""
    if active_size_bytes == 0:
        return False  # an oversized append still goes into an empty segment, alone
    if active_size_bytes + append_bytes > config.segment_bytes:
        return True
    return active_first_append_ms is not None and now_ms - active_first_append_ms >= config.segment_ms


def retention_count(
    sealed: Sequence[SegmentSummary], active_size_bytes: int, log_start_offset: int, now_ms: int, config: LogConfig
) -> int:
    """How many leading segments of `sealed` (oldest first, active excluded) to delete."""
    total = sum(s.size_bytes for s in sealed) + active_size_bytes
    count = 0
    for seg in sealed:
        below_start = seg.next_offset <= log_start_offset
        too_big = config.retention_bytes >= 0 and total - seg.size_bytes >= config.retention_bytes
        too_old = (
            config.retention_ms >= 0
            and seg.max_timestamp_ms is not None
            and now_ms - seg.max_timestamp_ms > config.retention_ms
        )
        if not (below_start or too_big or too_old):
            break
        total -= seg.size_bytes
        count += 1
    return count


def fsync_due(policy: str, last_flush_ms: int, now_ms: int, flush_interval_ms: int) -> bool:
    """fsync after this append?"""
    if policy == "always":
        return True
    if policy == "interval":
        return now_ms - last_flush_ms >= flush_interval_ms
    return False
