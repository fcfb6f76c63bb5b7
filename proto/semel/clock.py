"""The two clocks, named for what they are; every shell reads time through one of these.

- `wall_clock_ms()`: milliseconds since the Unix epoch. For values that are stored or compared
  across hosts: batch timestamps and append times, retention, producer and offset expiry,
  transaction start times.
- `monotonic_ms()`: milliseconds on a clock that never steps. For durations and deadlines inside
  one process: timeouts, backoffs, replication lag, liveness.

Pure cores never call either: their shells pass `now_ms` in.
"""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch (may step when the host's clock is set)."""
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """Milliseconds on this process's monotonic clock (only differences mean anything)."""
    return time.monotonic_ns() // 1_000_000
