"""A metadata change costs the broker work on the partitions it changed, not a role pass over
every hosted replica (issue 19: at 600+ partitions per broker the pass on every change, ISR
changes included, stalled the event loop); and the roles still follow every image."""

from __future__ import annotations

import pytest
from semel.cluster.broker.replica_manager import ReplicaManager, Role
from semel.cluster.broker.storage_adapter import open_replica_store
from semel.cluster.metadata import state as md
from semel.storage.kv import KvStore

from tests.cluster.fake_time import FakeClock


def expected_role(image: md.MetadataImage, ps: md.PartitionState, broker_id: int) -> Role:
    reg = image.broker(broker_id)
    if reg is None or reg.fenced:
        return Role.OFFLINE
    if ps.leader == broker_id:
        return Role.LEADER
    return Role.FOLLOWER if ps.leader != md.NO_LEADER else Role.OFFLINE


def assert_roles_follow(rm: ReplicaManager, image: md.MetadataImage) -> None:
    for topic in image.topics.values():
        for ps in topic.partitions:
            if rm.broker_id not in ps.replicas:
                continue
            p = rm.get(topic.name, ps.partition)
            assert p.role == expected_role(image, ps, rm.broker_id), (ps, p.role)
            assert p.state == ps
            if p.role != Role.OFFLINE:
                assert p.leader_epoch == ps.leader_epoch


@pytest.fixture
def setup(tmp_path):
    machine = md.MetadataStateMachine()
    epochs = {}
    for b in (1, 2, 3):
        epochs[b] = machine.apply(md.RegisterBroker(b, f"inc-{b}", "127.0.0.1", 9000 + b)).value
        assert machine.apply(md.UnfenceBroker(b, epochs[b])).ok
    assert machine.apply(md.CreateTopic("t", 30, 3)).ok
    kv = KvStore.open(tmp_path / "kv")
    rm = ReplicaManager(1, tmp_path, 10_000, lambda d, t, p: open_replica_store(d, t, p, kv=kv), clock=FakeClock())
    rm.broker_epoch = epochs[1]
    rm.reconcile(machine.image)
    try:
        yield machine, rm, epochs
    finally:
        rm.close()
        kv.close()


def test_an_unrelated_change_visits_only_what_it_changed(setup):
    machine, rm, _epochs = setup
    assert_roles_follow(rm, machine.image)
    visited: list[tuple[str, int]] = []
    apply_state = rm._apply_state

    def counting(p, *args):  # a spy on the role pass; the real pass still runs
        visited.append(p.key)
        apply_state(p, *args)

    rm._apply_state = counting  # type: ignore[method-assign]
    rm.reconcile(machine.image)  # the same image again: nothing to do
    assert visited == []
    assert machine.apply(md.CreateTopic("u", 1, 3)).ok
    rm.reconcile(machine.image)
    assert visited == [("u", 0)]
    assert_roles_follow(rm, machine.image)


def test_roles_follow_fencing_and_leader_moves(setup):
    machine, rm, epochs = setup
    # broker 2 fenced: its leaderships move (some to broker 1), the rest of broker 1 keeps its roles
    assert machine.apply(md.FenceBroker(2, epochs[2])).ok
    rm.reconcile(machine.image)
    assert_roles_follow(rm, machine.image)
    assert sum(p.role == Role.LEADER for p in rm.partitions.values()) > 10
    # broker 1 itself fenced: every replica goes offline, even those whose state did not change
    assert machine.apply(md.FenceBroker(1, epochs[1])).ok
    rm.reconcile(machine.image)
    assert_roles_follow(rm, machine.image)
    assert all(p.role == Role.OFFLINE for p in rm.partitions.values())


def test_a_replica_taken_offline_outside_the_image_takes_its_role_again(setup):
    machine, rm, _epochs = setup
    led = next(p for p in rm.partitions.values() if p.role == Role.LEADER)
    led.go_offline()  # as a storage failure does; the next image must bring the role back
    assert machine.apply(md.CreateTopic("u", 1, 3)).ok
    rm.reconcile(machine.image)
    assert led.role == Role.LEADER


def test_a_large_creation_opens_its_replicas_over_several_loop_turns(setup):
    """New replicas beyond NEW_REPLICAS_OPENED_PER_LOOP_TURN open in later turns, so the loop
    serves other work in between; each takes the role the newest image gives it."""
    import asyncio

    from semel import limits

    machine, rm, _epochs = setup
    per_turn = limits.NEW_REPLICAS_OPENED_PER_LOOP_TURN
    assert machine.apply(md.CreateTopic("big", 2 * per_turn + 5, 3)).ok

    async def run() -> list[int]:
        hosted = []
        rm.reconcile(machine.image)
        hosted.append(sum(1 for k in rm.partitions if k[0] == "big"))
        for _ in range(10):
            await asyncio.sleep(0)  # one loop turn: other tasks run here
            hosted.append(sum(1 for k in rm.partitions if k[0] == "big"))
        return hosted

    hosted = asyncio.run(run())
    assert hosted[0] == per_turn and hosted[1] == 2 * per_turn and hosted[-1] == 2 * per_turn + 5, hosted
    assert_roles_follow(rm, machine.image)


def test_many_role_changes_log_one_summary_and_a_few_log_each(setup, caplog):
    import logging

    machine, rm, epochs = setup
    caplog.set_level(logging.INFO, logger="semel.cluster.broker.replica_manager")
    assert machine.apply(md.CreateTopic("u", 1, 3)).ok
    rm.reconcile(machine.image)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["u-0"]
    caplog.clear()
    assert machine.apply(md.FenceBroker(1, epochs[1])).ok  # all 31 replicas go offline
    rm.reconcile(machine.image)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("31 replicas changed role: 31 offline"), line


def test_housekeeping_runs_in_slices_with_other_work_in_between(setup):
    import asyncio

    from semel import limits

    machine, rm, _epochs = setup
    assert machine.apply(md.CreateTopic("big", 2 * limits.HOUSEKEEPING_REPLICAS_PER_LOOP_TURN + 1, 3)).ok
    rm.reconcile(machine.image)
    done: list[tuple[str, int]] = []
    housekeep = rm._housekeep

    def counting(replicas, *args):  # a spy; the real housekeeping still runs
        done.extend(p.key for p in replicas)
        housekeep(replicas, *args)

    rm._housekeep = counting  # type: ignore[method-assign]
    removed = list(rm.partitions)[-1]  # in the last slice

    async def run() -> int:
        turns = 0

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                if turns == 1:  # between two slices: a replica goes away
                    rm._remove(rm.partitions[removed], delete_data=True)
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(other_work())
        await rm.housekeeping_in_turns(0, 0)
        task.cancel()
        return turns

    assert asyncio.run(run()) >= 2
    assert len(done) == len(rm.partitions) and removed not in done


def test_isr_lines_log_each_when_few_and_one_summary_when_many(caplog):
    import logging

    from semel.cluster.broker import replication

    caplog.set_level(logging.INFO, logger=replication.log.name)
    few = [("%s-%d: ISR change not committed: %s", ("t", i, "timeout")) for i in range(2)]
    replication._log_each_or_summary(few, "ISR changes not committed")
    assert [r.getMessage() for r in caplog.records] == ["t-0: ISR change not committed: timeout",
                                                        "t-1: ISR change not committed: timeout"]
    caplog.clear()
    many = [("%s-%d: ISR %s -> %s (%s)", ("t", i, (1, 2), (1,), "out")) for i in range(600)]
    replication._log_each_or_summary(many, "ISR changes proposed")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("600 ISR changes proposed (first: t-0: ISR (1, 2) -> (1,) (out);"), line
