"""The cluster metadata: a pure, deterministic replicated state machine.

Theory of operation
-------------------
Every replica of the metadata quorum applies the same commands in the same (Raft) order to a
`MetadataStateMachine`; `apply(command) -> Result` is a pure function of the current image and
the command: no clock, no randomness, no I/O, no iteration over unordered containers. Time never
enters the state: the controller (the proposer) decides *when* something happens (fence a broker
whose session expired) and proposes an explicit command.

The state is published as an immutable `MetadataImage`. A command that changes something builds
a new image (copy-on-write: unchanged topics and partitions keep their objects), so readers on
other threads (the broker's asyncio loop) take a reference and read a consistent snapshot
without locks.

Every change of a partition is a compare-and-set on its `partition_epoch`; every change of its
leader bumps `leader_epoch`. Commands carry an optional `command_id`; the machine remembers the
result of the last `limits.METADATA_DEDUP_COMMANDS` ids so a proposer that saw an unknown outcome
can resubmit the same command and get the original result instead of applying it twice.

Invariants (checked by `check_invariants`, kept by every command):
  * `leader == NO_LEADER or leader in isr`, `isr` non-empty, `isr ⊆ replicas`, replicas distinct;
  * a fenced broker leads nothing and is in no ISR of size > 1 (Kafka's last-member rule: when
    the last ISR member is fenced, `isr` stays `(it,)` with `leader = NO_LEADER` until it comes
    back, or an unclean election is allowed and picks another replica);
  * `version`, `leader_epoch`, `partition_epoch`, `broker_epoch`, `next_producer_id` never
    decrease; producer-id blocks never overlap.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Union

from semel import limits, scram
from semel.scram import ScramCredential
from semel.cluster.metadata.acl import AclBinding, AclFilter, MAX_ACLS, binding_problem, filter_problem
from semel.internal_topics import (
    coordinator_partition,
)
from semel.invariant import invariant
from semel.v1 import common_pb2 as pb

NO_LEADER = -1

# Bounds (semel.limits); module names so tests can shrink them.
PRODUCER_ID_BLOCK_SIZE = limits.PRODUCER_ID_BLOCK_SIZE
MAX_PARTITIONS_PER_TOPIC = limits.MAX_PARTITIONS_PER_TOPIC
MAX_TOPIC_NAME_CHARS = limits.MAX_TOPIC_NAME_CHARS
METADATA_DEDUP_COMMANDS = limits.METADATA_DEDUP_COMMANDS
MAX_REPLICATION_FACTOR = limits.MAX_REPLICATION_FACTOR
MAX_BROKERS = limits.MAX_BROKERS
MAX_PARTITIONS_TOTAL = limits.MAX_PARTITIONS_TOTAL

_TOPIC_NAME_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_TOPIC_ID_NAMESPACE = uuid.UUID("6d1f3c2a-5b1e-4a57-9d6e-2f0c8e9a7b31")


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerRegistration:
    broker_id: int
    incarnation_id: str
    host: str
    port: int
    raft_address: str | None
    broker_epoch: int
    fenced: bool
    # The image version the broker must have applied before it is unfenced: its registration's, then
    # each fencing's (a broker cut off from the quorum - a deposed controller - keeps heartbeating
    # with stale metadata; it comes back only once it has seen itself fenced and its leaderships moved).
    registered_version: int
    # The broker's Kafka-protocol listener as clients reach it ("" / 0: none; semel.cluster.kafka).
    kafka_host: str = ""
    kafka_port: int = 0
    # `semel cluster decommission` ran on it: still a replica where it was, but never a
    # placement choice for new topics, partitions or moves. A new registration (the broker was
    # started again) clears it: starting a retired broker is the operator taking it back.
    decommissioned: bool = False
    # The port of its internal replication transport (cluster/broker/replica_transport.py) on
    # `host` (0: none; followers fetch from it over gRPC).
    replication_port: int = 0


@dataclass(frozen=True, slots=True)
class TopicConfig:
    min_insync_replicas: int = 1
    unclean_leader_election: bool = False
    retention_ms: int = limits.RETENTION_MS_DEFAULT
    retention_bytes: int = limits.RETENTION_BYTES_DEFAULT
    segment_bytes: int = limits.SEGMENT_BYTES_DEFAULT
    segment_ms: int = limits.SEGMENT_MS_DEFAULT


@dataclass(frozen=True, slots=True)
class PartitionState:
    topic: str
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    partition_epoch: int
    # A reassignment under way (KIP-455): the replica set it moves to; `replicas` is then the
    # target followed by the replicas it drops, and the controller completes the move once every
    # target replica is in the ISR. () = none.
    target_replicas: tuple[int, ...] = ()
    # Eligible leader replicas (KIP-966): members that left an ISR which was then smaller than
    # min.insync.replicas. Nothing acks=all can be acknowledged while the ISR is that small, so
    # each of them still holds every acknowledged record, and may lead when no ISR member can.
    # Cleared once the ISR reaches min.insync.replicas again. () = none.
    elr: tuple[int, ...] = ()

    @property
    def adding_replicas(self) -> tuple[int, ...]:
        return tuple(r for r in self.target_replicas if r not in self.isr)

    @property
    def removing_replicas(self) -> tuple[int, ...]:
        return tuple(r for r in self.replicas if self.target_replicas and r not in self.target_replicas)


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    topic_id: str
    internal: bool
    replication_factor: int
    config: TopicConfig
    partitions: tuple[PartitionState, ...]


@dataclass(frozen=True, slots=True)
class ProducerIdBlock:
    broker_id: int
    first_producer_id: int
    size: int

    @property
    def last_producer_id(self) -> int:
        return self.first_producer_id + self.size - 1


@dataclass(frozen=True, slots=True)
class MetadataImage:
    """One immutable version of the cluster metadata. The dicts are never mutated."""

    version: int = 0
    brokers: Mapping[int, BrokerRegistration] = field(default_factory=dict)
    topics: Mapping[str, Topic] = field(default_factory=dict)
    next_producer_id: int = 0
    next_broker_epoch: int = 1
    next_assignment_start: int = 0
    # user name -> its SCRAM credentials (one per mechanism; never a password: semel.scram)
    users: Mapping[str, tuple[ScramCredential, ...]] = field(default_factory=dict)
    # the ACL bindings (semel.cluster.metadata.acl), in creation order, at most MAX_ACLS
    acls: tuple[AclBinding, ...] = ()

    def broker(self, broker_id: int) -> BrokerRegistration | None:
        return self.brokers.get(broker_id)

    def topic(self, name: str) -> Topic | None:
        return self.topics.get(name)

    def partition(self, topic: str, partition: int) -> PartitionState | None:
        t = self.topics.get(topic)
        if t is None or not 0 <= partition < len(t.partitions):
            return None
        return t.partitions[partition]

    def unfenced_brokers(self) -> tuple[int, ...]:
        return tuple(sorted(b for b, reg in self.brokers.items() if not reg.fenced))

    def placement_brokers(self) -> tuple[int, ...]:
        """The brokers new replicas may go to: unfenced and not decommissioned."""
        return tuple(sorted(b for b, reg in self.brokers.items() if not reg.fenced and not reg.decommissioned))

    def coordinator(self, internal_topic: str, key: str) -> PartitionState | None:
        """The partition of `internal_topic` that owns `key`; its leader is the coordinator."""
        t = self.topics.get(internal_topic)
        if t is None:
            return None
        return t.partitions[coordinator_partition(key, len(t.partitions))]


# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterBroker:
    broker_id: int
    incarnation_id: str
    host: str
    port: int
    raft_address: str | None = None
    command_id: str = ""
    kafka_host: str = ""  # advertised Kafka listener ("" / 0: none)
    kafka_port: int = 0
    # The broker's machine restarted (power loss, OS crash) since it last ran, and it does not
    # fsync every write: its logs may lack a suffix it once had, so it leaves every ISR and ELR
    # in which another replica can stand in for it (semel.storage.boot_record).
    lost_unsynced_writes: bool = False
    replication_port: int = 0  # the internal replication transport's port on `host` (0: none)


@dataclass(frozen=True, slots=True)
class UnfenceBroker:
    broker_id: int
    broker_epoch: int
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class FenceBroker:
    broker_id: int
    broker_epoch: int
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class CreateTopic:
    name: str
    partitions: int
    replication_factor: int
    configs: tuple[tuple[str, str], ...] = ()
    internal: bool = False
    command_id: str = ""
    # The submitting broker's partition-replica limit (0: none): POLICY_VIOLATION if any
    # broker would host more partition replicas (each holds open descriptors).
    max_replicas_per_broker: int = 0


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    name: str
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class AlterPartition:
    topic: str
    partition: int
    broker_id: int  # the requesting leader
    broker_epoch: int
    leader_epoch: int
    partition_epoch: int
    new_isr: tuple[int, ...]
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class ElectLeader:
    topic: str
    partition: int
    partition_epoch: int
    unclean: bool = False
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class AllocateProducerIds:
    broker_id: int
    broker_epoch: int
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class CreatePartitions:
    """Grow `topic` to `count` partitions in total (never shrink: keys would move)."""

    topic: str
    count: int
    command_id: str = ""
    max_replicas_per_broker: int = 0  # as CreateTopic's


@dataclass(frozen=True, slots=True)
class AlterTopicConfig:
    """Set some config keys (Semel's names) and return others to their defaults."""

    topic: str
    set_configs: tuple[tuple[str, str], ...] = ()
    delete_keys: tuple[str, ...] = ()
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class ReassignPartition:
    """Start moving a partition to `target_replicas` (first = preferred leader): the new
    replicas join the replica set, catch up and enter the ISR; then `CompleteReassignment`."""

    topic: str
    partition: int
    target_replicas: tuple[int, ...]
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class CompleteReassignment:
    """Every target replica is in the ISR: switch to the target set, drop the others (and
    move the leadership if the leader is dropped). Compare-and-set on the partition epoch."""

    topic: str
    partition: int
    partition_epoch: int
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class Barrier:
    """Changes nothing; a new Raft leader commits one to know its image is up to date."""

    command_id: str = ""


@dataclass(frozen=True, slots=True)
class UpsertUserScram:
    """Create a user or replace its credential for `credential.mechanism`."""

    name: str
    credential: ScramCredential
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class DeleteUser:
    name: str
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class DecommissionBroker:
    """Marks a registered broker decommissioned (BrokerRegistration.decommissioned)."""

    broker_id: int
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class CreateAcls:
    """Adds the bindings (one already present is kept once); all or nothing."""

    acls: tuple[AclBinding, ...]
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class DeleteAcls:
    """Removes every binding any of the filters matches; the result's value is how many."""

    filters: tuple[AclFilter, ...]
    command_id: str = ""


Command = Union[
    RegisterBroker,
    UnfenceBroker,
    FenceBroker,
    CreateTopic,
    DeleteTopic,
    AlterPartition,
    ElectLeader,
    AllocateProducerIds,
    Barrier,
    CreatePartitions,
    AlterTopicConfig,
    ReassignPartition,
    CompleteReassignment,
    UpsertUserScram,
    DeleteUser,
    DecommissionBroker,
    CreateAcls,
    DeleteAcls,
]


@dataclass(frozen=True, slots=True)
class Result:
    error: pb.ErrorCode  # NONE (0) on success
    value: object = None

    @property
    def ok(self) -> bool:
        return self.error == pb.NONE


OK = Result(pb.NONE)


# --- validation helpers (pure) ------------------------------------------------------------


def validate_topic_name(name: str, internal: bool = False) -> pb.ErrorCode:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_TOPIC_NAME_CHARS:
        return pb.INVALID_TOPIC_NAME
    if name in (".", "..") or not _TOPIC_NAME_RE.match(name):
        return pb.INVALID_TOPIC_NAME
    if name.startswith("__") and not internal:
        return pb.INVALID_TOPIC_NAME
    return pb.NONE


def _parse_bool(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return None


# Semel's topic config keys, and the Kafka names accepted for them at the API edge (the state
# machine stores and validates Semel's names only, so a replayed command means what it meant).
TOPIC_CONFIG_KEYS = ("min_insync_replicas", "unclean_leader_election", "retention_ms", "retention_bytes",
                     "segment_bytes", "segment_ms")
KAFKA_CONFIG_NAMES = {
    "min.insync.replicas": "min_insync_replicas",
    "unclean.leader.election.enable": "unclean_leader_election",
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
}
_INT_CONFIG_KEYS = ("min_insync_replicas", "retention_ms", "retention_bytes", "segment_bytes", "segment_ms")


def normalize_config_key(key: str) -> str | None:
    """Semel's name for a config key given in Semel's or Kafka's spelling; None if unknown."""
    key = key.strip()
    if key in TOPIC_CONFIG_KEYS:
        return key
    return KAFKA_CONFIG_NAMES.get(key)


def valid_config_keys_text() -> str:
    return ", ".join(f"{k} ({kafka})" for kafka, k in KAFKA_CONFIG_NAMES.items())


def topic_config_values(config: TopicConfig) -> dict[str, str]:
    """A config as the string key/values the wire and `parse_topic_config` use."""
    return {
        "min_insync_replicas": str(config.min_insync_replicas),
        "unclean_leader_election": str(config.unclean_leader_election).lower(),
        "retention_ms": str(config.retention_ms),
        "retention_bytes": str(config.retention_bytes),
        "segment_bytes": str(config.segment_bytes),
        "segment_ms": str(config.segment_ms),
    }


def default_topic_config(replication_factor: int) -> TopicConfig:
    return TopicConfig(min_insync_replicas=2 if replication_factor >= 3 else 1)


def parse_topic_config(
    configs: Iterable[tuple[str, str]], replication_factor: int
) -> tuple[pb.ErrorCode, TopicConfig | None]:
    """Validate `configs` (string key/values from the wire) and fill defaults."""
    code, config, _ = explain_topic_config(configs, replication_factor)
    return code, config


def explain_topic_config(
    configs: Iterable[tuple[str, str]], replication_factor: int
) -> tuple[pb.ErrorCode, TopicConfig | None, str]:
    """`parse_topic_config` with a message naming the offending key (and the valid keys)."""
    values: dict[str, object] = {
        "min_insync_replicas": 2 if replication_factor >= 3 else 1,
        "unclean_leader_election": False,
    }
    for key, raw in configs:
        if key == "unclean_leader_election":
            parsed = _parse_bool(str(raw))
            if parsed is None:
                return pb.INVALID_CONFIG, None, f"{key}: expected true or false, got {raw!r}"
            values[key] = parsed
        elif key in _INT_CONFIG_KEYS:
            try:
                values[key] = int(str(raw).strip())
            except ValueError:
                return pb.INVALID_CONFIG, None, f"{key}: expected an integer, got {raw!r}"
        else:
            return pb.INVALID_CONFIG, None, f"unknown config key {key!r}; valid keys: {valid_config_keys_text()}"
    # `values` holds exactly TopicConfig's fields, each parsed to its type above; a dict of
    # mixed values cannot say so to mypy
    config = TopicConfig(**values)  # type: ignore[arg-type]
    if not 1 <= config.min_insync_replicas <= replication_factor:
        return pb.INVALID_CONFIG, None, (f"min_insync_replicas: {config.min_insync_replicas} must be in "
                                         f"1..{replication_factor} (the replication factor)")
    if config.retention_ms != -1 and config.retention_ms <= 0:
        return pb.INVALID_CONFIG, None, f"retention_ms: {config.retention_ms} must be > 0 or -1 (unlimited)"
    if config.retention_bytes != -1 and config.retention_bytes <= 0:
        return pb.INVALID_CONFIG, None, f"retention_bytes: {config.retention_bytes} must be > 0 or -1 (unlimited)"
    # the storage's own range (LogConfig): a value beyond it would be committed, then refused by
    # every replica opening the partition's log
    if not limits.MIN_SEGMENT_BYTES <= config.segment_bytes <= limits.MAX_SEGMENT_BYTES:
        return pb.INVALID_CONFIG, None, (f"segment_bytes: {config.segment_bytes} must be in "
                                         f"{limits.MIN_SEGMENT_BYTES}..{limits.MAX_SEGMENT_BYTES}")
    if config.segment_ms <= 0:
        return pb.INVALID_CONFIG, None, f"segment_ms: {config.segment_ms} must be > 0"
    return pb.NONE, config, ""


def altered_config_values(
    current: TopicConfig, set_configs: Iterable[tuple[str, str]], delete_keys: Iterable[str], replication_factor: int
) -> list[tuple[str, str]]:
    """The key/values of `current` with `set_configs` applied and `delete_keys` back at their
    defaults (for `explain_topic_config`). Unknown keys are kept, so validation names them."""
    defaults = topic_config_values(default_topic_config(replication_factor))
    values = topic_config_values(current)
    extra: list[tuple[str, str]] = []
    for key in delete_keys:
        if key in values:
            values[key] = defaults[key]
        else:
            extra.append((key, ""))
    for key, value in set_configs:
        if key in values:
            values[key] = value
        else:
            extra.append((key, value))
    return [*extra, *values.items()]


def validate_create_topic(image: MetadataImage, c: CreateTopic) -> tuple[pb.ErrorCode, TopicConfig | None]:
    """Every check `CreateTopic` makes against `image`, in order: (NONE, the topic's config) when
    it would be created. The command and CreateTopics' dry run (`validate_only`) both call
    this, so a dry run refuses exactly what the create would refuse on the same image."""
    error = validate_topic_name(c.name, c.internal)
    if error != pb.NONE:
        return error, None
    if c.name in image.topics:
        return pb.TOPIC_ALREADY_EXISTS, None
    if not 1 <= c.partitions <= MAX_PARTITIONS_PER_TOPIC:
        return pb.INVALID_PARTITIONS, None
    if sum(len(t.partitions) for t in image.topics.values()) + c.partitions > MAX_PARTITIONS_TOTAL:
        return pb.RESOURCE_EXHAUSTED, None
    if not 1 <= c.replication_factor <= min(len(image.placement_brokers()), MAX_REPLICATION_FACTOR):
        return pb.INVALID_REPLICATION_FACTOR, None
    if c.max_replicas_per_broker and replicas_over_limit(
            image, _new_assignment(image, c.partitions, c.replication_factor), c.max_replicas_per_broker):
        return pb.POLICY_VIOLATION, None
    return parse_topic_config(c.configs, c.replication_factor)


def _new_assignment(image: MetadataImage, partitions: int, replication_factor: int) -> list[tuple[int, ...]]:
    """The replicas new partitions would get (what `_create_topic` / `_create_partitions` assign)."""
    brokers = image.placement_brokers()
    return assign_replicas(brokers, partitions, replication_factor, image.next_assignment_start % len(brokers))


def hosted_replicas(image: MetadataImage) -> dict[int, int]:
    """Partition replicas per broker id (a reassignment's extra replicas included)."""
    hosted: dict[int, int] = {}
    for t in image.topics.values():
        for p in t.partitions:
            for b in p.replicas:
                hosted[b] = hosted.get(b, 0) + 1
    return hosted


def replicas_over_limit(image: MetadataImage, added: Iterable[tuple[int, ...]],
                        max_replicas_per_broker: int) -> tuple[int, int] | None:
    """(a broker, the replicas it would host) when adding partitions with replica sets `added`
    would put more than `max_replicas_per_broker` on a broker that gains replicas; else None.
    A broker already above the limit (it was lowered) only refuses new replicas."""
    hosted = hosted_replicas(image)
    gained: dict[int, int] = {}
    for replicas in added:
        for b in replicas:
            gained[b] = gained.get(b, 0) + 1
    for b in sorted(gained):
        if hosted.get(b, 0) + gained[b] > max_replicas_per_broker:
            return b, hosted.get(b, 0) + gained[b]
    return None


def assign_replicas(
    brokers: tuple[int, ...], partitions: int, replication_factor: int, start: int
) -> list[tuple[int, ...]]:
    """Kafka's rack-less round-robin: leaders rotate from `start`, followers are shifted by a
    per-round offset so that the replica sets of consecutive rounds differ. Deterministic."""
    n = len(brokers)
    invariant(1 <= replication_factor <= n, "replication factor must fit the brokers")
    out: list[tuple[int, ...]] = []
    for p in range(partitions):
        first = (start + p) % n
        shift = (start + p // n) % (n - 1) if n > 1 else 0
        replicas = [brokers[first]]
        for j in range(1, replication_factor):
            replicas.append(brokers[(first + 1 + (shift + j - 1) % (n - 1)) % n])
        out.append(tuple(replicas))
    return out


def _in_replica_order(p: PartitionState, members: Iterable[int]) -> tuple[int, ...]:
    wanted = set(members)
    return tuple(r for r in p.replicas if r in wanted)


def check_invariants(image: MetadataImage) -> None:
    """Raise AssertionError when `image` breaks an invariant of the module docstring."""
    fenced = {b for b, reg in image.brokers.items() if reg.fenced}
    for t in image.topics.values():
        invariant(len(t.partitions) >= 1, f"{t.name}: no partitions")
        for i, p in enumerate(t.partitions):
            where = f"{t.name}-{i}"
            invariant(p.partition == i and p.topic == t.name, f"{where}: misplaced")
            invariant(len(set(p.replicas)) == len(p.replicas), f"{where}: duplicate replicas")
            invariant(len(p.isr) >= 1, f"{where}: empty ISR")
            invariant(set(p.isr) <= set(p.replicas), f"{where}: ISR not within replicas")
            invariant(p.leader == NO_LEADER or p.leader in p.isr, f"{where}: leader not in ISR")
            invariant(p.leader not in fenced, f"{where}: fenced leader {p.leader}")
            if len(p.isr) > 1:
                invariant(not (set(p.isr) & fenced), f"{where}: fenced broker in ISR {p.isr}")
            invariant(len(set(p.elr)) == len(p.elr) and set(p.elr) <= set(p.replicas)
                      and not set(p.elr) & set(p.isr), f"{where}: ELR {p.elr} not disjoint replicas beside ISR")
            if p.target_replicas:
                invariant(p.replicas[: len(p.target_replicas)] == p.target_replicas,
                          f"{where}: replicas {p.replicas} do not start with the target {p.target_replicas}")


# --- the state machine --------------------------------------------------------------------


class MetadataStateMachine:
    """Applies commands to the current `image`. Holds only plain data: a snapshot is the image,
    `last_applied` and the dedup window (`semel.cluster.metadata.records` encodes them)."""

    def __init__(self) -> None:
        self.image = MetadataImage()
        self.last_applied = 0  # commands applied, including rejected ones
        self._recent: OrderedDict[str, Result] = OrderedDict()

    # A snapshot (semel.cluster.metadata.records) is the image, `last_applied` and the dedup window.

    def recent_results(self) -> tuple[tuple[str, Result], ...]:
        """The remembered `(command_id, result)` pairs, oldest first."""
        return tuple(self._recent.items())

    @classmethod
    def restored(
        cls, image: MetadataImage, last_applied: int, recent: Iterable[tuple[str, Result]]
    ) -> "MetadataStateMachine":
        """The machine a snapshot describes (the inverse of the three reads above)."""
        machine = cls()
        machine.image = image
        machine.last_applied = last_applied
        machine._recent = OrderedDict(recent)
        return machine

    def apply(self, command: Command) -> Result:
        self.last_applied += 1
        command_id = getattr(command, "command_id", "")
        if command_id and command_id in self._recent:
            return self._recent[command_id]
        result = self._dispatch(command)
        if command_id:
            self._recent[command_id] = result
            while len(self._recent) > METADATA_DEDUP_COMMANDS:
                self._recent.popitem(last=False)
        return result

    # Each handler validates first, then builds the new image with `_publish`.

    def _dispatch(self, command: Command) -> Result:
        if isinstance(command, RegisterBroker):
            return self._register_broker(command)
        if isinstance(command, UnfenceBroker):
            return self._unfence_broker(command)
        if isinstance(command, FenceBroker):
            return self._fence_broker(command)
        if isinstance(command, CreateTopic):
            return self._create_topic(command)
        if isinstance(command, DeleteTopic):
            return self._delete_topic(command)
        if isinstance(command, AlterPartition):
            return self._alter_partition(command)
        if isinstance(command, ElectLeader):
            return self._elect_leader(command)
        if isinstance(command, AllocateProducerIds):
            return self._allocate_producer_ids(command)
        if isinstance(command, Barrier):
            return OK
        if isinstance(command, CreatePartitions):
            return self._create_partitions(command)
        if isinstance(command, AlterTopicConfig):
            return self._alter_topic_config(command)
        if isinstance(command, ReassignPartition):
            return self._reassign_partition(command)
        if isinstance(command, CompleteReassignment):
            return self._complete_reassignment(command)
        if isinstance(command, UpsertUserScram):
            return self._upsert_user(command)
        if isinstance(command, DeleteUser):
            return self._delete_user(command)
        if isinstance(command, DecommissionBroker):
            return self._decommission_broker(command)
        if isinstance(command, CreateAcls):
            return self._create_acls(command)
        if isinstance(command, DeleteAcls):
            return self._delete_acls(command)
        return Result(pb.INVALID_REQUEST)

    def _publish(self, **changes: object) -> MetadataImage:
        # the callers name MetadataImage fields with values of their types; `**changes: object`
        # cannot say which, and replace() checks the names at run time
        self.image = dataclasses.replace(self.image, version=self.image.version + 1, **changes)  # type: ignore[arg-type]
        return self.image

    # -- brokers --

    def _register_broker(self, c: RegisterBroker) -> Result:
        if not 0 <= c.broker_id < 2**31 or not c.incarnation_id or not c.host or not 0 < c.port < 65536:
            return Result(pb.INVALID_REQUEST)
        img = self.image
        old = img.brokers.get(c.broker_id)
        if old is not None and old.incarnation_id == c.incarnation_id:
            return Result(pb.NONE, old.broker_epoch)  # a retry of the same registration
        if old is None and len(img.brokers) >= MAX_BROKERS:
            return Result(pb.RESOURCE_EXHAUSTED)
        topics = dict(img.topics)
        if old is not None:
            # A new incarnation: whatever the old process led or replicated may be gone.
            topics = _fence_in_topics(topics, c.broker_id, _unfenced_after(img, c.broker_id))
        if c.lost_unsynced_writes:
            topics = _forget_unsynced_in_topics(topics, c.broker_id, _unfenced_after(img, c.broker_id))
        reg = BrokerRegistration(
            broker_id=c.broker_id,
            incarnation_id=c.incarnation_id,
            host=c.host,
            port=c.port,
            raft_address=c.raft_address,
            broker_epoch=img.next_broker_epoch,
            fenced=True,
            registered_version=img.version + 1,
            kafka_host=c.kafka_host,
            kafka_port=c.kafka_port,
            replication_port=c.replication_port,
        )
        brokers = dict(img.brokers)
        brokers[c.broker_id] = reg
        self._publish(brokers=brokers, topics=topics, next_broker_epoch=img.next_broker_epoch + 1)
        return Result(pb.NONE, reg.broker_epoch)

    def _decommission_broker(self, c: DecommissionBroker) -> Result:
        reg = self.image.brokers.get(c.broker_id)
        if reg is None:
            return Result(pb.INVALID_REQUEST)
        if reg.decommissioned:
            return OK
        brokers = dict(self.image.brokers)
        brokers[c.broker_id] = dataclasses.replace(reg, decommissioned=True)
        self._publish(brokers=brokers)
        return OK

    def _check_broker_epoch(self, broker_id: int, broker_epoch: int) -> tuple[pb.ErrorCode, BrokerRegistration | None]:
        reg = self.image.brokers.get(broker_id)
        if reg is None or reg.broker_epoch != broker_epoch:
            return pb.STALE_BROKER_EPOCH, None
        return pb.NONE, reg

    def _fence_broker(self, c: FenceBroker) -> Result:
        error, reg = self._check_broker_epoch(c.broker_id, c.broker_epoch)
        if reg is None:
            return Result(error)
        if reg.fenced:
            return OK
        img = self.image
        topics = _fence_in_topics(dict(img.topics), c.broker_id, _unfenced_after(img, c.broker_id))
        brokers = dict(img.brokers)
        brokers[c.broker_id] = dataclasses.replace(reg, fenced=True, registered_version=img.version + 1)
        self._publish(brokers=brokers, topics=topics)
        return OK

    def _unfence_broker(self, c: UnfenceBroker) -> Result:
        error, reg = self._check_broker_epoch(c.broker_id, c.broker_epoch)
        if reg is None:
            return Result(error)
        if not reg.fenced:
            return OK
        img = self.image
        brokers = dict(img.brokers)
        brokers[c.broker_id] = dataclasses.replace(reg, fenced=False)
        unfenced = {b for b, r in brokers.items() if not r.fenced}
        topics = dict(img.topics)
        for name in sorted(topics):
            t = topics[name]
            parts = list(t.partitions)
            changed = False
            for i, p in enumerate(parts):
                if p.leader != NO_LEADER or c.broker_id not in p.replicas:
                    continue
                if c.broker_id in p.isr:
                    parts[i] = _with_leader(p, c.broker_id, p.isr, t.config.min_insync_replicas)
                    changed = True
                elif c.broker_id in p.elr:
                    parts[i] = _with_leader(p, c.broker_id, (c.broker_id,), t.config.min_insync_replicas)
                    changed = True
                elif t.config.unclean_leader_election and not (set(p.isr) & unfenced):
                    parts[i] = _unclean_leader(p, c.broker_id)
                    changed = True
            if changed:
                topics[name] = dataclasses.replace(t, partitions=tuple(parts))
        self._publish(brokers=brokers, topics=topics)
        return OK

    # -- topics --

    def _create_topic(self, c: CreateTopic) -> Result:
        img = self.image
        error, config = validate_create_topic(img, c)
        if config is None:
            return Result(error)
        brokers = img.placement_brokers()
        start = img.next_assignment_start % len(brokers)
        assignment = assign_replicas(brokers, c.partitions, c.replication_factor, start)
        parts = tuple(
            PartitionState(c.name, i, replicas, replicas, replicas[0], 0, 0)
            for i, replicas in enumerate(assignment)
        )
        topic = Topic(
            name=c.name,
            topic_id=uuid.uuid5(_TOPIC_ID_NAMESPACE, f"{c.name}:{img.version + 1}").hex,
            internal=c.internal,
            replication_factor=c.replication_factor,
            config=config,
            partitions=parts,
        )
        topics = dict(img.topics)
        topics[c.name] = topic
        self._publish(topics=topics, next_assignment_start=img.next_assignment_start + 1)
        return Result(pb.NONE, topic)

    def _delete_topic(self, c: DeleteTopic) -> Result:
        img = self.image
        if c.name not in img.topics:
            return Result(pb.UNKNOWN_TOPIC_OR_PARTITION)
        topics = dict(img.topics)
        del topics[c.name]
        self._publish(topics=topics)
        return OK

    def _create_partitions(self, c: CreatePartitions) -> Result:
        img = self.image
        error, topic = validate_create_partitions(img, c)
        if topic is None:
            return Result(error)
        brokers = img.placement_brokers()
        start = img.next_assignment_start % len(brokers)
        added = c.count - len(topic.partitions)
        assignment = assign_replicas(brokers, added, topic.replication_factor, start)
        parts = topic.partitions + tuple(
            PartitionState(topic.name, len(topic.partitions) + i, replicas, replicas, replicas[0], 0, 0)
            for i, replicas in enumerate(assignment)
        )
        topics = dict(img.topics)
        topics[topic.name] = dataclasses.replace(topic, partitions=parts)
        self._publish(topics=topics, next_assignment_start=img.next_assignment_start + 1)
        return Result(pb.NONE, topics[topic.name])

    def _alter_topic_config(self, c: AlterTopicConfig) -> Result:
        img = self.image
        topic = img.topics.get(c.topic)
        if topic is None:
            return Result(pb.UNKNOWN_TOPIC_OR_PARTITION)
        values = altered_config_values(topic.config, c.set_configs, c.delete_keys, topic.replication_factor)
        error, config = parse_topic_config(values, topic.replication_factor)
        if config is None:
            return Result(error)
        if config == topic.config:
            return Result(pb.NONE, topic)
        # A lower min.insync.replicas lets acks=all commit with the ISR as it is: ELR members
        # would then miss acknowledged records, so they stop being eligible.
        parts = tuple(dataclasses.replace(p, elr=(), partition_epoch=p.partition_epoch + 1)
                      if p.elr and len(p.isr) >= config.min_insync_replicas else p for p in topic.partitions)
        topics = dict(img.topics)
        topics[c.topic] = dataclasses.replace(topic, config=config, partitions=parts)
        self._publish(topics=topics)
        return Result(pb.NONE, topics[c.topic])

    def _reassign_partition(self, c: ReassignPartition) -> Result:
        error, p = validate_reassignment(self.image, c)
        if p is None:
            return Result(error)
        target = tuple(c.target_replicas)
        if target == p.replicas:
            return Result(pb.NONE, p)
        removing = tuple(r for r in p.replicas if r not in target)
        new = dataclasses.replace(p, replicas=target + removing, target_replicas=target,
                                  partition_epoch=p.partition_epoch + 1)
        if set(target) <= set(new.isr):  # a reorder or a shrink: nothing to catch up
            new = _completed(new, set(self.image.unfenced_brokers()))
        self._replace_partition(new)
        return Result(pb.NONE, new)

    def _complete_reassignment(self, c: CompleteReassignment) -> Result:
        p = self.image.partition(c.topic, c.partition)
        if p is None:
            return Result(pb.UNKNOWN_TOPIC_OR_PARTITION)
        if c.partition_epoch != p.partition_epoch:
            return Result(pb.STALE_PARTITION_EPOCH)
        if not p.target_replicas or not set(p.target_replicas) <= set(p.isr):
            return Result(pb.INVALID_REQUEST)
        new = _completed(p, set(self.image.unfenced_brokers()))
        self._replace_partition(new)
        return Result(pb.NONE, new)

    # -- partitions --

    def _replace_partition(self, p: PartitionState) -> None:
        img = self.image
        t = img.topics[p.topic]
        parts = list(t.partitions)
        parts[p.partition] = p
        topics = dict(img.topics)
        topics[p.topic] = dataclasses.replace(t, partitions=tuple(parts))
        self._publish(topics=topics)

    def _alter_partition(self, c: AlterPartition) -> Result:
        p = self.image.partition(c.topic, c.partition)
        if p is None:
            return Result(pb.UNKNOWN_TOPIC_OR_PARTITION)
        error, reg = self._check_broker_epoch(c.broker_id, c.broker_epoch)
        if reg is None:
            return Result(error)
        if reg.fenced or p.leader != c.broker_id:
            return Result(pb.NOT_LEADER_OR_FOLLOWER)
        if c.leader_epoch < p.leader_epoch:
            return Result(pb.FENCED_LEADER_EPOCH)
        if c.leader_epoch > p.leader_epoch:
            return Result(pb.UNKNOWN_LEADER_EPOCH)
        if c.partition_epoch != p.partition_epoch:
            return Result(pb.STALE_PARTITION_EPOCH)
        new_isr = tuple(c.new_isr)
        if (
            not new_isr
            or len(set(new_isr)) != len(new_isr)
            or c.broker_id not in new_isr
            or not set(new_isr) <= set(p.replicas)
        ):
            return Result(pb.INVALID_REQUEST)
        for added in set(new_isr) - set(p.isr):
            added_reg = self.image.brokers.get(added)
            if added_reg is None or added_reg.fenced:
                return Result(pb.INVALID_REQUEST)
        ordered = _in_replica_order(p, new_isr)
        if ordered == p.isr:
            return Result(pb.NONE, p)
        min_isr = self.image.topics[c.topic].config.min_insync_replicas
        new = dataclasses.replace(p, isr=ordered, elr=_next_elr(p, ordered, min_isr),
                                  partition_epoch=p.partition_epoch + 1)
        self._replace_partition(new)
        return Result(pb.NONE, new)

    def _elect_leader(self, c: ElectLeader) -> Result:
        img = self.image
        p = img.partition(c.topic, c.partition)
        if p is None:
            return Result(pb.UNKNOWN_TOPIC_OR_PARTITION)
        if c.partition_epoch != p.partition_epoch:
            return Result(pb.STALE_PARTITION_EPOCH)
        unfenced = set(img.unfenced_brokers())
        config = img.topics[c.topic].config
        clean = [r for r in p.replicas if r in p.isr and r in unfenced]
        eligible = [r for r in p.replicas if r in p.elr and r in unfenced]
        if clean:
            if p.leader == clean[0]:
                return Result(pb.NONE, p)
            new = _with_leader(p, clean[0], p.isr, config.min_insync_replicas)
        elif eligible:
            new = _with_leader(p, eligible[0], (eligible[0],), config.min_insync_replicas)
        else:
            unclean = c.unclean or config.unclean_leader_election
            others = [r for r in p.replicas if r in unfenced]
            if not unclean or not others:
                return Result(pb.LEADER_NOT_AVAILABLE)
            new = _unclean_leader(p, others[0])
        self._replace_partition(new)
        return Result(pb.NONE, new)

    # -- producer ids --

    def _allocate_producer_ids(self, c: AllocateProducerIds) -> Result:
        error, reg = self._check_broker_epoch(c.broker_id, c.broker_epoch)
        if reg is None:
            return Result(error)
        first = self.image.next_producer_id
        block = ProducerIdBlock(c.broker_id, first, PRODUCER_ID_BLOCK_SIZE)
        self._publish(next_producer_id=first + PRODUCER_ID_BLOCK_SIZE)
        return Result(pb.NONE, block)

    # -- users --

    def _upsert_user(self, c: UpsertUserScram) -> Result:
        if scram.user_name_problem(c.name) or scram.check_credential(c.credential):
            return Result(pb.INVALID_REQUEST)
        users = dict(self.image.users)
        if c.name not in users and len(users) >= limits.MAX_USERS:
            return Result(pb.RESOURCE_EXHAUSTED)
        others = tuple(x for x in users.get(c.name, ()) if x.mechanism != c.credential.mechanism)
        users[c.name] = tuple(sorted((*others, c.credential), key=lambda x: x.mechanism))
        self._publish(users=users)
        return OK

    def _delete_user(self, c: DeleteUser) -> Result:
        if c.name not in self.image.users:
            return Result(pb.INVALID_REQUEST)
        users = {n: v for n, v in self.image.users.items() if n != c.name}
        self._publish(users=users)
        return OK

    # -- ACLs --

    def _create_acls(self, c: CreateAcls) -> Result:
        if not c.acls or len(c.acls) > MAX_ACLS or any(binding_problem(b) for b in c.acls):
            return Result(pb.INVALID_REQUEST)
        present = set(self.image.acls)
        new = tuple(dict.fromkeys(b for b in c.acls if b not in present))
        if len(self.image.acls) + len(new) > MAX_ACLS:
            return Result(pb.RESOURCE_EXHAUSTED)
        if new:
            self._publish(acls=self.image.acls + new)
        return OK

    def _delete_acls(self, c: DeleteAcls) -> Result:
        if not c.filters or len(c.filters) > MAX_ACLS or any(filter_problem(f) for f in c.filters):
            return Result(pb.INVALID_REQUEST)
        kept = tuple(b for b in self.image.acls if not any(f.matches(b) for f in c.filters))
        removed = len(self.image.acls) - len(kept)
        if removed:
            self._publish(acls=kept)
        return Result(pb.NONE, removed)


def validate_create_partitions(img: MetadataImage, c: CreatePartitions) -> tuple[pb.ErrorCode, Topic | None]:
    """(NONE, the topic) when `c` would grow it; refuses shrinking, internal topics (their keys
    map to partitions by count) and counts past the bounds."""
    topic = img.topics.get(c.topic)
    if topic is None:
        return pb.UNKNOWN_TOPIC_OR_PARTITION, None
    if topic.internal:
        return pb.INVALID_TOPIC_NAME, None
    if not len(topic.partitions) < c.count <= MAX_PARTITIONS_PER_TOPIC:
        return pb.INVALID_PARTITIONS, None
    if sum(len(t.partitions) for t in img.topics.values()) + c.count - len(topic.partitions) > MAX_PARTITIONS_TOTAL:
        return pb.RESOURCE_EXHAUSTED, None
    if topic.replication_factor > len(img.placement_brokers()):
        return pb.INVALID_REPLICATION_FACTOR, None
    if c.max_replicas_per_broker and replicas_over_limit(
            img, _new_assignment(img, c.count - len(topic.partitions), topic.replication_factor),
            c.max_replicas_per_broker):
        return pb.POLICY_VIOLATION, None
    return pb.NONE, topic


def validate_reassignment(img: MetadataImage, c: ReassignPartition) -> tuple[pb.ErrorCode, PartitionState | None]:
    """(NONE, the partition) when `c` may start: distinct target replicas, each a registered
    broker, the new ones unfenced; no other reassignment of the partition under way, unless
    every target replica is in the ISR (a cancel: it completes in the same command)."""
    p = img.partition(c.topic, c.partition)
    if p is None:
        return pb.UNKNOWN_TOPIC_OR_PARTITION, None
    target = tuple(c.target_replicas)
    if not 1 <= len(target) <= MAX_REPLICATION_FACTOR or len(set(target)) != len(target):
        return pb.INVALID_REPLICATION_FACTOR, None
    for b in target:
        reg = img.brokers.get(b)
        if reg is None or (reg.fenced and b not in p.replicas):
            return pb.INVALID_REQUEST, None
    if p.target_replicas and p.target_replicas != target and not set(target) <= set(p.isr):
        # one move at a time per partition; a new target within the ISR (going back to the
        # original replicas: a cancel) completes at once, so it may replace the move under way
        return pb.INVALID_REQUEST, None
    t = img.topics[c.topic]
    if t.config.min_insync_replicas > len(target):
        return pb.INVALID_REPLICATION_FACTOR, None
    return pb.NONE, p


def _completed(p: PartitionState, unfenced: set[int]) -> PartitionState:
    """The partition with its reassignment done: replicas = target, ISR within it, and a leader
    from it (the current one if it stays, else the first target replica in the ISR)."""
    target = p.target_replicas
    isr = tuple(r for r in target if r in p.isr)
    invariant(bool(isr), "a reassignment completes only with target replicas in the ISR")
    leader = p.leader
    if leader not in target:
        eligible = [r for r in isr if r in unfenced]
        leader = eligible[0] if eligible else NO_LEADER
    return dataclasses.replace(
        p, replicas=target, isr=isr, target_replicas=(), leader=leader, elr=tuple(r for r in p.elr if r in target),
        leader_epoch=p.leader_epoch + (1 if leader != p.leader else 0), partition_epoch=p.partition_epoch + 1,
    )


def _next_elr(p: PartitionState, new_isr: tuple[int, ...], min_isr: int) -> tuple[int, ...]:
    """The ELR once `p`'s ISR becomes `new_isr` (KIP-966): members that leave an ISR smaller than
    `min_isr` join it, members that (re)join the ISR leave it, and it empties once the ISR has
    `min_isr` members again (acks=all may then commit records its members lack)."""
    if len(new_isr) >= min_isr:
        return ()
    eligible = (set(p.elr) | set(p.isr)) - set(new_isr)
    return tuple(r for r in p.replicas if r in eligible)


def _with_leader(p: PartitionState, leader: int, isr: tuple[int, ...], min_isr: int) -> PartitionState:
    """`p` led by `leader` (NO_LEADER: nobody) with the ISR `isr`; a clean change: the ELR follows."""
    isr = _in_replica_order(p, isr)
    return dataclasses.replace(
        p,
        isr=isr,
        elr=_next_elr(p, isr, min_isr),
        leader=leader,
        leader_epoch=p.leader_epoch + (1 if leader != p.leader else 0),
        partition_epoch=p.partition_epoch + 1,
    )


def _unclean_leader(p: PartitionState, leader: int) -> PartitionState:
    """An unclean election: `leader`'s log becomes the truth, so nobody else is eligible."""
    return dataclasses.replace(
        p, isr=(leader,), elr=(), leader=leader, leader_epoch=p.leader_epoch + (1 if leader != p.leader else 0),
        partition_epoch=p.partition_epoch + 1,
    )


def _unfenced_after(img: MetadataImage, fenced_broker: int) -> set[int]:
    return {b for b, reg in img.brokers.items() if not reg.fenced and b != fenced_broker}


def _fence_partition(p: PartitionState, broker: int, unfenced: set[int], config: TopicConfig) -> PartitionState:
    """`broker` is gone: it leaves the ISR (unless it is the last member; into the ELR when the ISR
    falls below min.insync.replicas) and leads nothing."""
    if broker not in p.replicas:
        return p
    min_isr = config.min_insync_replicas
    if broker in p.isr and len(p.isr) > 1:
        isr = tuple(r for r in p.isr if r != broker)
        # Every member of an ISR of size > 1 is unfenced, so isr[0] is an eligible leader.
        leader = p.leader if p.leader not in (broker, NO_LEADER) else isr[0]
        return _with_leader(p, leader, isr, min_isr) if leader != p.leader else dataclasses.replace(
            p, isr=isr, elr=_next_elr(p, isr, min_isr), partition_epoch=p.partition_epoch + 1
        )
    if p.leader == broker:
        # The last ISR member: an unfenced ELR member takes over (it holds every acknowledged
        # record), else the ISR stays `(broker,)`, leaderless, unless unclean election may pick
        # another (unfenced, out-of-sync) replica.
        eligible = [r for r in p.replicas if r in p.elr and r in unfenced]
        if eligible:
            return _with_leader(p, eligible[0], (eligible[0],), min_isr)
        others = [r for r in p.replicas if r in unfenced and r != broker]
        if config.unclean_leader_election and others:
            return _unclean_leader(p, others[0])
        return _with_leader(p, NO_LEADER, p.isr, min_isr)
    return p


def _forget_unsynced(p: PartitionState, broker: int, unfenced: set[int], min_isr: int) -> PartitionState:
    """`broker` may have lost writes it acknowledged (a machine restart without fsync): it leaves
    the ISR and ELR wherever another member can stand in for it; where it is the only one left,
    it stays (nothing better is known; docs/storage.md, "Power loss")."""
    if broker not in p.isr and broker not in p.elr:
        return p
    others = [r for r in p.replicas if r != broker and (r in p.isr or r in p.elr)]
    if not others:
        return p
    isr = tuple(r for r in p.isr if r != broker)
    if isr:  # an ISR member beside others (it is leaderless then), or only in the ELR
        leader = p.leader if p.leader != broker else NO_LEADER
        return dataclasses.replace(p, isr=isr, elr=tuple(r for r in p.elr if r != broker), leader=leader,
                                   partition_epoch=p.partition_epoch + 1)
    # the last ISR member: an ELR member becomes the ISR (and leads if it can)
    eligible = [r for r in others if r in unfenced]
    heir = eligible[0] if eligible else others[0]
    leader = heir if heir in unfenced else NO_LEADER
    return dataclasses.replace(
        p, isr=(heir,), elr=tuple(r for r in others if r != heir) if 1 < min_isr else (), leader=leader,
        leader_epoch=p.leader_epoch + (1 if leader != p.leader else 0), partition_epoch=p.partition_epoch + 1,
    )


def _fence_in_topics(topics: dict[str, Topic], broker: int, unfenced: set[int]) -> dict[str, Topic]:
    return _map_partitions(topics, lambda p, t: _fence_partition(p, broker, unfenced, t.config))


def _forget_unsynced_in_topics(topics: dict[str, Topic], broker: int, unfenced: set[int]) -> dict[str, Topic]:
    return _map_partitions(topics, lambda p, t: _forget_unsynced(p, broker, unfenced, t.config.min_insync_replicas))


def _map_partitions(topics: dict[str, Topic],
                    change: Callable[[PartitionState, Topic], PartitionState]) -> dict[str, Topic]:
    for name in sorted(topics):
        t = topics[name]
        parts = tuple(change(p, t) for p in t.partitions)
        if any(a is not b for a, b in zip(parts, t.partitions)):
            topics[name] = dataclasses.replace(t, partitions=parts)
    return topics


# --- deltas for listeners -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetadataDelta:
    version: int
    brokers_changed: frozenset[int]
    topics_created: frozenset[str]
    topics_deleted: frozenset[str]
    partitions_changed: frozenset[tuple[str, int]]
    configs_changed: frozenset[str] = frozenset()  # topics whose config was altered

    @property
    def empty(self) -> bool:
        return not (
            self.brokers_changed or self.topics_created or self.topics_deleted or self.partitions_changed
            or self.configs_changed
        )


def diff(old: MetadataImage, new: MetadataImage) -> MetadataDelta:
    """What changed from `old` to `new` (created topics list all their partitions as changed)."""
    brokers = frozenset(
        b
        for b in set(old.brokers) | set(new.brokers)
        if old.brokers.get(b) is not new.brokers.get(b) and old.brokers.get(b) != new.brokers.get(b)
    )
    created = frozenset(n for n in new.topics if n not in old.topics or old.topics[n].topic_id != new.topics[n].topic_id)
    deleted = frozenset(n for n in old.topics if n not in new.topics or old.topics[n].topic_id != new.topics[n].topic_id)
    parts: set[tuple[str, int]] = set()
    configs: set[str] = set()
    for name, t in new.topics.items():
        before = old.topics.get(name)
        if name in created or before is None:
            parts.update((name, p.partition) for p in t.partitions)
        elif before is not t:
            parts.update(
                (name, p.partition)
                for p, q in zip(t.partitions, before.partitions)
                if p is not q and p != q
            )
            parts.update((name, p.partition) for p in t.partitions[len(before.partitions):])  # added partitions
            if t.config != before.config:
                configs.add(name)
    return MetadataDelta(new.version, brokers, created, deleted, frozenset(parts), frozenset(configs))
