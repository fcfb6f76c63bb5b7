"""Transactions in the deterministic whole-cluster simulation (chaos/sim, `--txn-producers`):
the real transaction coordinator core, marker channel, producer state and read_committed path
under the simulation's faults; the checker passes clean seeds, sees the faults and the
transaction outcomes it claims to cover, and catches injected transaction bugs."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

from semel.chaos.sim.cluster import SimConfig, run_seed

TXN = SimConfig(txn_producers=2)
CI_SEEDS = 30  # a few seconds on an idle machine; `semel chaos simulate --txn-producers 2 --seeds N` runs more
BUG_SEEDS = 8


def test_a_transactional_seed_replays_its_exact_trace():
    a, sim_a = run_seed(3, TXN)
    b, sim_b = run_seed(3, TXN)
    assert a == b and sim_a.decisions == sim_b.decisions and sim_a.txn_stats == sim_b.txn_stats
    assert run_seed(4, TXN)[0] != a
    # transactions change the run: the same seed without them is another trace
    assert run_seed(3)[0] != a


def test_clean_transactional_seeds_pass_and_exercise_every_outcome():
    failing = []
    totals: collections.Counter[str] = collections.Counter()
    crashes = 0
    for seed in range(CI_SEEDS):
        _, sim = run_seed(seed, TXN)
        if sim.violations:
            failing.append((seed, sim.violations[:3]))
        totals.update(sim.txn_stats)
        totals["client_commits"] += len(sim.client_commits)
        totals["decided_commit"] += sum(sim.decisions.values())
        totals["acked_txn_records"] += len(sim.txn_acked)
        crashes += sum(" crash " in f or " power-loss " in f or " stopped " in f for f in sim.faults)
    assert not failing, failing
    # not vacuous: commits and aborts decided by EndTxn, aborts by the coordinator's timeout and
    # by fencing (a restarted client), coordinator failovers (loads beyond the first of each
    # run), markers, and read_committed reads during the runs, all under broker faults
    assert totals["client_commits"] > 3 * CI_SEEDS and totals["aborts"] > CI_SEEDS // 2, totals
    assert totals["decided_commit"] >= totals["client_commits"], totals
    assert totals["decided_fence"] > 0 and totals["decided_timeout"] > 0, totals
    assert totals["loads"] > 2 * CI_SEEDS, totals
    assert totals["markers"] > 5 * CI_SEEDS and totals["rc_reads"] > 10 * CI_SEEDS, totals
    assert totals["acked_txn_records"] > 10 * CI_SEEDS and crashes > CI_SEEDS, totals


def test_checker_catches_a_last_stable_offset_that_ignores_open_transactions():
    for seed in range(BUG_SEEDS):
        _, sim = run_seed(seed, SimConfig(txn_producers=2, bug_lso_ignores_open_txns=True))
        assert any("read_committed" in v and ("open transaction" in v or "aborted transaction" in v)
                   for v in sim.violations), (seed, sim.violations)
    assert not run_seed(0, TXN)[1].violations


def test_checker_catches_a_commit_marker_missing_at_one_partition():
    caught = 0
    for seed in range(BUG_SEEDS):
        _, sim = run_seed(seed, SimConfig(txn_producers=2, bug_marker_skips_partition=True))
        caught += any("of committed transaction" in v and "not visible to read_committed" in v
                      or "aborted transaction" in v for v in sim.violations)
    assert caught >= BUG_SEEDS // 2, caught


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semel.cli", "chaos", "simulate", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_runs_transactions_and_replays_a_failing_transactional_seed():
    ok = _cli("--seeds", "2", "--txn-producers", "2")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["failing"] == 0 and summary["config"]["txn_producers"] == 2
    bad = _cli("--seeds", "2", "--inject-bug", "lso-ignores-open-txns")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    first = json.loads(bad.stderr.splitlines()[0])
    replay = _cli("--seed", str(first["seed"]), "--inject-bug", "lso-ignores-open-txns")
    assert replay.returncode == 1
    line = json.loads(replay.stdout.splitlines()[0])
    assert line["trace_sha256"] == first["trace_sha256"] and line["txn"]["rc_reads"] > 0
