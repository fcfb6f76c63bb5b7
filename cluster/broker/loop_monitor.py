"""How late the broker's event loop runs, and who held it when it stalled.

A stalled loop looks like a dead broker to the whole cluster (no heartbeats, no replication,
no answers), so the broker measures its own loop:

* **Lag probe** (a task on the loop): sleeps `probe_interval_ms` and records how much later
  than asked it woke. That lateness is the loop's lag: the time some callback held the loop.
  `last_lag_ms` / `max_lag_ms` are kept for metrics; a lag of at least `report_ms` is logged
  (INFO, `event loop lag N ms`) and counted in `lags_reported` (`semel bench produce` counts
  these lines in the brokers' logs).
* **Watchdog** (a daemon thread): a stalled loop cannot log itself, so a thread checks every
  `probe_interval_ms` when the probe last woke. Once the loop has been silent for
  `stall_ms` beyond the probe's own sleep it logs (WARNING, once per stall) the loop thread's
  current stack from `sys._current_frames()`: the code that holds the loop, while it holds it.

The arithmetic is the pure `LagStats` / `stall_ms_so_far`; the task and the thread are the shell.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

from semel import limits

log = logging.getLogger("semel.loop")


@dataclasses.dataclass(slots=True)
class LagStats:
    report_ms: float
    last_lag_ms: float = 0.0
    max_lag_ms: float = 0.0
    lags_reported: int = 0  # probes at least report_ms late
    stalls: int = 0  # stalls the watchdog reported (loop silent >= stall_ms)

    def record(self, lag_ms: float) -> bool:
        """Record one probe's lag; True when it is worth a log line."""
        lag_ms = max(0.0, lag_ms)
        self.last_lag_ms = lag_ms
        self.max_lag_ms = max(self.max_lag_ms, lag_ms)
        if lag_ms >= self.report_ms:
            self.lags_reported += 1
            return True
        return False


def stall_ms_so_far(now_s: float, last_beat_s: float, probe_interval_ms: float) -> float:
    """How long the loop has been silent beyond the probe's own sleep (ms, never negative)."""
    return max(0.0, (now_s - last_beat_s) * 1000 - probe_interval_ms)


class LoopMonitor:
    def __init__(self, probe_interval_ms: int = limits.LOOP_LAG_PROBE_INTERVAL_MS,
                 report_ms: int = limits.LOOP_LAG_REPORT_MS, stall_ms: int = limits.LOOP_STALL_MS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.probe_interval_ms = probe_interval_ms
        self.stall_ms = stall_ms
        self.stats = LagStats(report_ms)
        self._clock = clock
        self._beat_s = clock()
        self._reported_beat_s: float | None = None
        self._loop_thread_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def last_lag_ms(self) -> float:
        return self.stats.last_lag_ms

    @property
    def max_lag_ms(self) -> float:
        return self.stats.max_lag_ms

    def start(self) -> None:
        """On the loop to watch."""
        self._loop_thread_id = threading.get_ident()
        self._beat_s = self._clock()
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="loop-lag-probe")
        self._watchdog = threading.Thread(target=self._watch, name="semel-loop-watchdog", daemon=True)
        self._watchdog.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        log.info("event loop lag over this run: max %.0f ms, %d lags >= %.0f ms, %d stalls >= %d ms",
                 self.stats.max_lag_ms, self.stats.lags_reported, self.stats.report_ms, self.stats.stalls,
                 self.stall_ms)

    async def _probe(self) -> None:
        interval_s = self.probe_interval_ms / 1000
        while True:
            asked = self._clock()
            await asyncio.sleep(interval_s)
            woke = self._clock()
            self._beat_s = woke
            lag_ms = (woke - asked - interval_s) * 1000
            if self.stats.record(lag_ms):
                log.info("event loop lag %.0f ms (max %.0f ms, %d lags >= %.0f ms)", lag_ms,
                         self.stats.max_lag_ms, self.stats.lags_reported, self.stats.report_ms)

    def _watch(self) -> None:
        while not self._stop.wait(self.probe_interval_ms / 1000):
            self.check_stall()

    def check_stall(self) -> bool:
        """Watchdog step (any thread but the loop's): log the loop thread's stack once per stall."""
        beat = self._beat_s
        silent_ms = stall_ms_so_far(self._clock(), beat, self.probe_interval_ms)
        if silent_ms < self.stall_ms or self._reported_beat_s == beat:
            return False
        self._reported_beat_s = beat
        self.stats.stalls += 1
        frame = sys._current_frames().get(self._loop_thread_id) if self._loop_thread_id is not None else None
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(loop thread not found)\n"
        log.warning("event loop stalled: silent for %.0f ms so far (stall %d); the loop thread is at:\n%s",
                    silent_ms, self.stats.stalls, stack.rstrip())
        return True
