"""Property test: random command sequences keep the metadata invariants.

Hypothesis derandomized (seeded from the test) so runs are reproducible; a failure prints the
shrunk command sequence, which replays exactly because the state machine is deterministic.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semel.cluster.metadata.state import (
    NO_LEADER,
    AllocateProducerIds,
    AlterPartition,
    CreateTopic,
    DeleteTopic,
    ElectLeader,
    FenceBroker,
    MetadataStateMachine,
    RegisterBroker,
    UnfenceBroker,
    check_invariants,
)

BROKERS = (1, 2, 3, 4)
TOPICS = ("a", "b")

# Commands are drawn as "intents" resolved against the current image, so most of them are
# valid (a random partition_epoch would almost always just be rejected).
intent = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(BROKERS), st.integers(0, 1)),
    st.tuples(st.just("unfence"), st.sampled_from(BROKERS), st.booleans()),
    st.tuples(st.just("fence"), st.sampled_from(BROKERS), st.booleans()),
    st.tuples(
        st.just("create"), st.sampled_from(TOPICS), st.integers(1, 4), st.integers(1, 4), st.booleans()
    ),
    st.tuples(st.just("delete"), st.sampled_from(TOPICS)),
    st.tuples(
        st.just("alter"),
        st.sampled_from(TOPICS),
        st.integers(0, 3),
        st.lists(st.sampled_from(BROKERS), max_size=4),
        st.booleans(),
    ),
    st.tuples(st.just("elect"), st.sampled_from(TOPICS), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("pids"), st.sampled_from(BROKERS)),
)


def resolve(m: MetadataStateMachine, it: tuple) -> object:
    img = m.image
    kind = it[0]
    if kind == "register":
        return RegisterBroker(it[1], f"inc-{it[1]}-{it[2]}", "h", 1000 + it[1])
    if kind in ("unfence", "fence"):
        reg = img.broker(it[1])
        epoch = reg.broker_epoch if reg is not None and it[2] else 99
        return (UnfenceBroker if kind == "unfence" else FenceBroker)(it[1], epoch)
    if kind == "create":
        configs = (("unclean_leader_election", "true"),) if it[4] else ()
        return CreateTopic(it[1], it[2], it[3], configs)
    if kind == "delete":
        return DeleteTopic(it[1])
    if kind == "alter":
        p = img.partition(it[1], it[2])
        if p is None or p.leader == NO_LEADER:
            return DeleteTopic("missing")
        reg = img.broker(p.leader)
        isr = tuple(dict.fromkeys([p.leader, *it[3]])) if it[4] else tuple(dict.fromkeys(it[3]))
        return AlterPartition(p.topic, p.partition, p.leader, reg.broker_epoch, p.leader_epoch, p.partition_epoch, isr)
    if kind == "elect":
        p = img.partition(it[1], it[2])
        if p is None:
            return DeleteTopic("missing")
        return ElectLeader(p.topic, p.partition, p.partition_epoch, unclean=it[3])
    reg = img.broker(it[1])
    return AllocateProducerIds(it[1], reg.broker_epoch if reg else 0)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(intent, min_size=1, max_size=80))
def test_random_sequences_keep_invariants(intents: list[tuple]) -> None:
    m = MetadataStateMachine()
    replay = MetadataStateMachine()
    # Start from a live cluster so that short sequences already exercise elections and ISRs.
    for b in BROKERS:
        for command in (RegisterBroker(b, f"inc-{b}-0", "h", 1000 + b), UnfenceBroker(b, b)):
            assert m.apply(command).ok and replay.apply(command).ok
    for command in (CreateTopic("a", 4, 3), CreateTopic("b", 2, 2, (("unclean_leader_election", "true"),))):
        assert m.apply(command).ok and replay.apply(command).ok
    seen_epochs: dict[tuple[str, str, int], tuple[int, int]] = {}
    broker_epochs: dict[int, int] = {}
    next_pid = 0
    for it in intents:
        before = m.image
        command = resolve(m, it)
        result = m.apply(command)
        assert replay.apply(command) == result
        img = m.image
        check_invariants(img)
        assert img.version >= before.version
        if not result.ok:
            assert img is before  # a rejected command changes nothing
        for t in img.topics.values():
            for p in t.partitions:
                key = (t.name, t.topic_id, p.partition)
                old = seen_epochs.get(key)
                if old is not None:
                    assert p.leader_epoch >= old[0] and p.partition_epoch >= old[1]
                seen_epochs[key] = (p.leader_epoch, p.partition_epoch)
        for b, reg in img.brokers.items():
            assert reg.broker_epoch >= broker_epochs.get(b, 0)
            broker_epochs[b] = reg.broker_epoch
        if isinstance(command, AllocateProducerIds) and result.ok:
            assert result.value.first_producer_id == next_pid
            next_pid += result.value.size
        assert img.next_producer_id == next_pid
    assert replay.image == m.image
