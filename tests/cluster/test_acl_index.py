"""`acl.AclIndex` answers exactly as the reference scan (`acl.authorize`, `acl.authorize_any`
over every binding) over random ACL sets and random checks: `authorize` over the index's
`candidates` is the broker's path (`authorizer.allowed_for`); `index_of` rebuilds only when the
set changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from semel.cluster.broker import authorizer
from semel.cluster.metadata import acl
from semel.cluster.metadata.acl import AclBinding, AclIndex, index_of

# Small alphabets, so random names, prefixes, principals and hosts collide often: the
# interesting cases (a prefix of a prefix, `*` next to a literal, DENY beside ALLOW) need it.
NAMES = st.text(alphabet="ab*", min_size=1, max_size=4)
PRINCIPALS = st.sampled_from(["User:alice", "User:bob", "User:*"])
CALLERS = st.sampled_from(["User:alice", "User:bob", "User:carol", "User:*"])
HOSTS = st.sampled_from(["*", "10.0.0.1", "10.0.0.2"])
CALLER_HOSTS = st.sampled_from(["10.0.0.1", "10.0.0.2", "", "*"])
OPERATIONS = st.sampled_from(acl.OPERATIONS)
CHECKED_OPERATIONS = st.sampled_from([o for o in acl.OPERATIONS if o != acl.ALL])


@st.composite
def bindings(draw: st.DrawFn) -> AclBinding:
    resource_type = draw(st.sampled_from(acl.RESOURCE_TYPES))
    pattern = draw(st.sampled_from(acl.PATTERN_TYPES))
    name = draw(NAMES)
    if resource_type == acl.CLUSTER:
        name, pattern = acl.CLUSTER_NAME, acl.LITERAL
    return AclBinding(draw(PRINCIPALS), draw(HOSTS), draw(OPERATIONS), draw(st.sampled_from(acl.PERMISSIONS)),
                      resource_type, name, pattern)


@st.composite
def checks(draw: st.DrawFn) -> tuple[str, str, str, str, str]:
    resource_type = draw(st.sampled_from(acl.RESOURCE_TYPES))
    name = acl.CLUSTER_NAME if resource_type == acl.CLUSTER else draw(NAMES)
    return draw(CALLERS), draw(CALLER_HOSTS), draw(CHECKED_OPERATIONS), resource_type, name


def by_index(index: AclIndex, principal: str, host: str, operation: str, resource_type: str, name: str) -> bool:
    return acl.authorize(index.candidates(principal, resource_type, name), principal, host, operation,
                         resource_type, name)


def any_by_index(index: AclIndex, principal: str, host: str, operation: str, resource_type: str) -> bool:
    return acl.authorize_any(index.candidates(principal, resource_type), principal, host, operation, resource_type)


@settings(max_examples=400, deadline=None)
@given(st.lists(bindings(), max_size=40), st.lists(checks(), min_size=1, max_size=20))
def test_index_answers_as_the_scan(acls: list[AclBinding], requests: list[tuple[str, str, str, str, str]]) -> None:
    index = AclIndex(tuple(acls))
    for principal, host, operation, resource_type, name in requests:
        want = acl.authorize(acls, principal, host, operation, resource_type, name)
        got = by_index(index, principal, host, operation, resource_type, name)
        assert got == want, (principal, host, operation, resource_type, name)
        want_any = acl.authorize_any(acls, principal, host, operation, resource_type)
        assert any_by_index(index, principal, host, operation, resource_type) == want_any


@settings(max_examples=200, deadline=None)
@given(st.lists(bindings(), max_size=30), checks(), st.booleans())
def test_the_broker_path_answers_as_the_scan(acls: list[AclBinding], check: tuple[str, str, str, str, str],
                                             super_user: bool) -> None:
    """`authorizer.allowed_for` (the gRPC interceptor's and the Kafka listener's path, over the
    index) against the scan, including InitProducerId's "WRITE on any topic" check."""
    principal, host, operation, resource_type, name = check
    allowed = authorizer.allowed_for(tuple(acls), principal, host, super_user)
    assert allowed(resource_type, name, operation) == acl.authorize(acls, principal, host, operation, resource_type,
                                                                    name, super_user)
    assert allowed(acl.TOPIC, "", authorizer.ANY_TOPIC_WRITE) == acl.authorize_any(
        acls, principal, host, acl.WRITE, acl.TOPIC, super_user)


def test_prefixes_of_every_length_and_the_wildcard() -> None:
    acls = [AclBinding("User:alice", "*", acl.READ, acl.ALLOW, acl.TOPIC, p, acl.PREFIXED) for p in ("o", "ord", "x")]
    acls += [AclBinding("User:alice", "*", acl.READ, acl.DENY, acl.TOPIC, "orders-secret", acl.LITERAL),
             AclBinding("User:*", "*", acl.WRITE, acl.ALLOW, acl.TOPIC, "*", acl.LITERAL)]
    index = AclIndex(tuple(acls))
    assert {b.resource_name for b in index.candidates("User:alice", acl.TOPIC, "orders")} == {"o", "ord", "*"}
    assert {b.resource_name for b in index.candidates("User:alice", acl.TOPIC, "xy")} == {"x", "*"}
    assert by_index(index, "User:alice", "1.1.1.1", acl.READ, acl.TOPIC, "orders")
    assert by_index(index, "User:alice", "1.1.1.1", acl.READ, acl.TOPIC, "o")
    assert not by_index(index, "User:alice", "1.1.1.1", acl.READ, acl.TOPIC, "orders-secret")  # DENY wins
    assert not by_index(index, "User:alice", "1.1.1.1", acl.READ, acl.TOPIC, "logs")
    assert by_index(index, "User:bob", "1.1.1.1", acl.WRITE, acl.TOPIC, "anything")  # User:* and '*'
    assert by_index(index, "User:bob", "1.1.1.1", acl.DESCRIBE, acl.TOPIC, "x")  # WRITE implies DESCRIBE
    assert not by_index(index, "User:bob", "1.1.1.1", acl.READ, acl.TOPIC, "orders")


def test_the_index_is_rebuilt_only_for_a_new_acl_set() -> None:
    first = (AclBinding("User:alice", "*", acl.READ, acl.ALLOW, acl.TOPIC, "t"),)
    index = index_of(first)
    assert index_of(first) is index  # the same tuple (an unchanged image): the same index
    second = (*first, AclBinding("User:alice", "*", acl.READ, acl.DENY, acl.TOPIC, "t"))
    assert index_of(second) is not index  # CreateAcls made a new tuple
    assert not by_index(index_of(second), "User:alice", "h", acl.READ, acl.TOPIC, "t")
    assert by_index(index_of(first), "User:alice", "h", acl.READ, acl.TOPIC, "t")
