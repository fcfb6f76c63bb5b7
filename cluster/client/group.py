"""The group consumer: `Consumer(bootstrap, group_id=...)` + `subscribe(topics)`.

Membership is the coordinator-driven protocol of KIP-848 (proto/semel/v1/group.proto): the
coordinator (leader of `__consumer_offsets` partition crc32(group_id) % n) computes the
assignment; the member heartbeats, obeys, and reports what it owns.

Threads: a background **heartbeat thread** keeps the membership alive (join, heartbeat every
`heartbeat_interval_ms` as the coordinator says, rejoin after being fenced, leave) and records
the latest assignment. It never touches partitions itself: the **polling thread** reconciles
in `poll()` (and `close()`): first it *revokes* what the assignment no longer holds (calls
`on_revoked`, auto-commits, stops fetching), reports `owned` at once, then *assigns* what is
new (committed offsets fetched with require_stable, so a pending transactional commit is
waited out; then `on_assigned`). A member that was removed (session or rebalance timeout:
FENCED_MEMBER_EPOCH / UNKNOWN_MEMBER_ID) drops every partition without committing
(`on_lost`, default `on_revoked`) and joins again once the polling thread has done so.

Offsets: `commit()` commits the consumed positions (the offset of the next record `poll()`
would return) of the owned partitions, fenced by member id + epoch. `group_metadata()` is
what `Producer.send_offsets_to_transaction(offsets, group_metadata)` needs (KIP-447).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import grpc
from semel.client import errors as client_errors
from semel.client.security import ClientSecurity
from semel.client.base import (
    METADATA_MAX_AGE_MS_DEFAULT,
    RETRY_BACKOFF_MAX_MS_DEFAULT,
    RETRY_BACKOFF_MS_DEFAULT,
    _ClientBase,
    log,
)
from semel.client.consumer import AssignConsumer
from semel.client.metadata import rpc_error
from semel.client.errors import ClosedError, ConfigError
from semel.client.records import ConsumerRecord
from semel.clock import monotonic_ms
from semel.v1 import common_pb2 as pb
from semel.v1 import group_pb2 as gpb
from semel.v1 import group_pb2_grpc as ggrpc
from semel.v1 import txn_pb2 as tpb
from semel.v1 import txn_pb2_grpc as tgrpc

Callback = Callable[[set[tuple[str, int]]], None]

AUTO_COMMIT_INTERVAL_MS_DEFAULT = 5_000
REBALANCE_TIMEOUT_MS_DEFAULT = 60_000
HEARTBEAT_RPC_TIMEOUT_MS = 5_000
GROUP_RETRY_BACKOFF_MS = 50          # between retries of a coordinator call (moving / loading coordinator)
POLL_SLICE_MS = 100                  # poll() reconciles at least this often while it waits
_COORDINATOR_RETRIABLE = {pb.NOT_COORDINATOR, pb.COORDINATOR_LOAD_IN_PROGRESS, pb.COORDINATOR_NOT_AVAILABLE,
                          pb.REQUEST_TIMED_OUT, pb.NOT_ENOUGH_REPLICAS, pb.NOT_LEADER_OR_FOLLOWER,
                          pb.RESOURCE_EXHAUSTED, pb.UNKNOWN_SERVER_ERROR}
_FENCED = {pb.FENCED_MEMBER_EPOCH, pb.UNKNOWN_MEMBER_ID}


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerGroupMetadata:
    """The membership a transactional offset commit is fenced with (KIP-447)."""

    group_id: str
    member_id: str
    member_epoch: int


def _partitions_of(assignment: gpb.Assignment) -> frozenset[tuple[str, int]]:
    return frozenset((tp.topic, p) for tp in assignment.partitions for p in tp.partitions)


def _assignment_of(parts: Iterable[tuple[str, int]]) -> gpb.Assignment:
    by_topic: dict[str, list[int]] = {}
    for t, p in parts:
        by_topic.setdefault(t, []).append(p)
    return gpb.Assignment(partitions=[gpb.TopicPartitions(topic=t, partitions=sorted(ps)) for t, ps in sorted(by_topic.items())])


class _GroupRpc:
    """Groups-service calls at the group's coordinator, with rediscovery (thread-safe)."""

    def __init__(self, client: _ClientBase, group_id: str) -> None:
        self.c = client
        self.group_id = group_id
        self._lock = threading.Lock()
        self._address: str | None = None  # the coordinator FindCoordinator named; None: ask again

    def coordinator(self, deadline_ms: int) -> str | None:
        """The group's coordinator, from FindCoordinator (it needs DESCRIBE on the group only:
        the metadata of `__consumer_offsets`, which ACLs rightly hide from users, is not asked).
        None while no broker names one; raises when the answer is a refusal."""
        with self._lock:
            if self._address is not None:
                return self._address
        what = f"find the coordinator of group {self.group_id!r}"
        request = tpb.FindCoordinatorRequest(key=self.group_id, key_type=tpb.GROUP)
        for address in self.c._metadata.candidates()[:3]:
            timeout_ms = max(1, min(self.c.request_timeout_ms, 3000, deadline_ms - monotonic_ms()))
            try:
                r = self.c._connections.stub(address, tgrpc.TransactionsStub).FindCoordinator(
                    request, timeout=timeout_ms / 1000)
            except grpc.RpcError as exc:
                error = rpc_error(exc, address, what)
                if isinstance(error, (client_errors.AuthenticationError, client_errors.AuthorizationError)):
                    raise error from exc
                log.debug("%s at %s: %s", what, address, error)
                continue
            if r.error_code != pb.NONE:
                error = client_errors.error_for_code(r.error_code, r.error_message, context=what)
                if not error.retriable:
                    raise error
                return None
            found = f"{r.host}:{r.port}"
            with self._lock:
                self._address = found
            return found
        return None

    def forget(self) -> None:
        """The coordinator moved or is unreachable: the next call asks FindCoordinator again."""
        with self._lock:
            self._address = None

    def stub(self, address: str) -> ggrpc.GroupsStub:
        return self.c._connections.stub(address, ggrpc.GroupsStub)

    def call(self, method: str, request: Any, deadline_ms: int, rpc_timeout_ms: int | None = None,
             error_of: Callable[[Any], int] = lambda r: r.error_code,
             on_call: Callable[[Any], None] | None = None) -> Any:
        """Send `request` to the coordinator, retrying moves and loads until `deadline_ms`.
        Returns the last response (maybe with a retriable code) ; raises on transport trouble
        past the deadline. `on_call` is handed each call in flight (a grpc.Future: cancelling
        it ends the call, raising grpc.FutureCancelledError here)."""
        attempts = 0
        while True:
            attempts += 1
            address = self.coordinator(deadline_ms)
            response = None
            if address is not None:
                timeout_ms = max(1, min(rpc_timeout_ms or self.c.request_timeout_ms, deadline_ms - monotonic_ms()))
                try:
                    if on_call is None:
                        response = getattr(self.stub(address), method)(request, timeout=timeout_ms / 1000)
                    else:
                        call = getattr(self.stub(address), method).future(request, timeout=timeout_ms / 1000)
                        on_call(call)
                        response = call.result()
                except grpc.RpcError as exc:
                    error = rpc_error(exc, address, f"{method} of group {self.group_id!r}")
                    if isinstance(error, (client_errors.AuthenticationError, client_errors.AuthorizationError)):
                        raise error from exc  # a refusal, not a move: retrying cannot help
                    log.debug("%s to %s failed: %s", method, address, exc)
                    self.forget()
                    if monotonic_ms() >= deadline_ms:
                        raise client_errors.BrokerUnreachableError(
                            f"{method} of group {self.group_id!r}: coordinator {address} unreachable") from exc
                else:
                    code = error_of(response)
                    if code not in _COORDINATOR_RETRIABLE or monotonic_ms() >= deadline_ms:
                        return response
                    log.debug("%s: %s", method, pb.ErrorCode.Name(code))
                    if code in (pb.NOT_COORDINATOR, pb.COORDINATOR_NOT_AVAILABLE):
                        self.forget()
            elif monotonic_ms() >= deadline_ms:
                raise client_errors.CoordinatorNotAvailableError(f"no coordinator for group {self.group_id!r}")
            time.sleep(min(GROUP_RETRY_BACKOFF_MS * min(attempts, 10), max(0, deadline_ms - monotonic_ms())) / 1000)


class _Membership:
    """Member id/epoch and the latest assignment; the heartbeat thread's state (under `cond`)."""

    def __init__(self, consumer: Consumer, rpc: _GroupRpc, topics: Sequence[str], rebalance_timeout_ms: int,
                 client_id: str) -> None:
        self.c = consumer
        self.rpc = rpc
        self.topics = list(topics)
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.client_id = client_id
        self.cond = threading.Condition()
        self.member_id = uuid.uuid4().hex       # client-chosen (unique): a retried join is idempotent
        self.member_epoch = 0
        self.assignment: frozenset[tuple[str, int]] | None = None   # None: not joined yet
        self.owned: frozenset[tuple[str, int]] = frozenset()          # what the polling thread owns
        self.lost = False                    # fenced: the polling thread must drop everything first
        self.error: client_errors.SemelError | None = None
        self.interval_ms = 100
        self._wait_ms = 100                  # until the next heartbeat (the interval less what a held call took)
        self._call: Any = None               # the heartbeat call in flight (stop() cancels a held one)
        self.heartbeats = 0                  # responses received (tests, waiting for a fresh epoch)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"semel-heartbeat-{rpc.group_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        call = self._call
        if call is not None:
            call.cancel()  # a held heartbeat (max_wait_ms) would keep the thread up to an interval
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.cond:
                waiting_for_release = self.lost
            if not waiting_for_release:
                try:
                    self._heartbeat_once()
                except Exception as exc:  # never let the thread die silently
                    log.debug("group %s heartbeat failed: %s", self.rpc.group_id, exc)
                    self.interval_ms = self._wait_ms = GROUP_RETRY_BACKOFF_MS * 2
            self._wake.wait(self._wait_ms / 1000)
            self._wake.clear()

    def _request(self) -> gpb.ConsumerGroupHeartbeatRequest:
        with self.cond:
            # Settled (owns exactly its assignment): the coordinator may hold the heartbeat
            # until the group's epoch moves on, so a rebalance reaches this member at once.
            settled = self.member_epoch > 0 and not self.lost and self.assignment == self.owned
            return gpb.ConsumerGroupHeartbeatRequest(
                group_id=self.rpc.group_id, member_id=self.member_id, member_epoch=self.member_epoch,
                subscription=gpb.Subscription(topics=self.topics), rebalance_timeout_ms=self.rebalance_timeout_ms,
                owned=_assignment_of(self.owned), client_id=self.client_id,
                max_wait_ms=self.interval_ms if settled else 0)

    def _on_call(self, call: Any) -> None:
        self._call = call
        if self._stop.is_set():
            call.cancel()

    def _heartbeat_once(self) -> None:
        request = self._request()
        started = monotonic_ms()
        rpc_timeout_ms = HEARTBEAT_RPC_TIMEOUT_MS + request.max_wait_ms
        deadline = started + rpc_timeout_ms
        self._wait_ms = self.interval_ms
        try:
            resp = self.rpc.call("ConsumerGroupHeartbeat", request, deadline, rpc_timeout_ms, on_call=self._on_call)
        except grpc.FutureCancelledError:
            return  # stop() cancelled a held heartbeat
        except (client_errors.AuthenticationError, client_errors.AuthorizationError) as exc:
            with self.cond:  # poll() raises it: a refused member must not wait silently forever
                self.error = exc
                self.interval_ms = 1000
                self.cond.notify_all()
            return
        except client_errors.SemelError as exc:
            log.debug("group %s: heartbeat: %s", self.rpc.group_id, exc)
            self.interval_ms = self._wait_ms = GROUP_RETRY_BACKOFF_MS * 2
            return
        finally:
            self._call = None
        with self.cond:
            if request.member_epoch != self.member_epoch or request.member_id != self.member_id:
                return  # left or rejoined meanwhile
            code = resp.error_code
            if code == pb.NONE:
                self.member_id = resp.member_id or self.member_id
                self.member_epoch = resp.member_epoch
                if resp.HasField("assignment"):
                    self.assignment = _partitions_of(resp.assignment)
                self.interval_ms = max(10, resp.heartbeat_interval_ms or 1000)
            elif code in _FENCED:
                log.info("group %s: member %s fenced (%s); rejoining after releasing partitions", self.rpc.group_id,
                         self.member_id, pb.ErrorCode.Name(code))
                self.member_epoch = 0
                self.assignment = frozenset()
                self.lost = True
                self.interval_ms = 0
            elif code in _COORDINATOR_RETRIABLE:
                self.interval_ms = GROUP_RETRY_BACKOFF_MS
            else:
                self.error = client_errors.error_for_code(code, resp.error_message,
                                                          context=f"heartbeat of group {self.rpc.group_id!r}")
                self.interval_ms = 1000
            self.heartbeats += 1
            self._wait_ms = self.interval_ms
            if request.max_wait_ms > 0 and code == pb.NONE:
                # held: the interval ran while the coordinator held the call; answered early, the
                # group's epoch moved on: heartbeat again at once (to be held at the new epoch)
                moved = resp.member_epoch != request.member_epoch
                self._wait_ms = 0 if moved else max(0, self.interval_ms - (monotonic_ms() - started))
            self.cond.notify_all()

    def leave(self, timeout_ms: int) -> None:
        with self.cond:
            if self.member_epoch <= 0:
                return
            request = gpb.ConsumerGroupHeartbeatRequest(group_id=self.rpc.group_id, member_id=self.member_id,
                                                        member_epoch=-1)
            self.member_epoch = -1
        try:
            self.rpc.call("ConsumerGroupHeartbeat", request, monotonic_ms() + timeout_ms, timeout_ms)
        except client_errors.SemelError as exc:
            log.debug("group %s: leave failed (the session will time out): %s", self.rpc.group_id, exc)


class Consumer(AssignConsumer):
    """`Consumer(bootstrap, group_id="g")` + `subscribe([...])` consumes as a group member;
    without `group_id` it is the assign-based consumer (see client_consumer)."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        group_id: str | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = AUTO_COMMIT_INTERVAL_MS_DEFAULT,
        rebalance_timeout_ms: int = REBALANCE_TIMEOUT_MS_DEFAULT,
        client_id: str = "",
        **options: Any,
    ) -> None:
        super().__init__(bootstrap, **options)
        if group_id is not None and not group_id:
            raise ConfigError("group_id must be a non-empty string")
        self.group_id = group_id
        self.enable_auto_commit = enable_auto_commit and group_id is not None
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.client_id = client_id
        self._rpc = _GroupRpc(self, group_id) if group_id else None
        self._membership: _Membership | None = None
        self._owned: set[tuple[str, int]] = set()
        self._on_assigned: Callback | None = None
        self._on_revoked: Callback | None = None
        self._on_lost: Callback | None = None
        self._next_auto_commit_ms = 0

    # --- subscription -------------------------------------------------------------------------------
    def subscribe(self, topics: Iterable[str], on_assigned: Callback | None = None, on_revoked: Callback | None = None,
                  on_lost: Callback | None = None) -> None:
        """Join the group consuming `topics`. Callbacks run on the polling thread (inside
        poll()/close()) with a set of (topic, partition): `on_revoked` before partitions are
        given up (commit there), `on_assigned` after new ones are taken (positions set from
        the committed offsets), `on_lost` (default: on_revoked) when the member was removed and
        its partitions are already someone else's (commits would fail)."""
        if self._rpc is None:
            raise ConfigError("subscribe() needs a group_id")
        if self._membership is not None:
            raise client_errors.ClientError("already subscribed")
        topics = sorted(set(topics))
        if not topics:
            raise ConfigError("subscribe() needs at least one topic")
        self._on_assigned, self._on_revoked, self._on_lost = on_assigned, on_revoked, on_lost
        self._metadata.add_topics(topics)
        self._membership = _Membership(self, self._rpc, topics, self.rebalance_timeout_ms, self.client_id)
        self._membership.start()
        self._next_auto_commit_ms = monotonic_ms() + self.auto_commit_interval_ms

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        if self._membership is not None:
            raise client_errors.ClientError("assign() on a subscribed consumer: the group assigns partitions")
        super().assign(partitions)

    def assignment(self) -> list[tuple[str, int]]:
        if self._membership is None:
            return super().assignment()
        return sorted(self._owned)

    def group_metadata(self) -> ConsumerGroupMetadata:
        """For `Producer.send_offsets_to_transaction(offsets, consumer.group_metadata())`."""
        if self.group_id is None:
            raise ConfigError("group_metadata() needs a group_id")
        m = self._membership
        if m is None:
            return ConsumerGroupMetadata(self.group_id, "", -1)
        with m.cond:
            return ConsumerGroupMetadata(self.group_id, m.member_id, m.member_epoch)

    # --- polling -------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 1000) -> list[ConsumerRecord]:
        if self._membership is None:
            return super().poll(timeout_ms)
        if self._closed:
            raise ClosedError("poll() after close()")
        deadline = monotonic_ms() + max(0, timeout_ms)
        while True:
            self.reconcile()
            self._maybe_auto_commit()
            remaining = deadline - monotonic_ms()
            if self._owned:
                try:
                    records = super().poll(max(0, min(remaining, POLL_SLICE_MS)))
                except client_errors.BrokerUnreachableError as exc:  # transient: keep the membership going
                    log.debug("group %s: poll: %s", self.group_id, exc)
                    records = []
                if records:
                    return records
            elif remaining > 0:
                with self._membership.cond:
                    self._membership.cond.wait(min(remaining, POLL_SLICE_MS) / 1000)
            if monotonic_ms() >= deadline:
                return []

    def reconcile(self) -> None:
        """Adopt the latest assignment (revoke first, then assign); poll() calls it."""
        m = self._membership
        if m is None:
            return
        with m.cond:
            if m.error is not None:
                error, m.error = m.error, None
                raise error
            lost, target = m.lost, m.assignment
        if lost:
            dropped, self._owned = set(self._owned), set()
            super().assign([])
            callback = self._on_lost or self._on_revoked
            if dropped and callback is not None:
                callback(dropped)
            with m.cond:
                m.owned = frozenset()
                m.lost = False
            m.wake()
            return
        if target is None:
            return
        revoked = self._owned - target
        if revoked:
            if self._on_revoked is not None:
                self._on_revoked(set(revoked))
            if self.enable_auto_commit:
                self._commit_quietly(revoked)
            self._owned -= revoked
            super().assign(sorted(self._owned))
            with m.cond:
                m.owned = frozenset(self._owned)
            m.wake()
        added = target - self._owned
        if added:
            committed = self.committed(added)
            self._owned |= added
            super().assign(sorted(self._owned))
            for tp in added:
                offset = committed.get(tp, -1)
                if offset >= 0:
                    self.seek(tp[0], tp[1], offset)
            with m.cond:
                m.owned = frozenset(self._owned)
            m.wake()
            if self._on_assigned is not None:
                self._on_assigned(set(added))

    # --- offsets ---------------------------------------------------------------------------------------
    def committed(self, partitions: Iterable[tuple[str, int]], timeout_ms: int | None = None) -> dict[tuple[str, int], int]:
        """Committed offsets (-1: none). Waits while a transactional commit is pending
        (UNSTABLE_OFFSET_COMMIT), so a new owner never starts from a stale position."""
        rpc = self._require_group()
        parts = sorted(set(partitions))
        by_topic: dict[str, list[int]] = {}
        for t, p in parts:
            by_topic.setdefault(t, []).append(p)
        request = gpb.OffsetFetchRequest(group_id=rpc.group_id, member_epoch=-1, require_stable=True,
                                         topics=[gpb.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()])
        deadline = monotonic_ms() + (timeout_ms if timeout_ms is not None else self.request_timeout_ms)
        while True:
            resp = rpc.call("OffsetFetch", request, deadline)
            if resp.error_code != pb.NONE:
                raise client_errors.error_for_code(resp.error_code, resp.error_message,
                                                   context=f"fetch offsets of group {rpc.group_id!r}")
            unstable = [o for o in resp.offsets if o.error_code == pb.UNSTABLE_OFFSET_COMMIT]
            if not unstable:
                return {(o.topic, o.partition): o.committed_offset for o in resp.offsets}
            # no retry fits before the deadline: report what the coordinator said, not the
            # time-out of a last call made with a few milliseconds left (seen on a loaded CI)
            if monotonic_ms() + GROUP_RETRY_BACKOFF_MS >= deadline:
                raise client_errors.UnstableOffsetCommitError(
                    f"group {rpc.group_id!r}: transactional offsets of {[(o.topic, o.partition) for o in unstable][:5]} "
                    "still pending")
            time.sleep(GROUP_RETRY_BACKOFF_MS / 1000)

    def positions(self) -> dict[tuple[str, int], int]:
        """Consumed position (next offset poll() returns) of each owned partition whose
        position is known."""
        out: dict[tuple[str, int], int] = {}
        for tp in sorted(self._owned if self._membership is not None else self._assignment):
            buffered = next((r.offset for r in self._buffer if (r.topic, r.partition) == tp), None)
            if buffered is not None:
                out[tp] = buffered
            elif tp in self._fetch_position:
                out[tp] = self._fetch_position[tp]
        return out

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None, timeout_ms: int | None = None) -> None:
        """Commit `offsets` (default: the consumed positions of the owned partitions), fenced
        by member id + epoch. Raises FencedMemberEpochError / UnknownMemberIdError when this
        member was removed from the group, StaleMemberEpochError for a partition it no longer
        holds."""
        rpc = self._require_group()
        offsets = dict(self.positions() if offsets is None else offsets)
        if not offsets:
            return
        deadline = monotonic_ms() + (timeout_ms if timeout_ms is not None else self.request_timeout_ms)
        by_topic: dict[str, list[gpb.OffsetCommitPartition]] = {}
        for (t, p), off in sorted(offsets.items()):
            by_topic.setdefault(t, []).append(gpb.OffsetCommitPartition(partition=p, committed_offset=off,
                                                                        committed_leader_epoch=-1))
        topics = [gpb.OffsetCommitTopic(topic=t, partitions=ps) for t, ps in by_topic.items()]
        while True:
            meta = self.group_metadata()
            request = gpb.OffsetCommitRequest(group_id=rpc.group_id, member_id=meta.member_id,
                                              member_epoch=meta.member_epoch, topics=topics)
            resp = rpc.call("OffsetCommit", request, deadline)
            code = resp.error_code
            if code == pb.STALE_MEMBER_EPOCH and monotonic_ms() < deadline and self._membership is not None:
                self._await_heartbeat(deadline)  # our epoch moved on: learn it, then retry
                continue
            if code != pb.NONE:
                raise client_errors.error_for_code(code, resp.error_message, context=f"commit of group {rpc.group_id!r}")
            failed = [(t.topic, p.partition, p.error_code) for t in resp.topics for p in t.partitions if p.error_code]
            if failed:
                t, p, c = failed[0]
                raise client_errors.error_for_code(c, f"{len(failed)} partitions not committed, e.g. {t}-{p}",
                                                   context=f"commit of group {rpc.group_id!r}")
            return

    def _await_heartbeat(self, deadline_ms: int) -> None:
        m = self._membership
        assert m is not None
        with m.cond:
            seen = m.heartbeats
            m.interval_ms = 0
        m.wake()
        with m.cond:
            while m.heartbeats == seen and monotonic_ms() < deadline_ms:
                m.cond.wait(0.05)

    def _commit_quietly(self, partitions: Iterable[tuple[str, int]]) -> None:
        wanted = set(partitions)
        offsets = {tp: off for tp, off in self.positions().items() if tp in wanted}
        try:
            self.commit(offsets)
        except client_errors.SemelError as exc:
            log.warning("group %s: auto-commit failed: %s", self.group_id, exc)

    def _maybe_auto_commit(self) -> None:
        if self.enable_auto_commit and self._owned and monotonic_ms() >= self._next_auto_commit_ms:
            self._next_auto_commit_ms = monotonic_ms() + self.auto_commit_interval_ms
            self._commit_quietly(self._owned)

    def _require_group(self) -> _GroupRpc:
        if self._rpc is None:
            raise ConfigError("this consumer has no group_id")
        return self._rpc

    # --- closing -----------------------------------------------------------------------------------------
    def unsubscribe(self) -> None:
        """Give up every partition (on_revoked, auto-commit) and leave the group."""
        m = self._membership
        if m is None:
            return
        try:
            if self._owned and not m.lost:
                if self._on_revoked is not None:
                    self._on_revoked(set(self._owned))
                if self.enable_auto_commit:
                    self._commit_quietly(self._owned)
        finally:
            m.stop()
            m.leave(timeout_ms=min(self.request_timeout_ms, 5000))
            self._owned = set()
            self._membership = None
            super().assign([])

    def close(self) -> None:
        if not self._closed:
            try:
                self.unsubscribe()
            except Exception as exc:
                log.debug("group %s: leaving on close failed: %s", self.group_id, exc)
        super().close()

    def __enter__(self) -> Consumer:
        return self


# ======================================================================================
# GroupAdmin: list / describe / reset / delete (the `semel group` commands use it)
# ======================================================================================


@dataclasses.dataclass(frozen=True, slots=True)
class ListedGroup:
    group_id: str
    state: str                 # EMPTY, RECONCILING, STABLE, DEAD
    member_count: int
    coordinator_partition: int


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMember:
    member_id: str
    client_id: str
    member_epoch: int
    state: str                 # STABLE, UNREVOKED_PARTITIONS, UNRELEASED_PARTITIONS
    subscribed_topics: tuple[str, ...]
    assignment: tuple[tuple[str, int], ...]
    pending_revocation: tuple[tuple[str, int], ...]
    target_assignment: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class GroupOffset:
    topic: str
    partition: int
    committed_offset: int      # -1: only a pending transactional commit
    last_stable_offset: int    # -1: the partition leader could not be asked
    lag: int                   # last_stable_offset - committed_offset (read_committed lag); -1 unknown
    pending_transactional: bool
    metadata: str
    commit_timestamp_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str
    group_epoch: int
    assignment_epoch: int
    members: tuple[GroupMember, ...]
    offsets: tuple[GroupOffset, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ResetResult:
    topic: str
    partition: int
    previous_offset: int
    new_offset: int
    error: str                 # "" or the ErrorCode name


RESET_STRATEGIES = {"offset": gpb.OFFSET_RESET_TO_OFFSET, "earliest": gpb.OFFSET_RESET_TO_EARLIEST,
                    "latest": gpb.OFFSET_RESET_TO_LATEST, "timestamp": gpb.OFFSET_RESET_TO_TIMESTAMP,
                    "shift": gpb.OFFSET_RESET_SHIFT_BY}


def _state_name(value: int) -> str:
    return gpb.GroupState.Name(value).removeprefix("GROUP_STATE_")


def _tps(assignment: gpb.Assignment) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(_partitions_of(assignment)))


class GroupAdmin(_ClientBase):
    """Group administration: `list_groups()`, `describe_group(g)`, `reset_offsets(...)`,
    `delete_group(g)`. Calls go to the group's coordinator and retry while it moves or loads."""

    def __init__(self, bootstrap: str | Sequence[str] | None = None, *, request_timeout_ms: int = 30_000,
                 security: ClientSecurity | None = None) -> None:
        super().__init__(bootstrap, request_timeout_ms, RETRY_BACKOFF_MS_DEFAULT, RETRY_BACKOFF_MAX_MS_DEFAULT,
                         METADATA_MAX_AGE_MS_DEFAULT, security)

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> GroupAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rpc_for(self, group_id: str) -> _GroupRpc:
        return _GroupRpc(self, group_id)

    def _deadline(self, timeout_ms: int | None) -> int:
        return monotonic_ms() + (timeout_ms if timeout_ms is not None else self.request_timeout_ms)

    def list_groups(self, states: Iterable[str] = (), timeout_ms: int | None = None) -> list[ListedGroup]:
        """Every group of the cluster (each broker lists the groups it coordinates)."""
        # Value() checks the name; its stub returns a plain int, not the enum type
        wanted = [cast(gpb.GroupState, gpb.GroupState.Value("GROUP_STATE_" + s.upper())) for s in states]
        request = gpb.ListGroupsRequest(states=wanted)
        deadline = self._deadline(timeout_ms)
        self._metadata.refresh(timeout_ms=max(1, deadline - monotonic_ms()))
        rpc = self._rpc_for("list")
        found: dict[str, ListedGroup] = {}
        for broker_id, address in sorted(self._metadata.view.brokers.items()):
            if broker_id in self._metadata.view.fenced:
                continue
            for attempt in range(20):
                try:
                    resp = rpc.stub(address).ListGroups(request, timeout=max(0.1, (deadline - monotonic_ms()) / 1000))
                except grpc.RpcError as exc:
                    raise client_errors.BrokerUnreachableError(f"list groups at broker {broker_id} ({address}): "
                                                               f"{exc.code().name}") from exc
                if resp.error_code != pb.COORDINATOR_LOAD_IN_PROGRESS or monotonic_ms() >= deadline:
                    break
                time.sleep(GROUP_RETRY_BACKOFF_MS / 1000)
            for g in resp.groups:
                found[g.group_id] = ListedGroup(g.group_id, _state_name(g.state), g.member_count, g.coordinator_partition)
        return [found[g] for g in sorted(found)]

    def describe_group(self, group_id: str, include_offsets: bool = True, timeout_ms: int | None = None
                       ) -> GroupDescription:
        rpc = self._rpc_for(group_id)
        resp = rpc.call("DescribeGroups", gpb.DescribeGroupsRequest(group_ids=[group_id], include_offsets=include_offsets),
                        self._deadline(timeout_ms), error_of=lambda r: r.groups[0].error_code)
        g = resp.groups[0]
        if g.error_code != pb.NONE:
            raise client_errors.error_for_code(g.error_code, g.error_message, context=f"describe group {group_id!r}")
        members = tuple(
            GroupMember(m.member_id, m.client_id, m.member_epoch, gpb.MemberState.Name(m.state).removeprefix("MEMBER_STATE_"),
                        tuple(m.subscribed_topics), _tps(m.assignment), _tps(m.pending_revocation),
                        _tps(m.target_assignment))
            for m in g.members)
        offsets = tuple(
            GroupOffset(o.topic, o.partition, o.committed_offset, o.last_stable_offset, o.lag, o.pending_transactional,
                        o.metadata, o.commit_timestamp_ms)
            for o in g.offsets)
        return GroupDescription(g.group_id, _state_name(g.state), g.group_epoch, g.assignment_epoch, members, offsets)

    def reset_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]], strategy: str, value: int = 0,
                      dry_run: bool = False, timeout_ms: int | None = None) -> list[ResetResult]:
        """Set the committed offsets of an empty group: strategy earliest | latest (the LSO) |
        offset (value) | timestamp (value = ms) | shift (committed + value), clamped to the log."""
        if strategy not in RESET_STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(RESET_STRATEGIES)}")
        request = gpb.ResetOffsetsRequest(group_id=group_id, dry_run=dry_run, partitions=[
            gpb.ResetPartition(topic=t, partition=p, strategy=RESET_STRATEGIES[strategy], value=value)
            for t, p in sorted(set(partitions))])
        resp = self._rpc_for(group_id).call("ResetOffsets", request, self._deadline(timeout_ms))
        if resp.error_code != pb.NONE:
            raise client_errors.error_for_code(resp.error_code, resp.error_message, context=f"reset offsets of {group_id!r}")
        return [ResetResult(r.topic, r.partition, r.previous_offset, r.new_offset,
                            "" if r.error_code == pb.NONE else pb.ErrorCode.Name(r.error_code)) for r in resp.partitions]

    def delete_group(self, group_id: str, timeout_ms: int | None = None) -> None:
        resp = self._rpc_for(group_id).call("DeleteGroup", gpb.DeleteGroupRequest(group_id=group_id),
                                            self._deadline(timeout_ms))
        if resp.error_code != pb.NONE:
            raise client_errors.error_for_code(resp.error_code, resp.error_message, context=f"delete group {group_id!r}")

    def topic_partitions(self, topic: str) -> list[tuple[str, int]]:
        return [(topic, info.partition) for info in self.partitions_for(topic)]
