"""gRPC servicers of a broker: Broker (clients), Admin, Replication and Controller (internal).

Thin shells: they convert protobuf <-> core values, ask the replica manager / metadata quorum,
and turn every failure into an `ErrorCode` + message in the response (never an exception
escaping to gRPC, never a hang: every wait is bounded by the request's timeout and the
limits in `semel.limits`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from semel import internal_topics, limits, scram
from semel.limits import ADMIN_TIMEOUT_MS_DEFAULT, PRODUCE_TIMEOUT_MS_DEFAULT
from semel.invariant import not_none
from semel.cluster.broker import write_path
from semel.cluster.broker.admin_ops import ClusterOpsAdmin
from semel.cluster.broker.replica_limit import violation_message
from semel.cluster.broker import produce_validation
from semel.cluster.broker.produce_validation import header_from_fields, validate_batch
from semel.cluster.broker.replica_manager import (
    Partition,
    PartitionError,
    describe_partition,
)
from semel.cluster.metadata import acl
from semel.cluster.metadata import state as md
from semel.cluster.metadata.quorum import MetadataSubmitError
from semel.storage import isolation as isolation_rules
from semel.storage.batch import ATTR_COMPRESSION_MASK, ATTR_KNOWN, HEADER_BYTES, KAFKA_MAGIC, CorruptBatchError
from semel.storage.kafka_records import semel_records_from_kafka
from semel.v1 import admin_pb2 as apb
from semel.v1 import admin_pb2_grpc as agrpc
from semel.v1 import broker_pb2 as bpb
from semel.v1 import broker_pb2_grpc as bgrpc
from semel.v1 import common_pb2 as pb
from semel.v1 import controller_pb2 as cpb
from semel.v1 import controller_pb2_grpc as cgrpc
from semel.v1 import replication_pb2 as rpb
from semel.v1 import replication_pb2_grpc as rgrpc

if TYPE_CHECKING:
    from semel.cluster.broker.process import Broker

log = logging.getLogger(__name__)

EARLIEST = -2
LATEST = -1


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


async def image_with_producer_ids(broker: Broker, producer_ids: Iterable[int]) -> md.MetadataImage:
    """The metadata image, once it knows every (non-negative) producer id given as allocated
    (bounded wait, `MAX_PRODUCER_ID_METADATA_WAIT_MS`): a client got its id from a block the
    quorum committed, which this broker's image may not have applied yet. An id still unknown
    afterwards was never issued (the per-batch check then refuses it). Both protocols' Produce
    use it."""
    image = broker.quorum.image()
    highest = max(producer_ids, default=-1)
    if highest < image.next_producer_id:
        return image
    wait = getattr(broker, "wait_for_metadata", None)  # absent on the in-process test brokers
    if wait is not None:
        await wait(lambda img: img.next_producer_id > highest, limits.MAX_PRODUCER_ID_METADATA_WAIT_MS / 1000)
    return broker.quorum.image()


def effective_timeout_ms(requested_ms: int, default_ms: int) -> int:
    """A request's `timeout_ms` as the broker applies it: 0 or below (unset in proto3) is the
    default, anything above is capped at MAX_PRODUCE_TIMEOUT_MS (docs/protocol.md, "Zero values")."""
    return min(requested_ms if requested_ms > 0 else default_ms, limits.MAX_PRODUCE_TIMEOUT_MS)


class BrokerService(bgrpc.BrokerServicer):
    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self.inflight_produce = 0
        self.inflight_by_peer: dict[str, int] = {}

    # --- Metadata ----------------------------------------------------------------------
    async def Metadata(self, request: bpb.MetadataRequest, context: grpc.aio.ServicerContext) -> bpb.MetadataResponse:
        image = self.b.quorum.image()
        ac = self.b.quorum.active_controller()
        resp = bpb.MetadataResponse(cluster_id=self.b.config.cluster_id,
                                    controller_id=-1 if ac is None else ac.node_id,
                                    metadata_version=image.version)
        for bid in sorted(image.brokers):
            reg = image.brokers[bid]
            resp.brokers.append(bpb.BrokerInfo(broker_id=bid, host=reg.host, port=reg.port, fenced=reg.fenced))
        names = list(request.topics) if request.topics else sorted(image.topics)
        creating = self.b.auto_create.request((n for n in request.topics if image.topic(n) is None), image)
        for name in names:
            t = image.topic(name)
            if t is None:
                code = pb.LEADER_NOT_AVAILABLE if name in creating else pb.UNKNOWN_TOPIC_OR_PARTITION
                resp.topics.append(bpb.TopicMetadata(error_code=code, name=name))
                continue
            tm = bpb.TopicMetadata(name=name, topic_id=t.topic_id, internal=t.internal)
            for ps in t.partitions:
                tm.partitions.append(bpb.PartitionMetadata(
                    error_code=pb.LEADER_NOT_AVAILABLE if ps.leader == md.NO_LEADER else pb.NONE,
                    partition=ps.partition, leader_id=ps.leader, leader_epoch=ps.leader_epoch,
                    replicas=ps.replicas, isr=ps.isr, partition_epoch=ps.partition_epoch))
            resp.topics.append(tm)
        return resp

    # --- Produce -----------------------------------------------------------------------
    async def Produce(self, request: bpb.ProduceRequest, context: grpc.aio.ServicerContext) -> bpb.ProduceResponse:
        if self.inflight_produce >= self.b.config.max_inflight_produce:
            return _produce_all_failed(request, pb.RESOURCE_EXHAUSTED,
                                       f"broker has {self.inflight_produce} produce requests in flight (limit)")
        peer = context.peer() if context is not None else ""
        if self.inflight_by_peer.get(peer, 0) >= limits.MAX_INFLIGHT_PRODUCE_PER_CONNECTION:
            return _produce_all_failed(request, pb.RESOURCE_EXHAUSTED,
                                       f"{limits.MAX_INFLIGHT_PRODUCE_PER_CONNECTION} produce requests already in "
                                       "flight on this connection (limit)")
        self.inflight_produce += 1
        self.inflight_by_peer[peer] = self.inflight_by_peer.get(peer, 0) + 1
        try:
            return await self._produce(request)
        finally:
            self.inflight_produce -= 1
            left = self.inflight_by_peer[peer] - 1
            if left:
                self.inflight_by_peer[peer] = left
            else:
                del self.inflight_by_peer[peer]  # bounded by the connections with requests in flight

    async def _produce(self, request: bpb.ProduceRequest) -> bpb.ProduceResponse:
        if len(request.partitions) > limits.MAX_PARTITIONS_PER_REQUEST:
            return _produce_all_failed(request, pb.INVALID_REQUEST,
                                       _too_many("partitions", limits.MAX_PARTITIONS_PER_REQUEST))
        if request.acks not in (bpb.ACKS_ALL, bpb.ACKS_LEADER, bpb.ACKS_NONE):
            return _produce_all_failed(request, pb.INVALID_REQUEST, f"unknown acks {request.acks}")
        timeout_ms = effective_timeout_ms(request.timeout_ms, PRODUCE_TIMEOUT_MS_DEFAULT)
        # one per partition entry, in request order (an entry listed twice is refused below)
        refused = [produce_validation.check_request_batch(pd, request.transactional_id) for pd in request.partitions]
        image = await self._image_with_producer_ids(request, refused)
        self.b.auto_create.request({pd.topic for pd in request.partitions if image.topic(pd.topic) is None}, image)
        txn = getattr(self.b, "txn", None)
        check = await txn.verify_produce(request, image) if txn is not None else None  # KIP-890
        now = self.b.clock.wall_clock_ms()
        seen: set[tuple[str, int]] = set()
        results: list[bpb.PartitionProduceResult] = []
        waits: list[tuple[bpb.PartitionProduceResult, write_path.PendingAck]] = []
        for pd, rejection in zip(request.partitions, refused):
            r = bpb.PartitionProduceResult(topic=pd.topic, partition=pd.partition, base_offset=-1, last_offset=-1,
                                           log_append_time_ms=-1, log_start_offset=-1)
            results.append(r)
            key = (pd.topic, pd.partition)
            if key in seen:
                _set_error(r, pb.INVALID_REQUEST, "partition listed twice in one request")
                continue
            seen.add(key)
            producer_id = produce_validation.batch_identity(pd)[0]
            if rejection is None and 0 <= producer_id and producer_id >= image.next_producer_id:
                rejection = produce_validation.unallocated_producer_id(producer_id, image.next_producer_id)
            if rejection is not None:
                _set_error(r, rejection.error_code, rejection.message)
                continue
            try:
                if check is not None:
                    check(pd)  # no await between this and the append
                ack = self._produce_one(pd, request.acks, image, now, r)
            except PartitionError as exc:
                _set_error(r, exc.code, exc.message)
                continue
            except (ValueError, OSError) as exc:  # the append's own are answered by the write path
                log.exception("produce to %s-%d failed", pd.topic, pd.partition)
                _set_error(r, pb.STORAGE_ERROR, f"append failed on broker {self.b.config.broker_id}: {exc}")
                continue
            if ack is not None:
                waits.append((r, ack))
        if waits:
            outcomes = await write_path.wait_all([ack for _, ack in waits], timeout_ms)
            for (r, _), outcome in zip(waits, outcomes):
                if outcome.error_code != pb.NONE:
                    _set_error(r, outcome.error_code, outcome.message)
        return bpb.ProduceResponse(results=results)

    async def _image_with_producer_ids(self, request: bpb.ProduceRequest,
                                       refused: list[produce_validation.Rejection | None]
                                       ) -> md.MetadataImage:
        return await image_with_producer_ids(self.b, [
            produce_validation.batch_identity(pd)[0] for pd, rejection in zip(request.partitions, refused)
            if rejection is None])

    def _produce_one(self, pd: bpb.PartitionProduceData, acks: int, image: md.MetadataImage, now: int,
                     r: bpb.PartitionProduceResult) -> write_path.PendingAck | None:
        if pd.topic in internal_topics.INTERNAL_TOPICS:
            # only the coordinators write these, through write_path on the broker itself
            raise PartitionError(pb.INVALID_TOPIC_NAME, f"{pd.topic} is an internal topic: clients cannot produce to it")
        p = self.b.rm.leader_partition(pd.topic, pd.partition, image)
        if pd.kafka_batch:
            return self._produce_kafka_batch(pd, p, acks, now, r)
        b = pd.batch  # present (check_request_batch)
        header = header_from_fields(
            last_offset_delta=b.last_offset_delta, producer_id=b.producer_id, producer_epoch=b.producer_epoch,
            base_sequence=b.base_sequence, record_count=b.record_count, attributes=b.attributes,
            base_timestamp_ms=b.base_timestamp_ms, max_timestamp_ms=b.max_timestamp_ms, records_bytes=len(b.records))
        rejection = validate_batch(header, max_batch_bytes=self.b.config.max_batch_bytes, now_ms=now,
                                   max_future_timestamp_ms=limits.MAX_FUTURE_TIMESTAMP_MS)
        if rejection is None:
            rejection = produce_validation.check_records(b.records, b.record_count, b.attributes)
        if rejection is not None:
            raise PartitionError(rejection.error_code, rejection.message)
        policy = write_path.PRODUCE_ACKS_ALL if acks == bpb.ACKS_ALL else write_path.PRODUCE_ACKS_LEADER
        out = write_path.start_append(p, lambda: p.append_as_leader(header, b.records, now), policy)
        ar = out.result if isinstance(out, write_path.PendingAck) else out
        if ar.error_code != pb.NONE:
            raise PartitionError(ar.error_code, ar.message)
        r.base_offset, r.last_offset = ar.base_offset, ar.last_offset
        r.log_append_time_ms, r.duplicate = ar.log_append_time_ms, ar.duplicate
        r.log_start_offset = p.log_start_offset
        if not ar.duplicate:
            self.b.metrics.produced(pd.topic, len(b.records), b.record_count)
        return out if isinstance(out, write_path.PendingAck) else None

    def _produce_kafka_batch(self, pd: bpb.PartitionProduceData, p: Partition, acks: int, now: int,
                             r: bpb.PartitionProduceResult) -> write_path.PendingAck | None:
        """A whole Kafka RecordBatch v2 (`kafka_batch`), checked, then appended as sent through the
        same write path as the Kafka listener's Produce (`append_encoded_as_leader`)."""
        data = pd.kafka_batch
        checked = produce_validation.check_kafka_batch(
            data, max_batch_bytes=self.b.config.max_batch_bytes, now_ms=now,
            max_future_timestamp_ms=limits.MAX_FUTURE_TIMESTAMP_MS)
        if isinstance(checked, produce_validation.Rejection):
            raise PartitionError(checked.error_code, checked.message)
        policy = write_path.PRODUCE_ACKS_ALL if acks == bpb.ACKS_ALL else write_path.PRODUCE_ACKS_LEADER
        out = write_path.start_append(p, lambda: p.append_encoded_as_leader(data, now), policy)
        ar = out.result if isinstance(out, write_path.PendingAck) else out
        if ar.error_code != pb.NONE:
            raise PartitionError(ar.error_code, ar.message)
        r.base_offset, r.last_offset = ar.base_offset, ar.last_offset
        r.log_append_time_ms, r.duplicate = ar.log_append_time_ms, ar.duplicate
        r.log_start_offset = p.log_start_offset
        if not ar.duplicate:
            self.b.metrics.produced(pd.topic, len(data), checked.record_count)
        return out if isinstance(out, write_path.PendingAck) else None

    # --- Fetch -------------------------------------------------------------------------
    async def Fetch(self, request: bpb.FetchRequest, context: grpc.aio.ServicerContext) -> bpb.FetchResponse:
        if len(request.partitions) > limits.MAX_PARTITIONS_PER_REQUEST:
            return bpb.FetchResponse(results=[bpb.FetchPartitionResult(
                topic=fp.topic, partition=fp.partition, error_code=pb.INVALID_REQUEST,
                error_message=_too_many("partitions", limits.MAX_PARTITIONS_PER_REQUEST))
                for fp in request.partitions[:1]])
        if request.isolation_level not in (bpb.READ_UNCOMMITTED, bpb.READ_COMMITTED):
            return bpb.FetchResponse(results=[bpb.FetchPartitionResult(
                topic=fp.topic, partition=fp.partition, error_code=pb.INVALID_REQUEST,
                error_message=f"unknown isolation_level {request.isolation_level}") for fp in request.partitions])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _clamp(request.max_wait_ms, 0, limits.MAX_FETCH_WAIT_MS) / 1000
        max_bytes = request.max_bytes if request.max_bytes > 0 else limits.MAX_FETCH_BYTES
        max_bytes = min(max_bytes, limits.MAX_FETCH_BYTES)
        min_bytes = max(request.min_bytes, 0)
        while True:
            resp, total, errors = self._fetch_once(request, max_bytes)
            if total >= min_bytes or errors or loop.time() >= deadline:
                self.b.metrics.fetched(resp)
                return resp
            if self.b.rm.parked_fetches >= limits.MAX_FETCH_WAITERS_PER_BROKER:
                self.b.metrics.fetched(resp)
                return resp  # answer now rather than park without bound
            await self.b.rm.park_fetch(((fp.topic, fp.partition) for fp in request.partitions), deadline - loop.time())

    def _fetch_once(self, request: bpb.FetchRequest, max_bytes: int) -> tuple[bpb.FetchResponse, int, bool]:
        image = self.b.quorum.image()
        resp = bpb.FetchResponse()
        total = 0
        errors = False
        for fp in request.partitions:
            r = bpb.FetchPartitionResult(topic=fp.topic, partition=fp.partition, high_watermark=-1,
                                         last_stable_offset=-1, log_start_offset=-1, next_fetch_offset=fp.fetch_offset)
            try:
                total += self._fetch_partition(fp, request.isolation_level, max_bytes - total, total == 0, image, r)
            except PartitionError as exc:
                _set_error(r, exc.code, exc.message)
                errors = True
            except (OSError, CorruptBatchError) as exc:
                _set_error(r, pb.STORAGE_ERROR, f"read failed: {exc}")
                errors = True
            resp.results.append(r)
        return resp, total, errors

    def _fetch_partition(self, fp: bpb.FetchPartition, isolation: int, budget: int, first: bool,
                         image: md.MetadataImage, r: bpb.FetchPartitionResult) -> int:
        p = self.b.rm.leader_partition(fp.topic, fp.partition, image, _checked_epoch(fp))
        hw, lso = p.high_watermark, p.last_stable_offset()
        r.high_watermark, r.last_stable_offset, r.log_start_offset = hw, lso, p.log_start_offset
        if fp.fetch_offset < p.log_start_offset or fp.fetch_offset > p.log_end_offset:
            raise PartitionError(pb.OFFSET_OUT_OF_RANGE, f"fetch offset {fp.fetch_offset} outside "
                                 f"[log start {p.log_start_offset}, log end {p.log_end_offset}] (high watermark {hw})")
        read_committed = isolation == bpb.READ_COMMITTED
        bound = isolation_rules.read_bound(read_committed, hw, lso)
        part_max = fp.max_bytes if fp.max_bytes > 0 else limits.MAX_FETCH_BYTES
        part_max = min(part_max, budget)
        if fp.fetch_offset >= bound or (part_max <= 0 and not first):
            return 0
        # the work below is per batch: the store returns at most this many
        read = p.store.read(fp.fetch_offset, max(part_max, 1), bound, limits.MAX_FETCH_BATCHES_PER_PARTITION)
        data = read.data
        # (header, position) of each batch: the headers the log decoded (and CRC-checked) while reading
        batches = list(zip(read.headers, itertools.accumulate((h.size_bytes for h in read.headers), initial=0)))
        visible = batches
        if read_committed and batches:
            start, end = isolation_rules.aborts_to_consult(fp.fetch_offset, batches[0][0], batches[-1][0])
            visible = isolation_rules.visible_to_read_committed(batches, p.store.aborted_in_range(start, end))
        if batches:
            r.next_fetch_offset = batches[-1][0].next_offset
        size = 0
        for h, pos in visible:
            attributes, records = h.attributes, data[pos + HEADER_BYTES: pos + h.size_bytes]
            if h.magic == KAFKA_MAGIC:  # produced over the Kafka listener: docs/storage.md
                attributes, records = h.attributes & ATTR_KNOWN & ~ATTR_COMPRESSION_MASK, \
                    semel_records_from_kafka(memoryview(data)[pos: pos + h.size_bytes], h)
            r.batches.append(pb.RecordBatch(
                base_offset=h.base_offset, last_offset_delta=h.last_offset_delta, leader_epoch=h.leader_epoch,
                producer_id=h.producer_id, producer_epoch=h.producer_epoch, base_sequence=h.base_sequence,
                record_count=h.record_count, attributes=attributes, base_timestamp_ms=h.base_timestamp_ms,
                max_timestamp_ms=h.max_timestamp_ms, records=records))
            size += h.size_bytes
        return size if size else (1 if r.next_fetch_offset != fp.fetch_offset else 0)

    # --- ListOffsets -------------------------------------------------------------------
    async def ListOffsets(self, request: bpb.ListOffsetsRequest, context: grpc.aio.ServicerContext) -> bpb.ListOffsetsResponse:
        image = self.b.quorum.image()
        resp = bpb.ListOffsetsResponse()
        if len(request.partitions) > limits.MAX_PARTITIONS_PER_REQUEST:
            return bpb.ListOffsetsResponse(results=[bpb.ListOffsetsResult(
                topic=lp.topic, partition=lp.partition, offset=-1, timestamp_ms=-1, leader_epoch=-1,
                error_code=pb.INVALID_REQUEST, error_message=_too_many("partitions", limits.MAX_PARTITIONS_PER_REQUEST))
                for lp in request.partitions[:1]])
        if request.isolation_level not in (bpb.READ_UNCOMMITTED, bpb.READ_COMMITTED):
            return bpb.ListOffsetsResponse(results=[bpb.ListOffsetsResult(
                topic=lp.topic, partition=lp.partition, offset=-1, timestamp_ms=-1, leader_epoch=-1,
                error_code=pb.INVALID_REQUEST, error_message=f"unknown isolation_level {request.isolation_level}")
                for lp in request.partitions])
        for lp in request.partitions:
            r = bpb.ListOffsetsResult(topic=lp.topic, partition=lp.partition, offset=-1, timestamp_ms=-1, leader_epoch=-1)
            try:
                p = self.b.rm.leader_partition(lp.topic, lp.partition, image, _checked_epoch(lp))
                r.leader_epoch = p.leader_epoch
                bound = isolation_rules.read_bound(request.isolation_level == bpb.READ_COMMITTED, p.high_watermark,
                                                   p.last_stable_offset())
                if lp.timestamp_ms == EARLIEST:
                    r.offset = p.log_start_offset
                elif lp.timestamp_ms == LATEST:
                    r.offset = bound
                elif lp.timestamp_ms >= 0:
                    found = p.store.offset_for_timestamp(lp.timestamp_ms)
                    r.offset = found if found is not None and found < bound else -1
                    r.timestamp_ms = lp.timestamp_ms if r.offset >= 0 else -1
                else:
                    raise PartitionError(pb.INVALID_REQUEST,
                                         f"timestamp_ms {lp.timestamp_ms}: use -2 (earliest), -1 (latest) or >= 0")
            except PartitionError as exc:
                _set_error(r, exc.code, exc.message)
            resp.results.append(r)
        return resp


def _too_many(what: str, bound: int) -> str:
    return f"too many {what} in one request (limit {bound}, semel.limits); nothing was done"


def _checked_epoch(q: bpb.FetchPartition | bpb.ListOffsetsPartition) -> int:
    """The client's `current_leader_epoch`, or -1 (no check) when it left the field unset: a
    client in another language that omits it must not be fenced once the epoch passes 0."""
    return q.current_leader_epoch if q.HasField("current_leader_epoch") else -1


class _ErrorFields(Protocol):
    """A per-partition result message (produce, fetch, ...)."""

    error_code: pb.ErrorCode
    error_message: str


def _set_error(r: _ErrorFields, code: pb.ErrorCode, message: str) -> None:
    r.error_code = code
    r.error_message = message


def _produce_all_failed(request: bpb.ProduceRequest, code: pb.ErrorCode, message: str) -> bpb.ProduceResponse:
    return bpb.ProduceResponse(results=[
        bpb.PartitionProduceResult(topic=pd.topic, partition=pd.partition, error_code=code, error_message=message,
                                   base_offset=-1, last_offset=-1, log_append_time_ms=-1, log_start_offset=-1)
        for pd in request.partitions[: limits.MAX_PARTITIONS_PER_REQUEST]])


# --- Admin ---------------------------------------------------------------------------------


class AdminService(ClusterOpsAdmin, agrpc.AdminServicer):
    def __init__(self, broker: Broker) -> None:
        self.b = broker

    async def CreateTopics(self, request: apb.CreateTopicsRequest, context: grpc.aio.ServicerContext) -> apb.CreateTopicsResponse:
        timeout_s = effective_timeout_ms(request.timeout_ms, ADMIN_TIMEOUT_MS_DEFAULT) / 1000
        resp = apb.CreateTopicsResponse()
        if len(request.topics) > limits.MAX_TOPICS_PER_ADMIN_REQUEST:
            message = _too_many("topics", limits.MAX_TOPICS_PER_ADMIN_REQUEST)
            return apb.CreateTopicsResponse(results=[apb.TopicResult(name=nt.name, error_code=pb.INVALID_REQUEST,
                                                                     error_message=message) for nt in request.topics])
        for nt in request.topics:
            resp.results.append(await self._create(nt, request.validate_only, timeout_s))
        return resp

    async def _create(self, nt: apb.NewTopic, validate_only: bool, timeout_s: float) -> apb.TopicResult:
        image = self.b.quorum.image()
        rf = nt.replication_factor if nt.HasField("replication_factor") else min(3, max(1, len(image.placement_brokers())))
        if rf < 1:
            return apb.TopicResult(name=nt.name, error_code=pb.INVALID_REPLICATION_FACTOR,
                                   error_message=f"replication_factor must be >= 1, got {rf} (leave it unset for the "
                                   "cluster default)")
        configs = tuple(sorted(nt.configs.items()))
        code = md.validate_topic_name(nt.name)
        if code != pb.NONE:
            return apb.TopicResult(name=nt.name, error_code=code,
                                   error_message="names are 1-200 chars of [A-Za-z0-9._-], not starting with '__'")
        limit = self.b.partition_replica_limit
        command = md.CreateTopic(nt.name, nt.partitions, rf, configs, max_replicas_per_broker=limit.replicas)

        def message(code: pb.ErrorCode) -> str:
            if code == pb.POLICY_VIOLATION:
                return violation_message(limit, self.b.quorum.image(), nt.partitions, rf)
            return _code_message(code, rf)

        if validate_only:  # the create's own checks, on this broker's image (the quorum's may be newer)
            code, _ = md.validate_create_topic(image, command)
            return apb.TopicResult(name=nt.name, error_code=code, error_message=message(code))
        try:
            result = await self.b.quorum.submit(command, timeout_s=timeout_s)
        except MetadataSubmitError as exc:
            return apb.TopicResult(name=nt.name, error_code=exc.code, error_message=str(exc))
        if not result.ok:
            return apb.TopicResult(name=nt.name, error_code=result.error, error_message=message(result.error))
        await self.b.wait_for_metadata(lambda img: img.topic(nt.name) is not None, timeout_s)
        return apb.TopicResult(name=nt.name, error_code=pb.NONE)

    # --- users (password authentication; cluster/broker/principal.py) --------------------
    async def UpsertUserScram(self, request: apb.UpsertUserScramRequest,
                              context: grpc.aio.ServicerContext) -> apb.UpsertUserScramResponse:
        await not_none(self.b.security, "serving").require_super_user(context, "UpsertUserScram")
        cred = scram.ScramCredential(request.mechanism, request.salt, request.iterations, request.stored_key,
                                     request.server_key)
        problem = scram.user_name_problem(request.name) or scram.check_credential(cred)
        if problem:
            return apb.UpsertUserScramResponse(error_code=pb.INVALID_REQUEST, error_message=problem)
        try:
            result = await self.b.quorum.submit(md.UpsertUserScram(request.name, cred),
                                                timeout_s=ADMIN_TIMEOUT_MS_DEFAULT / 1000)
        except MetadataSubmitError as exc:
            return apb.UpsertUserScramResponse(error_code=exc.code, error_message=str(exc))
        if not result.ok:
            return apb.UpsertUserScramResponse(error_code=result.error, error_message=pb.ErrorCode.Name(result.error))
        await self.b.wait_for_metadata(lambda img: cred in img.users.get(request.name, ()),
                                       ADMIN_TIMEOUT_MS_DEFAULT / 1000)
        return apb.UpsertUserScramResponse(error_code=pb.NONE)

    async def DeleteUser(self, request: apb.DeleteUserRequest, context: grpc.aio.ServicerContext) -> apb.DeleteUserResponse:
        await not_none(self.b.security, "serving").require_super_user(context, "DeleteUser")
        if request.name not in self.b.quorum.image().users:
            return apb.DeleteUserResponse(error_code=pb.INVALID_REQUEST, error_message=f"no user {request.name!r}")
        try:
            result = await self.b.quorum.submit(md.DeleteUser(request.name), timeout_s=ADMIN_TIMEOUT_MS_DEFAULT / 1000)
        except MetadataSubmitError as exc:
            return apb.DeleteUserResponse(error_code=exc.code, error_message=str(exc))
        if not result.ok:
            return apb.DeleteUserResponse(error_code=result.error, error_message=f"no user {request.name!r}")
        await self.b.wait_for_metadata(lambda img: request.name not in img.users, ADMIN_TIMEOUT_MS_DEFAULT / 1000)
        return apb.DeleteUserResponse(error_code=pb.NONE)

    async def ListUsers(self, request: apb.ListUsersRequest, context: grpc.aio.ServicerContext) -> apb.ListUsersResponse:
        await not_none(self.b.security, "serving").require_super_user(context, "ListUsers")
        return apb.ListUsersResponse(users=[
            apb.UserDescription(name=name, mechanisms=[c.mechanism for c in creds],
                                iterations=[c.iterations for c in creds])
            for name, creds in sorted(self.b.quorum.image().users.items())])

    # --- ACLs (semel.cluster.metadata.acl; the authorizer checks ALTER/DESCRIBE Cluster first) ---
    async def CreateAcls(self, request: apb.CreateAclsRequest, context: grpc.aio.ServicerContext) -> apb.CreateAclsResponse:
        await not_none(self.b.security, "serving").require_super_user(context, "CreateAcls")
        bindings = tuple(acl.normalized(_acl_binding(a)) for a in request.acls)
        code, message, _ = await self._change_acls(
            "ACLs", bindings, acl.binding_problem, md.CreateAcls(bindings),
            lambda img: set(bindings) <= set(img.acls))
        return apb.CreateAclsResponse(error_code=code, error_message=message)

    async def DeleteAcls(self, request: apb.DeleteAclsRequest, context: grpc.aio.ServicerContext) -> apb.DeleteAclsResponse:
        await not_none(self.b.security, "serving").require_super_user(context, "DeleteAcls")
        filters = tuple(_acl_filter(f) for f in request.filters)
        code, message, value = await self._change_acls(
            "filters", filters, acl.filter_problem, md.DeleteAcls(filters),
            lambda img: not any(f.matches(b) for f in filters for b in img.acls))
        return apb.DeleteAclsResponse(error_code=code, error_message=message,
                                      deleted=value if isinstance(value, int) else 0)

    async def _change_acls(self, noun: str, items: tuple[Any, ...], problem_of: Callable[[Any], str],
                           command: Any, settled: Callable[[Any], bool]) -> tuple[pb.ErrorCode, str, object]:
        """CreateAcls and DeleteAcls alike: 1..MAX_ACLS items, each valid, one quorum command,
        then wait until this broker's image shows it -> (error code, message, the command's value)."""
        if not 1 <= len(items) <= acl.MAX_ACLS:
            return pb.INVALID_REQUEST, f"give 1..{acl.MAX_ACLS} {noun}, got {len(items)}", None
        for item in items:
            problem = problem_of(item)
            if problem:
                return pb.INVALID_REQUEST, problem, None
        try:
            result = await self.b.quorum.submit(command, timeout_s=ADMIN_TIMEOUT_MS_DEFAULT / 1000)
        except MetadataSubmitError as exc:
            return exc.code, str(exc), None
        if not result.ok:
            return result.error, pb.ErrorCode.Name(result.error), None
        await self.b.wait_for_metadata(settled, ADMIN_TIMEOUT_MS_DEFAULT / 1000)
        return pb.NONE, "", result.value

    async def DescribeAcls(self, request: apb.DescribeAclsRequest,
                           context: grpc.aio.ServicerContext) -> apb.DescribeAclsResponse:
        await not_none(self.b.security, "serving").require_super_user(context, "DescribeAcls")
        f = _acl_filter(request.filter)
        return apb.DescribeAclsResponse(acls=[apb.Acl(**{k: getattr(b, k) for k in _ACL_FIELDS})
                                              for b in self.b.quorum.image().acls if f.matches(b)])

    async def DeleteTopics(self, request: apb.DeleteTopicsRequest, context: grpc.aio.ServicerContext) -> apb.DeleteTopicsResponse:
        timeout_s = effective_timeout_ms(request.timeout_ms, ADMIN_TIMEOUT_MS_DEFAULT) / 1000
        resp = apb.DeleteTopicsResponse()
        if len(request.names) > limits.MAX_TOPICS_PER_ADMIN_REQUEST:
            message = _too_many("topics", limits.MAX_TOPICS_PER_ADMIN_REQUEST)
            return apb.DeleteTopicsResponse(results=[apb.TopicResult(name=name, error_code=pb.INVALID_REQUEST,
                                                                     error_message=message) for name in request.names])
        for name in request.names:
            if name in internal_topics.INTERNAL_TOPICS:
                resp.results.append(apb.TopicResult(name=name, error_code=pb.INVALID_TOPIC_NAME,
                                                    error_message=f"{name} is an internal topic: it cannot be deleted"))
                continue
            try:
                result = await self.b.quorum.submit(md.DeleteTopic(name), timeout_s=timeout_s)
            except MetadataSubmitError as exc:
                resp.results.append(apb.TopicResult(name=name, error_code=exc.code, error_message=str(exc)))
                continue
            if result.ok:
                def deleted(img: md.MetadataImage, n: str = name) -> bool:
                    return img.topic(n) is None

                await self.b.wait_for_metadata(deleted, timeout_s)
            resp.results.append(apb.TopicResult(name=name, error_code=result.error,
                                                error_message=_code_message(result.error)))
        return resp

    async def DescribeTopics(self, request: apb.DescribeTopicsRequest, context: grpc.aio.ServicerContext) -> apb.DescribeTopicsResponse:
        image = self.b.quorum.image()
        if len(request.names) > limits.MAX_TOPICS_PER_ADMIN_REQUEST:
            message = _too_many("topics", limits.MAX_TOPICS_PER_ADMIN_REQUEST)
            return apb.DescribeTopicsResponse(topics=[apb.TopicDescription(
                name=name, error_code=pb.INVALID_REQUEST, error_message=message) for name in request.names])
        names = list(request.names) or [n for n, t in sorted(image.topics.items())
                                        if request.include_internal or not t.internal]
        resp = apb.DescribeTopicsResponse()
        for name in names:
            t = image.topic(name)
            if t is None:
                resp.topics.append(apb.TopicDescription(name=name, error_code=pb.UNKNOWN_TOPIC_OR_PARTITION))
                continue
            c = t.config
            td = apb.TopicDescription(name=name, topic_id=t.topic_id, internal=t.internal, configs={
                "min_insync_replicas": str(c.min_insync_replicas),
                "unclean_leader_election": str(c.unclean_leader_election).lower(),
                "retention_ms": str(c.retention_ms), "retention_bytes": str(c.retention_bytes),
                "segment_bytes": str(c.segment_bytes), "segment_ms": str(c.segment_ms),
                "replication_factor": str(t.replication_factor),
            })
            for ps in t.partitions:
                local = self.b.rm.get(name, ps.partition)
                offsets = describe_partition(local if local is not None and local.topic_id == t.topic_id else None)
                td.partitions.append(apb.PartitionDescription(
                    partition=ps.partition, leader_id=ps.leader, leader_epoch=ps.leader_epoch, replicas=ps.replicas,
                    isr=ps.isr, target_replicas=ps.target_replicas, eligible_leader_replicas=ps.elr,
                    error_code=pb.LEADER_NOT_AVAILABLE if ps.leader == md.NO_LEADER else pb.NONE,
                    **offsets))
            resp.topics.append(td)
        await self._offsets_from_leaders(resp, image)
        return resp

    async def _offsets_from_leaders(self, resp: apb.DescribeTopicsResponse, image: md.MetadataImage) -> None:
        """Ask each other leader for exact offsets (bounded: 1 s, one request pair per leader);
        a partition whose leader does not answer keeps this broker's own view."""
        by_leader: dict[int, list[tuple[str, apb.PartitionDescription]]] = {}
        for td in resp.topics:
            for pd in td.partitions:
                if pd.leader_id >= 0 and pd.leader_id != self.b.config.broker_id:
                    by_leader.setdefault(pd.leader_id, []).append((td.name, pd))
        if by_leader:
            await asyncio.gather(*(self._ask_leader(b, parts, image) for b, parts in by_leader.items()))

    async def _ask_leader(self, broker_id: int, parts: list[tuple[str, apb.PartitionDescription]],
                          image: md.MetadataImage) -> None:
        """One ListOffsets pair per chunk of distinct partitions (a request may name a topic
        many times, and one answer must stay within the leader's per-request bound)."""
        reg = image.broker(broker_id)
        if reg is None:
            return
        stub = bgrpc.BrokerStub(self.b.peers.channel(f"{reg.host}:{reg.port}"))
        keys = sorted({(t, pd.partition) for t, pd in parts})
        chunk = limits.MAX_PARTITIONS_PER_REQUEST // 2  # two queries (earliest, latest) per partition
        answers = await asyncio.gather(*(self._leader_offsets(stub, keys[i:i + chunk])
                                         for i in range(0, len(keys), chunk)))
        offsets = {key: found for a in answers for key, found in a.items()}
        for t, pd in parts:
            found = offsets.get((t, pd.partition))
            if found is not None:
                pd.log_start_offset, pd.high_watermark, pd.last_stable_offset = found

    @staticmethod
    async def _leader_offsets(stub: bgrpc.BrokerStub, keys: list[tuple[str, int]]
                              ) -> dict[tuple[str, int], tuple[int, int, int]]:
        """{(topic, partition): (log start, high watermark, last stable offset)} of the partitions
        the leader answered without error (bounded: 1 s)."""
        queries = [bpb.ListOffsetsPartition(topic=t, partition=p, timestamp_ms=ts)
                   for t, p in keys for ts in (EARLIEST, LATEST)]
        try:
            uncommitted, committed = await asyncio.gather(
                stub.ListOffsets(bpb.ListOffsetsRequest(partitions=queries), timeout=1.0),
                stub.ListOffsets(bpb.ListOffsetsRequest(partitions=queries[1::2], isolation_level=bpb.READ_COMMITTED),
                                 timeout=1.0))
        except grpc.aio.AioRpcError:
            return {}
        if len(uncommitted.results) != 2 * len(keys) or len(committed.results) != len(keys):
            return {}  # refused as a whole (e.g. INVALID_REQUEST): keep this broker's own view
        out = {}
        for i, key in enumerate(keys):
            start, hw, lso = uncommitted.results[2 * i], uncommitted.results[2 * i + 1], committed.results[i]
            if start.error_code == pb.NONE and hw.error_code == pb.NONE and lso.error_code == pb.NONE:
                out[key] = (start.offset, hw.offset, lso.offset)
        return out

    async def DescribeCluster(self, request: apb.DescribeClusterRequest, context: grpc.aio.ServicerContext) -> apb.DescribeClusterResponse:
        image = self.b.quorum.image()
        ac = self.b.quorum.active_controller()
        controller_id = -1 if ac is None else ac.node_id
        resp = apb.DescribeClusterResponse(cluster_id=self.b.config.cluster_id, controller_id=controller_id,
                                           metadata_version=image.version,
                                           quorum_voters=[v.raft_address for v in self.b.voters],
                                           quorum_leader=self.b.quorum.leader_raft_address() or "")
        for bid in sorted(image.brokers):
            reg = image.brokers[bid]
            resp.brokers.append(apb.BrokerDescription(broker_id=bid, host=reg.host, port=reg.port, fenced=reg.fenced,
                                                      broker_epoch=reg.broker_epoch, is_controller=bid == controller_id))
        return resp


def _code_message(code: pb.ErrorCode, rf: int = 0) -> str:
    if code == pb.NONE:
        return ""
    hints = {
        pb.INVALID_REPLICATION_FACTOR: f"replication factor {rf} is out of range or above the live (unfenced) brokers",
        pb.INVALID_PARTITIONS: "partition count out of range",
        pb.TOPIC_ALREADY_EXISTS: "a topic with this name exists",
        pb.INVALID_CONFIG: "unknown or out-of-range config key",
        pb.UNKNOWN_TOPIC_OR_PARTITION: "no such topic",
    }
    return hints.get(code, pb.ErrorCode.Name(code))


# --- Replication / Controller (internal) -------------------------------------------------------


class ReplicationService(rgrpc.ReplicationServicer):
    def __init__(self, broker: Broker) -> None:
        self.b = broker

    async def ReplicaFetch(self, request_iterator: AsyncIterator[rpb.ReplicaFetchRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.ReplicaFetchResponse]:
        async for resp in self.b.leader_replication.stream(request_iterator):
            yield resp

    async def OffsetForLeaderEpoch(self, request: rpb.OffsetForLeaderEpochRequest,
                                   context: grpc.aio.ServicerContext) -> rpb.OffsetForLeaderEpochResponse:
        resp = rpb.OffsetForLeaderEpochResponse()
        if len(request.partitions) > limits.MAX_PARTITIONS_PER_REQUEST:
            return rpb.OffsetForLeaderEpochResponse(results=[rpb.EpochEndOffset(
                topic=q.topic, partition=q.partition, leader_epoch=-1, end_offset=-1, error_code=pb.INVALID_REQUEST)
                for q in request.partitions[:1]])
        for q in request.partitions:
            r = rpb.EpochEndOffset(topic=q.topic, partition=q.partition, leader_epoch=-1, end_offset=-1)
            p = self.b.rm.get(q.topic, q.partition)
            try:
                if p is None:
                    raise PartitionError(pb.NOT_LEADER_OR_FOLLOWER, "no replica here")
                p.check_leader(q.current_leader_epoch)  # the same epoch rules as fetches
                r.leader_epoch, r.end_offset = p.store.end_offset_for_epoch(q.leader_epoch)
            except PartitionError as exc:
                r.error_code = exc.code
            resp.results.append(r)
        return resp


class ControllerService(cgrpc.ControllerServicer):
    def __init__(self, broker: Broker) -> None:
        self.b = broker

    async def BrokerHeartbeat(self, request: cpb.BrokerHeartbeatRequest,
                              context: grpc.aio.ServicerContext) -> cpb.BrokerHeartbeatResponse:
        c = self.b.controller
        if c is None:
            return cpb.BrokerHeartbeatResponse(error_code=pb.NOT_LEADER_OR_FOLLOWER, fenced=True,
                                               error_message="this broker is not a metadata voter")
        reply = c.on_heartbeat(request.broker_id, request.broker_epoch, request.metadata_version,
                               log_dir_offline=request.log_dir_offline)
        return cpb.BrokerHeartbeatResponse(error_code=reply.error, fenced=reply.fenced,
                                           should_shutdown=reply.should_shutdown)

    async def ReportBrokerUnreachable(self, request: cpb.ReportBrokerUnreachableRequest,
                                      context: grpc.aio.ServicerContext) -> cpb.ReportBrokerUnreachableResponse:
        c = self.b.controller
        if c is None or not c.is_active():
            return cpb.ReportBrokerUnreachableResponse(error_code=pb.NOT_LEADER_OR_FOLLOWER)
        c.on_broker_unreachable(request.broker_id)
        return cpb.ReportBrokerUnreachableResponse(error_code=pb.NONE)


_ACL_FIELDS = ("principal", "host", "operation", "permission", "resource_type", "resource_name", "pattern_type")


def _acl_binding(a: apb.Acl) -> acl.AclBinding:
    return acl.AclBinding(*(getattr(a, k) for k in _ACL_FIELDS))


def _acl_filter(f: apb.AclFilter) -> acl.AclFilter:
    return acl.AclFilter(*(getattr(f, k).upper() if k in ("operation", "permission", "resource_type", "pattern_type")
                           else getattr(f, k) for k in _ACL_FIELDS))
