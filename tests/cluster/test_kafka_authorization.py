"""The Kafka listener's authorization table (cluster/kafka/authorization.py), pure: every API the
listener serves has a row (a new API without one fails here), and the decisions put Kafka's
error codes where Kafka puts them, over kio requests of real versions and the one evaluator."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode as K
from semel.cluster.broker import authorizer
from semel.cluster.kafka import codec
from semel.cluster.kafka.authorization import RULES, Answer, Env, Serve
from semel.cluster.metadata import acl
from semel.cluster.metadata import state as md
from semel.cluster.metadata.acl import AclBinding

BOB = "User:bob"


def grants(*checks: tuple[str, str, str], pattern: str = acl.LITERAL) -> tuple[AclBinding, ...]:
    return tuple(AclBinding(BOB, "*", op, acl.ALLOW, rt, name, pattern) for rt, name, op in checks)


def request(key: int, version: int, values: dict[str, Any]) -> codec.Request:
    return codec.Request(key, version, 1, "test", codec.build(load_request_schema(key, version), values))


def decide(req: codec.Request, acls: tuple[AclBinding, ...], image: md.MetadataImage | None = None,
           auto_create: bool = False):
    rule = RULES[req.api_key]
    assert rule.decide is not None
    allowed = authorizer.allowed_for(acls, BOB, "127.0.0.1", False)
    return rule.decide(req, allowed, Env(image or md.MetadataImage(), auto_create))


def test_every_served_api_has_exactly_one_rule():
    assert set(RULES) == set(codec.SERVED)


def test_docs_table_has_every_rule():
    """docs/kafka.md's "Authorization (ACLs)" table is this table (regenerate it from RULES)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "kafka.md").read_text()
    for key, rule in RULES.items():
        name = load_request_schema(key, codec.SERVED[key][1]).__name__.removesuffix("Request")
        assert f"| {name} ({key}) | {rule.summary} | {rule.refusal or '-'} |" in doc, name


def test_only_connection_and_discovery_apis_check_nothing():
    unchecked = {key for key, rule in RULES.items() if rule.decide is None}
    assert unchecked == {codec.API_VERSIONS, codec.SASL_HANDSHAKE, codec.SASL_AUTHENTICATE, codec.DESCRIBE_CLUSTER}


def _produce(topics: dict[str, int], transactional_id: str | None = None, acks: int = -1) -> codec.Request:
    return request(codec.PRODUCE, 9, {"transactional_id": transactional_id, "acks": acks, "timeout": 1000,
                                      "topic_data": [{"name": t, "partition_data": [
                                          {"index": i, "records": None} for i in range(n)]}
                                          for t, n in topics.items()]})


def test_produce_refuses_per_topic_and_serves_the_rest():
    req = _produce({"a": 2, "b": 1})
    assert decide(req, grants((acl.TOPIC, "a", acl.WRITE), (acl.TOPIC, "b", acl.WRITE))) is None
    d = decide(req, grants((acl.TOPIC, "a", acl.WRITE)))
    assert isinstance(d, Serve) and [t.name for t in d.body.topic_data] == ["a"]
    answer = d.finish({"throttle_time": 0, "responses": [{"name": "a", "partition_responses": []}]})
    (refused,) = [r for r in answer["responses"] if r["name"] == "b"]
    assert [p["error_code"] for p in refused["partition_responses"]] == [K.topic_authorization_failed]
    nothing = decide(req, ())
    assert isinstance(nothing, Answer)
    assert {p["error_code"] for r in nothing.values["responses"] for p in r["partition_responses"]} == {
        K.topic_authorization_failed}
    assert decide(_produce({"b": 1}, acks=0), ()) == Answer(None)  # acks=0: no answer, refused or not


def test_transactional_produce_needs_write_on_the_transactional_id_for_the_whole_request():
    req = _produce({"a": 1, "b": 1}, transactional_id="tx")
    d = decide(req, grants((acl.TOPIC, "a", acl.WRITE), (acl.TOPIC, "b", acl.WRITE)))
    assert isinstance(d, Answer)
    assert {p["error_code"] for r in d.values["responses"] for p in r["partition_responses"]} == {
        K.transactional_id_authorization_failed}
    assert decide(req, grants((acl.TOPIC, "a", acl.WRITE), (acl.TOPIC, "b", acl.WRITE),
                              (acl.TRANSACTIONAL_ID, "tx", acl.WRITE))) is None


def test_metadata_hides_all_topics_listing_and_refuses_named_ones():
    image = md.MetadataImage()
    all_topics = request(codec.METADATA, 12, {"topics": None, "allow_auto_topic_creation": True,
                                              "include_topic_authorized_operations": False})
    d = decide(all_topics, grants((acl.TOPIC, "vis", acl.READ)))
    assert isinstance(d, Serve)
    answer = d.finish({"topics": [{"name": "vis"}, {"name": "hidden"}], "brokers": []})
    assert [t["name"] for t in answer["topics"]] == ["vis"]
    named = request(codec.METADATA, 12, {"topics": [{"name": "vis", "topic_id": codec.uuid.UUID(int=0)},
                                                    {"name": "hidden", "topic_id": codec.uuid.UUID(int=0)}],
                                         "allow_auto_topic_creation": True,
                                         "include_topic_authorized_operations": False})
    d = decide(named, grants((acl.TOPIC, "vis", acl.DESCRIBE)), image)
    assert isinstance(d, Serve) and [t.name for t in d.body.topics] == ["vis"]
    answer = d.finish({"topics": []})
    assert answer["topics"][0]["name"] == "hidden" and answer["topics"][0]["error_code"] == K.topic_authorization_failed
    # auto-creation of a missing topic also needs CREATE (on the cluster or the topic)
    d = decide(named, grants((acl.TOPIC, "vis", acl.DESCRIBE), (acl.TOPIC, "hidden", acl.DESCRIBE)), image,
               auto_create=True)
    assert isinstance(d, Serve) and not d.body.topics
    d = decide(named, grants((acl.TOPIC, "*", acl.DESCRIBE), (acl.CLUSTER, acl.CLUSTER_NAME, acl.CREATE)), image,
               auto_create=True)
    assert d is None


def test_find_coordinator_and_init_producer_id():
    group = request(codec.FIND_COORDINATOR, 3, {"key": "g", "key_type": 0})
    txn = request(codec.FIND_COORDINATOR, 3, {"key": "tx", "key_type": 1})
    assert decide(group, ()).values["error_code"] == K.group_authorization_failed
    assert decide(txn, ()).values["error_code"] == K.transactional_id_authorization_failed
    assert decide(group, grants((acl.GROUP, "g", acl.READ))) is None  # READ implies DESCRIBE
    batch = request(codec.FIND_COORDINATOR, 4, {"key_type": 1, "coordinator_keys": ["tx", "other"]})
    d = decide(batch, grants((acl.TRANSACTIONAL_ID, "tx", acl.WRITE)))
    assert isinstance(d, Serve) and d.body.coordinator_keys == ("tx",)
    assert d.finish({"coordinators": []})["coordinators"][0]["error_code"] == K.transactional_id_authorization_failed
    idempotent = request(codec.INIT_PRODUCER_ID, 4, {"transactional_id": None, "transaction_timeout": 60000,
                                                    "producer_id": -1, "producer_epoch": -1})
    assert decide(idempotent, ()).values["error_code"] == K.cluster_authorization_failed
    assert decide(idempotent, grants((acl.TOPIC, "any", acl.WRITE))) is None  # KIP-679
    transactional = request(codec.INIT_PRODUCER_ID, 4, {"transactional_id": "tx", "transaction_timeout": 60000,
                                                       "producer_id": -1, "producer_epoch": -1})
    assert decide(transactional, grants((acl.TOPIC, "any", acl.WRITE))).values["error_code"] == \
        K.transactional_id_authorization_failed
    assert decide(transactional, grants((acl.TRANSACTIONAL_ID, "t", acl.WRITE), pattern=acl.PREFIXED)) is None


def test_offset_commit_checks_the_group_then_each_topic():
    req = request(codec.OFFSET_COMMIT, 8, {"group_id": "g", "generation_id_or_member_epoch": -1, "member_id": "",
                                           "group_instance_id": None, "topics": [
                                               {"name": n, "partitions": [{"partition_index": 0, "committed_offset": 5,
                                                                           "committed_leader_epoch": -1,
                                                                           "committed_metadata": ""}]}
                                               for n in ("a", "b")]})
    d = decide(req, grants((acl.TOPIC, "a", acl.READ)))
    assert isinstance(d, Answer)
    assert {p["error_code"] for t in d.values["topics"] for p in t["partitions"]} == {K.group_authorization_failed}
    d = decide(req, grants((acl.TOPIC, "a", acl.READ), (acl.GROUP, "g", acl.READ)))
    assert isinstance(d, Serve) and [t.name for t in d.body.topics] == ["a"]
    assert d.finish({"topics": []})["topics"][0]["partitions"][0]["error_code"] == K.topic_authorization_failed


def test_group_membership_and_txn_calls_answer_with_one_code():
    join = request(codec.JOIN_GROUP, 9, {"group_id": "g", "session_timeout": 10000, "rebalance_timeout": 10000,
                                         "member_id": "", "group_instance_id": None, "protocol_type": "consumer",
                                         "protocols": [], "reason": None})
    d = decide(join, ())
    assert isinstance(d, Answer) and d.values["error_code"] == K.group_authorization_failed.value
    end = request(codec.END_TXN, 3, {"transactional_id": "tx", "producer_id": 1, "producer_epoch": 0,
                                     "committed": True})
    assert decide(end, ()).values["error_code"] == K.transactional_id_authorization_failed
    offsets = request(codec.ADD_OFFSETS_TO_TXN, 3, {"transactional_id": "tx", "producer_id": 1, "producer_epoch": 0,
                                                    "group_id": "g"})
    assert decide(offsets, grants((acl.TRANSACTIONAL_ID, "tx", acl.WRITE))).values["error_code"] == \
        K.group_authorization_failed


def test_create_topics_cluster_or_topic_create():
    req = request(codec.CREATE_TOPICS, 7, {"topics": [
        {"name": n, "num_partitions": 1, "replication_factor": 1, "assignments": [], "configs": []}
        for n in ("a", "b")], "timeout": 1000, "validate_only": False})
    assert decide(req, grants((acl.CLUSTER, acl.CLUSTER_NAME, acl.CREATE))) is None
    d = decide(req, grants((acl.TOPIC, "a", acl.CREATE)))
    assert isinstance(d, Serve) and [t.name for t in d.body.topics] == ["a"]
    assert d.finish({"topics": []})["topics"][0]["error_code"] == K.topic_authorization_failed


_ops = st.sampled_from(acl.OPERATIONS)
_names = st.sampled_from(["orders", "ord", "o", "*", "payments"])
_bindings = st.builds(AclBinding, st.sampled_from([BOB, "User:*", "User:alice"]),
                      st.sampled_from(["*", "127.0.0.1", "10.0.0.2"]), _ops, st.sampled_from(acl.PERMISSIONS),
                      st.sampled_from([acl.TOPIC, acl.GROUP]), _names, st.sampled_from(acl.PATTERN_TYPES))


@settings(max_examples=300, deadline=None)
@given(st.lists(_bindings, max_size=10), _ops, _names, st.sampled_from([acl.TOPIC, acl.GROUP]))
def test_the_index_changes_no_verdict(acls, op, name, rtype):
    """`allowed_for` hands `authorize` only the bindings its index picks: the same verdicts."""
    as_tuple = tuple(acls)
    indexed = authorizer.allowed_for(as_tuple, BOB, "127.0.0.1", False)
    assert indexed(rtype, name, op) == acl.authorize(as_tuple, BOB, "127.0.0.1", op, rtype, name)
    assert indexed(acl.TOPIC, "", authorizer.ANY_TOPIC_WRITE) == acl.authorize_any(
        as_tuple, BOB, "127.0.0.1", acl.WRITE, acl.TOPIC)


@pytest.mark.parametrize("key", sorted(k for k, r in RULES.items() if r.decide is not None))
def test_every_rule_runs_on_every_served_version_of_an_empty_request(key):
    """Each row's field names exist in every version it serves (a wrong one fails here): the
    request built from the schema defaults, every list empty, the key strings set."""
    low, high = codec.SERVED[key]
    for version in range(low, high + 1):
        cls = load_request_schema(key, version)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[f.name] = _blank(f.name)
        req = codec.Request(key, version, 1, None, codec.build(cls, values))
        decision = decide(req, ())
        if isinstance(decision, Serve):
            decision.finish(None)


def _blank(name: str) -> Any:
    if name.endswith(("_id", "key", "_name")) and "epoch" not in name and "producer_id" not in name:
        return "x"
    return 0 if any(w in name for w in ("epoch", "acks", "version", "producer_id", "replica", "bytes", "level",
                                           "type", "count", "partitions_count")) else ()


class _Security:
    """The fields KafkaAuthorizer reads from BrokerSecurity."""

    def __init__(self) -> None:
        self.super_users = frozenset({"User:admin"})
        self.broker_principals: frozenset[str] = frozenset()
        self.current: tuple[AclBinding, ...] = ()

    def acls(self) -> tuple[AclBinding, ...]:
        return self.current


def test_verdicts_are_remembered_until_the_acls_change_and_super_users_skip_the_check():
    from semel.cluster.broker.principal import Principal
    from semel.cluster.kafka.authorization import KafkaAuthorizer

    sec = _Security()
    authz = KafkaAuthorizer(sec, lambda: False)  # type: ignore[arg-type]
    image = md.MetadataImage()
    req = dataclasses.replace(_produce({"a": 1}), principal=Principal("bob", "scram", "127.0.0.1"))
    assert isinstance(authz.decide(req, image), Answer)
    sec.current = grants((acl.TOPIC, "a", acl.WRITE))  # a new tuple: the verdicts are made again
    assert authz.decide(req, image) is None
    sec.current = grants((acl.TOPIC, "b", acl.WRITE))
    assert isinstance(authz.decide(req, image), Answer)
    admin = dataclasses.replace(req, principal=Principal("admin", "scram", "127.0.0.1"))
    assert authz.decide(admin, image) is None
    anonymous = dataclasses.replace(req, principal=None)
    assert isinstance(authz.decide(anonymous, image), Answer)


_CHECKED = sorted((k, v) for k, rule in RULES.items() if rule.decide is not None
                  for v in range(codec.SERVED[k][0], codec.SERVED[k][1] + 1))
_ALLOWED_TYPES = st.sets(st.sampled_from([acl.TOPIC, acl.GROUP, acl.TRANSACTIONAL_ID, acl.CLUSTER]))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_CHECKED), _ALLOWED_TYPES, st.data())
def test_any_request_is_decided_and_a_refusal_encodes_in_its_version(key_version, allowed_types, data):
    """Whatever a client sends (kio's own types, drawn by hypothesis), the decision does not
    raise, a trimmed request is the same entity type, and a whole answer built by the
    authorizer encodes in the request's version (what the client reads)."""
    from kio.static.primitive import Records

    st.register_type_strategy(Records, st.one_of(st.none(), st.binary(max_size=64)))
    key, version = key_version
    body = data.draw(st.from_type(load_request_schema(key, version)))
    acls = tuple(AclBinding("User:*", "*", acl.ALL, acl.ALLOW, rt, acl.CLUSTER_NAME if rt == acl.CLUSTER else "*")
                 for rt in sorted(allowed_types))
    req = codec.Request(key, version, 7, None, body)
    decision = decide(req, acls, auto_create=data.draw(st.booleans()))
    if isinstance(decision, Serve):
        assert type(decision.body) is type(body)
        assert decision.finish(None) is None
    elif isinstance(decision, Answer) and decision.values is not None:
        frame = codec.encode_response(7, codec.build(codec.response_class(key, version), decision.values))
        assert len(frame) > 8
