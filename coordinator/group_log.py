"""__consumer_offsets on disk: batches of group records, a materialized view, loading.

* A batch of the internal topic is an ordinary `semel.storage.batch` batch whose payload is a
  `semel.v1.Records` message; each record's key/value are `group_records` encodings.
  Plain commits and group records travel in non-transactional batches; a TxnOffsetCommit
  in a transactional batch of its producer; the transaction coordinator's COMMIT/ABORT
  markers are control batches (payload `semel.v1.ControlRecord`).
* The **view** is the partition compacted into a key-value store (RocksDB via a small
  `ViewBackend`): the latest value per key (with the log offset that wrote it), the pending
  transactional offsets per producer, and `next_offset`, the log offset up to which it is
  applied. One batch is applied in one atomic write together with `next_offset`, so the view
  is always the state after some whole batch. Only batches below the high watermark may be
  applied (anything above may still be truncated away).
* **Loading** a coordinator partition (on becoming its leader) = replay the view's entries
  into a fresh `CoordinatorShard`, then replay (and add to the view) every batch of the log
  from `next_offset` on, markers included, so pending transactional offsets resolve exactly
  as they did live. The view bounds the replay: the log before `next_offset` is no longer
  needed for loading (it may be deleted once Semel has no other use for it).

Record keys in the view are re-encoded with `encode_key`, so equal keys are equal bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError
from semel import limits
from semel.coordinator.group_records import (
    GroupRecord,
    OffsetCommitKey,
    RecordDecodeError,
    decode_record,
    encode_key,
    encode_record,
)
from semel.coordinator.group_state import (
    GroupConfig,
    GroupDecision,
    GroupStateMachine,
    HeartbeatResponse,
)
from semel.coordinator.offsets import CommitDecision, OffsetsConfig, OffsetStore
from semel.invariant import invariant
from semel.sentinels import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE
from semel.storage.batch import (
    ATTR_TRANSACTIONAL,
    BatchHeader,
    decode_marker,
    encode_batch,
    iter_batches,
)
from semel.storage.kv import KvBatch, KvStore
from semel.v1 import common_pb2

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_META = b"M"
_RECORD = b"R"
_PENDING = b"P"
_CLEARING = b"clearing"  # meta value while clear() runs (a valid value is 8 bytes)


class ViewOutOfSyncError(Exception):
    """A batch does not continue the view (a gap, or the log was truncated below it)."""


# --- batches ----------------------------------------------------------------------------------


def encode_payload(records: Sequence[GroupRecord]) -> bytes:
    """A `semel.v1.Records` payload holding `records` at offset deltas 0, 1, ..."""
    msg = common_pb2.Records()
    for i, record in enumerate(records):
        key, value = encode_record(record)
        msg.records.add(offset_delta=i, key=key, value=value)
    return msg.SerializeToString(deterministic=True)


def decode_payload(payload: bytes | memoryview, base_offset: int = 0,
                   corrupt: list[str] | None = None) -> list[tuple[int, GroupRecord]]:
    """(offset delta, record) pairs of a data batch payload.

    An undecodable payload or record raises RecordDecodeError; with a `corrupt` list it is
    skipped and a message naming its offset appended there instead (loading and the tail
    never wedge on one bad record; the view and the shard skip the same ones)."""
    msg = common_pb2.Records()
    try:
        msg.ParseFromString(bytes(payload))  # (iter_batches yields views; the old walk copied too)
    except DecodeError as exc:
        if corrupt is None:
            raise RecordDecodeError(f"undecodable batch at offset {base_offset}: {exc}") from exc
        corrupt.append(f"undecodable batch at offset {base_offset}: {exc}")
        return []
    out: list[tuple[int, GroupRecord]] = []
    for r in msg.records:
        try:
            out.append((r.offset_delta, decode_record(r.key, r.value)))
        except RecordDecodeError as exc:
            if corrupt is None:
                raise
            corrupt.append(f"undecodable record at offset {base_offset + r.offset_delta}: {exc}")
    return out


def build_batch(
    records: Sequence[GroupRecord],
    now_ms: int,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
) -> bytes:
    """An encoded batch (base offset 0: the leader assigns offsets) holding `records`;
    transactional when `producer_id >= 0` (TxnOffsetCommit)."""
    invariant(len(records) > 0, "a batch needs at least one record")
    transactional = producer_id >= 0
    header = BatchHeader(
        base_offset=0,
        last_offset_delta=len(records) - 1,
        leader_epoch=0,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=len(records),
        attributes=ATTR_TRANSACTIONAL if transactional else 0,
        base_timestamp_ms=now_ms,
        max_timestamp_ms=now_ms,
    )
    return encode_batch(header, encode_payload(records))


def marker_kind(payload: bytes | memoryview, base_offset: int, corrupt: list[str]) -> bool | None:
    """The marker's commit flag, or None (and a message in `corrupt`) for an undecodable marker."""
    try:
        return decode_marker(payload).commit
    except DecodeError as exc:
        corrupt.append(f"undecodable marker at offset {base_offset}: {exc}")
        return None


# --- the shard: groups + offsets of one coordinator partition ----------------------------------


class CoordinatorShard:
    """In-memory state of one __consumer_offsets partition: groups and offsets."""

    def __init__(self, partition: int, group_config: GroupConfig | None = None,
                 offsets_config: OffsetsConfig | None = None) -> None:
        self.partition = partition
        self.groups = GroupStateMachine(group_config)
        self.offsets = OffsetStore(offsets_config)
        self.next_offset = 0  # every batch below it has been replayed
        # Undecodable batches/records skipped by replay_batch, not yet reported (`take_corrupt`);
        # bounded by what one replay between two reports reads.
        self.corrupt: list[str] = []
        self.corrupt_skipped = 0

    def take_corrupt(self) -> list[str]:
        """The skipped-record messages since the last call (the shell logs and counts them)."""
        out, self.corrupt = self.corrupt, []
        return out

    def replay_record(self, record: GroupRecord, record_offset: int, producer_id: int = NO_PRODUCER_ID) -> None:
        if isinstance(record.key, OffsetCommitKey):
            self.offsets.replay(record, record_offset, producer_id)
        else:
            invariant(producer_id < 0, "group records are never transactional")
            self.groups.replay(record)

    def replay_batch(self, header: BatchHeader, payload: bytes | memoryview) -> None:
        """Apply one batch of the log (data, transactional data, or a marker)."""
        before = len(self.corrupt)
        if header.is_control:
            commit = marker_kind(payload, header.base_offset, self.corrupt)
            if commit is not None:
                self.offsets.replay_marker(header.producer_id, commit)
        else:
            pid = header.producer_id if header.is_transactional else NO_PRODUCER_ID
            for delta, record in decode_payload(payload, header.base_offset, self.corrupt):
                self.replay_record(record, header.base_offset + delta, pid)
        self.corrupt_skipped += len(self.corrupt) - before
        self.next_offset = max(self.next_offset, header.next_offset)

    def complete_group(self, decision: GroupDecision, base_offset: int, monotonic_ms: int) -> HeartbeatResponse | None:
        """A group decision's records were appended at base_offset.. (durable); session
        timers restart at `monotonic_ms`."""
        response = self.groups.complete(decision, monotonic_ms)
        if decision.records:
            self.next_offset = max(self.next_offset, base_offset + len(decision.records))
        return response

    def complete_commit(self, decision: CommitDecision, base_offset: int) -> None:
        """An offset decision's records (maybe with group tombstones, for DeleteGroup) are durable."""
        for i, record in enumerate(decision.records):
            self.replay_record(record, base_offset + i, decision.producer_id)
        if decision.records:
            self.next_offset = max(self.next_offset, base_offset + len(decision.records))

    def dump(self) -> dict[str, object]:
        """Everything durable, in a comparable form (tests, debugging)."""
        groups = {
            gid: (g.has_metadata, g.group_epoch, g.subscribed_topics, g.assignment_epoch,
                  dict(g.members), dict(g.current), dict(g.target))
            for gid, g in self.groups.groups.items()
        }
        pending = {
            pid: {gid: dict(offs) for gid, offs in by_group.items()}
            for pid, by_group in self.offsets.pending.items()
        }
        committed = {gid: dict(offs) for gid, offs in self.offsets.committed.items()}
        return {"groups": groups, "committed": committed, "pending": pending}


# --- the view ----------------------------------------------------------------------------------


class ViewBackend(Protocol):
    """The few operations the view needs from a key-value store."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` entries whose key starts with `prefix` and is >= `start`, in key order."""
        ...

    def write(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes], sync: bool) -> None:
        """Apply all deletes, then all puts, atomically."""
        ...


class MemoryViewBackend:
    """A dict; for tests and for running without a data dir."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def scan(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        keys = sorted(k for k in self.data if k.startswith(prefix) and k >= start)[:limit]
        return [(k, self.data[k]) for k in keys]

    def write(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes], sync: bool) -> None:
        for key in deletes:
            self.data.pop(key, None)
        for key, value in puts:
            self.data[key] = value


class KvViewBackend:
    """The broker's shared RocksDB (`semel.storage.kv.KvStore`), namespace "group_view"."""

    NAMESPACE = KvStore.namespace("group_view")

    def __init__(self, kv: KvStore) -> None:
        self.kv = kv

    def get(self, key: bytes) -> bytes | None:
        return self.kv.get(self.NAMESPACE, key)

    def scan(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        rows = self.kv.scan(self.NAMESPACE, max(start, prefix), _prefix_end(prefix), limit=limit)
        return [(bytes(k), bytes(v)) for k, v in rows]

    def write(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes], sync: bool) -> None:
        batch = KvBatch()
        for key in deletes:
            batch.delete(self.NAMESPACE, key)
        for key, value in puts:
            batch.put(self.NAMESPACE, key, value)
        self.kv.write(batch, sync=sync)


def _prefix_end(prefix: bytes) -> bytes | None:
    stripped = prefix.rstrip(b"\xff")
    return None if not stripped else stripped[:-1] + bytes([stripped[-1] + 1])


def _iter_prefix(backend: ViewBackend, prefix: bytes, page: int) -> Iterator[tuple[bytes, bytes]]:
    """Every entry under `prefix`, read `page` entries at a time (memory stays bounded)."""
    start = prefix
    while True:
        rows = backend.scan(prefix, start, page)
        yield from rows
        if len(rows) < page:
            return
        start = rows[-1][0] + b"\x00"


class GroupView:
    """The materialized view of one __consumer_offsets partition."""

    def __init__(self, backend: ViewBackend, partition: int, page_entries: int = limits.GROUP_VIEW_SCAN_PAGE_ENTRIES) -> None:
        invariant(partition >= 0 and page_entries > 0, "bad partition or page size")
        self.backend = backend
        self.page_entries = page_entries
        self.prefix = _U32.pack(partition)
        raw = backend.get(self.prefix + _META)
        if raw == _CLEARING:  # a clear() was interrupted: finish it
            self.clear()
            raw = None
        self.next_offset = 0 if raw is None else _U64.unpack(raw)[0]

    def _rkey(self, key_bytes: bytes) -> bytes:
        return self.prefix + _RECORD + key_bytes

    def _pkey(self, producer_id: int, key_bytes: bytes = b"") -> bytes:
        return self.prefix + _PENDING + _U64.pack(producer_id) + key_bytes

    def apply_batch(self, header: BatchHeader, payload: bytes | memoryview, sync: bool = False) -> None:
        """Fold one batch (the one starting at `next_offset`) into the view, atomically."""
        if header.next_offset <= self.next_offset:
            return  # already applied
        if header.base_offset != self.next_offset:
            raise ViewOutOfSyncError(f"batch at {header.base_offset}, view at {self.next_offset}")
        puts: dict[bytes, bytes] = {}
        deletes: set[bytes] = set()
        skipped: list[str] = []  # the shard replaying the same batch reports them
        if header.is_control:
            commit = marker_kind(payload, header.base_offset, skipped)
            if commit is not None:
                self._resolve(header.producer_id, commit, puts, deletes)
        else:
            for delta, record in decode_payload(payload, header.base_offset, skipped):
                key_bytes = encode_key(record.key)
                offset = header.base_offset + delta
                if header.is_transactional:
                    invariant(record.value is not None, "transactional tombstone")
                    puts[self._pkey(header.producer_id, key_bytes)] = _U64.pack(offset) + encode_record(record)[1]
                elif record.value is None:
                    puts.pop(self._rkey(key_bytes), None)
                    deletes.add(self._rkey(key_bytes))
                else:
                    deletes.discard(self._rkey(key_bytes))
                    puts[self._rkey(key_bytes)] = _U64.pack(offset) + encode_record(record)[1]
        puts[self.prefix + _META] = _U64.pack(header.next_offset)
        self.backend.write(sorted(puts.items()), sorted(deletes), sync)
        self.next_offset = header.next_offset

    def _resolve(self, producer_id: int, commit: bool, puts: dict[bytes, bytes], deletes: set[bytes]) -> None:
        prefix = self._pkey(producer_id)
        for pkey, value in _iter_prefix(self.backend, prefix, self.page_entries):
            deletes.add(pkey)
            if not commit:
                continue
            rkey = self._rkey(pkey[len(prefix):])
            existing = self.backend.get(rkey)
            if existing is None or _U64.unpack_from(existing)[0] < _U64.unpack_from(value)[0]:
                puts[rkey] = value

    def entries(self) -> Iterator[tuple[GroupRecord, int]]:
        """(record, log offset that wrote it) for every live key."""
        skip = len(self.prefix) + 1
        for key, value in _iter_prefix(self.backend, self.prefix + _RECORD, self.page_entries):
            yield decode_record(key[skip:], value[8:]), _U64.unpack_from(value)[0]

    def pending_entries(self) -> Iterator[tuple[int, GroupRecord, int]]:
        """(producer id, record, log offset) of every pending transactional offset."""
        skip = len(self.prefix) + 1
        for key, value in _iter_prefix(self.backend, self.prefix + _PENDING, self.page_entries):
            pid = _U64.unpack_from(key, skip)[0]
            yield pid, decode_record(key[skip + 8:], value[8:]), _U64.unpack_from(value)[0]

    def clear(self) -> None:
        """Forget everything (the log was truncated below `next_offset`: rebuild from it).
        Deletes go page by page; the meta key says "clearing" until the last page is gone,
        so a crash in between is finished on the next open instead of leaving half a view."""
        meta = self.prefix + _META
        self.backend.write([(meta, _CLEARING)], [], True)
        while True:
            keys = [k for k, _ in self.backend.scan(self.prefix, self.prefix, self.page_entries) if k != meta]
            if not keys:
                break
            self.backend.write([], keys, True)
        self.backend.write([], [meta], True)
        self.next_offset = 0


def load_shard(
    view: GroupView,
    log_data: Iterable[bytes],
    monotonic_ms: int,
    partition: int,
    group_config: GroupConfig | None = None,
    offsets_config: OffsetsConfig | None = None,
    update_view: bool = True,
) -> CoordinatorShard:
    """State of a coordinator partition = the view + replay of the log after it.

    `log_data`: chunks of whole batches from `view.next_offset` up to the high watermark, in
    order (batches the view already covers are skipped). With `update_view`, every replayed
    batch is also folded into the view. The caller handles truncation: if the log ends
    below `view.next_offset`, call `view.clear()` and pass the whole log. Every member's session
timer starts at `monotonic_ms` (the coordinator's monotonic clock)."""
    shard = CoordinatorShard(partition, group_config, offsets_config)
    for record, record_offset in view.entries():
        shard.replay_record(record, record_offset)
    for producer_id, record, record_offset in view.pending_entries():
        shard.replay_record(record, record_offset, producer_id)
    shard.next_offset = view.next_offset
    for data in log_data:
        for header, payload in iter_batches(data):
            if header.next_offset <= shard.next_offset:
                continue
            if header.base_offset != shard.next_offset:
                raise ViewOutOfSyncError(f"log batch at {header.base_offset}, state at {shard.next_offset}")
            if update_view:
                view.apply_batch(header, payload)
            shard.replay_batch(header, payload)
    shard.groups.on_loaded(monotonic_ms)
    shard.groups.check_invariants()
    shard.offsets.check_invariants()
    return shard

