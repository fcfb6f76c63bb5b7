"""The producer: batches records per partition and sends them from a background thread.

See the module docstring of `semel.cluster.client` for ordering, and docs/client.md.
"""

from __future__ import annotations

import collections
import dataclasses
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
)
from semel.cluster.client_base import (
    BATCH_BYTES_DEFAULT,
    BUFFER_BYTES_DEFAULT,
    DELIVERY_TIMEOUT_MS_DEFAULT,
    LINGER_MS_DEFAULT,
    MAX_BLOCK_MS_DEFAULT,
    MAX_IN_FLIGHT_DEFAULT,
    MAX_IN_FLIGHT_MAX,
    METADATA_MAX_AGE_MS_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT,
    RETRY_BACKOFF_MAX_MS_DEFAULT,
    RETRY_BACKOFF_MS_DEFAULT,
    STALLED_REQUEST_MS,
    _as_bytes,
    _ClientBase,
    _now_ms,
    log,
    parse_acks,
)
from semel.cluster.client_errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    DeliveryTimeoutError,
    SemelError,
)
from semel.cluster.client_metadata import (
    rpc_error,
)
from semel.cluster.client_partitioner import StickyPartitioner, partition_for_key
from semel.cluster.client_records import (
    Header,
    RecordMetadata,
)
from semel.v1 import broker_pb2, common_pb2


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
            headers = [(str(k), v if type(v) is bytes else (_as_bytes(v, "header value") or b"")) for k, v in headers]
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
                    if acc.busy(topic, partition) or view.leader_address(topic, partition) is None:
                        # Adaptive stickiness: prefer a partition that can be sent at once
                        # (leader known, in-flight limit not reached) over waiting a round trip.
                        partition = self._sticky.partition(
                            topic,
                            count,
                            lambda p: view.leader_address(topic, p) is not None and not acc.busy(topic, p),
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


