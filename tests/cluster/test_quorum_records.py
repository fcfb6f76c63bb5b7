"""The metadata quorum's persisted records: the protobuf codec, the files of older builds
(tests/cluster/data/, written by make_legacy_metadata.py with commit 551ae17), and restarts of a
real in-process quorum from both."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import pickle
import shutil
import typing
from pathlib import Path

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from pysyncobj.journal import FileJournal
from semel.cluster.metadata import legacy_pickle, records
from semel.cluster.metadata.quorum import MetadataQuorum, MetadataSubmitError, QuorumConfig, VoterSpec
from semel.cluster.metadata.acl import AclBinding, AclFilter
from semel.cluster.metadata.records import MetadataRecordError
from semel.cluster.metadata.state import (
    AllocateProducerIds,
    AlterPartition,
    AlterTopicConfig,
    Barrier,
    Command,
    CompleteReassignment,
    CreateAcls,
    DeleteAcls,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    ElectLeader,
    FenceBroker,
    MetadataStateMachine,
    DeleteUser,
    DecommissionBroker,
    ReassignPartition,
    RegisterBroker,
    UnfenceBroker,
    UpsertUserScram,
)
from semel.cluster.tooling.ports import free_port
from semel.scram import ScramCredential
from semel.v1 import common_pb2 as pb
from semel.v1 import metadata_records_pb2 as mpb

DATA = Path(__file__).resolve().parent / "data"
INT64_MAX = 2**63 - 1

COMMANDS = [
    RegisterBroker(1, "inc-1", "broker-1.example", 9092),
    RegisterBroker(2, "inc-ü", "10.0.0.2", 9093, "10.0.0.2:7000", "id-2"),
    RegisterBroker(3, "inc-3", "10.0.0.3", 9094, None, "id-3", kafka_host="kafka-3.example", kafka_port=9194),
    UnfenceBroker(1, INT64_MAX, "u"),
    FenceBroker(1, 1),
    CreateTopic("orders", 3, 3, (("min_insync_replicas", "2"), ("retention_ms", "-1")), False, "c"),
    CreateTopic("__transaction_state", 50, 3, (), True),
    DeleteTopic("orders", "d"),
    AlterPartition("orders", 0, 1, 7, 3, 12, (1, 2, 3), "5f0c0b1e4a2d4c7e9a1b2c3d4e5f6a7b"),
    AlterPartition("orders", 1, -1, 0, 0, 0, ()),
    ElectLeader("orders", 2, 5, True, "e"),
    ElectLeader("orders", 2, 5),
    AllocateProducerIds(3, 4, "a"),
    Barrier(),
    Barrier("b"),
    UpsertUserScram("alice", ScramCredential("SCRAM-SHA-256", b"s" * 24, 4096, b"k" * 32, b"v" * 32), "uu"),
    DeleteUser("alice"),
    CreatePartitions("orders", 6, "cp"),
    CreatePartitions("orders", 7),
    AlterTopicConfig("orders", (("retention_ms", "60000"), ("min_insync_replicas", "2")), ("segment_bytes",), "ac"),
    AlterTopicConfig("orders"),
    ReassignPartition("orders", 0, (2, 3, 4), "ra"),
    ReassignPartition("orders", 1, (1,)),
    CompleteReassignment("orders", 0, 9, "cr"),
    CompleteReassignment("orders", 1, 0),
    DecommissionBroker(4, "dc"),
    DecommissionBroker(2),
    CreateAcls((AclBinding("User:alice", "*", "WRITE", "ALLOW", "TOPIC", "orders"),
                AclBinding("User:*", "10.0.0.1", "READ", "DENY", "GROUP", "app-", "PREFIXED")), "ca"),
    DeleteAcls((AclFilter(principal="User:alice"), AclFilter()), "da"),
    DeleteAcls((AclFilter("User:ü", "*", "ALL", "DENY", "CLUSTER", "kafka-cluster", "LITERAL"),)),
]
# Commands added after the metadata records became protobuf: no older build ever pickled them.
NEWER_THAN_PICKLES = {UpsertUserScram, DeleteUser, CreatePartitions, AlterTopicConfig, ReassignPartition,
                      CompleteReassignment, DecommissionBroker, CreateAcls, DeleteAcls}


async def until(predicate, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def summary(node: MetadataQuorum) -> dict:
    """The same rendering make_legacy_metadata.py wrote into expected.json."""
    image = node.image()
    return json.loads(json.dumps({
        "last_applied": node.last_applied(),
        "version": image.version,
        "brokers": {str(b): dataclasses.asdict(r) for b, r in image.brokers.items()},
        "topics": {n: dataclasses.asdict(t) for n, t in image.topics.items()},
        "next_producer_id": image.next_producer_id,
        "next_broker_epoch": image.next_broker_epoch,
        "next_assignment_start": image.next_assignment_start,
    }))


def single_voter(data_dir: Path) -> MetadataQuorum:
    voter = VoterSpec(1, f"127.0.0.1:{free_port()}", "unused:1")
    return MetadataQuorum(QuorumConfig(1, voter.raft_address, (voter,), data_dir))


def journal_calls(data_dir: Path) -> list[tuple]:
    """The (method id, args) of every replicated call in the journal, as pysyncobj reads them."""
    journal = FileJournal(str(data_dir / "metadata.journal"))
    try:
        entries = [journal[i][0] for i in range(len(journal))]
    finally:
        journal._destroy()
    return [pysyncobj_pickle.loads(e[1:]) for e in entries if e[:1] == bytes([legacy_pickle.REGULAR_ENTRY])]


# --- the codec ----------------------------------------------------------------------------


def test_every_command_type_is_exercised() -> None:
    assert {type(c) for c in COMMANDS} == set(typing.get_args(Command))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_commands_round_trip(command) -> None:
    encoded = records.encode_command(command)
    assert isinstance(encoded, bytes)
    assert records.decode_command(encoded) == command
    assert b"semel" not in encoded and type(command).__name__.encode() not in encoded  # no Python names


def test_snapshot_round_trips_image_counters_and_dedup_window() -> None:
    machine = MetadataStateMachine()
    for b in (1, 2, 3):
        machine.apply(RegisterBroker(b, f"i{b}", "h", 9000 + b, f"h:{b}" if b == 1 else None, f"reg-{b}",
                                     kafka_host="k" if b == 2 else "", kafka_port=9100 + b if b == 2 else 0))
        machine.apply(UnfenceBroker(b, machine.image.broker(b).broker_epoch))
    assert machine.apply(CreateTopic("orders", 3, 3, (("retention_ms", "60000"),), command_id="create")).ok
    p = machine.image.partition("orders", 0)
    assert machine.apply(AlterPartition("orders", 0, p.leader, machine.image.broker(p.leader).broker_epoch,
                                        p.leader_epoch, p.partition_epoch, (p.leader,), "alter")).ok
    assert machine.apply(AllocateProducerIds(2, machine.image.broker(2).broker_epoch, "pids")).ok
    assert machine.apply(FenceBroker(3, machine.image.broker(3).broker_epoch, "fence")).ok
    assert machine.apply(DeleteTopic("absent", "missing")).error == pb.UNKNOWN_TOPIC_OR_PARTITION
    entry = records.RaftEntry(b"\x00entry", 41, 3), records.RaftEntry(b"\x01noop", 40, 3)
    snapshot = records.Snapshot(machine, entry[0], entry[1], ("127.0.0.1:1", "127.0.0.1:2"))

    restored = records.decode_snapshot(records.encode_snapshot(snapshot))

    assert restored.machine.image == machine.image
    assert list(restored.machine.image.topics) == list(machine.image.topics)  # dict order kept
    assert restored.machine.last_applied == machine.last_applied
    assert restored.machine.recent_results() == machine.recent_results()
    assert (restored.last_entry, restored.previous_entry) == entry
    assert restored.cluster_addresses == snapshot.cluster_addresses
    # The restored machine behaves as the original: a retried id gets the recorded result.
    assert restored.machine.apply(AllocateProducerIds(2, 0, "pids")) == machine.recent_results()[-3][1]


def test_unknown_version_garbage_and_unknown_commands_are_errors_not_guesses() -> None:
    good = mpb.MetadataCommand(format_version=mpb.FORMAT_VERSION_1, barrier=mpb.Barrier())
    assert records.decode_command(good.SerializeToString()) == Barrier()

    newer = mpb.MetadataCommand(format_version=2, barrier=mpb.Barrier()).SerializeToString()
    with pytest.raises(MetadataRecordError, match="format version 2; this build reads 1"):
        records.decode_command(newer)
    unversioned = mpb.MetadataCommand(barrier=mpb.Barrier()).SerializeToString()
    with pytest.raises(MetadataRecordError, match="format version 0"):
        records.decode_command(unversioned)
    with pytest.raises(MetadataRecordError, match="does not parse"):
        records.decode_command(b"\xff\xff\xff")
    # A command type from a newer build: field 99 is unknown here, so no oneof member is set.
    unknown_type = mpb.MetadataCommand(format_version=1).SerializeToString() + b"\x9a\x06\x00"
    with pytest.raises(MetadataRecordError, match="type this build does not know"):
        records.decode_command(unknown_type)
    with pytest.raises(MetadataRecordError, match="not bytes"):
        records.decode_command(Barrier())  # type: ignore[arg-type]
    with pytest.raises(MetadataRecordError, match="snapshot has format version 7"):
        records.decode_snapshot(mpb.MetadataSnapshot(format_version=7).SerializeToString())


def test_the_journal_envelope_assumptions_hold_for_this_pysyncobj() -> None:
    from pysyncobj.syncobj import _COMMAND_TYPE
    from semel.cluster.metadata.quorum import _ReplicatedMetadata as consumer

    assert legacy_pickle.REGULAR_ENTRY == _COMMAND_TYPE.REGULAR
    # pysyncobj persists a method number assigned in name order: one replicated method keeps it 0.
    replicated = [m for m in dir(consumer) if getattr(getattr(consumer, m), "replicated", False)
                  and m != getattr(getattr(consumer, m), "origName")]
    assert replicated == ["apply_v0"]


# --- older builds' pickles ----------------------------------------------------------------


def test_the_restricted_unpickler_refuses_everything_but_our_records() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    for payload in (Evil(), Path("x"), {"a": ValueError("x")}):
        entry = bytes([legacy_pickle.REGULAR_ENTRY]) + pickle.dumps((0, (payload,)), 2)
        with pytest.raises(MetadataRecordError, match="refusing to unpickle"):
            legacy_pickle.convert_entry(entry)
    with pytest.raises(MetadataRecordError, match="undecodable"):
        legacy_pickle.convert_entry(b"\x00\x80\x02truncated")
    with pytest.raises(MetadataRecordError, match="refusing to unpickle"):
        legacy_pickle.load_legacy_dump(gzip.compress(pickle.dumps(([{}, {"machine": Evil()}], 1, 2, set()), 2)))


def test_a_legacy_entry_converts_to_the_same_command_and_current_entries_stay_as_they_are(tmp_path: Path) -> None:
    legacy = _legacy_journal_entries(tmp_path)
    regular = [e for e in legacy if e[:1] == b"\x00"]
    assert len(regular) == 16 and all(b"semel.cluster.metadata" in e for e in regular)
    converted = [legacy_pickle.convert_entry(e) for e in legacy]
    commands = [records.decode_command(pysyncobj_pickle.loads(e[1:])[1][0]) for e in converted if e[:1] == b"\x00"]
    assert {type(c) for c in commands} == set(typing.get_args(Command)) - NEWER_THAN_PICKLES  # every pickled type
    assert commands[0] == RegisterBroker(1, "inc-1", "127.0.0.1", 9091, None, "reg-1")
    assert [legacy_pickle.convert_entry(e) for e in converted] == converted  # idempotent
    assert [e for e in converted if e[:1] != b"\x00"] == [e for e in legacy if e[:1] != b"\x00"]


def _legacy_journal_entries(tmp_path: Path) -> list[bytes]:
    copy = shutil.copy(DATA / "legacy_journal" / "metadata.journal", tmp_path)  # FileJournal maps it writable
    journal = FileJournal(str(copy))
    try:
        return [bytes(journal[i][0]) for i in range(len(journal))]
    finally:
        journal._destroy()


@pytest.mark.parametrize("name", ["legacy_journal", "legacy_snapshot"])
def test_a_quorum_restarts_from_an_older_builds_files(tmp_path: Path, name: str) -> None:
    data_dir = tmp_path / name
    shutil.copytree(DATA / name, data_dir)
    expected = json.loads((data_dir / "expected.json").read_text())
    for registration in expected["brokers"].values():  # fields added after these files were written: defaults
        registration.setdefault("kafka_host", "")
        registration.setdefault("kafka_port", 0)
        registration.setdefault("decommissioned", False)
        registration.setdefault("replication_port", 0)
    for topic in expected["topics"].values():
        for partition in topic["partitions"]:
            partition.setdefault("target_replicas", [])  # no reassignment in flight
            # Replayed by today's rules (KIP-966): replicas that left an ISR now below
            # min.insync.replicas stay eligible leaders (these files' ISRs only ever shrank).
            below_min = len(partition["isr"]) < topic["config"]["min_insync_replicas"]
            partition.setdefault("elr", [r for r in partition["replicas"] if below_min and r not in partition["isr"]])
    if name == "legacy_snapshot":
        assert (data_dir / "metadata.dump").read_bytes()[:2] == legacy_pickle.GZIP_MAGIC

    async def restored(node: MetadataQuorum) -> None:
        await until(lambda: node.is_leader() and node.last_applied() >= expected["last_applied"])
        assert summary(node) == expected
        # The dedup window came back too: a retry of a command applied by the old build gets
        # its recorded result and changes nothing.
        before = node.image()
        block = await node.submit(AllocateProducerIds(1, 1, "pids-1"))
        assert block.ok and block.value.first_producer_id == 0 and node.image() == before

    for _ in range(2):  # the old files, then the same dir as this build left it
        node = single_voter(data_dir)
        try:
            asyncio.run(restored(node))
        finally:
            node.close(wait=True)
        expected["last_applied"] += 1  # the retried AllocateProducerIds
        # Only protobuf bytes are left in the journal: no Python class name to break.
        assert all(isinstance(args[0], bytes) for _, args in journal_calls(data_dir))


def test_new_records_survive_a_restart_with_snapshot_and_journal_tail(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    node = single_voter(data_dir)

    async def write() -> dict:
        await until(node.is_leader)
        for b in (1, 2, 3):
            epoch = (await node.submit(RegisterBroker(b, f"i{b}", "h", 9000 + b, command_id=f"reg-{b}"))).value
            assert (await node.submit(UnfenceBroker(b, epoch))).ok
        assert (await node.submit(CreateTopic("orders", 2, 3, (("retention_ms", "60000"),)))).ok
        node.forceLogCompaction()
        await until(lambda: (data_dir / "metadata.dump").exists())
        assert (await node.submit(AllocateProducerIds(2, node.image().broker(2).broker_epoch, "pids"))).ok
        assert (await node.submit(FenceBroker(3, node.image().broker(3).broker_epoch))).ok
        return summary(node)

    try:
        before = asyncio.run(write())
    finally:
        node.close(wait=True)
    dump = (data_dir / "metadata.dump").read_bytes()
    assert not legacy_pickle.is_legacy_dump(dump) and b"semel.cluster" not in dump
    snapshot = records.decode_snapshot(dump)
    assert snapshot.machine.image.topic("orders") is not None and snapshot.machine.image.next_producer_id == 0
    calls = journal_calls(data_dir)
    assert calls and all(isinstance(args[0], bytes) for _, args in calls)

    node = single_voter(data_dir)

    async def reread() -> None:
        await until(lambda: node.is_leader() and node.last_applied() >= before["last_applied"])
        assert summary(node) == before
        # A retried id from before the snapshot gets its recorded result: a new incarnation under
        # that id would otherwise fence broker 1 and get a new epoch.
        image = node.image()
        assert (await node.submit(RegisterBroker(1, "i1-new", "h", 9001, command_id="reg-1"))).value == 1
        assert node.image() == image

    try:
        asyncio.run(reread())
    finally:
        node.close(wait=True)


def test_a_follower_that_fell_behind_a_compaction_gets_the_protobuf_snapshot(tmp_path: Path) -> None:
    voters = tuple(VoterSpec(i, f"127.0.0.1:{free_port()}", "unused:1") for i in (1, 2, 3))
    nodes = {v.node_id: MetadataQuorum(QuorumConfig(v.node_id, v.raft_address, voters, tmp_path / f"n{v.node_id}"))
             for v in voters[:2]}  # node 3 starts later, after both others compacted their logs

    async def scenario() -> None:
        await until(lambda: any(n.is_leader() for n in nodes.values()))
        leader = next(n for n in nodes.values() if n.is_leader())
        for b in (1, 2):
            assert (await leader.submit(RegisterBroker(b, f"i{b}", "h", 9000 + b))).ok
        for n in nodes.values():
            n.forceLogCompaction()
        await until(lambda: all((tmp_path / f"n{i}" / "metadata.dump").exists() for i in nodes))
        assert (await leader.submit(RegisterBroker(3, "late", "h", 9003))).ok  # after the compaction
        nodes[3] = MetadataQuorum(QuorumConfig(3, voters[2].raft_address, voters, tmp_path / "n3"))
        await until(lambda: nodes[3].image() == leader.image())
        # It was sent the leader's snapshot (pysyncobj writes it as node 3's dump), not the log.
        sent = records.decode_snapshot((tmp_path / "n3" / "metadata.dump").read_bytes())
        assert sent.machine.image.broker(2) is not None and sent.machine.image.broker(3) is None
        assert nodes[3].image().broker(2) is not None and nodes[3].image().broker(3).incarnation_id == "late"

    try:
        asyncio.run(scenario())
    finally:
        for n in nodes.values():
            n.close(wait=True)


def test_unreadable_records_on_disk_fail_the_constructor(tmp_path: Path) -> None:
    newer_dump = tmp_path / "newer"
    newer_dump.mkdir()
    (newer_dump / "metadata.dump").write_bytes(mpb.MetadataSnapshot(format_version=2).SerializeToString())
    with pytest.raises(MetadataRecordError, match="format version 2"):
        single_voter(newer_dump)

    bad_entry = tmp_path / "bad_entry"
    bad_entry.mkdir()
    journal = FileJournal(str(bad_entry / "metadata.journal"))
    journal.add(bytes([legacy_pickle.REGULAR_ENTRY]) + pysyncobj_pickle.dumps((0, (b"\xff\xff",))), 1, 1)
    journal._destroy()
    with pytest.raises(MetadataRecordError, match="does not parse"):
        single_voter(bad_entry)


def test_an_unreadable_entry_stops_the_replica_instead_of_being_skipped(tmp_path: Path) -> None:
    node = single_voter(tmp_path / "node")

    async def scenario() -> None:
        await until(node.is_leader)
        assert (await node.submit(RegisterBroker(1, "i1", "h", 9001))).ok
        applied = node.last_applied()
        newer = mpb.MetadataCommand(format_version=2, barrier=mpb.Barrier()).SerializeToString()
        node._consumer.apply(newer, callback=lambda result, error: None)  # as if from a newer leader
        with pytest.raises(MetadataSubmitError) as info:
            await node.submit(RegisterBroker(2, "i2", "h", 9002), timeout_s=0.5)
        assert info.value.outcome_unknown  # appended after the bad entry, never applied
        assert node.last_applied() == applied and node.image().broker(2) is None

    try:
        asyncio.run(scenario())
    finally:
        node.close(wait=True)


def test_uncommitted_entries_during_a_compaction_that_empties_the_log_is_zero_not_an_error():
    """pysyncobj's in-place compaction clears the log list and re-adds the kept entries on its
    tick thread; `submit` reads the count on the event loop meanwhile (an IndexError once
    escaped `submit` there)."""
    from semel.cluster.metadata.quorum import MetadataQuorum

    class Compacting:
        raftCommitIndex = 7

        def _SyncObj__getCurrentLogIndex(self) -> int:
            return [][-1]  # what pysyncobj's `self.__raftLog[-1][1]` does on an emptied log

    class Steady(Compacting):
        def _SyncObj__getCurrentLogIndex(self) -> int:
            return 10

    assert MetadataQuorum.uncommitted_entries(Compacting()) == 0  # type: ignore[arg-type]
    assert MetadataQuorum.uncommitted_entries(Steady()) == 3  # type: ignore[arg-type]
