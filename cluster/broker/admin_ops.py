"""The Admin RPCs of cluster management (issue 18): add partitions, describe and alter a topic's
config, reassign partitions, decommission a broker, elect preferred leaders.

A thin edge: each handler checks what only the edge knows (Kafka's key names, request bounds),
turns the request into metadata commands (`semel.cluster.metadata.state`), submits them through
the quorum, and explains a refusal with the same pure validation the state machine runs. The
brokers react to the new image on their own (`ReplicaManager.reconcile`): new partitions open,
changed configs apply to open replicas, reassigned replicas start fetching or are deleted.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
from semel import limits
from semel.limits import ADMIN_TIMEOUT_MS_DEFAULT
from semel.cluster.broker.replica_limit import violation_message
from semel.cluster.metadata import placement
from semel.cluster.metadata import state as md
from semel.cluster.metadata.controller import preferred_leader_elections
from semel.cluster.metadata.quorum import MetadataSubmitError
from semel.v1 import admin_pb2 as apb
from semel.v1 import common_pb2 as pb

if TYPE_CHECKING:
    from semel.cluster.broker.process import Broker


def _timeout_s(timeout_ms: int) -> float:
    return max(1, min(limits.MAX_PRODUCE_TIMEOUT_MS, timeout_ms or ADMIN_TIMEOUT_MS_DEFAULT)) / 1000


def _config_key_problem(keys: list[str]) -> str | None:
    unknown = [k for k in keys if md.normalize_config_key(k) is None]
    if not unknown:
        return None
    return f"unknown config key {unknown[0]!r}; valid keys: {md.valid_config_keys_text()}"


class ClusterOpsAdmin:
    """Mixed into `server.AdminService` (which sets `self.b`)."""

    b: Broker

    async def _submit(self, command: md.Command, timeout_s: float) -> md.Result | MetadataSubmitError:
        try:
            return await self.b.quorum.submit(command, timeout_s=timeout_s)
        except MetadataSubmitError as exc:
            return exc

    async def _fresh_image(self, timeout_s: float) -> md.MetadataImage:
        """The image once it holds every change committed before the call (a `Barrier` through
        the quorum; see metadata_freshness.py): decisions made from a lagging image (which
        leaders are not preferred, where a drained broker's replicas are) would be stale. Without
        a quorum in time, the local image (the commands submitted later fail anyway)."""
        try:
            await self.b.quorum.submit(md.Barrier(), timeout_s=timeout_s)
        except MetadataSubmitError:
            pass
        return self.b.quorum.image()

    # --- partitions -------------------------------------------------------------------
    async def CreatePartitions(self, request: apb.CreatePartitionsRequest,
                               context: grpc.aio.ServicerContext) -> apb.TopicResult:
        timeout_s = _timeout_s(request.timeout_ms)
        limit = self.b.partition_replica_limit
        command = md.CreatePartitions(request.topic, request.count, max_replicas_per_broker=limit.replicas)
        image = await self._fresh_image(timeout_s)
        topic = image.topic(request.topic)
        if topic is not None and request.count <= len(topic.partitions):
            return apb.TopicResult(name=request.topic, error_code=pb.INVALID_PARTITIONS, error_message=(
                f"{request.topic} has {len(topic.partitions)} partitions; --count is the new total and must be "
                f"larger (partitions are never removed: keys would move)"))
        result = await self._submit(command, timeout_s)
        if isinstance(result, MetadataSubmitError):
            return apb.TopicResult(name=request.topic, error_code=result.code, error_message=str(result))
        if not result.ok and result.error == pb.POLICY_VIOLATION and topic is not None:
            return apb.TopicResult(name=request.topic, error_code=result.error, error_message=violation_message(
                limit, self.b.quorum.image(), request.count - len(topic.partitions), topic.replication_factor))
        if not result.ok:
            return apb.TopicResult(name=request.topic, error_code=result.error,
                                   error_message=_partitions_message(result.error, request))

        def grown(img: md.MetadataImage) -> bool:
            t = img.topic(request.topic)
            return t is not None and len(t.partitions) >= request.count

        await self.b.wait_for_metadata(grown, timeout_s)
        return apb.TopicResult(name=request.topic, error_code=pb.NONE)

    # --- configs ----------------------------------------------------------------------
    async def DescribeTopicConfig(self, request: apb.DescribeTopicConfigRequest,
                                  context: grpc.aio.ServicerContext) -> apb.DescribeTopicConfigResponse:
        topic = (await self._fresh_image(ADMIN_TIMEOUT_MS_DEFAULT / 1000)).topic(request.topic)
        if topic is None:
            return apb.DescribeTopicConfigResponse(error_code=pb.UNKNOWN_TOPIC_OR_PARTITION,
                                                   error_message=f"no topic {request.topic!r}")
        values = md.topic_config_values(topic.config)
        defaults = md.topic_config_values(md.default_topic_config(topic.replication_factor))
        kafka = {semel: kafka_name for kafka_name, semel in md.KAFKA_CONFIG_NAMES.items()}
        return apb.DescribeTopicConfigResponse(entries=[
            apb.TopicConfigEntry(name=k, kafka_name=kafka[k], value=values[k], is_default=values[k] == defaults[k])
            for k in md.TOPIC_CONFIG_KEYS])

    async def AlterTopicConfig(self, request: apb.AlterTopicConfigRequest,
                               context: grpc.aio.ServicerContext) -> apb.TopicResult:
        timeout_s = _timeout_s(request.timeout_ms)
        name = request.topic
        problem = _config_key_problem([*request.set, *request.delete])
        if problem is not None:
            return apb.TopicResult(name=name, error_code=pb.INVALID_CONFIG, error_message=problem)
        set_configs = tuple(sorted((md.normalize_config_key(k) or k, v) for k, v in request.set.items()))
        delete_keys = tuple(sorted(md.normalize_config_key(k) or k for k in request.delete))
        if len(set_configs) + len(delete_keys) > len(md.TOPIC_CONFIG_KEYS) * 2:
            return apb.TopicResult(name=name, error_code=pb.INVALID_REQUEST, error_message="too many config changes")
        both = {k for k, _ in set_configs} & set(delete_keys)
        if both:
            return apb.TopicResult(name=name, error_code=pb.INVALID_CONFIG,
                                   error_message=f"{sorted(both)[0]}: both set and deleted")
        topic = (await self._fresh_image(timeout_s)).topic(name)
        if topic is None:
            return apb.TopicResult(name=name, error_code=pb.UNKNOWN_TOPIC_OR_PARTITION,
                                   error_message=f"no topic {name!r}")
        values = md.altered_config_values(topic.config, set_configs, delete_keys, topic.replication_factor)
        code, _, message = md.explain_topic_config(values, topic.replication_factor)
        if code != pb.NONE or request.validate_only:
            return apb.TopicResult(name=name, error_code=code, error_message=message)
        result = await self._submit(md.AlterTopicConfig(name, set_configs, delete_keys), timeout_s)
        if isinstance(result, MetadataSubmitError):
            return apb.TopicResult(name=name, error_code=result.code, error_message=str(result))
        if not result.ok:  # the image changed under us: explain against the newest one
            return apb.TopicResult(name=name, error_code=result.error, error_message=pb.ErrorCode.Name(result.error))
        new_config = result.value.config if isinstance(result.value, md.Topic) else None

        def applied(img: md.MetadataImage) -> bool:
            t = img.topic(name)
            return t is None or t.config == new_config

        await self.b.wait_for_metadata(applied, timeout_s)
        return apb.TopicResult(name=name, error_code=pb.NONE)

    # --- reassignment -----------------------------------------------------------------
    async def ReassignPartitions(self, request: apb.ReassignPartitionsRequest,
                                 context: grpc.aio.ServicerContext) -> apb.ReassignPartitionsResponse:
        if len(request.reassignments) > limits.MAX_PARTITIONS_PER_REQUEST:
            return apb.ReassignPartitionsResponse(error_code=pb.INVALID_REQUEST, error_message=(
                f"too many reassignments in one request (limit {limits.MAX_PARTITIONS_PER_REQUEST}); nothing was done"))
        moves = [placement.PlannedMove(r.topic, r.partition, tuple(r.replicas)) for r in request.reassignments]
        return await self._start_moves(moves, _timeout_s(request.timeout_ms))

    async def DecommissionBroker(self, request: apb.DecommissionBrokerRequest,
                                 context: grpc.aio.ServicerContext) -> apb.ReassignPartitionsResponse:
        image = await self._fresh_image(_timeout_s(request.timeout_ms))
        if image.broker(request.broker_id) is None:
            return apb.ReassignPartitionsResponse(error_code=pb.INVALID_REQUEST,
                                                  error_message=f"no broker {request.broker_id} is registered")
        try:
            moves = placement.decommission_plan(image, request.broker_id)
        except placement.NoPlacementError as exc:
            return apb.ReassignPartitionsResponse(error_code=pb.INVALID_REPLICATION_FACTOR, error_message=str(exc))
        # Marked before the moves start, so no topic created meanwhile lands on it (cleared when
        # the broker is started again: a new registration).
        marked = await self._submit(md.DecommissionBroker(request.broker_id), _timeout_s(request.timeout_ms))
        if isinstance(marked, MetadataSubmitError):
            return apb.ReassignPartitionsResponse(error_code=marked.code, error_message=str(marked))
        if not marked.ok:
            return apb.ReassignPartitionsResponse(error_code=marked.error,
                                                  error_message=f"cannot mark broker {request.broker_id} decommissioned")
        return await self._start_moves(moves, _timeout_s(request.timeout_ms))

    async def _start_moves(self, moves: list[placement.PlannedMove], timeout_s: float) -> apb.ReassignPartitionsResponse:
        resp = apb.ReassignPartitionsResponse()
        commands = [md.ReassignPartition(m.topic, m.partition, m.target_replicas) for m in moves]
        results = await asyncio.gather(*(self._submit(c, timeout_s) for c in commands))
        image = self.b.quorum.image()
        for c, result in zip(commands, results):
            r = apb.PartitionResult(topic=c.topic, partition=c.partition, replicas=c.target_replicas)
            if isinstance(result, MetadataSubmitError):
                r.error_code, r.error_message = result.code, str(result)
            elif not result.ok:
                r.error_code, r.error_message = result.error, _reassign_message(result.error, image, c)
            resp.results.append(r)
        return resp

    # --- leaders ----------------------------------------------------------------------
    async def ElectLeaders(self, request: apb.ElectLeadersRequest,
                           context: grpc.aio.ServicerContext) -> apb.ElectLeadersResponse:
        if len(request.topics) > limits.MAX_TOPICS_PER_ADMIN_REQUEST:
            # one result, not one per name: echoing 10001 long names twice outgrew the largest
            # answer gRPC may send (found by the fuzzer)
            return apb.ElectLeadersResponse(results=[apb.PartitionResult(
                partition=-1, error_code=pb.INVALID_REQUEST, error_message=(
                    f"too many topics in one request (limit {limits.MAX_TOPICS_PER_ADMIN_REQUEST}, semel.limits); "
                    "nothing was done"))])
        timeout_s = _timeout_s(request.timeout_ms)
        image = await self._fresh_image(timeout_s)
        resp = apb.ElectLeadersResponse()
        missing = [t for t in dict.fromkeys(request.topics) if image.topic(t) is None]
        for t in missing:
            resp.results.append(apb.PartitionResult(topic=t, partition=-1, error_code=pb.UNKNOWN_TOPIC_OR_PARTITION,
                                                    error_message=f"no topic {t!r}"))
        wanted = frozenset(request.topics) if request.topics else None
        elections = preferred_leader_elections(image, wanted)
        results = await asyncio.gather(*(self._submit(e, timeout_s) for e in elections))
        for e, result in zip(elections, results):
            r = apb.PartitionResult(topic=e.topic, partition=e.partition)
            if isinstance(result, MetadataSubmitError):
                r.error_code, r.error_message = result.code, str(result)
            elif not result.ok:
                r.error_code, r.error_message = result.error, pb.ErrorCode.Name(result.error)
            elif isinstance(result.value, md.PartitionState):
                r.leader_id = result.value.leader
                r.replicas.extend(result.value.replicas)
            resp.results.append(r)
        return resp


def _partitions_message(code: pb.ErrorCode, request: apb.CreatePartitionsRequest) -> str:
    return {
        pb.UNKNOWN_TOPIC_OR_PARTITION: f"no topic {request.topic!r}",
        pb.INVALID_TOPIC_NAME: f"{request.topic} is an internal topic: its partition count is fixed",
        pb.INVALID_PARTITIONS: f"--count {request.count} must be larger than the current count and at most "
                               f"{limits.MAX_PARTITIONS_PER_TOPIC}",
        pb.RESOURCE_EXHAUSTED: f"the cluster would exceed {limits.MAX_PARTITIONS_TOTAL} partitions",
        pb.INVALID_REPLICATION_FACTOR: "fewer live brokers than the topic's replication factor",
    }.get(code, pb.ErrorCode.Name(code))


def _reassign_message(code: pb.ErrorCode, image: md.MetadataImage, c: md.ReassignPartition) -> str:
    p = image.partition(c.topic, c.partition)
    if p is None:
        return f"no partition {c.topic}-{c.partition}"
    if code == pb.INVALID_REPLICATION_FACTOR:
        t = image.topics[c.topic]
        return (f"replicas {list(c.target_replicas)} must be distinct, at most {limits.MAX_REPLICATION_FACTOR}, and "
                f"at least min_insync_replicas ({t.config.min_insync_replicas})")
    if p.target_replicas and p.target_replicas != tuple(c.target_replicas):
        return (f"a reassignment of {c.topic}-{c.partition} to {list(p.target_replicas)} is under way; wait for it, "
                f"or cancel it by reassigning to replicas in the ISR {list(p.isr)}")
    unknown = [b for b in c.target_replicas if image.broker(b) is None]
    fenced = [b for b in c.target_replicas if (reg := image.broker(b)) is not None and reg.fenced]
    if unknown:
        return f"no broker {unknown[0]} is registered"
    if fenced:
        return f"broker {fenced[0]} is fenced (down): it cannot take a new replica"
    return pb.ErrorCode.Name(code)
