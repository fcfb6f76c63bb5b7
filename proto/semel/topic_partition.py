"""`TopicPartition`: the name of one partition, the same type in the client, the coordinators and the broker."""

from __future__ import annotations

from typing import NamedTuple


class TopicPartition(NamedTuple):
    """A (topic, partition) pair; a tuple, so it sorts by topic then partition and unpacks as `t, p`."""

    topic: str
    partition: int
