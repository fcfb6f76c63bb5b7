"""Hand-made histories: each anomaly alone is reported (and nothing else); clean ones pass."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from semel.chaos.checker import add_commands, check, check_file, main
from semel.chaos.history import FAIL, INFO, OK, HistoryBuilder

K, L = "t-0", "t-1"


def found(b: HistoryBuilder) -> dict:
    v = check(b.events)
    json.dumps(v)  # always serializable
    return v


def assert_only(b: HistoryBuilder, *names: str, allowed: tuple[str, ...] | None = None) -> dict:
    v = found(b)
    assert set(v["anomalies"]) == set(names), v["anomalies"]
    assert v["valid"] is (not names)
    if allowed is not None:
        assert set(v["allowed"]) == set(allowed), v["allowed"]
    return v


def base() -> HistoryBuilder:
    """A clean prefix: three sends to K at offsets 0, 2, 4 (markers in between)."""
    b = HistoryBuilder()
    b.send(0, K, 1, 0).send(0, K, 2, 2).send(0, K, 3, 4)
    return b


# --- clean histories ----------------------------------------------------------------------
def test_clean_sends_and_polls_with_marker_gaps_pass():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1)]}).poll(1, {K: [(2, 2), (4, 3)]})
    v = assert_only(b, allowed=())
    assert v["stats"]["values_read"] == 3
    assert v["stats"]["by_f"]["send"] == {"ok": 3, "fail": 0, "info": 0}


def test_clean_concurrent_txns_aborts_and_info_pass():
    b = HistoryBuilder()
    # two concurrent transactions; p0 commits, p1 aborts on purpose, p2 is unknown
    b.invoke(0, "txn", [["send", K, 1], ["send", L, 1]])
    b.invoke(1, "txn", [["send", K, 2]])
    b.invoke(2, "txn", [["send", L, 2]])
    b.complete(1, FAIL, [["send", K, 2, 1]], error="aborted")
    b.complete(0, OK, [["send", K, 1, 0], ["send", L, 1, 0]])
    b.complete(2, INFO, None, error="timeout")
    b.send(3, K, 3, 3).send(3, L, 3, None, type=INFO)  # info send never seen: fine
    b.assign(4, [K, L]).poll(4, {K: [(0, 1), (3, 3)], L: [(0, 1)]})
    v = assert_only(b, allowed=())
    assert v["stats"]["values_unseen"] == 0
    assert v["stats"]["by_f"]["txn"] == {"ok": 1, "fail": 1, "info": 1}


def test_never_completed_invoke_is_info():
    b = base()
    b.invoke(5, "send", [["send", K, 9]])       # still open at the end
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3)]})
    v = assert_only(b)
    assert v["stats"]["by_f"]["send"]["info"] == 1


def test_subscribe_allows_skips_and_rewinds():
    b = base()
    b.subscribe(1, [K]).poll(1, {K: [(0, 1)]}).poll(1, {K: [(4, 3)]}).poll(1, {K: [(0, 1)]})
    b.assign(2, [K]).poll(2, {K: [(0, 1), (2, 2), (4, 3)]})
    assert_only(b)


def test_assign_and_crash_reset_the_consumer_position():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3)]})
    b.assign(1, [K]).poll(1, {K: [(0, 1)]})          # seek to beginning after assign
    b.crash(1).poll(1, {K: [(4, 3)]})                  # fresh client, new position
    assert_only(b)


# --- committed-ness rule -----------------------------------------------------------------
def test_info_txn_seen_by_an_ok_read_is_committed_so_its_other_write_is_lost():
    # p0's txn is unknown; p2 reads its K value, which proves its L value committed too,
    # and p3 read past that L value: a provably lost write.
    b2 = HistoryBuilder()
    b2.txn(0, [("send", K, 1, 0), ("send", L, 1, 0)], type=INFO)
    b2.send(1, L, 2, 1)
    b2.assign(2, [K, L]).poll(2, {K: [(0, 1)]})
    b2.assign(3, [L]).poll(3, {L: [(1, 2)]})
    v = assert_only(b2, "lost-write")
    assert v["anomalies"]["lost-write"][0]["value"] == 1
    assert v["stats"]["info_ops_proven_committed"] == 1


def test_info_txn_never_seen_is_neither_lost_nor_unseen():
    b = HistoryBuilder()
    b.txn(0, [("send", K, 1, 0), ("send", L, 1, 0)], type=INFO)
    b.send(1, L, 2, 1)
    b.assign(3, [L]).poll(3, {L: [(1, 2)]})
    v = assert_only(b)
    assert v["stats"]["info_ops_proven_committed"] == 0


def test_failed_txn_is_never_committed():
    b = HistoryBuilder()
    b.txn(0, [("send", K, 1, 0)], type=FAIL)
    b.send(1, K, 2, 2)
    b.assign(3, [K]).poll(3, {K: [(2, 2)]})
    assert_only(b)


# --- each anomaly alone ----------------------------------------------------------------------
def test_inconsistent_offsets():
    b = base()
    b.send(0, K, 4, 6)
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3), (6, 4)]})
    b.assign(2, [K]).poll(2, {K: [(0, 1), (2, 2), (4, 3), (6, 5)]})
    b.send(3, K, 5, None, type=INFO)       # 5's writer is unknown, so only the offset clash
    v = assert_only(b, "inconsistent-offsets")
    assert v["anomalies"]["inconsistent-offsets"][0] == {"key": K, "offset": 6, "values": [4, 5]}


def test_duplicate():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3), (5, 2)]})
    v = assert_only(b, "duplicate")
    assert v["anomalies"]["duplicate"][0] == {"key": K, "value": 2, "offsets": [2, 5]}


def test_duplicate_seen_by_separate_consumers():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3)]})
    b.assign(2, [K]).poll(2, {K: [(0, 1), (5, 2)]})
    assert_only(b, "duplicate", "int-poll-skip")


def test_aborted_read_g1a():
    b = base()
    b.txn(5, [("send", K, 9, 5)], type=FAIL)
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3), (5, 9)]})
    v = assert_only(b, "G1a")
    ex = v["anomalies"]["G1a"][0]
    assert ex["value"] == 9 and ex["error"] == "aborted"


def test_garbage_read():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3), (5, 77)]})
    assert_only(b, "garbage-read")


def test_precommitted_read_own_value():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3)]})
    b.txn(1, [("send", K, 4, 6), ("poll", {K: [(6, 4)]})])
    v = assert_only(b, "precommitted-read")
    assert v["anomalies"]["precommitted-read"][0]["kind"] == "own-value"


def test_precommitted_read_past_own_write():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3)]})
    b.invoke(1, "txn", [["send", K, 4], ["poll"]])
    b.send(2, K, 5, 7)
    b.complete(1, OK, [["send", K, 4, 6], ["poll", {K: [(6, 4)][:0] + [(7, 5)]}]])
    b.assign(3, [K]).poll(3, {K: [(0, 1), (2, 2), (4, 3), (6, 4), (7, 5)]})
    v = assert_only(b, "precommitted-read", "poll-skip")   # p1 also skipped its own 4
    assert v["anomalies"]["precommitted-read"][0]["kind"] == "read-past-own-write"


def test_lost_write():
    b = base()
    b.send(0, K, 4, 6)
    b.assign(1, [K]).poll(1, {K: [(0, 1), (4, 3)]})
    b.assign(2, [K]).poll(2, {K: [(6, 4)]})
    v = assert_only(b, "lost-write", "int-poll-skip")
    ex = v["anomalies"]["lost-write"][0]
    assert ex["value"] == 2 and ex["max_read_index"] == 3


def test_lost_write_needs_proof_otherwise_unseen():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2)]})
    v = assert_only(b, "unseen")
    assert v["anomalies"]["unseen"][0]["value"] == 3
    assert v["stats"]["unseen_per_key"] == {K: 1}


def test_poll_skip():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1)]}).poll(1, {K: [(4, 3)]})
    b.assign(2, [K]).poll(2, {K: [(0, 1), (2, 2), (4, 3)]})
    v = assert_only(b, "poll-skip")
    assert v["anomalies"]["poll-skip"][0]["skipped"] == [2]


def test_nonmonotonic_poll():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2)]}).poll(1, {K: [(2, 2), (4, 3)]})
    v = assert_only(b, "nonmonotonic-poll")
    assert v["anomalies"]["nonmonotonic-poll"][0]["delta"] == 0


def test_poll_in_a_txn_counts_for_the_consumer_position():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1)]})
    b.txn(1, [("poll", {K: [(4, 3)]}), ("send", L, 1, 0)])
    b.assign(2, [K, L]).poll(2, {K: [(0, 1), (2, 2), (4, 3)], L: [(0, 1)]})
    assert_only(b, "poll-skip")


def test_failed_txn_poll_resets_position():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1)]})
    b.txn(1, [("poll", {K: [(2, 2)]}), ("send", L, 1, 0)], type=FAIL)
    b.poll(1, {K: [(0, 1), (2, 2), (4, 3)]})     # the copier rewound to the committed offset
    assert_only(b)


def test_int_poll_skip_and_rebalance_exemption():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (4, 3)]})
    b.assign(2, [K]).poll(2, {K: [(0, 1), (2, 2), (4, 3)]})
    assert_only(b, "int-poll-skip")
    b2 = base()
    b2.invoke(1, "poll", [["poll"]])
    b2.complete(1, OK, [["poll", {K: [[0, 1], [4, 3]]}]], rebalanced=[K])
    b2.assign(2, [K]).poll(2, {K: [(0, 1), (2, 2), (4, 3)]})
    assert_only(b2)


def test_int_nonmonotonic_poll():
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3), (2, 2)]})
    assert_only(b, "int-nonmonotonic-poll")


def test_nonmonotonic_send():
    b = HistoryBuilder()
    b.send(0, K, 1, 3).send(0, K, 2, 1)
    b.assign(1, [K]).poll(1, {K: [(1, 2), (3, 1)]})
    v = assert_only(b, "nonmonotonic-send")
    assert v["anomalies"]["nonmonotonic-send"][0]["values"] == [1, 2]


def test_nonmonotonic_send_is_reset_by_info_and_crash():
    b = HistoryBuilder()
    b.send(0, K, 1, 3).send(0, K, 9, None, type=INFO).send(0, K, 2, 1)
    b.send(1, K, 3, 5).crash(1).send(1, K, 4, 4)
    b.assign(2, [K]).poll(2, {K: [(1, 2), (3, 1), (4, 4), (5, 3)]})
    assert_only(b)


def test_int_nonmonotonic_send_and_allowed_int_send_skip():
    b = HistoryBuilder()
    b.txn(0, [("send", K, 1, 3), ("send", K, 2, 1)])
    b.assign(1, [K]).poll(1, {K: [(1, 2), (3, 1)]})
    assert_only(b, "int-nonmonotonic-send")
    b2 = HistoryBuilder()
    b2.invoke(0, "txn", [["send", K, 1], ["send", K, 3]])
    b2.send(1, K, 2, 1)
    b2.complete(0, OK, [["send", K, 1, 0], ["send", K, 3, 2]])
    b2.assign(2, [K]).poll(2, {K: [(0, 1), (1, 2), (2, 3)]})
    v = assert_only(b2, allowed=("int-send-skip", "G0"))   # interleaving is a ww cycle too
    assert v["valid"]


def test_g0_is_allowed():
    b = HistoryBuilder()
    b.invoke(0, "txn", [["send", K, 1], ["send", L, 2]])
    b.invoke(1, "txn", [["send", K, 2], ["send", L, 1]])
    b.complete(0, OK, [["send", K, 1, 0], ["send", L, 2, 1]])
    b.complete(1, OK, [["send", K, 2, 1], ["send", L, 1, 0]])
    b.assign(2, [K, L]).poll(2, {K: [(0, 1), (1, 2)], L: [(0, 1), (1, 2)]})
    v = assert_only(b, allowed=("G0",))
    assert len(v["allowed"]["G0"][0]["cycle"]) == 3


def g1c_history(via_lower_index: bool) -> HistoryBuilder:
    b = HistoryBuilder()
    b.send(5, K, 100, 0).send(5, L, 100, 0)
    b.invoke(0, "txn", [["send", K, 1], ["poll"]])
    b.invoke(1, "txn", [["send", L, 1], ["poll"]])
    if via_lower_index:
        b.send(5, K, 101, 2).send(5, L, 101, 2)
        b.complete(0, OK, [["send", K, 1, 1], ["poll", {L: [[0, 100], [2, 101]]}]])
        b.complete(1, OK, [["send", L, 1, 1], ["poll", {K: [[0, 100], [2, 101]]}]])
    else:
        b.complete(0, OK, [["send", K, 1, 1], ["poll", {L: [[0, 100], [1, 1]]}]])
        b.complete(1, OK, [["send", L, 1, 1], ["poll", {K: [[0, 100], [1, 1]]}]])
    return b


def test_g1c_write_read_cycle():
    b = g1c_history(via_lower_index=False)
    b.assign(2, [K, L]).poll(2, {K: [(0, 100), (1, 1)], L: [(0, 100), (1, 1)]})
    v = assert_only(b, "G1c")
    ex = v["anomalies"]["G1c"][0]
    assert {s["type"] for s in ex["steps"]} == {"wr"}
    assert len(ex["cycle"]) == 3 and ex["scc_transactions"] == 2


def test_g1c_through_the_last_stable_offset():
    b = g1c_history(via_lower_index=True)
    b.assign(2, [K, L]).poll(2, {K: [(0, 100), (1, 1), (2, 101)],
                                 L: [(0, 100), (1, 1), (2, 101)]})
    v = assert_only(b, "G1c", "int-poll-skip")  # the txns' polls also skipped offset 1
    assert {s["type"] for s in v["anomalies"]["G1c"][0]["steps"]} == {"ww+wr"}


def test_ww_then_wr_on_different_keys_is_legal():
    # T0 writes K before T1 does (ww), T0 reads T1's write of L: legal without write isolation.
    b = HistoryBuilder()
    b.invoke(0, "txn", [["send", K, 1], ["poll"]])
    b.txn(1, [("send", K, 2, 1), ("send", L, 1, 0)])
    b.complete(0, OK, [["send", K, 1, 0], ["poll", {L: [[0, 1]]}]])
    b.assign(2, [K, L]).poll(2, {K: [(0, 1), (1, 2)], L: [(0, 1)]})
    assert_only(b)


# --- money and copier ----------------------------------------------------------------------------
A, B, C = "acct-0", "acct-1", "acct-2"


def money(torn: bool = False, dup: bool = False, lose: bool = False) -> HistoryBuilder:
    b = HistoryBuilder()
    b.transfer(0, A, B, 5, 1, 1, (0, 0))
    b.transfer(1, B, C, 3, 2, 1, (1, 0))
    b.transfer(0, C, A, 7, 2, 2, (1, 1), type=FAIL, error="aborted")
    b.transfer(1, A, C, 2, 3, 3, (2, 2), type=INFO)     # unknown, never seen: fine
    reads = {A: [(0, 1)], B: [(0, 1), (1, 2)], C: [(0, 1)]}
    if torn:
        reads[C] = []
    if dup:
        reads[A] = [(0, 1), (3, 1)]
    if lose:
        reads[A], reads[B] = [], [(1, 2)]
    b.balance(9, reads)
    return b


def test_money_clean():
    v = assert_only(money())
    assert v["workloads"]["money"]["balances"] == {A: -5, B: 2, C: 3}


def test_money_torn_transfer():
    assert_only(money(torn=True), "money-torn-transfer", "money-nonzero-sum", "unseen")


def test_money_duplicate_leg():
    assert_only(money(dup=True), "money-duplicate-leg", "money-nonzero-sum", "duplicate")


def test_money_lost_transfer():
    # B's leg at index 0 is provably lost (B's index 1 was read); A's leg is merely unseen
    assert_only(money(lose=True), "money-lost-transfer", "lost-write", "unseen")


def copier(extra: bool = False, dup: bool = False, lose: bool = False,
           reorder: bool = False) -> HistoryBuilder:
    b = HistoryBuilder()
    for v in (1, 2, 3):
        b.send(0, "in-0", v, v - 1)
    b.send(0, "in-1", 1, 0)
    b.txn(1, [("poll", {"in-0": [(0, 1), (1, 2)]}), ("send", "out-0", 1, 0),
              ("send", "out-0", 2, 1)])
    b.txn(1, [("poll", {"in-0": [(2, 3)], "in-1": [(0, 1)]}), ("send", "out-0", 3, 3),
              ("send", "out-1", 1, 0)])
    out0 = [(0, 1), (1, 2), (3, 3)]
    if reorder:
        out0 = [(0, 1), (1, 3), (3, 2)]
    if dup:
        out0 = out0 + [(5, 3)]
    if lose:
        out0 = out0[:2]
    if extra:
        b.send(2, "out-0", 9, 5)
        out0 = out0 + [(5, 9)]
    b.copy_input(9, {"in-0": [(0, 1), (1, 2), (2, 3)], "in-1": [(0, 1)]},
                 {"in-0": "out-0", "in-1": "out-1"})
    b.copy_output(9, {"out-0": out0, "out-1": [(0, 1)]})
    return b


def test_copier_clean():
    v = assert_only(copier())
    assert v["workloads"]["copier"] == {"input_records": 4, "output_records": 4}


@pytest.mark.parametrize("kw,name", [("extra", "copier-extra"), ("dup", "copier-duplicate"),
                                      ("lose", "copier-lost"), ("reorder", "copier-reorder")])
def test_copier_anomalies(kw, name):
    v = found(copier(**{kw: True}))
    assert name in v["anomalies"]
    assert {n for n in v["anomalies"] if n.startswith("copier-")} == {name}


# --- caps, files, CLI ---------------------------------------------------------------------------
def test_examples_are_capped_but_counted():
    b = HistoryBuilder()
    for v in range(50):
        b.send(0, K, v, v)
    v = check(b.events, max_examples=4)
    assert len(v["anomalies"]["unseen"]) == 4 and v["counts"]["unseen"] == 50


def test_a_value_committed_twice_is_a_duplicate():
    b = HistoryBuilder()
    b.send(0, K, 1, 0).send(1, K, 1, 1)
    b.assign(2, [K]).poll(2, {K: [(0, 1), (1, 1)]})
    assert_only(b, "duplicate")


def test_a_retried_value_is_attributed_to_the_attempt_that_committed():
    # a copier's first attempt aborts, its retry commits the same value: clean
    b = HistoryBuilder()
    b.txn(0, [("send", K, 1, 0)], type=FAIL)
    b.txn(0, [("send", K, 1, 2)])
    b.assign(2, [K]).poll(2, {K: [(2, 1)]})
    assert_only(b)
    # an unknown attempt next to an ok one is not proven by a read of the value
    b = HistoryBuilder()
    b.txn(0, [("send", K, 1, None), ("send", L, 1, 0)], type=INFO)
    b.txn(1, [("send", K, 1, 2)])
    b.send(1, L, 2, 1)
    b.assign(2, [K, L]).poll(2, {K: [(2, 1)], L: [(1, 2)]})
    v = assert_only(b)          # L's 1 is not provably lost: the info txn may have aborted
    assert v["stats"]["info_ops_proven_committed"] == 0
    # every attempt failed: an aborted read
    b = HistoryBuilder()
    b.txn(0, [("send", K, 1, 0)], type=FAIL)
    b.txn(0, [("send", K, 1, 2)], type=FAIL)
    b.assign(2, [K]).poll(2, {K: [(2, 1)]})
    assert_only(b, "G1a")


def test_copier_committing_a_record_twice_is_found():
    b = copier()
    b.txn(1, [("poll", {"in-1": [(0, 1)]}), ("send", "out-1", 1, 2)])   # a second commit
    b.copy_output(9, {"out-0": [(0, 1), (1, 2), (3, 3)], "out-1": [(0, 1), (2, 1)]})
    v = found(b)
    assert {"duplicate", "copier-duplicate"} <= set(v["anomalies"])


def test_check_file_and_cli(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    b = base()
    b.assign(1, [K]).poll(1, {K: [(0, 1), (2, 2), (4, 3)]})
    b.write(good)
    base().write(bad)
    assert check_file(good)["valid"]
    assert main([str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    assert main([str(bad)]) == 1
    assert json.loads(capsys.readouterr().out)["anomalies"]["unseen"]
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["check-history", str(good), "--max-examples", "2"])
    assert args.func(args) == 0
    capsys.readouterr()
    (tmp_path / "torn.jsonl").write_text('{"index": 5}\n')
    assert main([str(tmp_path / "torn.jsonl")]) == 2
    proc = subprocess.run([sys.executable, "-m", "semel.chaos.checker", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["valid"] is False
