"""Issue 16 items 1-2, the pure parts: SCRAM credentials (checked against kafka-python's SCRAM
client, so Kafka's SASL/SCRAM can later use the same stored users), the principal rules, the
dev CA's certificates, and the client's refusal to send a password without TLS."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography import x509
from semel import scram, tls
from semel.client import ClientSecurity
from semel.client.errors import ConfigError
from semel.cluster.broker.principal import AuthFailure, Authenticator, PasswordCheck, Principal, is_broker
from semel.cluster.metadata import records
from semel.cluster.metadata import state as md
from semel.cluster.tooling import certs


def test_a_stored_scram_credential_answers_kafka_pythons_scram_client():
    from kafka.net.sasl.scram import ScramClient

    for mechanism in scram.MECHANISMS:
        stored = scram.make_credential("pencil", mechanism, iterations=4096)
        algo = scram.MECHANISMS[mechanism]
        client = ScramClient("user", "pencil", mechanism)
        client_first_bare = client.first_message()[3:]
        nonce = client_first_bare.split(b"r=", 1)[1] + b"server-nonce"
        server_first = b"r=" + nonce + b",s=" + base64.b64encode(stored.salt) + b",i=" + str(stored.iterations).encode()
        client.process_server_first_message(server_first)
        final = client.final_message()
        without_proof, proof = final.rsplit(b",p=", 1)
        auth_message = client_first_bare + b"," + server_first + b"," + without_proof
        signature = hmac.new(stored.stored_key, auth_message, algo).digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        assert hashlib.new(algo, client_key).digest() == stored.stored_key  # the server's check (RFC 5802)
        server_signature = hmac.new(stored.server_key, auth_message, algo).digest()
        client.process_server_final_message(b"v=" + base64.b64encode(server_signature))  # raises if wrong


def test_verify_password_and_credential_checks():
    c = scram.make_credential("s3cret")
    assert scram.verify_password(c, "s3cret") and not scram.verify_password(c, "s3cret ")
    assert scram.check_credential(c) == ""
    assert "iterations" in scram.check_credential(scram.make_credential("x", iterations=1000))
    assert scram.user_name_problem("alice") == ""
    for bad in ("broker-1", "ANONYMOUS", "", "a b", "x" * 129, "a/b"):
        assert scram.user_name_problem(bad), bad


def test_users_live_in_the_metadata_image_and_survive_a_snapshot():
    m = md.MetadataStateMachine()
    c = scram.make_credential("pw", iterations=4096)
    assert m.apply(md.UpsertUserScram("alice", c)).ok
    assert m.apply(md.UpsertUserScram("alice", scram.make_credential("pw", "SCRAM-SHA-512", 4096))).ok
    assert not m.apply(md.UpsertUserScram("broker-2", c)).ok  # reserved: would pose as a broker
    assert [x.mechanism for x in m.image.users["alice"]] == ["SCRAM-SHA-256", "SCRAM-SHA-512"]
    assert records.decode_command(records.encode_command(md.UpsertUserScram("alice", c))) == md.UpsertUserScram("alice", c)
    snap = records.Snapshot(m, records.RaftEntry(b"", 1, 1), records.RaftEntry(b"", 0, 0), ())
    assert records.decode_snapshot(records.encode_snapshot(snap)).machine.image.users == m.image.users
    assert m.apply(md.DeleteUser("alice")).ok and "alice" not in m.image.users
    assert not m.apply(md.DeleteUser("alice")).ok


SECURE = {"transport_security_type": [b"ssl"]}


def test_the_principal_comes_from_the_broker_token_the_password_or_the_certificate():
    cred = scram.make_credential("pw", iterations=4096)
    auth = Authenticator(lambda name: (cred,) if name == "alice" else (), broker_key=b"k" * 32)
    peer = "ipv4:10.1.2.3:5555"
    # certificate
    p = auth.identify({**SECURE, "x509_common_name": [b"carol"]}, (), peer)
    assert p == Principal("carol", "mtls", "10.1.2.3") and p.principal == "User:carol"
    # no credentials
    assert auth.identify(SECURE, (), peer) == Principal("ANONYMOUS", "anonymous", "10.1.2.3")
    # password: first a PBKDF2 check off the loop, then the cache answers
    check = auth.identify(SECURE, ((tls.USER_HEADER, "alice"), (tls.PASSWORD_HEADER, "pw")), peer)
    assert isinstance(check, PasswordCheck)
    assert auth.check_password(check) == Principal("alice", "password", "10.1.2.3")
    assert auth.identify(SECURE, ((tls.USER_HEADER, "alice"), (tls.PASSWORD_HEADER, "pw")), peer) == \
        Principal("alice", "password", "10.1.2.3")
    wrong = auth.identify(SECURE, ((tls.USER_HEADER, "alice"), (tls.PASSWORD_HEADER, "nope")), peer)
    assert isinstance(auth.check_password(wrong), AuthFailure)
    assert isinstance(auth.identify(SECURE, ((tls.USER_HEADER, "bob"), (tls.PASSWORD_HEADER, "pw")), peer), AuthFailure)
    # a password on a plaintext connection is refused, even a right one
    plain = auth.identify({}, ((tls.USER_HEADER, "alice"), (tls.PASSWORD_HEADER, "pw")), peer)
    assert isinstance(plain, AuthFailure) and "plaintext" in plain.message
    # broker token
    token = tls.broker_token(b"k" * 32, 3)
    assert auth.identify(SECURE, ((tls.BROKER_ID_HEADER, "3"), (tls.BROKER_TOKEN_HEADER, token)), peer) == \
        Principal("broker-3", "broker-token", "10.1.2.3")
    forged = auth.identify(SECURE, ((tls.BROKER_ID_HEADER, "4"), (tls.BROKER_TOKEN_HEADER, token)), peer)
    assert isinstance(forged, AuthFailure)


def test_the_password_cache_is_bounded():
    cred = scram.make_credential("pw", iterations=4096)
    auth = Authenticator(lambda name: (cred,), broker_key=None, cache_entries=3)
    for i in range(10):
        check = auth.identify(SECURE, ((tls.USER_HEADER, f"u{i}"), (tls.PASSWORD_HEADER, "pw")), "")
        assert isinstance(check, PasswordCheck)
        auth.check_password(check)
    assert auth.cached == 3


def test_who_counts_as_a_broker():
    listed = frozenset({"User:replicator"})
    assert is_broker(Principal("broker-1", "broker-token"), frozenset())
    assert is_broker(Principal("broker-2", "mtls"), frozenset())
    assert not is_broker(Principal("broker-2", "password"), frozenset())  # cannot happen: reserved name
    assert not is_broker(Principal("alice", "mtls"), frozenset())
    assert is_broker(Principal("replicator", "mtls"), listed)
    assert not is_broker(Principal("ANONYMOUS", "anonymous"), frozenset({"User:ANONYMOUS"}))


def test_dev_certificates_carry_sans_and_chain_to_the_ca(tmp_path):
    ca = certs.create_ca(tmp_path)
    leaf = certs.create_leaf(tmp_path, "broker-1", hosts=("127.0.0.1", "localhost", "b1.semel"))
    user = certs.create_leaf(tmp_path, "alice", hosts=(), server=False)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert = x509.load_pem_x509_certificate(leaf.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "b1.semel"}
    assert certs.common_name(user.cert) == "alice"
    assert leaf.key.stat().st_mode & 0o077 == 0 and ca.key.stat().st_mode & 0o077 == 0


def test_the_client_refuses_to_send_a_password_without_tls():
    with pytest.raises(ConfigError, match="without TLS"):
        ClientSecurity(username="alice", password="pw").channel_credentials()
    with pytest.raises(ConfigError):
        ClientSecurity(username="alice").channel_credentials()
    assert ClientSecurity().channel_credentials() is None
    env = ClientSecurity.from_env({"SEMEL_USER": "a", "SEMEL_PASSWORD": "b", "SEMEL_TLS_CA": "/x"})
    assert (env.username, env.password, env.tls_ca) == ("a", "b", "/x")


def test_broker_security_flags_that_do_not_fit_together_are_refused(tmp_path):
    from semel.cluster.broker.process import BrokerConfig

    base = ["--broker-id", "1", "--data-dir", str(tmp_path)]
    tls_files = ["--tls-cert", "c.crt", "--tls-key", "c.key", "--tls-ca", "ca.crt"]
    ok = BrokerConfig.from_args([*base, *tls_files, "--authentication", "required", "--super-users", "User:admin"])
    assert (ok.authentication, ok.super_users) == ("required", ("User:admin",))
    # the Kafka listener speaks TLS and SASL too (cluster/kafka/sasl.py): no side door to refuse
    kafka = BrokerConfig.from_args([*base, *tls_files, "--authentication", "required", "--kafka-listen", "127.0.0.1:0"])
    assert (kafka.authentication, kafka.kafka_listen) == ("required", "127.0.0.1:0")
    for bad in (
        ["--authentication", "required"],                                   # credentials need TLS
        ["--tls-cert", "c.crt"],                                            # a certificate without its key
        ["--tls-ca", "ca.crt"],                                             # a CA without our own certificate
        ["--tls-cert", "c.crt", "--tls-key", "c.key", "--tls-client-auth", "required"],  # mTLS without a CA
        [*tls_files, "--super-users", "admin"],                             # not a principal
    ):
        with pytest.raises(SystemExit):
            BrokerConfig.from_args([*base, *bad])
