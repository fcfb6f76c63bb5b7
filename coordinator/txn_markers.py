"""Transaction markers: the coordinator's marker channel planner, and the partition leader's
KIP-890 verification cache. Both pure (no I/O, no clock: `now_ms` is passed in).

Marker channel (coordinator side). Once a Prepare* record is durable, every partition of
the transaction needs a COMMIT/ABORT marker (`TransactionStateMachine.marker_plan`). The
channel keeps one *job* per transactional id (its outstanding markers), groups due markers
by the broker that currently leads each partition (`poll`), and digests the answers
(`on_response` / `on_failure`): written markers leave the job, retriable failures come back
after an exponential backoff, and a job with no markers left is *completed* (the shell then
calls `complete_markers` on the state machine). Markers follow leadership: when `leader_of`
names another broker than the one a marker last went to, the marker is due at once with a
fresh backoff, and a marker still *in flight* to the old broker is sent again to the new one
(the old request's answer is then ignored for it; the old request still holds its broker's
in-flight slot until it ends). Else a marker in flight to a leader that was paused or cut
off waited for that RPC's timeout, and one that had backed off waited out its backoff, while
the next transaction of the id could not start (CONCURRENT_TRANSACTIONS for 8-12 s under
faults, issue 20). The bound: a marker reaches a partition's new leader at the first `poll`
after the coordinator's metadata names it; a leader that keeps refusing is retried at least
every `backoff_max_ms` (`limits.MAX_MARKER_RETRY_BACKOFF_MS`). Markers are retried forever:
a prepared decision never flips, so giving up is never an option. A marker refused with
TRANSACTION_COORDINATOR_FENCED means a newer coordinator owns the state partition: the job
is dropped and reported as fenced (the shell unloads that partition).
Bounds: at most `max_jobs` jobs (`add` answers False when full: the transaction simply stays
Prepare* and is re-added later from `TransactionStateMachine.prepared()`), at most
`max_markers_per_request` markers per request and `max_in_flight_per_broker` requests
outstanding per broker.

Verification cache (partition side, KIP-890). Before the *first* transactional write of a
producer to a partition (no open transaction of it there), the leader asks the coordinator
(VerifyTransaction) whether the partition is in the producer's current transaction. The
answer may arrive after a marker has already closed that transaction (a delayed write, the
Jepsen anomaly); so `begin` hands out a guard, a marker (`on_marker`) or a newer `begin`
voids it, and the append checks the guard (`check`) under the partition's append lock:
a voided guard refuses the write instead of opening a hanging transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
from collections.abc import Callable, Mapping, Sequence

from semel import limits
from semel.backoff import backoff_ms
from semel.coordinator.txn_state import MarkerRequest
from semel.invariant import invariant
from semel.storage.producer_state import ProducerInfo
from semel.topic_partition import TopicPartition
from semel.v1.common_pb2 import ErrorCode


class MarkerOutcome(enum.Enum):
    DONE = "done"  # nothing left to do for this partition
    RETRY = "retry"
    FENCED = "fenced"  # a newer coordinator exists


# Answers after which the marker needs no retry: written; a newer epoch of the producer is
# already there (a later transaction's marker closed it, nothing is open); the topic is gone
# (see `authoritative_results`: only the coordinator's own metadata may say so).
_DONE = frozenset({ErrorCode.NONE, ErrorCode.INVALID_PRODUCER_EPOCH, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION})


def classify_marker_error(error: ErrorCode) -> MarkerOutcome:
    if error in _DONE:
        return MarkerOutcome.DONE
    if error == ErrorCode.TRANSACTION_COORDINATOR_FENCED:
        return MarkerOutcome.FENCED
    return MarkerOutcome.RETRY  # not leader, not enough replicas, timed out, storage error, ...


def authoritative_results(
    results: Mapping[tuple[int, TopicPartition], ErrorCode], from_broker: int, coordinator_broker: int
) -> dict[tuple[int, TopicPartition], ErrorCode]:
    """UNKNOWN_TOPIC_OR_PARTITION ends a marker only when the coordinator's own broker said it:
    the coordinator sends a deleted partition's markers to itself, so the answer comes from the
    metadata it consults. Any other broker may just not know the topic *yet* (chaos seed 53: a
    broker restarted 0.35 s earlier answered from an empty metadata image; the transaction's
    markers were dropped, and a later marker of the producer closed it as aborted at one
    partition and committed at the other). From another broker it is a retry, and the next
    attempt routes by the coordinator's metadata again."""
    if from_broker == coordinator_broker:
        return dict(results)
    return {key: (ErrorCode.NOT_LEADER_OR_FOLLOWER if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION else code)
            for key, code in results.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class MarkerSend:
    """One WriteTxnMarkers request to send to `broker_id`."""

    request_id: int
    broker_id: int
    markers: tuple[MarkerRequest, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class MarkerProgress:
    completed: tuple[str, ...] = ()  # every marker written: call complete_markers(tid)
    fenced: tuple[str, ...] = ()  # dropped: a newer coordinator owns these ids
    retrying: int = 0  # markers scheduled again


@dataclasses.dataclass(frozen=True, slots=True)
class MarkerChannelConfig:
    max_jobs: int = limits.MAX_MARKER_JOBS_PER_COORDINATOR
    max_markers_per_request: int = limits.MAX_MARKERS_PER_REQUEST
    max_in_flight_per_broker: int = limits.MAX_MARKER_REQUESTS_IN_FLIGHT_PER_BROKER
    backoff_ms: int = limits.MARKER_RETRY_BACKOFF_MS
    backoff_max_ms: int = limits.MAX_MARKER_RETRY_BACKOFF_MS

    def __post_init__(self) -> None:
        invariant(self.max_jobs >= 1 and self.max_markers_per_request >= 1, "bounds must be >= 1")
        invariant(self.max_in_flight_per_broker >= 1, "max_in_flight_per_broker must be >= 1")
        invariant(0 <= self.backoff_ms <= self.backoff_max_ms, "need 0 <= backoff_ms <= backoff_max_ms")


class _Slot:
    """One outstanding marker. Invariant: in_flight is None or a request id in `_sends`, sent
    to `broker`."""

    __slots__ = ("marker", "attempts", "not_before_ms", "in_flight", "broker")

    def __init__(self, marker: MarkerRequest) -> None:
        self.marker = marker
        self.attempts = 0  # attempts at `broker` (the backoff grows with them)
        self.not_before_ms = 0
        self.in_flight: int | None = None
        self.broker: int | None = None  # where the last attempt went


# The broker leading a partition now (None: no leader known; the marker waits).
LeaderLookup = Callable[[TopicPartition], "int | None"]


class TxnMarkerChannel:
    def __init__(self, config: MarkerChannelConfig | None = None) -> None:
        self.config = config or MarkerChannelConfig()
        self._jobs: dict[str, dict[TopicPartition, _Slot]] = {}  # insertion order = fairness order
        self._sends: dict[int, MarkerSend] = {}
        self._in_flight: collections.Counter[int] = collections.Counter()
        self._request_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, transactional_id: str) -> bool:
        return transactional_id in self._jobs

    def outstanding(self, transactional_id: str) -> frozenset[TopicPartition]:
        return frozenset(self._jobs.get(transactional_id, {}))

    def in_flight(self, broker_id: int) -> int:
        return self._in_flight[broker_id]

    def add(self, markers: Sequence[MarkerRequest]) -> bool:
        """Queue the markers of one prepared transaction. False when the channel is full
        (retry later); True when queued or already queued (idempotent)."""
        if not markers:
            raise ValueError("a prepared transaction has at least one partition")
        first = markers[0]
        same = (first.transactional_id, first.commit, first.producer_id, first.producer_epoch, first.coordinator_epoch)
        for m in markers:
            if (m.transactional_id, m.commit, m.producer_id, m.producer_epoch, m.coordinator_epoch) != same:
                raise ValueError("markers of one job belong to one transaction decision")
        tid = first.transactional_id
        job = self._jobs.get(tid)
        if job is not None:
            queued = {s.marker for s in job.values()}
            invariant(queued <= set(markers), f"{tid!r}: a new marker job while another decision is still queued")
            return True
        if len(self._jobs) >= self.config.max_jobs:
            return False
        self._jobs[tid] = {m.topic_partition: _Slot(m) for m in markers}
        return True

    def remove(self, transactional_id: str) -> None:
        """Forget a job (its coordinator partition was unloaded). A request already sent
        keeps its broker's in-flight slot until its answer or failure is reported."""
        self._jobs.pop(transactional_id, None)

    def clear(self) -> None:
        self._jobs.clear()
        self._sends.clear()
        self._in_flight.clear()

    def next_due_ms(self) -> int | None:
        """Earliest time a waiting (not in-flight) marker may be sent; None when none waits."""
        due = [s.not_before_ms for job in self._jobs.values() for s in job.values() if s.in_flight is None]
        return min(due) if due else None

    def poll(self, now_ms: int, leader_of: LeaderLookup) -> list[MarkerSend]:
        """Requests to send now, at most one per broker per call and within the bounds."""
        grouped: dict[int, list[_Slot]] = {}
        for job in self._jobs.values():
            for tp, slot in job.items():
                broker = leader_of(tp)
                moved = broker is not None and broker != slot.broker
                if not moved and (slot.in_flight is not None or slot.not_before_ms > now_ms):
                    continue
                if broker is None or self._in_flight[broker] >= self.config.max_in_flight_per_broker:
                    continue
                batch = grouped.setdefault(broker, [])
                if len(batch) < self.config.max_markers_per_request:
                    batch.append(slot)
        sends = []
        for broker in sorted(grouped):
            send = MarkerSend(next(self._request_ids), broker, tuple(s.marker for s in grouped[broker]))
            for slot in grouped[broker]:
                if slot.broker != broker:
                    slot.broker, slot.attempts = broker, 0  # a new leader: a fresh backoff
                slot.in_flight = send.request_id  # a request to the old leader is ignored for it now
                slot.attempts += 1
            self._sends[send.request_id] = send
            self._in_flight[broker] += 1
            sends.append(send)
        return sends

    def on_response(
        self, send: MarkerSend, results: Mapping[tuple[int, TopicPartition], ErrorCode], now_ms: int
    ) -> MarkerProgress:
        """Answers of `send`, keyed by (producer id, partition); a missing answer is retried."""
        if self._sends.pop(send.request_id, None) is None:
            return MarkerProgress()  # already failed/cleared
        self._release(send.broker_id)
        completed, fenced, retrying = [], [], 0
        for marker in send.markers:
            tid = marker.transactional_id
            slot = self._jobs.get(tid, {}).get(marker.topic_partition)
            if slot is None or slot.in_flight != send.request_id:
                continue
            outcome = classify_marker_error(results.get((marker.producer_id, marker.topic_partition), ErrorCode.REQUEST_TIMED_OUT))
            if outcome is MarkerOutcome.FENCED:
                self.remove(tid)
                fenced.append(tid)
            elif outcome is MarkerOutcome.DONE:
                del self._jobs[tid][marker.topic_partition]
                if not self._jobs[tid]:
                    del self._jobs[tid]
                    completed.append(tid)
            else:
                self._retry_later(slot, now_ms)
                retrying += 1
        return MarkerProgress(tuple(completed), tuple(dict.fromkeys(fenced)), retrying)

    def on_failure(self, send: MarkerSend, now_ms: int) -> MarkerProgress:
        """The request failed as a whole (connection lost, timeout): retry every marker."""
        return self.on_response(send, {}, now_ms)

    def _retry_later(self, slot: _Slot, now_ms: int) -> None:
        backoff = backoff_ms(slot.attempts, self.config.backoff_ms, self.config.backoff_max_ms)
        slot.in_flight = None
        slot.not_before_ms = now_ms + backoff

    def _release(self, broker_id: int) -> None:
        self._in_flight[broker_id] -= 1
        if self._in_flight[broker_id] <= 0:
            del self._in_flight[broker_id]


# --- partition side: KIP-890 verification ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class VerificationGuard:
    producer_id: int
    producer_epoch: int
    token: int


class _Entry:
    __slots__ = ("guard", "verified", "expires_ms")

    def __init__(self, guard: VerificationGuard, expires_ms: int) -> None:
        self.guard = guard
        self.verified = False
        self.expires_ms = expires_ms


class VerificationCache:
    """Per partition: producers whose first transactional write is being verified or was
    verified but not yet appended. Bounded (LRU eviction: an evicted producer is simply
    verified again) and entries expire after `ttl_ms`."""

    def __init__(
        self,
        max_entries: int = limits.MAX_VERIFICATION_ENTRIES_PER_PARTITION,
        ttl_ms: int = limits.VERIFICATION_ENTRY_TTL_MS,
    ) -> None:
        invariant(max_entries >= 1 and ttl_ms > 0, "bad verification cache bounds")
        self.max_entries = max_entries
        self.ttl_ms = ttl_ms
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._tokens = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def needs_verification(is_transactional: bool, has_open_txn: bool) -> bool:
        """Only a transactional batch of a producer with no open transaction in this
        partition (its first write of a transaction) is verified."""
        return is_transactional and not has_open_txn

    def begin(self, producer_id: int, producer_epoch: int, now_ms: int) -> VerificationGuard:
        """Start a verification (then ask the coordinator); voids any older guard of the producer."""
        guard = VerificationGuard(producer_id, producer_epoch, next(self._tokens))
        self._entries.pop(producer_id, None)
        self._entries[producer_id] = _Entry(guard, now_ms + self.ttl_ms)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return guard

    def record_verified(self, guard: VerificationGuard, now_ms: int) -> bool:
        """The coordinator answered NONE. False when the guard was voided meanwhile."""
        entry = self._current(guard, now_ms)
        if entry is None:
            return False
        entry.verified = True
        return True

    def check(self, guard: VerificationGuard, now_ms: int) -> int:
        """At append time (under the partition's append lock): NONE, or INVALID_TXN_STATE
        when the verification is missing, pending, voided by a marker, or expired."""
        entry = self._current(guard, now_ms)
        return int(ErrorCode.NONE if entry is not None and entry.verified else ErrorCode.INVALID_TXN_STATE)

    def on_appended(self, producer_id: int) -> None:
        """The first transactional batch is in the log: the open transaction now lives in
        the producer state; the entry is no longer needed."""
        self._entries.pop(producer_id, None)

    def on_marker(self, producer_id: int) -> None:
        """A marker ended a transaction of the producer: every verification of it is void."""
        self._entries.pop(producer_id, None)

    def expire(self, now_ms: int) -> int:
        stale = [pid for pid, e in self._entries.items() if e.expires_ms <= now_ms]
        for pid in stale:
            del self._entries[pid]
        return len(stale)

    def _current(self, guard: VerificationGuard, now_ms: int) -> _Entry | None:
        entry = self._entries.get(guard.producer_id)
        if entry is None or entry.guard != guard or entry.expires_ms <= now_ms:
            return None
        return entry


# --- partition side: KIP-664 admin abort ------------------------------------------------------------


def check_admin_abort(info: ProducerInfo | None, producer_epoch: int, coordinator_epoch: int) -> tuple[ErrorCode, str]:
    """AbortTransaction on a partition leader (a hanging transaction the coordinator no
    longer knows): allowed only for the producer's *open* transaction at its current epoch,
    with a coordinator epoch no older than the last marker's. Then the broker appends an
    ABORT marker with `PartitionStore.append_marker(pid, producer_epoch, commit=False,
    coordinator_epoch=...)`, which applies the same epoch rules again under its lock."""
    if info is None or info.txn_first_offset is None:
        return ErrorCode.INVALID_TXN_STATE, "the producer has no open transaction in this partition"
    if producer_epoch != info.producer_epoch:
        return (
            ErrorCode.INVALID_PRODUCER_EPOCH,
            f"the open transaction runs at epoch {info.producer_epoch}, not {producer_epoch}",
        )
    if coordinator_epoch < info.coordinator_epoch:
        return (
            ErrorCode.TRANSACTION_COORDINATOR_FENCED,
            f"coordinator epoch {coordinator_epoch} < the last marker's {info.coordinator_epoch}",
        )
    return ErrorCode.NONE, ""
