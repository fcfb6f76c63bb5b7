"""Exactly-once processing against real brokers: transactional offset commits (pending until
the COMMIT marker, dropped on ABORT, fenced for a removed member), Kafka's transactional copier
under SIGKILL of copiers and brokers with ~1 in 3 transactions aborted, and a stateful count
per key through the processing API with crashes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from semel.client import Consumer, Producer
from semel.client import errors as client_errors

from tests.cluster.harness import Cluster, cluster_fixture

IDLE_EXIT_S = 6  # a processor's group join can take seconds on a loaded machine: do not leave before it
GROUP_ARGS = ("--group-session-timeout-ms", "2000", "--group-heartbeat-interval-ms", "200")
eos_cluster = cluster_fixture(3, extra_args=GROUP_ARGS, scope="module")
WORKER = str(Path(__file__).with_name("group_worker.py"))

pytestmark = pytest.mark.slow


def _seed(cluster: Cluster, topic: str, count: int, partitions: int, keyed: bool = False) -> None:
    with Producer(cluster.bootstrap) as producer:
        for i in range(count):
            key = f"k{i % 10}" if keyed else str(i)
            producer.send(topic, str(i).encode(), key=key.encode(), partition=i % partitions)
        producer.flush()


def _read_all(cluster: Cluster, topic: str, partitions: int, want: int, timeout_s: float = 90) -> list:
    got: list = []
    with Consumer(cluster.bootstrap, isolation_level="read_committed", auto_offset_reset="earliest") as reader:
        reader.assign([(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            got += reader.poll(300)
        got += reader.poll(500)  # anything beyond `want` (a duplicate) shows up too
    return got


class Proc:
    def __init__(self, *args: str, log: Path) -> None:
        self.args = args
        self.log = log
        self.events: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, WORKER, *self.args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(self.log, "a"), text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_transactional_offsets_are_pending_until_commit_and_vanish_on_abort(eos_cluster: Cluster) -> None:
    topic, group = "txo", "g-txo"
    eos_cluster.create_topic(topic, 1, 3)
    probe = Consumer(eos_cluster.bootstrap, group_id=group)
    producer = Producer(eos_cluster.bootstrap, transactional_id="txo-1")
    try:
        producer.init_transactions()
        assert probe.committed([(topic, 0)]) == {(topic, 0): -1}  # (also warms up the probe's channel)
        producer.begin_transaction()
        producer.send_offsets_to_transaction({(topic, 0): 7}, group)  # standalone: the group has no members
        with pytest.raises(client_errors.UnstableOffsetCommitError):
            probe.committed([(topic, 0)], timeout_ms=3000)  # retried until then; one slow call must not be all it gets
        producer.abort_transaction()
        assert probe.committed([(topic, 0)], timeout_ms=10_000) == {(topic, 0): -1}
        producer.begin_transaction()
        producer.send_offsets_to_transaction({(topic, 0): 9}, group)
        producer.commit_transaction()
        assert probe.committed([(topic, 0)], timeout_ms=10_000) == {(topic, 0): 9}
    finally:
        producer.close()
        probe.close()


def test_a_removed_member_cannot_commit_offsets_in_a_transaction(eos_cluster: Cluster) -> None:
    topic, group = "txz", "g-txz"
    eos_cluster.create_topic(topic, 2, 3)
    _seed(eos_cluster, topic, 10, 2)
    zombie = Consumer(eos_cluster.bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                      isolation_level="read_committed")
    survivor = Consumer(eos_cluster.bootstrap, group_id=group, enable_auto_commit=False)
    producer = Producer(eos_cluster.bootstrap, transactional_id="txz-1")
    try:
        producer.init_transactions()
        zombie.subscribe([topic])
        deadline = time.monotonic() + 20
        while len(zombie.assignment()) < 2 and time.monotonic() < deadline:
            zombie.poll(100)
        stale = zombie.group_metadata()
        assert zombie._membership is not None
        zombie._membership.stop()  # heartbeats stop: removed after the session timeout
        survivor.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(survivor.assignment()) < 2 and time.monotonic() < deadline:
            survivor.poll(100)
        assert len(survivor.assignment()) == 2
        producer.begin_transaction()
        with pytest.raises((client_errors.UnknownMemberIdError, client_errors.FencedMemberEpochError)):
            producer.send_offsets_to_transaction({(topic, 0): 5, (topic, 1): 5}, stale)
        producer.abort_transaction()
        assert survivor.committed([(topic, 0), (topic, 1)]) == {(topic, 0): -1, (topic, 1): -1}
    finally:
        zombie._membership = None
        for c in (producer, zombie, survivor):
            c.close()


def test_transactional_copier_survives_sigkill_of_copiers_and_brokers(eos_cluster: Cluster, tmp_path: Path) -> None:
    seed = int(os.environ.get("SEMEL_TEST_SEED", random.randrange(1 << 30)))
    print(f"SEMEL_TEST_SEED={seed}")
    rng = random.Random(seed)
    n, seeded, partitions = 3000, 1000, 4
    eos_cluster.create_topic("copy-in", partitions, 3)
    eos_cluster.create_topic("copy-out", partitions, 3)
    _seed(eos_cluster, "copy-in", seeded, partitions)
    feeder_errors: list = []

    def feed() -> None:  # the rest of the input arrives while the faults happen
        with Producer(eos_cluster.bootstrap) as producer:
            futures = []
            for i in range(seeded, n):
                futures.append(producer.send("copy-in", str(i).encode(), key=str(i).encode(), partition=i % partitions))
                if i % 50 == 0:
                    time.sleep(0.2)  # ~10 s of input: the copy spans the faults
            producer.flush()
            feeder_errors.extend(f.exception() for f in futures if f.exception() is not None)

    feeder = threading.Thread(target=feed, daemon=True)
    copiers = [Proc("copy", "--bootstrap", eos_cluster.bootstrap, "--group", "copier", "--input", "copy-in",
                    "--output", "copy-out", "--txn-id", f"copier-{i}", "--abort-every", "3", "--seed", str(seed + i),
                    log=tmp_path / f"copier-{i}.log") for i in range(3)]
    concurrent: list = []
    stop_reader = threading.Event()

    def read_concurrently() -> None:
        with Consumer(eos_cluster.bootstrap, isolation_level="read_committed", auto_offset_reset="earliest") as r:
            r.assign([("copy-out", p) for p in range(partitions)])
            while not stop_reader.is_set():
                concurrent.extend(r.poll(200))

    reader = threading.Thread(target=read_concurrently, daemon=True)
    reader.start()
    feeder.start()
    try:
        for _ in range(4):  # faults while the copy runs: a copier, then a broker, SIGKILLed and restarted
            time.sleep(rng.uniform(0.5, 1.5))
            victim = rng.choice(copiers)
            victim.kill()
            time.sleep(rng.uniform(0.2, 1.0))
            victim.start()  # the same transactional id: fences the zombie, aborts its open transaction
            broker = rng.choice(eos_cluster.running())
            eos_cluster.kill(broker)
            time.sleep(rng.uniform(0.5, 1.5))
            eos_cluster.start_broker(broker)
        feeder.join(timeout=120)
        assert not feeder_errors, feeder_errors[:3]
        out = _read_all(eos_cluster, "copy-out", partitions, n)
        deadline = time.monotonic() + 20
        while len(concurrent) < len(out) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_reader.set()
        for c in copiers:
            c.kill()
    aborts = sum(1 for c in copiers for e in c.events if e.get("event") == "abort")
    values = [int(r.value) for r in out]
    assert len(values) == len(set(values)), f"duplicates: {len(values) - len(set(values))} (seed {seed})"
    assert set(values) == set(range(n)), f"missing {len(set(range(n)) - set(values))} (seed {seed})"
    for p in range(partitions):
        copied = [int(r.value) for r in out if r.partition == p]
        assert copied == list(range(p, n, partitions)), f"partition {p} out of order (seed {seed})"
        seen = [int(r.value) for r in concurrent if r.partition == p]
        assert seen == copied, f"the concurrent read_committed reader disagrees on partition {p} (seed {seed})"
    assert aborts > 0, f"no transaction was aborted: {[c.events[:5] for c in copiers]}"


def test_stateful_count_per_key_is_exact_after_crashes(eos_cluster: Cluster, tmp_path: Path) -> None:
    seed = int(os.environ.get("SEMEL_TEST_SEED", random.randrange(1 << 30)))
    print(f"SEMEL_TEST_SEED={seed}")
    rng = random.Random(seed)
    n, partitions = 1000, 2
    eos_cluster.create_topic("words", partitions, 3)
    eos_cluster.create_topic("counts", partitions, 3)
    _seed(eos_cluster, "words", n, partitions, keyed=True)
    counters = [Proc("count", "--bootstrap", eos_cluster.bootstrap, "--group", "counter", "--input", "words",
                     "--output", "counts", "--txn-id", f"counter-{i}", "--state-dir", str(tmp_path / f"state-{i}"),
                     log=tmp_path / f"counter-{i}.log") for i in range(2)]
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 2.0))
            victim = rng.choice(counters)
            victim.kill()  # its local store may hold anything: it is wiped and restored from the changelog
            time.sleep(rng.uniform(0.1, 0.5))
            victim.start()
        out = _read_all(eos_cluster, "counts", partitions, n)
    finally:
        for c in counters:
            c.kill()
    true_counts: dict[bytes, int] = {}
    for i in range(n):
        key = f"k{i % 10}".encode()
        true_counts[key] = true_counts.get(key, 0) + 1
    by_key: dict[bytes, list[int]] = {}
    for r in out:
        by_key.setdefault(r.key, []).append(int(r.value))
    for key, count in true_counts.items():
        assert by_key.get(key) == list(range(1, count + 1)), f"{key!r}: outputs {by_key.get(key, [])[:20]}... (seed {seed})"


def test_lag_is_measured_against_the_lso(eos_cluster: Cluster) -> None:
    from semel.client.group import GroupAdmin

    topic, group = "lag", "g-lag"
    eos_cluster.create_topic(topic, 1, 3)
    producer = Producer(eos_cluster.bootstrap, transactional_id="lag-1")
    open_txn = Producer(eos_cluster.bootstrap, transactional_id="lag-2")
    consumer = Consumer(eos_cluster.bootstrap, group_id=group, isolation_level="read_committed",
                        auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        producer.init_transactions()
        with producer.transaction():
            for i in range(10):
                producer.send(topic, str(i).encode(), partition=0)
        open_txn.init_transactions()
        open_txn.begin_transaction()
        open_txn.send(topic, b"open", partition=0).result(timeout=30)  # HW moves on, the LSO stays
        consumer.subscribe([topic])
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got += consumer.poll(200)
        assert [r.value for r in got] == [str(i).encode() for i in range(10)]
        consumer.commit()
        with GroupAdmin(eos_cluster.bootstrap) as admin:
            (row,) = admin.describe_group(group).offsets
        assert (row.committed_offset, row.last_stable_offset, row.lag) == (11, 11, 0)  # 10 records + a marker
        open_txn.abort_transaction()
    finally:
        for c in (consumer, producer, open_txn):
            c.close()


def test_a_store_catches_up_from_its_checkpoint_not_from_the_beginning(
        eos_cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A processor restarted on its state_dir replays only what others committed to the
    changelog meanwhile (Kafka Streams' .checkpoint); the counts stay exact."""
    import logging

    from semel.client.processing import Processor

    eos_cluster.create_topic("cp-words", 1, 3)
    eos_cluster.create_topic("cp-counts", 1, 3)

    def counter(state: str) -> Processor:
        def count(record, ctx) -> None:  # noqa: ANN001
            n = int(ctx.store.get(record.key) or b"0") + 1
            ctx.store.put(record.key, str(n).encode())
            ctx.send("cp-counts", str(n).encode(), key=record.key, partition=0)
        return Processor(eos_cluster.bootstrap, group_id="cp", transactional_id=f"cp-{state}",
                         input_topics=["cp-words"], process=count, state_dir=str(tmp_path / state),
                         store_name="counts")

    def restores() -> list[str]:
        return [r.getMessage() for r in caplog.records if "cp-counts-changelog" in r.getMessage()]

    def first_restore() -> str:  # (a rebalance under load may add later ones)
        found = restores()
        assert found, "no restore logged"
        return found[0]

    caplog.set_level(logging.INFO, logger="semel.processing")
    _seed(eos_cluster, "cp-words", 100, 1, keyed=True)
    counter("a").run(idle_exit_s=IDLE_EXIT_S)            # a: 100 records, 100 changelog records, checkpoint after them
    caplog.clear()
    _seed(eos_cluster, "cp-words", 50, 1, keyed=True)
    counter("a").run(idle_exit_s=IDLE_EXIT_S)            # a again, on its own state: nothing but its last marker to read
    line = first_restore()
    assert "restored cp-counts-changelog-0: 0 changelog records from checkpoint" in line, restores()
    caplog.clear()
    _seed(eos_cluster, "cp-words", 30, 1, keyed=True)
    counter("b").run(idle_exit_s=IDLE_EXIT_S)            # b has no state: the whole changelog
    line = first_restore()
    assert "restored cp-counts-changelog-0: 150 changelog records from the beginning" in line, restores()
    caplog.clear()
    _seed(eos_cluster, "cp-words", 20, 1, keyed=True)
    counter("a").run(idle_exit_s=IDLE_EXIT_S)            # a: only b's 30 records (+ markers) since its checkpoint
    line = first_restore()
    assert "restored cp-counts-changelog-0: 30 changelog records from checkpoint" in line, restores()
    out = _read_all(eos_cluster, "cp-counts", 1, 200)
    by_key: dict[bytes, list[int]] = {}
    for r in out:
        by_key.setdefault(r.key, []).append(int(r.value))
    assert by_key == {f"k{k}".encode(): list(range(1, 21)) for k in range(10)}
