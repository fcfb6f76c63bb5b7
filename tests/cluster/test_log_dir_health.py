"""`LogDirHealth`: which disk errors take the log directory offline, and when it comes back."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from semel.cluster.broker.log_dir_health import LogDirHealth, LogDirOfflineError
from semel.storage.errors import error_code_of
from semel.v1 import common_pb2 as pb


def _fail(code: int) -> None:
    raise OSError(code, "injected")


def test_enospc_takes_the_directory_offline_and_refuses_writes_before_running_them(tmp_path: Path) -> None:
    h = LogDirHealth(tmp_path, recover_free_bytes=1)
    assert h.guard(lambda: 7) == 7
    with pytest.raises(OSError):
        h.guard(lambda: _fail(errno.ENOSPC))
    assert (h.state, h.offline) == ("full", True)
    ran: list[int] = []
    with pytest.raises(LogDirOfflineError) as info:
        h.guard(lambda: ran.append(1))
    assert ran == []  # refused before the write
    assert error_code_of(info.value) == pb.STORAGE_ERROR


def test_a_full_directory_comes_back_only_with_space_and_a_working_probe(tmp_path: Path) -> None:
    h = LogDirHealth(tmp_path, recover_free_bytes=1000)
    h.on_error(OSError(errno.ENOSPC, "full"))
    assert not h.on_probe(free_bytes=999, probe_ok=True)
    assert not h.on_probe(free_bytes=10_000, probe_ok=False)
    assert h.offline
    assert h.on_probe(free_bytes=1000, probe_ok=True)
    assert not h.offline
    h.on_error(OSError(errno.ENOSPC, "full"))
    h.poll()  # tmp_path has more than 1000 bytes free and is writable
    assert not h.offline and h.offline_count == 2


def test_an_io_error_keeps_the_directory_offline_until_restart(tmp_path: Path) -> None:
    h = LogDirHealth(tmp_path, recover_free_bytes=1)
    h.on_error(OSError(errno.EIO, "I/O error"))
    assert h.state == "failed"
    assert not h.on_probe(free_bytes=10**9, probe_ok=True)
    h.poll()
    h.on_error(OSError(errno.ENOSPC, "full"))  # a later full disk does not downgrade a failure
    assert h.state == "failed"


def test_errors_that_are_not_the_devices_leave_the_directory_online(tmp_path: Path) -> None:
    h = LogDirHealth(tmp_path)
    for code in (errno.EBADF, errno.ENOENT, errno.EAGAIN):
        with pytest.raises(OSError):
            h.guard(lambda: _fail(code))
    assert not h.offline
