"""`semel chaos campaign`: every workload under every nemesis family, one `semel chaos run` each.

    runs = plan_campaign(["txn"], ["kill", "power-loss"], supports)   # pure
    # -> txn/kill, txn/power-loss, txn/power-loss+fsync
    pending = pending_runs(runs, load_summary(out)["rows"])            # pure: --resume skips done runs

The families come from the nemesis registry (`nemesis.FAMILIES`), so a family added there joins
the campaign by itself; a family in `nemesis.FSYNC_FAMILIES` runs twice, without and with
`--fsync`; a workload family (hijack, client-pause) runs only with workloads that have its hook.
`all` ends each workload with one `mixed` run: every family of `semel chaos run --nemesis all` at
once (up to two overlapping), plus the workload families the workload has a hook for, because
the combinations are where the families alone miss bugs (finding 9 was a power loss during a
rolling restart).

Each run is a child process (`python -m semel.cli.main chaos run ...`, its output in
`OUT/runs/<run>/campaign-run.log`) with a fresh seed printed before it starts, so a hang or a
crash of one run is a row of the table, not the end of the campaign, and any run replays with
`semel chaos run --seed`. After every run `summary.md` and `summary.json` in OUT are rewritten
(atomically), so `--resume` after an interruption skips the runs already recorded.

A row's verdict is what the run's own checker wrote to `verdict.json`: "valid" or "invalid";
"unknown" when there is no verdict (the run crashed, timed out, was refused), never counted as
either. Operation counts come from the run's history: ok, fail and unknown (`info`: the client
cannot tell whether it took effect) are kept apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from semel.chaos.history import FAIL, INFO, OK

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
FSYNC_SUFFIX = "+fsync"
MIXED = "mixed"  # every family at once: `--nemesis all` plus the workload's own families
VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"
DEFAULT_DURATION_S = 600.0
# Beyond the run's own duration: cluster start, heal, final read (60 s by default), checker,
# report. A run past this is stopped and counted unknown.
RUN_OVERHEAD_S = 600.0
STOP_GRACE_S = 60.0  # after SIGINT, how long a run may take to stop its cluster before SIGKILL
STATUS_INTERVAL_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignRun:
    """One planned run: a workload under one nemesis family, with or without --fsync."""

    workload: str
    family: str
    fsync: bool = False

    @property
    def nemesis(self) -> str:
        return self.family + (FSYNC_SUFFIX if self.fsync else "")

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.nemesis}"


def parse_nemeses(text: str, registry: Sequence[str], fsync_families: Sequence[str]) -> tuple[tuple[str, bool], ...]:
    """"all" (every registered family, the fsync ones both ways, then `mixed`) or a comma list of
    families ("power-loss" runs both ways where it has an fsync variant; "power-loss+fsync" only
    with --fsync; "mixed": every family at once) -> (family, fsync) pairs in order, without
    duplicates."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no nemesis family given")
    out: list[tuple[str, bool]] = []
    for name in names:
        if name == "all":
            wanted = [(f, v) for f in registry for v in ((False, True) if f in fsync_families else (False,))]
            wanted.append((MIXED, False))
        elif name == MIXED:
            wanted = [(MIXED, False)]
        else:
            family, only_fsync = (name[:-len(FSYNC_SUFFIX)], True) if name.endswith(FSYNC_SUFFIX) else (name, False)
            if family not in registry:
                raise ValueError(f"unknown nemesis family {family!r} (choose from {', '.join(registry)}, {MIXED}, all)")
            if only_fsync and family not in fsync_families:
                raise ValueError(f"{family} has no {FSYNC_SUFFIX} variant (those are: {', '.join(fsync_families)})")
            variants = (True,) if only_fsync else ((False, True) if family in fsync_families else (False,))
            wanted = [(family, v) for v in variants]
        out.extend(w for w in wanted if w not in out)
    return tuple(out)


def plan_campaign(workloads: Sequence[str], nemeses: Sequence[tuple[str, bool]],
                  supports: Callable[[str, str], bool]) -> list[CampaignRun]:
    """Every workload x every (family, fsync) that the workload supports, workload-major (pure)."""
    return [CampaignRun(w, family, fsync) for w in workloads for family, fsync in nemeses if supports(w, family)]


def pending_runs(runs: Sequence[CampaignRun], rows: Iterable[Mapping[str, Any]]) -> list[CampaignRun]:
    """The planned runs not yet in the summary (pure): what --resume still runs."""
    done = {f"{row['workload']}/{row['nemesis']}" for row in rows}
    return [r for r in runs if r.key not in done]


def workload_supports(workload: str, family: str) -> bool:
    """A workload family (hijack, client-pause) needs the workload's hook; the others apply to all."""
    from semel.chaos.nemesis import WORKLOAD_FAMILIES
    from semel.chaos.workloads import WorkloadConfig, make_workload

    if family not in WORKLOAD_FAMILIES:
        return True
    return family in make_workload(workload, WorkloadConfig(), 0).nemesis_hooks()


def nemesis_argument(run: CampaignRun, supports: Callable[[str, str], bool] = workload_supports) -> str:
    """The child's `--nemesis`: the family itself, or for `mixed` every family that `all` draws
    plus the workload families this workload has a hook for."""
    if run.family != MIXED:
        return run.family
    from semel.chaos.nemesis import WORKLOAD_FAMILIES

    return ",".join(["all", *(f for f in WORKLOAD_FAMILIES if supports(run.workload, f))])


# --- one run's row -------------------------------------------------------------------------

def count_ops(history: Path) -> dict[str, int]:
    """ok / fail / unknown completions in a history file (absent or torn lines: what is there)."""
    counts = {"ok": 0, "fail": 0, "unknown": 0}
    name = {OK: "ok", FAIL: "fail", INFO: "unknown"}
    if not history.exists():
        return counts
    with history.open() as f:
        for line in f:
            try:
                kind = json.loads(line).get("type")
            except ValueError:  # a line torn by a killed run
                continue
            if kind in name:
                counts[name[kind]] += 1
    return counts


def read_verdict(out_dir: Path) -> tuple[str, dict[str, int]]:
    """("valid" | "invalid" | "unknown", anomaly counts) from the run's verdict.json."""
    try:
        verdict = json.loads((out_dir / "verdict.json").read_text())
    except (OSError, ValueError):
        return UNKNOWN, {}
    valid = verdict.get("valid")
    if valid is True:
        return VALID, {}
    if valid is False:
        counts = verdict.get("counts", {})
        return INVALID, {k: counts.get(k, len(v)) for k, v in sorted(verdict.get("anomalies", {}).items())}
    return UNKNOWN, {}


def make_row(run: CampaignRun, seed: int, out_dir: Path, duration_s: float, exit_code: int | None,
             note: str = "") -> dict[str, Any]:
    verdict, anomalies = read_verdict(out_dir)
    notes = [note] if note else []
    try:
        summary = json.loads((out_dir / "run.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("unexpected_exits"):
        notes.append(f"{len(summary['unexpected_exits'])} broker exit(s) on their own")
    if summary.get("heal_error"):
        notes.append("heal incomplete")
    if verdict == UNKNOWN and not note:
        notes.append(f"no verdict (exit code {exit_code})")
    return {"workload": run.workload, "nemesis": run.nemesis, "seed": seed, "duration_s": round(duration_s, 1),
            **count_ops(out_dir / "history.jsonl"), "verdict": verdict, "anomalies": anomalies,
            "exit_code": exit_code, "notes": "; ".join(notes), "out": str(out_dir)}


# --- the summary -----------------------------------------------------------------------------

def load_summary(out: Path) -> dict[str, Any]:
    path = out / SUMMARY_JSON
    if not path.exists():
        return {"rows": []}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {"runs": len(rows), VALID: sum(1 for r in rows if r["verdict"] == VALID),
            INVALID: sum(1 for r in rows if r["verdict"] == INVALID),
            UNKNOWN: sum(1 for r in rows if r["verdict"] == UNKNOWN),
            "ops_ok": sum(int(r["ok"]) for r in rows), "ops_fail": sum(int(r["fail"]) for r in rows),
            "ops_unknown": sum(int(r["unknown"]) for r in rows)}


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table, one row per run (pure)."""
    lines = ["| workload | nemesis | seed | duration s | ops ok | ops fail | ops unknown | verdict | notes | out |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        notes = ", ".join(f"{k} {v}" for k, v in r.get("anomalies", {}).items())
        notes = "; ".join(n for n in (notes, r.get("notes", "")) if n)
        lines.append(f"| {r['workload']} | {r['nemesis']} | {r['seed']} | {r['duration_s']:.0f} | {r['ok']} | "
                     f"{r['fail']} | {r['unknown']} | {r['verdict'].upper() if r['verdict'] != VALID else VALID} | "
                     f"{notes} | `{r['out']}` |")
    t = totals(rows)
    lines.append("")
    lines.append(f"{t['runs']} runs: {t[VALID]} valid, {t[INVALID]} invalid, {t[UNKNOWN]} unknown; "
                 f"ops {t['ops_ok']} ok, {t['ops_fail']} fail, {t['ops_unknown']} unknown.")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(out: Path, config: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    _write_atomic(out / SUMMARY_JSON, json.dumps({"config": dict(config), "rows": list(rows),
                                                  "totals": totals(rows)}, indent=1, sort_keys=True) + "\n")
    _write_atomic(out / SUMMARY_MD, summary_markdown(rows))


def exit_code(rows: Sequence[Mapping[str, Any]]) -> int:
    """1 if any run is invalid; else 3 if any run has no verdict; else 0."""
    verdicts = {r["verdict"] for r in rows}
    return 1 if INVALID in verdicts else 3 if UNKNOWN in verdicts else 0


# --- the shell -------------------------------------------------------------------------------

def fresh_seed() -> int:
    return secrets.randbelow(1 << 31)


def run_command(run: CampaignRun, seed: int, out_dir: Path, duration_s: float, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "semel.cli.main", "chaos", "run", "--workload", run.workload,
            "--nemesis", nemesis_argument(run), "--seed", str(seed), "--duration-s", f"{duration_s:g}", "--out", str(out_dir),
            *(["--fsync"] if run.fsync else []), *extra]


def replay_command(run: CampaignRun, seed: int, duration_s: float, extra: Sequence[str] = ()) -> str:
    """What to type to replay a run's fault schedule (`extra` carries --interval-s and --brokers,
    which the schedule depends on)."""
    return " ".join(["semel", *run_command(run, seed, Path("OUT"), duration_s, extra)[3:]]).replace(" --out OUT", "")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT lets the run stop its cluster (the runner's `finally`); then SIGKILL its group
    (its brokers die with it: they set PR_SET_PDEATHSIG)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def execute(run: CampaignRun, seed: int, out_dir: Path, duration_s: float, extra: Sequence[str],
            status: Callable[[str], None]) -> dict[str, Any]:
    """Runs one `semel chaos run` as a child and returns its row. KeyboardInterrupt stops the
    child and propagates (the run is not recorded, so --resume runs it again)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"{out_dir.name}.log"
    timeout_s = duration_s + RUN_OVERHEAD_S
    started = time.monotonic()
    note = ""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(run_command(run, seed, out_dir, duration_s, extra), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                try:
                    proc.wait(STATUS_INTERVAL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                elapsed = time.monotonic() - started
                if elapsed > timeout_s:
                    note = f"timed out after {elapsed:.0f} s (stopped)"
                    _stop(proc)
                    break
                status(f"{run.key} seed {seed}: {elapsed:.0f} s")
        except BaseException:
            _stop(proc)
            raise
    row = make_row(run, seed, out_dir, time.monotonic() - started, proc.returncode, note)
    row["log"] = str(log_path)
    return row


def run_campaign(out: Path, runs: Sequence[CampaignRun], duration_s: float, resume: bool, extra: Sequence[str] = (),
                 say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    from semel.cluster.tooling.progress import Progress

    progress = Progress(sys.stderr)
    say = say or progress.say
    config = {"duration_s": duration_s, "runs": [r.key for r in runs], "extra_args": list(extra)}
    out.mkdir(parents=True, exist_ok=True)
    existing = load_summary(out)
    if existing["rows"] and not resume:
        raise FileExistsError(f"{out / SUMMARY_JSON} has {len(existing['rows'])} runs: pass --resume or a new --out")
    rows: list[dict[str, Any]] = list(existing["rows"]) if resume else []
    todo = pending_runs(runs, rows)
    if resume and len(todo) < len(runs):
        say(f"resuming: {len(runs) - len(todo)} of {len(runs)} runs already in {out / SUMMARY_JSON}")
    say(f"semel chaos campaign: {len(todo)} runs x {duration_s:g} s (about "
        f"{len(todo) * (duration_s + 60) / 3600:.1f} h with setup); out {out}")
    write_summary(out, config, rows)
    for i, run in enumerate(todo, 1):
        seed = fresh_seed()
        run_dir = out / "runs" / f"{run.workload}-{run.nemesis}-seed{seed}"
        say(f"[{i}/{len(todo)}] {run.key} seed {seed}  (replay: {replay_command(run, seed, duration_s, extra)})")
        progress.phase(duration_s + 60)
        row = execute(run, seed, run_dir, duration_s, extra, progress.status if progress.terminal else lambda _: None)
        progress.done()
        rows.append(row)
        write_summary(out, config, rows)
        say(f"[{i}/{len(todo)}] {run.key} seed {seed}: {row['verdict'].upper()} in {row['duration_s']:.0f} s; "
            f"ops ok {row['ok']} fail {row['fail']} unknown {row['unknown']}"
            + (f"; {row['notes']}" if row["notes"] else "") + f"  ({row['out']})")
    return rows
