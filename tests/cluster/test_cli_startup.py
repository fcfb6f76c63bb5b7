"""Every `semel` command builds the whole parser, so its import graph is paid on every call.

kio's type modules (kio.static, kio.serial, kio.schema) register hypothesis strategies at
import: ~1.8 s before `semel --help` printed anything. Only the Kafka listener needs them.
The storage layer takes its varints from `semel.storage.varint` (kio's native extension
module, ~1 ms) instead."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import semel.cli.main as main
main.build_parser()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('hypothesis', 'kio'))))
"""

# kio's package __init__ (version only) and its native extension hold no hypothesis hook.
ALLOWED_KIO = {"kio", "kio._version", "kio._kio_native"}


def test_cli_parser_imports_neither_hypothesis_nor_kio_codecs() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert not {m for m in loaded if m.split(".")[0] == "hypothesis"}, loaded
    assert loaded <= ALLOWED_KIO, sorted(loaded - ALLOWED_KIO)
