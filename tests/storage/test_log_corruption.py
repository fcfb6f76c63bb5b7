"""Damaged files: a torn or corrupt tail is cut on open after an unclean shutdown; a corrupt
batch in a trusted segment is never served (reads raise CorruptLogError, STORAGE_ERROR);
deleted or damaged index and checkpoint files are rebuilt; bad appends write nothing."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from semel.storage import disk_executor
from semel.storage.batch import BatchHeader, CorruptBatchError, encode_batch
from semel.storage.errors import error_code_of
from semel.storage.log import (
    BatchTooLargeError,
    CorruptLogError,
    InvalidAppendError,
    LogConfig,
    OffsetOutOfRange,
    PartitionLog,
)
from semel.storage.segment import LogSegment
from semel.v1.common_pb2 import ErrorCode

CONFIG = LogConfig(segment_bytes=4096, index_interval_bytes=256)


def make_batch(base, records=2, ts=0, epoch=0, payload_bytes=200):
    header = BatchHeader(base, records - 1, epoch, -1, -1, -1, records, 0, ts, ts)
    return encode_batch(header, random.Random(base).randbytes(payload_bytes))


def fill(directory: Path, count=60, config=CONFIG) -> tuple[PartitionLog, list[bytes]]:
    plog = PartitionLog.open(directory, config, 0)
    batches = []
    for i in range(count):
        b = make_batch(plog.log_end_offset, ts=i, epoch=i // 20)
        plog.append(b, i)
        batches.append(b)
    return plog, batches


def crash(plog: PartitionLog) -> None:
    disk_executor.shared().wait_idle(plog.directory)  # rolls finished their disk work before the crash
    plog._close_files()  # no index files, no checkpoint update, no clean-shutdown marker


def seg_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def flip(path: Path, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x40]))


def read_all(plog: PartitionLog) -> bytes:
    out, offset = [], plog.log_start_offset
    while offset < plog.log_end_offset:
        r = plog.read(offset, 1 << 20)
        out.append(r.data)
        offset = r.next_offset
    return b"".join(out)


@pytest.mark.parametrize("history", ["fresh", "after_clean_reopen"])
@pytest.mark.parametrize("where", ["header", "payload", "crc"])
def test_corrupt_tail_is_cut_after_unclean_shutdown(tmp_path, where, history):
    plog, batches = fill(tmp_path, count=40)
    if history == "after_clean_reopen":
        plog.close()  # leaves the clean-shutdown marker, which the next open must consume
        plog = PartitionLog.open(tmp_path, CONFIG, 0)
    for i in range(20):
        b = make_batch(plog.log_end_offset, ts=i)
        plog.append(b, i)
        batches.append(b)
    crash(plog)
    active = seg_files(tmp_path)[-1]
    base = int(active.name[:20])
    kept = [b for b in batches if int.from_bytes(b[:8], "big") < base]
    in_active = batches[len(kept) :]
    assert len(in_active) >= 3
    victim = len(in_active) - 2  # the second-to-last batch of the active segment
    pos = sum(len(b) for b in in_active[:victim]) + {"header": 30, "payload": 100, "crc": 13}[where]
    flip(active, pos)
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    survivors = kept + in_active[:victim]
    assert plog.log_end_offset == 2 * len(survivors)
    assert read_all(plog) == b"".join(survivors)
    assert active.stat().st_size == sum(len(b) for b in in_active[:victim])
    # The log goes on from the cut.
    plog.append(make_batch(plog.log_end_offset), 100)
    plog.close()


def test_torn_tail_is_cut(tmp_path):
    plog, batches = fill(tmp_path)
    crash(plog)
    active = seg_files(tmp_path)[-1]
    size = active.stat().st_size
    os.truncate(active, size - 50)  # the last write reached the disk only in part
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert plog.log_end_offset == 2 * (len(batches) - 1)
    assert read_all(plog) == b"".join(batches[:-1])
    plog.close()


def test_garbage_after_the_tail_is_cut(tmp_path):
    plog, batches = fill(tmp_path)
    crash(plog)
    with open(seg_files(tmp_path)[-1], "ab") as f:
        f.write(b"\x00" * 100)  # a preallocated / zero-filled tail after power loss
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert read_all(plog) == b"".join(batches)
    plog.close()


@pytest.mark.parametrize("clean", [True, False])
@pytest.mark.parametrize("where", ["payload", "length"])
def test_corrupt_batch_in_a_trusted_middle_segment_is_never_served(tmp_path, clean, where):
    plog, batches = fill(tmp_path)
    if clean:
        plog.close()
    else:
        crash(plog)
    middle = seg_files(tmp_path)[1]
    base = int(middle.name[:20])
    flip(middle, {"payload": 100, "length": 10}[where])  # the first batch of the middle segment
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert plog.log_end_offset == 2 * len(batches)  # nothing cut: the segment is below the recovery point
    with pytest.raises(CorruptLogError) as info:
        plog.read(base, 1 << 20)
    assert isinstance(info.value, CorruptBatchError)
    assert error_code_of(info.value) == ErrorCode.STORAGE_ERROR
    assert str(middle) in str(info.value)
    try:  # a read that would run across it stops before it or raises
        assert plog.read(0, 1 << 20).next_offset <= base
    except CorruptLogError:
        pass
    with pytest.raises(CorruptLogError):
        list(plog.iter_headers(0))
    # Other segments still serve.
    assert plog.read(0, 100).first_offset == 0
    last = plog.read(plog.log_end_offset - 2, 1 << 20)
    assert last.data == batches[-1]
    plog.close()


def test_corrupt_middle_segment_after_the_recovery_point_cuts_the_log(tmp_path):
    plog, batches = fill(tmp_path)
    crash(plog)
    # Pretend the recovery point never moved: every segment is re-verified.
    (tmp_path / "log.checkpoint").unlink()
    middle = seg_files(tmp_path)[1]
    base = int(middle.name[:20])
    flip(middle, 100)
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert plog.log_end_offset == base
    assert len(seg_files(tmp_path)) == 2
    assert read_all(plog) == b"".join(b for b in batches if int.from_bytes(b[:8], "big") < base)
    plog.close()


@pytest.mark.parametrize("damage", ["delete", "flip", "truncate", "stale"])
def test_damaged_index_files_are_rebuilt(tmp_path, damage):
    plog, batches = fill(tmp_path, count=120)
    disk_executor.shared().wait_idle(plog.directory)  # every roll wrote its index files
    for seg in plog._segments:
        seg.load_entries()  # sealed segments beyond the few last looked up keep only their summary
    before = {s.base_offset: s.index for s in plog._segments}
    reads = {o: plog.read(o, 700) for o in range(0, plog.log_end_offset, 7)}
    ts_answers = {ts: plog.offset_for_timestamp(ts) for ts in range(-1, 125, 5)}
    plog.close()
    for path in sorted(tmp_path.glob("*.index")) + sorted(tmp_path.glob("*.timeindex")):
        if damage == "delete":
            path.unlink()
        elif damage == "flip":
            flip(path, len(path.read_bytes()) // 2)
        elif damage == "truncate":
            os.truncate(path, 20)
        elif damage == "stale":  # an index of a shorter segment (e.g. before a crash)
            seg = int(path.name[:20])
            other = before[seg]
            if path.suffix == ".index" and other.size_bytes:
                shorter = LogSegment.open_for_recovery(tmp_path, seg, CONFIG.index_interval_bytes)
                shorter.index = other
                shorter.index.size_bytes -= 1  # CRC is valid but it no longer matches the log
                path.write_bytes(shorter.index.encode_offset_index())
                shorter.index.size_bytes += 1
                shorter.close()
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    for seg in plog._segments:
        seg.load_entries()  # trusted segments open with their summary only; a damaged time index shows here
        assert seg.index.same_as(before[seg.base_offset])
    for offset, r in reads.items():
        assert plog.read(offset, 700) == r
    assert {ts: plog.offset_for_timestamp(ts) for ts in ts_answers} == ts_answers
    plog.close()


def test_damaged_checkpoints(tmp_path):
    plog, batches = fill(tmp_path)
    plog.advance_log_start(7)
    epochs = plog.epoch_cache.entries
    plog.close()
    flip(tmp_path / "leader-epoch.checkpoint", 3)
    flip(tmp_path / "log.checkpoint", 3)
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    # A lost log checkpoint: every segment is verified; the log start falls back to the
    # first segment (it can only be re-advanced, never served below what is stored).
    assert plog.log_end_offset == 2 * len(batches)
    assert read_all(plog) == b"".join(batches)
    # A lost epoch checkpoint is rebuilt from the batches' leader epochs.
    assert [e.epoch for e in plog.epoch_cache.entries] == [e.epoch for e in epochs]
    plog.close()


def test_bad_appends_write_nothing(tmp_path):
    plog, batches = fill(tmp_path, count=5)
    leo, size = plog.log_end_offset, plog.size_bytes
    good = make_batch(leo)
    corrupt = bytearray(good)
    corrupt[80] ^= 1
    with pytest.raises(CorruptBatchError):
        plog.append(good + make_batch(leo + 2)[:-1], 10)  # the second batch is torn: nothing is written
    with pytest.raises(CorruptBatchError) as info:
        plog.append(bytes(corrupt), 10)
    assert error_code_of(info.value) == ErrorCode.CORRUPT_MESSAGE
    with pytest.raises(CorruptBatchError):
        plog.append(good[:-1], 10)  # torn
    with pytest.raises(InvalidAppendError):
        plog.append(make_batch(leo + 1), 10)  # gap
    with pytest.raises(InvalidAppendError):
        plog.append(good + make_batch(leo + 5), 10)  # the second batch does not continue the first
    small = PartitionLog.open(tmp_path / "small", LogConfig(max_batch_bytes=1000), 0)
    with pytest.raises(BatchTooLargeError) as too_large:
        small.append(make_batch(0, payload_bytes=2000), 0)
    assert error_code_of(too_large.value) == ErrorCode.RECORD_BATCH_TOO_LARGE
    assert "max_batch_bytes" in str(too_large.value)
    small.close()
    assert (plog.log_end_offset, plog.size_bytes) == (leo, size)
    plog.append(good, 11)
    assert plog.read(leo, 1).data == good
    with pytest.raises(OffsetOutOfRange):
        plog.read(plog.log_end_offset + 1, 100)
    plog.close()


def test_a_second_open_of_the_same_directory_fails(tmp_path):
    plog, _ = fill(tmp_path, count=2)
    with pytest.raises(RuntimeError, match="open in another process"):
        PartitionLog.open(tmp_path, CONFIG, 0)
    plog.close()
    assert (tmp_path / ".clean_shutdown").exists()
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert not (tmp_path / ".clean_shutdown").exists()  # a crash from here on is unclean
    plog.close()


@pytest.mark.parametrize("clean", [True, False])
def test_a_lost_middle_segment_cuts_the_log_at_the_gap(tmp_path, clean):
    plog, batches = fill(tmp_path)
    if clean:
        plog.close()
    else:
        crash(plog)
    files = seg_files(tmp_path)
    assert len(files) >= 4
    files[2].unlink()
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    end = int(files[2].name[:20])
    assert plog.log_end_offset == end
    assert plog.segment_base_offsets == [int(f.name[:20]) for f in files[:2]]
    assert read_all(plog) == b"".join(b for b in batches if int.from_bytes(b[:8], "big") < end)
    plog.append(make_batch(end), 0)  # and it goes on from there
    plog.close()


def test_a_framing_break_in_a_trusted_segment_without_index_files_cuts_there(tmp_path):
    plog, batches = fill(tmp_path)
    plog.close()
    middle = seg_files(tmp_path)[1]
    base = int(middle.name[:20])
    first = next(b for b in batches if int.from_bytes(b[:8], "big") == base)
    flip(middle, len(first) + 10)  # the length field of the second batch of the segment
    for path in tmp_path.glob("*.index"):
        path.unlink()
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert plog.log_end_offset == base + 2  # only the first batch of that segment is reachable
    assert read_all(plog) == b"".join(b for b in batches if int.from_bytes(b[:8], "big") <= base)
    plog.close()


def test_recovery_cut_also_cuts_epoch_cache_and_aborted_index(tmp_path):
    from semel.storage.aborted_txns import AbortedTxn

    plog, batches = fill(tmp_path, count=30)
    plog.aborted_txns.add(AbortedTxn(1, 2, 9, 2))
    cut = plog.log_end_offset
    seven = make_batch(cut, epoch=7)
    plog.append(seven, 0)
    plog.append(make_batch(cut + 2, epoch=8), 0)
    plog.aborted_txns.add(AbortedTxn(1, 20, cut + 1, 20))  # marker in the tail
    assert [e.epoch for e in plog.epoch_cache.entries] == [0, 1, 7, 8]
    crash(plog)
    active = seg_files(tmp_path)[-1]
    flip(active, active.stat().st_size - len(seven) - 30)  # damage the epoch-7 batch: cut there
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert plog.log_end_offset == cut
    # Epoch 8 began after the cut: gone. Epoch 7 began exactly at the new LEO: kept, like an
    # epoch a new leader assigns before writing (its range is empty).
    assert [(e.epoch, e.start_offset) for e in plog.epoch_cache.entries][-2:] == [(1, 40), (7, cut)]
    assert plog.aborted_txns.entries == [AbortedTxn(1, 2, 9, 2)]
    plog.close()


def test_a_segment_cut_behind_the_logs_back_is_not_served_as_empty(tmp_path):
    plog, batches = fill(tmp_path, count=10)
    active = seg_files(tmp_path)[-1]
    os.truncate(active, active.stat().st_size - 10)  # another process damages the open file
    with pytest.raises(CorruptLogError):
        plog.read(plog.log_end_offset - 2, 1 << 20)  # its header is still there, its payload not
    os.truncate(active, 30)
    with pytest.raises(CorruptLogError):
        plog.read(plog.log_end_offset - 2, 1 << 20)
    plog.close()


def test_a_valid_batch_at_the_wrong_place_is_not_served(tmp_path):
    """A misdirected write: a batch with a good CRC but another offset inside a segment."""
    from semel.storage.batch import with_offsets

    plog, batches = fill(tmp_path)
    plog.close()
    middle = seg_files(tmp_path)[1]
    base = int(middle.name[:20])
    i = next(k for k, b in enumerate(batches) if int.from_bytes(b[:8], "big") == base)
    stray = with_offsets(batches[i + 1], base + 1000, 0)  # same size, valid CRC, wrong offset
    with open(middle, "r+b") as f:
        f.seek(len(batches[i]))
        f.write(stray)
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert plog.read(base, 1).data == batches[i]  # the batch before it still serves
    with pytest.raises(CorruptLogError, match="expected"):
        plog.read(base, 1 << 20)  # a read running into it
    with pytest.raises(CorruptLogError):
        plog.read(base + 2, 1 << 20)  # a read starting at it
    plog.close()


def test_a_failed_write_leaves_no_partial_batch(tmp_path, monkeypatch):
    import errno

    import semel.storage.checkpoint as checkpoint

    plog, batches = fill(tmp_path, count=5)
    leo, size = plog.log_end_offset, plog.size_bytes
    real_write = os.write
    calls = []

    def disk_full_after_half(fd, data):
        if not calls:
            calls.append(fd)
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "write", disk_full_after_half)
    with pytest.raises(OSError):
        plog.append(make_batch(leo), 100)
    monkeypatch.undo()
    assert (plog.log_end_offset, plog.size_bytes) == (leo, size)
    assert seg_files(tmp_path)[-1].stat().st_size == sum(
        len(b) for b in batches if int.from_bytes(b[:8], "big") >= int(seg_files(tmp_path)[-1].name[:20])
    )
    plog.append(make_batch(leo), 101)
    crash(plog)
    plog = PartitionLog.open(tmp_path, CONFIG, 0)
    assert read_all(plog) == b"".join(batches) + make_batch(leo)
    plog.close()
