"""Pure cores of the broker: HW, ISR decisions, pending acks, produce validation."""

from semel.cluster.broker.produce_validation import header_from_fields, validate_batch
from semel.cluster.broker.replica_state import (
    LeaderProgress,
    PendingAcks,
    ack_outcome_after_hw,
)
from semel.v1 import common_pb2


def progress(isr=(1, 2, 3), leo=10, hw=0, now=0, lag=1000):
    return LeaderProgress(
        leader_id=1, replicas=(1, 2, 3), isr=isr, leader_leo=leo, high_watermark=hw,
        epoch_start_offset=0, now_ms=now, lag_time_max_ms=lag,
    )


def test_hw_is_min_leo_over_isr_and_waits_for_unknown_followers():
    p = progress()
    assert p.high_watermark == 0
    assert not p.on_follower_fetch(2, 10, now_ms=1)  # 3 still unknown
    assert p.on_follower_fetch(3, 7, now_ms=1)
    assert p.high_watermark == 7
    assert p.on_follower_fetch(3, 10, now_ms=2)
    assert p.high_watermark == 10


def test_hw_never_decreases_and_shrink_raises_it():
    p = progress(isr=(1, 2))
    p.on_follower_fetch(2, 10, now_ms=1)
    assert p.high_watermark == 10
    p.on_leader_append(20, now_ms=2)
    p.on_follower_fetch(2, 5, now_ms=2)  # a stale fetch offset never lowers the HW
    assert p.high_watermark == 10
    assert p.set_isr((1,), now_ms=3)
    assert p.high_watermark == 20


def test_restart_hw_is_capped_by_leo():
    assert progress(isr=(1,), leo=5, hw=50).high_watermark == 5


def test_lagging_follower_leaves_isr_and_rejoins_when_caught_up():
    p = progress(lag=100)
    p.on_follower_fetch(2, 10, now_ms=10)
    p.on_follower_fetch(3, 10, now_ms=10)
    assert p.isr_change(now_ms=50) is None
    p.on_leader_append(30, now_ms=15)
    for t in range(20, 300, 20):
        p.on_follower_fetch(2, 30, now_ms=t)
    change = p.isr_change(now_ms=300)
    assert change is not None and change.new_isr == (1, 2)
    p.set_isr(change.new_isr, now_ms=300)
    assert p.high_watermark == 30
    p.on_follower_fetch(3, 30, now_ms=310)
    change = p.isr_change(now_ms=320)
    assert change is not None and change.new_isr == (1, 2, 3)


def test_follower_that_keeps_fetching_everything_is_not_lagging():
    p = progress(lag=100)
    leo = 10
    for t in range(0, 1000, 50):
        p.on_follower_fetch(2, leo, now_ms=t)  # fetches what it was shown last time
        p.on_follower_fetch(3, leo, now_ms=t)
        leo += 5
        p.on_leader_append(leo, now_ms=t + 25)  # meanwhile the leader grew
    assert p.isr_change(now_ms=1000) is None


def test_pending_acks_complete_in_order_and_are_bounded():
    acks: PendingAcks[str] = PendingAcks(max_pending=2)
    acks.add(5, "a")
    acks.add(9, "b")
    assert acks.full()
    assert acks.complete_up_to(4) == []
    assert acks.complete_up_to(5) == ["a"]
    assert acks.complete_up_to(100) == ["b"]
    assert len(acks) == 0


def test_pending_acks_take_a_waiter_below_newer_ones():
    """A deduplicated retry waits for its original offsets, below waiters added since."""
    acks: PendingAcks[str] = PendingAcks(max_pending=4)
    acks.add(5, "a")
    acks.add(9, "b")
    acks.add(3, "retry")
    acks.add(5, "a-retry")  # equal end offsets keep their arrival order
    assert acks.complete_up_to(3) == ["retry"]
    assert acks.complete_up_to(8) == ["a", "a-retry"]
    assert acks.complete_up_to(9) == ["b"]


def test_ack_after_hw_reports_isr_shrink():
    assert ack_outcome_after_hw(1, 2).error_code == common_pb2.NOT_ENOUGH_REPLICAS_AFTER_APPEND
    assert ack_outcome_after_hw(2, 2).error_code == common_pb2.NONE


def hdr(**kw):
    fields = dict(last_offset_delta=0, producer_id=-1, producer_epoch=-1, base_sequence=-1, record_count=1,
                  attributes=0, base_timestamp_ms=1000, max_timestamp_ms=1000, records_bytes=10)
    fields.update(kw)
    return header_from_fields(**fields)


def check(h, max_batch_bytes=1000):
    r = validate_batch(h, max_batch_bytes=max_batch_bytes, now_ms=2000, max_future_timestamp_ms=1000)
    return None if r is None else r.error_code


def test_produce_validation():
    assert check(hdr()) is None
    assert check(hdr(record_count=0, last_offset_delta=-1)) == common_pb2.INVALID_RECORD
    assert check(hdr(record_count=3, last_offset_delta=1)) == common_pb2.INVALID_RECORD
    assert check(hdr(records_bytes=2000)) == common_pb2.RECORD_BATCH_TOO_LARGE
    assert check(hdr(attributes=0x100)) == common_pb2.INVALID_RECORD
    assert check(hdr(attributes=0x20)) == common_pb2.INVALID_RECORD
    assert check(hdr(attributes=0x10)) == common_pb2.INVALID_RECORD  # transactional without producer id
    assert check(hdr(producer_id=5, producer_epoch=0, base_sequence=0)) is None
    assert check(hdr(producer_id=5, producer_epoch=70000, base_sequence=0)) == common_pb2.INVALID_RECORD
    assert check(hdr(producer_id=5, producer_epoch=0, base_sequence=-1)) == common_pb2.INVALID_RECORD
    assert check(hdr(base_timestamp_ms=-5)) == common_pb2.INVALID_TIMESTAMP
    assert check(hdr(max_timestamp_ms=500)) == common_pb2.INVALID_TIMESTAMP
    assert check(hdr(max_timestamp_ms=10_000)) == common_pb2.INVALID_TIMESTAMP


def test_idle_follower_at_leader_leo_never_lags_and_is_caught_up_until_an_append():
    p = progress(lag=100)
    p.on_follower_fetch(2, 10, now_ms=0)
    p.on_follower_fetch(3, 10, now_ms=0)
    assert p.isr_change(now_ms=10_000) is None  # nothing new to fetch: not lagging
    p.on_leader_append(11, now_ms=10_000)  # both were parked with everything until now
    assert p.isr_change(now_ms=10_050) is None
    p.on_follower_fetch(2, 11, now_ms=10_060)
    change = p.isr_change(now_ms=10_150)
    assert change is not None and change.new_isr == (1, 2)  # 3 never fetched the new batch


def test_a_joiner_counts_for_the_hw_from_the_moment_it_is_proposed():
    """Regression, chaos money seed 53: replica 2 caught up and was proposed for the ISR; before
    the quorum committed it, the leader appended a COMMIT marker that replica 3 fetched, and the
    HW (then over the committed ISR {1, 3}) acknowledged it. The committed ISR then held a
    replica without an acknowledged write, the controller made it the (preferred) leader, and
    the marker was lost. With the maximal ISR (KIP-497) the HW waits for the joiner."""
    p = progress(isr=(1, 3), leo=10)
    p.on_follower_fetch(3, 10, now_ms=1)
    p.on_follower_fetch(2, 10, now_ms=1)  # caught up
    assert p.high_watermark == 10
    change = p.isr_change(now_ms=2)
    assert change is not None and change.new_isr == (1, 2, 3)
    p.propose_isr(change.new_isr)
    p.on_leader_append(11, now_ms=3)  # the marker
    assert not p.on_follower_fetch(3, 11, now_ms=4)
    assert p.high_watermark == 10  # not acknowledged while replica 2 may be committed without it
    assert p.on_follower_fetch(2, 11, now_ms=5)
    assert p.high_watermark == 11
    # A refused proposal stops counting: the HW follows the committed ISR again.
    p.propose_isr((1, 2, 3))
    p.on_leader_append(12, now_ms=6)
    p.on_follower_fetch(3, 12, now_ms=7)
    assert p.high_watermark == 11
    assert p.drop_proposed_isr() and p.high_watermark == 12
    # A committed one becomes the ISR.
    p.propose_isr((1, 2, 3))
    assert not p.set_isr((1, 2, 3), now_ms=8) and p.proposed_isr == frozenset()


def test_a_proposal_outlives_images_that_have_not_answered_it():
    """Chaos soak idempotent/partition seed 351492744: the leader proposed ISR (1, 2) -> (1, 2, 3)
    against partition epoch 7; an unrelated metadata change reconciled the partition with the
    image's unchanged ISR at epoch 7, which cleared the proposal; the HW then passed offsets
    replica 3 lacked while the quorum already had it in the ISR; 3 was elected and an
    acknowledged write at chaos-3 offset 2078 was lost."""
    p = progress(isr=(1, 2), leo=10, hw=10)
    p.on_follower_fetch(3, 10, now_ms=1)
    p.propose_isr((1, 2, 3), partition_epoch=7)
    assert not p.set_isr((1, 2), now_ms=2, partition_epoch=7)  # an image that has not answered
    assert p.proposed_isr == frozenset({1, 2, 3})
    p.on_leader_append(12, now_ms=3)
    p.on_follower_fetch(2, 12, now_ms=4)
    assert p.high_watermark == 10  # 3 may already be in the quorum's ISR: wait for it
    # a second proposal while the first is unsettled keeps the first one's members counted
    p.propose_isr((1, 2), partition_epoch=7)
    assert p.proposed_isr == frozenset({1, 2, 3}) and p.high_watermark == 10
    # the image at a newer partition epoch is the quorum's answer
    assert p.set_isr((1, 2), now_ms=5, partition_epoch=8) and p.high_watermark == 12
    assert p.proposed_isr == frozenset()


def test_eligible_leader_replicas_bound_the_hw_like_isr_members():
    # KIP-966: with the ISR below min.insync.replicas, the ELR members may be elected, so nothing
    # they lack may be committed: the leader alone would otherwise commit its acks=1 appends.
    p = progress(isr=(1,), leo=10, hw=10)
    assert not p.set_isr((1,), now_ms=1, elr=(2,))
    p.on_leader_append(20, now_ms=2)
    assert p.high_watermark == 10  # 2 is away: the HW waits
    assert p.on_follower_fetch(2, 15, now_ms=3)
    assert p.high_watermark == 15
    assert p.set_isr((1,), now_ms=4, elr=())  # the quorum cleared the ELR
    assert p.high_watermark == 20
