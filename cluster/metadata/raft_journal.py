"""An fsync path for pysyncobj's journal, used when the broker runs with `fsync: true`.

pysyncobj 0.3.17 never fsyncs: its journal is an mmap'd file, its `.meta` file (term, vote,
commit index) is written to a temporary file and renamed without fsync, its snapshot likewise.
All of it survives kill -9 (the page cache does), none of it a power loss. Raft needs, before a
node tells anyone it holds something:
  * a follower: the entries it acknowledges are on disk (`MetadataQuorum` holds its success
    answers to the AppendEntries of one network poll, calls `sync()` once, then sends them);
  * the leader: its own entries are on disk before it counts itself toward a majority and
    acts on the result (pysyncobj counts itself, then calls `setRaftCommitIndex`, then applies
    and answers clients; `DurableJournal.setRaftCommitIndex` syncs first, so nothing counted
    becomes visible before it is durable);
  * term and vote on disk before a vote is asked for or granted (`DurableMetaStorer`: write a
    temporary file, fsync it, rename, fsync the directory; pysyncobj stores them synchronously);
  * the snapshot on disk before the journal entries it replaces are dropped, and compaction
    that cannot lose the entries it keeps: pysyncobj rewrites the journal in place (clear, then
    re-add the kept entries from the front), which a power cut in the middle turns into a
    journal missing committed entries. `DurableJournal.deleteEntriesTo` fsyncs the directory
    (the renamed snapshot) and writes the kept entries to a new file, fsynced, renamed over the
    old one, directory fsynced;
  * a loader that does not trust a record a power cut tore: `cut_torn_tail` keeps the records
    up to the first one that is not whole (size prefix and suffix agree, indexes contiguous,
    terms not decreasing, and for the last record, the command readable) and moves the
    journal's end there. Only the
    records of the flush that was interrupted can be cut, and no node acknowledged or counted
    those (it does so after `sync()` returns).
`msync(MS_SYNC)` on Linux writes the mapping's dirty pages and fsyncs the file's data range
(and its size), so it is the journal's fsync.

Pure: `scan_journal`. The rest are thin shells over files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pysyncobj.journal as pysyncobj_journal
import pysyncobj.syncobj as pysyncobj_syncobj
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET, FileJournal, MetaStorer, ResizableFile
from pysyncobj.pickle import dumps as pysyncobj_dumps
from semel.fs import fsync_dir

log = logging.getLogger(__name__)

_RECORD_HEADER = struct.Struct("<IQQ")  # record size (16 + command), raft index, raft term
_SIZE = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class JournalScan:
    end_offset: int  # where the last whole record ends: the journal's end after a cut
    entries: int  # whole records before end_offset
    recorded_end_offset: int  # what the header says
    problem: str | None  # why the scan stopped before recorded_end_offset (None: it did not)


def scan_journal(data: bytes, command_ok: Callable[[bytes], bool]) -> JournalScan:
    """Walk pysyncobj's journal file format (see pysyncobj/journal.py) up to the end the header
    records, stopping at the first record that is not whole."""
    if len(data) < FIRST_RECORD_OFFSET:
        return JournalScan(FIRST_RECORD_OFFSET, 0, FIRST_RECORD_OFFSET, "no header")
    (recorded_end,) = _SIZE.unpack_from(data, LAST_RECORD_OFFSET_OFFSET)
    offset, entries = FIRST_RECORD_OFFSET, 0
    previous: tuple[int, int] | None = None
    problem: str | None = None
    while offset < recorded_end:
        if offset + _RECORD_HEADER.size > min(recorded_end, len(data)):
            problem = f"record at {offset} runs past the end"
            break
        size, index, term = _RECORD_HEADER.unpack_from(data, offset)
        end = offset + 4 + size + 4
        if size < 16 or end > min(recorded_end, len(data)):
            problem = f"record at {offset} has size {size}, past the end"
            break
        if _SIZE.unpack_from(data, end - 4)[0] != size:
            problem = f"record at {offset}: size prefix and suffix differ"
            break
        if previous is not None and (index != previous[0] + 1 or term < previous[1]):
            problem = f"record at {offset}: index {index} term {term} does not follow {previous}"
            break
        if end == recorded_end and not command_ok(bytes(data[offset + 4 + 16:end - 4])):
            # Only the last record: one in the middle with an unreadable command is whole (its
            # sizes agree and records follow it), so it is not torn, and the quorum's start-up
            # check refuses it loudly instead of this cut dropping what follows.
            problem = f"last record at {offset} (index {index}): command unreadable"
            break
        previous = (index, term)
        offset, entries = end, entries + 1
    if problem is None and offset != recorded_end:
        problem = f"records end at {offset}, header says {recorded_end}"
    return JournalScan(offset, entries, recorded_end, problem)


def cut_torn_tail(path: str | Path, command_ok: Callable[[bytes], bool]) -> JournalScan | None:
    """Move the journal's end back to its last whole record (fsynced); None if nothing to cut."""
    if not os.path.exists(path):
        return None
    data = Path(path).read_bytes()
    scan = scan_journal(data, command_ok)
    if scan.problem is None or len(data) < FIRST_RECORD_OFFSET:
        return None
    with open(path, "r+b") as f:
        f.seek(LAST_RECORD_OFFSET_OFFSET)
        f.write(_SIZE.pack(scan.end_offset))
        f.flush()
        os.fsync(f.fileno())
    log.warning("metadata journal %s: cut after %d whole records at offset %d (header said %d): %s",
                path, scan.entries, scan.end_offset, scan.recorded_end_offset, scan.problem)
    return scan


class DurableMetaStorer(MetaStorer):
    """pysyncobj's term/vote/commit-index file, written so that a power cut leaves the old or
    the new one whole: temporary file fsynced, renamed, directory fsynced."""

    def storeMeta(self, meta: dict) -> None:  # noqa: N802 (pysyncobj's name)
        path = self.getPath()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(pysyncobj_dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path) or ".")


class DurableJournal(FileJournal):
    """pysyncobj's FileJournal with `sync()`, a durable `.meta` and compaction by rename.

    Every change marks the journal dirty; `sync()` msyncs it (MS_SYNC) if so. pysyncobj's own
    callers never sync: `MetadataQuorum` does before a follower acknowledges, and
    `setRaftCommitIndex` (the leader's next step after counting itself) does."""

    # FileJournal's private state, read and replaced here (pysyncobj 0.3.17, pinned).
    _FileJournal__journal: list[tuple[bytes, int, int]]
    _FileJournal__journalFile: ResizableFile
    _FileJournal__currentOffset: int
    _FileJournal__metaStorer: MetaStorer

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._FileJournal__metaStorer = DurableMetaStorer(journal_file + ".meta")
        self._path = journal_file
        self._dirty = True  # created or loaded: make it (and its directory entry) durable once
        self.syncs = 0  # msyncs done (tests, metrics)
        self.sync()
        fsync_dir(os.path.dirname(journal_file) or ".")

    def sync(self) -> None:
        if self._dirty:
            self._FileJournal__journalFile.flush()  # mmap.flush(): msync(MS_SYNC)
            self._dirty = False
            self.syncs += 1

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self._dirty = True

    def clear(self) -> None:
        super().clear()
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802
        super().deleteEntriesFrom(entryFrom)
        self._dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        """Compaction after a snapshot: keep entries [entryTo:] in a new file renamed over this
        one. pysyncobj renamed the snapshot in place just before: the first directory fsync
        makes that rename durable before any entry it covers is dropped."""
        directory = os.path.dirname(self._path) or "."
        fsync_dir(directory)
        self.sync()
        kept = list(self._FileJournal__journal[entryTo:])
        tmp = self._path + ".compacting"
        body = bytearray()
        for command, idx, term in kept:
            record = struct.pack("<QQ", idx, term) + bytes(command)
            body += _SIZE.pack(len(record)) + record + _SIZE.pack(len(record))
        header = bytearray(self._FileJournal__getDefaultHeader())
        end_offset = FIRST_RECORD_OFFSET + len(body)
        header[LAST_RECORD_OFFSET_OFFSET:LAST_RECORD_OFFSET_OFFSET + 4] = _SIZE.pack(end_offset)
        with open(tmp, "wb") as f:
            f.write(bytes(header) + bytes(body))
            f.flush()
            os.fsync(f.fileno())
        self._FileJournal__journalFile._destroy()
        os.replace(tmp, self._path)
        fsync_dir(directory)
        self._FileJournal__journalFile = ResizableFile(self._path)
        self._FileJournal__journal = kept
        self._FileJournal__currentOffset = end_offset
        self._dirty = False

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802
        self.sync()
        super().setRaftCommitIndex(raftCommitIndex)


# pysyncobj creates its journal inside SyncObj.__init__ (`createJournal(conf.journalFile)`),
# on the constructing thread, before its tick thread starts. `durable_journals()` makes that
# one call build a DurableJournal; every other SyncObj (other threads, or outside the block)
# gets pysyncobj's own. The wrapper is installed once, at import.
_factory = threading.local()
_pysyncobj_create_journal = pysyncobj_journal.createJournal


def _create_journal(journal_file: str | None = None) -> object:
    if journal_file is not None and getattr(_factory, "durable", False):
        return DurableJournal(journal_file)
    return _pysyncobj_create_journal(journal_file)


pysyncobj_syncobj.createJournal = _create_journal


@contextlib.contextmanager
def durable_journals(enabled: bool) -> Iterator[None]:
    previous = getattr(_factory, "durable", False)
    _factory.durable = enabled
    try:
        yield
    finally:
        _factory.durable = previous


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
