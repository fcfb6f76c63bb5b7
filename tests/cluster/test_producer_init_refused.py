"""A producer whose InitProducerId is refused for good (an authorization refusal, an invalid
transaction timeout) fails what it queued at once with that error, and every later send() /
flush() raises it, instead of holding the records until `delivery_timeout_ms` (or a call until
`max_block_ms`). Against a real secure broker (TLS, passwords, --authorizer on)."""

from __future__ import annotations

import secrets
import time

import pytest
from semel.client import Acl, Admin, ClientSecurity, Producer
from semel.client.errors import AuthorizationError, SemelError
from semel.v1 import common_pb2

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # a broker process

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
TOPIC = "refused-t"
# Far longer than the test waits: a record that fails only at a timeout fails the test.
SLOW_MS = 120_000
PROMPT_S = 20.0  # "at once", with room for a loaded machine


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    c, d, admin = h.secure_cluster(tmp_path_factory.mktemp("refused"), 1, ADMIN_PASSWORD, authorizer="on")
    try:
        c.start_all()
        address = c.brokers[1].address
        with Admin(address, security=admin) as a:
            a.upsert_user("carol", "carol-pw")
            a.create_topic(TOPIC, partitions=1, replication_factor=1)
            # carol sees the topic (so send() finds its partitions) but may write nothing:
            # no WRITE on any topic and no IDEMPOTENT_WRITE, so InitProducerId is refused
            # (KIP-679), and no WRITE on any transactional id.
            a.create_acls([Acl("User:carol", "*", "DESCRIBE", "ALLOW", "TOPIC", TOPIC, "LITERAL"),
                           Acl("User:carol", "*", "DESCRIBE", "ALLOW", "TRANSACTIONAL_ID", "tx-", "PREFIXED")])
        carol = ClientSecurity(tls_ca=str(d / "ca.crt"), username="carol", password="carol-pw")
        yield c, address, carol, admin
    finally:
        print(c.dump_logs())
        c.close()


def test_idempotent_producer_refused_init_fails_queued_records_at_once(secure) -> None:
    _, address, carol, _ = secure
    with Producer(address, security=carol, linger_ms=0, delivery_timeout_ms=SLOW_MS, request_timeout_ms=SLOW_MS,
                  max_block_ms=SLOW_MS, enable_idempotence=True) as producer:
        started = time.monotonic()
        futures = [producer.send(TOPIC, b"v%d" % i, partition=0) for i in range(5)]
        for f in futures:
            with pytest.raises(AuthorizationError) as refused:
                f.result(PROMPT_S)
            assert refused.value.code == common_pb2.CLUSTER_AUTHORIZATION_FAILED, refused.value
            assert "IDEMPOTENT_WRITE" in str(refused.value)
        assert time.monotonic() - started < PROMPT_S
        with pytest.raises(AuthorizationError, match="CLUSTER_AUTHORIZATION_FAILED"):
            producer.send(TOPIC, b"later", partition=0)
        with pytest.raises(AuthorizationError, match="CLUSTER_AUTHORIZATION_FAILED"):
            producer.flush(PROMPT_S)


def test_transactional_producer_refused_init_raises_at_once_and_after(secure) -> None:
    _, address, carol, _ = secure
    producer = Producer(address, security=carol, transactional_id="tx-carol", max_block_ms=SLOW_MS,
                        request_timeout_ms=SLOW_MS, delivery_timeout_ms=SLOW_MS)
    try:
        started = time.monotonic()
        with pytest.raises(AuthorizationError, match="TRANSACTIONAL_ID_AUTHORIZATION_FAILED") as refused:
            producer.init_transactions()
        assert refused.value.code == common_pb2.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        assert time.monotonic() - started < PROMPT_S
        with pytest.raises(AuthorizationError, match="TRANSACTIONAL_ID_AUTHORIZATION_FAILED"):
            producer.begin_transaction()
        with pytest.raises(AuthorizationError, match="TRANSACTIONAL_ID_AUTHORIZATION_FAILED"):
            producer.send(TOPIC, b"later", partition=0)
        with pytest.raises(AuthorizationError, match="TRANSACTIONAL_ID_AUTHORIZATION_FAILED"):
            producer.flush(PROMPT_S)
    finally:
        producer.close(0)


def test_invalid_transaction_timeout_is_final(secure) -> None:
    _, address, _, admin = secure
    producer = Producer(address, security=admin, transactional_id="tx-timeout", transaction_timeout_ms=10**9,
                        max_block_ms=SLOW_MS, request_timeout_ms=SLOW_MS, delivery_timeout_ms=SLOW_MS)
    try:
        started = time.monotonic()
        with pytest.raises(SemelError, match="INVALID_TRANSACTION_TIMEOUT") as refused:
            producer.init_transactions()
        assert time.monotonic() - started < PROMPT_S
        for call in (producer.begin_transaction, lambda: producer.send(TOPIC, b"x", partition=0),
                     lambda: producer.flush(PROMPT_S)):
            with pytest.raises(SemelError, match="INVALID_TRANSACTION_TIMEOUT") as again:
                call()
            assert again.value.code == refused.value.code
    finally:
        producer.close(0)
