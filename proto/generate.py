"""Regenerate the Python code for every .proto file under proto/ (run: `make proto`).

The generated files are committed, so installing Semel never needs protoc; the test
tests/proto/test_generated_fresh.py fails when they differ from what this produces.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

PROTO_ROOT = pathlib.Path(__file__).resolve().parent


def proto_files() -> list[pathlib.Path]:
    return sorted(PROTO_ROOT.glob("semel/**/*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # test extra: grpcio-tools

    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_names() -> list[str]:
    names = []
    for p in proto_files():
        rel = p.relative_to(PROTO_ROOT).with_suffix("")
        names += [f"{rel}_pb2.py", f"{rel}_pb2.pyi", f"{rel}_pb2_grpc.py"]
    return names


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        for name in generated_names():
            src = pathlib.Path(tmp) / name
            (PROTO_ROOT / name).write_bytes(src.read_bytes())
            print(f"wrote proto/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
