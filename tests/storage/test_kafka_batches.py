"""Magic-2 batches (Kafka's RecordBatch v2) in the stored form, next to magic 1.

Batches are built by kafka-python, a real Kafka client, so the layout is the one clients send.
"""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from semel.storage.batch import (
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    KAFKA_MAGIC,
    MAGIC,
    BatchHeader,
    CorruptBatchError,
    decode_header,
    encode_batch,
    peek_header,
    with_offsets,
)
from semel.storage.kafka_records import (
    KafkaRecord,
    decode_control_record,
    decode_records,
    encode_control_record,
    kafka_batch_from_magic1,
)
from semel.storage.kv import KvStore, partition_key
from semel.storage.log import PartitionLog
from semel.storage.log_policy import LogConfig
from semel.storage.batch import Marker, decode_marker, encode_marker
from semel.storage.partition import PartitionStore
from semel.v1.common_pb2 import ErrorCode, Record, RecordHeader, Records

CONFIG = LogConfig(flush_policy="never")
TS = 1_700_000_000_000


def kafka_batch(count=3, *, codec=0, pid=-1, epoch=-1, seq=-1, first=0, txn=False) -> bytes:
    b = MemoryRecordsBuilder(magic=2, compression_type=codec, batch_size=1 << 20, transactional=txn,
                             producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    for i in range(first, first + count):
        b.append(timestamp=TS + i, key=b"k%d" % i, value=b"value-%d" % i * 20, headers=[("h", b"x%d" % i)])
    b.close()
    return bytes(b.buffer())


def read_values(data: bytes) -> list[tuple[int, bytes]]:
    records = MemoryRecords(data)
    out = []
    while (batch := records.next_batch()) is not None:
        out += [(r.offset, r.value) for r in batch]
    return out


@pytest.mark.parametrize("codec", [0, 1])  # none, gzip: the header is never compressed
def test_a_client_batch_decodes_as_magic_2_and_its_crc_is_checked(codec):
    raw = kafka_batch(4, codec=codec, pid=7, epoch=2, seq=10)
    h = decode_header(raw)
    assert (h.magic, h.record_count, h.last_offset_delta, h.size_bytes) == (KAFKA_MAGIC, 4, 3, len(raw))
    assert (h.producer_id, h.producer_epoch, h.base_sequence, h.last_sequence) == (7, 2, 10, 13)
    assert (h.base_timestamp_ms, h.max_timestamp_ms, h.attributes & 0x07) == (TS, TS + 3, codec)
    assert peek_header(raw[:61]) == h
    damaged = bytearray(raw)
    damaged[-1] ^= 1
    with pytest.raises(CorruptBatchError, match="CRC"):
        decode_header(bytes(damaged))


def test_stamping_offsets_and_epoch_keeps_the_kafka_crc_valid():
    raw = kafka_batch(2)
    stamped = with_offsets(raw, 1234, 9)
    assert stamped[21:] == raw[21:]  # nothing under the CRC changed
    h = decode_header(stamped)
    assert (h.base_offset, h.leader_epoch, h.magic) == (1234, 9, KAFKA_MAGIC)
    assert read_values(stamped) == [(1234, b"value-0" * 20), (1235, b"value-1" * 20)]


def test_a_log_holds_both_magics_serves_bytes_unchanged_and_recovers_them(tmp_path):
    log = PartitionLog.open(tmp_path / "p", CONFIG, 0)
    semel = encode_batch(BatchHeader(0, 1, 0, -1, -1, -1, 2, 0, TS, TS), b"opaque")
    kafka = with_offsets(kafka_batch(3, codec=1), 2, 0)
    log.append(semel, TS)
    log.append(kafka, TS)
    log.append(with_offsets(kafka_batch(1), 5, 1), TS)
    read = log.read(0, 1 << 20)
    assert read.data == semel + kafka + with_offsets(kafka_batch(1), 5, 1)
    assert [(h.base_offset, h.magic) for h in read.headers] == [(0, MAGIC), (2, KAFKA_MAGIC), (5, KAFKA_MAGIC)]
    assert log.read(3, 1 << 20).data.startswith(kafka)  # the batch holding offset 3
    log.close()
    reopened = PartitionLog.open(tmp_path / "p", CONFIG, 0)  # recovery walks both layouts
    assert reopened.log_end_offset == 6 and reopened.epoch_cache.latest_epoch == 1
    assert reopened.read(0, 1 << 20).data == read.data
    reopened.close()


def test_a_log_refuses_a_magic_2_batch_with_a_bad_crc(tmp_path):
    log = PartitionLog.open(tmp_path / "p", CONFIG, 0)
    damaged = bytearray(kafka_batch(2))
    damaged[70] ^= 0xFF
    with pytest.raises(CorruptBatchError):
        log.append(bytes(damaged), TS)
    assert log.log_end_offset == 0
    log.close()


def test_the_leader_deduplicates_idempotent_kafka_batches(tmp_path):
    kv = KvStore.open(tmp_path / "kv")
    store = PartitionStore.open(tmp_path / "p", CONFIG, kv, partition_key("t", 0), 0)
    first = kafka_batch(3, pid=5, epoch=0, seq=0)
    r1, r2 = store.append_as_leader([first, kafka_batch(2, pid=5, epoch=0, seq=3, first=3)], 4, TS)
    assert (r1.first_offset, r1.last_offset, r2.first_offset, r2.last_offset) == (0, 2, 3, 4)
    (dup,) = store.append_as_leader([first], 4, TS)
    assert dup.duplicate and (dup.first_offset, dup.last_offset) == (0, 2)
    (gap,) = store.append_as_leader([kafka_batch(1, pid=5, epoch=0, seq=9)], 4, TS)
    assert gap.error == ErrorCode.OUT_OF_ORDER_SEQUENCE
    assert read_values(store.log.read(0, 1 << 20).data)[3] == (3, b"value-3" * 20)
    store.close()
    kv.close()


def test_a_magic_2_marker_closes_the_transaction_on_replay(tmp_path):
    """Followers and recovery read markers back; a magic-2 control batch must work like magic 1."""
    kv = KvStore.open(tmp_path / "kv")
    store = PartitionStore.open(tmp_path / "p", CONFIG, kv, partition_key("t", 0), 0)
    data = with_offsets(kafka_batch(2, pid=8, epoch=1, seq=0, txn=True), 0, 0)
    marker_header = BatchHeader(2, 0, 0, 8, 1, -1, 1, ATTR_CONTROL | ATTR_TRANSACTIONAL, TS, TS)
    from semel.storage.batch import encode_kafka_batch

    marker = encode_kafka_batch(marker_header, encode_control_record(False, 3))
    store.append_as_follower(data, TS)
    assert store.first_unstable_offset() == 0
    store.append_as_follower(marker, TS)
    assert store.first_unstable_offset() is None
    assert [(a.producer_id, a.first_offset, a.last_offset) for a in store.log.aborted_txns.in_range(0, 3)] == [(8, 0, 2)]
    store.close()
    kv.close()


def test_magic_1_batches_convert_to_what_a_kafka_client_reads():
    records = Records(records=[
        Record(offset_delta=0, timestamp_delta_ms=0, key=b"a", value=b"one", headers=[RecordHeader(key="h", value=b"1")]),
        Record(offset_delta=1, timestamp_delta_ms=5, value=b"two"),
    ]).SerializeToString()
    stored = encode_batch(BatchHeader(40, 1, 3, 9, 0, 7, 2, 0, TS, TS + 5), records)
    converted = kafka_batch_from_magic1(stored)
    h = decode_header(converted)
    assert (h.magic, h.base_offset, h.leader_epoch, h.producer_id, h.base_sequence) == (KAFKA_MAGIC, 40, 3, 9, 7)
    batch = MemoryRecords(converted).next_batch()
    assert isinstance(batch, DefaultRecordBatch) and batch.validate_crc()
    got = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]
    assert got == [(40, TS, b"a", b"one", [("h", b"1")]), (41, TS + 5, None, b"two", [])]


def test_magic_1_markers_convert_to_kafka_control_batches():
    stored = encode_marker(8, 2, Marker(commit=True, coordinator_epoch=6), base_offset=10, leader_epoch=1, now_ms=TS)
    converted = kafka_batch_from_magic1(stored)
    batch = MemoryRecords(converted).next_batch()
    assert batch.is_control_batch and batch.is_transactional and batch.producer_id == 8
    assert decode_control_record(converted[61:]) == (True, 6)
    assert decode_records(encode_control_record(False, 2), 1)[0].key == b"\x00\x00\x00\x00"
    assert decode_marker(encode_control_record(False, 2), KAFKA_MAGIC) == Marker(commit=False, coordinator_epoch=2)


def test_malformed_records_are_corrupt_not_a_crash():
    with pytest.raises(CorruptBatchError):
        decode_records(b"\x7f\x00", 1)
    assert decode_records(b"", 0) == []
    assert decode_records(b"".join([]), 0) == []
    assert KafkaRecord(0, 0, None, None).headers == ()


def test_the_segment_dump_walks_both_magics_and_reads_magic_2_markers():
    from semel.storage.batch import encode_kafka_batch
    from semel.storage.segment_dump import BatchInfo, batch_fields, walk_segment

    semel = encode_batch(BatchHeader(0, 0, 0, -1, -1, -1, 1, 0, TS, TS), b"x")
    kafka = with_offsets(kafka_batch(2), 1, 0)
    marker = encode_kafka_batch(BatchHeader(3, 0, 0, 8, 1, -1, 1, ATTR_CONTROL | ATTR_TRANSACTIONAL, TS, TS),
                                encode_control_record(True, 4))
    infos = [i for i in walk_segment(semel + kafka + marker, 0) if isinstance(i, BatchInfo)]
    fields = [batch_fields(i) for i in infos]
    assert [(f["base_offset"], f["magic"], f["crc"]) for f in fields] == [(0, 1, "ok"), (1, 2, "ok"), (3, 2, "ok")]
    assert (fields[2]["marker"], fields[2]["coordinator_epoch"]) == ("COMMIT", 4)
