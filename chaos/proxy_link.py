"""Data path of the fault proxy: one accepted client connection and its two links.

Theory of operation
-------------------
A `Connection` pairs a client socket with a freshly dialed upstream socket and runs one
`Link` per direction (upstream = client -> server, downstream = server -> client). A link
is two coroutines joined by a bounded queue:

    source socket --reader--> queue[(bytes, read_time)] --pump--> toxic chain --> dest socket

The reader only reads (64 KiB at a time) and stamps each chunk with the loop time, so the
source keeps being drained while toxics hold data, and latency is measured from when data
arrived (pipelined chunks do not add up their delays). The pump takes one chunk at a time
and passes it through the link's chain of `Stage`s; a stage is the per-connection
runtime of one toxic (it holds the toxicity roll and state such as bytes sent). A stage's
`pipe(data, ts, emit)` awaits whatever it needs and calls `emit` for what goes on; the
last `emit` writes to the destination and awaits `drain()` (backpressure). All work is per
chunk or per slice, never per byte.

The chain is live. The owning proxy calls `add/replace/remove` on every link of the
toxic's direction as the API changes it; a chunk already inside the chain finishes through
the stages it started with, skipping removed ones. A stage that is waiting (latency,
bandwidth, slicer, slow_close) waits on `Link.wait_until`, which any chain change wakes:
a removed or replaced stage stops waiting and passes its data on at once, as upstream
Toxiproxy does ("don't drop data on the floor").

Closing follows upstream Toxiproxy: when a link ends (source EOF, a toxic closing it,
or a write error) its destination socket is closed; the other link then sees EOF on that
same socket, flushes what it still holds through its chain (slow_close waits here) and
closes the other socket. `reset_peer` instead sets SO_LINGER 0 on both sockets and aborts
them, so both peers get an RST. Disabling a proxy aborts every connection at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import struct
from typing import TYPE_CHECKING, Awaitable, Callable

from semel.chaos.proxy_model import (
    LINK_QUEUE_CHUNKS,
    READ_CHUNK_BYTES,
    UPSTREAM_CONNECT_TIMEOUT_MS,
    Address,
    Stream,
    ToxicSpec,
)
from semel.invariant import not_none

if TYPE_CHECKING:
    from collections.abc import Iterable

Emit = Callable[[bytes, float], Awaitable[None]]

log = logging.getLogger("semel.chaos.proxy")

# A bandwidth toxic that fell behind its schedule by less than this (writes and timers
# take time) catches up; a longer gap is idleness and earns no burst.
BANDWIDTH_CATCHUP_S = 0.05


class LinkClosed(Exception):
    """Raised by a stage to end its link: close the destination (with RST if `reset`)."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__("reset" if reset else "closed")
        self.reset = reset


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# --- stages: the per-connection runtime of each toxic type ------------------------------


class Stage:
    """A toxic on one link. `active` is the toxicity roll, made once per connection
    (and again when the toxic is updated), as upstream does per link."""

    __slots__ = ("spec", "link", "active", "removed")

    def __init__(self, spec: ToxicSpec, link: Link, active: bool) -> None:
        self.spec = spec
        self.link = link
        self.active = active
        self.removed = False

    def start(self) -> None:
        """The stage joined a running link (timers start here)."""

    def stop(self, removed: bool) -> None:
        """The stage left the link: `removed` (True) or replaced by an update (False)."""

    def inherit(self, old: Stage) -> None:
        """Carry per-connection state over an update of the same toxic."""

    async def pipe(self, data: bytes, ts: float, emit: Emit) -> None:
        await emit(data, ts)

    async def on_eof(self) -> None:
        """The source ended; runs before the destination is closed."""


class LatencyStage(Stage):
    __slots__ = ()

    async def pipe(self, data: bytes, ts: float, emit: Emit) -> None:
        delay_ms = float(self.spec.attr("latency"))
        jitter_ms = self.spec.attr("jitter")
        if jitter_ms:
            delay_ms += self.link.rng.uniform(-jitter_ms, jitter_ms)
        deadline = ts + delay_ms / 1000.0
        if await self.link.wait_until(deadline, self):
            await emit(data, deadline)
        else:
            await emit(data, self.link.loop.time())


class BandwidthStage(Stage):
    __slots__ = ("next_free",)

    def __init__(self, spec: ToxicSpec, link: Link, active: bool) -> None:
        super().__init__(spec, link, active)
        self.next_free = 0.0   # loop time at which the (virtual) wire is free again

    def inherit(self, old: Stage) -> None:
        if isinstance(old, BandwidthStage):
            self.next_free = old.next_free

    async def pipe(self, data: bytes, ts: float, emit: Emit) -> None:
        loop = self.link.loop
        rate_bytes_per_s = self.spec.attr("rate") * 1000
        if rate_bytes_per_s == 0:
            # Upstream never lets data through at rate 0; hold it until the toxic goes.
            await self.link.wait_until(math.inf, self)
            await emit(data, loop.time())
            return
        piece_bytes_max = max(1, rate_bytes_per_s // 10)   # about 100 ms of wire time
        pos = 0
        while pos < len(data):
            piece = data[pos:pos + piece_bytes_max]
            now = loop.time()
            # Keep to the ideal schedule when only our own scheduling made us late; after
            # an idle gap start afresh (idle time is not saved up as a burst).
            start = self.next_free if now - self.next_free < BANDWIDTH_CATCHUP_S else now
            deadline = start + len(piece) / rate_bytes_per_s
            if not await self.link.wait_until(deadline, self):
                await emit(data[pos:], loop.time())
                return
            self.next_free = deadline
            await emit(piece, ts)
            pos += len(piece)


class SlowCloseStage(Stage):
    __slots__ = ()

    async def on_eof(self) -> None:
        deadline = self.link.loop.time() + self.spec.attr("delay") / 1000.0
        await self.link.wait_until(deadline, self)


class TimeoutStage(Stage):
    """Drops all data; closes the connection after `timeout` ms (0: never). Removing an
    active timeout toxic closes the connection too (upstream's Cleanup): bytes were lost,
    so the stream cannot continue."""

    __slots__ = ("_timer",)

    def __init__(self, spec: ToxicSpec, link: Link, active: bool) -> None:
        super().__init__(spec, link, active)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        timeout_ms = self.spec.attr("timeout")
        if self.active and timeout_ms > 0:
            self._timer = self.link.loop.call_later(timeout_ms / 1000.0, self.link.close_by_toxic)

    def stop(self, removed: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if removed and self.active:
            self.link.close_by_toxic()

    async def pipe(self, data: bytes, ts: float, emit: Emit) -> None:
        return   # dropped on the floor


class ResetPeerStage(Stage):
    """On the first data, waits `timeout` ms and resets both sockets (RST)."""

    __slots__ = ()

    async def pipe(self, data: bytes, ts: float, emit: Emit) -> None:
        await asyncio.sleep(self.spec.attr("timeout") / 1000.0)
        raise LinkClosed(reset=True)


class SlicerStage(Stage):
    __slots__ = ()

    async def pipe(self, data: bytes, ts: float, emit: Emit) -> None:
        average = self.spec.attr("average_size")
        variation = self.spec.attr("size_variation")
        delay_s = self.spec.attr("delay") / 1_000_000.0
        rng, loop = self.link.rng, self.link.loop
        pos = 0
        while pos < len(data):
            size = average + (rng.randint(-variation, variation) if variation else 0)
            await emit(data[pos:pos + size], ts)
            pos += size
            if pos < len(data) and delay_s > 0:
                if not await self.link.wait_until(loop.time() + delay_s, self):
                    await emit(data[pos:], ts)
                    return


class LimitDataStage(Stage):
    __slots__ = ("sent_bytes",)

    def __init__(self, spec: ToxicSpec, link: Link, active: bool) -> None:
        super().__init__(spec, link, active)
        self.sent_bytes = 0

    def inherit(self, old: Stage) -> None:
        if isinstance(old, LimitDataStage):
            self.sent_bytes = old.sent_bytes

    async def pipe(self, data: bytes, ts: float, emit: Emit) -> None:
        remaining = self.spec.attr("bytes") - self.sent_bytes
        if remaining > 0:
            piece = data[:remaining]
            await emit(piece, ts)
            self.sent_bytes += len(piece)
        if self.sent_bytes >= self.spec.attr("bytes"):
            raise LinkClosed()


STAGE_TYPES: dict[str, type[Stage]] = {
    "latency": LatencyStage,
    "bandwidth": BandwidthStage,
    "slow_close": SlowCloseStage,
    "timeout": TimeoutStage,
    "reset_peer": ResetPeerStage,
    "slicer": SlicerStage,
    "limit_data": LimitDataStage,
}


# --- one direction of a connection --------------------------------------------------------


class Link:
    def __init__(
        self,
        conn: Connection,
        stream: Stream,
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
        specs: Iterable[ToxicSpec],
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.loop = conn.loop
        self.rng = conn.rng
        self.source = source
        self.dest = dest
        self.queue: asyncio.Queue[tuple[bytes, float] | None] = asyncio.Queue(LINK_QUEUE_CHUNKS)
        self.stages: list[Stage] = [self._make_stage(spec) for spec in specs]
        self._waiter: asyncio.Future[None] | None = None
        self._closed_by_toxic = False
        self.reader_task: asyncio.Task[None] | None = None
        self.pump_task: asyncio.Task[str] | None = None

    def _make_stage(self, spec: ToxicSpec) -> Stage:
        # rng.random() < 0 is never true and < 1 always is: toxicity 0/1 are exact.
        return STAGE_TYPES[spec.type](spec, self, self.rng.random() < spec.toxicity)

    def start(self) -> None:
        for stage in self.stages:
            stage.start()
        name = f"{self.conn.name}-{self.stream.value}"
        self.reader_task = self.loop.create_task(self._read(), name=name + "-read")
        self.pump_task = self.loop.create_task(self._pump(), name=name + "-pump")

    # chain changes, called by the proxy on the loop thread
    def add(self, spec: ToxicSpec) -> None:
        stage = self._make_stage(spec)
        self.stages.append(stage)
        stage.start()

    def replace(self, spec: ToxicSpec) -> None:
        for i, old in enumerate(self.stages):
            if old.spec.name == spec.name:
                new = self._make_stage(spec)
                new.inherit(old)
                self.stages[i] = new
                old.removed = True
                old.stop(removed=False)
                new.start()
                self._interrupt()
                return

    def remove(self, name: str) -> None:
        for i, old in enumerate(self.stages):
            if old.spec.name == name:
                del self.stages[i]
                old.removed = True
                old.stop(removed=True)
                self._interrupt()
                return

    def _interrupt(self) -> None:
        if self._waiter is not None:
            _wake(self._waiter)

    async def wait_until(self, deadline: float, stage: Stage) -> bool:
        """Sleep until loop time `deadline`; False if `stage` left the chain first."""
        loop = self.loop
        while not stage.removed:
            delay = deadline - loop.time()
            if delay <= 0:
                return True
            fut: asyncio.Future[None] = loop.create_future()
            timer = None if math.isinf(deadline) else loop.call_later(delay, _wake, fut)
            self._waiter = fut
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
                if self._waiter is fut:
                    self._waiter = None
        return False

    def close_by_toxic(self) -> None:
        """A timer of a toxic (timeout) ends this link from outside the pump."""
        if self.pump_task is not None and not self.pump_task.done():
            self._closed_by_toxic = True
            self.pump_task.cancel()

    async def _read(self) -> None:
        try:
            while True:
                data = await self.source.read(READ_CHUNK_BYTES)
                if not data:
                    break
                await self.queue.put((data, self.loop.time()))
        except (ConnectionError, OSError):
            pass   # a broken source ends the stream like EOF, as upstream does
        await self.queue.put(None)

    async def _pump(self) -> str:
        """Returns how the link ended: "eof", "closed" (by a toxic), "reset", "error"."""
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    break
                data, ts = item
                await self._through(list(self.stages), 0, data, ts)
            for stage in list(self.stages):
                if stage.active and not stage.removed:
                    await stage.on_eof()
            how = "eof"
        except LinkClosed as closed:
            how = "reset" if closed.reset else "closed"
        except (ConnectionError, OSError):
            how = "error"
        except asyncio.CancelledError:
            if not self._closed_by_toxic:
                raise
            how = "closed"
        self.conn.link_ended(self, how)
        return how

    async def _through(self, stages: list[Stage], i: int, data: bytes, ts: float) -> None:
        while i < len(stages):
            stage = stages[i]
            i += 1
            if stage.active and not stage.removed:
                next_i = i

                async def emit(out: bytes, out_ts: float) -> None:
                    await self._through(stages, next_i, out, out_ts)

                await stage.pipe(data, ts, emit)
                return
        if data:
            self.dest.write(data)
            await self.dest.drain()


# --- one accepted client connection ---------------------------------------------------------


def _set_linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class Connection:
    """Client socket + upstream socket + two links. Owned by one proxy."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        self.name = name
        self.loop = loop
        self.rng = rng
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.links: dict[Stream, Link] = {}
        self._aborted = False

    async def run(self, upstream: Address, chains: Callable[[], dict[Stream, list[ToxicSpec]]]) -> None:
        """Dial the upstream, then proxy until both links end. `chains` is read after the
        dial so toxics added meanwhile apply from the first byte."""
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port),
                UPSTREAM_CONNECT_TIMEOUT_MS / 1000.0,
            )
        except (OSError, asyncio.TimeoutError):
            self.client_writer.transport.abort()
            return
        self.upstream_writer = upstream_writer
        if self._aborted:
            upstream_writer.transport.abort()
            return
        specs = chains()
        self.links = {
            Stream.UPSTREAM: Link(self, Stream.UPSTREAM, self.client_reader, upstream_writer,
                                  specs[Stream.UPSTREAM]),
            Stream.DOWNSTREAM: Link(self, Stream.DOWNSTREAM, upstream_reader, self.client_writer,
                                    specs[Stream.DOWNSTREAM]),
        }
        for link in self.links.values():
            link.start()
        tasks = [task for link in self.links.values() for task in (link.pump_task, link.reader_task)]
        try:
            pumps = [not_none(link.pump_task, "a started link pumps") for link in self.links.values()]
            results = await asyncio.gather(*pumps, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):   # a bug in a stage: report, then drop
                    log.error("connection %s: link failed", self.name, exc_info=result)
        finally:
            for task in tasks:
                if task is not None and not task.done():
                    task.cancel()
            self._abort_sockets(linger_zero=False)

    def link_ended(self, link: Link, how: str) -> None:
        if how == "reset":
            self.reset()
        elif how == "error":
            link.dest.transport.abort()
        else:
            link.dest.close()   # flush what was written, then FIN

    def reset(self) -> None:
        """Both peers get an RST (SO_LINGER 0 + abort), as reset_peer promises."""
        self._abort_sockets(linger_zero=True)
        current = asyncio.current_task()
        for link in self.links.values():
            if link.pump_task is not None and link.pump_task is not current and not link.pump_task.done():
                link.pump_task.cancel()

    def abort(self) -> None:
        """Proxy disabled or deleted: drop the connection now."""
        self._aborted = True
        self._abort_sockets(linger_zero=False)
        for link in self.links.values():
            for task in (link.pump_task, link.reader_task):
                if task is not None and not task.done():
                    task.cancel()

    def _abort_sockets(self, linger_zero: bool) -> None:
        for writer in (self.client_writer, self.upstream_writer):
            if writer is None or writer.transport.is_closing() and not linger_zero:
                continue
            if linger_zero:
                _set_linger_zero(writer)
            writer.transport.abort()
