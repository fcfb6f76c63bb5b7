"""The metadata journal's fsync path (`raft_journal`, on with the broker's `fsync: true`).

What a power cut needs (issue 20 item 1): nothing is acknowledged or counted before it is on
disk; term and vote durable before a vote; compaction that cannot lose kept entries; a loader
that cuts a torn final record. A power cut itself is not simulated here (no file layer keeps
unsynced writes yet): the tests check the order of syncs and answers, the file formats, and
recovery from a journal torn the way a cut flush leaves it.
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest
from pysyncobj import SyncObj
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET, FileJournal, MetaStorer
from semel.cluster.metadata import raft_journal
from semel.cluster.metadata.quorum import MetadataQuorum, QuorumConfig, VoterSpec, data_paths
from semel.cluster.metadata.raft_journal import DurableJournal, DurableMetaStorer, cut_torn_tail, scan_journal
from semel.cluster.metadata.state import RegisterBroker
from tests.cluster.test_quorum_inprocess import free_port, until


def always(_: bytes) -> bool:
    return True


def write_journal(path: Path, entries: list[tuple[bytes, int, int]]) -> None:
    journal = FileJournal(str(path))
    for entry in entries:
        journal.add(*entry)
    journal._destroy()


def read_entries(path: Path) -> list[tuple[bytes, int, int]]:
    journal = FileJournal(str(path))
    try:
        return [(bytes(c), i, t) for c, i, t in (journal[k] for k in range(len(journal)))]
    finally:
        journal._destroy()


ENTRIES = [(b"a" * 50, 1, 1), (b"b" * 70, 2, 1), (b"c" * 30, 3, 2)]


def record_offsets(entries: list[tuple[bytes, int, int]]) -> list[int]:
    offsets, offset = [], FIRST_RECORD_OFFSET
    for command, _, _ in entries:
        offsets.append(offset)
        offset += 4 + 16 + len(command) + 4
    return offsets + [offset]


# --- the loader: a torn tail ------------------------------------------------------------------

def test_a_whole_journal_is_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "j"
    write_journal(path, ENTRIES)
    scan = scan_journal(path.read_bytes(), always)
    assert (scan.entries, scan.problem) == (3, None)
    assert cut_torn_tail(path, always) is None and read_entries(path) == ENTRIES


@pytest.mark.parametrize("tear", ["zeroed-tail", "suffix", "header-past-data", "unreadable-command"])
def test_a_torn_last_record_is_cut_and_the_rest_loads(tmp_path: Path, tear: str) -> None:
    """The shapes an interrupted msync leaves: the header page written, a record page not."""
    path = tmp_path / "j"
    write_journal(path, ENTRIES)
    data = bytearray(path.read_bytes())
    last, end = record_offsets(ENTRIES)[2:4]
    command_ok = always
    if tear == "zeroed-tail":
        data[last + 10:end] = bytes(end - last - 10)
    elif tear == "suffix":
        data[end - 4:end] = struct.pack("<I", 999)
    elif tear == "header-past-data":
        data[LAST_RECORD_OFFSET_OFFSET:LAST_RECORD_OFFSET_OFFSET + 4] = struct.pack("<I", end + 4096)
        data[end:end + 64] = b"\xff" * 64
    else:
        def command_ok(command: bytes) -> bool:
            return not command.startswith(b"c")
    path.write_bytes(bytes(data))
    if tear != "unreadable-command":  # pysyncobj's loader keeps the torn record (or fails)
        try:
            as_is: object = read_entries(path)
        except Exception as exc:
            as_is = exc
        assert as_is != ENTRIES[:3 if tear == "header-past-data" else 2]
    kept = 3 if tear == "header-past-data" else 2  # there the records are whole, what follows is not
    scan = cut_torn_tail(path, command_ok)
    assert scan is not None and scan.entries == kept and scan.end_offset == (end if kept == 3 else last)
    assert read_entries(path) == ENTRIES[:kept]
    assert cut_torn_tail(path, command_ok) is None  # done once


def test_an_unreadable_command_in_the_middle_is_not_cut(tmp_path: Path) -> None:
    """Whole records follow it, so it was not torn: the quorum refuses it loudly instead."""
    path = tmp_path / "j"
    write_journal(path, ENTRIES)
    assert cut_torn_tail(path, lambda command: not command.startswith(b"b")) is None
    assert read_entries(path) == ENTRIES


# --- the durable journal ----------------------------------------------------------------------

def test_the_durable_journal_syncs_only_what_changed_and_compacts_by_rename(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    journal = DurableJournal(path)
    syncs = journal.syncs
    for entry in ENTRIES:
        journal.add(*entry)
    journal.sync()
    journal.sync()
    assert journal.syncs == syncs + 1
    journal.setRaftCommitIndex(3)  # nothing new: no msync
    assert journal.syncs == syncs + 1
    journal.add(b"d" * 10, 4, 2)
    journal.setRaftCommitIndex(4)  # the leader's step after counting itself: syncs first
    assert journal.syncs == syncs + 2
    inode = os.stat(path).st_ino
    journal.deleteEntriesTo(2)
    assert os.stat(path).st_ino != inode  # a new file renamed over the old, not a rewrite in place
    assert not os.path.exists(path + ".compacting")
    assert [journal[i] for i in range(len(journal))] == [ENTRIES[2], (b"d" * 10, 4, 2)]
    journal.add(b"e", 5, 3)  # the new file takes appends
    journal.sync()
    journal._destroy()
    assert read_entries(Path(path)) == [ENTRIES[2], (b"d" * 10, 4, 2), (b"e", 5, 3)]


def test_term_and_vote_are_stored_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "j.meta")
    DurableMetaStorer(path).storeMeta({"currentTerm": 7, "votedForNodeId": "127.0.0.1:1"})
    assert MetaStorer(path).getMeta() == {"currentTerm": 7, "votedForNodeId": "127.0.0.1:1"}
    assert not os.path.exists(path + ".tmp")


def test_only_a_quorum_with_fsync_gets_the_durable_journal(tmp_path: Path) -> None:
    one, two = (VoterSpec(1, f"127.0.0.1:{free_port()}", "127.0.0.1:1") for _ in range(2))
    plain = MetadataQuorum(QuorumConfig(1, one.raft_address, (one,), tmp_path / "plain"))
    durable = MetadataQuorum(QuorumConfig(1, two.raft_address, (two,), tmp_path / "durable", fsync=True))
    try:
        assert type(plain._SyncObj__raftLog) is FileJournal
        assert type(durable._SyncObj__raftLog) is DurableJournal
        assert type(durable._SyncObj__raftLog._FileJournal__metaStorer) is DurableMetaStorer
    finally:
        plain.close(wait=True)
        durable.close(wait=True)


# --- order: nothing acknowledged or applied before it is on disk ------------------------------

def test_no_node_acknowledges_or_applies_an_entry_before_it_is_synced(tmp_path: Path, monkeypatch) -> None:
    violations: list[str] = []
    acknowledged = 0
    synced_through: dict[int, int] = {}  # id(journal) -> last raft index on disk

    real_sync = DurableJournal.sync

    def sync(journal: DurableJournal) -> None:
        real_sync(journal)
        synced_through[id(journal)] = journal[len(journal) - 1][1] if len(journal) else 0

    real_send_next = SyncObj._SyncObj__sendNextNodeIdx

    def send_next(node: SyncObj, peer, reset=False, nextNodeIdx=None, success=False) -> None:
        nonlocal acknowledged
        if success:
            acknowledged += 1
            journal = node._SyncObj__raftLog
            if journal._dirty:
                violations.append(f"acknowledged up to {nextNodeIdx} with unsynced changes")
        real_send_next(node, peer, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

    real_apply = SyncObj._SyncObj__applyLogEntries

    def apply(node: SyncObj) -> bool:
        journal = node._SyncObj__raftLog
        # Index 1 is the no-op every node writes itself at its first start (pysyncobj's initial
        # commit index is 1): identical everywhere, re-created if lost, never replicated.
        if isinstance(journal, DurableJournal) and node.raftCommitIndex > max(1, synced_through.get(id(journal), 0)):
            violations.append(f"commit index {node.raftCommitIndex} past the synced "
                              f"{synced_through.get(id(journal), 0)}")
        return real_apply(node)

    monkeypatch.setattr(DurableJournal, "sync", sync)
    monkeypatch.setattr(SyncObj, "_SyncObj__sendNextNodeIdx", send_next)
    monkeypatch.setattr(SyncObj, "_SyncObj__applyLogEntries", apply)

    voters = tuple(VoterSpec(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3))
    nodes = [MetadataQuorum(QuorumConfig(v.node_id, v.raft_address, voters, tmp_path / f"n{v.node_id}",
                                         fsync=True)) for v in voters]

    async def scenario() -> None:
        await until(lambda: any(n.is_leader() for n in nodes))
        leader = next(n for n in nodes if n.is_leader())
        results = await asyncio.gather(*(leader.submit(RegisterBroker(i, f"i{i}", "h", 9000 + i))
                                         for i in range(1, 41)))
        assert all(r.ok for r in results)
        await until(lambda: all(n.image() == leader.image() for n in nodes))

    try:
        asyncio.run(scenario())
    finally:
        for n in nodes:
            n.close(wait=True)
    assert acknowledged > 0  # the check above saw the answers it is about
    assert violations == [], sorted(set(violations))[:20]


def test_a_quorum_with_fsync_compacts_and_restarts_with_its_state(tmp_path: Path) -> None:
    voters = tuple(VoterSpec(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3))

    def start() -> list[MetadataQuorum]:
        return [MetadataQuorum(QuorumConfig(v.node_id, v.raft_address, voters, tmp_path / f"n{v.node_id}",
                                            fsync=True, log_compaction_min_entries=10)) for v in voters]

    nodes = start()

    async def write() -> object:
        await until(lambda: any(n.is_leader() for n in nodes))
        leader = next(n for n in nodes if n.is_leader())
        for i in range(1, 61):
            assert (await leader.submit(RegisterBroker(i, f"i{i}", "h", 9000 + i))).ok
        await until(lambda: all(n.image() == leader.image() for n in nodes))
        await until(lambda: all(os.path.exists(data_paths(tmp_path / f"n{v.node_id}")[1]) for v in voters))
        return leader.image()

    try:
        image = asyncio.run(write())
    finally:
        for n in nodes:
            n.close(wait=True)
    for v in voters:  # compacted: far fewer entries than commands
        assert len(read_entries(Path(data_paths(tmp_path / f"n{v.node_id}")[0]))) < 60
    nodes = start()

    async def reread() -> None:
        await until(lambda: all(n.image() == image for n in nodes), 10)

    try:
        asyncio.run(reread())
    finally:
        for n in nodes:
            n.close(wait=True)


def test_a_quorum_with_fsync_starts_from_a_journal_with_a_torn_tail(tmp_path: Path) -> None:
    (voter,) = (VoterSpec(1, f"127.0.0.1:{free_port()}", "127.0.0.1:1"),)
    config = QuorumConfig(1, voter.raft_address, (voter,), tmp_path / "n1", fsync=True)
    node = MetadataQuorum(config)

    async def write() -> None:
        await until(node.is_leader)
        for i in range(1, 6):
            assert (await node.submit(RegisterBroker(i, f"i{i}", "h", 9000 + i))).ok

    try:
        asyncio.run(write())
    finally:
        node.close(wait=True)
    journal_file = Path(data_paths(tmp_path / "n1")[0])
    entries = read_entries(journal_file)
    data = bytearray(journal_file.read_bytes())
    end = struct.unpack_from("<I", data, LAST_RECORD_OFFSET_OFFSET)[0]
    data[end - 30:end - 4] = bytes(26)  # the last record's page never reached the disk
    journal_file.write_bytes(bytes(data))
    node = MetadataQuorum(config)  # without the cut: MetadataRecordError (unreadable entry)

    async def reread() -> None:
        await until(lambda: node.image().broker(4) is not None)

    try:
        asyncio.run(reread())
    finally:
        node.close(wait=True)
    assert read_entries(journal_file)[:len(entries) - 1] == entries[:-1]
    assert raft_journal.scan_journal(journal_file.read_bytes(), always).problem is None


# --- the broker wiring ------------------------------------------------------------------------

def test_brokers_with_fsync_restart_together_with_their_metadata(tmp_path: Path) -> None:
    """`--fsync` brokers (the quorum on its fsync path) work, and after kill -9 of all of them
    come back with the metadata they committed."""
    from tests.cluster.harness import Cluster

    with Cluster(tmp_path, brokers=3, extra_args=["--fsync"]) as cluster:
        cluster.create_topic("durable", 2, 3)
        for broker_id in cluster.broker_ids:
            cluster.kill(broker_id)
        for broker_id in cluster.broker_ids:
            cluster._cluster.brokers[broker_id].start()
        cluster._cluster.wait_ready(60)
        info = cluster.partition_info("durable", 1)
        assert info is not None and sorted(info.replicas) == [1, 2, 3]
