"""Recovery decisions and the batch scanner: pure functions over buffers, no files.

How recovery works (the shell is `PartitionLog.open`):

1. The log checkpoint holds the recovery point: every batch below it was flushed and its
   segment's index files were written. A clean-shutdown marker says the process closed
   the log itself after flushing everything (then the recovery point equals the LEO).
2. `first_segment_to_verify` picks the segment that contains the recovery point; it and all
   later segments are scanned batch by batch with CRC checks (`scan_batches`). Earlier
   segments are trusted: their index files are loaded (and rebuilt by a framing-only scan
   if missing or damaged). After a clean shutdown nothing is scanned.
3. The scan stops at the first batch that is torn, fails its CRC, or breaks offset
   continuity: the segment is cut there and every later segment is deleted. Replication
   fetches the rest again from the leader.

A batch in a trusted segment that rots later is not served either: every read checks
CRCs (`decode_header(verify_crc=True)`) and raises instead.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from collections.abc import Callable, Sequence

from semel.storage.batch import (
    HEADER_BYTES,
    BatchHeader,
    CorruptBatchError,
    decode_header,
)
from semel.storage.index import SegmentIndex


@dataclasses.dataclass(frozen=True, slots=True)
class ScanResult:
    valid_bytes: int  # the prefix of whole, valid, contiguous batches
    next_offset: int  # offset after the last valid batch
    batch_count: int
    stop_reason: str | None  # why the scan stopped before the end; None if everything was valid


def scan_batches(
    buf: bytes | memoryview,
    index: SegmentIndex,
    *,
    verify_crc: bool,
    on_batch: Callable[[BatchHeader], None] | None = None,
    start_position: int = 0,
) -> ScanResult:
    """Walk `buf` from `start_position`, feeding each valid batch to `index` (and `on_batch`).

    `index` must already be positioned at `start_position` (its size_bytes); batches must
    continue its next_offset. Stops at the first invalid batch.
    """
    pos = start_position
    end = len(buf)
    count = 0
    reason = None
    while pos < end:
        if end - pos < HEADER_BYTES:
            reason = f"torn batch header at position {pos} ({end - pos} bytes)"
            break
        try:
            header = decode_header(buf, pos, verify_crc=verify_crc)
        except CorruptBatchError as exc:
            reason = str(exc)
            break
        if header.base_offset != index.next_offset:
            reason = f"batch at position {pos} has base offset {header.base_offset}, expected {index.next_offset}"
            break
        if header.last_offset_delta < 0:
            reason = f"batch at position {pos} has a negative last_offset_delta"
            break
        index.observe(header.base_offset, header.next_offset, header.max_timestamp_ms, header.size_bytes)
        if on_batch is not None:
            on_batch(header)
        pos += header.size_bytes
        count += 1
    return ScanResult(pos, index.next_offset, count, reason)


def first_segment_to_verify(segment_bases: Sequence[int], recovery_point: int | None, clean_shutdown: bool) -> int:
    """Index into `segment_bases` (sorted) of the first segment recovery must scan.

    `len(segment_bases)` means none. A missing recovery point means "verify everything".
    """
    if clean_shutdown and recovery_point is not None:
        return len(segment_bases)
    if recovery_point is None:
        return 0
    return max(0, bisect_right(segment_bases, recovery_point) - 1)
