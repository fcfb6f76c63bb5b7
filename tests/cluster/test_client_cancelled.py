"""A call the broker's side cancelled (a broker stopping resets what it still serves) is a
retriable transport failure for the client; only a call this process cancelled is `ClosedError`.
Found by the rolling-restart test: an idempotent producer gave up on a record with
"produce: cancelled (CANCELLED)" while the broker it was sending to shut down."""

from __future__ import annotations

import grpc
from semel.client.errors import BrokerUnreachableError, ClosedError
from semel.client.metadata import rpc_error


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_server_side_cancel_is_retriable_and_local_cancel_is_closed() -> None:
    remote = rpc_error(_Failed(grpc.StatusCode.CANCELLED, "CANCELLED"), "127.0.0.1:1", "produce")
    assert isinstance(remote, BrokerUnreachableError) and remote.retriable
    assert "127.0.0.1:1" in str(remote)
    for details in ("Channel closed!", "Locally cancelled by application!"):
        local = rpc_error(_Failed(grpc.StatusCode.CANCELLED, details), "127.0.0.1:1", "produce")
        assert isinstance(local, ClosedError)


def test_a_real_channel_closed_under_a_call_is_reported_as_closed() -> None:
    """grpc's own details for a channel this process closed, from a real call."""
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    release = __import__("threading").Event()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(10)
        return b""

    handler = grpc.method_handlers_generic_handler("t.S", {"M": grpc.unary_unary_rpc_method_handler(slow)})
    server.add_generic_rpc_handlers((handler,))
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary("/t.S/M")
        future = call.future(b"", timeout=10)
        grpc.channel_ready_future(channel).result(timeout=10)
        channel.close()
        try:
            future.result()
        except grpc.RpcError as exc:
            assert isinstance(rpc_error(exc, "x", "produce"), ClosedError), exc.details()
        else:
            raise AssertionError("the call survived its channel's close")
    finally:
        release.set()
        server.stop(None)
