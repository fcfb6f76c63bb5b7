"""Roll, retention, fsync decisions and config validation (pure)."""

from __future__ import annotations

import pytest
from semel import limits
from semel.storage.log_policy import (
    LogConfig,
    SegmentSummary,
    fsync_due,
    retention_count,
    should_roll,
)
from semel.storage.recovery import first_segment_to_verify

CFG = LogConfig(segment_bytes=1024, segment_ms=100, retention_bytes=2500, retention_ms=1000)


def test_roll_by_size_and_age_never_an_empty_segment():
    assert not should_roll(0, None, 5000, 0, CFG)  # an oversized append goes alone into an empty segment
    assert not should_roll(924, 0, 100, 50, CFG)
    assert should_roll(925, 0, 100, 50, CFG)
    assert should_roll(10, 0, 10, 100, CFG)  # first batch 100 ms old
    assert not should_roll(10, 0, 10, 99, CFG)


def seg(base, size, ts):
    return SegmentSummary(base, base + 10, size, ts)


def test_retention_by_bytes_keeps_at_least_retention_bytes():
    sealed = [seg(0, 1000, 5000), seg(10, 1000, 5000), seg(20, 1000, 5000)]
    # total 3000 + active 500 = 3500; dropping the first leaves 2500 >= 2500; dropping two leaves 1500
    assert retention_count(sealed, 500, 0, 5000, CFG) == 1


def test_retention_by_time_deletes_a_prefix_only():
    cfg = LogConfig(segment_bytes=1024, retention_ms=1000)
    sealed = [seg(0, 10, 0), seg(10, 10, 5000), seg(20, 10, 0)]
    assert retention_count(sealed, 0, 0, 3000, cfg) == 1  # the third is old but behind a young one
    assert retention_count(sealed, 0, 0, 7000, cfg) == 3  # the active segment is never a candidate
    assert retention_count(sealed, 0, 0, 1000, cfg) == 0  # exactly retention_ms old stays


def test_retention_below_log_start_and_unlimited():
    cfg = LogConfig(segment_bytes=1024, retention_bytes=-1, retention_ms=-1)
    sealed = [seg(0, 10, 0), seg(10, 10, 0), seg(20, 10, 0)]
    assert retention_count(sealed, 0, 0, 10**12, cfg) == 0
    assert retention_count(sealed, 0, 20, 0, cfg) == 2  # ends at or below the log start


def test_fsync_due():
    assert fsync_due("always", 0, 0, 1000)
    assert not fsync_due("never", 0, 10**9, 1000)
    assert not fsync_due("interval", 0, 999, 1000)
    assert fsync_due("interval", 0, 1000, 1000)


def test_config_rejects_out_of_range_values():
    assert LogConfig().flush_policy == limits.FLUSH_POLICY_DEFAULT == "interval"
    for bad in (
        dict(segment_bytes=10),
        dict(segment_bytes=limits.MAX_SEGMENT_BYTES + 1),
        dict(flush_policy="sometimes"),
        dict(index_interval_bytes=0),
        dict(max_batch_bytes=limits.MAX_BATCH_BYTES + 1),
        dict(retention_ms=-2),
        dict(flush_interval_ms=0),
    ):
        with pytest.raises(ValueError):
            LogConfig(**bad)


def test_first_segment_to_verify():
    bases = [0, 100, 200]
    assert first_segment_to_verify(bases, 150, clean_shutdown=False) == 1
    assert first_segment_to_verify(bases, 200, clean_shutdown=False) == 2
    assert first_segment_to_verify(bases, 250, clean_shutdown=True) == 3
    assert first_segment_to_verify(bases, None, clean_shutdown=True) == 0  # no checkpoint: verify all
    assert first_segment_to_verify([], 0, clean_shutdown=False) == 0


def test_roll_by_age_uses_the_broker_clock_not_batch_timestamps(tmp_path):
    from semel.storage.batch import BatchHeader, encode_batch
    from semel.storage.log import PartitionLog

    def batch(base):
        return encode_batch(BatchHeader(base, 0, 0, -1, -1, -1, 1, 0, 0, 0), b"x" * 10)  # stamped 1970

    now = 1_700_000_000_000
    plog = PartitionLog.open(tmp_path, LogConfig(segment_ms=1000), now)
    for i in range(5):
        plog.append(batch(i), now + i)
    assert plog.segment_base_offsets == [0]
    plog.append(batch(5), now + 1000)  # the first append was 1000 ms ago
    assert plog.segment_base_offsets == [0, 5]
    plog.close()
    plog = PartitionLog.open(tmp_path, LogConfig(segment_ms=1000), now + 5000)
    plog.append(batch(6), now + 5999)  # after a restart the age counts from the open
    assert plog.segment_base_offsets == [0, 5]
    plog.append(batch(7), now + 6000)
    assert plog.segment_base_offsets == [0, 5, 7]
    plog.close()
