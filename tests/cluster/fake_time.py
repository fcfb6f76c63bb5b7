"""Time in in-process tests: a clock the test moves, and a way to let the loop run what is
ready without letting any time pass on purpose (no sleeps)."""

from __future__ import annotations

import asyncio

READY_STEPS_MAX = 20  # loop turns `run_ready` gives; every wake-up in these tests takes one or two


class FakeClock:
    """A `semel.cluster.broker.replica_manager.Clock` that moves only when a test moves it.
    Both start years ahead of the host's clocks, so a read of a host clock where this one was
    meant gives a value far off (a lag of minus decades, not a plausible one) and the test
    shows it; `advance` moves them together, as real time would."""

    def __init__(self, wall_clock_ms: int = 4_000_000_000_000, monotonic_ms: int = 1 << 40) -> None:
        self._wall_clock_ms = wall_clock_ms
        self._monotonic_ms = monotonic_ms

    def wall_clock_ms(self) -> int:
        return self._wall_clock_ms

    def monotonic_ms(self) -> int:
        return self._monotonic_ms

    def advance(self, ms: int) -> None:
        assert ms >= 0, "time does not run backwards"
        self._wall_clock_ms += ms
        self._monotonic_ms += ms


async def run_ready(steps: int = READY_STEPS_MAX) -> None:
    """Turn the event loop `steps` times: every task that can run without a timer firing gets
    to run until it waits again. A test asserts afterwards what an event (not time) caused."""
    for _ in range(steps):
        await asyncio.sleep(0)


def step_wall(clock: FakeClock, ms: int) -> None:
    """Step only the wall clock, forward or back, as NTP or an operator would: the monotonic
    clock does not move."""
    clock._wall_clock_ms += ms
