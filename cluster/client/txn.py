"""The producer's side of the transaction protocol (txn.proto): identities and transactions.

`TxnRpc` makes the calls: InitProducerId (idempotent: any broker; transactional: the
coordinator), FindCoordinator, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and the group's
TxnOffsetCommit. Each call retries the retriable answers (CONCURRENT_TRANSACTIONS,
NOT_COORDINATOR -> find the coordinator again, COORDINATOR_LOAD_IN_PROGRESS, transport
errors) with backoff until its deadline and raises the answer's error class otherwise.

`TxnState` is the client-side state machine of one transactional producer (Kafka's
TransactionManager states):

    UNINITIALIZED -init_transactions-> READY -begin-> IN_TRANSACTION -commit/abort-> READY
    IN_TRANSACTION -abortable error-> ABORTABLE_ERROR -abort-> READY
    any -fatal error (fenced, timed out, invalid state)-> FATAL_ERROR (close the producer)

KIP-890: every EndTxn answers the identity (same id, bumped epoch) of the next
transaction; sequences restart at 0 with it.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc
from semel import limits
from semel.backoff import backoff_ms
from semel.client import errors as client_errors
from semel.client.errors import (
    AbortableError,
    ClientError,
    FatalError,
    SemelError,
    error_class,
    error_for_code,
    typed_error_class,
)
from semel.client.idempotence import ProducerIdentity
from semel.client.metadata import Connections, MetadataManager, rpc_error
from semel.clock import monotonic_ms
from semel.v1 import common_pb2, group_pb2, group_pb2_grpc, txn_pb2, txn_pb2_grpc

# Named classes of the transaction errors (one per wire code; categories as in common.proto).
ProducerFencedError = typed_error_class(common_pb2.PRODUCER_FENCED, FatalError)
InvalidProducerEpochError = typed_error_class(common_pb2.INVALID_PRODUCER_EPOCH, FatalError)
TransactionTimedOutError = typed_error_class(common_pb2.TRANSACTION_TIMED_OUT, FatalError)
InvalidTxnStateError = typed_error_class(common_pb2.INVALID_TXN_STATE, FatalError)
TransactionAbortableError = typed_error_class(common_pb2.TRANSACTION_ABORTABLE, AbortableError)
OutOfOrderSequenceError = typed_error_class(common_pb2.OUT_OF_ORDER_SEQUENCE, AbortableError)
UnknownProducerIdError = typed_error_class(common_pb2.UNKNOWN_PRODUCER_ID, AbortableError)
ConcurrentTransactionsError = error_class(common_pb2.CONCURRENT_TRANSACTIONS)
NotCoordinatorError = error_class(common_pb2.NOT_COORDINATOR)
CoordinatorLoadInProgressError = error_class(common_pb2.COORDINATOR_LOAD_IN_PROGRESS)

# Producer-level fatal codes: the producer cannot go on (a newer instance owns the id, or the
# coordinator aborted the transaction and fenced it).
FENCING_CODES = frozenset({
    common_pb2.PRODUCER_FENCED, common_pb2.INVALID_PRODUCER_EPOCH, common_pb2.TRANSACTION_TIMED_OUT,
    common_pb2.INVALID_PRODUCER_ID_MAPPING, common_pb2.TRANSACTIONAL_ID_NOT_FOUND,
})

_DETAIL = {
    common_pb2.TRANSACTION_TIMED_OUT: (
        "the transaction timed out: it stayed open longer than transaction_timeout_ms, so the "
        "coordinator aborted it and fenced this producer (not another instance)"),
    common_pb2.PRODUCER_FENCED: "another producer with the same transactional id was initialized",
    common_pb2.INVALID_PRODUCER_EPOCH: "a newer epoch of this producer exists (fenced)",
}

_T = TypeVar("_T")

# First backoff after CONCURRENT_TRANSACTIONS (doubling up to retry_backoff_ms): the previous
# transaction's markers usually land within milliseconds of its EndTxn answer.
CONCURRENT_TXN_BACKOFF_MS = 5


class TransactionStateError(ClientError):
    """A transactional call in the wrong state (begin twice, commit without begin, send outside
    a transaction, any call after a fatal error): a programming error, nothing was sent."""


# Transport-level refusals (gRPC PERMISSION_DENIED / UNAUTHENTICATED): the same from every
# broker until an operator changes an ACL or a credential, so never retried.
REFUSED_FOR_GOOD = (client_errors.AuthorizationError, client_errors.AuthenticationError)


class UnsupportedByClusterError(ClientError):
    """The cluster does not answer InitProducerId (no transactions/idempotence service)."""


class State(enum.Enum):
    UNINITIALIZED = "uninitialized"
    INITIALIZING = "initializing"
    READY = "ready"
    IN_TRANSACTION = "in_transaction"
    COMMITTING = "committing"
    ABORTING = "aborting"
    ABORTABLE_ERROR = "abortable_error"
    FATAL_ERROR = "fatal_error"


def describe(error: SemelError) -> SemelError:
    """The error with a clearer message for the fencing codes ("timed out", not just fenced)."""
    detail = _DETAIL.get(error.code)
    if detail and detail not in error.message:
        fresh = type(error)(f"{error.message}: {detail}" if error.message else detail,
                            outcome_unknown=error.outcome_unknown)
        fresh.__cause__ = error.__cause__
        return fresh
    return error


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMetadata:
    """The consumer's group membership for TxnOffsetCommit (KIP-447). member_id "" and
    member_epoch -1: a standalone (assign-based) consumer, accepted while the group has no members."""

    group_id: str
    member_id: str = ""
    member_epoch: int = -1


def group_metadata_of(value: Any) -> GroupMetadata:
    """Accepts a group id, a GroupMetadata, or any object with group_id (+ member_id,
    member_epoch / generation_id), e.g. the consumer's `group_metadata()`."""
    if isinstance(value, GroupMetadata):
        return value
    if isinstance(value, str):
        return GroupMetadata(value)
    group_id = getattr(value, "group_id", None)
    if not isinstance(group_id, str) or not group_id:
        raise client_errors.ConfigError(f"group_metadata must name a group id, got {value!r}")
    epoch = getattr(value, "member_epoch", getattr(value, "generation_id", -1))
    return GroupMetadata(group_id, getattr(value, "member_id", "") or "", int(epoch if epoch is not None else -1))


class TxnRpc:
    """Transaction-protocol calls with coordinator discovery and retries (thread-safe)."""

    def __init__(self, connections: Connections, metadata: MetadataManager, request_timeout_ms: int,
                 retry_backoff_ms: int, retry_backoff_max_ms: int) -> None:
        self.connections = connections
        self.metadata = metadata
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self._coordinators: dict[tuple[str, int], str] = {}   # (key, key type) -> address
        self._lock = threading.Lock()

    # --- generic retry loop ------------------------------------------------------------
    def _call(self, what: str, deadline_ms: int, attempt: Callable[[str, int], tuple[common_pb2.ErrorCode, str, _T]],
              addresses: Callable[[], list[str]], on_not_coordinator: Callable[[], None] | None = None,
              retry_unknown: bool = True) -> _T:
        """Runs `attempt(address) -> (error_code, message, result)` until success, a
        non-retriable answer, or the deadline (then the last error, as outcome unknown if
        any attempt's outcome was unknown)."""
        failures = 0
        concurrent = 0
        unknown = False
        last: SemelError | None = None
        while True:
            for address in addresses():
                per_try_ms = max(1, min(self.request_timeout_ms, deadline_ms - monotonic_ms()))
                try:
                    code, message, result = attempt(address, per_try_ms)
                except grpc.RpcError as exc:
                    last = rpc_error(exc, address, what)
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        raise UnsupportedByClusterError(
                            f"{what}: {address} does not implement the Transactions service") from exc
                    if isinstance(last, REFUSED_FOR_GOOD):
                        # every broker checks the same ACLs and credentials: asking again (or
                        # another broker) until the deadline only delays the answer
                        raise last from exc
                    unknown = unknown or exc.code() != grpc.StatusCode.UNAVAILABLE
                    if on_not_coordinator is not None:
                        on_not_coordinator()
                    continue
                if code == common_pb2.NONE:
                    return result
                last = error_for_code(code, message, context=what)
                if code in (common_pb2.NOT_COORDINATOR, common_pb2.COORDINATOR_NOT_AVAILABLE) and on_not_coordinator:
                    on_not_coordinator()
                if not last.retriable:
                    raise describe(last)
                if code == common_pb2.REQUEST_TIMED_OUT:
                    unknown = True
                break
            if last is not None and last.code == common_pb2.CONCURRENT_TRANSACTIONS:
                # the previous transaction's markers are being written: typically done in a few
                # ms, so a short backoff (Kafka: 20 ms) instead of retry_backoff_ms
                concurrent += 1
                backoff = backoff_ms(concurrent, CONCURRENT_TXN_BACKOFF_MS, self.retry_backoff_ms)
            else:
                failures += 1
                backoff = backoff_ms(failures, self.retry_backoff_ms, self.retry_backoff_max_ms)
            if monotonic_ms() + backoff >= deadline_ms or not retry_unknown and unknown:
                error = last or client_errors.BrokerUnreachableError(f"{what}: no broker to ask")
                if unknown:
                    error.outcome_unknown = True
                raise error
            time.sleep(backoff / 1000)

    def _any_broker(self) -> list[str]:
        return self.metadata.candidates()[:3]

    # --- coordinator discovery --------------------------------------------------------------
    def coordinator(self, key: str, key_type: txn_pb2.CoordinatorKeyType, deadline_ms: int) -> str:
        with self._lock:
            address = self._coordinators.get((key, key_type))
        if address is not None:
            return address

        def attempt(addr: str, timeout_ms: int) -> tuple[common_pb2.ErrorCode, str, str]:
            r = self.connections.stub(addr, txn_pb2_grpc.TransactionsStub).FindCoordinator(
                txn_pb2.FindCoordinatorRequest(key=key, key_type=key_type), timeout=timeout_ms / 1000)
            return r.error_code, r.error_message, f"{r.host}:{r.port}"

        address = self._call(f"find coordinator of {key!r}", deadline_ms, attempt, self._any_broker)
        with self._lock:
            self._coordinators[(key, key_type)] = address
        return address

    def forget_coordinator(self, key: str, key_type: txn_pb2.CoordinatorKeyType) -> None:
        with self._lock:
            self._coordinators.pop((key, key_type), None)

    def _at_coordinator(self, key: str, key_type: txn_pb2.CoordinatorKeyType, what: str, deadline_ms: int,
                        attempt: Callable[[str, int], tuple[common_pb2.ErrorCode, str, _T]]) -> _T:
        def addresses() -> list[str]:
            return [self.coordinator(key, key_type, deadline_ms)]

        return self._call(what, deadline_ms, attempt, addresses,
                          on_not_coordinator=lambda: self.forget_coordinator(key, key_type))

    # --- the calls ----------------------------------------------------------------------------
    def init_producer_id(self, transactional_id: str, transaction_timeout_ms: int, deadline_ms: int,
                         current: ProducerIdentity | None = None) -> ProducerIdentity:
        request = txn_pb2.InitProducerIdRequest(
            transactional_id=transactional_id, transaction_timeout_ms=transaction_timeout_ms,
            producer_id=current.producer_id if current else -1,
            producer_epoch=current.producer_epoch if current else -1)

        def attempt(addr: str, timeout_ms: int) -> tuple[common_pb2.ErrorCode, str, ProducerIdentity]:
            r = self.connections.stub(addr, txn_pb2_grpc.TransactionsStub).InitProducerId(
                request, timeout=timeout_ms / 1000)
            return r.error_code, r.error_message, ProducerIdentity(r.producer_id, r.producer_epoch)

        if not transactional_id:
            return self._call("init producer id", deadline_ms, attempt, self._any_broker)
        return self._at_coordinator(transactional_id, txn_pb2.TRANSACTION,
                                    f"init transactions of {transactional_id!r}", deadline_ms, attempt)

    def add_partitions(self, transactional_id: str, identity: ProducerIdentity,
                       partitions: Iterable[tuple[str, int]], deadline_ms: int,
                       final_codes: frozenset[int] = frozenset()) -> None:
        """`final_codes`: answers raised at once instead of retried (e.g. an unknown partition
        when the request carries predicted partitions, which can be left out instead)."""
        wanted = sorted(set(partitions))
        request = txn_pb2.AddPartitionsToTxnRequest(
            transactional_id=transactional_id, producer_id=identity.producer_id,
            producer_epoch=identity.producer_epoch,
            partitions=[txn_pb2.TopicPartition(topic=t, partition=p) for t, p in wanted])

        def attempt(addr: str, timeout_ms: int) -> tuple[common_pb2.ErrorCode, str, None]:
            r = self.connections.stub(addr, txn_pb2_grpc.TransactionsStub).AddPartitionsToTxn(
                request, timeout=timeout_ms / 1000)
            code, message = r.error_code, r.error_message
            bad = [x for x in r.results if x.error_code != common_pb2.NONE]
            if code == common_pb2.NONE and bad:
                names = ", ".join(f"{x.topic}-{x.partition}: {common_pb2.ErrorCode.Name(x.error_code)}" for x in bad)
                code, message = bad[0].error_code, f"partitions refused ({names})"
            if code in final_codes:
                raise error_for_code(code, message, context=f"add partitions to the transaction of {transactional_id!r}")
            return code, message, None

        self._at_coordinator(transactional_id, txn_pb2.TRANSACTION,
                             f"add partitions to the transaction of {transactional_id!r}", deadline_ms, attempt)

    def add_offsets(self, transactional_id: str, identity: ProducerIdentity, group_id: str, deadline_ms: int) -> None:
        request = txn_pb2.AddOffsetsToTxnRequest(
            transactional_id=transactional_id, producer_id=identity.producer_id,
            producer_epoch=identity.producer_epoch, group_id=group_id)

        def attempt(addr: str, timeout_ms: int) -> tuple[common_pb2.ErrorCode, str, None]:
            r = self.connections.stub(addr, txn_pb2_grpc.TransactionsStub).AddOffsetsToTxn(
                request, timeout=timeout_ms / 1000)
            return r.error_code, r.error_message, None

        self._at_coordinator(transactional_id, txn_pb2.TRANSACTION,
                             f"add offsets of group {group_id!r} to the transaction", deadline_ms, attempt)

    def txn_offset_commit(self, transactional_id: str, identity: ProducerIdentity, group: GroupMetadata,
                          offsets: Mapping[tuple[str, int], int], deadline_ms: int) -> None:
        topics: dict[str, list[group_pb2.OffsetCommitPartition]] = {}
        for (topic, partition), offset in sorted(offsets.items()):
            committed, leader_epoch, meta = _offset_fields(offset)
            topics.setdefault(topic, []).append(group_pb2.OffsetCommitPartition(
                partition=partition, committed_offset=committed, committed_leader_epoch=leader_epoch, metadata=meta))
        request = group_pb2.TxnOffsetCommitRequest(
            transactional_id=transactional_id, producer_id=identity.producer_id,
            producer_epoch=identity.producer_epoch, group_id=group.group_id, member_id=group.member_id,
            member_epoch=group.member_epoch,
            topics=[group_pb2.OffsetCommitTopic(topic=t, partitions=ps) for t, ps in topics.items()])

        def attempt(addr: str, timeout_ms: int) -> tuple[common_pb2.ErrorCode, str, None]:
            r = self.connections.stub(addr, group_pb2_grpc.GroupsStub).TxnOffsetCommit(request, timeout=timeout_ms / 1000)
            if r.error_code != common_pb2.NONE:
                return r.error_code, r.error_message, None
            for t in r.topics:
                for p in t.partitions:
                    if p.error_code != common_pb2.NONE:
                        return p.error_code, f"{t.topic}-{p.partition}: {p.error_message}", None
            return common_pb2.NONE, "", None

        self._at_coordinator(group.group_id, txn_pb2.GROUP, f"commit offsets of group {group.group_id!r} "
                             "in the transaction", deadline_ms, attempt)

    def end_txn(self, transactional_id: str, identity: ProducerIdentity, commit: bool,
                deadline_ms: int) -> ProducerIdentity:
        request = txn_pb2.EndTxnRequest(transactional_id=transactional_id, producer_id=identity.producer_id,
                                        producer_epoch=identity.producer_epoch, commit=commit)

        def attempt(addr: str, timeout_ms: int) -> tuple[common_pb2.ErrorCode, str, ProducerIdentity]:
            r = self.connections.stub(addr, txn_pb2_grpc.TransactionsStub).EndTxn(request, timeout=timeout_ms / 1000)
            return r.error_code, r.error_message, ProducerIdentity(r.producer_id, r.producer_epoch)

        # A retried EndTxn (same identity, same decision) is answered idempotently, so an
        # unknown outcome is simply retried until the deadline.
        return self._at_coordinator(transactional_id, txn_pb2.TRANSACTION,
                                    f"{'commit' if commit else 'abort'} the transaction of {transactional_id!r}",
                                    deadline_ms, attempt)


def _offset_fields(value: Any) -> tuple[int, int, str]:
    """An offset as int, (offset, leader_epoch[, metadata]), or an object with .offset."""
    if isinstance(value, int):
        return value, -1, ""
    if isinstance(value, tuple):
        return int(value[0]), int(value[1]) if len(value) > 1 else -1, str(value[2]) if len(value) > 2 else ""
    offset = getattr(value, "offset", None)
    if offset is None:
        raise client_errors.ConfigError(f"an offset must be an int or have .offset, got {value!r}")
    epoch = getattr(value, "leader_epoch", -1)
    return int(offset), int(epoch if epoch is not None else -1), str(getattr(value, "metadata", "") or "")


class TransactionManager:
    """One transactional producer's state machine (see the module docstring).

    The producer calls `check_send(tp)` from `send()`, `pending_partitions()` /
    `partitions_added()` / `added(tp)` from its sender thread, and `on_batch_failed(error)`
    when a batch of the transaction fails for good. The user-facing calls (`init`, `begin`,
    `commit`, `abort`, `send_offsets`) block the calling thread on the coordinator RPCs.
    """

    def __init__(self, transactional_id: str, transaction_timeout_ms: int, rpc: TxnRpc,
                 predict_partitions: bool = True) -> None:
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self.rpc = rpc
        self.predict_partitions = predict_partitions
        self.state = State.UNINITIALIZED
        self.identity: ProducerIdentity | None = None
        self._lock = threading.Lock()
        self._added: set[tuple[str, int]] = set()     # AddPartitionsToTxn answered NONE
        self._pending: set[tuple[str, int]] = set()   # written to in this transaction, not added yet
        self._written: set[tuple[str, int]] = set()   # written to in this transaction
        # Written in each of the previous two transactions, not added in this one yet: the
        # first add of a transaction carries them too (see `pending_partitions`).
        self._predicted: set[tuple[str, int]] = set()
        self._written_last: frozenset[tuple[str, int]] = frozenset()   # by the previous transaction
        self._written_stable: frozenset[tuple[str, int]] = frozenset()  # by the previous two
        self._has_offsets = False
        self.error: SemelError | None = None          # the abortable or fatal error

    # --- checks -----------------------------------------------------------------------
    def _raise_if_fatal(self) -> None:
        if self.state is State.FATAL_ERROR:
            assert self.error is not None
            raise self.error

    def check_send(self, tp: tuple[str, int]) -> None:
        with self._lock:
            self._raise_if_fatal()
            if self.state is State.ABORTABLE_ERROR:
                raise TransactionAbortableError(
                    f"the transaction cannot commit ({self.error}); call abort_transaction()")
            if self.state is not State.IN_TRANSACTION:
                raise TransactionStateError(
                    f"send() on a transactional producer needs begin_transaction() first (state {self.state.value})")
            self._written.add(tp)
            if tp not in self._added:
                self._pending.add(tp)

    def added(self, tp: tuple[str, int]) -> bool:
        return tp in self._added

    def is_current(self, identity: ProducerIdentity) -> bool:
        """`identity` is the one of the open transaction (not of one that ended since)."""
        with self._lock:
            return identity == self.identity and self.state in (State.IN_TRANSACTION, State.COMMITTING)

    def pending_partitions(self) -> tuple[ProducerIdentity | None, frozenset[tuple[str, int]]]:
        """The partitions to add now: those written to and not added yet, plus, once there is
        one, the partitions that each of the previous two transactions wrote to and this one
        has not added yet. A steady producer (consume-transform-produce, or keyless records
        spread over a topic by the sticky partitioner) writes the same partitions in every
        transaction, but one after the other as its batches fill: without the prediction each
        partition's first write waits for an add of its own, each a replicated coordinator
        write (measured with `semel bench produce --transactional`: 4.0 state records per
        transaction, 2.3-2.5 with it). A partition added but not written gets a marker that
        closes nothing; asking for two transactions in a row keeps a producer whose
        partitions change from transaction to transaction from paying many of those."""
        with self._lock:
            if self.state not in (State.IN_TRANSACTION, State.COMMITTING):
                return None, frozenset()
            if not self._pending:
                return self.identity, frozenset()
            return self.identity, frozenset(self._pending | self._predicted)

    def drop_predictions(self) -> bool:
        """An add failed: if it may have carried predicted partitions, forget them (add only
        what is written) and answer True (retry at once); else False."""
        with self._lock:
            had = bool(self._predicted)
            self._predicted.clear()
            return had

    def partitions_added(self, partitions: Iterable[tuple[str, int]], identity: ProducerIdentity) -> None:
        with self._lock:
            if identity != self.identity or self.state not in (State.IN_TRANSACTION, State.COMMITTING):
                return  # an answer for a transaction that already ended (aborted meanwhile)
            for tp in partitions:
                self._pending.discard(tp)
                self._predicted.discard(tp)
                self._added.add(tp)

    def on_error(self, error: SemelError) -> None:
        """A batch or a coordinator call of the transaction failed for good."""
        with self._lock:
            self._on_error_locked(error)

    def _on_error_locked(self, error: SemelError) -> None:
        if self.state is State.FATAL_ERROR:
            return
        if error.code in FENCING_CODES or error.code == common_pb2.INVALID_TXN_STATE and not isinstance(
                error, TransactionStateError):
            self.state, self.error = State.FATAL_ERROR, describe(error)
        elif self.state in (State.IN_TRANSACTION, State.COMMITTING):
            self.state, self.error = State.ABORTABLE_ERROR, error

    def fatal(self) -> SemelError | None:
        return self.error if self.state is State.FATAL_ERROR else None

    # --- user calls -------------------------------------------------------------------
    def init(self, deadline_ms: int) -> ProducerIdentity:
        with self._lock:
            self._raise_if_fatal()
            if self.state not in (State.UNINITIALIZED, State.INITIALIZING):
                raise TransactionStateError(f"init_transactions() called twice (state {self.state.value})")
            self.state = State.INITIALIZING
        try:
            identity = self.rpc.init_producer_id(self.transactional_id, self.transaction_timeout_ms, deadline_ms)
        except SemelError as exc:
            with self._lock:
                if isinstance(exc, FatalError) or not exc.retriable:
                    # refused for good (an ACL, the credentials, an invalid timeout): every
                    # later call raises this error (Kafka: fatal for the producer)
                    self.state, self.error = State.FATAL_ERROR, describe(exc)
            raise
        with self._lock:
            self.identity = identity
            self.state = State.READY
        return identity

    def begin(self) -> None:
        with self._lock:
            self._raise_if_fatal()
            if self.state is not State.READY:
                raise TransactionStateError(
                    "begin_transaction() needs init_transactions() and no open transaction "
                    f"(state {self.state.value})")
            self.state = State.IN_TRANSACTION
            self._added.clear()
            self._pending.clear()
            self._written.clear()
            predictable = self.predict_partitions and len(self._written_stable) <= limits.MAX_TXN_PREDICTED_PARTITIONS
            self._predicted = set(self._written_stable) if predictable else set()
            self._has_offsets = False
            self.error = None

    def send_offsets(self, offsets: Mapping[tuple[str, int], Any], group: GroupMetadata, deadline_ms: int) -> None:
        with self._lock:
            self._raise_if_fatal()
            if self.state is not State.IN_TRANSACTION:
                raise TransactionStateError(
                    f"send_offsets_to_transaction() outside a transaction (state {self.state.value})")
            identity = self.identity
        assert identity is not None
        try:
            self.rpc.add_offsets(self.transactional_id, identity, group.group_id, deadline_ms)
            with self._lock:
                self._has_offsets = True
            self.rpc.txn_offset_commit(self.transactional_id, identity, group, offsets, deadline_ms)
        except SemelError as exc:
            self.on_error(exc)
            raise self.error if self.state is State.FATAL_ERROR and self.error else exc

    def begin_end(self, commit: bool) -> bool:
        """Checks and enters COMMITTING/ABORTING; False when there is nothing to end remotely."""
        with self._lock:
            self._raise_if_fatal()
            if commit:
                if self.state is State.ABORTABLE_ERROR:
                    raise TransactionAbortableError(
                        f"the transaction cannot commit ({self.error}); call abort_transaction()")
                if self.state not in (State.IN_TRANSACTION, State.COMMITTING):
                    raise TransactionStateError(f"commit_transaction() without an open transaction "
                                                f"(state {self.state.value})")
                self.state = State.COMMITTING
            else:
                if self.state not in (State.IN_TRANSACTION, State.ABORTABLE_ERROR, State.ABORTING):
                    raise TransactionStateError(f"abort_transaction() without an open transaction "
                                                f"(state {self.state.value})")
                self.state = State.ABORTING
            return True

    def after_flush_commit(self) -> None:
        """Every batch of the transaction is done: any failure makes the commit impossible."""
        with self._lock:
            self._raise_if_fatal()
            if self.state is State.ABORTABLE_ERROR:
                raise TransactionAbortableError(
                    f"a record of the transaction failed ({self.error}); call abort_transaction()")

    def end(self, commit: bool, deadline_ms: int) -> ProducerIdentity | None:
        """EndTxn (unless the transaction wrote nothing); returns the next identity (KIP-890)."""
        with self._lock:
            identity = self.identity
            nothing = not self._added and not self._has_offsets
        assert identity is not None
        if nothing:
            with self._lock:
                self.state = State.READY
            return None
        try:
            new_identity = self.rpc.end_txn(self.transactional_id, identity, commit, deadline_ms)
        except SemelError as exc:
            with self._lock:
                if isinstance(exc, FatalError) or exc.code in FENCING_CODES:
                    self.state, self.error = State.FATAL_ERROR, describe(exc)
                    raise self.error from exc
            raise   # retriable until the deadline / outcome unknown: the caller may call again
        with self._lock:
            self.identity = new_identity
            self.state = State.READY
            self._written_stable = self._written_last & self._written
            self._written_last = frozenset(self._written)
            self._added.clear()
            self._pending.clear()
            self._has_offsets = False
            self.error = None
        return new_identity
