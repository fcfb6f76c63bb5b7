"""Coordinators from the metadata image (pure, no I/O): FindCoordinator, which any broker
answers, and `still_coordinates`, the check a coordinator makes on a freshly synced image.

A stale image names a stale coordinator. FindCoordinator therefore answers only when the
caller says the image is current (`metadata_current`: the broker's heartbeat lease, see
metadata_freshness.py); else COORDINATOR_NOT_AVAILABLE, and the client asks another broker.
The name is a hint either way: a coordinator confirms its epoch before any fatal answer."""

from __future__ import annotations

from semel.cluster.metadata.state import NO_LEADER, MetadataImage
from semel.internal_topics import CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC
from semel.v1 import txn_pb2
from semel.v1.common_pb2 import ErrorCode


def find_coordinator(image: MetadataImage, key: str, key_type: txn_pb2.CoordinatorKeyType,
                     *, metadata_current: bool) -> txn_pb2.FindCoordinatorResponse:
    """The coordinator of `key`: the leader of its partition of the internal topic."""
    if key_type not in (txn_pb2.GROUP, txn_pb2.TRANSACTION):
        return _no_coordinator(ErrorCode.INVALID_REQUEST, f"unknown key_type {key_type}")
    topic = CONSUMER_OFFSETS_TOPIC if key_type == txn_pb2.GROUP else TRANSACTION_STATE_TOPIC
    if not key:
        return _no_coordinator(ErrorCode.INVALID_REQUEST, "the key must not be empty")
    if not metadata_current:
        return _no_coordinator(ErrorCode.COORDINATOR_NOT_AVAILABLE, "this broker's metadata may be stale (no "
                               "current heartbeat lease with the controller); ask another broker")
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


def still_coordinates(image: MetadataImage, broker_id: int, broker_epoch: int, topic: str, partition: int,
                      coordinator_epoch: int) -> bool:
    """Per `image`: is `broker_id`, registered at `broker_epoch` and unfenced, the leader of
    `topic`-`partition` at leader epoch `coordinator_epoch` (the epoch its coordinator loaded)?"""
    reg = image.broker(broker_id)
    state = image.partition(topic, partition)
    return (reg is not None and reg.broker_epoch == broker_epoch and not reg.fenced and state is not None
            and state.leader == broker_id and state.leader_epoch == coordinator_epoch)
