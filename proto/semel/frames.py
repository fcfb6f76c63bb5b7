"""Length-prefixed frames over an asyncio stream: the framing of the internal replication
transport (`replica_transport`).

A frame is a 4-byte big-endian length followed by that many bytes of body (one serialized
protobuf message). Two readers: `FrameProtocol` (an asyncio Protocol, what
the transport uses: no StreamReader in between) and `read_frame` (on a StreamReader, for
`semel bench frame-cost`'s comparison). Both check the length against a bound *before* they
read or buffer the body, so a hostile or broken peer can cost at most one bounded buffer:
  * a length above the bound -> `FrameTooLarge` (the connection is closed, nothing is read);
  * the stream ending inside a header or a body -> `TruncatedFrame`;
  * a clean end between frames -> `None`.
Both errors are the peer's fault (`FrameError`, a ConnectionError); the caller closes the
connection.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import typing

HEADER = struct.Struct(">I")


class FrameError(ConnectionError):
    """The peer sent something that is not a well-formed frame (its fault, not ours)."""


class FrameTooLarge(FrameError):
    pass


class TruncatedFrame(FrameError):
    pass


def encode(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    """The next frame's body, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TruncatedFrame(f"the stream ended inside a frame header ({len(exc.partial)} of {HEADER.size} bytes)") from None
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(f"a frame of {length} bytes is over the bound of {max_bytes}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedFrame(f"the stream ended inside a frame ({len(exc.partial)} of {length} bytes)") from None


class FrameProtocol(asyncio.Protocol):
    """Frames on an asyncio transport without a StreamReader in between (a StreamReader costs
    two awaits and a buffer copy per frame: a third of a round trip's CPU, measured).

    `data_received` cuts the incoming bytes into frames (header checked against `max_bytes`
    before the body is buffered); `read()` hands them out in order. At most `max_buffered`
    whole frames wait unread before the transport stops reading (the peer's writes then block
    in its kernel buffers): together with the size bound, what one peer can make us hold is
    bounded. A malformed stream closes the transport; `read()` then raises the `FrameError`."""

    def __init__(self, max_bytes: int, max_buffered: int = 4) -> None:
        self.max_bytes = max_bytes
        self.max_buffered = max_buffered
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._frames: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._error: FrameError | None = None
        self._paused = False
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (no isinstance check here)
        self.transport = typing.cast(asyncio.Transport, transport)
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._error is not None:  # closing: whatever else arrives is dropped
            return
        buf = self._buffer
        buf += data
        while len(buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(buf)
            if length > self.max_bytes:
                self._fail(FrameTooLarge(f"a frame of {length} bytes is over the bound of {self.max_bytes}"))
                return
            end = HEADER.size + length
            if len(buf) < end:
                break
            self._frames.append(bytes(buf[HEADER.size:end]))
            del buf[:end]
        if self._frames:
            self._wake()
            if len(self._frames) >= self.max_buffered and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self._buffer:
            self._fail(TruncatedFrame(f"the stream ended inside a frame ({len(self._buffer)} bytes buffered)"))
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._buffer and self._error is None:
            self._error = TruncatedFrame(f"the connection ended inside a frame ({len(self._buffer)} bytes buffered)")
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("connection closed"))
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- the caller's side ---
    async def read(self) -> bytes | None:
        """The next frame's body; None once the peer closed cleanly; FrameError if it broke the framing."""
        while not self._frames:
            if self._error is not None:
                raise self._error
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._frames.popleft()
        if self._paused and len(self._frames) < self.max_buffered and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return frame

    async def write(self, body: bytes) -> None:
        """Sends one frame; waits only while the transport's write buffer is over its high mark."""
        if self._closed or self.transport is None:
            raise ConnectionError("the connection is closed")
        self.transport.write(HEADER.pack(len(body)) + body)
        if self._write_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
            if self._closed:
                raise ConnectionError("the connection is closed")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: FrameError) -> None:
        self._error = error
        self._buffer.clear()
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
