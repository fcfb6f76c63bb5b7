"""Kafka's zigzag varints, without importing kio's type machinery.

`kio.serial.readers` pulls in `kio.serial`, whose package import loads `kio.static.primitive`,
which registers hypothesis strategies at import time: about 1.8 s on every `semel` command,
although the storage layer only needs four varint functions. The readers are kio's native
(Rust) functions, imported from the extension module directly (`kio.serial.readers`
re-exports exactly these objects; tests/storage/test_varint.py checks that, so a kio upgrade
that moves them fails loudly). The two writers are kio's few lines of zigzag encoding, kept
here byte-for-byte equal (same test).
"""

from __future__ import annotations

from typing import Protocol

from kio._kio_native import read_signed_varint, read_signed_varlong

__all__ = ("read_signed_varint", "read_signed_varlong", "write_signed_varint", "write_signed_varlong")


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _write_unsigned(out: _Writable, value: int) -> None:
    chunks = bytearray()
    while value & ~0x7F:
        chunks.append((value & 0x7F) | 0x80)
        value >>= 7
    chunks.append(value)
    out.write(bytes(chunks))


def write_signed_varint(out: _Writable, value: int) -> None:
    """Zigzag-encode a signed 32-bit value (Kafka's `varint`)."""
    _write_unsigned(out, (value << 1) ^ (value >> 31))


def write_signed_varlong(out: _Writable, value: int) -> None:
    """Zigzag-encode a signed 64-bit value (Kafka's `varlong`)."""
    _write_unsigned(out, (value << 1) ^ (value >> 63))
