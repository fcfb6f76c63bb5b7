"""Controller-only nodes (`--roles controller`): 3 dedicated metadata voters + 2 observer brokers.

The brokers heartbeat whichever voter leads the quorum (a node that is not a broker); killing
that voter with SIGKILL elects another, and produce / metadata keep working. Describe cluster
lists the brokers only: controller-only nodes never register and are never assigned replicas.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from semel.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, common_pb2

from tests.cluster.broker_harness import (
    free_ports,
    make_batch,
    produce,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

CONTROLLERS = (1, 2, 3)
BROKERS = (11, 12)
COMMON = ["--heartbeat-interval-ms", "100", "--session-timeout-ms", "1500", "--internal-partitions", "1"]


class Node:
    def __init__(self, node_id: int, root: Path, rpc_port: int, raft_port: int | None) -> None:
        self.node_id, self.rpc_port, self.raft_port = node_id, rpc_port, raft_port
        self.data_dir = root / f"node-{node_id}"
        self.address = f"127.0.0.1:{rpc_port}"
        self.ready = threading.Event()
        self.ready_line = ""
        self.proc: subprocess.Popen | None = None

    def start(self, argv: list[str], ready_prefix: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "node.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", SEMEL_BROKER_DIE_WITH_PARENT="1")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1, env=env)
        log.close()

        def watch(proc: subprocess.Popen = self.proc) -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith(ready_prefix):
                    self.ready_line = line.strip()
                    self.ready.set()

        threading.Thread(target=watch, daemon=True).start()

    def log_tail(self) -> str:
        path = self.data_dir / "node.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-40:]) if path.exists() else ""


@pytest.fixture
def cluster(tmp_path: Path):
    ports = free_ports(2 * len(CONTROLLERS) + len(BROKERS))
    controllers = {cid: Node(cid, tmp_path, ports[i], ports[len(CONTROLLERS) + i]) for i, cid in enumerate(CONTROLLERS)}
    brokers = {bid: Node(bid, tmp_path, ports[2 * len(CONTROLLERS) + i], None) for i, bid in enumerate(BROKERS)}
    voters = ",".join(f"{c.node_id}@127.0.0.1:{c.raft_port}@{c.address}" for c in controllers.values())
    base = [sys.executable, "-m", "semel.cluster.broker"]
    for c in controllers.values():
        c.start(base + ["--roles", "controller", "--node-id", str(c.node_id), "--listen", c.address,
                        "--data-dir", str(c.data_dir), "--raft", f"127.0.0.1:{c.raft_port}", "--voters", voters,
                        *COMMON], "SEMEL_CONTROLLER_READY")
    for b in brokers.values():
        b.start(base + ["--roles", "broker", "--broker-id", str(b.node_id), "--listen", b.address,
                        "--data-dir", str(b.data_dir), "--voters", voters, *COMMON], "SEMEL_BROKER_READY")
    nodes = {**controllers, **brokers}
    channels: list[grpc.Channel] = []
    try:
        yield controllers, brokers, voters, channels
    finally:
        for ch in channels:
            ch.close()
        for n in nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait(10)


def _logs(nodes: dict[int, Node]) -> str:
    return "\n".join(f"===== node {i} =====\n{n.log_tail()}" for i, n in nodes.items())


def _wait(predicate, what: str, nodes: dict[int, Node], timeout_s: float = 20.0):
    return wait_for(predicate, lambda: _logs(nodes), timeout_s, 0.05, what)


def test_controller_only_quorum_survives_losing_the_active_controller(cluster) -> None:
    controllers, brokers, voters, channels = cluster
    nodes = {**controllers, **brokers}
    for n in nodes.values():
        assert n.ready.wait(30), f"node {n.node_id} not ready\n{_logs(nodes)}"
    assert controllers[1].ready_line.startswith(f"SEMEL_CONTROLLER_READY node_id=1 port={controllers[1].rpc_port}")

    def channel(node: Node) -> grpc.Channel:
        ch = grpc.insecure_channel(node.address, options=[("grpc.initial_reconnect_backoff_ms", 50),
                                                          ("grpc.max_reconnect_backoff_ms", 200)])
        channels.append(ch)
        return ch

    admin = {i: admin_pb2_grpc.AdminStub(channel(n)) for i, n in nodes.items()}
    bstub = {i: broker_pb2_grpc.BrokerStub(channel(n)) for i, n in brokers.items()}

    # A controller-only node serves no Broker service.
    with pytest.raises(grpc.RpcError) as err:
        broker_pb2_grpc.BrokerStub(channel(controllers[1])).Metadata(broker_pb2.MetadataRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

    created = admin[11].CreateTopics(admin_pb2.CreateTopicsRequest(topics=[admin_pb2.NewTopic(
        name="t", partitions=2, replication_factor=2)], timeout_ms=10_000), timeout=15).results[0]
    assert created.error_code == common_pb2.NONE, created

    def leader(partition: int) -> int:
        def find() -> int:
            pm = bstub[11].Metadata(broker_pb2.MetadataRequest(topics=["t"]), timeout=5).topics[0].partitions[partition]
            return pm.leader_id if pm.leader_id in BROKERS and len(pm.isr) == 2 else 0
        return _wait(find, f"t-{partition} led by a broker with a full ISR", nodes)

    def produce_ok(partition: int, value: bytes) -> bool:
        r = produce(bstub[leader(partition)], "t", partition, make_batch([value]))
        return r.error_code == common_pb2.NONE

    for p in (0, 1):
        md = bstub[12].Metadata(broker_pb2.MetadataRequest(topics=["t"]), timeout=5).topics[0].partitions[p]
        assert set(md.replicas) == set(BROKERS)  # never a controller-only node
        _wait(lambda p=p: produce_ok(p, b"before"), f"produce to t-{p}", nodes)

    cluster_desc = admin[1].DescribeCluster(admin_pb2.DescribeClusterRequest(), timeout=5)
    assert sorted(b.broker_id for b in cluster_desc.brokers) == list(BROKERS)
    active = cluster_desc.controller_id
    assert active in CONTROLLERS

    controllers[active].proc.kill()  # SIGKILL
    controllers[active].proc.wait(10)
    survivor = next(c for c in CONTROLLERS if c != active)

    def new_controller() -> int:
        d = admin[11].DescribeCluster(admin_pb2.DescribeClusterRequest(), timeout=5)
        return d.controller_id if d.controller_id in CONTROLLERS and d.controller_id != active else 0

    new_active = _wait(new_controller, "a new active controller", nodes)
    assert new_active != active

    # Longer than the session timeout: brokers now heartbeat the new controller, so stay unfenced.
    time.sleep(2.0)
    for p in (0, 1):
        _wait(lambda p=p: produce_ok(p, b"after"), f"produce to t-{p} after failover", nodes)
        values = [v for _, v in read_all(bstub[leader(p)], "t", p)]
        assert values.count(b"before") == 1 and values.count(b"after") == 1, values
    md_topic = bstub[12].Metadata(broker_pb2.MetadataRequest(topics=["t"]), timeout=5).topics[0]
    assert all(pm.leader_id in BROKERS for pm in md_topic.partitions)

    d = admin[survivor].DescribeCluster(admin_pb2.DescribeClusterRequest(), timeout=5)
    assert sorted(b.broker_id for b in d.brokers) == list(BROKERS)
    assert not any(b.fenced for b in d.brokers)
    assert d.controller_id == new_active


def test_node_id_colliding_with_a_controller_is_refused(tmp_path: Path) -> None:
    voters = "1@127.0.0.1:1@127.0.0.1:2"
    out = subprocess.run([sys.executable, "-m", "semel.cluster.broker", "--roles", "broker", "--broker-id", "1",
                          "--data-dir", str(tmp_path), "--voters", voters], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "collides with metadata voter 1" in out.stderr
