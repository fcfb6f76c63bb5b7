"""What the producer, consumer and admin share: defaults (bounds), bootstrap, metadata, backoff."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from semel import limits
from semel.backoff import backoff_ms
from semel.client.errors import (
    ConfigError,
)
from semel.client.metadata import (
    ClusterView,
    Connections,
    MetadataManager,
    PartitionInfo,
    parse_bootstrap,
)
from semel.client.security import ClientSecurity
from semel.client.security import resolve as resolve_security
from semel.clock import monotonic_ms
from semel.v1 import broker_pb2

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


def _as_bytes(value: bytes | str | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def parse_acks(acks: str | int) -> broker_pb2.Acks:
    value = _ACKS.get(str(acks).lower())
    if value is None:
        raise ConfigError(f"acks must be one of all, 1 (leader), 0 (none); got {acks!r}")
    return value


class _ClientBase:
    def __init__(self, bootstrap: str | Sequence[str] | None, request_timeout_ms: int,
                 retry_backoff_ms: int, retry_backoff_max_ms: int, metadata_max_age_ms: int,
                 security: ClientSecurity | None = None) -> None:
        """`security` None: from the environment (SEMEL_TLS_CA, SEMEL_USER, ...: client_security)."""
        self.security = resolve_security(security)
        self.security.tls_credentials()  # refuses a password without TLS, unreadable files, ... at once
        self._connections = Connections(self.security.open_channel)
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

    def partitions_for(self, topic: str, timeout_ms: int | None = None,
                       unknown_topic_wait_ms: int | None = None) -> list[PartitionInfo]:
        """The partitions of `topic` (leader, replicas, ISR), waiting up to `timeout_ms` for it
        to appear (default: the producer's max_block_ms, else request_timeout_ms). With
        `unknown_topic_wait_ms`, raises UnknownTopicOrPartitionError once the brokers have said
        for that long that the topic does not exist (rather than waiting all of `timeout_ms`)."""
        if timeout_ms is None:
            timeout_ms = getattr(self, "max_block_ms", self.request_timeout_ms)
        self._metadata.wait_for_topic(topic, monotonic_ms() + timeout_ms, unknown_topic_wait_ms)
        return list(self._metadata.view.topics.get(topic, []))

    def _backoff_ms(self, attempts: int) -> int:
        return backoff_ms(attempts, self.retry_backoff_ms, self.retry_backoff_max_ms)


