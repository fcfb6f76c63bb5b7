"""Conversions at the gRPC edge of the transaction services."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from semel.coordinator import txn_wire  # noqa: E402
from semel.coordinator.txn_markers import MarkerSend  # noqa: E402
from semel.coordinator.txn_state import MarkerRequest, TxnState  # noqa: E402
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2, txn_pb2  # noqa: E402
from semel.v1.common_pb2 import ErrorCode  # noqa: E402

from tests.coordinator.txn_helpers import begin, commit, end, init, machine, tps  # noqa: E402


def test_init_and_end_responses_carry_the_identity_after_the_write():
    m = machine()
    r = m.init_producer_id("t", 1000, 0)
    commit(m, r)
    resp = txn_wire.init_producer_id_response(r, r.pending)
    assert (resp.error_code, resp.producer_id, resp.producer_epoch) == (ErrorCode.NONE, 1000, 0)
    begin(m, (1000, 0))
    e = m.end_txn("t", 1000, 0, True, 0)
    commit(m, e)
    assert txn_wire.end_txn_response(e, e.pending).producer_epoch == 1
    retry = m.end_txn("t", 1000, 0, True, 0)
    assert (txn_wire.end_txn_response(retry).producer_id, txn_wire.end_txn_response(retry).producer_epoch) == (1000, 1)
    fenced = m.end_txn("t", 1000, 0, False, 0)
    resp = txn_wire.end_txn_response(fenced)
    assert resp.error_code == ErrorCode.INVALID_TXN_STATE and resp.producer_id == -1 and resp.error_message


def test_add_partitions_response_per_partition_codes():
    m = machine()
    ident = init(m)
    asked = tps("a0", "zz0")
    r = m.add_partitions("t", *ident, asked[:1], 0)
    resp = txn_wire.add_partitions_response(r, asked, {asked[1]: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION})
    assert [(x.topic, x.error_code) for x in resp.results] == [("a", 0), ("zz", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)]


def test_describe_listing_and_verify():
    m = machine()
    ident = init(m)
    begin(m, ident, parts=tps("a0", "b1"), now_ms=77)
    d = txn_wire.describe("t", m.metadata("t"))
    assert d.state == txn_pb2.ONGOING and d.transaction_start_time_ms == 77
    assert txn_wire.partitions_from_proto(d.partitions) == tps("a0", "b1")
    assert txn_wire.describe("nope", None).error_code == ErrorCode.TRANSACTIONAL_ID_NOT_FOUND
    assert txn_wire.describe("x", None, ErrorCode.NOT_COORDINATOR).error_code == ErrorCode.NOT_COORDINATOR
    assert txn_wire.listing(m.metadata("t")).state == txn_pb2.ONGOING
    v = txn_wire.verify_response(m.verify("t", *ident, tps("a0", "c0")))
    assert [(x.topic, x.error_code) for x in v.results] == [("a", ErrorCode.NONE), ("c", ErrorCode.INVALID_TXN_STATE)]
    end(m, ident, commit_txn=False)
    assert txn_wire.describe("t", m.metadata("t")).state == txn_pb2.PREPARE_ABORT


def test_marker_request_grouping_and_results():
    send = MarkerSend(1, 2, (
        MarkerRequest("x", TopicPartition("a", 0), True, 7, 3, 9),
        MarkerRequest("y", TopicPartition("a", 0), False, 8, 1, 9),
        MarkerRequest("x", TopicPartition("b", 1), True, 7, 3, 9),
    ))
    req = txn_wire.write_markers_request(send)
    assert [(mk.transactional_id, mk.producer_id, mk.type, len(mk.partitions)) for mk in req.markers] == [
        ("x", 7, common_pb2.COMMIT, 2), ("y", 8, common_pb2.ABORT, 1)
    ]
    resp = txn_pb2.WriteTxnMarkersResponse(markers=[
        txn_pb2.TxnMarkerResult(producer_id=mk.producer_id, partitions=[
            txn_pb2.TxnMarkerPartitionResult(topic=p.topic, partition=p.partition, error_code=ErrorCode.NONE)
            for p in mk.partitions
        ])
        for mk in req.markers
    ])
    results = txn_wire.write_markers_results(resp)
    assert results == {(m.producer_id, m.topic_partition): ErrorCode.NONE for m in send.markers}
    assert TxnState.PREPARE_ABORT.value == txn_pb2.PREPARE_ABORT


def test_describe_producers_from_producer_state():
    from semel.storage.producer_state import ProducerInfo

    resp = txn_wire.describe_producers_response([ProducerInfo(7, 2, 4, 100, 3, 50), ProducerInfo(8, 0, -1, 90, -1, None)])
    assert [(p.producer_id, p.current_txn_start_offset, p.coordinator_epoch) for p in resp.producers] == [
        (7, 50, 3), (8, -1, -1)
    ]
