"""The transaction coordinator on a broker: the asyncio shell around the pure `TxnCoordinator`.

Theory of operation
-------------------
The broker coordinates the transactional ids of every `__transaction_state` partition it
leads. A role listener (`ReplicaManager.add_role_listener`) drives the core:

* LEADER at leader epoch E: `begin_loading(p)` (requests answer LOAD_IN_PROGRESS), wait until
  the partition's high watermark reaches the log end it had at election (every record an
  earlier leader committed is then committed here too), fold the log into the RocksDB view
  (`txn_log.load_partition` over `TxnStateView`, on the disk executor: the loop never waits
  for that read) and `loaded(p, E, metadata)`. The coordinator epoch *is* the leader epoch.
* FOLLOWER / OFFLINE / a newer epoch: `unload(p)`; parked requests answer NOT_COORDINATOR.

Actions of the core are performed here: `AppendRecords` is a leader append of the state batch
with acks=all, made only while the partition's leader epoch still equals the action's
coordinator epoch (a deposed coordinator can never write); the outcome goes back as
`write_committed` (the HW passed it), `write_failed` (refused before anything was written) or
`write_timed_out` (unknown: the wait for the HW goes on in the background, and leadership loss
unloads the partition). `MarkerSend` becomes a WriteTxnMarkers RPC to the partition leader;
answers and failures go back to the core, which retries until every marker is written and
then persists Complete*. A tick task (`TXN_TICK_INTERVAL_MS`) lets the core abort timed-out
transactions and send due markers.

Stale coordinators (docs/design.md, "Transactions"): this broker's image, and so its belief
that it leads a state partition at epoch E, may be stale (cut off from the quorum, or just
resumed from a pause) while a newer coordinator serves the id at E + 1 and the producer has
moved on. Answers that need a state write are safe (a deposed leader cannot commit), but a
refusal read from memory is not: an old epoch makes a healthy producer look "newer than the
coordinator" (INVALID_PRODUCER_EPOCH), unknown, or not in its transaction. So before any
answer in `STATE_REFUSALS` (fatal for the client) the shell confirms, by a linearizable read
of the metadata quorum (`QuorumRead.sync`), that this broker is still registered, unfenced
and the leader of the id's partition at the epoch its core loaded; if it cannot, the answer
is NOT_COORDINATOR (retriable: find the coordinator again). Healthy answers never pay for it.

Committed state records are also folded into the RocksDB view as they commit (when the view
is contiguous), so a later load replays little.

Producer ids: `ProducerIdAllocator` hands out ids from blocks allocated through the metadata
quorum (`AllocateProducerIds`): unique cluster-wide and never reused, even across restarts (a
restarted broker takes a fresh block; the rest of the old one is simply skipped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from semel import internal_topics, limits
from semel.cluster.broker import write_path
from semel.cluster.broker.coordinator_lookup import still_coordinates
from semel.cluster.broker.metadata_freshness import QuorumRead
from semel.cluster.broker.replica_manager import (
    Clock,
    Partition,
    PartitionError,
    Role,
    WriteResult,
)
from semel.cluster.metadata import state as md
from semel.coordinator import txn_wire
from semel.coordinator.txn_coordinator import (
    AppendRecords,
    PartitionFenced,
    Reply,
    TxnCoordinator,
)
from semel.coordinator.txn_log import (
    TxnLogGapError,
    TxnStateView,
    decode_records,
    load_partition,
)
from semel.coordinator.txn_markers import (
    MarkerSend,
    VerificationCache,
    authoritative_results,
)
from semel.coordinator.txn_state import (
    STATE_REFUSALS,
    TxnConfig,
    TxnResult,
    VerifyResult,
    refuses_on_state,
)
from semel.invariant import not_none
from semel.storage.batch import HEADER_BYTES, decode_header
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2 as pb
from semel.v1 import txn_pb2_grpc

if TYPE_CHECKING:
    from semel.cluster.broker.host import CoordinatorHost

log = logging.getLogger(__name__)

TXN_TICK_INTERVAL_MS = limits.TXN_TICK_INTERVAL_MS  # how often the shell lets the core send markers / scan for timeouts
STATE_WRITE_TIMEOUT_MS = limits.TXN_STATE_WRITE_TIMEOUT_MS  # module name: tests shrink it
MARKER_RPC_TIMEOUT_S = 15.0  # a WriteTxnMarkers call not answered by then is retried
REQUEST_WAIT_TIMEOUT_S = 30.0  # a request parked on the core longer than this answers REQUEST_TIMED_OUT


class ProducerIdAllocator:
    """Producer ids from blocks of the metadata quorum (never reused cluster-wide). The next
    block is fetched when the current one is 90% used, so ids rarely run out."""

    def __init__(self, broker: CoordinatorHost) -> None:
        self.b = broker
        self._next = 0
        self._last = -1  # current block: ids _next.._last
        self._spare: md.ProducerIdBlock | None = None  # the next block, fetched ahead
        self._refill: asyncio.Task[None] | None = None

    def take(self) -> int | None:
        """A fresh id now, or None (a new block is being allocated: retry)."""
        if self._next > self._last and self._spare is not None:
            self._next, self._last = self._spare.first_producer_id, self._spare.last_producer_id
            self._spare = None
        if self._next > self._last:
            self._start_refill()
            return None
        pid, self._next = self._next, self._next + 1
        if self._spare is None and self._last - self._next < limits.PRODUCER_ID_BLOCK_SIZE // 10:
            self._start_refill()
        return pid

    async def next_id(self, timeout_s: float = 5.0) -> int | None:
        deadline = time.monotonic() + timeout_s
        while True:
            pid = self.take()
            if pid is not None:
                return pid
            task = self._refill
            remaining = deadline - time.monotonic()
            if task is None or remaining <= 0:
                return None
            await asyncio.wait([task], timeout=remaining)

    async def wait_available(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until `take()` would answer an id, without taking it: the core takes ids
        synchronously, so a coordinator that has handed out none yet (fresh or restarted broker)
        gets its first block here instead of refusing its first producer."""
        deadline = time.monotonic() + timeout_s
        while self._next > self._last and self._spare is None:
            self._start_refill()
            task = self._refill
            remaining = deadline - time.monotonic()
            if task is None or remaining <= 0:
                return False
            await asyncio.wait([task], timeout=remaining)
        return True

    def _start_refill(self) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(self._allocate())

    async def _allocate(self) -> None:
        try:
            result = await self.b.quorum.submit(md.AllocateProducerIds(self.b.config.broker_id, self.b.broker_epoch),
                                                timeout_s=2.0)
        except Exception as exc:  # no quorum: the caller retries (COORDINATOR_NOT_AVAILABLE)
            log.info("producer id block not allocated: %s", exc)
            await asyncio.sleep(0.1)
            return
        if result.ok and isinstance(result.value, md.ProducerIdBlock):
            self._spare = result.value
        else:
            log.info("AllocateProducerIds refused: %s", pb.ErrorCode.Name(result.error))
            await asyncio.sleep(0.1)


class TxnCoordinatorShell:
    """Runs the transaction coordinator core of this broker (see the module docstring)."""

    def __init__(self, broker: CoordinatorHost, config: TxnConfig | None = None,
                 scan_interval_ms: int = limits.TRANSACTION_ABORT_SCAN_INTERVAL_MS) -> None:
        self.b = broker
        self.pids = ProducerIdAllocator(broker)
        self.config = config
        self.scan_interval_ms = scan_interval_ms
        self.core: TxnCoordinator | None = None
        self._loads: dict[int, asyncio.Task[None]] = {}
        self._epochs: dict[int, int] = {}  # partition -> leader epoch we load/serve at
        self._view_next: dict[int, int] = {}  # partition -> next offset the RocksDB view covers
        self._requests: dict[int, asyncio.Future[Reply]] = {}
        self._request_ids = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.verification: dict[tuple[str, int], VerificationCache] = {}
        self.markers_written = 0
        self.corrupt_records_skipped = 0  # undecodable batches/records of __transaction_state skipped by loads
        self.forged_fences = 0  # fence answers not believed: this broker still coordinates (see _confirmed_fences)
        self._quorum_read: QuorumRead | None = None
        # State writes, for `semel bench txn-scale` (is group commit worth it?): appends made,
        # transitions they carried, and appends started while another append to the same state
        # partition was still waiting for its commit (the ones a group commit could have merged).
        self.state_appends = 0
        self.state_transitions = 0
        self.state_appends_overlapping = 0
        self._appends_in_flight: dict[int, int] = {}  # state partition -> appends not yet committed or failed

    @property
    def clock(self) -> Clock:
        """The broker's clocks (`ReplicaManager.clock`), as the replicas and the group coordinator
        read them: a test that moves a fake clock moves the transaction coordinator too."""
        return self.b.rm.clock

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.b.rm.add_role_listener(self._on_role)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop(), name="txn-tick")

    async def stop(self) -> None:
        for task in [self._ticker, *self._loads.values(), *self._tasks]:
            if task is not None:
                task.cancel()

    def _core(self) -> TxnCoordinator | None:
        if self.core is None:
            topic = self.b.quorum.image().topic(internal_topics.TRANSACTION_STATE_TOPIC)
            if topic is None:
                return None
            self.core = TxnCoordinator(len(topic.partitions), self.pids.take, self.config,
                                       scan_interval_ms=self.scan_interval_ms)
        return self.core

    # --- roles -------------------------------------------------------------------------------
    def _on_role(self, p: Partition, role: Role, leader_epoch: int) -> None:
        if p.topic == internal_topics.TRANSACTION_STATE_TOPIC:
            self._on_state_partition(p, role, leader_epoch)
        elif role != Role.LEADER:
            self.verification.pop(p.key, None)

    def _on_state_partition(self, p: Partition, role: Role, leader_epoch: int) -> None:
        core = self._core()
        if core is None:
            return
        index = p.partition
        task = self._loads.pop(index, None)
        if task is not None:
            task.cancel()
        self._epochs.pop(index, None)
        self._view_next.pop(index, None)
        if role == Role.LEADER and self.b.kv is not None:
            self._epochs[index] = leader_epoch
            self._perform(core.begin_loading(index))
            self._loads[index] = asyncio.get_running_loop().create_task(
                self._load(p, index, leader_epoch), name=f"txn-load-{index}")
        else:
            self._perform(core.unload(index))

    async def _load(self, p: Partition, index: int, epoch: int) -> None:
        core = not_none(self.core, "the transaction coordinator shell acts only once started")
        started = time.monotonic()
        while True:
            try:
                await p.wait_for_hw(p.log_end_offset)
                break
            except PartitionError as exc:
                if exc.code == pb.NOT_LEADER_OR_FOLLOWER:
                    return  # leadership moved; the role listener unloads
                await asyncio.sleep(0.05)  # too many acks=all waiters on the partition: try again
        if p.role != Role.LEADER or p.leader_epoch != epoch:
            return
        view = TxnStateView(not_none(self.b.kv, "transactions need the broker's KV store"), index)
        # the log of the replica's store (PartitionStoreAdapter.log; the ReplicaStore protocol
        # does not name it)
        plog, hw = p.store.log, p.high_watermark  # type: ignore[attr-defined]
        try:
            # Reading the log and folding it into RocksDB takes as long as the log is: on the disk
            # executor. One key per partition: a cancelled load still running ends before the next.
            loaded = await self.b.disk.run(("txn-load", index), lambda: load_partition(view, plog, hw),
                                           f"load of {internal_topics.TRANSACTION_STATE_TOPIC}-{index}")
        except TxnLogGapError:
            log.exception("%s-%d cannot be loaded", internal_topics.TRANSACTION_STATE_TOPIC, index)
            return
        except Exception:  # never silently: a load that dies leaves the partition LOAD_IN_PROGRESS
            log.exception("%s-%d: loading failed", internal_topics.TRANSACTION_STATE_TOPIC, index)
            return
        if p.role != Role.LEADER or p.leader_epoch != epoch:
            return  # deposed while loading: the role listener unloaded (or reloads) the partition
        self._loads.pop(index, None)
        for error in loaded.corrupt:
            log.error("%s-%d: skipped while loading: %s", internal_topics.TRANSACTION_STATE_TOPIC, index, error)
        self.corrupt_records_skipped += len(loaded.corrupt)
        self._view_next[index] = loaded.next_offset
        self._perform(core.loaded(index, epoch, loaded.metadata.values()))
        log.info("txn coordinator: loaded %s-%d at epoch %d (%d ids, %d records replayed) in %.0f ms",
                 internal_topics.TRANSACTION_STATE_TOPIC, index, epoch, len(loaded.metadata), loaded.replayed_records,
                 (time.monotonic() - started) * 1000)

    # --- requests (called by the Transactions servicer) -------------------------------------------
    async def call(self, submit: Callable[[TxnCoordinator, int], list[Any]]) -> Reply:
        """Run one request on the core and wait for its `Reply`."""
        core = self._core()
        if core is None:
            return Reply(-1, TxnResult(pb.COORDINATOR_NOT_AVAILABLE, f"{internal_topics.TRANSACTION_STATE_TOPIC} does not exist yet"))
        self._request_ids += 1
        request_id = self._request_ids
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = fut
        try:
            self._perform(submit(core, request_id))
            return await asyncio.wait_for(asyncio.shield(fut), REQUEST_WAIT_TIMEOUT_S)
        except asyncio.TimeoutError:
            return Reply(request_id, TxnResult(pb.REQUEST_TIMED_OUT, "the coordinator did not answer in time; retry"))
        finally:
            self._requests.pop(request_id, None)

    # --- stale coordinators (see the module docstring) ---------------------------------------------
    async def verify(self, transactional_id: str, producer_id: int, producer_epoch: int,
                     partitions: Iterable[TopicPartition]) -> VerifyResult:
        """KIP-890 verification by the core; a refusal only once this broker confirmed it still
        coordinates the id."""
        core = self.core
        if core is None:
            return VerifyResult(pb.NOT_COORDINATOR, "no coordinator here")
        result = core.verify(transactional_id, producer_id, producer_epoch, partitions)
        if refuses_on_state(result) and not await self.confirmed(transactional_id):
            return VerifyResult(pb.NOT_COORDINATOR, _UNCONFIRMED + f" (it would have answered: {result.message})")
        return result

    async def authoritative(self, transactional_id: str, reply: Reply) -> Reply:
        """`reply`, or NOT_COORDINATOR if it is a state refusal this broker cannot confirm."""
        if reply.result.error in STATE_REFUSALS and not await self.confirmed(transactional_id):
            return Reply(reply.request_id, TxnResult(pb.NOT_COORDINATOR, _UNCONFIRMED +
                                                     f" (it would have answered: {reply.result.message})"))
        return reply

    async def confirmed(self, transactional_id: str) -> bool:
        """Whether this broker, per a freshly synced image, still leads the id's state partition
        at the epoch its core loaded it at (registered at its epoch, unfenced)."""
        core = self.core
        if core is None:
            return False
        partition = core.partition_of(transactional_id)
        machine = core.machine(partition)
        if machine is None:
            return False
        if not await self.quorum_read().sync():
            return False
        return core.machine(partition) is machine and still_coordinates(
            self.b.quorum.image(), self.b.config.broker_id, self.b.rm.broker_epoch,
            internal_topics.TRANSACTION_STATE_TOPIC, partition, machine.coordinator_epoch)

    def quorum_read(self) -> QuorumRead:
        if self._quorum_read is None:
            self._quorum_read = QuorumRead(self.b.quorum, limits.COORDINATOR_CONFIRM_TIMEOUT_MS)
        return self._quorum_read

    # --- actions -----------------------------------------------------------------------------
    def _perform(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Reply):
                fut = self._requests.get(action.request_id)
                if fut is not None and not fut.done():
                    fut.set_result(action)
            elif isinstance(action, AppendRecords):
                self._spawn(self._append(action))
            elif isinstance(action, MarkerSend):
                self._spawn(self._send_markers(action))
            elif isinstance(action, PartitionFenced):
                log.warning("txn coordinator: a newer coordinator owns %s-%d; unloaded",
                            internal_topics.TRANSACTION_STATE_TOPIC, action.partition)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append(self, action: AppendRecords) -> None:
        core = not_none(self.core, "the transaction coordinator shell acts only once started")
        p = self.b.rm.get(internal_topics.TRANSACTION_STATE_TOPIC, action.partition)
        # Written only while the leader epoch is the coordinator epoch: a deposed coordinator never writes.
        if p is None or p.role != Role.LEADER or p.leader_epoch != action.coordinator_epoch:
            self._perform(core.write_failed(action.write_id, pb.NOT_LEADER_OR_FOLLOWER, self.clock.wall_clock_ms()))
            return

        def write() -> WriteResult:
            header = decode_header(action.batch)
            return p.append_as_leader(header, action.batch[HEADER_BYTES:], self.clock.wall_clock_ms())

        out = write_path.start_append(p, write, write_path.TXN_STATE)
        if isinstance(out, WriteResult):  # refused before or by the append: nothing was written
            if out.error_code != pb.NOT_ENOUGH_REPLICAS:
                log.warning("txn state append to partition %d failed: %s", action.partition, out.message)
            self._perform(core.write_failed(action.write_id, out.error_code, self.clock.wall_clock_ms()))
            return
        in_flight = self._appends_in_flight.get(action.partition, 0)
        self.state_appends += 1
        self.state_transitions += 1
        self.state_appends_overlapping += 1 if in_flight else 0
        self._appends_in_flight[action.partition] = in_flight + 1
        try:
            result = await out.wait(STATE_WRITE_TIMEOUT_MS, forget_on_timeout=False)
            if result.error_code == pb.REQUEST_TIMED_OUT:
                self._perform(core.write_timed_out(action.write_id))
                # keep waiting: committed later, or leadership loss unloads the partition
                result = await out.wait(None)
        finally:
            left = self._appends_in_flight.get(action.partition, 1) - 1
            if left > 0:
                self._appends_in_flight[action.partition] = left
            else:
                self._appends_in_flight.pop(action.partition, None)
        if result.error_code != pb.NONE:
            return  # leadership lost: outcome unknown; the role listener unloads the partition
        if p.leader_epoch != action.coordinator_epoch:
            return
        self._fold_into_view(action.partition, result.base_offset, action.batch)
        self._perform(core.write_committed(action.write_id, self.clock.wall_clock_ms()))
        self._kick()  # a Prepare* just committed: send its markers now, not at the next tick

    def _fold_into_view(self, index: int, base_offset: int, batch: bytes) -> None:
        if self._view_next.get(index) != base_offset or self.b.kv is None:
            return  # not contiguous (a concurrent write committed first): the next load replays
        try:
            entries = decode_records(batch, 0)
            from dataclasses import replace

            entries = [replace(e, offset=base_offset + e.offset) for e in entries]
            kv = not_none(self.b.kv, "transactions need the broker's KV store")
            TxnStateView(kv, index).apply(entries, base_offset + len(entries))
            self._view_next[index] = base_offset + len(entries)
        except Exception:
            log.exception("folding a state record into the view failed (the next load replays it)")
            self._view_next.pop(index, None)

    # --- markers ---------------------------------------------------------------------------------
    def _leader_of(self, tp: TopicPartition) -> int | None:
        image = self.b.quorum.image()
        ps = image.partition(tp.topic, tp.partition)
        if ps is None:
            return self.b.config.broker_id  # gone: any broker answers UNKNOWN_TOPIC_OR_PARTITION
        if ps.leader == md.NO_LEADER:
            return None
        reg = image.broker(ps.leader)
        return None if reg is None or reg.fenced else ps.leader

    async def _send_markers(self, send: MarkerSend) -> None:
        core = not_none(self.core, "the transaction coordinator shell acts only once started")
        address = self.b.peers.broker_address(send.broker_id)
        try:
            if address is None:
                raise ConnectionError(f"broker {send.broker_id} has no address")
            stub = txn_pb2_grpc.TxnMarkersStub(self.b.peers.channel(address))
            resp = await stub.WriteTxnMarkers(txn_wire.write_markers_request(send), timeout=MARKER_RPC_TIMEOUT_S)
        except (grpc.aio.AioRpcError, ConnectionError) as exc:
            log.info("WriteTxnMarkers to broker %d failed: %s", send.broker_id, exc)
            self._perform(core.marker_failure(send, self.clock.wall_clock_ms(), self.clock.monotonic_ms()))
            return
        results = authoritative_results(txn_wire.write_markers_results(resp), send.broker_id, self.b.config.broker_id)
        if pb.TRANSACTION_COORDINATOR_FENCED in results.values():
            results = await self._confirmed_fences(send, results)
        self.markers_written += sum(1 for code in results.values() if code == pb.NONE)
        self._perform(core.marker_response(send, results, self.clock.wall_clock_ms(), self.clock.monotonic_ms()))
        self._kick()  # the broker's in-flight slot is free: send what waits for it

    async def _confirmed_fences(self, send: MarkerSend, results: dict[tuple[int, TopicPartition], pb.ErrorCode]
                                ) -> dict[tuple[int, TopicPartition], pb.ErrorCode]:
        """TRANSACTION_COORDINATOR_FENCED unloads a state partition: believed only once a freshly
        synced image says this broker no longer leads it at the marker's epoch. Otherwise the
        fence came from a marker this coordinator never sent (a client's forged epoch): the
        marker is retried (it must still be written; a prepared decision never flips), the
        partition stays loaded, and the error is logged."""
        synced = await self.quorum_read().sync()
        image = self.b.quorum.image()
        out = dict(results)
        for mk in send.markers:
            key = (mk.producer_id, mk.topic_partition)
            if out.get(key) != pb.TRANSACTION_COORDINATOR_FENCED or not synced:
                continue
            core = self.core
            partition = core.partition_of(mk.transactional_id) if core is not None else -1
            if still_coordinates(image, self.b.config.broker_id, self.b.rm.broker_epoch,
                                 internal_topics.TRANSACTION_STATE_TOPIC, partition, mk.coordinator_epoch):
                log.error("marker for %s (producer %d) in %s-%d refused as fenced by a newer coordinator epoch, but "
                          "this broker still coordinates %s-%d at epoch %d: a marker it never sent raised the epoch; "
                          "retrying", mk.transactional_id, mk.producer_id, mk.topic_partition.topic,
                          mk.topic_partition.partition, internal_topics.TRANSACTION_STATE_TOPIC, partition,
                          mk.coordinator_epoch)
                self.forged_fences += 1
                out[key] = pb.UNKNOWN_LEADER_EPOCH  # retried
        return out

    def _kick(self) -> None:
        core = self.core
        if core is not None and core.loaded_partitions():
            self._perform(core.tick(self.clock.wall_clock_ms(), self._leader_of, self.clock.monotonic_ms()))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TXN_TICK_INTERVAL_MS / 1000)
            core = self.core
            if core is None or not core.loaded_partitions():
                continue
            try:
                self._perform(core.tick(self.clock.wall_clock_ms(), self._leader_of, self.clock.monotonic_ms()))
            except Exception:
                log.exception("txn coordinator tick failed")

    # --- KIP-890 verification (partition side) -------------------------------------------------------
    def verification_cache(self, topic: str, partition: int) -> VerificationCache:
        cache = self.verification.get((topic, partition))
        if cache is None:
            cache = self.verification[(topic, partition)] = VerificationCache()
        return cache


_UNCONFIRMED = ("this broker cannot confirm it still coordinates this transactional id (its metadata may be "
                "stale); find the coordinator again")
