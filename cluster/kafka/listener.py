"""The Kafka-protocol TCP listener of one broker: framing, ordering and bounds per connection.

One connection is one ordered stream (Kafka's rule): requests are read one frame at a time
(int32 size, then the payload), each is handled in its own task so a long-polling Fetch does
not stall the frames behind it, and a single writer sends the answers strictly in request
order. Bounds, all from `semel.limits`:

* a frame larger than `MAX_KAFKA_REQUEST_BYTES` (or smaller than a request header) closes the
  connection before anything is allocated for it;
* at most `MAX_KAFKA_INFLIGHT_REQUESTS_PER_CONNECTION` requests are being handled or waiting
  to be answered; the reader stops reading until the oldest is answered (TCP pushes back);
* at most `MAX_KAFKA_CONNECTIONS` connections; more are closed at once.

A frame for an API or version not served closes the connection (the client cannot be answered
in a layout it did not ask for), except ApiVersions, answered in v0 with UNSUPPORTED_VERSION
(KIP-511). A handler's unexpected exception closes the connection too; the broker stays up.
Produce with acks=0 is answered with nothing at all, as Kafka does.

Security (the broker's `BrokerSecurity`, the same users as the gRPC port): with --tls-cert the
port speaks TLS only; with --tls-ca a client certificate is requested (required with
--tls-client-auth required) and its common name is the connection's principal (`User:<CN>`).
SaslHandshake/SaslAuthenticate (sasl.py) run on the connection itself, one request at a time
(the reader waits for each answer before reading on); a failed exchange is answered with
SASL_AUTHENTICATION_FAILED and the connection closed. With --authentication required, a
connection not yet authenticated may send only ApiVersions and the SASL requests, in frames of
at most `MAX_KAFKA_UNAUTHENTICATED_REQUEST_BYTES`, within `KAFKA_AUTHENTICATION_TIMEOUT_MS` of
connecting; anything else closes it. Every request
carries the connection's principal (`Request.principal`, and `security.current_principal()`
while it is handled); with --authorizer on, `KafkaApis.handle` authorizes it against the ACLs
(authorization.py) and answers refusals with Kafka's error codes, never by closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode as K
from semel import limits, tls
from semel.cluster.broker.principal import PasswordCheck, Principal
from semel.cluster.broker.security import BrokerSecurity, bind_principal
from semel.cluster.kafka import codec, sasl
from semel.cluster.kafka.handlers import KafkaApis
from semel.scram import ANONYMOUS

if TYPE_CHECKING:
    from semel.cluster.broker.process import Broker

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")


SSL_HANDSHAKE_TIMEOUT_S = 10.0


def server_ssl_context(files: tls.TlsFiles, client_auth: str) -> ssl.SSLContext:
    """The listener's TLS: the broker's certificate; a client certificate signed by
    `files.ca_file` is requested when there is a CA (Kafka's ssl.client.auth=requested) and
    demanded with client_auth "required"."""
    files.check(need_cert=True)
    if client_auth == "required" and not files.ca_file:
        raise tls.TlsConfigError("--tls-client-auth required needs --tls-ca (the CA client certificates must chain to)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert_file, files.key_file)
    if files.ca_file:
        ctx.load_verify_locations(files.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


certificate_name = tls.certificate_name  # the verified client certificate's CN ("" without one)


class KafkaListener:
    def __init__(self, broker: Broker, host: str, port: int, security: BrokerSecurity | None = None) -> None:
        self.apis = KafkaApis(broker)
        self.host = host
        self.port = port
        self.security = security
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Bind and serve; returns the bound port (port 0 picks a free one)."""
        context = None
        if self.security is not None and self.security.tls_on:
            context = server_ssl_context(self.security.files, self.security.client_auth)
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=context,
                                                      ssl_handshake_timeout=SSL_HANDSHAKE_TIMEOUT_S if context else None)
        except OSError as exc:
            raise OSError(f"cannot bind Kafka address {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.apis.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= limits.MAX_KAFKA_CONNECTIONS:
            log.warning("kafka: %d connections open (limit); closing a new one", len(self._connections))
            writer.close()
            return
        self._connections.add(task)
        try:
            await Connection(self.apis, reader, writer, self.security).run()
        finally:
            self._connections.discard(task)


class Connection:
    def __init__(self, apis: KafkaApis, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 security: BrokerSecurity | None = None,
                 auth_timeout_ms: int = limits.KAFKA_AUTHENTICATION_TIMEOUT_MS) -> None:
        self.apis = apis
        self.reader = reader
        self.writer = writer
        self.security = security
        self.peer = writer.get_extra_info("peername")
        host = str(self.peer[0]) if isinstance(self.peer, tuple) and self.peer else ""
        self.host = host
        cn = certificate_name(writer.get_extra_info("ssl_object"))
        self.principal = Principal(cn, "mtls", host) if cn else Principal(ANONYMOUS, "anonymous", host)
        self.required = security is not None and security.required
        self.exchange: sasl.Exchange | None = None
        self.handshakes = 0
        self.raw_sasl = False  # after SaslHandshake v0: the next frames are bare SASL tokens
        self.closing = False   # a SASL refusal was queued: stop reading, send it, close
        # with --authentication required, a connection that has not authenticated by then is
        # closed (it holds one of MAX_KAFKA_CONNECTIONS)
        self.auth_timeout_ms = auth_timeout_ms
        self.auth_deadline = asyncio.get_running_loop().time() + auth_timeout_ms / 1000
        # answers in request order: each entry is the task producing the frame (None: no answer)
        self.pending: asyncio.Queue[asyncio.Task[bytes | None] | None] = asyncio.Queue(
            limits.MAX_KAFKA_INFLIGHT_REQUESTS_PER_CONNECTION)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sender = loop.create_task(self._send_in_order())
        reader = loop.create_task(self._read_requests())
        try:
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not sender.done():
                self._log_end(reader)
                try:  # answer what was read before the end, within a grace period
                    self.pending.put_nowait(None)
                    await asyncio.wait({sender}, timeout=limits.KAFKA_CLOSE_GRACE_MS / 1000)
                except asyncio.QueueFull:
                    pass
                if self.closing and sender.done():
                    await self._linger()
        finally:
            reader.cancel()
            sender.cancel()
            self._drain_pending()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _linger(self) -> None:
        """After a refused SASL exchange was answered: let the client close first, or close after
        `KAFKA_FAILED_AUTHENTICATION_CLOSE_DELAY_MS` (Kafka's connection.failed.authentication.
        delay.ms). A client that reads the answer and the close in one go may otherwise see only
        the close (kafka-python then reports a lost connection, not the refusal); it also slows
        password guessing down per connection."""
        async def until_eof() -> None:
            discarded = 0
            while discarded <= limits.MAX_KAFKA_UNAUTHENTICATED_REQUEST_BYTES:
                chunk = await self.reader.read(4096)
                if not chunk:
                    return
                discarded += len(chunk)

        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(until_eof(), limits.KAFKA_FAILED_AUTHENTICATION_CLOSE_DELAY_MS / 1000)

    def _log_end(self, reader: asyncio.Task[None]) -> None:
        exc = reader.exception()
        if isinstance(exc, codec.BadRequest):
            log.info("kafka %s: closing the connection: %s", self.peer, exc)
        elif exc is not None and not isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
            log.warning("kafka %s: reading failed: %r", self.peer, exc)

    async def _put(self, item: asyncio.Task[bytes | None] | None) -> None:
        await self.pending.put(item)

    @property
    def must_authenticate(self) -> bool:
        return self.required and not self.principal.authenticated

    async def _read(self, n: int) -> bytes:
        """n bytes; while the connection must still authenticate, only until its deadline."""
        if not self.must_authenticate:
            return await self.reader.readexactly(n)
        left_s = self.auth_deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self.reader.readexactly(n), max(left_s, 0.0))
        except asyncio.TimeoutError:
            raise codec.BadRequest(f"not authenticated within {self.auth_timeout_ms} ms") from None

    async def _read_requests(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closing:
            (size,) = _SIZE.unpack(await self._read(_SIZE.size))
            most = limits.MAX_KAFKA_UNAUTHENTICATED_REQUEST_BYTES if self.must_authenticate or self.raw_sasl \
                else limits.MAX_KAFKA_REQUEST_BYTES
            least = 0 if self.raw_sasl else codec.PEEK_BYTES
            if size < least or size > most:
                raise codec.BadRequest(f"frame size {size} outside [{least}, {most}]")
            frame = await self._read(size)
            if self.raw_sasl:  # SaslHandshake v0: a bare token, answered with a bare token
                task = loop.create_task(self._raw_sasl(frame))
                await self._put(task)
                await asyncio.wait({task})
                continue
            key, version, correlation_id = codec.peek(frame)
            if key == codec.API_VERSIONS and not codec.is_served(key, version):
                await self._put(_done(codec.unsupported_api_versions(correlation_id)))
                continue
            if self.must_authenticate and key not in (codec.API_VERSIONS, *codec.CONNECTION_APIS):
                raise codec.BadRequest(f"api key {key} before SASL authentication (this listener requires it); "
                                       f"{self.principal.principal} is not authenticated")
            request = codec.decode_request(frame, self.principal)  # BadRequest closes the connection
            if key in codec.CONNECTION_APIS:  # one at a time: the next frame may depend on it
                task = loop.create_task(self._sasl(request))
                await self._put(task)
                await asyncio.wait({task})
                continue
            await self._put(loop.create_task(self._answer(request)))

    # --- SASL (sasl.py) -------------------------------------------------------------------
    def _refuse(self, message: str) -> None:
        log.info("kafka %s: SASL authentication failed: %s", self.peer, message)
        self.closing = True

    async def _sasl(self, request: codec.Request) -> bytes:
        body = request.body
        if request.api_key == codec.SASL_HANDSHAKE:
            values = self._handshake(str(body.mechanism), request.api_version)
        else:
            values = await self._authenticate(bytes(body.auth_bytes))
        response = codec.build(codec.response_class(request.api_key, request.api_version), values)
        return codec.encode_response(request.correlation_id, response)

    def _handshake(self, mechanism: str, version: int) -> dict[str, Any]:
        offered = list(sasl.mechanisms(self.security is not None and self.security.tls_on))
        self.handshakes += 1
        if self.handshakes > limits.KAFKA_SASL_HANDSHAKES_PER_CONNECTION or self.principal.mechanism in (
                "scram", "password") or self.exchange is not None:
            self._refuse("SaslHandshake again after an exchange started or completed")
            return {"error_code": K.illegal_sasl_state, "mechanisms": offered}
        if self.security is None or mechanism not in offered:
            log.info("kafka %s: SASL mechanism %r not offered (%s)", self.peer, mechanism, ", ".join(offered))
            return {"error_code": K.unsupported_sasl_mechanism, "mechanisms": offered}
        self.exchange = sasl.Exchange(mechanism, self.security.authenticator, self.security.users, self.host)
        self.raw_sasl = version == 0
        return {"error_code": K.none, "mechanisms": offered}

    async def _authenticate(self, data: bytes) -> dict[str, Any]:
        if self.exchange is None or self.security is None:
            self._refuse("SaslAuthenticate without a SaslHandshake first")
            return {"error_code": K.illegal_sasl_state, "error_message": "send SaslHandshake first",
                    "auth_bytes": b"", "session_lifetime": 0}
        try:
            reply = await self._step(data)
        except sasl.SaslFailure as exc:
            self._refuse(str(exc))
            return {"error_code": K.sasl_authentication_failed, "error_message": str(exc), "auth_bytes": b"",
                    "session_lifetime": 0}
        return {"error_code": K.none, "error_message": None, "auth_bytes": reply, "session_lifetime": 0}

    async def _step(self, data: bytes) -> bytes:
        """One SASL step; on success the connection's principal changes. Raises SaslFailure."""
        exchange = self.exchange
        assert exchange is not None and self.security is not None
        reply, found = exchange.step(data)
        if isinstance(found, PasswordCheck):  # PLAIN: one PBKDF2, off the event loop
            found = await asyncio.get_running_loop().run_in_executor(
                None, sasl.check_password, self.security.authenticator, found)
        if found is not None:
            self.principal = found
            self.raw_sasl = False
            log.info("kafka %s: authenticated %s (SASL %s)", self.peer, found.principal, exchange.mechanism)
        return reply

    async def _raw_sasl(self, token: bytes) -> bytes | None:
        try:
            reply = await self._step(token)
        except sasl.SaslFailure as exc:  # SaslHandshake v0 has no way to say why: close
            self._refuse(str(exc))
            return None
        return _SIZE.pack(len(reply)) + reply

    async def _answer(self, request: codec.Request) -> bytes | None:
        if request.principal is not None:
            bind_principal(request.principal)
        response: Any = await self.apis.handle(request)
        if response is None:
            return None
        return codec.encode_response(request.correlation_id, response)

    async def _send_in_order(self) -> None:
        while True:
            task = await self.pending.get()
            if task is None:
                return
            try:
                frame = await task
            except codec.BadRequest as exc:
                log.info("kafka %s: closing the connection: %s", self.peer, exc)
                self.writer.transport.abort()
                return
            except Exception:
                log.exception("kafka %s: a request failed; closing the connection", self.peer)
                self.writer.transport.abort()
                return
            if frame is not None:
                self.writer.write(frame)
                await self.writer.drain()

    def _drain_pending(self) -> None:
        while not self.pending.empty():
            task = self.pending.get_nowait()
            if task is not None:
                task.cancel()


def _done(frame: bytes) -> asyncio.Task[bytes | None]:
    async def ready() -> bytes | None:
        return frame

    return asyncio.get_running_loop().create_task(ready())
