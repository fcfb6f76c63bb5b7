"""Issue 16, item 7: a bounded, seeded, property-based fuzzer over every RPC of every gRPC service
in semel.v1, against three real broker processes.

The RPCs are found by walking the service descriptors of every `semel.v1.*_pb2` module, so a new
RPC (or service) is fuzzed without touching this file; each request is drawn from its message
descriptor: boundary and random integers, known and unknown enum values, names with `/`, `..`,
NUL, unicode and the empty string, huge repeated fields (just above the documented bounds), and
record batches that are random bytes, truncated, or claim the wrong count, and Kafka batches
(`kafka_batch`) of each codec with a bad CRC, magic, codec, count or length. For every call:

  * the answer is gRPC OK with defined error codes (never UNKNOWN_SERVER_ERROR, never a number
    outside the ErrorCode enum), or a defined gRPC status (INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
    ...), never UNKNOWN/INTERNAL/UNAVAILABLE;
  * every broker is still running and no broker log has gained a traceback.

Before the fuzzing the test writes data (plain records, a committed transaction, committed group
offsets, plain and transactional); afterwards it must read back intact. Names that would let a
legitimate admin call destroy that data (DeleteTopics of it, an OffsetCommit to its group) are
kept out of the calls that destroy; who may call those is authorization, not input handling.

Wait fields (`max_wait_ms`, `timeout_ms` of a request) are drawn small so one example never
long-polls a minute: their clamping is tested elsewhere.

Bounded for CI: SEED and EXAMPLES_PER_RPC are constants; `SEMEL_FUZZ_EXAMPLES=N` runs N per RPC
and `SEMEL_FUZZ_SEED=S` another seed, e.g.
    SEMEL_FUZZ_EXAMPLES=500 SEMEL_FUZZ_SEED=7 .venv/bin/python -m pytest tests/cluster/test_grpc_fuzz.py
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import semel.v1
from google.protobuf import descriptor as d
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, Phase, given, note, seed, settings
from hypothesis import strategies as st
from semel import internal_topics, limits
from semel.client import Consumer, Producer
from semel.client.records import encode_record
from semel.clock import wall_clock_ms
from semel.storage.kafka_records import KafkaRecord, encode_compressed_batch, encode_records
from semel.v1 import common_pb2 as pb

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # three broker processes

SEED = 16_2026
EXAMPLES_PER_RPC = int(os.environ.get("SEMEL_FUZZ_EXAMPLES", "25"))
FUZZ_SEED = int(os.environ.get("SEMEL_FUZZ_SEED", str(SEED)))
CALL_TIMEOUT_S = 20.0

# gRPC statuses a hostile request may legitimately get; everything else (UNKNOWN and INTERNAL:
# an exception escaped a servicer; UNAVAILABLE: the broker is gone) is a bug.
DEFINED_STATUSES = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
}

# --- the data that must survive ------------------------------------------------------------------

KEEP_TOPIC, KEEP_GROUP, KEEP_TXN_GROUP, KEEP_TXN_ID = "keep", "keep-group", "keep-txn-group", "keep-tx"
FUZZ_TOPIC, FUZZ_DELETABLE = "fz", "fz-del"
PLAIN_VALUES = [b"plain-0", b"plain-1", b"plain-2"]
TXN_VALUES = [b"txn-0", b"txn-1"]
KEEP_OFFSET, KEEP_TXN_OFFSET = 2, 3

# Calls that legitimately destroy or overwrite what they name: never given the protected names.
DESTRUCTIVE = {
    "semel.v1.Admin.DeleteTopics", "semel.v1.Groups.DeleteGroup", "semel.v1.Groups.ResetOffsets",
    "semel.v1.Groups.OffsetCommit", "semel.v1.Groups.TxnOffsetCommit", "semel.v1.Transactions.AbortTransaction",
    "semel.v1.TxnMarkers.WriteTxnMarkers", "semel.v1.Admin.AlterTopicConfig", "semel.v1.Admin.ReassignPartitions",
    "semel.v1.Admin.CreatePartitions",
}

# --- the RPCs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    service: d.ServiceDescriptor
    method: d.MethodDescriptor

    @property
    def name(self) -> str:
        return f"{self.service.full_name}.{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"


def all_rpcs() -> list[Rpc]:
    """Every RPC of every service defined in a semel.v1 *_pb2 module."""
    rpcs = []
    for info in sorted(pkgutil.iter_modules(semel.v1.__path__), key=lambda m: m.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"semel.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            rpcs.extend(Rpc(service, m) for m in service.methods)
    return rpcs


# --- requests ---------------------------------------------------------------------------------------

INT32_EDGES = [0, -1, 1, 2, 3, 2**31 - 1, -(2**31), 2**15 - 1, 2**15, -(2**15) - 1, 2**16]
INT64_EDGES = INT32_EDGES + [2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 2**53 + 1]
UINT32_EDGES = [0, 1, 2, 0x10, 0x20, 0x30, 0x7, 2**31, 2**32 - 1]
HUGE_COUNTS = [limits.MAX_TOPICS_PER_ADMIN_REQUEST + 1, limits.MAX_PARTITIONS_PER_REQUEST + 1]
SMALL_WAIT_MS = [-(2**31), -1, 0, 1, 50, 300]
WAIT_FIELDS = {"max_wait_ms", "timeout_ms"}
HOSTILE_NAMES = [
    "", "/", "..", "../..", "a/b", "../../etc/passwd", "x\x00y", "\x00", "ünïcødé", "🦀", "a" * 200, "a" * 201,
    "a" * 1000, ".", "-", "_", " ", "名前", "\u202e", *internal_topics.INTERNAL_TOPICS, "__x", "fz-new", "fz.new",
]
SAFE_NAMES = [FUZZ_TOPIC, FUZZ_DELETABLE, "fz-group", "fz-tx"]
PROTECTED_NAMES = [KEEP_TOPIC, KEEP_GROUP, KEEP_TXN_GROUP, KEEP_TXN_ID]


def ints(edges: list[int], lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(edges), st.integers(-3, 20), st.integers(lo, hi))


def names(destructive: bool) -> st.SearchStrategy[str]:
    pool = HOSTILE_NAMES + SAFE_NAMES + ([] if destructive else PROTECTED_NAMES)
    return st.one_of(st.sampled_from(pool), st.text(max_size=30))


def records_bytes(values: list[bytes]) -> bytes:
    return b"".join(encode_record(i, 0, None, v) for i, v in enumerate(values))


@st.composite
def record_batches(draw: st.DrawFn, producer_ids: tuple[int, ...]) -> pb.RecordBatch:
    """A batch that is valid or broken in one or more ways (payload, count, producer fields,
    attributes, timestamps)."""
    values = draw(st.lists(st.binary(max_size=20), min_size=1, max_size=4))
    ts = wall_clock_ms()
    b = pb.RecordBatch(last_offset_delta=len(values) - 1, record_count=len(values), producer_id=-1,
                       producer_epoch=-1, base_sequence=-1, base_timestamp_ms=ts, max_timestamp_ms=ts,
                       records=records_bytes(values))
    payload = draw(st.sampled_from(["valid", "random", "truncated", "garbage tail", "empty", "big length"]))
    if payload == "random":
        b.records = draw(st.binary(max_size=64))
    elif payload == "truncated":
        b.records = b.records[:draw(st.integers(0, max(0, len(b.records) - 1)))]
    elif payload == "garbage tail":
        b.records += draw(st.binary(min_size=1, max_size=8))
    elif payload == "empty":
        b.records = b""
    elif payload == "big length":  # a length prefix far beyond the payload
        b.records = b"\x0a\xff\xff\xff\xff\x0f" + b.records
    if draw(st.booleans()):
        b.record_count = draw(ints(INT32_EDGES, -(2**31), 2**31 - 1))
    if draw(st.booleans()):
        b.last_offset_delta = draw(ints(INT32_EDGES, -(2**31), 2**31 - 1))
    producer = draw(st.sampled_from(["none", "allocated", "random", "unset"]))
    if producer == "allocated" and producer_ids:
        b.producer_id, b.producer_epoch = draw(st.sampled_from(producer_ids)), draw(st.sampled_from([0, 1, -1, 32767]))
        b.base_sequence = draw(ints(INT32_EDGES, -(2**31), 2**31 - 1))
    elif producer == "random":
        b.producer_id = draw(ints(INT64_EDGES, -(2**63), 2**63 - 1))
        b.producer_epoch = draw(ints(INT32_EDGES, -(2**31), 2**31 - 1))
        b.base_sequence = draw(ints(INT32_EDGES, -(2**31), 2**31 - 1))
    elif producer == "unset":
        for name in draw(st.sets(st.sampled_from(["producer_id", "producer_epoch", "base_sequence"]), min_size=1)):
            b.ClearField(name)
    if draw(st.booleans()):
        b.attributes = draw(st.sampled_from(UINT32_EDGES))
    if draw(st.booleans()):
        b.base_timestamp_ms = draw(st.sampled_from(INT64_EDGES))
        b.max_timestamp_ms = draw(st.sampled_from(INT64_EDGES + [ts]))
    if draw(st.booleans()):
        b.base_offset, b.leader_epoch = draw(st.sampled_from(INT64_EDGES)), draw(st.sampled_from(INT32_EDGES))
    return b


@st.composite
def kafka_batches(draw: st.DrawFn, producer_ids: tuple[int, ...]) -> bytes:
    """A gRPC Produce's `kafka_batch`: a Kafka RecordBatch v2, valid or broken (CRC, magic,
    codec, count, truncation, a lying length, random bytes), each codec."""
    vals = draw(st.lists(st.binary(max_size=20), min_size=1, max_size=4))
    codec = draw(st.sampled_from([0, 1, 2, 3, 4]))
    pid = draw(st.sampled_from([-1, *producer_ids, 2**62])) if producer_ids else -1
    ts = wall_clock_ms()
    records = encode_records(KafkaRecord(i, 0, None, v) for i, v in enumerate(vals))
    count = len(vals) + draw(st.sampled_from([0, 0, 0, 1, -1, 2**31 - 1 - len(vals)]))
    raw = bytearray(encode_compressed_batch(
        records, codec=codec, record_count=max(count, 0), base_timestamp_ms=ts, max_timestamp_ms=ts,
        attributes=draw(st.sampled_from([0, 0, 0x10, 0x20, 0x7, 0x4000])), producer_id=pid,
        producer_epoch=-1 if pid == -1 else 0, base_sequence=-1 if pid == -1 else draw(st.integers(0, 5)))
        if count > 0 else b"")
    damage = draw(st.sampled_from(["none", "none", "crc", "magic", "truncate", "random", "length"]))
    if damage == "crc" and raw:
        raw[-1] ^= 0xFF
    elif damage == "magic" and len(raw) > 16:
        raw[16] = draw(st.sampled_from([0, 1, 3, 255]))
    elif damage == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif damage == "random":
        raw = bytearray(draw(st.binary(max_size=96)))
    elif damage == "length" and len(raw) > 12:
        raw[8:12] = draw(st.sampled_from([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"]))
    return bytes(raw)


@dataclass(frozen=True)
class Ctx:
    destructive: bool
    producer_ids: tuple[int, ...]
    allow_huge: bool = True  # off inside an element of a huge list (no list of huge lists)


MAX_DEPTH = 4


def scalar(f: d.FieldDescriptor, ctx: Ctx, top_level: bool) -> st.SearchStrategy[Any]:
    t = f.type
    if top_level and f.name in WAIT_FIELDS:
        return st.sampled_from(SMALL_WAIT_MS)
    if t in (d.FieldDescriptor.TYPE_INT32, d.FieldDescriptor.TYPE_SINT32, d.FieldDescriptor.TYPE_SFIXED32):
        return ints(INT32_EDGES, -(2**31), 2**31 - 1)
    if t in (d.FieldDescriptor.TYPE_INT64, d.FieldDescriptor.TYPE_SINT64, d.FieldDescriptor.TYPE_SFIXED64):
        extra = list(ctx.producer_ids) if "producer_id" in f.name else []
        return ints(INT64_EDGES + extra, -(2**63), 2**63 - 1)
    if t in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_FIXED32):
        return ints(UINT32_EDGES, 0, 2**32 - 1)
    if t in (d.FieldDescriptor.TYPE_UINT64, d.FieldDescriptor.TYPE_FIXED64):
        return ints([0, 1, 2**64 - 1], 0, 2**64 - 1)
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == d.FieldDescriptor.TYPE_STRING:
        return names(ctx.destructive)
    if t == d.FieldDescriptor.TYPE_BYTES and f.full_name == "semel.v1.PartitionProduceData.kafka_batch":
        return kafka_batches(ctx.producer_ids)
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(records_bytes([b"v"])))
    if t == d.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, max(known) + 1, 99, 2**31 - 1, -(2**31)]))
    if t in (d.FieldDescriptor.TYPE_FLOAT, d.FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == d.FieldDescriptor.TYPE_FLOAT else 64)
    raise AssertionError(f"no strategy for field {f.full_name} of type {t}")


def element(f: d.FieldDescriptor, ctx: Ctx, depth: int, top_level: bool) -> st.SearchStrategy[Any]:
    if f.type == d.FieldDescriptor.TYPE_MESSAGE:
        return messages(f.message_type, ctx, depth + 1)
    return scalar(f, ctx, top_level)


def is_repeated(f: d.FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def field_values(f: d.FieldDescriptor, ctx: Ctx, depth: int, top_level: bool) -> st.SearchStrategy[Any]:
    """None leaves the field unset."""
    if is_repeated(f) and f.message_type is not None and f.message_type.GetOptions().map_entry:
        key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        return st.dictionaries(scalar(key_f, ctx, False), element(value_f, ctx, depth, False), max_size=3)
    if is_repeated(f):
        one = element(f, ctx, depth, top_level)
        if not ctx.allow_huge or depth > 1:
            return st.lists(one, max_size=2)
        small = element(f, dataclasses.replace(ctx, allow_huge=False), depth, top_level)
        huge = st.tuples(small, st.sampled_from(HUGE_COUNTS)).map(lambda t: [t[0]] * t[1])
        return st.one_of(st.lists(one, max_size=3), huge)
    if f.type == d.FieldDescriptor.TYPE_MESSAGE and depth >= MAX_DEPTH:
        return st.none()
    return st.one_of(st.none(), element(f, ctx, depth, top_level))


def messages(desc: d.Descriptor, ctx: Ctx, depth: int = 0) -> st.SearchStrategy[Message]:
    if desc.full_name == "semel.v1.RecordBatch":
        return record_batches(ctx.producer_ids)
    cls = GetMessageClass(desc)
    fields = {f.name: field_values(f, ctx, depth, depth == 0) for f in desc.fields}

    def build(values: dict[str, Any]) -> Message:
        m = cls()
        for name, value in values.items():
            if value is None:
                continue
            f = desc.fields_by_name[name]
            target = getattr(m, name) if is_repeated(f) or f.type == d.FieldDescriptor.TYPE_MESSAGE else None
            if isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, Message):
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif isinstance(value, list):
                if f.type == d.FieldDescriptor.TYPE_MESSAGE:
                    for v in value:
                        target.add().CopyFrom(v)
                else:
                    target.extend(value)
            elif isinstance(value, Message):
                target.CopyFrom(value)
            else:
                setattr(m, name, value)
        return m

    return st.fixed_dictionaries(fields).map(build)


def requests_for(rpc: Rpc, ctx: Ctx) -> st.SearchStrategy[Any]:
    one = messages(rpc.method.input_type, ctx)
    if rpc.method.client_streaming:
        return st.lists(one, min_size=1, max_size=3)
    return one


# --- checking an answer ---------------------------------------------------------------------------

DEFINED_CODES = set(pb.ErrorCode.values()) - {pb.UNKNOWN_SERVER_ERROR}


def undefined_codes(m: Message, path: str = "") -> Iterator[str]:
    """Where an ErrorCode field holds UNKNOWN_SERVER_ERROR or a number outside the enum."""
    for f, value in m.ListFields():
        where = f"{path}.{f.name}"
        if f.type == d.FieldDescriptor.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry:
                value = value.values()
            for sub in (value if is_repeated(f) else [value]):
                if isinstance(sub, Message):
                    yield from undefined_codes(sub, where)
        elif f.enum_type is not None and f.enum_type.full_name == "semel.v1.ErrorCode":
            for code in (value if is_repeated(f) else [value]):
                if code not in DEFINED_CODES:
                    yield f"{where}={code}"


class LogWatch:
    """New lines of every broker log since the last look."""

    def __init__(self, c: h.Cluster) -> None:
        self.c = c
        self.offsets = {i: self._size(i) for i in c.brokers}

    def _path(self, i: int):
        return self.c.brokers[i].data_dir / "broker.log"

    def _size(self, i: int) -> int:
        p = self._path(i)
        return p.stat().st_size if p.exists() else 0

    def new_text(self) -> dict[int, str]:
        out = {}
        for i in self.c.brokers:
            with open(self._path(i), "rb") as f:
                f.seek(self.offsets[i])
                data = f.read()
            self.offsets[i] += len(data)
            out[i] = data.decode(errors="replace")
        return out


def call(c: h.Cluster, broker_id: int, rpc: Rpc, request: Any) -> tuple[grpc.StatusCode, list[Message], str]:
    """(status, answers, detail) of one call."""
    ch = c.channel(broker_id)
    ser = lambda m: m.SerializeToString()  # noqa: E731
    de = GetMessageClass(rpc.method.output_type).FromString
    try:
        if rpc.method.client_streaming and rpc.method.server_streaming:
            answers = list(ch.stream_stream(rpc.path, request_serializer=ser, response_deserializer=de)(
                iter(request), timeout=CALL_TIMEOUT_S))
        elif rpc.method.server_streaming:
            answers = list(ch.unary_stream(rpc.path, request_serializer=ser, response_deserializer=de)(
                request, timeout=CALL_TIMEOUT_S))
        elif rpc.method.client_streaming:
            answers = [ch.stream_unary(rpc.path, request_serializer=ser, response_deserializer=de)(
                iter(request), timeout=CALL_TIMEOUT_S)]
        else:
            answers = [ch.unary_unary(rpc.path, request_serializer=ser, response_deserializer=de)(
                request, timeout=CALL_TIMEOUT_S)]
    except grpc.RpcError as exc:
        return exc.code(), [], exc.details() or ""
    return grpc.StatusCode.OK, answers, ""


def short(request: Any, limit: int = 600) -> str:
    text = repr(request) if isinstance(request, list) else str(request)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


# --- the test ---------------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path):
    c = h.Cluster(tmp_path, 3, internal_partitions=2)
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())
        c.close()


def write_protected_data(c: h.Cluster) -> None:
    for name, partitions in ((KEEP_TOPIC, 1), (FUZZ_TOPIC, 2), (FUZZ_DELETABLE, 1)):
        assert c.create_topic(name, partitions=partitions, rf=3).error_code == pb.NONE
        c.wait_for(lambda n=name: c.partition_meta(n).leader_id >= 0, what=f"a leader of {name}")
    bootstrap = c.brokers[c.any_alive()].address
    with Producer(bootstrap, linger_ms=0) as producer:
        for v in PLAIN_VALUES:
            producer.send(KEEP_TOPIC, v, partition=0).result(15)
        producer.send(FUZZ_TOPIC, b"fz", partition=0).result(15)
    with Producer(bootstrap, transactional_id=KEEP_TXN_ID, linger_ms=0) as producer:
        producer.init_transactions()
        producer.begin_transaction()
        for v in TXN_VALUES:
            producer.send(KEEP_TOPIC, v, partition=0).result(15)
        producer.send_offsets_to_transaction({(KEEP_TOPIC, 0): KEEP_TXN_OFFSET}, KEEP_TXN_GROUP)
        producer.commit_transaction()
    with Consumer(bootstrap, group_id=KEEP_GROUP) as consumer:
        consumer.commit({(KEEP_TOPIC, 0): KEEP_OFFSET})


def check_protected_data(c: h.Cluster) -> None:
    bootstrap = c.brokers[c.any_alive()].address
    want = PLAIN_VALUES + TXN_VALUES
    with Consumer(bootstrap, auto_offset_reset="earliest", isolation_level="read_committed") as consumer:
        consumer.assign([(KEEP_TOPIC, 0)])
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 30
        while len(got) < len(want) and time.monotonic() < deadline:
            got.extend((r.offset, r.value) for r in consumer.poll(timeout_ms=1000))
    assert [v for _, v in got[:len(want)]] == want, got
    for group, offset in ((KEEP_GROUP, KEEP_OFFSET), (KEEP_TXN_GROUP, KEEP_TXN_OFFSET)):
        with Consumer(bootstrap, group_id=group) as consumer:
            assert consumer.committed([(KEEP_TOPIC, 0)], timeout_ms=30_000) == {(KEEP_TOPIC, 0): offset}, group


def fuzz_one(c: h.Cluster, logs: LogWatch, rpc: Rpc, broker_id: int, request: Any) -> None:
    status, answers, detail = call(c, broker_id, rpc, request)
    where = f"{rpc.name} to broker {broker_id}: request {short(request)}"
    assert status in DEFINED_STATUSES, f"{where}\nanswered gRPC {status.name}: {detail}"
    for answer in answers:
        bad = list(undefined_codes(answer))
        assert not bad, f"{where}\nanswered undefined error codes {bad}: {short(answer)}"
    dead = [i for i, b in c.brokers.items() if not b.alive]
    assert not dead, f"{where}\nbrokers {dead} exited"
    for i, text in logs.new_text().items():
        assert "Traceback" not in text, f"{where}\nbroker {i} logged a traceback:\n{text[-4000:]}"


def run_fuzzer(c: h.Cluster, logs: LogWatch, rpc: Rpc, ctx: Ctx) -> None:
    @seed(FUZZ_SEED)
    @settings(max_examples=EXAMPLES_PER_RPC, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(c.brokers)), requests_for(rpc, ctx))
    def fuzz(broker_id: int, request: Any) -> None:
        note(f"{rpc.name} -> broker {broker_id}")
        fuzz_one(c, logs, rpc, broker_id, request)

    fuzz()


def allocated_producer_ids(c: h.Cluster) -> tuple[int, ...]:
    return tuple(h.init_producer_id(c.channel(i)) for i in sorted(c.brokers))


@pytest.mark.timeout(max(300, 120 + len(all_rpcs()) * EXAMPLES_PER_RPC // 2))  # a longer run gets longer
def test_every_rpc_survives_hostile_input_and_the_data_written_before_reads_back(cluster):
    c = cluster
    rpcs = all_rpcs()
    assert {r.service.name for r in rpcs} >= {"Broker", "Admin", "Transactions", "TxnMarkers", "Groups",
                                               "Replication", "Controller"}
    write_protected_data(c)
    ids = allocated_producer_ids(c)
    logs = LogWatch(c)
    started = time.monotonic()
    for rpc in rpcs:
        run_fuzzer(c, logs, rpc, Ctx(destructive=rpc.name in DESTRUCTIVE, producer_ids=ids))
    print(f"fuzzed {len(rpcs)} RPCs x {EXAMPLES_PER_RPC} examples (seed {FUZZ_SEED}) in "
          f"{time.monotonic() - started:.1f} s")
    check_protected_data(c)
    for i, text in logs.new_text().items():
        assert "Traceback" not in text, f"broker {i} logged a traceback:\n{text[-4000:]}"


def test_the_walk_finds_every_rpc_of_every_service():
    """A new RPC is fuzzed without touching this file: the walk is over the descriptors."""
    from semel.v1 import broker_pb2, controller_pb2, replication_pb2

    names = {r.name for r in all_rpcs()}
    for module in (broker_pb2, controller_pb2, replication_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert {f"{service.full_name}.{m.name}" for m in service.methods} <= names
    assert "semel.v1.Replication.ReplicaFetch" in names
