"""Validation of a client batch before the leader appends it (pure, no I/O).

The header is checked field by field; the records are parsed once as a `semel.v1.Records`
message by the generated (C) class and only counted (`check_records`). A batch either passes every check or is rejected whole
with one `ErrorCode` and a message naming the field, so a client can tell its own bug
(fatal: INVALID_RECORD, RECORD_BATCH_TOO_LARGE, INVALID_TIMESTAMP) from a retriable state.

Checks, in order (the first failing one wins):
  1. record_count >= 1 and last_offset_delta == record_count - 1
  2. stored size (header + records) <= max_batch_bytes
  3. attributes use only known bits; control batches only where allowed (markers come from
     the transaction coordinator, never from a client Produce)
  4. producer fields: all -1 (plain producer) or producer_id >= 0, producer_epoch in
     [0, 32767], base_sequence >= 0; transactional batches need a producer id
  5. timestamps: 0 <= base_timestamp_ms <= max_timestamp_ms, and max_timestamp_ms no further
     than `max_future_timestamp_ms` ahead of the broker clock
  6. records (`check_records`): no compression codec bits (a compressed batch travels as a
     `kafka_batch`), and the
     payload parses as a `Records` message of exactly `record_count` records (CORRUPT_MESSAGE)

A `kafka_batch` (a whole Kafka RecordBatch v2, possibly compressed) is checked by
`check_kafka_batch`: the Kafka listener's checks (CRC-32C, one whole batch, known codec, the
header checks above), then its records are decompressed (bounded) and counted.

Before those, per request (`check_request_batch`): the batch is present, its producer fields
are set explicitly (proto3 `optional`: unset would read as producer 0), and a request with a
`transactional_id` holds only transactional batches. A producer id at or above the metadata
image's `next_producer_id` was never allocated by the quorum (`unallocated_producer_id`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from semel.sentinels import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE
from google.protobuf.message import DecodeError, Message
from semel.storage.batch import (
    ATTR_COMPRESSION_MASK,
    ATTR_CONTROL,
    ATTR_KNOWN,
    ATTR_TRANSACTIONAL,
    HEADER_BYTES,
    KAFKA_MAGIC,
    BatchHeader,
    CorruptBatchError,
    decode_header,
    peek_header,
)
from semel.storage.kafka_records import CODEC_ZSTD, count_records, decompress
from semel.v1 import broker_pb2, common_pb2

INT16_MAX = (1 << 15) - 1
INT32_MAX = (1 << 31) - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    error_code: common_pb2.ErrorCode
    message: str


def header_from_fields(
    *,
    last_offset_delta: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    record_count: int,
    attributes: int,
    base_timestamp_ms: int,
    max_timestamp_ms: int,
    records_bytes: int,
) -> BatchHeader:
    """A header as the client sent it (offsets and leader epoch not yet assigned)."""
    return BatchHeader(
        base_offset=0,
        last_offset_delta=last_offset_delta,
        leader_epoch=-1,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=record_count,
        attributes=attributes,
        base_timestamp_ms=base_timestamp_ms,
        max_timestamp_ms=max_timestamp_ms,
        size_bytes=HEADER_BYTES + records_bytes,
    )


def validate_batch(
    header: BatchHeader,
    *,
    max_batch_bytes: int,
    now_ms: int,
    max_future_timestamp_ms: int,
    allow_control: bool = False,
) -> Rejection | None:
    """None when the batch may be appended, else why not."""
    for check in (_check_counts, _check_attributes, _check_producer, _check_timestamps):
        rejection = check(header, allow_control, now_ms, max_future_timestamp_ms)
        if rejection is not None:
            return rejection
    if header.size_bytes > max_batch_bytes:
        return Rejection(
            common_pb2.RECORD_BATCH_TOO_LARGE,
            f"batch is {header.size_bytes} bytes stored, limit max_batch_bytes={max_batch_bytes}",
        )
    return None


def _check_counts(h: BatchHeader, _allow_control: bool, _now: int, _future: int) -> Rejection | None:
    if h.record_count < 1:
        return Rejection(common_pb2.INVALID_RECORD, f"record_count must be >= 1, got {h.record_count}")
    if h.last_offset_delta != h.record_count - 1:
        return Rejection(
            common_pb2.INVALID_RECORD,
            f"last_offset_delta must be record_count - 1 = {h.record_count - 1}, got {h.last_offset_delta}",
        )
    return None


def _check_attributes(h: BatchHeader, allow_control: bool, _now: int, _future: int) -> Rejection | None:
    if h.attributes & ~ATTR_KNOWN:
        return Rejection(
            common_pb2.INVALID_RECORD, f"unknown attribute bits 0x{h.attributes & ~ATTR_KNOWN:x} in attributes"
        )
    if h.attributes & ATTR_CONTROL and not allow_control:
        return Rejection(
            common_pb2.INVALID_RECORD, "control batches (attributes 0x20) are written by the transaction coordinator"
        )
    return None


def _check_producer(h: BatchHeader, _allow_control: bool, _now: int, _future: int) -> Rejection | None:
    plain = (h.producer_id, h.producer_epoch, h.base_sequence) == (NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE)
    if plain:
        if h.attributes & ATTR_TRANSACTIONAL:
            return Rejection(common_pb2.INVALID_RECORD, "transactional batch without a producer_id")
        return None
    if h.producer_id < 0:
        return Rejection(common_pb2.INVALID_RECORD, f"producer_id must be >= 0 or all producer fields -1, got {h.producer_id}")
    if not 0 <= h.producer_epoch <= INT16_MAX:
        return Rejection(common_pb2.INVALID_RECORD, f"producer_epoch must be in [0, {INT16_MAX}], got {h.producer_epoch}")
    if not 0 <= h.base_sequence <= INT32_MAX:
        return Rejection(common_pb2.INVALID_RECORD, f"base_sequence must be >= 0, got {h.base_sequence}")
    return None


def _check_timestamps(h: BatchHeader, _allow_control: bool, now_ms: int, future_ms: int) -> Rejection | None:
    if h.base_timestamp_ms < 0:
        return Rejection(common_pb2.INVALID_TIMESTAMP, f"base_timestamp_ms must be >= 0, got {h.base_timestamp_ms}")
    if h.max_timestamp_ms < h.base_timestamp_ms:
        return Rejection(
            common_pb2.INVALID_TIMESTAMP,
            f"max_timestamp_ms {h.max_timestamp_ms} is before base_timestamp_ms {h.base_timestamp_ms}",
        )
    if h.max_timestamp_ms > now_ms + future_ms:
        return Rejection(
            common_pb2.INVALID_TIMESTAMP,
            f"max_timestamp_ms {h.max_timestamp_ms} is more than {future_ms} ms ahead of the broker clock",
        )
    return None


PRODUCER_FIELDS = ("producer_id", "producer_epoch", "base_sequence")
# A `Records.records` entry is at least 2 bytes (tag + length): a count above half the payload
# cannot be right, and is refused before parsing.
MIN_RECORD_BYTES = 2


def unset_fields(msg: Message, names: Sequence[str] = ("producer_id", "producer_epoch")) -> str | None:
    """A clear INVALID_REQUEST message naming the `optional` fields of `msg` left unset, or None.
    proto3 would read an unset producer id or epoch as 0: a real producer's identity."""
    unset = [name for name in names if not msg.HasField(name)]
    if not unset:
        return None
    return (f"{type(msg).__name__}: {', '.join(unset)} unset; set {' and '.join(names)} explicitly "
            "(an unset field is never read as 0)")


def check_request_batch(pd: broker_pb2.PartitionProduceData, transactional_id: str) -> Rejection | None:
    """The per-request checks of one partition's batch (see the module docstring)."""
    if pd.kafka_batch:
        if pd.HasField("batch"):
            return Rejection(common_pb2.INVALID_REQUEST, "set one of batch and kafka_batch, not both")
        try:
            head = peek_header(pd.kafka_batch)
        except CorruptBatchError as exc:
            return Rejection(common_pb2.CORRUPT_MESSAGE, f"kafka_batch: {exc}")
        if head.magic != KAFKA_MAGIC:
            return Rejection(common_pb2.INVALID_RECORD, f"kafka_batch carries magic 2, got {head.magic}")
        if transactional_id and not head.attributes & ATTR_TRANSACTIONAL:
            return Rejection(common_pb2.INVALID_REQUEST, "a request with a transactional_id carries only "
                             "transactional batches (attributes 0x10); send non-transactional batches in their "
                             "own request")
        return None
    if not pd.HasField("batch"):
        return Rejection(common_pb2.INVALID_REQUEST, "missing batch (or kafka_batch)")
    b = pd.batch
    unset = [name for name in PRODUCER_FIELDS if not b.HasField(name)]
    if unset:
        return Rejection(common_pb2.INVALID_REQUEST, f"batch fields {', '.join(unset)} are unset: set producer_id, "
                         "producer_epoch and base_sequence explicitly (all -1 for a producer that is not idempotent)")
    if transactional_id and not b.attributes & ATTR_TRANSACTIONAL:
        return Rejection(common_pb2.INVALID_REQUEST, "a request with a transactional_id carries only transactional "
                         "batches (attributes 0x10); send non-transactional batches in their own request")
    return None


def unallocated_producer_id(producer_id: int, next_producer_id: int) -> Rejection:
    return Rejection(common_pb2.INVALID_PRODUCER_ID_MAPPING,
                     f"producer_id {producer_id} was never allocated by the metadata quorum (ids below "
                     f"{next_producer_id} are); get one from InitProducerId")


def check_records(records: bytes, record_count: int, attributes: int) -> Rejection | None:
    """The payload of a data batch holds exactly `record_count` records. One parse in C by the
    generated class; no per-record Python work."""
    if attributes & ATTR_COMPRESSION_MASK:
        return Rejection(common_pb2.INVALID_RECORD, f"compression codec {attributes & ATTR_COMPRESSION_MASK} in "
                         "attributes of a batch: send a compressed batch as a Kafka RecordBatch v2 in kafka_batch")
    if record_count * MIN_RECORD_BYTES > len(records):
        return Rejection(common_pb2.CORRUPT_MESSAGE, f"record_count {record_count} does not fit in "
                         f"{len(records)} bytes of records")
    try:
        decoded = common_pb2.Records.FromString(records)
    except DecodeError as exc:
        return Rejection(common_pb2.CORRUPT_MESSAGE, f"records do not parse as a semel.v1.Records message: {exc}")
    if len(decoded.records) != record_count:
        return Rejection(common_pb2.CORRUPT_MESSAGE, f"records hold {len(decoded.records)} records, the header "
                         f"claims record_count {record_count}")
    return None


def batch_identity(pd: broker_pb2.PartitionProduceData) -> tuple[int, int, int]:
    """(producer_id, producer_epoch, attributes) of the partition's batch, either form; a
    `kafka_batch` too short to hold a header reads as a plain batch (`check_request_batch`
    refuses it). No CRC check: the append checks the whole batch."""
    if pd.kafka_batch:
        try:
            h = peek_header(pd.kafka_batch)
        except CorruptBatchError:
            return NO_PRODUCER_ID, NO_PRODUCER_EPOCH, 0
        return h.producer_id, h.producer_epoch, h.attributes
    b = pd.batch
    return b.producer_id, b.producer_epoch, b.attributes


def check_kafka_batch(data: bytes, *, max_batch_bytes: int, now_ms: int,
                      max_future_timestamp_ms: int) -> BatchHeader | Rejection:
    """The header of a gRPC Produce's `kafka_batch` (pure), or why it is refused: the Kafka
    listener's checks (one whole CRC-checked magic-2 batch, a known codec, `validate_batch`)
    and, as for a gRPC `batch`, records that decompress (bounded by
    MAX_DECOMPRESSED_BATCH_BYTES) to exactly `record_count` records."""
    if len(data) > max_batch_bytes:
        return Rejection(common_pb2.RECORD_BATCH_TOO_LARGE,
                         f"kafka_batch is {len(data)} bytes, limit max_batch_bytes={max_batch_bytes}")
    try:
        header = decode_header(data)  # CRC-32C of [21, end)
    except CorruptBatchError as exc:
        return Rejection(common_pb2.CORRUPT_MESSAGE, f"kafka_batch: {exc}")
    if header.magic != KAFKA_MAGIC:
        return Rejection(common_pb2.INVALID_RECORD, f"kafka_batch carries magic 2, got {header.magic}")
    if header.size_bytes != len(data):
        return Rejection(common_pb2.INVALID_RECORD, "kafka_batch holds exactly one whole record batch")
    codec = header.attributes & ATTR_COMPRESSION_MASK
    if codec > CODEC_ZSTD:
        return Rejection(common_pb2.INVALID_RECORD, f"unknown compression codec {codec} in attributes "
                         "(0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)")
    rejection = validate_batch(header, max_batch_bytes=max_batch_bytes, now_ms=now_ms,
                               max_future_timestamp_ms=max_future_timestamp_ms)
    if rejection is not None:
        return rejection
    try:
        count = count_records(decompress(codec, memoryview(data)[HEADER_BYTES:]))
    except CorruptBatchError as exc:
        return Rejection(common_pb2.CORRUPT_MESSAGE, f"kafka_batch records: {exc}")
    if count != header.record_count:
        return Rejection(common_pb2.CORRUPT_MESSAGE, f"kafka_batch records hold {count} records, the header "
                         f"claims record_count {header.record_count}")
    return header
