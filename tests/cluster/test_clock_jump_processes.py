"""Wall-clock steps on real broker processes (the test-only offset of `semel.clock`: the broker
polls `<data dir>/test-wall-clock-offset-ms`; the host clock and the monotonic clock are
untouched). No guarantee may rest on wall-clock agreement: an open transaction is not aborted
early when its coordinator's wall clock jumps 10 minutes forward, and the abort scan goes on
after a step back (it used to be paced on the wall clock); time-based retention deletes nothing
early when the leader's wall clock jumps 2 hours forward past a topic's 1-hour retention; an
idempotent producer's state is not expired when the leader's wall clock jumps 25 hours forward
past the 24-hour producer expiry (its retried batches would no longer be deduplicated); a
stable consumer group (a Kafka classic group of confluent-kafka and a Semel group member) does
not rebalance when its coordinator's wall clock jumps 10 minutes forward or back."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer as CKConsumer
from semel import clock
from semel.client.group import Consumer
from semel.v1 import broker_pb2, txn_pb2
from semel.v1.common_pb2 import ErrorCode

from tests.cluster import broker_harness as h
from tests.cluster import txn_stubs as ts

pytestmark = pytest.mark.slow

JUMP_MS = 10 * 60_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv(clock.TEST_OFFSET_ENV, "1")  # the brokers inherit it
    c = h.Cluster(tmp_path_factory.mktemp("clock"), 1, internal_partitions=1, txn_abort_scan_interval_ms=200,
                  retention_check_interval_ms=200, kafka_listen=f"127.0.0.1:{h.free_ports(1)[0]}")
    try:
        c.start_all()
        yield c
    finally:
        print(c.dump_logs())
        c.close()
        mp.undo()


def step(c: h.Cluster, offset_ms: int) -> None:
    """Set broker 1's wall-clock offset and wait until its log says it stepped there."""
    b = c.brokers[1]
    path = b.data_dir / clock.TEST_OFFSET_FILE
    if (int(path.read_text()) if path.exists() else 0) == offset_ms:
        return  # already there (the broker logs only steps)
    before = c.log_tail(1, 100_000).count("TEST ONLY: wall clock stepped")
    clock.write_test_offset(b.data_dir / clock.TEST_OFFSET_FILE, offset_ms)
    c.wait_for(lambda: c.log_tail(1, 100_000).count("TEST ONLY: wall clock stepped") > before
               and f"(offset now {offset_ms:+d} ms)" in c.log_tail(1, 20), timeout_s=30, what=f"step to {offset_ms}")


def timed_out(c: h.Cluster, tid: str) -> bool:
    d = ts.describe(c, tid)
    return d.state == txn_pb2.COMPLETE_ABORT and d.last_bump_reason == txn_pb2.BUMP_TIMEOUT


def test_wall_clock_steps_neither_hasten_nor_stop_transaction_timeouts(cluster):
    c = cluster
    assert "TEST ONLY: the wall clock of this process is stepped" in c.log_tail(1, 100_000)
    c.created("jumps", rf=1)
    patient = ts.TxnProducer(c, "patient", timeout_ms=60_000).init()
    patient.send("jumps", 0, [b"kept-1"])
    step(c, +JUMP_MS)
    # The canary opens after the step and times out after 1 s on both clocks: by then the
    # abort scan has run with the stepped clock many times.
    canary = ts.TxnProducer(c, "canary", timeout_ms=1_000).init()
    canary.send("jumps", 0, [b"canary-1"])
    c.wait_for(lambda: timed_out(c, "canary"), timeout_s=60, what="the canary times out (scans ran after the step)")
    assert ts.describe(c, "patient").state == txn_pb2.ONGOING, "a 10-minute forward step aborted an open transaction"
    patient.commit()
    c.wait_for(lambda: ts.read(c, "jumps")[0] == [b"kept-1"], what="the patient transaction committed")

    # Back by 20 minutes (to -10): scans go on, a new transaction times out on time, the patient one does not.
    patient.send("jumps", 0, [b"kept-2"])
    step(c, -JUMP_MS)
    canary = ts.TxnProducer(c, "canary", timeout_ms=1_000).init()
    canary.send("jumps", 0, [b"canary-2"])
    c.wait_for(lambda: timed_out(c, "canary"), timeout_s=60, what="a timeout after a backward step")
    assert ts.describe(c, "patient").state == txn_pb2.ONGOING
    patient.commit()
    c.wait_for(lambda: ts.read(c, "jumps")[0] == [b"kept-1", b"kept-2"], what="the second patient transaction")


def log_start(c: h.Cluster, topic: str) -> int:
    resp = c.broker_stub(1).ListOffsets(broker_pb2.ListOffsetsRequest(partitions=[
        broker_pb2.ListOffsetsPartition(topic=topic, partition=0, timestamp_ms=-2)]), timeout=5)
    assert resp.results[0].error_code == ErrorCode.NONE, resp
    return resp.results[0].offset


def fill(c: h.Cluster, topic: str, batches: int) -> None:
    for i in range(batches):  # 1 KiB segments: a few batches per segment
        r = h.produce(c.broker_stub(1), topic, 0, h.make_batch([b"x" * 300, str(i).encode()]))
        assert r.error_code == ErrorCode.NONE, r


def test_a_forward_step_does_not_delete_segments_before_their_retention(cluster):
    c = cluster
    step(c, 0)
    for name, configs in (("aged", {"segment_bytes": "1024", "retention_ms": str(3_600_000)}),
                          ("by-size", {"segment_bytes": "1024", "retention_bytes": "2048"})):
        c.created(name, rf=1, configs=configs)
    fill(c, "aged", 12)  # timestamps: the test's (unstepped) clock
    step(c, +2 * 3_600_000)
    # Size-based retention of "by-size" after the step proves a housekeeping round ran with
    # the stepped clock; the same round applies time-based retention to "aged".
    fill(c, "by-size", 12)
    c.wait_for(lambda: log_start(c, "by-size") > 0, timeout_s=60, what="a housekeeping round after the step")
    assert log_start(c, "aged") == 0, "a 2-hour forward step deleted segments with a 1-hour retention"


def test_a_forward_step_does_not_expire_producer_state(cluster):
    c = cluster
    step(c, 0)
    c.created("idem", rf=1, configs={"segment_bytes": "1024", "retention_bytes": "2048"})
    pid = h.init_producer_id(c.channel(1))
    first = h.make_batch([b"once"], producer_id=pid, producer_epoch=0, base_sequence=0)
    assert h.produce(c.broker_stub(1), "idem", 0, first).error_code == ErrorCode.NONE
    step(c, +25 * 3_600_000)  # past the default 24 h producer expiry
    # Size-based retention of the same partition after the step proves a housekeeping round
    # (retention, then producer expiry, of each partition) ran with the stepped clock.
    fill(c, "idem", 12)
    c.wait_for(lambda: log_start(c, "idem") > 0, timeout_s=60, what="a housekeeping round after the step")
    producers = ts.txn_stub(c, 1).DescribeProducers(txn_pb2.DescribeProducersRequest(topic="idem", partition=0),
                                                    timeout=5)
    assert producers.error_code == ErrorCode.NONE, producers
    assert pid in [x.producer_id for x in producers.producers], "a 25-hour forward step expired a producer"
    nxt = h.make_batch([b"twice"], producer_id=pid, producer_epoch=0, base_sequence=1)
    assert h.produce(c.broker_stub(1), "idem", 0, nxt).error_code == ErrorCode.NONE, "its sequence goes on"


def test_a_stable_group_does_not_rebalance_when_its_coordinator_clock_steps(cluster):
    """Sessions of 10 s (Kafka) and the broker's default (Semel), heartbeats every 0.5 s: a
    wall-clock session deadline would expire every member at the first timer tick after a
    10-minute forward step (a rebalance: new assignment callbacks, a new member epoch)."""
    c = cluster
    step(c, 0)
    c.created("grouped", partitions=2, rf=1)
    bootstrap = str(c.flags["kafka_listen"])
    events: list[str] = []
    kafka = CKConsumer({"bootstrap.servers": bootstrap, "group.id": f"k-{uuid.uuid4().hex[:8]}",
                        "session.timeout.ms": 10_000, "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest"})
    kafka.subscribe(["grouped"], on_assign=lambda _c, ps: events.append(f"assign {sorted(p.partition for p in ps)}"),
                    on_revoke=lambda _c, ps: events.append("revoke"), on_lost=lambda _c, ps: events.append("lost"))
    semel = Consumer(c.brokers[1].address, group_id=f"s-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest")
    semel_events: list[str] = []
    semel.subscribe(["grouped"], on_assigned=lambda ps: semel_events.append(f"assign {sorted(ps)}"),
                    on_revoked=lambda ps: semel_events.append("revoke"), on_lost=lambda ps: semel_events.append("lost"))

    def poll_both(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            kafka.poll(0.1)
            semel.poll(100)

    try:
        deadline = time.monotonic() + 120
        while not (events and semel.assignment()):
            assert time.monotonic() < deadline, f"the groups did not form: {events} {semel_events}"
            poll_both(0.2)
        poll_both(2.0)  # settled: every member heartbeats in its generation
        assert events == ["assign [0, 1]"], events
        epoch = semel.group_metadata().member_epoch
        before = list(semel_events)
        for offset in (+JUMP_MS, -JUMP_MS):
            step(c, offset)
            # The broker polls its offset every 100 ms and the group timers tick every 200 ms
            # or less: 4 s after the broker logged the step, an expiry by the stepped wall clock
            # has long happened (and a member heartbeating every 0.5 s has been told).
            poll_both(4.0)
            assert events == ["assign [0, 1]"], f"the Kafka group rebalanced after a {offset:+d} ms step: {events}"
            assert semel_events == before and semel.group_metadata().member_epoch == epoch, (
                f"the Semel group rebalanced after a {offset:+d} ms step: {semel_events}")
    finally:
        kafka.close()
        semel.close()
        step(c, 0)
