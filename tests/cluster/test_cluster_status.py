"""`semel cluster status` against a real 3-broker cluster (the CLI as a subprocess), and its
pure `assess` over hand-made snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from semel.cli.status_commands import BrokerStatus, PartitionStatus, Snapshot, assess

from tests.cluster.harness import Cluster


def status(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SEMEL_BOOTSTRAP=bootstrap)
    return subprocess.run([sys.executable, "-m", "semel.cli", "cluster", "status", "--timeout-ms", "10000", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_healthy_then_a_killed_broker_needs_attention(real_cluster: Cluster) -> None:
    c = real_cluster
    c.create_topic("st", 3, 3)
    healthy = status(c.bootstrap)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "healthy" in healthy.stdout and "quorum leader:" in healthy.stdout
    doc = json.loads(status(c.bootstrap, "--json").stdout)
    assert doc["healthy"] is True and len(doc["brokers"]) == 3
    c.kill(3)
    bootstrap = ",".join(c.address(i) for i in (1, 2))
    sick = status(bootstrap)
    assert sick.returncode == 1, sick.stdout + sick.stderr
    assert "NEEDS ATTENTION" in sick.stdout
    assert "broker 3" in sick.stdout  # unreachable, then fenced by the controller
    doc = json.loads(status(bootstrap, "--json").stdout)
    assert doc["healthy"] is False and any("broker 3" in r for r in doc["attention"])


def snapshot(**changes: object) -> Snapshot:
    base = Snapshot(1, "127.0.0.1:19092", ("1@a",), (BrokerStatus(1, "a:1", False, True, 10),),
                    (PartitionStatus("t", 0, 1, 3, 3, 2),), (), {"g": 5})
    return Snapshot(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **changes})  # type: ignore[arg-type]


def test_assess_reasons() -> None:
    assert assess(snapshot()) == []
    assert assess(snapshot(quorum_leader="")) == ["the metadata quorum has no leader"]
    assert assess(snapshot(partitions=(PartitionStatus("t", 0, -1, 3, 0, 2),))) == [
        "1 partition(s) offline (no leader): t-0"]
    assert assess(snapshot(partitions=(PartitionStatus("t", 0, 1, 3, 1, 2),))) == [
        "1 partition(s) under min.insync.replicas: t-0", "1 partition(s) under-replicated: t-0"]
    assert assess(snapshot(group_lag={"g": 11}), group_lag_max=10) == ["group g lags 11 records (> 10)"]
    lagging = (BrokerStatus(1, "a:1", False, True, 100), BrokerStatus(2, "b:1", False, True, 50))
    assert assess(snapshot(brokers=lagging)) == ["broker 2 trails the metadata by 50 versions"]
    assert assess(snapshot(hanging=("t-0 producer 7: unknown-to-coordinator",))) == ["1 hanging transaction(s)"]


def test_assess_brokers_down_or_fenced() -> None:
    down = (BrokerStatus(1, "a:1", False, True, 10), BrokerStatus(3, "c:1", True, False, -1))
    assert assess(snapshot(brokers=down)) == ["broker 3 (c:1) does not answer and is fenced"]
    fenced = (BrokerStatus(1, "a:1", False, True, 10), BrokerStatus(2, "b:1", True, True, 10))
    assert assess(snapshot(brokers=fenced)) == ["broker 2 (b:1) is fenced"]
