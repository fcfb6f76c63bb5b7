"""After the heal: does every broker hold the same metadata image?

The metadata quorum (pysyncobj) applies each committed command once and never rolls its
state machine back. If a node ever applied an entry that the quorum later replaced, that
broker's image would differ from the others' *at the same version* for good. pysyncobj 0.3.17
did that (it truncated matching entries, logging "truncating already-applied log entries");
the quorum now follows Raft's rule there (docs/design.md, "AppendEntries on a follower") and
refuses a conflict below its applied index; this check stays as the end-to-end guard. Versions are compared with their content: brokers
that answer with the same `metadata_version` must answer with the same brokers, topics,
leaders, leader epochs, replicas and ISRs. Different versions only mean "not caught up yet";
the check waits for one version, then compares.

Verdict: `agreed` (one version, one content), `diverged` (one version, two contents: an
anomaly), or `unsettled` (no common version within the time limit: reported, not an anomaly:
a busy cluster may keep changing ISRs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from semel.v1 import broker_pb2, broker_pb2_grpc

Snapshot = tuple[int, Any]  # (metadata_version, comparable content)


def content(response: broker_pb2.MetadataResponse) -> Any:
    """The comparable part of a metadata answer (order-independent)."""
    brokers = tuple(sorted((b.broker_id, b.host, b.port, b.fenced) for b in response.brokers))
    topics = tuple(sorted(
        (t.name, t.topic_id, t.error_code, tuple(sorted(
            (p.partition, p.leader_id, p.leader_epoch, tuple(p.replicas), tuple(sorted(p.isr)), p.partition_epoch)
            for p in t.partitions)))
        for t in response.topics))
    return brokers, topics


def compare(snapshots: dict[str, Snapshot | None]) -> tuple[str, list[dict[str, Any]]]:
    """-> ("agreed" | "diverged" | "pending", differences). Pure."""
    answered = {addr: s for addr, s in snapshots.items() if s is not None}
    if len(answered) < len(snapshots) or len({v for v, _ in answered.values()}) != 1:
        return "pending", []
    (first_addr, (version, first)), *rest = sorted(answered.items())
    diffs = []
    for addr, (_, other) in rest:
        if other != first:
            diffs.append({"version": version, "brokers": [first_addr, addr], "first": _describe(first, other),
                          "second": _describe(other, first)})
    return ("diverged" if diffs else "agreed"), diffs


def _describe(mine: Any, theirs: Any) -> list[str]:
    """What `mine` has that `theirs` does not (short, for the report)."""
    b1, t1 = mine
    b2, t2 = theirs
    out = [f"broker {b}" for b in b1 if b not in b2]
    theirs_by_name = {t[0]: t for t in t2}
    for t in t1:
        other = theirs_by_name.get(t[0])
        if other is None:
            out.append(f"topic {t[0]}")
        elif other != t:
            out.extend(f"{t[0]}-{p[0]} leader {p[1]} epoch {p[2]} isr {list(p[4])}" for p in t[3] if p not in other[3])
    return out[:10]


def fetch_snapshot(address: str, timeout_s: float = 2.0) -> Snapshot | None:
    try:
        with grpc.insecure_channel(address) as channel:
            r = broker_pb2_grpc.BrokerStub(channel).Metadata(broker_pb2.MetadataRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return None
    return r.metadata_version, content(r)


def check_agreement(addresses: Sequence[str], timeout_s: float = 30.0,
                    fetch: Callable[[str], Snapshot | None] = fetch_snapshot) -> dict[str, Any]:
    """Poll every broker until they answer at one version; then compare the contents."""
    deadline = time.monotonic() + timeout_s
    versions: dict[str, int | None] = {}
    while True:
        snapshots = {addr: fetch(addr) for addr in addresses}
        versions = {addr: (s[0] if s else None) for addr, s in snapshots.items()}
        verdict, diffs = compare(snapshots)
        if verdict != "pending":
            return {"result": verdict, "versions": versions, "differences": diffs}
        if time.monotonic() >= deadline:
            return {"result": "unsettled", "versions": versions, "differences": []}
        time.sleep(0.2)
