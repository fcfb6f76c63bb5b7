"""`semel log dump` over segments written by the real storage engine (PartitionStore + RocksDB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from semel.cli.main import main as cli_main
from semel.storage.batch import ATTR_TRANSACTIONAL, BatchHeader, encode_batch
from semel.storage.kv import KvStore, partition_key
from semel.storage.log_policy import LogConfig
from semel.storage.partition import PartitionStore
from semel.storage.segment_dump import BatchInfo, NotASegmentError, SegmentEnd, walk_segment

CONFIG = LogConfig(flush_policy="never")


def client_batch(pid: int, epoch: int, seq: int, count: int, *, txn: bool, ts: int) -> bytes:
    attrs = ATTR_TRANSACTIONAL if txn else 0
    return encode_batch(BatchHeader(0, count - 1, -1, pid, epoch, seq, count, attrs, ts, ts + count - 1), b"x" * 40)


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    """One segment: an idempotent batch (0-2), a transactional batch (3-4), its ABORT marker (5),
    a transactional batch of another producer (6) and its COMMIT marker (7)."""
    with KvStore.open(tmp_path / "kv") as kv:
        store = PartitionStore.open(tmp_path / "orders-0", CONFIG, kv, partition_key("orders", 0), 0)
        results = store.append_as_leader([client_batch(7, 0, 0, 3, txn=False, ts=1_000)], 4, 1_000)
        results += store.append_as_leader([client_batch(8, 2, 0, 2, txn=True, ts=2_000)], 4, 2_000)
        assert store.append_marker(8, 2, commit=False, coordinator_epoch=11, leader_epoch=4, now_ms=2_500).ok
        results += store.append_as_leader([client_batch(9, 0, 0, 1, txn=True, ts=3_000)], 5, 3_000)
        assert store.append_marker(9, 0, commit=True, coordinator_epoch=12, leader_epoch=5, now_ms=3_500).ok
        assert all(r.ok for r in results)
        store.close()
    (path,) = (tmp_path / "orders-0").glob("*.log")
    return path


def dump(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main(["log", "dump", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_dump_lists_every_batch_with_markers(segment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dump(capsys, str(segment), "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    batches, summary = lines[:-1], lines[-1]["summary"]
    assert [(b["base_offset"], b["last_offset"]) for b in batches] == [(0, 2), (3, 4), (5, 5), (6, 6), (7, 7)]
    assert [b["leader_epoch"] for b in batches] == [4, 4, 4, 5, 5]
    assert [(b["producer_id"], b["producer_epoch"], b["base_sequence"]) for b in batches] == [
        (7, 0, 0), (8, 2, 0), (8, 2, -1), (9, 0, 0), (9, 0, -1)]
    assert [b["record_count"] for b in batches] == [3, 2, 1, 1, 1]
    assert [b["transactional"] for b in batches] == [False, True, True, True, True]
    assert [b["control"] for b in batches] == [False, False, True, False, True]
    assert [b.get("marker") for b in batches] == [None, None, "ABORT", None, "COMMIT"]
    assert [b.get("coordinator_epoch") for b in batches] == [None, None, 11, None, 12]
    assert (batches[0]["base_timestamp_ms"], batches[0]["max_timestamp_ms"]) == (1_000, 1_002)
    assert all(b["crc"] == "ok" and "problems" not in b for b in batches)
    assert batches[1]["position"] == batches[0]["size_bytes"]
    assert summary == {"batches": 5, "records": 8, "valid_bytes": segment.stat().st_size,
                       "size_bytes": segment.stat().st_size, "problems": 0, "stop_reason": None}


def test_text_dump_is_one_line_per_batch(segment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = dump(capsys, str(segment))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith(f"segment {segment}: ") and "base offset 0 (from the file name)" in lines[0]
    assert lines[3].startswith("base_offset=5 last_offset=5 ")
    assert "control=true marker=ABORT coordinator_epoch=11 crc=ok" in lines[3]
    assert "producer_id=8 producer_epoch=2 base_sequence=0 record_count=2" in lines[2]
    assert lines[-1] == f"batches=5 records=8 valid_bytes={segment.stat().st_size} " \
                        f"size_bytes={segment.stat().st_size} problems=0"


def test_flipped_bit_is_a_crc_mismatch_and_the_walk_goes_on(segment: Path, capsys) -> None:
    data = bytearray(segment.read_bytes())
    first_size = next(i for i in walk_segment(bytes(data), 0) if isinstance(i, BatchInfo)).header.size_bytes
    data[first_size - 1] ^= 0x01  # last payload byte of the first batch
    damaged = segment.with_name("00000000000000000000.log.copy")
    damaged.write_bytes(data)
    code, out, _ = dump(capsys, str(damaged), "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert lines[0]["crc"] == "mismatch" and "CRC mismatch" in lines[0]["problems"][0]
    assert [b["crc"] for b in lines[1:-1]] == ["ok"] * 4
    assert lines[-1]["summary"]["problems"] == 1


def test_torn_tail_and_offset_gap_are_reported(segment: Path) -> None:
    data = segment.read_bytes()
    last_position = [i for i in walk_segment(data, 0) if isinstance(i, BatchInfo)][-1].position
    for cut, reason in ((last_position + 61, "torn batch at position"), (last_position + 60, "torn batch header")):
        items = list(walk_segment(data[:cut], 0))
        end = items[-1]
        assert isinstance(end, SegmentEnd) and (end.stop_reason or "").startswith(reason)
        assert end.valid_bytes == last_position and len(items) == 5  # four whole batches, then the end
    gap = list(walk_segment(data, 100))  # the file name would claim base offset 100
    assert gap[0].problems == ("base offset 0, expected 100",)  # type: ignore[union-attr]


def test_files_that_are_not_segments_get_a_readable_error(segment: Path, tmp_path: Path, capsys) -> None:
    index_files = list(segment.parent.glob("*.index"))
    assert index_files, "a closed log writes its index files"
    text = tmp_path / "notes.txt"
    text.write_text("this is not a segment, but it is longer than one batch header of sixty-one bytes\n")
    for path in (index_files[0], text):
        code, out, err = dump(capsys, str(path))
        assert code == 2
        assert err.startswith(f"semel log dump: {path} is not a Semel segment file: ")
        assert "Traceback" not in err
    for path in (tmp_path / "missing.log", tmp_path):
        code, _, err = dump(capsys, str(path))
        assert code == 2 and err.startswith(f"semel log dump: cannot read {path}: ")
    with pytest.raises(NotASegmentError):
        list(walk_segment(b"\x00" * 100, None))


def test_empty_segment_is_valid(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "00000000000000000042.log"
    empty.write_bytes(b"")
    code, out, _ = dump(capsys, str(empty), "--json")
    assert code == 0 and json.loads(out)["summary"]["batches"] == 0


def test_installed_command_runs_without_writing(segment: Path) -> None:
    """Through the `semel` entry point; the file is opened read-only (mode and mtime unchanged)."""
    os.chmod(segment, 0o444)
    before = segment.stat().st_mtime_ns
    semel = Path(sys.executable).with_name("semel")
    proc = subprocess.run([str(semel), "log", "dump", str(segment)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "marker=COMMIT coordinator_epoch=12" in proc.stdout
    assert segment.stat().st_mtime_ns == before
