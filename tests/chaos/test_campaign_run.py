"""A short real campaign (2 workloads x 2 families x 20 s): the summary is written, and every
row reports what its run's own files say (verdict.json, history.jsonl): no unknown outcome is
counted as ok or failed, and no missing verdict as valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DURATION_S = float(os.environ.get("SEMEL_CAMPAIGN_DURATION_S", "20"))


def test_short_campaign_writes_an_honest_summary(tmp_path: Path) -> None:
    out = tmp_path / "campaign"
    cmd = [sys.executable, "-m", "semel.cli.main", "chaos", "campaign", "--workloads", "idempotent,txn",
           "--families", "kill,partition", "--duration-s", f"{DURATION_S:g}", "--interval-s", "5", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * (DURATION_S + 600))
    print(proc.stderr[-4000:])
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert sorted(f"{r['workload']}/{r['nemesis']}" for r in rows) == [
        "idempotent/kill", "idempotent/partition", "txn/kill", "txn/partition"]
    for row in rows:
        run_dir = Path(row["out"])
        assert f"seed {row['seed']}" in proc.stderr  # printed, so the run can be replayed
        try:
            verdict = json.loads((run_dir / "verdict.json").read_text())["valid"]
            expected = "valid" if verdict else "invalid"
        except FileNotFoundError:
            expected = "unknown"
        assert row["verdict"] == expected, row
        types = [json.loads(line)["type"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
        assert (row["ok"], row["fail"], row["unknown"]) == (types.count("ok"), types.count("fail"),
                                                            types.count("info")), row
        assert row["ok"] > 0, row  # the run did real work
        assert json.loads((run_dir / "run.json").read_text())["config"]["seed"] == row["seed"]
    verdicts = {r["verdict"] for r in rows}
    assert proc.returncode == (1 if "invalid" in verdicts else 3 if "unknown" in verdicts else 0), proc.returncode
    md = (out / "summary.md").read_text()
    assert md in proc.stdout  # the table is printed too
    assert all(f"| {r['workload']} | {r['nemesis']} | {r['seed']} |" in md for r in rows)
    assert verdicts == {"valid"}, md  # short runs of these families are expected clean
