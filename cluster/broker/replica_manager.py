"""The partitions this broker hosts, and their role (leader / follower) per the metadata.

Theory of operation:
  * The metadata image is the only source of roles. `reconcile(image)` runs on the asyncio
    loop after every metadata change (the quorum posts changes from pysyncobj's thread with
    call_soon_threadsafe) and moves each hosted partition to the role the image says, at the
    leader epoch the image says. Nothing acts on metadata until this broker is registered and
    unfenced in the image at its own broker epoch (a restarted broker must not lead from a
    stale image replayed out of its journal).
  * Leader: appends client batches (offsets + leader epoch stamped by the store), tracks
    follower LEOs in a `LeaderProgress` (pure core), advances the HW, completes acks=all
    waiters, and proposes ISR changes to the quorum (CAS on the partition epoch).
  * Follower: the fetcher (replication.py) appends the leader's bytes verbatim, truncates on
    a diverging epoch, and sets the follower HW = min(leader HW, local LEO).
  * Every state change that readers wait for (append, HW advance, role change) calls
    `Partition.notify()`, which wakes long-polling fetches without any polling loop.
  * Time comes from the `Clock` the manager was built with (the broker process wires the
    host's clocks): the wall clock for what is stored (append times), the monotonic one for
    replication progress; replication and the ISR maintainer read the same one. Only asyncio
    timers (ack timeouts, long-poll deadlines) run on the event loop's own clock.

Everything here runs on the broker's single asyncio loop; storage calls are synchronous
(page-cache writes), so no two appends/truncations of a partition interleave. Disk work whose
time the disk decides runs on the disk executor (semel.storage.disk_executor), keyed by the
replica's directory so that a replica's open, roll jobs, close and deletion run in order:
  * opening a replica that has data (log recovery) when reconcile runs on a loop: the
    partition appears, and takes the role of the newest image, once the open is done; until
    then it answers like a partition not hosted yet ("becoming the leader; retry"). A
    brand-new replica (no directory yet: nothing to recover) opens inline, so a new topic's
    leader serves as soon as its image names it; so does everything when no loop runs
    (tools, tests that reconcile before starting one).
  * closing and deleting a removed replica (its HW checkpoint, store close, `rmtree`), and
    the directories of topics deleted while the broker was down. A replica whose topic is
    deleted while it opens is closed and deleted when the open ends.
  * `close()` (broker shutdown) closes inline: the gRPC server has stopped by then.
See docs/design.md, "Threads".
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from semel import limits
from semel.clock import monotonic_ms, steady_wall_ms, wall_clock_ms
from semel.cluster.broker.replica_state import (
    LeaderProgress,
    PendingAcks,
    ack_outcome_after_hw,
)
from semel.cluster.broker.storage_adapter import ReplicaStore
from semel.cluster.metadata import state as md
from semel.invariant import not_none
from semel.storage import disk_executor
from semel.storage.batch import BatchHeader, encode_batch
from semel.v1 import common_pb2 as pb

log = logging.getLogger(__name__)

HW_CHECKPOINT_FILE = "high-watermark"
ROLE_CHANGES_LOGGED_EACH = 8  # role changes of one metadata change logged one line each; more: one summary line


class Clock(Protocol):
    """The two clocks the replica shells read. Whoever builds a `ReplicaManager` (or a bare
    `Partition`) passes one in: the broker process a `SystemClock`, a test a clock it moves by
    hand, so replica lag and ISR changes are driven without sleeping."""

    def wall_clock_ms(self) -> int:
        """Batch append times, retention, producer expiry (stored and compared across hosts)."""
        ...

    def monotonic_ms(self) -> int:
        """Replication progress (lag, ISR decisions): immune to wall-clock steps."""
        ...


class SystemClock:
    """The host's clocks: what the broker process wires."""

    def wall_clock_ms(self) -> int:
        return wall_clock_ms()

    def monotonic_ms(self) -> int:
        return monotonic_ms()


class Role(enum.Enum):
    OFFLINE = "offline"  # hosted, but neither leading nor following (no leader, or not ready)
    LEADER = "leader"
    FOLLOWER = "follower"


@dataclasses.dataclass(frozen=True, slots=True)
class WriteResult:
    """The broker's answer to one leader append (a batch or a marker) on the write path: the storage
    outcome (`semel.storage.partition.AppendResult` / `MarkerResult`) plus the log append time."""

    error_code: pb.ErrorCode
    message: str = ""
    base_offset: int = -1
    last_offset: int = -1
    log_append_time_ms: int = -1
    duplicate: bool = False


class PartitionError(Exception):
    def __init__(self, code: pb.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Partition:
    """One hosted replica of a partition."""

    def __init__(self, topic: str, partition: int, topic_id: str, directory: Path, store: ReplicaStore,
                 broker_id: int, lag_time_max_ms: int, *, clock: Clock) -> None:
        self.topic = topic
        self.partition = partition
        self.topic_id = topic_id
        self.directory = directory
        self.store = store
        self.broker_id = broker_id
        self.lag_time_max_ms = lag_time_max_ms
        self.clock = clock
        self.role = Role.OFFLINE
        self.state: md.PartitionState | None = None
        self.leader_epoch = -1
        self.leader_id = md.NO_LEADER
        self.progress: LeaderProgress | None = None
        self.pending: PendingAcks[asyncio.Future[None]] = PendingAcks(limits.MAX_PENDING_ACKS_PER_PARTITION)
        self.high_watermark = min(_read_hw_checkpoint(directory), store.log_end_offset)
        self._checkpointed_hw = self.high_watermark
        self._checkpoint_lock = threading.Lock()  # the loop (close) and the checkpoint thread both write
        self._checkpoint_closed = False
        self.min_insync_replicas = 1
        self.topic_config: md.TopicConfig | None = None  # the config the store's log settings follow
        self._waiters: set[asyncio.Future[None]] = set()
        self._data_waiters: set[asyncio.Future[None]] = set()
        self.alter_in_flight = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    @property
    def log_end_offset(self) -> int:
        return self.store.log_end_offset

    @property
    def log_start_offset(self) -> int:
        return self.store.log_start_offset

    @property
    def isr(self) -> tuple[int, ...]:
        return () if self.state is None else self.state.isr

    def last_stable_offset(self) -> int:
        fuo = self.store.first_unstable_offset()
        return self.high_watermark if fuo is None else min(fuo, self.high_watermark)

    # --- waking readers ----------------------------------------------------------------
    def add_waiter(self, fut: asyncio.Future[None], data_only: bool = False) -> None:
        """Wake `fut` on the next change; `data_only` waiters (follower fetches) skip HW-only
        changes: followers learn the HW with their next data or at the end of their long-poll,
        which halves the replication round trips per acks=all produce."""
        (self._data_waiters if data_only else self._waiters).add(fut)

    def remove_waiter(self, fut: asyncio.Future[None]) -> None:
        self._waiters.discard(fut)
        self._data_waiters.discard(fut)

    def notify(self, hw_only: bool = False) -> None:
        waiters, self._waiters = self._waiters, set()
        if not hw_only:
            waiters |= self._data_waiters
            self._data_waiters = set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # --- role changes ------------------------------------------------------------------
    def become_leader(self, state: md.PartitionState, min_isr: int, now: int) -> None:
        log.debug("%s-%d: leader at epoch %d (isr %s, leo %d, hw %d)", self.topic, self.partition,
                  state.leader_epoch, state.isr, self.log_end_offset, self.high_watermark)
        self._fail_pending(pb.NOT_LEADER_OR_FOLLOWER, "leadership changed; outcome unknown")
        self.store.assign_epoch(state.leader_epoch, self.log_end_offset)
        self.role = Role.LEADER
        self.state = state
        self.leader_epoch = state.leader_epoch
        self.leader_id = self.broker_id
        self.min_insync_replicas = min_isr
        self.progress = LeaderProgress(
            leader_id=self.broker_id, replicas=state.replicas, isr=state.isr, leader_leo=self.log_end_offset,
            high_watermark=self.high_watermark, epoch_start_offset=self.log_end_offset, now_ms=now,
            lag_time_max_ms=self.lag_time_max_ms, elr=state.elr,
        )
        self._on_hw(self.progress.high_watermark)
        self.notify()

    def update_leader_state(self, state: md.PartitionState, min_isr: int, now: int) -> None:
        """Same leader epoch, new ISR/replicas (an ISR change committed)."""
        progress = not_none(self.progress, "update_leader_state on a non-leader")
        self.state = state
        self.min_insync_replicas = min_isr
        progress.set_replicas(state.replicas, now)
        if progress.set_isr(state.isr, now, state.elr, state.partition_epoch):
            self._on_hw(progress.high_watermark)

    def become_follower(self, state: md.PartitionState) -> None:
        log.debug("%s-%d: follower of %d at epoch %d (leo %d)", self.topic, self.partition, state.leader,
                  state.leader_epoch, self.log_end_offset)
        self._fail_pending(pb.NOT_LEADER_OR_FOLLOWER, "no longer the leader; outcome unknown")
        self.role = Role.FOLLOWER if state.leader != md.NO_LEADER else Role.OFFLINE
        self.state = state
        self.leader_epoch = state.leader_epoch
        self.leader_id = state.leader
        self.progress = None
        self.notify()

    def go_offline(self) -> None:
        self._fail_pending(pb.NOT_LEADER_OR_FOLLOWER, "replica went offline; outcome unknown")
        self.role = Role.OFFLINE
        self.progress = None
        self.notify()

    def _fail_pending(self, code: pb.ErrorCode, message: str) -> None:
        for fut in self.pending.drain():
            if not fut.done():
                fut.set_exception(PartitionError(code, message))
                fut.exception()  # mark retrieved: the producer may have given up waiting already

    # --- leader path -------------------------------------------------------------------
    def check_leader(self, current_leader_epoch: int = -1) -> None:
        if self.role != Role.LEADER:
            raise PartitionError(pb.NOT_LEADER_OR_FOLLOWER,
                                 f"broker {self.broker_id} is not the leader of {self.topic}-{self.partition}")
        if current_leader_epoch >= 0:
            if current_leader_epoch < self.leader_epoch:
                raise PartitionError(pb.FENCED_LEADER_EPOCH,
                                     f"leader epoch {current_leader_epoch} < current {self.leader_epoch}")
            if current_leader_epoch > self.leader_epoch:
                raise PartitionError(pb.UNKNOWN_LEADER_EPOCH,
                                     f"leader epoch {current_leader_epoch} > known {self.leader_epoch}")

    def append_as_leader(self, header: BatchHeader, payload: bytes, now: int) -> WriteResult:
        return self.append_encoded_as_leader(encode_batch(header, payload), now)

    def append_encoded_as_leader(self, encoded: bytes, now: int) -> WriteResult:
        """Append one whole encoded batch of either magic (the Kafka listener appends clients'
        v2 batches as sent); the caller validated its header (`validate_batch`)."""
        self.check_leader()
        outcome = self.store.append_as_leader(encoded, self.leader_epoch, now)
        if not outcome.ok:
            return WriteResult(outcome.error, outcome.message)
        progress = not_none(self.progress, "a leader has replication progress")
        if not outcome.duplicate and progress.on_leader_append(self.log_end_offset, self.clock.monotonic_ms()):
            self._on_hw(progress.high_watermark)
        self.notify()
        return WriteResult(pb.NONE, "", outcome.first_offset, outcome.last_offset, now, outcome.duplicate)

    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
                      now: int) -> WriteResult:
        """A COMMIT/ABORT marker from the transaction coordinator (validated by the store)."""
        self.check_leader()
        outcome = self.store.append_marker(producer_id, producer_epoch, commit, coordinator_epoch,
                                           self.leader_epoch, now)
        if not outcome.ok:
            return WriteResult(outcome.error, outcome.message)
        progress = not_none(self.progress, "a leader has replication progress")
        if progress.on_leader_append(self.log_end_offset, self.clock.monotonic_ms()):
            self._on_hw(progress.high_watermark)
        self.notify()
        return WriteResult(pb.NONE, "", outcome.offset, outcome.offset, now)

    def wait_for_hw(self, end_offset: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.high_watermark >= end_offset:
            fut.set_result(None)
            return fut
        if self.pending.full():
            raise PartitionError(pb.RESOURCE_EXHAUSTED,
                                 f"{len(self.pending)} acks=all produces already waiting on this partition")
        self.pending.add(end_offset, fut)
        return fut

    def ack_outcome(self) -> tuple[pb.ErrorCode, str]:
        o = ack_outcome_after_hw(len(self.isr), self.min_insync_replicas)
        return o.error_code, o.message

    def on_follower_fetch(self, replica_id: int, fetch_offset: int, now: int) -> None:
        if self.progress is not None and self.progress.on_follower_fetch(replica_id, fetch_offset, now):
            self._on_hw(self.progress.high_watermark)

    def on_hw_advanced(self) -> None:
        """The leader's progress advanced its HW outside a fetch or append (an ISR proposal dropped)."""
        if self.progress is not None:
            self._on_hw(self.progress.high_watermark)

    def _on_hw(self, hw: int) -> None:
        self.high_watermark = max(self.high_watermark, hw)  # never decreases on the leader
        for fut in self.pending.complete_up_to(self.high_watermark):
            if not fut.done():
                fut.set_result(None)
        self.notify(hw_only=True)

    # --- follower path -----------------------------------------------------------------
    def append_as_follower(self, records: bytes, leader_hw: int) -> None:
        if records:
            self.store.append_as_follower(records, self.clock.wall_clock_ms())
        self.set_follower_hw(leader_hw)
        self.notify()

    def set_follower_hw(self, leader_hw: int) -> None:
        new_hw = min(leader_hw, self.log_end_offset)
        if new_hw != self.high_watermark:
            self.high_watermark = new_hw
            self.notify()

    def truncate_to(self, offset: int) -> None:
        if offset < self.log_end_offset:
            log.warning("%s-%d: truncating divergent data %d..%d", self.topic, self.partition, offset,
                        self.log_end_offset)
        if offset <= self.log_end_offset:
            self.store.truncate_to(offset)
            self.high_watermark = min(self.high_watermark, self.log_end_offset)

    # --- housekeeping ------------------------------------------------------------------
    def checkpoint_hw(self) -> None:
        self.write_hw_checkpoint(self.high_watermark)

    def write_hw_checkpoint(self, hw: int) -> None:
        """Any thread: the file write and rename can block for hundreds of ms while the disk's
        journal is busy (measured), so the broker's periodic checkpoints run off its loop.
        Nothing is written after close() wrote the last one."""
        with self._checkpoint_lock:
            if hw != self._checkpointed_hw and not self._checkpoint_closed:
                _write_hw_checkpoint(self.directory, hw)
                self._checkpointed_hw = hw

    def close(self) -> None:
        self.go_offline()
        self.close_files()

    def close_files(self) -> None:
        """The last HW checkpoint and the store's close, after `go_offline` (any thread)."""
        try:
            self.checkpoint_hw()
        finally:
            with self._checkpoint_lock:
                self._checkpoint_closed = True
            self.store.close()


def _read_hw_checkpoint(directory: Path) -> int:
    try:
        return int((directory / HW_CHECKPOINT_FILE).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_hw_checkpoint(directory: Path, hw: int) -> None:
    tmp = directory / (HW_CHECKPOINT_FILE + ".tmp")
    tmp.write_text(str(hw))
    os.replace(tmp, directory / HW_CHECKPOINT_FILE)


RoleListener = Callable[[Partition, Role, int], None]


class ReplicaManager:
    """Owns every hosted `Partition`; moves them between roles per the metadata image."""

    def __init__(self, broker_id: int, data_dir: Path, lag_time_max_ms: int,
                 open_store: Callable[[Path, md.Topic, int], ReplicaStore], *, clock: Clock,
                 disk: disk_executor.DiskExecutor | None = None) -> None:
        self.broker_id = broker_id
        # Every hosted partition, the leader side of replication and the ISR maintainer read
        # this one clock, so a partition's replication progress is measured on one timeline.
        self.clock = clock
        # Time-based retention reads `steady_wall_ms` from this anchor: a forward step of the
        # wall clock after start never deletes a segment early (docs/design.md, "Clocks").
        self._retention_anchor = (clock.wall_clock_ms(), clock.monotonic_ms())
        self.disk = disk or disk_executor.shared()
        self._opening: dict[tuple[str, int], asyncio.Task[None]] = {}  # replicas being opened off the loop
        self._image: md.MetadataImage | None = None  # the newest image reconcile saw
        self._closed = False
        self.logs_dir = data_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.lag_time_max_ms = lag_time_max_ms
        self._open_store = open_store
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.failed: dict[tuple[str, int], str] = {}  # replicas whose storage could not be opened
        self._role_listeners: list[RoleListener] = []
        # Called when a partition starts following a (new) leader or stops following.
        self.on_follow: Callable[[Partition], None] = lambda p: None
        self.on_unfollow: Callable[[Partition], None] = lambda p: None
        self.broker_epoch = -1
        self.active = False  # registered and unfenced at our own epoch
        # Fetches of either protocol parked until data arrives (bounded by the callers with
        # limits.MAX_FETCH_WAITERS_PER_BROKER: one count for the whole broker).
        self.parked_fetches = 0
        self._more_to_open: asyncio.Handle | None = None  # the turn that opens the new replicas left over
        self._role_changes: list[Partition] = []  # by the current reconcile, logged at its end

    def get(self, topic: str, partition: int) -> Partition | None:
        return self.partitions.get((topic, partition))

    async def park_fetch(self, keys: Iterable[tuple[str, int]], timeout_s: float) -> None:
        """Wait until any of these partitions gets data (or changes role), or `timeout_s`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        parts = [p for t, i in keys if (p := self.get(t, i)) is not None]
        for p in parts:
            p.add_waiter(fut)
        self.parked_fetches += 1
        try:
            await asyncio.wait_for(fut, max(0.0, timeout_s))
        except asyncio.TimeoutError:
            pass
        finally:
            self.parked_fetches -= 1
            for p in parts:
                p.remove_waiter(fut)

    def leader_partition(self, topic: str, partition: int, image: md.MetadataImage,
                         current_leader_epoch: int = -1) -> Partition:
        p = self.partitions.get((topic, partition))
        if p is None:
            if not self.active:
                # Starting (not registered yet) or fenced: the image may be stale or still being
                # replayed, so "unknown partition" would not be authoritative; a caller that takes
                # UNKNOWN as "the topic was deleted" (the marker channel did: chaos finding 6) must
                # hear "not here, retry" instead.
                raise PartitionError(pb.NOT_LEADER_OR_FOLLOWER,
                                     f"broker {self.broker_id} is not serving yet (starting or fenced); retry")
            state = image.partition(topic, partition)
            if state is None:
                raise PartitionError(pb.UNKNOWN_TOPIC_OR_PARTITION, f"unknown partition {topic}-{partition}")
            if (topic, partition) in self.failed:
                raise PartitionError(pb.STORAGE_ERROR, f"replica of {topic}-{partition} on broker {self.broker_id} "
                                     f"is unavailable: {self.failed[(topic, partition)]}")
            if state.leader == self.broker_id:
                raise PartitionError(pb.NOT_LEADER_OR_FOLLOWER,
                                     f"broker {self.broker_id} is becoming the leader of {topic}-{partition}; retry")
            raise PartitionError(pb.NOT_LEADER_OR_FOLLOWER,
                                 f"broker {self.broker_id} is not the leader of {topic}-{partition}")
        p.check_leader(current_leader_epoch)
        return p

    def reconcile(self, image: md.MetadataImage) -> None:
        self._image = image
        reg = image.broker(self.broker_id)
        self.active = reg is not None and reg.broker_epoch == self.broker_epoch and not reg.fenced
        wanted: dict[tuple[str, int], tuple[md.Topic, md.PartitionState]] = {}
        for name, topic in image.topics.items():
            for ps in topic.partitions:
                if self.broker_id in ps.replicas:
                    wanted[(name, ps.partition)] = (topic, ps)
        for key in list(self.partitions):
            p = self.partitions[key]
            if key not in wanted or wanted[key][0].topic_id != p.topic_id:
                self._remove(p, delete_data=True)
        try:
            self._reconcile_roles(wanted)
        finally:
            self._log_role_changes()

    def _reconcile_roles(self, wanted: dict[tuple[str, int], tuple[md.Topic, md.PartitionState]]) -> None:
        opened = 0
        for key, (topic, ps) in wanted.items():
            try:
                found = self.partitions.get(key)
                if found is not None and key not in self.failed and self._settled(found, topic, ps):
                    continue
                if found is None and self._open_off_loop(key, topic):
                    continue  # takes its role when the open is done
                if found is None:
                    if opened >= limits.NEW_REPLICAS_OPENED_PER_LOOP_TURN and self._open_the_rest_later():
                        continue
                    opened += 1
                p = found if found is not None else self._open(topic, ps)
                self._apply_state(p, topic, ps, self.clock.monotonic_ms())  # after the open, which may take a while
                self._apply_config(p, topic)
            except Exception as exc:  # one bad replica must not take the others down; retried next change
                log.exception("%s-%d: cannot take its role (%s); replica unavailable", key[0], key[1], exc)
                self.failed[key] = f"{type(exc).__name__}: {exc}"
            else:
                self.failed.pop(key, None)

    def _open_the_rest_later(self) -> bool:
        """Reconcile the newest image again in a later loop turn, which opens the next new
        replicas (True), so other work (heartbeats, requests) runs in between; False without a
        running loop (open inline)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._more_to_open is None:
            self._more_to_open = loop.call_soon(self._open_more)
        return True

    def _open_more(self) -> None:
        self._more_to_open = None
        if not self._closed and self._image is not None:
            self.reconcile(self._image)

    def _settled(self, p: Partition, topic: md.Topic, ps: md.PartitionState) -> bool:
        """True when `_apply_state` and `_apply_config` would change nothing on `p`: it already
        holds this very partition state and config and the role `_change_role` would leave as it
        is (its no-op branches, mirrored). A metadata change then costs O(partitions changed), not a
        role pass over every hosted replica: an image shares the unchanged topics' and partitions'
        objects with its predecessor. A leader with an ISR proposal in flight is not settled (the
        pass clears the proposal, as before)."""
        if p.state is not ps or p.topic_config != topic.config:
            return False
        if not self.active:
            return p.role == Role.OFFLINE
        if ps.leader == self.broker_id:
            return (p.role == Role.LEADER and p.leader_epoch == ps.leader_epoch and p.progress is not None
                    and not p.progress.proposed_isr)
        return p.role == Role.FOLLOWER and p.leader_epoch == ps.leader_epoch and p.leader_id == ps.leader

    def _apply_config(self, p: Partition, topic: md.Topic) -> None:
        """A topic config altered through the quorum takes effect on the open replica at once:
        min ISR with the role (`_change_role`), the log's retention and segment settings here;
        a changed retention is applied now rather than at the next housekeeping round."""
        if p.topic_config is None:
            p.topic_config = topic.config  # opened with it
            return
        if p.topic_config == topic.config:
            return
        before, p.topic_config = p.topic_config, topic.config
        c = topic.config
        p.store.set_log_config(segment_bytes=c.segment_bytes, segment_ms=c.segment_ms,
                               retention_bytes=c.retention_bytes, retention_ms=c.retention_ms)
        log.info("%s-%d: config now %s", p.topic, p.partition, md.topic_config_values(c))
        if (before.retention_ms, before.retention_bytes) != (c.retention_ms, c.retention_bytes):
            start = p.log_start_offset
            if p.store.apply_retention(self.retention_now_ms(self.clock.wall_clock_ms(),
                                                             self.clock.monotonic_ms())) != start:
                p.notify()

    # --- in-process API for coordinators hosted on this broker ---------------------------
    def add_role_listener(self, callback: RoleListener) -> None:
        """`callback(partition, role, leader_epoch)` after every role change of a hosted replica
        (also `Role.OFFLINE, -1` when it is removed); runs on the loop, must not block."""
        self._role_listeners.append(callback)

    def _notify_role(self, p: Partition, role: Role, leader_epoch: int) -> None:
        for callback in self._role_listeners:
            try:
                callback(p, role, leader_epoch)
            except Exception:
                log.exception("role listener failed for %s-%d", p.topic, p.partition)

    # --- role changes ---------------------------------------------------------------------
    def _apply_state(self, p: Partition, topic: md.Topic, ps: md.PartitionState, now: int) -> None:
        before = (p.role, p.leader_epoch)
        self._change_role(p, topic, ps, now)
        if (p.role, p.leader_epoch) != before:
            self._role_changes.append(p)
            self._notify_role(p, p.role, p.leader_epoch)

    def _log_role_changes(self) -> None:
        """One line per role change when a metadata change makes a few (as the replicas log at
        DEBUG), one summary beyond ROLE_CHANGES_LOGGED_EACH: a broker fenced at 1,000 partitions
        would otherwise write 1,000 lines from its event loop on every broker."""
        changes, self._role_changes = self._role_changes, []
        if len(changes) <= ROLE_CHANGES_LOGGED_EACH:
            for p in changes:
                if p.role == Role.LEADER:
                    log.info("%s-%d: leader at epoch %d (isr %s, leo %d, hw %d)", p.topic, p.partition,
                             p.leader_epoch, p.state.isr if p.state else (), p.log_end_offset, p.high_watermark)
                elif p.role == Role.FOLLOWER:
                    log.info("%s-%d: follower of %d at epoch %d (leo %d)", p.topic, p.partition, p.leader_id,
                             p.leader_epoch, p.log_end_offset)
                else:
                    log.info("%s-%d: offline (epoch %d)", p.topic, p.partition, p.leader_epoch)
            return
        counts = {role: sum(1 for p in changes if p.role == role) for role in Role}
        log.info("%d replicas changed role: %s (first: %s; each at DEBUG)", len(changes),
                 ", ".join(f"{n} {role.name.lower()}" for role, n in counts.items() if n),
                 ", ".join(f"{p.topic}-{p.partition}" for p in changes[:ROLE_CHANGES_LOGGED_EACH]))

    def _change_role(self, p: Partition, topic: md.Topic, ps: md.PartitionState, now: int) -> None:
        min_isr = topic.config.min_insync_replicas
        if not self.active:
            if p.role != Role.OFFLINE:
                self.on_unfollow(p)
                p.go_offline()
            p.state = ps
            return
        if ps.leader == self.broker_id:
            if p.role == Role.LEADER and p.leader_epoch == ps.leader_epoch:
                p.update_leader_state(ps, min_isr, now)
            else:
                if p.role == Role.FOLLOWER:
                    self.on_unfollow(p)
                p.become_leader(ps, min_isr, now)
            return
        if p.role == Role.FOLLOWER and p.leader_epoch == ps.leader_epoch and p.leader_id == ps.leader:
            p.state = ps
            return
        if p.role == Role.FOLLOWER:
            self.on_unfollow(p)
        p.become_follower(ps)
        if p.role == Role.FOLLOWER:
            self.on_follow(p)

    def _directory(self, topic: md.Topic, partition: int) -> Path:
        return self.logs_dir / f"{topic.name}-{partition}.{topic.topic_id[:12]}"

    def _open_files(self, topic: md.Topic, partition: int) -> ReplicaStore:
        directory = self._directory(topic, partition)
        directory.mkdir(parents=True, exist_ok=True)
        return self._open_store(directory, topic, partition)

    def _open(self, topic: md.Topic, ps: md.PartitionState) -> Partition:
        return self._add(topic, ps.partition, self._open_files(topic, ps.partition))

    def _add(self, topic: md.Topic, partition: int, store: ReplicaStore) -> Partition:
        p = Partition(topic.name, partition, topic.topic_id, self._directory(topic, partition), store,
                      self.broker_id, self.lag_time_max_ms, clock=self.clock)
        self.partitions[p.key] = p
        return p

    def _open_off_loop(self, key: tuple[str, int], topic: md.Topic) -> bool:
        """Open the replica on the disk executor (True), unless it is brand new or no loop runs
        here (False: open inline). An open already under way takes the newest image when it ends."""
        if key in self._opening:
            return True
        if not self._directory(topic, key[1]).exists():
            # Nothing to recover: a new topic's leader must serve as soon as its broker's image
            # names it (callers that just saw the topic created produce without retrying).
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._opening[key] = loop.create_task(self._open_in_background(key, topic), name=f"open-{key[0]}-{key[1]}")
        return True

    async def _open_in_background(self, key: tuple[str, int], topic: md.Topic) -> None:
        directory = self._directory(topic, key[1])
        fut = self.disk.submit(directory, lambda: self._open_files(topic, key[1]), f"open {directory.name}")
        try:
            store = self._open_files(topic, key[1]) if fut is None else await asyncio.wrap_future(fut)
        except asyncio.CancelledError:  # broker stopping: close what the disk thread still opens
            if fut is not None:
                fut.add_done_callback(_close_opened_store)
            raise
        except Exception as exc:
            log.exception("%s-%d: opening the replica failed (%s); replica unavailable", key[0], key[1], exc)
            self.failed[key] = f"{type(exc).__name__}: {exc}"
            return
        finally:
            self._opening.pop(key, None)
        image = self._image
        current = None if image is None else image.topic(topic.name)
        state = None if current is None else image.partition(topic.name, key[1])  # type: ignore[union-attr]
        if (self._closed or current is None or current.topic_id != topic.topic_id or state is None
                or self.broker_id not in state.replicas):
            # Removed (or the broker stopped) while opening: close it, and delete it unless stopping.
            p = Partition(topic.name, key[1], topic.topic_id, directory, store, self.broker_id, self.lag_time_max_ms,
                          clock=self.clock)
            self._close_off_loop(p, delete_data=not self._closed)
            if not self._closed and image is not None:
                self.reconcile(image)  # a re-created topic of the same name opens its own replica now
            return
        self._add(topic, key[1], store)
        if image is not None:
            self.reconcile(image)  # the role the newest image gives it (and nothing else changes)

    async def wait_opened(self) -> None:
        """Every open under way has ended (registration waits for the replicas a restart recovers)."""
        while self._opening:
            await asyncio.wait(list(self._opening.values()))

    def _remove(self, p: Partition, delete_data: bool) -> None:
        if p.role == Role.FOLLOWER:
            self.on_unfollow(p)
        del self.partitions[p.key]
        p.go_offline()
        self._notify_role(p, Role.OFFLINE, -1)
        self._close_off_loop(p, delete_data)

    def _close_off_loop(self, p: Partition, delete_data: bool) -> None:
        """Close (and delete) a replica nothing on the loop reaches any more, on the disk executor;
        a later open of the same directory runs after it (same key)."""
        def close() -> None:
            try:
                p.close_files()
            finally:
                if delete_data:
                    shutil.rmtree(p.directory, ignore_errors=True)

        what = f"{'delete' if delete_data else 'close'} {p.directory.name}"
        fut = self.disk.submit(p.directory, close, what)
        if fut is None:
            close()
        else:
            fut.add_done_callback(disk_executor.log_failure(what))

    def remove_stale_dirs(self, image: md.MetadataImage) -> list[str]:
        """Delete replica directories of topics deleted (or deleted and re-created) while this
        broker was down. Only call with an image at least as new as our own registration."""
        removed = []
        for d in sorted(self.logs_dir.iterdir()):
            name, dot, id_prefix = d.name.rpartition(".")
            topic, dash, index = name.rpartition("-")
            if not (dot and dash and index.isdigit() and d.is_dir()):
                continue  # not ours: leave it alone
            t = image.topic(topic)
            state = image.partition(topic, int(index))
            stale = t is None or not t.topic_id.startswith(id_prefix) or state is None or (
                self.broker_id not in state.replicas)
            if stale:
                what = f"delete stale {d.name}"
                fut = self.disk.submit(d, functools.partial(shutil.rmtree, d, ignore_errors=True), what)
                if fut is None:
                    shutil.rmtree(d, ignore_errors=True)
                else:
                    fut.add_done_callback(disk_executor.log_failure(what))
                removed.append(d.name)
        if removed:
            log.info("removed replicas of deleted topics: %s", removed)
        return removed

    def retention_now_ms(self, wall_ms: int, monotonic_now_ms: int) -> int:
        return steady_wall_ms(wall_ms, monotonic_now_ms, *self._retention_anchor)

    def housekeeping(self, now: int, monotonic_now_ms: int) -> None:
        """Retention and producer expiry on every hosted replica (leaders and followers alike).
        On the loop: retention decides and cuts the segment list in memory, the log's disk job
        writes the checkpoint and deletes the files; producer expiry is in memory only."""
        self._housekeep(list(self.partitions.values()), now, monotonic_now_ms)

    async def housekeeping_in_turns(self, now: int, monotonic_now_ms: int) -> None:
        """`housekeeping` in slices of `limits.HOUSEKEEPING_REPLICAS_PER_LOOP_TURN` replicas with
        the loop's other work in between: at 3,000 replicas one pass held the loop for seconds
        under load (py-spy), past the broker session."""
        replicas = list(self.partitions.values())
        step = limits.HOUSEKEEPING_REPLICAS_PER_LOOP_TURN
        for start in range(0, len(replicas), step):
            if start:
                await asyncio.sleep(0)
            if self._closed:
                return
            # a replica removed meanwhile (topic deleted, moved away) is skipped
            self._housekeep([p for p in replicas[start:start + step] if self.partitions.get(p.key) is p],
                            now, monotonic_now_ms)

    def _housekeep(self, replicas: list[Partition], now: int, monotonic_now_ms: int) -> None:
        retention_now = self.retention_now_ms(now, monotonic_now_ms)
        for p in replicas:
            try:
                before = p.log_start_offset
                if p.store.apply_retention(retention_now) != before:
                    p.notify()
                p.store.expire_producers(now, monotonic_now_ms)
            except Exception:
                log.exception("%s-%d: housekeeping failed", p.topic, p.partition)

    def leaders(self) -> Iterable[Partition]:
        return [p for p in self.partitions.values() if p.role == Role.LEADER]

    def hw_checkpoints_due(self) -> list[tuple[Partition, int]]:
        """(partition, HW) of each partition whose HW moved since its last checkpoint, read on
        the loop; `write_hw_checkpoints` may then run on another thread."""
        return [(p, p.high_watermark) for p in self.partitions.values() if p.high_watermark != p._checkpointed_hw]

    def close(self) -> None:
        """Shutdown: close every replica inline (the gRPC server has stopped). Opens still under
        way close their store when they end."""
        self._closed = True
        if self._more_to_open is not None:
            self._more_to_open.cancel()
        for task in self._opening.values():
            task.cancel()
        for p in list(self.partitions.values()):
            if p.role == Role.FOLLOWER:
                self.on_unfollow(p)
            del self.partitions[p.key]
            p.close()
            self._notify_role(p, Role.OFFLINE, -1)


def describe_partition(p: Partition | None) -> dict[str, Any]:
    if p is None:
        return {"high_watermark": -1, "log_start_offset": -1, "last_stable_offset": -1}
    return {"high_watermark": p.high_watermark, "log_start_offset": p.log_start_offset,
            "last_stable_offset": p.last_stable_offset()}


def _close_opened_store(fut: Any) -> None:
    """Done-callback (disk thread) of an open whose waiter was cancelled: close what it opened."""
    if not fut.cancelled() and fut.exception() is None:
        try:
            fut.result().close()
        except Exception:
            log.exception("closing a replica opened during shutdown failed")


def write_hw_checkpoints(due: list[tuple[Partition, int]]) -> None:
    for p, hw in due:
        try:
            p.write_hw_checkpoint(hw)
        except OSError as exc:
            log.warning("HW checkpoint of %s-%d failed: %s", p.topic, p.partition, exc)
