"""`semel acl add|list|remove`: Kafka-style ACLs in the metadata quorum (deploy/README.md, "ACLs").

    semel acl add --allow User:alice --operation write --topic orders
    semel acl add --deny User:* --operation all --topic tmp- --prefixed --host 10.0.0.9
    semel acl list [--principal User:alice] [--topic orders]
    semel acl remove --principal User:alice --topic orders
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

OPERATIONS = ("read", "write", "create", "delete", "alter", "describe", "cluster_action", "describe_configs",
              "alter_configs", "idempotent_write", "all")


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("acl", help="ACLs: who may do what on which topic, group, transactional id or the "
                            "cluster (enforced by brokers run with --authorizer on)")
    asub = parser.add_subparsers(dest="acl_command", required=True)
    add = asub.add_parser("add", help="add ALLOW or DENY bindings (one per --operation)")
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--allow", metavar="PRINCIPAL", help="User:NAME or User:* (everyone)")
    who.add_argument("--deny", metavar="PRINCIPAL", help="User:NAME or User:* (everyone)")
    add.add_argument("--operation", action="append", required=True, type=str.lower, choices=OPERATIONS,
                     help="repeat for several")
    _resource_args(add, required=True)
    add.add_argument("--host", default="*", help="the client IP the binding applies to (default *: any)")
    add.set_defaults(func=_cmd_add)
    for name, func, helptext in (("list", _cmd_list, "list the bindings matching the filters (none: all)"),
                                 ("remove", _cmd_remove, "remove every binding matching the filters")):
        p = asub.add_parser(name, help=helptext)
        p.add_argument("--principal", default="", help="User:NAME")
        p.add_argument("--operation", default="", type=str.lower, choices=("", *OPERATIONS))
        p.add_argument("--permission", default="", type=str.lower, choices=("", "allow", "deny"))
        p.add_argument("--host", default="")
        _resource_args(p, required=False)
        p.set_defaults(func=func)


def _resource_args(p: argparse.ArgumentParser, required: bool) -> None:
    res = p.add_mutually_exclusive_group(required=required)
    res.add_argument("--topic", help="a topic name (or * for every topic; with --prefixed a prefix)")
    res.add_argument("--group", help="a consumer group id")
    res.add_argument("--transactional-id", help="a transactional id")
    res.add_argument("--cluster", action="store_true", help="the cluster (create topics, admin operations)")
    p.add_argument("--prefixed", action="store_true", help="the name is a prefix (PREFIXED pattern)")
    p.add_argument("--bootstrap", "-b", default=None, help="broker address(es) (default: $SEMEL_BOOTSTRAP)")


def _resource(args: argparse.Namespace) -> tuple[str, str]:
    if args.cluster:
        return "CLUSTER", "kafka-cluster"
    for flag, rtype in (("topic", "TOPIC"), ("group", "GROUP"), ("transactional_id", "TRANSACTIONAL_ID")):
        value = getattr(args, flag)
        if value is not None:
            return rtype, value
    return "", ""


def _run(args: argparse.Namespace, op: Any) -> int:
    from semel.client import Admin
    from semel.client.errors import ConfigError, SemelError

    try:
        with Admin(args.bootstrap, request_timeout_ms=10_000) as admin:
            return int(op(admin) or 0)
    except ConfigError as exc:
        print(f"semel acl: {exc}", file=sys.stderr)
        return 2
    except SemelError as exc:
        print(f"semel acl: error: {exc}", file=sys.stderr)
        return 1


def _show(a: Any) -> str:
    pattern = a.pattern_type.lower()
    return (f"{a.principal}\t{a.permission}\t{a.operation}\t{a.resource_type}\t{a.resource_name}\t{pattern}"
            f"\thost={a.host}")


def _cmd_add(args: argparse.Namespace) -> int:
    from semel.client import Acl

    rtype, name = _resource(args)
    principal, permission = (args.allow, "ALLOW") if args.allow else (args.deny, "DENY")
    acls = [Acl(principal, args.host, op.upper(), permission, rtype, name, "PREFIXED" if args.prefixed else "LITERAL")
            for op in dict.fromkeys(args.operation)]

    def op(admin: Any) -> int:
        admin.create_acls(acls)
        for a in acls:
            print(f"added {_show(a)}")
        return 0
    return _run(args, op)


def _filter(args: argparse.Namespace) -> Any:
    from semel.client import Acl

    rtype, name = _resource(args)
    pattern = "PREFIXED" if args.prefixed else ("LITERAL" if name else "")
    return Acl(args.principal, args.host, args.operation.upper(), args.permission.upper(), rtype, name, pattern)


def _cmd_list(args: argparse.Namespace) -> int:
    def op(admin: Any) -> int:
        for a in admin.describe_acls(_filter(args)):
            print(_show(a))
        return 0
    return _run(args, op)


def _cmd_remove(args: argparse.Namespace) -> int:
    f = _filter(args)
    if f == type(f)():
        print("semel acl remove: give at least one filter (--principal, --topic, ...); nothing removed",
              file=sys.stderr)
        return 2

    def op(admin: Any) -> int:
        print(f"removed {admin.delete_acls([f])} ACL(s)")
        return 0
    return _run(args, op)
