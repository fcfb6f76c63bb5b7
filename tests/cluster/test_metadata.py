"""Unit tests of the pure metadata state machine (no I/O, microseconds each)."""

from __future__ import annotations

import pytest
from semel.cluster.metadata.records import RaftEntry, Snapshot, decode_snapshot, encode_snapshot
from semel.cluster.metadata.state import (
    NO_LEADER,
    PRODUCER_ID_BLOCK_SIZE,
    AllocateProducerIds,
    AlterTopicConfig,
    AlterPartition,
    Barrier,
    CreateTopic,
    DeleteTopic,
    ElectLeader,
    FenceBroker,
    MetadataImage,
    MetadataStateMachine,
    RegisterBroker,
    UnfenceBroker,
    assign_replicas,
    check_invariants,
    diff,
    validate_topic_name,
)
from semel import limits
from semel.storage.log_policy import LogConfig
from semel.internal_topics import coordinator_partition
from semel.v1 import common_pb2 as pb


def cluster(n: int = 3) -> tuple[MetadataStateMachine, dict[int, int]]:
    """A machine with brokers 1..n registered and unfenced; returns broker epochs."""
    m = MetadataStateMachine()
    epochs = {}
    for b in range(1, n + 1):
        r = m.apply(RegisterBroker(b, f"inc-{b}", "127.0.0.1", 9000 + b, f"127.0.0.1:{19000 + b}"))
        assert r.ok
        epochs[b] = r.value
        assert m.apply(UnfenceBroker(b, r.value)).ok
    return m, epochs


def part(m: MetadataStateMachine, topic: str = "t", p: int = 0):
    state = m.image.partition(topic, p)
    assert state is not None
    return state


# --- brokers ------------------------------------------------------------------------------


def test_registration_assigns_increasing_epochs_and_starts_fenced() -> None:
    m = MetadataStateMachine()
    r1 = m.apply(RegisterBroker(1, "a", "h", 1))
    r2 = m.apply(RegisterBroker(2, "b", "h", 2))
    assert r1.ok and r2.ok and r2.value > r1.value
    assert m.image.broker(1).fenced and m.image.broker(1).registered_version == 1
    assert m.image.unfenced_brokers() == ()


def test_same_incarnation_reregistration_is_idempotent() -> None:
    m, epochs = cluster()
    version = m.image.version
    r = m.apply(RegisterBroker(1, "inc-1", "127.0.0.1", 9001))
    assert r.ok and r.value == epochs[1]
    assert m.image.version == version


def test_new_incarnation_fences_old_one_and_moves_leadership() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 3, 3))
    led = [p.partition for p in m.image.topic("t").partitions if p.leader == 1]
    r = m.apply(RegisterBroker(1, "inc-1-restarted", "127.0.0.1", 9001))
    assert r.ok and r.value > max(epochs.values())
    reg = m.image.broker(1)
    assert reg.fenced and reg.broker_epoch == r.value
    for p in m.image.topic("t").partitions:
        assert p.leader != 1 and 1 not in p.isr
    for i in led:
        assert part(m, "t", i).leader_epoch == 1
    check_invariants(m.image)


def test_stale_broker_epoch_is_rejected() -> None:
    m, epochs = cluster()
    assert m.apply(FenceBroker(1, epochs[1] + 100)).error == pb.STALE_BROKER_EPOCH
    assert m.apply(UnfenceBroker(9, 1)).error == pb.STALE_BROKER_EPOCH
    assert m.apply(AllocateProducerIds(2, epochs[2] - 1)).error == pb.STALE_BROKER_EPOCH


# --- topics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,internal,code",
    [
        ("orders", False, pb.NONE),
        ("a.b_c-D9", False, pb.NONE),
        ("x" * 200, False, pb.NONE),
        ("x" * 201, False, pb.INVALID_TOPIC_NAME),
        ("", False, pb.INVALID_TOPIC_NAME),
        ("bad name", False, pb.INVALID_TOPIC_NAME),
        ("bad/name", False, pb.INVALID_TOPIC_NAME),
        ("é", False, pb.INVALID_TOPIC_NAME),
        (".", False, pb.INVALID_TOPIC_NAME),
        ("..", False, pb.INVALID_TOPIC_NAME),
        ("__consumer_offsets", False, pb.INVALID_TOPIC_NAME),
        ("__consumer_offsets", True, pb.NONE),
        ("_one_underscore", False, pb.NONE),
    ],
)
def test_topic_names(name: str, internal: bool, code: int) -> None:
    assert validate_topic_name(name, internal) == code


def test_create_topic_validation() -> None:
    m, _ = cluster()
    assert m.apply(CreateTopic("bad name", 1, 1)).error == pb.INVALID_TOPIC_NAME
    assert m.apply(CreateTopic("t", 0, 1)).error == pb.INVALID_PARTITIONS
    assert m.apply(CreateTopic("t", 1001, 1)).error == pb.INVALID_PARTITIONS
    assert m.apply(CreateTopic("t", 1, 4)).error == pb.INVALID_REPLICATION_FACTOR
    assert m.apply(CreateTopic("t", 1, 0)).error == pb.INVALID_REPLICATION_FACTOR
    assert m.apply(CreateTopic("t", 1, 3, (("nope", "1"),))).error == pb.INVALID_CONFIG
    assert m.apply(CreateTopic("t", 1, 3, (("min_insync_replicas", "4"),))).error == pb.INVALID_CONFIG
    assert m.apply(CreateTopic("t", 1, 3, (("unclean_leader_election", "maybe"),))).error == pb.INVALID_CONFIG
    assert m.apply(CreateTopic("t", 1, 3, (("retention_ms", "x"),))).error == pb.INVALID_CONFIG
    assert m.image.topics == {}
    assert m.apply(CreateTopic("t", 1000, 3)).ok
    assert m.apply(CreateTopic("t", 1, 1)).error == pb.TOPIC_ALREADY_EXISTS


def test_replication_factor_counts_only_unfenced_brokers() -> None:
    m, epochs = cluster()
    m.apply(FenceBroker(3, epochs[3]))
    assert m.apply(CreateTopic("t", 1, 3)).error == pb.INVALID_REPLICATION_FACTOR
    r = m.apply(CreateTopic("t", 4, 2))
    assert r.ok
    assert all(3 not in p.replicas for p in r.value.partitions)


def test_topic_config_defaults() -> None:
    m, _ = cluster()
    t3 = m.apply(CreateTopic("t3", 1, 3)).value
    t2 = m.apply(CreateTopic("t2", 1, 2)).value
    assert t3.config.min_insync_replicas == 2 and not t3.config.unclean_leader_election
    assert t2.config.min_insync_replicas == 1
    t = m.apply(
        CreateTopic("c", 1, 3, (("unclean_leader_election", "true"), ("retention_ms", "1000"), ("segment_bytes", "4096")))
    ).value
    assert t.config.unclean_leader_election and t.config.retention_ms == 1000 and t.config.segment_bytes == 4096


def test_topic_config_segment_bytes_is_the_storage_range() -> None:
    """A segment size the storage would refuse (LogConfig) is refused at create: committed, it
    would leave every replica unable to open the partition's log."""
    m, _ = cluster()
    for n, value in enumerate((limits.MIN_SEGMENT_BYTES - 1, limits.MAX_SEGMENT_BYTES + 1, 2**31 - 1)):
        assert m.apply(CreateTopic(f"bad{n}", 1, 3, (("segment_bytes", str(value)),))).error == pb.INVALID_CONFIG
    for n, value in enumerate((limits.MIN_SEGMENT_BYTES, limits.MAX_SEGMENT_BYTES)):
        t = m.apply(CreateTopic(f"ok{n}", 1, 3, (("segment_bytes", str(value)),))).value
        assert t.config.segment_bytes == value
        LogConfig(segment_bytes=t.config.segment_bytes)  # the storage accepts what was created


def test_delete_topic() -> None:
    m, _ = cluster()
    m.apply(CreateTopic("t", 2, 3))
    assert m.apply(DeleteTopic("t")).ok
    assert m.image.topic("t") is None
    assert m.apply(DeleteTopic("t")).error == pb.UNKNOWN_TOPIC_OR_PARTITION
    recreated = m.apply(CreateTopic("t", 2, 3)).value
    assert recreated is not None


def test_assignment_is_round_robin_and_balanced() -> None:
    assignment = assign_replicas((1, 2, 3), 6, 3, start=0)
    assert [r[0] for r in assignment] == [1, 2, 3, 1, 2, 3]
    assert all(len(set(r)) == 3 for r in assignment)
    assert assignment[:3] != [tuple(r) for r in assignment[3:]]  # the second round is shifted
    five = assign_replicas((1, 2, 3, 4, 5), 50, 3, start=2)
    leaders = [r[0] for r in five]
    assert all(leaders.count(b) == 10 for b in range(1, 6))
    replicas = [b for r in five for b in r]
    assert all(replicas.count(b) == 30 for b in range(1, 6))


def test_assignment_rotates_between_topics() -> None:
    m, _ = cluster()
    leaders = [m.apply(CreateTopic(f"t{i}", 1, 3)).value.partitions[0].leader for i in range(3)]
    assert sorted(leaders) == [1, 2, 3]


def test_new_partition_state() -> None:
    m, _ = cluster()
    t = m.apply(CreateTopic("t", 3, 3)).value
    for p in t.partitions:
        assert p.isr == p.replicas and p.leader == p.replicas[0]
        assert p.leader_epoch == 0 and p.partition_epoch == 0


# --- AlterPartition (ISR changes by the leader) --------------------------------------------


def alter(m, epochs, p, new_isr, **overrides):
    fields = dict(
        topic=p.topic,
        partition=p.partition,
        broker_id=p.leader,
        broker_epoch=epochs[p.leader],
        leader_epoch=p.leader_epoch,
        partition_epoch=p.partition_epoch,
        new_isr=tuple(new_isr),
    )
    fields.update(overrides)
    return m.apply(AlterPartition(**fields))


def test_isr_shrink_and_expand_are_cas() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    p = part(m)
    leader, f1, f2 = p.replicas
    r = alter(m, epochs, p, (leader, f1))
    assert r.ok and r.value.isr == (leader, f1) and r.value.partition_epoch == 1
    assert r.value.leader_epoch == 0
    # The same request again loses the compare-and-set.
    assert alter(m, epochs, p, (leader, f1)).error == pb.STALE_PARTITION_EPOCH
    p1 = part(m)
    r = alter(m, epochs, p1, (f2, leader, f1))
    assert r.ok and r.value.isr == p.replicas and r.value.partition_epoch == 2


def test_alter_partition_rejections() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    p = part(m)
    leader, f1, f2 = p.replicas
    assert alter(m, epochs, p, (leader,), topic="nope").error == pb.UNKNOWN_TOPIC_OR_PARTITION
    assert alter(m, epochs, p, (leader,), partition=5).error == pb.UNKNOWN_TOPIC_OR_PARTITION
    assert alter(m, epochs, p, (f1,), broker_id=f1, broker_epoch=epochs[f1]).error == pb.NOT_LEADER_OR_FOLLOWER
    assert alter(m, epochs, p, (leader,), broker_epoch=999).error == pb.STALE_BROKER_EPOCH
    assert alter(m, epochs, p, (leader,), leader_epoch=-1).error == pb.FENCED_LEADER_EPOCH
    assert alter(m, epochs, p, (leader,), leader_epoch=5).error == pb.UNKNOWN_LEADER_EPOCH
    assert alter(m, epochs, p, (leader,), partition_epoch=7).error == pb.STALE_PARTITION_EPOCH
    assert alter(m, epochs, p, ()).error == pb.INVALID_REQUEST
    assert alter(m, epochs, p, (f1, f2)).error == pb.INVALID_REQUEST  # leader missing
    assert alter(m, epochs, p, (leader, 42)).error == pb.INVALID_REQUEST  # not a replica
    assert alter(m, epochs, p, (leader, leader)).error == pb.INVALID_REQUEST
    assert part(m) == p
    # Adding a fenced broker is refused.
    assert alter(m, epochs, p, (leader, f1)).ok
    m.apply(FenceBroker(f2, epochs[f2]))
    assert alter(m, epochs, part(m), (leader, f1, f2)).error == pb.INVALID_REQUEST


def test_unchanged_isr_is_a_noop() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    p = part(m)
    version = m.image.version
    r = alter(m, epochs, p, reversed(p.isr))
    assert r.ok and r.value == p and m.image.version == version


# --- fencing and elections ------------------------------------------------------------------


def test_fencing_moves_leadership_to_an_isr_member_and_shrinks_isrs() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 6, 3))
    before = {p.partition: p for p in m.image.topic("t").partitions}
    assert m.apply(FenceBroker(2, epochs[2])).ok
    for p in m.image.topic("t").partitions:
        old = before[p.partition]
        assert 2 not in p.isr and p.leader != 2 and p.leader in old.isr
        assert p.partition_epoch == old.partition_epoch + 1
        assert p.leader_epoch == old.leader_epoch + (1 if old.leader == 2 else 0)
    assert m.image.broker(2).fenced
    check_invariants(m.image)


def test_election_only_from_isr() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    p = part(m)
    leader, f1, f2 = p.replicas
    alter(m, epochs, p, (leader, f1))  # f2 out of sync
    m.apply(FenceBroker(leader, epochs[leader]))
    assert part(m).leader == f1 and part(m).isr == (f1,)
    m.apply(FenceBroker(f1, epochs[f1]))
    p = part(m)
    # f2 is alive but was never in sync: no clean election may choose it.
    assert p.leader == NO_LEADER and p.isr == (f1,)
    assert m.apply(ElectLeader("t", 0, p.partition_epoch)).error == pb.LEADER_NOT_AVAILABLE
    check_invariants(m.image)


def test_last_isr_member_stays_and_leads_again_when_back() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    p = part(m)
    leader, f1, f2 = p.replicas
    m.apply(FenceBroker(f1, epochs[f1]))
    m.apply(FenceBroker(f2, epochs[f2]))
    assert part(m).isr == (leader,) and part(m).leader == leader
    m.apply(FenceBroker(leader, epochs[leader]))
    gone = part(m)
    assert gone.isr == (leader,) and gone.leader == NO_LEADER
    assert gone.leader_epoch == p.leader_epoch + 1
    # Another replica coming back does not lead (not in the ISR)...
    m.apply(UnfenceBroker(f1, epochs[f1]))
    assert part(m).leader == NO_LEADER
    # ...the last ISR member does, with a new leader epoch.
    m.apply(UnfenceBroker(leader, epochs[leader]))
    back = part(m)
    assert back.leader == leader and back.isr == (leader,) and back.leader_epoch == gone.leader_epoch + 1
    check_invariants(m.image)


def test_unclean_election_when_configured() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3, (("unclean_leader_election", "true"),)))
    p = part(m)
    leader, f1, f2 = p.replicas
    alter(m, epochs, p, (leader,))
    m.apply(FenceBroker(leader, epochs[leader]))
    p = part(m)
    assert p.leader == f1 and p.isr == (f1,)  # an out-of-sync replica takes over


def test_unclean_election_on_request() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    p = part(m)
    leader, f1, f2 = p.replicas
    alter(m, epochs, p, (leader, f1))
    alter(m, epochs, part(m), (leader,))
    assert part(m).elr == (f1,)  # f2 left while the ISR still had min.insync.replicas members
    m.apply(FenceBroker(f1, epochs[f1]))
    m.apply(FenceBroker(leader, epochs[leader]))
    p = part(m)
    assert p.leader == NO_LEADER and p.isr == (leader,) and p.elr == (f1,)  # nobody eligible is up
    assert m.apply(ElectLeader("t", 0, p.partition_epoch)).error == pb.LEADER_NOT_AVAILABLE
    r = m.apply(ElectLeader("t", 0, p.partition_epoch, unclean=True))
    assert r.ok and r.value.leader == f2 and r.value.isr == (f2,) and r.value.elr == ()
    check_invariants(m.image)


# --- eligible leader replicas (KIP-966) and brokers that lost unsynced writes ---------------


def test_a_follower_that_leaves_an_isr_at_min_isr_stays_eligible_and_leads_when_it_returns() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))  # RF 3: min.insync.replicas 2
    leader, f1, f2 = part(m).replicas
    alter(m, epochs, part(m), (leader, f1))  # f2 lags: the ISR keeps min.insync.replicas members
    assert part(m).elr == ()
    m.apply(FenceBroker(f1, epochs[f1]))  # f1 stops (a controlled shutdown): the ISR drops below min
    p = part(m)
    assert p.isr == (leader,) and p.elr == (f1,)
    m.apply(FenceBroker(leader, epochs[leader]))  # then the leader loses power
    p = part(m)
    assert p.leader == NO_LEADER and p.isr == (leader,) and p.elr == (f1,)
    assert m.apply(UnfenceBroker(f2, epochs[f2])).ok  # f2 was never eligible: still nobody leads
    m.apply(UnfenceBroker(f1, epochs[f1]))
    p = part(m)
    assert p.leader == f1 and p.isr == (f1,) and p.elr == (leader,) and p.leader_epoch == 2
    check_invariants(m.image)
    alter(m, epochs, p, (f1, f2))  # back at min.insync.replicas: the ELR empties
    assert part(m).elr == ()
    check_invariants(m.image)


def test_a_broker_that_lost_unsynced_writes_is_not_trusted_where_another_replica_can_lead() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    leader, f1, f2 = part(m).replicas
    alter(m, epochs, part(m), (leader, f1))
    m.apply(FenceBroker(f1, epochs[f1]))
    m.apply(FenceBroker(leader, epochs[leader]))
    assert (part(m).isr, part(m).elr) == ((leader,), (f1,))
    # the leader's machine comes back first, without the records only its page cache had
    r = m.apply(RegisterBroker(leader, "inc-after-power-loss", "127.0.0.1", 9000 + leader,
                               lost_unsynced_writes=True))
    p = part(m)
    assert p.isr == (f1,) and p.elr == () and p.leader == NO_LEADER  # f1 holds everything; it is down
    m.apply(UnfenceBroker(leader, r.value))
    assert part(m).leader == NO_LEADER  # not elected on its short log
    m.apply(UnfenceBroker(f1, epochs[f1]))
    assert part(m).leader == f1
    check_invariants(m.image)


def test_a_broker_that_lost_unsynced_writes_stays_where_it_is_the_only_copy() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    leader, f1, f2 = part(m).replicas
    alter(m, epochs, part(m), (leader,))
    for b in (f1, f2):
        m.apply(FenceBroker(b, epochs[b]))
    m.apply(DeleteTopic("t"))
    m.apply(CreateTopic("u", 1, 1))  # RF 1: nobody else could stand in
    only = part(m, "u").leader
    r = m.apply(RegisterBroker(only, "inc-after-power-loss", "127.0.0.1", 9000 + only, lost_unsynced_writes=True))
    assert part(m, "u").isr == (only,)
    m.apply(UnfenceBroker(only, r.value))
    assert part(m, "u").leader == only
    check_invariants(m.image)


def test_an_isr_change_from_the_leader_moves_members_into_and_out_of_the_elr() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    leader, f1, f2 = part(m).replicas
    alter(m, epochs, part(m), (leader,))  # both lag: the leader alone, both still hold the HW
    assert part(m).elr == (f1, f2)
    alter(m, epochs, part(m), (leader, f2))  # f2 caught up: min.insync.replicas again
    assert part(m).elr == ()
    check_invariants(m.image)


def test_lowering_min_isr_empties_the_elr() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    leader, f1, f2 = part(m).replicas
    alter(m, epochs, part(m), (leader,))
    assert part(m).elr == (f1, f2)
    assert m.apply(AlterTopicConfig("t", (("min_insync_replicas", "1"),), ())).ok
    assert part(m).elr == ()  # acks=all may now commit with the leader alone
    check_invariants(m.image)


def test_elect_leader_prefers_first_replica_and_is_cas() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    preferred = part(m).leader
    m.apply(FenceBroker(preferred, epochs[preferred]))
    assert part(m).leader != preferred
    m.apply(UnfenceBroker(preferred, epochs[preferred]))
    p = part(m)
    assert preferred not in p.isr  # it must be re-added by the leader first
    alter(m, epochs, p, p.replicas)
    p = part(m)
    assert m.apply(ElectLeader("t", 0, p.partition_epoch - 1)).error == pb.STALE_PARTITION_EPOCH
    r = m.apply(ElectLeader("t", 0, p.partition_epoch))
    assert r.ok and r.value.leader == preferred and r.value.leader_epoch == p.leader_epoch + 1


def test_fenced_broker_cannot_alter_partitions() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 1, 3))
    p = part(m)
    m.apply(FenceBroker(p.leader, epochs[p.leader]))
    assert alter(m, epochs, p, (p.leader,)).error == pb.NOT_LEADER_OR_FOLLOWER


# --- producer ids ---------------------------------------------------------------------------


def test_producer_id_blocks_are_monotonic_and_disjoint() -> None:
    m, epochs = cluster()
    blocks = [m.apply(AllocateProducerIds(b, epochs[b])).value for b in (1, 2, 3, 1, 2)]
    assert [b.first_producer_id for b in blocks] == [i * PRODUCER_ID_BLOCK_SIZE for i in range(5)]
    assert all(b.size == PRODUCER_ID_BLOCK_SIZE for b in blocks)
    ids = set()
    for b in blocks:
        block_ids = set(range(b.first_producer_id, b.last_producer_id + 1))
        assert not ids & block_ids
        ids |= block_ids


def test_retried_command_id_returns_the_recorded_result() -> None:
    m, epochs = cluster()
    first = m.apply(AllocateProducerIds(1, epochs[1], command_id="c1"))
    again = m.apply(AllocateProducerIds(1, epochs[1], command_id="c1"))
    assert again == first
    assert m.apply(AllocateProducerIds(1, epochs[1], command_id="c2")).value.first_producer_id == PRODUCER_ID_BLOCK_SIZE


# --- coordinators, replay, deltas ----------------------------------------------------------


def test_coordinator_lookup_is_stable() -> None:
    assert coordinator_partition("my-group", 16) == coordinator_partition("my-group", 16)
    assert coordinator_partition("my-group", 16) == 11  # crc32 based: never changes between releases
    m, _ = cluster()
    m.apply(CreateTopic("__transaction_state", 8, 3, internal=True))
    state = m.image.coordinator("__transaction_state", "txn-1")
    assert state is not None and state.partition == coordinator_partition("txn-1", 8)
    assert m.image.coordinator("__consumer_offsets", "g") is None


def script(epochs_from: dict[int, int] | None = None) -> list:
    return [
        RegisterBroker(1, "a", "h", 1, command_id="r1"),
        RegisterBroker(2, "b", "h", 2, command_id="r2"),
        RegisterBroker(3, "c", "h", 3, command_id="r3"),
        UnfenceBroker(1, 1),
        UnfenceBroker(2, 2),
        UnfenceBroker(3, 3),
        CreateTopic("t", 4, 3, command_id="t"),
        CreateTopic("u", 2, 2),
        AllocateProducerIds(2, 2, command_id="p"),
        FenceBroker(1, 1),
        AlterPartition("t", 1, 2, 2, 0, 1, (2,)),
        RegisterBroker(1, "a2", "h", 1),
        UnfenceBroker(1, 4),
        Barrier(),
        DeleteTopic("u"),
    ]


def test_replay_is_deterministic_and_idempotent() -> None:
    a, b = MetadataStateMachine(), MetadataStateMachine()
    results_a = [a.apply(c) for c in script()]
    results_b = [b.apply(c) for c in script()]
    assert results_a == results_b
    assert a.image == b.image
    # Re-applying the commands with ids (a retried submit) changes nothing.
    image = a.image
    for c in script():
        if c.command_id:
            a.apply(c)
    assert a.image == image
    check_invariants(a.image)


def test_snapshot_round_trip() -> None:
    m = MetadataStateMachine()
    for c in script():
        m.apply(c)
    # The quorum's snapshot form (semel.cluster.metadata.records), not pickle.
    restored = decode_snapshot(encode_snapshot(Snapshot(m, RaftEntry(b"", 2, 1), RaftEntry(b"", 1, 1), ()))).machine
    assert restored.image == m.image and restored.last_applied == m.last_applied
    assert restored.apply(AllocateProducerIds(2, 2, command_id="p")) == m.apply(
        AllocateProducerIds(2, 2, command_id="p")
    )


def test_image_is_copy_on_write() -> None:
    m, epochs = cluster()
    m.apply(CreateTopic("t", 2, 3))
    m.apply(CreateTopic("u", 1, 3))
    old = m.image
    p = part(m, "t", 1)
    alter(m, epochs, p, (p.leader,))
    new = m.image
    assert old.partition("t", 1) == p  # the old image is untouched
    assert new.topics["u"] is old.topics["u"]
    assert new.partition("t", 0) is old.partition("t", 0)
    d = diff(old, new)
    assert d.partitions_changed == {("t", 1)} and not d.brokers_changed and d.version == new.version
    d2 = diff(MetadataImage(), new)
    assert d2.topics_created == {"t", "u"} and d2.brokers_changed == {1, 2, 3}
    assert len(d2.partitions_changed) == 3
    m.apply(DeleteTopic("u"))
    assert diff(new, m.image).topics_deleted == {"u"}


def test_version_counts_changes_only() -> None:
    m, _ = cluster()
    v = m.image.version
    m.apply(CreateTopic("bad name", 1, 1))
    m.apply(Barrier())
    assert m.image.version == v
    assert m.last_applied == 6 + 2


def test_bounds_on_brokers_and_partitions(monkeypatch) -> None:
    import semel.cluster.metadata.state as md

    monkeypatch.setattr(md, "MAX_BROKERS", 3)
    monkeypatch.setattr(md, "MAX_PARTITIONS_TOTAL", 10)
    m, _ = cluster(3)
    assert m.apply(RegisterBroker(4, "x", "h", 1)).error == pb.RESOURCE_EXHAUSTED
    assert m.apply(RegisterBroker(3, "inc-3-new", "h", 1)).ok  # known ids may re-register
    assert m.apply(RegisterBroker(-1, "x", "h", 1)).error == pb.INVALID_REQUEST
    assert m.apply(RegisterBroker(5, "x", "h", 0)).error == pb.INVALID_REQUEST
    assert m.apply(CreateTopic("a", 6, 1)).ok
    assert m.apply(CreateTopic("b", 5, 1)).error == pb.RESOURCE_EXHAUSTED
    assert m.apply(CreateTopic("b", 4, 1)).ok


def test_the_partition_replica_limit_counts_every_broker_after_the_assignment() -> None:
    """The limit a command carries bounds the replicas any broker hosts after it (the assignment
    is what the command itself would make); 0 is no limit; the replay of a snapshot keeps it."""
    from semel.cluster.metadata.records import decode_command, encode_command
    from semel.cluster.metadata.state import CreatePartitions, hosted_replicas

    m, _ = cluster(3)
    assert m.apply(CreateTopic("a", 4, 3, max_replicas_per_broker=5)).ok  # 4 replicas on each broker
    refused = CreateTopic("b", 2, 3, max_replicas_per_broker=5)            # 6 on each: over
    assert m.apply(refused).error == pb.POLICY_VIOLATION
    assert "b" not in m.image.topics
    assert decode_command(encode_command(refused)) == refused
    # RF 1 spreads round-robin: one more replica lands on one broker, which then holds 5
    assert m.apply(CreateTopic("c", 1, 1, max_replicas_per_broker=5)).ok
    assert sorted(hosted_replicas(m.image).values()) == [4, 4, 5]
    grow = CreatePartitions("a", 6, max_replicas_per_broker=5)
    assert m.apply(grow).error == pb.POLICY_VIOLATION
    assert decode_command(encode_command(grow)) == grow
    assert len(m.image.topics["a"].partitions) == 4
    assert m.apply(CreatePartitions("a", 6)).ok  # no limit carried: the old behaviour
    assert m.apply(CreateTopic("d", 1, 3, max_replicas_per_broker=100)).ok
