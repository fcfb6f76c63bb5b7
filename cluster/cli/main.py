"""The `semel` command line: a thin dispatcher.

Each concern registers its own subcommands (`add_commands(subparsers)`) in its own
module, so this file only lists which modules contribute commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `add_commands(subparsers: argparse._SubParsersAction) -> None`.
COMMAND_MODULES = (
    "semel.cli.commands",
    "semel.cli.txn_commands",
    "semel.cli.group_commands",
    "semel.chaos.commands",
    "semel.cli.bench_commands",
    "semel.cli.log_commands",
    "semel.cli.ops_commands",  # after semel.cli.commands: it adds to the `topic` and `cluster` parsers
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
