"""The broker: one process that hosts partition replicas and serves the gRPC API.

`process` wires a broker together (config, storage, quorum, services); `server`,
`txn_service` and `group_service` are the gRPC edges; `replica_manager`, `replication`
and `replica_state` keep partitions replicated; `storage_adapter` is the broker's narrow
view of one replica's log; `txn_coordinator_shell` runs the pure transaction coordinator.
Run one with `python -m semel.cluster.broker --help`.
"""
