"""The coordinator core's shell protocol: routing, writes and their outcomes, markers,
scans, unloading and fencing (the simulation test drives the same core at random)."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from semel.coordinator import txn_wire  # noqa: E402
from semel.coordinator.txn_coordinator import (  # noqa: E402
    AppendRecords,
    PartitionFenced,
    Reply,
    TxnCoordinator,
)
from semel.coordinator.txn_log import decode_records  # noqa: E402
from semel.coordinator.txn_markers import MarkerSend  # noqa: E402
from semel.coordinator.txn_state import TxnConfig, TxnState, offsets_partition  # noqa: E402
from semel.v1.common_pb2 import ErrorCode  # noqa: E402

from tests.coordinator.txn_helpers import ProducerIds, tps  # noqa: E402

TID = "t"  # coordinator_partition("t", 2) == 0 is checked below


def core(loaded=(0, 1)) -> TxnCoordinator:
    c = TxnCoordinator(2, ProducerIds(), scan_interval_ms=100)
    for p in loaded:
        c.loaded(p, 5, [])
    return c


def only(actions, kind):
    assert len(actions) == 1 and isinstance(actions[0], kind), actions
    return actions[0]


def write(c: TxnCoordinator, actions, now_ms: int = 0):
    """Commit the single append in `actions`; returns the actions that follow."""
    append = only(actions, AppendRecords)
    assert append.coordinator_epoch == 5 and append.partition == c.partition_of(TID)
    return c.write_committed(append.write_id, now_ms)


def init(c: TxnCoordinator, request_id: int = 1):
    reply = only(write(c, c.init_producer_id(request_id, TID, 1000, 0)), Reply)
    assert reply.request_id == request_id and reply.result.ok
    return txn_wire.identity_of(reply.result, reply.completed)


def test_routing():
    assert TxnCoordinator(2, ProducerIds()).partition_of(TID) == 0
    c = core(loaded=(1,))
    assert only(c.init_producer_id(1, TID, 1000, 0), Reply).result.error == ErrorCode.NOT_COORDINATOR
    c.begin_loading(0)
    assert only(c.init_producer_id(2, TID, 1000, 0), Reply).result.error == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
    assert c.verify(TID, 1, 0, tps("a0")).error == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
    assert c.list_transactions(0)[0] == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
    c.loaded(0, 5, [])
    init(c, 3)
    assert c.describe(TID)[0] == ErrorCode.NONE and c.describe("nope-0")[0] in (
        ErrorCode.TRANSACTIONAL_ID_NOT_FOUND, ErrorCode.NOT_COORDINATOR)


def test_the_reply_waits_for_the_write_and_the_batch_holds_the_record():
    c = core()
    actions = c.init_producer_id(7, TID, 1000, 0)
    append = only(actions, AppendRecords)
    (entry,) = decode_records(append.batch)
    assert entry.transactional_id == TID and entry.metadata.state is TxnState.EMPTY
    assert c.machine(0).metadata(TID) is None, "memory changes only once the write committed"
    reply = only(c.write_committed(append.write_id, 0), Reply)
    assert reply.request_id == 7 and txn_wire.identity_of(reply.result, reply.completed) == (1000, 0)
    assert c.write_committed(append.write_id, 0) == [], "a second report is ignored"


def test_failed_and_unknown_writes():
    c = core()
    ident = init(c)
    append = only(c.add_partitions(2, TID, *ident, tps("a0"), 0), AppendRecords)
    reply = only(c.write_failed(append.write_id, ErrorCode.NOT_LEADER_OR_FOLLOWER, 0), Reply)
    assert reply.result.error == ErrorCode.NOT_COORDINATOR and c.machine(0).metadata(TID).state is TxnState.EMPTY
    append = only(c.add_partitions(3, TID, *ident, tps("a0"), 0), AppendRecords)
    reply = only(c.write_timed_out(append.write_id), Reply)
    assert reply.request_id == 3 and reply.result.error == ErrorCode.REQUEST_TIMED_OUT
    retry = only(c.add_partitions(4, TID, *ident, tps("a0"), 0), Reply)
    assert retry.result.error == ErrorCode.CONCURRENT_TRANSACTIONS, "blocked until the outcome is known"
    assert c.write_committed(append.write_id, 0) == [], "nobody waits any more"
    assert only(c.add_partitions(5, TID, *ident, tps("a0"), 0), Reply).result.ok


def test_end_txn_markers_then_complete_record():
    c = core()
    ident = init(c)
    write(c, c.add_partitions(2, TID, *ident, tps("a0", "b0"), 0))
    reply = only(write(c, c.end_txn(3, TID, *ident, True, 0)), Reply)
    assert txn_wire.identity_of(reply.result, reply.completed) == (ident[0], ident[1] + 1)
    sends = [a for a in c.tick(10, lambda tp: 1 + tp.partition, 10) if isinstance(a, MarkerSend)]
    (send,) = sends
    assert {m.topic_partition for m in send.markers} == set(tps("a0", "b0"))
    assert all(m.coordinator_epoch == 5 and m.producer_epoch == ident[1] + 1 for m in send.markers)
    results = {(m.producer_id, m.topic_partition): ErrorCode.NONE for m in send.markers}
    append = only(c.marker_response(send, results, 11, 11), AppendRecords)
    assert c.write_committed(append.write_id, 12) == []
    assert c.machine(0).metadata(TID).state is TxnState.COMPLETE_COMMIT


def test_timeout_scan_runs_on_its_interval():
    c = core()
    ident = init(c)
    write(c, c.add_partitions(2, TID, *ident, tps("a0"), 0))
    c.machine(0).observe_monotonic(0)  # as the shell's next tick would
    assert c.tick(950, lambda tp: 1, 950) == []  # a scan at 950: nothing expired yet
    assert c.tick(1_040, lambda tp: 1, 1_040) == [], "expired (open 1040 > 1000 ms), but the next scan is at 1050"
    append = only([a for a in c.tick(1_050, lambda tp: 1, 1_050) if isinstance(a, AppendRecords)], AppendRecords)
    (entry,) = decode_records(append.batch)
    assert entry.metadata.state is TxnState.PREPARE_ABORT and entry.metadata.bump_reason.name == "TIMEOUT"


def test_unload_answers_parked_requests_and_drops_markers():
    c = core()
    ident = init(c)
    write(c, c.add_partitions(2, TID, *ident, tps("a0"), 0))
    write(c, c.end_txn(3, TID, *ident, False, 0))
    assert TID in c.channel
    parked = only(c.init_producer_id(4, "other-id-on-0" if c.partition_of("other-id-on-0") == 0 else "x", 1000, 0),
                  AppendRecords)
    actions = c.unload(0)
    assert [(a.request_id, a.result.error) for a in actions] == [(4, ErrorCode.NOT_COORDINATOR)]
    assert TID not in c.channel and c.machine(0) is None
    assert c.write_committed(parked.write_id, 0) == []


def test_a_fenced_marker_unloads_the_partition():
    c = core()
    ident = init(c)
    write(c, c.add_partitions(2, TID, *ident, tps("a0"), 0))
    write(c, c.end_txn(3, TID, *ident, True, 0))
    (send,) = [a for a in c.tick(0, lambda tp: 1, 0) if isinstance(a, MarkerSend)]
    actions = c.marker_response(send, {(m.producer_id, m.topic_partition): ErrorCode.TRANSACTION_COORDINATOR_FENCED
                                       for m in send.markers}, 1, 1)
    assert actions == [PartitionFenced(0)] and c.machine(0) is None and c.loaded_partitions() == [1]


def test_reload_resends_markers_of_a_prepared_decision():
    c = core()
    ident = init(c)
    write(c, c.add_partitions(2, TID, *ident, tps("a0"), 0))
    write(c, c.end_txn(3, TID, *ident, True, 0))
    state = c.machine(0).snapshot().values()
    c.begin_loading(0)
    c.loaded(0, 6, state)
    (send,) = [a for a in c.tick(0, lambda tp: 1, 0) if isinstance(a, MarkerSend)]
    assert [m.coordinator_epoch for m in send.markers] == [6] and send.markers[0].commit


def test_list_transactions_spans_partitions_and_truncates():
    c = core()
    ids = []
    for i in range(6):
        tid = f"id{i}"
        ids.append(tid)
        only(c.write_committed(only(c.init_producer_id(i, tid, 1000, 0), AppendRecords).write_id, 0), Reply)
    error, listed, truncated = c.list_transactions(0)
    assert error == ErrorCode.NONE and sorted(m.transactional_id for m in listed) == ids and not truncated
    error, listed, truncated = c.list_transactions(0, limit=4)
    assert len(listed) == 4 and truncated


def test_loading_over_a_served_partition_answers_its_parked_requests():
    c = core()
    only(c.init_producer_id(9, TID, 1000, 0), AppendRecords)
    actions = c.loaded(0, 6, [])
    assert [(a.request_id, a.result.error) for a in actions] == [(9, ErrorCode.NOT_COORDINATOR)]


def _commit_until_markers(c: TxnCoordinator, ident, request_id: int = 2):
    """A transaction over a0, committed: EndTxn answered, its marker request out, not answered."""
    write(c, c.add_partitions(request_id, TID, *ident, tps("a0"), 0))
    reply = only(write(c, c.end_txn(request_id + 1, TID, *ident, True, 0)), Reply)
    (send,) = [a for a in c.tick(10, lambda tp: 1, 10) if isinstance(a, MarkerSend)]
    return txn_wire.identity_of(reply.result, reply.completed), send


def test_add_partitions_waits_for_the_previous_transaction_to_complete():
    """KIP-890: the next transaction's AddPartitions (new epoch) arrives while the previous
    one's markers are written: it waits for the Complete* record, not bouncing
    CONCURRENT_TRANSACTIONS to a client that would only retry after a backoff. That record
    also starts the next transaction with every waiting add (one replicated write, not two)."""
    c = core()
    ident = init(c)
    nxt, send = _commit_until_markers(c, ident)
    assert c.add_partitions(5, TID, *nxt, tps("b0"), 12) == [], "waits"
    assert c.add_offsets(6, TID, *nxt, "g", 3, 12) == [], "waits too"
    assert c.tick(20, lambda tp: 1, 20) == []
    append = only(c.marker_response(send, {(m.producer_id, m.topic_partition): ErrorCode.NONE
                                           for m in send.markers}, 21, 21), AppendRecords)
    (entry,) = decode_records(append.batch)
    offsets_tp = offsets_partition("g", 3)
    assert entry.metadata.state is TxnState.ONGOING and entry.metadata.producer_epoch == nxt[1]
    assert entry.metadata.partitions == tuple(sorted([*tps("b0"), offsets_tp]))
    assert entry.metadata.txn_start_ms == 21
    assert c.machine(0).metadata(TID).state is TxnState.PREPARE_COMMIT, "memory changes only once written"
    actions = c.write_committed(append.write_id, 22)
    # both waiters resume, find their partitions added and answer at once: no further write
    assert [(a.request_id, a.result.error) for a in actions] == [(5, ErrorCode.NONE), (6, ErrorCode.NONE)]
    assert c.machine(0).metadata(TID).state is TxnState.ONGOING


def test_a_failed_complete_and_add_write_leaves_the_requests_waiting():
    c = core()
    nxt, send = _commit_until_markers(c, init(c))
    assert c.add_partitions(5, TID, *nxt, tps("b0"), 12) == []
    append = only(c.marker_response(send, {(m.producer_id, m.topic_partition): ErrorCode.NONE
                                           for m in send.markers}, 21, 21), AppendRecords)
    assert c.write_failed(append.write_id, ErrorCode.NOT_ENOUGH_REPLICAS, 22) == []
    assert c.machine(0).metadata(TID).state is TxnState.PREPARE_COMMIT
    # the next tick sends the markers again; their answer writes Complete + Ongoing again
    (send,) = [a for a in c.tick(30, lambda tp: 1, 30) if isinstance(a, MarkerSend)]
    append = only(c.marker_response(send, {(m.producer_id, m.topic_partition): ErrorCode.NONE
                                           for m in send.markers}, 31, 31), AppendRecords)
    assert [(a.request_id, a.result.error) for a in c.write_committed(append.write_id, 32)] == [(5, ErrorCode.NONE)]


def test_adds_arriving_during_an_add_write_wait_and_share_the_next_write():
    """A client adds partitions as its records reach them: an AddPartitions that meets the
    write of an earlier one waits for it (no CONCURRENT_TRANSACTIONS and client backoff), and
    the adds that waited are written together, then all answer."""
    c = core()
    ident = init(c)
    first = only(c.add_partitions(2, TID, *ident, tps("a0"), 0), AppendRecords)
    assert c.add_partitions(3, TID, *ident, tps("b0"), 1) == [], "waits for the write in flight"
    assert c.add_partitions(4, TID, *ident, tps("c0", "a0"), 2) == []
    actions = c.write_committed(first.write_id, 3)
    replies = [a for a in actions if isinstance(a, Reply)]
    assert [(r.request_id, r.result.error) for r in replies] == [(2, ErrorCode.NONE)]
    combined = only([a for a in actions if isinstance(a, AppendRecords)], AppendRecords)
    (entry,) = decode_records(combined.batch)
    assert entry.metadata.partitions == tps("a0", "b0", "c0")
    actions = c.write_committed(combined.write_id, 4)
    assert [(a.request_id, a.result.error) for a in actions] == [(3, ErrorCode.NONE), (4, ErrorCode.NONE)]


def test_requests_waiting_for_a_failed_write_run_again():
    c = core()
    ident = init(c)
    first = only(c.add_partitions(2, TID, *ident, tps("a0"), 0), AppendRecords)
    assert c.add_partitions(3, TID, *ident, tps("b0"), 1) == []
    actions = c.write_failed(first.write_id, ErrorCode.NOT_ENOUGH_REPLICAS, now_ms=2)
    assert [(a.request_id, a.result.error) for a in actions if isinstance(a, Reply)] == [
        (2, ErrorCode.COORDINATOR_NOT_AVAILABLE)]
    retry = only([a for a in actions if isinstance(a, AppendRecords)], AppendRecords)
    (entry,) = decode_records(retry.batch)
    assert entry.metadata.partitions == tps("b0"), "the waiter's own write, not a combined one"
    assert [(a.request_id, a.result.error) for a in c.write_committed(retry.write_id, 3)] == [(3, ErrorCode.NONE)]


def test_too_many_partitions_waiting_complete_alone_and_the_add_is_refused():
    c = TxnCoordinator(2, ProducerIds(), config=TxnConfig(max_partitions_per_txn=2), scan_interval_ms=100)
    c.loaded(0, 5, [])
    c.loaded(1, 5, [])
    nxt, send = _commit_until_markers(c, init(c))
    assert c.add_partitions(5, TID, *nxt, tps("b0", "b1", "b2"), 12) == []
    append = only(c.marker_response(send, {(m.producer_id, m.topic_partition): ErrorCode.NONE
                                           for m in send.markers}, 21, 21), AppendRecords)
    (entry,) = decode_records(append.batch)
    assert entry.metadata.state is TxnState.COMPLETE_COMMIT
    assert [(a.request_id, a.result.error) for a in c.write_committed(append.write_id, 22)] == [
        (5, ErrorCode.INVALID_REQUEST)]


def test_a_waiting_add_partitions_answers_concurrent_after_its_deadline():
    c = TxnCoordinator(2, ProducerIds(), scan_interval_ms=100, completing_wait_ms=50)
    c.loaded(0, 5, [])
    c.loaded(1, 5, [])
    nxt, _ = _commit_until_markers(c, init(c))
    assert c.add_partitions(5, TID, *nxt, tps("b0"), 12) == []
    assert [a for a in c.tick(61, lambda tp: 1, 61) if isinstance(a, Reply)] == [], "deadline 62 not reached"
    replies = [a for a in c.tick(62, lambda tp: 1, 62) if isinstance(a, Reply)]
    assert [(r.request_id, r.result.error) for r in replies] == [(5, ErrorCode.CONCURRENT_TRANSACTIONS)]


def test_waiting_requests_get_not_coordinator_when_the_partition_unloads():
    c = core()
    nxt, _ = _commit_until_markers(c, init(c))
    assert c.add_partitions(5, TID, *nxt, tps("b0"), 12) == []
    assert [(a.request_id, a.result.error) for a in c.unload(0)] == [(5, ErrorCode.NOT_COORDINATOR)]


def test_no_wait_when_disabled_or_not_completing():
    c = TxnCoordinator(2, ProducerIds(), scan_interval_ms=100, completing_wait_ms=0)
    c.loaded(0, 5, [])
    nxt, _ = _commit_until_markers(c, init(c))
    assert only(c.add_partitions(5, TID, *nxt, tps("b0"), 12), Reply).result.error == ErrorCode.CONCURRENT_TRANSACTIONS
    c = core()
    ident = init(c)
    append = only(c.add_partitions(2, TID, *ident, tps("a0"), 0), AppendRecords)
    c.write_timed_out(append.write_id)
    # an unknown write outcome is no completing transaction: answered at once, as before
    assert only(c.add_partitions(3, TID, *ident, tps("a0"), 0), Reply).result.error == ErrorCode.CONCURRENT_TRANSACTIONS


def test_a_paused_leader_does_not_hold_the_next_transaction():
    """Issue 20 (CONCURRENT_TRANSACTIONS for 8-12 s under faults): the previous transaction's
    marker is in flight to the leader of a0, which was paused; it never answers (the shell's
    RPC would fail after its 15 s timeout). The controller moves a0's leadership. The marker
    goes to the new leader at the next tick, so the next transaction's AddPartitions, which
    waits at the coordinator for the Complete* record, is answered NONE within
    TXN_COMPLETING_WAIT_MS instead of CONCURRENT_TRANSACTIONS until the old request fails."""
    from semel import limits

    c = core()
    ident = init(c)
    nxt, to_paused = _commit_until_markers(c, ident)  # marker out to broker 1 at t=10
    assert to_paused.broker_id == 1
    assert c.add_partitions(5, TID, *nxt, tps("b0"), 12) == [], "waits for the Complete* record"
    leaders = {"a": 1}
    lookup = lambda tp: leaders.get(tp.topic, 1)  # noqa: E731
    moved_ms = 300  # the paused broker was fenced; a0 leads on broker 2
    assert [a for a in c.tick(moved_ms - 1, lookup, moved_ms - 1) if isinstance(a, MarkerSend)] == []
    leaders["a"] = 2
    sent_ms = moved_ms + limits.TXN_TICK_INTERVAL_MS  # the shell's next tick
    (to_new,) = [a for a in c.tick(sent_ms, lookup, sent_ms) if isinstance(a, MarkerSend)]
    assert to_new.broker_id == 2 and to_new.markers == to_paused.markers
    append = only(c.marker_response(to_new, {(m.producer_id, m.topic_partition): ErrorCode.NONE
                                             for m in to_new.markers}, sent_ms + 5, sent_ms + 5), AppendRecords)
    replies = c.write_committed(append.write_id, sent_ms + 10)
    assert [(r.request_id, r.result.error) for r in replies] == [(5, ErrorCode.NONE)]
    assert sent_ms + 10 < 12 + limits.TXN_COMPLETING_WAIT_MS  # answered within its wait: no CONCURRENT_TRANSACTIONS
    assert c.marker_failure(to_paused, 15_010, 15_010) == []  # the old request's timeout changes nothing
    assert c.machine(0).metadata(TID).state is TxnState.ONGOING


def test_marker_retries_are_paced_on_the_monotonic_clock_not_held_by_a_wall_clock_step_back():
    """A marker send fails, then the coordinator's wall clock steps back 10 minutes: the retry
    goes out after its backoff on the monotonic clock (on the wall clock it would wait 10
    minutes, holding the transaction in Prepare* and its producer in CONCURRENT_TRANSACTIONS)."""
    c = core()
    ident = init(c)
    _, send = _commit_until_markers(c, ident)
    assert c.marker_failure(send, 20, 20) == []
    back = 20 - 10 * 60_000
    retried = [a for a in c.tick(back + 60_000, lambda tp: 1, 60_000) if isinstance(a, MarkerSend)]
    assert [m.topic_partition for a in retried for m in a.markers] == list(tps("a0")), "retried after its backoff"
