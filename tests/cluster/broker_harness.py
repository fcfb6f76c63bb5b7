"""Minimal multi-process harness for the broker's own tests: real broker processes on loopback.

Each broker is `python -m semel.cluster.broker` with its own free gRPC and Raft ports and data
dir; readiness is the `SEMEL_BROKER_READY` line on stdout. Logs go to `<data dir>/broker.log`
(printed by `dump_logs()` when a test fails). Tests talk raw gRPC stubs, not the client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from semel import limits
from semel.clock import wall_clock_ms
from semel.cluster.tooling.ports import free_ports
from semel.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, common_pb2, txn_pb2, txn_pb2_grpc

if TYPE_CHECKING:
    from semel.client import ClientSecurity

READY = "SEMEL_BROKER_READY"
EVENT_LOOP_ENV = "SEMEL_TEST_BROKER_EVENT_LOOP"
REPLICATION_TRANSPORT_ENV = "SEMEL_TEST_BROKER_REPLICATION_TRANSPORT"


@dataclass
class BrokerProc:
    broker_id: int
    port: int
    raft_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, root: Path, n: int, voters: int | None = None, *,
                 credentials: grpc.ChannelCredentials | None = None, **flags: object) -> None:
        """`credentials`: TLS (+ call credentials) for the harness's own channels (None: plaintext)."""
        self.credentials = credentials
        self.root = root
        self.flags = flags
        ports = free_ports(2 * n)
        self.brokers = {
            i: BrokerProc(i, ports[2 * i - 2], ports[2 * i - 1], root / f"broker-{i}") for i in range(1, n + 1)
        }
        nv = n if voters is None else voters
        self.voters = ",".join(f"{b.broker_id}@127.0.0.1:{b.raft_port}@{b.address}"
                               for b in list(self.brokers.values())[:nv])
        self._voter_ids = set(list(self.brokers)[:nv])
        self._channels: dict[str, grpc.Channel] = {}

    # --- processes -----------------------------------------------------------------------
    def start(self, broker_id: int) -> None:
        b = self.brokers[broker_id]
        b.data_dir.mkdir(parents=True, exist_ok=True)
        b.ready = threading.Event()
        args = [sys.executable, "-m", "semel.cluster.broker", "--broker-id", str(broker_id),
                "--listen", b.address, "--data-dir", str(b.data_dir), "--voters", self.voters]
        if broker_id in self._voter_ids:
            args += ["--raft", f"127.0.0.1:{b.raft_port}"]
        flags = dict(self.flags)
        # SEMEL_TEST_BROKER_EVENT_LOOP=uvloop runs every harness cluster on that event loop
        # (docs/benchmarks.md: uvloop is opt-in; this runs the process tests on it).
        if os.environ.get(EVENT_LOOP_ENV) and "event_loop" not in flags:
            flags["event_loop"] = os.environ[EVENT_LOOP_ENV]
        # SEMEL_TEST_BROKER_REPLICATION_TRANSPORT=tcp: the same for the internal replication transport.
        if os.environ.get(REPLICATION_TRANSPORT_ENV) and "replication_transport" not in flags:
            flags["replication_transport"] = os.environ[REPLICATION_TRANSPORT_ENV]
        for k, v in flags.items():  # "{id}" in a value: this broker's id (its own certificate)
            args += [f"--{k.replace('_', '-')}", str(v).replace("{id}", str(broker_id))]
        log = open(b.data_dir / "broker.log", "ab")
        # No preexec_fn: forking this gRPC-using process in Python runs gRPC's fork handlers in
        # the child, which can abort it before exec. The broker sets PDEATHSIG itself.
        env = dict(os.environ, SEMEL_BROKER_DIE_WITH_PARENT="1")
        b.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1, env=env)
        log.close()
        threading.Thread(target=self._watch, args=(b, b.proc, b.ready), daemon=True).start()

    @staticmethod
    def _watch(b: BrokerProc, proc: subprocess.Popen, ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY):
                ready.set()

    def start_all(self, timeout_s: float = 60.0) -> None:
        for i in self.brokers:
            self.start(i)
        self.wait_ready(list(self.brokers), timeout_s)

    def wait_ready(self, ids: list[int], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        for i in ids:
            b = self.brokers[i]
            while not b.ready.wait(0.05):
                if not b.alive:
                    raise RuntimeError(f"broker {i} exited with {b.proc.returncode if b.proc else None}:\n"
                                       + self.log_tail(i))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"broker {i} not ready in {timeout_s}s:\n" + self.log_tail(i))

    def kill(self, broker_id: int) -> None:
        b = self.brokers[broker_id]
        if b.proc is not None and b.alive:
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait()

    def terminate(self, broker_id: int, timeout_s: float = 10.0) -> None:
        b = self.brokers[broker_id]
        if b.proc is not None and b.alive:
            b.proc.send_signal(signal.SIGTERM)
            try:
                b.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait()

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        for i in self.brokers:
            self.kill(i)

    def log_tail(self, broker_id: int, lines: int = 60) -> str:
        path = self.brokers[broker_id].data_dir / "broker.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def dump_logs(self) -> str:
        return "\n".join(f"===== broker {i} =====\n{self.log_tail(i)}" for i in self.brokers)

    # --- gRPC ----------------------------------------------------------------------------
    def channel(self, broker_id: int) -> grpc.Channel:
        addr = self.brokers[broker_id].address
        ch = self._channels.get(addr)
        if ch is None:
            options = [
                ("grpc.max_receive_message_length", limits.MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", limits.MAX_REQUEST_BYTES),
                ("grpc.initial_reconnect_backoff_ms", 50),
                ("grpc.max_reconnect_backoff_ms", 200),
            ]
            ch = (grpc.insecure_channel(addr, options=options) if self.credentials is None
                  else grpc.secure_channel(addr, self.credentials, options=options))
            self._channels[addr] = ch
        return ch

    def broker_stub(self, broker_id: int) -> broker_pb2_grpc.BrokerStub:
        return broker_pb2_grpc.BrokerStub(self.channel(broker_id))

    def admin_stub(self, broker_id: int) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel(broker_id))

    def any_alive(self) -> int:
        return next(i for i, b in self.brokers.items() if b.alive)

    def create_topic(self, name: str, partitions: int = 1, rf: int = 3, via: int | None = None,
                     configs: dict[str, str] | None = None, timeout_ms: int = 10_000) -> admin_pb2.TopicResult:
        stub = self.admin_stub(via or self.any_alive())
        resp = stub.CreateTopics(admin_pb2.CreateTopicsRequest(topics=[admin_pb2.NewTopic(
            name=name, partitions=partitions, replication_factor=rf, configs=configs or {})], timeout_ms=timeout_ms),
            timeout=timeout_ms / 1000 + 5)
        return resp.results[0]

    def created(self, name: str, partitions: int = 1, rf: int = 3, configs: dict[str, str] | None = None) -> str:
        """Create `name` (it must not exist) and wait until each partition's leader serves it."""
        r = self.create_topic(name, partitions=partitions, rf=rf, configs=configs)
        assert r.error_code == common_pb2.NONE, r
        for p in range(partitions):
            self.serving_leader_of(name, p)
        return name

    def metadata(self, via: int | None = None, topics: list[str] | None = None) -> broker_pb2.MetadataResponse:
        return self.broker_stub(via or self.any_alive()).Metadata(broker_pb2.MetadataRequest(topics=topics or []),
                                                                  timeout=5)

    def partition_meta(self, topic: str, partition: int = 0, via: int | None = None) -> broker_pb2.PartitionMetadata:
        md = self.metadata(via, [topic])
        return md.topics[0].partitions[partition]

    def wait_for(self, predicate, timeout_s: float = 15.0, interval_s: float = 0.02, what: str = "condition"):
        return wait_for(predicate, self.dump_logs, timeout_s, interval_s, what)

    def leader_of(self, topic: str, partition: int = 0) -> int:
        def find() -> int:
            for i, b in self.brokers.items():
                if not b.alive:
                    continue
                with contextlib.suppress(grpc.RpcError, IndexError):  # IndexError: topic not in its image yet
                    pm = self.partition_meta(topic, partition, via=i)
                    if pm.leader_id >= 0 and self.brokers[pm.leader_id].alive:
                        return pm.leader_id
            return 0
        return self.wait_for(find, what=f"a live leader of {topic}-{partition}")

    def serving_leader_of(self, topic: str, partition: int = 0) -> int:
        """The leader once it serves the partition itself: another broker's image can name a
        leader that has not applied the topic yet (it answers UNKNOWN_TOPIC_OR_PARTITION)."""
        def find() -> int:
            leader = self.leader_of(topic, partition)
            with contextlib.suppress(grpc.RpcError):
                r = self.broker_stub(leader).ListOffsets(broker_pb2.ListOffsetsRequest(partitions=[
                    broker_pb2.ListOffsetsPartition(topic=topic, partition=partition, timestamp_ms=-1)]), timeout=5)
                if r.results and r.results[0].error_code == common_pb2.NONE:
                    return leader
            return 0
        return self.wait_for(find, what=f"{topic}-{partition} served by its leader")


def wait_for(predicate, logs, timeout_s: float = 15.0, interval_s: float = 0.02, what: str = "condition"):
    """The first truthy value of `predicate()` (gRPC errors count as "not yet"); past `timeout_s`
    a TimeoutError with the last error and `logs()`."""
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except grpc.RpcError as exc:
            last_exc = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached in {timeout_s}s (last error {last_exc})\n" + logs())


def make_batch(values: list[bytes], ts_ms: int | None = None, producer_id: int = -1, producer_epoch: int = -1,
               base_sequence: int = -1) -> common_pb2.RecordBatch:
    ts = wall_clock_ms() if ts_ms is None else ts_ms
    records = common_pb2.Records(records=[common_pb2.Record(offset_delta=i, value=v) for i, v in enumerate(values)])
    return common_pb2.RecordBatch(last_offset_delta=len(values) - 1, record_count=len(values),
                                  producer_id=producer_id, producer_epoch=producer_epoch, base_sequence=base_sequence,
                                  base_timestamp_ms=ts, max_timestamp_ms=ts, records=records.SerializeToString())


def init_producer_id(channel: grpc.Channel) -> int:
    """A producer id the quorum allocated (a broker refuses ids it never issued)."""
    r = txn_pb2_grpc.TransactionsStub(channel).InitProducerId(
        txn_pb2.InitProducerIdRequest(producer_id=-1, producer_epoch=-1), timeout=10)
    assert r.error_code == common_pb2.NONE, r.error_message
    return r.producer_id


def produce(stub: broker_pb2_grpc.BrokerStub, topic: str, partition: int, batch: common_pb2.RecordBatch,
            acks: int = broker_pb2.ACKS_ALL, timeout_ms: int = 5000) -> broker_pb2.PartitionProduceResult:
    resp = stub.Produce(broker_pb2.ProduceRequest(acks=acks, timeout_ms=timeout_ms, partitions=[
        broker_pb2.PartitionProduceData(topic=topic, partition=partition, batch=batch)]), timeout=timeout_ms / 1000 + 5)
    return resp.results[0]


def fetch(stub: broker_pb2_grpc.BrokerStub, topic: str, partition: int, offset: int, max_wait_ms: int = 0,
          min_bytes: int = 0, max_bytes: int = 0, isolation: int = broker_pb2.READ_UNCOMMITTED,
          leader_epoch: int | None = -1) -> broker_pb2.FetchPartitionResult:
    """`leader_epoch` None leaves current_leader_epoch unset (a client that does not know it)."""
    fp = broker_pb2.FetchPartition(topic=topic, partition=partition, fetch_offset=offset)
    if leader_epoch is not None:
        fp.current_leader_epoch = leader_epoch
    resp = stub.Fetch(broker_pb2.FetchRequest(partitions=[fp],
        max_wait_ms=max_wait_ms, min_bytes=min_bytes, max_bytes=max_bytes, isolation_level=isolation),
        timeout=max_wait_ms / 1000 + 5)
    return resp.results[0]


def read_all(stub: broker_pb2_grpc.BrokerStub, topic: str, partition: int = 0) -> list[tuple[int, bytes]]:
    """Every (offset, value) up to the high watermark."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    while True:
        r = fetch(stub, topic, partition, offset)
        if r.error_code != common_pb2.NONE:
            raise RuntimeError(f"fetch error {common_pb2.ErrorCode.Name(r.error_code)}: {r.error_message}")
        for b in r.batches:
            recs = common_pb2.Records.FromString(b.records)
            for rec in recs.records:
                off = b.base_offset + rec.offset_delta
                if off >= offset:
                    out.append((off, rec.value))
        if r.next_fetch_offset <= offset or r.next_fetch_offset >= r.high_watermark:
            return out
        offset = r.next_fetch_offset


def secure_cluster(root: Path, n: int, admin_password: str, **flags: object) -> tuple[Cluster, Path, ClientSecurity]:
    """`n` brokers (not started) serving TLS only (a CA and broker-1..n certificates in
    root/certs), with --authentication required, a Raft secret, and a super user `admin` from a
    bootstrap users file; `flags` adds broker flags (authorizer="on", kafka_listen=...). Returns
    the cluster, the certificate directory and the admin's client security."""
    import json
    import secrets

    from semel.cli.security_args import bootstrap_users_json
    from semel.client import ClientSecurity
    from semel.cluster.tooling import certs

    d = root / "certs"
    certs.create_ca(d)
    for i in range(1, n + 1):
        certs.create_leaf(d, f"broker-{i}")
    (root / "raft-secret").write_text(secrets.token_urlsafe(32))
    (root / "raft-secret").chmod(0o600)
    (root / "users.json").write_text(json.dumps(bootstrap_users_json("admin", admin_password)))
    admin = ClientSecurity(tls_ca=str(d / "ca.crt"), username="admin", password=admin_password)
    c = Cluster(root, n, internal_partitions=1, credentials=admin.channel_credentials(),
                tls_cert=d / "broker-{id}.crt", tls_key=d / "broker-{id}.key", tls_ca=d / "ca.crt",
                authentication="required", raft_secret_file=root / "raft-secret",
                bootstrap_users_file=root / "users.json", super_users="User:admin", **flags)
    return c, d, admin
