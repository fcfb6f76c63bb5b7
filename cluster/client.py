"""The Semel Python client: `Producer`, `Consumer` and `Admin` over the semel.v1 gRPC API.

    from semel.cluster.client import Producer, Consumer, Admin

    with Producer("127.0.0.1:9092") as producer:
        producer.send("events", b"hello", key=b"user-1").result()

See docs/client.md for every option and the guarantees. Structure: the batching rules
live in the pure `client_accumulator`, the record encoding in `client_records`, the
partitioner in `client_partitioner`, the error taxonomy in `client_errors`, channels and
the metadata cache in `client_metadata`. This module is the thin, threaded shell: the
producer's background sender thread, the consumer's fetch loop, the admin calls.

Ordering: the producer keeps at most `max_in_flight` (default 1) batches in flight per
partition. With 1, a retried batch is resent before anything after it, so records of one
partition are stored in send order. With more than 1 and no idempotence (not implemented
yet) a retry can land after a later batch: records may be reordered (and a retry after a
lost acknowledgement can be stored twice, with any setting).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from semel import limits
from semel.cluster import client_errors
from semel.cluster.client_accumulator import (
    ProducerBatch,
    RecordAccumulator,
    RecordFuture,
    TopicPartition,
)
from semel.cluster.client_errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    DeliveryTimeoutError,
    SemelError,
)
from semel.cluster.client_metadata import (
    ClusterView,
    Connections,
    MetadataManager,
    PartitionInfo,
    parse_bootstrap,
    rpc_error,
)
from semel.cluster.client_partitioner import StickyPartitioner, partition_for_key
from semel.cluster.client_records import ConsumerRecord, Header, RecordMetadata, decode_batch
from semel.v1 import admin_pb2, broker_pb2, common_pb2

__all__ = [
    "Admin",
    "Consumer",
    "ConsumerRecord",
    "Producer",
    "RecordFuture",
    "RecordMetadata",
    "TopicDescription",
    "PartitionDescription",
    "BrokerDescription",
    "ClusterDescription",
    "SemelError",
]

log = logging.getLogger("semel.client")

# --- client defaults (bounds; documented in docs/client.md) --------------------------
LINGER_MS_DEFAULT = 5
BATCH_BYTES_DEFAULT = 512 * 1024
BUFFER_BYTES_DEFAULT = 64 * 1024 * 1024
MAX_BLOCK_MS_DEFAULT = 60_000
MAX_IN_FLIGHT_DEFAULT = 1
MAX_IN_FLIGHT_MAX = 5
DELIVERY_TIMEOUT_MS_DEFAULT = 120_000
REQUEST_TIMEOUT_MS_DEFAULT = 30_000
RETRY_BACKOFF_MS_DEFAULT = 100
CONNECT_TIMEOUT_MS_DEFAULT = 5_000          # admin: give up when no broker ever answered
RETRY_BACKOFF_MAX_MS_DEFAULT = 1_000
METADATA_MAX_AGE_MS_DEFAULT = 300_000
FETCH_MAX_WAIT_MS_DEFAULT = 500
FETCH_MAX_BYTES_DEFAULT = limits.MAX_FETCH_BYTES
FETCH_PARTITION_MAX_BYTES_DEFAULT = 1024 * 1024
MAX_POLL_RECORDS_DEFAULT = 10_000
STALLED_REQUEST_MS = 1_000                  # producer: after this, check whether the request's leader moved
FETCH_ABANDON_SLACK_MS = 500                # consumer: wait this long past poll's deadline for a fetch

_ACKS = {"all": broker_pb2.ACKS_ALL, "-1": broker_pb2.ACKS_ALL, "1": broker_pb2.ACKS_LEADER,
         "leader": broker_pb2.ACKS_LEADER, "0": broker_pb2.ACKS_NONE, "none": broker_pb2.ACKS_NONE}


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _as_bytes(value: bytes | str | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def parse_acks(acks: str | int) -> int:
    value = _ACKS.get(str(acks).lower())
    if value is None:
        raise ConfigError(f"acks must be one of all, 1 (leader), 0 (none); got {acks!r}")
    return value


class _ClientBase:
    def __init__(self, bootstrap: str | Sequence[str] | None, request_timeout_ms: int,
                 retry_backoff_ms: int, retry_backoff_max_ms: int, metadata_max_age_ms: int) -> None:
        self._connections = Connections()
        self._metadata = MetadataManager(
            parse_bootstrap(bootstrap), self._connections, request_timeout_ms,
            retry_backoff_ms, retry_backoff_max_ms, metadata_max_age_ms,
        )
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms

    @property
    def cluster(self) -> ClusterView:
        return self._metadata.view

    def partitions_for(self, topic: str, timeout_ms: int | None = None) -> list[PartitionInfo]:
        """The partitions of `topic` (leader, replicas, ISR), waiting up to `timeout_ms` for it
        to appear (default: the producer's max_block_ms, else request_timeout_ms)."""
        if timeout_ms is None:
            timeout_ms = getattr(self, "max_block_ms", self.request_timeout_ms)
        self._metadata.wait_for_topic(topic, _now_ms() + timeout_ms)
        return list(self._metadata.view.topics.get(topic, []))

    def _backoff_ms(self, attempts: int) -> int:
        return min(self.retry_backoff_max_ms, self.retry_backoff_ms * (2 ** max(0, min(attempts - 1, 16))))


# ======================================================================================
# Producer
# ======================================================================================
class Producer(_ClientBase):
    """Batches records per partition and sends them from a background thread.

    `send()` returns at once with a `RecordFuture`; records are sent when their batch is
    full (`batch_bytes`), has waited `linger_ms`, or on `flush()`/`close()`.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        acks: str | int = "all",
        linger_ms: int = LINGER_MS_DEFAULT,
        batch_bytes: int = BATCH_BYTES_DEFAULT,
        buffer_bytes: int = BUFFER_BYTES_DEFAULT,
        max_block_ms: int = MAX_BLOCK_MS_DEFAULT,
        max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
        delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        retry_backoff_max_ms: int = RETRY_BACKOFF_MAX_MS_DEFAULT,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS_DEFAULT,
    ) -> None:
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT_MAX:
            raise ConfigError(f"max_in_flight must be in 1..{MAX_IN_FLIGHT_MAX}")
        if not 1 <= batch_bytes <= limits.MAX_BATCH_BYTES:
            raise ConfigError(f"batch_bytes must be in 1..{limits.MAX_BATCH_BYTES}")
        if delivery_timeout_ms < 1 or request_timeout_ms < 1 or max_block_ms < 0:
            raise ConfigError("delivery_timeout_ms and request_timeout_ms must be >= 1, max_block_ms >= 0")
        super().__init__(bootstrap, request_timeout_ms, retry_backoff_ms, retry_backoff_max_ms, metadata_max_age_ms)
        self.acks = parse_acks(acks)
        self.max_block_ms = max_block_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self._acc = RecordAccumulator(batch_bytes, linger_ms, buffer_bytes, max_in_flight)
        self._stats: collections.Counter[str] = collections.Counter()  # see metrics()
        self._requests: set[_ProduceRequest] = set()  # in flight
        self._sticky = StickyPartitioner(seed=int(time.time_ns() // 1000))
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._sender_stop = False
        self._sender = threading.Thread(target=self._run_sender, name="semel-producer-sender", daemon=True)
        self._sender.start()

    # --- public API -----------------------------------------------------------------
    def send(
        self,
        topic: str,
        value: bytes | str,
        key: bytes | str | None = None,
        partition: int | None = None,
        headers: Sequence[Header] | None = None,
        timestamp_ms: int | None = None,
        callback: Callable[[RecordMetadata | None, BaseException | None], Any] | None = None,
    ) -> RecordFuture:
        """Queue one record; the future resolves to its RecordMetadata (or the delivery error).

        `callback(metadata, error)` runs on a client thread once the record is acknowledged
        or failed; keep it short. Blocks up to `max_block_ms` while the topic's metadata is
        unknown or the buffer is full (then raises UnknownTopicOrPartitionError / BufferFullError).
        """
        if self._closed:
            raise ClosedError("send() after close()")
        value_bytes = value if type(value) is bytes else (_as_bytes(value, "value") or b"")
        key_bytes = key if key is None or type(key) is bytes else _as_bytes(key, "key")
        now_ms = time.monotonic_ns() // 1_000_000
        count = self._metadata.view.partition_count(topic)
        if count is None:
            count = self._metadata.wait_for_topic(topic, now_ms + self.max_block_ms)
            with self._cond:
                self._cond.notify_all()
        if partition is not None and not 0 <= partition < count:
            raise client_errors.UnknownTopicOrPartitionError(
                f"partition {partition} of {topic!r} does not exist (the topic has {count})"
            )
        size = 24 + len(value_bytes) + (len(key_bytes) if key_bytes else 0)
        if headers:
            size = RecordAccumulator.record_size(key_bytes, value_bytes, headers)
        if size > limits.MAX_BATCH_BYTES:
            raise client_errors.RecordBatchTooLargeError(
                f"record of {size} bytes exceeds the maximum batch size {limits.MAX_BATCH_BYTES}"
            )
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
        acc = self._acc
        with self._cond:
            if not acc.has_room(size):
                self._wait_for_room(size, now_ms + self.max_block_ms)
            if partition is None:
                if key_bytes:
                    partition = partition_for_key(key_bytes, count)
                else:
                    view = self._metadata.view
                    partition = self._sticky.partition(topic, count)
                    if view.leader_address(topic, partition) is None:
                        partition = self._sticky.partition(
                            topic, count, lambda p: view.leader_address(topic, p) is not None
                        )
            future, full, new_batch = acc.append(topic, partition, ts, key_bytes, value_bytes, headers, now_ms)
            if full and key_bytes is None:
                self._sticky.batch_closed(topic, partition, count)
            if full or new_batch:
                self._cond.notify_all()
        if callback is not None:
            future.add_done_callback(_adapt_callback(callback))
        return future

    def metrics(self) -> dict[str, int]:
        """Counters since start: requests/batches/records/bytes sent (attempts, retries included),
        records/batches acknowledged, records failed, batch retries; and the current
        buffered_bytes, queued_batches, in_flight_batches."""
        with self._cond:
            out = {name: self._stats[name] for name in (
                "requests_sent", "batches_sent", "records_sent", "bytes_sent", "records_acked", "batches_acked",
                "records_failed", "batch_retries",
            )}
            out["buffered_bytes"] = self._acc.buffered_bytes
            out["queued_batches"] = self._acc.queued_batches()
            out["in_flight_batches"] = self._acc.in_flight_count()
        return out

    def _wait_for_room(self, size: int, deadline_ms: int) -> None:
        """Caller holds the lock; blocks until the buffer takes `size` more bytes."""
        acc = self._acc
        while not acc.has_room(size):
            if self._closed:
                raise ClosedError("producer closed while send() waited for buffer space")
            remaining_ms = deadline_ms - _now_ms()
            if remaining_ms <= 0:
                raise BufferFullError(
                    f"{acc.buffered_bytes} bytes wait to be sent (buffer_bytes={acc.buffer_bytes}); "
                    f"no room after max_block_ms={self.max_block_ms}"
                )
            self._cond.wait(remaining_ms / 1000)

    def flush(self, timeout_s: float | None = None) -> None:
        """Send every queued record now and wait until each is acknowledged or failed."""
        with self._cond:
            results = self._acc.incomplete_results()
            self._acc.flushing += 1
            self._cond.notify_all()
        try:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            for result in results:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not result.wait(remaining):
                    raise TimeoutError(f"flush() did not complete within {timeout_s} s")
        finally:
            with self._cond:
                self._acc.flushing -= 1

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (up to `timeout_s`), stop the sender and close the channels. Idempotent."""
        if self._closed and not self._sender.is_alive():
            return
        self._closed = True
        try:
            self.flush(timeout_s)
        except TimeoutError:
            log.warning("close(): records still unacknowledged after %s s; failing them", timeout_s)
        finally:
            with self._cond:
                self._sender_stop = True
                aborted = self._acc.abort_all()
                self._cond.notify_all()
            for batch in aborted:
                batch.result.complete(-1, -1, ClosedError("producer closed before the record was sent"))
            self._sender.join(timeout=5)
            self._connections.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Ctrl-C: do not wait for acknowledgements; queued records fail with ClosedError.
        self.close(timeout_s=0 if exc_type is KeyboardInterrupt else None)

    # --- sender thread --------------------------------------------------------------
    def _run_sender(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._sender_stop:
                        return
                now_ms = _now_ms()
                if self._metadata.needs_refresh(now_ms) and self._metadata.topics:
                    try:
                        self._metadata.refresh()
                    except SemelError as exc:
                        log.debug("metadata refresh failed: %s", exc)
                self._cancel_requests_to_moved_leaders(now_ms)
                self._send_ready(now_ms)
        except Exception:  # pragma: no cover - a bug; fail loudly rather than hang senders
            log.exception("producer sender thread crashed")
            raise

    def _send_ready(self, now_ms: int) -> None:
        view = self._metadata.view
        failed: list[tuple[ProducerBatch, BaseException]] = []
        with self._cond:
            for batch in self._acc.expired(now_ms, self.delivery_timeout_ms):
                failed.append((batch, self._timeout_error(batch)))
            batches = self._acc.drain_ready(now_ms, skip=lambda tp: view.leader_address(*tp) is None)
            if not batches and not failed:
                wake = self._acc.next_ready_ms(now_ms)
                wait_ms = 100 if wake is None else max(0, wake - now_ms)
                # Partitions without a leader: retry after the metadata backoff.
                if wake is not None and wait_ms == 0:
                    self._metadata.mark_stale()
                    wait_ms = self.retry_backoff_ms
                self._cond.wait(min(wait_ms, 100) / 1000)
                return
            for batch in batches:
                self._sticky.batch_closed(batch.topic, batch.partition, view.partition_count(batch.topic) or 1)
            if failed:
                self._cond.notify_all()
        for batch, error in failed:
            batch.result.complete(-1, -1, error)
        by_leader: dict[str, list[ProducerBatch]] = collections.defaultdict(list)
        for batch in batches:
            address = view.leader_address(batch.topic, batch.partition)
            if address is None:  # the metadata changed since drain
                with self._cond:
                    self._acc.unsent(batch)
                self._metadata.mark_stale()
                continue
            by_leader[address].append(batch)
        for address, leader_batches in by_leader.items():
            for request_batches in _split_by_size(leader_batches, limits.MAX_REQUEST_BYTES - 64 * 1024):
                self._send_request(address, request_batches)

    def _send_request(self, address: str, batches: list[ProducerBatch]) -> None:
        request = broker_pb2.ProduceRequest(
            acks=self.acks,  # type: ignore[arg-type]  # an Acks enum value
            timeout_ms=self.request_timeout_ms,
            partitions=[
                broker_pb2.PartitionProduceData(topic=b.topic, partition=b.partition, batch=b.to_proto())
                for b in batches
            ],
        )
        pending = _ProduceRequest(address, batches, _now_ms())
        with self._cond:
            self._requests.add(pending)
            self._stats["requests_sent"] += 1
            self._stats["batches_sent"] += len(batches)
            for batch in batches:
                batch.attempts += 1
                self._stats["records_sent"] += batch.record_count
                self._stats["bytes_sent"] += batch.size_bytes
        try:
            call = self._connections.broker(address).Produce.future(
                request, timeout=self.request_timeout_ms / 1000 + 5
            )
        except (grpc.RpcError, ClosedError) as exc:
            with self._cond:
                self._requests.discard(pending)
            self._handle_failure(batches, exc if isinstance(exc, SemelError) else rpc_error(exc, address, "produce"))
            return
        pending.call = call
        call.add_done_callback(lambda f: self._on_response(pending, f))

    def _cancel_requests_to_moved_leaders(self, now_ms: int) -> None:
        """A request that waits long while metadata names another leader for one of its
        partitions (its broker was paused, cut off, fenced) is cancelled and retried there,
        instead of waiting out request_timeout_ms. Its outcome is unknown."""
        with self._cond:
            old = [r for r in self._requests if now_ms - r.sent_ms >= STALLED_REQUEST_MS and not r.leader_moved]
        if not old:
            return
        self._metadata.mark_stale_if_older_than(STALLED_REQUEST_MS)
        view = self._metadata.view
        moved = []
        with self._cond:
            for request in old:
                leaders = {view.leader_address(b.topic, b.partition) for b in request.batches}
                if request.call is not None and any(a is not None and a != request.address for a in leaders):
                    request.leader_moved = True
                    moved.append(request)
        for request in moved:
            log.info("produce request to %s waited %d ms and its partitions moved; retrying at the new leader",
                     request.address, now_ms - request.sent_ms)
            request.call.cancel()

    def _on_response(self, pending: _ProduceRequest, call: grpc.Future) -> None:
        address, batches = pending.address, pending.batches
        with self._cond:
            self._requests.discard(pending)
        if pending.leader_moved and call.cancelled():
            self._metadata.mark_stale()
            self._handle_failure(batches, client_errors.NotLeaderOrFollowerError(
                f"leadership moved away from {address} while the request waited", outcome_unknown=True))
            return
        try:
            response = call.result()
        except grpc.RpcError as exc:
            error = rpc_error(exc, address, "produce")
            # A request that reached the broker may have been written (unknown outcome).
            error.outcome_unknown = exc.code() != grpc.StatusCode.UNAVAILABLE or error.outcome_unknown
            self._metadata.mark_stale()
            self._handle_failure(batches, error)
            return
        except Exception as exc:  # cancelled on close
            self._handle_failure(batches, ClosedError(f"produce request cancelled: {exc}"))
            return
        results = {(r.topic, r.partition): r for r in response.results}
        done: list[tuple[ProducerBatch, int, int, BaseException | None]] = []
        with self._cond:
            now_ms = _now_ms()
            for batch in batches:
                result = results.get(batch.tp)
                if result is None:
                    error = client_errors.error_for_code(
                        common_pb2.UNKNOWN_SERVER_ERROR, f"no result for {batch.topic}-{batch.partition} from {address}"
                    )
                    done.append((batch, -1, -1, error))
                    self._acc.complete(batch)
                    self._stats["records_failed"] += batch.record_count
                elif result.error_code == common_pb2.NONE:
                    base = result.base_offset if self.acks != broker_pb2.ACKS_NONE else -1
                    done.append((batch, base, result.log_append_time_ms, None))
                    self._acc.complete(batch)
                    self._stats["records_acked"] += batch.record_count
                    self._stats["batches_acked"] += 1
                else:
                    error = client_errors.error_for_code(
                        result.error_code, result.error_message, context=f"produce to {batch.topic}-{batch.partition}"
                    )
                    if result.error_code in client_errors.METADATA_REFRESH_CODES:
                        self._metadata.mark_stale()
                    final = self._retry_or_fail(batch, error, now_ms)
                    if final is not None:
                        done.append((batch, -1, -1, final))
            self._cond.notify_all()
        for batch, base, append_ms, error in done:
            batch.result.complete(base, append_ms, error)

    def _handle_failure(self, batches: list[ProducerBatch], error: SemelError) -> None:
        done = []
        with self._cond:
            now_ms = _now_ms()
            for batch in batches:
                final = self._retry_or_fail(batch, error, now_ms)
                if final is not None:
                    done.append((batch, final))
            self._cond.notify_all()
        for batch, final in done:
            batch.result.complete(-1, -1, final)

    def _retry_or_fail(self, batch: ProducerBatch, error: SemelError, now_ms: int) -> BaseException | None:
        """Caller holds the lock. Re-enqueues a retriable failure; returns the final error otherwise."""
        batch.outcome_unknown = batch.outcome_unknown or error.outcome_unknown
        retry_at = now_ms + self._backoff_ms(batch.attempts)
        if error.retriable and not self._sender_stop and retry_at - batch.created_ms < self.delivery_timeout_ms:
            log.debug("retrying %s-%s after %s", batch.topic, batch.partition, error)
            self._acc.reenqueue(batch, retry_at)
            self._stats["batch_retries"] += 1
            return None
        self._acc.complete(batch)
        self._stats["records_failed"] += batch.record_count
        if error.retriable:
            timeout = self._timeout_error(batch)
            timeout.__cause__ = error
            return timeout
        return error

    def _timeout_error(self, batch: ProducerBatch) -> DeliveryTimeoutError:
        return DeliveryTimeoutError(
            f"{batch.record_count} record(s) to {batch.topic}-{batch.partition} not acknowledged within "
            f"delivery_timeout_ms={self.delivery_timeout_ms} after {batch.attempts} attempt(s)",
            outcome_unknown=batch.outcome_unknown,
        )


@dataclasses.dataclass(slots=True, eq=False)
class _ProduceRequest:
    """One produce RPC in flight (the sender may cancel it when its leader moved)."""

    address: str
    batches: list[ProducerBatch]
    sent_ms: int
    call: Any = None
    leader_moved: bool = False


def _adapt_callback(callback: Callable[[RecordMetadata | None, BaseException | None], Any]) -> Callable[[RecordFuture], Any]:
    def done(future: RecordFuture) -> None:
        error = future.exception(0)
        callback(None if error else future.result(0), error)

    return done


def _split_by_size(batches: list[ProducerBatch], max_bytes: int) -> Iterable[list[ProducerBatch]]:
    current: list[ProducerBatch] = []
    size = 0
    for batch in batches:
        if current and size + batch.size_bytes > max_bytes:
            yield current
            current, size = [], 0
        current.append(batch)
        size += batch.size_bytes
    if current:
        yield current


# ======================================================================================
# Consumer
# ======================================================================================
OFFSET_RESET_POLICIES = ("earliest", "latest", "none")
_EARLIEST = -2
_LATEST = -1


class Consumer(_ClientBase):
    """Reads assigned partitions (no consumer groups yet). Not thread-safe: one thread polls."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        auto_offset_reset: str = "latest",
        isolation_level: str = "read_uncommitted",
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS_DEFAULT,
        fetch_min_bytes: int = 1,
        fetch_max_bytes: int = FETCH_MAX_BYTES_DEFAULT,
        max_partition_fetch_bytes: int = FETCH_PARTITION_MAX_BYTES_DEFAULT,
        max_poll_records: int = MAX_POLL_RECORDS_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        retry_backoff_max_ms: int = RETRY_BACKOFF_MAX_MS_DEFAULT,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS_DEFAULT,
    ) -> None:
        if auto_offset_reset not in OFFSET_RESET_POLICIES:
            raise ConfigError(f"auto_offset_reset must be one of {', '.join(OFFSET_RESET_POLICIES)}")
        levels = {"read_uncommitted": broker_pb2.READ_UNCOMMITTED, "read_committed": broker_pb2.READ_COMMITTED}
        if isolation_level not in levels:
            raise ConfigError("isolation_level must be read_uncommitted or read_committed")
        if fetch_max_bytes > limits.MAX_FETCH_BYTES or fetch_max_bytes < 1 or max_poll_records < 1:
            raise ConfigError(f"fetch_max_bytes must be in 1..{limits.MAX_FETCH_BYTES}, max_poll_records >= 1")
        super().__init__(bootstrap, request_timeout_ms, retry_backoff_ms, retry_backoff_max_ms, metadata_max_age_ms)
        self.auto_offset_reset = auto_offset_reset
        self.isolation_level = levels[isolation_level]
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.max_poll_records = max_poll_records
        self._assignment: list[TopicPartition] = []
        self._fetch_position: dict[TopicPartition, int] = {}   # next offset to fetch
        self._pending_reset: dict[TopicPartition, int] = {}    # tp -> _EARLIEST / _LATEST
        self._buffer: collections.deque[ConsumerRecord] = collections.deque()
        self._backoff_until_ms: dict[str, int] = {}            # leader address -> ms
        self._high_watermarks: dict[TopicPartition, int] = {}
        self._closed = False

    # --- assignment and positions -----------------------------------------------------
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these (topic, partition) pairs from now on (replaces the assignment)."""
        new = [(str(t), int(p)) for t, p in partitions]
        self._assignment = new
        keep = set(new)
        self._fetch_position = {tp: o for tp, o in self._fetch_position.items() if tp in keep}
        self._pending_reset = {tp: o for tp, o in self._pending_reset.items() if tp in keep}
        self._buffer = collections.deque(r for r in self._buffer if (r.topic, r.partition) in keep)
        self._metadata.add_topics({t for t, _ in new})

    def assignment(self) -> list[TopicPartition]:
        return list(self._assignment)

    def _check_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._assignment:
            raise client_errors.ClientError(f"{tp[0]}-{tp[1]} is not assigned to this consumer")

    def _drop_buffered(self, tp: TopicPartition) -> None:
        self._buffer = collections.deque(r for r in self._buffer if (r.topic, r.partition) != tp)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        self._check_assigned(tp)
        if offset < 0:
            raise ConfigError("offset must be >= 0 (use seek_to_beginning / seek_to_end)")
        self._drop_buffered(tp)
        self._pending_reset.pop(tp, None)
        self._fetch_position[tp] = offset

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._request_reset(partitions, _EARLIEST)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._request_reset(partitions, _LATEST)

    def _request_reset(self, partitions: Iterable[TopicPartition] | None, where: int) -> None:
        for tp in list(self._assignment if partitions is None else partitions):
            tp = (tp[0], tp[1])
            self._check_assigned(tp)
            self._drop_buffered(tp)
            self._fetch_position.pop(tp, None)
            self._pending_reset[tp] = where

    def position(self, topic: str, partition: int, timeout_ms: int = 30_000) -> int:
        """The offset of the next record poll() returns for this partition."""
        tp = (topic, partition)
        self._check_assigned(tp)
        for record in self._buffer:
            if (record.topic, record.partition) == tp:
                return record.offset
        deadline = _now_ms() + timeout_ms
        while tp not in self._fetch_position:
            self._resolve_positions(deadline)
            if tp not in self._fetch_position and _now_ms() >= deadline:
                raise client_errors.RequestTimedOutError(f"position of {topic}-{partition} unknown")
        return self._fetch_position[tp]

    def high_watermark(self, topic: str, partition: int) -> int | None:
        """The high watermark seen in the last fetch of this partition (None before)."""
        return self._high_watermarks.get((topic, partition))

    # --- polling --------------------------------------------------------------------
    def poll(self, timeout_ms: int = 1000) -> list[ConsumerRecord]:
        """Records after the current positions, waiting up to `timeout_ms` for some."""
        if self._closed:
            raise ClosedError("poll() after close()")
        if not self._assignment:
            raise client_errors.ClientError("poll() without an assignment: call assign() first")
        deadline = _now_ms() + max(0, timeout_ms)
        while True:
            if self._buffer:
                return self._take_buffered()
            self._resolve_positions(deadline)
            self._fetch_once(deadline)
            if self._buffer:
                return self._take_buffered()
            if _now_ms() >= deadline:
                return []

    def _take_buffered(self) -> list[ConsumerRecord]:
        count = min(self.max_poll_records, len(self._buffer))
        return [self._buffer.popleft() for _ in range(count)]

    def _maybe_refresh(self, deadline_ms: int) -> None:
        now_ms = _now_ms()
        if self._metadata.needs_refresh(now_ms):
            try:
                self._metadata.refresh(timeout_ms=max(1, min(self.request_timeout_ms, deadline_ms - now_ms)))
            except client_errors.BrokerUnreachableError:
                if _now_ms() >= deadline_ms:
                    raise

    def _resolve_positions(self, deadline_ms: int) -> None:
        self._maybe_refresh(deadline_ms)
        for tp in self._assignment:
            if tp not in self._fetch_position and tp not in self._pending_reset:
                where = {"earliest": _EARLIEST, "latest": _LATEST}.get(self.auto_offset_reset)
                if where is None:
                    raise client_errors.ClientError(
                        f"no position for {tp[0]}-{tp[1]} and auto_offset_reset=none: call seek()"
                    )
                self._pending_reset[tp] = where
        if not self._pending_reset:
            return
        by_leader: dict[str, list[TopicPartition]] = collections.defaultdict(list)
        for tp in self._pending_reset:
            address = self._metadata.view.leader_address(*tp)
            if address is None:
                self._metadata.mark_stale()
                continue
            by_leader[address].append(tp)
        for address, tps in by_leader.items():
            request = broker_pb2.ListOffsetsRequest(
                partitions=[
                    broker_pb2.ListOffsetsPartition(topic=t, partition=p, timestamp_ms=self._pending_reset[(t, p)])
                    for t, p in tps
                ],
                isolation_level=self.isolation_level,
            )
            try:
                response = self._connections.broker(address).ListOffsets(
                    request, timeout=max(0.1, min(self.request_timeout_ms, deadline_ms - _now_ms()) / 1000)
                )
            except grpc.RpcError:
                self._metadata.mark_stale()
                continue
            for result in response.results:
                tp = (result.topic, result.partition)
                if result.error_code == common_pb2.NONE:
                    self._pending_reset.pop(tp, None)
                    self._fetch_position[tp] = result.offset
                elif client_errors.is_retriable(result.error_code):
                    self._metadata.mark_stale()
                else:
                    raise client_errors.error_for_code(
                        result.error_code, result.error_message, context=f"list offsets of {tp[0]}-{tp[1]}"
                    )
        if self._pending_reset and _now_ms() < deadline_ms:
            time.sleep(min(self.retry_backoff_ms, max(0, deadline_ms - _now_ms())) / 1000)

    def _fetch_once(self, deadline_ms: int) -> None:
        now_ms = _now_ms()
        by_leader: dict[str, list[TopicPartition]] = collections.defaultdict(list)
        for tp in self._assignment:
            if tp not in self._fetch_position:
                continue
            address = self._metadata.view.leader_address(*tp)
            if address is None:
                self._metadata.mark_stale()
                continue
            if self._backoff_until_ms.get(address, 0) > now_ms:
                continue
            by_leader[address].append(tp)
        if not by_leader:
            remaining = deadline_ms - now_ms
            if remaining > 0:
                time.sleep(min(remaining, self.retry_backoff_ms) / 1000)
            return
        max_wait_ms = max(0, min(self.fetch_max_wait_ms, deadline_ms - now_ms))
        calls = []
        for address, tps in by_leader.items():
            request = broker_pb2.FetchRequest(
                partitions=[
                    broker_pb2.FetchPartition(
                        topic=t,
                        partition=p,
                        fetch_offset=self._fetch_position[(t, p)],
                        max_bytes=self.max_partition_fetch_bytes,
                        current_leader_epoch=-1,
                    )
                    for t, p in tps
                ],
                max_wait_ms=max_wait_ms,
                min_bytes=self.fetch_min_bytes,
                max_bytes=self.fetch_max_bytes,
                isolation_level=self.isolation_level,
            )
            timeout_s = (max_wait_ms + self.request_timeout_ms) / 1000
            calls.append((address, self._connections.broker(address).Fetch.future(request, timeout=timeout_s)))
        # A fetch is only a read: past the poll deadline (plus the long-poll bound) a silent
        # leader (paused, partitioned) is abandoned and backed off rather than awaited.
        wait_until_ms = deadline_ms + FETCH_ABANDON_SLACK_MS
        for address, call in calls:
            try:
                response = call.result(timeout=max(0.0, (wait_until_ms - _now_ms()) / 1000))
            except grpc.FutureTimeoutError:
                call.cancel()
                log.debug("fetch from %s: no answer by the poll deadline; backing off", address)
                self._metadata.mark_stale()
                self._backoff_until_ms[address] = _now_ms() + self.retry_backoff_ms
                continue
            except grpc.RpcError as exc:
                log.debug("fetch from %s failed: %s", address, rpc_error(exc, address, "fetch"))
                self._metadata.mark_stale()
                self._backoff_until_ms[address] = _now_ms() + self.retry_backoff_ms
                continue
            self._backoff_until_ms.pop(address, None)
            for result in response.results:
                self._handle_fetch_result(result)

    def _handle_fetch_result(self, result: broker_pb2.FetchPartitionResult) -> None:
        tp = (result.topic, result.partition)
        position = self._fetch_position.get(tp)
        if position is None or tp not in self._assignment:
            return  # seeked or unassigned meanwhile
        if result.error_code == common_pb2.OFFSET_OUT_OF_RANGE:
            if self.auto_offset_reset == "none":
                raise client_errors.OffsetOutOfRangeError(
                    f"offset {position} of {tp[0]}-{tp[1]} is out of range "
                    f"(log start {result.log_start_offset}, high watermark {result.high_watermark}) "
                    "and auto_offset_reset=none"
                )
            log.info("offset %s of %s-%s out of range; resetting to %s", position, *tp, self.auto_offset_reset)
            self._fetch_position.pop(tp, None)
            self._pending_reset[tp] = _EARLIEST if self.auto_offset_reset == "earliest" else _LATEST
            return
        if result.error_code != common_pb2.NONE:
            if client_errors.is_retriable(result.error_code):
                self._metadata.mark_stale()
                return
            raise client_errors.error_for_code(
                result.error_code, result.error_message, context=f"fetch {tp[0]}-{tp[1]}"
            )
        self._high_watermarks[tp] = result.high_watermark
        next_position = position
        for batch in result.batches:
            records = decode_batch(tp[0], tp[1], batch, min_offset=position)
            self._buffer.extend(records)
            next_position = max(next_position, batch.base_offset + batch.last_offset_delta + 1)
        if result.next_fetch_offset > next_position:
            next_position = result.next_fetch_offset
        self._fetch_position[tp] = next_position

    def close(self) -> None:
        self._closed = True
        self._connections.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ======================================================================================
# Admin
# ======================================================================================


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionDescription:
    partition: int
    leader_id: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    high_watermark: int
    log_start_offset: int
    last_stable_offset: int
    error_code: int


@dataclasses.dataclass(frozen=True, slots=True)
class TopicDescription:
    name: str
    topic_id: str
    internal: bool
    configs: dict[str, str]
    partitions: tuple[PartitionDescription, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerDescription:
    broker_id: int
    host: str
    port: int
    fenced: bool
    broker_epoch: int
    is_controller: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterDescription:
    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerDescription, ...]
    metadata_version: int
    quorum_voters: tuple[str, ...]
    quorum_leader: str


class Admin(_ClientBase):
    """Topic and cluster administration. Calls go to any broker; retriable errors are retried
    until `timeout_ms`."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        retry_backoff_max_ms: int = RETRY_BACKOFF_MAX_MS_DEFAULT,
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS_DEFAULT,
    ) -> None:
        super().__init__(bootstrap, request_timeout_ms, retry_backoff_ms, retry_backoff_max_ms, METADATA_MAX_AGE_MS_DEFAULT)
        self.connect_timeout_ms = connect_timeout_ms
        self._answered = False  # some broker answered once: from then on, wait the full timeout

    def _call(self, method: str, request: Any, timeout_ms: int | None) -> Any:
        """One admin RPC to the first broker that answers, retrying transport errors."""
        start = _now_ms()
        deadline = start + (timeout_ms or self.request_timeout_ms)
        attempts = 0
        while True:
            attempts += 1
            last: SemelError | None = None
            for address in self._metadata.candidates():
                remaining = deadline - _now_ms()
                try:
                    response = getattr(self._connections.admin(address), method)(
                        request, timeout=max(0.05, remaining / 1000)
                    )
                    self._answered = True
                    return response
                except grpc.RpcError as exc:
                    last = rpc_error(exc, address, method)
                    if not last.retriable:
                        raise last from None
            never_answered = not self._answered and _now_ms() - start >= self.connect_timeout_ms
            if never_answered or _now_ms() + self._backoff_ms(attempts) >= deadline:
                assert last is not None
                if isinstance(last, client_errors.BrokerUnreachableError):
                    raise client_errors.BrokerUnreachableError(
                        f"cannot reach any broker ({last.message})"
                    ) from None
                raise last
            time.sleep(self._backoff_ms(attempts) / 1000)

    def _with_retries(self, call: Callable[[int], Any], timeout_ms: int | None) -> Any:
        """Repeats `call(remaining_ms)` while it raises a retriable SemelError, until the deadline."""
        deadline = _now_ms() + (timeout_ms or self.request_timeout_ms)
        attempts = 0
        while True:
            attempts += 1
            try:
                return call(max(1, deadline - _now_ms()))
            except SemelError as exc:
                if not exc.retriable or _now_ms() + self._backoff_ms(attempts) >= deadline:
                    raise
                time.sleep(self._backoff_ms(attempts) / 1000)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 0,
        configs: dict[str, str] | None = None,
        timeout_ms: int | None = None,
        validate_only: bool = False,
    ) -> None:
        """Create one topic; raises TopicAlreadyExistsError, InvalidTopicNameError, ..."""
        topic = admin_pb2.NewTopic(
            name=name, partitions=partitions, replication_factor=replication_factor, configs=configs or {}
        )
        timeout = timeout_ms or self.request_timeout_ms

        def attempt(remaining_ms: int) -> None:
            request = admin_pb2.CreateTopicsRequest(topics=[topic], validate_only=validate_only, timeout_ms=remaining_ms)
            response = self._call("CreateTopics", request, remaining_ms)
            _raise_topic_results(response.results, "create topic")

        self._with_retries(attempt, timeout)

    def delete_topic(self, name: str, timeout_ms: int | None = None) -> None:
        timeout = timeout_ms or self.request_timeout_ms

        def attempt(remaining_ms: int) -> None:
            request = admin_pb2.DeleteTopicsRequest(names=[name], timeout_ms=remaining_ms)
            response = self._call("DeleteTopics", request, remaining_ms)
            _raise_topic_results(response.results, "delete topic")

        self._with_retries(attempt, timeout)

    def describe_topics(
        self, names: Sequence[str] | None = None, include_internal: bool = False, timeout_ms: int | None = None
    ) -> list[TopicDescription]:
        """Descriptions of the named topics (every topic when None); raises for a missing named topic."""
        request = admin_pb2.DescribeTopicsRequest(names=list(names or []), include_internal=include_internal)
        response = self._call("DescribeTopics", request, timeout_ms)
        out = []
        for topic in response.topics:
            if topic.error_code != common_pb2.NONE:
                raise client_errors.error_for_code(topic.error_code, context=f"describe topic {topic.name!r}")
            out.append(
                TopicDescription(
                    topic.name,
                    topic.topic_id,
                    topic.internal,
                    dict(topic.configs),
                    tuple(
                        PartitionDescription(
                            p.partition, p.leader_id, p.leader_epoch, tuple(p.replicas), tuple(p.isr),
                            p.high_watermark, p.log_start_offset, p.last_stable_offset, p.error_code,
                        )
                        for p in sorted(topic.partitions, key=lambda p: p.partition)
                    ),
                )
            )
        return sorted(out, key=lambda t: t.name)

    def list_topics(self, include_internal: bool = False, timeout_ms: int | None = None) -> list[str]:
        return [t.name for t in self.describe_topics(None, include_internal, timeout_ms)]

    def describe_cluster(self, timeout_ms: int | None = None) -> ClusterDescription:
        response = self._call("DescribeCluster", admin_pb2.DescribeClusterRequest(), timeout_ms)
        return ClusterDescription(
            response.cluster_id,
            response.controller_id,
            tuple(
                BrokerDescription(b.broker_id, b.host, b.port, b.fenced, b.broker_epoch, b.is_controller)
                for b in sorted(response.brokers, key=lambda b: b.broker_id)
            ),
            response.metadata_version,
            tuple(response.quorum_voters),
            response.quorum_leader,
        )

    def metadata(self, topics: Sequence[str] | None = None, timeout_ms: int | None = None) -> ClusterView:
        """A fresh metadata view (leaders, replicas, ISR) from any broker."""
        return self._metadata.refresh(topics or [], timeout_ms)

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_topic_results(results: Sequence[admin_pb2.TopicResult], what: str) -> None:
    for result in results:
        if result.error_code != common_pb2.NONE:
            raise client_errors.error_for_code(
                result.error_code, result.error_message, context=f"{what} {result.name!r}"
            )

