"""The records of the internal topic `__consumer_offsets`, as Python values.

A record is a key and a value (`None` = tombstone: the key is deleted). Keys and values
are frozen dataclasses here and `semel.v1.group_pb2.GroupRecordKey` / `GroupRecordValue`
on disk (see the comment block "Records stored in __consumer_offsets" in group.proto).
The group state machine (`group_state`) and the offset store (`offsets`) produce these
records when they prepare a change, and replay them to apply it; `group_log` puts them into
batches and a RocksDB view. Conversion to protobuf happens only here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import TypeVar, Union

from semel.invariant import invariant
from semel.topic_partition import TopicPartition
from semel.v1 import group_pb2

_T = TypeVar("_T")


def expect(value: object, cls: type[_T]) -> _T:
    """`value`, checked to be a `cls` (a programmer error otherwise)."""
    if not isinstance(value, cls):
        raise AssertionError(f"expected {cls.__name__}, got {type(value).__name__}")
    return value



Partitions = frozenset[TopicPartition]
EMPTY_PARTITIONS: Partitions = frozenset()


class MemberState(enum.IntEnum):
    """Values of semel.v1.MemberState."""

    STABLE = group_pb2.MEMBER_STATE_STABLE
    UNREVOKED_PARTITIONS = group_pb2.MEMBER_STATE_UNREVOKED_PARTITIONS
    UNRELEASED_PARTITIONS = group_pb2.MEMBER_STATE_UNRELEASED_PARTITIONS


# --- keys -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class OffsetCommitKey:
    group_id: str
    topic: str
    partition: int


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class GroupMetadataKey:
    group_id: str


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class MemberMetadataKey:
    group_id: str
    member_id: str


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class TargetAssignmentMemberKey:
    group_id: str
    member_id: str


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class TargetAssignmentMetadataKey:
    group_id: str


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class CurrentAssignmentKey:
    group_id: str
    member_id: str


RecordKey = Union[
    OffsetCommitKey,
    GroupMetadataKey,
    MemberMetadataKey,
    TargetAssignmentMemberKey,
    TargetAssignmentMetadataKey,
    CurrentAssignmentKey,
]

# --- values -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetCommitValue:
    committed_offset: int
    committed_leader_epoch: int
    metadata: str
    commit_timestamp_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMetadataValue:
    group_epoch: int
    # (topic, partition count) of the subscribed topics that exist, sorted by topic.
    subscribed_topics: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class MemberMetadataValue:
    client_id: str
    subscribed_topics: tuple[str, ...]  # sorted, unique
    rebalance_timeout_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class TargetAssignmentMemberValue:
    partitions: Partitions


@dataclasses.dataclass(frozen=True, slots=True)
class TargetAssignmentMetadataValue:
    assignment_epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class CurrentAssignmentValue:
    member_epoch: int
    previous_member_epoch: int
    state: MemberState
    assigned: Partitions
    pending_revocation: Partitions


RecordValue = Union[
    OffsetCommitValue,
    GroupMetadataValue,
    MemberMetadataValue,
    TargetAssignmentMemberValue,
    TargetAssignmentMetadataValue,
    CurrentAssignmentValue,
]

_VALUE_FOR_KEY: dict[type, type] = {
    OffsetCommitKey: OffsetCommitValue,
    GroupMetadataKey: GroupMetadataValue,
    MemberMetadataKey: MemberMetadataValue,
    TargetAssignmentMemberKey: TargetAssignmentMemberValue,
    TargetAssignmentMetadataKey: TargetAssignmentMetadataValue,
    CurrentAssignmentKey: CurrentAssignmentValue,
}


@dataclasses.dataclass(frozen=True, slots=True)
class GroupRecord:
    """One record of __consumer_offsets; `value is None` is a tombstone."""

    key: RecordKey
    value: RecordValue | None

    def __post_init__(self) -> None:
        if self.value is not None:
            invariant(
                isinstance(self.value, _VALUE_FOR_KEY[type(self.key)]),
                f"{type(self.value).__name__} cannot be the value of {type(self.key).__name__}",
            )

    @property
    def group_id(self) -> str:
        return self.key.group_id


class RecordDecodeError(Exception):
    """Bytes that are not a GroupRecordKey / GroupRecordValue we understand."""


# --- protobuf conversion ----------------------------------------------------------------------


def partitions_to_proto(parts: Partitions) -> list[group_pb2.TopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(parts):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [group_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]


def partitions_from_proto(items: Iterable[group_pb2.TopicPartitions]) -> Partitions:
    return frozenset(
        TopicPartition(tps.topic, int(p))
        for tps in items
        for p in tps.partitions
    )


def encode_key(key: RecordKey) -> bytes:
    msg = group_pb2.GroupRecordKey()
    if isinstance(key, OffsetCommitKey):
        msg.offset_commit.CopyFrom(
            group_pb2.OffsetCommitKey(group_id=key.group_id, topic=key.topic, partition=key.partition)
        )
    elif isinstance(key, GroupMetadataKey):
        msg.group_metadata.CopyFrom(group_pb2.GroupMetadataKey(group_id=key.group_id))
    elif isinstance(key, MemberMetadataKey):
        msg.member_metadata.CopyFrom(group_pb2.MemberMetadataKey(group_id=key.group_id, member_id=key.member_id))
    elif isinstance(key, TargetAssignmentMemberKey):
        msg.target_assignment_member.CopyFrom(
            group_pb2.TargetAssignmentMemberKey(group_id=key.group_id, member_id=key.member_id)
        )
    elif isinstance(key, TargetAssignmentMetadataKey):
        msg.target_assignment_metadata.CopyFrom(group_pb2.TargetAssignmentMetadataKey(group_id=key.group_id))
    elif isinstance(key, CurrentAssignmentKey):
        msg.current_assignment.CopyFrom(
            group_pb2.CurrentAssignmentKey(group_id=key.group_id, member_id=key.member_id)
        )
    else:
        raise AssertionError(f"unknown record key {key!r}")
    return msg.SerializeToString(deterministic=True)


def decode_key(data: bytes) -> RecordKey:
    msg = group_pb2.GroupRecordKey()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError (a subclass of Exception)
        raise RecordDecodeError(f"bad record key: {exc}") from exc
    which = msg.WhichOneof("key")
    if which == "offset_commit":
        k = msg.offset_commit
        return OffsetCommitKey(k.group_id, k.topic, k.partition)
    if which == "group_metadata":
        return GroupMetadataKey(msg.group_metadata.group_id)
    if which == "member_metadata":
        return MemberMetadataKey(msg.member_metadata.group_id, msg.member_metadata.member_id)
    if which == "target_assignment_member":
        k2 = msg.target_assignment_member
        return TargetAssignmentMemberKey(k2.group_id, k2.member_id)
    if which == "target_assignment_metadata":
        return TargetAssignmentMetadataKey(msg.target_assignment_metadata.group_id)
    if which == "current_assignment":
        return CurrentAssignmentKey(msg.current_assignment.group_id, msg.current_assignment.member_id)
    raise RecordDecodeError(f"record key without a known type ({which})")


def encode_value(value: RecordValue | None) -> bytes:
    """Serialized GroupRecordValue; b"" for a tombstone (a set value is never empty)."""
    if value is None:
        return b""
    msg = group_pb2.GroupRecordValue()
    if isinstance(value, OffsetCommitValue):
        msg.offset_commit.CopyFrom(
            group_pb2.OffsetCommitValue(
                committed_offset=value.committed_offset,
                committed_leader_epoch=value.committed_leader_epoch,
                metadata=value.metadata,
                commit_timestamp_ms=value.commit_timestamp_ms,
            )
        )
    elif isinstance(value, GroupMetadataValue):
        msg.group_metadata.CopyFrom(
            group_pb2.GroupMetadataValue(
                group_epoch=value.group_epoch,
                subscribed_topics=[
                    group_pb2.TopicPartitionCount(topic=t, partitions=n) for t, n in value.subscribed_topics
                ],
            )
        )
    elif isinstance(value, MemberMetadataValue):
        msg.member_metadata.CopyFrom(
            group_pb2.MemberMetadataValue(
                client_id=value.client_id,
                subscribed_topics=list(value.subscribed_topics),
                rebalance_timeout_ms=value.rebalance_timeout_ms,
            )
        )
    elif isinstance(value, TargetAssignmentMemberValue):
        msg.target_assignment_member.CopyFrom(
            group_pb2.TargetAssignmentMemberValue(partitions=partitions_to_proto(value.partitions))
        )
    elif isinstance(value, TargetAssignmentMetadataValue):
        msg.target_assignment_metadata.CopyFrom(
            group_pb2.TargetAssignmentMetadataValue(assignment_epoch=value.assignment_epoch)
        )
    elif isinstance(value, CurrentAssignmentValue):
        msg.current_assignment.CopyFrom(
            group_pb2.CurrentAssignmentValue(
                member_epoch=value.member_epoch,
                previous_member_epoch=value.previous_member_epoch,
                state=group_pb2.MemberState.Name(value.state),
                assigned=partitions_to_proto(value.assigned),
                pending_revocation=partitions_to_proto(value.pending_revocation),
            )
        )
    else:
        raise AssertionError(f"unknown record value {value!r}")
    data = msg.SerializeToString(deterministic=True)
    invariant(len(data) > 0, "a set GroupRecordValue must not serialize to empty bytes")
    return data


def decode_value(data: bytes) -> RecordValue | None:
    if not data:
        return None
    msg = group_pb2.GroupRecordValue()
    try:
        msg.ParseFromString(data)
    except Exception as exc:
        raise RecordDecodeError(f"bad record value: {exc}") from exc
    which = msg.WhichOneof("value")
    if which == "offset_commit":
        v = msg.offset_commit
        return OffsetCommitValue(v.committed_offset, v.committed_leader_epoch, v.metadata, v.commit_timestamp_ms)
    if which == "group_metadata":
        g = msg.group_metadata
        return GroupMetadataValue(g.group_epoch, tuple((t.topic, t.partitions) for t in g.subscribed_topics))
    if which == "member_metadata":
        m = msg.member_metadata
        return MemberMetadataValue(m.client_id, tuple(m.subscribed_topics), m.rebalance_timeout_ms)
    if which == "target_assignment_member":
        return TargetAssignmentMemberValue(partitions_from_proto(msg.target_assignment_member.partitions))
    if which == "target_assignment_metadata":
        return TargetAssignmentMetadataValue(msg.target_assignment_metadata.assignment_epoch)
    if which == "current_assignment":
        c = msg.current_assignment
        try:
            state = MemberState(c.state)
        except ValueError as exc:
            raise RecordDecodeError(f"unknown member state {c.state}") from exc
        return CurrentAssignmentValue(
            c.member_epoch,
            c.previous_member_epoch,
            state,
            partitions_from_proto(c.assigned),
            partitions_from_proto(c.pending_revocation),
        )
    raise RecordDecodeError(f"record value without a known type ({which})")


def encode_record(record: GroupRecord) -> tuple[bytes, bytes]:
    return encode_key(record.key), encode_value(record.value)


def decode_record(key: bytes, value: bytes) -> GroupRecord:
    k = decode_key(key)
    v = decode_value(value)
    if v is not None and not isinstance(v, _VALUE_FOR_KEY[type(k)]):
        raise RecordDecodeError(f"{type(v).__name__} stored under a {type(k).__name__}")
    return GroupRecord(k, v)
