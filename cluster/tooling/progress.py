"""Progress of long commands (`semel bench ...`, `semel chaos run`) on stderr.

On a terminal the periodic figures ("sent 1,234 records (80.1 MB/s)") are one status line
rewritten in place, with elapsed time, a bar and the time left when the length is known;
lines that stay (phases, warnings, results) are printed above it. Anywhere else (a pipe, a file,
CI logs) every update is a plain line, as before: nothing is rewritten and no escape code is
written. The decision is the stream's own (`isatty()`), checked once.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_CELLS = 20
CLEAR_LINE = "\r\x1b[K"  # carriage return, then erase to the end of the line


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def status_text(text: str, elapsed_s: float, total_s: float | None) -> str:
    """The status line for a terminal (pure): elapsed time, and with a known length a bar and
    the time left."""
    if total_s is None or total_s <= 0:
        return f"[{elapsed_s:6.1f} s] {text}"
    share = min(1.0, max(0.0, elapsed_s / total_s))
    filled = round(share * BAR_CELLS)
    bar = "#" * filled + "-" * (BAR_CELLS - filled)
    left_s = max(0.0, total_s - elapsed_s)
    return f"[{bar}] {share * 100:3.0f}% {elapsed_s:5.0f}/{total_s:.0f} s, {left_s:.0f} s left  {text}"


class Progress:
    """`say(line)` for lines that stay; `status(text)` for the periodic figures; `phase(total_s)`
    starts timing a phase of known length (None: unknown)."""

    def __init__(self, stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self._status_shown = False
        self._phase_start = time.monotonic()
        self._phase_total_s: float | None = None

    def phase(self, total_s: float | None = None) -> None:
        self._clear()
        self._phase_start = time.monotonic()
        self._phase_total_s = total_s

    def say(self, line: str) -> None:
        self._clear()
        print(line, file=self.stream, flush=True)

    def status(self, text: str) -> None:
        if not self.terminal:
            print(text, file=self.stream, flush=True)
            return
        line = status_text(text.strip(), time.monotonic() - self._phase_start, self._phase_total_s)
        self.stream.write(CLEAR_LINE + line)
        self.stream.flush()
        self._status_shown = True

    def done(self) -> None:
        """Clears the status line (call before printing the result)."""
        self._clear()

    def _clear(self) -> None:
        if self._status_shown:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._status_shown = False
