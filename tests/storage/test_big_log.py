"""A log of many segments (issue 19, big partitions): opening it, after a crash too, reads
only the tail after the recovery point and the index files' summaries, not every segment's
index entries; reads anywhere keep the entries of only a few sealed segments in memory;
answers stay the same. The sizes are tiny; `semel bench big-partition` measures 10 GB."""

from __future__ import annotations

import random
from pathlib import Path

from semel import limits
from semel.storage import disk_executor
from semel.storage.batch import BatchHeader, encode_batch
from semel.storage.log import LogConfig, PartitionLog

CONFIG = LogConfig(segment_bytes=4096, index_interval_bytes=256)
SEGMENTS = 60


def make_batch(base: int, ts: int) -> bytes:
    header = BatchHeader(base, 1, 0, -1, -1, -1, 2, 0, ts, ts)
    return encode_batch(header, random.Random(base).randbytes(200))


def fill(directory: Path) -> tuple[PartitionLog, list[bytes]]:
    plog = PartitionLog.open(directory, CONFIG, 0)
    batches = []
    i = 0
    while len(plog.segment_base_offsets) < SEGMENTS:
        b = make_batch(plog.log_end_offset, ts=i)
        plog.append(b, i)
        batches.append(b)
        i += 1
    return plog, batches


def with_entries(plog: PartitionLog) -> int:
    """Segments whose index entries are in memory."""
    return sum(1 for seg in plog._segments if len(seg.index.offsets) or len(seg.index.time_ts))


def read_all(plog: PartitionLog) -> bytes:
    out, offset = [], plog.log_start_offset
    while offset < plog.log_end_offset:
        r = plog.read(offset, 700)
        out.append(r.data)
        offset = r.next_offset
    return b"".join(out)


def test_recovery_after_a_crash_reads_only_the_tail_and_no_sealed_index_entries(tmp_path: Path) -> None:
    plog, batches = fill(tmp_path)
    times = {ts: plog.offset_for_timestamp(ts) for ts in range(0, len(batches), 7)}
    disk_executor.shared().wait_idle(plog.directory)  # the rolls' jobs moved the recovery point
    recovery_point = plog.recovery_point
    tail_bytes = sum(s.index.size_bytes for s in plog._segments if s.index.next_offset > recovery_point)
    total_bytes = plog.size_bytes
    plog._close_files()  # a crash: no clean-shutdown marker, the checkpoint as the last roll left it

    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    try:
        stats = plog.recovery_stats
        assert stats.segments == SEGMENTS
        assert stats.verified == 1 and stats.trusted == SEGMENTS - 1  # the active segment only
        assert stats.bytes_scanned == tail_bytes < total_bytes / 10
        assert stats.indexes_rebuilt == 0
        assert with_entries(plog) <= 1  # the active one: trusted segments keep only their summary
        assert read_all(plog) == b"".join(batches)
        assert {ts: plog.offset_for_timestamp(ts) for ts in times} == times
        # Readers went through every segment: only the last few looked-up ones keep their entries.
        assert with_entries(plog) <= limits.LOADED_SEALED_INDEXES_PER_LOG + 1
    finally:
        plog.close()


def test_a_clean_reopen_scans_nothing_and_reads_stay_bounded(tmp_path: Path) -> None:
    plog, batches = fill(tmp_path)
    plog.close()
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    try:
        stats = plog.recovery_stats
        assert (stats.verified, stats.bytes_scanned, stats.indexes_rebuilt) == (0, 0, 0)
        # Reads from every offset, in a random order (a consumer per segment, seeks), equal a
        # read straight from the batches, and memory keeps a bounded number of indexes.
        bases = []
        offset = 0
        for b in batches:
            bases.append(offset)
            offset += 2
        order = list(range(len(batches)))
        random.Random(7).shuffle(order)
        for i in order[:300]:
            r = plog.read(bases[i] + 1, 1)  # an offset inside the batch: the whole batch comes back
            assert r.data == batches[i]
            assert with_entries(plog) <= limits.LOADED_SEALED_INDEXES_PER_LOG + 1
    finally:
        plog.close()


def test_index_files_damaged_after_open_are_rebuilt_when_first_needed(tmp_path: Path) -> None:
    plog, batches = fill(tmp_path)
    plog.close()
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    try:
        for path in sorted(tmp_path.glob("*.timeindex"))[:10]:
            path.write_bytes(b"garbage")  # found only when the entries are loaded
        assert read_all(plog) == b"".join(batches)
        assert plog.offset_for_timestamp(5) == 10
    finally:
        plog.close()
