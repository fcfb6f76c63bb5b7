"""A partition log on a real, full file system (a size-limited tmpfs): ENOSPC never leaves a
partial batch, a new epoch that cannot be stored writes no data, and the log reopens intact
and appends again once space is freed. Skipped where mounting is not permitted (needs root)."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from semel.storage.log import LogConfig, PartitionLog
from tests.storage.test_log_corruption import crash, make_batch, read_all

CONFIG = LogConfig(segment_bytes=64 * 1024, index_interval_bytes=1024)
TMPFS_BYTES = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_leaves_whole_batches_only_and_recovers_after_space_is_freed(small_fs: Path) -> None:
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (TMPFS_BYTES // 2))
    plog = PartitionLog.open(small_fs / "t-0", CONFIG, 0)
    written: list[bytes] = []
    error: OSError | None = None
    for i in range(10_000):
        b = make_batch(plog.log_end_offset, ts=i, epoch=0, payload_bytes=3000)
        try:
            plog.append(b, i)
        except OSError as exc:
            error = exc
            break
        written.append(b)
    assert error is not None and error.errno == errno.ENOSPC, error
    assert written, "the file system filled before the first append"
    leo = plog.log_end_offset
    assert read_all(plog) == b"".join(written)  # no partial batch in memory or on disk
    assert sum(p.stat().st_size for p in (small_fs / "t-0").glob("*.log")) == len(b"".join(written))

    with pytest.raises(OSError):  # a new epoch: its entry may fit (tiny file) but the batch does not
        plog.append(make_batch(leo, epoch=1, payload_bytes=3000), 20_000)
    assert plog.log_end_offset == leo
    # the epoch entry, if stored, starts at the LEO: the state a new leader's `assign` makes too
    assert [e.start_offset for e in plog.epoch_cache.entries if e.epoch == 1] in ([], [leo])

    ballast.unlink()
    more = make_batch(leo, epoch=1, payload_bytes=3000)
    plog.append(more, 20_001)
    crash(plog)
    plog = PartitionLog.open(small_fs / "t-0", CONFIG, 0)
    assert read_all(plog) == b"".join(written) + more
    assert plog.epoch_cache.latest_epoch == 1
    plog.close()
