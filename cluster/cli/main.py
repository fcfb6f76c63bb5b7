"""The `semel` command line: a thin dispatcher.

Each concern registers its own subcommands (`add_commands(subparsers)`) in its own
module, so this file only lists which modules contribute commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


if __name__ == "__main__":
    sys.exit(main())
