"""Unit and property tests of the pure producer-state core (no I/O)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.storage.batch import ATTR_CONTROL, ATTR_TRANSACTIONAL, BatchHeader, Marker
from semel.storage.producer_state import (
    CompletedTxn,
    Outcome,
    ProducerStateConfig,
    ProducerStateManager,
    SnapshotError,
)
from semel.v1.common_pb2 import ErrorCode

MAX_SEQ = (1 << 31) - 1


def header(pid=1, epoch=0, seq=0, count=1, *, offset=0, txn=False, ts=1_000, control=False) -> BatchHeader:
    attributes = (ATTR_TRANSACTIONAL if txn else 0) | (ATTR_CONTROL if control else 0)
    return BatchHeader(
        base_offset=offset,
        last_offset_delta=count - 1,
        leader_epoch=0,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        record_count=count,
        attributes=attributes,
        base_timestamp_ms=ts,
        max_timestamp_ms=ts,
    )


class Leader:
    """A tiny leader around the manager: validate, assign offsets, apply."""

    def __init__(self, **config) -> None:
        self.psm = ProducerStateManager(ProducerStateConfig(**config))

    def produce(self, pid=1, epoch=0, seq=0, count=1, *, txn=False, ts=1_000):
        h = header(pid, epoch, seq, count, offset=self.psm.end_offset, txn=txn, ts=ts)
        before = self.psm.state_key()
        decision = self.psm.validate(h, now_ms=ts)
        assert self.psm.state_key() == before, "validate must not mutate"
        if decision.outcome is Outcome.APPEND:
            self.psm.apply(h)
            self.psm.check_invariants()
            return decision, h
        return decision, None

    def marker(self, pid=1, epoch=0, *, commit=True, coordinator_epoch=0, ts=1_000):
        m = Marker(commit, coordinator_epoch)
        decision = self.psm.validate_marker(pid, epoch, m)
        if not decision.ok:
            return decision, None
        h = header(pid, epoch, -1, 1, offset=self.psm.end_offset, txn=True, control=True, ts=ts)
        completed = self.psm.apply(h, m)
        self.psm.check_invariants()
        return decision, completed

    def error(self, *args, **kwargs) -> int:
        decision, _ = self.produce(*args, **kwargs)
        assert decision.outcome is Outcome.REJECT, decision
        return decision.error


# --- input checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(count=0),
        dict(seq=-1),
        dict(epoch=-1),
        dict(epoch=1 << 15),
        dict(pid=-2),
    ],
)
def test_malformed_idempotent_batch_is_invalid_record(bad):
    leader = Leader()
    args = dict(pid=1, epoch=0, seq=0, count=1) | bad
    assert leader.error(**args) == ErrorCode.INVALID_RECORD


def test_delta_must_match_count_and_control_batches_are_not_produced():
    psm = ProducerStateManager()
    bad_delta = dataclasses.replace(header(count=3), last_offset_delta=1)
    assert psm.validate(bad_delta, 0).error == ErrorCode.INVALID_RECORD
    assert psm.validate(header(control=True, txn=True), 0).error == ErrorCode.INVALID_RECORD
    assert psm.validate(header(pid=-1, epoch=-1, seq=-1, txn=True), 0).error == ErrorCode.INVALID_RECORD


def test_non_idempotent_batches_skip_producer_checks():
    leader = Leader()
    for _ in range(3):
        decision, h = leader.produce(pid=-1, epoch=-1, seq=-1, count=2)
        assert decision.outcome is Outcome.APPEND
    assert len(leader.psm) == 0
    assert leader.psm.end_offset == 6
    assert leader.error(pid=-1, epoch=-1, seq=-1, count=0) == ErrorCode.INVALID_RECORD


# --- sequences ----------------------------------------------------------------------------


def test_new_producer_must_start_at_zero_else_unknown_producer_id():
    leader = Leader()
    assert leader.error(pid=7, seq=5) == ErrorCode.UNKNOWN_PRODUCER_ID
    decision, _ = leader.produce(pid=7, seq=0, count=5)
    assert decision.outcome is Outcome.APPEND
    assert leader.psm.producer(7).last_sequence == 4


def test_same_epoch_needs_next_sequence():
    leader = Leader()
    leader.produce(seq=0, count=3)
    assert leader.error(seq=4) == ErrorCode.OUT_OF_ORDER_SEQUENCE  # gap
    assert leader.error(seq=2, count=2) == ErrorCode.OUT_OF_ORDER_SEQUENCE  # overlaps, not exact
    decision, h = leader.produce(seq=3, count=2)
    assert decision.outcome is Outcome.APPEND and h.base_offset == 3


def test_sequence_wraps_at_int32_max():
    leader = Leader()
    # Reaching the top of the sequence space takes 2^31 records: start there through the
    # follower path (apply never validates), as a replica that replicated them would.
    leader.psm.apply(header(seq=MAX_SEQ - 2, count=2, offset=0))  # last seq MAX_SEQ - 1
    assert leader.error(seq=0) == ErrorCode.OUT_OF_ORDER_SEQUENCE
    decision, _ = leader.produce(seq=MAX_SEQ, count=3)  # spans the wrap: MAX_SEQ, 0, 1
    assert decision.outcome is Outcome.APPEND
    assert leader.psm.producer(1).last_sequence == 1
    # the batch spanning the wrap is retained and recognised as a duplicate
    decision, _ = leader.produce(seq=MAX_SEQ, count=3)
    assert decision.outcome is Outcome.DUPLICATE and decision.first_offset == 2
    decision, _ = leader.produce(seq=2, count=1)
    assert decision.outcome is Outcome.APPEND


def test_wrap_from_exact_max_to_zero():
    psm = ProducerStateManager()
    psm.apply(header(seq=MAX_SEQ - 1, count=2, offset=0))  # last seq MAX_SEQ (follower path)
    assert psm.validate(header(seq=0, count=1), 0).outcome is Outcome.APPEND
    assert psm.validate(header(seq=1, count=1), 0).error == ErrorCode.OUT_OF_ORDER_SEQUENCE


def test_duplicates_answer_original_offsets_for_the_last_five_batches():
    leader = Leader()
    leader.produce(pid=-1, epoch=-1, seq=-1, count=10)  # shift offsets away from sequences
    appended = [leader.produce(seq=i * 2, count=2)[1] for i in range(7)]
    end = leader.psm.end_offset
    for h in appended[2:]:  # the last five
        decision, _ = leader.produce(seq=h.base_sequence, count=2)
        assert decision.outcome is Outcome.DUPLICATE
        assert (decision.first_offset, decision.last_offset) == (h.base_offset, h.last_offset)
    assert leader.psm.end_offset == end  # nothing appended
    # older than the retained window: never re-appended
    for h in appended[:2]:
        assert leader.error(seq=h.base_sequence, count=2) == ErrorCode.DUPLICATE_SEQUENCE_NUMBER


# --- epochs --------------------------------------------------------------------------------


def test_epoch_fencing_and_bump():
    leader = Leader()
    leader.produce(epoch=3, seq=0, count=2)
    assert leader.error(epoch=2, seq=2) == ErrorCode.INVALID_PRODUCER_EPOCH
    assert leader.error(epoch=4, seq=2) == ErrorCode.OUT_OF_ORDER_SEQUENCE  # new epoch restarts at 0
    decision, _ = leader.produce(epoch=4, seq=0, count=1)
    assert decision.outcome is Outcome.APPEND
    # a retry from the old epoch is fenced, even though it matched a batch of epoch 3
    assert leader.error(epoch=3, seq=0, count=2) == ErrorCode.INVALID_PRODUCER_EPOCH
    assert leader.psm.producer(1).producer_epoch == 4
    assert leader.psm.retained_batches(1)[0].first_seq == 0  # epoch 3's batches are gone


def test_duplicate_is_checked_before_sequence():
    leader = Leader()
    _, first = leader.produce(seq=0, count=3)
    leader.produce(seq=3, count=3)
    decision, _ = leader.produce(seq=0, count=3)
    assert decision.outcome is Outcome.DUPLICATE and decision.first_offset == first.base_offset


# --- transactions --------------------------------------------------------------------------


def test_transaction_opens_and_markers_close_it():
    leader = Leader()
    leader.produce(pid=-1, epoch=-1, seq=-1, count=4)
    _, h1 = leader.produce(pid=1, seq=0, count=2, txn=True)
    _, h2 = leader.produce(pid=2, seq=0, count=1, txn=True)
    leader.produce(pid=1, seq=2, count=1, txn=True)
    assert leader.psm.first_unstable_offset() == h1.base_offset == 4
    assert leader.psm.producer(1).txn_first_offset == 4
    marker_offset = leader.psm.end_offset
    _, completed = leader.marker(pid=1, commit=True)
    assert completed == CompletedTxn(1, 4, marker_offset, aborted=False)
    assert leader.psm.first_unstable_offset() == h2.base_offset
    _, completed = leader.marker(pid=2, commit=False)
    assert completed.aborted and completed.first_offset == h2.base_offset
    assert leader.psm.first_unstable_offset() is None
    # a duplicate marker is harmless and closes nothing
    decision, completed = leader.marker(pid=2, commit=False)
    assert decision.ok and completed is None
    # sequences continue in the same epoch after a marker
    decision, _ = leader.produce(pid=1, seq=3, txn=True)
    assert decision.outcome is Outcome.APPEND


def test_opens_transaction_marks_the_first_transactional_write():
    leader = Leader()
    assert leader.psm.opens_transaction(header(seq=0, txn=True))
    assert not leader.psm.opens_transaction(header(seq=0, txn=False))
    leader.produce(seq=0, txn=True)
    assert not leader.psm.opens_transaction(header(seq=1, txn=True))
    leader.marker(commit=True)
    assert leader.psm.opens_transaction(header(seq=1, txn=True))


def test_non_transactional_write_inside_transaction_is_invalid_txn_state():
    leader = Leader()
    leader.produce(seq=0, txn=True)
    assert leader.error(seq=1, txn=False) == ErrorCode.INVALID_TXN_STATE


def test_newer_epoch_while_transaction_open_waits_for_the_marker():
    leader = Leader()
    leader.produce(epoch=0, seq=0, txn=True)
    assert leader.error(epoch=1, seq=0, txn=True) == ErrorCode.CONCURRENT_TRANSACTIONS
    leader.marker(epoch=1, commit=False, coordinator_epoch=0)  # coordinator fenced + aborted with a bump
    decision, _ = leader.produce(epoch=1, seq=0, txn=True)
    assert decision.outcome is Outcome.APPEND


def test_marker_with_bumped_epoch_restarts_sequences_kip890():
    leader = Leader()
    leader.produce(epoch=5, seq=0, count=3, txn=True)
    _, completed = leader.marker(epoch=6, commit=True)
    assert completed is not None and not completed.aborted
    assert leader.psm.producer(1).producer_epoch == 6
    assert leader.error(epoch=6, seq=3, txn=True) == ErrorCode.OUT_OF_ORDER_SEQUENCE
    assert leader.error(epoch=5, seq=3, txn=True) == ErrorCode.INVALID_PRODUCER_EPOCH  # delayed old write
    decision, _ = leader.produce(epoch=6, seq=0, txn=True)
    assert decision.outcome is Outcome.APPEND


def test_marker_fencing():
    leader = Leader()
    leader.produce(epoch=2, seq=0, txn=True)
    decision, _ = leader.marker(epoch=1, coordinator_epoch=0)
    assert decision.error == ErrorCode.INVALID_PRODUCER_EPOCH
    leader.marker(epoch=2, coordinator_epoch=4)
    leader.produce(epoch=2, seq=1, txn=True)
    decision, _ = leader.marker(epoch=2, coordinator_epoch=3)
    assert decision.error == ErrorCode.TRANSACTION_COORDINATOR_FENCED
    assert leader.psm.first_unstable_offset() is not None
    decision, completed = leader.marker(epoch=2, coordinator_epoch=4)
    assert decision.ok and completed is not None
    assert leader.psm.validate_marker(-1, 0, Marker(True, 0)).error == ErrorCode.INVALID_RECORD


# --- bounded table, expiry --------------------------------------------------------------------


def test_full_table_evicts_least_recently_used_idle_producer():
    leader = Leader(max_producers=3)
    for pid in (1, 2, 3):
        leader.produce(pid=pid, seq=0)
    leader.produce(pid=1, seq=1)  # 2 is now the least recently used
    leader.produce(pid=4, seq=0)
    assert sorted(p.producer_id for p in leader.psm.describe_producers()) == [1, 3, 4]
    assert leader.error(pid=2, seq=1) == ErrorCode.UNKNOWN_PRODUCER_ID  # its state was evicted


def test_producers_with_open_transactions_are_never_evicted():
    leader = Leader(max_producers=3)
    leader.produce(pid=1, seq=0, txn=True)
    leader.produce(pid=2, seq=0)
    leader.produce(pid=3, seq=0, txn=True)
    leader.produce(pid=4, seq=0, txn=True)  # evicts 2, the only idle one
    assert sorted(p.producer_id for p in leader.psm.describe_producers()) == [1, 3, 4]
    assert leader.error(pid=5, seq=0) == ErrorCode.TOO_MANY_PRODUCERS
    # known producers are still served, and a marker for an untracked one is not tracked
    assert leader.produce(pid=1, seq=1, txn=True)[0].outcome is Outcome.APPEND
    decision, completed = leader.marker(pid=9)
    assert decision.ok and completed is None and leader.psm.producer(9) is None
    leader.marker(pid=3)  # 3 becomes idle and evictable
    assert leader.produce(pid=5, seq=0)[0].outcome is Outcome.APPEND
    assert leader.psm.producer(3) is None


def test_follower_apply_never_refuses_even_past_the_bound():
    psm = ProducerStateManager(ProducerStateConfig(max_producers=2))
    for pid in (1, 2, 3):
        psm.apply(header(pid=pid, seq=0, txn=True, offset=psm.end_offset))
    assert len(psm) == 3 and psm.first_unstable_offset() == 0
    psm.check_invariants()


def test_expiry_skips_open_transactions():
    leader = Leader(expiration_ms=1_000)
    leader.produce(pid=1, seq=0, ts=100)
    leader.produce(pid=2, seq=0, ts=100, txn=True)
    leader.produce(pid=3, seq=0, ts=900)
    assert leader.psm.expire(now_ms=100, monotonic_ms=100) == []  # the sweep after the batches
    assert leader.psm.expire(now_ms=1_099, monotonic_ms=1_099) == []
    assert leader.psm.expire(now_ms=1_100, monotonic_ms=1_100) == [1]
    assert leader.psm.expire(now_ms=10_000, monotonic_ms=10_000) == [3]
    assert [p.producer_id for p in leader.psm.describe_producers()] == [2]
    leader.psm.check_invariants()


def test_expiry_needs_both_clocks_a_wall_clock_step_never_brings_it_forward():
    """This replica's wall clock jumps 10 minutes forward (or the batches carry a client clock
    far behind): a producer that wrote within `expiration_ms` of monotonic time stays; a
    backward step delays expiry (the wall measure is then the smaller), never hastens it."""
    jump_ms = 10 * 60_000
    leader = Leader(expiration_ms=1_000)
    leader.produce(pid=1, seq=0, ts=100)
    assert leader.psm.expire(now_ms=100, monotonic_ms=5) == []  # the sweep after the batch
    assert leader.psm.expire(now_ms=100 + jump_ms, monotonic_ms=6) == [], "wall-clock step alone"
    assert leader.psm.expire(now_ms=100 + jump_ms, monotonic_ms=1_004) == []
    leader.produce(pid=1, seq=1, ts=150)  # writes again: its monotonic timer restarts at the next sweep
    assert leader.psm.expire(now_ms=200 + jump_ms, monotonic_ms=1_004) == []
    assert leader.psm.expire(now_ms=200 + jump_ms, monotonic_ms=2_003) == []
    assert leader.psm.expire(now_ms=100 - jump_ms, monotonic_ms=10**6) == [], "backward step: wall says not idle"
    assert leader.psm.expire(now_ms=1_150, monotonic_ms=10**6) == [1]
    leader.psm.check_invariants()


def test_describe_producers():
    leader = Leader()
    leader.produce(pid=1, epoch=2, seq=0, count=4, ts=50)
    leader.produce(pid=2, seq=0, txn=True, ts=60)
    rows = {p.producer_id: p for p in leader.psm.describe_producers()}
    assert (rows[1].producer_epoch, rows[1].last_sequence, rows[1].last_timestamp_ms) == (2, 3, 50)
    assert rows[1].txn_first_offset is None and rows[2].txn_first_offset == 4


# --- snapshots -----------------------------------------------------------------------------------


def _busy_leader() -> Leader:
    leader = Leader(max_producers=4)
    leader.produce(pid=1, epoch=1, seq=0, count=3)
    for i in range(7):
        leader.produce(pid=2, seq=i, txn=True, ts=2_000 + i)
    leader.produce(pid=3, seq=0, txn=True)
    leader.marker(pid=2, coordinator_epoch=7, commit=False)
    leader.produce(pid=1, epoch=1, seq=3)
    return leader


def test_snapshot_round_trip_keeps_everything():
    leader = _busy_leader()
    data = leader.psm.snapshot()
    restored = ProducerStateManager.from_snapshot(data, leader.psm.config)
    restored.check_invariants()
    assert restored.state_key() == leader.psm.state_key()
    assert restored.snapshot() == data
    assert ProducerStateManager.snapshot_end_offset(data) == leader.psm.end_offset


def test_corrupt_snapshots_are_refused():
    data = _busy_leader().psm.snapshot()
    for pos in (0, 5, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        with pytest.raises(SnapshotError):
            ProducerStateManager.from_snapshot(bytes(flipped))
    with pytest.raises(SnapshotError):
        ProducerStateManager.from_snapshot(data[:-3])
    with pytest.raises(SnapshotError):
        ProducerStateManager.from_snapshot(b"")


# --- property: snapshot at any point + replay == applying everything ---------------------------

_ops = st.lists(
    st.tuples(
        st.sampled_from(["data", "data", "data", "txn", "marker", "plain"]),
        st.integers(0, 5),  # producer id
        st.sampled_from(["same", "same", "same", "bump", "zero", "gap"]),  # sequence/epoch choice
        st.integers(1, 4),  # record count
        st.booleans(),  # commit
        st.integers(0, 3),  # coordinator epoch
    ),
    min_size=1,
    max_size=60,
)


def _follower_log(ops) -> list[tuple[BatchHeader, Marker | None]]:
    """Turn generated ops into a plausible log (followers apply it without validating)."""
    scratch = ProducerStateManager(ProducerStateConfig(max_producers=3, batches_retained=5))
    log = []
    for kind, pid, choice, count, commit, coord in ops:
        info = scratch.producer(pid)
        epoch = info.producer_epoch if info else 0
        next_seq = (info.last_sequence + 1) % (1 << 31) if info else 0
        if choice == "bump":
            epoch, next_seq = epoch + 1, 0
        elif choice == "zero":
            next_seq = 0
        elif choice == "gap":
            next_seq += 3
        offset = scratch.end_offset
        ts = 1_000 + offset
        if kind == "marker":
            h, m = header(pid, epoch, -1, 1, offset=offset, txn=True, control=True, ts=ts), Marker(commit, coord)
        elif kind == "plain":
            h, m = header(-1, -1, -1, count, offset=offset, ts=ts), None
        else:
            h, m = header(pid, epoch, next_seq, count, offset=offset, txn=kind == "txn", ts=ts), None
        scratch.apply(h, m)
        log.append((h, m))
    return log


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ops=_ops, cut=st.integers(0, 60))
def test_snapshot_plus_replay_equals_full_apply(ops, cut):
    log = _follower_log(ops)
    cut = min(cut, len(log))
    config = ProducerStateConfig(max_producers=3, batches_retained=5)

    full = ProducerStateManager(config)
    full_completed = [full.apply(h, m) for h, m in log]
    full.check_invariants()

    prefix = ProducerStateManager(config)
    completed = [prefix.apply(h, m) for h, m in log[:cut]]
    data = prefix.snapshot()
    assert ProducerStateManager.snapshot_end_offset(data) == (log[cut][0].base_offset if cut < len(log) else full.end_offset)
    restored = ProducerStateManager.from_snapshot(data, config)
    restored.check_invariants()
    completed += [restored.apply(h, m) for h, m in log[cut:]]
    restored.check_invariants()

    assert restored.state_key() == full.state_key()
    assert completed == full_completed
    assert restored.first_unstable_offset() == full.first_unstable_offset()
    assert len(restored) <= config.max_producers or restored.first_unstable_offset() is not None
