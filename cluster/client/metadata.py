"""The client's view of the cluster: channels to brokers and a cache of who leads what.

`Connections` keeps one gRPC channel per broker address, with explicit message-size
limits (`semel.limits.MAX_REQUEST_BYTES` both ways; gRPC's 4 MB default would reject big
fetches) and no SO_REUSEPORT surprises.

`ClusterView` is the pure part: it applies a `MetadataResponse` and answers "leader of
(topic, partition)", "partition count of topic". `MetadataManager` refreshes it from any
known broker (bootstrap addresses first on start, then the brokers the metadata lists),
with exponential backoff between failed attempts, and after a caller marks it stale
(NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, a broken
connection, ...).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import grpc
from semel import limits
from semel.backoff import backoff_ms
from semel.client import errors as client_errors
from semel.clock import monotonic_ms
from semel.v1 import admin_pb2_grpc, broker_pb2, broker_pb2_grpc, common_pb2

_Stub = TypeVar("_Stub")

BOOTSTRAP_ENV = "SEMEL_BOOTSTRAP"
METADATA_ATTEMPT_TIMEOUT_MS = 3_000   # one Metadata RPC to one broker


def parse_bootstrap(bootstrap: str | Sequence[str] | None) -> list[str]:
    """'h1:p1,h2:p2' (or a list, or None for $SEMEL_BOOTSTRAP) -> ['h1:p1', 'h2:p2']."""
    if bootstrap is None:
        bootstrap = os.environ.get(BOOTSTRAP_ENV, "")
        if not bootstrap:
            raise client_errors.ConfigError(
                f"no bootstrap address: pass --bootstrap HOST:PORT or set {BOOTSTRAP_ENV}"
            )
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        problem = bootstrap_problem(item)
        if problem:
            raise client_errors.ConfigError(f"bad bootstrap address {item!r}: {problem}")
        out.append(item)
    if not out:
        raise client_errors.ConfigError("empty bootstrap address list")
    return out


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def bootstrap_problem(item: str) -> str:
    """Why `item` is not a HOST:PORT gRPC can dial ("" when it is). Checked before any
    connection, so `http://host:port` or a bare IPv6 address fails at once rather than after
    gRPC's resolver gave up (seconds later, as "unknown host")."""
    scheme, sep, rest = item.partition("://")
    if sep:
        return f"no scheme: drop {scheme}:// and use {rest.rstrip('/')!r}" if rest else "expected HOST:PORT"
    host, sep, port = item.rpartition(":")
    if not sep or not host:
        return "expected HOST:PORT"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"port must be a number in 1..65535, got {port!r}"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        return ""
    if ":" in host:
        return "an IPv6 address goes in brackets: [ADDRESS]:PORT"
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        return f"{host!r} is not a host name or IP address"
    return ""


CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", limits.MAX_REQUEST_BYTES),
    ("grpc.max_receive_message_length", limits.MAX_REQUEST_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    # Reconnect quickly after a broker restarts (defaults back off up to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


class Connections:
    """One channel (and stubs) per broker address; thread-safe."""

    def __init__(self, open_channel: Callable[[str, Sequence[tuple[str, Any]]], grpc.Channel] | None = None) -> None:
        """`open_channel(address, options)`: TLS and credentials (`ClientSecurity.open_channel`);
        None: plaintext."""
        self._open = open_channel or (lambda address, options: grpc.insecure_channel(address, options=options))
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._broker_stubs: dict[str, broker_pb2_grpc.BrokerStub] = {}
        self._admin_stubs: dict[str, admin_pb2_grpc.AdminStub] = {}
        self._other_stubs: dict[tuple[str, Callable[[grpc.Channel], Any]], Any] = {}
        self._closed = False

    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self._closed:
                raise client_errors.ClosedError("client is closed")
            channel = self._open(address, CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    def broker(self, address: str) -> broker_pb2_grpc.BrokerStub:
        with self._lock:
            stub = self._broker_stubs.get(address)
            if stub is None:
                stub = self._broker_stubs[address] = broker_pb2_grpc.BrokerStub(self._channel(address))
            return stub

    def admin(self, address: str) -> admin_pb2_grpc.AdminStub:
        with self._lock:
            stub = self._admin_stubs.get(address)
            if stub is None:
                stub = self._admin_stubs[address] = admin_pb2_grpc.AdminStub(self._channel(address))
            return stub

    def stub(self, address: str, stub_class: Callable[[grpc.Channel], _Stub]) -> _Stub:
        """A cached stub of any generated service (Transactions, Groups, ...) on `address`."""
        with self._lock:
            key = (address, stub_class)
            stub = self._other_stubs.get(key)
            if stub is None:
                stub = self._other_stubs[key] = stub_class(self._channel(address))
            return stub

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._other_stubs.clear()
            channels, self._channels = self._channels, {}
            self._broker_stubs.clear()
            self._admin_stubs.clear()
        for channel in channels.values():
            channel.close()


def rpc_error(exc: grpc.RpcError, address: str, what: str) -> client_errors.SemelError:
    """A transport-level gRPC failure as a client error (codes per the broker contract)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return client_errors.BrokerUnreachableError(f"{address}: {_short_reason(details)}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return client_errors.RequestTimedOutError(f"{what}: no answer from {address} in time", outcome_unknown=True)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if details and "larger than max" in details:
            return client_errors.error_for_code(common_pb2.REQUEST_TOO_LARGE, f"{what}: {details}")
        return client_errors.error_for_code(common_pb2.RESOURCE_EXHAUSTED, f"{what}: {address}: {details}")
    if code == grpc.StatusCode.CANCELLED:
        if details in _LOCAL_CANCEL_DETAILS:  # our own close() or cancel()
            return client_errors.ClosedError(f"{what}: cancelled ({details})")
        # The broker's side reset the call (a broker stopping cancels what it still serves):
        # retriable like a broken connection; the caller decides whether the outcome is known.
        return client_errors.BrokerUnreachableError(f"{address}: the broker cancelled the request ({details})")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return client_errors.error_for_code(common_pb2.INVALID_REQUEST, f"{what}: {address} does not implement it")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return client_errors.AuthenticationError(f"{what}: {address}: not authenticated: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        error = client_errors.AuthorizationError(f"{what}: {address}: permission denied: {details}")
        refused = _error_code_trailer(exc)
        if refused is not None:  # e.g. CLUSTER_AUTHORIZATION_FAILED: callers can tell which
            error.code = refused
        return error
    return client_errors.error_for_code(common_pb2.UNKNOWN_SERVER_ERROR, f"{what}: {address}: {code}: {details}")


ERROR_CODE_TRAILER = "x-semel-error-code"  # the ErrorCode name of an authorization refusal (broker security.py)


def _error_code_trailer(exc: grpc.RpcError) -> common_pb2.ErrorCode | None:
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for item in trailers or ():
        if item.key == ERROR_CODE_TRAILER:
            try:
                return cast(common_pb2.ErrorCode, common_pb2.ErrorCode.Value(str(item.value)))
            except ValueError:
                return None  # a code from a newer broker
    return None


# grpc's details for a call this process cancelled (channel.close(), call.cancel()).
_LOCAL_CANCEL_DETAILS = frozenset({"Channel closed!", "Locally cancelled by application!"})


def _short_reason(details: str | None) -> str:
    """gRPC's connection error details, shortened to what a person needs."""
    text = details or "unavailable"
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("DNS resolution failed", "unknown host"),
        ("errors resolving", "unknown host"),
        ("Deadline Exceeded", "timed out"),
        ("Socket closed", "connection closed"),
        ("Connection reset", "connection reset"),
        ("shutting down", "broker shutting down"),
        ("andshake", "TLS handshake failed (is the broker's port TLS, and its certificate signed by the given CA?)"),
        ("SSL", "TLS failure (do the TLS settings match the broker's?)"),
    ):
        if needle in text:
            return short
    return text


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionInfo:
    topic: str
    partition: int
    leader_id: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error_code: common_pb2.ErrorCode


class ClusterView:
    """The last metadata the brokers gave us (pure). Never goes back in time: a partition keeps
    its newer leader epoch, a topic is not forgotten on an answer older than the one it came
    from (KIP-320; a broker cut off from the quorum answers with what it last knew)."""

    def __init__(self) -> None:
        self._reset()
        # counts finished updates: a cache of answers drawn from this view (the producer's
        # sticky-partition check) is valid while it is unchanged
        self.updates = 0

    def _reset(self) -> None:
        self.cluster_id = ""
        self.controller_id = -1
        self.brokers: dict[int, str] = {}            # broker id -> "host:port"
        self.fenced: set[int] = set()
        self.topics: dict[str, list[PartitionInfo]] = {}
        self.topic_ids: dict[str, str] = {}
        self.topic_versions: dict[str, int] = {}  # metadata version of the answer a topic was last taken from
        self.topic_errors: dict[str, common_pb2.ErrorCode] = {}
        self.version = -1
        self.ignored_stale = 0  # partitions/topics the last update kept because the answer was older

    def update(self, response: broker_pb2.MetadataResponse, requested: Iterable[str] | None) -> None:
        try:
            self._update(response, requested)
        finally:
            self.updates += 1

    def _update(self, response: broker_pb2.MetadataResponse, requested: Iterable[str] | None) -> None:
        self.ignored_stale = 0
        if self.cluster_id and response.cluster_id and response.cluster_id != self.cluster_id:
            self._reset()  # another cluster behind the same addresses: nothing we knew applies
        self.cluster_id = response.cluster_id
        self.controller_id = response.controller_id
        self.version = response.metadata_version
        if response.brokers:
            self.brokers = {b.broker_id: f"{b.host}:{b.port}" for b in response.brokers}
            self.fenced = {b.broker_id for b in response.brokers if b.fenced}
        seen = set()
        for topic in response.topics:
            seen.add(topic.name)
            if topic.error_code != common_pb2.NONE:
                if self._is_stale_answer(topic.name, response.metadata_version):
                    continue
                self._forget(topic.name)
                self.topic_errors[topic.name] = topic.error_code
                continue
            self.topic_versions[topic.name] = response.metadata_version
            self.topic_errors.pop(topic.name, None)
            fresh = sorted(
                (
                    PartitionInfo(
                        topic.name, p.partition, p.leader_id, p.leader_epoch, tuple(p.replicas), tuple(p.isr), p.error_code
                    )
                    for p in topic.partitions
                ),
                key=lambda info: info.partition,
            )
            if self.topic_ids.get(topic.name) == topic.topic_id:
                fresh = self._never_older(self.topics.get(topic.name, []), fresh)
            self.topic_ids[topic.name] = topic.topic_id
            self.topics[topic.name] = fresh
        if requested is not None:
            for name in requested:
                if name not in seen and not self._is_stale_answer(name, response.metadata_version):
                    self._forget(name)
                    self.topic_errors[name] = common_pb2.UNKNOWN_TOPIC_OR_PARTITION
        else:
            for name in list(self.topics):
                if name not in seen and not self._is_stale_answer(name, response.metadata_version):
                    self._forget(name)

    def _forget(self, topic: str) -> None:
        self.topics.pop(topic, None)
        self.topic_ids.pop(topic, None)
        self.topic_versions.pop(topic, None)

    def _is_stale_answer(self, topic: str, version: int) -> bool:
        """A broker that does not know a topic we learned at a newer metadata version is behind
        (cut off from the quorum, just restarted): keep the topic rather than forget it."""
        known_at = self.topic_versions.get(topic)
        if known_at is not None and version < known_at and topic in self.topics:
            self.ignored_stale += 1
            return True
        return False

    def _never_older(self, known: list[PartitionInfo], fresh: list[PartitionInfo]) -> list[PartitionInfo]:
        """KIP-320: a broker cut off from the metadata quorum still answers with the leaders it
        last knew; a partition whose leader epoch went backwards keeps what we had (same topic id:
        a re-created topic starts its epochs again and is taken as it comes)."""
        by_partition = {info.partition: info for info in known}
        merged = []
        for info in fresh:
            old = by_partition.get(info.partition)
            if old is not None and info.leader_epoch < old.leader_epoch:
                self.ignored_stale += 1
                merged.append(old)
            else:
                merged.append(info)
        return merged

    def partition_count(self, topic: str) -> int | None:
        partitions = self.topics.get(topic)
        return len(partitions) if partitions else None

    def partition(self, topic: str, partition: int) -> PartitionInfo | None:
        partitions = self.topics.get(topic)
        if not partitions or not 0 <= partition < len(partitions):
            return None
        info = partitions[partition]
        return info if info.partition == partition else None

    def leader_address(self, topic: str, partition: int) -> str | None:
        info = self.partition(topic, partition)
        if info is None or info.leader_id < 0:
            return None
        return self.brokers.get(info.leader_id)


class MetadataManager:
    """Refreshes a `ClusterView` on demand, with backoff; thread-safe."""

    def __init__(
        self,
        bootstrap: Sequence[str],
        connections: Connections,
        request_timeout_ms: int,
        retry_backoff_ms: int,
        retry_backoff_max_ms: int,
        metadata_max_age_ms: int,
    ) -> None:
        self.bootstrap = list(bootstrap)
        self.connections = connections
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self.metadata_max_age_ms = metadata_max_age_ms
        self.view = ClusterView()
        self._lock = threading.Lock()          # serialises refreshes
        self._topics: set[str] = set()         # topics this client cares about
        self._all_topics = False
        self._stale = True
        self._last_refresh_ms = 0
        self._failures = 0
        self._next_attempt_ms = 0
        self.last_error: client_errors.SemelError | None = None

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    def add_topics(self, topics: Iterable[str]) -> None:
        new = set(topics) - self._topics
        if new:
            self._topics |= new
            self._stale = True

    def mark_stale(self) -> None:
        self._stale = True

    def mark_stale_if_older_than(self, age_ms: int) -> None:
        """Ask for a refresh unless the view is younger than `age_ms` (rate-limits refreshes
        triggered by slow requests)."""
        if monotonic_ms() - self._last_refresh_ms >= age_ms:
            self._stale = True

    def needs_refresh(self, now_ms: int) -> bool:
        due = self._stale or now_ms - self._last_refresh_ms >= self.metadata_max_age_ms
        return due and now_ms >= self._next_attempt_ms

    def candidates(self) -> list[str]:
        known = [addr for bid, addr in self.view.brokers.items() if bid not in self.view.fenced]
        random.shuffle(known)
        return known + [addr for addr in self.bootstrap if addr not in known]

    def refresh(self, topics: Iterable[str] | None = None, timeout_ms: int | None = None) -> ClusterView:
        """Ask one broker after another for metadata; raises BrokerUnreachableError if none answers."""
        wanted = sorted(self._topics if topics is None else set(topics))
        request = broker_pb2.MetadataRequest(topics=wanted)
        # Per broker asked: a paused or partitioned broker must not hold the refresh (and the
        # producer's sender thread) for a whole request timeout while others could answer.
        timeout_s = min(
            timeout_ms if timeout_ms is not None else self.request_timeout_ms, METADATA_ATTEMPT_TIMEOUT_MS
        ) / 1000
        errors = []
        with self._lock:
            for address in self.candidates():
                try:
                    response = self.connections.broker(address).Metadata(request, timeout=timeout_s)
                except grpc.RpcError as exc:
                    error = rpc_error(exc, address, "metadata")
                    if isinstance(error, client_errors.AuthorizationError):
                        raise error  # fatal (e.g. TOPIC_AUTHORIZATION_FAILED): another broker answers the same
                    errors.append(str(error.message))
                    continue
                self.view.update(response, wanted if wanted else None)
                now_ms = monotonic_ms()
                # an answer older than what we know (a stale broker) is worth asking another broker about
                self._stale = self.view.ignored_stale > 0 or any(
                    info.leader_id < 0 or info.error_code != common_pb2.NONE
                    for name in wanted
                    for info in self.view.topics.get(name, ())
                )
                self._last_refresh_ms = now_ms
                self._failures = 0 if not self._stale else self._failures + 1
                self._next_attempt_ms = now_ms + (self._backoff_ms() if self._stale else 0)
                self.last_error = None
                return self.view
            self._failures += 1
            self._next_attempt_ms = monotonic_ms() + self._backoff_ms()
            self.last_error = client_errors.BrokerUnreachableError(
                "cannot reach any broker (" + "; ".join(errors) + ")"
            )
            raise self.last_error

    def _backoff_ms(self) -> int:
        # the first failure already doubles (attempt 2): a refresh that failed is not retried at once
        backoff = backoff_ms(self._failures + 1, self.retry_backoff_ms, self.retry_backoff_max_ms)
        return int(backoff * random.uniform(0.8, 1.2))

    def wait_for_topic(self, topic: str, deadline_ms: int, unknown_topic_wait_ms: int | None = None) -> int:
        """Partition count of `topic`, refreshing until `deadline_ms`; raises when it never shows up.

        With `unknown_topic_wait_ms`, brokers answering that the topic does not exist for that
        long end the wait early (UnknownTopicOrPartitionError): long enough for a topic created
        just now to reach every broker's metadata, short enough for a typo to fail at once.
        A topic without a leader yet (being created, or auto-created) keeps the full wait."""
        self.add_topics([topic])
        count = self.view.partition_count(topic)
        unknown_since_ms: int | None = None
        while count is None:
            now_ms = monotonic_ms()
            if self.view.topic_errors.get(topic) != common_pb2.UNKNOWN_TOPIC_OR_PARTITION:
                unknown_since_ms = None
            elif unknown_since_ms is None:
                unknown_since_ms = now_ms
            elif unknown_topic_wait_ms is not None and now_ms - unknown_since_ms >= unknown_topic_wait_ms:
                raise client_errors.UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
            if unknown_since_ms is not None and unknown_topic_wait_ms is not None:
                deadline_ms = min(deadline_ms, unknown_since_ms + unknown_topic_wait_ms + 1)
            if now_ms >= deadline_ms:
                code = self.view.topic_errors.get(topic)
                if self.last_error is not None and code is None:
                    raise self.last_error
                raise client_errors.UnknownTopicOrPartitionError(
                    f"topic {topic!r} does not exist" if code == common_pb2.UNKNOWN_TOPIC_OR_PARTITION
                    else f"topic {topic!r} not present in metadata"
                )
            if now_ms < self._next_attempt_ms:
                time.sleep(min(self._next_attempt_ms, deadline_ms) / 1000 - now_ms / 1000)
                continue
            try:
                self.refresh(timeout_ms=max(1, min(self.request_timeout_ms, deadline_ms - now_ms)))
            except client_errors.BrokerUnreachableError:
                pass
            count = self.view.partition_count(topic)
            if count is None:
                self._next_attempt_ms = monotonic_ms() + self._backoff_ms()
                self._failures += 1
        return count


