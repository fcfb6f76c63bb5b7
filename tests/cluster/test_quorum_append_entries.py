"""A follower keeps the entries it acknowledged: Raft's AppendEntries rule (section 5.3) on pysyncobj.

pysyncobj 0.3.17 deletes every entry after an AppendEntries' previous index whenever the
follower has more, matching or not. Found by an independent client's fault runs (issue 20,
item 6: "truncating already-applied log entries", 9 times after pauses and restarts).
`MetadataQuorum` does the log part of AppendEntries itself (`raft_append`). These tests drive
real pysyncobj nodes on an in-memory network whose delivery order the test chooses, with ticks
by hand: no ports, no threads, no sleeps.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.journal import FileJournal
from pysyncobj.syncobj import _COMMAND_TYPE
from pysyncobj.transport import Transport
from semel.cluster.metadata import raft_append, records
from semel.cluster.metadata.quorum import (
    PYSYNCOBJ_VERSION,
    MetadataQuorum,
    QuorumConfig,
    VoterSpec,
    _ReplicatedMetadata,
)
from semel.cluster.metadata.raft_append import AppendPlan, ConflictBelowApplied
from semel.cluster.metadata.state import RegisterBroker

# --- the pure rule ---------------------------------------------------------------------------


def e(index: int, term: int, command: bytes = b"c") -> raft_append.Entry:
    return (command, index, term)


def test_matching_entries_are_kept_even_when_the_follower_has_more() -> None:
    following = [e(3, 1), e(4, 1), e(5, 1)]
    assert raft_append.plan_append(2, following, [e(3, 1)], applied_index=0) == AppendPlan(None, (), 3)
    assert raft_append.plan_append(2, following, [], applied_index=0) == AppendPlan(None, (), 2)  # a heartbeat


def test_only_the_missing_entries_are_appended() -> None:
    assert raft_append.plan_append(2, [e(3, 1)], [e(3, 1), e(4, 1), e(5, 2)], applied_index=0) == \
        AppendPlan(None, (e(4, 1), e(5, 2)), 5)


def test_a_conflict_truncates_from_the_conflicting_index() -> None:
    following = [e(3, 1), e(4, 1), e(5, 1)]
    assert raft_append.plan_append(2, following, [e(3, 1), e(4, 2)], applied_index=3) == \
        AppendPlan(4, (e(4, 2),), 4)


def test_a_conflict_at_or_below_the_applied_index_is_refused() -> None:
    following = [e(3, 1), e(4, 1)]
    assert raft_append.plan_append(2, following, [e(3, 1), e(4, 2)], applied_index=4) == \
        ConflictBelowApplied(index=4, local_term=1, leader_term=2, applied_index=4)


def test_entries_that_are_not_contiguous_are_a_programmer_error() -> None:
    with pytest.raises(AssertionError, match="not contiguous"):
        raft_append.plan_append(2, [], [e(4, 1)], applied_index=0)


def test_the_commit_index_follows_rule_5_and_never_moves_back() -> None:
    assert raft_append.commit_index_after(3, leader_commit_index=9, match_index=5) == 5  # not past what matched
    assert raft_append.commit_index_after(3, leader_commit_index=4, match_index=5) == 4
    assert raft_append.commit_index_after(7, leader_commit_index=4, match_index=5) == 7  # a stale message


@st.composite
def log_and_message(draw):
    """A leader's log (terms non-decreasing), a follower holding a prefix of it, maybe followed by
    entries of an older leader, and any window of the leader's log as one AppendEntries."""
    terms = sorted(draw(st.lists(st.integers(1, 4), min_size=1, max_size=12)))
    leader = [e(i + 1, t) for i, t in enumerate(terms)]
    held = draw(st.integers(1, len(leader)))
    stale_terms = draw(st.lists(st.integers(0, leader[held - 1][2]), max_size=4))
    follower = leader[:held] + [e(held + 1 + i, t) for i, t in enumerate(sorted(stale_terms))]
    prev = draw(st.integers(1, held))  # the follower holds (and matches) the previous entry
    end = draw(st.integers(prev, len(leader)))
    return leader, follower, prev, leader[prev:end]


@given(log_and_message())
def test_after_any_append_the_follower_holds_the_message_and_loses_no_matching_entry(case) -> None:
    leader, follower, prev, entries = case
    plan = raft_append.plan_append(prev, follower[prev:], entries, applied_index=0)
    assert isinstance(plan, AppendPlan)
    after = follower if plan.truncate_from_index is None else follower[:plan.truncate_from_index - 1]
    after = after + list(plan.append)
    assert [x[1] for x in after] == list(range(1, len(after) + 1))
    assert after[:plan.match_index] == leader[:plan.match_index]  # log matching up to what it acknowledges
    matching = 0
    while matching < min(len(follower), len(leader)) and follower[matching] == leader[matching]:
        matching += 1
    assert after[:matching] == follower[:matching]  # nothing that matched the leader was deleted
    if plan.truncate_from_index is not None:  # deleted only on a conflict: same index, other term
        index = plan.truncate_from_index
        assert follower[index - 1][2] != leader[index - 1][2]


# --- real pysyncobj nodes on an in-memory network --------------------------------------------


@dataclass
class Sent:
    src: str
    dst: str
    payload: bytes  # pickled, as pysyncobj's TCP transport would send it

    @property
    def message(self) -> dict:
        return pickle.loads(self.payload)


class MemoryNet:
    """Messages wait in `in_flight` until the test delivers them, in the order it chooses."""

    def __init__(self) -> None:
        self.in_flight: list[Sent] = []
        self.delivered: list[Sent] = []
        self.nodes: dict[str, SyncObj] = {}

    def transport(self, address: str) -> Transport:
        return _MemoryTransport(self, address)

    def add(self, address: str, node: SyncObj) -> None:
        self.nodes[address] = node

    def connect(self, a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            self.nodes[x]._SyncObj__transport._onNodeConnected(self._peer(x, y))

    def kill(self, address: str) -> None:
        node = self.nodes.pop(address)
        if isinstance(node, MetadataQuorum):
            node.close()
        else:
            node.destroy()
        self.in_flight = [s for s in self.in_flight if address not in (s.src, s.dst)]
        for other in self.nodes:
            self.nodes[other]._SyncObj__transport._onNodeDisconnected(self._peer(other, address))

    def take(self, src: str, dst: str) -> list[Sent]:
        """Remove and return what is in flight from `src` to `dst` (in send order)."""
        taken = [s for s in self.in_flight if (s.src, s.dst) == (src, dst)]
        self.in_flight = [s for s in self.in_flight if (s.src, s.dst) != (src, dst)]
        return taken

    def deliver(self, sent: Sent) -> None:
        if sent.dst in self.nodes:
            self.delivered.append(sent)
            self.nodes[sent.dst]._SyncObj__transport._onMessageReceived(self._peer(sent.dst, sent.src), sent.message)

    def exchange(self, *addresses: str, rounds: int = 20) -> None:
        """Deliver everything between `addresses` (in order, ticking each node) until quiet."""
        for _ in range(rounds):
            pending = [s for s in self.in_flight if s.src in addresses and s.dst in addresses]
            if not pending:
                return
            self.in_flight = [s for s in self.in_flight if not (s.src in addresses and s.dst in addresses)]
            for sent in pending:
                self.deliver(sent)
            for address in addresses:
                self.nodes[address].doTick(0)
        raise AssertionError("the nodes kept talking")

    def replicate(self, leader: str, *followers: str, rounds: int = 10) -> None:
        """Fire the leader's heartbeat timer and exchange, until every follower has the leader's
        log and has applied what it committed (a rewound follower needs a timer per step)."""
        everyone = (leader, *followers)
        for _ in range(rounds):
            self.nodes[leader]._SyncObj__newAppendEntriesTime = 0
            self.nodes[leader].doTick(0)
            self.exchange(*everyone)
            if all(log_of(self.nodes[f]) == log_of(self.nodes[leader])
                   and self.nodes[f].raftLastApplied == self.nodes[leader].raftLastApplied for f in followers):
                return
        raise AssertionError(f"followers did not catch up with {leader}")

    def _peer(self, at: str, address: str):
        """The node object that stands for `address` at node `at` (pysyncobj compares by address)."""
        return next(n for n in self.nodes[at].otherNodes if n.address == address)


class _MemoryTransport(Transport):
    def __init__(self, net: MemoryNet, address: str) -> None:
        super().__init__(None, None, None)
        self._net = net
        self._address = address

    def send(self, node, message) -> bool:
        self._net.in_flight.append(Sent(self._address, node.address, pickle.dumps(message)))
        return True


# No timer may fire on its own: elections, heartbeats and step-downs happen when the test says.
_NO_TIMERS = {"raft_min_timeout_s": 3600.0, "raft_max_timeout_s": 3601.0, "connection_timeout_s": 3601.0,
              "leader_fallback_timeout_s": 3600.0, "append_entries_period_s": 600.0}
ADDRESSES = ("a:1", "b:1", "c:1")
VOTERS = tuple(VoterSpec(i, address, "unused:1") for i, address in enumerate(ADDRESSES, 1))


def quorum_node(net: MemoryNet, tmp_path: Path, address: str) -> MetadataQuorum:
    voter = next(v for v in VOTERS if v.raft_address == address)
    node = MetadataQuorum(QuorumConfig(voter.node_id, address, VOTERS, tmp_path / address, **_NO_TIMERS),
                          transport=net.transport(address), auto_tick=False)
    net.add(address, node)
    return node


def plain_pysyncobj_node(net: MemoryNet, tmp_path: Path, address: str) -> SyncObj:
    """pysyncobj as shipped, configured like the quorum (journal, no batching, no membership changes)."""
    (tmp_path / address).mkdir()
    conf = SyncObjConf(autoTick=False, appendEntriesUseBatch=False, dynamicMembershipChange=False,
                       journalFile=str(tmp_path / address / "journal"), raftMinTimeout=3600.0,
                       raftMaxTimeout=3601.0, connectionTimeout=3601.0, appendEntriesPeriod=600.0,
                       leaderFallbackTimeout=3600.0)
    node = SyncObj(address, [a for a in ADDRESSES if a != address], conf=conf, consumers=[_ReplicatedMetadata()],
                   transport=net.transport(address))
    net.add(address, node)
    return node


def consumer_of(node: SyncObj) -> _ReplicatedMetadata:
    return node._consumer if isinstance(node, MetadataQuorum) else node._SyncObj__consumers[0]


def log_of(node: SyncObj) -> list[tuple[bytes, int, int]]:
    raft_log = node._SyncObj__raftLog
    return [raft_log[i] for i in range(len(raft_log))]


def regular_entry(command: RegisterBroker, index: int, term: int) -> tuple[bytes, int, int]:
    """A journal entry as pysyncobj's leader writes it for the quorum's one replicated method."""
    return bytes([_COMMAND_TYPE.REGULAR]) + pysyncobj_pickle.dumps((0, (records.encode_command(command),))), index, term


def append_entries(prev: tuple[bytes, int, int], entries: list, commit_index: int, term: int = 1) -> dict:
    """An AppendEntries in the form pysyncobj's `__sendAppendEntries` sends it."""
    return {"type": "append_entries", "term": term, "commit_index": commit_index, "entries": entries,
            "prevLogIdx": prev[1], "prevLogTerm": prev[2]}


def acknowledged(net: MemoryNet, src: str, dst: str) -> list[int]:
    """The `next_node_idx` answers of `src` to `dst` in flight (taken off the network)."""
    return [s.message["next_node_idx"] for s in net.take(src, dst) if s.message["type"] == "next_node_idx"]


def feed_a_delayed_append_entries(net: MemoryNet, follower: SyncObj) -> dict:
    """Leader a:1, term 1, sends the follower its no-op (2) and then X (3) and commits X; the
    first message arrives a second time, late (a delayed duplicate: Raft's network may reorder
    and duplicate). Returns what the follower held and acknowledged along the way."""
    net.in_flight.clear()
    first = log_of(follower)[0]
    noop = (bytes([_COMMAND_TYPE.NO_OP]), 2, 1)
    x = regular_entry(RegisterBroker(1, "i1", "h", 9001, command_id="x"), 3, 1)
    delayed = append_entries(first, [noop], commit_index=1)
    for message in (delayed, append_entries(noop, [x], commit_index=1), append_entries(x, [], commit_index=3)):
        net.deliver(Sent("a:1", follower.selfNode.address, pickle.dumps(message)))
    follower.doTick(0)  # applies up to the commit index
    before = {"log": log_of(follower), "acks": acknowledged(net, follower.selfNode.address, "a:1"),
              "commit": follower.raftCommitIndex, "applied": follower.raftLastApplied}
    net.deliver(Sent("a:1", follower.selfNode.address, pickle.dumps(delayed)))
    follower.doTick(0)
    after = {"log": log_of(follower), "acks": acknowledged(net, follower.selfNode.address, "a:1"),
             "commit": follower.raftCommitIndex, "applied": follower.raftLastApplied}
    return {"x": x, "before": before, "after": after}


def test_pysyncobj_itself_drops_an_applied_entry_on_a_delayed_append_entries(tmp_path: Path, caplog) -> None:
    """The bug, reproduced against pysyncobj as shipped (pinned): the fix below is still needed."""
    assert PYSYNCOBJ_VERSION == "0.3.17"
    net = MemoryNet()
    follower = plain_pysyncobj_node(net, tmp_path, "b:1")
    try:
        seen = feed_a_delayed_append_entries(net, follower)
    finally:
        follower.destroy()
    before, after = seen["before"], seen["after"]
    assert before["log"][-1] == seen["x"] and before["acks"] == [3, 4, 4] and before["applied"] == 3
    assert seen["x"] not in after["log"] and [i for _, i, _ in after["log"]] == [1, 2]  # acknowledged, applied, gone
    assert after["acks"] == [3]  # its answer goes back below what it acknowledged
    assert after["commit"] == 2 < after["applied"] == 3  # commit index lowered below what was applied
    assert "truncating already-applied log entries" in caplog.text


def test_the_quorum_keeps_its_entries_on_a_delayed_append_entries(tmp_path: Path, caplog) -> None:
    net = MemoryNet()
    follower = quorum_node(net, tmp_path, "b:1")
    try:
        seen = feed_a_delayed_append_entries(net, follower)
        assert follower.image().broker(1) is not None
    finally:
        follower.close()
    before, after = seen["before"], seen["after"]
    assert before["log"][-1] == seen["x"] and before["acks"] == [3, 4, 4] and before["applied"] == 3
    assert after["log"] == before["log"]  # nothing deleted
    assert after["acks"] == [3]  # it answers for what that message carried (the leader keeps the max)
    assert after["commit"] == after["applied"] == 3
    assert "truncating" not in caplog.text
    journal = FileJournal(str(tmp_path / "b:1" / "metadata.journal"))  # and on disk
    try:
        assert [journal[i] for i in range(len(journal))] == before["log"]
    finally:
        journal._destroy()


def test_a_real_conflict_still_replaces_the_uncommitted_suffix(tmp_path: Path) -> None:
    """Rule 3 is kept: a new leader's entry at the same index with another term wins."""
    net = MemoryNet()
    follower = quorum_node(net, tmp_path, "b:1")
    try:
        first = log_of(follower)[0]
        old = [(bytes([_COMMAND_TYPE.NO_OP]), 2, 1), regular_entry(RegisterBroker(1, "old", "h", 1), 3, 1)]
        net.deliver(Sent("a:1", "b:1", pickle.dumps(append_entries(first, old, commit_index=2))))
        new = [(bytes([_COMMAND_TYPE.NO_OP]), 3, 2)]
        net.deliver(Sent("c:1", "b:1", pickle.dumps(append_entries(old[0], new, commit_index=2, term=2))))
        follower.doTick(0)
        assert log_of(follower) == [first, old[0], new[0]]
        assert acknowledged(net, "b:1", "c:1") == [4]
        assert follower.raftCommitIndex == 2 and follower.image().broker(1) is None
    finally:
        follower.close()


def test_entries_kept_past_a_message_are_not_committed_by_it(tmp_path: Path) -> None:
    """Rule 5: a new leader's AppendEntries cut short by its batch size carries its commit index
    (4) but vouches only for the entries up to its own (2). The follower keeps an old leader's
    entry 3 until a conflict shows up, and must not apply it meanwhile."""
    net = MemoryNet()
    follower = quorum_node(net, tmp_path, "b:1")
    try:
        first = log_of(follower)[0]
        noop = (bytes([_COMMAND_TYPE.NO_OP]), 2, 1)
        old = regular_entry(RegisterBroker(1, "old", "h", 1), 3, 1)
        net.deliver(Sent("a:1", "b:1", pickle.dumps(append_entries(first, [noop, old], commit_index=1))))
        net.deliver(Sent("c:1", "b:1", pickle.dumps(append_entries(first, [noop], commit_index=4, term=2))))
        follower.doTick(0)
        assert log_of(follower) == [first, noop, old]
        assert follower.raftCommitIndex == 2 and follower.image().broker(1) is None
    finally:
        follower.close()


def test_a_conflict_below_the_applied_index_is_refused_not_applied(tmp_path: Path, caplog) -> None:
    net = MemoryNet()
    follower = quorum_node(net, tmp_path, "b:1")
    try:
        first = log_of(follower)[0]
        noop, x = (bytes([_COMMAND_TYPE.NO_OP]), 2, 1), regular_entry(RegisterBroker(1, "x", "h", 1), 3, 1)
        net.deliver(Sent("a:1", "b:1", pickle.dumps(append_entries(first, [noop, x], commit_index=3))))
        follower.doTick(0)
        assert follower.raftLastApplied == 3
        net.take("b:1", "a:1")
        other = (bytes([_COMMAND_TYPE.NO_OP]), 3, 2)  # a leader that lacks an applied entry: Raft broken
        for _ in range(3):
            net.deliver(Sent("c:1", "b:1", pickle.dumps(append_entries(noop, [other], commit_index=3, term=2))))
        assert log_of(follower) == [first, noop, x]
        assert net.take("b:1", "c:1") == []  # neither counted nor rewound
        assert caplog.text.count("conflicts with an applied one") == 1  # said once, not per message
    finally:
        follower.close()


def leader_dies_after_a_delayed_append_entries(tmp_path: Path, make) -> dict:
    """Three real nodes. Leader a commits X with b's acknowledgement; a delayed copy of a's first
    AppendEntries to b then arrives; a dies; b and c elect b and replicate. Returns X's entry and
    what b and c hold afterwards."""
    net = MemoryNet()
    nodes = {address: make(net, tmp_path, address) for address in ADDRESSES}
    a, b, c = (nodes[address] for address in ADDRESSES)
    for one, other in (("a:1", "b:1"), ("a:1", "c:1"), ("b:1", "c:1")):
        net.connect(one, other)
    try:
        # a wins term 1 with b's vote; nothing from a reaches c (a slow link, then a's death).
        a._SyncObj__raftElectionDeadline = 0
        a.doTick(0)
        net.exchange("a:1", "b:1")
        assert a._isLeader() and a.raftCurrentTerm == 1
        first_to_b = next(s for s in net.delivered if (s.src, s.dst) == ("a:1", "b:1")
                          and s.message["type"] == "append_entries" and s.message["entries"])
        assert [i for _, i, _ in first_to_b.message["entries"]] == [2]  # a's no-op

        results = []
        x = RegisterBroker(1, "i1", "h", 9001, command_id="x")
        consumer_of(a).apply(records.encode_command(x), callback=lambda result, error: results.append(error))
        a.doTick(0)  # appends X at 3 and sends it
        net.exchange("a:1", "b:1")
        assert results == [FAIL_REASON.SUCCESS]  # committed (a and b) and applied: reported to the client
        x_entry = log_of(a)[2]
        assert x_entry[1:] == (3, 1) and x_entry in log_of(b) and b.raftLastApplied == 3

        net.deliver(first_to_b)  # the delayed duplicate
        net.take("b:1", "a:1")  # its answer is lost with a
        net.kill("a:1")

        b._SyncObj__raftElectionDeadline = 0
        b.doTick(0)
        net.exchange("b:1", "c:1")
        assert b._isLeader() and b.raftCurrentTerm == 2
        net.replicate("b:1", "c:1")
        return {"x": x_entry, **{address: {"log": log_of(node), "broker 1": consumer_of(node).machine.image.broker(1)}
                                  for address, node in (("b:1", b), ("c:1", c))}}
    finally:
        for address in list(net.nodes):
            net.kill(address)


def test_a_committed_entry_survives_its_leader_after_a_delayed_append_entries(tmp_path: Path) -> None:
    seen = leader_dies_after_a_delayed_append_entries(tmp_path, quorum_node)
    for address in ("b:1", "c:1"):
        assert seen["x"] in seen[address]["log"], f"committed entry lost on {address}: {seen[address]['log']}"
        assert seen[address]["broker 1"] is not None
    assert seen["b:1"]["log"] == seen["c:1"]["log"]


def test_pysyncobj_itself_loses_that_committed_entry_and_its_replicas_diverge(tmp_path: Path, caplog) -> None:
    """The same run on pysyncobj as shipped: X is gone from the new leader's log and from c's,
    yet b applied it before: b and c disagree for good at the same log position."""
    seen = leader_dies_after_a_delayed_append_entries(tmp_path, plain_pysyncobj_node)
    assert seen["x"] not in seen["b:1"]["log"] and seen["x"] not in seen["c:1"]["log"]
    assert seen["b:1"]["log"] == seen["c:1"]["log"]
    assert seen["b:1"]["broker 1"] is not None and seen["c:1"]["broker 1"] is None
    assert "truncating already-applied log entries" in caplog.text


# --- the pin ---------------------------------------------------------------------------------


def test_the_fix_is_pinned_to_the_pysyncobj_it_was_written_for() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"pysyncobj=={PYSYNCOBJ_VERSION}"' in pyproject


def test_another_pysyncobj_version_refuses_to_import() -> None:
    import subprocess
    import sys

    code = ("import pysyncobj.version; pysyncobj.version.VERSION = '0.3.18'\n"
            "import semel.cluster.metadata.quorum")
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "ImportError: semel.cluster.metadata.quorum is written for pysyncobj 0.3.17" in run.stderr
