"""`semel cluster status`: the one screen an operator reads first.

Built from existing RPCs only: DescribeCluster (asked of every registered broker too, so an
unreachable broker and each broker's metadata lag show), DescribeTopics (leaders, ISR,
min.insync.replicas), the hanging-transaction scan of `semel txn find-hanging`, and the
groups' committed-offset lag of `semel group describe`. `assess` is a pure function over
what was gathered, so tests drive it directly.

Exit codes: 0 nothing needs attention, 1 something does (each reason printed), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

METADATA_LAG_MAX_DEFAULT = 10  # metadata versions a broker may trail the newest one
GROUP_LAG_MAX_DEFAULT = 100_000  # records a group may trail before it needs attention


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerStatus:
    broker_id: int
    address: str
    fenced: bool
    reachable: bool
    metadata_version: int  # -1: unreachable


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionStatus:
    topic: str
    partition: int
    leader: int
    replicas: int
    isr: int
    min_isr: int


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    controller_id: int
    quorum_leader: str
    quorum_voters: tuple[str, ...]
    brokers: tuple[BrokerStatus, ...]
    partitions: tuple[PartitionStatus, ...]
    hanging: tuple[str, ...]  # one line per finding
    group_lag: dict[str, int]  # group -> summed lag (known partitions)
    unchecked: tuple[str, ...] = ()  # parts that could not be read (why)


def assess(s: Snapshot, metadata_lag_max: int = METADATA_LAG_MAX_DEFAULT,
           group_lag_max: int = GROUP_LAG_MAX_DEFAULT) -> list[str]:
    """Every reason the cluster needs attention (empty: healthy)."""
    reasons = []
    if not s.quorum_leader:
        reasons.append("the metadata quorum has no leader")
    newest = max((b.metadata_version for b in s.brokers), default=-1)
    for b in s.brokers:
        if not b.reachable:
            reasons.append(f"broker {b.broker_id} ({b.address}) does not answer"
                           + (" and is fenced" if b.fenced else ""))
        elif b.fenced:
            reasons.append(f"broker {b.broker_id} ({b.address}) is fenced")
        elif newest - b.metadata_version > metadata_lag_max:
            reasons.append(f"broker {b.broker_id} trails the metadata by {newest - b.metadata_version} versions")
    offline = [p for p in s.partitions if p.leader < 0]
    under_min = [p for p in s.partitions if p.leader >= 0 and p.isr < p.min_isr]
    under = [p for p in s.partitions if p.leader >= 0 and p.isr < p.replicas]
    for what, parts in (("offline (no leader)", offline), ("under min.insync.replicas", under_min),
                        ("under-replicated", under)):
        if parts:
            reasons.append(f"{len(parts)} partition(s) {what}: {_names(parts)}")
    if s.hanging:
        reasons.append(f"{len(s.hanging)} hanging transaction(s)")
    for group, lag in sorted(s.group_lag.items()):
        if lag > group_lag_max:
            reasons.append(f"group {group} lags {lag} records (> {group_lag_max})")
    reasons += [f"could not check {u}" for u in s.unchecked]
    return reasons


def _names(parts: list[PartitionStatus], limit: int = 5) -> str:
    shown = ", ".join(f"{p.topic}-{p.partition}" for p in parts[:limit])
    return shown + (f" and {len(parts) - limit} more" if len(parts) > limit else "")


# --- gathering (the shell) ------------------------------------------------------------------------
def gather(bootstrap: str | None, timeout_ms: int) -> Snapshot:
    from semel.client import Admin

    unchecked: list[str] = []
    with Admin(bootstrap, request_timeout_ms=timeout_ms, connect_timeout_ms=min(5_000, timeout_ms)) as admin:
        cluster = admin.describe_cluster()
        topics = admin.describe_topics(include_internal=True)
    brokers = tuple(_broker_status(b, timeout_ms) for b in cluster.brokers)
    partitions = tuple(
        PartitionStatus(t.name, p.partition, p.leader_id, len(p.replicas), len(p.isr),
                        int(t.configs.get("min_insync_replicas", "1") or 1))
        for t in topics for p in t.partitions)
    reachable = ",".join(b.address for b in brokers if b.reachable) or bootstrap
    hanging: tuple[str, ...] = ()
    try:
        hanging = _hanging(reachable, timeout_ms)
    except Exception as exc:  # reported, not fatal: the rest of the screen still helps
        unchecked.append(f"transactions ({exc})")
    group_lag: dict[str, int] = {}
    try:
        group_lag = _group_lag(reachable, timeout_ms)
    except Exception as exc:
        unchecked.append(f"consumer groups ({exc})")
    return Snapshot(cluster.controller_id, cluster.quorum_leader, tuple(cluster.quorum_voters), brokers, partitions,
                    hanging, group_lag, tuple(unchecked))


def _broker_status(b: Any, timeout_ms: int) -> BrokerStatus:
    from semel.client import Admin

    try:  # this broker's own image: answers only if it is up
        with Admin(b.address, request_timeout_ms=min(timeout_ms, 3_000), connect_timeout_ms=min(timeout_ms, 2_000)) as a:
            version = a.describe_cluster().metadata_version
    except Exception:
        return BrokerStatus(b.broker_id, b.address, b.fenced, False, -1)
    return BrokerStatus(b.broker_id, b.address, b.fenced, True, version)


def _hanging(bootstrap: str | None, timeout_ms: int) -> tuple[str, ...]:
    from semel.cli.txn_commands import ClusterView, scan_hanging

    view = ClusterView(bootstrap, timeout_ms / 1000)
    try:
        return tuple(f"{f.txn.topic}-{f.txn.partition} producer {f.txn.producer_id}: {f.reason}"
                     for f in scan_hanging(view))
    finally:
        view.close()


def _group_lag(bootstrap: str | None, timeout_ms: int) -> dict[str, int]:
    from semel.client.group import GroupAdmin

    out: dict[str, int] = {}
    with GroupAdmin(bootstrap, request_timeout_ms=timeout_ms) as admin:
        for g in admin.list_groups():
            described = admin.describe_group(g.group_id, include_offsets=True)
            out[g.group_id] = sum(o.lag for o in described.offsets if o.lag > 0)
    return out


# --- the command -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--max-group-lag", type=int, default=GROUP_LAG_MAX_DEFAULT,
                   help=f"records a group may lag before it needs attention (default {GROUP_LAG_MAX_DEFAULT})")
    p.add_argument("--max-metadata-lag", type=int, default=METADATA_LAG_MAX_DEFAULT,
                   help=f"metadata versions a broker may trail (default {METADATA_LAG_MAX_DEFAULT})")


def run(args: argparse.Namespace) -> int:
    s = gather(args.bootstrap, args.timeout_ms)
    reasons = assess(s, args.max_metadata_lag, args.max_group_lag)
    if args.json:
        doc = dataclasses.asdict(s)
        doc["healthy"], doc["attention"] = not reasons, reasons
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 1 if reasons else 0
    print(_screen(s))
    if reasons:
        print("\nNEEDS ATTENTION:")
        for r in reasons:
            print(f"  - {r}")
        return 1
    print("\nhealthy: nothing needs attention")
    return 0


def _screen(s: Snapshot) -> str:
    newest = max((b.metadata_version for b in s.brokers), default=-1)
    lines = [f"quorum leader: {s.quorum_leader or 'NONE'}   controller: {s.controller_id}   "
             f"voters: {', '.join(s.quorum_voters) or '-'}", "", "BROKER  ADDRESS                STATE               METADATA-LAG"]
    for b in s.brokers:
        state = ",".join(([] if b.reachable else ["unreachable"]) + (["fenced"] if b.fenced else [])) or "up"
        lag = str(newest - b.metadata_version) if b.reachable else "?"
        lines.append(f"{b.broker_id:<7} {b.address:<22} {state:<19} {lag}")
    offline = sum(1 for p in s.partitions if p.leader < 0)
    under = sum(1 for p in s.partitions if p.leader >= 0 and p.isr < p.replicas)
    under_min = sum(1 for p in s.partitions if p.leader >= 0 and p.isr < p.min_isr)
    lines += ["", f"partitions: {len(s.partitions)}   offline: {offline}   under-replicated: {under}   "
                  f"under-min-isr: {under_min}",
              f"hanging transactions: {len(s.hanging)}"]
    lines += [f"  {h}" for h in s.hanging]
    lagging = {g: lag for g, lag in sorted(s.group_lag.items()) if lag > 0}
    lines.append(f"groups: {len(s.group_lag)}   with lag: {len(lagging)}")
    lines += [f"  {g}: {lag} records" for g, lag in lagging.items()]
    if s.unchecked:
        lines += ["", *(f"could not check {u}" for u in s.unchecked)]
    return "\n".join(lines)

