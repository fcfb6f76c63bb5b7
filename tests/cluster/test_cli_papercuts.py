"""The CLI papercuts a new user hit running the README (issue 18), each against a real cluster:
the `semel` command as a subprocess, real broker processes (`shared_cluster`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from semel.client import errors as client_errors
from semel.client.metadata import parse_bootstrap

SEMEL = [sys.executable, "-m", "semel.cli"]


def _cli(bootstrap: str, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEMEL_BOOTSTRAP=bootstrap)
    return subprocess.run([*SEMEL, *args], input=stdin, capture_output=True, env=env, timeout=timeout)


@pytest.mark.parametrize(("address", "says"), [
    ("http://127.0.0.1:9092", "drop http://"),
    ("grpc://broker-1:9092/", "drop grpc://"),
    ("::1:9092", "IPv6 address goes in brackets"),
    ("[zz]:9092", "not an IPv6 address"),
    ("127.0.0.1:http", "port must be a number"),
    ("127.0.0.1:0", "port must be a number"),
    ("my host:9092", "not a host name"),
    ("broker/1:9092", "not a host name"),
    ("127.0.0.1", "expected HOST:PORT"),
])
def test_malformed_bootstrap_addresses_are_refused_with_the_reason(address: str, says: str) -> None:
    with pytest.raises(client_errors.ConfigError) as info:
        parse_bootstrap(address)
    assert says in str(info.value)


def test_well_formed_bootstrap_addresses_pass() -> None:
    items = ["127.0.0.1:9092", "localhost:1", "broker-1.semel.svc.cluster.local:9092", "[::1]:9092", "kafka_1:9092"]
    assert parse_bootstrap(",".join(items)) == items


def test_cli_refuses_a_url_bootstrap_at_once(shared_cluster) -> None:
    # Before: gRPC tried to resolve "http://127.0.0.1" for 6 s and said "unknown host", exit 1.
    url = f"http://{shared_cluster.bootstrap.split(',')[0]}"
    out = _cli(url, "topic", "list")
    assert out.returncode == 2, out.stderr
    assert b"Traceback" not in out.stderr and b"drop http://" in out.stderr


@pytest.mark.parametrize("argv", [
    ["consume", "t", "--bogus"], ["topic", "create", "t", "--bogus"], ["cluster", "up", "--bogus"], ["produce", "t", "x"],
])
def test_an_unknown_argument_prints_the_usage_of_its_own_subcommand(argv: list[str]) -> None:
    out = subprocess.run([*SEMEL, *argv], capture_output=True, timeout=60)
    command = " ".join(a for a in argv[:2] if a not in ("t", "x") and not a.startswith("-"))
    assert out.returncode == 2
    assert out.stderr.decode().startswith(f"usage: semel {command} "), out.stderr
    assert f"semel {command}: error: unrecognized arguments: {argv[-1]}" in out.stderr.decode()
