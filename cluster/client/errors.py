"""The client's exception hierarchy: one class per wire `ErrorCode`, plus client-side errors.

Every error a client sees is a `SemelError`. Errors that came from a broker carry the
`ErrorCode` (`.code`, `.code_name`) and fall in exactly one category, the same one the
comment in `proto/semel/v1/common.proto` gives:

    SemelError
      RetriableError    the same request may succeed later (leader moved, ISR short, ...)
      AbortableError    an idempotent/transactional producer must reset its sequence state
      FatalError        fix the request (bad name, too large) or the producer is dead
      ClientError       raised by the client itself (closed, buffer full, bad config)

`error_for_code(code, message)` builds the right subclass; every `ErrorCode` value has a
class named after it (`NOT_LEADER_OR_FOLLOWER` -> `NotLeaderOrFollowerError`).
`outcome_unknown` is True when a write may or may not have happened (a request timed out
or a connection broke after the request was sent): such failures are never reported as
"not written".
"""

from __future__ import annotations

from typing import Final, TypeVar, cast

from semel.v1 import common_pb2

ErrorCode = common_pb2.ErrorCode


class SemelError(Exception):
    """Base of every error raised by the Semel client."""

    code: common_pb2.ErrorCode = common_pb2.UNKNOWN_SERVER_ERROR
    retriable: bool = False
    outcome_unknown: bool = False

    def __init__(self, message: str = "", *, outcome_unknown: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if outcome_unknown is not None:
            self.outcome_unknown = outcome_unknown

    @property
    def code_name(self) -> str:
        return ErrorCode.Name(self.code)

    def __str__(self) -> str:
        text = self.message or _DESCRIPTIONS.get(self.code, "")
        suffix = " (outcome unknown: the write may or may not have happened)" if self.outcome_unknown else ""
        if isinstance(self, ClientError):
            return (self.message or type(self).__name__) + suffix
        prefix = self.code_name if self.code else type(self).__name__
        return f"{prefix}: {text}{suffix}" if text else f"{prefix}{suffix}"


class RetriableError(SemelError):
    """The broker may accept the same request later; the client retries these itself."""

    retriable = True


class AbortableError(SemelError):
    """The producer must reset its sequence state (or abort its transaction) and go on."""


class FatalError(SemelError):
    """Retrying the same request cannot succeed."""


class ClientError(SemelError):
    """Raised by the client without asking a broker."""

    code = common_pb2.NONE


class ConfigError(ClientError):
    """An invalid client option (bad bootstrap address, negative size, ...)."""


class ClosedError(ClientError):
    """The producer/consumer/admin was closed."""


class BufferFullError(ClientError):
    """`buffer_bytes` of records are waiting to be sent and `max_block_ms` passed."""


class DeliveryTimeoutError(ClientError):
    """A record was not acknowledged within `delivery_timeout_ms` (retries included)."""

    retriable = True


class OutcomeUnknownError(ClientError):
    """The client cannot tell whether the records were written (a request timed out or a
    connection broke after sending, and no later attempt settled it). Never "not written"."""

    outcome_unknown = True


class DeliveryOutcomeUnknownError(OutcomeUnknownError, DeliveryTimeoutError):
    """`delivery_timeout_ms` passed and some attempt's outcome is unknown: the records may be
    in the log (once, thanks to idempotence) or not at all."""

    outcome_unknown = True


class TransactionAbortedError(ClientError):
    """The record's transaction was aborted before the record was sent."""


class CorruptRecordError(ClientError):
    """A fetched batch does not decode to its records (a poison pill in the log). Raised by
    `poll()` once the records before it were returned; the position stays at the batch, so
    every poll raises again until the application seeks past it (`next_offset`)."""

    def __init__(self, topic: str, partition: int, offset: int, next_offset: int, detail: str) -> None:
        super().__init__(f"corrupt record batch in {topic}-{partition} at offset {offset}: {detail}; "
                         f"seek to offset {next_offset} to skip it")
        self.topic, self.partition, self.offset, self.next_offset = topic, partition, offset, next_offset


class BrokerUnreachableError(ClientError):
    """No broker answered (connection refused, DNS failure, transport error)."""

    retriable = True
    code = common_pb2.BROKER_NOT_AVAILABLE


class AuthenticationError(ClientError):
    """The broker did not accept who we say we are (gRPC UNAUTHENTICATED): no credentials where
    they are required, a wrong password, or a password on a plaintext connection."""


class AuthorizationError(ClientError):
    """The broker knows who we are and refuses the call to that principal (gRPC PERMISSION_DENIED)."""


_RETRIABLE_CODES: Final = frozenset(
    {
        common_pb2.CORRUPT_MESSAGE,
        common_pb2.UNKNOWN_TOPIC_OR_PARTITION,
        common_pb2.NOT_LEADER_OR_FOLLOWER,
        common_pb2.REQUEST_TIMED_OUT,
        common_pb2.NOT_ENOUGH_REPLICAS,
        common_pb2.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        common_pb2.CONCURRENT_TRANSACTIONS,
        common_pb2.NOT_COORDINATOR,
        common_pb2.COORDINATOR_NOT_AVAILABLE,
        common_pb2.COORDINATOR_LOAD_IN_PROGRESS,
        common_pb2.LEADER_NOT_AVAILABLE,
        common_pb2.FENCED_LEADER_EPOCH,
        common_pb2.UNKNOWN_LEADER_EPOCH,
        common_pb2.STORAGE_ERROR,
        common_pb2.METADATA_QUORUM_UNAVAILABLE,
        common_pb2.BROKER_NOT_AVAILABLE,
        common_pb2.REBALANCE_IN_PROGRESS,
        common_pb2.UNSTABLE_OFFSET_COMMIT,
        common_pb2.RESOURCE_EXHAUSTED,
        common_pb2.STALE_BROKER_EPOCH,
        common_pb2.STALE_PARTITION_EPOCH,
        common_pb2.REPLICA_NOT_AVAILABLE,
        common_pb2.TOO_MANY_PRODUCERS,
        common_pb2.STALE_MEMBER_EPOCH,
    }
)

_ABORTABLE_CODES: Final = frozenset(
    {common_pb2.OUT_OF_ORDER_SEQUENCE, common_pb2.UNKNOWN_PRODUCER_ID, common_pb2.TRANSACTION_ABORTABLE}
)

# Codes after which the client's view of "who leads what" is probably stale.
METADATA_REFRESH_CODES: Final = frozenset(
    {
        common_pb2.NOT_LEADER_OR_FOLLOWER,
        common_pb2.UNKNOWN_TOPIC_OR_PARTITION,
        common_pb2.LEADER_NOT_AVAILABLE,
        common_pb2.FENCED_LEADER_EPOCH,
        common_pb2.UNKNOWN_LEADER_EPOCH,
        common_pb2.BROKER_NOT_AVAILABLE,
        common_pb2.REPLICA_NOT_AVAILABLE,
        common_pb2.STORAGE_ERROR,
    }
)

# Codes whose outcome is unknown: the broker may have written the batch.
_OUTCOME_UNKNOWN_CODES: Final = frozenset({common_pb2.REQUEST_TIMED_OUT})

_DESCRIPTIONS: Final[dict[common_pb2.ErrorCode, str]] = {
    common_pb2.UNKNOWN_SERVER_ERROR: "unexpected broker fault; see the broker log",
    common_pb2.UNKNOWN_TOPIC_OR_PARTITION: "the topic or partition does not exist",
    common_pb2.INVALID_REQUEST: "malformed request",
    common_pb2.OFFSET_OUT_OF_RANGE: "the fetch offset is outside the partition's log",
    common_pb2.NOT_LEADER_OR_FOLLOWER: "this broker does not lead the partition",
    common_pb2.REQUEST_TIMED_OUT: "the request timed out",
    common_pb2.RECORD_BATCH_TOO_LARGE: "the batch is larger than the broker accepts",
    common_pb2.REQUEST_TOO_LARGE: "the request is larger than the broker accepts",
    common_pb2.NOT_ENOUGH_REPLICAS: "fewer in-sync replicas than min_insync_replicas",
    common_pb2.TOPIC_ALREADY_EXISTS: "the topic already exists",
    common_pb2.INVALID_PARTITIONS: "invalid partition count",
    common_pb2.INVALID_REPLICATION_FACTOR: "invalid replication factor (more than the live brokers?)",
    common_pb2.INVALID_TOPIC_NAME: 'topic names are 1-200 chars of [A-Za-z0-9._-], not starting with "__"',
    common_pb2.LEADER_NOT_AVAILABLE: "no leader is elected for the partition yet",
    common_pb2.METADATA_QUORUM_UNAVAILABLE: "the metadata quorum has no majority",
    common_pb2.BROKER_NOT_AVAILABLE: "the broker is not available",
    common_pb2.RESOURCE_EXHAUSTED: "the broker is overloaded (a bounded queue is full)",
    common_pb2.POLICY_VIOLATION: "refused by a cluster policy (the message says which, and how to raise it)",
}


def is_retriable(code: common_pb2.ErrorCode) -> bool:
    return code in _RETRIABLE_CODES


def _class_name(code_name: str) -> str:
    return "".join(part.capitalize() for part in code_name.split("_")) + "Error"


def _category(code: common_pb2.ErrorCode) -> type[SemelError]:
    if code in _RETRIABLE_CODES:
        return RetriableError
    if code in _ABORTABLE_CODES:
        return AbortableError
    return FatalError


_BY_CODE: dict[common_pb2.ErrorCode, type[SemelError]] = {}
for _name, _number in ErrorCode.items():
    if _number == common_pb2.NONE:
        continue
    _value = cast(common_pb2.ErrorCode, _number)  # the enum's own table: every number is an ErrorCode
    _cls = type(
        _class_name(_name),
        (_category(_value),),
        {"code": _value, "__doc__": f"ErrorCode {_name} ({_value}).", "__module__": __name__},
    )
    globals()[_cls.__name__] = _cls
    _BY_CODE[_value] = _cls

# Names used directly by the client and its users (typed for readers and mypy: the loop above
# makes them at import time, which a type checker cannot see).
_E = TypeVar("_E", bound=SemelError)


def typed_error_class(code: common_pb2.ErrorCode, category: type[_E]) -> type[_E]:
    """The class of `code`, checked (at import) to be a `category`, typed as one."""
    cls = _BY_CODE[code]
    if not issubclass(cls, category):
        raise AssertionError(f"{cls.__name__} is not a {category.__name__}")
    return cls


NotLeaderOrFollowerError = typed_error_class(common_pb2.NOT_LEADER_OR_FOLLOWER, RetriableError)
UnknownTopicOrPartitionError = typed_error_class(common_pb2.UNKNOWN_TOPIC_OR_PARTITION, RetriableError)
OffsetOutOfRangeError = typed_error_class(common_pb2.OFFSET_OUT_OF_RANGE, FatalError)
RequestTimedOutError = typed_error_class(common_pb2.REQUEST_TIMED_OUT, RetriableError)
TopicAlreadyExistsError = typed_error_class(common_pb2.TOPIC_ALREADY_EXISTS, FatalError)
LeaderNotAvailableError = typed_error_class(common_pb2.LEADER_NOT_AVAILABLE, RetriableError)
RecordBatchTooLargeError = typed_error_class(common_pb2.RECORD_BATCH_TOO_LARGE, FatalError)
InvalidTopicNameError = typed_error_class(common_pb2.INVALID_TOPIC_NAME, FatalError)
InvalidReplicationFactorError = typed_error_class(common_pb2.INVALID_REPLICATION_FACTOR, FatalError)
CoordinatorNotAvailableError = typed_error_class(common_pb2.COORDINATOR_NOT_AVAILABLE, RetriableError)
UnstableOffsetCommitError = typed_error_class(common_pb2.UNSTABLE_OFFSET_COMMIT, RetriableError)
ProducerFencedError = typed_error_class(common_pb2.PRODUCER_FENCED, FatalError)
InvalidProducerEpochError = typed_error_class(common_pb2.INVALID_PRODUCER_EPOCH, FatalError)


def error_class(code: common_pb2.ErrorCode) -> type[SemelError]:
    """The exception class for a wire ErrorCode (UnknownServerError for unknown values)."""
    return _BY_CODE.get(code, _BY_CODE[common_pb2.UNKNOWN_SERVER_ERROR])


def error_for_code(code: common_pb2.ErrorCode, message: str = "", *, context: str = "") -> SemelError:
    """The exception for `code` as answered by a broker; `context` names what failed."""
    if code == common_pb2.NONE:
        raise AssertionError("error_for_code(NONE): success is not an error")
    cls = error_class(code)
    text = message or _DESCRIPTIONS.get(code, "")
    if code not in _BY_CODE:
        text = f"unknown error code {code} from a newer broker" + (f": {message}" if message else "")
    if context:
        text = f"{context}: {text}" if text else context
    return cls(text, outcome_unknown=code in _OUTCOME_UNKNOWN_CODES)
