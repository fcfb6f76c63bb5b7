"""`semel bench partitions` runs end to end at tiny counts and prints its JSON keys (a
benchmark is a command, not a timed test: no figure is asserted beyond its sanity)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from semel.cluster.tooling.bench_partitions import broker_resources


def test_the_command_prints_each_count_and_the_ratios() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "semel.cli", "bench", "partitions", "--counts", "2,5", "--brokers", "1",
         "--replication-factor", "1", "--duration-s", "1", "--warmup-s", "0", "--idle-s", "0.5", "--settle-s", "0",
         "--record-bytes", "100"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "partitions" and result["counts"] == [2, 5]
    assert [s["partitions"] for s in result["steps"]] == [2, 5]
    for step in result["steps"]:
        assert {"create", "idle", "brokers", "produce"} <= set(step)
        (broker,) = step["brokers"]
        assert broker["rss_mb"] > 0 and broker["fds"] > 0 and broker["nofile_limit"] > 0
        assert broker["partition_replicas"] >= step["partitions"]
        assert step["produce"]["records"] > 0 and step["produce"]["errors"] == 0
        assert len(step["idle"]["brokers_core_pct"]) == 1
    assert "ratio_5_to_2" in result and result["ratio_5_to_2"] > 0
    (per_replica,) = result["fds_per_replica_2_to_5"]
    assert per_replica is not None and per_replica >= 1  # each replica holds its log files open
    assert result["max_rss_mb"] > 0


def test_broker_resources_counts_descriptors_by_kind(tmp_path: Path) -> None:
    before = broker_resources(os.getpid(), tmp_path)
    files = [open(tmp_path / f"f{i}", "w") for i in range(3)]
    try:
        after = broker_resources(os.getpid(), tmp_path)
    finally:
        for f in files:
            f.close()
    assert after["fds_by_kind"]["data_files"] == before["fds_by_kind"]["data_files"] + 3
    assert after["fds"] == sum(after["fds_by_kind"].values())
    assert after["nofile_limit"] and after["rss_mb"] > 0
