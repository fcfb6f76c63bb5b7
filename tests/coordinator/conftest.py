"""A fake shell for the group coordinator cores: an in-memory log of one __consumer_offsets
partition, written the way the broker integration will (prepare, append, complete)."""

from __future__ import annotations

import pytest
from semel.coordinator.group_log import (
    CoordinatorShard,
    build_batch,
)
from semel.coordinator.group_state import GroupConfig, HeartbeatRequest
from semel.coordinator.offsets import CommitRequest, PartitionCommit, TxnCommitRequest
from semel.storage.batch import (
    Marker,
    decode_header,
    encode_marker,
    iter_batches,
    with_offsets,
)

CFG = GroupConfig(session_timeout_ms=1000, heartbeat_interval_ms=100, rebalance_timeout_ms_default=500)


class FakeLog:
    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.log_end_offset = 0

    def append(self, encoded: bytes) -> int:
        base = self.log_end_offset
        stamped = with_offsets(encoded, base, 0)
        self.batches.append(stamped)
        self.log_end_offset = decode_header(stamped).next_offset
        return base

    def read_from(self, offset: int) -> bytes:
        return b"".join(b for b in self.batches if decode_header(b).next_offset > offset)


class Driver:
    def __init__(self, counts: dict[str, int] | None = None, config: GroupConfig = CFG) -> None:
        self.log = FakeLog()
        self.shard = CoordinatorShard(0, config)
        self.counts = counts or {"t": 2}
        self.now_ms = 0
        self._ids = 0

    def _write(self, records, producer_id=-1, producer_epoch=-1) -> int:
        seq = 0 if producer_id >= 0 else -1
        return self.log.append(build_batch(records, self.now_ms, producer_id, producer_epoch, seq))

    def hb(self, group, member_id, epoch, **kw):
        self._ids += 1
        d = self.shard.groups.prepare_heartbeat(
            HeartbeatRequest(group, member_id, epoch, **kw), self.now_ms, self.counts, f"m{self._ids}"
        )
        base = self._write(d.records) if d.records else -1
        return self.shard.complete_group(d, base, self.now_ms)

    def join(self, group, topics=("t",), member_id=""):
        return self.hb(group, member_id, 0, subscribed_topics=topics, owned=frozenset())

    def expire(self):
        removed = []
        for d in self.shard.groups.expire(self.now_ms, self.counts):
            self.shard.complete_group(d, self._write(d.records), self.now_ms)
            removed += d.removed_members
        return removed

    def _complete(self, d):
        if d.error == 0 and d.records:
            self.shard.complete_commit(d, self._write(d.records, d.producer_id, d.producer_epoch))
        return d

    def commit(self, group, offsets: dict, member_id="", member_epoch=-1, metadata=""):
        pcs = tuple(PartitionCommit(t, p, o, -1, metadata) for (t, p), o in sorted(offsets.items()))
        d = self.shard.offsets.prepare_commit(CommitRequest(group, member_id, member_epoch, pcs), self.shard.groups, self.now_ms)
        return self._complete(d)

    def txn_commit(self, group, offsets: dict, producer_id, member_id="", member_epoch=-1, producer_epoch=0):
        pcs = tuple(PartitionCommit(t, p, o) for (t, p), o in sorted(offsets.items()))
        req = TxnCommitRequest(f"tx-{producer_id}", producer_id, producer_epoch, group, member_id, member_epoch, pcs)
        return self._complete(self.shard.offsets.prepare_txn_commit(req, self.shard.groups, self.now_ms))

    def marker(self, producer_id, commit: bool, producer_epoch=0):
        base = self.log.append(encode_marker(producer_id, producer_epoch, Marker(commit, 0), now_ms=self.now_ms))
        for header, payload in iter_batches(self.log.read_from(base)):
            self.shard.replay_batch(header, payload)

    def fetch(self, group, partitions=None, require_stable=False, member_id="", member_epoch=-1):
        return self.shard.offsets.fetch(self.shard.groups, group, partitions, require_stable, member_id, member_epoch)

    def committed(self, group):
        return {(tp.topic, tp.partition): c.committed_offset for tp, c in self.shard.offsets.committed_offsets(group).items()}


@pytest.fixture
def driver():
    return Driver
