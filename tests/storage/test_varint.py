"""semel.storage.varint must stay identical to kio's varint codecs it replaces on the import path."""

from __future__ import annotations

import io

import kio.serial.readers as kio_readers
import kio.serial.writers as kio_writers
import pytest

from semel.storage import varint

VARINT_VALUES = [0, 1, -1, 63, -64, 64, -65, 127, 128, 300, -300, 2**31 - 1, -(2**31)]
VARLONG_VALUES = VARINT_VALUES + [2**40 + 5, -(2**40) - 5, 2**63 - 1, -(2**63)]


def test_readers_are_kios_native_functions() -> None:
    # If a kio upgrade stops re-exporting these, the shortcut past kio.serial must be revisited.
    assert varint.read_signed_varint is kio_readers.read_signed_varint
    assert varint.read_signed_varlong is kio_readers.read_signed_varlong


@pytest.mark.parametrize("value", VARINT_VALUES)
def test_zigzag_matches_kios_varint_writer_and_round_trips(value: int) -> None:
    theirs = io.BytesIO()
    kio_writers.write_signed_varint(theirs, value)
    ours = varint.encode_zigzag(value)
    assert ours == theirs.getvalue()
    assert varint.read_signed_varint(ours + b"\x07", 0) == (value, len(ours))


@pytest.mark.parametrize("value", VARLONG_VALUES)
def test_zigzag_matches_kios_varlong_writer_and_round_trips(value: int) -> None:
    theirs = io.BytesIO()
    kio_writers.write_signed_varlong(theirs, value)
    ours = varint.encode_zigzag(value)
    assert ours == theirs.getvalue()
    assert varint.read_signed_varlong(ours, 0) == (value, len(ours))


def test_every_table_entry_is_the_loop_encoding() -> None:
    assert all(varint.encode_varint(v) == varint._encode_varint_slow(v) for v in range(1 << 15))
