"""The producer's batching core: records in, batches ready to send out. No I/O, no clock.

How it works. `append` encodes a record once into the open batch of its partition (a new
batch opens when the record would push the open one past `batch_bytes`). `drain_ready`
hands the sender the head batch of every partition that is *sendable*:

  * the partition has fewer than `max_in_flight` batches in flight, and
  * the head batch is not waiting out a retry backoff, and
  * the head batch is full (another batch queues behind it, or it reached `batch_bytes`),
    or it has lingered `linger_ms`, or a flush/close is in progress.

A drained batch is in flight until the sender calls `complete` (acknowledged or failed
for good) or `reenqueue` (retriable failure: back to the *head* of its queue with a
backoff, so with `max_in_flight=1` records keep their order across retries).

Invariants:
  * `buffered_bytes` == sum of `size_bytes` over batches queued or in flight;
    it only shrinks in `complete`.
  * per partition, `in_flight[tp]` <= `max_in_flight`.
  * a batch is in exactly one place: a partition queue, in flight, or completed.

Each record is encoded once, as its framing (`encode_record_parts`: head and tail) around the
caller's value bytes, which are copied only when the request is built. Compression (`codec`, a
Kafka codec id, 0 none): with a codec each record is encoded once as
a Kafka record (`encode_kafka_record_parts`) instead of a `semel.v1.Record`, and a batch is
sent as one Kafka RecordBatch v2 whose records are compressed as one unit
(`to_partition_data`: `kafka_batch` of the gRPC Produce), with the same producer id, epoch,
base sequence and transactional bit as the uncompressed batch would carry. `batch_bytes` and
the buffer count the uncompressed bytes.

Callers hold one lock around every call (the producer's condition variable).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

from semel.client import errors as client_errors
from semel.client.idempotence import SEQUENCE_MODULUS, IdempotenceState
from semel.client.records import (Header, RecordMetadata, build_batch, encode_kafka_record_parts,
                                  encode_record_parts)
from semel.storage import kafka_records
from semel.storage.varint import encode_varint
from semel.v1 import broker_pb2, common_pb2

# Bytes of batch framing counted against batch_bytes beyond the encoded records
# (RecordBatch header fields and the PartitionProduceData wrapper).
BATCH_OVERHEAD_BYTES = 96


class BatchResult:
    """Completion of one batch, shared by the futures of its records."""

    __slots__ = ("_event", "_lock", "base_offset", "log_append_time_ms", "error", "_callbacks")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.base_offset = -1
        self.log_append_time_ms = -1
        self.error: BaseException | None = None
        self._callbacks: list[tuple[RecordFuture, Callable[[RecordFuture], Any]]] = []

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None) -> bool:
        return self._event.wait(timeout_s)

    def add_callback(self, future: RecordFuture, fn: Callable[[RecordFuture], Any]) -> bool:
        """Registers `fn`; False when the batch is already done (the caller runs it)."""
        with self._lock:
            if self._event.is_set():
                return False
            self._callbacks.append((future, fn))
            return True

    def complete(self, base_offset: int, log_append_time_ms: int, error: BaseException | None) -> None:
        with self._lock:
            if self._event.is_set():
                raise AssertionError("a batch completes once")
            self.base_offset = base_offset
            self.log_append_time_ms = log_append_time_ms
            self.error = error
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for future, fn in callbacks:
            try:
                fn(future)
            except Exception:  # a user callback must not kill the sender
                import logging

                logging.getLogger("semel.client").exception("producer callback raised")


class RecordFuture:
    """The outcome of one `Producer.send`: a concurrent.futures-style future of RecordMetadata.

    `result(timeout=None)` blocks and returns `RecordMetadata` or raises the delivery
    error; `exception()`, `done()`, `add_done_callback(fn)` as in `concurrent.futures`.
    """

    __slots__ = ("_batch", "_topic", "_partition", "_index", "_timestamp_ms", "_key_bytes", "_value_bytes")

    def __init__(
        self, batch: BatchResult, topic: str, partition: int, index: int, timestamp_ms: int, key_bytes: int, value_bytes: int
    ) -> None:
        self._batch = batch
        self._topic = topic
        self._partition = partition
        self._index = index
        self._timestamp_ms = timestamp_ms
        self._key_bytes = key_bytes
        self._value_bytes = value_bytes

    def done(self) -> bool:
        return self._batch.done()

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def result(self, timeout: float | None = None) -> RecordMetadata:
        if not self._batch.wait(timeout):
            raise TimeoutError(f"record to {self._topic}-{self._partition} not acknowledged within {timeout} s")
        if self._batch.error is not None:
            raise self._batch.error
        base = self._batch.base_offset
        offset = base + self._index if base >= 0 else -1
        timestamp_ms = self._batch.log_append_time_ms if self._batch.log_append_time_ms > 0 else self._timestamp_ms
        return RecordMetadata(self._topic, self._partition, offset, timestamp_ms, self._key_bytes, self._value_bytes)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._batch.wait(timeout):
            raise TimeoutError(f"record to {self._topic}-{self._partition} not acknowledged within {timeout} s")
        return self._batch.error

    def add_done_callback(self, fn: Callable[[RecordFuture], Any]) -> None:
        if not self._batch.add_callback(self, fn):
            fn(self)


@dataclasses.dataclass(slots=True, eq=False)
class ProducerBatch:
    """Records of one partition sent together (mutable while open; then only retry state)."""

    topic: str
    partition: int
    created_ms: int
    base_timestamp_ms: int
    max_timestamp_ms: int
    size_bytes: int = BATCH_OVERHEAD_BYTES
    record_count: int = 0
    # the encoded records, each as head, value (left out when empty) and tail (when not empty)
    parts: list[bytes] = dataclasses.field(default_factory=list)
    result: BatchResult = dataclasses.field(default_factory=BatchResult)
    closed: bool = False           # no more appends (full, or drained)
    attempts: int = 0
    retry_at_ms: int = 0
    outcome_unknown: bool = False  # some attempt may have been written
    # idempotence (client_idempotence): assigned when first drained, kept by retries
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    attributes: int = 0            # common_pb2.TRANSACTIONAL for a transactional producer
    codec: int = kafka_records.CODEC_NONE  # with a codec, `parts` hold Kafka records

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    def records_bytes(self) -> bytes:
        """The encoded records, joined."""
        return b"".join(self.parts)

    def to_proto(self) -> common_pb2.RecordBatch:
        return build_batch(self.parts, self.record_count, self.base_timestamp_ms, self.max_timestamp_ms,
                           self.attributes, self.producer_id, self.producer_epoch, self.base_sequence)

    def to_kafka_batch(self) -> bytes:
        """The batch as one Kafka RecordBatch v2, its records compressed with `codec`."""
        return kafka_records.encode_compressed_batch(
            self.records_bytes(), codec=self.codec, record_count=self.record_count,
            base_timestamp_ms=self.base_timestamp_ms, max_timestamp_ms=self.max_timestamp_ms,
            attributes=self.attributes, producer_id=self.producer_id, producer_epoch=self.producer_epoch,
            base_sequence=self.base_sequence)

    def request_parts(self, out: list[bytes]) -> None:
        """Appends this batch as one `ProduceRequest.partitions` entry in protobuf wire format to
        `out`: the bytes of the `to_partition_data()` entry as `SerializeToString` gives them
        (tests check it). The record values go in as the caller's bytes objects and are copied
        once, when the request is joined, instead of into a RecordBatch message first and
        again when it is serialized."""
        if self.codec == kafka_records.CODEC_NONE:
            records_len = sum(map(len, self.parts))
            header = b"".join((
                _field_varint(2, self.record_count - 1), _LEADER_EPOCH_UNSET,
                b"\x20", encode_varint(self.producer_id), b"\x28", encode_varint(self.producer_epoch),
                b"\x30", encode_varint(self.base_sequence), _field_varint(7, self.record_count),
                _field_varint(8, self.attributes), _field_varint(9, self.base_timestamp_ms),
                _field_varint(10, self.max_timestamp_ms), b"\x5a", encode_varint(records_len)))
            head = (_partition_head(self.topic, self.partition) + b"\x1a"
                    + encode_varint(len(header) + records_len) + header)
            out.append(_PARTITIONS_TAG + encode_varint(len(head) + records_len))
            out.append(head)
            out.extend(self.parts)
            return
        data = self.to_kafka_batch()
        head = _partition_head(self.topic, self.partition) + b"\x22" + encode_varint(len(data))
        out.append(_PARTITIONS_TAG + encode_varint(len(head) + len(data)))
        out.append(head)
        out.append(data)

    def to_partition_data(self) -> broker_pb2.PartitionProduceData:
        """This batch in a Produce request: `batch` (magic 1) uncompressed, else `kafka_batch`."""
        if self.codec == kafka_records.CODEC_NONE:
            return broker_pb2.PartitionProduceData(topic=self.topic, partition=self.partition, batch=self.to_proto())
        return broker_pb2.PartitionProduceData(topic=self.topic, partition=self.partition,
                                               kafka_batch=self.to_kafka_batch())




_PARTITIONS_TAG = b"\x22"  # ProduceRequest.partitions, field 4, length-delimited
_LEADER_EPOCH_UNSET = b"\x18" + encode_varint(-1)  # RecordBatch.leader_epoch = -1 (the broker assigns it)


def _field_varint(field: int, value: int) -> bytes:
    """A varint field of a proto3 message (left out when 0, as protobuf does)."""
    return bytes((field << 3,)) + encode_varint(value) if value else b""


def _partition_head(topic: str, partition: int) -> bytes:
    """`PartitionProduceData.topic` and `.partition`."""
    name = topic.encode()
    return b"\x0a" + encode_varint(len(name)) + name + _field_varint(2, partition)


def encode_produce_request(acks: int, timeout_ms: int, transactional_id: str,
                           batches: Sequence[ProducerBatch]) -> bytes:
    """A `ProduceRequest` in protobuf wire format, byte for byte what `SerializeToString` gives
    for the message built from `to_partition_data()` (tests check it), joined once."""
    out = [_field_varint(1, acks), _field_varint(2, timeout_ms)]
    if transactional_id:
        name = transactional_id.encode()
        out += (b"\x1a", encode_varint(len(name)), name)
    for batch in batches:
        batch.request_parts(out)
    return b"".join(out)


class RecordAccumulator:
    """Per-partition queues of batches; see the module docstring for the rules."""

    def __init__(self, batch_bytes: int, linger_ms: int, buffer_bytes: int, max_in_flight: int,
                 idempotence: IdempotenceState | None = None, attributes: int = 0,
                 codec: int = kafka_records.CODEC_NONE, clock: Callable[[], int] | None = None) -> None:
        """`clock`: milliseconds, read by `append` when it is given no `now_ms` and opens a
        batch (the producer passes its monotonic clock, so a record that joins an open batch
        reads no clock)."""
        if batch_bytes < 1 or linger_ms < 0 or buffer_bytes < 1 or max_in_flight < 1:
            raise client_errors.ConfigError(
                "batch_bytes, buffer_bytes and max_in_flight must be >= 1 and linger_ms >= 0"
            )
        self.batch_bytes = batch_bytes
        self.linger_ms = linger_ms
        self.buffer_bytes = buffer_bytes
        self.max_in_flight = max_in_flight
        self.idempotence = idempotence   # None: batches carry no producer id
        self.attributes = attributes
        self.codec = codec
        self._clock = clock
        self._encode = encode_record_parts if codec == kafka_records.CODEC_NONE else encode_kafka_record_parts
        self.buffered_bytes = 0
        self.flushing = 0          # > 0 while a flush or close waits: send regardless of linger
        self._queues: dict[tuple[str, int], collections.deque[ProducerBatch]] = {}
        self._in_flight: collections.Counter[tuple[str, int]] = collections.Counter()
        self.in_flight_changes = 0  # counts every change of `_in_flight` (caches of `busy` answers)
        self._incomplete: set[ProducerBatch] = set()

    # --- appending ------------------------------------------------------------------
    @staticmethod
    def record_size(key: bytes | None, value: bytes, headers: Sequence[Header] | None) -> int:
        """Upper bound of the encoded size, used before encoding for buffer accounting."""
        size = 24 + (len(key) if key else 0) + len(value)
        if headers:
            size += sum(8 + len(k) * 3 + len(v) for k, v in headers)
        return size

    def has_room(self, size_bytes: int) -> bool:
        # An empty buffer always takes one record, however large, so nothing starves.
        return self.buffered_bytes == 0 or self.buffered_bytes + size_bytes <= self.buffer_bytes

    def has_open_batch(self, topic: str, partition: int) -> bool:
        """The partition has a batch that still takes records."""
        queue = self._queues.get((topic, partition))
        return queue is not None and bool(queue) and not queue[-1].closed

    def close_if_full_for(self, topic: str, partition: int, size_bytes: int) -> bool:
        """Closes the partition's open batch when a record of about `size_bytes` (an upper
        bound of its encoded size) would not fit in it. A keyless record then goes to the next
        sticky partition (as Kafka's KIP-794) instead of opening a new batch here that holds
        only itself and would be sent, one record, once `linger_ms` passes."""
        queue = self._queues.get((topic, partition))
        if not queue:
            return False
        batch = queue[-1]
        if batch.closed or batch.record_count == 0 or batch.size_bytes + size_bytes <= self.batch_bytes:
            return False
        batch.closed = True
        return True

    def append(
        self,
        topic: str,
        partition: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes,
        headers: Sequence[Header] | None,
        now_ms: int | None,
    ) -> tuple[RecordFuture, bool, bool]:
        """Adds a record; returns its future, whether a batch became full and whether a batch
        opened (either way: wake the sender so it re-plans its next wake-up)."""
        tp = (topic, partition)
        queue = self._queues.get(tp)
        if queue is None:
            queue = self._queues[tp] = collections.deque()
        batch = queue[-1] if queue and not queue[-1].closed else None
        full = False
        new_batch = batch is None
        encode = self._encode
        if batch is not None:
            head, tail = encode(batch.record_count, timestamp_ms - batch.base_timestamp_ms, key, value, headers)
            size = len(head) + len(value) + len(tail)
            if batch.size_bytes + size > self.batch_bytes:
                batch.closed = True
                full = True
                batch = None
        if batch is None:
            new_batch = True
            if now_ms is None:
                if self._clock is None:
                    raise AssertionError("append without now_ms needs the accumulator's clock")
                now_ms = self._clock()
            batch = ProducerBatch(topic, partition, now_ms, timestamp_ms, timestamp_ms, attributes=self.attributes,
                                  codec=self.codec)
            queue.append(batch)
            self._incomplete.add(batch)
            head, tail = encode(0, 0, key, value, headers)
            size = len(head) + len(value) + len(tail)
        parts = batch.parts
        parts.append(head)
        if value:
            parts.append(value)
        if tail:
            parts.append(tail)
        batch.size_bytes += size
        self.buffered_bytes += size
        if batch.record_count == 0:
            self.buffered_bytes += BATCH_OVERHEAD_BYTES
        index = batch.record_count
        batch.record_count += 1
        if timestamp_ms > batch.max_timestamp_ms:
            batch.max_timestamp_ms = timestamp_ms
        if batch.size_bytes >= self.batch_bytes:
            batch.closed = True
            full = True
        future = RecordFuture(batch.result, topic, partition, index, timestamp_ms, len(key) if key else 0, len(value))
        return future, full, new_batch

    # --- draining -------------------------------------------------------------------
    def _sendable(self, batch: ProducerBatch, queue_len: int, now_ms: int) -> bool:
        if batch.retry_at_ms > now_ms:
            return False
        if batch.closed or queue_len > 1 or self.flushing:
            return True
        return now_ms - batch.created_ms >= self.linger_ms

    def drain_ready(self, now_ms: int, skip: Callable[[tuple[str, int]], bool] | None = None) -> list[ProducerBatch]:
        """Head batches that may be sent now; they are in flight until complete/reenqueue.

        `skip(tp)` leaves a partition alone this round (e.g. its leader is unknown).
        """
        idem = self.idempotence
        if idem is not None and not idem.ready:
            return []  # no identity yet, or an epoch bump waits for the in-flight batches
        out = []
        for tp, queue in self._queues.items():
            if not queue or self._in_flight[tp] >= self.max_in_flight:
                continue
            head = queue[0]
            if not self._sendable(head, len(queue), now_ms):
                continue
            if idem is not None and head.base_sequence >= 0 and self._in_flight[tp] > 0:
                continue  # an ordered retry: one batch at a time until the retries are through
            if skip is not None and skip(tp):
                continue
            queue.popleft()
            head.closed = True
            self._in_flight[tp] += 1
            self.in_flight_changes += 1
            if idem is not None:
                idem.assign(head)
            out.append(head)
        return out

    def busy(self, topic: str, partition: int) -> bool:
        """The partition has its maximum of batches in flight (a new batch would wait)."""
        return self._in_flight[(topic, partition)] >= self.max_in_flight

    def next_ready_ms(self, now_ms: int) -> int | None:
        """Earliest time a queued batch becomes sendable by time alone (None: nothing queued)."""
        earliest: int | None = None
        for tp, queue in self._queues.items():
            if not queue:
                continue
            head = queue[0]
            if self._in_flight[tp] >= self.max_in_flight:
                continue
            at = head.retry_at_ms if head.retry_at_ms > now_ms else now_ms
            if not (head.closed or len(queue) > 1 or self.flushing):
                at = max(at, head.created_ms + self.linger_ms)
            earliest = at if earliest is None else min(earliest, at)
        return earliest

    # --- outcomes -------------------------------------------------------------------
    def reenqueue(self, batch: ProducerBatch, retry_at_ms: int) -> None:
        """A retriable failure: the batch goes back to the head of its queue (among the other
        retries of its partition, in sequence order, so an idempotent producer keeps order)."""
        self._release_in_flight(batch.tp)
        batch.retry_at_ms = retry_at_ms
        queue = self._queues.setdefault(batch.tp, collections.deque())
        if batch.base_sequence < 0:
            queue.appendleft(batch)
            return
        index = 0
        while (index < len(queue) and queue[index].base_sequence >= 0
               and queue[index].producer_epoch == batch.producer_epoch
               and _seq_before(queue[index].base_sequence, batch.base_sequence)):
            index += 1
        queue.insert(index, batch)
        if index > 0:
            # a later retry must not wait out a longer backoff than the head it queues behind
            batch.retry_at_ms = min(batch.retry_at_ms, queue[0].retry_at_ms)

    def unsent(self, batch: ProducerBatch) -> None:
        """A drained batch that was not sent after all (no leader): back at the head, no backoff."""
        self._release_in_flight(batch.tp)
        self._queues.setdefault(batch.tp, collections.deque()).appendleft(batch)

    def complete(self, batch: ProducerBatch, in_flight: bool = True) -> None:
        """The batch is done (acknowledged or failed for good); frees its buffer bytes.

        The caller completes `batch.result` *after* releasing its lock (callbacks are user code).
        """
        if in_flight:
            self._release_in_flight(batch.tp)
        self._incomplete.discard(batch)
        self.buffered_bytes -= batch.size_bytes
        if self.buffered_bytes < 0:
            raise AssertionError("buffered_bytes went negative")

    def _release_in_flight(self, tp: tuple[str, int]) -> None:
        if self._in_flight[tp] <= 0:
            raise AssertionError(f"{tp} has no batch in flight")
        self._in_flight[tp] -= 1
        self.in_flight_changes += 1

    def expired(self, now_ms: int, delivery_timeout_ms: int) -> list[ProducerBatch]:
        """Queued (not in-flight) batches older than the delivery timeout, removed from queues."""
        out = []
        for queue in self._queues.values():
            while queue and now_ms - queue[0].created_ms >= delivery_timeout_ms:
                out.append(queue.popleft())
        for batch in out:
            self._incomplete.discard(batch)
            self.buffered_bytes -= batch.size_bytes
        return out

    def abort_all(self) -> list[ProducerBatch]:
        """Every queued batch, removed (close without flush)."""
        out = [batch for queue in self._queues.values() for batch in queue]
        for queue in self._queues.values():
            queue.clear()
        for batch in out:
            self._incomplete.discard(batch)
            self.buffered_bytes -= batch.size_bytes
        return out

    def queued(self) -> list[ProducerBatch]:
        """Every batch waiting in a queue (not in flight)."""
        return [batch for queue in self._queues.values() for batch in queue]

    def remove_queued(self, batch: ProducerBatch) -> None:
        """Takes a queued batch out for good (failed by the caller); frees its buffer bytes."""
        self._queues[batch.tp].remove(batch)
        self.complete(batch, in_flight=False)

    def incomplete_results(self) -> list[BatchResult]:
        return [batch.result for batch in self._incomplete]

    def in_flight_count(self) -> int:
        return sum(self._in_flight.values())

    def queued_batches(self) -> int:
        return sum(len(q) for q in self._queues.values())


def _seq_before(a: int, b: int) -> bool:
    """Sequence `a` comes before `b` in the wrapping sequence space."""
    return 0 < (b - a) % SEQUENCE_MODULUS < SEQUENCE_MODULUS // 2
