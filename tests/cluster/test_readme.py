"""The README's quickstart, run as a new user would: its shell block, its Kafka-client snippet
and its Python-client snippet, against a real cluster, each snippet twice (a rerun must not fail
because the topic exists: it did, with a traceback)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def _block_with(language: str, needle: str) -> str:
    found = [b for b in _blocks(language) if needle in b]
    assert len(found) == 1, f"README: one ```{language} block with {needle!r}"
    return found[0]


def _aimed(code: str, cluster) -> str:
    """The snippet with the README's ports replaced by the test cluster's."""
    return (code.replace("127.0.0.1:9092", cluster.bootstrap.split(",")[0])
                .replace("127.0.0.1:9192", cluster.kafka_bootstrap.split(",")[0]))


def _run(argv: list[str], code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run([*argv, code], capture_output=True, env=env, timeout=180)


@pytest.mark.slow
def test_readme_quickstart_commands_and_snippets_run_twice(kafka_cluster) -> None:
    shell = _block_with("sh", "semel topic create demo")
    shell = "\n".join(line for line in shell.splitlines() if "activate" not in line)  # PATH has the venv's bin
    done = _run(["bash", "-e", "-c"], _aimed(shell, kafka_cluster))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"k1\thello" in done.stdout and b"healthy" in done.stdout

    kafka = _aimed(_block_with("python", "confluent_kafka"), kafka_cluster)
    client = _aimed(_block_with("python", "from semel.client import"), kafka_cluster)
    for run in (1, 2):
        for name, code in (("Kafka", kafka), ("Python client", client)):
            out = _run([sys.executable, "-c"], code)
            assert out.returncode == 0, f"{name} snippet, run {run}:\n{out.stderr.decode()}"
            assert b"Traceback" not in out.stderr
    assert b"hello over Kafka" in _run([sys.executable, "-c"], kafka).stdout
    assert b"b'user-1' b'hello'" in out.stdout  # the client snippet's consumer read what it produced
