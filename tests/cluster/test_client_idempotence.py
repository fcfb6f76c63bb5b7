"""Idempotent producer: the pure sequence core, and the producer against in-process fake brokers
whose partitions validate with the real ProducerStateManager (tests/cluster/fake_eos_broker.py)."""

from __future__ import annotations

import dataclasses

import pytest
from semel.client import Producer
from semel.client import errors as client_errors
from semel.client.idempotence import (
    SEQUENCE_MODULUS,
    IdempotenceState,
    ProducerIdentity,
    Verdict,
)
from semel.client.txn import UnsupportedByClusterError
from semel.v1 import common_pb2

from tests.cluster.fake_eos_broker import start_fake_eos_cluster


@dataclasses.dataclass
class _Batch:
    topic: str = "t"
    partition: int = 0
    record_count: int = 1
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    outcome_unknown: bool = False


# --- the pure core ------------------------------------------------------------------------
def test_sequences_are_assigned_per_partition_at_drain_and_kept_by_retries() -> None:
    idem = IdempotenceState()
    idem.set_identity(ProducerIdentity(7, 0))
    a, b, c = _Batch(record_count=3), _Batch(record_count=2), _Batch(partition=1, record_count=4)
    for batch in (a, b, c):
        idem.assign(batch)
    assert (a.base_sequence, b.base_sequence, c.base_sequence) == (0, 3, 0)
    assert (a.producer_id, a.producer_epoch) == (7, 0)
    idem.assign(a)  # a retry keeps its sequence
    assert a.base_sequence == 0
    assert idem.first_pending(("t", 0)) == 0
    idem.on_acked(a)
    assert idem.first_pending(("t", 0)) == 3


def test_sequences_wrap_at_2_pow_31() -> None:
    idem = IdempotenceState()
    idem.set_identity(ProducerIdentity(1, 0))
    idem._next_seq[("t", 0)] = SEQUENCE_MODULUS - 2
    a, b = _Batch(record_count=3), _Batch()
    idem.assign(a)
    idem.assign(b)
    assert a.base_sequence == SEQUENCE_MODULUS - 2 and b.base_sequence == 1


def test_out_of_order_behind_an_unacknowledged_batch_is_retried_else_bumps() -> None:
    idem = IdempotenceState()
    idem.set_identity(ProducerIdentity(1, 0))
    a, b = _Batch(), _Batch()
    idem.assign(a)
    idem.assign(b)
    ooo = common_pb2.OUT_OF_ORDER_SEQUENCE
    assert idem.classify(b, ooo, retriable=False) is Verdict.RETRY      # a is still pending
    assert idem.classify(a, ooo, retriable=False) is Verdict.BUMP       # the head itself: state lost
    assert idem.classify(a, common_pb2.UNKNOWN_PRODUCER_ID, False) is Verdict.BUMP
    assert idem.classify(a, common_pb2.DUPLICATE_SEQUENCE_NUMBER, False) is Verdict.DUPLICATE
    assert idem.classify(a, common_pb2.NOT_LEADER_OR_FOLLOWER, True) is Verdict.RETRY
    assert idem.classify(a, common_pb2.INVALID_PRODUCER_EPOCH, False) is Verdict.FAIL
    txn = IdempotenceState(transactional=True)
    txn.set_identity(ProducerIdentity(1, 0))
    c = _Batch()
    txn.assign(c)
    assert txn.classify(c, ooo, False) is Verdict.FAIL  # a transaction aborts instead of bumping


def test_unknown_producer_behind_an_unacknowledged_batch_is_retried() -> None:
    """A pipelined second batch that reaches a partition before the first one (no state of
    the producer there yet) is answered UNKNOWN_PRODUCER_ID: retried, not a bump (or, in a
    transaction, an abort) while the first batch is unanswered."""
    unknown = common_pb2.UNKNOWN_PRODUCER_ID
    for transactional, head_verdict in ((False, Verdict.BUMP), (True, Verdict.FAIL)):
        idem = IdempotenceState(transactional=transactional)
        idem.set_identity(ProducerIdentity(1, 0))
        a, b = _Batch(), _Batch()
        idem.assign(a)
        idem.assign(b)
        assert idem.classify(b, unknown, retriable=False) is Verdict.RETRY
        assert idem.classify(a, unknown, retriable=False) is head_verdict
        idem.on_acked(a)
        assert idem.classify(b, unknown, retriable=False) is head_verdict  # nothing earlier: state lost


def test_bump_resequences_queued_batches_and_returns_the_unknown_ones() -> None:
    idem = IdempotenceState()
    idem.set_identity(ProducerIdentity(1, 0))
    a, b, c = _Batch(), _Batch(), _Batch()
    for batch in (a, b):
        idem.assign(batch)
    a.outcome_unknown = True
    idem.begin_bump("lost state")
    assert not idem.ready
    unknown = idem.complete_bump(ProducerIdentity(1, 1), [a, b, c])
    assert unknown == [a]
    assert idem.ready and b.base_sequence == -1 and c.base_sequence == -1
    idem.assign(b)
    assert (b.producer_epoch, b.base_sequence) == (1, 0)


def test_a_sequenced_batch_failing_for_good_requests_a_bump() -> None:
    idem = IdempotenceState()
    idem.set_identity(ProducerIdentity(1, 0))
    a = _Batch()
    idem.assign(a)
    idem.on_failed(a, "delivery timeout")
    assert idem.bump_reason == "delivery timeout"


# --- the producer against fake brokers -------------------------------------------------------
@pytest.fixture
def eos_cluster():
    state, brokers = start_fake_eos_cluster(1)
    try:
        yield state, brokers[0].address
    finally:
        for broker in brokers:
            broker.stop()


def _values(state, topic="t", partition=0) -> list[bytes]:
    return [r.value for r in state.records(topic, partition)]


def test_idempotence_is_on_by_default_with_acks_all(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0) as producer:
        assert producer.idempotent
        assert producer.send("t", b"a").result(5).offset == 0
        assert producer.producer_identity is not None
    with Producer(bootstrap, acks="1") as plain:
        assert not plain.idempotent
    assert state.logs[("t", 0)][0].base_sequence == 0 and state.logs[("t", 0)][0].producer_id >= 0


@pytest.mark.parametrize("how", ["timeout", "drop"])
def test_lost_acknowledgements_are_retried_and_deduplicated(eos_cluster, how) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=5, batch_bytes=100) as producer:
        producer.send("t", b"warm").result(5)
        state.lose_next_answers("t", 0, 3, how)
        futures = [producer.send("t", b"v%02d" % i) for i in range(20)]
        offsets = [f.result(10).offset for f in futures]
        metrics = producer.metrics()
    assert _values(state) == [b"warm"] + [b"v%02d" % i for i in range(20)]
    assert offsets == list(range(1, 21))
    assert metrics["batch_retries"] >= 1 and metrics["records_failed"] == 0


def test_order_is_kept_across_retries_with_five_batches_in_flight(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=5, batch_bytes=100, max_in_flight=5) as producer:
        producer.send("t", b"warm").result(5)
        state.hold_produce("t", 0)  # let several batches queue up in flight, then fail the first
        state.fail_next_produce("t", 0, common_pb2.NOT_LEADER_OR_FOLLOWER)
        futures = [producer.send("t", b"v%02d" % i) for i in range(40)]
        with state.lock:  # five requests parked at the partition: all five in flight at once
            assert state.lock.wait_for(lambda: state.held_requests == 5, timeout=5)
        assert producer.metrics()["in_flight_batches"] == 5
        state.release_produce("t", 0)
        offsets = [f.result(10).offset for f in futures]
    assert _values(state) == [b"warm"] + [b"v%02d" % i for i in range(40)]
    assert offsets == list(range(1, 41))


def test_lost_producer_state_bumps_the_epoch_and_restarts_sequences(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=5) as producer:
        producer.send("t", b"a").result(5)
        pid, epoch = producer.producer_identity
        state.forget_producers("t", 0)          # e.g. expired: the next batch (seq 1) is refused
        assert producer.send("t", b"b").result(5).offset == 1
        assert producer.producer_identity == (pid, epoch + 1)
        assert producer.metrics()["epoch_bumps"] == 1
    last = state.logs[("t", 0)][-1]
    assert (last.producer_epoch, last.base_sequence) == (epoch + 1, 0)
    bump = state.init_producer_id_calls[-1]
    assert (bump.producer_id, bump.producer_epoch) == (pid, epoch)
    assert _values(state) == [b"a", b"b"]


def test_a_batch_of_unknown_outcome_is_failed_not_resent_under_a_new_epoch(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=50) as producer:
        producer.send("t", b"a").result(5)
        state.lose_next_answers("t", 0, 1, "timeout")  # b is written, its answer lost ...
        state.forget_producers("t", 0, after_next_append=True)  # ... then the partition forgets the producer
        future = producer.send("t", b"b")
        with pytest.raises(client_errors.OutcomeUnknownError) as info:
            future.result(5)
        assert info.value.outcome_unknown
        assert producer.send("t", b"c").result(5).offset == 2  # the producer goes on under a new epoch
    assert _values(state) == [b"a", b"b", b"c"]


def test_fenced_epoch_is_fatal_for_the_producer(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0) as producer:
        producer.send("t", b"a").result(5)
        state.fail_next_produce("t", 0, common_pb2.INVALID_PRODUCER_EPOCH)
        with pytest.raises(client_errors.FatalError) as info:
            producer.send("t", b"b").result(5)
        assert info.value.code == common_pb2.INVALID_PRODUCER_EPOCH
        with pytest.raises(client_errors.FatalError):
            producer.send("t", b"c")
    assert _values(state) == [b"a"]


def test_delivery_timeout_with_unknown_outcome_has_its_own_error_type(eos_cluster) -> None:
    state, bootstrap = eos_cluster
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0, retry_backoff_ms=20, delivery_timeout_ms=300) as producer:
        producer.send("t", b"a").result(5)
        state.lose_next_answers("t", 0, 1000, "timeout")
        with pytest.raises(client_errors.DeliveryOutcomeUnknownError) as info:
            producer.send("t", b"b").result(5)
        assert isinstance(info.value, client_errors.DeliveryTimeoutError) and info.value.outcome_unknown
        state.lose_next_answers("t", 0, 0)
        state.lost_answers[("t", 0)].clear()
        # the gap left by the failed batch needs a new epoch; then sending goes on
        assert producer.send("t", b"c").result(5).offset >= 2
    values = _values(state)
    assert values.count(b"b") == 1 and values[-1] == b"c"


def test_required_idempotence_against_a_cluster_without_it_fails_clearly(fake_cluster) -> None:
    state, _brokers, bootstrap = fake_cluster  # plain fakes: no Transactions service
    state.create_topic("t", 1)
    with Producer(bootstrap, linger_ms=0, enable_idempotence=True) as producer:
        with pytest.raises(UnsupportedByClusterError):
            producer.send("t", b"a").result(5)
    with Producer(bootstrap, linger_ms=0) as auto:  # the default falls back, with a warning
        assert auto.send("t", b"b").result(5).offset == 0
        assert not auto.idempotent


def test_config_rules() -> None:
    with pytest.raises(client_errors.ConfigError):
        Producer("127.0.0.1:1", acks="1", enable_idempotence=True)
    with pytest.raises(client_errors.ConfigError):
        Producer("127.0.0.1:1", transactional_id="x", enable_idempotence=False)
    with pytest.raises(client_errors.ConfigError):
        Producer("127.0.0.1:1", enable_idempotence=True, max_in_flight=6)
