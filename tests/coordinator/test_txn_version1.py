"""Transaction version 1 (classic Kafka clients: librdkafka, kafka-python): EndTxn keeps the
producer epoch and the markers carry it, while InitProducerId, fences and timeouts still bump
(zombie fencing holds); the version is stored with the id and survives a coordinator reload.
Pure core only (the real-client tests are tests/cluster/test_kafka_transactions.py)."""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from semel.coordinator import txn_wire  # noqa: E402
from semel.coordinator.txn_coordinator import AppendRecords, Reply, TxnCoordinator  # noqa: E402
from semel.coordinator.txn_log import CorruptTxnLogError, decode_records, decode_value, encode_value, from_proto, to_proto  # noqa: E402
from semel.coordinator.txn_markers import MarkerSend  # noqa: E402
from semel.coordinator.txn_state import (  # noqa: E402
    CLIENT_EPOCH_MAX,
    BumpReason,
    MarkerRequest,
    NextAdd,
    TransactionMetadata,
    TxnState,
    TxnVersion,
    check_metadata,
)
from semel.v1 import txn_pb2  # noqa: E402
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
V1, V2 = TxnVersion.V1, TxnVersion.V2


def _markers(m, tid: str = "t") -> set[tuple[int, int, bool]]:
    return {(mk.producer_id, mk.producer_epoch, mk.commit) for mk in m.marker_plan(tid)}


@pytest.mark.parametrize("commit_txn", [True, False])
def test_v1_end_txn_keeps_the_epoch_and_markers_carry_it(commit_txn):
    m = machine()
    ident = init(m, txn_version=V1)
    assert m.metadata("t").txn_version is V1
    begin(m, ident, parts=tps("a0", "b0"))
    assert end(m, ident, commit_txn) == ident, "the next transaction runs under the same identity"
    meta = m.metadata("t")
    assert meta.state is (S.PREPARE_COMMIT if commit_txn else S.PREPARE_ABORT)
    assert (meta.producer_id, meta.producer_epoch) == (meta.prev_producer_id, meta.last_producer_epoch) == ident
    assert m.marker_plan("t") == tuple(
        MarkerRequest("t", tp, commit_txn, *ident, COORDINATOR_EPOCH) for tp in tps("a0", "b0"))
    # A retried EndTxn (the answer was lost) is answered idempotently; a decision never flips.
    retry = m.end_txn("t", *ident, commit_txn, 1)
    assert retry.ok and retry.pending is None and (retry.producer_id, retry.producer_epoch) == ident
    assert m.end_txn("t", *ident, not commit_txn, 1).error == ErrorCode.INVALID_TXN_STATE
    finish_markers(m)
    assert m.end_txn("t", *ident, commit_txn, 2).ok
    assert m.end_txn("t", *ident, not commit_txn, 2).error == ErrorCode.INVALID_TXN_STATE


def test_v1_producer_runs_many_transactions_on_one_epoch():
    m = machine()
    ident = init(m, txn_version=V1)
    for i in range(6):
        begin(m, ident, parts=tps("a0", "b1")[: 1 + i % 2], now_ms=10 * i)
        commit_txn = i % 3 != 2
        assert end(m, ident, commit_txn, now_ms=10 * i + 1) == ident
        assert _markers(m) == {(*ident, commit_txn)}
        finish_markers(m, now_ms=10 * i + 2)
        assert m.metadata("t").state is (S.COMPLETE_COMMIT if commit_txn else S.COMPLETE_ABORT)
        assert m.verify("t", *ident, tps("a0")).partitions == ((tps("a0")[0], ErrorCode.INVALID_TXN_STATE),)
    # the V2 rule for comparison: every end bumps
    m2 = machine()
    ident2 = init(m2)
    begin(m2, ident2)
    assert end(m2, ident2) == (ident2[0], ident2[1] + 1)
    assert _markers(m2) == {(ident2[0], ident2[1] + 1, True)}


def test_v1_next_transaction_started_while_markers_are_written_joins_the_complete_write():
    m = machine()
    ident = init(m, txn_version=V1)
    begin(m, ident, parts=tps("a0"))
    end(m, ident)
    assert m.add_partitions("t", *ident, tps("b0"), 1).error == ErrorCode.CONCURRENT_TRANSACTIONS
    r = m.complete_markers("t", 2, NextAdd(*ident, tps("b0")))
    assert r.pending is not None and r.pending.path == (S.COMPLETE_COMMIT, S.ONGOING)
    commit(m, r)
    meta = m.metadata("t")
    assert meta.state is S.ONGOING and meta.partitions == tps("b0") and (meta.producer_id, meta.producer_epoch) == ident
    assert end(m, ident, now_ms=3) == ident


def test_v1_zombie_is_fenced_by_a_new_instance():
    m = machine()
    old = init(m, txn_version=V1)
    begin(m, old)
    end(m, old)
    finish_markers(m)
    new = init(m, txn_version=V1)  # a second producer with the same transactional.id
    assert new == (old[0], old[1] + 1)
    for result in (m.add_partitions("t", *old, tps("a0"), 0), m.end_txn("t", *old, True, 0),
                   m.add_offsets("t", *old, "g", 4, 0)):
        assert result.error == ErrorCode.PRODUCER_FENCED, result
    assert m.verify("t", *old, tps("a0")).error == ErrorCode.PRODUCER_FENCED
    # ... and stays fenced once the new instance ran a (non-bumping) transaction of its own
    begin(m, new)
    end(m, new)
    finish_markers(m)
    assert m.add_partitions("t", *old, tps("a0"), 0).error == ErrorCode.PRODUCER_FENCED
    assert m.end_txn("t", *old, True, 0).error == ErrorCode.PRODUCER_FENCED


def test_v1_open_transaction_of_a_zombie_is_aborted_with_a_bumped_epoch():
    m = machine()
    old = init(m, txn_version=V1)
    begin(m, old, parts=tps("a0", "b1"))
    r = m.init_producer_id("t", TIMEOUT_MS, 5, txn_version=V1)
    assert r.error == ErrorCode.CONCURRENT_TRANSACTIONS
    commit(m, r)
    meta = m.metadata("t")
    assert meta.state is S.PREPARE_ABORT and meta.bump_reason is BumpReason.FENCE
    # the abort markers carry epoch + 1: the zombie's late writes at its epoch are refused by the
    # partitions, and the zombie itself is fenced at the coordinator
    assert _markers(m) == {(old[0], old[1] + 1, False)}
    assert m.end_txn("t", *old, True, 6).error == ErrorCode.PRODUCER_FENCED
    finish_markers(m)
    new = init(m, now_ms=7, txn_version=V1)
    assert new == (old[0], old[1] + 2)
    begin(m, new)
    assert end(m, new) == new


def test_v1_timeout_bumps_and_tells_the_producer_why():
    m = machine()
    ident = init(m, txn_version=V1)
    begin(m, ident, now_ms=1000)
    m.observe_monotonic(1000)
    commit(m, m.abort_timed_out("t", 1001 + TIMEOUT_MS, 1001 + TIMEOUT_MS))
    assert _markers(m) == {(ident[0], ident[1] + 1, False)}
    assert m.end_txn("t", *ident, True, 0).error == ErrorCode.TRANSACTION_TIMED_OUT
    finish_markers(m)
    assert init(m, txn_version=V1) == (ident[0], ident[1] + 2)


def test_the_version_is_chosen_by_each_init_and_a_fence_keeps_the_fenced_ones():
    m = machine()
    grpc_ident = init(m)
    assert m.metadata("t").txn_version is V2
    kafka_ident = init(m, txn_version=V1)
    assert m.metadata("t").txn_version is V1
    begin(m, kafka_ident)
    commit(m, m.init_producer_id("t", TIMEOUT_MS, 0))  # a gRPC producer fences the Kafka one
    assert m.metadata("t").txn_version is V1, "the fenced transaction keeps its version"
    finish_markers(m)
    again = init(m)
    assert m.metadata("t").txn_version is V2 and again == (grpc_ident[0], grpc_ident[1] + 3)
    begin(m, again)
    assert end(m, again) == (again[0], again[1] + 1)


def test_v1_epoch_exhaustion_on_init_moves_to_a_fresh_producer_id():
    ids = ProducerIds(first=500)
    meta = TransactionMetadata("t", 77, CLIENT_EPOCH_MAX, 77, CLIENT_EPOCH_MAX - 1, TIMEOUT_MS, S.EMPTY, (), -1, 0,
                               BumpReason.INIT, V1)
    m = machine(ids, loaded=[meta])
    begin(m, (77, CLIENT_EPOCH_MAX))
    assert end(m, (77, CLIENT_EPOCH_MAX)) == (77, CLIENT_EPOCH_MAX), "V1 EndTxn never exhausts epochs"
    assert _markers(m) == {(77, CLIENT_EPOCH_MAX, True)}
    finish_markers(m)
    assert init(m, ident=(77, CLIENT_EPOCH_MAX), txn_version=V1) == (500, 0)


def test_the_version_survives_the_log_and_a_reload():
    m = machine()
    ident = init(m, txn_version=V1)
    begin(m, ident, parts=tps("a0"))
    end(m, ident)
    stored = m.metadata("t")
    assert to_proto(stored).transaction_version == txn_pb2.TRANSACTION_VERSION_1
    reloaded = decode_value("t", encode_value(stored))
    assert reloaded == stored
    m2 = machine(loaded=[reloaded])  # a new coordinator re-sends the markers with the same epoch
    assert m2.marker_plan("t") == m.marker_plan("t")
    finish_markers(m2)
    begin(m2, ident, parts=tps("b0"))
    assert end(m2, ident) == ident
    # a record written before the field existed reads as V2 (every such id came over gRPC)
    grpc_machine = machine()
    init(grpc_machine)
    old_record = to_proto(grpc_machine.metadata("t"))
    old_record.ClearField("transaction_version")
    assert from_proto(old_record).txn_version is V2
    v1_record = to_proto(stored)
    v1_record.ClearField("transaction_version")  # a V1 EndTxn record read as V2 breaks the invariant
    with pytest.raises(CorruptTxnLogError):
        from_proto(v1_record)


def test_an_end_txn_that_bumped_under_v1_or_kept_under_v2_breaks_the_invariant():
    m = machine()
    ident = init(m, txn_version=V1)
    begin(m, ident)
    end(m, ident)
    v1_meta = m.metadata("t")
    check_metadata(v1_meta)
    with pytest.raises(AssertionError):
        check_metadata(dataclasses.replace(v1_meta, txn_version=V2))
    with pytest.raises(AssertionError):
        check_metadata(dataclasses.replace(v1_meta, producer_epoch=v1_meta.producer_epoch + 1))


def test_coordinator_core_v1_round_trip_and_failover():
    c = TxnCoordinator(1, ProducerIds(), scan_interval_ms=100)
    c.loaded(0, 5, [])
    append = c.init_producer_id(1, "t", TIMEOUT_MS, 0, txn_version=V1)
    (entry,) = decode_records(append[0].batch)
    assert entry.metadata.txn_version is V1
    reply = c.write_committed(append[0].write_id, 0)[0]
    assert isinstance(reply, Reply)
    ident = txn_wire.identity_of(reply.result, reply.completed)
    append = c.add_partitions(2, "t", *ident, tps("a0"), 0)
    c.write_committed(append[0].write_id, 0)
    append = c.end_txn(3, "t", *ident, True, 0)
    assert isinstance(append[0], AppendRecords)
    reply = c.write_committed(append[0].write_id, 0)[0]
    assert txn_wire.identity_of(reply.result, reply.completed) == ident
    # failover before the markers were written: the new coordinator (epoch 6) re-sends them with
    # the unchanged producer epoch and its own coordinator epoch
    state = c.machine(0).snapshot()
    c2 = TxnCoordinator(1, ProducerIds(first=5000), scan_interval_ms=100)
    c2.loaded(0, 6, [decode_value("t", encode_value(meta)) for meta in state.values()])
    (send,) = [a for a in c2.tick(10, lambda tp: 1, 10) if isinstance(a, MarkerSend)]
    assert [(mk.producer_id, mk.producer_epoch, mk.coordinator_epoch, mk.commit) for mk in send.markers] == [
        (*ident, 6, True)]
    done = c2.marker_response(send, {(ident[0], tps("a0")[0]): ErrorCode.NONE}, 11, 11)
    c2.write_committed(done[0].write_id, 12)
    assert c2.machine(0).metadata("t").state is S.COMPLETE_COMMIT
    assert c2.machine(0).metadata("t").txn_version is V1
