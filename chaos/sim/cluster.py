"""Deterministic whole-cluster simulation: several brokers' real pure cores on a simulated
network and clock, with seeded loss, duplication, reordering, delay, partitions, crashes,
restarts, power losses, clean stops and controller failovers.

What runs for real (Semel's own code, not a model of it):
  * `MetadataStateMachine` (cluster/metadata/state.py): every metadata command is applied by it;
    `check_invariants` runs after every command.
  * `ControllerCore` (cluster/metadata/controller.py): liveness (heartbeats, session timeout),
    fencing, unfencing, leaderless repairs and preferred-leader elections.
  * `LeaderProgress` / `PendingAcks` / `ack_outcome_after_hw` (cluster/broker/replica_state.py):
    HW, ISR shrink/expand decisions, acks=all completion.
  * `ProducerStateManager` (storage/producer_state.py): idempotent dedup and sequence checks,
    rebuilt from the log after truncation and restart.
  * the leader-epoch cache arithmetic (storage/epoch_cache.py) for KIP-101/320 truncation.
With transactions (`txn_producers` > 0):
  * `TxnCoordinator` (coordinator/txn_coordinator.py) with its `TransactionStateMachine`
    (txn_state.py) and `TxnMarkerChannel` (txn_markers.py): every request, state write outcome,
    tick (timeouts), load, unload and marker answer goes through them; `authoritative_results`
    on marker answers;
  * the state records are the real `txn_log.encode_records` batches, replicated in the topic's
    last partition like any other, and a new coordinator loads them with `txn_log.decode_records`;
  * `ProducerStateManager` transaction tracking (open transactions, `validate_marker`, markers
    closing them, KIP-890 epoch fencing), the `AbortedTxnIndex`, and the read path of
    storage/isolation.py (`read_bound`, `visible_to_read_committed`).

What is modelled (thin shells, mirroring the asyncio/gRPC code):
  * the metadata quorum is a linearizable stand-in: one `MetadataStateMachine` reached over the
    simulated network as node "Q" (pysyncobj cannot be driven deterministically: it owns its
    threads, sockets and timers);
  * the log is an in-memory model (one record per batch, offset = index): the storage engine
    (storage/log.py + RocksDB via rocksdict) has no injectable file layer. It has a synced
    prefix, moved as storage/log.py moves it (`fsync_due`, the real policy function: "interval"
    starts a background sync at an append when `flush_interval_ms` passed, "always" syncs every
    append; open and close sync everything; a truncation is durable at once, or with
    `strict_truncation` at the next sync, as the real one is). A crash is kill -9:
    the log survives, memory (leader progress, pending acks, producer state, fetch sessions) does
    not; the HW comes back from a checkpoint that lags. A power loss also cuts the log to its
    synced prefix, and the restarted broker registers with `lost_unsynced_writes` exactly when
    the real one would (storage/boot_record.py: the record keeps "loss pending" until a
    registration carrying the flag succeeded);
  * a clean stop is process.py's controlled shutdown (wait for sole leaderships to gain an ISR
    member, FenceBroker itself through the quorum, wait to see it, close the logs = sync);
  * the follower fetch loop (replication.py) and the leader's fetch answer incl. divergence;
  * the producer: idempotent, acks=all, one request in flight, retries with the same sequence;
  * transactions: txn_coordinator_shell.py (role listener: begin_loading at election, load once
    the HW reached the LEO at election, unload on leadership loss; `AppendRecords` as a leader
    append at the coordinator epoch with acks=all, `write_timed_out` after the request timeout;
    `MarkerSend` as a WriteTxnMarkers message) and txn_service.py's WriteTxnMarkers (refusals of
    `marker_refusal` in outline, leader and acks=all checks, the real `validate_marker`, the
    append, the answer once the HW passed every marker of the request); the LSO is
    replica_manager.py's `Partition.last_stable_offset` and the abort bookkeeping
    storage/partition.py's `_record_abort`, both copied (three lines each); producer ids come
    from a sim-wide counter (the quorum's AllocateProducerIds: unique, never reused); the
    transactional client (V2, gRPC: init, add, produce one record at a time, end; a fatal answer
    or a client restart re-initialises, which fences). Not modelled: KIP-890 verification
    (VerificationCache: V2 clients need it less, each end bumps the epoch), V1 (Kafka listener)
    clients, AddOffsetsToTxn / TxnOffsetCommit, the stale-coordinator quorum read.
The ELR (KIP-966) reaches the simulated leader's `LeaderProgress` as replica_manager.py feeds it.
Not covered: consumer groups, the Kafka listener, retention,
reassignment, Raft itself (a controller failover is modelled as ControllerCore losing and regaining
leadership over the same linearizable image).

Everything random comes from one `random.Random(seed)`; every processed event is folded into a
SHA-256 trace hash, so a seed replays exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import random
from collections.abc import Callable, Iterator
from typing import Any, cast

from semel import limits
from semel.cluster.broker.replica_state import LeaderProgress, PendingAcks, ack_outcome_after_hw
from semel.cluster.metadata.controller import ControllerConfig, ControllerCore
from semel.cluster.metadata import state as md_state
from semel.cluster.metadata.state import (
    NO_LEADER,
    AlterPartition,
    Command,
    CreateTopic,
    FenceBroker,
    MetadataImage,
    MetadataStateMachine,
    RegisterBroker,
    check_invariants,
)
from semel.coordinator import txn_log
from semel.coordinator.txn_coordinator import AppendRecords, PartitionFenced, Reply, TxnCoordinator
from semel.coordinator.txn_markers import MarkerSend, authoritative_results
from semel.coordinator.txn_state import PREPARED, TxnConfig
from semel.storage import epoch_cache as ec
from semel.storage import isolation
from semel.storage.aborted_txns import AbortedTxn, AbortedTxnIndex
from semel.storage.batch import ATTR_CONTROL, ATTR_TRANSACTIONAL, BatchHeader, Marker
from semel.storage.log_policy import fsync_due
from semel.storage.producer_state import Outcome, ProducerStateManager
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2 as pb
from semel.v1.common_pb2 import ErrorCode

QUORUM = -1  # the metadata quorum's node id on the simulated network
TOPIC = "sim"


@dataclasses.dataclass(frozen=True)
class SimConfig:
    brokers: int = 3
    partitions: int = 2
    producers: int = 3
    steps: int = 3000  # events processed with faults on, then a heal phase
    heal_ms: int = 5_000
    loss_percent: int = 3
    duplicate_percent: int = 1
    max_delay_ms: int = 40
    fault_interval_ms: int = 1500
    lag_time_max_ms: int = 1000
    request_timeout_ms: int = 800
    # Power loss and clean stops (docs/chaos.md, "Deterministic simulation"): the log's durable
    # prefix moves as `storage/log.py` moves it, by policy "interval" (`fsync: false`, the
    # default) or "always" (`fsync: true`).
    power_faults: bool = True
    fsync: bool = False
    flush_interval_ms: int = limits.FLUSH_INTERVAL_MS_DEFAULT
    controlled_shutdown_wait_ms: int = limits.CONTROLLED_SHUTDOWN_WAIT_MS_DEFAULT
    # a truncation durable only at the next sync, as PartitionLog.truncate_to was before it
    # fsynced the cut (kept to show the system survives even that)
    strict_truncation: bool = False
    # seams to prove the checker can fail: a leader whose HW ignores the followers; no eligible
    # leader replicas (KIP-966); a quorum that ignores `RegisterBroker.lost_unsynced_writes`
    bug_hw_without_acks: bool = False
    bug_no_elr: bool = False
    bug_ignore_lost_unsynced_writes: bool = False
    # the boot record before simulation seed 509's fix: a start rewrote it, so a process killed
    # before its registration committed forgot that its machine had restarted
    bug_boot_record_consumed_at_start: bool = False
    # Transactions (docs/chaos.md, "Deterministic simulation"): `txn_producers` transactional
    # clients; the topic then has one more partition, the transaction-state partition the
    # coordinator writes (0: off, the run is exactly the one without transactions)
    txn_producers: int = 0
    txn_timeout_ms: int = 3000  # scaled down with the run (the default is 60 s)
    txn_abort_scan_ms: int = 1000  # scaled down likewise (limits: 10 s)
    commit_percent: int = 75
    # seams to prove the transaction checker can fail: a leader whose LSO ignores open
    # transactions (read_committed reads up to the HW); a partition leader that answers a COMMIT
    # marker for the last data partition without writing it
    bug_lso_ignores_open_txns: bool = False
    bug_marker_skips_partition: bool = False


NO_CONTROL, COMMIT, ABORT = 0, 1, 2


@dataclasses.dataclass(slots=True)
class Record:
    offset: int
    epoch: int
    producer_id: int
    seq: int
    value: int
    producer_epoch: int = 0
    txn: bool = False  # a transactional data record
    control: int = NO_CONTROL  # COMMIT / ABORT: a marker
    coordinator_epoch: int = -1  # markers only
    batch: bytes | None = None  # the transaction-state partition: txn_log.encode_records' batch


class Replica:
    """One partition on one broker: the log + epoch cache, and volatile state.

    `log[:flushed]` is what a power loss keeps (synced by the flush policy); the rest is in the
    page cache, which a process crash keeps and a power loss drops. A truncation is durable at
    once (`storage/log.py` persists the cut before it returns)."""

    def __init__(self) -> None:
        self.log: list[Record] = []
        self.flushed = 0
        # strict mode: a truncation becomes durable only at the next sync; until then a power
        # loss brings back `unsynced_cut` (the records once synced at offsets >= the cut)
        self.unsynced_cut: list[Record] = []
        self.last_fsync_ms = 0  # storage/log.py `_last_fsync_ms`: when the policy last synced
        self.epochs: ec.Entries = ()
        self.hw = 0
        self.hw_checkpoint = 0
        self.leader_epoch = -1  # as last learned from metadata
        self.leader = NO_LEADER
        self.progress: LeaderProgress | None = None
        self.acks: PendingAcks[tuple[Any, ...]] = PendingAcks(1000)
        self.pstate = ProducerStateManager()
        self.aborted = AbortedTxnIndex()

    @property
    def leo(self) -> int:
        return len(self.log)

    def append(self, rec: Record) -> None:
        self.epochs = ec.assign(self.epochs, rec.epoch, rec.offset)
        self.log.append(rec)
        self._apply(rec)

    def _apply(self, rec: Record) -> None:
        """storage/partition.py `_apply` + `_record_abort`: the producer state learns the batch;
        a marker that closed an aborted transaction adds it to the aborted index with the LSO."""
        marker = Marker(rec.control == COMMIT, rec.coordinator_epoch) if rec.control else None
        done = self.pstate.apply(_header(rec), marker)
        if done is not None and done.aborted:
            unstable = self.pstate.first_unstable_offset()
            lso = unstable if unstable is not None else done.last_offset + 1
            self.aborted.add(AbortedTxn(done.producer_id, done.first_offset, done.last_offset, lso))

    def truncate_to(self, offset: int, durable: bool = True) -> None:
        offset = max(0, min(offset, self.leo))
        if not durable and offset < self.flushed:  # the synced records past the cut stay on disk
            self.unsynced_cut = [dataclasses.replace(r) for r in self.log[offset:self.flushed]] + self.unsynced_cut
        del self.log[offset:]
        self.flushed = min(self.flushed, offset)
        self.epochs = ec.truncate_from_end(self.epochs, offset)
        self.hw = min(self.hw, offset)
        self.rebuild_producer_state()

    def lose_unsynced(self) -> int:
        """A power loss: the log is its synced prefix, recovered as `storage/log.py` opens it (epoch
        entries past the LEO dropped, one at the LEO kept). Returns how many records were lost."""
        lost = self.leo - self.flushed
        del self.log[self.flushed:]
        self.log.extend(self.unsynced_cut)
        self.unsynced_cut = []
        self.flushed = self.leo
        self.epochs = ec.truncate_from_end(self.epochs, self.leo + 1)
        for rec in self.log:  # PartitionLog.open: scanned batches of a later epoch extend the cache
            if not self.epochs or rec.epoch > self.epochs[-1].epoch:
                self.epochs = ec.assign(self.epochs, rec.epoch, rec.offset)
        return lost

    def synced(self) -> None:
        self.flushed = self.leo
        self.unsynced_cut = []

    def rebuild_producer_state(self) -> None:
        """Producer state and aborted index as the log's recovery leaves them: equal to a replay
        of the log (storage/partition.py: snapshot + replay, the index truncated to the LEO and
        refilled from the replayed markers; snapshots are stored only after the log and index
        are synced, so a power loss cannot leave an abort out)."""
        self.pstate = ProducerStateManager()
        self.aborted = AbortedTxnIndex()
        for rec in self.log:
            self._apply(rec)

    def last_stable_offset(self, bug_ignore_open: bool = False) -> int:
        """replica_manager.py `Partition.last_stable_offset`."""
        fuo = None if bug_ignore_open else self.pstate.first_unstable_offset()
        return self.hw if fuo is None else min(fuo, self.hw)

    def read_committed(self, bug_ignore_open: bool = False) -> tuple[int, list[Record]]:
        """What a read_committed fetch from offset 0 returns (server.py's fetch path): up to the
        LSO (`isolation.read_bound`), markers and aborted transactions' batches dropped
        (`isolation.visible_to_read_committed` over the aborted index's `in_range`)."""
        end = isolation.read_bound(True, self.hw, self.last_stable_offset(bug_ignore_open))
        if end <= 0:
            return 0, []
        batches = [(_header(r), r) for r in self.log[:end]]
        visible = isolation.visible_to_read_committed(batches, self.aborted.in_range(0, end))
        return end, [r for _, r in visible]


def _trace_arg(arg: object) -> str:
    """A short, deterministic rendering of an event argument for the trace hash (a full repr
    of a metadata image or a record list per event would dominate the run time)."""
    if isinstance(arg, MetadataImage):
        return f"v{arg.version}"
    if isinstance(arg, list):
        return f"[{arg[0].offset}+{len(arg)}]" if arg else "[]"
    if isinstance(arg, MarkerSend):
        return f"markers#{arg.request_id}->{arg.broker_id}x{len(arg.markers)}"
    return repr(arg)


def _header(rec: Record) -> BatchHeader:
    attributes = (ATTR_CONTROL | ATTR_TRANSACTIONAL) if rec.control else (ATTR_TRANSACTIONAL if rec.txn else 0)
    return BatchHeader(rec.offset, 0, rec.epoch, rec.producer_id, rec.producer_epoch, rec.seq, 1, attributes, 0, 0)


class Broker:
    def __init__(self, broker_id: int) -> None:
        self.id = broker_id
        self.alive = True
        self.incarnation = 0
        # storage/boot_record.py: the machine's boot count, and the one recorded in the data dir
        # at the broker's last start (None: a fresh data dir)
        self.boot = 0
        self.boot_recorded: int | None = None
        self.loss_pending = False  # boot_record's `loss_pending`: durable, unlike the flag below
        # process.py: sent with RegisterBroker until a registration succeeds (in memory only)
        self.lost_unsynced_writes = False
        self.power_lost = False  # lost power and not yet recovered (`_power_loss_fault`)
        self.registered_since_cut = False
        # controlled shutdown (process.py `_controlled_shutdown`): when it began, and whether
        # FenceBroker was sent; None = not stopping
        self.stopping_since_ms: int | None = None
        self.fence_sent = False
        self.broker_epoch = -1
        self.active = False  # registered and unfenced at its own epoch (replica_manager.active)
        self.image = MetadataImage()
        self.replicas: dict[int, Replica] = {}
        self.max_epoch_seen: dict[int, int] = {}
        # the transaction coordinator (txn_coordinator_shell.py): the real pure core, in memory
        # only; the leader epoch of the state partition it serves or loads (-1: none) and the
        # LEO at election its HW must reach before the load (-1: not waiting)
        self.txn: TxnCoordinator | None = None
        self.txn_epoch = -1
        self.txn_load_target = -1
        self.txn_requests: dict[int, tuple[int, int]] = {}  # request id -> (client, attempt)


@dataclasses.dataclass(slots=True)
class TxnClient:
    """A transactional gRPC client (V2: every EndTxn bumps the epoch): InitProducerId, then
    transactions of AddPartitionsToTxn, transactional acks=all produces (one in flight, retried
    with the same sequence), EndTxn; a fatal answer abandons the transaction and re-initialises
    (which fences and aborts it)."""

    transactional_id: str
    next_value: int
    producer_id: int = -1
    producer_epoch: int = -1
    phase: str = "init"  # init | add | produce | end | done
    partitions: tuple[int, ...] = ()
    plan: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (partition, value)
    next_record: int = 0
    seqs: dict[int, int] = dataclasses.field(default_factory=dict)
    commit: bool = True
    attempt: int = 0


# answers a client retries with the same request; anything else abandons the transaction
_TXN_RETRIABLE = frozenset({
    pb.NOT_COORDINATOR, pb.COORDINATOR_LOAD_IN_PROGRESS, pb.COORDINATOR_NOT_AVAILABLE, pb.CONCURRENT_TRANSACTIONS,
    pb.REQUEST_TIMED_OUT, pb.NOT_LEADER_OR_FOLLOWER, pb.NOT_ENOUGH_REPLICAS, pb.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    pb.UNKNOWN_LEADER_EPOCH, pb.FENCED_LEADER_EPOCH, pb.UNKNOWN_TOPIC_OR_PARTITION})


@dataclasses.dataclass(slots=True)
class Producer:
    producer_id: int
    partition: int
    next_value: int
    seq: int = 0
    in_flight: int | None = None  # value being sent
    attempt: int = 0
    leader_hint: int = NO_LEADER


class Violation(AssertionError):
    pass


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.now_ms = 0
        self._queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self._seq = 0
        self._hash = hashlib.sha256()
        self.events = 0
        self.faults_on = True
        self.cut: set[frozenset[int]] = set()  # links cut both ways
        self.md = MetadataStateMachine()
        self.ctl = ControllerCore(ControllerConfig(
            session_timeout_ms=3000, heartbeat_interval_ms=500, disconnect_grace_ms=1000, tick_interval_ms=200,
            internal_partitions={}, preferred_leader_rebalance_ms=5000))
        self.brokers = {b: Broker(b) for b in range(self.cfg.brokers)}
        self.producers = [Producer(1000 + k, k % self.cfg.partitions, (k + 1) * 1_000_000)
                          for k in range(self.cfg.producers)]
        # transactions: the state partition is the topic's last partition (None: no transactions)
        self.txn_on = self.cfg.txn_producers > 0
        self.sp: int | None = self.cfg.partitions if self.txn_on else None
        self.topic_partitions = self.cfg.partitions + (1 if self.txn_on else 0)
        self.txn_clients = [TxnClient(f"tx-{j}", (j + 1) * 100_000_000) for j in range(self.cfg.txn_producers)]
        self._next_producer_id = 5000  # AllocateProducerIds through the quorum: never reused
        self._request_ids = 0
        self._control_value = 0  # markers and state records get unique negative values
        self.txn_of_value: dict[int, tuple[int, int]] = {}  # value -> (producer id, epoch) it was sent with
        self.txn_acked: dict[int, tuple[int, int]] = {}  # value -> (partition, offset): produce answered NONE
        self.decisions: dict[tuple[int, int], bool] = {}  # committed Prepare* records: identity -> commit
        self.client_commits: set[tuple[int, int]] = set()  # EndTxn(commit) answered NONE
        self.txn_stats = {"commits": 0, "aborts": 0, "abandoned": 0, "markers": 0, "rc_reads": 0}
        # history and checker state
        self.acked: dict[int, dict[int, int]] = {p: {} for p in range(self.cfg.partitions)}  # value -> offset
        self.sent: set[int] = set()
        self.committed: dict[int, list[int]] = {p: [] for p in range(self.topic_partitions)}  # values of HW prefix
        self.hw_seen: dict[tuple[int, int, int], int] = {}  # (partition, broker, leader epoch) -> hw
        self.image_epochs: dict[int, int] = {}
        self.faults: list[str] = []
        self.violations: list[str] = []

    # --- plumbing --------------------------------------------------------------------
    def _at(self, delay_ms: int, kind: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now_ms + delay_ms, self._seq, kind, args))

    def _send(self, src: int, dst: int, kind: str, *args: Any) -> None:
        """A message over the simulated network: may be lost, delayed, reordered or cut."""
        if frozenset((src, dst)) in self.cut:
            return
        if self.faults_on:
            r = self.rng.randrange(100)
            if r < self.cfg.loss_percent:
                return
            if r >= 100 - self.cfg.duplicate_percent:  # delivered twice (a retransmission)
                self._at(1 + self.rng.randrange(self.cfg.max_delay_ms), kind, dst, *args)
        self._at(1 + self.rng.randrange(self.cfg.max_delay_ms), kind, dst, *args)

    def _violate(self, what: str) -> None:
        self.violations.append(f"t={self.now_ms} {what}")

    # --- running ---------------------------------------------------------------------
    def run(self) -> str:
        with self._injected_bugs():
            return self._run()

    @contextlib.contextmanager
    def _injected_bugs(self) -> Iterator[None]:
        """`bug_no_elr`: the metadata state machine never forms an ELR (the code before KIP-966).
        Patched for this run only, in this process: production code is never changed."""
        if not self.cfg.bug_no_elr:
            yield
            return
        real = md_state._next_elr
        md_state._next_elr = lambda p, new_isr, min_isr: ()
        try:
            yield
        finally:
            md_state._next_elr = real

    def _run(self) -> str:
        for b, br in self.brokers.items():
            self._boot_check(br)
            self._at(0, "start", b)
        self._at(0, "create_topic")
        self._at(100, "ctl_tick")
        for b in self.brokers:
            self._at(self.rng.randrange(50), "broker_tick", b)
        for i in range(len(self.producers)):
            self._at(500 + self.rng.randrange(500), "produce", i)
        for j in range(len(self.txn_clients)):
            self._at(800 + self.rng.randrange(500), "txn_step", j)
        if self.txn_on:
            for br in self.brokers.values():
                self._new_txn_core(br)
        self._at(self.cfg.fault_interval_ms, "fault")
        step = 0
        heal_at: int | None = None
        while self._queue:
            t, _, kind, args = heapq.heappop(self._queue)
            self.now_ms = t
            step += 1
            self.events += 1
            self._hash.update(f"{t}|{kind}|{'|'.join(map(_trace_arg, args))}\n".encode())
            getattr(self, "_on_" + kind)(*args)
            if self.violations:
                break
            if heal_at is None and step >= self.cfg.steps:
                self._heal()
                heal_at = self.now_ms
            if heal_at is not None and self.now_ms >= heal_at + self.cfg.heal_ms and (
                    not self.txn_on or self._txns_settled() or self.now_ms >= heal_at + 3 * self.cfg.heal_ms):
                break
        if not self.violations:
            self._final_check()
        if not self.violations and self.txn_on:
            self._final_txn_check()
        self._hash.update(repr(self.violations).encode())
        return self._hash.hexdigest()

    def _heal(self) -> None:
        self.faults_on = False
        self.cut.clear()
        self.faults.append(f"t={self.now_ms} heal")
        for b, br in self.brokers.items():
            if br.stopping_since_ms is not None:
                self._finish_clean_stop(b)
            if not br.alive:
                self._restart(b)
        for p in self.producers:
            p.next_value = -abs(p.next_value)  # marker: stop producing new values after the heal

    # --- faults ----------------------------------------------------------------------
    def _on_fault(self) -> None:
        if self.txn_on:
            self._check_read_committed()
        if not self.faults_on:
            return
        if self.txn_on and self.rng.randrange(6) == 0:
            # a transactional client process dies and its replacement starts with the same id: its
            # InitProducerId fences the old identity and aborts its open transaction; requests
            # of the old process still in the network arrive with the old epoch
            j = self.rng.randrange(len(self.txn_clients))
            c = self.txn_clients[j]
            if c.phase != "done":
                self.faults.append(f"t={self.now_ms} client {c.transactional_id} restarts ({c.phase})")
                self._abandon(c)
                self._txn_next(j, retry=True)
        ids = sorted(self.brokers)
        r = self.rng.randrange(9 if self.cfg.power_faults else 7)
        if r == 7:
            self._power_loss_fault(ids)
        elif r == 8:
            b = self.rng.choice(ids)
            br = self.brokers[b]
            if br.alive and br.stopping_since_ms is None and sum(x.alive for x in self.brokers.values()) > 1:
                self.faults.append(f"t={self.now_ms} clean stop {b}")
                self._begin_clean_stop(b)
        elif r == 0:
            b = self.rng.choice(ids)
            if self.brokers[b].alive and sum(x.alive for x in self.brokers.values()) > 1:
                self.faults.append(f"t={self.now_ms} crash {b}")
                self._crash(b)
        elif r == 1:
            dead = [b for b in ids if not self.brokers[b].alive]
            if dead:
                b = self.rng.choice(dead)
                self.faults.append(f"t={self.now_ms} restart {b}")
                self._restart(b)
        elif r == 2:
            a = self.rng.choice(ids)
            other = self.rng.choice([QUORUM, *[x for x in ids if x != a]])
            self.cut.add(frozenset((a, other)))
            self.faults.append(f"t={self.now_ms} cut {a}<->{other}")
        elif r == 3:
            a = self.rng.choice(ids)  # isolate a broker from everyone
            for x in [QUORUM, *ids]:
                if x != a:
                    self.cut.add(frozenset((a, x)))
            self.faults.append(f"t={self.now_ms} isolate {a}")
        elif r == 4 and self.ctl.active:
            # The quorum elects another leader: the controller's in-memory liveness is gone; the
            # new one starts from "everyone heard now" after an election gap (the real code's
            # on_lost_leadership / on_became_leader; Raft itself is the stand-in's business).
            self.ctl.on_lost_leadership()
            self.faults.append(f"t={self.now_ms} controller failover")
        else:
            if self.cut:
                self.cut.clear()
                self.faults.append(f"t={self.now_ms} heal links")
        self._at(self.rng.randrange(1, 2 * self.cfg.fault_interval_ms), "fault")

    def _power_loss_fault(self, ids: list[int]) -> None:
        """One broker's machine loses power (alive or not: a dead process's unsynced writes are
        in the page cache too). With `fsync: false` the guarantee is for a minority of the copies
        at once, so a cut waits until every earlier one recovered: registered again and back in
        the ISR of each partition it replicates (docs/chaos.md)."""
        b = self.rng.choice(ids)
        img = self.md.image
        for x in self.brokers.values():
            if x.power_lost and x.registered_since_cut and all(
                    x.id in p.isr for t in img.topics.values() for p in t.partitions if x.id in p.replicas):
                x.power_lost = False
        if not self.cfg.fsync and any(br.power_lost for br in self.brokers.values()):
            return
        br = self.brokers[b]
        if br.alive:
            self._crash(b)
        br.boot += 1
        br.power_lost = True
        br.registered_since_cut = False
        back = sum(len(rep.unsynced_cut) for rep in br.replicas.values())
        lost = sum(rep.lose_unsynced() for rep in br.replicas.values())
        down = sum(x.power_lost for x in self.brokers.values())  # not recovered from their cut
        self.faults.append(f"t={self.now_ms} power-loss {b} ({lost} unsynced records lost; {down} cut so far"
                           + (f"; {back} truncated records back)" if back else ")"))
        self._at(500 + self.rng.randrange(4500), "auto_restart", b, br.incarnation)

    def _begin_clean_stop(self, b: int) -> None:
        """process.py `stop()`: heartbeats stop; `_controlled_shutdown` runs in the broker tick."""
        br = self.brokers[b]
        if br.broker_epoch < 0:  # never registered: nothing to hand over
            self._finish_clean_stop(b)
            return
        br.stopping_since_ms = self.now_ms
        br.fence_sent = False

    def _controlled_shutdown_step(self, br: Broker) -> None:
        """process.py `_controlled_shutdown`, polled: (1) wait (half the budget at most) until no
        partition it leads has it as the only ISR member while another replica is unfenced, (2)
        FenceBroker itself through the quorum, (3) wait until its image shows it inactive; then
        the process stops (the logs are closed: fsynced)."""
        assert br.stopping_since_ms is not None
        waited_ms = self.now_ms - br.stopping_since_ms
        budget_ms = self.cfg.controlled_shutdown_wait_ms
        if not br.fence_sent:
            img = br.image
            alive = set(img.unfenced_brokers()) - {br.id}
            sole = any(p.leader == br.id and p.isr == (br.id,) and alive & set(p.replicas)
                       for t in img.topics.values() for p in t.partitions)
            if sole and waited_ms < budget_ms // 2:
                return
            self._send(br.id, QUORUM, "q_fence", br.id, br.broker_epoch)
            br.fence_sent = True
            return
        if br.active and waited_ms < max(budget_ms, budget_ms // 2 + 500):
            return
        self._finish_clean_stop(br.id)

    def _finish_clean_stop(self, b: int) -> None:
        br = self.brokers[b]
        for rep in br.replicas.values():
            rep.hw_checkpoint = rep.hw
            rep.synced()  # PartitionLog.close() fsyncs
        self._crash(b)
        self.faults.append(f"t={self.now_ms} stopped {b}")
        self._at(200 + self.rng.randrange(2800), "auto_restart", b, br.incarnation)

    def _on_auto_restart(self, b: int, incarnation: int) -> None:
        br = self.brokers[b]
        if not br.alive and br.incarnation == incarnation:
            self.faults.append(f"t={self.now_ms} restart {b}")
            self._restart(b)
            if self.faults_on and self.rng.randrange(4) == 0:  # it dies again while starting
                self._at(1 + self.rng.randrange(60), "crash_starting", b, br.incarnation)

    def _on_crash_starting(self, b: int, incarnation: int) -> None:
        br = self.brokers[b]
        if br.alive and br.incarnation == incarnation and self.faults_on:
            self.faults.append(f"t={self.now_ms} crash {b} (starting{', unregistered' if br.broker_epoch < 0 else ''})")
            self._crash(b)
            self._at(100 + self.rng.randrange(2000), "auto_restart", b, br.incarnation)

    def _boot_check(self, br: Broker) -> None:
        """storage/boot_record.py `machine_restarted` at process start, and process.py's use of
        it: the record is rewritten at every start and keeps `loss_pending` until a registration
        that carried the flag succeeded (`loss_reported`)."""
        restarted = br.boot_recorded is not None and (br.boot_recorded != br.boot or br.loss_pending)
        if self.cfg.bug_boot_record_consumed_at_start:  # the record before the fix: boot id only
            restarted = br.boot_recorded is not None and br.boot_recorded != br.boot
        br.boot_recorded = br.boot
        br.loss_pending = restarted and not self.cfg.fsync  # `loss_reported` at once under fsync
        if br.loss_pending:
            br.lost_unsynced_writes = True

    def _crash(self, b: int) -> None:
        br = self.brokers[b]
        br.alive = False
        br.incarnation += 1  # messages to the dead incarnation are dropped
        br.stopping_since_ms = None
        br.fence_sent = False
        br.lost_unsynced_writes = False  # in memory only
        br.txn, br.txn_epoch, br.txn_load_target = None, -1, -1  # the coordinator's memory is gone
        br.txn_requests.clear()
        for rep in br.replicas.values():
            rep.progress = None
            rep.acks.drain()  # the clients time out
            rep.hw = rep.hw_checkpoint

    def _restart(self, b: int) -> None:
        br = self.brokers[b]
        if br.alive:
            return
        br.alive = True
        br.broker_epoch = -1
        br.active = False
        br.image = MetadataImage()
        self._boot_check(br)
        for rep in br.replicas.values():
            rep.leader_epoch, rep.leader = -1, NO_LEADER
            rep.hw = min(rep.hw_checkpoint, rep.leo)
            rep.rebuild_producer_state()
            rep.synced()  # PartitionLog.open() fsyncs what it recovered
            rep.last_fsync_ms = self.now_ms
        if self.txn_on:
            self._new_txn_core(br)
        self._at(1, "start", b)

    # --- quorum and controller ---------------------------------------------------------
    def _apply(self, command: Command) -> Any:
        before = self.md.image
        result = self.md.apply(command)
        img = self.md.image
        check_invariants(img)
        if img is not before:
            t = img.topics.get(TOPIC)
            for p in t.partitions if t else ():
                prev = self.image_epochs.get(p.partition, -1)
                if p.leader_epoch < prev:
                    self._violate(f"p{p.partition}: quorum leader epoch went back {prev} -> {p.leader_epoch}")
                self.image_epochs[p.partition] = p.leader_epoch
                if p.leader != NO_LEADER and p.leader not in p.isr:
                    self._violate(f"p{p.partition}: leader {p.leader} not in ISR {p.isr}")
            for b in self.brokers:
                self._send(QUORUM, b, "metadata", self.brokers[b].incarnation, img)
        return result

    def _on_create_topic(self) -> None:
        if len(self.md.image.unfenced_brokers()) < self.cfg.brokers:
            self._at(100, "create_topic")
            return
        result = self._apply(CreateTopic(TOPIC, self.topic_partitions, 3, configs=(("min_insync_replicas", "2"),)))
        if not result.ok:
            raise RuntimeError(f"sim: cannot create the topic: {pb.ErrorCode.Name(result.error)}")

    def _on_ctl_tick(self) -> None:
        if not self.ctl.active:
            if self.rng.randrange(4) != 0:  # an election takes a few ticks
                self._at(self.ctl.config.tick_interval_ms, "ctl_tick")
                return
            self.ctl.on_became_leader(self.md.image, self.now_ms)
        for command in self.ctl.decide(self.md.image, self.now_ms):
            self._apply(command)
        self._at(self.ctl.config.tick_interval_ms, "ctl_tick")

    def _on_q_register(self, _dst: int, b: int, incarnation: int, lost_unsynced_writes: bool) -> None:
        if self.cfg.bug_ignore_lost_unsynced_writes:
            lost_unsynced_writes = False
        result = self._apply(RegisterBroker(b, f"b{b}-{incarnation}", "sim", 9000 + b,
                                            lost_unsynced_writes=lost_unsynced_writes))
        if result.ok:
            self.ctl.on_registered(b, result.value, self.now_ms)
            self._send(QUORUM, b, "registered", incarnation, result.value)

    def _on_q_heartbeat(self, _dst: int, b: int, incarnation: int, broker_epoch: int, version: int) -> None:
        reply = self.ctl.on_heartbeat(self.md.image, b, broker_epoch, version, self.now_ms)
        del reply
        self._send(QUORUM, b, "metadata", incarnation, self.md.image)

    def _on_q_fence(self, _dst: int, b: int, broker_epoch: int) -> None:
        self._apply(FenceBroker(b, broker_epoch))

    def _on_q_alter(self, _dst: int, b: int, incarnation: int, command: AlterPartition) -> None:
        result = self._apply(command)
        self._send(QUORUM, b, "alter_result", incarnation, command.partition, command.leader_epoch, result.ok)

    # --- brokers ---------------------------------------------------------------------
    def _live(self, b: int, incarnation: int) -> Broker | None:
        br = self.brokers[b]
        return br if br.alive and br.incarnation == incarnation else None

    def _on_start(self, b: int) -> None:
        br = self.brokers[b]
        if br.alive:
            self._send(b, QUORUM, "q_register", b, br.incarnation, br.lost_unsynced_writes)

    def _on_registered(self, b: int, incarnation: int, broker_epoch: int) -> None:
        br = self._live(b, incarnation)
        if br is not None and br.broker_epoch < 0:
            br.broker_epoch = broker_epoch
            if br.lost_unsynced_writes:
                br.loss_pending = False  # process.py: boot_record.loss_reported
            br.lost_unsynced_writes = False
            br.registered_since_cut = True

    def _on_broker_tick(self, b: int) -> None:
        br = self.brokers[b]
        self._at(100, "broker_tick", b)
        if not br.alive:
            return
        if br.broker_epoch < 0:
            if self.now_ms % 500 < 100:
                self._send(b, QUORUM, "q_register", b, br.incarnation, br.lost_unsynced_writes)
            return
        if br.stopping_since_ms is not None:
            self._controlled_shutdown_step(br)
            if not br.alive:
                return
        elif self.now_ms % 500 < 100:
            self._send(b, QUORUM, "q_heartbeat", b, br.incarnation, br.broker_epoch, br.image.version)
        if br.txn is not None:  # txn_coordinator_shell.py `_tick_loop`
            self._txn_perform(br, br.txn.tick(self.now_ms, lambda tp: self._leader_in(br, tp), self.now_ms))
        t = br.image.topics.get(TOPIC)
        for p in t.partitions if t and br.active else ():
            rep = br.replicas.get(p.partition)
            if rep is None:
                continue
            rep.hw_checkpoint = rep.hw
            if p.leader == b and rep.progress is not None:
                change = rep.progress.isr_change(self.now_ms)
                if change is not None and not rep.progress.proposed_isr:
                    rep.progress.propose_isr(change.new_isr)
                    cmd = AlterPartition(TOPIC, p.partition, b, br.broker_epoch, p.leader_epoch, p.partition_epoch,
                                         change.new_isr)
                    self._send(b, QUORUM, "q_alter", b, br.incarnation, cmd)
            elif p.leader not in (b, NO_LEADER) and b in p.replicas:
                last_epoch = rep.log[-1].epoch if rep.log else -1
                self._send(b, p.leader, "fetch", self.brokers[p.leader].incarnation, b, br.incarnation,
                           p.partition, p.leader_epoch, rep.leo, last_epoch)

    def _on_metadata(self, b: int, incarnation: int, img: MetadataImage) -> None:
        br = self._live(b, incarnation)
        if br is None or img.version <= br.image.version:
            return
        br.image = img
        # replica_manager.reconcile: nothing acts on metadata until this broker is registered
        # and unfenced at its own broker epoch; until then every replica is offline.
        reg = img.broker(b)
        br.active = reg is not None and reg.broker_epoch == br.broker_epoch and not reg.fenced
        t = img.topics.get(TOPIC)
        for p in t.partitions if t else ():
            if b not in p.replicas:
                continue
            rep = br.replicas.setdefault(p.partition, Replica())
            if p.leader_epoch < br.max_epoch_seen.get(p.partition, -1):
                self._violate(f"b{b} p{p.partition}: leader epoch went back")
            br.max_epoch_seen[p.partition] = p.leader_epoch
            if not br.active:
                self._resign(rep)
                rep.leader, rep.leader_epoch = NO_LEADER, -1
                continue
            if p.leader == b and (rep.leader != b or rep.leader_epoch != p.leader_epoch or rep.progress is None):
                self._become_leader(br, rep, p.partition, p.leader_epoch, p.replicas, p.isr, p.elr)
            elif p.leader == b and rep.progress is not None:
                if rep.progress.set_isr(p.isr, self.now_ms, p.elr):  # replica_manager.py feeds the ELR
                    self._hw_advanced(br, rep, p.partition)
            elif p.leader != b and rep.leader == b:
                self._resign(rep)
            rep.leader, rep.leader_epoch = p.leader, p.leader_epoch
        if self.txn_on:
            self._txn_role(br)

    def _become_leader(self, br: Broker, rep: Replica, partition: int, epoch: int,
                       replicas: tuple[int, ...], isr: tuple[int, ...], elr: tuple[int, ...]) -> None:
        self._resign(rep)
        rep.epochs = ec.assign(rep.epochs, epoch, rep.leo)
        rep.progress = LeaderProgress(leader_id=br.id, replicas=replicas, isr=isr, leader_leo=rep.leo,
                                      high_watermark=rep.hw, epoch_start_offset=rep.leo, now_ms=self.now_ms,
                                      lag_time_max_ms=self.cfg.lag_time_max_ms, elr=elr)
        rep.hw = rep.progress.high_watermark
        self._observe_hw(br, rep, partition, epoch)

    def _resign(self, rep: Replica) -> None:
        rep.progress = None
        rep.acks.drain()  # answered NOT_LEADER_OR_FOLLOWER: the producer retries

    def _on_alter_result(self, b: int, incarnation: int, partition: int, epoch: int, ok: bool) -> None:
        br = self._live(b, incarnation)
        rep = br.replicas.get(partition) if br else None
        if br is None or rep is None or rep.progress is None or rep.leader_epoch != epoch:
            return
        if not ok and rep.progress.drop_proposed_isr():
            self._hw_advanced(br, rep, partition)
        # on success the new ISR arrives with the metadata (set_isr clears the proposal)
        if ok:
            self._send(QUORUM, b, "metadata", incarnation, self.md.image)

    def _on_fetch(self, leader: int, incarnation: int, follower: int, f_inc: int, partition: int,
                  epoch: int, offset: int, last_epoch: int) -> None:
        br = self._live(leader, incarnation)
        rep = br.replicas.get(partition) if br else None
        if br is None or rep is None or rep.progress is None:
            return
        if epoch != rep.leader_epoch:
            return  # FENCED_LEADER_EPOCH / UNKNOWN_LEADER_EPOCH: the follower waits for metadata
        if last_epoch >= 0 and offset > 0:  # replication.py's divergence check (KIP-320)
            d_epoch, end = ec.end_offset_for(rep.epochs, last_epoch, rep.leo)
            if d_epoch < 0 or d_epoch != last_epoch or end < offset:
                self._send(leader, follower, "fetch_reply", f_inc, partition, epoch, (d_epoch, end), [], -1)
                return
        if offset > rep.leo:
            self._send(leader, follower, "fetch_reply", f_inc, partition, epoch, (-1, rep.leo), [], -1)
            return
        if rep.progress.on_follower_fetch(follower, offset, self.now_ms):
            self._hw_advanced(br, rep, partition)
        records = [dataclasses.replace(r) for r in rep.log[offset:offset + 20]]
        self._send(leader, follower, "fetch_reply", f_inc, partition, epoch, None, records, rep.hw)

    def _on_fetch_reply(self, b: int, incarnation: int, partition: int, epoch: int,
                        diverging: tuple[int, int] | None, records: list[Record], hw: int) -> None:
        br = self._live(b, incarnation)
        rep = br.replicas.get(partition) if br else None
        if br is None or rep is None or rep.leader_epoch != epoch or rep.progress is not None:
            return
        if diverging is not None:  # replication.py `_truncate_diverging`
            d_epoch, leader_end = diverging
            local_epoch, local_end = ec.end_offset_for(rep.epochs, d_epoch, rep.leo) if d_epoch >= 0 else (-1, -1)
            target = min(leader_end, rep.hw) if local_epoch < 0 else min(leader_end, local_end)
            rep.truncate_to(min(target, rep.leo), durable=not self.cfg.strict_truncation)
            return
        if not records or records[0].offset != rep.leo:
            if hw >= 0:
                rep.hw = max(rep.hw, min(hw, rep.leo))
            return
        for rec in records:
            rep.append(rec)
        self._after_append(br, rep, partition)
        rep.hw = max(rep.hw, min(hw, rep.leo))

    # --- produce ---------------------------------------------------------------------
    def _on_produce(self, i: int) -> None:
        p = self.producers[i]
        if p.in_flight is None:
            if p.next_value < 0:
                return  # healed: no new values
            p.in_flight = p.next_value
            p.next_value += 1
            self.sent.add(p.in_flight)
        p.attempt += 1
        view = self.md.image.partition(TOPIC, p.partition)  # clients read metadata from any broker: fresh enough
        leader = view.leader if view is not None else NO_LEADER
        if leader != NO_LEADER:
            self._send(-100 - i, leader, "produce_req", self.brokers[leader].incarnation, i, p.attempt,
                       p.producer_id, p.seq, p.in_flight, p.partition)
        self._at(self.cfg.request_timeout_ms, "produce_timeout", i, p.attempt)

    def _on_produce_timeout(self, i: int, attempt: int) -> None:
        p = self.producers[i]
        if p.attempt == attempt and p.in_flight is not None:
            self._on_produce(i)  # retry the same sequence

    def _on_produce_req(self, b: int, incarnation: int, i: int, attempt: int, pid: int, seq: int, value: int,
                        partition: int) -> None:
        br = self._live(b, incarnation)
        rep = br.replicas.get(partition) if br else None
        if br is None or rep is None or rep.progress is None:
            return self._send(b, -100 - i, "produce_resp", i, attempt, pb.NOT_LEADER_OR_FOLLOWER, -1)
        view = br.image.partition(TOPIC, partition)
        assert view is not None
        header = BatchHeader(rep.leo, 0, rep.leader_epoch, pid, 0, seq, 1, 0, 0, 0)
        decision = rep.pstate.validate(header, self.now_ms)
        if decision.outcome is Outcome.REJECT:
            return self._send(b, -100 - i, "produce_resp", i, attempt, decision.error, -1)
        if decision.outcome is Outcome.DUPLICATE:
            offset = decision.first_offset
        else:
            if len(rep.progress.isr) < 2:
                return self._send(b, -100 - i, "produce_resp", i, attempt, pb.NOT_ENOUGH_REPLICAS, -1)
            offset = rep.leo
            rep.append(Record(offset, rep.leader_epoch, pid, seq, value))
            self._after_append(br, rep, partition)
            advanced = rep.progress.on_leader_append(rep.leo, self.now_ms)
            if self.cfg.bug_hw_without_acks:
                rep.progress.high_watermark = rep.leo  # the injected bug
                advanced = True
            if advanced:
                self._hw_advanced(br, rep, partition)
        if offset < rep.hw:
            return self._send(b, -100 - i, "produce_resp", i, attempt, pb.NONE, offset)
        rep.acks.add(offset + 1, ("produce", i, attempt, offset))

    def _after_append(self, br: Broker, rep: Replica, partition: int) -> None:
        """storage/log.py `append` under the flush policy: "always" syncs before returning;
        "interval" starts a background sync when `flush_interval_ms` passed since the last one,
        which makes durable whatever the file holds when it runs."""
        policy = "always" if self.cfg.fsync else "interval"
        if fsync_due(policy, rep.last_fsync_ms, self.now_ms, self.cfg.flush_interval_ms):
            if self.cfg.fsync:
                rep.synced()
            else:
                self._at(1 + self.rng.randrange(30), "flush", br.id, br.incarnation, partition)
            rep.last_fsync_ms = self.now_ms

    def _on_flush(self, b: int, incarnation: int, partition: int) -> None:
        br = self._live(b, incarnation)
        rep = br.replicas.get(partition) if br else None
        if rep is not None:
            rep.synced()

    def _hw_advanced(self, br: Broker, rep: Replica, partition: int) -> None:
        assert rep.progress is not None
        rep.hw = rep.progress.high_watermark
        self._observe_hw(br, rep, partition, rep.leader_epoch)
        for waiter in rep.acks.complete_up_to(rep.hw):
            kind = waiter[0]
            if kind == "produce":  # PRODUCE_ACKS_ALL
                _, i, attempt, offset = waiter
                outcome = ack_outcome_after_hw(len(rep.progress.isr), 2)
                self._send(br.id, -100 - i, "produce_resp", i, attempt, outcome.error_code, offset)
            elif kind == "tproduce":
                _, j, attempt, offset = waiter
                outcome = ack_outcome_after_hw(len(rep.progress.isr), 2)
                self._send(br.id, -200 - j, "tproduce_resp", j, attempt, outcome.error_code, offset)
            elif kind == "state":  # TXN_STATE: committed once the HW passed it
                _, core, write_id = waiter
                txn = br.txn
                if txn is not None and txn is core:
                    self._txn_perform(br, txn.write_committed(write_id, self.now_ms))
            else:  # "marker", TXN_MARKER: written once the HW passed it
                _, answer, key = waiter
                answer["results"][key] = pb.NONE
                answer["left"] -= 1
                if answer["left"] == 0:
                    self._send(br.id, answer["to"], "markers_resp", answer["to_inc"], answer["send"], br.id,
                               answer["results"])
        if partition == self.sp:
            self._txn_try_load(br)

    def _on_produce_resp(self, _dst: int, i: int, attempt: int, error: int, offset: int) -> None:
        p = self.producers[i]
        if p.attempt != attempt or p.in_flight is None:
            return
        if error == pb.NONE:
            self.acked[p.partition][p.in_flight] = offset
            p.in_flight = None
            p.seq += 1
            self._at(1 + self.rng.randrange(100), "produce", i)
        else:
            self._at(50 + self.rng.randrange(100), "produce_timeout", i, attempt)  # retry

    # --- transactions: the coordinator shell --------------------------------------------
    def _new_txn_core(self, br: Broker) -> None:
        """A (re)started broker's coordinator: the real `TxnCoordinator`, one state partition."""
        br.txn = TxnCoordinator(1, self._allocate_producer_id, TxnConfig(),
                                scan_interval_ms=self.cfg.txn_abort_scan_ms)
        br.txn_epoch, br.txn_load_target = -1, -1
        br.txn_requests.clear()

    def _allocate_producer_id(self) -> int:
        self._next_producer_id += 1
        return self._next_producer_id

    def _leader_in(self, br: Broker, tp: TopicPartition) -> int | None:
        """The marker channel's `leader_of`: from the coordinator broker's own metadata."""
        view = br.image.partition(tp.topic, tp.partition)
        return None if view is None or view.leader == NO_LEADER else view.leader

    def _txn_role(self, br: Broker) -> None:
        """txn_coordinator_shell.py `_on_state_partition`: leading the state partition at epoch E
        begins a load (requests answer LOAD_IN_PROGRESS); losing it unloads."""
        assert self.sp is not None and br.txn is not None
        rep = br.replicas.get(self.sp)
        leading = br.active and rep is not None and rep.progress is not None
        epoch = rep.leader_epoch if leading and rep is not None else -1
        if epoch == br.txn_epoch:
            return
        br.txn_epoch = epoch
        if leading and rep is not None:
            br.txn_load_target = rep.leo
            self._txn_perform(br, br.txn.begin_loading(0))
            self._txn_try_load(br)
        else:
            br.txn_load_target = -1
            self._txn_perform(br, br.txn.unload(0))

    def _txn_try_load(self, br: Broker) -> None:
        """`_load`: once the HW reached the LEO at election, every committed record is replayed
        (real `txn_log.decode_records`; the last record of an id wins, a tombstone removes it: what
        `load_partition` folds, without the RocksDB view) and the core serves at that epoch."""
        if br.txn is None or br.txn_load_target < 0 or self.sp is None:
            return
        rep = br.replicas[self.sp]
        if rep.progress is None or rep.leader_epoch != br.txn_epoch or rep.hw < br.txn_load_target:
            return
        br.txn_load_target = -1
        self.txn_stats["loads"] = self.txn_stats.get("loads", 0) + 1
        metadata: dict[str, Any] = {}
        for rec in rep.log[:rep.hw]:
            if rec.batch is not None:
                for entry in txn_log.decode_records(rec.batch):
                    metadata[entry.transactional_id] = entry.metadata
        self._txn_perform(br, br.txn.loaded(0, br.txn_epoch, [m for m in metadata.values() if m is not None]))

    def _txn_perform(self, br: Broker, actions: list[Any]) -> None:
        """`_perform`: replies to clients, state appends, marker requests."""
        core = br.txn
        for action in actions:
            if isinstance(action, Reply):
                client = br.txn_requests.pop(action.request_id, None)
                if client is None:
                    continue
                pid, epoch = (action.completed.answer if action.completed is not None
                              else (action.result.producer_id, action.result.producer_epoch))
                self._send(br.id, -200 - client[0], "txn_resp", client[0], client[1], int(action.result.error),
                           pid, epoch)
            elif isinstance(action, AppendRecords):
                self._txn_append(br, action)
            elif isinstance(action, MarkerSend):
                self._send(br.id, action.broker_id, "markers_req", self.brokers[action.broker_id].incarnation,
                           action, br.id, br.incarnation)
                self._at(self.cfg.request_timeout_ms, "markers_timeout", br.id, br.incarnation, action)
            elif isinstance(action, PartitionFenced):
                br.txn_epoch = -2  # unloaded by the core; a later election loads again
            if br.txn is not core:
                return

    def _txn_append(self, br: Broker, action: AppendRecords) -> None:
        """`_append`: a leader append of the state batch at the coordinator epoch, acks=all."""
        assert self.sp is not None and br.txn is not None
        rep = br.replicas.get(self.sp)
        if rep is None or rep.progress is None or rep.leader_epoch != action.coordinator_epoch:
            return self._txn_perform(br, br.txn.write_failed(action.write_id, pb.NOT_LEADER_OR_FOLLOWER,
                                                             self.now_ms))
        if len(rep.progress.isr) < 2 or rep.acks.full():
            return self._txn_perform(br, br.txn.write_failed(action.write_id, pb.NOT_ENOUGH_REPLICAS, self.now_ms))
        self._control_value -= 1
        offset = rep.leo
        self._leader_append(br, rep, self.sp, Record(offset, rep.leader_epoch, -1, -1, self._control_value,
                                                     producer_epoch=-1, batch=action.batch))
        rep.acks.add(offset + 1, ("state", br.txn, action.write_id))
        self._at(self.cfg.request_timeout_ms, "txn_write_timeout", br.id, br.incarnation, action.write_id)

    def _txns_settled(self) -> bool:
        """Every client finished its last transaction and no coordinator has a decision whose
        markers are still being written (a transaction that ended just before the end of the quiet
        period gets up to twice that period more; the final check then says what is missing)."""
        if any(c.phase != "done" for c in self.txn_clients):
            return False
        for br in self.brokers.values():
            core = br.txn if br.alive else None
            machine = core.machine(0) if core is not None else None
            if core is not None and machine is not None and (machine.prepared() or len(core.channel) > 0):
                return False
        return True

    def _on_txn_write_timeout(self, b: int, incarnation: int, write_id: int) -> None:
        br = self._live(b, incarnation)
        if br is not None and br.txn is not None:
            self._txn_perform(br, br.txn.write_timed_out(write_id))

    def _leader_append(self, br: Broker, rep: Replica, partition: int, rec: Record) -> None:
        assert rep.progress is not None
        rep.append(rec)
        self._after_append(br, rep, partition)
        advanced = rep.progress.on_leader_append(rep.leo, self.now_ms)
        if self.cfg.bug_hw_without_acks:
            rep.progress.high_watermark = rep.leo
            advanced = True
        if advanced:
            self._hw_advanced(br, rep, partition)

    def _on_txn_req(self, b: int, incarnation: int, j: int, attempt: int, kind: str, args: tuple[Any, ...]) -> None:
        br = self._live(b, incarnation)
        if br is None or br.txn is None:
            return  # connection refused: the client times out and retries
        self._request_ids += 1
        rid = self._request_ids
        br.txn_requests[rid] = (j, attempt)
        c = self.txn_clients[j]
        if kind == "init":
            actions = br.txn.init_producer_id(rid, c.transactional_id, self.cfg.txn_timeout_ms, self.now_ms)
        elif kind == "add":
            pid, epoch, parts = args
            actions = br.txn.add_partitions(rid, c.transactional_id, pid, epoch,
                                            [TopicPartition(TOPIC, p) for p in parts], self.now_ms)
        else:
            pid, epoch, commit = args
            actions = br.txn.end_txn(rid, c.transactional_id, pid, epoch, commit, self.now_ms)
        self._txn_perform(br, actions)

    def _on_markers_req(self, b: int, incarnation: int, send: MarkerSend, coordinator: int, c_inc: int) -> None:
        """txn_service.py `WriteTxnMarkers`: per marker the refusals (`marker_refusal`: a
        coordinator epoch newer than this broker's metadata; not the leader; the acks=all
        precondition), the real `validate_marker`, the append, and a wait for the HW."""
        br = self._live(b, incarnation)
        if br is None or self.sp is None:
            return
        answer: dict[str, Any] = {"to": coordinator, "to_inc": c_inc, "send": send, "results": {}, "left": 0}
        results: dict[tuple[int, TopicPartition], int] = answer["results"]
        state_view = br.image.partition(TOPIC, self.sp)
        for m in send.markers:
            key = (m.producer_id, m.topic_partition)
            part = m.topic_partition.partition
            view = br.image.partition(TOPIC, part)
            rep = br.replicas.get(part)
            if view is None or state_view is None:
                results[key] = pb.UNKNOWN_TOPIC_OR_PARTITION  # a restarted broker's empty image
            elif m.coordinator_epoch > state_view.leader_epoch:
                results[key] = pb.UNKNOWN_LEADER_EPOCH
            elif rep is None or rep.progress is None or not br.active:
                results[key] = pb.NOT_LEADER_OR_FOLLOWER
            elif len(rep.progress.isr) < 2 or rep.acks.full():
                results[key] = pb.NOT_ENOUGH_REPLICAS
            elif (self.cfg.bug_marker_skips_partition and m.commit and part == self.cfg.partitions - 1):
                results[key] = pb.NONE  # the injected bug: answered, never written
            else:
                marker = Marker(m.commit, m.coordinator_epoch)
                decision = rep.pstate.validate_marker(m.producer_id, m.producer_epoch, marker)
                if not decision.ok:
                    results[key] = decision.error
                    continue
                self._control_value -= 1
                offset = rep.leo
                answer["left"] += 1
                rep.acks.add(offset + 1, ("marker", answer, key))
                self.txn_stats["markers"] += 1
                self._leader_append(br, rep, part, Record(offset, rep.leader_epoch, m.producer_id, -1,
                                                          self._control_value, producer_epoch=m.producer_epoch,
                                                          control=COMMIT if m.commit else ABORT,
                                                          coordinator_epoch=m.coordinator_epoch))
        if answer["left"] == 0:
            self._send(b, coordinator, "markers_resp", c_inc, send, b, results)

    def _on_markers_resp(self, b: int, incarnation: int, send: MarkerSend, from_broker: int,
                         results: dict[tuple[int, TopicPartition], int]) -> None:
        br = self._live(b, incarnation)
        if br is None or br.txn is None:
            return
        codes = authoritative_results(cast(dict[tuple[int, TopicPartition], ErrorCode], results), from_broker, b)
        self._txn_perform(br, br.txn.marker_response(send, codes, self.now_ms, self.now_ms))

    def _on_markers_timeout(self, b: int, incarnation: int, send: MarkerSend) -> None:
        br = self._live(b, incarnation)
        if br is not None and br.txn is not None:
            self._txn_perform(br, br.txn.marker_failure(send, self.now_ms, self.now_ms))

    # --- transactions: the clients --------------------------------------------------------
    def _on_txn_step(self, j: int) -> None:
        c = self.txn_clients[j]
        if c.phase == "done":
            return
        c.attempt += 1
        if c.phase == "produce":
            part, value = c.plan[c.next_record]
            view = self.md.image.partition(TOPIC, part)
            leader = view.leader if view is not None else NO_LEADER
            if leader != NO_LEADER:
                self._send(-200 - j, leader, "tproduce_req", self.brokers[leader].incarnation, j, c.attempt,
                           c.producer_id, c.producer_epoch, c.seqs.get(part, 0), value, part)
        else:
            assert self.sp is not None
            view = self.md.image.partition(TOPIC, self.sp)  # FindCoordinator
            leader = view.leader if view is not None else NO_LEADER
            if c.phase == "init":
                args: tuple[Any, ...] = ()
            elif c.phase == "add":
                args = (c.producer_id, c.producer_epoch, c.partitions)
            else:
                args = (c.producer_id, c.producer_epoch, c.commit)
            if leader != NO_LEADER:
                self._send(-200 - j, leader, "txn_req", self.brokers[leader].incarnation, j, c.attempt, c.phase, args)
        self._at(self.cfg.request_timeout_ms, "txn_client_timeout", j, c.attempt)

    def _on_txn_client_timeout(self, j: int, attempt: int) -> None:
        if self.txn_clients[j].attempt == attempt:
            self._on_txn_step(j)  # the same request again

    def _begin_txn(self, c: TxnClient) -> None:
        if not self.faults_on:
            c.phase = "done"  # healed: no new transactions
            return
        n = self.cfg.partitions
        parts = sorted(self.rng.sample(range(n), 1 + self.rng.randrange(min(2, n))))
        c.partitions = tuple(parts)
        c.plan = []
        for _ in range(1 + self.rng.randrange(4)):
            part = self.rng.choice(parts)
            c.plan.append((part, c.next_value))
            self.txn_of_value[c.next_value] = (c.producer_id, c.producer_epoch)
            self.sent.add(c.next_value)
            c.next_value += 1
        c.next_record = 0
        c.commit = self.rng.randrange(100) < self.cfg.commit_percent
        c.phase = "add"

    def _txn_next(self, j: int, retry: bool) -> None:
        self.txn_clients[j].attempt += 1  # an answer to an older attempt is stale now
        attempt = self.txn_clients[j].attempt
        self._at((50 + self.rng.randrange(100)) if retry else (1 + self.rng.randrange(50)),
                 "txn_retry", j, attempt)

    def _on_txn_retry(self, j: int, attempt: int) -> None:
        if self.txn_clients[j].attempt == attempt:
            self._on_txn_step(j)

    def _abandon(self, c: TxnClient) -> None:
        """A fatal answer: the transaction is given up, the producer re-initialises (fencing it)."""
        self.txn_stats["abandoned"] += 1
        c.phase, c.producer_id, c.producer_epoch = "init", -1, -1

    def _on_txn_resp(self, _dst: int, j: int, attempt: int, error: int, pid: int, epoch: int) -> None:
        c = self.txn_clients[j]
        if c.attempt != attempt or c.phase in ("produce", "done"):
            return
        if error in _TXN_RETRIABLE:
            return self._txn_next(j, retry=True)
        if error != pb.NONE:
            self._abandon(c)
        elif c.phase == "init":
            c.producer_id, c.producer_epoch, c.seqs = pid, epoch, {}
            self._begin_txn(c)
        elif c.phase == "add":
            c.phase = "produce"
        else:  # EndTxn answered: the next transaction runs with the bumped identity
            if c.commit:
                self.client_commits.add((c.producer_id, c.producer_epoch))
            self.txn_stats["commits" if c.commit else "aborts"] += 1
            c.producer_id, c.producer_epoch, c.seqs = pid, epoch, {}
            self._begin_txn(c)
        self._txn_next(j, retry=False)

    def _on_tproduce_req(self, b: int, incarnation: int, j: int, attempt: int, pid: int, epoch: int, seq: int,
                         value: int, partition: int) -> None:
        br = self._live(b, incarnation)
        rep = br.replicas.get(partition) if br else None
        if br is None or rep is None or rep.progress is None:
            return self._send(b, -200 - j, "tproduce_resp", j, attempt, pb.NOT_LEADER_OR_FOLLOWER, -1)
        header = BatchHeader(rep.leo, 0, rep.leader_epoch, pid, epoch, seq, 1, ATTR_TRANSACTIONAL, 0, 0)
        decision = rep.pstate.validate(header, self.now_ms)
        if decision.outcome is Outcome.REJECT:
            return self._send(b, -200 - j, "tproduce_resp", j, attempt, decision.error, -1)
        if decision.outcome is Outcome.DUPLICATE:
            offset = decision.first_offset
        else:
            if len(rep.progress.isr) < 2:
                return self._send(b, -200 - j, "tproduce_resp", j, attempt, pb.NOT_ENOUGH_REPLICAS, -1)
            offset = rep.leo
            self._leader_append(br, rep, partition, Record(offset, rep.leader_epoch, pid, seq, value,
                                                           producer_epoch=epoch, txn=True))
        if offset < rep.hw:
            return self._send(b, -200 - j, "tproduce_resp", j, attempt, pb.NONE, offset)
        rep.acks.add(offset + 1, ("tproduce", j, attempt, offset))

    def _on_tproduce_resp(self, _dst: int, j: int, attempt: int, error: int, offset: int) -> None:
        c = self.txn_clients[j]
        if c.attempt != attempt or c.phase != "produce":
            return
        if error in _TXN_RETRIABLE:
            return self._txn_next(j, retry=True)
        if error != pb.NONE:
            self._abandon(c)
        else:
            part, value = c.plan[c.next_record]
            self.txn_acked[value] = (part, offset)
            c.seqs[part] = c.seqs.get(part, 0) + 1
            c.next_record += 1
            if c.next_record == len(c.plan):
                c.phase = "end"
        self._txn_next(j, retry=False)

    # --- transactions: the checker ----------------------------------------------------------
    def _learn_decision(self, rec: Record) -> None:
        """A state record became committed: a Prepare* record is the transaction's decision,
        for the identity its data was written with. A decision never flips."""
        if rec.batch is None:
            return
        for entry in txn_log.decode_records(rec.batch):
            meta = entry.metadata
            if meta is None or meta.state not in PREPARED:
                continue
            identity = (meta.prev_producer_id, meta.last_producer_epoch)
            commit = meta.state.name == "PREPARE_COMMIT"
            if identity not in self.decisions:
                reason = f"decided_{meta.bump_reason.name.lower()}"  # end_txn, timeout, fence, reinit
                self.txn_stats[reason] = self.txn_stats.get(reason, 0) + 1
            if self.decisions.setdefault(identity, commit) != commit:
                self._violate(f"{meta.transactional_id}: transaction {identity} decided both ways")

    def _check_read_committed(self) -> None:
        """The read_committed view of every broker that serves as leader now (a deposed one that
        does not know it yet included): only records of transactions decided commit, none twice."""
        for part in range(self.cfg.partitions):
            for br, rep in self._serving(part):
                self._check_visible(part, br.id, rep)

    def _serving(self, part: int) -> list[tuple[Broker, Replica]]:
        """(broker, replica) of every live broker acting as `part`'s leader, newest epoch first."""
        found = [(br, rep) for br in self.brokers.values() if br.alive
                 for rep in [br.replicas.get(part)] if rep is not None and rep.progress is not None]
        return sorted(found, key=lambda x: -x[1].leader_epoch)

    def _check_visible(self, part: int, b: int, rep: Replica) -> set[int]:
        """Two oracles for one read_committed read of `rep`: the coordinator's committed decision
        for the identity the record was written with, and the replica's own log (the first marker
        of the record's producer after it must be a COMMIT: a record with no marker after it is in
        an open transaction the LSO must not have passed). The marker may still be above the HW:
        Semel's LSO, unlike Kafka's (`unreplicatedTxns`), does not wait for the marker to
        replicate (docs/chaos.md: safe, the decision is durable before any marker is written and
        a marker is retried until committed); counted as `visible_before_marker_committed`."""
        self.txn_stats["rc_reads"] += 1
        end, visible = rep.read_committed(self.cfg.bug_lso_ignores_open_txns)
        closer: dict[int, int] = {}  # producer id -> the first marker after the current offset
        closed_by: dict[int, int] = {}  # offset -> that marker, for transactional records
        closed_at: dict[int, int] = {}  # offset -> that marker's offset
        for rec in reversed(rep.log):
            if rec.control:
                closer[rec.producer_id] = rec.control
                closed_at[rec.producer_id] = rec.offset
            elif rec.txn and rec.offset < end:
                closed_by[rec.offset] = closer.get(rec.producer_id, NO_CONTROL)
                if closed_at.get(rec.producer_id, -1) >= rep.hw:
                    self.txn_stats["visible_before_marker_committed"] = (
                        self.txn_stats.get("visible_before_marker_committed", 0) + 1)
        seen: set[int] = set()
        for rec in visible:
            if rec.value in seen:
                self._violate(f"p{part}: read_committed at b{b} shows value {rec.value} twice")
            seen.add(rec.value)
            if not rec.txn:
                continue
            identity = (rec.producer_id, rec.producer_epoch)
            decided = self.decisions.get(identity)
            marker = closed_by[rec.offset]
            if decided is not True or marker != COMMIT:
                what = ("an open transaction" if decided is None or marker == NO_CONTROL else
                        "an aborted transaction")
                self._violate(f"p{part}: read_committed at b{b} shows value {rec.value} at offset {rec.offset} "
                              f"of {what} {identity} (decision {decided}, closed by "
                              f"{ {NO_CONTROL: 'no marker', COMMIT: 'COMMIT', ABORT: 'ABORT'}[marker]})")
                break
        return seen

    def _final_txn_check(self) -> None:
        """After the heal: committed transactions are wholly visible at every partition they
        wrote (all-or-nothing, exactly once), aborted and open ones not at all, and every
        EndTxn(commit) a client saw answered is a commit in the log."""
        for identity in sorted(self.client_commits):
            if self.decisions.get(identity) is not True:
                self._violate(f"transaction {identity}: EndTxn(commit) answered NONE, log says "
                              f"{self.decisions.get(identity)}")
        for part in range(self.cfg.partitions):
            serving = self._serving(part)
            if not serving:
                self._violate(f"p{part}: no leader after the heal")
                continue
            br, rep = serving[0]
            seen = self._check_visible(part, br.id, rep)
            for value, (p, offset) in sorted(self.txn_acked.items()):
                if p == part and self.decisions.get(self.txn_of_value[value]) is True and value not in seen:
                    self._violate(f"p{part}: value {value} (offset {offset}) of committed transaction "
                                  f"{self.txn_of_value[value]} is not visible to read_committed "
                                  f"(LSO {rep.last_stable_offset()}, HW {rep.hw})")
                    break

    # --- checker ---------------------------------------------------------------------
    def _observe_hw(self, br: Broker, rep: Replica, partition: int, epoch: int) -> None:
        """The leader serves [0, hw): it must extend everything any leader ever served."""
        key = (partition, br.id, epoch)
        if rep.hw < self.hw_seen.get(key, 0):
            self._violate(f"b{br.id} p{partition} epoch {epoch}: HW went back to {rep.hw}")
        self.hw_seen[key] = rep.hw
        committed = self.committed[partition]
        values = [r.value for r in rep.log[:rep.hw]]
        n = min(len(values), len(committed))
        if values[:n] != committed[:n]:
            at = next(k for k in range(n) if values[k] != committed[k])
            self._violate(f"p{partition}: leader b{br.id} epoch {epoch} serves {values[at]} at offset {at}, "
                          f"where {committed[at]} was committed (a committed write lost or replaced)")
        if len(values) > len(committed):
            if partition == self.sp:
                for rec in rep.log[len(committed):rep.hw]:
                    self._learn_decision(rec)
            self.committed[partition] = values

    def _final_check(self) -> None:
        for partition, acked in self.acked.items():
            log = self.committed[partition]
            where: dict[int, int] = {}
            for offset, v in enumerate(log):
                if v in where:
                    self._violate(f"p{partition}: duplicate value {v} at offsets {where[v]} and {offset}")
                where[v] = offset
                if v >= 0 and v not in self.sent:  # negative: a marker or state record
                    self._violate(f"p{partition}: value {v} at {offset} was never sent")
            for v, offset in sorted(acked.items()):
                if where.get(v) != offset:
                    self._violate(f"p{partition}: acknowledged value {v} at offset {offset} is "
                                  f"{'missing' if v not in where else f'at {where[v]}'}")


def run_seed(seed: int, config: SimConfig | None = None) -> tuple[str, Simulation]:
    sim = Simulation(seed, config)
    return sim.run(), sim


def run_seeds(seeds: list[int], config: SimConfig | None = None,
              on_result: Callable[[int, str, Simulation], None] | None = None) -> list[int]:
    failing = []
    for s in seeds:
        digest, sim = run_seed(s, config)
        if on_result is not None:
            on_result(s, digest, sim)
        if sim.violations:
            failing.append(s)
    return failing
