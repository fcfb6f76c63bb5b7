"""Cluster management on the command line (issue 18; deploy/README.md, "Cluster management"):

  semel topic add-partitions TOPIC --count N        (N = the new total; never shrinks)
  semel topic describe-config TOPIC [--json]
  semel topic alter-config TOPIC --set KEY=VALUE ... --delete KEY ...   (Semel's or Kafka's key names)
  semel partition reassign TOPIC PARTITION --replicas 2,3 [--no-wait]
  semel cluster decommission BROKER_ID [--no-wait]
  semel leader elect [TOPIC ...]

The long ones (reassign, decommission) wait until every move is complete, showing progress on
stderr when it is a terminal, and exit 1 if a move cannot start or does not finish within
--wait-timeout-s. The subcommands join the `topic` and `cluster` parsers of
`semel.cli.commands` (registered before this module) and add `partition` and `leader`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from semel.cli.commands import _admin, _admin_args, _operational, format_table

POLL_INTERVAL_S = 0.5
WAIT_TIMEOUT_S_DEFAULT = 600.0


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_topic_ops(_subparsers(sub.choices["topic"]))
    _add_cluster_ops(_subparsers(sub.choices["cluster"]))
    _add_partition(sub)
    _add_leader(sub)


# --- semel topic add-partitions / describe-config / alter-config -----------------------------
def _add_topic_ops(tsub: Any) -> None:
    add = tsub.add_parser("add-partitions", help="grow a topic to N partitions in total",
                          description="Grow TOPIC to --count partitions in total. Partitions are never removed "
                          "(keys would map elsewhere), so a count not above the current one is refused.")
    add.add_argument("name", metavar="TOPIC")
    add.add_argument("--count", type=int, required=True, help="the new total number of partitions")
    _admin_args(add)
    add.set_defaults(func=_operational(_add_partitions))

    desc = tsub.add_parser("describe-config", help="a topic's configuration (Semel and Kafka key names)")
    desc.add_argument("name", metavar="TOPIC")
    desc.add_argument("--json", action="store_true", help="one JSON object: {key: value}")
    _admin_args(desc)
    desc.set_defaults(func=_operational(_describe_config))

    alter = tsub.add_parser(
        "alter-config", help="change a topic's configuration (applied live by the brokers)",
        description="Set or reset topic config keys. Keys take Semel's names (retention_ms) or Kafka's "
        "(retention.ms): min_insync_replicas, unclean_leader_election, retention_ms, retention_bytes, "
        "segment_bytes, segment_ms. Brokers apply retention and min ISR changes at once.")
    alter.add_argument("name", metavar="TOPIC")
    alter.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a key (repeatable)")
    alter.add_argument("--delete", action="append", default=[], metavar="KEY",
                       help="return a key to its default (repeatable)")
    alter.add_argument("--dry-run", action="store_true", help="validate only")
    _admin_args(alter)
    alter.set_defaults(func=_operational(_alter_config))


def _add_partitions(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        admin.create_partitions(args.name, args.count)
    print(f"topic {args.name} now has {args.count} partitions")
    return 0


def _describe_config(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        entries = admin.describe_topic_config(args.name)
    if args.json:
        print(json.dumps({e.name: e.value for e in entries}, sort_keys=True))
        return 0
    print(format_table(["KEY", "KAFKA_NAME", "VALUE", "SOURCE"],
                       [[e.name, e.kafka_name, e.value, "default" if e.is_default else "topic"] for e in entries]))
    return 0


def _alter_config(args: argparse.Namespace) -> int:
    from semel.client.errors import ConfigError

    if not args.set and not args.delete:
        raise ConfigError("nothing to change: give --set KEY=VALUE and/or --delete KEY")
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        changes[key.strip()] = value.strip()
    with _admin(args) as admin:
        admin.alter_topic_config(args.name, changes, [k.strip() for k in args.delete], validate_only=args.dry_run)
    what = ", ".join([*(f"{k}={v}" for k, v in changes.items()), *(f"{k} reset" for k in args.delete)])
    print(f"{'valid' if args.dry_run else 'altered'} config of {args.name}: {what}")
    return 0


# --- semel partition reassign / semel cluster decommission ------------------------------------
def _wait_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true", help="start the moves and return")
    parser.add_argument("--wait-timeout-s", type=float, default=WAIT_TIMEOUT_S_DEFAULT,
                        help=f"give up waiting for the moves after this long (default {WAIT_TIMEOUT_S_DEFAULT:g})")


def _add_partition(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("partition", help="move partition replicas between brokers")
    psub = p.add_subparsers(dest="partition_command", metavar="SUBCOMMAND")
    re = psub.add_parser(
        "reassign", help="move a partition to a new replica set (throttled; waits until done)",
        description="Move TOPIC's PARTITION to --replicas (first = preferred leader), through the metadata "
        "quorum: the new replicas join, catch up (at most --reassignment-throttle-bytes-per-s of each "
        "leader broker), enter the ISR, then the old ones are dropped. Waits with progress; exit 1 on failure.")
    re.add_argument("topic", metavar="TOPIC")
    re.add_argument("partition", metavar="PARTITION", type=int)
    re.add_argument("--replicas", required=True, metavar="ID,ID,...", help="the new replica list, e.g. 2,3")
    _wait_args(re)
    _admin_args(re)
    re.set_defaults(func=_operational(_reassign))
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _add_cluster_ops(csub: Any) -> None:
    d = csub.add_parser(
        "decommission", help="move every replica off a broker (waits until done)",
        description="Drain BROKER_ID: every partition replica on it moves to the live broker with the fewest "
        "replicas, by reassignment (throttled). Waits with progress; exit 1 on failure. Stop the broker "
        "afterwards; nothing new is placed on it only while it is down.")
    d.add_argument("broker_id", metavar="BROKER_ID", type=int)
    _wait_args(d)
    _admin_args(d)
    d.set_defaults(func=_operational(_decommission))


def _reassign(args: argparse.Namespace) -> int:
    from semel.client.errors import ConfigError

    try:
        replicas = [int(x) for x in args.replicas.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--replicas expects broker ids like 2,3, got {args.replicas!r}") from None
    with _admin(args) as admin:
        changes = admin.reassign_partitions({(args.topic, args.partition): replicas})
        return _follow(admin, changes, args, f"reassigning {args.topic}-{args.partition} to {replicas}")


def _decommission(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        changes = admin.decommission_broker(args.broker_id)
        if not changes:
            print(f"broker {args.broker_id} holds no replicas")
            return 0
        return _follow(admin, changes, args, f"decommissioning broker {args.broker_id}: {len(changes)} replica(s)")


def _follow(admin: Any, changes: Sequence[Any], args: argparse.Namespace, title: str) -> int:
    failed = [c for c in changes if not c.ok]
    for c in failed:
        print(f"semel {args.command}: {c.topic}-{c.partition}: {c.error_message}", file=sys.stderr)
    started = {(c.topic, c.partition): c.replicas for c in changes if c.ok}
    print(title, file=sys.stderr)
    if args.no_wait or not started:
        for (t, p), replicas in sorted(started.items()):
            print(f"started {t}-{p} -> {','.join(map(str, replicas))}")
        return 1 if failed else 0
    done = _wait_done(admin, started, args.wait_timeout_s, sys.stderr.isatty())
    for (t, p), replicas in sorted(started.items()):
        state = "done" if (t, p) in done else "NOT DONE"
        print(f"{t}-{p} -> {','.join(map(str, replicas))}: {state}")
    if len(done) < len(started):
        print(f"semel {args.command}: {len(started) - len(done)} move(s) not complete after "
              f"{args.wait_timeout_s:g} s (they continue in the background)", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _wait_done(admin: Any, started: dict[tuple[str, int], tuple[int, ...]], timeout_s: float,
               tty: bool) -> set[tuple[str, int]]:
    """Poll until every move's target is the replica set and none is under way; progress on a tty."""
    deadline = time.monotonic() + timeout_s
    topics = sorted({t for t, _ in started})
    done: set[tuple[str, int]] = set()
    t0 = time.monotonic()
    while True:
        try:
            described = admin.describe_topics(topics)
        except Exception:  # noqa: BLE001 - a broker restarting: try again at the next poll
            described = []
        for td in described:
            for p in td.partitions:
                key = (td.name, p.partition)
                if key in started and not p.target_replicas and tuple(p.replicas) == tuple(started[key]):
                    done.add(key)
        if tty:
            sys.stderr.write(f"\r  {len(done)}/{len(started)} moves complete ({time.monotonic() - t0:.0f} s)  ")
            sys.stderr.flush()
        if len(done) == len(started) or time.monotonic() >= deadline:
            if tty:
                sys.stderr.write("\n")
            return done
        time.sleep(POLL_INTERVAL_S)


# --- semel leader elect ---------------------------------------------------------------------
def _add_leader(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leader", help="partition leadership")
    lsub = p.add_subparsers(dest="leader_command", metavar="SUBCOMMAND")
    e = lsub.add_parser("elect", help="move leadership back to each partition's preferred (first) replica",
                        description="Elect the preferred leader (the first replica) of every partition of TOPIC "
                        "(default: all topics) where it is alive and in the ISR but not leading. "
                        "Exit 1 if an election failed.")
    e.add_argument("topics", nargs="*", metavar="TOPIC")
    _admin_args(e)
    e.set_defaults(func=_operational(_elect))
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _elect(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        changes = admin.elect_leaders(args.topics or None)
    if not changes:
        print("every partition is led by its preferred replica (or it is not in the ISR)")
        return 0
    for c in changes:
        outcome = f"leader {c.leader_id}" if c.ok else f"failed: {c.error_message}"
        print(f"{c.topic}-{c.partition}: {outcome}")
    return 1 if any(not c.ok for c in changes) else 0
