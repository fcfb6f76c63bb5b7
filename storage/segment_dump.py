"""What a segment file holds, batch by batch, for `semel log dump` (debugging; never on a hot path).

A pure walk over the bytes of one `<base>.log` file, using the storage engine's own decoders:
`peek_header` for framing, `decode_header(verify_crc=True)` for the CRC, and the batch
format's `decode_marker` for control batches. Unlike recovery (`recovery.scan_batches`), it does
not stop at the first bad batch: a batch whose CRC fails, or whose base offset does not continue
the previous batch, is reported and the walk goes on as long as the framing (the length field)
still holds, because that is what someone debugging a damaged log wants to see. It stops where
the framing breaks (a torn header or a batch that runs past the end of the file).

Bounded: it yields one `BatchInfo` at a time; nothing grows with the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from semel.storage.batch import (
    HEADER_BYTES,
    BatchHeader,
    CorruptBatchError,
    decode_header,
    decode_marker,
    peek_header,
)


class NotASegmentError(ValueError):
    """The bytes do not start with a batch of this storage format (an index file, some other file)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BatchInfo:
    position: int  # byte position of the batch in the file
    header: BatchHeader  # as stored (size_bytes set)
    crc_ok: bool
    marker_type: str | None = None  # control batches: "COMMIT" or "ABORT"
    coordinator_epoch: int | None = None  # control batches
    problems: tuple[str, ...] = ()  # CRC mismatch, offset gap, unreadable control record


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentEnd:
    """The last item of a walk: how far the framing held, and why it stopped early (if it did)."""

    valid_bytes: int  # bytes covered by whole batches (good CRC or not)
    size_bytes: int
    stop_reason: str | None  # None: the file ends exactly after its last batch


def walk_segment(buf: bytes | memoryview, expected_base_offset: int | None) -> Iterator[BatchInfo | SegmentEnd]:
    """Each batch of `buf` (the whole content of a segment file), then one `SegmentEnd`.

    `expected_base_offset` is the base offset the file name claims (None: take the first
    batch's). Raises NotASegmentError when the first bytes are not a batch header.
    """
    end = len(buf)
    pos = 0
    expected = expected_base_offset
    stop_reason: str | None = None
    while pos < end:
        if end - pos < HEADER_BYTES:
            if pos == 0:
                raise NotASegmentError(f"{end} bytes is shorter than one batch header ({HEADER_BYTES} bytes)")
            stop_reason = f"torn batch header at position {pos}: {end - pos} bytes left"
            break
        try:
            header = peek_header(buf, pos)
        except CorruptBatchError as exc:
            if pos == 0:
                raise NotASegmentError(f"the first bytes are not a batch header: {exc}") from exc
            stop_reason = f"framing breaks at position {pos}: {exc}"
            break
        if pos + header.size_bytes > end:
            stop_reason = (f"torn batch at position {pos}: it claims {header.size_bytes} bytes, "
                           f"{end - pos} are left")
            break
        yield _describe(buf, pos, header, expected)
        expected = header.next_offset
        pos += header.size_bytes
    yield SegmentEnd(valid_bytes=pos, size_bytes=end, stop_reason=stop_reason)


def _describe(buf: bytes | memoryview, pos: int, header: BatchHeader, expected: int | None) -> BatchInfo:
    problems: list[str] = []
    crc_ok = True
    try:
        decode_header(buf, pos, verify_crc=True)
    except CorruptBatchError as exc:
        crc_ok = False
        problems.append(str(exc))
    if expected is not None and header.base_offset != expected:
        problems.append(f"base offset {header.base_offset}, expected {expected}")
    if header.last_offset_delta < 0:
        problems.append(f"negative last_offset_delta {header.last_offset_delta}")
    marker_type = coordinator_epoch = None
    if header.is_control:
        try:
            marker = decode_marker(buf[pos + HEADER_BYTES : pos + header.size_bytes], header.magic)
        except Exception as exc:  # protobuf's DecodeError: a control batch whose record is damaged
            problems.append(f"unreadable control record: {exc}")
        else:
            marker_type = "COMMIT" if marker.commit else "ABORT"
            coordinator_epoch = marker.coordinator_epoch
    return BatchInfo(pos, header, crc_ok, marker_type, coordinator_epoch, tuple(problems))


def batch_fields(info: BatchInfo) -> dict[str, object]:
    """The fields `semel log dump` prints, in order (also its --json form)."""
    h = info.header
    fields: dict[str, object] = {
        "base_offset": h.base_offset,
        "last_offset": h.last_offset,
        "position": info.position,
        "size_bytes": h.size_bytes,
        "magic": h.magic,  # 1: Semel's original form, 2: Kafka's RecordBatch v2 (docs/storage.md)
        "leader_epoch": h.leader_epoch,
        "producer_id": h.producer_id,
        "producer_epoch": h.producer_epoch,
        "base_sequence": h.base_sequence,
        "record_count": h.record_count,
        "base_timestamp_ms": h.base_timestamp_ms,
        "max_timestamp_ms": h.max_timestamp_ms,
        "transactional": h.is_transactional,
        "control": h.is_control,
    }
    if h.is_control:
        fields["marker"] = info.marker_type
        fields["coordinator_epoch"] = info.coordinator_epoch
    fields["crc"] = "ok" if info.crc_ok else "mismatch"
    if info.problems:
        fields["problems"] = list(info.problems)
    return fields
