"""One metadata quorum node in its own process, driven by JSON lines on stdin (test helper).

    python tests/cluster/quorum_node.py --node-id 1 --raft 127.0.0.1:P1 \
        --voters 1=127.0.0.1:P1,2=127.0.0.1:P2,3=127.0.0.1:P3 --data-dir DIR

Requests (one JSON object per line) and replies (one line each, same "id"):
  {"id": 1, "op": "status"}  -> {"id": 1, "is_leader", "leader", "version", "last_applied",
                                 "has_quorum", "topics": {name: partitions}, "next_producer_id"}
  {"id": 2, "op": "submit", "command": "CreateTopic", "args": {...}, "timeout_s": 2.0}
                             -> {"id": 2, "ok": bool, "error": int, "value": ..., "unknown": bool,
                                 "elapsed_s": float}
  {"id": 3, "op": "compact"} -> forces a pysyncobj log compaction (writes the full dump)
The first line printed is {"ready": true} once the node is constructed.

With --broker the node is also a (data-less) broker in combined mode, like a real one: it runs
a `Controller`, registers itself (broker id = node id, raft address), and heartbeats the active
controller every --heartbeat-ms over a line-JSON TCP "RPC" at the voter's rpc address (the real
broker does the same over gRPC). Voters are then given as `ID=RAFT_HOST:PORT@RPC_HOST:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import threading
import time
import uuid

from semel.cluster.metadata import state as metadata
from semel.cluster.metadata.quorum import (
    MetadataQuorum,
    MetadataSubmitError,
    QuorumConfig,
    VoterSpec,
)
from semel.v1 import common_pb2 as pb


def parse_voters(text: str) -> tuple[VoterSpec, ...]:
    voters = []
    for item in text.split(","):
        node_id, addresses = item.split("=")
        raft, _, rpc = addresses.partition("@")
        voters.append(VoterSpec(int(node_id), raft, rpc or raft))
    return tuple(voters)


def jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)  # type: ignore[arg-type]
    return value


async def handle(quorum: MetadataQuorum, request: dict) -> dict:
    if request["op"] == "status":
        image = quorum.image()
        return {
            "is_leader": quorum.is_leader(),
            "leader": quorum.leader_raft_address(),
            "version": image.version,
            "last_applied": quorum.last_applied(),
            "has_quorum": quorum.has_quorum(),
            "raft_term": quorum.raftCurrentTerm,
            "topics": {name: len(t.partitions) for name, t in image.topics.items()},
            "next_producer_id": image.next_producer_id,
            "brokers": {b: {"epoch": r.broker_epoch, "fenced": r.fenced} for b, r in image.brokers.items()},
            "leaders": {name: [p.leader for p in t.partitions] for name, t in image.topics.items()},
        }
    if request["op"] == "submit":
        cls = getattr(metadata, request["command"])
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in request.get("args", {}).items()}
        started = time.monotonic()
        try:
            result = await quorum.submit(cls(**args), timeout_s=request.get("timeout_s"))
        except MetadataSubmitError as exc:
            return {"ok": False, "error": exc.code, "unknown": exc.outcome_unknown, "elapsed_s": time.monotonic() - started}
        return {
            "ok": result.ok,
            "error": result.error,
            "value": jsonable(result.value),
            "unknown": False,
            "elapsed_s": time.monotonic() - started,
        }
    if request["op"] == "compact":
        quorum.forceLogCompaction()
        return {"ok": True}
    return {"error": "unknown op"}


class BrokerRole:
    """Registration + heartbeats + the controller, as a combined-mode broker runs them."""

    def __init__(self, quorum: MetadataQuorum, node_id: int, heartbeat_ms: int, controller_config) -> None:
        from semel.cluster.metadata.controller import Controller

        self.quorum = quorum
        self.node_id = node_id
        self.heartbeat_s = heartbeat_ms / 1000
        self.controller = Controller(quorum, controller_config)
        self.broker_epoch = -1
        self._conn: tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def start(self) -> None:
        self.controller.start()
        me = next(v for v in self.quorum.config.voters if v.node_id == self.node_id)
        host, port = me.rpc_address.rsplit(":", 1)
        await asyncio.start_server(self._serve_rpc, host, int(port), reuse_port=False)
        asyncio.create_task(self._run())

    async def _serve_rpc(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            r = json.loads(line)
            reply = self.controller.on_heartbeat(r["broker_id"], r["broker_epoch"], r["metadata_version"])
            writer.write((json.dumps(dataclasses.asdict(reply)) + "\n").encode())
            await writer.drain()

    async def _register(self) -> None:
        me = self.quorum.config.raft_address
        while True:
            error, epoch = await self.controller.register_broker(
                self.node_id, uuid.uuid4().hex, "127.0.0.1", 10_000 + self.node_id, me
            )
            if error == 0:
                self.broker_epoch = epoch
                return
            await asyncio.sleep(0.05)

    async def _heartbeat(self) -> int:
        version = self.quorum.image().version
        active = self.quorum.active_controller()
        if active is None:
            return -1
        if active.node_id == self.node_id:
            return self.controller.on_heartbeat(self.node_id, self.broker_epoch, version).error
        if self._conn is None or self._conn[0] != active.rpc_address:
            host, port = active.rpc_address.rsplit(":", 1)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 0.2)
            self._conn = (active.rpc_address, reader, writer)
        _, reader, writer = self._conn
        request = {"broker_id": self.node_id, "broker_epoch": self.broker_epoch, "metadata_version": version}
        writer.write((json.dumps(request) + "\n").encode())
        await writer.drain()
        return json.loads(await asyncio.wait_for(reader.readline(), 0.3))["error"]

    async def _run(self) -> None:
        await self._register()
        while True:
            try:
                error = await self._heartbeat()
            except (OSError, asyncio.TimeoutError, ValueError):
                self._conn = None
                error = -1
            if error == pb.STALE_BROKER_EPOCH:
                await self._register()
            await asyncio.sleep(self.heartbeat_s)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--raft", required=True)
    parser.add_argument("--voters", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--broker", action="store_true")
    parser.add_argument("--heartbeat-ms", type=int, default=100)
    parser.add_argument("--session-timeout-ms", type=int, default=1000)
    parser.add_argument("--internal-partitions", type=int, default=4)
    args = parser.parse_args()
    config = QuorumConfig(args.node_id, args.raft, parse_voters(args.voters), args.data_dir)
    quorum = MetadataQuorum(config)
    if args.broker:
        from semel.cluster.metadata.controller import ControllerConfig
        from semel.internal_topics import (
            CONSUMER_OFFSETS_TOPIC,
            TRANSACTION_STATE_TOPIC,
        )

        controller_config = ControllerConfig(
            session_timeout_ms=args.session_timeout_ms,
            heartbeat_interval_ms=args.heartbeat_ms,
            internal_partitions={TRANSACTION_STATE_TOPIC: args.internal_partitions, CONSUMER_OFFSETS_TOPIC: args.internal_partitions},
        )
        await BrokerRole(quorum, args.node_id, args.heartbeat_ms, controller_config).start()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)

    async def serve(request: dict) -> None:
        reply = await handle(quorum, request)
        reply["id"] = request.get("id")
        print(json.dumps(reply, default=str), flush=True)

    tasks = set()
    while (line := await lines.get()) is not None:
        if line.strip():
            task = asyncio.create_task(serve(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    quorum.close()


if __name__ == "__main__":
    asyncio.run(main())
