"""The admin client: topics and cluster description, through any broker."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from semel.client import errors as client_errors
from semel import scram
from semel.client.security import ClientSecurity
from semel.client.base import (
    CONNECT_TIMEOUT_MS_DEFAULT,
    METADATA_MAX_AGE_MS_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT,
    RETRY_BACKOFF_MAX_MS_DEFAULT,
    RETRY_BACKOFF_MS_DEFAULT,
    _ClientBase,
)
from semel.client.errors import (
    SemelError,
)
from semel.client.metadata import (
    ClusterView,
    rpc_error,
)
from semel.clock import monotonic_ms
from semel.v1 import admin_pb2, common_pb2

# ======================================================================================
# Admin
# ======================================================================================


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionDescription:
    partition: int
    leader_id: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    high_watermark: int
    log_start_offset: int
    last_stable_offset: int
    error_code: common_pb2.ErrorCode
    target_replicas: tuple[int, ...] = ()  # a reassignment under way (empty: none)
    eligible_leader_replicas: tuple[int, ...] = ()  # KIP-966 (docs/design.md); empty: none


@dataclasses.dataclass(frozen=True, slots=True)
class TopicConfigEntry:
    name: str  # Semel's name
    kafka_name: str
    value: str
    is_default: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionChange:
    """One partition's outcome of a reassignment or a leader election."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    leader_id: int
    error_code: common_pb2.ErrorCode
    error_message: str

    @property
    def ok(self) -> bool:
        return self.error_code == common_pb2.NONE


@dataclasses.dataclass(frozen=True, slots=True)
class TopicDescription:
    name: str
    topic_id: str
    internal: bool
    configs: dict[str, str]
    partitions: tuple[PartitionDescription, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerDescription:
    broker_id: int
    host: str
    port: int
    fenced: bool
    broker_epoch: int
    is_controller: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterDescription:
    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerDescription, ...]
    metadata_version: int
    quorum_voters: tuple[str, ...]
    quorum_leader: str


@dataclasses.dataclass(frozen=True, slots=True)
class Acl:
    """An ACL binding (Kafka's words: principal "User:alice" or "User:*"; host an IP or "*";
    operation READ/WRITE/CREATE/DELETE/ALTER/DESCRIBE/CLUSTER_ACTION/DESCRIBE_CONFIGS/
    ALTER_CONFIGS/IDEMPOTENT_WRITE/ALL; permission ALLOW/DENY; resource_type TOPIC/GROUP/
    TRANSACTIONAL_ID/CLUSTER; pattern_type LITERAL/PREFIXED). As a filter, "" matches anything."""

    principal: str = ""
    host: str = ""
    operation: str = ""
    permission: str = ""
    resource_type: str = ""
    resource_name: str = ""
    pattern_type: str = ""


class Admin(_ClientBase):
    """Topic and cluster administration. Calls go to any broker; retriable errors are retried
    until `timeout_ms`."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        retry_backoff_max_ms: int = RETRY_BACKOFF_MAX_MS_DEFAULT,
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS_DEFAULT,
        security: ClientSecurity | None = None,
    ) -> None:
        super().__init__(bootstrap, request_timeout_ms, retry_backoff_ms, retry_backoff_max_ms, METADATA_MAX_AGE_MS_DEFAULT,
                         security)
        self.connect_timeout_ms = connect_timeout_ms
        self._answered = False  # some broker answered once: from then on, wait the full timeout

    def _call(self, method: str, request: Any, timeout_ms: int | None) -> Any:
        """One admin RPC to the first broker that answers, retrying transport errors."""
        start = monotonic_ms()
        deadline = start + (timeout_ms or self.request_timeout_ms)
        attempts = 0
        while True:
            attempts += 1
            last: SemelError | None = None
            for address in self._metadata.candidates():
                remaining = deadline - monotonic_ms()
                try:
                    response = getattr(self._connections.admin(address), method)(
                        request, timeout=max(0.05, remaining / 1000)
                    )
                    self._answered = True
                    return response
                except grpc.RpcError as exc:
                    last = rpc_error(exc, address, method)
                    if not last.retriable:
                        raise last from None
            never_answered = not self._answered and monotonic_ms() - start >= self.connect_timeout_ms
            if never_answered or monotonic_ms() + self._backoff_ms(attempts) >= deadline:
                assert last is not None
                if isinstance(last, client_errors.BrokerUnreachableError):
                    raise client_errors.BrokerUnreachableError(
                        f"cannot reach any broker ({last.message})"
                    ) from None
                raise last
            time.sleep(self._backoff_ms(attempts) / 1000)

    def _with_retries(self, call: Callable[[int], Any], timeout_ms: int | None,
                      final: Callable[[SemelError], bool] = lambda exc: False) -> Any:
        """Repeats `call(remaining_ms)` while it raises a retriable SemelError (that `final`
        does not single out), until the deadline."""
        deadline = monotonic_ms() + (timeout_ms or self.request_timeout_ms)
        attempts = 0
        while True:
            attempts += 1
            try:
                return call(max(1, deadline - monotonic_ms()))
            except SemelError as exc:
                if not exc.retriable or final(exc) or monotonic_ms() + self._backoff_ms(attempts) >= deadline:
                    raise
                time.sleep(self._backoff_ms(attempts) / 1000)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int | None = None,
        configs: dict[str, str] | None = None,
        timeout_ms: int | None = None,
        validate_only: bool = False,
        if_not_exists: bool = False,
    ) -> None:
        """Create one topic; raises TopicAlreadyExistsError (unless `if_not_exists`: then an
        existing topic of that name is left as it is, whatever its partitions and configs),
        InvalidTopicNameError, ..."""
        topic = admin_pb2.NewTopic(name=name, partitions=partitions, configs=configs or {})
        if replication_factor is not None:  # unset: the cluster default; 0 is refused (INVALID_REPLICATION_FACTOR)
            topic.replication_factor = replication_factor
        timeout = timeout_ms or self.request_timeout_ms

        def attempt(remaining_ms: int) -> None:
            request = admin_pb2.CreateTopicsRequest(topics=[topic], validate_only=validate_only, timeout_ms=remaining_ms)
            response = self._call("CreateTopics", request, remaining_ms)
            _raise_topic_results(response.results, "create topic")

        try:
            self._with_retries(attempt, timeout)
        except client_errors.TopicAlreadyExistsError:
            if not if_not_exists:
                raise

    def delete_topic(self, name: str, timeout_ms: int | None = None) -> None:
        """Delete one topic; raises UnknownTopicOrPartitionError at once when there is none.

        The broker asks the metadata quorum, so "no such topic" is the cluster's answer, not one
        broker's lag: it is not retried (it was, for the whole timeout: 30 s for a typo). After
        an attempt whose outcome is unknown (timed out), "no such topic" means that attempt
        deleted it."""
        timeout = timeout_ms or self.request_timeout_ms
        maybe_deleted = False

        def attempt(remaining_ms: int) -> None:
            nonlocal maybe_deleted
            request = admin_pb2.DeleteTopicsRequest(names=[name], timeout_ms=remaining_ms)
            try:
                response = self._call("DeleteTopics", request, remaining_ms)
                _raise_topic_results(response.results, "delete topic")
            except client_errors.UnknownTopicOrPartitionError:
                if maybe_deleted:
                    return
                raise
            except SemelError as exc:
                maybe_deleted = maybe_deleted or exc.outcome_unknown or exc.code == common_pb2.REQUEST_TIMED_OUT
                raise

        self._with_retries(attempt, timeout,
                           final=lambda exc: isinstance(exc, client_errors.UnknownTopicOrPartitionError))

    def describe_topics(
        self, names: Sequence[str] | None = None, include_internal: bool = False, timeout_ms: int | None = None
    ) -> list[TopicDescription]:
        """Descriptions of the named topics (every topic when None); raises for a missing named topic."""
        request = admin_pb2.DescribeTopicsRequest(names=list(names or []), include_internal=include_internal)
        response = self._call("DescribeTopics", request, timeout_ms)
        out = []
        for topic in response.topics:
            if topic.error_code != common_pb2.NONE:
                raise client_errors.error_for_code(topic.error_code, context=f"describe topic {topic.name!r}")
            out.append(
                TopicDescription(
                    topic.name,
                    topic.topic_id,
                    topic.internal,
                    dict(topic.configs),
                    tuple(
                        PartitionDescription(
                            p.partition, p.leader_id, p.leader_epoch, tuple(p.replicas), tuple(p.isr),
                            p.high_watermark, p.log_start_offset, p.last_stable_offset, p.error_code,
                            tuple(p.target_replicas), tuple(p.eligible_leader_replicas),
                        )
                        for p in sorted(topic.partitions, key=lambda p: p.partition)
                    ),
                )
            )
        return sorted(out, key=lambda t: t.name)

    def list_topics(self, include_internal: bool = False, timeout_ms: int | None = None) -> list[str]:
        return [t.name for t in self.describe_topics(None, include_internal, timeout_ms)]

    def describe_cluster(self, timeout_ms: int | None = None) -> ClusterDescription:
        response = self._call("DescribeCluster", admin_pb2.DescribeClusterRequest(), timeout_ms)
        return ClusterDescription(
            response.cluster_id,
            response.controller_id,
            tuple(
                BrokerDescription(b.broker_id, b.host, b.port, b.fenced, b.broker_epoch, b.is_controller)
                for b in sorted(response.brokers, key=lambda b: b.broker_id)
            ),
            response.metadata_version,
            tuple(response.quorum_voters),
            response.quorum_leader,
        )

    # --- cluster management (deploy/README.md, "Cluster management") -------------------------------------
    def create_partitions(self, topic: str, count: int, timeout_ms: int | None = None) -> None:
        """Grow `topic` to `count` partitions in total; raises InvalidPartitionsError when
        `count` is not larger than the current count."""
        timeout = timeout_ms or self.request_timeout_ms

        def attempt(remaining_ms: int) -> None:
            request = admin_pb2.CreatePartitionsRequest(topic=topic, count=count, timeout_ms=remaining_ms)
            _raise_topic_results([self._call("CreatePartitions", request, remaining_ms)], "add partitions to")

        self._with_retries(attempt, timeout)

    def describe_topic_config(self, topic: str, timeout_ms: int | None = None) -> list[TopicConfigEntry]:
        response = self._call("DescribeTopicConfig", admin_pb2.DescribeTopicConfigRequest(topic=topic), timeout_ms)
        if response.error_code != common_pb2.NONE:
            raise client_errors.error_for_code(response.error_code, response.error_message,
                                               context=f"describe config of {topic!r}")
        return [TopicConfigEntry(e.name, e.kafka_name, e.value, e.is_default) for e in response.entries]

    def alter_topic_config(
        self,
        topic: str,
        set_configs: dict[str, str] | None = None,
        delete: Sequence[str] = (),
        validate_only: bool = False,
        timeout_ms: int | None = None,
    ) -> None:
        """Set keys (Semel's or Kafka's names: retention_ms or retention.ms, ...) and return
        others to their defaults; the brokers apply the change to open replicas at once.
        Raises InvalidConfigError whose message names the key and lists the valid ones."""
        timeout = timeout_ms or self.request_timeout_ms

        def attempt(remaining_ms: int) -> None:
            request = admin_pb2.AlterTopicConfigRequest(topic=topic, set=set_configs or {}, delete=list(delete),
                                                        validate_only=validate_only, timeout_ms=remaining_ms)
            _raise_topic_results([self._call("AlterTopicConfig", request, remaining_ms)], "alter config of")

        self._with_retries(attempt, timeout)

    def reassign_partitions(
        self, reassignments: dict[tuple[str, int], Sequence[int]], timeout_ms: int | None = None
    ) -> list[PartitionChange]:
        """Start moving each (topic, partition) to its new replica list (first = preferred
        leader). Returns each partition's outcome of the *start*; the move completes in the
        background (watch `describe_topics(...)[i].partitions[j].target_replicas` empty out)."""
        request = admin_pb2.ReassignPartitionsRequest(reassignments=[
            admin_pb2.PartitionReassignment(topic=t, partition=p, replicas=list(replicas))
            for (t, p), replicas in sorted(reassignments.items())
        ], timeout_ms=timeout_ms or self.request_timeout_ms)
        return self._changes(self._call("ReassignPartitions", request, timeout_ms), "reassign partitions")

    def decommission_broker(self, broker_id: int, timeout_ms: int | None = None) -> list[PartitionChange]:
        """Start moving every replica off `broker_id` (reassignments chosen by the cluster)."""
        request = admin_pb2.DecommissionBrokerRequest(broker_id=broker_id,
                                                      timeout_ms=timeout_ms or self.request_timeout_ms)
        return self._changes(self._call("DecommissionBroker", request, timeout_ms), f"decommission broker {broker_id}")

    def elect_leaders(self, topics: Sequence[str] | None = None, timeout_ms: int | None = None) -> list[PartitionChange]:
        """Make each partition's preferred (first) replica its leader where it is alive and in
        the ISR; returns one entry per partition that needed an election."""
        request = admin_pb2.ElectLeadersRequest(topics=list(topics or []), timeout_ms=timeout_ms or self.request_timeout_ms)
        response = self._call("ElectLeaders", request, timeout_ms)
        return [_change(r) for r in response.results]

    def _changes(self, response: Any, what: str) -> list[PartitionChange]:
        if response.error_code != common_pb2.NONE:
            raise client_errors.error_for_code(response.error_code, response.error_message, context=what)
        return [_change(r) for r in response.results]

    # --- users (brokers with --authentication required: super users only) -------------------
    def upsert_user(self, name: str, password: str, mechanism: str = "SCRAM-SHA-256",
                    iterations: int = scram.ITERATIONS_DEFAULT, timeout_ms: int | None = None) -> None:
        """Create user `name` or set its password for `mechanism`. The SCRAM credential (salt,
        StoredKey, ServerKey) is derived here: the password itself never leaves this process."""
        problem = scram.user_name_problem(name)
        if problem:
            raise client_errors.ConfigError(problem)
        if mechanism not in scram.MECHANISMS or not password:
            raise client_errors.ConfigError(f"mechanism must be one of {', '.join(scram.MECHANISMS)} and the "
                                            "password non-empty")
        c = scram.make_credential(password, mechanism, iterations)
        request = admin_pb2.UpsertUserScramRequest(name=name, mechanism=c.mechanism, salt=c.salt,
                                                   iterations=c.iterations, stored_key=c.stored_key,
                                                   server_key=c.server_key)

        def attempt(remaining_ms: int) -> None:
            response = self._call("UpsertUserScram", request, remaining_ms)
            if response.error_code != common_pb2.NONE:
                raise client_errors.error_for_code(response.error_code, response.error_message,
                                                   context=f"user {name!r}")

        self._with_retries(attempt, timeout_ms)

    def delete_user(self, name: str, timeout_ms: int | None = None) -> None:
        def attempt(remaining_ms: int) -> None:
            response = self._call("DeleteUser", admin_pb2.DeleteUserRequest(name=name), remaining_ms)
            if response.error_code != common_pb2.NONE:
                raise client_errors.error_for_code(response.error_code, response.error_message,
                                                   context=f"delete user {name!r}")

        self._with_retries(attempt, timeout_ms)

    def list_users(self, timeout_ms: int | None = None) -> list[tuple[str, tuple[str, ...]]]:
        """(name, its SCRAM mechanisms) of every user, by name."""
        response = self._call("ListUsers", admin_pb2.ListUsersRequest(), timeout_ms)
        return [(u.name, tuple(u.mechanisms)) for u in response.users]

    # --- ACLs (deploy/README.md, "ACLs"; the broker checks them under --authorizer on) ----------
    def create_acls(self, acls: Sequence[Acl], timeout_ms: int | None = None) -> None:
        """Add the bindings (one already present stays once). Empty fields take the broker's
        defaults: host `*`, pattern LITERAL, the cluster's name for a CLUSTER resource."""
        request = admin_pb2.CreateAclsRequest(acls=[admin_pb2.Acl(**dataclasses.asdict(a)) for a in acls])

        def attempt(remaining_ms: int) -> None:
            response = self._call("CreateAcls", request, remaining_ms)
            if response.error_code != common_pb2.NONE:
                raise client_errors.error_for_code(response.error_code, response.error_message, context="create ACLs")

        self._with_retries(attempt, timeout_ms)

    def delete_acls(self, filters: Sequence[Acl], timeout_ms: int | None = None) -> int:
        """Remove every binding any filter matches (an empty field matches anything); how many."""
        request = admin_pb2.DeleteAclsRequest(filters=[admin_pb2.AclFilter(**dataclasses.asdict(f)) for f in filters])
        deleted = 0

        def attempt(remaining_ms: int) -> None:
            nonlocal deleted
            response = self._call("DeleteAcls", request, remaining_ms)
            if response.error_code != common_pb2.NONE:
                raise client_errors.error_for_code(response.error_code, response.error_message, context="delete ACLs")
            deleted = response.deleted

        self._with_retries(attempt, timeout_ms)
        return deleted

    def describe_acls(self, acl_filter: Acl | None = None, timeout_ms: int | None = None) -> list[Acl]:
        """The bindings the filter matches (None: all), in creation order."""
        request = admin_pb2.DescribeAclsRequest(
            filter=admin_pb2.AclFilter(**dataclasses.asdict(acl_filter or Acl())))
        response = self._call("DescribeAcls", request, timeout_ms)
        return [Acl(a.principal, a.host, a.operation, a.permission, a.resource_type, a.resource_name, a.pattern_type)
                for a in response.acls]

    def metadata(self, topics: Sequence[str] | None = None, timeout_ms: int | None = None) -> ClusterView:
        """A fresh metadata view (leaders, replicas, ISR) from any broker."""
        return self._metadata.refresh(topics or [], timeout_ms)

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _change(r: Any) -> PartitionChange:
    return PartitionChange(r.topic, r.partition, tuple(r.replicas), r.leader_id, r.error_code, r.error_message)


def _raise_topic_results(results: Sequence[admin_pb2.TopicResult], what: str) -> None:
    for result in results:
        if result.error_code != common_pb2.NONE:
            raise client_errors.error_for_code(
                result.error_code, result.error_message, context=f"{what} {result.name!r}"
            )


