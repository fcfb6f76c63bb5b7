"""Protobuf <-> core conversions for the transaction services, for the gRPC edge only.

Pure functions: the broker's servicers call the state machine, the marker channel and
these helpers; nothing here blocks or keeps state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

from semel.coordinator.txn_markers import MarkerSend
from semel.coordinator.txn_state import (
    BumpReason,
    PendingTransition,
    TransactionMetadata,
    TxnResult,
    TxnState,
    TxnVersion,
    VerifyResult,
)
from semel.sentinels import NO_PRODUCER_EPOCH, NO_PRODUCER_ID
from semel.storage.producer_state import ProducerInfo
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2, txn_pb2
from semel.v1.common_pb2 import ErrorCode


def state_to_proto(state: TxnState) -> txn_pb2.TransactionState:
    # TxnState's values are the wire numbers (test_enums_are_the_wire_numbers); the generated
    # stub types the wire enum as its own int subclass, which a plain int is not.
    return cast(txn_pb2.TransactionState, state.value)


def bump_reason_to_proto(reason: BumpReason) -> txn_pb2.EpochBumpReason:
    # As state_to_proto: BumpReason's values are EpochBumpReason's numbers.
    return cast(txn_pb2.EpochBumpReason, reason.value)


def txn_version_to_proto(version: TxnVersion) -> txn_pb2.TransactionVersion:
    # As state_to_proto: TxnVersion's values are TransactionVersion's numbers.
    return cast(txn_pb2.TransactionVersion, version.value)


def txn_version_from_proto(value: int) -> TxnVersion:
    """UNSPECIFIED (a record written before the field existed: a gRPC client's id) is V2;
    an unknown number raises ValueError (a corrupt record)."""
    return TxnVersion.V2 if value == txn_pb2.TRANSACTION_VERSION_UNSPECIFIED else TxnVersion(value)


def partitions_from_proto(items: Iterable[txn_pb2.TopicPartition]) -> tuple[TopicPartition, ...]:
    return tuple(TopicPartition(p.topic, p.partition) for p in items)


def partitions_to_proto(items: Iterable[TopicPartition]) -> list[txn_pb2.TopicPartition]:
    return [txn_pb2.TopicPartition(topic=tp.topic, partition=tp.partition) for tp in items]


def identity_of(result: TxnResult, completed: PendingTransition | None = None) -> tuple[int, int]:
    """The (producer id, epoch) to answer: from the completed write, else from the result."""
    if completed is not None:
        pid, epoch = completed.answer
        return int(pid), int(epoch)
    if result.producer_id != NO_PRODUCER_ID:
        return result.producer_id, result.producer_epoch
    return NO_PRODUCER_ID, NO_PRODUCER_EPOCH


def init_producer_id_response(
    result: TxnResult, completed: PendingTransition | None = None
) -> txn_pb2.InitProducerIdResponse:
    """`completed`: the pending transition of `result` once its write is committed."""
    pid, epoch = identity_of(result, completed) if result.ok else (NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
    return txn_pb2.InitProducerIdResponse(
        error_code=result.error, error_message=result.message, producer_id=pid, producer_epoch=epoch
    )


def end_txn_response(result: TxnResult, completed: PendingTransition | None = None) -> txn_pb2.EndTxnResponse:
    pid, epoch = identity_of(result, completed) if result.ok else (NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
    return txn_pb2.EndTxnResponse(error_code=result.error, error_message=result.message, producer_id=pid, producer_epoch=epoch)


def add_partitions_response(
    result: TxnResult, partitions: Iterable[TopicPartition], per_partition: Mapping[TopicPartition, ErrorCode] | None = None
) -> txn_pb2.AddPartitionsToTxnResponse:
    """Every partition gets the request's error unless `per_partition` names its own
    (e.g. UNKNOWN_TOPIC_OR_PARTITION found by the shell before asking the core)."""
    codes = per_partition or {}
    return txn_pb2.AddPartitionsToTxnResponse(
        error_code=result.error,
        error_message=result.message,
        results=[
            txn_pb2.AddPartitionsResult(topic=tp.topic, partition=tp.partition, error_code=codes.get(tp, result.error))
            for tp in partitions
        ],
    )


def verify_response(result: VerifyResult) -> txn_pb2.VerifyTransactionResponse:
    return txn_pb2.VerifyTransactionResponse(
        error_code=result.error,
        error_message=result.message,
        results=[
            txn_pb2.AddPartitionsResult(topic=tp.topic, partition=tp.partition, error_code=code)
            for tp, code in result.partitions
        ],
    )


def describe(
    transactional_id: str, meta: TransactionMetadata | None, error: ErrorCode = ErrorCode.NONE
) -> txn_pb2.TransactionDescription:
    if meta is None:
        code = error if error != ErrorCode.NONE else ErrorCode.TRANSACTIONAL_ID_NOT_FOUND
        return txn_pb2.TransactionDescription(transactional_id=transactional_id, error_code=code)
    return txn_pb2.TransactionDescription(
        transactional_id=transactional_id,
        error_code=ErrorCode.NONE,
        state=state_to_proto(meta.state),
        producer_id=meta.producer_id,
        producer_epoch=meta.producer_epoch,
        transaction_timeout_ms=meta.timeout_ms,
        transaction_start_time_ms=meta.txn_start_ms,
        partitions=partitions_to_proto(meta.partitions),
        last_bump_reason=bump_reason_to_proto(meta.bump_reason),
        transaction_version=txn_version_to_proto(meta.txn_version),
    )


def listing(meta: TransactionMetadata) -> txn_pb2.TransactionListing:
    return txn_pb2.TransactionListing(
        transactional_id=meta.transactional_id, producer_id=meta.producer_id, state=state_to_proto(meta.state)
    )


def write_markers_request(send: MarkerSend) -> txn_pb2.WriteTxnMarkersRequest:
    """One TxnMarker per transaction decision, its partitions in request order."""
    grouped: dict[tuple[str, int, int, bool, int], list[TopicPartition]] = {}
    for mk in send.markers:
        key = (mk.transactional_id, mk.producer_id, mk.producer_epoch, mk.commit, mk.coordinator_epoch)
        grouped.setdefault(key, []).append(mk.topic_partition)
    return txn_pb2.WriteTxnMarkersRequest(
        markers=[
            txn_pb2.TxnMarker(
                transactional_id=tid,
                producer_id=pid,
                producer_epoch=epoch,
                type=common_pb2.COMMIT if commit else common_pb2.ABORT,
                coordinator_epoch=coordinator_epoch,
                partitions=partitions_to_proto(tps),
            )
            for (tid, pid, epoch, commit, coordinator_epoch), tps in grouped.items()
        ]
    )


def write_markers_results(response: txn_pb2.WriteTxnMarkersResponse) -> dict[tuple[int, TopicPartition], ErrorCode]:
    """The answers keyed as `TxnMarkerChannel.on_response` wants them."""
    return {
        (marker.producer_id, TopicPartition(p.topic, p.partition)): p.error_code
        for marker in response.markers
        for p in marker.partitions
    }


def describe_producers_response(producers: Iterable[ProducerInfo]) -> txn_pb2.DescribeProducersResponse:
    """KIP-664 DescribeProducers from the partition leader's producer state."""
    return txn_pb2.DescribeProducersResponse(
        error_code=ErrorCode.NONE,
        producers=[
            txn_pb2.ProducerStateDescription(
                producer_id=p.producer_id,
                producer_epoch=p.producer_epoch,
                last_sequence=p.last_sequence,
                last_timestamp_ms=p.last_timestamp_ms,
                coordinator_epoch=p.coordinator_epoch,
                current_txn_start_offset=-1 if p.txn_first_offset is None else p.txn_first_offset,
            )
            for p in producers
        ],
    )
