"""Transaction coordinator state machine: one `TransactionStateMachine` per loaded partition
of `__transaction_state`.

Theory of operation
-------------------
Each transactional id has one `TransactionMetadata` (frozen). Requests never mutate it:
every request answers a `TxnResult`, which either is final (an error, or an answer that
needs no write, e.g. an idempotent retry) or carries a `PendingTransition` = the metadata
the id will have + the log record to write (the record *is* that metadata; `after is None`
is a tombstone). The shell appends `txn_log.encode_records(...)` to the state partition
with acks=all and then calls `complete(pending)` (the write is committed: memory changes
now) or `abandon(pending)` (the write definitely did not happen). While a transition is
pending every other request for the id answers CONCURRENT_TRANSACTIONS (retriable). A write
with an *unknown* outcome is neither completed nor abandoned: the pending transition stays
until the shell learns the outcome (the offset becomes committed, or is truncated away, or
the partition is unloaded and this object discarded), so memory never disagrees with
what a reload of the log would produce.

States and transitions (`ALLOWED_PREVIOUS`, Kafka's table, docs/reference/kafka-eos.md section 2):
InitProducerId moves Empty/Complete* -> Empty (epoch bump) or, when a transaction is open,
fences it: Ongoing -> PrepareEpochFence -> PrepareAbort in *one* durable write
(PrepareEpochFence is a waypoint that is checked against the table but never stored).
AddPartitions moves Empty/Complete*/Ongoing -> Ongoing (the first add starts the transaction
clock). EndTxn moves Ongoing -> PrepareCommit/PrepareAbort; once every marker is written,
`complete_markers` moves PrepareX -> CompleteX, or PrepareX -> CompleteX -> Ongoing in one
write when the next transaction's AddPartitions already waits for it (CompleteX a waypoint).
Timeouts: Ongoing -> (PrepareEpochFence) -> PrepareAbort. Idle ids: Empty/Complete* -> Dead
(tombstone; the id is forgotten).

Producer identity (KIP-890): the producer epoch is bumped on *every* transaction end. When a
transaction run by (P, e) ends, its markers carry (P, e + 1), so any delayed write of (P, e)
is refused by the partition, and the producer continues with (P, e + 1).

Transaction versions (Kafka's `transaction.version`): the rule above is version 2, what
gRPC clients do. Classic Kafka clients (librdkafka, kafka-python, Java without
transaction.version 2) are version 1: they keep their epoch across transactions, and a bump
at EndTxn would fence their next transaction. An id's `txn_version` is set by its last
InitProducerId (the Kafka listener asks for V1, gRPC for V2) and stored in every record, so a
new coordinator keeps it. Under V1 an EndTxn does not bump: the ended transaction's identity
(`prev_producer_id`/`last_producer_epoch`) is set to the current one, and the markers carry
that same epoch (Kafka before KIP-890). Everything else is as in V2: InitProducerId, a fence
and a timeout still bump (zombie fencing holds), and partitions keep the producer's sequences
running across V1 transactions (only an epoch bump restarts them at 0). Markers always carry
the highest epoch of the ended transaction's producer id: the current epoch when the id kept
its producer id, else (epochs exhausted) the last epoch + 1. Clients hold
epochs 0..`CLIENT_EPOCH_MAX` (32766); from 32766 the producer continues with a fresh
producer id at epoch 0 while the markers still carry (P, 32767). `prev_producer_id` /
`last_producer_epoch` keep the identity before the last bump, and `bump_reason` why it was
bumped, which gives: an EndTxn retried with the pre-bump identity answers success when the
decision matches and INVALID_TXN_STATE when it does not (a prepared decision never flips);
a producer whose transaction timed out learns TRANSACTION_TIMED_OUT, not PRODUCER_FENCED.

Invariants (`check_metadata`, checked on every transition):
* `state` is never PrepareEpochFence or Dead in memory;
* Ongoing and Prepare* have partitions and a start time; Empty has no partitions;
* Prepare*/Complete* reached through EndTxn/fence/timeout have a previous identity;
* after an EndTxn, the identity equals the previous one exactly under V1 (no bump);
* for one producer id, epochs handed out never decrease; a pending transition's `before`
  is exactly the metadata in memory (so completion order cannot be mixed up).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Callable, Iterable, Mapping

from semel import limits
from semel.internal_topics import CONSUMER_OFFSETS_TOPIC, coordinator_partition
from semel.invariant import invariant, not_none
from semel.sentinels import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_TIMESTAMP
from semel.topic_partition import TopicPartition
from semel.v1.common_pb2 import ErrorCode

PRODUCER_EPOCH_MAX = (1 << 15) - 1  # int16; only markers carry it
CLIENT_EPOCH_MAX = PRODUCER_EPOCH_MAX - 1  # the highest epoch a producer is given


class TxnState(enum.Enum):
    """Values are the wire numbers of semel.v1.TransactionState."""

    EMPTY = 1
    ONGOING = 2
    PREPARE_COMMIT = 3
    PREPARE_ABORT = 4
    COMPLETE_COMMIT = 5
    COMPLETE_ABORT = 6
    DEAD = 7
    PREPARE_EPOCH_FENCE = 8


S = TxnState
# state -> the states it may be entered from (Kafka's TransactionState table).
ALLOWED_PREVIOUS: Mapping[TxnState, frozenset[TxnState]] = {
    S.EMPTY: frozenset({S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT}),
    S.ONGOING: frozenset({S.ONGOING, S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT}),
    S.PREPARE_COMMIT: frozenset({S.ONGOING}),
    S.PREPARE_ABORT: frozenset({S.ONGOING, S.PREPARE_EPOCH_FENCE}),
    S.COMPLETE_COMMIT: frozenset({S.PREPARE_COMMIT}),
    S.COMPLETE_ABORT: frozenset({S.PREPARE_ABORT}),
    S.DEAD: frozenset({S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT}),
    S.PREPARE_EPOCH_FENCE: frozenset({S.ONGOING}),
}
PREPARED = frozenset({S.PREPARE_COMMIT, S.PREPARE_ABORT})
COMPLETED = frozenset({S.COMPLETE_COMMIT, S.COMPLETE_ABORT})
IDLE = frozenset({S.EMPTY}) | COMPLETED  # no transaction open or completing
NEVER_IN_MEMORY = frozenset({S.DEAD, S.PREPARE_EPOCH_FENCE})


def transition_allowed(before: TxnState | None, after: TxnState) -> bool:
    """Whether `after` may follow `before` (None: a new id, which starts Empty)."""
    if before is None:
        return after is S.EMPTY
    return before in ALLOWED_PREVIOUS[after]


def path_allowed(before: TxnState | None, path: Iterable[TxnState]) -> bool:
    state = before
    for step in path:
        if not transition_allowed(state, step):
            return False
        state = step
    return True


class TxnVersion(enum.Enum):
    """How an id's producer ends its transactions; values are semel.v1.TransactionVersion
    numbers (0, records written before the field, reads as V2)."""

    V1 = 1  # classic Kafka clients: EndTxn keeps the epoch, markers carry it
    V2 = 2  # KIP-890 part 2: every EndTxn bumps the epoch (gRPC clients)


class BumpReason(enum.Enum):
    """Why the identity was last bumped; values are semel.v1.EpochBumpReason numbers."""

    NONE = 0
    INIT = 1
    END_TXN = 2
    FENCE = 3
    TIMEOUT = 4
    REINIT = 5



@dataclasses.dataclass(frozen=True, slots=True)
class TransactionMetadata:
    """Everything the coordinator knows about one transactional id (= one log record)."""

    transactional_id: str
    producer_id: int  # the identity the producer uses now
    producer_epoch: int
    prev_producer_id: int  # the identity before the last bump (-1/-1: none)
    last_producer_epoch: int
    timeout_ms: int
    state: TxnState
    partitions: tuple[TopicPartition, ...]  # sorted, unique
    txn_start_ms: int  # -1: no transaction started yet
    last_update_ms: int
    bump_reason: BumpReason
    txn_version: TxnVersion = TxnVersion.V2

    @property
    def marker_producer_id(self) -> int:
        """Markers of the ended transaction go to the producer id it ran under ..."""
        return self.prev_producer_id

    @property
    def marker_producer_epoch(self) -> int:
        """... with that id's highest epoch: the current one while the id kept its producer id
        (bumped by one under V2 or by a fence/timeout, unchanged by a V1 EndTxn), else the
        ended transaction's epoch + 1 (epochs exhausted: the producer moved to a fresh id)."""
        if self.producer_id == self.prev_producer_id:
            return self.producer_epoch
        return self.last_producer_epoch + 1


def check_metadata(meta: TransactionMetadata) -> None:
    """Raise AssertionError when `meta` breaks an invariant of the module docstring."""
    where = f"transactional id {meta.transactional_id!r}"
    invariant(meta.state not in NEVER_IN_MEMORY, f"{where}: state {meta.state} is never stored")
    invariant(meta.producer_id >= 0 and 0 <= meta.producer_epoch <= CLIENT_EPOCH_MAX, f"{where}: bad identity")
    invariant(meta.timeout_ms > 0, f"{where}: bad timeout {meta.timeout_ms}")
    invariant(list(meta.partitions) == sorted(set(meta.partitions)), f"{where}: partitions not sorted/unique")
    if meta.state is S.ONGOING or meta.state in PREPARED:
        invariant(bool(meta.partitions), f"{where}: {meta.state} without partitions")
        invariant(meta.txn_start_ms >= 0, f"{where}: {meta.state} without a start time")
    if meta.state in (S.EMPTY,) + tuple(COMPLETED):
        invariant(not meta.partitions, f"{where}: {meta.state} with partitions")
    if meta.state in PREPARED or meta.state in COMPLETED:
        invariant(
            meta.bump_reason in (BumpReason.END_TXN, BumpReason.FENCE, BumpReason.TIMEOUT, BumpReason.REINIT),
            f"{where}: {meta.state} not reached by a transaction end",
        )
        invariant(
            meta.prev_producer_id >= 0 and 0 <= meta.last_producer_epoch <= CLIENT_EPOCH_MAX,
            f"{where}: {meta.state} without the ended transaction's identity",
        )
    if meta.bump_reason is BumpReason.END_TXN:
        unchanged = (meta.producer_id, meta.producer_epoch) == (meta.prev_producer_id, meta.last_producer_epoch)
        invariant(
            unchanged == (meta.txn_version is TxnVersion.V1),
            f"{where}: an EndTxn under {meta.txn_version.name} {'kept' if unchanged else 'bumped'} the epoch",
        )


class TransitionKind(enum.Enum):
    INIT_NEW = "init_new"  # a new transactional id
    INIT_BUMP = "init_bump"  # InitProducerId on an idle id: epoch bump
    FENCE_ABORT = "fence_abort"  # InitProducerId found an open transaction: fence + abort
    ADD_PARTITIONS = "add_partitions"
    PREPARE_COMMIT = "prepare_commit"
    PREPARE_ABORT = "prepare_abort"
    TIMEOUT_ABORT = "timeout_abort"
    COMPLETE = "complete"  # every marker written
    REMOVE = "remove"  # idle id expired: tombstone


@dataclasses.dataclass(frozen=True, slots=True)
class PendingTransition:
    """A decided change that takes effect once `after` is durably in the state log."""

    transactional_id: str
    kind: TransitionKind
    before: TransactionMetadata | None
    after: TransactionMetadata | None  # None: tombstone (the id is removed)
    path: tuple[TxnState, ...]  # states passed through, each allowed by the table
    token: int  # unique per state machine; for logs and identity checks

    @property
    def answer(self) -> tuple[int, int]:
        """The (producer id, epoch) the requester gets once this is complete."""
        if self.after is None:
            return NO_PRODUCER_ID, NO_PRODUCER_EPOCH
        return self.after.producer_id, self.after.producer_epoch


@dataclasses.dataclass(frozen=True, slots=True)
class TxnResult:
    """A request's decision. If `pending` is set, write it (even when `error` is set: a
    fencing InitProducerId answers CONCURRENT_TRANSACTIONS *and* must write the abort); the
    request's answer is then `error` with `pending.answer` once complete."""

    error: ErrorCode = ErrorCode.NONE
    message: str = ""
    pending: PendingTransition | None = None
    producer_id: int = NO_PRODUCER_ID  # for answers that need no write
    producer_epoch: int = NO_PRODUCER_EPOCH

    @property
    def ok(self) -> bool:
        return bool(self.error == ErrorCode.NONE)


def _fail(error: ErrorCode, message: str) -> TxnResult:
    return TxnResult(error, message)


def offsets_partition(group_id: str, offsets_partition_count: int) -> TopicPartition:
    """The `__consumer_offsets` partition that AddOffsetsToTxn adds for `group_id`."""
    return TopicPartition(CONSUMER_OFFSETS_TOPIC, coordinator_partition(group_id, offsets_partition_count))


@dataclasses.dataclass(frozen=True, slots=True)
class NextAdd:
    """AddPartitionsToTxn of the next transaction, waiting for the previous one's markers."""

    producer_id: int
    producer_epoch: int
    partitions: tuple[TopicPartition, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    """KIP-890 verification: request-level `error`, else one code per asked partition."""

    error: ErrorCode
    message: str
    partitions: tuple[tuple[TopicPartition, ErrorCode], ...] = ()


# Fatal codes that rest on an id's state in this coordinator's memory: a client gives its
# producer up on them. A coordinator whose state may be stale (its partition may lead
# elsewhere at a newer epoch by now) must not answer them from memory; the shell confirms its
# coordinator epoch first and otherwise answers NOT_COORDINATOR (docs/design.md,
# "Transactions": stale coordinators).
STATE_REFUSALS = frozenset({
    ErrorCode.INVALID_PRODUCER_EPOCH,
    ErrorCode.INVALID_PRODUCER_ID_MAPPING,
    ErrorCode.INVALID_TXN_STATE,
    ErrorCode.PRODUCER_FENCED,
    ErrorCode.TRANSACTION_TIMED_OUT,
})


def refuses_on_state(result: VerifyResult) -> bool:
    """Whether a verification answer is (partly) one of the `STATE_REFUSALS`."""
    return result.error in STATE_REFUSALS or any(code in STATE_REFUSALS for _, code in result.partitions)


@dataclasses.dataclass(frozen=True, slots=True)
class MarkerRequest:
    """One marker to write: close `producer_id`'s transaction in one partition."""

    transactional_id: str
    topic_partition: TopicPartition
    commit: bool
    producer_id: int
    producer_epoch: int
    coordinator_epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class TxnConfig:
    max_timeout_ms: int = limits.MAX_TRANSACTION_TIMEOUT_MS
    max_partitions_per_txn: int = limits.MAX_PARTITIONS_PER_TRANSACTION
    max_transactional_ids: int = limits.MAX_TRANSACTIONAL_IDS_PER_PARTITION
    max_transactional_id_bytes: int = limits.MAX_TRANSACTIONAL_ID_BYTES
    id_expiration_ms: int = limits.TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT
    max_transitions_per_scan: int = limits.MAX_TRANSITIONS_PER_SCAN

    def __post_init__(self) -> None:
        invariant(self.max_timeout_ms > 0, "max_timeout_ms must be positive")
        invariant(self.max_partitions_per_txn >= 1, "max_partitions_per_txn must be >= 1")
        invariant(self.max_transactional_ids >= 1, "max_transactional_ids must be >= 1")
        invariant(self.id_expiration_ms > 0, "id_expiration_ms must be positive")
        invariant(self.max_transitions_per_scan >= 1, "max_transitions_per_scan must be >= 1")


# Returns a never-used producer id, or None when none is available right now (the broker's
# block is exhausted and a new one is on its way): the request answers COORDINATOR_NOT_AVAILABLE.
ProducerIdSource = Callable[[], "int | None"]


class TransactionStateMachine:
    """The transactional ids of one `__transaction_state` partition, led by this broker at
    `coordinator_epoch` (that partition's leader epoch). Discard it when leadership moves."""

    def __init__(
        self,
        partition: int,
        coordinator_epoch: int,
        allocate_producer_id: ProducerIdSource,
        config: TxnConfig | None = None,
        loaded: Iterable[TransactionMetadata] = (),
    ) -> None:
        invariant(partition >= 0 and coordinator_epoch >= 0, "bad partition or coordinator epoch")
        self.partition = partition
        self.coordinator_epoch = coordinator_epoch
        self.config = config or TxnConfig()
        self._allocate = allocate_producer_id
        self._txns: dict[str, TransactionMetadata] = {}
        self._pending: dict[str, PendingTransition] = {}
        self._tokens = itertools.count(1)
        # Transaction timeouts do not trust the wall clock alone (it may be stepped): per open
        # transaction, (its txn_start_ms, the monotonic time this machine first saw it open).
        # Transactions opened (or loaded open) since the last `observe_monotonic` wait in
        # `_unclocked`. Not persisted: a new coordinator starts the timer at load, which only
        # makes a timeout later, never earlier. At most one entry per open transaction.
        self._monotonic_start: dict[str, tuple[int, int]] = {}
        self._unclocked: set[str] = set()
        for meta in loaded:
            check_metadata(meta)
            invariant(meta.transactional_id not in self._txns, f"{meta.transactional_id!r} loaded twice")
            self._txns[meta.transactional_id] = meta
            if meta.state is S.ONGOING:
                self._unclocked.add(meta.transactional_id)

    # --- reads -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._txns)

    def metadata(self, transactional_id: str) -> TransactionMetadata | None:
        return self._txns.get(transactional_id)

    def pending(self, transactional_id: str) -> PendingTransition | None:
        return self._pending.get(transactional_id)

    def snapshot(self) -> dict[str, TransactionMetadata]:
        """A copy of the committed state (values are immutable)."""
        return dict(self._txns)

    def prepared(self) -> list[str]:
        """Ids in Prepare* with nothing pending: their markers must be (re)sent."""
        return sorted(t for t, m in self._txns.items() if m.state in PREPARED and t not in self._pending)

    def open_summary(self) -> tuple[int, int | None]:
        """(transactions open or completing, the oldest one's txn_start_ms or None): for metrics."""
        starts = [m.txn_start_ms for m in self._txns.values() if m.state is S.ONGOING or m.state in PREPARED]
        return len(starts), (min(starts) if starts else None)

    def list_transactions(
        self,
        now_ms: int,
        states: Iterable[TxnState] = (),
        producer_ids: Iterable[int] = (),
        min_duration_ms: int = 0,
        limit: int = limits.MAX_LISTED_TRANSACTIONS,
    ) -> tuple[list[TransactionMetadata], bool]:
        """KIP-664 listing: (matches sorted by id, at most `limit`; truncated?)."""
        wanted_states, wanted_ids = frozenset(states), frozenset(producer_ids)
        out: list[TransactionMetadata] = []
        for tid in sorted(self._txns):
            meta = self._txns[tid]
            if wanted_states and meta.state not in wanted_states:
                continue
            if wanted_ids and meta.producer_id not in wanted_ids:
                continue
            if min_duration_ms > 0 and not (
                meta.state is S.ONGOING and now_ms - meta.txn_start_ms > min_duration_ms
            ):
                continue
            if len(out) == limit:
                return out, True
            out.append(meta)
        return out, False

    # --- requests ---------------------------------------------------------------------------

    def init_producer_id(
        self,
        transactional_id: str,
        timeout_ms: int,
        now_ms: int,
        producer_id: int = NO_PRODUCER_ID,
        producer_epoch: int = NO_PRODUCER_EPOCH,
        txn_version: TxnVersion = TxnVersion.V2,
    ) -> TxnResult:
        """InitProducerId for a transactional id; `producer_id`/`producer_epoch` are the
        caller's current identity for a KIP-360 bump (-1/-1 for a fresh producer).
        `txn_version`: how the new producer ends its transactions, stored with the id by the
        write that hands it its identity (a fence keeps the fenced producer's version until
        the new producer's retry)."""
        problem = self._check_id(transactional_id)
        if problem is not None:
            return problem
        if not 0 < timeout_ms <= self.config.max_timeout_ms:
            return _fail(
                ErrorCode.INVALID_TRANSACTION_TIMEOUT,
                f"transaction timeout {timeout_ms} ms outside (0, {self.config.max_timeout_ms}]",
            )
        has_expected = producer_id != NO_PRODUCER_ID
        if has_expected and (producer_id < 0 or not 0 <= producer_epoch <= CLIENT_EPOCH_MAX):
            return _fail(ErrorCode.INVALID_REQUEST, f"bad producer id/epoch {producer_id}/{producer_epoch}")
        if transactional_id in self._pending:
            return self._concurrent(transactional_id)
        meta = self._txns.get(transactional_id)
        if meta is None:
            return self._init_new(transactional_id, timeout_ms, now_ms, txn_version)
        if has_expected and (producer_id, producer_epoch) != (meta.producer_id, meta.producer_epoch):
            if self._is_init_retry(meta, producer_id, producer_epoch):
                return TxnResult(producer_id=meta.producer_id, producer_epoch=meta.producer_epoch)
            if not self._is_reinit_retry(meta, producer_id, producer_epoch):
                return self._identity_error(meta, producer_id, producer_epoch)
        if meta.state in PREPARED:
            return _fail(ErrorCode.CONCURRENT_TRANSACTIONS, f"{meta.state.name}: markers are being written")
        if meta.state is S.ONGOING:
            # The holder itself (KIP-360) re-initialises: it may retry with its old identity.
            reason = BumpReason.REINIT if has_expected else BumpReason.FENCE
            fence = self._abort_open(meta, now_ms, reason, TransitionKind.FENCE_ABORT)
            if not fence.ok:
                return fence
            return dataclasses.replace(
                fence,
                error=ErrorCode.CONCURRENT_TRANSACTIONS,
                message="the open transaction of an older producer is being fenced and aborted; retry",
            )
        bumped = self._bump(meta.producer_id, meta.producer_epoch)
        if bumped is None:
            return self._no_producer_id()
        after = dataclasses.replace(
            meta,
            producer_id=bumped[0],
            producer_epoch=bumped[1],
            prev_producer_id=meta.producer_id,
            last_producer_epoch=meta.producer_epoch,
            timeout_ms=timeout_ms,
            state=S.EMPTY,
            partitions=(),
            txn_start_ms=NO_TIMESTAMP,
            last_update_ms=now_ms,
            bump_reason=BumpReason.INIT,
            txn_version=txn_version,
        )
        return self._propose(TransitionKind.INIT_BUMP, meta, after, (S.EMPTY,))

    def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        partitions: Iterable[TopicPartition],
        now_ms: int,
    ) -> TxnResult:
        """AddPartitionsToTxn. Needs no write when every partition is already in the open
        transaction (answers NONE at once)."""
        new = frozenset(partitions)
        problem = self._malformed(new)
        if problem is not None:
            return problem
        meta, problem = self._current(transactional_id, producer_id, producer_epoch)
        if problem is not None:
            return problem
        meta = not_none(meta, "_current answers metadata or a problem")
        if meta.state in PREPARED:
            return _fail(ErrorCode.CONCURRENT_TRANSACTIONS, f"the previous transaction is completing ({meta.state.name})")
        invariant(meta.state is S.ONGOING or meta.state in IDLE, f"unexpected state {meta.state}")
        if meta.state is S.ONGOING and new <= frozenset(meta.partitions):
            return TxnResult(producer_id=meta.producer_id, producer_epoch=meta.producer_epoch)
        after = self._with_partitions(meta, new, now_ms)
        if isinstance(after, TxnResult):
            return after
        return self._propose(TransitionKind.ADD_PARTITIONS, meta, after, (S.ONGOING,))

    @staticmethod
    def _malformed(new: frozenset[TopicPartition]) -> TxnResult | None:
        if not new or any(not tp.topic or tp.partition < 0 for tp in new):
            return _fail(ErrorCode.INVALID_REQUEST, "partitions must be non-empty, with topic names and partitions >= 0")
        return None

    def _with_partitions(
        self, meta: TransactionMetadata, new: frozenset[TopicPartition], now_ms: int
    ) -> TransactionMetadata | TxnResult:
        """`meta` (Ongoing or idle) with `new` added: its open transaction extended, or a new
        one started at `now_ms`; INVALID_REQUEST beyond `max_partitions_per_txn`."""
        ongoing = meta.state is S.ONGOING
        merged = tuple(sorted((frozenset(meta.partitions) if ongoing else frozenset()) | new))
        if len(merged) > self.config.max_partitions_per_txn:
            return _fail(
                ErrorCode.INVALID_REQUEST,
                f"a transaction spans at most {self.config.max_partitions_per_txn} partitions ({len(merged)} asked)",
            )
        return dataclasses.replace(
            meta,
            state=S.ONGOING,
            partitions=merged,
            txn_start_ms=meta.txn_start_ms if ongoing else now_ms,
            last_update_ms=now_ms,
        )

    def add_offsets(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        group_id: str,
        offsets_partition_count: int,
        now_ms: int,
    ) -> TxnResult:
        """AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction."""
        if not group_id or offsets_partition_count < 1:
            return _fail(ErrorCode.INVALID_REQUEST, "a group id and the offsets topic's partition count are needed")
        tp = offsets_partition(group_id, offsets_partition_count)
        return self.add_partitions(transactional_id, producer_id, producer_epoch, (tp,), now_ms)

    def end_txn(
        self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool, now_ms: int
    ) -> TxnResult:
        """EndTxn(commit|abort). The answer carries the identity for the next transaction:
        bumped under V2, the same one under V1 (see the module docstring)."""
        meta = self._txns.get(transactional_id)
        if meta is not None and transactional_id not in self._pending and self._is_end_retry(meta, producer_id, producer_epoch):
            decided_commit = meta.state in (S.PREPARE_COMMIT, S.COMPLETE_COMMIT)
            if decided_commit == commit:
                return TxnResult(producer_id=meta.producer_id, producer_epoch=meta.producer_epoch)
            decided = "committed" if decided_commit else "aborted"
            return _fail(ErrorCode.INVALID_TXN_STATE, f"the transaction was already {decided}; a decision never flips")
        meta, problem = self._current(transactional_id, producer_id, producer_epoch)
        if problem is not None:
            return problem
        meta = not_none(meta, "_current answers metadata or a problem")
        if meta.state in PREPARED:
            return _fail(ErrorCode.CONCURRENT_TRANSACTIONS, f"the previous transaction is completing ({meta.state.name})")
        if meta.state is not S.ONGOING:
            return _fail(ErrorCode.INVALID_TXN_STATE, f"no transaction is open ({meta.state.name})")
        if meta.txn_version is TxnVersion.V1:
            bumped: tuple[int, int] | None = (meta.producer_id, meta.producer_epoch)  # markers carry it as is
        else:
            bumped = self._bump(meta.producer_id, meta.producer_epoch)
        if bumped is None:
            return self._no_producer_id()
        target = S.PREPARE_COMMIT if commit else S.PREPARE_ABORT
        after = self._ended(meta, bumped, target, BumpReason.END_TXN, now_ms)
        kind = TransitionKind.PREPARE_COMMIT if commit else TransitionKind.PREPARE_ABORT
        return self._propose(kind, meta, after, (target,))

    def verify(
        self, transactional_id: str, producer_id: int, producer_epoch: int, partitions: Iterable[TopicPartition]
    ) -> VerifyResult:
        """KIP-890: may (producer_id, producer_epoch) write to these partitions now? Only if
        each is in its open transaction and that transaction is not ending."""
        asked = tuple(dict.fromkeys(partitions))
        meta = self._txns.get(transactional_id)
        if meta is None:
            return VerifyResult(ErrorCode.INVALID_PRODUCER_ID_MAPPING, f"unknown transactional id {transactional_id!r}")
        if (producer_id, producer_epoch) != (meta.producer_id, meta.producer_epoch):
            problem = self._identity_error(meta, producer_id, producer_epoch)
            return VerifyResult(problem.error, problem.message)
        pending = self._pending.get(transactional_id)
        ending = pending is not None and pending.after is not None and pending.after.state is not S.ONGOING
        open_partitions = frozenset(meta.partitions) if meta.state is S.ONGOING and not ending else frozenset()
        codes = tuple(
            (tp, ErrorCode.NONE if tp in open_partitions else ErrorCode.INVALID_TXN_STATE) for tp in asked
        )
        return VerifyResult(ErrorCode.NONE, "", codes)

    # --- coordinator-driven transitions ----------------------------------------------------------

    def observe_monotonic(self, monotonic_ms: int) -> None:
        """Start the monotonic timer of every transaction opened since the last call (the
        shell calls this every tick, so a timer starts at most one tick late: later, never
        earlier). O(transactions opened since)."""
        for tid in self._unclocked:
            meta = self._txns.get(tid)
            if meta is not None and meta.state is S.ONGOING:
                self._monotonic_start[tid] = (meta.txn_start_ms, monotonic_ms)
        self._unclocked.clear()

    def open_ms(self, meta: TransactionMetadata, now_ms: int, monotonic_ms: int) -> int:
        """How long `meta`'s transaction has been open: the smaller of the wall-clock and the
        monotonic measure, so a step of either host's wall clock (the one that stamped
        txn_start_ms, or this one) can delay a timeout but never bring it forward."""
        wall = now_ms - meta.txn_start_ms
        start = self._monotonic_start.get(meta.transactional_id)
        if start is None or start[0] != meta.txn_start_ms:
            return min(wall, 0)  # not observed yet: its monotonic timer has not started
        return min(wall, monotonic_ms - start[1])

    def expired(self, now_ms: int, monotonic_ms: int) -> list[str]:
        """Ongoing transactions open longer than their timeout (oldest first, bounded), on
        both clocks (`open_ms`)."""
        self.observe_monotonic(monotonic_ms)
        found = [
            m for t, m in self._txns.items()
            if m.state is S.ONGOING and t not in self._pending and self.open_ms(m, now_ms, monotonic_ms) > m.timeout_ms
        ]
        found.sort(key=lambda m: (m.txn_start_ms, m.transactional_id))
        return [m.transactional_id for m in found[: self.config.max_transitions_per_scan]]

    def abort_timed_out(self, transactional_id: str, now_ms: int, monotonic_ms: int) -> TxnResult:
        """Fence and abort an expired transaction; its producer later gets TRANSACTION_TIMED_OUT."""
        if transactional_id in self._pending:
            return self._concurrent(transactional_id)
        meta = self._txns.get(transactional_id)
        if meta is None or meta.state is not S.ONGOING or self.open_ms(meta, now_ms, monotonic_ms) <= meta.timeout_ms:
            return _fail(ErrorCode.INVALID_TXN_STATE, f"{transactional_id!r} has no expired transaction")
        return self._abort_open(meta, now_ms, BumpReason.TIMEOUT, TransitionKind.TIMEOUT_ABORT)

    def complete_markers(
        self, transactional_id: str, now_ms: int, then_add: NextAdd | None = None
    ) -> TxnResult:
        """Every marker of the prepared transaction is written: PrepareX -> CompleteX.

        `then_add`: AddPartitions of the next transaction that arrived while the markers were
        being written (the producer already holds the bumped identity). When it names the
        current identity and is a valid add, the same record also starts that transaction:
        PrepareX -> CompleteX -> Ongoing in one durable write (CompleteX is a waypoint, like
        PrepareEpochFence), saving the next transaction a replicated write before its first
        records. Otherwise `then_add` is ignored; the request, retried, gets its own answer."""
        if transactional_id in self._pending:
            return self._concurrent(transactional_id)
        meta = self._txns.get(transactional_id)
        if meta is None or meta.state not in PREPARED:
            return _fail(ErrorCode.INVALID_TXN_STATE, f"{transactional_id!r} is not prepared")
        target = S.COMPLETE_COMMIT if meta.state is S.PREPARE_COMMIT else S.COMPLETE_ABORT
        completed = dataclasses.replace(meta, state=target, partitions=(), last_update_ms=now_ms)
        if then_add is not None and (then_add.producer_id, then_add.producer_epoch) == (
                meta.producer_id, meta.producer_epoch):
            new = frozenset(then_add.partitions)
            started = None if self._malformed(new) else self._with_partitions(completed, new, now_ms)
            if isinstance(started, TransactionMetadata):  # the same rules as add_partitions
                return self._propose(TransitionKind.COMPLETE, meta, started, (target, S.ONGOING))
        return self._propose(TransitionKind.COMPLETE, meta, completed, (target,))

    def marker_plan(self, transactional_id: str) -> tuple[MarkerRequest, ...]:
        """The markers a prepared transaction needs (empty unless Prepare*)."""
        meta = self._txns.get(transactional_id)
        if meta is None or meta.state not in PREPARED:
            return ()
        commit = meta.state is S.PREPARE_COMMIT
        return tuple(
            MarkerRequest(
                transactional_id, tp, commit, meta.marker_producer_id, meta.marker_producer_epoch, self.coordinator_epoch
            )
            for tp in meta.partitions
        )

    def expired_ids(self, now_ms: int) -> list[str]:
        """Idle ids not used for `id_expiration_ms` (least recently used first, bounded)."""
        found = [
            m for t, m in self._txns.items()
            if m.state in IDLE and t not in self._pending and now_ms - m.last_update_ms >= self.config.id_expiration_ms
        ]
        found.sort(key=lambda m: (m.last_update_ms, m.transactional_id))
        return [m.transactional_id for m in found[: self.config.max_transitions_per_scan]]

    def remove_expired(self, transactional_id: str, now_ms: int) -> TxnResult:
        """Forget an idle, expired id: write its tombstone (state Dead)."""
        if transactional_id in self._pending:
            return self._concurrent(transactional_id)
        meta = self._txns.get(transactional_id)
        if meta is None or meta.state not in IDLE or now_ms - meta.last_update_ms < self.config.id_expiration_ms:
            return _fail(ErrorCode.INVALID_TXN_STATE, f"{transactional_id!r} is not an expired idle id")
        return self._propose(TransitionKind.REMOVE, meta, None, (S.DEAD,))

    # --- log write outcomes ------------------------------------------------------------------

    def complete(self, pending: PendingTransition) -> TransactionMetadata | None:
        """The record of `pending` is committed in the state log: apply it."""
        tid = pending.transactional_id
        invariant(self._pending.get(tid) is pending, f"complete of a transition of {tid!r} that is not pending")
        invariant(self._txns.get(tid) is pending.before, f"{tid!r} changed under its pending transition")
        del self._pending[tid]
        if pending.after is None:
            del self._txns[tid]
        else:
            self._txns[tid] = pending.after
        after = pending.after
        if after is not None and after.state is S.ONGOING:
            start = self._monotonic_start.get(tid)
            if start is None or start[0] != after.txn_start_ms:
                self._unclocked.add(tid)
        else:
            self._monotonic_start.pop(tid, None)
            self._unclocked.discard(tid)
        return pending.after

    def abandon(self, pending: PendingTransition) -> None:
        """The record of `pending` was definitely not written: forget the transition."""
        tid = pending.transactional_id
        invariant(self._pending.get(tid) is pending, f"abandon of a transition of {tid!r} that is not pending")
        del self._pending[tid]

    # --- helpers ---------------------------------------------------------------------------------

    def _check_id(self, transactional_id: str) -> TxnResult | None:
        size = len(transactional_id.encode("utf-8"))
        if not 0 < size <= self.config.max_transactional_id_bytes:
            return _fail(
                ErrorCode.INVALID_REQUEST,
                f"transactional id must be 1..{self.config.max_transactional_id_bytes} UTF-8 bytes ({size})",
            )
        return None

    def _init_new(self, transactional_id: str, timeout_ms: int, now_ms: int, txn_version: TxnVersion) -> TxnResult:
        pending_new = sum(1 for p in self._pending.values() if p.before is None)
        if len(self._txns) + pending_new >= self.config.max_transactional_ids:
            return _fail(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"coordinator partition {self.partition} tracks its maximum of "
                f"{self.config.max_transactional_ids} transactional ids",
            )
        producer_id = self._allocate()
        if producer_id is None:
            return self._no_producer_id()
        invariant(producer_id >= 0, f"allocated producer id {producer_id} < 0")
        after = TransactionMetadata(
            transactional_id=transactional_id,
            producer_id=producer_id,
            producer_epoch=0,
            prev_producer_id=NO_PRODUCER_ID,
            last_producer_epoch=NO_PRODUCER_EPOCH,
            timeout_ms=timeout_ms,
            state=S.EMPTY,
            partitions=(),
            txn_start_ms=NO_TIMESTAMP,
            last_update_ms=now_ms,
            bump_reason=BumpReason.NONE,
            txn_version=txn_version,
        )
        return self._propose(TransitionKind.INIT_NEW, None, after, (S.EMPTY,))

    def _abort_open(
        self, meta: TransactionMetadata, now_ms: int, reason: BumpReason, kind: TransitionKind
    ) -> TxnResult:
        """Ongoing -> PrepareEpochFence -> PrepareAbort: nobody holds the bumped identity."""
        bumped = self._bump(meta.producer_id, meta.producer_epoch)
        if bumped is None:
            return self._no_producer_id()
        after = self._ended(meta, bumped, S.PREPARE_ABORT, reason, now_ms)
        return self._propose(kind, meta, after, (S.PREPARE_EPOCH_FENCE, S.PREPARE_ABORT))

    @staticmethod
    def _ended(
        meta: TransactionMetadata, bumped: tuple[int, int], target: TxnState, reason: BumpReason, now_ms: int
    ) -> TransactionMetadata:
        return dataclasses.replace(
            meta,
            producer_id=bumped[0],
            producer_epoch=bumped[1],
            prev_producer_id=meta.producer_id,
            last_producer_epoch=meta.producer_epoch,
            state=target,
            last_update_ms=now_ms,
            bump_reason=reason,
        )

    def _bump(self, producer_id: int, producer_epoch: int) -> tuple[int, int] | None:
        """The next identity: epoch + 1, or a fresh producer id once the epochs run out."""
        if producer_epoch < CLIENT_EPOCH_MAX:
            return producer_id, producer_epoch + 1
        fresh = self._allocate()
        if fresh is None:
            return None
        invariant(fresh >= 0 and fresh != producer_id, f"allocated producer id {fresh} is not fresh")
        return fresh, 0

    def _current(
        self, transactional_id: str, producer_id: int, producer_epoch: int
    ) -> tuple[TransactionMetadata | None, TxnResult | None]:
        """The metadata if the requester holds the current identity and nothing is pending."""
        meta = self._txns.get(transactional_id)
        if meta is None:
            return None, _fail(ErrorCode.INVALID_PRODUCER_ID_MAPPING, f"unknown transactional id {transactional_id!r}")
        if transactional_id in self._pending:
            return None, self._concurrent(transactional_id)
        if (producer_id, producer_epoch) != (meta.producer_id, meta.producer_epoch):
            return None, self._identity_error(meta, producer_id, producer_epoch)
        return meta, None

    @staticmethod
    def _identity_error(meta: TransactionMetadata, producer_id: int, producer_epoch: int) -> TxnResult:
        tid = meta.transactional_id
        if (producer_id, producer_epoch) == (meta.prev_producer_id, meta.last_producer_epoch):
            if meta.bump_reason is BumpReason.TIMEOUT:
                return _fail(
                    ErrorCode.TRANSACTION_TIMED_OUT,
                    f"the transaction of {tid!r} exceeded its timeout of {meta.timeout_ms} ms and was aborted",
                )
            return _fail(ErrorCode.PRODUCER_FENCED, f"epoch {producer_epoch} of {tid!r} was fenced ({meta.bump_reason.name})")
        if producer_id == meta.producer_id and producer_epoch > meta.producer_epoch:
            return _fail(
                ErrorCode.INVALID_PRODUCER_EPOCH,
                f"epoch {producer_epoch} of {tid!r} is newer than the coordinator's {meta.producer_epoch}",
            )
        if producer_id in (meta.producer_id, meta.prev_producer_id):
            return _fail(ErrorCode.PRODUCER_FENCED, f"producer {producer_id} epoch {producer_epoch} of {tid!r} is fenced")
        return _fail(
            ErrorCode.INVALID_PRODUCER_ID_MAPPING, f"producer id {producer_id} does not belong to {tid!r}"
        )

    @staticmethod
    def _is_end_retry(meta: TransactionMetadata, producer_id: int, producer_epoch: int) -> bool:
        """An EndTxn resent with the identity its first attempt already bumped away (under V1:
        with the identity it kept, while no next transaction has started)."""
        return (
            meta.bump_reason is BumpReason.END_TXN
            and (meta.state in PREPARED or meta.state in COMPLETED)
            and (producer_id, producer_epoch) == (meta.prev_producer_id, meta.last_producer_epoch)
        )

    @staticmethod
    def _is_init_retry(meta: TransactionMetadata, producer_id: int, producer_epoch: int) -> bool:
        """A KIP-360 InitProducerId resent after its first attempt already bumped the epoch."""
        return (
            meta.bump_reason is BumpReason.INIT
            and meta.state is S.EMPTY
            and (producer_id, producer_epoch) == (meta.prev_producer_id, meta.last_producer_epoch)
        )

    @staticmethod
    def _is_reinit_retry(meta: TransactionMetadata, producer_id: int, producer_epoch: int) -> bool:
        """The producer whose own InitProducerId aborted its open transaction, retrying."""
        return meta.bump_reason is BumpReason.REINIT and (producer_id, producer_epoch) == (
            meta.prev_producer_id,
            meta.last_producer_epoch,
        )

    def _concurrent(self, transactional_id: str) -> TxnResult:
        kind = self._pending[transactional_id].kind.value
        return _fail(ErrorCode.CONCURRENT_TRANSACTIONS, f"{transactional_id!r} has a pending {kind} transition")

    @staticmethod
    def _no_producer_id() -> TxnResult:
        return _fail(ErrorCode.COORDINATOR_NOT_AVAILABLE, "no producer id available yet (block being allocated)")

    def _propose(
        self,
        kind: TransitionKind,
        before: TransactionMetadata | None,
        after: TransactionMetadata | None,
        path: tuple[TxnState, ...],
    ) -> TxnResult:
        tid = not_none(after or before, "a transition has a before or an after").transactional_id
        invariant(tid not in self._pending, f"{tid!r} already has a pending transition")
        invariant(self._txns.get(tid) is before, f"{tid!r}: proposal not based on the committed state")
        invariant(
            path_allowed(before.state if before else None, path),
            f"{tid!r}: {before.state if before else None} -> {path} is not in the table",
        )
        if after is not None:
            invariant(after.state is path[-1], f"{tid!r}: path ends in {path[-1]}, metadata says {after.state}")
            check_metadata(after)
            if before is not None and after.producer_id == before.producer_id:
                invariant(after.producer_epoch >= before.producer_epoch, f"{tid!r}: producer epoch went back")
        else:
            invariant(path[-1] is S.DEAD, f"{tid!r}: only Dead writes a tombstone")
        pending = PendingTransition(tid, kind, before, after, path, next(self._tokens))
        self._pending[tid] = pending
        return TxnResult(pending=pending)
