"""Reads the metadata quorum files of builds before `metadata_records.proto` (pickled dataclasses).

How it works
------------
Until the protobuf records, pysyncobj pickled the command dataclasses into each journal entry
and the whole `MetadataStateMachine` into its full dump, so those bytes name Python classes:
`semel.cluster.metadata.RegisterBroker` (up to commit 551ae17) or
`semel.cluster.metadata.state.RegisterBroker` (the restructure that followed). The first path
no longer exists, which is why an old journal stopped replaying.

This module never imports a class by the name a pickle asks for. A restricted unpickler maps
the names in `_LEGACY_CLASSES` (ours, frozen as those builds wrote them: class name and field
order) to inert stand-ins, allows the few builtins those pickles use, and refuses every other
global (`MetadataRecordError`). The stand-ins are then rebuilt into today's dataclasses by
field name. So this is both the compatibility path and a narrowing of what unpickling a data
dir can execute (pysyncobj itself still unpickles its own envelopes and its network messages).

Two entry points, both used by the quorum shell when it opens a data dir:
  * `migrate_journal(path)`: rewrites, once, every journal entry that still holds a pickled
    dataclass into the protobuf form (same index and term), and checks that every other entry
    decodes; an entry it cannot read raises instead of being skipped.
  * `load_legacy_dump(data)`: a gzip-pickled full dump -> `records.Snapshot`, with its two kept
    entries converted the same way (pysyncobj compares them with the journal's first entries).
The files of these builds stay readable for as long as this module is kept; the next log
compaction writes the snapshot in the protobuf form.
"""

from __future__ import annotations

import collections
import gzip
import io
import os
import pickle
from pathlib import Path
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj.journal import FileJournal
from semel.cluster.metadata import records
from semel.cluster.metadata.records import MetadataRecordError, RaftEntry, Snapshot
from semel.cluster.metadata.state import (
    AllocateProducerIds,
    AlterPartition,
    Barrier,
    BrokerRegistration,
    CreateTopic,
    DeleteTopic,
    ElectLeader,
    FenceBroker,
    MetadataImage,
    MetadataStateMachine,
    PartitionState,
    ProducerIdBlock,
    RegisterBroker,
    Result,
    Topic,
    TopicConfig,
    UnfenceBroker,
)

# pysyncobj's entry type byte for a call of a @replicated method (pysyncobj.syncobj._COMMAND_TYPE).
REGULAR_ENTRY = 0

_LEGACY_MODULES = ("semel.cluster.metadata", "semel.cluster.metadata.state")
# Class name -> (today's class, the field names in the order those builds pickled them).
# Frozen: this describes bytes already on disk, not today's dataclasses.
_LEGACY_CLASSES: dict[str, tuple[type, tuple[str, ...]]] = {
    "RegisterBroker": (RegisterBroker, ("broker_id", "incarnation_id", "host", "port", "raft_address", "command_id")),
    "UnfenceBroker": (UnfenceBroker, ("broker_id", "broker_epoch", "command_id")),
    "FenceBroker": (FenceBroker, ("broker_id", "broker_epoch", "command_id")),
    "CreateTopic": (CreateTopic, ("name", "partitions", "replication_factor", "configs", "internal", "command_id")),
    "DeleteTopic": (DeleteTopic, ("name", "command_id")),
    "AlterPartition": (AlterPartition, ("topic", "partition", "broker_id", "broker_epoch", "leader_epoch",
                                        "partition_epoch", "new_isr", "command_id")),
    "ElectLeader": (ElectLeader, ("topic", "partition", "partition_epoch", "unclean", "command_id")),
    "AllocateProducerIds": (AllocateProducerIds, ("broker_id", "broker_epoch", "command_id")),
    "Barrier": (Barrier, ("command_id",)),
    "BrokerRegistration": (BrokerRegistration, ("broker_id", "incarnation_id", "host", "port", "raft_address",
                                                "broker_epoch", "fenced", "registered_version")),
    "TopicConfig": (TopicConfig, ("min_insync_replicas", "unclean_leader_election", "retention_ms",
                                  "retention_bytes", "segment_bytes", "segment_ms")),
    "PartitionState": (PartitionState, ("topic", "partition", "replicas", "isr", "leader", "leader_epoch",
                                        "partition_epoch")),
    "Topic": (Topic, ("name", "topic_id", "internal", "replication_factor", "config", "partitions")),
    "ProducerIdBlock": (ProducerIdBlock, ("broker_id", "first_producer_id", "size")),
    "MetadataImage": (MetadataImage, ("version", "brokers", "topics", "next_producer_id", "next_broker_epoch",
                                      "next_assignment_start")),
    "Result": (Result, ("error", "value")),
    "MetadataStateMachine": (MetadataStateMachine, ()),  # pickled with its __dict__
}
# pysyncobj's node classes appear in a full dump's node set; only the address (`_id`) is kept.
_NODE_CLASSES = {("pysyncobj.node", "TCPNode"), ("semel.cluster.quorum", "_DialedNode"),
                 ("semel.cluster.metadata.quorum", "_DialedNode")}
_SAFE_GLOBALS = {
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol 2's spelling of bytes
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Pickled:
    """An inert stand-in for one pickled object of ours: its class name and its state."""

    legacy_name = ""
    state: Any = None  # set by BUILD (the unpickler never calls __init__)

    def __setstate__(self, state: Any) -> None:
        self.state = state


_STAND_INS: dict[str, type[_Pickled]] = {}


def _stand_in(name: str) -> type[_Pickled]:
    if name not in _STAND_INS:
        _STAND_INS[name] = type(f"Pickled{name}", (_Pickled,), {"legacy_name": name})
    return _STAND_INS[name]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _LEGACY_MODULES and name in _LEGACY_CLASSES:
            return _stand_in(name)
        if (module, name) in _NODE_CLASSES:
            return _stand_in("Node")
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        raise MetadataRecordError(f"refusing to unpickle {module}.{name}: not a metadata record class")


def _unpickle(data: bytes) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except MetadataRecordError:
        raise
    except Exception as e:  # a truncated or corrupt pickle: any of a dozen exception types
        raise MetadataRecordError(f"undecodable pickled metadata record ({len(data)} bytes): {e!r}") from e


def _revive(obj: Any) -> Any:
    """Rebuild stand-ins (recursively) into today's objects, by field name."""
    if isinstance(obj, _Pickled):
        if obj.legacy_name == "Node":
            return obj.state["_id"]
        cls, field_names = _LEGACY_CLASSES[obj.legacy_name]
        if cls is MetadataStateMachine:
            state = _revive(obj.state)
            return MetadataStateMachine.restored(state["image"], state["last_applied"], state["_recent"].items())
        if len(obj.state) != len(field_names):
            raise MetadataRecordError(f"pickled {obj.legacy_name} has {len(obj.state)} fields, expected {field_names}")
        return cls(**{name: _revive(value) for name, value in zip(field_names, obj.state)})
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _revive(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _revive(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(_revive(v) for v in obj)
    return obj


# --- journal entries ----------------------------------------------------------------------


def convert_entry(command: bytes) -> bytes:
    """One pysyncobj journal entry -> the same entry in the protobuf form (unchanged if it is
    already, or is not a call of a replicated method). Raises `MetadataRecordError`."""
    if command[:1] != bytes([REGULAR_ENTRY]):
        return command  # no-op, membership and version entries: pysyncobj's own
    call = _unpickle(command[1:])
    if not (isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], tuple) and len(call[1]) == 1):
        raise MetadataRecordError(f"journal entry is not a one-argument replicated call: {type(call).__name__}")
    method_id, (argument,) = call
    if isinstance(argument, bytes):
        records.decode_command(argument)  # the current form: only check that it reads
        return command
    legacy = _revive(argument)
    return bytes([REGULAR_ENTRY]) + pysyncobj_pickle.dumps((method_id, (records.encode_command(legacy),)))


def migrate_journal(path: str | Path) -> int:
    """Rewrite the pysyncobj journal at `path` into the protobuf form; returns how many entries
    changed (0: nothing written). The rewrite goes to a temporary file renamed over the old one,
    so a crash leaves either journal whole. The `.meta` file (term, vote, commit index) stays."""
    path = str(path)
    if not os.path.exists(path):
        return 0
    journal = FileJournal(path)
    try:
        entries = [journal[i] for i in range(len(journal))]
    finally:
        journal._destroy()
    converted = [(convert_entry(bytes(command)), index, term) for command, index, term in entries]
    changed = sum(1 for old, new in zip(entries, converted) if old[0] != new[0])
    if not changed:
        return 0
    tmp = path + ".migrating"
    if os.path.exists(tmp):
        os.remove(tmp)  # left by a crash during an earlier migration
    rewritten = FileJournal(tmp)
    try:
        for entry in converted:
            rewritten.add(*entry)
        rewritten.flush()
    finally:
        rewritten._destroy()
    os.replace(tmp, path)
    return changed


# --- full dumps ---------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"


def is_legacy_dump(data: bytes) -> bool:
    """pysyncobj's own dump format is a gzip file; a protobuf snapshot never starts this way
    (its first byte is the tag of field 1, 0x08)."""
    return data[:2] == GZIP_MAGIC


def load_legacy_dump(data: bytes) -> Snapshot:
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise MetadataRecordError(f"undecodable pickled metadata dump: {e!r}") from e
    dump = _unpickle(raw)
    # pysyncobj: (data, last applied entry, the entry before, node set); data is
    # [the SyncObj's own fields, one dict per consumer]; our one consumer keeps `machine`.
    if not (isinstance(dump, tuple) and len(dump) == 4 and isinstance(dump[0], list) and len(dump[0]) == 2):
        raise MetadataRecordError("pickled metadata dump is not pysyncobj's (data, entry, entry, nodes)")
    consumer = dump[0][1]
    if not (isinstance(consumer, dict) and set(consumer) == {"machine"}):
        raise MetadataRecordError(
            f"pickled metadata dump's consumer state is not {{'machine': ...}}: {consumer!r:.200}"
        )
    machine = _revive(consumer["machine"])

    def entry(e: Any) -> RaftEntry:
        command, index, term = e
        return RaftEntry(convert_entry(bytes(command)), index, term)

    return Snapshot(
        machine=machine,
        last_entry=entry(dump[1]),
        previous_entry=entry(dump[2]),
        cluster_addresses=tuple(sorted(a for a in _revive(dump[3]) if a is not None)),
    )


__all__ = ["convert_entry", "is_legacy_dump", "load_legacy_dump", "migrate_journal"]
