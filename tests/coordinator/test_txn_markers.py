"""Marker channel planner and the KIP-890 verification cache."""

from __future__ import annotations

import pathlib
import random
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from semel.coordinator.txn_markers import (  # noqa: E402
    MarkerChannelConfig,
    MarkerOutcome,
    MarkerProgress,
    TxnMarkerChannel,
    VerificationCache,
    authoritative_results,
    classify_marker_error,
)
from semel.coordinator.txn_state import MarkerRequest, TxnState  # noqa: E402
from semel.topic_partition import TopicPartition
from semel.v1.common_pb2 import ErrorCode  # noqa: E402

from tests.coordinator.txn_helpers import begin, commit, end, init, machine, tps  # noqa: E402


def markers(tid: str, *names: str, pid: int = 7, epoch: int = 1, commit_txn: bool = True, coord: int = 3):
    return [MarkerRequest(tid, tp, commit_txn, pid, epoch, coord) for tp in tps(*names)]


LEADERS = {"a": 1, "b": 2, "c": 1}


def leader_of(tp: TopicPartition):
    return LEADERS.get(tp.topic)


def ok(send, code=ErrorCode.NONE):
    return {(m.producer_id, m.topic_partition): code for m in send.markers}


def test_classification():
    for code in (ErrorCode.NONE, ErrorCode.INVALID_PRODUCER_EPOCH, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION):
        assert classify_marker_error(code) is MarkerOutcome.DONE
    assert classify_marker_error(ErrorCode.TRANSACTION_COORDINATOR_FENCED) is MarkerOutcome.FENCED
    for code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.NOT_ENOUGH_REPLICAS, ErrorCode.REQUEST_TIMED_OUT,
                 ErrorCode.STORAGE_ERROR, ErrorCode.UNKNOWN_SERVER_ERROR):
        assert classify_marker_error(code) is MarkerOutcome.RETRY


def test_unknown_partition_ends_a_marker_only_from_the_coordinators_own_broker():
    """Regression, chaos seed 53 (money): a broker restarted a moment earlier answered a marker
    UNKNOWN_TOPIC_OR_PARTITION from its still-empty metadata; taken as "topic deleted", the
    marker was dropped and the committed transfer was later closed as aborted on one side."""
    ch = TxnMarkerChannel()
    assert ch.add(markers("t1", "a0", "c0", pid=5))
    (send,) = [s for s in ch.poll(0, leader_of) if s.broker_id == 1]
    unknown = ok(send, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    from_other = authoritative_results(unknown, from_broker=1, coordinator_broker=7)
    assert set(from_other.values()) == {ErrorCode.NOT_LEADER_OR_FOLLOWER}
    progress = ch.on_response(send, from_other, 0)
    assert progress.completed == () and progress.retrying == len(send.markers)
    assert ch.outstanding("t1")  # still to write: routed again by the coordinator's metadata
    # The coordinator's own broker (where it routes a partition its metadata no longer has) is
    # the authority on a deleted topic: that answer ends the marker.
    assert authoritative_results(unknown, from_broker=7, coordinator_broker=7) == unknown
    assert authoritative_results(ok(send), from_broker=1, coordinator_broker=7) == ok(send)


def test_markers_are_grouped_by_leader_and_complete_per_transaction():
    ch = TxnMarkerChannel()
    assert ch.add(markers("x", "a0", "b0", pid=7))
    assert ch.add(markers("y", "c0", pid=8))
    sends = ch.poll(0, leader_of)
    assert [(s.broker_id, sorted((m.transactional_id, m.topic_partition.topic) for m in s.markers)) for s in sends] == [
        (1, [("x", "a"), ("y", "c")]),
        (2, [("x", "b")]),
    ]
    assert ch.poll(0, leader_of) == [], "one request in flight per broker, and nothing else is due"
    to_1, to_2 = sends
    progress = ch.on_response(to_1, ok(to_1), 5)
    assert progress.completed == ("y",) and "x" in ch
    progress = ch.on_response(to_2, ok(to_2), 6)
    assert progress.completed == ("x",) and len(ch) == 0
    assert ch.in_flight(1) == 0 and ch.in_flight(2) == 0


def test_retriable_failures_back_off_exponentially_and_follow_the_new_leader():
    ch = TxnMarkerChannel(MarkerChannelConfig(backoff_ms=100, backoff_max_ms=250))
    ch.add(markers("x", "a0"))
    leaders = {"a": 1}
    lookup = lambda tp: leaders.get(tp.topic)  # noqa: E731
    (send,) = ch.poll(0, lookup)
    progress = ch.on_response(send, ok(send, ErrorCode.NOT_LEADER_OR_FOLLOWER), 10)
    assert progress.retrying == 1 and progress.completed == ()
    assert ch.next_due_ms() == 110
    assert ch.poll(109, lookup) == []
    (send,) = ch.poll(110, lookup)
    ch.on_failure(send, 200)
    assert ch.next_due_ms() == 400  # 100 << 1
    (send,) = ch.poll(400, lookup)
    ch.on_response(send, {}, 500)  # no answer for the marker: retried
    assert ch.next_due_ms() == 750  # capped at 250
    leaders["a"] = 2  # a new leader: due at once, with a fresh backoff
    (send,) = ch.poll(501, lookup)
    assert send.broker_id == 2
    ch.on_failure(send, 600)
    assert ch.next_due_ms() == 700  # 100 << 0 again
    (send,) = ch.poll(700, lookup)
    assert ch.on_response(send, ok(send), 760).completed == ("x",)


def test_a_marker_in_flight_to_a_leader_that_moved_goes_to_the_new_one():
    """Issue 20: the leader of a0 was paused (or cut off) with a marker request in flight; the
    controller moved leadership. The marker goes to the new leader at the next poll instead of
    waiting for the old request's timeout; the old request's late answer is ignored for it
    and frees its broker's in-flight slot."""
    ch = TxnMarkerChannel()
    ch.add(markers("x", "a0", "b0"))
    leaders = {"a": 1, "b": 2}
    lookup = lambda tp: leaders.get(tp.topic)  # noqa: E731
    to_1, to_2 = ch.poll(0, lookup)
    assert (to_1.broker_id, to_2.broker_id) == (1, 2)
    assert ch.on_response(to_2, ok(to_2), 5).completed == ()
    assert ch.poll(10, lookup) == []  # in flight to 1, which does not answer
    leaders["a"] = 3
    (to_3,) = ch.poll(11, lookup)
    assert to_3.broker_id == 3 and [m.topic_partition for m in to_3.markers] == list(tps("a0"))
    assert ch.in_flight(1) == 1  # the hanging request still holds broker 1's slot
    assert ch.on_response(to_3, ok(to_3), 20).completed == ("x",)
    assert ch.on_failure(to_1, 15_000) == MarkerProgress() and ch.in_flight(1) == 0


def test_a_late_answer_from_the_old_leader_does_not_retry_the_marker_sent_to_the_new_one():
    ch = TxnMarkerChannel()
    ch.add(markers("x", "a0"))
    leaders = {"a": 1}
    lookup = lambda tp: leaders.get(tp.topic)  # noqa: E731
    (to_1,) = ch.poll(0, lookup)
    leaders["a"] = 2
    (to_2,) = ch.poll(1, lookup)
    progress = ch.on_response(to_1, ok(to_1, ErrorCode.NOT_LEADER_OR_FOLLOWER), 2)
    assert progress.retrying == 0 and ch.poll(3, lookup) == []  # still in flight to 2
    assert ch.on_response(to_2, ok(to_2), 4).completed == ("x",)


def test_leaderless_partitions_wait_without_using_attempts():
    ch = TxnMarkerChannel()
    ch.add(markers("x", "z0"))  # topic z has no leader
    assert ch.poll(0, leader_of) == [] and ch.next_due_ms() == 0
    (send,) = ch.poll(1, lambda tp: 3)
    assert send.broker_id == 3


def test_coordinator_fenced_drops_the_job():
    ch = TxnMarkerChannel()
    ch.add(markers("x", "a0", "c0"))
    ch.add(markers("y", "a1", pid=8))
    (send,) = ch.poll(0, leader_of)
    results = ok(send)
    results[(7, TopicPartition("a", 0))] = ErrorCode.TRANSACTION_COORDINATOR_FENCED
    progress = ch.on_response(send, results, 1)
    assert progress.fenced == ("x",) and progress.completed == ("y",)
    assert "x" not in ch and len(ch) == 0


def test_bounds_jobs_and_markers_per_request():
    ch = TxnMarkerChannel(MarkerChannelConfig(max_jobs=1, max_markers_per_request=2))
    assert ch.add(markers("x", "a0", "a1", "a2"))
    assert not ch.add(markers("y", "a5", pid=8)), "full: y stays prepared and is added later"
    (send,) = ch.poll(0, leader_of)
    assert len(send.markers) == 2
    ch.on_response(send, ok(send), 1)
    (send,) = ch.poll(1, leader_of)
    assert len(send.markers) == 1
    assert ch.on_response(send, ok(send), 2).completed == ("x",)
    assert ch.add(markers("y", "a5", pid=8))


def test_add_is_idempotent_and_refuses_a_second_decision():
    ch = TxnMarkerChannel()
    assert ch.add(markers("x", "a0", "b0"))
    assert ch.add(markers("x", "a0", "b0"))
    (s1, s2) = ch.poll(0, leader_of)
    ch.on_response(s1, ok(s1), 1)
    assert ch.add(markers("x", "a0", "b0")), "re-adding after partial progress keeps the progress"
    assert ch.outstanding("x") == frozenset(tps("b0"))
    with pytest.raises(AssertionError):
        ch.add(markers("x", "a0", "b0", commit_txn=False))
    with pytest.raises(ValueError):
        ch.add([])
    with pytest.raises(ValueError):
        ch.add(markers("x", "a0") + markers("y", "b0"))


def test_answers_after_remove_or_clear_are_ignored():
    ch = TxnMarkerChannel()
    ch.add(markers("x", "a0"))
    (send,) = ch.poll(0, leader_of)
    ch.remove("x")
    assert ch.in_flight(1) == 1, "the request is still outstanding"
    assert ch.on_response(send, ok(send), 1).completed == ()
    assert ch.in_flight(1) == 0
    ch.add(markers("x", "a0"))
    (send,) = ch.poll(2, leader_of)
    ch.clear()
    assert ch.on_response(send, ok(send), 3).completed == () and len(ch) == 0


def test_with_the_state_machine_prepare_to_complete():
    m = machine()
    ident = init(m)
    begin(m, ident, parts=tps("a0", "b0", "c0"))
    end(m, ident, commit_txn=True)
    ch = TxnMarkerChannel()
    for tid in m.prepared():
        assert ch.add(m.marker_plan(tid))
    completed = []
    now = 0
    while len(ch):
        for send in ch.poll(now, leader_of):
            completed += ch.on_response(send, ok(send), now).completed
        now += 1
    assert completed == ["t"]
    commit(m, m.complete_markers("t", now))
    assert m.metadata("t").state is TxnState.COMPLETE_COMMIT


def test_random_failures_every_marker_is_eventually_written_once_acknowledged():
    seed = 4242
    print(f"seed={seed}")
    rnd = random.Random(seed)
    config = MarkerChannelConfig(max_jobs=8, max_markers_per_request=3, max_in_flight_per_broker=2, backoff_ms=5,
                                 backoff_max_ms=40)
    ch = TxnMarkerChannel(config)
    brokers = [1, 2, 3]
    leaders = {f"p{i}": rnd.choice(brokers) for i in range(10)}
    wanted = {f"t{i}": markers(f"t{i}", *rnd.sample(sorted(f"p{j}0" for j in range(10)), 4), pid=100 + i) for i in range(20)}
    waiting = list(wanted)
    written: dict[str, set] = {t: set() for t in wanted}
    completed: list[str] = []
    in_flight = []
    now = 0
    while (waiting or len(ch)) and now < 100_000:
        while waiting and ch.add(wanted[waiting[0]]):
            waiting.pop(0)
        lookup = lambda tp: None if rnd.random() < 0.1 else leaders[tp.topic]  # noqa: E731
        for send in ch.poll(now, lookup):
            assert len(send.markers) <= config.max_markers_per_request
            assert ch.in_flight(send.broker_id) <= config.max_in_flight_per_broker
            in_flight.append(send)
        rnd.shuffle(in_flight)
        for send in in_flight[: rnd.randint(0, len(in_flight))]:
            in_flight.remove(send)
            if rnd.random() < 0.2:
                completed += ch.on_failure(send, now).completed
                continue
            results = {}
            for mk in send.markers:
                code = rnd.choice([ErrorCode.NONE, ErrorCode.NONE, ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.REQUEST_TIMED_OUT])
                results[(mk.producer_id, mk.topic_partition)] = code
                if code == ErrorCode.NONE:
                    written[mk.transactional_id].add(mk.topic_partition)
            completed += ch.on_response(send, results, now).completed
        if rnd.random() < 0.05:
            leaders[rnd.choice(sorted(leaders))] = rnd.choice(brokers)
        now += rnd.randint(1, 10)
    assert not waiting and len(ch) == 0, f"stuck at {now}"
    assert sorted(completed) == sorted(wanted) and len(completed) == len(set(completed))
    for tid, mks in wanted.items():
        assert written[tid] == {mk.topic_partition for mk in mks}


# --- verification cache -----------------------------------------------------------------------


def test_needs_verification_only_for_a_first_transactional_write():
    assert VerificationCache.needs_verification(is_transactional=True, has_open_txn=False)
    assert not VerificationCache.needs_verification(is_transactional=True, has_open_txn=True)
    assert not VerificationCache.needs_verification(is_transactional=False, has_open_txn=False)


def test_verified_write_is_accepted_once():
    cache = VerificationCache()
    guard = cache.begin(7, 2, now_ms=0)
    assert cache.check(guard, 1) == ErrorCode.INVALID_TXN_STATE, "not verified yet"
    assert cache.record_verified(guard, 1)
    assert cache.check(guard, 2) == ErrorCode.NONE
    cache.on_appended(7)
    assert cache.check(guard, 3) == ErrorCode.INVALID_TXN_STATE and len(cache) == 0


def test_a_marker_between_verification_and_append_refuses_the_delayed_write():
    cache = VerificationCache()
    guard = cache.begin(7, 2, 0)
    assert cache.record_verified(guard, 1)
    cache.on_marker(7)  # the transaction ended (e.g. aborted by a timeout) before the write landed
    assert cache.check(guard, 2) == ErrorCode.INVALID_TXN_STATE


def test_a_newer_verification_voids_the_older_guard():
    cache = VerificationCache()
    old = cache.begin(7, 2, 0)
    new = cache.begin(7, 3, 1)
    assert not cache.record_verified(old, 2)
    assert cache.check(old, 2) == ErrorCode.INVALID_TXN_STATE
    assert cache.record_verified(new, 2) and cache.check(new, 2) == ErrorCode.NONE


def test_verification_cache_expiry_and_bound():
    cache = VerificationCache(max_entries=2, ttl_ms=100)
    g1 = cache.begin(1, 0, 0)
    g2 = cache.begin(2, 0, 50)
    cache.record_verified(g1, 10)
    assert cache.check(g1, 100) == ErrorCode.INVALID_TXN_STATE, "expired at ttl"
    assert cache.expire(120) == 1 and len(cache) == 1
    cache.begin(3, 0, 130)
    cache.begin(4, 0, 130)
    assert len(cache) == 2 and not cache.record_verified(g2, 131), "LRU evicted the oldest"


# --- admin abort (KIP-664) ---------------------------------------------------------------------


def test_admin_abort_only_of_an_open_transaction_at_its_epoch():
    from semel.coordinator.txn_markers import check_admin_abort
    from semel.storage.producer_state import ProducerInfo

    open_txn = ProducerInfo(7, 4, 10, 0, 3, 120)
    assert check_admin_abort(open_txn, 4, 3)[0] == ErrorCode.NONE
    assert check_admin_abort(open_txn, 4, 9)[0] == ErrorCode.NONE
    assert check_admin_abort(open_txn, 3, 3)[0] == ErrorCode.INVALID_PRODUCER_EPOCH
    assert check_admin_abort(open_txn, 4, 2)[0] == ErrorCode.TRANSACTION_COORDINATOR_FENCED
    assert check_admin_abort(ProducerInfo(7, 4, 10, 0, 3, None), 4, 3)[0] == ErrorCode.INVALID_TXN_STATE
    assert check_admin_abort(None, 4, 3)[0] == ErrorCode.INVALID_TXN_STATE


def test_admin_abort_closes_a_hanging_transaction_in_producer_state():
    from semel.coordinator.txn_markers import check_admin_abort
    from semel.storage.batch import (
        ATTR_CONTROL,
        ATTR_TRANSACTIONAL,
        BatchHeader,
        Marker,
    )
    from semel.storage.producer_state import ProducerStateManager

    ps = ProducerStateManager()
    ps.apply(BatchHeader(0, 0, 0, 7, 2, 0, 1, ATTR_TRANSACTIONAL, 0, 0))  # a transaction nobody will end
    info = ps.producer(7)
    assert check_admin_abort(info, 2, 0)[0] == ErrorCode.NONE
    marker = Marker(commit=False, coordinator_epoch=0)
    assert ps.validate_marker(7, 2, marker).ok
    completed = ps.apply(BatchHeader(1, 0, 0, 7, 2, -1, 1, ATTR_CONTROL | ATTR_TRANSACTIONAL, 0, 0), marker)
    assert completed is not None and completed.aborted and ps.open_transactions() == {}
