"""Replication progress of one partition as seen by its leader (pure: no I/O, no clock).

Theory of operation (Kafka's ISR replication, KIP-101 leader epochs):
  * Followers pull. Each fetch carries the follower's log end offset (LEO); the leader
    records it as that follower's LEO. The leader's own LEO comes from its log.
  * High watermark (HW) = min LEO over the in-sync replicas (the leader included). On the
    leader it never decreases: a shrinking ISR can only raise the min, and a follower joins
    the ISR only once its LEO >= HW.
  * A follower is "caught up" at a fetch whose offset reaches the leader's LEO at that time,
    or the leader's LEO as of the follower's previous fetch (so a steady stream of appends
    does not make a follower that always fetches everything look lagging), and up to the
    moment of an append if it had the whole log before it (its fetch was parked). A follower
    in the ISR whose LEO is behind the leader's and that has not been caught up for
    `lag_time_max_ms` should leave the ISR (Kafka's rule); one outside
    the ISR whose LEO reached both the HW and the start offset of the current leader epoch
    should join. The decisions are returned; the caller changes the ISR through the quorum
    and feeds the committed ISR back with `set_isr`.
  * While a proposed ISR is in flight (`propose_isr` .. `set_isr` / `drop_proposed_isr`) the HW
    is the min over the *maximal* ISR, committed | proposed (Kafka's KIP-497 rule). Else a
    joiner checked at proposal time (LEO >= HW) could be behind a HW that advanced before the
    quorum committed it, and an election of that joiner would lose acknowledged writes (chaos
    money seed 53: a preferred-leader move to a replica that had just joined dropped a
    transaction's acknowledged COMMIT marker). The proposal ends only when the quorum's answer
    is known: an image at a *newer* partition epoch than the proposal's base (`set_isr` with
    `partition_epoch`), or a refusal that proves nothing was committed. An image at the same
    partition epoch (any unrelated metadata change reconciles every partition) decides
    nothing: clearing the proposal then let the HW pass a joiner that the quorum had already
    put in the ISR, and its election lost acknowledged writes (chaos soak, idempotent/partition
    seed 351492744: chaos-3 offset 2078).
  * Eligible leader replicas (KIP-966; `semel.cluster.metadata.state`): replicas that left an
    ISR smaller than min.insync.replicas and may still be elected, because they hold every
    committed record. So they bound the HW like ISR members: while they are away nothing new
    is committed (KIP-966 stops the HW below min.insync.replicas for the same reason).
  * acks=all producers wait in `PendingAcks` for HW > their last offset.

Invariants: hw <= leader_leo; hw never decreases; the leader is always in the ISR.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable
from typing import Generic, TypeVar

from semel.invariant import invariant
from semel.v1 import common_pb2

UNKNOWN_LEO = -1


@dataclasses.dataclass(slots=True)
class FollowerProgress:
    leo: int = UNKNOWN_LEO
    last_caught_up_ms: int = 0
    last_fetch_ms: int = 0
    leader_leo_at_last_fetch: int = UNKNOWN_LEO


@dataclasses.dataclass(frozen=True, slots=True)
class IsrChange:
    """A proposed new ISR (the caller commits it through the metadata quorum)."""

    new_isr: tuple[int, ...]
    reason: str


class LeaderProgress:
    def __init__(
        self,
        *,
        leader_id: int,
        replicas: Iterable[int],
        isr: Iterable[int],
        leader_leo: int,
        high_watermark: int,
        epoch_start_offset: int,
        now_ms: int,
        lag_time_max_ms: int,
        elr: Iterable[int] = (),
    ) -> None:
        self.leader_id = leader_id
        self.replicas = tuple(replicas)
        self.isr: frozenset[int] = frozenset(isr) | {leader_id}
        self.elr: frozenset[int] = frozenset(elr) - self.isr  # bound the HW too (see the docstring)
        self.proposed_isr: frozenset[int] = frozenset()  # in flight to the quorum (see the docstring)
        self.proposal_base_epoch = -1  # the partition epoch the proposal was made against
        self.leader_leo = leader_leo
        # A restarted leader may hold a checkpointed HW above what is provable; never above its LEO.
        self.high_watermark = min(high_watermark, leader_leo)
        self.epoch_start_offset = epoch_start_offset
        self.lag_time_max_ms = lag_time_max_ms
        # Followers get a full lag period of grace from the moment this broker became leader.
        self.followers = {
            r: FollowerProgress(last_caught_up_ms=now_ms, last_fetch_ms=now_ms)
            for r in self.replicas
            if r != leader_id
        }
        self._maybe_advance_hw()

    # --- inputs -----------------------------------------------------------------
    def on_leader_append(self, leader_leo: int, now_ms: int) -> bool:
        """The leader's log grew. Returns True if the HW advanced."""
        invariant(leader_leo >= self.leader_leo, "leader LEO went back without truncation")
        for f in self.followers.values():
            if f.leo >= self.leader_leo:  # it had everything until this instant (a parked fetch)
                f.last_caught_up_ms = max(f.last_caught_up_ms, now_ms)
        self.leader_leo = leader_leo
        return self._maybe_advance_hw()

    def on_follower_fetch(self, replica_id: int, fetch_offset: int, now_ms: int) -> bool:
        """A follower fetched from `fetch_offset` (= its LEO). Returns True if the HW advanced."""
        f = self.followers.get(replica_id)
        if f is None:
            return False
        f.leo = min(fetch_offset, self.leader_leo)
        if fetch_offset >= self.leader_leo:
            f.last_caught_up_ms = now_ms
        elif f.leader_leo_at_last_fetch != UNKNOWN_LEO and fetch_offset >= f.leader_leo_at_last_fetch:
            f.last_caught_up_ms = max(f.last_caught_up_ms, f.last_fetch_ms)
        f.last_fetch_ms = now_ms
        f.leader_leo_at_last_fetch = self.leader_leo
        return self._maybe_advance_hw()

    def set_isr(self, isr: Iterable[int], now_ms: int, elr: Iterable[int] = (),
                partition_epoch: int | None = None) -> bool:
        """The quorum's ISR (and ELR) as of `partition_epoch` (None: a commit known to answer any
        proposal). A proposal made against an epoch this image has not passed stays counted.
        Returns True if the HW advanced."""
        new_isr = frozenset(isr) | {self.leader_id}
        for r in new_isr - self.isr:
            f = self.followers.get(r)
            if f is not None:
                f.last_caught_up_ms = max(f.last_caught_up_ms, now_ms)
        self.isr = new_isr
        self.elr = frozenset(elr) - new_isr
        if partition_epoch is None or partition_epoch > self.proposal_base_epoch:
            self.proposed_isr = frozenset()
        return self._maybe_advance_hw()

    def propose_isr(self, isr: Iterable[int], partition_epoch: int = -1) -> None:
        """A new ISR was sent to the quorum against `partition_epoch`: until the answer is known
        (see the docstring), its members count for the HW as well (the HW can only wait
        longer, never lose a write)."""
        if self.proposed_isr:  # an earlier one is unsettled: its members stay counted too
            self.proposed_isr |= frozenset(isr)
            self.proposal_base_epoch = min(self.proposal_base_epoch, partition_epoch)
        else:
            self.proposed_isr = frozenset(isr)
            self.proposal_base_epoch = partition_epoch

    def drop_proposed_isr(self) -> bool:
        """The proposal was refused or failed. Returns True if the HW advanced."""
        self.proposed_isr = frozenset()
        return self._maybe_advance_hw()

    def set_replicas(self, replicas: Iterable[int], now_ms: int) -> None:
        self.replicas = tuple(replicas)
        for r in self.replicas:
            if r != self.leader_id and r not in self.followers:
                self.followers[r] = FollowerProgress(last_caught_up_ms=now_ms, last_fetch_ms=now_ms)
        for r in list(self.followers):
            if r not in self.replicas:
                del self.followers[r]

    # --- decisions ----------------------------------------------------------------
    def isr_change(self, now_ms: int) -> IsrChange | None:
        """Shrink (lagging members out) and expand (caught-up replicas in) in one proposal."""
        lagging = {
            r
            for r in self.isr
            if r != self.leader_id
            and (r not in self.followers or (
                self.followers[r].leo < self.leader_leo  # Kafka: a replica at the leader's LEO never lags
                and now_ms - self.followers[r].last_caught_up_ms > self.lag_time_max_ms))
        }
        joining = {
            r
            for r, f in self.followers.items()
            if r not in self.isr and f.leo != UNKNOWN_LEO and f.leo >= self.high_watermark
            and f.leo >= self.epoch_start_offset
            and now_ms - f.last_caught_up_ms <= self.lag_time_max_ms
        }
        if not lagging and not joining:
            return None
        new_isr = tuple(sorted((self.isr - lagging) | joining))
        parts = []
        if lagging:
            parts.append(f"out (lag > {self.lag_time_max_ms} ms): {sorted(lagging)}")
        if joining:
            parts.append(f"in (caught up): {sorted(joining)}")
        return IsrChange(new_isr, "; ".join(parts))

    # --- internals ----------------------------------------------------------------
    def _maybe_advance_hw(self) -> bool:
        leos = [self.leader_leo]
        for r in self.isr | self.proposed_isr | self.elr:
            if r == self.leader_id:
                continue
            f = self.followers.get(r)
            leos.append(UNKNOWN_LEO if f is None else f.leo)
        if UNKNOWN_LEO in leos:
            return False
        candidate = min(leos)
        if candidate > self.high_watermark:
            self.high_watermark = candidate
            invariant(self.high_watermark <= self.leader_leo, "HW above the leader's LEO")
            return True
        return False


T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class AckOutcome:
    error_code: common_pb2.ErrorCode
    message: str = ""


class PendingAcks(Generic[T]):
    """acks=all produces parked until the HW passes their last offset (bounded).

    `T` is the caller's waiter handle (an asyncio future in the broker, anything in tests).
    Entries are kept sorted by end offset, so completion pops a prefix. Waiters usually arrive
    in offset order (each waits for the batch it just appended), but not always: a retried
    batch that the leader deduplicates waits for its *original* offsets, which may lie below
    batches appended (and waited on) since. `add` therefore inserts in place; equal end
    offsets keep their arrival order.
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._entries: list[tuple[int, T]] = []  # (next offset after the batch, waiter)

    def __len__(self) -> int:
        return len(self._entries)

    def full(self) -> bool:
        return len(self._entries) >= self.max_pending

    def add(self, end_offset: int, waiter: T) -> None:
        invariant(not self.full(), "PendingAcks.add when full")
        at = bisect.bisect_right(self._entries, end_offset, key=lambda e: e[0])
        self._entries.insert(at, (end_offset, waiter))  # bounded by max_pending

    def complete_up_to(self, high_watermark: int) -> list[T]:
        """Waiters whose batch is now below the HW (replicated to the whole ISR)."""
        n = 0
        while n < len(self._entries) and self._entries[n][0] <= high_watermark:
            n += 1
        done = [w for _, w in self._entries[:n]]
        del self._entries[:n]
        return done

    def remove(self, waiter: T) -> None:
        self._entries = [e for e in self._entries if e[1] is not waiter]

    def drain(self) -> list[T]:
        done = [w for _, w in self._entries]
        self._entries.clear()
        return done


def ack_outcome_after_hw(isr_size: int, min_insync_replicas: int) -> AckOutcome:
    """Kafka's rule: replicated to the ISR, but the ISR was already below the minimum."""
    if isr_size < min_insync_replicas:
        return AckOutcome(
            common_pb2.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            f"written, but the ISR shrank to {isr_size} < min_insync_replicas={min_insync_replicas}",
        )
    return AckOutcome(common_pb2.NONE)
