"""The "none" values of the wire and storage formats: one name and one value each.

They are the values the protobuf messages, the record batch header and the coordinators' log
records carry (Kafka's too), so they never change: a stored batch or log record written with one
of them must read back the same.
"""

from __future__ import annotations

NO_PRODUCER_ID = -1      # a batch / request / transaction without a producer identity
NO_PRODUCER_EPOCH = -1   # ... and its epoch
NO_SEQUENCE = -1         # a batch without sequence numbers (not idempotent)
NO_OFFSET = -1           # no offset: nothing committed, no transaction open, no first offset yet
NO_TIMESTAMP = -1        # no timestamp: e.g. a transaction that has not started
