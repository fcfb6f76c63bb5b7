"""What the services on a broker may use of it: narrow, typed views instead of the `Broker`.

The gRPC services and the coordinator shells are handed the broker process object, but they
are typed against these protocols, so mypy (tests/test_types.py) refuses any reach past them
into the process's private state. A test or another host (a simulation) satisfies them with
plain objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import grpc

if TYPE_CHECKING:
    from semel.cluster.broker.process import BrokerConfig
    from semel.cluster.broker.replica_manager import ReplicaManager
    from semel.cluster.metadata.quorum import MetadataQuorum
    from semel.storage.disk_executor import DiskExecutor
    from semel.storage.kv import KvStore


class PeerChannels(Protocol):
    """gRPC channels to the other brokers, by broker id or address (cached, one per address)."""

    def broker_address(self, broker_id: int) -> str | None:
        """The address to dial for `broker_id`, or None when the metadata does not know it."""
        ...

    def channel(self, address: str) -> grpc.aio.Channel: ...


class CoordinatorHost(Protocol):
    """What the transaction and group coordinators (their shells and services) use."""

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def quorum(self) -> MetadataQuorum: ...

    @property
    def rm(self) -> ReplicaManager: ...

    @property
    def kv(self) -> KvStore | None:
        """The broker's RocksDB (None until the broker has started)."""
        ...

    @property
    def disk(self) -> DiskExecutor: ...

    @property
    def peers(self) -> PeerChannels: ...

    @property
    def broker_epoch(self) -> int: ...

    def metadata_current(self) -> bool:
        """True while this broker's heartbeat lease says its metadata image is current."""
        ...
