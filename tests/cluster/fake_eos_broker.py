"""In-process fake brokers with idempotence and transactions, for producer tests without processes.

Extends `fake_broker.FakeBroker` (whose owner keeps it plain): Produce validates idempotent
batches with the *real* `semel.storage.producer_state.ProducerStateManager` (so the fake
dedups, fences and rejects exactly as a partition leader does), and a `Transactions`
service plays a simplified coordinator: producer ids, epoch bumps (KIP-360 and KIP-890: every
EndTxn bumps), AddPartitionsToTxn / AddOffsetsToTxn, EndTxn writing COMMIT/ABORT control
batches at once, fencing by InitProducerId, and `expire_transaction(tid)` to play a
coordinator timeout. Produce of a transactional batch to a partition not added to the
producer's current transaction answers INVALID_TXN_STATE (KIP-890 verification).

Fault hooks (per partition): `fail_next_produce` (inherited: answer a code, write nothing),
`lose_next_answers(tp, n, how)` (append, then answer REQUEST_TIMED_OUT or drop the answer
with a gRPC DEADLINE_EXCEEDED: a lost acknowledgement), `forget_producers(tp)` (the partition
loses every producer's state: UNKNOWN_PRODUCER_ID / OUT_OF_ORDER_SEQUENCE next; with
`after_next_append=True`, right after the next append, before anything else reaches the
partition), and `hold_produce(tp)` / `release_produce(tp)` to keep requests waiting
(`held_requests` counts those waiting, under `lock`, which is notified when it changes).
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import grpc
from semel.storage.batch import ATTR_CONTROL, ATTR_TRANSACTIONAL, BatchHeader, Marker
from semel.storage.producer_state import Outcome, ProducerStateManager
from semel.v1 import broker_pb2, common_pb2, txn_pb2, txn_pb2_grpc

from tests.cluster.fake_broker import FakeBroker, FakeClusterState


@dataclasses.dataclass
class FakeTxn:
    producer_id: int
    epoch: int
    timeout_ms: int
    state: str = "empty"                 # empty | ongoing
    partitions: set = dataclasses.field(default_factory=set)
    groups: set = dataclasses.field(default_factory=set)
    last_ended: tuple | None = None      # (epoch the txn ran under, commit) for idempotent EndTxn retries
    timed_out: bool = False


class FakeEosState(FakeClusterState):
    def __init__(self) -> None:
        super().__init__()
        self.producers: dict[tuple[str, int], ProducerStateManager] = collections.defaultdict(ProducerStateManager)
        self.next_producer_id = 1000
        self.txns: dict[str, FakeTxn] = {}
        self.lost_answers: dict[tuple[str, int], collections.deque[str]] = collections.defaultdict(collections.deque)
        self.held: set[tuple[str, int]] = set()
        self.held_requests = 0                         # Produce requests waiting on `held`
        self.forget_after_append: set[tuple[str, int]] = set()
        self.init_producer_id_calls: list[txn_pb2.InitProducerIdRequest] = []
        self.end_txn_calls: list[txn_pb2.EndTxnRequest] = []
        self.add_partitions_calls = 0
        self.added_per_call: list[set] = []            # the partitions of each AddPartitionsToTxn
        self.unknown_partitions: set = set()           # AddPartitionsToTxn naming one answers UNKNOWN_TOPIC_OR_PARTITION
        self.produced_batches: list[common_pb2.RecordBatch] = []   # every attempt received (copies)
        self.offset_commits: list = []

    def lose_next_answers(self, topic: str, partition: int, count: int = 1, how: str = "timeout") -> None:
        """The next `count` produce attempts are appended, then their answer is lost:
        how="timeout" answers REQUEST_TIMED_OUT, how="drop" fails the RPC (DEADLINE_EXCEEDED)."""
        with self.lock:
            self.lost_answers[(topic, partition)].extend([how] * count)

    def forget_producers(self, topic: str, partition: int, after_next_append: bool = False) -> None:
        with self.lock:
            if after_next_append:
                self.forget_after_append.add((topic, partition))
            else:
                self.producers[(topic, partition)] = ProducerStateManager(end_offset=self.end_offset((topic, partition)))

    def hold_produce(self, topic: str, partition: int) -> None:
        with self.lock:
            self.held.add((topic, partition))

    def release_produce(self, topic: str, partition: int) -> None:
        with self.lock:
            self.held.discard((topic, partition))
            self.lock.notify_all()

    def expire_transaction(self, transactional_id: str) -> None:
        """The coordinator's timeout: abort the open transaction and fence the producer."""
        with self.lock:
            txn = self.txns[transactional_id]
            self._write_markers(txn, commit=False)
            txn.epoch += 1
            txn.timed_out = True

    def _write_markers(self, txn: FakeTxn, commit: bool) -> None:
        """Caller holds the lock. KIP-890: markers carry the bumped epoch."""
        for tp in sorted(txn.partitions):
            header = BatchHeader(base_offset=self.end_offset(tp), last_offset_delta=0, leader_epoch=1,
                                 producer_id=txn.producer_id, producer_epoch=txn.epoch + 1, base_sequence=-1,
                                 record_count=1, attributes=ATTR_CONTROL | ATTR_TRANSACTIONAL,
                                 base_timestamp_ms=0, max_timestamp_ms=0)
            self.producers[tp].apply(header, Marker(commit, 0))
            record = common_pb2.ControlRecord(type=common_pb2.COMMIT if commit else common_pb2.ABORT)
            self.logs[tp].append(common_pb2.RecordBatch(
                base_offset=header.base_offset, last_offset_delta=0, leader_epoch=1, producer_id=txn.producer_id,
                producer_epoch=txn.epoch + 1, base_sequence=-1, record_count=1, attributes=header.attributes,
                records=record.SerializeToString()))
        txn.partitions = set()
        txn.groups = set()
        txn.state = "empty"

    def committed_values(self, topic: str, partition: int) -> list[bytes]:
        """Values a read_committed reader sees (data of committed transactions and plain data)."""
        batches = self.logs[(topic, partition)]
        outcome: dict[tuple[int, int], bool] = {}
        open_from: dict[int, int] = {}
        for i, b in enumerate(batches):
            if b.attributes & common_pb2.CONTROL:
                rec = common_pb2.ControlRecord()
                rec.ParseFromString(b.records)
                outcome[(b.producer_id, open_from.pop(b.producer_id, -1))] = rec.type == common_pb2.COMMIT
            elif b.attributes & common_pb2.TRANSACTIONAL and b.producer_id not in open_from:
                open_from[b.producer_id] = i
        out, current = [], {}
        for i, b in enumerate(batches):
            if b.attributes & common_pb2.CONTROL:
                current.pop(b.producer_id, None)
                continue
            if b.attributes & common_pb2.TRANSACTIONAL:
                start = current.setdefault(b.producer_id, i)
                if not outcome.get((b.producer_id, start), False):
                    continue
            recs = common_pb2.Records()
            recs.ParseFromString(b.records)
            out.extend(r.value for r in recs.records)
        return out


class FakeEosBroker(FakeBroker, txn_pb2_grpc.TransactionsServicer):
    def __init__(self, state: FakeEosState, broker_id: int = 1) -> None:  # noqa: D107 - same as FakeBroker's
        from concurrent import futures

        from semel.v1 import admin_pb2_grpc, broker_pb2_grpc, group_pb2_grpc

        self.state = state
        self.broker_id = broker_id
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                                  options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 16 << 20),
                                           ("grpc.max_send_message_length", 16 << 20)])
        broker_pb2_grpc.add_BrokerServicer_to_server(self, self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(self, self.server)
        txn_pb2_grpc.add_TransactionsServicer_to_server(self, self.server)
        group_pb2_grpc.add_GroupsServicer_to_server(_FakeGroups(state), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        state.brokers[broker_id] = ("127.0.0.1", self.port)
        self.server.start()

    # --- Produce with producer state ------------------------------------------------------------
    def Produce(self, request, context):  # noqa: N802
        s: FakeEosState = self.state  # type: ignore[assignment]
        results = []
        drop = False
        with s.lock:
            s.produce_requests += 1
            if any((pd.topic, pd.partition) in s.held for pd in request.partitions):
                s.held_requests += 1
                s.lock.notify_all()
                while any((pd.topic, pd.partition) in s.held for pd in request.partitions):
                    s.lock.wait(0.05)
                s.held_requests -= 1
            for pd in request.partitions:
                tp = (pd.topic, pd.partition)
                copy = common_pb2.RecordBatch()
                copy.CopyFrom(pd.batch)
                s.produced_batches.append(copy)
                result = broker_pb2.PartitionProduceResult(topic=pd.topic, partition=pd.partition)
                if not self._refuse(s, pd, result):
                    self._append(s, tp, request.transactional_id, pd.batch, result)
                    if result.error_code == common_pb2.NONE and tp in s.forget_after_append:
                        s.forget_after_append.discard(tp)
                        s.forget_producers(*tp)
                    if result.error_code == common_pb2.NONE and s.lost_answers[tp]:
                        how = s.lost_answers[tp].popleft()
                        if how == "drop":
                            drop = True
                        else:
                            result.error_code = common_pb2.REQUEST_TIMED_OUT
                            result.error_message = "injected: appended, answer lost (outcome unknown)"
                results.append(result)
            s.lock.notify_all()
        if drop:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "injected: the answer was lost")
        return broker_pb2.ProduceResponse(results=results)

    def _append(self, s: FakeEosState, tp, transactional_id: str, batch, result) -> None:
        header = BatchHeader(base_offset=s.end_offset(tp), last_offset_delta=batch.last_offset_delta, leader_epoch=1,
                             producer_id=batch.producer_id, producer_epoch=batch.producer_epoch,
                             base_sequence=batch.base_sequence, record_count=batch.record_count,
                             attributes=batch.attributes, base_timestamp_ms=batch.base_timestamp_ms,
                             max_timestamp_ms=batch.max_timestamp_ms)
        if header.record_count > 1000:
            result.error_code, result.error_message = common_pb2.RECORD_BATCH_TOO_LARGE, "too many records (fake)"
            return
        states = s.producers[tp]
        decision = states.validate(header, 0)
        if decision.outcome is Outcome.REJECT:
            result.error_code, result.error_message = decision.error, decision.message
            return
        if decision.outcome is Outcome.DUPLICATE:
            result.base_offset, result.last_offset, result.duplicate = decision.first_offset, decision.last_offset, True
            return
        if header.is_transactional and states.opens_transaction(header):
            txn = s.txns.get(transactional_id)
            if (txn is None or txn.producer_id != header.producer_id or txn.epoch != header.producer_epoch
                    or tp not in txn.partitions):
                result.error_code = common_pb2.INVALID_TXN_STATE
                result.error_message = f"{tp} is not in the current transaction of {transactional_id!r}"
                return
        stored = common_pb2.RecordBatch()
        stored.CopyFrom(batch)
        stored.base_offset = header.base_offset
        stored.leader_epoch = 1
        s.logs[tp].append(stored)
        states.apply(header)
        result.base_offset, result.last_offset = header.base_offset, header.last_offset
        result.log_append_time_ms = -1

    # --- Transactions -------------------------------------------------------------------------
    def FindCoordinator(self, request, context):  # noqa: N802
        return txn_pb2.FindCoordinatorResponse(broker_id=self.broker_id, host="127.0.0.1", port=self.port)

    def InitProducerId(self, request, context):  # noqa: N802
        s: FakeEosState = self.state  # type: ignore[assignment]
        with s.lock:
            s.init_producer_id_calls.append(request)
            tid = request.transactional_id
            if not tid:
                if request.producer_id >= 0:  # KIP-360 bump of an idempotent producer
                    return txn_pb2.InitProducerIdResponse(producer_id=request.producer_id,
                                                          producer_epoch=request.producer_epoch + 1)
                s.next_producer_id += 1
                return txn_pb2.InitProducerIdResponse(producer_id=s.next_producer_id, producer_epoch=0)
            txn = s.txns.get(tid)
            if txn is None:
                s.next_producer_id += 1
                txn = s.txns[tid] = FakeTxn(s.next_producer_id, -1, request.transaction_timeout_ms)
            if txn.state == "ongoing":
                self.state._write_markers(txn, commit=False)  # type: ignore[attr-defined]
                txn.epoch += 1
            txn.epoch += 1
            txn.timed_out = False
            return txn_pb2.InitProducerIdResponse(producer_id=txn.producer_id, producer_epoch=txn.epoch)

    def _check(self, txn: FakeTxn | None, producer_id: int, epoch: int) -> tuple[int, str]:
        if txn is None or txn.producer_id != producer_id:
            return common_pb2.INVALID_PRODUCER_ID_MAPPING, "unknown producer id for this transactional id"
        if epoch != txn.epoch:
            if txn.timed_out:
                return common_pb2.TRANSACTION_TIMED_OUT, "the coordinator aborted the transaction after its timeout"
            return common_pb2.PRODUCER_FENCED, f"epoch {epoch} != current {txn.epoch}"
        return common_pb2.NONE, ""

    def AddPartitionsToTxn(self, request, context):  # noqa: N802
        s: FakeEosState = self.state  # type: ignore[assignment]
        with s.lock:
            s.add_partitions_calls += 1
            asked = {(p.topic, p.partition) for p in request.partitions}
            s.added_per_call.append(asked)
            if asked & s.unknown_partitions:
                return txn_pb2.AddPartitionsToTxnResponse(
                    error_code=common_pb2.UNKNOWN_TOPIC_OR_PARTITION,
                    error_message=f"unknown partitions {sorted(asked & s.unknown_partitions)}")
            txn = s.txns.get(request.transactional_id)
            code, message = self._check(txn, request.producer_id, request.producer_epoch)
            if code:
                return txn_pb2.AddPartitionsToTxnResponse(error_code=code, error_message=message)
            assert txn is not None
            txn.state = "ongoing"
            results = []
            for p in request.partitions:
                txn.partitions.add((p.topic, p.partition))
                results.append(txn_pb2.AddPartitionsResult(topic=p.topic, partition=p.partition))
            return txn_pb2.AddPartitionsToTxnResponse(results=results)

    def AddOffsetsToTxn(self, request, context):  # noqa: N802
        s: FakeEosState = self.state  # type: ignore[assignment]
        with s.lock:
            txn = s.txns.get(request.transactional_id)
            code, message = self._check(txn, request.producer_id, request.producer_epoch)
            if code:
                return txn_pb2.AddOffsetsToTxnResponse(error_code=code, error_message=message)
            assert txn is not None
            txn.state = "ongoing"
            txn.groups.add(request.group_id)
            return txn_pb2.AddOffsetsToTxnResponse()

    def EndTxn(self, request, context):  # noqa: N802
        s: FakeEosState = self.state  # type: ignore[assignment]
        with s.lock:
            s.end_txn_calls.append(request)
            txn = s.txns.get(request.transactional_id)
            if (txn is not None and txn.last_ended == (request.producer_epoch, request.commit)
                    and request.producer_id == txn.producer_id):
                return txn_pb2.EndTxnResponse(producer_id=txn.producer_id, producer_epoch=txn.epoch)
            code, message = self._check(txn, request.producer_id, request.producer_epoch)
            if code:
                return txn_pb2.EndTxnResponse(error_code=code, error_message=message)
            assert txn is not None
            if txn.state != "ongoing":
                return txn_pb2.EndTxnResponse(error_code=common_pb2.INVALID_TXN_STATE, error_message="no transaction")
            s._write_markers(txn, request.commit)
            txn.last_ended = (txn.epoch, request.commit)
            txn.epoch += 1
            return txn_pb2.EndTxnResponse(producer_id=txn.producer_id, producer_epoch=txn.epoch)


class _FakeGroups:
    """Only TxnOffsetCommit (recorded in state.offset_commits)."""

    def __init__(self, state: FakeEosState) -> None:
        self.state = state

    def TxnOffsetCommit(self, request, context):  # noqa: N802
        from semel.v1 import group_pb2

        with self.state.lock:
            self.state.offset_commits.append(request)
        return group_pb2.TxnOffsetCommitResponse()


# grpc's generated add_GroupsServicer_to_server looks the handlers up by name only.
for _name in ("ConsumerGroupHeartbeat", "OffsetCommit", "OffsetFetch", "ListGroups", "DescribeGroups",
              "DeleteGroup", "ResetOffsets"):
    setattr(_FakeGroups, _name, lambda self, request, context: context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake"))


def start_fake_eos_cluster(brokers: int = 1) -> tuple[FakeEosState, list[FakeEosBroker]]:
    state = FakeEosState()
    return state, [FakeEosBroker(state, broker_id=i + 1) for i in range(brokers)]


__all__ = ["FakeEosBroker", "FakeEosState", "start_fake_eos_cluster", "threading"]
