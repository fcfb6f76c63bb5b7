"""File-system primitives every layer needs (the root package: storage, the metadata journal and
the broker all import it)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: str | Path) -> None:
    """Make `directory`'s entries (creates, renames, unlinks) durable: fsync the directory."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
