"""gRPC servicers of the transaction protocol on every broker: `Transactions` (clients,
admins) and `TxnMarkers` (broker to broker), plus the KIP-890 check of the produce path.

Thin shells over `TxnCoordinatorShell` (the coordinator of the `__transaction_state`
partitions this broker leads), the partition leaders' producer state and `txn_wire`:

* coordinator calls (InitProducerId with an id, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
  List/DescribeTransactions, VerifyTransaction) go to the core; any other broker answers
  NOT_COORDINATOR, a loading one COORDINATOR_LOAD_IN_PROGRESS;
* InitProducerId without a transactional id answers from this broker's producer-id block;
* partition-leader calls (DescribeProducers, AbortTransaction, WriteTxnMarkers) act on the
  led replica: markers are appended with `Partition.append_marker` (epoch rules in the
  producer state) through `write_path` and answered once the HW passed them (acks=all);
* produce: before the *first* transactional write of a producer to a partition (no open
  transaction of it there) the leader asks the coordinator (VerifyTransaction) that the
  partition is in the producer's current transaction; a guard of the partition's
  `VerificationCache`, voided by any marker of that producer meanwhile, is checked right
  before the append (same event-loop step), so a delayed write cannot open a hanging
  transaction.

`install(broker, server)` registers both servicers and starts the coordinator shell.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from semel import internal_topics, limits
from semel.cluster.broker import write_path
from semel.cluster.broker.coordinator_lookup import find_coordinator
from semel.cluster.broker.produce_validation import batch_identity, unset_fields
from semel.cluster.broker.replica_manager import (
    Partition,
    PartitionError,
    Role,
    WriteResult,
)
from semel.cluster.broker.txn_coordinator_shell import TxnCoordinatorShell
from semel.cluster.metadata import state as md
from semel.coordinator import txn_wire
from semel.coordinator.txn_markers import VerificationGuard, check_admin_abort
from semel.coordinator.txn_state import (
    TxnResult,
    TxnState,
    TxnVersion,
    VerifyResult,
)
from semel.invariant import not_none
from semel.storage.batch import ATTR_CONTROL, ATTR_TRANSACTIONAL
from semel.topic_partition import TopicPartition
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as pb
from semel.v1 import txn_pb2 as tpb
from semel.v1 import txn_pb2_grpc as tgrpc

if TYPE_CHECKING:
    from semel.cluster.broker.host import CoordinatorHost

log = logging.getLogger(__name__)

SERVICE_NAMES = ("semel.v1.Transactions", "semel.v1.TxnMarkers")
MARKER_ACK_TIMEOUT_MS = limits.TXN_MARKER_ACK_TIMEOUT_MS  # module name: tests shrink it
VERIFY_RPC_TIMEOUT_S = 5.0


def producer_state_of(p: Partition) -> Any | None:
    """The partition's `ProducerStateManager` (`PartitionStoreAdapter.store.producer_state`), or
    None for a store without one (the in-process tests' stand-ins)."""
    store = getattr(p.store, "store", None)
    return getattr(store, "producer_state", None)


class TransactionsService(tgrpc.TransactionsServicer):
    def __init__(self, broker: CoordinatorHost, shell: TxnCoordinatorShell) -> None:
        self.b = broker
        self.shell = shell

    async def FindCoordinator(self, request: tpb.FindCoordinatorRequest, context: Any) -> tpb.FindCoordinatorResponse:
        return find_coordinator(self.b.quorum.image(), request.key, request.key_type,
                                metadata_current=self.b.metadata_current())

    async def InitProducerId(self, request: tpb.InitProducerIdRequest, context: Any) -> tpb.InitProducerIdResponse:
        unset = unset_fields(request) if request.transactional_id else None
        if unset is not None:
            return tpb.InitProducerIdResponse(error_code=pb.INVALID_REQUEST, error_message=unset + " (-1/-1: a new "
                                              "producer)", producer_id=-1, producer_epoch=-1)
        if not request.transactional_id:
            pid = await self.shell.pids.next_id()
            if pid is None:
                return tpb.InitProducerIdResponse(error_code=pb.COORDINATOR_NOT_AVAILABLE, producer_id=-1,
                                                  producer_epoch=-1, error_message="no producer id block yet; retry")
            return tpb.InitProducerIdResponse(error_code=pb.NONE, producer_id=pid, producer_epoch=0)
        return await self.init_transactional(request, TxnVersion.V2)

    async def init_transactional(self, request: tpb.InitProducerIdRequest,
                                 txn_version: TxnVersion) -> tpb.InitProducerIdResponse:
        """InitProducerId with a transactional id; gRPC clients are `TxnVersion.V2`, the Kafka
        listener's classic clients V1 (docs/kafka.md, "Transaction versions")."""
        # a new transactional id (or an epoch that ran out) takes an id: have a block first, else
        # the first producer of a fresh coordinator gets COORDINATOR_NOT_AVAILABLE (bounded wait;
        # without a quorum the core still answers that)
        await self.shell.pids.wait_available()
        reply = await self.shell.call(lambda core, rid: core.init_producer_id(
            rid, request.transactional_id, request.transaction_timeout_ms, self.shell.clock.wall_clock_ms(),
            request.producer_id, request.producer_epoch, txn_version))
        reply = await self.shell.authoritative(request.transactional_id, reply)
        return txn_wire.init_producer_id_response(reply.result, reply.completed)

    async def AddPartitionsToTxn(self, request: tpb.AddPartitionsToTxnRequest,
                                 context: Any) -> tpb.AddPartitionsToTxnResponse:
        partitions = txn_wire.partitions_from_proto(request.partitions)
        unset = unset_fields(request)
        if unset is not None:
            return txn_wire.add_partitions_response(TxnResult(pb.INVALID_REQUEST, unset), partitions)
        image = self.b.quorum.image()
        unknown = {tp: pb.UNKNOWN_TOPIC_OR_PARTITION for tp in partitions if image.partition(tp.topic, tp.partition) is None}
        if unknown:
            result = TxnResult(pb.UNKNOWN_TOPIC_OR_PARTITION, f"unknown partitions: {sorted(unknown)}")
            return txn_wire.add_partitions_response(result, partitions, unknown)
        reply = await self.shell.call(lambda core, rid: core.add_partitions(
            rid, request.transactional_id, request.producer_id, request.producer_epoch, partitions,
            self.shell.clock.wall_clock_ms()))
        reply = await self.shell.authoritative(request.transactional_id, reply)
        return txn_wire.add_partitions_response(reply.result, partitions)

    async def AddOffsetsToTxn(self, request: tpb.AddOffsetsToTxnRequest, context: Any) -> tpb.AddOffsetsToTxnResponse:
        unset = unset_fields(request)
        if unset is not None:
            return tpb.AddOffsetsToTxnResponse(error_code=pb.INVALID_REQUEST, error_message=unset)
        topic = self.b.quorum.image().topic(internal_topics.CONSUMER_OFFSETS_TOPIC)
        if topic is None:
            return tpb.AddOffsetsToTxnResponse(error_code=pb.COORDINATOR_NOT_AVAILABLE,
                                               error_message=f"{internal_topics.CONSUMER_OFFSETS_TOPIC} does not exist yet")
        count = len(topic.partitions)
        reply = await self.shell.call(lambda core, rid: core.add_offsets(
            rid, request.transactional_id, request.producer_id, request.producer_epoch, request.group_id, count,
            self.shell.clock.wall_clock_ms()))
        reply = await self.shell.authoritative(request.transactional_id, reply)
        return tpb.AddOffsetsToTxnResponse(error_code=reply.result.error, error_message=reply.result.message)

    async def EndTxn(self, request: tpb.EndTxnRequest, context: Any) -> tpb.EndTxnResponse:
        unset = unset_fields(request)
        if unset is not None:
            return tpb.EndTxnResponse(error_code=pb.INVALID_REQUEST, error_message=unset, producer_id=-1,
                                      producer_epoch=-1)
        reply = await self.shell.call(lambda core, rid: core.end_txn(
            rid, request.transactional_id, request.producer_id, request.producer_epoch, request.commit,
            self.shell.clock.wall_clock_ms()))
        reply = await self.shell.authoritative(request.transactional_id, reply)
        return txn_wire.end_txn_response(reply.result, reply.completed)

    async def ListTransactions(self, request: tpb.ListTransactionsRequest,
                               context: Any) -> tpb.ListTransactionsResponse:
        known = {s.value for s in TxnState}
        unknown = sorted({s for s in request.state_filters if s != tpb.TRANSACTION_STATE_UNSPECIFIED} - known)
        if unknown:
            return tpb.ListTransactionsResponse(error_code=pb.INVALID_REQUEST,
                                                error_message=f"unknown transaction states {unknown}")
        core = self.shell.core
        if core is None:
            return tpb.ListTransactionsResponse(error_code=pb.NONE)
        states = [TxnState(s) for s in request.state_filters if s != tpb.TRANSACTION_STATE_UNSPECIFIED]
        error, found, truncated = core.list_transactions(self.shell.clock.wall_clock_ms(), states,
                                                         list(request.producer_id_filters),
                                                         max(0, request.duration_filter_ms))
        return tpb.ListTransactionsResponse(error_code=error, truncated=truncated,
                                            transactions=[txn_wire.listing(m) for m in found])

    async def DescribeTransactions(self, request: tpb.DescribeTransactionsRequest,
                                   context: Any) -> tpb.DescribeTransactionsResponse:
        core = self.shell.core
        resp = tpb.DescribeTransactionsResponse()
        if len(request.transactional_ids) > limits.MAX_LISTED_TRANSACTIONS:
            for tid in request.transactional_ids:
                resp.transactions.append(txn_wire.describe(tid, None, pb.INVALID_REQUEST))
            return resp
        for tid in request.transactional_ids:
            if core is None:
                resp.transactions.append(txn_wire.describe(tid, None, pb.NOT_COORDINATOR))
                continue
            error, meta = core.describe(tid)
            resp.transactions.append(txn_wire.describe(tid, meta, error))
        return resp

    async def DescribeProducers(self, request: tpb.DescribeProducersRequest,
                                context: Any) -> tpb.DescribeProducersResponse:
        try:
            p = self.b.rm.leader_partition(request.topic, request.partition, self.b.quorum.image())
        except PartitionError as exc:
            return tpb.DescribeProducersResponse(error_code=exc.code, error_message=exc.message)
        state = producer_state_of(p)
        return txn_wire.describe_producers_response([] if state is None else state.describe_producers())

    async def AbortTransaction(self, request: tpb.AbortTransactionRequest,
                               context: Any) -> tpb.AbortTransactionResponse:
        unset = unset_fields(request, ("producer_id", "producer_epoch", "coordinator_epoch"))
        if unset is not None:
            return tpb.AbortTransactionResponse(error_code=pb.INVALID_REQUEST, error_message=unset)
        try:
            p = self.b.rm.leader_partition(request.topic, request.partition, self.b.quorum.image())
        except PartitionError as exc:
            return tpb.AbortTransactionResponse(error_code=exc.code, error_message=exc.message)
        state = producer_state_of(p)
        info = None if state is None else state.producer(request.producer_id)
        code, message = check_admin_abort(info, request.producer_epoch, request.coordinator_epoch)
        if code == pb.NONE and info is not None and request.coordinator_epoch > max(0, info.coordinator_epoch):
            # the marker's epoch would fence the real coordinator's markers for this producer
            code, message = pb.INVALID_REQUEST, (
                f"coordinator_epoch {request.coordinator_epoch} is newer than the last marker's "
                f"({info.coordinator_epoch}); an admin abort uses that one (0 if none), never a newer one")
        if code != pb.NONE:
            return tpb.AbortTransactionResponse(error_code=code, error_message=message)
        code, message = await write_marker_and_wait(self.shell, p, request.producer_id, request.producer_epoch,
                                                    False, request.coordinator_epoch)
        if code == pb.NONE:
            log.warning("admin abort of producer %d epoch %d in %s-%d", request.producer_id, request.producer_epoch,
                        request.topic, request.partition)
        return tpb.AbortTransactionResponse(error_code=code, error_message=message)


async def write_marker_and_wait(shell: TxnCoordinatorShell, p: Partition, producer_id: int, producer_epoch: int,
                                commit: bool, coordinator_epoch: int,
                                timeout_ms: int = MARKER_ACK_TIMEOUT_MS) -> tuple[pb.ErrorCode, str]:
    """Append one marker as leader (acks=all) and wait until the HW passes it."""
    out = append_marker(shell, p, producer_id, producer_epoch, commit, coordinator_epoch)
    result = out if isinstance(out, WriteResult) else await out.wait(timeout_ms)
    return result.error_code, result.message


def append_marker(shell: TxnCoordinatorShell, p: Partition, producer_id: int, producer_epoch: int, commit: bool,
                  coordinator_epoch: int) -> WriteResult | write_path.PendingAck:
    """The marker through the one write path; a refusal is an `WriteResult` (nothing written)."""
    out = write_path.start_append(
        p, lambda: p.append_marker(producer_id, producer_epoch, commit, coordinator_epoch, shell.clock.wall_clock_ms()),
        write_path.TXN_MARKER)
    if isinstance(out, write_path.PendingAck):
        shell.verification_cache(p.topic, p.partition).on_marker(producer_id)  # same loop step as the append
    return out


def marker_refusal(marker: tpb.TxnMarker, image: md.MetadataImage) -> pb.ErrorCode | None:
    """Why this partition leader refuses `marker` before touching any producer state, or None.

    The coordinator epoch of a marker is the leader epoch of the `__transaction_state`
    partition of its transactional id: only a leader election raises it. A partition keeps
    the highest coordinator epoch it saw per producer and fences older ones, so a marker with
    an epoch from nowhere (a client sending 2147483647) would fence the real coordinator's
    markers for good (it unloaded itself on TRANSACTION_COORDINATOR_FENCED). Refused: an
    epoch newer than this broker's metadata knows for that partition (UNKNOWN_LEADER_EPOCH,
    retriable: the real coordinator retries until this broker's image caught up), a marker
    type other than COMMIT/ABORT, no transactional id, or an unset producer id or epoch
    (INVALID_REQUEST)."""
    if marker.type not in (pb.COMMIT, pb.ABORT) or not marker.transactional_id or unset_fields(marker) is not None:
        return pb.INVALID_REQUEST
    ps = image.coordinator(internal_topics.TRANSACTION_STATE_TOPIC, marker.transactional_id)
    if ps is None or marker.coordinator_epoch > ps.leader_epoch:
        return pb.UNKNOWN_LEADER_EPOCH
    return None


class TxnMarkersService(tgrpc.TxnMarkersServicer):
    def __init__(self, broker: CoordinatorHost, shell: TxnCoordinatorShell) -> None:
        self.b = broker
        self.shell = shell

    async def WriteTxnMarkers(self, request: tpb.WriteTxnMarkersRequest, context: Any) -> tpb.WriteTxnMarkersResponse:
        image = self.b.quorum.image()
        resp = tpb.WriteTxnMarkersResponse()
        waits: list[tuple[tpb.TxnMarkerPartitionResult, write_path.PendingAck]] = []
        budget = limits.MAX_MARKERS_PER_REQUEST
        for marker in request.markers:
            # add() (not append(), which copies): results are filled in after the appends and waits
            mr = resp.markers.add(producer_id=marker.producer_id)
            for tp in marker.partitions:
                r = mr.partitions.add(topic=tp.topic, partition=tp.partition, error_code=pb.NONE)
                budget -= 1
                if budget < 0:
                    r.error_code = pb.INVALID_REQUEST
                    continue
                refusal = marker_refusal(marker, image)
                if refusal is not None:
                    r.error_code = refusal
                    continue
                try:
                    p = self.b.rm.leader_partition(tp.topic, tp.partition, image)
                except PartitionError as exc:
                    r.error_code = exc.code
                    continue
                out = append_marker(self.shell, p, marker.producer_id, marker.producer_epoch,
                                    marker.type == pb.COMMIT, marker.coordinator_epoch)
                if isinstance(out, WriteResult):
                    r.error_code = out.error_code
                    if out.error_code not in (pb.NONE, pb.NOT_LEADER_OR_FOLLOWER):
                        log.info("marker %s for producer %d epoch %d in %s-%d: %s", pb.ControlType.Name(marker.type),
                                 marker.producer_id, marker.producer_epoch, tp.topic, tp.partition, out.message)
                else:
                    waits.append((r, out))
        results = await write_path.wait_all([ack for _, ack in waits], MARKER_ACK_TIMEOUT_MS)
        for (r, _), result in zip(waits, results):
            r.error_code = result.error_code
        return resp

    async def VerifyTransaction(self, request: tpb.VerifyTransactionRequest,
                                context: Any) -> tpb.VerifyTransactionResponse:
        unset = unset_fields(request)
        if unset is not None:
            return tpb.VerifyTransactionResponse(error_code=pb.INVALID_REQUEST, error_message=unset)
        result = await self.shell.verify(request.transactional_id, request.producer_id, request.producer_epoch,
                                         txn_wire.partitions_from_proto(request.partitions))
        return txn_wire.verify_response(result)


# --- produce path: KIP-890 verification -----------------------------------------------------------

ProduceCheck = Callable[[bpb.PartitionProduceData], None]


class ProduceVerifier:
    """Verifies the first transactional write of a producer to each partition (see the module
    docstring). `prepare` returns a check to run right before each partition's append."""

    def __init__(self, broker: CoordinatorHost, shell: TxnCoordinatorShell) -> None:
        self.b = broker
        self.shell = shell
        self.verifications = 0
        self._inflight: dict[tuple[str, int, int, int], asyncio.Future[tuple[pb.ErrorCode, str, VerificationGuard | None]]] = {}
        # (topic, partition, producer id, epoch) -> done when the last request of that producer
        # with a batch for the partition that had to wait here has appended (or failed): a later
        # request appends after it. Bounded by the produce requests in flight.
        self._waiting: dict[tuple[str, int, int, int], asyncio.Future[None]] = {}

    async def prepare(self, request: bpb.ProduceRequest, image: md.MetadataImage) -> ProduceCheck:
        tid = request.transactional_id
        keys, to_verify = self._transactional_writes(request)
        earlier = {f for key in keys if (f := self._waiting.get(key)) is not None}
        outcomes: dict[tuple[str, int], tuple[pb.ErrorCode, str, VerificationGuard | None]] = {}
        if to_verify and not tid:
            for parts in to_verify.values():
                for tp in parts:
                    outcomes[tp] = (pb.INVALID_REQUEST, "a transactional batch needs the request's transactional_id",
                                     None)
        elif to_verify or earlier:
            # This request waits (a verification, or an earlier request of the producer to one of its
            # partitions that waits): a later request of the producer to the same partitions, which
            # would not wait, must not append before it (its sequences would be out of order).
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for key in keys:
                self._waiting[key] = done
            try:
                if earlier:
                    # their appends first; they may open the transaction here (then nothing to verify).
                    # Before this request's own verification: no await may come between a
                    # verification and the append it guards (a newer one would void its guard).
                    await asyncio.wait(earlier)
                    _, to_verify = self._transactional_writes(request)
                for (pid, epoch), parts in to_verify.items():
                    outcomes.update(await self._verify(tid, pid, epoch, parts, image))
            finally:
                for key in keys:
                    if self._waiting.get(key) is done:
                        del self._waiting[key]
                # set now, but the waiters run only in later loop steps: this request's appends,
                # right after this returns, come first
                done.set_result(None)

        def check(pd: bpb.PartitionProduceData) -> None:
            key = (pd.topic, pd.partition)
            if key not in outcomes:
                return
            code, message, guard = outcomes[key]
            if code != pb.NONE:
                raise PartitionError(code, message)
            guard = not_none(guard, "a verification that answered NONE holds its guard")
            if self._open_here(pd.topic, pd.partition, guard.producer_id, guard.producer_epoch):
                return  # a concurrent request of the producer opened it meanwhile (same verification)
            if self.shell.verification_cache(*key).check(guard, self.shell.clock.monotonic_ms()) != pb.NONE:
                raise PartitionError(pb.INVALID_TXN_STATE, "a marker ended the producer's transaction while its "
                                     "first write was being verified; refused (no hanging transaction)")

        return check

    def _transactional_writes(self, request: bpb.ProduceRequest) -> tuple[
            list[tuple[str, int, int, int]], dict[tuple[int, int], list[tuple[str, int]]]]:
        """(topic, partition, producer id, epoch) of the request's transactional batches, and
        those to verify per (producer id, epoch): no open transaction of it here yet."""
        keys: list[tuple[str, int, int, int]] = []
        to_verify: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for pd in request.partitions[: limits.MAX_PARTITIONS_PER_REQUEST]:
            producer_id, producer_epoch, attributes = batch_identity(pd)  # either batch form
            if not attributes & ATTR_TRANSACTIONAL or attributes & ATTR_CONTROL:
                continue
            keys.append((pd.topic, pd.partition, producer_id, producer_epoch))
            if self._open_here(pd.topic, pd.partition, producer_id, producer_epoch) is not False:
                continue  # not the leader here (_produce_one answers that), or the transaction is open here already
            to_verify.setdefault((producer_id, producer_epoch), []).append((pd.topic, pd.partition))
        return keys, to_verify

    def _open_here(self, topic: str, partition: int, producer_id: int, producer_epoch: int) -> bool | None:
        """None: not the leader here; else whether the producer has an open transaction at this epoch."""
        p = self.b.rm.get(topic, partition)
        state = None if p is None or p.role != Role.LEADER else producer_state_of(p)
        if state is None:
            return None
        info = state.producer(producer_id)
        return info is not None and info.txn_first_offset is not None and info.producer_epoch == producer_epoch

    async def _verify(self, tid: str, pid: int, epoch: int, parts: list[tuple[str, int]], image: md.MetadataImage
                      ) -> dict[tuple[str, int], tuple[pb.ErrorCode, str, VerificationGuard | None]]:
        """Verify `parts` for (pid, epoch). Requests of the producer that arrive while a
        verification of the same partition is in flight share it (and its guard) instead of
        voiding it with a new one, so pipelined first writes are not refused."""
        out: dict[tuple[str, int], tuple[pb.ErrorCode, str, VerificationGuard | None]] = {}
        shared = {key: fut for key in parts if (fut := self._inflight.get((*key, pid, epoch))) is not None}
        mine = [key for key in parts if key not in shared]
        loop = asyncio.get_running_loop()
        futs = {key: loop.create_future() for key in mine}
        if mine:
            for key, fut in futs.items():
                self._inflight[(*key, pid, epoch)] = fut
            try:
                now = self.shell.clock.monotonic_ms()  # the cache's TTL: a duration in this process
                started = {key: self.shell.verification_cache(*key).begin(pid, epoch, now) for key in mine}
                result = await self._ask_coordinator(tid, pid, epoch, mine, image)
                self.verifications += 1
                codes = dict(result.partitions)
                for key, guard in started.items():
                    code = result.error if result.error != pb.NONE else codes.get(TopicPartition(*key),
                                                                                   pb.INVALID_TXN_STATE)
                    if code == pb.NONE and self.shell.verification_cache(*key).record_verified(
                            guard, self.shell.clock.monotonic_ms()):
                        out[key] = (pb.NONE, "", guard)
                    else:
                        code = code if code != pb.NONE else pb.INVALID_TXN_STATE
                        out[key] = (code, f"transaction verification failed: {pb.ErrorCode.Name(code)} "
                                          f"{result.message}".strip(), None)
            finally:
                for key, fut in futs.items():
                    fut.set_result(out.get(key, (pb.COORDINATOR_NOT_AVAILABLE, "verification interrupted", None)))
        try:
            for key, fut in shared.items():
                out[key] = await asyncio.shield(fut)
        finally:
            # Only now, with no await left before this request's appends: a request arriving while
            # this one still waited for a shared verification takes the (done) future and its guard;
            # a fresh begin() would void the guard this request is about to check.
            for key in futs:
                self._inflight.pop((*key, pid, epoch), None)
        return out

    async def _ask_coordinator(self, tid: str, pid: int, epoch: int, parts: list[tuple[str, int]],
                               image: md.MetadataImage) -> VerifyResult:
        tps = [TopicPartition(t, p) for t, p in parts]
        core = self.shell.core
        ps = image.coordinator(internal_topics.TRANSACTION_STATE_TOPIC, tid)
        if ps is None or ps.leader == md.NO_LEADER:
            return VerifyResult(pb.COORDINATOR_NOT_AVAILABLE, "no transaction coordinator")
        if ps.leader == self.b.config.broker_id and core is not None:
            return await self.shell.verify(tid, pid, epoch, tps)
        address = self.b.peers.broker_address(ps.leader)
        if address is None:
            return VerifyResult(pb.COORDINATOR_NOT_AVAILABLE, "coordinator has no address")
        try:
            resp = await tgrpc.TxnMarkersStub(self.b.peers.channel(address)).VerifyTransaction(
                tpb.VerifyTransactionRequest(transactional_id=tid, producer_id=pid, producer_epoch=epoch,
                                             partitions=txn_wire.partitions_to_proto(tps)),
                timeout=VERIFY_RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return VerifyResult(pb.COORDINATOR_NOT_AVAILABLE, f"coordinator unreachable: {exc.code().name}")
        return VerifyResult(resp.error_code, resp.error_message,
                            tuple((TopicPartition(r.topic, r.partition), r.error_code) for r in resp.results))


class TxnRuntime:
    """Everything transactional on one broker (installed by `install`)."""

    def __init__(self, broker: CoordinatorHost, scan_interval_ms: int | None = None) -> None:
        self.shell = TxnCoordinatorShell(broker, scan_interval_ms=scan_interval_ms
                                         or limits.TRANSACTION_ABORT_SCAN_INTERVAL_MS)
        self.verifier = ProduceVerifier(broker, self.shell)
        self.transactions = TransactionsService(broker, self.shell)
        self.markers = TxnMarkersService(broker, self.shell)

    async def verify_produce(self, request: bpb.ProduceRequest, image: md.MetadataImage) -> ProduceCheck | None:
        """The check to run before each partition's append (None: nothing transactional)."""
        if not any(batch_identity(pd)[2] & ATTR_TRANSACTIONAL for pd in request.partitions):
            return None
        return await self.verifier.prepare(request, image)

    async def stop(self) -> None:
        await self.shell.stop()


def install(broker: CoordinatorHost, server: grpc.aio.Server, scan_interval_ms: int | None = None) -> TxnRuntime:
    runtime = TxnRuntime(broker, scan_interval_ms)
    tgrpc.add_TransactionsServicer_to_server(runtime.transactions, server)
    tgrpc.add_TxnMarkersServicer_to_server(runtime.markers, server)
    runtime.shell.start()
    return runtime
