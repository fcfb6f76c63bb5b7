"""Kafka's record format inside a magic-2 batch, for the few places the broker must look inside.

The produce and fetch paths never come here: a magic-2 batch is stored and served as its
producer sent it. Three things do:

* markers: a COMMIT/ABORT control batch carries one control record (key = int16 version 0
  + int16 type, 0 ABORT / 1 COMMIT; value = int16 version 0 + int32 coordinator epoch;
  Kafka's `EndTransactionMarker`), which the producer state reads back on replay;
* the compatibility path of the Kafka listener: a magic-1 batch (written over gRPC before
  the gRPC path carried magic 2) is converted to an uncompressed magic-2 batch on read
  (`kafka_batch_from_magic1`), records in the same order with the same offsets, timestamps,
  keys, values and headers, producer fields and attributes unchanged;
* the compatibility path of the gRPC fetch: a magic-2 batch (produced over the Kafka
  listener) reaches a gRPC reader with its records decompressed and re-encoded as
  `semel.v1.Records` (`semel_records_from_kafka`), until the gRPC path carries magic 2;
* the gRPC client's compression (`compression_type`): its batches are Kafka records
  compressed as one unit (`compress`, `encode_compressed_batch`), sent as a gRPC Produce's
  `kafka_batch`; the broker counts their records once (`count_records`) before storing them;
* tests, which build records the way a Kafka client does.

Decompression (gzip through zlib, snappy raw or xerial-framed, lz4 frame and zstd through
cramjam) refuses output above `limits.MAX_DECOMPRESSED_BATCH_BYTES`; gzip and snappy are
bounded before allocating, lz4 and zstd after (cramjam has no bounded streaming decoder).

Record layout (all varints zigzag-signed: kio's native readers, `encode_zigzag` writes them): length,
attributes int8, timestamp delta varlong, offset delta varint, key length + key (-1 = null),
value length + value (-1 = null), header count, per header key length + UTF-8 key, value
length + value (-1 = null).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence

import zlib

import cramjam
from semel import limits
from semel.storage.varint import (
    encode_zigzag,
    read_signed_varint,
    read_signed_varlong,
)
from semel.storage.batch import (
    ATTR_COMPRESSION_MASK,
    CONTROL_ABORT,
    CONTROL_COMMIT,
    HEADER_BYTES,
    KAFKA_MAGIC,
    MAGIC,
    BatchHeader,
    CorruptBatchError,
    decode_header,
    decode_marker,
    encode_kafka_batch,
)
from semel.v1.common_pb2 import ControlRecord, ControlType, Record, RecordHeader, Records

_CONTROL_KEY = struct.Struct(">hh")  # version, type
_CONTROL_VALUE = struct.Struct(">hi")  # version, coordinator epoch


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaRecord:
    offset_delta: int
    timestamp_delta_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


_NULL = b"\x01"  # zigzag(-1): a null key, value or header value


def encode_record_fields(offset_delta: int, timestamp_delta_ms: int, key: bytes | None, value: bytes | None,
                         headers: Iterable[tuple[str, bytes | None]] = ()) -> bytes:
    """One record in Kafka's record format (length-prefixed; None is null), built from
    table-looked-up varints: the producer encodes every record of a compressed batch here."""
    parts = [b"\x00", encode_zigzag(timestamp_delta_ms), encode_zigzag(offset_delta)]  # attributes: unused
    parts += (_NULL,) if key is None else (encode_zigzag(len(key)), key)
    parts += (_NULL,) if value is None else (encode_zigzag(len(value)), value)
    headers = tuple(headers)
    parts.append(encode_zigzag(len(headers)))
    for header_key, header_value in headers:
        k = header_key.encode()
        parts += (encode_zigzag(len(k)), k)
        parts += (_NULL,) if header_value is None else (encode_zigzag(len(header_value)), header_value)
    body = b"".join(parts)
    return encode_zigzag(len(body)) + body


def encode_record(record: KafkaRecord) -> bytes:
    return encode_record_fields(record.offset_delta, record.timestamp_delta_ms, record.key, record.value,
                                record.headers)


def encode_records(records: Iterable[KafkaRecord]) -> bytes:
    return b"".join(encode_record(r) for r in records)


def _read_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    n, used = read_signed_varint(buf, pos)
    pos += used
    if n < 0:
        return None, pos
    if pos + n > len(buf):
        raise CorruptBatchError("record field runs past the batch")
    return bytes(buf[pos : pos + n]), pos + n


def decode_records(records: bytes | memoryview, count: int) -> list[KafkaRecord]:
    """The `count` uncompressed records in `records` (raises CorruptBatchError if malformed)."""
    buf = memoryview(records)
    pos = 0
    out: list[KafkaRecord] = []
    try:
        for _ in range(count):
            length, used = read_signed_varint(buf, pos)
            pos += used
            end = pos + length
            if length < 0 or end > len(buf):
                raise CorruptBatchError(f"record length {length} runs past the batch")
            pos += 1  # attributes
            ts_delta, used = read_signed_varlong(buf, pos)
            pos += used
            offset_delta, used = read_signed_varint(buf, pos)
            pos += used
            key, pos = _read_bytes(buf, pos)
            value, pos = _read_bytes(buf, pos)
            n_headers, used = read_signed_varint(buf, pos)
            pos += used
            headers = []
            for _h in range(max(n_headers, 0)):
                hkey, pos = _read_bytes(buf, pos)
                hvalue, pos = _read_bytes(buf, pos)
                headers.append(((hkey or b"").decode("utf-8", "replace"), hvalue))
            if pos != end:
                raise CorruptBatchError(f"record ends at {pos}, its length says {end}")
            out.append(KafkaRecord(offset_delta, ts_delta, key, value, tuple(headers)))
    except (ValueError, IndexError) as exc:  # kio's varint reader on a short buffer
        raise CorruptBatchError(f"malformed record: {exc}") from exc
    return out


def encode_control_record(commit: bool, coordinator_epoch: int) -> bytes:
    """The one record of a COMMIT/ABORT control batch (offset and timestamp deltas 0)."""
    key = _CONTROL_KEY.pack(0, CONTROL_COMMIT if commit else CONTROL_ABORT)
    value = _CONTROL_VALUE.pack(0, coordinator_epoch)
    return encode_record(KafkaRecord(0, 0, key, value))


def decode_control_record(records: bytes | memoryview) -> tuple[bool, int]:
    """(commit, coordinator_epoch) of a control batch's records (the batch format's marker codec)."""
    marker = decode_marker(records, KAFKA_MAGIC)
    return marker.commit, marker.coordinator_epoch


def kafka_batch_from_magic1(batch: bytes | memoryview, header: BatchHeader | None = None) -> bytes:
    """The magic-2 form of one stored magic-1 batch (see the module docstring): per-record work,
    so only for data written before its producer spoke magic 2."""
    h = header if header is not None else decode_header(batch, verify_crc=False)
    if h.magic != MAGIC:
        raise CorruptBatchError(f"not a magic-1 batch (magic {h.magic})")
    if h.attributes & ATTR_COMPRESSION_MASK:
        raise CorruptBatchError("magic-1 batches are never compressed")
    payload = bytes(memoryview(batch)[HEADER_BYTES : h.size_bytes])
    if h.is_control:
        marker = decode_marker(payload)
        records = encode_control_record(marker.commit, marker.coordinator_epoch)
    else:
        records = encode_records(_from_semel(Records.FromString(payload).records))
    return encode_kafka_batch(h, records)


def _from_semel(records: Sequence[object]) -> Iterable[KafkaRecord]:
    for r in records:
        yield KafkaRecord(
            offset_delta=r.offset_delta,  # type: ignore[attr-defined]
            timestamp_delta_ms=r.timestamp_delta_ms,  # type: ignore[attr-defined]
            key=r.key or None,  # type: ignore[attr-defined]  # Semel: an empty key is no key
            value=r.value,  # type: ignore[attr-defined]
            headers=tuple((hd.key, hd.value) for hd in r.headers),  # type: ignore[attr-defined]
        )


CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = 0, 1, 2, 3, 4
_XERIAL_MAGIC = b"\x82SNAPPY\x00"  # Java and kafka-python frame snappy this way; librdkafka writes a raw block
_XERIAL_HEADER_BYTES = 16


def decompress(codec: int, data: bytes | memoryview) -> bytes:
    """The records of a magic-2 batch compressed with `codec` (CorruptBatchError if they do not
    decompress, or decompress to more than MAX_DECOMPRESSED_BATCH_BYTES)."""
    bound = limits.MAX_DECOMPRESSED_BATCH_BYTES
    try:
        if codec == CODEC_NONE:
            return bytes(data)
        if codec == CODEC_GZIP:
            d = zlib.decompressobj(wbits=47)  # gzip or zlib header, as Kafka's GZIPInputStream
            out = d.decompress(bytes(data), bound + 1)
        elif codec == CODEC_SNAPPY:
            out = _snappy(bytes(data), bound)
        elif codec == CODEC_LZ4:
            out = bytes(cramjam.lz4.decompress(bytes(data)))
        elif codec == CODEC_ZSTD:
            out = bytes(cramjam.zstd.decompress(bytes(data)))
        else:
            raise CorruptBatchError(f"unknown compression codec {codec}")
    except CorruptBatchError:
        raise
    except Exception as exc:  # zlib.error, cramjam.DecompressionError
        raise CorruptBatchError(f"codec {codec}: records do not decompress: {exc}") from exc
    if len(out) > bound:
        raise CorruptBatchError(f"codec {codec}: records decompress to more than {bound} bytes")
    return out


def compress(codec: int, data: bytes) -> bytes:
    """`data` (uncompressed Kafka records) compressed as one unit with `codec`, in the framing
    Kafka clients write and `decompress` reads: gzip, a raw snappy block (as librdkafka),
    an lz4 frame, a zstd frame. ValueError for an unknown codec."""
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_GZIP:
        c = zlib.compressobj(wbits=31)  # gzip header, as Kafka's GZIPOutputStream
        return c.compress(data) + c.flush()
    if codec == CODEC_SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == CODEC_LZ4:
        return bytes(cramjam.lz4.compress(data, level=1))  # fast, as librdkafka's default (cramjam's 4 is 5x slower)
    if codec == CODEC_ZSTD:
        return bytes(cramjam.zstd.compress(data))
    raise ValueError(f"unknown compression codec {codec}")


def encode_compressed_batch(records: bytes, *, codec: int, record_count: int, base_timestamp_ms: int,
                            max_timestamp_ms: int, attributes: int = 0, producer_id: int = -1,
                            producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    """A produce-side magic-2 batch (base offset 0, leader epoch -1: the broker stamps both)
    around `records`, uncompressed Kafka records (`encode_record`), compressed as one unit with
    `codec`, whose id goes in the attributes' low 3 bits next to `attributes`."""
    if record_count < 1:
        raise ValueError("a batch holds at least one record")
    header = BatchHeader(
        base_offset=0, last_offset_delta=record_count - 1, leader_epoch=-1, producer_id=producer_id,
        producer_epoch=producer_epoch, base_sequence=base_sequence, record_count=record_count,
        attributes=(attributes & ~ATTR_COMPRESSION_MASK) | codec, base_timestamp_ms=base_timestamp_ms,
        max_timestamp_ms=max_timestamp_ms, magic=KAFKA_MAGIC)
    return encode_kafka_batch(header, compress(codec, records))


def count_records(records: bytes | memoryview) -> int:
    """How many uncompressed Kafka records `records` holds, walking only their length prefixes
    (CorruptBatchError if a length is negative or runs past the end). No per-field decoding."""
    buf = memoryview(records)
    pos, count, end = 0, 0, len(buf)
    try:
        while pos < end:
            length, used = read_signed_varint(buf, pos)
            pos += used + length
            if length < 1 or pos > end:
                raise CorruptBatchError(f"record length {length} runs past the batch")
            count += 1
    except CorruptBatchError:
        raise
    except Exception as exc:  # kio's varint reader on a short buffer (its BufferUnderflow)
        raise CorruptBatchError(f"malformed record length: {exc}") from exc
    return count


def _snappy(data: bytes, bound: int) -> bytes:
    if not data.startswith(_XERIAL_MAGIC):
        if cramjam.snappy.decompress_raw_len(data) > bound:
            raise CorruptBatchError(f"snappy block larger than {bound} bytes")
        return bytes(cramjam.snappy.decompress_raw(data))
    parts, total, pos = [], 0, _XERIAL_HEADER_BYTES
    while pos < len(data):
        (n,) = struct.unpack_from(">i", data, pos)
        block = data[pos + 4 : pos + 4 + n]
        if n < 0 or len(block) != n:
            raise CorruptBatchError("truncated xerial snappy block")
        total += cramjam.snappy.decompress_raw_len(block)
        if total > bound:
            raise CorruptBatchError(f"snappy blocks larger than {bound} bytes")
        parts.append(bytes(cramjam.snappy.decompress_raw(block)))
        pos += 4 + n
    return b"".join(parts)


def semel_records_from_kafka(batch: bytes | memoryview, header: BatchHeader) -> bytes:
    """The `RecordBatch.records` a gRPC reader expects for one stored magic-2 batch: a
    serialized `semel.v1.Records` (a `ControlRecord` for a control batch), uncompressed.
    A null value becomes an empty one and a null key no key (Semel's records have no nulls)."""
    if header.magic != KAFKA_MAGIC:
        raise CorruptBatchError(f"not a magic-2 batch (magic {header.magic})")
    raw = decompress(header.attributes & ATTR_COMPRESSION_MASK, memoryview(batch)[HEADER_BYTES : header.size_bytes])
    if header.is_control:
        commit, coordinator_epoch = decode_control_record(raw)
        return ControlRecord(type=ControlType.COMMIT if commit else ControlType.ABORT,
                             coordinator_epoch=coordinator_epoch).SerializeToString()
    out = Records()
    for r in decode_records(raw, header.record_count):
        out.records.append(Record(offset_delta=r.offset_delta, timestamp_delta_ms=r.timestamp_delta_ms,
                                  key=r.key or b"", value=r.value or b"",
                                  headers=[RecordHeader(key=k, value=v or b"") for k, v in r.headers]))
    return out.SerializeToString()
