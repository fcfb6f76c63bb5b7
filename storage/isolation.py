"""What a reader sees at each isolation level (Kafka's read_uncommitted / read_committed).

* read_uncommitted reads up to the high watermark, every batch (markers included).
* read_committed reads up to the last stable offset (no open transaction below it) and drops
  control batches (COMMIT/ABORT markers) and the batches of aborted transactions: a
  transactional batch is aborted when its base offset lies in one of its producer's aborted
  ranges, [first data offset, ABORT marker offset], from the aborted-transaction index.

Pure functions of the batches read and the aborts overlapping them: the broker's fetch path
asks storage for both and calls these; no I/O here.

Cost: `visible_to_read_committed` is O(batches x log(aborts of one producer)); the caller asks
storage only for the aborts overlapping the batches it read (`aborts_to_consult`), so a read
from the start of a log with thousands of aborts costs per batch (chaos finding 8: a scan of
every abort per batch stalled a leader's event loop for seconds).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from semel.storage.batch import BatchHeader

T = TypeVar("T")


class AbortedSpan(Protocol):
    """An aborted transaction: its producer's data in [first_offset, last_offset] is dropped."""

    @property
    def producer_id(self) -> int: ...
    @property
    def first_offset(self) -> int: ...
    @property
    def last_offset(self) -> int: ...


def read_bound(read_committed: bool, high_watermark: int, last_stable_offset: int) -> int:
    """The offset a reader may read up to (exclusive)."""
    return last_stable_offset if read_committed else high_watermark


def aborts_to_consult(fetch_offset: int, first: BatchHeader, last: BatchHeader) -> tuple[int, int]:
    """[start, end) of the aborts that can touch batches `first`..`last` read from `fetch_offset`
    (the first batch may begin below the fetch offset)."""
    return min(fetch_offset, first.base_offset), last.next_offset


def visible_to_read_committed(batches: Sequence[tuple[BatchHeader, T]],
                              aborts: Iterable[AbortedSpan]) -> list[tuple[BatchHeader, T]]:
    """The `(header, anything)` pairs a read_committed reader sees, in order. `aborts`: ordered by
    last offset (the index's order), covering at least the batches' range."""
    by_producer: dict[int, tuple[list[int], list[int]]] = {}
    for a in aborts:  # one producer's aborts never overlap, so its firsts are sorted too
        firsts, lasts = by_producer.setdefault(a.producer_id, ([], []))
        firsts.append(a.first_offset)
        lasts.append(a.last_offset)
    return [(h, x) for h, x in batches
            if not (h.is_control or (h.is_transactional and _in_aborted(h, by_producer)))]


def _in_aborted(h: BatchHeader, by_producer: dict[int, tuple[list[int], list[int]]]) -> bool:
    found = by_producer.get(h.producer_id)
    if found is None:
        return False
    firsts, lasts = found
    i = bisect_right(firsts, h.base_offset) - 1  # the last abort starting at or before the batch
    return i >= 0 and h.base_offset <= lasts[i]
