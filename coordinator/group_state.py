"""Consumer-group membership and assignment: a pure state machine (no I/O, no clock).

How it works (the next-generation rebalance protocol of Kafka's KIP-848, server side):

* A group has members, a **group epoch** (bumped by every change of membership, of a
  subscription, or of the partition counts of the subscribed topics), and a **target
  assignment** computed by `assign()` for that epoch (its `assignment_epoch`).
* Each member has a **member epoch** and a current assignment: `assigned` (what it may own
  now) and `pending_revocation` (what it owned and must release). On each heartbeat the
  member is reconciled towards its target, one step at a time:
    1. partitions it holds that are not in its target move to `pending_revocation`
       (state UNREVOKED_PARTITIONS, member epoch unchanged);
    2. once a heartbeat reports `owned` without them, they are released;
    3. then the member takes the target epoch and every target partition that no other
       member holds (in `assigned` or `pending_revocation`); partitions still held by
       someone else wait (state UNRELEASED_PARTITIONS) for a later heartbeat.
  Invariant (checked by `check_invariants`): a partition is held by at most one member at any
  time, so two consumers never own a partition at once, as long as members obey.
* A member that stops heartbeating for `session_timeout_ms`, or does not release revoked
  partitions within its rebalance timeout, is removed (its partitions are free at once);
  a zombie still running under the old epoch is fenced by epoch checks (heartbeats here,
  offset commits in `offsets.py`).

Prepare / complete: `prepare_heartbeat`, `expire` and `prepare_delete` never mutate the
state. They return a `GroupDecision` with the records to write to __consumer_offsets and the
response to send once they are durable. The caller writes the records (acks=all), then calls
`complete(decision, monotonic_ms)`, which replays them: `replay(record)` is the only way durable
state changes, and loading a coordinator partition replays the same records. Decisions of
one group must be completed in the order they were prepared, and a decision must be
prepared after the previous one of the same group completed (the caller serializes per
group; `complete` checks the group did not change in between).

Volatile state (never written): session and revocation deadlines, on the coordinator's
monotonic clock (`monotonic_ms` arguments: a step of the host's wall clock neither expires a
live member nor keeps a dead one; docs/design.md, "Clocks"). After a load they restart at
"now" (`on_loaded`), like Kafka.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from typing import Callable

from semel import limits
from semel.coordinator.group_records import (
    EMPTY_PARTITIONS,
    CurrentAssignmentKey,
    CurrentAssignmentValue,
    GroupMetadataKey,
    GroupMetadataValue,
    GroupRecord,
    MemberMetadataKey,
    MemberMetadataValue,
    MemberState,
    Partitions,
    TargetAssignmentMemberKey,
    TargetAssignmentMemberValue,
    TargetAssignmentMetadataKey,
    TargetAssignmentMetadataValue,
    expect,
)
from semel.invariant import invariant
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2, group_pb2

E = common_pb2.ErrorCode
LEAVE_EPOCH = -1
JOIN_EPOCH = 0


@dataclasses.dataclass(frozen=True, slots=True)
class GroupConfig:
    session_timeout_ms: int = limits.GROUP_SESSION_TIMEOUT_MS_DEFAULT
    heartbeat_interval_ms: int = limits.GROUP_HEARTBEAT_INTERVAL_MS_DEFAULT
    rebalance_timeout_ms_default: int = limits.GROUP_REBALANCE_TIMEOUT_MS_DEFAULT
    rebalance_timeout_ms_max: int = limits.MAX_GROUP_REBALANCE_TIMEOUT_MS
    max_members_per_group: int = limits.MAX_MEMBERS_PER_GROUP
    max_groups: int = limits.MAX_GROUPS_PER_COORDINATOR_PARTITION
    max_assignable_partitions: int = limits.MAX_ASSIGNABLE_PARTITIONS_PER_GROUP
    max_subscribed_topics: int = limits.MAX_SUBSCRIBED_TOPICS_PER_MEMBER

    def __post_init__(self) -> None:
        invariant(0 < self.heartbeat_interval_ms < self.session_timeout_ms, "heartbeat interval must be below the session timeout")
        invariant(0 < self.rebalance_timeout_ms_default <= self.rebalance_timeout_ms_max, "bad rebalance timeouts")
        invariant(self.max_members_per_group > 0 and self.max_groups > 0, "bad bounds")


# --- requests, responses, decisions ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    group_id: str
    member_id: str                                # "" to join with a coordinator-chosen id
    member_epoch: int                             # 0 join, -1 leave, else the current epoch
    subscribed_topics: tuple[str, ...] | None = None   # None: unchanged (required on join)
    rebalance_timeout_ms: int = 0                 # 0: unchanged / default
    owned: Partitions | None = None               # None: unchanged since the last heartbeat
    client_id: str = ""                           # "": unchanged


@dataclasses.dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    error: common_pb2.ErrorCode
    error_message: str = ""
    member_id: str = ""
    member_epoch: int = LEAVE_EPOCH
    heartbeat_interval_ms: int = 0
    assignment: Partitions | None = None          # complete; None on errors and after leaving


@dataclasses.dataclass(frozen=True, slots=True)
class GroupDecision:
    """What to write, and what to answer once it is durable. `records` may be empty."""

    group_id: str
    base_version: int                             # Group.version when prepared (-1: no group)
    records: tuple[GroupRecord, ...]
    response: HeartbeatResponse | None = None
    error: common_pb2.ErrorCode = E.NONE
    heartbeat_member: str | None = None           # its session restarts on complete
    removed_members: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """A member as the state machine sees it (built from three records)."""

    member_id: str
    client_id: str
    subscribed_topics: tuple[str, ...]
    rebalance_timeout_ms: int
    member_epoch: int
    previous_member_epoch: int
    state: MemberState
    assigned: Partitions
    pending_revocation: Partitions
    target: Partitions

    @property
    def held(self) -> Partitions:
        return self.assigned | self.pending_revocation


_NEW_MEMBER_ASSIGNMENT = CurrentAssignmentValue(JOIN_EPOCH, LEAVE_EPOCH, MemberState.STABLE, EMPTY_PARTITIONS, EMPTY_PARTITIONS)


# --- the group ----------------------------------------------------------------------------------


class Group:
    """The durable state of one group (exactly what its records say) plus volatile timers."""

    __slots__ = (
        "group_id", "has_metadata", "group_epoch", "subscribed_topics", "assignment_epoch",
        "members", "current", "target", "holder", "topic_names", "version", "session_deadline_ms",
        "revocation_deadline_ms",
    )

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.has_metadata = False
        self.group_epoch = 0
        self.subscribed_topics: tuple[tuple[str, int], ...] = ()
        self.assignment_epoch = 0
        self.members: dict[str, MemberMetadataValue] = {}
        self.current: dict[str, CurrentAssignmentValue] = {}
        self.target: dict[str, Partitions] = {}
        # Derived indexes, maintained by apply(): who holds each partition (assigned or
        # pending revocation; at most one member), and the union of the subscriptions.
        self.holder: dict[TopicPartition, str] = {}
        self.topic_names: frozenset[str] | None = frozenset()  # None: recompute
        self.version = -1
        self.session_deadline_ms: dict[str, int] = {}
        self.revocation_deadline_ms: dict[str, int] = {}

    def copy(self) -> Group:
        g = Group(self.group_id)
        g.has_metadata = self.has_metadata
        g.group_epoch = self.group_epoch
        g.subscribed_topics = self.subscribed_topics
        g.assignment_epoch = self.assignment_epoch
        g.members = dict(self.members)
        g.current = dict(self.current)
        g.target = dict(self.target)
        g.holder = dict(self.holder)
        g.topic_names = self.topic_names
        g.version = self.version
        return g

    def is_empty_of_records(self) -> bool:
        return not (self.has_metadata or self.members or self.current or self.target)

    def member(self, member_id: str) -> Member | None:
        meta = self.members.get(member_id)
        if meta is None:
            return None
        cur = self.current.get(member_id, _NEW_MEMBER_ASSIGNMENT)
        return Member(
            member_id, meta.client_id, meta.subscribed_topics, meta.rebalance_timeout_ms,
            cur.member_epoch, cur.previous_member_epoch, cur.state, cur.assigned,
            cur.pending_revocation, self.target.get(member_id, EMPTY_PARTITIONS),
        )

    def state(self) -> group_pb2.GroupState:
        """A semel.v1.GroupState value."""
        if not self.members:
            return group_pb2.GROUP_STATE_EMPTY
        for mid in self.members:
            cur = self.current.get(mid, _NEW_MEMBER_ASSIGNMENT)
            if cur.state != MemberState.STABLE or cur.member_epoch != self.assignment_epoch:
                return group_pb2.GROUP_STATE_RECONCILING
        return group_pb2.GROUP_STATE_STABLE

    def holders(self) -> dict[TopicPartition, str]:
        """Partition -> the member holding it, recomputed from scratch (for checks)."""
        out: dict[TopicPartition, str] = {}
        for mid, cur in self.current.items():
            for tp in cur.assigned | cur.pending_revocation:
                invariant(tp not in out, f"{tp} held by {out.get(tp)} and {mid}")
                out[tp] = mid
        return out

    def subscribed_topic_names(self) -> frozenset[str]:
        if self.topic_names is None:
            self.topic_names = frozenset(t for meta in self.members.values() for t in meta.subscribed_topics)
        return self.topic_names

    def _set_current(self, member_id: str, value: CurrentAssignmentValue | None) -> None:
        old = self.current.pop(member_id, None)
        if old is not None:
            for tp in old.assigned | old.pending_revocation:
                del self.holder[tp]
        if value is None:
            return
        for tp in value.assigned | value.pending_revocation:
            invariant(self.holder.setdefault(tp, member_id) == member_id, f"{tp} held by {self.holder[tp]} and {member_id}")
        self.current[member_id] = value

    def apply(self, record: GroupRecord) -> None:
        """Replay one group record (offset-commit records are not for this class)."""
        key, value = record.key, record.value
        if isinstance(key, GroupMetadataKey):
            if value is None:
                self.has_metadata = False
                self.group_epoch = 0
                self.subscribed_topics = ()
            else:
                meta = expect(value, GroupMetadataValue)
                self.has_metadata = True
                self.group_epoch = meta.group_epoch
                self.subscribed_topics = meta.subscribed_topics
        elif isinstance(key, MemberMetadataKey):
            self.topic_names = None
            if value is None:
                self.members.pop(key.member_id, None)
                self.session_deadline_ms.pop(key.member_id, None)
                self.revocation_deadline_ms.pop(key.member_id, None)
            else:
                self.members[key.member_id] = expect(value, MemberMetadataValue)
        elif isinstance(key, CurrentAssignmentKey):
            self._set_current(key.member_id, None if value is None else expect(value, CurrentAssignmentValue))
        elif isinstance(key, TargetAssignmentMemberKey):
            if value is None:
                self.target.pop(key.member_id, None)
            else:
                self.target[key.member_id] = expect(value, TargetAssignmentMemberValue).partitions
        elif isinstance(key, TargetAssignmentMetadataKey):
            self.assignment_epoch = 0 if value is None else expect(value, TargetAssignmentMetadataValue).assignment_epoch
        else:
            raise AssertionError(f"not a group record: {record!r}")


# --- the assignor ---------------------------------------------------------------------------------


def assign(
    subscriptions: Mapping[str, Sequence[str]],
    partition_counts: Mapping[str, int],
    previous: Mapping[str, Partitions],
) -> dict[str, Partitions]:
    """A deterministic, sticky, balanced assignment.

    Every partition of every subscribed topic that exists goes to exactly one member
    subscribed to its topic, and no partition could move to an eligible member with at
    least two fewer partitions (so counts differ by at most one among members with the same
    subscription). Members keep what they had (`previous`) where that stays balanced. Only
    the inputs matter, not the iteration order of the mappings.

    When every member has the same subscription (the common case) quotas are computed
    directly (O(P log P)); otherwise new partitions go to the least loaded eligible member
    and a balancing pass moves partitions until no improving move exists.
    """
    members = sorted(subscriptions)
    if not members:
        return {}
    subs = {m: frozenset(subscriptions[m]) for m in members}
    topics = sorted({t for m in members for t in subs[m] if partition_counts.get(t, 0) > 0})
    partitions = [TopicPartition(t, p) for t in topics for p in range(partition_counts[t])]
    if all(subs[m] == subs[members[0]] for m in members):
        return _assign_uniform(members, partitions, previous)
    return _assign_general(members, subs, topics, partitions, previous)


def _assign_uniform(
    members: list[str], partitions: list[TopicPartition], previous: Mapping[str, Partitions]
) -> dict[str, Partitions]:
    base, extra = divmod(len(partitions), len(members))
    valid = set(partitions)
    taken: set[TopicPartition] = set()
    kept: dict[str, list[TopicPartition]] = {}
    for m in members:  # keep up to base + 1 of what each member had
        mine = [tp for tp in sorted(previous.get(m, EMPTY_PARTITIONS)) if tp in valid and tp not in taken]
        kept[m] = mine[: base + 1]
        taken.update(kept[m])
    big = [m for m in members if len(kept[m]) == base + 1]
    for m in big[extra:]:  # only `extra` members may have base + 1
        taken.discard(kept[m].pop())
    quota = {m: base for m in members}
    for m in big[:extra]:
        quota[m] = base + 1
    others = sorted((m for m in members if quota[m] == base), key=lambda m: (-len(kept[m]), m))
    for m in others[: extra - min(extra, len(big))]:
        quota[m] = base + 1
    free = iter(tp for tp in partitions if tp not in taken)
    for m in members:
        kept[m].extend(next(free) for _ in range(quota[m] - len(kept[m])))
    invariant(next(free, None) is None, "uniform assignment left a partition unassigned")
    return {m: frozenset(ps) for m, ps in kept.items()}


def _assign_general(
    members: list[str],
    subs: Mapping[str, frozenset[str]],
    topics: list[str],
    partitions: list[TopicPartition],
    previous: Mapping[str, Partitions],
) -> dict[str, Partitions]:
    valid = set(partitions)
    out: dict[str, set[TopicPartition]] = {m: set() for m in members}
    eligible = {t: [m for m in members if t in subs[m]] for t in topics}
    owner: dict[TopicPartition, str] = {}
    for m in members:
        for tp in sorted(previous.get(m, EMPTY_PARTITIONS)):
            if tp in valid and tp.topic in subs[m] and tp not in owner:
                owner[tp] = m
                out[m].add(tp)
    # Least loaded eligible member per topic: a lazy heap whose stale entries (load grew
    # since they were pushed) are refreshed when they reach the top.
    heaps = {t: [(len(out[m]), m) for m in eligible[t]] for t in topics}
    for heap in heaps.values():
        heapq.heapify(heap)
    for tp in partitions:
        if tp in owner:
            continue
        heap = heaps[tp.topic]
        while True:
            load, m = heapq.heappop(heap)
            if load == len(out[m]):
                break
            heapq.heappush(heap, (len(out[m]), m))
        owner[tp] = m
        out[m].add(tp)
        heapq.heappush(heap, (len(out[m]), m))
    _balance(out, eligible, subs)
    return {m: frozenset(ps) for m, ps in out.items()}


def _balance(
    out: dict[str, set[TopicPartition]], eligible: Mapping[str, list[str]], subs: Mapping[str, frozenset[str]]
) -> None:
    # Each move lowers the sum of squared loads by at least 2, so this terminates. The least
    # loaded eligible member per topic is cached and forgotten when a member's load changes.
    cache: dict[str, tuple[int, str]] = {}

    def least(topic: str) -> tuple[int, str]:
        if topic not in cache:
            cache[topic] = min((len(out[x]), x) for x in eligible[topic])
        return cache[topic]

    while True:
        moved = False
        for giver in sorted(out, key=lambda m: (-len(out[m]), m)):
            for tp in sorted(out[giver], reverse=True):
                load, taker = least(tp.topic)
                if len(out[giver]) > load + 1:
                    out[giver].remove(tp)
                    out[taker].add(tp)
                    for t in subs[giver] | subs[taker]:
                        cache.pop(t, None)
                    moved = True
        if not moved:
            return


# --- reconciliation -------------------------------------------------------------------------------


def reconcile(
    cur: CurrentAssignmentValue,
    target: Partitions,
    target_epoch: int,
    owned: Partitions | None,
    held_by_others: Callable[[TopicPartition], bool],
) -> CurrentAssignmentValue:
    """One reconciliation step of a member towards `target` (see the module docstring)."""
    pending = cur.pending_revocation
    if pending and owned is not None and not (owned & pending):
        pending = EMPTY_PARTITIONS  # the member reported them released
    revoke = cur.assigned - target
    if pending or revoke:
        return CurrentAssignmentValue(
            cur.member_epoch, cur.previous_member_epoch, MemberState.UNREVOKED_PARTITIONS,
            cur.assigned & target, pending | revoke,
        )
    missing = target - cur.assigned
    free = frozenset(tp for tp in missing if not held_by_others(tp))
    state = MemberState.UNRELEASED_PARTITIONS if len(free) < len(missing) else MemberState.STABLE
    previous_epoch = cur.member_epoch if target_epoch != cur.member_epoch else cur.previous_member_epoch
    return CurrentAssignmentValue(target_epoch, previous_epoch, state, cur.assigned | free, EMPTY_PARTITIONS)


# --- the state machine -----------------------------------------------------------------------------


class _Error(Exception):
    def __init__(self, code: common_pb2.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GroupStateMachine:
    """The groups (with members) of one __consumer_offsets partition."""

    def __init__(self, config: GroupConfig | None = None) -> None:
        self.config = config or GroupConfig()
        self.groups: dict[str, Group] = {}
        self._replayed = 0  # every replayed record; versions come from it, so they never repeat

    # --- durable changes ---------------------------------------------------------------------

    def replay(self, record: GroupRecord) -> None:
        """Apply one group record (from a completed decision or from loading the log)."""
        gid = record.group_id
        group = self.groups.get(gid)
        if group is None:
            if record.value is None:
                return  # a tombstone for something we never had
            group = self.groups[gid] = Group(gid)
        group.apply(record)
        self._replayed += 1
        group.version = self._replayed
        if group.is_empty_of_records():
            del self.groups[gid]

    def complete(self, decision: GroupDecision, monotonic_ms: int) -> HeartbeatResponse | None:
        """Apply a decision whose records are durable; returns the response to send. The
        heartbeating member's session restarts at `monotonic_ms` (never the wall clock)."""
        group = self.groups.get(decision.group_id)
        invariant(
            (group.version if group else -1) == decision.base_version or not decision.records,
            f"group {decision.group_id} changed between prepare and complete",
        )
        for record in decision.records:
            self.replay(record)
        group = self.groups.get(decision.group_id)
        mid = decision.heartbeat_member
        if group is not None and mid is not None and mid in group.members:
            group.session_deadline_ms[mid] = monotonic_ms + self.config.session_timeout_ms
            self._update_revocation_deadline(group, mid, monotonic_ms)
        return decision.response

    def on_loaded(self, monotonic_ms: int) -> None:
        """After loading a partition: every session and revocation timer restarts now."""
        for group in self.groups.values():
            for mid in group.members:
                group.session_deadline_ms[mid] = monotonic_ms + self.config.session_timeout_ms
                group.revocation_deadline_ms.pop(mid, None)
                self._update_revocation_deadline(group, mid, monotonic_ms)

    def _update_revocation_deadline(self, group: Group, mid: str, monotonic_ms: int) -> None:
        cur = group.current.get(mid)
        if cur is None or not cur.pending_revocation:
            group.revocation_deadline_ms.pop(mid, None)
        elif mid not in group.revocation_deadline_ms:
            group.revocation_deadline_ms[mid] = monotonic_ms + group.members[mid].rebalance_timeout_ms

    # --- queries -----------------------------------------------------------------------------

    def group(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    def member(self, group_id: str, member_id: str) -> Member | None:
        group = self.groups.get(group_id)
        return None if group is None else group.member(member_id)

    def member_count(self, group_id: str) -> int:
        group = self.groups.get(group_id)
        return 0 if group is None else len(group.members)

    def check_invariants(self) -> None:
        """Raise AssertionError if any durable invariant does not hold."""
        for group in self.groups.values():
            holders = group.holders()  # checks: at most one holder per partition
            invariant(holders == group.holder, f"holder index of {group.group_id} out of date")
            for mid, parts in group.target.items():
                invariant(mid in group.members, f"target for unknown member {mid}")
                for other, others in group.target.items():
                    invariant(other == mid or not (parts & others), f"targets of {mid} and {other} overlap")
            for mid in group.current:
                invariant(mid in group.members, f"assignment for unknown member {mid}")
            for tp, mid in holders.items():
                invariant(mid in group.members, f"{tp} held by unknown member {mid}")

    # --- heartbeat -----------------------------------------------------------------------------

    def prepare_heartbeat(
        self,
        request: HeartbeatRequest,
        now_ms: int,
        partition_counts: Mapping[str, int],
        new_member_id: str = "",
    ) -> GroupDecision:
        """Decide a heartbeat. `partition_counts`: partitions of the subscribed topics (from
        the metadata image; a missing topic has none). `new_member_id`: a fresh unique id
        (the shell makes a UUID) used when the request joins with an empty member id."""
        del now_ms  # decisions do not depend on time; timers are set in complete()
        group = self.groups.get(request.group_id)
        base_version = group.version if group is not None else -1
        try:
            self._validate(request)
            if request.member_epoch == LEAVE_EPOCH:
                return self._leave(request, group, partition_counts)
            return self._heartbeat(request, group, partition_counts, new_member_id)
        except _Error as err:
            return GroupDecision(
                request.group_id, base_version, (),
                HeartbeatResponse(err.code, err.message, request.member_id, LEAVE_EPOCH),
                err.code,
            )

    def _validate(self, req: HeartbeatRequest) -> None:
        gid = req.group_id.encode()
        if not gid or len(gid) > limits.MAX_GROUP_ID_BYTES:
            raise _Error(E.INVALID_GROUP_ID, f"group id must be 1..{limits.MAX_GROUP_ID_BYTES} bytes")
        if len(req.member_id.encode()) > limits.MAX_MEMBER_ID_BYTES:
            raise _Error(E.INVALID_REQUEST, f"member id longer than {limits.MAX_MEMBER_ID_BYTES} bytes")
        if len(req.client_id.encode()) > limits.MAX_CLIENT_ID_BYTES:
            raise _Error(E.INVALID_REQUEST, f"client id longer than {limits.MAX_CLIENT_ID_BYTES} bytes")
        if req.member_epoch < LEAVE_EPOCH:
            raise _Error(E.INVALID_REQUEST, f"member epoch {req.member_epoch} < -1")
        if req.member_epoch != JOIN_EPOCH and not req.member_id:
            raise _Error(E.INVALID_REQUEST, "member id is required unless joining")
        if req.subscribed_topics is not None:
            if len(req.subscribed_topics) > self.config.max_subscribed_topics:
                raise _Error(E.INVALID_REQUEST, f"more than {self.config.max_subscribed_topics} subscribed topics")
            if any(not t for t in req.subscribed_topics):
                raise _Error(E.INVALID_REQUEST, "empty topic name in subscription")
        if req.rebalance_timeout_ms < 0:
            raise _Error(E.INVALID_REQUEST, "negative rebalance timeout")

    def _leave(self, req: HeartbeatRequest, group: Group | None, counts: Mapping[str, int]) -> GroupDecision:
        if group is None or req.member_id not in group.members:
            raise _Error(E.UNKNOWN_MEMBER_ID, f"{req.member_id!r} is not a member of {req.group_id!r}")
        scratch = group.copy()
        records: list[GroupRecord] = []
        _emit(scratch, records, _removal_records(req.group_id, req.member_id))
        self._bump_and_assign(scratch, records, counts)
        return GroupDecision(
            req.group_id, group.version, tuple(records),
            HeartbeatResponse(E.NONE, "", req.member_id, LEAVE_EPOCH, self.config.heartbeat_interval_ms, None),
            removed_members=(req.member_id,),
        )

    def _heartbeat(
        self, req: HeartbeatRequest, group: Group | None, counts: Mapping[str, int], new_member_id: str
    ) -> GroupDecision:
        joining = req.member_epoch == JOIN_EPOCH
        member_id = req.member_id
        if group is not None and not joining:
            steady = self._steady(req, group, counts)
            if steady is not None:
                return steady
        if group is None:
            if not joining:
                raise _Error(E.UNKNOWN_MEMBER_ID, f"group {req.group_id!r} has no members")
            if len(self.groups) >= self.config.max_groups:
                raise _Error(E.RESOURCE_EXHAUSTED, f"coordinator partition holds {self.config.max_groups} groups")
            scratch = Group(req.group_id)
        else:
            scratch = group.copy()
        records: list[GroupRecord] = []
        removed: tuple[str, ...] = ()
        bump = False
        if joining:
            if req.subscribed_topics is None:
                raise _Error(E.INVALID_REQUEST, "a joining member must send its subscription")
            if not member_id:
                invariant(bool(new_member_id), "new_member_id is required for a join without member id")
                member_id = new_member_id
            if member_id in scratch.members:  # a new incarnation replaces the old one
                _emit(scratch, records, _removal_records(req.group_id, member_id))
                removed = (member_id,)
            if len(scratch.members) >= self.config.max_members_per_group:
                raise _Error(E.GROUP_MAX_SIZE_REACHED, f"group has {self.config.max_members_per_group} members")
            old_meta = None
        else:
            old_meta = scratch.members.get(member_id)
            if old_meta is None:
                raise _Error(E.UNKNOWN_MEMBER_ID, f"{member_id!r} is not a member of {req.group_id!r}")
            self._check_epoch(scratch, member_id, req)
        meta = self._new_metadata(old_meta, req)
        if meta != old_meta:
            _emit(scratch, records, [GroupRecord(MemberMetadataKey(req.group_id, member_id), meta)])
            bump = old_meta is None or meta.subscribed_topics != old_meta.subscribed_topics
        if bump or not scratch.has_metadata or _subscribed_counts(scratch, counts) != scratch.subscribed_topics:
            self._bump_and_assign(scratch, records, counts)
        cur = scratch.current.get(member_id, _NEW_MEMBER_ASSIGNMENT)
        new_cur = reconcile(
            cur,
            scratch.target.get(member_id, EMPTY_PARTITIONS),
            scratch.assignment_epoch,
            req.owned,
            lambda tp: scratch.holder.get(tp, member_id) != member_id,
        )
        if new_cur != scratch.current.get(member_id):
            _emit(scratch, records, [GroupRecord(CurrentAssignmentKey(req.group_id, member_id), new_cur)])
        return GroupDecision(
            req.group_id,
            group.version if group is not None else -1,
            tuple(records),
            HeartbeatResponse(
                E.NONE, "", member_id, new_cur.member_epoch, self._interval_for(new_cur.state), new_cur.assigned
            ),
            heartbeat_member=member_id,
            removed_members=removed,
        )

    def _interval_for(self, state: MemberState) -> int:
        """A member still reconciling (partitions to give up, or to take once others released
        them) heartbeats sooner: the rebalance waits for its next heartbeat, not for the regular
        interval (a settled member heartbeats at the regular one)."""
        if state == MemberState.STABLE:
            return self.config.heartbeat_interval_ms
        return min(self.config.heartbeat_interval_ms, limits.GROUP_RECONCILING_HEARTBEAT_INTERVAL_MS)

    def _steady(self, req: HeartbeatRequest, group: Group, counts: Mapping[str, int]) -> GroupDecision | None:
        """The common heartbeat: a stable member, nothing changed. Answered without copying
        the group (a full prepare would produce no records either)."""
        meta = group.members.get(req.member_id)
        cur = group.current.get(req.member_id)
        if meta is None or cur is None or req.member_epoch != cur.member_epoch:
            return None
        if cur.state != MemberState.STABLE or not group.has_metadata:
            return None
        if not cur.member_epoch == group.assignment_epoch == group.group_epoch:
            return None
        if self._new_metadata(meta, req) != meta or _subscribed_counts(group, counts) != group.subscribed_topics:
            return None
        return GroupDecision(
            req.group_id, group.version, (),
            HeartbeatResponse(E.NONE, "", req.member_id, cur.member_epoch, self.config.heartbeat_interval_ms, cur.assigned),
            heartbeat_member=req.member_id,
        )

    def _check_epoch(self, group: Group, member_id: str, req: HeartbeatRequest) -> None:
        cur = group.current.get(member_id, _NEW_MEMBER_ASSIGNMENT)
        if req.member_epoch == cur.member_epoch:
            return
        # The member missed our last response (it still owns only what it had before).
        if (
            req.member_epoch == cur.previous_member_epoch
            and req.owned is not None
            and req.owned <= cur.assigned
        ):
            return
        raise _Error(
            E.FENCED_MEMBER_EPOCH,
            f"member epoch {req.member_epoch} is not the current {cur.member_epoch}; rejoin",
        )

    def _new_metadata(self, old: MemberMetadataValue | None, req: HeartbeatRequest) -> MemberMetadataValue:
        topics = tuple(sorted(set(req.subscribed_topics))) if req.subscribed_topics is not None else None
        timeout = min(req.rebalance_timeout_ms, self.config.rebalance_timeout_ms_max)
        if old is None:
            invariant(topics is not None, "join without subscription")
            return MemberMetadataValue(req.client_id, topics or (), timeout or self.config.rebalance_timeout_ms_default)
        return MemberMetadataValue(
            req.client_id or old.client_id,
            topics if topics is not None else old.subscribed_topics,
            timeout or old.rebalance_timeout_ms,
        )

    def _bump_and_assign(self, scratch: Group, records: list[GroupRecord], counts: Mapping[str, int]) -> None:
        """New group epoch, new target assignment for it (records appended and applied)."""
        gid = scratch.group_id
        subscribed = _subscribed_counts(scratch, counts)
        total = sum(n for _, n in subscribed)
        if total > self.config.max_assignable_partitions:
            raise _Error(E.INVALID_REQUEST, f"the subscriptions cover {total} partitions (max {self.config.max_assignable_partitions})")
        epoch = scratch.group_epoch + 1
        _emit(scratch, records, [GroupRecord(GroupMetadataKey(gid), GroupMetadataValue(epoch, subscribed))])
        new_target = assign(
            {m: meta.subscribed_topics for m, meta in scratch.members.items()},
            dict(subscribed),
            scratch.target,
        )
        changed = [
            GroupRecord(TargetAssignmentMemberKey(gid, m), TargetAssignmentMemberValue(parts))
            for m, parts in sorted(new_target.items())
            if scratch.target.get(m) != parts
        ]
        _emit(scratch, records, changed)
        _emit(scratch, records, [GroupRecord(TargetAssignmentMetadataKey(gid), TargetAssignmentMetadataValue(epoch))])

    # --- timeouts ---------------------------------------------------------------------------------

    def expired_groups(self, monotonic_ms: int) -> list[str]:
        """Groups with a member whose session or revocation deadline passed (deadlines and
        `monotonic_ms` are on the coordinator's monotonic clock). A member with
        no timer yet (cannot happen after on_loaded/complete) gets one now."""
        return [gid for gid in sorted(self.groups) if self._expired_members(self.groups[gid], monotonic_ms)]

    def _expired_members(self, group: Group, monotonic_ms: int) -> list[str]:
        expired = []
        for mid in sorted(group.members):
            session = group.session_deadline_ms.setdefault(mid, monotonic_ms + self.config.session_timeout_ms)
            revocation = group.revocation_deadline_ms.get(mid)
            if session <= monotonic_ms or (revocation is not None and revocation <= monotonic_ms):
                expired.append(mid)
        return expired

    def prepare_expire(self, group_id: str, monotonic_ms: int, partition_counts: Mapping[str, int]) -> GroupDecision | None:
        """Remove the group's expired members (group epoch bumped, new target); None if
        nobody expired (any more). The shell queues this behind the group's in-flight
        decision like any request, and completes it after its records are durable."""
        group = self.groups.get(group_id)
        expired = [] if group is None else self._expired_members(group, monotonic_ms)
        if group is None or not expired:
            return None
        scratch = group.copy()
        records: list[GroupRecord] = []
        for mid in expired:
            _emit(scratch, records, _removal_records(group_id, mid))
        try:
            self._bump_and_assign(scratch, records, partition_counts)
        except _Error:  # too many partitions: still remove the members, keep the old target
            pass
        return GroupDecision(group_id, group.version, tuple(records), removed_members=tuple(expired))

    def expire(self, monotonic_ms: int, partition_counts: Mapping[str, int]) -> list[GroupDecision]:
        """`prepare_expire` of every group in `expired_groups` (when nothing is in flight)."""
        decisions = (self.prepare_expire(gid, monotonic_ms, partition_counts) for gid in self.expired_groups(monotonic_ms))
        return [d for d in decisions if d is not None]

    # --- admin ---------------------------------------------------------------------------------------

    def delete_records(self, group_id: str) -> list[GroupRecord]:
        """Tombstones for the group's own records (caller checked it has no members)."""
        group = self.groups.get(group_id)
        if group is None:
            return []
        invariant(not group.members, "deleting a group with members")
        records = [GroupRecord(TargetAssignmentMemberKey(group_id, m), None) for m in sorted(group.target)]
        records += [GroupRecord(CurrentAssignmentKey(group_id, m), None) for m in sorted(group.current)]
        records.append(GroupRecord(TargetAssignmentMetadataKey(group_id), None))
        records.append(GroupRecord(GroupMetadataKey(group_id), None))
        return records


def _emit(scratch: Group, records: list[GroupRecord], new: Sequence[GroupRecord]) -> None:
    for record in new:
        scratch.apply(record)
        records.append(record)


def _removal_records(group_id: str, member_id: str) -> list[GroupRecord]:
    return [
        GroupRecord(CurrentAssignmentKey(group_id, member_id), None),
        GroupRecord(TargetAssignmentMemberKey(group_id, member_id), None),
        GroupRecord(MemberMetadataKey(group_id, member_id), None),
    ]


def _subscribed_counts(group: Group, counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    topics = group.subscribed_topic_names()
    return tuple(sorted((t, counts[t]) for t in topics if counts.get(t, 0) > 0))


# --- descriptions (DescribeGroups / ListGroups) ----------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: group_pb2.GroupState
    group_epoch: int
    assignment_epoch: int
    members: tuple[Member, ...]     # sorted by member id


def describe(sm: GroupStateMachine, group_id: str) -> GroupDescription | None:
    group = sm.group(group_id)
    if group is None:
        return None
    members = tuple(m for m in (group.member(mid) for mid in sorted(group.members)) if m is not None)
    return GroupDescription(group_id, group.state(), group.group_epoch, group.assignment_epoch, members)
