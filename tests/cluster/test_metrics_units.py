"""The broker's metric definitions without a broker: cardinality bounds and the name set."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from semel.cluster.broker.metrics import (
    OTHER,
    BrokerMetrics,
    RpcStats,
    TopicLabels,
    bounded,
    exported_metric_names,
)


def test_topic_labels_stop_at_the_bound_and_keep_the_first_topics() -> None:
    labels = TopicLabels(limit=3)
    assert [labels(t) for t in ("a", "b", "c", "d", "e", "a")] == ["a", "b", "c", OTHER, OTHER, "a"]


def test_per_topic_series_are_bounded_on_a_real_registry() -> None:
    m = BrokerMetrics(topic_series_max=10)
    for i in range(500):  # many topics, e.g. created and deleted over and over
        m.produced(f"t{i}", 100, 2)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    topics = {s.labels["topic"] for s in families["semel_topic_records_in"].samples if s.name.endswith("_total")}
    assert len(topics) == 11 and OTHER in topics
    total = sum(s.value for s in families["semel_topic_records_in"].samples if s.name.endswith("_total"))
    assert total == 1000  # nothing lost: the rest is counted under _other
    other = [s.value for s in families["semel_topic_records_in"].samples
             if s.name.endswith("_total") and s.labels["topic"] == OTHER]
    assert other == [490 * 2]


def test_bounded_keeps_the_first_sorted_items_and_counts_the_rest() -> None:
    assert bounded([("b", 1), ("a", 2), ("a", 1)], 2) == ([("a", 1), ("a", 2)], 1)
    assert bounded(["x"], 5) == (["x"], 0)


def test_exported_names_follow_the_conventions() -> None:
    names = exported_metric_names(BrokerMetrics().registry)
    assert {"semel_rpc_requests_total", "semel_rpc_duration_seconds_bucket", "semel_partition_high_watermark",
            "semel_txn_commits_total", "semel_quorum_apply_lag_entries", "semel_event_loop_lag_seconds",
            "semel_log_dir_size_bytes", "semel_consumer_group_lag_records"} <= names
    assert all(n.startswith("semel_") for n in names)
    assert not any(n.endswith("_ms") or "_milliseconds" in n for n in names)  # base units: seconds


def test_rpc_stats_buckets_are_cumulative_and_inclusive() -> None:
    stats = RpcStats()
    for seconds in (0.0005, 0.0007, 0.001, 100.0):
        stats.observe(seconds, "OK")
    stats.observe(0.01, "NOT_FOUND")
    buckets = dict(stats.cumulative())
    assert buckets["0.0005"] == 1 and buckets["0.001"] == 3 and buckets["0.01"] == 4
    assert buckets["30.0"] == 4 and buckets["+Inf"] == 5
    assert stats.codes == {"OK": 4, "NOT_FOUND": 1}
    assert abs(stats.sum_s - 100.0122) < 1e-9


def test_interceptor_keeps_each_handler_kind_working_and_counts_it() -> None:
    """grpc.aio drives a handler by its kind (async generator / coroutine / plain function):
    the interceptor's wrappers must keep that kind, or streams break (replication did)."""
    import asyncio

    import grpc
    from semel.cluster.broker.metrics import RpcMetricsInterceptor

    async def echo_stream(requests, context):  # noqa: ANN001, ANN202
        async for r in requests:
            yield r + b"!"

    async def echo(request, context):  # noqa: ANN001, ANN202
        return request + b"?"

    async def fail(request, context):  # noqa: ANN001, ANN202
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")

    def plain_stream(request, context):  # noqa: ANN001, ANN202
        return iter([request, request])

    async def main() -> BrokerMetrics:
        m = BrokerMetrics()
        server = grpc.aio.server(interceptors=[RpcMetricsInterceptor(m)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.S", {
            "Stream": grpc.stream_stream_rpc_method_handler(echo_stream),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Plain": grpc.unary_stream_rpc_method_handler(plain_stream),
        })])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                got = [r async for r in ch.stream_stream("/t.S/Stream")(iter([b"a", b"b"]))]
                assert got == [b"a!", b"b!"]
                assert await ch.unary_unary("/t.S/Echo")(b"x") == b"x?"
                try:
                    await ch.unary_unary("/t.S/Fail")(b"x")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                else:
                    raise AssertionError("Fail succeeded")
                assert [r async for r in ch.unary_stream("/t.S/Plain")(b"p")] == [b"p", b"p"]
        finally:
            await server.stop(None)
        return m

    m = asyncio.run(main())
    assert m.streams == {"/t.S/Stream": 1, "/t.S/Plain": 1}
    # messages sent are counted on async-generator handlers (every stream the broker serves)
    assert m.stream_messages_sent == {"/t.S/Stream": 2, "/t.S/Plain": 0}
    assert m.rpc["/t.S/Echo"].codes == {"OK": 1}
    assert m.rpc["/t.S/Fail"].codes == {"FAILED_PRECONDITION": 1}


def test_partition_and_group_series_stop_at_their_bounds_and_count_the_rest(tmp_path) -> None:  # noqa: ANN001
    """The scrape-time collector over a stand-in broker with 12 led partitions (one
    under-replicated) and 3 groups: per-partition series stop at the bound, the counts
    still cover every partition, and what was left out is reported."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest
    from semel.cluster.broker.loop_monitor import LoopMonitor
    from semel.cluster.broker.metrics import BrokerStateCollector
    from semel.cluster.broker.replica_manager import Role
    from semel.coordinator.txn_state import TopicPartition

    def partition(topic: str, index: int, isr: tuple[int, ...]) -> SimpleNamespace:
        return SimpleNamespace(topic=topic, partition=index, role=Role.LEADER, isr=isr, min_insync_replicas=1,
                               state=SimpleNamespace(replicas=(1, 2)), high_watermark=10, log_end_offset=12,
                               last_stable_offset=lambda: 7, store=SimpleNamespace(tracked_producers=lambda: index))

    parts = {("t", i): partition("t", i, (1, 2) if i else (1,)) for i in range(12)}
    committed = {f"g{i}": {TopicPartition("t", p): SimpleNamespace(committed_offset=2) for p in range(4)}
                 for i in range(3)}
    shard = SimpleNamespace(offsets=SimpleNamespace(committed=committed))
    broker = SimpleNamespace(
        quorum=None, txn=None, is_broker=True, loop_monitor=LoopMonitor(), clock=None,
        groups=SimpleNamespace(loaded={0: SimpleNamespace(runtime=SimpleNamespace(shard=shard))}),
        rm=SimpleNamespace(partitions=parts, failed={}, active=True, logs_dir=tmp_path,
                           get=lambda topic, p: parts.get((topic, p))))
    registry = CollectorRegistry()
    registry.register(BrokerStateCollector(broker, partition_series_max=5, group_lag_series_max=6,  # type: ignore[arg-type]
                                           groups_max=2))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}

    def samples(name: str) -> list:  # noqa: ANN202
        return families[name].samples

    assert [s.labels["partition"] for s in samples("semel_partition_high_watermark")] == ["0", "1", "2", "3", "4"]
    assert {s.value for s in samples("semel_partition_lso_lag_records")} == {3}
    assert samples("semel_partitions_led")[0].value == 12
    assert samples("semel_partitions_under_replicated")[0].value == 1  # counts cover every partition
    assert samples("semel_partition_lso_lag_max_records")[0].value == 3
    omitted = {s.labels["family"]: s.value for s in samples("semel_metrics_series_omitted")}
    assert omitted == {"partition": 7, "group": 1, "group_lag": 2}
    assert [(s.labels["group"], s.value) for s in samples("semel_consumer_group_lag_sum_records")] == [
        ("g0", 20), ("g1", 20)]  # LSO 7 - committed 2, over 4 partitions
    assert len(samples("semel_consumer_group_lag_records")) == 6
    # producer ids kept by the replicas (never bounded by the series cap: two plain gauges)
    assert samples("semel_producer_ids_tracked")[0].value == sum(range(12))
    assert samples("semel_producer_ids_tracked_max")[0].value == 11


# --- the endpoint's basic auth and its flags -------------------------------------------------
def _head(authorization: str | None) -> bytes:
    lines = ["GET /metrics HTTP/1.1", "Host: x"] + ([f"Authorization: {authorization}"] if authorization else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_basic_auth_accepts_only_the_configured_credential(tmp_path) -> None:
    import base64

    from semel.cluster.broker.metrics import BasicAuth

    (tmp_path / "pw").write_text("s3cret\nignored second line\n")
    auth = BasicAuth.from_file("prometheus", str(tmp_path / "pw"))
    assert auth == BasicAuth("prometheus", "s3cret")

    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert auth.accepts(_head(basic("prometheus:s3cret")))
    assert auth.accepts(_head(basic("prometheus:s3cret")).replace(b"Authorization", b"authorization"))
    for refused in (None, basic("prometheus:wrong"), basic("other:s3cret"), basic("prometheus:s3cret2"),
                    "Bearer s3cret", "Basic !!!not-base64", basic("prometheus")):
        assert not auth.accepts(_head(refused)), refused
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        BasicAuth.from_file("prometheus", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="metrics-password-file"):
        BasicAuth.from_file("prometheus", str(tmp_path / "missing"))


@pytest.mark.parametrize(("flags", "problem"), [
    (["--metrics-user", "prometheus"], "go together"),
    (["--metrics-user", "prometheus", "--metrics-password-file", "pw"], "needs TLS"),
    (["--metrics-user", "a:b", "--metrics-password-file", "pw", "--tls-cert", "c", "--tls-key", "k"], "no ':'"),
])
def test_metrics_basic_auth_flags_are_checked(flags: list[str], problem: str) -> None:
    from semel.cluster.broker.process import BrokerConfig

    config = BrokerConfig(broker_id=1, metrics_listen="127.0.0.1:0",
                          metrics_user=flags[1], metrics_password_file=flags[3] if len(flags) > 3 else "",
                          tls_cert="c" if "--tls-cert" in flags else "", tls_key="k" if "--tls-key" in flags else "")
    with pytest.raises(ValueError, match=problem):
        config.validate()
