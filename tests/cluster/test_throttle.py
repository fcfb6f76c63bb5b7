"""The reassignment throttle's token bucket (pure; the caller passes the time)."""

from __future__ import annotations

from semel.cluster.broker.throttle import ByteRateLimiter


def test_rate_is_held_over_time_and_idle_time_does_not_become_a_burst() -> None:
    t = ByteRateLimiter(1000, now_ms=0)
    sent = 0
    for now_ms in range(0, 10_000, 10):  # 10 s of reads of 300 bytes whenever allowed
        if t.allow(now_ms):
            t.consume(300, now_ms)
            sent += 300
    # one second's bucket up front, then 1000 B/s; a read may overdraw by one batch
    assert 10_000 <= sent <= 11_000 + 300
    assert t.throttled_reads > 0
    # a long idle spell refills one second's worth, not more
    assert t.allow(1_000_000)
    t.consume(1000, 1_000_000)
    assert not t.allow(1_000_000)
    assert t.allow(1_000_001)  # a millisecond later: 1 byte of credit again


def test_available_sizes_reads_to_the_credit() -> None:
    t = ByteRateLimiter(1000, now_ms=0)
    assert t.available(0) == 1000
    t.consume(1500, 0)  # one batch larger than the credit: overdrawn
    assert t.available(0) == 0 and not t.allow(0)
    assert t.available(500) == 0 and not t.allow(500)  # 500 ms paid back the overdraft
    assert t.available(1000) == 500 and t.allow(1000)
