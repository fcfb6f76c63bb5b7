"""`python -m semel.cluster.broker.health_probe --address HOST:PORT`: exit 0 iff the broker is SERVING.

For container health checks (deploy/Dockerfile's HEALTHCHECK) and scripts, where no native gRPC
probe exists (Kubernetes probes gRPC health itself: deploy/kubernetes/). It asks the standard
`grpc.health.v1.Health/Check` that every broker serves: NOT_SERVING until the broker has
registered with the metadata quorum and taken its roles, SERVING after, NOT_SERVING again while
it shuts down (cluster/broker/process.py).

Exit codes: 0 SERVING; 1 any other status, or no answer within --timeout-ms (refused, timed
out, UNIMPLEMENTED...); 2 usage errors. One line on stdout says what was seen.
"""

from __future__ import annotations

import argparse
import sys

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1


def probe(address: str, service: str = "", timeout_ms: int = 2000, tls_ca: str = "") -> tuple[bool, str]:
    """(serving, what was seen) for one Health/Check call to `address` (TLS when `tls_ca` is
    given; health checks need no credentials even with --authentication required)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        with open(tls_ca, "rb") as f:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:  # the grpc_health stubs do not declare the generated stub's methods
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service),  # type: ignore[attr-defined]
                              timeout=timeout_ms / 1000)
        except grpc.RpcError as exc:
            return False, f"{address}: no health answer: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m semel.cluster.broker.health_probe",
                                 description="Exit 0 when the broker at --address reports gRPC health SERVING.")
    ap.add_argument("--address", default="127.0.0.1:9092", help="broker gRPC address HOST:PORT (default %(default)s)")
    ap.add_argument("--service", default="", help="health service name (default: the whole server)")
    ap.add_argument("--timeout-ms", type=int, default=2000, help="give up after this long (default %(default)s)")
    ap.add_argument("--tls-ca", default="", help="PEM CA of the broker's certificate: probe a TLS port")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.timeout_ms <= 0:
        ap.error("--timeout-ms must be positive")
    serving, seen = probe(args.address, args.service, args.timeout_ms, args.tls_ca)
    print(seen, flush=True)
    return EXIT_SERVING if serving else EXIT_NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
