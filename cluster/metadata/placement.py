"""Pure placement decisions for cluster management: which replicas move where.

`decommission_plan(image, broker)` replaces `broker` in every replica set it belongs to by the
unfenced, not decommissioned broker (not already a replica) that holds the fewest replicas, counting the moves
planned so far, so a drained broker's load spreads evenly. The replacement takes the drained
broker's position in the replica list, so preferred leaders stay spread as before. Nothing here
reads a clock or does I/O; the Admin service submits the plan as `ReassignPartition` commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from semel.cluster.metadata.state import MetadataImage


@dataclass(frozen=True, slots=True)
class PlannedMove:
    topic: str
    partition: int
    target_replicas: tuple[int, ...]


class NoPlacementError(Exception):
    """No unfenced broker can take a replica (every one already holds the partition)."""


def replica_counts(image: MetadataImage) -> dict[int, int]:
    """Replicas per broker that may take new ones (unfenced, not decommissioned; a
    reassignment under way counts its target)."""
    counts = {b: 0 for b in image.placement_brokers()}
    for t in image.topics.values():
        for p in t.partitions:
            for r in p.target_replicas or p.replicas:
                if r in counts:
                    counts[r] += 1
    return counts


def decommission_plan(image: MetadataImage, broker_id: int) -> list[PlannedMove]:
    counts = replica_counts(image)
    counts.pop(broker_id, None)
    moves: list[PlannedMove] = []
    for name in sorted(image.topics):
        for p in image.topics[name].partitions:
            current = p.target_replicas or p.replicas
            if broker_id not in current:
                continue
            candidates = sorted((n, b) for b, n in counts.items() if b not in current)
            if not candidates:
                raise NoPlacementError(
                    f"{name}-{p.partition}: no live broker outside its replicas {list(current)} can take "
                    f"broker {broker_id}'s replica (add a broker, or lower the replication factor)")
            replacement = candidates[0][1]
            counts[replacement] += 1
            moves.append(PlannedMove(name, p.partition,
                                     tuple(replacement if r == broker_id else r for r in current)))
    return moves
