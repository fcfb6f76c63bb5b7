"""`semel bench txn-scale` and `semel bench groups` run end to end against the real local
cluster they start (tiny counts) and print their figures as one JSON line. Benchmarks are
commands, not timed tests: these check that the commands work and what they report, never
how fast anything was."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from semel import limits

pytestmark = pytest.mark.slow
SEMEL = [sys.executable, "-m", "semel.cli"]


def _bench(*args: str) -> dict:
    proc = subprocess.run([*SEMEL, "bench", *args, "--brokers", "1", "--replication-factor", "1"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_txn_scale_reports_commit_latency_cpu_per_transaction_and_producer_state() -> None:
    out = _bench("txn-scale", "--processes", "2", "--transactional-ids", "3", "--idempotent-producers", "2",
                 "--duration-s", "2", "--warmup-s", "1", "--idle-s", "1", "--partitions", "2")
    assert out["benchmark"] == "txn-scale" and out["errors"] == []
    for window in ("transactions", "mixed"):
        w = out[window]
        assert w["transactions"] > 0, w
        assert w["commit_ms_p50"] <= w["commit_ms_p99"] <= w["commit_ms_max"]
        assert w["brokers_cpu_ms_per_txn"] > 0 and len(w["brokers_rss_mb"]) == 1
        # every transaction wrote its state records through the coordinator's appends
        assert w["state_transitions"] >= w["state_appends"] > 0
        assert 0 <= w["state_appends_overlapping"] <= w["state_appends"]
        assert {"EndTxn", "AddPartitionsToTxn"} <= set(w["rpcs_per_txn"])
        assert len(w["load_avg"]) == 3
    assert out["mixed"]["idempotent_records_per_s"] > 0
    state = out["producer_state"]
    # 3 transactional + 2 idempotent producers wrote to the 2 partitions of one broker
    assert 1 <= state["producer_ids_tracked_max_per_replica"] <= 5
    assert state["bound_per_partition"] == limits.MAX_PRODUCERS_PER_PARTITION and state["within_bound"] is True


def test_groups_reports_settle_times_heartbeat_cpu_and_rss() -> None:
    out = _bench("groups", "--processes", "2", "--members", "3", "--groups", "2", "--group-members", "2",
                 "--rounds", "1", "--steady-s", "1", "--idle-s", "1", "--partitions", "4")
    assert out["benchmark"] == "groups"
    assert out["one_group"]["members"] == 3 and out["many_groups"]["members"] == 4
    for case in ("one_group", "many_groups"):
        c = out[case]
        assert c["all_join_settle_s"] >= 0 and len(c["join_settle_s"]) == len(c["leave_settle_s"]) == 1
        steady = c["steady"]
        assert {"brokers_cpu_ms_per_member_per_s_above_idle", "heartbeats_per_s", "brokers_rss_mb",
                "brokers_idle_cpu_ms_per_s", "load_avg"} <= set(steady)
        assert len(steady["brokers_rss_mb"]) == 1 and steady["brokers_rss_mb"][0] > 0
