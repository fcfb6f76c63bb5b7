"""The CLI against in-process fake brokers (real gRPC, the CLI as a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

SEMEL = [sys.executable, "-m", "semel.cli"]


def _cli(bootstrap: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEMEL_BOOTSTRAP=bootstrap)
    return subprocess.run([*SEMEL, *args], input=stdin, capture_output=True, env=env, timeout=60)


def test_help_lists_commands_and_broker_help_is_the_brokers():
    top = subprocess.run([*SEMEL, "--help"], capture_output=True, timeout=30)
    for command in (b"broker", b"cluster", b"topic", b"produce", b"consume", b"bench"):
        assert command in top.stdout
    broker = subprocess.run([*SEMEL, "broker", "--help"], capture_output=True, timeout=30)
    assert broker.returncode == 0 and b"--broker-id" in broker.stdout


def test_topic_produce_consume_describe(fake_cluster):
    state, _brokers, bootstrap = fake_cluster
    assert _cli(bootstrap, "topic", "create", "t", "--partitions", "2").returncode == 0
    assert _cli(bootstrap, "topic", "list").stdout.decode().split() == ["t"]
    again = _cli(bootstrap, "topic", "create", "t", "--if-not-exists")
    assert again.returncode == 0 and b"already exists" in again.stdout
    lines = b"a=1\nb=2\nno key\n"
    assert _cli(bootstrap, "produce", "t", "--key-separator", "=", stdin=lines).returncode == 0
    records = [r for p in range(2) for r in state.records("t", p)]
    assert sorted((r.key, r.value) for r in records) == [(b"", b"no key"), (b"a", b"1"), (b"b", b"2")]
    out = _cli(bootstrap, "consume", "t", "--from-beginning", "--max-messages", "3", "--print-key",
               "--key-separator", "=")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.decode().splitlines()) == ["=no key", "a=1", "b=2"]
    described = _cli(bootstrap, "topic", "describe", "t").stdout.decode().splitlines()
    assert described[0].split() == ["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "ELR",
                                    "HIGH_WATERMARK", "LOG_START", "STATUS"]
    assert sum(int(line.split()[7]) for line in described[1:]) == 3
    timed = _cli(bootstrap, "consume", "t", "--timeout-ms", "300")  # from the end: nothing new, exits
    assert timed.returncode == 0 and timed.stdout == b""


def test_usage_and_operational_errors_are_readable(fake_cluster):
    _state, _brokers, bootstrap = fake_cluster
    missing = _cli(bootstrap, "topic", "describe", "nope")
    assert missing.returncode == 1 and b"Traceback" not in missing.stderr
    assert missing.stderr.decode().strip().startswith("semel topic: error: UNKNOWN_TOPIC_OR_PARTITION")
    _cli(bootstrap, "topic", "create", "two", "--partitions", "2")
    no_partition = _cli(bootstrap, "consume", "two", "--partition", "5", "--timeout-ms", "100")
    assert no_partition.returncode == 1 and b"no partition 5" in no_partition.stderr
    bad_config = _cli(bootstrap, "topic", "create", "x", "--config", "novalue")
    assert bad_config.returncode == 2 and b"KEY=VALUE" in bad_config.stderr
    no_bootstrap = subprocess.run([*SEMEL, "topic", "list"], capture_output=True, timeout=30,
                                  env={k: v for k, v in os.environ.items() if k != "SEMEL_BOOTSTRAP"})
    assert no_bootstrap.returncode == 2 and b"SEMEL_BOOTSTRAP" in no_bootstrap.stderr


def test_consume_of_a_corrupt_batch_prints_one_line_naming_partition_and_offset(fake_cluster):
    from tests.cluster.test_client_fake import _append_garbage_batch

    state, _brokers, bootstrap = fake_cluster
    assert _cli(bootstrap, "topic", "create", "c").returncode == 0
    assert _cli(bootstrap, "produce", "c", stdin=b"good\n").returncode == 0
    bad = _append_garbage_batch(state, "c", 0)
    out = _cli(bootstrap, "consume", "c", "--from-beginning", "--timeout-ms", "3000")
    assert out.returncode == 1 and out.stdout == b"good\n"
    assert b"Traceback" not in out.stderr and len(out.stderr.decode().strip().splitlines()) == 1
    assert f"c-0 at offset {bad}".encode() in out.stderr, out.stderr
