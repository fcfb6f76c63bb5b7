"""SegmentIndex (pure): lookups agree with a linear scan, rebuilds agree with appends,
truncation rewinds to exactly the state a fresh build would have, the file form round-trips
and rejects damage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.storage.index import CorruptIndexError, SegmentIndex

BASE = 1000

batches_st = st.lists(
    st.tuples(st.integers(1, 5), st.integers(0, 1000), st.integers(61, 400)),  # records, max ts, size
    min_size=0,
    max_size=60,
)


def build(batches, interval, base=BASE):
    index = SegmentIndex(base, interval)
    layout = []  # (base, next, max_ts, position, size)
    offset, pos = base, 0
    for records, ts, size in batches:
        index.observe(offset, offset + records, ts, size)
        layout.append((offset, offset + records, ts, pos, size))
        offset += records
        pos += size
    return index, layout


def containing(layout, offset):
    return next(b for b in layout if b[0] <= offset < b[1])


@settings(max_examples=80, deadline=None, derandomize=True)
@given(batches_st, st.sampled_from([1, 100, 400, 1000]), st.data())
def test_lookups_agree_with_linear_scan(batches, interval, data):
    index, layout = build(batches, interval)
    index.check()
    for b_base, b_next, _ts, b_pos, _size in layout:
        for offset in (b_base, b_next - 1):
            point = index.lookup(offset)
            # The point is a batch start at or before the batch that holds `offset`.
            assert point.offset <= containing(layout, offset)[0]
            assert any(b[0] == point.offset and b[3] == point.position for b in layout)
            # ... and no closer than one index interval (plus one batch) away.
            assert b_pos - point.position <= interval + 400 or interval >= 1000
    ts = data.draw(st.integers(-1, 1001))
    point = index.time_lookup(ts)
    expected = next((b for b in layout if b[2] >= ts), None)
    if expected is not None:
        assert point.offset <= expected[0]
        start = [b for b in layout if b[0] == point.offset][0] if layout and point.offset > BASE else None
        assert start is None or start[3] == point.position
        assert all(b[2] < ts for b in layout if b[0] < point.offset)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(batches_st, st.sampled_from([1, 100, 400]), st.data())
def test_truncate_entries_then_replay_equals_fresh_build(batches, interval, data):
    index, layout = build(batches, interval)
    if not layout:
        return
    cut = data.draw(st.integers(0, len(layout) - 1))
    cut_offset = layout[cut][0]
    resume = index.truncate_entries(cut_offset)
    for b_base, b_next, ts, b_pos, size in layout:
        if resume.offset <= b_base < cut_offset:
            assert (b_base, b_pos) >= (resume.offset, resume.position)
            index.observe(b_base, b_next, ts, size)
    fresh, _ = build(batches[:cut], interval)
    assert index.same_as(fresh)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(batches_st, st.sampled_from([1, 100]))
def test_file_form_round_trips(batches, interval):
    index, _ = build(batches, interval)
    loaded = SegmentIndex.decode(index.encode_offset_index(), index.encode_time_index(), BASE, interval)
    assert loaded.same_as(index)


def test_damaged_files_are_rejected():
    index, _ = build([(2, t, 100) for t in range(30)], 150)
    good_o, good_t = index.encode_offset_index(), index.encode_time_index()
    for i in range(len(good_o)):
        bad = bytearray(good_o)
        bad[i] ^= 0x01
        with pytest.raises(CorruptIndexError):
            SegmentIndex.decode(bytes(bad), good_t, BASE, 150)
    with pytest.raises(CorruptIndexError):
        SegmentIndex.decode(good_o[:-3], good_t, BASE, 150)
    with pytest.raises(CorruptIndexError):
        SegmentIndex.decode(good_o, good_t[:10], BASE, 150)
    with pytest.raises(CorruptIndexError):
        SegmentIndex.decode(good_o, good_t, BASE + 1, 150)  # another segment's files


def test_first_batch_never_indexed_and_interval_respected():
    index, _ = build([(1, 0, 100)] * 10, 200)
    # an entry once at least 200 bytes were written since the last one: at 200, 400, ...
    assert list(index.positions) == [200, 400, 600, 800]
    assert list(index.offsets) == [BASE + 2, BASE + 4, BASE + 6, BASE + 8]
    assert index.lookup(BASE).position == 0
    assert index.lookup(BASE + 7).position == 600
