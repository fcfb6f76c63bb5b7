"""`semel bench produce` / `semel bench consume`: end-to-end client throughput and latency.

Unless `--bootstrap` is given, the benchmark starts its own local cluster (`--brokers`,
free loopback ports, a temporary data dir it deletes afterwards), creates a fresh topic
(`--partitions`, `--replication-factor`) and runs `--producers` producer *processes*
(each a `semel.client.Producer`, keyless records of `--record-bytes` random bytes)
for `--duration-s` seconds. `--rate-mb-s` caps the offered load (to measure latency at,
say, half of the maximum throughput); `--half-load` does that in the same run: a second
phase offers half the throughput the first one measured, reported under "half_load".

Latency is send() -> acknowledgement of a sample of records (1 in `LATENCY_SAMPLE_EVERY`,
none in the first `--warmup-s`), so it includes batching (`--linger-ms`), queueing in the client, the produce RPC and
replication (acks=all). Progress goes to stderr; the last stdout line is one JSON object.

Each produce phase on a local cluster also reports the brokers' event-loop lag, read from their
logs (semel.cluster.broker.loop_monitor): "loop" = the largest lag logged (probes at least
`limits.LOOP_LAG_REPORT_MS` late; 0 when none was), how many such lags and how many stalls
(`limits.LOOP_STALL_MS`, logged with the loop's stack). `--segment-bytes` sets the topic's
segment size, so a short run rolls segments.

`--protocol kafka` drives the brokers' Kafka listeners (docs/kafka.md) with confluent-kafka
(librdkafka; a test dependency, imported only then) instead of Semel's gRPC producer;
`--protocol both` runs the gRPC producer and the Kafka one alternately on one cluster and
topic (`--rounds`) and reports both and their ratio (kafka / grpc), with the same acks and
idempotence (`--idempotent` here means: both variants idempotent).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semel.clock import wall_clock_ms
from semel.invariant import invariant
from semel.cluster.tooling.ports import free_ports
from semel.cluster.tooling.progress import Progress

LATENCY_SAMPLE_EVERY = 16
MB = 1_000_000


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", default=None, help="use this running cluster instead of starting one")
    parser.add_argument("--brokers", type=int, default=3, help="brokers of the local cluster (default 3)")
    parser.add_argument("--replication-factor", type=int, default=3, help="default 3")
    parser.add_argument("--partitions", type=int, default=6, help="default 6")
    parser.add_argument("--record-bytes", type=int, default=1024, help="value size (default 1024)")
    parser.add_argument("--topic", default=None, help="topic name (default: a fresh bench-<time> topic)")
    parser.add_argument("--keep-data", action="store_true", help="keep the local cluster's data dir")
    parser.add_argument("--segment-bytes", type=int, default=None,
                        help="the topic's segment_bytes (default: the broker default); small values roll often")
    parser.add_argument("--broker-event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the local brokers' event loop (their --event-loop; default asyncio)")
    parser.add_argument("--broker-replication-transport", choices=("grpc", "tcp"), default="grpc",
                        help="how the local brokers replicate (their --replication-transport; default grpc)")


def add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--acks", choices=["all", "1", "0"], default="all", help="default all")
    parser.add_argument("--duration-s", type=float, default=10.0, help="default 10")
    parser.add_argument("--producers", type=int, default=1, help="producer processes (default 1)")
    parser.add_argument("--warmup-s", type=float, default=1.0,
                        help="latency samples of the first seconds are dropped (connections, metadata; default 1)")
    parser.add_argument("--rate-mb-s", type=float, default=0.0, help="offered load cap, all producers (0: max)")
    parser.add_argument("--half-load", action="store_true",
                        help="then run again at half the measured throughput; its latency goes in 'half_load'")
    parser.add_argument("--batch-bytes", type=int, default=None, help="producer batch_bytes (client default)")
    parser.add_argument("--linger-ms", type=int, default=None, help="producer linger_ms (client default)")
    parser.add_argument("--max-in-flight", type=int, default=None, help="producer max_in_flight (client default)")
    parser.add_argument("--compression", choices=["none", "gzip", "snappy", "lz4", "zstd"], default="none",
                        help="producer compression_type (Kafka: compression.type). Every record repeats one random "
                             "value, which a codec finds within a batch, so the figures flatter compression; "
                             "tests/cluster/measure_compression.py measures varied compressible records")
    parser.add_argument("--idempotent", action="store_true",
                        help="compare, in this run, plain acks=all (enable_idempotence=False) with the idempotent "
                             "producer (same max_in_flight, default 5); reports 'ratio' = idempotent / plain")
    parser.add_argument("--transactional", action="store_true",
                        help="compare, in this run, the idempotent producer with a transactional one committing "
                             "every --commit-interval-ms; reports 'ratio' and commit latency percentiles")
    parser.add_argument("--commit-interval-ms", type=int, default=100, help="transaction length (default 100)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --idempotent/--transactional/--protocol both: alternate the variants this many "
                             "times (default 1)")
    parser.add_argument("--protocol", choices=["grpc", "kafka", "both"], default="grpc",
                        help="grpc (Semel's producer, default), kafka (confluent-kafka against the Kafka listener) or "
                             "both, compared in this run")
    parser.add_argument("--kafka-bootstrap", default=None,
                        help="with --bootstrap and --protocol kafka/both: the running cluster's Kafka listeners")


def add_consume_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--mb", type=float, default=200.0, help="megabytes to produce first, then consume (default 200)")


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[tuple[str, list[int], list[Path]]]:
    """(bootstrap, broker pids, broker log files) of the cluster to measure (none for --bootstrap)."""
    if args.bootstrap:
        yield args.bootstrap, [], []
        return
    from semel.cluster.tooling.local_cluster import BrokerSpec, LocalCluster

    kafka = getattr(args, "protocol", "grpc") != "grpc"  # brokers with Kafka listeners too
    ports = free_ports((4 if kafka else 3) * args.brokers)
    data_dir = Path(tempfile.mkdtemp(prefix="semel-bench-"))
    n = args.brokers
    specs = [
        BrokerSpec(i + 1, "127.0.0.1", ports[i], ports[n + i], data_dir / f"broker-{i + 1}",
                   metrics_port=ports[2 * n + i], kafka_port=ports[3 * n + i] if kafka else 0)
        for i in range(n)
    ]
    args.metrics_urls = [f"http://127.0.0.1:{spec.metrics_port}/metrics" for spec in specs]
    loop = getattr(args, "broker_event_loop", "asyncio")
    transport = getattr(args, "broker_replication_transport", "grpc")
    extra = [*(["--event-loop", loop] if loop != "asyncio" else []),
             *(["--replication-transport", transport] if transport != "grpc" else []),
             *getattr(args, "broker_extra_args", [])]
    cluster = LocalCluster(specs, data_dir, extra_args=extra)
    _progress(f"starting {args.brokers} broker(s) in {data_dir} ...")
    try:
        cluster.start(timeout_s=90)
        args.kafka_bootstrap = cluster.kafka_bootstrap
        yield (cluster.bootstrap, [b.pid for b in cluster.brokers.values() if b.pid is not None],
               [b.log_path for b in cluster.brokers.values()])
    finally:
        cluster.stop()
        if args.keep_data:
            _progress(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


_progress_out: Progress | None = None


def _out() -> Progress:
    """Progress on the current stderr: a live status line on a terminal, plain lines elsewhere."""
    global _progress_out
    if _progress_out is None or _progress_out.stream is not sys.stderr:
        _progress_out = Progress(sys.stderr)
    return _progress_out


def _progress(text: str) -> None:
    _out().say(text)


def _status(text: str) -> None:
    """A periodic figure: rewritten in place on a terminal."""
    _out().status(text)


def _create_topic(bootstrap: str, args: argparse.Namespace) -> str:
    from semel.client import Admin
    from semel.client.errors import (
        InvalidReplicationFactorError,
        TopicAlreadyExistsError,
    )

    topic = args.topic or f"bench-{wall_clock_ms()}"
    with Admin(bootstrap) as admin:
        deadline = time.monotonic() + 30
        while True:
            try:
                configs = {"segment_bytes": str(args.segment_bytes)} if getattr(args, "segment_bytes", None) else None
                admin.create_topic(topic, args.partitions, args.replication_factor, configs=configs, timeout_ms=30_000)
                break
            except TopicAlreadyExistsError:
                break
            except InvalidReplicationFactorError:
                # A broker of a freshly started (or busy) cluster can be fenced for a moment.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        deadline = time.monotonic() + 30
        while True:
            view = admin.metadata([topic])
            infos = view.topics.get(topic, [])
            if infos and all(i.leader_id >= 0 for i in infos):
                leaders: dict[int, int] = {}
                for info in infos:
                    leaders[info.leader_id] = leaders.get(info.leader_id, 0) + 1
                _progress(f"partition leaders per broker: {dict(sorted(leaders.items()))}")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has partitions without a leader after 30 s")
            time.sleep(0.1)
    return topic


_LOOP_LAG = re.compile(rb"event loop lag (\d+) ms")
_LOOP_STALL = b"event loop stalled"


class _LoopLagLogs:
    """The brokers' loop-lag lines written to their logs since `mark()`."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._sizes: dict[Path, int] = {}

    def mark(self) -> None:
        self._sizes = {p: (p.stat().st_size if p.exists() else 0) for p in self.paths}

    def since_mark(self) -> dict[str, Any] | None:
        if not self.paths:
            return None
        lags: list[int] = []
        stalls = 0
        for path in self.paths:
            with open(path, "rb") as f:
                f.seek(self._sizes.get(path, 0))
                for line in f:
                    m = _LOOP_LAG.search(line)
                    if m:
                        lags.append(int(m.group(1)))
                    elif _LOOP_STALL in line:
                        stalls += 1
        from semel import limits

        return {"max_lag_ms": max(lags, default=0), "lags_reported": len(lags),
                "report_ms": limits.LOOP_LAG_REPORT_MS, "stalls": stalls, "stall_ms": limits.LOOP_STALL_MS}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


# --- produce -------------------------------------------------------------------------
def _producer_process(
    bootstrap: str, topic: str | list[str], options: dict[str, Any], record_bytes: int, duration_s: float,
    rate_bytes_s: float, counter: Any, results: Any, start_at: float, warmup_s: float,
    commit_interval_ms: int = 0, topic_weights: list[int] | None = None,
) -> None:
    """Produce to `topic`; given several topics, each chunk of records goes to one of them,
    chosen in proportion to `topic_weights` (their partition counts: the load per partition
    is the same wherever it lands)."""
    import random

    from semel.client import Producer

    topics = [topic] if isinstance(topic, str) else list(topic)
    weights = topic_weights or [1] * len(topics)
    topic = topics[0]
    value = os.urandom(record_bytes)
    latencies: list[float] = []
    commit_latencies: list[float] = []
    errors = 0
    sent = 0
    transactional = bool(options.get("transactional_id"))
    with Producer(bootstrap, **options) as producer:
        for each in topics:
            producer.partitions_for(each)
        if transactional:
            producer.init_transactions()

        def sampled(t0: float) -> Any:
            def done(future: Any) -> None:
                nonlocal errors
                if future.exception(0) is not None:
                    errors += 1
                else:
                    latencies.append(time.perf_counter() - t0)
            return done

        while time.time() < start_at:
            time.sleep(0.001)
        begin = time.perf_counter()
        cpu_begin = os.times()
        end = begin + duration_s
        sample_from = begin + warmup_s
        send = producer.send
        if transactional:
            producer.begin_transaction()
            txn_end = begin + commit_interval_ms / 1000
        while True:
            now = time.perf_counter()
            if transactional and now >= txn_end:
                producer.commit_transaction()
                done_at = time.perf_counter()
                commit_latencies.append(done_at - now)
                if done_at >= end:
                    break
                producer.begin_transaction()
                txn_end = done_at + commit_interval_ms / 1000
                continue
            if now >= end:
                if transactional:
                    producer.commit_transaction()
                    commit_latencies.append(time.perf_counter() - now)
                break
            if rate_bytes_s > 0:
                allowed = (now - begin) * rate_bytes_s / record_bytes
                if sent >= allowed:
                    time.sleep(min(0.001, (sent - allowed) * record_bytes / rate_bytes_s))
                    continue
            if len(topics) > 1:
                topic = random.choices(topics, weights)[0]
            for _ in range(64):
                future = send(topic, value)
                sent += 1
                if sent % LATENCY_SAMPLE_EVERY == 0:
                    t0 = time.perf_counter()
                    if t0 >= sample_from:
                        future.add_done_callback(sampled(t0))
            counter.value = sent
        producer.flush()
        elapsed = time.perf_counter() - begin
        cpu_end = os.times()
        metrics = producer.metrics()
    counter.value = sent
    cpu_s = (cpu_end.user - cpu_begin.user) + (cpu_end.system - cpu_begin.system)
    results.put({"sent": sent, "elapsed_s": elapsed, "latencies": latencies, "errors": errors, "cpu_s": cpu_s,
                 "metrics": metrics, "commit_latencies": commit_latencies})


def _kafka_producer_process(
    bootstrap: str, topic: str, options: dict[str, Any], record_bytes: int, duration_s: float,
    rate_bytes_s: float, counter: Any, results: Any, start_at: float, warmup_s: float,
    commit_interval_ms: int = 0,
) -> None:
    """`_producer_process` with confluent-kafka against the Kafka listeners (same result keys)."""
    from confluent_kafka import Producer as KafkaProducer

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "acks": {"all": "all", "1": 1, "0": 0}[str(options["acks"])],
                            "enable.idempotence": bool(options.get("enable_idempotence", False)),
                            "linger.ms": options.get("linger_ms", 5), "queue.buffering.max.kbytes": 65536}
    if options.get("max_in_flight") and not conf["enable.idempotence"]:
        conf["max.in.flight.requests.per.connection"] = options["max_in_flight"]
    if options.get("batch_bytes"):
        conf["batch.size"] = options["batch_bytes"]
    if options.get("compression_type"):
        conf["compression.type"] = options["compression_type"]
    producer = KafkaProducer(conf)
    value = os.urandom(record_bytes)
    latencies: list[float] = []
    errors = 0
    sent = 0
    producer.list_topics(topic, timeout=30)

    def sampled(t0: float) -> Any:
        def done(err: Any, _msg: Any) -> None:
            nonlocal errors
            if err is not None:
                errors += 1
            else:
                latencies.append(time.perf_counter() - t0)
        return done

    def counted(err: Any, _msg: Any) -> None:
        nonlocal errors
        if err is not None:
            errors += 1

    while time.time() < start_at:
        time.sleep(0.001)
    begin = time.perf_counter()
    cpu_begin = os.times()
    end = begin + duration_s
    sample_from = begin + warmup_s
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate_bytes_s > 0 and sent >= (now - begin) * rate_bytes_s / record_bytes:
            time.sleep(0.001)
            continue
        for _ in range(64):
            sample = sent % LATENCY_SAMPLE_EVERY == 0 and now >= sample_from
            try:
                producer.produce(topic, value, on_delivery=sampled(time.perf_counter()) if sample else counted)
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        producer.poll(0)
        counter.value = sent
    producer.flush()
    elapsed = time.perf_counter() - begin
    cpu_end = os.times()
    counter.value = sent
    cpu_s = (cpu_end.user - cpu_begin.user) + (cpu_end.system - cpu_begin.system)
    results.put({"sent": sent, "elapsed_s": elapsed, "latencies": latencies, "errors": errors, "cpu_s": cpu_s,
                 "metrics": {"bytes_sent": 0, "batches_sent": 0, "batch_retries": 0}, "commit_latencies": []})


def run_produce(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"acks": args.acks}
    if args.compression != "none":
        options["compression_type"] = args.compression
    for name in ("batch_bytes", "linger_ms", "max_in_flight"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.protocol != "grpc" and args.bootstrap and not args.kafka_bootstrap:
        raise SystemExit("semel bench produce: --protocol kafka/both with --bootstrap needs --kafka-bootstrap")
    if args.protocol == "both":
        return _run_comparison(args, options)
    if args.idempotent or args.transactional:
        return _run_comparison(args, options)
    with _cluster(args) as (bootstrap, broker_pids, broker_logs):
        topic = _create_topic(bootstrap, args)
        cap = args.rate_mb_s * MB if args.rate_mb_s > 0 else 0.0
        result = _produce_phase(bootstrap, topic, args, options, cap, broker_pids, broker_logs=broker_logs)
        result.pop("commit_latencies_s")
        if args.half_load:
            half = result["mb_per_s"] * MB / 2
            _progress(f"half load: {half / MB:.1f} MB/s offered ...")
            phase = _produce_phase(bootstrap, topic, args, options, half, broker_pids, broker_logs=broker_logs)
            result["half_load"] = {
                k: phase[k] for k in ("rate_mb_s_cap", "mb_per_s", "latency_ms_p50", "latency_ms_p99", "latency_ms_max", "cpu",
                                      "loop")
            }
    _out().done()
    print(json.dumps(result))
    return 0


def _run_comparison(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Two producer variants on one cluster and topic, alternated `--rounds` times; the ratio of
    their throughputs (second / first) is measured in this one run."""
    if args.acks != "all":
        raise SystemExit("semel bench produce: --idempotent/--transactional compare acks=all producers")
    base = dict(options)
    base.setdefault("max_in_flight", 5)
    if args.protocol == "both":
        if args.transactional:
            raise SystemExit("semel bench produce: --protocol both compares non-transactional producers")
        same = {**base, "enable_idempotence": bool(args.idempotent)}
        variants = [("grpc", same, 0), ("kafka", {**same, "protocol": "kafka"}, 0)]
    elif args.transactional:
        variants = [("idempotent", {**base, "enable_idempotence": True}, 0),
                    ("transactional", {**base, "transactional_id": "bench-txn"}, args.commit_interval_ms)]
    else:
        variants = [("plain", {**base, "enable_idempotence": False}, 0),
                    ("idempotent", {**base, "enable_idempotence": True}, 0)]
    phases: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    with _cluster(args) as (bootstrap, broker_pids, _logs):
        topic = _create_topic(bootstrap, args)
        cap = args.rate_mb_s * MB if args.rate_mb_s > 0 else 0.0
        for round_index in range(args.rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            for name, opts, interval in order:
                _progress(f"round {round_index + 1}/{args.rounds}: {name}")
                phases[name].append(_produce_phase(bootstrap, topic, args, opts, cap, broker_pids, interval))
    kind = "protocols" if args.protocol == "both" else "transactional" if args.transactional else "idempotent"
    summary: dict[str, Any] = {"benchmark": "produce-" + kind, "idempotent": bool(args.idempotent),
                               "rounds": args.rounds, "max_in_flight": base["max_in_flight"],
                               "record_bytes": args.record_bytes, "partitions": args.partitions,
                               "replication_factor": args.replication_factor, "producers": args.producers}
    for name, runs in phases.items():
        records = sum(r["records"] for r in runs)
        elapsed = sum(r["elapsed_s"] for r in runs)
        summary[name] = {
            "records_per_s": round(records / elapsed, 1),
            "mb_per_s": round(records * args.record_bytes / MB / elapsed, 2),
            "per_round_mb_per_s": [r["mb_per_s"] for r in runs],
            "latency_ms_p50": [r["latency_ms_p50"] for r in runs],
            "latency_ms_p99": [r["latency_ms_p99"] for r in runs],
            "avg_batch_kib": [r["avg_batch_kib"] for r in runs],
            "errors": sum(r["errors"] for r in runs),
            "batch_retries": sum(r["batch_retries"] for r in runs),
            "cpu": _cpu_summary([r["cpu"] for r in runs], records * args.record_bytes / MB),
        }
        commits = sorted(x for r in runs for x in r.get("commit_latencies_s", []))
        if commits:
            summary[name].update({
                "commit_interval_ms": args.commit_interval_ms, "transactions": len(commits),
                "commit_ms_p50": round(_percentile(commits, 0.50) * 1000, 2),
                "commit_ms_p99": round(_percentile(commits, 0.99) * 1000, 2),
                "commit_ms_max": round(commits[-1] * 1000, 2)})
    first, second = (name for name, _, _ in variants)
    summary["ratio"] = round(summary[second]["records_per_s"] / summary[first]["records_per_s"], 3)
    _out().done()
    print(json.dumps(summary))
    return 0


def _produce_phase(
    bootstrap: str, topic: str | list[str], args: argparse.Namespace, options: dict[str, Any], rate_bytes_s: float,
    broker_pids: list[int], commit_interval_ms: int = 0, broker_logs: list[Path] | None = None,
    topic_weights: list[int] | None = None,
) -> dict[str, Any]:
    """One timed run of `args.producers` producer processes offering up to `rate_bytes_s` (0: max)."""
    _progress(
        f"producing to {topic} ({args.partitions} partitions, RF {args.replication_factor}, acks={args.acks}) "
        f"with {args.producers} producer process(es) for {args.duration_s} s ..."
    )
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    counters = [ctx.Value("q", 0, lock=False) for _ in range(args.producers)]
    start_at = time.time() + 2.0  # all processes start together, after their imports
    per_process_rate = rate_bytes_s / args.producers
    kafka = options.get("protocol", args.protocol) == "kafka"
    target = _kafka_producer_process if kafka else _producer_process
    invariant(not kafka or isinstance(topic, str), "the Kafka producer process writes one topic")
    if kafka:
        bootstrap = args.kafka_bootstrap
    options = {k: v for k, v in options.items() if k != "protocol"}
    procs = [
        ctx.Process(
            target=target,
            args=(bootstrap, topic, _per_process(options, i), args.record_bytes, args.duration_s, per_process_rate,
                  counters[i], results, start_at, args.warmup_s, commit_interval_ms,
                  *([topic_weights] if topic_weights else [])),
            daemon=True,
        )
        for i in range(args.producers)
    ]
    for proc in procs:
        proc.start()
    outcomes: list[dict[str, Any]] = []
    while time.time() < start_at:
        time.sleep(0.01)
    _out().phase(args.duration_s)
    cpu_before = _cpu_snapshot(broker_pids)
    loop_logs = _LoopLagLogs(broker_logs or [])
    loop_logs.mark()
    last_total, last_t = 0, time.time()
    while len(outcomes) < len(procs):
        try:
            outcomes.append(results.get(timeout=1.0))
        except Exception:
            pass
        now = time.time()
        total = sum(c.value for c in counters)
        if now >= start_at and now - last_t >= 1.0:
            rate_now = (total - last_total) * args.record_bytes / MB / (now - last_t)
            _status(f"  sent {total:>10,} records  ({rate_now:7.1f} MB/s offered)")
            last_total, last_t = total, now
        if all(not p.is_alive() for p in procs) and results.empty() and len(outcomes) < len(procs):
            raise RuntimeError("a producer process died; see its output above")
    cpu_after = _cpu_snapshot(broker_pids)
    loop = loop_logs.since_mark()
    for proc in procs:
        proc.join(timeout=10)
    sent = sum(o["sent"] for o in outcomes)
    elapsed = max(o["elapsed_s"] for o in outcomes)
    latencies = sorted(x for o in outcomes for x in o["latencies"])
    return {
        "benchmark": "produce",
        "protocol": "kafka" if kafka else "grpc",
        "brokers": args.brokers if not args.bootstrap else None,
        "partitions": args.partitions,
        "replication_factor": args.replication_factor,
        "acks": args.acks,
        "producers": args.producers,
        "record_bytes": args.record_bytes,
        "rate_mb_s_cap": round(rate_bytes_s / MB, 2) if rate_bytes_s else None,
        "max_in_flight": options.get("max_in_flight"),
        "compression": options.get("compression_type", "none"),
        "records": sent,
        "errors": sum(o["errors"] for o in outcomes),
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(sent / elapsed, 1),
        "mb_per_s": round(sent * args.record_bytes / MB / elapsed, 2),
        "latency_ms_p50": round(_percentile(latencies, 0.50) * 1000, 2),
        "latency_ms_p99": round(_percentile(latencies, 0.99) * 1000, 2),
        "latency_ms_max": round(latencies[-1] * 1000, 2) if latencies else None,
        "avg_batch_kib": None if kafka else round(  # librdkafka's batches are not counted here
            sum(o["metrics"]["bytes_sent"] for o in outcomes) / 1024
            / max(1, sum(o["metrics"]["batches_sent"] for o in outcomes)),
            1,
        ),
        "batch_retries": sum(o["metrics"]["batch_retries"] for o in outcomes),
        # the producer processes' CPU (user + system, all threads) per MB of values sent: the
        # figure of the client's efficiency, robust to a loaded machine where MB/s is not
        "producer_cpu_ms_per_mb": round(sum(o["cpu_s"] for o in outcomes) * 1000 / (sent * args.record_bytes / MB), 2)
        if sent else None,
        "cpu": _cpu_report(cpu_before, cpu_after, [o["cpu_s"] for o in outcomes]),
        "loop": loop,
        "commit_latencies_s": [x for o in outcomes for x in o["commit_latencies"]],
    }


def _per_process(options: dict[str, Any], index: int) -> dict[str, Any]:
    """Each producer process gets its own transactional id."""
    if options.get("transactional_id"):
        return {**options, "transactional_id": f"{options['transactional_id']}-{index}"}
    return options


# --- where the CPU went ----------------------------------------------------------------
def _message_counts(urls: list[str]) -> dict[str, float]:
    """gRPC messages the brokers handled so far, from their /metrics: unary calls by method
    (`semel_rpc_requests`) and messages sent on served streams (`semel_rpc_stream_messages_sent`;
    ReplicaFetch: one response per fetch round, and as many requests)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name not in ("semel_rpc_requests", "semel_rpc_stream_messages_sent"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = sample.labels["method"].rsplit("/", 1)[-1]
                    counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def _cpu_snapshot(pids: list[int]) -> dict[str, Any]:
    """CPU seconds so far of each broker process, and of the whole machine (busy, total)."""
    tick = os.sysconf("SC_CLK_TCK")
    per_pid = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            per_pid[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            per_pid[pid] = float("nan")
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        total = sum(values[:8]) / tick
        idle = (values[3] + values[4]) / tick
    except (OSError, IndexError, ValueError):
        total = idle = float("nan")
    return {"pids": per_pid, "machine_total_s": total, "machine_idle_s": idle, "wall": time.monotonic()}


def _cpu_report(before: dict[str, Any], after: dict[str, Any], producer_cpu_s: list[float]) -> dict[str, Any]:
    wall = after["wall"] - before["wall"]
    brokers = [round(after["pids"][pid] - before["pids"][pid], 2) for pid in before["pids"]]
    busy = (after["machine_total_s"] - before["machine_total_s"]) - (after["machine_idle_s"] - before["machine_idle_s"])
    ours = sum(brokers) + sum(producer_cpu_s)
    return {
        "wall_s": round(wall, 2),
        "cores": os.cpu_count(),
        "brokers_cpu_s": brokers,
        "producers_cpu_s": [round(x, 2) for x in producer_cpu_s],
        "machine_busy_s": round(busy, 2),
        "other_processes_cpu_s": round(busy - ours, 2) if before["pids"] else None,
    }


def _cpu_summary(reports: list[dict[str, Any]], mb: float) -> dict[str, Any]:
    """Several phases' CPU reports over their wall time: the machine's busy share (of all
    cores), the cores the brokers and the producers used, and their CPU ms per MB produced."""
    wall = sum(r["wall_s"] for r in reports) or float("nan")
    brokers = sum(sum(r["brokers_cpu_s"]) for r in reports)
    producers = sum(sum(r["producers_cpu_s"]) for r in reports)
    return {
        "cpu_ms_per_mb": round((brokers + producers) * 1000 / mb, 1) if mb else None,
        "producers_cpu_ms_per_mb": round(producers * 1000 / mb, 2) if mb else None,
        "machine_busy_share": round(sum(r["machine_busy_s"] for r in reports) / wall / (os.cpu_count() or 1), 3),
        "brokers_cores": round(brokers / wall, 2),
        "producers_cores": round(producers / wall, 2),
    }


# --- the fixed cost of a transaction ------------------------------------------------------
def add_txn_cost_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--duration-s", type=float, default=10.0, help="default 10")
    parser.add_argument("--records-per-partition", type=int, default=1,
                        help="records each transaction writes to every partition (default 1)")
    parser.add_argument("--idle-s", type=float, default=5.0,
                        help="seconds the brokers' idle CPU is measured first (default 5)")


def run_txn_cost(args: argparse.Namespace) -> int:
    """Back-to-back transactions of a few records on every partition: what one transaction
    costs beyond its records (the control requests and replicated control records), as
    broker and producer CPU per transaction and commit latency."""
    from semel.client import Producer

    if args.records_per_partition < 1 or args.duration_s <= 0:
        raise SystemExit("semel bench txn-cost: --records-per-partition >= 1 and --duration-s > 0")
    value = os.urandom(args.record_bytes)
    with _cluster(args) as (bootstrap, broker_pids, _logs):
        topic = _create_topic(bootstrap, args)
        with Producer(bootstrap, acks="all", transactional_id=f"bench-txn-cost-{os.getpid()}") as producer:
            producer.partitions_for(topic)
            producer.init_transactions()

            def one_transaction() -> float:
                producer.begin_transaction()
                for partition in range(args.partitions):
                    for _ in range(args.records_per_partition):
                        producer.send(topic, value, partition=partition)
                started = time.perf_counter()
                producer.commit_transaction()
                return time.perf_counter() - started

            one_transaction()  # connections, coordinator, first verification
            # The brokers' CPU with no transactions (Raft ticks, idle replication fetches), so
            # the per-transaction figure can be given above idle too: on a busy machine few
            # transactions run and the idle CPU would otherwise dominate the per-transaction cost.
            idle_before = _cpu_snapshot(broker_pids)
            time.sleep(args.idle_s)
            idle_after = _cpu_snapshot(broker_pids)
            idle_cpu_s_per_s = (sum(_cpu_report(idle_before, idle_after, [])["brokers_cpu_s"])
                                / max(idle_after["wall"] - idle_before["wall"], 1e-9))
            _progress(f"transactions of {args.records_per_partition} record(s) on each of {args.partitions} "
                      f"partitions for {args.duration_s} s ...")
            commits: list[float] = []
            urls = getattr(args, "metrics_urls", []) if broker_pids else []
            messages_before = _message_counts(urls)
            before = _cpu_snapshot(broker_pids)
            cpu_begin = time.process_time()
            begin = last = time.perf_counter()
            _out().phase(args.duration_s)
            while time.perf_counter() - begin < args.duration_s:
                commits.append(one_transaction())
                if time.perf_counter() - last >= 1.0:
                    last = time.perf_counter()
                    _status(f"  {len(commits):>7,} transactions committed")
            elapsed = time.perf_counter() - begin
            producer_cpu_s = time.process_time() - cpu_begin
            after = _cpu_snapshot(broker_pids)
            messages_after = _message_counts(urls)
    cpu = _cpu_report(before, after, [producer_cpu_s])
    count = len(commits)
    commits.sort()
    _out().done()
    print(json.dumps({
        "benchmark": "txn-cost", "partitions": args.partitions, "replication_factor": args.replication_factor,
        "records_per_partition": args.records_per_partition, "record_bytes": args.record_bytes,
        "transactions": count, "transactions_per_s": round(count / elapsed, 1),
        "brokers_cpu_ms_per_txn": round(sum(cpu["brokers_cpu_s"]) * 1000 / count, 2) if broker_pids else None,
        "brokers_cpu_ms_per_txn_above_idle": (
            round((sum(cpu["brokers_cpu_s"]) - idle_cpu_s_per_s * cpu["wall_s"]) * 1000 / count, 2)
            if broker_pids else None),
        "brokers_idle_cpu_ms_per_s": round(idle_cpu_s_per_s * 1000, 1) if broker_pids else None,
        "producer_cpu_ms_per_txn": round(producer_cpu_s * 1000 / count, 2),
        # gRPC messages per transaction (the brokers' /metrics; a local cluster only): unary
        # calls served by method, and ReplicaFetch responses (as many fetch requests again).
        "messages_per_txn": {key: round((messages_after.get(key, 0.0) - messages_before.get(key, 0.0)) / count, 2)
                             for key in sorted(messages_after)
                             if messages_after.get(key, 0.0) - messages_before.get(key, 0.0) > 0},
        "commit_ms_p50": round(_percentile(commits, 0.50) * 1000, 2),
        "commit_ms_p99": round(_percentile(commits, 0.99) * 1000, 2),
        "cpu": cpu,
    }))
    return 0


# --- consume -------------------------------------------------------------------------
def run_consume(args: argparse.Namespace) -> int:
    from semel.client import Consumer, Producer

    with _cluster(args) as (bootstrap, _pids, _logs):
        topic = _create_topic(bootstrap, args)
        records = int(args.mb * MB / args.record_bytes)
        _progress(f"producing {records:,} records of {args.record_bytes} bytes to {topic} ...")
        value = os.urandom(args.record_bytes)
        with Producer(bootstrap, linger_ms=5) as producer:
            for _ in range(records):
                producer.send(topic, value)
            producer.flush()
        _progress("consuming from the beginning ...")
        with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([(topic, p) for p in range(args.partitions)])
            got = 0
            nbytes = 0
            begin = time.perf_counter()
            last = begin
            while got < records:
                batch = consumer.poll(5000)
                if not batch:
                    raise RuntimeError(f"consumer stalled after {got} of {records} records")
                got += len(batch)
                nbytes += sum(len(r.value) for r in batch)
                now = time.perf_counter()
                if now - last >= 1.0:
                    _status(f"  consumed {got:>10,} of {records:,} records")
                    last = now
            elapsed = time.perf_counter() - begin
    result = {
        "benchmark": "consume",
        "partitions": args.partitions,
        "replication_factor": args.replication_factor,
        "record_bytes": args.record_bytes,
        "records": got,
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(got / elapsed, 1),
        "mb_per_s": round(nbytes / MB / elapsed, 2),
    }
    _out().done()
    print(json.dumps(result))
    return 0
