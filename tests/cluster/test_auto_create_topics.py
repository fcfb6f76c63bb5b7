"""Topic auto-creation (`--auto-create-topics`, Kafka's auto.create.topics.enable) on real broker
processes: a client's Metadata or Produce for a missing topic creates it through the quorum;
internal and invalid names never are. Off by default (tests/cluster/test_cli_papercuts.py: a
missing topic fails fast on a default cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from semel.client import Admin, Consumer, Producer
from semel.cluster.broker.auto_create import AutoCreateSettings, auto_create_command
from semel.cluster.metadata import state as md
from tests.cluster.harness import cluster_fixture

auto_cluster = cluster_fixture(3, extra_args=["--auto-create-topics", "--auto-create-partitions", "2"],
                               scope="module", kafka=True)


def test_the_rule_never_creates_internal_or_invalid_names_nor_when_off() -> None:
    image = md.MetadataImage()
    on = AutoCreateSettings(enabled=True, partitions=4, replication_factor=2)
    assert auto_create_command("orders", image, on) == md.CreateTopic("orders", 4, 2)
    for name in ("__consumer_offsets", "__transaction_state", "__mine", "bad name!", "", "a" * 300, ".."):
        assert auto_create_command(name, image, on) is None, name
    assert auto_create_command("orders", image, AutoCreateSettings()) is None  # off by default


def _wait_for_topic(admin: Admin, name: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while name not in admin.list_topics():
        assert time.monotonic() < deadline, f"{name} was not created"
        time.sleep(0.1)


@pytest.mark.slow
def test_produce_and_metadata_create_a_missing_topic_but_never_an_internal_or_invalid_one(auto_cluster) -> None:
    bootstrap = auto_cluster.bootstrap
    with Producer(bootstrap, linger_ms=0) as producer:
        meta = producer.send("made-by-produce", b"hello").result(60)
    with Admin(bootstrap) as admin:
        (described,) = admin.describe_topics(["made-by-produce"])
        assert len(described.partitions) == 2  # --auto-create-partitions
        assert all(len(p.replicas) == 3 for p in described.partitions)  # the cluster default: min(3, brokers)
        # one Metadata request naming an internal-looking, an invalid and a valid missing topic
        admin.metadata(["__sneaky", "bad name!", "made-by-metadata"])
        _wait_for_topic(admin, "made-by-metadata")
        topics = admin.list_topics(include_internal=True)
        assert "__sneaky" not in topics and "bad name!" not in topics
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([("made-by-produce", meta.partition)])
        deadline = time.monotonic() + 30
        values: list[bytes] = []
        while not values and time.monotonic() < deadline:
            values = [r.value for r in consumer.poll(1000)]
        assert values == [b"hello"]
    env = dict(os.environ, SEMEL_BOOTSTRAP=bootstrap)  # the CLI waits for it rather than failing fast
    cli = subprocess.run([sys.executable, "-m", "semel.cli", "produce", "made-by-cli"], input=b"x\n",
                         capture_output=True, env=env, timeout=120)
    assert cli.returncode == 0, cli.stderr


@pytest.mark.slow
def test_a_kafka_producer_creates_a_missing_topic(auto_cluster) -> None:
    from confluent_kafka import Producer as KafkaProducer

    producer = KafkaProducer({"bootstrap.servers": auto_cluster.kafka_bootstrap, "enable.idempotence": True})
    delivered: list[object] = []
    producer.produce("made-by-kafka", value=b"v", on_delivery=lambda err, msg: delivered.append(err or msg))
    assert producer.flush(60) == 0
    assert len(delivered) == 1 and not isinstance(delivered[0], Exception) and delivered[0].error() is None
    with Admin(auto_cluster.bootstrap) as admin:
        assert "made-by-kafka" in admin.list_topics()
