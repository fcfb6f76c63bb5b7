"""`semel bench storage`: partition-log append and read throughput against raw os.write.

The batches are encoded before the clock starts (a broker receives them encoded), so the
figures measure what the log adds: validation (framing + CRC32C of every batch), the
write() itself, indexing, rolls. `raw_write_mb_s` is plain os.write of the same bytes, one
call per batch, to a file in the same directory, in the same run; `ratio` = append / raw
(wall clock). `cpu_ratio` compares the CPU time of the writing thread instead, which other
load on a shared machine disturbs much less.
Reads go from offset 0 to the end in `--read-bytes` fetches, CRC-checking every batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from semel.storage.batch import BatchHeader, crc_of, encode_batch
from semel.storage.log import LogConfig, PartitionLog

MB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-bytes", type=int, default=16 * 1024, help="stored size of each batch (default 16 KiB)")
    parser.add_argument("--total-mb", type=int, default=256, help="MiB appended per measurement (default 256)")
    parser.add_argument("--dir", default=None, help="directory for the files (default: a new temp dir, removed after)")
    parser.add_argument("--flush-policy", default="never", choices=("never", "interval", "always"))
    parser.add_argument("--segment-mb", type=int, default=256, help="segment size in MiB (default 256)")
    parser.add_argument("--read-bytes", type=int, default=1 * MB, help="max_bytes of each read (default 1 MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements of each figure; the best is reported")


def _batches(batch_bytes: int, count: int) -> list[bytes]:
    payload = os.urandom(max(0, batch_bytes - 61))
    out = []
    for i in range(count):
        header = BatchHeader(i * 10, 9, 0, -1, -1, -1, 10, 0, 1_700_000_000_000 + i, 1_700_000_000_000 + i)
        out.append(encode_batch(header, payload))
    return out


def _raw(directory: Path, batches: list[bytes]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) to os.write every batch."""
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    start, cpu = time.perf_counter(), time.thread_time()
    for b in batches:
        os.write(fd, b)
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    os.close(fd)
    path.unlink()
    return elapsed, cpu


def _append(directory: Path, batches: list[bytes], config: LogConfig) -> tuple[float, float, PartitionLog]:
    shutil.rmtree(directory / "log", ignore_errors=True)
    plog = PartitionLog.open(directory / "log", config, now_ms=0)
    append = plog.append
    start, cpu = time.perf_counter(), time.thread_time()
    for i, b in enumerate(batches):
        append(b, i)
    return time.perf_counter() - start, time.thread_time() - cpu, plog


def _read(plog: PartitionLog, read_bytes: int) -> tuple[float, int]:
    offset, end, total = plog.log_start_offset, plog.log_end_offset, 0
    start = time.perf_counter()
    while offset < end:
        result = plog.read(offset, read_bytes)
        total += len(result.data)
        offset = result.next_offset
    return time.perf_counter() - start, total


def _crc(batches: list[bytes]) -> float:
    """Seconds to CRC32C every batch once (the check each append and each read pays)."""
    start = time.perf_counter()
    for b in batches:
        crc_of(b)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    count = max(1, args.total_mb * MB // args.batch_bytes)
    batches = _batches(args.batch_bytes, count)
    total_mb = sum(len(b) for b in batches) / MB
    own_dir = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="semel-bench-")) if own_dir else Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    config = LogConfig(segment_bytes=args.segment_mb * MB, flush_policy=args.flush_policy, retention_ms=-1)
    best = {k: float("inf") for k in ("raw", "append", "read", "crc", "raw_cpu", "append_cpu")}
    try:
        for r in range(args.repeat):
            # Interleave raw and log runs so both see the same page-cache and writeback state.
            raw, raw_cpu = _raw(directory, batches)
            best["raw"], best["raw_cpu"] = min(best["raw"], raw), min(best["raw_cpu"], raw_cpu)
            elapsed, cpu, plog = _append(directory, batches, config)
            best["append"], best["append_cpu"] = min(best["append"], elapsed), min(best["append_cpu"], cpu)
            read_elapsed, read_total = _read(plog, args.read_bytes)
            if read_total != int(total_mb * MB):
                raise AssertionError(f"read {read_total} bytes, appended {total_mb * MB}")
            best["read"] = min(best["read"], read_elapsed)
            best["crc"] = min(best["crc"], _crc(batches))
            plog.close()
            print(
                f"run {r + 1}: raw {total_mb / best['raw']:.0f} MB/s, append {total_mb / elapsed:.0f} MB/s, "
                f"read {total_mb / read_elapsed:.0f} MB/s",
                file=sys.stderr,
            )
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            shutil.rmtree(directory / "log", ignore_errors=True)
    result = {
        "batch_bytes": args.batch_bytes,
        "total_mb": round(total_mb, 1),
        "flush_policy": args.flush_policy,
        "append_mb_s": round(total_mb / best["append"], 1),
        "raw_write_mb_s": round(total_mb / best["raw"], 1),
        "ratio": round(best["raw"] / best["append"], 3),
        "read_mb_s": round(total_mb / best["read"], 1),
        "append_batches_s": round(count / best["append"]),
        "crc32c_mb_s": round(total_mb / best["crc"], 1),
        # CPU time of the writing thread: the same comparison, robust to other load on the machine.
        "cpu_ratio": round(best["raw_cpu"] / best["append_cpu"], 3),
        "append_cpu_us_per_batch": round(best["append_cpu"] / count * 1e6, 2),
        "raw_cpu_us_per_batch": round(best["raw_cpu"] / count * 1e6, 2),
        "segment_mb": args.segment_mb,
    }
    print(f"append {result['append_mb_s']} MB/s vs raw {result['raw_write_mb_s']} MB/s: ratio {result['ratio']}")
    print(f"CPU per batch: append {result['append_cpu_us_per_batch']} us vs raw write {result['raw_cpu_us_per_batch']} us: "
          f"cpu_ratio {result['cpu_ratio']}")
    print(f"read {result['read_mb_s']} MB/s ({args.read_bytes} bytes per read, CRC-checked)")
    print(f"CRC32C alone {result['crc32c_mb_s']} MB/s (cost per {args.batch_bytes} B batch: "
          f"{best['crc'] / count * 1e6:.2f} us; append costs {best['append'] / count * 1e6:.2f} us, "
          f"raw write {best['raw'] / count * 1e6:.2f} us)")
    print(json.dumps(result))
    return 0
