"""Kafka's classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup): a pure
state machine (no I/O, no clock, no randomness; the caller passes `now_ms`, a monotonic time,
and new member ids).

How it works (Kafka's GroupCoordinator for "classic" groups, client-side assignment):

* A group moves EMPTY -> PREPARING_REBALANCE -> COMPLETING_REBALANCE -> STABLE and back to
  PREPARING_REBALANCE on every change of membership (a join, a leave, an expired session, a
  member whose protocols changed, the leader rejoining). `_ALLOWED` is the transition table.
* PREPARING_REBALANCE waits until every known member has sent JoinGroup again (and no member
  that was told MEMBER_ID_REQUIRED is still expected), or until the rebalance deadline (the
  largest rebalance timeout of the members); members that did not rejoin by then are removed.
  Completing the join bumps the **generation**, picks the protocol every member supports (by
  vote, as Kafka), keeps the leader if it is still a member, and answers every waiting
  JoinGroup; only the leader's answer carries the members and their metadata.
* COMPLETING_REBALANCE waits for the leader's SyncGroup, which carries every member's
  assignment (opaque bytes: the assignor runs in the client). The group becomes STABLE and
  every waiting SyncGroup gets its member's bytes. A leader that does not sync within the
  rebalance timeout sends the group back to PREPARING_REBALANCE without the members that
  did not sync.
* A member that neither heartbeats nor waits in a JoinGroup/SyncGroup for its session
  timeout is removed. OffsetCommit from a member is checked with `check_commit` (generation
  and member id, as Kafka does).
* Static membership (KIP-345, `group_instance_id`): a group maps each instance id to the
  member id that holds it (`Group.static`). A static member joins without MEMBER_ID_REQUIRED.
  When an instance id that is already held joins again with no member id (the process
  restarted within its session timeout), the old member is replaced in place: a new member id
  takes over its assignment, protocols, leadership and place in the generation, and any
  JoinGroup/SyncGroup the old incarnation has waiting is answered FENCED_INSTANCE_ID. In a
  STABLE group whose selected protocol does not change this is answered at once with the
  current generation and *no rebalance* (the leader id answered is the one before the
  replacement, so a replaced leader does not run an assignment the stable group would not
  hand out; Kafka does the same); otherwise the group rebalances. Every request that names
  an instance id (SyncGroup, Heartbeat, LeaveGroup, OffsetCommit) must name the member id that
  holds it: another is FENCED_INSTANCE_ID (a duplicate or zombie instance), an unknown instance
  id UNKNOWN_MEMBER_ID. LeaveGroup may name only the instance id (admin removal).

Join and sync answers can be delayed: `join` and `sync` take a `token` (the caller's handle
for the request) and every method returns the `Reply`s that are now due, for any token.
Every token handed in gets exactly one reply, at the latest at its group's next deadline
(checked by `tick`) or when the caller drops the groups (`drop_group`, coordinator moved).

Invariants (`check_invariants`): EMPTY iff no members; STABLE and COMPLETING_REBALANCE have a
leader among the members, a generation > 0 and a protocol every member supports; JoinGroup
waits only in PREPARING_REBALANCE, SyncGroup waits only in COMPLETING_REBALANCE; members plus
members expected to rejoin never exceed `max_members_per_group`.

Not persisted: the caller (the Kafka listener) keeps this in memory on the group's
coordinator. After the coordinator moves, members get UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION
and rejoin, which every client does; committed offsets are durable (__consumer_offsets).
Error numbers are Kafka's own (this protocol exists only on the Kafka wire).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence

from semel import limits
from semel.invariant import invariant

# Kafka's error numbers (org.apache.kafka.common.protocol.Errors)
NONE = 0
NOT_COORDINATOR = 16
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
INVALID_REQUEST = 42
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79
GROUP_MAX_SIZE_REACHED = 81
FENCED_INSTANCE_ID = 82


class State(enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"


_ALLOWED: dict[State, frozenset[State]] = {
    State.EMPTY: frozenset({State.PREPARING_REBALANCE}),
    State.PREPARING_REBALANCE: frozenset({State.COMPLETING_REBALANCE, State.EMPTY}),
    State.COMPLETING_REBALANCE: frozenset({State.PREPARING_REBALANCE, State.STABLE}),
    State.STABLE: frozenset({State.PREPARING_REBALANCE}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ClassicConfig:
    min_session_timeout_ms: int = limits.CLASSIC_GROUP_MIN_SESSION_TIMEOUT_MS
    max_session_timeout_ms: int = limits.CLASSIC_GROUP_MAX_SESSION_TIMEOUT_MS
    max_rebalance_timeout_ms: int = limits.MAX_GROUP_REBALANCE_TIMEOUT_MS
    max_members_per_group: int = limits.MAX_MEMBERS_PER_GROUP
    max_groups: int = limits.MAX_CLASSIC_GROUPS_PER_BROKER
    max_protocols_per_member: int = limits.MAX_CLASSIC_PROTOCOLS_PER_MEMBER
    max_member_metadata_bytes: int = limits.MAX_CLASSIC_MEMBER_METADATA_BYTES

    def __post_init__(self) -> None:
        invariant(0 < self.min_session_timeout_ms <= self.max_session_timeout_ms, "bad session timeout bounds")
        invariant(self.max_members_per_group > 0 and self.max_groups > 0, "bad bounds")


@dataclasses.dataclass(frozen=True, slots=True)
class JoinRequest:
    group_id: str
    member_id: str                                  # "" for a new member
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]        # (name, metadata), in the member's preference order
    session_timeout_ms: int
    rebalance_timeout_ms: int                       # -1 (v0): the session timeout
    require_known_member_id: bool = False           # v4+: a new member first gets MEMBER_ID_REQUIRED
    client_id: str = ""
    client_host: str = ""
    group_instance_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SyncRequest:
    group_id: str
    member_id: str
    generation: int
    assignments: tuple[tuple[str, bytes], ...]      # the leader's: (member id, assignment)
    protocol_type: str | None = None                # v5+: checked when set
    protocol_name: str | None = None
    group_instance_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JoinResult:
    error: int
    member_id: str = ""
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: tuple[tuple[str, bytes], ...] = ()     # the leader's answer only: (member id, metadata)
    instance_ids: tuple[tuple[str, str], ...] = ()  # with `members`: (member id, group instance id) of static ones


@dataclasses.dataclass(frozen=True, slots=True)
class SyncResult:
    error: int
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignment: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    token: int
    result: JoinResult | SyncResult


@dataclasses.dataclass(slots=True)
class Member:
    member_id: str
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]
    session_deadline_ms: int
    assignment: bytes = b""
    join_token: int | None = None     # a JoinGroup waiting for the rebalance to complete
    sync_token: int | None = None     # a SyncGroup waiting for the leader's assignments
    group_instance_id: str | None = None  # a static member's (KIP-345)

    def metadata(self, protocol: str) -> bytes:
        return next(m for name, m in self.protocols if name == protocol)


@dataclasses.dataclass(slots=True)
class Group:
    group_id: str
    state: State = State.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    expected: dict[str, int] = dataclasses.field(default_factory=dict)   # MEMBER_ID_REQUIRED given: id -> deadline
    deadline_ms: int = 0              # of PREPARING_REBALANCE (join) or COMPLETING_REBALANCE (sync)
    synced: set[str] = dataclasses.field(default_factory=set)          # sent SyncGroup this generation
    static: dict[str, str] = dataclasses.field(default_factory=dict)   # group instance id -> member id

    def transition(self, to: State) -> None:
        invariant(to in _ALLOWED[self.state], f"group {self.group_id!r}: {self.state.name} -> {to.name} is not allowed")
        self.state = to

    def candidates(self) -> set[str]:
        """Protocol names every member supports."""
        names: set[str] | None = None
        for m in self.members.values():
            mine = {n for n, _ in m.protocols}
            names = mine if names is None else names & mine
        return names or set()


class ClassicGroups:
    """The classic groups of one coordinator (every group id the caller routes here)."""

    def __init__(self, config: ClassicConfig | None = None) -> None:
        self.config = config or ClassicConfig()
        self.groups: dict[str, Group] = {}

    # --- queries -----------------------------------------------------------------------------------
    def group(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    def member_count(self, group_id: str) -> int:
        g = self.groups.get(group_id)
        return len(g.members) if g is not None else 0

    def check_invariants(self) -> None:
        invariant(len(self.groups) <= self.config.max_groups, "too many groups")
        for g in self.groups.values():
            invariant((g.state == State.EMPTY) == (not g.members), f"{g.group_id}: EMPTY iff no members")
            invariant(len(g.members) + len(g.expected) <= self.config.max_members_per_group, f"{g.group_id}: too many members")
            if g.state in (State.STABLE, State.COMPLETING_REBALANCE):
                invariant(g.leader in g.members, f"{g.group_id}: the leader is a member")
                invariant(g.generation > 0 and g.protocol_name in g.candidates(), f"{g.group_id}: a common protocol")
            for m in g.members.values():
                invariant(m.join_token is None or g.state == State.PREPARING_REBALANCE, f"{g.group_id}: join waits only while preparing")
                invariant(m.sync_token is None or g.state == State.COMPLETING_REBALANCE, f"{g.group_id}: sync waits only while completing")
                invariant(m.group_instance_id is None or g.static.get(m.group_instance_id) == m.member_id,
                          f"{g.group_id}: {m.member_id} holds its instance id")
            invariant(all(g.members.get(mid) is not None and g.members[mid].group_instance_id == iid
                          for iid, mid in g.static.items()), f"{g.group_id}: every instance id is held by its member")

    # --- JoinGroup ---------------------------------------------------------------------------------
    def join(self, token: int, req: JoinRequest, new_member_id: str, now_ms: int) -> list[Reply]:
        replies: list[Reply] = []
        error = self._check_join(req)
        if error != NONE:
            return [Reply(token, JoinResult(error, member_id=req.member_id))]
        g = self.groups.get(req.group_id)
        if g is None:
            if req.member_id:
                return [Reply(token, JoinResult(UNKNOWN_MEMBER_ID, member_id=req.member_id))]
            if len(self.groups) >= self.config.max_groups:
                return [Reply(token, JoinResult(GROUP_MAX_SIZE_REACHED))]
            g = self.groups[req.group_id] = Group(req.group_id)
        if g.members and (req.protocol_type != g.protocol_type
                          or not g.candidates() & {n for n, _ in req.protocols}):
            replies.append(Reply(token, JoinResult(INCONSISTENT_GROUP_PROTOCOL, member_id=req.member_id)))
        elif req.group_instance_id is not None and not req.member_id and req.group_instance_id in g.static:
            self._replace_static(g, token, req, new_member_id, now_ms, replies)
        elif (static_error := _check_static(g, req.member_id, req.group_instance_id)) != NONE and req.member_id:
            replies.append(Reply(token, JoinResult(static_error, member_id=req.member_id)))
        elif not req.member_id or req.member_id in g.expected:
            self._join_new(g, token, req, req.member_id or new_member_id, now_ms, replies)
        elif req.member_id not in g.members:
            replies.append(Reply(token, JoinResult(UNKNOWN_MEMBER_ID, member_id=req.member_id)))
        else:
            self._join_known(g, token, req, now_ms, replies)
        self._forget_if_unused(g)
        return replies

    def _check_join(self, req: JoinRequest) -> int:
        c = self.config
        if not req.group_id:
            return INVALID_GROUP_ID
        if req.group_instance_id is not None and not 0 < len(req.group_instance_id.encode()) <= limits.MAX_MEMBER_ID_BYTES:
            return INVALID_REQUEST
        if not c.min_session_timeout_ms <= req.session_timeout_ms <= c.max_session_timeout_ms:
            return INVALID_SESSION_TIMEOUT
        if not req.protocol_type or not req.protocols or len(req.protocols) > c.max_protocols_per_member:
            return INCONSISTENT_GROUP_PROTOCOL
        if any(len(m) > c.max_member_metadata_bytes for _, m in req.protocols):
            return INVALID_REQUEST
        return NONE

    def _join_new(self, g: Group, token: int, req: JoinRequest, member_id: str, now_ms: int,
                  replies: list[Reply]) -> None:
        expected = g.expected.pop(member_id, None) is not None
        if not expected and len(g.members) + len(g.expected) >= self.config.max_members_per_group:
            replies.append(Reply(token, JoinResult(GROUP_MAX_SIZE_REACHED)))
            return
        if req.require_known_member_id and not expected and req.group_instance_id is None:
            g.expected[member_id] = now_ms + req.session_timeout_ms
            replies.append(Reply(token, JoinResult(MEMBER_ID_REQUIRED, member_id=member_id)))
            return
        rebalance_ms = req.rebalance_timeout_ms if req.rebalance_timeout_ms > 0 else req.session_timeout_ms
        g.members[member_id] = Member(
            member_id=member_id, client_id=req.client_id, client_host=req.client_host,
            session_timeout_ms=req.session_timeout_ms,
            rebalance_timeout_ms=min(rebalance_ms, self.config.max_rebalance_timeout_ms),
            protocols=req.protocols, session_deadline_ms=now_ms + req.session_timeout_ms, join_token=token,
            group_instance_id=req.group_instance_id)
        if req.group_instance_id is not None:
            g.static[req.group_instance_id] = member_id
        if g.protocol_type is None:
            g.protocol_type = req.protocol_type
        self._prepare_rebalance(g, now_ms, replies)
        self._try_complete_join(g, now_ms, replies)

    def _join_known(self, g: Group, token: int, req: JoinRequest, now_ms: int, replies: list[Reply]) -> None:
        m = g.members[req.member_id]
        changed = m.protocols != req.protocols
        m.protocols = req.protocols
        m.session_deadline_ms = now_ms + m.session_timeout_ms
        if g.state == State.PREPARING_REBALANCE:
            if m.join_token is not None:  # a retried JoinGroup replaces the one waiting
                replies.append(Reply(m.join_token, JoinResult(REBALANCE_IN_PROGRESS, member_id=m.member_id)))
            m.join_token = token
            self._try_complete_join(g, now_ms, replies)
        elif changed or (g.state == State.STABLE and m.member_id == g.leader):
            m.join_token = token
            self._prepare_rebalance(g, now_ms, replies)
            self._try_complete_join(g, now_ms, replies)
        else:  # the JoinGroup answer was lost: the same generation again
            replies.append(Reply(token, self._join_result(g, m)))

    def _replace_static(self, g: Group, token: int, req: JoinRequest, new_member_id: str, now_ms: int,
                        replies: list[Reply]) -> None:
        """A known instance id joins with no member id: its new incarnation takes the old
        member's place (see the module docstring); the old one is fenced."""
        instance = not_none_instance(req.group_instance_id)
        old_id = g.static[instance]
        m = g.members.pop(old_id)
        if m.join_token is not None:
            replies.append(Reply(m.join_token, JoinResult(FENCED_INSTANCE_ID, member_id=old_id)))
        if m.sync_token is not None:
            replies.append(Reply(m.sync_token, SyncResult(FENCED_INSTANCE_ID)))
        m.join_token = m.sync_token = None
        leader_before = g.leader
        m.member_id = new_member_id
        g.members[new_member_id] = m
        g.static[instance] = new_member_id
        if old_id in g.synced:
            g.synced.discard(old_id)
            g.synced.add(new_member_id)
        if g.leader == old_id:
            g.leader = new_member_id
        rebalance_ms = req.rebalance_timeout_ms if req.rebalance_timeout_ms > 0 else req.session_timeout_ms
        m.client_id, m.client_host, m.protocols = req.client_id, req.client_host, req.protocols
        m.session_timeout_ms = req.session_timeout_ms
        m.rebalance_timeout_ms = min(rebalance_ms, self.config.max_rebalance_timeout_ms)
        m.session_deadline_ms = now_ms + m.session_timeout_ms
        if g.state == State.STABLE and _vote(g.members.values(), g.candidates()) == g.protocol_name:
            replies.append(Reply(token, JoinResult(
                NONE, member_id=new_member_id, generation=g.generation, protocol_type=g.protocol_type,
                protocol_name=g.protocol_name, leader=leader_before or "")))
            return
        m.join_token = token
        self._prepare_rebalance(g, now_ms, replies)
        self._try_complete_join(g, now_ms, replies)

    def _join_result(self, g: Group, m: Member) -> JoinResult:
        members: tuple[tuple[str, bytes], ...] = ()
        instance_ids: tuple[tuple[str, str], ...] = ()
        proto = g.protocol_name
        if m.member_id == g.leader and proto is not None:
            members = tuple((x.member_id, x.metadata(proto)) for x in g.members.values())
            instance_ids = tuple((x.member_id, x.group_instance_id) for x in g.members.values()
                                 if x.group_instance_id is not None)
        return JoinResult(NONE, member_id=m.member_id, generation=g.generation, protocol_type=g.protocol_type,
                          protocol_name=proto, leader=g.leader or "", members=members, instance_ids=instance_ids)

    # --- SyncGroup ---------------------------------------------------------------------------------
    def sync(self, token: int, req: SyncRequest, now_ms: int) -> list[Reply]:
        g = self.groups.get(req.group_id)
        m = g.members.get(req.member_id) if g is not None else None
        if g is not None and (static_error := _check_static(g, req.member_id, req.group_instance_id)) != NONE:
            return [Reply(token, SyncResult(static_error))]
        if g is None or m is None:
            return [Reply(token, SyncResult(UNKNOWN_MEMBER_ID))]
        if req.generation != g.generation:
            return [Reply(token, SyncResult(ILLEGAL_GENERATION))]
        if ((req.protocol_type is not None and req.protocol_type != g.protocol_type)
                or (req.protocol_name is not None and req.protocol_name != g.protocol_name)):
            return [Reply(token, SyncResult(INCONSISTENT_GROUP_PROTOCOL))]
        if any(len(a) > self.config.max_member_metadata_bytes for _, a in req.assignments):
            return [Reply(token, SyncResult(INVALID_REQUEST))]
        m.session_deadline_ms = now_ms + m.session_timeout_ms
        if g.state == State.PREPARING_REBALANCE:
            return [Reply(token, SyncResult(REBALANCE_IN_PROGRESS))]
        if g.state == State.STABLE:
            return [Reply(token, self._sync_result(g, m))]
        replies: list[Reply] = []
        if m.sync_token is not None:
            replies.append(Reply(m.sync_token, SyncResult(REBALANCE_IN_PROGRESS)))
        m.sync_token = token
        g.synced.add(m.member_id)
        if m.member_id == g.leader:
            given = dict(req.assignments)
            for x in g.members.values():
                x.assignment = given.get(x.member_id, b"")
            g.transition(State.STABLE)
            for x in g.members.values():
                if x.sync_token is not None:
                    replies.append(Reply(x.sync_token, self._sync_result(g, x)))
                    x.sync_token = None
        return replies

    @staticmethod
    def _sync_result(g: Group, m: Member) -> SyncResult:
        return SyncResult(NONE, protocol_type=g.protocol_type, protocol_name=g.protocol_name, assignment=m.assignment)

    # --- Heartbeat, LeaveGroup, OffsetCommit checks ------------------------------------------------
    def heartbeat(self, group_id: str, member_id: str, generation: int, now_ms: int,
                  group_instance_id: str | None = None) -> int:
        g = self.groups.get(group_id)
        if g is not None and (static_error := _check_static(g, member_id, group_instance_id)) != NONE:
            return static_error
        m = g.members.get(member_id) if g is not None else None
        if g is None or m is None:
            return UNKNOWN_MEMBER_ID
        if generation != g.generation:
            return ILLEGAL_GENERATION
        m.session_deadline_ms = now_ms + m.session_timeout_ms
        return REBALANCE_IN_PROGRESS if g.state == State.PREPARING_REBALANCE else NONE

    def leave(self, group_id: str, member_ids: Sequence[str], now_ms: int,
              instance_ids: Sequence[str | None] = ()) -> tuple[list[int], list[Reply]]:
        """One error per member id, and the replies now due (a rebalance may complete).
        `instance_ids` (LeaveGroup v3+, aligned with `member_ids`; missing ones are None): a
        static member leaves by its instance id alone (member id "") or by both, which must
        match (FENCED_INSTANCE_ID)."""
        g = self.groups.get(group_id)
        replies: list[Reply] = []
        errors: list[int] = []
        if g is None:
            return [UNKNOWN_MEMBER_ID] * len(member_ids), replies
        removed = False
        for i, mid in enumerate(member_ids):
            iid = instance_ids[i] if i < len(instance_ids) else None
            if not mid and iid is not None:
                mid = g.static.get(iid, "")
            elif (static_error := _check_static(g, mid, iid)) != NONE:
                errors.append(static_error)
                continue
            if mid in g.members:
                self._remove_member(g, mid, replies)
                removed = True
                errors.append(NONE)
            elif g.expected.pop(mid, None) is not None:
                errors.append(NONE)
            else:
                errors.append(UNKNOWN_MEMBER_ID)
        if removed:
            self._after_removal(g, now_ms, replies)
        else:
            self._try_complete_join(g, now_ms, replies)
        self._forget_if_unused(g)
        return errors, replies

    def check_commit(self, group_id: str, member_id: str, generation: int, now_ms: int,
                     group_instance_id: str | None = None) -> int:
        """Kafka's rule for OffsetCommit: a simple commit (generation < 0) only while the group
        has no members; otherwise a member of the current generation, not mid-rebalance (and a
        static member's instance id held by that member id)."""
        g = self.groups.get(group_id)
        if g is None or not g.members:
            return NONE if generation < 0 and group_instance_id is None else ILLEGAL_GENERATION
        if (static_error := _check_static(g, member_id, group_instance_id)) != NONE:
            return static_error
        m = g.members.get(member_id)
        if m is None:
            return UNKNOWN_MEMBER_ID
        if generation != g.generation:
            return ILLEGAL_GENERATION
        if g.state == State.COMPLETING_REBALANCE:
            return REBALANCE_IN_PROGRESS
        m.session_deadline_ms = now_ms + m.session_timeout_ms
        return NONE

    # --- time and removal --------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Reply]:
        """Expire sessions, expected members and rebalance deadlines."""
        replies: list[Reply] = []
        for g in list(self.groups.values()):
            for mid, deadline in list(g.expected.items()):
                if deadline <= now_ms:
                    del g.expected[mid]
            late = g.deadline_ms <= now_ms
            if g.state == State.PREPARING_REBALANCE and late:
                gone = [m.member_id for m in g.members.values() if m.join_token is None]
            elif g.state == State.COMPLETING_REBALANCE and late:
                gone = [mid for mid in g.members if mid not in g.synced]
            else:
                gone = [m.member_id for m in g.members.values()
                        if m.join_token is None and m.sync_token is None and m.session_deadline_ms <= now_ms]
            if g.state == State.PREPARING_REBALANCE and late:
                g.expected.clear()
            for mid in gone:
                self._remove_member(g, mid, replies)
            if gone or (g.state == State.COMPLETING_REBALANCE and late):
                self._after_removal(g, now_ms, replies)
            else:
                self._try_complete_join(g, now_ms, replies)
            self._forget_if_unused(g)
        return replies

    def drop_group(self, group_id: str) -> list[Reply]:
        """Forget a group (its coordinator moved): every waiting request gets NOT_COORDINATOR."""
        g = self.groups.pop(group_id, None)
        if g is None:
            return []
        return [Reply(t, JoinResult(NOT_COORDINATOR) if t == m.join_token else SyncResult(NOT_COORDINATOR))
                for m in g.members.values() for t in (m.join_token, m.sync_token) if t is not None]

    def _remove_member(self, g: Group, member_id: str, replies: list[Reply]) -> None:
        m = g.members.pop(member_id)
        g.synced.discard(member_id)
        if m.group_instance_id is not None and g.static.get(m.group_instance_id) == member_id:
            del g.static[m.group_instance_id]
        if m.join_token is not None:
            replies.append(Reply(m.join_token, JoinResult(UNKNOWN_MEMBER_ID, member_id=member_id)))
        if m.sync_token is not None:
            replies.append(Reply(m.sync_token, SyncResult(UNKNOWN_MEMBER_ID)))
        if g.leader == member_id:
            g.leader = None

    def _after_removal(self, g: Group, now_ms: int, replies: list[Reply]) -> None:
        if g.state in (State.STABLE, State.COMPLETING_REBALANCE):
            self._prepare_rebalance(g, now_ms, replies)
        self._try_complete_join(g, now_ms, replies)

    def _prepare_rebalance(self, g: Group, now_ms: int, replies: list[Reply]) -> None:
        if g.state == State.PREPARING_REBALANCE:
            return
        for m in g.members.values():
            if m.sync_token is not None:
                replies.append(Reply(m.sync_token, SyncResult(REBALANCE_IN_PROGRESS)))
                m.sync_token = None
        g.transition(State.PREPARING_REBALANCE)
        g.synced.clear()
        g.deadline_ms = now_ms + max((m.rebalance_timeout_ms for m in g.members.values()), default=0)

    def _try_complete_join(self, g: Group, now_ms: int, replies: list[Reply]) -> None:
        if g.state != State.PREPARING_REBALANCE:
            return
        if g.members and (g.expected or any(m.join_token is None for m in g.members.values())):
            return
        g.generation += 1
        if not g.members:  # members expected to rejoin will join an empty group as new ones
            g.transition(State.EMPTY)
            g.protocol_type = g.protocol_name = g.leader = None
            return
        g.protocol_name = _vote(g.members.values(), g.candidates())
        if g.leader not in g.members:
            g.leader = next(iter(g.members))
        g.transition(State.COMPLETING_REBALANCE)
        g.deadline_ms = now_ms + max(m.rebalance_timeout_ms for m in g.members.values())
        for m in g.members.values():
            m.assignment = b""
            m.session_deadline_ms = now_ms + m.session_timeout_ms
            replies.append(Reply(not_none_token(m.join_token), self._join_result(g, m)))
            m.join_token = None

    def _forget_if_unused(self, g: Group) -> None:
        if g.state == State.EMPTY and not g.expected and self.groups.get(g.group_id) is g:
            del self.groups[g.group_id]


def _check_static(g: Group, member_id: str, group_instance_id: str | None) -> int:
    """Kafka's `validateCurrentMember` for the instance id part: a request naming an instance
    id must come from the member id that holds it."""
    if group_instance_id is None:
        return NONE
    holder = g.static.get(group_instance_id)
    if holder is None:
        return UNKNOWN_MEMBER_ID
    return NONE if holder == member_id else FENCED_INSTANCE_ID


def not_none_instance(instance_id: str | None) -> str:
    invariant(instance_id is not None, "a static member has an instance id")
    assert instance_id is not None
    return instance_id


def not_none_token(token: int | None) -> int:
    invariant(token is not None, "every member has joined")
    assert token is not None
    return token


def _vote(members: Iterable[Member], candidates: set[str]) -> str:
    """Kafka's protocol selection: each member votes for its most preferred common protocol."""
    invariant(bool(candidates), "the members share a protocol")
    votes: dict[str, int] = {}
    for m in members:
        choice = next(n for n, _ in m.protocols if n in candidates)
        votes[choice] = votes.get(choice, 0) + 1
    return max(votes, key=lambda n: (votes[n], n))
