"""The group coordinator on a broker: the `Groups` gRPC service and one shell per led
partition of `__consumer_offsets` (the pure cores are `semel.coordinator.group_*`/`offsets`).

Theory of operation (one asyncio loop, like the rest of the broker):

* **Roles.** A role listener on the replica manager sees every leadership change of an
  offsets partition. On becoming leader the partition is *loading* (requests for its groups
  answer COORDINATOR_LOAD_IN_PROGRESS): we wait until the high watermark reaches the log end
  we had when elected (everything the previous leader may have acknowledged), then
  `load_shard` replays the RocksDB view plus the log after it (on the disk executor, so the
  loop never waits for that read). On losing leadership (or a new
  leader epoch) the shard is dropped and every waiting request answers NOT_COORDINATOR.
* **Writes.** Requests go through `PartitionRuntime` (per-group FIFO, one write in flight per
  group). An `Append` is appended to the partition as leader at once (min ISR checked first,
  so a refused append wrote nothing); its base offset goes back to the runtime.
* **The tail.** One task per loaded partition reads the partition from its cursor up to the
  high watermark whenever the partition changes, folds every batch into the view, and hands
  the batches to `runtime.on_committed` in log order. Our own writes complete there (and the
  waiting RPC is answered); everything else is replayed: transaction COMMIT/ABORT markers that
  the transaction coordinator's WriteTxnMarkers handler appended to this partition resolve
  pending transactional offsets here, with no hook in the transaction code (a marker is just a
  committed batch of the partition). The load replays markers the same way.
* **Timers.** Every `tick_ms` each loaded shard enqueues `prepare_expire` for groups with a
  member past its session or rebalance deadline; every OFFSETS_RETENTION_CHECK_INTERVAL_MS the
  offsets of empty groups older than the retention expire.
* **Clocks** (`self.clock`, the replica manager's: the host's, or a test's fake). Session and
  revocation deadlines, and the pacing of the timers, read the monotonic clock, so a step of the
  wall clock neither expires a live member nor keeps a dead one; what is stored (commit
  timestamps, batch timestamps) and offset retention read the wall clock, as Kafka's.
* A request whose write does not commit within its deadline answers REQUEST_TIMED_OUT
  (outcome unknown; the write may still commit, and is then applied normally).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from semel import internal_topics, limits
from semel.cluster.broker import write_path
from semel.cluster.broker.produce_validation import unset_fields
from semel.cluster.broker.replica_manager import Partition, Role, WriteResult
from semel.coordinator import group_wire as gw
from semel.coordinator.group_log import (
    CoordinatorShard,
    GroupView,
    KvViewBackend,
    MemoryViewBackend,
    build_batch,
    load_shard,
)
from semel.coordinator.group_runtime import Append, PartitionRuntime, Prepare, Reply
from semel.coordinator.group_records import MemberState
from semel.coordinator.group_state import GroupConfig, GroupDecision, HeartbeatRequest, HeartbeatResponse
from semel.coordinator.offsets import CommitDecision, OffsetsConfig
from semel.storage.batch import HEADER_BYTES, decode_header, iter_batches
from semel.topic_partition import TopicPartition
from semel.v1 import broker_pb2 as bpb
from semel.v1 import broker_pb2_grpc as bgrpc
from semel.v1 import common_pb2 as pb
from semel.v1 import group_pb2 as gpb
from semel.v1 import group_pb2_grpc as ggrpc

if TYPE_CHECKING:
    from semel.cluster.broker.host import CoordinatorHost

log = logging.getLogger("semel.groups")

OFFSETS = internal_topics.CONSUMER_OFFSETS_TOPIC
SERVICE_NAME = "semel.v1.Groups"
REQUEST_TIMEOUT_MS = limits.GROUP_WRITE_TIMEOUT_MS  # module name: tests shrink it
READ_CHUNK_BYTES = 1024 * 1024       # bytes of the offsets partition read per step (load and tail)
TAIL_IDLE_WAIT_S = 1.0               # the tail re-checks at least this often (role changes)
RELOAD_BACKOFF_S = 1.0              # a failed load (or tail) is retried after this, while still leader
LISTOFFSETS_TIMEOUT_S = 1.0          # describe/reset ask partition leaders for offsets, bounded
EARLIEST, LATEST = -2, -1


@dataclasses.dataclass(slots=True)
class _Loaded:
    partition: Partition
    leader_epoch: int
    runtime: PartitionRuntime
    view: GroupView
    cursor: int                      # every batch below it was handed to the runtime
    task: asyncio.Task[None] | None = None
    last_retention_ms: int = 0
    expiring: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(slots=True)
class _HeldHeartbeat:
    """A settled member's heartbeat held until it has something to do (see
    `GroupCoordinator.wait_for_new_target`)."""

    epoch: int
    assigned: frozenset[TopicPartition]
    event: asyncio.Event


class GroupCoordinator:
    """Hosts the coordinator shards of the offsets partitions this broker leads."""

    def __init__(self, broker: CoordinatorHost, group_config: GroupConfig, offsets_config: OffsetsConfig | None = None,
                 tick_ms: int | None = None) -> None:
        self.b = broker
        self.clock = broker.rm.clock  # wall: what is stored; monotonic: sessions and pacing
        self.group_config = group_config
        self.offsets_config = offsets_config or OffsetsConfig()
        self.tick_ms = tick_ms or max(20, min(1000, group_config.heartbeat_interval_ms // 2))
        self.loaded: dict[int, _Loaded] = {}
        self.loading: dict[int, asyncio.Task[None]] = {}
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._internal: dict[int, Callable[[Reply], None]] = {}
        self._next_request = 1
        self._memory_views: dict[int, MemoryViewBackend] = {}
        self.corrupt_records_skipped = 0  # undecodable batches/records of __consumer_offsets skipped (logged)
        self._timer: asyncio.Task[None] | None = None
        self._counts_version = -1
        self._counts: dict[str, int] = {}
        # KIP-890 checks for TxnOffsetCommit batches, run right before their append:
        # (producer id, epoch) -> (check, produce data) from the transaction verifier.
        self.txn_checks: dict[tuple[int, int], tuple[Callable[[Any], None], Any]] = {}
        # members of a Kafka classic group (JoinGroup, semel.cluster.kafka.group_handlers): a
        # group is either classic or Semel's own, so a heartbeat may not join one that has some
        self.classic_member_count: Callable[[str], int] = lambda group_id: 0
        # Held heartbeats (ConsumerGroupHeartbeatRequest.max_wait_ms): __consumer_offsets
        # partition -> group id -> member id -> what the member owns at which epoch, and the
        # event that answers its call (by partition: a dispatch looks at its own groups only)
        self._held: dict[int, dict[str, dict[str, _HeldHeartbeat]]] = {}
        self.heartbeats_held = 0  # now
        broker.rm.add_role_listener(self._on_role)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._timer = asyncio.get_running_loop().create_task(self._timer_loop(), name="group-timers")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for index in list(self.loading):
            self.loading.pop(index).cancel()
        for index in list(self.loaded):
            self._unload(index)

    # --- roles ----------------------------------------------------------------------------------
    def _on_role(self, p: Partition, role: Role, leader_epoch: int) -> None:
        if p.topic != OFFSETS:
            return
        index = p.partition
        current = self.loaded.get(index)
        if current is not None and (role != Role.LEADER or current.leader_epoch != leader_epoch
                                    or current.partition is not p):
            self._unload(index)
        task = self.loading.pop(index, None)
        if task is not None:
            task.cancel()
        if role == Role.LEADER and index not in self.loaded:
            self.loading[index] = asyncio.get_running_loop().create_task(
                self._load(p, leader_epoch), name=f"group-load-{index}")

    def _still_leader(self, p: Partition, leader_epoch: int) -> bool:
        return p.role == Role.LEADER and p.leader_epoch == leader_epoch and self.b.rm.get(OFFSETS, p.partition) is p

    async def _load(self, p: Partition, leader_epoch: int) -> None:
        index = p.partition
        try:
            target = p.log_end_offset
            while p.high_watermark < target:  # what the previous leader may have acknowledged
                if not self._still_leader(p, leader_epoch):
                    return
                await _wait_change(p, TAIL_IDLE_WAIT_S)
            if not self._still_leader(p, leader_epoch):
                return
            backend = self._view_backend(index)
            start, end, hw = p.log_start_offset, p.log_end_offset, p.high_watermark
            started = time.monotonic()

            def load() -> tuple[GroupView, CoordinatorShard]:  # on a disk thread: the view and the log
                view = GroupView(backend, index)
                if view.next_offset > end or view.next_offset < start:
                    log.warning("%s-%d: view at %d outside the log [%d, %d]; rebuilding", OFFSETS, index,
                                view.next_offset, start, end)
                    view.clear()
                return view, load_shard(view, _read_chunks(p, view.next_offset, hw), self.clock.monotonic_ms(), index,
                                        self.group_config, self.offsets_config)

            # One key per partition: a cancelled load still running ends before the next one starts.
            view, shard = await self.b.disk.run(("group-load", index), load, f"load of {OFFSETS}-{index}")
            if not self._still_leader(p, leader_epoch):
                return
            self._report_corrupt(index, shard)
            loaded = _Loaded(p, leader_epoch, PartitionRuntime(shard), view, shard.next_offset,
                             last_retention_ms=self.clock.monotonic_ms())
            self.loaded[index] = loaded
            loaded.task = asyncio.get_running_loop().create_task(self._tail(loaded), name=f"group-tail-{index}")
            log.info("%s-%d: coordinator loaded at epoch %d (%d groups, up to offset %d, %.0f ms)", OFFSETS, index,
                     leader_epoch, len(shard.groups.groups), shard.next_offset, (time.monotonic() - started) * 1000)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s-%d: loading the coordinator failed; retrying", OFFSETS, index)
            if self.loading.get(index) is asyncio.current_task():
                del self.loading[index]
            asyncio.get_running_loop().call_later(RELOAD_BACKOFF_S, self._reload, p, leader_epoch)
        finally:
            if self.loading.get(index) is asyncio.current_task():
                del self.loading[index]

    def _reload(self, p: Partition, leader_epoch: int) -> None:
        """Load again after a failure, if we still lead at that epoch and nothing else did."""
        index = p.partition
        if index in self.loaded or index in self.loading or not self._still_leader(p, leader_epoch):
            return
        self.loading[index] = asyncio.get_running_loop().create_task(self._load(p, leader_epoch),
                                                                     name=f"group-load-{index}")

    def _unload(self, index: int) -> None:
        loaded = self.loaded.pop(index, None)
        if loaded is None:
            return
        if loaded.task is not None:
            loaded.task.cancel()
        self._dispatch(loaded, loaded.runtime.unload())
        log.info("%s-%d: coordinator unloaded", OFFSETS, index)

    def _view_backend(self, index: int) -> Any:
        kv = self.b.kv  # None until the broker opened RocksDB
        if kv is not None:
            return KvViewBackend(kv)
        return self._memory_views.setdefault(index, MemoryViewBackend())

    # --- the tail: committed batches -> view + runtime -------------------------------------------
    async def _tail(self, loaded: _Loaded) -> None:
        p = loaded.partition
        try:
            while self.loaded.get(p.partition) is loaded:
                self._catch_up(loaded)
                await _wait_change(p, TAIL_IDLE_WAIT_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s-%d: coordinator tail failed; reloading", OFFSETS, p.partition)
            if self.loaded.get(p.partition) is loaded:
                self._unload(p.partition)
                asyncio.get_running_loop().call_later(RELOAD_BACKOFF_S, self._reload, p, loaded.leader_epoch)

    def _catch_up(self, loaded: _Loaded) -> None:
        p = loaded.partition
        while loaded.cursor < p.high_watermark and self.loaded.get(p.partition) is loaded:
            data = p.store.read(loaded.cursor, READ_CHUNK_BYTES, p.high_watermark).data
            batches = [(h, payload) for h, payload in iter_batches(data) if h.next_offset > loaded.cursor]
            if not batches:
                return
            for h, payload in batches:
                loaded.view.apply_batch(h, payload)
            loaded.cursor = batches[-1][0].next_offset
            self._dispatch(loaded, loaded.runtime.on_committed(batches, self.clock.wall_clock_ms(),
                                                               self.clock.monotonic_ms()))
            self._report_corrupt(p.partition, loaded.runtime.shard)

    def _report_corrupt(self, index: int, shard: CoordinatorShard) -> None:
        """Log and count the undecodable records the shard skipped (it keeps loading past them)."""
        for message in shard.take_corrupt():
            log.error("%s-%d: skipped %s", OFFSETS, index, message)
            self.corrupt_records_skipped += 1

    # --- submitting requests -----------------------------------------------------------------------
    def lookup(self, group_id: str) -> tuple[_Loaded | None, pb.ErrorCode, str]:
        """(shard of the group, NONE) or (None, NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS / ...)."""
        if not group_id or len(group_id.encode()) > limits.MAX_GROUP_ID_BYTES:
            return None, pb.INVALID_GROUP_ID, f"group id must be 1..{limits.MAX_GROUP_ID_BYTES} bytes"
        topic = self.b.quorum.image().topic(OFFSETS)
        if topic is None:
            return None, pb.COORDINATOR_NOT_AVAILABLE, f"{OFFSETS} does not exist yet"
        index = internal_topics.coordinator_partition(group_id, len(topic.partitions))
        loaded = self.loaded.get(index)
        if loaded is not None:
            return loaded, pb.NONE, ""
        if index in self.loading:
            return None, pb.COORDINATOR_LOAD_IN_PROGRESS, f"{OFFSETS}-{index} is loading on broker {self.b.config.broker_id}"
        return None, pb.NOT_COORDINATOR, (f"broker {self.b.config.broker_id} is not the coordinator of {group_id!r} "
                                          f"({OFFSETS}-{index})")

    async def submit(self, loaded: _Loaded, group_id: str, prepare: Prepare,
                     timeout_ms: int = REQUEST_TIMEOUT_MS) -> Reply:
        rid = self._next_request
        self._next_request += 1
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._dispatch(loaded, loaded.runtime.submit(rid, group_id, prepare, self.clock.wall_clock_ms(),
                                                     self.clock.monotonic_ms()))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_ms / 1000)
        except asyncio.TimeoutError:
            return Reply(rid, None, pb.REQUEST_TIMED_OUT)
        finally:
            self._waiting.pop(rid, None)

    def _submit_internal(self, loaded: _Loaded, group_id: str, prepare: Prepare, done: Callable[[Reply], None]) -> None:
        rid = self._next_request
        self._next_request += 1
        self._internal[rid] = done
        self._dispatch(loaded, loaded.runtime.submit(rid, group_id, prepare, self.clock.wall_clock_ms(),
                                                     self.clock.monotonic_ms()))

    def _dispatch(self, loaded: _Loaded, outputs: list[Any]) -> None:
        queue = list(outputs)
        while queue:
            out = queue.pop(0)
            if isinstance(out, Reply):
                fut = self._waiting.pop(out.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(out)
                callback = self._internal.pop(out.request_id, None)
                if callback is not None:
                    callback(out)
            else:
                queue.extend(self._append(loaded, out))
        if self._held:
            self._wake_held(loaded)

    # --- held heartbeats ---------------------------------------------------------------------------
    def _wake_held(self, loaded: _Loaded) -> None:
        """Release the held heartbeats of members of `loaded`'s groups that have something to do:
        the group's epoch moved on and the member's target is no longer what it owns, or it is
        no longer a member (all of them once `loaded` is unloaded). A member whose target did not
        change stays held: waking every member on every epoch bump would cost O(members) calls
        per join, O(members^2) while a big group forms. O(groups with held heartbeats on this
        partition), plus O(held members) of a group whose epoch moved."""
        index = loaded.partition.partition
        by_group = self._held.get(index)
        if not by_group:
            return
        gone = self.loaded.get(index) is not loaded
        groups = loaded.runtime.shard.groups
        for group_id, held in list(by_group.items()):
            group = groups.group(group_id)
            for member_id, h in list(held.items()):
                if gone or group is None:
                    wake = True
                elif group.group_epoch == h.epoch:
                    continue
                else:
                    wake = member_id not in group.members or group.target.get(member_id) != h.assigned
                if wake:
                    h.event.set()
                    del held[member_id]
            if not held:
                del by_group[group_id]
        if not by_group:
            del self._held[index]

    async def wait_for_new_target(self, loaded: _Loaded, group_id: str, member_id: str, epoch: int,
                                  assigned: frozenset[TopicPartition], timeout_s: float) -> bool:
        """Wait until member `member_id` of `group_id` (settled at `epoch`, owning `assigned`) has
        something to do (True) or `timeout_s` passed (False). Nothing is held beyond
        `limits.MAX_HELD_GROUP_HEARTBEATS` (False at once)."""
        group = loaded.runtime.shard.groups.group(group_id)
        if group is None or group.group_epoch != epoch or self.loaded.get(loaded.partition.partition) is not loaded:
            return True
        if self.heartbeats_held >= limits.MAX_HELD_GROUP_HEARTBEATS or timeout_s <= 0:
            return False
        index = loaded.partition.partition
        held = self._held.setdefault(index, {}).setdefault(group_id, {})
        previous = held.get(member_id)
        if previous is not None:  # a retried call: the older one answers now
            previous.event.set()
        h = held[member_id] = _HeldHeartbeat(epoch, assigned, asyncio.Event())
        self.heartbeats_held += 1
        try:
            await asyncio.wait_for(h.event.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self.heartbeats_held -= 1
            by_group = self._held.get(index, {})
            held = by_group.get(group_id, {})
            if held.get(member_id) is h:
                del held[member_id]
                if not held:
                    del by_group[group_id]
                if not by_group:
                    self._held.pop(index, None)

    def _append(self, loaded: _Loaded, append: Append) -> list[Any]:
        p = loaded.partition
        now, monotonic = self.clock.wall_clock_ms(), self.clock.monotonic_ms()
        if self.loaded.get(p.partition) is not loaded or not self._still_leader(p, loaded.leader_epoch):
            return loaded.runtime.on_append_failed(append.token, pb.NOT_COORDINATOR, now, monotonic)

        def write() -> WriteResult:
            verification = self.txn_checks.pop((append.producer_id, append.producer_epoch), None)
            if verification is not None:
                check, produce_data = verification
                check(produce_data)  # no await between this and the append (a marker could intervene)
            sequence = _next_sequence(p, append.producer_id, append.producer_epoch) if append.producer_id >= 0 else -1
            encoded = build_batch(append.records, now, append.producer_id, append.producer_epoch, sequence)
            header = decode_header(encoded, 0, verify_crc=False)
            return p.append_as_leader(header, encoded[HEADER_BYTES:], now)

        # min ISR checked first, so a refused write wrote nothing; the tail sees the commit
        result = write_path.append_unwaited(p, write, write_path.GROUP_LOG)
        if result.error_code != pb.NONE or result.duplicate:
            return loaded.runtime.on_append_failed(append.token, result.error_code or pb.REQUEST_TIMED_OUT, now,
                                                   monotonic)
        loaded.runtime.on_appended(append.token, result.base_offset)
        return []

    # --- timers ----------------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_ms / 1000)
            self.tick()

    def tick(self) -> None:
        """One round of the timers: expired members (monotonic deadlines), and, paced on the
        monotonic clock, offset retention (by the wall clock, against commit timestamps)."""
        monotonic = self.clock.monotonic_ms()
        for loaded in list(self.loaded.values()):
            try:
                self._expire_members(loaded, monotonic)
                if monotonic - loaded.last_retention_ms >= limits.OFFSETS_RETENTION_CHECK_INTERVAL_MS:
                    loaded.last_retention_ms = monotonic
                    self._expire_offsets(loaded, self.clock.wall_clock_ms())
            except Exception:
                log.exception("%s-%d: group timers failed", OFFSETS, loaded.partition.partition)

    def _expire_members(self, loaded: _Loaded, monotonic_ms: int) -> None:
        for gid in loaded.runtime.shard.groups.expired_groups(monotonic_ms):
            if gid in loaded.expiring:
                continue
            loaded.expiring.add(gid)

            def prepare(shard: CoordinatorShard, at_ms: int, gid: str = gid) -> GroupDecision:
                del at_ms  # the wall clock: deadlines are monotonic
                decision = shard.groups.prepare_expire(gid, self.clock.monotonic_ms(), self.partition_counts())
                if decision is not None:
                    log.info("group %s: removing expired members %s", gid, list(decision.removed_members))
                return decision or GroupDecision(gid, -1, ())

            def done(reply: Reply, gid: str = gid) -> None:
                loaded.expiring.discard(gid)

            self._submit_internal(loaded, gid, prepare, done)

    def _expire_offsets(self, loaded: _Loaded, now: int) -> None:
        for decision in loaded.runtime.shard.offsets.prepare_expire(loaded.runtime.shard.groups, now):
            gid = decision.group_id

            def prepare(shard: CoordinatorShard, at_ms: int, gid: str = gid) -> CommitDecision:
                again = [d for d in shard.offsets.prepare_expire(shard.groups, at_ms) if d.group_id == gid]
                return again[0] if again else CommitDecision(gid, pb.NONE)

            self._submit_internal(loaded, gid, prepare, lambda reply: None)

    # --- helpers for the servicer -------------------------------------------------------------------
    def partition_counts(self) -> dict[str, int]:
        image = self.b.quorum.image()
        if image.version != self._counts_version:
            self._counts = {name: len(t.partitions) for name, t in image.topics.items() if not t.internal}
            self._counts_version = image.version
        return self._counts

    async def list_offsets(self, queries: list[tuple[TopicPartition, int]], read_committed: bool
                           ) -> dict[tuple[TopicPartition, int], int]:
        """ListOffsets at each partition's leader: {(tp, timestamp_ms or -1/-2): offset}; missing = unknown."""
        image = self.b.quorum.image()
        by_leader: dict[int, list[tuple[TopicPartition, int]]] = {}
        for tp, ts in queries:
            state = image.partition(tp.topic, tp.partition)
            if state is not None and state.leader >= 0:
                by_leader.setdefault(state.leader, []).append((tp, ts))
        out: dict[tuple[TopicPartition, int], int] = {}

        async def ask(broker_id: int, items: list[tuple[TopicPartition, int]]) -> None:
            address = self.b.peers.broker_address(broker_id)
            if address is None:
                return
            request = bpb.ListOffsetsRequest(
                partitions=[bpb.ListOffsetsPartition(topic=tp.topic, partition=tp.partition, timestamp_ms=ts)
                            for tp, ts in items],
                isolation_level=bpb.READ_COMMITTED if read_committed else bpb.READ_UNCOMMITTED)
            try:
                resp = await bgrpc.BrokerStub(self.b.peers.channel(address)).ListOffsets(request, timeout=LISTOFFSETS_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                return
            for (tp, ts), r in zip(items, resp.results):
                if r.error_code == pb.NONE:
                    out[(tp, ts)] = r.offset

        await asyncio.gather(*(ask(b, items) for b, items in by_leader.items()))
        return out


async def _wait_change(p: Partition, timeout_s: float) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    p.add_waiter(fut)
    try:
        await asyncio.wait_for(fut, timeout_s)
    except asyncio.TimeoutError:
        pass
    finally:
        p.remove_waiter(fut)


def _read_chunks(p: Partition, start: int, end: int) -> Iterator[bytes]:
    offset = start
    while offset < end:
        read = p.store.read(offset, READ_CHUNK_BYTES, end)
        if not read.headers:
            return
        yield read.data
        if read.next_offset <= offset:
            return
        offset = read.next_offset


def _next_sequence(p: Partition, producer_id: int, producer_epoch: int) -> int:
    """The sequence a transactional batch of this producer must carry on this partition next
    (the coordinator appends on the producer's behalf, after its earlier TxnOffsetCommits)."""
    state = getattr(getattr(p.store, "store", None), "producer_state", None)
    info = None if state is None else state.producer(producer_id)
    if info is None or info.producer_epoch != producer_epoch or info.last_sequence < 0:
        return 0
    return (info.last_sequence + 1) % (1 << 31)


# --- the gRPC service ----------------------------------------------------------------------------------


class GroupsService(ggrpc.GroupsServicer):
    def __init__(self, coordinator: GroupCoordinator) -> None:
        self.c = coordinator

    async def ConsumerGroupHeartbeat(self, request: gpb.ConsumerGroupHeartbeatRequest,
                                     context: grpc.aio.ServicerContext) -> gpb.ConsumerGroupHeartbeatResponse:
        loaded, code, message = self.c.lookup(request.group_id)
        if loaded is None:
            return gpb.ConsumerGroupHeartbeatResponse(error_code=code, error_message=message,
                                                      member_id=request.member_id, member_epoch=-1)
        if self.c.classic_member_count(request.group_id) > 0:
            return gpb.ConsumerGroupHeartbeatResponse(
                error_code=pb.INVALID_REQUEST, member_id=request.member_id, member_epoch=-1,
                error_message=f"group {request.group_id!r} is a Kafka classic group (JoinGroup) with members")
        req = gw.heartbeat_request_from_proto(request)
        new_member_id = uuid.uuid4().hex

        def prepare(shard: CoordinatorShard, at_ms: int) -> GroupDecision:
            return shard.groups.prepare_heartbeat(req, at_ms, self.c.partition_counts(), new_member_id)

        reply = await self.c.submit(loaded, request.group_id, prepare)
        if isinstance(reply.result, HeartbeatResponse) and request.max_wait_ms > 0 and self._settled(loaded, req,
                                                                                                     reply.result):
            # Nothing to tell this member until a rebalance gives it another target: answer then
            # (the rebalance reaches it at once), or after the wait, like a heartbeat at its interval.
            wait_ms = min(request.max_wait_ms, reply.result.heartbeat_interval_ms, limits.MAX_GROUP_HEARTBEAT_WAIT_MS)
            if await self.c.wait_for_new_target(loaded, request.group_id, req.member_id, reply.result.member_epoch,
                                                reply.result.assignment or frozenset(), wait_ms / 1000):
                loaded, code, message = self.c.lookup(request.group_id)
                if loaded is None:
                    return gpb.ConsumerGroupHeartbeatResponse(error_code=code, error_message=message,
                                                              member_id=request.member_id, member_epoch=-1)
                reply = await self.c.submit(loaded, request.group_id, prepare)
        if not isinstance(reply.result, HeartbeatResponse):  # not written, or unknown
            return gpb.ConsumerGroupHeartbeatResponse(error_code=reply.error or pb.UNKNOWN_SERVER_ERROR,
                                                      error_message=_code_name(reply.error),
                                                      member_id=request.member_id, member_epoch=-1)
        return gw.heartbeat_response_to_proto(reply.result)

    @staticmethod
    def _settled(loaded: _Loaded, req: HeartbeatRequest, resp: HeartbeatResponse) -> bool:
        """The member owns exactly its assignment, STABLE at the group's epoch: it has nothing
        to do until the epoch moves on."""
        if resp.error != pb.NONE or resp.member_epoch <= 0 or req.member_epoch != resp.member_epoch:
            return False
        if req.owned is None or resp.assignment is None or req.owned != resp.assignment:
            return False
        group = loaded.runtime.shard.groups.group(req.group_id)
        cur = group.current.get(req.member_id) if group is not None else None
        return (group is not None and cur is not None and cur.state == MemberState.STABLE
                and cur.member_epoch == group.group_epoch)

    async def OffsetCommit(self, request: gpb.OffsetCommitRequest,
                           context: grpc.aio.ServicerContext) -> gpb.OffsetCommitResponse:
        loaded, code, message = self.c.lookup(request.group_id)
        if loaded is None:
            return gpb.OffsetCommitResponse(error_code=code, error_message=message)
        req = gw.commit_request_from_proto(request)
        reply = await self.c.submit(
            loaded, request.group_id, lambda shard, at_ms: shard.offsets.prepare_commit(req, shard.groups, at_ms))
        if not isinstance(reply.result, CommitDecision):
            return gpb.OffsetCommitResponse(error_code=reply.error or pb.UNKNOWN_SERVER_ERROR,
                                            error_message=_code_name(reply.error))
        return gw.commit_response_to_proto(reply.result)

    async def TxnOffsetCommit(self, request: gpb.TxnOffsetCommitRequest,
                              context: grpc.aio.ServicerContext) -> gpb.TxnOffsetCommitResponse:
        unset = unset_fields(request)
        if unset is not None:
            return gpb.TxnOffsetCommitResponse(error_code=pb.INVALID_REQUEST, error_message=unset)
        loaded, code, message = self.c.lookup(request.group_id)
        if loaded is None:
            return gpb.TxnOffsetCommitResponse(error_code=code, error_message=message)
        req = gw.txn_commit_request_from_proto(request)
        await self._verify(loaded, request)
        loaded = self.c.loaded.get(loaded.partition.partition)
        if loaded is None:
            return gpb.TxnOffsetCommitResponse(error_code=pb.NOT_COORDINATOR, error_message="coordinator moved")
        try:
            reply = await self.c.submit(
                loaded, request.group_id, lambda shard, at_ms: shard.offsets.prepare_txn_commit(req, shard.groups, at_ms))
        finally:
            self.c.txn_checks.pop((request.producer_id, request.producer_epoch), None)
        if not isinstance(reply.result, CommitDecision):  # not written (fenced producer, ...) or unknown
            return gpb.TxnOffsetCommitResponse(error_code=reply.error or pb.UNKNOWN_SERVER_ERROR,
                                               error_message=_code_name(reply.error))
        return gw.txn_commit_response_to_proto(reply.result)

    async def _verify(self, loaded: _Loaded, request: gpb.TxnOffsetCommitRequest) -> None:
        """KIP-890: before the producer's first write to this offsets partition in a transaction,
        the transaction coordinator must confirm the partition is in it (AddOffsetsToTxn); the
        check then runs right before the append (see `_append`)."""
        txn = getattr(self.c.b, "txn", None)
        if txn is None or request.producer_id < 0 or request.producer_epoch < 0:
            return
        data = bpb.PartitionProduceData(topic=OFFSETS, partition=loaded.partition.partition, batch=pb.RecordBatch(
            attributes=pb.TRANSACTIONAL, producer_id=request.producer_id, producer_epoch=request.producer_epoch,
            record_count=1))
        produce = bpb.ProduceRequest(transactional_id=request.transactional_id, partitions=[data])
        check = await txn.verify_produce(produce, self.c.b.quorum.image())
        if check is not None:
            self.c.txn_checks[(request.producer_id, request.producer_epoch)] = (check, produce.partitions[0])

    async def OffsetFetch(self, request: gpb.OffsetFetchRequest,
                          context: grpc.aio.ServicerContext) -> gpb.OffsetFetchResponse:
        if sum(len(t.partitions) for t in request.topics) > limits.MAX_PARTITIONS_PER_REQUEST:
            return gpb.OffsetFetchResponse(error_code=pb.INVALID_REQUEST, error_message=(
                f"too many partitions in one request (limit {limits.MAX_PARTITIONS_PER_REQUEST}, semel.limits)"))
        loaded, code, message = self.c.lookup(request.group_id)
        if loaded is None:
            return gpb.OffsetFetchResponse(error_code=code, error_message=message)
        shard = loaded.runtime.shard
        result = shard.offsets.fetch(shard.groups, request.group_id, gw.fetch_partitions_from_proto(request),
                                     request.require_stable, request.member_id, request.member_epoch)
        return gw.fetch_result_to_proto(result)

    async def ListGroups(self, request: gpb.ListGroupsRequest, context: grpc.aio.ServicerContext) -> gpb.ListGroupsResponse:
        unknown = sorted(set(request.states) - set(gpb.GroupState.values()))
        if unknown:
            return gpb.ListGroupsResponse(error_code=pb.INVALID_REQUEST, error_message=f"unknown group states {unknown}")
        resp = gpb.ListGroupsResponse(error_code=pb.NONE)
        states = frozenset(request.states)
        for index in sorted(self.c.loaded):
            resp.groups.extend(gw.list_groups(self.c.loaded[index].runtime.shard, states))
        if self.c.loading:
            resp.error_code = pb.COORDINATOR_LOAD_IN_PROGRESS
            resp.error_message = f"partitions {sorted(self.c.loading)} are loading: the list is partial"
        return resp

    async def DescribeGroups(self, request: gpb.DescribeGroupsRequest,
                             context: grpc.aio.ServicerContext) -> gpb.DescribeGroupsResponse:
        resp = gpb.DescribeGroupsResponse()
        if len(request.group_ids) > limits.MAX_GROUPS_PER_REQUEST:
            message = (f"too many group ids in one request (limit {limits.MAX_GROUPS_PER_REQUEST}, semel.limits); "
                       "nothing was described")
            return gpb.DescribeGroupsResponse(groups=[gpb.DescribedGroup(
                group_id=gid, error_code=pb.INVALID_REQUEST, error_message=message) for gid in request.group_ids])
        for group_id in request.group_ids:
            loaded, code, message = self.c.lookup(group_id)
            if loaded is None:
                resp.groups.append(gpb.DescribedGroup(group_id=group_id, error_code=code, error_message=message))
                continue
            lsos: dict[TopicPartition, int] = {}
            if request.include_offsets:
                shard = loaded.runtime.shard
                tps = set(shard.offsets.committed_offsets(group_id)) | shard.offsets.pending_partitions(group_id)
                found = await self.c.list_offsets([(tp, LATEST) for tp in sorted(tps)], read_committed=True)
                lsos = {tp: off for (tp, _), off in found.items()}
                loaded = self.c.loaded.get(loaded.partition.partition)
                if loaded is None:
                    resp.groups.append(gpb.DescribedGroup(group_id=group_id, error_code=pb.NOT_COORDINATOR))
                    continue
            resp.groups.append(gw.describe_group(loaded.runtime.shard, group_id, request.include_offsets, lsos))
        return resp

    async def DeleteGroup(self, request: gpb.DeleteGroupRequest, context: grpc.aio.ServicerContext) -> gpb.DeleteGroupResponse:
        loaded, code, message = self.c.lookup(request.group_id)
        if loaded is None:
            return gpb.DeleteGroupResponse(error_code=code, error_message=message)
        gid = request.group_id
        reply = await self.c.submit(loaded, gid, lambda shard, at_ms: shard.offsets.prepare_delete_group(gid, shard.groups))
        result = reply.result
        if isinstance(result, CommitDecision):
            return gpb.DeleteGroupResponse(error_code=result.error, error_message=result.error_message)
        return gpb.DeleteGroupResponse(error_code=reply.error, error_message=_code_name(reply.error))

    async def ResetOffsets(self, request: gpb.ResetOffsetsRequest,
                           context: grpc.aio.ServicerContext) -> gpb.ResetOffsetsResponse:
        gid = request.group_id
        if len(request.partitions) > limits.MAX_PARTITIONS_PER_REQUEST:
            return gpb.ResetOffsetsResponse(error_code=pb.INVALID_REQUEST, error_message=(
                f"too many partitions in one request (limit {limits.MAX_PARTITIONS_PER_REQUEST}, semel.limits); "
                "nothing was reset"))
        loaded, code, message = self.c.lookup(gid)
        if loaded is None:
            return gpb.ResetOffsetsResponse(error_code=code, error_message=message)
        image = self.c.b.quorum.image()
        parts = list(request.partitions)
        queries: list[tuple[TopicPartition, int]] = []
        for rp in parts:
            tp = TopicPartition(rp.topic, rp.partition)
            queries += [(tp, EARLIEST), (tp, LATEST)]
            if rp.strategy == gpb.OFFSET_RESET_TO_TIMESTAMP and rp.value >= 0:
                queries.append((tp, rp.value))
        found_rc = await self.c.list_offsets([q for q in queries if q[1] == LATEST], read_committed=True)
        found = await self.c.list_offsets([q for q in queries if q[1] != LATEST], read_committed=False)
        found.update(found_rc)

        def facts_of(rp: gpb.ResetPartition) -> gw.PartitionFacts | None:
            tp = TopicPartition(rp.topic, rp.partition)
            if image.partition(rp.topic, rp.partition) is None:
                return None
            start, lso = found.get((tp, EARLIEST)), found.get((tp, LATEST))
            if start is None or lso is None:
                return None
            at_ts = found.get((tp, rp.value)) if rp.strategy == gpb.OFFSET_RESET_TO_TIMESTAMP else None
            return gw.PartitionFacts(start, lso, at_ts if at_ts is not None and at_ts >= 0 else None)

        results: list[gpb.ResetPartitionResult] = []

        def compute(shard: CoordinatorShard) -> dict[TopicPartition, int]:
            results.clear()
            committed = shard.offsets.committed_offsets(gid)
            new: dict[TopicPartition, int] = {}
            for rp in parts:
                tp = TopicPartition(rp.topic, rp.partition)
                previous = committed[tp].committed_offset if tp in committed else -1
                err, offset = gw.resolve_reset(rp.strategy, rp.value, previous, facts_of(rp))
                results.append(gpb.ResetPartitionResult(topic=rp.topic, partition=rp.partition, error_code=err,
                                                         previous_offset=previous, new_offset=offset))
                if err == pb.NONE:
                    new[tp] = offset
            return new

        loaded = self.c.loaded.get(loaded.partition.partition)
        if loaded is None:
            return gpb.ResetOffsetsResponse(error_code=pb.NOT_COORDINATOR, error_message="coordinator moved")
        if request.dry_run:
            shard = loaded.runtime.shard
            compute(shard)
            if shard.groups.member_count(gid) > 0 or shard.offsets.has_pending(gid):
                return gpb.ResetOffsetsResponse(error_code=pb.NON_EMPTY_GROUP, partitions=results,
                                                error_message="the group has members or pending transactional offsets")
            return gpb.ResetOffsetsResponse(error_code=pb.NONE, partitions=results)
        reply = await self.c.submit(loaded, gid, lambda shard, at_ms: shard.offsets.prepare_reset(
            gid, compute(shard), shard.groups, at_ms))
        result = reply.result
        if isinstance(result, CommitDecision):
            return gpb.ResetOffsetsResponse(error_code=result.error, error_message=result.error_message,
                                            partitions=results)
        return gpb.ResetOffsetsResponse(error_code=reply.error, error_message=_code_name(reply.error))


def _code_name(code: pb.ErrorCode) -> str:
    if code == pb.REQUEST_TIMED_OUT:
        return "not committed in time; outcome unknown"
    return pb.ErrorCode.Name(code) if code in pb.ErrorCode.values() else str(code)


def install(broker: CoordinatorHost, server: grpc.aio.Server) -> GroupCoordinator:
    """Create the coordinator (role listener on the replica manager) and register the Groups
    servicer; call `coordinator.start()` once the loop runs and `await stop()` on shutdown."""
    cfg = broker.config
    session = cfg.group_session_timeout_ms
    interval = cfg.group_heartbeat_interval_ms
    interval = min(interval, max(1, session // 3))
    coordinator = GroupCoordinator(broker, GroupConfig(session_timeout_ms=session, heartbeat_interval_ms=interval))
    ggrpc.add_GroupsServicer_to_server(GroupsService(coordinator), server)
    return coordinator
