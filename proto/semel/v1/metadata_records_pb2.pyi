from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FormatVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORMAT_VERSION_UNSPECIFIED: _ClassVar[FormatVersion]
    FORMAT_VERSION_1: _ClassVar[FormatVersion]
FORMAT_VERSION_UNSPECIFIED: FormatVersion
FORMAT_VERSION_1: FormatVersion

class RegisterBroker(_message.Message):
    __slots__ = ("broker_id", "incarnation_id", "host", "port", "raft_address", "kafka_host", "kafka_port", "lost_unsynced_writes", "replication_port")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KAFKA_HOST_FIELD_NUMBER: _ClassVar[int]
    KAFKA_PORT_FIELD_NUMBER: _ClassVar[int]
    LOST_UNSYNCED_WRITES_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_PORT_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    incarnation_id: str
    host: str
    port: int
    raft_address: str
    kafka_host: str
    kafka_port: int
    lost_unsynced_writes: bool
    replication_port: int
    def __init__(self, broker_id: _Optional[int] = ..., incarnation_id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., raft_address: _Optional[str] = ..., kafka_host: _Optional[str] = ..., kafka_port: _Optional[int] = ..., lost_unsynced_writes: _Optional[bool] = ..., replication_port: _Optional[int] = ...) -> None: ...

class UnfenceBroker(_message.Message):
    __slots__ = ("broker_id", "broker_epoch")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    BROKER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    broker_epoch: int
    def __init__(self, broker_id: _Optional[int] = ..., broker_epoch: _Optional[int] = ...) -> None: ...

class FenceBroker(_message.Message):
    __slots__ = ("broker_id", "broker_epoch")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    BROKER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    broker_epoch: int
    def __init__(self, broker_id: _Optional[int] = ..., broker_epoch: _Optional[int] = ...) -> None: ...

class ConfigEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class CreateTopic(_message.Message):
    __slots__ = ("name", "partitions", "replication_factor", "configs", "internal", "max_replicas_per_broker")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_PER_BROKER_FIELD_NUMBER: _ClassVar[int]
    name: str
    partitions: int
    replication_factor: int
    configs: _containers.RepeatedCompositeFieldContainer[ConfigEntry]
    internal: bool
    max_replicas_per_broker: int
    def __init__(self, name: _Optional[str] = ..., partitions: _Optional[int] = ..., replication_factor: _Optional[int] = ..., configs: _Optional[_Iterable[_Union[ConfigEntry, _Mapping]]] = ..., internal: _Optional[bool] = ..., max_replicas_per_broker: _Optional[int] = ...) -> None: ...

class DeleteTopic(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AlterPartition(_message.Message):
    __slots__ = ("topic", "partition", "broker_id", "broker_epoch", "leader_epoch", "partition_epoch", "new_isr")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    BROKER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PARTITION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    NEW_ISR_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    broker_id: int
    broker_epoch: int
    leader_epoch: int
    partition_epoch: int
    new_isr: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., broker_id: _Optional[int] = ..., broker_epoch: _Optional[int] = ..., leader_epoch: _Optional[int] = ..., partition_epoch: _Optional[int] = ..., new_isr: _Optional[_Iterable[int]] = ...) -> None: ...

class ElectLeader(_message.Message):
    __slots__ = ("topic", "partition", "partition_epoch", "unclean")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    UNCLEAN_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    partition_epoch: int
    unclean: bool
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., partition_epoch: _Optional[int] = ..., unclean: _Optional[bool] = ...) -> None: ...

class AllocateProducerIds(_message.Message):
    __slots__ = ("broker_id", "broker_epoch")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    BROKER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    broker_epoch: int
    def __init__(self, broker_id: _Optional[int] = ..., broker_epoch: _Optional[int] = ...) -> None: ...

class Barrier(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreatePartitions(_message.Message):
    __slots__ = ("topic", "count", "max_replicas_per_broker")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_PER_BROKER_FIELD_NUMBER: _ClassVar[int]
    topic: str
    count: int
    max_replicas_per_broker: int
    def __init__(self, topic: _Optional[str] = ..., count: _Optional[int] = ..., max_replicas_per_broker: _Optional[int] = ...) -> None: ...

class AlterTopicConfig(_message.Message):
    __slots__ = ("topic", "set_configs", "delete_keys")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SET_CONFIGS_FIELD_NUMBER: _ClassVar[int]
    DELETE_KEYS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    set_configs: _containers.RepeatedCompositeFieldContainer[ConfigEntry]
    delete_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topic: _Optional[str] = ..., set_configs: _Optional[_Iterable[_Union[ConfigEntry, _Mapping]]] = ..., delete_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ReassignPartition(_message.Message):
    __slots__ = ("topic", "partition", "target_replicas")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    TARGET_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    target_replicas: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., target_replicas: _Optional[_Iterable[int]] = ...) -> None: ...

class CompleteReassignment(_message.Message):
    __slots__ = ("topic", "partition", "partition_epoch")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    partition_epoch: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., partition_epoch: _Optional[int] = ...) -> None: ...

class ScramCredential(_message.Message):
    __slots__ = ("mechanism", "salt", "iterations", "stored_key", "server_key")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    STORED_KEY_FIELD_NUMBER: _ClassVar[int]
    SERVER_KEY_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
    def __init__(self, mechanism: _Optional[str] = ..., salt: _Optional[bytes] = ..., iterations: _Optional[int] = ..., stored_key: _Optional[bytes] = ..., server_key: _Optional[bytes] = ...) -> None: ...

class UpsertUserScram(_message.Message):
    __slots__ = ("name", "credential")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    credential: ScramCredential
    def __init__(self, name: _Optional[str] = ..., credential: _Optional[_Union[ScramCredential, _Mapping]] = ...) -> None: ...

class DeleteUser(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DecommissionBroker(_message.Message):
    __slots__ = ("broker_id",)
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    def __init__(self, broker_id: _Optional[int] = ...) -> None: ...

class AclBinding(_message.Message):
    __slots__ = ("principal", "host", "operation", "permission", "resource_type", "resource_name", "pattern_type")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATTERN_TYPE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    host: str
    operation: str
    permission: str
    resource_type: str
    resource_name: str
    pattern_type: str
    def __init__(self, principal: _Optional[str] = ..., host: _Optional[str] = ..., operation: _Optional[str] = ..., permission: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_name: _Optional[str] = ..., pattern_type: _Optional[str] = ...) -> None: ...

class AclFilter(_message.Message):
    __slots__ = ("principal", "host", "operation", "permission", "resource_type", "resource_name", "pattern_type")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATTERN_TYPE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    host: str
    operation: str
    permission: str
    resource_type: str
    resource_name: str
    pattern_type: str
    def __init__(self, principal: _Optional[str] = ..., host: _Optional[str] = ..., operation: _Optional[str] = ..., permission: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_name: _Optional[str] = ..., pattern_type: _Optional[str] = ...) -> None: ...

class CreateAcls(_message.Message):
    __slots__ = ("acls",)
    ACLS_FIELD_NUMBER: _ClassVar[int]
    acls: _containers.RepeatedCompositeFieldContainer[AclBinding]
    def __init__(self, acls: _Optional[_Iterable[_Union[AclBinding, _Mapping]]] = ...) -> None: ...

class DeleteAcls(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[AclFilter]
    def __init__(self, filters: _Optional[_Iterable[_Union[AclFilter, _Mapping]]] = ...) -> None: ...

class MetadataCommand(_message.Message):
    __slots__ = ("format_version", "command_id", "register_broker", "unfence_broker", "fence_broker", "create_topic", "delete_topic", "alter_partition", "elect_leader", "allocate_producer_ids", "barrier", "create_partitions", "alter_topic_config", "reassign_partition", "complete_reassignment", "upsert_user_scram", "delete_user", "decommission_broker", "create_acls", "delete_acls")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_BROKER_FIELD_NUMBER: _ClassVar[int]
    UNFENCE_BROKER_FIELD_NUMBER: _ClassVar[int]
    FENCE_BROKER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    DELETE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ALTER_PARTITION_FIELD_NUMBER: _ClassVar[int]
    ELECT_LEADER_FIELD_NUMBER: _ClassVar[int]
    ALLOCATE_PRODUCER_IDS_FIELD_NUMBER: _ClassVar[int]
    BARRIER_FIELD_NUMBER: _ClassVar[int]
    CREATE_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    ALTER_TOPIC_CONFIG_FIELD_NUMBER: _ClassVar[int]
    REASSIGN_PARTITION_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_REASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    UPSERT_USER_SCRAM_FIELD_NUMBER: _ClassVar[int]
    DELETE_USER_FIELD_NUMBER: _ClassVar[int]
    DECOMMISSION_BROKER_FIELD_NUMBER: _ClassVar[int]
    CREATE_ACLS_FIELD_NUMBER: _ClassVar[int]
    DELETE_ACLS_FIELD_NUMBER: _ClassVar[int]
    format_version: FormatVersion
    command_id: str
    register_broker: RegisterBroker
    unfence_broker: UnfenceBroker
    fence_broker: FenceBroker
    create_topic: CreateTopic
    delete_topic: DeleteTopic
    alter_partition: AlterPartition
    elect_leader: ElectLeader
    allocate_producer_ids: AllocateProducerIds
    barrier: Barrier
    create_partitions: CreatePartitions
    alter_topic_config: AlterTopicConfig
    reassign_partition: ReassignPartition
    complete_reassignment: CompleteReassignment
    upsert_user_scram: UpsertUserScram
    delete_user: DeleteUser
    decommission_broker: DecommissionBroker
    create_acls: CreateAcls
    delete_acls: DeleteAcls
    def __init__(self, format_version: _Optional[_Union[FormatVersion, str]] = ..., command_id: _Optional[str] = ..., register_broker: _Optional[_Union[RegisterBroker, _Mapping]] = ..., unfence_broker: _Optional[_Union[UnfenceBroker, _Mapping]] = ..., fence_broker: _Optional[_Union[FenceBroker, _Mapping]] = ..., create_topic: _Optional[_Union[CreateTopic, _Mapping]] = ..., delete_topic: _Optional[_Union[DeleteTopic, _Mapping]] = ..., alter_partition: _Optional[_Union[AlterPartition, _Mapping]] = ..., elect_leader: _Optional[_Union[ElectLeader, _Mapping]] = ..., allocate_producer_ids: _Optional[_Union[AllocateProducerIds, _Mapping]] = ..., barrier: _Optional[_Union[Barrier, _Mapping]] = ..., create_partitions: _Optional[_Union[CreatePartitions, _Mapping]] = ..., alter_topic_config: _Optional[_Union[AlterTopicConfig, _Mapping]] = ..., reassign_partition: _Optional[_Union[ReassignPartition, _Mapping]] = ..., complete_reassignment: _Optional[_Union[CompleteReassignment, _Mapping]] = ..., upsert_user_scram: _Optional[_Union[UpsertUserScram, _Mapping]] = ..., delete_user: _Optional[_Union[DeleteUser, _Mapping]] = ..., decommission_broker: _Optional[_Union[DecommissionBroker, _Mapping]] = ..., create_acls: _Optional[_Union[CreateAcls, _Mapping]] = ..., delete_acls: _Optional[_Union[DeleteAcls, _Mapping]] = ...) -> None: ...

class BrokerRegistration(_message.Message):
    __slots__ = ("broker_id", "incarnation_id", "host", "port", "raft_address", "broker_epoch", "fenced", "registered_version", "kafka_host", "kafka_port", "decommissioned", "replication_port")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BROKER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_VERSION_FIELD_NUMBER: _ClassVar[int]
    KAFKA_HOST_FIELD_NUMBER: _ClassVar[int]
    KAFKA_PORT_FIELD_NUMBER: _ClassVar[int]
    DECOMMISSIONED_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_PORT_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    incarnation_id: str
    host: str
    port: int
    raft_address: str
    broker_epoch: int
    fenced: bool
    registered_version: int
    kafka_host: str
    kafka_port: int
    decommissioned: bool
    replication_port: int
    def __init__(self, broker_id: _Optional[int] = ..., incarnation_id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., raft_address: _Optional[str] = ..., broker_epoch: _Optional[int] = ..., fenced: _Optional[bool] = ..., registered_version: _Optional[int] = ..., kafka_host: _Optional[str] = ..., kafka_port: _Optional[int] = ..., decommissioned: _Optional[bool] = ..., replication_port: _Optional[int] = ...) -> None: ...

class TopicConfig(_message.Message):
    __slots__ = ("min_insync_replicas", "unclean_leader_election", "retention_ms", "retention_bytes", "segment_bytes", "segment_ms")
    MIN_INSYNC_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    UNCLEAN_LEADER_ELECTION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_MS_FIELD_NUMBER: _ClassVar[int]
    min_insync_replicas: int
    unclean_leader_election: bool
    retention_ms: int
    retention_bytes: int
    segment_bytes: int
    segment_ms: int
    def __init__(self, min_insync_replicas: _Optional[int] = ..., unclean_leader_election: _Optional[bool] = ..., retention_ms: _Optional[int] = ..., retention_bytes: _Optional[int] = ..., segment_bytes: _Optional[int] = ..., segment_ms: _Optional[int] = ...) -> None: ...

class PartitionState(_message.Message):
    __slots__ = ("topic", "partition", "replicas", "isr", "leader", "leader_epoch", "partition_epoch", "target_replicas", "elr")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ISR_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PARTITION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ELR_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    replicas: _containers.RepeatedScalarFieldContainer[int]
    isr: _containers.RepeatedScalarFieldContainer[int]
    leader: int
    leader_epoch: int
    partition_epoch: int
    target_replicas: _containers.RepeatedScalarFieldContainer[int]
    elr: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., replicas: _Optional[_Iterable[int]] = ..., isr: _Optional[_Iterable[int]] = ..., leader: _Optional[int] = ..., leader_epoch: _Optional[int] = ..., partition_epoch: _Optional[int] = ..., target_replicas: _Optional[_Iterable[int]] = ..., elr: _Optional[_Iterable[int]] = ...) -> None: ...

class Topic(_message.Message):
    __slots__ = ("name", "topic_id", "internal", "replication_factor", "config", "partitions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPIC_ID_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    topic_id: str
    internal: bool
    replication_factor: int
    config: TopicConfig
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionState]
    def __init__(self, name: _Optional[str] = ..., topic_id: _Optional[str] = ..., internal: _Optional[bool] = ..., replication_factor: _Optional[int] = ..., config: _Optional[_Union[TopicConfig, _Mapping]] = ..., partitions: _Optional[_Iterable[_Union[PartitionState, _Mapping]]] = ...) -> None: ...

class ProducerIdBlock(_message.Message):
    __slots__ = ("broker_id", "first_producer_id", "size")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    first_producer_id: int
    size: int
    def __init__(self, broker_id: _Optional[int] = ..., first_producer_id: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class MetadataImage(_message.Message):
    __slots__ = ("version", "brokers", "topics", "next_producer_id", "next_broker_epoch", "next_assignment_start", "users", "acls")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BROKERS_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_BROKER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    NEXT_ASSIGNMENT_START_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ACLS_FIELD_NUMBER: _ClassVar[int]
    version: int
    brokers: _containers.RepeatedCompositeFieldContainer[BrokerRegistration]
    topics: _containers.RepeatedCompositeFieldContainer[Topic]
    next_producer_id: int
    next_broker_epoch: int
    next_assignment_start: int
    users: _containers.RepeatedCompositeFieldContainer[UserCredentials]
    acls: _containers.RepeatedCompositeFieldContainer[AclBinding]
    def __init__(self, version: _Optional[int] = ..., brokers: _Optional[_Iterable[_Union[BrokerRegistration, _Mapping]]] = ..., topics: _Optional[_Iterable[_Union[Topic, _Mapping]]] = ..., next_producer_id: _Optional[int] = ..., next_broker_epoch: _Optional[int] = ..., next_assignment_start: _Optional[int] = ..., users: _Optional[_Iterable[_Union[UserCredentials, _Mapping]]] = ..., acls: _Optional[_Iterable[_Union[AclBinding, _Mapping]]] = ...) -> None: ...

class UserCredentials(_message.Message):
    __slots__ = ("name", "credentials")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    name: str
    credentials: _containers.RepeatedCompositeFieldContainer[ScramCredential]
    def __init__(self, name: _Optional[str] = ..., credentials: _Optional[_Iterable[_Union[ScramCredential, _Mapping]]] = ...) -> None: ...

class RecentResult(_message.Message):
    __slots__ = ("command_id", "error", "int_value", "topic", "partition", "producer_id_block")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_BLOCK_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    error: int
    int_value: int
    topic: Topic
    partition: PartitionState
    producer_id_block: ProducerIdBlock
    def __init__(self, command_id: _Optional[str] = ..., error: _Optional[int] = ..., int_value: _Optional[int] = ..., topic: _Optional[_Union[Topic, _Mapping]] = ..., partition: _Optional[_Union[PartitionState, _Mapping]] = ..., producer_id_block: _Optional[_Union[ProducerIdBlock, _Mapping]] = ...) -> None: ...

class RaftEntry(_message.Message):
    __slots__ = ("command", "index", "term")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    command: bytes
    index: int
    term: int
    def __init__(self, command: _Optional[bytes] = ..., index: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class MetadataSnapshot(_message.Message):
    __slots__ = ("format_version", "image", "last_applied", "recent", "last_entry", "previous_entry", "cluster_addresses")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    LAST_ENTRY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_ENTRY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    format_version: FormatVersion
    image: MetadataImage
    last_applied: int
    recent: _containers.RepeatedCompositeFieldContainer[RecentResult]
    last_entry: RaftEntry
    previous_entry: RaftEntry
    cluster_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, format_version: _Optional[_Union[FormatVersion, str]] = ..., image: _Optional[_Union[MetadataImage, _Mapping]] = ..., last_applied: _Optional[int] = ..., recent: _Optional[_Iterable[_Union[RecentResult, _Mapping]]] = ..., last_entry: _Optional[_Union[RaftEntry, _Mapping]] = ..., previous_entry: _Optional[_Union[RaftEntry, _Mapping]] = ..., cluster_addresses: _Optional[_Iterable[str]] = ...) -> None: ...
