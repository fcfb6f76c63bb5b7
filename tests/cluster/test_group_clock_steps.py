"""The group coordinator's shell (`GroupCoordinator`) on an injected clock: session deadlines
are monotonic. A 10-minute step of the wall clock, forward or back, neither expires a live member
nor keeps a dead one (docs/design.md, "Clocks"); offset-commit timestamps stay wall-clock."""

from __future__ import annotations

import asyncio

import pytest
from semel import internal_topics
from semel.cluster.broker import group_service
from semel.cluster.broker.process import BrokerConfig
from semel.cluster.broker.replica_manager import ReplicaManager
from semel.cluster.broker.storage_adapter import open_replica_store
from semel.cluster.metadata import state as md
from semel.coordinator.group_state import GroupConfig, HeartbeatRequest
from semel.coordinator.offsets import CommitRequest, PartitionCommit
from semel.storage.disk_executor import DiskExecutor
from semel.storage.kv import KvStore
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2 as pb

from tests.cluster.fake_time import FakeClock, run_ready, step_wall

OFFSETS = internal_topics.CONSUMER_OFFSETS_TOPIC
SESSION_MS = 10_000
STEP_MS = 10 * 60_000


def image() -> md.MetadataImage:
    brokers = {1: md.BrokerRegistration(1, "inc1", "127.0.0.1", 9001, None, 1, False, 1)}
    offsets = md.Topic(OFFSETS, "00112233445566778899", True, 1, md.TopicConfig(min_insync_replicas=1),
                       (md.PartitionState(OFFSETS, 0, (1,), (1,), 1, 0, 1),))
    data = md.Topic("t", "99887766554433221100", False, 1, md.TopicConfig(min_insync_replicas=1),
                    (md.PartitionState("t", 0, (1,), (1,), 1, 0, 1),))
    return md.MetadataImage(version=1, brokers=brokers, topics={OFFSETS: offsets, "t": data})


class FakeQuorum:
    def __init__(self, img: md.MetadataImage) -> None:
        self.img = img

    def image(self) -> md.MetadataImage:
        return self.img


class FakeBroker:
    """A `host.CoordinatorHost` whose replica manager (and so the coordinator) reads `clock`."""

    def __init__(self, tmp_path, kv: KvStore, clock: FakeClock) -> None:
        self.config = BrokerConfig(broker_id=1)
        self.quorum = FakeQuorum(image())
        self.disk = DiskExecutor()
        self.kv = kv
        self.rm = ReplicaManager(1, tmp_path, 10_000, lambda d, t, p: open_replica_store(d, t, p, kv=kv),
                                 clock=clock, disk=self.disk)
        self.rm.broker_epoch = 1


@pytest.fixture
def kv(tmp_path):
    store = KvStore.open(tmp_path / "kv")
    yield store
    store.close()


async def settle(coordinator: group_service.GroupCoordinator) -> None:
    """Let the coordinator append, commit (RF 1) and complete what was submitted."""
    for _ in range(20):
        await run_ready()
        if not coordinator._internal and not coordinator._waiting:
            return
    raise AssertionError("the coordinator did not settle")


def test_wall_clock_steps_neither_expire_a_live_member_nor_keep_a_dead_one(tmp_path, kv):
    clock = FakeClock()
    b = FakeBroker(tmp_path, kv, clock)
    coordinator = group_service.GroupCoordinator(b, GroupConfig(session_timeout_ms=SESSION_MS,
                                                                heartbeat_interval_ms=1_000))

    async def heartbeat(loaded, req: HeartbeatRequest):
        return await coordinator.submit(loaded, req.group_id, lambda shard, at_ms: shard.groups.prepare_heartbeat(
            req, at_ms, coordinator.partition_counts(), "member-a"))

    async def members(loaded) -> list[str]:
        coordinator.tick()
        await settle(coordinator)
        group = loaded.runtime.shard.groups.group("g")
        return [] if group is None else sorted(group.members)

    async def main() -> None:
        b.rm.reconcile(b.quorum.image())
        await b.rm.wait_opened()
        await coordinator.loading[0]
        loaded = coordinator.loaded[0]
        joined = await heartbeat(loaded, HeartbeatRequest("g", "", 0, ("t",), owned=frozenset()))
        assert joined.error == pb.NONE and joined.result.member_id == "member-a", joined
        epoch = joined.result.member_epoch

        # A live member (heartbeating every 1 s of monotonic time) across a +10 min step.
        clock.advance(1_000)
        step_wall(clock, +STEP_MS)
        assert await members(loaded) == ["member-a"], "a forward wall step expired a live member"
        for _ in range(3):
            clock.advance(SESSION_MS // 2)
            r = await heartbeat(loaded, HeartbeatRequest("g", "member-a", epoch))
            assert r.error == pb.NONE, r
            assert await members(loaded) == ["member-a"]

        # Offset commits stay stamped with the (stepped) wall clock, as Kafka's.
        commit = await coordinator.submit(loaded, "g", lambda shard, at_ms: shard.offsets.prepare_commit(
            CommitRequest("g", "member-a", epoch, (PartitionCommit("t", 0, 5),)),
            shard.groups, at_ms))
        assert commit.error == pb.NONE, commit
        stored = loaded.runtime.shard.offsets.committed["g"][TopicPartition("t", 0)]
        assert stored.commit_timestamp_ms == clock.wall_clock_ms()

        # A dead member (no heartbeat) across a -10 min step: gone once its session passed on
        # the monotonic clock, though the wall clock is now behind its last heartbeat.
        step_wall(clock, -2 * STEP_MS)
        clock.advance(SESSION_MS - 1)
        assert await members(loaded) == ["member-a"], "expired before its session timeout"
        clock.advance(1)
        assert await members(loaded) == [], "a backward wall step kept a dead member"
        await coordinator.stop()
        b.rm.close()

    asyncio.run(main())
