"""The nemesis: a seeded schedule of faults (pure) and a thin executor that applies it.

Theory of operation
-------------------
`plan_schedule(seed, duration_s, families, brokers, interval_s)` is a pure function: from one
`random.Random(seed)` it draws, about every `interval_s` seconds, a fault from one of the
enabled families that is not already active (at most `max_concurrent` at once), and when it
ends. Every fault ends by `duration_s`, so the run's final phase starts healed. The same
arguments always give the same `Schedule` (tested), which is what makes a run replayable.

Targets are concrete broker ids where the choice does not depend on the run ("broker 2",
"brokers 1 and 3"), and symbolic where it does ("leader": the leader of a workload partition,
"controller": the active controller). The executor resolves symbolic targets when the fault
starts, asking the cluster through its real ports (the control plane is outside the faults),
and records the resolution; if the cluster cannot answer it falls back to a seeded choice.

Families (`--nemesis`):
  kill       SIGKILL one / the leader / the controller / the transaction coordinator / a majority /
             all brokers; restart at the end (no coordinator: a seeded broker instead)
  pause      SIGSTOP one / the leader / the controller / the coordinator / a majority; SIGCONT at the end
  partition  silent cuts (a `timeout` toxic holding the data): isolate a broker from its peers,
             isolate it from peers and clients, split a minority from a majority, cut the
             clients from one broker, cut one direction of one broker pair
  latency    latency + jitter on every link, on one broker's links, or on the clients' links
  reset      connection resets (`reset_peer`) on one broker's links: every connection is torn
             down shortly after it carries data, for a short window
  rolling    restart every broker in turn (SIGTERM or SIGKILL), waiting for each to be ready
  power-loss one / the leader / a minority of brokers (all of them too, only with `--fsync`) lose power:
             SIGKILL, then each data dir becomes what a power cut leaves (`semel.storage.power_cut`:
             only what was fsynced, torn unsynced tails, RocksDB's WAL cut); restart at the end
  disk-full  fill one broker's log directory (a tmpfs per broker, mounted for the run: root only,
             so not part of "all"); the filler file is deleted at the end
  clock      step the wall clock of one broker / the leader / the transaction coordinator by
             minutes (forward or back; `semel.clock`'s test-only offset, the host clock is
             untouched) and step it back at the end
  hijack     (transactional workloads) a second producer takes a transactional id
  client-pause (transactional workloads) a client stalls between its last send and its commit
The last two are hooks of the workload; a workload without them rejects those families.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("semel.chaos.nemesis")

FAMILIES = ("kill", "pause", "partition", "latency", "reset", "rolling", "power-loss", "clock", "hijack",
            "client-pause", "disk-full")
WORKLOAD_FAMILIES = ("hijack", "client-pause")
# Not in "all": they need root (each broker's log directory is a tmpfs mounted for the run).
OPT_IN_FAMILIES = ("disk-full",)
DEFAULT_FAMILIES = ("kill", "pause", "partition", "latency")
# Families whose faults differ when the brokers run with `--fsync` (power-loss may then cut every
# broker): `semel chaos campaign` runs each of them both ways.
FSYNC_FAMILIES = ("power-loss",)

# kinds per family, with weights
KINDS: dict[str, tuple[tuple[str, int], ...]] = {
    "kill": (("one", 3), ("leader", 3), ("controller", 2), ("coordinator", 2), ("majority", 1), ("all", 1)),
    "pause": (("one", 2), ("leader", 3), ("controller", 2), ("coordinator", 1), ("majority", 1)),
    "partition": (("isolate", 2), ("isolate-leader", 2), ("isolate-controller", 1), ("isolate-coordinator", 1),
                  ("isolate-full", 1), ("split", 1), ("clients-one", 1), ("one-way", 2)),
    "latency": (("all", 2), ("one", 2), ("clients", 1)),
    "reset": (("one", 1),),
    "rolling": (("clean", 1), ("hard", 1)),
    "power-loss": (("one", 3), ("leader", 2), ("minority", 2), ("all", 2)),  # "all": only with fsync
    "clock": (("one", 2), ("leader", 1), ("coordinator", 2)),
    "hijack": (("one", 1),),
    "client-pause": (("one", 1),),
    "disk-full": (("one", 1),),  # fill one broker's log directory; freed at the window's end
}
LEADER = "leader"
CONTROLLER = "controller"
COORDINATOR = "coordinator"  # the transaction coordinator of the workload's first transactional id
FAULT_MIN_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One fault window's what: `targets` are broker ids or a symbolic LEADER / CONTROLLER."""

    id: int
    family: str
    kind: str
    targets: tuple[int | str, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.params)
        targets = ",".join(str(t) for t in self.targets)
        return f"{self.family}:{self.kind}" + (f"[{targets}]" if targets else "") + (f" {extra}" if extra else "")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "family": self.family, "kind": self.kind, "targets": list(self.targets),
                "params": dict(self.params)}


@dataclasses.dataclass(frozen=True, slots=True)
class FaultWindow:
    start_s: float
    stop_s: float
    fault: Fault


@dataclasses.dataclass(frozen=True, slots=True)
class FaultEvent:
    at_s: float
    action: str  # "start" | "stop"
    fault: Fault


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    duration_s: float
    families: tuple[str, ...]
    windows: tuple[FaultWindow, ...]

    def events(self) -> list[FaultEvent]:
        """Starts and stops in time order (a stop before a start at the same instant)."""
        evs = [FaultEvent(w.start_s, "start", w.fault) for w in self.windows]
        evs += [FaultEvent(w.stop_s, "stop", w.fault) for w in self.windows]
        return sorted(evs, key=lambda e: (e.at_s, e.action != "stop", e.fault.id))

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "duration_s": self.duration_s, "families": list(self.families),
                "windows": [{"start_s": w.start_s, "stop_s": w.stop_s, "fault": w.fault.to_json()}
                            for w in self.windows]}

    def fingerprint(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def parse_families(text: str) -> tuple[str, ...]:
    """"kill,pause" -> ("kill", "pause"); "none" -> (); "all" -> every non-workload family,
    which may be combined with more ("all,hijack,client-pause")."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return ()
    if "none" in names:
        raise ValueError("nemesis none cannot be combined with fault families")
    expanded: list[str] = []
    for name in names:
        expanded += ([f for f in FAMILIES if f not in WORKLOAD_FAMILIES + OPT_IN_FAMILIES] if name == "all"
                     else [name])
    unknown = [n for n in expanded if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown nemesis {', '.join(unknown)} (choose from {', '.join(FAMILIES)}, all, none)")
    return tuple(dict.fromkeys(expanded))


def _weighted(rng: random.Random, options: Sequence[tuple[str, int]]) -> str:
    total = sum(w for _, w in options)
    roll = rng.randrange(total)
    for name, weight in options:
        if roll < weight:
            return name
        roll -= weight
    raise AssertionError("unreachable")


def _draw_fault(rng: random.Random, fault_id: int, family: str, brokers: int, fsync: bool = False) -> Fault:
    options = KINDS[family]
    if brokers < 2 and family == "partition":  # no peer links: only the clients can be cut off
        options = (("clients-one", 1),)
    if family == "power-loss" and not fsync:  # without fsync a majority's power loss may lose data
        options = tuple(o for o in options if o[0] != "all")
    kind = _weighted(rng, options)
    ids = list(range(1, brokers + 1))
    majority = brokers // 2 + 1
    params: dict[str, Any] = {}
    targets: tuple[int | str, ...] = ()
    if family in ("kill", "pause", "power-loss"):
        if kind == "one":
            targets = (rng.choice(ids),)
        elif kind == "leader":
            targets = (LEADER,)
        elif kind == "controller":
            targets = (CONTROLLER,)
        elif kind == "coordinator":
            targets = (COORDINATOR,)
        elif kind == "majority":
            targets = tuple(sorted(rng.sample(ids, majority)))
        elif kind == "minority":
            targets = tuple(sorted(rng.sample(ids, max(1, brokers - majority))))
        else:
            targets = tuple(ids)
    elif family == "partition":
        if kind in ("isolate", "isolate-full", "clients-one"):
            targets = (rng.choice(ids),)
        elif kind == "isolate-leader":
            targets = (LEADER,)
        elif kind == "isolate-controller":
            targets = (CONTROLLER,)
        elif kind == "isolate-coordinator":
            targets = (COORDINATOR,)
        elif kind == "split":
            targets = tuple(sorted(rng.sample(ids, max(1, brokers - majority))))  # the minority side
        else:  # one-way: data from targets[0] to targets[1] is dropped
            targets = tuple(rng.sample(ids, 2))
    elif family == "latency":
        if kind == "one":
            targets = (rng.choice(ids),)
        params = {"latency_ms": rng.choice((20, 50, 100, 200)), "jitter_pct": rng.choice((0, 25, 50))}
    elif family == "reset":
        targets = (rng.choice(ids),)
        params = {"timeout_ms": rng.choice((0, 50, 200, 500))}
    elif family == "disk-full":
        targets = (rng.choice(ids),)
    elif family == "clock":
        targets = {"leader": (LEADER,), "coordinator": (COORDINATOR,)}.get(kind) or (rng.choice(ids),)
        params = {"offset_ms": rng.choice((-1, 1)) * rng.choice((2, 5, 10, 30)) * 60_000}
    elif family in WORKLOAD_FAMILIES:
        params = {"pick": rng.randrange(1 << 30)}
    return Fault(fault_id, family, kind, targets, tuple(sorted(params.items())))


def plan_schedule(seed: int, duration_s: float, families: Sequence[str], brokers: int, interval_s: float = 10.0,
                  max_concurrent: int = 2, fsync: bool = False) -> Schedule:
    """The fault windows of a run (pure; see the module docstring). `fsync`: the brokers run with
    `--fsync`, so power-loss may cut every broker at once."""
    if brokers < 1 or interval_s <= 0 or duration_s < 0:
        raise ValueError("need brokers >= 1, interval_s > 0, duration_s >= 0")
    rng = random.Random(seed)
    fams = tuple(dict.fromkeys(families))
    windows: list[FaultWindow] = []
    t = round(interval_s * rng.uniform(0.3, 0.7), 3)
    fault_id = 0
    while fams and t + FAULT_MIN_S <= duration_s:
        active = [w for w in windows if w.stop_s > t]
        busy = {w.fault.family for w in active}
        free = [f for f in fams if f not in busy]
        if len(active) < max_concurrent and free:
            family = rng.choice(free)
            fault = _draw_fault(rng, fault_id, family, brokers, fsync)
            fault_id += 1
            length = interval_s * (0.5 if family in ("reset", "hijack", "client-pause") else 1.0) * rng.uniform(0.5, 1.5)
            if family == "rolling":
                length = max(length, 3.0 * brokers)  # a roll takes a few seconds per broker
            stop = min(float(duration_s), round(t + max(FAULT_MIN_S, length), 3))
            windows.append(FaultWindow(t, stop, fault))
        t = round(t + interval_s * rng.uniform(0.6, 1.4), 3)
    return Schedule(seed, float(duration_s), fams, tuple(windows))


# ======================================================================================
# executor (thin): applies events to a ChaosCluster
# ======================================================================================
Resolver = Callable[[str], "int | None"]  # LEADER / CONTROLLER / COORDINATOR -> broker id (None: unknown)


@dataclasses.dataclass(slots=True)
class AppliedFault:
    fault: Fault
    started_s: float
    brokers: tuple[int, ...] = ()
    toxics: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (proxy, toxic name)
    stopped_s: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.fault.to_json(), "describe": self.fault.describe(), "started_s": self.started_s,
                "stopped_s": self.stopped_s, "brokers": list(self.brokers), "note": self.note}


class NemesisExecutor:
    """Applies faults to a `semel.chaos.wiring.ChaosCluster`; call from one long-lived thread."""

    RESTART_READY_S = 30.0

    def __init__(self, cluster: Any, resolver: Resolver, seed: int,
                 hooks: Mapping[str, Callable[[Fault, bool], str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.resolver = resolver
        self.rng = random.Random(seed ^ 0x5EED)
        self.hooks = dict(hooks or {})
        self.clock = clock
        self.t0 = clock()
        self.active: dict[int, AppliedFault] = {}
        self.done: list[AppliedFault] = []
        self.lock = threading.Lock()
        self._rolls: dict[int, _Roll] = {}

    def now_s(self) -> float:
        return self.clock() - self.t0

    def current(self) -> list[str]:
        with self.lock:
            return [a.fault.describe() + (f" -> {list(a.brokers)}" if a.brokers else "") for a in self.active.values()]

    def apply(self, event: FaultEvent) -> None:
        if event.action == "start":
            self.start(event.fault)
        else:
            self.stop(event.fault)

    # --- targets ---------------------------------------------------------------------
    def _resolve(self, targets: Sequence[int | str]) -> tuple[int, ...]:
        out: list[int] = []
        for t in targets:
            if isinstance(t, int):
                out.append(t)
                continue
            bid = None
            try:
                bid = self.resolver(t)
            except Exception as exc:
                log.info("cannot resolve %s: %s", t, exc)
            if bid is None or bid not in self.cluster.broker_ids:
                bid = self.rng.choice(self.cluster.broker_ids)
            out.append(bid)
        return tuple(dict.fromkeys(out))

    # --- start/stop ------------------------------------------------------------------
    def start(self, fault: Fault) -> AppliedFault:
        applied = AppliedFault(fault, self.now_s())
        with self.lock:
            self.active[fault.id] = applied
        fam = fault.family
        try:
            if fam == "kill":
                applied.brokers = self._resolve(fault.targets)
                for b in applied.brokers:
                    self.cluster.kill(b)
            elif fam == "pause":
                applied.brokers = self._resolve(fault.targets)
                for b in applied.brokers:
                    self.cluster.pause(b)
            elif fam == "partition":
                self._partition(fault, applied)
            elif fam == "latency":
                self._latency(fault, applied)
            elif fam == "reset":
                applied.brokers = self._resolve(fault.targets)
                b = applied.brokers[0]
                flows = self._broker_flows(b, include_clients=True)
                self._add_toxics(applied, flows, "reset_peer", {"timeout": int(fault.param("timeout_ms", 0))})
            elif fam == "rolling":
                self._rolling(fault, applied)
            elif fam == "power-loss":
                applied.brokers = self._resolve(fault.targets)
                stats = self.cluster.power_cut(applied.brokers, self.rng.randrange(1 << 30))
                applied.note = "; ".join(
                    f"broker {b}: still starting, untouched" if s.get("not_booted") else
                    f"broker {b}: {s['lost_bytes']} unsynced bytes lost, {s['torn_files']} torn tails, "
                    f"{s['wal_bytes_cut']} RocksDB WAL bytes cut" for b, s in sorted(stats.items()))
            elif fam == "disk-full":
                applied.brokers = self._resolve(fault.targets)
                applied.note = self.cluster.fill_log_dir(applied.brokers[0])
            elif fam == "clock":
                applied.brokers = self._resolve(fault.targets)
                offset_ms = int(fault.param("offset_ms", 0))
                for b in applied.brokers:
                    self.cluster.set_clock_offset(b, offset_ms)
                applied.note = f"wall clock stepped {offset_ms / 60_000:+g} min"
            elif fam in self.hooks:
                applied.note = self.hooks[fam](fault, True)
            else:
                applied.note = "no hook for this family in this workload; skipped"
        except Exception as exc:
            log.warning("starting %s failed: %s", fault.describe(), exc)
            applied.note = f"start failed: {exc}"
        log.info("nemesis start %s %s", fault.describe(), list(applied.brokers))
        return applied

    def stop(self, fault: Fault) -> None:
        with self.lock:
            applied = self.active.pop(fault.id, None)
        if applied is None:
            return
        fam = fault.family
        try:
            if fam in ("kill", "power-loss"):
                for b in applied.brokers:
                    if not self._killed_by_other(b):
                        self.cluster.start_broker(b)
            elif fam == "pause":
                for b in applied.brokers:
                    if not self._paused_by_other(b):
                        self.cluster.resume(b)
            elif fam == "rolling":
                self._rolls.pop(fault.id, None)  # an unfinished roll stops here (heal_all starts the rest)
            elif fam == "disk-full":
                self.cluster.free_log_dir(applied.brokers[0])
            elif fam in ("partition", "latency", "reset"):
                for proxy, name in applied.toxics:
                    self.cluster.api.remove_toxic(proxy, name)
            elif fam == "clock":
                for b in applied.brokers:
                    if not self._clock_stepped_by_other(b):
                        self.cluster.set_clock_offset(b, 0)  # the step back
            elif fam in self.hooks:
                self.hooks[fam](fault, False)
        except Exception as exc:
            log.warning("stopping %s failed: %s", fault.describe(), exc)
            applied.note += f" stop failed: {exc}"
        applied.stopped_s = self.now_s()
        with self.lock:
            self.done.append(applied)
        log.info("nemesis stop %s", fault.describe())

    def _killed_by_other(self, broker_id: int) -> bool:
        with self.lock:
            return any(a.fault.family in ("kill", "power-loss") and broker_id in a.brokers for a in self.active.values())

    def _clock_stepped_by_other(self, broker_id: int) -> bool:
        with self.lock:
            return any(a.fault.family == "clock" and broker_id in a.brokers for a in self.active.values())

    def _paused_by_other(self, broker_id: int) -> bool:
        with self.lock:
            return any(a.fault.family == "pause" and broker_id in a.brokers for a in self.active.values())

    def heal_all(self, ready_timeout_s: float = 60.0) -> None:
        """Stop every active fault, then make sure every broker runs, unpaused, on a clean network."""
        with self.lock:
            active = list(self.active.values())
        for applied in active:
            self.stop(applied.fault)
        try:
            self.cluster.heal_network()
        except Exception as exc:
            log.warning("network heal failed: %s", exc)
        for b in self.cluster.broker_ids:
            if self.cluster.paused(b):
                self.cluster.resume(b)
            if not self.cluster.alive(b):
                self.cluster.start_broker(b)
        self.cluster.wait_ready(timeout_s=ready_timeout_s)

    # --- network helpers -----------------------------------------------------------------
    def _broker_flows(self, b: int, include_clients: bool, kinds: Sequence[str] = ("client", "rpc", "raft"),
                      ) -> list[tuple[str, str]]:
        others = [o for o in self.cluster.broker_ids if o != b] + ([0] if include_clients else [])
        flows: list[tuple[str, str]] = []
        for o in others:
            flows += self.cluster.flows(b, o, kinds) + self.cluster.flows(o, b, kinds)
        return flows

    def _add_toxics(self, applied: AppliedFault, flows: Sequence[tuple[str, str]], type: str,
                    attributes: dict[str, int]) -> None:
        for proxy, stream in dict.fromkeys(flows):
            name = f"f{applied.fault.id}-{type}-{stream}"
            self.cluster.api.add_toxic(proxy, name, type, stream, attributes)
            applied.toxics.append((proxy, name))

    def _partition(self, fault: Fault, applied: AppliedFault) -> None:
        blackhole = {"timeout": 0}  # hold the data: a silent partition
        kind = fault.kind
        ids = self.cluster.broker_ids
        if kind == "one-way":
            src, dst = int(fault.targets[0]), int(fault.targets[1])
            applied.brokers = (src, dst)
            self._add_toxics(applied, self.cluster.flows(src, dst), "timeout", blackhole)
            return
        if kind == "split":
            minority = self._resolve(fault.targets)
            applied.brokers = minority
            flows = []
            for a in minority:
                for b in ids:
                    if b not in minority:
                        flows += self.cluster.flows(a, b) + self.cluster.flows(b, a)
            self._add_toxics(applied, flows, "timeout", blackhole)
            return
        applied.brokers = self._resolve(fault.targets)
        b = applied.brokers[0]
        if kind == "clients-one":
            flows = self.cluster.flows(0, b) + self.cluster.flows(b, 0)
        else:
            flows = self._broker_flows(b, include_clients=(kind == "isolate-full"))
        self._add_toxics(applied, flows, "timeout", blackhole)

    def _latency(self, fault: Fault, applied: AppliedFault) -> None:
        latency = int(fault.param("latency_ms", 50))
        attrs = {"latency": latency, "jitter": latency * int(fault.param("jitter_pct", 0)) // 100}
        ids = self.cluster.broker_ids
        if fault.kind == "one":
            applied.brokers = self._resolve(fault.targets)
            flows = self._broker_flows(applied.brokers[0], include_clients=True)
        elif fault.kind == "clients":
            flows = [f for b in ids for f in self.cluster.flows(0, b) + self.cluster.flows(b, 0)]
        else:
            flows = [f for a in [0, *ids] for b in ids if a != b for f in self.cluster.flows(a, b)]
        self._add_toxics(applied, flows, "latency", attrs)

    def _rolling(self, fault: Fault, applied: AppliedFault) -> None:
        order = list(self.cluster.broker_ids)
        self.rng.shuffle(order)
        applied.brokers = tuple(order)
        self._rolls[fault.id] = _Roll(applied, order)
        self.tick()

    def tick(self) -> None:
        """Advance rolling restarts (one broker at a time; never blocks on readiness)."""
        for fault_id, roll in list(self._rolls.items()):
            if self._step_roll(roll):
                del self._rolls[fault_id]

    def _step_roll(self, roll: _Roll) -> bool:
        while roll.index < len(roll.order):
            b = roll.order[roll.index]
            if not roll.waiting:
                if not self.cluster.alive(b) or self.cluster.paused(b):
                    roll.index += 1  # another fault holds it
                    continue
                if roll.applied.fault.kind == "hard":
                    self.cluster.kill(b)
                else:
                    self.cluster.terminate(b)
                self.cluster.start_broker(b)
                roll.waiting, roll.since = True, self.clock()
                return False
            if not self.cluster.is_ready(b) and self.clock() - roll.since < self.RESTART_READY_S:
                return False
            if not self.cluster.is_ready(b):  # e.g. a partition holds it: go on, the final heal waits
                roll.applied.note += f" broker {b} not ready after {self.RESTART_READY_S:.0f} s;"
            roll.index += 1
            roll.waiting = False
        return True


@dataclasses.dataclass(slots=True)
class _Roll:
    applied: AppliedFault
    order: list[int]
    index: int = 0
    waiting: bool = False
    since: float = 0.0


def describe_schedule(schedule: Schedule) -> str:
    lines = [f"seed {schedule.seed}: {len(schedule.windows)} fault(s) over {schedule.duration_s:.0f} s"]
    for w in schedule.windows:
        lines.append(f"  {w.start_s:7.1f}-{w.stop_s:7.1f} s  {w.fault.describe()}")
    return "\n".join(lines)
