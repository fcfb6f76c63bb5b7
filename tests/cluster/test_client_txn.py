"""Transactional producer against in-process fake brokers (tests/cluster/fake_eos_broker.py):
the state machine, KIP-890 epochs, fencing and the error taxonomy."""

from __future__ import annotations

import pytest
from semel.client import Producer
from semel.client import errors as client_errors
from semel.client.txn import (
    GroupMetadata,
    ProducerFencedError,
    TransactionAbortableError,
    TransactionStateError,
    TransactionTimedOutError,
)
from semel.v1 import common_pb2

from tests.cluster.fake_eos_broker import start_fake_eos_cluster


@pytest.fixture
def eos_cluster():
    state, brokers = start_fake_eos_cluster(1)
    state.create_topic("t", 2)
    try:
        yield state, brokers[0].address
    finally:
        for broker in brokers:
            broker.stop()


def _txn_producer(bootstrap: str, tid: str = "tx-1", **options) -> Producer:
    producer = Producer(bootstrap, transactional_id=tid, linger_ms=0, retry_backoff_ms=5, **options)
    producer.init_transactions(timeout_s=5)
    return producer


def test_commit_writes_markers_and_bumps_the_epoch_per_transaction(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap) as producer:
        first = producer.producer_identity
        producer.begin_transaction()
        offsets = [producer.send("t", b"a%d" % i, partition=i % 2).result(5).offset for i in range(4)]
        producer.commit_transaction()
        second = producer.producer_identity
        with producer.transaction():
            producer.send("t", b"b", partition=0)
        third = producer.producer_identity
    assert offsets == [0, 0, 1, 1]
    assert first[0] == second[0] == third[0] and first[1] + 1 == second[1] and second[1] + 1 == third[1]
    assert state.committed_values("t", 0) == [b"a0", b"a2", b"b"]
    # the second transaction restarted its sequences at 0 under the new epoch (KIP-890)
    data = [b for b in state.logs[("t", 0)] if not b.attributes & common_pb2.CONTROL]
    assert [(b.producer_epoch, b.base_sequence) for b in data][-1] == (second[1], 0)
    assert state.add_partitions_calls >= 2


def test_abort_hides_the_records_and_the_next_transaction_commits(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap) as producer:
        producer.begin_transaction()
        producer.send("t", b"aborted", partition=0).result(5)
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send("t", b"kept", partition=0)
        producer.commit_transaction()
        assert producer.metrics()["transactions_aborted"] == 1
    assert state.committed_values("t", 0) == [b"kept"]
    assert b"aborted" in [r.value for r in state.records("t", 0)]  # in the log, never visible


def test_the_context_manager_aborts_on_error(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap) as producer:
        with pytest.raises(RuntimeError):
            with producer.transaction():
                producer.send("t", b"x", partition=1).result(5)
                raise RuntimeError("boom")
        assert state.end_txn_calls[-1].commit is False
        with producer.transaction():
            producer.send("t", b"y", partition=1)
    assert state.committed_values("t", 1) == [b"y"]


def test_an_empty_transaction_needs_no_coordinator_round_trip(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap) as producer:
        with producer.transaction():
            pass
    assert state.end_txn_calls == []


def test_state_errors_are_raised_before_anything_is_sent(eos_cluster) -> None:
    _state, bootstrap = eos_cluster
    with Producer(bootstrap, transactional_id="tx-2") as producer:
        with pytest.raises(TransactionStateError):
            producer.begin_transaction()       # init_transactions() first
        producer.init_transactions(timeout_s=5)
        with pytest.raises(TransactionStateError):
            producer.send("t", b"x")            # outside a transaction
        with pytest.raises(TransactionStateError):
            producer.commit_transaction()
        producer.begin_transaction()
        with pytest.raises(TransactionStateError):
            producer.begin_transaction()
        producer.abort_transaction()
    with Producer(bootstrap) as plain, pytest.raises(TransactionStateError):
        plain.begin_transaction()


def test_a_second_producer_with_the_same_id_fences_the_first(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    zombie = _txn_producer(bootstrap, "tx-f")
    zombie.begin_transaction()
    zombie.send("t", b"zombie", partition=0).result(5)
    with _txn_producer(bootstrap, "tx-f") as fresh:  # aborts the zombie's open transaction
        with pytest.raises(ProducerFencedError) as info:
            zombie.commit_transaction()
        assert isinstance(info.value, client_errors.FatalError)
        with pytest.raises(ProducerFencedError):
            zombie.send("t", b"more", partition=0)
        with fresh.transaction():
            fresh.send("t", b"fresh", partition=0)
    zombie.close()
    assert state.committed_values("t", 0) == [b"fresh"]


def test_a_timed_out_transaction_says_timed_out(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap, "tx-t") as producer:
        producer.begin_transaction()
        producer.send("t", b"late", partition=0).result(5)
        state.expire_transaction("tx-t")
        with pytest.raises(TransactionTimedOutError) as info:
            producer.commit_transaction()
        assert "timed out" in str(info.value)
        with pytest.raises(TransactionTimedOutError):
            producer.begin_transaction()
    assert state.committed_values("t", 0) == []


def test_a_failed_record_makes_the_transaction_abortable(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap, "tx-a") as producer:
        producer.begin_transaction()
        producer.send("t", b"ok", partition=0).result(5)
        state.fail_next_produce("t", 0, common_pb2.OUT_OF_ORDER_SEQUENCE)
        bad = producer.send("t", b"bad", partition=0)
        with pytest.raises(client_errors.AbortableError):
            bad.result(5)
        with pytest.raises(TransactionAbortableError):
            producer.commit_transaction()
        with pytest.raises(TransactionAbortableError):
            producer.send("t", b"no", partition=0)
        producer.abort_transaction()
        with producer.transaction():                 # a new epoch: sequences restart at 0
            producer.send("t", b"after", partition=0)
    assert state.committed_values("t", 0) == [b"after"]


def test_send_offsets_adds_the_group_and_commits_offsets_in_the_transaction(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap, "tx-o") as producer:
        with producer.transaction():
            producer.send("t", b"out", partition=0)
            producer.send_offsets_to_transaction({("in", 0): 42, ("in", 1): (7, 3)},
                                                 GroupMetadata("g1", "member-a", 5))
    request = state.offset_commits[-1]
    assert (request.transactional_id, request.group_id, request.member_id, request.member_epoch) == (
        "tx-o", "g1", "member-a", 5)
    got = {(t.topic, p.partition): (p.committed_offset, p.committed_leader_epoch)
           for t in request.topics for p in t.partitions}
    assert got == {("in", 0): (42, -1), ("in", 1): (7, 3)}
    assert state.end_txn_calls[-1].commit is True


def test_offsets_only_transaction_still_ends_at_the_coordinator(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap, "tx-oo") as producer:
        with producer.transaction():
            producer.send_offsets_to_transaction({("in", 0): 1}, "g2")
    assert state.end_txn_calls and state.end_txn_calls[-1].commit


def test_a_late_add_partitions_answer_for_an_ended_transaction_is_ignored(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap, "tx-late") as producer:
        producer.begin_transaction()
        producer.send("t", b"x", partition=0).result(5)
        old = producer._txn.identity
        producer.abort_transaction()       # epoch bumped: an AddPartitionsToTxn still retrying at the
        producer.begin_transaction()       # old epoch is answered PRODUCER_FENCED, and must not be fatal
        producer._add_partitions_worker(producer._txn, old, frozenset({("t", 1)}))
        producer.send("t", b"y", partition=0)
        producer.commit_transaction()
    assert state.committed_values("t", 0) == [b"y"]


def test_the_first_add_of_a_transaction_carries_the_partitions_the_previous_two_wrote(eos_cluster) -> None:
    """A steady producer writes the same partitions in every transaction, one after the other:
    once two transactions in a row wrote them, the first add of the next names them all, so the
    later first writes need none."""
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap, "tx-pred") as producer:
        for value in (b"a", b"b"):
            with producer.transaction():
                producer.send("t", value, partition=0).result(5)
                producer.send("t", value, partition=1).result(5)
        calls = state.add_partitions_calls
        assert calls == 4 and state.added_per_call == [{("t", 0)}, {("t", 1)}] * 2
        with producer.transaction():
            producer.send("t", b"c", partition=0).result(5)
            producer.send("t", b"d", partition=1).result(5)
        assert state.add_partitions_calls == calls + 1
        assert state.added_per_call[-1] == {("t", 0), ("t", 1)}
        with producer.transaction():   # writes only p1: p0 is added but gets a marker closing nothing
            producer.send("t", b"e", partition=1).result(5)
        assert state.added_per_call[-1] == {("t", 0), ("t", 1)}
        with producer.transaction():   # the prediction is now p1 alone
            producer.send("t", b"f", partition=0).result(5)
        assert state.added_per_call[-1] == {("t", 0), ("t", 1)} and state.add_partitions_calls == calls + 3
        with producer.transaction():   # p0 and p1 were not both written twice in a row: nothing predicted
            producer.send("t", b"g", partition=0).result(5)
        assert state.added_per_call[-1] == {("t", 0)}
    assert state.committed_values("t", 0) == [b"a", b"b", b"c", b"f", b"g"]
    assert state.committed_values("t", 1) == [b"a", b"b", b"d", b"e"]


def test_an_add_refused_because_of_a_predicted_partition_is_retried_without_predictions(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("gone", 1)
    with _txn_producer(bootstrap, "tx-gone") as producer:
        for value in (b"x", b"y"):
            with producer.transaction():
                producer.send("gone", value, partition=0).result(5)
                producer.send("t", value, partition=0).result(5)
        state.unknown_partitions.add(("gone", 0))  # the topic was deleted since
        with producer.transaction():
            producer.send("t", b"z", partition=0).result(5)
        assert state.added_per_call[-2:] == [{("gone", 0), ("t", 0)}, {("t", 0)}]
    assert state.committed_values("t", 0) == [b"x", b"y", b"z"]


def test_predictions_can_be_turned_off(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    with _txn_producer(bootstrap, "tx-nopred", predict_txn_partitions=False) as producer:
        for value in (b"a", b"b"):
            with producer.transaction():
                producer.send("t", value, partition=0).result(5)
                producer.send("t", value, partition=1).result(5)
    assert state.added_per_call == [{("t", 0)}, {("t", 1)}, {("t", 0)}, {("t", 1)}]
