"""Sequencing of a coordinator partition's writes: per-group order, commit-time state
changes, markers interleaved with our writes, failures, unload, bounds."""

from __future__ import annotations

from semel.coordinator.group_log import (
    CoordinatorShard,
    build_batch,
)
from semel.coordinator.group_runtime import Append, PartitionRuntime, Reply
from semel.coordinator.group_state import (
    GroupConfig,
    HeartbeatRequest,
    HeartbeatResponse,
)
from semel.coordinator.offsets import CommitRequest, PartitionCommit, TxnCommitRequest
from semel.storage.batch import Marker, encode_marker, iter_batches, with_offsets
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2

E = common_pb2.ErrorCode
COUNTS = {"t": 2}
CFG = GroupConfig(session_timeout_ms=1000, heartbeat_interval_ms=100)


class Shell:
    """Plays the broker: appends, and commits (moves the high watermark) when told."""

    def __init__(self, max_queued: int = 100) -> None:
        self.rt = PartitionRuntime(CoordinatorShard(0, CFG), max_queued=max_queued)
        self.log: list[bytes] = []
        self.hw_index = 0  # batches below this index are committed
        self.replies: dict[int, Reply] = {}
        self.appends: dict[int, int] = {}  # token -> index in log
        self._rid = 0

    def handle(self, outputs) -> None:
        for o in outputs:
            if isinstance(o, Append):
                base = sum(_count(b) for b in self.log)
                encoded = build_batch(o.records, 0, o.producer_id, o.producer_epoch, 0 if o.producer_id >= 0 else -1)
                self.log.append(with_offsets(encoded, base, 0))
                self.appends[o.token] = len(self.log) - 1
                self.rt.on_appended(o.token, base)
            else:
                assert o.request_id not in self.replies
                self.replies[o.request_id] = o

    def submit(self, group, prepare) -> int:
        self._rid += 1
        self.handle(self.rt.submit(self._rid, group, prepare, 0, 0))
        return self._rid

    def heartbeat(self, group, member_id, epoch, **kw) -> int:
        req = HeartbeatRequest(group, member_id, epoch, **kw)
        return self.submit(group, lambda shard, now: shard.groups.prepare_heartbeat(req, now, COUNTS, f"{group}-{self._rid}"))

    def join(self, group) -> int:
        return self.heartbeat(group, "", 0, subscribed_topics=("t",), owned=frozenset())

    def marker(self, producer_id: int, commit: bool) -> None:
        base = sum(_count(b) for b in self.log)
        self.log.append(with_offsets(encode_marker(producer_id, 0, Marker(commit, 0), now_ms=0), base, 0))

    def commit_all(self) -> None:
        batches = [hp for b in self.log[self.hw_index:] for hp in iter_batches(b)]
        self.hw_index = len(self.log)
        self.handle(self.rt.on_committed(batches, 0, 0))


def _count(encoded: bytes) -> int:
    (header, _), = iter_batches(encoded)
    return header.last_offset_delta + 1


def test_state_changes_only_when_committed():
    sh = Shell()
    rid = sh.join("g")
    assert rid not in sh.replies and len(sh.log) == 1
    assert sh.rt.shard.groups.member_count("g") == 0  # appended, not committed
    sh.commit_all()
    resp = sh.replies[rid].result
    assert isinstance(resp, HeartbeatResponse) and resp.member_epoch == 1
    assert sh.rt.shard.groups.member_count("g") == 1 and sh.rt.shard.next_offset == sum(_count(b) for b in sh.log)


def test_requests_of_one_group_are_prepared_in_order_after_the_previous_write():
    sh = Shell()
    r1, r2 = sh.join("g"), sh.join("g")
    assert len(sh.log) == 1 and r2 not in sh.replies  # the second waits, unprepared
    sh.commit_all()
    assert sh.replies[r1].result.member_epoch == 1 and len(sh.log) == 2
    sh.commit_all()
    assert sh.replies[r2].result.member_epoch == 2  # prepared on the state after the first join


def test_groups_proceed_in_parallel_and_reads_do_not_wait():
    sh = Shell()
    a, b = sh.join("g"), sh.join("h")
    assert len(sh.log) == 2 and a not in sh.replies and b not in sh.replies
    bad = sh.heartbeat("other", "ghost", 5)  # writes nothing: answered at once
    assert sh.replies[bad].error == E.UNKNOWN_MEMBER_ID
    sh.commit_all()
    assert sh.replies[a].error == sh.replies[b].error == E.NONE


def test_failed_append_answers_and_unblocks_the_group():
    sh = Shell()
    outputs = sh.rt.submit(1000, "g", lambda shard, now: shard.groups.prepare_heartbeat(
        HeartbeatRequest("g", "", 0, ("t",), owned=frozenset()), now, COUNTS, "m1"), 0, 0)
    (append,) = outputs
    queued = sh.join("g")
    assert queued not in sh.replies and not sh.log
    sh.handle(sh.rt.on_append_failed(append.token, E.NOT_ENOUGH_REPLICAS, 0, 0))
    assert sh.replies[1000].error == E.NOT_ENOUGH_REPLICAS
    assert len(sh.log) == 1  # the queued join went ahead
    sh.commit_all()
    assert sh.replies[queued].result.member_epoch == 1 and sh.rt.shard.groups.member_count("g") == 1


def test_markers_between_our_writes_resolve_pending_offsets_in_log_order():
    sh = Shell()
    txn = TxnCommitRequest("tx", 7, 0, "g", "", -1, (PartitionCommit("t", 0, 42),))
    r = sh.submit("g", lambda shard, now: shard.offsets.prepare_txn_commit(txn, shard.groups, now))
    sh.marker(7, commit=True)
    plain = CommitRequest("g", "", -1, (PartitionCommit("t", 1, 5),))
    r2 = sh.submit("g", lambda shard, now: shard.offsets.prepare_commit(plain, shard.groups, now))
    assert r2 not in sh.replies  # queued behind the transactional write of the same group
    sh.commit_all()  # our txn write, then the marker, become committed together
    assert sh.replies[r].error == E.NONE
    offsets = sh.rt.shard.offsets
    assert not offsets.has_pending("g") and offsets.committed_offsets("g")[TopicPartition("t", 0)].committed_offset == 42
    sh.commit_all()
    assert offsets.committed_offsets("g")[TopicPartition("t", 1)].committed_offset == 5


def test_unload_answers_everyone_not_coordinator():
    sh = Shell()
    a, b = sh.join("g"), sh.join("g")
    sh.handle(sh.rt.unload())
    assert sh.replies[a].error == sh.replies[b].error == E.NOT_COORDINATOR
    c = sh.join("g")
    assert sh.replies[c].error == E.NOT_COORDINATOR


def test_queue_is_bounded():
    sh = Shell(max_queued=2)
    sh.join("g")      # in flight (not queued any more)
    sh.join("g")      # queued
    sh.join("g")      # queued
    over = sh.join("g")
    assert sh.replies[over].error == E.RESOURCE_EXHAUSTED
