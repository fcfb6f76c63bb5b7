"""A Semel broker process: `python -m semel.cluster.broker --broker-id 1 ...`.

Wiring (everything on one asyncio loop, except pysyncobj's tick thread):
  gRPC server (Broker, Admin, Replication, Controller + health + reflection)
  MetadataQuorum (in-process pysyncobj node; changes hop to the loop via call_soon_threadsafe)
  Controller (on voters; acts only while Raft leader)
  ReplicaManager (hosted partitions, roles from the metadata image)
  FetcherManager (follower streams), LeaderReplicationService (leader side), IsrMaintainer.

Lifecycle: serve with health NOT_SERVING -> register (RegisterBroker through the quorum) ->
heartbeat the active controller -> once the image shows this broker unfenced at its epoch,
take roles and report SERVING (and print `SEMEL_BROKER_READY broker_id=N port=P`).
See docs/design.md, "Broker contract".
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from semel import clock as semel_clock
from semel import internal_topics, limits
from semel.cluster.broker import group_service, txn_service
from semel.cluster.broker.auto_create import AutoCreateSettings, AutoCreator
from semel.cluster.broker.log_dir_health import LogDirHealth
from semel.cluster.broker.loop_monitor import LoopMonitor
from semel.cluster.broker.metadata_freshness import HeartbeatLease
from semel.cluster.broker.metrics import BasicAuth, BrokerMetrics, MetricsServer, RpcMetricsInterceptor
from semel.cluster.broker.peers import Peers
from semel.cluster.broker.replica_limit import PartitionReplicaLimit
from semel.cluster.broker.security import BrokerSecurity, load_bootstrap_users
from semel.cluster.broker.replica_manager import (
    ReplicaManager,
    SystemClock,
    write_hw_checkpoints,
)
from semel.cluster.broker.replica_transport import ReplicaTransportDialer, ReplicaTransportServer
from semel.cluster.broker.replication import (
    FetcherManager,
    IsrMaintainer,
    InternalTransport,
    LeaderReplicationService,
)
from semel.cluster.broker.server import (
    AdminService,
    BrokerService,
    ControllerService,
    ReplicationService,
)
from semel.cluster.kafka.listener import KafkaListener
from semel.cluster.broker.storage_adapter import (
    ReplicaStore,
    open_replica_store,
)
from semel.cluster.metadata import raft_secret
from semel.cluster.metadata import state as md
from semel.cluster.metadata.acl import AclBinding
from semel.cluster.metadata.controller import Controller, ControllerConfig
from semel.cluster.metadata.quorum import (
    MetadataQuorum,
    MetadataSubmitError,
    QuorumConfig,
    VoterSpec,
)
from semel import scram, tls
from semel.invariant import not_none
from semel.storage import disk_executor
from semel.storage import boot_record
from semel.storage.checkpoint import fsync_dir
from semel.storage.kv import KvStore
from semel.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    controller_pb2,
    controller_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)
from semel.v1 import common_pb2 as pb

log = logging.getLogger("semel.broker")

READY_LINE = "SEMEL_BROKER_READY"
CONTROLLER_READY_LINE = "SEMEL_CONTROLLER_READY"
EVENT_LOOPS = ("asyncio", "uvloop")
REPLICATION_TRANSPORTS = ("grpc", "tcp")
CONTROLLER_ONLY_SERVICE_NAMES = ("semel.v1.Admin", "semel.v1.Controller")
SERVICE_NAMES = ("semel.v1.Broker", "semel.v1.Admin", "semel.v1.Replication", "semel.v1.Controller",
                 group_service.SERVICE_NAME, *txn_service.SERVICE_NAMES)


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerConfig:
    broker_id: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 9092  # 0: pick a free port (reported on the ready line)
    advertised_host: str = ""  # default: listen_host
    advertised_port: int = 0  # default: the bound port
    data_dir: str = ".semel-data/broker"
    raft_address: str | None = None  # None: observer (not a metadata voter)
    # File holding the metadata Raft secret (else env SEMEL_RAFT_SECRET; see raft_secret.py).
    # Required for a voter whose raft_address is not loopback.
    raft_secret_file: str = ""
    voters: tuple[str, ...] = ()  # "id@raft_host:port@rpc_host:port" for every voter
    cluster_id: str = "semel"
    # "broker,controller" (combined: a broker that is also a metadata voter when --raft names a
    # voter, an observer otherwise), "controller" (controller-only: metadata voter + Controller,
    # never registers as a broker nor hosts partitions), "broker" (observer: never a voter).
    roles: str = "broker,controller"
    heartbeat_interval_ms: int = limits.BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT
    session_timeout_ms: int = limits.BROKER_SESSION_TIMEOUT_MS_DEFAULT
    disconnect_grace_ms: int = limits.BROKER_DISCONNECT_GRACE_MS_DEFAULT
    replica_lag_time_max_ms: int = limits.REPLICA_LAG_TIME_MAX_MS_DEFAULT
    replica_fetch_max_wait_ms: int = limits.REPLICA_FETCH_MAX_WAIT_MS_DEFAULT
    replica_fetch_max_bytes: int = limits.REPLICA_FETCH_MAX_BYTES_DEFAULT
    isr_check_interval_ms: int = limits.ISR_CHECK_INTERVAL_MS_DEFAULT
    max_inflight_produce: int = limits.MAX_INFLIGHT_PRODUCE_PER_BROKER
    max_request_bytes: int = limits.MAX_REQUEST_BYTES
    max_batch_bytes: int = limits.MAX_BATCH_BYTES
    internal_partitions: int = limits.INTERNAL_TOPIC_PARTITIONS_DEFAULT  # partitions of each internal topic (transaction state, offsets)
    retention_check_interval_ms: int = limits.RETENTION_CHECK_INTERVAL_MS_DEFAULT  # how often retention and producer expiry run
    group_session_timeout_ms: int = limits.GROUP_SESSION_TIMEOUT_MS_DEFAULT  # group members silent this long are removed
    group_heartbeat_interval_ms: int = limits.GROUP_HEARTBEAT_INTERVAL_MS_DEFAULT  # told to group members
    txn_abort_scan_interval_ms: int = limits.TRANSACTION_ABORT_SCAN_INTERVAL_MS  # timed-out transactions
    fsync: bool = False
    # Topic auto-creation (Kafka's auto.create.topics.enable, num.partitions, default.replication.factor;
    # cluster/broker/auto_create.py): off by default. Replication factor 0: min(3, live brokers).
    auto_create_topics: bool = False
    auto_create_partitions: int = 1
    auto_create_replication_factor: int = 0
    # Partition replicas this broker lets a CreateTopics / CreatePartitions / auto-creation put on
    # any broker (POLICY_VIOLATION beyond; semel.limits): 0 derives it from RLIMIT_NOFILE.
    max_partition_replicas_per_broker: int = 0
    log_level: str = "INFO"
    # Cluster management (deploy/README.md, "Cluster management"): replication rate for replicas a reassignment adds
    # (bytes/s per leader broker, 0: unthrottled); the controller's automatic preferred-leader
    # rebalancing and its imbalance threshold (percent, Kafka's leader.imbalance.per.broker.percentage);
    # how long SIGTERM waits for this broker's leaderships to move before it stops.
    reassignment_throttle_bytes_per_s: int = limits.REASSIGNMENT_THROTTLE_BYTES_PER_S_DEFAULT
    auto_leader_rebalance: bool = True
    leader_imbalance_percent: int = limits.LEADER_IMBALANCE_PERCENT_DEFAULT
    controlled_shutdown_wait_ms: int = limits.CONTROLLED_SHUTDOWN_WAIT_MS_DEFAULT
    # The asyncio event loop: "asyncio" (the standard library's) or "uvloop" (libuv; the
    # `uvloop` package, see docs/benchmarks.md for what it saves). Off by default.
    event_loop: str = "asyncio"
    # How this broker's followers fetch from leaders: "grpc" (the ReplicaFetch stream) or "tcp"
    # (the internal transport, cluster/broker/replica_transport.py: it also listens on
    # replication_listen, default any free port on the gRPC listen host, and registers that
    # port; followers use it where a leader registered one). Off by default until the chaos
    # suites have run on it.
    replication_transport: str = "grpc"
    replication_listen: str = ""
    metrics_listen: str = ""  # host:port for Prometheus' GET /metrics (empty: no metrics endpoint)
    # The metrics endpoint serves HTTPS with tls_cert/tls_key when they are set (client
    # certificates required when tls_client_auth is), and asks for HTTP basic auth with this
    # user and the first line of this file when given (TLS only; deploy/README.md, "Metrics").
    metrics_user: str = ""
    metrics_password_file: str = ""
    # Kafka-protocol listener (semel.cluster.kafka): "host:port" to serve on ("" = none, port 0 =
    # any free port), and the address Kafka clients are told (default: the bound one).
    kafka_listen: str = ""
    kafka_advertised: str = ""
    # Fault injection (chaos/wiring.py): how this broker reaches each peer, instead of the
    # address the peer registered / the voter list names. Off (empty) by default.
    dial: tuple[str, ...] = ()  # "broker_id=host:port": gRPC to that broker (replication, controller, ...)
    raft_dial: tuple[str, ...] = ()  # "broker_id=host:port": Raft link to that voter (identity unchanged)
    # Security (cluster/broker/security.py, deploy/README.md "Security"). TLS is on when tls_cert is
    # set: the gRPC port serves TLS only and this broker dials its peers with TLS (tls_ca checks
    # them; its own certificate is its client certificate). tls_client_auth "required": mTLS.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_client_auth: str = "none"
    # "required": every call but health checks needs an authenticated principal (mTLS certificate,
    # user + password over TLS, or the broker token); "none": anonymous calls are served.
    authentication: str = "none"
    # Principals allowed to call the broker-only services (Replication, Controller, TxnMarkers) when
    # authentication is on, besides brokers proven by the broker secret; default: `User:broker-N`
    # names from mTLS certificates. Brokers also prove themselves to each other with a token derived
    # from the metadata Raft secret, which every node of a cluster holds (see security.py).
    broker_principals: tuple[str, ...] = ()
    # Principals that may manage users (and, with the authorizer, everything) when authentication is
    # on, e.g. ("User:admin",).
    super_users: tuple[str, ...] = ()
    # JSON file of SCRAM credentials (never passwords) valid besides the quorum's users: how the first
    # super user logs in before any user exists (`semel user credential`; cluster up --secure writes it).
    bootstrap_users_file: str = ""
    # "on": every call is authorized against the quorum's ACLs (semel.cluster.broker.authorizer:
    # deny by default; super users and brokers bypass), on the gRPC port and the Kafka listener
    # (semel.cluster.kafka.authorization); "off": no ACL is consulted.
    authorizer: str = "off"

    def voter_specs(self) -> tuple[VoterSpec, ...]:
        return tuple(parse_voter(v) for v in self.voters)

    def role_set(self) -> frozenset[str]:
        roles = frozenset(r.strip() for r in self.roles.split(",") if r.strip())
        if not roles or not roles <= {"broker", "controller"}:
            raise ValueError(f"--roles must be broker, controller or broker,controller, got {self.roles!r}")
        return roles

    @property
    def is_broker(self) -> bool:
        return "broker" in self.role_set()

    def validate(self) -> None:
        """Raise ValueError if roles, node id, --raft and --voters do not fit together."""
        roles = self.role_set()
        voters = self.voter_specs()
        if self.metrics_listen:
            split_address(self.metrics_listen)
        if bool(self.metrics_user) != bool(self.metrics_password_file):
            raise ValueError("--metrics-user and --metrics-password-file go together")
        if self.metrics_user and not self.tls_cert:
            raise ValueError("--metrics-user needs TLS (--tls-cert, --tls-key): the metrics password never "
                             "travels in plaintext")
        if self.metrics_user and (":" in self.metrics_user or not self.metrics_user.isprintable()):
            raise ValueError("--metrics-user: HTTP basic auth user names have no ':' or control characters")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        if self.replication_transport not in REPLICATION_TRANSPORTS:
            raise ValueError(f"--replication-transport must be one of {', '.join(REPLICATION_TRANSPORTS)}, "
                             f"got {self.replication_transport!r}")
        if self.replication_listen and self.replication_transport != "tcp":
            raise ValueError("--replication-listen needs --replication-transport tcp")
        if not 1 <= self.auto_create_partitions <= limits.MAX_PARTITIONS_PER_TOPIC:
            raise ValueError(f"--auto-create-partitions must be in 1..{limits.MAX_PARTITIONS_PER_TOPIC}")
        if self.max_partition_replicas_per_broker < 0:
            raise ValueError("--max-partition-replicas-per-broker must be >= 0 (0: from the open-file limit)")
        if self.auto_create_replication_factor < 0:
            raise ValueError("--auto-create-replication-factor must be >= 0 (0: the cluster default)")
        mine = next((v for v in voters if v.raft_address == self.raft_address), None) if self.raft_address else None
        if self.tls_client_auth not in ("none", "required"):
            raise ValueError(f"--tls-client-auth must be none or required, got {self.tls_client_auth!r}")
        if self.authentication not in ("none", "required"):
            raise ValueError(f"--authentication must be none or required, got {self.authentication!r}")
        if self.authorizer not in ("on", "off"):
            raise ValueError(f"--authorizer must be on or off, got {self.authorizer!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if not self.tls_cert and (self.tls_ca or self.tls_client_auth != "none"):
            raise ValueError("--tls-ca / --tls-client-auth need --tls-cert and --tls-key (the broker's own certificate)")
        if self.tls_client_auth == "required" and not self.tls_ca:
            raise ValueError("--tls-client-auth required needs --tls-ca")
        if self.authentication == "required" and not self.tls_cert:
            raise ValueError("--authentication required needs TLS (--tls-cert, --tls-key): credentials never "
                             "travel in plaintext")
        for p in (*self.broker_principals, *self.super_users):
            if not p.startswith("User:") or len(p) == len("User:"):
                raise ValueError(f"--broker-principals / --super-users entries look like User:NAME, got {p!r}")
        if "controller" not in roles and mine is not None:
            raise ValueError(f"--roles broker: node {self.broker_id} must not name a voter's Raft address "
                             f"({self.raft_address}); use --roles broker,controller to be a voter")
        if roles == {"controller"} and mine is None:
            raise ValueError(f"--roles controller: --raft must be one of the --voters Raft addresses "
                             f"(got {self.raft_address!r})")
        if mine is not None and mine.node_id != self.broker_id:
            raise ValueError(f"node id {self.broker_id} does not match voter {mine.node_id}@{mine.raft_address}")
        for v in voters:
            if v.node_id == self.broker_id and v.raft_address != self.raft_address:
                raise ValueError(f"node id {self.broker_id} collides with metadata voter {v.node_id}@{v.raft_address}: "
                                 "brokers and controller-only nodes need distinct ids")

    def metadata_raft_secret(self, environ: Mapping[str, str]) -> bytes | None:
        """The Raft secret from --raft-secret-file or SEMEL_RAFT_SECRET (`raft_secret.py`);
        raises `RaftSecretError` (a ValueError) for a voter on a non-loopback Raft address
        without one, or a secret that cannot be read or is too short."""
        secret = raft_secret.load_secret(self.raft_secret_file, environ)
        is_voter = any(v.raft_address == self.raft_address for v in self.voter_specs())
        raft_secret.require_secret(self.raft_address, is_voter, secret)
        return secret

    def dial_map(self) -> dict[int, str]:
        return parse_dial(self.dial)

    def raft_dial_map(self) -> dict[str, str]:
        """Voter raft address (its pysyncobj identity) -> the address to connect to."""
        by_id = parse_dial(self.raft_dial)
        return {v.raft_address: by_id[v.node_id] for v in self.voter_specs() if v.node_id in by_id}

    @staticmethod
    def from_args(argv: list[str] | None = None) -> BrokerConfig:
        ap = build_arg_parser()
        a = ap.parse_args(argv)
        values: dict[str, Any] = {}  # JSON and flags, checked by BrokerConfig.validate() below
        if a.config:
            values.update(json.loads(Path(a.config).read_text()))
        if a.listen:
            host, port = split_address(a.listen)
            values["listen_host"], values["listen_port"] = host, port
        if a.advertised:
            host, port = split_address(a.advertised)
            values["advertised_host"], values["advertised_port"] = host, port
        if a.voters:
            values["voters"] = tuple(v.strip() for v in a.voters.split(",") if v.strip())
        for field in ("broker_id", "roles", "data_dir", "cluster_id", "heartbeat_interval_ms", "session_timeout_ms",
                      "disconnect_grace_ms", "replica_lag_time_max_ms", "replica_fetch_max_wait_ms",
                      "replica_fetch_max_bytes", "isr_check_interval_ms", "max_inflight_produce", "max_batch_bytes",
                      "internal_partitions", "retention_check_interval_ms", "txn_abort_scan_interval_ms",
                      "group_session_timeout_ms", "group_heartbeat_interval_ms", "fsync", "log_level", "event_loop",
                      "replication_transport", "replication_listen",
                      "auto_create_topics", "auto_create_partitions", "auto_create_replication_factor",
                      "max_partition_replicas_per_broker", "raft_secret_file", "kafka_listen", "kafka_advertised", "reassignment_throttle_bytes_per_s",
                      "auto_leader_rebalance", "leader_imbalance_percent", "controlled_shutdown_wait_ms", "tls_cert",
                      "tls_key", "tls_ca", "tls_client_auth", "authentication", "bootstrap_users_file", "authorizer",
                      "metrics_user", "metrics_password_file"):
            v = getattr(a, field)
            if v is not None:
                values[field] = v
        if a.raft:
            values["raft_address"] = a.raft
        if a.metrics_listen is not None:
            values["metrics_listen"] = a.metrics_listen  # checked by validate()
        for flag, field in ((a.dial, "dial"), (a.raft_dial, "raft_dial")):
            if flag:
                values[field] = tuple(v.strip() for v in flag.split(",") if v.strip())
        for flag, field in ((a.broker_principals, "broker_principals"), (a.super_users, "super_users")):
            if flag:
                values[field] = tuple(v.strip() for v in flag.split(",") if v.strip())
        for field in ("dial", "raft_dial"):
            if field in values:
                values[field] = tuple(values[field])
                parse_dial(values[field])
        for field in ("broker_principals", "super_users"):  # a JSON config gives lists
            if field in values:
                values[field] = tuple(values[field])
        if "voters" in values:
            values["voters"] = tuple(values["voters"])
        if a.broker_id_from_hostname:
            if a.broker_id is not None:
                ap.error("--broker-id and --broker-id-from-hostname exclude each other")
            try:
                values["broker_id"] = broker_id_from_hostname(socket.gethostname())
            except ValueError as exc:
                ap.error(str(exc))
        if "broker_id" not in values:
            ap.error("--broker-id (or --broker-id-from-hostname) is required")
        config = BrokerConfig(**values)
        try:
            config.validate()
        except ValueError as exc:
            ap.error(str(exc))
        return config


def build_arg_parser() -> argparse.ArgumentParser:
    """The broker's flags (`BrokerConfig.from_args`); deploy/ manifests are checked against it."""
    ap = argparse.ArgumentParser(prog="python -m semel.cluster.broker", description="Run one Semel broker.")
    ap.add_argument("--config", help="JSON file with BrokerConfig fields (flags override it)")
    ap.add_argument("--broker-id", "--node-id", dest="broker_id", type=int)
    ap.add_argument("--broker-id-from-hostname", action="store_true",
                    help="take the broker id from the hostname's trailing -N (a StatefulSet pod semel-3: 3)")
    ap.add_argument("--roles", help="broker,controller (default), controller (controller-only) or broker")
    ap.add_argument("--listen", help="host:port to serve gRPC on (port 0: any free port)")
    ap.add_argument("--advertised", help="host:port clients should use (default: --listen)")
    ap.add_argument("--data-dir")
    ap.add_argument("--raft", help="this broker's metadata Raft address host:port (omit: observer)")
    ap.add_argument("--voters", help="comma-separated id@raft_host:port@rpc_host:port of every voter")
    ap.add_argument("--raft-secret-file", help="file with the metadata Raft secret (else env SEMEL_RAFT_SECRET); "
                    "required for a voter on a non-loopback Raft address")
    ap.add_argument("--cluster-id")
    for name in ("heartbeat-interval-ms", "session-timeout-ms", "disconnect-grace-ms", "replica-lag-time-max-ms",
                 "replica-fetch-max-wait-ms", "replica-fetch-max-bytes", "isr-check-interval-ms",
                 "max-inflight-produce", "max-batch-bytes", "internal-partitions", "retention-check-interval-ms",
                 "txn-abort-scan-interval-ms", "group-session-timeout-ms", "group-heartbeat-interval-ms",
                 "reassignment-throttle-bytes-per-s", "leader-imbalance-percent", "controlled-shutdown-wait-ms"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--max-partition-replicas-per-broker", type=int,
                    help="partition replicas a topic creation or growth may put on any broker; beyond: "
                         "POLICY_VIOLATION (default 0: (RLIMIT_NOFILE - %d) // %d, at least %d)"
                         % (limits.FDS_RESERVED, limits.FDS_PER_PARTITION_REPLICA,
                            limits.MIN_PARTITION_REPLICAS_PER_BROKER))
    ap.add_argument("--auto-leader-rebalance", action=argparse.BooleanOptionalAction, default=None,
                    help="move leadership back to preferred replicas automatically (default on)")
    ap.add_argument("--fsync", action="store_true", default=None)
    ap.add_argument("--auto-create-topics", action="store_true", default=None,
                    help="create a topic a client asks about (Metadata, Produce) if it does not exist "
                         "(Kafka's auto.create.topics.enable; default off); never internal or invalid names")
    ap.add_argument("--auto-create-partitions", type=int, help="partitions of an auto-created topic (default 1)")
    ap.add_argument("--auto-create-replication-factor", type=int,
                    help="replicas of an auto-created topic (default: min(3, live brokers))")
    ap.add_argument("--log-level")
    ap.add_argument("--event-loop", choices=EVENT_LOOPS,
                    help="the event loop: asyncio (default) or uvloop (needs the uvloop package)")
    ap.add_argument("--replication-transport", choices=REPLICATION_TRANSPORTS,
                    help="how followers fetch from leaders: grpc (default) or tcp (length-prefixed frames, same "
                    "TLS and broker authentication; used where the leader runs it too)")
    ap.add_argument("--replication-listen", help="host:port of the tcp replication transport (default: the gRPC "
                    "listen host, any free port; registered with the quorum)")
    ap.add_argument("--metrics-listen", help="host:port to serve Prometheus metrics on (GET /metrics; port 0: any); "
                    "HTTPS with --tls-cert/--tls-key, client certificates required with --tls-client-auth required")
    ap.add_argument("--metrics-user", help="HTTP basic auth user the metrics endpoint requires (TLS only; with "
                    "--metrics-password-file)")
    ap.add_argument("--metrics-password-file", help="file whose first line is --metrics-user's password (the file "
                    "Prometheus' basic_auth.password_file can read too)")
    ap.add_argument("--dial", help="fault injection: comma-separated broker_id=host:port to reach peers by")
    ap.add_argument("--raft-dial", help="fault injection: comma-separated broker_id=host:port for Raft links")
    ap.add_argument("--kafka-listen", help="host:port to serve the Kafka protocol on (port 0: any free port)")
    ap.add_argument("--kafka-advertised", help="host:port Kafka clients should use (default: --kafka-listen)")
    ap.add_argument("--tls-cert", help="PEM certificate of this broker: its gRPC port serves TLS only, and it is "
                    "the client certificate towards other brokers (SANs must name the advertised host)")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--tls-ca", help="PEM CA that signs client and peer-broker certificates")
    ap.add_argument("--tls-client-auth", choices=("none", "required"),
                    help="none (default): no client certificate asked; required: mTLS (grpcio has no optional mode)")
    ap.add_argument("--authentication", choices=("none", "required"),
                    help="required: refuse unauthenticated calls (UNAUTHENTICATED), health checks excepted")
    ap.add_argument("--broker-principals", help="comma-separated principals (User:NAME) allowed to call the "
                    "broker-only services, besides User:broker-N certificates and the broker secret")
    ap.add_argument("--super-users", help="comma-separated principals (User:NAME) that may manage users")
    ap.add_argument("--authorizer", choices=("on", "off"),
                    help="on: authorize every call (gRPC and Kafka ports) against the ACLs in the metadata quorum "
                    "(deny by default; "
                    "--super-users and brokers bypass; `semel acl`); off (default): no ACL is consulted")
    ap.add_argument("--bootstrap-users-file", help="JSON file of SCRAM credentials valid besides the quorum's "
                    "users (the first super user's login; made by `semel user credential`)")
    return ap


def broker_id_from_hostname(hostname: str) -> int:
    """`semel-3` (a StatefulSet pod's hostname) -> 3; the first DNS label only."""
    label = hostname.split(".", 1)[0]
    _, dash, ordinal = label.rpartition("-")
    if not dash or not ordinal.isdigit():
        raise ValueError(f"--broker-id-from-hostname: hostname {hostname!r} does not end in -N (e.g. semel-1)")
    return int(ordinal)


def split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


def parse_dial(entries: tuple[str, ...]) -> dict[int, str]:
    """("2=host:port", ...) -> {2: "host:port"}."""
    out: dict[int, str] = {}
    for entry in entries:
        bid, _, address = entry.partition("=")
        if not bid.strip().isdigit():
            raise ValueError(f"dial entry must be broker_id=host:port, got {entry!r}")
        split_address(address)
        out[int(bid)] = address
    return out


def check_port_free(address: str) -> None:
    """Raise OSError if `address` cannot be bound (another process holds the Raft port)."""
    import socket

    host, port = split_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise OSError(f"metadata Raft address {address} is not available: {exc}") from exc


def parse_voter(text: str) -> VoterSpec:
    parts = text.split("@")
    if len(parts) != 3 or not parts[0].isdigit():
        raise ValueError(f"voter must be id@raft_host:port@rpc_host:port, got {text!r}")
    split_address(parts[1])
    split_address(parts[2])
    return VoterSpec(int(parts[0]), parts[1], parts[2])


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        config.validate()
        self.config = config
        self.is_broker = config.is_broker  # False: controller-only (no registration, no partitions)
        self.groups: group_service.GroupCoordinator | None = None
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.voters = config.voter_specs()
        self.incarnation_id = uuid.uuid4().hex
        self.broker_epoch = -1
        # Set at start when the machine restarted without fsync (boot_record); sent with the
        # first registration only: later ones (a stale epoch) come from a process that lost nothing.
        self.lost_unsynced_writes = False
        # Heartbeats the controller answered "unfenced": a hint that the image is current
        # (metadata_freshness.py). The controller fences after session_timeout_ms of silence.
        self.lease = HeartbeatLease(config.session_timeout_ms)
        self.port = config.listen_port
        self.ready = False
        self._stopping = False
        # Metadata still applies during a controlled shutdown (our own fencing must take our
        # leaderships here too); it stops once the shutdown is past that point.
        self._metadata_frozen = False
        self._tasks: list[asyncio.Task[None]] = []
        self._metadata_changed = asyncio.Event()
        self._last_unreachable_report: dict[int, float] = {}
        self.server: grpc.aio.Server | None = None
        self.kafka: KafkaListener | None = None
        self.kafka_port = 0  # bound Kafka port (0: no Kafka listener)
        self.replica_transport: ReplicaTransportServer | None = None  # --replication-transport tcp
        self.replication_port = 0  # its bound port, registered (0: none)
        self._kv: KvStore | None = None  # the broker's RocksDB (producer snapshots), opened by start()
        self.security: BrokerSecurity | None = None  # set by start() (it needs the Raft secret)
        self.peers = Peers(config.dial_map(), self.voters, lambda: self.quorum.image(), self._open_channel)
        self.health = health.aio.HealthServicer()
        # set by start() before any servicer runs; typed as always there so that the servicers
        # need no check (a check of None below is for a broker stopped before it started)
        self.quorum: MetadataQuorum = None  # type: ignore[assignment]
        self._newest_image: md.MetadataImage | None = None  # the last one reported, reconciled once per turn
        self._reconcile_turn: asyncio.Handle | None = None
        self.partition_replica_limit = PartitionReplicaLimit.of(config.max_partition_replicas_per_broker)
        self.auto_create = AutoCreator(self, AutoCreateSettings(
            config.auto_create_topics, config.auto_create_partitions, config.auto_create_replication_factor,
            self.partition_replica_limit.replicas))
        self.controller: Controller | None = None
        self.txn: txn_service.TxnRuntime | None = None  # transactions (cluster/broker/txn_service.py)
        self.clock = SystemClock()  # the host's clocks; every replica shell reads time through it
        self.disk = disk_executor.shared()  # disk work off the loop (docs/design.md, "Threads")
        self.loop_monitor = LoopMonitor()  # loop lag and stalls; last/max for metrics
        self.metrics = BrokerMetrics()  # Prometheus series (cluster/broker/metrics.py)
        self.metrics_state = self.metrics.attach(self)
        self.metrics_server: MetricsServer | None = None
        self.log_dir_health = LogDirHealth(self.data_dir / "logs")  # the replicas' logs (docs/storage.md)
        self.rm = ReplicaManager(config.broker_id, self.data_dir, config.replica_lag_time_max_ms, self._open_store,
                                 clock=self.clock, disk=self.disk)
        self.leader_replication = LeaderReplicationService(
            self.rm, config.replica_fetch_max_bytes, config.reassignment_throttle_bytes_per_s,
            image=lambda: None if self.quorum is None else self.quorum.image())
        self.fetchers = FetcherManager(self.rm, self.peers.broker_address, lambda: self.broker_epoch,
                                       self._report_unreachable, config.replica_fetch_max_wait_ms,
                                       config.replica_fetch_max_bytes, self._open_channel)
        self.isr = IsrMaintainer(self.rm, self._submit_alter, config.isr_check_interval_ms, self._unfenced)
        self.rm.add_role_listener(self.metrics.on_role)  # counts leader elections

    def _open_channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        return not_none(self.security, "channels to peers open after start()").open_channel(address, options)

    def _user_credentials(self, name: str) -> tuple[scram.ScramCredential, ...]:
        if self.quorum is None:
            return ()
        return self.quorum.image().users.get(name, ())

    def _acls(self) -> tuple[AclBinding, ...]:
        return () if self.quorum is None else self.quorum.image().acls

    def _open_store(self, directory: Path, topic: md.Topic, partition: int) -> ReplicaStore:
        if self._kv is None:  # a partition opened before start() (tests)
            self._kv = KvStore.open(self.data_dir / "kv")
        try:
            return open_replica_store(directory, topic, partition, fsync=self.config.fsync, kv=self._kv,
                                      now_ms=self.clock.wall_clock_ms(), health=self.log_dir_health)
        except OSError as exc:  # e.g. a restart on a full disk: the directory goes offline (fenced)
            self.log_dir_health.on_error(exc)
            raise

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        secret = cfg.metadata_raft_secret(os.environ)  # before anything binds
        if cfg.raft_secret_file and not raft_secret.file_is_private(cfg.raft_secret_file):
            log.warning("metadata Raft secret file %s is readable by others or writable by its group (chmod 600 it)",
                        cfg.raft_secret_file)
        if secret is None and cfg.raft_address:
            log.info("metadata Raft port %s runs without a secret: plain pickle, loopback only",
                        cfg.raft_address)
        self.security = BrokerSecurity(cfg.broker_id, tls.TlsFiles(cfg.tls_ca, cfg.tls_cert, cfg.tls_key),
                                       cfg.tls_client_auth, cfg.authentication, cfg.broker_principals, secret,
                                       self._user_credentials, cfg.super_users,
                                       load_bootstrap_users(cfg.bootstrap_users_file),
                                       cfg.authorizer == "on", self._acls)
        if cfg.replication_transport == "tcp":
            self.fetchers.transport = InternalTransport(self.peers.replication_address,
                                                        ReplicaTransportDialer.for_broker(self.security).open)
        self.loop_monitor.start()
        opts = [
            ("grpc.max_receive_message_length", cfg.max_request_bytes),
            ("grpc.max_send_message_length", cfg.max_request_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ]
        self.server = grpc.aio.server(options=opts, maximum_concurrent_rpcs=limits.MAX_CONCURRENT_RPCS_PER_BROKER,
                                      interceptors=[RpcMetricsInterceptor(self.metrics),
                                                    self.security.interceptor()])
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self), self.server)
        controller_pb2_grpc.add_ControllerServicer_to_server(ControllerService(self), self.server)
        if self.is_broker:
            broker_pb2_grpc.add_BrokerServicer_to_server(BrokerService(self), self.server)
            replication_pb2_grpc.add_ReplicationServicer_to_server(ReplicationService(self), self.server)
            self.groups = group_service.install(self, self.server)
            self.txn = txn_service.install(self, self.server, cfg.txn_abort_scan_interval_ms)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        if self.is_broker:
            names += [broker_pb2.DESCRIPTOR.services_by_name["Broker"].full_name,
                      replication_pb2.DESCRIPTOR.services_by_name["Replication"].full_name,
                      group_service.SERVICE_NAME, *txn_service.SERVICE_NAMES]
        reflection.enable_server_reflection(names, self.server)
        await self._set_health(False)
        try:
            self.port = self.security.bind(self.server, f"{cfg.listen_host}:{cfg.listen_port}")
        except RuntimeError as exc:  # grpc reports a busy port this way
            raise OSError(f"cannot bind gRPC address {cfg.listen_host}:{cfg.listen_port}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot bind gRPC address {cfg.listen_host}:{cfg.listen_port}")
        await self.server.start()
        log.info("broker %d gRPC listening on %s:%d (%s, client certificates %s, authentication %s)", cfg.broker_id,
                 cfg.listen_host, self.port, "TLS" if cfg.tls_cert else "plaintext", cfg.tls_client_auth,
                 cfg.authentication)
        if self.is_broker and cfg.replication_transport == "tcp":
            await self._start_replica_transport()
        if cfg.metrics_listen:
            await self._start_metrics(cfg.metrics_listen)
        if self.is_broker and cfg.kafka_listen:
            host, port = split_address(cfg.kafka_listen)
            self.kafka = KafkaListener(self, host, port, self.security)
            self.kafka_port = await self.kafka.start()
            log.info("broker %d Kafka protocol listening on %s:%d (%s, authentication %s)", cfg.broker_id, host,
                     self.kafka_port, "TLS" if cfg.tls_cert else "plaintext", cfg.authentication)
        if cfg.raft_address:
            check_port_free(cfg.raft_address)  # pysyncobj would retry a busy port forever, silently
        loop = asyncio.get_running_loop()
        if self.is_broker:  # RocksDB opens once, before the quorum starts
            self._kv = await self.disk.run("kv", lambda: KvStore.open(self.data_dir / "kv"), "open RocksDB")
        # The data dir's entries (logs/, kv/, raft/) must be durable before anything in them
        # counts: without this a power cut soon after the first start could drop a whole
        # directory whose files were all fsynced (found by the power-cut layer).
        (self.data_dir / "raft").mkdir(exist_ok=True)
        fsync_dir(self.data_dir)
        restarted = self.is_broker and boot_record.machine_restarted(self.data_dir)
        if restarted and cfg.fsync:
            boot_record.loss_reported(self.data_dir)  # every write was synced: nothing was lost
        elif restarted:
            # Records it acknowledged may have been only in the page cache that the restart
            # dropped: the quorum stops counting it as a full copy where another replica is one.
            # The boot record keeps saying so until a registration carrying it committed.
            self.lost_unsynced_writes = True
            log.warning("broker %d: the machine restarted since this broker last ran, without fsync: "
                        "its logs may lack acknowledged records; it rejoins each ISR by catching up",
                        cfg.broker_id)
        self.quorum = MetadataQuorum(QuorumConfig(node_id=cfg.broker_id, raft_address=cfg.raft_address,
                                                  voters=self.voters, data_dir=self.data_dir / "raft",
                                                  raft_dial=tuple(sorted(cfg.raft_dial_map().items())),
                                                  raft_secret=secret, fsync=cfg.fsync))
        self.quorum.add_listener(self._on_metadata, loop)
        if self.quorum.config.is_voter:
            self.controller = Controller(self.quorum, ControllerConfig(
                session_timeout_ms=cfg.session_timeout_ms, heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                disconnect_grace_ms=cfg.disconnect_grace_ms,
                preferred_leader_rebalance_ms=(limits.PREFERRED_LEADER_REBALANCE_MS_DEFAULT
                                               if cfg.auto_leader_rebalance else None),
                leader_imbalance_percent=cfg.leader_imbalance_percent,
                internal_partitions={internal_topics.TRANSACTION_STATE_TOPIC: cfg.internal_partitions,
                                     internal_topics.CONSUMER_OFFSETS_TOPIC: cfg.internal_partitions}))
            self.controller.start()
        if not self.is_broker:  # controller-only: voter + Controller, nothing else
            self._tasks.append(loop.create_task(self._controller_ready(), name="controller-ready"))
            log.info("controller-only node %d serving gRPC on %s:%d (raft %s)", cfg.broker_id, cfg.listen_host,
                     self.port, cfg.raft_address)
            return
        self.isr.start()
        not_none(self.groups, "a broker installs the group coordinator with its servicers").start()
        self._tasks.append(loop.create_task(self._register_and_heartbeat(), name="heartbeat"))
        self._tasks.append(loop.create_task(self._checkpoint_loop(), name="hw-checkpoint"))
        log.info("broker %d serving gRPC on %s:%d (raft %s)", cfg.broker_id, cfg.listen_host, self.port,
                 cfg.raft_address)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        await self._set_health(False)
        for t in self._tasks:
            t.cancel()
        if self.kafka is not None:
            await self.kafka.stop()
        await self._controlled_shutdown()
        self._metadata_frozen = True
        if self.txn is not None:
            await self.txn.stop()
        if self.groups is not None:
            await self.groups.stop()
        await self.isr.stop()
        await self.fetchers.stop()
        if self.replica_transport is not None:
            await self.replica_transport.stop()
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.controller is not None:
            await self.controller.stop()
        self.rm.close()
        # Replica closes, deletions and roll jobs use RocksDB and the logs: done before it closes.
        await asyncio.get_running_loop().run_in_executor(None, self.disk.wait_idle)
        if self._kv is not None:
            self._kv.close()
        if self.quorum is not None:
            self.quorum.close()
        await self.peers.close()
        await self.loop_monitor.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()

    async def _start_replica_transport(self) -> None:
        cfg = self.config
        host, port = split_address(cfg.replication_listen) if cfg.replication_listen else (cfg.listen_host, 0)
        sent = self.metrics.stream_messages_sent

        def count(method: str) -> None:
            sent[method] = sent.get(method, 0) + 1

        self.replica_transport = ReplicaTransportServer(self.leader_replication, self.security, cfg.max_request_bytes,
                                                        count)
        self.replication_port = await self.replica_transport.start(host, port)
        log.info("broker %d replication transport listening on %s:%d (%s)", cfg.broker_id, host,
                 self.replication_port, "TLS" if cfg.tls_cert else "plaintext")

    async def _start_metrics(self, address: str) -> None:
        host, port = split_address(address)
        refresh = self.metrics_state.refresh_disk()

        async def before_scrape() -> None:
            await self.disk.run("metrics-disk-usage", refresh, "log directory sizes")

        cfg = self.config
        context = None
        if cfg.tls_cert:  # the same certificate and client-certificate rule as the gRPC port
            context = tls.server_ssl_context(tls.TlsFiles(cfg.tls_ca, cfg.tls_cert, cfg.tls_key), cfg.tls_client_auth)
        basic = BasicAuth.from_file(cfg.metrics_user, cfg.metrics_password_file) if cfg.metrics_user else None
        self.metrics_server = MetricsServer(self.metrics, before_scrape, context, basic)
        try:
            bound = await self.metrics_server.start(host, port)
        except OSError as exc:
            raise OSError(f"cannot bind metrics address {address}: {exc}") from exc
        guard = ", ".join(part for part in (
            "client certificate required" if context is not None and cfg.tls_client_auth == "required" else "",
            f"basic auth as {cfg.metrics_user}" if basic is not None else "") if part) or "no authentication"
        log.info("broker %d serving Prometheus metrics on %s://%s:%d/metrics (%s)", cfg.broker_id,
                 self.metrics_server.scheme, host, bound, guard)

    async def _controlled_shutdown(self) -> None:
        """Kafka's controlled shutdown, through the quorum: move every leadership away before
        stopping, so clients switch at once to a caught-up replica instead of waiting for a
        missed session. Bounded by `controlled_shutdown_wait_ms` in all:
          1. wait (bounded) until no partition we lead has us as its only ISR member while
             another replica is alive (fencing would leave it without a leader until we return);
          2. fence ourselves (FenceBroker: our leaderships move to other ISR members, we leave
             every ISR; heartbeats are already stopped, so nothing unfences us);
          3. wait until our image shows it, so nothing is acknowledged here afterwards.
        Without a quorum majority this gives up and the session timeout fences us."""
        if self.quorum is None or self.broker_epoch < 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0, self.config.controlled_shutdown_wait_ms) / 1000
        me = self.config.broker_id

        def no_sole_leaderships(img: md.MetadataImage) -> bool:
            alive = set(img.unfenced_brokers()) - {me}
            return not any(p.leader == me and p.isr == (me,) and alive & set(p.replicas)
                           for t in img.topics.values() for p in t.partitions)

        started = loop.time()
        if not await self.wait_for_metadata(no_sole_leaderships, max(0.0, (deadline - loop.time()) / 2)):
            log.info("controlled shutdown: some partitions still have this broker as their only ISR member")
        try:
            await self.quorum.submit(md.FenceBroker(me, self.broker_epoch),
                                     timeout_s=max(0.5, deadline - loop.time()))
            moved = await self.wait_for_metadata(lambda img: not self.rm.active, max(0.5, deadline - loop.time()))
        except Exception as exc:  # no quorum: the session timeout will fence us
            log.info("controlled shutdown: could not fence ourselves: %s", exc)
            return
        log.info("controlled shutdown: leaderships %s in %d ms", "moved" if moved else "not yet moved",
                 (loop.time() - started) * 1000)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *(SERVICE_NAMES if self.is_broker else CONTROLLER_ONLY_SERVICE_NAMES)):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    # --- metadata ----------------------------------------------------------------------
    def _on_metadata(self, delta: md.MetadataDelta, image: md.MetadataImage) -> None:
        """Reconcile the replicas with the newest image once per loop turn: a burst of changes
        already queued (a fencing's leader moves, ISR changes at 1,000s of partitions) costs one
        pass over the hosted replicas, not one per change (which grew as changes x partitions)."""
        if self._metadata_frozen:
            return
        self._newest_image = image
        if self._reconcile_turn is None:
            self._reconcile_turn = asyncio.get_running_loop().call_soon(self._reconcile_newest)

    def _reconcile_newest(self) -> None:
        self._reconcile_turn = None
        image = self._newest_image
        if self._metadata_frozen or image is None:
            return
        try:
            self.rm.reconcile(image)
        except Exception:
            log.exception("applying metadata version %d failed", image.version)
        self._metadata_changed.set()
        self._metadata_changed = asyncio.Event()
        if self.rm.active and not self.ready and not self._stopping:
            self.ready = True
            try:
                self.rm.remove_stale_dirs(image)
            except OSError:
                log.exception("removing replicas of deleted topics failed")
            asyncio.get_running_loop().create_task(self._announce_ready())

    async def _controller_ready(self) -> None:
        """Controller-only: ready once the quorum has a leader (this node or another voter)."""
        while self.quorum.active_controller() is None:
            await asyncio.sleep(0.05)
        self.ready = True
        await self._set_health(True)
        print(f"{CONTROLLER_READY_LINE} node_id={self.config.broker_id} port={self.port}", flush=True)
        log.info("controller-only node %d ready", self.config.broker_id)

    async def _announce_ready(self) -> None:
        await self._set_health(True)
        print(f"{READY_LINE} broker_id={self.config.broker_id} port={self.port}", flush=True)
        log.info("broker %d ready (epoch %d)", self.config.broker_id, self.broker_epoch)
        limit = self.partition_replica_limit
        log.info("broker %d: topic creation may put at most %d partition replicas on a broker (%s)",
                 self.config.broker_id, limit.replicas,
                 "--max-partition-replicas-per-broker" if limit.nofile is None else f"RLIMIT_NOFILE {limit.nofile}")

    async def wait_for_metadata(self, predicate: Callable[[md.MetadataImage], bool], timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate(self.quorum.image()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._metadata_changed.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True

    @property
    def kv(self) -> KvStore | None:
        """The broker's RocksDB, None until `start()` opened it."""
        return self._kv

    def metadata_current(self) -> bool:
        """Registered and unfenced in our own image, under a current heartbeat lease (a hint:
        see metadata_freshness.py; FindCoordinator answers only then)."""
        return self.rm.active and self.lease.current(self.clock.monotonic_ms())

    def _unfenced(self) -> frozenset[int] | None:
        return None if self.quorum is None else frozenset(self.quorum.image().unfenced_brokers())

    async def _submit_alter(self, cmd: md.AlterPartition) -> object:
        before = self.rm.get(cmd.topic, cmd.partition)
        isr_before = before.isr if before is not None else ()
        result = await self.quorum.submit(cmd, timeout_s=2.0)
        if result.ok:
            self.metrics.isr_changed(isr_before, cmd.new_isr)
        if not result.ok:
            log.info("AlterPartition %s-%d: %s", cmd.topic, cmd.partition, pb.ErrorCode.Name(result.error))
        return result

    # --- registration and heartbeats ---------------------------------------------------
    async def _register(self) -> None:
        cfg = self.config
        host = cfg.advertised_host or cfg.listen_host
        port = cfg.advertised_port or self.port
        kafka_host, kafka_port = self._kafka_endpoint()
        while not self._stopping:
            try:
                result = await self.quorum.submit(md.RegisterBroker(
                    cfg.broker_id, self.incarnation_id, host, port, cfg.raft_address,
                    kafka_host=kafka_host, kafka_port=kafka_port, replication_port=self.replication_port,
                    lost_unsynced_writes=self.lost_unsynced_writes), timeout_s=2.0)
            except MetadataSubmitError as exc:
                log.info("registration not committed yet: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if result.ok:
                if not isinstance(result.value, int):
                    raise AssertionError(f"RegisterBroker answered {result.value!r}, not a broker epoch")
                self.broker_epoch = result.value
                self.rm.broker_epoch = self.broker_epoch
                if self.lost_unsynced_writes:
                    # Only now may a later start of this boot count as a process restart: until
                    # the quorum had it, a crash must not lose the news (boot_record).
                    await self.disk.run("boot-record", lambda: boot_record.loss_reported(self.data_dir),
                                        "record that the quorum knows of the lost writes")
                self.lost_unsynced_writes = False
                log.info("registered broker %d at epoch %d", cfg.broker_id, self.broker_epoch)
                self.rm.reconcile(self.quorum.image())
                return
            log.warning("registration refused: %s", pb.ErrorCode.Name(result.error))
            await asyncio.sleep(0.5)

    def _kafka_endpoint(self) -> tuple[str, int]:
        """The Kafka address this broker registers for clients ("", 0: no Kafka listener)."""
        cfg = self.config
        if self.kafka is None:
            return "", 0
        if cfg.kafka_advertised:
            return split_address(cfg.kafka_advertised)
        return split_address(cfg.kafka_listen)[0], self.kafka_port

    async def _register_and_heartbeat(self) -> None:
        # Recover every replica the local (replayed) image knows *before* registering, so the
        # broker is not elected while its logs are still being recovered (on the disk executor:
        # the loop answers meanwhile).
        try:
            self.rm.reconcile(self.quorum.image())
            await self.rm.wait_opened()
        except Exception:
            log.exception("opening replicas before registration failed")
        await self._register()
        interval = self.config.heartbeat_interval_ms / 1000
        failures = 0
        while not self._stopping:
            try:
                code = await self._heartbeat()
            except Exception as exc:
                code = pb.BROKER_NOT_AVAILABLE
                failures += 1
                if failures == 1 or failures % 10 == 0:  # a lapse the controller may fence for (chaos finding 5)
                    why = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                    log.info("heartbeat to the controller failed (%d in a row): %s", failures, why)
            else:
                if failures >= 3:
                    log.info("heartbeats reach the controller again after %d failures", failures)
                failures = 0
            if code == pb.STALE_BROKER_EPOCH:
                log.warning("controller says broker epoch %d is stale; registering again", self.broker_epoch)
                self.incarnation_id = uuid.uuid4().hex
                await self._register()
                continue
            await asyncio.sleep(interval)

    async def _heartbeat(self) -> int:
        ac = self.quorum.active_controller()
        if ac is None:
            return pb.COORDINATOR_NOT_AVAILABLE
        version = self.quorum.image().version
        health = self.log_dir_health
        if health.state == "full":  # freed space brings it back (a statvfs and a 4 KiB probe write)
            await self.disk.run("log-dir-probe", health.poll, "probe the log directory")
        offline = health.offline
        sent_ms = self.clock.monotonic_ms()
        if ac.node_id == self.config.broker_id and self.controller is not None:
            reply = self.controller.on_heartbeat(self.config.broker_id, self.broker_epoch, version,
                                                 log_dir_offline=offline)
            self.lease.on_answer(sent_ms, reply.error, reply.fenced)
            return reply.error
        stub = controller_pb2_grpc.ControllerStub(self.peers.channel(ac.rpc_address))
        resp = await stub.BrokerHeartbeat(controller_pb2.BrokerHeartbeatRequest(
            broker_id=self.config.broker_id, broker_epoch=self.broker_epoch, metadata_version=version,
            log_dir_offline=offline),
            timeout=max(0.2, 3 * self.config.heartbeat_interval_ms / 1000))
        self.lease.on_answer(sent_ms, resp.error_code, resp.fenced)
        return resp.error_code

    async def _report_unreachable(self, broker_id: int) -> None:
        now = time.monotonic()
        if now - self._last_unreachable_report.get(broker_id, 0.0) < 0.1:
            return
        self._last_unreachable_report[broker_id] = now
        ac = self.quorum.active_controller()
        if ac is None:
            return
        if ac.node_id == self.config.broker_id and self.controller is not None:
            if self.controller.is_active():
                self.controller.on_broker_unreachable(broker_id)
            return
        stub = controller_pb2_grpc.ControllerStub(self.peers.channel(ac.rpc_address))
        await stub.ReportBrokerUnreachable(controller_pb2.ReportBrokerUnreachableRequest(
            reporter_id=self.config.broker_id, broker_id=broker_id), timeout=0.5)

    async def _checkpoint_loop(self) -> None:
        last_housekeeping = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            due = self.rm.hw_checkpoints_due()
            if due:  # file writes and renames, which stall while the disk is busy: off the loop
                await self.disk.run("hw-checkpoints", lambda: write_hw_checkpoints(due), "HW checkpoints")
            if time.monotonic() - last_housekeeping >= self.config.retention_check_interval_ms / 1000:
                last_housekeeping = time.monotonic()
                await self.rm.housekeeping_in_turns(self.clock.wall_clock_ms(), self.clock.monotonic_ms())


async def run(config: BrokerConfig) -> int:
    broker = Broker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await broker.start()
    except (OSError, ValueError) as exc:
        log.error("broker %d cannot start: %s", config.broker_id, exc)
        await broker.stop()
        return 2
    await stop.wait()
    log.info("broker %d shutting down", config.broker_id)
    await broker.stop()
    return 0


DIE_WITH_PARENT_ENV = "SEMEL_BROKER_DIE_WITH_PARENT"


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG=SIGKILL, set *after* exec: a supervisor that uses gRPC must not pass a
    `preexec_fn` (a Python fork in a gRPC process runs gRPC's fork handlers in the child,
    which can abort it before exec)."""
    if os.environ.get(DIE_WITH_PARENT_ENV) != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _install_power_cut_layer(data_dir: Path) -> None:
    """Tests only (`SEMEL_TEST_POWER_CUT=1`, see `semel.storage.power_cut`): record what a
    power cut would leave. The raft journal syncs by msync, which the layer cannot see: its
    `sync` reports the file after syncing."""
    from semel.cluster.metadata import raft_journal
    from semel.storage import power_cut

    data_dir.mkdir(parents=True, exist_ok=True)
    image = power_cut.install_from_env(data_dir)
    if image is None:
        return
    msync = raft_journal.DurableJournal.sync

    def sync(journal: raft_journal.DurableJournal) -> None:
        dirty = journal._dirty
        msync(journal)
        if dirty:
            image.record_path(journal._path)

    setattr(raft_journal.DurableJournal, "sync", sync)  # noqa: B010 (a test-only patch of a method)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    config = BrokerConfig.from_args(argv)
    logging.basicConfig(level=getattr(logging, config.log_level.upper(), logging.INFO),
                        format=f"%(asctime)s b{config.broker_id} %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    _install_power_cut_layer(Path(config.data_dir))
    semel_clock.enable_test_offset(Path(config.data_dir) / semel_clock.TEST_OFFSET_FILE)
    if config.event_loop == "uvloop":
        import uvloop

        return uvloop.run(run(config))
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
