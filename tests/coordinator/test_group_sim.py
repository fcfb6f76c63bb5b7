"""A seeded simulation of one coordinator partition: members (some slow to release), offset
commits, transactional commits, session timeouts, and coordinator failovers that reload the
partition from a view that lags the log. Checks, after every step: two live members never
own the same partition, the cores' invariants hold, and a zombie's commits are refused."""

from __future__ import annotations

import random

import pytest
from semel.coordinator.group_log import (
    GroupView,
    MemoryViewBackend,
    load_shard,
)
from semel.storage.batch import iter_batches
from semel.v1 import common_pb2

E = common_pb2.ErrorCode
COUNTS = {"t": 6, "u": 3}


class SimMember:
    def __init__(self, member_id: str, topics: tuple[str, ...], slow: bool) -> None:
        self.member_id = member_id
        self.topics = topics
        self.slow = slow
        self.epoch = 0
        self.owned: frozenset = frozenset()
        self.delayed = 0

    def obey(self, assignment: frozenset) -> None:
        if self.slow and (self.owned - assignment) and self.delayed < 2:
            self.delayed += 1
            self.owned = self.owned | assignment
        else:
            self.delayed = 0
            self.owned = assignment


def _reload(d, rng: random.Random, view: GroupView) -> None:
    """Failover: the new leader's view covers a random prefix of what the old one applied."""
    batches = list(iter_batches(d.log.read_from(view.next_offset)))
    for header, payload in batches[: rng.randrange(len(batches) + 1)]:
        view.apply_batch(header, payload)
    d.shard = load_shard(view, [d.log.read_from(view.next_offset)], d.now_ms, 0, d.shard.groups.config)
    _check_equals_full_replay(d)


def _check_equals_full_replay(d) -> None:
    """Whatever happened (live changes, reloads from partial views), the state equals a
    replay of the whole log from nothing."""
    fresh = load_shard(GroupView(MemoryViewBackend(), 0), [d.log.read_from(0)], d.now_ms, 0, d.shard.groups.config)
    assert fresh.dump() == d.shard.dump()


@pytest.mark.parametrize("seed", range(20))
def test_simulated_coordinator_with_failovers(driver, seed):
    print(f"seed={seed}")
    rng = random.Random(seed)
    d = driver(dict(COUNTS))
    view = GroupView(MemoryViewBackend(), 0)
    live: dict[str, SimMember] = {}
    zombies: list[SimMember] = []
    next_pid = 100
    open_txns: set[int] = set()
    for step in range(150):
        d.now_ms += rng.choice([0, 100, 200, 400])
        op = rng.random()
        if op < 0.12 or not live:
            topics = rng.choice([("t",), ("u",), ("t", "u")])
            r = d.join("g", topics)
            if r.error == E.NONE:
                m = live[r.member_id] = SimMember(r.member_id, topics, slow=rng.random() < 0.3)
                m.epoch = r.member_epoch
                m.obey(r.assignment)
        elif op < 0.6:
            m = live[rng.choice(sorted(live))]
            r = d.hb("g", m.member_id, m.epoch, owned=m.owned)
            if r.error == E.NONE:
                m.epoch = r.member_epoch
                m.obey(r.assignment)
            else:
                assert r.error in (E.UNKNOWN_MEMBER_ID, E.FENCED_MEMBER_EPOCH), (seed, step, r)
                zombies.append(live.pop(m.member_id))
        elif op < 0.65:
            m = live.pop(rng.choice(sorted(live)))
            d.hb("g", m.member_id, -1)
        elif op < 0.75 and live:
            m = live[rng.choice(sorted(live))]
            if m.owned:
                tp = rng.choice(sorted(m.owned))
                r = d.commit("g", {tp: step}, m.member_id, m.epoch)
                assert r.error in (E.NONE, E.STALE_MEMBER_EPOCH), (seed, step, r)
        elif op < 0.82 and live:
            m = live[rng.choice(sorted(live))]
            if m.owned:
                next_pid += 1
                tp = rng.choice(sorted(m.owned))
                r = d.txn_commit("g", {tp: step}, next_pid, m.member_id, m.epoch)
                if r.error == E.NONE:
                    open_txns.add(next_pid)
        elif op < 0.9 and open_txns:
            pid = rng.choice(sorted(open_txns))
            open_txns.discard(pid)
            d.marker(pid, commit=rng.random() < 0.7)
        elif op < 0.95:
            for mid in d.expire():
                zombies.append(live.pop(mid))
        else:
            _reload(d, rng, view)

        # Checks after every step.
        seen: dict = {}
        for m in live.values():
            for tp in m.owned:
                assert tp not in seen, f"seed={seed} step={step}: {tp} owned by {seen[tp]} and {m.member_id}"
                seen[tp] = m.member_id
        d.shard.groups.check_invariants()
        d.shard.offsets.check_invariants()
        for z in zombies:
            if z.member_id not in live and z.owned:
                tp = sorted(z.owned)[0]
                assert d.commit("g", {tp: 999_999}, z.member_id, z.epoch).error == E.UNKNOWN_MEMBER_ID
                assert d.txn_commit("g", {tp: 999_999}, 1, z.member_id, z.epoch).error == E.UNKNOWN_MEMBER_ID

    # Quiet period after a last failover: everyone converges to a stable, complete assignment.
    _reload(d, rng, view)
    for _ in range(8):
        for mid in sorted(live):
            m = live[mid]
            r = d.hb("g", mid, m.epoch, owned=m.owned)
            assert r.error == E.NONE, (seed, r)
            m.epoch = r.member_epoch
            m.obey(r.assignment)
    if live:
        wanted = {(t, p) for m in live.values() for t in m.topics for p in range(COUNTS[t])}
        owned = [tp for m in live.values() for tp in m.owned]
        assert len(owned) == len(set(owned)) and set(owned) == wanted, f"seed={seed}"
    assert all(c.committed_offset != 999_999 for c in d.shard.offsets.committed_offsets("g").values())
    _check_equals_full_replay(d)
