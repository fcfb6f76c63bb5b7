"""RocksDB layer tests against a real database in tmp_path."""

from __future__ import annotations

import pytest
from semel.storage.kv import (
    KvBatch,
    KvClosedError,
    KvStore,
    ProducerSnapshotStore,
    offset_key,
    partition_key,
)


@pytest.fixture
def kv(tmp_path):
    store = KvStore.open(tmp_path / "kv")
    yield store
    store.close()


def test_offsets_sort_numerically_in_raw_mode(kv):
    ns = kv.namespace("t")
    for n in (300, 2, 1 << 40, 10, 0):
        kv.put(ns, offset_key(n), str(n).encode())
    assert [int(v) for _, v in kv.scan(ns)] == [0, 2, 10, 300, 1 << 40]
    assert [int(v) for _, v in kv.scan(ns, reverse=True, limit=2)] == [1 << 40, 300]
    assert [int(v) for _, v in kv.scan(ns, offset_key(2), offset_key(300))] == [2, 10]
    assert [int(v) for _, v in kv.scan(ns, offset_key(2), offset_key(300), reverse=True)] == [10, 2]
    assert kv.get(ns, offset_key(10)) == b"10" and kv.get(ns, offset_key(11)) is None


def test_namespaces_do_not_see_each_other(kv):
    a, ab = kv.namespace("a"), kv.namespace("ab")
    kv.put(a, b"bx", b"1")  # stored as "\x01a" + "bx": must not appear in namespace "ab"
    kv.put(ab, b"x", b"2")
    assert kv.scan(a) == [(b"bx", b"1")]
    assert kv.scan(ab) == [(b"x", b"2")]
    batch = KvBatch()
    batch.delete_range(a, b"", None)
    kv.write(batch)
    assert kv.scan(a) == [] and kv.scan(ab) == [(b"x", b"2")]


def test_partition_keys_are_self_delimiting():
    assert not partition_key("ab", 1).startswith(partition_key("a", 1))
    assert partition_key("t", 1) < partition_key("t", 2)
    with pytest.raises(ValueError):
        partition_key("", 0)
    with pytest.raises(ValueError):
        offset_key(-1)


def test_write_batch_is_atomic_and_survives_reopen(tmp_path):
    path = tmp_path / "kv"
    ns = KvStore.namespace("n")
    with KvStore.open(path) as kv:
        batch = KvBatch()
        for i in range(100):
            batch.put(ns, offset_key(i), b"v")
        batch.delete(ns, offset_key(5))
        kv.write(batch, sync=True)
        kv.flush()
    with KvStore.open(path) as kv:
        assert len(kv.scan(ns)) == 99 and kv.get(ns, offset_key(5)) is None


def test_close_releases_the_lock_and_is_idempotent(tmp_path):
    path = tmp_path / "kv"
    kv = KvStore.open(path)
    ns = kv.namespace("n")
    kv.put(ns, b"k", b"v")
    kv.scan(ns)  # iterators must not outlive the call
    kv.floor(ns, b"k")
    with pytest.raises(Exception):
        KvStore.open(path)  # the LOCK is held
    kv.close()
    kv.close()
    with pytest.raises(KvClosedError):
        kv.get(ns, b"k")
    again = KvStore.open(path)
    assert again.get(ns, b"k") == b"v"
    again.close()


def test_snapshot_store_floor_and_deletes(kv):
    p1 = ProducerSnapshotStore(kv, partition_key("t", 1))
    p2 = ProducerSnapshotStore(kv, partition_key("t", 2))
    p10 = ProducerSnapshotStore(kv, partition_key("t", 10))
    for off in (0, 100, 250, 400):
        p1.put(off, b"p1@%d" % off)
    p2.put(50, b"p2@50")
    p10.put(5, b"p10@5")
    assert p1.newest_at_or_below(99) == (0, b"p1@0")
    assert p1.newest_at_or_below(100) == (100, b"p1@100")
    assert p1.newest_at_or_below(10**12) == (400, b"p1@400")
    assert p2.newest_at_or_below(49) is None  # never another partition's snapshot
    assert p1.older_than(100) == (0, b"p1@0") and p1.older_than(0) is None
    p1.delete_above(250)
    assert p1.offsets() == [0, 100, 250]
    p1.delete_below(100)
    assert p1.offsets() == [100, 250]
    p1.put(300, b"x")
    p1.retain_newest(2)
    assert p1.offsets() == [250, 300]
    assert p2.offsets() == [50] and p10.offsets() == [5]
    p1.delete(250)
    assert p1.offsets() == [300]
    p1.delete_all()
    assert p1.offsets() == [] and p2.offsets() == [50]
