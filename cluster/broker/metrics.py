"""Every Prometheus metric a broker exports, defined in this one module.

How it works
------------
Each broker owns a `BrokerMetrics` with its own `CollectorRegistry` (never the process-global
default: tests run several brokers in one process). Two kinds of series live in it:

* **Counted on the path**: RPCs (a gRPC server interceptor: one count and one latency
  observation per call), bytes and records in/out per topic (one increment per produced batch
  / Fetch answer, never per record), ISR shrinks and expands, leader elections. These are
  plain ints (`BrokerMetrics`, `RpcStats`) that `PathCollector` turns into counter and
  histogram families at scrape time: prometheus-client's own Counter takes a lock on every
  increment, several times the cost of an int addition.
* **Read at scrape time** (`BrokerStateCollector`): everything that is already state somewhere
  (offsets, ISR, quorum, open transactions, group lag, loop lag, disk). Reading it when
  Prometheus asks costs nothing on the produce path.

The scrape endpoint (`MetricsServer`) is served from the broker's event loop, so the collector
reads the broker's state on the thread that owns it, without locks; the only disk work (log
directory sizes) runs on the disk executor before the registry is rendered. It leaks topic and
group names and cluster state, so it is guarded like the gRPC port: HTTPS with the broker's
certificate when `--tls-cert` is set, client certificates required with `--tls-client-auth
required`, and HTTP basic auth with `--metrics-user` / `--metrics-password-file` (TLS only).

Cardinality (deploy/README.md, "Metrics"): label values come from bounded sets only: gRPC
method names of registered services, gRPC status codes, topics (at most
`limits.MAX_METRICS_TOPIC_SERIES`, then `topic="_other"`), led partitions (at most
`limits.MAX_METRICS_PARTITION_SERIES` per-partition series), consumer groups (at most
`limits.MAX_METRICS_GROUPS` groups, `limits.MAX_METRICS_GROUP_LAG_SERIES` per-partition lag
series). What is left out is counted in `semel_metrics_series_omitted{family}`; the
cluster-wide counts (under-replicated, offline, ...) always cover every partition.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import dataclasses
import hmac
import inspect
import logging
import math
import os
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from semel import limits

if TYPE_CHECKING:
    from semel.cluster.broker.process import Broker
    from semel.cluster.broker.replica_manager import Partition, Role
    from semel.v1.broker_pb2 import FetchResponse

log = logging.getLogger("semel.metrics")
Family = GaugeMetricFamily | CounterMetricFamily  # the families the scrape-time collector fills

MAX_CACHED_TOPICS = 2 * limits.MAX_METRICS_TOPIC_SERIES  # topic -> counters cache entries (see BrokerMetrics)
UNAUTHORIZED = "401 Unauthorized"
OTHER = "_other"  # the label value that collects everything past a cardinality bound
# Latency buckets (seconds): sub-millisecond local calls up to the longest produce timeout we expect.
RPC_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class TopicLabels:
    """Topic -> label value, with at most `limit` distinct topics; later ones map to `_other`.

    The first `limit` topics seen keep their own series for the life of the process (a
    deleted topic's counters stay: counters must not go backwards), so the bound holds even
    when topics are created and deleted over and over."""

    def __init__(self, limit: int = limits.MAX_METRICS_TOPIC_SERIES) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, topic: str) -> str:
        if topic in self._known:
            return topic
        if len(self._known) < self.limit:
            self._known.add(topic)
            return topic
        return OTHER


K = TypeVar("K")


def bounded(items: Iterable[K], limit: int) -> tuple[list[K], int]:
    """The first `limit` items in sorted order, and how many were left out."""
    ordered = sorted(items)  # type: ignore[type-var]
    return ordered[:limit], max(0, len(ordered) - limit)


class RpcStats:
    """One method's calls: a latency histogram and counts per status code (plain ints: only the
    event loop writes them, the scrape reads them on the same loop)."""

    __slots__ = ("bucket_counts", "sum_s", "codes")

    def __init__(self) -> None:
        self.bucket_counts = [0] * (len(RPC_LATENCY_BUCKETS_S) + 1)  # the last one: +Inf
        self.sum_s = 0.0
        self.codes: dict[str, int] = {}  # bounded by grpc.StatusCode

    def observe(self, seconds: float, code: str) -> None:
        self.bucket_counts[bisect.bisect_left(RPC_LATENCY_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds
        self.codes[code] = self.codes.get(code, 0) + 1

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*RPC_LATENCY_BUCKETS_S, math.inf), self.bucket_counts):
            total += count
            out.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
        return out


class BrokerMetrics:
    """The registry of one broker and the series counted on its request paths.

    The path counters are plain ints in dicts (a dict lookup and two additions per batch or
    call, about 0.1 us) that `PathCollector` turns into counter and histogram families when
    Prometheus scrapes: prometheus-client's own Counter takes a lock on every increment."""

    def __init__(self, topic_series_max: int = limits.MAX_METRICS_TOPIC_SERIES) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.topic_label = TopicLabels(topic_series_max)
        # label -> [bytes, records]; labels bounded by TopicLabels. `_topic_of` caches
        # topic -> its label's list (cleared at MAX_CACHED_TOPICS: made-up names cannot grow it).
        self.topics_in: dict[str, list[int]] = {}
        self.topics_out: dict[str, list[int]] = {}
        self._in_of: dict[str, list[int]] = {}
        self._out_of: dict[str, list[int]] = {}
        self.rpc: dict[str, RpcStats] = {}  # registered unary methods only
        self.streams: dict[str, int] = {}  # registered streaming methods only
        self.stream_messages_sent: dict[str, int] = {}  # registered server-streaming methods only
        self.isr_shrinks = 0
        self.isr_expands = 0
        self.leader_elections = 0
        self._leader_epochs: dict[tuple[str, int], int] = {}  # bounded by hosted partitions
        self.registry.register(PathCollector(self))
        # Until `attach`: the scrape-time families with no samples, so a registry without a
        # broker (tests/deploy, which check the dashboards) still knows every name.
        self._state: Collector = StateFamilies()
        self.registry.register(self._state)

    # --- counted on the paths (one call per batch / answer / request) ------------------------
    def produced(self, topic: str, payload_bytes: int, records: int) -> None:
        counts = self._in_of.get(topic) or self._counts(self._in_of, self.topics_in, topic)
        counts[0] += payload_bytes
        counts[1] += records

    def fetched(self, response: FetchResponse) -> None:
        """A Fetch answer about to be sent (counted once: not the passes of a long poll that
        found too little and parked)."""
        for r in response.results:
            if r.batches:
                counts = self._out_of.get(r.topic) or self._counts(self._out_of, self.topics_out, r.topic)
                counts[0] += sum(len(b.records) for b in r.batches)
                counts[1] += sum(b.record_count for b in r.batches)

    def _counts(self, cache: dict[str, list[int]], by_label: dict[str, list[int]], topic: str) -> list[int]:
        if len(cache) >= MAX_CACHED_TOPICS:
            cache.clear()
        counts = cache[topic] = by_label.setdefault(self.topic_label(topic), [0, 0])
        return counts

    def isr_changed(self, isr_before: Sequence[int], isr_after: Sequence[int]) -> None:
        self.isr_shrinks += len(isr_after) < len(isr_before)
        self.isr_expands += len(isr_after) > len(isr_before)

    def on_role(self, p: Partition, role: Role, leader_epoch: int) -> None:
        """A `ReplicaManager` role listener: counts leaderships taken."""
        from semel.cluster.broker.replica_manager import Role

        key = (p.topic, p.partition)
        if role is Role.LEADER and self._leader_epochs.get(key) != leader_epoch:
            self.leader_elections += 1
            self._leader_epochs[key] = leader_epoch
        elif role is not Role.LEADER:
            self._leader_epochs.pop(key, None)

    def attach(self, broker: Broker) -> BrokerStateCollector:
        """Read `broker`'s state at scrape time from now on."""
        state = BrokerStateCollector(broker)
        self.registry.unregister(self._state)
        self.registry.register(state)
        self._state = state
        return state

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PathCollector(Collector):
    """The counters of `BrokerMetrics`, as families."""

    def __init__(self, m: BrokerMetrics) -> None:
        self.m = m

    def collect(self) -> Iterable[Metric]:
        m = self.m
        requests = CounterMetricFamily("semel_rpc_requests", "gRPC calls handled, by method and final status code",
                                       labels=["method", "code"])
        duration = HistogramMetricFamily("semel_rpc_duration_seconds", "Latency of unary gRPC calls",
                                         labels=["method"])
        for method, stats in sorted(m.rpc.items()):
            for code, count in sorted(stats.codes.items()):
                requests.add_metric([method, code], count)
            duration.add_metric([method], stats.cumulative(), stats.sum_s)
        streams = CounterMetricFamily("semel_rpc_streams_started", "Streaming gRPC calls started", labels=["method"])
        for method, count in sorted(m.streams.items()):
            streams.add_metric([method], count)
        sent = CounterMetricFamily("semel_rpc_stream_messages_sent",
                                   "Messages this broker sent on streaming gRPC calls it serves (async-generator handlers; replication: "
                                   "one per fetch round)", labels=["method"])
        for method, count in sorted(m.stream_messages_sent.items()):
            sent.add_metric([method], count)
        families: list[Metric] = [requests, duration, streams, sent]
        for name, doc, table, index in (
            ("semel_topic_bytes_in", "Record bytes appended by producers, per topic", m.topics_in, 0),
            ("semel_topic_records_in", "Records appended by producers, per topic", m.topics_in, 1),
            ("semel_topic_bytes_out", "Record bytes returned to consumers by Fetch, per topic", m.topics_out, 0),
            ("semel_topic_records_out", "Records returned to consumers by Fetch, per topic", m.topics_out, 1),
        ):
            family = CounterMetricFamily(name, doc, labels=["topic"])
            for label, counts in sorted(table.items()):
                family.add_metric([label], counts[index])
            families.append(family)
        families += [
            CounterMetricFamily("semel_isr_shrinks", "ISR shrinks this broker committed as partition leader",
                                value=m.isr_shrinks),
            CounterMetricFamily("semel_isr_expands", "ISR expansions this broker committed as partition leader",
                                value=m.isr_expands),
            CounterMetricFamily("semel_leader_elections",
                                "Times this broker became the leader of a partition (at a new leader epoch)",
                                value=m.leader_elections),
        ]
        return families


# --- the gRPC interceptor -----------------------------------------------------------------
class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call and times unary ones. Unknown methods are not labelled (a client
    cannot grow the label set by calling made-up names)."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self.m = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._timed(method, handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return _counting_stream_handler(self.m, method, handler)

    def _timed(self, method: str, behavior: Callable[[Any, Any], Any]
               ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        stats = self.m.rpc.get(method)
        if stats is None:
            stats = self.m.rpc[method] = RpcStats()
        clock = time.perf_counter

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = clock()
            code = "UNKNOWN"
            try:
                response = behavior(request, context)
                if inspect.isawaitable(response):  # grpc.aio also takes plain-function handlers
                    response = await response
                code = _status_name(context, "OK")
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _status_name(context, "UNKNOWN")
                raise
            finally:
                stats.observe(clock() - start, code)

        return call


def _status_name(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    try:
        code = context.code()
    except Exception:  # older grpc: no code() on the aio context
        return default
    if code is None:
        return default
    return code.name if isinstance(code, grpc.StatusCode) else default


def _counting_stream_handler(m: BrokerMetrics, method: str, handler: grpc.RpcMethodHandler[Any, Any]
                             ) -> grpc.RpcMethodHandler[Any, Any]:
    """Streams are long-lived (replication): counted when they start, not timed."""
    def bump() -> None:
        m.streams[method] = m.streams.get(method, 0) + 1
        m.stream_messages_sent.setdefault(method, 0)

    def counted(behavior: Callable[..., Any]) -> Callable[..., Any]:
        # grpc.aio picks how to drive a handler from its kind (async generator, coroutine or
        # plain function), so the wrapper must be of the same kind as what it wraps.
        if inspect.isasyncgenfunction(behavior):
            async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
                bump()
                inner = behavior(request, context)
                sent = m.stream_messages_sent
                try:
                    async for item in inner:
                        sent[method] += 1
                        yield item
                finally:
                    await inner.aclose()
            return agen
        if inspect.iscoroutinefunction(behavior):
            async def coro(request: Any, context: Any) -> Any:
                bump()
                return await behavior(request, context)
            return coro

        def plain(request: Any, context: Any) -> Any:
            bump()
            return behavior(request, context)
        return plain

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(counted(handler.unary_stream), handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(counted(handler.stream_unary), handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(counted(handler.stream_stream), handler.request_deserializer,
                                                     handler.response_serializer)
    return handler


# --- state read at scrape time ----------------------------------------------------------------
def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def directory_bytes(path: Path) -> int:
    """Bytes of every file under `path` (blocking: run on the disk executor)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # a segment deleted by retention meanwhile
                pass
    return total


class StateFamilies(Collector):
    """`BrokerStateCollector`'s families without samples (no broker attached)."""

    def collect(self) -> Iterable[Metric]:
        return BrokerStateCollector.families().values()


class BrokerStateCollector(Collector):
    """Series read from the broker's state when Prometheus scrapes (see the module docstring).
    Only ever called on the broker's event loop (MetricsServer), which owns that state."""

    def __init__(self, broker: Broker,
                 partition_series_max: int = limits.MAX_METRICS_PARTITION_SERIES,
                 group_lag_series_max: int = limits.MAX_METRICS_GROUP_LAG_SERIES,
                 groups_max: int = limits.MAX_METRICS_GROUPS) -> None:
        self.b = broker
        self.partition_series_max = partition_series_max
        self.group_lag_series_max = group_lag_series_max
        self.groups_max = groups_max
        self.log_dir_bytes: dict[str, int] = {}  # refreshed before each scrape (MetricsServer)

    def describe(self) -> Iterable[Metric]:
        return self.families().values()

    def collect(self) -> Iterable[Metric]:
        families = self.families()
        omitted = families["semel_metrics_series_omitted"]
        self._collect_broker(families)
        self._collect_partitions(families, omitted)
        self._collect_quorum(families)
        self._collect_txn(families)
        self._collect_groups(families, omitted)
        self._collect_loop(families)
        self._collect_disk(families)
        return families.values()

    @staticmethod
    def families() -> dict[str, Family]:
        """Every family this collector yields, empty."""
        fams: list[Family] = [
            _gauge("semel_broker_up", "1 while this broker is registered and unfenced in its own metadata image"),
            _gauge("semel_broker_fenced_brokers", "Registered brokers fenced in this broker's metadata image"),
            _gauge("semel_broker_registered_brokers", "Brokers registered in this broker's metadata image"),
            _gauge("semel_partition_log_end_offset", "Log end offset of a partition this broker leads",
                   ["topic", "partition"]),
            _gauge("semel_partition_high_watermark", "High watermark of a partition this broker leads",
                   ["topic", "partition"]),
            _gauge("semel_partition_last_stable_offset", "Last stable offset (LSO) of a partition this broker leads",
                   ["topic", "partition"]),
            _gauge("semel_partition_lso_lag_records",
                   "High watermark minus LSO: records held back from read_committed readers by open transactions",
                   ["topic", "partition"]),
            _gauge("semel_partition_lso_lag_max_records", "The largest LSO lag over every partition this broker leads"),
            _gauge("semel_partitions_led", "Partitions this broker leads"),
            _gauge("semel_partitions_hosted", "Partition replicas this broker hosts"),
            _gauge("semel_producer_ids_tracked", "Producer ids whose state the partition replicas on this broker keep "
                   "(summed over replicas)"),
            _gauge("semel_producer_ids_tracked_max", "The most producer ids one partition replica on this broker keeps "
                   "(bounded by MAX_PRODUCERS_PER_PARTITION)"),
            _gauge("semel_partitions_under_replicated", "Led partitions whose ISR is smaller than their replica set"),
            _gauge("semel_partitions_under_min_isr", "Led partitions whose ISR is below min.insync.replicas"),
            _gauge("semel_partitions_offline",
                   "Partitions with no leader (reported by the active controller only, 0 elsewhere)"),
            _gauge("semel_partitions_unavailable_replicas", "Replicas on this broker whose storage could not be opened"),
            _gauge("semel_metrics_series_omitted", "Series left out by a cardinality bound (deploy/README.md)",
                   ["family"]),
            _gauge("semel_quorum_role", "Metadata quorum role of this node (1 for the current one)", ["role"]),
            _gauge("semel_quorum_term", "Metadata Raft term"),
            _gauge("semel_quorum_commit_index", "Metadata Raft commit index as known to this node"),
            _gauge("semel_quorum_applied_index", "Metadata Raft log index this node applied last"),
            _gauge("semel_quorum_apply_lag_entries", "Committed metadata entries not yet applied here"),
            _gauge("semel_quorum_has_leader", "1 while this node knows a metadata quorum leader"),
            _gauge("semel_metadata_version", "Version of this node's metadata image"),
            _gauge("semel_txn_open", "Transactions open or completing on this broker's coordinator"),
            _gauge("semel_txn_oldest_open_age_seconds", "Age of the oldest open transaction (0 when none)"),
            _gauge("semel_txn_marker_backlog", "Transactions whose markers are waiting to be written"),
            CounterMetricFamily("semel_txn_commits", "Transactions committed (Complete record written)"),
            CounterMetricFamily("semel_txn_aborts", "Transactions aborted (Complete record written)"),
            CounterMetricFamily("semel_txn_timeouts", "Transactions aborted by the coordinator for running too long"),
            CounterMetricFamily("semel_txn_state_appends", "Appends to __transaction_state by this coordinator"),
            CounterMetricFamily("semel_txn_state_transitions", "Transitions those appends carried"),
            CounterMetricFamily("semel_txn_state_appends_overlapping",
                                "State appends started while another to the same partition awaited its commit"),
            CounterMetricFamily("semel_txn_producers_fenced",
                                "Producers fenced by InitProducerId while their transaction was open"),
            _gauge("semel_consumer_group_lag_records", "LSO minus committed offset, per group and partition",
                   ["group", "topic", "partition"]),
            _gauge("semel_consumer_group_lag_sum_records", "Sum of a group's lag over its committed partitions",
                   ["group"]),
            _gauge("semel_consumer_groups", "Groups with committed offsets on this broker's coordinator"),
            _gauge("semel_event_loop_lag_seconds", "Lateness of the last event-loop probe"),
            _gauge("semel_event_loop_lag_max_seconds", "Largest event-loop probe lateness since start"),
            CounterMetricFamily("semel_event_loop_stalls", "Event-loop stalls the watchdog reported"),
            _gauge("semel_log_dir_size_bytes", "Bytes of partition data in a log directory", ["dir"]),
            _gauge("semel_log_dir_free_bytes", "Free bytes on the file system of a log directory", ["dir"]),
            _gauge("semel_log_dir_capacity_bytes", "Size of the file system of a log directory", ["dir"]),
        ]
        return {f.name: f for f in fams}

    # --- the parts ------------------------------------------------------------------------------
    def _collect_broker(self, f: dict[str, Family]) -> None:
        image = self.b.quorum.image() if self.b.quorum is not None else None
        if image is None:
            return
        brokers = list(image.brokers.values())
        f["semel_broker_registered_brokers"].add_metric([], len(brokers))
        f["semel_broker_fenced_brokers"].add_metric([], sum(1 for r in brokers if r.fenced))
        if self.b.is_broker:  # a controller-only node never registers as a broker
            f["semel_broker_up"].add_metric([], 1 if self.b.rm.active else 0)
        f["semel_metadata_version"].add_metric([], image.version)

    def _collect_partitions(self, f: dict[str, Family], omitted: Family) -> None:
        from semel.cluster.broker.replica_manager import Role

        led = {key: p for key, p in self.b.rm.partitions.items() if p.role is Role.LEADER}
        under_replicated = under_min_isr = 0
        lso_lag_max = 0
        for p in led.values():
            state = p.state
            isr = p.isr
            if state is not None and len(isr) < len(state.replicas):
                under_replicated += 1
            if len(isr) < p.min_insync_replicas:
                under_min_isr += 1
            lso_lag_max = max(lso_lag_max, p.high_watermark - p.last_stable_offset())
        shown, left_out = bounded(led, self.partition_series_max)
        for key in shown:
            p = led[key]
            labels = [p.topic, str(p.partition)]
            hw, lso = p.high_watermark, p.last_stable_offset()
            f["semel_partition_log_end_offset"].add_metric(labels, p.log_end_offset)
            f["semel_partition_high_watermark"].add_metric(labels, hw)
            f["semel_partition_last_stable_offset"].add_metric(labels, lso)
            f["semel_partition_lso_lag_records"].add_metric(labels, max(0, hw - lso))
        omitted.add_metric(["partition"], left_out)
        f["semel_partition_lso_lag_max_records"].add_metric([], max(0, lso_lag_max))
        f["semel_partitions_led"].add_metric([], len(led))
        f["semel_partitions_hosted"].add_metric([], len(self.b.rm.partitions))
        tracked = [p.store.tracked_producers() for p in self.b.rm.partitions.values()]
        f["semel_producer_ids_tracked"].add_metric([], sum(tracked))
        f["semel_producer_ids_tracked_max"].add_metric([], max(tracked, default=0))
        f["semel_partitions_under_replicated"].add_metric([], under_replicated)
        f["semel_partitions_under_min_isr"].add_metric([], under_min_isr)
        f["semel_partitions_unavailable_replicas"].add_metric([], len(self.b.rm.failed))
        q = self.b.quorum
        offline = 0
        if q is not None and q.is_leader():
            image = q.image()
            offline = sum(1 for t in image.topics.values() for ps in t.partitions if ps.leader < 0)
        f["semel_partitions_offline"].add_metric([], offline)

    def _collect_quorum(self, f: dict[str, Family]) -> None:
        q = self.b.quorum
        if q is None:
            return
        role = "leader" if q.is_leader() else ("follower" if q.config.is_voter else "observer")
        for name in ("leader", "follower", "observer"):
            f["semel_quorum_role"].add_metric([name], 1 if name == role else 0)
        commit, applied = q.raft_commit_index(), q.raft_last_applied()
        f["semel_quorum_term"].add_metric([], q.raft_term())
        f["semel_quorum_commit_index"].add_metric([], commit)
        f["semel_quorum_applied_index"].add_metric([], applied)
        f["semel_quorum_apply_lag_entries"].add_metric([], max(0, commit - applied))
        f["semel_quorum_has_leader"].add_metric([], 0 if q.leader_raft_address() is None else 1)

    def _collect_txn(self, f: dict[str, Family]) -> None:
        shell = self.b.txn.shell if self.b.txn is not None else None
        core = shell.core if shell is not None else None
        count, oldest_ms, backlog = 0, None, 0
        commits = aborts = timeouts = fenced = 0
        if core is not None:
            for partition in core.loaded_partitions():
                machine = core.machine(partition)
                if machine is None:
                    continue
                n, start_ms = machine.open_summary()
                count += n
                if start_ms is not None:
                    oldest_ms = start_ms if oldest_ms is None else min(oldest_ms, start_ms)
            backlog = len(core.channel)
            o = core.outcomes
            commits, aborts, timeouts, fenced = o.commits, o.aborts, o.timeouts, o.fenced
        f["semel_txn_open"].add_metric([], count)
        age_s = 0.0 if oldest_ms is None else max(0.0, (self.b.clock.wall_clock_ms() - oldest_ms) / 1000)
        f["semel_txn_oldest_open_age_seconds"].add_metric([], age_s)
        f["semel_txn_marker_backlog"].add_metric([], backlog)
        f["semel_txn_commits"].add_metric([], commits)
        f["semel_txn_aborts"].add_metric([], aborts)
        f["semel_txn_timeouts"].add_metric([], timeouts)
        f["semel_txn_producers_fenced"].add_metric([], fenced)
        f["semel_txn_state_appends"].add_metric([], shell.state_appends if shell is not None else 0)
        f["semel_txn_state_transitions"].add_metric([], shell.state_transitions if shell is not None else 0)
        f["semel_txn_state_appends_overlapping"].add_metric(
            [], shell.state_appends_overlapping if shell is not None else 0)

    def _collect_groups(self, f: dict[str, Family], omitted: Family) -> None:
        groups = self.b.groups
        committed: dict[str, dict[tuple[str, int], int]] = {}
        if groups is not None:
            for loaded in groups.loaded.values():
                for group_id, offsets in loaded.runtime.shard.offsets.committed.items():
                    mine = committed.setdefault(group_id, {})
                    for tp, c in offsets.items():
                        mine[(tp.topic, tp.partition)] = c.committed_offset
        f["semel_consumer_groups"].add_metric([], len(committed))
        shown_groups, groups_left_out = bounded(committed, self.groups_max)
        series_left = self.group_lag_series_max
        lag_left_out = 0
        for group_id in shown_groups:
            total = 0
            for (topic, partition), offset in sorted(committed[group_id].items()):
                p = self.b.rm.get(topic, partition)
                if p is None:  # not hosted here: its LSO is unknown to this broker
                    continue
                lag = max(0, p.last_stable_offset() - offset)
                total += lag
                if series_left > 0:
                    f["semel_consumer_group_lag_records"].add_metric([group_id, topic, str(partition)], lag)
                    series_left -= 1
                else:
                    lag_left_out += 1
            f["semel_consumer_group_lag_sum_records"].add_metric([group_id], total)
        omitted.add_metric(["group"], groups_left_out)
        omitted.add_metric(["group_lag"], lag_left_out)

    def _collect_loop(self, f: dict[str, Family]) -> None:
        stats = self.b.loop_monitor.stats
        f["semel_event_loop_lag_seconds"].add_metric([], stats.last_lag_ms / 1000)
        f["semel_event_loop_lag_max_seconds"].add_metric([], stats.max_lag_ms / 1000)
        f["semel_event_loop_stalls"].add_metric([], stats.stalls)

    def _collect_disk(self, f: dict[str, Family]) -> None:
        logs_dir = str(self.b.rm.logs_dir)
        if logs_dir in self.log_dir_bytes:
            f["semel_log_dir_size_bytes"].add_metric([logs_dir], self.log_dir_bytes[logs_dir])
        try:
            usage = shutil.disk_usage(logs_dir)  # one statvfs: cheap enough for the loop
        except OSError:
            return
        f["semel_log_dir_free_bytes"].add_metric([logs_dir], usage.free)
        f["semel_log_dir_capacity_bytes"].add_metric([logs_dir], usage.total)

    def refresh_disk(self) -> Callable[[], None]:
        """The blocking part of a scrape (walks the log directory), for the disk executor."""
        logs_dir = self.b.rm.logs_dir

        def walk() -> None:
            self.log_dir_bytes = {str(logs_dir): directory_bytes(logs_dir)}
        return walk


def exported_metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can export (counters with `_total`, histograms with
    `_bucket`/`_sum`/`_count`, ...): what a PromQL expression may reference."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


# --- the scrape endpoint --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class BasicAuth:
    """The one credential a scraper must send (HTTP basic auth, only over TLS: process.py
    refuses it on a plaintext endpoint)."""

    username: str
    password: str

    @staticmethod
    def from_file(username: str, password_file: str) -> BasicAuth:
        """The password is the file's first line (Prometheus' `basic_auth.password_file` reads
        the same file); ValueError when it cannot be read or is empty."""
        try:
            lines = Path(password_file).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"--metrics-password-file {password_file}: {exc}") from exc
        password = lines[0] if lines else ""
        if not password:
            raise ValueError(f"--metrics-password-file {password_file} is empty")
        return BasicAuth(username, password)

    def accepts(self, head: bytes) -> bool:
        """Does the request head carry `Authorization: Basic <user:password>` with this
        credential? (Compared in constant time.)"""
        given = authorization_header(head)
        if given is None or not given[:6].lower() == b"basic ":
            return False
        try:
            decoded = base64.b64decode(given[6:].strip(), validate=True)
        except (ValueError, binascii.Error):
            return False
        expected = f"{self.username}:{self.password}".encode()
        return hmac.compare_digest(decoded, expected)


def authorization_header(head: bytes) -> bytes | None:
    """The value of the request's Authorization header (the first one), or None."""
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"authorization":
            return value.strip()
    return None


class MetricsServer:
    """`GET /metrics` over HTTP/1.0-style request/response, served on the broker's loop: HTTPS
    when given an `ssl_context` (the broker's certificate; client certificates required when
    the broker requires them), and HTTP basic auth when given a credential."""

    def __init__(self, metrics: BrokerMetrics, before_scrape: Callable[[], Awaitable[None]] | None = None,
                 ssl_context: ssl.SSLContext | None = None, basic_auth: BasicAuth | None = None) -> None:
        self.metrics = metrics
        self.before_scrape = before_scrape
        self.ssl_context = ssl_context
        self.basic_auth = basic_auth
        self.port = 0
        self._server: asyncio.Server | None = None
        self._scrape_lock = asyncio.Lock()  # one render at a time: concurrent scrapers wait

    @property
    def scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    async def start(self, host: str, port: int) -> int:
        tls: dict[str, Any] = {}
        if self.ssl_context is not None:
            tls = {"ssl": self.ssl_context, "ssl_handshake_timeout": limits.METRICS_SCRAPE_TIMEOUT_MS / 1000}
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=limits.MAX_METRICS_SCRAPE_REQUEST_BYTES, **tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.METRICS_SCRAPE_TIMEOUT_MS / 1000)
            status, content_type, body = await self._answer(head)
            challenge = 'WWW-Authenticate: Basic realm="semel metrics"\r\n' if status == UNAUTHORIZED else ""
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                         f"{challenge}Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ssl.SSLError):
            pass  # a slow, short or oversized request (or a broken TLS session): closed without an answer
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        if self.basic_auth is not None and not self.basic_auth.accepts(head):
            return UNAUTHORIZED, "text/plain", b"HTTP basic auth required (the broker's --metrics-user)\n"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
        path = parts[1].split(b"?", 1)[0]
        if path not in (b"/metrics", b"/"):
            return "404 Not Found", "text/plain", b"GET /metrics\n"
        async with self._scrape_lock:
            if self.before_scrape is not None:
                try:
                    await self.before_scrape()
                except Exception:
                    log.exception("metrics: refreshing disk usage failed")
            body = self.metrics.render()
        return "200 OK", CONTENT_TYPE_LATEST, (b"" if parts[0] == b"HEAD" else body)
