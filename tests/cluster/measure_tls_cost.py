"""Measure what TLS and password authentication cost on the gRPC path, in one run so the ratio
holds on a busy machine: three one-broker clusters (plaintext; TLS; TLS + --authentication
required with a password user), and rounds that take turns between them.

    .venv/bin/python tests/cluster/measure_tls_cost.py [ROUNDS]

Per round and mode: 20 Produce calls of a 1 MiB batch (1024 records of 1 KiB, acks=1) ->
MB/s, and 200 Metadata calls -> microseconds per call. Prints the median per mode, and one
JSON object on the last line.
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

from semel.cli.security_args import bootstrap_users_json  # noqa: E402
from semel.client import ClientSecurity  # noqa: E402
from semel.cluster.tooling import certs  # noqa: E402
from semel.v1 import broker_pb2, broker_pb2_grpc, common_pb2  # noqa: E402

from tests.cluster import broker_harness as h  # noqa: E402

PRODUCE_CALLS = 20
METADATA_CALLS = 200
RECORDS = 1024
RECORD_BYTES = 1024


def main(rounds: int) -> dict[str, dict[str, float]]:
    root = Path(tempfile.mkdtemp(prefix="semel-tls-cost-"))
    d = root / "certs"
    certs.create_ca(d)
    certs.create_leaf(d, "broker-1")
    ca = str(d / "ca.crt")
    (root / "secret").write_text(secrets.token_urlsafe(32))
    (root / "users.json").write_text(json.dumps(bootstrap_users_json("bench", "bench-pw")))
    tls_flags = {"tls_cert": d / "broker-1.crt", "tls_key": d / "broker-1.key", "tls_ca": ca}
    security = {"plaintext": ClientSecurity(), "tls": ClientSecurity(tls_ca=ca),
                "tls+password": ClientSecurity(tls_ca=ca, username="bench", password="bench-pw")}
    clusters = {
        "plaintext": h.Cluster(root / "plain", 1, internal_partitions=1),
        "tls": h.Cluster(root / "tls", 1, internal_partitions=1,
                         credentials=security["tls"].channel_credentials(), **tls_flags),
        "tls+password": h.Cluster(root / "auth", 1, internal_partitions=1,
                                  credentials=security["tls+password"].channel_credentials(),
                                  authentication="required", raft_secret_file=root / "secret",
                                  bootstrap_users_file=root / "users.json", **tls_flags),
    }
    batch = h.make_batch([secrets.token_bytes(RECORD_BYTES) for _ in range(RECORDS)])
    mb = len(batch.SerializeToString()) / 1e6
    results: dict[str, dict[str, list[float]]] = {m: {"produce_mb_s": [], "metadata_us": []} for m in clusters}
    try:
        for c in clusters.values():
            c.start_all()
        for c in clusters.values():
            assert c.create_topic("cost", partitions=1, rf=1).error_code == common_pb2.NONE
            c.wait_for(lambda c=c: c.partition_meta("cost").leader_id == 1, what="leader")
            h.produce(c.broker_stub(1), "cost", 0, batch)  # warm: connection, password cache
        # the channels the client library opens (semel.client: ClientSecurity.open_channel)
        stubs = {m: broker_pb2_grpc.BrokerStub(security[m].open_channel(c.brokers[1].address, ()))
                 for m, c in clusters.items()}
        for r in range(rounds):
            for mode, c in clusters.items():
                stub = stubs[mode]
                start = time.perf_counter()
                for _ in range(PRODUCE_CALLS):
                    resp = stub.Produce(broker_pb2.ProduceRequest(acks=broker_pb2.ACKS_LEADER, timeout_ms=10_000,
                                        partitions=[broker_pb2.PartitionProduceData(topic="cost", partition=0,
                                                                                    batch=batch)]), timeout=30)
                    assert resp.results[0].error_code == common_pb2.NONE, resp
                results[mode]["produce_mb_s"].append(PRODUCE_CALLS * mb / (time.perf_counter() - start))
                start = time.perf_counter()
                for _ in range(METADATA_CALLS):
                    stub.Metadata(broker_pb2.MetadataRequest(topics=["cost"]), timeout=10)
                results[mode]["metadata_us"].append((time.perf_counter() - start) / METADATA_CALLS * 1e6)
            print(f"round {r + 1}: " + ", ".join(
                f"{m} {v['produce_mb_s'][-1]:.1f} MB/s {v['metadata_us'][-1]:.0f} us" for m, v in results.items()),
                file=sys.stderr, flush=True)
    finally:
        for c in clusters.values():
            c.close()
    return {m: {k: round(statistics.median(v), 1) for k, v in series.items()} for m, series in results.items()}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)))
