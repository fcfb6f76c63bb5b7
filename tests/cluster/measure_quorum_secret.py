"""Measure what the metadata Raft secret (pysyncobj's Fernet encryption) costs per commit.

    .venv/bin/python tests/cluster/measure_quorum_secret.py [SEQUENTIAL] [PIPELINED] [DATA_DIR]

Three voters in this process on loopback TCP (their tick threads share one interpreter, as the
in-process tests do), run once without a secret, once with one, and once with a secret and
the journal's fsync path (`fsync=True`, what a broker with `fsync: true` runs; DATA_DIR
decides which disk, default the system's temporary directory): SEQUENTIAL commits one at a
time through the leader (latency p50/p99 and commits/s), then PIPELINED commits with 64 in
flight (commits/s). The command is `Barrier` (changes nothing, so the image does not grow).
Prints one JSON object per mode.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from semel.cluster.metadata.quorum import MetadataQuorum, QuorumConfig, VoterSpec
from semel.cluster.metadata.state import Barrier
from test_quorum_inprocess import free_port, until

IN_FLIGHT = 64


async def measure(base: Path, secret: bytes | None, fsync: bool, sequential: int,
                  pipelined: int) -> dict[str, object]:
    voters = tuple(VoterSpec(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3))
    nodes = [MetadataQuorum(QuorumConfig(v.node_id, v.raft_address, voters, base / f"n{v.node_id}",
                                         raft_secret=secret, fsync=fsync)) for v in voters]
    try:
        await until(lambda: any(n.is_leader() and n.has_quorum() for n in nodes), 10)
        leader = next(n for n in nodes if n.is_leader())
        for _ in range(20):  # warm-up: connections up, first commits done
            assert (await leader.submit(Barrier())).ok
        latencies_ms = []
        started = time.perf_counter()
        for _ in range(sequential):
            t0 = time.perf_counter()
            assert (await leader.submit(Barrier())).ok
            latencies_ms.append((time.perf_counter() - t0) * 1000)
        sequential_s = time.perf_counter() - started
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            async with gate:
                assert (await leader.submit(Barrier(), timeout_s=30)).ok

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(pipelined)))
        pipelined_s = time.perf_counter() - started
        quantiles = statistics.quantiles(latencies_ms, n=100)
        return {
            "secret": secret is not None,
            "fsync": fsync,
            "sequential_commits": sequential,
            "sequential_commits_per_s": round(sequential / sequential_s, 1),
            "p50_ms": round(quantiles[49], 3),
            "p99_ms": round(quantiles[98], 3),
            "pipelined_commits": pipelined,
            "pipelined_commits_per_s": round(pipelined / pipelined_s, 1),
        }
    finally:
        for n in nodes:
            n.close(wait=True)


def main() -> None:
    sequential = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    pipelined = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    data_dir = sys.argv[3] if len(sys.argv) > 3 else None
    secret = b"a-metadata-raft-secret-of-32-bytes"
    for mode_secret, fsync in ((None, False), (secret, False), (secret, True)):
        with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
            result = asyncio.run(measure(Path(tmp), mode_secret, fsync, sequential, pipelined))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
