"""`semel bench partitions`: how a local cluster's cost grows with its partition count.

One local cluster (`--brokers`, RF `--replication-factor`) is grown step by step to each of
`--counts` partitions in bench topics (topics of at most `limits.MAX_PARTITIONS_PER_TOPIC`
partitions; a step adds topics, so the cluster holds exactly that many bench partitions, plus
whatever internal partitions exist). At each step it reports:

- `create`: wall time and broker CPU to create the step's partitions until every one has a
  leader and a full ISR;
- `idle`: each broker's CPU over `--idle-s` seconds with no client traffic, as % of one core
  (CPU time from /proc/PID/stat, so a loaded machine does not inflate it);
- `brokers`: each broker's RSS, open descriptors (by kind: data files, sockets, other) and its
  RLIMIT_NOFILE, and the partition replicas it hosts;
- `produce`: the same offered load (`--producers` processes, `--rate-mb-s`, 0 = as fast as
  they go) for `--duration-s` seconds spread over all the step's partitions (each chunk of
  records goes to a topic chosen in proportion to its partitions; the producer's sticky
  partitioner spreads keyless records over a topic's partitions).

The summary gives `ratio_<n>_to_<first>` = produce throughput at n partitions / at the first
count, and descriptors per added partition replica, all measured in this one run. Progress
goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from semel import limits
from semel.cluster.tooling.bench import MB, _cluster, _cpu_snapshot, _out, _produce_phase, _progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--counts", default="6,600,3000",
                        help="partition counts, ascending, comma separated (default 6,600,3000)")
    parser.add_argument("--brokers", type=int, default=3, help="brokers of the local cluster (default 3)")
    parser.add_argument("--replication-factor", type=int, default=3, help="default 3")
    parser.add_argument("--record-bytes", type=int, default=1024, help="value size (default 1024)")
    parser.add_argument("--duration-s", type=float, default=10.0, help="produce seconds per count (default 10; 0: skip)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="latency samples of the first seconds are dropped")
    parser.add_argument("--producers", type=int, default=1, help="producer processes (default 1)")
    parser.add_argument("--rate-mb-s", type=float, default=0.0, help="offered load cap, all producers (0: max)")
    parser.add_argument("--linger-ms", type=int, default=None, help="producer linger_ms (client default)")
    parser.add_argument("--batch-bytes", type=int, default=None, help="producer batch_bytes (client default)")
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds of idle CPU measured per count (default 10)")
    parser.add_argument("--settle-s", type=float, default=3.0,
                        help="seconds waited after creating partitions before idle is measured (default 3)")
    parser.add_argument("--create-timeout-s", type=float, default=600.0,
                        help="how long a step may take to give every partition a leader and a full ISR")
    parser.add_argument("--keep-data", action="store_true", help="keep the local cluster's data dir")
    parser.add_argument("--broker-event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the local brokers' event loop (their --event-loop; default asyncio)")
    parser.add_argument("--max-partition-replicas-per-broker", type=int, default=None,
                        help="the brokers' --max-partition-replicas-per-broker (default: theirs, from RLIMIT_NOFILE)")


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"semel bench partitions: --counts {text!r}: comma separated integers") from None
    if not counts or counts != sorted(set(counts)) or counts[0] < 1:
        raise SystemExit("semel bench partitions: --counts must be ascending, distinct and positive")
    return counts


# --- what a broker process holds (/proc) ---------------------------------------------------
def broker_resources(pid: int, data_dir: Path | None = None) -> dict[str, Any]:
    """RSS, threads, open descriptors by kind and the descriptor limit of process `pid`
    (Linux /proc). `data_files` are descriptors on files under `data_dir` (logs, indexes,
    RocksDB); `sockets`; `other` (pipes, eventfds, epoll, libraries)."""
    out: dict[str, Any] = {"pid": pid}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    data = sockets = other = 0
    prefix = str(data_dir.resolve()) if data_dir is not None else None
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:"):
            sockets += 1
        elif prefix is not None and target.startswith(prefix):
            data += 1
        else:
            other += 1
    out["fds"] = data + sockets + other
    out["fds_by_kind"] = {"data_files": data, "sockets": sockets, "other": other}
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = line.split()[3]
                out["nofile_limit"] = int(soft) if soft.isdigit() else None
    return out


def _replicas_per_broker(view: Any) -> dict[int, int]:
    hosted: dict[int, int] = {}
    for infos in view.topics.values():
        for info in infos:
            for broker in info.replicas:
                hosted[broker] = hosted.get(broker, 0) + 1
    return hosted


def _wait_ready(admin: Any, topics: list[str], deadline: float) -> Any:
    """The metadata once every partition of `topics` has a leader and its whole replica set in the ISR."""
    from semel.client.errors import SemelError

    while True:
        try:
            view = admin.metadata(topics, timeout_ms=30_000)
        except SemelError as exc:  # brokers busy creating replicas may answer late: that is the figure
            if time.monotonic() > deadline:
                raise
            _progress(f"  metadata: {exc}; asking again")
            continue
        infos = [i for t in topics for i in view.topics.get(t, [])]
        if infos and all(i.leader_id >= 0 and len(i.isr) == len(i.replicas) for i in infos):
            return view
        if time.monotonic() > deadline:
            lagging = sum(1 for i in infos if i.leader_id < 0 or len(i.isr) < len(i.replicas))
            raise RuntimeError(f"{lagging} of {len(infos)} partitions without a leader or a full ISR")
        time.sleep(0.5)


def _grow(admin: Any, prefix: str, have: list[tuple[str, int]], target: int, rf: int) -> list[tuple[str, int]]:
    """Create topics of at most MAX_PARTITIONS_PER_TOPIC partitions until `have` sums to `target`."""
    from semel.client.errors import InvalidReplicationFactorError

    total = sum(n for _, n in have)
    while total < target:
        n = min(limits.MAX_PARTITIONS_PER_TOPIC, target - total)
        name = f"{prefix}-{len(have)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.create_topic(name, n, rf, timeout_ms=120_000, if_not_exists=True)
                break
            except InvalidReplicationFactorError:
                if time.monotonic() > deadline:  # a broker of a fresh cluster can be fenced a moment
                    raise
                time.sleep(0.2)
        have = [*have, (name, n)]
        total += n
    return have


def _broker_cpu_s(snapshot: dict[str, Any]) -> list[float]:
    return list(snapshot["pids"].values())


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(args: argparse.Namespace) -> int:
    from semel.client import Admin

    counts = _counts(args.counts)
    args.bootstrap = None  # always a local cluster: the figures read its processes' /proc
    args.protocol = "grpc"
    args.acks = "all"
    args.partitions = counts[0]
    if args.max_partition_replicas_per_broker is not None:
        args.broker_extra_args = ["--max-partition-replicas-per-broker", str(args.max_partition_replicas_per_broker)]
    options: dict[str, Any] = {"acks": "all"}
    for name in ("batch_bytes", "linger_ms"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    steps: list[dict[str, Any]] = []
    with _cluster(args) as (bootstrap, broker_pids, broker_logs):
        data_dirs = [log.parent for log in broker_logs]
        prefix = f"parts-{int(time.time())}"
        topics: list[tuple[str, int]] = []
        with Admin(bootstrap) as admin:
            for count in counts:
                _progress(f"growing to {count} partitions (RF {args.replication_factor}) ...")
                cpu_before = _cpu_snapshot(broker_pids)
                began = time.monotonic()
                topics = _grow(admin, prefix, topics, count, args.replication_factor)
                view = _wait_ready(admin, [t for t, _ in topics], began + args.create_timeout_s)
                create_wall_s = time.monotonic() - began
                cpu_after = _cpu_snapshot(broker_pids)
                step: dict[str, Any] = {
                    "partitions": count,
                    "create": {"wall_s": round(create_wall_s, 2),
                               "brokers_cpu_s": [round(a - b, 2) for a, b in
                                                 zip(_broker_cpu_s(cpu_after), _broker_cpu_s(cpu_before))],
                               "load_average": _load_average()},
                }
                time.sleep(args.settle_s)
                idle_before = _cpu_snapshot(broker_pids)
                time.sleep(args.idle_s)
                idle_after = _cpu_snapshot(broker_pids)
                wall = idle_after["wall"] - idle_before["wall"]
                step["idle"] = {
                    "wall_s": round(wall, 2),
                    "brokers_core_pct": [round((a - b) * 100 / wall, 2) for a, b in
                                         zip(_broker_cpu_s(idle_after), _broker_cpu_s(idle_before))],
                    "load_average": _load_average(),
                }
                hosted = _replicas_per_broker(admin.metadata())
                resources = [broker_resources(pid, d) for pid, d in zip(broker_pids, data_dirs)]
                for broker_id, res in enumerate(resources, start=1):
                    res["partition_replicas"] = hosted.get(broker_id, 0)
                step["brokers"] = resources
                if args.duration_s > 0:
                    args.partitions = count
                    phase = _produce_phase(bootstrap, [t for t, _ in topics], args, options,
                                           args.rate_mb_s * MB, broker_pids, broker_logs=broker_logs,
                                           topic_weights=[n for _, n in topics])
                    step["produce"] = {k: phase[k] for k in (
                        "records", "errors", "elapsed_s", "records_per_s", "mb_per_s", "latency_ms_p50",
                        "latency_ms_p99", "avg_batch_kib", "batch_retries", "cpu", "loop")}
                    step["produce"]["load_average"] = _load_average()
                    step["brokers_after_produce"] = [
                        {k: broker_resources(pid, d)[k] for k in ("rss_mb", "fds")}
                        for pid, d in zip(broker_pids, data_dirs)]
                steps.append(step)
                _progress(f"{count} partitions: idle {step['idle']['brokers_core_pct']} % of a core, "
                          f"rss {[r['rss_mb'] for r in resources]} MB, fds {[r['fds'] for r in resources]}"
                          + (f", {step['produce']['mb_per_s']} MB/s" if "produce" in step else ""))
    _out().done()
    print(_summary(args, counts, steps))
    return 0


def _summary(args: argparse.Namespace, counts: list[int], steps: list[dict[str, Any]]) -> str:
    import json

    first = steps[0]
    result: dict[str, Any] = {
        "benchmark": "partitions", "counts": counts, "brokers": args.brokers,
        "replication_factor": args.replication_factor, "producers": args.producers,
        "record_bytes": args.record_bytes, "rate_mb_s_cap": args.rate_mb_s or None, "cores": os.cpu_count(),
        "steps": steps,
    }
    for step in steps[1:]:
        n = step["partitions"]
        if "produce" in step and first.get("produce", {}).get("records_per_s"):
            result[f"ratio_{n}_to_{counts[0]}"] = round(
                step["produce"]["records_per_s"] / first["produce"]["records_per_s"], 3)
        # descriptors per partition replica the step added, per broker
        per_replica = []
        for before, after in zip(first["brokers"], step["brokers"]):
            added = after["partition_replicas"] - before["partition_replicas"]
            per_replica.append(round((after["fds"] - before["fds"]) / added, 3) if added else None)
        result[f"fds_per_replica_{counts[0]}_to_{n}"] = per_replica
    last = steps[-1]
    result["max_idle_core_pct"] = max(last["idle"]["brokers_core_pct"])
    result["max_rss_mb"] = max(b["rss_mb"] for s in steps for b in s["brokers"] + s.get("brokers_after_produce", []))
    return json.dumps(result)
