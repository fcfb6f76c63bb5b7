"""`semel cluster up` starts N brokers, prints the bootstrap address, restarts a broker that dies,
and stops them all on SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from semel.cluster.broker.process import BrokerConfig
from semel.cluster.tooling.local_cluster import broker_argv, plan_cluster


def test_plan_cluster_ports_and_dirs(tmp_path):
    specs = plan_cluster(3, tmp_path, 9092)
    assert [s.port for s in specs] == [9092, 9093, 9094]
    assert [s.raft_port for s in specs] == [19092, 19093, 19094]
    assert [s.data_dir.name for s in specs] == ["broker-1", "broker-2", "broker-3"]
    with pytest.raises(ValueError):
        plan_cluster(3, tmp_path, 9092, raft_base_port=9093)
    with pytest.raises(ValueError):
        plan_cluster(2, tmp_path, 65535)
    assert all(s.metrics_port is None for s in specs)


def test_plan_cluster_metrics_ports_reach_the_brokers(tmp_path):
    specs = plan_cluster(3, tmp_path, 9092, metrics_base_port=9300)
    assert [s.metrics_port for s in specs] == [9300, 9301, 9302]
    argv = broker_argv(specs[1], specs)
    assert argv[argv.index("--metrics-listen") + 1] == "127.0.0.1:9301"
    BrokerConfig.from_args(argv[3:])  # the broker accepts what the supervisor passes
    with pytest.raises(ValueError):
        plan_cluster(3, tmp_path, 9092, metrics_base_port=9094)  # overlaps the client ports


RAFT_OFFSET = 4000  # both port blocks stay below the kernel's ephemeral range (32768)


def _free_block(count: int) -> int:
    """A base port with `count` consecutive free ports here and at base + RAFT_OFFSET."""
    for base in range(20000 + random.randrange(0, 2000), 28000, 7):
        ok = True
        for port in [base + i for i in range(count)] + [base + RAFT_OFFSET + i for i in range(count)]:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def _start_cluster_up(tmp_path, brokers: int, base: int, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "semel.cli", "cluster", "up", "--brokers", str(brokers), "--data-dir", str(tmp_path),
         "--base-port", str(base), "--raft-base-port", str(base + RAFT_OFFSET), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: list[str] = []
    assert proc.stdout is not None
    while True:  # the supervisor bounds the wait itself (--ready-timeout-s) and then exits
        line = proc.stdout.readline().decode()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops the cluster"):
            break
    return proc, lines


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_cluster_up_starts_and_stops_cleanly_on_sigterm(tmp_path):
    base = _free_block(3)
    proc, lines = _start_cluster_up(tmp_path, 3, base)
    try:
        ready = [line for line in lines if line.startswith("cluster ready")]
        assert ready, "".join(lines) + (proc.stderr.read().decode() if proc.poll() is not None else "")
        assert f"127.0.0.1:{base},127.0.0.1:{base + 1},127.0.0.1:{base + 2}" in ready[0]
        assert all(_port_open(base + i) for i in range(3))
        assert all((tmp_path / f"broker-{i}.log").exists() for i in (1, 2, 3))

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert "all brokers stopped" in err.decode()
        assert "exit codes" not in err.decode(), err.decode()  # every broker exited cleanly
        assert not any(_port_open(base + i) for i in range(3))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _lines(stream, into: list[str]) -> threading.Thread:
    def read() -> None:
        for raw in stream:
            into.append(raw.decode(errors="replace"))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def _pid(lines: list[str], broker: int) -> int:
    found = [line for line in lines if line.strip().startswith(f"broker {broker}:")]
    assert found, "".join(lines)
    return int(found[0].split(" pid ")[1].split(",")[0])


@pytest.mark.slow
def test_a_killed_broker_is_reported_the_others_keep_serving_and_it_comes_back(tmp_path):
    base = _free_block(3)
    proc, lines = _start_cluster_up(tmp_path, 3, base, "--restart-delay-s", "0.5")
    err: list[str] = []
    try:
        _lines(proc.stderr, err)
        os.kill(_pid(lines, 2), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not any("broker 2 is back" in line for line in err) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(err)
            time.sleep(0.1)
        text = "".join(err)
        assert "broker 2 exited unexpectedly (code -9); 2 of 3 broker(s) still running; restarting it in 0.5 s" in text
        assert "broker 2 is back" in text, text
        back = next(line for line in err if "broker 2 is back" in line)
        new_pid = int(back.split(" pid ")[1].split(" ")[0])
        assert new_pid != _pid(lines, 2)
        os.kill(new_pid, 0)  # the printed pid is the running broker's
        assert all(_port_open(base + i) for i in range(3))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 0, "".join(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_no_restart_leaves_a_dead_broker_down_and_exits_when_none_is_left(tmp_path):
    base = _free_block(1)
    proc, lines = _start_cluster_up(tmp_path, 1, base, "--no-restart")
    try:
        os.kill(_pid(lines, 1), signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "broker 1 exited unexpectedly" in err.decode() and "not restarting it" in err.decode()
        assert not _port_open(base)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_make_up_passes_every_port_base_through(tmp_path):
    """`make up BASE_PORT=... RAFT_BASE_PORT=... METRICS_BASE_PORT=...` (it took only BASE_PORT and
    KAFKA_BASE_PORT: a second cluster on one machine collided on the Raft ports)."""
    import pathlib
    import urllib.request

    root = pathlib.Path(__file__).resolve().parents[2]
    venv = pathlib.Path(sys.executable).parent.parent
    base = _free_block(4)  # client, Raft (base + RAFT_OFFSET), Kafka and metrics ports: one broker each
    raft, kafka, metrics = base + RAFT_OFFSET, base + 2, base + 3
    # -o: the venv is in place; make must not reinstall it in a test
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(root), "-o", f"{venv}/.installed", "-o", f"{venv}/bin/python", "up", f"VENV={venv}",
         "BROKERS=1", f"DATA_DIR={tmp_path}", f"BASE_PORT={base}", f"RAFT_BASE_PORT={raft}",
         f"KAFKA_BASE_PORT={kafka}", f"METRICS_BASE_PORT={metrics}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode())
            if lines[-1].startswith("Ctrl-C stops the cluster"):
                break
        text = "".join(lines)
        assert f"broker 1: 127.0.0.1:{base} (raft 127.0.0.1:{raft}, kafka 127.0.0.1:{kafka}" in text, text
        assert _port_open(raft)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as response:
            assert response.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the supervisor it runs: the brokers stop with it
        proc.communicate(timeout=60)
