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
             group: str = "g", v4: bool = True) -> int:
        t = self._new_token()
        self.ids += 1
        self._take(self.core.join(t, cg.JoinRequest(group, member_id, "consumer", protocols, SESSION_MS, REBALANCE_MS,
                                                    require_known_member_id=v4), f"m{self.ids}", self.now))
        return t

    def sync(self, member_id: str, generation: int, assignments: tuple[tuple[str, bytes], ...] = (),
             group: str = "g") -> int:
        t = self._new_token()
        self._take(self.core.sync(t, cg.SyncRequest(group, member_id, generation, assignments), self.now))
        return t

    def tick(self, advance_ms: int) -> None:
        self.now += advance_ms
        self._take(self.core.tick(self.now))

    def leave(self, member_id: str, group: str = "g") -> list[int]:
        errors, replies = self.core.leave(group, [member_id], self.now)
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


OPS = st.lists(st.tuples(st.sampled_from(["join", "rejoin", "sync", "heartbeat", "leave", "tick"]),
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
        elif op == "tick":
            d.tick(extra * 700)
        for t in d.asked:
            d.result(t)  # never two answers
    d.tick(10 * REBALANCE_MS)
    d.tick(10 * REBALANCE_MS)
    for t in d.asked:   # once every deadline passed, every request has had its answer
        assert d.result(t) is not None, f"token {t} never answered"
    assert d.core.group("g") is None
