"""The read isolation rules (`semel.storage.isolation`) as pure functions: no broker, no log."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from semel.storage.aborted_txns import AbortedTxn
from semel.storage.batch import ATTR_CONTROL, ATTR_TRANSACTIONAL, BatchHeader
from semel.storage.isolation import (
    aborts_to_consult,
    read_bound,
    visible_to_read_committed,
)


def batch(offset: int, pid: int = -1, *, txn: bool = False, control: bool = False, n: int = 1) -> BatchHeader:
    attributes = (ATTR_TRANSACTIONAL if txn or control else 0) | (ATTR_CONTROL if control else 0)
    return BatchHeader(offset, n - 1, 0, pid, 0 if pid >= 0 else -1, -1, n, attributes, 0, 0)


def abort(pid: int, first: int, last: int) -> AbortedTxn:
    return AbortedTxn(pid, first, last, first)


def offsets(visible: list[tuple[BatchHeader, object]]) -> list[int]:
    return [h.base_offset for h, _ in visible]


def test_read_committed_reads_to_the_lso_read_uncommitted_to_the_hw():
    assert read_bound(True, high_watermark=10, last_stable_offset=4) == 4
    assert read_bound(False, high_watermark=10, last_stable_offset=4) == 10


def test_markers_and_aborted_data_are_dropped_per_producer():
    batches = [(batch(0), "plain"), (batch(1, 9, txn=True), "aborted"), (batch(2, 10, txn=True), "committed"),
               (batch(3, 9, txn=True), "aborted too"), (batch(4, 9, control=True), "ABORT"),
               (batch(5, 10, control=True), "COMMIT"), (batch(6, 9), "idempotent, not in a transaction")]
    visible = visible_to_read_committed(batches, [abort(9, 1, 4)])
    assert [x for _, x in visible] == ["plain", "committed", "idempotent, not in a transaction"]


def test_each_abort_covers_only_its_own_range():
    batches = [(batch(o, 9, txn=True), o) for o in (0, 3, 5, 8)]
    # producer 9: aborted [0, 1], committed [3, 4], aborted [5, 6], open from 8
    assert offsets(visible_to_read_committed(batches, [abort(9, 0, 1), abort(9, 5, 6)])) == [3, 8]
    assert offsets(visible_to_read_committed(batches, [])) == [0, 3, 5, 8]


def test_the_aborts_consulted_are_those_overlapping_what_was_read():
    # a read from offset 5 that returned the batch holding offsets 4-6 and the batch at 7
    assert aborts_to_consult(5, batch(4, n=3), batch(7)) == (4, 8)
    assert aborts_to_consult(0, batch(2), batch(2)) == (0, 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["data", "txn", "control"]), st.integers(1, 3)),
                min_size=0, max_size=30),
       st.data())
def test_agrees_with_a_scan_of_every_abort(specs, data):
    """The per-producer binary search drops exactly what a scan of every abort drops."""
    batches, offset = [], 0
    for pid, kind, n in specs:
        batches.append((batch(offset, pid, txn=kind == "txn", control=kind == "control", n=n), offset))
        offset += n
    aborts = []  # per producer, disjoint ranges in offset order, like the index
    ends: dict[int, int] = {}
    for pid in data.draw(st.lists(st.integers(0, 3), max_size=8)):
        if ends.get(pid, 0) > offset + 2:
            continue  # this producer's ranges already reach past the batches
        first = data.draw(st.integers(ends.get(pid, 0), offset + 2))
        last = data.draw(st.integers(first, offset + 3))
        ends[pid] = last + 1
        aborts.append(abort(pid, first, last))
    aborts.sort(key=lambda a: a.last_offset)

    def aborted(h: BatchHeader) -> bool:
        return any(a.producer_id == h.producer_id and a.first_offset <= h.base_offset <= a.last_offset for a in aborts)

    expected = [o for h, o in batches if not h.is_control and not (h.is_transactional and aborted(h))]
    assert [o for _, o in visible_to_read_committed(batches, aborts)] == expected
