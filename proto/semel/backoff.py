"""The one retry backoff policy: exponential, capped.

Retry number `attempt` (1 = the first retry) waits `initial_ms` doubled once per earlier attempt,
never more than `max_ms`. The client (requests, metadata refreshes, transactions) and the
transaction coordinator's marker retries all use it; a caller that wants jitter scales the result.
"""

from __future__ import annotations

from semel.invariant import invariant

_DOUBLINGS_MAX = 30  # keeps the intermediate value small; any cap in use is reached long before


def backoff_ms(attempt: int, initial_ms: int, max_ms: int) -> int:
    """How long to wait before retry number `attempt` (attempts below 1 count as 1)."""
    invariant(initial_ms >= 0 and max_ms >= 0, f"negative backoff {initial_ms}/{max_ms}")
    return min(max_ms, initial_ms * (1 << min(max(attempt - 1, 0), _DOUBLINGS_MAX)))
