"""The disk executor (ordering per key, the bound, cancellation) and the log work it takes off
the appending thread: a roll's fsyncs and checkpoint, retention's deletions, and the races
of each with truncation (storage/log.py, "Off the appending thread")."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path

import pytest
from semel.storage import disk_executor
from semel.storage.batch import BatchHeader, encode_batch
from semel.storage.disk_executor import DiskExecutor
from semel.storage.log import LogConfig, PartitionLog


def make_batch(base, ts=0, payload_bytes=300):
    header = BatchHeader(base, 1, 0, -1, -1, -1, 2, 0, ts, ts)
    return encode_batch(header, random.Random(base).randbytes(payload_bytes))


def gate_key(key) -> threading.Event:
    """Hold every later job of `key` until the returned event is set."""
    gate = threading.Event()
    assert disk_executor.shared().submit(key, lambda: gate.wait(10), "gate") is not None
    return gate


# --- the executor ---------------------------------------------------------------------------


def test_jobs_of_one_key_run_in_order_and_one_at_a_time():
    ex = DiskExecutor(threads=4)
    running, order, overlaps = [0], [], []
    lock = threading.Lock()

    def job(i):
        def run():
            with lock:
                running[0] += 1
                overlaps.append(running[0])
            threading.Event().wait(0.002)  # long enough for another thread to start if it could
            with lock:
                running[0] -= 1
                order.append(i)
        return run

    for i in range(20):
        assert ex.submit("k", job(i), f"job {i}") is not None
    assert ex.wait_idle()
    assert order == list(range(20))
    assert max(overlaps) == 1


def test_a_full_executor_refuses_and_the_caller_does_the_work():
    ex = DiskExecutor(threads=1, max_jobs=2)
    gate = threading.Event()
    assert ex.submit("a", lambda: gate.wait(10), "gate") is not None
    assert ex.submit("b", lambda: None, "second") is not None
    assert ex.submit("c", lambda: None, "third") is None
    assert ex.refused == 1
    gate.set()
    assert ex.wait_idle()


def test_a_cancelled_job_that_has_not_started_never_runs():
    ex = DiskExecutor(threads=1)
    gate = threading.Event()
    ran = []

    async def main():
        ex.submit("k", lambda: gate.wait(10), "gate")
        task = asyncio.ensure_future(ex.run("k", lambda: ran.append(1), "load"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    gate.set()
    assert ex.wait_idle()
    assert ran == []


def test_run_answers_on_the_loop_with_the_jobs_result_from_a_disk_thread():
    ex = DiskExecutor(threads=1)

    async def main():
        return await ex.run("k", lambda: threading.current_thread().name, "name")

    assert asyncio.run(main()).startswith(disk_executor.THREAD_NAME_PREFIX)


# --- a roll ----------------------------------------------------------------------------------


def fsync_threads(monkeypatch) -> list[str]:
    names: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def wrapped(fd, real=real):
            names.append(threading.current_thread().name)
            return real(fd)

        monkeypatch.setattr(os, name, wrapped)
    return names


def synced_paths(monkeypatch) -> list[Path]:
    """The files and directories fsynced from now on (wraps the wrappers fsync_threads set)."""
    paths: list[Path] = []
    for name in ("fsync", "fdatasync"):
        inner = getattr(os, name)

        def wrapped(fd, inner=inner):
            paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
            return inner(fd)

        monkeypatch.setattr(os, name, wrapped)
    return paths


@pytest.mark.parametrize("policy", ["interval", "always"])
def test_a_roll_syncs_and_checkpoints_on_a_disk_thread_not_the_appending_one(tmp_path, monkeypatch, policy):
    config = LogConfig(segment_bytes=1024, flush_policy=policy, flush_interval_ms=10**9)
    plog = PartitionLog.open(tmp_path, config, 0)
    for _ in range(2):
        plog.append(make_batch(plog.log_end_offset), 0)
    assert len(plog.segment_base_offsets) == 1
    assert disk_executor.shared().wait_idle(tmp_path)  # the first epoch's checkpoint job is done
    gate = gate_key(tmp_path)
    names = fsync_threads(monkeypatch)
    synced = synced_paths(monkeypatch)
    appender = threading.current_thread().name
    plog.append(make_batch(plog.log_end_offset), 0)  # rolls
    sealed_base, new_base = plog.segment_base_offsets
    if policy == "interval":
        assert names == []  # nothing synced by the appending thread
    else:  # "always" syncs the append itself, in the new segment, and the directory entry that
        # names the new segment (else a power cut could drop the whole segment, see storage/power_cut.py);
        # the roll's syncs of the sealed segment still wait
        assert names == [appender, appender], names
        assert synced == [tmp_path / f"{new_base:020d}.log", tmp_path], synced
    assert plog.recovery_point == sealed_base  # not durable yet
    assert not (tmp_path / f"{sealed_base:020d}.index").exists()
    names.clear()
    gate.set()
    assert disk_executor.shared().wait_idle(tmp_path)
    assert names and all(n.startswith(disk_executor.THREAD_NAME_PREFIX) for n in names)
    assert plog.recovery_point == new_base
    assert (tmp_path / f"{sealed_base:020d}.index").exists()
    assert not list(tmp_path.glob("*.tmp"))
    plog.close()


def test_a_truncation_cancels_a_pending_roll_job(tmp_path):
    config = LogConfig(segment_bytes=1024, flush_policy="interval", flush_interval_ms=10**9)
    plog = PartitionLog.open(tmp_path, config, 0)
    while len(plog.segment_base_offsets) < 2:
        plog.append(make_batch(plog.log_end_offset), 0)
    sealed_base, new_base = plog.segment_base_offsets
    assert disk_executor.shared().wait_idle(tmp_path)
    assert plog.recovery_point == new_base
    gate = gate_key(tmp_path)
    while len(plog.segment_base_offsets) < 3:  # a roll whose job waits behind the gate
        plog.append(make_batch(plog.log_end_offset), 0)
    third = plog.segment_base_offsets[-1]
    plog.truncate_to(new_base + 2)  # cuts inside the segment the pending job would seal
    gate.set()
    assert disk_executor.shared().wait_idle(tmp_path)
    assert plog.recovery_point == new_base  # never raised past the cut
    assert plog.segment_base_offsets == [sealed_base, new_base]
    assert not (tmp_path / f"{third:020d}.log").exists()
    assert not (tmp_path / f"{new_base:020d}.index").exists()  # the cancelled job wrote no index
    assert not list(tmp_path.glob("*.tmp"))
    plog.close()
    reopened = PartitionLog.open(tmp_path, config, 0)
    assert reopened.log_end_offset == new_base + 2
    reopened.close()


def test_a_truncation_waits_out_a_roll_job_queued_behind_others(tmp_path):
    """The roll job has not started when the cut comes: it must do nothing at all."""
    config = LogConfig(segment_bytes=1024, flush_policy="interval", flush_interval_ms=10**9)
    plog = PartitionLog.open(tmp_path, config, 0)
    gate = gate_key(tmp_path)
    while len(plog.segment_base_offsets) < 2:
        plog.append(make_batch(plog.log_end_offset), 0)
    sealed_base, new_base = plog.segment_base_offsets
    plog.truncate_to(sealed_base + 2)  # into the sealed segment; the newer one goes
    gate.set()
    assert disk_executor.shared().wait_idle(tmp_path)
    assert plog.recovery_point == sealed_base
    assert not (tmp_path / f"{sealed_base:020d}.index").exists()  # the cancelled job wrote no index
    assert not list(tmp_path.glob("*.tmp"))
    plog.close()


def test_retention_deletes_files_on_a_disk_thread_after_the_checkpoint(tmp_path, monkeypatch):
    config = LogConfig(segment_bytes=1024, retention_bytes=1, flush_policy="interval", flush_interval_ms=10**9)
    plog = PartitionLog.open(tmp_path, config, 0)
    while len(plog.segment_base_offsets) < 3:
        plog.append(make_batch(plog.log_end_offset), 0)
    assert disk_executor.shared().wait_idle(tmp_path)
    first = plog.segment_base_offsets[0]
    gate = gate_key(tmp_path)
    deleted_by: list[str] = []
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        deleted_by.append(threading.current_thread().name)
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    start = plog.apply_retention(10)
    assert start == plog.segment_base_offsets[0] > first  # in memory at once
    assert (tmp_path / f"{first:020d}.log").exists()  # the files wait for the disk thread
    gate.set()
    assert disk_executor.shared().wait_idle(tmp_path)
    assert not (tmp_path / f"{first:020d}.log").exists()
    assert deleted_by and all(n.startswith(disk_executor.THREAD_NAME_PREFIX) for n in deleted_by)
    plog.close()
    reopened = PartitionLog.open(tmp_path, config, 0)
    assert reopened.log_start_offset == start
    reopened.close()


def test_a_new_leader_epoch_is_checkpointed_by_a_disk_job_and_close_persists_it(tmp_path, monkeypatch):
    config = LogConfig(flush_policy="interval", flush_interval_ms=10**9)
    plog = PartitionLog.open(tmp_path, config, 0)
    plog.append(make_batch(0), 0)
    assert disk_executor.shared().wait_idle(tmp_path)
    gate = gate_key(tmp_path)
    names = fsync_threads(monkeypatch)
    plog.epoch_cache.assign(5, plog.log_end_offset)  # becoming leader at epoch 5
    assert names == []  # not written by the appending thread
    assert plog.epoch_cache.latest_epoch == 5
    plog.close()  # writes the entries itself: the queued job must not write older ones after it
    gate.set()
    assert disk_executor.shared().wait_idle(tmp_path)
    reopened = PartitionLog.open(tmp_path, config, 0)
    assert reopened.epoch_cache.latest_epoch == 5
    reopened.close()


def test_a_queued_epoch_checkpoint_never_overwrites_a_truncations_newer_one(tmp_path):
    config = LogConfig(flush_policy="interval", flush_interval_ms=10**9)
    plog = PartitionLog.open(tmp_path, config, 0)
    plog.append(make_batch(0), 0)
    gate = gate_key(tmp_path)
    plog.epoch_cache.assign(3, plog.log_end_offset)  # queued behind the gate
    plog.truncate_to(plog.log_end_offset)  # forgets epoch 3 (no data in it), persisted at once
    gate.set()
    assert disk_executor.shared().wait_idle(tmp_path)
    from semel.storage import epoch_cache as ec
    from semel.storage.checkpoint import read_json

    assert ec.entries_from_json(read_json(tmp_path / "leader-epoch.checkpoint")) == plog.epoch_cache.entries
    assert plog.epoch_cache.latest_epoch == 0
    plog.close()


@pytest.mark.parametrize("policy", ["interval", "always"])
def test_a_new_log_is_synced_by_a_disk_job_unless_every_append_must_be_durable(tmp_path, monkeypatch, policy):
    names = fsync_threads(monkeypatch)
    opener = threading.current_thread().name
    plog = PartitionLog.open(tmp_path / "new", LogConfig(flush_policy=policy), 0)
    assert disk_executor.shared().wait_idle(tmp_path / "new")
    if policy == "interval":
        assert names and not any(n == opener for n in names)
    else:
        assert opener in names
    plog.close()
    names.clear()
    reopened = PartitionLog.open(tmp_path / "new", LogConfig(flush_policy=policy), 0)  # not new any more
    assert opener in names
    reopened.close()
