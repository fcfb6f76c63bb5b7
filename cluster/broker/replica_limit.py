"""The partition-replica limit a broker applies to topic creation and growth.

Every partition replica a broker hosts holds open descriptors (its log's lock file, one per
segment, the aborted-transaction index), so a client creating topics could otherwise exhaust the
broker's RLIMIT_NOFILE and take it down (EMFILE on a segment roll, a socket accept, RocksDB). The
limit is per broker and its default comes from the process's open-file limit
(`semel.limits.partition_replicas_per_broker_for`). A broker puts its limit into the CreateTopic /
CreatePartitions command it submits, and the metadata state machine refuses (POLICY_VIOLATION) a
command that would put more replicas than that on any broker, so the check is atomic with the
assignment and the same on every replica of the quorum.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from semel import limits
from semel.cluster.metadata import state as md


@dataclass(frozen=True, slots=True)
class PartitionReplicaLimit:
    replicas: int        # partition replicas any one broker may host after a creation
    nofile: int | None   # the RLIMIT_NOFILE it was derived from; None when configured

    @classmethod
    def of(cls, configured: int) -> PartitionReplicaLimit:
        """`configured` (--max-partition-replicas-per-broker) or, for 0, the default from this
        process's soft open-file limit."""
        if configured > 0:
            return cls(configured, None)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else 1 << 20
        return cls(limits.partition_replicas_per_broker_for(nofile), nofile)

    def explain(self, broker_id: int, hosted: int) -> str:
        """The POLICY_VIOLATION message: which broker, the limit, where it comes from, how to raise it."""
        if self.nofile is None:
            source = "set by --max-partition-replicas-per-broker"
            how = "raise --max-partition-replicas-per-broker on the brokers"
        else:
            source = (f"derived from the broker's open-file limit RLIMIT_NOFILE {self.nofile}: "
                      f"({self.nofile} - {limits.FDS_RESERVED}) // {limits.FDS_PER_PARTITION_REPLICA} descriptors "
                      "per replica")
            how = ("raise the brokers' open-file limit (ulimit -n, systemd LimitNOFILE) and restart them, or set "
                   "--max-partition-replicas-per-broker")
        return (f"broker {broker_id} would host {hosted} partition replicas, above the limit of {self.replicas} "
                f"per broker ({source}); {how}, add brokers, or delete topics")


def violation_message(limit: PartitionReplicaLimit, image: md.MetadataImage, partitions: int,
                      replication_factor: int) -> str:
    """`limit.explain` for adding `partitions` partitions of `replication_factor` to `image`
    (recomputed on the broker's image, which may lag the quorum's: the numbers are indicative)."""
    brokers = image.placement_brokers()
    if not brokers or replication_factor > len(brokers):
        return limit.explain(-1, limit.replicas + 1)
    added = md.assign_replicas(brokers, partitions, replication_factor,
                               image.next_assignment_start % len(brokers))
    over = md.replicas_over_limit(image, added, limit.replicas)
    if over is None:
        return (f"a broker would host more than {limit.replicas} partition replicas "
                f"(--max-partition-replicas-per-broker)")
    return limit.explain(*over)
