"""The proxies, their toxics, and the HTTP/1.1 shell that serves Toxiproxy's v2 API.

`ProxyCollection` owns every `Proxy` and applies API operations (one at a time, under one
asyncio lock, like upstream's collection mutex). A `Proxy` owns its listener, its two
ordered toxic chains (upstream, downstream) and its live `Connection`s; each change to a
chain is pushed to every live link of that direction at once (see `proxy_link`).

`Router` maps (method, path, body) to a status and a JSON value; `ApiHttpServer` is the
smallest HTTP/1.1 server that the toxiproxy clients need: Content-Length bodies,
keep-alive, bounded header and body sizes, no chunked uploads. Everything runs on one
event loop, so no state here is shared across threads.
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from semel.chaos.proxy_link import Connection
from semel.chaos.proxy_model import (
    API_BODY_BYTES_MAX,
    API_CONNECTIONS_MAX,
    API_HEADERS_COUNT_MAX,
    CONNECTIONS_PER_PROXY_MAX,
    PROXIES_MAX,
    PROXY_EXISTS,
    PROXY_NOT_FOUND,
    TOXIC_NOT_FOUND,
    TOXICS_PER_PROXY_MAX,
    VERSION,
    Address,
    ApiError,
    ProxySpec,
    Stream,
    ToxicSpec,
    decode_json,
    parse_address,
    parse_new_proxy,
    parse_new_toxic,
    parse_populate,
    parse_proxy_update,
    parse_toxic_update,
    proxy_json,
)

log = logging.getLogger("semel.chaos.proxy")


def _bind(listen: str) -> socket.socket:
    """Bind synchronously so a busy port is reported by the API call that asked for it."""
    addr = parse_address(listen, "listen")
    try:
        infos = socket.getaddrinfo(addr.host or None, addr.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, sock_type, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, sock_type, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ApiError(f"listen tcp {listen}: {exc.strerror or exc}", 500) from None
    return sock


class Proxy:
    def __init__(self, spec: ProxySpec, rng: random.Random) -> None:
        self.name = spec.name
        self.listen = spec.listen
        self.upstream = spec.upstream
        self.enabled = False
        self.rng = rng
        self.chains: dict[Stream, list[ToxicSpec]] = {Stream.UPSTREAM: [], Stream.DOWNSTREAM: []}
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._generation = 0      # bumped on start/stop: stale accepts are dropped
        self._accepted = 0

    # --- views
    def spec(self) -> ProxySpec:
        return ProxySpec(name=self.name, listen=self.listen, upstream=self.upstream, enabled=self.enabled)

    def toxics(self) -> list[ToxicSpec]:
        return self.chains[Stream.UPSTREAM] + self.chains[Stream.DOWNSTREAM]

    def find_toxic(self, name: str) -> ToxicSpec | None:
        return next((t for t in self.toxics() if t.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return proxy_json(self.spec(), self.toxics())

    # --- listener
    async def start(self) -> None:
        if self.enabled:
            return
        sock = _bind(self.listen)
        self._generation += 1
        callback = functools.partial(self._on_client, self._generation)
        self._server = await asyncio.start_server(callback, sock=sock)
        host, port = sock.getsockname()[:2]
        self.listen = str(Address(host, port))
        self.enabled = True
        log.info("proxy %s listening on %s -> %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        """Close the listener and drop every live connection, as upstream's disable."""
        if not self.enabled:
            return
        self.enabled = False
        self._generation += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        if server is not None:
            await server.wait_closed()
        log.info("proxy %s stopped", self.name)

    async def _on_client(self, generation: int, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if generation != self._generation or len(self.connections) >= CONNECTIONS_PER_PROXY_MAX:
            writer.transport.abort()
            return
        self._accepted += 1
        conn = Connection(f"{self.name}#{self._accepted}", asyncio.get_running_loop(), self.rng,
                          reader, writer)
        self.connections.add(conn)
        try:
            await conn.run(parse_address(self.upstream, "upstream"), self._chains_snapshot)
        except Exception:   # a bug must not go unnoticed, nor leave sockets open
            log.exception("proxy %s: connection %s failed", self.name, conn.name)
            conn.abort()
        finally:
            self.connections.discard(conn)

    def _chains_snapshot(self) -> dict[Stream, list[ToxicSpec]]:
        return {stream: list(chain) for stream, chain in self.chains.items()}

    # --- toxics (pushed to every live link of the toxic's direction)
    def add_toxic(self, spec: ToxicSpec) -> None:
        self.chains[spec.stream].append(spec)
        for conn in list(self.connections):
            link = conn.links.get(spec.stream)
            if link is not None:
                link.add(spec)

    def update_toxic(self, spec: ToxicSpec) -> None:
        chain = self.chains[spec.stream]
        chain[[t.name for t in chain].index(spec.name)] = spec
        for conn in list(self.connections):
            link = conn.links.get(spec.stream)
            if link is not None:
                link.replace(spec)

    def remove_toxic(self, spec: ToxicSpec) -> None:
        self.chains[spec.stream] = [t for t in self.chains[spec.stream] if t.name != spec.name]
        for conn in list(self.connections):
            link = conn.links.get(spec.stream)
            if link is not None:
                link.remove(spec.name)

    def remove_all_toxics(self) -> None:
        for spec in self.toxics():
            self.remove_toxic(spec)


class ProxyCollection:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise PROXY_NOT_FOUND
        return proxy

    async def create(self, spec: ProxySpec) -> Proxy:
        if spec.name in self.proxies:
            raise PROXY_EXISTS
        if len(self.proxies) >= PROXIES_MAX:
            raise ApiError(f"too many proxies (max {PROXIES_MAX})", 400)
        proxy = Proxy(spec, self.rng)
        if spec.enabled:
            await proxy.start()
        self.proxies[spec.name] = proxy
        return proxy

    async def update(self, name: str, data: Any) -> Proxy:
        proxy = self.get(name)
        new = parse_proxy_update(data, proxy.spec())
        if new.listen != proxy.listen or new.upstream != proxy.upstream:
            await proxy.stop()
            proxy.listen, proxy.upstream = new.listen, new.upstream
        if new.enabled:
            await proxy.start()
        else:
            await proxy.stop()
        return proxy

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def populate(self, specs: list[ProxySpec]) -> list[Proxy]:
        result = []
        for spec in specs:
            existing = self.proxies.get(spec.name)
            if existing is not None:
                if existing.listen == spec.listen and existing.upstream == spec.upstream:
                    result.append(existing)
                    continue
                await self.delete(spec.name)
            result.append(await self.create(spec))
        return result

    async def reset(self) -> None:
        for proxy in self.proxies.values():
            await proxy.start()
            proxy.remove_all_toxics()

    async def shutdown(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()


# --- routing ------------------------------------------------------------------------------

Reply = tuple[int, Any]   # (status, JSON value or None for an empty body)


class Router:
    """Toxiproxy v2 routes. Each handler returns (status, JSON) or raises ApiError."""

    def __init__(self, collection: ProxyCollection) -> None:
        self.collection = collection

    async def handle(self, method: str, target: str, body: bytes) -> Reply:
        path = urlsplit(target).path
        parts = [unquote(part) for part in path.strip("/").split("/")]
        async with self.collection.lock:
            try:
                return await self._dispatch(method, parts, body)
            except ApiError as err:
                return err.status, err.to_json()

    async def _dispatch(self, method: str, parts: list[str], body: bytes) -> Reply:
        routes: dict[tuple[str, ...], dict[str, Callable[..., Awaitable[Reply]]]] = {
            ("reset",): {"POST": self._reset},
            ("version",): {"GET": self._version},
            ("populate",): {"POST": self._populate},
            ("proxies",): {"GET": self._proxy_index, "POST": self._proxy_create},
            ("proxies", "*"): {"GET": self._proxy_show, "POST": self._proxy_update,
                               "PATCH": self._proxy_update, "DELETE": self._proxy_delete},
            ("proxies", "*", "toxics"): {"GET": self._toxic_index, "POST": self._toxic_create},
            ("proxies", "*", "toxics", "*"): {"GET": self._toxic_show, "POST": self._toxic_update,
                                              "PATCH": self._toxic_update, "DELETE": self._toxic_delete},
        }
        shape = tuple("*" if i % 2 == 1 else part for i, part in enumerate(parts))
        if len(parts) in (2, 4) and parts[0] == "proxies" and not all(parts[1::2]):
            raise ApiError("not found", 404)
        methods = routes.get(shape)
        if methods is None:
            raise ApiError("not found", 404)
        handler = methods.get(method)
        if handler is None:
            raise ApiError(f"method {method} not allowed", 405)
        args = parts[1::2]
        return await handler(body, *args)

    async def _reset(self, body: bytes) -> Reply:
        await self.collection.reset()
        return 204, None

    async def _version(self, body: bytes) -> Reply:
        return 200, {"version": VERSION}

    async def _populate(self, body: bytes) -> Reply:
        try:
            specs = parse_populate(decode_json(body))
            proxies = await self.collection.populate(specs)
        except ApiError as err:
            return err.status, {**err.to_json(), "proxies": []}
        return 201, {"proxies": [proxy.to_json() for proxy in proxies]}

    async def _proxy_index(self, body: bytes) -> Reply:
        return 200, {name: proxy.to_json() for name, proxy in self.collection.proxies.items()}

    async def _proxy_create(self, body: bytes) -> Reply:
        proxy = await self.collection.create(parse_new_proxy(decode_json(body)))
        return 201, proxy.to_json()

    async def _proxy_show(self, body: bytes, name: str) -> Reply:
        return 200, self.collection.get(name).to_json()

    async def _proxy_update(self, body: bytes, name: str) -> Reply:
        return 200, (await self.collection.update(name, decode_json(body) or {})).to_json()

    async def _proxy_delete(self, body: bytes, name: str) -> Reply:
        await self.collection.delete(name)
        return 204, None

    async def _toxic_index(self, body: bytes, name: str) -> Reply:
        return 200, [toxic.to_json() for toxic in self.collection.get(name).toxics()]

    async def _toxic_create(self, body: bytes, name: str) -> Reply:
        proxy = self.collection.get(name)
        data = decode_json(body)
        spec = parse_new_toxic(data, {toxic.name for toxic in proxy.toxics()})
        if len(proxy.toxics()) >= TOXICS_PER_PROXY_MAX:
            raise ApiError(f"too many toxics (max {TOXICS_PER_PROXY_MAX})", 400)
        proxy.add_toxic(spec)
        return 200, spec.to_json()

    def _find_toxic(self, name: str, toxic_name: str) -> tuple[Proxy, ToxicSpec]:
        proxy = self.collection.get(name)
        toxic = proxy.find_toxic(toxic_name)
        if toxic is None:
            raise TOXIC_NOT_FOUND
        return proxy, toxic

    async def _toxic_show(self, body: bytes, name: str, toxic_name: str) -> Reply:
        return 200, self._find_toxic(name, toxic_name)[1].to_json()

    async def _toxic_update(self, body: bytes, name: str, toxic_name: str) -> Reply:
        proxy, current = self._find_toxic(name, toxic_name)
        new = parse_toxic_update(decode_json(body) or {}, current)
        proxy.update_toxic(new)
        return 200, new.to_json()

    async def _toxic_delete(self, body: bytes, name: str, toxic_name: str) -> Reply:
        proxy, toxic = self._find_toxic(name, toxic_name)
        proxy.remove_toxic(toxic)
        return 204, None


# --- HTTP/1.1 shell -------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _render(status: int, payload: Any, keep_alive: bool) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}"]
    body = b""
    if status != 204:
        body = json.dumps(payload).encode() + b"\n"
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ApiHttpServer:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.writers: set[asyncio.StreamWriter] = set()

    def close_all(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.writers) >= API_CONNECTIONS_MAX:
            writer.transport.abort()
            return
        self.writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await self._read_request(reader, writer)
            except _BadRequest as bad:
                writer.write(_render(bad.status, ApiError(bad.message, bad.status).to_json(), False))
                await writer.drain()
                return
            if request is None:
                return
            method, target, version, headers, body = request
            keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            if headers.get("user-agent", "").startswith("Mozilla/"):
                # Upstream refuses browsers so a web page cannot drive the proxy (CSRF).
                status, payload = 403, ApiError("User agent not allowed", 403).to_json()
            else:
                try:
                    status, payload = await self.router.handle(method, target, body)
                except Exception as exc:   # a bug here must not kill the API server
                    log.exception("API handler failed")
                    status, payload = 500, ApiError(f"internal error: {exc}", 500).to_json()
            writer.write(_render(status, payload, keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                            ) -> tuple[str, str, str, dict[str, str], bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise _BadRequest(400, "incomplete request head") from None
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(400, "malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header")
            headers[key.strip().lower()] = value.strip()
            if len(headers) > API_HEADERS_COUNT_MAX:
                raise _BadRequest(431, "too many headers")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest(400, "bad Content-Length") from None
        if length < 0 or length > API_BODY_BYTES_MAX:
            raise _BadRequest(413, f"request body larger than {API_BODY_BYTES_MAX} bytes")
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")   # curl waits for this on big bodies
        body = await reader.readexactly(length) if length else b""
        return method, target, version, headers, body
