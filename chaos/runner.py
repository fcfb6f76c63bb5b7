"""One fault-injection run: cluster behind proxies, workload, seeded nemesis, final read, verdict.

    run = RunConfig(duration_s=300, families=("kill", "partition"), workload="idempotent", seed=7)
    result = run_chaos(run)        # result.verdict["valid"], result.out_dir, result.exit_code

Phases: plan the schedule (pure, from the seed) -> start the brokers and proxies -> create the
workload's topic -> start the workload processes and step through the schedule on this
(long-lived) thread -> stop the workload -> heal every fault, wait until every broker is
ready -> final read by fresh clients -> every broker's metadata at one version must be the same
(metadata_agreement.py) -> check the history -> write the report.

Files in `out_dir`: `history.jsonl` (the history), `verdict.json` (the checker's verdict),
`run.json` (configuration, schedule, the faults as applied, final-read summary, timings),
`report.html` (self-contained plots), `cluster/` (broker data and logs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semel.chaos import checker
from semel.chaos.history import HistoryWriter
from semel.chaos.metadata_agreement import check_agreement
from semel.chaos.nemesis import (
    CONTROLLER,
    COORDINATOR,
    LEADER,
    NemesisExecutor,
    Schedule,
    describe_schedule,
    plan_schedule,
)
from semel.chaos.report import write_report
from semel.chaos.wiring import ChaosCluster
from semel.chaos.workloads import Recorder, WorkloadConfig, make_workload
from semel.cluster.tooling.progress import Progress

log = logging.getLogger("semel.chaos.runner")

PROGRESS_INTERVAL_S = 5.0
HEAL_SETTLE_S = 2.0
METADATA_AGREEMENT_TIMEOUT_S = 30.0


LOG_DIR_TMPFS_BYTES = 512 * 1024 * 1024  # per broker, disk-full runs only (tmpfs: only what is written uses RAM)


@dataclasses.dataclass(frozen=True, slots=True)
class RunConfig:
    duration_s: float = 60.0
    families: tuple[str, ...] = ("kill", "pause", "partition", "latency")
    workload: str = "idempotent"
    seed: int = 0
    brokers: int = 3
    out_dir: str = "chaos-runs/latest"
    interval_s: float = 10.0
    max_concurrent_faults: int = 2
    concurrency: int = 5
    partitions: int = 6
    final_read_timeout_s: float = 60.0
    toxiproxy_url: str | None = None
    broker_args: tuple[str, ...] = ()
    fsync: bool = False  # brokers run with --fsync (power-loss may then cut every broker)


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    out_dir: Path
    verdict: dict[str, Any]
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict.get("valid") else 1


def plan(cfg: RunConfig) -> Schedule:
    if "power-loss" in cfg.families and not cfg.fsync and cfg.brokers < 3:
        raise ValueError("power-loss without --fsync needs 3 or more brokers (one broker is a majority of 2)")
    return plan_schedule(cfg.seed, cfg.duration_s, cfg.families, cfg.brokers, cfg.interval_s,
                         cfg.max_concurrent_faults, fsync=cfg.fsync)


def _resolver(direct_bootstrap: str, topic: str, coordinator_key: str | None) -> Callable[[str], int | None]:
    from semel.client import Admin
    from semel.internal_topics import TRANSACTION_STATE_TOPIC, coordinator_partition

    def resolve(what: str) -> int | None:
        with Admin(direct_bootstrap, request_timeout_ms=2000, connect_timeout_ms=2000) as admin:
            if what == COORDINATOR:
                if coordinator_key is None:
                    return None
                view = admin.metadata([TRANSACTION_STATE_TOPIC], timeout_ms=2000)
                count = len(view.topics.get(TRANSACTION_STATE_TOPIC, []))
                if not count:
                    return None
                info = view.partition(TRANSACTION_STATE_TOPIC, coordinator_partition(coordinator_key, count))
                return info.leader_id if info is not None and info.leader_id >= 0 else None
            if what == LEADER:
                info = admin.metadata([topic], timeout_ms=2000).partition(topic, 0)
                return info.leader_id if info is not None and info.leader_id >= 0 else None
            if what == CONTROLLER:
                cid = admin.describe_cluster(timeout_ms=2000).controller_id
                return cid if cid >= 0 else None
        return None

    return resolve


def run_chaos(cfg: RunConfig, say: Callable[[str], None] | None = None) -> RunResult:
    """Runs one chaos run; progress goes to `say` (default: stderr, with a live status line on a
    terminal for the periodic figures, plain lines elsewhere)."""
    progress: Progress | None = None
    if say is None:
        progress = Progress(sys.stderr)
        say = progress.say
    status = progress.status if progress is not None else say
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "history.jsonl").exists():
        raise FileExistsError(f"{out}/history.jsonl exists: choose a new --out")
    schedule = plan(cfg)
    wcfg = WorkloadConfig(partitions=cfg.partitions, replication_factor=min(3, cfg.brokers),
                          min_insync_replicas=2 if cfg.brokers >= 3 else 1, concurrency=cfg.concurrency,
                          final_read_timeout_s=cfg.final_read_timeout_s)
    workload = make_workload(cfg.workload, wcfg, cfg.seed)
    hooks = workload.nemesis_hooks()
    missing = [f for f in cfg.families if f in ("hijack", "client-pause") and f not in hooks]
    if missing:
        raise ValueError(f"nemesis {', '.join(missing)} needs a transactional workload (not {cfg.workload})")
    say(f"semel chaos run: seed {cfg.seed}, workload {cfg.workload}, {cfg.brokers} brokers, "
        f"{cfg.duration_s:.0f} s, nemesis {','.join(cfg.families) or 'none'}; out {out}")
    say(describe_schedule(schedule))
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"config": {k: (list(v) if isinstance(v, tuple) else v)
                                          for k, v in dataclasses.asdict(cfg).items()},
                               "schedule": schedule.to_json()}
    broker_args = (*cfg.broker_args, "--fsync") if cfg.fsync else cfg.broker_args
    cluster = ChaosCluster(out / "cluster", cfg.brokers, broker_args, cfg.toxiproxy_url, proxy_seed=cfg.seed,
                           power_cut="power-loss" in cfg.families, clock_offsets="clock" in cfg.families,
                           log_dir_tmpfs_bytes=LOG_DIR_TMPFS_BYTES if "disk-full" in cfg.families else None)
    started = time.monotonic()
    try:
        cluster.start()
        timings["cluster_start_s"] = time.monotonic() - started
        workload.setup(cluster.direct_bootstrap)
        say(f"cluster ready in {timings['cluster_start_s']:.1f} s; clients use {cluster.bootstrap}")
        t0 = time.monotonic()
        summary["started_unix_s"] = time.time()  # history time 0, to line up with broker logs
        writer = HistoryWriter(out / "history.jsonl")
        rec = Recorder(writer)
        executor = NemesisExecutor(cluster, _resolver(cluster.direct_bootstrap, wcfg.topic,
                                                      workload.coordinator_key()), cfg.seed, hooks)
        executor.t0 = t0
        stop = threading.Event()
        threads = [threading.Thread(target=_guarded, args=(workload.run_process, p, cluster.bootstrap, rec, stop),
                                    name=f"process-{p}", daemon=True) for p in range(cfg.concurrency)]
        for t in threads:
            t.start()
        if progress is not None:
            progress.phase(cfg.duration_s)
        _drive(schedule, executor, rec, t0, cfg.duration_s, status)
        stop.set()
        join_deadline = time.monotonic() + wcfg.delivery_timeout_ms / 1000 + 10
        for t in threads:
            t.join(max(0.0, join_deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            say(f"warning: {stuck} still inside an operation (left open = unknown)")
        heal_started = time.monotonic()
        try:
            executor.heal_all()
        except Exception as exc:  # a broker that cannot come back is itself a finding: read what we can
            summary["heal_error"] = str(exc)
            say(f"WARNING: heal incomplete: {exc}")
        time.sleep(HEAL_SETTLE_S)
        timings["heal_s"] = time.monotonic() - heal_started
        say(f"healed in {timings['heal_s']:.1f} s; final read ...")
        read_started = time.monotonic()
        final = workload.final_read(cluster.bootstrap, rec, process=10_000)
        timings["final_read_s"] = time.monotonic() - read_started
        say(f"final read: {final['records_read']} records in {timings['final_read_s']:.1f} s"
            + (f"; INCOMPLETE {final['incomplete']}" if final["incomplete"] else ""))
        agreement = check_agreement([spec.address for spec in cluster.specs], METADATA_AGREEMENT_TIMEOUT_S)
        summary["metadata_agreement"] = agreement
        say(f"metadata: {agreement['result']} (versions {sorted(set(agreement['versions'].values()), key=str)})")
        writer.close()
        summary["final_read"] = final
        summary["faults"] = [a.to_json() for a in executor.done]
        summary["counts"] = rec.counts()
        summary["unexpected_exits"] = cluster.unexpected_exits
        for crash in cluster.unexpected_exits:
            say(f"WARNING: broker {crash['broker_id']} exited on its own (code {crash['exit_code']}); see run.json")
    finally:
        cluster.stop()
        timings["total_s"] = time.monotonic() - started
        summary["timings"] = timings
    check_started = time.monotonic()
    verdict = checker.check_file(out / "history.jsonl")
    timings["check_s"] = time.monotonic() - check_started
    _add_metadata_verdict(verdict, summary.get("metadata_agreement"))
    _add_final_read_verdict(verdict, summary.get("final_read"))
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2, sort_keys=True) + "\n")
    (out / "run.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    write_report(out / "report.html", out / "history.jsonl", verdict, summary)
    _print_verdict(verdict, cfg.seed, out, say)
    return RunResult(out, verdict, summary)


def _add_metadata_verdict(verdict: dict[str, Any], agreement: dict[str, Any] | None) -> None:
    """Brokers at one metadata version with different contents: an anomaly of the cluster, not
    of the history, so it is added here (see metadata_agreement.py)."""
    if agreement is not None and agreement["result"] == "diverged":
        verdict["anomalies"]["metadata-divergence"] = agreement["differences"]
        verdict["counts"]["metadata-divergence"] = len(agreement["differences"])
        verdict["valid"] = False


def _add_final_read_verdict(verdict: dict[str, Any], final: dict[str, Any] | None) -> None:
    """The final read did not reach some key's acknowledged end before its timeout: the cluster
    did not serve reads for that long after the heal (a liveness failure). Values it did not
    reach are unverified, so `lost-write` / `unseen` of the same run may be values nobody could
    read rather than values lost: re-read the kept data (`cluster/`) to tell them apart."""
    if final is not None and final.get("incomplete"):
        incomplete = final["incomplete"]
        verdict["anomalies"]["final-read-incomplete"] = [
            {"key": key, "read_up_to": (final.get("read_up_to") or {}).get(key), "behind": behind}
            for key, behind in sorted(incomplete.items())]
        verdict["counts"]["final-read-incomplete"] = len(incomplete)
        verdict["valid"] = False


def _guarded(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("workload process died")


def _drive(schedule: Schedule, executor: NemesisExecutor, rec: Recorder, t0: float, duration_s: float,
           say: Callable[[str], None]) -> None:
    """Step through the schedule on this thread, printing progress."""
    events = schedule.events()
    last_print, last_done = t0, 0
    i = 0
    while True:
        executor.tick()
        now = time.monotonic()
        if i < len(events) and now - t0 >= events[i].at_s:
            executor.apply(events[i])
            i += 1
            continue
        if now - last_print >= PROGRESS_INTERVAL_S:
            counts = rec.counts()
            done = sum(counts.values())
            rate = (done - last_done) / (now - last_print)
            faults = executor.current()
            say(f"[{now - t0:6.1f} s] {rate:6.1f} ops/s  ok {counts['ok']} info {counts['info']} "
                f"fail {counts['fail']}  faults: {', '.join(faults) if faults else 'none'}")
            last_print, last_done = now, done
        if now - t0 >= duration_s and i >= len(events):
            return
        wake = min([t0 + events[i].at_s] if i < len(events) else [t0 + duration_s])
        time.sleep(max(0.0, min(0.25, wake - time.monotonic(), last_print + PROGRESS_INTERVAL_S - time.monotonic())))


def _print_verdict(verdict: dict[str, Any], seed: int, out: Path, say: Callable[[str], None]) -> None:
    stats = verdict.get("stats", {})
    anomalies = verdict.get("anomalies", {})
    say(f"verdict: {'VALID' if verdict.get('valid') else 'INVALID'} (seed {seed}); ops {stats.get('ops')}, "
        f"values acknowledged {stats.get('values_acknowledged')}, read {stats.get('values_read')}, "
        f"unseen {stats.get('values_unseen')}")
    for name, examples in sorted(anomalies.items()):
        say(f"  ANOMALY {name}: {verdict.get('counts', {}).get(name, len(examples))}")
    say(f"history {out / 'history.jsonl'}; verdict {out / 'verdict.json'}; report {out / 'report.html'}")
