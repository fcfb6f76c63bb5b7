"""The Kafka transaction APIs over the broker's transaction coordinator and group coordinator.

Each handler translates a decoded kio request (any served version) into the gRPC servicer's
request, calls the servicer in-process (the same code, rules and confirmations a gRPC client
gets) and maps the answer back: InitProducerId with a transactional id, AddPartitionsToTxn
(v0-3, the client form), AddOffsetsToTxn and EndTxn go to `TransactionsService`;
TxnOffsetCommit to the group coordinator's `GroupsService`; ListTransactions,
DescribeTransactions and DescribeProducers to the same admin RPCs as `semel txn ...`.

Transaction version: every Kafka client served here is a classic (version 1) client. No
`transaction.version` feature is advertised and EndTxn v5 is not served, so even the Java
client runs version 1: its InitProducerId asks the coordinator for `TxnVersion.V1`, under
which EndTxn keeps the producer epoch (docs/kafka.md, "Transaction versions").

Transactional Produce is checked as over gRPC (KIP-890 part 1): `verify_produce` asks the
coordinator, before a producer's first write of a transaction to a partition, whether that
partition is in its transaction; the returned check runs right before the append. Its
retriable coordinator errors become NOT_ENOUGH_REPLICAS, as Kafka does: a produce answer with
NOT_COORDINATOR or CONCURRENT_TRANSACTIONS is not retried by clients.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode as K
from semel import limits
from semel.cluster.broker.group_service import GroupsService
from semel.cluster.broker.replica_manager import PartitionError
from semel.cluster.broker.txn_service import TxnRuntime
from semel.cluster.kafka import codec
from semel.cluster.kafka.errors import to_kafka, to_kafka_txn
from semel.cluster.metadata import state as md
from semel.coordinator.txn_state import TxnState, TxnVersion
from semel.coordinator.txn_wire import state_to_proto
from semel.invariant import not_none
from semel.storage.batch import ATTR_TRANSACTIONAL, CorruptBatchError, peek_header
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb
from semel.v1 import group_pb2 as gpb
from semel.v1 import txn_pb2 as tpb

if TYPE_CHECKING:
    from semel.cluster.broker.process import Broker

# Kafka's names of the transaction states (ListTransactions filters, Describe/List answers)
STATE_NAMES: dict[TxnState, str] = {
    TxnState.EMPTY: "Empty",
    TxnState.ONGOING: "Ongoing",
    TxnState.PREPARE_COMMIT: "PrepareCommit",
    TxnState.PREPARE_ABORT: "PrepareAbort",
    TxnState.COMPLETE_COMMIT: "CompleteCommit",
    TxnState.COMPLETE_ABORT: "CompleteAbort",
    TxnState.DEAD: "Dead",
    TxnState.PREPARE_EPOCH_FENCE: "PrepareEpochFence",
}
STATES_BY_NAME = {name: state for state, name in STATE_NAMES.items()}
# Verification answers a client retries on Produce only as NOT_ENOUGH_REPLICAS (Kafka does the same)
RETRIABLE_VERIFY_ERRORS = frozenset({pb.NOT_COORDINATOR, pb.COORDINATOR_NOT_AVAILABLE, pb.COORDINATOR_LOAD_IN_PROGRESS,
                                     pb.CONCURRENT_TRANSACTIONS, pb.REQUEST_TIMED_OUT})
NULL_TIMESTAMP = datetime.datetime.fromtimestamp(-0.001, tz=datetime.timezone.utc)  # encodes as -1

ProduceCheck = Callable[[str, int], None]
# (group, member id, generation, group instance id) -> None: Semel's coordinator decides; NONE: a
# classic member of the current generation (written as a simple commit); else the error
# (group_handlers.commit_verdict)
CommitVerdict = Callable[[str, str, int, "str | None"], "K | None"]
_ATTRIBUTES_LOW_BYTE = 22  # base offset 8, length 4, leader epoch 4, magic 1, CRC 4, attributes int16


class KafkaTxnApis:
    """The transaction handlers of one broker's Kafka listener."""

    def __init__(self, broker: Broker, groups: Callable[[], GroupsService], commit_verdict: CommitVerdict) -> None:
        self.b = broker
        self._groups = groups
        self._commit_verdict = commit_verdict

    def _txn(self) -> TxnRuntime:
        return not_none(self.b.txn, "a broker with a Kafka listener runs a transaction coordinator")

    # --- InitProducerId (transactional) --------------------------------------------------
    async def init_producer_id(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        resp = await self._txn().transactions.init_transactional(tpb.InitProducerIdRequest(
            transactional_id=body.transactional_id,
            transaction_timeout_ms=codec.timedelta_ms(body.transaction_timeout),
            producer_id=getattr(body, "producer_id", -1), producer_epoch=getattr(body, "producer_epoch", -1)),
            TxnVersion.V1)
        return {"throttle_time": 0, "error_code": to_kafka_txn(resp.error_code, req.api_key, req.api_version),
                "producer_id": resp.producer_id, "producer_epoch": resp.producer_epoch}

    # --- AddPartitionsToTxn (v0-3) -------------------------------------------------------
    async def add_partitions_to_txn(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        topics = body.v3_and_below_topics
        asked = [(t.name, int(p)) for t in topics for p in t.partitions]
        if len(asked) > limits.MAX_PARTITIONS_PER_REQUEST:
            return _add_partitions_answer(topics, {}, K.invalid_request)
        resp = await self._txn().transactions.AddPartitionsToTxn(tpb.AddPartitionsToTxnRequest(
            transactional_id=body.v3_and_below_transactional_id, producer_id=body.v3_and_below_producer_id,
            producer_epoch=body.v3_and_below_producer_epoch,
            partitions=[tpb.TopicPartition(topic=t, partition=p) for t, p in asked]), None)
        codes = {(r.topic, r.partition): to_kafka_txn(r.error_code, req.api_key, req.api_version)
                 for r in resp.results}
        default = to_kafka_txn(resp.error_code, req.api_key, req.api_version)
        if resp.error_code == pb.UNKNOWN_TOPIC_OR_PARTITION:
            # Kafka's form: the unknown ones carry their error, the others OPERATION_NOT_ATTEMPTED
            codes = {key: code if code == K.unknown_topic_or_partition else K.operation_not_attempted
                     for key, code in codes.items()}
        return _add_partitions_answer(topics, codes, default)

    # --- AddOffsetsToTxn / EndTxn --------------------------------------------------------
    async def add_offsets_to_txn(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        resp = await self._txn().transactions.AddOffsetsToTxn(tpb.AddOffsetsToTxnRequest(
            transactional_id=body.transactional_id, producer_id=body.producer_id, producer_epoch=body.producer_epoch,
            group_id=body.group_id), None)
        return {"throttle_time": 0, "error_code": to_kafka_txn(resp.error_code, req.api_key, req.api_version)}

    async def end_txn(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        resp = await self._txn().transactions.EndTxn(tpb.EndTxnRequest(
            transactional_id=body.transactional_id, producer_id=body.producer_id, producer_epoch=body.producer_epoch,
            commit=body.committed), None)
        return {"throttle_time": 0, "error_code": to_kafka_txn(resp.error_code, req.api_key, req.api_version)}

    # --- TxnOffsetCommit (group coordinator) ---------------------------------------------
    async def txn_offset_commit(self, req: codec.Request) -> dict[str, Any]:
        """As OffsetCommit (KIP-447 from v3): a classic member's generation is checked by the
        classic group and the commit written as Semel's simple commit; a KIP-848 member's epoch
        is Semel's; -1 with no member id is a consumer that assign()s (accepted while the group
        has no members). v0-2 carry no membership."""
        body = req.body
        topics = body.topics[: limits.MAX_PARTITIONS_PER_REQUEST]
        member_id, generation = getattr(body, "member_id", ""), getattr(body, "generation_id", -1)
        verdict = (self._commit_verdict(body.group_id, member_id, generation, getattr(body, "group_instance_id", None))
                   if req.api_version >= 3 else None)
        if verdict is not None and verdict != K.none:
            return {"throttle_time": 0, "topics": [
                {"name": t.name, "partitions": [{"partition_index": p.partition_index, "error_code": verdict}
                                                for p in t.partitions]}
                for t in topics]}
        if verdict == K.none or req.api_version < 3:  # a checked classic member, or no membership sent
            member_id, generation = "", -1
        request = gpb.TxnOffsetCommitRequest(
            transactional_id=body.transactional_id, producer_id=body.producer_id, producer_epoch=body.producer_epoch,
            group_id=body.group_id, member_id=member_id, member_epoch=generation)
        for t in topics:
            request.topics.append(gpb.OffsetCommitTopic(topic=t.name, partitions=[
                gpb.OffsetCommitPartition(partition=p.partition_index, committed_offset=p.committed_offset,
                                          committed_leader_epoch=getattr(p, "committed_leader_epoch", -1),
                                          metadata=p.committed_metadata or "")
                for p in t.partitions]))
        resp = await self._groups().TxnOffsetCommit(request, None)  # type: ignore[arg-type]
        by_key = {(t.topic, p.partition): p.error_code for t in resp.topics for p in t.partitions}
        return {"throttle_time": 0, "topics": [
            {"name": t.name, "partitions": [
                {"partition_index": p.partition_index,
                 "error_code": to_kafka_txn(resp.error_code or by_key.get((t.name, p.partition_index), pb.NONE),
                                            req.api_key, req.api_version)}
                for p in t.partitions]}
            for t in topics]}

    # --- admin: ListTransactions / DescribeTransactions / DescribeProducers --------------
    async def list_transactions(self, req: codec.Request) -> dict[str, Any]:
        """This broker's transactions (admin clients ask every broker and merge)."""
        body = req.body
        names = list(body.state_filters)
        unknown = [n for n in names if n not in STATES_BY_NAME]
        resp = await self._txn().transactions.ListTransactions(tpb.ListTransactionsRequest(
            state_filters=[state_to_proto(STATES_BY_NAME[n]) for n in names if n in STATES_BY_NAME],
            producer_id_filters=list(body.producer_id_filters),
            duration_filter_ms=max(0, getattr(body, "duration_filter", -1))), None)
        if unknown and len(unknown) == len(names):
            listed: list[tpb.TransactionListing] = []  # only unknown states asked: nothing matches
        else:
            listed = list(resp.transactions)
        return {"throttle_time": 0, "error_code": to_kafka(resp.error_code), "unknown_state_filters": unknown,
                "transaction_states": [{"transactional_id": t.transactional_id, "producer_id": t.producer_id,
                                        "transaction_state": STATE_NAMES[TxnState(t.state)]} for t in listed]}

    async def describe_transactions(self, req: codec.Request) -> dict[str, Any]:
        ids = list(req.body.transactional_ids)
        resp = await self._txn().transactions.DescribeTransactions(
            tpb.DescribeTransactionsRequest(transactional_ids=ids), None)
        return {"throttle_time": 0, "transaction_states": [_description(d) for d in resp.transactions]}

    async def describe_producers(self, req: codec.Request) -> dict[str, Any]:
        topics = []
        budget = limits.MAX_PARTITIONS_PER_REQUEST
        for t in req.body.topics:
            partitions = []
            for index in t.partition_indexes:
                budget -= 1
                if budget < 0:
                    partitions.append({"partition_index": index, "error_code": K.invalid_request,
                                       "error_message": "too many partitions in one request", "active_producers": []})
                    continue
                resp = await self._txn().transactions.DescribeProducers(
                    tpb.DescribeProducersRequest(topic=t.name, partition=index), None)
                partitions.append({
                    "partition_index": index, "error_code": to_kafka(resp.error_code),
                    "error_message": resp.error_message or None,
                    "active_producers": [
                        {"producer_id": p.producer_id, "producer_epoch": p.producer_epoch,
                         "last_sequence": p.last_sequence, "last_timestamp": p.last_timestamp_ms,
                         "coordinator_epoch": p.coordinator_epoch,
                         "current_txn_start_offset": p.current_txn_start_offset}
                        for p in resp.producers]})
            topics.append({"name": t.name, "partitions": partitions})
        return {"throttle_time": 0, "topics": topics}

    # --- transactional Produce: KIP-890 verification -------------------------------------
    async def verify_produce(self, transactional_id: str | None, partitions: list[tuple[str, int, bytes | None]],
                             image: md.MetadataImage) -> ProduceCheck | None:
        """The check to run right before each partition's append (None: nothing transactional).
        A transactional batch needs the request's transactional id, and a request with one
        carries transactional batches only (as over gRPC); the batch checks proper are
        `checked_produce_batch`'s, a batch whose header does not parse is left to them."""
        if transactional_id is None and not any(_transactional_bit(records) for _, _, records in partitions):
            return None  # the idempotent and plain hot path: one byte per batch, no await
        data: list[bpb.PartitionProduceData] = []
        refused: dict[tuple[str, int], tuple[pb.ErrorCode, str]] = {}
        for topic, partition, records in partitions[: limits.MAX_PARTITIONS_PER_REQUEST]:
            try:
                header = peek_header(records) if records else None
            except CorruptBatchError:
                header = None
            if header is None:
                continue
            if transactional_id is not None and not header.is_transactional:
                refused[(topic, partition)] = (pb.INVALID_REQUEST, "a request with a transactional id carries only "
                                               "transactional batches")
            elif header.is_transactional and not header.is_control:
                data.append(bpb.PartitionProduceData(topic=topic, partition=partition, batch=pb.RecordBatch(
                    attributes=header.attributes, producer_id=header.producer_id,
                    producer_epoch=header.producer_epoch, record_count=header.record_count)))
        if not data and not refused:
            return None
        check = None
        if data:
            request = bpb.ProduceRequest(transactional_id=transactional_id or "", partitions=data)
            check = await self._txn().verify_produce(request, image)
        by_key = {(pd.topic, pd.partition): pd for pd in data}

        def run(topic: str, partition: int) -> None:
            refusal = refused.get((topic, partition))
            if refusal is not None:
                raise PartitionError(*refusal)
            pd = by_key.get((topic, partition))
            if pd is None or check is None:
                return
            try:
                check(pd)
            except PartitionError as exc:
                if exc.code in RETRIABLE_VERIFY_ERRORS:
                    raise PartitionError(pb.NOT_ENOUGH_REPLICAS, f"transaction verification: {exc.message}") from exc
                if exc.code == pb.PRODUCER_FENCED:
                    raise PartitionError(pb.INVALID_PRODUCER_EPOCH, exc.message) from exc
                raise

        return run


def _transactional_bit(records: bytes | None) -> bool:
    """The transactional attribute of a magic-2 batch (attributes are bytes 21-22 of its header)."""
    return records is not None and len(records) > _ATTRIBUTES_LOW_BYTE and bool(
        records[_ATTRIBUTES_LOW_BYTE] & ATTR_TRANSACTIONAL)


def _add_partitions_answer(topics: Any, codes: dict[tuple[str, int], K], default: K) -> dict[str, Any]:
    return {"throttle_time": 0, "results_by_topic_v3_and_below": [
        {"name": t.name, "results_by_partition": [
            {"partition_index": p, "partition_error_code": codes.get((t.name, int(p)), default)}
            for p in t.partitions]}
        for t in topics]}


def _description(d: tpb.TransactionDescription) -> dict[str, Any]:
    state = TxnState(d.state) if d.state else None
    start = (NULL_TIMESTAMP if d.transaction_start_time_ms < 0 or state is None
             else datetime.datetime.fromtimestamp(d.transaction_start_time_ms / 1000, tz=datetime.timezone.utc))
    by_topic: dict[str, list[int]] = {}
    for tp in d.partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return {"error_code": to_kafka(d.error_code), "transactional_id": d.transactional_id,
            "transaction_state": STATE_NAMES[state] if state is not None else "",
            "transaction_timeout": d.transaction_timeout_ms, "transaction_start_time": start,
            "producer_id": d.producer_id if state is not None else -1,
            "producer_epoch": d.producer_epoch if state is not None else -1,
            "topics": [{"topic": topic, "partitions": parts} for topic, parts in by_topic.items()]}


Handler = Callable[[KafkaTxnApis, codec.Request], Awaitable[dict[str, Any]]]
TXN_HANDLERS: dict[int, Handler] = {
    codec.ADD_PARTITIONS_TO_TXN: KafkaTxnApis.add_partitions_to_txn,
    codec.ADD_OFFSETS_TO_TXN: KafkaTxnApis.add_offsets_to_txn,
    codec.END_TXN: KafkaTxnApis.end_txn,
    codec.TXN_OFFSET_COMMIT: KafkaTxnApis.txn_offset_commit,
    codec.LIST_TRANSACTIONS: KafkaTxnApis.list_transactions,
    codec.DESCRIBE_TRANSACTIONS: KafkaTxnApis.describe_transactions,
    codec.DESCRIBE_PRODUCERS: KafkaTxnApis.describe_producers,
}
