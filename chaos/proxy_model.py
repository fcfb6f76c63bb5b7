"""Pure core of the Toxiproxy-compatible fault proxy: request validation and JSON shapes.

Nothing here touches sockets, clocks or randomness. The HTTP shell (`proxy_http`) decodes a
request body, calls the parsers below, and turns an `ApiError` into Toxiproxy's error
envelope `{"error": message, "status": code}`. The messages and status codes follow
Shopify/toxiproxy's v2 API (see docs/chaos-proxy.md for the few deliberate differences).

Invariants kept by the parsers:
- a `ToxicSpec` always carries every attribute of its type (missing ones default to 0),
  every attribute is a non-negative int, and `0 <= toxicity <= 1`;
- a `ProxySpec` always has a non-empty name and syntactically valid `host:port` addresses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

# --- bounds (kept with the proxy: it is test tooling, not a broker component) ----------
# The HTTP shell and the data path import these; nothing else hard-codes them.
API_BODY_BYTES_MAX = 1024 * 1024         # one API request body
API_HEADER_BYTES_MAX = 16 * 1024         # request line + headers of one API request
API_HEADERS_COUNT_MAX = 100
API_CONNECTIONS_MAX = 64                 # concurrent API (HTTP) connections
PROXIES_MAX = 1024                       # proxies per server
TOXICS_PER_PROXY_MAX = 64
CONNECTIONS_PER_PROXY_MAX = 4096         # live client connections per proxy
READ_CHUNK_BYTES = 64 * 1024             # one read from a socket = one chunk through the chain
LINK_QUEUE_CHUNKS = 64                   # chunks buffered per direction before reading pauses
UPSTREAM_CONNECT_TIMEOUT_MS = 5000       # dialing the upstream for a new client connection
SHUTDOWN_TIMEOUT_MS = 5000               # graceful shutdown of the whole server

# Reported by GET /version: the upstream API level we implement, tagged as ours.
VERSION = "2.12.0-semel.1"


class ApiError(Exception):
    """A request the API refuses; `status` is the HTTP status code sent back."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def bad_body(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


def missing_field(detail: str) -> ApiError:
    return ApiError(f"missing required field: {detail}", 400)


PROXY_NOT_FOUND = ApiError("proxy not found", 404)
PROXY_EXISTS = ApiError("proxy already exists", 409)
INVALID_STREAM = ApiError("stream was invalid, can be either upstream or downstream", 400)
INVALID_TOXIC_TYPE = ApiError("invalid toxic type", 400)
TOXIC_EXISTS = ApiError("toxic already exists", 409)
TOXIC_NOT_FOUND = ApiError("toxic not found", 404)


class Stream(Enum):
    """Direction of a toxic: upstream = client -> server, downstream = server -> client."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


# Every toxic type we implement and its attributes (all integers, unit in the comment).
TOXIC_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),                           # ms, ms
    "bandwidth": ("rate",),                                     # KB/s (1 KB = 1000 bytes)
    "slow_close": ("delay",),                                   # ms
    "timeout": ("timeout",),                                    # ms; 0 = never close
    "reset_peer": ("timeout",),                                 # ms
    "slicer": ("average_size", "size_variation", "delay"),      # bytes, bytes, us
    "limit_data": ("bytes",),                                   # bytes
}


@dataclass(frozen=True, slots=True)
class ToxicSpec:
    name: str
    type: str
    stream: Stream
    toxicity: float
    attributes: Mapping[str, int] = field(default_factory=dict)

    def attr(self, key: str) -> int:
        return self.attributes[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream.value,
            "toxicity": self.toxicity,
        }


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """What a client asked for; `listen` may have port 0 until the proxy is bound."""

    name: str
    listen: str
    upstream: str
    enabled: bool


DEFAULT_LISTEN = "127.0.0.1:0"


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_body(str(exc)) from None


def parse_address(text: str, what: str) -> Address:
    """`host:port` or `[v6]:port`; an empty host means every interface (as Go's net.Listen)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ApiError(f"invalid {what} address {text!r}: expected host:port", 400)
    port = int(port_text)
    if port > 65535:
        raise ApiError(f"invalid {what} address {text!r}: port out of range", 400)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Address(host, port)


def _expect_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise bad_body("expected a JSON object")
    return data


def _optional_str(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_body(f"field {key!r} must be a string")
    return value


def _optional_bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_body(f"field {key!r} must be a boolean")
    return value


def parse_new_proxy(data: Any, where: str = "") -> ProxySpec:
    """Body of POST /proxies (or one element of POST /populate, `where` = " at proxy N")."""
    obj = _expect_object(data)
    name = _optional_str(obj, "name", "")
    upstream = _optional_str(obj, "upstream", "")
    listen = _optional_str(obj, "listen", "") or DEFAULT_LISTEN
    enabled = _optional_bool(obj, "enabled", True)
    if not name:
        raise missing_field("name" + where)
    if not upstream:
        raise missing_field("upstream" + where)
    parse_address(listen, "listen")
    parse_address(upstream, "upstream")
    return ProxySpec(name=name, listen=listen, upstream=upstream, enabled=enabled)


def parse_proxy_update(data: Any, current: ProxySpec) -> ProxySpec:
    """Body of POST/PATCH /proxies/{name}: absent fields keep their current value."""
    obj = _expect_object(data)
    listen = _optional_str(obj, "listen", current.listen) or current.listen
    upstream = _optional_str(obj, "upstream", current.upstream) or current.upstream
    enabled = _optional_bool(obj, "enabled", current.enabled)
    parse_address(listen, "listen")
    parse_address(upstream, "upstream")
    return ProxySpec(name=current.name, listen=listen, upstream=upstream, enabled=enabled)


def parse_populate(data: Any) -> list[ProxySpec]:
    if not isinstance(data, list):
        raise bad_body("expected a JSON array of proxies")
    specs = [parse_new_proxy(item, f" at proxy {i + 1}") for i, item in enumerate(data)]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ApiError(f"duplicate proxy name {spec.name!r}", 400)
        seen.add(spec.name)
    return specs


def _parse_toxicity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_body("field 'toxicity' must be a number")
    if not 0.0 <= value <= 1.0:
        raise bad_body("field 'toxicity' must be between 0 and 1")
    return float(value)


def _parse_attributes(toxic_type: str, given: Any, base: Mapping[str, int]) -> dict[str, int]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise bad_body("field 'attributes' must be an object")
    attrs = dict(base)
    for key in TOXIC_ATTRIBUTES[toxic_type]:   # unknown keys are ignored, as upstream does
        if key not in given:
            continue
        value = given[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_body(f"attribute {key!r} of a {toxic_type} toxic must be an integer")
        if value < 0:
            raise bad_body(f"attribute {key!r} of a {toxic_type} toxic must not be negative")
        attrs[key] = value
    if toxic_type == "slicer":
        if attrs["average_size"] <= 0:
            raise bad_body("slicer average_size must be positive")
        if attrs["size_variation"] >= attrs["average_size"]:
            raise bad_body("slicer size_variation must be less than average_size")
    return attrs


def parse_new_toxic(data: Any, existing_names: set[str]) -> ToxicSpec:
    """Body of POST /proxies/{name}/toxics, checked in upstream's order."""
    obj = _expect_object(data)
    stream_text = _optional_str(obj, "stream", "downstream") or "downstream"
    try:
        stream = Stream(stream_text.lower())
    except ValueError:
        raise INVALID_STREAM from None
    toxic_type = _optional_str(obj, "type", "")
    name = _optional_str(obj, "name", "") or f"{toxic_type}_{stream.value}"
    if toxic_type not in TOXIC_ATTRIBUTES:
        raise INVALID_TOXIC_TYPE
    if name in existing_names:
        raise TOXIC_EXISTS
    toxicity = _parse_toxicity(obj.get("toxicity", 1.0))
    zero = {key: 0 for key in TOXIC_ATTRIBUTES[toxic_type]}
    attrs = _parse_attributes(toxic_type, obj.get("attributes"), zero)
    return ToxicSpec(name=name, type=toxic_type, stream=stream, toxicity=toxicity, attributes=attrs)


def parse_toxic_update(data: Any, current: ToxicSpec) -> ToxicSpec:
    """Body of POST/PATCH /proxies/{name}/toxics/{toxic}: attributes merge, type/stream stay."""
    obj = _expect_object(data)
    toxicity = _parse_toxicity(obj["toxicity"]) if "toxicity" in obj else current.toxicity
    attrs = _parse_attributes(current.type, obj.get("attributes"), current.attributes)
    return ToxicSpec(
        name=current.name, type=current.type, stream=current.stream, toxicity=toxicity, attributes=attrs
    )


def proxy_json(spec: ProxySpec, toxics: list[ToxicSpec]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "listen": spec.listen,
        "upstream": spec.upstream,
        "enabled": spec.enabled,
        "toxics": [toxic.to_json() for toxic in toxics],
    }
