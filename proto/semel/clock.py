"""The two clocks, named for what they are; every shell reads time through one of these.

- `wall_clock_ms()`: milliseconds since the Unix epoch. For values that are stored or compared
  across hosts: batch timestamps and append times, retention, producer and offset expiry,
  transaction start times.
- `monotonic_ms()`: milliseconds on a clock that never steps. For durations and deadlines inside
  one process: timeouts, backoffs, replication lag, liveness.

Pure cores never call either: their shells pass `now_ms` in. A decision that must survive a
step of the wall clock takes both (transaction timeouts, producer expiry) or reads
`steady_wall_ms` (time-based retention); docs/design.md, "Clocks", lists every timer.

Tests only: a process started with `SEMEL_TEST_WALL_CLOCK_OFFSET=1` that calls
`enable_test_offset(path)` (the broker does, with `<data dir>/test-wall-clock-offset-ms`) adds
the integer in that file to `wall_clock_ms()`, re-reading it at most every
`TEST_OFFSET_POLL_MS` of monotonic time: a chaos run or a test steps one broker's wall clock,
forward or back, at run time, without touching the host's clock (libfaketime cannot step only
the wall clock of this Python: with its monotonic clock left alone `time.sleep` fails). The
monotonic clock never moves. Off by default; logged at WARNING when on and at every step.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

TEST_OFFSET_ENV = "SEMEL_TEST_WALL_CLOCK_OFFSET"
TEST_OFFSET_FILE = "test-wall-clock-offset-ms"  # in the broker's data dir
TEST_OFFSET_POLL_MS = 100

_offset_path: Path | None = None
_offset_ms = 0
_next_poll_ns = 0


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch (may step when the host's clock is set)."""
    if _offset_path is None:
        return time.time_ns() // 1_000_000
    return time.time_ns() // 1_000_000 + _test_offset_ms()


def monotonic_ms() -> int:
    """Milliseconds on this process's monotonic clock (only differences mean anything)."""
    return time.monotonic_ns() // 1_000_000


def steady_wall_ms(wall_ms: int, monotonic_ms: int, anchor_wall_ms: int, anchor_monotonic_ms: int) -> int:
    """The wall clock, never ahead of where it would be had it not been stepped forward since
    the anchor (both clocks read together, e.g. at process start): min(wall, anchor wall +
    monotonic elapsed). Deletions by age (time-based retention) read this, so a forward step
    never deletes early; a backward step (or a forward NTP correction) only delays them."""
    return min(wall_ms, anchor_wall_ms + (monotonic_ms - anchor_monotonic_ms))


def enable_test_offset(path: Path) -> bool:
    """Tests only: when `SEMEL_TEST_WALL_CLOCK_OFFSET=1`, step `wall_clock_ms()` by the
    milliseconds written in `path` (absent or empty: 0). Returns whether it is on."""
    global _offset_path, _next_poll_ns
    value = os.environ.get(TEST_OFFSET_ENV)
    if value is None:
        return False
    if value != "1":
        raise SystemExit(f"{TEST_OFFSET_ENV}={value!r}: only 1 turns the test-only wall-clock offset on")
    _offset_path = Path(path)
    _next_poll_ns = 0
    log.warning("TEST ONLY: the wall clock of this process is stepped by the offset in %s (%s=1); "
                "never use this in production", path, TEST_OFFSET_ENV)
    _test_offset_ms()
    return True


def write_test_offset(path: Path, offset_ms: int) -> None:
    """Set the offset a process polling `path` adds to its wall clock (atomic replace)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(f"{int(offset_ms)}\n")
    os.replace(tmp, path)


def _test_offset_ms() -> int:
    global _offset_ms, _next_poll_ns
    now_ns = time.monotonic_ns()
    if now_ns < _next_poll_ns or _offset_path is None:
        return _offset_ms
    _next_poll_ns = now_ns + TEST_OFFSET_POLL_MS * 1_000_000
    try:
        text = _offset_path.read_text().strip()
        offset = int(text) if text else 0
    except FileNotFoundError:
        offset = 0
    except (OSError, ValueError) as e:
        log.error("TEST ONLY: cannot read the wall-clock offset from %s (%s); keeping %d ms", _offset_path, e,
                  _offset_ms)
        return _offset_ms
    if offset != _offset_ms:
        log.warning("TEST ONLY: wall clock stepped by %+d ms (offset now %+d ms)", offset - _offset_ms, offset)
        _offset_ms = offset
    return _offset_ms
