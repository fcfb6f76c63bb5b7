"""Kafka's zigzag varints, without importing kio's type machinery.

`kio.serial.readers` pulls in `kio.serial`, whose package import loads `kio.static.primitive`,
which registers hypothesis strategies at import time: about 1.8 s on every `semel` command,
although the storage layer only needs a reader and a writer. The readers are kio's native
(Rust) functions, imported from the extension module directly (`kio.serial.readers`
re-exports exactly these objects; tests/storage/test_varint.py checks that, so a kio upgrade
that moves them fails loudly). The writer, `encode_zigzag`, gives byte for byte what kio's
writers give (same test), from a table of the small varints.
"""

from __future__ import annotations

from kio._kio_native import read_signed_varint, read_signed_varlong

__all__ = ("SMALL_VARINTS", "VARINT_TABLE", "encode_varint", "encode_zigzag", "read_signed_varint",
           "read_signed_varlong")

# Encoded varints of 0 .. 2**14-1 (one or two bytes: every length, count and small delta), built
# once: the per-record encoders (protobuf's in semel.client.records, Kafka's in
# semel.storage.kafka_records) look them up instead of looping.
_SMALL_VARINTS = 1 << 14


def _encode_varint_slow(value: int) -> bytes:
    # Negative int32/int64 values are encoded as 10-byte two's complement (protobuf rules).
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINT_TABLE = tuple(_encode_varint_slow(i) for i in range(_SMALL_VARINTS))
# for a per-record encoder that indexes the table inline: VARINT_TABLE[v] for 0 <= v < SMALL_VARINTS
SMALL_VARINTS = _SMALL_VARINTS
VARINT_TABLE = _VARINT_TABLE


def encode_varint(value: int) -> bytes:
    """Protobuf's unsigned varint (a negative value as its 64-bit two's complement)."""
    if 0 <= value < _SMALL_VARINTS:
        return _VARINT_TABLE[value]
    return _encode_varint_slow(value)


def encode_zigzag(value: int) -> bytes:
    """Kafka's signed varint/varlong: the same bytes as `write_signed_varlong` for 64-bit values."""
    return encode_varint((value << 1) if value >= 0 else ((-value) << 1) - 1)
