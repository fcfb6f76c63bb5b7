"""What every RPC needs (Kafka's "Operations and Resources on Protocols"), as one table, and the
pure decision over a request: `RULES[method]` says which (resource, operation) pairs a request
requires and, for the listing calls, how to drop from the answer what the caller may not
DESCRIBE. `AuthInterceptor` (security.py) is the shell: it runs `refusal` before the handler and
`rule.trim` on the answer when `--authorizer on`.

A method without a row is refused (CLUSTER_AUTHORIZATION_FAILED) and `tests/cluster/
test_authorizer.py` fails for it: a new RPC must say what it needs. A call needing several
resources is refused as a whole at the first one missing (Kafka answers per partition; a
Semel call is all or nothing so a half-authorized produce cannot half-happen).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from semel.cluster.metadata import acl
from semel.cluster.metadata.acl import (
    ALTER, ALTER_CONFIGS, CLUSTER, CLUSTER_ACTION, CLUSTER_NAME, CREATE, DELETE, DESCRIBE, DESCRIBE_CONFIGS, GROUP,
    IDEMPOTENT_WRITE, READ, TOPIC, TRANSACTIONAL_ID, WRITE,
)

# (resource type, name, operation); a `Need` is satisfied by any one of its alternatives
Check = tuple[str, str, str]
Need = tuple[Check, ...]
Allowed = Callable[[str, str, str], bool]  # (resource type, name, operation) -> may the caller?

# A check's operation that means "WRITE on any topic" (the name is ignored): an operation word
# never comes from a request, so no request can ask for this check.
ANY_TOPIC_WRITE = "WRITE (on any topic)"

ERROR_CODES = {
    TOPIC: "TOPIC_AUTHORIZATION_FAILED",
    GROUP: "GROUP_AUTHORIZATION_FAILED",
    CLUSTER: "CLUSTER_AUTHORIZATION_FAILED",
    TRANSACTIONAL_ID: "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    needs: Callable[[Any], Iterable[Need]]  # request -> what it requires (all of them)
    summary: str  # for the docs table
    trim: Callable[[Any, Any, Allowed], None] | None = None  # (request, response, allowed): drop the hidden
    broker_only: bool = False  # internal service: brokers only (CLUSTER_ACTION on the cluster)


def _one(resource_type: str, name: str, operation: str) -> Need:
    return ((resource_type, name, operation),)


def _cluster(operation: str) -> Callable[[Any], Iterable[Need]]:
    return lambda r: (_one(CLUSTER, CLUSTER_NAME, operation),)


def _nothing(r: Any) -> Iterable[Need]:
    return ()


def _topics(names: Iterable[str], operation: str) -> list[Need]:
    return [_one(TOPIC, n, operation) for n in dict.fromkeys(names)]


def _produce(r: Any) -> Iterable[Need]:
    # An idempotent batch needs nothing more: InitProducerId checked IDEMPOTENT_WRITE (or WRITE
    # on some topic, KIP-679), and this request's topics need WRITE anyway.
    needs = _topics((p.topic for p in r.partitions), WRITE)
    if r.transactional_id:
        needs.append(_one(TRANSACTIONAL_ID, r.transactional_id, WRITE))
    return needs


def _find_coordinator(r: Any) -> Iterable[Need]:
    return (_one(GROUP if r.key_type == 1 else TRANSACTIONAL_ID, r.key, DESCRIBE),)


def _init_producer_id(r: Any) -> Iterable[Need]:
    if r.transactional_id:
        return (_one(TRANSACTIONAL_ID, r.transactional_id, WRITE),)
    # Kafka 3.x (KIP-679): IDEMPOTENT_WRITE on the cluster, or WRITE on any topic
    return (((TOPIC, "", ANY_TOPIC_WRITE), (CLUSTER, CLUSTER_NAME, IDEMPOTENT_WRITE)),)


def _txn(r: Any) -> Need:
    return _one(TRANSACTIONAL_ID, r.transactional_id, WRITE)


def _group(operation: str, topic_operation: str = "") -> Callable[[Any], Iterable[Need]]:
    def needs(r: Any) -> Iterable[Need]:
        out = [_one(GROUP, r.group_id, operation)]
        if topic_operation:  # OffsetCommit/OffsetFetch name `topics`, ResetOffsets `partitions`
            topics = r.topics if hasattr(r, "topics") else r.partitions
            out += _topics((t.topic for t in topics), topic_operation)
        return out
    return needs


def _txn_offset_commit(r: Any) -> Iterable[Need]:
    return [_txn(r), _one(GROUP, r.group_id, READ), *_topics((t.topic for t in r.topics), READ)]


def _trim_metadata(r: Any, response: Any, allowed: Allowed) -> None:
    if not r.topics:  # "every topic": only those the caller may DESCRIBE (Kafka hides the others)
        keep = [t for t in response.topics if allowed(TOPIC, t.name, DESCRIBE)]
        del response.topics[:]
        response.topics.extend(keep)


def _trim_describe_topics(r: Any, response: Any, allowed: Allowed) -> None:
    if not r.names:
        keep = [t for t in response.topics if allowed(TOPIC, t.name, DESCRIBE)]
        del response.topics[:]
        response.topics.extend(keep)


def _trim_groups(r: Any, response: Any, allowed: Allowed) -> None:
    if allowed(CLUSTER, CLUSTER_NAME, DESCRIBE):
        return
    keep = [g for g in response.groups if allowed(GROUP, g.group_id, DESCRIBE)]
    del response.groups[:]
    response.groups.extend(keep)


def _trim_transactions(r: Any, response: Any, allowed: Allowed) -> None:
    keep = [t for t in response.transactions if allowed(TRANSACTIONAL_ID, t.transactional_id, DESCRIBE)]
    del response.transactions[:]
    response.transactions.extend(keep)


_BROKER_ONLY = Rule(_cluster(CLUSTER_ACTION), "brokers only (CLUSTER_ACTION Cluster)", broker_only=True)
_OPEN = Rule(_nothing, "any authenticated principal")

RULES: dict[str, Rule] = {
    "/grpc.health.v1.Health/Check": Rule(_nothing, "anyone (probes)"),
    "/grpc.health.v1.Health/Watch": Rule(_nothing, "anyone (probes)"),
    # Broker
    "/semel.v1.Broker/Metadata": Rule(lambda r: _topics(r.topics, DESCRIBE),
                                      "DESCRIBE Topic (each named; all topics: lists only the DESCRIBE-able)",
                                      _trim_metadata),
    "/semel.v1.Broker/Produce": Rule(_produce, "WRITE Topic; + WRITE TransactionalId when transactional"),
    "/semel.v1.Broker/Fetch": Rule(lambda r: _topics((p.topic for p in r.partitions), READ), "READ Topic"),
    "/semel.v1.Broker/ListOffsets": Rule(lambda r: _topics((p.topic for p in r.partitions), DESCRIBE),
                                         "DESCRIBE Topic"),
    # Transactions
    "/semel.v1.Transactions/FindCoordinator": Rule(_find_coordinator, "DESCRIBE TransactionalId or Group (the key)"),
    "/semel.v1.Transactions/InitProducerId": Rule(_init_producer_id, "WRITE TransactionalId; without one "
                                                                     "IDEMPOTENT_WRITE Cluster or WRITE on any Topic"),
    "/semel.v1.Transactions/AddPartitionsToTxn": Rule(
        lambda r: [_txn(r), *_topics((p.topic for p in r.partitions), WRITE)], "WRITE TransactionalId, WRITE Topic"),
    "/semel.v1.Transactions/AddOffsetsToTxn": Rule(lambda r: [_txn(r), _one(GROUP, r.group_id, READ)],
                                                   "WRITE TransactionalId, READ Group"),
    "/semel.v1.Transactions/EndTxn": Rule(lambda r: [_txn(r)], "WRITE TransactionalId"),
    "/semel.v1.Transactions/ListTransactions": Rule(_nothing, "lists only DESCRIBE-able TransactionalIds",
                                                    _trim_transactions),
    "/semel.v1.Transactions/DescribeTransactions": Rule(
        lambda r: [_one(TRANSACTIONAL_ID, t, DESCRIBE) for t in dict.fromkeys(r.transactional_ids)],
        "DESCRIBE TransactionalId"),
    "/semel.v1.Transactions/DescribeProducers": Rule(lambda r: [_one(TOPIC, r.topic, READ)], "READ Topic"),
    "/semel.v1.Transactions/AbortTransaction": Rule(_cluster(ALTER), "ALTER Cluster (an operator's abort)"),
    "/semel.v1.TxnMarkers/WriteTxnMarkers": _BROKER_ONLY,
    "/semel.v1.TxnMarkers/VerifyTransaction": _BROKER_ONLY,
    # Groups
    "/semel.v1.Groups/ConsumerGroupHeartbeat": Rule(_group(READ), "READ Group"),
    "/semel.v1.Groups/OffsetCommit": Rule(_group(READ, READ), "READ Group, READ Topic"),
    "/semel.v1.Groups/OffsetFetch": Rule(_group(DESCRIBE, DESCRIBE), "DESCRIBE Group, DESCRIBE Topic"),
    "/semel.v1.Groups/TxnOffsetCommit": Rule(_txn_offset_commit, "WRITE TransactionalId, READ Group, READ Topic"),
    "/semel.v1.Groups/ListGroups": Rule(_nothing, "DESCRIBE Cluster, else lists only DESCRIBE-able Groups",
                                        _trim_groups),
    "/semel.v1.Groups/DescribeGroups": Rule(lambda r: [_one(GROUP, g, DESCRIBE) for g in dict.fromkeys(r.group_ids)],
                                            "DESCRIBE Group"),
    "/semel.v1.Groups/DeleteGroup": Rule(_group(DELETE), "DELETE Group"),
    "/semel.v1.Groups/ResetOffsets": Rule(_group(READ, READ), "READ Group, READ Topic"),
    # Admin
    "/semel.v1.Admin/CreateTopics": Rule(
        lambda r: [((CLUSTER, CLUSTER_NAME, CREATE), (TOPIC, t.name, CREATE)) for t in r.topics],
        "CREATE Cluster, else CREATE Topic"),
    "/semel.v1.Admin/DeleteTopics": Rule(lambda r: _topics(r.names, DELETE), "DELETE Topic"),
    "/semel.v1.Admin/DescribeTopics": Rule(lambda r: _topics(r.names, DESCRIBE),
                                           "DESCRIBE Topic (all topics: lists only the DESCRIBE-able)",
                                           _trim_describe_topics),
    "/semel.v1.Admin/DescribeCluster": _OPEN,
    "/semel.v1.Admin/CreatePartitions": Rule(lambda r: [_one(TOPIC, r.topic, ALTER)], "ALTER Topic"),
    "/semel.v1.Admin/DescribeTopicConfig": Rule(lambda r: [_one(TOPIC, r.topic, DESCRIBE_CONFIGS)],
                                                "DESCRIBE_CONFIGS Topic"),
    "/semel.v1.Admin/AlterTopicConfig": Rule(lambda r: [_one(TOPIC, r.topic, ALTER_CONFIGS)], "ALTER_CONFIGS Topic"),
    "/semel.v1.Admin/ReassignPartitions": Rule(_cluster(ALTER), "ALTER Cluster"),
    "/semel.v1.Admin/DecommissionBroker": Rule(_cluster(ALTER), "ALTER Cluster"),
    "/semel.v1.Admin/ElectLeaders": Rule(_cluster(ALTER), "ALTER Cluster"),
    "/semel.v1.Admin/UpsertUserScram": Rule(_cluster(ALTER), "ALTER Cluster"),
    "/semel.v1.Admin/DeleteUser": Rule(_cluster(ALTER), "ALTER Cluster"),
    "/semel.v1.Admin/ListUsers": Rule(_cluster(DESCRIBE), "DESCRIBE Cluster"),
    "/semel.v1.Admin/CreateAcls": Rule(_cluster(ALTER), "ALTER Cluster"),
    "/semel.v1.Admin/DeleteAcls": Rule(_cluster(ALTER), "ALTER Cluster"),
    "/semel.v1.Admin/DescribeAcls": Rule(_cluster(DESCRIBE), "DESCRIBE Cluster"),
    # internal
    "/semel.v1.Replication/ReplicaFetch": _BROKER_ONLY,
    "/semel.v1.Replication/OffsetForLeaderEpoch": _BROKER_ONLY,
    "/semel.v1.Controller/BrokerHeartbeat": _BROKER_ONLY,
    "/semel.v1.Controller/ReportBrokerUnreachable": _BROKER_ONLY,
}

_UNLISTED = Rule(_cluster(CLUSTER_ACTION), "not in the table: refused")


def rule(method: str) -> Rule:
    return RULES.get(method, _UNLISTED)


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    code: str  # an ErrorCode name, e.g. "TOPIC_AUTHORIZATION_FAILED"
    message: str


def refusal(method: str, request: Any, principal: str, host: str, allowed: Allowed) -> Refusal | None:
    """The first requirement of `request` the caller lacks, or None when every one holds."""
    r = rule(method)
    needs: Iterable[Need] = r.needs(request) if request is not None or r.broker_only else ()
    for need in needs:
        if any(allowed(*check) for check in need):
            continue
        resource_type, name, operation = need[-1]  # the most specific alternative (Kafka's)
        return Refusal(ERROR_CODES[resource_type],
                       f"{ERROR_CODES[resource_type]}: {principal} (host {host or 'unknown'}) is not allowed "
                       f"{operation} on {resource_type} {name!r} ({method.rsplit('/', 1)[-1]} needs "
                       f"{r.summary}; an operator grants it with `semel acl add`)")
    return None


def allowed_for(acls: Sequence[acl.AclBinding], principal: str, host: str, super_user: bool) -> Allowed:
    """The caller's verdicts over `acls` (the one evaluator, `acl.authorize`, over the bindings
    the index says can apply): shared by the gRPC interceptor and the Kafka listener."""
    if super_user:
        return _always
    index = acl.index_of(acls)

    def allowed(resource_type: str, name: str, operation: str) -> bool:
        if operation == ANY_TOPIC_WRITE:
            return acl.authorize_any(index.candidates(principal, TOPIC), principal, host, WRITE, TOPIC)
        return acl.authorize(index.candidates(principal, resource_type, name), principal, host, operation,
                             resource_type, name)
    return allowed


def _always(resource_type: str, name: str, operation: str) -> bool:
    return True
