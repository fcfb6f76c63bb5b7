"""The Kafka APIs of milestone 1 over the broker's own replica manager, quorum and coordinators.

Each handler reads a decoded kio request (any served version) and returns plain values that
`codec.build` turns into the negotiated version's response; `None` means "no response"
(Produce with acks=0). Semel's rules stay where they are: produce goes through
`validate_batch` and the broker's one write path (`write_path.start_append` / `wait_all`, the
gRPC Produce's: acks precondition, leader append with the partition's producer-state
validation, high-watermark waiters), appending the client's batch as sent
(`Partition.append_encoded_as_leader`); fetch reads the same store with the same HW/LSO
bounds (`semel.storage.isolation`); topics are created and
deleted through the gRPC Admin service's code; coordinators are found by `find_coordinator`.

What is Kafka-specific lives here: one v2 batch per partition, CRC-32C and codec checks,
version-dependent fields, error numbers (`errors.to_kafka`) and serving magic-1 batches
(written over gRPC) converted to magic 2 (`semel.storage.kafka_records`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode as K
from semel import limits
from semel.limits import ADMIN_TIMEOUT_MS_DEFAULT, PRODUCE_TIMEOUT_MS_DEFAULT
from semel.invariant import not_none
from semel.cluster.broker.coordinator_lookup import find_coordinator
from semel.cluster.broker.group_service import GroupsService
from semel.cluster.broker.produce_validation import unallocated_producer_id, validate_batch
from semel.cluster.broker import write_path
from semel.cluster.broker.replica_manager import PartitionError
from semel.cluster.broker.server import AdminService, image_with_producer_ids
from semel.cluster.kafka import admin_handlers, authorization, codec, consumer_group_handlers, group_handlers
from semel.cluster.kafka.errors import to_kafka
from semel.cluster.kafka.txn_handlers import TXN_HANDLERS, KafkaTxnApis, ProduceCheck
from semel.cluster.kafka.txn_handlers import Handler as TxnHandler
from semel.cluster.metadata import state as md
from semel.storage import isolation as isolation_rules
from semel.storage.batch import (
    ATTR_COMPRESSION_MASK,
    HEADER_BYTES,
    KAFKA_MAGIC,
    MAGIC_POSITION,
    BatchHeader,
    CorruptBatchError,
    decode_header,
    peek_header,
)
from semel.storage.kafka_records import kafka_batch_from_magic1
from semel.v1 import admin_pb2 as apb
from semel.v1 import common_pb2 as pb
from semel.v1 import group_pb2 as gpb
from semel.v1 import txn_pb2

if TYPE_CHECKING:
    from semel.cluster.broker.process import Broker

log = logging.getLogger(__name__)

ACKS_NONE, ACKS_LEADER, ACKS_ALL = 0, 1, -1
READ_COMMITTED = 1
EARLIEST, LATEST, MAX_TIMESTAMP = -2, -1, -3
CODEC_ZSTD = 4
ZSTD_MIN_PRODUCE_VERSION = 7  # KIP-110
NULL_UUID = "00000000000000000000000000000000"


_PRODUCER_ID = struct.Struct(">q")
_PRODUCER_ID_POSITION = 43  # in a v2 batch header (batch.KAFKA_HEADER)


def _claimed_producer_id(records: bytes | None) -> int:
    """The producer id in a v2 batch's header, -1 when there is none to read (the batch checks
    refuse such a batch later). Header bytes only."""
    if records is None or len(records) < HEADER_BYTES or records[MAGIC_POSITION] != KAFKA_MAGIC:
        return -1
    return int(_PRODUCER_ID.unpack_from(records, _PRODUCER_ID_POSITION)[0])


class ProduceRefused(Exception):
    def __init__(self, code: K, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def kafka_endpoint(reg: md.BrokerRegistration) -> tuple[str, int]:
    """The broker's advertised Kafka address ('', 0 when it has no Kafka listener)."""
    return reg.kafka_host, reg.kafka_port


class KafkaApis:
    """The request handlers of one broker's Kafka listener."""

    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self.admin = AdminService(broker)
        self._groups_service: GroupsService | None = None
        self._pid_gate: asyncio.Future[None] | None = None  # see produce()
        self._classic: group_handlers.ClassicGroupHost | None = None
        security = getattr(broker, "security", None)  # None: before start() (in-process tests)
        self.authz = (authorization.KafkaAuthorizer(security, lambda: broker.auto_create.enabled)
                      if security is not None and security.authorizer_on else None)
        self.txn = KafkaTxnApis(broker, self._groups, lambda group_id, member_id, generation, instance_id:
                                group_handlers.commit_verdict(self, group_id, member_id, generation, instance_id))

    def classic_groups(self) -> group_handlers.ClassicGroupHost:
        if self._classic is None:
            self._classic = group_handlers.ClassicGroupHost(self.b)
            self._groups().c.classic_member_count = self._classic.member_count
        return self._classic

    def close(self) -> None:
        group_handlers.close(self._classic)

    async def handle(self, req: codec.Request) -> Any | None:
        handler = _HANDLERS[req.api_key]
        # --authorizer on: decided with no await before the handler starts (Produce appends in
        # arrival order, see produce())
        decision = self.authz.decide(req, self.b.quorum.image()) if self.authz is not None else None
        if isinstance(decision, authorization.Answer):
            values = decision.values
        elif isinstance(decision, authorization.Serve):
            values = decision.finish(await handler(self, dataclasses.replace(req, body=decision.body)))
        else:
            values = await handler(self, req)
        if values is None:
            return None
        return codec.build(codec.response_class(req.api_key, req.api_version), values)

    # --- ApiVersions -------------------------------------------------------------------
    async def api_versions(self, req: codec.Request) -> dict[str, Any]:
        return {"error_code": K.none, "throttle_time": 0,
                "api_keys": [{"api_key": k, "min_version": lo, "max_version": hi}
                             for k, (lo, hi) in sorted(codec.ADVERTISED.items())]}

    # --- Metadata ----------------------------------------------------------------------
    async def metadata(self, req: codec.Request) -> dict[str, Any]:
        image = self.b.quorum.image()
        brokers = []
        listed: set[int] = set()
        for bid in sorted(image.brokers):
            reg = image.brokers[bid]
            host, port = kafka_endpoint(reg)
            if not reg.fenced and port > 0:
                brokers.append({"node_id": bid, "host": host, "port": port, "rack": None})
                listed.add(bid)
        asked = req.body.topics
        names = sorted(image.topics) if asked is None else [_asked_name(image, t) for t in asked]
        names = names[: limits.MAX_PARTITIONS_PER_REQUEST]
        creating = set()
        if asked is not None and getattr(req.body, "allow_auto_topic_creation", True):  # v0-v3: always allowed
            creating = self.b.auto_create.request((n for n in names if n and image.topic(n) is None), image)
        topics = [self._topic_metadata(image, name, listed, name in creating) for name in names]
        # Every broker serves CreateTopics/DeleteTopics (through the quorum): name ourselves, a
        # live broker, as the controller clients send admin requests to.
        return {"throttle_time": 0, "brokers": brokers, "cluster_id": self.b.config.cluster_id,
                "controller_id": self.b.config.broker_id, "topics": topics}

    @staticmethod
    def _topic_metadata(image: md.MetadataImage, name: str, listed: set[int], creating: bool = False) -> dict[str, Any]:
        t = image.topic(name)
        if not name:  # asked by an id no topic has
            return {"error_code": K.unknown_topic_id, "name": None, "topic_id": NULL_UUID,
                    "is_internal": False, "partitions": []}
        if t is None:  # a topic being auto-created: retriable, as Kafka answers it
            code = K.leader_not_available if creating else K.unknown_topic_or_partition
            return {"error_code": code, "name": name, "topic_id": NULL_UUID,
                    "is_internal": False, "partitions": []}
        partitions = []
        for ps in t.partitions:
            leader = ps.leader if ps.leader in listed else md.NO_LEADER
            partitions.append({
                "error_code": K.none if leader != md.NO_LEADER else K.leader_not_available,
                "partition_index": ps.partition, "leader_id": leader, "leader_epoch": ps.leader_epoch,
                "replica_nodes": list(ps.replicas), "isr_nodes": list(ps.isr),
                "offline_replicas": [r for r in ps.replicas if r not in listed]})
        return {"error_code": K.none, "name": name, "topic_id": _topic_uuid(t.topic_id), "is_internal": t.internal,
                "partitions": partitions}

    # --- Produce -----------------------------------------------------------------------
    async def produce(self, req: codec.Request) -> dict[str, Any] | None:
        # Invariant: every append happens before this coroutine's first await, except a transactional
        # request's KIP-890 verification, which keeps a producer's requests in order itself. The
        # listener starts one task per request in arrival order, so a connection's pipelined produce
        # requests (an idempotent client keeps up to 5 in flight per partition) append in the order
        # they came.
        #
        # The one other await: a producer id this broker's image does not know yet (the client got
        # it from a block the quorum committed a moment ago) waits for the image, as gRPC Produce
        # does (`server.image_with_producer_ids`). While such a request waits, every later produce
        # request queues behind it (`_pid_gate`), so none overtakes it once the image catches up.
        body = req.body
        acks = body.acks
        timeout_ms = min(codec.timedelta_ms(body.timeout) or PRODUCE_TIMEOUT_MS_DEFAULT, limits.MAX_PRODUCE_TIMEOUT_MS)
        image = self.b.quorum.image()
        gate = self._pid_gate
        highest = max((_claimed_producer_id(pd.records) for t in body.topic_data for pd in t.partition_data),
                      default=-1)
        mine: asyncio.Future[None] | None = None
        if gate is not None or highest >= image.next_producer_id:
            mine = self._pid_gate = asyncio.get_running_loop().create_future()
        try:
            if gate is not None:
                await asyncio.shield(gate)  # a cancelled waiter must not cancel the gate of the others
            if highest >= image.next_producer_id:
                image = await image_with_producer_ids(self.b, (highest,))
            elif mine is not None:
                image = self.b.quorum.image()
            return await self._produce_in_order(req, image, timeout_ms, mine)
        finally:
            if mine is not None:
                if not mine.done():
                    mine.set_result(None)
                if self._pid_gate is mine:
                    self._pid_gate = None

    async def _produce_in_order(self, req: codec.Request, image: md.MetadataImage, timeout_ms: int,
                                appended: asyncio.Future[None] | None) -> dict[str, Any] | None:
        body = req.body
        acks = body.acks
        check = await self.txn.verify_produce(
            body.transactional_id, [(t.name, pd.index, pd.records) for t in body.topic_data for pd in t.partition_data],
            image)
        now = self.b.clock.wall_clock_ms()
        results: list[tuple[str, dict[str, Any]]] = []
        waits: list[tuple[dict[str, Any], write_path.PendingAck]] = []
        seen: set[tuple[str, int]] = set()
        count = 0
        for topic in body.topic_data:
            for pd in topic.partition_data:
                count += 1
                r = {"index": pd.index, "error_code": K.none, "base_offset": -1, "log_append_time": None,
                     "log_start_offset": -1, "record_errors": [], "error_message": None}
                results.append((topic.name, r))
                try:
                    if count > limits.MAX_PARTITIONS_PER_REQUEST:
                        raise ProduceRefused(K.invalid_request, "too many partitions in one request")
                    if (topic.name, pd.index) in seen:
                        raise ProduceRefused(K.invalid_request, "partition listed twice in one request")
                    seen.add((topic.name, pd.index))
                    if acks not in (ACKS_NONE, ACKS_LEADER, ACKS_ALL):
                        raise ProduceRefused(K.invalid_required_acks, f"acks must be 0, 1 or -1, got {acks}")
                    ack = self._produce_one(topic.name, pd.index, pd.records, acks, req.api_version, check,
                                            image, now, r)
                except ProduceRefused as exc:
                    r["error_code"], r["error_message"] = exc.code, exc.message
                    continue
                except PartitionError as exc:
                    r["error_code"], r["error_message"] = to_kafka(exc.code), exc.message
                    continue
                if ack is not None:
                    waits.append((r, ack))
        if appended is not None:
            appended.set_result(None)  # the queued requests may append now; acks are awaited apart
        if waits:
            outcomes = await write_path.wait_all([ack for _, ack in waits], timeout_ms)
            for (r, _), outcome in zip(waits, outcomes):
                if outcome.error_code != pb.NONE:
                    r["error_code"], r["error_message"] = to_kafka(outcome.error_code), outcome.message
        if acks == ACKS_NONE:
            return None
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for name, r in results:
            by_topic.setdefault(name, []).append(r)
        return {"throttle_time": 0,
                "responses": [{"name": name, "partition_responses": rs} for name, rs in by_topic.items()]}

    def _produce_one(self, topic: str, partition: int, records: bytes | None, acks: int, version: int,
                     check: ProduceCheck | None, image: md.MetadataImage, now: int,
                     r: dict[str, Any]) -> write_path.PendingAck | None:
        """Check the batch, then append it through the broker's one write path (the gRPC
        Produce's: acks precondition, leader append with producer-state validation, HW waiter).
        `check`: the transactional request's KIP-890 check, run with no await before the append."""
        header = checked_produce_batch(records, version, self.b.config.max_batch_bytes, now)
        if 0 <= header.producer_id and header.producer_id >= image.next_producer_id:  # as gRPC Produce
            rejection = unallocated_producer_id(header.producer_id, image.next_producer_id)
            raise ProduceRefused(to_kafka(rejection.error_code), rejection.message)
        t = image.topic(topic)
        if t is not None and t.internal:
            raise ProduceRefused(K.invalid_topic_exception, f"{topic} is an internal topic")
        p = self.b.rm.leader_partition(topic, partition, image)
        assert records is not None  # checked_produce_batch refused None
        if check is not None:
            check(topic, partition)
        policy = write_path.PRODUCE_ACKS_ALL if acks == ACKS_ALL else write_path.PRODUCE_ACKS_LEADER
        out = write_path.start_append(p, lambda: p.append_encoded_as_leader(records, now), policy)
        ar = out.result if isinstance(out, write_path.PendingAck) else out
        if ar.error_code != pb.NONE:
            raise PartitionError(ar.error_code, ar.message)
        r["base_offset"], r["log_start_offset"] = ar.base_offset, p.log_start_offset
        return out if isinstance(out, write_path.PendingAck) else None

    # --- Fetch -------------------------------------------------------------------------
    async def fetch(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        if body.replica_id >= 0:
            raise codec.BadRequest(f"follower fetch (replica {body.replica_id}) is not served on the Kafka listener")
        top_error = K.none
        if getattr(body, "session_id", 0) != 0 or getattr(body, "session_epoch", -1) > 0:
            top_error = K.fetch_session_id_not_found  # sessions are never created: session_id is always 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(codec.timedelta_ms(body.max_wait), 0), limits.MAX_FETCH_WAIT_MS) / 1000
        max_bytes = min(body.max_bytes if body.max_bytes > 0 else limits.MAX_FETCH_BYTES, limits.MAX_FETCH_BYTES)
        wanted = [(t.topic, p) for t in body.topics for p in t.partitions][: limits.MAX_PARTITIONS_PER_REQUEST]
        while True:
            responses, total, errors = self._fetch_once(wanted, body.isolation_level, max_bytes)
            if top_error != K.none or total >= body.min_bytes or errors or loop.time() >= deadline \
                    or self.b.rm.parked_fetches >= limits.MAX_FETCH_WAITERS_PER_BROKER:
                break
            await self.b.rm.park_fetch([(t, fp.partition) for t, fp in wanted], deadline - loop.time())
        if top_error != K.none:
            responses = []
        return {"throttle_time": 0, "error_code": top_error, "session_id": 0, "responses": responses}

    def _fetch_once(self, wanted: list[tuple[str, Any]], isolation: int,
                    max_bytes: int) -> tuple[list[dict[str, Any]], int, bool]:
        image = self.b.quorum.image()
        by_topic: dict[str, list[dict[str, Any]]] = {}
        total = 0
        errors = False
        for topic, fp in wanted:
            r = {"partition_index": fp.partition, "error_code": K.none, "high_watermark": -1,
                 "last_stable_offset": -1, "log_start_offset": -1, "aborted_transactions": None,
                 "preferred_read_replica": -1, "records": b""}
            try:
                total += self._fetch_partition(topic, fp, isolation, max_bytes - total, total == 0, image, r)
            except PartitionError as exc:
                r["error_code"] = to_kafka(exc.code)
                errors = True
            except (OSError, CorruptBatchError) as exc:
                log.warning("kafka fetch %s-%d failed: %s", topic, fp.partition, exc)
                r["error_code"] = K.kafka_storage_error
                errors = True
            by_topic.setdefault(topic, []).append(r)
        return [{"topic": t, "partitions": ps} for t, ps in by_topic.items()], total, errors

    def _fetch_partition(self, topic: str, fp: Any, isolation: int, budget: int, first: bool,
                         image: md.MetadataImage, r: dict[str, Any]) -> int:
        p = self.b.rm.leader_partition(topic, fp.partition, image, getattr(fp, "current_leader_epoch", -1))
        hw, lso = p.high_watermark, p.last_stable_offset()
        r["high_watermark"], r["last_stable_offset"], r["log_start_offset"] = hw, lso, p.log_start_offset
        if isolation == READ_COMMITTED:
            r["aborted_transactions"] = []
        offset = fp.fetch_offset
        if offset < p.log_start_offset or offset > p.log_end_offset:
            raise PartitionError(pb.OFFSET_OUT_OF_RANGE, f"fetch offset {offset} outside the log")
        bound = isolation_rules.read_bound(isolation == READ_COMMITTED, hw, lso)
        part_max = min(fp.partition_max_bytes if fp.partition_max_bytes > 0 else limits.MAX_FETCH_BYTES, budget)
        if offset >= bound or (part_max <= 0 and not first):
            return 0
        read = p.store.read(offset, max(part_max, 1), bound, limits.MAX_FETCH_BATCHES_PER_PARTITION)
        if not read.headers:
            return 0
        data, first_offset, end_offset = as_kafka_batches(read.data, read.headers)
        if isolation == READ_COMMITTED:
            r["aborted_transactions"] = [
                {"producer_id": a.producer_id, "first_offset": a.first_offset}
                for a in p.store.aborted_in_range(min(offset, first_offset), end_offset)]
        r["records"] = data
        return len(data)

    # --- ListOffsets -------------------------------------------------------------------
    async def list_offsets(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        image = self.b.quorum.image()
        isolation = getattr(body, "isolation_level", 0)
        topics = []
        count = 0
        for t in body.topics:
            parts = []
            for lp in t.partitions:
                count += 1
                r = {"partition_index": lp.partition_index, "error_code": K.none, "timestamp": -1, "offset": -1,
                     "leader_epoch": -1}
                parts.append(r)
                if count > limits.MAX_PARTITIONS_PER_REQUEST:
                    r["error_code"] = K.invalid_request
                    continue
                try:
                    self._list_offset(t.name, lp, isolation, image, r)
                except PartitionError as exc:
                    r["error_code"] = to_kafka(exc.code)
            topics.append({"name": t.name, "partitions": parts})
        return {"throttle_time": 0, "topics": topics}

    def _list_offset(self, topic: str, lp: Any, isolation: int, image: md.MetadataImage, r: dict[str, Any]) -> None:
        p = self.b.rm.leader_partition(topic, lp.partition_index, image, getattr(lp, "current_leader_epoch", -1))
        r["leader_epoch"] = p.leader_epoch
        bound = p.last_stable_offset() if isolation == READ_COMMITTED else p.high_watermark
        if lp.timestamp == EARLIEST:
            r["offset"] = p.log_start_offset
        elif lp.timestamp == LATEST:
            r["offset"] = bound
        elif lp.timestamp >= 0:
            found = p.store.offset_for_timestamp(lp.timestamp)
            if found is not None and found < bound:
                r["offset"], r["timestamp"] = found, lp.timestamp
        else:  # -3 max timestamp (v7) and later specials are not served yet
            raise PartitionError(pb.INVALID_REQUEST, f"timestamp {lp.timestamp} is not served")

    # --- FindCoordinator ---------------------------------------------------------------
    async def find_coordinator(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        key_type = getattr(body, "key_type", 0)
        image = self.b.quorum.image()
        current = self.b.metadata_current()  # a broker without a heartbeat lease may name a stale one
        if req.api_version >= 4:
            return {"throttle_time": 0, "coordinators": [
                {"key": key, **self._coordinator(image, key, key_type, current)}
                for key in body.coordinator_keys[:1000]]}
        return {"throttle_time": 0, **self._coordinator(image, body.key, key_type, current)}

    @staticmethod
    def _coordinator(image: md.MetadataImage, key: str, key_type: int, metadata_current: bool) -> dict[str, Any]:
        semel_type = txn_pb2.GROUP if key_type == 0 else txn_pb2.TRANSACTION
        if key_type not in (0, 1):
            return {"error_code": K.invalid_request, "error_message": f"key type {key_type} is not served",
                    "node_id": -1, "host": "", "port": -1}
        found = find_coordinator(image, key, semel_type, metadata_current=metadata_current)
        reg = image.broker(found.broker_id) if found.error_code == pb.NONE else None
        host, port = kafka_endpoint(reg) if reg is not None else ("", 0)
        if found.error_code != pb.NONE or port <= 0:
            message = found.error_message or f"broker {found.broker_id} has no Kafka listener"
            return {"error_code": to_kafka(found.error_code or pb.COORDINATOR_NOT_AVAILABLE),
                    "error_message": message, "node_id": -1, "host": "", "port": -1}
        return {"error_code": K.none, "error_message": None, "node_id": found.broker_id, "host": host, "port": port}

    # --- InitProducerId ----------------------------------------------------------------
    async def init_producer_id(self, req: codec.Request) -> dict[str, Any]:
        failed = {"throttle_time": 0, "producer_id": -1, "producer_epoch": -1}
        if req.body.transactional_id is not None:
            return await self.txn.init_producer_id(req)  # the coordinator's, as a version-1 client
        txn = self.b.txn
        pid = await txn.shell.pids.next_id() if txn is not None else None
        if pid is None:
            return {**failed, "error_code": K.coordinator_not_available}
        # an idempotent producer asking for an epoch bump (KIP-360) gets a fresh id, as in Kafka
        return {"throttle_time": 0, "error_code": K.none, "producer_id": pid, "producer_epoch": 0}

    # --- OffsetCommit / OffsetFetch ---------------------------------------------------
    def _groups(self) -> GroupsService:
        if self._groups_service is None:
            self._groups_service = GroupsService(
                not_none(self.b.groups, "a broker with a Kafka listener runs a group coordinator"))
        return self._groups_service

    async def offset_commit(self, req: codec.Request) -> dict[str, Any]:
        """Through the group coordinator's OffsetCommit. Without the group APIs only consumers
        that assign() their partitions commit: generation -1 and no member id, Semel's "simple"
        commit (accepted while the group has no members, like Kafka's)."""
        body = req.body
        member_id, generation = body.member_id, body.generation_id_or_member_epoch
        verdict = group_handlers.commit_verdict(self, body.group_id, member_id, generation,
                                                getattr(body, "group_instance_id", None))
        if verdict is not None and verdict != K.none:
            return {"throttle_time": 0, "topics": [
                {"name": t.name, "partitions": [{"partition_index": p.partition_index, "error_code": verdict}
                                                for p in t.partitions]}
                for t in body.topics[: limits.MAX_PARTITIONS_PER_REQUEST]]}
        if verdict == K.none:  # a classic member of the current generation: Semel's simple commit
            member_id, generation = "", -1
        request = gpb.OffsetCommitRequest(group_id=body.group_id, member_id=member_id, member_epoch=generation)
        for t in body.topics[: limits.MAX_PARTITIONS_PER_REQUEST]:
            request.topics.append(gpb.OffsetCommitTopic(topic=t.name, partitions=[
                gpb.OffsetCommitPartition(partition=p.partition_index, committed_offset=p.committed_offset,
                                          committed_leader_epoch=getattr(p, "committed_leader_epoch", -1),
                                          metadata=p.committed_metadata or "")
                for p in t.partitions]))
        resp = await self._groups().OffsetCommit(request, None)  # type: ignore[arg-type]
        by_key = {(t.topic, p.partition): p.error_code for t in resp.topics for p in t.partitions}
        return {"throttle_time": 0, "topics": [
            {"name": t.name, "partitions": [
                {"partition_index": p.partition_index,
                 "error_code": to_kafka(resp.error_code or by_key.get((t.name, p.partition_index), pb.NONE))}
                for p in t.partitions]}
            for t in body.topics[: limits.MAX_PARTITIONS_PER_REQUEST]]}

    async def offset_fetch(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        request = gpb.OffsetFetchRequest(group_id=body.group_id, member_epoch=-1,
                                         require_stable=getattr(body, "require_stable", False))
        if body.topics is not None:
            for t in body.topics[: limits.MAX_PARTITIONS_PER_REQUEST]:
                request.topics.append(gpb.TopicPartitions(topic=t.name, partitions=sorted(t.partition_indexes)))
        resp = await self._groups().OffsetFetch(request, None)  # type: ignore[arg-type]
        found = {(o.topic, o.partition): o for o in resp.offsets}
        asked = ([(t.name, list(t.partition_indexes)) for t in body.topics] if body.topics is not None
                 else _by_topic(found))
        top = to_kafka(resp.error_code)
        topics = []
        for name, partitions in asked:
            parts = []
            for index in partitions:
                o = found.get((name, index))
                parts.append({"partition_index": index, "committed_offset": o.committed_offset if o else -1,
                              "committed_leader_epoch": o.committed_leader_epoch if o else -1,
                              "metadata": o.metadata if o else "",
                              # v1 has no request-level error: every partition carries it
                              "error_code": top if req.api_version < 2 and top != K.none
                              else to_kafka(o.error_code) if o else K.none})
            topics.append({"name": name, "partitions": parts})
        return {"throttle_time": 0, "topics": topics, "error_code": top}

    # --- CreateTopics / DeleteTopics ---------------------------------------------------
    async def create_topics(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        timeout_ms = codec.timedelta_ms(body.timeout) or ADMIN_TIMEOUT_MS_DEFAULT
        results = []
        for ct in body.topics[:1000]:
            results.append(await self._create_topic(ct, body.validate_only, timeout_ms))
        return {"throttle_time": 0, "topics": results}

    async def _create_topic(self, ct: Any, validate_only: bool, timeout_ms: int) -> dict[str, Any]:
        out: dict[str, Any] = {"name": ct.name, "topic_id": NULL_UUID, "error_code": K.none, "error_message": None,
                               "topic_config_error_code": 0, "num_partitions": -1, "replication_factor": -1,
                               "configs": []}
        configs: dict[str, str] = {}
        for c in ct.configs:
            name = md.KAFKA_CONFIG_NAMES.get(c.name)
            if name is None or c.value is None:
                out["error_code"], out["error_message"] = K.invalid_config, f"config {c.name} is not supported"
                return out
            configs[name] = c.value
        if ct.assignments:
            out["error_code"], out["error_message"] = K.invalid_request, "manual replica assignments are not served"
            return out
        partitions = 1 if ct.num_partitions == -1 else ct.num_partitions  # KIP-464 broker default: 1 (Kafka's)
        rf = 0 if ct.replication_factor == -1 else ct.replication_factor  # 0: Semel's cluster default
        resp = await self.admin.CreateTopics(apb.CreateTopicsRequest(
            topics=[apb.NewTopic(name=ct.name, partitions=partitions, replication_factor=rf, configs=configs)],
            validate_only=validate_only, timeout_ms=timeout_ms), None)  # type: ignore[arg-type]
        (result,) = resp.results
        out["error_code"], out["error_message"] = to_kafka(result.error_code), result.error_message or None
        t = self.b.quorum.image().topic(ct.name)
        if result.error_code == pb.NONE and t is not None:
            out.update(topic_id=_topic_uuid(t.topic_id), num_partitions=len(t.partitions),
                       replication_factor=t.replication_factor)
        return out

    async def delete_topics(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        timeout_ms = codec.timedelta_ms(body.timeout) or ADMIN_TIMEOUT_MS_DEFAULT
        if hasattr(body, "topic_names"):
            names: list[str | None] = list(body.topic_names)
        else:  # v6: by name or by id
            image = self.b.quorum.image()
            by_id = {_topic_uuid(t.topic_id): n for n, t in image.topics.items()}
            names = [t.name if t.name is not None else by_id.get(str(t.topic_id).replace("-", "")) for t in body.topics]
        responses = []
        for name in names[:1000]:
            if name is None:
                responses.append({"name": None, "topic_id": NULL_UUID, "error_code": K.unknown_topic_id,
                                  "error_message": "no topic has that id"})
                continue
            resp = await self.admin.DeleteTopics(apb.DeleteTopicsRequest(names=[name], timeout_ms=timeout_ms),
                                                 None)  # type: ignore[arg-type]
            (result,) = resp.results
            responses.append({"name": name, "topic_id": NULL_UUID, "error_code": to_kafka(result.error_code),
                              "error_message": result.error_message or None})
        return {"throttle_time": 0, "responses": responses}


def checked_produce_batch(records: bytes | None, version: int, max_batch_bytes: int, now: int) -> BatchHeader:
    """The header of the one v2 batch a Produce partition must carry (pure): CRC-checked,
    exactly one whole batch, a known codec (zstd from v7), and Semel's header rules."""
    if not records:
        raise ProduceRefused(K.invalid_record, "no record batch")
    if len(records) > max_batch_bytes:
        raise ProduceRefused(K.message_too_large, f"batch of {len(records)} bytes, limit {max_batch_bytes}")
    try:
        head = peek_header(records)
    except CorruptBatchError as exc:
        raise ProduceRefused(K.corrupt_message, str(exc)) from exc
    if head.magic != KAFKA_MAGIC:
        raise ProduceRefused(K.unsupported_for_message_format, f"Produce v3+ carries magic 2, got {records[16]}")
    try:
        header = decode_header(records)  # CRC-32C of [21, end)
    except CorruptBatchError as exc:
        raise ProduceRefused(K.corrupt_message, str(exc)) from exc
    if header.size_bytes != len(records):
        raise ProduceRefused(K.invalid_record, "exactly one record batch per partition")
    codec_id = header.attributes & ATTR_COMPRESSION_MASK
    if codec_id > CODEC_ZSTD or (codec_id == CODEC_ZSTD and version < ZSTD_MIN_PRODUCE_VERSION):
        raise ProduceRefused(K.unsupported_compression_type, f"compression codec {codec_id} in Produce v{version}")
    rejection = validate_batch(header, max_batch_bytes=max_batch_bytes, now_ms=now,
                               max_future_timestamp_ms=limits.MAX_FUTURE_TIMESTAMP_MS)
    if rejection is not None:
        raise ProduceRefused(to_kafka(rejection.error_code), rejection.message)
    return header


def as_kafka_batches(data: bytes, read_headers: Sequence[BatchHeader] | None = None) -> tuple[bytes, int, int]:
    """Stored batches as a Kafka reader takes them: unchanged when all are magic 2 (no per-record
    work), a magic-1 batch converted (the compatibility path, docs/storage.md). Also returns the
    first batch's base offset and the offset after the last batch. `read_headers`: the headers
    the log decoded while reading `data` (else they are decoded here)."""
    if read_headers is None:
        headers = list(_walk(data))
    else:
        headers = list(zip(read_headers, itertools.accumulate((h.size_bytes for h in read_headers), initial=0)))
    first, end = headers[0][0].base_offset, headers[-1][0].next_offset
    if all(h.magic == KAFKA_MAGIC for h, _ in headers):
        return data, first, end
    view = memoryview(data)
    parts = [view[pos: pos + h.size_bytes] if h.magic == KAFKA_MAGIC
             else kafka_batch_from_magic1(view[pos: pos + h.size_bytes], h) for h, pos in headers]
    return b"".join(parts), first, end


def _walk(data: bytes) -> Iterable[tuple[BatchHeader, int]]:
    pos = 0
    while pos < len(data):
        h = decode_header(data, pos, verify_crc=False)  # the log checked every CRC on read
        yield h, pos
        pos += h.size_bytes


def _by_topic(found: dict[tuple[str, int], Any]) -> list[tuple[str, list[int]]]:
    topics: dict[str, list[int]] = {}
    for topic, partition in sorted(found):
        topics.setdefault(topic, []).append(partition)
    return list(topics.items())


def _asked_name(image: md.MetadataImage, asked: Any) -> str:
    """The topic a Metadata request names, by name or (v10+, KIP-516; KIP-848 consumers resolve
    their assignment's topic ids this way) by id; "" for an id no topic has."""
    if asked.name is not None:
        return str(asked.name)
    wanted = str(getattr(asked, "topic_id", "")).replace("-", "")
    return next((name for name, t in image.topics.items() if _topic_uuid(t.topic_id) == wanted), "")


def _topic_uuid(topic_id: str) -> str:
    try:
        return uuid.UUID(hex=topic_id).hex
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"semel-topic:{topic_id}").hex


def _via_txn(handler: TxnHandler) -> Callable[[KafkaApis, codec.Request], Awaitable[dict[str, Any]]]:
    async def run(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
        return await handler(apis.txn, req)
    return run


_HANDLERS = {
    codec.API_VERSIONS: KafkaApis.api_versions,
    codec.METADATA: KafkaApis.metadata,
    codec.PRODUCE: KafkaApis.produce,
    codec.FETCH: KafkaApis.fetch,
    codec.LIST_OFFSETS: KafkaApis.list_offsets,
    codec.FIND_COORDINATOR: KafkaApis.find_coordinator,
    codec.INIT_PRODUCER_ID: KafkaApis.init_producer_id,
    codec.CREATE_TOPICS: KafkaApis.create_topics,
    codec.DELETE_TOPICS: KafkaApis.delete_topics,
    codec.OFFSET_COMMIT: KafkaApis.offset_commit,
    codec.OFFSET_FETCH: KafkaApis.offset_fetch,
    **group_handlers.HANDLERS,
    **admin_handlers.HANDLERS,
    **consumer_group_handlers.HANDLERS,
    **{key: _via_txn(handler) for key, handler in TXN_HANDLERS.items()},
}
assert set(_HANDLERS) | set(codec.CONNECTION_APIS) == set(codec.SERVED), "every served API has a handler"
