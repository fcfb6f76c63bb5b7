"""The Kafka listener's pure parts: codec, error table, produce-batch checks, conversions."""

from __future__ import annotations

import gzip
import struct
import time

import cramjam
import pytest
from kafka.record.memory_records import MemoryRecordsBuilder
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode as K
from semel.cluster.kafka import codec
from semel.cluster.kafka.errors import TO_KAFKA, to_kafka
from semel.cluster.kafka.handlers import ProduceRefused, as_kafka_batches, checked_produce_batch
from semel.storage.batch import BatchHeader, CorruptBatchError, decode_header, encode_batch, with_offsets
from semel.storage.kafka_records import CODEC_SNAPPY, decompress, encode_records, KafkaRecord
from semel.v1.common_pb2 import ErrorCode, Record, Records

NOW = int(time.time() * 1000)


def client_batch(codec_id: int = 0, count: int = 2, **kwargs: object) -> bytes:
    b = MemoryRecordsBuilder(magic=2, compression_type=codec_id, batch_size=1 << 20, **kwargs)
    for i in range(count):
        b.append(timestamp=NOW, key=b"k", value=b"v%d" % i * 50, headers=[])
    b.close()
    return bytes(b.buffer())


def test_every_semel_error_code_has_a_kafka_number():
    assert set(TO_KAFKA) == set(ErrorCode.values())
    assert to_kafka(ErrorCode.OUT_OF_ORDER_SEQUENCE) == K.out_of_order_sequence_number
    assert to_kafka(10_000) == K.unknown_server_error


def test_every_advertised_api_is_served_within_what_kio_has():
    for key, (low, high) in codec.SERVED.items():
        for version in range(low, high + 1):
            load_request_schema(key, version)  # raises if kio lacks it
    assert codec.ADVERTISED[codec.PRODUCE][0] == 0 and codec.SERVED[codec.PRODUCE][0] == 3


def test_decode_refuses_what_is_not_served_or_malformed():
    with pytest.raises(codec.BadRequest, match="not served"):
        codec.decode_request(struct.pack(">hhi", 999, 0, 1))
    with pytest.raises(codec.BadRequest, match="not served"):
        codec.decode_request(struct.pack(">hhi", codec.METADATA, 13, 1))
    with pytest.raises(codec.BadRequest, match="cannot decode"):
        codec.decode_request(struct.pack(">hhih", codec.METADATA, 12, 1, 50) + b"short")
    with pytest.raises(codec.BadRequest, match="shorter"):
        codec.decode_request(b"\x00\x03")


def test_unsupported_api_versions_answer_is_v0_with_error_35():
    frame = codec.unsupported_api_versions(77)
    size, correlation_id, error, count = struct.unpack_from(">iihi", frame)
    assert (size, correlation_id, error, count) == (len(frame) - 4, 77, 35, 1)
    assert struct.unpack_from(">hhh", frame, 14) == (18, 0, 4)


def test_build_drops_fields_a_version_lacks_and_converts_values():
    cls = codec.response_class(codec.INIT_PRODUCER_ID, 0)
    resp = codec.build(cls, {"throttle_time": 5, "error_code": 0, "producer_id": 9, "producer_epoch": 0,
                             "not_in_v0": 1})
    assert resp.error_code is K.none and resp.throttle_time.total_seconds() == 0.005
    assert codec.encode_response(3, resp)[4:8] == b"\x00\x00\x00\x03"


def test_checked_produce_batch_accepts_a_client_batch_and_refuses_bad_ones():
    h = checked_produce_batch(client_batch(1, producer_id=4, producer_epoch=0, base_sequence=0), 9, 1 << 20, NOW)
    assert (h.magic, h.record_count, h.producer_id) == (2, 2, 4)
    bad_crc = bytearray(client_batch())
    bad_crc[-1] ^= 1
    two = client_batch() + client_batch()
    magic1 = encode_batch(BatchHeader(0, 0, -1, -1, -1, -1, 1, 0, NOW, NOW), b"x")
    zstd_v3 = bytearray(client_batch())
    zstd_v3[22] |= 4  # codec bits live under the CRC: recompute it so only the codec is wrong
    struct.pack_into(">I", zstd_v3, 17, __import__("crc32c").crc32c(bytes(zstd_v3[21:])))
    for records, version, code in [(bytes(bad_crc), 9, K.corrupt_message), (two, 9, K.invalid_record),
                                   (magic1, 9, K.unsupported_for_message_format), (None, 9, K.invalid_record),
                                   (bytes(zstd_v3), 3, K.unsupported_compression_type),
                                   (b"\x00" * 20, 9, K.corrupt_message)]:
        with pytest.raises(ProduceRefused) as refused:
            checked_produce_batch(records, version, 1 << 20, NOW)
        assert refused.value.code == code, (records and records[:30], refused.value.message)
    with pytest.raises(ProduceRefused) as refused:
        checked_produce_batch(client_batch(count=100), 9, 1000, NOW)
    assert refused.value.code == K.message_too_large


def test_kafka_readers_get_magic_2_batches_unchanged_and_magic_1_converted():
    kafka = with_offsets(client_batch(), 0, 0)
    data, first, end = as_kafka_batches(kafka)
    assert data is kafka and (first, end) == (0, 2)
    semel = encode_batch(BatchHeader(2, 0, 0, -1, -1, -1, 1, 0, NOW, NOW),
                         Records(records=[Record(value=b"x")]).SerializeToString())
    data, first, end = as_kafka_batches(kafka + semel)
    assert data.startswith(kafka) and (first, end) == (0, 3)
    converted = decode_header(data, len(kafka))
    assert (converted.magic, converted.base_offset) == (2, 2)


def test_decompression_of_each_framing_and_its_bound(monkeypatch):
    records = encode_records([KafkaRecord(0, 0, None, b"x" * 1000)])
    assert decompress(1, gzip.compress(records)) == records
    raw = bytes(cramjam.snappy.compress_raw(records))
    xerial = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">i", len(raw)) + raw
    assert decompress(CODEC_SNAPPY, raw) == decompress(CODEC_SNAPPY, xerial) == records
    assert decompress(3, bytes(cramjam.lz4.compress(records))) == records
    assert decompress(4, bytes(cramjam.zstd.compress(records))) == records
    with pytest.raises(CorruptBatchError):
        decompress(1, b"not gzip")
    monkeypatch.setattr("semel.limits.MAX_DECOMPRESSED_BATCH_BYTES", 100)
    for codec_id, data in [(1, gzip.compress(records)), (2, raw), (2, xerial), (4, bytes(cramjam.zstd.compress(records)))]:
        with pytest.raises(CorruptBatchError, match="more than|larger than"):
            decompress(codec_id, data)
