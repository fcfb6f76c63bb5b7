"""Producer state of one partition replica: idempotence and transaction bookkeeping.

Theory of operation
-------------------
Every idempotent batch carries (producer_id, producer_epoch, base_sequence, record_count).
Per producer id this module keeps its epoch, the metadata of its last
`PRODUCER_BATCHES_RETAINED` batches (first/last sequence, first/last offset, max
timestamp), the first offset of its open transaction, the coordinator epoch of the last
marker and its last timestamp. It never touches disk, clock or network:

* `validate(header, now_ms)` (leader only) answers APPEND, DUPLICATE (with the original
  offsets) or REJECT (an `ErrorCode`) without mutating anything. The rules follow Kafka
  (docs/reference/kafka-eos.md section 1), in order: malformed header ->
  INVALID_RECORD; exact (epoch, first_seq, last_seq) match of a retained batch ->
  DUPLICATE; epoch < current -> INVALID_PRODUCER_EPOCH; transaction state; new epoch ->
  first_seq == 0; same epoch -> first_seq == last_seq + 1 (mod 2^31), and a batch wholly
  older than the retained window -> DUPLICATE_SEQUENCE_NUMBER (a retry whose original
  offsets are forgotten: never appended twice). An unknown producer must start at 0 (else
  UNKNOWN_PRODUCER_ID: its state expired or was evicted). Non-idempotent batches
  (producer id -1) skip every producer check.
* `validate_marker(...)` checks a COMMIT/ABORT marker: stale producer epoch ->
  INVALID_PRODUCER_EPOCH, older coordinator epoch -> TRANSACTION_COORDINATOR_FENCED.
* `apply(header, marker)` updates the state after the batch is in the log. Leaders and
  followers both call it, in log order, for every batch; followers never validate, so
  `apply` never refuses. A marker closes the producer's open transaction and returns a
  `CompletedTxn` so the caller can fill the aborted-transaction index and move the LSO.

KIP-890: a marker may carry a bumped producer epoch. It then clears the retained batches,
so the producer's next batch (same, new epoch) must start at sequence 0. A data batch with
a *newer* epoch while the producer still has an open transaction is refused with
CONCURRENT_TRANSACTIONS (retriable): accepting it would glue the new transaction onto the
old one and the old marker, now carrying a stale epoch, would be refused forever (a
hanging transaction).

Bounded table (policy when full): at most `max_producers` producers are tracked. A new
producer evicts the least recently used producer *without* an open transaction; if every
tracked producer has an open transaction, `validate` refuses the new producer with
TOO_MANY_PRODUCERS (retriable; open transactions end by commit, abort or the coordinator's
timeout). `apply` evicts the same way, so leader and followers evict the same producers,
but never refuses: only replication from a leader with a larger bound can push a follower
past its own bound. Markers for an untracked producer are not tracked when no room can be
made (there is no transaction to close, and losing the epoch fence equals an expiry).

Expiry: `expire(now_ms)` drops producers idle for `expiration_ms` (never one with an open
transaction). "Idle" is measured against the batch max timestamp (Kafka does the same), so
a replay after a restart ages producers exactly as before; and, on this replica's monotonic
clock, since the first sweep after its last batch, so neither a step of this host's wall clock
nor a client clock far behind expires a producer that wrote within `expiration_ms` (an expired
producer gets UNKNOWN_PRODUCER_ID and recovers per KIP-360, but a retry of its last batch would
no longer be deduplicated).
Each replica sweeps on its own clock; expiry never touches open transactions, so the LSO
and the aborted index stay identical on every replica.

Snapshots: a struct-packed, versioned, CRC32C-checked encoding (layout at `snapshot()`):
fixed-width fields, ~31 bytes per producer + 36 per retained batch (about 2 MB for 10,000
producers), no schema dependency in the storage format, and encoding cost is one
`struct.pack` per row. Producers are stored in LRU order so eviction order survives.

Invariants (checked by `check_invariants`, used by tests):
* `_idle` holds exactly the tracked producers without an open transaction, in LRU order;
  `_producers` is in LRU order too (every apply moves the producer to the end).
* `_open_txns` maps producer id -> first offset of its open transaction, in increasing
  first offset (transactions open in log order), so its first value is the first
  unstable offset.
* every retained batch belongs to the producer's current epoch.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import struct

import crc32c as _crc32c
from semel import limits
from semel.invariant import invariant
from semel.sentinels import NO_OFFSET
from semel.storage.batch import BatchHeader, Marker
from semel.v1.common_pb2 import ErrorCode

SEQUENCE_MODULUS = 1 << 31  # sequences wrap from 2^31 - 1 to 0
_HALF_SEQUENCE_SPACE = 1 << 30
PRODUCER_EPOCH_MAX = (1 << 15) - 1
NO_COORDINATOR_EPOCH = -1


class Outcome(enum.Enum):
    APPEND = "append"
    DUPLICATE = "duplicate"  # a retry of a retained batch: append nothing, answer the original offsets
    REJECT = "reject"


@dataclasses.dataclass(frozen=True, slots=True)
class AppendDecision:
    outcome: Outcome
    error: ErrorCode = ErrorCode.NONE
    message: str = ""
    # DUPLICATE only: offsets the batch got when it was first appended.
    first_offset: int = NO_OFFSET
    last_offset: int = NO_OFFSET

    @property
    def ok(self) -> bool:
        return self.outcome is not Outcome.REJECT


APPEND = AppendDecision(Outcome.APPEND)


def _reject(error: ErrorCode, message: str) -> AppendDecision:
    return AppendDecision(Outcome.REJECT, error, message)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchMetadata:
    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int
    timestamp_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class CompletedTxn:
    """A transaction closed by a marker at `last_offset` (the marker's offset)."""

    producer_id: int
    first_offset: int
    last_offset: int
    aborted: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ProducerInfo:
    """One row of "describe producers"."""

    producer_id: int
    producer_epoch: int
    last_sequence: int  # -1: none in this epoch
    last_timestamp_ms: int
    coordinator_epoch: int  # -1: never saw a marker
    txn_first_offset: int | None  # first offset of the open transaction


@dataclasses.dataclass(frozen=True, slots=True)
class ProducerStateConfig:
    max_producers: int = limits.MAX_PRODUCERS_PER_PARTITION
    expiration_ms: int = limits.PRODUCER_ID_EXPIRATION_MS_DEFAULT
    batches_retained: int = limits.PRODUCER_BATCHES_RETAINED

    def __post_init__(self) -> None:
        invariant(self.max_producers >= 1, "max_producers must be >= 1")
        invariant(self.expiration_ms >= 0, "expiration_ms must be >= 0")
        invariant(1 <= self.batches_retained <= 255, "batches_retained must be in [1, 255]")


class SnapshotError(Exception):
    """The snapshot bytes are corrupt or of an unknown version (fall back to an older one)."""


class _Producer:
    """Mutable per-producer entry; only this module touches it."""

    __slots__ = ("producer_id", "producer_epoch", "batches", "txn_first_offset", "coordinator_epoch", "last_timestamp_ms")

    def __init__(self, producer_id: int, producer_epoch: int, batches_retained: int) -> None:
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.batches: collections.deque[BatchMetadata] = collections.deque(maxlen=batches_retained)
        self.txn_first_offset = NO_OFFSET
        self.coordinator_epoch = NO_COORDINATOR_EPOCH
        self.last_timestamp_ms = -1

    def set_epoch(self, producer_epoch: int) -> None:
        if producer_epoch != self.producer_epoch:
            self.producer_epoch = producer_epoch
            self.batches.clear()  # sequences restart with a new epoch


def _seq_before(a: int, b: int) -> bool:
    """True if sequence `a` comes before `b` in the wrapping sequence space."""
    return 0 < (b - a) % SEQUENCE_MODULUS < _HALF_SEQUENCE_SPACE


def _header_problem(header: BatchHeader) -> str | None:
    """Why the producer fields of an idempotent batch header are malformed, or None."""
    if header.record_count < 1:
        return f"record_count {header.record_count} < 1"
    if header.last_offset_delta != header.record_count - 1:
        return f"last_offset_delta {header.last_offset_delta} != record_count - 1"
    if header.producer_id < 0:
        return f"producer_id {header.producer_id} < 0"
    if not 0 <= header.producer_epoch <= PRODUCER_EPOCH_MAX:
        return f"producer_epoch {header.producer_epoch} outside [0, {PRODUCER_EPOCH_MAX}]"
    if not 0 <= header.base_sequence < SEQUENCE_MODULUS:
        return f"base_sequence {header.base_sequence} outside [0, 2^31)"
    return None


class ProducerStateManager:
    """Producer state of one partition replica (see the module docstring)."""

    def __init__(self, config: ProducerStateConfig | None = None, *, end_offset: int = 0) -> None:
        self.config = config or ProducerStateConfig()
        # producer id -> entry, least recently used first.
        self._producers: dict[int, _Producer] = {}
        # producer ids without an open transaction, least recently used first (eviction order).
        self._idle: dict[int, None] = {}
        # producer id -> first offset of its open transaction, in increasing first offset.
        self._open_txns: dict[int, int] = {}
        # Next offset after the last applied batch: the state covers every batch below it.
        self.end_offset = end_offset
        # Expiry does not trust the wall clock alone (it may be stepped): producer id -> the
        # monotonic time `expire` first saw it after its last batch. Producers touched (or
        # loaded) since the last `expire` wait in `_unclocked`. In memory only: after a restart
        # the timers start at the first sweep, which makes an expiry later, never earlier.
        self._clock_start: dict[int, int] = {}
        self._unclocked: set[int] = set()

    # --- queries ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._producers)

    def __contains__(self, producer_id: int) -> bool:
        return producer_id in self._producers

    def opens_transaction(self, header: BatchHeader) -> bool:
        """True if appending this transactional batch would open a transaction: the point
        where a KIP-890 leader asks the coordinator whether the partition is in the
        producer's current transaction before accepting it."""
        if not header.is_transactional or header.is_control:
            return False
        entry = self._producers.get(header.producer_id)
        return entry is None or entry.txn_first_offset < 0

    def first_unstable_offset(self) -> int | None:
        """First offset of the oldest open transaction (the LSO bound), or None."""
        return next(iter(self._open_txns.values()), None)

    def open_transactions(self) -> dict[int, int]:
        """producer id -> first offset of its open transaction (a copy)."""
        return dict(self._open_txns)

    def producer(self, producer_id: int) -> ProducerInfo | None:
        entry = self._producers.get(producer_id)
        return None if entry is None else self._info(entry)

    def describe_producers(self) -> list[ProducerInfo]:
        return [self._info(entry) for entry in self._producers.values()]

    def retained_batches(self, producer_id: int) -> list[BatchMetadata]:
        entry = self._producers.get(producer_id)
        return [] if entry is None else list(entry.batches)

    @staticmethod
    def _info(entry: _Producer) -> ProducerInfo:
        return ProducerInfo(
            producer_id=entry.producer_id,
            producer_epoch=entry.producer_epoch,
            last_sequence=entry.batches[-1].last_seq if entry.batches else -1,
            last_timestamp_ms=entry.last_timestamp_ms,
            coordinator_epoch=entry.coordinator_epoch,
            txn_first_offset=entry.txn_first_offset if entry.txn_first_offset >= 0 else None,
        )

    # --- validation (leader only, never mutates) ---------------------------------------

    def validate(self, header: BatchHeader, now_ms: int) -> AppendDecision:
        """Decide whether a produced data batch may be appended.

        `now_ms` is part of the contract for future time-based checks; expiry itself is
        swept by `expire(now_ms)` so that validation depends on the state alone.
        """
        del now_ms
        if header.is_control:
            return _reject(ErrorCode.INVALID_RECORD, "control batches are written by the coordinator (markers)")
        if header.producer_id == -1:
            return self._validate_plain(header)
        problem = _header_problem(header)
        if problem is not None:
            return _reject(ErrorCode.INVALID_RECORD, problem)
        entry = self._producers.get(header.producer_id)
        if entry is None:
            return self._validate_new_producer(header)
        epoch = header.producer_epoch
        if epoch == entry.producer_epoch:
            duplicate = self._find_duplicate(entry, header)
            if duplicate is not None:
                return duplicate
        if epoch < entry.producer_epoch:
            return _reject(
                ErrorCode.INVALID_PRODUCER_EPOCH,
                f"producer {header.producer_id}: epoch {epoch} < current {entry.producer_epoch}",
            )
        if entry.txn_first_offset >= 0:
            if epoch > entry.producer_epoch:
                return _reject(
                    ErrorCode.CONCURRENT_TRANSACTIONS,
                    f"producer {header.producer_id}: transaction of epoch {entry.producer_epoch} "
                    f"opened at {entry.txn_first_offset} awaits its marker",
                )
            if not header.is_transactional:
                return _reject(
                    ErrorCode.INVALID_TXN_STATE,
                    f"producer {header.producer_id}: non-transactional batch inside an open transaction",
                )
        return self._check_sequence(entry, header)

    @staticmethod
    def _validate_plain(header: BatchHeader) -> AppendDecision:
        if header.record_count < 1 or header.last_offset_delta != header.record_count - 1:
            return _reject(ErrorCode.INVALID_RECORD, f"bad record_count {header.record_count}/delta")
        if header.is_transactional:
            return _reject(ErrorCode.INVALID_RECORD, "a transactional batch needs a producer id")
        return APPEND

    def _validate_new_producer(self, header: BatchHeader) -> AppendDecision:
        if header.base_sequence != 0:
            return _reject(
                ErrorCode.UNKNOWN_PRODUCER_ID,
                f"no state for producer {header.producer_id} (expired or evicted); "
                f"first sequence {header.base_sequence} != 0",
            )
        if len(self._producers) >= self.config.max_producers and not self._idle:
            return _reject(
                ErrorCode.TOO_MANY_PRODUCERS,
                f"{len(self._producers)} producers tracked, all with open transactions",
            )
        return APPEND

    @staticmethod
    def _find_duplicate(entry: _Producer, header: BatchHeader) -> AppendDecision | None:
        first_seq, last_seq = header.base_sequence, header.last_sequence
        for batch in entry.batches:
            if batch.first_seq == first_seq and batch.last_seq == last_seq:
                return AppendDecision(
                    Outcome.DUPLICATE, first_offset=batch.first_offset, last_offset=batch.last_offset
                )
        return None

    @staticmethod
    def _check_sequence(entry: _Producer, header: BatchHeader) -> AppendDecision:
        first_seq = header.base_sequence
        if header.producer_epoch > entry.producer_epoch or not entry.batches:
            # A new epoch, or an epoch opened by a marker (KIP-890): sequences restart at 0.
            if first_seq != 0:
                return _reject(
                    ErrorCode.OUT_OF_ORDER_SEQUENCE,
                    f"producer {header.producer_id}: epoch {header.producer_epoch} must start at "
                    f"sequence 0, got {first_seq}",
                )
            return APPEND
        last_seq = entry.batches[-1].last_seq
        if first_seq == (last_seq + 1) % SEQUENCE_MODULUS:
            return APPEND
        if _seq_before(header.last_sequence, entry.batches[0].first_seq):
            return _reject(
                ErrorCode.DUPLICATE_SEQUENCE_NUMBER,
                f"producer {header.producer_id}: sequences {first_seq}..{header.last_sequence} are "
                f"older than the retained batches (from {entry.batches[0].first_seq})",
            )
        return _reject(
            ErrorCode.OUT_OF_ORDER_SEQUENCE,
            f"producer {header.producer_id}: expected sequence {(last_seq + 1) % SEQUENCE_MODULUS}, got {first_seq}",
        )

    def validate_marker(self, producer_id: int, producer_epoch: int, marker: Marker) -> AppendDecision:
        """Decide whether a COMMIT/ABORT marker may be appended (never a DUPLICATE:
        duplicate markers are harmless and appended again, closing nothing)."""
        if producer_id < 0 or not 0 <= producer_epoch <= PRODUCER_EPOCH_MAX or marker.coordinator_epoch < 0:
            return _reject(
                ErrorCode.INVALID_RECORD,
                f"bad marker: producer {producer_id} epoch {producer_epoch} "
                f"coordinator epoch {marker.coordinator_epoch}",
            )
        entry = self._producers.get(producer_id)
        if entry is None:
            return APPEND
        if producer_epoch < entry.producer_epoch:
            return _reject(
                ErrorCode.INVALID_PRODUCER_EPOCH,
                f"marker for producer {producer_id}: epoch {producer_epoch} < current {entry.producer_epoch}",
            )
        if marker.coordinator_epoch < entry.coordinator_epoch:
            return _reject(
                ErrorCode.TRANSACTION_COORDINATOR_FENCED,
                f"marker for producer {producer_id}: coordinator epoch {marker.coordinator_epoch} "
                f"< last seen {entry.coordinator_epoch}",
            )
        return APPEND

    # --- apply (leaders and followers, in log order, never refuses) ----------------------

    def apply(self, header: BatchHeader, marker: Marker | None = None) -> CompletedTxn | None:
        """Record a batch that is now in the log. Control batches need their `marker`."""
        invariant(
            header.base_offset >= self.end_offset,
            f"apply out of log order: batch at {header.base_offset} < end offset {self.end_offset}",
        )
        self.end_offset = header.next_offset
        if header.producer_id < 0:
            return None
        if header.is_control:
            invariant(marker is not None, "a control batch is applied with its marker")
            assert marker is not None  # for the type checker
            return self._apply_marker(header, marker)
        entry = self._touch(header.producer_id, header.producer_epoch, tracked_if_full=True)
        assert entry is not None
        entry.set_epoch(header.producer_epoch)
        if header.base_sequence >= 0:
            entry.batches.append(
                BatchMetadata(
                    header.base_sequence,
                    header.last_sequence,
                    header.base_offset,
                    header.last_offset,
                    header.max_timestamp_ms,
                )
            )
        entry.last_timestamp_ms = header.max_timestamp_ms
        if header.is_transactional and entry.txn_first_offset < 0:
            entry.txn_first_offset = header.base_offset
            self._open_txns[header.producer_id] = header.base_offset
        if entry.txn_first_offset < 0:
            self._idle[header.producer_id] = None
        return None

    def _apply_marker(self, header: BatchHeader, marker: Marker) -> CompletedTxn | None:
        producer_id = header.producer_id
        entry = self._touch(producer_id, header.producer_epoch, tracked_if_full=False)
        if entry is None:
            return None  # full of open transactions and nothing to close: not tracked
        if header.producer_epoch > entry.producer_epoch:
            entry.set_epoch(header.producer_epoch)
        entry.coordinator_epoch = max(entry.coordinator_epoch, marker.coordinator_epoch)
        entry.last_timestamp_ms = header.max_timestamp_ms
        completed = None
        if entry.txn_first_offset >= 0:
            completed = CompletedTxn(producer_id, entry.txn_first_offset, header.base_offset, not marker.commit)
            del self._open_txns[producer_id]
            entry.txn_first_offset = NO_OFFSET
        self._idle[producer_id] = None
        return completed

    def _touch(self, producer_id: int, producer_epoch: int, *, tracked_if_full: bool) -> _Producer | None:
        """Move a producer to the most recently used end (its `_idle` slot is removed; the
        caller re-adds it if it stays idle), creating it, with eviction, if unknown."""
        entry = self._producers.pop(producer_id, None)
        if entry is None:
            while len(self._producers) >= self.config.max_producers and self._idle:
                self._evict(next(iter(self._idle)))
            if len(self._producers) >= self.config.max_producers and not tracked_if_full:
                return None
            entry = _Producer(producer_id, producer_epoch, self.config.batches_retained)
        else:
            self._idle.pop(producer_id, None)
        self._producers[producer_id] = entry
        self._unclocked.add(producer_id)
        return entry

    def _evict(self, producer_id: int) -> None:
        entry = self._producers.pop(producer_id)
        invariant(entry.txn_first_offset < 0, f"evicting producer {producer_id} with an open transaction")
        del self._idle[producer_id]
        self._clock_start.pop(producer_id, None)
        self._unclocked.discard(producer_id)

    # --- expiry ---------------------------------------------------------------------

    def expire(self, now_ms: int, monotonic_ms: int) -> list[int]:
        """Drop producers idle for at least `expiration_ms` and without an open
        transaction; returns their ids. O(tracked producers): call it periodically.

        Idle on both clocks: by the wall clock (`now_ms` against the batch max timestamp, as
        Kafka) and by this process's monotonic clock since this method first saw the
        producer's last batch, so a step of this host's wall clock (or a producer clock far
        behind) never expires a producer that wrote within `expiration_ms`. The monotonic
        timer starts at the first sweep after a batch: at most one sweep interval later."""
        for pid in self._unclocked:
            self._clock_start[pid] = monotonic_ms
        self._unclocked.clear()
        deadline_ms = now_ms - self.config.expiration_ms
        expired = [pid for pid in self._idle if self._producers[pid].last_timestamp_ms <= deadline_ms
                   and monotonic_ms - self._clock_start.get(pid, monotonic_ms) >= self.config.expiration_ms]
        for pid in expired:
            self._evict(pid)
        return expired

    # --- snapshots ------------------------------------------------------------------
    # Layout (big-endian), version 1:
    #   header   magic "SPST", version u16, end_offset i64, producer count u32
    #   producer producer_id i64, epoch i16, coordinator_epoch i32, last_timestamp_ms i64,
    #            txn_first_offset i64 (-1: none), retained batch count u8
    #   batch    first_seq i32, last_seq i32, first_offset i64, last_offset i64, timestamp_ms i64
    #   trailer  CRC32C u32 of everything before it
    # Producers are written least recently used first, so eviction order survives a restore.

    _MAGIC = b"SPST"
    _VERSION = 1
    _HEADER = struct.Struct(">4sHqI")
    _PRODUCER = struct.Struct(">qhiqqB")
    _BATCH = struct.Struct(">iiqqq")
    _CRC = struct.Struct(">I")

    def snapshot(self) -> bytes:
        """The whole state as bytes; it covers every batch below `self.end_offset`."""
        parts = [self._HEADER.pack(self._MAGIC, self._VERSION, self.end_offset, len(self._producers))]
        for entry in self._producers.values():
            parts.append(
                self._PRODUCER.pack(
                    entry.producer_id,
                    entry.producer_epoch,
                    entry.coordinator_epoch,
                    entry.last_timestamp_ms,
                    entry.txn_first_offset,
                    len(entry.batches),
                )
            )
            for b in entry.batches:
                parts.append(self._BATCH.pack(b.first_seq, b.last_seq, b.first_offset, b.last_offset, b.timestamp_ms))
        body = b"".join(parts)
        return body + self._CRC.pack(_crc32c.crc32c(body))

    @staticmethod
    def snapshot_end_offset(data: bytes) -> int:
        """The offset a snapshot covers, read from its header (no CRC check)."""
        if len(data) < ProducerStateManager._HEADER.size:
            raise SnapshotError("snapshot shorter than its header")
        return int(ProducerStateManager._HEADER.unpack_from(data, 0)[2])

    @classmethod
    def from_snapshot(cls, data: bytes, config: ProducerStateConfig | None = None) -> ProducerStateManager:
        """Rebuild a manager from `snapshot()` bytes; raises SnapshotError if they are bad.

        A snapshot holding more producers than `config.max_producers` (the bound was
        lowered) keeps them all; the next new producers evict down to the bound."""
        if len(data) < cls._HEADER.size + cls._CRC.size:
            raise SnapshotError(f"snapshot of {len(data)} bytes is too short")
        body, (crc,) = data[: -cls._CRC.size], cls._CRC.unpack_from(data, len(data) - cls._CRC.size)
        if _crc32c.crc32c(body) != crc:
            raise SnapshotError("snapshot CRC mismatch")
        magic, version, end_offset, count = cls._HEADER.unpack_from(body, 0)
        if magic != cls._MAGIC or version != cls._VERSION:
            raise SnapshotError(f"unknown snapshot magic {magic!r} version {version}")
        manager = cls(config, end_offset=end_offset)
        try:
            pos = manager._load_producers(body, cls._HEADER.size, count)
        except struct.error as exc:
            raise SnapshotError(f"truncated snapshot: {exc}") from exc
        if pos != len(body):
            raise SnapshotError(f"{len(body) - pos} trailing bytes in snapshot")
        return manager

    def _load_producers(self, body: bytes, pos: int, count: int) -> int:
        open_txns: list[tuple[int, int]] = []
        for _ in range(count):
            pid, epoch, coordinator_epoch, last_ts, txn_first, n_batches = self._PRODUCER.unpack_from(body, pos)
            pos += self._PRODUCER.size
            if pid < 0 or pid in self._producers:
                raise SnapshotError(f"bad or repeated producer id {pid} in snapshot")
            # A snapshot from a larger `batches_retained` keeps only the newest batches.
            entry = _Producer(pid, epoch, self.config.batches_retained)
            entry.coordinator_epoch, entry.last_timestamp_ms, entry.txn_first_offset = coordinator_epoch, last_ts, txn_first
            for _ in range(n_batches):
                entry.batches.append(BatchMetadata(*self._BATCH.unpack_from(body, pos)))
                pos += self._BATCH.size
            self._producers[pid] = entry
            self._unclocked.add(pid)
            if txn_first >= 0:
                open_txns.append((txn_first, pid))
            else:
                self._idle[pid] = None
        for first_offset, pid in sorted(open_txns):
            self._open_txns[pid] = first_offset
        return pos

    # --- test support -----------------------------------------------------------------

    def state_key(self) -> tuple[object, ...]:
        """A comparable value of the whole state (including LRU order), for tests."""
        return (
            self.end_offset,
            tuple(
                (
                    e.producer_id,
                    e.producer_epoch,
                    e.coordinator_epoch,
                    e.last_timestamp_ms,
                    e.txn_first_offset,
                    tuple(e.batches),
                )
                for e in self._producers.values()
            ),
            tuple(self._idle),
            tuple(self._open_txns.items()),
        )

    def check_invariants(self) -> None:
        idle = [pid for pid, e in self._producers.items() if e.txn_first_offset < 0]
        invariant(list(self._idle) == idle, "_idle is not the LRU-ordered set of producers without a transaction")
        opened = {pid: e.txn_first_offset for pid, e in self._producers.items() if e.txn_first_offset >= 0}
        invariant(self._open_txns == opened, "_open_txns disagrees with the entries")
        firsts = list(self._open_txns.values())
        invariant(firsts == sorted(firsts), "_open_txns is not in first-offset order")

