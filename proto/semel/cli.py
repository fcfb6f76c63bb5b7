"""The `semel` command line: a thin dispatcher.

Each concern registers its own subcommands (`add_commands(subparsers)`) in its own
folder, so this file only lists which modules contribute commands. Modules are
imported lazily enough that `semel --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `add_commands(subparsers: argparse._SubParsersAction) -> None`.
# A module listed here that does not exist yet is skipped, so each concern can land
# its commands independently.
COMMAND_MODULES = (
    "semel.cluster.commands",
    "semel.cluster.txn_commands",
    "semel.coordinator.commands",
    "semel.chaos.commands",
    "semel.bench",
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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add_commands(sub)
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
