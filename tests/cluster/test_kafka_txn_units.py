"""Pure pieces of the Kafka transaction APIs: error mapping per request version, state names,
the produce hot path's transactional-bit test (no broker)."""

from __future__ import annotations

import time

from kafka.record.memory_records import MemoryRecordsBuilder
from kio.schema.errors import ErrorCode as K
from semel.cluster.kafka import codec
from semel.cluster.kafka.errors import PRODUCER_FENCED_SINCE_VERSION, to_kafka_txn
from semel.cluster.kafka.txn_handlers import STATE_NAMES, TXN_HANDLERS, _transactional_bit
from semel.coordinator.txn_state import TxnState
from semel.v1.common_pb2 import ErrorCode as S


def test_producer_fenced_is_invalid_producer_epoch_for_versions_before_kip588():
    for key, since in PRODUCER_FENCED_SINCE_VERSION.items():
        assert to_kafka_txn(S.PRODUCER_FENCED, key, since - 1) is K.invalid_producer_epoch
        assert to_kafka_txn(S.PRODUCER_FENCED, key, since) is K.producer_fenced
        assert to_kafka_txn(S.CONCURRENT_TRANSACTIONS, key, 0) is K.concurrent_transactions
    assert to_kafka_txn(S.TRANSACTION_TIMED_OUT, codec.END_TXN, 3) is K.invalid_producer_epoch


def test_every_state_has_kafkas_name_and_every_transaction_api_a_handler():
    assert set(STATE_NAMES) == set(TxnState)
    assert STATE_NAMES[TxnState.PREPARE_EPOCH_FENCE] == "PrepareEpochFence"
    assert set(TXN_HANDLERS) == set(codec.TRANSACTION_APIS)
    assert all(codec.ADVERTISED[key] == span for key, span in codec.TRANSACTION_APIS.items())


def test_the_transactional_bit_is_read_from_a_real_magic2_batch():
    def batch(transactional: bool) -> bytes:
        builder = MemoryRecordsBuilder(magic=2, compression_type=1, batch_size=1 << 16, transactional=transactional,
                                       producer_id=5, producer_epoch=0, base_sequence=0)
        builder.append(timestamp=int(time.time() * 1000), key=b"k", value=b"v" * 100, headers=[])
        builder.close()
        return bytes(builder.buffer())

    assert _transactional_bit(batch(True))
    assert not _transactional_bit(batch(False))
    assert not _transactional_bit(None) and not _transactional_bit(b"\x00" * 10)
