"""Kafka's classic consumer-group APIs (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) on the
group's coordinator: the thin shell around `semel.coordinator.classic_group`.

Routing: a group's coordinator is the broker leading its __consumer_offsets partition (the
same as for Semel's own groups, `GroupCoordinator.lookup`). The classic state lives in
memory beside that partition's shard: each group remembers the shard it was created under,
and a group whose shard was unloaded or reloaded (leadership moved and maybe came back) is
dropped, its waiting requests answered NOT_COORDINATOR. Clients then find the coordinator
again and rejoin (UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION), and resume from the committed
offsets, which are durable in __consumer_offsets.

A group is either classic or Semel's own (KIP-848 style, server-side assignment): JoinGroup
on a group with Semel members answers INCONSISTENT_GROUP_PROTOCOL, and Semel's
ConsumerGroupHeartbeat refuses to join a group with classic members
(`GroupCoordinator.classic_member_count`). A classic member's OffsetCommit is checked here
(generation and member id, `ClassicGroups.check_commit`) and then written as Semel's simple
commit, which its coordinator accepts because the group has no Semel members.

Join and sync answers wait on futures keyed by the core's tokens; a timer task runs the
core's `tick` (sessions, rebalance deadlines) every `TICK_MS`. Every time the core sees is
the broker's monotonic clock (`ClassicGroupHost.now_ms`): its deadlines are all volatile, and a
step of the wall clock must neither expire a live member nor keep a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any, Callable, Awaitable

from kio.schema.errors import ErrorCode as K
from semel import limits
from semel.cluster.kafka import codec
from semel.cluster.kafka.errors import to_kafka
from semel.coordinator import classic_group as cg

if TYPE_CHECKING:
    from semel.cluster.broker.group_service import GroupCoordinator
    from semel.cluster.broker.process import Broker
    from semel.cluster.kafka.handlers import KafkaApis

log = logging.getLogger(__name__)

TICK_MS = limits.KAFKA_CLASSIC_GROUP_TICK_MS
ANSWER_GRACE_MS = limits.KAFKA_CLASSIC_GROUP_ANSWER_GRACE_MS


class ClassicGroupHost:
    """The classic groups this broker coordinates, their waiting requests and their timer."""

    def __init__(self, broker: Broker, config: cg.ClassicConfig | None = None) -> None:
        self.b = broker
        self.core = cg.ClassicGroups(config)
        self.owner: dict[str, Any] = {}          # group id -> the coordinator shard it lives beside
        self.waiting: dict[int, asyncio.Future[cg.JoinResult | cg.SyncResult]] = {}
        self._next_token = 1
        self._timer: asyncio.Task[None] | None = None

    @property
    def coordinator(self) -> GroupCoordinator:
        groups = self.b.groups
        assert groups is not None, "a broker with a Kafka listener runs a group coordinator"
        return groups

    def now_ms(self) -> int:
        """The core's time: the broker's monotonic clock (never the wall clock)."""
        return int(self.b.clock.monotonic_ms())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for gid in list(self.core.groups):
            self._deliver(self.core.drop_group(gid))

    # --- routing ----------------------------------------------------------------------------------
    def route(self, group_id: str) -> tuple[Any | None, K]:
        """(the group's coordinator shard, NONE) or (None, the Kafka error to answer)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._tick_loop(), name="classic-group-timers")
        loaded, code, _message = self.coordinator.lookup(group_id)
        if loaded is None:
            self._drop(group_id)
            return None, to_kafka(code)
        if self.owner.get(group_id) is not loaded:
            self._drop(group_id)
            self.owner[group_id] = loaded
        return loaded, K.none

    def _drop(self, group_id: str) -> None:
        self.owner.pop(group_id, None)
        self._deliver(self.core.drop_group(group_id))

    def member_count(self, group_id: str) -> int:
        return self.core.member_count(group_id)

    # --- waiting for answers ---------------------------------------------------------------------
    async def wait(self, start: Callable[[int], list[cg.Reply]], timeout_ms: int) -> cg.JoinResult | cg.SyncResult | None:
        token = self._next_token
        self._next_token += 1
        fut: asyncio.Future[cg.JoinResult | cg.SyncResult] = asyncio.get_running_loop().create_future()
        self.waiting[token] = fut
        try:
            self._deliver(start(token))
            return await asyncio.wait_for(asyncio.shield(fut), timeout_ms / 1000)
        except asyncio.TimeoutError:
            return None
        finally:
            self.waiting.pop(token, None)

    def _deliver(self, replies: list[cg.Reply]) -> None:
        for r in replies:
            fut = self.waiting.pop(r.token, None)
            if fut is not None and not fut.done():
                fut.set_result(r.result)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_MS / 1000)
            try:
                self.tick(self.now_ms())
            except Exception:
                log.exception("classic group timers failed")

    def tick(self, now_ms: int) -> None:
        for gid, loaded in list(self.owner.items()):
            if gid not in self.core.groups:
                del self.owner[gid]
            elif self.coordinator.loaded.get(loaded.partition.partition) is not loaded:
                self._drop(gid)
        self._deliver(self.core.tick(now_ms))


def _host(apis: KafkaApis) -> ClassicGroupHost:
    return apis.classic_groups()


def _semel_members(loaded: Any, group_id: str) -> int:
    return int(loaded.runtime.shard.groups.member_count(group_id))


# --- JoinGroup -----------------------------------------------------------------------------------
async def join_group(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    body = req.body
    host = _host(apis)
    loaded, error = host.route(body.group_id)
    if loaded is not None and _semel_members(loaded, body.group_id) > 0:
        error = K.inconsistent_group_protocol
    if loaded is None or error != K.none:
        return _join_answer(req, cg.JoinResult(error.value, member_id=body.member_id))
    session_ms = codec.timedelta_ms(body.session_timeout)
    rebalance_ms = codec.timedelta_ms(getattr(body, "rebalance_timeout", None), -1)
    join = cg.JoinRequest(
        group_id=body.group_id, member_id=body.member_id, protocol_type=body.protocol_type,
        protocols=tuple((p.name, bytes(p.metadata)) for p in body.protocols[: limits.MAX_CLASSIC_PROTOCOLS_PER_MEMBER + 1]),
        session_timeout_ms=session_ms, rebalance_timeout_ms=rebalance_ms,
        require_known_member_id=req.api_version >= 4, client_id=req.client_id or "",
        group_instance_id=getattr(body, "group_instance_id", None))
    new_member_id = f"{(req.client_id or 'member')[:32]}-{uuid.uuid4()}"
    wait_ms = min(max(rebalance_ms, session_ms), limits.MAX_GROUP_REBALANCE_TIMEOUT_MS) + ANSWER_GRACE_MS
    result = await host.wait(lambda token: host.core.join(token, join, new_member_id, host.now_ms()), wait_ms)
    if not isinstance(result, cg.JoinResult):
        result = cg.JoinResult(cg.REBALANCE_IN_PROGRESS, member_id=body.member_id)
    return _join_answer(req, result)


def _join_answer(req: codec.Request, r: cg.JoinResult) -> dict[str, Any]:
    flexible_names = req.api_version >= 7  # protocol_name is nullable from v7
    return {"throttle_time": 0, "error_code": r.error, "generation_id": r.generation,
            "protocol_type": r.protocol_type,
            "protocol_name": r.protocol_name if flexible_names else (r.protocol_name or ""),
            "leader": r.leader, "skip_assignment": False, "member_id": r.member_id,
            "members": [{"member_id": mid, "group_instance_id": dict(r.instance_ids).get(mid), "metadata": meta}
                        for mid, meta in r.members]}


# --- SyncGroup -----------------------------------------------------------------------------------
async def sync_group(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    body = req.body
    host = _host(apis)
    loaded, error = host.route(body.group_id)
    if loaded is None:
        return _sync_answer(cg.SyncResult(error.value))
    sync = cg.SyncRequest(
        group_id=body.group_id, member_id=body.member_id, generation=body.generation_id,
        assignments=tuple((a.member_id, bytes(a.assignment)) for a in body.assignments[: limits.MAX_MEMBERS_PER_GROUP]),
        protocol_type=getattr(body, "protocol_type", None), protocol_name=getattr(body, "protocol_name", None),
        group_instance_id=getattr(body, "group_instance_id", None))
    group = host.core.group(body.group_id)
    member = group.members.get(body.member_id) if group is not None else None
    wait_ms = (member.rebalance_timeout_ms if member is not None else 0) + ANSWER_GRACE_MS
    result = await host.wait(lambda token: host.core.sync(token, sync, host.now_ms()), wait_ms)
    if not isinstance(result, cg.SyncResult):
        result = cg.SyncResult(cg.REBALANCE_IN_PROGRESS)
    return _sync_answer(result)


def _sync_answer(r: cg.SyncResult) -> dict[str, Any]:
    return {"throttle_time": 0, "error_code": r.error, "protocol_type": r.protocol_type,
            "protocol_name": r.protocol_name, "assignment": r.assignment}


# --- Heartbeat / LeaveGroup ------------------------------------------------------------------------
async def heartbeat(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    body = req.body
    host = _host(apis)
    loaded, error = host.route(body.group_id)
    if loaded is not None:
        error = K(host.core.heartbeat(body.group_id, body.member_id, body.generation_id, host.now_ms(),
                                      getattr(body, "group_instance_id", None)))
    return {"throttle_time": 0, "error_code": error}


async def leave_group(apis: KafkaApis, req: codec.Request) -> dict[str, Any]:
    body = req.body
    host = _host(apis)
    if req.api_version >= 3:
        ids = [(m.member_id, m.group_instance_id) for m in body.members[: limits.MAX_MEMBERS_PER_GROUP]]
    else:
        ids = [(body.member_id, None)]
    loaded, error = host.route(body.group_id)
    errors = [error] * len(ids)
    if loaded is not None:
        codes, replies = host.core.leave(body.group_id, [mid for mid, _ in ids], host.now_ms(), [gi for _, gi in ids])
        host._deliver(replies)
        errors = [K(c) for c in codes]
    top = errors[0] if req.api_version < 3 and errors else (error if loaded is None else K.none)
    return {"throttle_time": 0, "error_code": top, "members": [
        {"member_id": mid, "group_instance_id": gi, "error_code": e} for (mid, gi), e in zip(ids, errors)]}


# --- OffsetCommit's check for classic members -----------------------------------------------------
def commit_verdict(apis: KafkaApis, group_id: str, member_id: str, generation: int,
                   group_instance_id: str | None = None) -> K | None:
    """None: Semel's coordinator decides alone (its own member, a simple commit to a group with
    no classic members, or not this broker's group). NONE: a classic member of the current
    generation, to be written as a simple commit. Else the error to answer (Kafka's rule; a
    static member's instance id must be held by its member id: FENCED_INSTANCE_ID)."""
    host = _host(apis)
    loaded, _error = host.route(group_id)
    if loaded is None or loaded.runtime.shard.groups.member(group_id, member_id) is not None:
        return None
    if generation < 0 and host.member_count(group_id) == 0 and group_instance_id is None:
        return None
    return K(host.core.check_commit(group_id, member_id, generation, host.now_ms(), group_instance_id))


HANDLERS: dict[int, Callable[[KafkaApis, codec.Request], Awaitable[dict[str, Any] | None]]] = {
    codec.JOIN_GROUP: join_group,
    codec.SYNC_GROUP: sync_group,
    codec.HEARTBEAT: heartbeat,
    codec.LEAVE_GROUP: leave_group,
}


def close(host: ClassicGroupHost | None) -> None:
    if host is not None:
        with contextlib.suppress(Exception):
            host.close()
