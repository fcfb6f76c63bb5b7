"""The metadata quorum across 3 real processes on loopback: commit, kill -9, majority loss,
full restart. Failover times are printed (run with `-s` to see them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from semel.cluster.tooling.ports import free_port
from semel.v1 import common_pb2 as pb

NODE_SCRIPT = Path(__file__).with_name("quorum_node.py")
pytestmark = pytest.mark.slow


class Node:
    """A quorum node subprocess; requests are JSON lines, replies matched by id."""

    def __init__(self, node_id: int, raft: str, voters: str, data_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.node_id = node_id
        self.raft = raft
        self.data_dir = data_dir
        self.args = [
            sys.executable, str(NODE_SCRIPT), "--node-id", str(node_id), "--raft", raft,
            "--voters", voters, "--data-dir", str(data_dir), *extra,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        assert self._ready.wait(20), "quorum node did not start"

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            message = json.loads(line)
            if message.get("ready"):
                self._ready.set()
                continue
            with self._cond:
                self._replies[message["id"]] = message
                self._cond.notify_all()

    def call(self, request: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        with self._cond:
            self._next_id += 1
            request_id = self._next_id
        self.proc.stdin.write(json.dumps({**request, "id": request_id}) + "\n")
        self.proc.stdin.flush()
        with self._cond:
            assert self._cond.wait_for(lambda: request_id in self._replies, timeout_s), f"no reply to {request}"
            return self._replies.pop(request_id)

    def status(self) -> dict[str, Any]:
        return self.call({"op": "status"})

    def submit(self, command: str, timeout_s: float = 2.0, **args: Any) -> dict[str, Any]:
        return self.call({"op": "submit", "command": command, "args": args, "timeout_s": timeout_s}, timeout_s + 5)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def cluster(tmp_path: Path):
    ports = [free_port() for _ in range(3)]
    raft = [f"127.0.0.1:{p}" for p in ports]
    voters = ",".join(f"{i + 1}={a}" for i, a in enumerate(raft))
    nodes = [Node(i + 1, raft[i], voters, tmp_path / f"node-{i + 1}") for i in range(3)]
    yield nodes
    for n in nodes:
        n.stop()


def wait_for(predicate, timeout_s: float, interval_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not reached in time")


def leader_of(nodes: list[Node]) -> Node | None:
    for n in nodes:
        if n.alive and n.status()["is_leader"]:
            return n
    return None


def stable_leader(nodes: list[Node]) -> Node | None:
    """The leader every live node agrees on (None while an election is going on)."""
    statuses = [(n, n.status()) for n in nodes if n.alive]
    leaders = {s["leader"] for _, s in statuses}
    if len(leaders) != 1:
        return None
    return next((n for n, s in statuses if s["is_leader"] and n.raft in leaders), None)


def register_brokers(node: Node) -> None:
    for b in (1, 2, 3):
        r = node.submit("RegisterBroker", broker_id=b, incarnation_id=f"inc-{b}", host="127.0.0.1", port=9000 + b)
        assert r["ok"], r
        assert node.submit("UnfenceBroker", broker_id=b, broker_epoch=r["value"])["ok"]


def test_commit_and_failover_after_kill_of_the_leader(cluster: list[Node]) -> None:
    leader = wait_for(lambda: leader_of(cluster), 10)
    follower = next(n for n in cluster if n is not leader)
    register_brokers(follower)  # submitted on a follower: forwarded to the leader
    created = leader.submit("CreateTopic", name="orders", partitions=3, replication_factor=3)
    assert created["ok"] and created["value"]["config"]["min_insync_replicas"] == 2
    version = leader.status()["version"]
    wait_for(lambda: all(n.status()["version"] == version for n in cluster), 5)

    leader = wait_for(lambda: stable_leader(cluster), 5)
    survivors = [n for n in cluster if n is not leader]
    killed_at = time.monotonic()
    leader.kill()
    new_leader = wait_for(lambda: leader_of(survivors), 5, interval_s=0.005)
    elected_s = time.monotonic() - killed_at
    # The first command committed after the kill (submit retries across the election).
    r = survivors[0].submit("AllocateProducerIds", broker_id=1, broker_epoch=1, timeout_s=5)
    committed_s = time.monotonic() - killed_at
    assert r["ok"], r
    print(f"\nFAILOVER: kill -9 of the raft leader -> new leader after {elected_s * 1000:.0f} ms, "
          f"first commit after {committed_s * 1000:.0f} ms")
    assert elected_s < 2.0 and committed_s < 2.5
    assert new_leader.status()["topics"] == {"orders": 3}

    # The killed node comes back and catches up.
    leader.start()
    version = new_leader.status()["version"]
    wait_for(lambda: leader.status()["version"] == version, 10)
    assert leader.status()["next_producer_id"] == 1000


def test_majority_loss_fails_explicitly_then_recovers(cluster: list[Node]) -> None:
    wait_for(lambda: leader_of(cluster), 10)
    register_brokers(cluster[0])
    before = cluster[0].status()
    survivor, lost = cluster[0], cluster[1:]
    for n in lost:
        n.kill()
    started = time.monotonic()
    r = survivor.submit("AllocateProducerIds", broker_id=1, broker_epoch=1, timeout_s=1.5)
    elapsed = time.monotonic() - started
    print(f"\nMAJORITY LOST: submit failed after {elapsed * 1000:.0f} ms with "
          f"{pb.ErrorCode.Name(r['error'])} (outcome unknown: {r['unknown']})")
    assert not r["ok"] and r["error"] in (pb.METADATA_QUORUM_UNAVAILABLE, pb.REQUEST_TIMED_OUT)
    assert elapsed < 3.0
    # Once the leader has stepped down (leader_fallback_timeout 1 s), failures are immediate
    # and certain.
    wait_for(lambda: not survivor.status()["is_leader"], 5)
    r = survivor.submit("AllocateProducerIds", broker_id=1, broker_epoch=1, timeout_s=0.5)
    assert r["error"] == pb.METADATA_QUORUM_UNAVAILABLE and not r["unknown"]
    assert survivor.status()["version"] == before["version"]

    for n in lost:
        n.start()
    r = wait_for(lambda: (x := survivor.submit("AllocateProducerIds", broker_id=1, broker_epoch=1, timeout_s=1))["ok"] and x, 15)
    # Blocks stay unique even if an in-doubt command from the minority committed later.
    assert r["value"]["first_producer_id"] in (0, 1000)
    final = survivor.status()
    wait_for(lambda: all(n.status()["next_producer_id"] == final["next_producer_id"] for n in cluster), 10)


def test_full_restart_restores_state_from_dump_and_journal(cluster: list[Node]) -> None:
    leader = wait_for(lambda: leader_of(cluster), 10)
    register_brokers(leader)
    assert leader.submit("CreateTopic", name="before-dump", partitions=2, replication_factor=3)["ok"]
    assert not any((n.data_dir / "metadata.dump").exists() for n in cluster)
    # pysyncobj drops a forced compaction (and clears the request) on a node that has not
    # applied two entries past its last dump yet: every node applies the create first.
    applied = leader.status()
    wait_for(lambda: all(n.status()["version"] == applied["version"] for n in cluster), 5)
    for n in cluster:
        assert n.call({"op": "compact"})["ok"]
    # compaction runs on the tick thread (no fork); the dump appears whole (written, then renamed)
    wait_for(lambda: all((n.data_dir / "metadata.dump").exists() for n in cluster), 5)
    assert leader.submit("CreateTopic", name="after-dump", partitions=4, replication_factor=2)["ok"]
    assert leader.submit("AllocateProducerIds", broker_id=2, broker_epoch=2)["ok"]
    expected = leader.status()
    wait_for(lambda: all(n.status()["version"] == expected["version"] for n in cluster), 5)
    for n in cluster:
        n.kill()
    for n in cluster:
        n.start()
    wait_for(lambda: leader_of(cluster), 10)
    for n in cluster:
        got = wait_for(lambda: (s := n.status())["version"] == expected["version"] and s, 10)
        assert got["topics"] == {"before-dump": 2, "after-dump": 4}
        assert got["next_producer_id"] == expected["next_producer_id"]
    # Still writable, and producer ids continue after the restored block.
    r = cluster[1].submit("AllocateProducerIds", broker_id=3, broker_epoch=3)
    assert r["ok"] and r["value"]["first_producer_id"] == expected["next_producer_id"]
    assert any((n.data_dir / "metadata.dump").exists() for n in cluster)
    assert os.path.getsize(cluster[0].data_dir / "metadata.journal") > 0


@pytest.fixture
def broker_cluster(tmp_path: Path):
    """3 combined nodes: quorum voter + controller + a broker that registers and heartbeats."""
    raft = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    rpc = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    voters = ",".join(f"{i + 1}={raft[i]}@{rpc[i]}" for i in range(3))
    extra = ("--broker", "--heartbeat-ms", "100", "--session-timeout-ms", "1000")
    nodes = [Node(i + 1, raft[i], voters, tmp_path / f"node-{i + 1}", extra) for i in range(3)]
    yield nodes
    for n in nodes:
        n.stop()


def all_unfenced(node: Node, ids: set[int]) -> bool:
    brokers = node.status()["brokers"]
    return {int(b) for b, r in brokers.items() if not r["fenced"]} == ids


def failover_ms(survivors: list[Node], killed: int, topic: str, killed_at: float) -> float:
    """Time until every survivor's local image has the killed broker fenced and leading nothing."""

    def moved(n: Node) -> bool:
        s = n.status()
        leaders = s["leaders"][topic]
        return s["brokers"][str(killed)]["fenced"] and killed not in leaders and -1 not in leaders

    wait_for(lambda: all(moved(n) for n in survivors), 5, interval_s=0.005)
    return (time.monotonic() - killed_at) * 1000


def test_controller_moves_leaderships_after_kill_9(broker_cluster: list[Node]) -> None:
    nodes = broker_cluster
    wait_for(lambda: all_unfenced(nodes[0], {1, 2, 3}), 10)
    wait_for(lambda: {"__transaction_state", "__consumer_offsets"} <= set(nodes[0].status()["topics"]), 5)
    assert nodes[0].submit("CreateTopic", name="t", partitions=6, replication_factor=3)["ok"]
    leader = wait_for(lambda: stable_leader(nodes), 5)

    # A broker that is not the Raft leader (it leads 2 of the 6 partitions).
    victim = next(n for n in nodes if n is not leader)
    assert victim.node_id in leader.status()["leaders"]["t"]
    survivors = [n for n in nodes if n is not victim]
    killed_at = time.monotonic()
    victim.kill()
    follower_ms = failover_ms(survivors, victim.node_id, "t", killed_at)

    victim.start()  # a new incarnation: registers, catches up, is unfenced
    restarted_at = time.monotonic()
    wait_for(lambda: all_unfenced(leader, {1, 2, 3}), 5)
    unfence_ms = (time.monotonic() - restarted_at) * 1000

    # The Raft leader itself (controller + partition leader) is killed.
    leader = wait_for(lambda: stable_leader(nodes), 5)
    assert leader.node_id in leader.status()["leaders"]["t"]
    survivors = [n for n in nodes if n is not leader]
    killed_at = time.monotonic()
    leader.kill()
    controller_ms = failover_ms(survivors, leader.node_id, "t", killed_at)
    print(f"\nCONTROLLER FAILOVER: partitions of a killed broker have new leaders after {follower_ms:.0f} ms "
          f"(broker was a raft follower), {controller_ms:.0f} ms (broker was the raft leader); "
          f"restarted broker unfenced after {unfence_ms:.0f} ms")
    assert follower_ms < 1000 and controller_ms < 1500


def test_paused_leader_cannot_hand_out_duplicate_producer_ids(cluster: list[Node]) -> None:
    """SIGSTOP the Raft leader, let the others elect and allocate, SIGCONT it with a request
    queued: the stale leader must not commit anything; every block handed out is unique."""
    wait_for(lambda: leader_of(cluster), 10)
    register_brokers(cluster[0])
    old = wait_for(lambda: stable_leader(cluster), 5)
    others = [n for n in cluster if n is not old]
    assert old.proc is not None
    old.proc.send_signal(signal.SIGSTOP)
    results: list[dict[str, Any]] = []
    queued = threading.Thread(
        target=lambda: results.append(old.submit("AllocateProducerIds", broker_id=1, broker_epoch=1, timeout_s=3))
    )
    try:
        queued.start()  # sits in the stopped process's stdin until SIGCONT
        wait_for(lambda: leader_of(others), 5)
        for n in others:
            results.append(n.submit("AllocateProducerIds", broker_id=2, broker_epoch=2, timeout_s=3))
        time.sleep(0.2)
    finally:
        old.proc.send_signal(signal.SIGCONT)
    queued.join(10)
    assert len(results) == 3 and all(r["ok"] for r in results), results
    firsts = [r["value"]["first_producer_id"] for r in results]
    assert len(set(firsts)) == 3
    final = max(firsts) + 1000
    wait_for(lambda: all(n.status()["next_producer_id"] == final for n in cluster), 5)
