"""Workload processes against an in-memory fake log (no brokers): the histories they record are
well-formed, pass the checker when the log is correct, and expose a broken log.

The transactional workloads cannot run against Semel yet (no client transactions); this is
where their op flow, outcome mapping and nemesis hooks are exercised meanwhile."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from semel.chaos.checker import check_file
from semel.chaos.history import HistoryWriter
from semel.chaos.nemesis import Fault
from semel.chaos.workload_txn import MoneyWorkload, TxnWorkload
from semel.chaos.workloads import IdempotentWorkload, Recorder, WorkloadConfig


class FakeLog:
    """Per partition: [value, state] with state "committed" | "open" | "aborted"; read_committed
    readers stop at the first open record (the last stable offset)."""

    def __init__(self, show_aborted: bool = False) -> None:
        self.lock = threading.Lock()
        self.parts: dict[int, list[list[Any]]] = {}
        self.show_aborted = show_aborted
        self.epochs: dict[str, int] = {}

    def append(self, p: int, value: bytes, state: str) -> tuple[int, list[Any]]:
        with self.lock:
            log = self.parts.setdefault(p, [])
            log.append([value, state])
            return len(log) - 1, log[-1]

    def read(self, p: int, offset: int, limit: int) -> list[tuple[int, bytes]]:
        with self.lock:
            out = []
            for o, (value, state) in enumerate(self.parts.get(p, [])[offset:], start=offset):
                if state == "open" or len(out) >= limit:
                    break
                if state == "committed" or self.show_aborted:
                    out.append((o, value))
            return out


class Meta:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Done:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def result(self, timeout: float | None = None) -> Meta:
        return Meta(self._offset)


class Fenced(Exception):
    outcome_unknown = False


class FakeProducer:
    def __init__(self, log: FakeLog, tid: str | None = None) -> None:
        self.log, self.tid = log, tid
        self.pending: list[list[Any]] = []
        self.epoch = 0

    def init_transactions(self) -> None:
        with self.log.lock:
            self.epoch = self.log.epochs[self.tid] = self.log.epochs.get(self.tid, 0) + 1  # type: ignore[index]

    def _check(self) -> None:
        if self.tid is not None and self.log.epochs.get(self.tid) != self.epoch:
            raise Fenced("fenced")

    def begin_transaction(self) -> None:
        self._check()
        self.pending = []

    def send(self, topic: str, value: bytes, partition: int) -> Done:
        self._check()
        offset, record = self.log.append(partition, value, "open" if self.tid else "committed")
        if self.tid is not None:  # only a transaction's records wait for its end
            self.pending.append(record)
        return Done(offset)

    def commit_transaction(self) -> None:
        self._end("committed")

    def abort_transaction(self) -> None:
        self._end("aborted")

    def _end(self, state: str) -> None:
        if state == "committed":
            self._check()
        with self.log.lock:
            for record in self.pending:
                record[1] = state
        self.pending = []

    def close(self, timeout_s: float | None = None) -> None:
        if self.pending:
            self._end("aborted")

    flush = close


class Record:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.value = topic, partition, offset, value


class FakeConsumer:
    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.positions: dict[int, int] = {}
        self.topic = ""

    def assign(self, tps: list[tuple[str, int]]) -> None:
        self.positions = {p: 0 for _, p in tps}
        self.topic = tps[0][0] if tps else ""

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.positions[partition] = offset

    def seek_to_beginning(self) -> None:
        self.positions = {p: 0 for p in self.positions}

    def position(self, topic: str, partition: int, timeout_ms: int = 0) -> int:
        return self.positions[partition]

    def poll(self, timeout_ms: int = 0) -> list[Record]:
        out = []
        for p, pos in self.positions.items():
            for offset, value in self.log.read(p, pos, 50):
                out.append(Record(self.topic, p, offset, value))
                self.positions[p] = offset + 1
        return out

    def close(self) -> None:
        pass


def with_fakes(cls: type, log: FakeLog) -> type:
    class Faked(cls):  # type: ignore[misc, valid-type]
        def _producer(self, bootstrap: str) -> FakeProducer:
            return FakeProducer(log)

        def _txn_producer(self, bootstrap: str, slot: int, max_block_ms: int = 0) -> FakeProducer:
            p = FakeProducer(log, self.transactional_id(slot))
            p.init_transactions()
            return p

        def _consumer(self, bootstrap: str) -> FakeConsumer:
            return FakeConsumer(log)

        def final_read(self, bootstrap: str, rec: Recorder, process: int) -> dict[str, Any]:
            import semel.chaos.workloads as w

            original = w.__dict__.get("Consumer")
            return self._final_read_with(rec, process) if original is None else {}

        def _final_read_with(self, rec: Recorder, process: int) -> dict[str, Any]:
            import semel.client as client

            saved = client.Consumer
            client.Consumer = lambda *a, **k: FakeConsumer(log)  # type: ignore[assignment, misc]
            try:
                return cls.final_read(self, "fake", rec, process)
            finally:
                client.Consumer = saved  # type: ignore[misc]

    return Faked


def run_workload(cls: type, tmp_path: Path, log: FakeLog, ops_per_process: int = 150,
                 hooks: tuple[str, ...] = ()) -> dict[str, Any]:
    cfg = WorkloadConfig(partitions=3, concurrency=3, crash_per_mille=20, op_pause_s=0, poll_timeout_ms=0,
                         final_read_timeout_s=5)
    workload = with_fakes(cls, log)(cfg, seed=3)
    writer = HistoryWriter(tmp_path / "h.jsonl")
    rec = Recorder(writer)
    stop = threading.Event()
    done = [0]
    original = rec.complete

    def counting(process: int, *args: Any, **kw: Any) -> None:
        original(process, *args, **kw)
        done[0] += 1
        if done[0] >= ops_per_process * cfg.concurrency:
            stop.set()

    rec.complete = counting  # type: ignore[method-assign]
    workload._bootstrap = "fake"
    active = []
    for i, family in enumerate(hooks):
        fault = Fault(i, family, "one", (), (("pick", i),))
        workload.nemesis_hooks()[family](fault, True)
        active.append(fault)
    threads = [threading.Thread(target=workload.run_process, args=(p, "fake", rec, stop)) for p in range(3)]
    for t in threads:
        t.start()
    stop.wait(20)
    for fault in active:
        workload.nemesis_hooks()[fault.family](fault, False)
    stop.set()
    for t in threads:
        t.join(10)
    workload.final_read("fake", rec, 10_000)
    writer.close()
    return check_file(tmp_path / "h.jsonl")


def test_idempotent_workload_history_passes_on_a_correct_log(tmp_path: Path) -> None:
    verdict = run_workload(IdempotentWorkload, tmp_path, FakeLog())
    assert verdict["valid"], verdict["anomalies"]
    assert verdict["stats"]["by_f"]["send"]["ok"] > 100 and verdict["stats"]["values_unseen"] == 0


@pytest.mark.parametrize("cls", [TxnWorkload, MoneyWorkload])
def test_transactional_workloads_record_commits_aborts_and_hooks(cls: type, tmp_path: Path) -> None:
    verdict = run_workload(cls, tmp_path, FakeLog(), hooks=("hijack", "client-pause"))
    assert verdict["valid"], verdict["anomalies"]
    f = "transfer" if cls is MoneyWorkload else "txn"
    by = verdict["stats"]["by_f"][f]
    assert by["ok"] > 50 and by["fail"] > 0, by  # commits and (deliberate) aborts
    if cls is MoneyWorkload:
        assert "money" in verdict["workloads"]


def test_a_log_that_shows_aborted_records_is_caught(tmp_path: Path) -> None:
    verdict = run_workload(TxnWorkload, tmp_path, FakeLog(show_aborted=True))
    assert "G1a" in verdict["anomalies"]
