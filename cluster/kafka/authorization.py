"""Kafka's authorization on the Kafka-protocol listener (`--authorizer on`): for every API the
listener serves, what Kafka checks ("Operations and Resources on Protocols", KIP-11) and where
Kafka puts a refusal, so real clients report it cleanly. The verdicts come from the gRPC side's
one evaluator over the quorum's ACLs (`authorizer.allowed_for` -> `acl.authorize`); this module
only says what each Kafka API needs and shapes the refusals.

`RULES[api_key]` decides, before the handler runs and without I/O, from the request, the
caller's `allowed` and the metadata image:
  * None: serve the request as it is (everything it names is allowed);
  * `Answer(values)`: answer `values`, the handler is not called (a refusal of the whole
    request: EndTxn without WRITE on its transactional id, a JoinGroup without READ on the
    group, a Fetch of nothing but refused topics ...);
  * `Serve(body, finish)`: serve `body`, the request with only what is allowed, and let
    `finish` add the refused partitions / resources (TOPIC_AUTHORIZATION_FAILED ...) to the
    answer or drop from it what the caller may not DESCRIBE (listings, Metadata of all topics).
A Kafka request is never refused by closing the connection: every refusal is an error code in
the answer (TOPIC_/GROUP_/CLUSTER_/TRANSACTIONAL_ID_AUTHORIZATION_FAILED, 29/30/31/53).

A served API without a row fails `tests/cluster/test_kafka_authorization.py`: a new Kafka API
must say what it needs. Super users and brokers skip every check (`KafkaAuthorizer.decide`
returns None at once), as on gRPC.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode as K
from semel import limits
from semel.cluster.broker import authorizer
from semel.cluster.broker.principal import Principal, is_broker
from semel.cluster.kafka import codec
from semel.cluster.kafka.errors import to_kafka
from semel.cluster.metadata import state as md
from semel.cluster.metadata.acl import (
    ALTER, ALTER_CONFIGS, CLUSTER, CLUSTER_ACTION, CLUSTER_NAME, CREATE, DELETE, DESCRIBE, DESCRIBE_CONFIGS, GROUP,
    IDEMPOTENT_WRITE, READ, TOPIC, TRANSACTIONAL_ID, WRITE,
)
from semel.coordinator import classic_group as cg
from semel.scram import ANONYMOUS
from semel.v1 import common_pb2 as pb

if TYPE_CHECKING:
    from semel.cluster.broker.security import BrokerSecurity

log = logging.getLogger(__name__)

Allowed = authorizer.Allowed
Values = dict[str, Any]
NULL_UUID = "00000000000000000000000000000000"
NO_OPERATIONS = -2147483648  # authorized_operations not asked for (KIP-430's "absent")
NULL_TIMESTAMP = datetime.datetime.fromtimestamp(-0.001, tz=datetime.timezone.utc)  # encodes as -1
RESOURCE_TOPIC, RESOURCE_BROKER = 2, 4  # DescribeConfigs / AlterConfigs resource types

# Kafka's error for each resource type, through the one Semel -> Kafka table (errors.py)
ERRORS: dict[str, K] = {rt: to_kafka(pb.ErrorCode.Value(name)) for rt, name in authorizer.ERROR_CODES.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    values: Values | None  # None: no answer at all (Produce with acks=0)


@dataclasses.dataclass(frozen=True, slots=True)
class Serve:
    body: Any  # the kio request entity to serve (only what is allowed)
    finish: Callable[[Values | None], Values | None]  # the handler's answer -> the answer sent


Decision = Answer | Serve | None


@dataclasses.dataclass(frozen=True, slots=True)
class Env:
    image: md.MetadataImage
    auto_create: bool  # does Metadata auto-create missing topics on this broker?


Decide = Callable[[codec.Request, Allowed, Env], Decision]


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaRule:
    summary: str  # what it needs (docs/kafka.md's table)
    refusal: str = ""  # where a refusal goes in the answer
    decide: Decide | None = None  # None: nothing to check (connection and discovery APIs)


# --- helpers ------------------------------------------------------------------------------------

def _denied(names: Iterable[str], resource_type: str, operation: str, allowed: Allowed) -> set[str]:
    """The names (each checked once, however many partitions name it) the caller may not."""
    return {n for n in dict.fromkeys(names) if not allowed(resource_type, n, operation)}


def _serve(body: Any, field: str, kept: tuple[Any, ...], key: str, refused: list[Values],
           empty: Values) -> Decision:
    """Serve `body` with `field` = kept and add `refused` to the answer's `key`; with nothing
    kept, answer `empty` + `refused` without serving."""
    if not kept:
        return Answer({**empty, key: refused})
    return Serve(dataclasses.replace(body, **{field: kept}), _adding(key, refused))


def _adding(key: str, refused: list[Values]) -> Callable[[Values | None], Values | None]:
    def finish(values: Values | None) -> Values | None:
        if values is None:
            return None
        return {**values, key: [*values[key], *refused]}
    return finish


def _keeping(key: str, keep: Callable[[Values], bool]) -> Callable[[Values | None], Values | None]:
    def finish(values: Values | None) -> Values | None:
        if values is None:
            return None
        return {**values, key: [v for v in values[key] if keep(v)]}
    return finish


def _message(resource_type: str, name: str, operation: str) -> str:
    return f"{ERRORS[resource_type].name.upper()}: not allowed {operation} on {resource_type} {name!r}"


# --- Produce / Fetch / ListOffsets / OffsetForLeaderEpoch / Metadata ------------------------------

def _produce_partition(index: int, code: K, message: str) -> Values:
    return {"index": index, "error_code": code, "base_offset": -1, "log_append_time": None, "log_start_offset": -1,
            "record_errors": [], "error_message": message}


def _produce_topics(topics: Iterable[Any], code: K, message: Callable[[str], str]) -> list[Values]:
    return [{"name": t.name, "partition_responses": [_produce_partition(pd.index, code, message(t.name))
                                                     for pd in t.partition_data]} for t in topics]


def _produce(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    from semel.cluster.kafka.txn_handlers import _transactional_bit

    body = req.body
    silent = body.acks == 0  # acks=0 is never answered, refused or not
    tid = body.transactional_id
    if tid is not None or any(_transactional_bit(pd.records) for t in body.topic_data for pd in t.partition_data):
        if tid is None or not allowed(TRANSACTIONAL_ID, tid, WRITE):  # Kafka: the whole request
            message = _message(TRANSACTIONAL_ID, tid or "", WRITE)
            return Answer(None if silent else {"throttle_time": 0, "responses": _produce_topics(
                body.topic_data, ERRORS[TRANSACTIONAL_ID], lambda _t: message)})
    denied = _denied((t.name for t in body.topic_data), TOPIC, WRITE, allowed)
    if not denied:
        return None
    kept = tuple(t for t in body.topic_data if t.name not in denied)
    refused = _produce_topics((t for t in body.topic_data if t.name in denied), ERRORS[TOPIC],
                              lambda name: _message(TOPIC, name, WRITE))
    if silent:
        return Serve(dataclasses.replace(body, topic_data=kept), lambda v: None) if kept else Answer(None)
    return _serve(body, "topic_data", kept, "responses", refused, {"throttle_time": 0})


def _fetch(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    if body.replica_id >= 0:
        return None  # follower fetch is not served to anyone here (the handler closes the connection)
    denied = _denied((t.topic for t in body.topics), TOPIC, READ, allowed)
    if not denied:
        return None
    refused = [{"topic": t.topic, "partitions": [
        {"partition_index": p.partition, "error_code": ERRORS[TOPIC], "high_watermark": -1,
         "last_stable_offset": -1, "log_start_offset": -1, "aborted_transactions": None,
         "preferred_read_replica": -1, "records": b""} for p in t.partitions]}
        for t in body.topics if t.topic in denied]
    kept = tuple(t for t in body.topics if t.topic not in denied)
    if not kept:  # answered at once: nothing to wait for
        return Answer({"throttle_time": 0, "error_code": K.none, "session_id": 0, "responses": refused})

    def finish(values: Values | None) -> Values | None:
        if values is None or values["error_code"] != K.none:  # a session error answers no partitions
            return values
        return {**values, "responses": [*values["responses"], *refused]}
    return Serve(dataclasses.replace(body, topics=kept), finish)


def _list_offsets(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    denied = _denied((t.name for t in body.topics), TOPIC, DESCRIBE, allowed)
    if not denied:
        return None
    refused = [{"name": t.name, "partitions": [
        {"partition_index": p.partition_index, "error_code": ERRORS[TOPIC], "timestamp": -1, "offset": -1,
         "leader_epoch": -1} for p in t.partitions]} for t in body.topics if t.name in denied]
    return _serve(body, "topics", tuple(t for t in body.topics if t.name not in denied), "topics", refused,
                  {"throttle_time": 0})


def _offset_for_leader_epoch(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    if allowed(CLUSTER, CLUSTER_NAME, CLUSTER_ACTION):
        return None
    denied = _denied((t.topic for t in body.topics), TOPIC, DESCRIBE, allowed)
    if not denied:
        return None
    refused = [{"topic": t.topic, "partitions": [
        {"error_code": ERRORS[TOPIC], "partition": p.partition, "leader_epoch": -1, "end_offset": -1}
        for p in t.partitions]} for t in body.topics if t.topic in denied]
    return _serve(body, "topics", tuple(t for t in body.topics if t.topic not in denied), "topics", refused,
                  {"throttle_time": 0})


def _metadata(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    """All topics: only the DESCRIBE-able are listed. Named ones the caller may not DESCRIBE
    (or, when it would auto-create them, not CREATE) are answered TOPIC_AUTHORIZATION_FAILED,
    existing or not, and never auto-created (Kafka's getTopicMetadata)."""
    from semel.cluster.kafka.handlers import _asked_name

    body = req.body
    if body.topics is None:
        return Serve(body, _keeping("topics", lambda t: bool(allowed(TOPIC, t["name"], DESCRIBE))))
    auto = env.auto_create and getattr(body, "allow_auto_topic_creation", True)
    kept: list[Any] = []
    refused: list[Values] = []
    for asked in body.topics:
        name = _asked_name(env.image, asked)
        if not name:  # an id no topic has: the handler answers UNKNOWN_TOPIC_ID
            kept.append(asked)
            continue
        ok = allowed(TOPIC, name, DESCRIBE) and not (
            auto and env.image.topic(name) is None
            and not (allowed(CLUSTER, CLUSTER_NAME, CREATE) or allowed(TOPIC, name, CREATE)))
        if ok:
            kept.append(asked)
            continue
        by_id = asked.name is None
        refused.append({"error_code": ERRORS[TOPIC], "name": None if by_id else name,
                        "topic_id": str(asked.topic_id).replace("-", "") if by_id else NULL_UUID,
                        "is_internal": False, "partitions": []})
    if not refused:
        return None
    return Serve(dataclasses.replace(body, topics=tuple(kept)), _adding("topics", refused))


# --- FindCoordinator / InitProducerId / transactions ----------------------------------------------

def _coordinator_refusal(resource_type: str, key: str) -> Values:
    return {"error_code": ERRORS[resource_type], "error_message": _message(resource_type, key, DESCRIBE),
            "node_id": -1, "host": "", "port": -1}


def _find_coordinator(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    key_type = getattr(body, "key_type", 0)
    if key_type not in (0, 1):
        return None  # the handler answers INVALID_REQUEST
    rt = GROUP if key_type == 0 else TRANSACTIONAL_ID
    if req.api_version < 4:
        return None if allowed(rt, body.key, DESCRIBE) else Answer({"throttle_time": 0,
                                                                    **_coordinator_refusal(rt, body.key)})
    denied = _denied(body.coordinator_keys, rt, DESCRIBE, allowed)
    if not denied:
        return None
    refused = [{"key": k, **_coordinator_refusal(rt, k)} for k in body.coordinator_keys if k in denied]
    return _serve(body, "coordinator_keys", tuple(k for k in body.coordinator_keys if k not in denied),
                  "coordinators", refused, {"throttle_time": 0})


def _init_producer_id(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    tid = req.body.transactional_id
    if tid is not None:
        ok, rt = allowed(TRANSACTIONAL_ID, tid, WRITE), TRANSACTIONAL_ID
    else:  # KIP-679: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic
        ok = allowed(CLUSTER, CLUSTER_NAME, IDEMPOTENT_WRITE) or allowed(TOPIC, "", authorizer.ANY_TOPIC_WRITE)
        rt = CLUSTER
    if ok:
        return None
    return Answer({"throttle_time": 0, "error_code": ERRORS[rt], "producer_id": -1, "producer_epoch": -1})


def _add_partitions_to_txn(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    from semel.cluster.kafka.txn_handlers import _add_partitions_answer

    body = req.body
    topics = body.v3_and_below_topics
    if not allowed(TRANSACTIONAL_ID, body.v3_and_below_transactional_id, WRITE):
        return Answer(_add_partitions_answer(topics, {}, ERRORS[TRANSACTIONAL_ID]))
    denied = _denied((t.name for t in topics), TOPIC, WRITE, allowed)
    if not denied:
        return None
    # Kafka: nothing is added; the refused topics say why, the others OPERATION_NOT_ATTEMPTED
    codes = {(t.name, int(p)): ERRORS[TOPIC] for t in topics if t.name in denied for p in t.partitions}
    return Answer(_add_partitions_answer(topics, codes, K.operation_not_attempted))


def _txn_then(group_operation: str = "") -> Decide:
    """WRITE on the transactional id, then (AddOffsetsToTxn) READ on the group: one error code."""
    def decide(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
        body = req.body
        if not allowed(TRANSACTIONAL_ID, body.transactional_id, WRITE):
            return Answer({"throttle_time": 0, "error_code": ERRORS[TRANSACTIONAL_ID]})
        if group_operation and not allowed(GROUP, body.group_id, group_operation):
            return Answer({"throttle_time": 0, "error_code": ERRORS[GROUP]})
        return None
    return decide


def _commit_answer(topics: Iterable[Any], code: K) -> list[Values]:
    return [{"name": t.name, "partitions": [{"partition_index": p.partition_index, "error_code": code}
                                            for p in t.partitions]} for t in topics]


def _offset_commit(transactional: bool) -> Decide:
    """(Txn)OffsetCommit: [WRITE on the transactional id,] READ on the group (every partition
    refused with the error), then READ on each topic (its partitions refused, the rest committed)."""
    def decide(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
        body = req.body
        if transactional and not allowed(TRANSACTIONAL_ID, body.transactional_id, WRITE):
            return Answer({"throttle_time": 0, "topics": _commit_answer(body.topics, ERRORS[TRANSACTIONAL_ID])})
        if not allowed(GROUP, body.group_id, READ):
            return Answer({"throttle_time": 0, "topics": _commit_answer(body.topics, ERRORS[GROUP])})
        denied = _denied((t.name for t in body.topics), TOPIC, READ, allowed)
        if not denied:
            return None
        refused = _commit_answer((t for t in body.topics if t.name in denied), ERRORS[TOPIC])
        return _serve(body, "topics", tuple(t for t in body.topics if t.name not in denied), "topics", refused,
                      {"throttle_time": 0})
    return decide


def _offset_fetch(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    group_error = ERRORS[GROUP]
    if not allowed(GROUP, body.group_id, DESCRIBE):
        if req.api_version >= 2:  # a request-level error
            return Answer({"throttle_time": 0, "topics": [], "error_code": group_error})
        return Answer({"throttle_time": 0, "error_code": group_error, "topics": [  # v1: on every partition
            {"name": t.name, "partitions": [_fetched(i, group_error) for i in t.partition_indexes]}
            for t in body.topics or ()]})
    if body.topics is None:  # every committed offset: only the DESCRIBE-able topics
        return Serve(body, _keeping("topics", lambda t: bool(allowed(TOPIC, t["name"], DESCRIBE))))
    denied = _denied((t.name for t in body.topics), TOPIC, DESCRIBE, allowed)
    if not denied:
        return None
    refused = [{"name": t.name, "partitions": [_fetched(i, ERRORS[TOPIC]) for i in t.partition_indexes]}
               for t in body.topics if t.name in denied]
    return _serve(body, "topics", tuple(t for t in body.topics if t.name not in denied), "topics", refused,
                  {"throttle_time": 0, "error_code": K.none})


def _fetched(index: int, code: K) -> Values:
    return {"partition_index": index, "committed_offset": -1, "committed_leader_epoch": -1, "metadata": "",
            "error_code": code}


# --- groups ---------------------------------------------------------------------------------------

def _group_read(answer: Callable[[codec.Request, K], Values]) -> Decide:
    def decide(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
        if allowed(GROUP, req.body.group_id, READ):
            return None
        return Answer(answer(req, ERRORS[GROUP]))
    return decide


def _join_refused(req: codec.Request, code: K) -> Values:
    from semel.cluster.kafka.group_handlers import _join_answer

    return _join_answer(req, cg.JoinResult(code.value, member_id=req.body.member_id))


def _sync_refused(req: codec.Request, code: K) -> Values:
    from semel.cluster.kafka.group_handlers import _sync_answer

    return _sync_answer(cg.SyncResult(code.value))


def _consumer_group_heartbeat(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    """READ on the group, then DESCRIBE on every subscribed topic (Kafka 4's check)."""
    body = req.body
    refused: tuple[str, str, str] | None = None
    if not allowed(GROUP, body.group_id, READ):
        refused = (GROUP, body.group_id, READ)
    else:
        denied = _denied(body.subscribed_topic_names or (), TOPIC, DESCRIBE, allowed)
        if denied:
            refused = (TOPIC, ", ".join(sorted(denied)), DESCRIBE)
    if refused is None:
        return None
    return Answer({"throttle_time": 0, "error_code": ERRORS[refused[0]], "error_message": _message(*refused),
                   "member_id": body.member_id, "member_epoch": -1, "heartbeat_interval": 0, "assignment": None})


def _per_group(field: str, key: str, operation: str, refusal: Callable[[str], Values]) -> Decide:
    def decide(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
        body = req.body
        ids = getattr(body, field)
        denied = _denied(ids, GROUP, operation, allowed)
        if not denied:
            return None
        return _serve(body, field, tuple(g for g in ids if g not in denied), key,
                      [refusal(g) for g in dict.fromkeys(ids) if g in denied], {"throttle_time": 0})
    return decide


def _described_group_refused(group_id: str) -> Values:
    return {"error_code": ERRORS[GROUP], "group_id": group_id, "group_state": "", "protocol_type": "",
            "protocol_data": "", "members": [], "authorized_operations": NO_OPERATIONS}


def _consumer_group_refused(group_id: str) -> Values:
    return {"error_code": ERRORS[GROUP], "error_message": _message(GROUP, group_id, DESCRIBE), "group_id": group_id,
            "group_state": "", "group_epoch": -1, "assignment_epoch": -1, "assignor_name": "", "members": [],
            "authorized_operations": NO_OPERATIONS}


def _list_groups(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    if allowed(CLUSTER, CLUSTER_NAME, DESCRIBE):
        return None
    return Serve(req.body, _keeping("groups", lambda g: bool(allowed(GROUP, g["group_id"], DESCRIBE))))


# --- topic and config administration --------------------------------------------------------------

def _create_topics(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    if allowed(CLUSTER, CLUSTER_NAME, CREATE):
        return None
    denied = _denied((t.name for t in body.topics), TOPIC, CREATE, allowed)
    if not denied:
        return None
    refused = [{"name": n, "topic_id": NULL_UUID, "error_code": ERRORS[TOPIC],
                "error_message": _message(TOPIC, n, CREATE), "topic_config_error_code": 0, "num_partitions": -1,
                "replication_factor": -1, "configs": []} for n in sorted(denied)]
    return _serve(body, "topics", tuple(t for t in body.topics if t.name not in denied), "topics", refused,
                  {"throttle_time": 0})


def _delete_topics(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    from semel.cluster.kafka.handlers import _topic_uuid

    body = req.body
    field = "topic_names" if hasattr(body, "topic_names") else "topics"
    entries = getattr(body, field)
    if field == "topic_names":
        names = {n: n for n in entries}
    else:  # v6: by name or by id (an id no topic has is left to the handler: UNKNOWN_TOPIC_ID)
        by_id = {_topic_uuid(t.topic_id): n for n, t in env.image.topics.items()}
        names = {t: t.name if t.name is not None else by_id.get(str(t.topic_id).replace("-", "")) for t in entries}
    denied = _denied((n for n in names.values() if n is not None), TOPIC, DELETE, allowed)
    if not denied:
        return None
    refused = [{"name": n, "topic_id": NULL_UUID, "error_code": ERRORS[TOPIC],
                "error_message": _message(TOPIC, n, DELETE)} for n in sorted(denied)]
    return _serve(body, field, tuple(e for e in entries if names[e] not in denied), "responses", refused,
                  {"throttle_time": 0})


def _create_partitions(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    denied = _denied((t.name for t in body.topics), TOPIC, ALTER, allowed)
    if not denied:
        return None
    refused = [{"name": n, "error_code": ERRORS[TOPIC], "error_message": _message(TOPIC, n, ALTER)}
               for n in sorted(denied)]
    return _serve(body, "topics", tuple(t for t in body.topics if t.name not in denied), "results", refused,
                  {"throttle_time": 0})


def _configs(operation: str, key: str, with_configs: bool) -> Decide:
    """Describe/(Incremental)AlterConfigs: topic resources need `operation` on the topic,
    broker resources on the cluster; each refused resource carries the error."""
    def decide(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
        body = req.body
        kept: list[Any] = []
        refused: list[Values] = []
        for r in body.resources:
            if r.resource_type == RESOURCE_TOPIC:
                rt, name = TOPIC, r.resource_name
            elif r.resource_type == RESOURCE_BROKER:
                rt, name = CLUSTER, CLUSTER_NAME
            else:  # not served: the handler answers INVALID_REQUEST
                kept.append(r)
                continue
            if allowed(rt, name, operation):
                kept.append(r)
                continue
            entry: Values = {"error_code": ERRORS[rt], "error_message": _message(rt, name, operation),
                             "resource_type": r.resource_type, "resource_name": r.resource_name}
            refused.append({**entry, "configs": []} if with_configs else entry)
        if not refused:
            return None
        return _serve(body, "resources", tuple(kept), key, refused, {"throttle_time": 0})
    return decide


# --- transactions admin ---------------------------------------------------------------------------

def _describe_producers(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    body = req.body
    denied = _denied((t.name for t in body.topics), TOPIC, READ, allowed)
    if not denied:
        return None
    refused = [{"name": t.name, "partitions": [
        {"partition_index": i, "error_code": ERRORS[TOPIC], "error_message": _message(TOPIC, t.name, READ),
         "active_producers": []} for i in t.partition_indexes]} for t in body.topics if t.name in denied]
    return _serve(body, "topics", tuple(t for t in body.topics if t.name not in denied), "topics", refused,
                  {"throttle_time": 0})


def _list_transactions(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    return Serve(req.body, _keeping("transaction_states",
                                    lambda t: bool(allowed(TRANSACTIONAL_ID, t["transactional_id"], DESCRIBE))))


def _describe_transactions(req: codec.Request, allowed: Allowed, env: Env) -> Decision:
    """DESCRIBE on each transactional id; a described transaction lists only the topics the
    caller may DESCRIBE (Kafka's rule)."""
    body = req.body
    ids = body.transactional_ids
    denied = _denied(ids, TRANSACTIONAL_ID, DESCRIBE, allowed)
    refused = [{"error_code": ERRORS[TRANSACTIONAL_ID], "transactional_id": t, "transaction_state": "",
                "transaction_timeout": 0, "transaction_start_time": NULL_TIMESTAMP, "producer_id": -1,
                "producer_epoch": -1, "topics": []} for t in dict.fromkeys(ids) if t in denied]

    def finish(values: Values | None) -> Values | None:
        if values is None:
            return None
        described = [{**d, "topics": [t for t in d["topics"] if allowed(TOPIC, t["topic"], DESCRIBE)]}
                     for d in values["transaction_states"]]
        return {**values, "transaction_states": [*described, *refused]}

    kept = tuple(t for t in ids if t not in denied)
    if not kept and refused:
        return Answer({"throttle_time": 0, "transaction_states": refused})
    return Serve(dataclasses.replace(body, transactional_ids=kept), finish)


# --- the table ------------------------------------------------------------------------------------

_NONE = KafkaRule("nothing (before or part of authentication)")
_EACH_PARTITION = "each partition of a refused topic: 29"
_ANSWER_GROUP = "the answer: 30"
_EACH_RESOURCE = "each refused resource: 29 (topic) / 31 (broker)"

RULES: dict[int, KafkaRule] = {
    codec.API_VERSIONS: _NONE,
    codec.SASL_HANDSHAKE: _NONE,
    codec.SASL_AUTHENTICATE: _NONE,
    codec.METADATA: KafkaRule(
        "DESCRIBE Topic (all topics: lists only the DESCRIBE-able); auto-creation also CREATE Cluster or CREATE Topic",
        "a named topic: 29, existing or not (never auto-created); all topics: the others left out", _metadata),
    codec.PRODUCE: KafkaRule(
        "WRITE Topic; transactional: WRITE TransactionalId",
        "each partition of a refused topic: 29, the rest written; transactional id refused: every partition 53",
        _produce),
    codec.FETCH: KafkaRule("READ Topic (follower fetch is not served)", _EACH_PARTITION + ", the rest served", _fetch),
    codec.LIST_OFFSETS: KafkaRule("DESCRIBE Topic", _EACH_PARTITION, _list_offsets),
    codec.OFFSET_FOR_LEADER_EPOCH: KafkaRule("CLUSTER_ACTION Cluster, else DESCRIBE Topic", _EACH_PARTITION,
                                             _offset_for_leader_epoch),
    codec.FIND_COORDINATOR: KafkaRule("DESCRIBE Group / DESCRIBE TransactionalId (the key)",
                                      "the key (v4: each key): 30 / 53", _find_coordinator),
    codec.INIT_PRODUCER_ID: KafkaRule(
        "WRITE TransactionalId; without one IDEMPOTENT_WRITE Cluster or WRITE on any Topic (KIP-679)",
        "the answer: 53; without an id 31", _init_producer_id),
    codec.ADD_PARTITIONS_TO_TXN: KafkaRule(
        "WRITE TransactionalId, WRITE Topic",
        "every partition 53; else each partition of a refused topic 29, the rest OPERATION_NOT_ATTEMPTED",
        _add_partitions_to_txn),
    codec.ADD_OFFSETS_TO_TXN: KafkaRule("WRITE TransactionalId, READ Group", "the answer: 53, then 30",
                                        _txn_then(READ)),
    codec.END_TXN: KafkaRule("WRITE TransactionalId", "the answer: 53", _txn_then()),
    codec.TXN_OFFSET_COMMIT: KafkaRule(
        "WRITE TransactionalId, READ Group, READ Topic",
        "every partition 53, then every partition 30, then " + _EACH_PARTITION + " (the rest committed)",
        _offset_commit(True)),
    codec.OFFSET_COMMIT: KafkaRule("READ Group, READ Topic",
                                   "every partition 30, then " + _EACH_PARTITION + " (the rest committed)",
                                   _offset_commit(False)),
    codec.OFFSET_FETCH: KafkaRule("DESCRIBE Group, DESCRIBE Topic (all topics: only the DESCRIBE-able)",
                                  "the answer 30 (v1: every partition); " + _EACH_PARTITION, _offset_fetch),
    codec.JOIN_GROUP: KafkaRule("READ Group", _ANSWER_GROUP, _group_read(_join_refused)),
    codec.SYNC_GROUP: KafkaRule("READ Group", _ANSWER_GROUP, _group_read(_sync_refused)),
    codec.HEARTBEAT: KafkaRule("READ Group", _ANSWER_GROUP,
                               _group_read(lambda r, code: {"throttle_time": 0, "error_code": code})),
    codec.LEAVE_GROUP: KafkaRule("READ Group", _ANSWER_GROUP, _group_read(
        lambda r, code: {"throttle_time": 0, "error_code": code, "members": []})),
    codec.CONSUMER_GROUP_HEARTBEAT: KafkaRule("READ Group, DESCRIBE each subscribed Topic", "the answer: 30, then 29",
                                              _consumer_group_heartbeat),
    codec.CONSUMER_GROUP_DESCRIBE: KafkaRule("DESCRIBE Group", "each refused group: 30",
                                             _per_group("group_ids", "groups", DESCRIBE, _consumer_group_refused)),
    codec.DESCRIBE_GROUPS: KafkaRule("DESCRIBE Group", "each refused group: 30",
                                     _per_group("groups", "groups", DESCRIBE, _described_group_refused)),
    codec.LIST_GROUPS: KafkaRule("DESCRIBE Cluster, else lists only DESCRIBE-able Groups",
                                 "never refused: the others left out", _list_groups),
    codec.DELETE_GROUPS: KafkaRule("DELETE Group", "each refused group: 30", _per_group(
        "groups_names", "results", DELETE, lambda g: {"group_id": g, "error_code": ERRORS[GROUP]})),
    codec.CREATE_TOPICS: KafkaRule("CREATE Cluster, else CREATE Topic", "each refused topic: 29", _create_topics),
    codec.DELETE_TOPICS: KafkaRule("DELETE Topic", "each refused topic: 29", _delete_topics),
    codec.CREATE_PARTITIONS: KafkaRule("ALTER Topic", "each refused topic: 29", _create_partitions),
    codec.DESCRIBE_CONFIGS: KafkaRule("DESCRIBE_CONFIGS Topic / Cluster (broker configs)", _EACH_RESOURCE,
                                      _configs(DESCRIBE_CONFIGS, "results", True)),
    codec.ALTER_CONFIGS: KafkaRule("ALTER_CONFIGS Topic / Cluster", _EACH_RESOURCE,
                                   _configs(ALTER_CONFIGS, "responses", False)),
    codec.INCREMENTAL_ALTER_CONFIGS: KafkaRule("ALTER_CONFIGS Topic / Cluster", _EACH_RESOURCE,
                                               _configs(ALTER_CONFIGS, "responses", False)),
    # Kafka checks nothing for DescribeCluster (its brokers are Metadata's too); as gRPC's DescribeCluster
    codec.DESCRIBE_CLUSTER: KafkaRule("nothing (as Kafka's and gRPC's DescribeCluster)"),
    codec.DESCRIBE_PRODUCERS: KafkaRule("READ Topic", _EACH_PARTITION, _describe_producers),
    codec.LIST_TRANSACTIONS: KafkaRule("lists only DESCRIBE-able TransactionalIds",
                                       "never refused: the others left out", _list_transactions),
    codec.DESCRIBE_TRANSACTIONS: KafkaRule("DESCRIBE TransactionalId (its topics: only the DESCRIBE-able)",
                                           "each refused id: 53", _describe_transactions),
}


class KafkaAuthorizer:
    """The shell: the caller's verdicts from the broker's ACLs and super users, one decision per
    request, and a log line naming what was refused. Verdicts are remembered per (principal,
    host, resource, operation) until the ACL set changes (the image's tuple is replaced, never
    changed) or `KAFKA_AUTHZ_CACHE_ENTRIES` are held: a steady producer pays a dict lookup
    per topic and request, not an evaluation."""

    def __init__(self, security: BrokerSecurity, auto_create: Callable[[], bool]) -> None:
        self.s = security
        self._auto_create = auto_create
        self._verdicts: dict[tuple[str, str, str, str, str], bool] = {}
        self._verdicts_of: object = None  # the ACL tuple the verdicts were made from

    def allowed(self, p: Principal, refused: list[tuple[str, str, str]] | None = None) -> Allowed:
        """`p`'s verdicts; the refused (resource type, name, operation) are appended to `refused`."""
        s = self.s
        acls = s.acls()
        if acls is not self._verdicts_of:
            self._verdicts.clear()
            self._verdicts_of = acls
        verdicts = self._verdicts
        who, host = p.principal, p.host
        verdict = authorizer.allowed_for(acls, who, host, who in s.super_users or is_broker(p, s.broker_principals))

        def allowed(resource_type: str, name: str, operation: str) -> bool:
            key = (who, host, resource_type, name, operation)
            found = verdicts.get(key)
            if found is None:
                found = verdict(resource_type, name, operation)
                if len(verdicts) >= limits.KAFKA_AUTHZ_CACHE_ENTRIES:
                    verdicts.clear()
                verdicts[key] = found
            if not found and refused is not None and (resource_type, name, operation) not in refused:
                refused.append((resource_type, name, operation))
            return found
        return allowed

    def decide(self, req: codec.Request, image: md.MetadataImage) -> Decision:
        rule = RULES[req.api_key]
        if rule.decide is None:
            return None
        p = req.principal or Principal(ANONYMOUS, "anonymous")
        s = self.s
        if p.principal in s.super_users or is_broker(p, s.broker_principals):
            return None
        refused: list[tuple[str, str, str]] = []
        decision = rule.decide(req, self.allowed(p, refused), Env(image, self._auto_create()))
        if refused:  # what the request named (the listings' quiet filtering comes later, unlogged)
            log.info("kafka: refused %s (host %s) in %s: %s", p.principal, p.host or "unknown",
                     type(req.body).__name__, "; ".join(f"{op} on {rt} {name!r}" for rt, name, op in refused[:10]))
        return decision


__all__ = ["Answer", "Decision", "Env", "KafkaAuthorizer", "KafkaRule", "RULES", "Serve"]
