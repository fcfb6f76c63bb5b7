"""gRPC Produce's `kafka_batch`: a whole Kafka RecordBatch v2, compressed or not, checked and
appended by the broker's one write path, in one process over a real ReplicaManager (file store).
Each codec round-trips through the broker's own gRPC Fetch conversion; idempotent retries are
deduplicated; hostile batches get a clear code and append nothing."""

from __future__ import annotations

import asyncio
import struct

import crc32c
import pytest
from semel.clock import wall_clock_ms
from semel.cluster.broker.produce_validation import Rejection, check_kafka_batch
from semel.cluster.broker.server import BrokerService
from semel.storage.batch import HEADER_BYTES, KAFKA_CRC_START, decode_header, encode_kafka_batch
from semel.storage.kafka_records import (
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_SNAPPY,
    CODEC_ZSTD,
    KafkaRecord,
    compress,
    encode_compressed_batch,
    encode_records,
)
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb

from tests.cluster.test_broker_service_inprocess import FakeBroker, image

CODECS = [CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD]


def values(n: int, tag: str = "v") -> list[bytes]:
    return [(f"{tag}{i}-" + "x" * 200).encode() for i in range(n)]


def kbatch(vals: list[bytes], codec: int = CODEC_ZSTD, pid: int = -1, epoch: int = -1, seq: int = -1,
           attributes: int = 0) -> bytes:
    ts = wall_clock_ms()
    records = encode_records(KafkaRecord(i, 0, None, v) for i, v in enumerate(vals))
    return encode_compressed_batch(records, codec=codec, record_count=len(vals), base_timestamp_ms=ts,
                                   max_timestamp_ms=ts, attributes=attributes, producer_id=pid,
                                   producer_epoch=epoch, base_sequence=seq)


def produce(svc: BrokerService, data: bytes, acks: int = bpb.ACKS_LEADER) -> bpb.PartitionProduceResult:
    req = bpb.ProduceRequest(acks=acks, timeout_ms=2000, partitions=[
        bpb.PartitionProduceData(topic="t", partition=0, kafka_batch=data)])
    return asyncio.run(svc.Produce(req, None)).results[0]


def fetch_values(svc: BrokerService, offset: int = 0) -> list[tuple[int, bytes]]:
    req = bpb.FetchRequest(max_wait_ms=0, max_bytes=1 << 22, partitions=[
        bpb.FetchPartition(topic="t", partition=0, fetch_offset=offset, max_bytes=1 << 22)])
    resp = asyncio.run(svc.Fetch(req, None))
    (r,) = resp.results
    assert r.error_code == pb.NONE, r.error_message
    out = []
    for b in r.batches:
        for rec in pb.Records.FromString(b.records).records:
            out.append((b.base_offset + rec.offset_delta, rec.value))
    return out


@pytest.fixture
def svc(tmp_path):
    b = FakeBroker(tmp_path, image(isr=(1,), min_isr=1))
    yield BrokerService(b)
    b.close()


@pytest.mark.parametrize("codec", CODECS)
def test_each_codec_appends_as_sent_and_reads_back_over_grpc(svc, codec):
    vals = values(5)
    data = kbatch(vals, codec)
    r = produce(svc, data)
    assert r.error_code == pb.NONE, r.error_message
    assert (r.base_offset, r.last_offset, r.duplicate) == (0, 4, False)
    r2 = produce(svc, kbatch(values(2, "w"), codec))
    assert (r2.error_code, r2.base_offset) == (pb.NONE, 5)
    assert fetch_values(svc) == list(enumerate(vals + values(2, "w")))
    stored = svc.b.rm.get("t", 0).store.read(0, 1 << 22, None).data
    head = decode_header(stored)  # stored as sent (magic 2, its codec), base offset stamped, CRC valid
    assert (head.magic, head.attributes & 7, head.base_offset) == (2, codec, 0)
    assert bytes(stored[HEADER_BYTES: len(data)]) == data[HEADER_BYTES:]


def test_an_idempotent_retry_of_a_compressed_batch_is_deduplicated(svc):
    data = kbatch(values(3), CODEC_LZ4, pid=7, epoch=0, seq=0)
    first = produce(svc, data)
    assert first.error_code == pb.NONE and not first.duplicate
    again = produce(svc, data)
    assert again.error_code == pb.NONE and again.duplicate and again.base_offset == first.base_offset
    gap = produce(svc, kbatch(values(1), CODEC_LZ4, pid=7, epoch=0, seq=9))
    assert gap.error_code == pb.OUT_OF_ORDER_SEQUENCE
    assert len(fetch_values(svc)) == 3


def _with_crc(raw: bytearray) -> bytes:
    struct.pack_into(">I", raw, 17, crc32c.crc32c(bytes(raw[KAFKA_CRC_START:])))
    return bytes(raw)


def _count_lie(vals: list[bytes], claimed: int, codec: int) -> bytes:
    ts = wall_clock_ms()
    h = decode_header(kbatch(vals, codec))
    records = encode_records(KafkaRecord(i, 0, None, v) for i, v in enumerate(vals))
    return encode_kafka_batch(
        type(h)(0, claimed - 1, -1, -1, -1, -1, claimed, codec, ts, ts, magic=2), compress(codec, records))


def hostile() -> list[tuple[str, bytes, int]]:
    good = kbatch(values(2), CODEC_ZSTD)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    magic1 = bytearray(good)
    magic1[16] = 1
    unknown_codec = bytearray(good)
    struct.pack_into(">h", unknown_codec, 21, 5)  # attributes: codec 5
    garbage_zstd = bytearray(good)
    garbage_zstd[HEADER_BYTES:] = b"\x00" * (len(good) - HEADER_BYTES)
    return [
        ("bad crc", bytes(bad_crc), pb.CORRUPT_MESSAGE),
        ("magic 1", _with_crc(magic1), pb.INVALID_RECORD),
        ("unknown codec", _with_crc(unknown_codec), pb.INVALID_RECORD),
        ("records do not decompress", _with_crc(garbage_zstd), pb.CORRUPT_MESSAGE),
        ("count says more", _count_lie(values(2), 3, CODEC_GZIP), pb.CORRUPT_MESSAGE),
        ("count says fewer", _count_lie(values(3), 2, CODEC_SNAPPY), pb.CORRUPT_MESSAGE),
        ("truncated", good[:HEADER_BYTES - 3], pb.CORRUPT_MESSAGE),
        ("two batches", good + good, pb.INVALID_RECORD),
        ("control batch", kbatch(values(1), attributes=0x20), pb.INVALID_RECORD),
        ("transactional without producer", kbatch(values(1), attributes=0x10), pb.INVALID_RECORD),
    ]


@pytest.mark.parametrize("name,data,code", hostile(), ids=[h[0] for h in hostile()])
def test_hostile_kafka_batches_are_refused_with_a_clear_code_and_append_nothing(svc, name, data, code):
    r = produce(svc, data)
    assert r.error_code == code, (name, r.error_message)
    assert r.error_message
    assert svc.b.rm.get("t", 0).log_end_offset == 0


def test_an_oversize_kafka_batch_is_refused(svc):
    big = kbatch([bytes(range(256)) * 64 for _ in range(4)], CODEC_NONE)
    out = check_kafka_batch(big, max_batch_bytes=len(big) - 1, now_ms=wall_clock_ms(), max_future_timestamp_ms=1000)
    assert isinstance(out, Rejection) and out.error_code == pb.RECORD_BATCH_TOO_LARGE


def test_a_batch_that_decompresses_past_the_bound_is_refused():
    from semel import limits
    huge = b"\x00" * (limits.MAX_DECOMPRESSED_BATCH_BYTES + 1024)
    ts = wall_clock_ms()
    h = decode_header(kbatch(values(1)))
    data = encode_kafka_batch(type(h)(0, 0, -1, -1, -1, -1, 1, CODEC_ZSTD, ts, ts, magic=2), compress(CODEC_ZSTD, huge))
    out = check_kafka_batch(data, max_batch_bytes=1 << 22, now_ms=ts, max_future_timestamp_ms=1000)
    assert isinstance(out, Rejection) and out.error_code == pb.CORRUPT_MESSAGE, out


def test_both_forms_or_neither_is_an_invalid_request(svc):
    both = bpb.PartitionProduceData(topic="t", partition=0, kafka_batch=kbatch(values(1)),
                                    batch=pb.RecordBatch(producer_id=-1, producer_epoch=-1, base_sequence=-1))
    neither = bpb.PartitionProduceData(topic="t", partition=0)
    for pd in (both, neither):
        resp = asyncio.run(svc.Produce(bpb.ProduceRequest(acks=bpb.ACKS_LEADER, partitions=[pd]), None))
        assert resp.results[0].error_code == pb.INVALID_REQUEST


def test_a_transactional_request_refuses_a_plain_kafka_batch(svc):
    req = bpb.ProduceRequest(acks=bpb.ACKS_ALL, transactional_id="tx", partitions=[
        bpb.PartitionProduceData(topic="t", partition=0, kafka_batch=kbatch(values(1)))])
    r = asyncio.run(svc.Produce(req, None)).results[0]
    assert r.error_code == pb.INVALID_REQUEST and "transactional" in r.error_message
