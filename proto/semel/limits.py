"""Every bound in Semel, named and documented in one place (units last in names).

Components take these as defaults and may accept overrides in their config; nothing
else in the code base hard-codes a limit.
"""

from __future__ import annotations

# --- batches and requests -----------------------------------------------------
MAX_BATCH_BYTES = 4 * 1024 * 1024          # one stored batch (header + records)
MAX_REQUEST_BYTES = 16 * 1024 * 1024       # one gRPC message, either direction
MAX_FETCH_BYTES = 8 * 1024 * 1024          # one fetch response (the first batch is always whole)

# --- storage --------------------------------------------------------------------
SEGMENT_BYTES_DEFAULT = 256 * 1024 * 1024
SEGMENT_MS_DEFAULT = 7 * 24 * 3600 * 1000
INDEX_INTERVAL_BYTES_DEFAULT = 4096        # one sparse index entry per this many log bytes
RETENTION_BYTES_DEFAULT = -1               # -1: unlimited
RETENTION_MS_DEFAULT = 7 * 24 * 3600 * 1000
FLUSH_INTERVAL_MS_DEFAULT = 1000

# --- producer state ---------------------------------------------------------------
PRODUCER_BATCHES_RETAINED = 5              # metadata of the last N batches per producer (Kafka: 5)
MAX_PRODUCERS_PER_PARTITION = 10_000       # tracked producers; see storage/producer_state.py for the policy when full
PRODUCER_ID_EXPIRATION_MS_DEFAULT = 24 * 3600 * 1000
