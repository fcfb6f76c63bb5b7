"""A rolling restart under a steady idempotent producer (issue 18): every broker in turn is
stopped with SIGTERM (controlled shutdown: it moves its leaderships away first), started again,
and allowed to rejoin every ISR before the next one goes. The producer never stops; the test
reports the longest gap between two acknowledged records and checks that every acknowledged
record is stored exactly once and nothing unacknowledged appears twice.

Real broker processes (tests/cluster/broker_harness.py) and the real client `Producer`.
"""

from __future__ import annotations

import threading
import time

import pytest
from semel.client import Producer

from tests.cluster import broker_harness as h

TOPIC = "rolling"
PARTITIONS = 3
GAP_GOAL_S = 1.0  # the goal on an idle machine (issue 18)
# What the test enforces: twice the goal, as under a shared, loaded CPU a broker's restart alone
# can stall the others for hundreds of ms. That leaderships moved *before* the broker exited is
# checked on its own below (without controlled shutdown they move a session timeout later).
GAP_LIMIT_S = 2 * GAP_GOAL_S


class SteadyProducer:
    """One record at a time (acks=all, idempotent), round-robin over the partitions; records
    the time of every acknowledgement."""

    def __init__(self, bootstrap: str, topic: str = TOPIC, partitions: int = PARTITIONS) -> None:
        self.topic, self.partitions = topic, partitions
        self.producer = Producer(bootstrap, acks="all", enable_idempotence=True, linger_ms=0,
                                 delivery_timeout_ms=60_000, retry_backoff_ms=20, retry_backoff_max_ms=100)
        self.acked: list[tuple[float, int, int, bytes]] = []  # (monotonic s, partition, offset, value)
        self.failed: list[tuple[bytes, BaseException]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            value = f"v{i:07d}".encode()
            try:
                md = self.producer.send(self.topic, value, partition=i % self.partitions).result(timeout=90)
                self.acked.append((time.monotonic(), md.partition, md.offset, value))
            except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                self.failed.append((value, exc))
            i += 1
            time.sleep(0.005)

    def check(self) -> int:
        assert not self.failed, self.failed[:3]
        return len(self.acked)

    def longest_gap_s(self) -> tuple[float, int]:
        times = [t for t, *_ in self.acked]
        gaps = [(b - a, i) for i, (a, b) in enumerate(zip(times, times[1:]))]
        return max(gaps) if gaps else (0.0, 0)


def full_isr(c: h.Cluster) -> bool:
    md = c.metadata(topics=[TOPIC])
    return all(len(p.isr) == 3 and p.leader_id >= 0 for p in md.topics[0].partitions)


@pytest.mark.slow
def test_rolling_restart_under_steady_idempotent_producer(tmp_path):
    c = h.Cluster(tmp_path, 3, internal_partitions=1)
    steady = None
    try:
        c.start_all()
        r = c.create_topic(TOPIC, partitions=PARTITIONS, rf=3)
        assert r.error_code == 0, r.error_message
        c.wait_for(lambda: full_isr(c), what="every partition led with a full ISR")
        steady = SteadyProducer(",".join(b.address for b in c.brokers.values()))
        steady.thread.start()
        c.wait_for(lambda: steady.check() >= 50, 60, what="the producer's first 50 acks")
        phases = []
        for broker_id in c.brokers:
            before = len(steady.acked)
            t0 = time.monotonic()
            c.terminate(broker_id, timeout_s=30)
            stopped_s = time.monotonic() - t0
            still_led = [p.partition for p in c.metadata(topics=[TOPIC]).topics[0].partitions
                         if p.leader_id == broker_id]
            assert not still_led, f"broker {broker_id} exited still leading partitions {still_led}"
            c.start(broker_id)
            c.wait_ready([broker_id], 60)
            c.wait_for(lambda: full_isr(c), 60, what=f"broker {broker_id} back in every ISR")
            c.wait_for(lambda n=len(steady.acked): len(steady.acked) >= n + 30, 30, what="30 more acks")
            phases.append((broker_id, stopped_s, len(steady.acked) - before))
        steady.stop.set()
        steady.thread.join(120)
        steady.producer.close()
        gap_s, at = steady.longest_gap_s()
        print(f"ROLLING RESTART: {len(steady.acked)} records acknowledged, {len(steady.failed)} failed; "
              f"longest produce gap {gap_s * 1000:.0f} ms (after record {at}); "
              f"per broker (id, SIGTERM->exit s, acks meanwhile): {phases}")
        assert not steady.failed, steady.failed[:3]
        # Nothing lost, nothing duplicated: each partition holds exactly the acknowledged values at
        # the acknowledged offsets, and no value twice.
        stored: dict[bytes, list[tuple[int, int]]] = {}
        for p in range(PARTITIONS):
            leader = c.leader_of(TOPIC, p)
            for offset, value in h.read_all(c.broker_stub(leader), TOPIC, p):
                stored.setdefault(value, []).append((p, offset))
        dups = {v: where for v, where in stored.items() if len(where) > 1}
        assert not dups, f"stored twice: {list(dups.items())[:5]}"
        for _, p, offset, value in steady.acked:
            assert stored.get(value) == [(p, offset)], f"{value!r} acked at {p}/{offset}, stored at {stored.get(value)}"
        print(f"ROLLING RESTART: goal of < {GAP_GOAL_S * 1000:.0f} ms {'met' if gap_s < GAP_GOAL_S else 'MISSED'}")
        assert gap_s < GAP_LIMIT_S, f"longest produce gap {gap_s * 1000:.0f} ms (limit {GAP_LIMIT_S * 1000:.0f} ms)"
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        if steady is not None:
            steady.stop.set()
        c.close()
