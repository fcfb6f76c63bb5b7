"""FindCoordinator answered from the metadata image: any broker can (pure, no I/O)."""

from __future__ import annotations

from semel.cluster.metadata.state import NO_LEADER, MetadataImage
from semel.internal_topics import CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC
from semel.v1 import txn_pb2
from semel.v1.common_pb2 import ErrorCode


def find_coordinator(image: MetadataImage, key: str, key_type: txn_pb2.CoordinatorKeyType) -> txn_pb2.FindCoordinatorResponse:
    """The coordinator of `key`: the leader of its partition of the internal topic."""
    topic = CONSUMER_OFFSETS_TOPIC if key_type == txn_pb2.GROUP else TRANSACTION_STATE_TOPIC
    if not key:
        return _no_coordinator(ErrorCode.INVALID_REQUEST, "the key must not be empty")
    partition = image.coordinator(topic, key)
    if partition is None:
        return _no_coordinator(ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{topic} does not exist yet")
    broker = image.broker(partition.leader) if partition.leader != NO_LEADER else None
    if broker is None or broker.fenced:
        return _no_coordinator(
            ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{topic}-{partition.partition} has no live leader"
        )
    return txn_pb2.FindCoordinatorResponse(
        error_code=ErrorCode.NONE,
        broker_id=broker.broker_id,
        host=broker.host,
        port=broker.port,
        coordinator_partition=partition.partition,
        coordinator_epoch=partition.leader_epoch,
    )


def _no_coordinator(error: ErrorCode, message: str) -> txn_pb2.FindCoordinatorResponse:
    return txn_pb2.FindCoordinatorResponse(error_code=error, error_message=message, broker_id=-1)
