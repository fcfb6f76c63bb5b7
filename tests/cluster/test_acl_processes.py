"""Issue 16 item 3 against a real secure broker (TLS, passwords, --authorizer on): every RPC of
the authorizer's table is called by `bob`, first without ACLs (refused: PERMISSION_DENIED with
the ErrorCode in the x-semel-error-code trailer and a message naming principal, operation and
resource), then with the ACLs written by hand in ROWS below (allowed: whatever the call answers,
it is not an authorization refusal). Plus prefixed patterns, DENY over ALLOW, hosts, the listing
calls that hide what bob cannot DESCRIBE, and the brokers-only services."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any

import grpc
import pytest
from semel.client import Acl, Admin, ClientSecurity, Consumer, Producer
from semel.client.errors import AuthorizationError
from semel.cluster.broker import authorizer
from semel.v1 import admin_pb2 as apb
from semel.v1 import admin_pb2_grpc, broker_pb2_grpc, controller_pb2_grpc, group_pb2_grpc, txn_pb2_grpc
from semel.v1 import broker_pb2 as bpb
from semel.v1 import common_pb2 as cpb
from semel.v1 import controller_pb2 as ctl
from semel.v1 import group_pb2 as gpb
from semel.v1 import txn_pb2 as tpb

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # broker processes

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
BOB = "User:bob"
T = "acl-t"  # a topic bob works on
STUBS = {"Broker": broker_pb2_grpc.BrokerStub, "Transactions": txn_pb2_grpc.TransactionsStub,
         "Groups": group_pb2_grpc.GroupsStub, "Admin": admin_pb2_grpc.AdminStub,
         "Controller": controller_pb2_grpc.ControllerStub}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("acl")
    (root / "broker.json").write_text(json.dumps({"auto_create_topics": True}))  # a store_true flag
    c, d, admin = h.secure_cluster(root, 1, ADMIN_PASSWORD, authorizer="on", config=root / "broker.json")
    try:
        c.start_all()
        address = c.brokers[1].address
        with Admin(address, security=admin) as a:
            a.upsert_user("bob", "bob-pw")
            for name in (T, "acl-del"):
                a.create_topic(name, partitions=1, replication_factor=1)
        bob = ClientSecurity(tls_ca=str(d / "ca.crt"), username="bob", password="bob-pw")
        with grpc.secure_channel(address, bob.channel_credentials()) as ch:
            yield c, address, admin, bob, ch
    finally:
        print(c.dump_logs())
        c.close()


def _batch(producer_id: int | None = None, transactional: bool = False) -> cpb.RecordBatch:
    b = cpb.RecordBatch(producer_id=-1 if producer_id is None else producer_id,
                        producer_epoch=-1 if producer_id is None else 0,
                        base_sequence=-1 if producer_id is None else 0, record_count=1,
                        attributes=cpb.TRANSACTIONAL if transactional else 0)
    return b


@dataclasses.dataclass(frozen=True)
class Row:
    method: str  # "Service/Method"
    request: Any
    code: str  # the refusal without `grants` (with `base` granted)
    grants: tuple[tuple[str, str, str], ...]  # (resource type, name, operation) that make it allowed
    base: tuple[tuple[str, str, str], ...] = ()
    label: str = ""
    named: tuple[str, str, str] = ()  # what the refusal names, when not grants[0]


TOPIC_ = "TOPIC_AUTHORIZATION_FAILED"
GROUP_ = "GROUP_AUTHORIZATION_FAILED"
TXN_ = "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"
CLUSTER_ = "CLUSTER_AUTHORIZATION_FAILED"
CL = ("CLUSTER", "kafka-cluster")

ROWS = [
    Row("Broker/Metadata", bpb.MetadataRequest(topics=[T]), TOPIC_, (("TOPIC", T, "DESCRIBE"),)),
    Row("Broker/Produce", bpb.ProduceRequest(partitions=[bpb.PartitionProduceData(topic=T, batch=_batch())]),
        TOPIC_, (("TOPIC", T, "WRITE"),)),
    Row("Broker/Produce", bpb.ProduceRequest(transactional_id="tx-a", partitions=[
        bpb.PartitionProduceData(topic=T, batch=_batch(5, transactional=True))]),
        TXN_, (("TRANSACTIONAL_ID", "tx-a", "WRITE"),), base=(("TOPIC", T, "WRITE"),), label="transactional"),
    Row("Broker/Fetch", bpb.FetchRequest(partitions=[bpb.FetchPartition(topic=T)]), TOPIC_, (("TOPIC", T, "READ"),)),
    Row("Broker/ListOffsets", bpb.ListOffsetsRequest(partitions=[bpb.ListOffsetsPartition(topic=T, timestamp_ms=-1)]),
        TOPIC_, (("TOPIC", T, "DESCRIBE"),)),
    Row("Transactions/FindCoordinator", tpb.FindCoordinatorRequest(key="tx-a", key_type=tpb.TRANSACTION), TXN_,
        (("TRANSACTIONAL_ID", "tx-a", "DESCRIBE"),)),
    Row("Transactions/FindCoordinator", tpb.FindCoordinatorRequest(key="g-a", key_type=tpb.GROUP), GROUP_,
        (("GROUP", "g-a", "DESCRIBE"),), label="group"),
    Row("Transactions/InitProducerId", tpb.InitProducerIdRequest(transactional_id="tx-a", producer_id=-1,
                                                                 producer_epoch=-1,
                                                                 transaction_timeout_ms=60000),
        TXN_, (("TRANSACTIONAL_ID", "tx-a", "WRITE"),)),
    Row("Transactions/InitProducerId", tpb.InitProducerIdRequest(transaction_timeout_ms=60000, producer_id=-1,
                                                                 producer_epoch=-1),
        CLUSTER_, ((*CL, "IDEMPOTENT_WRITE"),), label="idempotent"),
    Row("Transactions/InitProducerId", tpb.InitProducerIdRequest(transaction_timeout_ms=60000, producer_id=-1,
                                                                 producer_epoch=-1),
        CLUSTER_, (("TOPIC", "acl-", "WRITE"),), label="idempotent-by-topic-write",
        named=(*CL, "IDEMPOTENT_WRITE")),
    Row("Transactions/AddPartitionsToTxn", tpb.AddPartitionsToTxnRequest(
        transactional_id="tx-a", partitions=[tpb.TopicPartition(topic=T)]),
        TXN_, (("TRANSACTIONAL_ID", "tx-a", "WRITE"), ("TOPIC", T, "WRITE"))),
    Row("Transactions/AddPartitionsToTxn", tpb.AddPartitionsToTxnRequest(
        transactional_id="tx-a", partitions=[tpb.TopicPartition(topic=T)]),
        TOPIC_, (("TOPIC", T, "WRITE"),), base=(("TRANSACTIONAL_ID", "tx-a", "WRITE"),), label="topic"),
    Row("Transactions/AddOffsetsToTxn", tpb.AddOffsetsToTxnRequest(transactional_id="tx-a", group_id="g-a"),
        GROUP_, (("GROUP", "g-a", "READ"),), base=(("TRANSACTIONAL_ID", "tx-a", "WRITE"),)),
    Row("Transactions/EndTxn", tpb.EndTxnRequest(transactional_id="tx-a"), TXN_,
        (("TRANSACTIONAL_ID", "tx-a", "WRITE"),)),
    Row("Transactions/DescribeTransactions", tpb.DescribeTransactionsRequest(transactional_ids=["tx-a"]), TXN_,
        (("TRANSACTIONAL_ID", "tx-a", "DESCRIBE"),)),
    Row("Transactions/DescribeProducers", tpb.DescribeProducersRequest(topic=T), TOPIC_, (("TOPIC", T, "READ"),)),
    Row("Transactions/AbortTransaction", tpb.AbortTransactionRequest(topic=T, producer_id=99, producer_epoch=0),
        CLUSTER_, ((*CL, "ALTER"),)),
    Row("Groups/ConsumerGroupHeartbeat", gpb.ConsumerGroupHeartbeatRequest(
        group_id="g-a", subscription=gpb.Subscription(topics=[T]), rebalance_timeout_ms=30000),
        GROUP_, (("GROUP", "g-a", "READ"),)),
    Row("Groups/OffsetCommit", gpb.OffsetCommitRequest(group_id="g-a", member_epoch=-1,
                                                       topics=[gpb.OffsetCommitTopic(topic=T)]),
        TOPIC_, (("TOPIC", T, "READ"),), base=(("GROUP", "g-a", "READ"),)),
    Row("Groups/OffsetFetch", gpb.OffsetFetchRequest(group_id="g-a", member_epoch=-1,
                                                     topics=[gpb.TopicPartitions(topic=T)]),
        GROUP_, (("GROUP", "g-a", "DESCRIBE"), ("TOPIC", T, "DESCRIBE"))),
    Row("Groups/TxnOffsetCommit", gpb.TxnOffsetCommitRequest(transactional_id="tx-a", group_id="g-a",
                                                             topics=[gpb.OffsetCommitTopic(topic=T)]),
        TXN_, (("TRANSACTIONAL_ID", "tx-a", "WRITE"), ("GROUP", "g-a", "READ"), ("TOPIC", T, "READ"))),
    Row("Groups/DescribeGroups", gpb.DescribeGroupsRequest(group_ids=["g-a"]), GROUP_, (("GROUP", "g-a", "DESCRIBE"),)),
    Row("Groups/DeleteGroup", gpb.DeleteGroupRequest(group_id="g-gone"), GROUP_, (("GROUP", "g-gone", "DELETE"),)),
    Row("Groups/ResetOffsets", gpb.ResetOffsetsRequest(group_id="g-a", dry_run=True, partitions=[
        gpb.ResetPartition(topic=T)]), GROUP_, (("GROUP", "g-a", "READ"), ("TOPIC", T, "READ"))),
    Row("Admin/CreateTopics", apb.CreateTopicsRequest(topics=[apb.NewTopic(name="acl-new", partitions=1,
                                                                           replication_factor=1)]),
        TOPIC_, (("TOPIC", "acl-new", "CREATE"),)),
    Row("Admin/CreateTopics", apb.CreateTopicsRequest(topics=[apb.NewTopic(name="acl-new2", partitions=1,
                                                                           replication_factor=1)]),
        TOPIC_, ((*CL, "CREATE"),), label="cluster"),
    Row("Admin/DeleteTopics", apb.DeleteTopicsRequest(names=["acl-del"]), TOPIC_, (("TOPIC", "acl-del", "DELETE"),)),
    Row("Admin/DescribeTopics", apb.DescribeTopicsRequest(names=[T]), TOPIC_, (("TOPIC", T, "DESCRIBE"),)),
    Row("Admin/CreatePartitions", apb.CreatePartitionsRequest(topic=T, count=2), TOPIC_, (("TOPIC", T, "ALTER"),)),
    Row("Admin/DescribeTopicConfig", apb.DescribeTopicConfigRequest(topic=T), TOPIC_,
        (("TOPIC", T, "DESCRIBE_CONFIGS"),)),
    Row("Admin/AlterTopicConfig", apb.AlterTopicConfigRequest(topic=T, set={"retention_ms": "600000"},
                                                              validate_only=True),
        TOPIC_, (("TOPIC", T, "ALTER_CONFIGS"),)),
    Row("Admin/ReassignPartitions", apb.ReassignPartitionsRequest(timeout_ms=2000), CLUSTER_, ((*CL, "ALTER"),)),
    Row("Admin/DecommissionBroker", apb.DecommissionBrokerRequest(broker_id=99, timeout_ms=2000), CLUSTER_,
        ((*CL, "ALTER"),)),
    Row("Admin/ElectLeaders", apb.ElectLeadersRequest(topics=[T], timeout_ms=2000), CLUSTER_, ((*CL, "ALTER"),)),
    Row("Admin/UpsertUserScram", apb.UpsertUserScramRequest(name="zed"), CLUSTER_, ((*CL, "ALTER"),)),
    Row("Admin/DeleteUser", apb.DeleteUserRequest(name="nobody"), CLUSTER_, ((*CL, "ALTER"),)),
    Row("Admin/ListUsers", apb.ListUsersRequest(), CLUSTER_, ((*CL, "DESCRIBE"),)),
    Row("Admin/CreateAcls", apb.CreateAclsRequest(acls=[apb.Acl(principal="User:zed", operation="READ",
                                                                permission="ALLOW", resource_type="TOPIC",
                                                                resource_name="z")]),
        CLUSTER_, ((*CL, "ALTER"),)),
    Row("Admin/DeleteAcls", apb.DeleteAclsRequest(filters=[apb.AclFilter(principal="User:zed")]), CLUSTER_,
        ((*CL, "ALTER"),)),
    Row("Admin/DescribeAcls", apb.DescribeAclsRequest(), CLUSTER_, ((*CL, "DESCRIBE"),)),
]
# answered to every authenticated principal, hiding what it may not DESCRIBE (test_listing_...)
LISTINGS = {"Broker/Metadata", "Admin/DescribeTopics", "Groups/ListGroups", "Transactions/ListTransactions"}
OPEN = {"Admin/DescribeCluster"}


def _acls(grants, principal: str = BOB, permission: str = "ALLOW", pattern: str = "LITERAL", host: str = "*"):
    return [Acl(principal, host, op, permission, rtype, name, pattern) for rtype, name, op in grants]


def _call(ch: grpc.Channel, method: str, request: Any) -> Any:
    service, name = method.split("/")
    return getattr(STUBS[service](ch), name)(request, timeout=30)


def _refusal(ch: grpc.Channel, method: str, request: Any) -> tuple[str, str] | None:
    """(error code, message) of an authorization refusal; None when the call got through."""
    try:
        _call(ch, method, request)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            return dict(e.trailing_metadata() or ()).get("x-semel-error-code", ""), e.details()
        raise
    return None


def test_every_client_rpc_of_the_table_is_walked():
    rows = {r.method for r in ROWS}
    client_methods = {m.split("/semel.v1.", 1)[1] for m, rule in authorizer.RULES.items()
                      if not rule.broker_only and not m.startswith("/grpc.")}
    assert client_methods == rows | LISTINGS | OPEN


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.method + (f"[{r.label}]" if r.label else ""))
def test_refused_without_the_acl_and_allowed_with_it(cluster, row):
    c, address, admin, bob, ch = cluster
    with Admin(address, security=admin) as a:
        a.delete_acls([Acl(principal=BOB)])
        if row.base:
            a.create_acls(_acls(row.base))
        refused = _refusal(ch, row.method, row.request)
        assert refused is not None, f"{row.method} got through without {row.grants}"
        code, message = refused
        assert code == row.code, message
        assert BOB in message and row.method.split("/")[1] in message, message
        rtype, name, op = row.named or row.grants[0]  # the first missing one is named (CreateTopics: the topic fallback)
        assert f"is not allowed {op} on " in message and (rtype == "CLUSTER" or repr(name) in message), message
        a.create_acls(_acls(row.grants))
        try:
            assert _refusal(ch, row.method, row.request) is None
        finally:
            a.delete_acls([Acl(principal=BOB)])


def test_open_calls_need_no_acl(cluster):
    c, address, admin, bob, ch = cluster
    assert _call(ch, "Admin/DescribeCluster", apb.DescribeClusterRequest()).brokers


def test_listing_calls_hide_what_the_principal_cannot_describe(cluster):
    c, address, admin, bob, ch = cluster
    with Admin(address, security=admin) as a:
        a.delete_acls([Acl(principal=BOB)])
        admin_ch = c.channel(1)
        txn = txn_pb2_grpc.TransactionsStub(admin_ch)
        assert txn.InitProducerId(tpb.InitProducerIdRequest(transactional_id="tx-hidden", producer_id=-1,
                                                            producer_epoch=-1,
                                                            transaction_timeout_ms=60000), timeout=30).error_code == 0
        assert "tx-hidden" in [t.transactional_id for t in txn.ListTransactions(tpb.ListTransactionsRequest()).transactions]

        def seen() -> tuple[set[str], set[str], set[str]]:
            meta = {t.name for t in _call(ch, "Broker/Metadata", bpb.MetadataRequest()).topics}
            described = {t.name for t in _call(ch, "Admin/DescribeTopics", apb.DescribeTopicsRequest()).topics}
            txns = {t.transactional_id for t in
                    _call(ch, "Transactions/ListTransactions", tpb.ListTransactionsRequest()).transactions}
            return meta, described, txns

        meta, described, txns = seen()
        assert T not in meta and T not in described and "tx-hidden" not in txns
        a.create_acls(_acls((("TOPIC", T, "READ"), ("TRANSACTIONAL_ID", "tx-", "DESCRIBE")), pattern="PREFIXED"))
        try:
            meta, described, txns = seen()
            assert T in meta and T in described and "tx-hidden" in txns  # READ implies DESCRIBE; prefixed
            assert "acl-del" not in meta or "acl-del".startswith(T)
        finally:
            a.delete_acls([Acl(principal=BOB)])


def test_prefixed_allow_deny_wins_and_hosts(cluster):
    c, address, admin, bob, ch = cluster
    with Admin(address, security=admin) as a:
        a.delete_acls([Acl(principal=BOB)])
        try:
            a.create_acls(_acls((("TOPIC", "acl-", "WRITE"),), pattern="PREFIXED"))
            with Producer(address, security=bob, enable_idempotence=False, acks="all") as p:
                p.send(T, b"allowed", partition=0).result(30)
            a.create_acls(_acls((("TOPIC", T, "WRITE"),), permission="DENY"))  # DENY wins over the prefixed ALLOW
            refused = _refusal(ch, "Broker/Produce", ROWS[1].request)
            assert refused is not None and refused[0] == TOPIC_
            assert a.delete_acls([Acl(principal=BOB, permission="DENY")]) == 1
            assert _refusal(ch, "Broker/Produce", ROWS[1].request) is None
            # User:* DENY applies to bob too
            a.create_acls(_acls((("TOPIC", T, "ALL"),), principal="User:*", permission="DENY"))
            assert _refusal(ch, "Broker/Produce", ROWS[1].request) is not None
            a.delete_acls([Acl(principal="User:*")])
            # an ACL for another host does not apply (bob calls from 127.0.0.1)
            a.delete_acls([Acl(principal=BOB)])
            a.create_acls(_acls((("TOPIC", T, "WRITE"),), host="10.9.9.9"))
            assert _refusal(ch, "Broker/Produce", ROWS[1].request) is not None
            a.create_acls(_acls((("TOPIC", T, "WRITE"),), host="127.0.0.1"))
            assert _refusal(ch, "Broker/Produce", ROWS[1].request) is None
            listed = a.describe_acls(Acl(principal=BOB))
            assert {x.host for x in listed} == {"10.9.9.9", "127.0.0.1"}
        finally:
            a.delete_acls([Acl(principal=BOB)])
            a.delete_acls([Acl(principal="User:*")])
    with Admin(address, security=bob) as b, pytest.raises(AuthorizationError, match="TOPIC_AUTHORIZATION_FAILED"):
        b.delete_topic(T)


def test_malformed_acl_changes_are_refused_with_the_reason_and_change_nothing(cluster):
    c, address, admin, bob, ch = cluster
    with Admin(address, security=admin) as a:
        before = a.describe_acls(Acl())
        cases = [
            (a.create_acls, [], "give 1..", "ACLs"),
            (a.delete_acls, [], "give 1..", "filters"),
            (a.create_acls, _acls((("TOPIC", T, "SCRIBBLE"),)), "operation 'SCRIBBLE' is not one of", ""),
            (a.create_acls, _acls((("TOPIC", T, "WRITE"),), principal="bob"), "is not of the form User:", ""),
            (a.create_acls, _acls((("TOPIC", "*", "WRITE"),), pattern="PREFIXED"), "a prefixed pattern cannot", ""),
            (a.delete_acls, [Acl(principal=BOB, operation="SCRIBBLE")], "SCRIBBLE", ""),
        ]
        for call, items, says, noun in cases:
            with pytest.raises(Exception, match="INVALID_REQUEST") as e:
                call(items)
            assert says in str(e.value) and noun in str(e.value), e.value
        # one bad binding among good ones stores none of them
        with pytest.raises(Exception, match="INVALID_REQUEST"):
            a.create_acls([*_acls((("TOPIC", T, "READ"),)), *_acls((("TOPIC", T, "NOPE"),))])
        assert a.describe_acls(Acl()) == before


def test_brokers_only_services_stay_refused_whatever_the_acls(cluster):
    c, address, admin, bob, ch = cluster
    with Admin(address, security=admin) as a:
        a.create_acls(_acls(((*CL, "ALL"),)))
        try:
            with pytest.raises(grpc.RpcError) as e:
                controller_pb2_grpc.ControllerStub(ch).BrokerHeartbeat(ctl.BrokerHeartbeatRequest(broker_id=1),
                                                                       timeout=30)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "brokers only" in e.value.details()
            # ALL on the cluster: the admin calls now work for bob
            assert _refusal(ch, "Admin/ListUsers", apb.ListUsersRequest()) is None
        finally:
            a.delete_acls([Acl(principal=BOB)])


def test_auto_creation_needs_create_not_just_write_or_describe(cluster):
    """Kafka's rule on the gRPC API too: Metadata or Produce for a missing topic creates it only
    for a caller with CREATE on the cluster or the topic (the authorizer checked DESCRIBE or
    WRITE before the handler; auto-creation is a further step)."""
    c, address, admin, bob, ch = cluster
    stub = broker_pb2_grpc.BrokerStub(ch)

    def metadata(name: str) -> int:
        (topic,) = stub.Metadata(bpb.MetadataRequest(topics=[name]), timeout=30).topics
        return topic.error_code

    def produce(name: str) -> int:
        r = stub.Produce(bpb.ProduceRequest(partitions=[bpb.PartitionProduceData(topic=name, batch=_batch())]),
                         timeout=30)
        return r.results[0].error_code

    with Admin(address, security=admin) as a:
        a.delete_acls([Acl(principal=BOB)])
        a.create_acls(_acls((("TOPIC", "auto-", "DESCRIBE"), ("TOPIC", "auto-", "WRITE")), pattern="PREFIXED"))
        assert metadata("auto-md") == cpb.UNKNOWN_TOPIC_OR_PARTITION  # LEADER_NOT_AVAILABLE: being created
        produce("auto-pr")
        a.create_topic("acl-barrier", partitions=1, replication_factor=1)  # committed after any creation started
        assert not {"auto-md", "auto-pr"} & set(a.list_topics()), "auto-created without CREATE"
        a.create_acls(_acls((("TOPIC", "auto-", "CREATE"),), pattern="PREFIXED"))
        assert metadata("auto-md") == cpb.LEADER_NOT_AVAILABLE
        produce("auto-pr")
        c.wait_for(lambda: {"auto-md", "auto-pr"} <= set(a.list_topics()), what="auto-created with CREATE")
        a.delete_acls([Acl(principal=BOB)])


def test_a_group_consumer_needs_only_its_group_and_topic_acls_and_is_told_when_refused(cluster):
    """The client finds its group's coordinator with FindCoordinator (DESCRIBE on the group,
    implied by READ), not with Metadata of `__consumer_offsets`, which a user may not DESCRIBE:
    with READ on the topic and the group a plain user consumes as a group member. Without the
    group ACL, poll() raises the refusal instead of waiting silently (found running the README's
    secure quickstart as a new user: `semel consume --group` printed nothing and exited 0)."""
    c, address, admin, bob, ch = cluster
    with Admin(address, security=admin) as a:
        a.delete_acls([Acl(principal=BOB)])
        with Producer(address, security=admin) as p:
            p.send(T, b"for-the-group", partition=0).result(30)
        a.create_acls(_acls((("TOPIC", T, "READ"),)))
        with Consumer(address, security=bob, group_id="bob-refused", auto_offset_reset="earliest") as consumer:
            consumer.subscribe([T])
            with pytest.raises(AuthorizationError, match="GROUP_AUTHORIZATION_FAILED"):
                for _ in range(50):
                    consumer.poll(200)
        a.create_acls(_acls((("GROUP", "bob-g", "READ"),)))
        with Consumer(address, security=bob, group_id="bob-g", auto_offset_reset="earliest") as consumer:
            consumer.subscribe([T])
            seen: list[bytes] = []
            deadline = time.monotonic() + 30
            while b"for-the-group" not in seen and time.monotonic() < deadline:
                seen += [r.value for r in consumer.poll(500)]
            assert b"for-the-group" in seen
            consumer.commit()
        a.delete_acls([Acl(principal=BOB)])
