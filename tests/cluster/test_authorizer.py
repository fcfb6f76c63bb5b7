"""The ACL model and authorizer (pure: semel.cluster.metadata.acl), the ACL commands of the
metadata state machine, and the one table of what every RPC needs (cluster/broker/authorizer.py)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.cluster.broker import authorizer
from semel.cluster.metadata import acl
from semel.cluster.metadata.acl import AclBinding, AclFilter, authorize
from semel.cluster.metadata.state import CreateAcls, DeleteAcls, MetadataStateMachine
from semel.v1 import admin_pb2, broker_pb2, common_pb2 as pb, controller_pb2, group_pb2, replication_pb2, txn_pb2
from semel.v1 import common_pb2

ALICE = "User:alice"


def allow(op: str, rtype: str = acl.TOPIC, name: str = "orders", pattern: str = acl.LITERAL,
          principal: str = ALICE, host: str = "*") -> AclBinding:
    return AclBinding(principal, host, op, acl.ALLOW, rtype, name, pattern)


def deny(op: str, rtype: str = acl.TOPIC, name: str = "orders", pattern: str = acl.LITERAL,
         principal: str = ALICE, host: str = "*") -> AclBinding:
    return AclBinding(principal, host, op, acl.DENY, rtype, name, pattern)


def can(acls, op: str, rtype: str = acl.TOPIC, name: str = "orders", principal: str = ALICE,
        host: str = "10.0.0.1", super_user: bool = False) -> bool:
    return authorize(acls, principal, host, op, rtype, name, super_user)


def test_deny_by_default_and_super_users_bypass():
    assert not can([], acl.READ)
    assert can([], acl.READ, super_user=True)
    assert can([deny(acl.ALL, name="*")], acl.WRITE, super_user=True)


def test_deny_wins_over_allow_whatever_the_order():
    for acls in ([allow(acl.WRITE), deny(acl.WRITE)], [deny(acl.WRITE), allow(acl.WRITE)]):
        assert not can(acls, acl.WRITE)
    assert not can([allow(acl.WRITE), deny(acl.ALL, name="ord", pattern=acl.PREFIXED)], acl.WRITE)
    assert not can([allow(acl.WRITE), deny(acl.WRITE, principal="User:*")], acl.WRITE)


def test_implied_operations_for_allow_only():
    for op in (acl.READ, acl.WRITE, acl.DELETE, acl.ALTER):
        assert can([allow(op)], acl.DESCRIBE), op
    assert can([allow(acl.ALTER_CONFIGS)], acl.DESCRIBE_CONFIGS)
    assert not can([allow(acl.DESCRIBE)], acl.READ)
    assert not can([allow(acl.CREATE)], acl.DESCRIBE)
    # a DENY READ does not deny DESCRIBE (Kafka's rule)
    assert can([allow(acl.DESCRIBE), deny(acl.READ)], acl.DESCRIBE)
    assert not can([allow(acl.ALL), deny(acl.ALL)], acl.DESCRIBE)


def test_patterns_wildcards_principals_and_hosts():
    assert can([allow(acl.WRITE, name="ord", pattern=acl.PREFIXED)], acl.WRITE)
    assert not can([allow(acl.WRITE, name="ord", pattern=acl.PREFIXED)], acl.WRITE, name="payments")
    assert not can([allow(acl.WRITE, name="ord")], acl.WRITE)  # literal: exact name only
    assert can([allow(acl.WRITE, name="*")], acl.WRITE, name="anything")
    assert can([allow(acl.WRITE, principal="User:*")], acl.WRITE, principal="User:bob")
    assert not can([allow(acl.WRITE)], acl.WRITE, principal="User:bob")
    assert can([allow(acl.WRITE, host="10.0.0.1")], acl.WRITE, host="10.0.0.1")
    assert not can([allow(acl.WRITE, host="10.0.0.1")], acl.WRITE, host="10.0.0.2")
    assert not can([allow(acl.WRITE, rtype=acl.GROUP)], acl.WRITE)  # another resource type
    assert can([allow(acl.ALL)], acl.IDEMPOTENT_WRITE)


_ops = st.sampled_from(acl.OPERATIONS)
_names = st.sampled_from(["orders", "ord", "o", "*", "payments"])
_bindings = st.builds(AclBinding, st.sampled_from([ALICE, "User:*", "User:bob"]),
                      st.sampled_from(["*", "10.0.0.1", "10.0.0.2"]), _ops, st.sampled_from(acl.PERMISSIONS),
                      st.sampled_from([acl.TOPIC, acl.GROUP]), _names, st.sampled_from(acl.PATTERN_TYPES))


@settings(max_examples=300, deadline=None)
@given(st.lists(_bindings, max_size=8), _ops, _names, st.sampled_from([acl.TOPIC, acl.GROUP]))
def test_properties(acls, op, name, rtype):
    verdict = can(acls, op, rtype, name)
    assert can(list(reversed(acls)), op, rtype, name) == verdict  # order never matters
    # adding a DENY never grants; adding an ALLOW never takes away
    assert not can([*acls, deny(op, rtype, name)], op, rtype, name)
    assert can([*acls, allow(op, rtype, name)], op, rtype, name) or any(
        b.permission == acl.DENY for b in acls)
    # allowed means some applicable ALLOW exists
    if verdict:
        assert any(b.permission == acl.ALLOW for b in acls)


def test_state_machine_create_delete_and_bound(monkeypatch):
    m = MetadataStateMachine()
    a, b = allow(acl.WRITE), deny(acl.READ, rtype=acl.GROUP, name="g-", pattern=acl.PREFIXED)
    assert m.apply(CreateAcls((a, b, a))).ok
    assert m.image.acls == (a, b)
    assert m.apply(CreateAcls((a,))).ok and m.image.acls == (a, b)  # idempotent
    assert m.apply(CreateAcls((dataclasses.replace(a, operation="FLY"),))).error == pb.INVALID_REQUEST
    assert m.apply(CreateAcls((dataclasses.replace(a, resource_type=acl.CLUSTER),))).error == pb.INVALID_REQUEST
    assert m.apply(CreateAcls(())).error == pb.INVALID_REQUEST
    result = m.apply(DeleteAcls((AclFilter(resource_type=acl.GROUP),)))
    assert result.ok and result.value == 1 and m.image.acls == (a,)
    assert m.apply(DeleteAcls((AclFilter(principal="User:nobody"),))).value == 0
    assert m.apply(DeleteAcls((AclFilter(operation="FLY"),))).error == pb.INVALID_REQUEST
    monkeypatch.setattr("semel.cluster.metadata.state.MAX_ACLS", 2)
    assert m.apply(CreateAcls((b,))).ok
    assert m.apply(CreateAcls((allow(acl.READ),))).error == pb.RESOURCE_EXHAUSTED
    assert m.image.acls == (a, b)


def test_normalized_fills_defaults():
    n = acl.normalized(AclBinding("User:a", "", "write", "allow", "cluster", "", ""))
    assert n == AclBinding("User:a", "*", "WRITE", "ALLOW", "CLUSTER", "kafka-cluster", "LITERAL")
    assert acl.binding_problem(n) == ""


# --- the table -------------------------------------------------------------------------

SERVICE_MODULES = (admin_pb2, broker_pb2, controller_pb2, group_pb2, replication_pb2, txn_pb2)


def every_method() -> set[str]:
    methods = {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods


def test_every_rpc_has_exactly_one_row():
    assert set(authorizer.RULES) == every_method()


def test_authorization_error_codes_exist_in_common_proto():
    for name in authorizer.ERROR_CODES.values():
        assert common_pb2.ErrorCode.Value(name) > 0


def test_unlisted_method_is_refused_even_with_acls():
    allowed = authorizer.allowed_for([allow(acl.ALL, rtype=acl.TOPIC, name="*")], ALICE, "1.2.3.4", False)
    refused = authorizer.refusal("/semel.v1.Broker/Brand-new", object(), ALICE, "1.2.3.4", allowed)
    assert refused is not None and refused.code == "CLUSTER_AUTHORIZATION_FAILED"


@pytest.mark.parametrize("method", sorted(every_method()))
def test_each_row_extracts_from_an_empty_request(method):
    """Every row's extraction runs on its own request type (a wrong field name fails here)."""
    service, name = method.strip("/").split("/")
    if service.startswith("grpc."):
        return
    for module in SERVICE_MODULES:
        svc = module.DESCRIPTOR.services_by_name.get(service.split(".")[-1])
        if svc is not None and svc.full_name == service:
            request_type = module.DESCRIPTOR.pool.FindMessageTypeByName(svc.methods_by_name[name].input_type.full_name)
            break
    from google.protobuf import message_factory
    request = message_factory.GetMessageClass(request_type)()
    list(authorizer.rule(method).needs(request))


def test_produce_needs_write_txn_and_idempotent_write():
    r = broker_pb2.ProduceRequest(transactional_id="tx", partitions=[broker_pb2.PartitionProduceData(topic="t")])
    needs = list(authorizer.rule("/semel.v1.Broker/Produce").needs(r))
    assert needs == [((acl.TOPIC, "t", acl.WRITE),), ((acl.TRANSACTIONAL_ID, "tx", acl.WRITE),)]



def test_idempotence_needs_idempotent_write_or_write_on_any_topic():
    r = txn_pb2.InitProducerIdRequest()
    method = "/semel.v1.Transactions/InitProducerId"

    def refused(acls):
        return authorizer.refusal(method, r, ALICE, "10.0.0.1", authorizer.allowed_for(acls, ALICE, "10.0.0.1", False))

    assert refused([]).code == "CLUSTER_AUTHORIZATION_FAILED"
    assert refused([allow(acl.IDEMPOTENT_WRITE, acl.CLUSTER, acl.CLUSTER_NAME)]) is None
    assert refused([allow(acl.WRITE, name="any-", pattern=acl.PREFIXED)]) is None
    assert refused([allow(acl.READ, name="*")]) is not None
    assert refused([allow(acl.WRITE), deny(acl.WRITE)]) is not None  # the only ALLOW is denied
    assert refused([allow(acl.WRITE, name="a-b", pattern=acl.PREFIXED), deny(acl.WRITE, name="a-", pattern=acl.PREFIXED)])
    assert refused([allow(acl.WRITE), deny(acl.WRITE, name="other")]) is None
    assert refused([allow(acl.WRITE), deny(acl.WRITE, name="*")]) is not None
