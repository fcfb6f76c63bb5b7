"""Replication between brokers: the leader's side of ReplicaFetch and the follower fetchers.

Theory of operation:
  * A follower runs one `ReplicaFetcher` per leader broker: one long-lived ReplicaFetch bidi
    stream carrying every partition it follows on that leader. Request and response alternate
    on the stream; each request says, per partition, the follower's LEO (fetch_offset), the
    epoch of its last batch (`last_fetched_epoch`) and the leader epoch it believes in.
  * The leader (`LeaderReplicationService.handle`) first checks divergence (KIP-320): if the
    follower's last epoch is unknown to it, or the leader's end of that epoch is below the
    follower's LEO, it answers `diverging_epoch/diverging_end_offset` and the follower truncates
    to min(that end, its own end of that epoch) and asks again. Otherwise the fetch offset is
    the follower's LEO: it feeds the leader's `LeaderProgress` (HW, ISR), and the answer carries
    the stored bytes from there (verbatim) plus the HW. Nothing new -> the leader long-polls
    (up to max_wait_ms) on the partitions' notifiers, answering early on data (or an error);
    a HW the follower has not been told yet rides on that answer instead of ending the poll.
  * The stream is a fetch session (Kafka's KIP-227): its first request names every partition,
    later ones only those whose fetch state changed, and a response carries only partitions
    with something to tell (data, a new HW, an error, a divergence). The leader keeps the
    session (`FetchSession`); an unnamed partition whose follower is at the log end counts as
    fetched, for the ISR, by omission. A round's work thus follows what changed, not the
    number of partitions a broker pair shares (16 + 16 internal partitions by default).
  * A partition added to or removed from a fetcher restarts its stream at once (no waiting
    out a long-poll), so a new leader's followers start fetching immediately after failover.
  * A stream that breaks with UNAVAILABLE is reported to the controller as a fast
    failure signal (`report_unreachable`), then retried with a short backoff.
  * The stream is a gRPC ReplicaFetch stream, or with `--replication-transport tcp` a
    connection of the internal transport (`replica_transport`) when the leader registered one:
    the same messages, the same session, a third to a half of gRPC's CPU per message.
  * `IsrMaintainer` periodically asks each led partition's `LeaderProgress` for an ISR change
    and commits it through the quorum (AlterPartition, CAS on the partition epoch).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import grpc
from semel import limits
from semel.cluster.broker.throttle import ByteRateLimiter
from semel.cluster.broker.log_dir_health import LogDirOfflineError
from semel.cluster.broker.replica_manager import (
    Partition,
    ReplicaManager,
    Role,
)
from semel.cluster.broker.replica_state import LeaderProgress
from semel.cluster.metadata import state as md
from semel.v1 import common_pb2 as pb
from semel.v1 import replication_pb2 as rpb
from semel.v1 import replication_pb2_grpc as rgrpc

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.05
ERROR_BACKOFF_S = 0.05
STALL_TIMEOUT_S = 5.0  # beyond the requested long-poll, a fetch response this late means a stuck stream


# (address, options) -> a channel to a peer broker (TLS and broker credentials when security is on)
OpenChannel = Callable[[str, Sequence[tuple[str, Any]]], grpc.aio.Channel]


def _insecure_channel(address: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=options)


def channel_options() -> list[tuple[str, object]]:
    return [
        ("grpc.max_receive_message_length", limits.MAX_REQUEST_BYTES),
        ("grpc.max_send_message_length", limits.MAX_REQUEST_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 250),
        ("grpc.keepalive_time_ms", 10_000),  # brokers allow pings every 5 s (server option)
        ("grpc.keepalive_timeout_ms", 5_000),
    ]


# --- leader side ------------------------------------------------------------------------


class FetchSession:
    """The leader's memory of one ReplicaFetch stream (KIP-227's fetch session; the stream is
    its lifetime, so it needs no id or epoch): the fetch state each partition was last sent
    with, and the high watermark the follower was last told."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], rpb.ReplicaFetchPartition] = {}
        self.told_hw: dict[tuple[str, int], int] = {}
        # Partitions whose last answer was an error or a divergence: asked about again in full
        # every round (as a full request would), not taken as settled.
        self.unsettled: set[tuple[str, int]] = set()


def replica_fetch_refusal(image: md.MetadataImage | None, replica_id: int, broker_epoch: int) -> str | None:
    """Why a ReplicaFetch from `replica_id` at `broker_epoch` is refused (None: it is not): the
    sender must be a broker registered at exactly the epoch this leader's image holds for it,
    so a stale incarnation (or a client that made up an epoch) cannot move a follower's
    position, and with it the high watermark and acks=all. A follower that has just registered
    again may be ahead of this leader's image for a moment: it is refused and retries."""
    if image is None:
        return "this broker has no metadata image yet"
    reg = image.broker(replica_id)
    if reg is None:
        return f"broker {replica_id} is not registered"
    if reg.broker_epoch != broker_epoch:
        return f"broker {replica_id} is registered at epoch {reg.broker_epoch}, not {broker_epoch}"
    return None


ImageSource = Callable[[], "md.MetadataImage | None"]


class LeaderReplicationService:
    """`image`: the metadata image the sender's broker epoch is checked against (None: no
    check, for in-process tests of the fetch protocol alone)."""

    def __init__(self, rm: ReplicaManager, max_fetch_bytes: int, reassignment_bytes_per_s: int = 0,
                 image: ImageSource | None = None) -> None:
        self.rm = rm
        self.max_fetch_bytes = max_fetch_bytes
        self.image = image
        # Replicas a reassignment adds catch up at most this fast (all partitions of this leader
        # together), so the copy does not starve producers' replication; 0: unthrottled.
        self.reassignment_throttle = (ByteRateLimiter(reassignment_bytes_per_s, rm.clock.monotonic_ms())
                                      if reassignment_bytes_per_s > 0 else None)

    async def stream(self, requests: AsyncIterator[rpb.ReplicaFetchRequest]) -> AsyncIterator[rpb.ReplicaFetchResponse]:
        session = FetchSession()
        async for req in requests:
            yield await self.handle(req, session)

    async def handle(self, req: rpb.ReplicaFetchRequest, session: FetchSession | None = None) -> rpb.ReplicaFetchResponse:
        """Answers one request of a stream. A partition the request does not name (incremental)
        costs a few comparisons, not a result: it is answered only when it has new data or a
        new high watermark, so a round's work follows what changed, not how many partitions
        the follower replicates.

        A new high watermark alone does not end the long-poll: it rides on the next answer
        (new data, an error, or the poll's end, at most max_wait_ms). Answering it at once
        would double the rounds per acks=all write (data out, the follower's LEO in and the HW
        advanced, HW out), and nothing needs a follower's HW promptly: acks, reads and the
        LSO are the leader's, and a follower's HW only bounds what it keeps when it has no
        epoch in common with a new leader (a staler HW keeps less, and refetches it). Kafka's
        followers learn the HW the same way."""
        loop = asyncio.get_running_loop()
        if session is None:
            session = FetchSession()
        max_wait_s = max(0, min(req.max_wait_ms, limits.MAX_FETCH_WAIT_MS)) / 1000
        max_bytes = min(req.max_bytes if req.max_bytes > 0 else self.max_fetch_bytes, self.max_fetch_bytes)
        deadline = loop.time() + max_wait_s
        if not req.incremental:
            session.partitions.clear()
            session.told_hw.clear()
            session.unsettled.clear()
        named = set()
        for fp in req.partitions:
            key = (fp.topic, fp.partition)
            session.partitions[key] = fp
            named.add(key)
        if len(req.partitions) > limits.MAX_PARTITIONS_PER_REQUEST or len(session.partitions) > limits.MAX_PARTITIONS_PER_REQUEST:
            session.partitions.clear()  # the follower must start over (it will, on a new stream)
            return rpb.ReplicaFetchResponse(results=[
                rpb.ReplicaFetchPartitionResult(topic=fp.topic, partition=fp.partition,
                                                error_code=pb.INVALID_REQUEST, diverging_epoch=-1)
                for fp in req.partitions[:1]
            ])
        refusal = None if self.image is None else replica_fetch_refusal(self.image(), req.replica_id, req.broker_epoch)
        if refusal is not None:
            # Nothing is read and no position moves; every partition of the session is told (and
            # asked about in full once the epoch is right), as after any error.
            log.debug("replica fetch refused: %s", refusal)
            session.unsettled.update(session.partitions)
            return rpb.ReplicaFetchResponse(results=[
                rpb.ReplicaFetchPartitionResult(topic=t, partition=i, error_code=pb.STALE_BROKER_EPOCH,
                                                diverging_epoch=-1, diverging_end_offset=-1, high_watermark=-1,
                                                log_start_offset=-1)
                for t, i in session.partitions])
        first = True
        while True:
            results = []
            hw_only = []  # told with the next answer, but no reason to answer now
            remaining = max_bytes
            now = self.rm.clock.monotonic_ms()
            for key, fp in session.partitions.items():
                if key not in named and key not in session.unsettled and self._settled(req.replica_id, key, fp, session, now, first):
                    continue
                r = self._one(req.replica_id, fp, remaining, now, update_progress=first)
                remaining -= len(r.records)
                if r.records or r.error_code != pb.NONE or r.diverging_end_offset >= 0:
                    results.append(r)
                elif session.told_hw.get(key) != r.high_watermark:
                    hw_only.append(r)
            first = False
            named = set()  # after a wake, every partition is judged by what changed on the leader
            if results or loop.time() >= deadline:
                results += hw_only
                for r in results:
                    key = (r.topic, r.partition)
                    session.told_hw[key] = r.high_watermark
                    if r.error_code != pb.NONE or r.diverging_end_offset >= 0:
                        session.unsettled.add(key)
                    else:
                        session.unsettled.discard(key)
                return rpb.ReplicaFetchResponse(results=results)
            await self._wait_any(session.partitions, deadline - loop.time())

    def _settled(self, replica_id: int, key: tuple[str, int], fp: rpb.ReplicaFetchPartition, session: FetchSession,
                 now: int, first: bool) -> bool:
        """True when a partition the request did not name has nothing to tell the follower:
        still led here in the epoch the follower knows, the follower at the log end, its
        high watermark already told. On a request's first pass this also counts as the
        follower's fetch for ISR purposes (it is caught up, and says so by omission)."""
        p = self.rm.get(*key)
        if p is None or p.role != Role.LEADER or p.leader_epoch != fp.current_leader_epoch:
            return False
        if fp.fetch_offset != p.log_end_offset:
            return False
        if first:
            p.on_follower_fetch(replica_id, fp.fetch_offset, now)
        return session.told_hw.get(key) == p.high_watermark

    async def _wait_any(self, keys: Iterable[tuple[str, int]], timeout_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        parts = [p for key in keys if (p := self.rm.get(*key)) is not None]
        for p in parts:
            p.add_waiter(fut, data_only=True)
        try:
            await asyncio.wait_for(fut, max(0.0, timeout_s))
        except asyncio.TimeoutError:
            pass
        finally:
            for p in parts:
                p.remove_waiter(fut)

    def _one(self, replica_id: int, fp: rpb.ReplicaFetchPartition, max_bytes: int, now: int,
             update_progress: bool) -> rpb.ReplicaFetchPartitionResult:
        r = rpb.ReplicaFetchPartitionResult(topic=fp.topic, partition=fp.partition, diverging_epoch=-1,
                                            diverging_end_offset=-1, high_watermark=-1, log_start_offset=-1)
        p = self.rm.get(fp.topic, fp.partition)
        if p is None or p.role != Role.LEADER:
            r.error_code = pb.NOT_LEADER_OR_FOLLOWER
            return r
        if p.state is not None and replica_id not in p.state.replicas:
            r.error_code = pb.REPLICA_NOT_AVAILABLE  # not a replica of this partition: it cannot follow it
            return r
        if fp.current_leader_epoch < p.leader_epoch:
            r.error_code = pb.FENCED_LEADER_EPOCH
            return r
        if fp.current_leader_epoch > p.leader_epoch:
            r.error_code = pb.UNKNOWN_LEADER_EPOCH
            return r
        r.high_watermark = p.high_watermark
        r.log_start_offset = p.log_start_offset
        if fp.last_fetched_epoch >= 0 and fp.fetch_offset > p.log_start_offset:
            epoch, end = p.store.end_offset_for_epoch(fp.last_fetched_epoch)
            if epoch < 0:
                # No epoch in common that we can name: diverging_epoch -1 with our LEO as the
                # upper bound; the follower falls back to its own HW (pre-KIP-101 rule).
                r.diverging_epoch, r.diverging_end_offset = -1, p.log_end_offset
                return r
            if epoch != fp.last_fetched_epoch or end < fp.fetch_offset:
                r.diverging_epoch = epoch
                r.diverging_end_offset = end
                return r
        if fp.fetch_offset > p.log_end_offset and fp.last_fetched_epoch < 0:
            r.diverging_epoch, r.diverging_end_offset = -1, p.log_end_offset
            return r
        if fp.fetch_offset > p.log_end_offset or fp.fetch_offset < p.log_start_offset:
            r.error_code = pb.OFFSET_OUT_OF_RANGE
            return r
        if update_progress:
            p.on_follower_fetch(replica_id, fp.fetch_offset, now)
            r.high_watermark = p.high_watermark
        if fp.fetch_offset < p.log_end_offset and max_bytes > 0:
            throttle = self.reassignment_throttle
            if throttle is not None and not (p.state is not None and replica_id in p.state.adding_replicas):
                throttle = None  # only the replicas a reassignment adds are throttled
            if throttle is not None:
                if not throttle.allow(now):
                    return r  # this round sends it nothing; the poll ends at max_wait, the bucket refills
                max_bytes = max(1, min(max_bytes, throttle.available(now)))
            r.records = p.store.read(fp.fetch_offset, max_bytes, None, limits.MAX_FETCH_BATCHES_PER_PARTITION).data
            if throttle is not None:
                throttle.consume(len(r.records), now)
        return r


# --- follower side ------------------------------------------------------------------------

AddressOf = Callable[[int], "str | None"]
ReportUnreachable = Callable[[int], Awaitable[None]]


class FetchStream(Protocol):
    """One fetch session with a leader: requests and responses alternating."""

    async def write(self, request: rpb.ReplicaFetchRequest) -> None: ...

    async def read(self) -> rpb.ReplicaFetchResponse | None:
        """The next response; None when the leader ended the stream."""
        ...

    def cancel(self) -> None: ...


class GrpcFetchStream:
    def __init__(self, call: Any) -> None:
        self.call = call

    async def write(self, request: rpb.ReplicaFetchRequest) -> None:
        await self.call.write(request)

    async def read(self) -> rpb.ReplicaFetchResponse | None:
        resp = await self.call.read()
        return None if resp is grpc.aio.EOF else resp

    def cancel(self) -> None:
        self.call.cancel()


@dataclasses.dataclass(frozen=True, slots=True)
class InternalTransport:
    """Where and how to reach leaders over the internal replication transport: `address_of`
    a leader's transport address (None: it has none, fetch over gRPC), `open` a connection."""

    address_of: AddressOf
    open: Callable[[str], Awaitable[FetchStream]]


class ReplicaFetcher:
    """Follows every partition this broker replicates from one leader broker."""

    def __init__(self, broker_id: int, leader_id: int, address_of: AddressOf, broker_epoch: Callable[[], int],
                 report_unreachable: ReportUnreachable, max_wait_ms: int, max_bytes: int,
                 open_channel: OpenChannel | None = None, transport: InternalTransport | None = None) -> None:
        self.broker_id = broker_id
        self.transport = transport
        self.leader_id = leader_id
        self.address_of = address_of
        self.broker_epoch = broker_epoch
        self.report_unreachable = report_unreachable
        self.max_wait_ms = max_wait_ms
        self.max_bytes = max_bytes
        self.open_channel = open_channel or _insecure_channel
        self.partitions: dict[tuple[str, int], Partition] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._channel_address: str | None = None
        self._stopped = False
        self._healthy = True
        self._sent: dict[tuple[str, int], tuple[int, int, int]] = {}  # this stream's fetch session
        self._transport_address: str | None = None  # the leader's, while fetching over the internal transport

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"fetcher-{self.leader_id}")

    def add(self, p: Partition) -> None:
        self.partitions[p.key] = p
        self._changed.set()

    def remove(self, p: Partition) -> None:
        if self.partitions.get(p.key) is p:
            del self.partitions[p.key]
            self._changed.set()

    async def stop(self) -> None:
        self._stopped = True
        self._changed.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._channel is not None:
            await self._channel.close()

    def _get_channel(self, address: str) -> grpc.aio.Channel:
        if self._channel is None or self._channel_address != address:
            if self._channel is not None:
                asyncio.get_running_loop().create_task(self._channel.close())
            self._channel = self.open_channel(address, channel_options())
            self._channel_address = address
        return self._channel

    async def _run(self) -> None:
        while not self._stopped:
            self._changed.clear()
            if not self.partitions:
                await self._changed.wait()
                continue
            address = self.address_of(self.leader_id)
            if address is None:
                await asyncio.sleep(RETRY_BACKOFF_S)
                continue
            try:
                await self._stream(address)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    continue
                level = logging.INFO if self._healthy else logging.DEBUG  # once per outage, not per retry
                log.log(level, "replica fetch from broker %d (%s) failed: %s", self.leader_id, address, exc.code())
                self._healthy = False
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    try:
                        await self.report_unreachable(self.leader_id)
                    except Exception:  # the report is only a hint
                        log.debug("unreachable report failed", exc_info=True)
                await asyncio.sleep(RETRY_BACKOFF_S)
            except asyncio.InvalidStateError:  # the stream finished under us (peer gone): reopen
                await asyncio.sleep(RETRY_BACKOFF_S)
            except (OSError, asyncio.TimeoutError) as exc:  # the internal transport's connection
                level = logging.INFO if self._healthy else logging.DEBUG
                log.log(level, "replica fetch from broker %d failed: %s", self.leader_id, exc or type(exc).__name__)
                self._healthy = False
                if not isinstance(exc, ConnectionError) or isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
                    try:  # unreachable, not refused by it (credentials) nor broken framing
                        await self.report_unreachable(self.leader_id)
                    except Exception:
                        log.debug("unreachable report failed", exc_info=True)
                await asyncio.sleep(RETRY_BACKOFF_S)
            except Exception:
                log.exception("replica fetcher for leader %d failed; restarting", self.leader_id)
                await asyncio.sleep(RETRY_BACKOFF_S)

    async def _open(self, address: str) -> FetchStream:
        transport_address = self.transport.address_of(self.leader_id) if self.transport is not None else None
        if self.transport is not None and transport_address is not None:
            stream = await self.transport.open(transport_address)
            if self._transport_address != transport_address:  # said once per leader address, not per stream
                log.info("replica fetch from broker %d over the replication transport at %s", self.leader_id,
                         transport_address)
                self._transport_address = transport_address
            return stream
        self._transport_address = None
        stub = rgrpc.ReplicationStub(self._get_channel(address))
        return GrpcFetchStream(stub.ReplicaFetch(wait_for_ready=False))

    async def _stream(self, address: str) -> None:
        call = await self._open(address)
        self._sent.clear()  # a new stream is a new fetch session: its first request names everything
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            while not self._stopped:
                await call.write(self._request())
                read = asyncio.ensure_future(call.read())
                # Bounded: a leader that never answers (paused, silently cut off) gets a new stream.
                done, _ = await asyncio.wait({read, changed}, timeout=self.max_wait_ms / 1000 + STALL_TIMEOUT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    call.cancel()
                    if not done:
                        log.info("replica fetch from broker %d stalled; reconnecting", self.leader_id)
                    return  # partition set changed (or stalled): reopen with the current set
                resp = read.result()
                if resp is None:
                    return
                self._healthy = True
                if not self._apply(resp):
                    await asyncio.sleep(ERROR_BACKOFF_S)
        finally:
            changed.cancel()
            call.cancel()

    def _request(self) -> rpb.ReplicaFetchRequest:
        """All partitions on a new stream, then only those whose fetch state (LEO, leader
        epoch, last batch epoch) changed since they were last sent on it: the leader's
        FetchSession keeps the rest."""
        parts = []
        sent = self._sent
        incremental = bool(sent)
        for key, p in self.partitions.items():
            fetch_state = (p.log_end_offset, p.leader_epoch, p.store.last_batch_epoch())
            if sent.get(key) == fetch_state:
                continue
            sent[key] = fetch_state
            parts.append(rpb.ReplicaFetchPartition(
                topic=p.topic, partition=p.partition, fetch_offset=fetch_state[0],
                current_leader_epoch=fetch_state[1], last_fetched_epoch=fetch_state[2],
            ))
        return rpb.ReplicaFetchRequest(replica_id=self.broker_id, broker_epoch=self.broker_epoch(),
                                       partitions=parts, max_wait_ms=self.max_wait_ms, max_bytes=self.max_bytes,
                                       incremental=incremental)

    def _apply(self, resp: rpb.ReplicaFetchResponse) -> bool:
        """Apply one response; False when it told only of errors or a divergence that changed
        nothing (back off a little). An empty response is an expired long-poll: nothing changed."""
        useful = not resp.results
        for r in resp.results:
            p = self.partitions.get((r.topic, r.partition))
            if p is None or p.role != Role.FOLLOWER or p.leader_id != self.leader_id:
                continue
            if r.error_code == pb.OFFSET_OUT_OF_RANGE and 0 <= p.log_end_offset < r.log_start_offset:
                log.warning("%s-%d: behind the leader's log start %d (retention); restarting the replica there",
                            r.topic, r.partition, r.log_start_offset)
                p.store.reset_to(r.log_start_offset)
                p.set_follower_hw(r.high_watermark)
                continue
            if r.error_code != pb.NONE:
                log.debug("%s-%d: replica fetch error %s", r.topic, r.partition, pb.ErrorCode.Name(r.error_code))
                continue
            useful = True
            if r.diverging_epoch >= 0 or r.diverging_end_offset >= 0:
                before = (p.log_end_offset, p.store.last_batch_epoch())
                self._truncate_diverging(p, r.diverging_epoch, r.diverging_end_offset)
                # nothing changed -> asking again at once would spin: back off unless others progressed
                useful = (p.log_end_offset, p.store.last_batch_epoch()) != before or len(resp.results) > 1
                continue
            try:
                p.append_as_follower(r.records, r.high_watermark)
            except LogDirOfflineError as exc:  # said once by LogDirHealth; the controller fences us
                log.debug("%s-%d: follower append refused (%s)", r.topic, r.partition, exc)
                return False
            except Exception as exc:  # offset gap or corrupt bytes: refetch from our LEO
                log.warning("%s-%d: follower append failed (%s); refetching", r.topic, r.partition, exc)
                return False
        return useful

    @staticmethod
    def _truncate_diverging(p: Partition, epoch: int, leader_end: int) -> None:
        local_epoch, local_end = p.store.end_offset_for_epoch(epoch) if epoch >= 0 else (-1, -1)
        if local_epoch < 0:
            # No common epoch to compare: keep only what we know was committed (our own HW).
            target = min(leader_end, p.high_watermark)
        else:
            target = min(leader_end, local_end)
        target = max(target, p.log_start_offset)
        # Truncating at our LEO still drops leader-epoch entries that start there (an epoch
        # this broker led without appending), so the next fetch names an epoch the leader knows.
        p.truncate_to(min(target, p.log_end_offset))


class FetcherManager:
    """One `ReplicaFetcher` per leader broker, created on demand."""

    def __init__(self, rm: ReplicaManager, address_of: AddressOf, broker_epoch: Callable[[], int],
                 report_unreachable: ReportUnreachable, max_wait_ms: int, max_bytes: int,
                 open_channel: OpenChannel | None = None, transport: InternalTransport | None = None) -> None:
        self.open_channel = open_channel or _insecure_channel
        self.transport = transport
        self.rm = rm
        self.address_of = address_of
        self.broker_epoch = broker_epoch
        self.report_unreachable = report_unreachable
        self.max_wait_ms = max_wait_ms
        self.max_bytes = max_bytes
        self.fetchers: dict[int, ReplicaFetcher] = {}
        rm.on_follow = self.follow
        rm.on_unfollow = self.unfollow

    def follow(self, p: Partition) -> None:
        for f in self.fetchers.values():
            f.remove(p)
        fetcher = self.fetchers.get(p.leader_id)
        if fetcher is None:
            fetcher = ReplicaFetcher(self.rm.broker_id, p.leader_id, self.address_of, self.broker_epoch,
                                     self.report_unreachable, self.max_wait_ms, self.max_bytes, self.open_channel,
                                     self.transport)
            self.fetchers[p.leader_id] = fetcher
            fetcher.start()
        fetcher.add(p)

    def unfollow(self, p: Partition) -> None:
        for f in self.fetchers.values():
            f.remove(p)

    async def stop(self) -> None:
        for f in self.fetchers.values():
            await f.stop()
        self.fetchers.clear()


# --- ISR maintenance (leader) ---------------------------------------------------------------

SubmitAlter = Callable[[md.AlterPartition], Awaitable[object]]


REJECTED_ALTER_BACKOFF_S = 1.0  # after the quorum refused an ISR change, before proposing again
ISR_LINES_LOGGED_EACH = 8       # ISR proposals (or failures) of one check logged a line each; more: one summary


class IsrMaintainer:
    def __init__(self, rm: ReplicaManager, submit: SubmitAlter, interval_ms: int,
                 unfenced: Callable[[], "frozenset[int] | None"] = lambda: None) -> None:
        self.rm = rm
        self.submit = submit
        self.interval_ms = interval_ms
        self.unfenced = unfenced  # brokers that may join an ISR (None: unknown, do not filter)
        self._task: asyncio.Task[None] | None = None
        # ISR changes whose outcome was unknown since the last check, logged together by it: at
        # 1,000s of partitions a quorum hiccup fails them all, one log line each on the loop.
        self._not_committed: list[tuple[Partition, str]] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="isr-maintainer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            try:
                self.check(self.rm.clock.monotonic_ms())
            except Exception:
                log.exception("ISR check failed")

    def check(self, now: int) -> None:
        self._log_not_committed()
        proposed: list[tuple[Partition, tuple[int, ...], tuple[int, ...], str]] = []
        try:
            self._check(now, proposed)
        finally:
            _log_each_or_summary(
                [("%s-%d: ISR %s -> %s (%s)", (p.topic, p.partition, old, new, reason))
                 for p, old, new, reason in proposed], "ISR changes proposed")

    def _log_not_committed(self) -> None:
        failed, self._not_committed = self._not_committed, []
        _log_each_or_summary([("%s-%d: ISR change outcome unknown (asked again at the next check): %s", (p.topic, p.partition, why))
                              for p, why in failed], "ISR changes of unknown outcome")

    def _check(self, now: int, proposed: list[tuple[Partition, tuple[int, ...], tuple[int, ...], str]]) -> None:
        for p in self.rm.leaders():
            if p.progress is None or p.state is None or p.alter_in_flight:
                continue
            change = p.progress.isr_change(now)
            if change is None:
                continue
            allowed = self.unfenced()
            new_isr = change.new_isr
            if allowed is not None:  # the controller refuses fenced joiners: do not ask
                new_isr = tuple(r for r in new_isr if r in p.state.isr or r in allowed)
            if tuple(sorted(p.state.isr)) == new_isr and not p.progress.proposed_isr:
                continue  # (a proposal whose outcome is unknown is asked again, to settle it)
            change = dataclasses.replace(change, new_isr=new_isr)
            proposed.append((p, p.state.isr, change.new_isr, change.reason))
            cmd = md.AlterPartition(p.topic, p.partition, self.rm.broker_id, self.rm.broker_epoch,
                                    p.leader_epoch, p.state.partition_epoch, change.new_isr)
            p.alter_in_flight = True
            p.progress.propose_isr(change.new_isr, p.state.partition_epoch)  # the HW waits for the joiners from now on
            asyncio.get_running_loop().create_task(self._alter(p, p.progress, cmd))

    async def _alter(self, p: Partition, progress: LeaderProgress, cmd: md.AlterPartition) -> None:
        """Settle one proposal. Only an answer that proves the quorum's ISR at the proposal's
        partition epoch is not the proposed one may drop it: INVALID_REQUEST (judged at that
        epoch) or an accepted no-op. Every other outcome (committed, stale epochs, not the
        leader, a lost answer) leaves it counted until an image at a newer partition epoch
        arrives (`set_isr`) or a later proposal settles it: a retried command may have been
        committed by its first attempt."""
        try:
            result = await self.submit(cmd)
            if not getattr(result, "ok", True):
                if getattr(result, "error", None) == pb.INVALID_REQUEST:  # e.g. a fenced joiner
                    self._drop_proposal(p, progress)
                await asyncio.sleep(REJECTED_ALTER_BACKOFF_S)
            elif getattr(getattr(result, "value", None), "partition_epoch", None) == cmd.partition_epoch:
                self._drop_proposal(p, progress)  # a no-op: the ISR at that epoch already was new_isr
        except Exception as exc:
            self._not_committed.append((p, str(exc)))  # logged by the next check (summarised beyond 8)
            await asyncio.sleep(self.interval_ms / 1000)
        finally:
            p.alter_in_flight = False

    @staticmethod
    def _drop_proposal(p: Partition, progress: LeaderProgress) -> None:
        if p.progress is progress and progress.drop_proposed_isr():
            p.on_hw_advanced()


def _log_each_or_summary(lines: list[tuple[str, tuple[object, ...]]], what: str) -> None:
    """A few lines one by one; beyond ISR_LINES_LOGGED_EACH one summary with the first few (each at DEBUG)."""
    if len(lines) <= ISR_LINES_LOGGED_EACH:
        for fmt, args in lines:
            log.info(fmt, *args)
        return
    for fmt, args in lines:
        log.debug(fmt, *args)
    log.info("%d %s (first: %s; each at DEBUG)", len(lines), what,
             "; ".join(fmt % args for fmt, args in lines[:3]))
