"""PartitionLog against a simple in-memory model, with hypothesis driving random appends,
rolls (small segments), truncations, retention, log-start advances and reopens (clean and
simulated crashes). After every step: same LEO/log start, reads from any offset return the
same whole batches, offset_for_timestamp agrees with a linear scan, every segment's index
equals one rebuilt from its file, and the epoch cache / aborted index match the model."""

from __future__ import annotations

import os
import random
import tempfile
import threading
from pathlib import Path
from unittest import mock

from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st
from semel import limits
from semel.storage import background_sync, disk_executor
from semel.storage import epoch_cache as ec
from semel.storage.aborted_txns import AbortedTxn
from semel.storage.batch import BatchHeader, encode_batch
from semel.storage.log import LogConfig, PartitionLog
from semel.storage.log_policy import SegmentSummary, retention_count
from semel.storage.segment import LOG_SUFFIX, LogSegment


def make_batch(base, records, ts, epoch, payload_bytes):
    header = BatchHeader(base, records - 1, epoch, -1, -1, -1, records, 0, ts, ts)
    return encode_batch(header, bytes(random.Random(base).randbytes(payload_bytes)))


class Model:
    def __init__(self):
        self.batches: list[tuple[int, int, int, bytes]] = []  # base, next, max_ts, bytes
        self.log_start = 0
        self.leo = 0
        self.epochs: ec.Entries = ()
        self.aborted: list[AbortedTxn] = []

    def visible(self):
        return [b for b in self.batches if b[1] > self.log_start]

    def read(self, offset, max_bytes, max_offset):
        limit = self.leo if max_offset is None else min(max_offset, self.leo)
        out, total = [], 0
        for b in self.visible():
            if b[1] <= offset:
                continue
            if b[0] >= limit or (out and total + len(b[3]) > max_bytes):
                break
            out.append(b)
            total += len(b[3])
        return out

    def offset_for_timestamp(self, ts):
        for b in self.visible():
            if b[2] >= ts:
                return max(b[0], self.log_start)
        return None

    def truncate_to(self, offset):
        if offset >= self.leo:
            # Nothing to cut, but an epoch entry starting at the log end goes (Kafka's truncateTo:
            # a replica that led an epoch without appending must forget it). One can start there
            # with data: advance_start to the log end moves the last entry's start up to it.
            self.epochs = ec.truncate_from_end(self.epochs, self.leo)
            return
        cut = next(b for b in self.batches if b[1] > offset)
        self.batches = [b for b in self.batches if b[1] <= offset]
        self.leo = cut[0]
        if self.leo < self.log_start:
            self.batches, self.leo = [], self.log_start
        self.epochs = ec.truncate_from_end(self.epochs, self.leo)
        self.aborted = [a for a in self.aborted if a.last_offset < self.leo]

    def advance_start(self, offset):
        if offset > self.log_start:
            self.log_start = offset
            self.epochs = ec.truncate_from_start(self.epochs, offset)
            self.aborted = [a for a in self.aborted if a.last_offset >= offset]


def check_agrees(plog: PartitionLog, model: Model, rnd: random.Random):
    assert (plog.log_start_offset, plog.log_end_offset) == (model.log_start, model.leo)
    assert plog.epoch_cache.entries == model.epochs
    assert plog.aborted_txns.entries == model.aborted
    offsets = {model.log_start, model.leo} | {rnd.randint(model.log_start, model.leo) for _ in range(4)}
    for offset in sorted(offsets):
        max_bytes = rnd.choice([1, 100, 300, 1000, 10_000])
        max_offset = rnd.choice([None, offset, offset + 3, model.leo])
        max_batches = rnd.choice([None, None, 1, 2, 5])  # a bound on their number too (at least one)
        got = plog.read(offset, max_bytes, max_offset, max_batches)
        want = model.read(offset, max_bytes, max_offset)
        if max_batches is not None:
            want = want[:max_batches]
        assert got.data == b"".join(b[3] for b in want), (offset, max_bytes, max_offset)
        assert got.first_offset == (want[0][0] if want else offset)
        assert got.next_offset == (want[-1][1] if want else offset)
        assert [h.base_offset for h in plog.iter_headers(offset)] == [
            b[0] for b in model.visible() if b[1] > offset
        ]
    for ts in {-1, rnd.randint(0, 1000), 2000}:
        assert plog.offset_for_timestamp(ts) == model.offset_for_timestamp(ts)
    # Indexes: the in-memory index of every segment equals one rebuilt by scanning its file.
    segments = plog._segments
    for seg, nxt in zip(segments, segments[1:]):
        assert seg.index.next_offset == nxt.base_offset  # contiguous segments
    for seg in segments:
        fresh = LogSegment.open_for_recovery(plog.directory, seg.base_offset, plog.config.index_interval_bytes)
        try:
            fresh.rebuild_index(verify_crc=True)
            if not seg.entries_loaded:  # a sealed segment holding only its summary: it and its files agree
                assert fresh.index.summary().same_as(seg.index), seg.base_offset
                seg.load_entries()
            assert fresh.index.same_as(seg.index), seg.base_offset
        finally:
            fresh.close()


config_st = st.builds(
    LogConfig,
    segment_bytes=st.sampled_from([1024, 1024, 1500, 4096]),
    index_interval_bytes=st.sampled_from([1, 200, 1000]),
    retention_bytes=st.sampled_from([-1, 2000, 6000]),
    retention_ms=st.sampled_from([-1, 300]),
    segment_ms=st.sampled_from([10**9, 400]),
    flush_policy=st.sampled_from(["never", "interval", "always"]),
)

OPS = ["append"] * 8 + ["read", "roll", "truncate", "advance", "retention", "reopen", "crash", "abort", "reset"]


# Shrinking a failure of this test can take many minutes (every step touches files); set
# SEMEL_SHRINK=1 to shrink when debugging one.
PHASES = tuple(Phase) if os.environ.get("SEMEL_SHRINK") else (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=80, deadline=None, derandomize=True, phases=PHASES)
@given(config_st, st.lists(st.sampled_from(OPS), min_size=5, max_size=50), st.randoms(use_true_random=False))
def test_log_matches_model(config, ops, rnd):
    # fsync is irrelevant to this model (a "crash" here is a process crash: the page cache
    # survives) and would dominate the runtime; the fsync paths still run, into a counter.
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(os, "fsync"), mock.patch.object(os, "fdatasync"):
        directory = Path(tmp) / "p0"
        now = 0
        plog = PartitionLog.open(directory, config, now)
        model = Model()
        epoch = 0
        try:
            for op in ops:
                now += rnd.randint(0, 100)
                if op == "append":
                    encoded = b""
                    base = model.leo
                    for _ in range(rnd.randint(1, 3)):
                        records = rnd.randint(1, 4)
                        ts = rnd.randint(0, 1000)
                        epoch += rnd.choice([0, 0, 0, 1])
                        raw = make_batch(base, records, ts, epoch, rnd.randint(0, 600))
                        model.batches.append((base, base + records, ts, raw))
                        if not model.epochs or epoch > model.epochs[-1].epoch:
                            model.epochs = ec.assign(model.epochs, epoch, base)
                        encoded += raw
                        base += records
                    model.leo = base
                    header = plog.append(encoded, now)
                    assert header.next_offset == model.leo
                elif op == "roll":
                    plog.roll(now)
                elif op == "truncate":
                    offset = rnd.randint(model.log_start, model.leo)
                    plog.truncate_to(offset)
                    model.truncate_to(offset)
                elif op == "advance":
                    offset = rnd.randint(model.log_start, model.leo)
                    plog.advance_log_start(offset)
                    model.advance_start(offset)
                elif op == "retention":
                    old_start = model.log_start
                    new_start = plog.apply_retention(now)
                    assert new_start >= old_start
                    assert new_start == old_start or any(b[0] == new_start for b in model.batches) or new_start == model.leo
                    model.advance_start(new_start)
                    segs = plog._segments
                    sealed = [
                        SegmentSummary(s.base_offset, s.index.next_offset, s.index.size_bytes, s.index.max_timestamp_ms)
                        for s in segs[:-1]
                    ]
                    assert retention_count(sealed, segs[-1].index.size_bytes, new_start, now, config) == 0
                elif op == "abort" and model.leo > model.log_start:
                    last = model.leo - 1
                    if not model.aborted or last > model.aborted[-1].last_offset:
                        txn = AbortedTxn(rnd.randint(1, 5), rnd.randint(model.log_start, last), last, model.log_start)
                        plog.aborted_txns.add(txn)
                        model.aborted.append(txn)
                elif op == "reset":  # a follower restarting far from the leader's log
                    offset = max(0, model.leo + rnd.randint(-20, 20))
                    plog.truncate_fully_and_start_at(offset)
                    model.batches, model.log_start, model.leo = [], offset, offset
                    model.epochs, model.aborted = (), []
                elif op == "reopen":
                    plog.close()
                    plog = PartitionLog.open(directory, config, now)
                elif op == "crash":
                    disk_executor.shared().wait_idle(directory)  # rolls finished their disk work first
                    plog._close_files()  # what a killed process leaves: page cache, no marker, no index files
                    plog = PartitionLog.open(directory, config, now)
                check_agrees(plog, model, rnd)
                event(f"{op} segs>{min(len(plog._segments), 3)}")
        finally:
            plog.close()
            disk_executor.shared().wait_idle(directory)  # a roll's disk job still writing: the rmtree raced it


def test_flush_policy_never_does_not_fsync_on_append(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(threading.current_thread()) or real(fd))
    for policy, expected in (("never", 0), ("always", 5)):
        calls.clear()
        plog = PartitionLog.open(tmp_path / policy, LogConfig(flush_policy=policy), 0)
        calls.clear()
        for i in range(5):
            plog.append(make_batch(i, 1, 0, 0, 10), i)
        assert len(calls) == expected, policy
        assert all(t is threading.current_thread() for t in calls), "always: synced before append returns"
        plog.close()
    calls.clear()
    plog = PartitionLog.open(tmp_path / "interval", LogConfig(flush_policy="interval", flush_interval_ms=100), 0)
    calls.clear()
    for i, now in enumerate([10, 50, 99, 100, 150, 250]):
        plog.append(make_batch(i, 1, 0, 0, 10), now)
    assert background_sync.shared().wait_idle()
    assert len(calls) == 2  # at 100 and at 250
    assert all(t is not threading.current_thread() for t in calls), "interval: synced off the appending thread"
    plog.close()


def test_background_sync_keeps_the_file_open_and_bounds_its_queue(tmp_path, monkeypatch):
    """The syncer works on a duplicate descriptor (the segment may be closed meanwhile); a full
    queue makes the caller sync inline."""
    gate = threading.Event()
    syncing = threading.Event()
    synced = []
    real = os.fdatasync

    def slow(fd):
        syncing.set()
        gate.wait(5)
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    syncer = background_sync.BackgroundSync(max_queued=1)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    assert syncer.submit(fd, "f")
    os.close(fd)  # the caller's descriptor goes; the queued duplicate still names the file
    assert syncing.wait(5), "the syncer took the first job"
    fd2 = os.open(path, os.O_WRONLY)
    assert syncer.submit(fd2, "f"), "one may wait while one is being synced"
    assert not syncer.submit(fd2, "f"), "the queue is full: sync inline"
    gate.set()
    assert syncer.wait_idle()
    os.close(fd2)
    assert synced == [path.stat().st_ino] * 2 and syncer.synced == 2 and syncer.failures == 0


def test_interval_syncs_drop_all_but_a_window_of_the_log_from_the_page_cache(tmp_path, monkeypatch):
    """After a background sync the active segment keeps only its last PAGE_CACHE_WINDOW_BYTES
    cached (POSIX_FADV_DONTNEED on the synced range before it), a sealed segment nothing; a
    window of 0 leaves the page cache to the OS."""
    advised = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        advised.append((os.fstat(fd).st_ino, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    monkeypatch.setattr(limits, "PAGE_CACHE_WINDOW_BYTES", 1000)
    config = LogConfig(flush_policy="interval", flush_interval_ms=100, segment_bytes=4000)
    plog = PartitionLog.open(tmp_path / "w", config, 0)
    for i in range(30):  # ~300 bytes a batch: rolls about every 13 batches
        plog.append(make_batch(i, 1, 0, 0, 250), i * 100)
    assert background_sync.shared().wait_idle()
    assert disk_executor.shared().wait_idle()  # a sealed segment is dropped by its roll job
    segments = {seg._path(LOG_SUFFIX).stat().st_ino: seg for seg in plog._segments}
    active = plog._segments[-1]
    assert advised and all(a[3] == os.POSIX_FADV_DONTNEED and a[1] == 0 for a in advised)
    for seg in plog._segments[:-1]:  # sealed: dropped whole at the roll
        assert (seg._path(LOG_SUFFIX).stat().st_ino, 0, seg.index.size_bytes, os.POSIX_FADV_DONTNEED) in advised
    on_active = [a[2] for a in advised if a[0] == active._path(LOG_SUFFIX).stat().st_ino]
    assert on_active and max(on_active) <= active.index.size_bytes - 1000
    assert set(a[0] for a in advised) <= set(segments)
    plog.close()
    advised.clear()
    monkeypatch.setattr(limits, "PAGE_CACHE_WINDOW_BYTES", 0)
    plog = PartitionLog.open(tmp_path / "keep", config, 0)
    for i in range(30):
        plog.append(make_batch(i, 1, 0, 0, 250), i * 100)
    assert background_sync.shared().wait_idle()
    assert advised == []
    plog.close()
