"""`semel bench assignor`: the group assignor's time at its bounds.

`MAX_MEMBERS_PER_GROUP` members (a third subscribed to two topics, the rest to one) over
`--partitions` partitions per topic: a first assignment from nothing, then the rebalance
after one more member joins (sticky: everyone keeps what stays balanced). The assignor runs
on the coordinator's event loop, so this is how long one rebalance can hold that loop.
Reported: the best of `--repeat` runs of each, in milliseconds (a unit test only checks the
result at these bounds; its speed is measured here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from semel import limits
from semel.coordinator.group_state import assign


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=int, default=limits.MAX_MEMBERS_PER_GROUP,
                        help=f"members of the group (default {limits.MAX_MEMBERS_PER_GROUP}, the bound)")
    parser.add_argument("--partitions", type=int, default=5000, help="partitions of each of the two topics (default 5000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement; the best is reported")


def run(args: argparse.Namespace) -> int:
    subs = {f"m{i:04d}": ("t",) if i % 3 else ("t", "u") for i in range(args.members)}
    counts = {"t": args.partitions, "u": args.partitions}
    first_ms, rebalance_ms = [], []
    for i in range(args.repeat):
        start = time.perf_counter()
        first = assign(subs, counts, {})
        first_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        assign({**subs, "new": ("u",)}, counts, first)
        rebalance_ms.append((time.perf_counter() - start) * 1000)
        print(f"run {i + 1}: first {first_ms[-1]:.1f} ms, rebalance {rebalance_ms[-1]:.1f} ms", file=sys.stderr)
    print(json.dumps({"members": args.members, "partitions": 2 * args.partitions,
                      "first_assignment_ms": round(min(first_ms), 1), "rebalance_ms": round(min(rebalance_ms), 1)}))
    return 0
