"""FindCoordinator answered from a metadata image."""

from __future__ import annotations

from semel.cluster.broker.coordinator_lookup import find_coordinator, still_coordinates
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
        r = find_coordinator(image(), "my-id", key_type, metadata_current=True)
        assert (r.error_code, r.broker_id, r.host, r.port) == (ErrorCode.NONE, 2, "127.0.0.1", 9092)
        assert r.coordinator_partition == coordinator_partition("my-id", 4) and r.coordinator_epoch == 9


def test_find_coordinator_errors():
    assert find_coordinator(image(with_topics=False), "k", txn_pb2.TRANSACTION, metadata_current=True).error_code == (
        ErrorCode.COORDINATOR_NOT_AVAILABLE
    )
    assert find_coordinator(image(leader=NO_LEADER), "k", txn_pb2.TRANSACTION, metadata_current=True).error_code == (
        ErrorCode.COORDINATOR_NOT_AVAILABLE
    )
    assert find_coordinator(image(fenced=True), "k", txn_pb2.TRANSACTION, metadata_current=True).error_code == (
        ErrorCode.COORDINATOR_NOT_AVAILABLE
    )
    bad = find_coordinator(image(), "", txn_pb2.GROUP, metadata_current=True)
    assert bad.error_code == ErrorCode.INVALID_REQUEST and bad.broker_id == -1


def test_a_broker_whose_metadata_may_be_stale_names_no_coordinator():
    """Issue 20: an isolated broker kept naming itself; without a current heartbeat lease the
    broker says COORDINATOR_NOT_AVAILABLE (retriable: ask another broker)."""
    for key_type in (txn_pb2.TRANSACTION, txn_pb2.GROUP):
        r = find_coordinator(image(), "my-id", key_type, metadata_current=False)
        assert r.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE and r.broker_id == -1
        assert "stale" in r.error_message


def test_still_coordinates_needs_the_leadership_at_the_loaded_epoch_and_an_unfenced_registration():
    tp = coordinator_partition("my-id", 4)
    assert still_coordinates(image(), 2, 5, TRANSACTION_STATE_TOPIC, tp, 9)
    assert not still_coordinates(image(), 2, 5, TRANSACTION_STATE_TOPIC, tp, 8)  # a newer epoch exists
    assert not still_coordinates(image(), 1, 5, TRANSACTION_STATE_TOPIC, tp, 9)  # another broker leads
    assert not still_coordinates(image(), 2, 4, TRANSACTION_STATE_TOPIC, tp, 9)  # an older registration
    assert not still_coordinates(image(fenced=True), 2, 5, TRANSACTION_STATE_TOPIC, tp, 9)
    assert not still_coordinates(image(with_topics=False), 2, 5, TRANSACTION_STATE_TOPIC, tp, 9)
