"""Measure the internal replication transport against gRPC replication, side by side in one
run so the ratio holds on a busy machine: `semel bench txn-cost` (broker CPU per transaction,
replication messages per transaction) and `semel bench produce` (broker CPU per MB), each with
`--broker-replication-transport grpc` and `tcp`, taking turns (grpc, tcp, then tcp, grpc, ...).

    .venv/bin/python tests/cluster/measure_replication_transport.py [ROUNDS] [TXN_SECONDS] [PRODUCE_SECONDS]

Prints each run's figures as it goes and one JSON object on the last line: per transport the
best (lowest) broker CPU per transaction (above idle) and per MB, the load average before and
after, and tcp / grpc ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

TRANSPORTS = ("grpc", "tcp")


def bench(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "semel.cli", "bench", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def txn_cost(transport: str, seconds: str) -> dict:
    r = bench(["txn-cost", "--duration-s", seconds, "--broker-replication-transport", transport])
    return {"brokers_cpu_ms_per_txn": r["brokers_cpu_ms_per_txn"],
            "brokers_cpu_ms_per_txn_above_idle": r["brokers_cpu_ms_per_txn_above_idle"],
            "brokers_idle_cpu_ms_per_s": r["brokers_idle_cpu_ms_per_s"],
            "transactions_per_s": r["transactions_per_s"], "commit_ms_p50": r["commit_ms_p50"],
            "commit_ms_p99": r["commit_ms_p99"], "replica_fetch_per_txn": r["messages_per_txn"].get("ReplicaFetch")}


def produce(transport: str, seconds: str) -> dict:
    r = bench(["produce", "--duration-s", seconds, "--broker-replication-transport", transport])
    mb = r["mb_per_s"] * r["elapsed_s"]
    brokers_s = sum(r["cpu"]["brokers_cpu_s"])
    return {"mb_per_s": r["mb_per_s"], "brokers_cpu_ms_per_mb": round(brokers_s * 1000 / mb, 2),
            "latency_ms_p50": r.get("latency_ms_p50"), "latency_ms_p99": r.get("latency_ms_p99")}


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    txn_s = sys.argv[2] if len(sys.argv) > 2 else "15"
    produce_s = sys.argv[3] if len(sys.argv) > 3 else "10"
    load = [round(os.getloadavg()[0], 1)]
    runs: dict[str, dict[str, list[dict]]] = {t: {"txn_cost": [], "produce": []} for t in TRANSPORTS}
    for i in range(rounds):
        for transport in TRANSPORTS if i % 2 == 0 else TRANSPORTS[::-1]:
            t = txn_cost(transport, txn_s)
            runs[transport]["txn_cost"].append(t)
            print(f"round {i + 1} {transport} txn-cost: {t} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
            load.append(round(os.getloadavg()[0], 1))
            p = produce(transport, produce_s)
            runs[transport]["produce"].append(p)
            print(f"round {i + 1} {transport} produce: {p} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
            load.append(round(os.getloadavg()[0], 1))
    best = {t: {"brokers_cpu_ms_per_txn_above_idle": min(r["brokers_cpu_ms_per_txn_above_idle"] for r in runs[t]["txn_cost"]),
                "brokers_cpu_ms_per_txn": min(r["brokers_cpu_ms_per_txn"] for r in runs[t]["txn_cost"]),
                "brokers_cpu_ms_per_mb": min(r["brokers_cpu_ms_per_mb"] for r in runs[t]["produce"]),
                "mb_per_s": max(r["mb_per_s"] for r in runs[t]["produce"])} for t in TRANSPORTS}
    print(json.dumps({"measure": "replication-transport", "rounds": rounds, "txn_duration_s": float(txn_s),
                      "produce_duration_s": float(produce_s), "load_average_1m": load, "best": best,
                      "tcp_over_grpc": {k: round(best["tcp"][k] / best["grpc"][k], 3) for k in best["grpc"]},
                      "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
