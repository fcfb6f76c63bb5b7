"""The folders' imports form the DAG drawn in docs/design.md ("Layout and import names")."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# folder -> layer; longest prefix wins
FOLDERS = {
    "proto/semel": "root",
    "storage": "storage",
    "coordinator": "coordinator",
    "cluster/metadata": "metadata",
    "cluster/broker": "broker",
    "cluster/kafka": "broker",  # the Kafka-protocol listener is part of the broker process
    "cluster/client": "client",
    "cluster/tooling": "tooling",
    "cluster/cli": "cli",
    "chaos": "chaos",
    "chaos/sim": "sim",  # the deterministic simulation drives the broker's and controller's pure cores
}
# import-name prefix -> layer; longest prefix wins
MODULES = {
    "semel": "root",
    "semel.storage": "storage",
    "semel.coordinator": "coordinator",
    "semel.cluster.metadata": "metadata",
    "semel.cluster.broker": "broker",
    "semel.cluster.kafka": "broker",
    "semel.client": "client",
    "semel.cluster.tooling": "tooling",
    "semel.cli": "cli",
    "semel.chaos": "chaos",
    "semel.chaos.sim": "sim",
}
ALLOWED = {
    "root": set(),
    "storage": {"root"},
    "coordinator": {"storage", "root"},
    "metadata": {"root"},
    "broker": {"coordinator", "metadata", "storage", "root"},
    "client": {"storage", "root"},
    "tooling": {"client", "storage", "root"},
    "cli": {"tooling", "client", "storage", "root"},
    "chaos": {"sim", "tooling", "client", "storage", "root"},
    "sim": {"broker", "coordinator", "metadata", "storage", "root"},
}


def _layer(name: str, table: dict[str, str], sep: str) -> str | None:
    best = None
    for prefix in table:
        if (name == prefix or name.startswith(prefix + sep)) and (best is None or len(prefix) > len(best)):
            best = prefix
    return table[best] if best is not None else None


def _imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_every_folder_imports_only_the_layers_below_it():
    bad = []
    files = 0
    for path in sorted(ROOT.glob("**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        layer = _layer(rel.rsplit("/", 1)[0], FOLDERS, "/")
        if layer is None or rel.startswith((".venv/", "tests/", "docs/")):
            continue
        files += 1
        for module in _imports(path):
            target = _layer(module, MODULES, ".")
            if target is not None and target != layer and target not in ALLOWED[layer]:
                bad.append(f"{rel} ({layer}) imports {module} ({target})")
    assert files > 100
    assert not sorted(set(bad)), "\n".join(sorted(set(bad)))


def test_the_allowed_layers_have_no_cycle():
    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, f"cycle: {' -> '.join(path + (layer,))}"
        for below in ALLOWED[layer]:
            visit(below, path + (layer,))

    for layer in ALLOWED:
        visit(layer, ())


def test_only_the_broker_process_wiring_imports_the_kafka_listener():
    """semel.cluster.kafka sits on top of the broker's parts; only process.py starts it."""
    importers = []
    for path in sorted(ROOT.glob("**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv/", "tests/", "docs/", "cluster/kafka/")):
            continue
        if any(m == "semel.cluster.kafka" or m.startswith("semel.cluster.kafka.") for m in _imports(path)):
            importers.append(rel)
    assert importers == ["cluster/broker/process.py"]
