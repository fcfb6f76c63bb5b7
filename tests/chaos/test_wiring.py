"""The cluster under test: every client, broker-to-broker and Raft link really crosses its proxy.

Each test cuts or slows only one kind of link and checks the effect that only that link
can cause: Raft links (the controller moves), heartbeat links (a broker is fenced while Raft
is intact), replication links (acks=all waits for the slowed follower), client links.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from semel.chaos.wiring import CLIENTS, ChaosCluster, wait_until
from semel.client import Admin, Producer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosCluster]:
    cluster = ChaosCluster(tmp_path_factory.mktemp("chaos-wiring"), brokers=3,
                           extra_args=("--replica-lag-time-max-ms", "2000"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def describe(cluster: ChaosCluster, broker_id: int | None = None):  # noqa: ANN201
    """DescribeCluster as one broker (default: any) sees it, through its real port."""
    address = cluster.direct_bootstrap if broker_id is None else cluster.specs[broker_id - 1].address
    with Admin(address, request_timeout_ms=2000) as admin:
        return admin.describe_cluster(timeout_ms=2000)


def seen_by(cluster: ChaosCluster, broker_ids: list[int], predicate) -> bool:  # noqa: ANN001
    return all(predicate(describe(cluster, b)) for b in broker_ids)


def cut(cluster: ChaosCluster, flows: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    assert cluster.api is not None
    done = []
    for proxy, stream in dict.fromkeys(flows):
        cluster.api.add_toxic(proxy, f"{name}-{stream}", "timeout", stream, {"timeout": 0})
        done.append((proxy, f"{name}-{stream}"))
    return done


def heal(cluster: ChaosCluster) -> None:
    cluster.heal_network()


def test_clients_see_only_the_client_proxies(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    proxies = set(c.bootstrap.split(","))
    info = describe(c)
    assert {b.address for b in info.brokers} == proxies  # advertised = client proxies
    c.create_topic("w", 1, 3)
    with Producer(c.bootstrap) as producer:
        assert producer.send("w", b"x", partition=0).result(20).offset == 0


def test_raft_links_pass_through_their_proxies(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    controller = describe(c).controller_id
    others = [b for b in c.broker_ids if b != controller]
    flows = [f for o in others for f in c.flows(controller, o, ("raft",)) + c.flows(o, controller, ("raft",))]
    assert flows
    cut(c, flows, "raft-cut")
    try:
        # only the Raft links are cut: the others elect a new leader, hence a new controller
        assert wait_until(lambda: seen_by(c, others, lambda d: d.controller_id in others), 15), \
            "controller did not move"
        # the old controller, cut from Raft, no longer sees a leader
        assert wait_until(lambda: describe(c, controller).controller_id != controller, 15)
    finally:
        heal(c)
    assert wait_until(lambda: seen_by(c, c.broker_ids, lambda d: not any(b.fenced for b in d.brokers)), 20)


def test_heartbeats_pass_through_the_rpc_proxies(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    controller = describe(c).controller_id
    victim = next(b for b in c.broker_ids if b != controller)
    # cut only the victim's outgoing gRPC (its heartbeats, to whichever voter is controller: under
    # load the controller may move during the test); Raft and everything else stay up
    others = [b for b in c.broker_ids if b != victim]
    cut(c, [f for o in others for f in c.flows(victim, o, ("rpc",))], "hb-cut")
    try:
        assert wait_until(lambda: any(b.broker_id == victim and b.fenced
                                      for b in describe(c, next(iter(others))).brokers), 15)
    finally:
        heal(c)
    assert wait_until(lambda: seen_by(c, c.broker_ids, lambda d: not any(b.fenced for b in d.brokers)), 20)


def test_replication_passes_through_the_rpc_proxies(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    assert c.api is not None
    c.create_topic("r", 1, 3)
    with Producer(c.bootstrap, acks="all") as producer:
        producer.send("r", b"warm", partition=0).result(20)
        names = []
        for a in c.broker_ids:  # 300 ms on every broker-to-broker gRPC link, nothing on clients
            for b in c.broker_ids:
                if a != b:
                    for proxy, stream in c.flows(a, b, ("rpc",)):
                        name = f"slow-{stream}"
                        if (proxy, name) not in names:
                            c.api.add_toxic(proxy, name, "latency", stream, {"latency": 300, "jitter": 0})
                            names.append((proxy, name))
        try:
            started = time.monotonic()
            producer.send("r", b"slow", partition=0).result(20)
            elapsed = time.monotonic() - started
        finally:
            heal(c)
        assert elapsed >= 0.3, f"acks=all took {elapsed:.3f} s: replication bypassed the proxies"
        started = time.monotonic()
        producer.send("r", b"fast", partition=0).result(20)
        assert time.monotonic() - started < 0.3 + elapsed


def test_client_link_cut_reaches_only_that_broker(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    victim = c.broker_ids[0]
    cut(c, c.flows(CLIENTS, victim) + c.flows(victim, CLIENTS), "client-cut")
    try:
        addr = c.bootstrap.split(",")[0]
        with Admin(addr, request_timeout_ms=1000, connect_timeout_ms=1000) as admin:
            with pytest.raises(Exception):
                admin.describe_cluster(timeout_ms=1000)
        with Admin(",".join(c.bootstrap.split(",")[1:])) as admin:
            assert len(admin.describe_cluster(timeout_ms=5000).brokers) == 3
    finally:
        heal(c)


def test_broker_dial_flags_are_in_the_command_line(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    for spec in c.specs:
        argv = c.broker_argv(spec)
        dial = argv[argv.index("--dial") + 1].split(",")
        assert len(dial) == len(c.specs) - 1
        assert argv[argv.index("--advertised") + 1] == c.listen[f"client-{spec.broker_id}"]
    raft_dialled = sum(len(c.broker_argv(s)[c.broker_argv(s).index("--raft-dial") + 1].split(","))
                       for s in c.specs if "--raft-dial" in c.broker_argv(s))
    assert raft_dialled == 3  # one connection per pair of voters


def test_data_dir_is_used(chaos_cluster: ChaosCluster) -> None:
    assert all(Path(s.data_dir).exists() for s in chaos_cluster.specs)
