"""The broker on uvloop (`--event-loop uvloop`, opt-in; docs/benchmarks.md has what it
saves): real broker processes run the transaction path end to end on it, and the flag
really selects the loop. The whole process suite can run on it with
SEMEL_TEST_BROKER_EVENT_LOOP=uvloop (broker_harness)."""

from __future__ import annotations

import pytest
from semel.cluster.broker.process import BrokerConfig
from semel.v1.common_pb2 import ErrorCode

from tests.cluster import broker_harness as h
from tests.cluster import txn_stubs as ts

pytestmark = pytest.mark.slow


def test_an_unknown_event_loop_is_refused():
    with pytest.raises(SystemExit):
        BrokerConfig.from_args(["--broker-id", "1", "--event-loop", "trio"])
    with pytest.raises(ValueError):
        BrokerConfig(broker_id=1, event_loop="trio").validate()


def test_transactions_commit_and_abort_on_uvloop_brokers(tmp_path):
    pytest.importorskip("uvloop")
    c = h.Cluster(tmp_path, 3, internal_partitions=2, event_loop="uvloop")
    try:
        c.start_all()
        for b in c.brokers:
            c.wait_for(lambda b=b: "event loop: uvloop.Loop" in c.log_tail(b, 400), what=f"broker {b} on uvloop")
        r = c.create_topic("on-uvloop", partitions=2, rf=3)
        assert r.error_code == ErrorCode.NONE, r
        for p in range(2):
            c.serving_leader_of("on-uvloop", p)
        producer = ts.TxnProducer(c, "uvloop-txn").init()
        producer.send("on-uvloop", 0, [b"gone"])
        producer.abort()
        producer.send("on-uvloop", 0, [b"kept-0"])
        producer.send("on-uvloop", 1, [b"kept-1"])
        producer.commit()
        c.wait_for(lambda: ts.read(c, "on-uvloop", 0)[0] == [b"kept-0"] and ts.read(c, "on-uvloop", 1)[0] == [b"kept-1"],
                   timeout_s=30, what="committed data visible, aborted data not")
        assert ts.read(c, "on-uvloop", 0, committed=False)[0] == [b"gone", b"kept-0"]
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()
