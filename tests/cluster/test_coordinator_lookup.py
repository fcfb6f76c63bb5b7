"""FindCoordinator answered from a metadata image."""

from __future__ import annotations

from semel.cluster.broker.coordinator_lookup import find_coordinator
from semel.cluster.metadata.state import (
    NO_LEADER,
    BrokerRegistration,
    MetadataImage,
    PartitionState,
    Topic,
    TopicConfig,
)
from semel.internal_topics import (
    CONSUMER_OFFSETS_TOPIC,
    TRANSACTION_STATE_TOPIC,
    coordinator_partition,
)
from semel.v1 import txn_pb2
from semel.v1.common_pb2 import ErrorCode


def image(leader: int = 2, fenced: bool = False, with_topics: bool = True) -> MetadataImage:
    brokers = {
        i: BrokerRegistration(i, f"inc{i}", "127.0.0.1", 9090 + i, None, 5, fenced and i == leader, 1) for i in (1, 2)
    }
    topics = {}
    if with_topics:
        for name in (TRANSACTION_STATE_TOPIC, CONSUMER_OFFSETS_TOPIC):
            parts = tuple(PartitionState(name, p, (1, 2), (1, 2), leader, 9, 3) for p in range(4))
            topics[name] = Topic(name, f"id-{name}", True, 2, TopicConfig(), parts)
    return MetadataImage(version=10, brokers=brokers, topics=topics)


def test_find_coordinator_answers_the_leader_of_the_keys_partition():
    for key_type in (txn_pb2.TRANSACTION, txn_pb2.GROUP):
        r = find_coordinator(image(), "my-id", key_type)
        assert (r.error_code, r.broker_id, r.host, r.port) == (ErrorCode.NONE, 2, "127.0.0.1", 9092)
        assert r.coordinator_partition == coordinator_partition("my-id", 4) and r.coordinator_epoch == 9


def test_find_coordinator_errors():
    assert find_coordinator(image(with_topics=False), "k", txn_pb2.TRANSACTION).error_code == (
        ErrorCode.COORDINATOR_NOT_AVAILABLE
    )
    assert find_coordinator(image(leader=NO_LEADER), "k", txn_pb2.TRANSACTION).error_code == (
        ErrorCode.COORDINATOR_NOT_AVAILABLE
    )
    assert find_coordinator(image(fenced=True), "k", txn_pb2.TRANSACTION).error_code == (
        ErrorCode.COORDINATOR_NOT_AVAILABLE
    )
    bad = find_coordinator(image(), "", txn_pb2.GROUP)
    assert bad.error_code == ErrorCode.INVALID_REQUEST and bad.broker_id == -1
