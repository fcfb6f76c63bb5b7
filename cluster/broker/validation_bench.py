"""`semel bench validation`: what the produce path's record validation costs per MB.

The broker parses each data batch's `records` once as a `semel.v1.Records` message (the
generated class, in C) and compares the count with the header (`produce_validation.
check_records`). This measures, in one run and on the same pre-encoded batches of
`--record-bytes` records:

* `validate_mb_s`: `check_records` alone;
* `append_mb_s`: the partition log's append (framing + CRC32C + write), no validation;
* `validate_append_mb_s`: validation then append, as the produce path does;
* `cost_pct`: how much more CPU the append path takes with validation.

All figures are CPU time of the measuring thread (best of `--repeat`), not wall clock: on a
shared machine the disk and other load swing wall-clock appends by tens of percent, which
would swamp a difference this small. MB/s = MiB of batches per CPU second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from semel.cluster.broker.produce_validation import check_records
from semel.storage.batch import BatchHeader, encode_batch
from semel.storage.log import LogConfig, PartitionLog
from semel.v1 import common_pb2

MB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record-bytes", type=int, default=1024, help="value size of each record (default 1 KiB)")
    parser.add_argument("--records-per-batch", type=int, default=16, help="records per batch (default 16)")
    parser.add_argument("--total-mb", type=int, default=64, help="MiB of batches per measurement (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each figure; the best is reported")


def _payloads(record_bytes: int, per_batch: int, total_bytes: int) -> list[bytes]:
    value = bytes(range(256)) * (record_bytes // 256 + 1)
    payload = common_pb2.Records(records=[
        common_pb2.Record(offset_delta=i, key=b"key-%d" % i, value=value[:record_bytes]) for i in range(per_batch)
    ]).SerializeToString()
    return [payload] * max(1, total_bytes // len(payload))


def _validate(payloads: list[bytes], per_batch: int) -> float:
    started = time.thread_time()
    for payload in payloads:
        if check_records(payload, per_batch, 0) is not None:
            raise AssertionError("the benchmark's own batches must be valid")
    return time.thread_time() - started


def _append(payloads: list[bytes], per_batch: int, directory: Path, validate: bool) -> float:
    shutil.rmtree(directory, ignore_errors=True)
    log = PartitionLog.open(directory, LogConfig(segment_bytes=256 * MB), 0)
    try:
        # encoded before the clock starts, as in `semel bench storage`
        batches = [encode_batch(BatchHeader(i * per_batch, per_batch - 1, 0, -1, -1, -1, per_batch, 0, 0, 0), p)
                   for i, p in enumerate(payloads)]
        started = time.thread_time()
        for payload, batch in zip(payloads, batches):
            if validate and check_records(payload, per_batch, 0) is not None:
                raise AssertionError("the benchmark's own batches must be valid")
            log.append(batch, 0)
        return time.thread_time() - started
    finally:
        log.close()


def run(args: argparse.Namespace) -> int:
    payloads = _payloads(args.record_bytes, args.records_per_batch, args.total_mb * MB)
    total_mb = sum(len(p) for p in payloads) / MB
    root = Path(tempfile.mkdtemp(prefix="semel-bench-validation-"))
    try:
        validate_s = min(_validate(payloads, args.records_per_batch) for _ in range(args.repeat))
        append_s, both_s = float("inf"), float("inf")
        for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits both alike
            append_s = min(append_s, _append(payloads, args.records_per_batch, root / "log", validate=False))
            both_s = min(both_s, _append(payloads, args.records_per_batch, root / "log", validate=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "validation", "record_bytes": args.record_bytes, "records_per_batch": args.records_per_batch,
        "total_mb": round(total_mb, 1), "validate_mb_s": round(total_mb / validate_s, 1),
        "validate_us_per_mb": round(validate_s / total_mb * 1e6, 1),
        "append_mb_s": round(total_mb / append_s, 1), "validate_append_mb_s": round(total_mb / both_s, 1),
        "cost_pct": round((both_s / append_s - 1) * 100, 1),
    }
    print(f"check_records alone: {result['validate_mb_s']} MB/s ({result['validate_us_per_mb']} us per MB); "
          f"append {result['append_mb_s']} MB/s, validate+append {result['validate_append_mb_s']} MB/s "
          f"({result['cost_pct']:+.1f}%)")
    print(json.dumps(result))
    return 0
