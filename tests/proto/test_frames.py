"""`semel.frames.FrameProtocol` fed byte by byte through a fake transport: frames cut at any
point come out whole and in order, a length over the bound or a stream ending inside a frame
is an error (the transport closed, nothing allocated for the body), and at most
`max_buffered` unread frames are held before reading pauses."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semel import frames


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def run(coro):
    return asyncio.run(coro)


def connected(max_bytes: int = 1000, max_buffered: int = 4) -> tuple[frames.FrameProtocol, FakeTransport]:
    conn = frames.FrameProtocol(max_bytes, max_buffered)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


@settings(max_examples=50, deadline=None)
@given(bodies=st.lists(st.binary(max_size=50), max_size=8), cuts=st.lists(st.integers(1, 20), min_size=1))
def test_frames_cut_anywhere_come_out_whole_and_in_order(bodies, cuts):
    async def main() -> list[bytes]:
        conn, _ = connected(max_buffered=100)
        data = b"".join(frames.encode(b) for b in bodies)
        i = 0
        for n in cuts * (len(data) + 1):
            if i >= len(data):
                break
            conn.data_received(data[i:i + n])
            i += n
        conn.eof_received()
        conn.connection_lost(None)
        out = []
        while (body := await conn.read()) is not None:
            out.append(body)
        return out
    assert run(main()) == bodies


def test_a_length_over_the_bound_closes_before_the_body_arrives():
    async def main() -> None:
        conn, transport = connected(max_bytes=100)
        conn.data_received(struct.pack(">I", 101))
        assert transport.closed
        with pytest.raises(frames.FrameTooLarge):
            await conn.read()
    run(main())


def test_a_frame_of_exactly_the_bound_passes():
    async def main() -> None:
        conn, transport = connected(max_bytes=100)
        conn.data_received(frames.encode(b"x" * 100))
        assert await conn.read() == b"x" * 100 and not transport.closed
    run(main())


@pytest.mark.parametrize("partial", [b"\x00", b"\x00\x00\x00\x05abc"], ids=["in-header", "in-body"])
def test_the_stream_ending_inside_a_frame_is_an_error(partial):
    async def main() -> None:
        conn, _ = connected()
        conn.data_received(frames.encode(b"whole") + partial)
        conn.eof_received()
        conn.connection_lost(None)
        assert await conn.read() == b"whole"
        with pytest.raises(frames.TruncatedFrame):
            await conn.read()
    run(main())


def test_reading_pauses_at_max_buffered_unread_frames_and_resumes():
    async def main() -> None:
        conn, transport = connected(max_buffered=2)
        conn.data_received(frames.encode(b"1"))
        assert not transport.paused
        conn.data_received(frames.encode(b"2") + frames.encode(b"3"))
        assert transport.paused
        assert await conn.read() == b"1"
        assert transport.paused  # two still unread
        assert await conn.read() == b"2"
        assert not transport.paused
    run(main())


def test_write_frames_the_body_and_a_closed_connection_refuses():
    async def main() -> None:
        conn, transport = connected()
        await conn.write(b"abc")
        assert transport.written == b"\x00\x00\x00\x03abc"
        conn.connection_lost(None)
        with pytest.raises(ConnectionError):
            await conn.write(b"more")
        assert await conn.read() is None
    run(main())


def test_stream_reader_framing_checks_the_same_bound():
    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frames.encode(b"ok") + struct.pack(">I", 1 << 30))
        reader.feed_eof()
        assert await frames.read_frame(reader, 100) == b"ok"
        with pytest.raises(frames.FrameTooLarge):
            await frames.read_frame(reader, 100)
    run(main())
