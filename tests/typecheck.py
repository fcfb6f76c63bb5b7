"""Run mypy over the `semel` package under its real import names.

The repository is laid out by concern and pyproject.toml's `[tool.setuptools] package-dir`
maps the folders onto one `semel` package (cluster/client is `semel.client`, storage/ is
`semel.storage`, ...). The editable install resolves those names with an import hook that
mypy cannot see, and mypy derives a module's name from its path, so a plain `mypy storage`
would check `storage.log` (not `semel.storage.log`) and find no `semel.client` at all.

This script reads the same package-dir/packages tables setuptools uses, hands mypy one
explicit (file, module name) source per module, and runs mypy with the `[tool.mypy]`
configuration of pyproject.toml (strict sections for the pure cores, default elsewhere).
Every `semel.*` import is then resolved to the repository file it names or reported as
missing; nothing is skipped silently (`--report-modules` prints the mapping). A generated
`*_pb2.py` is replaced by its committed `.pyi` stub, as an import of it would be.

    python tests/typecheck.py                   # exit status 1 and mypy's messages on errors
    python tests/typecheck.py --report-modules  # the module -> file table mypy checks
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def package_dirs(pyproject: dict) -> dict[str, pathlib.Path]:
    """Each listed package -> its folder, as setuptools maps it (longest package-dir prefix)."""
    setuptools = pyproject["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    result = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapping:
                result[package] = ROOT / mapping[prefix] / pathlib.Path(*parts[cut:])
                break
        else:
            raise SystemExit(f"package {package} has no package-dir entry")
    return result


def module_files(pyproject: dict) -> dict[str, pathlib.Path]:
    """Every module of the distribution -> the file mypy should read (a .pyi stub if present)."""
    modules: dict[str, pathlib.Path] = {}
    for package, folder in package_dirs(pyproject).items():
        if not (folder / "__init__.py").is_file():
            raise SystemExit(f"package {package}: {folder}/__init__.py is missing")
        for path in sorted(folder.glob("*.py")):
            stub = path.with_suffix(".pyi")
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = stub if stub.is_file() else path
    return modules


def main(argv: list[str]) -> int:
    from mypy import build
    from mypy.errors import CompileError
    from mypy.main import process_options
    from mypy.modulefinder import BuildSource

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = module_files(pyproject)
    if "--report-modules" in argv:
        for name, path in sorted(modules.items()):
            print(f"{name:55} {path.relative_to(ROOT)}")
        return 0
    # The command line only names the config; the sources are ours, with their real names.
    _, options = process_options(
        ["--config-file", str(ROOT / "pyproject.toml"), *argv, "-c", "pass"]
    )
    os.chdir(ROOT)  # messages name files relative to the repository
    sources = [BuildSource(str(path.relative_to(ROOT)), name) for name, path in sorted(modules.items())]
    started = time.monotonic()
    try:
        result = build.build(sources, options)
        messages = result.errors
    except CompileError as e:
        messages = e.messages
    elapsed_s = time.monotonic() - started
    for line in messages:
        print(line)
    errors = sum(1 for line in messages if ": error:" in line)
    print(
        f"{'Found' if errors else 'Success:'} {errors} error(s) in {len(sources)} modules"
        f" ({elapsed_s:.1f} s)"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
