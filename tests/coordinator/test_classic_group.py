"""The classic group protocol's pure core (semel.coordinator.classic_group): joins, syncs,
rebalances, session and rebalance deadlines, commit checks, and random operation sequences
that keep the invariants and answer every request exactly once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from semel.coordinator import classic_group as cg

CONFIG = cg.ClassicConfig(min_session_timeout_ms=100, max_members_per_group=4, max_groups=3)
SESSION_MS, REBALANCE_MS = 1_000, 2_000


class Driver:
    """Feeds the core and collects each token's answers (so a test sees a token answered twice)."""

    def __init__(self) -> None:
        self.core = cg.ClassicGroups(CONFIG)
        self.answers: dict[int, list[cg.JoinResult | cg.SyncResult]] = {}
        self.asked: set[int] = set()
        self.token = 0
        self.now = 0
        self.ids = 0

    def _take(self, replies: list[cg.Reply]) -> None:
        for r in replies:
            assert r.token in self.asked, r
            self.answers.setdefault(r.token, []).append(r.result)
        self.core.check_invariants()

    def _new_token(self) -> int:
        self.token += 1
        self.asked.add(self.token)
        return self.token

    def join(self, member_id: str = "", protocols: tuple[tuple[str, bytes], ...] = (("range", b"m"),),
             group: str = "g", v4: bool = True, instance: str | None = None) -> int:
        t = self._new_token()
        self.ids += 1
        self._take(self.core.join(t, cg.JoinRequest(group, member_id, "consumer", protocols, SESSION_MS, REBALANCE_MS,
                                                    require_known_member_id=v4, group_instance_id=instance),
                                  f"m{self.ids}", self.now))
        return t

    def sync(self, member_id: str, generation: int, assignments: tuple[tuple[str, bytes], ...] = (),
             group: str = "g", instance: str | None = None) -> int:
        t = self._new_token()
        self._take(self.core.sync(t, cg.SyncRequest(group, member_id, generation, assignments,
                                                    group_instance_id=instance), self.now))
        return t

    def tick(self, advance_ms: int) -> None:
        self.now += advance_ms
        self._take(self.core.tick(self.now))

    def leave(self, member_id: str, group: str = "g", instance: str | None = None) -> list[int]:
        errors, replies = self.core.leave(group, [member_id], self.now, [instance])
        self._take(replies)
        return errors

    def result(self, token: int) -> cg.JoinResult | cg.SyncResult | None:
        got = self.answers.get(token, [])
        assert len(got) <= 1, f"token {token} answered {len(got)} times"
        return got[0] if got else None

    def joined(self, group: str = "g") -> cg.JoinResult:
        """A new member through MEMBER_ID_REQUIRED and its second JoinGroup (answered or not)."""
        first = self.result(self.join(group=group))
        assert isinstance(first, cg.JoinResult) and first.error == cg.MEMBER_ID_REQUIRED
        t = self.join(first.member_id, group=group)
        r = self.result(t)
        return r if isinstance(r, cg.JoinResult) else cg.JoinResult(-1, member_id=first.member_id)


def test_a_single_member_joins_syncs_and_is_stable():
    d = Driver()
    r = d.joined()
    assert r.error == cg.NONE and r.generation == 1 and r.leader == r.member_id
    assert r.members == ((r.member_id, b"m"),) and r.protocol_name == "range"
    s = d.result(d.sync(r.member_id, 1, ((r.member_id, b"a1"),)))
    assert s == cg.SyncResult(cg.NONE, "consumer", "range", b"a1")
    assert d.core.group("g").state == cg.State.STABLE
    assert d.core.heartbeat("g", r.member_id, 1, d.now) == cg.NONE


def test_a_second_member_rebalances_and_the_leader_distributes_assignments():
    d = Driver()
    a = d.joined()
    d.sync(a.member_id, 1, ((a.member_id, b"all"),))
    pending_b = d.joined()                   # waits: the group prepares a rebalance
    assert pending_b.error == -1
    assert d.core.heartbeat("g", a.member_id, 1, d.now) == cg.REBALANCE_IN_PROGRESS
    ta = d.join(a.member_id)                 # the leader rejoins: generation 2 completes
    ra = d.result(ta)
    assert isinstance(ra, cg.JoinResult) and ra.generation == 2 and ra.leader == a.member_id
    assert {m for m, _ in ra.members} == {a.member_id, pending_b.member_id}
    follower_join = [r for ts in d.answers.values() for r in ts
                     if isinstance(r, cg.JoinResult) and r.member_id == pending_b.member_id and r.generation == 2]
    assert follower_join and follower_join[0].members == ()  # only the leader gets the member list
    tb = d.sync(pending_b.member_id, 2)      # the follower waits for the leader
    assert d.result(tb) is None
    assert d.core.check_commit("g", a.member_id, 2, d.now) == cg.REBALANCE_IN_PROGRESS
    d.sync(a.member_id, 2, ((a.member_id, b"p0"), (pending_b.member_id, b"p1")))
    assert d.result(tb) == cg.SyncResult(cg.NONE, "consumer", "range", b"p1")
    assert d.core.check_commit("g", a.member_id, 2, d.now) == cg.NONE
    assert d.core.check_commit("g", a.member_id, 1, d.now) == cg.ILLEGAL_GENERATION
    assert d.core.check_commit("g", "stranger", 2, d.now) == cg.UNKNOWN_MEMBER_ID
    assert d.core.check_commit("g", "", -1, d.now) == cg.UNKNOWN_MEMBER_ID  # no simple commit while members exist


def test_a_leave_rebalances_the_rest_and_the_last_leave_empties_the_group():
    d = Driver()
    a = d.joined()
    d.sync(a.member_id, 1, ())
    b = d.joined()
    d.join(a.member_id)
    assert d.leave(b.member_id) == [cg.NONE]
    assert d.core.group("g").state == cg.State.PREPARING_REBALANCE or d.core.group("g").generation == 3
    ta = d.join(a.member_id)
    r = d.result(ta)
    assert isinstance(r, cg.JoinResult) and r.error == cg.NONE and r.members == ((a.member_id, b"m"),)
    assert d.leave(a.member_id) == [cg.NONE]
    assert d.core.group("g") is None       # empty groups are forgotten (offsets stay durable)
    assert d.core.check_commit("g", "", -1, d.now) == cg.NONE
    assert d.core.check_commit("g", a.member_id, 3, d.now) == cg.ILLEGAL_GENERATION
    assert d.leave(a.member_id) == [cg.UNKNOWN_MEMBER_ID]


def test_a_silent_member_is_removed_after_its_session_timeout():
    d = Driver()
    a = d.joined()
    d.sync(a.member_id, 1, ())
    b = d.joined()
    d.join(a.member_id)
    d.sync(a.member_id, 2, ())
    d.sync(b.member_id, 2, ())
    d.tick(SESSION_MS - 1)
    assert d.core.heartbeat("g", a.member_id, 2, d.now) == cg.NONE   # a heartbeats, b does not
    d.tick(1)
    assert set(d.core.group("g").members) == {a.member_id}
    assert d.core.heartbeat("g", b.member_id, 2, d.now) == cg.UNKNOWN_MEMBER_ID
    assert d.core.heartbeat("g", a.member_id, 2, d.now) == cg.REBALANCE_IN_PROGRESS


def test_a_member_that_does_not_rejoin_is_removed_at_the_rebalance_deadline():
    d = Driver()
    a = d.joined()
    d.sync(a.member_id, 1, ())
    b = d.joined()                           # b waits; a never rejoins (and keeps heartbeating)
    for _ in range(REBALANCE_MS // 500):
        d.tick(500)
        d.core.heartbeat("g", a.member_id, 1, d.now)
    r = [x for ts in d.answers.values() for x in ts if isinstance(x, cg.JoinResult) and x.member_id == b.member_id]
    assert r[-1].error == cg.NONE and r[-1].generation == 2 and r[-1].leader == b.member_id
    assert set(d.core.group("g").members) == {b.member_id}


def test_a_leader_that_never_syncs_sends_the_group_back_to_rebalancing():
    d = Driver()
    a = d.joined()
    d.sync(a.member_id, 1, ())
    b = d.joined()
    d.join(a.member_id)
    tb = d.sync(b.member_id, 2)
    d.tick(REBALANCE_MS)
    assert d.result(tb) == cg.SyncResult(cg.REBALANCE_IN_PROGRESS)
    assert set(d.core.group("g").members) == {b.member_id}


def test_bad_joins_are_refused():
    d = Driver()
    a = d.joined()
    t = d.join(protocols=(("roundrobin", b""),))  # no protocol in common with a
    assert d.result(t).error == cg.INCONSISTENT_GROUP_PROTOCOL
    assert d.result(d.join("nobody")).error == cg.UNKNOWN_MEMBER_ID
    t = d._new_token()
    d._take(d.core.join(t, cg.JoinRequest("g", "", "consumer", (("range", b""),), 10, 10), "x", d.now))
    assert d.result(t).error == cg.INVALID_SESSION_TIMEOUT
    for _ in range(3):                       # 4 members at most (a plus 3 expected)
        d.join()
    assert d.result(d.join()).error == cg.GROUP_MAX_SIZE_REACHED
    assert a.error == cg.NONE


def test_a_v0_join_without_member_id_required_joins_at_once():
    d = Driver()
    r = d.result(d.join(v4=False))
    assert isinstance(r, cg.JoinResult) and r.error == cg.NONE and r.generation == 1


def test_dropping_a_group_answers_every_waiting_request():
    d = Driver()
    a = d.joined()
    d.sync(a.member_id, 1, ())
    b = d.joined()
    tb = [t for t in d.asked if d.result(t) is None]
    d._take(d.core.drop_group("g"))
    assert all(d.result(t).error == cg.NOT_COORDINATOR for t in tb)
    assert d.core.group("g") is None and b.member_id


OPS = st.lists(st.tuples(st.sampled_from(["join", "rejoin", "sync", "heartbeat", "leave", "tick", "static", "static_leave"]),
                         st.integers(0, 5), st.integers(0, 3)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_random_operations_keep_the_invariants_and_answer_each_request_once(ops):
    d = Driver()
    members: list[str] = []
    for op, who, extra in ops:
        group = d.core.group("g")
        mid = members[who % len(members)] if members else ""
        generation = group.generation if group is not None else 0
        if op == "join":
            r = d.result(d.join(protocols=(("range", b"m"),) if extra else (("range", b"m"), ("rr", b"x"))))
            if isinstance(r, cg.JoinResult) and r.member_id:
                members.append(r.member_id)
        elif op == "rejoin" and mid:
            d.join(mid)
        elif op == "sync" and mid:
            d.sync(mid, generation - (extra == 3), tuple((m, m.encode()) for m in members))
        elif op == "heartbeat" and mid:
            d.core.heartbeat("g", mid, generation, d.now)
        elif op == "leave" and mid:
            d.leave(mid)
        elif op == "static":  # a static member joins, or a restarted one replaces its old incarnation
            r = d.result(d.join(instance=f"i{extra % 2}"))
            if isinstance(r, cg.JoinResult) and r.member_id:
                members.append(r.member_id)
        elif op == "static_leave":
            d.leave("", instance=f"i{extra % 2}")
        elif op == "tick":
            d.tick(extra * 700)
        for t in d.asked:
            d.result(t)  # never two answers
    d.tick(10 * REBALANCE_MS)
    d.tick(10 * REBALANCE_MS)
    for t in d.asked:   # once every deadline passed, every request has had its answer
        assert d.result(t) is not None, f"token {t} never answered"
    assert d.core.group("g") is None


# --- static membership (KIP-345) -------------------------------------------------------------------


def stable_static_pair(d: Driver) -> tuple[str, str]:
    """Static members "ia" (the leader) and "ib", synced and STABLE at generation 2."""
    a = d.result(d.join(instance="ia"))
    assert isinstance(a, cg.JoinResult) and a.error == cg.NONE, "a static member needs no MEMBER_ID_REQUIRED"
    d.sync(a.member_id, 1, ((a.member_id, b"all"),))
    tb = d.join(instance="ib")
    assert d.core.heartbeat("g", a.member_id, 1, d.now, "ia") == cg.REBALANCE_IN_PROGRESS
    ra = d.result(d.join(a.member_id, instance="ia"))
    b = d.result(tb)
    assert isinstance(ra, cg.JoinResult) and isinstance(b, cg.JoinResult) and ra.generation == b.generation == 2
    assert dict(ra.instance_ids) == {a.member_id: "ia", b.member_id: "ib"}, "the leader sees the instance ids"
    d.sync(b.member_id, 2, instance="ib")
    d.sync(a.member_id, 2, ((a.member_id, b"p0"), (b.member_id, b"p1")), instance="ia")
    assert d.core.group("g").state == cg.State.STABLE
    return a.member_id, b.member_id


def test_a_restarted_static_member_gets_its_assignment_back_without_a_rebalance():
    d = Driver()
    a, b = stable_static_pair(d)
    d.tick(SESSION_MS // 2)  # a's process restarts: no LeaveGroup, a new JoinGroup with no member id
    r = d.result(d.join(instance="ia"))
    assert isinstance(r, cg.JoinResult) and r.error == cg.NONE and r.member_id != a
    assert r.generation == 2 and r.leader == a and r.members == (), "answered at once, not as the leader"
    s = d.result(d.sync(r.member_id, 2, instance="ia"))
    assert isinstance(s, cg.SyncResult) and s.error == cg.NONE and s.assignment == b"p0"
    g = d.core.group("g")
    assert g.state == cg.State.STABLE and g.generation == 2 and g.leader == r.member_id
    assert d.core.heartbeat("g", b, 2, d.now, "ib") == cg.NONE, "the other member saw no rebalance"
    # the old incarnation is fenced by its instance id, and unknown by its member id alone
    assert d.core.heartbeat("g", a, 2, d.now, "ia") == cg.FENCED_INSTANCE_ID
    assert d.core.heartbeat("g", a, 2, d.now) == cg.UNKNOWN_MEMBER_ID
    assert d.core.check_commit("g", a, 2, d.now, "ia") == cg.FENCED_INSTANCE_ID
    assert d.core.check_commit("g", r.member_id, 2, d.now, "ia") == cg.NONE
    assert d.result(d.sync(a, 2, instance="ia")).error == cg.FENCED_INSTANCE_ID
    assert d.result(d.join(a, instance="ia")).error == cg.FENCED_INSTANCE_ID
    assert d.core.heartbeat("g", b, 2, d.now, "unknown") == cg.UNKNOWN_MEMBER_ID


def test_a_duplicate_instance_fences_the_waiting_requests_of_the_old_one():
    d = Driver()
    a, b = stable_static_pair(d)
    t_old = d.join(a, instance="ia")  # the leader rejoins: a rebalance, its JoinGroup waits for b
    assert d.result(t_old) is None and d.core.group("g").state == cg.State.PREPARING_REBALANCE
    t_new = d.join(instance="ia")     # a second process with the same instance id
    assert d.result(t_old).error == cg.FENCED_INSTANCE_ID
    assert d.result(t_new) is None, "the new incarnation waits in the rebalance in the old one's place"
    rb = d.result(d.join(b, instance="ib"))
    new = d.result(t_new)
    assert new.error == cg.NONE and rb.error == cg.NONE and new.generation == rb.generation == 3
    assert new.leader == new.member_id and {m for m, _ in new.members} == {new.member_id, b}


def test_a_static_member_whose_protocols_change_the_selection_causes_a_rebalance():
    d = Driver()
    a = d.result(d.join(instance="ia", protocols=(("range", b"m"), ("rr", b"x"))))
    d.sync(a.member_id, 1, ((a.member_id, b"all"),))
    assert d.core.group("g").protocol_name == "range"
    r = d.result(d.join(instance="ia", protocols=(("rr", b"x"), ("range", b"m"))))
    assert r.error == cg.NONE and r.generation == 2 and r.protocol_name == "rr" and r.leader == r.member_id


def test_leave_group_by_instance_id():
    d = Driver()
    a, b = stable_static_pair(d)
    assert d.leave(a, instance="ib") == [cg.FENCED_INSTANCE_ID]
    assert d.leave("", instance="nobody") == [cg.UNKNOWN_MEMBER_ID]
    assert d.leave("", instance="ia") == [cg.NONE]  # admin removal by instance id alone
    g = d.core.group("g")
    assert set(g.members) == {b} and "ia" not in g.static and g.state == cg.State.PREPARING_REBALANCE
    assert d.leave(b, instance="ib") == [cg.NONE]
    assert d.core.group("g") is None


def test_an_expired_static_member_frees_its_instance_id():
    d = Driver()
    a, b = stable_static_pair(d)
    for _ in range(3):
        d.tick(SESSION_MS // 2)
        assert d.core.heartbeat("g", b, 2, d.now, "ib") in (cg.NONE, cg.REBALANCE_IN_PROGRESS)
    g = d.core.group("g")
    assert set(g.members) == {b} and g.static == {"ib": b}
    r = d.result(d.join(instance="ia"))  # too late: a new member, after a rebalance
    assert r is None and d.core.group("g").state == cg.State.PREPARING_REBALANCE
