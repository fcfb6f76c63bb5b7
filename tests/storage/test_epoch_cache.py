"""Leader-epoch cache: KIP-101 end-offset semantics, assign/truncate rules, persistence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.storage import epoch_cache as ec
from semel.storage.epoch_cache import (
    UNDEFINED_EPOCH,
    UNDEFINED_OFFSET,
    EpochEntry,
    LeaderEpochCache,
)


def entries(*pairs):
    return tuple(EpochEntry(e, s) for e, s in pairs)


E = entries((1, 0), (3, 10), (4, 25))


def test_end_offset_for_latest_epoch_is_the_log_end():
    assert ec.end_offset_for(E, 4, 40) == (4, 40)


def test_end_offset_for_known_epoch_is_next_epoch_start():
    assert ec.end_offset_for(E, 1, 40) == (1, 10)
    assert ec.end_offset_for(E, 3, 40) == (3, 25)


def test_end_offset_for_unknown_epoch_is_largest_below_and_its_end():
    assert ec.end_offset_for(E, 2, 40) == (1, 10)


def test_end_offset_for_epoch_below_all_and_above_all():
    assert ec.end_offset_for(E, 0, 40) == (0, 0)
    assert ec.end_offset_for(E, 5, 40) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    assert ec.end_offset_for((), 1, 40) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    assert ec.end_offset_for(E, UNDEFINED_EPOCH, 40) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)


def test_assign_same_epoch_later_offset_is_a_no_op_and_conflicts_are_removed():
    assert ec.assign(E, 4, 30) == E
    assert ec.assign(E, 4, 20) == entries((1, 0), (3, 10), (4, 20))  # same epoch, earlier start
    assert ec.assign(E, 5, 25) == entries((1, 0), (3, 10), (5, 25))  # start clashes with epoch 4
    assert ec.assign(E, 2, 30) == entries((1, 0), (2, 30))  # lower epoch: later epochs go
    with pytest.raises(ValueError):
        ec.assign(E, -1, 3)


def test_truncate_from_end_and_start():
    assert ec.truncate_from_end(E, 25) == entries((1, 0), (3, 10))
    assert ec.truncate_from_end(E, 26) == E
    assert ec.truncate_from_end(E, 0) == ()
    assert ec.truncate_from_start(E, 12) == entries((3, 12), (4, 25))
    assert ec.truncate_from_start(E, 10) == entries((3, 10), (4, 25))
    assert ec.truncate_from_start(E, 99) == entries((4, 99))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 100)), max_size=20), st.integers(-1, 10), st.integers(100, 200))
def test_invariants_hold_and_end_offset_matches_definition(assigns, epoch, leo):
    es: ec.Entries = ()
    for e, s in assigns:
        es = ec.assign(es, e, s)
        ec.check(es)
    got = ec.end_offset_for(es, epoch, leo)
    known = [x for x in es if x.epoch <= epoch]
    higher = [x for x in es if x.epoch > epoch]
    if not es or epoch == UNDEFINED_EPOCH:
        assert got == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    elif epoch == es[-1].epoch:
        assert got == (epoch, leo)
    elif not higher:
        assert got == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    else:
        assert got == ((known[-1].epoch if known else epoch), higher[0].start_offset)


def test_cache_persists_through_store_before_changing_memory():
    stored = []
    cache = LeaderEpochCache(log_end_offset=lambda: 50, store=stored.append)
    cache.assign(1, 0)
    cache.assign(1, 5)  # no-op: no write
    cache.assign(2, 20)
    assert stored == [entries((1, 0)), entries((1, 0), (2, 20))]
    assert cache.end_offset_for(2) == (2, 50)
    assert cache.epoch_for_offset(19) == 1 and cache.epoch_for_offset(20) == 2

    def failing(_entries):
        raise OSError("disk full")

    broken = LeaderEpochCache(entries((1, 0)), log_end_offset=lambda: 5, store=failing)
    with pytest.raises(OSError):
        broken.assign(2, 3)
    assert broken.entries == entries((1, 0))


def test_json_round_trip_and_rejects_disorder():
    assert ec.entries_from_json(ec.entries_to_json(E)) == E
    with pytest.raises(ValueError):
        ec.entries_from_json([[3, 10], [1, 20]])


def test_truncate_at_log_end_forgets_an_epoch_led_without_data(tmp_path):
    """A replica that led epoch 2 without appending, then follows: truncate_to(LEO) drops epoch 2."""
    from semel.storage.batch import BatchHeader, encode_batch
    from semel.storage.log import LogConfig, PartitionLog

    log = PartitionLog.open(tmp_path / "p", LogConfig(), now_ms=0)
    log.append(encode_batch(BatchHeader(0, 0, 1, -1, -1, -1, 1, 0, 0, 0), b"x"), now_ms=0)
    log.epoch_cache.assign(2, log.log_end_offset)
    assert log.epoch_cache.latest_epoch == 2
    log.truncate_to(log.log_end_offset)
    assert log.epoch_cache.latest_epoch == 1
    log.close()
