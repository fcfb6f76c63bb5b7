"""Kafka protocol messages in and out, through kio (no I/O; no hand-written schemas).

A request frame (the bytes after the int32 size) starts with api_key and api_version in every
header version; `peek` reads them and the correlation id so the listener can decide before
decoding: an API or version not in `SERVED` closes the connection (Kafka does the same: it
cannot encode an answer for a version it lacks), except ApiVersions, which answers a version
it lacks with UNSUPPORTED_VERSION in its v0 layout (KIP-511) so the client retries lower.

Handlers are written once for all versions: they return plain nested dicts and lists, and
`build` fills the kio class of the negotiated version, dropping the keys that version lacks
and converting ints to what kio wants (timedeltas for `*_ms`-typed fields, `ErrorCode`
members, UUIDs). Requests are read the same way, with `getattr(request, name, default)`
for fields newer versions added.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import struct
import typing
import uuid
from typing import TYPE_CHECKING, Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i32

if TYPE_CHECKING:
    from semel.cluster.broker.principal import Principal

API_VERSIONS = 18
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
FIND_COORDINATOR = 10
CREATE_TOPICS = 19
DELETE_TOPICS = 20
INIT_PRODUCER_ID = 22
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
OFFSET_FOR_LEADER_EPOCH = 23
DESCRIBE_CONFIGS = 32
DELETE_GROUPS = 42
DESCRIBE_CLUSTER = 60
CONSUMER_GROUP_HEARTBEAT = 68
CONSUMER_GROUP_DESCRIBE = 69
ADD_PARTITIONS_TO_TXN = 24
ADD_OFFSETS_TO_TXN = 25
END_TXN = 26
TXN_OFFSET_COMMIT = 28
DESCRIBE_PRODUCERS = 61
DESCRIBE_TRANSACTIONS = 65
LIST_TRANSACTIONS = 66
CREATE_PARTITIONS = 37
ALTER_CONFIGS = 33
INCREMENTAL_ALTER_CONFIGS = 44
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36

# Answered by the connection itself (listener.py, sasl.py), not by a KafkaApis handler: they
# change the connection's state. SaslHandshake v0 is followed by raw SASL tokens (no Kafka
# header), v1 by SaslAuthenticate; SaslAuthenticate v1 adds session_lifetime_ms, v2 is flexible.
CONNECTION_APIS: dict[int, tuple[int, int]] = {
    SASL_HANDSHAKE: (0, 1),
    SASL_AUTHENTICATE: (0, 2),
}

# The transaction APIs (txn_handlers.py), in their transaction-version-1 form: AddPartitionsToTxn
# v4+ is the broker-to-broker batch and v5 is KIP-890's version 2, as EndTxn v5 and
# TxnOffsetCommit v5 are; the v4 of AddOffsetsToTxn/EndTxn/TxnOffsetCommit only add
# TRANSACTION_ABORTABLE, which Semel never answers. ListTransactions v2 (an id regex) is not served.
TRANSACTION_APIS: dict[int, tuple[int, int]] = {
    ADD_PARTITIONS_TO_TXN: (0, 3),
    ADD_OFFSETS_TO_TXN: (0, 3),
    END_TXN: (0, 3),
    TXN_OFFSET_COMMIT: (0, 3),
    DESCRIBE_PRODUCERS: (0, 0),
    DESCRIBE_TRANSACTIONS: (0, 0),
    LIST_TRANSACTIONS: (0, 1),
}

# api key -> (advertised min, served max). Only these are advertised, so clients degrade
# cleanly for everything else (docs/kafka.md has the table and why each range). Produce is
# advertised from 0 although v0-2 are refused: librdkafka gates compression on the advertised
# range (KAFKA-18659; Kafka 4.0 does the same), and kio has no v0-2 to parse them with.
ADVERTISED: dict[int, tuple[int, int]] = {
    PRODUCE: (0, 9),
    FETCH: (4, 12),
    LIST_OFFSETS: (1, 7),
    METADATA: (1, 12),
    FIND_COORDINATOR: (0, 4),
    API_VERSIONS: (0, 4),
    CREATE_TOPICS: (2, 7),
    DELETE_TOPICS: (1, 6),
    INIT_PRODUCER_ID: (0, 4),
    # commits of consumers that assign() their partitions (no group membership): v9+ is KIP-848's
    # member-epoch form, OffsetFetch v8+ the per-group layout
    OFFSET_COMMIT: (2, 8),
    OFFSET_FETCH: (1, 7),
    # the classic group protocol (group_handlers.py), flexible versions included
    JOIN_GROUP: (0, 9),
    SYNC_GROUP: (0, 5),
    HEARTBEAT: (0, 4),
    LEAVE_GROUP: (0, 5),
    # group and cluster admin (admin_handlers.py); kio has OffsetForLeaderEpoch from v2 and
    # DescribeConfigs from v1
    LIST_GROUPS: (0, 5),
    DESCRIBE_GROUPS: (0, 5),
    DELETE_GROUPS: (0, 2),
    DESCRIBE_CLUSTER: (0, 1),
    DESCRIBE_CONFIGS: (1, 4),
    OFFSET_FOR_LEADER_EPOCH: (2, 4),
    # topic administration over the Admin service's add-partitions and alter-config paths
    CREATE_PARTITIONS: (0, 3),
    ALTER_CONFIGS: (0, 2),
    INCREMENTAL_ALTER_CONFIGS: (0, 1),
    # KIP-848 over Semel's own group coordinator (consumer_group_handlers.py)
    CONSUMER_GROUP_HEARTBEAT: (0, 1),
    CONSUMER_GROUP_DESCRIBE: (0, 1),
    **TRANSACTION_APIS,
    **CONNECTION_APIS,
}
SERVED: dict[int, tuple[int, int]] = {**ADVERTISED, PRODUCE: (3, 9)}

_PEEK = struct.Struct(">hhi")  # api_key, api_version, correlation_id
PEEK_BYTES = _PEEK.size


class BadRequest(Exception):
    """A frame that cannot be served: the connection is closed (with a log line, no answer)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any  # the kio request entity of (api_key, api_version)
    # who sent it: the connection's principal when the request was read (TLS client
    # certificate, SASL, else User:ANONYMOUS); None outside a listener (unit tests)
    principal: Principal | None = None


def peek(frame: bytes) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) of a frame of at least PEEK_BYTES bytes."""
    key, version, correlation_id = _PEEK.unpack_from(frame, 0)
    return key, version, correlation_id


def is_served(api_key: int, api_version: int) -> bool:
    span = SERVED.get(api_key)
    return span is not None and span[0] <= api_version <= span[1]


def decode_request(frame: bytes, principal: Principal | None = None) -> Request:
    """The whole request, or BadRequest (unknown key or version, malformed bytes)."""
    if len(frame) < PEEK_BYTES:
        raise BadRequest(f"frame of {len(frame)} bytes is shorter than a request header")
    key, version, correlation_id = peek(frame)
    if not is_served(key, version):
        raise BadRequest(f"api key {key} version {version} is not served")
    try:
        cls = load_request_schema(key, version)
        header, used = entity_reader(cls.__header_schema__)(frame, 0)
        body, n = entity_reader(cls)(frame, used)
    except KeyError as exc:  # kio: an unknown tagged field
        raise BadRequest(f"api key {key} v{version}: unknown tagged field {exc}") from exc
    except Exception as exc:  # kio's DecodeError family, ValueError, struct.error, ...
        raise BadRequest(f"api key {key} v{version}: cannot decode: {type(exc).__name__}: {exc}") from exc
    # Bytes after the request are ignored, as Kafka does: librdkafka 2.16's Metadata v12 ends
    # with 3 of them (01 00 00) after its tagged-field section.
    return Request(key, version, correlation_id, getattr(header, "client_id", None), body, principal)


def encode_response(correlation_id: int, response: Any) -> bytes:
    """The size-prefixed frame of `response` (a kio response entity) for `correlation_id`."""
    out = io.BytesIO()
    out.write(b"\x00\x00\x00\x00")
    header_cls = type(response).__header_schema__
    entity_writer(header_cls)(out, header_cls(correlation_id=i32(correlation_id)))
    entity_writer(type(response))(out, response)
    frame = out.getbuffer()
    struct.pack_into(">i", frame, 0, len(frame) - 4)
    return bytes(frame)


def response_class(api_key: int, api_version: int) -> type:
    return load_response_schema(api_key, api_version)


def unsupported_api_versions(correlation_id: int) -> bytes:
    """ApiVersions v0 with UNSUPPORTED_VERSION and our ApiVersions range (KIP-511)."""
    cls = response_class(API_VERSIONS, 0)
    low, high = ADVERTISED[API_VERSIONS]
    resp = build(cls, {"error_code": ErrorCode.unsupported_version.value,
                       "api_keys": [{"api_key": API_VERSIONS, "min_version": low, "max_version": high}]})
    return encode_response(correlation_id, resp)


# --- building version-specific entities from plain values -------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of the kio entity `cls` from `values` (see the module docstring). Keys the
    class lacks are dropped; fields missing from `values` keep their schema default."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _convert(hints[f.name], values[f.name])
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, *_rest) = typing.get_args(hint)
        return tuple(_convert(item, v) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            return build(hint, value)
        if issubclass(hint, ErrorCode):
            return value if isinstance(value, ErrorCode) else ErrorCode(value)
        if issubclass(hint, datetime.timedelta) and isinstance(value, int):
            return datetime.timedelta(milliseconds=value)
        if hint is uuid.UUID and isinstance(value, str):
            return uuid.UUID(value)
    return value


def timedelta_ms(value: Any, default: int = 0) -> int:
    """Milliseconds of a kio timedelta field (requests carry `timeout`, `max_wait` ...)."""
    if value is None:
        return default
    if isinstance(value, datetime.timedelta):
        return int(value / datetime.timedelta(milliseconds=1))
    return int(value)
