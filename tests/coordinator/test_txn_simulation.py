"""One-process simulation of the transaction protocol: the production coordinator core
(`TxnCoordinator`: state machines + marker channel) behind a miniature broker shell (a state
log per partition, appends with late/unknown/failed outcomes, failovers), partition leaders
(the real `ProducerStateManager` + the KIP-890 verification cache), and producers that
pause into zombies whose delayed writes and EndTxn calls land later (Jepsen's anomaly), and
now and then write to a partition they never added (KIP-890 verification refuses it).

Checked after draining every write, marker and timeout:
* no hanging transaction: no partition keeps an open transaction;
* every appended transactional batch of (pid, e) is closed by a marker of the *same*
  transaction (epoch e + 1) carrying the coordinator's durable decision for (pid, e);
* an EndTxn answered NONE for commit means the decision is commit (and never both ways).
Each seed is printed; a failure names its seed and replays exactly.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import random
import sys
from unittest import mock

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from semel.coordinator import txn_wire  # noqa: E402
from semel.coordinator.txn_coordinator import AppendRecords, Reply, TxnCoordinator  # noqa: E402
from semel.coordinator.txn_log import (  # noqa: E402
    TxnStateView,
    decode_records,
    decode_value,
    encode_value,
    load_partition,
)
from semel.coordinator.txn_markers import (  # noqa: E402
    MarkerChannelConfig,
    MarkerSend,
    VerificationCache,
)
from semel.coordinator.txn_state import (  # noqa: E402
    PREPARED,
    MarkerRequest,
    TxnState,
)
from semel.storage.batch import (  # noqa: E402
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    BatchHeader,
    Marker,
    with_offsets,
)
from semel.storage.kv import KvStore  # noqa: E402
from semel.storage.log import PartitionLog  # noqa: E402
from semel.storage.log_policy import LogConfig  # noqa: E402
from semel.storage.producer_state import Outcome, ProducerStateManager  # noqa: E402
from semel.topic_partition import TopicPartition  # noqa: E402
from semel.v1.common_pb2 import ErrorCode  # noqa: E402

TIMEOUT_MS = 2_000
PARTITIONS = tuple(TopicPartition("out", p) for p in range(3))
TIDS = ("tx-a", "tx-b")
FATAL = {ErrorCode.PRODUCER_FENCED, ErrorCode.TRANSACTION_TIMED_OUT, ErrorCode.INVALID_TXN_STATE,
         ErrorCode.INVALID_PRODUCER_ID_MAPPING, ErrorCode.INVALID_PRODUCER_EPOCH}


class Partition:
    """A partition leader: producer state, verification cache, and a log of what it appended."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.ps = ProducerStateManager()
        self.cache = VerificationCache(ttl_ms=10 * TIMEOUT_MS)
        self.offset = 0
        self.log: list[tuple] = []  # ("data", pid, epoch, offset) | ("marker", pid, epoch, commit, offset)

    def append_data(self, pid: int, epoch: int, seq: int, guard, now_ms: int) -> int:
        if guard is not None and self.cache.check(guard, now_ms) != ErrorCode.NONE:
            return ErrorCode.INVALID_TXN_STATE
        header = BatchHeader(self.offset, 0, 0, pid, epoch, seq, 1, ATTR_TRANSACTIONAL, now_ms, now_ms)
        decision = self.ps.validate(header, now_ms)
        if decision.outcome is Outcome.DUPLICATE:
            return ErrorCode.NONE
        if not decision.ok:
            return decision.error
        self.ps.apply(header)
        self.cache.on_appended(pid)
        self.log.append(("data", pid, epoch, self.offset))
        self.offset += 1
        return ErrorCode.NONE

    def append_marker(self, mk: MarkerRequest, now_ms: int) -> int:
        marker = Marker(mk.commit, mk.coordinator_epoch)
        decision = self.ps.validate_marker(mk.producer_id, mk.producer_epoch, marker)
        if not decision.ok:
            return decision.error
        header = BatchHeader(self.offset, 0, 0, mk.producer_id, mk.producer_epoch, -1, 1,
                             ATTR_CONTROL | ATTR_TRANSACTIONAL, now_ms, now_ms)
        self.ps.apply(header, marker)
        self.cache.on_marker(mk.producer_id)
        self.log.append(("marker", mk.producer_id, mk.producer_epoch, mk.commit, self.offset))
        self.offset += 1
        return ErrorCode.NONE


class ZombieWaiter:
    """Receives the answer to a zombie's delayed EndTxn(commit)."""

    def __init__(self, world: "World", ident: tuple[int, int]) -> None:
        self.world, self.ident = world, ident

    def answer(self, error: int, ident) -> None:
        if error == ErrorCode.NONE:
            assert self.world.decisions.get(self.ident) is True, "a zombie's EndTxn(commit) answered NONE without a commit"


class Coordinator:
    """The broker shell in miniature around the production `TxnCoordinator`: a state log per
    partition, appends whose outcome arrives later (committed, failed, or unknown first),
    markers delivered to the partitions (or lost), failover = unload + reload from the log
    with a newer coordinator epoch."""

    PARTITION_COUNT = 2

    def __init__(self, rnd: random.Random, world: "World", directory: pathlib.Path) -> None:
        self.rnd = rnd
        self.world = world
        self.epoch = 0  # the newest coordinator epoch handed out (leader epochs only grow)
        self.epochs: dict[int, int] = {p: 0 for p in range(self.PARTITION_COUNT)}
        self.next_pid = 1000
        self.logs: dict[int, list[tuple[str, bytes]]] = {p: [] for p in range(self.PARTITION_COUNT)}  # the reference
        # The real state partitions and the broker's RocksDB view: failover loads through them.
        self.plogs = {p: PartitionLog.open(directory / f"state-{p}", LogConfig(segment_bytes=64 * 1024), 0)
                      for p in self.logs}
        self.kv = KvStore.open(directory / "kv")
        self.views = {p: TxnStateView(self.kv, p, scan_page_entries=2) for p in self.logs}
        self.core = TxnCoordinator(
            self.PARTITION_COUNT, self._allocate,
            channel_config=MarkerChannelConfig(backoff_ms=1, backoff_max_ms=20), scan_interval_ms=100,
        )
        self.appends: dict[int, AppendRecords] = {}  # write id -> append whose outcome is not reported yet
        self.waiters: dict[int, object] = {}
        self.request_ids = itertools.count(1)
        for partition in self.logs:
            self.handle(self.core.loaded(partition, self.epoch, []))

    def _allocate(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def machines(self):
        return [self.core.machine(p) for p in self.core.loaded_partitions()]

    def call(self, waiter, method: str, *args) -> None:
        request_id = next(self.request_ids)
        self.waiters[request_id] = waiter
        self.handle(getattr(self.core, method)(request_id, *args))

    def handle(self, actions) -> None:
        for action in actions:
            if isinstance(action, AppendRecords):
                self.appends[action.write_id] = action
            elif isinstance(action, Reply):
                waiter = self.waiters.pop(action.request_id)
                ident = txn_wire.identity_of(action.result, action.completed) if action.result.ok else None
                waiter.answer(action.result.error, ident)
            elif isinstance(action, MarkerSend):
                self.deliver(action)
            else:
                raise AssertionError(f"unexpected {action}")

    def deliver(self, send: MarkerSend) -> None:
        now_ms = self.world.now_ms
        if self.rnd.random() < 0.15:
            self.handle(self.core.marker_failure(send, now_ms, now_ms))
            return
        parts = self.world.partitions
        results = {(mk.producer_id, mk.topic_partition): parts[mk.topic_partition].append_marker(mk, now_ms)
                   for mk in send.markers}
        self.handle(self.core.marker_response(send, results, now_ms, now_ms))

    def _durable(self, append: AppendRecords) -> None:
        assert append.coordinator_epoch == self.epochs[append.partition], "an append from a stale coordinator epoch"
        plog = self.plogs[append.partition]
        stamped = with_offsets(append.batch, plog.log_end_offset, append.coordinator_epoch)
        plog.append(stamped, self.world.now_ms)
        if self.rnd.random() < 0.2:  # the view catches up now and then (it may lag any amount)
            load_partition(self.views[append.partition], plog, plog.log_end_offset)
        for entry in decode_records(stamped):
            self.logs[append.partition].append((entry.transactional_id, encode_value(entry.metadata)))
            meta = entry.metadata
            if meta is not None and meta.state in PREPARED:
                self.world.decide((meta.prev_producer_id, meta.last_producer_epoch), meta.state is TxnState.PREPARE_COMMIT)

    def resolve_some(self) -> None:
        now_ms = self.world.now_ms
        for write_id in list(self.appends):
            roll = self.rnd.random()
            if roll < 0.4:
                continue
            if roll < 0.48:
                self.handle(self.core.write_timed_out(write_id))  # unknown for now
                continue
            append = self.appends.pop(write_id)
            if roll < 0.55:
                self.handle(self.core.write_failed(write_id, ErrorCode.NOT_ENOUGH_REPLICAS, now_ms))
            else:
                self._durable(append)
                self.handle(self.core.write_committed(write_id, now_ms))

    def failover(self) -> None:
        """Leadership of one state partition moves (to "another broker" that is this core
        reloaded): appends in flight may or may not have made it into the log."""
        partition = self.rnd.randrange(self.PARTITION_COUNT)
        self.handle(self.core.begin_loading(partition))
        for write_id, append in list(self.appends.items()):
            if append.partition == partition:
                del self.appends[write_id]
                if self.rnd.random() < 0.5:  # it reached the new leader's log before the move
                    self._durable(append)
        self.epoch += 1
        self.epochs[partition] = self.epoch
        reference: dict[str, object] = {}
        for tid, value in self.logs[partition]:
            meta = decode_value(tid, value)
            if meta is None:
                reference.pop(tid, None)
            else:
                reference[tid] = meta
        plog = self.plogs[partition]
        loaded = load_partition(self.views[partition], plog, plog.log_end_offset, chunk_bytes=512)
        assert loaded.metadata == reference, "load = view + replay disagrees with the full log"
        self.handle(self.core.loaded(partition, self.epochs[partition], loaded.metadata.values()))

    def close(self) -> None:
        for plog in self.plogs.values():
            plog.close()
        self.kv.close()

    def tick(self, now_ms: int) -> None:
        self.handle(self.core.tick(now_ms, lambda tp: tp.partition, now_ms))


class Producer:
    """One producer instance of a transactional id (may become a zombie)."""

    def __init__(self, world: "World", tid: str) -> None:
        self.world, self.tid = world, tid
        self.ident: tuple[int, int] | None = None
        self.phase = "init"  # init, begin, write, end, dead
        self.waiting = False
        self.partitions: list[TopicPartition] = []
        self.writes_left = 0
        self.write_failed = False
        self.commit = True
        self.zombie = False
        self.not_before_ms = 0  # a replacement may start late: the zombie's transaction then times out
        self._request: tuple | None = None

    # The coordinator answers here (now or once the write resolves).
    def answer(self, error: int, ident: tuple[int, int] | None) -> None:
        self.waiting = False
        if self.zombie:
            return
        kind = self._request[0]
        if error in FATAL:
            self.phase = "dead"
            return
        if error != ErrorCode.NONE:
            return  # retriable (or unknown outcome): the same request is sent again later
        if ident is not None and ident[0] >= 0:
            self.ident = ident
        if kind == "init":
            self.phase = "begin"
        elif kind == "add":
            self.phase = "write"
            targets = list(self.partitions)
            others = [tp for tp in PARTITIONS if tp not in targets]
            if others and self.world.rnd.random() < 0.05:
                targets.append(self.world.rnd.choice(others))  # a buggy client: writes without adding
            self.writes_left = len(targets)
            self.write_failed = False
            for tp in targets:
                self.world.queue_write(self, tp, *self.ident)
        elif kind == "end":
            if self._request[1]:
                self.world.acked_commits.add(self._request[2])
            self.phase = "begin"

    def step(self, now_ms: int) -> None:
        if self.zombie or self.waiting or self.phase in ("dead", "write") or now_ms < self.not_before_ms:
            return
        self.waiting = True  # the answer may come at once, inside call()
        coordinator = self.world.coordinator
        if self.phase == "init":
            self._request = ("init",)
            coordinator.call(self, "init_producer_id", self.tid, TIMEOUT_MS, now_ms)
        elif self.phase == "begin":
            self.partitions = self.world.rnd.sample(PARTITIONS, self.world.rnd.randint(1, 3))
            self._request = ("add",)
            coordinator.call(self, "add_partitions", self.tid, *self.ident, self.partitions, now_ms)
        else:  # end
            self._request = ("end", self.commit, self.ident)
            coordinator.call(self, "end_txn", self.tid, *self.ident, self.commit, now_ms)

    def write_done(self, error: int) -> None:
        if self.zombie:
            return
        self.writes_left -= 1
        self.write_failed |= error != ErrorCode.NONE
        if self.writes_left == 0:
            self.phase = "end"
            self.commit = not self.write_failed and self.world.rnd.random() < 0.8


class World:
    def __init__(self, seed: int, directory: pathlib.Path) -> None:
        self.rnd = random.Random(seed)
        self.now_ms = 0
        self.partitions = {tp: Partition(tp) for tp in PARTITIONS}
        self.decisions: dict[tuple[int, int], bool] = {}
        self.acked_commits: set[tuple[int, int]] = set()
        self.coordinator = Coordinator(self.rnd, self, directory)
        self.producers = {tid: Producer(self, tid) for tid in TIDS}
        self.zombies: list[Producer] = []
        self.in_flight: list[list] = []  # [producer, tp, pid, epoch, stage, guard]

    def decide(self, txn: tuple[int, int], commit: bool) -> None:
        assert self.decisions.setdefault(txn, commit) == commit, f"decision for {txn} flipped"

    def queue_write(self, producer: Producer, tp: TopicPartition, pid: int, epoch: int) -> None:
        self.in_flight.append([producer, tp, pid, epoch, "verify", None])

    def process_write(self, op: list) -> bool:
        """Advance one in-flight write by one stage; True when it is finished."""
        producer, tp, pid, epoch, stage, guard = op
        part = self.partitions[tp]
        if stage == "verify":
            if VerificationCache.needs_verification(True, pid in part.ps.open_transactions()):
                guard = part.cache.begin(pid, epoch, self.now_ms)
                verdict = self.coordinator.core.verify(producer.tid, pid, epoch, [tp])
                if verdict.error != ErrorCode.NONE or dict(verdict.partitions)[tp] != ErrorCode.NONE:
                    producer.write_done(ErrorCode.INVALID_TXN_STATE)
                    return True
                part.cache.record_verified(guard, self.now_ms)
            op[4], op[5] = "append", guard
            return False  # the append happens later: a marker may slip in between
        error = part.append_data(pid, epoch, 0, guard, self.now_ms)
        if error == ErrorCode.CONCURRENT_TRANSACTIONS:
            op[4] = "verify"
            return False
        producer.write_done(error)
        return True

    def pause_producer(self, tid: str) -> None:
        old = self.producers[tid]
        old.zombie = True
        self.zombies.append(old)
        self.producers[tid] = Producer(self, tid)
        if self.rnd.random() < 0.5:
            self.producers[tid].not_before_ms = self.now_ms + 2 * TIMEOUT_MS

    def zombie_end(self) -> None:
        """A zombie's delayed EndTxn(commit) lands: it must not commit anything new."""
        zombie = self.rnd.choice(self.zombies)
        if zombie.ident is None:
            return
        self.coordinator.call(ZombieWaiter(self, zombie.ident), "end_txn", zombie.tid, *zombie.ident, True, self.now_ms)

    def step(self, active: bool) -> None:
        self.now_ms += self.rnd.randint(1, 60)
        r = self.rnd.random()
        if active and r < 0.01:
            self.coordinator.failover()
        elif active and r < 0.03:
            self.pause_producer(self.rnd.choice(TIDS))
        elif active and r < 0.05 and self.zombies:
            self.zombie_end()
        if active:
            for p in list(self.producers.values()):
                if p.phase == "dead":
                    self.producers[p.tid] = Producer(self, p.tid)
                self.producers[p.tid].step(self.now_ms)
        else:
            for p in self.producers.values():
                if p.phase == "end":
                    p.step(self.now_ms)
        self.rnd.shuffle(self.in_flight)
        for op in list(self.in_flight[: self.rnd.randint(0, 2)]):
            if self.process_write(op):
                self.in_flight.remove(op)
        self.coordinator.tick(self.now_ms)
        self.coordinator.resolve_some()

    def quiet(self) -> bool:
        c = self.coordinator
        return (not self.in_flight and not c.appends and len(c.core.channel) == 0
                and all(not m.prepared() for m in c.machines())
                and all(meta.state is not TxnState.ONGOING for m in c.machines() for meta in m.snapshot().values())
                and all(p.phase != "end" and not p.waiting for p in self.producers.values()))

    def check(self) -> None:
        for tp, part in self.partitions.items():
            assert part.ps.open_transactions() == {}, f"hanging transaction in {tp}: {part.ps.open_transactions()}"
            for i, entry in enumerate(part.log):
                if entry[0] != "data":
                    continue
                _, pid, epoch, offset = entry
                closing = next(e for e in part.log[i + 1:] if e[0] == "marker" and e[1] == pid)
                assert closing[2] == epoch + 1, f"{tp}@{offset}: batch of ({pid}, {epoch}) closed by marker epoch {closing[2]}"
                assert closing[3] == self.decisions[(pid, epoch)], f"{tp}@{offset}: marker disagrees with the decision"
        for txn in self.acked_commits:
            assert self.decisions[txn] is True, f"commit of {txn} acknowledged but decided abort"


@pytest.mark.parametrize("seed", range(40))
def test_simulated_transactions_under_failovers_zombies_and_lost_writes(seed, tmp_path):
    print(f"seed={seed}")
    # fsync is irrelevant here (no power loss is simulated) and would dominate the runtime.
    with mock.patch.object(os, "fsync"), mock.patch.object(os, "fdatasync"):
        run_world(seed, tmp_path)


def run_world(seed: int, tmp_path: pathlib.Path) -> None:
    world = World(seed, tmp_path)
    try:
        for _ in range(600):
            world.step(active=True)
        for _ in range(20_000):  # drain: finish what is in flight, let timeouts abort the rest
            if world.quiet():
                break
            world.step(active=False)
        assert world.quiet(), f"seed {seed}: did not quiesce"
        world.check()
        assert world.decisions, "the run decided nothing: the simulation is too weak"
        assert world.coordinator.epoch > 0, f"seed {seed}: the run never failed over: the simulation is too weak"
    finally:
        world.coordinator.close()
