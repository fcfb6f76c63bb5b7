"""`semel txn find-hanging`'s classification (pure) and the CLI's wiring."""

from __future__ import annotations

from semel.cli.txn_commands import CoordinatorTxn, OpenTxn, find_hanging

NOW = 10_000_000


def open_txn(pid: int = 7, epoch: int = 3, topic: str = "t", partition: int = 0) -> OpenTxn:
    return OpenTxn(topic, partition, pid, epoch, -1, 100, NOW - 5)


def coord(pid: int = 7, epoch: int = 3, state: str = "ONGOING", parts=(("t", 0),), start_ms: int = NOW - 1000):
    return CoordinatorTxn("tid", pid, epoch, state, start_ms, frozenset(parts))


def test_unknown_to_every_coordinator_is_hanging_and_safe_to_abort() -> None:
    (f,) = find_hanging([open_txn()], [], NOW)
    assert f.reason == "unknown-to-coordinator" and f.safe_to_abort


def test_a_running_transaction_is_not_hanging() -> None:
    assert find_hanging([open_txn()], [coord()], NOW) == []
    # completing: the coordinator already bumped the epoch (KIP-890) and writes markers
    assert find_hanging([open_txn(epoch=3)], [coord(epoch=4, state="PREPARE_COMMIT")], NOW) == []


def test_coordinator_knows_the_producer_but_not_this_partition_or_epoch() -> None:
    assert find_hanging([open_txn()], [coord(parts=(("t", 1),))], NOW)[0].reason == "unknown-to-coordinator"
    assert find_hanging([open_txn(epoch=1)], [coord(epoch=3)], NOW)[0].reason == "unknown-to-coordinator"
    assert find_hanging([open_txn()], [coord(state="COMPLETE_COMMIT")], NOW)[0].reason == "unknown-to-coordinator"


def test_old_known_transaction_is_reported_but_not_safe_to_abort() -> None:
    (f,) = find_hanging([open_txn()], [coord(start_ms=NOW - 120_000)], NOW, max_age_ms=60_000)
    assert f.reason == "older-than-max-age" and not f.safe_to_abort and f.transactional_id == "tid"


def test_cli_registers_txn_and_producers_commands() -> None:
    from semel.cli import main as cli

    parser = cli.build_parser()
    args = parser.parse_args(["txn", "abort", "--topic", "t", "--partition", "1", "--producer-id", "5"])
    assert (args.topic, args.partition, args.producer_id, args.force) == ("t", 1, 5, False)
    assert parser.parse_args(["producers", "describe", "t"]).topic == "t"


def test_cli_without_a_cluster_exits_1(capsys) -> None:
    from semel.cli import main as cli

    assert cli.main(["txn", "list", "-b", "127.0.0.1:1", "--timeout-ms", "200"]) == 1
    assert "cannot reach any broker" in capsys.readouterr().err
