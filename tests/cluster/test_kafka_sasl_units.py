"""The SASL server core of the Kafka listener (cluster/kafka/sasl.py) against kafka-python's
own SCRAM client and hand-made PLAIN messages; no I/O."""

from __future__ import annotations

import pytest
from kafka.net.sasl.scram import ScramClient
from semel import scram
from semel.cluster.broker.principal import Authenticator, PasswordCheck, Principal
from semel.cluster.kafka import sasl

USERS = {"alice": tuple(scram.make_credential("pencil", m, iterations=4096) for m in scram.MECHANISMS)}


def lookup(name: str) -> tuple[scram.ScramCredential, ...]:
    return USERS.get(name, ())


def exchange(mechanism: str) -> sasl.Exchange:
    return sasl.Exchange(mechanism, Authenticator(lookup, None), lookup, "10.0.0.1")


@pytest.mark.parametrize("mechanism", list(scram.MECHANISMS))
def test_scram_authenticates_kafka_pythons_client_and_proves_the_server(mechanism):
    client = ScramClient("alice", "pencil", mechanism)
    ex = exchange(mechanism)
    server_first, done = ex.step(client.first_message())
    assert done is None and b"i=4096" in server_first
    client.process_server_first_message(server_first)
    server_final, done = ex.step(client.final_message())
    assert done == Principal("alice", "scram", "10.0.0.1") and done.authenticated
    client.process_server_final_message(server_final)  # raises if the server signature is wrong
    with pytest.raises(sasl.SaslFailure):
        ex.step(b"again")


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("nobody", "pencil")])
def test_scram_refuses_a_wrong_password_and_an_unknown_user_alike(user, password):
    client = ScramClient(user, password, "SCRAM-SHA-256")
    ex = exchange("SCRAM-SHA-256")
    server_first, _ = ex.step(client.first_message())
    assert b"s=" in server_first  # an unknown user gets a salt too: no user enumeration
    client.process_server_first_message(server_first)
    with pytest.raises(sasl.SaslFailure, match="authentication failed"):
        ex.step(client.final_message())


def test_scram_accepts_the_doubled_client_nonce_of_librdkafka_before_2_6_1():
    """librdkafka#4895: r=<client nonce><server r> instead of <server r>; the proof must still hold."""
    import base64, hashlib, hmac

    ex = exchange("SCRAM-SHA-256")
    client_nonce = "cLiEnT"
    first_bare = f"n=alice,r={client_nonce}"
    server_first = ex.step(("n,," + first_bare).encode())[0].decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    without_proof = f"c=biws,r={client_nonce}{attrs['r']}"
    auth = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, "sha256").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    assert ex.step(f"{without_proof},p={proof}".encode())[1] == Principal("alice", "scram", "10.0.0.1")


def test_scram_refuses_a_replayed_nonce_channel_binding_and_garbage():
    client = ScramClient("alice", "pencil", "SCRAM-SHA-256")
    ex = exchange("SCRAM-SHA-256")
    client.process_server_first_message(ex.step(client.first_message())[0])
    final = client.final_message()
    tampered = final.replace(b"r=", b"r=x", 1)
    with pytest.raises(sasl.SaslFailure, match="nonce"):
        ex.step(tampered)
    for bad in (b"p=tls-unique,,n=alice,r=abc", b"n,,r=abc,n=alice", b"\xff\xfe", b"n,,n=alice",
                b"n,a=bob,n=alice,r=abc", b"x" * 5000):
        with pytest.raises(sasl.SaslFailure):
            exchange("SCRAM-SHA-256").step(bad)


def test_plain_checks_the_password_through_the_authenticator_and_refuses_other_authzids():
    ex = exchange("PLAIN")
    reply, check = ex.step(b"\0alice\0pencil")
    assert reply == b"" and isinstance(check, PasswordCheck)
    assert sasl.check_password(ex.authenticator, check) == Principal("alice", "password", "10.0.0.1")
    # the second time the authenticator's cache answers without PBKDF2 (an authzid equal to
    # the user is accepted)
    again = sasl.Exchange("PLAIN", ex.authenticator, lookup, "10.0.0.1")
    assert again.step(b"alice\0alice\0pencil")[1] == Principal("alice", "password", "10.0.0.1")
    _, check = exchange("PLAIN").step(b"\0alice\0wrong")
    assert isinstance(check, PasswordCheck)
    with pytest.raises(sasl.SaslFailure):
        sasl.check_password(Authenticator(lookup, None), check)
    for bad in (b"bob\0alice\0pencil", b"alice\0pencil", b"\0\0", b"\0nobody\0pencil"):
        with pytest.raises(sasl.SaslFailure):
            exchange("PLAIN").step(bad)


def test_plain_is_offered_only_over_tls():
    assert "PLAIN" in sasl.mechanisms(tls_on=True)
    assert "PLAIN" not in sasl.mechanisms(tls_on=False)
