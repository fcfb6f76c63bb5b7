"""A settled member's heartbeat is held by the coordinator until the group's epoch moves on
(ConsumerGroupHeartbeatRequest.max_wait_ms), so a rebalance reaches every member at once.

Before, members learnt of a join or leave at their next heartbeat: with the default 5 s
interval a join settled in about two intervals (`semel bench groups`, docs/benchmarks.md).
Here the interval is ten minutes: without the push a rebalance could not finish before the
members' next heartbeats, ten minutes away, so finishing at all inside the test's deadline
(far below the interval) is the behaviour under test, not a timing.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from semel.client.group import Consumer
from semel.v1 import common_pb2 as pb
from semel.v1 import group_pb2 as gpb
from semel.v1 import group_pb2_grpc as ggrpc

from tests.cluster.harness import Cluster, cluster_fixture

INTERVAL_MS = 600_000
held_cluster = cluster_fixture(1, extra_args=("--group-session-timeout-ms", str(3 * INTERVAL_MS),
                                              "--group-heartbeat-interval-ms", str(INTERVAL_MS)), scope="module")

pytestmark = pytest.mark.slow
DEADLINE_S = 120  # generous on a loaded machine, and a fifth of the heartbeat interval


class Member:
    """A group consumer reconciling on its own thread (as poll() would), owned set readable."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.consumer = Consumer(bootstrap, group_id=group, enable_auto_commit=False)
        self.consumer.subscribe([topic])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.consumer.reconcile()
            self.stop.wait(0.05)

    def owns(self) -> set[int]:
        return {p for _, p in self.consumer.assignment()}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.consumer.close()


def _wait(predicate, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_join_and_a_leave_reach_settled_members_before_their_next_heartbeat(held_cluster: Cluster) -> None:
    topic, group = "held-hb", "held-hb-group"
    held_cluster.create_topic(topic, 4, 1)
    everything = {0, 1, 2, 3}
    a = Member(held_cluster.bootstrap, group, topic)
    b = c = None
    try:
        _wait(lambda: a.owns() == everything, "the first member never got every partition")
        # a is settled: its heartbeats are now held. b joins: a must give up two partitions.
        b = Member(held_cluster.bootstrap, group, topic)
        _wait(lambda: len(a.owns()) == 2 and a.owns() | b.owns() == everything,
              "the join did not reach the settled member before its next heartbeat")
        c = Member(held_cluster.bootstrap, group, topic)
        _wait(lambda: a.owns() and b.owns() and c.owns() and len(a.owns()) + len(b.owns()) + len(c.owns()) == 4
              and a.owns() | b.owns() | c.owns() == everything, "the second join did not settle")
        # closing a held member cancels its held call: it does not wait out the interval
        started = time.monotonic()
        c.close()
        assert time.monotonic() - started < DEADLINE_S
        c = None
        _wait(lambda: a.owns() | b.owns() == everything and len(a.owns()) + len(b.owns()) == 4,
              "the leave did not reach the settled members")
    finally:
        for m in (a, b, c):
            if m is not None:
                m.close()


def test_a_held_heartbeat_of_a_settled_member_answers_after_max_wait_without_a_change(held_cluster: Cluster) -> None:
    # The raw RPC: held for max_wait_ms when nothing changes, then answered like any heartbeat
    # (same epoch, same assignment); a member still reconciling is answered at once.
    topic, group = "held-raw", "held-raw-group"
    held_cluster.create_topic(topic, 2, 1)
    stub = ggrpc.GroupsStub(grpc.insecure_channel(held_cluster.bootstrap.split(",")[0]))  # the only broker
    join = stub.ConsumerGroupHeartbeat(gpb.ConsumerGroupHeartbeatRequest(
        group_id=group, member_id="raw-member", member_epoch=0, subscription=gpb.Subscription(topics=[topic]),
        owned=gpb.Assignment()), timeout=30)
    assert join.error_code == pb.NONE and len(join.assignment.partitions) > 0
    settled = gpb.ConsumerGroupHeartbeatRequest(group_id=group, member_id="raw-member", member_epoch=join.member_epoch,
                                                owned=join.assignment, max_wait_ms=1500)
    started = time.monotonic()
    again = stub.ConsumerGroupHeartbeat(settled, timeout=60)
    held_s = time.monotonic() - started
    assert again.error_code == pb.NONE and again.member_epoch == join.member_epoch
    assert again.assignment == join.assignment
    assert held_s >= 1.4, f"a settled heartbeat with max_wait_ms=1500 was answered after {held_s:.2f} s"
    # not settled (claims to own nothing of its assignment): answered without waiting max_wait_ms
    unsettled = gpb.ConsumerGroupHeartbeatRequest(group_id=group, member_id="raw-member",
                                                  member_epoch=join.member_epoch, owned=gpb.Assignment(),
                                                  max_wait_ms=INTERVAL_MS)
    answer = stub.ConsumerGroupHeartbeat(unsettled, timeout=DEADLINE_S)
    assert answer.error_code == pb.NONE
    stub.ConsumerGroupHeartbeat(gpb.ConsumerGroupHeartbeatRequest(group_id=group, member_id="raw-member",
                                                                  member_epoch=-1), timeout=30)
