"""Small checkpoint files written atomically: the log's recovery point and log start
offset, the leader-epoch cache, index files.

A checkpoint is replaced, never edited: write a temporary file, fsync it, rename it over
the old one, fsync the directory. A reader therefore sees either the old or the new
content, never a mix. Every file carries a CRC32C trailer so that a file damaged in any
other way (bit rot, an editor, a copy that stopped half way) is detected, not trusted.

Format of a checked file: `body` then the 4-byte big-endian CRC32C of `body`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import crc32c as _crc32c
from semel.fs import fsync_dir

__all__ = ["CorruptCheckpointError", "fsync_dir", "read_json", "seal", "unseal", "write_all", "write_atomic", "write_json"]

_CRC = struct.Struct(">I")


class CorruptCheckpointError(Exception):
    """A checked file exists but its CRC or content is wrong."""


def seal(body: bytes) -> bytes:
    """`body` followed by its CRC32C."""
    return body + _CRC.pack(_crc32c.crc32c(body))


def unseal(data: bytes) -> bytes:
    """The body of a sealed buffer; raises CorruptCheckpointError when the CRC does not match."""
    if len(data) < _CRC.size:
        raise CorruptCheckpointError(f"checked file too short: {len(data)} bytes")
    body = data[: -_CRC.size]
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if _crc32c.crc32c(body) != crc:
        raise CorruptCheckpointError("CRC mismatch")
    return body


def write_atomic(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    """Replace `path` with `data` (tmp + rename). With `sync`, durable once it returns."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsync_dir(path.parent)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is handed to the kernel (a regular file rarely writes short)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view) :]


def write_json(path: str | Path, value: Any, *, sync: bool = True) -> None:
    body = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    write_atomic(path, seal(body + b"\n"), sync=sync)


def read_json(path: str | Path) -> Any | None:
    """The value of a checked JSON file; None if the file does not exist."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(unseal(data))
    except ValueError as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON: {exc}") from exc
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f"{path}: {exc}") from exc
