"""Aborted-transaction index: which offset ranges belong to aborted transactions.

A `read_committed` fetch needs, for the range it returns, the aborted transactions whose
records it must drop (Kafka ships this list with the fetch; Semel may filter in the broker).
An entry is (producer_id, first_offset, last_offset, last_stable_offset): the transaction's
first data offset, the offset of its ABORT marker, and the LSO when the marker was written.

Entries arrive in marker order, so `last_offset` strictly increases; `first_offset` does not
(a long transaction may start before a short one that aborted earlier).

Persistence: one append-only file per partition (`aborted.txnindex`) of 36-byte records
(four big-endian int64 and a CRC32C of them). `add` appends one record with one write();
truncation and retention rewrite the file atomically (rare). On load a torn or corrupt last
record is dropped (it was being written when the process died); a corrupt record in the middle
raises, because silently losing an abort would show aborted data to read_committed readers.

The pure part is `AbortedTxnIndex` with `entries`; `AbortedTxnFile` is the file shell.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

import crc32c as _crc32c
from semel import limits
from semel.storage.checkpoint import write_all, write_atomic

_RECORD = struct.Struct(">qqqq")
_CRC = struct.Struct(">I")
RECORD_BYTES = _RECORD.size + _CRC.size


class CorruptAbortedIndexError(Exception):
    """A record in the middle of the aborted-transaction index failed its CRC."""


@dataclasses.dataclass(frozen=True, slots=True)
class AbortedTxn:
    producer_id: int
    first_offset: int
    last_offset: int
    last_stable_offset: int

    def encode(self) -> bytes:
        body = _RECORD.pack(self.producer_id, self.first_offset, self.last_offset, self.last_stable_offset)
        return body + _CRC.pack(_crc32c.crc32c(body))


class AbortedTxnIndex:
    """Entries ordered by last_offset, with persistence through callbacks."""

    def __init__(
        self,
        entries: list[AbortedTxn] | None = None,
        *,
        on_add: Callable[[AbortedTxn], None] | None = None,
        on_rewrite: Callable[[list[AbortedTxn]], None] | None = None,
    ) -> None:
        self._entries: list[AbortedTxn] = list(entries or [])
        self._lasts = [e.last_offset for e in self._entries]
        # The longest [first_offset, last_offset] span held: entries whose last_offset is at least
        # `end + _max_span` start at or after `end`, so a range query stops there (reads from the
        # start of a log with many aborts must not scan every later entry).
        self._max_span = max((e.last_offset - e.first_offset for e in self._entries), default=0)
        self._on_add = on_add
        self._on_rewrite = on_rewrite

    @property
    def entries(self) -> list[AbortedTxn]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, txn: AbortedTxn) -> None:
        """Record an abort. Replaying an entry already present is a no-op (log replay)."""
        if txn.first_offset > txn.last_offset or txn.first_offset < 0:
            raise ValueError(f"bad aborted transaction range {txn}")
        if self._lasts and txn.last_offset <= self._lasts[-1]:
            i = bisect_left(self._lasts, txn.last_offset)
            if i < len(self._entries) and self._entries[i] == txn:
                return
            raise ValueError(f"aborted transaction {txn} does not come after the last one ({self._entries[-1]})")
        if len(self._entries) >= limits.MAX_ABORTED_TXNS_PER_PARTITION:
            raise ValueError(f"more than {limits.MAX_ABORTED_TXNS_PER_PARTITION} aborted transactions retained")
        if self._on_add is not None:
            self._on_add(txn)
        self._entries.append(txn)
        self._lasts.append(txn.last_offset)
        self._max_span = max(self._max_span, txn.last_offset - txn.first_offset)

    def in_range(self, start: int, end: int) -> list[AbortedTxn]:
        """Entries whose [first_offset, last_offset] intersects [start, end)."""
        i = bisect_left(self._lasts, start)  # entries before i end before `start`
        j = bisect_left(self._lasts, end + self._max_span, lo=i)  # from j on they start at or after `end`
        return [e for e in self._entries[i:j] if e.first_offset < end]

    def truncate_to(self, offset: int) -> None:
        """The log was truncated to `offset`: forget aborts whose marker is at or after it."""
        self._replace(self._entries[: bisect_left(self._lasts, offset)])

    def truncate_from_start(self, log_start_offset: int) -> None:
        """Retention: forget aborts that end before the log start."""
        self._replace(self._entries[bisect_left(self._lasts, log_start_offset) :])

    def clear(self) -> None:
        self._replace([])

    def _replace(self, entries: list[AbortedTxn]) -> None:
        if len(entries) == len(self._entries):
            return
        if self._on_rewrite is not None:
            self._on_rewrite(entries)
        self._entries = entries
        self._lasts = [e.last_offset for e in entries]
        self._max_span = max((e.last_offset - e.first_offset for e in entries), default=0)


def decode_records(data: bytes) -> list[AbortedTxn]:
    """Records of an index file; drops a torn/corrupt last record, raises on a corrupt middle one."""
    entries = []
    whole = len(data) // RECORD_BYTES
    for i in range(whole):
        pos = i * RECORD_BYTES
        body = data[pos : pos + _RECORD.size]
        (crc,) = _CRC.unpack_from(data, pos + _RECORD.size)
        if _crc32c.crc32c(body) != crc:
            if i == whole - 1 and len(data) == whole * RECORD_BYTES:
                break  # the last record was being written
            raise CorruptAbortedIndexError(f"aborted-transaction record {i} fails its CRC")
        entries.append(AbortedTxn(*_RECORD.unpack(body)))
    return entries


class AbortedTxnFile:
    """The file shell: one fd opened for appends, atomic rewrites."""

    def __init__(self, path: Path, *, sync: bool) -> None:
        self.path = path
        self._sync = sync
        self._fd: int | None = None

    def load(self) -> list[AbortedTxn]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        entries = decode_records(data)
        if len(data) != len(entries) * RECORD_BYTES:
            self.rewrite(entries)  # cut the torn tail so the next append lands on a boundary
        return entries

    def append(self, txn: AbortedTxn) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        write_all(self._fd, txn.encode())

    def rewrite(self, entries: list[AbortedTxn]) -> None:
        self.close()
        write_atomic(self.path, b"".join(e.encode() for e in entries), sync=self._sync)

    def fsync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def fileno(self) -> int | None:
        """The append descriptor; None when nothing was appended since the last open or
        rewrite (a rewrite is synced by itself when the file syncs)."""
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
