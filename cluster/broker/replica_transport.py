"""The internal replication transport: ReplicaFetch over length-prefixed protobuf frames on a
TCP connection, instead of a gRPC stream (issue 19; a broker's `--replication-transport tcp`).

Why: a replication round trip is two small messages, and grpc.aio spends about 220-250 us of
CPU on each side per message; the same messages as frames on an asyncio transport cost a
third to a half of that (`semel bench frame-cost`, docs/benchmarks.md). Clients keep gRPC;
only followers fetching from leaders use this.

Theory of operation:
  * A leader with the transport on listens on its own port (`--replication-listen`, default
    any free port on the gRPC listen host) and registers that port with the quorum
    (`BrokerRegistration.replication_port`); 0 means it has none.
  * A follower with the transport on fetches from a leader over it when the leader registered
    a port, else over gRPC as before; so brokers with and without it mix (a rolling change).
  * A connection: TLS exactly when the broker's gRPC port has TLS (same certificate, CA and
    client-certificate mode, `tls.server_ssl_context`); the follower sends one
    `ReplicaTransportHello` with the call metadata a gRPC call would carry (the broker token),
    the leader identifies it with the same `Authenticator` and refuses it by the same rules as
    the gRPC Replication service (`BrokerSecurity.broker_only_refusal`), answering one
    `ReplicaTransportWelcome`; then requests and responses alternate, one in flight, and the
    connection is one fetch session (`replication.FetchSession`), as a gRPC stream is.
  * Bounded: at most `MAX_REPLICATION_CONNECTIONS` connections; the hello within
    `REPLICATION_HELLO_TIMEOUT_MS` and at most `REPLICATION_HELLO_MAX_BYTES`; a request frame
    at most the broker's `max_request_bytes` (as gRPC's receive limit), a response frame on the
    follower at most `MAX_REQUEST_BYTES`; no request for `REPLICATION_IDLE_TIMEOUT_MS` closes.
  * A peer that breaks the protocol (oversize, truncated or unparsable frames, a request
    before the welcome) loses its connection, nothing more; the leader logs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError

from semel import limits, tls
from semel import frames
from semel.cluster.broker.principal import AuthFailure, PasswordCheck, Principal
from semel.cluster.broker.replication import FetchSession, LeaderReplicationService
from semel.cluster.broker.security import BrokerSecurity
from semel.v1 import common_pb2 as pb
from semel.v1 import replication_pb2 as rpb

log = logging.getLogger(__name__)

WHAT = "replication (the internal transport)"
METRIC_METHOD = "/semel.v1.Replication/ReplicaFetch"  # counted as the gRPC stream's responses are


class ReplicaTransportRefused(ConnectionError):
    """The leader refused this broker's credentials (not a network failure: not retried fast)."""


# --- leader side ---------------------------------------------------------------------------


class ReplicaTransportServer:
    def __init__(self, service: LeaderReplicationService, security: BrokerSecurity | None,
                 max_request_bytes: int, on_response: Callable[[str], None] = lambda method: None,
                 max_connections: int = limits.MAX_REPLICATION_CONNECTIONS,
                 hello_timeout_s: float = limits.REPLICATION_HELLO_TIMEOUT_MS / 1000,
                 idle_timeout_s: float = limits.REPLICATION_IDLE_TIMEOUT_MS / 1000) -> None:
        self.service = service
        self.security = security
        self.max_request_bytes = max_request_bytes
        self.on_response = on_response
        self.max_connections = max_connections
        self.hello_timeout_s = hello_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Bind and serve; returns the bound port (port 0 picks a free one)."""
        context = None
        if self.security is not None and self.security.tls_on:
            context = tls.server_ssl_context(self.security.files, self.security.client_auth)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._protocol, host, port, ssl=context,
                ssl_handshake_timeout=self.hello_timeout_s if context is not None else None)
        except OSError as exc:
            raise OSError(f"cannot bind replication address {host}:{port}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _protocol(self) -> frames.FrameProtocol:
        conn = frames.FrameProtocol(limits.REPLICATION_HELLO_MAX_BYTES)
        conn.connected.add_done_callback(lambda fut: self._accepted(conn) if not fut.exception() else None)
        return conn

    def _accepted(self, conn: frames.FrameProtocol) -> None:
        if len(self._connections) >= self.max_connections:
            log.warning("replication transport: %d connections open (limit); closing a new one", len(self._connections))
            conn.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(conn), name="replica-transport-connection")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: frames.FrameProtocol) -> None:
        peer = _peer(conn)
        try:
            if await self._welcome(conn, peer):
                await self._fetches(conn)
        except asyncio.CancelledError:
            raise
        except (frames.FrameError, asyncio.TimeoutError, DecodeError) as exc:
            # The peer's fault: its connection ends, the broker carries on.
            log.info("replication transport: closing the connection from %s: %s", peer, _describe(exc))
        except ConnectionError as exc:  # the follower went away (or restarted its session): routine
            log.debug("replication transport: the connection from %s ended: %s", peer, _describe(exc))
        except Exception:
            log.exception("replication transport: the connection from %s failed", peer)
        finally:
            conn.close()

    async def _welcome(self, conn: frames.FrameProtocol, peer: str) -> bool:
        body = await asyncio.wait_for(conn.read(), self.hello_timeout_s)
        if body is None:
            return False
        hello = rpb.ReplicaTransportHello.FromString(body)
        found = self._identify(conn, hello, peer)
        if isinstance(found, PasswordCheck) and self.security is not None:
            found = await asyncio.get_running_loop().run_in_executor(
                None, self.security.authenticator.check_password, found)
        refusal = (found.message if isinstance(found, AuthFailure)
                   else None if self.security is None or not isinstance(found, Principal)
                   else self.security.broker_only_refusal(found, WHAT))
        if refusal is not None:
            log.info("replication transport: refused %s: %s", peer, refusal)
            await conn.write(rpb.ReplicaTransportWelcome(error_code=pb.CLUSTER_AUTHORIZATION_FAILED,
                                                         message=refusal).SerializeToString())
            return False
        await conn.write(rpb.ReplicaTransportWelcome(error_code=pb.NONE).SerializeToString())
        conn.max_bytes = self.max_request_bytes
        return True

    def _identify(self, conn: frames.FrameProtocol, hello: rpb.ReplicaTransportHello,
                  peer: str) -> Principal | AuthFailure | PasswordCheck | None:
        if self.security is None:
            return None
        transport = conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return self.security.identify_connection(ssl_object, dict(hello.metadata), peer.rsplit(":", 1)[0].strip("[]"))

    async def _fetches(self, conn: frames.FrameProtocol) -> None:
        session = FetchSession()
        while True:
            body = await asyncio.wait_for(conn.read(), self.idle_timeout_s)
            if body is None:
                return
            request = rpb.ReplicaFetchRequest.FromString(body)
            response = await self.service.handle(request, session)
            await conn.write(response.SerializeToString())
            self.on_response(METRIC_METHOD)


def _peer(conn: frames.FrameProtocol) -> str:
    name = conn.transport.get_extra_info("peername") if conn.transport is not None else None
    if isinstance(name, tuple) and len(name) >= 2:
        host = str(name[0])
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return "unknown"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, DecodeError):
        return f"a frame that is not the expected message ({exc})"
    return str(exc) or type(exc).__name__


# --- follower side -------------------------------------------------------------------------


class ReplicaTransportStream:
    """A follower's fetch stream over one connection (replication.FetchStream)."""

    def __init__(self, conn: frames.FrameProtocol) -> None:
        self.conn = conn

    async def write(self, request: rpb.ReplicaFetchRequest) -> None:
        await self.conn.write(request.SerializeToString())

    async def read(self) -> rpb.ReplicaFetchResponse | None:
        body = await self.conn.read()
        if body is None:
            return None
        try:
            return rpb.ReplicaFetchResponse.FromString(body)
        except DecodeError as exc:
            raise frames.FrameError(f"the leader sent a frame that is not a ReplicaFetchResponse ({exc})") from None

    def cancel(self) -> None:
        self.conn.close()


class ReplicaTransportDialer:
    """Opens a follower's connections: the TLS of `channel_credentials` when the broker has
    TLS, and the broker's credentials in the hello."""

    def __init__(self, ssl_context: ssl.SSLContext | None, credentials: Sequence[tuple[str, str]],
                 connect_timeout_s: float = limits.REPLICATION_HELLO_TIMEOUT_MS / 1000,
                 max_response_bytes: int = limits.MAX_REQUEST_BYTES) -> None:
        self.ssl_context = ssl_context
        self.credentials = tuple(credentials)
        self.connect_timeout_s = connect_timeout_s
        self.max_response_bytes = max_response_bytes

    @classmethod
    def for_broker(cls, security: BrokerSecurity) -> ReplicaTransportDialer:
        return cls(tls.client_ssl_context(security.files) if security.tls_on else None, security.broker_credentials())

    async def open(self, address: str) -> ReplicaTransportStream:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: frames.FrameProtocol(limits.REPLICATION_HELLO_MAX_BYTES), host, int(port), ssl=self.ssl_context,
            server_hostname=host if self.ssl_context is not None else None), self.connect_timeout_s)
        try:
            await conn.write(rpb.ReplicaTransportHello(metadata=dict(self.credentials)).SerializeToString())
            body = await asyncio.wait_for(conn.read(), self.connect_timeout_s)
            if body is None:
                raise ConnectionResetError(f"the leader at {address} closed the connection before its welcome")
            try:
                welcome = rpb.ReplicaTransportWelcome.FromString(body)
            except DecodeError as exc:
                raise frames.FrameError(f"the leader at {address} sent no ReplicaTransportWelcome ({exc})") from None
            if welcome.error_code != pb.NONE:
                raise ReplicaTransportRefused(f"the leader at {address} refused replication: "
                                              f"{pb.ErrorCode.Name(welcome.error_code)}: {welcome.message}")
        except BaseException:
            conn.close()
            raise
        conn.max_bytes = self.max_response_bytes
        return ReplicaTransportStream(conn)
