"""`semel bench big-partition`: one broker holding one big partition (issue 19, "Scale").

What it measures, in one run on one single-broker cluster (RF 1, one partition):

1. **producer vs consumer**: a `semel.client.Producer` writes `--produce-mb` (acks=all) and
   one `Consumer` reads the same records back from offset 0, read_uncommitted then
   read_committed; MB/s of each and the ratios consumer / producer, and the CPU (client +
   broker) per MB of each, which a loaded machine disturbs less than wall-clock MB/s.
2. **fill**: the broker is stopped (SIGTERM) and the partition is grown to `--gb` GB in
   about `--segments` segments *offline*, through the storage engine's own follower append
   (`PartitionStore.append_as_follower`: the log's validation, rolls, index files, recovery
   point, producer snapshots in the broker's RocksDB), with batches exactly like the
   gRPC producer's (magic 1, one `semel.v1.Records` of `--batch-records` records of
   `--record-bytes`, increasing timestamps, the partition's leader epoch). Filling 10 GB
   through the network would take most of an hour on a shared machine; what the broker
   opens is what its own append path writes.
3. **clean start** of the broker on the big partition: seconds from the process start to
   the first record fetched from offset 0.
4. **fetch from offset 0** of the big partition: ms to the first records for a fresh consumer
   (connection and metadata included) and for a connected one that seeks there from the end.
5. **recovery after SIGKILL**: measured first with only the records of phase 1 (the
   baseline: a broker's own start-up, in the same run), then with the big partition: a few MB are produced (so the active segment has a tail),
   the broker is killed with SIGKILL and started again: seconds to its ready line, to
   unfenced, and to the first fetch answered (the goal: serving within 10 s), and what its
   recovery read, from the broker's "recovered" log line (segments trusted/verified,
   bytes scanned, indexes rebuilt).
6. **broker RSS** (VmRSS, and the peak VmHWM) after each phase.

Progress goes to stderr; the last stdout line is one JSON object. Each figure comes with the
load average at the time and the CPU seconds of the processes involved (the machine is
shared: compare ratios within one run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from semel.cluster.tooling.bench import MB, _create_topic, _out, _progress

GB = 1000 * MB
_RECOVERED = re.compile(
    r"recovered (\d+) segment\(s\) in (\d+) ms: (\d+) trusted, (\d+) verified, (\d+) bytes scanned, "
    r"(\d+) index\(es\) rebuilt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gb", type=float, default=10.0, help="size of the big partition in GB (default 10)")
    parser.add_argument("--segments", type=int, default=1000, help="about this many segments (default 1000)")
    parser.add_argument("--produce-mb", type=float, default=200.0,
                        help="MB the producer writes (and the consumer reads back) in phase 1 (default 200)")
    parser.add_argument("--record-bytes", type=int, default=1024, help="value size (default 1024)")
    parser.add_argument("--batch-records", type=int, default=16, help="records per filled batch (default 16)")
    parser.add_argument("--data-dir", default=None,
                        help="directory for the broker's data (default: a new temp dir); removed afterwards")
    parser.add_argument("--keep-data", action="store_true", help="keep the data dir")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _rss_mb(pid: int | None) -> dict[str, float | None]:
    """VmRSS and VmHWM (peak) of `pid` in MB."""
    out: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    if pid is None:
        return out
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_mb"] = round(int(line.split()[1]) * 1024 / MB, 1)
                elif line.startswith("VmHWM:"):
                    out["peak_rss_mb"] = round(int(line.split()[1]) * 1024 / MB, 1)
    except OSError:
        pass
    return out


def _cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


def _consume(bootstrap: str, topic: str, isolation: str, until_offset: int, deadline_s: float) -> dict[str, Any]:
    """Read [0, until_offset) with one consumer; MB/s of record values, and this process's CPU."""
    from semel.client import Consumer

    with Consumer(bootstrap, auto_offset_reset="earliest", isolation_level=isolation) as consumer:
        consumer.assign([(topic, 0)])
        consumer.seek(topic, 0, 0)
        nbytes = records = 0
        next_offset = 0
        cpu0, begin = time.process_time(), time.perf_counter()
        while next_offset < until_offset:
            batch = consumer.poll(2000)
            if not batch:
                if time.perf_counter() - begin > deadline_s:
                    raise RuntimeError(f"consumer ({isolation}) stalled at offset {next_offset} of {until_offset}")
                continue
            records += len(batch)
            nbytes += sum(len(r.value) for r in batch if r.value is not None)
            next_offset = batch[-1].offset + 1
        elapsed = time.perf_counter() - begin
        cpu = time.process_time() - cpu0
    return {"isolation": isolation, "records": records, "elapsed_s": round(elapsed, 3),
            "mb_per_s": round(nbytes / MB / elapsed, 2), "consumer_cpu_s": round(cpu, 2), "load1": _load()}


def _first_fetch(bootstrap: str, topic: str, deadline_s: float) -> tuple[float, int]:
    """Seconds until a fresh consumer gets records from offset 0 (retrying while the broker
    is not up yet), and the offset of the first record."""
    from semel.client import Consumer
    from semel.client.errors import SemelError

    begin = time.perf_counter()
    while True:
        try:
            with Consumer(bootstrap, auto_offset_reset="earliest", request_timeout_ms=2000) as consumer:
                consumer.assign([(topic, 0)])
                consumer.seek(topic, 0, 0)
                while True:
                    batch = consumer.poll(500)
                    if batch:
                        return time.perf_counter() - begin, batch[0].offset
                    if time.perf_counter() - begin > deadline_s:
                        raise RuntimeError(f"no record from offset 0 within {deadline_s} s")
        except SemelError:
            if time.perf_counter() - begin > deadline_s:
                raise
            time.sleep(0.05)


def _seek_to_zero_ms(bootstrap: str, topic: str, end_offset: int) -> float:
    """A consumer already connected and reading near the end seeks to offset 0: ms until
    the first records of offset 0 come back (no connection or metadata set-up in it)."""
    from semel.client import Consumer

    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        consumer.seek(topic, 0, max(0, end_offset - 1000))
        deadline = time.perf_counter() + 60
        while not consumer.poll(500):
            if time.perf_counter() > deadline:
                raise RuntimeError("no record near the end within 60 s")
        consumer.seek(topic, 0, 0)
        begin = time.perf_counter()
        while True:
            batch = consumer.poll(500)
            if batch and batch[0].offset == 0:
                return (time.perf_counter() - begin) * 1000
            if time.perf_counter() - begin > 60:
                raise RuntimeError("no record from offset 0 within 60 s")


def _fill(data_dir: Path, topic: str, target_bytes: int, segment_bytes: int, record_bytes: int,
          batch_records: int) -> dict[str, Any]:
    """Grow the partition offline to `target_bytes` through the follower append path (see the
    module docstring). The broker must be stopped (its RocksDB and the log's lock)."""
    from semel.v1 import common_pb2
    from semel.storage.batch import BatchHeader, encode_batch
    from semel.storage.kv import KvStore, partition_key
    from semel.storage.log import LogConfig
    from semel.storage.partition import PartitionStore

    (directory,) = sorted((data_dir / "logs").glob(f"{topic}-0.*"))
    topic_id12 = directory.name.rsplit(".", 1)[1]
    records = common_pb2.Records()
    value = os.urandom(record_bytes)
    for i in range(batch_records):
        records.records.add(offset_delta=i, timestamp_delta_ms=0, value=value)
    payload = records.SerializeToString()
    config = LogConfig(segment_bytes=segment_bytes)
    cpu0, begin = time.process_time(), time.perf_counter()
    kv = KvStore.open(data_dir / "kv")
    try:
        store = PartitionStore.open(directory, config, kv, partition_key(f"{topic}.{topic_id12}", 0),
                                    int(time.time() * 1000))
        try:
            log = store.log
            epoch = max(0, log.epoch_cache.latest_epoch)
            offset = log.log_end_offset
            ts = int(time.time() * 1000)
            size = log.size_bytes
            per_append = max(1, (1 * MB) // (len(payload) + 61))
            last_report = begin
            while size < target_bytes:
                parts = []
                for _ in range(per_append):
                    header = BatchHeader(offset, batch_records - 1, epoch, -1, -1, -1, batch_records, 0, ts, ts)
                    parts.append(encode_batch(header, payload))
                    offset += batch_records
                    ts += 1
                raw = b"".join(parts)
                store.append_as_follower(raw, int(time.time() * 1000))
                size += len(raw)
                now = time.perf_counter()
                if now - last_report >= 2.0:
                    last_report = now
                    _out().status(f"  filled {size / GB:6.2f} of {target_bytes / GB:.2f} GB "
                                  f"({size / MB / (now - begin):.0f} MB/s)")
            segments = len(log.segment_base_offsets)
            end = log.log_end_offset
        finally:
            store.close()
    finally:
        kv.close()
    elapsed = time.perf_counter() - begin
    return {"bytes": size, "segments": segments, "log_end_offset": end, "elapsed_s": round(elapsed, 1),
            "mb_per_s": round(size / MB / elapsed, 1), "cpu_s": round(time.process_time() - cpu0, 1),
            "load1": _load(), "storage_reads": _storage_reads(directory, config, end)}


def _storage_reads(directory: Path, config: Any, end: int) -> dict[str, Any]:
    """The storage engine alone on the filled log (clean open): the open, and reads of
    `FETCH_MAX_BYTES` from offset 0, the middle and the end: their time and the bytes they
    returned (never more than asked for, but the first whole batch)."""
    from semel.storage.log import PartitionLog

    fetch_max_bytes = 1024 * 1024  # the consumer's per-partition default
    begin = time.perf_counter()
    plog = PartitionLog.open(directory, config, int(time.time() * 1000))
    out: dict[str, Any] = {"open_ms": round((time.perf_counter() - begin) * 1000, 1),
                           "recovery": dataclasses.asdict(plog.recovery_stats), "fetch_max_bytes": fetch_max_bytes}
    try:
        for name, offset in (("from_zero", 0), ("from_middle", end // 2), ("near_end", max(0, end - 1000))):
            t0 = time.perf_counter()
            r = plog.read(offset, fetch_max_bytes)
            out[name] = {"ms": round((time.perf_counter() - t0) * 1000, 2), "bytes": len(r.data)}
    finally:
        plog.close()
    return out


def _recovery_line(log_path: Path, since: int) -> dict[str, int] | None:
    """The broker's 'recovered ...' line for the big partition written after byte `since`
    (the largest one, if several partitions recovered)."""
    best: dict[str, int] | None = None
    with open(log_path, "rb") as f:
        f.seek(since)
        for raw in f:
            m = _RECOVERED.search(raw.decode(errors="replace"))
            if m:
                found = dict(zip(("segments", "ms", "trusted", "verified", "bytes_scanned", "indexes_rebuilt"),
                                 (int(g) for g in m.groups())))
                if best is None or found["segments"] > best["segments"]:
                    best = found
    return best


def run(args: argparse.Namespace) -> int:
    from semel.client import Producer
    from semel.cluster.tooling.local_cluster import BrokerSpec, LocalCluster
    from semel.cluster.tooling.ports import free_ports

    if args.gb <= 0 or args.segments < 1 or args.produce_mb <= 0:
        raise SystemExit("semel bench big-partition: --gb, --segments and --produce-mb must be positive")
    target = int(args.gb * GB)
    segment_bytes = max(1024 * 1024, target // args.segments)
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="semel-big-"))
    root.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(root).free / GB
    if free_gb < args.gb * 1.2 + 2:
        raise SystemExit(f"semel bench big-partition: {free_gb:.1f} GB free under {root}, need {args.gb * 1.2 + 2:.1f}")
    ports = free_ports(3)
    spec = BrokerSpec(1, "127.0.0.1", ports[0], ports[1], root / "broker-1", metrics_port=ports[2])
    cluster = LocalCluster([spec], root)
    broker = cluster.brokers[1]
    result: dict[str, Any] = {"benchmark": "big-partition", "gb": args.gb, "segment_bytes": segment_bytes,
                              "record_bytes": args.record_bytes, "cores": os.cpu_count()}
    args.partitions, args.replication_factor, args.topic = 1, 1, None
    args.segment_bytes = segment_bytes
    try:
        _progress(f"starting one broker in {root} ...")
        cluster.start(timeout_s=120)
        bootstrap = cluster.bootstrap
        topic = _create_topic(bootstrap, args)

        # 1. producer vs consumer over the same records
        value = os.urandom(args.record_bytes)
        count = int(args.produce_mb * MB / args.record_bytes)
        _progress(f"producing {count:,} records of {args.record_bytes} B ...")
        broker_cpu0 = _cpu_s(broker.pid)
        cpu0, begin = time.process_time(), time.perf_counter()
        with Producer(bootstrap, acks="all") as producer:
            for _ in range(count):
                producer.send(topic, value, partition=0)
            producer.flush()
        produce_s = time.perf_counter() - begin
        produced = {"records": count, "elapsed_s": round(produce_s, 3),
                    "mb_per_s": round(count * args.record_bytes / MB / produce_s, 2),
                    "producer_cpu_s": round(time.process_time() - cpu0, 2),
                    "broker_cpu_s": round((_cpu_s(broker.pid) or 0) - (broker_cpu0 or 0), 2), "load1": _load()}
        _progress(f"  producer {produced['mb_per_s']} MB/s; consuming the same records ...")
        consumers = []
        for isolation in ("read_uncommitted", "read_committed"):
            b0 = _cpu_s(broker.pid)
            c = _consume(bootstrap, topic, isolation, count, deadline_s=300)
            c["broker_cpu_s"] = round((_cpu_s(broker.pid) or 0) - (b0 or 0), 2)
            consumers.append(c)
            _progress(f"  consumer ({isolation}) {c['mb_per_s']} MB/s")
        mb = count * args.record_bytes / MB
        produced["cpu_ms_per_mb"] = round((produced["producer_cpu_s"] + produced["broker_cpu_s"]) * 1000 / mb, 1)
        for c in consumers:  # client + broker CPU per MB: what the wall-clock ratio hides on a loaded machine
            c["cpu_ms_per_mb"] = round((c["consumer_cpu_s"] + c["broker_cpu_s"]) * 1000 / mb, 1)
        result["produce_consume"] = {
            "producer": produced, "consumers": consumers,
            "ratio_read_uncommitted": round(consumers[0]["mb_per_s"] / produced["mb_per_s"], 3),
            "ratio_read_committed": round(consumers[1]["mb_per_s"] / produced["mb_per_s"], 3),
            "broker": _rss_mb(broker.pid)}

        # the baseline in this run: the same restart after SIGKILL with only these records
        _progress("SIGKILL and restart with the small partition (the baseline) ...")
        broker.signal(signal.SIGKILL)
        broker.kill()
        result["recovery_small"] = _start_and_fetch(cluster, broker, topic)
        _progress(f"  recovery (small): {result['recovery_small']}")

        # 2. fill offline
        _progress("stopping the broker (SIGTERM) to fill the partition offline ...")
        cluster.terminate(1)
        _progress(f"filling to {args.gb} GB in segments of {segment_bytes / MB:.1f} MB ...")
        result["fill"] = _fill(spec.data_dir, topic, target, segment_bytes, args.record_bytes, args.batch_records)
        _out().done()
        _progress(f"  {result['fill']}")

        # 3. clean start, 4. fetch from offset 0
        result["clean_start"] = _start_and_fetch(cluster, broker, topic)
        _progress(f"  clean start: {result['clean_start']}")
        fetch_s, first = _first_fetch(bootstrap, topic, deadline_s=60)
        warm_ms = _seek_to_zero_ms(bootstrap, topic, result["fill"]["log_end_offset"])
        result["fetch_from_zero"] = {"first_records_ms": round(fetch_s * 1000, 1), "first_offset": first,
                                     "connected_consumer_ms": round(warm_ms, 1),
                                     "load1": _load(), "broker": _rss_mb(broker.pid)}
        _progress(f"  fetch from offset 0: {result['fetch_from_zero']}")

        # 5. recovery after SIGKILL, with a tail in the active segment
        with Producer(bootstrap, acks="all") as producer:
            for _ in range(max(1, int(4 * MB / args.record_bytes))):
                producer.send(topic, value, partition=0)
            producer.flush()
        result["broker_before_kill"] = _rss_mb(broker.pid)
        _progress("SIGKILL, then restart ...")
        broker.signal(signal.SIGKILL)
        broker.kill()
        result["recovery"] = _start_and_fetch(cluster, broker, topic)
        _progress(f"  recovery: {result['recovery']}")
    finally:
        cluster.stop()
        if args.keep_data:
            _progress(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    _out().done()
    print(json.dumps(result))
    return 0


def _start_and_fetch(cluster: Any, broker: Any, topic: str) -> dict[str, Any]:
    """Start `broker`; seconds to its ready line, to unfenced in the metadata, to the first
    record fetched from offset 0; its CPU and RSS then, and what its recovery read."""
    log_size = broker.log_path.stat().st_size if broker.log_path.exists() else 0
    begin = time.perf_counter()
    broker.start()
    while not broker.ready.wait(0.01):
        if not broker.alive():
            raise RuntimeError("broker exited during start: " + "\n".join(broker.tail()[-20:]))
        if time.perf_counter() - begin > 300:
            raise RuntimeError("broker not ready after 300 s")
    ready_s = time.perf_counter() - begin
    cluster.wait_ready(timeout_s=300)
    unfenced_s = time.perf_counter() - begin
    fetch_s, _ = _first_fetch(cluster.bootstrap, topic, deadline_s=300)
    serving_s = time.perf_counter() - begin
    del fetch_s
    return {"ready_s": round(ready_s, 2), "unfenced_s": round(unfenced_s, 2), "serving_s": round(serving_s, 2),
            "broker_cpu_s": _cpu_s(broker.pid), "load1": _load(), "broker": _rss_mb(broker.pid),
            "recovery_read": _recovery_line(broker.log_path, log_size)}
