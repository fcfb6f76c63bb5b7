"""The group state machine: joins, leaves, timeouts, reconciliation, the assignor."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semel import limits
from semel.coordinator.group_records import MemberState
from semel.coordinator.group_state import (
    GroupConfig,
    GroupStateMachine,
    HeartbeatRequest,
    assign,
    describe,
)
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2, group_pb2

E = common_pb2.ErrorCode
CFG = GroupConfig(session_timeout_ms=1000, heartbeat_interval_ms=100, rebalance_timeout_ms_default=500)


def tps(topic: str, *parts: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in parts)


class Harness:
    """Drives the state machine as the shell would: prepare, 'write', complete."""

    def __init__(self, counts: dict[str, int], config: GroupConfig = CFG) -> None:
        self.sm = GroupStateMachine(config)
        self.counts = counts
        self.now_ms = 0
        self.written: list = []
        self._ids = itertools.count(1)

    def hb(self, group: str, member_id: str, epoch: int, **kw):
        req = HeartbeatRequest(group, member_id, epoch, **kw)
        decision = self.sm.prepare_heartbeat(req, self.now_ms, self.counts, new_member_id=f"m{next(self._ids)}")
        self.written.extend(decision.records)
        resp = self.sm.complete(decision, self.now_ms)
        self.sm.check_invariants()
        return resp

    def join(self, group: str, topics: tuple[str, ...], member_id: str = "", **kw):
        return self.hb(group, member_id, 0, subscribed_topics=topics, owned=frozenset(), **kw)

    def expire(self):
        removed = []
        for decision in self.sm.expire(self.now_ms, self.counts):
            self.written.extend(decision.records)
            self.sm.complete(decision, self.now_ms)
            removed.extend(decision.removed_members)
        self.sm.check_invariants()
        return removed


def test_first_member_gets_every_partition():
    h = Harness({"t": 4})
    r = h.join("g", ("t",))
    assert r.error == E.NONE and r.member_id == "m1"
    assert r.member_epoch == 1 and r.assignment == tps("t", 0, 1, 2, 3)
    assert h.sm.group("g").state() == group_pb2.GROUP_STATE_STABLE
    assert r.heartbeat_interval_ms == 100


def test_second_member_waits_for_revocation_before_getting_partitions():
    h = Harness({"t": 4})
    a = h.join("g", ("t",))
    b = h.join("g", ("t",))
    # b's target is half of the partitions, but a still holds all of them.
    assert b.member_epoch == 2 and b.assignment == frozenset()
    assert h.sm.member("g", b.member_id).state == MemberState.UNRELEASED_PARTITIONS
    # a learns it must give up two partitions; its epoch does not move yet.
    a2 = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    assert a2.member_epoch == 1 and len(a2.assignment) == 2
    assert h.sm.member("g", a.member_id).state == MemberState.UNREVOKED_PARTITIONS
    released = a.assignment - a2.assignment
    # b still gets nothing: a has not confirmed.
    b2 = h.hb("g", b.member_id, b.member_epoch, owned=frozenset())
    assert b2.assignment == frozenset()
    # a confirms the release -> epoch 2, stable; then b gets the released partitions.
    a3 = h.hb("g", a.member_id, a2.member_epoch, owned=a2.assignment)
    assert a3.member_epoch == 2 and a3.assignment == a2.assignment
    b3 = h.hb("g", b.member_id, b2.member_epoch, owned=frozenset())
    assert b3.assignment == released
    assert h.sm.group("g").state() == group_pb2.GROUP_STATE_STABLE


def test_a_reconciling_member_is_told_to_heartbeat_sooner():
    # A rebalance waits for each reconciling member's next heartbeat; at the regular interval
    # (5 s by default) a join took two intervals to settle. Members with partitions to give up
    # or to take are told the short interval; settled members keep the regular one.
    cfg = GroupConfig(session_timeout_ms=60_000, heartbeat_interval_ms=5_000)
    h = Harness({"t": 4}, cfg)
    a = h.join("g", ("t",))
    assert a.heartbeat_interval_ms == 5_000  # stable: owns its whole target
    b = h.join("g", ("t",))
    assert h.sm.member("g", b.member_id).state == MemberState.UNRELEASED_PARTITIONS
    assert b.heartbeat_interval_ms == limits.GROUP_RECONCILING_HEARTBEAT_INTERVAL_MS
    a2 = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    assert h.sm.member("g", a.member_id).state == MemberState.UNREVOKED_PARTITIONS
    assert a2.heartbeat_interval_ms == limits.GROUP_RECONCILING_HEARTBEAT_INTERVAL_MS
    a3 = h.hb("g", a.member_id, a2.member_epoch, owned=a2.assignment)
    b3 = h.hb("g", b.member_id, b.member_epoch, owned=frozenset())
    assert a3.heartbeat_interval_ms == b3.heartbeat_interval_ms == 5_000  # both settled again
    assert a3.assignment | b3.assignment == tps("t", 0, 1, 2, 3)
    # never longer than the configured interval
    short = Harness({"t": 4}, GroupConfig(session_timeout_ms=1000, heartbeat_interval_ms=100))
    short.join("g", ("t",))
    assert short.join("g", ("t",)).heartbeat_interval_ms == 100


def test_leave_frees_partitions_for_the_rest():
    h = Harness({"t": 3})
    a = h.join("g", ("t",))
    b = h.join("g", ("t",))
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    b = h.hb("g", b.member_id, b.member_epoch, owned=frozenset())
    assert a.assignment | b.assignment == tps("t", 0, 1, 2) and not (a.assignment & b.assignment)
    left = h.hb("g", b.member_id, -1)
    assert left.error == E.NONE and left.member_epoch == -1
    a2 = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    assert a2.assignment == tps("t", 0, 1, 2) and a2.member_epoch == 3
    assert h.sm.member_count("g") == 1


def test_session_timeout_removes_member_and_rebalances():
    h = Harness({"t": 2})
    a = h.join("g", ("t",))
    b = h.join("g", ("t",))
    h.now_ms = 600
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)  # a heartbeats, b does not
    h.now_ms = 999
    assert h.expire() == []
    h.now_ms = 1000
    assert h.expire() == [b.member_id]
    epoch = h.sm.group("g").group_epoch
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    assert a.assignment == tps("t", 0, 1) and a.member_epoch == epoch
    # The removed member is a zombie now: its heartbeats are refused.
    z = h.hb("g", b.member_id, b.member_epoch, owned=frozenset())
    assert z.error == E.UNKNOWN_MEMBER_ID


def test_expiry_per_group_is_prepared_when_dequeued():
    h = Harness({"t": 2})
    a = h.join("g", ("t",))
    b = h.join("h", ("t",))
    h.now_ms = 1000
    assert h.sm.expired_groups(h.now_ms) == ["g", "h"]
    # The shell queues the expiry of g behind a heartbeat that was already in flight.
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    assert h.sm.prepare_expire("g", h.now_ms, h.counts) is None
    decision = h.sm.prepare_expire("h", h.now_ms, h.counts)
    assert decision.removed_members == (b.member_id,)
    h.sm.complete(decision, h.now_ms)
    assert h.sm.expired_groups(h.now_ms) == [] and h.sm.member_count("h") == 0


def test_member_that_does_not_revoke_in_time_is_removed():
    h = Harness({"t": 2})
    a = h.join("g", ("t",), rebalance_timeout_ms=300)
    b = h.join("g", ("t",))
    h.now_ms = 10
    a2 = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)  # told to revoke one
    assert len(a2.assignment) == 1
    h.now_ms = 200
    h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)  # still owns both: not released
    h.hb("g", b.member_id, b.member_epoch, owned=frozenset())
    assert h.expire() == []
    h.now_ms = 310
    assert h.expire() == [a.member_id]
    b2 = h.hb("g", b.member_id, b.member_epoch, owned=frozenset())
    assert b2.assignment == tps("t", 0, 1)


def test_epoch_checks_fence_zombies_but_tolerate_a_lost_response():
    h = Harness({"t": 2})
    a = h.join("g", ("t",))
    assert h.hb("g", a.member_id, a.member_epoch + 1, owned=a.assignment).error == E.FENCED_MEMBER_EPOCH
    b = h.join("g", ("t",))
    a2 = h.hb("g", a.member_id, 1, owned=a.assignment)
    a3 = h.hb("g", a.member_id, 1, owned=a2.assignment)
    assert a3.member_epoch == 2  # the group epoch after b joined
    # The response carrying epoch 3 got lost: a heartbeats again with epoch 1 and its old set.
    again = h.hb("g", a.member_id, 1, owned=a2.assignment)
    assert again.error == E.NONE and again.member_epoch == a3.member_epoch
    # But an old epoch claiming partitions it does not have is a zombie.
    assert h.hb("g", a.member_id, 1, owned=tps("t", 0, 1)).error == E.FENCED_MEMBER_EPOCH
    del b


def test_rejoin_with_same_id_replaces_old_incarnation():
    h = Harness({"t": 2})
    a = h.join("g", ("t",), member_id="fixed")
    assert a.member_id == "fixed"
    a2 = h.join("g", ("t",), member_id="fixed")
    assert a2.member_epoch > a.member_epoch and a2.assignment == tps("t", 0, 1)
    assert h.sm.member_count("g") == 1
    assert h.hb("g", "fixed", a.member_epoch, owned=a.assignment).error == E.FENCED_MEMBER_EPOCH


def test_subscription_change_and_topic_growth_bump_the_epoch():
    h = Harness({"t": 1, "u": 2})
    a = h.join("g", ("t",))
    assert a.assignment == tps("t", 0)
    a = h.hb("g", a.member_id, a.member_epoch, subscribed_topics=("t", "u"), owned=a.assignment)
    assert a.assignment == tps("t", 0) | tps("u", 0, 1) and a.member_epoch == 2
    h.counts["u"] = 3
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    assert TopicPartition("u", 2) in a.assignment and a.member_epoch == 3
    a = h.hb("g", a.member_id, a.member_epoch, subscribed_topics=("u",), owned=a.assignment)
    assert a.assignment == tps("u", 0, 1, 2)  # t-0 is revoked at once: nobody else wants it
    del h.counts["u"]  # topic deleted
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    a = h.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    assert a.assignment == frozenset()


def test_bounds_and_validation():
    h = Harness({"t": 1}, GroupConfig(session_timeout_ms=1000, heartbeat_interval_ms=100, max_members_per_group=2, max_groups=1))
    assert h.join("g", ("t",)).error == E.NONE
    assert h.join("g", ("t",)).error == E.NONE
    assert h.join("g", ("t",)).error == E.GROUP_MAX_SIZE_REACHED
    assert h.join("h", ("t",)).error == E.RESOURCE_EXHAUSTED
    assert h.join("", ("t",)).error == E.INVALID_GROUP_ID
    assert h.join("g" * 256, ("t",)).error == E.INVALID_GROUP_ID
    assert h.hb("g", "", 0).error == E.INVALID_REQUEST  # join without subscription
    assert h.hb("g", "", 5).error == E.INVALID_REQUEST
    assert h.hb("g", "nobody", 3).error == E.UNKNOWN_MEMBER_ID
    assert h.hb("g", "nobody", -1).error == E.UNKNOWN_MEMBER_ID
    assert h.hb("g", "x" * 65, 0, subscribed_topics=("t",)).error == E.INVALID_REQUEST


def test_error_decisions_write_nothing():
    h = Harness({"t": 1})
    d = h.sm.prepare_heartbeat(HeartbeatRequest("g", "ghost", 4), 0, h.counts)
    assert d.records == () and d.response.error == E.UNKNOWN_MEMBER_ID


def test_complete_refuses_a_stale_decision():
    h = Harness({"t": 2})
    a = h.join("g", ("t",))
    d1 = h.sm.prepare_heartbeat(HeartbeatRequest("g", "", 0, ("t",), owned=frozenset()), 0, h.counts, "x")
    d2 = h.sm.prepare_heartbeat(HeartbeatRequest("g", "", 0, ("t",), owned=frozenset()), 0, h.counts, "y")
    h.sm.complete(d1, 0)
    with pytest.raises(AssertionError):
        h.sm.complete(d2, 0)
    del a


def test_describe():
    h = Harness({"t": 2})
    a = h.join("g", ("t",), client_id="c1")
    d = describe(h.sm, "g")
    assert d.state == group_pb2.GROUP_STATE_STABLE and d.group_epoch == 1 and d.assignment_epoch == 1
    (m,) = d.members
    assert m.member_id == a.member_id and m.client_id == "c1" and m.target == tps("t", 0, 1)
    assert describe(h.sm, "none") is None


# --- the assignor ---------------------------------------------------------------------------------


def test_assign_is_balanced_and_sticky():
    counts = {"t": 6}
    one = assign({"a": ("t",)}, counts, {})
    assert one == {"a": tps("t", *range(6))}
    two = assign({"a": ("t",), "b": ("t",)}, counts, one)
    assert len(two["a"]) == 3 and len(two["b"]) == 3 and two["a"] <= one["a"]
    three = assign({"a": ("t",), "b": ("t",), "c": ("t",)}, counts, two)
    assert [len(three[m]) for m in "abc"] == [2, 2, 2]
    assert three["a"] <= two["a"] and three["b"] <= two["b"]
    back = assign({"a": ("t",), "c": ("t",)}, counts, three)
    assert three["a"] <= back["a"] and three["c"] <= back["c"]


def test_assign_respects_subscriptions():
    out = assign({"a": ("t",), "b": ("t", "u"), "c": ("u",)}, {"t": 3, "u": 3, "v": 9}, {})
    assert all(tp.topic == "t" for tp in out["a"]) and all(tp.topic == "u" for tp in out["c"])
    assert sorted(len(p) for p in out.values()) == [2, 2, 2]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    subs=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sets(st.sampled_from(["t", "u", "v"]), min_size=1),
        max_size=5,
    ),
    counts=st.fixed_dictionaries({"t": st.integers(0, 7), "u": st.integers(0, 5), "v": st.integers(0, 3)}),
    seed_prev=st.integers(0, 3),
)
def test_assign_covers_every_partition_once(subs, counts, seed_prev):
    subs = {m: tuple(sorted(ts)) for m, ts in subs.items()}
    prev = assign({m: ("t", "u", "v") for m in list(subs)[:seed_prev]}, counts, {})
    out = assign(subs, counts, prev)
    wanted = {TopicPartition(t, p) for ts in subs.values() for t in ts for p in range(counts[t])}
    got = [tp for parts in out.values() for tp in parts]
    assert len(got) == len(set(got)) and set(got) == wanted
    for m, parts in out.items():
        assert all(tp.topic in subs[m] for tp in parts)
        for tp in parts:  # no partition could move to a member with >= 2 fewer
            assert all(len(parts) <= len(out[o]) + 1 for o in subs if tp.topic in subs[o])
    assert assign(dict(reversed(list(subs.items()))), counts, prev) == out  # order does not matter


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    members=st.sets(st.sampled_from("abcdefgh"), min_size=1),
    old_members=st.sets(st.sampled_from("abcdefgh"), min_size=1),
    count=st.integers(0, 30),
    old_count=st.integers(0, 30),
)
def test_uniform_assignment_is_balanced_and_sticky(members, old_members, count, old_count):
    previous = assign({m: ("t",) for m in old_members}, {"t": old_count}, {})
    out = assign({m: ("t",) for m in members}, {"t": count}, previous)
    sizes = [len(p) for p in out.values()]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == count
    assert set().union(*out.values()) == {TopicPartition("t", p) for p in range(count)}
    floor = count // len(members)
    for m in members:  # whoever had at most its fair share keeps all of it
        kept = {tp for tp in previous.get(m, frozenset()) if tp.partition < count}
        if len(kept) <= floor:
            assert kept <= out[m]


def test_assignor_is_complete_and_balanced_at_its_bounds():
    """How long this takes is a benchmark's question (`semel bench assignor`), not a test's."""
    subs = {f"m{i:04d}": ("t",) if i % 3 else ("t", "u") for i in range(limits.MAX_MEMBERS_PER_GROUP)}
    first = assign(subs, {"t": 5000, "u": 5000}, {})
    again = assign({**subs, "new": ("u",)}, {"t": 5000, "u": 5000}, first)
    subs["new"] = ("u",)
    owner = {tp: m for m, parts in again.items() for tp in parts}
    assert sum(len(parts) for parts in again.values()) == len(owner) == 10_000  # each partition once
    assert all(tp.topic in subs[m] for tp, m in owner.items())
    for topic in ("t", "u"):  # no partition could move to an eligible member with two fewer
        most = max(len(again[m]) for tp, m in owner.items() if tp.topic == topic)
        assert most - min(len(again[m]) for m in subs if topic in subs[m]) <= 1
    assert again["new"]


# --- property: random join/leave/heartbeat/timeout sequences --------------------------------------

TOPIC_COUNTS = {"t": 5, "u": 3}
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["join", "join_slow", "leave", "hb", "hb", "hb", "hb", "hb", "tick", "resub", "grow"]),
        st.integers(0, 5),
        st.sampled_from([("t",), ("u",), ("t", "u")]),
    ),
    max_size=100,
)


class Client:
    """A member that obeys at once, or (slow) keeps revoked partitions for two more heartbeats."""

    def __init__(self, member_id: str, topics, slow: bool) -> None:
        self.member_id = member_id
        self.epoch = 0
        self.owned: frozenset = frozenset()
        self.topics = topics
        self.slow = slow
        self.delayed = 0

    def obey(self, assignment: frozenset) -> None:
        if self.slow and (self.owned - assignment) and self.delayed < 2:
            self.delayed += 1
            self.owned = self.owned | assignment
        else:
            self.delayed = 0
            self.owned = assignment


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_random_membership_never_double_assigns_and_converges(actions):
    h = Harness(dict(TOPIC_COUNTS))
    clients: dict[str, Client] = {}

    def obey(c: Client, resp) -> None:
        if resp.error != E.NONE:
            clients.pop(c.member_id, None)  # fenced: drops everything
            return
        c.epoch = resp.member_epoch
        c.obey(resp.assignment)

    def check_disjoint() -> None:
        seen: dict = {}
        for c in clients.values():
            for tp in c.owned:
                assert tp not in seen, f"{tp} owned by {seen[tp]} and {c.member_id}"
                seen[tp] = c.member_id

    for kind, idx, topics in actions:
        ids = sorted(clients)
        c = clients[ids[idx % len(ids)]] if ids else None
        if kind in ("join", "join_slow") or c is None:
            r = h.join("g", topics)
            if r.error == E.NONE:
                clients[r.member_id] = Client(r.member_id, topics, kind == "join_slow")
                obey(clients[r.member_id], r)
        elif kind == "leave":
            assert h.hb("g", c.member_id, -1).error == E.NONE
            del clients[c.member_id]
        elif kind == "hb":
            obey(c, h.hb("g", c.member_id, c.epoch, owned=c.owned))
        elif kind == "resub":
            c.topics = topics
            obey(c, h.hb("g", c.member_id, c.epoch, subscribed_topics=topics, owned=c.owned))
        elif kind == "grow":
            h.counts["t"] += 1
        elif kind == "tick":
            h.now_ms += 400
            for mid in h.expire():
                clients.pop(mid, None)
        check_disjoint()

    # Quiet period: everyone heartbeats and obeys; the group must converge.
    for _ in range(10):
        for mid in sorted(clients):
            obey(clients[mid], h.hb("g", mid, clients[mid].epoch, owned=clients[mid].owned))
            check_disjoint()
    if clients:
        group = h.sm.group("g")
        assert group.state() == group_pb2.GROUP_STATE_STABLE
        wanted = {
            TopicPartition(t, p) for c in clients.values() for t in c.topics for p in range(h.counts[t])
        }
        owned = [tp for c in clients.values() for tp in c.owned]
        assert len(owned) == len(set(owned)) and set(owned) == wanted
        assert all(c.epoch == group.group_epoch for c in clients.values())
