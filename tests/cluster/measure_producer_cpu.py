"""The producer's CPU per MB at full load, against a running cluster (issue 19, "The produce path").

    .venv/bin/python tests/cluster/measure_producer_cpu.py BOOTSTRAP TOPIC [SECONDS] [IDEMPOTENT 0/1]

One producer (acks=all, max_in_flight=5) sends 1 KiB random values flat out for SECONDS (default
8) after a warm-up of 2,000 records, then flushes; prints one JSON object: MB/s, the process's
CPU (user + system, every thread) in ms per MB of values, the load average and the producer's
metrics. Run it with two venvs (say main's and a branch's) against one cluster, taking turns, to
compare two builds of the client: CPU per MB holds up on a loaded machine where MB/s does not.
"""

from __future__ import annotations

import json
import os
import sys
import time

from semel.client import Producer


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 8.0
    idempotent = len(sys.argv) > 4 and sys.argv[4] == "1"
    value = os.urandom(1024)
    with Producer(bootstrap, acks="all", max_in_flight=5, enable_idempotence=idempotent) as producer:
        producer.partitions_for(topic)
        for _ in range(2000):
            producer.send(topic, value)
        producer.flush()
        send = producer.send
        begin, cpu_begin, sent = time.perf_counter(), os.times(), 0
        end = begin + seconds
        while time.perf_counter() < end:
            for _ in range(64):
                send(topic, value)
            sent += 64
        producer.flush()
        elapsed, cpu_end = time.perf_counter() - begin, os.times()
        metrics = producer.metrics()
    cpu_s = (cpu_end.user - cpu_begin.user) + (cpu_end.system - cpu_begin.system)
    mb = sent * len(value) / 1e6
    print(json.dumps({"idempotent": idempotent, "mb_per_s": round(mb / elapsed, 2),
                      "producer_cpu_ms_per_mb": round(cpu_s * 1000 / mb, 2),
                      "load_average_1m": os.getloadavg()[0], "metrics": metrics}))


if __name__ == "__main__":
    main()
