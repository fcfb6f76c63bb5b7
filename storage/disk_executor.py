"""The one bounded executor for a broker's disk work that must not run on its event loop.

A broker runs one asyncio loop; a stalled loop looks like a dead broker to the whole
cluster (heartbeats, replication and every client wait on it). Disk work whose time the disk
decides (fsync, rename + directory fsync, recovery scans, `rmtree`, bulk RocksDB loads) is
therefore handed to this executor: segment rolls (the sealed segment's fdatasync, its index
files, the checkpoint), the producer snapshot after a roll, the file half of retention, log
recovery when a replica opens, closing and deleting replicas, the transaction and group
coordinators' loads. The interval fdatasyncs of the active segment keep their own queue
(semel.storage.background_sync, which also drops synced pages from the cache).

Rules:

* **Keyed, in order.** Every job names a key (a replica's directory, a coordinator
  partition). Jobs of one key run one at a time, in submission order; jobs of different keys
  run on up to `threads` threads at once. So a replica's roll, its retention and its
  deletion never overlap, and a coordinator load that was cancelled but is still running
  finishes before the next load of that partition starts.
* **Bounded.** At most `max_jobs` jobs are queued or running. `submit` answers None when
  full, and the caller does the work itself (back pressure, as background_sync does): a
  full queue slows the loop down rather than growing without bound.
* **Cancellation.** A job not started yet is skipped if its future was cancelled (an asyncio
  task awaiting `run` that is cancelled cancels it). A running job always runs to its end: the
  caller must make a late result harmless (the owners do it with a generation number checked
  under a lock, as the producer snapshot of storage/partition.py does; see docs/design.md,
  "Threads").
* **Errors** go to the job's future; a job nobody awaits logs its own failures.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from semel import limits

log = logging.getLogger(__name__)

T = TypeVar("T")

THREAD_NAME_PREFIX = "semel-disk"


class DiskExecutor:
    def __init__(self, threads: int = limits.DISK_EXECUTOR_THREADS,
                 max_jobs: int = limits.MAX_DISK_EXECUTOR_QUEUE) -> None:
        if threads < 1 or max_jobs < 1:
            raise ValueError("a disk executor needs at least one thread and one job slot")
        self.threads = threads
        self.max_jobs = max_jobs
        self.done = 0
        self.refused = 0  # submits answered None (the caller did the work itself)
        self._cond = threading.Condition()
        self._chains: dict[Hashable, collections.deque[_Job]] = {}  # key -> its jobs, head running or next
        self._ready: collections.deque[Hashable] = collections.deque()  # keys whose head may start
        self._jobs = 0
        self._workers: list[threading.Thread] = []

    def submit(self, key: Hashable, fn: Callable[[], T], what: str) -> concurrent.futures.Future[T] | None:
        """Run `fn()` on a disk thread after every earlier job of `key`; None (nothing queued)
        when `max_jobs` are queued or running."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            if self._jobs >= self.max_jobs:
                self.refused += 1
                return None
            self._jobs += 1
            chain = self._chains.get(key)
            if chain is None:
                chain = self._chains[key] = collections.deque()
                self._ready.append(key)
            chain.append(_Job(fn, fut, what))
            self._start_workers()
            self._cond.notify()
        return fut

    async def run(self, key: Hashable, fn: Callable[[], T], what: str) -> T:
        """`fn()` on a disk thread, awaited from the loop. Cancelling the awaiting task skips a
        job not started yet; a running one finishes (see the module docstring). When the
        executor is full the loop does the work itself."""
        fut = self.submit(key, fn, what)
        if fut is None:
            log.warning("disk executor full (%d jobs): %s runs on the event loop", self.max_jobs, what)
            return fn()
        return await asyncio.wrap_future(fut)

    def in_job(self, key: Hashable) -> bool:
        """The calling thread is running a job of `key` (waiting for `key` there would deadlock)."""
        return getattr(_current, "key", _NO_KEY) == key

    def busy(self, key: Hashable) -> bool:
        """A job of `key` is queued or running."""
        with self._cond:
            return key in self._chains

    def wait_idle(self, key: Hashable | None = None, timeout_s: float = 10.0) -> bool:
        """Every job (of `key`, or of all keys) is done (tests, shutdown; never on the loop)."""
        with self._cond:
            if key is None:
                return self._cond.wait_for(lambda: self._jobs == 0, timeout_s)
            return self._cond.wait_for(lambda: key not in self._chains, timeout_s)

    def _start_workers(self) -> None:
        self._workers = [t for t in self._workers if t.is_alive()]
        while len(self._workers) < self.threads:
            t = threading.Thread(target=self._work, name=f"{THREAD_NAME_PREFIX}-{len(self._workers)}", daemon=True)
            self._workers.append(t)
            t.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._ready))
                key = self._ready.popleft()
                job = self._chains[key][0]
            _current.key = key
            try:
                if job.future.set_running_or_notify_cancel():
                    try:
                        job.future.set_result(job.fn())
                    except BaseException as exc:
                        job.future.set_exception(exc)
            finally:
                _current.key = _NO_KEY
                with self._cond:
                    chain = self._chains[key]
                    chain.popleft()
                    if chain:
                        self._ready.append(key)
                    else:
                        del self._chains[key]
                    self._jobs -= 1
                    self.done += 1
                    self._cond.notify_all()


_current = threading.local()  # .key: the key of the job this disk thread runs
_NO_KEY = object()


class _Job:
    __slots__ = ("fn", "future", "what")

    def __init__(self, fn: Callable[[], Any], future: concurrent.futures.Future[Any], what: str) -> None:
        self.fn = fn
        self.future = future
        self.what = what


def log_failure(what: str) -> Callable[[concurrent.futures.Future[Any]], None]:
    """A done-callback for a job nobody awaits: its failure is logged, not lost."""
    def done(fut: concurrent.futures.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("disk job failed: %s", what, exc_info=fut.exception())
    return done


_shared: DiskExecutor | None = None
_shared_lock = threading.Lock()


def shared() -> DiskExecutor:
    """The process's disk executor (its threads start with the first submit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DiskExecutor()
        return _shared
