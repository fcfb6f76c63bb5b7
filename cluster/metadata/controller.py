"""The active controller: broker liveness and the metadata decisions that follow from it.

Theory of operation
-------------------
Every voter runs a `Controller`; only the one whose quorum node is the Raft leader acts. When it
becomes leader it first commits a `Barrier` (so its local image contains every committed
command), resets every broker's session to "now" (heartbeats are in memory only, they are not
replicated), and then, every `tick_interval_ms`, asks the pure `ControllerCore.decide()` which
commands follow from the image and the liveness it has observed, and submits them.

Liveness has two signals:
  * heartbeats (`on_heartbeat`, called by the gRPC handler every `heartbeat_interval_ms`);
  * the Raft connection to the broker's quorum node (combined mode). A kill -9 closes the TCP
    connection at once, so a broker whose link has been down for `disconnect_grace_ms` and
    whose heartbeats are that old too (or that never heartbeated this controller: a voter cut
    off from the Raft leader cannot learn who the controller is) is fenced without waiting for
    the whole `session_timeout_ms`. Links are watched even while passive, so a new controller
    knows how long the old leader's link has been down.
    A heartbeat heard well after the link went down contradicts it: the broker is alive and
    its Raft link broken or flapping, so until the link is up again only the session timeout
    fences it (`_link_contradicted`);
  * reports from peers (`on_broker_unreachable`): fence after `disconnect_grace_ms` of report
    *and* heartbeat silence; a heartbeat voids the report.
    A slow link alone never fences a broker that heartbeats.

A fenced broker is unfenced only after a heartbeat received *after* it was fenced (by this
controller) that reports a metadata version at least its registration's or, once fenced, its
fencing's (`BrokerRegistration.registered_version`): it has caught up at least to the moment
its leaderships were moved away, so a deposed controller rejoining with stale metadata stays
fenced until its quorum node has caught up.
All decisions are compare-and-set (broker epoch, partition epoch) in the state machine, so a
stale controller that still believes it leads cannot undo newer decisions.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from semel import limits
from semel.clock import monotonic_ms
from semel.cluster.metadata.quorum import MetadataQuorum, MetadataSubmitError
from semel.cluster.metadata.state import (
    NO_LEADER,
    AllocateProducerIds,
    AlterPartition,
    Barrier,
    Command,
    CompleteReassignment,
    CreateTopic,
    DeleteTopic,
    ElectLeader,
    FenceBroker,
    MetadataImage,
    PartitionState,
    ProducerIdBlock,
    RegisterBroker,
    Topic,
    UnfenceBroker,
)
from semel.internal_topics import (
    CONSUMER_OFFSETS_TOPIC,
    INTERNAL_TOPIC_CONFIGS,
    TRANSACTION_STATE_TOPIC,
)
from semel.invariant import not_none
from semel.v1 import common_pb2 as pb

log = logging.getLogger(__name__)

MAX_CONTROLLER_COMMANDS_IN_FLIGHT = limits.MAX_CONTROLLER_COMMANDS_IN_FLIGHT


def _default_internal_partitions() -> dict[str, int]:
    n = limits.INTERNAL_TOPIC_PARTITIONS_DEFAULT
    return {TRANSACTION_STATE_TOPIC: n, CONSUMER_OFFSETS_TOPIC: n}


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    session_timeout_ms: int = limits.BROKER_SESSION_TIMEOUT_MS_DEFAULT
    heartbeat_interval_ms: int = limits.BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT
    disconnect_grace_ms: int = limits.BROKER_DISCONNECT_GRACE_MS_DEFAULT  # >= 1.5 heartbeat intervals
    tick_interval_ms: int = limits.CONTROLLER_TICK_MS
    internal_partitions: Mapping[str, int] = field(default_factory=_default_internal_partitions)
    internal_replication_factor: int | None = None  # None: min(3, number of voters)
    submit_timeout_s: float = limits.METADATA_SUBMIT_TIMEOUT_MS_DEFAULT / 1000
    failed_decision_backoff_ms: int = limits.CONTROLLER_FAILED_DECISION_BACKOFF_MS
    # Leadership goes back to the preferred (first) replica once it has been unfenced this long
    # and is in the ISR (Kafka's auto leader rebalance, per partition); None disables it.
    preferred_leader_rebalance_ms: int | None = limits.PREFERRED_LEADER_REBALANCE_MS_DEFAULT
    # Kafka's leader.imbalance.per.broker.percentage: a broker's partitions are rebalanced only
    # while more than this percentage of those it is the preferred leader of are led elsewhere.
    leader_imbalance_percent: int = limits.LEADER_IMBALANCE_PERCENT_DEFAULT

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval_ms < self.session_timeout_ms:
            raise ValueError("need 0 < heartbeat_interval_ms < session_timeout_ms")
        if self.disconnect_grace_ms <= 0 or self.tick_interval_ms <= 0:
            raise ValueError("disconnect_grace_ms and tick_interval_ms must be positive")
        for name, count in self.internal_partitions.items():
            if name not in (TRANSACTION_STATE_TOPIC, CONSUMER_OFFSETS_TOPIC) or not 1 <= count <= 1000:
                raise ValueError(f"internal topic {name!r}: 1..1000 partitions of a known internal topic")
        if not 0 <= self.leader_imbalance_percent <= 100:
            raise ValueError("leader_imbalance_percent must be in 0..100")
        if self.internal_replication_factor is not None and self.internal_replication_factor < 1:
            raise ValueError("internal_replication_factor must be >= 1")


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    error: pb.ErrorCode  # NONE, NOT_LEADER_OR_FOLLOWER (not the active controller), STALE_BROKER_EPOCH
    fenced: bool
    should_shutdown: bool = False


@dataclass(slots=True)
class _Liveness:
    broker_epoch: int
    last_heartbeat_ms: int
    metadata_version: int = -1
    heard: bool = False  # a heartbeat of this epoch reached *this* controller
    down_since_ms: int | None = None  # its Raft link (combined mode) down since
    link_contradicted: bool = False  # it heartbeated well after its link went down (logged once)
    reported_at_ms: int | None = None  # someone reported it unreachable (cleared by a heartbeat)
    fenced_at_ms: int | None = None  # when this controller decided to fence it
    unfenced_since_ms: int | None = None  # first seen unfenced by this controller
    log_dir_offline: bool = False  # its last heartbeat said its log directory is offline (full or failed)
    hearing_at_heartbeat_ms: int = 0  # the controller's hearing clock at its last heartbeat (see ControllerCore)


class ControllerCore:
    """Pure decisions: feed it leadership, heartbeats, connection states and `now_ms`.

    Session silence is measured twice: in real time, and on a *hearing clock* that advances with
    real time only while this controller is processing heartbeats (from anyone: in combined mode
    its own broker's come every heartbeat interval while its loop runs); a gap between two
    heartbeats longer than `HEARING_GAP_INTERVALS` intervals adds only that much. A broker is
    fenced for silence only when both exceed the session timeout, so a controller that heard
    nobody for a while (its own loop starved on an overloaded host, or itself cut off) does not
    fence every broker for its own deafness. Chaos soak idempotent/pause seed 1813925905: on a
    host at load 30 the controllers fenced all brokers again and again and the cluster served
    no read for the 60 s after the faults healed.
    """

    HEARING_GAP_INTERVALS = 3

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.active = False
        self._liveness: dict[int, _Liveness] = {}
        self._hearing_ms = 0  # the hearing clock at _heard_at_ms
        self._heard_at_ms = 0  # when the last heartbeat (or the leadership) reached this controller

    # -- inputs --

    def _hearing_now(self, now_ms: int) -> int:
        gap_ms = min(max(0, now_ms - self._heard_at_ms), self.HEARING_GAP_INTERVALS * self.config.heartbeat_interval_ms)
        return self._hearing_ms + gap_ms

    def on_became_leader(self, image: MetadataImage, now_ms: int) -> None:
        self.active = True
        self._hearing_ms, self._heard_at_ms = 0, now_ms
        self._liveness = {b: _Liveness(reg.broker_epoch, now_ms) for b, reg in image.brokers.items()}

    def on_lost_leadership(self) -> None:
        self.active = False
        self._liveness = {}

    def _entry(self, broker_id: int, broker_epoch: int, now_ms: int) -> _Liveness:
        lv = self._liveness.get(broker_id)
        if lv is None or lv.broker_epoch != broker_epoch:
            down = lv.down_since_ms if lv is not None else None
            lv = _Liveness(broker_epoch, now_ms, down_since_ms=down, hearing_at_heartbeat_ms=self._hearing_now(now_ms))
            self._liveness[broker_id] = lv
        return lv

    def on_registered(self, broker_id: int, broker_epoch: int, now_ms: int) -> None:
        if self.active:
            lv = self._entry(broker_id, broker_epoch, now_ms)
            lv.last_heartbeat_ms = now_ms
            lv.hearing_at_heartbeat_ms = self._hearing_now(now_ms)

    def on_heartbeat(
        self, image: MetadataImage, broker_id: int, broker_epoch: int, metadata_version: int, now_ms: int,
        log_dir_offline: bool = False,
    ) -> HeartbeatReply:
        if not self.active:
            return HeartbeatReply(pb.NOT_LEADER_OR_FOLLOWER, fenced=True)
        if now_ms > self._heard_at_ms:  # any heartbeat shows this controller hears
            self._hearing_ms, self._heard_at_ms = self._hearing_now(now_ms), now_ms
        reg = image.broker(broker_id)
        if reg is None or reg.broker_epoch != broker_epoch:
            return HeartbeatReply(pb.STALE_BROKER_EPOCH, fenced=True)
        lv = self._entry(broker_id, broker_epoch, now_ms)
        lv.last_heartbeat_ms = max(lv.last_heartbeat_ms, now_ms)
        lv.hearing_at_heartbeat_ms = self._hearing_ms
        lv.metadata_version = max(lv.metadata_version, metadata_version)
        lv.heard = True
        lv.down_since_ms = None  # it reached us; a still-broken Raft link is seen again next tick
        lv.reported_at_ms = None
        lv.log_dir_offline = log_dir_offline
        return HeartbeatReply(pb.NONE, fenced=reg.fenced)

    def on_connection_status(
        self, broker_id: int, connected: bool, now_ms: int, down_since_ms: int | None = None
    ) -> None:
        """`down_since_ms`: when the link was first seen down, if known from before (a link that
        died during the Raft election counts from then, not from when we became leader)."""
        lv = self._liveness.get(broker_id)
        if lv is None:
            return
        if connected:
            lv.down_since_ms = None
            lv.link_contradicted = False
            return
        since = now_ms if down_since_ms is None else min(down_since_ms, now_ms)
        lv.down_since_ms = since if lv.down_since_ms is None else min(lv.down_since_ms, since)

    def on_broker_unreachable(self, broker_id: int, now_ms: int) -> None:
        """A peer could not reach it (weaker than a dead Raft link: also needs silence)."""
        lv = self._liveness.get(broker_id)
        if lv is not None and lv.reported_at_ms is None:
            lv.reported_at_ms = now_ms

    # -- decisions --

    def decide(self, image: MetadataImage, now_ms: int) -> list[Command]:
        if not self.active:
            return []
        commands: list[Command] = []
        for broker_id in sorted(image.brokers):
            command = self._liveness_decision(image, broker_id, now_ms)
            if command is not None:
                commands.append(command)
        commands.extend(self._leaderless_repairs(image))
        commands.extend(self._preferred_elections(image, now_ms))
        commands.extend(self._reassignments_to_complete(image))
        commands.extend(self._internal_topics(image))
        return commands

    def _link_contradicted(self, broker_id: int, lv: _Liveness, now_ms: int) -> bool:
        """A heartbeat heard more than `disconnect_grace_ms` after the Raft link went down shows
        the broker alive with a broken (or flapping) Raft link: until the link is seen up again
        it says nothing about the broker, which is then fenced on `session_timeout_ms` only. (A
        killed broker's last heartbeat predates its link's drop by at most one heartbeat in
        flight.) Without this, every heartbeat gap of `disconnect_grace_ms` under load fenced
        such a broker, and the next heartbeat unfenced it (chaos finding 5)."""
        down_since_ms = not_none(lv.down_since_ms, "asked only about a broker whose link is down")
        if lv.link_contradicted:
            return True
        if not (lv.heard and lv.last_heartbeat_ms > down_since_ms + self.config.disconnect_grace_ms):
            return False
        lv.link_contradicted = True
        log.info("controller: broker %d heartbeats but its Raft link has been down %d ms: "
                 "fencing it on the session timeout (%d ms) only until the link is up",
                 broker_id, now_ms - down_since_ms, self.config.session_timeout_ms)
        return True

    def _liveness_decision(self, image: MetadataImage, broker_id: int, now_ms: int) -> Command | None:
        reg = image.brokers[broker_id]
        lv = self._entry(broker_id, reg.broker_epoch, now_ms)
        silent_ms = now_ms - lv.last_heartbeat_ms
        cfg = self.config
        if not reg.fenced:
            lv.fenced_at_ms = None
            if lv.unfenced_since_ms is None:
                lv.unfenced_since_ms = now_ms
            unheard_ms = self._hearing_now(now_ms) - lv.hearing_at_heartbeat_ms  # see the class docstring
            expired = silent_ms > cfg.session_timeout_ms and unheard_ms > cfg.session_timeout_ms
            # Link down for the grace, and either silent for the grace too or never heard by this
            # controller (a voter whose Raft link to the leader is down cannot even learn who the
            # controller is, so waiting for its heartbeat would only delay the fence).
            grace = cfg.disconnect_grace_ms
            link_down = (
                lv.down_since_ms is not None
                and now_ms - lv.down_since_ms >= grace
                and (silent_ms >= grace or not lv.heard)
                and not self._link_contradicted(broker_id, lv, now_ms)
            )
            reported = lv.reported_at_ms is not None and now_ms - lv.reported_at_ms >= grace and silent_ms >= grace
            unreachable = link_down or reported
            if lv.log_dir_offline:  # alive, but it can write nothing: lead and replicate elsewhere
                lv.fenced_at_ms = now_ms
                lv.unfenced_since_ms = None
                log.info("controller: fencing broker %d: its log directory is offline", broker_id)
                return FenceBroker(broker_id, reg.broker_epoch)
            if expired or unreachable:
                lv.fenced_at_ms = now_ms
                lv.unfenced_since_ms = None
                log.info("controller: fencing broker %d: %s (%s, Raft link %s, report %s)",
                         broker_id, "session expired" if expired else "unreachable",
                         (f"last heartbeat {silent_ms} ms ago, {unheard_ms} ms of hearing others" if lv.heard
                          else "no heartbeat heard by this controller"),
                         "up" if lv.down_since_ms is None else f"down {now_ms - lv.down_since_ms} ms",
                         "none" if lv.reported_at_ms is None else f"{now_ms - lv.reported_at_ms} ms ago")
                return FenceBroker(broker_id, reg.broker_epoch)
            return None
        lv.unfenced_since_ms = None
        caught_up = lv.heard and lv.metadata_version >= reg.registered_version
        fresh = silent_ms <= cfg.session_timeout_ms and (
            lv.fenced_at_ms is None or lv.last_heartbeat_ms > lv.fenced_at_ms
        )
        if caught_up and fresh and not lv.log_dir_offline:
            return UnfenceBroker(broker_id, reg.broker_epoch)
        return None

    def _leaderless_repairs(self, image: MetadataImage) -> list[Command]:
        unfenced = set(image.unfenced_brokers())
        out: list[Command] = []
        for name in sorted(image.topics):
            t = image.topics[name]
            for p in t.partitions:
                if p.leader != NO_LEADER:
                    continue
                if (set(p.isr) | set(p.elr)) & unfenced or (
                        t.config.unclean_leader_election and set(p.replicas) & unfenced):
                    out.append(ElectLeader(name, p.partition, p.partition_epoch))
        return out

    def _preferred_elections(self, image: MetadataImage, now_ms: int) -> list[Command]:
        delay_ms = self.config.preferred_leader_rebalance_ms
        if delay_ms is None:
            return []
        settled = {
            b
            for b, lv in self._liveness.items()
            if lv.unfenced_since_ms is not None and now_ms - lv.unfenced_since_ms >= delay_ms
        }
        imbalanced = imbalanced_brokers(image, self.config.leader_imbalance_percent)
        return [
            command for command in preferred_leader_elections(image)
            if (p := image.partition(command.topic, command.partition)) is not None
            and p.replicas[0] in settled and p.replicas[0] in imbalanced
        ]

    def _reassignments_to_complete(self, image: MetadataImage) -> list[Command]:
        """Every target replica caught up and in the ISR: switch to the target set."""
        return [
            CompleteReassignment(name, p.partition, p.partition_epoch)
            for name in sorted(image.topics)
            for p in image.topics[name].partitions
            if p.target_replicas and set(p.target_replicas) <= set(p.isr)
        ]

    def _internal_topics(self, image: MetadataImage) -> list[Command]:
        rf = self.config.internal_replication_factor or 3
        if len(image.unfenced_brokers()) < rf:
            return []
        return [
            CreateTopic(name, count, rf, configs=INTERNAL_TOPIC_CONFIGS, internal=True)
            for name, count in sorted(self.config.internal_partitions.items())
            if name not in image.topics
        ]


def preferred_leader_elections(image: MetadataImage, topics: frozenset[str] | None = None) -> list[ElectLeader]:
    """An election for each partition (of `topics`, None: all) whose preferred (first) replica is
    unfenced and in the ISR but does not lead: `ElectLeader` picks the first eligible replica."""
    unfenced = set(image.unfenced_brokers())
    out: list[ElectLeader] = []
    for name in sorted(image.topics):
        if topics is not None and name not in topics:
            continue
        for p in image.topics[name].partitions:
            preferred = p.replicas[0]
            if p.leader not in (NO_LEADER, preferred) and preferred in p.isr and preferred in unfenced:
                out.append(ElectLeader(name, p.partition, p.partition_epoch))
    return out


def imbalanced_brokers(image: MetadataImage, threshold_percent: int) -> set[int]:
    """Brokers that lead at most (100 - threshold)% of the partitions they are the preferred
    leader of (Kafka's leader imbalance ratio is above the threshold)."""
    preferred: dict[int, int] = {}
    not_leading: dict[int, int] = {}
    for t in image.topics.values():
        for p in t.partitions:
            first = p.replicas[0]
            preferred[first] = preferred.get(first, 0) + 1
            if p.leader != first:
                not_leading[first] = not_leading.get(first, 0) + 1
    return {b for b, n in preferred.items() if not_leading.get(b, 0) * 100 > threshold_percent * n}


class Controller:
    """The asyncio shell: watches leadership, runs `ControllerCore`, submits its commands."""

    def __init__(
        self,
        quorum: MetadataQuorum,
        config: ControllerConfig | None = None,
        clock_ms: Callable[[], int] = monotonic_ms,
    ) -> None:
        self.quorum = quorum
        config = config or ControllerConfig()
        if config.internal_replication_factor is None:
            config = replace(config, internal_replication_factor=min(3, len(quorum.config.voters)))
        self.config = config
        self.core = ControllerCore(self.config)
        self._failed_until_ms: dict[Command, int] = {}
        self._link_down_since_ms: dict[str, int] = {}
        self._clock_ms = clock_ms
        self._task: asyncio.Task[None] | None = None
        self._ready = False  # leader and the Barrier committed
        self._active_term = -1  # the Raft term in which this controller became active
        self._in_flight: set[Command] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None

    # -- lifecycle --

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            # A Raft leadership change wakes the loop at once instead of at the next tick.
            self.quorum.add_leadership_listener(lambda _is_leader: self._wake.set() if self._wake else None, loop)
            self._task = loop.create_task(self._run(), name="semel-controller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        for t in [task, *self._tasks]:
            if t is not None:
                t.cancel()
        for t in [task, *self._tasks]:
            if t is not None:
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass
        self._tasks.clear()

    def is_active(self) -> bool:
        return self._ready and self.quorum.is_leader()

    async def _run(self) -> None:
        interval_s = self.config.tick_interval_ms / 1000
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the controller alive; the next tick retries
                log.exception("controller tick failed")
            wake = self._wake
            if wake is None:
                return
            try:
                await asyncio.wait_for(wake.wait(), interval_s)
            except asyncio.TimeoutError:
                pass
            wake.clear()

    async def _tick(self) -> None:
        self._track_links(self._clock_ms())
        if not self.quorum.is_leader() or (self._ready and self.quorum.raft_term() != self._active_term):
            if self.core.active or self._ready:
                log.info("controller: lost leadership")
                self.core.on_lost_leadership()
                self._ready = False
            return
        if not self._ready:
            await self._become_active()
            if not self._ready:
                return
        now = self._clock_ms()
        image = self.quorum.image()
        self._observe_connections(image, now)
        for command in self.core.decide(image, now):
            if command in self._in_flight or len(self._in_flight) >= MAX_CONTROLLER_COMMANDS_IN_FLIGHT:
                continue
            if self._failed_until_ms.get(command, 0) > now:
                continue
            self._in_flight.add(command)
            task = asyncio.get_running_loop().create_task(self._submit_decision(command))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _become_active(self) -> None:
        term = self.quorum.raft_term()
        try:
            await self.quorum.submit(Barrier(), timeout_s=self.config.submit_timeout_s)
        except MetadataSubmitError as exc:
            log.info("controller: barrier failed: %s", exc)
            return
        if not self.quorum.is_leader() or self.quorum.raft_term() != term:
            return
        self.core.on_became_leader(self.quorum.image(), self._clock_ms())
        self._active_term = term
        self._ready = True
        log.info("controller: active at image version %d", self.quorum.image().version)

    def _track_links(self, now_ms: int) -> None:
        """Raft links to the other voters, watched even while passive (see on_connection_status)."""
        for voter in self.quorum.config.voters:
            if voter.raft_address == self.quorum.config.raft_address:
                continue
            if self.quorum.is_peer_connected(voter.raft_address):
                self._link_down_since_ms.pop(voter.raft_address, None)
            else:
                self._link_down_since_ms.setdefault(voter.raft_address, now_ms)

    def _observe_connections(self, image: MetadataImage, now_ms: int) -> None:
        voters = {v.raft_address for v in self.quorum.config.voters}
        for broker_id, reg in image.brokers.items():
            if reg.raft_address and reg.raft_address in voters:
                since = self._link_down_since_ms.get(reg.raft_address)
                self.core.on_connection_status(broker_id, since is None, now_ms, since)

    async def _submit_decision(self, command: Command) -> None:
        try:
            result = await self.quorum.submit(command, timeout_s=self.config.submit_timeout_s)
            if not result.ok:
                log.info("controller: %r -> %s", command, pb.ErrorCode.Name(result.error))
                self._remember_failure(command)
            else:
                log.info("controller: %r", command)
        except MetadataSubmitError as exc:
            log.warning("controller: %r failed: %s", command, exc)
        finally:
            self._in_flight.discard(command)

    def _remember_failure(self, command: Command) -> None:
        now = self._clock_ms()
        self._failed_until_ms = {c: t for c, t in self._failed_until_ms.items() if t > now}
        if len(self._failed_until_ms) < MAX_CONTROLLER_COMMANDS_IN_FLIGHT:
            self._failed_until_ms[command] = now + self.config.failed_decision_backoff_ms

    # -- the API called by the broker's gRPC handlers --

    def on_heartbeat(
        self, broker_id: int, broker_epoch: int, metadata_version: int, now_ms: int | None = None,
        log_dir_offline: bool = False,
    ) -> HeartbeatReply:
        if not self.is_active():
            return HeartbeatReply(pb.NOT_LEADER_OR_FOLLOWER, fenced=True)
        now = self._clock_ms() if now_ms is None else now_ms
        return self.core.on_heartbeat(self.quorum.image(), broker_id, broker_epoch, metadata_version, now,
                                      log_dir_offline=log_dir_offline)

    def on_broker_unreachable(self, broker_id: int, now_ms: int | None = None) -> None:
        self.core.on_broker_unreachable(broker_id, self._clock_ms() if now_ms is None else now_ms)

    async def _submit(self, command: Command) -> tuple[int, object]:
        try:
            result = await self.quorum.submit(command, timeout_s=self.config.submit_timeout_s)
        except MetadataSubmitError as exc:
            return exc.code, None
        return result.error, result.value

    async def register_broker(
        self, broker_id: int, incarnation_id: str, host: str, port: int, raft_address: str | None = None
    ) -> tuple[int, int]:
        """-> (error, broker_epoch). The broker starts fenced; heartbeats unfence it."""
        error, value = await self._submit(RegisterBroker(broker_id, incarnation_id, host, port, raft_address))
        if error != pb.NONE:
            return error, -1
        if not isinstance(value, int):
            raise AssertionError(f"RegisterBroker answered {value!r}, not a broker epoch")
        broker_epoch = value
        self.core.on_registered(broker_id, broker_epoch, self._clock_ms())
        return error, broker_epoch

    async def alter_partition(
        self,
        topic: str,
        partition: int,
        broker_id: int,
        broker_epoch: int,
        leader_epoch: int,
        partition_epoch: int,
        new_isr: tuple[int, ...],
    ) -> tuple[int, PartitionState | None]:
        command = AlterPartition(topic, partition, broker_id, broker_epoch, leader_epoch, partition_epoch, tuple(new_isr))
        error, value = await self._submit(command)
        return error, value if isinstance(value, PartitionState) else None

    async def allocate_producer_ids(self, broker_id: int, broker_epoch: int) -> tuple[int, ProducerIdBlock | None]:
        error, value = await self._submit(AllocateProducerIds(broker_id, broker_epoch))
        return error, value if isinstance(value, ProducerIdBlock) else None

    async def create_topic(
        self, name: str, partitions: int, replication_factor: int, configs: tuple[tuple[str, str], ...] = ()
    ) -> tuple[int, Topic | None]:
        error, value = await self._submit(CreateTopic(name, partitions, replication_factor, tuple(configs)))
        return error, value if isinstance(value, Topic) else None

    async def delete_topic(self, name: str) -> int:
        error, _ = await self._submit(DeleteTopic(name))
        return error
