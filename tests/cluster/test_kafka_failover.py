"""The same guarantees over the Kafka listener: an idempotent librdkafka producer whose
partition leader is killed (SIGKILL) mid-stream delivers every record exactly once."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic

from .harness import Cluster

pytestmark = [pytest.mark.slow]


def test_idempotent_produce_survives_a_killed_leader_without_loss_or_duplicates(tmp_path):
    n = 6000
    with Cluster(tmp_path, brokers=3, kafka=True) as cluster:
        bootstrap = cluster.kafka_bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic("failover", 1, 3)], operation_timeout=30).values():
            future.result(timeout=60)
        cluster.wait_for_isr("failover", 0, 3)
        leader = cluster.leader_of("failover", 0)
        producer = KafkaProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 2, "message.timeout.ms": 120_000})
        errors: list[object] = []
        delivered = threading.Event()
        count = [0]

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(err)
            count[0] += 1
            if count[0] >= n // 3:
                delivered.set()

        for i in range(n):
            producer.produce("failover", value=b"%d" % i, partition=0, on_delivery=on_delivery)
            producer.poll(0)
            if i == n // 2:
                deadline = time.monotonic() + 60
                while not delivered.is_set() and time.monotonic() < deadline:
                    producer.poll(0.05)  # delivery callbacks run in poll()
                assert delivered.is_set(), "the first third was not acknowledged"
                cluster.kill(leader)  # mid-stream: the rest is queued or in flight to it
        assert producer.flush(120) == 0
        assert errors == []
        new_leader = cluster.leader_of("failover", 0, exclude=[leader])
        assert new_leader != leader
        consumer = Consumer({"bootstrap.servers": ",".join(cluster.kafka_address(b) for b in cluster.running()),
                             "group.id": "failover-check", "enable.auto.commit": False})
        consumer.assign([TopicPartition("failover", 0, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + 120
        while len(values) < n and time.monotonic() < deadline:
            values += [m.value() for m in consumer.consume(num_messages=1000, timeout=1.0) if m.error() is None]
        values += [m.value() for m in consumer.consume(num_messages=1000, timeout=2.0) if m.error() is None]
        consumer.close()
        assert values == [b"%d" % i for i in range(n)]  # all, once, in order
