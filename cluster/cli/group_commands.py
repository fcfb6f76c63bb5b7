"""`semel group list | describe GROUP | reset-offsets GROUP | delete GROUP`.

Lag is measured against the last stable offset (what a read_committed consumer can reach),
not the high watermark, so it reaches 0 even with transaction markers or an open
transaction at the end of a partition. Operational errors print one line and exit 1.
(Registered through `semel.cli.group_commands` in `semel.cli.main.COMMAND_MODULES`.)
"""

from __future__ import annotations

import argparse
import sys

from semel.cli.commands import _bootstrap_arg, _operational


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("group", help="consumer groups: list, describe, reset offsets, delete")
    gsub = group.add_subparsers(dest="group_command", required=True)

    p = gsub.add_parser("list", help="every group of the cluster")
    _bootstrap_arg(p)
    p.add_argument("--state", action="append", default=[], choices=["empty", "reconciling", "stable"],
                   help="only groups in this state (repeatable)")
    p.set_defaults(func=_operational(_list))

    p = gsub.add_parser("describe", help="members, assignments, committed offsets and lag (vs the LSO)")
    _bootstrap_arg(p)
    p.add_argument("group")
    p.add_argument("--members", action="store_true", help="also list the members and their partitions")
    p.set_defaults(func=_operational(_describe))

    p = gsub.add_parser("reset-offsets", help="set the committed offsets of a group without members")
    _bootstrap_arg(p)
    p.add_argument("group")
    p.add_argument("--topic", action="append", required=True, metavar="TOPIC[:P,P...]",
                   help="a topic (every partition) or some of its partitions; repeatable")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--to-earliest", action="store_true")
    how.add_argument("--to-latest", action="store_true", help="the last stable offset")
    how.add_argument("--to-offset", type=int)
    how.add_argument("--to-datetime-ms", type=int, metavar="MS", help="first offset with a timestamp >= MS")
    how.add_argument("--shift-by", type=int)
    p.add_argument("--dry-run", action="store_true", help="show the new offsets, write nothing")
    p.set_defaults(func=_operational(_reset))

    p = gsub.add_parser("delete", help="delete a group without members, with its committed offsets")
    _bootstrap_arg(p)
    p.add_argument("group")
    p.set_defaults(func=_operational(_delete))


def _admin(args: argparse.Namespace):  # noqa: ANN202
    from semel.client.group import GroupAdmin

    return GroupAdmin(args.bootstrap)


def _table(rows: list[list[object]], header: list[str]) -> None:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        groups = admin.list_groups(args.state)
    _table([[g.group_id, g.state, g.member_count, g.coordinator_partition] for g in groups],
           ["GROUP", "STATE", "MEMBERS", "COORDINATOR-PARTITION"])
    return 0


def _parts(parts: tuple[tuple[str, int], ...]) -> str:
    by_topic: dict[str, list[int]] = {}
    for t, p in parts:
        by_topic.setdefault(t, []).append(p)
    return " ".join(f"{t}:{','.join(map(str, ps))}" for t, ps in sorted(by_topic.items())) or "-"


def _describe(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        g = admin.describe_group(args.group, include_offsets=True)
    print(f"group {g.group_id}: {g.state}, {len(g.members)} members, group epoch {g.group_epoch}, "
          f"assignment epoch {g.assignment_epoch}")
    owner = {tp: m.member_id for m in g.members for tp in m.assignment}
    rows = [[o.topic, o.partition, o.committed_offset if o.committed_offset >= 0 else "-",
             o.last_stable_offset if o.last_stable_offset >= 0 else "?", o.lag if o.lag >= 0 else "?",
             "yes" if o.pending_transactional else "", owner.get((o.topic, o.partition), "-")]
            for o in g.offsets]
    _table(rows, ["TOPIC", "PARTITION", "COMMITTED", "LSO", "LAG", "TXN-PENDING", "MEMBER"])
    if args.members:
        print()
        _table([[m.member_id, m.client_id or "-", m.member_epoch, m.state, _parts(m.assignment),
                 _parts(m.pending_revocation)] for m in g.members],
               ["MEMBER", "CLIENT", "EPOCH", "STATE", "ASSIGNED", "REVOKING"])
    return 0


def _reset(args: argparse.Namespace) -> int:
    if args.to_earliest:
        strategy, value = "earliest", 0
    elif args.to_latest:
        strategy, value = "latest", 0
    elif args.to_offset is not None:
        strategy, value = "offset", args.to_offset
    elif args.to_datetime_ms is not None:
        strategy, value = "timestamp", args.to_datetime_ms
    else:
        strategy, value = "shift", args.shift_by
    with _admin(args) as admin:
        partitions: list[tuple[str, int]] = []
        for spec in args.topic:
            topic, _, plist = spec.partition(":")
            if plist:
                partitions += [(topic, int(p)) for p in plist.split(",") if p.strip()]
            else:
                partitions += admin.topic_partitions(topic)
        results = admin.reset_offsets(args.group, partitions, strategy, value, dry_run=args.dry_run)
    _table([[r.topic, r.partition, r.previous_offset if r.previous_offset >= 0 else "-", r.new_offset, r.error or ""]
            for r in results], ["TOPIC", "PARTITION", "PREVIOUS", "NEW", "ERROR"])
    if args.dry_run:
        print("(dry run: nothing written)")
    return 1 if any(r.error for r in results) else 0


def _delete(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        admin.delete_group(args.group)
    print(f"deleted group {args.group}", file=sys.stderr)
    return 0
