"""The `__transaction_state` log: record encoding and the RocksDB materialized view.

Records. Every state change of a transactional id is one record of a normal data batch
(`semel.storage.batch`, no producer id, payload = a `semel.v1.Records` message): key = the
UTF-8 transactional id, value = a serialized `semel.v1.TransactionLogRecord` holding the
whole metadata of the id (the last record of a key wins), or an empty value = tombstone
(the id expired and was removed). The coordinator encodes a batch with `encode_records`
and appends it as leader with acks=all; only then does the state machine `complete`.

View. Replaying a whole partition on every coordinator move is slow, so each broker keeps
a materialized view of the *committed* records (offsets below the high watermark: they
are never truncated, unclean elections aside) in its RocksDB (`semel.storage.kv`, namespace
`txn_state`): one key per transactional id plus the offset the view covers
(`next_offset`), always written in one atomic `KvBatch`. Loading a coordinator partition =
the view + a replay of the log from `next_offset` to the high watermark; the replayed
records are then folded into the view in one atomic write. A view ahead of the committed
log (the log lost records: unclean election, replaced disk) is discarded and the
partition is rebuilt from the log start; a view behind the log start cannot be completed
(retention removed records it never saw) and loading refuses with `TxnLogGapError`.
A record or batch of the log that does not decode (only the coordinator writes the topic,
but a disk, a bug or an old client could have left one) is skipped by the load and reported
in `LoadedPartition.corrupt`: the shell logs it and counts it, and the partition loads.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from typing import Protocol

from semel import limits
from semel.coordinator.txn_state import (
    BumpReason,
    TransactionMetadata,
    TxnState,
    check_metadata,
)
from semel.coordinator.txn_wire import (
    bump_reason_to_proto,
    state_to_proto,
    txn_version_from_proto,
    txn_version_to_proto,
)
from semel.internal_topics import TRANSACTION_STATE_TOPIC
from semel.sentinels import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE
from semel.storage.batch import (
    BatchHeader,
    encode_batch,
    iter_batches,
)
from semel.storage.kv import KvBatch, KvStore, partition_key
from semel.storage.log import ReadResult
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2, txn_pb2

_OFFSET = struct.Struct(">Q")
_META_KEY = b"\x00"  # + nothing: the view's next_offset
_ID_KEY = b"\x01"  # + UTF-8 transactional id: its metadata (a TransactionLogRecord)

TXN_STATE_NAMESPACE = KvStore.namespace("txn_state")


class CorruptTxnLogError(Exception):
    """A record of the state log (or the view) does not decode to valid metadata."""


class TxnLogGapError(Exception):
    """The log no longer holds records the view never saw: the partition cannot be loaded."""


@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One decoded record: `metadata is None` is a tombstone."""

    offset: int
    transactional_id: str
    metadata: TransactionMetadata | None


# --- records -------------------------------------------------------------------------------


def to_proto(meta: TransactionMetadata) -> txn_pb2.TransactionLogRecord:
    return txn_pb2.TransactionLogRecord(
        transactional_id=meta.transactional_id,
        producer_id=meta.producer_id,
        producer_epoch=meta.producer_epoch,
        previous_producer_id=meta.prev_producer_id,
        last_producer_epoch=meta.last_producer_epoch,
        transaction_timeout_ms=meta.timeout_ms,
        state=state_to_proto(meta.state),
        partitions=[txn_pb2.TopicPartition(topic=tp.topic, partition=tp.partition) for tp in meta.partitions],
        transaction_start_time_ms=meta.txn_start_ms,
        last_update_time_ms=meta.last_update_ms,
        last_bump_reason=bump_reason_to_proto(meta.bump_reason),
        transaction_version=txn_version_to_proto(meta.txn_version),
    )


def from_proto(record: txn_pb2.TransactionLogRecord) -> TransactionMetadata:
    """Raises CorruptTxnLogError when the record is not valid stored metadata."""
    try:
        meta = TransactionMetadata(
            transactional_id=record.transactional_id,
            producer_id=record.producer_id,
            producer_epoch=record.producer_epoch,
            prev_producer_id=record.previous_producer_id,
            last_producer_epoch=record.last_producer_epoch,
            timeout_ms=record.transaction_timeout_ms,
            state=TxnState(record.state),
            partitions=tuple(TopicPartition(p.topic, p.partition) for p in record.partitions),
            txn_start_ms=record.transaction_start_time_ms,
            last_update_ms=record.last_update_time_ms,
            bump_reason=BumpReason(record.last_bump_reason),
            txn_version=txn_version_from_proto(record.transaction_version),
        )
        check_metadata(meta)
    except (ValueError, AssertionError) as e:
        raise CorruptTxnLogError(f"bad transaction log record for {record.transactional_id!r}: {e}") from e
    return meta


def encode_value(meta: TransactionMetadata | None) -> bytes:
    """The record value: the serialized metadata, or b"" for a tombstone."""
    if meta is None:
        return b""
    value = to_proto(meta).SerializeToString(deterministic=True)
    assert value, "a metadata record is never empty (the id is set)"
    return bytes(value)


def decode_value(transactional_id: str, value: bytes) -> TransactionMetadata | None:
    if not value:
        return None
    record = txn_pb2.TransactionLogRecord()
    try:
        record.ParseFromString(value)
    except Exception as e:  # protobuf raises its DecodeError
        raise CorruptTxnLogError(f"undecodable record for {transactional_id!r}: {e}") from e
    meta = from_proto(record)
    if meta.transactional_id != transactional_id:
        raise CorruptTxnLogError(f"record key {transactional_id!r} holds metadata of {meta.transactional_id!r}")
    return meta


def encode_records(entries: Sequence[tuple[str, TransactionMetadata | None]], now_ms: int) -> bytes:
    """One batch (base offset 0: the leader stamps offsets) holding `entries` in order."""
    if not entries:
        raise ValueError("a batch holds at least one record")
    records = common_pb2.Records(
        records=[
            common_pb2.Record(offset_delta=i, key=tid.encode("utf-8"), value=encode_value(meta))
            for i, (tid, meta) in enumerate(entries)
        ]
    )
    header = BatchHeader(
        base_offset=0,
        last_offset_delta=len(entries) - 1,
        leader_epoch=0,
        producer_id=NO_PRODUCER_ID,
        producer_epoch=NO_PRODUCER_EPOCH,
        base_sequence=NO_SEQUENCE,
        record_count=len(entries),
        attributes=0,
        base_timestamp_ms=now_ms,
        max_timestamp_ms=now_ms,
    )
    return bytes(encode_batch(header, records.SerializeToString(deterministic=True)))


def decode_records(data: bytes | memoryview, from_offset: int = 0,
                   corrupt: list[CorruptTxnLogError] | None = None) -> list[LogEntry]:
    """Every record at offset >= `from_offset` in the whole batches of `data`, in order.

    An undecodable batch or record raises CorruptTxnLogError; with a `corrupt` list it is
    skipped instead and its error appended there (loading never wedges on one bad record)."""
    out: list[LogEntry] = []
    for header, payload in iter_batches(data):
        if header.is_control or header.last_offset < from_offset:
            continue
        records = common_pb2.Records()
        try:
            records.ParseFromString(bytes(payload))
        except Exception as e:
            error = CorruptTxnLogError(f"undecodable batch at offsets {header.base_offset}..{header.last_offset}: {e}")
            if corrupt is None:
                raise error from e
            corrupt.append(error)
            continue
        for record in records.records:
            offset = header.base_offset + record.offset_delta
            if offset < from_offset:
                continue
            try:
                tid = record.key.decode("utf-8")
                out.append(LogEntry(offset, tid, decode_value(tid, record.value)))
            except (UnicodeDecodeError, CorruptTxnLogError) as e:
                error = CorruptTxnLogError(f"undecodable record at offset {offset}: {e}")
                if corrupt is None:
                    raise error from e
                corrupt.append(error)
    return out


# --- the materialized view -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ViewState:
    next_offset: int  # every committed record below this offset is in `metadata`
    metadata: dict[str, TransactionMetadata]


class TxnStateView:
    """The view of one `__transaction_state` partition in the broker's RocksDB."""

    def __init__(
        self,
        kv: KvStore,
        partition: int,
        topic: str = TRANSACTION_STATE_TOPIC,
        *,
        scan_page_entries: int = limits.MAX_KV_SCAN_ENTRIES,
    ) -> None:
        if scan_page_entries < 1:
            raise ValueError("scan_page_entries must be >= 1")
        self.kv = kv
        self.partition = partition
        self._prefix = partition_key(topic, partition)
        self._page = scan_page_entries

    def read(self) -> ViewState:
        raw = self.kv.get(TXN_STATE_NAMESPACE, self._prefix + _META_KEY)
        next_offset = 0 if raw is None else _OFFSET.unpack(raw)[0]
        metadata: dict[str, TransactionMetadata] = {}
        start = self._prefix + _ID_KEY
        end = self._prefix + bytes([_ID_KEY[0] + 1])
        while True:
            rows = self.kv.scan(TXN_STATE_NAMESPACE, start, end, limit=self._page)
            for key, value in rows:
                tid = key[len(self._prefix) + 1 :].decode("utf-8")
                meta = decode_value(tid, bytes(value))
                if meta is None:
                    raise CorruptTxnLogError(f"view holds an empty value for {tid!r}")
                metadata[tid] = meta
            if len(rows) < self._page:
                return ViewState(next_offset, metadata)
            start = rows[-1][0] + b"\x00"

    def apply(self, entries: Iterable[LogEntry], next_offset: int, *, clear: bool = False, sync: bool = False) -> None:
        """Fold committed `entries` (in log order) in and record `next_offset`, atomically.
        `clear`: drop everything of this partition first (a rebuild)."""
        batch = KvBatch()
        if clear:
            batch.delete_range(TXN_STATE_NAMESPACE, self._prefix, self._prefix + b"\xff")
        for entry in entries:
            if entry.offset >= next_offset:
                raise ValueError(f"entry at {entry.offset} is not below the view's next offset {next_offset}")
            key = self._prefix + _ID_KEY + entry.transactional_id.encode("utf-8")
            if entry.metadata is None:
                batch.delete(TXN_STATE_NAMESPACE, key)
            else:
                batch.put(TXN_STATE_NAMESPACE, key, encode_value(entry.metadata))
        batch.put(TXN_STATE_NAMESPACE, self._prefix + _META_KEY, _OFFSET.pack(next_offset))
        self.kv.write(batch, sync=sync)

    def clear(self) -> None:
        batch = KvBatch()
        batch.delete_range(TXN_STATE_NAMESPACE, self._prefix, self._prefix + b"\xff")
        self.kv.write(batch)


# --- loading a coordinator partition -----------------------------------------------------


class CommittedLog(Protocol):
    """What loading needs of a partition log (`semel.storage.log.PartitionLog` fits)."""

    @property
    def log_start_offset(self) -> int: ...

    def read(self, offset: int, max_bytes: int, max_offset: int | None = None) -> ReadResult: ...


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedPartition:
    metadata: dict[str, TransactionMetadata]
    next_offset: int  # = the high watermark the load replayed to
    replayed_records: int
    rebuilt: bool  # the view was discarded (ahead of the committed log)
    corrupt: tuple[CorruptTxnLogError, ...] = ()  # undecodable batches/records skipped by the replay


def load_partition(
    view: TxnStateView,
    log: CommittedLog,
    high_watermark: int,
    *,
    chunk_bytes: int = limits.LOG_SCAN_CHUNK_BYTES,
    allow_partial_rebuild: bool = False,
) -> LoadedPartition:
    """The state of the partition up to `high_watermark` = view + replay of the log after it;
    the replay is folded into the view (one atomic write).

    Call it once this broker leads the partition *and* its high watermark has reached the log
    end offset it had when it became leader (until then the coordinator answers
    COORDINATOR_LOAD_IN_PROGRESS): every record an earlier leader committed is then below
    `high_watermark`, so the view can only be ahead of it when the log really lost records,
    and nothing loaded can be truncated away later.

    A rebuild from a log whose start is above 0 would silently forget every id whose
    records retention removed: it raises TxnLogGapError unless `allow_partial_rebuild`
    (an operator's decision; until compaction exists, give `__transaction_state` unlimited
    retention)."""
    state = view.read()
    rebuilt = state.next_offset > high_watermark
    metadata = {} if rebuilt else dict(state.metadata)
    start = log.log_start_offset if rebuilt else state.next_offset
    if rebuilt and start > 0 and not allow_partial_rebuild:
        raise TxnLogGapError(
            f"view of partition {view.partition} is ahead of the log (next offset {state.next_offset} > "
            f"high watermark {high_watermark}) and the log starts at {start}: a rebuild would be partial"
        )
    if start < log.log_start_offset:
        raise TxnLogGapError(
            f"view of partition {view.partition} covers offsets below {start}, the log starts at {log.log_start_offset}"
        )
    replayed: list[LogEntry] = []
    corrupt: list[CorruptTxnLogError] = []
    offset = start
    while offset < high_watermark:
        result = log.read(offset, chunk_bytes, high_watermark)
        data, next_offset = result.data, result.next_offset
        if not data or next_offset <= offset:
            raise TxnLogGapError(f"partition {view.partition}: no progress reading at {offset} (HW {high_watermark})")
        replayed.extend(e for e in decode_records(data, offset, corrupt) if e.offset < high_watermark)
        offset = next_offset
    for entry in replayed:
        if entry.metadata is None:
            metadata.pop(entry.transactional_id, None)
        else:
            metadata[entry.transactional_id] = entry.metadata
    if replayed or rebuilt or high_watermark != state.next_offset:
        view.apply(replayed, high_watermark, clear=rebuilt)
    return LoadedPartition(metadata, high_watermark, len(replayed), rebuilt, tuple(corrupt))
