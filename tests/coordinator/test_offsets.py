"""Offset commits: fencing, transactional offsets, stable fetches, admin operations, lag."""

from __future__ import annotations

from semel.coordinator.offsets import OffsetsConfig, lag
from semel.topic_partition import TopicPartition
from semel.v1 import common_pb2

E = common_pb2.ErrorCode
T0 = TopicPartition("t", 0)
T1 = TopicPartition("t", 1)


def test_simple_commit_without_members_and_fetch(driver):
    d = driver()
    assert d.commit("g", {("t", 0): 5, ("t", 1): 7}).error == E.NONE
    assert d.committed("g") == {("t", 0): 5, ("t", 1): 7}
    r = d.fetch("g", [T0, TopicPartition("t", 9)])
    assert r.error == E.NONE
    assert [(o.tp, o.committed_offset, o.error) for o in r.offsets] == [(T0, 5, E.NONE), (TopicPartition("t", 9), -1, E.NONE)]
    assert d.commit("g", {("t", 0): 6}).error == E.NONE
    assert d.committed("g")[("t", 0)] == 6


def test_simple_commit_refused_while_group_has_members(driver):
    d = driver()
    d.join("g")
    assert d.commit("g", {("t", 0): 1}).error == E.UNKNOWN_MEMBER_ID
    assert d.committed("g") == {}


def test_member_commit_is_fenced_by_id_and_epoch(driver):
    d = driver()
    a = d.join("g")
    assert d.commit("g", {("t", 0): 3}, a.member_id, a.member_epoch).error == E.NONE
    assert d.commit("g", {("t", 0): 4}, a.member_id, a.member_epoch + 1).error == E.FENCED_MEMBER_EPOCH
    assert d.commit("g", {("t", 0): 4}, "stranger", a.member_epoch).error == E.UNKNOWN_MEMBER_ID
    assert d.commit("nogroup", {("t", 0): 4}, a.member_id, 1).error == E.UNKNOWN_MEMBER_ID
    d.join("g")  # bumps the group epoch; a moves to it on its next heartbeat
    a2 = d.hb("g", a.member_id, a.member_epoch, owned=a.assignment)
    a2 = d.hb("g", a.member_id, a2.member_epoch, owned=a2.assignment)
    assert a2.member_epoch > a.member_epoch
    assert d.commit("g", {("t", 0): 4}, a.member_id, a.member_epoch).error == E.STALE_MEMBER_EPOCH
    assert d.commit("g", {("t", 0): 4}, a.member_id, a2.member_epoch).error == E.NONE
    assert d.committed("g") == {("t", 0): 4}


def test_kicked_out_member_cannot_commit_normal_or_transactional(driver):
    d = driver()
    a = d.join("g", member_id="a")
    b = d.join("g", member_id="b")
    d.now_ms = 600
    b = d.hb("g", "b", b.member_epoch, owned=frozenset())
    d.now_ms = 1000
    assert d.expire() == ["a"]
    b = d.hb("g", "b", b.member_epoch, owned=frozenset())
    assert b.assignment == {T0, T1}
    # a is a zombie: it still believes it is member "a" at its old epoch.
    assert d.commit("g", {("t", 0): 9}, "a", a.member_epoch).error == E.UNKNOWN_MEMBER_ID
    assert d.txn_commit("g", {("t", 0): 9}, producer_id=7, member_id="a", member_epoch=a.member_epoch).error == E.UNKNOWN_MEMBER_ID
    # a rejoins under the same id: the old incarnation's epoch stays fenced.
    a_new = d.join("g", member_id="a")
    assert a_new.member_epoch != a.member_epoch
    assert d.commit("g", {("t", 0): 9}, "a", a.member_epoch).error == E.STALE_MEMBER_EPOCH
    assert d.txn_commit("g", {("t", 0): 9}, producer_id=7, member_id="a", member_epoch=a.member_epoch).error == E.FENCED_MEMBER_EPOCH
    assert d.committed("g") == {} and not d.shard.offsets.has_pending("g")
    # The live members commit fine.
    assert d.txn_commit("g", {("t", 1): 2}, producer_id=8, member_id="b", member_epoch=b.member_epoch).error == E.NONE


def test_txn_offsets_visible_only_after_commit_marker(driver):
    d = driver()
    d.commit("g", {("t", 0): 1})
    assert d.txn_commit("g", {("t", 0): 10, ("t", 1): 11}, producer_id=5).error == E.NONE
    assert d.committed("g") == {("t", 0): 1}
    stable = d.fetch("g", [T0, T1], require_stable=True)
    assert [o.error for o in stable.offsets] == [E.UNSTABLE_OFFSET_COMMIT, E.UNSTABLE_OFFSET_COMMIT]
    loose = d.fetch("g", [T0, T1])
    assert [(o.committed_offset, o.error) for o in loose.offsets] == [(1, E.NONE), (-1, E.NONE)]
    assert {o.tp for o in d.fetch("g", None, require_stable=True).offsets} == {T0, T1}
    d.marker(6, commit=True)  # another producer's marker changes nothing
    assert d.committed("g") == {("t", 0): 1}
    d.marker(5, commit=True)
    assert d.committed("g") == {("t", 0): 10, ("t", 1): 11}
    assert [o.error for o in d.fetch("g", [T0, T1], require_stable=True).offsets] == [E.NONE, E.NONE]
    d.marker(5, commit=True)  # a duplicate marker is harmless
    assert d.committed("g") == {("t", 0): 10, ("t", 1): 11}
    d.shard.offsets.check_invariants()


def test_txn_offsets_dropped_on_abort(driver):
    d = driver()
    d.commit("g", {("t", 0): 1})
    d.txn_commit("g", {("t", 0): 10}, producer_id=5)
    d.txn_commit("g", {("t", 0): 12}, producer_id=6)
    d.marker(5, commit=False)
    assert d.committed("g") == {("t", 0): 1}
    assert d.fetch("g", [T0], require_stable=True).offsets[0].error == E.UNSTABLE_OFFSET_COMMIT  # 6 still pending
    d.marker(6, commit=False)
    assert d.fetch("g", [T0], require_stable=True).offsets[0].committed_offset == 1
    assert not d.shard.offsets.pending and not d.shard.offsets.has_pending("g")


def test_later_plain_commit_wins_over_earlier_txn_commit(driver):
    d = driver()
    d.txn_commit("g", {("t", 0): 10}, producer_id=5)
    d.commit("g", {("t", 0): 20})
    d.marker(5, commit=True)
    assert d.committed("g") == {("t", 0): 20}
    d.commit("g", {("t", 1): 1})
    d.txn_commit("g", {("t", 1): 30}, producer_id=5, producer_epoch=1)
    d.marker(5, commit=True, producer_epoch=1)
    assert d.committed("g")[("t", 1)] == 30


def test_commit_validation_per_partition(driver):
    d = driver()
    r = d.commit("g", {("t", 0): -1, ("t", 1): 3})
    assert dict(r.partition_errors) == {T0: E.INVALID_REQUEST, T1: E.NONE}
    r = d.commit("g", {("t", 0): 3}, metadata="x" * 4097)
    assert dict(r.partition_errors) == {T0: E.OFFSET_METADATA_TOO_LARGE}
    assert d.committed("g") == {("t", 1): 3}
    assert d.commit("", {("t", 0): 1}).error == E.INVALID_GROUP_ID
    assert d.txn_commit("g", {("t", 0): 1}, producer_id=-1).error == E.INVALID_REQUEST


def test_bounds(driver):
    d = driver()
    d.shard.offsets.config = OffsetsConfig(max_offsets_per_group=2, max_groups=1, max_pending_producers=1)
    r = d.commit("g", {("t", 0): 1, ("t", 1): 1, ("t", 2): 1})
    assert [code for _, code in r.partition_errors] == [E.NONE, E.NONE, E.RESOURCE_EXHAUSTED]
    assert d.commit("h", {("t", 0): 1}).error == E.RESOURCE_EXHAUSTED
    assert d.txn_commit("g", {("t", 0): 2}, producer_id=1).error == E.NONE
    assert d.txn_commit("g", {("t", 0): 3}, producer_id=2).error == E.RESOURCE_EXHAUSTED
    assert d.txn_commit("g", {("t", 1): 3}, producer_id=1).error == E.NONE  # same producer: fine


def test_fetch_fencing(driver):
    d = driver()
    a = d.join("g")
    assert d.fetch("g", [T0], member_id=a.member_id, member_epoch=a.member_epoch).error == E.NONE
    assert d.fetch("g", [T0], member_id=a.member_id, member_epoch=0).error == E.STALE_MEMBER_EPOCH
    assert d.fetch("g", [T0], member_id="x", member_epoch=1).error == E.UNKNOWN_MEMBER_ID
    assert d.fetch("", [T0]).error == E.INVALID_GROUP_ID


def test_delete_group(driver):
    d = driver()
    a = d.join("g")
    d.commit("g", {("t", 0): 3}, a.member_id, a.member_epoch)
    off = d.shard.offsets
    assert off.prepare_delete_group("g", d.shard.groups).error == E.NON_EMPTY_GROUP
    assert off.prepare_delete_group("zzz", d.shard.groups).error == E.GROUP_ID_NOT_FOUND
    d.hb("g", a.member_id, -1)
    d.txn_commit("g", {("t", 0): 4}, producer_id=3)
    assert off.prepare_delete_group("g", d.shard.groups).error == E.NON_EMPTY_GROUP
    d.marker(3, commit=False)
    dec = off.prepare_delete_group("g", d.shard.groups)
    assert dec.error == E.NONE and dec.records
    assert d.shard.groups.group("g") is not None  # nothing changes before the write
    d._complete(dec)
    assert d.shard.groups.group("g") is None and d.committed("g") == {} and "g" not in off.group_ids()


def test_reset_offsets_only_for_empty_groups(driver):
    d = driver()
    a = d.join("g")
    off = d.shard.offsets
    assert off.prepare_reset("g", {T0: 0}, d.shard.groups, 0).error == E.NON_EMPTY_GROUP
    d.hb("g", a.member_id, -1)
    dec = off.prepare_reset("g", {T0: 0, T1: 5}, d.shard.groups, 0)
    assert dec.error == E.NONE
    d._complete(dec)
    assert d.committed("g") == {("t", 0): 0, ("t", 1): 5}


def test_lag_against_last_stable_offset(driver):
    assert lag(5, 10) == 5 and lag(10, 10) == 0 and lag(12, 10) == 0
    assert lag(-1, 10) == -1 and lag(3, -1) == -1
    d = driver()
    d.commit("g", {("t", 0): 5, ("t", 1): 7})
    assert d.shard.offsets.group_lag("g", {T0: 8}) == {T0: 3, T1: -1}


def test_member_commits_only_partitions_it_holds(driver):
    d = driver()
    a = d.join("g", member_id="a")
    b = d.join("g", member_id="b")
    a = d.hb("g", "a", a.member_epoch, owned=a.assignment)  # a must give one partition up
    (kept,) = a.assignment
    (revoked,) = {T0, T1} - {kept}
    # While revocation is pending, a may still commit the revoked partition (it holds it).
    r = d.commit("g", {revoked: 5, kept: 6}, "a", a.member_epoch)
    assert dict(r.partition_errors) == {revoked: E.NONE, kept: E.NONE}
    a = d.hb("g", "a", a.member_epoch, owned=a.assignment)  # released
    b = d.hb("g", "b", b.member_epoch, owned=frozenset())
    assert b.assignment == {revoked}
    # a is current and live, but the partition is b's now: a's commit for it is refused.
    r = d.commit("g", {revoked: 1, kept: 7}, "a", a.member_epoch)
    assert dict(r.partition_errors) == {revoked: E.STALE_MEMBER_EPOCH, kept: E.NONE}
    assert d.txn_commit("g", {revoked: 1}, producer_id=4, member_id="a", member_epoch=a.member_epoch).error == E.FENCED_MEMBER_EPOCH
    assert d.commit("g", {revoked: 8}, "b", b.member_epoch).error == E.NONE
    assert d.committed("g") == {(revoked.topic, revoked.partition): 8, (kept.topic, kept.partition): 7}


def test_offsets_of_abandoned_groups_expire(driver):
    d = driver()
    d.shard.offsets.config = OffsetsConfig(retention_ms=1000)
    off, groups = d.shard.offsets, d.shard.groups
    d.commit("old", {("t", 0): 1, ("t", 1): 1})
    a = d.join("busy")
    d.commit("busy", {("t", 0): 1}, a.member_id, a.member_epoch)
    left = d.join("left")
    d.hb("left", left.member_id, -1)  # empty group with metadata, never committed
    d.commit("pending", {("t", 0): 1})
    d.txn_commit("pending", {("t", 1): 2}, producer_id=9)
    d.now_ms = 500
    d.commit("old", {("t", 1): 2})  # refreshes t-1 only
    d.now_ms = 1200
    decisions = {dec.group_id: dec for dec in off.prepare_expire(groups, d.now_ms)}
    assert sorted(decisions) == ["left", "old"]  # busy has members, pending has a txn open
    assert all(r.value is None for r in decisions["old"].records) and len(decisions["old"].records) == 1
    for dec in decisions.values():
        d._complete(dec)
    assert d.committed("old") == {("t", 1): 2} and groups.group("left") is None
    d.now_ms = 2000
    d.marker(9, commit=False)
    for dec in off.prepare_expire(groups, d.now_ms):
        d._complete(dec)
    assert off.group_ids() == {"busy"} and set(groups.groups) == {"busy"}
