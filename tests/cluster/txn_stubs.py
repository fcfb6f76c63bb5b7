"""A tiny transactional producer over raw gRPC stubs, for the broker's transaction tests
(independent of the client library). Synchronous; every call retries the retriable
coordinator answers until `timeout_s`."""

from __future__ import annotations

import time

import grpc
from semel.storage.batch import ATTR_TRANSACTIONAL
from semel.v1 import broker_pb2, common_pb2, txn_pb2, txn_pb2_grpc
from semel.v1.common_pb2 import ErrorCode

from tests.cluster import broker_harness as h

RETRIABLE = {ErrorCode.NOT_COORDINATOR, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, ErrorCode.COORDINATOR_NOT_AVAILABLE,
             ErrorCode.CONCURRENT_TRANSACTIONS, ErrorCode.REQUEST_TIMED_OUT}
RETRIABLE_PRODUCE = {ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.NOT_ENOUGH_REPLICAS, ErrorCode.COORDINATOR_NOT_AVAILABLE,
                     ErrorCode.REQUEST_TIMED_OUT, ErrorCode.NOT_COORDINATOR, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
                     ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}


class TxnError(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(f"{ErrorCode.Name(code)}: {message}")
        self.code = code


def txn_stub(c: h.Cluster, broker_id: int) -> txn_pb2_grpc.TransactionsStub:
    return txn_pb2_grpc.TransactionsStub(c.channel(broker_id))


def find_coordinator(c: h.Cluster, tid: str, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = txn_stub(c, c.any_alive()).FindCoordinator(txn_pb2.FindCoordinatorRequest(key=tid), timeout=2)
            if r.error_code == ErrorCode.NONE and c.brokers[r.broker_id].alive:
                return r.broker_id
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no coordinator for {tid!r}\n" + c.dump_logs())
        time.sleep(0.05)


def coordinator_call(c: h.Cluster, tid: str, method: str, request: object, timeout_s: float = 30.0,
                     retriable: set[int] = RETRIABLE) -> object:
    """Call `method` on the coordinator of `tid`, retrying retriable answers; returns the
    first final response (error or not)."""
    deadline = time.monotonic() + timeout_s
    while True:
        broker = find_coordinator(c, tid, max(1.0, deadline - time.monotonic()))
        try:
            resp = getattr(txn_stub(c, broker), method)(request, timeout=10)
            if resp.error_code not in retriable:
                return resp
            last = ErrorCode.Name(resp.error_code)
        except grpc.RpcError as exc:
            last = str(exc.code())
        if time.monotonic() > deadline:
            raise TimeoutError(f"{method} for {tid!r} kept failing ({last})\n" + c.dump_logs())
        time.sleep(0.05)


def describe(c: h.Cluster, tid: str, timeout_s: float = 20.0) -> txn_pb2.TransactionDescription:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            d = txn_stub(c, find_coordinator(c, tid)).DescribeTransactions(
                txn_pb2.DescribeTransactionsRequest(transactional_ids=[tid]), timeout=5).transactions[0]
            if d.error_code not in RETRIABLE:
                return d
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"cannot describe {tid!r}")
        time.sleep(0.05)


def txn_batch(values: list[bytes], producer_id: int, producer_epoch: int, base_sequence: int) -> common_pb2.RecordBatch:
    b = h.make_batch(values, producer_id=producer_id, producer_epoch=producer_epoch, base_sequence=base_sequence)
    b.attributes = ATTR_TRANSACTIONAL
    return b


class TxnProducer:
    """One transactional id: init, add partitions, send, commit/abort."""

    def __init__(self, c: h.Cluster, tid: str, timeout_ms: int = 60_000) -> None:
        self.c = c
        self.tid = tid
        self.timeout_ms = timeout_ms
        self.pid = -1
        self.epoch = -1
        self.seq: dict[tuple[str, int], int] = {}
        self.added: set[tuple[str, int]] = set()

    def init(self) -> TxnProducer:
        r = coordinator_call(self.c, self.tid, "InitProducerId", txn_pb2.InitProducerIdRequest(
            transactional_id=self.tid, transaction_timeout_ms=self.timeout_ms, producer_id=-1, producer_epoch=-1))
        if r.error_code != ErrorCode.NONE:
            raise TxnError(r.error_code, r.error_message)
        self.pid, self.epoch = r.producer_id, r.producer_epoch
        self.seq.clear()
        self.added.clear()
        return self

    def add(self, *partitions: tuple[str, int]) -> None:
        new = [tp for tp in partitions if tp not in self.added]
        if not new:
            return
        r = coordinator_call(self.c, self.tid, "AddPartitionsToTxn", txn_pb2.AddPartitionsToTxnRequest(
            transactional_id=self.tid, producer_id=self.pid, producer_epoch=self.epoch,
            partitions=[txn_pb2.TopicPartition(topic=t, partition=p) for t, p in new]))
        if r.error_code != ErrorCode.NONE:
            raise TxnError(r.error_code, r.error_message)
        self.added.update(new)

    def send(self, topic: str, partition: int, values: list[bytes], add: bool = True,
             timeout_s: float = 20.0) -> broker_pb2.PartitionProduceResult:
        """Produce one transactional batch (retrying retriable errors); raises TxnError on a final one."""
        if add:
            self.add((topic, partition))
        seq = self.seq.get((topic, partition), 0)
        batch = txn_batch(values, self.pid, self.epoch, seq)
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.c.leader_of(topic, partition)
            try:
                resp = self.c.broker_stub(leader).Produce(broker_pb2.ProduceRequest(
                    acks=broker_pb2.ACKS_ALL, timeout_ms=5000, transactional_id=self.tid,
                    partitions=[broker_pb2.PartitionProduceData(topic=topic, partition=partition, batch=batch)]),
                    timeout=10)
                r = resp.results[0]
                if r.error_code == ErrorCode.NONE:
                    self.seq[(topic, partition)] = seq + len(values)
                    return r
                if r.error_code not in RETRIABLE_PRODUCE:
                    raise TxnError(r.error_code, r.error_message)
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"produce to {topic}-{partition} kept failing\n" + self.c.dump_logs())
            time.sleep(0.05)

    def end(self, commit: bool) -> None:
        r = self.end_raw(commit)
        if r.error_code != ErrorCode.NONE:
            raise TxnError(r.error_code, r.error_message)
        self.pid, self.epoch = r.producer_id, r.producer_epoch
        self.seq.clear()
        self.added.clear()

    def end_raw(self, commit: bool, timeout_s: float = 30.0) -> txn_pb2.EndTxnResponse:
        return coordinator_call(self.c, self.tid, "EndTxn", txn_pb2.EndTxnRequest(
            transactional_id=self.tid, producer_id=self.pid, producer_epoch=self.epoch, commit=commit),
            timeout_s=timeout_s)

    def commit(self) -> None:
        self.end(True)

    def abort(self) -> None:
        self.end(False)


def read(c: h.Cluster, topic: str, partition: int = 0, committed: bool = True) -> tuple[list[bytes], int]:
    """(values up to the LSO / HW, the offset where reading stopped) from the current leader."""
    isolation = broker_pb2.READ_COMMITTED if committed else broker_pb2.READ_UNCOMMITTED
    stub = c.broker_stub(c.leader_of(topic, partition))
    values: list[bytes] = []
    offset = 0
    while True:
        r = h.fetch(stub, topic, partition, offset, isolation=isolation)
        if r.error_code != ErrorCode.NONE:
            raise TxnError(r.error_code, r.error_message)
        for b in r.batches:
            if b.attributes & 0x20:  # a marker: read_uncommitted readers get them, read_committed never
                assert not committed, "a control batch reached a read_committed reader"
                continue
            for rec in common_pb2.Records.FromString(b.records).records:
                if b.base_offset + rec.offset_delta >= offset:
                    values.append(rec.value)
        bound = r.last_stable_offset if committed else r.high_watermark
        if r.next_fetch_offset <= offset or r.next_fetch_offset >= bound:
            return values, max(offset, r.next_fetch_offset)
        offset = r.next_fetch_offset


def list_offset(c: h.Cluster, topic: str, partition: int = 0, committed: bool = True) -> int:
    isolation = broker_pb2.READ_COMMITTED if committed else broker_pb2.READ_UNCOMMITTED
    stub = c.broker_stub(c.leader_of(topic, partition))
    resp = stub.ListOffsets(broker_pb2.ListOffsetsRequest(isolation_level=isolation, partitions=[
        broker_pb2.ListOffsetsPartition(topic=topic, partition=partition, timestamp_ms=-1)]), timeout=5)
    return resp.results[0].offset
