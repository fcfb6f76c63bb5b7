"""Records on the wire, batches of __consumer_offsets, the view, and load = view + replay."""

from __future__ import annotations

import random

import pytest
from semel.coordinator import group_records as gr
from semel.coordinator.group_log import (
    GroupView,
    KvViewBackend,
    MemoryViewBackend,
    ViewOutOfSyncError,
    build_batch,
    decode_payload,
    load_shard,
)
from semel.storage.batch import (
    CorruptBatchError,
    Marker,
    decode_header,
    encode_marker,
    iter_batches,
    with_offsets,
)
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2

E = common_pb2.ErrorCode
P = frozenset({TopicPartition("t", 0), TopicPartition("u", 3)})

ALL_RECORDS = [
    gr.GroupRecord(gr.OffsetCommitKey("g", "t", 0), gr.OffsetCommitValue(0, 0, "", 0)),
    gr.GroupRecord(gr.OffsetCommitKey("g", "t", 1), gr.OffsetCommitValue(42, 3, "meta", 1700)),
    gr.GroupRecord(gr.OffsetCommitKey("g", "t", 1), None),
    gr.GroupRecord(gr.GroupMetadataKey("g"), gr.GroupMetadataValue(7, (("t", 2), ("u", 4)))),
    gr.GroupRecord(gr.GroupMetadataKey("g"), None),
    gr.GroupRecord(gr.MemberMetadataKey("g", "m"), gr.MemberMetadataValue("cid", ("t", "u"), 3000)),
    gr.GroupRecord(gr.TargetAssignmentMemberKey("g", "m"), gr.TargetAssignmentMemberValue(P)),
    gr.GroupRecord(gr.TargetAssignmentMemberKey("g", "m"), gr.TargetAssignmentMemberValue(frozenset())),
    gr.GroupRecord(gr.TargetAssignmentMetadataKey("g"), gr.TargetAssignmentMetadataValue(7)),
    gr.GroupRecord(
        gr.CurrentAssignmentKey("g", "m"),
        gr.CurrentAssignmentValue(7, 6, gr.MemberState.UNREVOKED_PARTITIONS, P, frozenset({TopicPartition("v", 1)})),
    ),
    gr.GroupRecord(gr.CurrentAssignmentKey("g", "m"), None),
]


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: f"{type(r.key).__name__}-{r.value is None}")
def test_record_round_trip(record):
    key, value = gr.encode_record(record)
    assert (value == b"") == (record.value is None)  # even an all-default value is not empty
    assert gr.decode_record(key, value) == record


def test_bad_records_are_rejected():
    with pytest.raises(gr.RecordDecodeError):
        gr.decode_key(b"")
    with pytest.raises(gr.RecordDecodeError):
        gr.decode_key(b"\xff\xff\xff")
    key = gr.encode_key(gr.GroupMetadataKey("g"))
    wrong = gr.encode_value(gr.TargetAssignmentMetadataValue(1))
    with pytest.raises(gr.RecordDecodeError):
        gr.decode_record(key, wrong)
    with pytest.raises(AssertionError):
        gr.GroupRecord(gr.GroupMetadataKey("g"), gr.TargetAssignmentMetadataValue(1))


def test_batches_round_trip_and_corruption_is_caught():
    plain = with_offsets(build_batch(ALL_RECORDS, 5), 100, 2)
    txn = with_offsets(build_batch(ALL_RECORDS[:2], 6, producer_id=9, producer_epoch=1, base_sequence=0), 111, 2)
    marker = with_offsets(encode_marker(9, 1, Marker(True, 4), now_ms=7), 113, 2)
    got = list(iter_batches(plain + txn + marker))
    assert [h.base_offset for h, _ in got] == [100, 111, 113]
    (h1, p1), (h2, p2), (h3, _) = got
    assert not h1.is_transactional and [r for _, r in decode_payload(p1)] == ALL_RECORDS
    assert h2.is_transactional and h2.producer_id == 9 and [d for d, _ in decode_payload(p2)] == [0, 1]
    assert h3.is_control and h3.producer_id == 9
    broken = bytearray(plain)
    broken[-3] ^= 1
    with pytest.raises(CorruptBatchError):
        list(iter_batches(bytes(broken)))
    with pytest.raises(CorruptBatchError):
        list(iter_batches(plain[:-1]))


# --- load = view + replay ------------------------------------------------------------------------


def random_history(driver, seed: int):
    """A seeded random workload against the fake shell; returns the driver."""
    rng = random.Random(seed)
    d = driver({"t": 3, "u": 2})
    members: dict[str, tuple[str, int, frozenset]] = {}  # member -> (group, epoch, owned)
    open_txns: set[int] = set()
    for _ in range(60):
        d.now_ms += rng.choice([0, 50, 300])
        op = rng.random()
        group = rng.choice(["g1", "g2"])
        if op < 0.15 or not members:
            r = d.join(group, rng.choice([("t",), ("u",), ("t", "u")]))
            members[r.member_id] = (group, r.member_epoch, r.assignment)
        elif op < 0.45:
            mid = rng.choice(sorted(members))
            g, epoch, owned = members[mid]
            r = d.hb(g, mid, epoch, owned=owned)
            if r.error == E.NONE:
                members[mid] = (g, r.member_epoch, r.assignment)
            else:
                del members[mid]
        elif op < 0.5:
            mid = rng.choice(sorted(members))
            d.hb(members.pop(mid)[0], mid, -1)
        elif op < 0.65:
            mid = rng.choice(sorted(members))
            g, epoch, _ = members[mid]
            d.commit(g, {("t", rng.randrange(3)): rng.randrange(100)}, mid, epoch)
        elif op < 0.72:
            d.commit("simple", {("u", rng.randrange(2)): rng.randrange(100)})
        elif op < 0.85:
            pid = rng.randrange(1, 4)
            mid = rng.choice(sorted(members))
            g, epoch, _ = members[mid]
            if d.txn_commit(g, {("t", rng.randrange(3)): rng.randrange(100)}, pid, mid, epoch).error == E.NONE:
                open_txns.add(pid)
        elif op < 0.95 and open_txns:
            pid = rng.choice(sorted(open_txns))
            d.marker(pid, commit=rng.random() < 0.6)
            open_txns.discard(pid)
        else:
            for mid in d.expire():
                members.pop(mid, None)
    return d


def batch_boundaries(log) -> list[int]:
    return [0] + [decode_header(b).next_offset for b in log.batches]


def build_view(log, upto: int, backend=None) -> GroupView:
    view = GroupView(backend or MemoryViewBackend(), 0)
    for header, payload in iter_batches(log.read_from(0)):
        if header.next_offset > upto:
            break
        view.apply_batch(header, payload)
    return view


@pytest.mark.parametrize("seed", range(12))
def test_load_equals_live_state_for_every_view_position(driver, seed):
    print(f"seed={seed}")
    d = random_history(driver, seed)
    live = d.shard.dump()
    boundaries = batch_boundaries(d.log)
    for upto in boundaries[:: max(1, len(boundaries) // 15)] + [boundaries[-1]]:
        view = build_view(d.log, upto)
        assert view.next_offset == upto
        loaded = load_shard(view, [d.log.read_from(upto)], monotonic_ms=0, partition=0, group_config=d.shard.groups.config)
        assert loaded.dump() == live, f"seed={seed} view at {upto}"
        assert view.next_offset == d.log.log_end_offset  # the replay also caught the view up
        assert loaded.next_offset == d.log.log_end_offset


def test_pending_offsets_in_the_view_resolve_on_replayed_marker(driver):
    d = driver()
    d.commit("g", {("t", 0): 1})
    d.txn_commit("g", {("t", 0): 10}, producer_id=5)
    d.txn_commit("g", {("t", 1): 20}, producer_id=6)
    cut = d.log.log_end_offset
    d.marker(5, commit=True)
    d.marker(6, commit=False)
    view = build_view(d.log, cut)
    assert len(list(view.pending_entries())) == 2
    before = load_shard(build_view(d.log, cut), [], 0, 0)
    assert before.offsets.has_pending("g") and before.dump()["committed"]["g"][TopicPartition("t", 0)].committed_offset == 1
    after = load_shard(view, [d.log.read_from(cut)], 0, 0)
    assert not after.offsets.has_pending("g")
    assert {tp: c.committed_offset for tp, c in after.offsets.committed_offsets("g").items()} == {TopicPartition("t", 0): 10}
    assert list(view.pending_entries()) == []


def test_loaded_members_get_fresh_sessions_and_expire(driver):
    d = driver()
    a = d.join("g")
    loaded = load_shard(GroupView(MemoryViewBackend(), 0), [d.log.read_from(0)], monotonic_ms=5000, partition=0,
                        group_config=d.shard.groups.config)
    assert loaded.groups.member("g", a.member_id).member_epoch == a.member_epoch
    assert loaded.groups.expire(5999, d.counts) == []
    (decision,) = loaded.groups.expire(6000, d.counts)
    assert decision.removed_members == (a.member_id,)


def test_view_rejects_gaps_and_clears(driver):
    d = driver()
    d.commit("g", {("t", 0): 1})
    d.commit("g", {("t", 0): 2})
    batches = list(iter_batches(d.log.read_from(0)))
    view = GroupView(MemoryViewBackend(), 0)
    with pytest.raises(ViewOutOfSyncError):
        view.apply_batch(*batches[1])
    view.apply_batch(*batches[0])
    view.apply_batch(*batches[0])  # already applied: ignored
    view.apply_batch(*batches[1])
    assert [(r.value.committed_offset, off) for r, off in view.entries()] == [(2, 1)]
    view.clear()
    assert view.next_offset == 0 and list(view.entries()) == []
    with pytest.raises(ViewOutOfSyncError):
        load_shard(GroupView(MemoryViewBackend(), 0), [d.log.batches[1]], 0, 0)


def test_views_of_two_partitions_share_a_backend(driver):
    d = driver()
    d.commit("g", {("t", 0): 1})
    backend = MemoryViewBackend()
    v0 = build_view(d.log, d.log.log_end_offset, backend)
    v1 = GroupView(backend, 1)
    assert v1.next_offset == 0 and list(v1.entries()) == []
    assert len(list(v0.entries())) == 1


def test_view_in_rocksdb_survives_reopen(driver, tmp_path):
    from semel.storage import kv

    d = random_history(driver, 99)
    cut = batch_boundaries(d.log)[len(d.log.batches) // 2]
    store = kv.KvStore.open(tmp_path / "kv")
    try:
        build_view(d.log, cut, KvViewBackend(store))
    finally:
        store.close()
    store = kv.KvStore.open(tmp_path / "kv")
    try:
        view = GroupView(KvViewBackend(store), 0, page_entries=2)  # several pages from RocksDB
        assert view.next_offset == cut
        loaded = load_shard(view, [d.log.read_from(cut)], 0, 0, d.shard.groups.config)
        assert loaded.dump() == d.shard.dump()
    finally:
        store.close()


def test_view_applies_records_of_one_batch_in_order():
    k = gr.OffsetCommitKey("g", "t", 0)
    put = gr.GroupRecord(k, gr.OffsetCommitValue(1, -1, "", 0))
    tomb = gr.GroupRecord(k, None)
    view = GroupView(MemoryViewBackend(), 0)
    for records in ([put, tomb], [tomb, put]):
        encoded = with_offsets(build_batch(records, 0), view.next_offset, 0)
        (header, payload), = iter_batches(encoded)
        view.apply_batch(header, payload)
    assert [(r, off) for r, off in view.entries()] == [(put, 3)]
    view2 = GroupView(MemoryViewBackend(), 0)
    (header, payload), = iter_batches(with_offsets(build_batch([put, tomb], 0), 0, 0))
    view2.apply_batch(header, payload)
    assert list(view2.entries()) == []


def test_paged_reads_and_an_interrupted_clear(driver):
    d = random_history(driver, 3)
    backend = MemoryViewBackend()
    full = build_view(d.log, d.log.log_end_offset, backend)
    small = GroupView(backend, 0, page_entries=2)
    assert list(small.entries()) == list(full.entries()) and len(list(full.entries())) > 4
    assert list(small.pending_entries()) == list(full.pending_entries())
    loaded = load_shard(GroupView(backend, 0, page_entries=3), [], 0, 0, d.shard.groups.config)
    assert loaded.dump() == d.shard.dump()

    class Crash(Exception):
        pass

    writes = []
    real_write = backend.write

    def crashing_write(puts, deletes, sync):
        writes.append(1)
        if len(writes) == 3:  # the marker and one page are written, then the process dies
            raise Crash()
        real_write(puts, deletes, sync)

    backend.write = crashing_write
    with pytest.raises(Crash):
        small.clear()
    backend.write = real_write
    assert backend.data  # half cleared
    reopened = GroupView(backend, 0, page_entries=2)
    assert reopened.next_offset == 0 and backend.data == {}


def test_members_carry_on_against_a_reloaded_coordinator(driver):
    d = driver({"t": 4})
    a = d.join("g", member_id="a")
    b = d.join("g", member_id="b")
    a = d.hb("g", "a", a.member_epoch, owned=a.assignment)  # a is revoking: pending in the log
    d.commit("g", {("t", 0): 3}, "a", a.member_epoch)
    d.txn_commit("g", {("t", 1): 4}, producer_id=2, member_id="a", member_epoch=a.member_epoch)
    # Failover: a new leader loads the partition from its view (half) + the log.
    view = build_view(d.log, batch_boundaries(d.log)[2])
    d.shard = load_shard(view, [d.log.read_from(view.next_offset)], d.now_ms, 0, d.shard.groups.config)
    assert d.fetch("g", [TopicPartition("t", 1)], require_stable=True).offsets[0].error == E.UNSTABLE_OFFSET_COMMIT
    a2 = d.hb("g", "a", a.member_epoch, owned=a.assignment)  # released
    b2 = d.hb("g", "b", b.member_epoch, owned=frozenset())
    assert a2.error == b2.error == E.NONE
    assert a2.assignment | b2.assignment == {TopicPartition("t", p) for p in range(4)}
    assert not (a2.assignment & b2.assignment)
    d.marker(2, commit=True)
    assert d.committed("g") == {("t", 0): 3, ("t", 1): 4}
    d.shard.groups.check_invariants()


def test_undecodable_batches_in_a_real_log_are_skipped_and_reported_never_wedging_the_load(tmp_path):
    """Issue 16: one garbage record produced into __consumer_offsets made that coordinator
    partition fail to load every second forever. The load (and the view) skip it, the shard
    reports it for the shell to log and count, and every good record is loaded."""
    from semel.storage.batch import BatchHeader, encode_batch
    from semel.storage.log import PartitionLog
    from semel.storage.log_policy import LogConfig

    def garbage(payload: bytes, control: bool = False) -> bytes:
        header = BatchHeader(0, 0, 0, 9 if control else -1, 0 if control else -1, -1, 1,
                             0x30 if control else 0, 0, 0)
        return encode_batch(header, payload)

    log = PartitionLog.open(tmp_path / "log", LogConfig(segment_bytes=4096), 0)
    try:
        good = [gr.GroupRecord(gr.OffsetCommitKey("g", "t", p), gr.OffsetCommitValue(10 + p, 0, "", 0)) for p in (0, 1)]
        bad_record = common_pb2.Records(records=[common_pb2.Record(key=b"\xff\xff", value=b"x")]).SerializeToString()
        for encoded in (build_batch(good[:1], 0), garbage(b"\xff\xfe random \x00"), garbage(bad_record),
                        garbage(b"\xff\xff", control=True), build_batch(good[1:], 0)):
            log.append(with_offsets(encoded, log.log_end_offset, 0), 0)
        view = GroupView(MemoryViewBackend(), 0)
        shard = load_shard(view, [log.read(0, 1 << 20, log.log_end_offset).data], monotonic_ms=0, partition=0)
        assert shard.offsets.committed_offsets("g").keys() == {TopicPartition("t", 0), TopicPartition("t", 1)}
        assert shard.next_offset == view.next_offset == log.log_end_offset  # loaded past them
        skipped = shard.take_corrupt()
        assert len(skipped) == 3 and shard.corrupt_skipped == 3 and shard.take_corrupt() == []
        assert [s.split(" at offset ")[1].split(":")[0] for s in skipped] == ["1", "2", "3"]
    finally:
        log.close()
    with pytest.raises(gr.RecordDecodeError):
        decode_payload(b"\xff\xfe random \x00")  # strict without a list
