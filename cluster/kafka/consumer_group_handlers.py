"""Kafka's KIP-848 consumer group protocol (ConsumerGroupHeartbeat, ConsumerGroupDescribe) over
Semel's own group coordinator, which already runs that protocol with server-side assignment
(`semel.coordinator.group_state`): this module only translates. Kafka names topics by UUID
in these messages; the UUIDs are the ones Metadata announces (`handlers._topic_uuid`).

Not served: regex subscriptions (`subscribed_topic_regex`, INVALID_REQUEST), static members
(`instance_id`, INVALID_REQUEST) and a client-chosen server assignor (ignored: Semel has one,
reported as "uniform"). A member epoch of -2 (a static member's temporary leave) is a leave.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from kio.schema.errors import ErrorCode as K
from semel import limits
from semel.cluster.kafka import codec
from semel.cluster.kafka.admin_handlers import _SEMEL_STATES
from semel.cluster.kafka.errors import to_kafka
from semel.cluster.metadata import state as md
from semel.v1 import common_pb2 as pb
from semel.v1 import group_pb2 as gpb

if TYPE_CHECKING:
    from semel.cluster.kafka.handlers import KafkaApis

ASSIGNOR = "uniform"
STATIC_LEAVE_EPOCH = -2
MEMBER_TYPE_CONSUMER = 1  # ConsumerGroupDescribe v1: the member uses the consumer protocol


def _uuid_of(image: md.MetadataImage, name: str) -> uuid.UUID | None:
    from semel.cluster.kafka.handlers import _topic_uuid

    t = image.topic(name)
    return uuid.UUID(hex=_topic_uuid(t.topic_id)) if t is not None else None


def _names_by_uuid(image: md.MetadataImage) -> dict[uuid.UUID, str]:
    from semel.cluster.kafka.handlers import _topic_uuid

    return {uuid.UUID(hex=_topic_uuid(t.topic_id)): name for name, t in image.topics.items()}


async def consumer_group_heartbeat(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    body = req.body
    refused = {"throttle_time": 0, "member_id": body.member_id, "member_epoch": -1, "heartbeat_interval": 0,
               "assignment": None}
    if getattr(body, "subscribed_topic_regex", None):  # librdkafka 2.16 sends "" for none
        return {**refused, "error_code": K.invalid_request, "error_message": "regex subscriptions are not served"}
    if body.instance_id is not None:
        return {**refused, "error_code": K.invalid_request, "error_message": "static membership is not served"}
    image = apis.b.quorum.image()
    epoch = -1 if body.member_epoch == STATIC_LEAVE_EPOCH else body.member_epoch
    request = gpb.ConsumerGroupHeartbeatRequest(
        group_id=body.group_id, member_id=body.member_id, member_epoch=epoch,
        rebalance_timeout_ms=max(0, codec.timedelta_ms(body.rebalance_timeout, -1)), client_id=req.client_id or "")
    if body.subscribed_topic_names is not None:
        request.subscription.topics.extend(body.subscribed_topic_names[: limits.MAX_SUBSCRIBED_TOPICS_PER_MEMBER + 1])
    if body.topic_partitions is not None:
        request.owned.SetInParent()
        names = _names_by_uuid(image)
        owned: dict[str, set[int]] = {}
        for tp in body.topic_partitions[: limits.MAX_PARTITIONS_PER_REQUEST]:
            name = names.get(tp.topic_id) if tp.topic_id is not None else None
            if name is not None:  # a deleted topic's partitions are owned by nobody
                owned.setdefault(name, set()).update(tp.partitions)
        for name in sorted(owned):
            request.owned.partitions.append(gpb.TopicPartitions(topic=name, partitions=sorted(owned[name])))
    resp = await apis._groups().ConsumerGroupHeartbeat(request, None)  # type: ignore[arg-type]
    assignment = None
    if resp.error_code == pb.NONE and resp.HasField("assignment"):
        assignment = {"topic_partitions": [
            {"topic_id": topic_id, "partitions": list(tp.partitions)}
            for tp in resp.assignment.partitions if (topic_id := _uuid_of(image, tp.topic)) is not None]}
    return {"throttle_time": 0, "error_code": to_kafka(resp.error_code), "error_message": resp.error_message or None,
            "member_id": resp.member_id or body.member_id, "member_epoch": resp.member_epoch,
            "heartbeat_interval": resp.heartbeat_interval_ms, "assignment": assignment}


async def consumer_group_describe(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    image = apis.b.quorum.image()
    ids = list(req.body.group_ids[: limits.MAX_GROUPS_PER_REQUEST])
    host = apis.classic_groups()
    groups = []
    for gid in ids:
        out: dict[str, Any] = {"error_code": K.none, "error_message": None, "group_id": gid, "group_state": "Dead",
                               "group_epoch": -1, "assignment_epoch": -1, "assignor_name": ASSIGNOR, "members": [],
                               "authorized_operations": -2147483648}
        loaded, error = host.route(gid)
        if loaded is None:
            out["error_code"] = error
        elif host.member_count(gid) > 0:
            out.update(error_code=K.group_id_not_found, error_message=f"group {gid} is a classic group")
        else:
            resp = await apis._groups().DescribeGroups(gpb.DescribeGroupsRequest(group_ids=[gid]), None)  # type: ignore[arg-type]
            (g,) = resp.groups
            if g.error_code != pb.NONE:
                out.update(error_code=to_kafka(g.error_code), error_message=g.error_message or None)
            else:
                out.update(group_state=_SEMEL_STATES.get(g.state, "Unknown"), group_epoch=g.group_epoch,
                           assignment_epoch=g.assignment_epoch,
                           members=[_member(image, m) for m in g.members])
        groups.append(out)
    return {"throttle_time": 0, "groups": groups}


def _member(image: md.MetadataImage, m: gpb.GroupMemberDescription) -> dict[str, Any]:
    return {"member_id": m.member_id, "instance_id": None, "rack_id": None, "member_epoch": m.member_epoch,
            "client_id": m.client_id, "client_host": "", "subscribed_topic_names": list(m.subscribed_topics),
            "subscribed_topic_regex": None, "assignment": _assignment(image, m.assignment),
            "target_assignment": _assignment(image, m.target_assignment), "member_type": MEMBER_TYPE_CONSUMER}


def _assignment(image: md.MetadataImage, a: gpb.Assignment) -> dict[str, Any]:
    return {"topic_partitions": [
        {"topic_id": topic_id, "topic_name": tp.topic, "partitions": list(tp.partitions)}
        for tp in a.partitions if (topic_id := _uuid_of(image, tp.topic)) is not None]}


HANDLERS: dict[int, Callable[[KafkaApis, codec.Request], Awaitable[dict[str, Any] | None]]] = {
    codec.CONSUMER_GROUP_HEARTBEAT: consumer_group_heartbeat,
    codec.CONSUMER_GROUP_DESCRIBE: consumer_group_describe,
}
