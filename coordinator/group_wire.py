"""The gRPC edge of the group coordinator: semel.v1 group messages <-> the pure cores.

Only conversion and read-only views live here (no I/O): the broker's Groups servicer calls
`*_from_proto`, runs prepare -> append -> complete on the `CoordinatorShard`, and answers
with `*_to_proto`. List/describe read a shard directly. Offset-reset targets that need the
partition (earliest, latest, by timestamp) are resolved by `resolve_reset` from facts the
broker looked up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from semel.coordinator.group_log import CoordinatorShard
from semel.coordinator.group_records import (
    partitions_from_proto,
    partitions_to_proto,
)
from semel.coordinator.group_state import HeartbeatRequest, HeartbeatResponse, describe
from semel.coordinator.offsets import (
    CommitDecision,
    CommitRequest,
    FetchResult,
    PartitionCommit,
    TxnCommitRequest,
    lag,
)
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2, group_pb2

E = common_pb2.ErrorCode


# --- heartbeat -----------------------------------------------------------------------------------


def heartbeat_request_from_proto(msg: group_pb2.ConsumerGroupHeartbeatRequest) -> HeartbeatRequest:
    return HeartbeatRequest(
        group_id=msg.group_id,
        member_id=msg.member_id,
        member_epoch=msg.member_epoch,
        subscribed_topics=tuple(msg.subscription.topics) if msg.HasField("subscription") else None,
        rebalance_timeout_ms=msg.rebalance_timeout_ms,
        owned=partitions_from_proto(msg.owned.partitions) if msg.HasField("owned") else None,
        client_id=msg.client_id,
    )


def heartbeat_response_to_proto(resp: HeartbeatResponse) -> group_pb2.ConsumerGroupHeartbeatResponse:
    out = group_pb2.ConsumerGroupHeartbeatResponse(
        error_code=resp.error,
        error_message=resp.error_message,
        member_id=resp.member_id,
        member_epoch=resp.member_epoch,
        heartbeat_interval_ms=resp.heartbeat_interval_ms,
    )
    if resp.assignment is not None:
        out.assignment.CopyFrom(group_pb2.Assignment(partitions=partitions_to_proto(resp.assignment)))
    return out


# --- offset commits and fetches ---------------------------------------------------------------------


def _partition_commits(topics: Iterable[group_pb2.OffsetCommitTopic]) -> tuple[PartitionCommit, ...]:
    return tuple(
        PartitionCommit(t.topic, p.partition, p.committed_offset, p.committed_leader_epoch, p.metadata)
        for t in topics
        for p in t.partitions
    )


def commit_request_from_proto(msg: group_pb2.OffsetCommitRequest) -> CommitRequest:
    return CommitRequest(msg.group_id, msg.member_id, msg.member_epoch, _partition_commits(msg.topics))


def txn_commit_request_from_proto(msg: group_pb2.TxnOffsetCommitRequest) -> TxnCommitRequest:
    return TxnCommitRequest(
        msg.transactional_id, msg.producer_id, msg.producer_epoch, msg.group_id,
        msg.member_id, msg.member_epoch, _partition_commits(msg.topics),
    )


def _topic_results(decision: CommitDecision) -> list[group_pb2.OffsetCommitTopicResult]:
    by_topic: dict[str, list[group_pb2.OffsetCommitPartitionResult]] = {}
    for tp, code in decision.partition_errors:
        by_topic.setdefault(tp.topic, []).append(
            group_pb2.OffsetCommitPartitionResult(partition=tp.partition, error_code=code)
        )
    return [group_pb2.OffsetCommitTopicResult(topic=t, partitions=ps) for t, ps in by_topic.items()]


def commit_response_to_proto(decision: CommitDecision) -> group_pb2.OffsetCommitResponse:
    return group_pb2.OffsetCommitResponse(
        error_code=decision.error, error_message=decision.error_message, topics=_topic_results(decision)
    )


def txn_commit_response_to_proto(decision: CommitDecision) -> group_pb2.TxnOffsetCommitResponse:
    return group_pb2.TxnOffsetCommitResponse(
        error_code=decision.error, error_message=decision.error_message, topics=_topic_results(decision)
    )


def fetch_partitions_from_proto(msg: group_pb2.OffsetFetchRequest) -> list[TopicPartition] | None:
    """None: every committed partition of the group."""
    if not msg.topics:
        return None
    return sorted(partitions_from_proto(msg.topics))


def fetch_result_to_proto(result: FetchResult) -> group_pb2.OffsetFetchResponse:
    return group_pb2.OffsetFetchResponse(
        error_code=result.error,
        error_message=result.error_message,
        offsets=[
            group_pb2.FetchedOffset(
                topic=o.tp.topic, partition=o.tp.partition, committed_offset=o.committed_offset,
                committed_leader_epoch=o.committed_leader_epoch, metadata=o.metadata,
                commit_timestamp_ms=o.commit_timestamp_ms, error_code=o.error,
            )
            for o in result.offsets
        ],
    )


# --- list / describe ---------------------------------------------------------------------------------


def _state_of(shard: CoordinatorShard, group_id: str) -> tuple[group_pb2.GroupState, int]:
    """(GroupState, member count) of a group known to the shard (offsets-only: EMPTY)."""
    group = shard.groups.group(group_id)
    if group is None:
        return group_pb2.GROUP_STATE_EMPTY, 0
    return group.state(), len(group.members)


def list_groups(shard: CoordinatorShard, states: frozenset[int] = frozenset()) -> list[group_pb2.ListedGroup]:
    """Every group of the shard (with members, or with committed/pending offsets only)."""
    out = []
    for gid in sorted(set(shard.groups.groups) | shard.offsets.group_ids()):
        state, count = _state_of(shard, gid)
        if states and state not in states:
            continue
        out.append(group_pb2.ListedGroup(
            group_id=gid, state=state, member_count=count, coordinator_partition=shard.partition
        ))
    return out


def describe_group(
    shard: CoordinatorShard,
    group_id: str,
    include_offsets: bool = False,
    last_stable_offsets: Mapping[TopicPartition, int] | None = None,
) -> group_pb2.DescribedGroup:
    """DescribeGroups for one group; `last_stable_offsets` (from the partition leaders) feed
    the lag column (-1 where unknown)."""
    desc = describe(shard.groups, group_id)
    known = desc is not None or group_id in shard.offsets.group_ids()
    if not known:
        return group_pb2.DescribedGroup(
            group_id=group_id, error_code=E.GROUP_ID_NOT_FOUND, error_message="no such group",
            state=group_pb2.GROUP_STATE_DEAD,
        )
    out = group_pb2.DescribedGroup(group_id=group_id, error_code=E.NONE)
    if desc is None:
        out.state = group_pb2.GROUP_STATE_EMPTY
    else:
        out.state = desc.state
        out.group_epoch = desc.group_epoch
        out.assignment_epoch = desc.assignment_epoch
        for m in desc.members:
            out.members.add(
                member_id=m.member_id, client_id=m.client_id, member_epoch=m.member_epoch, state=group_pb2.MemberState.Name(m.state),
                subscribed_topics=list(m.subscribed_topics), rebalance_timeout_ms=m.rebalance_timeout_ms,
                assignment=group_pb2.Assignment(partitions=partitions_to_proto(m.assigned)),
                pending_revocation=group_pb2.Assignment(partitions=partitions_to_proto(m.pending_revocation)),
                target_assignment=group_pb2.Assignment(partitions=partitions_to_proto(m.target)),
            )
    if include_offsets:
        lsos = last_stable_offsets or {}
        committed = shard.offsets.committed_offsets(group_id)
        pending = shard.offsets.pending_partitions(group_id)
        for tp in sorted(set(committed) | pending):
            c = committed.get(tp)
            offset = c.committed_offset if c is not None else -1
            out.offsets.add(
                topic=tp.topic, partition=tp.partition, committed_offset=offset,
                metadata=c.metadata if c is not None else "",
                commit_timestamp_ms=c.commit_timestamp_ms if c is not None else -1,
                pending_transactional=tp in pending, last_stable_offset=lsos.get(tp, -1),
                lag=lag(offset, lsos.get(tp, -1)),
            )
    return out


# --- reset -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionFacts:
    """What the broker looked up for resetting one partition."""

    log_start_offset: int
    last_stable_offset: int
    offset_for_timestamp: int | None = None   # first offset with timestamp >= the request's, if asked


def resolve_reset(
    strategy: int, value: int, committed_offset: int, facts: PartitionFacts | None
) -> tuple[common_pb2.ErrorCode, int]:
    """(error, new offset) for one ResetPartition; `facts` None: the partition does not exist."""
    if facts is None:
        return E.UNKNOWN_TOPIC_OR_PARTITION, -1
    low, high = facts.log_start_offset, facts.last_stable_offset
    if strategy == group_pb2.OFFSET_RESET_TO_OFFSET:
        return (E.NONE, min(max(value, low), high)) if value >= 0 else (E.INVALID_REQUEST, -1)
    if strategy == group_pb2.OFFSET_RESET_TO_EARLIEST:
        return E.NONE, low
    if strategy == group_pb2.OFFSET_RESET_TO_LATEST:
        return E.NONE, high
    if strategy == group_pb2.OFFSET_RESET_TO_TIMESTAMP:
        found = facts.offset_for_timestamp
        return E.NONE, high if found is None else min(max(found, low), high)
    if strategy == group_pb2.OFFSET_RESET_SHIFT_BY:
        base = committed_offset if committed_offset >= 0 else low
        return E.NONE, min(max(base + value, low), high)
    return E.INVALID_REQUEST, -1
