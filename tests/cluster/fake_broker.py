"""An in-process fake of the semel.v1 Broker + Admin services, for client tests without processes.

A fake, not a mock: it keeps real in-memory partition logs (a list of RecordBatch per
partition with assigned offsets), answers Metadata / Produce / Fetch / ListOffsets /
CreateTopics / DeleteTopics / DescribeTopics / DescribeCluster per the contract, and lets
a test inject per-partition produce errors (`fail_next_produce`). Several FakeBrokers can
share one `FakeClusterState` to play a multi-broker cluster, each answering
NOT_LEADER_OR_FOLLOWER for partitions it does not lead.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent import futures

import grpc
from semel.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, common_pb2


class FakeClusterState:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.brokers: dict[int, tuple[str, int]] = {}
        self.topics: dict[str, int] = {}                      # name -> partition count
        self.leaders: dict[tuple[str, int], int] = {}         # (topic, partition) -> broker id
        self.logs: dict[tuple[str, int], list[common_pb2.RecordBatch]] = collections.defaultdict(list)
        self.log_start: dict[tuple[str, int], int] = collections.defaultdict(int)
        self.produce_errors: dict[tuple[str, int], collections.deque[int]] = collections.defaultdict(collections.deque)
        self.produce_requests = 0
        self.metadata_requests = 0
        self.version = 0

    def end_offset(self, tp: tuple[str, int]) -> int:
        log = self.logs[tp]
        if not log:
            return self.log_start[tp]
        last = log[-1]
        return last.base_offset + last.last_offset_delta + 1

    def fail_next_produce(self, topic: str, partition: int, *codes: int) -> None:
        with self.lock:
            self.produce_errors[(topic, partition)].extend(codes)

    def create_topic(self, name: str, partitions: int) -> None:
        with self.lock:
            self.topics[name] = partitions
            ids = sorted(self.brokers)
            for p in range(partitions):
                self.leaders[(name, p)] = ids[p % len(ids)]
            self.version += 1

    def records(self, topic: str, partition: int) -> list[common_pb2.Record]:
        out = []
        for batch in self.logs[(topic, partition)]:
            recs = common_pb2.Records()
            recs.ParseFromString(batch.records)
            out.extend(recs.records)
        return out


class FakeBroker(broker_pb2_grpc.BrokerServicer, admin_pb2_grpc.AdminServicer):
    def __init__(self, state: FakeClusterState, broker_id: int = 1) -> None:
        self.state = state
        self.broker_id = broker_id
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 16 << 20),
                     ("grpc.max_send_message_length", 16 << 20)],
        )
        broker_pb2_grpc.add_BrokerServicer_to_server(self, self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        state.brokers[broker_id] = ("127.0.0.1", self.port)
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)

    # --- Broker -----------------------------------------------------------------------
    def Metadata(self, request, context):  # noqa: N802
        s = self.state
        with s.lock:
            s.metadata_requests += 1
            names = list(request.topics) or sorted(s.topics)
            topics = []
            for name in names:
                if name not in s.topics:
                    topics.append(broker_pb2.TopicMetadata(name=name, error_code=common_pb2.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                parts = []
                for p in range(s.topics[name]):
                    leader = s.leaders[(name, p)]
                    parts.append(broker_pb2.PartitionMetadata(
                        partition=p, leader_id=leader, leader_epoch=1, replicas=[leader], isr=[leader],
                        error_code=common_pb2.NONE if leader >= 0 else common_pb2.LEADER_NOT_AVAILABLE))
                topics.append(broker_pb2.TopicMetadata(name=name, topic_id=name, partitions=parts))
            return broker_pb2.MetadataResponse(
                cluster_id="fake", controller_id=min(s.brokers), metadata_version=s.version,
                brokers=[broker_pb2.BrokerInfo(broker_id=b, host=h, port=p) for b, (h, p) in sorted(s.brokers.items())],
                topics=topics,
            )

    def _refuse(self, s, pd, result) -> bool:
        """Set `result`'s error if this broker cannot append `pd` (no such partition, not its
        leader, an injected error); True when it did."""
        if pd.topic not in s.topics or not 0 <= pd.partition < s.topics[pd.topic]:
            result.error_code = common_pb2.UNKNOWN_TOPIC_OR_PARTITION
        elif s.leaders[(pd.topic, pd.partition)] != self.broker_id:
            result.error_code = common_pb2.NOT_LEADER_OR_FOLLOWER
        elif s.produce_errors[(pd.topic, pd.partition)]:
            result.error_code = s.produce_errors[(pd.topic, pd.partition)].popleft()
            result.error_message = "injected"
        else:
            return False
        return True

    def Produce(self, request, context):  # noqa: N802
        s = self.state
        results = []
        with s.lock:
            s.produce_requests += 1
            for pd in request.partitions:
                tp = (pd.topic, pd.partition)
                result = broker_pb2.PartitionProduceResult(topic=pd.topic, partition=pd.partition)
                if not self._refuse(s, pd, result):
                    batch = common_pb2.RecordBatch()
                    batch.CopyFrom(pd.batch)
                    batch.base_offset = s.end_offset(tp)
                    batch.leader_epoch = 1
                    s.logs[tp].append(batch)
                    result.base_offset = batch.base_offset
                    result.last_offset = batch.base_offset + batch.last_offset_delta
                    result.log_append_time_ms = -1
                results.append(result)
            s.lock.notify_all()
        return broker_pb2.ProduceResponse(results=results)

    def Fetch(self, request, context):  # noqa: N802
        s = self.state
        deadline = time.monotonic() + request.max_wait_ms / 1000
        with s.lock:
            while True:
                results, total = self._fetch_locked(request)
                if total > 0 or time.monotonic() >= deadline:
                    return broker_pb2.FetchResponse(results=results)
                s.lock.wait(max(0.0, deadline - time.monotonic()))

    def _fetch_locked(self, request):
        s = self.state
        results, total = [], 0
        for fp in request.partitions:
            tp = (fp.topic, fp.partition)
            r = broker_pb2.FetchPartitionResult(topic=fp.topic, partition=fp.partition)
            if fp.topic not in s.topics:
                r.error_code = common_pb2.UNKNOWN_TOPIC_OR_PARTITION
            elif s.leaders[tp] != self.broker_id:
                r.error_code = common_pb2.NOT_LEADER_OR_FOLLOWER
            else:
                end = s.end_offset(tp)
                r.high_watermark = r.last_stable_offset = end
                r.log_start_offset = s.log_start[tp]
                if not s.log_start[tp] <= fp.fetch_offset <= end:
                    r.error_code = common_pb2.OFFSET_OUT_OF_RANGE
                else:
                    size = 0
                    for batch in s.logs[tp]:
                        if batch.base_offset + batch.last_offset_delta < fp.fetch_offset:
                            continue
                        if r.batches and size + len(batch.records) > fp.max_bytes:
                            break
                        r.batches.append(batch)
                        size += len(batch.records)
                    total += size
                    if r.batches:
                        last = r.batches[-1]
                        r.next_fetch_offset = last.base_offset + last.last_offset_delta + 1
                    else:
                        r.next_fetch_offset = fp.fetch_offset
            results.append(r)
        return results, total

    def ListOffsets(self, request, context):  # noqa: N802
        s = self.state
        out = []
        with s.lock:
            for lp in request.partitions:
                tp = (lp.topic, lp.partition)
                r = broker_pb2.ListOffsetsResult(topic=lp.topic, partition=lp.partition)
                if lp.topic not in s.topics:
                    r.error_code = common_pb2.UNKNOWN_TOPIC_OR_PARTITION
                elif s.leaders[tp] != self.broker_id:
                    r.error_code = common_pb2.NOT_LEADER_OR_FOLLOWER
                else:
                    r.offset = s.log_start[tp] if lp.timestamp_ms == -2 else s.end_offset(tp)
                out.append(r)
        return broker_pb2.ListOffsetsResponse(results=out)

    # --- Admin ------------------------------------------------------------------------
    def CreateTopics(self, request, context):  # noqa: N802
        results = []
        for t in request.topics:
            r = admin_pb2.TopicResult(name=t.name)
            if t.name in self.state.topics:
                r.error_code = common_pb2.TOPIC_ALREADY_EXISTS
                r.error_message = f"topic {t.name!r} already exists"
            elif not t.name or t.name.startswith("__"):
                r.error_code = common_pb2.INVALID_TOPIC_NAME
            elif t.partitions < 1:
                r.error_code = common_pb2.INVALID_PARTITIONS
            elif not request.validate_only:
                self.state.create_topic(t.name, t.partitions)
            results.append(r)
        return admin_pb2.CreateTopicsResponse(results=results)

    def DeleteTopics(self, request, context):  # noqa: N802
        results = []
        with self.state.lock:
            for name in request.names:
                r = admin_pb2.TopicResult(name=name)
                if name not in self.state.topics:
                    r.error_code = common_pb2.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    count = self.state.topics.pop(name)
                    for p in range(count):
                        self.state.leaders.pop((name, p), None)
                        self.state.logs.pop((name, p), None)
                results.append(r)
        return admin_pb2.DeleteTopicsResponse(results=results)

    def DescribeTopics(self, request, context):  # noqa: N802
        s = self.state
        with s.lock:
            names = list(request.names) or sorted(s.topics)
            out = []
            for name in names:
                if name not in s.topics:
                    out.append(admin_pb2.TopicDescription(name=name, error_code=common_pb2.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                parts = []
                for p in range(s.topics[name]):
                    leader = s.leaders[(name, p)]
                    end = s.end_offset((name, p))
                    parts.append(admin_pb2.PartitionDescription(
                        partition=p, leader_id=leader, leader_epoch=1, replicas=[leader], isr=[leader],
                        high_watermark=end, last_stable_offset=end, log_start_offset=s.log_start[(name, p)]))
                out.append(admin_pb2.TopicDescription(name=name, topic_id=name, partitions=parts))
        return admin_pb2.DescribeTopicsResponse(topics=out)

    def DescribeCluster(self, request, context):  # noqa: N802
        s = self.state
        controller = min(s.brokers)
        return admin_pb2.DescribeClusterResponse(
            cluster_id="fake", controller_id=controller, metadata_version=s.version,
            brokers=[admin_pb2.BrokerDescription(broker_id=b, host=h, port=p, is_controller=b == controller)
                     for b, (h, p) in sorted(s.brokers.items())],
        )


def start_fake_cluster(brokers: int = 1) -> tuple[FakeClusterState, list[FakeBroker]]:
    state = FakeClusterState()
    return state, [FakeBroker(state, broker_id=i + 1) for i in range(brokers)]
