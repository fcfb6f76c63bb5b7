"""`semel bench frame-cost`: the CPU one replication round trip costs on a grpc.aio stream
against length-prefixed frames on an asyncio stream (`semel.frames`), each with
and without TLS, alternating in one run (issue 19: is an internal transport for replication
worth building?).

A server process (this module run with `--serve`) answers each ReplicaFetchRequest with a
ReplicaFetchResponse carrying one partition's `--records-bytes` of records: the same protobuf
messages, parsed and serialized on both sides in every variant, so what differs is the
transport. The client, in this process, sends `--messages` requests one after another on one
stream or connection, each waiting for its answer (the shape of a follower's fetch loop).
Reported: CPU microseconds per round trip of the server process (from /proc) and of the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from semel import tls
from semel import frames
from semel.cluster.tooling import certs
from semel.cluster.tooling.grpc_cost import _process_cpu_s, _run_loop
from semel.cluster.tooling.ports import free_ports
from semel.v1 import replication_pb2 as rpb

METHOD = "/semel.bench.ReplicaEcho/Fetch"
# frames: `frames.FrameProtocol` (what the transport uses); streams: asyncio's StreamReader/Writer
VARIANTS = ("grpc", "grpc+tls", "streams", "streams+tls", "frames", "frames+tls")
MAX_FRAME_BYTES = 16 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=3000, help="round trips per variant and round (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each runs every variant once (default 3)")
    parser.add_argument("--records-bytes", type=int, default=200, help="records in each answer (default 200)")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")


def _request() -> rpb.ReplicaFetchRequest:
    return rpb.ReplicaFetchRequest(replica_id=2, broker_epoch=17, max_wait_ms=500, max_bytes=8 << 20, incremental=True,
                                   partitions=[rpb.ReplicaFetchPartition(topic="bench", partition=3, fetch_offset=123456,
                                                                         current_leader_epoch=4, last_fetched_epoch=4)])


def _response(records_bytes: int) -> rpb.ReplicaFetchResponse:
    return rpb.ReplicaFetchResponse(results=[rpb.ReplicaFetchPartitionResult(
        topic="bench", partition=3, high_watermark=123456, log_start_offset=0, records=os.urandom(records_bytes),
        diverging_epoch=-1, diverging_end_offset=-1)])


def _files(cert_dir: str) -> tls.TlsFiles:
    leaf = certs.leaf_files(cert_dir, "broker-1")
    return tls.TlsFiles(str(certs.ca_files(cert_dir).cert), str(leaf.cert), str(leaf.key))


def _client_ssl(files: tls.TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=files.ca_file)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    return ctx


async def _serve(variant: str, port: int, cert_dir: str, records_bytes: int) -> None:
    answer = _response(records_bytes)
    files = _files(cert_dir)
    if variant.startswith("grpc"):
        async def fetch(requests: AsyncIterator[rpb.ReplicaFetchRequest], context: Any) -> AsyncIterator[rpb.ReplicaFetchResponse]:
            async for request in requests:
                yield answer

        handler = grpc.method_handlers_generic_handler("semel.bench.ReplicaEcho", {
            "Fetch": grpc.stream_stream_rpc_method_handler(fetch, rpb.ReplicaFetchRequest.FromString,
                                                           rpb.ReplicaFetchResponse.SerializeToString)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        if variant.endswith("+tls"):
            server.add_secure_port(f"127.0.0.1:{port}", tls.server_credentials(files, "required"))
        else:
            server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("READY", flush=True)
        await server.wait_for_termination()
        return

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await frames.read_frame(reader, MAX_FRAME_BYTES)) is not None:
            rpb.ReplicaFetchRequest.FromString(body)
            writer.write(frames.encode(answer.SerializeToString()))
            await writer.drain()
        writer.close()

    context = tls.server_ssl_context(files, "required") if variant.endswith("+tls") else None
    if variant.startswith("frames"):
        loop = asyncio.get_running_loop()

        async def serve_protocol(conn: frames.FrameProtocol) -> None:
            while (body := await conn.read()) is not None:
                rpb.ReplicaFetchRequest.FromString(body)
                await conn.write(answer.SerializeToString())
            conn.close()

        def factory() -> frames.FrameProtocol:
            conn = frames.FrameProtocol(MAX_FRAME_BYTES)
            conn.connected.add_done_callback(lambda _: loop.create_task(serve_protocol(conn)))
            return conn

        proto_server = await loop.create_server(factory, "127.0.0.1", port, ssl=context)
        print("READY", flush=True)
        await proto_server.serve_forever()
        return
    tcp = await asyncio.start_server(connection, "127.0.0.1", port, ssl=context)
    print("READY", flush=True)
    await tcp.serve_forever()


async def _client(variant: str, port: int, cert_dir: str, messages: int, server_pid: int) -> dict[str, float]:
    request = _request()
    files = _files(cert_dir)

    async def measure(round_trip: Any) -> dict[str, float]:
        for _ in range(50):  # connection and warm-up
            await round_trip()
        server_before, client_before, wall_before = _process_cpu_s(server_pid), time.process_time(), time.perf_counter()
        for _ in range(messages):
            await round_trip()
        return {"server_us": round((_process_cpu_s(server_pid) - server_before) * 1e6 / messages, 1),
                "client_us": round((time.process_time() - client_before) * 1e6 / messages, 1),
                "wall_us": round((time.perf_counter() - wall_before) * 1e6 / messages, 1)}

    if variant.startswith("grpc"):
        channel = (grpc.aio.secure_channel(f"127.0.0.1:{port}", tls.channel_credentials(files))
                   if variant.endswith("+tls") else grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        async with channel:
            call = channel.stream_stream(METHOD, rpb.ReplicaFetchRequest.SerializeToString,
                                         rpb.ReplicaFetchResponse.FromString)()

            async def grpc_round_trip() -> None:
                await call.write(request)
                await call.read()

            out = await measure(grpc_round_trip)
            await call.done_writing()
            return out

    if variant.startswith("frames"):
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: frames.FrameProtocol(MAX_FRAME_BYTES), "127.0.0.1", port,
            ssl=_client_ssl(files) if variant.endswith("+tls") else None)

        async def protocol_round_trip() -> None:
            await conn.write(request.SerializeToString())
            body = await conn.read()
            assert body is not None
            rpb.ReplicaFetchResponse.FromString(body)

        out = await measure(protocol_round_trip)
        conn.close()
        return out

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client_ssl(files) if variant.endswith("+tls") else None)

    async def frame_round_trip() -> None:
        writer.write(frames.encode(request.SerializeToString()))
        await writer.drain()
        body = await frames.read_frame(reader, MAX_FRAME_BYTES)
        assert body is not None
        rpb.ReplicaFetchResponse.FromString(body)

    out = await measure(frame_round_trip)
    writer.close()
    return out


def _one(variant: str, cert_dir: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, "-m", "semel.cluster.tooling.frame_cost", "--serve", variant, str(port),
                               cert_dir, str(args.records_bytes), args.event_loop], stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout is None or server.stdout.readline().strip() != "READY":
            raise RuntimeError("the echo server did not start")
        return dict(_run_loop(args.event_loop, _client(variant, port, cert_dir, args.messages, server.pid)))
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(args: argparse.Namespace) -> int:
    if args.messages < 1 or args.rounds < 1:
        raise SystemExit("semel bench frame-cost: --messages and --rounds must be >= 1")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="semel-frame-cost-") as cert_dir:
        certs.create_ca(cert_dir)
        certs.create_leaf(cert_dir, "broker-1")
        for i in range(args.rounds):
            for name in VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS)):
                print(f"round {i + 1}: {name} ...", file=sys.stderr, flush=True)
                rounds[name].append(_one(name, cert_dir, args))
    best = {name: {key: min(r[key] for r in results) for key in results[0]} for name, results in rounds.items()}
    print(json.dumps({
        "benchmark": "frame-cost", "messages": args.messages, "records_bytes": args.records_bytes,
        "event_loop": args.event_loop,
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "best_us_per_round_trip": best, "rounds": rounds,
        "over_grpc": {name: {k: round(best[name][k] / best["grpc+tls" if name.endswith("+tls") else "grpc"][k], 3)
                             for k in best[name]} for name in VARIANTS if not name.startswith("grpc")},
    }))
    return 0


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--serve":
    _run_loop(sys.argv[6], _serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))
