"""One segment on disk: `<base>.log` (whole batches), `<base>.index`, `<base>.timeindex`.

The thin file shell around `semel.storage.index.SegmentIndex`. The log file is opened
O_APPEND and written with one write() per append call; reads use pread so readers never
move a file position. While the segment is open its index lives in memory; the index files
are written whole (tmp + rename, CRC trailer) when the segment is sealed by a roll, at flush
and at close, and are only trusted on open when their CRC, header and the log file size agree.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from semel import limits
from semel.invariant import invariant
from semel.storage import fault_injection
from semel.storage.background_sync import BackgroundSync
from semel.storage.batch import (
    HEADER_BYTES,
    BatchHeader,
    CorruptBatchError,
    decode_header,
    peek_header,
)
from semel.storage.checkpoint import write_all, write_atomic
from semel.storage.errors import CorruptLogError
from semel.storage.index import CorruptIndexError, SegmentIndex
from semel.storage.recovery import ScanResult, scan_batches

# What append needs of each validated batch: (base_offset, next_offset, max_timestamp_ms,
# size_bytes, leader_epoch).
Frame = tuple[int, int, int, int, int]

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"

log = logging.getLogger(__name__)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


def parse_segment_name(name: str) -> int | None:
    """The base offset of a `.log` file name, or None for any other file."""
    if not name.endswith(LOG_SUFFIX):
        return None
    stem = name[: -len(LOG_SUFFIX)]
    return int(stem) if len(stem) == 20 and stem.isdigit() else None


class LogSegment:
    __slots__ = ("directory", "base_offset", "index", "_fd", "index_dirty", "first_append_ms", "entries_loaded")

    def __init__(self, directory: Path, index: SegmentIndex, fd: int) -> None:
        self.directory = directory
        self.base_offset = index.base_offset
        self.index = index
        self._fd = fd
        self.index_dirty = True  # the index files on disk may not match `index`
        # Broker clock at the first append into this segment (for roll by age); client
        # timestamps are not trusted for that: one batch stamped 1970 would roll every append.
        self.first_append_ms: int | None = None
        # False: `index` holds only the summary (a trusted segment opened lazily, or unloaded
        # by `unload_entries`); the entries are on disk and `load_entries` reads them.
        self.entries_loaded = True

    # --- paths ---------------------------------------------------------------------
    def _path(self, suffix: str) -> Path:
        return self.directory / (segment_name(self.base_offset) + suffix)

    @property
    def log_path(self) -> Path:
        return self._path(LOG_SUFFIX)

    # --- lifecycle -----------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, base_offset: int, interval_bytes: int) -> LogSegment:
        path = directory / (segment_name(base_offset) + LOG_SUFFIX)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            _unlink(directory / (segment_name(base_offset) + suffix))
        return cls(directory, SegmentIndex(base_offset, interval_bytes), fd)

    @classmethod
    def open_trusted(cls, directory: Path, base_offset: int, interval_bytes: int, *, lazy: bool = False) -> LogSegment:
        """Open a segment below the recovery point: load its index, or rebuild it by a framing scan.

        `lazy`: read only the offset index file's summary (its CRC and header checked, as
        below); the entries wait for `load_entries`. Opening a log then costs per segment, not
        per byte of data, and memory holds the entries of the segments being read only."""
        seg = cls._open_fd(directory, base_offset, interval_bytes)
        size = os.fstat(seg._fd).st_size
        try:
            offset_file = seg._path(INDEX_SUFFIX).read_bytes()
            if lazy:
                index = SegmentIndex.decode_summary(offset_file, base_offset, interval_bytes)
            else:
                index = SegmentIndex.decode(offset_file, seg._path(TIME_INDEX_SUFFIX).read_bytes(), base_offset,
                                            interval_bytes)
            if index.size_bytes != size:
                raise CorruptIndexError(f"index covers {index.size_bytes} bytes, log has {size}")
            seg.index = index
            seg.index_dirty = False
            seg.entries_loaded = not lazy
        except (FileNotFoundError, CorruptIndexError):
            # Rebuild without CRC checks: the data was verified when it was flushed, and a
            # batch that rotted since is still caught by the CRC check of every read. A
            # framing break stops the index early; reads past it hit the break and raise.
            seg.rebuild_index(verify_crc=False)
        return seg

    @classmethod
    def open_for_recovery(cls, directory: Path, base_offset: int, interval_bytes: int) -> LogSegment:
        """Open a segment at or after the recovery point; the caller scans it (`recover`)."""
        return cls._open_fd(directory, base_offset, interval_bytes)

    @classmethod
    def _open_fd(cls, directory: Path, base_offset: int, interval_bytes: int) -> LogSegment:
        path = directory / (segment_name(base_offset) + LOG_SUFFIX)
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        return cls(directory, SegmentIndex(base_offset, interval_bytes), fd)

    def load_entries(self) -> bool:
        """Read the index entries of a lazily opened (or unloaded) segment; True if it read
        them. Index files that fail their checks now are replaced by a framing scan, as on open."""
        if self.entries_loaded:
            return False
        summary = self.index
        try:
            index = SegmentIndex.decode(self._path(INDEX_SUFFIX).read_bytes(),
                                        self._path(TIME_INDEX_SUFFIX).read_bytes(),
                                        self.base_offset, summary.interval_bytes)
            if index.size_bytes != summary.size_bytes or index.next_offset != summary.next_offset:
                raise CorruptIndexError(f"index files cover {index.size_bytes} bytes to offset {index.next_offset}, "
                                        f"the segment {summary.size_bytes} bytes to {summary.next_offset}")
            self.index = index
            self.entries_loaded = True
        except (FileNotFoundError, CorruptIndexError) as exc:
            log.warning("%s: index files unusable (%s); rebuilding by a framing scan", self.log_path, exc)
            self.rebuild_index(verify_crc=False)  # a framing break stops it short: reads past it raise
        return True

    def unload_entries(self) -> bool:
        """Keep only the summary when the index files hold exactly the in-memory index (not
        dirty); False when they may not (then the entries stay)."""
        if not self.entries_loaded or self.index_dirty or self._fd < 0:
            return False
        self.index = self.index.summary()
        self.entries_loaded = False
        return True

    def recover(self, on_batch: Callable[[BatchHeader], None] | None = None) -> ScanResult:
        """Verify every batch (CRC, continuity), rebuild the index, cut the file after the last valid one."""
        result = self._scan(verify_crc=True, on_batch=on_batch)
        if result.valid_bytes != os.fstat(self._fd).st_size:
            os.ftruncate(self._fd, result.valid_bytes)
        return result

    def rebuild_index(self, *, verify_crc: bool) -> ScanResult:
        return self._scan(verify_crc=verify_crc, on_batch=None)

    def _scan(self, *, verify_crc: bool, on_batch: Callable[[BatchHeader], None] | None) -> ScanResult:
        self.index = SegmentIndex(self.base_offset, self.index.interval_bytes)
        self.index_dirty = True
        self.entries_loaded = True
        size = os.fstat(self._fd).st_size
        if size == 0:
            return ScanResult(0, self.base_offset, 0, None)
        with mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return scan_batches(view, self.index, verify_crc=verify_crc, on_batch=on_batch)
            finally:
                view.release()

    def cut_to_index(self) -> None:
        """Drop any bytes after what the index covers (the tail past a framing break)."""
        if os.fstat(self._fd).st_size != self.index.size_bytes:
            os.ftruncate(self._fd, self.index.size_bytes)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        self.close()
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            _unlink(self._path(suffix))

    # --- writes --------------------------------------------------------------------
    def append(self, data: bytes | memoryview, frames: list[Frame]) -> None:
        """Write whole batches (already validated) with one write() and index them.

        A failed write (disk full, I/O error) is cut back so the file never keeps a partial batch.
        """
        self.load_entries()  # a sealed segment that became the active one again (truncation)
        size_before = self.index.size_bytes
        try:
            fault_injection.check_segment_write(self.directory, self._fd, data)  # tests only (SEMEL_TEST_EIO_TRIGGER)
            write_all(self._fd, data)
        except OSError:
            os.ftruncate(self._fd, size_before)
            raise
        observe = self.index.observe
        for base, next_offset, max_ts, size, _epoch in frames:
            observe(base, next_offset, max_ts, size)
        self.index_dirty = True

    def fsync(self) -> None:
        os.fdatasync(self._fd)

    def fileno(self) -> int:
        return self._fd

    def fsync_soon(self, syncer: BackgroundSync, keep_cached_bytes: int | None = None) -> None:
        """fdatasync on `syncer`'s thread (inline when its queue is full); then, unless
        `keep_cached_bytes` is None, all but the segment's last `keep_cached_bytes` leave the
        page cache (see background_sync)."""
        drop_before = 0 if keep_cached_bytes is None else max(0, self.index.size_bytes - keep_cached_bytes)
        if not syncer.submit(self._fd, str(self._path(LOG_SUFFIX)), drop_before):
            self.fsync()

    def write_index_files(self, *, sync: bool) -> None:
        if not self.index_dirty:
            return
        invariant(self.entries_loaded, f"{self.log_path}: dirty index without its entries")
        write_atomic(self._path(INDEX_SUFFIX), self.index.encode_offset_index(), sync=sync)
        write_atomic(self._path(TIME_INDEX_SUFFIX), self.index.encode_time_index(), sync=sync)
        self.index_dirty = False

    def stage_index_files(self, *, sync: bool) -> list[tuple[Path, Path]]:
        """Write the index files under temporary names (unique: a close may write the same
        files meanwhile) for `commit_staged` to rename; (tmp, final) pairs. Any thread."""
        staged = []
        for suffix, data in ((INDEX_SUFFIX, self.index.encode_offset_index()),
                             (TIME_INDEX_SUFFIX, self.index.encode_time_index())):
            final = self._path(suffix)
            tmp = final.with_name(f"{final.name}.{threading.get_ident()}.tmp")  # *.tmp: removed by recovery
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            staged.append((tmp, final))
        return staged

    def commit_staged(self, staged: list[tuple[Path, Path]]) -> None:
        """Rename staged index files into place (the caller fsyncs the directory)."""
        for tmp, final in staged:
            os.replace(tmp, final)
        self.index_dirty = False

    @staticmethod
    def discard_staged(staged: list[tuple[Path, Path]]) -> None:
        for tmp, _ in staged:
            _unlink(tmp)

    def truncate_to_offset(self, offset: int) -> int:
        """Drop the batch containing `offset` and everything after; returns the new next offset."""
        if offset >= self.index.next_offset:
            return self.index.next_offset
        self.load_entries()
        position, header = self.locate(offset)
        resume = self.index.truncate_entries(header.base_offset)
        # Re-observe the batches between the last kept index entry and the cut.
        for h, _ in self.iter_batches(resume.position, resume.offset, position, verify_crc=False):
            self.index.observe(h.base_offset, h.next_offset, h.max_timestamp_ms, h.size_bytes)
        os.ftruncate(self._fd, position)
        # The cut must survive a power loss: a divergent tail that came back after a crash would
        # be taken as this replica's own data again (rare: truncation follows a leader change).
        os.fsync(self._fd)
        if self.index.size_bytes != position:
            raise AssertionError(f"index at {self.index.size_bytes} after cutting at {position}")
        for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            _unlink(self._path(suffix))
        self.index_dirty = True
        return self.index.next_offset

    # --- reads ---------------------------------------------------------------------
    def pread(self, n: int, position: int) -> bytes:
        return os.pread(self._fd, n, position)

    def locate(self, offset: int) -> tuple[int, BatchHeader]:
        """Position and (unverified) header of the batch containing `offset`.

        Every batch start between an index point and the next lies within `interval_bytes`
        of the point, so one read of that much (plus a header) usually covers the walk.
        """
        point = self.index.lookup(offset)
        pos, expected = point.position, point.offset
        end = self.index.size_bytes
        window = self.index.interval_bytes + HEADER_BYTES
        buf, buf_pos = b"", pos
        while pos < end:
            if pos + HEADER_BYTES > buf_pos + len(buf):
                buf, buf_pos = os.pread(self._fd, min(window, end - pos), pos), pos
            try:
                header = peek_header(buf, pos - buf_pos)
            except CorruptBatchError as exc:
                raise CorruptLogError(f"{self.log_path} position {pos}: {exc}") from exc
            if header.base_offset != expected or pos + header.size_bytes > end:
                raise CorruptLogError(f"{self.log_path} position {pos}: batch breaks the segment's framing")
            if header.next_offset > offset:
                return pos, header
            pos += header.size_bytes
            expected = header.next_offset
        raise CorruptLogError(f"{self.log_path}: offset {offset} not found before position {end}")

    def iter_batches(
        self, position: int, expected_offset: int, end_position: int | None = None, *, verify_crc: bool = True
    ) -> Iterator[tuple[BatchHeader, int]]:
        """(header, position) of each batch from `position`, reading in chunks."""
        end = self.index.size_bytes if end_position is None else end_position
        pos = position
        while pos < end:
            chunk = os.pread(self._fd, min(limits.LOG_SCAN_CHUNK_BYTES, end - pos), pos)
            at = 0
            while pos + at < end:
                if len(chunk) - at < HEADER_BYTES:
                    if at == 0:
                        raise CorruptLogError(f"{self.log_path} position {pos}: torn batch header")
                    break
                size = 12 + int.from_bytes(chunk[at + 8 : at + 12], "big", signed=True)
                if size > len(chunk) - at:
                    if at == 0:
                        # A batch larger than the chunk: read it whole.
                        chunk = os.pread(self._fd, min(max(size, HEADER_BYTES), end - pos), pos)
                        if len(chunk) < size:
                            self._header(chunk, 0, pos, expected_offset, verify_crc)  # raises
                        continue
                    break
                header = self._header(chunk, at, pos + at, expected_offset, verify_crc)
                yield header, pos + at
                expected_offset = header.next_offset
                at += header.size_bytes
            pos += at

    def _header(self, buf: bytes, at: int, position: int, expected_offset: int, verify_crc: bool) -> BatchHeader:
        try:
            header = decode_header(buf, at, verify_crc=verify_crc)
        except CorruptBatchError as exc:
            raise CorruptLogError(f"{self.log_path} position {position}: {exc}") from exc
        if header.base_offset != expected_offset:
            raise CorruptLogError(
                f"{self.log_path} position {position}: base offset {header.base_offset}, expected {expected_offset}"
            )
        return header


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
