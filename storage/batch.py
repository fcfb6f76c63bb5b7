"""The stored form of a record batch: a fixed header, a CRC32C, and opaque records.

A batch is the unit the broker moves: it validates the header, assigns offsets,
appends, replicates and serves whole batches. It never decodes the records.

Layout (big-endian, 61-byte header, then the payload):

    offset  size  field
    0       8     base_offset        first offset in the batch
    8       4     batch_length       bytes that follow this field (header rest + payload)
    12      4     crc                CRC32C of bytes [0, 12) and [16, end)
    16      1     magic              format version, = 1
    17      2     attributes         BatchAttribute bits (0x10 transactional, 0x20 control)
    19      4     last_offset_delta  record_count - 1
    23      4     leader_epoch       epoch of the leader that appended it
    27      8     producer_id        -1 when not idempotent
    35      2     producer_epoch     -1 when not idempotent
    37      4     base_sequence      -1 when not idempotent
    41      4     record_count
    45      8     base_timestamp_ms
    53      8     max_timestamp_ms
    61      ...   payload (the client's encoded records, or one ControlRecord)

The CRC covers the offsets too, so a flipped bit anywhere is caught. The same
bytes travel from leader to followers, so replicas converge byte for byte.

Magic 2 (Kafka's RecordBatch v2, the stored form going forward; docs/storage.md) is also
61 bytes, with the magic byte at the same position 16, so a reader dispatches on it:

    offset  size  field
    0       8     base_offset
    8       4     batch_length
    12      4     leader_epoch       (partitionLeaderEpoch)
    16      1     magic              = 2
    17      4     crc                CRC32C of bytes [21, end): not the offsets nor the epoch
    21      2     attributes         bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
    23      4     last_offset_delta
    27      8     base_timestamp_ms
    35      8     max_timestamp_ms
    43      8     producer_id
    51      2     producer_epoch
    53      4     base_sequence
    57      4     record_count
    61      ...   records (Kafka's record format, compressed as one unit when the codec is set)

Because that CRC skips the base offset and the leader epoch, stamping them on append
(`with_offsets`) rewrites 12 bytes and recomputes nothing. The broker never decodes the
records of either magic on the produce or fetch path.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

import crc32c as _crc32c
from semel.storage.varint import read_signed_varint, read_signed_varlong
from semel.sentinels import NO_SEQUENCE
from semel.v1.common_pb2 import ControlRecord, ControlType

MAGIC = 1
KAFKA_MAGIC = 2
MAGIC_POSITION = 16  # the same byte in both layouts
HEADER_BYTES = 61
# base_offset, batch_length, crc: the prefix that locates and checks a batch.
PREFIX = struct.Struct(">qiI")
# magic .. max_timestamp_ms: the rest of the header.
BODY = struct.Struct(">bhiiqhiiqq")
LENGTH_FIELD_END = 12  # batch_length counts the bytes after this position
CRC_FIELD_END = 16
# Kafka's v2 header in one unpack: base_offset, batch_length, leader_epoch, magic, crc,
# attributes, last_offset_delta, base_ts, max_ts, producer_id, producer_epoch, base_sequence, count.
KAFKA_HEADER = struct.Struct(">qiibIhiqqqhii")
KAFKA_CRC_POSITION = 17
KAFKA_CRC_START = 21  # the CRC covers [21, end)
KAFKA_ATTR_TIMESTAMP_TYPE = 0x08  # LogAppendTime; Semel stores CreateTime as sent
KAFKA_ATTR_DELETE_HORIZON = 0x40

ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
ATTR_COMPRESSION_MASK = 0x07
ATTR_KNOWN = ATTR_TRANSACTIONAL | ATTR_CONTROL | ATTR_COMPRESSION_MASK


assert PREFIX.size + BODY.size == HEADER_BYTES
assert KAFKA_HEADER.size == HEADER_BYTES


class CorruptBatchError(Exception):
    """The bytes are not a valid batch (bad CRC, bad length, unknown magic)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    last_offset_delta: int
    leader_epoch: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    attributes: int
    base_timestamp_ms: int
    max_timestamp_ms: int
    # Total stored size of the batch (header + payload); 0 until encoded.
    size_bytes: int = 0
    magic: int = MAGIC  # the layout it is stored in (MAGIC or KAFKA_MAGIC)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)

    @property
    def last_sequence(self) -> int:
        """Sequence of the last record, wrapping at 2^31 - 1 to 0 as Kafka does."""
        if self.base_sequence < 0:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) % (1 << 31)


def crc_of(buf: bytes | bytearray | memoryview) -> int:
    """CRC32C of a whole encoded batch, skipping the crc field itself."""
    mv = memoryview(buf)
    return _crc32c.crc32c(mv[CRC_FIELD_END:], _crc32c.crc32c(mv[:LENGTH_FIELD_END]))


def encode_batch(header: BatchHeader, payload: bytes | bytearray | memoryview) -> bytes:
    """Encode a batch with its CRC. `size_bytes` of `header` is ignored."""
    body = BODY.pack(
        MAGIC,
        header.attributes,
        header.last_offset_delta,
        header.leader_epoch,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        header.record_count,
        header.base_timestamp_ms,
        header.max_timestamp_ms,
    )
    length = HEADER_BYTES - LENGTH_FIELD_END + len(payload)
    prefix_no_crc = struct.pack(">qi", header.base_offset, length)
    crc = _crc32c.crc32c(payload, _crc32c.crc32c(body, _crc32c.crc32c(prefix_no_crc)))
    return b"".join((prefix_no_crc, struct.pack(">I", crc), body, payload))


def kafka_fields(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, ...]:
    """The magic-2 header at `pos` as the 13 fields of a magic-1 `PREFIX + BODY` unpack, in
    that order (base, length, crc, magic, attributes, last_offset_delta, leader_epoch,
    producer_id, producer_epoch, base_sequence, count, base_ts, max_ts): the log's hot loops
    unpack magic 1 and call this only when byte 16 says 2."""
    (base, length, epoch, magic, crc, attrs, delta, base_ts, max_ts, pid, pepoch, seq, count) = (
        KAFKA_HEADER.unpack_from(buf, pos))
    return (base, length, crc, magic, attrs, delta, epoch, pid, pepoch, seq, count, base_ts, max_ts)


def crc_matches(view: memoryview, start: int, end: int, magic: int, crc: int) -> bool:
    """Whether the batch in `view[start:end]` (already known to be of `magic`) has CRC `crc`."""
    if magic == KAFKA_MAGIC:
        return _crc32c.crc32c(view[start + KAFKA_CRC_START : end]) == crc
    return _crc32c.crc32c(view[start + CRC_FIELD_END : end], _crc32c.crc32c(view[start : start + LENGTH_FIELD_END])) == crc


def _decode_kafka(buf: bytes | bytearray | memoryview, pos: int, verify_crc: bool, need_whole: bool) -> BatchHeader:
    base, length, crc, _magic, attrs, delta, epoch, pid, pepoch, seq, count, base_ts, max_ts = kafka_fields(buf, pos)
    size = LENGTH_FIELD_END + length
    if length < HEADER_BYTES - LENGTH_FIELD_END or (need_whole and pos + size > len(buf)):
        raise CorruptBatchError(f"bad batch length {length} at {pos}")
    if verify_crc and not crc_matches(memoryview(buf), pos, pos + size, KAFKA_MAGIC, crc):
        raise CorruptBatchError(f"CRC mismatch at {pos} (base offset {base})")
    return BatchHeader(base, delta, epoch, pid, pepoch, seq, count, attrs, base_ts, max_ts, size, KAFKA_MAGIC)


def decode_header(buf: bytes | bytearray | memoryview, pos: int = 0, *, verify_crc: bool = True) -> BatchHeader:
    """Decode the batch starting at `pos`; raises CorruptBatchError if it is not whole and valid."""
    if len(buf) - pos < HEADER_BYTES:
        raise CorruptBatchError(f"truncated header at {pos}: {len(buf) - pos} bytes")
    if buf[pos + MAGIC_POSITION] == KAFKA_MAGIC:
        return _decode_kafka(buf, pos, verify_crc, need_whole=True)
    base_offset, length, crc = PREFIX.unpack_from(buf, pos)
    size = LENGTH_FIELD_END + length
    if length < HEADER_BYTES - LENGTH_FIELD_END or pos + size > len(buf):
        raise CorruptBatchError(f"bad batch length {length} at {pos}")
    (magic, attributes, last_delta, leader_epoch, pid, pepoch, base_seq, count, base_ts, max_ts) = BODY.unpack_from(
        buf, pos + PREFIX.size
    )
    if magic != MAGIC:
        raise CorruptBatchError(f"unknown magic {magic} at {pos}")
    if verify_crc and crc_of(memoryview(buf)[pos : pos + size]) != crc:
        raise CorruptBatchError(f"CRC mismatch at {pos} (base offset {base_offset})")
    return BatchHeader(
        base_offset, last_delta, leader_epoch, pid, pepoch, base_seq, count, attributes, base_ts, max_ts, size
    )


def with_offsets(encoded: bytes, base_offset: int, leader_epoch: int) -> bytes:
    """Re-stamp an encoded batch with a new base offset and leader epoch (and, for magic 1, a
    fresh CRC; magic 2's CRC does not cover them)."""
    buf = bytearray(encoded)
    if buf[MAGIC_POSITION] == KAFKA_MAGIC:
        struct.pack_into(">q", buf, 0, base_offset)
        struct.pack_into(">i", buf, 12, leader_epoch)
        return bytes(buf)
    struct.pack_into(">q", buf, 0, base_offset)
    struct.pack_into(">i", buf, 23, leader_epoch)
    struct.pack_into(">I", buf, LENGTH_FIELD_END, crc_of(buf))
    return bytes(buf)


def peek_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Decode only the fixed header at `pos` (the payload need not be in `buf`; no CRC check).

    For walking a file header by header; whatever is served must still pass `decode_header`.
    """
    if len(buf) - pos < HEADER_BYTES:
        raise CorruptBatchError(f"truncated header at {pos}: {len(buf) - pos} bytes")
    if buf[pos + MAGIC_POSITION] == KAFKA_MAGIC:
        return _decode_kafka(buf, pos, verify_crc=False, need_whole=False)
    base_offset, length, _crc = PREFIX.unpack_from(buf, pos)
    (magic, attributes, last_delta, leader_epoch, pid, pepoch, base_seq, count, base_ts, max_ts) = BODY.unpack_from(
        buf, pos + PREFIX.size
    )
    if length < HEADER_BYTES - LENGTH_FIELD_END or magic != MAGIC:
        raise CorruptBatchError(f"bad batch length {length} or magic {magic} at {pos}")
    return BatchHeader(
        base_offset, last_delta, leader_epoch, pid, pepoch, base_seq, count, attributes, base_ts, max_ts,
        LENGTH_FIELD_END + length,
    )


def iter_batches(
    data: bytes | bytearray | memoryview, *, verify_crc: bool = True
) -> Iterator[tuple[BatchHeader, memoryview]]:
    """(header, payload) of each whole batch in `data`, in order; the payload is a view into `data`.

    Raises CorruptBatchError on a torn batch, and on a bad CRC unless `verify_crc` is False (for
    bytes the log has just checked).
    """
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        header = decode_header(view, pos, verify_crc=verify_crc)
        yield header, view[pos + HEADER_BYTES : pos + header.size_bytes]
        pos += header.size_bytes


# --- transaction markers: control batches whose payload is one semel.v1.ControlRecord ---------


@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """The content of a control batch (a semel.v1 ControlRecord)."""

    commit: bool
    coordinator_epoch: int


def encode_marker(
    producer_id: int, producer_epoch: int, marker: Marker, *, now_ms: int, base_offset: int = 0, leader_epoch: int = 0
) -> bytes:
    """A whole control batch holding `marker` (one record, transactional, no sequence)."""
    payload = ControlRecord(
        type=ControlType.COMMIT if marker.commit else ControlType.ABORT, coordinator_epoch=marker.coordinator_epoch
    ).SerializeToString()
    header = BatchHeader(
        base_offset=base_offset,
        last_offset_delta=0,
        leader_epoch=leader_epoch,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=NO_SEQUENCE,
        record_count=1,
        attributes=ATTR_CONTROL | ATTR_TRANSACTIONAL,
        base_timestamp_ms=now_ms,
        max_timestamp_ms=now_ms,
    )
    return encode_batch(header, payload)


def decode_marker(payload: bytes | memoryview, magic: int = MAGIC) -> Marker:
    """The marker in the payload of a control batch (what `iter_batches` yields for it) of
    `magic`: one ControlRecord in magic 1, one Kafka control record in magic 2."""
    if magic == KAFKA_MAGIC:
        return _decode_kafka_marker(memoryview(payload))
    record = ControlRecord.FromString(bytes(payload))  # one small record
    return Marker(commit=record.type == ControlType.COMMIT, coordinator_epoch=record.coordinator_epoch)


_CONTROL_KEY = struct.Struct(">hh")  # version 0, type (0 ABORT, 1 COMMIT)
_CONTROL_VALUE = struct.Struct(">hi")  # version 0, coordinator epoch
CONTROL_ABORT, CONTROL_COMMIT = 0, 1


def _decode_kafka_marker(view: memoryview) -> Marker:
    """Kafka's control record (`EndTransactionMarker`): length, attributes, timestamp and offset
    deltas, a 4-byte key, a 6-byte value, no headers; every varint zigzag-signed (kio reads them)."""
    try:
        length, pos = read_signed_varint(view, 0)
        end = pos + length
        pos += 1  # record attributes
        for reader in (read_signed_varlong, read_signed_varint):  # timestamp delta, offset delta
            _value, used = reader(view, pos)
            pos += used
        fields = []
        for _ in range(2):  # key, value
            n, used = read_signed_varint(view, pos)
            pos += used
            fields.append(bytes(view[pos : pos + max(n, 0)]))
            pos += max(n, 0)
    except (ValueError, IndexError) as exc:
        raise CorruptBatchError(f"malformed control record: {exc}") from exc
    key, value = fields
    if pos > end or end > len(view) or len(key) != _CONTROL_KEY.size or len(value) < _CONTROL_VALUE.size:
        raise CorruptBatchError("control record without a 4-byte key and a 6-byte value")
    _version, kind = _CONTROL_KEY.unpack(key)
    if kind not in (CONTROL_ABORT, CONTROL_COMMIT):
        raise CorruptBatchError(f"control record type {kind} is not a transaction marker")
    _version, coordinator_epoch = _CONTROL_VALUE.unpack_from(value)
    return Marker(commit=kind == CONTROL_COMMIT, coordinator_epoch=coordinator_epoch)


def encode_kafka_batch(header: BatchHeader, records: bytes | bytearray | memoryview) -> bytes:
    """Encode a magic-2 batch (Kafka's RecordBatch v2) around `records`, which must already be
    in Kafka's record format (compressed as one unit if the header's codec bits say so)."""
    length = HEADER_BYTES - LENGTH_FIELD_END + len(records)
    head = bytearray(KAFKA_HEADER.pack(
        header.base_offset, length, header.leader_epoch, KAFKA_MAGIC, 0, header.attributes,
        header.last_offset_delta, header.base_timestamp_ms, header.max_timestamp_ms, header.producer_id,
        header.producer_epoch, header.base_sequence, header.record_count))
    crc = _crc32c.crc32c(records, _crc32c.crc32c(memoryview(head)[KAFKA_CRC_START:]))
    struct.pack_into(">I", head, KAFKA_CRC_POSITION, crc)
    return bytes(head) + bytes(records)
