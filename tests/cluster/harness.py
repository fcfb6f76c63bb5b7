"""Real multi-broker clusters for tests: broker subprocesses on free loopback ports in a tmp dir.

    from tests.cluster.harness import Cluster

    with Cluster(tmp_path, brokers=3) as cluster:      # started and ready (or raises)
        cluster.bootstrap                              # "127.0.0.1:p1,127.0.0.1:p2,..."
        cluster.kill(2); cluster.restart(2)            # kill -9, start again, wait ready
        cluster.pause(3); cluster.resume(3)            # SIGSTOP / SIGCONT
        cluster.leader_of("topic", 0)                  # broker id from fresh metadata
        cluster.admin().create_topic("t", 3, 3)

Or as a pytest fixture (`real_cluster` in tests/cluster/conftest.py, or `cluster_fixture(n)`
in another folder's conftest). Teardown always stops every broker (SIGTERM, then SIGKILL) -
even when the test failed or the start itself failed - and a failed test gets the tail of
every broker log in its report. Brokers also die with the test process (PDEATHSIG), so a
crashed pytest leaves no process behind.

Process management is `semel.cluster.tooling.local_cluster.LocalCluster` (the code behind
`semel cluster up`); this module adds free ports, tmp dirs and log collection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from semel.client import Admin, Consumer, ConsumerRecord, PartitionInfo, Producer
from semel.client.errors import InvalidReplicationFactorError
from semel.cluster.tooling.local_cluster import BrokerSpec, LocalCluster
from semel.cluster.tooling.ports import free_ports
from semel.storage import power_cut as power_cut_layer

READY_TIMEOUT_S = 60.0
SETTLE_QUIET_S = 1.0     # metadata unchanged this long after start = the cluster has settled


def create_topic_when_brokers_alive(
    admin: Admin, name: str, partitions: int, replication_factor: int | None, configs: dict[str, str] | None,
    timeout_s: float = 30.0,
) -> None:
    """create_topic, retrying INVALID_REPLICATION_FACTOR while a broker is briefly fenced
    (a loaded machine can delay heartbeats right after start-up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.create_topic(name, partitions, replication_factor, configs, timeout_ms=30_000)
            return
        except InvalidReplicationFactorError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _proc_state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, T, Z, ...); None when unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return None


class Cluster:
    """N real brokers; see the module docstring."""

    def __init__(
        self,
        tmp_dir: str | Path,
        brokers: int = 3,
        extra_args: Sequence[str] = (),
        start: bool = True,
        ready_timeout_s: float = READY_TIMEOUT_S,
        kafka: bool = False,
        power_cut: bool = False,
    ) -> None:
        """`power_cut`: the brokers run the test-only power-cut layer (`semel.storage.power_cut`),
        so `power_cut()` can cut them."""
        self.dir = Path(tmp_dir)
        ports = free_ports((3 if kafka else 2) * brokers)
        specs = [
            BrokerSpec(i + 1, "127.0.0.1", ports[i], ports[brokers + i], self.dir / f"broker-{i + 1}",
                       kafka_port=ports[2 * brokers + i] if kafka else 0)
            for i in range(brokers)
        ]
        env = dict(os.environ, **{power_cut_layer.ENV: "1"}) if power_cut else None
        self._cluster = LocalCluster(specs, self.dir, extra_args, env=env)
        self.ready_timeout_s = ready_timeout_s
        self._clients: list[Admin | Producer | Consumer] = []
        if start:
            self.start()

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._cluster.start(timeout_s=self.ready_timeout_s)
            self.settle()
        except BaseException:
            self.stop()
            raise

    def settle(self, quiet_s: float = SETTLE_QUIET_S, timeout_s: float = 15.0) -> None:
        """Wait until the metadata has not changed for `quiet_s` with every running broker
        unfenced. Right after start-up the controller creates internal topics and a busy
        machine can fence a broker for a moment; tests that start then would see leader
        changes they did not cause."""
        deadline = time.monotonic() + timeout_s
        running = set(self.running())
        last_version, quiet_since = None, time.monotonic()
        with Admin(self._live_bootstrap(), request_timeout_ms=2000) as admin:
            while time.monotonic() < deadline:
                try:
                    cluster = admin.describe_cluster(timeout_ms=2000)
                except Exception:
                    last_version, quiet_since = None, time.monotonic()
                    time.sleep(0.05)
                    continue
                unfenced = {b.broker_id for b in cluster.brokers if not b.fenced}
                if cluster.metadata_version != last_version or not running <= unfenced:
                    last_version, quiet_since = cluster.metadata_version, time.monotonic()
                elif time.monotonic() - quiet_since >= quiet_s:
                    return
                time.sleep(0.05)
        # Not quiet within the timeout: go on; the tests cope with leader changes anyway.

    def stop(self) -> dict[int, int | None]:
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()
        return self._cluster.stop(grace_s=5)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses ------------------------------------------------------------------
    @property
    def kafka_bootstrap(self) -> str:
        """The brokers' Kafka-protocol addresses (Cluster(kafka=True))."""
        return self._cluster.kafka_bootstrap

    def kafka_address(self, broker_id: int) -> str:
        return self._cluster.brokers[broker_id].spec.kafka_address

    @property
    def bootstrap(self) -> str:
        return self._cluster.bootstrap

    @property
    def broker_ids(self) -> list[int]:
        return list(self._cluster.brokers)

    def address(self, broker_id: int) -> str:
        return self._cluster.address(broker_id)

    def pid(self, broker_id: int) -> int | None:
        return self._cluster.brokers[broker_id].pid

    def running(self) -> list[int]:
        return self._cluster.running()

    # --- faults ---------------------------------------------------------------------
    def kill(self, broker_id: int) -> None:
        """kill -9."""
        self._cluster.kill(broker_id)

    def terminate(self, broker_id: int) -> int | None:
        """SIGTERM and wait (SIGKILL after 5 s); returns the exit code."""
        return self._cluster.terminate(broker_id, grace_s=5)

    def pause(self, broker_id: int, timeout_s: float = 5.0) -> None:
        """SIGSTOP; returns once the kernel reports the process stopped (Linux)."""
        self._cluster.pause(broker_id)
        pid = self.pid(broker_id)
        deadline = time.monotonic() + timeout_s
        while pid is not None and _proc_state(pid) not in ("T", "t", None):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"broker {broker_id} (pid {pid}) did not stop within {timeout_s} s")
            time.sleep(0.005)

    def resume(self, broker_id: int) -> None:
        self._cluster.resume(broker_id)

    def restart(self, broker_id: int, kill: bool = True) -> None:
        """(kill -9 by default, else SIGTERM), start again on the same ports and dir, wait ready."""
        self._cluster.restart(broker_id, self.ready_timeout_s, kill=kill)
        self.settle()

    def power_cut(self, broker_ids: Sequence[int], seed: int, torn: bool = True) -> dict[int, dict[str, int]]:
        """The brokers lose power together (Cluster(power_cut=True)), then start again."""
        stats = self._cluster.power_cut(broker_ids, seed, torn=torn, timeout_s=self.ready_timeout_s)
        self.settle()
        return stats

    def start_broker(self, broker_id: int) -> None:
        broker = self._cluster.brokers[broker_id]
        broker.start()
        self._cluster.wait_ready(self.ready_timeout_s, [broker_id])

    # --- clients and queries ----------------------------------------------------------
    def admin(self, **options: object) -> Admin:
        admin = Admin(self._live_bootstrap(), **options)  # type: ignore[arg-type]
        self._clients.append(admin)
        return admin

    def producer(self, **options: object) -> Producer:
        producer = Producer(self._live_bootstrap(), **options)  # type: ignore[arg-type]
        self._clients.append(producer)
        return producer

    def consumer(self, **options: object) -> Consumer:
        consumer = Consumer(self._live_bootstrap(), **options)  # type: ignore[arg-type]
        self._clients.append(consumer)
        return consumer

    def _live_bootstrap(self) -> str:
        running = self.running()
        return ",".join(self.address(i) for i in (running or self.broker_ids))

    def leader_of(self, topic: str, partition: int, timeout_s: float = 10.0, exclude: Sequence[int] = ()) -> int:
        """The current leader's broker id from fresh metadata (waits while there is none,
        or while it is one of `exclude`, e.g. a broker just killed)."""
        deadline = time.monotonic() + timeout_s
        with Admin(self._live_bootstrap(), request_timeout_ms=2000) as admin:
            while True:
                try:
                    info = admin.metadata([topic]).partition(topic, partition)
                except Exception:
                    info = None
                if info is not None and info.leader_id >= 0 and info.leader_id not in exclude:
                    return info.leader_id
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no leader for {topic}-{partition} within {timeout_s} s")
                time.sleep(0.05)

    def partition_info(self, topic: str, partition: int) -> PartitionInfo | None:
        """Leader, leader epoch, replicas and ISR of one partition from fresh metadata."""
        with Admin(self._live_bootstrap(), request_timeout_ms=2000) as admin:
            return admin.metadata([topic]).partition(topic, partition)

    def wait_for_isr(self, topic: str, partition: int, size: int, timeout_s: float = 30.0) -> PartitionInfo:
        """Waits until the partition has a leader and `size` in-sync replicas (e.g. after a
        restarted broker caught up); returns that metadata."""
        deadline = time.monotonic() + timeout_s
        info: PartitionInfo | None = None
        while time.monotonic() < deadline:
            try:
                info = self.partition_info(topic, partition)
            except Exception:
                info = None
            if info is not None and info.leader_id >= 0 and len(info.isr) == size:
                return info
            time.sleep(0.05)
        raise TimeoutError(f"{topic}-{partition} has ISR {info.isr if info else '?'}, not {size} replicas, "
                           f"after {timeout_s} s")

    def read_all(self, topic: str, timeout_s: float = 30.0, **consumer_options: object) -> list[ConsumerRecord]:
        """Every record of every partition from the beginning up to the high watermark seen when
        the read started (read_uncommitted unless `isolation_level` is given)."""
        bootstrap = self._live_bootstrap()
        with Consumer(bootstrap, **consumer_options) as probe:  # type: ignore[arg-type]
            partitions = [info.partition for info in probe.partitions_for(topic, timeout_ms=int(timeout_s * 1000))]
            probe.assign([(topic, p) for p in partitions])
            probe.seek_to_end()  # ListOffsets(latest) at each leader
            ends = {p: probe.position(topic, p, timeout_ms=int(timeout_s * 1000)) for p in partitions}
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        with Consumer(bootstrap, auto_offset_reset="earliest", **consumer_options) as consumer:  # type: ignore[arg-type]
            consumer.assign([(topic, p) for p in partitions])
            while any(consumer.position(topic, p) < ends.get(p, 0) for p in partitions):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"read_all({topic!r}): {len(out)} records after {timeout_s} s")
                out.extend(consumer.poll(1000))
        return out

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int | None = None,
                     **configs: str) -> None:
        """Create a topic and wait until every partition has a leader."""
        with Admin(self._live_bootstrap()) as admin:
            create_topic_when_brokers_alive(admin, name, partitions, replication_factor, configs or None)
        for p in range(partitions):
            self.leader_of(name, p, timeout_s=30)

    # --- logs -----------------------------------------------------------------------
    def log_path(self, broker_id: int) -> Path:
        return self._cluster.brokers[broker_id].log_path

    def logs(self, lines: int = 60) -> str:
        """The tail of every broker's log file, for failure reports."""
        out = []
        for broker_id in self.broker_ids:
            path = self.log_path(broker_id)
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            out.append(f"----- broker {broker_id} ({path}) -----\n" + "\n".join(text))
        return "\n".join(out)


def cluster_fixture(brokers: int = 3, extra_args: Sequence[str] = (), scope: str = "function",  # noqa: ANN201
                    kafka: bool = False):
    """A pytest fixture factory: `real_cluster3 = cluster_fixture(3)` in a conftest.py.

    With scope="module" one cluster serves every test of a module (tests must then leave
    no broker killed or paused). Teardown stops every broker whatever happened."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        cluster = Cluster(tmp_path_factory.mktemp("cluster"), brokers=brokers, extra_args=extra_args, start=False,
                          kafka=kafka)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()

    return _fixture


def attach_cluster_logs(item: pytest.Item, report: pytest.TestReport) -> None:
    """From a `pytest_runtest_makereport` hook: a failed test that used a Cluster (fixture
    argument) gets every broker's log tail as a report section."""
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Cluster):
            report.sections.append(("broker logs", value.logs()))


