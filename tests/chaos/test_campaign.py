"""`semel chaos campaign`: planning, resume, rows and verdicts (pure parts), and a run that
cannot produce a verdict counted as unknown (a real child process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from semel.chaos import campaign
from semel.chaos.campaign import CampaignRun
from semel.chaos.nemesis import FAMILIES, FSYNC_FAMILIES, WORKLOAD_FAMILIES
from semel.chaos.workloads import TXN_WORKLOADS, WORKLOADS
from semel.cli.main import main as cli_main


def test_all_is_every_registered_family_with_fsync_variants() -> None:
    nemeses = campaign.parse_nemeses("all", FAMILIES, FSYNC_FAMILIES)
    assert [f for f, fsync in nemeses if not fsync] == [*FAMILIES, campaign.MIXED]
    assert [f for f, fsync in nemeses if fsync] == list(FSYNC_FAMILIES)
    # a family added to the registry joins by itself
    assert ("clock", False) in campaign.parse_nemeses("all", (*FAMILIES, "clock"), FSYNC_FAMILIES)


def test_parse_nemeses_variants_and_errors() -> None:
    reg, fs = ("kill", "power-loss"), ("power-loss",)
    assert campaign.parse_nemeses("power-loss", reg, fs) == (("power-loss", False), ("power-loss", True))
    assert campaign.parse_nemeses("power-loss+fsync,kill,kill", reg, fs) == (("power-loss", True), ("kill", False))
    assert campaign.parse_nemeses("mixed,kill", reg, fs) == (("mixed", False), ("kill", False))
    for bad in ("", "bogus", "kill+fsync", "mixed+fsync"):
        with pytest.raises(ValueError):
            campaign.parse_nemeses(bad, reg, fs)


def test_plan_pairs_workload_families_only_with_workloads_that_have_the_hook() -> None:
    runs = campaign.plan_campaign(WORKLOADS, campaign.parse_nemeses("all", FAMILIES, FSYNC_FAMILIES),
                                  campaign.workload_supports)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    for family in WORKLOAD_FAMILIES:
        assert f"idempotent/{family}" not in keys
        assert all(f"{w}/{family}" in keys for w in TXN_WORKLOADS)
    assert "txn/power-loss+fsync" in keys and "idempotent/power-loss" in keys
    per_workload = len(FAMILIES) + len(FSYNC_FAMILIES) + 1  # + the mixed run
    assert len(runs) == len(TXN_WORKLOADS) * per_workload + per_workload - len(WORKLOAD_FAMILIES)
    assert all(f"{w}/mixed" in keys for w in WORKLOADS)


def test_a_mixed_run_draws_every_family_and_the_workloads_own() -> None:
    assert campaign.nemesis_argument(CampaignRun("idempotent", "mixed")) == "all"
    for w in TXN_WORKLOADS:
        assert campaign.nemesis_argument(CampaignRun(w, "mixed")) == ",".join(["all", *WORKLOAD_FAMILIES])
    assert campaign.nemesis_argument(CampaignRun("txn", "kill")) == "kill"
    command = campaign.run_command(CampaignRun("money", "mixed"), 7, Path("o"), 60.0)
    assert command[command.index("--nemesis") + 1] == ",".join(["all", *WORKLOAD_FAMILIES])


def test_resume_skips_exactly_the_recorded_runs() -> None:
    runs = [CampaignRun("txn", "kill"), CampaignRun("txn", "power-loss"), CampaignRun("txn", "power-loss", True)]
    assert campaign.pending_runs(runs, []) == runs
    rows = [{"workload": "txn", "nemesis": "power-loss+fsync"}, {"workload": "money", "nemesis": "kill"}]
    assert campaign.pending_runs(runs, rows) == runs[:2]


def _history(path: Path, types: list[str]) -> None:
    path.write_text("".join(json.dumps({"type": t, "index": i}) + "\n" for i, t in enumerate(types))
                    + '{"type": "ok", "ind')  # a torn last line (a killed run) is skipped


def test_row_keeps_unknown_apart_from_ok_and_fail(tmp_path: Path) -> None:
    run = CampaignRun("txn", "kill")
    _history(tmp_path / "history.jsonl", ["invoke", "ok", "invoke", "info", "invoke", "fail", "invoke", "info"])
    row = campaign.make_row(run, 7, tmp_path, 12.3, None, "timed out after 900 s (stopped)")
    assert (row["ok"], row["fail"], row["unknown"]) == (1, 1, 2)
    assert row["verdict"] == "unknown" and "timed out" in row["notes"]  # no verdict.json: neither valid nor invalid
    (tmp_path / "verdict.json").write_text(json.dumps({"valid": False, "anomalies": {"lost-write": [{}, {}]},
                                                       "counts": {"lost-write": 5}}))
    row = campaign.make_row(run, 7, tmp_path, 12.3, 1)
    assert row["verdict"] == "invalid" and row["anomalies"] == {"lost-write": 5}
    (tmp_path / "verdict.json").write_text(json.dumps({"valid": True, "anomalies": {}, "counts": {}}))
    assert campaign.make_row(run, 7, tmp_path, 12.3, 0)["verdict"] == "valid"
    (tmp_path / "verdict.json").write_text("{")  # torn
    assert campaign.make_row(run, 7, tmp_path, 12.3, 0)["verdict"] == "unknown"


def _row(nemesis: str, verdict: str) -> dict[str, object]:
    return {"workload": "txn", "nemesis": nemesis, "seed": 1, "duration_s": 1.0, "ok": 3, "fail": 1, "unknown": 2,
            "verdict": verdict, "anomalies": {}, "notes": "", "out": "o"}


def test_summary_and_exit_code(tmp_path: Path) -> None:
    rows = [_row("kill", "valid"), _row("pause", "unknown")]
    assert campaign.exit_code(rows) == 3
    assert campaign.exit_code([*rows, _row("reset", "invalid")]) == 1
    assert campaign.exit_code(rows[:1]) == 0
    campaign.write_summary(tmp_path, {"duration_s": 1.0}, rows)
    loaded = campaign.load_summary(tmp_path)
    assert loaded["rows"] == rows
    assert loaded["totals"] == {"runs": 2, "valid": 1, "invalid": 0, "unknown": 1, "ops_ok": 6, "ops_fail": 2,
                                "ops_unknown": 4}
    md = (tmp_path / "summary.md").read_text()
    assert "| txn | pause | 1 | 1 | 3 | 1 | 2 | UNKNOWN |" in md and "2 runs: 1 valid, 0 invalid, 1 unknown" in md


def test_a_refused_run_is_an_unknown_row_and_resume_skips_it(tmp_path: Path) -> None:
    """A real `semel chaos run` child that refuses its arguments (power-loss on 1 broker without
    --fsync) writes no verdict: the row says unknown, not valid or invalid."""
    run = CampaignRun("idempotent", "power-loss")
    rows = campaign.run_campaign(tmp_path, [run], 5.0, resume=False, extra=["--brokers=1"], say=print)
    assert [(r["nemesis"], r["verdict"], r["exit_code"]) for r in rows] == [("power-loss", "unknown", 2)]
    assert "needs 3 or more brokers" in Path(rows[0]["log"]).read_text()
    assert campaign.load_summary(tmp_path)["rows"] == rows
    with pytest.raises(FileExistsError):
        campaign.run_campaign(tmp_path, [run], 5.0, resume=False, extra=["--brokers=1"], say=print)
    assert campaign.run_campaign(tmp_path, [run], 5.0, resume=True, say=print) == rows  # nothing left to run


def test_cli_dry_run_lists_the_registry(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["chaos", "campaign", "--workloads", "txn", "--dry-run", "--out", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.split()
    assert sorted(listed) == sorted([f"txn/{f}" for f in FAMILIES] + [f"txn/{f}+fsync" for f in FSYNC_FAMILIES]
                                    + ["txn/mixed"])
    assert cli_main(["chaos", "campaign", "--workloads", "nope", "--dry-run"]) == 2


def test_replay_command_carries_what_the_schedule_depends_on() -> None:
    cmd = campaign.replay_command(CampaignRun("txn", "power-loss", True), 42, 60.0, ["--brokers=5", "--interval-s=7"])
    assert cmd == ("semel chaos run --workload txn --nemesis power-loss --seed 42 --duration-s 60 --fsync "
                   "--brokers=5 --interval-s=7")
