"""Measure what the authorizer costs on the Kafka listener's produce path, in one run so the ratio
holds on a busy machine: two one-broker clusters, both TLS + SASL (--authentication required)
with a Kafka listener, one with --authorizer off and one with --authorizer on, where the
producing user `bench` is no super user and holds WRITE on the topic among 1000 other ACLs
(other users' and its own on other topics). Rounds take turns between the two.

    .venv/bin/python tests/cluster/measure_kafka_acl_cost.py [ROUNDS]

Per round and mode: one confluent-kafka producer (acks=all, idempotent, 1 KiB records)
sends RECORDS records and flushes -> MB/s. Also, in-process: the authorizer's decision for one
Produce request of 6 partitions over those 1001 ACLs -> microseconds per request. Prints the
medians and one JSON object on the last line.
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from confluent_kafka import Producer  # noqa: E402
from kio.index import load_request_schema  # noqa: E402
from semel.cli.security_args import bootstrap_users_json  # noqa: E402
from semel.client import Acl, Admin, ClientSecurity  # noqa: E402
from semel.cluster.broker.principal import Principal  # noqa: E402
from semel.cluster.kafka import codec  # noqa: E402
from semel.cluster.kafka.authorization import KafkaAuthorizer  # noqa: E402
from semel.cluster.metadata import state as md  # noqa: E402
from semel.cluster.metadata.acl import AclBinding  # noqa: E402
from semel.cluster.tooling import certs  # noqa: E402
from semel.cluster.tooling.ports import free_ports  # noqa: E402

from tests.cluster import broker_harness as h  # noqa: E402

RECORDS = 30_000
RECORD_BYTES = 1024
OTHER_ACLS = 1000
DECIDE_CALLS = 20_000


def _acls(authorizer_on: bool) -> list[Acl]:
    mine = [Acl("User:bench", "*", "WRITE", "ALLOW", "TOPIC", "cost")]
    own_others = [Acl("User:bench", "*", "READ", "ALLOW", "TOPIC", f"other-{i}") for i in range(20)]
    others = [Acl(f"User:u{i}", "*", "WRITE", "ALLOW", "TOPIC", f"t{i}") for i in range(OTHER_ACLS - 20)]
    return mine + own_others + others if authorizer_on else []


def decide_us() -> float:
    """The decision alone, in-process: one Produce of 6 partitions of one topic."""
    bindings = tuple(AclBinding(a.principal, a.host, a.operation, a.permission, a.resource_type, a.resource_name,
                                a.pattern_type) for a in _acls(True))

    class Security:  # the fields KafkaAuthorizer reads
        super_users: frozenset[str] = frozenset()
        broker_principals: frozenset[str] = frozenset()

        @staticmethod
        def acls() -> tuple[AclBinding, ...]:
            return bindings

    authz = KafkaAuthorizer(Security(), lambda: False)  # type: ignore[arg-type]
    body = codec.build(load_request_schema(codec.PRODUCE, 9), {
        "transactional_id": None, "acks": -1, "timeout": 1000,
        "topic_data": [{"name": "cost", "partition_data": [{"index": i, "records": None} for i in range(6)]}]})
    req = codec.Request(codec.PRODUCE, 9, 1, "bench", body, Principal("bench", "scram", "127.0.0.1"))
    image = md.MetadataImage()
    assert authz.decide(req, image) is None
    start = time.perf_counter()
    for _ in range(DECIDE_CALLS):
        authz.decide(req, image)
    return (time.perf_counter() - start) / DECIDE_CALLS * 1e6


def main(rounds: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="semel-kafka-acl-cost-"))
    d = root / "certs"
    certs.create_ca(d)
    certs.create_leaf(d, "broker-1")
    ca = str(d / "ca.crt")
    (root / "secret").write_text(secrets.token_urlsafe(32))
    (root / "secret").chmod(0o600)
    (root / "users.json").write_text(json.dumps(bootstrap_users_json("admin", "admin-pw")))
    admin = ClientSecurity(tls_ca=ca, username="admin", password="admin-pw")
    ports = free_ports(2)
    clusters = {mode: h.Cluster(root / mode, 1, internal_partitions=1, credentials=admin.channel_credentials(),
                                tls_cert=d / "broker-1.crt", tls_key=d / "broker-1.key", tls_ca=ca,
                                authentication="required", raft_secret_file=root / "secret",
                                bootstrap_users_file=root / "users.json", super_users="User:admin",
                                authorizer=mode, kafka_listen=f"127.0.0.1:{port}")
                for mode, port in zip(("off", "on"), ports)}
    results: dict[str, list[float]] = {m: [] for m in clusters}
    value = secrets.token_bytes(RECORD_BYTES)
    producers = {}
    try:
        for mode, c in clusters.items():
            c.start_all()
            with Admin(c.brokers[1].address, security=admin) as a:
                a.upsert_user("bench", "bench-pw")
                a.create_topic("cost", partitions=6, replication_factor=1)
                acls = _acls(mode == "on")
                for i in range(0, len(acls), 200):  # one metadata command per 200 (its size bound)
                    a.create_acls(acls[i: i + 200])
            producers[mode] = Producer({
                "bootstrap.servers": f"127.0.0.1:{ports[0 if mode == 'off' else 1]}", "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "bench", "sasl.password": "bench-pw",
                "ssl.ca.location": ca, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
            _send(producers[mode], value, 2000)  # warm: connections, producer id, metadata
        for r in range(rounds):
            for mode, p in producers.items():
                start = time.perf_counter()
                _send(p, value, RECORDS)
                results[mode].append(RECORDS * RECORD_BYTES / 1e6 / (time.perf_counter() - start))
            print(f"round {r + 1}: " + ", ".join(f"authorizer {m} {v[-1]:.1f} MB/s" for m, v in results.items()),
                  file=sys.stderr, flush=True)
    finally:
        for p in producers.values():
            p.flush(30)
        for c in clusters.values():
            c.close()
    off, on = (statistics.median(results[m]) for m in ("off", "on"))
    return {"authorizer_off_mb_s": round(off, 1), "authorizer_on_mb_s": round(on, 1),
            "ratio_on_off": round(on / off, 3),
            "decide_us_per_produce_request": round(decide_us(), 2), "acls": len(_acls(True))}


def _send(p: Producer, value: bytes, n: int) -> None:
    failed: list[object] = []
    for _ in range(n):
        while True:
            try:
                p.produce("cost", value, on_delivery=lambda err, _m: err and failed.append(err))
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0 and not failed, failed[:3]


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
