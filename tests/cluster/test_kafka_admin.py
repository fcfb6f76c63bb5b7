"""Topic administration over the Kafka listener with real admin clients: CreatePartitions,
IncrementalAlterConfigs (confluent-kafka) and AlterConfigs (kafka-python), onto the Admin
service's add-partitions and alter-config paths; what they change is read back through
Metadata, DescribeConfigs and a produce to a new partition. And the README's Kafka quickstart,
run as written."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

TIMEOUT_S = 60


def _admin(kafka_cluster) -> AdminClient:  # noqa: ANN001
    return AdminClient({"bootstrap.servers": kafka_cluster.kafka_bootstrap})


def _create(admin: AdminClient, name: str, partitions: int, **config: str) -> None:
    for f in admin.create_topics([NewTopic(name, partitions, 3, config=config)], operation_timeout=30).values():
        f.result(timeout=TIMEOUT_S)


def _configs(admin: AdminClient, topic: str) -> dict:
    (configs,) = [f.result(timeout=TIMEOUT_S)
                  for f in admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()]
    return configs


def test_confluent_admin_adds_partitions_and_a_new_partition_takes_records(kafka_cluster):
    admin = _admin(kafka_cluster)
    _create(admin, "grow", 2)
    # validate_only accepts a valid count and changes nothing
    for f in admin.create_partitions([NewPartitions("grow", 5)], validate_only=True).values():
        f.result(timeout=TIMEOUT_S)
    assert len(admin.list_topics("grow", timeout=30).topics["grow"].partitions) == 2

    for f in admin.create_partitions([NewPartitions("grow", 4)], operation_timeout=30).values():
        f.result(timeout=TIMEOUT_S)
    assert sorted(admin.list_topics("grow", timeout=30).topics["grow"].partitions) == [0, 1, 2, 3]

    # not larger than now: refused (partitions are never removed); an unknown topic too
    for new in (NewPartitions("grow", 4), NewPartitions("no-such-topic", 3)):
        with pytest.raises(KafkaException):
            for f in admin.create_partitions([new], operation_timeout=30).values():
                f.result(timeout=TIMEOUT_S)
    with pytest.raises(KafkaException):  # validate_only refuses what the real request would
        for f in admin.create_partitions([NewPartitions("grow", 3)], validate_only=True).values():
            f.result(timeout=TIMEOUT_S)

    producer = CKProducer({"bootstrap.servers": kafka_cluster.kafka_bootstrap, "enable.idempotence": True,
                           "acks": "all"})
    for i in range(20):
        producer.produce("grow", value=b"new-%d" % i, partition=3)
    assert producer.flush(TIMEOUT_S) == 0
    del producer
    consumer = CKConsumer({"bootstrap.servers": kafka_cluster.kafka_bootstrap, "group.id": "grow-reader",
                           "enable.auto.commit": False})
    consumer.assign([TopicPartition("grow", 3, 0)])
    got: list[bytes] = []
    while len(got) < 20:
        m = consumer.poll(TIMEOUT_S)
        assert m is not None, f"only {len(got)} of 20 records read from the new partition"
        assert m.error() is None, m.error()
        got.append(m.value())
    consumer.close()
    assert got == [b"new-%d" % i for i in range(20)]


def test_confluent_admin_incremental_alter_configs_sets_and_resets_topic_configs(kafka_cluster):
    admin = _admin(kafka_cluster)
    _create(admin, "alter-me", 1, **{"retention.ms": "600000"})

    def alter(*entries: ConfigEntry, validate_only: bool = False) -> None:
        resource = ConfigResource(ResourceType.TOPIC, "alter-me", incremental_configs=list(entries))
        for f in admin.incremental_alter_configs([resource], validate_only=validate_only).values():
            f.result(timeout=TIMEOUT_S)

    SET, DELETE = AlterConfigOpType.SET, AlterConfigOpType.DELETE
    alter(ConfigEntry("retention.bytes", "1048576", incremental_operation=SET), validate_only=True)
    assert _configs(admin, "alter-me")["retention.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    alter(ConfigEntry("retention.bytes", "1048576", incremental_operation=SET),
          ConfigEntry("retention.ms", None, incremental_operation=DELETE))
    configs = _configs(admin, "alter-me")
    assert configs["retention.bytes"].value == "1048576"
    assert configs["retention.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value  # deleted: back to the default

    # refused, nothing changed: an unknown key, a read-only one, a bad value, a list operation
    for bad in (ConfigEntry("no.such.config", "1", incremental_operation=SET),
                ConfigEntry("cleanup.policy", "compact", incremental_operation=SET),
                ConfigEntry("min.insync.replicas", "7", incremental_operation=SET),
                ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.APPEND)):
        with pytest.raises(KafkaException):
            alter(bad)
    assert _configs(admin, "alter-me")["min.insync.replicas"].value == "2"


def test_alter_configs_replaces_the_whole_topic_config(kafka_cluster):
    """AlterConfigs (33) is Kafka's replacing form: kio's v2 message straight on the wire shows
    that a key left out goes back to its default; kafka-python's alter_configs(incremental=False)
    fills in the keys already changed (as it must for that semantics) and keeps them."""
    from kafka.admin import ConfigResource as KPConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient
    from kafka.admin import NewPartitions as KPNewPartitions
    from kio.schema.alter_configs.v2.request import AlterableConfig, AlterConfigsRequest, AlterConfigsResource
    from kio.schema.errors import ErrorCode
    from kio.static.primitive import i8

    from tests.cluster.test_kafka_clients import _connect, _read_response, _request

    admin = _admin(kafka_cluster)
    _create(admin, "replace-me", 1, **{"retention.ms": "600000", "segment.ms": "900000"})
    kp = KafkaAdminClient(bootstrap_servers=kafka_cluster.kafka_bootstrap, request_timeout_ms=TIMEOUT_S * 1000)
    try:
        kp.alter_configs([KPConfigResource(ConfigResourceType.TOPIC, "replace-me", configs={"retention.ms": "700000"})],
                         incremental=False)  # AlterConfigs, not the default IncrementalAlterConfigs
        configs = _configs(admin, "replace-me")
        assert (configs["retention.ms"].value, configs["segment.ms"].value) == ("700000", "900000")
        kp.create_partitions({"replace-me": KPNewPartitions(total_count=3)})
        assert len(admin.list_topics("replace-me", timeout=30).topics["replace-me"].partitions) == 3
    finally:
        kp.close()

    request = AlterConfigsRequest(validate_only=False, resources=(AlterConfigsResource(
        resource_type=i8(2), resource_name="replace-me",
        configs=(AlterableConfig(name="retention.ms", value="800000"),)),))
    with _connect(kafka_cluster) as sock:
        sock.sendall(_request(33, 2, request))
        (answer,) = _read_response(sock, 33, 2).responses  # type: ignore[attr-defined]
    assert answer.error_code == ErrorCode.none, answer.error_message
    configs = _configs(admin, "replace-me")
    assert configs["retention.ms"].value == "800000"
    assert configs["segment.ms"].source == ConfigSource.DEFAULT_CONFIG.value  # left out: back to the default


def _readme_kafka_quickstart() -> tuple[str, list[str]]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("Existing Kafka clients work unchanged"):text.index("Records produced over either protocol")]
    (python,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (shell,) = re.findall(r"```\n(echo .*?)```", section, re.S)
    return python, [line.split("#")[0].strip() for line in shell.splitlines() if line.strip()]


def test_the_readmes_kafka_quickstart_runs_as_written(kafka_cluster):
    python, shell = _readme_kafka_quickstart()
    bootstrap = kafka_cluster.kafka_bootstrap
    _create(_admin(kafka_cluster), "demo", 3)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(python.replace("127.0.0.1:9192", bootstrap), {})  # noqa: S102 (our own README)
    assert "b'hello over Kafka'" in out.getvalue()
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (Debian package kcat)")
    results = []
    for line in shell:
        stdin = None
        if "|" in line:
            echo, line = line.split("|", 1)
            stdin = shlex.split(echo)[1] + "\n"
        argv = shlex.split(line.replace("127.0.0.1:9192", bootstrap))
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, (line, done.stderr)
        results.append(done.stdout)
    assert set(results[1].splitlines()) == {"hello over Kafka", "hello from kcat"}
    assert '"demo" with 3 partitions' in results[2]
