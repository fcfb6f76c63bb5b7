"""PartitionStore over the real PartitionLog and a real RocksDB (tmp_path)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
from semel.storage.aborted_txns import AbortedTxn
from semel.storage.batch import (
    ATTR_TRANSACTIONAL,
    HEADER_BYTES,
    BatchHeader,
    decode_marker,
    encode_batch,
)
from semel.storage.kv import KvStore, partition_key
from semel.storage.log_policy import LogConfig
from semel.storage.partition import PartitionStore
from semel.storage.producer_state import ProducerStateConfig, ProducerStateManager
from semel.v1.common_pb2 import ErrorCode

CONFIG = LogConfig(flush_policy="never")
KEY = partition_key("orders", 0)


def client_batch(pid=1, epoch=0, seq=0, count=1, *, txn=False, ts=1_000, payload=b"records") -> bytes:
    """A batch as a producer sends it (offsets are assigned by the leader)."""
    attrs = ATTR_TRANSACTIONAL if txn else 0
    return encode_batch(BatchHeader(0, count - 1, -1, pid, epoch, seq, count, attrs, ts, ts), payload)


@pytest.fixture
def kv(tmp_path):
    store = KvStore.open(tmp_path / "kv")
    yield store
    store.close()


def open_store(tmp_path, kv, name="p0", **kwargs) -> PartitionStore:
    return PartitionStore.open(tmp_path / name, kwargs.pop("config", CONFIG), kv, partition_key(name, 0), 0, **kwargs)


def replayed_state(store: PartitionStore, config: ProducerStateConfig | None = None) -> ProducerStateManager:
    """Reference: the producer state of applying every stored batch from the log start."""
    ref = ProducerStateManager(config or store.producer_config, end_offset=store.log_start_offset)
    for h in store.log.iter_headers(store.log_start_offset):
        marker = None
        if h.is_control:
            marker = decode_marker(store.log.read(h.base_offset, h.size_bytes).data[HEADER_BYTES : h.size_bytes])
        ref.apply(h, marker)
    return ref


def test_leader_assigns_offsets_and_answers_retries_with_original_offsets(tmp_path, kv):
    store = open_store(tmp_path, kv)
    r1, r2 = store.append_as_leader([client_batch(seq=0, count=3), client_batch(seq=3, count=2)], 5, 1_000)
    assert (r1.first_offset, r1.last_offset, r2.first_offset, r2.last_offset) == (0, 2, 3, 4)
    (dup,) = store.append_as_leader([client_batch(seq=0, count=3)], 5, 2_000)
    assert dup.ok and dup.duplicate and (dup.first_offset, dup.last_offset) == (0, 2)
    assert store.log_end_offset == 5
    (gap,) = store.append_as_leader([client_batch(seq=9)], 5, 2_000)
    assert gap.error == ErrorCode.OUT_OF_ORDER_SEQUENCE
    stored = store.log.read(0, 1 << 20)
    assert [h.leader_epoch for h in stored.headers] == [5, 5]
    assert store.log.epoch_cache.latest_epoch == 5
    store.close()


def test_leader_per_batch_results(tmp_path, kv):
    store = open_store(tmp_path, kv, producer_config=ProducerStateConfig(max_producers=2))
    corrupt = bytearray(client_batch(pid=3))
    corrupt[-1] ^= 0xFF
    results = store.append_as_leader(
        [
            client_batch(pid=1, seq=0, txn=True),
            client_batch(pid=2, seq=0, txn=True),  # second new producer: its own group
            client_batch(pid=3, seq=0),  # table full of open transactions
            bytes(corrupt),
            client_batch(pid=-1, epoch=-1, seq=-1, count=4),
            client_batch(pid=1, seq=1, txn=True),
        ],
        0,
        1_000,
    )
    assert [r.error for r in results] == [
        ErrorCode.NONE,
        ErrorCode.NONE,
        ErrorCode.TOO_MANY_PRODUCERS,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.NONE,
        ErrorCode.NONE,
    ]
    assert [r.first_offset for r in results if r.ok] == [0, 1, 2, 6]
    assert store.first_unstable_offset() == 0
    assert store.producer_state.state_key() == replayed_state(store).state_key()
    store.close()


def test_bound_holds_when_a_batch_in_the_same_call_opens_a_transaction(tmp_path, kv):
    store = open_store(tmp_path, kv, producer_config=ProducerStateConfig(max_producers=2))
    store.append_as_leader([client_batch(pid=1, seq=0), client_batch(pid=2, seq=0, txn=True)], 0, 1_000)
    # pid 1 is the only evictable producer until its own batch, earlier in the call, opens a transaction
    r1, r3 = store.append_as_leader([client_batch(pid=1, seq=1, txn=True), client_batch(pid=3, seq=0)], 0, 1_000)
    assert r1.ok and r3.error == ErrorCode.TOO_MANY_PRODUCERS
    assert len(store.producer_state) == 2
    store.close()


def test_markers_close_transactions_and_fill_the_aborted_index(tmp_path, kv):
    store = open_store(tmp_path, kv)
    store.append_as_leader([client_batch(pid=1, seq=0, count=2, txn=True)], 0, 1_000)  # 0-1
    store.append_as_leader([client_batch(pid=2, seq=0, txn=True)], 0, 1_000)  # 2
    store.append_as_leader([client_batch(pid=1, seq=2, txn=True)], 0, 1_000)  # 3
    assert store.first_unstable_offset() == 0
    aborted = store.append_marker(1, 0, commit=False, coordinator_epoch=3, leader_epoch=0, now_ms=1_100)  # 4
    assert aborted.offset == 4 and aborted.completed.aborted
    assert store.log.aborted_txns.entries == [AbortedTxn(1, 0, 4, 2)]  # LSO: pid 2 still open at 2
    assert store.first_unstable_offset() == 2
    committed = store.append_marker(2, 0, commit=True, coordinator_epoch=3, leader_epoch=0, now_ms=1_200)  # 5
    assert committed.completed is not None and not committed.completed.aborted
    assert len(store.log.aborted_txns) == 1 and store.first_unstable_offset() is None
    fenced = store.append_marker(1, 0, commit=True, coordinator_epoch=2, leader_epoch=0, now_ms=1_300)
    assert fenced.error == ErrorCode.TRANSACTION_COORDINATOR_FENCED
    duplicate = store.append_marker(1, 0, commit=True, coordinator_epoch=3, leader_epoch=0, now_ms=1_300)
    assert duplicate.ok and duplicate.completed is None  # harmless, closes nothing
    store.append_as_leader([client_batch(pid=1, epoch=1, seq=0)], 0, 1_400)
    old = store.append_marker(1, 0, commit=True, coordinator_epoch=3, leader_epoch=0, now_ms=1_500)
    assert old.error == ErrorCode.INVALID_PRODUCER_EPOCH
    # control batches from a client are refused
    (bad,) = store.append_as_leader([store.log.read(4, 1).data], 0, 1_600)
    assert bad.error == ErrorCode.INVALID_RECORD
    store.close()


def test_follower_rebuilds_the_same_state_and_aborted_index(tmp_path, kv):
    leader = open_store(tmp_path, kv, "leader")
    follower = open_store(tmp_path, kv, "follower")
    leader.append_as_leader([client_batch(pid=1, seq=0, count=2, txn=True)], 1, 1_000)
    leader.append_as_leader([client_batch(pid=2, seq=0, count=3)], 1, 1_000)
    leader.append_marker(1, 0, commit=False, coordinator_epoch=0, leader_epoch=1, now_ms=1_000)
    leader.append_as_leader([client_batch(pid=1, seq=2, txn=True)], 1, 1_000)
    data = leader.log.read(0, 1 << 20).data
    last = follower.append_as_follower(data, 2_000)
    assert last.next_offset == leader.log_end_offset == follower.log_end_offset
    assert follower.producer_state.state_key() == leader.producer_state.state_key()
    assert follower.log.aborted_txns.entries == leader.log.aborted_txns.entries == [AbortedTxn(1, 0, 5, 6)]
    assert follower.first_unstable_offset() == 6
    # the follower, promoted, deduplicates a retry sent to the old leader
    (dup,) = follower.append_as_leader([client_batch(pid=2, seq=0, count=3)], 2, 3_000)
    assert dup.duplicate and (dup.first_offset, dup.last_offset) == (2, 4)
    leader.close()
    follower.close()


def test_truncate_rebuilds_producer_state_from_snapshot_and_replay(tmp_path, kv):
    store = open_store(tmp_path, kv)
    for i in range(4):
        store.append_as_leader([client_batch(pid=1, seq=i * 2, count=2)], 0, 1_000)  # 0..7
    snapshot_offset = store.take_snapshot()
    assert snapshot_offset == 8
    for i in range(4, 8):
        store.append_as_leader([client_batch(pid=1, seq=i * 2, count=2)], 0, 1_000)  # 8..15
    store.take_snapshot()  # at 16: must be dropped by the truncation
    store.truncate_to(12)
    assert store.log_end_offset == 12
    assert store.snapshots.offsets() == [8]
    assert store.producer_state.state_key() == replayed_state(store).state_key()
    assert store.producer_state.producer(1).last_sequence == 11
    # the truncated batch is appended again, a kept one is still a duplicate
    (again,) = store.append_as_leader([client_batch(pid=1, seq=12, count=2)], 1, 2_000)
    assert not again.duplicate and again.first_offset == 12
    (dup,) = store.append_as_leader([client_batch(pid=1, seq=10, count=2)], 1, 2_000)
    assert dup.duplicate and dup.first_offset == 10
    store.close()


def test_truncation_reopens_a_transaction_closed_by_a_truncated_marker(tmp_path, kv):
    store = open_store(tmp_path, kv)
    store.append_as_leader([client_batch(pid=1, seq=0, txn=True)], 0, 1_000)
    store.append_marker(1, 0, commit=False, coordinator_epoch=0, leader_epoch=0, now_ms=1_000)
    assert len(store.log.aborted_txns) == 1 and store.first_unstable_offset() is None
    store.truncate_to(1)
    assert store.first_unstable_offset() == 0
    assert len(store.log.aborted_txns) == 0
    store.close()


def test_clean_restart_restores_from_the_close_snapshot(tmp_path, kv):
    store = open_store(tmp_path, kv)
    store.append_as_leader([client_batch(pid=1, seq=0, count=5, txn=True)], 0, 1_000)
    store.append_as_leader([client_batch(pid=2, epoch=3, seq=0)], 0, 1_000)
    before = store.producer_state.state_key()
    store.close()
    assert store.snapshots.offsets() == [6]
    reopened = open_store(tmp_path, kv)
    assert reopened.producer_state.state_key() == before
    assert reopened.first_unstable_offset() == 0
    reopened.close()


def test_close_without_the_kv_store_still_closes_the_log(tmp_path):
    kv = KvStore.open(tmp_path / "kv")
    store = open_store(tmp_path, kv)
    store.append_as_leader([client_batch(pid=1, seq=0, count=2)], 0, 1_000)
    kv.close()
    store.close()  # the snapshot fails, the log still closes (its lock is released)
    with KvStore.open(tmp_path / "kv") as kv2:
        reopened = open_store(tmp_path, kv2)
        assert reopened.snapshots.offsets() == []
        assert reopened.producer_state.producer(1).last_sequence == 1  # rebuilt by replay
        reopened.close()


def test_restart_replays_after_an_older_or_corrupt_snapshot(tmp_path, kv):
    store = open_store(tmp_path, kv)
    store.append_as_leader([client_batch(pid=1, seq=0, count=2)], 0, 1_000)
    store.take_snapshot()  # at 2
    store.append_as_leader([client_batch(pid=1, seq=2, count=2, txn=True)], 0, 1_000)
    store.append_marker(1, 0, commit=False, coordinator_epoch=0, leader_epoch=0, now_ms=1_000)
    store.append_as_leader([client_batch(pid=2, seq=0)], 0, 1_000)
    expected = store.producer_state.state_key()
    store.close()  # snapshot at 6
    snapshots = store.snapshots
    good = snapshots.newest_at_or_below(6)[1]
    snapshots.put(6, good[:-1] + bytes([good[-1] ^ 1]))  # corrupt the newest: fall back to 2
    reopened = open_store(tmp_path, kv)
    assert reopened.producer_state.state_key() == expected
    assert snapshots.offsets() == [2]
    reopened.close()  # snapshot at 6 again
    snapshots.put(5, snapshots.newest_at_or_below(6)[1])  # a valid snapshot under the wrong offset
    reopened = open_store(tmp_path, kv)
    reopened.truncate_to(5)  # the misfiled snapshot (covering 6) must not be used for 5
    assert reopened.producer_state.state_key() == replayed_state(reopened).state_key()
    assert reopened.producer_state.producer(2) is None
    reopened.close()


def test_crash_between_marker_and_aborted_index_is_repaired_on_open(tmp_path, kv):
    """A real process dies (os._exit) after the ABORT marker reached the log but before the
    aborted index was written; the next open replays the marker and adds the entry."""
    kv.close()
    child = textwrap.dedent(
        f"""
        import os
        from semel.storage.kv import KvStore, partition_key
        from semel.storage.log_policy import LogConfig
        from semel.storage.partition import PartitionStore
        from semel.storage.batch import ATTR_TRANSACTIONAL, HEADER_BYTES, BatchHeader, decode_marker, encode_batch
        kv = KvStore.open({str(tmp_path / "kv")!r})
        store = PartitionStore.open({str(tmp_path / "p0")!r}, LogConfig(flush_policy="never"), kv,
                                    partition_key("p0", 0), 0)
        batch = encode_batch(BatchHeader(0, 0, -1, 1, 0, 0, 1, ATTR_TRANSACTIONAL, 1, 1), b"r")
        assert store.append_as_leader([batch], 0, 1)[0].ok
        store.take_snapshot()
        store.log.aborted_txns.add = lambda txn: None  # the crash window: log written, index not
        assert store.append_marker(1, 0, commit=False, coordinator_epoch=0, leader_epoch=0, now_ms=2).ok
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    with KvStore.open(tmp_path / "kv") as kv2:
        store = PartitionStore.open(tmp_path / "p0", CONFIG, kv2, partition_key("p0", 0), 0)
        assert store.log_end_offset == 2
        assert store.log.aborted_txns.entries == [AbortedTxn(1, 0, 1, 2)]
        assert store.first_unstable_offset() is None
        store.close()


def test_rebuild_when_the_log_start_is_inside_a_batch(tmp_path, kv):
    store = open_store(tmp_path, kv)
    store.append_as_leader([client_batch(pid=1, seq=0, count=3)], 0, 1_000)  # 0-2
    store.take_snapshot()  # at 3
    store.append_as_leader([client_batch(pid=1, seq=3, count=3, txn=True)], 0, 1_000)  # 3-5
    store.append_as_leader([client_batch(pid=2, seq=0, count=2)], 0, 1_000)  # 6-7
    expected = store.producer_state.state_key()
    store.advance_log_start(4)  # delete-records inside the batch 3-5
    assert store.snapshots.offsets() == [3]
    store.close()
    for drop_all in (False, True):
        if drop_all:
            store.snapshots.delete_all()
        else:
            store.snapshots.delete(8)  # the close snapshot: replay from 3
        reopened = open_store(tmp_path, kv)
        assert reopened.producer_state.producer(1).last_sequence == 5
        assert reopened.first_unstable_offset() == 3
        if not drop_all:
            assert reopened.producer_state.state_key() == expected
        reopened.close()


def test_snapshots_at_segment_roll_and_retention_prunes_them(tmp_path, kv):
    config = LogConfig(segment_bytes=1024, flush_policy="never", retention_bytes=2048)
    store = open_store(tmp_path, kv, config=config)
    for seq in range(40):
        store.append_as_leader([client_batch(pid=1, seq=seq, payload=b"x" * 100)], 0, 1_000)
    bases = store.log.segment_base_offsets
    assert len(bases) > 3
    assert set(bases[-3:]) <= set(store.snapshots.offsets())  # the newest 3 rolls are kept
    assert len(store.snapshots.offsets()) == 3
    start = store.apply_retention(10_000)
    assert start > 0
    offsets = store.snapshots.offsets()
    assert offsets and min(offsets) <= start  # the newest one at or below the log start stays
    store.truncate_to(store.log_end_offset - 1)
    assert store.producer_state.producer(1).last_sequence == 38
    store.close()


@pytest.mark.parametrize("policy", ["never", "interval"])
def test_random_operations_match_a_full_replay(tmp_path, kv, policy):
    """Random produces, markers, truncations, snapshots and reopens: after each step the producer
    state equals the one built by applying every stored batch from the log start. With the
    interval policy the every-N-bytes snapshots are stored by the background-sync thread,
    racing the truncations and reopens."""
    seed = int(os.environ.get("SEMEL_TEST_SEED", "20261128"))
    print(f"seed={seed}")
    rng = random.Random(seed)
    producer_config = ProducerStateConfig(max_producers=4)
    config = LogConfig(segment_bytes=2048, flush_policy=policy)
    store = open_store(tmp_path, kv, config=config, producer_config=producer_config, snapshot_interval_bytes=700)
    next_seq: dict[int, int] = {}
    epochs: dict[int, int] = {}
    for step in range(300):
        op = rng.random()
        pid = rng.randrange(6)
        if op < 0.6:
            seq = next_seq.get(pid, 0)
            if rng.random() < 0.1:
                seq = max(0, seq - rng.randrange(1, 4))  # a retry or a stale sequence
            count = rng.randrange(1, 4)
            (result,) = store.append_as_leader(
                [client_batch(pid, epochs.get(pid, 0), seq, count, txn=rng.random() < 0.4)], 0, 1_000 + step
            )
            if result.ok and not result.duplicate:
                next_seq[pid] = seq + count
            elif result.error in (ErrorCode.OUT_OF_ORDER_SEQUENCE, ErrorCode.UNKNOWN_PRODUCER_ID):
                epochs[pid] = epochs.get(pid, 0) + 1  # KIP-360: bump and restart at 0
                next_seq[pid] = 0
        elif op < 0.75:
            bump = rng.random() < 0.3
            epoch = epochs.get(pid, 0) + (1 if bump else 0)
            result = store.append_marker(
                pid, epoch, commit=rng.random() < 0.5, coordinator_epoch=0, leader_epoch=0, now_ms=1_000 + step
            )
            if result.error == ErrorCode.NONE and bump:
                epochs[pid], next_seq[pid] = epoch, 0
        elif op < 0.85 and store.log_end_offset > 0:
            store.truncate_to(rng.randrange(store.log_start_offset, store.log_end_offset))
            for p in list(next_seq):  # clients learn their state from errors: restart them
                epochs[p] = epochs.get(p, 0) + 1
                next_seq[p] = 0
        elif op < 0.9:
            store.close()
            store = open_store(tmp_path, kv, config=config, producer_config=producer_config,
                               snapshot_interval_bytes=700)
        elif op < 0.95:
            store.expire_producers(0, 0)  # nothing is idle that long
        assert store.producer_state.state_key() == replayed_state(store).state_key(), f"step {step} seed {seed}"
        store.producer_state.check_invariants()
    store.close()


def test_snapshot_is_stored_after_the_log_and_aborted_index_are_synced(tmp_path, kv):
    store = open_store(tmp_path, kv, config=LogConfig(flush_policy="interval"))
    store.append_as_leader([client_batch(pid=1, seq=0, txn=True)], 0, 1_000)
    store.append_marker(1, 0, commit=False, coordinator_epoch=0, leader_epoch=0, now_ms=1_000)
    calls = []
    real_flush, real_put = store.log.flush, store.snapshots.put
    store.log.flush = lambda *a: (calls.append("flush"), real_flush(*a))[1]
    store.snapshots.put = lambda *a, **k: (calls.append("put"), real_put(*a, **k))[1]
    store.take_snapshot()
    assert calls == ["flush", "put"]
    store.close()


def test_interval_snapshots_are_stored_by_the_sync_thread_after_their_fsyncs(tmp_path, kv, monkeypatch):
    """The every-N-bytes snapshot of the interval policy: the appending thread neither syncs
    nor stores; the background-sync thread syncs the log and aborted index, then stores."""
    import threading

    from semel.storage import background_sync

    syncer = background_sync.shared()
    events: list[tuple[str, bool]] = []
    real_fdatasync = os.fdatasync
    appender = threading.get_ident()

    def fdatasync(fd):
        events.append(("sync", threading.get_ident() == appender))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    store = open_store(tmp_path, kv, config=LogConfig(flush_policy="interval", flush_interval_ms=10**9),
                       snapshot_interval_bytes=300)
    real_put = store.snapshots.put
    store.snapshots.put = lambda *a, **k: (events.append(("put", threading.get_ident() == appender)),
                                           real_put(*a, **k))[1]
    store.append_as_leader([client_batch(pid=1, seq=0, txn=True)], 0, 1_000)
    store.append_marker(1, 0, commit=False, coordinator_epoch=0, leader_epoch=0, now_ms=1_000)
    events.clear()
    gate = threading.Event()
    assert syncer.submit_then([store.log._segments[-1].fileno()], "gate", lambda ok: gate.wait(5))
    store.append_as_leader([client_batch(pid=2, seq=0, payload=b"x" * 400)], 0, 1_001)  # past the interval
    # nothing synced or stored on the appending thread (the gate's own sync may have run already)
    assert events in ([], [("sync", False)])
    offset = store.log_end_offset
    gate.set()
    assert syncer.wait_idle()
    assert events == [("sync", False), ("sync", False), ("sync", False), ("put", False)]  # gate, segment, aborted
    assert store.snapshots.newest_at_or_below(offset)[0] == offset
    store.close()


def test_a_truncation_cancels_a_snapshot_waiting_for_its_fsync(tmp_path, kv):
    import threading

    from semel.storage import background_sync

    syncer = background_sync.shared()
    store = open_store(tmp_path, kv, config=LogConfig(flush_policy="interval", flush_interval_ms=10**9),
                       snapshot_interval_bytes=300)
    store.append_as_leader([client_batch(pid=1, seq=0)], 0, 1_000)
    gate = threading.Event()
    assert syncer.submit_then([store.log._segments[-1].fileno()], "gate", lambda ok: gate.wait(5))
    store.append_as_leader([client_batch(pid=1, seq=1, payload=b"x" * 400)], 0, 1_001)  # captured at offset 2
    store.truncate_to(1)
    store.append_as_leader([client_batch(pid=7, seq=0), client_batch(pid=7, seq=1)], 0, 1_002)  # a new offset 2
    gate.set()
    assert syncer.wait_idle()
    assert 2 not in store.snapshots.offsets()  # the state before the truncation is not stored there
    store.close()
    reopened = open_store(tmp_path, kv, config=LogConfig(flush_policy="interval"))
    assert reopened.producer_state.state_key() == replayed_state(reopened).state_key()
    assert reopened.producer_state.producer(7) is not None
    reopened.close()


def test_aborted_index_missing_a_middle_entry_is_rebuilt_from_the_markers(tmp_path, kv):
    """Power loss can persist the second abort record but not the first (no writeback order);
    with no snapshot covering them, the open rebuilds both from the log."""
    from semel.storage.aborted_txns import RECORD_BYTES
    from semel.storage.log import ABORTED_FILE

    store = open_store(tmp_path, kv)
    for pid in (1, 2):
        store.append_as_leader([client_batch(pid=pid, seq=0, txn=True)], 0, 1_000)
        store.append_marker(pid, 0, commit=False, coordinator_epoch=0, leader_epoch=0, now_ms=1_000)
    expected = store.log.aborted_txns.entries
    assert len(expected) == 2
    store.close()
    store.snapshots.delete_all()
    index_file = tmp_path / "p0" / ABORTED_FILE
    index_file.write_bytes(index_file.read_bytes()[RECORD_BYTES:])  # the first record is lost
    reopened = open_store(tmp_path, kv)
    assert reopened.log.aborted_txns.entries == expected
    reopened.close()
