"""How long a deposed controller takes to rejoin the metadata quorum after a silent partition.

    .venv/bin/python tests/chaos/measure_rejoin.py [TRIALS] [HOLD_S]

Each trial: 3 brokers behind the fault proxies; the active controller (Raft leader) is cut
silently from its peers (a `timeout` toxic on every rpc and raft flow, both ways; clients still
reach it) for HOLD_S seconds while the others move on (a topic is created meanwhile); then the
network heals and we time until every broker answers metadata at one version with one content
(chaos/metadata_agreement.py; a divergence raises). Found by chaos seed 23 (a stale broker 2
served stale metadata for ~24 s after such a heal). Prints one line per trial and a summary;
not part of the test suite (real time, seconds to minutes).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time

from semel.chaos.metadata_agreement import check_agreement
from semel.chaos.wiring import ChaosCluster
from semel.client import Admin

LIMIT_S = 60.0


def view(c: ChaosCluster, broker_id: int) -> tuple[int, int] | None:
    try:
        with Admin(c.specs[broker_id - 1].address, request_timeout_ms=1000, connect_timeout_ms=1000) as admin:
            info = admin.describe_cluster(timeout_ms=1000)
            return info.metadata_version, info.controller_id
    except Exception:
        return None


def trial(hold_s: float) -> tuple[int, float]:
    data_dir = tempfile.mkdtemp(prefix="semel-rejoin-")
    c = ChaosCluster(data_dir, brokers=3)
    c.start()
    try:
        assert c.api is not None
        c.create_topic("rejoin", 3, 3)
        controller = -1
        while controller < 0:
            v = view(c, 1)
            controller = v[1] if v else -1
        others = [b for b in c.broker_ids if b != controller]
        for o in others:
            for proxy, stream in dict.fromkeys(c.flows(controller, o, ("rpc", "raft")) + c.flows(o, controller, ("rpc", "raft"))):
                c.api.add_toxic(proxy, f"iso-{stream}", "timeout", stream, {"timeout": 0})
        time.sleep(hold_s)
        with Admin(c.specs[others[0] - 1].address) as admin:
            admin.create_topic("while-away", 1, 2)
        c.heal_network()
        started = time.monotonic()
        agreement = check_agreement([s.address for s in c.specs], LIMIT_S)
        if agreement["result"] == "diverged":
            raise AssertionError(f"metadata diverged after the heal: {agreement['differences']}")
        return controller, time.monotonic() - started if agreement["result"] == "agreed" else float("inf")
    finally:
        c.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    hold_s = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    times = []
    for i in range(trials):
        controller, elapsed = trial(hold_s)
        times.append(elapsed)
        print(f"trial {i + 1}: controller {controller} cut {hold_s:.0f} s; all brokers agree on the metadata "
              f"{elapsed:.2f} s after the heal" if elapsed != float("inf") else
              f"trial {i + 1}: controller {controller} NOT caught up {LIMIT_S:.0f} s after the heal", flush=True)
    finite = [t for t in times if t != float("inf")]
    print(f"REJOIN: {len(finite)}/{trials} caught up; median {statistics.median(finite):.2f} s, "
          f"max {max(finite):.2f} s" if finite else "REJOIN: none caught up")


if __name__ == "__main__":
    main()
