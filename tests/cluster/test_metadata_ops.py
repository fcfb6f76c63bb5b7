"""Unit tests of the cluster-management commands of the metadata state machine (issue 18):
add partitions, alter a topic's config, reassign a partition; and the controller's pure
decisions that go with them (completing a reassignment, preferred leaders, imbalance)."""

from __future__ import annotations

import dataclasses

from semel.cluster.metadata.controller import (
    ControllerConfig,
    ControllerCore,
    imbalanced_brokers,
    preferred_leader_elections,
)
from semel.cluster.metadata import placement
from semel.cluster.metadata.records import RaftEntry, Snapshot, decode_command, decode_snapshot, encode_command, encode_snapshot
from semel.cluster.metadata.state import (
    AlterPartition,
    AlterTopicConfig,
    CompleteReassignment,
    CreatePartitions,
    CreateTopic,
    DecommissionBroker,
    ElectLeader,
    FenceBroker,
    ReassignPartition,
    RegisterBroker,
    UnfenceBroker,
    check_invariants,
    diff,
    explain_topic_config,
    normalize_config_key,
)
from semel.v1 import common_pb2 as pb

from tests.cluster.test_metadata import cluster, part


def test_create_partitions_grows_and_refuses_shrinking_and_internal_topics() -> None:
    m, _ = cluster(3)
    assert m.apply(CreateTopic("t", 2, 2)).ok
    r = m.apply(CreatePartitions("t", 5))
    assert r.ok and len(r.value.partitions) == 5
    check_invariants(m.image)
    for p in m.image.topic("t").partitions[2:]:
        assert len(p.replicas) == 2 and p.leader == p.replicas[0] and p.isr == p.replicas
    assert part(m, "t", 0) is r.value.partitions[0]  # the old partitions are untouched
    assert m.apply(CreatePartitions("t", 5)).error == pb.INVALID_PARTITIONS
    assert m.apply(CreatePartitions("t", 3)).error == pb.INVALID_PARTITIONS
    assert m.apply(CreatePartitions("nope", 3)).error == pb.UNKNOWN_TOPIC_OR_PARTITION
    assert m.apply(CreateTopic("__transaction_state", 1, 1, internal=True)).ok
    assert m.apply(CreatePartitions("__transaction_state", 2)).error == pb.INVALID_TOPIC_NAME


def test_alter_topic_config_sets_deletes_and_names_bad_keys() -> None:
    m, _ = cluster(3)
    assert m.apply(CreateTopic("t", 1, 3, configs=(("retention_ms", "1000"),))).ok
    r = m.apply(AlterTopicConfig("t", set_configs=(("retention_bytes", "4096"), ("min_insync_replicas", "3"))))
    assert r.ok
    config = m.image.topic("t").config
    assert (config.retention_ms, config.retention_bytes, config.min_insync_replicas) == (1000, 4096, 3)
    assert m.apply(AlterTopicConfig("t", delete_keys=("retention_ms", "min_insync_replicas"))).ok
    config = m.image.topic("t").config
    assert config.retention_ms == type(config)().retention_ms and config.min_insync_replicas == 2  # RF 3's default
    version = m.image.version
    assert m.apply(AlterTopicConfig("t", set_configs=(("min_insync_replicas", "4"),))).error == pb.INVALID_CONFIG
    assert m.apply(AlterTopicConfig("t", set_configs=(("retention.ms", "5"),))).error == pb.INVALID_CONFIG
    assert m.apply(AlterTopicConfig("t", delete_keys=("bogus",))).error == pb.INVALID_CONFIG
    assert m.image.version == version  # refusals change nothing
    assert m.apply(AlterTopicConfig("gone", set_configs=(("retention_ms", "5"),))).error == pb.UNKNOWN_TOPIC_OR_PARTITION


def test_config_messages_name_the_key_and_kafka_names_normalize() -> None:
    assert normalize_config_key("retention.ms") == "retention_ms"
    assert normalize_config_key("min_insync_replicas") == "min_insync_replicas"
    assert normalize_config_key("cleanup.policy") is None
    code, _, message = explain_topic_config([("retention_ms", "soon")], 3)
    assert code == pb.INVALID_CONFIG and "retention_ms" in message and "integer" in message
    code, _, message = explain_topic_config([("colour", "red")], 3)
    assert "colour" in message and "retention.ms" in message and "min_insync_replicas" in message
    code, _, message = explain_topic_config([("min_insync_replicas", "5")], 3)
    assert "min_insync_replicas" in message and "1..3" in message


def test_reassignment_adds_catches_up_then_switches_and_moves_the_leader() -> None:
    m, epochs = cluster(4)
    assert m.apply(CreateTopic("t", 1, 2)).ok
    p = part(m, "t")
    old = p.replicas
    new_broker = next(b for b in (1, 2, 3, 4) if b not in old)
    target = (old[1], new_broker)  # keep one, drop the leader, add one
    r = m.apply(ReassignPartition("t", 0, target))
    assert r.ok
    p = part(m, "t")
    assert p.replicas == (old[1], new_broker, old[0]) and p.target_replicas == target
    assert p.adding_replicas == (new_broker,) and p.removing_replicas == (old[0],)
    assert p.leader == old[0] and p.isr == old  # nothing switches before the new replica caught up
    check_invariants(m.image)
    # the controller waits for the ISR ...
    core = ControllerCore(ControllerConfig())
    core.on_became_leader(m.image, 0)
    assert not [c for c in core.decide(m.image, 0) if isinstance(c, CompleteReassignment)]
    assert m.apply(CompleteReassignment("t", 0, p.partition_epoch)).error == pb.INVALID_REQUEST
    # ... the leader adds the caught-up replica to the ISR ...
    assert m.apply(AlterPartition("t", 0, old[0], epochs[old[0]], p.leader_epoch, p.partition_epoch,
                                  (*old, new_broker))).ok
    p = part(m, "t")
    (complete,) = [c for c in core.decide(m.image, 0) if isinstance(c, CompleteReassignment)]
    assert complete == CompleteReassignment("t", 0, p.partition_epoch)
    assert m.apply(complete).ok
    p = part(m, "t")
    assert p.replicas == target and p.isr == target and p.target_replicas == ()
    assert p.leader == old[1] and p.leader_epoch == 1  # the dropped leader handed over
    check_invariants(m.image)


def test_reassignment_validation_and_immediate_completion() -> None:
    m, epochs = cluster(3)
    assert m.apply(CreateTopic("t", 1, 3)).ok
    p = part(m, "t")
    assert m.apply(ReassignPartition("t", 0, (1, 1))).error == pb.INVALID_REPLICATION_FACTOR
    assert m.apply(ReassignPartition("t", 0, (1, 9))).error == pb.INVALID_REQUEST  # no broker 9
    assert m.apply(ReassignPartition("t", 0, (1,))).error == pb.INVALID_REPLICATION_FACTOR  # below min ISR 2
    assert m.apply(ReassignPartition("t", 1, (1, 2))).error == pb.UNKNOWN_TOPIC_OR_PARTITION
    # a shrink (or reorder) within the ISR completes in the same command
    shrink = (p.replicas[2], p.replicas[1])
    r = m.apply(ReassignPartition("t", 0, shrink))
    assert r.ok and r.value.replicas == shrink and r.value.target_replicas == () and r.value.leader in shrink
    check_invariants(m.image)
    # a fenced broker cannot be added; one move at a time
    m2, epochs2 = cluster(4)
    assert m2.apply(CreateTopic("t", 1, 2)).ok
    q = part(m2, "t")
    spare = [b for b in (1, 2, 3, 4) if b not in q.replicas]
    assert m2.apply(FenceBroker(spare[0], epochs2[spare[0]])).ok
    assert m2.apply(ReassignPartition("t", 0, (q.replicas[0], spare[0]))).error == pb.INVALID_REQUEST
    assert m2.apply(ReassignPartition("t", 0, (q.replicas[0], spare[1]))).ok
    assert m2.apply(ReassignPartition("t", 0, (q.replicas[1], spare[1]))).error == pb.INVALID_REQUEST
    # a move whose new replica never catches up is cancelled by going back to the original list
    r = m2.apply(ReassignPartition("t", 0, q.replicas))
    assert r.ok and r.value.replicas == q.replicas and r.value.target_replicas == () and r.value.isr == q.isr
    check_invariants(m2.image)


def test_commands_round_trip_through_records() -> None:
    for command in (CreatePartitions("t", 4, command_id="x"), AlterTopicConfig("t", (("retention_ms", "5"),), ("segment_ms",)),
                    ReassignPartition("t", 2, (3, 1)), CompleteReassignment("t", 2, 7)):
        assert decode_command(encode_command(command)) == command


def test_preferred_elections_and_imbalance_threshold() -> None:
    m, epochs = cluster(3)
    assert m.apply(CreateTopic("t", 3, 3)).ok
    assert preferred_leader_elections(m.image) == []
    preferred = part(m, "t", 0).replicas[0]
    assert m.apply(FenceBroker(preferred, epochs[preferred])).ok
    moved = [p for p in m.image.topic("t").partitions if p.replicas[0] == preferred]
    assert all(p.leader != preferred for p in moved)
    # back, unfenced and in the ISR again (the leader re-adds it)
    m.image = dataclasses.replace(m.image, brokers={**m.image.brokers, preferred: dataclasses.replace(
        m.image.broker(preferred), fenced=False)})
    topics = dict(m.image.topics)
    t = topics["t"]
    topics["t"] = dataclasses.replace(t, partitions=tuple(dataclasses.replace(p, isr=p.replicas) for p in t.partitions))
    m.image = dataclasses.replace(m.image, topics=topics)
    elections = preferred_leader_elections(m.image)
    assert [(e.topic, e.partition) for e in elections] == [("t", p.partition) for p in moved]
    assert preferred in imbalanced_brokers(m.image, 0)
    assert preferred in imbalanced_brokers(m.image, 99)  # it leads none of its 1 preferred partitions
    assert imbalanced_brokers(m.image, 100) == set()
    for e in elections:
        r = m.apply(e)
        assert r.ok and r.value.leader == preferred
    assert isinstance(elections[0], ElectLeader) and preferred_leader_elections(m.image) == []


def test_delta_reports_added_partitions_and_altered_configs() -> None:
    """The brokers only hear about a non-empty delta: growing a topic and altering its config
    must each show up in it (a config-only change once reached no broker)."""
    m, _ = cluster(3)
    assert m.apply(CreateTopic("t", 1, 2)).ok
    before = m.image
    assert m.apply(CreatePartitions("t", 3)).ok
    d = diff(before, m.image)
    assert d.partitions_changed == {("t", 1), ("t", 2)} and not d.empty
    before = m.image
    assert m.apply(AlterTopicConfig("t", set_configs=(("retention_ms", "60000"),))).ok
    d = diff(before, m.image)
    assert d.configs_changed == {"t"} and not d.partitions_changed and not d.empty
    before = m.image
    assert m.apply(AlterTopicConfig("t", set_configs=(("retention_ms", "60000"),))).ok  # no change
    assert diff(before, m.image).empty


def test_a_decommissioned_broker_takes_no_new_replicas_until_it_is_started_again() -> None:
    m, _ = cluster(4)
    assert m.apply(CreateTopic("old", 4, 2)).ok
    assert any(4 in p.replicas for p in m.image.topic("old").partitions)
    assert m.apply(DecommissionBroker(99)).error == pb.INVALID_REQUEST  # not registered
    assert m.apply(DecommissionBroker(4, "d")).ok
    assert m.image.broker(4).decommissioned and not m.image.broker(4).fenced  # still running, still serving
    assert m.apply(DecommissionBroker(4)).ok  # idempotent
    assert m.image.placement_brokers() == (1, 2, 3) and m.image.unfenced_brokers() == (1, 2, 3, 4)
    check_invariants(m.image)
    moves = placement.decommission_plan(m.image, 3)  # "old" (RF 2) only: 1 and 2 have room, 4 does not count
    added = {b for mv in moves for b in mv.target_replicas if b not in part(m, "old", mv.partition).replicas}
    assert moves and added and 4 not in added, moves
    # Neither new topics, nor added partitions, nor the moves off another broker land on it.
    for i in range(4):  # every rotation of the round-robin start
        r = m.apply(CreateTopic(f"new-{i}", 6, 3))
        assert r.ok and not any(4 in p.replicas for p in r.value.partitions), r.value
    r = m.apply(CreatePartitions("old", 8))
    assert r.ok and not any(4 in p.replicas for p in r.value.partitions[4:])
    assert m.apply(CreateTopic("too-wide", 1, 4)).error == pb.INVALID_REPLICATION_FACTOR
    # The flag survives a snapshot (a restarted controller keeps it).
    entry = RaftEntry(b"", 1, 1)
    assert decode_snapshot(encode_snapshot(Snapshot(m, entry, entry, ()))).machine.image.broker(4).decommissioned
    # Started again (a new incarnation registers): an ordinary broker once more.
    epoch = m.apply(RegisterBroker(4, "inc-4-again", "127.0.0.1", 9004)).value
    assert m.apply(UnfenceBroker(4, epoch)).ok
    assert not m.image.broker(4).decommissioned and m.image.placement_brokers() == (1, 2, 3, 4)
    assert m.apply(CreateTopic("wide", 1, 4)).ok
