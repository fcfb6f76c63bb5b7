"""`semel chaos simulate`: run seeds of the deterministic whole-cluster simulation."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import sys
import time
from typing import Any

from semel.chaos.sim.cluster import SimConfig, run_seed

BUGS = ("none", "hw-without-acks", "no-elr", "ignore-lost-unsynced-writes", "no-power-loss-fix",
        "boot-record-consumed-at-start", "lso-ignores-open-txns", "marker-skips-partition")
TXN_BUGS = ("lso-ignores-open-txns", "marker-skips-partition")


def _one(work: tuple[int, SimConfig]) -> dict[str, Any]:
    seed, cfg = work
    digest, sim = run_seed(seed, cfg)
    return {"seed": seed, "trace_sha256": digest, "events": sim.events,
            "acked": sum(len(a) for a in sim.acked.values()), "faults": sim.faults, "violations": sim.violations,
            **({"txn": sim.txn_stats} if sim.txn_on else {})}


def _simulate(args: argparse.Namespace) -> int:
    bug = args.inject_bug
    cfg = SimConfig(steps=args.steps, power_faults=not args.no_power_faults, fsync=args.fsync,
                    strict_truncation=args.strict_truncation,
                    bug_hw_without_acks=bug == "hw-without-acks",
                    bug_no_elr=bug in ("no-elr", "no-power-loss-fix"),
                    bug_ignore_lost_unsynced_writes=bug in ("ignore-lost-unsynced-writes", "no-power-loss-fix"),
                    bug_boot_record_consumed_at_start=bug == "boot-record-consumed-at-start",
                    txn_producers=max(args.txn_producers, 2 if bug in TXN_BUGS else 0),
                    bug_lso_ignores_open_txns=bug == "lso-ignores-open-txns",
                    bug_marker_skips_partition=bug == "marker-skips-partition")
    seeds = [args.seed] if args.seed is not None else list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.perf_counter()
    failing: list[dict[str, Any]] = []
    events = 0
    jobs = max(1, min(args.jobs, len(seeds)))
    work = [(seed, cfg) for seed in seeds]
    with multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        results = pool.imap(_one, work, chunksize=8) if pool is not None else map(_one, work)
        for seed, summary in zip(seeds, results):
            events += summary["events"]
            if args.seed is not None or args.verbose:
                print(json.dumps(summary))
            if summary["violations"]:
                failing.append({"seed": seed, "trace_sha256": summary["trace_sha256"],
                                "violation": summary["violations"][0]})
                if args.seed is None:
                    print(json.dumps(failing[-1]), file=sys.stderr)
    elapsed_s = time.perf_counter() - started
    print(json.dumps({"seeds": len(seeds), "failing": len(failing), "failing_seeds": [f["seed"] for f in failing],
                      "events": events, "jobs": jobs, "elapsed_s": round(elapsed_s, 2),
                      "seeds_per_min": round(len(seeds) / elapsed_s * 60) if elapsed_s > 0 else None,
                      "config": dataclasses.asdict(cfg)}))
    return 1 if failing else 0


def add_simulate(sub: Any) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    sim = sub.add_parser(
        "simulate", help="deterministic whole-cluster simulation over many seeds", formatter_class=fmt,
        description="Runs the brokers' replication, ISR and HW logic, the controller and the metadata state "
                    "machine in one process on a simulated network and clock (seeded loss, delay, reordering, "
                    "partitions, crashes, power loss, clean stops, restarts) and checks the invariants after every event. Exits 1 if "
                    "any seed fails; `--seed S` replays one seed and prints its trace hash and faults. "
                    "See docs/chaos.md, \"Deterministic simulation\".",
        epilog="example: semel chaos simulate --seeds 1000; semel chaos simulate --seed 17")
    sim.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    sim.add_argument("--first-seed", type=int, default=0, help="the first of --seeds consecutive seeds")
    sim.add_argument("--seed", type=int, default=None, help="replay this one seed (verbose)")
    sim.add_argument("--steps", type=int, default=SimConfig.steps, help="events with faults on, before the heal")
    sim.add_argument("--inject-bug", choices=BUGS, default="none",
                     help="run with a deliberate bug (shows the checker catches it): a leader whose HW ignores "
                          "its followers; no eligible leader replicas; a quorum that ignores "
                          "RegisterBroker.lost_unsynced_writes; both of the last two (the code before chaos "
                          "finding 9's fix); a boot record that forgets a machine restart when the process dies "
                          "before registering (before the fix of simulation seed 509); with transactions: a last stable "
                          "offset that ignores open transactions; a COMMIT marker answered but not written at the last "
                          "data partition")
    sim.add_argument("--fsync", action="store_true",
                     help="the brokers' `fsync: true` (every append synced before it returns); default: "
                          "`fsync: false`, a background sync every flush interval")
    sim.add_argument("--strict-truncation", action="store_true",
                     help="a log truncation is durable only at the next sync (as before truncate_to fsynced its "
                          "cut), so a power loss can bring a truncated tail back; default: durable at once")
    sim.add_argument("--txn-producers", type=int, default=0,
                     help="transactional clients (InitProducerId, AddPartitionsToTxn, transactional produce, "
                          "EndTxn) through the real transaction coordinator, markers and read_committed path; the "
                          "topic gets a transaction-state partition. 0: the run without transactions")
    sim.add_argument("--no-power-faults", action="store_true",
                     help="leave out the power-loss and clean-stop faults")
    sim.add_argument("--jobs", type=int, default=1, help="worker processes (seeds are independent)")
    sim.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    sim.set_defaults(func=_simulate)
