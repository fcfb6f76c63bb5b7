"""Aborted-transaction index: range queries, truncation, retention, the file form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.storage.aborted_txns import (
    RECORD_BYTES,
    AbortedTxn,
    AbortedTxnFile,
    AbortedTxnIndex,
    CorruptAbortedIndexError,
    decode_records,
)

A = AbortedTxn(7, 10, 20, 5)
B = AbortedTxn(8, 2, 30, 2)  # started before A, aborted after it
C = AbortedTxn(7, 40, 41, 31)


def test_in_range_returns_entries_that_intersect():
    idx = AbortedTxnIndex([A, B, C])
    assert idx.in_range(0, 2) == []  # [0, 2) ends before B starts at 2
    assert idx.in_range(0, 3) == [B]
    assert idx.in_range(20, 21) == [A, B]
    assert idx.in_range(21, 40) == [B]
    assert idx.in_range(31, 40) == []
    assert idx.in_range(41, 100) == [C]
    assert idx.in_range(42, 100) == []


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20)), max_size=15), st.integers(0, 80), st.integers(0, 80))
def test_in_range_matches_linear_filter(spans, start, length):
    entries, last = [], -1
    for first, extra in spans:
        last = max(last + 1, first + extra)
        entries.append(AbortedTxn(1, first, last, first))
    end = start + length
    want = [e for e in entries if e.first_offset < end and e.last_offset >= start]
    assert AbortedTxnIndex(entries).in_range(start, end) == want
    added = AbortedTxnIndex()  # the same entries arriving one by one (the longest span tracked on add)
    for e in entries:
        added.add(e)
    assert added.in_range(start, end) == want
    # after retention drops the early entries, the bound is recomputed and still exact
    added.truncate_from_start(start)
    assert added.in_range(start, end) == want


def test_a_range_query_near_the_start_of_many_short_aborts_stops_early():
    """A read_committed fetch from offset 0 of a log with many aborts asks for the aborts of
    the chunk it read: the query must stop once no later entry can start inside the range,
    not filter every entry (that was quadratic with the fetch: chaos finding 8)."""
    entries = [AbortedTxn(1, 10 * i, 10 * i + 3, 10 * i + 4) for i in range(100_000)]
    idx = AbortedTxnIndex(entries)
    touched = []

    class Counting(list):
        def __getitem__(self, key):
            got = super().__getitem__(key)
            if isinstance(key, slice):
                touched.append(len(got))
            return got

    idx._entries = Counting(idx._entries)
    assert idx.in_range(0, 25) == entries[:3]
    assert sum(touched) <= 4  # the slice is bounded by the longest span (3), not the 100,000 entries


def test_add_is_ordered_and_idempotent_for_replay():
    idx = AbortedTxnIndex()
    idx.add(A)
    idx.add(B)
    idx.add(A)  # replay of a retained entry: no-op
    assert idx.entries == [A, B]
    with pytest.raises(ValueError):
        idx.add(AbortedTxn(9, 1, 25, 1))  # marker before the last one, not a replay
    with pytest.raises(ValueError):
        idx.add(AbortedTxn(9, 50, 49, 1))


def test_truncate_and_retention():
    idx = AbortedTxnIndex([A, B, C])
    idx.truncate_to(30)  # B's marker at 30 is gone
    assert idx.entries == [A]
    idx = AbortedTxnIndex([A, B, C])
    idx.truncate_from_start(21)  # A ended before 21
    assert idx.entries == [B, C]


def test_file_appends_rewrites_and_torn_tail(tmp_path):
    path = tmp_path / "aborted.txnindex"
    f = AbortedTxnFile(path, sync=True)
    idx = AbortedTxnIndex(f.load(), on_add=f.append, on_rewrite=f.rewrite)
    idx.add(A)
    idx.add(B)
    idx.add(C)
    f.close()
    assert AbortedTxnFile(path, sync=True).load() == [A, B, C]
    data = path.read_bytes()
    path.write_bytes(data[: -RECORD_BYTES // 2])  # torn last record
    f = AbortedTxnFile(path, sync=True)
    assert f.load() == [A, B]
    assert path.stat().st_size == 2 * RECORD_BYTES  # cut so the next append lands on a boundary
    idx = AbortedTxnIndex([A, B], on_add=f.append, on_rewrite=f.rewrite)
    idx.add(C)
    idx.truncate_to(30)
    f.close()
    assert AbortedTxnFile(path, sync=True).load() == [A]


def test_corrupt_middle_record_raises_corrupt_last_record_is_dropped():
    data = b"".join(x.encode() for x in (A, B, C))
    bad_last = bytearray(data)
    bad_last[-1] ^= 0xFF
    assert decode_records(bytes(bad_last)) == [A, B]
    bad_middle = bytearray(data)
    bad_middle[RECORD_BYTES + 3] ^= 0xFF
    with pytest.raises(CorruptAbortedIndexError):
        decode_records(bytes(bad_middle))
