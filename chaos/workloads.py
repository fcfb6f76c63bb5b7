"""Jepsen-style workloads: client processes that record every operation in a history.

Theory of operation
-------------------
A workload owns a topic and `concurrency` logical processes (threads here). Each process
loops: pick an operation (`plan_op`, pure, from the process's own seeded RNG), record the
invoke, run it against the cluster (through the client proxies), record the completion. A
completion is `ok` only when the cluster acknowledged it, `fail` only when it certainly had no
effect, `info` otherwise (timeouts, broken connections, "outcome unknown" errors, anything
unexpected). A client crash tears the process's clients down and the process continues under
a new process id (Jepsen's convention: a crashed process never completes again).

Keys are partitions (`"<topic>-<p>"`); values are integers unique across the run (one
counter), so each value names the one send that wrote it. The final phase (`final_read`) runs
after every fault healed: a fresh consumer reads every partition from the beginning until it
reached each key's highest acknowledged offset, or a time limit.

Workloads: `idempotent` (sends + assign/poll + crashes) lives here; `txn`, `money` and
`copier` (transactions, subscribe, send_offsets_to_transaction) in `workload_txn.py`, sharing
the op generators below.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from semel.chaos.history import ASSIGN, CRASH, FAIL, INFO, OK, POLL, SEND, HistoryWriter
from semel.invariant import not_none

log = logging.getLogger("semel.chaos.workloads")

TXN_WORKLOADS = ("txn", "money", "copier")
WORKLOADS = ("idempotent", *TXN_WORKLOADS)


class WorkloadUnavailable(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadConfig:
    topic: str = "chaos"
    partitions: int = 6
    replication_factor: int = 3
    min_insync_replicas: int = 2
    concurrency: int = 5
    send_weight: int = 8
    poll_weight: int = 3
    reassign_weight: int = 1
    crash_per_mille: int = 10
    request_timeout_ms: int = 4000
    delivery_timeout_ms: int = 8000
    poll_timeout_ms: int = 300
    max_poll_records: int = 500
    from_start_fraction: float = 0.25  # of (re)assignments that read from offset 0
    op_pause_s: float = 0.005  # between one process's operations
    final_read_timeout_s: float = 60.0


# --- outcome mapping (pure) ---------------------------------------------------------------
# Broker errors that are refused before anything is written (validation). Everything else that
# is not an acknowledgement is `info`: the client retries retriable errors internally, and an
# earlier attempt of the same batch may have been written.
DEFINITE_FAILURE_CODES = frozenset({
    "INVALID_RECORD", "INVALID_TIMESTAMP", "RECORD_BATCH_TOO_LARGE", "INVALID_TOPIC_NAME",
    "INVALID_REQUEST", "TOPIC_AUTHORIZATION_FAILED", "INVALID_REQUIRED_ACKS",
})


def send_outcome(error: BaseException | None) -> tuple[str, str | None]:
    """(completion type, error text) for a send that raised `error` (None: acknowledged)."""
    if error is None:
        return OK, None
    code_name = getattr(error, "code_name", "")
    unknown = bool(getattr(error, "outcome_unknown", True))
    retriable = bool(getattr(error, "retriable", True))
    if not unknown and not retriable and code_name in DEFINITE_FAILURE_CODES:
        return FAIL, f"{type(error).__name__}: {error}"
    return INFO, f"{type(error).__name__}: {error}"


def plan_op(rng: random.Random, cfg: WorkloadConfig) -> str:
    """The next operation of an idempotent-workload process: send, poll, assign or crash."""
    if rng.randrange(1000) < cfg.crash_per_mille:
        return CRASH
    total = cfg.send_weight + cfg.poll_weight + cfg.reassign_weight
    roll = rng.randrange(total)
    if roll < cfg.send_weight:
        return SEND
    if roll < cfg.send_weight + cfg.poll_weight:
        return POLL
    return ASSIGN


class Recorder:
    """The history writer plus counters for progress lines."""

    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer
        self.lock = threading.Lock()
        self.completed = {OK: 0, FAIL: 0, INFO: 0}

    def invoke(self, process: int, f: str, value: Any = None, **extra: Any) -> None:
        self.writer.invoke(process, f, value, **extra)

    def complete(self, process: int, type: str, value: Any = None, error: str | None = None, **extra: Any) -> None:
        self.writer.complete(process, type, value, error, **extra)
        with self.lock:
            self.completed[type] += 1

    def counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.completed)


class Workload:
    """Base: the runner calls setup, run_process per process (threads), then final_read."""

    name = "?"

    def __init__(self, cfg: WorkloadConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed

    @property
    def keys(self) -> list[str]:
        return [f"{self.cfg.topic}-{p}" for p in range(self.cfg.partitions)]

    def partition_of(self, key: str) -> int:
        return int(key.rsplit("-", 1)[1])

    def setup(self, admin_bootstrap: str) -> None:
        self.create_topic(admin_bootstrap, self.cfg.topic)

    def create_topic(self, admin_bootstrap: str, topic: str) -> None:
        """Create `topic` (retrying while a broker is briefly fenced) and wait for its leaders."""
        from semel.client import Admin
        from semel.client.errors import (
            InvalidReplicationFactorError,
            TopicAlreadyExistsError,
        )

        configs = {"min_insync_replicas": str(self.cfg.min_insync_replicas)}
        deadline = time.monotonic() + 30
        with Admin(admin_bootstrap) as admin:
            while True:
                try:
                    admin.create_topic(topic, self.cfg.partitions, self.cfg.replication_factor, configs)
                    break
                except TopicAlreadyExistsError:
                    break
                except InvalidReplicationFactorError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            while time.monotonic() < deadline:  # every partition has a leader
                view = admin.metadata([topic])
                parts = [view.partition(topic, p) for p in range(self.cfg.partitions)]
                if all(p is not None and p.leader_id >= 0 for p in parts):
                    return
                time.sleep(0.05)

    def nemesis_hooks(self) -> Mapping[str, Callable[..., str]]:
        return {}

    def coordinator_key(self) -> str | None:
        """The transactional id whose coordinator the nemesis targets (None: no transactions)."""
        return None

    def leader_partition(self) -> tuple[str, int]:
        """The partition whose leader is "the leader" for the nemesis."""
        return self.cfg.topic, 0

    def run_process(self, process: int, bootstrap: str, rec: Recorder, stop: threading.Event) -> None:
        raise NotImplementedError

    def final_read(self, bootstrap: str, rec: Recorder, process: int) -> dict[str, Any]:
        raise NotImplementedError


class IdempotentWorkload(Workload):
    """Unique values sent to many partitions, polls under assign, client crashes."""

    name = "idempotent"

    def __init__(self, cfg: WorkloadConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self._values = itertools.count(1)
        self._values_lock = threading.Lock()
        self._acked_lock = threading.Lock()
        self.acked: dict[str, int] = {}  # key -> highest acknowledged offset

    def _next_value(self) -> int:
        with self._values_lock:
            return next(self._values)

    def _producer(self, bootstrap: str) -> Any:
        from semel.client import Producer

        return Producer(bootstrap, acks="all", linger_ms=0, max_in_flight=1, enable_idempotence=True,
                        request_timeout_ms=self.cfg.request_timeout_ms,
                        delivery_timeout_ms=self.cfg.delivery_timeout_ms, max_block_ms=self.cfg.delivery_timeout_ms)

    def _consumer(self, bootstrap: str) -> Any:
        from semel.client import Consumer

        return Consumer(bootstrap, auto_offset_reset="earliest", isolation_level="read_committed",
                        fetch_max_wait_ms=self.cfg.poll_timeout_ms, request_timeout_ms=self.cfg.request_timeout_ms,
                        max_poll_records=self.cfg.max_poll_records)

    def run_process(self, process: int, bootstrap: str, rec: Recorder, stop: threading.Event) -> None:
        rng = random.Random(self.seed * 1000 + process)
        pid = process
        producer = consumer = None
        try:
            producer, consumer = self._producer(bootstrap), self._consumer(bootstrap)
            self._assign(pid, rng, consumer, rec)
            while not stop.is_set():
                op = plan_op(rng, self.cfg)
                if op == SEND:
                    self._send(pid, rng, producer, rec)
                elif op == POLL:
                    self._poll(pid, consumer, rec)
                elif op == ASSIGN:
                    self._assign(pid, rng, consumer, rec)
                else:
                    rec.invoke(pid, CRASH)
                    _close_quietly(producer, consumer)
                    rec.complete(pid, INFO, error="client crashed (torn down)")
                    pid += self.cfg.concurrency  # a crashed process never comes back
                    producer, consumer = self._producer(bootstrap), self._consumer(bootstrap)
                    self._assign(pid, rng, consumer, rec)
                if self.cfg.op_pause_s:
                    stop.wait(self.cfg.op_pause_s)
        finally:
            _close_quietly(producer, consumer)

    def _send(self, pid: int, rng: random.Random, producer: Any, rec: Recorder) -> None:
        key = rng.choice(self.keys)
        value = self._next_value()
        rec.invoke(pid, SEND, [["send", key, value]])
        error: BaseException | None = None
        offset = None
        try:
            meta = producer.send(self.cfg.topic, str(value).encode(), partition=self.partition_of(key)).result(
                timeout=self.cfg.delivery_timeout_ms / 1000 + 5)
            offset = meta.offset
        except Exception as exc:  # mapped below; unexpected ones become info
            error = exc
        kind, text = send_outcome(error)
        if kind == OK:
            with self._acked_lock:
                self.acked[key] = max(self.acked.get(key, -1), not_none(offset, "an acknowledged send has an offset"))
            rec.complete(pid, OK, [["send", key, value, offset]])
        else:
            rec.complete(pid, kind, [["send", key, value, None]], error=text)

    def _poll(self, pid: int, consumer: Any, rec: Recorder) -> None:
        rec.invoke(pid, POLL, [["poll"]])
        try:
            records = consumer.poll(timeout_ms=self.cfg.poll_timeout_ms)
        except Exception as exc:
            rec.complete(pid, INFO, error=f"{type(exc).__name__}: {exc}")
            return
        rec.complete(pid, OK, [["poll", self._read_map(records)]])

    def _read_map(self, records: Sequence[Any]) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {}
        for r in records:
            out.setdefault(f"{r.topic}-{r.partition}", []).append([r.offset, _decode_value(r.value)])
        return out

    def _assign(self, pid: int, rng: random.Random, consumer: Any, rec: Recorder) -> None:
        keys = sorted(rng.sample(self.keys, rng.randint(1, len(self.keys))), key=self.partition_of)
        rec.invoke(pid, ASSIGN, keys)
        try:
            consumer.assign([(self.cfg.topic, self.partition_of(k)) for k in keys])
            for k in keys:  # from the beginning sometimes, else a little behind the acknowledged tail
                with self._acked_lock:
                    tail = self.acked.get(k, -1)
                start = 0 if rng.random() < self.cfg.from_start_fraction else max(0, tail - rng.randrange(200))
                consumer.seek(self.cfg.topic, self.partition_of(k), start)
        except Exception as exc:
            rec.complete(pid, INFO, error=f"{type(exc).__name__}: {exc}")
            return
        rec.complete(pid, OK, keys)

    def final_read(self, bootstrap: str, rec: Recorder, process: int) -> dict[str, Any]:
        """A fresh consumer reads every key from the start up to its highest acknowledged offset."""
        from semel.client import Consumer

        with self._acked_lock:
            targets = dict(self.acked)
        deadline = time.monotonic() + self.cfg.final_read_timeout_s
        reads: dict[str, list[list[int]]] = {k: [] for k in self.keys}
        next_offset = {k: 0 for k in self.keys}
        rec.invoke(process, ASSIGN, self.keys)
        consumer = Consumer(bootstrap, auto_offset_reset="earliest", isolation_level="read_committed",
                            fetch_max_wait_ms=200, request_timeout_ms=self.cfg.request_timeout_ms)
        try:
            consumer.assign([(self.cfg.topic, self.partition_of(k)) for k in self.keys])
            consumer.seek_to_beginning()
            rec.complete(process, OK, self.keys)
            rec.invoke(process, POLL, [["poll"]])
            while time.monotonic() < deadline:
                if all(next_offset[k] > targets.get(k, -1) for k in self.keys):
                    break
                try:
                    records = consumer.poll(timeout_ms=300)
                except Exception as exc:  # keep trying until the deadline
                    log.info("final read poll failed: %s", exc)
                    time.sleep(0.2)
                    continue
                for r in records:
                    k = f"{r.topic}-{r.partition}"
                    reads[k].append([r.offset, _decode_value(r.value)])
                    next_offset[k] = r.offset + 1
                for k in self.keys:  # markers and gaps: the position is the truth
                    try:
                        next_offset[k] = max(next_offset[k], consumer.position(self.cfg.topic, self.partition_of(k),
                                                                               timeout_ms=1000))
                    except Exception:
                        pass
            rec.complete(process, OK, [["poll", reads]])
        finally:
            consumer.close()
        missing = {k: (next_offset[k], targets[k]) for k in targets if next_offset[k] <= targets[k]}
        return {"acked_max_offset": targets, "read_up_to": next_offset, "incomplete": missing,
                "records_read": sum(len(v) for v in reads.values())}


def _decode_value(raw: bytes | None) -> int:
    try:
        return int(raw or b"")
    except ValueError:
        return -1  # not ours: the checker reports it as a garbage read


def _close_quietly(*clients: Any) -> None:
    for c in clients:
        if c is None:
            continue
        try:
            if hasattr(c, "flush"):
                c.close(timeout_s=0)
            else:
                c.close()
        except Exception:
            pass


# --- transactional workloads: the parts that do not need the client's transaction API ----------
def plan_txn(rng: random.Random, keys: Sequence[str], next_value: Callable[[], int], max_mops: int = 4,
             abort_per_mille: int = 100) -> tuple[list[list[Any]], bool]:
    """(micro-ops, deliberately abort) of one `txn` op: sends to random keys and polls."""
    mops: list[list[Any]] = []
    for _ in range(rng.randint(1, max_mops)):
        if rng.random() < 0.6:
            mops.append(["send", rng.choice(list(keys)), next_value()])
        else:
            mops.append(["poll"])
    return mops, rng.randrange(1000) < abort_per_mille


def plan_transfer(rng: random.Random, accounts: Sequence[str], max_amount: int = 10) -> tuple[str, str, int]:
    """(from, to, amount) of one money transfer between two distinct accounts."""
    a, b = rng.sample(list(accounts), 2)
    return a, b, rng.randint(1, max_amount)


def make_workload(name: str, cfg: WorkloadConfig, seed: int) -> Workload:
    if name == "idempotent":
        return IdempotentWorkload(cfg, seed)
    if name in TXN_WORKLOADS:
        from semel.chaos.workload_txn import CopierWorkload, MoneyWorkload, TxnWorkload

        if name == "txn":
            return TxnWorkload(cfg, seed)
        if name == "money":
            return MoneyWorkload(cfg, seed)
        return CopierWorkload(cfg, seed)
    raise WorkloadUnavailable(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")
