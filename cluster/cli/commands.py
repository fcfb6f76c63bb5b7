"""`semel broker | cluster | topic | produce | consume`: the cluster's command line.

Every command that talks to a cluster takes `--bootstrap HOST:PORT[,HOST:PORT]` (default:
$SEMEL_BOOTSTRAP). Operational errors (cannot connect, topic missing, ...) print one
readable line to stderr and exit 1, never a traceback; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

BOOTSTRAP_HELP = "broker address(es) HOST:PORT[,HOST:PORT] (default: $SEMEL_BOOTSTRAP)"


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_broker(sub)
    _add_cluster(sub)
    _add_topic(sub)
    _add_produce(sub)
    _add_consume(sub)


def _operational(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns client errors into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from semel.client.errors import ConfigError, SemelError

        try:
            return func(args)
        except ConfigError as exc:
            print(f"semel {args.command}: {exc.message or exc}", file=sys.stderr)
            return 2
        except SemelError as exc:
            print(f"semel {args.command}: error: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # `semel consume ... | head`: the reader left; not an error.
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            except OSError:
                pass
            return 0

    return run


def _bootstrap_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", "-b", metavar="HOST:PORT", default=None, help=BOOTSTRAP_HELP)


def _admin_args(parser: argparse.ArgumentParser) -> None:
    _bootstrap_arg(parser)
    parser.add_argument("--timeout-ms", type=int, default=30_000,
                        help="give up after this long (default 30000; 5000 if no broker answers at all)")


def _admin(args: argparse.Namespace) -> Any:
    from semel.client import Admin

    return Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, connect_timeout_ms=min(5_000, args.timeout_ms))


# How long `semel produce` / `semel consume` keep asking about a topic every broker says does not
# exist: a topic created a moment ago may not have reached the broker asked yet (its metadata
# follows the quorum within a heartbeat or two); a typo should not wait --max-block-ms (10 s).
UNKNOWN_TOPIC_WAIT_MS = 2_000


def _topic_partitions(client: Any, topic: str, timeout_ms: int) -> list[int]:
    """The partition numbers of `topic`; a topic that does not exist fails within
    UNKNOWN_TOPIC_WAIT_MS with the command that creates it."""
    from semel.client.errors import UnknownTopicOrPartitionError

    try:
        infos = client.partitions_for(topic, timeout_ms=timeout_ms, unknown_topic_wait_ms=UNKNOWN_TOPIC_WAIT_MS)
    except UnknownTopicOrPartitionError as exc:
        raise UnknownTopicOrPartitionError(f"{exc.message}; create it with: semel topic create {topic}") from None
    return [info.partition for info in infos]


# --- semel broker ----------------------------------------------------------------------
def _add_broker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker",
        help="run one broker in the foreground (flags as `python -m semel.cluster.broker`)",
        description="Run one Semel broker. All arguments are passed to the broker entry point "
        "(`python -m semel.cluster.broker --help` lists them), e.g. --broker-id 1 --listen 127.0.0.1:9092 "
        "--data-dir DIR --raft 127.0.0.1:19092 --voters 127.0.0.1:19092.",
        add_help=False,
        prefix_chars="\0",  # every argument, --help included, belongs to the broker
    )
    p.add_argument("broker_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_broker)


def _run_broker(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module("semel.cluster.broker.process")  # imported only to run a broker
    argv = list(args.broker_args)
    main = getattr(module, "main", None)
    if main is None:
        print("semel broker: semel.cluster.broker.process has no main(argv)", file=sys.stderr)
        return 1
    return int(main(argv) or 0)


# --- semel cluster ---------------------------------------------------------------------
def _add_cluster(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="run a local cluster, or describe a running one")
    csub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    up = csub.add_parser(
        "up",
        help="start N local brokers in the foreground; Ctrl-C or SIGTERM stops them all",
        description="Start N brokers as subprocesses on this machine, wait until they are ready, "
        "print the bootstrap address, and stop them all cleanly on Ctrl-C / SIGTERM. "
        "Broker N listens on BASE_PORT+N-1 (clients) and RAFT_BASE_PORT+N-1 (metadata quorum); "
        "its data goes to DATA_DIR/broker-N and its log to DATA_DIR/broker-N.log. "
        "A broker that dies once the cluster is ready is reported with the tail of its log, the others "
        "keep serving, and it is restarted after --restart-delay-s (unless it keeps crashing).",
    )
    up.add_argument("--brokers", type=int, default=3, help="number of brokers (default 3)")
    up.add_argument("--data-dir", default=".semel-data", help="data and log directory (default .semel-data)")
    up.add_argument("--base-port", type=int, default=9092, help="client port of broker 1 (default 9092)")
    up.add_argument("--raft-base-port", type=int, default=None, help="Raft port of broker 1 (default BASE_PORT+10000)")
    up.add_argument("--metrics-base-port", type=int, default=None,
                    help="serve Prometheus metrics: broker N on METRICS_BASE_PORT+N-1 (default: no metrics)")
    up.add_argument("--kafka-base-port", type=int, default=None,
                    help="also serve the Kafka protocol: broker N on KAFKA_BASE_PORT+N-1 (default: no Kafka listener)")
    up.add_argument("--follow-logs", action="store_true", help="also print broker logs, prefixed [broker-N]")
    up.add_argument("--ready-timeout-s", type=float, default=60.0, help="how long to wait for readiness (default 60)")
    up.add_argument(
        "--broker-arg", action="append", default=[], metavar="ARG",
        help="extra argument passed to every broker (repeatable), e.g. --broker-arg=--session-timeout-ms=3000",
    )
    up.add_argument("--restart-delay-s", type=float, default=3.0,
                    help="restart a broker that died this long after its exit (default 3)")
    up.add_argument("--no-restart", action="store_true", help="leave a broker that died down")
    up.add_argument("--secure", action="store_true",
                    help="TLS and authentication: create a CA and broker certificates in DATA_DIR/certs, a super "
                    "user `admin` with a random password, and DATA_DIR/admin.env (source it, then run semel)")
    up.set_defaults(func=_cluster_up)
    desc = csub.add_parser("describe", help="brokers, controller and metadata quorum of a running cluster")
    _admin_args(desc)
    desc.set_defaults(func=_operational(_cluster_describe))
    status = csub.add_parser("status", help="health at a glance: brokers, quorum, partitions, transactions, "
                             "group lag; exit 1 when something needs attention")
    _admin_args(status)
    from semel.cli import status_commands

    status_commands.add_arguments(status)
    status.set_defaults(func=_operational(status_commands.run))
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _cluster_up(args: argparse.Namespace) -> int:
    from semel.cluster.tooling.local_cluster import run_cluster_up

    return run_cluster_up(
        args.brokers, args.data_dir, args.base_port, args.raft_base_port, args.follow_logs,
        args.broker_arg, args.ready_timeout_s, None if args.no_restart else max(0.0, args.restart_delay_s),
        metrics_base_port=args.metrics_base_port,
        kafka_base_port=args.kafka_base_port,
        secure=args.secure,
    )


def _cluster_describe(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        cluster = admin.describe_cluster()
    print(f"cluster id: {cluster.cluster_id}   controller: {cluster.controller_id}   "
          f"metadata version: {cluster.metadata_version}")
    if cluster.quorum_voters:
        print(f"quorum: leader {cluster.quorum_leader or '-'}; voters {', '.join(cluster.quorum_voters)}")
    rows = [
        [str(b.broker_id), b.address, "fenced" if b.fenced else "alive", str(b.broker_epoch),
         "yes" if b.is_controller else ""]
        for b in cluster.brokers
    ]
    print(format_table(["BROKER", "ADDRESS", "STATE", "EPOCH", "CONTROLLER"], rows))
    return 0


# --- semel topic -----------------------------------------------------------------------
def _add_topic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topic", help="create, list, describe and delete topics")
    tsub = p.add_subparsers(dest="topic_command", metavar="SUBCOMMAND")
    create = tsub.add_parser("create", help="create a topic")
    create.add_argument("name")
    create.add_argument("--partitions", "-p", type=int, default=1, help="partition count (default 1)")
    create.add_argument(
        "--replication-factor", "-r", type=int, default=None,
        help="replicas per partition (default: the cluster default, min(3, brokers))",
    )
    create.add_argument(
        "--config", "-c", action="append", default=[], metavar="KEY=VALUE",
        help="topic config, repeatable (min_insync_replicas, retention_ms, segment_bytes, ...)",
    )
    create.add_argument("--if-not-exists", action="store_true", help="succeed if the topic already exists")
    _admin_args(create)
    create.set_defaults(func=_operational(_topic_create))

    lst = tsub.add_parser("list", help="list topic names")
    lst.add_argument("--internal", action="store_true", help="include internal topics")
    _admin_args(lst)
    lst.set_defaults(func=_operational(_topic_list))

    desc = tsub.add_parser("describe", help="partitions of topics: leader, replicas, ISR, high watermark")
    desc.add_argument("names", nargs="*", help="topics (default: all)")
    desc.add_argument("--internal", action="store_true", help="include internal topics")
    _admin_args(desc)
    desc.set_defaults(func=_operational(_topic_describe))

    delete = tsub.add_parser("delete", help="delete a topic and its data")
    delete.add_argument("name")
    _admin_args(delete)
    delete.set_defaults(func=_operational(_topic_delete))
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _parse_configs(items: Sequence[str]) -> dict[str, str]:
    from semel.client.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _topic_create(args: argparse.Namespace) -> int:
    from semel.client.errors import TopicAlreadyExistsError

    configs = _parse_configs(args.config)
    with _admin(args) as admin:
        try:
            admin.create_topic(args.name, args.partitions, args.replication_factor, configs)
        except TopicAlreadyExistsError:
            if not args.if_not_exists:
                raise
            print(f"topic {args.name} already exists")
            return 0
    print(f"created topic {args.name} ({args.partitions} partition(s))")
    return 0


def _topic_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        for name in admin.list_topics(include_internal=args.internal):
            print(name)
    return 0


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids) or "-"


def _topic_describe(args: argparse.Namespace) -> int:
    from semel.v1 import common_pb2

    with _admin(args) as admin:
        topics = admin.describe_topics(args.names or None, include_internal=args.internal)
    if not topics:
        print("no topics")
        return 0
    rows = []
    for topic in topics:
        for p in topic.partitions:
            status = "" if p.error_code == common_pb2.NONE else common_pb2.ErrorCode.Name(p.error_code)
            if p.leader_id >= 0 and p.isr and len(p.isr) < len(p.replicas):
                status = status or "under-replicated"
            if p.leader_id < 0 and p.eligible_leader_replicas:
                status += f" (waiting for an eligible replica: {_ids(p.eligible_leader_replicas)})"
            rows.append([
                topic.name, str(p.partition), str(p.leader_id) if p.leader_id >= 0 else "none",
                str(p.leader_epoch), _ids(p.replicas), _ids(p.isr), _ids(p.eligible_leader_replicas),
                str(p.high_watermark) if p.high_watermark >= 0 else "?",
                str(p.log_start_offset) if p.log_start_offset >= 0 else "?", status,
            ])
    print(format_table(
        ["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "ELR", "HIGH_WATERMARK", "LOG_START", "STATUS"], rows
    ))
    return 0


def _topic_delete(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        admin.delete_topic(args.name)
    print(f"deleted topic {args.name}")
    return 0


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


# --- semel produce ---------------------------------------------------------------------
def _add_produce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "produce",
        help="send lines from stdin as records",
        description="Read stdin line by line and send each line as one record (without the newline). "
        "With --key-separator SEP, a line 'KEY<SEP>VALUE' has key KEY; a line without SEP has no key. "
        "Exits once every record is acknowledged; exit code 1 if any failed. On Ctrl-C it stops reading, waits up to 5 s for the records already sent, and says how many were acknowledged, not written, and of unknown outcome (exit 130).",
    )
    p.add_argument("topic")
    p.add_argument("--key-separator", "-k", metavar="SEP", default=None, help="split each line into key and value")
    p.add_argument("--acks", choices=["all", "1", "0"], default="all", help="all (default), 1 (leader), 0 (none)")
    p.add_argument("--partition", type=int, default=None, help="send every record to this partition")
    p.add_argument("--linger-ms", type=int, default=5, help="batching delay (default 5)")
    p.add_argument("--compression", choices=["none", "gzip", "snappy", "lz4", "zstd"], default="none",
                   help="compress each batch (sent as a Kafka RecordBatch v2; default none)")
    p.add_argument("--delivery-timeout-ms", type=int, default=120_000, help="give up on a record after this (default 120000)")
    p.add_argument("--max-block-ms", type=int, default=10_000,
                   help="how long to wait for the topic's metadata or buffer space (default 10000)")
    p.add_argument("--no-idempotence", action="store_true",
                   help="send without producer id/sequences (idempotence is on by default with --acks all)")
    p.add_argument("--transactional-id", metavar="ID", default=None,
                   help="send in transactions: commit every --txn-lines lines and at end of input "
                        "(read_committed consumers see each chunk all at once or not at all)")
    p.add_argument("--txn-lines", type=int, default=1000, metavar="N",
                   help="lines per transaction with --transactional-id (default 1000)")
    _bootstrap_arg(p)
    p.set_defaults(func=_operational(_produce))


# After Ctrl-C, `semel produce` waits this long for the records already sent to be acknowledged
# (a second Ctrl-C stops waiting), then reports what it knows.
INTERRUPT_FLUSH_S = 5.0


class _Outcomes:
    """Counts of the records' outcomes, from the producer's callbacks (client threads)."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.acked = 0
        self.failed = 0          # surely not written: refused, or never sent
        self.unknown = 0         # finished with an error whose outcome is unknown
        self.first_error: BaseException | None = None
        self.interrupted = False

    def on_done(self, _meta: Any, error: BaseException | None) -> None:
        with self.lock:
            if error is None:
                self.acked += 1
                return
            if getattr(error, "outcome_unknown", False):
                self.unknown += 1
            else:
                self.failed += 1
            report = self.first_error is None and not self.interrupted
            if self.first_error is None:
                self.first_error = error
        if report:
            print(f"semel produce: error: {error}", file=sys.stderr)


def _produce(args: argparse.Namespace) -> int:
    from semel.client import Producer

    if args.transactional_id is not None:
        return _produce_transactional(args)
    outcomes = _Outcomes()
    sent = 0
    sep = args.key_separator.encode() if args.key_separator else None
    with Producer(args.bootstrap, acks=args.acks, linger_ms=args.linger_ms, compression_type=args.compression,
                  delivery_timeout_ms=args.delivery_timeout_ms, max_block_ms=args.max_block_ms,
                  enable_idempotence=False if args.no_idempotence else None) as producer:
        _topic_partitions(producer, args.topic, args.max_block_ms)  # a missing topic fails before stdin is read
        try:
            for raw in sys.stdin.buffer:
                line = raw.rstrip(b"\n").rstrip(b"\r")
                key = None
                if sep is not None and sep in line:
                    key, line = line.split(sep, 1)
                producer.send(args.topic, line, key=key, partition=args.partition, callback=outcomes.on_done)
                sent += 1
            producer.flush()
        except KeyboardInterrupt:
            return _settle_interrupted(producer, outcomes, sent)
    failed = outcomes.failed + outcomes.unknown
    if failed:
        unknown = f" ({outcomes.unknown} of them with outcome unknown: may or may not be stored)" \
            if outcomes.unknown else ""
        print(f"semel produce: {failed} of {sent} record(s) failed{unknown}", file=sys.stderr)
        return 1
    return 0


def _settle_interrupted(producer: Any, outcomes: _Outcomes, sent: int) -> int:
    """Ctrl-C: stop reading, give what was sent up to INTERRUPT_FLUSH_S to be acknowledged, then
    say exactly how many records were acknowledged, how many surely were not written, and how
    many have an unknown outcome (in flight, or their request broke off: never called failed)."""
    with outcomes.lock:
        outcomes.interrupted = True
        pending = sent - outcomes.acked - outcomes.failed - outcomes.unknown
    if pending > 0:
        print(f"semel produce: interrupted; waiting up to {INTERRUPT_FLUSH_S:g} s for {pending} unacknowledged "
              "record(s) (Ctrl-C again to stop waiting)", file=sys.stderr)
        try:
            producer.flush(timeout_s=INTERRUPT_FLUSH_S)
        except (TimeoutError, KeyboardInterrupt):
            pass
    import logging

    logging.getLogger("semel.client").setLevel(logging.ERROR)  # close()'s "failing them" is said below, exactly
    try:
        producer.close(timeout_s=0)  # records never sent fail here as not written; in-flight ones stay unknown
    except KeyboardInterrupt:
        pass
    with outcomes.lock:
        # a send() interrupted half-way may have queued its record uncounted: the callbacks know it
        total = max(sent, outcomes.acked + outcomes.failed + outcomes.unknown)
        unknown = total - outcomes.acked - outcomes.failed
        print(f"semel produce: interrupted: {outcomes.acked} of {total} record(s) acknowledged, "
              f"{outcomes.failed} not written, {unknown} with outcome unknown (may or may not be stored)",
              file=sys.stderr)
    return 130


def _produce_transactional(args: argparse.Namespace) -> int:
    """One transaction per --txn-lines lines of stdin (and one for the rest at end of input)."""
    from semel.client import Producer

    if args.acks != "all" or args.no_idempotence:
        print("semel produce: error: --transactional-id needs --acks all and idempotence", file=sys.stderr)
        return 2
    if args.txn_lines < 1:
        print("semel produce: error: --txn-lines must be >= 1", file=sys.stderr)
        return 2
    sep = args.key_separator.encode() if args.key_separator else None
    committed = chunk = 0
    with Producer(args.bootstrap, transactional_id=args.transactional_id, linger_ms=args.linger_ms,
                  compression_type=args.compression, delivery_timeout_ms=args.delivery_timeout_ms, max_block_ms=args.max_block_ms) as producer:
        _topic_partitions(producer, args.topic, args.max_block_ms)
        producer.init_transactions()
        for raw in sys.stdin.buffer:
            if chunk == 0:
                producer.begin_transaction()
            line = raw.rstrip(b"\n").rstrip(b"\r")
            key = None
            if sep is not None and sep in line:
                key, line = line.split(sep, 1)
            producer.send(args.topic, line, key=key, partition=args.partition)
            chunk += 1
            if chunk >= args.txn_lines:
                committed += _commit_chunk(producer, chunk, committed)
                chunk = 0
        if chunk:
            committed += _commit_chunk(producer, chunk, committed)
    return 0


def _commit_chunk(producer: Any, lines: int, committed: int) -> int:
    """Commits the open transaction; on failure aborts it and raises (exit 1, the message says
    how many lines were committed before)."""
    from semel.client.errors import AbortableError, SemelError

    try:
        producer.commit_transaction()
    except AbortableError:
        producer.abort_transaction()
        raise SemelError(f"transaction aborted: the last {lines} line(s) were not written "
                         f"({committed} line(s) committed before)") from None
    except SemelError as exc:
        raise type(exc)(f"{exc.message or exc} ({committed} line(s) committed before; the last {lines} line(s) "
                        f"{'may or may not be' if exc.outcome_unknown or exc.retriable else 'were not'} committed)",
                        outcome_unknown=exc.outcome_unknown) from None
    return lines


# --- semel consume ---------------------------------------------------------------------
def _add_consume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consume",
        help="print records of a topic to stdout",
        description="Print each record's value on its own line. Without --group the partitions are read "
        "without a consumer group, from the end of each unless --from-beginning. With --group G the command "
        "joins group G (partitions shared with its other members) and starts at G's committed offsets; it "
        "commits the offsets of the records it printed (after printing them: at least once) every second, "
        "when the group takes a partition away, and on exit. --from-beginning then only applies to "
        "partitions G has no offset for.",
    )
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    p.add_argument("--partition", type=int, action="append", default=None,
                   help="read only this partition (repeatable; default: all)")
    p.add_argument("--offset", default=None, metavar="OFFSET",
                   help="start at this offset (needs --partition): N, -N = N records before the end, "
                        "earliest or latest; an N outside the log is an error that names the log's range")
    p.add_argument("--max-messages", type=int, default=None, help="exit after this many records")
    p.add_argument("--timeout-ms", type=int, default=None, help="exit when no record arrived for this long")
    p.add_argument("--print-key", action="store_true", help="print KEY<SEP>VALUE")
    p.add_argument("--print-offset", action="store_true", help="prefix each line with PARTITION:OFFSET<TAB>")
    p.add_argument("--key-separator", default="\t", metavar="SEP", help="separator for --print-key (default TAB)")
    p.add_argument("--isolation-level", choices=["read_uncommitted", "read_committed"], default="read_uncommitted")
    p.add_argument("--group", default=None, metavar="GROUP",
                   help="consume as a member of this consumer group and commit what was printed "
                        "(not with --partition/--offset)")
    _bootstrap_arg(p)
    p.set_defaults(func=_operational(_consume))


def _consume(args: argparse.Namespace) -> int:
    from semel.client import Consumer
    from semel.client.errors import ConfigError, UnknownTopicOrPartitionError

    if args.offset is not None and not args.partition:
        raise ConfigError("--offset needs --partition")
    start_offset = None if args.offset is None else parse_start_offset(args.offset)
    if args.group is not None and (args.partition or args.offset is not None):
        raise ConfigError("--group assigns partitions itself: drop --partition/--offset")
    with Consumer(args.bootstrap, auto_offset_reset="earliest" if args.from_beginning else "latest",
                  isolation_level=args.isolation_level, group_id=args.group, enable_auto_commit=False) as consumer:
        existing = _topic_partitions(consumer, args.topic, min(10_000, args.timeout_ms or 10_000))
        if args.group is not None:
            return _consume_in_group(consumer, args)
        partitions = args.partition if args.partition is not None else existing
        missing = sorted(set(partitions) - set(existing))
        if missing:
            raise UnknownTopicOrPartitionError(
                f"topic {args.topic!r} has partitions 0..{len(existing) - 1}; no partition {missing[0]}"
            )
        consumer.assign([(args.topic, p) for p in partitions])
        if start_offset is not None:
            for p in partitions:
                _seek(consumer, args.topic, p, start_offset)
        _print_records(consumer, args)
    return 0


def parse_start_offset(text: str) -> int | str:
    """`--offset`: an offset N (>= 0), "-N" (N records before the end, as kcat's and rpk's -o),
    "earliest" or "latest"."""
    from semel.client.errors import ConfigError

    word = text.strip().lower()
    if word in ("earliest", "beginning", "start"):
        return "earliest"
    if word in ("latest", "end"):
        return "latest"
    try:
        offset = int(word)
    except ValueError:
        raise ConfigError(f"--offset takes N, -N (N records before the end), earliest or latest; got {text!r}") from None
    return "latest" if word == "-0" else offset


POSITION_TIMEOUT_MS = 10_000  # `--offset`: how long to wait for a partition's log start and end


def _seek(consumer: Any, topic: str, partition: int, start: int | str) -> None:
    """Positions the consumer for `--offset`; an absolute offset outside [log start, log end]
    is refused naming the range (the reset to the end it would get otherwise printed nothing and
    exited 0, which reads as "no records there")."""
    from semel.client.errors import OffsetOutOfRangeError

    consumer.seek_to_beginning([(topic, partition)])
    log_start = consumer.position(topic, partition, POSITION_TIMEOUT_MS)
    consumer.seek_to_end([(topic, partition)])
    log_end = consumer.position(topic, partition, POSITION_TIMEOUT_MS)
    if start == "earliest":
        offset = log_start
    elif start == "latest":
        offset = log_end
    elif isinstance(start, int) and start < 0:
        offset = max(log_start, log_end + start)
    else:
        offset = int(start)
        where = f"{topic}-{partition} holds offsets {log_start}..{log_end - 1}" if log_end > log_start else \
            f"{topic}-{partition} is empty"
        if offset > log_end:
            raise OffsetOutOfRangeError(f"offset {offset} is past the end: {where} (log end {log_end}); "
                                        f"--offset {log_end} waits for the next record, --offset -N reads the last N")
        if offset < log_start:
            raise OffsetOutOfRangeError(f"offset {offset} is before the start: {where} (log start {log_start}; "
                                        "older records were deleted)")
    consumer.seek(topic, partition, offset)


def _consume_in_group(consumer: Any, args: argparse.Namespace) -> int:
    """Group member: print, flush, then commit the next offset of each printed partition (every
    second, on revocation, on exit): a record is committed only after it was written out."""
    printed: dict[tuple[str, int], int] = {}  # per partition: the offset after what was printed
    committed: dict[tuple[str, int], int] = {}

    def commit(partitions: set[tuple[str, int]] | None = None) -> None:
        offsets = {tp: o for tp, o in printed.items()
                   if (partitions is None or tp in partitions) and committed.get(tp) != o}
        if offsets:
            sys.stdout.buffer.flush()
            consumer.commit(offsets)
            committed.update(offsets)

    def on_lost(partitions: set[tuple[str, int]]) -> None:
        for tp in partitions:  # another member owns them now: our commit would be refused
            printed.pop(tp, None)
            committed.pop(tp, None)

    import signal

    # `kill PID` (SIGTERM) ends like Ctrl-C: commit what was printed and leave the group at once,
    # rather than leaving the group to find the member gone after its session timeout.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    consumer.subscribe([args.topic], on_revoked=commit, on_lost=on_lost)
    try:
        _print_records(consumer, args, printed, commit)
    except BaseException:
        try:
            commit()  # what was surely written out (a broken pipe's flush fails: nothing more)
        except Exception:  # the first error is the one to report
            pass
        raise
    commit()
    return 0


def _reader_gone(stream: Any) -> bool:
    """True when stdout is a pipe whose reader has exited (Linux reports POLLERR to the writer);
    without this an idle consumer would learn it only from the EPIPE of its next record."""
    import select

    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # not a real file (tests), or closed
        return False


def _topic_deleted(consumer: Any, topic: str) -> bool:
    """True when the brokers say `topic` no longer exists (it existed when consume started).

    A fetch of a deleted topic's partition fails as retriable, so the consumer only refreshes
    its metadata and polls on: `semel consume` used to sit out --timeout-ms (or forever) and
    exit 0. The metadata's "unknown topic" is confirmed by asking again for up to
    UNKNOWN_TOPIC_WAIT_MS, so one lagging broker's answer does not end a consume."""
    from semel.client.errors import UnknownTopicOrPartitionError
    from semel.v1 import common_pb2

    if consumer.cluster.topic_errors.get(topic) != common_pb2.UNKNOWN_TOPIC_OR_PARTITION:
        return False
    try:
        consumer.partitions_for(topic, timeout_ms=2 * UNKNOWN_TOPIC_WAIT_MS, unknown_topic_wait_ms=UNKNOWN_TOPIC_WAIT_MS)
    except UnknownTopicOrPartitionError:
        return True
    return False


def _print_records(consumer: Any, args: argparse.Namespace, printed: dict[tuple[str, int], int] | None = None,
                   commit: Callable[[], None] | None = None) -> None:
    """The read loop of `semel consume`: until --max-messages records or --timeout-ms without one."""
    import time

    out = sys.stdout.buffer
    sep = args.key_separator.encode()
    seen = 0
    last_record = last_commit = time.monotonic()
    while args.max_messages is None or seen < args.max_messages:
        wait_ms = 500 if args.timeout_ms is None else max(
            1, min(500, int(args.timeout_ms - (time.monotonic() - last_record) * 1000))
        )
        records = consumer.poll(wait_ms)
        taken = len(records)
        for i, record in enumerate(records):
            if args.print_offset:
                out.write(b"%d:%d\t" % (record.partition, record.offset))
            if args.print_key:
                out.write((record.key or b"") + sep)
            out.write(record.value + b"\n")
            if printed is not None:
                printed[(record.topic, record.partition)] = record.offset + 1
            seen += 1
            if args.max_messages is not None and seen >= args.max_messages:
                taken = i + 1
                break
        if printed is not None:
            # Where all this poll returned was printed, commit the position: it also skips markers
            # (with offset + 1 the lag of a transactional topic would never reach 0).
            cut = {(r.topic, r.partition) for r in records[taken:]}
            printed.update({tp: pos for tp, pos in consumer.positions().items() if tp not in cut})
        if records:
            out.flush()
            last_record = time.monotonic()
        elif _topic_deleted(consumer, args.topic):
            out.flush()
            from semel.client.errors import UnknownTopicOrPartitionError

            raise UnknownTopicOrPartitionError(
                f"topic {args.topic!r} was deleted while consuming ({seen} records printed)"
            )
        elif args.timeout_ms is not None and (time.monotonic() - last_record) * 1000 >= args.timeout_ms:
            break
        elif _reader_gone(out):  # `semel consume T | head -3`: exit when head does, not at the next record
            break
        if commit is not None and time.monotonic() - last_commit >= 1.0:
            commit()
            last_commit = time.monotonic()
    out.flush()

