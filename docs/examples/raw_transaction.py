"""A transaction over the raw gRPC API: what a client in any language has to do.

Only the stubs generated from proto/semel/v1/*.proto are used (here the Python ones; any
language's protoc/gRPC plugin gives the same messages), no Semel client library. The steps
follow docs/protocol.md:

  1. Metadata: who leads each partition.
  2. FindCoordinator + InitProducerId: the transactional id's coordinator hands out a producer
     id and epoch (and fences any older producer of the id).
  3. A transaction over two topics: AddPartitionsToTxn, one TRANSACTIONAL batch per partition
     (producer id, epoch, per-partition sequence from 0), EndTxn(commit). EndTxn answers the
     epoch for the next transaction (KIP-890); sequences restart at 0 with it.
  4. A second transaction, aborted.
  5. Wait until each partition is stable (LSO = HW: EndTxn answers before the markers are
     written), then Fetch with READ_COMMITTED: the first transaction's records, never the
     second's, no markers.
  6. A second producer with the same transactional id fences the first.

Run it against a cluster (`make up` in another terminal):

    .venv/bin/python docs/examples/raw_transaction.py --bootstrap 127.0.0.1:9092

It creates two topics named after the current time, prints each step and exits 0 when every
check held. Retries are minimal here (a real client retries every retriable ErrorCode with
backoff, see docs/protocol.md); tests/cluster/test_protocol_example.py runs it in CI.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc

from semel.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, common_pb2, txn_pb2, txn_pb2_grpc
from semel.v1.common_pb2 import ErrorCode

RETRIABLE = {ErrorCode.NOT_COORDINATOR, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, ErrorCode.COORDINATOR_NOT_AVAILABLE,
             ErrorCode.CONCURRENT_TRANSACTIONS, ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.LEADER_NOT_AVAILABLE,
             ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.NOT_ENOUGH_REPLICAS, ErrorCode.REQUEST_TIMED_OUT}


class Failed(Exception):
    pass


def step(text: str) -> None:
    print(f"- {text}", flush=True)


def until_final(call, what: str, timeout_s: float = 30.0):
    """Repeat `call()` while it answers a retriable ErrorCode (or the transport fails)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            resp = call()
            code = resp.error_code
            if code not in RETRIABLE:
                return resp
            why = f"{ErrorCode.Name(code)}: {resp.error_message}"
        except grpc.RpcError as exc:
            why = f"transport: {exc.code().name}"
        if time.monotonic() > deadline:
            raise Failed(f"{what}: still failing after {timeout_s:.0f} s ({why})")
        time.sleep(0.1)


def expect_ok(resp, what: str) -> None:
    if resp.error_code != ErrorCode.NONE:
        raise Failed(f"{what}: {ErrorCode.Name(resp.error_code)}: {resp.error_message}")


class Cluster:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap.split(",")[0]
        self.channels: dict[str, grpc.Channel] = {}

    def channel(self, address: str) -> grpc.Channel:
        if address not in self.channels:
            self.channels[address] = grpc.insecure_channel(address)
        return self.channels[address]

    def metadata(self, topics: list[str]) -> broker_pb2.MetadataResponse:
        stub = broker_pb2_grpc.BrokerStub(self.channel(self.bootstrap))
        return stub.Metadata(broker_pb2.MetadataRequest(topics=topics), timeout=5)

    def leader(self, topic: str, partition: int, timeout_s: float = 30.0) -> str:
        """host:port of the partition's leader (waits while none is elected)."""
        deadline = time.monotonic() + timeout_s
        while True:
            md = self.metadata([topic])
            brokers = {b.broker_id: f"{b.host}:{b.port}" for b in md.brokers}
            t = md.topics[0]
            if t.error_code == ErrorCode.NONE and t.partitions[partition].leader_id in brokers:
                return brokers[t.partitions[partition].leader_id]
            if time.monotonic() > deadline:
                raise Failed(f"no leader for {topic}-{partition} after {timeout_s:.0f} s")
            time.sleep(0.1)

    def coordinator(self, transactional_id: str) -> txn_pb2_grpc.TransactionsStub:
        stub = txn_pb2_grpc.TransactionsStub(self.channel(self.bootstrap))
        found = until_final(lambda: stub.FindCoordinator(txn_pb2.FindCoordinatorRequest(
            key=transactional_id, key_type=txn_pb2.TRANSACTION), timeout=5), "FindCoordinator")
        expect_ok(found, "FindCoordinator")
        return txn_pb2_grpc.TransactionsStub(self.channel(f"{found.host}:{found.port}"))


class TransactionalProducer:
    """Producer id, epoch and one sequence counter per partition; one transaction at a time."""

    def __init__(self, cluster: Cluster, transactional_id: str) -> None:
        self.c = cluster
        self.tid = transactional_id
        self.coordinator = cluster.coordinator(transactional_id)
        init = until_final(lambda: self.coordinator.InitProducerId(txn_pb2.InitProducerIdRequest(
            transactional_id=transactional_id, transaction_timeout_ms=60_000, producer_id=-1, producer_epoch=-1),
            timeout=10), "InitProducerId")
        expect_ok(init, "InitProducerId")
        self.producer_id, self.epoch = init.producer_id, init.producer_epoch
        self.sequence: dict[tuple[str, int], int] = {}

    def add_partitions(self, partitions: list[tuple[str, int]]):
        return until_final(lambda: self.coordinator.AddPartitionsToTxn(txn_pb2.AddPartitionsToTxnRequest(
            transactional_id=self.tid, producer_id=self.producer_id, producer_epoch=self.epoch,
            partitions=[txn_pb2.TopicPartition(topic=t, partition=p) for t, p in partitions]), timeout=10),
            "AddPartitionsToTxn")

    def send(self, topic: str, partition: int, values: list[bytes]) -> int:
        """One TRANSACTIONAL batch; returns its base offset. A retry resends the *same* batch
        (same sequence): the leader answers the original offsets, marked duplicate."""
        now = int(time.time() * 1000)
        records = common_pb2.Records(records=[
            common_pb2.Record(offset_delta=i, timestamp_delta_ms=0, value=v) for i, v in enumerate(values)])
        batch = common_pb2.RecordBatch(
            last_offset_delta=len(values) - 1, record_count=len(values), attributes=common_pb2.TRANSACTIONAL,
            producer_id=self.producer_id, producer_epoch=self.epoch,
            base_sequence=self.sequence.get((topic, partition), 0),
            base_timestamp_ms=now, max_timestamp_ms=now, records=records.SerializeToString())
        request = broker_pb2.ProduceRequest(acks=broker_pb2.ACKS_ALL, timeout_ms=10_000, transactional_id=self.tid,
                                            partitions=[broker_pb2.PartitionProduceData(
                                                topic=topic, partition=partition, batch=batch)])

        def produce():
            stub = broker_pb2_grpc.BrokerStub(self.c.channel(self.c.leader(topic, partition)))
            return stub.Produce(request, timeout=15).results[0]
        result = until_final(produce, f"Produce to {topic}-{partition}")
        expect_ok(result, f"Produce to {topic}-{partition}")
        self.sequence[(topic, partition)] = batch.base_sequence + len(values)
        return result.base_offset

    def end(self, commit: bool) -> None:
        resp = until_final(lambda: self.coordinator.EndTxn(txn_pb2.EndTxnRequest(
            transactional_id=self.tid, producer_id=self.producer_id, producer_epoch=self.epoch, commit=commit),
            timeout=10), "EndTxn")
        expect_ok(resp, "EndTxn")
        # KIP-890: every transaction end bumps the epoch; the next transaction uses the answer,
        # and its sequences start again at 0.
        self.producer_id, self.epoch = resp.producer_id, resp.producer_epoch
        self.sequence.clear()


def read(cluster: Cluster, topic: str, partition: int, committed: bool) -> tuple[list[bytes], int]:
    """Every value from offset 0 up to the LSO (read_committed) or the HW, and the number of
    control batches (markers) the broker returned on the way."""
    isolation = broker_pb2.READ_COMMITTED if committed else broker_pb2.READ_UNCOMMITTED
    offset, values, markers = 0, [], 0
    while True:
        stub = broker_pb2_grpc.BrokerStub(cluster.channel(cluster.leader(topic, partition)))
        r = stub.Fetch(broker_pb2.FetchRequest(isolation_level=isolation, max_wait_ms=0, max_bytes=1 << 20,
                                               partitions=[broker_pb2.FetchPartition(
                                                   topic=topic, partition=partition, fetch_offset=offset,
                                                   max_bytes=1 << 20)]), timeout=10).results[0]
        expect_ok(r, f"Fetch {topic}-{partition}")
        for b in r.batches:
            if b.attributes & common_pb2.CONTROL:
                markers += 1
                continue
            for rec in common_pb2.Records.FromString(b.records).records:
                if b.base_offset + rec.offset_delta >= offset:
                    values.append(rec.value)
        end = r.last_stable_offset if committed else r.high_watermark
        if r.next_fetch_offset <= offset or r.next_fetch_offset >= end:
            return values, markers
        offset = r.next_fetch_offset


def wait_until_stable(cluster: Cluster, topic: str, partition: int, timeout_s: float = 10.0) -> None:
    """EndTxn answers once the outcome is decided, before every marker is written. A reader that
    wants to see the markers waits until the partition has no open transaction: its last stable
    offset has caught up with its high watermark."""
    deadline = time.monotonic() + timeout_s
    while True:
        stub = broker_pb2_grpc.BrokerStub(cluster.channel(cluster.leader(topic, partition)))
        r = stub.Fetch(broker_pb2.FetchRequest(isolation_level=broker_pb2.READ_COMMITTED, max_wait_ms=0, max_bytes=1,
                                               partitions=[broker_pb2.FetchPartition(
                                                   topic=topic, partition=partition, fetch_offset=0, max_bytes=1)]),
                       timeout=10).results[0]
        expect_ok(r, f"Fetch {topic}-{partition}")
        if r.last_stable_offset == r.high_watermark:
            return
        if time.monotonic() > deadline:
            raise Failed(f"{topic}-{partition}: LSO {r.last_stable_offset} still below HW {r.high_watermark} "
                         f"after {timeout_s} s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="a broker, HOST:PORT (default 127.0.0.1:9092)")
    args = parser.parse_args(argv)
    c = Cluster(args.bootstrap)
    suffix = time.strftime("%H%M%S")
    debits, credits = f"debits-{suffix}", f"credits-{suffix}"
    tid = f"payments-{suffix}"
    try:
        admin = admin_pb2_grpc.AdminStub(c.channel(c.bootstrap))
        created = admin.CreateTopics(admin_pb2.CreateTopicsRequest(topics=[
            admin_pb2.NewTopic(name=name, partitions=1) for name in (debits, credits)]),
            timeout=30)
        for result in created.results:
            expect_ok(result, f"CreateTopics {result.name}")
        step(f"created topics {debits} and {credits}; leaders {c.leader(debits, 0)} and {c.leader(credits, 0)}")

        p = TransactionalProducer(c, tid)
        step(f"InitProducerId({tid!r}): producer id {p.producer_id}, epoch {p.epoch}")

        added = p.add_partitions([(debits, 0), (credits, 0)])
        expect_ok(added, "AddPartitionsToTxn")
        p.send(debits, 0, [b"alice -10"])
        p.send(credits, 0, [b"bob +10"])
        p.end(commit=True)
        step(f"transaction 1 committed (debit and credit); next epoch {p.epoch}")

        expect_ok(p.add_partitions([(debits, 0), (credits, 0)]), "AddPartitionsToTxn")
        p.send(debits, 0, [b"carol -99"])
        p.send(credits, 0, [b"dave +99"])
        p.end(commit=False)
        step(f"transaction 2 aborted; next epoch {p.epoch}")

        for topic, want in ((debits, [b"alice -10"]), (credits, [b"bob +10"])):
            wait_until_stable(c, topic, 0)
            got, markers = read(c, topic, 0, committed=True)
            if got != want or markers:
                raise Failed(f"read_committed {topic}: {got} with {markers} marker(s), expected {want} and none")
            everything, markers = read(c, topic, 0, committed=False)
            if len(everything) != 2 or markers != 2:
                raise Failed(f"read_uncommitted {topic}: {everything}, {markers} marker(s)")
        step("read_committed sees transaction 1 only; read_uncommitted sees both and their 2 markers")

        zombie = p
        p = TransactionalProducer(c, tid)  # a new instance of the same application
        step(f"a second InitProducerId({tid!r}): epoch {p.epoch} fences epoch {zombie.epoch}")
        stale = zombie.add_partitions([(debits, 0)])
        if stale.error_code != ErrorCode.PRODUCER_FENCED:
            raise Failed(f"the fenced producer's AddPartitionsToTxn answered {ErrorCode.Name(stale.error_code)}")
        step(f"the old instance is refused: {ErrorCode.Name(stale.error_code)} ({stale.error_message})")
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"FAILED: transport error {exc.code().name} talking to {args.bootstrap}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
