"""The quorum shell in one process: 3 voters + 1 read-only observer on loopback ports."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from semel.cluster.metadata import AllocateProducerIds, CreateTopic, RegisterBroker, UnfenceBroker
from semel.cluster.quorum import MetadataQuorum, MetadataSubmitError, QuorumConfig, VoterSpec
from semel.v1 import common_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        n.close()


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
