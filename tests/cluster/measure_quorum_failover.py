"""Measure metadata failover on 3 real combined nodes (quorum + controller + heartbeating broker).

    .venv/bin/python tests/cluster/measure_quorum_failover.py [TRIALS]

Per trial: kill -9 a broker that is a Raft follower, then (after it is back) the Raft leader,
which is also the controller and a partition leader. Reports how long until every survivor's
local metadata shows the killed broker fenced and its partitions led by others, and how long the
Raft election alone took. Prints one JSON object on the last line.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from test_quorum_processes import (
    Node,
    all_unfenced,
    failover_ms,
    free_port,
    leader_of,
    stable_leader,
    wait_for,
)


def trial(base: Path) -> tuple[float, float, float]:
    raft = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    rpc = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    voters = ",".join(f"{i + 1}={raft[i]}@{rpc[i]}" for i in range(3))
    nodes = [Node(i + 1, raft[i], voters, base / f"n{i + 1}", ("--broker",)) for i in range(3)]
    try:
        wait_for(lambda: all_unfenced(nodes[0], {1, 2, 3}), 10)
        assert nodes[0].submit("CreateTopic", name="t", partitions=6, replication_factor=3)["ok"]
        leader = wait_for(lambda: stable_leader(nodes), 5)
        victim = next(n for n in nodes if n is not leader)
        killed_at = time.monotonic()
        victim.kill()
        follower_ms = failover_ms([n for n in nodes if n is not victim], victim.node_id, "t", killed_at)
        victim.start()
        wait_for(lambda: all_unfenced(leader, {1, 2, 3}), 5)
        leader = wait_for(lambda: stable_leader(nodes), 5)
        survivors = [n for n in nodes if n is not leader]
        killed_at = time.monotonic()
        leader.kill()
        wait_for(lambda: leader_of(survivors), 5, 0.005)
        election_ms = (time.monotonic() - killed_at) * 1000
        controller_ms = failover_ms(survivors, leader.node_id, "t", killed_at)
        return follower_ms, election_ms, controller_ms
    finally:
        for n in nodes:
            n.stop()


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(trials):
            results.append(trial(Path(tmp) / f"trial-{i}"))
            print(f"trial {i}: follower broker {results[-1][0]:.0f} ms, election {results[-1][1]:.0f} ms, "
                  f"leader broker {results[-1][2]:.0f} ms", file=sys.stderr)

    def summary(values: list[float]) -> dict[str, float]:
        return {"min_ms": round(min(values)), "median_ms": round(statistics.median(values)), "max_ms": round(max(values))}

    print(json.dumps({
        "trials": trials,
        "follower_broker_killed_partitions_moved": summary([r[0] for r in results]),
        "raft_leader_killed_new_raft_leader": summary([r[1] for r in results]),
        "raft_leader_broker_killed_partitions_moved": summary([r[2] for r in results]),
    }))


if __name__ == "__main__":
    main()
