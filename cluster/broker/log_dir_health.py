"""Is this broker's log directory usable? Kafka's offline log dirs (KIP-112, KIP-858), for one dir.

Theory of operation. Every write to a replica's log goes through `LogDirHealth.guard`. An
`OSError` from the disk marks the directory offline:

* **full** (ENOSPC, EDQUOT): the failed write was already cut back by the segment
  (`LogSegment.append` truncates to the size before the write), so nothing partial is visible.
  The directory refuses every further write (leader, follower, marker: `LogDirOfflineError`,
  STORAGE_ERROR, retriable) while reads go on. The broker's heartbeats say
  `log_dir_offline`, so the controller fences it: its leaderships move to other ISR members and
  it leaves the ISRs. `poll` (each heartbeat) frees it again once the file system has
  `recover_free_bytes` free *and* a probe file can be written and synced; then the heartbeats
  stop saying offline, the controller unfences it, and its followers catch up and rejoin.
* **failed** (EIO, EROFS, ENXIO, ENODEV): as full, but it stays offline until the broker
  restarts (Kafka does the same: a failed dir is not trusted again without an operator).

The state is pure (`on_error`, `on_probe`); `poll` is the thin shell that asks the disk.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from semel import limits
from semel.v1 import common_pb2 as pb

log = logging.getLogger(__name__)

T = TypeVar("T")

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The device failed. Other errors (EBADF from a log closed under a write, ENOENT from a race with
# a deletion, a lock held by an old open) are about one replica, not the directory.
FAILED_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.ENXIO, errno.ENODEV})
# A directory that came back must be able to take a few appends of the largest size before it
# fills again: otherwise it would flap between offline and online at every append.
DEFAULT_RECOVER_FREE_BYTES = limits.LOG_DIR_RECOVER_FREE_BYTES
PROBE_NAME = ".semel-disk-probe"


class LogDirOfflineError(OSError):
    """A write to an offline log directory: refused before anything is written."""

    code = pb.STORAGE_ERROR


class LogDirHealth:
    def __init__(self, directory: Path, recover_free_bytes: int = DEFAULT_RECOVER_FREE_BYTES) -> None:
        self.directory = directory
        self.recover_free_bytes = recover_free_bytes
        self.state = "online"  # online | full | failed
        self.reason = ""
        self.offline_count = 0  # times it went offline (metrics, tests)

    @property
    def offline(self) -> bool:
        return self.state != "online"

    def on_error(self, exc: OSError) -> None:
        """A write failed: the directory is offline (full or failed) from now on."""
        if isinstance(exc, LogDirOfflineError):
            return
        if exc.errno in FULL_ERRNOS:
            kind = "full"
        elif exc.errno in FAILED_ERRNOS:
            kind = "failed"
        else:
            return  # not the directory's fault (see FAILED_ERRNOS); the caller's error handling answers it
        if self.state == "failed" or self.state == kind:
            return
        self.state = kind
        self.reason = f"{os.strerror(exc.errno) if exc.errno else exc!r}"
        self.offline_count += 1
        log.error("log directory %s is offline (%s: %s): refusing writes, asking the controller to move "
                  "its leaderships", self.directory, kind, exc)

    def on_probe(self, free_bytes: int, probe_ok: bool) -> bool:
        """A full directory's space check; True if it is online again."""
        if self.state != "full" or free_bytes < self.recover_free_bytes or not probe_ok:
            return False
        log.warning("log directory %s has %d bytes free again: back online", self.directory, free_bytes)
        self.state, self.reason = "online", ""
        return True

    def check_writable(self) -> None:
        if self.offline:
            raise LogDirOfflineError(errno.ENOSPC if self.state == "full" else errno.EIO,
                                     f"log directory {self.directory} is offline ({self.state}: {self.reason})")

    def guard(self, write: Callable[[], T]) -> T:
        """Run one write to the directory: refused while offline; a disk error takes it offline."""
        self.check_writable()
        try:
            return write()
        except OSError as exc:
            self.on_error(exc)
            raise

    def poll(self) -> None:
        """The shell: a full directory checks its free space and a probe write (blocking, small)."""
        if self.state != "full":
            return
        try:
            st = os.statvfs(self.directory)
            free = st.f_bavail * st.f_frsize
        except OSError:
            return
        if free < self.recover_free_bytes:
            return
        self.on_probe(free, _probe(self.directory))


def _probe(directory: Path) -> bool:
    path = directory / PROBE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
        return True
    except OSError:
        try:
            os.unlink(path)
        except OSError:
            pass
        return False
