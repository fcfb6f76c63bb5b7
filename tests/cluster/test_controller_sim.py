"""A seeded simulation of brokers, a controller and the metadata state machine on a fake clock.

Brokers heartbeat, die (kill -9: heartbeats stop, Raft link drops), restart with a new
incarnation; partition leaders re-add caught-up replicas to their ISR; the controller fails
over. After every step the metadata invariants hold, and a dead broker is fenced (so leads
nothing) within a bounded time. Set SEMEL_SIM_SEED to replay a failure.
"""

from __future__ import annotations

import os
import random

import pytest
from semel.cluster.metadata.controller import ControllerConfig, ControllerCore
from semel.cluster.metadata.state import (
    NO_LEADER,
    AlterPartition,
    CreateTopic,
    MetadataStateMachine,
    RegisterBroker,
    check_invariants,
)

TICK_MS = 10
BROKERS = (1, 2, 3, 4, 5)
CFG = ControllerConfig(session_timeout_ms=1000, heartbeat_interval_ms=100, disconnect_grace_ms=150)


def seeds() -> list[int]:
    if "SEMEL_SIM_SEED" in os.environ:
        return [int(os.environ["SEMEL_SIM_SEED"])]
    return list(range(8))


@pytest.mark.parametrize("seed", seeds())
def test_simulated_cluster(seed: int) -> None:
    print(f"seed={seed} (replay with SEMEL_SIM_SEED={seed})")
    rng = random.Random(seed)
    m = MetadataStateMachine()
    now = 0
    alive: dict[int, bool] = {}
    died_at: dict[int, int] = {}
    incarnation: dict[int, int] = {}
    for b in BROKERS:
        incarnation[b] = 0
        m.apply(RegisterBroker(b, f"{b}-0", "h", 9000 + b, f"h:{b}"))
        alive[b] = True
    core = ControllerCore(CFG)
    core.on_became_leader(m.image, now)
    active_since = now
    next_beat = {b: rng.randrange(0, 100) for b in BROKERS}
    applied: dict[str, int] = {}

    for step in range(3000):
        now += TICK_MS
        event = rng.random()
        if event < 0.004:
            victim = rng.choice(BROKERS)
            if alive[victim] and sum(alive.values()) > 2:
                alive[victim] = False
                died_at[victim] = now
                if rng.random() < 0.5:  # the Raft link drop is seen (combined mode)
                    core.on_connection_status(victim, False, now)
        elif event < 0.008:
            back = rng.choice(BROKERS)
            if not alive[back]:
                alive[back] = True
                died_at.pop(back, None)
                incarnation[back] += 1
                core.on_connection_status(back, True, now)
                m.apply(RegisterBroker(back, f"{back}-{incarnation[back]}", "h", 9000 + back, f"h:{back}"))
        elif event < 0.009:
            core = ControllerCore(CFG)  # controller failover: sessions restart now
            core.on_became_leader(m.image, now)
            active_since = now
        elif event < 0.011 and len(m.image.unfenced_brokers()) >= 3:
            name = f"t{step}"
            m.apply(CreateTopic(name, rng.randint(1, 6), 3, (("unclean_leader_election", "true"),) if rng.random() < 0.2 else ()))

        for b in BROKERS:
            if alive[b] and now >= next_beat[b]:
                next_beat[b] = now + rng.randint(80, 120)
                reg = m.image.broker(b)
                core.on_heartbeat(m.image, b, reg.broker_epoch, m.image.version, now)

        # Live leaders add caught-up (unfenced, alive) replicas back to the ISR now and then.
        if rng.random() < 0.05:
            for t in list(m.image.topics.values()):
                for p in t.partitions:
                    if p.leader == NO_LEADER or not alive[p.leader]:
                        continue
                    missing = [r for r in p.replicas if r not in p.isr and alive[r] and not m.image.broker(r).fenced]
                    if missing:
                        reg = m.image.broker(p.leader)
                        m.apply(
                            AlterPartition(t.name, p.partition, p.leader, reg.broker_epoch, p.leader_epoch,
                                           p.partition_epoch, p.isr + (missing[0],))
                        )

        for command in core.decide(m.image, now):
            if m.apply(command).ok:
                applied[type(command).__name__] = applied.get(type(command).__name__, 0) + 1
        check_invariants(m.image)

        # Bounded detection: a dead broker is fenced within the session timeout (+2 ticks)
        # counted from its death or from the controller's start, whichever is later.
        for b, t_dead in died_at.items():
            if now - max(t_dead, active_since) > CFG.session_timeout_ms + 2 * TICK_MS:
                assert m.image.broker(b).fenced, f"broker {b} dead since {t_dead} still unfenced at {now}"
    # Quiesce: everything alive is unfenced after a while, every partition with a live ISR
    # member has a live leader.
    for _ in range(200):
        now += TICK_MS
        for b in BROKERS:
            if alive[b] and now >= next_beat[b]:
                next_beat[b] = now + 100
                core.on_heartbeat(m.image, b, m.image.broker(b).broker_epoch, m.image.version, now)
        for command in core.decide(m.image, now):
            m.apply(command)
    print("controller decisions applied:", applied)
    assert applied.get("FenceBroker", 0) >= 1 and applied.get("UnfenceBroker", 0) >= 1
    for b in BROKERS:
        assert m.image.broker(b).fenced == (not alive[b])
    for t in m.image.topics.values():
        for p in t.partitions:
            if any(alive[r] for r in p.isr):
                assert p.leader != NO_LEADER and alive[p.leader]
    check_invariants(m.image)
