"""Records as the client writes and reads them: the documented `semel.v1.Records` encoding.

A data batch's `RecordBatch.records` is one serialized `semel.v1.Records` protobuf
message (`repeated Record records = 1`). Each `Record` carries `offset_delta` (offset -
batch.base_offset), `timestamp_delta_ms` (timestamp - batch.base_timestamp_ms), `key`
(empty = no key), `value` and `headers`. The broker only counts the records (a batch whose
records do not parse to `record_count` of them is refused, CORRUPT_MESSAGE).

The producer encodes each record exactly once, when it is appended to a batch, straight
into protobuf wire bytes (`encode_record`), because building one protobuf object per
record costs more than the bytes themselves. The output is byte-identical to
`Records(records=[...]).SerializeToString()` (the tests check it), so any protobuf
library in any language decodes it. Consumers decode with the generated `Records` class.

Note: an empty key and no key are the same on the wire; consumers see `key=None`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from google.protobuf.message import DecodeError
from semel.client.errors import CorruptRecordError
from semel.storage.kafka_records import encode_record_fields
from semel.storage.varint import SMALL_VARINTS, VARINT_TABLE, encode_varint, encode_zigzag
from semel.v1 import common_pb2

Header = tuple[str, bytes]

_RECORDS_FIELD_TAG = b"\x0a"      # Records.records, field 1, length-delimited
_OFFSET_DELTA_TAG = b"\x08"       # Record.offset_delta, field 1, varint
_TIMESTAMP_DELTA_TAG = b"\x10"    # Record.timestamp_delta_ms, field 2, varint
_KEY_TAG = b"\x1a"                # Record.key, field 3, bytes
_VALUE_TAG = b"\x22"              # Record.value, field 4, bytes
_HEADER_TAG = b"\x2a"             # Record.headers, field 5, message
_HEADER_KEY_TAG = b"\x0a"         # RecordHeader.key, field 1, string
_HEADER_VALUE_TAG = b"\x12"       # RecordHeader.value, field 2, bytes
_varint = encode_varint

def _len_field(tag: bytes, data: bytes) -> bytes:
    return tag + encode_varint(len(data)) + data


def _header_fields(headers: Sequence[Header]) -> bytes:
    """`Record.headers` entries (field 5, after the value in field order)."""
    out = []
    for header_key, header_value in headers:
        body = ((_len_field(_HEADER_KEY_TAG, header_key.encode()) if header_key else b"")
                + (_len_field(_HEADER_VALUE_TAG, header_value) if header_value else b""))
        out.append(_len_field(_HEADER_TAG, body))
    return b"".join(out)


def encode_record_parts(
    offset_delta: int,
    timestamp_delta_ms: int,
    key: bytes | None,
    value: bytes,
    headers: Sequence[Header] | None = None,
) -> tuple[bytes, bytes]:
    """One `Records.records` entry as (head, tail): the entry is `head + value + tail`.

    The producer keeps the value as the caller's bytes object and joins it once, straight
    into the request (`ProducerBatch.wire_parts`), instead of copying it into a per-record
    entry first; head and tail hold the framing (tail: the headers, usually empty)."""
    n = len(value)
    if not key and not headers and 0 <= offset_delta < SMALL_VARINTS and 0 <= timestamp_delta_ms < SMALL_VARINTS:
        # the common record (no key, no headers, small deltas): table look-ups, no calls
        t = VARINT_TABLE
        if offset_delta:
            fields = (_OFFSET_DELTA_TAG + t[offset_delta] + _TIMESTAMP_DELTA_TAG + t[timestamp_delta_ms]
                      if timestamp_delta_ms else _OFFSET_DELTA_TAG + t[offset_delta])
        else:
            fields = _TIMESTAMP_DELTA_TAG + t[timestamp_delta_ms] if timestamp_delta_ms else b""
        if n:
            fields += _VALUE_TAG + (t[n] if n < SMALL_VARINTS else encode_varint(n))
        size = len(fields) + n
        return _RECORDS_FIELD_TAG + (t[size] if size < SMALL_VARINTS else encode_varint(size)) + fields, b""
    fields = b""
    if offset_delta:
        fields = _OFFSET_DELTA_TAG + _varint(offset_delta)
    if timestamp_delta_ms:
        fields += _TIMESTAMP_DELTA_TAG + _varint(timestamp_delta_ms)
    if key:
        fields += _KEY_TAG + _varint(len(key)) + key
    tail = _header_fields(headers) if headers else b""
    if n:
        fields += _VALUE_TAG + _varint(n)
        return _RECORDS_FIELD_TAG + _varint(len(fields) + n + len(tail)) + fields, tail
    return _RECORDS_FIELD_TAG + _varint(len(fields) + len(tail)) + fields, tail


def encode_record(
    offset_delta: int,
    timestamp_delta_ms: int,
    key: bytes | None,
    value: bytes,
    headers: Sequence[Header] | None = None,
) -> bytes:
    """One `Records.records` entry (tag + length + Record) in protobuf wire format."""
    head, tail = encode_record_parts(offset_delta, timestamp_delta_ms, key, value, headers)
    return head + value + tail


_NULL = b"\x01"  # zigzag(-1): a null key or header value


def encode_kafka_record_parts(
    offset_delta: int,
    timestamp_delta_ms: int,
    key: bytes | None,
    value: bytes,
    headers: Sequence[Header] | None = None,
) -> tuple[bytes, bytes]:
    """One record in Kafka's record format as (head, tail), the record being `head + value +
    tail`: the bytes of `encode_kafka_record` (tests check it), an empty key being no key."""
    fields = b"\x00" + encode_zigzag(timestamp_delta_ms) + encode_zigzag(offset_delta)  # attributes: unused
    fields += (encode_zigzag(len(key)) + key) if key else _NULL
    fields += encode_zigzag(len(value))
    tail = encode_zigzag(len(headers)) if headers else b"\x00"
    if headers:
        for header_key, header_value in headers:
            k = header_key.encode()
            tail += encode_zigzag(len(k)) + k
            tail += _NULL if header_value is None else encode_zigzag(len(header_value)) + header_value
    return encode_zigzag(len(fields) + len(value) + len(tail)) + fields, tail


def encode_kafka_record(
    offset_delta: int,
    timestamp_delta_ms: int,
    key: bytes | None,
    value: bytes,
    headers: Sequence[Header] | None = None,
) -> bytes:
    """One record in Kafka's record format (the producer's compressed batches): the storage
    layer's encoder, with Semel's rule that an empty key is no key (null)."""
    return encode_record_fields(offset_delta, timestamp_delta_ms, key or None, value, headers or ())


@dataclasses.dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where an acknowledged record landed (offset -1 when acks=none)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    serialized_key_bytes: int
    serialized_value_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[Header, ...] = ()
    leader_epoch: int = -1


def build_batch(
    encoded_records: Iterable[bytes],
    record_count: int,
    base_timestamp_ms: int,
    max_timestamp_ms: int,
    attributes: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> common_pb2.RecordBatch:
    """A produce-side RecordBatch (producer id / epoch / sequence -1: not idempotent)."""
    if record_count < 1:
        raise AssertionError("a batch holds at least one record")
    return common_pb2.RecordBatch(
        base_offset=0,
        last_offset_delta=record_count - 1,
        leader_epoch=-1,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=record_count,
        attributes=attributes,
        base_timestamp_ms=base_timestamp_ms,
        max_timestamp_ms=max_timestamp_ms,
        records=b"".join(encoded_records),
    )


def is_control_batch(batch: common_pb2.RecordBatch) -> bool:
    return bool(batch.attributes & common_pb2.CONTROL)


def decode_batch(topic: str, partition: int, batch: common_pb2.RecordBatch, min_offset: int = 0) -> list[ConsumerRecord]:
    """The data records of `batch` with offset >= `min_offset` (control batches yield none).
    Raises CorruptRecordError (naming partition and offset) for a batch that does not decode."""
    if is_control_batch(batch):
        return []
    if batch.base_offset + batch.last_offset_delta < min_offset:
        return []
    records = common_pb2.Records()
    next_offset = batch.base_offset + batch.last_offset_delta + 1
    try:
        records.ParseFromString(batch.records)
    except DecodeError as exc:
        raise CorruptRecordError(topic, partition, batch.base_offset, next_offset,
                                 f"records do not parse as semel.v1.Records ({exc})") from exc
    if len(records.records) != batch.record_count:
        raise CorruptRecordError(topic, partition, batch.base_offset, next_offset,
                                 f"{len(records.records)} records where the header says {batch.record_count}")
    base_offset = batch.base_offset
    base_ts = batch.base_timestamp_ms
    epoch = batch.leader_epoch
    out = []
    for record in records.records:
        offset = base_offset + record.offset_delta
        if offset < min_offset:
            continue
        headers = tuple((h.key, h.value) for h in record.headers) if record.headers else ()
        out.append(
            ConsumerRecord(
                topic,
                partition,
                offset,
                base_ts + record.timestamp_delta_ms,
                record.key or None,
                record.value,
                headers,
                epoch,
            )
        )
    return out
