"""fdatasync off the caller's thread, for the `interval` flush policy.

A broker appends on its asyncio event loop. An inline fdatasync of a segment that took a
second of writes blocks that loop for as long as the disk needs: measured on the dev
machine under `semel bench produce`, 7 ms at the median and 17 ms at p90, about seven times
a second per broker. Every request and replication round trip waiting on that loop waits
with it (a transaction's markers and verifications, acks=all answers).

The `interval` policy only promises that a machine crash loses about `flush_interval_ms`
of writes (replication, not fsync, makes an acknowledged write durable), so the sync need
not happen before the append returns. `BackgroundSync.submit` duplicates the file
descriptor (the segment may be sealed, closed or deleted meanwhile; the duplicate keeps the
file open) and one daemon thread per process syncs and closes the duplicates in order.
os.fdatasync releases the GIL, so the loop runs on while the disk works.

`submit_then` syncs several files and then calls back on the sync thread: a partition's
every-16-MiB producer-state snapshot is stored that way only after the log and aborted index
it covers are on disk (storage/partition.py), without the loop waiting for the disk.

Bounded: at most `max_queued` syncs wait; beyond that `submit` answers False and the caller
syncs inline (back pressure instead of an unbounded queue). A failed sync is logged and
counted (`failures`); the data is still in the page cache and on the replicas.

Page cache: after a successful sync, `submit(..., drop_before=n)` also tells the kernel that
the file's first `n` bytes, now clean, are not needed (POSIX_FADV_DONTNEED), so a broker
keeps a bounded window of each log in the page cache (`limits.PAGE_CACHE_WINDOW_BYTES`) and
reads further back come from the disk. Measured on the 2-core dev VM (a Firecracker guest):
once a few GB of written file data sat in the page cache, every write() took about ten times
longer (a bare script appending 250 MB/s to 18 files: 70 ms per second in write() for the
first ~3.7 GB, then 550-830 ms; the same with the synced ranges dropped: 60-85 ms throughout),
and `semel bench produce` fell from ~105 to ~75 MB/s after ~20 s. Kafka leaves the page cache
to the OS; a machine where that is cheap loses little by this (recent data, which tailing
readers and followers want, stays cached).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Sequence

from semel import limits

log = logging.getLogger(__name__)

MAX_QUEUED_SYNCS = limits.MAX_QUEUED_BACKGROUND_SYNCS


class BackgroundSync:
    def __init__(self, max_queued: int = MAX_QUEUED_SYNCS) -> None:
        self.max_queued = max_queued
        self.synced = 0
        self.failures = 0
        self.dropped_bytes = 0  # handed to POSIX_FADV_DONTNEED (ranges may repeat)
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False

    def submit(self, fd: int, what: str, drop_before: int = 0) -> bool:
        """Sync `fd`'s file soon, then drop its first `drop_before` bytes from the page cache;
        False (nothing queued) when the queue is full."""
        return self._enqueue((fd,), what, drop_before, None)

    def submit_then(self, fds: Sequence[int], what: str, then: Callable[[bool], None]) -> bool:
        """Sync each of `fds` soon, in order, after everything submitted before; then call
        `then(ok)` on the sync thread, ok True only if every sync succeeded. False (nothing
        queued, `then` never called) when the queue is full."""
        return self._enqueue(tuple(fds), what, 0, then)

    def _enqueue(self, fds: tuple[int, ...], what: str, drop_before: int, then: Callable[[bool], None] | None) -> bool:
        with self._cond:
            if len(self._queue) >= self.max_queued:
                return False
            self._queue.append(_Job(tuple(os.dup(fd) for fd in fds), what, drop_before, then))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="semel-background-sync", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Every submitted sync is done (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: bool(self._queue))
                job = self._queue.popleft()
                self._busy = True
            ok = False
            try:
                for fd in job.fds:
                    os.fdatasync(fd)
                ok = True
                self.synced += 1
                if job.drop_before > 0:
                    self._drop(job.fds[0], job.drop_before, job.what)
            except OSError as exc:
                self.failures += 1
                log.error("background fdatasync of %s failed: %s (the data is in the page cache and on the "
                          "replicas; a machine crash now could lose it here)", job.what, exc)
            finally:
                for fd in job.fds:
                    os.close(fd)
            if job.then is not None:
                try:
                    job.then(ok)
                except Exception:
                    log.exception("after the background sync of %s", job.what)

    def _drop(self, fd: int, length: int, what: str) -> None:
        """Advice only: a refusal costs the page-cache bound, never data."""
        try:
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
            self.dropped_bytes += length
        except OSError as exc:
            log.debug("posix_fadvise(DONTNEED) of %s refused: %s", what, exc)


class _Job:
    __slots__ = ("fds", "what", "drop_before", "then")

    def __init__(self, fds: tuple[int, ...], what: str, drop_before: int, then: Callable[[bool], None] | None) -> None:
        self.fds = fds  # duplicates, closed by the sync thread
        self.what = what
        self.drop_before = drop_before
        self.then = then


_shared: BackgroundSync | None = None
_shared_lock = threading.Lock()


def shared() -> BackgroundSync:
    """The process's syncer (its thread starts with the first submit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BackgroundSync()
        return _shared
