"""Transaction state machine: the transition table, fencing, timeouts, epoch exhaustion,
KIP-890 EndTxn retries, bounds and the prepare/complete discipline."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from semel.coordinator.txn_state import (  # noqa: E402
    ALLOWED_PREVIOUS,
    CLIENT_EPOCH_MAX,
    PRODUCER_EPOCH_MAX,
    BumpReason,
    MarkerRequest,
    TransactionMetadata,
    TransitionKind,
    TxnState,
    path_allowed,
    transition_allowed,
)
from semel.internal_topics import CONSUMER_OFFSETS_TOPIC, coordinator_partition
from semel.topic_partition import TopicPartition  # noqa: E402
from semel.v1.common_pb2 import ErrorCode  # noqa: E402

from tests.coordinator.txn_helpers import (  # noqa: E402
    COORDINATOR_EPOCH,
    TIMEOUT_MS,
    ProducerIds,
    begin,
    commit,
    end,
    finish_markers,
    init,
    machine,
    tps,
)

S = TxnState

# kafka-eos.md section 2, written out independently of the module's table.
EXPECTED_TABLE = {
    S.EMPTY: {S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT},
    S.ONGOING: {S.ONGOING, S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT},
    S.PREPARE_COMMIT: {S.ONGOING},
    S.PREPARE_ABORT: {S.ONGOING, S.PREPARE_EPOCH_FENCE},
    S.COMPLETE_COMMIT: {S.PREPARE_COMMIT},
    S.COMPLETE_ABORT: {S.PREPARE_ABORT},
    S.DEAD: {S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT},
    S.PREPARE_EPOCH_FENCE: {S.ONGOING},
}
ALL_PAIRS = list(itertools.product(list(S), list(S)))


# --- the table -----------------------------------------------------------------------------


def test_table_matches_the_reference():
    assert {k: set(v) for k, v in ALLOWED_PREVIOUS.items()} == EXPECTED_TABLE


@pytest.mark.parametrize("before,after", ALL_PAIRS, ids=[f"{a.name}->{b.name}" for a, b in ALL_PAIRS])
def test_every_pair_is_allowed_or_forbidden_as_the_table_says(before, after):
    assert transition_allowed(before, after) == (before in EXPECTED_TABLE[after])


def test_a_new_id_starts_empty_only():
    assert transition_allowed(None, S.EMPTY)
    assert [s for s in S if transition_allowed(None, s)] == [S.EMPTY]


def test_path_checks_each_step():
    assert path_allowed(S.ONGOING, (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT))
    assert not path_allowed(S.ONGOING, (S.PREPARE_EPOCH_FENCE, S.PREPARE_COMMIT))
    assert not path_allowed(S.EMPTY, (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT))


@pytest.mark.parametrize(
    "before,after",
    [(a, b) for a, b in ALL_PAIRS if a not in EXPECTED_TABLE[b] and a not in (S.DEAD, S.PREPARE_EPOCH_FENCE)],
    ids=lambda s: s.name,
)
def test_the_machine_refuses_to_propose_a_forbidden_transition(before, after):
    """The guard inside the machine (a programmer error, so AssertionError) for every
    forbidden pair whose source can be in memory."""
    ids = ProducerIds()
    has_txn = before in (S.ONGOING, S.PREPARE_COMMIT, S.PREPARE_ABORT)
    meta = TransactionMetadata(
        "t", 1, 3, 1, 2, TIMEOUT_MS, before, tps("a0") if has_txn else (), 0 if has_txn else -1, 0,
        BumpReason.END_TXN,
    )
    m = machine(ids, loaded=[meta])
    target = None if after is S.DEAD else dataclasses.replace(meta, state=after)
    with pytest.raises(AssertionError):
        m._propose(TransitionKind.COMPLETE, meta, target, (after,))
    assert m.pending("t") is None and m.metadata("t") is meta


def _reach(state: TxnState):
    """A machine whose id 't' is committed in `state` (no pending), and the producer's identity."""
    m = machine()
    ident = init(m)
    if state is S.EMPTY:
        return m, ident
    begin(m, ident)
    if state is S.ONGOING:
        return m, ident
    ident = end(m, ident, commit_txn=state in (S.PREPARE_COMMIT, S.COMPLETE_COMMIT))
    if state in (S.COMPLETE_COMMIT, S.COMPLETE_ABORT):
        finish_markers(m)
    assert m.metadata("t").state is state
    return m, ident


def _requests(m, ident, now_ms):
    """Every request kind against id 't' with the current identity."""
    return {
        "init": lambda: m.init_producer_id("t", TIMEOUT_MS, now_ms),
        "init_expected": lambda: m.init_producer_id("t", TIMEOUT_MS, now_ms, *ident),
        "add": lambda: m.add_partitions("t", *ident, tps("b1"), now_ms),
        "commit": lambda: m.end_txn("t", *ident, True, now_ms),
        "abort": lambda: m.end_txn("t", *ident, False, now_ms),
        "timeout": lambda: m.abort_timed_out("t", now_ms, now_ms),
        "markers": lambda: m.complete_markers("t", now_ms),
        "remove": lambda: m.remove_expired("t", now_ms),
    }


# From each committed state, what each request proposes (None: refused, the code given).
EXPECTED_MOVES = {
    S.EMPTY: {"init": (S.EMPTY,), "init_expected": (S.EMPTY,), "add": (S.ONGOING,),
              "commit": ErrorCode.INVALID_TXN_STATE, "abort": ErrorCode.INVALID_TXN_STATE,
              "timeout": ErrorCode.INVALID_TXN_STATE, "markers": ErrorCode.INVALID_TXN_STATE, "remove": (S.DEAD,)},
    S.ONGOING: {"init": (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT), "init_expected": (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT),
                "add": (S.ONGOING,), "commit": (S.PREPARE_COMMIT,), "abort": (S.PREPARE_ABORT,),
                "timeout": (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT), "markers": ErrorCode.INVALID_TXN_STATE,
                "remove": ErrorCode.INVALID_TXN_STATE},
    S.PREPARE_COMMIT: {"init": ErrorCode.CONCURRENT_TRANSACTIONS, "init_expected": ErrorCode.CONCURRENT_TRANSACTIONS,
                       "add": ErrorCode.CONCURRENT_TRANSACTIONS, "commit": ErrorCode.CONCURRENT_TRANSACTIONS,
                       "abort": ErrorCode.CONCURRENT_TRANSACTIONS, "timeout": ErrorCode.INVALID_TXN_STATE,
                       "markers": (S.COMPLETE_COMMIT,), "remove": ErrorCode.INVALID_TXN_STATE},
    S.PREPARE_ABORT: {"init": ErrorCode.CONCURRENT_TRANSACTIONS, "init_expected": ErrorCode.CONCURRENT_TRANSACTIONS,
                      "add": ErrorCode.CONCURRENT_TRANSACTIONS, "commit": ErrorCode.CONCURRENT_TRANSACTIONS,
                      "abort": ErrorCode.CONCURRENT_TRANSACTIONS, "timeout": ErrorCode.INVALID_TXN_STATE,
                      "markers": (S.COMPLETE_ABORT,), "remove": ErrorCode.INVALID_TXN_STATE},
    S.COMPLETE_COMMIT: {"init": (S.EMPTY,), "init_expected": (S.EMPTY,), "add": (S.ONGOING,),
                        "commit": ErrorCode.INVALID_TXN_STATE, "abort": ErrorCode.INVALID_TXN_STATE,
                        "timeout": ErrorCode.INVALID_TXN_STATE, "markers": ErrorCode.INVALID_TXN_STATE,
                        "remove": (S.DEAD,)},
    S.COMPLETE_ABORT: {"init": (S.EMPTY,), "init_expected": (S.EMPTY,), "add": (S.ONGOING,),
                       "commit": ErrorCode.INVALID_TXN_STATE, "abort": ErrorCode.INVALID_TXN_STATE,
                       "timeout": ErrorCode.INVALID_TXN_STATE, "markers": ErrorCode.INVALID_TXN_STATE,
                       "remove": (S.DEAD,)},
}
STATE_REQUESTS = [(s, r) for s in EXPECTED_MOVES for r in EXPECTED_MOVES[s]]


@pytest.mark.parametrize("state,request_name", STATE_REQUESTS, ids=[f"{s.name}-{r}" for s, r in STATE_REQUESTS])
def test_each_request_from_each_state(state, request_name):
    m, ident = _reach(state)
    now_ms = 10**10  # every timeout and id expiration has passed
    m.observe_monotonic(0)  # the monotonic timer too
    before = m.snapshot()
    result = _requests(m, ident, now_ms)[request_name]()
    expected = EXPECTED_MOVES[state][request_name]
    assert m.snapshot() == before, "a request never changes committed memory"
    if isinstance(expected, tuple):
        assert result.pending is not None, result
        assert result.pending.path == expected
        assert path_allowed(state, result.pending.path)
        m.complete(result.pending)
        after = m.metadata("t")
        assert (after.state if after else S.DEAD) is expected[-1]
    else:
        assert result.pending is None and result.error == expected, result


def test_every_allowed_transition_is_reachable_through_requests():
    seen = set()
    for state, request_name in STATE_REQUESTS:
        m, ident = _reach(state)
        result = _requests(m, ident, 10**10)[request_name]()
        if result.pending is not None:
            prev = state
            for step in result.pending.path:
                seen.add((prev, step))
                prev = step
    allowed = {(a, b) for b, sources in EXPECTED_TABLE.items() for a in sources}
    assert seen == allowed


# --- prepare / complete discipline ---------------------------------------------------------------


def test_pending_blocks_everything_and_abandon_restores():
    m = machine()
    ident = init(m)
    r = m.add_partitions("t", *ident, tps("a0"), 0)
    assert r.pending is not None and m.metadata("t").state is S.EMPTY
    for other in _requests(m, ident, 10**10).values():
        assert other().error == ErrorCode.CONCURRENT_TRANSACTIONS
    assert m.verify("t", *ident, tps("a0")).partitions == ((TopicPartition("a", 0), ErrorCode.INVALID_TXN_STATE),)
    m.abandon(r.pending)
    assert m.pending("t") is None and m.metadata("t").state is S.EMPTY
    begin(m, ident)
    assert m.metadata("t").state is S.ONGOING


def test_complete_or_abandon_of_a_stale_transition_is_a_programmer_error():
    m = machine()
    r = m.init_producer_id("t", TIMEOUT_MS, 0)
    m.abandon(r.pending)
    with pytest.raises(AssertionError):
        m.complete(r.pending)
    with pytest.raises(AssertionError):
        m.abandon(r.pending)
    assert m.metadata("t") is None


def test_new_id_is_invisible_until_complete():
    m = machine()
    r = m.init_producer_id("t", TIMEOUT_MS, 0)
    assert m.metadata("t") is None and len(m) == 0
    assert m.init_producer_id("t", TIMEOUT_MS, 0).error == ErrorCode.CONCURRENT_TRANSACTIONS
    m.complete(r.pending)
    assert m.metadata("t").producer_epoch == 0 and m.metadata("t").bump_reason is BumpReason.NONE


# --- fencing -----------------------------------------------------------------------------------


def test_a_new_producer_fences_the_old_epoch():
    m = machine()
    old = init(m)
    new = init(m)
    assert new == (old[0], old[1] + 1)
    assert m.add_partitions("t", *old, tps("a0"), 0).error == ErrorCode.PRODUCER_FENCED
    assert m.end_txn("t", *old, True, 0).error == ErrorCode.PRODUCER_FENCED
    assert m.verify("t", *old, tps("a0")).error == ErrorCode.PRODUCER_FENCED
    assert m.add_partitions("t", 999_999, 0, tps("a0"), 0).error == ErrorCode.INVALID_PRODUCER_ID_MAPPING
    assert m.add_partitions("t", old[0], old[1] + 5, tps("a0"), 0).error == ErrorCode.INVALID_PRODUCER_EPOCH
    begin(m, new)


def test_an_open_transaction_is_fenced_and_aborted_by_a_new_producer():
    m = machine()
    old = init(m)
    begin(m, old, parts=tps("a0", "b1"))
    r = m.init_producer_id("t", TIMEOUT_MS, 5)
    assert r.error == ErrorCode.CONCURRENT_TRANSACTIONS and r.pending is not None
    assert r.pending.kind is TransitionKind.FENCE_ABORT
    assert r.pending.path == (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT)
    m.complete(r.pending)
    meta = m.metadata("t")
    assert meta.state is S.PREPARE_ABORT and meta.bump_reason is BumpReason.FENCE
    assert m.marker_plan("t") == tuple(
        MarkerRequest("t", tp, False, old[0], old[1] + 1, COORDINATOR_EPOCH) for tp in tps("a0", "b1")
    )
    # The zombie can neither commit nor add; the new producer waits for the markers.
    assert m.end_txn("t", *old, True, 6).error == ErrorCode.PRODUCER_FENCED
    assert m.add_partitions("t", *old, tps("c2"), 6).error == ErrorCode.PRODUCER_FENCED
    assert m.init_producer_id("t", TIMEOUT_MS, 6).error == ErrorCode.CONCURRENT_TRANSACTIONS
    finish_markers(m)
    assert m.metadata("t").state is S.COMPLETE_ABORT
    new = init(m, now_ms=7)
    assert new == (old[0], old[1] + 2)
    assert m.end_txn("t", *old, False, 8).error == ErrorCode.PRODUCER_FENCED


def test_kip360_reinit_by_the_current_producer_aborts_and_lets_it_retry():
    m = machine()
    ident = init(m)
    begin(m, ident)
    r = m.init_producer_id("t", TIMEOUT_MS, 0, *ident)
    assert r.error == ErrorCode.CONCURRENT_TRANSACTIONS and m.metadata("t").state is S.ONGOING
    commit(m, r)
    assert m.metadata("t").bump_reason is BumpReason.REINIT
    assert m.init_producer_id("t", TIMEOUT_MS, 0, *ident).error == ErrorCode.CONCURRENT_TRANSACTIONS
    finish_markers(m)
    assert init(m, ident=ident) == (ident[0], ident[1] + 2)


def test_kip360_init_retry_answers_the_same_identity_without_a_write():
    m = machine()
    ident = init(m)
    bumped = init(m, ident=ident)
    r = m.init_producer_id("t", TIMEOUT_MS, 0, *ident)
    assert r.ok and r.pending is None and (r.producer_id, r.producer_epoch) == bumped
    # ... but not once the bumped identity started a transaction.
    begin(m, bumped)
    assert m.init_producer_id("t", TIMEOUT_MS, 0, *ident).error == ErrorCode.PRODUCER_FENCED


# --- timeouts ------------------------------------------------------------------------------------


def test_timeout_aborts_fences_and_tells_the_producer_why():
    m = machine()
    ident = init(m)
    begin(m, ident, now_ms=1000, parts=tps("a0"))
    m.observe_monotonic(1000)  # the shell's tick starts the monotonic timer
    begin(m, ident, now_ms=1500, parts=tps("b0"))  # adding more does not restart the clock
    m.observe_monotonic(1500)
    assert m.expired(1000 + TIMEOUT_MS, 1000 + TIMEOUT_MS) == []
    assert m.expired(1001 + TIMEOUT_MS, 1001 + TIMEOUT_MS) == ["t"]
    assert m.abort_timed_out("t", 1000 + TIMEOUT_MS, 1000 + TIMEOUT_MS).error == ErrorCode.INVALID_TXN_STATE
    r = m.abort_timed_out("t", 1001 + TIMEOUT_MS, 1001 + TIMEOUT_MS)
    assert r.pending.kind is TransitionKind.TIMEOUT_ABORT and r.pending.path == (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT)
    assert m.expired(1001 + TIMEOUT_MS, 1001 + TIMEOUT_MS) == [], "pending ids are not listed again"
    commit(m, r)
    assert m.metadata("t").bump_reason is BumpReason.TIMEOUT
    assert [mk.commit for mk in m.marker_plan("t")] == [False, False]
    for result in (
        m.end_txn("t", *ident, True, 0),
        m.end_txn("t", *ident, False, 0),
        m.add_partitions("t", *ident, tps("c0"), 0),
        m.init_producer_id("t", TIMEOUT_MS, 0, *ident),
    ):
        assert result.error == ErrorCode.TRANSACTION_TIMED_OUT, result
    finish_markers(m)
    assert m.end_txn("t", *ident, True, 0).error == ErrorCode.TRANSACTION_TIMED_OUT
    assert m.verify("t", *ident, tps("a0")).error == ErrorCode.TRANSACTION_TIMED_OUT
    new = init(m)
    assert new == (ident[0], ident[1] + 2)
    assert m.end_txn("t", *ident, True, 0).error == ErrorCode.PRODUCER_FENCED


def test_expired_is_ordered_and_bounded():
    m = machine(max_transitions_per_scan=2)
    for i, tid in enumerate(["c", "a", "b"]):
        ident = init(m, tid)
        begin(m, ident, tid=tid, now_ms=10 - i)
    m.observe_monotonic(0)
    assert m.expired(10**9, 10**9) == ["b", "a"]


def test_timeout_needs_both_clocks_a_wall_clock_step_never_brings_it_forward():
    """The coordinator's wall clock jumps 10 minutes forward: the transaction is not aborted
    until it has also been open `timeout_ms` on the monotonic clock; a backward step of the
    wall clock delays the abort (the wall measure is then the smaller), never hastens it."""
    jump_ms = 10 * 60_000
    m = machine()
    ident = init(m)
    begin(m, ident, now_ms=1000, parts=tps("a0"))
    m.observe_monotonic(50)  # monotonic time is unrelated to the wall clock
    assert m.expired(1000 + jump_ms, 60) == [], "a forward wall-clock step alone expires nothing"
    assert m.abort_timed_out("t", 1000 + jump_ms, 60).error == ErrorCode.INVALID_TXN_STATE
    assert m.expired(1000 + jump_ms, 50 + TIMEOUT_MS) == []
    assert m.expired(1000 + jump_ms, 51 + TIMEOUT_MS) == ["t"], "open timeout_ms on both clocks"
    # backward: the wall clock now reads before the start; the monotonic measure alone never expires
    assert m.expired(1000 - jump_ms, 51 + TIMEOUT_MS + jump_ms) == []
    assert m.expired(1001 + TIMEOUT_MS, 51 + TIMEOUT_MS + jump_ms) == ["t"]


def test_timeout_timer_starts_when_first_observed_and_at_load():
    """A transaction not yet seen by `observe_monotonic` has not started its monotonic timer;
    a machine loaded from the log (a coordinator failover) starts it at load: the timeout can
    only come later than on the old coordinator, never earlier."""
    m = machine()
    ident = init(m)
    begin(m, ident, now_ms=1000, parts=tps("a0"))
    assert m.abort_timed_out("t", 10**9, 10**9).error == ErrorCode.INVALID_TXN_STATE, "not observed yet"
    loaded = machine(loaded=m.snapshot().values())
    assert loaded.expired(10**9, 10**9) == [], "timer starts at the first observation after load"
    assert loaded.expired(10**9, 10**9 + TIMEOUT_MS) == []
    assert loaded.expired(10**9, 10**9 + TIMEOUT_MS + 1) == ["t"]


# --- epoch exhaustion ------------------------------------------------------------------------------


def _at_epoch(epoch: int, ids: ProducerIds | None = None):
    meta = TransactionMetadata("t", 77, epoch, 77, epoch - 1, TIMEOUT_MS, S.EMPTY, (), -1, 0, BumpReason.INIT)
    return machine(ids, loaded=[meta])


def test_epoch_exhaustion_on_init_gives_a_new_producer_id():
    ids = ProducerIds(first=500)
    m = _at_epoch(CLIENT_EPOCH_MAX - 1, ids)
    assert init(m, ident=(77, CLIENT_EPOCH_MAX - 1)) == (77, CLIENT_EPOCH_MAX)
    assert init(m, ident=(77, CLIENT_EPOCH_MAX)) == (500, 0)
    meta = m.metadata("t")
    assert (meta.prev_producer_id, meta.last_producer_epoch) == (77, CLIENT_EPOCH_MAX)
    assert m.add_partitions("t", 77, CLIENT_EPOCH_MAX, tps("a0"), 0).error == ErrorCode.PRODUCER_FENCED


def test_epoch_exhaustion_on_end_txn_markers_keep_the_old_id():
    ids = ProducerIds(first=500)
    m = _at_epoch(CLIENT_EPOCH_MAX, ids)
    ident = (77, CLIENT_EPOCH_MAX)
    begin(m, ident)
    assert end(m, ident) == (500, 0)
    assert m.marker_plan("t") == (MarkerRequest("t", TopicPartition("a", 0), True, 77, PRODUCER_EPOCH_MAX, COORDINATOR_EPOCH),)
    retry = m.end_txn("t", *ident, True, 1)
    assert retry.ok and retry.pending is None and (retry.producer_id, retry.producer_epoch) == (500, 0)
    finish_markers(m)
    begin(m, (500, 0))


def test_no_producer_id_available_is_retriable_and_writes_nothing():
    ids = ProducerIds()
    m = _at_epoch(CLIENT_EPOCH_MAX, ids)
    ids.exhausted = True
    r = m.init_producer_id("t", TIMEOUT_MS, 0)
    assert r.error == ErrorCode.COORDINATOR_NOT_AVAILABLE and r.pending is None
    assert m.init_producer_id("new", TIMEOUT_MS, 0).error == ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert m.pending("t") is None and m.pending("new") is None


# --- EndTxn (KIP-890) -------------------------------------------------------------------------------


@pytest.mark.parametrize("commit_txn", [True, False])
def test_end_txn_bumps_the_epoch_and_retries_are_idempotent(commit_txn):
    m = machine()
    ident = init(m)
    begin(m, ident, parts=tps("a0", "b0"))
    nxt = end(m, ident, commit_txn)
    assert nxt == (ident[0], ident[1] + 1)
    prepared = S.PREPARE_COMMIT if commit_txn else S.PREPARE_ABORT
    assert m.metadata("t").state is prepared
    assert {(mk.producer_id, mk.producer_epoch, mk.commit) for mk in m.marker_plan("t")} == {(ident[0], ident[1] + 1, commit_txn)}
    for _ in range(2):
        retry = m.end_txn("t", *ident, commit_txn, 1)
        assert retry.ok and retry.pending is None and (retry.producer_id, retry.producer_epoch) == nxt
    flipped = m.end_txn("t", *ident, not commit_txn, 1)
    assert flipped.error == ErrorCode.INVALID_TXN_STATE
    finish_markers(m)
    assert m.metadata("t").state is (S.COMPLETE_COMMIT if commit_txn else S.COMPLETE_ABORT)
    assert m.end_txn("t", *ident, commit_txn, 2).ok
    assert m.end_txn("t", *ident, not commit_txn, 2).error == ErrorCode.INVALID_TXN_STATE
    # The next transaction: a delayed EndTxn of the previous one cannot end it.
    begin(m, nxt, parts=tps("c0"))
    assert m.end_txn("t", *ident, commit_txn, 3).error == ErrorCode.PRODUCER_FENCED
    assert m.metadata("t").state is S.ONGOING and m.pending("t") is None
    assert m.verify("t", *ident, tps("c0")).error == ErrorCode.PRODUCER_FENCED


def test_commit_after_abort_is_invalid_txn_state():
    m = machine()
    ident = init(m)
    begin(m, ident)
    end(m, ident, commit_txn=False)
    assert m.end_txn("t", *ident, True, 0).error == ErrorCode.INVALID_TXN_STATE


def test_end_txn_with_the_new_epoch_while_markers_are_written_is_concurrent():
    m = machine()
    ident = init(m)
    begin(m, ident)
    nxt = end(m, ident)
    assert m.end_txn("t", *nxt, True, 0).error == ErrorCode.CONCURRENT_TRANSACTIONS
    assert m.add_partitions("t", *nxt, tps("a0"), 0).error == ErrorCode.CONCURRENT_TRANSACTIONS
    finish_markers(m)
    assert m.end_txn("t", *nxt, True, 0).error == ErrorCode.INVALID_TXN_STATE  # nothing open
    begin(m, nxt)


def test_end_txn_unknown_id():
    assert machine().end_txn("nope", 1, 0, True, 0).error == ErrorCode.INVALID_PRODUCER_ID_MAPPING


# --- AddPartitions / AddOffsets / verify ---------------------------------------------------------------


def test_add_partitions_starts_the_clock_once_and_skips_known_partitions():
    m = machine()
    ident = init(m)
    begin(m, ident, parts=tps("b0", "a0"), now_ms=50)
    meta = m.metadata("t")
    assert meta.partitions == tps("a0", "b0") and meta.txn_start_ms == 50
    r = m.add_partitions("t", *ident, tps("a0"), 60)
    assert r.ok and r.pending is None
    begin(m, ident, parts=tps("c0"), now_ms=70)
    assert m.metadata("t").txn_start_ms == 50 and m.metadata("t").last_update_ms == 70


def test_add_offsets_adds_the_groups_offsets_partition():
    m = machine()
    ident = init(m)
    commit(m, m.add_offsets("t", *ident, "group-1", 16, 0))
    assert m.metadata("t").partitions == (TopicPartition(CONSUMER_OFFSETS_TOPIC, coordinator_partition("group-1", 16)),)
    assert m.add_offsets("t", *ident, "", 16, 0).error == ErrorCode.INVALID_REQUEST


def test_verify_only_partitions_of_the_open_transaction():
    m = machine()
    ident = init(m)
    assert m.verify("nope", *ident, tps("a0")).error == ErrorCode.INVALID_PRODUCER_ID_MAPPING
    assert dict(m.verify("t", *ident, tps("a0")).partitions) == {TopicPartition("a", 0): ErrorCode.INVALID_TXN_STATE}
    begin(m, ident, parts=tps("a0"))
    v = m.verify("t", *ident, tps("a0", "b0"))
    assert v.error == ErrorCode.NONE
    assert dict(v.partitions) == {TopicPartition("a", 0): ErrorCode.NONE, TopicPartition("b", 0): ErrorCode.INVALID_TXN_STATE}
    r = m.end_txn("t", *ident, True, 0)  # pending prepare: the transaction is ending
    assert dict(m.verify("t", *ident, tps("a0")).partitions) == {TopicPartition("a", 0): ErrorCode.INVALID_TXN_STATE}
    m.abandon(r.pending)
    assert dict(m.verify("t", *ident, tps("a0")).partitions) == {TopicPartition("a", 0): ErrorCode.NONE}


# --- bounds and validation --------------------------------------------------------------------------------


def test_transaction_timeout_bounds():
    m = machine(max_timeout_ms=1000)
    assert m.init_producer_id("t", 0, 0).error == ErrorCode.INVALID_TRANSACTION_TIMEOUT
    assert m.init_producer_id("t", 1001, 0).error == ErrorCode.INVALID_TRANSACTION_TIMEOUT
    assert m.init_producer_id("t", -5, 0).error == ErrorCode.INVALID_TRANSACTION_TIMEOUT
    assert init(m, timeout_ms=1000) == (1000, 0)


def test_transactional_id_bounds():
    m = machine(max_transactional_id_bytes=4)
    assert m.init_producer_id("", TIMEOUT_MS, 0).error == ErrorCode.INVALID_REQUEST
    assert m.init_producer_id("ééé", TIMEOUT_MS, 0).error == ErrorCode.INVALID_REQUEST  # 6 bytes
    init(m, "abcd")


def test_max_partitions_per_transaction():
    m = machine(max_partitions_per_txn=2)
    ident = init(m)
    begin(m, ident, parts=tps("a0"))
    assert m.add_partitions("t", *ident, tps("b0", "c0"), 0).error == ErrorCode.INVALID_REQUEST
    begin(m, ident, parts=tps("b0", "a0"))
    assert m.add_partitions("t", *ident, tps("a0", "b0"), 0).ok
    assert m.add_partitions("t", *ident, (), 0).error == ErrorCode.INVALID_REQUEST
    assert m.add_partitions("t", *ident, (TopicPartition("", 0),), 0).error == ErrorCode.INVALID_REQUEST


def test_max_transactional_ids_counts_pending_new_ids():
    m = machine(max_transactional_ids=2)
    init(m, "a")
    r = m.init_producer_id("b", TIMEOUT_MS, 0)
    assert r.pending is not None
    assert m.init_producer_id("c", TIMEOUT_MS, 0).error == ErrorCode.RESOURCE_EXHAUSTED
    m.abandon(r.pending)
    init(m, "c")
    assert m.init_producer_id("d", TIMEOUT_MS, 0).error == ErrorCode.RESOURCE_EXHAUSTED
    assert init(m, "a") is not None  # known ids still work


def test_bad_expected_identity_is_invalid_request():
    m = machine()
    init(m)
    assert m.init_producer_id("t", TIMEOUT_MS, 0, 5, -3).error == ErrorCode.INVALID_REQUEST
    assert m.init_producer_id("t", TIMEOUT_MS, 0, 5, 1).error == ErrorCode.INVALID_PRODUCER_ID_MAPPING


# --- id expiration ----------------------------------------------------------------------------------------


def test_idle_ids_expire_with_a_tombstone_but_open_ones_never():
    m = machine(id_expiration_ms=1000)
    init(m, "idle", now_ms=0)
    ident = init(m, "busy", now_ms=0)
    begin(m, ident, tid="busy", now_ms=0)
    assert m.expired_ids(999) == []
    assert m.expired_ids(1000) == ["idle"]
    r = m.remove_expired("idle", 1000)
    assert r.pending.after is None and r.pending.path == (S.DEAD,)
    assert m.remove_expired("busy", 10**9).error == ErrorCode.INVALID_TXN_STATE
    commit(m, r)
    assert m.metadata("idle") is None and len(m) == 1
    assert init(m, "idle", now_ms=2000) == (1002, 0)  # a fresh producer id


# --- admin ----------------------------------------------------------------------------------------------


def test_list_transactions_filters_and_truncates():
    m = machine()
    a = init(m, "a")
    b = init(m, "b")
    init(m, "c")
    begin(m, a, tid="a", now_ms=0)
    begin(m, b, tid="b", now_ms=500)
    listed, truncated = m.list_transactions(1000)
    assert [x.transactional_id for x in listed] == ["a", "b", "c"] and not truncated
    listed, _ = m.list_transactions(1000, states=[S.ONGOING])
    assert [x.transactional_id for x in listed] == ["a", "b"]
    listed, _ = m.list_transactions(1000, producer_ids=[b[0]])
    assert [x.transactional_id for x in listed] == ["b"]
    listed, _ = m.list_transactions(1000, min_duration_ms=600)
    assert [x.transactional_id for x in listed] == ["a"]
    listed, truncated = m.list_transactions(1000, limit=2)
    assert len(listed) == 2 and truncated


def test_prepared_lists_ids_whose_markers_are_due():
    m = machine()
    for tid in ("x", "y"):
        ident = init(m, tid)
        begin(m, ident, tid=tid)
        end(m, ident, tid=tid)
    assert m.prepared() == ["x", "y"]
    r = m.complete_markers("x", 0)
    assert m.prepared() == ["y"]
    m.complete(r.pending)
    assert m.prepared() == ["y"] and m.marker_plan("x") == ()
