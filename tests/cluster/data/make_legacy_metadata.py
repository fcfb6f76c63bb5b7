"""Writes the legacy (pickled-dataclass) metadata quorum files under tests/cluster/data/.

Run with the build *before* the protobuf metadata records (commit 551ae17, where the state
machine was the module `semel.cluster.metadata` and the shell `semel.cluster.quorum`), e.g.
with a tree of symlinks that maps that checkout's folders to the `semel` import names:

    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/tmp/old-semel-tree python make_legacy_metadata.py OUT_DIR

It is kept for the record (how the committed files were made); the current build cannot run it.
Two data dirs come out, each with the pickled image summary the old build saw at the end
(`expected.json`), which tests/cluster/test_quorum_records.py compares with what the current
build restores:
  * `legacy_journal/`: every command type, in the journal only (no snapshot);
  * `legacy_snapshot/`: a pysyncobj full dump (gzip pickle of the state machine) taken after the
    first commands, then a journal tail with more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
from pathlib import Path

from semel.cluster.metadata import (  # the pre-restructure module path
    AllocateProducerIds,
    AlterPartition,
    Barrier,
    CreateTopic,
    DeleteTopic,
    ElectLeader,
    FenceBroker,
    RegisterBroker,
    UnfenceBroker,
)
from semel.cluster.quorum import MetadataQuorum, QuorumConfig, VoterSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(node: MetadataQuorum) -> dict:
    image = node.image()
    return {
        "last_applied": node.last_applied(),
        "version": image.version,
        "brokers": {str(b): dataclasses.asdict(r) for b, r in image.brokers.items()},
        "topics": {n: dataclasses.asdict(t) for n, t in image.topics.items()},
        "next_producer_id": image.next_producer_id,
        "next_broker_epoch": image.next_broker_epoch,
        "next_assignment_start": image.next_assignment_start,
    }


async def until(predicate, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def first_half(node: MetadataQuorum) -> None:
    for b in (1, 2, 3):
        epoch = (await node.submit(RegisterBroker(b, f"inc-{b}", "127.0.0.1", 9090 + b, None, f"reg-{b}"))).value
        assert (await node.submit(UnfenceBroker(b, epoch, f"unfence-{b}"))).ok
    created = await node.submit(CreateTopic("orders", 2, 3, (("min_insync_replicas", "2"), ("retention_ms", "60000")),
                                            False, "create-orders"))
    assert created.ok, created
    assert (await node.submit(CreateTopic("__transaction_state", 1, 3, (), True, "create-txn"))).ok
    assert (await node.submit(AllocateProducerIds(1, node.image().broker(1).broker_epoch, "pids-1"))).ok


async def second_half(node: MetadataQuorum) -> None:
    p = node.image().partition("orders", 0)
    altered = await node.submit(AlterPartition("orders", 0, p.leader, node.image().broker(p.leader).broker_epoch,
                                               p.leader_epoch, p.partition_epoch, (p.leader,), "alter-orders-0"))
    assert altered.ok, altered
    assert (await node.submit(FenceBroker(3, node.image().broker(3).broker_epoch, "fence-3"))).ok
    p1 = node.image().partition("orders", 1)
    assert (await node.submit(ElectLeader("orders", 1, p1.partition_epoch, True, "elect-orders-1"))).error in (0, 10)
    assert (await node.submit(CreateTopic("scratch", 1, 1, command_id="create-scratch"))).ok
    assert (await node.submit(DeleteTopic("scratch", "delete-scratch"))).ok
    assert (await node.submit(RegisterBroker(4, "inc-4", "127.0.0.1", 9094))).ok  # a generated command_id
    assert (await node.submit(Barrier("barrier-1"))).ok


def run(out: Path, with_snapshot: bool) -> None:
    voter = VoterSpec(1, f"127.0.0.1:{free_port()}", "unused:1")
    node = MetadataQuorum(QuorumConfig(1, voter.raft_address, (voter,), out))

    async def scenario() -> None:
        await until(node.is_leader)
        await first_half(node)
        if with_snapshot:
            node.forceLogCompaction()
            await until(lambda: (out / "metadata.dump").exists())
        await second_half(node)
        await asyncio.sleep(1.5)  # pysyncobj stores the journal's commit index once a second

    try:
        asyncio.run(scenario())
        (out / "expected.json").write_text(json.dumps(summary(node), indent=1, sort_keys=True) + "\n")
    finally:
        node.close(wait=True)


def main() -> int:
    root = Path(sys.argv[1])
    run(root / "legacy_journal", with_snapshot=False)
    run(root / "legacy_snapshot", with_snapshot=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
