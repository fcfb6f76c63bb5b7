"""The quorum shell in one process: 3 voters + 1 read-only observer on loopback ports."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from semel.cluster.metadata.quorum import (
    MetadataQuorum,
    MetadataSubmitError,
    QuorumConfig,
    VoterSpec,
)
from semel.cluster.metadata.state import (
    AllocateProducerIds,
    CreateTopic,
    RegisterBroker,
    UnfenceBroker,
)
from semel.cluster.tooling.ports import free_port
from semel.v1 import common_pb2 as pb


async def until(predicate, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def quorum_nodes(tmp_path: Path):
    voters = tuple(VoterSpec(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3))
    nodes = [MetadataQuorum(QuorumConfig(v.node_id, v.raft_address, voters, tmp_path / f"n{v.node_id}")) for v in voters]
    observer = MetadataQuorum(QuorumConfig(4, None, voters, tmp_path / "observer"))
    yield nodes, observer
    for n in [*nodes, observer]:
        n.close(wait=True)


def test_observer_listeners_and_retries(quorum_nodes) -> None:
    nodes, observer = quorum_nodes

    async def scenario() -> None:
        assert not observer.config.is_voter and nodes[0].config.is_voter
        loop_thread = threading.get_ident()
        deltas = []

        def on_change(delta, image) -> None:
            assert threading.get_ident() == loop_thread  # posted to the loop, not the tick thread
            deltas.append((delta, image))

        observer.add_listener(on_change)
        await until(lambda: any(n.is_leader() for n in nodes))
        leader = next(n for n in nodes if n.is_leader())
        await until(lambda: observer.active_controller() is not None)
        assert observer.active_controller().raft_address == leader.leader_raft_address()

        for b in (1, 2, 3):
            epoch = (await nodes[b - 1].submit(RegisterBroker(b, f"i{b}", "h", 9000 + b))).value
            assert (await observer.submit(UnfenceBroker(b, epoch))).ok  # observers may submit
        created = await observer.submit(CreateTopic("t", 3, 3))
        assert created.ok
        await until(lambda: observer.image().topic("t") is not None)
        await until(lambda: observer.image() == leader.image())
        await until(lambda: bool(deltas) and deltas[-1][1].topic("t") is not None)
        assert any(("t", 2) in d.partitions_changed for d, _ in deltas)
        versions = [image.version for _, image in deltas]
        assert versions == sorted(set(versions))  # in order, no repeats

        late = []
        observer.add_listener(lambda delta, image: late.append((delta, image)))
        await until(lambda: bool(late))
        assert "t" in late[0][0].topics_created and late[0][1].topic("t") is not None

        # A retried command id returns the first result and allocates nothing new.
        first = await nodes[1].submit(AllocateProducerIds(1, 1, command_id="pid-1"))
        again = await nodes[2].submit(AllocateProducerIds(1, 1, command_id="pid-1"))
        assert first == again and leader.image().next_producer_id == 1000

        # Leadership listeners fire on the loop when this node loses/gains leadership.
        changes = []
        for n in nodes:
            n.add_leadership_listener(lambda is_leader, n=n: changes.append((n.config.node_id, is_leader)))
        leader.close()
        others = [n for n in nodes if n is not leader]
        await until(lambda: any(n.is_leader() for n in others))
        await until(lambda: any(is_leader for _, is_leader in changes))
        r = await observer.submit(AllocateProducerIds(2, 2), timeout_s=3)
        assert r.ok and r.value.first_producer_id == 1000

        with pytest.raises(MetadataSubmitError) as info:
            await leader.submit(AllocateProducerIds(2, 2))
        assert info.value.code == pb.METADATA_QUORUM_UNAVAILABLE and not info.value.outcome_unknown

    asyncio.run(scenario())


def test_controller_api_on_three_voters(quorum_nodes) -> None:
    from semel.cluster.metadata.controller import Controller, ControllerConfig
    from semel.internal_topics import CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC

    nodes, _ = quorum_nodes

    async def scenario() -> None:
        config = ControllerConfig(internal_partitions={TRANSACTION_STATE_TOPIC: 3, CONSUMER_OFFSETS_TOPIC: 2})
        controllers = [Controller(n, config) for n in nodes]
        for c in controllers:
            c.start()
            assert c.config.internal_replication_factor == 3  # min(3, voters)
        await until(lambda: sum(c.is_active() for c in controllers) == 1)
        active = next(c for c in controllers if c.is_active())
        passive = next(c for c in controllers if not c.is_active())
        assert passive.on_heartbeat(1, 1, 0).error == pb.NOT_LEADER_OR_FOLLOWER
        assert active.quorum.active_controller().node_id == active.quorum.config.node_id

        epochs = {}
        for b in (1, 2, 3):
            # Registration works through any node; heartbeats go to the active controller.
            error, epochs[b] = await passive.register_broker(b, f"i{b}", "127.0.0.1", 9000 + b, nodes[b - 1].config.raft_address)
            assert error == pb.NONE
        assert active.on_heartbeat(9, 1, 0).error == pb.STALE_BROKER_EPOCH

        async def heartbeats() -> None:
            while True:
                for b in (1, 2, 3):
                    await until(lambda: active.quorum.image().broker(b) is not None)
                    active.on_heartbeat(b, epochs[b], active.quorum.image().version)
                await asyncio.sleep(0.05)

        beating = asyncio.create_task(heartbeats())
        await until(lambda: active.quorum.image().unfenced_brokers() == (1, 2, 3))
        await until(lambda: TRANSACTION_STATE_TOPIC in active.quorum.image().topics)
        await until(lambda: CONSUMER_OFFSETS_TOPIC in active.quorum.image().topics)
        txn = active.quorum.image().topic(TRANSACTION_STATE_TOPIC)
        assert txn.internal and len(txn.partitions) == 3 and txn.config.min_insync_replicas == 2

        error, topic = await passive.create_topic("orders", 2, 3, (("retention_ms", "60000"),))
        assert error == pb.NONE and topic.config.retention_ms == 60000
        assert (await active.create_topic("orders", 2, 3))[0] == pb.TOPIC_ALREADY_EXISTS
        p = topic.partitions[0]
        error, new = await active.alter_partition(
            "orders", 0, p.leader, epochs[p.leader], p.leader_epoch, p.partition_epoch, (p.leader,)
        )
        assert error == pb.NONE and new.isr == (p.leader,)
        error, stale = await active.alter_partition(
            "orders", 0, p.leader, epochs[p.leader], p.leader_epoch, p.partition_epoch, p.replicas
        )
        assert error == pb.STALE_PARTITION_EPOCH and stale is None
        error, block = await passive.allocate_producer_ids(2, epochs[2])
        assert error == pb.NONE and block.size == 1000
        assert await active.delete_topic("orders") == pb.NONE

        # Broker 3 stops heartbeating: fenced after the session timeout, leads nothing.
        beating.cancel()
        loop = asyncio.get_running_loop()
        stopped = loop.time()

        async def others() -> None:
            while True:
                for b in (1, 2):
                    active.on_heartbeat(b, epochs[b], active.quorum.image().version)
                await asyncio.sleep(0.05)

        beating = asyncio.create_task(others())
        await until(lambda: active.quorum.image().broker(3).fenced, 3)
        assert loop.time() - stopped >= config.session_timeout_ms / 1000 - 0.1
        for t in active.quorum.image().topics.values():
            assert all(part.leader != 3 and 3 not in part.isr for part in t.partitions)
        beating.cancel()
        for c in controllers:
            await c.stop()

    asyncio.run(scenario())


def test_a_failing_handler_fails_the_command_not_the_log(tmp_path: Path, monkeypatch) -> None:
    from semel.cluster.metadata.state import DeleteTopic, MetadataStateMachine

    def broken(self, command):
        raise RuntimeError("bug")

    monkeypatch.setattr(MetadataStateMachine, "_delete_topic", broken)
    voter = VoterSpec(1, f"127.0.0.1:{free_port()}", "unused:1")
    node = MetadataQuorum(QuorumConfig(1, voter.raft_address, (voter,), tmp_path / "single"))
    try:

        async def scenario() -> None:
            await until(node.is_leader)
            assert (await node.submit(DeleteTopic("t"))).error == pb.UNKNOWN_SERVER_ERROR
            assert (await node.submit(RegisterBroker(1, "i", "h", 1))).ok  # the log keeps moving

        asyncio.run(scenario())
    finally:
        node.close(wait=True)


def test_a_leader_whose_peers_fall_silent_appends_a_bounded_suffix(tmp_path: Path) -> None:
    """Peers connected but silent (a `timeout` toxic, a paused process): the leader cannot commit
    until it steps down. Chaos seed 23: its brokers kept submitting ISR changes meanwhile, and on
    rejoin pysyncobj walks such a divergent suffix back one entry per append round (~50 ms), so
    hundreds of entries kept the deposed controller stale for 10-40 s. Submits now wait once
    MAX_UNCOMMITTED_METADATA_ENTRIES are outstanding, and fail as certainly not applied."""
    from semel import limits

    voters = tuple(VoterSpec(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3))
    nodes = [MetadataQuorum(QuorumConfig(v.node_id, v.raft_address, voters, tmp_path / f"n{v.node_id}",
                                         leader_fallback_timeout_s=30.0)) for v in voters]
    try:
        async def scenario() -> None:
            await until(lambda: any(n.is_leader() for n in nodes))
            leader = next(n for n in nodes if n.is_leader())
            assert (await leader.submit(RegisterBroker(1, "i1", "h", 9001))).ok
            assert leader.uncommitted_entries() == 0
            transport = leader._SyncObj__transport
            send = transport.send
            transport.send = lambda node, message: True  # the peers hear nothing more from it
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, leader.uncommitted_entries())
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            try:
                outcomes = await asyncio.gather(
                    *(leader.submit(AllocateProducerIds(1, 1), timeout_s=1.0) for _ in range(200)),
                    return_exceptions=True)
            finally:
                transport.send = send
                watcher.cancel()
            assert all(isinstance(o, MetadataSubmitError) for o in outcomes)
            # (the others elect a new leader within ~0.4 s, which truncates the old one's suffix)
            assert 0 < peak <= limits.MAX_UNCOMMITTED_METADATA_ENTRIES, peak
            # the others elected a new leader meanwhile: the old one's suffix is walked back and replaced
            await until(lambda: leader.uncommitted_entries() == 0, timeout_s=10)
            await until(lambda: all(n.image() == nodes[0].image() for n in nodes), timeout_s=10)

        asyncio.run(scenario())
    finally:
        for n in nodes:
            n.close(wait=True)
