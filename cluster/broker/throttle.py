"""A byte-rate bound (token bucket) for replication traffic that must not starve producers.

Pure: the caller passes the monotonic time. `allow(now_ms)` says whether another read may go
out now; `consume(n_bytes, now_ms)` charges it. A caller sizes its read by `available(now_ms)`,
so a read overdraws by at most one batch (a read returns at least one), which later reads then
wait out. The bucket holds at most one second of traffic, so an idle spell does
not turn into a burst. Kafka's equivalent is `leader.replication.throttled.rate` for the
replicas a reassignment adds.
"""

from __future__ import annotations

from semel.invariant import invariant


class ByteRateLimiter:
    def __init__(self, bytes_per_s: int, now_ms: int) -> None:
        invariant(bytes_per_s > 0, "a rate limit needs a positive rate")
        self.bytes_per_s = bytes_per_s
        self._tokens = float(bytes_per_s)  # Invariant: _tokens <= bytes_per_s (one second's worth)
        self._at_ms = now_ms
        self.throttled_reads = 0  # reads refused, for logs and tests

    def _refill(self, now_ms: int) -> None:
        elapsed_ms = max(0, now_ms - self._at_ms)
        self._at_ms = max(self._at_ms, now_ms)
        self._tokens = min(float(self.bytes_per_s), self._tokens + elapsed_ms * self.bytes_per_s / 1000)

    def available(self, now_ms: int) -> int:
        """Bytes that may go out now (a caller sizes its read by this; 0: none)."""
        self._refill(now_ms)
        return max(0, int(self._tokens))

    def allow(self, now_ms: int) -> bool:
        self._refill(now_ms)
        if self._tokens > 0:
            return True
        self.throttled_reads += 1
        return False

    def consume(self, n_bytes: int, now_ms: int) -> None:
        self._refill(now_ms)
        self._tokens -= n_bytes
