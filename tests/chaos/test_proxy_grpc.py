"""gRPC (HTTP/2, long-lived connection) through the fault proxy, as Semel's brokers use it."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from semel.chaos.proxy import ProxyServerThread, connect


@pytest.fixture(scope="module")
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="module")
def tp():
    with ProxyServerThread(seed=5) as srv:
        client = connect(srv.url)
        yield client
        client.reset()
        client.destroy_all()


def check_s(stub: health_pb2_grpc.HealthStub, timeout_s: float = 5.0) -> float:
    start = time.monotonic()
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s, wait_for_ready=True)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return time.monotonic() - start


def test_grpc_through_latency_and_down(tp, health_server):
    proxy = tp.create(upstream=health_server, name="grpc")
    with grpc.insecure_channel(proxy.listen) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        check_s(stub)                                            # connect
        assert check_s(stub) < 0.1
        proxy.add_toxic(type="latency", name="lat", attributes={"latency": 150})
        assert 0.15 <= check_s(stub) < 0.6                       # same HTTP/2 connection
        proxy.destroy_toxic("lat")
        assert check_s(stub) < 0.1
        with proxy.down():
            with pytest.raises(grpc.RpcError) as err:
                stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert check_s(stub, timeout_s=10) < 10                  # reconnects once enabled
