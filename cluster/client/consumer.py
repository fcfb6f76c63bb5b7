"""The consumer: reads assigned partitions from their leaders (no consumer groups yet)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence

import grpc
from semel import limits
from semel.client import errors as client_errors
from semel.client.security import ClientSecurity
from semel.client.base import (
    FETCH_ABANDON_SLACK_MS,
    FETCH_MAX_BYTES_DEFAULT,
    FETCH_MAX_WAIT_MS_DEFAULT,
    FETCH_PARTITION_MAX_BYTES_DEFAULT,
    MAX_POLL_RECORDS_DEFAULT,
    METADATA_MAX_AGE_MS_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT,
    RETRY_BACKOFF_MAX_MS_DEFAULT,
    RETRY_BACKOFF_MS_DEFAULT,
    _ClientBase,
    log,
)
from semel.client.errors import (
    ClosedError,
    ConfigError,
)
from semel.client.metadata import (
    rpc_error,
)
from semel.client.records import (
    ConsumerRecord,
    decode_batch,
)
from semel.clock import monotonic_ms
from semel.v1 import broker_pb2, common_pb2

OFFSET_RESET_POLICIES = ("earliest", "latest", "none")
_EARLIEST = -2
_LATEST = -1


class AssignConsumer(_ClientBase):
    """Reads the partitions given to `assign()`; `semel.client.Consumer` adds consumer groups on
    top. Not thread-safe: one thread polls."""

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
        security: ClientSecurity | None = None,
    ) -> None:
        if auto_offset_reset not in OFFSET_RESET_POLICIES:
            raise ConfigError(f"auto_offset_reset must be one of {', '.join(OFFSET_RESET_POLICIES)}")
        levels = {"read_uncommitted": broker_pb2.READ_UNCOMMITTED, "read_committed": broker_pb2.READ_COMMITTED}
        if isolation_level not in levels:
            raise ConfigError("isolation_level must be read_uncommitted or read_committed")
        if fetch_max_bytes > limits.MAX_FETCH_BYTES or fetch_max_bytes < 1 or max_poll_records < 1:
            raise ConfigError(f"fetch_max_bytes must be in 1..{limits.MAX_FETCH_BYTES}, max_poll_records >= 1")
        super().__init__(bootstrap, request_timeout_ms, retry_backoff_ms, retry_backoff_max_ms, metadata_max_age_ms,
                         security)
        self.auto_offset_reset = auto_offset_reset
        self.isolation_level = levels[isolation_level]
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.max_poll_records = max_poll_records
        self._assignment: list[tuple[str, int]] = []
        self._fetch_position: dict[tuple[str, int], int] = {}   # next offset to fetch
        self._pending_reset: dict[tuple[str, int], int] = {}    # tp -> _EARLIEST / _LATEST
        self._buffer: collections.deque[ConsumerRecord] = collections.deque()
        self._backoff_until_ms: dict[str, int] = {}            # leader address -> ms
        self._high_watermarks: dict[tuple[str, int], int] = {}
        # a corrupt batch met by a fetch, raised by poll() once the records before it are returned
        self._corrupt: dict[tuple[str, int], client_errors.CorruptRecordError] = {}
        self._closed = False

    # --- assignment and positions -----------------------------------------------------
    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Read exactly these (topic, partition) pairs from now on (replaces the assignment)."""
        new = [(str(t), int(p)) for t, p in partitions]
        self._assignment = new
        keep = set(new)
        self._fetch_position = {tp: o for tp, o in self._fetch_position.items() if tp in keep}
        self._pending_reset = {tp: o for tp, o in self._pending_reset.items() if tp in keep}
        self._corrupt = {tp: e for tp, e in self._corrupt.items() if tp in keep}
        self._buffer = collections.deque(r for r in self._buffer if (r.topic, r.partition) in keep)
        self._metadata.add_topics({t for t, _ in new})

    def assignment(self) -> list[tuple[str, int]]:
        return list(self._assignment)

    def _check_assigned(self, tp: tuple[str, int]) -> None:
        if tp not in self._assignment:
            raise client_errors.ClientError(f"{tp[0]}-{tp[1]} is not assigned to this consumer")

    def _drop_buffered(self, tp: tuple[str, int]) -> None:
        self._buffer = collections.deque(r for r in self._buffer if (r.topic, r.partition) != tp)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        self._check_assigned(tp)
        if offset < 0:
            raise ConfigError("offset must be >= 0 (use seek_to_beginning / seek_to_end)")
        self._drop_buffered(tp)
        self._pending_reset.pop(tp, None)
        self._corrupt.pop(tp, None)
        self._fetch_position[tp] = offset

    def seek_to_beginning(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        self._request_reset(partitions, _EARLIEST)

    def seek_to_end(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        self._request_reset(partitions, _LATEST)

    def _request_reset(self, partitions: Iterable[tuple[str, int]] | None, where: int) -> None:
        for tp in list(self._assignment if partitions is None else partitions):
            tp = (tp[0], tp[1])
            self._check_assigned(tp)
            self._drop_buffered(tp)
            self._corrupt.pop(tp, None)
            self._fetch_position.pop(tp, None)
            self._pending_reset[tp] = where

    def position(self, topic: str, partition: int, timeout_ms: int = 30_000) -> int:
        """The offset of the next record poll() returns for this partition."""
        tp = (topic, partition)
        self._check_assigned(tp)
        for record in self._buffer:
            if (record.topic, record.partition) == tp:
                return record.offset
        deadline = monotonic_ms() + timeout_ms
        while tp not in self._fetch_position:
            self._resolve_positions(deadline)
            if tp not in self._fetch_position and monotonic_ms() >= deadline:
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
        deadline = monotonic_ms() + max(0, timeout_ms)
        while True:
            if self._buffer:
                return self._take_buffered()
            self._raise_corrupt()
            self._resolve_positions(deadline)
            self._fetch_once(deadline)
            if self._buffer:
                return self._take_buffered()
            self._raise_corrupt()
            if monotonic_ms() >= deadline:
                return []

    def _raise_corrupt(self) -> None:
        """A corrupt batch met by a fetch, once the records before it were returned. The
        position stays at the batch: the next poll fetches and raises again unless the
        application seeks past it."""
        if self._corrupt:
            tp = next(iter(self._corrupt))
            raise self._corrupt.pop(tp)

    def _take_buffered(self) -> list[ConsumerRecord]:
        count = min(self.max_poll_records, len(self._buffer))
        return [self._buffer.popleft() for _ in range(count)]

    def _maybe_refresh(self, deadline_ms: int) -> None:
        now_ms = monotonic_ms()
        if self._metadata.needs_refresh(now_ms):
            try:
                self._metadata.refresh(timeout_ms=max(1, min(self.request_timeout_ms, deadline_ms - now_ms)))
            except client_errors.BrokerUnreachableError:
                if monotonic_ms() >= deadline_ms:
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
        by_leader: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
        for tp in self._pending_reset:
            address = self._metadata.view.leader_address(*tp)
            if address is None:
                self._metadata.mark_stale()
                continue
            by_leader[address].append(tp)
        for address, tps in by_leader.items():
            request = broker_pb2.ListOffsetsRequest(
                partitions=[
                    broker_pb2.ListOffsetsPartition(topic=t, partition=p, timestamp_ms=self._pending_reset[(t, p)],
                                                    current_leader_epoch=self._leader_epoch((t, p)))
                    for t, p in tps
                ],
                isolation_level=self.isolation_level,
            )
            try:
                response = self._connections.broker(address).ListOffsets(
                    request, timeout=max(0.1, min(self.request_timeout_ms, deadline_ms - monotonic_ms()) / 1000)
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
        if self._pending_reset and monotonic_ms() < deadline_ms:
            time.sleep(min(self.retry_backoff_ms, max(0, deadline_ms - monotonic_ms())) / 1000)

    def _leader_epoch(self, tp: tuple[str, int]) -> int:
        """The leader epoch our metadata has for `tp`, sent with each fetch and list-offsets
        (KIP-320): a broker that still believes in an older leadership answers
        UNKNOWN_LEADER_EPOCH (refresh, retry) instead of serving its shorter log."""
        info = self._metadata.view.partition(*tp)
        return info.leader_epoch if info is not None else -1

    def _fetch_once(self, deadline_ms: int) -> None:
        now_ms = monotonic_ms()
        by_leader: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
        for tp in self._assignment:
            if tp not in self._fetch_position or tp in self._corrupt:
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
                        current_leader_epoch=self._leader_epoch((t, p)),
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
                response = call.result(timeout=max(0.0, (wait_until_ms - monotonic_ms()) / 1000))
            except grpc.FutureTimeoutError:
                call.cancel()
                log.debug("fetch from %s: no answer by the poll deadline; backing off", address)
                self._metadata.mark_stale()
                self._backoff_until_ms[address] = monotonic_ms() + self.retry_backoff_ms
                continue
            except grpc.RpcError as exc:
                log.debug("fetch from %s failed: %s", address, rpc_error(exc, address, "fetch"))
                self._metadata.mark_stale()
                self._backoff_until_ms[address] = monotonic_ms() + self.retry_backoff_ms
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
            try:
                records = decode_batch(tp[0], tp[1], batch, min_offset=position)
            except client_errors.CorruptRecordError as exc:
                self._fetch_position[tp] = max(next_position, batch.base_offset)
                self._corrupt[tp] = exc
                return
            self._buffer.extend(records)
            next_position = max(next_position, batch.base_offset + batch.last_offset_delta + 1)
        if result.next_fetch_offset > next_position:
            next_position = result.next_fetch_offset
        self._fetch_position[tp] = next_position

    def close(self) -> None:
        self._closed = True
        self._connections.close()

    def __enter__(self) -> AssignConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


