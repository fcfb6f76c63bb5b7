"""`semel chaos run|check|schedule` and `semel toxiproxy` (registered by cluster/cli/main.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from semel.chaos.nemesis import DEFAULT_FAMILIES, describe_schedule, parse_families
from semel.clock import wall_clock_ms


def _run(args: argparse.Namespace) -> int:
    from semel.chaos.runner import RunConfig, plan, run_chaos
    from semel.chaos.workloads import WorkloadUnavailable

    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        families = parse_families(args.nemesis)
    except ValueError as exc:
        print(f"semel chaos run: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else wall_clock_ms() % (1 << 31)
    out = args.out or f"chaos-runs/{args.workload}-seed{seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    cfg = RunConfig(duration_s=args.duration_s, families=families, workload=args.workload, seed=seed,
                    brokers=args.brokers, out_dir=out, interval_s=args.interval_s,
                    max_concurrent_faults=args.max_concurrent_faults, concurrency=args.concurrency,
                    partitions=args.partitions, final_read_timeout_s=args.final_read_timeout_s,
                    toxiproxy_url=args.toxiproxy_url, fsync=args.fsync)
    try:
        schedule = plan(cfg)
    except ValueError as exc:
        print(f"semel chaos run: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe_schedule(schedule))
        return 0
    try:
        result = run_chaos(cfg)
    except (WorkloadUnavailable, ValueError) as exc:
        print(f"semel chaos run: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"seed": seed, "valid": result.verdict["valid"], "out": str(result.out_dir),
                      "anomalies": {k: result.verdict["counts"].get(k, 0) for k in result.verdict["anomalies"]}}))
    return result.exit_code


def _campaign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from semel.chaos import campaign
    from semel.chaos.nemesis import FAMILIES, FSYNC_FAMILIES
    from semel.chaos.workloads import WORKLOADS

    try:
        nemeses = campaign.parse_nemeses(args.families, FAMILIES, FSYNC_FAMILIES)
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        if args.workloads == "all":
            workloads = list(WORKLOADS)
        unknown = [w for w in workloads if w not in WORKLOADS]
        if unknown or not workloads:
            raise ValueError(f"unknown workload(s) {unknown} (choose from {', '.join(WORKLOADS)}, all)")
        if args.duration_s <= 0:
            raise ValueError("--duration-s must be positive")
    except ValueError as exc:
        print(f"semel chaos campaign: {exc}", file=sys.stderr)
        return 2
    runs = campaign.plan_campaign(workloads, nemeses, campaign.workload_supports)
    out = Path(args.out or f"chaos-campaigns/{time.strftime('%Y%m%dT%H%M%S')}")
    if args.dry_run:
        for run in campaign.pending_runs(runs, campaign.load_summary(out)["rows"] if args.resume else []):
            print(run.key)
        return 0
    extra = [f"--brokers={args.brokers}", f"--interval-s={args.interval_s:g}"]
    try:
        rows = campaign.run_campaign(out, runs, args.duration_s, args.resume, extra)
    except FileExistsError as exc:
        print(f"semel chaos campaign: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"semel chaos campaign: interrupted; the runs done are in {out}; continue with "
              f"--out {out} --resume", file=sys.stderr)
        return 130
    print(campaign.summary_markdown(rows), end="")
    print(f"summary: {out / campaign.SUMMARY_MD}, {out / campaign.SUMMARY_JSON}")
    return campaign.exit_code(rows)


def _check(args: argparse.Namespace) -> int:
    from semel.chaos import checker

    ns = argparse.Namespace(history=args.history, max_examples=args.max_examples)
    return int(checker._run(ns))


def _schedule(args: argparse.Namespace) -> int:
    from semel.chaos.nemesis import plan_schedule

    try:
        families = parse_families(args.nemesis)
    except ValueError as exc:
        print(f"semel chaos schedule: {exc}", file=sys.stderr)
        return 2
    try:
        schedule = plan_schedule(args.seed, args.duration_s, families, args.brokers, args.interval_s, fsync=args.fsync)
    except ValueError as exc:
        print(f"semel chaos schedule: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(schedule.to_json(), indent=1) if args.json else describe_schedule(schedule))
    return 0


def add_commands(subparsers: Any) -> None:
    import argparse

    from semel.chaos import proxy
    from semel.chaos.checker import MAX_EXAMPLES_DEFAULT
    from semel.chaos.sim.commands import add_simulate
    from semel.chaos.workloads import WORKLOADS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    families = "kill,pause,partition,latency,reset,rolling,power-loss,clock,hijack,client-pause"
    chaos = subparsers.add_parser("chaos", help="fault-injection runs (nemesis + workload + checker)",
                                  description="Start a cluster behind fault proxies, run a workload under a "
                                              "seeded fault schedule, check the recorded history. See docs/chaos.md.")
    sub = chaos.add_subparsers(dest="chaos_command", metavar="SUBCOMMAND")
    run = sub.add_parser(
        "run", help="run a workload against a cluster under a seeded fault schedule", formatter_class=fmt,
        description="Starts its own cluster (every client, broker-to-broker and Raft link through a proxy), runs "
                    "WORKLOAD for DURATION_S while the nemesis injects faults, heals, reads everything back and "
                    "checks the history. Writes history.jsonl, verdict.json and report.html to --out; exits 1 on "
                    "any anomaly.",
        epilog="example: semel chaos run --duration-s 300 --nemesis kill,pause,partition,latency "
               "--workload txn --seed 7")
    run.add_argument("--duration-s", type=float, default=300.0, help="how long faults and the workload run")
    run.add_argument("--nemesis", default=",".join(DEFAULT_FAMILIES),
                     help=f"comma-separated fault families: {families}; all (every family but hijack and "
                          "client-pause, which act on a transactional workload's clients, and disk-full, which "
                          "needs root to mount a tmpfs per broker; combine as all,hijack,client-pause,disk-full); "
                          "or none")
    run.add_argument("--workload", default="idempotent", choices=WORKLOADS,
                     help="idempotent: unique sends + polls; txn: transactions of 1-4 ops; money: transfers "
                          "whose balances must sum to 0; copier: consume-transform-produce, output = input")
    run.add_argument("--seed", type=int, default=None, help="replays the same fault schedule (drawn and printed if unset)")
    run.add_argument("--brokers", type=int, default=3, help="brokers in the cluster (all metadata voters)")
    run.add_argument("--out", default=None, help="output directory (default chaos-runs/WORKLOAD-seedS-TIME)")
    run.add_argument("--interval-s", type=float, default=10.0, help="mean time between fault starts")
    run.add_argument("--max-concurrent-faults", type=int, default=2, help="faults active at once, at most")
    run.add_argument("--concurrency", type=int, default=5, help="client processes")
    run.add_argument("--partitions", type=int, default=6, help="keys (partitions of the workload topic)")
    run.add_argument("--final-read-timeout-s", type=float, default=60.0,
                     help="after the heal, how long the final read may take before values count as unseen")
    run.add_argument("--toxiproxy-url", default=None, help="a real Toxiproxy (default $TOXIPROXY_URL, else ours)")
    run.add_argument("--fsync", action="store_true",
                     help="brokers run with --fsync (fsync before acknowledging); power-loss may then cut every "
                          "broker at once")
    run.add_argument("--dry-run", action="store_true", help="print the fault schedule and exit")
    run.add_argument("-v", "--verbose", action="store_true", help="log the runner's and clients' debug output")
    run.set_defaults(func=_run)
    camp = sub.add_parser(
        "campaign", help="every workload under every nemesis family, a fresh seed each (long runs)",
        formatter_class=fmt,
        description="Runs `semel chaos run` once per workload and nemesis family (each family alone; the "
                    "families with an --fsync variant, such as power-loss, both ways), each for DURATION_S with a "
                    "fresh seed (printed: replay with `semel chaos run --seed`). Writes summary.md (one row per "
                    "run) and summary.json to --out after every run, and the table to stdout at the end. Exit "
                    "code: 1 if any run is invalid, else 3 if any run has no verdict (crashed, timed out), else 0.",
        epilog="example: semel chaos campaign --workloads txn --duration-s 60 --out chaos-campaigns/c1; after an "
               "interruption: the same command with --resume")
    camp.add_argument("--families", default="all",
                      help="comma-separated nemesis families (FAMILY+fsync: only the --fsync variant), or all: "
                           "every family of the nemesis registry")
    camp.add_argument("--workloads", default="all", help=f"comma-separated workloads ({', '.join(WORKLOADS)}) or all")
    camp.add_argument("--duration-s", type=float, default=600.0, help="length of each run")
    camp.add_argument("--out", default=None, help="campaign directory (default chaos-campaigns/TIME)")
    camp.add_argument("--resume", action="store_true", help="skip the runs already in OUT/summary.json")
    camp.add_argument("--brokers", type=int, default=3, help="brokers per run")
    camp.add_argument("--interval-s", type=float, default=10.0, help="mean time between fault starts")
    camp.add_argument("--dry-run", action="store_true", help="list the runs it would do and exit")
    camp.set_defaults(func=_campaign)
    check = sub.add_parser("check", help="check a history file (JSONL) for anomalies", formatter_class=fmt,
                           description="Re-run the checker on a recorded history; prints the verdict as JSON "
                                       "and exits 1 on any anomaly.")
    check.add_argument("history", help="history.jsonl written by `semel chaos run`")
    check.add_argument("--max-examples", type=int, default=MAX_EXAMPLES_DEFAULT, help="examples listed per anomaly")
    check.set_defaults(func=_check)
    sched = sub.add_parser("schedule", help="print the fault schedule a seed gives", formatter_class=fmt,
                           description="The faults `semel chaos run` would inject with these options, "
                                       "without starting anything.")
    sched.add_argument("--seed", type=int, required=True, help="the schedule's seed")
    sched.add_argument("--duration-s", type=float, default=300.0, help="length of the run")
    sched.add_argument("--nemesis", default=",".join(DEFAULT_FAMILIES), help=f"fault families: {families}; all (but hijack, client-pause, disk-full; combinable: all,hijack); none")
    sched.add_argument("--brokers", type=int, default=3, help="brokers in the cluster")
    sched.add_argument("--interval-s", type=float, default=10.0, help="mean time between fault starts")
    sched.add_argument("--fsync", action="store_true", help="as `run --fsync` (power-loss may cut every broker)")
    sched.add_argument("--json", action="store_true", help="machine-readable output")
    sched.set_defaults(func=_schedule)
    add_simulate(sub)
    chaos.set_defaults(func=lambda args: (chaos.print_help(), 2)[1])
    proxy.add_commands(subparsers)
