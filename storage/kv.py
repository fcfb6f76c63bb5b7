"""A thin RocksDB layer: one database per broker data dir, shared by every partition.

Everything is stored in raw mode (rocksdict's default mode tags keys with a type byte and
integers would not sort numerically). Keys are `namespace prefix + key`; a namespace
prefix is the length-prefixed namespace name, so no namespace's keys can collide with
another's. Callers build keys from fixed-width big-endian integers (`offset_key`) so that
byte order is numeric order, and from `partition_key(topic, partition)`, which is
self-delimiting (one partition's keys are never a prefix of another's).

Namespaces are key prefixes rather than column families on purpose: a column-family
handle keeps the database LOCK alive after `close()`, and one key space keeps the API
small; a namespace could move to its own column family later without changing callers.

Writes that must land together go through one `KvBatch` (a rocksdict `WriteBatch`, raw
mode) and `KvStore.write`: RocksDB applies it atomically. Iterators never escape this
module (a live iterator keeps the LOCK held after close): every scan returns a bounded list.
`ReadOptions.set_iterate_lower_bound` is not used (in rocksdict 0.3.29 it sets the upper
bound); scans seek and stop by comparing keys.

`ProducerSnapshotStore` keeps producer-state snapshots keyed by (partition, offset).
"""

from __future__ import annotations

import dataclasses
import struct
import threading
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch, WriteOptions
from semel import limits

_OFFSET = struct.Struct(">Q")
_NAMESPACE_NAME_BYTES_MAX = 255


class KvClosedError(Exception):
    """The store was closed."""


def offset_key(offset: int) -> bytes:
    """A non-negative integer as 8 big-endian bytes (byte order = numeric order)."""
    if offset < 0:
        raise ValueError(f"offset {offset} < 0 has no key")
    return _OFFSET.pack(offset)


def partition_key(topic: str, partition: int) -> bytes:
    """A self-delimiting key for one partition: u16 length, UTF-8 topic, u32 partition."""
    name = topic.encode()
    if not name or len(name) > 0xFFFF or not 0 <= partition < 1 << 32:
        raise ValueError(f"bad partition {topic!r}/{partition}")
    return struct.pack(">H", len(name)) + name + struct.pack(">I", partition)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


@dataclasses.dataclass(frozen=True, slots=True)
class Namespace:
    """A key space inside the store. Create with `KvStore.namespace(name)`."""

    name: str
    prefix: bytes

    def key(self, key: bytes) -> bytes:
        return self.prefix + key


class KvBatch:
    """Writes applied atomically by `KvStore.write`."""

    def __init__(self) -> None:
        self._batch = WriteBatch(raw_mode=True)

    def put(self, ns: Namespace, key: bytes, value: bytes) -> None:
        self._batch.put(ns.prefix + key, value)

    def delete(self, ns: Namespace, key: bytes) -> None:
        self._batch.delete(ns.prefix + key)

    def delete_range(self, ns: Namespace, start: bytes, end: bytes | None) -> None:
        """Delete every key k of `ns` with start <= k < end (end None: to the end of `ns`)."""
        stop = ns.prefix + end if end is not None else _prefix_end(ns.prefix)
        if stop is None:
            raise ValueError("namespace without an upper bound")
        self._batch.delete_range(ns.prefix + start, stop)

    def __len__(self) -> int:
        return int(self._batch.len())


class KvStore:
    """One RocksDB database (raw mode); thread-safe; `close()` releases its LOCK."""

    def __init__(self, db: Rdict, path: Path, sync_writes: bool) -> None:
        self._db: Rdict | None = db
        self.path = path
        self._write_options = WriteOptions()
        self._write_options.sync = sync_writes  # a property, not a method
        self._sync_options = WriteOptions()
        self._sync_options.sync = True
        self._nosync_options = WriteOptions()
        self._lock = threading.Lock()  # guards close against concurrent use

    @classmethod
    def open(cls, path: str | Path, *, sync_writes: bool = False) -> KvStore:
        """Open (creating if missing) the database at `path`, conventionally `<data dir>/kv`.

        `sync_writes`: fsync the WAL on every write. Off by default: everything stored here
        so far can be rebuilt from the logs (snapshots are an optimisation), and callers
        that need durability pass `sync=True` per write."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        return cls(Rdict(str(path), options=options), path, sync_writes)

    @staticmethod
    def namespace(name: str) -> Namespace:
        encoded = name.encode()
        if not encoded or len(encoded) > _NAMESPACE_NAME_BYTES_MAX:
            raise ValueError(f"bad namespace name {name!r}")
        return Namespace(name, bytes([len(encoded)]) + encoded)

    def _handle(self) -> Rdict:
        if self._db is None:
            raise KvClosedError(f"kv store {self.path} is closed")
        return self._db

    # --- point operations ------------------------------------------------------------

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        value = self._handle().get(ns.prefix + key)
        return None if value is None else bytes(value)

    def put(self, ns: Namespace, key: bytes, value: bytes, *, sync: bool | None = None) -> None:
        batch = KvBatch()
        batch.put(ns, key, value)
        self.write(batch, sync=sync)

    def delete(self, ns: Namespace, key: bytes, *, sync: bool | None = None) -> None:
        batch = KvBatch()
        batch.delete(ns, key)
        self.write(batch, sync=sync)

    def write(self, batch: KvBatch, *, sync: bool | None = None) -> None:
        """Apply every write of `batch` atomically."""
        if len(batch) == 0:
            return
        if sync is None:
            options = self._write_options
        else:
            options = self._sync_options if sync else self._nosync_options
        self._handle().write(batch._batch, options)

    # --- ordered reads -------------------------------------------------------------------

    def scan(
        self,
        ns: Namespace,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        reverse: bool = False,
        limit: int = limits.MAX_KV_SCAN_ENTRIES,
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) pairs of `ns` with start <= key < end, keys without the
        namespace prefix, in increasing order (decreasing if `reverse`)."""
        if limit < 1:
            raise ValueError(f"scan limit {limit} < 1")
        low = ns.prefix + start
        high = ns.prefix + end if end is not None else _prefix_end(ns.prefix)
        out: list[tuple[bytes, bytes]] = []
        it = self._handle().iter()
        try:
            if reverse:
                if high is None:
                    it.seek_to_last()
                else:
                    it.seek_for_prev(high)
                    if it.valid() and it.key() >= high:  # seek_for_prev lands on `high` itself
                        it.prev()
                while it.valid() and len(out) < limit:
                    key = it.key()
                    if key < low:
                        break
                    out.append((key[len(ns.prefix) :], it.value()))
                    it.prev()
            else:
                it.seek(low)
                while it.valid() and len(out) < limit:
                    key = it.key()
                    if high is not None and key >= high:
                        break
                    out.append((key[len(ns.prefix) :], it.value()))
                    it.next()
        finally:
            del it  # a live iterator would keep the LOCK after close()
        return out

    def floor(self, ns: Namespace, key: bytes, within: bytes = b"") -> tuple[bytes, bytes] | None:
        """The entry with the greatest key <= `key` among keys of `ns` starting with `within`."""
        if not key.startswith(within):
            raise ValueError("floor key outside its prefix")
        found = self.scan(ns, within, key + b"\x00", reverse=True, limit=1)
        return found[0] if found else None

    # --- lifecycle --------------------------------------------------------------------------

    def flush(self) -> None:
        """Persist memtables and the WAL (for a clean shutdown)."""
        db = self._handle()
        db.flush_wal(True)
        db.flush(True)

    def close(self) -> None:
        """Close and release the LOCK; idempotent."""
        with self._lock:
            if self._db is None:
                return
            db, self._db = self._db, None
            db.close()
            del db

    def __enter__(self) -> KvStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PRODUCER_SNAPSHOTS = KvStore.namespace("producer_snapshots")


class ProducerSnapshotStore:
    """Producer-state snapshots keyed by (partition key, offset the snapshot covers)."""

    def __init__(self, kv: KvStore, partition: bytes) -> None:
        if _prefix_end(partition) is None:
            raise ValueError(f"bad partition key {partition!r} (use partition_key())")
        self.kv = kv
        self.partition = partition

    def put(self, offset: int, data: bytes, *, sync: bool | None = None) -> None:
        self.kv.put(PRODUCER_SNAPSHOTS, self.partition + offset_key(offset), data, sync=sync)

    def delete(self, offset: int) -> None:
        self.kv.delete(PRODUCER_SNAPSHOTS, self.partition + offset_key(offset))

    def newest_at_or_below(self, offset: int) -> tuple[int, bytes] | None:
        found = self.kv.floor(PRODUCER_SNAPSHOTS, self.partition + offset_key(offset), self.partition)
        if found is None:
            return None
        return _OFFSET.unpack_from(found[0], len(self.partition))[0], found[1]

    def older_than(self, offset: int) -> tuple[int, bytes] | None:
        """The newest snapshot strictly below `offset` (the fallback when one is corrupt)."""
        return None if offset <= 0 else self.newest_at_or_below(offset - 1)

    def offsets(self) -> list[int]:
        """Offsets of the stored snapshots, increasing (at most MAX_KV_SCAN_ENTRIES)."""
        rows = self.kv.scan(PRODUCER_SNAPSHOTS, self.partition, _prefix_end(self.partition))
        return [_OFFSET.unpack_from(k, len(self.partition))[0] for k, _ in rows]

    def delete_above(self, offset: int, batch: KvBatch | None = None) -> None:
        """Truncation: delete snapshots covering more than `offset` (offset > `offset`)."""
        self._delete_range(offset_key(offset + 1), None, batch)

    def delete_below(self, offset: int, batch: KvBatch | None = None) -> None:
        """Retention: delete snapshots with offset < `offset`."""
        if offset > 0:
            self._delete_range(offset_key(0), offset_key(offset), batch)

    def retain_newest(self, count: int) -> None:
        """Keep only the newest `count` snapshots (count >= 1)."""
        if count < 1:
            raise ValueError("keep at least one snapshot")
        offsets = self.offsets()
        if len(offsets) > count:
            self.delete_below(offsets[-count])

    def delete_all(self, batch: KvBatch | None = None) -> None:
        self._delete_range(b"", None, batch)

    def _delete_range(self, start: bytes, end: bytes | None, batch: KvBatch | None) -> None:
        own = batch is None
        wb = KvBatch() if batch is None else batch
        stop = self.partition + end if end is not None else _prefix_end(self.partition)
        if stop is None:  # excluded by __init__
            raise AssertionError("partition key without an upper bound")
        wb.delete_range(PRODUCER_SNAPSHOTS, self.partition + start, stop)
        if own:
            self.kv.write(wb)
