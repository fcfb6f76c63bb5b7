"""CreateTopics with `validate_only` runs exactly the checks of the real create: for each check
that refuses a request, the dry run and the create (both through the Admin servicer, over
one metadata state machine) answer the same code."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.cluster.broker.replica_limit import PartitionReplicaLimit
from semel.cluster.broker.server import AdminService
from semel.cluster.metadata import state as md
from semel.v1 import admin_pb2 as apb
from semel.v1 import common_pb2 as pb


class MachineQuorum:
    """The broker's view of the quorum: commands apply at once to one state machine."""

    def __init__(self, machine: md.MetadataStateMachine) -> None:
        self.machine = machine

    def image(self) -> md.MetadataImage:
        return self.machine.image

    async def submit(self, command: md.Command, timeout_s: float | None = None) -> md.Result:
        return self.machine.apply(command)


REPLICA_LIMIT = 20  # partition replicas per broker


class AdminBroker:
    def __init__(self, machine: md.MetadataStateMachine) -> None:
        self.quorum = MachineQuorum(machine)
        self.partition_replica_limit = PartitionReplicaLimit(REPLICA_LIMIT, None)

    async def wait_for_metadata(self, predicate, timeout_s: float) -> bool:
        return bool(predicate(self.quorum.image()))


def machine(brokers: int = 3, fenced: tuple[int, ...] = ()) -> md.MetadataStateMachine:
    m = md.MetadataStateMachine()
    for b in range(1, brokers + 1):
        epoch = m.apply(md.RegisterBroker(b, f"inc-{b}", "127.0.0.1", 9000 + b)).value
        if b not in fenced:
            assert m.apply(md.UnfenceBroker(b, epoch)).ok
    assert m.apply(md.CreateTopic("existing", 2, 1)).ok
    return m


def create(m: md.MetadataStateMachine, topic: apb.NewTopic, validate_only: bool) -> apb.TopicResult:
    request = apb.CreateTopicsRequest(topics=[topic], validate_only=validate_only, timeout_ms=1000)
    return asyncio.run(AdminService(AdminBroker(m)).CreateTopics(request, None)).results[0]  # type: ignore[arg-type]


def new_topic(name: str = "fresh", partitions: int = 1, rf: int = 1, **configs: str) -> apb.NewTopic:
    return apb.NewTopic(name=name, partitions=partitions, replication_factor=rf, configs=configs)


REFUSED = {
    "bad name": (new_topic(name="bad name"), pb.INVALID_TOPIC_NAME),
    "internal name": (new_topic(name="__mine"), pb.INVALID_TOPIC_NAME),
    "topic exists": (new_topic(name="existing"), pb.TOPIC_ALREADY_EXISTS),
    "no partitions": (new_topic(partitions=0), pb.INVALID_PARTITIONS),
    "too many partitions": (new_topic(partitions=md.MAX_PARTITIONS_PER_TOPIC + 1), pb.INVALID_PARTITIONS),
    "rf above live brokers": (new_topic(rf=4), pb.INVALID_REPLICATION_FACTOR),
    "rf negative": (new_topic(rf=-1), pb.INVALID_REPLICATION_FACTOR),
    "unknown config": (new_topic(nope="1"), pb.INVALID_CONFIG),
    "min isr above rf": (new_topic(rf=2, min_insync_replicas="3"), pb.INVALID_CONFIG),
    "bad segment bytes": (new_topic(segment_bytes="12"), pb.INVALID_CONFIG),
    "over the partition-replica limit": (new_topic(partitions=REPLICA_LIMIT, rf=3), pb.POLICY_VIOLATION),
    # several checks fail: the first one in the create's order answers
    "partitions before config": (new_topic(partitions=0, nope="1"), pb.INVALID_PARTITIONS),
    "exists before rf": (new_topic(name="existing", rf=9), pb.TOPIC_ALREADY_EXISTS),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_dry_run_refuses_what_the_create_refuses(case):
    topic, code = REFUSED[case]
    m = machine()
    dry = create(m, topic, validate_only=True)
    version = m.image.version
    real = create(m, topic, validate_only=False)
    assert (dry.error_code, real.error_code) == (code, code), (dry, real)
    assert dry.error_message == real.error_message
    assert m.image.version == version  # refused: nothing was applied


def both_refuse(m: md.MetadataStateMachine, topic: apb.NewTopic, code: int) -> None:
    dry = create(m, topic, validate_only=True)
    real = create(m, topic, validate_only=False)
    assert (dry.error_code, real.error_code) == (code, code), (topic, dry, real)


def test_the_checks_that_depend_on_the_image(monkeypatch):
    """Fenced brokers do not count as live; the limits on replication factor and on partitions
    across the cluster are checked as the create checks them."""
    both_refuse(machine(fenced=(3,)), new_topic(rf=3), pb.INVALID_REPLICATION_FACTOR)
    with monkeypatch.context() as patch:
        patch.setattr(md, "MAX_REPLICATION_FACTOR", 1)
        both_refuse(machine(), new_topic(rf=2), pb.INVALID_REPLICATION_FACTOR)
    with monkeypatch.context() as patch:
        patch.setattr(md, "MAX_PARTITIONS_TOTAL", 4)  # "existing" holds 2
        both_refuse(machine(), new_topic(partitions=3), pb.RESOURCE_EXHAUSTED)


def test_a_dry_run_of_an_acceptable_request_changes_nothing():
    m = machine()
    topic = new_topic(partitions=3, rf=3, min_insync_replicas="2", retention_ms="60000")
    before = m.image
    assert create(m, topic, validate_only=True).error_code == pb.NONE
    assert m.image is before
    assert create(m, topic, validate_only=False).error_code == pb.NONE
    created = m.image.topic("fresh")
    assert created is not None and created.config.min_insync_replicas == 2


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["existing", "fresh", "__x", "a b", "x" * 250]), st.integers(-1, md.MAX_PARTITIONS_PER_TOPIC + 1),
       st.integers(-1, 5), st.lists(st.sampled_from([("min_insync_replicas", "2"), ("min_insync_replicas", "4"),
                                                     ("retention_ms", "0"), ("segment_ms", "1"), ("nope", "1")]),
                                    max_size=2),
       st.booleans(), st.sampled_from([0, 1, 3, 1000]))
def test_validation_answers_what_the_command_answers(name, partitions, rf, configs, internal, replica_limit):
    m = machine(fenced=(3,))
    command = md.CreateTopic(name, partitions, rf, tuple(configs), internal=internal,
                             max_replicas_per_broker=replica_limit)
    code, config = md.validate_create_topic(m.image, command)
    result = m.apply(command)
    assert code == result.error and (config is None) == (not result.ok)
    if result.ok:
        assert result.value.config == config
