"""`semel txn list | describe | find-hanging | abort` and `semel producers describe`: the
transaction admin tools (KIP-664), over raw gRPC stubs of the Transactions service.

A *hanging* transaction is an open transaction in a partition (the partition leader's
producer state has a first offset for it, so it pins the partition's LSO and stalls every
read_committed reader) that no coordinator is completing: no transactional id of that
producer id is Ongoing/Prepare* with that partition. Those are safe to abort with
AbortTransaction (an ABORT marker written by the partition leader). An open transaction the
coordinator *does* know but that is older than `--max-age-ms` is reported as long-running;
aborting only one partition of it would tear it, so `abort` refuses it unless `--force`
(the safe cure is to fence its transactional id: a new InitProducerId aborts it everywhere).

`find_hanging` is a pure function over what the brokers answered, so tests drive it directly.
Exit codes: 0 ok, 1 operational error (cannot reach the cluster, refused), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from semel import limits
from semel.client.errors import is_retriable
from semel.clock import wall_clock_ms

PENDING_STATES = ("ONGOING", "PREPARE_COMMIT", "PREPARE_ABORT")
MAX_AGE_MS_DEFAULT = limits.MAX_TRANSACTION_TIMEOUT_MS  # no transaction may stay open longer: older ones are hanging


class TxnToolError(Exception):
    """An operational error: one line on stderr, exit 1."""


@dataclasses.dataclass(frozen=True, slots=True)
class OpenTxn:
    """An open transaction seen by a partition leader (DescribeProducers)."""

    topic: str
    partition: int
    producer_id: int
    producer_epoch: int
    coordinator_epoch: int
    start_offset: int
    last_timestamp_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class CoordinatorTxn:
    """A transaction a coordinator is running (ListTransactions + DescribeTransactions)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    state: str
    start_time_ms: int
    partitions: frozenset[tuple[str, int]]


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    txn: OpenTxn
    reason: str  # "unknown-to-coordinator" | "older-than-max-age"
    transactional_id: str = ""  # of the coordinator's transaction, for "older-than-max-age"

    @property
    def safe_to_abort(self) -> bool:
        return self.reason == "unknown-to-coordinator"


def find_hanging(open_txns: Iterable[OpenTxn], coordinator_txns: Iterable[CoordinatorTxn], now_ms: int,
                 max_age_ms: int = MAX_AGE_MS_DEFAULT) -> list[Finding]:
    """Open partition transactions no coordinator completes, or that are older than `max_age_ms`."""
    by_pid: dict[int, list[CoordinatorTxn]] = {}
    for ct in coordinator_txns:
        by_pid.setdefault(ct.producer_id, []).append(ct)
    findings = []
    for ot in open_txns:
        key = (ot.topic, ot.partition)
        # The partition's epoch is the epoch of the writes; the coordinator may have bumped once since (fence, end).
        known = [ct for ct in by_pid.get(ot.producer_id, ()) if key in ct.partitions and ct.state in PENDING_STATES
                 and ct.producer_epoch - 1 <= ot.producer_epoch <= ct.producer_epoch]
        if not known:
            findings.append(Finding(ot, "unknown-to-coordinator"))
        elif known[0].start_time_ms >= 0 and now_ms - known[0].start_time_ms > max_age_ms:
            findings.append(Finding(ot, "older-than-max-age", known[0].transactional_id))
    return findings


# --- talking to the cluster ---------------------------------------------------------------------


class ClusterView:
    """Brokers and partition leaders from a Metadata answer (`refresh` asks again); stubs per broker."""

    def __init__(self, bootstrap: str | None, timeout_s: float = 5.0) -> None:
        import grpc

        self.timeout_s = timeout_s
        self._grpc = grpc
        self._channels: dict[str, Any] = {}
        self._bootstrap = [a.strip() for a in (bootstrap or os.environ.get("SEMEL_BOOTSTRAP", "")).split(",")
                           if a.strip()]
        if not self._bootstrap:
            raise TxnToolError("no --bootstrap given and $SEMEL_BOOTSTRAP is empty")
        self.refresh()

    def refresh(self) -> None:
        """Read brokers and partition leaders again (after a leader change)."""
        from semel.v1 import broker_pb2, broker_pb2_grpc

        last = ""
        for address in self._bootstrap:
            try:
                self.metadata = broker_pb2_grpc.BrokerStub(self._channel(address)).Metadata(
                    broker_pb2.MetadataRequest(), timeout=self.timeout_s)
                break
            except self._grpc.RpcError as exc:
                last = f"{address}: {exc.code().name}"
        else:
            raise TxnToolError(f"cannot reach any broker ({last})")
        self.brokers = {b.broker_id: f"{b.host}:{b.port}" for b in self.metadata.brokers if not b.fenced}

    def _channel(self, address: str) -> Any:
        ch = self._channels.get(address)
        if ch is None:
            from semel.client.security import ClientSecurity

            creds = ClientSecurity.from_env().channel_credentials()
            ch = self._channels[address] = (self._grpc.insecure_channel(address) if creds is None
                                            else self._grpc.secure_channel(address, creds))
        return ch

    def txn(self, broker_id: int) -> Any:
        from semel.v1 import txn_pb2_grpc

        if broker_id not in self.brokers:
            raise TxnToolError(f"broker {broker_id} is not alive")
        return txn_pb2_grpc.TransactionsStub(self._channel(self.brokers[broker_id]))

    def partitions(self, topics: Sequence[str] = ()) -> list[tuple[str, int, int]]:
        """(topic, partition, leader) of the named topics (default: every non-internal one)."""
        out = []
        for t in self.metadata.topics:
            if (topics and t.name not in topics) or (not topics and t.internal):
                continue
            out += [(t.name, p.partition, p.leader_id) for p in t.partitions]
        missing = set(topics) - {t.name for t in self.metadata.topics}
        if missing:
            raise TxnToolError(f"unknown topic(s): {', '.join(sorted(missing))}")
        return out

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()


def describe_producers(view: ClusterView, topic: str, partition: int, leader: int) -> list[Any]:
    from semel.v1 import txn_pb2
    from semel.v1.common_pb2 import ErrorCode

    if leader < 0:
        raise TxnToolError(f"{topic}-{partition} has no leader")
    r = view.txn(leader).DescribeProducers(txn_pb2.DescribeProducersRequest(topic=topic, partition=partition),
                                            timeout=view.timeout_s)
    if r.error_code != ErrorCode.NONE:
        raise TxnToolError(f"{topic}-{partition}: {ErrorCode.Name(r.error_code)} {r.error_message}")
    return list(r.producers)


def open_transactions(view: ClusterView, topics: Sequence[str] = ()) -> list[OpenTxn]:
    out = []
    for topic, partition, leader in view.partitions(topics):
        for p in describe_producers(view, topic, partition, leader):
            if p.current_txn_start_offset >= 0:
                out.append(OpenTxn(topic, partition, p.producer_id, p.producer_epoch, p.coordinator_epoch,
                                   p.current_txn_start_offset, p.last_timestamp_ms))
    return out


def coordinator_transactions(view: ClusterView, producer_ids: Iterable[int] = ()) -> list[CoordinatorTxn]:
    """Every Ongoing/Prepare* transaction of every coordinator (optionally of some producer ids)."""
    from semel.v1 import txn_pb2
    from semel.v1.common_pb2 import ErrorCode

    # Value() checks the name; its stub returns a plain int, not the enum type
    states = [cast(txn_pb2.TransactionState, txn_pb2.TransactionState.Value(s)) for s in PENDING_STATES]
    out = []
    for broker in sorted(view.brokers):
        stub = view.txn(broker)
        listed = _retry(lambda: stub.ListTransactions(txn_pb2.ListTransactionsRequest(
            state_filters=states, producer_id_filters=list(producer_ids)), timeout=view.timeout_s))
        if listed.error_code != ErrorCode.NONE:
            raise TxnToolError(f"broker {broker}: ListTransactions {ErrorCode.Name(listed.error_code)}")
        ids = [t.transactional_id for t in listed.transactions]
        if not ids:
            continue
        described = stub.DescribeTransactions(txn_pb2.DescribeTransactionsRequest(transactional_ids=ids),
                                              timeout=view.timeout_s)
        for d in described.transactions:
            if d.error_code == ErrorCode.NONE:
                out.append(CoordinatorTxn(d.transactional_id, d.producer_id, d.producer_epoch,
                                          txn_pb2.TransactionState.Name(d.state), d.transaction_start_time_ms,
                                          frozenset((p.topic, p.partition) for p in d.partitions)))
    return out


def _retry(call: Any, attempts: int = 50) -> Any:
    """Retry COORDINATOR_LOAD_IN_PROGRESS answers for a few seconds."""
    from semel.v1.common_pb2 import ErrorCode

    for _ in range(attempts):
        r = call()
        if r.error_code != ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
            return r
        time.sleep(0.1)
    return r


def scan_hanging(view: ClusterView, topics: Sequence[str] = (), max_age_ms: int = MAX_AGE_MS_DEFAULT) -> list[Finding]:
    opened = open_transactions(view, topics)
    if not opened:
        return []
    known = coordinator_transactions(view, {o.producer_id for o in opened})
    return find_hanging(opened, known, wall_clock_ms(), max_age_ms)


def abort_open(view: ClusterView, topic: str, partition: int, producer_id: int, *, force: bool = False,
               max_age_ms: int = MAX_AGE_MS_DEFAULT) -> str:
    """Abort one producer's open transaction in one partition (the KIP-664 cure of a hanging
    transaction). Refuses a transaction a coordinator is still running unless `force`."""
    from semel.v1 import txn_pb2
    from semel.v1.common_pb2 import ErrorCode

    leader = next((l for t, p, l in view.partitions([topic]) if p == partition), None)
    if leader is None:
        raise TxnToolError(f"{topic} has no partition {partition}")
    info = next((p for p in describe_producers(view, topic, partition, leader) if p.producer_id == producer_id), None)
    if info is None or info.current_txn_start_offset < 0:
        raise TxnToolError(f"producer {producer_id} has no open transaction in {topic}-{partition}")
    ot = OpenTxn(topic, partition, producer_id, info.producer_epoch, info.coordinator_epoch,
                 info.current_txn_start_offset, info.last_timestamp_ms)
    findings = find_hanging([ot], coordinator_transactions(view, [producer_id]), wall_clock_ms(), max_age_ms)
    if not force and not (findings and findings[0].safe_to_abort):
        raise TxnToolError(f"a coordinator is still running producer {producer_id}'s transaction in "
                           f"{topic}-{partition}: aborting one partition would tear it (use --force, or fence "
                           "its transactional id)")
    request = txn_pb2.AbortTransactionRequest(
        topic=topic, partition=partition, producer_id=producer_id, producer_epoch=info.producer_epoch,
        coordinator_epoch=max(0, info.coordinator_epoch))
    # A retriable answer (e.g. NOT_ENOUGH_REPLICAS while replicas rejoin after a restart, or a
    # leader change) is retried at the current leader until the deadline; the marker is
    # idempotent, so a retry after an unknown outcome is safe.
    deadline = time.monotonic() + view.timeout_s + 10
    while True:
        r = view.txn(leader).AbortTransaction(request, timeout=view.timeout_s + 10)
        if r.error_code == ErrorCode.NONE:
            break
        if not is_retriable(r.error_code) or time.monotonic() >= deadline:
            raise TxnToolError(f"AbortTransaction: {ErrorCode.Name(r.error_code)} {r.error_message}")
        print(f"semel: {ErrorCode.Name(r.error_code)} from broker {leader}, retrying", file=sys.stderr)
        time.sleep(0.25)
        view.refresh()
        leader = next((l for t, p, l in view.partitions([topic]) if p == partition), leader)
    return (f"aborted producer {producer_id} (epoch {info.producer_epoch}) in {topic}-{partition}; "
            f"its transaction started at offset {info.current_txn_start_offset}")


# --- command line -----------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:
    txn = sub.add_parser("txn", help="inspect and repair transactions (list, describe, find-hanging, abort)")
    tsub = txn.add_subparsers(dest="txn_command", required=True)
    p = tsub.add_parser("list", help="transactions known to every coordinator")
    _common(p)
    p.add_argument("--state", action="append", default=[], help="filter: ONGOING, PREPARE_COMMIT, ... (repeatable)")
    p.add_argument("--producer-id", type=int, action="append", default=[])
    p.add_argument("--min-duration-ms", type=int, default=0, help="only transactions open longer than this")
    p.set_defaults(func=_guard(_cmd_list))
    p = tsub.add_parser("describe", help="the coordinator's state of one transactional id")
    _common(p)
    p.add_argument("transactional_id")
    p.set_defaults(func=_guard(_cmd_describe))
    p = tsub.add_parser("find-hanging", help="open transactions that pin the LSO and that no coordinator completes")
    _common(p)
    p.add_argument("--topic", action="append", default=[], help="only these topics (default: every non-internal one)")
    p.add_argument("--max-age-ms", type=int, default=MAX_AGE_MS_DEFAULT,
                   help=f"also report known transactions open longer than this (default {MAX_AGE_MS_DEFAULT})")
    p.set_defaults(func=_guard(_cmd_find_hanging))
    p = tsub.add_parser("abort", help="abort a hanging transaction in one partition (AbortTransaction)")
    _common(p)
    p.add_argument("--topic", required=True)
    p.add_argument("--partition", type=int, required=True)
    p.add_argument("--producer-id", type=int, required=True)
    p.add_argument("--force", action="store_true", help="abort even if a coordinator still runs it (tears it)")
    p.set_defaults(func=_guard(_cmd_abort))
    prod = sub.add_parser("producers", help="producer state of partition leaders")
    psub = prod.add_subparsers(dest="producers_command", required=True)
    p = psub.add_parser("describe", help="every producer a topic's partition leaders track")
    _common(p)
    p.add_argument("topic")
    p.add_argument("--partition", type=int, default=None)
    p.set_defaults(func=_guard(_cmd_producers))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", "-b", metavar="HOST:PORT", default=None,
                   help="broker address(es) HOST:PORT[,HOST:PORT] (default: $SEMEL_BOOTSTRAP)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--timeout-ms", type=int, default=5_000)


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        import grpc

        try:
            view = ClusterView(args.bootstrap, args.timeout_ms / 1000)
            try:
                return int(func(view, args))
            finally:
                view.close()
        except TxnToolError as exc:
            print(f"semel: error: {exc}", file=sys.stderr)
            return 1
        except grpc.RpcError as exc:
            print(f"semel: error: broker unreachable ({exc.code().name})", file=sys.stderr)
            return 1

    return run


def _emit(args: argparse.Namespace, obj: dict[str, Any], lines: Iterable[str]) -> None:
    if args.json:
        print(json.dumps(obj, sort_keys=True))
    else:
        for line in lines:
            print(line)


def _cmd_list(view: ClusterView, args: argparse.Namespace) -> int:
    from semel.v1 import txn_pb2
    from semel.v1.common_pb2 import ErrorCode

    try:
        # Value() checks the name; its stub returns a plain int, not the enum type
        states = [cast(txn_pb2.TransactionState, txn_pb2.TransactionState.Value(s.upper())) for s in args.state]
    except ValueError as exc:
        raise TxnToolError(str(exc)) from None
    rows = []
    for broker in sorted(view.brokers):
        r = _retry(lambda: view.txn(broker).ListTransactions(txn_pb2.ListTransactionsRequest(
            state_filters=states, producer_id_filters=args.producer_id, duration_filter_ms=args.min_duration_ms),
            timeout=view.timeout_s))
        if r.error_code != ErrorCode.NONE:
            raise TxnToolError(f"broker {broker}: {ErrorCode.Name(r.error_code)}")
        rows += [{"transactional_id": t.transactional_id, "producer_id": t.producer_id,
                  "state": txn_pb2.TransactionState.Name(t.state), "coordinator": broker} for t in r.transactions]
    rows.sort(key=lambda x: x["transactional_id"])
    _emit(args, {"transactions": rows},
          [f"{'TRANSACTIONAL ID':30} {'PRODUCER':>10} {'STATE':16} COORDINATOR"]
          + [f"{x['transactional_id']:30} {x['producer_id']:>10} {x['state']:16} {x['coordinator']}" for x in rows])
    return 0


def _cmd_describe(view: ClusterView, args: argparse.Namespace) -> int:
    from semel.v1 import txn_pb2
    from semel.v1.common_pb2 import ErrorCode

    tid = args.transactional_id
    any_broker = min(view.brokers)
    fc = view.txn(any_broker).FindCoordinator(txn_pb2.FindCoordinatorRequest(key=tid), timeout=view.timeout_s)
    if fc.error_code != ErrorCode.NONE:
        raise TxnToolError(f"no coordinator for {tid!r}: {ErrorCode.Name(fc.error_code)}")
    d = view.txn(fc.broker_id).DescribeTransactions(
        txn_pb2.DescribeTransactionsRequest(transactional_ids=[tid]), timeout=view.timeout_s).transactions[0]
    if d.error_code != ErrorCode.NONE:
        raise TxnToolError(f"{tid!r}: {ErrorCode.Name(d.error_code)}")
    obj = {"transactional_id": tid, "coordinator": fc.broker_id, "state": txn_pb2.TransactionState.Name(d.state),
           "producer_id": d.producer_id, "producer_epoch": d.producer_epoch,
           "transaction_timeout_ms": d.transaction_timeout_ms, "transaction_start_time_ms": d.transaction_start_time_ms,
           "partitions": [f"{p.topic}-{p.partition}" for p in d.partitions],
           "last_bump_reason": txn_pb2.EpochBumpReason.Name(d.last_bump_reason),
           # 1: a Kafka client's id (EndTxn keeps the epoch), 2: a gRPC client's (docs/kafka.md)
           "transaction_version": txn_pb2.TransactionVersion.Name(d.transaction_version)}
    lines = [f"{k}: {v}" for k, v in obj.items()]
    if d.transaction_start_time_ms > 0:  # also for readers: when, and how long ago
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.transaction_start_time_ms / 1000))
        age_s = max(0.0, time.time() - d.transaction_start_time_ms / 1000)
        lines = [f"{line} ({started}, {age_s:.0f} s ago)" if line.startswith("transaction_start_time_ms:") else line
                 for line in lines]
    _emit(args, obj, lines)
    return 0


def _cmd_find_hanging(view: ClusterView, args: argparse.Namespace) -> int:
    findings = scan_hanging(view, args.topic, args.max_age_ms)
    rows = [{"topic": f.txn.topic, "partition": f.txn.partition, "producer_id": f.txn.producer_id,
             "producer_epoch": f.txn.producer_epoch, "start_offset": f.txn.start_offset, "reason": f.reason,
             "transactional_id": f.transactional_id, "safe_to_abort": f.safe_to_abort} for f in findings]
    lines = [f"{x['topic']}-{x['partition']} producer {x['producer_id']} epoch {x['producer_epoch']} open since "
             f"offset {x['start_offset']}: {x['reason']}"
             + (f" (semel txn abort --topic {x['topic']} --partition {x['partition']} --producer-id "
                f"{x['producer_id']})" if x["safe_to_abort"] else f" (transactional id {x['transactional_id']!r})")
             for x in rows] or ["no hanging transactions"]
    _emit(args, {"hanging": rows}, lines)
    return 0


def _cmd_abort(view: ClusterView, args: argparse.Namespace) -> int:
    message = abort_open(view, args.topic, args.partition, args.producer_id, force=args.force)
    _emit(args, {"aborted": True, "message": message}, [message])
    return 0


def _cmd_producers(view: ClusterView, args: argparse.Namespace) -> int:
    rows = []
    for topic, partition, leader in view.partitions([args.topic]):
        if args.partition is not None and partition != args.partition:
            continue
        for p in describe_producers(view, topic, partition, leader):
            rows.append({"partition": partition, "producer_id": p.producer_id, "producer_epoch": p.producer_epoch,
                         "last_sequence": p.last_sequence, "last_timestamp_ms": p.last_timestamp_ms,
                         "coordinator_epoch": p.coordinator_epoch,
                         "current_txn_start_offset": p.current_txn_start_offset})
    _emit(args, {"topic": args.topic, "producers": rows},
          [f"{'PARTITION':>9} {'PRODUCER':>10} {'EPOCH':>6} {'LAST SEQ':>9} {'COORD EPOCH':>11} TXN START"]
          + [f"{x['partition']:>9} {x['producer_id']:>10} {x['producer_epoch']:>6} {x['last_sequence']:>9} "
             f"{x['coordinator_epoch']:>11} {x['current_txn_start_offset']}" for x in rows])
    return 0
