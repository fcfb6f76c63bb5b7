"""Prometheus metrics scraped from a real broker process (`--metrics-listen`) after produce,
fetch, a committed transaction and a group offset commit."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from semel.client import Consumer

from tests.cluster.harness import Cluster, free_ports

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, int]]:
    (port,) = free_ports(1)
    cluster = Cluster(tmp_path_factory.mktemp("metrics"), brokers=1, start=False,
                      extra_args=["--metrics-listen", f"127.0.0.1:{port}", "--internal-partitions", "1"])
    try:
        cluster.start()
        yield cluster, port
    finally:
        cluster.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_scrape_after_produce_fetch_transaction_and_commit(metered: tuple[Cluster, int]) -> None:
    c, port = metered
    c.create_topic("m-plain", 1, 1)
    with c.producer(linger_ms=1) as producer:
        for i in range(5):
            producer.send("m-plain", b"v%d" % i, partition=0).result(20)
    assert len(c.read_all("m-plain")) == 5
    c.create_topic("m-txn", 1, 1)
    with c.producer(transactional_id="m-txn-id", linger_ms=1) as producer:
        producer.init_transactions(timeout_s=30)
        producer.begin_transaction()
        producer.send("m-txn", b"t0", partition=0).result(20)
        producer.send("m-txn", b"t1", partition=0).result(20)
        producer.commit_transaction()
    with Consumer(c.bootstrap, group_id="m-group") as consumer:
        consumer.commit({("m-plain", 0): 2}, timeout_ms=20_000)

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        s = scrape(port)  # the commit marker lands after commit_transaction() returns
        assert value(s, "semel_txn_commits_total") == 1
        assert value(s, "semel_quorum_apply_lag_entries") == 0
        return s

    s = c_wait(settled)
    assert value(s, "semel_topic_records_in_total", topic="m-plain") == 5
    assert value(s, "semel_topic_bytes_in_total", topic="m-plain") >= 5 * 2
    assert value(s, "semel_topic_records_out_total", topic="m-plain") >= 5
    assert value(s, "semel_topic_bytes_out_total", topic="m-plain") >= 5 * 2
    assert value(s, "semel_topic_records_in_total", topic="m-txn") == 2
    produce = "/semel.v1.Broker/Produce"
    assert value(s, "semel_rpc_requests_total", method=produce, code="OK") >= 5
    assert value(s, "semel_rpc_duration_seconds_count", method=produce) >= 5
    assert value(s, "semel_rpc_duration_seconds_sum", method=produce) > 0
    # 5 records; the transaction: 2 records and the commit marker
    assert value(s, "semel_partition_log_end_offset", topic="m-plain", partition="0") == 5
    assert value(s, "semel_partition_high_watermark", topic="m-txn", partition="0") == 3
    assert value(s, "semel_partition_last_stable_offset", topic="m-txn", partition="0") == 3
    assert value(s, "semel_partition_lso_lag_records", topic="m-txn", partition="0") == 0
    assert value(s, "semel_txn_aborts_total") == 0
    assert value(s, "semel_txn_open") == 0
    assert value(s, "semel_consumer_group_lag_records", group="m-group", topic="m-plain", partition="0") == 3
    assert value(s, "semel_consumer_group_lag_sum_records", group="m-group") == 3
    assert value(s, "semel_partitions_under_replicated") == 0
    assert value(s, "semel_partitions_offline") == 0
    assert value(s, "semel_leader_elections_total") >= 2
    assert value(s, "semel_broker_up") == 1
    assert value(s, "semel_quorum_role", role="leader") == 1
    assert value(s, "semel_quorum_term") >= 1
    assert value(s, "semel_quorum_commit_index") >= value(s, "semel_quorum_applied_index") > 0
    assert value(s, "semel_event_loop_lag_max_seconds") >= 0
    (size,) = [v for (name, _), v in s.items() if name == "semel_log_dir_size_bytes"]
    assert size > 0
    assert value(s, "semel_metrics_series_omitted", family="partition") == 0


def test_failed_calls_are_counted_by_status_code(metered: tuple[Cluster, int]) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    c, port = metered
    with grpc.insecure_channel(c.bootstrap) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError):  # an unknown method: answered, never labelled
            channel.unary_unary("/semel.v1.Made/Up")(b"", timeout=10)
    s = scrape(port)
    assert value(s, "semel_rpc_requests_total", method="/grpc.health.v1.Health/Check", code="NOT_FOUND") >= 1
    assert not any(dict(labels).get("method") == "/semel.v1.Made/Up" for _, labels in s)


def test_unknown_path_is_404(metered: tuple[Cluster, int]) -> None:
    _, port = metered
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)
    assert info.value.code == 404


def c_wait(probe, timeout_s: float = 20.0):  # noqa: ANN001, ANN201
    """Retry `probe` (which asserts) until it passes or the time is up; re-raises the last failure."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return probe()
        except (AssertionError, KeyError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
