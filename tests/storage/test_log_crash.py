"""Crash tests with real processes: a writer appends in a loop (with retention and an
occasional truncation of its tail, as a follower does) and reports every append that returned; the test SIGKILLs it at a random point, reopens the log, and checks that
every reported append is intact and nothing corrupt is served. With flush policy 'never'
nothing is fsynced, but what was write()n is in the page cache and survives a process kill.

Seeded: SEMEL_SEED=<n> replays a run (the seed is printed)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
from semel.storage.log import LogConfig, PartitionLog

ITERATIONS = 15

WRITER = textwrap.dedent(
    """
    import random, sys
    from semel.storage.batch import BatchHeader, encode_batch
    from semel.storage.log import LogConfig, PartitionLog

    def make(base):
        rnd = random.Random(base)
        records = 1 + base % 3
        h = BatchHeader(base, records - 1, base // 500, -1, -1, -1, records, 0, base, base)
        return encode_batch(h, rnd.randbytes(rnd.randint(0, 3000)))

    directory, policy = sys.argv[1], sys.argv[2]
    config = LogConfig(segment_bytes=64 * 1024, index_interval_bytes=1024, flush_policy=policy,
                       flush_interval_ms=5, retention_bytes=400 * 1024, retention_ms=-1)
    plog = PartitionLog.open(directory, config, 0)
    print("open", plog.log_start_offset, plog.log_end_offset, flush=True)
    n = 0
    last_bases = [plog.log_end_offset]

    def _bases(batches):
        return [int.from_bytes(b[:8], "big") for b in batches]
    while True:
        base = plog.log_end_offset
        batches = []
        for _ in range(1 + n % 3):  # one to three batches per append call
            batches.append(make(base))
            base += 1 + base % 3
        plog.append(b"".join(batches), n)
        print("ack", base, flush=True)
        n += 1
        if n % 50 == 0:
            plog.apply_retention(n)
        if n % 37 == 0:  # a follower truncating a divergent tail (to a batch boundary)
            target = max(plog.log_start_offset, last_bases[0])
            print("truncating", target, flush=True)
            plog.truncate_to(target)
        last_bases = (last_bases + [b for b in _bases(batches)])[-6:]
    """
)


def make(base: int) -> bytes:
    from semel.storage.batch import BatchHeader, encode_batch

    rnd = random.Random(base)
    records = 1 + base % 3
    h = BatchHeader(base, records - 1, base // 500, -1, -1, -1, records, 0, base, base)
    return encode_batch(h, rnd.randbytes(rnd.randint(0, 3000)))


def verify(directory, policy: str, acked_end: int) -> tuple[int, int]:
    """Reopen in this process and check every batch from the log start; returns (start, end)."""
    config = LogConfig(segment_bytes=64 * 1024, index_interval_bytes=1024, flush_policy=policy)
    plog = PartitionLog.open(directory, config, 0)
    try:
        start, end = plog.log_start_offset, plog.log_end_offset
        assert end >= acked_end, f"acknowledged appends up to {acked_end} lost: log ends at {end}"
        offset = start
        while offset < end:
            result = plog.read(offset, 256 * 1024)  # CRC-checked; raises on anything corrupt
            pos = 0
            for h in result.headers:
                expected = make(h.base_offset)
                assert result.data[pos : pos + h.size_bytes] == expected, f"batch {h.base_offset} differs"
                pos += h.size_bytes
            offset = result.next_offset
        first = plog.read(start, 1).first_offset if start < end else start
        assert first <= start
        for seg, nxt in zip(plog._segments, plog._segments[1:]):
            assert seg.index.next_offset == nxt.base_offset
        return start, end
    finally:
        plog.close()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["never", "always"])
def test_sigkill_never_loses_returned_appends(tmp_path, policy):
    seed = int(os.environ.get("SEMEL_SEED", "20261128")) + (policy == "always")
    print(f"seed {seed} (replay with SEMEL_SEED={seed - (policy == 'always')})")
    rnd = random.Random(seed)
    directory = tmp_path / "p0"
    acked_end = 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for iteration in range(ITERATIONS):
        kill_after = rnd.randint(1, 150)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), policy],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            opened = proc.stdout.readline().split()
            assert opened and opened[0] == "open", proc.stderr.read()
            assert int(opened[2]) >= acked_end
            acks = truncations = 0
            while acks < kill_after:
                line = proc.stdout.readline()
                if line.startswith("truncating"):
                    # From here on the log may end anywhere at or after the truncation point.
                    acked_end = min(acked_end, int(line.split()[1]))
                    truncations += 1
                    continue
                assert line.startswith("ack"), f"writer died: {proc.stderr.read()}"
                acked_end = int(line.split()[1])
                acks += 1
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        start, end = verify(directory, policy, acked_end)
        print(
            f"iteration {iteration}: killed after {kill_after} acks, {truncations} truncations; "
            f"log [{start}, {end}), acked up to {acked_end}"
        )
    assert acked_end > 0
