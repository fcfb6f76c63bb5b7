"""`__transaction_state` records and the RocksDB view: round trips, corruption, and
load = view + replay (against a real PartitionLog and KvStore)."""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from semel.coordinator.txn_log import (  # noqa: E402
    CorruptTxnLogError,
    LogEntry,
    TxnLogGapError,
    TxnStateView,
    decode_records,
    decode_value,
    encode_records,
    encode_value,
    from_proto,
    load_partition,
    to_proto,
)
from semel.coordinator.txn_state import (  # noqa: E402
    CLIENT_EPOCH_MAX,
    BumpReason,
    TransactionMetadata,
    TxnState,
)
from semel.storage.batch import decode_header, with_offsets  # noqa: E402
from semel.storage.kv import KvStore  # noqa: E402
from semel.storage.log import PartitionLog  # noqa: E402
from semel.storage.log_policy import LogConfig  # noqa: E402
from semel.topic_partition import TopicPartition  # noqa: E402
from semel.v1 import txn_pb2  # noqa: E402

S = TxnState


def meta(tid: str = "t", state: TxnState = S.ONGOING, epoch: int = 3, **changes) -> TransactionMetadata:
    has_txn = state in (S.ONGOING, S.PREPARE_COMMIT, S.PREPARE_ABORT)
    base = TransactionMetadata(
        transactional_id=tid,
        producer_id=42,
        producer_epoch=epoch,
        prev_producer_id=42,
        last_producer_epoch=epoch - 1,
        timeout_ms=60_000,
        state=state,
        partitions=(TopicPartition("a", 0), TopicPartition("b", 3)) if has_txn else (),
        txn_start_ms=1_700_000_000_000 if has_txn else -1,
        last_update_ms=1_700_000_000_500,
        bump_reason=BumpReason.END_TXN,
    )
    return dataclasses.replace(base, **changes)


STORED_STATES = [s for s in S if s not in (S.DEAD, S.PREPARE_EPOCH_FENCE)]

metadata_st = st.builds(
    lambda tid, state, pid, epoch, prev, timeout, parts, start, update, reason: meta(
        tid, state, epoch,
        producer_id=pid, prev_producer_id=prev, last_producer_epoch=max(0, epoch - 1), timeout_ms=timeout,
        partitions=tuple(sorted(parts)) if state in (S.ONGOING, S.PREPARE_COMMIT, S.PREPARE_ABORT) else (),
        txn_start_ms=start, last_update_ms=update,
        bump_reason=reason if state in (S.EMPTY, S.ONGOING) else BumpReason.TIMEOUT,
    ),
    tid=st.text(min_size=1, max_size=20),
    state=st.sampled_from(STORED_STATES),
    pid=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, CLIENT_EPOCH_MAX),
    prev=st.integers(0, 2**63 - 1),
    timeout=st.integers(1, 2**31 - 1),
    parts=st.sets(st.builds(TopicPartition, st.text(min_size=1, max_size=5), st.integers(0, 2**31 - 1)), min_size=1, max_size=4),
    start=st.integers(0, 2**62),
    update=st.integers(0, 2**62),
    reason=st.sampled_from(list(BumpReason)),
)


# --- records ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(metadata_st)
def test_record_round_trip(m):
    assert from_proto(to_proto(m)) == m
    assert decode_value(m.transactional_id, encode_value(m)) == m


def test_every_proto_field_is_carried():
    record = to_proto(meta(state=S.PREPARE_COMMIT))
    assert {f.name for f, _ in record.ListFields()} == {f.name for f in txn_pb2.TransactionLogRecord.DESCRIPTOR.fields}


def test_tombstone_is_an_empty_value():
    assert encode_value(None) == b""
    assert decode_value("t", b"") is None


def test_corrupt_values_are_refused():
    good = encode_value(meta())
    with pytest.raises(CorruptTxnLogError):
        decode_value("other", good)  # key does not match the record
    with pytest.raises(CorruptTxnLogError):
        decode_value("t", b"\xff\xff\xff")
    bad_state = to_proto(meta())
    bad_state.state = txn_pb2.PREPARE_EPOCH_FENCE  # never stored
    with pytest.raises(CorruptTxnLogError):
        decode_value("t", bad_state.SerializeToString())
    no_parts = to_proto(meta())
    del no_parts.partitions[:]  # Ongoing without partitions breaks an invariant
    with pytest.raises(CorruptTxnLogError):
        decode_value("t", no_parts.SerializeToString())


def test_batch_round_trip_with_offsets_and_tombstones():
    entries = [("a", meta("a")), ("b", None), ("a", meta("a", S.PREPARE_ABORT, epoch=4))]
    encoded = with_offsets(encode_records(entries, now_ms=123), base_offset=100, leader_epoch=2)
    header = decode_header(encoded)
    assert (header.base_offset, header.record_count, header.producer_id, header.is_control) == (100, 3, -1, False)
    decoded = decode_records(encoded)
    assert decoded == [LogEntry(100 + i, tid, m) for i, (tid, m) in enumerate(entries)]
    assert decode_records(encoded, from_offset=101) == decoded[1:]
    assert decode_records(encoded, from_offset=103) == []
    with pytest.raises(ValueError):
        encode_records([], now_ms=0)


def test_a_flipped_bit_is_caught():
    encoded = bytearray(encode_records([("a", meta("a"))], now_ms=0))
    encoded[-3] ^= 0x01
    with pytest.raises(Exception):
        decode_records(bytes(encoded))


# --- view and load -----------------------------------------------------------------------------


class Partition:
    """A real state partition: log + the broker's RocksDB."""

    def __init__(self, tmp_path: pathlib.Path, page: int = 2) -> None:
        self.tmp_path = tmp_path
        self.log = PartitionLog.open(tmp_path / "log", LogConfig(segment_bytes=4096), 0)
        self.kv = KvStore.open(tmp_path / "kv")
        self.page = page
        self.view = TxnStateView(self.kv, 3, scan_page_entries=page)

    def append(self, *entries: tuple[str, TransactionMetadata | None], leader_epoch: int = 0) -> int:
        encoded = with_offsets(encode_records(list(entries), 0), self.log.log_end_offset, leader_epoch)
        return self.log.append(encoded, 0).next_offset

    def reopen_kv(self) -> None:
        self.kv.close()
        self.kv = KvStore.open(self.tmp_path / "kv")
        self.view = TxnStateView(self.kv, 3, scan_page_entries=self.page)

    def close(self) -> None:
        self.log.close()
        self.kv.close()


@pytest.fixture
def part(tmp_path):
    p = Partition(tmp_path)
    yield p
    p.close()


def replay_all(p: Partition, end: int) -> dict[str, TransactionMetadata]:
    """The reference: fold every record of the log below `end`, no view."""
    out: dict[str, TransactionMetadata] = {}
    result = p.log.read(p.log.log_start_offset, 1 << 30, end)
    for e in decode_records(result.data):
        if e.offset >= end:
            break
        if e.metadata is None:
            out.pop(e.transactional_id, None)
        else:
            out[e.transactional_id] = e.metadata
    return out


def test_view_apply_read_is_atomic_with_its_offset_and_pages(part):
    entries = [LogEntry(i, f"id{i}", meta(f"id{i}")) for i in range(5)]
    part.view.apply(entries, next_offset=5)
    part.reopen_kv()
    state = part.view.read()
    assert state.next_offset == 5 and sorted(state.metadata) == [f"id{i}" for i in range(5)]
    part.view.apply([LogEntry(5, "id1", None), LogEntry(6, "id2", meta("id2", S.PREPARE_COMMIT))], next_offset=7)
    state = part.view.read()
    assert state.next_offset == 7 and "id1" not in state.metadata and state.metadata["id2"].state is S.PREPARE_COMMIT
    with pytest.raises(ValueError):
        part.view.apply([LogEntry(9, "x", meta("x"))], next_offset=8)
    assert part.view.read() == state, "a refused apply writes nothing"
    other = TxnStateView(part.kv, 4)
    assert other.read().metadata == {} and other.read().next_offset == 0
    part.view.clear()
    assert part.view.read().metadata == {} and part.view.read().next_offset == 0


def test_load_is_view_plus_replay(part):
    part.append(("a", meta("a", S.EMPTY)), ("b", meta("b", S.EMPTY)))
    part.append(("a", meta("a", S.ONGOING)))
    first = load_partition(part.view, part.log, part.log.log_end_offset, chunk_bytes=64)
    assert first.replayed_records == 3 and not first.rebuilt
    assert first.metadata == replay_all(part, part.log.log_end_offset)
    assert part.view.read().next_offset == 3
    # New records after the view; some above the high watermark (not committed yet).
    part.append(("b", None), ("c", meta("c", S.PREPARE_ABORT)))
    hw = part.log.log_end_offset
    part.append(("a", meta("a", S.PREPARE_COMMIT, epoch=4)))
    part.reopen_kv()
    second = load_partition(part.view, part.log, hw, chunk_bytes=64)
    assert second.replayed_records == 2 and second.next_offset == hw
    assert second.metadata == replay_all(part, hw)
    assert set(second.metadata) == {"a", "c"} and second.metadata["a"].state is S.ONGOING
    assert part.view.read().metadata == second.metadata and part.view.read().next_offset == hw
    third = load_partition(part.view, part.log, part.log.log_end_offset)
    assert third.replayed_records == 1 and third.metadata["a"].state is S.PREPARE_COMMIT


def test_load_rebuilds_a_view_ahead_of_the_log(part):
    part.append(("a", meta("a", S.EMPTY)))
    part.view.apply([LogEntry(0, "zombie", meta("zombie"))], next_offset=50)  # e.g. an unclean election lost 1..49
    loaded = load_partition(part.view, part.log, part.log.log_end_offset)
    assert loaded.rebuilt and set(loaded.metadata) == {"a"}
    assert part.view.read().metadata == loaded.metadata and part.view.read().next_offset == 1


def test_load_refuses_a_partial_rebuild_unless_allowed(part):
    for i in range(60):
        part.append((f"id{i}", meta(f"id{i}", S.EMPTY)))
    part.log.advance_log_start(30)
    part.view.apply([], next_offset=500)  # ahead of the log
    with pytest.raises(TxnLogGapError):
        load_partition(part.view, part.log, part.log.log_end_offset)
    loaded = load_partition(part.view, part.log, part.log.log_end_offset, allow_partial_rebuild=True)
    assert loaded.rebuilt and "id59" in loaded.metadata and "id0" not in loaded.metadata


def test_load_refuses_a_gap_between_view_and_log_start(part):
    for i in range(60):
        part.append((f"id{i}", meta(f"id{i}", S.EMPTY)))
    part.log.advance_log_start(30)
    with pytest.raises(TxnLogGapError):
        load_partition(part.view, part.log, part.log.log_end_offset)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(STORED_STATES + [None])),
        min_size=1,
        max_size=30,
    ),
    cuts=st.lists(st.integers(0, 30), max_size=4),
)
def test_load_equals_a_full_replay_whatever_the_view_covers(tmp_path_factory, ops, cuts):
    p = Partition(tmp_path_factory.mktemp("load"), page=3)
    try:
        for tid, state in ops:
            p.append((tid, None if state is None else meta(tid, state)))
        end = p.log.log_end_offset
        for cut in sorted(min(c, end) for c in cuts):  # loads at increasing high watermarks
            assert load_partition(p.view, p.log, cut, chunk_bytes=100).metadata == replay_all(p, cut)
        assert load_partition(p.view, p.log, end, chunk_bytes=100).metadata == replay_all(p, end)
    finally:
        p.close()


def test_enums_are_the_wire_numbers():
    assert {s.name: s.value for s in S} == {
        name: number for name, number in txn_pb2.TransactionState.items() if number != 0
    }
    assert {f"BUMP_{r.name}": r.value for r in BumpReason} == dict(txn_pb2.EpochBumpReason.items())


def garbage_batch(payload: bytes, record_count: int = 1) -> bytes:
    """A batch as a client's Produce stored it before the broker validated records: a correct
    header and CRC over a payload that is not what the coordinator writes."""
    from semel.storage.batch import BatchHeader, encode_batch

    header = BatchHeader(base_offset=0, last_offset_delta=record_count - 1, leader_epoch=0, producer_id=-1,
                         producer_epoch=-1, base_sequence=-1, record_count=record_count, attributes=0,
                         base_timestamp_ms=0, max_timestamp_ms=0)
    return encode_batch(header, payload)


def test_undecodable_records_in_the_log_are_skipped_and_reported_never_wedging_the_load(part):
    """Issue 16: one garbage record produced into __transaction_state left its partition
    answering COORDINATOR_LOAD_IN_PROGRESS forever (the load raised, nothing logged)."""
    from semel.v1 import common_pb2

    part.append(("a", meta("a", S.EMPTY)))
    for payload in (b"\xff\xfe random bytes \x00",  # not a Records message
                    common_pb2.Records(records=[common_pb2.Record(key=b"x", value=b"\x0a\xff")]).SerializeToString(),
                    common_pb2.Records(records=[common_pb2.Record(key=b"\xff\xfe", value=b"")]).SerializeToString()):
        part.log.append(with_offsets(garbage_batch(payload), part.log.log_end_offset, 0), 0)
    part.append(("b", meta("b", S.EMPTY)))
    loaded = load_partition(part.view, part.log, part.log.log_end_offset)
    assert sorted(loaded.metadata) == ["a", "b"]
    assert len(loaded.corrupt) == 3 and all(isinstance(e, CorruptTxnLogError) for e in loaded.corrupt)
    assert "offset" in str(loaded.corrupt[0])
    assert part.view.read().next_offset == part.log.log_end_offset  # the view moved past them: no reload loop
    with pytest.raises(CorruptTxnLogError):
        decode_records(part.log.read(0, 1 << 20, part.log.log_end_offset).data)  # strict without a list
