"""Replication protocol in one process: leader side + follower apply over real stores, no gRPC.

Drives `LeaderReplicationService.handle` and `ReplicaFetcher._apply` directly, so divergence
(KIP-320), truncation, HW propagation and acks=all completion are checked in milliseconds.
"""

from __future__ import annotations

import asyncio

import pytest
from semel.cluster.broker.replica_manager import Partition, PartitionError, Role
from semel.cluster.broker.replication import (
    FetchSession,
    LeaderReplicationService,
    ReplicaFetcher,
)
from semel.cluster.broker.storage_adapter import open_replica_store
from semel.cluster.metadata import state as md
from semel.storage.batch import HEADER_BYTES, BatchHeader
from semel.storage.kv import KvStore
from semel.v1 import common_pb2 as pb
from semel.v1 import replication_pb2 as rpb

from tests.cluster.fake_time import FakeClock, run_ready


class FakeRm:
    def __init__(self, *parts: Partition) -> None:
        self.parts = {p.key: p for p in parts}
        (self.clock,) = {id(p.clock): p.clock for p in parts}.values()  # one broker, one clock

    def get(self, topic: str, partition: int) -> Partition | None:
        return self.parts.get((topic, partition))


def header(n: int = 1, ts: int = 1000) -> BatchHeader:
    return BatchHeader(0, n - 1, -1, -1, -1, -1, n, 0, ts, ts, HEADER_BYTES + 3)


def topic() -> md.Topic:
    return md.Topic("t", "0123456789abcdef", False, 3, md.TopicConfig(), ())


@pytest.fixture
def open_store(tmp_path):
    """open_store(broker_id, partition) -> (directory, store): the real partition store, one
    RocksDB per broker (closed at the end)."""
    kvs: dict[int, KvStore] = {}

    def open_(broker_id: int, partition: int = 0):
        if broker_id not in kvs:
            kvs[broker_id] = KvStore.open(tmp_path / f"kv{broker_id}")
        d = tmp_path / f"b{broker_id}-{partition}"
        (d / "log").mkdir(parents=True)
        return d, open_replica_store(d / "log", topic(), partition, kv=kvs[broker_id])

    yield open_
    for kv in kvs.values():
        kv.close()


@pytest.fixture
def make_partition(open_store):
    clock = FakeClock()

    def make(broker_id: int) -> Partition:
        d, store = open_store(broker_id)
        return Partition("t", 0, "0123456789abcdef", d, store, broker_id, lag_time_max_ms=1000, clock=clock)

    return make


def state(leader: int, epoch: int, isr=(1, 2)) -> md.PartitionState:
    return md.PartitionState("t", 0, (1, 2), tuple(isr), leader, epoch, epoch)


def fetch_once(leader: Partition, follower: Partition) -> rpb.ReplicaFetchResponse:
    svc = LeaderReplicationService(FakeRm(leader), max_fetch_bytes=1 << 20)
    fetcher = ReplicaFetcher(follower.broker_id, leader.broker_id, lambda b: None, lambda: 1,
                             lambda b: asyncio.sleep(0), max_wait_ms=0, max_bytes=1 << 20)
    fetcher.partitions[follower.key] = follower
    req = fetcher._request()
    req.max_wait_ms = 0
    resp = asyncio.run(svc.handle(req))
    fetcher._apply(resp)
    return resp


async def exchange(svc: LeaderReplicationService, fetcher: ReplicaFetcher) -> rpb.ReplicaFetchResponse:
    """One request and its answer on the stream `fetcher` has open to `svc`: the first exchange
    of a pair opens a stream (a new fetch session, whose first request names everything)."""
    sessions = svc.__dict__.setdefault("test_sessions", {})
    if id(fetcher) not in sessions:
        fetcher._sent.clear()
        sessions[id(fetcher)] = (fetcher, FetchSession())
    return await svc.handle(fetcher._request(), sessions[id(fetcher)][1])


def log_bytes(p: Partition) -> bytes:
    return p.store.read(p.log_start_offset, 1 << 30, None).data if p.log_end_offset > p.log_start_offset else b""


def test_follower_catches_up_hw_advances_and_acks_complete(make_partition):
    async def scenario() -> None:
        leader, follower = make_partition(1), make_partition(2)
        leader.become_leader(state(1, 0), min_isr=2, now=0)
        follower.become_follower(state(1, 0))
        r = leader.append_as_leader(header(3), b"abc", now=1)
        assert (r.base_offset, r.last_offset) == (0, 2)
        ack = leader.wait_for_hw(r.last_offset + 1)
        assert not ack.done() and leader.high_watermark == 0
        svc = LeaderReplicationService(FakeRm(leader), max_fetch_bytes=1 << 20)
        fetcher = ReplicaFetcher(2, 1, lambda b: None, lambda: 1, lambda b: asyncio.sleep(0), 0, 1 << 20)
        fetcher.partitions[follower.key] = follower
        fetcher._apply(await exchange(svc, fetcher))  # data
        assert follower.log_end_offset == 3 and follower.high_watermark == 0
        fetcher._apply(await exchange(svc, fetcher))  # its LEO tells the leader
        assert leader.high_watermark == 3 and ack.done()
        assert follower.high_watermark == 3
        assert log_bytes(leader) == log_bytes(follower)
    asyncio.run(scenario())


def test_divergent_follower_truncates_to_leader_epoch_end(make_partition):
    async def scenario() -> None:
        old, new = make_partition(1), make_partition(2)
        # epoch 0: broker 1 leads; both get offsets 0-1
        old.become_leader(state(1, 0), min_isr=1, now=0)
        new.become_follower(state(1, 0))
        old.append_as_leader(header(2), b"ab", now=1)
        svc = LeaderReplicationService(FakeRm(old), max_fetch_bytes=1 << 20)
        f = ReplicaFetcher(2, 1, lambda b: None, lambda: 1, lambda b: asyncio.sleep(0), 0, 1 << 20)
        f.partitions[new.key] = new
        f._apply(await exchange(svc, f))
        assert new.log_end_offset == 2
        # broker 1 appends offsets 2-4 that never replicate, then loses leadership
        old.append_as_leader(header(3), b"xyz", now=2)
        # epoch 1: broker 2 leads and writes its own offsets 2-3
        new.become_leader(state(2, 1), min_isr=1, now=3)
        new.append_as_leader(header(1), b"N", now=4)
        new.append_as_leader(header(1), b"M", now=4)
        old.become_follower(state(2, 1))
        svc2 = LeaderReplicationService(FakeRm(new), max_fetch_bytes=1 << 20)
        f2 = ReplicaFetcher(1, 2, lambda b: None, lambda: 1, lambda b: asyncio.sleep(0), 0, 1 << 20)
        f2.partitions[old.key] = old
        resp = await exchange(svc2, f2)
        assert resp.results[0].diverging_epoch == 0 and resp.results[0].diverging_end_offset == 2
        f2._apply(resp)
        assert old.log_end_offset == 2  # the unreplicated tail is gone
        for _ in range(3):
            f2._apply(await exchange(svc2, f2))
        assert old.log_end_offset == 4
        assert log_bytes(old) == log_bytes(new)
    asyncio.run(scenario())


def test_stale_and_unknown_leader_epochs_and_not_leader(make_partition):
    leader, follower = make_partition(1), make_partition(2)
    leader.become_leader(state(1, 3), min_isr=1, now=0)
    follower.become_follower(state(1, 2))  # follower still believes epoch 2
    assert fetch_once(leader, follower).results[0].error_code == pb.FENCED_LEADER_EPOCH
    follower.become_follower(state(1, 4))
    assert fetch_once(leader, follower).results[0].error_code == pb.UNKNOWN_LEADER_EPOCH
    leader.become_follower(state(2, 4))
    assert fetch_once(leader, follower).results[0].error_code == pb.NOT_LEADER_OR_FOLLOWER
    with pytest.raises(PartitionError) as exc:
        leader.append_as_leader(header(1), b"x", now=1)
    assert exc.value.code == pb.NOT_LEADER_OR_FOLLOWER


def test_leadership_loss_fails_waiting_acks_as_unknown(make_partition):
    async def scenario() -> None:
        leader = make_partition(1)
        leader.become_leader(state(1, 0), min_isr=2, now=0)
        r = leader.append_as_leader(header(1), b"x", now=1)
        ack = leader.wait_for_hw(r.last_offset + 1)
        leader.become_follower(state(2, 1))
        assert leader.role == Role.FOLLOWER
        with pytest.raises(PartitionError) as exc:
            await ack
        assert exc.value.code == pb.NOT_LEADER_OR_FOLLOWER and "unknown" in exc.value.message
    asyncio.run(scenario())


def test_follower_behind_the_leaders_log_start_restarts_there(tmp_path):
    """Retention removed what a new follower would need: it restarts at the leader's log start."""
    from semel.storage.kv import KvStore

    cfg = md.TopicConfig(segment_bytes=1024, retention_bytes=2048)
    t = md.Topic("t", "0123456789abcdef", False, 2, cfg, ())
    kvs, parts = [], []
    for b in (1, 2):
        d = tmp_path / f"b{b}"
        (d / "log").mkdir(parents=True)
        kvs.append(KvStore.open(d / "kv"))
        parts.append(Partition("t", 0, t.topic_id, d, open_replica_store(d / "log", t, 0, kv=kvs[-1]), b, 1000,
                               clock=FakeClock()))
    leader, follower = parts
    try:
        async def scenario() -> None:
            leader.become_leader(md.PartitionState("t", 0, (1, 2), (1,), 1, 0, 0), min_isr=1, now=0)
            for i in range(40):
                leader.append_as_leader(header(1), b"x" * 200, now=i)
            assert leader.store.apply_retention(100) > 0
            follower.become_follower(md.PartitionState("t", 0, (1, 2), (1,), 1, 0, 0))
            svc = LeaderReplicationService(FakeRm(leader), max_fetch_bytes=1 << 20)
            f = ReplicaFetcher(2, 1, lambda b: None, lambda: 1, lambda b: asyncio.sleep(0), 0, 1 << 20)
            f.partitions[follower.key] = follower
            resp = await exchange(svc, f)
            assert resp.results[0].error_code == pb.OFFSET_OUT_OF_RANGE
            f._apply(resp)
            assert follower.log_start_offset == follower.log_end_offset == leader.log_start_offset
            for _ in range(3):
                f._apply(await exchange(svc, f))
            assert follower.log_end_offset == leader.log_end_offset == 40
            assert log_bytes(follower) == log_bytes(leader)
        asyncio.run(scenario())
    finally:
        for p in parts:
            p.close()
        for kv in kvs:
            kv.close()


def test_leader_side_answers_bad_replica_fetches_with_errors(make_partition):
    leader = make_partition(1)
    leader.become_leader(state(1, 0), min_isr=1, now=0)
    leader.append_as_leader(header(2), b"ab", now=1)
    svc = LeaderReplicationService(FakeRm(leader), max_fetch_bytes=1 << 20)

    def one(**fields):
        fp = dict(topic="t", partition=0, fetch_offset=0, current_leader_epoch=0, last_fetched_epoch=-1)
        fp.update(fields)
        req = rpb.ReplicaFetchRequest(replica_id=2, partitions=[rpb.ReplicaFetchPartition(**fp)], max_wait_ms=0)
        return asyncio.run(svc.handle(req)).results[0]

    assert one(topic="nope").error_code == pb.NOT_LEADER_OR_FOLLOWER
    assert one(partition=5).error_code == pb.NOT_LEADER_OR_FOLLOWER
    assert one(fetch_offset=-3).error_code == pb.OFFSET_OUT_OF_RANGE
    far = one(fetch_offset=99, last_fetched_epoch=0)  # ahead of the leader in its epoch: truncate to its end
    assert far.diverging_epoch == 0 and far.diverging_end_offset == 2
    blind = one(fetch_offset=99)  # ahead with no epoch to compare: the follower falls back to its HW
    assert blind.diverging_epoch == -1 and blind.diverging_end_offset == 2
    assert one(last_fetched_epoch=7, fetch_offset=2).diverging_epoch == -1  # an epoch the leader never had
    ok = one()
    assert ok.error_code == pb.NONE and ok.records and ok.high_watermark >= 0
    # a replica id that is not a replica of the partition reads nothing and moves no HW (issue 16)
    req = rpb.ReplicaFetchRequest(replica_id=99, partitions=[rpb.ReplicaFetchPartition(
        topic="t", partition=0, fetch_offset=2, current_leader_epoch=0, last_fetched_epoch=0)], max_wait_ms=0)
    stranger = asyncio.run(svc.handle(req)).results[0]
    assert stranger.error_code == pb.REPLICA_NOT_AVAILABLE and not stranger.records


def test_follower_that_led_an_epoch_without_appending_rejoins(make_partition):
    """Regression (kill/restart cycles): B leads epoch 1 without appending, then follows C at
    epoch 3, which never heard of epoch 1. B must not spin on "diverging" forever."""
    async def scenario() -> None:
        a, b, c = make_partition(1), make_partition(2), make_partition(3)
        a.become_leader(md.PartitionState("t", 0, (1, 2, 3), (1, 2, 3), 1, 0, 0), min_isr=1, now=0)
        a.append_as_leader(header(2), b"ab", now=1)
        for follower in (b, c):
            follower.become_follower(md.PartitionState("t", 0, (1, 2, 3), (1, 2, 3), 1, 0, 0))
            f = ReplicaFetcher(follower.broker_id, 1, lambda x: None, lambda: 1, lambda x: asyncio.sleep(0), 0, 1 << 20)
            f.partitions[follower.key] = follower
            f._apply(await exchange(LeaderReplicationService(FakeRm(a), 1 << 20), f))
        b.become_leader(md.PartitionState("t", 0, (1, 2, 3), (2, 3), 2, 1, 1), min_isr=1, now=2)  # no appends
        c.become_leader(md.PartitionState("t", 0, (1, 2, 3), (3,), 3, 3, 3), min_isr=1, now=3)
        c.append_as_leader(header(1), b"c", now=4)
        b.become_follower(md.PartitionState("t", 0, (1, 2, 3), (3,), 3, 3, 3))
        svc = LeaderReplicationService(FakeRm(c), 1 << 20)
        f = ReplicaFetcher(2, 3, lambda x: None, lambda: 1, lambda x: asyncio.sleep(0), 0, 1 << 20)
        f.partitions[b.key] = b
        for _ in range(4):
            f._apply(await exchange(svc, f))
        assert b.log_end_offset == c.log_end_offset == 3
        assert log_bytes(b) == log_bytes(c)
    asyncio.run(scenario())


def test_a_fetch_session_names_and_answers_only_what_changed(open_store):
    """KIP-227 on the stream: after the first (full) request, an idle caught-up follower sends
    requests that name nothing and gets empty answers, yet still counts as fetching for the
    ISR; new data on one partition comes back alone, and only that partition is named next."""
    clock = FakeClock()

    def part(broker_id: int, i: int) -> Partition:
        d, store = open_store(broker_id, i)
        return Partition("t", i, "0123456789abcdef", d, store, broker_id, lag_time_max_ms=1000,
                         clock=clock)

    def st(i: int) -> md.PartitionState:
        return md.PartitionState("t", i, (1, 2), (1, 2), 1, 0, 0)

    async def scenario() -> None:
        leaders = [part(1, i) for i in range(3)]
        followers = [part(2, i) for i in range(3)]
        for i in range(3):
            leaders[i].become_leader(st(i), min_isr=2, now=0)
            leaders[i].append_as_leader(header(1), b"a", now=1)
            followers[i].become_follower(st(i))
        svc = LeaderReplicationService(FakeRm(*leaders), max_fetch_bytes=1 << 20)
        f = ReplicaFetcher(2, 1, lambda b: None, lambda: 1, lambda b: asyncio.sleep(0), 0, 1 << 20)
        for p in followers:
            f.partitions[p.key] = p
        session = FetchSession()
        first = f._request()
        assert not first.incremental and len(first.partitions) == 3
        f._apply(await svc.handle(first, session))
        req = f._request()  # every LEO moved: all three named, and the HWs come back
        assert req.incremental and len(req.partitions) == 3
        assert f._apply(await svc.handle(req, session))
        assert [p.high_watermark for p in followers] == [1, 1, 1]

        caught_up_before = [lp.progress.followers[2].last_caught_up_ms for lp in leaders]
        clock.advance(10)
        idle = f._request()
        assert idle.incremental and len(idle.partitions) == 0
        resp = await svc.handle(idle, session)
        assert list(resp.results) == [] and f._apply(resp)  # an expired long-poll is not an error
        assert [lp.progress.followers[2].last_caught_up_ms for lp in leaders] == [
            before + 10 for before in caught_up_before]  # fetched, by omission

        leaders[1].append_as_leader(header(2), b"bc", now=2)
        resp = await svc.handle(f._request(), session)
        assert [(r.partition, len(r.records) > 0) for r in resp.results] == [(1, True)]
        f._apply(resp)
        req = f._request()
        assert [fp.partition for fp in req.partitions] == [1]
        resp = await svc.handle(req, session)
        assert [(r.partition, r.high_watermark) for r in resp.results] == [(1, 3)]
        f._apply(resp)
        assert [p.log_end_offset for p in followers] == [p.log_end_offset for p in leaders] == [1, 3, 1]
        assert followers[1].high_watermark == 3

        leaders[2].become_follower(md.PartitionState("t", 2, (1, 2), (1, 2), 2, 1, 1))  # led elsewhere now
        for _ in range(2):  # not named again, yet answered with its error until the follower moves on
            resp = await svc.handle(f._request(), session)
            assert [(r.partition, r.error_code) for r in resp.results] == [(2, pb.NOT_LEADER_OR_FOLLOWER)]
            assert not f._apply(resp)
    asyncio.run(scenario())


def test_a_new_high_watermark_rides_on_the_next_answer_instead_of_ending_the_poll(open_store):
    """The follower's fetch that advances the HW is not answered for the HW alone (that would
    double the rounds per acks=all write): the HW comes with the next data, or at the poll's end."""
    clock = FakeClock()

    def part(broker_id: int, i: int) -> Partition:
        d, store = open_store(broker_id, i)
        return Partition("t", i, "0123456789abcdef", d, store, broker_id, lag_time_max_ms=1000,
                         clock=clock)

    async def scenario() -> None:
        leaders = [part(1, i) for i in range(2)]
        followers = [part(2, i) for i in range(2)]
        for i in range(2):
            st = md.PartitionState("t", i, (1, 2), (1, 2), 1, 0, 0)
            leaders[i].become_leader(st, min_isr=2, now=0)
            followers[i].become_follower(st)
        svc = LeaderReplicationService(FakeRm(*leaders), max_fetch_bytes=1 << 20)
        f = ReplicaFetcher(2, 1, lambda b: None, lambda: 1, lambda b: asyncio.sleep(0), 300, 1 << 20)
        for p in followers:
            f.partitions[p.key] = p
        session = FetchSession()
        ack = leaders[0].wait_for_hw(leaders[0].append_as_leader(header(1), b"a", now=1).last_offset + 1)
        f._apply(await svc.handle(f._request(), session))  # the data
        assert followers[0].log_end_offset == 1 and followers[0].high_watermark == 0

        poll = asyncio.ensure_future(svc.handle(f._request(), session))  # its LEO: the leader's HW moves
        await run_ready()
        assert ack.done() and leaders[0].high_watermark == 1  # acks=all needs only the leader's HW
        assert not poll.done()  # ... and the follower is not answered for the HW alone
        leaders[1].append_as_leader(header(2), b"bc", now=2)
        resp = await asyncio.wait_for(poll, 1)
        assert sorted((r.partition, len(r.records) > 0, r.high_watermark) for r in resp.results) == [
            (0, False, 1), (1, True, 0)]  # the HW rode on partition 1's data
        f._apply(resp)
        assert followers[0].high_watermark == 1

        poll = asyncio.ensure_future(svc.handle(f._request(), session))  # partition 1's HW moves
        await run_ready()
        assert leaders[1].high_watermark == 2 and not poll.done()  # no data follows: still parked
        resp = await asyncio.wait_for(poll, 5)
        assert [(r.partition, r.high_watermark) for r in resp.results] == [(1, 2)]  # told at the poll's end
    asyncio.run(scenario())


def test_the_store_bounds_a_read_by_its_number_of_batches_and_returns_their_headers(make_partition):
    """`read(..., max_batches)` returns at most that many whole batches (at least one): the broker
    relies on it to bound its per-batch work per fetch. The headers it returns are those of the
    bytes it returns, so the fetch path need not decode them again."""
    from semel.storage.batch import iter_batches

    p = make_partition(1)
    p.become_leader(state(1, 0, isr=(1,)), min_isr=1, now=0)
    for i in range(5):
        assert p.append_as_leader(header(2), b"abc", now=i).error_code == pb.NONE

    def bases(read):
        assert [h for h, _ in iter_batches(read.data)] == list(read.headers)
        return [h.base_offset for h in read.headers]

    assert bases(p.store.read(0, 1 << 20, None)) == [0, 2, 4, 6, 8]
    assert bases(p.store.read(0, 1 << 20, None, 2)) == [0, 2]
    assert bases(p.store.read(3, 1 << 20, None, 1)) == [2]  # the batch holding offset 3
    assert bases(p.store.read(0, 1 << 20, None, 0)) == [0]  # at least one
    assert bases(p.store.read(4, 1 << 20, 8, 10)) == [4, 6]  # max_offset still applies


def test_an_isr_proposal_whose_answer_was_lost_outlives_images_that_have_not_answered_it(make_partition):
    """Chaos soak idempotent/partition seed 351492744: the leader's AlterPartition adding a
    caught-up replica was committed, but the answer did not come back (and the leader's image
    lagged); an unrelated metadata change then reconciled the partition at the old partition
    epoch, which cleared the proposal, and the HW passed offsets the new ISR member lacked. It
    was elected and an acknowledged write was lost. Only a newer partition epoch settles it."""
    import dataclasses

    from semel.cluster.broker.replication import IsrMaintainer

    async def scenario() -> None:
        leader = make_partition(1)
        st = md.PartitionState("t", 0, (1, 2, 3), (1, 2), 1, 0, 5)
        leader.become_leader(st, min_isr=2, now=0)
        leader.append_as_leader(header(1), b"a", now=1)
        progress = leader.progress
        assert progress is not None
        leader.on_follower_fetch(2, 1, now=2)
        leader.on_follower_fetch(3, 1, now=2)  # caught up: it may join
        assert leader.high_watermark == 1
        committed: list[md.AlterPartition] = []

        async def submit(cmd: md.AlterPartition) -> object:
            committed.append(cmd)  # the quorum commits it ...
            raise TimeoutError("the answer was lost")  # ... and the leader never hears so

        class Rm:
            clock = leader.clock
            broker_id, broker_epoch = 1, 1

            def leaders(self) -> list[Partition]:
                return [leader]

        IsrMaintainer(Rm(), submit, interval_ms=1).check(3)  # type: ignore[arg-type]
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert [c.new_isr for c in committed] == [(1, 2, 3)]
        leader.update_leader_state(st, min_isr=2, now=4)  # an unrelated metadata change: still epoch 5
        leader.append_as_leader(header(1), b"b", now=5)
        leader.on_follower_fetch(2, 2, now=6)
        assert leader.high_watermark == 1  # 3 is in the quorum's ISR and lacks offset 1
        leader.update_leader_state(dataclasses.replace(st, isr=(1, 2, 3), partition_epoch=6), min_isr=2, now=7)
        leader.on_follower_fetch(3, 2, now=8)
        assert leader.high_watermark == 2

    asyncio.run(scenario())
