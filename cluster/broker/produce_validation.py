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
  6. records (`check_records`): no compression codec bits (none is implemented), and the
     payload parses as a `Records` message of exactly `record_count` records (CORRUPT_MESSAGE)

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
    BatchHeader,
)
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
    if not pd.HasField("batch"):
        return Rejection(common_pb2.INVALID_REQUEST, "missing batch")
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
                         "attributes: no codec is implemented; send uncompressed Records")
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
