"""Measure what producer compression buys on the gRPC path, in one run: one broker, one topic
per codec, rounds that take turns between the codecs so a busy machine weighs on each alike.

    .venv/bin/python tests/cluster/measure_compression.py [ROUNDS] [SECONDS]

Per round and codec: `Producer(compression_type=codec, acks="all")` sends compressible 1 KiB
records (JSON-like text: field names repeat, numbers vary) to one partition for SECONDS
(default 5), then flushes -> MB/s of record values acknowledged. After the rounds: bytes of
`.log` segment files on disk per codec and per MB of values. Prints one JSON object on the
last line.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from semel.client import Producer  # noqa: E402

from tests.cluster.harness import Cluster  # noqa: E402

CODECS = ("none", "zstd", "lz4")
RECORD_BYTES = 1024
MB = 1024 * 1024


def record(rng: random.Random, i: int) -> bytes:
    """About RECORD_BYTES of text shaped like an event: repeated keys, varying values."""
    parts = []
    while sum(map(len, parts)) < RECORD_BYTES:
        parts.append('{"event_id": %d, "user": "user-%05d", "action": "%s", "amount": %d.%02d, '
                     '"region": "%s", "ok": %s}' % (i, rng.randrange(50_000), rng.choice(("view", "click", "buy")),
                                                     rng.randrange(1000), rng.randrange(100),
                                                     rng.choice(("eu-west", "us-east", "ap-south")),
                                                     rng.choice(("true", "false"))))
    return "".join(parts).encode()[:RECORD_BYTES]


def produce_for(bootstrap: str, topic: str, codec: str, values: list[bytes], seconds: float) -> tuple[int, float]:
    sent = 0
    with Producer(bootstrap, acks="all", compression_type=codec, linger_ms=5) as producer:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            producer.send(topic, values[sent % len(values)], partition=0)
            sent += 1
        producer.flush(timeout_s=120)
        elapsed = time.monotonic() - start
        assert producer.metrics()["records_failed"] == 0
    return sent, elapsed


def stored_bytes(root: Path, topic: str) -> int:
    return sum(f.stat().st_size for d in root.rglob(f"{topic}-0.*") if d.is_dir() for f in d.glob("*.log"))


def main(rounds: int, seconds: float) -> dict[str, dict[str, float]]:
    rng = random.Random(17)
    values = [record(rng, i) for i in range(4096)]
    root = Path(tempfile.mkdtemp(prefix="semel-compression-"))
    runs: dict[str, list[float]] = {c: [] for c in CODECS}
    records: dict[str, int] = {c: 0 for c in CODECS}
    with Cluster(root, brokers=1) as cluster:
        for codec in CODECS:
            cluster.create_topic(f"c-{codec}", partitions=1, replication_factor=1)
        for r in range(rounds):
            for codec in CODECS if r % 2 == 0 else CODECS[::-1]:
                n, elapsed = produce_for(cluster.bootstrap, f"c-{codec}", codec, values, seconds)
                runs[codec].append(n * RECORD_BYTES / MB / elapsed)
                records[codec] += n
                print(f"round {r + 1} {codec}: {runs[codec][-1]:.1f} MB/s", file=sys.stderr)
        out = {}
        for codec in CODECS:
            disk = stored_bytes(root, f"c-{codec}")
            value_mb = records[codec] * RECORD_BYTES / MB
            out[codec] = {"mb_per_s": round(statistics.median(runs[codec]), 2),
                          "per_round_mb_per_s": [round(x, 2) for x in runs[codec]],
                          "records": records[codec], "disk_bytes": disk,
                          "disk_bytes_per_mb_of_values": round(disk / value_mb)}
    return out


if __name__ == "__main__":
    result = main(int(sys.argv[1]) if len(sys.argv) > 1 else 2, float(sys.argv[2]) if len(sys.argv) > 2 else 5.0)
    print(json.dumps(result))
