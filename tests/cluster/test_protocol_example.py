"""docs/examples/raw_transaction.py, the raw-gRPC walk-through of docs/protocol.md, runs as a
user would run it against a real cluster: it must keep working as the API evolves."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples" / "raw_transaction.py"


def test_the_raw_grpc_transaction_example_runs_clean(shared_cluster):
    run = subprocess.run([sys.executable, str(EXAMPLE), "--bootstrap", shared_cluster.bootstrap.split(",")[0]],
                         capture_output=True, timeout=120)
    out = run.stdout.decode()
    assert run.returncode == 0, out + run.stderr.decode()
    assert "transaction 1 committed" in out and "transaction 2 aborted" in out
    assert "read_committed sees transaction 1 only" in out
    assert "PRODUCER_FENCED" in out and out.rstrip().endswith("ok")
