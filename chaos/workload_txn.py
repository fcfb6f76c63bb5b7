"""Transactional workloads (`txn`, `money`, `copier`) over the client's transactional producer.

They use the Kafka-style producer API of `semel.client`: `Producer(bootstrap, transactional_id=...)`,
`init_transactions()`, `begin_transaction()`, `send(...)`, `commit_transaction()`,
`abort_transaction()`, and a read_committed `Consumer` (tests/chaos/test_chaos_run.py runs each
against real brokers).

Outcomes (docs/chaos-checker.md): commit acknowledged -> `ok`; a deliberate abort, or an abort
after a failed send that itself succeeded -> `fail` (error "aborted"); a commit that raised, an
abort that failed, a fenced producer mid-commit -> `info`. Polls inside a transaction are
recorded with their results whatever the outcome.

Nemesis hooks: `hijack` (a second producer initializes the same transactional id, fencing the
process's producer, until the window ends) and `client-pause` (a process stalls between its last
send and its commit until the window ends).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from semel.chaos.history import BALANCE, CRASH, FAIL, INFO, OK, TRANSFER, TXN
from semel.chaos.nemesis import Fault
from semel.chaos.workloads import (
    IdempotentWorkload,
    Recorder,
    WorkloadConfig,
    _close_quietly,
    _decode_value,
    plan_transfer,
    plan_txn,
    send_outcome,
)

log = logging.getLogger("semel.chaos.workload_txn")
FEED_PAUSE_S = 0.01
HIJACK_MAX_BLOCK_MS = 10_000


class TxnWorkload(IdempotentWorkload):
    """`txn`: transactions of sends and polls over the workload's partitions (~10% aborted)."""

    name = "txn"

    def __init__(self, cfg: WorkloadConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self._paused: dict[int, threading.Event] = {}  # process slot -> released when set
        self._hijackers: dict[int, Any] = {}  # slot -> hijacking producer, or "starting"
        self._hijack_lock = threading.Lock()
        self._fill_lock = threading.Lock()
        self._filled = False
        self._bootstrap = ""

    def coordinator_key(self) -> str | None:
        return self.transactional_id(0)

    def transactional_id(self, slot: int) -> str:
        return f"chaos-{self.name}-{slot}"

    def _txn_producer(self, bootstrap: str, slot: int, max_block_ms: int = 60_000) -> Any:
        from semel.client import Producer

        producer = Producer(bootstrap, transactional_id=self.transactional_id(slot), acks="all",
                            request_timeout_ms=self.cfg.request_timeout_ms,
                            delivery_timeout_ms=self.cfg.delivery_timeout_ms, max_block_ms=max_block_ms)
        producer.init_transactions()
        return producer

    # --- nemesis hooks ------------------------------------------------------------------
    def nemesis_hooks(self) -> Mapping[str, Callable[..., str]]:
        return {"hijack": self._hijack, "client-pause": self._client_pause}

    def _slot(self, fault: Fault) -> int:
        return int(fault.param("pick", 0)) % self.cfg.concurrency

    def _hijack(self, fault: Fault, start: bool) -> str:
        """Never blocks the nemesis: InitProducerId may retry for a while (CONCURRENT_TRANSACTIONS
        while the victim's transaction ends), so the hijacker starts on its own thread."""
        slot = self._slot(fault)
        if start:
            def take() -> None:
                try:
                    producer = self._txn_producer(self._bootstrap, slot, max_block_ms=HIJACK_MAX_BLOCK_MS)
                except Exception as exc:
                    log.info("hijack of %s failed: %s", self.transactional_id(slot), exc)
                    return
                with self._hijack_lock:
                    if self._hijackers.get(slot) is None:  # the window already ended: let go at once
                        _close_quietly(producer)
                    else:
                        self._hijackers[slot] = producer

            with self._hijack_lock:
                self._hijackers[slot] = "starting"
            threading.Thread(target=take, name=f"hijack-{slot}", daemon=True).start()
            return f"hijacking {self.transactional_id(slot)}"
        with self._hijack_lock:
            producer = self._hijackers.pop(slot, None)
        if producer not in (None, "starting"):
            _close_quietly(producer)
        return ""

    def _client_pause(self, fault: Fault, start: bool) -> str:
        slot = self._slot(fault)
        if start:
            self._paused[slot] = threading.Event()
            return f"process slot {slot} stalls before its next commit"
        event = self._paused.pop(slot, None)
        if event is not None:
            event.set()
        return ""

    def _stall_before_commit(self, slot: int, stop: threading.Event) -> None:
        event = self._paused.get(slot)
        while event is not None and not event.is_set() and not stop.is_set():
            event.wait(0.1)

    # --- the process loop ----------------------------------------------------------------------
    def run_process(self, process: int, bootstrap: str, rec: Recorder, stop: threading.Event) -> None:
        self._bootstrap = bootstrap
        rng = random.Random(self.seed * 1000 + process)
        slot, pid = process, process
        producer = consumer = None
        try:
            producer, consumer = self._txn_producer(bootstrap, slot), self._consumer(bootstrap)
            self._assign(pid, rng, consumer, rec)
            while not stop.is_set():
                ok = self._one_txn(pid, slot, rng, producer, consumer, rec, stop)
                if self.cfg.op_pause_s:
                    stop.wait(self.cfg.op_pause_s)
                if not ok or rng.randrange(1000) < self.cfg.crash_per_mille:
                    rec.invoke(pid, CRASH)
                    _close_quietly(producer, consumer)
                    rec.complete(pid, INFO, error="client rebuilt")
                    pid += self.cfg.concurrency
                    producer, consumer = self._txn_producer(bootstrap, slot), self._consumer(bootstrap)
                    self._assign(pid, rng, consumer, rec)
        finally:
            _close_quietly(producer, consumer)

    def _plan(self, rng: random.Random) -> tuple[list[list[Any]], bool, dict[str, Any]]:
        mops, abort = plan_txn(rng, self.keys, self._next_value)
        return mops, abort, {}

    def _one_txn(self, pid: int, slot: int, rng: random.Random, producer: Any, consumer: Any, rec: Recorder,
                 stop: threading.Event) -> bool:
        """One transaction; False when the producer must be rebuilt (fenced / state unknown)."""
        mops, abort, extra = self._plan(rng)
        f = TRANSFER if extra else TXN
        rec.invoke(pid, f, mops, **extra)
        done: list[list[Any]] = []
        try:
            producer.begin_transaction()
        except Exception as exc:  # nothing was sent: definitely not applied; the producer is rebuilt
            rec.complete(pid, FAIL, _merge(mops, [], []), error=f"begin: {type(exc).__name__}: {exc}")
            return False
        try:
            futures = []
            for mop in mops:
                if mop[0] == "send":
                    futures.append((mop, producer.send(self.cfg.topic, str(mop[2]).encode(),
                                                       partition=self.partition_of(mop[1]))))
                else:
                    done.append(["poll", self._read_map(consumer.poll(timeout_ms=self.cfg.poll_timeout_ms))])
            sends = []
            for mop, fut in futures:
                sends.append(["send", mop[1], mop[2], fut.result(timeout=self.cfg.delivery_timeout_ms / 1000 + 5).offset])
        except Exception as exc:  # a send or poll failed inside the transaction: try to abort
            return self._abort(pid, producer, mops, done, rec, f"{type(exc).__name__}: {exc}")
        value = _merge(mops, sends, done)
        if abort:
            return self._abort(pid, producer, mops, done, rec, "aborted", value=value)
        self._stall_before_commit(slot, stop)
        try:
            producer.commit_transaction()
        except Exception as exc:
            rec.complete(pid, INFO, value, error=f"commit: {type(exc).__name__}: {exc}")
            return False
        rec.complete(pid, OK, value)
        with self._acked_lock:
            for s in sends:
                self.acked[s[1]] = max(self.acked.get(s[1], -1), int(s[3]))
        return True

    def _abort(self, pid: int, producer: Any, mops: list[list[Any]], polls: list[list[Any]], rec: Recorder,
               why: str, value: list[list[Any]] | None = None) -> bool:
        value = value if value is not None else _merge(mops, [], polls)
        try:
            producer.abort_transaction()
        except Exception as exc:
            rec.complete(pid, INFO, value, error=f"{why}; abort failed: {type(exc).__name__}: {exc}")
            return False
        rec.complete(pid, FAIL, value, error="aborted" if why == "aborted" else f"aborted after {why}")
        return True


def _merge(mops: list[list[Any]], sends: list[list[Any]], polls: list[list[Any]]) -> list[list[Any]]:
    """Completion micro-ops in invoke order: sends with offsets (None if unknown), polls with results."""
    s_iter, p_iter = iter(sends), iter(polls)
    out: list[list[Any]] = []
    for mop in mops:
        if mop[0] == "send":
            out.append(next(s_iter, ["send", mop[1], mop[2], None]))
        else:
            out.append(next(p_iter, ["poll", {}]))
    return out


class MoneyWorkload(TxnWorkload):
    """`money`: transfers (a txn of a from-leg and a to-leg) between accounts (= partitions);
    the final `balance` read of every account must sum to zero with no torn transfer."""

    name = "money"

    def _plan(self, rng: random.Random) -> tuple[list[list[Any]], bool, dict[str, Any]]:
        src, dst, amount = plan_transfer(rng, self.keys)
        mops = [["send", src, self._next_value()], ["send", dst, self._next_value()]]
        return mops, rng.randrange(1000) < 50, {"transfer": {"from": src, "to": dst, "amount": amount}}

    def final_read(self, bootstrap: str, rec: Recorder, process: int) -> dict[str, Any]:
        """The usual final poll, then one `balance` read of every account from the beginning."""
        summary = super().final_read(bootstrap, rec, process)
        reads: dict[str, list[list[int]]] = {k: [] for k in self.keys}
        targets = summary["read_up_to"]
        consumer = self._consumer(bootstrap)
        rec.invoke(process + 1, BALANCE, None)
        try:
            consumer.assign([(self.cfg.topic, self.partition_of(k)) for k in self.keys])
            consumer.seek_to_beginning()
            deadline = time.monotonic() + self.cfg.final_read_timeout_s
            while time.monotonic() < deadline and any(
                    consumer.position(self.cfg.topic, self.partition_of(k)) < targets[k] for k in self.keys):
                for r in consumer.poll(timeout_ms=300):
                    reads[f"{r.topic}-{r.partition}"].append([r.offset, _decode_value(r.value)])
            rec.complete(process + 1, OK, reads)
        finally:
            _close_quietly(consumer)
        return summary




class CopierWorkload(TxnWorkload):
    """`copier`: copy an input topic to an output topic exactly once (Kafka's transactional copier).

    The input (`<topic>-in`, as many partitions as the output) is filled before the run by an
    idempotent producer (recorded as sends). Each process is a group member (read_committed, no
    auto-commit) with its own transactional id: poll, then one transaction with a copy of every
    polled record to the same partition number of the output and the input offsets
    (`send_offsets_to_transaction`); ~1/3 are aborted on purpose and rewound to the committed
    offsets. History: a `txn` op per batch (the poll's records, then the sends). Final phase: one
    fresh copier drains the rest, then `copy-input` / `copy-output` reads of both topics.
    """

    name = "copier"
    GROUP = "chaos-copier"
    INPUT_PER_PARTITION = 50  # before the run; then process 0 keeps feeding
    MAX_POLL_RECORDS = 40

    @property
    def input_topic(self) -> str:
        return f"{self.cfg.topic}-in"

    def in_key(self, p: int) -> str:
        return f"{self.input_topic}-{p}"

    def setup(self, admin_bootstrap: str) -> None:
        super().setup(admin_bootstrap)
        self.create_topic(admin_bootstrap, self.input_topic)

    def _fill_input(self, bootstrap: str, rec: Recorder) -> None:
        from semel.client import Producer

        pid = 1_000_000  # one process per input record: they are all in flight at once
        pending = []
        with Producer(bootstrap, acks="all", linger_ms=5) as producer:
            for p in range(self.cfg.partitions):
                for _ in range(self.INPUT_PER_PARTITION):
                    value = self._next_value()
                    rec.invoke(pid, "send", [["send", self.in_key(p), value]])
                    pending.append((pid, p, value, producer.send(self.input_topic, str(value).encode(), partition=p)))
                    pid += 1
            for pid, p, value, fut in pending:
                error: BaseException | None = None
                offset = None
                try:
                    offset = fut.result(60).offset
                except Exception as exc:
                    error = exc
                kind, text = send_outcome(error)
                rec.complete(pid, kind, [["send", self.in_key(p), value, offset]], error=text)

    def _group_consumer(self, bootstrap: str) -> Any:
        from semel.client import Consumer

        return Consumer(bootstrap, group_id=self.GROUP, enable_auto_commit=False, isolation_level="read_committed",
                        auto_offset_reset="earliest", fetch_max_wait_ms=self.cfg.poll_timeout_ms,
                        request_timeout_ms=self.cfg.request_timeout_ms, max_poll_records=self.MAX_POLL_RECORDS)

    def run_process(self, process: int, bootstrap: str, rec: Recorder, stop: threading.Event) -> None:
        """Process 0 keeps feeding the input (idempotent sends); the others copy."""
        self._bootstrap = bootstrap
        with self._fill_lock:
            if not self._filled:
                self._fill_input(bootstrap, rec)
                self._filled = True
        if process == 0:
            self._feed_input(process, bootstrap, rec, stop)
        else:
            self._copy_loop(process, process, bootstrap, rec, stop, lambda: False)

    def _feed_input(self, pid: int, bootstrap: str, rec: Recorder, stop: threading.Event) -> None:
        rng = random.Random(self.seed * 1000)
        producer = self._producer(bootstrap)
        try:
            while not stop.is_set():
                p = rng.randrange(self.cfg.partitions)
                value = self._next_value()
                rec.invoke(pid, "send", [["send", self.in_key(p), value]])
                error: BaseException | None = None
                offset = None
                try:
                    offset = producer.send(self.input_topic, str(value).encode(), partition=p).result(
                        timeout=self.cfg.delivery_timeout_ms / 1000 + 5).offset
                except Exception as exc:
                    error = exc
                kind, text = send_outcome(error)
                rec.complete(pid, kind, [["send", self.in_key(p), value, offset]], error=text)
                stop.wait(FEED_PAUSE_S)
        finally:
            _close_quietly(producer)

    def _copy_loop(self, slot: int, pid: int, bootstrap: str, rec: Recorder, stop: threading.Event,
                   done: Callable[[], bool]) -> None:
        rng = random.Random(self.seed * 1000 + slot)
        producer = consumer = None
        try:
            producer, consumer = self._txn_producer(bootstrap, slot), self._group_consumer(bootstrap)
            rec.invoke(pid, "subscribe", [self.in_key(p) for p in range(self.cfg.partitions)])
            consumer.subscribe([self.input_topic])
            rec.complete(pid, OK, [self.in_key(p) for p in range(self.cfg.partitions)])
            while not stop.is_set() and not done():
                if not self._copy_batch(pid, slot, rng, producer, consumer, rec, stop):
                    rec.invoke(pid, CRASH)
                    _close_quietly(producer, consumer)
                    rec.complete(pid, INFO, error="copier rebuilt")
                    pid += self.cfg.concurrency
                    producer, consumer = self._txn_producer(bootstrap, slot), self._group_consumer(bootstrap)
                    rec.invoke(pid, "subscribe", [self.in_key(p) for p in range(self.cfg.partitions)])
                    consumer.subscribe([self.input_topic])
                    rec.complete(pid, OK, [self.in_key(p) for p in range(self.cfg.partitions)])
        finally:
            _close_quietly(producer, consumer)

    def _copy_batch(self, pid: int, slot: int, rng: random.Random, producer: Any, consumer: Any, rec: Recorder,
                    stop: threading.Event) -> bool:
        try:
            records = consumer.poll(timeout_ms=self.cfg.poll_timeout_ms)
        except Exception as exc:
            log.info("copier poll failed: %s", exc)
            return False
        if not records:
            return True
        reads: dict[str, list[list[int]]] = {}
        sends: list[list[Any]] = []
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for r in records:
            value = _decode_value(r.value)
            reads.setdefault(self.in_key(r.partition), []).append([r.offset, value])
            sends.append(["send", f"{self.cfg.topic}-{r.partition}", value])
            first.setdefault(r.partition, r.offset)
            last[r.partition] = r.offset
        mops: list[list[Any]] = [["poll"], *sends]
        rec.invoke(pid, TXN, mops)
        done_sends: list[list[Any]] = []
        try:
            producer.begin_transaction()
        except Exception as exc:
            rec.complete(pid, FAIL, [["poll", reads], *[[*s, None] for s in sends]], error=f"begin: {exc}")
            return False
        try:
            futures = [(s, producer.send(self.cfg.topic, str(s[2]).encode(), partition=self.partition_of(s[1])))
                       for s in sends]
            for s, fut in futures:
                done_sends.append([*s, fut.result(timeout=self.cfg.delivery_timeout_ms / 1000 + 5).offset])
            producer.send_offsets_to_transaction({(self.input_topic, p): o + 1 for p, o in last.items()},
                                                 consumer.group_metadata())
        except Exception as exc:
            return self._abort_copy(pid, producer, consumer, rec, reads, sends, first, f"{type(exc).__name__}: {exc}")
        if rng.random() < 1 / 3:
            return self._abort_copy(pid, producer, consumer, rec, reads, sends, first, "aborted")
        self._stall_before_commit(slot, stop)
        try:
            producer.commit_transaction()
        except Exception as exc:
            rec.complete(pid, INFO, [["poll", reads], *done_sends], error=f"commit: {type(exc).__name__}: {exc}")
            return False
        rec.complete(pid, OK, [["poll", reads], *done_sends])
        return True

    def _abort_copy(self, pid: int, producer: Any, consumer: Any, rec: Recorder, reads: dict[str, Any],
                    sends: list[list[Any]], first: dict[int, int], why: str) -> bool:
        if not self._abort(pid, producer, [], [], rec, why, value=[["poll", reads], *[[*s, None] for s in sends]]):
            return False
        try:  # rewind to the committed offsets (the aborted batch is copied again)
            for p, offset in first.items():
                if (self.input_topic, p) in consumer.assignment():
                    consumer.seek(self.input_topic, p, offset)
        except Exception as exc:
            log.info("copier rewind failed: %s", exc)
            return False
        return True

    def final_read(self, bootstrap: str, rec: Recorder, process: int) -> dict[str, Any]:
        """Drain with one fresh copier until the group's committed offsets reach the input's end,
        then read both topics from the beginning."""
        from semel.client import Admin, Consumer

        with Admin(bootstrap) as admin:  # everything the feeder wrote is below these
            ends = {pd.partition: pd.last_stable_offset for pd in admin.describe_topics([self.input_topic])[0].partitions}
        deadline = time.monotonic() + self.cfg.final_read_timeout_s
        probe = Consumer(bootstrap, group_id=self.GROUP, enable_auto_commit=False)

        behind: dict[str, Any] = {"unknown": True}

        def drained() -> bool:
            try:
                committed = probe.committed([(self.input_topic, p) for p in ends], timeout_ms=5000)
            except Exception:
                return time.monotonic() > deadline
            behind.clear()
            behind.update({self.in_key(p): [committed.get((self.input_topic, p), -1), end]
                           for p, end in ends.items() if committed.get((self.input_topic, p), -1) < end})
            return not behind or time.monotonic() > deadline

        stop = threading.Event()
        try:
            self._copy_loop(10_000 + self.cfg.concurrency, process + 2, bootstrap, rec, stop, drained)
        finally:
            _close_quietly(probe)
        reads = {}
        for f, topic, keyf in (("copy-input", self.input_topic, self.in_key),
                               ("copy-output", self.cfg.topic, lambda p: f"{self.cfg.topic}-{p}")):
            reads[f] = self._read_topic(bootstrap, topic, keyf, deadline + 30)
        mapping = {self.in_key(p): f"{self.cfg.topic}-{p}" for p in range(self.cfg.partitions)}
        rec.invoke(process, "copy-input", None)
        rec.complete(process, OK, reads["copy-input"], map=mapping)
        rec.invoke(process, "copy-output", None)
        rec.complete(process, OK, reads["copy-output"])
        copied = sum(len(v) for v in reads["copy-output"].values())
        return {"acked_max_offset": {}, "read_up_to": {}, "incomplete": dict(behind),  # key: [committed, end]
                "records_read": copied, "input_records": sum(len(v) for v in reads["copy-input"].values())}

    def _read_topic(self, bootstrap: str, topic: str, keyf: Callable[[int], str], deadline: float,
                    ) -> dict[str, list[list[int]]]:
        from semel.client import Admin, Consumer

        with Admin(bootstrap) as admin:
            desc = admin.describe_topics([topic])[0]
        ends = {pd.partition: pd.last_stable_offset for pd in desc.partitions}
        out: dict[str, list[list[int]]] = {keyf(p): [] for p in ends}
        consumer = Consumer(bootstrap, auto_offset_reset="earliest", isolation_level="read_committed")
        try:
            consumer.assign([(topic, p) for p in ends])
            consumer.seek_to_beginning()
            while time.monotonic() < deadline and any(consumer.position(topic, p) < e for p, e in ends.items()):
                for r in consumer.poll(timeout_ms=300):
                    out[keyf(r.partition)].append([r.offset, _decode_value(r.value)])
        finally:
            _close_quietly(consumer)
        return out


__all__ = ["CopierWorkload", "MoneyWorkload", "TxnWorkload"]
