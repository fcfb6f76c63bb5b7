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
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import threading
import time

from semel.cluster import metadata
from semel.cluster.quorum import MetadataQuorum, MetadataSubmitError, QuorumConfig, VoterSpec


def parse_voters(text: str) -> tuple[VoterSpec, ...]:
    voters = []
    for item in text.split(","):
        node_id, address = item.split("=")
        voters.append(VoterSpec(int(node_id), address, address))
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
            "topics": {name: len(t.partitions) for name, t in image.topics.items()},
            "next_producer_id": image.next_producer_id,
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--raft", required=True)
    parser.add_argument("--voters", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    config = QuorumConfig(args.node_id, args.raft, parse_voters(args.voters), args.data_dir)
    quorum = MetadataQuorum(config)
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
