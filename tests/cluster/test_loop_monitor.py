"""The broker's loop-lag monitor: the pure arithmetic, and the watchdog thread logging the
loop thread's stack while an injected stall holds the loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from semel.cluster.broker.loop_monitor import LagStats, LoopMonitor, stall_ms_so_far


def test_lag_stats_keep_last_and_max_and_count_what_is_reported():
    stats = LagStats(report_ms=50)
    assert not stats.record(3)
    assert stats.record(80)
    assert not stats.record(-1)  # a probe that woke early counts as no lag
    assert (stats.last_lag_ms, stats.max_lag_ms, stats.lags_reported) == (0.0, 80.0, 1)


def test_stall_time_excludes_the_probes_own_sleep():
    assert stall_ms_so_far(10.0, 10.0, 50) == 0.0
    assert stall_ms_so_far(10.03, 10.0, 50) == 0.0
    assert round(stall_ms_so_far(10.3, 10.0, 50)) == 250


def hold_the_loop_on_purpose(release: threading.Event) -> None:
    """The injected stall: blocks the loop thread until the watchdog has reported it."""
    release.wait(10)


def test_the_watchdog_logs_the_stalled_loop_threads_stack(caplog):
    released = threading.Event()
    monitor = LoopMonitor(probe_interval_ms=10, report_ms=50, stall_ms=100)

    def release_once_reported(record: logging.LogRecord) -> bool:
        if "stalled" in record.getMessage():
            released.set()
        return True

    logger = logging.getLogger("semel.loop")
    logger.addFilter(release_once_reported)

    async def main() -> None:
        monitor.start()
        await asyncio.sleep(0.05)  # a few probes first
        started = time.monotonic()
        hold_the_loop_on_purpose(released)  # on the loop thread: nothing else runs until released
        assert time.monotonic() - started < 9, "the watchdog never reported the stall"
        await asyncio.sleep(0.05)  # the probe wakes late and records the lag
        await monitor.stop()

    try:
        with caplog.at_level(logging.INFO, logger="semel.loop"):
            asyncio.run(main())
    finally:
        logger.removeFilter(release_once_reported)
    stalls = [r for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalls) == 1
    assert "hold_the_loop_on_purpose" in stalls[0].getMessage()  # the stack of the loop thread, mid-stall
    assert monitor.stats.stalls == 1
    assert monitor.max_lag_ms >= 100
    assert any("event loop lag" in r.getMessage() for r in caplog.records)


def test_the_bench_counts_the_loop_lines_brokers_wrote_during_a_phase(tmp_path):
    from semel.cluster.tooling.bench import _LoopLagLogs

    a, b = tmp_path / "broker-1.log", tmp_path / "broker-2.log"
    a.write_text("x INFO semel.loop: event loop lag 400 ms (max 400 ms, 1 lags >= 50 ms)\n")  # before the phase
    b.write_text("")
    logs = _LoopLagLogs([a, b])
    logs.mark()
    with open(a, "a") as f:
        f.write("x INFO semel.loop: event loop lag 63 ms (max 400 ms, 2 lags >= 50 ms)\n")
    with open(b, "a") as f:
        f.write("x INFO semel.loop: event loop lag 71 ms (max 71 ms, 1 lags >= 50 ms)\n")
        f.write("x WARNING semel.loop: event loop stalled: silent for 210 ms so far (stall 1); the loop thread is at:\n")
    got = logs.since_mark()
    assert (got["max_lag_ms"], got["lags_reported"], got["stalls"]) == (71, 2, 1)
