"""Errors of the partition log, each with the wire `ErrorCode` a broker answers with.

Whose fault: `BatchTooLargeError` and `InvalidAppendError` are the caller's (fix the
request); `CorruptBatchError` on append means the bytes were damaged in flight (retriable);
`CorruptLogError` means this broker's disk holds a damaged batch (STORAGE_ERROR: another
replica may serve the fetch; the batch itself is never returned); `OffsetOutOfRange` means
the reader must reset its position.
"""

from __future__ import annotations

from semel.storage.batch import CorruptBatchError
from semel.v1 import common_pb2

ErrorCode = common_pb2.ErrorCode



class CorruptLogError(CorruptBatchError):
    """A stored batch fails its CRC or framing: it is never served."""

    code = ErrorCode.STORAGE_ERROR


class OffsetOutOfRange(Exception):
    """An offset outside [log_start_offset, log_end_offset]."""

    code = ErrorCode.OFFSET_OUT_OF_RANGE


class BatchTooLargeError(ValueError):
    """A batch larger than `max_batch_bytes`, or an append larger than MAX_APPEND_BYTES."""

    code = ErrorCode.RECORD_BATCH_TOO_LARGE


class InvalidAppendError(ValueError):
    """Appended batches do not continue the log (offsets) or are empty."""

    code = ErrorCode.INVALID_RECORD


class LogClosedError(Exception):
    """The log was closed (or failed and closed itself)."""

    code = ErrorCode.STORAGE_ERROR


def error_code_of(exc: BaseException) -> common_pb2.ErrorCode:
    """The wire code for an exception raised by the log (CorruptBatchError on append: damaged in flight)."""
    code = getattr(exc, "code", None)
    if code is not None:
        return code  # the `code` class attribute of the errors above: an ErrorCode
    if isinstance(exc, CorruptBatchError):
        return ErrorCode.CORRUPT_MESSAGE
    return ErrorCode.UNKNOWN_SERVER_ERROR
