"""Fixtures for cluster tests: fake in-process brokers, and real broker processes (harness.py).

`real_cluster` is a started, ready 3-broker cluster (a `tests.cluster.harness.Cluster`);
a failed test gets every broker's log tail in its report. Other test folders use the
harness the same way from their own conftest.py:

    import pathlib, sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from tests.cluster.harness import Cluster, cluster_fixture  # noqa: E402
    real_cluster = cluster_fixture(3)
shared_cluster = cluster_fixture(3, scope="module")  # one cluster for a whole test module
    # and copy pytest_runtest_makereport below to get broker logs on failure
"""

from __future__ import annotations

import pathlib
import sys

import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.cluster.fake_broker import FakeBroker, FakeClusterState, start_fake_cluster  # noqa: E402
from tests.cluster.harness import attach_cluster_logs, cluster_fixture  # noqa: E402

real_cluster = cluster_fixture(3)
shared_cluster = cluster_fixture(3, scope="module")  # one cluster for a whole test module
kafka_cluster = cluster_fixture(3, scope="module", kafka=True)  # brokers with Kafka-protocol listeners too



@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    attach_cluster_logs(item, report)
    return report


@pytest.fixture
def fake_cluster():
    """Three in-process fake brokers sharing one state; yields (state, brokers, bootstrap)."""
    state, brokers = start_fake_cluster(3)
    try:
        yield state, brokers, brokers[0].address
    finally:
        for broker in brokers:
            broker.stop()


__all__ = ["FakeBroker", "FakeClusterState", "fake_cluster", "real_cluster", "shared_cluster"]
