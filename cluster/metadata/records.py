"""The bytes the metadata quorum persists and replicates: commands and snapshots as protobuf.

How it works
------------
`proto/semel/v1/metadata_records.proto` is the contract (internal: only this module reads or
writes it). The pure state machine keeps its frozen dataclasses; this module converts at the
shell edge, in one direction each:

  encode_command(Command) -> bytes         decode_command(bytes) -> Command
  encode_snapshot(Snapshot) -> bytes       decode_snapshot(bytes) -> Snapshot

Conversion is table-driven: each dataclass has a message of the same field names, and
`_to_message` / `_from_message` copy the fields by name (the only shapes are scalars, optional
scalars, repeated scalars, nested value dataclasses and `(key, value)` config pairs). No Python
module or class name is in the bytes, so moving or renaming a class cannot break a restart;
renaming a *field* needs the .proto field renamed too (field numbers stay), which the codec
round-trip tests catch.

Every record carries `format_version`. A reader that meets another version, bytes that do not
parse, or a command type it does not know raises `MetadataRecordError`: it never guesses and
never skips (a replica that skipped a command the others applied would diverge).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from semel.cluster.metadata.acl import AclBinding, AclFilter
from semel.cluster.metadata.state import (
    AllocateProducerIds,
    CreateAcls,
    DeleteAcls,
    AlterPartition,
    AlterTopicConfig,
    Barrier,
    BrokerRegistration,
    DeleteUser,
    Command,
    CompleteReassignment,
    CreatePartitions,
    CreateTopic,
    DecommissionBroker,
    DeleteTopic,
    ElectLeader,
    FenceBroker,
    MetadataImage,
    MetadataStateMachine,
    PartitionState,
    ProducerIdBlock,
    ReassignPartition,
    RegisterBroker,
    Result,
    Topic,
    TopicConfig,
    UnfenceBroker,
    UpsertUserScram,
)
from semel.scram import ScramCredential
from semel.v1 import common_pb2 as pb
from semel.v1 import metadata_records_pb2 as mpb

_Record = TypeVar("_Record", mpb.MetadataCommand, mpb.MetadataSnapshot)  # the records with a format version

FORMAT_VERSION = mpb.FORMAT_VERSION_1


class MetadataRecordError(Exception):
    """Bytes that this build cannot read as a metadata record (unknown version, corrupt, or a
    command type from a newer build). Never retriable: the same bytes fail the same way."""


# (dataclass, the `command` oneof's field name, message). Field numbers live in the .proto.
_COMMANDS: tuple[tuple[type, str, type[Message]], ...] = (
    (RegisterBroker, "register_broker", mpb.RegisterBroker),
    (UnfenceBroker, "unfence_broker", mpb.UnfenceBroker),
    (FenceBroker, "fence_broker", mpb.FenceBroker),
    (CreateTopic, "create_topic", mpb.CreateTopic),
    (DeleteTopic, "delete_topic", mpb.DeleteTopic),
    (AlterPartition, "alter_partition", mpb.AlterPartition),
    (ElectLeader, "elect_leader", mpb.ElectLeader),
    (AllocateProducerIds, "allocate_producer_ids", mpb.AllocateProducerIds),
    (Barrier, "barrier", mpb.Barrier),
    (CreatePartitions, "create_partitions", mpb.CreatePartitions),
    (AlterTopicConfig, "alter_topic_config", mpb.AlterTopicConfig),
    (ReassignPartition, "reassign_partition", mpb.ReassignPartition),
    (CompleteReassignment, "complete_reassignment", mpb.CompleteReassignment),
    (UpsertUserScram, "upsert_user_scram", mpb.UpsertUserScram),
    (DeleteUser, "delete_user", mpb.DeleteUser),
    (DecommissionBroker, "decommission_broker", mpb.DecommissionBroker),
    (CreateAcls, "create_acls", mpb.CreateAcls),
    (DeleteAcls, "delete_acls", mpb.DeleteAcls),
)
_ONEOF_BY_CLASS = {cls: oneof for cls, oneof, _ in _COMMANDS}
_CLASS_BY_ONEOF = {oneof: cls for cls, oneof, _ in _COMMANDS}

# Nested values: message full name -> dataclass. ConfigEntry decodes to a (key, value) pair.
_VALUES: dict[str, type] = {
    mpb.BrokerRegistration.DESCRIPTOR.full_name: BrokerRegistration,
    mpb.TopicConfig.DESCRIPTOR.full_name: TopicConfig,
    mpb.PartitionState.DESCRIPTOR.full_name: PartitionState,
    mpb.Topic.DESCRIPTOR.full_name: Topic,
    mpb.ProducerIdBlock.DESCRIPTOR.full_name: ProducerIdBlock,
    mpb.ScramCredential.DESCRIPTOR.full_name: ScramCredential,
    mpb.AclBinding.DESCRIPTOR.full_name: AclBinding,
    mpb.AclFilter.DESCRIPTOR.full_name: AclFilter,
}
_CONFIG_ENTRY = mpb.ConfigEntry.DESCRIPTOR.full_name

# A remembered result's value: (type, the `value` oneof's field name).
_RESULT_VALUES: tuple[tuple[type, str], ...] = (
    (int, "int_value"),
    (Topic, "topic"),
    (PartitionState, "partition"),
    (ProducerIdBlock, "producer_id_block"),
)


@dataclass(frozen=True, slots=True)
class RaftEntry:
    """A pysyncobj log entry as it keeps it: `(command bytes, index, term)`."""

    command: bytes
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a pysyncobj full dump holds for the metadata quorum."""

    machine: MetadataStateMachine
    last_entry: RaftEntry
    previous_entry: RaftEntry
    cluster_addresses: tuple[str, ...]


# --- commands -----------------------------------------------------------------------------


def encode_command(command: Command) -> bytes:
    oneof = _ONEOF_BY_CLASS.get(type(command))
    if oneof is None:
        raise MetadataRecordError(f"not a metadata command: {command!r}")
    envelope = mpb.MetadataCommand(format_version=FORMAT_VERSION, command_id=command.command_id)
    body = getattr(envelope, oneof)
    body.SetInParent()  # selects the oneof even for a command with no fields (Barrier)
    _to_message(command, body)
    return envelope.SerializeToString()


def decode_command(data: bytes) -> Command:
    envelope = _parse(mpb.MetadataCommand, data, "command")
    oneof = envelope.WhichOneof("command")
    if oneof is None:
        raise MetadataRecordError("metadata command of a type this build does not know (from a newer build?)")
    return _from_message(getattr(envelope, oneof), _CLASS_BY_ONEOF[oneof], command_id=envelope.command_id)


# --- snapshots ----------------------------------------------------------------------------


def encode_snapshot(snapshot: Snapshot) -> bytes:
    machine = snapshot.machine
    message = mpb.MetadataSnapshot(
        format_version=FORMAT_VERSION,
        image=_encode_image(machine.image),
        last_applied=machine.last_applied,
        recent=[_encode_result(command_id, result) for command_id, result in machine.recent_results()],
        last_entry=_encode_entry(snapshot.last_entry),
        previous_entry=_encode_entry(snapshot.previous_entry),
        cluster_addresses=snapshot.cluster_addresses,
    )
    return message.SerializeToString()


def decode_snapshot(data: bytes) -> Snapshot:
    message = _parse(mpb.MetadataSnapshot, data, "snapshot")
    machine = MetadataStateMachine.restored(
        _decode_image(message.image),
        message.last_applied,
        [(r.command_id, _decode_result(r)) for r in message.recent],
    )
    return Snapshot(
        machine=machine,
        last_entry=_decode_entry(message.last_entry),
        previous_entry=_decode_entry(message.previous_entry),
        cluster_addresses=tuple(message.cluster_addresses),
    )


def _encode_image(image: MetadataImage) -> mpb.MetadataImage:
    # Dict order is kept (brokers and topics are written and read back in iteration order), so
    # a restored image equals the original, order included.
    return mpb.MetadataImage(
        version=image.version,
        brokers=[_to_message(b, mpb.BrokerRegistration()) for b in image.brokers.values()],
        topics=[_to_message(t, mpb.Topic()) for t in image.topics.values()],
        next_producer_id=image.next_producer_id,
        next_broker_epoch=image.next_broker_epoch,
        next_assignment_start=image.next_assignment_start,
        users=[mpb.UserCredentials(name=name, credentials=[_to_message(c, mpb.ScramCredential()) for c in creds])
               for name, creds in image.users.items()],
        acls=[_to_message(b, mpb.AclBinding()) for b in image.acls],
    )


def _decode_image(message: mpb.MetadataImage) -> MetadataImage:
    brokers = [_from_message(b, BrokerRegistration) for b in message.brokers]
    topics = [_from_message(t, Topic) for t in message.topics]
    return MetadataImage(
        version=message.version,
        brokers={b.broker_id: b for b in brokers},
        topics={t.name: t for t in topics},
        next_producer_id=message.next_producer_id,
        next_broker_epoch=message.next_broker_epoch,
        next_assignment_start=message.next_assignment_start,
        users={u.name: tuple(_from_message(c, ScramCredential) for c in u.credentials) for u in message.users},
        acls=tuple(_from_message(b, AclBinding) for b in message.acls),
    )


def _encode_result(command_id: str, result: Result) -> mpb.RecentResult:
    message = mpb.RecentResult(command_id=command_id, error=result.error)
    value = result.value
    if value is None:
        return message
    for value_type, field in _RESULT_VALUES:
        if type(value) is value_type:
            if isinstance(value, int):  # (value_type is int)
                message.int_value = value
            else:
                _to_message(value, getattr(message, field))
            return message
    raise MetadataRecordError(f"result value of type {type(value).__name__} has no snapshot encoding")


def _decode_result(message: mpb.RecentResult) -> Result:
    # the record keeps the ErrorCode's number in an int32 field
    error = cast(pb.ErrorCode, message.error)
    field = message.WhichOneof("value")
    if field is None:
        return Result(error)
    if field == "int_value":
        return Result(error, message.int_value)
    value_type = next(t for t, f in _RESULT_VALUES if f == field)
    return Result(error, _from_message(getattr(message, field), value_type))


def _encode_entry(entry: RaftEntry) -> mpb.RaftEntry:
    return mpb.RaftEntry(command=entry.command, index=entry.index, term=entry.term)


def _decode_entry(message: mpb.RaftEntry) -> RaftEntry:
    return RaftEntry(command=message.command, index=message.index, term=message.term)


# --- the table-driven field copy ----------------------------------------------------------


def _parse(message_type: type[_Record], data: bytes, what: str) -> _Record:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetadataRecordError(f"metadata {what} is {type(data).__name__}, not bytes (an old pickled record?)")
    message = message_type()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as e:
        raise MetadataRecordError(f"metadata {what} does not parse ({len(data)} bytes): {e}") from e
    if message.format_version != FORMAT_VERSION:
        raise MetadataRecordError(
            f"metadata {what} has format version {message.format_version}; this build reads {FORMAT_VERSION}"
        )
    return message


def _to_message(value: Any, message: Any) -> Any:
    """Copy the dataclass `value`'s fields into `message` (fields with the same names)."""
    fields = message.DESCRIPTOR.fields_by_name
    for f in dataclasses.fields(value):
        if f.name not in fields:
            continue  # command_id: on the envelope
        descriptor, item = fields[f.name], getattr(value, f.name)
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            if descriptor.is_repeated:
                getattr(message, f.name).extend(item)
            elif item is not None:  # None = an unset optional field
                setattr(message, f.name, item)
        elif descriptor.is_repeated:
            target = getattr(message, f.name)
            for element in item:
                if descriptor.message_type.full_name == _CONFIG_ENTRY:
                    key, config_value = element
                    target.add(key=key, value=config_value)
                else:
                    _to_message(element, target.add())
        else:
            _to_message(item, getattr(message, f.name))
    return message


def _from_message(message: Any, cls: type, **extra: Any) -> Any:
    """Build the dataclass `cls` from `message` (the inverse of `_to_message`)."""
    fields = message.DESCRIPTOR.fields_by_name
    values = dict(extra)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        descriptor = fields[f.name]
        item = getattr(message, f.name)
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            if descriptor.is_repeated:
                values[f.name] = tuple(item)
            elif descriptor.has_presence and not message.HasField(f.name):
                values[f.name] = None
            else:
                values[f.name] = item
        elif descriptor.is_repeated:
            name = descriptor.message_type.full_name
            if name == _CONFIG_ENTRY:
                values[f.name] = tuple((e.key, e.value) for e in item)
            else:
                values[f.name] = tuple(_from_message(e, _VALUES[name]) for e in item)
        else:
            values[f.name] = _from_message(item, _VALUES[descriptor.message_type.full_name])
    return cls(**values)


__all__ = [
    "FORMAT_VERSION",
    "MetadataRecordError",
    "RaftEntry",
    "Snapshot",
    "decode_command",
    "decode_snapshot",
    "encode_command",
    "encode_snapshot",
]
