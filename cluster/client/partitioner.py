"""Choosing a partition for a record: explicit, by key hash, or sticky for keyless records.

Keyed records go to `(murmur2(key) & 0x7FFFFFFF) % partition_count`, where murmur2 is
exactly Kafka's `Utils.murmur2` (MurmurHash2, 32-bit, seed 0x9747b28c, little-endian
4-byte blocks). Any language can reproduce it, and a key lands on the same partition
number as it would in Kafka with the same partition count. Test vectors (from Kafka's
`UtilsTest`): murmur2(b"21") = -973932308, murmur2(b"foobar") = -790332482,
murmur2(b"a-little-bit-long-string") = -985981536, murmur2(b"abc") = 479470107.

Keyless records stick to one partition until the batch for it is closed (full or sent),
then move to the next partition round-robin: big batches, even spread over time. The
producer passes an `available` test so a partition without a known leader, or one whose
in-flight limit is reached, is skipped while another partition could send at once.
"""

from __future__ import annotations

from collections.abc import Callable

_M = 0x5BD1E995
_MASK32 = 0xFFFF_FFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 as a signed 32-bit int (same value as the Java code returns)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    blocks_end = length & ~3
    for i in range(0, blocks_end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[blocks_end + 2] << 16
    if rest >= 2:
        h ^= data[blocks_end + 1] << 8
    if rest >= 1:
        h ^= data[blocks_end]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x8000_0000 else h


def partition_for_key(key: bytes, partition_count: int) -> int:
    if partition_count < 1:
        raise AssertionError("partition_count must be >= 1")
    return (murmur2(key) & 0x7FFF_FFFF) % partition_count


class StickyPartitioner:
    """Per topic, the partition keyless records currently go to (pure; caller locks)."""

    __slots__ = ("_current", "_next_start")

    def __init__(self, seed: int = 0) -> None:
        self._current: dict[str, int] = {}
        self._next_start = seed

    def partition(self, topic: str, partition_count: int, available: Callable[[int], bool] | None = None) -> int:
        """The sticky partition of `topic`; with `available`, one whose leader is known if any
        (keyless records need not wait for an election)."""
        current = self._current.get(topic)
        if current is None or current >= partition_count:
            current = self._next_start % partition_count
            self._next_start += 1
            self._current[topic] = current
        if available is not None and not available(current):
            for step in range(1, partition_count):
                candidate = (current + step) % partition_count
                if available(candidate):
                    self._current[topic] = candidate
                    return candidate
        return current

    def batch_closed(self, topic: str, partition: int, partition_count: int) -> None:
        """The batch of `partition` closed: keyless records move to the next partition."""
        if self._current.get(topic) == partition and partition_count > 1:
            self._current[topic] = (partition + 1) % partition_count
