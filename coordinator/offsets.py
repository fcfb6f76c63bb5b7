"""Committed consumer offsets of one __consumer_offsets partition: a pure store (no I/O).

How it works:

* `committed[group][topic-partition]` is the last committed position, with the log offset of
  the record that wrote it (`record_offset`).
* A plain OffsetCommit is validated (`validate_member`: member id + member epoch fencing, or
  a "simple" commit when the group has no members, as Kafka allows), then prepared as
  OffsetCommit records; once they are durable, `complete` replays them. A member may only
  commit partitions it holds (assigned, or pending revocation): a partition it released is
  STALE_MEMBER_EPOCH even at the current epoch (the rule of Kafka's KIP-1251, stricter
  than plain epoch equality, which lets a member overwrite the new owner's commits).
* A TxnOffsetCommit (KIP-447) is validated the same way (any epoch mismatch fences: a zombie
  consumer's transaction must abort) and written in a transactional batch of its producer.
  Replayed, its offsets go to `pending[producer_id]`, invisible to fetches. The producer's
  COMMIT marker on this partition (`replay_marker(pid, commit=True)`) moves them into
  `committed` unless a plain commit with a larger record offset got there first; ABORT
  drops them. While a partition has pending offsets, a fetch with `require_stable` answers
  UNSTABLE_OFFSET_COMMIT for it, so a new owner waits instead of reading an old position.
* Lag is measured against the last stable offset: a read_committed consumer can never read
  past it, so lag against the high watermark would never reach 0 while a transaction is open.

Invariants: every pending entry belongs to a producer with at most one open transaction on
this partition (the partition's producer state guarantees it); `_pending_index` counts, per
group and partition, the producers with a pending entry, and equals what `pending` holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from semel import limits
from semel.coordinator.group_records import (
    GroupRecord,
    OffsetCommitKey,
    OffsetCommitValue,
    Partitions,
    expect,
)
from semel.coordinator.group_state import GroupStateMachine
from semel.invariant import invariant
from semel.sentinels import NO_OFFSET
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2

E = common_pb2.ErrorCode


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetsConfig:
    max_metadata_bytes: int = limits.MAX_OFFSET_METADATA_BYTES
    max_offsets_per_group: int = limits.MAX_OFFSETS_PER_GROUP
    max_groups: int = limits.MAX_GROUPS_PER_COORDINATOR_PARTITION
    max_pending_producers: int = limits.MAX_PENDING_TXN_PRODUCERS_PER_COORDINATOR_PARTITION
    max_partitions_per_request: int = limits.MAX_PARTITIONS_PER_REQUEST
    retention_ms: int = limits.OFFSETS_RETENTION_MS_DEFAULT


@dataclasses.dataclass(frozen=True, slots=True)
class CommittedOffset:
    committed_offset: int
    committed_leader_epoch: int
    metadata: str
    commit_timestamp_ms: int
    record_offset: int  # log offset of the record that wrote it; orders plain vs transactional


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionCommit:
    topic: str
    partition: int
    committed_offset: int
    committed_leader_epoch: int = -1
    metadata: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class CommitRequest:
    group_id: str
    member_id: str            # "" with member_epoch -1: a simple commit
    member_epoch: int
    offsets: tuple[PartitionCommit, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TxnCommitRequest:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    group_id: str
    member_id: str
    member_epoch: int
    offsets: tuple[PartitionCommit, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CommitDecision:
    """Records to write (in a transactional batch of `producer_id` if >= 0), then answer."""

    group_id: str
    error: common_pb2.ErrorCode
    error_message: str = ""
    partition_errors: tuple[tuple[TopicPartition, common_pb2.ErrorCode], ...] = ()
    records: tuple[GroupRecord, ...] = ()
    producer_id: int = -1
    producer_epoch: int = -1

    @property
    def transactional(self) -> bool:
        return self.producer_id >= 0


@dataclasses.dataclass(frozen=True, slots=True)
class FetchedOffset:
    tp: TopicPartition
    committed_offset: int          # -1: nothing committed
    committed_leader_epoch: int
    metadata: str
    commit_timestamp_ms: int       # -1: nothing committed
    error: common_pb2.ErrorCode                     # NONE or UNSTABLE_OFFSET_COMMIT


@dataclasses.dataclass(frozen=True, slots=True)
class FetchResult:
    error: common_pb2.ErrorCode
    error_message: str
    offsets: tuple[FetchedOffset, ...]


def validate_member(
    groups: GroupStateMachine, group_id: str, member_id: str, member_epoch: int, transactional: bool
) -> tuple[common_pb2.ErrorCode, str]:
    """Fencing of commits (KIP-848 / KIP-447). member_epoch < 0: a simple commit, allowed only
    while the group has no members. Otherwise the member must exist (UNKNOWN_MEMBER_ID: it was
    removed, e.g. after its session timed out) and send its current epoch: an older epoch is
    STALE_MEMBER_EPOCH for a plain commit (retriable: heartbeat first) and FENCED_MEMBER_EPOCH
    for a transactional one (the transaction must abort); a newer one is always fenced."""
    if member_epoch < 0:
        if groups.member_count(group_id) > 0:
            return E.UNKNOWN_MEMBER_ID, "the group has members: commit as a member"
        return E.NONE, ""
    member = groups.member(group_id, member_id)
    if member is None:
        return E.UNKNOWN_MEMBER_ID, f"{member_id!r} is not a member of {group_id!r}"
    if member_epoch == member.member_epoch:
        return E.NONE, ""
    message = f"member epoch {member_epoch}, current {member.member_epoch}"
    if transactional or member_epoch > member.member_epoch:
        return E.FENCED_MEMBER_EPOCH, message
    return E.STALE_MEMBER_EPOCH, message


def lag(committed_offset: int, last_stable_offset: int) -> int:
    """Records a read_committed consumer still has to read; -1 when either is unknown."""
    if committed_offset < 0 or last_stable_offset < 0:
        return -1
    return max(0, last_stable_offset - committed_offset)


class OffsetStore:
    def __init__(self, config: OffsetsConfig | None = None) -> None:
        self.config = config or OffsetsConfig()
        self.committed: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        self.pending: dict[int, dict[str, dict[TopicPartition, CommittedOffset]]] = {}
        self._pending_index: dict[str, dict[TopicPartition, int]] = {}

    # --- durable changes --------------------------------------------------------------------------

    def replay(self, record: GroupRecord, record_offset: int, producer_id: int = -1) -> None:
        """Apply an OffsetCommit record; `producer_id >= 0`: it came in a transactional batch."""
        key = expect(record.key, OffsetCommitKey)
        tp = TopicPartition(key.topic, key.partition)
        if producer_id >= 0:
            value = expect(record.value, OffsetCommitValue)  # never a tombstone inside a transaction
            by_group = self.pending.setdefault(producer_id, {}).setdefault(key.group_id, {})
            if tp not in by_group:
                index = self._pending_index.setdefault(key.group_id, {})
                index[tp] = index.get(tp, 0) + 1
            by_group[tp] = _committed(value, record_offset)
            return
        if record.value is None:
            offsets = self.committed.get(key.group_id)
            if offsets is not None:
                offsets.pop(tp, None)
                if not offsets:
                    del self.committed[key.group_id]
            return
        self.committed.setdefault(key.group_id, {})[tp] = _committed(expect(record.value, OffsetCommitValue), record_offset)

    def replay_marker(self, producer_id: int, commit: bool) -> None:
        """A COMMIT/ABORT control batch of `producer_id` on this partition."""
        by_group = self.pending.pop(producer_id, None)
        if by_group is None:
            return  # duplicate markers and markers of transactions without offsets are harmless
        for group_id, offsets in by_group.items():
            index = self._pending_index[group_id]
            for tp, entry in offsets.items():
                index[tp] -= 1
                if index[tp] == 0:
                    del index[tp]
                if commit:
                    current = self.committed.setdefault(group_id, {})
                    old = current.get(tp)
                    if old is None or old.record_offset < entry.record_offset:
                        current[tp] = entry
            if not index:
                del self._pending_index[group_id]

    def complete(self, decision: CommitDecision, base_offset: int) -> None:
        """Apply a decision whose records were appended at base_offset, base_offset + 1, ..."""
        for i, record in enumerate(decision.records):
            self.replay(record, base_offset + i, decision.producer_id)

    # --- queries ----------------------------------------------------------------------------------

    def group_ids(self) -> set[str]:
        return set(self.committed) | set(self._pending_index)

    def has_pending(self, group_id: str) -> bool:
        return bool(self._pending_index.get(group_id))

    def pending_partitions(self, group_id: str) -> frozenset[TopicPartition]:
        return frozenset(self._pending_index.get(group_id, {}))

    def committed_offsets(self, group_id: str) -> dict[TopicPartition, CommittedOffset]:
        return dict(self.committed.get(group_id, {}))

    def group_lag(self, group_id: str, last_stable_offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Lag per committed partition of the group (-1 where the LSO is unknown)."""
        return {
            tp: lag(c.committed_offset, last_stable_offsets.get(tp, -1))
            for tp, c in sorted(self.committed.get(group_id, {}).items())
        }

    def check_invariants(self) -> None:
        counts: dict[str, dict[TopicPartition, int]] = {}
        for by_group in self.pending.values():
            for group_id, offsets in by_group.items():
                for tp in offsets:
                    counts.setdefault(group_id, {}).setdefault(tp, 0)
                    counts[group_id][tp] += 1
        invariant(counts == self._pending_index, "pending index out of date")

    def fetch(
        self,
        groups: GroupStateMachine,
        group_id: str,
        partitions: Iterable[TopicPartition] | None,
        require_stable: bool,
        member_id: str = "",
        member_epoch: int = -1,
    ) -> FetchResult:
        """Committed offsets of `partitions` (None: every committed or pending one)."""
        if not _valid_group_id(group_id):
            return FetchResult(E.INVALID_GROUP_ID, "bad group id", ())
        if member_epoch >= 0:
            code, message = validate_member(groups, group_id, member_id, member_epoch, transactional=False)
            if code != E.NONE:
                return FetchResult(code, message, ())
        committed = self.committed.get(group_id, {})
        pending = self._pending_index.get(group_id, {})
        wanted = sorted(set(committed) | (set(pending) if require_stable else set())) if partitions is None else sorted(set(partitions))
        out = []
        for tp in wanted:
            if require_stable and tp in pending:
                out.append(FetchedOffset(tp, NO_OFFSET, -1, "", -1, E.UNSTABLE_OFFSET_COMMIT))
                continue
            c = committed.get(tp)
            if c is None:
                out.append(FetchedOffset(tp, NO_OFFSET, -1, "", -1, E.NONE))
            else:
                out.append(FetchedOffset(tp, c.committed_offset, c.committed_leader_epoch, c.metadata, c.commit_timestamp_ms, E.NONE))
        return FetchResult(E.NONE, "", tuple(out))

    # --- prepare ----------------------------------------------------------------------------------

    def prepare_commit(self, request: CommitRequest, groups: GroupStateMachine, now_ms: int) -> CommitDecision:
        code, message = self._validate_group(request.group_id, groups, len(request.offsets))
        if code == E.NONE:
            code, message = validate_member(groups, request.group_id, request.member_id, request.member_epoch, False)
        if code != E.NONE:
            return CommitDecision(request.group_id, code, message)
        held = _held(groups, request.group_id, request.member_id, request.member_epoch)
        return self._records_for(request.group_id, request.offsets, now_ms, held)

    def prepare_txn_commit(self, request: TxnCommitRequest, groups: GroupStateMachine, now_ms: int) -> CommitDecision:
        gid = request.group_id
        code, message = self._validate_group(gid, groups, len(request.offsets))
        if code == E.NONE and (not request.transactional_id or request.producer_id < 0 or request.producer_epoch < 0):
            code, message = E.INVALID_REQUEST, "a transactional id, producer id and producer epoch are required"
        if code == E.NONE and request.producer_id not in self.pending and len(self.pending) >= self.config.max_pending_producers:
            code, message = E.RESOURCE_EXHAUSTED, f"{len(self.pending)} producers have pending offsets"
        if code == E.NONE:
            code, message = validate_member(groups, gid, request.member_id, request.member_epoch, True)
        held = _held(groups, gid, request.member_id, request.member_epoch)
        if code == E.NONE and held is not None:
            foreign = sorted({TopicPartition(pc.topic, pc.partition) for pc in request.offsets} - held)
            if foreign:
                code, message = E.FENCED_MEMBER_EPOCH, f"the member does not hold {foreign[:5]}; abort the transaction"
        if code != E.NONE:
            return CommitDecision(gid, code, message)
        plain = self._records_for(gid, request.offsets, now_ms)
        return dataclasses.replace(plain, producer_id=request.producer_id, producer_epoch=request.producer_epoch)

    def prepare_reset(
        self, group_id: str, new_offsets: Mapping[TopicPartition, int], groups: GroupStateMachine, now_ms: int
    ) -> CommitDecision:
        """Admin reset to offsets the caller resolved (earliest/latest/timestamp need the
        partition leaders); only for groups without members and without pending offsets."""
        code, message = self._validate_group(group_id, groups, len(new_offsets))
        if code == E.NONE and (groups.member_count(group_id) > 0 or self.has_pending(group_id)):
            code, message = E.NON_EMPTY_GROUP, "reset needs a group without members or pending transactional offsets"
        if code != E.NONE:
            return CommitDecision(group_id, code, message)
        offsets = tuple(PartitionCommit(tp.topic, tp.partition, off) for tp, off in sorted(new_offsets.items()))
        return self._records_for(group_id, offsets, now_ms)

    def prepare_delete_group(self, group_id: str, groups: GroupStateMachine) -> CommitDecision:
        """Tombstones for every offset and group record of an empty group."""
        if not _valid_group_id(group_id):
            return CommitDecision(group_id, E.INVALID_GROUP_ID, "bad group id")
        if groups.group(group_id) is None and group_id not in self.group_ids():
            return CommitDecision(group_id, E.GROUP_ID_NOT_FOUND, f"no group {group_id!r}")
        if groups.member_count(group_id) > 0 or self.has_pending(group_id):
            return CommitDecision(group_id, E.NON_EMPTY_GROUP, "the group has members or pending transactional offsets")
        records = [
            GroupRecord(OffsetCommitKey(group_id, tp.topic, tp.partition), None)
            for tp in sorted(self.committed.get(group_id, {}))
        ]
        records += groups.delete_records(group_id)
        return CommitDecision(group_id, E.NONE, records=tuple(records))

    def prepare_expire(self, groups: GroupStateMachine, now_ms: int) -> list[CommitDecision]:
        """Housekeeping (every OFFSETS_RETENTION_CHECK_INTERVAL_MS): in groups without members
        and without pending transactional offsets, offsets committed more than
        `retention_ms` ago get tombstones; a group left with neither members nor offsets is
        deleted. Groups with members keep their offsets. Prepare only: write each decision's
        records, then `complete` it (CoordinatorShard.complete_commit)."""
        decisions = []
        for gid in sorted(set(self.committed) | set(groups.groups)):
            if groups.member_count(gid) > 0 or self.has_pending(gid):
                continue
            offsets = self.committed.get(gid, {})
            expired = [tp for tp, c in sorted(offsets.items())
                       if c.commit_timestamp_ms + self.config.retention_ms <= now_ms]
            records = [GroupRecord(OffsetCommitKey(gid, tp.topic, tp.partition), None) for tp in expired]
            if len(expired) == len(offsets):
                records += groups.delete_records(gid)
            if records:
                decisions.append(CommitDecision(gid, E.NONE, records=tuple(records)))
        return decisions

    def _validate_group(self, group_id: str, groups: GroupStateMachine, count: int) -> tuple[common_pb2.ErrorCode, str]:
        if not _valid_group_id(group_id):
            return E.INVALID_GROUP_ID, f"group id must be 1..{limits.MAX_GROUP_ID_BYTES} bytes"
        if count > self.config.max_partitions_per_request:
            return E.INVALID_REQUEST, f"more than {self.config.max_partitions_per_request} partitions"
        known = group_id in self.committed or group_id in self._pending_index or groups.group(group_id) is not None
        if not known and len(self.group_ids()) >= self.config.max_groups:
            return E.RESOURCE_EXHAUSTED, f"coordinator partition holds {self.config.max_groups} groups"
        return E.NONE, ""

    def _records_for(
        self, group_id: str, offsets: tuple[PartitionCommit, ...], now_ms: int, held: Partitions | None = None
    ) -> CommitDecision:
        """Records for the valid partitions; `held`: the committing member's partitions (a
        member may commit only partitions it holds; None: no member, no check)."""
        records: list[GroupRecord] = []
        errors: list[tuple[TopicPartition, common_pb2.ErrorCode]] = []
        existing = self.committed.get(group_id, {})
        new_count = len(existing)
        for pc in offsets:
            tp = TopicPartition(pc.topic, pc.partition)
            if not pc.topic or pc.partition < 0 or pc.committed_offset < 0:
                errors.append((tp, E.INVALID_REQUEST))
            elif held is not None and tp not in held:
                errors.append((tp, E.STALE_MEMBER_EPOCH))  # released or never assigned (KIP-1251's rule)
            elif len(pc.metadata.encode()) > self.config.max_metadata_bytes:
                errors.append((tp, E.OFFSET_METADATA_TOO_LARGE))
            elif tp not in existing and new_count >= self.config.max_offsets_per_group:
                errors.append((tp, E.RESOURCE_EXHAUSTED))
            else:
                new_count += tp not in existing
                errors.append((tp, E.NONE))
                value = OffsetCommitValue(pc.committed_offset, pc.committed_leader_epoch, pc.metadata, now_ms)
                records.append(GroupRecord(OffsetCommitKey(group_id, pc.topic, pc.partition), value))
        return CommitDecision(group_id, E.NONE, "", tuple(errors), tuple(records))


def _held(groups: GroupStateMachine, group_id: str, member_id: str, member_epoch: int) -> Partitions | None:
    """What a validated member may commit: what it holds (assigned or pending revocation)."""
    if member_epoch < 0:
        return None
    member = groups.member(group_id, member_id)
    return None if member is None else member.held


def _committed(value: OffsetCommitValue, record_offset: int) -> CommittedOffset:
    return CommittedOffset(
        value.committed_offset, value.committed_leader_epoch, value.metadata, value.commit_timestamp_ms, record_offset
    )


def _valid_group_id(group_id: str) -> bool:
    return 0 < len(group_id.encode()) <= limits.MAX_GROUP_ID_BYTES
