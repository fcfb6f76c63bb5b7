"""`semel bench big-partition` at tiny sizes: the command runs every phase against a real
broker process (start, produce, consume, offline fill, restart, SIGKILL and recovery) and
prints its figures as one JSON line. No figure is asserted: benchmarks are commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SEMEL = [sys.executable, "-m", "semel.cli"]


def test_big_partition_prints_every_phase(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.run([*SEMEL, "bench", "big-partition", "--gb", "0.02", "--segments", "5", "--produce-mb", "1",
                           "--data-dir", str(data)], capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert result["benchmark"] == "big-partition"
    assert set(result) >= {"produce_consume", "fill", "clean_start", "fetch_from_zero", "broker_before_kill",
                           "recovery_small", "recovery"}
    pc = result["produce_consume"]
    assert [c["isolation"] for c in pc["consumers"]] == ["read_uncommitted", "read_committed"]
    assert {"ratio_read_uncommitted", "ratio_read_committed", "producer", "broker"} <= set(pc)
    assert result["fill"]["bytes"] >= 0.02 * 1000 ** 3 and result["fill"]["segments"] >= 5
    assert set(result["fill"]["storage_reads"]) >= {"open_ms", "recovery", "from_zero", "from_middle", "near_end"}
    assert 0 < result["fill"]["storage_reads"]["from_zero"]["bytes"] <= 1024 * 1024
    for phase in ("clean_start", "recovery_small", "recovery"):
        assert {"ready_s", "unfenced_s", "serving_s", "broker_cpu_s", "load1", "broker"} <= set(result[phase])
        assert result[phase]["broker"]["rss_mb"] > 0
    # The broker logged what its recovery read; after SIGKILL it verified the tail only.
    read = result["recovery"]["recovery_read"]
    assert read is not None and read["verified"] >= 1 and read["trusted"] >= 4
    assert result["fetch_from_zero"]["first_offset"] == 0 and result["fetch_from_zero"]["connected_consumer_ms"] > 0
    assert not data.exists()  # the data dir is removed unless --keep-data
