"""Every bound in Semel, named and documented in one place.

Components take these as defaults and may accept overrides in their config; nothing
else in the code base hard-codes a limit.

Names end in their unit (`_MS`, `_BYTES`, or the thing counted) and say which kind of value
they are: `MAX_*` / `MIN_*` bound what is accepted, `*_DEFAULT` is a configurable default
(its config option has the same name in lower case, e.g. `replica_fetch_max_bytes`), anything
else is a fixed setting. How the values must relate is checked when this module is imported
(`_check_relationships`, at the end), not only said in comments.
"""

from __future__ import annotations

from typing import Final

from semel.invariant import invariant

# --- batches and requests -----------------------------------------------------
MAX_BATCH_BYTES = 4 * 1024 * 1024          # one stored batch (header + records)
MAX_REQUEST_BYTES = 16 * 1024 * 1024       # one gRPC message, either direction
MAX_FETCH_BYTES = 8 * 1024 * 1024          # one fetch response (the first batch is always whole)
MAX_FETCH_BATCHES_PER_PARTITION = 4096    # batches one fetch returns per partition: bounds the broker's per-batch work (tiny batches)
MAX_DECOMPRESSED_BATCH_BYTES = 64 * 1024 * 1024  # records of one compressed magic-2 batch, decompressed (only for a gRPC reader of Kafka-produced data)

# --- storage --------------------------------------------------------------------
SEGMENT_BYTES_DEFAULT = 256 * 1024 * 1024
SEGMENT_MS_DEFAULT = 7 * 24 * 3600 * 1000
INDEX_INTERVAL_BYTES_DEFAULT = 4096        # one sparse index entry per this many log bytes
RETENTION_BYTES_DEFAULT = -1               # -1: unlimited
RETENTION_MS_DEFAULT = 7 * 24 * 3600 * 1000
FLUSH_INTERVAL_MS_DEFAULT = 1000
PAGE_CACHE_WINDOW_BYTES = 64 * 1024 * 1024   # interval flush policy: after a background sync the active segment keeps only its last this many bytes in the page cache, a sealed one none (0: leave it all to the OS; storage/background_sync.py)
FLUSH_POLICY_DEFAULT: Final = "interval"   # "never" | "interval" | "always"; why: docs/storage.md
MIN_SEGMENT_BYTES = 1024                   # smaller segments are allowed only down to this
MAX_SEGMENT_BYTES = 1024 * 1024 * 1024     # keeps positions far inside int32 and bounds one recovery scan
MIN_INDEX_INTERVAL_BYTES = 1               # 1: an index entry for every batch
MAX_INDEX_INTERVAL_BYTES = 1024 * 1024     # a lookup scans at most about this many log bytes
MAX_APPEND_BYTES = MAX_REQUEST_BYTES       # one PartitionLog.append call (several whole batches)
LOADED_SEALED_INDEXES_PER_LOG = 4          # sealed segments per partition log whose offset/time index entries stay in memory (the rest: summary only, entries read from their files on a lookup); bounds index memory by partitions, not by data
LOG_SCAN_CHUNK_BYTES = 256 * 1024          # read size when a read/recovery walks batch headers on disk
MAX_LEADER_EPOCH_ENTRIES = 100_000         # leader-epoch cache entries per partition (old ones clamp away with retention)
MAX_ABORTED_TXNS_PER_PARTITION = 1_000_000 # aborted-transaction index entries held in memory per partition

# --- producer state ---------------------------------------------------------------
PRODUCER_BATCHES_RETAINED = 5              # metadata of the last N batches per producer (Kafka: 5)
MAX_PRODUCERS_PER_PARTITION = 10_000       # tracked producers; see storage/producer_state.py for the policy when full
PRODUCER_ID_EXPIRATION_MS_DEFAULT = 24 * 3600 * 1000
PRODUCER_SNAPSHOT_INTERVAL_BYTES_DEFAULT = 16 * 1024 * 1024  # also snapshot after this many appended bytes (bounds replay)
PRODUCER_SNAPSHOTS_RETAINED = 3            # newest snapshots kept per partition (truncation needs one at or below its offset)

# --- RocksDB (semel.storage.kv) ------------------------------------------------------
MAX_KV_SCAN_ENTRIES = 10_000               # entries one KvStore.scan returns at most (iterators never escape kv.py)

# --- brokers (semel.cluster) -------------------------------------------------------
MAX_INFLIGHT_PRODUCE_PER_BROKER = 1024     # produce requests being handled at once; more -> RESOURCE_EXHAUSTED
MAX_INFLIGHT_PRODUCE_PER_CONNECTION = 256  # the same, per client connection (gRPC peer), so one client cannot take them all
MAX_PENDING_ACKS_PER_PARTITION = 4096      # acks=all produces waiting for the high watermark, per partition
MAX_FETCH_WAITERS_PER_BROKER = 4096        # long-polling Fetch requests parked at once
MAX_PRODUCE_TIMEOUT_MS = 5 * 60 * 1000     # produce timeout_ms is clamped to this
PRODUCE_TIMEOUT_MS_DEFAULT = 30_000        # a produce (gRPC or Kafka) that sends no timeout waits this long for acks=all
ADMIN_TIMEOUT_MS_DEFAULT = 5_000           # an admin request (CreateTopics, DeleteTopics, alter/reassign/elect, ...) that sends no timeout
MAX_FETCH_WAIT_MS = 60 * 1000              # fetch max_wait_ms is clamped to this
MAX_FUTURE_TIMESTAMP_MS = 24 * 3600 * 1000 # a batch's max timestamp may be at most this far ahead of the broker
MAX_PARTITIONS_PER_REQUEST = 10_000        # partitions in one produce/fetch/list-offsets request; more -> INVALID_REQUEST
MAX_TOPICS_PER_ADMIN_REQUEST = 1000        # topics in one CreateTopics/DeleteTopics request; more -> INVALID_REQUEST
MAX_GROUPS_PER_REQUEST = 1000              # group ids in one DescribeGroups request; more -> INVALID_REQUEST
MAX_AUTO_CREATES_IN_FLIGHT = 64            # topic auto-creations a broker has in flight at once (--auto-create-topics)
AUTO_CREATE_TIMEOUT_MS = 10_000            # one auto-creation's wait for the metadata quorum
REPLICA_FETCH_MAX_BYTES_DEFAULT = 8 * 1024 * 1024  # one ReplicaFetch response (at least one whole batch per partition)
REPLICA_FETCH_MAX_WAIT_MS_DEFAULT = 500    # follower long-poll on the leader
REPLICA_LAG_TIME_MAX_MS_DEFAULT = 10_000   # a follower not caught up for this long leaves the ISR
BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT = 100
BROKER_SESSION_TIMEOUT_MS_DEFAULT = 1000   # no heartbeat for this long -> the controller fences the broker
AUTH_CACHE_ENTRIES = 4096                  # successful password checks a broker remembers (each saves one PBKDF2)
KAFKA_AUTHZ_CACHE_ENTRIES = 10_000         # ACL verdicts the Kafka listener remembers (until the ACLs change); full -> cleared
MAX_USERS = 10_000                         # users (SCRAM credentials) in the metadata quorum
MAX_CONCURRENT_RPCS_PER_BROKER = 8192      # gRPC calls (incl. replica streams) a broker serves at once; more -> RESOURCE_EXHAUSTED
ISR_CHECK_INTERVAL_MS_DEFAULT = 100        # how often a leader re-evaluates its ISR (shrink lagging followers, expand caught-up ones)
RETENTION_CHECK_INTERVAL_MS_DEFAULT = 60_000  # how often a broker applies retention and expires producers
DISK_EXECUTOR_THREADS = 2                  # threads of the one disk executor (semel.storage.disk_executor): roll fsyncs, recovery, coordinator loads, deletion, retention
MAX_DISK_EXECUTOR_QUEUE = 1024             # disk jobs queued or running at once; beyond it the caller does the work itself (back pressure, never an unbounded queue)
LOOP_LAG_PROBE_INTERVAL_MS = 50            # the broker's loop-lag probe sleeps this long and measures how late it wakes
LOOP_LAG_REPORT_MS = 50                    # a probe this late is logged (INFO) and counted: `semel bench produce` reports them
LOOP_STALL_MS = 200                        # the loop silent this long is a stall: the watchdog thread logs the loop thread's stack (WARNING)

# --- Kafka-protocol listener (semel.cluster.kafka) -----------------------------------
MAX_KAFKA_REQUEST_BYTES = MAX_REQUEST_BYTES  # one request frame; a larger size prefix closes the connection before any allocation (Kafka: socket.request.max.bytes)
MAX_KAFKA_INFLIGHT_REQUESTS_PER_CONNECTION = 64  # requests read and not yet answered on one connection; the reader waits beyond (clients pipeline: librdkafka 5 per partition when idempotent)
MAX_KAFKA_CONNECTIONS = 4096               # open Kafka connections per broker; more are closed at once
# The internal replication transport (cluster/broker/replica_transport.py): one connection per
# follower broker, so a few per peer is plenty; more are closed at once.
MAX_REPLICATION_CONNECTIONS = 256
REPLICATION_HELLO_MAX_BYTES = 64 * 1024     # the first frame (credentials) of a replication connection
REPLICATION_HELLO_TIMEOUT_MS = 10_000       # TLS handshake + hello; then the connection is closed
REPLICATION_IDLE_TIMEOUT_MS = 120_000       # no fetch request for this long: the follower is gone
MAX_KAFKA_SASL_MESSAGE_BYTES = 4096        # one SASL message (PLAIN, a SCRAM step); longer ones fail the exchange
MAX_KAFKA_UNAUTHENTICATED_REQUEST_BYTES = 64 * 1024  # a frame before SASL authentication (when required) larger than this closes the connection (Kafka: sasl.server.max.receive.size)
KAFKA_FAILED_AUTHENTICATION_CLOSE_DELAY_MS = 500  # a refused SASL exchange: its answer, then the connection closes after this (or when the client closes)
KAFKA_AUTHENTICATION_TIMEOUT_MS = 30_000    # --authentication required: a Kafka connection not authenticated this long after connecting is closed
KAFKA_SASL_HANDSHAKES_PER_CONNECTION = 4    # SaslHandshake requests one connection may send; more close it
KAFKA_CLOSE_GRACE_MS = 1000                # a connection whose client stopped sending still gets the answers already being prepared within this
# Kafka's classic group protocol (semel.coordinator.classic_group, in memory on the group's coordinator)
MAX_CLASSIC_GROUPS_PER_BROKER = 10_000     # classic groups with members (or members expected to rejoin) per broker; more new groups -> GROUP_MAX_SIZE_REACHED
MAX_CLASSIC_PROTOCOLS_PER_MEMBER = 16       # assignors one JoinGroup may offer; more -> INCONSISTENT_GROUP_PROTOCOL
MAX_CLASSIC_MEMBER_METADATA_BYTES = 1024 * 1024  # one protocol's metadata, or one member's assignment; larger -> INVALID_REQUEST
CLASSIC_GROUP_MIN_SESSION_TIMEOUT_MS = 1_000     # Kafka: group.min.session.timeout.ms (6000 there); outside the range -> INVALID_SESSION_TIMEOUT
CLASSIC_GROUP_MAX_SESSION_TIMEOUT_MS = 30 * 60 * 1000  # Kafka: group.max.session.timeout.ms

# --- metadata quorum (semel.cluster.metadata.state / quorum / controller) ---------------------
PRODUCER_ID_BLOCK_SIZE = 1000              # producer ids per AllocateProducerIds block (never reused)
MAX_PRODUCER_ID_METADATA_WAIT_MS = 1000    # a produce with a producer id above this broker's image's allocated ids waits this long for the image, then INVALID_PRODUCER_ID_MAPPING
MAX_PARTITIONS_PER_TOPIC = 1000            # CreateTopic partitions above -> INVALID_PARTITIONS
MAX_PARTITIONS_TOTAL = 100_000             # partitions over all topics; more -> RESOURCE_EXHAUSTED
# Partition replicas one broker may host: each holds open descriptors (a lock file, one per log
# segment, the aborted-transaction index), so a client creating topics could exhaust the broker's
# RLIMIT_NOFILE. A broker's --max-partition-replicas-per-broker defaults to
# (its RLIMIT_NOFILE - FDS_RESERVED) // FDS_PER_PARTITION_REPLICA; CreateTopics / CreatePartitions /
# auto-creation that would put more on any broker -> POLICY_VIOLATION.
FDS_PER_PARTITION_REPLICA = 4              # descriptors budgeted per replica (measured ~2 with one segment: lock + active segment; `semel bench partitions`)
FDS_RESERVED = 2048                        # descriptors kept for sockets, RocksDB, the metadata quorum, libraries
NEW_REPLICAS_OPENED_PER_LOOP_TURN = 64     # brand-new replicas a metadata change opens on the event loop at once; the rest open in later turns (a 1,000-partition topic must not hold the loop for seconds: heartbeats would miss the session and fence the broker)
HOUSEKEEPING_REPLICAS_PER_LOOP_TURN = 100   # replicas whose retention and producer expiry one loop turn runs; the rest in later turns
MIN_PARTITION_REPLICAS_PER_BROKER = 100    # the derived limit never goes below this (internal topics need 32 per broker)
MAX_TOPIC_NAME_CHARS = 200                 # topic names are 1..this many chars of [A-Za-z0-9._-]
MAX_REPLICATION_FACTOR = 16                # and never more than the unfenced brokers
MAX_BROKERS = 1024                         # registered broker ids (fenced included); more -> RESOURCE_EXHAUSTED
METADATA_DEDUP_COMMANDS = 1000             # command ids whose results are kept for retried submits
# Raft entries a metadata leader may hold appended but uncommitted before submits wait: an isolated
# leader (links silent, not closed) otherwise appends hundreds of ISR changes in the second before it
# steps down, and pysyncobj walks a divergent suffix back one entry per append round (~50 ms) on rejoin.
MAX_UNCOMMITTED_METADATA_ENTRIES = 64
MAX_METADATA_COMMAND_BYTES = 32 * 1024     # one encoded metadata command; larger -> INVALID_REQUEST before it reaches Raft (pysyncobj splits entries of 64 KiB and more into chunks and mislabels their last one, which wedged replication)
METADATA_SUBMIT_TIMEOUT_MS_DEFAULT = 2000  # a metadata command not committed by then is reported unknown/unavailable
# Raft link down + heartbeat silence this long -> fenced (>= 1.5 heartbeats, below the session timeout).
# 250, not 150: every broker has run with 250 (its own config default) since the first broker
# process; 150 was the controller's default, used only by tests that build a controller alone.
BROKER_DISCONNECT_GRACE_MS_DEFAULT = 250
CONTROLLER_TICK_MS = 50                    # how often the active controller re-evaluates liveness
MAX_CONTROLLER_COMMANDS_IN_FLIGHT = 64     # controller decisions submitted and not yet answered
CONTROLLER_FAILED_DECISION_BACKOFF_MS = 1000  # a rejected decision is not proposed again sooner
INTERNAL_TOPIC_PARTITIONS_DEFAULT = 16     # __transaction_state / __consumer_offsets partitions
PREFERRED_LEADER_REBALANCE_MS_DEFAULT = 10_000  # leadership returns to the preferred replica after it was unfenced this long
LEADER_IMBALANCE_PERCENT_DEFAULT = 0  # auto rebalance a broker's leaderships once more than this % are elsewhere (Kafka: 10)
REASSIGNMENT_THROTTLE_BYTES_PER_S_DEFAULT = 10 * 1024 * 1024  # replication to a replica catching up in a reassignment, per leader broker
CONTROLLED_SHUTDOWN_WAIT_MS_DEFAULT = 5_000  # SIGTERM: how long a broker waits for its leaderships to move (and its sole-ISR partitions to gain a member)

# --- consumer groups (semel.coordinator: group_state, offsets, group_log) ------------
# Bounds of one group coordinator; every one is checked before a record is written.
MAX_GROUPS_PER_COORDINATOR_PARTITION = 10_000   # groups (with members or only offsets) per __consumer_offsets partition; more -> RESOURCE_EXHAUSTED
MAX_MEMBERS_PER_GROUP = 1_000                   # more joins -> GROUP_MAX_SIZE_REACHED (also bounds the assignor's work)
MAX_GROUP_ID_BYTES = 255                        # UTF-8 bytes of a group id; longer -> INVALID_GROUP_ID
MAX_MEMBER_ID_BYTES = 64                        # UTF-8 bytes of a client-chosen member id; longer -> INVALID_REQUEST
MAX_CLIENT_ID_BYTES = 255                       # informational client id kept per member
MAX_SUBSCRIBED_TOPICS_PER_MEMBER = 1_000        # topics in one subscription; more -> INVALID_REQUEST
MAX_ASSIGNABLE_PARTITIONS_PER_GROUP = 100_000   # partitions of the union of the subscriptions; more -> INVALID_REQUEST
MAX_OFFSET_METADATA_BYTES = 4096                # metadata string of one committed offset (Kafka: offset.metadata.max.bytes)
MAX_OFFSETS_PER_GROUP = 100_000                 # committed partitions kept per group; more -> RESOURCE_EXHAUSTED
MAX_PENDING_TXN_PRODUCERS_PER_COORDINATOR_PARTITION = 10_000  # producers with uncommitted TxnOffsetCommits; more -> RESOURCE_EXHAUSTED
GROUP_SESSION_TIMEOUT_MS_DEFAULT = 45_000       # no heartbeat for this long -> the member is removed and the group rebalances
GROUP_HEARTBEAT_INTERVAL_MS_DEFAULT = 5_000     # told to members in every heartbeat response
GROUP_RECONCILING_HEARTBEAT_INTERVAL_MS = 250   # told instead to a member still reconciling (partitions to take or give up)
MAX_GROUP_HEARTBEAT_WAIT_MS = 30_000            # a settled member's heartbeat is held at most this long (max_wait_ms)
MAX_HELD_GROUP_HEARTBEATS = 4_096               # heartbeats held per broker at once (each is a call in flight); more are answered at once
GROUP_REBALANCE_TIMEOUT_MS_DEFAULT = 60_000     # a member must release revoked partitions within this (its own value if it sends one)
MAX_GROUP_REBALANCE_TIMEOUT_MS = 30 * 60 * 1000 # a member's rebalance timeout is clamped to this
GROUP_VIEW_SCAN_PAGE_ENTRIES = 1_000          # entries one read of the __consumer_offsets view returns (loading pages through it)
OFFSETS_RETENTION_MS_DEFAULT = 7 * 24 * 3600 * 1000  # committed offsets of a group without members expire this long after their commit
OFFSETS_RETENTION_CHECK_INTERVAL_MS = 10 * 60 * 1000  # how often the coordinator looks for expired offsets and empty groups

# --- transaction coordinator (semel.coordinator.txn_*) -------------------------------
MAX_TRANSACTION_TIMEOUT_MS = 15 * 60 * 1000   # InitProducerId timeout above this -> INVALID_TRANSACTION_TIMEOUT (Kafka: 15 min)
TRANSACTION_TIMEOUT_MS_DEFAULT = 60 * 1000    # the client's default transaction timeout (Kafka: 60 s)
MAX_PARTITIONS_PER_TRANSACTION = 1000         # partitions (incl. offsets partitions) in one transaction; more -> INVALID_REQUEST
MAX_TRANSACTIONAL_IDS_PER_PARTITION = 100_000 # ids one __transaction_state partition tracks; a new id beyond -> RESOURCE_EXHAUSTED
MAX_TRANSACTIONAL_ID_BYTES = 1024             # UTF-8 length of a transactional id (it is a record key)
TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT = 7 * 24 * 3600 * 1000  # an idle id (no open transaction) is removed (tombstone) after this
TRANSACTION_ABORT_SCAN_INTERVAL_MS = 10_000   # how often the coordinator looks for timed-out transactions (Kafka: 10 s)
MAX_TRANSITIONS_PER_SCAN = 1000               # timeout aborts / id removals started by one scan (the rest wait for the next)
MAX_LISTED_TRANSACTIONS = 10_000              # ListTransactions answers at most this many (truncated=true beyond)
MAX_MARKER_JOBS_PER_COORDINATOR = 10_000      # prepared transactions whose markers are queued at once; more wait in Prepare*
MAX_MARKERS_PER_REQUEST = 1000                # partitions in one WriteTxnMarkers request
MAX_MARKER_REQUESTS_IN_FLIGHT_PER_BROKER = 1  # WriteTxnMarkers requests outstanding per destination broker (keeps order simple)
MARKER_RETRY_BACKOFF_MS = 100                 # first retry of a failed marker; doubles per attempt
MAX_MARKER_RETRY_BACKOFF_MS = 1_000           # cap of that backoff (markers are retried forever: a decision never flips); a leader that refused is asked again at least this often
TXN_TICK_INTERVAL_MS = 50                     # the coordinator sends due markers this often: a marker reaches a partition's new leader within this of the coordinator's metadata naming it (even while a request to the old leader hangs)
TXN_COMPLETING_WAIT_MS = 500                  # AddPartitions/AddOffsets while the previous transaction's markers are written wait this long at the coordinator, then CONCURRENT_TRANSACTIONS
MAX_TXN_PREDICTED_PARTITIONS = 64             # a transactional producer adds the partitions its previous two transactions wrote (at most this many) with its first add
MAX_WAITING_TXN_REQUESTS = 10_000             # requests waiting that way per coordinator; more answer CONCURRENT_TRANSACTIONS at once
TXN_STATE_WRITE_TIMEOUT_MS = 10_000           # a __transaction_state write not replicated by then answers REQUEST_TIMED_OUT (outcome unknown)
TXN_MARKER_ACK_TIMEOUT_MS = 10_000            # a marker not replicated by then answers REQUEST_TIMED_OUT (the coordinator retries)
COORDINATOR_CONFIRM_TIMEOUT_MS = 2_000        # a coordinator about to refuse from memory confirms its epoch by a quorum read this long at most; else NOT_COORDINATOR
MAX_VERIFICATION_ENTRIES_PER_PARTITION = 10_000  # KIP-890 verification cache entries per partition (LRU)
VERIFICATION_ENTRY_TTL_MS = 60_000            # a verification not used by a write within this is forgotten

# --- group coordinator shells (cluster/broker/group_service.py, cluster/kafka/group_handlers.py) ---
GROUP_WRITE_TIMEOUT_MS = 15_000               # a group write not committed by then answers REQUEST_TIMED_OUT (outcome unknown)
KAFKA_CLASSIC_GROUP_TICK_MS = 200             # classic groups' session and rebalance deadlines are checked this often
KAFKA_CLASSIC_GROUP_ANSWER_GRACE_MS = 5_000   # a delayed JoinGroup/SyncGroup waits its rebalance timeout plus this at most

# --- disks (storage/background_sync.py, cluster/broker/log_dir_health.py) ---
MAX_QUEUED_BACKGROUND_SYNCS = 1024            # interval-policy syncs waiting for the sync thread; beyond, the caller syncs inline
LOG_DIR_RECOVER_FREE_BYTES = 16 * 1024 * 1024  # a full log dir comes back once this much is free (a few largest appends: no flapping)

# --- metrics (semel.cluster.broker.metrics; label cardinality, documented in deploy/README.md) ---
MAX_METRICS_TOPIC_SERIES = 200             # distinct `topic` labels on the per-topic counters; later topics count under topic="_other"
MAX_METRICS_PARTITION_SERIES = 1000        # led partitions exported per-partition (sorted by topic, partition); the rest only in the aggregates and semel_metrics_series_omitted{family="partition"}
MAX_METRICS_GROUP_LAG_SERIES = 1000        # (group, topic, partition) lag series; the rest only in the per-group sum and semel_metrics_series_omitted{family="group_lag"}
MAX_METRICS_GROUPS = 200                   # groups with a per-group lag sum; the rest counted in semel_metrics_series_omitted{family="group"}
MAX_METRICS_SCRAPE_REQUEST_BYTES = 16 * 1024  # request line + headers of one scrape; more -> the connection is closed
METRICS_SCRAPE_TIMEOUT_MS = 5000           # a scraper must send its request within this

def _check_relationships() -> None:
    """The relationships the comments above rely on; an edit that breaks one fails at import."""
    # a request carries whole batches; a response at least one whole batch
    invariant(MAX_BATCH_BYTES <= MAX_FETCH_BYTES <= MAX_REQUEST_BYTES, "a batch fits a fetch, a fetch a message")
    invariant(MAX_BATCH_BYTES <= REPLICA_FETCH_MAX_BYTES_DEFAULT <= MAX_REQUEST_BYTES, "replica fetch sizes")
    invariant(MAX_APPEND_BYTES <= MAX_REQUEST_BYTES, "an append comes from one request")
    # storage
    invariant(MIN_SEGMENT_BYTES <= SEGMENT_BYTES_DEFAULT <= MAX_SEGMENT_BYTES < 2**31, "segment bytes (int32 positions)")
    invariant(MIN_INDEX_INTERVAL_BYTES <= INDEX_INTERVAL_BYTES_DEFAULT <= MAX_INDEX_INTERVAL_BYTES, "index interval")
    invariant(FLUSH_POLICY_DEFAULT in ("never", "interval", "always"), "flush policy")
    invariant(PRODUCER_SNAPSHOTS_RETAINED >= 1 and PRODUCER_BATCHES_RETAINED >= 1, "producer state keeps something")
    # brokers and the controller: a live broker heartbeats within the grace, the grace ends before
    # the session does, the controller looks more often than the grace
    invariant(BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT * 3 <= BROKER_DISCONNECT_GRACE_MS_DEFAULT * 2,
              "disconnect grace >= 1.5 heartbeat intervals")
    invariant(BROKER_DISCONNECT_GRACE_MS_DEFAULT < BROKER_SESSION_TIMEOUT_MS_DEFAULT, "grace < session timeout")
    invariant(CONTROLLER_TICK_MS < BROKER_DISCONNECT_GRACE_MS_DEFAULT, "controller tick < disconnect grace")
    # a follower long-polling the leader is not lagging
    invariant(REPLICA_FETCH_MAX_WAIT_MS_DEFAULT < REPLICA_LAG_TIME_MAX_MS_DEFAULT, "replica long-poll < lag time")
    invariant(REPLICA_FETCH_MAX_WAIT_MS_DEFAULT <= MAX_FETCH_WAIT_MS, "replica long-poll within the fetch wait bound")
    # a leader re-evaluates its ISR several times within the lag a follower is allowed
    invariant(ISR_CHECK_INTERVAL_MS_DEFAULT < REPLICA_LAG_TIME_MAX_MS_DEFAULT, "ISR check < replica lag time")
    # the disk executor runs something; its queue holds at least a job per thread
    invariant(1 <= DISK_EXECUTOR_THREADS <= MAX_DISK_EXECUTOR_QUEUE, "disk executor threads and queue")
    # the loop monitor: a lag is reported before it counts as a stall, and the probe wakes within a stall
    invariant(LOOP_LAG_REPORT_MS < LOOP_STALL_MS and LOOP_LAG_PROBE_INTERVAL_MS < LOOP_STALL_MS, "loop lag < stall")
    # metadata
    invariant(INTERNAL_TOPIC_PARTITIONS_DEFAULT <= MAX_PARTITIONS_PER_TOPIC <= MAX_PARTITIONS_TOTAL, "partition counts")
    invariant(2 * INTERNAL_TOPIC_PARTITIONS_DEFAULT <= MIN_PARTITION_REPLICAS_PER_BROKER, "internal topics fit the floor")
    invariant(MAX_REPLICATION_FACTOR <= MAX_BROKERS, "replication factor <= brokers")
    # groups
    invariant(GROUP_HEARTBEAT_INTERVAL_MS_DEFAULT < GROUP_SESSION_TIMEOUT_MS_DEFAULT, "group heartbeat < session")
    invariant(MAX_HELD_GROUP_HEARTBEATS * 2 <= MAX_CONCURRENT_RPCS_PER_BROKER,
              "held heartbeats leave at least half of a broker's concurrent calls to everything else")
    invariant(GROUP_REBALANCE_TIMEOUT_MS_DEFAULT <= MAX_GROUP_REBALANCE_TIMEOUT_MS, "rebalance timeout default")
    invariant(OFFSETS_RETENTION_CHECK_INTERVAL_MS < OFFSETS_RETENTION_MS_DEFAULT, "offsets retention check")
    invariant(0 < CLASSIC_GROUP_MIN_SESSION_TIMEOUT_MS <= CLASSIC_GROUP_MAX_SESSION_TIMEOUT_MS, "classic session range")
    # transactions
    invariant(TRANSACTION_TIMEOUT_MS_DEFAULT <= MAX_TRANSACTION_TIMEOUT_MS, "transaction timeout default")
    invariant(TRANSACTION_ABORT_SCAN_INTERVAL_MS < TRANSACTION_TIMEOUT_MS_DEFAULT, "abort scan < transaction timeout")
    invariant(0 < MARKER_RETRY_BACKOFF_MS <= MAX_MARKER_RETRY_BACKOFF_MS, "marker backoff")
    invariant(MAX_TXN_PREDICTED_PARTITIONS <= MAX_PARTITIONS_PER_TRANSACTION, "predicted partitions")
    invariant(MAX_MARKERS_PER_REQUEST <= MAX_PARTITIONS_PER_REQUEST, "markers per request")
    # request timeouts: the defaults are within the clamp
    invariant(0 < PRODUCE_TIMEOUT_MS_DEFAULT <= MAX_PRODUCE_TIMEOUT_MS, "produce timeout default")
    invariant(0 < ADMIN_TIMEOUT_MS_DEFAULT <= MAX_PRODUCE_TIMEOUT_MS, "admin timeout default")
    # the Kafka listener: one produce batch fits in a request, and decompresses within its bound
    invariant(MAX_BATCH_BYTES <= MAX_KAFKA_REQUEST_BYTES, "a batch fits in a Kafka request")
    invariant(MAX_BATCH_BYTES <= MAX_DECOMPRESSED_BATCH_BYTES, "a batch decompresses within its bound")
    # a full log dir comes back only with room for more than one largest batch
    invariant(LOG_DIR_RECOVER_FREE_BYTES >= 2 * MAX_BATCH_BYTES, "log dir recovery room")
    invariant(0 < KAFKA_CLASSIC_GROUP_TICK_MS < CLASSIC_GROUP_MIN_SESSION_TIMEOUT_MS, "classic tick < session")


_check_relationships()


def partition_replicas_per_broker_for(nofile: int) -> int:
    """The default partition-replica limit of a broker whose open-file limit is `nofile`."""
    return max(MIN_PARTITION_REPLICAS_PER_BROKER, (nofile - FDS_RESERVED) // FDS_PER_PARTITION_REPLICA)
