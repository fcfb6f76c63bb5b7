"""Semel's `ErrorCode` (proto/semel/v1/common.proto) to Kafka's error numbers: one table.

Every Semel code appears exactly once (a test checks the table covers the enum). Where Kafka
has the same error the name matches; the few Semel-only codes map to the Kafka code whose
client behaviour fits (retriable stays retriable, fatal stays fatal), with the reason beside.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode as K
from semel.v1.common_pb2 import ErrorCode as S

TO_KAFKA: dict[int, K] = {
    S.NONE: K.none,
    S.UNKNOWN_SERVER_ERROR: K.unknown_server_error,
    S.CORRUPT_MESSAGE: K.corrupt_message,
    S.UNKNOWN_TOPIC_OR_PARTITION: K.unknown_topic_or_partition,
    S.INVALID_REQUEST: K.invalid_request,
    S.OFFSET_OUT_OF_RANGE: K.offset_out_of_range,
    S.NOT_LEADER_OR_FOLLOWER: K.not_leader_or_follower,
    S.REQUEST_TIMED_OUT: K.request_timed_out,
    S.RECORD_BATCH_TOO_LARGE: K.message_too_large,
    S.REQUEST_TOO_LARGE: K.record_list_too_large,
    S.NOT_ENOUGH_REPLICAS: K.not_enough_replicas,
    S.NOT_ENOUGH_REPLICAS_AFTER_APPEND: K.not_enough_replicas_after_append,
    S.INVALID_PRODUCER_EPOCH: K.invalid_producer_epoch,
    S.OUT_OF_ORDER_SEQUENCE: K.out_of_order_sequence_number,
    S.DUPLICATE_SEQUENCE_NUMBER: K.duplicate_sequence_number,
    S.UNKNOWN_PRODUCER_ID: K.unknown_producer_id,
    S.PRODUCER_FENCED: K.producer_fenced,
    S.INVALID_TXN_STATE: K.invalid_txn_state,
    S.CONCURRENT_TRANSACTIONS: K.concurrent_transactions,
    S.TRANSACTION_COORDINATOR_FENCED: K.transaction_coordinator_fenced,
    S.NOT_COORDINATOR: K.not_coordinator,
    S.COORDINATOR_NOT_AVAILABLE: K.coordinator_not_available,
    S.COORDINATOR_LOAD_IN_PROGRESS: K.coordinator_load_in_progress,
    S.INVALID_TRANSACTION_TIMEOUT: K.invalid_transaction_timeout,
    S.TRANSACTIONAL_ID_NOT_FOUND: K.transactional_id_not_found,
    S.INVALID_PRODUCER_ID_MAPPING: K.invalid_producer_id_mapping,
    # Kafka fences a timed-out transaction's producer the same way (abortable by a new epoch)
    S.TRANSACTION_TIMED_OUT: K.invalid_producer_epoch,
    S.TOPIC_ALREADY_EXISTS: K.topic_already_exists,
    S.INVALID_PARTITIONS: K.invalid_partitions,
    S.INVALID_REPLICATION_FACTOR: K.invalid_replication_factor,
    S.INVALID_TOPIC_NAME: K.invalid_topic_exception,
    S.INVALID_CONFIG: K.invalid_config,
    S.LEADER_NOT_AVAILABLE: K.leader_not_available,
    S.FENCED_LEADER_EPOCH: K.fenced_leader_epoch,
    S.UNKNOWN_LEADER_EPOCH: K.unknown_leader_epoch,
    S.STORAGE_ERROR: K.kafka_storage_error,
    # no metadata quorum: Kafka answers a controller it cannot reach with a (retriable) timeout
    S.METADATA_QUORUM_UNAVAILABLE: K.request_timed_out,
    S.BROKER_NOT_AVAILABLE: K.broker_not_available,
    S.INVALID_RECORD: K.invalid_record,
    S.UNKNOWN_MEMBER_ID: K.unknown_member_id,
    S.FENCED_MEMBER_EPOCH: K.fenced_member_epoch,
    S.REBALANCE_IN_PROGRESS: K.rebalance_in_progress,
    S.UNSTABLE_OFFSET_COMMIT: K.unstable_offset_commit,
    S.GROUP_ID_NOT_FOUND: K.group_id_not_found,
    S.INVALID_GROUP_ID: K.invalid_group_id,
    S.OFFSET_METADATA_TOO_LARGE: K.offset_metadata_too_large,
    S.TRANSACTION_ABORTABLE: K.transaction_abortable,
    # a bound was reached (Semel refuses, nothing was written): Kafka has no such code; a
    # retriable timeout makes clients back off and retry, which is what the bound asks for
    S.RESOURCE_EXHAUSTED: K.request_timed_out,
    S.INVALID_TIMESTAMP: K.invalid_timestamp,
    S.STALE_BROKER_EPOCH: K.stale_broker_epoch,
    S.STALE_PARTITION_EPOCH: K.invalid_update_version,
    S.REPLICA_NOT_AVAILABLE: K.replica_not_available,
    # the partition's producer table is full of open transactions: retriable later, as above
    S.TOO_MANY_PRODUCERS: K.request_timed_out,
    S.STALE_MEMBER_EPOCH: K.stale_member_epoch,
    S.NON_EMPTY_GROUP: K.non_empty_group,
    S.GROUP_MAX_SIZE_REACHED: K.group_max_size_reached,
    S.TOPIC_AUTHORIZATION_FAILED: K.topic_authorization_failed,
    S.GROUP_AUTHORIZATION_FAILED: K.group_authorization_failed,
    S.CLUSTER_AUTHORIZATION_FAILED: K.cluster_authorization_failed,
    S.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: K.transactional_id_authorization_failed,
    S.POLICY_VIOLATION: K.policy_violation,
}


def to_kafka(code: int) -> K:
    """Kafka's error for a Semel `ErrorCode` value (an unknown value is a server error)."""
    return TO_KAFKA.get(code, K.unknown_server_error)


# KIP-588: requests older than these versions predate PRODUCER_FENCED; Kafka answers them
# INVALID_PRODUCER_EPOCH, which those clients treat the same way (fenced: fatal).
PRODUCER_FENCED_SINCE_VERSION: dict[int, int] = {
    22: 4,  # InitProducerId
    24: 2,  # AddPartitionsToTxn
    25: 2,  # AddOffsetsToTxn
    26: 2,  # EndTxn
    28: 3,  # TxnOffsetCommit
}


def to_kafka_txn(code: int, api_key: int, api_version: int) -> K:
    """`to_kafka` for a transaction API's answer in the client's request version."""
    kafka = to_kafka(code)
    if kafka is K.producer_fenced and api_version < PRODUCER_FENCED_SINCE_VERSION.get(api_key, 0):
        return K.invalid_producer_epoch
    return kafka
