"""`semel bench ...`: benchmarks are commands that print figures, never timed tests.

Each concern contributes a benchmark function here by name; the heavy imports happen
only when that benchmark runs.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module, function, help). Each function takes the parsed args.
BENCHMARKS = {
    "storage": ("semel.storage.bench", "add_arguments", "run", "append/read throughput of the partition log vs raw os.write"),
    "validation": ("semel.cluster.broker.validation_bench", "add_arguments", "run",
                   "cost of the produce path's record validation per MB (with vs without, one run)"),
    "produce": ("semel.cluster.tooling.bench", "add_produce_arguments", "run_produce", "producer throughput and latency against a (local) cluster"),
    "consume": ("semel.cluster.tooling.bench", "add_consume_arguments", "run_consume", "consumer throughput against a (local) cluster"),
    "big-partition": ("semel.cluster.tooling.big_partition", "add_arguments", "run",
                      "one broker with a big partition: recovery after SIGKILL, fetch from offset 0, "
                      "consumer vs producer MB/s, RSS"),
    "txn-cost": ("semel.cluster.tooling.bench", "add_txn_cost_arguments", "run_txn_cost",
                 "what one transaction costs beyond its records: CPU per transaction, commit latency"),
    "txn-scale": ("semel.cluster.tooling.bench_scale", "add_txn_scale_arguments", "run_txn_scale",
                  "100 transactional ids and 100 idempotent producers: commit p50/p99, CPU per transaction"),
    "groups": ("semel.cluster.tooling.bench_scale", "add_groups_arguments", "run_groups",
               "one 50-member group and 100 two-member groups: time to settle a join/leave, heartbeat CPU"),
    "partitions": ("semel.cluster.tooling.bench_partitions", "add_arguments", "run",
                   "produce throughput, idle CPU, RSS and descriptors at growing partition counts (one run)"),
    "grpc-cost": ("semel.cluster.tooling.grpc_cost", "add_arguments", "run",
                  "CPU per gRPC message (unary, stream) on asyncio against uvloop, alternating in one run"),
    "frame-cost": ("semel.cluster.tooling.frame_cost", "add_arguments", "run",
                   "CPU per replication round trip: gRPC stream against length-prefixed frames, with and without TLS"),
    "assignor": ("semel.coordinator.bench", "add_arguments", "run",
                 "the group assignor's time at its bounds (1000 members, 10000 partitions)"),
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="run a benchmark and print figures (last line: one JSON object)")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, (module_name, add_args, run, help_text) in BENCHMARKS.items():
        p = bench_sub.add_parser(name, help=help_text)
        module = importlib.import_module(module_name)
        getattr(module, add_args)(p)
        p.set_defaults(func=getattr(module, run))
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
