"""Sparse offset and time indexes of one segment: pure arithmetic, no files.

How it works. A segment is a file of whole batches. `SegmentIndex` is fed every batch of
its segment in order (`observe`) and keeps:

* the offset index: (base_offset, position) of a batch, one entry whenever at least
  `interval_bytes` of log were written since the previous entry (never for the batch at
  position 0: a lookup that finds no entry starts at position 0);
* the time index: (T, O) where O is an offset-index point and T is the largest
  `max_timestamp_ms` of the batches *before* O in the segment. An entry is added only when T
  grows, so T is strictly increasing. Every batch before O has max timestamp <= T, so a search
  for the first batch with max timestamp >= ts may start at the last entry with T < ts.
* a summary: size, next offset, the largest and the first batch timestamps.

The decision which batches get entries depends only on the batch sizes and timestamps in
segment order, so an index rebuilt by scanning the segment equals the one built by appends
(tests check exactly that).

Invariants: entry offsets and positions strictly increase; every entry position < size_bytes;
time entries strictly increase in T and their offsets are offset-index points.

The file form (`encode_*` / `decode`) is a header, 16-byte big-endian entries and a CRC32C
trailer; any mismatch on load means "rebuild by scanning", never "trust".
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right

from semel.invariant import invariant
from semel.storage.checkpoint import CorruptCheckpointError, seal, unseal

OFFSET_INDEX_MAGIC = b"SOI1"
TIME_INDEX_MAGIC = b"STI1"
# magic, entry count, base_offset, size_bytes, next_offset, max_ts, first_ts, bytes_since_entry
_OFFSET_HEADER = struct.Struct(">4sIqqqqqq")
_TIME_HEADER = struct.Struct(">4sIq")  # magic, entry count, base_offset
EMPTY_MAX_TIMESTAMP = -(1 << 63)  # the file header's max timestamp before any batch (int64 min: any timestamp, even -1, is above it)
ENTRY_BYTES = 16


class CorruptIndexError(Exception):
    """An index file does not match its CRC, its segment, or its own invariants."""


@dataclasses.dataclass(frozen=True, slots=True)
class IndexPoint:
    offset: int
    position: int


class SegmentIndex:
    """Offset + time index and summary of one segment (see the module docstring)."""

    __slots__ = (
        "base_offset",
        "interval_bytes",
        "offsets",
        "positions",
        "time_ts",
        "time_offsets",
        "size_bytes",
        "next_offset",
        "max_timestamp_ms",
        "first_timestamp_ms",
        "bytes_since_entry",
    )

    def __init__(self, base_offset: int, interval_bytes: int) -> None:
        invariant(interval_bytes >= 1, f"interval_bytes {interval_bytes} < 1")
        self.base_offset = base_offset
        self.interval_bytes = interval_bytes
        self.offsets = array("q")
        self.positions = array("q")
        self.time_ts = array("q")
        self.time_offsets = array("q")
        self.size_bytes = 0
        self.next_offset = base_offset
        self.max_timestamp_ms: int | None = None
        self.first_timestamp_ms: int | None = None
        self.bytes_since_entry = 0

    def observe(self, base_offset: int, next_offset: int, max_timestamp_ms: int, size_bytes: int) -> None:
        """Account for the batch written at position `size_bytes` (the current end)."""
        if base_offset != self.next_offset or next_offset <= base_offset or size_bytes <= 0:
            raise AssertionError(f"batch {base_offset}..{next_offset} ({size_bytes} B) at segment end {self.next_offset}")
        if self.bytes_since_entry >= self.interval_bytes and self.size_bytes > 0:
            self.offsets.append(base_offset)
            self.positions.append(self.size_bytes)
            running_max = self.max_timestamp_ms
            if running_max is None:  # size_bytes > 0 means a batch was observed
                raise AssertionError("segment has bytes but no timestamp")
            if not self.time_ts or running_max > self.time_ts[-1]:
                self.time_ts.append(running_max)
                self.time_offsets.append(base_offset)
            self.bytes_since_entry = 0
        self.bytes_since_entry += size_bytes
        self.size_bytes += size_bytes
        self.next_offset = next_offset
        current_max = self.max_timestamp_ms
        if current_max is None:
            self.max_timestamp_ms = self.first_timestamp_ms = max_timestamp_ms
        elif max_timestamp_ms > current_max:
            self.max_timestamp_ms = max_timestamp_ms

    def lookup(self, offset: int) -> IndexPoint:
        """The last indexed batch start at or before `offset` (the segment start if none)."""
        i = bisect_right(self.offsets, offset) - 1
        if i < 0:
            return IndexPoint(self.base_offset, 0)
        return IndexPoint(self.offsets[i], self.positions[i])

    def time_lookup(self, timestamp_ms: int) -> IndexPoint:
        """Where a search for the first batch with max timestamp >= `timestamp_ms` may start."""
        i = bisect_left(self.time_ts, timestamp_ms) - 1
        if i < 0:
            return IndexPoint(self.base_offset, 0)
        offset = self.time_offsets[i]
        j = bisect_left(self.offsets, offset)
        invariant(j < len(self.offsets) and self.offsets[j] == offset, f"time entry {offset} is not an index point")
        return IndexPoint(offset, self.positions[j])

    def truncate_entries(self, cut_offset: int) -> IndexPoint:
        """Forget every entry at or after `cut_offset` and rewind to the last kept entry.

        Returns the point the caller must re-`observe` from (its batches up to the cut):
        the state is as just after the kept entry was added, before its batch was counted.
        The running max timestamp there is the T of the last kept time entry (T only
        grows at index points, and each growth adds an entry).
        """
        keep = bisect_left(self.offsets, cut_offset)
        del self.offsets[keep:]
        del self.positions[keep:]
        del self.time_offsets[bisect_left(self.time_offsets, cut_offset) :]
        del self.time_ts[len(self.time_offsets) :]
        self.bytes_since_entry = 0
        if not self.offsets:
            self.size_bytes = 0
            self.next_offset = self.base_offset
            self.max_timestamp_ms = None
            self.first_timestamp_ms = None
            return IndexPoint(self.base_offset, 0)
        invariant(len(self.time_ts) > 0, "offset entries without a time entry")
        self.size_bytes = self.positions[-1]
        self.next_offset = self.offsets[-1]
        self.max_timestamp_ms = self.time_ts[-1]
        # first_timestamp_ms stays: the first batch is before any index point.
        return IndexPoint(self.offsets[-1], self.positions[-1])

    def same_as(self, other: SegmentIndex) -> bool:
        return all(getattr(self, name) == getattr(other, name) for name in SegmentIndex.__slots__)

    # --- file form -------------------------------------------------------------------

    def encode_offset_index(self) -> bytes:
        header = _OFFSET_HEADER.pack(
            OFFSET_INDEX_MAGIC,
            len(self.offsets),
            self.base_offset,
            self.size_bytes,
            self.next_offset,
            _ts_out(self.max_timestamp_ms),
            _ts_out(self.first_timestamp_ms),
            self.bytes_since_entry,
        )
        return seal(header + _pairs_to_bytes(self.offsets, self.positions))

    def encode_time_index(self) -> bytes:
        header = _TIME_HEADER.pack(TIME_INDEX_MAGIC, len(self.time_ts), self.base_offset)
        return seal(header + _pairs_to_bytes(self.time_ts, self.time_offsets))

    @classmethod
    def decode(cls, offset_file: bytes, time_file: bytes, base_offset: int, interval_bytes: int) -> SegmentIndex:
        """Rebuild from the two files; raises CorruptIndexError unless both are whole and consistent."""
        index, obody = cls._decode_offset_header(offset_file, base_offset, interval_bytes)
        try:
            tbody = unseal(time_file)
        except CorruptCheckpointError as exc:
            raise CorruptIndexError(str(exc)) from exc
        if len(tbody) < _TIME_HEADER.size:
            raise CorruptIndexError("index header truncated")
        tmagic, tcount, tbase = _TIME_HEADER.unpack_from(tbody)
        if tmagic != TIME_INDEX_MAGIC:
            raise CorruptIndexError("bad index magic")
        if tbase != base_offset:
            raise CorruptIndexError(f"time index is for segment {tbase}, expected {base_offset}")
        if len(tbody) != _TIME_HEADER.size + tcount * ENTRY_BYTES:
            raise CorruptIndexError("index entry count does not match its length")
        index.offsets, index.positions = _bytes_to_pairs(obody[_OFFSET_HEADER.size :])
        index.time_ts, index.time_offsets = _bytes_to_pairs(tbody[_TIME_HEADER.size :])
        index.check()
        return index

    @classmethod
    def decode_summary(cls, offset_file: bytes, base_offset: int, interval_bytes: int) -> SegmentIndex:
        """The summary of the offset index file (size, next offset, timestamps) without its
        entries: CRC, header and length checked, the entries left on disk. What `open` needs
        of a trusted segment; the entries are loaded when a lookup needs them (`decode`)."""
        index, _ = cls._decode_offset_header(offset_file, base_offset, interval_bytes)
        index.check()
        return index

    @classmethod
    def _decode_offset_header(cls, offset_file: bytes, base_offset: int,
                              interval_bytes: int) -> tuple[SegmentIndex, bytes]:
        """The offset index file checked (CRC, magic, base, length) -> an index holding its
        header's summary, no entries yet, and the file's body."""
        try:
            obody = unseal(offset_file)
        except CorruptCheckpointError as exc:
            raise CorruptIndexError(str(exc)) from exc
        if len(obody) < _OFFSET_HEADER.size:
            raise CorruptIndexError("index header truncated")
        magic, count, base, size, next_offset, max_ts, first_ts, since = _OFFSET_HEADER.unpack_from(obody)
        if magic != OFFSET_INDEX_MAGIC:
            raise CorruptIndexError("bad index magic")
        if base != base_offset:
            raise CorruptIndexError(f"index is for segment {base}, expected {base_offset}")
        if len(obody) != _OFFSET_HEADER.size + count * ENTRY_BYTES:
            raise CorruptIndexError("index entry count does not match its length")
        index = cls(base_offset, interval_bytes)
        index.size_bytes = size
        index.next_offset = next_offset
        index.max_timestamp_ms = _ts_in(max_ts)
        index.first_timestamp_ms = _ts_in(first_ts)
        index.bytes_since_entry = since
        return index, obody

    def summary(self) -> SegmentIndex:
        """A copy with this index's summary and no entries: lookups on it answer the segment
        start (correct, only a longer walk); never `observe` on it."""
        copy = SegmentIndex(self.base_offset, self.interval_bytes)
        copy.size_bytes = self.size_bytes
        copy.next_offset = self.next_offset
        copy.max_timestamp_ms = self.max_timestamp_ms
        copy.first_timestamp_ms = self.first_timestamp_ms
        copy.bytes_since_entry = self.bytes_since_entry
        return copy

    def check(self) -> None:
        """Raise CorruptIndexError unless the invariants of the module docstring hold."""
        offs, poss = self.offsets, self.positions
        ok = (
            self.size_bytes >= 0
            and self.next_offset >= self.base_offset
            and (self.size_bytes == 0) == (self.next_offset == self.base_offset)
            and _strictly_increasing(offs)
            and _strictly_increasing(poss)
            and _strictly_increasing(self.time_ts)
            and _strictly_increasing(self.time_offsets)
            and (not offs or (offs[0] > self.base_offset and offs[-1] < self.next_offset))
            and (not poss or (poss[0] > 0 and poss[-1] < self.size_bytes))
            and len(self.time_ts) <= len(offs)
            and (not self.time_offsets or set(self.time_offsets) <= set(offs))
        )
        if not ok:
            raise CorruptIndexError(f"index of segment {self.base_offset} breaks its invariants")


def _strictly_increasing(values: array[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def _ts_out(ts: int | None) -> int:
    return EMPTY_MAX_TIMESTAMP if ts is None else ts


def _ts_in(ts: int) -> int | None:
    return None if ts == EMPTY_MAX_TIMESTAMP else ts


def _pairs_to_bytes(first: array[int], second: array[int]) -> bytes:
    merged = array("q", bytes(16 * len(first)))
    merged[0::2] = first
    merged[1::2] = second
    if sys.byteorder == "little":
        merged.byteswap()
    return merged.tobytes()


def _bytes_to_pairs(data: bytes) -> tuple[array[int], array[int]]:
    merged = array("q", data)
    if sys.byteorder == "little":
        merged.byteswap()
    return merged[0::2], merged[1::2]
