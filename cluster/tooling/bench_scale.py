"""`semel bench txn-scale` / `semel bench groups`: cost as producers, transactions and groups grow (issue 19).

Both start a local cluster (as `semel bench produce` does; `--bootstrap` is not offered: the
figures come from the brokers' /proc and /metrics), spread their clients over `--processes`
client processes, and print one JSON object as the last stdout line. The machine may be
shared: every figure comes with the load average, broker CPU is CPU time read from /proc (not
wall time), and comparisons are ratios within the one run.

`txn-scale`: `--transactional-ids` transactional producers, each committing a transaction of
`--records-per-txn` records every `--commit-interval-ms`, and `--idempotent-producers`
idempotent ones offering `--idempotent-rate` records/s each. Two measured windows: only the
transactions ("transactions": brokers' CPU per transaction, commit latency), then both
("mixed": commit latency under produce load, idempotent throughput). Also: how many producer
ids the brokers track (per replica, against `limits.MAX_PRODUCERS_PER_PARTITION`), broker RSS,
and the coordinators' `__transaction_state` appends against the transitions they carried
(`semel_txn_state_*`: appends started while another to the same partition was in flight are
what a group commit could merge).

`groups`: one group of `--members` members, then `--groups` groups of `--group-members`; for
each, the time until every member is assigned after all join at once, and (`--rounds` times)
after one more member joins and after it leaves again: "settled" = the group's members own
every partition of the topic exactly once, each member at least one (the members report what
they own when it changes). Then `--steady-s` seconds of steady membership: the brokers' CPU
above their idle CPU (`--idle-s` before any member joined), per member per second and per
heartbeat RPC, and broker RSS. Members reconcile their assignment every 50 ms without fetching
(the topic is empty), so the steady CPU is the membership's: heartbeats and the coordinator.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import threading
import time
import urllib.request
from typing import Any

from semel import limits
from semel.cluster.tooling.bench import (
    _cluster,
    _common_arguments,
    _cpu_snapshot,
    _create_topic,
    _out,
    _percentile,
    _progress,
    _status,
)


# --- what the brokers say ---------------------------------------------------------------------
def _metrics(urls: list[str]) -> dict[str, float]:
    """The brokers' /metrics summed over brokers by sample name; `semel_rpc_requests_total` by
    method as `rpc:<Method>`, stream messages sent as `stream:<Method>`; also `max:<name>`
    (the largest broker's value)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(("semel_txn", "semel_producer", "semel_rpc_requests",
                                           "semel_rpc_stream_messages_sent", "semel_partitions_hosted")):
                continue
            for sample in family.samples:
                if family.name in ("semel_rpc_requests", "semel_rpc_stream_messages_sent"):
                    if sample.name.endswith("_total"):
                        kind = "rpc:" if family.name == "semel_rpc_requests" else "stream:"
                        key = kind + sample.labels["method"].rsplit("/", 1)[-1]
                        out[key] = out.get(key, 0.0) + sample.value
                    continue
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
                out["max:" + sample.name] = max(out.get("max:" + sample.name, 0.0), sample.value)
    return out


def _delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _rss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            out.append(round(kib / 1024, 1))
        except (OSError, StopIteration, ValueError):
            out.append(float("nan"))
    return out


def _load() -> list[float]:
    return [round(x, 1) for x in os.getloadavg()]


def _brokers_cpu_s(before: dict[str, Any], after: dict[str, Any]) -> float:
    return sum(after["pids"][pid] - before["pids"][pid] for pid in before["pids"])


def _machine_busy_share(before: dict[str, Any], after: dict[str, Any]) -> float:
    total = after["machine_total_s"] - before["machine_total_s"]
    idle = after["machine_idle_s"] - before["machine_idle_s"]
    return round((total - idle) / total, 3) if total > 0 else float("nan")


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


# --- txn-scale ---------------------------------------------------------------------------------
def add_txn_scale_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--transactional-ids", type=int, default=100, help="transactional producers (default 100)")
    parser.add_argument("--idempotent-producers", type=int, default=100, help="idempotent producers (default 100)")
    parser.add_argument("--commit-interval-ms", type=int, default=100, help="transaction length (default 100)")
    parser.add_argument("--records-per-txn", type=int, default=5, help="records each transaction writes (default 5)")
    parser.add_argument("--idempotent-rate", type=float, default=20.0,
                        help="records/s each idempotent producer offers in the mixed window (default 20)")
    parser.add_argument("--duration-s", type=float, default=20.0, help="each measured window (default 20)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="before each window (default 3)")
    parser.add_argument("--idle-s", type=float, default=3.0,
                        help="the brokers' idle CPU, measured with every producer initialised (default 3)")


def _txn_worker(bootstrap: str, topic: str, index: int, txn_ids: list[str], idempotent: int,
                args: dict[str, Any], phase: Any, results: Any) -> None:
    """One client process: its transactional producers (a thread each) and idempotent ones (one
    thread sends for all). `phase`: 0 set up, 1 transactions, 2 mixed, 3 stop."""
    from semel.client import Producer

    value = os.urandom(args["record_bytes"])
    interval_s = args["commit_interval_ms"] / 1000
    commits: list[tuple[float, float, int]] = []  # (finished at, latency s, phase)
    errors: list[str] = []
    lock = threading.Lock()
    txn_producers = [Producer(bootstrap, acks="all", transactional_id=tid) for tid in txn_ids]
    idem_producers = [Producer(bootstrap, acks="all", enable_idempotence=True) for _ in range(idempotent)]

    def init(p: Any) -> None:
        p.partitions_for(topic)
        p.init_transactions()

    threads = [threading.Thread(target=init, args=(p,)) for p in txn_producers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in idem_producers:
        p.partitions_for(topic)
    results.put(("ready", index))

    def run_txn(p: Any) -> None:
        while phase.value == 0:
            time.sleep(0.01)
        try:
            while phase.value < 3:
                p.begin_transaction()
                end = time.perf_counter() + interval_s
                for _ in range(args["records_per_txn"]):
                    p.send(topic, value)
                left = end - time.perf_counter()
                if left > 0:
                    time.sleep(left)
                current = phase.value
                t0 = time.perf_counter()
                p.commit_transaction()
                latency = time.perf_counter() - t0
                with lock:
                    commits.append((time.time(), latency, current))
        except Exception as exc:  # reported, not hidden: the run says how many failed
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    acked: dict[int, int] = {}  # 100 ms bucket of time.time() -> records acknowledged

    def on_ack(future: Any) -> None:
        if future.exception(0) is None:
            bucket = int(time.time() * 10)
            with lock:
                acked[bucket] = acked.get(bucket, 0) + 1

    def run_idempotent() -> None:
        owed = 0.0
        last = time.perf_counter()
        while phase.value < 3:
            time.sleep(0.05)
            now = time.perf_counter()
            if phase.value != 2:
                last = now
                continue
            owed += (now - last) * args["idempotent_rate"]
            last = now
            whole = int(owed)
            owed -= whole
            for p in idem_producers:
                for _ in range(whole):
                    p.send(topic, value).add_done_callback(on_ack)

    threads = [threading.Thread(target=run_txn, args=(p,), daemon=True) for p in txn_producers]
    threads.append(threading.Thread(target=run_idempotent, daemon=True))
    cpu0 = os.times()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in idem_producers:
        p.flush()
    cpu1 = os.times()
    for p in [*txn_producers, *idem_producers]:
        try:
            p.close()
        except Exception:
            pass
    results.put(("done", index, {"commits": commits, "acked": acked, "errors": errors,
                                 "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}))


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def run_txn_scale(args: argparse.Namespace) -> int:
    if args.bootstrap:
        raise SystemExit("semel bench txn-scale: measures a local cluster (no --bootstrap)")
    if min(args.processes, args.transactional_ids, args.duration_s, args.commit_interval_ms) <= 0 \
            or args.idempotent_producers < 0:
        raise SystemExit("semel bench txn-scale: counts and durations must be positive")
    ctx = multiprocessing.get_context("spawn")
    with _cluster(args) as (bootstrap, pids, _logs):
        topic = _create_topic(bootstrap, args)
        urls = args.metrics_urls
        phase = ctx.Value("i", 0, lock=False)
        results = ctx.Queue()
        tids = _split([f"bench-txn-scale-{os.getpid()}-{i}" for i in range(args.transactional_ids)], args.processes)
        idem = [len(x) for x in _split(list(range(args.idempotent_producers)), args.processes)]
        options = {"record_bytes": args.record_bytes, "commit_interval_ms": args.commit_interval_ms,
                   "records_per_txn": args.records_per_txn, "idempotent_rate": args.idempotent_rate}
        procs = [ctx.Process(target=_txn_worker, args=(bootstrap, topic, i, tids[i], idem[i], options, phase, results),
                             daemon=True) for i in range(args.processes)]
        for proc in procs:
            proc.start()
        _progress(f"initialising {args.transactional_ids} transactional and {args.idempotent_producers} idempotent "
                  f"producers in {args.processes} processes ...")
        ready = 0
        deadline = time.time() + 300
        while ready < len(procs):
            try:
                ready += results.get(timeout=1.0)[0] == "ready"
            except queue.Empty:
                if time.time() > deadline or not all(p.is_alive() for p in procs):
                    raise RuntimeError("a client process failed to set up; see its output above")
        idle0, m_idle0 = _cpu_snapshot(pids), time.time()
        time.sleep(args.idle_s)
        idle1 = _cpu_snapshot(pids)
        idle_cpu_s_per_s = _brokers_cpu_s(idle0, idle1) / max(time.time() - m_idle0, 1e-9)
        windows: dict[str, dict[str, Any]] = {}
        for value, name in ((1, "transactions"), (2, "mixed")):
            phase.value = value
            _progress(f"{name}: warm-up {args.warmup_s} s, then {args.duration_s} s measured ...")
            time.sleep(args.warmup_s)
            w: dict[str, Any] = {"load_avg": _load(), "begin": time.time(), "cpu0": _cpu_snapshot(pids),
                                 "m0": _metrics(urls)}
            _out().phase(args.duration_s)
            end = w["begin"] + args.duration_s
            while time.time() < end:
                time.sleep(min(1.0, max(0.0, end - time.time())))
                _status(f"  {name}: {max(0.0, end - time.time()):.0f} s left")
            w.update({"end": time.time(), "cpu1": _cpu_snapshot(pids), "m1": _metrics(urls), "rss_mb": _rss_mb(pids),
                      "load_avg_end": _load()})
            windows[name] = w
        phase.value = 3
        outcomes: list[dict[str, Any]] = []
        deadline = time.time() + 120
        while len(outcomes) < len(procs):
            try:
                item = results.get(timeout=1.0)
            except queue.Empty:
                if time.time() > deadline:
                    raise RuntimeError("client processes did not finish in 120 s")
                continue
            if item[0] == "done":
                outcomes.append(item[2])
        for proc in procs:
            proc.join(timeout=10)
        final = _metrics(urls)
    result: dict[str, Any] = {
        "benchmark": "txn-scale", "brokers": args.brokers, "partitions": args.partitions,
        "replication_factor": args.replication_factor, "processes": args.processes,
        "transactional_ids": args.transactional_ids, "idempotent_producers": args.idempotent_producers,
        "commit_interval_ms": args.commit_interval_ms, "records_per_txn": args.records_per_txn,
        "record_bytes": args.record_bytes, "idempotent_rate_per_producer": args.idempotent_rate,
        "cores": os.cpu_count(), "brokers_idle_cpu_ms_per_s": round(idle_cpu_s_per_s * 1000, 1),
        "errors": [e for o in outcomes for e in o["errors"]][:10],
        "clients_cpu_s": round(sum(o["cpu_s"] for o in outcomes), 1),
    }
    for name, w in windows.items():
        wall = w["end"] - w["begin"]
        lat = sorted(lat for o in outcomes for (at, lat, ph) in o["commits"] if w["begin"] <= at < w["end"])
        count = len(lat)
        acked = sum(n for o in outcomes for bucket, n in o["acked"].items()
                    if w["begin"] <= bucket / 10 < w["end"])
        cpu_s = _brokers_cpu_s(w["cpu0"], w["cpu1"])
        m0, m1 = w["m0"], w["m1"]
        appends = _delta(m1, m0, "semel_txn_state_appends_total")
        result[name] = {
            "load_avg": w["load_avg"], "load_avg_end": w["load_avg_end"], "wall_s": round(wall, 1),
            "machine_busy_share": _machine_busy_share(w["cpu0"], w["cpu1"]),
            "transactions": count, "transactions_per_s": round(count / wall, 1),
            "transactions_per_s_offered": round(args.transactional_ids * 1000 / args.commit_interval_ms, 1),
            "commit_ms_p50": round(_percentile(lat, 0.50) * 1000, 1),
            "commit_ms_p99": round(_percentile(lat, 0.99) * 1000, 1),
            "commit_ms_max": round(lat[-1] * 1000, 1) if lat else None,
            "brokers_cpu_s": round(cpu_s, 2), "brokers_cores": round(cpu_s / wall, 2),
            "brokers_cpu_ms_per_txn": round(cpu_s * 1000 / count, 2) if count else None,
            "brokers_cpu_ms_per_txn_above_idle": (round((cpu_s - idle_cpu_s_per_s * wall) * 1000 / count, 2)
                                                  if count else None),
            "state_appends": appends,
            "state_transitions": _delta(m1, m0, "semel_txn_state_transitions_total"),
            "state_appends_overlapping": _delta(m1, m0, "semel_txn_state_appends_overlapping_total"),
            "state_appends_per_txn": round(appends / count, 2) if count else None,
            "rpcs_per_txn": {k[4:]: round(_delta(m1, m0, k) / count, 2) for k in sorted(m1)
                             if k.startswith("rpc:") and count and _delta(m1, m0, k) > 0},
            # ReplicaFetch responses (replication rounds to a follower; as many fetch requests again)
            "replication_messages_per_txn": (round(_delta(m1, m0, "stream:ReplicaFetch") / count, 2)
                                             if count else None),
            "brokers_rss_mb": w["rss_mb"],
        }
        if name == "mixed":
            result[name].update({
                "idempotent_records_per_s": round(acked / wall, 1),
                "idempotent_records_per_s_offered": round(args.idempotent_producers * args.idempotent_rate, 1),
                "idempotent_mb_per_s": round(acked * args.record_bytes / 1e6 / wall, 2)})
    result["producer_state"] = {
        "producer_ids_tracked_all_replicas": final.get("semel_producer_ids_tracked", 0.0),
        "producer_ids_tracked_max_per_replica": final.get("max:semel_producer_ids_tracked_max", 0.0),
        "producers_that_wrote": args.transactional_ids + args.idempotent_producers,
        "bound_per_partition": limits.MAX_PRODUCERS_PER_PARTITION,
        "within_bound": final.get("max:semel_producer_ids_tracked_max", 0.0) <= limits.MAX_PRODUCERS_PER_PARTITION,
    }
    _out().done()
    print(json.dumps(result))
    return 0


# --- groups --------------------------------------------------------------------------------------
def add_groups_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.set_defaults(partitions=100)
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--members", type=int, default=50, help="members of the one big group (default 50)")
    parser.add_argument("--groups", type=int, default=100, help="small groups (default 100)")
    parser.add_argument("--group-members", type=int, default=2, help="members of each small group (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="join-then-leave cycles per case (default 3)")
    parser.add_argument("--steady-s", type=float, default=15.0, help="steady membership measured (default 15)")
    parser.add_argument("--idle-s", type=float, default=5.0, help="the brokers' idle CPU first (default 5)")
    parser.add_argument("--settle-timeout-s", type=float, default=120.0, help="give up on a settle after (default 120)")
    parser.add_argument("--group-heartbeat-interval-ms", type=int, default=None,
                        help="the brokers' --group-heartbeat-interval-ms (default: theirs, "
                             f"{limits.GROUP_HEARTBEAT_INTERVAL_MS_DEFAULT})")


def _group_worker(bootstrap: str, topic: str, commands: Any, reports: Any) -> None:
    """Members on command: ("add", key, group) starts one (a thread reconciling every 50 ms),
    ("remove", key) closes one (it leaves the group), ("exit",) closes all. Each member reports
    (key, owned partitions or None once closed, time.time()) whenever what it owns changes."""
    from semel.client.group import Consumer

    stops: dict[str, threading.Event] = {}
    threads: dict[str, threading.Thread] = {}

    def member(key: str, group: str, stop: threading.Event) -> None:
        owned: set[int] = set()

        def assigned(parts: set[tuple[str, int]]) -> None:
            owned.update(p for _, p in parts)
            reports.put((key, sorted(owned), time.time()))

        def revoked(parts: set[tuple[str, int]]) -> None:
            owned.difference_update(p for _, p in parts)
            reports.put((key, sorted(owned), time.time()))

        consumer = Consumer(bootstrap, group_id=group, enable_auto_commit=False)
        try:
            consumer.subscribe([topic], on_assigned=assigned, on_revoked=revoked, on_lost=revoked)
            while not stop.is_set():
                consumer.reconcile()
                stop.wait(0.05)
        except Exception as exc:
            reports.put((key, f"error: {type(exc).__name__}: {exc}", time.time()))
        finally:
            consumer.close()
            reports.put((key, None, time.time()))

    while True:
        command = commands.get()
        if command[0] == "add":
            stop = stops[command[1]] = threading.Event()
            thread = threads[command[1]] = threading.Thread(target=member, args=(command[1], command[2], stop),
                                                            daemon=True)
            thread.start()
        elif command[0] == "remove":
            stops.pop(command[1]).set()
        else:
            for stop in stops.values():
                stop.set()
            for thread in threads.values():
                thread.join(timeout=30)
            reports.put(("exit", None, time.time()))
            return


class _Members:
    """The members' reported ownership, and which group each member is in."""

    def __init__(self, reports: Any, partitions: int) -> None:
        self.reports = reports
        self.partitions = set(range(partitions))
        self.owned: dict[str, set[int] | None] = {}
        self.group: dict[str, str] = {}
        self.errors: list[str] = []
        self.last_report = 0.0

    def drain(self, timeout_s: float) -> None:
        try:
            item = self.reports.get(timeout=timeout_s)
        except queue.Empty:
            return
        while True:
            key, owned, at = item
            if isinstance(owned, str):
                self.errors.append(f"{key}: {owned}")
            elif key != "exit":
                self.owned[key] = None if owned is None else set(owned)
                self.last_report = max(self.last_report, at)
            try:
                item = self.reports.get_nowait()
            except queue.Empty:
                return

    def settled(self, groups: dict[str, list[str]]) -> bool:
        for members in groups.values():
            seen: set[int] = set()
            total = 0
            for key in members:
                owned = self.owned.get(key)
                if not owned and len(members) <= len(self.partitions):
                    return False
                total += len(owned or ())
                seen |= owned or set()
            if total != len(self.partitions) or seen != self.partitions:
                return False
        return True

    def wait_settled(self, groups: dict[str, list[str]], since: float, timeout_s: float,
                     gone: list[str] | tuple[str, ...] = ()) -> float:
        """Seconds from `since` to the report that made every group whole (and `gone` closed)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.drain(0.2)
            if self.errors:
                raise RuntimeError(f"a member failed: {self.errors[:3]}")
            if all(self.owned.get(k, 0) is None for k in gone) and self.settled(groups):
                return max(0.0, self.last_report - since)
        raise RuntimeError(f"the group(s) did not settle in {timeout_s} s")


def run_groups(args: argparse.Namespace) -> int:
    if args.bootstrap:
        raise SystemExit("semel bench groups: measures a local cluster (no --bootstrap)")
    if min(args.processes, args.members, args.groups, args.group_members, args.steady_s) <= 0:
        raise SystemExit("semel bench groups: counts and durations must be positive")
    if args.group_heartbeat_interval_ms:
        args.broker_extra_args = ["--group-heartbeat-interval-ms", str(args.group_heartbeat_interval_ms)]
    ctx = multiprocessing.get_context("spawn")
    with _cluster(args) as (bootstrap, pids, _logs):
        topic = _create_topic(bootstrap, args)
        urls = args.metrics_urls
        reports = ctx.Queue()
        commands = [ctx.Queue() for _ in range(args.processes)]
        procs = [ctx.Process(target=_group_worker, args=(bootstrap, topic, commands[i], reports), daemon=True)
                 for i in range(args.processes)]
        for proc in procs:
            proc.start()
        members = _Members(reports, args.partitions)
        result: dict[str, Any] = {
            "benchmark": "groups", "brokers": args.brokers, "partitions": args.partitions,
            "processes": args.processes, "cores": os.cpu_count(),
            "group_heartbeat_interval_ms": args.group_heartbeat_interval_ms or limits.GROUP_HEARTBEAT_INTERVAL_MS_DEFAULT,
            "brokers_idle_rss_mb": _rss_mb(pids)}
        placed = 0

        def add(key: str, group: str) -> None:
            nonlocal placed
            members.group[key] = group
            members.owned.pop(key, None)
            commands[placed % args.processes].put(("add", key, group))
            where[key] = placed % args.processes
            placed += 1

        where: dict[str, int] = {}
        cases = [("one_group", {"big": [f"big-m{i}" for i in range(args.members)]}),
                 ("many_groups", {f"small-{g}": [f"small-{g}-m{i}" for i in range(args.group_members)]
                                  for g in range(args.groups)})]
        for name, groups in cases:
            prefix = f"bench-groups-{os.getpid()}-{name}"
            count = sum(len(m) for m in groups.values())
            _progress(f"{name}: {len(groups)} group(s), {count} members joining ...")
            load = _load()
            started = time.time()
            for group, keys in groups.items():
                for key in keys:
                    add(key, f"{prefix}-{group}")
            first = members.wait_settled(groups, started, args.settle_timeout_s)
            joins: list[float] = []
            leaves: list[float] = []
            probe = next(iter(groups))
            for r in range(args.rounds):
                extra = f"{probe}-extra{r}"
                grown = {**groups, probe: [*groups[probe], extra]}
                t0 = time.time()
                add(extra, f"{prefix}-{probe}")
                joins.append(members.wait_settled(grown, t0, args.settle_timeout_s))
                t0 = time.time()
                commands[where[extra]].put(("remove", extra))
                leaves.append(members.wait_settled(groups, t0, args.settle_timeout_s, gone=[extra]))
                _status(f"  {name}: round {r + 1}: join {joins[-1]:.2f} s, leave {leaves[-1]:.2f} s")
            _progress(f"{name}: steady membership for {args.steady_s} s ...")
            m0, c0 = _metrics(urls), _cpu_snapshot(pids)
            steady_load = _load()
            time.sleep(args.steady_s)
            m1, c1 = _metrics(urls), _cpu_snapshot(pids)
            rss = _rss_mb(pids)
            leaving = [k for keys in groups.values() for k in keys]
            for key in leaving:
                commands[where[key]].put(("remove", key))
            members.wait_settled({}, time.time(), args.settle_timeout_s, gone=leaving)
            # The brokers' CPU with no members, right after this case (the cluster has warmed up
            # by then; measured first, a fresh cluster's start-up work inflates it)
            idle0 = _cpu_snapshot(pids)
            time.sleep(args.idle_s)
            idle1 = _cpu_snapshot(pids)
            idle_cpu_s_per_s = _brokers_cpu_s(idle0, idle1) / max(idle1["wall"] - idle0["wall"], 1e-9)
            wall = c1["wall"] - c0["wall"]
            cpu_s = _brokers_cpu_s(c0, c1)
            above = cpu_s - idle_cpu_s_per_s * wall
            heartbeats = _delta(m1, m0, "rpc:ConsumerGroupHeartbeat")
            result[name] = {
                "groups": len(groups), "members": count, "load_avg_at_join": load,
                "all_join_settle_s": round(first, 2),
                "join_settle_s": [round(x, 2) for x in joins], "leave_settle_s": [round(x, 2) for x in leaves],
                "join_settle_s_max": round(max(joins, default=0.0), 2),
                "leave_settle_s_max": round(max(leaves, default=0.0), 2),
                "steady": {
                    "load_avg": steady_load, "wall_s": round(wall, 1),
                    "machine_busy_share": _machine_busy_share(c0, c1),
                    "brokers_cpu_ms_per_s": round(cpu_s * 1000 / wall, 1),
                    "brokers_cpu_ms_per_s_above_idle": round(above * 1000 / wall, 1),
                    "brokers_cpu_ms_per_member_per_s_above_idle": round(above * 1000 / wall / count, 3),
                    "heartbeats_per_s": round(heartbeats / wall, 1),
                    "brokers_cpu_ms_per_heartbeat_above_idle": round(above * 1000 / heartbeats, 2) if heartbeats else None,
                    "brokers_idle_cpu_ms_per_s": round(idle_cpu_s_per_s * 1000, 1),
                    "brokers_rss_mb": rss,
                },
            }
        for q in commands:
            q.put(("exit",))
        for proc in procs:
            proc.join(timeout=60)
    _out().done()
    print(json.dumps(result))
    return 0
