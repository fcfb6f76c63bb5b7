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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import TYPE_CHECKING, Any

from semel import limits
from semel.cluster.kafka import codec
from semel.cluster.kafka.handlers import KafkaApis

if TYPE_CHECKING:
    from semel.cluster.broker.process import Broker

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")


class KafkaListener:
    def __init__(self, broker: Broker, host: str, port: int) -> None:
        self.apis = KafkaApis(broker)
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Bind and serve; returns the bound port (port 0 picks a free one)."""
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
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
            await Connection(self.apis, reader, writer).run()
        finally:
            self._connections.discard(task)


class Connection:
    def __init__(self, apis: KafkaApis, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.apis = apis
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
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
        finally:
            reader.cancel()
            sender.cancel()
            self._drain_pending()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def _log_end(self, reader: asyncio.Task[None]) -> None:
        exc = reader.exception()
        if isinstance(exc, codec.BadRequest):
            log.info("kafka %s: closing the connection: %s", self.peer, exc)
        elif exc is not None and not isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
            log.warning("kafka %s: reading failed: %r", self.peer, exc)

    async def _put(self, item: asyncio.Task[bytes | None] | None) -> None:
        await self.pending.put(item)

    async def _read_requests(self) -> None:
        while True:
            (size,) = _SIZE.unpack(await self.reader.readexactly(_SIZE.size))
            if size < codec.PEEK_BYTES or size > limits.MAX_KAFKA_REQUEST_BYTES:
                raise codec.BadRequest(f"frame size {size} outside [{codec.PEEK_BYTES}, "
                                       f"{limits.MAX_KAFKA_REQUEST_BYTES}]")
            frame = await self.reader.readexactly(size)
            key, version, correlation_id = codec.peek(frame)
            if key == codec.API_VERSIONS and not codec.is_served(key, version):
                await self._put(_done(codec.unsupported_api_versions(correlation_id)))
                continue
            request = codec.decode_request(frame)  # BadRequest closes the connection
            await self._put(asyncio.get_running_loop().create_task(self._answer(request)))

    async def _answer(self, request: codec.Request) -> bytes | None:
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
