"""The metadata quorum: a thin pysyncobj shell around `semel.cluster.metadata.state`.

Theory of operation
-------------------
`MetadataQuorum` is a `SyncObj` whose one consumer (`_ReplicatedMetadata`) holds the pure
`MetadataStateMachine`; its only replicated method, `apply(encoded_command)`, runs on
pysyncobj's tick thread on every node in log order. pysyncobj keeps a journal and snapshots the
state (full dump); on restart the dump is loaded and the journal tail re-applied, which is safe
because `apply` is deterministic and has no side effects.

Records (`semel.cluster.metadata.records`, schema `metadata_records.proto`): a command crosses
into pysyncobj as versioned protobuf bytes (encoded in `submit`, decoded in `apply` back into the
state machine's dataclass), and the full dump is a protobuf `MetadataSnapshot` written through
pysyncobj's `serializer`/`deserializer` hooks, so no Python class name is ever persisted. A record
this build cannot read stops the replica loudly (the constructor raises `MetadataRecordError`
for files on disk; an entry that arrives later fails `apply`, which pysyncobj retries each tick)
rather than being skipped. Files of older builds (pickled dataclasses) are converted when the
node opens its data dir (`legacy_pickle`: journal entries rewritten once, an old dump read).

Everything else here runs outside the replicated state:
  * `submit()` (asyncio) hands a command to pysyncobj with `callback=`; the callback fires on
    the tick thread and is moved to the caller's loop with `call_soon_threadsafe`. Leader
    changes are retried with the *same* `command_id` (the state machine deduplicates), so a
    retry never applies a command twice. A command that may have been appended but whose
    commit was not seen is reported as *unknown*, never as failed.
  * Listeners: at the end of every tick the shell compares the published image with the last
    one it reported and posts `(delta, image)` to each listener's loop. The tick thread never
    blocks on a listener.

pysyncobj traps handled (see docs/reference/dependencies.md): `appendEntriesUseBatch=False`,
fast elections (0.2-0.4 s, connectionTimeout 60 s), journal *and* full dump, `useFork=False`,
no locks or handles in the replicated consumer, nothing calls `sync=True`.
A pysyncobj bug fixed here: its follower deletes every entry after an AppendEntries' previous
index, even matching ones it has acknowledged (a committed entry can end on a minority). The
quorum handles the log part of AppendEntries itself with Raft's rule (delete only on a conflict,
`raft_append`); the import refuses any pysyncobj but the one this was written against.
Durability: pysyncobj never fsyncs; with `QuorumConfig.fsync` (the broker's `fsync: true`) the
journal is `raft_journal.DurableJournal` and nothing is acknowledged (follower) or counted
(leader) before it is on disk; see `raft_journal` for what is and is not covered.
Security: a voter binds exactly its raft address; `raft_secret` turns on pysyncobj's
encryption and authentication of every frame (`raft_secret`).
Read-only (observer) nodes: a node whose `raft_address` is None joins with `selfNode=None`; it
connects to every voter, receives the log, never votes, and can submit commands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pysyncobj.pickle as pysyncobj_pickle
import pysyncobj.version
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport
from semel import limits
from semel.cluster.metadata import legacy_pickle, raft_append, raft_journal, records
from semel.cluster.metadata.records import MetadataRecordError, RaftEntry, Snapshot
from semel.cluster.metadata.state import (
    Command,
    MetadataDelta,
    MetadataImage,
    MetadataStateMachine,
    Result,
    diff,
)
from semel.v1 import common_pb2 as pb

log = logging.getLogger(__name__)

# The shell below replaces pysyncobj's AppendEntries log handling (see `_SyncObj__onMessageReceived`)
# and reads its private fields; both are written against this exact release. Another version
# must not run with a fix that may no longer fit it (pyproject.toml pins the same version).
PYSYNCOBJ_VERSION = "0.3.17"
if pysyncobj.version.VERSION != PYSYNCOBJ_VERSION:
    raise ImportError(
        f"semel.cluster.metadata.quorum is written for pysyncobj {PYSYNCOBJ_VERSION} (it replaces its "
        f"AppendEntries log handling, Raft section 5.3), found {pysyncobj.version.VERSION}: re-check the fix "
        "against the new release before changing the pin")

SUBMIT_TIMEOUT_S_DEFAULT = limits.METADATA_SUBMIT_TIMEOUT_MS_DEFAULT / 1000
SUBMIT_RETRY_BACKOFF_S = 0.02


@dataclass(frozen=True, slots=True)
class VoterSpec:
    node_id: int
    raft_address: str  # "host:port"; pysyncobj's node identity
    rpc_address: str  # "host:port" where this node's controller RPCs are served


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    node_id: int
    raft_address: str | None  # None, or an address not among the voters: a read-only observer
    voters: tuple[VoterSpec, ...]
    data_dir: str | Path
    raft_min_timeout_s: float = 0.2
    raft_max_timeout_s: float = 0.4
    connection_timeout_s: float = 60.0
    connection_retry_s: float = 0.1  # pysyncobj default 5 s: a restarted peer would wait that long
    leader_fallback_timeout_s: float = 1.0  # a leader without a majority steps down after this
    append_entries_period_s: float = 0.05
    # pysyncobj checks its election deadline once per tick, and idle nodes tick in phase (the
    # last leader heartbeat woke them all): with the default 50 ms tick, two survivors often
    # become candidates in the same tick and split the vote (~1 in 5 failovers took another
    # 0.2-0.4 s round). A 10 ms tick makes that rare for ~1% CPU.
    tick_period_s: float = 0.01
    submit_timeout_s: float = SUBMIT_TIMEOUT_S_DEFAULT
    # How long a voter's resolved host name is trusted (pysyncobj: 600 s, failures 30 s). A voter
    # that comes back under the same name at a new address (a rescheduled Kubernetes pod, a
    # re-created VM) is dialled at its old address until then: 10 minutes without a quorum member
    # (tests/deploy/test_multi_host.py). Lookups happen only while a peer is disconnected, at most
    # one per peer per dns_cache_s, on pysyncobj's tick thread (a slow resolver delays its tick);
    # a failed lookup keeps the last address. dns_fail_cache_s matters for a name never resolved
    # yet: a pod whose DNS record appears a moment after its peers start.
    dns_cache_s: float = 5.0
    dns_fail_cache_s: float = 1.0
    log_compaction_min_entries: int = 5000
    log_compaction_min_time_s: int = 300
    # Fault injection (chaos/wiring.py): (voter raft address, address to connect to) pairs. A
    # peer keeps its raft address as its pysyncobj identity (announced, compared, matched), only
    # the TCP connect goes elsewhere (a proxy). Empty by default.
    raft_dial: tuple[tuple[str, str], ...] = ()
    # pysyncobj's `password` (`raft_secret.py`): every Raft frame encrypted and authenticated
    # (HMAC checked before unpickling). None: plain pickle, for loopback-only clusters; the
    # broker refuses a voter on another address without it. Never in repr (logs, tracebacks).
    raft_secret: bytes | None = field(default=None, repr=False)
    # The broker's `fsync: true`: the journal, term/vote and snapshots reach the disk before
    # this node acknowledges or counts them (`raft_journal`); False: pysyncobj as shipped
    # (survives kill -9, not a power loss of a majority).
    fsync: bool = False

    @property
    def is_voter(self) -> bool:
        return self.raft_address is not None and any(v.raft_address == self.raft_address for v in self.voters)


class MetadataSubmitError(Exception):
    """A command did not produce a result. `outcome_unknown`: it may still have committed."""

    def __init__(self, code: pb.ErrorCode, outcome_unknown: bool, message: str) -> None:
        super().__init__(f"{pb.ErrorCode.Name(code)} (outcome {'unknown' if outcome_unknown else 'not applied'}): {message}")
        self.code = code
        self.outcome_unknown = outcome_unknown


class _ReplicatedMetadata(SyncObjConsumer):
    """The replicated part: `machine` is what a snapshot holds (written by the quorum's
    serializer hooks, not by pysyncobj's pickling of this object)."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = MetadataStateMachine()

    # The one replicated method: pysyncobj numbers them in name order and writes the number into
    # every journal entry, so adding another would renumber this one.
    @replicated
    def apply(self, encoded_command: bytes) -> Result:
        # A record this build cannot read raises here, on purpose: the entry stays unapplied and
        # pysyncobj retries (and logs) it every tick. Skipping it would let this replica diverge
        # from the ones that applied it.
        command = records.decode_command(encoded_command)
        try:
            return self.machine.apply(command)
        except Exception:
            # A bug in a handler: it raised before publishing (images are swapped atomically), so
            # the state is unchanged on every replica alike. Failing the command keeps the log
            # moving; letting it escape would make pysyncobj retry the entry forever.
            log.exception("metadata command %r failed", command)
            return Result(pb.UNKNOWN_SERVER_ERROR)


DeltaListener = Callable[[MetadataDelta, MetadataImage], None]
LeadershipListener = Callable[[bool], None]

# Fail reasons after which the command can never be applied (not appended, or overwritten).
_NEVER_APPLIED = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL, FAIL_REASON.DISCARDED}
# Fail reasons worth retrying (same command_id) until the deadline.
_RETRIABLE = {
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED,
    FAIL_REASON.UNKNOWN_OUTCOME,
    FAIL_REASON.QUEUE_FULL,
}


class MetadataQuorum(SyncObj):
    """One node of the metadata Raft group (voter or observer), started in-process."""

    def __init__(self, config: QuorumConfig, *, transport: Transport | None = None, auto_tick: bool = True) -> None:
        """`transport` None: pysyncobj's TCP transport. Tests pass an in-memory one with
        `auto_tick=False` and drive `doTick` and message delivery themselves."""
        # Attributes set before SyncObj.__init__ are excluded from pysyncobj's own state (with
        # the serializer hooks below it pickles none of them anyway).
        self._config = config
        self._consumer = _ReplicatedMetadata()
        self._submits_in_flight = 0  # handed to pysyncobj, not answered yet (asyncio side only)
        self._listeners_lock = threading.Lock()
        self._listeners: list[tuple[DeltaListener, asyncio.AbstractEventLoop]] = []
        self._leadership_listeners: list[tuple[LeadershipListener, asyncio.AbstractEventLoop]] = []
        self._reported_image = self._consumer.machine.image
        self._closed = False
        self._voters_by_raft = {v.raft_address: v for v in config.voters}
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        journal_file, dump_file = data_paths(data_dir)
        if config.fsync:
            # Only under fsync can a torn tail be cut safely: no record is acknowledged before
            # its flush completed, so only records nobody counted can be torn.
            raft_journal.cut_torn_tail(journal_file, _command_readable)
        # Fail here, not on the tick thread (where pysyncobj would log a failed dump load and go
        # on with an empty state): every record on disk must be readable before we start.
        migrated = legacy_pickle.migrate_journal(journal_file)
        if migrated:
            log.warning("metadata journal %s: %d pickled entries rewritten as protobuf records", journal_file, migrated)
        if Path(dump_file).exists():
            read_snapshot_file(dump_file)
        conf = SyncObjConf(
            appendEntriesUseBatch=False,
            raftMinTimeout=config.raft_min_timeout_s,
            raftMaxTimeout=config.raft_max_timeout_s,
            connectionTimeout=config.connection_timeout_s,
            connectionRetryTime=config.connection_retry_s,
            leaderFallbackTimeout=config.leader_fallback_timeout_s,
            appendEntriesPeriod=config.append_entries_period_s,
            autoTickPeriod=config.tick_period_s,
            dnsCacheTime=config.dns_cache_s,
            dnsFailCacheTime=config.dns_fail_cache_s,
            journalFile=journal_file,
            fullDumpFile=dump_file,
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            useFork=False,
            autoTick=auto_tick,
            commandsWaitLeader=False,
            dynamicMembershipChange=False,  # also assumed by `_SyncObj__onMessageReceived` below
            logCompactionMinEntries=config.log_compaction_min_entries,
            logCompactionMinTime=config.log_compaction_min_time_s,
            onStateChanged=self._on_state_changed,
            # Listen on exactly the voter's own address: without bindAddress pysyncobj binds
            # 0.0.0.0 (every interface) whatever host selfNode names.
            bindAddress=config.raft_address if config.is_voter else None,
            password=config.raft_secret,
        )
        self_node = config.raft_address if config.is_voter else None
        dial = dict(config.raft_dial)
        others = [_DialedNode(v.raft_address, dial[v.raft_address]) if v.raft_address in dial else v.raft_address
                  for v in config.voters if v.raft_address != self_node]
        self._refused_conflict: raft_append.ConflictBelowApplied | None = None  # last one logged
        # fsync mode: AppendEntries answers (node, next index) and the commit index that wait
        # for the next journal sync (`_send_synced_answers`); tick thread only.
        self._synced_answers: list[tuple[object, int]] = []
        self._commit_after_sync = 0
        with raft_journal.durable_journals(config.fsync):
            super().__init__(self_node, others, conf=conf, consumers=[self._consumer], transport=transport)
        self.addOnTickCallback(self._after_tick)

    # -- reads (any thread) --

    def image(self) -> MetadataImage:
        """The local replica's current image (immutable; keep the reference)."""
        return self._consumer.machine.image

    def last_applied(self) -> int:
        return self._consumer.machine.last_applied

    def is_leader(self) -> bool:
        return self._isLeader()

    def raft_term(self) -> int:
        return self.raftCurrentTerm

    def raft_commit_index(self) -> int:
        return self.raftCommitIndex

    def raft_last_applied(self) -> int:
        """The Raft log index applied last (`last_applied` counts commands, not log entries)."""
        return self.raftLastApplied

    def is_ready(self) -> bool:
        """This node has applied everything the leader had committed when it first heard it."""
        return self.isReady()

    def has_quorum(self) -> bool:
        return self.hasQuorum

    def uncommitted_entries(self) -> int:
        """Entries in this node's Raft log past the commit index (pysyncobj 0.3.17 keeps the log
        index private; the pin in pyproject.toml and tests/cluster/test_quorum_inprocess.py guard it).

        Called on the event loop while pysyncobj's tick thread may be compacting the log, which
        (without the fsync path's write-and-rename compaction) empties it for a moment: then the
        last index cannot be read, and 0 is answered; `submit`'s bound also counts its own
        submits in flight, and the next check reads the real value."""
        try:
            last_index = self._SyncObj__getCurrentLogIndex()
        except IndexError:  # the log list is being rewritten by the tick thread
            return 0
        return max(0, last_index - self.raftCommitIndex)

    def leader_raft_address(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else leader.address

    def active_controller(self) -> VoterSpec | None:
        address = self.leader_raft_address()
        return None if address is None else self._voters_by_raft.get(address)

    def is_peer_connected(self, raft_address: str) -> bool:
        if raft_address == self._config.raft_address:
            return True
        for node in self.otherNodes:
            if node.address == raft_address:
                return self.isNodeConnected(node)
        return False

    @property
    def config(self) -> QuorumConfig:
        return self._config

    # -- snapshots (pysyncobj's serializer hooks; tick thread) --

    def _write_snapshot(self, file_name: str, data: tuple) -> None:
        """pysyncobj compacts its log: `data` is (last applied entry, the one before, node set),
        and the state machine is exactly at that last entry (the tick thread applies entries)."""
        last, previous, cluster = data
        snapshot = Snapshot(
            machine=self._consumer.machine,
            last_entry=RaftEntry(*last),
            previous_entry=RaftEntry(*previous),
            cluster_addresses=tuple(sorted(node.address for node in cluster if node is not None)),
        )
        try:
            with open(file_name, "wb") as f:
                f.write(records.encode_snapshot(snapshot))
                if self._config.fsync:  # before pysyncobj renames it and compacts the journal
                    f.flush()
                    os.fsync(f.fileno())
        except Exception:
            log.exception("metadata snapshot not written (pysyncobj keeps the log and retries later)")
            raise

    def _read_snapshot(self, file_name: str) -> tuple:
        """pysyncobj loads a full dump (at start, or one sent by the leader): restore the
        machine and hand back pysyncobj's part."""
        if self._config.fsync:
            # One sent by the leader was written and renamed by pysyncobj without fsync: make it
            # durable before pysyncobj clears the journal and acknowledges it.
            raft_journal.fsync_file(file_name)
            raft_journal.fsync_dir(os.path.dirname(file_name) or ".")
        try:
            snapshot = read_snapshot_file(file_name)
        except MetadataRecordError:
            # At start the constructor has already refused such a file; here it came from the
            # leader. pysyncobj only logs a failed load, and the leader sends it again: this
            # replica cannot catch up (nor apply anything wrong) until a build that reads it runs.
            log.critical("metadata snapshot %s unreadable: this replica cannot catch up", file_name, exc_info=True)
            raise
        self._consumer.machine = snapshot.machine
        last, previous = snapshot.last_entry, snapshot.previous_entry
        return (last.command, last.index, last.term), (previous.command, previous.index, previous.term), \
            set(snapshot.cluster_addresses)

    # -- Raft AppendEntries, follower side (tick thread) --

    def _SyncObj__onMessageReceived(self, node: object, message: dict) -> None:
        """Every message from a peer (pysyncobj's transport calls this name). An AppendEntries
        that carries log entries (or an empty heartbeat at an index) gets its log part done here,
        by Raft's rule (`raft_append`); everything else, including the leader, term and election
        timer bookkeeping of that same message, stays pysyncobj's."""
        handle = SyncObj._SyncObj__onMessageReceived
        if (message.get("type") != "append_entries" or message["term"] < self.raftCurrentTerm
                or "prevLogIdx" not in message or message.get("transmission") not in (None, "finish")):
            # Votes, commands, snapshots, stale terms, the first chunks of a large entry: unchanged.
            handle(self, node, message)
            return
        if message.get("transmission") == "finish":  # the last chunk of one large entry
            data = self._SyncObj__recvTransmission + message["data"]
            self._SyncObj__recvTransmission: str = ""  # pysyncobj's reset value
            entries = [pysyncobj_pickle.loads(data)]
        else:
            entries = message.get("entries", [])
        # pysyncobj does the bookkeeping of any message from a current leader (election timer,
        # leader, term, follower state) on the message without its log part. Its commit rule
        # (min(leader commit, *last log index*)) would commit entries this message does not
        # vouch for once matching ones are kept, so it gets our own commit index here.
        handle(self, node, {"type": "append_entries", "term": message["term"], "commit_index": self.raftCommitIndex})
        self._SyncObj__leaderCommitIndex = message["commit_index"]
        prev_index, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        from_prev = self._SyncObj__getEntries(prev_index)
        send_next_index = self._SyncObj__sendNextNodeIdx
        # Rule 2, as pysyncobj answers it (the leader rewinds its next index for this node).
        if not from_prev or from_prev[0][2] != prev_term:
            self._send_synced_answers()  # answers leave in the order of the messages
            if not from_prev:
                send_next_index(node, success=False, reset=True)
            else:
                send_next_index(node, nextNodeIdx=prev_index, success=False, reset=True)
            return
        applied_index = max(self.raftCommitIndex, self.raftLastApplied)
        decision = raft_append.plan_append(prev_index, from_prev[1:], entries, applied_index)
        if isinstance(decision, raft_append.ConflictBelowApplied):
            # Cannot happen while Raft's guarantees hold; if it does, this replica applied
            # something the leader does not have. Stop here (no answer: the leader neither counts
            # nor rewinds it) rather than diverge silently, as with an unreadable record.
            if decision != self._refused_conflict:
                log.critical("metadata Raft: the leader's entry %d (term %d) conflicts with an applied one "
                             "(term %d, applied up to %d); refusing it, this replica cannot follow",
                             decision.index, decision.leader_term, decision.local_term, decision.applied_index)
                self._refused_conflict = decision
            return
        raft_log = self._SyncObj__raftLog
        if decision.truncate_from_index is not None:
            self._SyncObj__deleteEntriesFrom(decision.truncate_from_index)
        for entry in decision.append:
            raft_log.add(*entry)
        commit_index = raft_append.commit_index_after(self.raftCommitIndex, message["commit_index"],
                                                      decision.match_index)
        if self._config.fsync:
            # What this answer acknowledges must be on disk first: the answer (and the commit
            # index) wait for one sync after every message of this poll (`_send_synced_answers`).
            self._synced_answers.append((node, decision.match_index + 1))
            self._commit_after_sync = max(self._commit_after_sync, commit_index)
            return
        send_next_index(node, nextNodeIdx=decision.match_index + 1, success=True)
        if commit_index != self.raftCommitIndex:
            self._SyncObj__raftCommitIndex = commit_index
            raft_log.setRaftCommitIndex(commit_index)

    def _send_synced_answers(self) -> None:
        """fsync mode, tick thread: one journal sync, then the success answers and the commit
        index of every AppendEntries handled since the last call (a poll's worth)."""
        if not self._synced_answers and self._commit_after_sync <= self.raftCommitIndex:
            return
        raft_log = self._SyncObj__raftLog
        raft_log.sync()
        answers, self._synced_answers = self._synced_answers, []
        for node, next_index in answers:
            self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=next_index, success=True)
        if self._commit_after_sync > self.raftCommitIndex:
            self._SyncObj__raftCommitIndex = self._commit_after_sync
            raft_log.setRaftCommitIndex(self._commit_after_sync)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N803 (pysyncobj's name)
        """pysyncobj's tick ends with a poll that delivers messages; answers those wait for
        (fsync mode) are sent first thing in the next tick, which follows at once."""
        if self._config.fsync:
            self._send_synced_answers()
        SyncObj._onTick(self, timeToWait)

    # -- listeners --

    def add_listener(self, callback: DeltaListener, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`callback(delta, image)` runs on `loop` (default: the running loop) after changes.

        A listener added after the node has applied something first gets one delta from the
        empty image to the last reported one, so it never misses state; deltas then follow in
        order (each image is newer than the previous one).
        """
        loop = loop or asyncio.get_running_loop()
        with self._listeners_lock:
            self._listeners.append((callback, loop))
            reported = self._reported_image
            if reported.version > 0:
                _post(loop, callback, diff(MetadataImage(), reported), reported)

    def add_leadership_listener(
        self, callback: LeadershipListener, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        with self._listeners_lock:
            self._leadership_listeners.append((callback, loop or asyncio.get_running_loop()))

    def _after_tick(self) -> None:  # tick thread: never blocks (posting is non-blocking)
        image = self._consumer.machine.image
        if image is self._reported_image:
            return
        with self._listeners_lock:
            delta = diff(self._reported_image, image)
            self._reported_image = image
            if delta.empty:
                return
            for callback, loop in self._listeners:
                _post(loop, callback, delta, image)

    def _on_state_changed(self, old_state: int, new_state: int) -> None:  # tick thread
        became = new_state == 2  # pysyncobj _RAFT_STATE.LEADER
        was = old_state == 2
        if became == was:
            return
        with self._listeners_lock:
            listeners = list(self._leadership_listeners)
        for callback, loop in listeners:
            _post(loop, callback, became)

    # -- writes --

    async def submit(self, command: Command, timeout_s: float | None = None) -> Result:
        """Commit `command` and return its `Result`, or raise `MetadataSubmitError`."""
        if self._closed:
            raise MetadataSubmitError(pb.METADATA_QUORUM_UNAVAILABLE, False, "quorum node closed")
        if not command.command_id:
            command = replace(command, command_id=uuid.uuid4().hex)
        encoded = records.encode_command(command)
        if len(encoded) > limits.MAX_METADATA_COMMAND_BYTES:
            # Never appended: pysyncobj sends an entry of its batch size (64 KiB) or more in chunks
            # and marks the wrong one as the last, so followers failed to decode it and the
            # quorum stopped replicating (found by the gRPC fuzzer: a 10001-replica reassignment).
            raise MetadataSubmitError(pb.INVALID_REQUEST, False, f"{type(command).__name__} encodes to {len(encoded)} "
                                      f"bytes, above {limits.MAX_METADATA_COMMAND_BYTES} (semel.limits)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._config.submit_timeout_s if timeout_s is None else timeout_s)
        maybe_appended = False
        last_reason = FAIL_REASON.MISSING_LEADER
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not self.has_quorum():
                # Not connected to a majority: nothing sent can commit; wait for links instead of
                # sending into the void, so that a failure here is certain (nothing appended).
                last_reason = FAIL_REASON.MISSING_LEADER
                await asyncio.sleep(min(SUBMIT_RETRY_BACKOFF_S, remaining))
                continue
            if self.is_leader() and max(self.uncommitted_entries(),
                                        self._submits_in_flight) >= limits.MAX_UNCOMMITTED_METADATA_ENTRIES:
                # Connected but not committing (peers silent or slow): do not grow a suffix that a
                # new leader must walk back entry by entry; wait, nothing appended. (Our own submits
                # count until answered: pysyncobj appends them on its next tick, not here.)
                last_reason = FAIL_REASON.QUEUE_FULL
                await asyncio.sleep(min(SUBMIT_RETRY_BACKOFF_S, remaining))
                continue
            future: asyncio.Future[tuple[object, int]] = loop.create_future()

            def on_done(result: object, error: int, future: asyncio.Future = future) -> None:
                _post(loop, _resolve, future, (result, error))

            self._consumer.apply(encoded, callback=on_done)
            self._submits_in_flight += 1
            try:
                result, reason = await asyncio.wait_for(asyncio.shield(future), remaining)
            except asyncio.TimeoutError:
                maybe_appended = True
                break
            finally:
                self._submits_in_flight -= 1
            if reason == FAIL_REASON.SUCCESS:
                return invariant_result(result)
            last_reason = reason
            if reason not in _NEVER_APPLIED:
                maybe_appended = True
            if reason not in _RETRIABLE:
                raise MetadataSubmitError(pb.INVALID_REQUEST, maybe_appended, f"pysyncobj fail reason {reason}")
            await asyncio.sleep(min(SUBMIT_RETRY_BACKOFF_S, max(0.0, deadline - loop.time())))
        code = pb.REQUEST_TIMED_OUT if self.has_quorum() and self._getLeader() is not None else pb.METADATA_QUORUM_UNAVAILABLE
        raise MetadataSubmitError(code, maybe_appended, f"no commit within the timeout (last fail reason {last_reason})")

    def close(self, wait: bool = False) -> None:
        """Stop the tick thread and close sockets and the journal. `wait`: join the tick thread
        (it exits at its next tick, within `tick_period_s`); never from the tick thread."""
        if not self._closed:
            self._closed = True
            if wait:
                self.destroy_synchronous()
            else:
                self.destroy()


class _DialedNode(TCPNode):
    """A Raft peer identified by its own address but reached through another (a fault proxy).

    pysyncobj identifies a node by `address` (the node with the greater address opens the one
    connection between two nodes and announces its own address on it); it connects to
    `node.ip:node.port`. Only those two change here."""

    def __init__(self, address: str, dial_address: str) -> None:
        super().__init__(address)
        host, port = dial_address.rsplit(":", 1)
        self._dial_host = host
        self._dial_port = int(port)

    @property
    def ip(self) -> str:
        return self._dial_host

    @property
    def port(self) -> int:
        return self._dial_port


def invariant_result(result: object) -> Result:
    if not isinstance(result, Result):
        raise AssertionError(f"replicated apply returned {result!r}")
    return result


def _resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: its owner is gone
        pass


def _command_readable(command: bytes) -> bool:
    """A journal entry this build can read (the torn-tail check of the last record)."""
    try:
        legacy_pickle.convert_entry(command)
    except Exception:  # torn bytes fail in any of unpickling, protobuf or our checks
        return False
    return True


def data_paths(data_dir: str | Path) -> tuple[str, str]:
    """(journal, full dump) file names inside a quorum data dir."""
    base = Path(data_dir)
    return str(base / "metadata.journal"), str(base / "metadata.dump")


def read_snapshot_file(file_name: str | Path) -> Snapshot:
    """A full dump in either form: a protobuf snapshot, or an older build's gzip pickle."""
    data = Path(file_name).read_bytes()
    if legacy_pickle.is_legacy_dump(data):
        return legacy_pickle.load_legacy_dump(data)
    return records.decode_snapshot(data)


__all__ = [
    "MetadataQuorum",
    "MetadataRecordError",
    "MetadataSubmitError",
    "QuorumConfig",
    "VoterSpec",
    "data_paths",
]
