"""The nemesis schedule (pure, seeded), the executor against a fake cluster, link planning,
outcome mapping, the report and the `semel chaos` commands. No broker processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.chaos.checker import check
from semel.chaos.history import FAIL, INFO, OK, HistoryBuilder
from semel.chaos.nemesis import (
    CONTROLLER,
    COORDINATOR,
    FAMILIES,
    LEADER,
    WORKLOAD_FAMILIES,
    Fault,
    NemesisExecutor,
    parse_families,
    plan_schedule,
)
from semel.chaos.report import render_html, summarize
from semel.chaos.wiring import CLIENTS, flow_streams, plan_links
from semel.chaos.workloads import (
    WorkloadConfig,
    WorkloadUnavailable,
    make_workload,
    plan_op,
    send_outcome,
)
from semel.client.errors import (
    DeliveryTimeoutError,
    InvalidRecordError,
    NotEnoughReplicasError,
    RequestTimedOutError,
)
from semel.cluster.tooling.local_cluster import BrokerSpec

ALL = tuple(f for f in FAMILIES if f not in WORKLOAD_FAMILIES)


# --- schedule ----------------------------------------------------------------------------
def test_same_seed_same_schedule_and_other_seeds_differ() -> None:
    a = plan_schedule(7, 300, ALL, 3)
    b = plan_schedule(7, 300, ALL, 3)
    assert a == b and a.fingerprint() == b.fingerprint()
    assert a.windows, "a 300 s run has faults"
    others = {plan_schedule(s, 300, ALL, 3).fingerprint() for s in range(8, 16)}
    assert a.fingerprint() not in others and len(others) == 8


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), duration=st.floats(0, 600), brokers=st.integers(1, 7),
       fams=st.lists(st.sampled_from(ALL), min_size=0, max_size=6, unique=True),
       interval=st.floats(1, 30), max_concurrent=st.integers(1, 3))
def test_schedule_properties(seed: int, duration: float, brokers: int, fams: list[str], interval: float,
                             max_concurrent: int) -> None:
    s = plan_schedule(seed, duration, fams, brokers, interval, max_concurrent)
    ids = set(range(1, brokers + 1))
    for w in s.windows:
        assert 0 <= w.start_s < w.stop_s <= duration  # everything heals by the end
        assert w.fault.family in fams
        for t in w.fault.targets:
            assert t in ids or t in (LEADER, CONTROLLER, COORDINATOR)
    for w in s.windows:  # never more than max_concurrent at once, never one family twice at once
        active = [o for o in s.windows if o.start_s <= w.start_s < o.stop_s]
        assert len(active) <= max_concurrent
        assert len({o.fault.family for o in active}) == len(active)
    events = s.events()
    assert [e.at_s for e in events] == sorted(e.at_s for e in events)
    assert len(events) == 2 * len(s.windows)


def test_interval_controls_the_rate_and_every_kind_appears() -> None:
    s = plan_schedule(1, 3600, ALL, 5, interval_s=10)
    assert 250 <= len(s.windows) <= 420
    kinds = {(w.fault.family, w.fault.kind) for w in s.windows}
    assert {("kill", "majority"), ("kill", "all"), ("pause", LEADER), ("partition", "one-way"),
            ("partition", "split"), ("latency", "clients"), ("rolling", "hard")} <= kinds
    split = [w.fault for w in s.windows if w.fault.kind == "split"]
    assert all(len(f.targets) == 2 for f in split)  # the minority of 5


def test_parse_families() -> None:
    assert parse_families("kill, pause,kill") == ("kill", "pause")
    assert parse_families("none") == ()
    assert "hijack" not in parse_families("all")
    with pytest.raises(ValueError, match="unknown nemesis bogus"):
        parse_families("kill,bogus")
    # "all" combines with the workload families (it used to be refused as unknown)
    combined = parse_families("all,hijack,client-pause")
    assert combined[-2:] == ("hijack", "client-pause") and set(parse_families("all")) < set(combined)
    with pytest.raises(ValueError, match="none cannot be combined"):
        parse_families("none,kill")


# --- links ---------------------------------------------------------------------------------
def specs(n: int) -> list[BrokerSpec]:
    return [BrokerSpec(i, "127.0.0.1", 9000 + i, 19000 + i, Path(f"/x/{i}")) for i in range(1, n + 1)]


def test_plan_links_one_proxy_per_connection() -> None:
    links = plan_links(specs(3))
    names = {l.name for l in links}
    assert names == {"client-1", "client-2", "client-3", "rpc-1-2", "rpc-1-3", "rpc-2-1", "rpc-2-3", "rpc-3-1",
                     "rpc-3-2", "raft-2-1", "raft-3-1", "raft-3-2"}  # raft: the greater address dials
    by = {l.name: l for l in links}
    assert by["rpc-1-2"].upstream == "127.0.0.1:9002" and by["raft-3-1"].upstream == "127.0.0.1:19001"
    # data from 1 to 3: upstream of what 1 dials, downstream of what 3 dials
    assert sorted(flow_streams(links, 1, 3)) == [("raft-3-1", "downstream"), ("rpc-1-3", "upstream"),
                                                 ("rpc-3-1", "downstream")]
    assert flow_streams(links, CLIENTS, 2) == [("client-2", "upstream")]
    assert flow_streams(links, 2, CLIENTS) == [("client-2", "downstream")]
    assert flow_streams(links, 1, 3, kinds=("raft",)) == [("raft-3-1", "downstream")]


# --- executor against a fake cluster ----------------------------------------------------------
class FakeApi:
    def __init__(self) -> None:
        self.toxics: dict[tuple[str, str], tuple[str, str, dict]] = {}
        self.resets = 0

    def add_toxic(self, proxy: str, name: str, type: str, stream: str, attributes: dict) -> None:
        assert (proxy, name) not in self.toxics
        self.toxics[(proxy, name)] = (type, stream, attributes)

    def remove_toxic(self, proxy: str, name: str) -> None:
        self.toxics.pop((proxy, name), None)


class FakeCluster:
    def __init__(self, n: int = 3) -> None:
        self.links = plan_links(specs(n))
        self.broker_ids = list(range(1, n + 1))
        self.api = FakeApi()
        self.running = set(self.broker_ids)
        self.stopped: set[int] = set()
        self.log: list[str] = []

    def flows(self, src: int, dst: int, kinds=("client", "rpc", "raft")):
        return flow_streams(self.links, src, dst, kinds)

    def kill(self, b: int) -> None:
        self.running.discard(b)
        self.log.append(f"kill {b}")

    def terminate(self, b: int) -> None:
        self.running.discard(b)
        self.log.append(f"term {b}")

    def start_broker(self, b: int) -> None:
        self.running.add(b)
        self.log.append(f"start {b}")

    def alive(self, b: int) -> bool:
        return b in self.running

    def pause(self, b: int) -> None:
        self.stopped.add(b)

    def resume(self, b: int) -> None:
        self.stopped.discard(b)

    def paused(self, b: int) -> bool:
        return b in self.stopped

    ready_after = 0
    looks: dict[int, int] = {}

    def is_ready(self, b: int) -> bool:
        self.looks[b] = self.looks.get(b, 0) + 1
        return b in self.running and self.looks[b] >= self.ready_after

    def wait_ready(self, broker_ids=None, timeout_s: float = 0) -> None:
        self.log.append(f"ready {broker_ids}")

    def heal_network(self) -> None:
        self.api.resets += 1
        self.api.toxics.clear()


def executor(cluster: FakeCluster, leader: int = 2) -> NemesisExecutor:
    return NemesisExecutor(cluster, lambda what: leader if what == LEADER else 3, seed=1)


def test_isolate_leader_cuts_every_peer_link_both_ways_and_heals() -> None:
    c = FakeCluster()
    ex = executor(c, leader=2)
    f = Fault(0, "partition", "isolate-leader", (LEADER,))
    applied = ex.start(f)
    assert applied.brokers == (2,)
    cut = {(p, t[1]) for (p, _), t in c.api.toxics.items()}
    expected = set()
    for o in (1, 3):
        expected |= set(c.flows(2, o) + c.flows(o, 2))
    assert cut == expected and all(t[0] == "timeout" and t[2] == {"timeout": 0} for t in c.api.toxics.values())
    assert not any(p.startswith("client") for p, _ in cut)  # clients still reach it
    ex.stop(f)
    assert not c.api.toxics and not ex.active


def test_one_way_cut_touches_one_direction_only() -> None:
    c = FakeCluster()
    ex = executor(c)
    ex.start(Fault(0, "partition", "one-way", (3, 1)))
    assert {(p, t[1]) for (p, _), t in c.api.toxics.items()} == set(c.flows(3, 1))
    assert not set(c.flows(1, 3)) & {(p, t[1]) for (p, _), t in c.api.toxics.items()}


def test_overlapping_kills_restart_only_when_the_last_one_ends_and_heal_all_restores() -> None:
    c = FakeCluster()
    ex = executor(c)
    one, majority = Fault(0, "kill", "one", (2,)), Fault(1, "kill", "majority", (1, 2))
    ex.start(one)
    ex.start(majority)
    assert c.running == {3}
    ex.stop(one)
    assert c.running == {3}  # 2 is still held by the majority kill
    ex.start(Fault(2, "pause", "one", (3,)))
    ex.start(Fault(3, "latency", "all", (), (("jitter_pct", 50), ("latency_ms", 100))))
    assert all(t[2] == {"latency": 100, "jitter": 50} for t in c.api.toxics.values())
    ex.heal_all()
    assert c.running == {1, 2, 3} and not c.stopped and not c.api.toxics and not ex.active
    assert c.log[-1] == "ready None"


def test_rolling_restart_goes_through_every_broker() -> None:
    c = FakeCluster()
    ex = executor(c)
    c.ready_after = 2  # each restarted broker is ready on the second look
    f = Fault(0, "rolling", "clean")
    applied = ex.start(f)
    assert sorted(applied.brokers) == [1, 2, 3]
    assert c.log == [f"term {applied.brokers[0]}", f"start {applied.brokers[0]}"]  # one at a time, no blocking
    for _ in range(10):
        ex.tick()
    assert [line.split()[0] for line in c.log] == ["term", "start"] * 3
    assert [int(line.split()[1]) for line in c.log[::2]] == list(applied.brokers)
    ex.stop(f)
    assert not ex._rolls


def test_workload_families_need_hooks() -> None:
    c = FakeCluster()
    calls = []
    ex = NemesisExecutor(c, lambda w: None, seed=1, hooks={"hijack": lambda f, on: calls.append(on) or "ok"})
    f = Fault(0, "hijack", "one", (), (("pick", 5),))
    ex.start(f)
    ex.stop(f)
    assert calls == [True, False]
    assert "no hook" in executor(c).start(Fault(1, "client-pause", "one")).note


def test_unresolvable_target_falls_back_to_a_broker() -> None:
    c = FakeCluster()
    ex = NemesisExecutor(c, lambda what: (_ for _ in ()).throw(RuntimeError("no quorum")), seed=3)
    applied = ex.start(Fault(0, "kill", "controller", (CONTROLLER,)))
    assert len(applied.brokers) == 1 and applied.brokers[0] in c.broker_ids


# --- workloads ---------------------------------------------------------------------------------
def test_send_outcomes_are_honest() -> None:
    assert send_outcome(None) == (OK, None)
    assert send_outcome(InvalidRecordError("bad"))[0] == FAIL  # refused before any append
    for err in (RequestTimedOutError("t"), NotEnoughReplicasError("n"), DeliveryTimeoutError("d"),
                TimeoutError("future"), RuntimeError("?"), DeliveryTimeoutError("d", outcome_unknown=False)):
        assert send_outcome(err)[0] == INFO, err


def test_plan_op_mix() -> None:
    import random

    rng = random.Random(4)
    ops = [plan_op(rng, WorkloadConfig()) for _ in range(5000)]
    assert {op: ops.count(op) for op in set(ops)}.keys() == {"send", "poll", "assign", "crash"}
    assert ops.count("send") > ops.count("poll") > ops.count("assign") > ops.count("crash") > 0


@pytest.mark.parametrize("name", ["txn", "money", "copier"])
def test_make_workload_builds_each_transactional_workload(name: str) -> None:
    assert make_workload(name, WorkloadConfig(), 1).name == name


def test_make_workload_refuses_an_unknown_name() -> None:
    with pytest.raises(WorkloadUnavailable, match="unknown workload"):
        make_workload("nope", WorkloadConfig(), 1)


# --- report and commands -------------------------------------------------------------------------
def test_report_plots_and_lists_anomalies() -> None:
    b = HistoryBuilder()
    b.send(0, "t-0", 1, 0).send(1, "t-0", 2, 0).poll(2, {"t-0": [(0, 1)]}).send(0, "t-0", 3, type=INFO)
    verdict = check(b.events)
    assert "inconsistent-offsets" in verdict["anomalies"]
    summary = {"config": {"seed": 5, "workload": "idempotent", "brokers": 3, "duration_s": 10,
                          "families": ["kill"]},
               "faults": [{"fault": {"family": "kill"}, "describe": "kill:one[2]", "brokers": [2],
                           "started_s": 0.0, "stopped_s": 1e-6}]}
    page = render_html(b.events, verdict, summary)
    assert page.count("<svg") == 2 and "INVALID" in page and "inconsistent-offsets" in page
    assert "kill:one[2]" in page and "--seed 5" in page
    import re
    import xml.etree.ElementTree as ET

    for svg in re.findall(r"<svg.*?</svg>", page, re.S):  # well-formed, self-contained SVG
        assert ET.fromstring(svg).tag.endswith("svg")
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    s = summarize(b.events)
    assert sum(s["per_second"]["ok"].values()) == 3 and len(s["latencies"]) == 4


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semel.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_rejects_bad_arguments_and_checks_histories(tmp_path: Path) -> None:
    r = run_cli("chaos", "run", "--nemesis", "kill,bogus", "--duration-s", "1", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown nemesis bogus" in r.stderr
    r = run_cli("chaos", "run", "--workload", "idempotent", "--nemesis", "hijack", "--duration-s", "1",
                "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "needs a transactional workload" in r.stderr
    hist = tmp_path / "h.jsonl"
    HistoryBuilder().send(0, "t-0", 1, 0).poll(1, {"t-0": [(0, 1)]}).write(hist)
    r = run_cli("chaos", "check", str(hist))
    assert r.returncode == 0 and json.loads(r.stdout)["valid"] is True
    a = run_cli("chaos", "schedule", "--seed", "7", "--duration-s", "120", "--json")
    b = run_cli("chaos", "run", "--seed", "7", "--duration-s", "120", "--dry-run")
    assert a.returncode == 0 and b.returncode == 0
    assert json.loads(a.stdout) == plan_schedule(7, 120, ("kill", "pause", "partition", "latency"), 3).to_json()
    assert b.stdout.splitlines()[0].startswith("seed 7: ")


# --- power loss ----------------------------------------------------------------------------------
def test_power_loss_cuts_every_broker_only_with_fsync_and_a_minority_is_a_minority() -> None:
    kinds_without, kinds_with = set(), set()
    for seed in range(40):
        for fsync, kinds in ((False, kinds_without), (True, kinds_with)):
            for w in plan_schedule(seed, 300, ["power-loss"], 5, fsync=fsync).windows:
                kinds.add(w.fault.kind)
                if w.fault.kind in ("one", "minority"):
                    assert 1 <= len(w.fault.targets) <= 2  # never a majority of 5
    assert kinds_without == {"one", "leader", "minority"}
    assert kinds_with == {"one", "leader", "minority", "all"}
    from semel.chaos.runner import RunConfig, plan

    with pytest.raises(ValueError, match="3 or more brokers"):
        plan(RunConfig(families=("power-loss",), brokers=2))
    assert plan(RunConfig(families=("power-loss",), brokers=2, fsync=True)).windows


class PowerCutCluster(FakeCluster):
    def __init__(self) -> None:
        super().__init__()
        self.cuts: list[tuple[tuple[int, ...], int]] = []

    def power_cut(self, broker_ids, seed: int) -> dict[int, dict[str, int]]:
        self.cuts.append((tuple(broker_ids), seed))
        self.running -= set(broker_ids)
        return {b: {"lost_bytes": 1, "torn_files": 0, "wal_bytes_cut": 2} for b in broker_ids}


def test_power_loss_restarts_at_the_end_unless_a_kill_still_holds_the_broker() -> None:
    c = PowerCutCluster()
    ex = executor(c, leader=2)
    cut = Fault(0, "power-loss", "leader", (LEADER,))
    kill = Fault(1, "kill", "one", (2,))
    applied = ex.start(cut)
    assert c.cuts and c.cuts[0][0] == (2,) and c.running == {1, 3}
    assert "broker 2: 1 unsynced bytes lost" in applied.note
    ex.start(kill)
    ex.stop(cut)
    assert c.running == {1, 3}  # the kill still holds broker 2
    ex.stop(kill)
    assert c.running == {1, 2, 3}


def test_disk_full_is_opt_in_and_targets_one_broker() -> None:
    assert "disk-full" not in parse_families("all")  # needs root: never implied
    assert parse_families("all,disk-full")[-1] == "disk-full"
    s = plan_schedule(3, 120.0, ("disk-full",), brokers=3, interval_s=10.0)
    assert s.windows and all(w.fault.kind == "one" and len(w.fault.targets) == 1 for w in s.windows)


class ClockCluster(FakeCluster):
    def __init__(self) -> None:
        super().__init__()
        self.offsets: dict[int, int] = {}
        self.steps: list[tuple[int, int]] = []

    def set_clock_offset(self, broker_id: int, offset_ms: int) -> None:
        self.steps.append((broker_id, offset_ms))
        self.offsets[broker_id] = offset_ms


def test_clock_steps_minutes_both_ways_and_steps_back_at_the_end() -> None:
    windows = [w for seed in range(20) for w in plan_schedule(seed, 300, ["clock"], 3).windows]
    offsets = [w.fault.param("offset_ms") for w in windows]
    assert all(abs(o) >= 60_000 and o % 60_000 == 0 for o in offsets), "whole minutes"
    assert min(offsets) < 0 < max(offsets), "forward and back"
    assert {w.fault.kind for w in windows} == {"one", "leader", "coordinator"}
    c = ClockCluster()
    ex = executor(c, leader=2)
    fwd = Fault(0, "clock", "leader", (LEADER,), (("offset_ms", 600_000),))
    applied = ex.start(fwd)
    assert applied.brokers == (2,) and c.offsets == {2: 600_000} and "+10 min" in applied.note
    back = Fault(1, "clock", "one", (2,), (("offset_ms", -120_000),))
    ex.start(back)
    ex.stop(fwd)
    assert c.offsets == {2: -120_000}, "another clock fault still holds broker 2"
    ex.stop(back)
    assert c.offsets == {2: 0} and c.running == {1, 2, 3}
    ex.start(Fault(2, "clock", "one", (3,), (("offset_ms", 120_000),)))
    ex.heal_all()
    assert c.offsets[3] == 0, "heal_all steps every clock back"
