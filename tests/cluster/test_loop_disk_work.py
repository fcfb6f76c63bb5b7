"""The broker's event loop never waits on a disk (docs/design.md, "Threads"): opening a replica
(log recovery), closing and deleting one, and the coordinators' loads run on the disk
executor's threads while the loop goes on answering. Each test asserts the thread that did
the work, and that the loop ran while it was held."""

from __future__ import annotations

import asyncio
import threading

import pytest
from semel import internal_topics
from semel.cluster.broker import group_service, txn_coordinator_shell
from semel.cluster.broker.process import BrokerConfig
from semel.cluster.broker.replica_manager import ReplicaManager, Role, SystemClock
from semel.cluster.broker.storage_adapter import (
    PartitionStoreAdapter,
    open_replica_store,
)
from semel.cluster.metadata import state as md
from semel.coordinator.group_state import GroupConfig
from semel.storage import disk_executor
from semel.storage.disk_executor import DiskExecutor
from semel.storage.kv import KvStore

DISK = disk_executor.THREAD_NAME_PREFIX


def image(topic: str = "t", topic_id: str = "00112233445566778899", version: int = 1,
          present: bool = True) -> md.MetadataImage:
    brokers = {1: md.BrokerRegistration(1, "inc1", "127.0.0.1", 9001, None, 1, False, 1)}
    topics = {}
    if present:
        part = md.PartitionState(topic, 0, (1,), (1,), 1, 0, version)
        topics[topic] = md.Topic(topic, topic_id, False, 1, md.TopicConfig(min_insync_replicas=1), (part,))
    return md.MetadataImage(version=version, brokers=brokers, topics=topics)


@pytest.fixture
def kv(tmp_path):
    store = KvStore.open(tmp_path / "kv")
    yield store
    store.close()


class RecordingStore(PartitionStoreAdapter):
    """The partition store, recording which thread opened and closed it; `gate` holds the open."""

    threads: dict[str, str] = {}
    gate = threading.Event()

    @classmethod
    def opener(cls, kv: KvStore):
        def open_store(directory, topic, partition):
            cls.threads["open"] = threading.current_thread().name
            assert cls.gate.wait(10)
            return cls(open_replica_store(directory, topic, partition, kv=kv).store)

        return open_store

    def close(self) -> None:
        RecordingStore.threads["close"] = threading.current_thread().name
        super().close()


def existing_replica_dir(tmp_path, topic: str = "t") -> None:
    """A replica with data from before a restart: its open recovers (a new one opens inline)."""
    (tmp_path / "logs" / f"{topic}-0.001122334455").mkdir(parents=True)


def test_a_replica_opens_and_is_deleted_on_a_disk_thread_while_the_loop_runs(tmp_path, kv):
    existing_replica_dir(tmp_path)
    RecordingStore.threads.clear()
    RecordingStore.gate.clear()
    disk = DiskExecutor()
    rm = ReplicaManager(1, tmp_path, 10_000, RecordingStore.opener(kv), clock=SystemClock(), disk=disk)
    rm.broker_epoch = 1

    async def main() -> None:
        rm.reconcile(image())
        assert rm.get("t", 0) is None  # opening: not hosted yet
        ticks = 0
        while "open" not in RecordingStore.threads:  # the loop runs while the open is held
            ticks += 1
            await asyncio.sleep(0)
        RecordingStore.gate.set()
        await rm.wait_opened()
        p = rm.get("t", 0)
        assert p is not None and p.role == Role.LEADER  # the newest image's role, once open
        directory = p.directory
        rm.reconcile(image(present=False, version=2))  # the topic is deleted
        assert rm.get("t", 0) is None
        await asyncio.wrap_future(disk.submit(directory, lambda: None, "barrier"))
        assert not directory.exists()

    asyncio.run(main())
    assert RecordingStore.threads["open"].startswith(DISK)
    assert RecordingStore.threads["close"].startswith(DISK)


def test_a_topic_deleted_while_its_replica_opens_is_closed_and_deleted(tmp_path, kv):
    existing_replica_dir(tmp_path)
    RecordingStore.threads.clear()
    RecordingStore.gate.clear()
    disk = DiskExecutor()
    rm = ReplicaManager(1, tmp_path, 10_000, RecordingStore.opener(kv), clock=SystemClock(), disk=disk)
    rm.broker_epoch = 1

    async def main() -> None:
        rm.reconcile(image())
        while "open" not in RecordingStore.threads:
            await asyncio.sleep(0)
        rm.reconcile(image(present=False, version=2))
        RecordingStore.gate.set()
        await rm.wait_opened()
        assert rm.get("t", 0) is None
        assert disk.wait_idle()
        assert not list((tmp_path / "logs").iterdir())

    asyncio.run(main())
    assert RecordingStore.threads["close"].startswith(DISK)


def test_a_brand_new_replica_opens_inline_and_leads_at_once(tmp_path, kv):
    """Nothing to recover: the leader of a topic just created serves as soon as its image says so."""
    RecordingStore.threads.clear()
    RecordingStore.gate.set()
    rm = ReplicaManager(1, tmp_path, 10_000, RecordingStore.opener(kv), clock=SystemClock(),
                        disk=DiskExecutor())
    rm.broker_epoch = 1

    async def main() -> None:
        rm.reconcile(image())
        p = rm.get("t", 0)
        assert p is not None and p.role == Role.LEADER
        rm.close()

    asyncio.run(main())
    assert RecordingStore.threads["open"] == threading.current_thread().name


class FakeQuorum:
    def __init__(self, img: md.MetadataImage) -> None:
        self.img = img

    def image(self) -> md.MetadataImage:
        return self.img


class FakeBroker:
    """A `host.CoordinatorHost` for the coordinator shells: config, quorum, rm, disk, kv."""

    def __init__(self, tmp_path, img: md.MetadataImage, kv: KvStore) -> None:
        self.config = BrokerConfig(broker_id=1)
        self.quorum = FakeQuorum(img)
        self.disk = DiskExecutor()
        self.kv = kv
        self.rm = ReplicaManager(1, tmp_path, 10_000, lambda d, t, p: open_replica_store(d, t, p, kv=kv),
                                 clock=SystemClock(), disk=self.disk)
        self.rm.broker_epoch = 1


def on_which_thread(module, name: str, threads: list[str], monkeypatch) -> None:
    real = getattr(module, name)

    def wrapped(*a, **k):
        threads.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


def test_the_group_coordinator_loads_on_a_disk_thread(tmp_path, kv, monkeypatch):
    threads: list[str] = []
    on_which_thread(group_service, "load_shard", threads, monkeypatch)
    img = image(internal_topics.CONSUMER_OFFSETS_TOPIC)
    existing_replica_dir(tmp_path, internal_topics.CONSUMER_OFFSETS_TOPIC)  # a restart: the open recovers off the loop
    b = FakeBroker(tmp_path, img, kv)
    coordinator = group_service.GroupCoordinator(b, GroupConfig())

    async def main() -> None:
        b.rm.reconcile(img)
        await b.rm.wait_opened()
        await coordinator.loading[0]
        assert 0 in coordinator.loaded
        await coordinator.stop()
        b.rm.close()

    asyncio.run(main())
    assert len(threads) == 1 and threads[0].startswith(DISK)


def test_the_group_coordinator_keeps_its_view_in_the_hosts_rocksdb(tmp_path, kv):
    """Through `CoordinatorHost.kv` (the broker's public property); in memory only before the
    broker opened RocksDB."""
    b = FakeBroker(tmp_path, image(internal_topics.CONSUMER_OFFSETS_TOPIC), kv)
    coordinator = group_service.GroupCoordinator(b, GroupConfig())
    assert isinstance(coordinator._view_backend(0), group_service.KvViewBackend)
    b.kv = None  # type: ignore[assignment]
    assert isinstance(coordinator._view_backend(1), group_service.MemoryViewBackend)
    b.rm.close()


def test_the_transaction_coordinator_loads_on_a_disk_thread(tmp_path, kv, monkeypatch):
    threads: list[str] = []
    on_which_thread(txn_coordinator_shell, "load_partition", threads, monkeypatch)
    img = image(internal_topics.TRANSACTION_STATE_TOPIC)
    existing_replica_dir(tmp_path, internal_topics.TRANSACTION_STATE_TOPIC)
    b = FakeBroker(tmp_path, img, kv)
    shell = txn_coordinator_shell.TxnCoordinatorShell(b)

    async def main() -> None:
        shell.b.rm.add_role_listener(shell._on_role)
        b.rm.reconcile(img)
        await b.rm.wait_opened()
        await shell._loads[0]
        assert 0 in shell.core.loaded_partitions()
        await shell.stop()
        b.rm.close()

    asyncio.run(main())
    assert b.disk.wait_idle()
    assert len(threads) == 1 and threads[0].startswith(DISK)
