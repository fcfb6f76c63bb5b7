"""`semel bench grpc-cost`: the CPU one gRPC message costs a grpc.aio server and client, on
the standard asyncio event loop against uvloop, alternating in one run (issue 19: is uvloop
worth adopting for the brokers?).

A server process (this module run as `python -m semel.cluster.tooling.grpc_cost --serve`,
on the event loop named) answers a unary echo and a bidirectional echo stream with raw
bytes (no protobuf: what is measured is gRPC and the loop). The client, in this process on
the same kind of loop, sends `--messages` unary calls one after another, then as many
messages on one stream, each waiting for its answer: the shape of the brokers' control
RPCs and replication streams. Reported: CPU microseconds per message of the server
process (from /proc) and of the client (this process's CPU time), per loop and round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc

from semel.cluster.tooling.ports import free_ports

SERVICE = "semel.bench.Echo"
LOOPS = ("asyncio", "uvloop")


def _identity(data: bytes) -> bytes:
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=3000, help="unary calls and stream messages per phase (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each runs every loop once (default 3)")
    parser.add_argument("--payload-bytes", type=int, default=200, help="request and answer size (default 200)")
    parser.add_argument("--compare-option", action="append", default=[], metavar="KEY=INT",
                        help="also measure asyncio with this gRPC channel/server option on both sides "
                             "(e.g. grpc.http2.bdp_probe=0); repeatable, all in one extra variant")


def _run_loop(loop_name: str, main: Coroutine[Any, Any, Any]) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


Options = list[tuple[str, Any]]


async def _serve(port: int, options: Options) -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
                     ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, _identity, _identity),
    })
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def _process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(port: int, messages: int, payload: bytes, server_pid: int, options: Options) -> dict[str, float]:
    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)
        stream = channel.stream_stream(f"/{SERVICE}/Stream", _identity, _identity)
        for _ in range(50):  # connection and warm-up
            await unary(payload)

        async def measure(name: str, phase: Callable[[], Coroutine[Any, Any, None]]) -> None:
            server_before, client_before, wall_before = _process_cpu_s(server_pid), time.process_time(), time.perf_counter()
            await phase()
            out[f"{name}_server_us"] = round((_process_cpu_s(server_pid) - server_before) * 1e6 / messages, 1)
            out[f"{name}_client_us"] = round((time.process_time() - client_before) * 1e6 / messages, 1)
            out[f"{name}_wall_us"] = round((time.perf_counter() - wall_before) * 1e6 / messages, 1)

        async def unary_phase() -> None:
            for _ in range(messages):
                await unary(payload)

        async def stream_phase() -> None:
            call = stream()
            for _ in range(messages):
                await call.write(payload)
                await call.read()
            await call.done_writing()

        await measure("unary", unary_phase)
        await measure("stream", stream_phase)
    return out


def _one(loop_name: str, options: Options, messages: int, payload_bytes: int) -> dict[str, float]:
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, "-m", "semel.cluster.tooling.grpc_cost", "--serve", str(port), loop_name,
                               json.dumps(options)], stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout is None or server.stdout.readline().strip() != "READY":
            raise RuntimeError("the echo server did not start")
        return dict(_run_loop(loop_name, _client(port, messages, os.urandom(payload_bytes), server.pid, options)))
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(args: argparse.Namespace) -> int:
    if args.messages < 1 or args.rounds < 1:
        raise SystemExit("semel bench grpc-cost: --messages and --rounds must be >= 1")
    variants: dict[str, tuple[str, Options]] = {name: (name, []) for name in LOOPS}
    if args.compare_option:
        options = [(key, int(value)) for key, value in (o.split("=", 1) for o in args.compare_option)]
        variants["asyncio+" + ",".join(args.compare_option)] = ("asyncio", options)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for i in range(args.rounds):
        for name in list(variants) if i % 2 == 0 else reversed(list(variants)):
            print(f"round {i + 1}: {name} ...", file=sys.stderr, flush=True)
            loop_name, options = variants[name]
            rounds[name].append(_one(loop_name, options, args.messages, args.payload_bytes))
    best = {name: {key: min(r[key] for r in results) for key in results[0]} for name, results in rounds.items()}
    print(json.dumps({
        "benchmark": "grpc-cost", "messages": args.messages, "payload_bytes": args.payload_bytes,
        "load_average_1m": round(os.getloadavg()[0], 1),
        "best_us_per_message": best, "rounds": rounds,
        "over_asyncio": {name: {key: round(best[name][key] / best["asyncio"][key], 3)
                                for key in best["asyncio"] if best["asyncio"][key]}
                         for name in variants if name != "asyncio"},
    }))
    return 0


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--serve":
    _run_loop(sys.argv[3], _serve(int(sys.argv[2]), [tuple(o) for o in json.loads(sys.argv[4])]))
