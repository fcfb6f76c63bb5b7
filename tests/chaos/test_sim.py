"""The deterministic whole-cluster simulation (chaos/sim): it replays, it passes clean seeds
while actually exercising faults and acknowledged writes, and its checker catches a bug."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from semel.chaos.sim.cluster import SimConfig, Simulation, run_seed

CI_SEEDS = 40  # a few seconds; `semel chaos simulate --seeds N` runs more
FSYNC_SEEDS = 8
FINDING_9_SEEDS = (134, 273)


def test_a_seed_replays_its_exact_trace():
    a, sim_a = run_seed(7)
    b, sim_b = run_seed(7)
    assert a == b
    assert sim_a.faults == sim_b.faults and sim_a.acked == sim_b.acked
    c, _ = run_seed(8)
    assert c != a


def _unsynced_lost(sim: Simulation) -> int:
    return sum(int(m.group(1)) for f in sim.faults if (m := re.search(r"power-loss \d+ \((\d+) unsynced", f)))


def test_clean_seeds_pass_and_exercise_faults_and_acks():
    failing = []
    acked = crashes = cuts = power_losses = clean_stops = unsynced_lost = 0
    for seed in range(CI_SEEDS):
        _, sim = run_seed(seed)
        if sim.violations:
            failing.append((seed, sim.violations[:3]))
        acked += sum(len(a) for a in sim.acked.values())
        crashes += sum(" crash " in f for f in sim.faults)
        cuts += sum(" cut " in f or " isolate " in f for f in sim.faults)
        power_losses += sum(" power-loss " in f for f in sim.faults)
        clean_stops += sum(" stopped " in f for f in sim.faults)
        unsynced_lost += _unsynced_lost(sim)
    assert not failing, failing
    # the run is not vacuous: writes were acknowledged under crashes, partitions, power losses
    # that dropped unsynced records, and clean stops
    assert acked > 100 * CI_SEEDS // 2 and crashes > CI_SEEDS and cuts > CI_SEEDS
    assert power_losses > CI_SEEDS // 2 and clean_stops > CI_SEEDS // 2 and unsynced_lost > CI_SEEDS


def test_fsync_true_loses_nothing_to_power_loss_and_passes():
    # `fsync: true`: every append is synced before it returns, so a cut loses no record, and
    # several brokers may lose power at once
    power_losses = overlapping = 0
    for seed in range(FSYNC_SEEDS):
        _, sim = run_seed(seed, SimConfig(fsync=True))
        assert not sim.violations, (seed, sim.violations[:3])
        assert _unsynced_lost(sim) == 0, sim.faults
        power_losses += sum(" power-loss " in f for f in sim.faults)
        overlapping += sum(bool(re.search(r"power-loss .*; [2-9] cut so far", f)) for f in sim.faults)
    assert power_losses > FSYNC_SEEDS and overlapping > 0


def test_checker_catches_the_power_loss_bug_of_chaos_finding_9():
    # Without eligible leader replicas and with the quorum ignoring lost_unsynced_writes (the code
    # before finding 9's fix), a leader that was the last ISR member after a clean stop of its
    # follower loses power, comes back with a shorter log and is elected: a committed write is
    # lost. About 1 seed in 200 shows it (seeds 134 and 273 of 0-399 since the controller's hearing
    # clock changed the event order; before it, 12 of 0-999): a search
    # from 0 would take ~6 s, so CI replays those two; if the simulation's event order changes,
    # find new ones with `semel chaos simulate --seeds 300 --inject-bug no-power-loss-fix`).
    cfg = SimConfig(bug_no_elr=True, bug_ignore_lost_unsynced_writes=True)
    for seed in FINDING_9_SEEDS:
        _, caught = run_seed(seed, cfg)
        assert any("committed write lost" in v for v in caught.violations), (seed, caught.violations)
        assert any(" power-loss " in f and "(0 unsynced" not in f for f in caught.faults), caught.faults
        # the same seed is clean with the fix (ELR + the machine-restart rule)
        assert not run_seed(seed)[1].violations


def test_checker_catches_a_leader_that_advances_the_hw_without_follower_acks():
    # about 15 % of seeds catch it (the leader must fail before its followers fetched)
    caught = next((sim for seed in range(60)
                   if (sim := run_seed(seed, SimConfig(bug_hw_without_acks=True))[1]).violations), None)
    assert caught is not None, "the injected HW bug went unnoticed for 60 seeds"
    assert any("committed" in v or "acknowledged" in v for v in caught.violations)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semel.cli", "chaos", "simulate", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_reports_a_failing_seed_that_replays_with_the_same_trace():
    ok = _cli("--seeds", "3")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["failing"] == 0 and "seeds_per_min" in ok.stdout
    bad = _cli("--seeds", "20", "--inject-bug", "hw-without-acks", "--jobs", "2")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    first = json.loads(bad.stderr.splitlines()[0])
    replay = _cli("--seed", str(first["seed"]), "--inject-bug", "hw-without-acks")
    assert replay.returncode == 1
    assert json.loads(replay.stdout.splitlines()[0])["trace_sha256"] == first["trace_sha256"]


def test_a_broker_killed_before_it_registered_after_a_power_loss_still_reports_the_loss():
    # Simulation seed 509 (found by the simulation, fixed in storage/boot_record.py): broker 1,
    # the last ISR member of p0 (ELR: 2), lost power; it started again while cut from the quorum
    # (its boot record rewritten with the new boot), was killed before it registered, and started
    # once more in the same boot: it registered without lost_unsynced_writes and was elected on
    # its short log, losing a committed write. The record now keeps the loss until it is reported.
    # (If the simulation's event order changes, find a new seed with `semel chaos simulate
    # --inject-bug boot-record-consumed-at-start`; since the controller's hearing clock changed
    # the event order, seed 1617 is the first of 0-1999 that shows it, 1978 the second.)
    _, before_fix = run_seed(1617, SimConfig(bug_boot_record_consumed_at_start=True))
    assert any("committed write lost" in v for v in before_fix.violations), before_fix.violations
    assert any("(starting" in f or " crash 1" in f for f in before_fix.faults)
    _, fixed = run_seed(1617)
    assert not fixed.violations, fixed.violations


def test_a_power_loss_that_brings_a_truncated_tail_back_is_survived():
    # `strict_truncation`: PartitionLog.truncate_to does not fsync the segment after ftruncate, so
    # a cut before the next sync brings the truncated (divergent, never committed) records back;
    # the restarted follower must truncate them again. Seeds 233 and 401 cut a broker in that
    # window (about 1 seed in 200 does since the controller's hearing clock changed the event
    # order; `semel chaos simulate --strict-truncation`).
    for seed in (233, 401):
        _, sim = run_seed(seed, SimConfig(strict_truncation=True))
        assert any("truncated records back" in f for f in sim.faults), sim.faults
        assert not sim.violations, (seed, sim.violations)
