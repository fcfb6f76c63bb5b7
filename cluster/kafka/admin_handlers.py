"""Kafka's group and cluster admin APIs over Semel's own: ListGroups, DescribeGroups,
DeleteGroups (Semel's group coordinator plus the classic groups of `group_handlers`),
DescribeCluster, DescribeConfigs (topic configs under Kafka's names), CreatePartitions,
IncrementalAlterConfigs and AlterConfigs (through the Admin service's add-partitions and
alter-config paths) and OffsetForLeaderEpoch (the partition's leader-epoch cache, with the
fetch path's leader and epoch checks).

Groups: a broker lists and describes the groups it coordinates, as Kafka's brokers do
(admin clients ask every broker, and each group's coordinator). A classic group reports
Kafka's classic states and its members' metadata and assignment bytes; a Semel group
(server-side assignment) reports its state and members with empty metadata; a group with
committed offsets only is an Empty classic group, which is what Kafka clients made it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from kio.schema.errors import ErrorCode as K
from semel import limits
from semel.limits import ADMIN_TIMEOUT_MS_DEFAULT
from semel.cluster.broker.replica_manager import PartitionError
from semel.cluster.kafka import codec
from semel.cluster.kafka.errors import to_kafka
from semel.cluster.metadata import state as md
from semel.coordinator import classic_group as cg
from semel.v1 import admin_pb2 as apb
from semel.v1 import common_pb2 as pb
from semel.v1 import group_pb2 as gpb

if TYPE_CHECKING:
    from semel.cluster.kafka.handlers import KafkaApis

_SEMEL_STATES = {gpb.GROUP_STATE_EMPTY: "Empty", gpb.GROUP_STATE_RECONCILING: "Reconciling",
                 gpb.GROUP_STATE_STABLE: "Stable", gpb.GROUP_STATE_DEAD: "Dead"}
CONSUMER = "consumer"
RESOURCE_TOPIC, RESOURCE_BROKER = 2, 4
SOURCE_DYNAMIC_TOPIC, SOURCE_STATIC_BROKER, SOURCE_DEFAULT = 1, 4, 5
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_LONG, TYPE_LIST = 1, 2, 3, 5, 7


# --- ListGroups ------------------------------------------------------------------------------------
async def list_groups(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    body = req.body
    states = {s.lower() for s in getattr(body, "states_filter", ())}
    types = {t.lower() for t in getattr(body, "types_filter", ())}
    host = apis.classic_groups()
    resp = await apis._groups().ListGroups(gpb.ListGroupsRequest(), None)  # type: ignore[arg-type]
    listed: dict[str, tuple[str, str]] = {}
    for g in resp.groups:
        kind = "consumer" if g.member_count > 0 else "classic"
        listed[g.group_id] = (_SEMEL_STATES.get(g.state, "Unknown"), kind)
    for gid, group in list(host.core.groups.items()):
        if host.route(gid)[0] is not None:
            listed[gid] = (group.state.value, "classic")
    groups = [{"group_id": gid, "protocol_type": CONSUMER, "group_state": state, "group_type": kind}
              for gid, (state, kind) in sorted(listed.items())
              if (not states or state.lower() in states) and (not types or kind in types)]
    return {"throttle_time": 0, "error_code": to_kafka(resp.error_code), "groups": groups}


# --- DescribeGroups --------------------------------------------------------------------------------
async def describe_groups(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    ids = list(req.body.groups[: limits.MAX_GROUPS_PER_REQUEST])
    return {"throttle_time": 0, "groups": [await _describe_group(apis, gid) for gid in ids]}


async def _describe_group(apis: KafkaApis, group_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {"error_code": K.none, "group_id": group_id, "group_state": "Dead", "protocol_type": "",
                           "protocol_data": "", "members": [], "authorized_operations": -2147483648}
    host = apis.classic_groups()
    loaded, error = host.route(group_id)
    if loaded is None:
        out["error_code"] = error
        return out
    classic = host.core.group(group_id)
    if classic is not None:
        proto = classic.protocol_name
        out.update(group_state=classic.state.value, protocol_type=classic.protocol_type or CONSUMER,
                   protocol_data=proto or "", members=[
                       {"member_id": m.member_id, "group_instance_id": m.group_instance_id, "client_id": m.client_id,
                        "client_host": m.client_host,
                        "member_metadata": m.metadata(proto) if proto and classic.state != cg.State.PREPARING_REBALANCE else b"",
                        "member_assignment": m.assignment if classic.state == cg.State.STABLE else b""}
                       for m in classic.members.values()])
        return out
    resp = await apis._groups().DescribeGroups(gpb.DescribeGroupsRequest(group_ids=[group_id]), None)  # type: ignore[arg-type]
    (g,) = resp.groups
    if g.error_code == pb.GROUP_ID_NOT_FOUND:
        return out  # Kafka (v0-5): a group nobody knows is Dead, with no error
    if g.error_code != pb.NONE:
        out["error_code"] = to_kafka(g.error_code)
        return out
    out.update(group_state=_SEMEL_STATES.get(g.state, "Unknown"), protocol_type=CONSUMER, members=[
        {"member_id": m.member_id, "group_instance_id": None, "client_id": m.client_id, "client_host": "",
         "member_metadata": b"", "member_assignment": b""} for m in g.members])
    return out


# --- DeleteGroups ----------------------------------------------------------------------------------
async def delete_groups(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    host = apis.classic_groups()
    results = []
    for gid in req.body.groups_names[: limits.MAX_GROUPS_PER_REQUEST]:
        loaded, error = host.route(gid)
        if loaded is not None and host.member_count(gid) > 0:
            error = K.non_empty_group
        elif loaded is not None:
            resp = await apis._groups().DeleteGroup(gpb.DeleteGroupRequest(group_id=gid), None)  # type: ignore[arg-type]
            error = to_kafka(resp.error_code)
        results.append({"group_id": gid, "error_code": error})
    return {"throttle_time": 0, "results": results}


# --- DescribeCluster -------------------------------------------------------------------------------
async def describe_cluster(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    from semel.cluster.kafka.handlers import kafka_endpoint

    b = apis.b
    out: dict[str, Any] = {"throttle_time": 0, "error_code": K.none, "error_message": None, "endpoint_type": 1,
                           "cluster_id": b.config.cluster_id, "controller_id": b.config.broker_id, "brokers": [],
                           "cluster_authorized_operations": -2147483648}
    if getattr(req.body, "endpoint_type", 1) != 1:
        out.update(error_code=K.unsupported_endpoint_type, error_message="only broker endpoints are served")
        return out
    image = b.quorum.image()
    for bid in sorted(image.brokers):
        reg = image.brokers[bid]
        host, port = kafka_endpoint(reg)
        if not reg.fenced and port > 0:
            out["brokers"].append({"broker_id": bid, "host": host, "port": port, "rack": None})
    return out


# --- DescribeConfigs -------------------------------------------------------------------------------
def topic_configs(topic: md.Topic) -> list[tuple[str, str, bool, int]]:
    """(Kafka name, value, read only, config type) of a topic's configs (pure)."""
    c = topic.config
    return [
        ("min.insync.replicas", str(c.min_insync_replicas), False, TYPE_INT),
        ("unclean.leader.election.enable", str(c.unclean_leader_election).lower(), False, TYPE_BOOLEAN),
        ("retention.ms", str(c.retention_ms), False, TYPE_LONG),
        ("retention.bytes", str(c.retention_bytes), False, TYPE_LONG),
        ("segment.bytes", str(c.segment_bytes), False, TYPE_INT),
        ("segment.ms", str(c.segment_ms), False, TYPE_LONG),
        ("cleanup.policy", "delete", True, TYPE_LIST),           # no compaction in Semel
        ("message.timestamp.type", "CreateTime", True, TYPE_STRING),
        ("compression.type", "producer", True, TYPE_STRING),     # batches are stored as sent
        ("max.message.bytes", str(limits.MAX_BATCH_BYTES), True, TYPE_INT),
    ]


def _defaults(topic: md.Topic) -> dict[str, str]:
    default = md.TopicConfig(min_insync_replicas=2 if topic.replication_factor >= 3 else 1)
    return {name: value for name, value, _, _ in topic_configs(md.Topic(
        topic.name, topic.topic_id, topic.internal, topic.replication_factor, default, ()))}


async def describe_configs(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    body = req.body
    image = apis.b.quorum.image()
    results = []
    for r in body.resources[:1000]:
        out: dict[str, Any] = {"error_code": K.none, "error_message": None, "resource_type": r.resource_type,
                               "resource_name": r.resource_name, "configs": []}
        keys = set(r.configuration_keys or ())
        if r.resource_type == RESOURCE_TOPIC:
            topic = image.topic(r.resource_name)
            if topic is None:
                out.update(error_code=K.unknown_topic_or_partition, error_message="no such topic")
            else:
                defaults = _defaults(topic)
                out["configs"] = [_config(n, v, ro, t, SOURCE_DEFAULT if defaults.get(n) == v else SOURCE_DYNAMIC_TOPIC)
                                  for n, v, ro, t in topic_configs(topic) if not keys or n in keys]
        elif r.resource_type == RESOURCE_BROKER:
            if r.resource_name not in ("", str(apis.b.config.broker_id)):
                out.update(error_code=K.invalid_request, error_message="ask the broker itself for its configs")
            else:
                entries = [("broker.id", str(apis.b.config.broker_id), True, TYPE_INT),
                           ("auto.create.topics.enable", "false", True, TYPE_BOOLEAN)]
                out["configs"] = [_config(n, v, ro, t, SOURCE_STATIC_BROKER) for n, v, ro, t in entries
                                  if not keys or n in keys]
        else:
            out.update(error_code=K.invalid_request, error_message=f"resource type {r.resource_type} is not served")
        results.append(out)
    return {"throttle_time": 0, "results": results}


def _config(name: str, value: str, read_only: bool, config_type: int, source: int) -> dict[str, Any]:
    return {"name": name, "value": value, "read_only": read_only, "is_default": source == SOURCE_DEFAULT,
            "config_source": source, "is_sensitive": False, "synonyms": [], "config_type": config_type,
            "documentation": None}


# --- CreatePartitions -----------------------------------------------------------------------------
async def create_partitions(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    """Each topic through the Admin service's add-partitions path (`admin_ops.CreatePartitions`:
    `count` is the new total, the quorum places the new replicas). `validate_only` checks the
    topic and the count against the image without submitting; manual assignments are refused."""
    body = req.body
    timeout_ms = codec.timedelta_ms(body.timeout) or ADMIN_TIMEOUT_MS_DEFAULT
    results = []
    for t in body.topics[:1000]:
        out: dict[str, Any] = {"name": t.name, "error_code": K.none, "error_message": None}
        if t.assignments is not None:
            out.update(error_code=K.invalid_request, error_message="manual replica assignments are not served")
        elif body.validate_only:
            topic = apis.b.quorum.image().topic(t.name)
            if topic is None:
                out.update(error_code=K.unknown_topic_or_partition, error_message="no such topic")
            elif t.count <= len(topic.partitions):
                out.update(error_code=K.invalid_partitions,
                           error_message=f"{t.name} has {len(topic.partitions)} partitions; the count must be larger")
        else:
            resp = await apis.admin.CreatePartitions(apb.CreatePartitionsRequest(
                topic=t.name, count=t.count, timeout_ms=timeout_ms), None)  # type: ignore[arg-type]
            out.update(error_code=to_kafka(resp.error_code), error_message=resp.error_message or None)
        results.append(out)
    return {"throttle_time": 0, "results": results}


# --- IncrementalAlterConfigs / AlterConfigs --------------------------------------------------------
OP_SET, OP_DELETE = 0, 1  # IncrementalAlterConfigs; APPEND (2) and SUBTRACT (3) are for list configs


def incremental_changes(configs: Any) -> tuple[dict[str, str], list[str]] | str:
    """(keys to set, keys to reset to the default) of one resource's IncrementalAlterConfigs
    entries, or why they are refused (pure). Semel's topic configs are all scalars."""
    set_: dict[str, str] = {}
    delete: list[str] = []
    for c in configs:
        if c.config_operation == OP_SET and c.value is not None:
            set_[c.name] = c.value
        elif c.config_operation == OP_DELETE:
            delete.append(c.name)
        else:
            return f"{c.name}: operation {c.config_operation} is not served (only SET with a value and DELETE)"
    return set_, delete


def replacing_changes(configs: Any) -> tuple[dict[str, str], list[str]] | str:
    """AlterConfigs replaces a resource's whole config: the keys given are set, every other
    alterable key goes back to its default (pure)."""
    set_ = {c.name: c.value for c in configs if c.value is not None}
    if len(set_) != len(configs):
        return "a null value is not served (leave the key out to reset it)"
    given = {md.normalize_config_key(k) for k in set_}
    return set_, [kafka for kafka, semel in md.KAFKA_CONFIG_NAMES.items() if semel not in given]


async def _alter_configs(apis: KafkaApis, req: codec.Request,
                         changes: Callable[[Any], tuple[dict[str, str], list[str]] | str]) -> dict[str, Any]:
    body = req.body
    responses = []
    for r in body.resources[:1000]:
        out: dict[str, Any] = {"error_code": K.none, "error_message": None, "resource_type": r.resource_type,
                               "resource_name": r.resource_name}
        wanted = changes(r.configs) if r.resource_type == RESOURCE_TOPIC else (
            f"resource type {r.resource_type} is not alterable (topics are; broker configs are command-line flags)")
        if isinstance(wanted, str):
            out.update(error_code=K.invalid_request, error_message=wanted)
        else:
            set_, delete = wanted
            resp = await apis.admin.AlterTopicConfig(apb.AlterTopicConfigRequest(
                topic=r.resource_name, set=set_, delete=delete, validate_only=body.validate_only,
                timeout_ms=ADMIN_TIMEOUT_MS_DEFAULT), None)  # type: ignore[arg-type]
            out.update(error_code=to_kafka(resp.error_code), error_message=resp.error_message or None)
        responses.append(out)
    return {"throttle_time": 0, "responses": responses}


async def incremental_alter_configs(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    return await _alter_configs(apis, req, incremental_changes)


async def alter_configs(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    return await _alter_configs(apis, req, replacing_changes)


# --- OffsetForLeaderEpoch --------------------------------------------------------------------------
async def offset_for_leader_epoch(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    topics = []
    budget = limits.MAX_PARTITIONS_PER_REQUEST
    for t in req.body.topics:
        parts = []
        for q in t.partitions[:budget]:
            r: dict[str, Any] = {"error_code": K.none, "partition": q.partition, "leader_epoch": -1, "end_offset": -1}
            p = apis.b.rm.get(t.topic, q.partition)
            try:
                if p is None:
                    raise PartitionError(pb.NOT_LEADER_OR_FOLLOWER, "no replica here")
                p.check_leader(q.current_leader_epoch)  # the fetch path's leader and epoch rules
                r["leader_epoch"], r["end_offset"] = p.store.end_offset_for_epoch(q.leader_epoch)
            except PartitionError as exc:
                r["error_code"] = to_kafka(exc.code)
            parts.append(r)
        budget -= len(parts)
        topics.append({"topic": t.topic, "partitions": parts})
    return {"throttle_time": 0, "topics": topics}


HANDLERS: dict[int, Callable[[KafkaApis, codec.Request], Awaitable[dict[str, Any] | None]]] = {
    codec.LIST_GROUPS: list_groups,
    codec.DESCRIBE_GROUPS: describe_groups,
    codec.DELETE_GROUPS: delete_groups,
    codec.DESCRIBE_CLUSTER: describe_cluster,
    codec.DESCRIBE_CONFIGS: describe_configs,
    codec.OFFSET_FOR_LEADER_EPOCH: offset_for_leader_epoch,
    codec.CREATE_PARTITIONS: create_partitions,
    codec.INCREMENTAL_ALTER_CONFIGS: incremental_alter_configs,
    codec.ALTER_CONFIGS: alter_configs,
}
