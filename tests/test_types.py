"""mypy passes on the whole `semel` package (pyproject.toml's [tool.mypy]; see tests/typecheck.py).

Run by `make test`; `make typecheck` runs the same check alone. mypy keeps its cache in
.mypy_cache, so a run after a small change only re-checks what the change touched.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import typecheck  # noqa: E402  (tests/ is not a package)

def test_the_module_table_covers_every_source_file():
    """Every .py of a listed package reaches mypy under its import name, none twice."""
    modules = typecheck.module_files(typecheck.tomllib.loads((ROOT / "pyproject.toml").read_text()))
    assert modules["semel.client"] == ROOT / "cluster/client/__init__.py"
    assert modules["semel.cluster.broker.server"] == ROOT / "cluster/broker/server.py"
    assert modules["semel.v1.common_pb2"] == ROOT / "proto/semel/v1/common_pb2.pyi"  # the stub, not the code
    assert not any(name.startswith(("semel.cluster.client", "semel.cluster.cli")) for name in modules)
    files = {p.with_suffix("") for p in modules.values()}
    assert len(files) == len(modules)
    for folder in ("proto/semel", "storage", "coordinator", "cluster", "chaos"):
        for path in (ROOT / folder).rglob("*.py"):
            assert path.with_suffix("") in files, f"{path.relative_to(ROOT)} is not type-checked"


def test_mypy_finds_no_error():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "typecheck.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"mypy:\n{done.stdout}{done.stderr}"
    assert "Success: 0 error(s)" in done.stdout, done.stdout
