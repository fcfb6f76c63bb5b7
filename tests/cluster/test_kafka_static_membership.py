"""Static membership (KIP-345, `group.instance.id`) with a real Kafka client: confluent-kafka
(librdkafka) consumers against real broker processes. A static consumer process killed and
started again within its session timeout gets the same partitions back and the other member
sees no rebalance (its assignment callback is not called again); a second process with the
same instance id fences the running one (FENCED_INSTANCE_ID)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = [pytest.mark.slow]

DEADLINE_S = 120.0
SESSION_MS = 30_000  # long enough for a process restart and its JoinGroup
STATIC_GROUP = {"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest",
                "enable.auto.commit": False}

# One static consumer in its own process: prints every assignment and client error as a JSON
# line, polls until killed (or for DEADLINE_S at most).
MEMBER = """
import json, sys, time
from confluent_kafka import Consumer
bootstrap, group, instance, topic, config = sys.argv[1:6]
def say(**kw):
    print(json.dumps(kw), flush=True)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "group.instance.id": instance,
              "error_cb": lambda err: say(error=f"{err.name()}: {err.str()}"), **json.loads(config)})
c.subscribe([topic], on_assign=lambda _c, ps: say(assign=sorted(p.partition for p in ps)),
            on_revoke=lambda _c, ps: say(revoke=sorted(p.partition for p in ps)))
end = time.monotonic() + float(sys.argv[6])
while time.monotonic() < end:
    msg = c.poll(0.2)
    if msg is not None and msg.error() is not None:
        say(error=f"{msg.error().name()}: {msg.error().str()}")
"""


class MemberProcess:
    def __init__(self, bootstrap: str, group: str, instance: str, topic: str) -> None:
        self.events: list[dict] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MEMBER, bootstrap, group, instance, topic, json.dumps(STATIC_GROUP),
             str(DEADLINE_S)], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def assignments(self) -> list[list[int]]:
        return [e["assign"] for e in list(self.events) if "assign" in e]

    def errors(self) -> list[str]:
        return [e["error"] for e in list(self.events) if "error" in e]

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no LeaveGroup, no commit, as a crash
        self.proc.wait(30)


def test_a_restarted_static_member_keeps_its_partitions_and_the_group_does_not_rebalance(kafka_cluster):
    bootstrap = kafka_cluster.kafka_bootstrap
    topic, group = "static-members", f"st-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 4, 3)], operation_timeout=30).values():
        future.result(timeout=60)

    b_events: list[str] = []
    b = CKConsumer({"bootstrap.servers": bootstrap, "group.id": group, "group.instance.id": "b", **STATIC_GROUP})
    b.subscribe([topic], on_assign=lambda _c, ps: b_events.append(f"assign {sorted(p.partition for p in ps)}"),
                on_revoke=lambda _c, ps: b_events.append("revoke"), on_lost=lambda _c, ps: b_events.append("lost"))
    members: list[MemberProcess] = []

    def until(condition, what: str) -> None:  # noqa: ANN001
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: b {b_events}, " + \
                ", ".join(str(m.events) for m in members)
            b.poll(0.1)

    try:
        until(lambda: b_events == ["assign [0, 1, 2, 3]"], "b alone owning every partition")
        a = MemberProcess(bootstrap, group, "a", topic)
        members.append(a)
        # the rebalance after a joined: b gives up two partitions, a takes them
        until(lambda: len(b_events) >= 3 and a.assignments() and len(a.assignments()[-1]) == 2, "a joining")
        mine = a.assignments()[-1]
        assert b_events[1:] == ["revoke", f"assign {sorted(set(range(4)) - set(mine))}"], b_events
        settled = list(b_events)

        a.kill()
        a2 = MemberProcess(bootstrap, group, "a", topic)  # the same instance, restarted
        members.append(a2)
        until(lambda: bool(a2.assignments()), "the restarted member's assignment")
        assert a2.assignments() == [mine], "the restarted static member did not get its partitions back"
        # b heartbeats every 0.5 s: a rebalance would have reached it within a few heartbeats
        end = time.monotonic() + 5
        while time.monotonic() < end:
            b.poll(0.1)
        assert b_events == settled, f"b saw a rebalance when the static member restarted: {b_events}"

        # A second process with the same instance id fences the running one.
        a3 = MemberProcess(bootstrap, group, "a", topic)
        members.append(a3)
        # librdkafka raises FENCED_INSTANCE_ID as a fatal error ("Static consumer fenced by other
        # consumer with same group.instance.id")
        until(lambda: bool(a3.assignments()) and any(e.startswith("_FATAL") and "fenced" in e for e in a2.errors()),
              "the duplicate instance fencing the running one")
        assert a3.assignments() == [mine]
        assert b_events == settled, f"b saw a rebalance when a duplicate instance took over: {b_events}"
    finally:
        for m in members:
            if m.proc.poll() is None:
                m.kill()
        b.close()
