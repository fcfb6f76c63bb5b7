"""The internal topics and which of their partitions owns a key.

Neutral ground: the metadata state machine creates these topics, the coordinators keep
their logs in them, the broker and the client find a coordinator through
`coordinator_partition`. Nothing here imports any other part of Semel.
"""

from __future__ import annotations

import zlib

TRANSACTION_STATE_TOPIC = "__transaction_state"
CONSUMER_OFFSETS_TOPIC = "__consumer_offsets"
INTERNAL_TOPICS = (CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC)
# Internal topics keep their data: the coordinators rebuild their state from the whole log
# (no compaction yet), so time/size retention would silently forget transactions and offsets.
INTERNAL_TOPIC_CONFIGS: tuple[tuple[str, str], ...] = (("retention_ms", "-1"), ("retention_bytes", "-1"))


def coordinator_partition(key: str, partition_count: int) -> int:
    """The partition of an internal topic that owns `key` (a transactional id or a group id).

    Stable across processes and Python versions (unlike `hash()`)."""
    if partition_count <= 0:
        raise ValueError(f"partition_count must be positive, not {partition_count}")
    return zlib.crc32(key.encode("utf-8")) % partition_count
