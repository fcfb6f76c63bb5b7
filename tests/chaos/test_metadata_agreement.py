"""The post-heal metadata check: one version with two contents is a divergence."""

from __future__ import annotations

from semel.chaos.metadata_agreement import check_agreement, compare, content
from semel.chaos.runner import _add_final_read_verdict, _add_metadata_verdict
from semel.v1 import broker_pb2


def answer(version: int, leader: int = 1, epoch: int = 3, isr: tuple[int, ...] = (1, 2, 3),
           extra_topic: bool = False) -> tuple[int, object]:
    r = broker_pb2.MetadataResponse(metadata_version=version, brokers=[
        broker_pb2.BrokerInfo(broker_id=b, host="h", port=9000 + b) for b in (1, 2, 3)])
    r.topics.append(broker_pb2.TopicMetadata(name="t", topic_id="A", partitions=[
        broker_pb2.PartitionMetadata(partition=0, leader_id=leader, leader_epoch=epoch, replicas=[1, 2, 3], isr=isr)]))
    if extra_topic:
        r.topics.append(broker_pb2.TopicMetadata(name="while-away", topic_id="B"))
    return version, content(r)


def test_same_version_same_content_agrees_regardless_of_isr_order() -> None:
    assert compare({"a": answer(7), "b": answer(7, isr=(3, 2, 1)), "c": answer(7)}) == ("agreed", [])


def test_different_versions_or_a_silent_broker_are_pending() -> None:
    assert compare({"a": answer(7), "b": answer(8)})[0] == "pending"
    assert compare({"a": answer(7), "b": None})[0] == "pending"


def test_same_version_different_content_is_a_divergence() -> None:
    verdict, diffs = compare({"a": answer(7), "b": answer(7, leader=2, epoch=4), "c": answer(7, extra_topic=True)})
    assert verdict == "diverged" and len(diffs) == 2
    assert diffs[0]["brokers"] == ["a", "b"] and diffs[0]["second"] == ["t-0 leader 2 epoch 4 isr [1, 2, 3]"]
    assert diffs[1]["second"] == ["topic while-away"]


def test_check_waits_for_one_version_then_reports() -> None:
    answers = iter([{"a": answer(7), "b": answer(8)}, {"a": answer(8), "b": answer(8)}])
    current: dict = {}

    def fetch(addr: str):
        if addr == "a":
            current.update(next(answers))
        return current[addr]

    result = check_agreement(["a", "b"], timeout_s=5, fetch=fetch)
    assert result["result"] == "agreed" and result["versions"] == {"a": 8, "b": 8}
    unsettled = check_agreement(["a", "b"], timeout_s=0, fetch=lambda addr: answer(7 if addr == "a" else 9))
    assert unsettled["result"] == "unsettled"


def test_a_divergence_invalidates_the_run_verdict() -> None:
    verdict = {"valid": True, "anomalies": {}, "counts": {}}
    _add_metadata_verdict(verdict, {"result": "unsettled", "versions": {}, "differences": []})
    assert verdict["valid"]
    _add_metadata_verdict(verdict, {"result": "diverged", "versions": {}, "differences": [{"version": 7}]})
    assert not verdict["valid"] and verdict["counts"] == {"metadata-divergence": 1}


def test_an_incomplete_final_read_invalidates_the_run_and_says_so():
    """Seed 34 once read nothing for 60 s after the heal; its unread values came out as
    lost-write although the kept data had them all: the verdict now names the cause."""
    verdict = {"valid": True, "anomalies": {}, "counts": {}}
    _add_final_read_verdict(verdict, {"incomplete": {}, "read_up_to": {"k-0": 5}})
    assert verdict["valid"] and verdict["counts"] == {}
    _add_final_read_verdict(verdict, {"incomplete": {"k-1": [0, 10], "k-0": [3, 9]}, "read_up_to": {"k-0": 3, "k-1": 0}})
    assert not verdict["valid"] and verdict["counts"] == {"final-read-incomplete": 2}
    assert [a["key"] for a in verdict["anomalies"]["final-read-incomplete"]] == ["k-0", "k-1"]
    assert verdict["anomalies"]["final-read-incomplete"][1] == {"key": "k-1", "read_up_to": 0, "behind": [0, 10]}
