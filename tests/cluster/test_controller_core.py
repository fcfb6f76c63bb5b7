"""Controller decisions with a fake clock: ControllerCore is pure (image + inputs + now)."""

from __future__ import annotations

from semel.cluster.metadata.controller import ControllerConfig, ControllerCore
from semel.cluster.metadata.state import (
    NO_LEADER,
    CreateTopic,
    ElectLeader,
    FenceBroker,
    MetadataStateMachine,
    RegisterBroker,
    UnfenceBroker,
)
from semel.internal_topics import (
    CONSUMER_OFFSETS_TOPIC,
    INTERNAL_TOPIC_CONFIGS,
    TRANSACTION_STATE_TOPIC,
)
from semel.v1 import common_pb2 as pb

CFG = ControllerConfig(
    session_timeout_ms=1000,
    heartbeat_interval_ms=100,
    disconnect_grace_ms=250,
    internal_partitions={TRANSACTION_STATE_TOPIC: 4, CONSUMER_OFFSETS_TOPIC: 2},
    internal_replication_factor=3,
)


def registered(n: int = 3, unfenced: bool = True) -> MetadataStateMachine:
    m = MetadataStateMachine()
    for b in range(1, n + 1):
        epoch = m.apply(RegisterBroker(b, f"i{b}", "h", 9000 + b, f"h:{19000 + b}")).value
        if unfenced:
            m.apply(UnfenceBroker(b, epoch))
    return m


def apply_all(m: MetadataStateMachine, commands: list) -> None:
    for c in commands:
        m.apply(c)


def active_core(now_ms: int) -> tuple[MetadataStateMachine, ControllerCore]:
    """Three unfenced brokers with the internal topics, and a controller core active since `now_ms`."""
    m = registered()
    apply_all(m, [CreateTopic(TRANSACTION_STATE_TOPIC, 4, 3, internal=True), CreateTopic(CONSUMER_OFFSETS_TOPIC, 2, 3, internal=True)])
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, now_ms=now_ms)
    return m, core


def heartbeat_all(core: ControllerCore, m: MetadataStateMachine, now: int, skip: tuple[int, ...] = ()) -> None:
    for b, reg in m.image.brokers.items():
        if b not in skip:
            assert core.on_heartbeat(m.image, b, reg.broker_epoch, m.image.version, now).error == pb.NONE


def heartbeats_every_interval(core: ControllerCore, m: MetadataStateMachine, start: int, end: int,
                              skip: tuple[int, ...] = ()) -> None:
    """The live brokers heartbeat every 100 ms from `start` to `end` (inclusive)."""
    for now in range(start, end + 1, 100):
        heartbeat_all(core, m, now, skip=skip)


def test_inactive_controller_decides_nothing_and_rejects_heartbeats() -> None:
    m = registered()
    core = ControllerCore(CFG)
    assert core.decide(m.image, 10_000) == []
    assert core.on_heartbeat(m.image, 1, 1, 0, 0).error == pb.NOT_LEADER_OR_FOLLOWER


def test_session_timeout_fences_silent_broker_only() -> None:
    m = registered()
    m.apply(CreateTopic("__transaction_state", 4, 3, internal=True))
    m.apply(CreateTopic("__consumer_offsets", 2, 3, internal=True))
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, now_ms=0)
    for now in range(100, 1001, 100):
        heartbeat_all(core, m, now, skip=(2,))
        assert core.decide(m.image, now) == []  # broker 2 silent for exactly the session: still fine
    heartbeat_all(core, m, 1100, skip=(2,))
    assert core.decide(m.image, 1100) == [FenceBroker(2, 2)]


def test_sessions_restart_when_becoming_leader() -> None:
    m = registered()
    apply_all(m, [CreateTopic(TRANSACTION_STATE_TOPIC, 4, 3, internal=True), CreateTopic(CONSUMER_OFFSETS_TOPIC, 2, 3, internal=True)])
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, now_ms=50_000)  # nobody heartbeated this controller yet
    assert core.decide(m.image, 50_900) == []
    # still nobody heard: the controller cannot tell silent brokers from its own deafness
    assert core.decide(m.image, 53_000) == []
    heartbeats_every_interval(core, m, 53_000, 53_600, skip=(2, 3))  # broker 1 (its own, in combined mode)
    assert core.decide(m.image, 53_600) == []  # 0.9 s of hearing (0.3 s before it counts as a gap)
    heartbeats_every_interval(core, m, 53_700, 53_800, skip=(2, 3))
    assert core.decide(m.image, 53_800) == [FenceBroker(2, 2), FenceBroker(3, 3)]


def test_a_controller_that_heard_nobody_for_a_while_fences_nobody_for_it() -> None:
    """Its loop starved (an overloaded host) or itself cut off: every broker's silence is equal,
    and is the controller's; once heartbeats flow again, only a broker still silent is fenced."""
    m, core = active_core(now_ms=0)
    for now in range(100, 1001, 100):
        heartbeat_all(core, m, now)
    assert core.decide(m.image, 4_000) == []  # 3 s without processing any heartbeat
    heartbeat_all(core, m, 4_010, skip=(3,))
    assert core.decide(m.image, 4_020) == []  # broker 3 is silent only 10 ms longer than the others
    for now in range(4_100, 5_101, 100):
        heartbeat_all(core, m, now, skip=(3,))
    assert core.decide(m.image, 5_100) == [FenceBroker(3, 3)]  # others heard 4.1 s after it fell silent


def test_disconnect_fences_after_grace_when_heartbeats_also_stop() -> None:
    m, core = active_core(now_ms=0)
    heartbeat_all(core, m, 100)
    core.on_connection_status(3, False, now_ms=120)
    heartbeat_all(core, m, 200, skip=(3,))
    assert core.decide(m.image, 300) == []  # 180 ms down, 200 ms silent
    heartbeat_all(core, m, 350, skip=(3,))
    assert core.decide(m.image, 370) == [FenceBroker(3, 3)]  # 250 ms down, 270 ms silent


def test_disconnect_alone_does_not_fence_a_broker_that_heartbeats() -> None:
    m, core = active_core(now_ms=0)
    core.on_broker_unreachable(1, now_ms=0)
    for now in range(100, 3000, 100):
        heartbeat_all(core, m, now)
        assert core.decide(m.image, now) == []


def test_new_leader_fences_a_dead_former_leader_at_once() -> None:
    """The Raft leader (also a broker) is killed: its link has been down since the election
    started, and it cannot heartbeat a controller it cannot learn about."""
    m, core = active_core(now_ms=10_000)
    core.on_connection_status(1, False, 10_000, down_since_ms=9_700)
    core.on_connection_status(2, True, 10_000)
    assert core.decide(m.image, 10_000) == [FenceBroker(1, 1)]


def test_new_leader_gives_a_recently_disconnected_broker_the_grace() -> None:
    m, core = active_core(now_ms=10_000)
    core.on_connection_status(1, False, 10_000, down_since_ms=9_950)
    assert core.decide(m.image, 10_050) == []  # down for 100 ms < grace (250)
    heartbeat_all(core, m, 10_060)  # it reached us after all
    core.on_connection_status(1, False, 10_100, down_since_ms=9_950)
    assert core.decide(m.image, 10_250) == []  # down 300 ms, but silent only 190 ms
    assert core.decide(m.image, 10_310) == [FenceBroker(1, 1)]  # down and silent >= grace (250)


def test_fenced_broker_is_unfenced_after_a_fresh_caught_up_heartbeat() -> None:
    m = registered(unfenced=False)
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, now_ms=0)
    assert core.decide(m.image, 10) == []  # registered but never heard: stays fenced
    # Broker 1 reports an old metadata version: not caught up yet.
    reg = m.image.broker(1)
    reply = core.on_heartbeat(m.image, 1, reg.broker_epoch, reg.registered_version - 1, 20)
    assert reply.error == pb.NONE and reply.fenced
    assert core.decide(m.image, 30) == []
    core.on_heartbeat(m.image, 1, reg.broker_epoch, reg.registered_version, 40)
    assert core.decide(m.image, 50) == [UnfenceBroker(1, reg.broker_epoch)]


def test_a_fenced_broker_must_have_seen_its_fencing_before_it_is_unfenced() -> None:
    """A deposed controller cut off from the quorum keeps heartbeating once the network heals,
    with the metadata it had (chaos seed 23: 10-40 s behind, still believing it led partitions).
    Its registration is old, so "caught up to the registration" would unfence it at once; it
    must first have applied its own fencing (which moved its leaderships away)."""
    m = registered()
    apply_all(m, [CreateTopic(TRANSACTION_STATE_TOPIC, 4, 3, internal=True),
                  CreateTopic(CONSUMER_OFFSETS_TOPIC, 2, 3, internal=True), CreateTopic("t", 3, 3)])
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, now_ms=0)
    stale_version = m.image.version  # what broker 1 knows when it is cut off
    heartbeat_all(core, m, 100)
    heartbeats_every_interval(core, m, 200, 1_200, skip=(1,))
    assert core.decide(m.image, 1_200) == [FenceBroker(1, 1)]  # silent > session timeout
    apply_all(m, core.decide(m.image, 1_200))
    assert m.image.broker(1).fenced and m.image.broker(1).registered_version == m.image.version
    assert all(p.leader != 1 for p in m.image.topics["t"].partitions)
    # the heal: broker 1 heartbeats again, still at the version it had when it was cut off
    assert core.on_heartbeat(m.image, 1, 1, stale_version, 1_300).fenced
    assert core.decide(m.image, 1_310) == []
    # one version short of its fencing: still fenced; at it: unfenced
    core.on_heartbeat(m.image, 1, 1, m.image.version - 1, 1_400)
    assert core.decide(m.image, 1_410) == []
    core.on_heartbeat(m.image, 1, 1, m.image.version, 1_500)
    assert core.decide(m.image, 1_510) == [UnfenceBroker(1, 1)]


def test_no_flapping_after_a_fence() -> None:
    m, core = active_core(now_ms=0)
    heartbeat_all(core, m, 600)
    core.on_connection_status(2, False, 600)
    heartbeat_all(core, m, 900, skip=(2,))
    decision = core.decide(m.image, 900)
    assert decision == [FenceBroker(2, 2)]
    apply_all(m, decision)
    # No new heartbeat from broker 2: its last one (600) predates the fence.
    core.on_connection_status(2, True, 950)
    assert core.decide(m.image, 950) == []
    core.on_heartbeat(m.image, 2, 2, m.image.version, 1000)
    assert core.decide(m.image, 1010) == [UnfenceBroker(2, 2)]


def test_a_broker_that_heartbeats_over_a_broken_raft_link_is_fenced_on_the_session_timeout_only() -> None:
    """Chaos finding 5: the Raft link to a live broker stayed down after a restart while its
    heartbeats kept coming; every heartbeat gap >= the grace under load fenced it and the
    next heartbeat unfenced it, for minutes. A heartbeat well after the link's drop now
    contradicts the link until it is up again; a kill after that waits for the session timeout."""
    m, core = active_core(now_ms=0)
    core.on_connection_status(3, False, now_ms=50, down_since_ms=50)
    for now in range(100, 500, 100):  # heartbeats go on after the link dropped
        heartbeat_all(core, m, now)
        assert core.decide(m.image, now + 1) == [], now
    for now in range(500, 5000, 400):  # then 400 ms apart (> grace 250): slow, but alive
        heartbeat_all(core, m, now)
        core.on_connection_status(3, False, now_ms=now + 1, down_since_ms=50)
        assert core.decide(m.image, now + 300) == [], now
    # then it dies: no heartbeat after 4900; only the session timeout (1000 ms) fences it
    heartbeats_every_interval(core, m, 5000, 5900, skip=(3,))
    assert core.decide(m.image, 5800) == []
    assert core.decide(m.image, 5901) == [FenceBroker(3, 3)]


def test_a_link_seen_up_again_is_trusted_again() -> None:
    m, core = active_core(now_ms=0)
    core.on_connection_status(3, False, now_ms=50, down_since_ms=50)
    heartbeat_all(core, m, 400)
    assert core.decide(m.image, 700) == []  # contradicted: no fence on 300 ms of silence
    core.on_connection_status(3, True, now_ms=750)
    heartbeat_all(core, m, 800)
    core.on_connection_status(3, False, now_ms=850, down_since_ms=850)  # a kill: link drops, heartbeats stop
    heartbeat_all(core, m, 900, skip=(3,))
    assert core.decide(m.image, 1060) == []  # link down 210 ms < grace
    assert core.decide(m.image, 1110) == [FenceBroker(3, 3)]  # link down 260 ms, silent 310 ms: the fast path


def test_stale_epoch_heartbeat_asks_to_reregister() -> None:
    m = registered()
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, 0)
    assert core.on_heartbeat(m.image, 1, 99, 0, 10).error == pb.STALE_BROKER_EPOCH
    assert core.on_heartbeat(m.image, 7, 1, 0, 10).error == pb.STALE_BROKER_EPOCH


def test_internal_topics_created_once_enough_brokers_are_unfenced() -> None:
    m = registered(n=2)
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, 0)
    heartbeat_all(core, m, 10)
    assert core.decide(m.image, 20) == []
    epoch = m.apply(RegisterBroker(3, "i3", "h", 9003)).value
    m.apply(UnfenceBroker(3, epoch))
    heartbeat_all(core, m, 30)
    decisions = core.decide(m.image, 40)
    assert decisions == [
        CreateTopic(CONSUMER_OFFSETS_TOPIC, 2, 3, configs=INTERNAL_TOPIC_CONFIGS, internal=True),
        CreateTopic(TRANSACTION_STATE_TOPIC, 4, 3, configs=INTERNAL_TOPIC_CONFIGS, internal=True),
    ]
    apply_all(m, decisions)
    assert m.image.topic(TRANSACTION_STATE_TOPIC).config.retention_ms == -1  # coordinators replay the whole log
    t = m.image.topic(TRANSACTION_STATE_TOPIC)
    assert t.internal and t.replication_factor == 3 and t.config.min_insync_replicas == 2
    assert core.decide(m.image, 50) == []


def test_leaderless_partition_with_a_live_isr_member_is_repaired() -> None:
    m = registered()
    apply_all(m, [CreateTopic(TRANSACTION_STATE_TOPIC, 4, 3, internal=True), CreateTopic(CONSUMER_OFFSETS_TOPIC, 2, 3, internal=True)])
    m.apply(CreateTopic("t", 1, 1))
    p = m.image.partition("t", 0)
    only = p.leader
    m.apply(FenceBroker(only, only))
    assert m.image.partition("t", 0).leader == NO_LEADER
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, 0)
    assert [c for c in core.decide(m.image, 10) if isinstance(c, ElectLeader)] == []
    m.apply(UnfenceBroker(only, only))  # Unfence itself re-elects it
    assert m.image.partition("t", 0).leader == only


def test_an_unreachable_report_is_forgotten_once_the_broker_heartbeats() -> None:
    m, core = active_core(now_ms=0)
    core.on_broker_unreachable(2, now_ms=100)  # a peer's fetch failed once
    heartbeat_all(core, m, 150)
    heartbeats_every_interval(core, m, 200, 500, skip=(2,))
    # Broker 2 has been silent for 350 ms > grace, but nothing says it is down any more.
    assert core.decide(m.image, 500) == []
    heartbeats_every_interval(core, m, 600, 1100, skip=(2,))
    assert core.decide(m.image, 1151) == [FenceBroker(2, 2)]  # the session still expires


def test_leadership_returns_to_the_preferred_replica_after_the_delay() -> None:
    cfg = ControllerConfig(
        internal_partitions={TRANSACTION_STATE_TOPIC: 1, CONSUMER_OFFSETS_TOPIC: 1},
        preferred_leader_rebalance_ms=5000,
    )
    m = registered()
    apply_all(m, [CreateTopic(TRANSACTION_STATE_TOPIC, 1, 3, internal=True), CreateTopic(CONSUMER_OFFSETS_TOPIC, 1, 3, internal=True)])
    m.apply(CreateTopic("t", 3, 3))
    core = ControllerCore(cfg)
    core.on_became_leader(m.image, 0)
    heartbeat_all(core, m, 0)
    assert core.decide(m.image, 0) == []
    p = m.image.partition("t", 0)
    preferred = p.replicas[0]
    m.apply(FenceBroker(preferred, preferred))
    heartbeat_all(core, m, 100)
    assert core.decide(m.image, 100) == [UnfenceBroker(preferred, preferred)]
    m.apply(UnfenceBroker(preferred, preferred))
    p = m.image.partition("t", 0)
    assert p.leader != preferred and preferred not in p.isr
    from semel.cluster.metadata.state import AlterPartition

    m.apply(AlterPartition("t", 0, p.leader, p.leader, p.leader_epoch, p.partition_epoch, p.replicas))
    heartbeat_all(core, m, 200)
    assert core.decide(m.image, 200) == []  # back in the ISR, but only just unfenced
    heartbeat_all(core, m, 5200)
    decisions = core.decide(m.image, 5200)
    p = m.image.partition("t", 0)
    assert ElectLeader("t", 0, p.partition_epoch) in decisions
    apply_all(m, decisions)
    assert m.image.partition("t", 0).leader == preferred
    heartbeat_all(core, m, 5300)
    assert core.decide(m.image, 5300) == []
    off = ControllerCore(ControllerConfig(preferred_leader_rebalance_ms=None))
    off.on_became_leader(m.image, 0)
    assert not [c for c in off.decide(m.image, 10**9) if isinstance(c, ElectLeader)]


def test_a_peer_report_needs_silence_even_from_a_broker_not_heard_yet() -> None:
    m, core = active_core(now_ms=0)
    core.on_broker_unreachable(2, now_ms=0)
    assert core.decide(m.image, 240) == []  # reported 240 ms ago, silent (since we lead) 240 ms
    heartbeat_all(core, m, 245)  # it finds the new controller: the report is void
    assert core.decide(m.image, 400) == []
    core.on_broker_unreachable(2, now_ms=400)
    assert core.decide(m.image, 600) == []  # reported 200 ms ago only
    assert core.decide(m.image, 650) == [FenceBroker(2, 2)]  # reported 250, silent 405


def test_offline_log_dir_fences_a_live_broker_until_a_heartbeat_clears_it() -> None:
    """Kafka's offline log dirs: a broker whose log directory is full or failed keeps heartbeating
    but is fenced (its leaderships move, it leaves the ISRs) and unfenced only once it says so."""
    m, core = active_core(now_ms=0)
    heartbeat_all(core, m, 100)
    assert core.decide(m.image, 100) == []
    epoch2 = m.image.brokers[2].broker_epoch
    core.on_heartbeat(m.image, 2, epoch2, m.image.version, 200, log_dir_offline=True)
    fence = core.decide(m.image, 200)
    assert fence == [FenceBroker(2, epoch2)]
    apply_all(m, fence)
    for now in range(300, 3000, 100):  # alive and heartbeating: still not unfenced while offline
        for b, reg in m.image.brokers.items():
            core.on_heartbeat(m.image, b, reg.broker_epoch, m.image.version, now, log_dir_offline=(b == 2))
        assert UnfenceBroker(2, epoch2) not in core.decide(m.image, now)
    heartbeat_all(core, m, 3000)  # space freed: the next heartbeat no longer says offline
    assert UnfenceBroker(2, epoch2) in core.decide(m.image, 3000)
