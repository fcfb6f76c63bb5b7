"""The `semel` command line: a thin dispatcher.

Each concern registers its own subcommands (`add_commands(subparsers)`) in its own
module, so this file only lists which modules contribute commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from semel.cli.security_args import add_to_every_cluster_command, export_security_flags

# Modules that define `add_commands(subparsers: argparse._SubParsersAction) -> None`.
COMMAND_MODULES = (
    "semel.cli.commands",
    "semel.cli.txn_commands",
    "semel.cli.group_commands",
    "semel.chaos.commands",
    "semel.cli.bench_commands",
    "semel.cli.log_commands",
    "semel.cli.ops_commands",  # after semel.cli.commands: it adds to the `topic` and `cluster` parsers
    "semel.cli.security_args",
    "semel.cli.acl_commands",
)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command reports its own unknown arguments with its own usage line.

    argparse hands a subcommand's leftover arguments back to the top-level parser, which
    then printed `usage: semel [-h] COMMAND ...` for `semel consume t --bogus`. Subparsers
    inherit this class (add_subparsers uses the parent's type), so the innermost command that
    parsed the line is the one that complains."""

    # typeshed types parse_known_args as overloads on the namespace; this one keeps argparse's behaviour
    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="semel",
        description="Semel: a replicated event log with exactly-once semantics.",
        epilog="Run `semel COMMAND --help` for the options of one command. "
        "Most commands take --bootstrap HOST:PORT (or the SEMEL_BOOTSTRAP environment variable).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    add_to_every_cluster_command(parser)  # --tls-ca, --tls-cert, --tls-key, --user, --password-file
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        export_security_flags(args)
    except OSError as exc:
        print(f"semel: cannot read the password file: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `semel ... | head`: the reader has gone; stop quietly as Unix tools do, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
