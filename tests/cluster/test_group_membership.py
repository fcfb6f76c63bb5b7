"""Consumer groups against real brokers: membership across processes (join, SIGKILL, leave),
offset commit/fetch across a coordinator failover, and zombie fencing by member epoch."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from semel.client import Producer
from semel.client import errors as client_errors
from semel.client.group import Consumer
from semel.internal_topics import CONSUMER_OFFSETS_TOPIC, coordinator_partition

from tests.cluster.harness import Cluster, cluster_fixture

GROUP_ARGS = ("--group-session-timeout-ms", "2000", "--group-heartbeat-interval-ms", "200")
group_cluster = cluster_fixture(3, extra_args=GROUP_ARGS, scope="module")
WORKER = str(Path(__file__).with_name("group_worker.py"))

pytestmark = pytest.mark.slow


class Worker:
    """A group_worker.py process; its events are collected by a reader thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, WORKER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.events: queue.Queue[dict] = queue.Queue()
        self.owned: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                parts = {tuple(p) for p in event.get("partitions", [])}
                if event["event"] == "assigned":
                    self.owned |= parts
                elif event["event"] in ("revoked", "lost"):
                    self.owned -= parts
            self.events.put(event)

    def owns(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.owned)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        with self.lock:
            self.owned = set()

    def leave(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(predicate, timeout_s: float, what: str) -> float:  # noqa: ANN001
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def balanced(workers: list[Worker], partitions: int, topic: str) -> bool:
    owned = [w.owns() for w in workers]
    union = set().union(*owned)
    sizes = sorted(len(o) for o in owned)
    return (union == {(topic, p) for p in range(partitions)} and sum(sizes) == partitions
            and sizes[-1] - sizes[0] <= 1)


def test_membership_rebalances_across_processes_on_join_kill_and_leave(group_cluster: Cluster) -> None:
    topic, group = "members", "g-members"
    group_cluster.create_topic(topic, 6, 3)
    workers = [Worker("consume", "--bootstrap", group_cluster.bootstrap, "--group", group, "--topic", topic)
               for _ in range(3)]
    try:
        wait_until(lambda: balanced(workers, 6, topic), 30, "3 members to share 6 partitions")
        workers[0].kill()  # dies without leaving: removed after the session timeout (2 s)
        took = wait_until(lambda: balanced(workers[1:], 6, topic), 30, "2 survivors to share 6 partitions")
        assert took >= 1.0, "the killed member's partitions moved before its session could have expired"
        workers[1].leave()  # leaves: the group rebalances at once, no session timeout
        took = wait_until(lambda: balanced(workers[2:], 6, topic), 30, "the last member to own everything")
        assert took < 2.0, f"a leave took {took:.1f} s to rebalance (as long as a session timeout)"
    finally:
        for w in workers:
            w.stop()


def _produce(cluster: Cluster, topic: str, count: int, partitions: int, start: int = 0) -> None:
    with Producer(cluster.bootstrap) as producer:
        for i in range(start, start + count):
            producer.send(topic, str(i).encode(), partition=i % partitions)
        producer.flush()


def _drain(consumer: Consumer, want: int, timeout_s: float = 20) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += consumer.poll(200)
    return got


def test_offsets_survive_coordinator_failover_and_a_new_member_resumes(group_cluster: Cluster) -> None:
    topic, group = "offsets", "g-offsets"
    group_cluster.create_topic(topic, 3, 3)
    _produce(group_cluster, topic, 90, 3)
    with Consumer(group_cluster.bootstrap, group_id=group, auto_offset_reset="earliest",
                  enable_auto_commit=False) as consumer:
        consumer.subscribe([topic])
        assert len(_drain(consumer, 90)) == 90
        consumer.commit()
        want = {(topic, p): 30 for p in range(3)}
        assert consumer.committed(want) == want
        coordinator = group_cluster.leader_of(CONSUMER_OFFSETS_TOPIC, coordinator_partition(group, 16))
        group_cluster.kill(coordinator)  # the next coordinator loads the replicated log
        assert consumer.committed(want, timeout_ms=30_000) == want
        consumer.commit({(topic, 0): 31})  # the member (same epoch) commits at the new coordinator
        assert consumer.committed([(topic, 0)]) == {(topic, 0): 31}
        consumer.commit({(topic, 0): 30})
    group_cluster.start_broker(coordinator)
    group_cluster.settle()
    _produce(group_cluster, topic, 9, 3, start=90)
    with Consumer(group_cluster.bootstrap, group_id=group, auto_offset_reset="earliest",
                  enable_auto_commit=False) as again:
        again.subscribe([topic])
        records = _drain(again, 9)
        time.sleep(0.3)
        records += again.poll(300)
        assert sorted(int(r.value) for r in records) == list(range(90, 99))


def test_a_member_removed_from_the_group_cannot_commit(group_cluster: Cluster) -> None:
    topic, group = "zombies", "g-zombies"
    group_cluster.create_topic(topic, 2, 3)
    _produce(group_cluster, topic, 20, 2)
    zombie = Consumer(group_cluster.bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    survivor = Consumer(group_cluster.bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        zombie.subscribe([topic])
        assert len(_drain(zombie, 20)) == 20
        zombie.commit()
        before = zombie.committed([(topic, 0), (topic, 1)])
        assert before == {(topic, 0): 10, (topic, 1): 10}
        stale = zombie.group_metadata()
        assert zombie._membership is not None
        zombie._membership.stop()   # a zombie: alive, but its heartbeats stopped (a long GC pause)
        survivor.subscribe([topic])
        wait_until(lambda: (survivor.poll(50), len(survivor.assignment()) == 2)[1], 30,
                   "the survivor to take every partition after the zombie's session expired")
        with pytest.raises((client_errors.UnknownMemberIdError, client_errors.FencedMemberEpochError)):
            zombie.commit({(topic, 0): 0, (topic, 1): 0})
        assert survivor.committed([(topic, 0), (topic, 1)]) == before
        assert stale.member_epoch > 0
        survivor.commit({(topic, 0): 12})
        assert survivor.committed([(topic, 0)]) == {(topic, 0): 12}
    finally:
        zombie._membership = None
        zombie.close()
        survivor.close()


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semel.cli", *args, "--bootstrap", cluster.bootstrap],
                          capture_output=True, text=True, timeout=60)


def test_group_cli_lists_describes_resets_and_deletes(group_cluster: Cluster) -> None:
    topic, group = "cli", "g-cli"
    group_cluster.create_topic(topic, 2, 3)
    _produce(group_cluster, topic, 20, 2)
    with Consumer(group_cluster.bootstrap, group_id=group, auto_offset_reset="earliest",
                  enable_auto_commit=False) as consumer:
        consumer.subscribe([topic])
        assert len(_drain(consumer, 20)) == 20
        consumer.commit({(topic, 0): 10, (topic, 1): 4})
        listed = _cli(group_cluster, "group", "list")
        assert listed.returncode == 0, listed.stderr
        assert [line.split()[:3] for line in listed.stdout.splitlines() if line.startswith(group)] == \
            [[group, "STABLE", "1"]]
        described = _cli(group_cluster, "group", "describe", group, "--members")
        assert described.returncode == 0, described.stderr
        rows = {tuple(line.split()[:5]) for line in described.stdout.splitlines()}
        assert (topic, "0", "10", "10", "0") in rows and (topic, "1", "4", "10", "6") in rows
        busy = _cli(group_cluster, "group", "reset-offsets", group, "--topic", topic, "--to-earliest")
        assert busy.returncode == 1 and "NON_EMPTY_GROUP" in busy.stderr
    dry = _cli(group_cluster, "group", "reset-offsets", group, "--topic", f"{topic}:0", "--to-offset", "3", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[:4] for line in dry.stdout.splitlines()[1:2]] == [[topic, "0", "10", "3"]]
    done = _cli(group_cluster, "group", "reset-offsets", group, "--topic", topic, "--shift-by", "-2")
    assert done.returncode == 0, done.stderr
    with Consumer(group_cluster.bootstrap, group_id=group) as probe:
        assert probe.committed([(topic, 0), (topic, 1)]) == {(topic, 0): 8, (topic, 1): 2}
    deleted = _cli(group_cluster, "group", "delete", group)
    assert deleted.returncode == 0, deleted.stderr
    assert group not in _cli(group_cluster, "group", "list").stdout
