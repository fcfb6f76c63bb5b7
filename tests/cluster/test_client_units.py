"""Client cores without processes or sockets: encoding, partitioner, batching, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.client import errors as client_errors
from semel.client.accumulator import BATCH_OVERHEAD_BYTES, RecordAccumulator
from semel.client.partitioner import StickyPartitioner, murmur2, partition_for_key
from semel.client.records import build_batch, decode_batch, encode_record, encode_varint
from semel.v1 import common_pb2

# --- encoding ------------------------------------------------------------------------
header_st = st.tuples(st.text(max_size=8), st.binary(max_size=8))
record_st = st.tuples(
    st.integers(min_value=-(2**40), max_value=2**40),          # timestamp delta
    st.one_of(st.none(), st.binary(max_size=40)),              # key
    st.binary(max_size=300),                                   # value
    st.lists(header_st, max_size=3),                           # headers
)


@settings(max_examples=200, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=20))
def test_hand_encoding_is_byte_identical_to_protobuf(records):
    ours = b"".join(encode_record(i, ts, key, value, headers) for i, (ts, key, value, headers) in enumerate(records))
    reference = common_pb2.Records(
        records=[
            common_pb2.Record(
                offset_delta=i,
                timestamp_delta_ms=ts,
                key=key or b"",
                value=value,
                headers=[common_pb2.RecordHeader(key=k, value=v) for k, v in headers],
            )
            for i, (ts, key, value, headers) in enumerate(records)
        ]
    )
    assert ours == reference.SerializeToString()


@settings(max_examples=100, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=20), st.integers(min_value=0, max_value=2**40))
def test_batch_round_trip(records, base_offset):
    base_ts = 1_700_000_000_000
    encoded = [encode_record(i, ts, key, value, headers) for i, (ts, key, value, headers) in enumerate(records)]
    batch = build_batch(encoded, len(records), base_ts, base_ts + max(r[0] for r in records))
    batch.base_offset = base_offset
    decoded = decode_batch("t", 3, batch)
    assert [r.offset for r in decoded] == list(range(base_offset, base_offset + len(records)))
    for record, (ts, key, value, headers) in zip(decoded, records):
        assert (record.topic, record.partition) == ("t", 3)
        assert record.timestamp_ms == base_ts + ts
        assert record.key == (key or None)
        assert record.value == value
        assert record.headers == tuple(headers)


def test_decode_skips_offsets_below_position_and_control_batches():
    encoded = [encode_record(i, 0, None, b"v%d" % i) for i in range(5)]
    batch = build_batch(encoded, 5, 1, 1)
    batch.base_offset = 10
    assert [r.offset for r in decode_batch("t", 0, batch, min_offset=12)] == [12, 13, 14]
    assert decode_batch("t", 0, batch, min_offset=15) == []
    control = build_batch([b""], 1, 1, 1, attributes=common_pb2.CONTROL)
    assert decode_batch("t", 0, control) == []


def test_varint_matches_protobuf_for_edge_values():
    for value in (0, 1, 127, 128, 16383, 16384, 2**31 - 1, 2**63 - 1, -1, -(2**31)):
        msg = common_pb2.Record(timestamp_delta_ms=value).SerializeToString()
        assert msg == (b"\x10" + encode_varint(value) if value else b"")


# --- partitioner ---------------------------------------------------------------------
KAFKA_MURMUR2_VECTORS = {  # from Kafka's UtilsTest.testMurmur2
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key,expected", KAFKA_MURMUR2_VECTORS.items())
def test_murmur2_matches_kafka(key, expected):
    assert murmur2(key) == expected


def test_key_partition_vectors():
    # (murmur2 & 0x7fffffff) % n, stable across languages and releases.
    assert partition_for_key(b"21", 10) == (-973932308 & 0x7FFFFFFF) % 10
    assert [partition_for_key(k, 7) for k in (b"abc", b"foobar", b"")] == [
        479470107 % 7,
        (-790332482 & 0x7FFFFFFF) % 7,
        (murmur2(b"") & 0x7FFFFFFF) % 7,
    ]
    assert murmur2(b"") == 275646681


def test_sticky_partitioner_moves_on_when_batch_closes():
    sticky = StickyPartitioner(seed=2)
    assert sticky.partition("t", 4) == 2
    assert sticky.partition("t", 4) == 2
    sticky.batch_closed("t", 2, 4)
    assert sticky.partition("t", 4) == 3
    sticky.batch_closed("t", 1, 4)  # not the current one: no move
    assert sticky.partition("t", 4) == 3
    sticky.batch_closed("t", 3, 4)
    assert sticky.partition("t", 4) == 0
    # Partitions without a leader are skipped while another has one.
    assert sticky.partition("t", 4, available=lambda p: p == 2) == 2
    assert sticky.partition("t", 4, available=lambda p: False) == 2


# --- accumulator ---------------------------------------------------------------------
def _acc(**kw):
    args = dict(batch_bytes=1000, linger_ms=10, buffer_bytes=10_000, max_in_flight=1)
    args.update(kw)
    return RecordAccumulator(**args)


def test_linger_bounds_when_a_batch_is_sent():
    acc = _acc()
    acc.append("t", 0, 5, None, b"x" * 10, None, now_ms=100)
    assert acc.drain_ready(now_ms=109) == []
    assert acc.next_ready_ms(109) == 110
    [batch] = acc.drain_ready(now_ms=110)
    assert batch.record_count == 1 and batch.closed


def test_full_batch_is_sent_before_linger():
    acc = _acc(linger_ms=10_000)
    fulls = [acc.append("t", 0, 5, None, b"x" * 100, None, now_ms=0)[1] for _ in range(12)]
    assert True in fulls
    ready = acc.drain_ready(now_ms=1)
    assert len(ready) == 1
    assert ready[0].size_bytes <= 1000
    assert ready[0].record_count == len(common_pb2.Records.FromString(ready[0].records_bytes()).records)


def test_batches_never_exceed_batch_bytes_except_a_single_large_record():
    acc = _acc(batch_bytes=500, linger_ms=0, buffer_bytes=10**6)
    for size in (100, 200, 150, 400, 900, 10):
        acc.append("t", 0, 0, None, b"x" * size, None, now_ms=0)
    batches = []
    while True:
        got = acc.drain_ready(now_ms=0)
        if not got:
            break
        for b in got:
            batches.append(b)
            acc.complete(b)
    assert sum(b.record_count for b in batches) == 6
    for b in batches:
        assert b.size_bytes <= 500 or b.record_count == 1


def test_in_flight_limit_and_ordered_retry():
    acc = _acc(linger_ms=0)
    for i in range(3):
        acc.append("t", 0, 0, None, b"x" * 400, None, now_ms=0)  # 2 per batch
    [first] = acc.drain_ready(now_ms=0)
    assert acc.drain_ready(now_ms=0) == []  # max_in_flight=1
    acc.reenqueue(first, retry_at_ms=50)
    assert acc.drain_ready(now_ms=49) == []  # backoff holds the head, nothing overtakes it
    assert acc.drain_ready(now_ms=50) == [first]
    acc.complete(first)
    [second] = acc.drain_ready(now_ms=50)
    assert second is not first


def test_buffer_accounting_and_room():
    acc = _acc(buffer_bytes=600, linger_ms=0)
    size = RecordAccumulator.record_size(None, b"x" * 200, None)
    assert acc.has_room(size)
    acc.append("t", 0, 0, None, b"x" * 200, None, now_ms=0)
    acc.append("t", 1, 0, None, b"x" * 200, None, now_ms=0)
    assert acc.buffered_bytes == 2 * (BATCH_OVERHEAD_BYTES + len(encode_record(0, 0, None, b"x" * 200)))
    assert not acc.has_room(size)
    batches = acc.drain_ready(now_ms=0)
    for b in batches:
        acc.complete(b)
    assert acc.buffered_bytes == 0 and acc.has_room(size)


def test_delivery_timeout_expires_queued_batches():
    acc = _acc(linger_ms=10_000)
    future, _, _ = acc.append("t", 0, 0, None, b"x", None, now_ms=0)
    assert acc.expired(now_ms=99, delivery_timeout_ms=100) == []
    [batch] = acc.expired(now_ms=100, delivery_timeout_ms=100)
    assert acc.buffered_bytes == 0
    batch.result.complete(-1, -1, client_errors.DeliveryTimeoutError("x"))
    with pytest.raises(client_errors.DeliveryTimeoutError):
        future.result(0)


def test_futures_and_callbacks_resolve_per_record_offsets():
    acc = _acc(linger_ms=0)
    futures = [acc.append("t", 2, 1000 + i, b"k", b"v", None, now_ms=0)[0] for i in range(3)]
    seen = []
    futures[1].add_done_callback(lambda f: seen.append(f.result().offset))
    [batch] = acc.drain_ready(now_ms=0)
    acc.complete(batch)
    batch.result.complete(40, -1, None)
    assert [f.result(0).offset for f in futures] == [40, 41, 42]
    assert futures[2].result(0).timestamp_ms == 1002
    assert seen == [41]
    late = []
    futures[0].add_done_callback(lambda f: late.append(f.done()))
    assert late == [True]


# --- errors --------------------------------------------------------------------------
def test_every_error_code_has_a_class_in_one_category():
    for name, code in common_pb2.ErrorCode.items():
        if code == common_pb2.NONE:
            continue
        cls = client_errors.error_class(code)
        assert cls.code == code
        assert cls.__name__ == "".join(p.capitalize() for p in name.split("_")) + "Error"
        bases = (client_errors.RetriableError, client_errors.AbortableError, client_errors.FatalError)
        categories = [issubclass(cls, c) for c in bases]
        assert categories.count(True) == 1, name


def test_error_mapping_examples():
    e = client_errors.error_for_code(common_pb2.NOT_LEADER_OR_FOLLOWER, context="produce to t-0")
    assert isinstance(e, client_errors.NotLeaderOrFollowerError) and e.retriable
    assert "NOT_LEADER_OR_FOLLOWER" in str(e) and "produce to t-0" in str(e)
    e = client_errors.error_for_code(common_pb2.TOPIC_ALREADY_EXISTS, "topic 'a' exists")
    assert isinstance(e, client_errors.FatalError) and not e.retriable
    e = client_errors.error_for_code(common_pb2.REQUEST_TIMED_OUT)
    assert e.outcome_unknown and "outcome unknown" in str(e)
    assert isinstance(client_errors.error_for_code(common_pb2.OUT_OF_ORDER_SEQUENCE), client_errors.AbortableError)
    e = client_errors.error_for_code(9999, "from the future")
    assert isinstance(e, client_errors.FatalError) and "9999" in str(e)
    with pytest.raises(AssertionError):
        client_errors.error_for_code(common_pb2.NONE)


# --- metadata view -------------------------------------------------------------------
def _metadata(topics):
    from semel.v1 import broker_pb2

    return broker_pb2.MetadataResponse(
        cluster_id="c",
        controller_id=1,
        metadata_version=7,
        brokers=[broker_pb2.BrokerInfo(broker_id=i, host="h", port=9000 + i, fenced=(i == 3)) for i in (1, 2, 3)],
        topics=topics,
    )


def test_cluster_view_leaders_and_missing_topics():
    from semel.client.metadata import ClusterView
    from semel.v1 import broker_pb2

    view = ClusterView()
    t = broker_pb2.TopicMetadata(
        name="t",
        partitions=[
            broker_pb2.PartitionMetadata(partition=1, leader_id=-1, error_code=common_pb2.LEADER_NOT_AVAILABLE),
            broker_pb2.PartitionMetadata(partition=0, leader_id=2, replicas=[2, 1], isr=[2]),
        ],
    )
    missing = broker_pb2.TopicMetadata(name="gone", error_code=common_pb2.UNKNOWN_TOPIC_OR_PARTITION)
    view.update(_metadata([t, missing]), ["t", "gone", "never-answered"])
    assert view.partition_count("t") == 2
    assert view.leader_address("t", 0) == "h:9002"
    assert view.leader_address("t", 1) is None
    assert view.partition("t", 0).isr == (2,)
    assert view.partition_count("gone") is None
    assert view.topic_errors["gone"] == view.topic_errors["never-answered"] == common_pb2.UNKNOWN_TOPIC_OR_PARTITION
    assert view.fenced == {3} and view.version == 7


def test_cluster_view_never_goes_back_to_an_older_leader_epoch():
    """KIP-320 (chaos seed 23): a broker cut off from the quorum answers with the leader it last
    knew; the view keeps the newer leadership, except for a re-created topic (new topic id)."""
    from semel.client.metadata import ClusterView
    from semel.v1 import broker_pb2

    def topic(topic_id, *parts):
        return broker_pb2.TopicMetadata(name="t", topic_id=topic_id, partitions=[
            broker_pb2.PartitionMetadata(partition=i, leader_id=leader, leader_epoch=epoch)
            for i, (leader, epoch) in enumerate(parts)])

    view = ClusterView()
    view.update(_metadata([topic("A", (2, 5), (1, 3))]), ["t"])
    view.update(_metadata([topic("A", (1, 4), (3, 4))]), ["t"])  # p0 from a stale broker, p1 moved on
    assert (view.partition("t", 0).leader_id, view.partition("t", 0).leader_epoch) == (2, 5)
    assert (view.partition("t", 1).leader_id, view.partition("t", 1).leader_epoch) == (3, 4)
    assert view.ignored_stale == 1
    view.update(_metadata([topic("A", (2, 5), (3, 4))]), ["t"])  # same epoch: taken (ISR may change)
    assert view.ignored_stale == 0
    view.update(_metadata([topic("B", (1, 0))]), ["t"])  # re-created: epochs start again
    assert (view.partition_count("t"), view.partition("t", 0).leader_id) == (1, 1)


def test_cluster_view_keeps_a_topic_a_stale_broker_does_not_know():
    """A broker behind the quorum answers UNKNOWN_TOPIC_OR_PARTITION for a topic created since:
    the view keeps the topic; an answer at the same or a newer version removes it (deleted)."""
    from semel.client.metadata import ClusterView
    from semel.v1 import broker_pb2

    def answer(version, *topics):
        return broker_pb2.MetadataResponse(cluster_id="c", metadata_version=version, brokers=[
            broker_pb2.BrokerInfo(broker_id=1, host="h", port=9001)], topics=list(topics))

    known = broker_pb2.TopicMetadata(name="t", topic_id="A", partitions=[
        broker_pb2.PartitionMetadata(partition=0, leader_id=1, leader_epoch=0)])
    unknown = broker_pb2.TopicMetadata(name="t", error_code=common_pb2.UNKNOWN_TOPIC_OR_PARTITION)
    view = ClusterView()
    view.update(answer(10, known), ["t"])
    view.update(answer(7, unknown), ["t"])
    assert view.partition_count("t") == 1 and view.ignored_stale == 1
    view.update(answer(8), None)  # an all-topics answer without it, also older
    assert view.partition_count("t") == 1
    view.update(answer(12, unknown), ["t"])  # newer: deleted
    assert view.partition_count("t") is None and view.topic_errors["t"] == common_pb2.UNKNOWN_TOPIC_OR_PARTITION
    view.update(answer(20, known), ["t"])
    other = answer(3, unknown)
    other.cluster_id = "another"  # a new cluster behind the same addresses: its answers count
    view.update(other, ["t"])
    assert view.partition_count("t") is None and view.cluster_id == "another"


def test_requests_are_split_below_the_message_limit():
    from semel.client.producer import _split_by_size

    acc = _acc(batch_bytes=1000, linger_ms=0, buffer_bytes=10**6)
    for p in range(5):
        acc.append("t", p, 0, None, b"x" * 800, None, now_ms=0)
    batches = acc.drain_ready(now_ms=0)
    groups = list(_split_by_size(batches, 2000))
    assert [len(g) for g in groups] == [2, 2, 1]
    assert [b for g in groups for b in g] == batches


def test_format_table_aligns_columns():
    from semel.cli.commands import format_table

    text = format_table(["A", "LONGER"], [["xyz", "1"], ["q", "22"]])
    assert text.splitlines() == ["A    LONGER", "xyz  1", "q    22"]


def test_busy_partition_reflects_the_in_flight_limit():
    acc = _acc(linger_ms=0, max_in_flight=1)
    acc.append("t", 0, 0, None, b"x", None, now_ms=0)
    assert not acc.busy("t", 0)
    [batch] = acc.drain_ready(now_ms=0)
    assert acc.busy("t", 0) and not acc.busy("t", 1)
    acc.complete(batch)
    assert not acc.busy("t", 0)


def test_error_categories_match_the_wire_contract_comments():
    """common.proto says for each code whether it is retriable, abortable or fatal: the client agrees."""
    import pathlib
    import re

    proto = pathlib.Path(__file__).resolve().parents[2] / "proto" / "semel" / "v1" / "common.proto"
    text = proto.read_text()
    body = text[text.index("enum ErrorCode"):]
    body = body[: body.index("}")]
    checked = 0
    for name, comment in re.findall(r"^\s*([A-Z_]+)\s*=\s*\d+;\s*//\s*(.*)$", body, re.M):
        word = comment.split()[0].rstrip(":")
        if word not in ("retriable", "fatal", "abortable"):
            continue
        cls = client_errors.error_class(common_pb2.ErrorCode.Value(name))
        expected = {"retriable": client_errors.RetriableError, "fatal": client_errors.FatalError,
                    "abortable": client_errors.AbortableError}[word]
        assert issubclass(cls, expected), f"{name}: the contract says {word}"
        checked += 1
    assert checked > 40


# --- compression: the accumulator's Kafka batches through the broker's own decoder -------------
@pytest.mark.parametrize("codec", [1, 2, 3, 4])
def test_a_compressed_batch_round_trips_through_the_brokers_checks_and_grpc_fetch_conversion(codec):
    from semel.clock import wall_clock_ms
    from semel.client.records import decode_batch
    from semel.cluster.broker.produce_validation import check_kafka_batch
    from semel.storage.batch import decode_header
    from semel.storage.kafka_records import semel_records_from_kafka

    now = wall_clock_ms()
    acc = _acc(batch_bytes=1 << 20, linger_ms=0, buffer_bytes=1 << 22, codec=codec,
               attributes=common_pb2.TRANSACTIONAL)
    sent = [(now + i, b"k%d" % i if i % 3 else None, b"value %d " % i * 30, [("h", b"%d" % i)] if i % 2 else None)
            for i in range(40)]
    for ts, key, value, headers in sent:
        acc.append("t", 0, ts, key, value, headers, now_ms=0)
    [batch] = acc.drain_ready(now_ms=0)
    batch.producer_id, batch.producer_epoch, batch.base_sequence = 12, 3, 77
    pd = batch.to_partition_data()
    assert not pd.HasField("batch") and pd.kafka_batch
    assert len(pd.kafka_batch) < batch.size_bytes / 3  # compressed as one unit
    header = check_kafka_batch(pd.kafka_batch, max_batch_bytes=1 << 22, now_ms=now + 40,
                               max_future_timestamp_ms=1000)
    assert header == decode_header(pd.kafka_batch)
    assert (header.producer_id, header.producer_epoch, header.base_sequence, header.record_count) == (12, 3, 77, 40)
    assert header.attributes == common_pb2.TRANSACTIONAL | codec
    assert (header.base_timestamp_ms, header.max_timestamp_ms) == (now, now + 39)
    wire = common_pb2.RecordBatch(base_offset=100, last_offset_delta=header.last_offset_delta,
                                  record_count=header.record_count, base_timestamp_ms=header.base_timestamp_ms,
                                  attributes=header.attributes, records=semel_records_from_kafka(pd.kafka_batch, header))
    got = decode_batch("t", 0, wire)
    assert [(r.offset, r.timestamp_ms, r.key, r.value, r.headers) for r in got] == [
        (100 + i, ts, key, value, tuple(headers or ())) for i, (ts, key, value, headers) in enumerate(sent)]


def test_without_a_codec_the_batch_stays_magic_1():
    acc = _acc(linger_ms=0)
    acc.append("t", 0, 5, None, b"x", None, now_ms=0)
    [batch] = acc.drain_ready(now_ms=0)
    pd = batch.to_partition_data()
    assert pd.HasField("batch") and not pd.kafka_batch and pd.batch.records == batch.to_proto().records


def test_the_producers_kafka_record_encoder_matches_the_storage_encoder():
    from semel.client.records import encode_kafka_record
    from semel.storage.kafka_records import KafkaRecord, encode_record as kafka_encode_record

    cases = [(0, 0, None, b"", None), (1, -5, b"k", b"v" * 300, [("h", b"x"), ("\u00e9t\u00e9", b"")]),
             (2**20, 2**40, b"", b"v" * 70_000, None), (63, -(2**31), b"key" * 100, b"", [("", b"")])]
    for offset_delta, ts_delta, key, value, headers in cases:
        expected = kafka_encode_record(KafkaRecord(offset_delta, ts_delta, key or None, value, tuple(headers or ())))
        assert encode_kafka_record(offset_delta, ts_delta, key, value, headers) == expected


def test_record_parts_are_the_protobuf_and_kafka_encodings_byte_for_byte():
    """The producer keeps each record as head + value + tail; joined they must be exactly what
    protobuf serializes for a one-record `Records` and what storage's Kafka encoder writes."""
    import random

    from semel.client.records import encode_kafka_record_parts, encode_record_parts
    from semel.storage.kafka_records import KafkaRecord, encode_record as kafka_encode_record

    rnd = random.Random(7)
    for _ in range(2000):
        od = rnd.choice([0, 1, 127, 128, 2**14, 2**20])
        td = rnd.choice([0, 5, -5, 2**40, -(2**31)])
        key = rnd.choice([None, b"", b"k", bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 300)))])
        value = rnd.choice([b"", b"v", b"x" * rnd.randint(1, 20_000)])
        headers = rnd.choice([None, [], [("h", b"x"), ("\u00e9", b"")], [("", b"")]])
        record = common_pb2.Record(offset_delta=od, timestamp_delta_ms=td, key=key or b"", value=value,
                                   headers=[common_pb2.RecordHeader(key=k, value=v) for k, v in headers or ()])
        head, tail = encode_record_parts(od, td, key, value, headers)
        assert head + value + tail == common_pb2.Records(records=[record]).SerializeToString()
        head, tail = encode_kafka_record_parts(od, td, key, value, headers)
        assert head + value + tail == kafka_encode_record(KafkaRecord(od, td, key or None, value, tuple(headers or ())))


@pytest.mark.parametrize("codec", [0, 1, 4])
def test_the_hand_encoded_produce_request_is_what_protobuf_serializes(codec):
    """`encode_produce_request` joins the batches straight into the request bytes; they must be
    the bytes of the ProduceRequest message built from `to_partition_data()`, for plain,
    idempotent and transactional batches, compressed or not."""
    import random

    from semel.client.accumulator import encode_produce_request
    from semel.v1 import broker_pb2

    rnd = random.Random(codec)
    for trial in range(100):
        acc = _acc(batch_bytes=1 << 20, linger_ms=0, buffer_bytes=1 << 30, codec=codec,
                   attributes=rnd.choice([0, common_pb2.TRANSACTIONAL]))
        for i in range(rnd.randint(1, 40)):
            acc.append(rnd.choice(["t", "topic-\u00e9", "x" * 200]), rnd.randint(0, 300),
                       rnd.choice([0, 1, 1_700_000_000_000 + i]), rnd.choice([None, b"k"]),
                       rnd.choice([b"", b"v", b"y" * rnd.randint(1, 3000)]), rnd.choice([None, [("h", b"x")]]), 0)
        batches = acc.drain_ready(now_ms=0)
        for batch in batches:
            if rnd.random() < 0.5:
                batch.producer_id, batch.producer_epoch, batch.base_sequence = rnd.choice(
                    [(0, 0, 0), (2**40, 32767, 2**31 - 1), (5, 1, 7)])
        acks, timeout_ms, txn = rnd.choice([0, 1, 2]), rnd.choice([0, 30_000, -1]), rnd.choice(["", "tx", "\u00e9" * 70])
        expected = broker_pb2.ProduceRequest(acks=acks, timeout_ms=timeout_ms, transactional_id=txn,
                                             partitions=[b.to_partition_data() for b in batches])
        assert encode_produce_request(acks, timeout_ms, txn, batches) == expected.SerializeToString(), trial
