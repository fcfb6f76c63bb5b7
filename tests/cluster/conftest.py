"""Fixtures for cluster tests: fake in-process brokers and (via harness.py) real broker processes.

Other test folders can use the real-cluster harness the same way:

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from tests.cluster.harness import Cluster, cluster_fixture  # noqa: E402
"""

from __future__ import annotations

import pathlib
import sys

import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.cluster.fake_broker import FakeBroker, FakeClusterState, start_fake_cluster  # noqa: E402


@pytest.fixture
def fake_cluster():
    """Three in-process fake brokers sharing one state; yields (state, brokers, bootstrap)."""
    state, brokers = start_fake_cluster(3)
    try:
        yield state, brokers, brokers[0].address
    finally:
        for broker in brokers:
            broker.stop()


__all__ = ["FakeBroker", "FakeClusterState", "fake_cluster"]
