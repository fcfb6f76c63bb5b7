"""The Semel Python client: `Producer`, `Consumer` and `Admin` over the semel.v1 gRPC API.

    from semel.client import Producer, Consumer, Admin

    with Producer("127.0.0.1:9092") as producer:
        producer.send("events", b"hello", key=b"user-1").result()

See docs/client.md for every option and the guarantees. Structure: the batching rules
live in the pure `client_accumulator`, the record encoding in `client_records`, the
partitioner in `client_partitioner`, the error taxonomy in `client_errors`, channels and
the metadata cache in `client_metadata`. The threaded shells are
`client_producer` (the background sender thread), `client_consumer` (the fetch loop) and
`client_admin`; this module only gathers the public names.

Ordering and duplicates: with acks="all" the producer is idempotent by default
(`client_idempotence`: producer id, epoch and per-partition sequences; up to 5 batches in
flight per partition, order kept across retries, a retry after a lost acknowledgement is
deduplicated by the leader). `Producer(transactional_id=...)` adds Kafka's transactions
(`client_txn`: init_transactions / begin / send_offsets_to_transaction / commit / abort).
Without idempotence, `max_in_flight=1` keeps order but a retry can store a batch twice.
"""

from __future__ import annotations

from semel.client.accumulator import RecordFuture
from semel.client.admin import (
    Acl,
    Admin,
    BrokerDescription,
    ClusterDescription,
    PartitionChange,
    PartitionDescription,
    TopicConfigEntry,
    TopicDescription,
)
from semel.client.base import parse_acks
from semel.client.errors import SemelError
from semel.client.group import (  # assign-based, or a group member with group_id
    Consumer,
    ConsumerGroupMetadata,
)
from semel.client.metadata import ClusterView, PartitionInfo
from semel.client.producer import Producer
from semel.client.records import ConsumerRecord, RecordMetadata
from semel.client.security import ClientSecurity

__all__ = [
    "Acl",
    "Admin",
    "BrokerDescription",
    "ClientSecurity",
    "ClusterDescription",
    "ClusterView",
    "Consumer",
    "ConsumerGroupMetadata",
    "ConsumerRecord",
    "PartitionChange",
    "PartitionDescription",
    "PartitionInfo",
    "Producer",
    "RecordFuture",
    "RecordMetadata",
    "SemelError",
    "TopicConfigEntry",
    "TopicDescription",
    "parse_acks",
]
